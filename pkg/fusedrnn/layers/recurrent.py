"""`LSTM`, `GRU` and `RNN`: drop-in NumPy counterparts of ``torch.nn.LSTM`` / ``GRU`` / ``RNN``.

All three are one class, `RecurrentLayer`, running the layer-stack functions of the chosen backend
(``fusedrnn.functional.stack_forward`` / ``stack_backward`` or their ``fusedrnn.reference``
twins, docs/kernels.md "Layer stacks"). The subclasses only name the kernel family and spell
PyTorch's constructor signature.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._cell_options import cell_options
from .._checks import check_lengths, check_probability, check_size
from .._half import check_weights_dtype, pack_half_weights, packed_for_active_isa
from .._module import LOADED, DTypeLike, Parameter
from .._recurrent_noise import RecurrentNoise, recurrent_noise
from .._spec import layer_roles, layer_suffix, num_directions
from ._base import RecurrentModule, State, check_nonlinearity

Output = tuple  # (output, h_n) or, for LSTM, (output, (h_n, c_n))


@dataclass(frozen=True)
class _SavedForward:
    """What a training-mode forward keeps for backward, all in the stack's time-major layout.

    ``x`` and ``hx`` are the layer's own copies, so the caller may reuse its buffers; ``y`` is
    read-only (the output handed out is a view of it).
    """

    x: np.ndarray  # (T, B, input_size)
    hx: State | None  # h0 or (h0, c0), (L*D, B, ...), or None for zeros
    y: np.ndarray  # (T, B, D*H_out)
    saved: object  # the backend's own record (the fused one holds the batch packing)
    lengths: np.ndarray | None  # (B,) int64
    dropout_masks: list | None  # L-1 arrays (T, B, D*H_out)
    unbatched: bool
    learned_state: bool  # hx was the learned h0 (and c0), broadcast over the batch
    noise: RecurrentNoise | None  # zoneout and recurrent dropout, with the forward's seed


class RecurrentLayer(RecurrentModule):
    """A stack of recurrent layers over a sequence, one or two directions each.

    The shared implementation of `LSTM`, `GRU` and `RNN`; see those for the arguments.

    Shapes (``L`` = num_layers, ``D`` = 2 if bidirectional else 1, ``H_out`` = proj_size or
    hidden_size):

    - ``x``: ``(T, B, input_size)``, ``(B, T, input_size)`` with batch_first, or unbatched
      ``(T, input_size)``;
    - ``output``: ``(T, B, D*H_out)`` (batch_first: ``(B, T, D*H_out)``; unbatched:
      ``(T, D*H_out)``);
    - ``h_0``, ``h_n``: ``(L*D, B, H_out)``; ``c_0``, ``c_n`` (LSTM): ``(L*D, B, hidden_size)``;
      unbatched: no ``B`` axis.
    """

    _repr_fields = (
        ("num_layers", 1),
        ("batch_first", False),
        ("dropout", 0.0),
        ("bidirectional", False),
        ("proj_size", 0),
        ("nonlinearity", "tanh"),
        ("reset_after", True),
        ("learn_initial_state", False),
        ("peephole", False),
        ("activations", None),
        ("activation_alpha", ()),
        ("activation_beta", ()),
        ("clip", None),
        ("input_forget", False),
        ("zoneout", 0.0),
        ("zoneout_cell", 0.0),
        ("recurrent_dropout", 0.0),
        ("weights_dtype", None),
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
        bidirectional: bool,
        *,
        proj_size: int = 0,
        options: dict | None = None,
        peephole: bool = False,
        activations: Sequence[str] | None = None,
        activation_alpha: Sequence[float] = (),
        activation_beta: Sequence[float] = (),
        clip: float | None = None,
        input_forget: bool = False,
        zoneout: float = 0.0,
        zoneout_cell: float = 0.0,
        recurrent_dropout: float = 0.0,
        learn_initial_state: bool = False,
        weights_dtype: str | None = None,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(input_size, hidden_size, bias, dtype, seed, backend, options)
        self.weights_dtype = weights_dtype
        self.num_layers = check_size(num_layers, "num_layers")
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.num_directions = num_directions(self.bidirectional)
        self.dropout = check_probability(dropout, "dropout")
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                f"dropout={self.dropout} acts between layers, so it does nothing with "
                f"num_layers=1 (as in PyTorch)",
                UserWarning,
                stacklevel=3,
            )
        self.proj_size = check_size(proj_size, "proj_size", minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size = {self.hidden_size}, "
                f"got {self.proj_size}"
            )
        # ONNX's attributes beyond PyTorch's (docs/onnx.md), checked once
        self._cell_options = cell_options(
            self._mode,
            self.num_directions,
            activations=activations,
            activation_alpha=activation_alpha,
            activation_beta=activation_beta,
            clip=clip,
            input_forget=input_forget,
            peephole=peephole,
            nonlinearity=self._options.get("nonlinearity", "tanh"),
        )
        # zoneout and recurrent dropout (fusedrnn's, not torch.nn's; docs/layers.md), checked once
        recurrent_noise(
            self._mode,
            zoneout=zoneout,
            zoneout_cell=zoneout_cell,
            recurrent_dropout=recurrent_dropout,
            proj_size=self.proj_size,
            reset_after=self._options.get("reset_after", True),
        )
        self.zoneout = float(zoneout)
        self.zoneout_cell = float(zoneout_cell)
        self.recurrent_dropout = float(recurrent_dropout)
        self.peephole = bool(peephole)
        self.activations = None if activations is None else tuple(activations)
        self.activation_alpha = tuple(activation_alpha)
        self.activation_beta = tuple(activation_beta)
        self.clip = clip
        self.input_forget = bool(input_forget)
        self._reset_parameters()
        self.learn_initial_state = bool(learn_initial_state)
        if self.learn_initial_state:  # zeros (no draw: the weights and masks stay the same)
            L_D = self.num_layers * self.num_directions
            self.h0 = Parameter(np.zeros((L_D, self._output_size)), self.dtype)
            if self._has_cell_state:
                self.c0 = Parameter(np.zeros((L_D, self.hidden_size)), self.dtype)

    # ------------------------------------------------------------ 16-bit weights (inference)

    @property
    def weights_dtype(self) -> str | None:
        """None, 'float16' or 'bfloat16': the format an eval-mode forward multiplies the weight
        matrices in (docs/layers.md, "Half-precision weights"). Setting it (again) rebuilds the
        16-bit copy at the next eval-mode forward."""
        return self._weights_dtype

    @weights_dtype.setter
    def weights_dtype(self, value: str | None) -> None:
        self._weights_dtype = check_weights_dtype(value, self.dtype)
        self._half_weights = None  # packed at the next eval-mode forward

    def _inference_options(self) -> dict:
        """The 16-bit options of this forward: none in training mode (float32 weights, which
        training changes: the 16-bit copy is dropped) or without weights_dtype; otherwise the
        copy, packed once for the parameters and the active instruction set."""
        if self.training or self._weights_dtype is None:
            self._half_weights = None
            return {}
        if self.backend != "fused":  # the reference rounds the weights itself
            return {"weights_dtype": self._weights_dtype}
        if not packed_for_active_isa(self._half_weights):
            self._half_weights = pack_half_weights(
                self._mode,
                self._stack_weights,
                self.num_layers,
                self.bidirectional,
                self._weights_dtype,
            )
        return {"half_weights": self._half_weights}

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, pickle) leaves the 16-bit copy of the weights behind: it is
        packed again at the copy's first eval-mode forward. Its panels start on a 64-byte line
        (``_core.pack_half_panels``), which numpy's copies of them need not: off a line, every
        AVX-512 load of a panel row spans two (a bfloat16 inference 1.35x slower on a Xeon)."""
        return {**self.__dict__, "_half_weights": None}

    def _assign_parameter(self, name: str, value: object) -> None:
        super()._assign_parameter(name, value)
        self._half_weights = None  # of the old array

    def _forget_saved(self, reason: str) -> None:
        super()._forget_saved(reason)
        if reason == LOADED:  # load_state_dict copied new values in
            self._half_weights = None

    @property
    def _output_size(self) -> int:
        """``H_out``: the size of ``h`` (proj_size, or hidden_size without projection)."""
        return self.proj_size or self.hidden_size

    def _parameter_shapes(self) -> dict[str, tuple]:
        H_out = self._output_size
        shapes = {}
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.num_directions * H_out
            role_shapes = self._role_shapes(layer_input, H_out, self.proj_size)
            for direction in range(self.num_directions):
                for role in layer_roles(self.bias, self.proj_size, self.peephole):
                    shapes[f"{role}{layer_suffix(layer, direction)}"] = role_shapes[role]
        return shapes

    # ------------------------------------------------------------ forward

    def forward(
        self, x: np.ndarray, hx: State | None = None, lengths: np.ndarray | None = None
    ) -> Output:
        """Run the stack over a sequence.

        Parameters
        ----------
        x : (T, B, input_size), (B, T, input_size) with batch_first, or unbatched (T, input_size)
            A numpy array of the layer's dtype.
        hx : h_0 (L*D, B, H_out), or for LSTM a tuple (h_0, c_0 (L*D, B, hidden_size)); None
            means zeros, or with ``learn_initial_state`` the parameters ``h0`` (and ``c0``)
            for every item. Unbatched: no B axis.
        lengths : (B,) integers in 1..T, any order, or None
            Variable-length items, as PyTorch's packed sequences: item b runs its first
            lengths[b] steps; its output is zero after them and h_n / c_n are its state after
            its own last step. ``output`` keeps x's T (PyTorch's ``pad_packed_sequence`` would
            trim it to max(lengths)).

        Returns
        -------
        output : (T, B, D*H_out), batch_first (B, T, D*H_out), unbatched (T, D*H_out)
            In training mode it is read-only, since backward reads it; copy it to modify it.
        h_n : (L*D, B, H_out), or for LSTM (h_n, c_n (L*D, B, hidden_size))
        """
        x_time_major, unbatched = self._input_time_major(x)
        T, B = x_time_major.shape[:2]
        h0, c0 = self._check_state(hx, "hx", *self._state_shapes(B, unbatched))
        if unbatched:
            h0, c0 = _batch_axis(h0), _batch_axis(c0)
        hx_stack = None if hx is None else ((h0, c0) if self._has_cell_state else h0)
        learned_state = hx is None and self.learn_initial_state
        if learned_state:
            hx_stack = self._learned_state(B)
        if lengths is not None and unbatched:
            raise ValueError(
                "lengths needs batched input; unbatched x (T, input_size) is one "
                "sequence: pass x[:n] instead"
            )
        lengths = check_lengths(lengths, T, B)  # here, before the dropout masks are drawn
        masks = self._dropout_masks(T, B)
        noise = self._call_noise()
        if self.training:  # own copies: the caller may refill its buffers before backward
            x_time_major = _own_copy(x_time_major, x)
            hx_stack = _own_copy(hx_stack, hx)
        y, h_n, c_n, saved = self._backend.stack_forward(
            self._mode,
            x_time_major,
            hx_stack,
            self._stack_weights,
            self.num_layers,
            bidirectional=self.bidirectional,
            lengths=lengths,
            dropout_masks=masks,
            training=self.training,
            noise=noise,
            **self._stack_options,
            **self._inference_options(),
        )
        if self.training:
            y.flags.writeable = False
        self._keep_for_backward(
            _SavedForward(
                x_time_major, hx_stack, y, saved, lengths, masks, unbatched, learned_state, noise
            )
            if self.training
            else None
        )
        output = self._from_time_major(y, unbatched)
        if unbatched:
            h_n, c_n = h_n[:, 0], (None if c_n is None else c_n[:, 0])
        return output, ((h_n, c_n) if self._has_cell_state else h_n)

    # ------------------------------------------------------------ backward

    def backward(
        self,
        d_output: np.ndarray | None = None,
        d_hx: State | None = None,
        *,
        truncate: int | None = None,
        truncate_stride: int | None = None,
        retain_graph: bool = False,
        input_grad: bool = True,
        state_grad: bool = True,
    ) -> tuple:
        """Gradients through the last training-mode forward.

        Adds every parameter's gradient into its ``grad`` and returns those of the inputs.
        What the forward saved is freed, so a second backward raises, unless
        ``retain_graph=True`` keeps it (PyTorch's rule).

        Parameters
        ----------
        d_output : shape of ``output``, or None for zeros
        d_hx : shape of ``h_n`` (LSTM: a tuple (dh_n, dc_n), either part None for zeros), or
            None for zeros
        truncate, truncate_stride : int, optional
            Truncated backpropagation through time, TBPTT(k1 = truncate_stride, k2 = truncate)
            of Williams and Peng (1990), unidirectional layers only: the steps are cut into
            chunks of k1 (default k2); the gradient of a chunk's outputs flows back through the
            chunk and at most k2 - k1 steps before it, in every layer, and the states entering
            that span are constants (only spans starting at step 0 reach ``hx``). k1 = k2 = k
            equals cutting the state every k steps (PyTorch: ``h = h.detach()``). The spans run
            in C++ from the one saved forward. For sequences longer than memory, run the
            layer chunk by chunk instead (see the README, "Long sequences").
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)
        input_grad : bool, default True
            False when x is data whose gradient is not wanted (the first layer of a model):
            ``dx`` is then None, and the first layer skips ``dgates @ weight_ih``, a quarter
            of its backward's GEMM work when input_size equals hidden_size.
        state_grad : bool, default True
            False when the initial states' gradient is not wanted (forward was given no hx,
            or data): ``dhx`` is then None. With ``input_grad=False`` as well, the layers below
            the lowest one with a parameter to train (``requires_grad``) are not
            differentiated at all: fine-tuning the top of a stack costs the top's backward.
            (A learned initial state that trains still gets its gradient.)

        Returns
        -------
        dx : shape of x, or None (``input_grad=False``)
        dhx : shape of hx (LSTM: (dh_0, dc_0)); also when forward was given no hx, as the
            gradient of its zero initial state; None with ``state_grad=False``
        """
        saved = self._require_saved()
        T, B = saved.x.shape[:2]
        out_shape, out_axes = self._output_layout(T, B, saved.unbatched)
        dy = None
        if d_output is not None:
            d_output = self._check_array(d_output, "d_output", out_shape, out_axes)
            dy = self._to_time_major(d_output, saved.unbatched)
        dh_n, dc_n = self._check_state(
            d_hx, "d_hx", *self._state_shapes(B, saved.unbatched), optional_parts=True
        )
        if saved.unbatched:
            dh_n, dc_n = _batch_axis(dh_n), _batch_axis(dc_n)
        dx, dh0, dc0, _ = self._backend.stack_backward(
            self._mode,
            saved.x,
            saved.hx,
            self._stack_weights,
            self.num_layers,
            saved.y,
            saved.saved,
            dy=dy,
            dh_n=dh_n,
            dc_n=dc_n,
            bidirectional=self.bidirectional,
            lengths=saved.lengths,
            dropout_masks=saved.dropout_masks,
            grads=self._stack_grads,
            truncate=truncate,
            truncate_stride=truncate_stride,
            noise=saved.noise,
            input_grad=input_grad,
            frozen=self._frozen().intersection(self._stack_weights),
            state_grad=state_grad or (saved.learned_state and self._trains_initial_state),
            **self._stack_options,
        )
        if saved.learned_state:  # forward: h_0[:, b] = h0 for every item b
            learned = (("h0", dh0), ("c0", dc0)) if self._has_cell_state else (("h0", dh0),)
            for name, d_state in learned:
                if self._params[name].grad is not None:  # (None: frozen)
                    self._params[name].grad += d_state.sum(axis=1)
        self._release_saved(retain_graph)
        dx = None if dx is None else self._from_time_major(dx, saved.unbatched)
        if not state_grad:
            return dx, None
        if saved.unbatched:
            dh0, dc0 = dh0[:, 0], (None if dc0 is None else dc0[:, 0])
        return dx, ((dh0, dc0) if self._has_cell_state else dh0)

    # ------------------------------------------------------------ layouts and checks

    @property
    def _stack_options(self) -> dict:
        return {"proj_size": self.proj_size, "cell_options": self._cell_options, **self._options}

    def _state_shapes(self, B: int, unbatched: bool) -> tuple:
        """Shapes and axis names of h and c: (L*D, B, H_out) and (L*D, B, hidden_size)."""
        LD = self.num_layers * self.num_directions
        if unbatched:
            return (
                (LD, self._output_size),
                (LD, self.hidden_size),
                ("num_layers*num_directions", "proj_size or hidden_size"),
                ("num_layers*num_directions", "hidden_size"),
            )
        return (
            (LD, B, self._output_size),
            (LD, B, self.hidden_size),
            ("num_layers*num_directions", "B", "proj_size or hidden_size"),
            ("num_layers*num_directions", "B", "hidden_size"),
        )

    def _output_layout(self, T: int, B: int, unbatched: bool) -> tuple:
        width = self.num_directions * self._output_size
        if unbatched:
            return (T, width), ("T", "num_directions*H_out")
        if self.batch_first:
            return (B, T, width), ("B", "T", "num_directions*H_out")
        return (T, B, width), ("T", "B", "num_directions*H_out")

    def _input_time_major(self, x: object) -> tuple:
        """``x`` checked and as a (T, B, input_size) array, and whether it was unbatched."""
        axes = ("B", "T", "input_size") if self.batch_first else ("T", "B", "input_size")
        self._check_array(
            x,
            "x",
            (None, None, self.input_size),
            axes,
            unbatched=((None, self.input_size), ("T", "input_size")),
        )
        unbatched = x.ndim == 2
        self._check_rows(x.shape[0] * (1 if unbatched else x.shape[1]))  # before any copy
        return self._to_time_major(x, unbatched), unbatched

    def _to_time_major(self, a: np.ndarray, unbatched: bool) -> np.ndarray:
        """(T, B, ...) from the user's layout: contiguous (a copy when transposed)."""
        if unbatched:
            return a[:, None]
        return np.ascontiguousarray(a.swapaxes(0, 1)) if self.batch_first else a

    def _from_time_major(self, a: np.ndarray, unbatched: bool) -> np.ndarray:
        """The user's layout from (T, B, ...): a view, as PyTorch's transposed outputs."""
        if unbatched:
            return a[:, 0]
        return a.swapaxes(0, 1) if self.batch_first else a

    @property
    def _stack_weights(self) -> dict:
        """The parameters the stack functions take: all but the learned initial state."""
        if not self.learn_initial_state:
            return self._params
        return {name: p for name, p in self._params.items() if name not in ("h0", "c0")}

    @property
    def _trains_initial_state(self) -> bool:
        """Whether a learned initial state (h0, c0) has a gradient to take."""
        names = ("h0", "c0") if self._has_cell_state else ("h0",)
        return any(self._params[name].grad is not None for name in names)

    @property
    def _stack_grads(self) -> dict:
        """The gradients of `_stack_weights`, keyed alike (the same arrays as in ``grads``); a
        frozen parameter has none."""
        return {name: p.grad for name, p in self._stack_weights.items() if p.grad is not None}

    def _learned_state(self, B: int) -> np.ndarray | tuple:
        """The learned h0 (and c0) repeated over a batch of B: (L*D, B, ...) arrays of their
        own."""
        h0 = np.repeat(self.h0[:, None], B, axis=1)
        return (h0, np.repeat(self.c0[:, None], B, axis=1)) if self._has_cell_state else h0

    def _call_noise(self) -> RecurrentNoise | None:
        """Zoneout and recurrent dropout of one forward, or None. In training mode each forward
        draws a seed of its own from the layer's generator (so two forwards draw different
        masks) that its backward redraws the masks from; in eval mode, zoneout's expectation."""
        if self.zoneout == self.zoneout_cell == self.recurrent_dropout == 0:
            return None
        seed = int(self._rng.integers(2**64, dtype=np.uint64)) if self.training else 0
        return recurrent_noise(
            self._mode,
            zoneout=self.zoneout,
            zoneout_cell=self.zoneout_cell,
            recurrent_dropout=self.recurrent_dropout,
            seed=seed,
            training=self.training,
            proj_size=self.proj_size,
            reset_after=self._options.get("reset_after", True),
        )

    def _dropout_masks(self, T: int, B: int) -> list | None:
        """num_layers - 1 masks (T, B, D*H_out): Bernoulli(1-p) / (1-p), training mode only."""
        if not self.training or self.dropout == 0 or self.num_layers == 1:
            return None
        shape = (T, B, self.num_directions * self._output_size)
        keep = 1.0 - self.dropout
        if keep == 0:
            return [np.zeros(shape, self.dtype) for _ in range(self.num_layers - 1)]
        scale = self.dtype.type(1.0 / keep)
        return [
            (self._rng.random(shape) < keep).astype(self.dtype) * scale
            for _ in range(self.num_layers - 1)
        ]


