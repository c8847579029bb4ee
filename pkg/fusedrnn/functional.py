"""The fused kernels, one layer and one direction over a whole sequence.

Signatures, shapes and workspace layouts are those of `docs/kernels.md`, shared with the NumPy
twin `fusedrnn.reference`. Arrays must be numpy arrays of one dtype, float32 or float64; anything
else is a TypeError/ValueError naming the argument. Non-contiguous inputs are copied first.
Gradient dicts passed as ``grads`` are accumulated into in place (``+=``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import _core
from ._attention_args import (
    additive_args,
    additive_grads,
    additive_saved,
    attention_args,
    float32_to_half,
    half_bits,
    half_kind,
    widening_backward,
)
from ._cell_options import CellOptions
from ._checks import (
    MAX_BLAS_DIM,
    check_choice,
    check_eps,
    check_frozen,
    check_ignore_index,
    check_lengths,
    check_normalized_shape,
    check_rows,
    check_size,
    require_array,
    stack_grads_or_zeros,
)
from ._half import HalfWeights, inference_weights_dtype, pack_half_weights
from ._recurrent_noise import RecurrentNoise
from ._spec import (
    CELL_PARAMETERS,
    GATES,
    MODES,
    PEEPHOLE,
    num_directions,
    stack_param_names,
    stack_role_names,
)
from ._truncation import truncation_steps

_MAX_INT64 = 2**63 - 1
_NONLINEARITIES = ("tanh", "relu")


def _grad_buffers(grads: Mapping[str, np.ndarray] | None, frozen: frozenset) -> list:
    """The arrays a one-layer backward adds into, in CELL_PARAMETERS order (None: fresh ones);
    a frozen parameter's may be missing (its gradient is not computed)."""
    if grads is None:
        return [None] * 4
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays or None, got {type(grads).__name__}")
    missing = [k for k in CELL_PARAMETERS if k not in grads and k not in frozen]
    if missing:
        raise ValueError(f"grads must have the keys {list(CELL_PARAMETERS)}; missing {missing}")
    return [grads.get(k) for k in CELL_PARAMETERS]


def _grads_dict(grads, arrays, frozen: frozenset) -> dict:
    """The gradients a one-layer backward returns: ``grads`` with the kernel's arrays (the same
    ones, accumulated into in place), or a new dict; a frozen parameter has none."""
    out = {k: a for k, a in zip(CELL_PARAMETERS, arrays) if k not in frozen}
    if grads is not None and not isinstance(grads, dict):
        return out
    if grads is not None:
        grads.update(out)
        return grads
    return out


def workspace_size(cell: str, T: int, B: int, H: int) -> int:
    """Length of the workspace a training forward saves: T*B*5H (lstm), T*B*4H (gru), 0 (rnn).

    ``T``, ``B``, ``H`` must be ints >= 0; a length past what an array can hold (2**63 - 1
    elements) is a ValueError rather than a wrapped-around int64.
    """
    sizes = [check_size(value, name, 0) for name, value in (("T", T), ("B", B), ("H", H))]
    if cell in ("lstm", "gru") and sizes[0] * sizes[1] * sizes[2] * 5 > _MAX_INT64:
        raise ValueError(f"workspace_size({cell!r}, {T}, {B}, {H}) does not fit in int64")
    if cell == "lstm":
        return _core.lstm_workspace_size(T, B, H)
    if cell == "gru":
        return _core.gru_workspace_size(T, B, H)
    check_choice(cell, "cell", MODES)
    return 0  # the RNN saves nothing beyond its output


def lstm_forward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, training: bool = True):
    """LSTM over a sequence.

    Parameters
    ----------
    x : (T, B, input_size)
    h0, c0 : (B, H)
    weight_ih : (4H, input_size), gates i, f, g, o
    weight_hh : (4H, H)
    bias_ih, bias_hh : (4H,)
    training : bool
        Save the workspace backward needs; False allocates nothing beyond the outputs.

    Returns
    -------
    y : (T, B, H)
    h_n, c_n : (B, H)
    workspace : (T*B*5H,) or None
    """
    return _core.lstm_forward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, bool(training))


def lstm_backward(
    x,
    h0,
    c0,
    weight_ih,
    weight_hh,
    y,
    workspace,
    dy=None,
    dh_n=None,
    dc_n=None,
    grads=None,
    *,
    input_grad: bool = True,
    frozen=(),
):
    """Gradients of an LSTM sequence.

    Parameters
    ----------
    x, h0, c0, weight_ih, weight_hh : as given to `lstm_forward`
    y, workspace : as returned by a training `lstm_forward`
    dy : (T, B, H) or None;  dh_n, dc_n : (B, H) or None (None = zeros)
    grads : dict of weight_ih, weight_hh, bias_ih, bias_hh arrays to accumulate into, or None
    input_grad : False when x is data whose gradient is not wanted: dx is then None and
        ``dgates @ weight_ih`` (a quarter of the GEMM work at input_size = H) is skipped
    frozen : names of parameters (of weight_ih, weight_hh, bias_ih, bias_hh) whose gradients
        are not wanted (PyTorch's ``requires_grad=False``): not computed, absent from the
        returned dict, and a given ``grads`` keeps its arrays for them untouched. A frozen
        weight spares its ``dgates^T @ input`` GEMM, a quarter of the work at input_size = H.

    Returns
    -------
    dx : (T, B, input_size) or None;  dh0, dc0 : (B, H);  grads : dict
    """
    frozen = check_frozen(frozen, CELL_PARAMETERS)
    dx, dh0, dc0, *params = _core.lstm_backward(
        x, h0, c0, weight_ih, weight_hh, y, workspace, dy, dh_n, dc_n,
        *_grad_buffers(grads, frozen), input_grad=bool(input_grad), frozen=tuple(frozen),
    )  # fmt: skip
    return dx, dh0, dc0, _grads_dict(grads, params, frozen)


def gru_forward(
    x, h0, weight_ih, weight_hh, bias_ih, bias_hh, reset_after: bool = True, training: bool = True
):
    """GRU over a sequence; `reset_after` picks PyTorch's form (True) or Cho et al. 2014 (False).

    Parameters
    ----------
    x : (T, B, input_size);  h0 : (B, H)
    weight_ih : (3H, input_size), gates r, z, n;  weight_hh : (3H, H);  bias_ih, bias_hh : (3H,)

    Returns
    -------
    y : (T, B, H);  h_n : (B, H);  workspace : (T*B*4H,) or None
    """
    return _core.gru_forward(
        x, h0, weight_ih, weight_hh, bias_ih, bias_hh, bool(reset_after), bool(training)
    )


def gru_backward(
    x,
    h0,
    weight_ih,
    weight_hh,
    y,
    workspace,
    dy=None,
    dh_n=None,
    reset_after: bool = True,
    grads=None,
    *,
    input_grad: bool = True,
    frozen=(),
):
    """Gradients of a GRU sequence. Returns ``(dx, dh0, grads)``; see `lstm_backward`."""
    frozen = check_frozen(frozen, CELL_PARAMETERS)
    dx, dh0, *params = _core.gru_backward(
        x, h0, weight_ih, weight_hh, y, workspace, dy, dh_n, bool(reset_after),
        *_grad_buffers(grads, frozen), input_grad=bool(input_grad), frozen=tuple(frozen),
    )  # fmt: skip
    return dx, dh0, _grads_dict(grads, params, frozen)


def rnn_forward(
    x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity: str = "tanh", training: bool = True
):
    """Elman RNN over a sequence, ``nonlinearity`` 'tanh' or 'relu'.

    Parameters
    ----------
    x : (T, B, input_size);  h0 : (B, H)
    weight_ih : (H, input_size);  weight_hh : (H, H);  bias_ih, bias_hh : (H,)

    Returns
    -------
    y : (T, B, H);  h_n : (B, H);  workspace : empty array (training) or None
    """
    check_choice(nonlinearity, "nonlinearity", _NONLINEARITIES)
    return _core.rnn_forward(
        x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity, bool(training)
    )


def rnn_backward(
    x,
    h0,
    weight_ih,
    weight_hh,
    y,
    workspace,
    dy=None,
    dh_n=None,
    nonlinearity: str = "tanh",
    grads=None,
    *,
    input_grad: bool = True,
    frozen=(),
):
    """Gradients of an RNN sequence. Returns ``(dx, dh0, grads)``; see `lstm_backward`."""
    check_choice(nonlinearity, "nonlinearity", _NONLINEARITIES)
    frozen = check_frozen(frozen, CELL_PARAMETERS)
    dx, dh0, *params = _core.rnn_backward(
        x, h0, weight_ih, weight_hh, y, workspace, dy, dh_n, nonlinearity,
        *_grad_buffers(grads, frozen), input_grad=bool(input_grad), frozen=tuple(frozen),
    )  # fmt: skip
    return dx, dh0, _grads_dict(grads, params, frozen)


# ---------------------------------------------------------------- layer stacks


def _stack_weights(mode, params, num_layers, bidirectional, proj_size):
    """The per-layer tuples (w_ih, w_hh, b_ih, b_hh, w_hr, w_peephole) the kernels take, checked
    by name."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of names to arrays, got {type(params).__name__}")
    D = num_directions(bidirectional)
    if 2 * num_layers * D > len(params):  # before listing every name a huge num_layers implies
        raise ValueError(
            f"params hold {len(params)} entries, fewer than the weight_ih and "
            f"weight_hh of every layer and direction of a {num_layers}-layer "
            f"{'bidirectional ' if bidirectional else ''}{mode} need"
        )
    bias = "bias_ih_l0" in params
    peephole = f"{PEEPHOLE}_l0" in params
    if peephole and mode != "lstm":
        raise ValueError(f"params hold {PEEPHOLE}_l0, but only an LSTM has peepholes, not a {mode}")
    expected = stack_param_names(mode, num_layers, bidirectional, bias, proj_size, peephole)
    missing = [k for k in expected if k not in params]
    expected_set = set(expected)
    extra = [k for k in params if k not in expected_set]
    if missing or extra:
        raise ValueError(
            f"params do not fit a {num_layers}-layer "
            f"{'bidirectional ' if bidirectional else ''}{mode}"
            f"{f' with proj_size={proj_size}' if proj_size else ''}: "
            f"missing {missing}, unexpected {extra}"
        )
    for name in expected:  # an absent bias is left out of params, not set to None
        require_array(params[name], name)
    return _per_layer(params, num_layers, D)


def _per_layer(named, num_layers: int, D: int) -> list:
    """The entries of ``named`` (params or their grads) as one tuple of the roles
    (w_ih, w_hh, b_ih, b_hh, w_hr, w_peephole) per layer and direction; None where a role is
    absent."""
    return [tuple(map(named.get, names)) for names in stack_role_names(num_layers, D)]


def _hidden_size(mode: str, params) -> int:
    """hidden_size read off params['weight_hh_l0'] (G*H, H_out); its shape is checked in full
    later, by the binding."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of names to arrays, got {type(params).__name__}")
    if "weight_hh_l0" not in params:
        raise ValueError(
            "params must hold weight_hh_l0 (the layer stack's first recurrent "
            "weight, which gives hidden_size)"
        )
    w_hh = require_array(params["weight_hh_l0"], "weight_hh_l0")
    G = GATES[mode]
    if w_hh.ndim != 2 or w_hh.shape[0] < G or w_hh.shape[0] % G:
        raise ValueError(
            f"weight_hh_l0 must have shape ({G}*hidden_size, proj_size or "
            f"hidden_size) with hidden_size >= 1, but has shape {w_hh.shape}"
        )
    return w_hh.shape[0] // G


class _Packing:
    """The batch sorted by length, longest first: what the kernels run on.

    Made once, by `stack_forward`, from checked lengths; `stack_backward` reuses it from the
    `StackSaved`. ``order[i]`` is the item in sorted row ``i``; ``batch_sizes[t]`` the rows
    running at step t.
    """

    def __init__(self, lengths: np.ndarray, T: int):
        self.order = np.argsort(-lengths, kind="stable")
        self.lengths = np.ascontiguousarray(lengths[self.order], dtype=np.int64)
        self.batch_sizes = (self.lengths[None, :] > np.arange(T)[:, None]).sum(1).astype(np.int64)

    @property
    def T(self) -> int:
        return len(self.batch_sizes)

    @property
    def B(self) -> int:
        return len(self.order)

    def unsorted_lengths(self) -> np.ndarray:
        """The lengths in the caller's order of items, as given to `stack_forward`."""
        return self.unsort(self.lengths, axis=0)

    def valid(self) -> np.ndarray:
        """(T, B) bool, in sorted order: True where step t is one of row b's own steps."""
        return np.arange(self.T)[:, None] < self.lengths[None, :]

    def sort(self, a, axis: int = 1):
        return None if a is None else np.take(a, self.order, axis=axis)

    def unsort(self, a, axis: int = 1):
        if a is None:
            return None
        out = np.empty_like(a)
        index = [slice(None)] * a.ndim
        index[axis] = self.order
        out[tuple(index)] = a
        return out