def _batch_axis(a: np.ndarray | None) -> np.ndarray | None:
    """An unbatched state (L*D, H) as (L*D, 1, H)."""
    return None if a is None else a[:, None]


def _own_copy(value: np.ndarray | tuple | None, original: object):
    """``value`` (an array or a pair of them), copied where it may share memory with the user's
    ``original`` arguments."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(_own_copy(part, original) for part in value)
    originals = original if isinstance(original, (tuple, list)) else (original,)
    if any(isinstance(o, np.ndarray) and np.may_share_memory(value, o) for o in originals):
        return np.array(value, order="C", copy=True)
    return value


class LSTM(RecurrentLayer):
    """Multi-layer LSTM, as ``torch.nn.LSTM``, on numpy arrays.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    bias : bool, default True
        Without it, no ``bias_*`` parameters.
    batch_first : bool, default False
        x and output are (B, T, ...); states stay (L*D, B, ...).
    dropout : float in [0, 1], default 0
        Dropout on the output of every layer but the last, in training mode only.
    bidirectional : bool, default False
    proj_size : int, default 0
        If > 0 (and < hidden_size), ``h_t = W_hr (o_t * tanh(c_t))`` of size proj_size.
    peephole : bool, default False
        Peephole connections (ONNX's and oneDNN's form): ``i`` and ``f`` see ``p_i * c_{t-1}``,
        ``p_f * c_{t-1}``, ``o`` sees ``p_o * c_t``. Adds the parameters
        ``weight_peephole_l{k}`` (3*hidden_size,) = p_i, p_f, p_o (ONNX's ``P`` orders them
        p_i, p_o, p_f; see docs/onnx.md).
    activations, activation_alpha, activation_beta, clip, input_forget
        ONNX's attributes (docs/onnx.md): ``activations`` names the functions f (gates i, f, o),
        g (cell input) and h (of the cell state), default ('Sigmoid', 'Tanh', 'Tanh'), per
        direction or for all; ``clip`` clips every gate pre-activation to [-clip, clip];
        ``input_forget`` couples the gates, ``f = 1 - i``.
    zoneout, zoneout_cell : float in [0, 1), default 0
        Zoneout (Krueger et al. 2016) of h and of c, fusedrnn's options (not torch.nn's): in
        training mode each unit of the state keeps its previous value with this probability,
        ``h_t = d*h_{t-1} + (1-d)*h~_t``, d drawn per (item, step, unit); in eval mode the
        expectation ``h_t = p*h_{t-1} + (1-p)*h~_t``. h~ and c~ are the step's own (h~ = o *
        tanh(c~)). Not with proj_size. docs/layers.md.
    recurrent_dropout : float in [0, 1), default 0
        Variational dropout (Gal and Ghahramani 2016; Keras' ``recurrent_dropout``) of
        ``h_{t-1}`` where it enters ``W_hh``: one mask per item over the hidden units, the same
        at every step, ``h_{t-1} * m / (1-p)``; training mode only. Not with proj_size.
    learn_initial_state : bool, default False
        Adds the parameters ``h0`` (L*D, H_out) and ``c0`` (L*D, hidden_size), zero at first:
        a forward without ``hx`` starts every item from them, and backward adds their
        gradient (summed over the batch). Not in PyTorch's modules (their state_dicts lack
        these two names).
    weights_dtype : None (default), 'float16' or 'bfloat16'
        Eval mode only, float32 layers only: multiply with the weight matrices rounded to 16
        bits (a copy made once; the parameters, biases and all arithmetic stay float32), for
        faster inference at small batch. Training mode ignores it. See docs/layers.md,
        "Half-precision weights".
    dtype : numpy.float32 (default) or numpy.float64
        Of the parameters and of every array the layer accepts (no silent casts).
    seed : int or None
        Seeds the generator of the initialisation, the dropout masks and the seeds of zoneout
        and recurrent dropout (one drawn per training forward).
    backend : 'fused' (C++ kernels, default) or 'reference' (plain NumPy)

    Parameters are named as PyTorch's (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
    ``bias_hh_l0``, ``weight_hr_l0``, ``..._reverse``), gates stacked i, f, g, o; see
    `RecurrentLayer` for the shapes of `forward` and `backward`.

    Examples
    --------
    >>> lstm = LSTM(10, 20, num_layers=2, seed=0)
    >>> x = np.zeros((5, 3, 10), np.float32)
    >>> output, (h_n, c_n) = lstm(x)
    >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(output))
    """

    _mode = "lstm"
    _has_cell_state = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        peephole: bool = False,
        activations: Sequence[str] | None = None,
        activation_alpha: Sequence[float] = (),
        activation_beta: Sequence[float] = (),
        clip: float | None = None,
        input_forget: bool = False,
        zoneout: float = 0.0,
        zoneout_cell: float = 0.0,
        recurrent_dropout: float = 0.0,
        learn_initial_state: bool = False,
        weights_dtype: str | None = None,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size=proj_size,
            peephole=peephole,
            activations=activations,
            activation_alpha=activation_alpha,
            activation_beta=activation_beta,
            clip=clip,
            input_forget=input_forget,
            zoneout=zoneout,
            zoneout_cell=zoneout_cell,
            recurrent_dropout=recurrent_dropout,
            learn_initial_state=learn_initial_state,
            weights_dtype=weights_dtype,
            dtype=dtype,
            seed=seed,
            backend=backend,
        )


class GRU(RecurrentLayer):
    """Multi-layer GRU, as ``torch.nn.GRU``, on numpy arrays.

    Arguments as `LSTM` (without proj_size), plus ``reset_after``: True (default) is PyTorch's
    and cuDNN's form ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; False is Cho et al.
    2014, ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``, which has no PyTorch twin (ONNX's
    ``linear_before_reset=0``). Gates stacked r, z, n. ONNX's ``activations`` (f for r and z,
    g for n; default ('Sigmoid', 'Tanh')), ``activation_alpha``, ``activation_beta`` and ``clip``
    as in `LSTM` (docs/onnx.md). ``zoneout`` (of h) and ``recurrent_dropout`` (with
    reset_after=True) as in `LSTM`: fusedrnn's options, not torch.nn's (docs/layers.md).
    """

    _mode = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        reset_after: bool = True,
        activations: Sequence[str] | None = None,
        activation_alpha: Sequence[float] = (),
        activation_beta: Sequence[float] = (),
        clip: float | None = None,
        zoneout: float = 0.0,
        recurrent_dropout: float = 0.0,
        learn_initial_state: bool = False,
        weights_dtype: str | None = None,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            options={"reset_after": bool(reset_after)},
            activations=activations,
            activation_alpha=activation_alpha,
            activation_beta=activation_beta,
            clip=clip,
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            learn_initial_state=learn_initial_state,
            weights_dtype=weights_dtype,
            dtype=dtype,
            seed=seed,
            backend=backend,
        )


class RNN(RecurrentLayer):
    """Multi-layer Elman RNN, as ``torch.nn.RNN``, on numpy arrays.

    Arguments as `LSTM` (without proj_size), plus ``nonlinearity`` 'tanh' (default) or 'relu',
    fourth as in PyTorch's signature. ONNX's ``activations`` (one function f; overrides
    ``nonlinearity``), ``activation_alpha``, ``activation_beta`` and ``clip`` as in `LSTM`
    (docs/onnx.md).
    """

    _mode = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        activations: Sequence[str] | None = None,
        activation_alpha: Sequence[float] = (),
        activation_beta: Sequence[float] = (),
        clip: float | None = None,
        learn_initial_state: bool = False,
        weights_dtype: str | None = None,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            options={"nonlinearity": check_nonlinearity(nonlinearity)},
            activations=activations,
            activation_alpha=activation_alpha,
            activation_beta=activation_beta,
            clip=clip,
            learn_initial_state=learn_initial_state,
            weights_dtype=weights_dtype,
            dtype=dtype,
            seed=seed,
            backend=backend,
        )