@dataclass(frozen=True, eq=False)
class StackSaved:
    """What a training `stack_forward` keeps for `stack_backward` (fused backend).

    Attributes
    ----------
    workspace : 1-D array
        Every layer's gates and states, in the binding's layout (``_core.stack_saved_size``).
    packing : the batch sorted by length (sort order, sorted lengths, batch sizes), or None when
        every item runs all T steps; backward runs on it as forward did, without sorting again.
    """

    workspace: np.ndarray
    packing: _Packing | None


def _check_batch_axis(value, name: str, B: int) -> None:
    """Before an array is sorted by length along axis 1: it must have B rows there (the binding
    checks the rest of its shape; sorting would silently drop or fail on the wrong count)."""
    if value.shape[1] != B:
        raise ValueError(
            f"{name} must have B = {B} along its axis 1 (the batch), like x, but "
            f"has shape {value.shape}"
        )


def _packing(lengths, x) -> _Packing | None:
    """The packing of ``lengths`` (checked here), or None when there is nothing to pack."""
    T, B = x.shape[0], x.shape[1]
    lengths = check_lengths(lengths, T, B)
    if lengths is None or np.all(lengths == T):  # all full: nothing to pack
        return None
    return _Packing(lengths, T)


def _saved_packing(saved, lengths, x) -> tuple:
    """``(workspace, packing)`` of what `stack_forward` saved, checked against backward's x and
    lengths: the packing is reused, never made again."""
    if saved is None:
        raise ValueError(
            "saved is None: backward needs what a training forward (training=True) saved"
        )
    if not isinstance(saved, StackSaved):
        raise TypeError(
            f"saved must be the StackSaved a training stack_forward returned, got "
            f"{type(saved).__name__}"
        )
    T, B = x.shape[0], x.shape[1]
    packing = saved.packing
    if packing is not None and (packing.T, packing.B) != (T, B):
        raise ValueError(
            f"saved must come from a stack_forward of x with T = {T} steps and "
            f"B = {B} items, but holds the packing of T = {packing.T}, "
            f"B = {packing.B}"
        )
    given = check_lengths(lengths, T, B)
    forward = None if packing is None else packing.unsorted_lengths()
    if given is not None and forward is None and np.all(given == T):
        given = None  # all full: the same as no lengths
    if (given is None) != (forward is None) or (
        given is not None and not np.array_equal(given, forward)
    ):
        raise ValueError(
            f"lengths must be those given to the stack_forward that made saved "
            f"({None if forward is None else forward.tolist()}), got "
            f"{None if given is None else given.tolist()}"
        )
    return saved.workspace, packing


def _split_hx(mode, hx, shape_h, shape_c, dtype):
    """(h0, c0) from ``hx`` (h0, or (h0, c0) for LSTM; None = zeros)."""
    if mode == "lstm":
        if hx is None:
            return np.zeros(shape_h, dtype), np.zeros(shape_c, dtype)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx of an LSTM must be a tuple (h0, c0) or None")
        return hx[0], hx[1]
    return (np.zeros(shape_h, dtype) if hx is None else hx), None


def _masks(dropout_masks, num_layers, shape, dtype):
    """The L-1 dropout masks, each checked by its index, stacked into one (L-1, T, B, D*H_out)."""
    if dropout_masks is None or num_layers == 1:
        return None
    if isinstance(dropout_masks, np.ndarray) or not isinstance(dropout_masks, Sequence):
        raise TypeError(
            f"dropout_masks must be None or a list of num_layers - 1 arrays, "
            f"got {type(dropout_masks).__name__}"
        )
    if len(dropout_masks) != num_layers - 1:
        raise ValueError(
            f"dropout_masks must hold num_layers - 1 = {num_layers - 1} arrays, "
            f"got {len(dropout_masks)}"
        )
    for i, mask in enumerate(dropout_masks):
        name = f"dropout_masks[{i}]"
        require_array(mask, name)
        if mask.dtype != dtype:
            raise TypeError(
                f"{name} must have dtype {dtype} like x, got {mask.dtype} "
                f"(nothing is cast silently)"
            )
        if mask.shape != shape:
            raise ValueError(
                f"{name} must have shape (T, B, num_directions*H_out) = {shape}, "
                f"but has shape {mask.shape}"
            )
    if isinstance(dropout_masks, _StackedMasks):
        return dropout_masks.stacked
    return np.stack(dropout_masks)


class _StackedMasks(list):
    """Dropout masks that are the rows of one C-contiguous (L-1, T, B, D*H_out) array, as
    fusedrnn.torch holds them: a list to every check, and the kernels read the array as it is
    instead of a stacked copy."""

    def __init__(self, stacked: np.ndarray) -> None:
        super().__init__(stacked)
        self.stacked = np.ascontiguousarray(stacked)


def _check_x(x) -> None:
    """x: a float array (T, B, input_size) of sizes the kernels can take, refused before
    anything is copied or sorted."""
    require_array(x, "x")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must have dtype float32 or float64, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"x must have 3 dimensions (T, B, input_size), but has {x.ndim}")
    T, B, I = x.shape
    check_rows(T * B)
    if I > MAX_BLAS_DIM:
        raise ValueError(f"input_size is {I}, more than the 2**31 - 1 that one BLAS call takes")


@dataclass(frozen=True, eq=False)
class _StackCall:
    """The arguments stack_forward and stack_backward share, checked and sorted by length, in
    the order of the bindings ``_core.stack_forward`` / ``stack_backward``."""

    inputs: tuple  # mode, x, h0, c0, weights: the first arguments of both bindings
    layout: tuple  # dropout masks, batch_sizes, lengths, num_layers, bidirectional, hidden, proj
    packing: _Packing | None
    num_layers: int

    def config(self, reset_after, nonlinearity) -> tuple:
        """Both bindings' arguments after the arrays only one of them takes: `layout` and the
        kernel options (``nonlinearity`` is checked here)."""
        check_choice(nonlinearity, "nonlinearity", _NONLINEARITIES)
        return (*self.layout, bool(reset_after), nonlinearity)


def _kernel_options(cell_options: CellOptions | None):
    """What the bindings take for ``cell_options`` (None: PyTorch's cell)."""
    if cell_options is None:
        return None
    if not isinstance(cell_options, CellOptions):
        raise TypeError(
            f"cell_options must be a CellOptions (fusedrnn.cell_options(...)) or None, "
            f"got {type(cell_options).__name__}"
        )
    return cell_options.kernel_args()


def _noise_args(noise: RecurrentNoise | None, packing: _Packing | None):
    """What the bindings take for ``noise``: its options and, with the batch sorted by length,
    each sorted row's item (the masks follow the caller's rows)."""
    if noise is None:
        return None
    if not isinstance(noise, RecurrentNoise):
        raise TypeError(
            f"noise must be a RecurrentNoise (fusedrnn.recurrent_noise(...)) or None, "
            f"got {type(noise).__name__}"
        )
    row_ids = None if packing is None else np.ascontiguousarray(packing.order, dtype=np.int64)
    return noise.kernel_args(row_ids)


def _stack_call(
    mode, x, hx, params, num_layers, bidirectional, dropout_masks, proj_size, packing_of
) -> _StackCall:
    """Checks and sorting shared by stack_forward and stack_backward.

    ``packing_of(x)`` gives the batch packing (forward: made from lengths; backward: the one
    forward saved), after x is checked and before anything is sorted.
    """
    check_choice(mode, "mode", MODES)
    num_layers = check_size(num_layers, "num_layers", 1)
    proj_size = check_size(proj_size, "proj_size", 0)
    _check_x(x)
    hidden = _hidden_size(mode, params)
    if proj_size and (mode != "lstm" or proj_size >= hidden):
        raise ValueError(
            f"proj_size must be 0, or (LSTM only) between 1 and hidden_size - 1 = "
            f"{hidden - 1}; got {proj_size}"
        )
    weights = _stack_weights(mode, params, num_layers, bidirectional, proj_size)
    D = num_directions(bidirectional)
    T, B = x.shape[0], x.shape[1]
    h0, c0 = _split_hx(
        mode, hx, (num_layers * D, B, proj_size or hidden), (num_layers * D, B, hidden), x.dtype
    )
    for name, value in (("h0", h0), ("c0", c0)):
        if value is not None:
            require_array(value, name)
            if value.ndim != 3:
                raise ValueError(
                    f"{name} must have 3 dimensions (num_layers*num_directions, B, "
                    f"size), but has {value.ndim}"
                )
    packing = packing_of(x)
    masks = _masks(dropout_masks, num_layers, (T, B, D * (proj_size or hidden)), x.dtype)
    if packing is not None:
        for name, value in (("h0", h0), ("c0", c0)):
            if value is not None:
                _check_batch_axis(value, name, B)
        x, h0, c0 = packing.sort(x), packing.sort(h0), packing.sort(c0)
        masks = packing.sort(masks, axis=2)
        # Padded steps are no input: zero them in these (fresh, sorted) copies, so that whatever
        # the caller left there (np.empty garbage, NaN) cannot reach a weight gradient as 0 * NaN.
        padded = ~packing.valid()
        x[padded] = 0
        if masks is not None:
            masks[:, padded] = 0
    packed = (None, None) if packing is None else (packing.batch_sizes, packing.lengths)
    return _StackCall(
        (mode, x, h0, c0, weights),
        (masks, *packed, num_layers, bool(bidirectional), hidden, proj_size),
        packing,
        num_layers,
    )


def stack_forward(
    mode: str,
    x,
    hx,
    params,
    num_layers: int,
    bidirectional: bool = False,
    lengths=None,
    dropout_masks=None,
    training: bool = True,
    reset_after: bool = True,
    nonlinearity: str = "tanh",
    proj_size: int = 0,
    cell_options: CellOptions | None = None,
    noise: RecurrentNoise | None = None,
    weights_dtype: str | None = None,
    half_weights: HalfWeights | None = None,
):
    """A stack of layers, one or two directions each, over a sequence (docs/kernels.md).

    Parameters
    ----------
    mode : 'lstm', 'gru' or 'rnn'
    x : (T, B, input_size)
    hx : h0 (L*D, B, H_out), or (h0, c0 (L*D, B, H)) for LSTM; None = zeros
    params : mapping of PyTorch's names (weight_ih_l0, weight_hh_l0_reverse, ...) to arrays
    lengths : (B,) ints in 1..T, any order, or None
    dropout_masks : num_layers - 1 arrays (T, B, D*H_out), or None
    cell_options : `fusedrnn.cell_options(...)`: ONNX's activations, clip, input_forget
        (docs/onnx.md); None: PyTorch's cell. LSTM peepholes: the parameters
        ``weight_peephole_l{k}{sfx}`` (3H,) in ``params``.
    noise : `fusedrnn.recurrent_noise(...)`: zoneout and recurrent dropout of an LSTM or GRU
        (docs/layers.md), their masks drawn from its seed; give `stack_backward` the same.
    weights_dtype : None, 'float16' or 'bfloat16'
        Inference (training=False) of float32 arrays only: multiply with the weight matrices
        rounded to 16 bits (the biases and all arithmetic stay float32; docs/layers.md,
        "Half-precision weights"). They are packed on each call, unless ``half_weights`` brings
        them packed.
    half_weights : HalfWeights, optional
        ``pack_half_weights(mode, params, num_layers, bidirectional, weights_dtype)``: the 16-bit
        weights packed once, for calls that reuse them.

    Returns
    -------
    y : (T, B, D*H_out);  h_n : (L*D, B, H_out);  c_n : (L*D, B, H) or None;
    saved : `StackSaved` for `stack_backward` (the flat workspace and the batch packing), or
        None when not training
    """

    def new_packing(x):
        return _packing(lengths, x)

    call = _stack_call(
        mode, x, hx, params, num_layers, bidirectional, dropout_masks, proj_size, new_packing
    )
    config = call.config(reset_after, nonlinearity)
    weights_dtype = inference_weights_dtype(weights_dtype, half_weights, training, x.dtype)
    if weights_dtype is not None and half_weights is None:
        half_weights = pack_half_weights(mode, params, num_layers, bidirectional, weights_dtype)
    y, h_n, c_n, workspace = _core.stack_forward(
        *call.inputs,
        *config,
        bool(training),
        _kernel_options(cell_options),
        _noise_args(noise, call.packing),
        None if weights_dtype is None else half_weights,
    )
    packing = call.packing
    if packing is not None:
        y, h_n, c_n = packing.unsort(y), packing.unsort(h_n), packing.unsort(c_n)
    saved = None if workspace is None else StackSaved(workspace, packing)
    return y, h_n, c_n, saved


def stack_backward(
    mode: str,
    x,
    hx,
    params,
    num_layers: int,
    y,
    saved,
    dy=None,
    dh_n=None,
    dc_n=None,
    bidirectional: bool = False,
    lengths=None,
    dropout_masks=None,
    reset_after: bool = True,
    nonlinearity: str = "tanh",
    proj_size: int = 0,
    grads=None,
    truncate: int | None = None,
    truncate_stride: int | None = None,
    cell_options: CellOptions | None = None,
    noise: RecurrentNoise | None = None,
    input_grad: bool = True,
    frozen=(),
    state_grad: bool = True,
):
    """Gradients of `stack_forward`: returns ``(dx, dh0, dc0, grads)``.

    The arguments of the forward, with the same ``lengths`` (whose batch packing ``saved``
    holds), ``cell_options`` and ``noise`` (backward redraws its masks from its seed), and ``y``
    and ``saved`` as it returned them. ``grads`` (keyed like ``params``) is
    accumulated into; None makes a fresh zeroed dict. ``dy`` (T, B, D*H_out), ``dh_n`` /
    ``dc_n`` as ``h_n`` / ``c_n``; None = zeros.

    ``truncate = k2`` (with ``truncate_stride = k1``, default k2) gives truncated backpropagation
    through time, TBPTT(k1, k2) of Williams and Peng (1990), unidirectional stacks only: the steps
    are cut into chunks of k1; the gradient of a chunk's outputs flows back through the chunk and
    at most k2 - k1 steps before it, in every layer; the states entering that span are constants
    (only spans starting at step 0 reach ``hx``). k1 = k2 = k equals cutting the state every k
    steps (PyTorch: ``h = h.detach()``). None: full backpropagation through time.

    ``input_grad=False``: x is data whose gradient is not wanted; dx is None, and layer 0 skips
    ``dgates @ weight_ih`` (a quarter of its GEMM work when input_size = hidden_size).

    ``frozen``: names of ``params`` whose gradients are not wanted (PyTorch's
    ``requires_grad=False``): not computed (a frozen weight spares its GEMM), absent from the
    returned dict, and a given ``grads`` need not have them (what it has for them is untouched).

    ``state_grad=False``: the initial states' gradients are not wanted (``hx`` is None or
    constant); dh0 and dc0 are None. With ``input_grad=False`` too, the layers below the lowest
    one with a parameter gradient wanted are not differentiated at all (fine-tuning the top of a
    stack whose lower layers are frozen).
    """
    k2, k1 = truncation_steps(truncate, truncate_stride, bidirectional)
    workspace = None

    def saved_packing(x):
        nonlocal workspace
        workspace, packing = _saved_packing(saved, lengths, x)
        return packing

    call = _stack_call(
        mode, x, hx, params, num_layers, bidirectional, dropout_masks, proj_size, saved_packing
    )
    config = call.config(reset_after, nonlinearity)
    for name, value in (("y", y), ("dy", dy), ("dh_n", dh_n), ("dc_n", dc_n)):
        # checked before sorting them by length; the binding checks shapes and dtypes
        if value is not None or name == "y":
            require_array(value, name)
            if value.ndim != 3:
                raise ValueError(f"{name} must have 3 dimensions, but has {value.ndim}")
    frozen = check_frozen(frozen, tuple(params))
    grads = stack_grads_or_zeros(grads, params, frozen)
    # the gradient of every parameter there is; None for an absent or frozen one
    grad_list = _per_layer(
        {k: None if k in frozen else grads[k] for k in params},
        call.num_layers,
        num_directions(bidirectional),
    )
    packing = call.packing
    if packing is not None:
        for name, value in (("y", y), ("dy", dy), ("dh_n", dh_n), ("dc_n", dc_n)):
            if value is not None:
                _check_batch_axis(value, name, x.shape[1])
        y, dy, dh_n, dc_n = (packing.sort(a) for a in (y, dy, dh_n, dc_n))
    dx, dh0, dc0 = _core.stack_backward(
        *call.inputs,
        y,
        workspace,
        dy,
        dh_n,
        dc_n,
        grad_list,
        *config,
        k2,
        k1,
        _kernel_options(cell_options),
        _noise_args(noise, call.packing),
        bool(input_grad),
        bool(state_grad),
    )
    if packing is not None:
        dx, dh0, dc0 = packing.unsort(dx), packing.unsort(dh0), packing.unsort(dc0)
    return dx, dh0, dc0, grads


def cross_entropy(
    logits, targets, ignore_index: int = -100, reduction: str = "mean", grad: bool = True
):
    """Fused softmax cross-entropy: the loss and the gradient of the logits in one pass per row.

    Same signature and results as `fusedrnn.reference.cross_entropy` (csrc/cross_entropy.h).
    Stable for logits of any magnitude (the row maximum is subtracted before exp); rows run in
    parallel when there are many logits.

    Parameters
    ----------
    logits : (N, num_classes), float32 or float64
    targets : (N,), any integer dtype
        A class in ``[0, num_classes)``, or ``ignore_index`` for a row that does not count.
    ignore_index : int, default -100
    reduction : 'mean' (default) or 'sum'
        'mean' divides by the number of rows not ignored; with none, the loss is NaN (0/0) and
        the gradient zero, as in PyTorch.
    grad : bool, default True
        Also compute the gradient; False computes the loss only.

    Returns
    -------
    loss : numpy scalar of the logits' dtype
    dlogits : (N, num_classes), or None when ``grad=False``
        ``scale * (softmax(logits) - onehot(targets))``, scale 1 (sum) or 1/count (mean); zero
        rows where the target is ignored.
    """
    return _core.cross_entropy(
        logits, targets, check_ignore_index(ignore_index), reduction, bool(grad)
    )


def adam_update(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    step: int,
) -> None:
    """Adam's update of one parameter in place, in one pass over its elements (csrc/optim.h;
    the formula: `fusedrnn.optim.Adam`), split among the threads from 32,768 elements on (the
    same bits on any number). Twin: `fusedrnn.reference.adam_update`.

    Parameters
    ----------
    param, exp_avg, exp_avg_sq : arrays of one shape and dtype (float32 or float64), C-contiguous
        and writeable: updated in place.
    grad : array of that shape and dtype
    max_exp_avg_sq : such an array (amsgrad), or None
    lr, beta1, beta2, eps, weight_decay : float
    decoupled_weight_decay, maximize : bool
    step : int >= 1
        The parameter's step t, for the bias corrections.
    """
    _core.adam_update(
        _flat(param, "param", in_place=True),
        _flat(grad, "grad"),
        _flat(exp_avg, "exp_avg", in_place=True),
        _flat(exp_avg_sq, "exp_avg_sq", in_place=True),
        None if max_exp_avg_sq is None else _flat(max_exp_avg_sq, "max_exp_avg_sq", True),
        float(lr),
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        bool(decoupled_weight_decay),
        bool(maximize),
        int(step),
    )


def sum_of_squares(x) -> float:
    """The sum of the squares of ``x``'s elements (any shape, float32 or float64), summed in
    float64 in one pass (csrc/optim.h). Twin: `fusedrnn.reference.sum_of_squares`."""
    return _core.sum_of_squares(_flat(x, "x"))


def _flat(array, name: str, in_place: bool = False):
    """``array`` as a flat (n,) view of its memory. An input that is not C-contiguous is copied
    first; an array updated in place must be C-contiguous already (a copy would hide the
    update)."""
    array = require_array(array, name)
    if not array.flags.c_contiguous:
        if in_place:
            raise ValueError(f"{name} is updated in place, so it must be C-contiguous")
        array = np.ascontiguousarray(array)
    return array.reshape(-1)


def linear_forward(x, weight, bias=None):
    """Dense layer over rows: ``x @ weight.T + bias`` as one GEMM (the step kernel's from 4 rows
    on, BLAS's GEMV below), the bias fused into it (csrc/linear.h). Twin:
    `fusedrnn.reference.linear_forward`.

    Parameters
    ----------
    x : (M, in_features)
    weight : (out_features, in_features)
    bias : (out_features,) or None

    Returns
    -------
    y : (M, out_features)
    """
    return _core.linear_forward(x, weight, bias)


def linear_backward(x, weight, dy, grads=None, bias: bool = True, need_dx: bool = True, frozen=()):
    """Gradients of `linear_forward`.

    Parameters
    ----------
    x, weight : as given to `linear_forward`
    dy : (M, out_features)
    grads : dict with 'weight' (out_features, in_features) and, when ``bias``, 'bias'
        (out_features,), accumulated into (``+=``) by the GEMM itself; None makes fresh zeroed
        ones.
    bias : bool
        Whether the layer has a bias (its gradient is the column sums of dy).
    need_dx : bool
        False skips the input gradient (an input that needs none).
    frozen : names of parameters ('weight', 'bias') whose gradients are not wanted (PyTorch's
        ``requires_grad=False``): not computed (a frozen weight spares its GEMM), absent from
        the returned dict, and a given ``grads`` need not have them (what it has is untouched).

    Returns
    -------
    dx : (M, in_features), or None when ``need_dx`` is False
    grads : the dict, ``weight`` (and ``bias``)
    """
    wanted, dweight, dbias = _linear_grads(grads, bias, frozen)
    dx, dweight, dbias = _core.linear_backward(
        x, weight, dy, dweight, dbias, "weight" in wanted, "bias" in wanted, bool(need_dx)
    )
    if grads is None:
        return dx, {k: v for k, v in (("weight", dweight), ("bias", dbias)) if k in wanted}
    return dx, grads


def _linear_grads(grads, bias: bool, frozen) -> tuple:
    """(the names of the gradients wanted, grads' weight array or None, its bias array or
    None), the keys checked: every gradient wanted must be in a given ``grads``."""
    names = ("weight", "bias") if bias else ("weight",)
    frozen = check_frozen(frozen, names)
    wanted = tuple(name for name in names if name not in frozen)
    if grads is None:
        return wanted, None, None
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays or None, got {type(grads).__name__}")
    if any(name not in grads for name in wanted):
        left_out = " (a frozen one may be left out)" if frozen else ""
        raise ValueError(f"grads must have the keys {list(names)}{left_out}")
    return wanted, *(grads[name] if name in wanted else None for name in ("weight", "bias"))


# ---------------------------------------------------------------- attention (docs/kernels.md)


def _empty_attention(a):
    """Results for calls without a single query row (N*Hq*L = 0)."""
    out = np.zeros(a.out_shape(), a.dtype)
    lse = np.full(a.lse_shape(), np.inf, a.dtype)
    return out, lse


def attention_forward(
    q,
    k,
    v,
    attn_mask=None,
    is_causal: bool = False,
    scale=None,
    enable_gqa: bool = False,
    *,
    dropout_p: float = 0.0,
    seed: int = 0,
    causal_alignment: str = "top_left",
    window: int | None = None,
    softcap: float | None = None,
    key_lengths=None,
    dtype: str | None = None,
):
    """Scaled dot-product attention, fused: tiles with an online softmax, never the L x S matrix.

    The semantics of ``torch.nn.functional.scaled_dot_product_attention``; a row whose keys are
    all masked gives zeros (and zero gradients), never NaN. Past torch: the bottom-right causal
    alignment, sliding windows, soft-capping, per-item key lengths and 16-bit inputs
    (docs/attention.md).

    Parameters
    ----------
    q : (..., Hq, L, E)
    k : (..., Hkv, S, E)
    v : (..., Hkv, S, Ev)
        One dtype: float32, float64, or 16 bits (float16, ``ml_dtypes.bfloat16``, or uint16
        bits with ``dtype``), converted a tile at a time with float32 arithmetic. The batch
        dimensions ``...`` broadcast against each other (any number, also none); 2-D ``(L, E)``
        arrays have no head axis.
    attn_mask : bool or q's dtype (float32 for 16-bit q), broadcastable to (..., Hq, L, S)
        bool: True = may attend. Float: added to the scaled scores (-inf masks).
    is_causal : bool
        Query i attends to keys j <= i + d: d = 0 with ``causal_alignment="top_left"`` (torch's
        is_causal, also when L != S), d = S_n - L with ``"bottom_right"`` (ONNX's Attention:
        the queries are the last L of the S_n keys' positions, as when decoding with a cache).
        Combined with attn_mask when both are given.
    scale : float or None
        Multiplies q k^T; None = 1/sqrt(E).
    enable_gqa : bool
        Grouped-query attention: Hq a multiple of Hkv, query head h uses kv head h // (Hq/Hkv).
    dropout_p : float in [0, 1]
        Dropout on the attention weights, drawn from ``seed`` by a counter-based hash, so
        `attention_backward` with the same seed redraws the same.
    seed : int
    causal_alignment : "top_left", "bottom_right" or int
        Where query i sits among the keys (d above), for is_causal and window; an int p puts
        query i at key position i + p (ONNX's past_key rule: p the length of the past).
    window : int or None
        Sliding window: query i sees key j only if ``i + d - j < window`` (the ``window`` keys
        up to its own position); key tiles wholly outside are skipped. With is_causal, the
        sliding window of Mistral and Gemma 2; without, ONNX's ``left_window_size = window-1``.
    softcap : float or None
        Scores become ``softcap * tanh(scores / softcap)`` after the scale, before the mask
        (Gemma 2, ONNX Attention). None or 0: none.
    key_lengths : ints broadcastable to the batch shape ``...``, or None
        Item n attends to its first key_lengths[n] keys only (padding without a mask tensor;
        the rest are skipped tile by tile). With "bottom_right", d = key_lengths[n] - L.
    dtype : "float16", "bfloat16" or None
        Only for uint16 q, k, v: which 16-bit floats their bits are (bfloat16 without
        ml_dtypes). The output then is uint16 bits too.

    Returns
    -------
    out : (..., Hq, L, Ev), q's dtype
    lse : (..., Hq, L)
        Log-sum-exp of each row's masked, scaled scores (+inf for a row with every key masked):
        with out, all that backward needs. float32 for 16-bit inputs.
    """
    half = half_kind(q, dtype)
    user_dtype = q.dtype if half else None
    if half:
        q, k, v = (half_bits(x, half, user_dtype, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    a = attention_args(q, k, v, attn_mask, is_causal, scale, enable_gqa, dropout_p, seed,
                       causal_alignment, window, softcap, key_lengths, half)  # fmt: skip
    if a.empty:
        out, lse = _empty_attention(a)
        return (float32_to_half(out, half).view(user_dtype) if half else out), lse
    if half:
        qkv = (np.ascontiguousarray(x) for x in (a.q, a.k, a.v))
        out, lse = _core.attention_forward(*qkv, *a.kernel_options(), half=half)
        out, lse = a.to_user(out, lse)
        return out.view(user_dtype), lse
    out, lse = _core.attention_forward(a.q, a.k, a.v, *a.kernel_options())
    return a.to_user(out, lse)


@widening_backward
def attention_backward(
    q,
    k,
    v,
    out,
    lse,
    d_out,
    attn_mask=None,
    is_causal: bool = False,
    scale=None,
    enable_gqa: bool = False,
    *,
    dropout_p: float = 0.0,
    seed: int = 0,
    causal_alignment: str = "top_left",
    window: int | None = None,
    softcap: float | None = None,
    key_lengths=None,
    dtype: str | None = None,
):
    """Gradients of `attention_forward`, recomputing the probabilities tile by tile from lse.

    Parameters
    ----------
    q, k, v, attn_mask, is_causal, scale, enable_gqa, dropout_p, seed, causal_alignment,
    window, softcap, key_lengths, dtype : as given to forward
    out : (..., Hq, L, Ev);  lse : (..., Hq, L) as forward returned them
    d_out : (..., Hq, L, Ev), out's dtype

    Returns
    -------
    dq, dk, dv : the shapes of q, k, v (fresh arrays). Under GQA dk and dv sum over the query
        heads that share a kv head; over broadcast batch dimensions they are summed likewise.
        16-bit inputs: computed in float32 from the inputs widened exactly, rounded to q's dtype.
    """
    # (dtype: 16-bit inputs never get here, @widening_backward widens them)
    a = attention_args(q, k, v, attn_mask, is_causal, scale, enable_gqa, dropout_p, seed,
                       causal_alignment, window, softcap, key_lengths)  # fmt: skip
    out4, lse4, d_out4 = a.saved(out, lse, d_out)
    N = a.q.shape[0]
    if a.empty:
        dq = np.zeros(a.q.shape, a.dtype)
        dk = np.zeros((N, a.heads_kv, a.S, a.E), a.dtype)
        dv = np.zeros((N, a.heads_kv, a.S, a.Ev), a.dtype)
        return a.grads_to_user(dq, dk, dv)
    dq, dk, dv = _core.attention_backward(d_out4, a.q, a.k, a.v, out4, lse4, *a.kernel_options())
    return a.grads_to_user(dq, dk, dv)


def additive_attention_forward(query, keys, values, w_q, w_k, w_v, key_mask=None):
    """Additive (Bahdanau) attention of a batch of queries over keys, fused.

    ``e[b,t,s] = w_v . tanh(w_q query[b,t] + w_k keys[b,s])``, ``weights = softmax_s(e)``
    (masked keys excluded), ``context[b,t] = sum_s weights[b,t,s] values[b,s]``. The
    ``B*T*S*hidden_size`` tanh terms are never stored.

    Parameters
    ----------
    query : (B, T, query_size);  keys : (B, S, key_size);  values : (B, S, value_size)
    w_q : (hidden_size, query_size);  w_k : (hidden_size, key_size);  w_v : (hidden_size,)
    key_mask : (B, S) bool, True = may attend, or None. A query whose keys are all masked gets
        a zero context and zero gradients.

    Returns
    -------
    context : (B, T, value_size);  weights : (B, T, S)
    qp : (B, T, hidden_size), kp : (B, S, hidden_size): the projections, saved for backward
    """
    args = additive_args(query, keys, values, w_q, w_k, w_v, key_mask)
    return _core.additive_attention_forward(*args)


def additive_attention_backward(
    query, keys, values, w_q, w_k, w_v, weights, qp, kp, d_context, key_mask=None, grads=None
):
    """Gradients of `additive_attention_forward`.

    Parameters
    ----------
    query, keys, values, w_q, w_k, w_v, key_mask : as given to forward
    weights, qp, kp : as forward returned them
    d_context : (B, T, value_size)
    grads : dict with w_q, w_k, w_v arrays to accumulate into (+=), or None for a fresh one

    Returns
    -------
    d_query, d_keys, d_values : fresh arrays;  grads : dict
    """
    query, keys, values, w_q, w_k, w_v, key_mask = additive_args(
        query, keys, values, w_q, w_k, w_v, key_mask
    )
    weights, qp, kp, d_context = additive_saved(
        query, keys, values, w_v, weights, qp, kp, d_context
    )
    grads = additive_grads(grads, w_q, w_k, w_v)
    d_query, d_keys, d_values, *_ = _core.additive_attention_backward(
        d_context,
        query,
        keys,
        values,
        w_q,
        w_k,
        w_v,
        key_mask,
        weights,
        qp,
        kp,
        grads["w_q"],
        grads["w_k"],
        grads["w_v"],
    )
    return d_query, d_keys, d_values, grads


# ---------------------------------------------------------------- layer normalisation


def layer_norm_forward(x, weight=None, bias=None, eps: float = 1e-5, training: bool = True):
    """Layer normalisation of the rows of x: ``(x - mean) / sqrt(var + eps) * weight + bias``
    with each row's mean and biased variance, forward fused in C++ (csrc/layer_norm.h). Twin:
    `fusedrnn.reference.layer_norm_forward`.

    Parameters
    ----------
    x : (M, N)
    weight, bias : (N,) or None (1 and 0)
    eps : float >= 0
    training : bool
        Also return what backward needs.

    Returns
    -------
    y : (M, N)
    mean, rstd : (M,) each, rstd = 1 / sqrt(var + eps); None when not training
    """
    return _core.layer_norm_forward(x, weight, bias, check_eps(eps), bool(training))


def layer_norm_backward(x, weight, mean, rstd, dy, grads=None, bias: bool = True):
    """Gradients of `layer_norm_forward`, fused in C++.

    Parameters
    ----------
    x, weight : as given to `layer_norm_forward` (weight None: no affine parameters)
    mean, rstd : as it returned them
    dy : (M, N)
    grads : dict with 'weight' and, when ``bias``, 'bias' (N,), added into (``+=``); None (or
        missing keys) makes fresh zeroed ones. Without a weight nothing is added.
    bias : bool
        Whether the affine map has a bias.

    Returns
    -------
    dx : (M, N)
    grads : the dict (empty without a weight)
    """
    if grads is not None and not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays or None, got {type(grads).__name__}")
    grads = {} if grads is None else grads
    affine = weight is not None
    dx, dweight, dbias = _core.layer_norm_backward(
        dy,
        x,
        weight,
        mean,
        rstd,
        grads.get("weight"),
        grads.get("bias"),
        affine,
        affine and bool(bias),
    )
    if affine:
        grads["weight"] = dweight
        if bias:
            grads["bias"] = dbias
    return dx, grads


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """``torch.nn.functional.layer_norm`` on numpy arrays, fused in C++ (no backward: use
    `fusedrnn.LayerNorm` to train).

    Parameters
    ----------
    x : (..., *normalized_shape), float32 or float64
    normalized_shape : int or tuple of ints, the trailing axes normalised together
    weight, bias : normalized_shape, or None
    eps : float >= 0

    Returns
    -------
    y : the shape of x
    """
    shape = check_normalized_shape(normalized_shape)
    require_array(x, "x")
    if x.shape[x.ndim - len(shape) :] != shape or x.ndim < len(shape):
        raise ValueError(
            f"x must have shape (..., {', '.join(map(str, shape))}) (its last axes "
            f"normalized_shape = {shape}), but has {x.shape}"
        )
    N = math.prod(shape)
    flat = [
        None if a is None else _flat_parameter(a, name, shape)
        for name, a in (("weight", weight), ("bias", bias))
    ]
    y, _, _ = layer_norm_forward(x.reshape(-1, N), *flat, eps=eps, training=False)
    return y.reshape(x.shape)


def _flat_parameter(a, name: str, shape: tuple) -> np.ndarray:
    require_array(a, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape normalized_shape = {shape}, but has {a.shape}")
    return a.reshape(-1)


def ln_lstm_forward(x, h0, c0, weights, eps: float = 1e-5, training: bool = True):
    """Layer-normalised LSTM over a sequence (csrc/ln_cell.h), fused in C++. Twin:
    `fusedrnn.reference.ln_lstm_forward`, which documents the arguments.

    Returns
    -------
    y : (T, B, H);  h_n, c_n : (B, H);  workspace : (T*B*(14H+3),) or None
    """
    return _core.ln_lstm_forward(x, h0, c0, _weights_dict(weights), check_eps(eps), bool(training))


def ln_lstm_backward(
    x, h0, c0, weights, y, workspace, dy=None, dh_n=None, dc_n=None, grads=None, *,
    input_grad: bool = True, frozen=(),
):  # fmt: skip
    """Gradients of `ln_lstm_forward`, fused in C++: dx, dh0, dc0 and grads (a dict by role,
    added into; None or missing roles make fresh zeros). ``input_grad=False`` (x is data): dx
    is None, its product with W_ih skipped (as `lstm_backward`). ``frozen``: roles whose
    gradients are not wanted: not computed, not in the returned dict (as `lstm_backward`)."""
    weights = _weights_dict(weights)
    return _core.ln_lstm_backward(
        x, h0, c0, weights, y, workspace, dy, dh_n, dc_n, _grads_by_role(grads),
        input_grad=bool(input_grad), frozen=check_frozen(frozen, tuple(weights)),
    )  # fmt: skip


def ln_gru_forward(x, h0, weights, eps: float = 1e-5, training: bool = True):
    """Layer-normalised GRU over a sequence (csrc/ln_cell.h), fused in C++. Twin:
    `fusedrnn.reference.ln_gru_forward`, which documents the arguments.

    Returns
    -------
    y : (T, B, H);  h_n : (B, H);  workspace : (T*B*(9H+2),) or None
    """
    return _core.ln_gru_forward(x, h0, _weights_dict(weights), check_eps(eps), bool(training))


def ln_gru_backward(
    x, h0, weights, y, workspace, dy=None, dh_n=None, grads=None, *, input_grad: bool = True,
    frozen=(),
):  # fmt: skip
    """Gradients of `ln_gru_forward`, fused in C++: dx, dh0 and grads (a dict by role, added
    into; None or missing roles make fresh zeros). ``input_grad=False`` (x is data): dx is
    None, its product with W_ih skipped (as `gru_backward`). ``frozen``: roles whose gradients
    are not wanted (as `ln_lstm_backward`)."""
    weights = _weights_dict(weights)
    return _core.ln_gru_backward(
        x, h0, weights, y, workspace, dy, dh_n, _grads_by_role(grads),
        input_grad=bool(input_grad), frozen=check_frozen(frozen, tuple(weights)),
    )  # fmt: skip


def ln_workspace_size(cell: str, T: int, B: int, H: int) -> int:
    """Length of the workspace a training `ln_lstm_forward` ('lstm': T*B*(14H+3)) or
    `ln_gru_forward` ('gru': T*B*(9H+2)) saves."""
    sizes = [check_size(value, name, 0) for name, value in (("T", T), ("B", B), ("H", H))]
    return _core.ln_cell_workspace_size(check_choice(cell, "cell", ("lstm", "gru")), *sizes)


def _weights_dict(weights) -> dict:
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a dict of arrays by role, got {type(weights).__name__}")
    return weights if isinstance(weights, dict) else dict(weights)


def _grads_by_role(grads) -> dict | None:
    if grads is not None and not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict of arrays or None, got {type(grads).__name__}")
    return grads
