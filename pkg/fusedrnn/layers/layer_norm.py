"""`LayerNormLSTM` and `LayerNormGRU`: layer-normalised recurrent stacks (Ba, Kiros and Hinton
2016; haste's ``LayerNormLSTM``), each layer and direction one fused kernel call
(`fusedrnn.functional.ln_lstm_forward` / ``ln_gru_forward`` and their backwards, csrc/ln_cell.h)
or its NumPy twin; the layers, directions and dropout between layers are chained here.

The equations (docs/layers.md, "Layer-normalised LSTM and GRU"), LN normalising each row over
its whole width without gain or bias:

- LSTM: ``pre = ln_ih_weight * LN(W_ih x_t) + ln_hh_weight * LN(W_hh h_{t-1}) + bias``, gates
  i, f, g, o; ``c_t = f*c + i*g``; ``h_t = o * tanh(ln_cell_weight * LN(c_t) + ln_cell_bias)``.
- GRU: ``a = ln_ih_weight * LN(W_ih x_t) + bias_ih``, ``b = ln_hh_weight * LN(W_hh h_{t-1}) +
  bias_hh``; ``r, z = sigmoid(a + b)``, ``n = tanh(a_n + r * b_n)``; ``h_t = (1-z)*n + z*h``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import check_eps
from .._module import DTypeLike
from .._spec import LN_CELL_BIASES, LN_CELL_PARAMETERS, layer_suffix
from ._base import State
from .recurrent import RecurrentLayer, _batch_axis, _own_copy

_LN_GAINS = ("ln_ih_weight", "ln_hh_weight", "ln_cell_weight")  # ones at first


@dataclass(frozen=True)
class _CellCall:
    """One layer and direction of a training forward: its inputs as the kernel saw them (time
    reversed for the reverse direction) and what it returned."""

    x: np.ndarray
    h0: np.ndarray
    c0: np.ndarray | None
    y: np.ndarray
    workspace: np.ndarray


@dataclass(frozen=True)
class _SavedStack:
    calls: list  # _CellCall per layer and direction, layer-major
    masks: list | None  # dropout masks (T, B, D*H) after every layer but the last
    T: int
    B: int
    unbatched: bool


class LayerNormRecurrentLayer(RecurrentLayer):
    """The shared implementation of `LayerNormLSTM` and `LayerNormGRU`; see those.

    Shapes as `fusedrnn.LSTM` / ``GRU`` (without proj_size): x ``(T, B, input_size)``
    (batch_first ``(B, T, input_size)``, unbatched ``(T, input_size)``), output
    ``(T, B, D*hidden_size)``, states ``(num_layers*D, B, hidden_size)``.
    """

    _repr_fields = (*RecurrentLayer._repr_fields, ("eps", 1e-5))

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
        eps: float = 1e-5,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        self.eps = check_eps(eps)
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            dtype=dtype,
            seed=seed,
            backend=backend,
        )

    @property
    def _roles(self) -> tuple:
        """The parameter roles of one layer and direction, in order."""
        roles = LN_CELL_PARAMETERS[self._mode]
        return roles if self.bias else tuple(r for r in roles if r not in LN_CELL_BIASES)

    def _parameter_shapes(self) -> dict[str, tuple]:
        G, H = {"lstm": 4, "gru": 3}[self._mode] * self.hidden_size, self.hidden_size
        shapes = {}
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.num_directions * H
            role_shapes = {
                "weight_ih": (G, layer_input),
                "weight_hh": (G, H),
                "ln_cell_weight": (H,),
                "ln_cell_bias": (H,),
            }
            for direction in range(self.num_directions):
                for role in self._roles:
                    shapes[f"{role}{layer_suffix(layer, direction)}"] = role_shapes.get(role, (G,))
        return shapes

    def _reset_parameters(self) -> None:
        """PyTorch's LSTM / GRU initialisation for the weights and biases (uniform in
        +-1/sqrt(hidden_size), drawn in float64 in name order), ones for the LN gains and
        zeros for the cell LN's bias."""
        bound = 1.0 / np.sqrt(self.hidden_size)
        params = {}
        for name, shape in self._parameter_shapes().items():
            role = name[: name.rindex("_l")]
            if role in _LN_GAINS:
                params[name] = np.ones(shape)
            elif role == "ln_cell_bias":
                params[name] = np.zeros(shape)
            else:
                params[name] = self._rng.uniform(-bound, bound, shape)
        self._set_parameters(params)

    def _cell_parameters(self, layer: int, direction: int) -> dict:
        """One layer and direction's parameters by role."""
        suffix = layer_suffix(layer, direction)
        return {role: self._params[role + suffix] for role in self._roles}

    def _cell_gradients(self, layer: int, direction: int) -> tuple[dict, frozenset]:
        """One layer and direction's gradients by role, and the roles frozen (no gradient)."""
        params = self._cell_parameters(layer, direction)
        grads = {role: p.grad for role, p in params.items() if p.grad is not None}
        return grads, frozenset(params.keys() - grads.keys())

    # ------------------------------------------------------------ forward

    def forward(self, x: np.ndarray, hx: State | None = None) -> tuple:
        """Run the stack over a sequence.

        Parameters
        ----------
        x : (T, B, input_size), (B, T, input_size) with batch_first, or unbatched (T, input_size)
        hx : h_0 (L*D, B, hidden_size), or for the LSTM a tuple (h_0, c_0); None means zeros.
            Unbatched: no B axis.

        Returns
        -------
        output : (T, B, D*hidden_size) (batch_first (B, T, ...), unbatched (T, ...))
        h_n : (L*D, B, hidden_size), or for the LSTM (h_n, c_n)
        """
        x_time_major, unbatched = self._input_time_major(x)
        T, B = x_time_major.shape[:2]
        h0, c0 = self._check_state(hx, "hx", *self._state_shapes(B, unbatched))
        if unbatched:
            h0, c0 = _batch_axis(h0), _batch_axis(c0)
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        h0 = np.zeros((LD, B, H), self.dtype) if h0 is None else _own_copy(h0, hx)
        if self._has_cell_state:
            c0 = np.zeros((LD, B, H), self.dtype) if c0 is None else _own_copy(c0, hx)
        masks = self._dropout_masks(T, B)
        layer_input = _own_copy(x_time_major, x) if self.training else x_time_major
        calls, h_n, c_n = [], [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                seq = layer_input if direction == 0 else np.ascontiguousarray(layer_input[::-1])
                c0_k = c0[k] if self._has_cell_state else None
                y, state_h, state_c, workspace = self._run_cell(layer, direction, seq, h0[k], c0_k)
                calls.append(_CellCall(seq, h0[k], c0_k, y, workspace))
                h_n.append(state_h)
                c_n.append(state_c)
                outputs.append(y if direction == 0 else y[::-1])
            out = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=2)
            layer_input = out * masks[layer] if masks and layer < self.num_layers - 1 else out
        if self.training:  # backward reads the outputs: read-only, as fusedrnn.LSTM's
            for call in calls:
                call.y.flags.writeable = False
        output = self._from_time_major(out, unbatched)
        h_n = np.stack(h_n)
        c_n = np.stack(c_n) if self._has_cell_state else None
        self._keep_for_backward(
            _SavedStack(calls, masks, T, B, unbatched) if self.training else None
        )
        if unbatched:
            h_n, c_n = h_n[:, 0], (None if c_n is None else c_n[:, 0])
        return output, ((h_n, c_n) if self._has_cell_state else h_n)

    def _run_cell(self, layer, direction, x, h0, c0) -> tuple:
        """(y, h_n, c_n or None, workspace or None) of one layer and direction."""
        weights = self._cell_parameters(layer, direction)
        if self._has_cell_state:
            return self._backend.ln_lstm_forward(x, h0, c0, weights, self.eps, self.training)
        y, h_n, workspace = self._backend.ln_gru_forward(x, h0, weights, self.eps, self.training)
        return y, h_n, None, workspace

    # ------------------------------------------------------------ backward

    def backward(
        self,
        d_output: np.ndarray | None = None,
        d_hx: State | None = None,
        *,
        retain_graph: bool = False,
        input_grad: bool = True,
        state_grad: bool = True,
    ) -> tuple:
        """Gradients through the last training-mode forward: adds every parameter's gradient
        into its ``grad`` and returns those of the inputs.

        Parameters
        ----------
        d_output : shape of ``output``, or None for zeros
        d_hx : shape of ``h_n`` (LSTM: a tuple (dh_n, dc_n), either part None for zeros), or
            None for zeros
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)
        input_grad : bool, default True
            False when x is data whose gradient is not wanted: ``dx`` is then None, and the
            first layer skips its product with ``weight_ih_l0``.
        state_grad : bool, default True
            False when the initial states' gradient is not wanted: ``dhx`` is then None.

        Returns
        -------
        dx : shape of x, or None (``input_grad=False``)
        dhx : shape of hx (LSTM: (dh_0, dc_0)), or None (``state_grad=False``)
        """
        saved = self._require_saved()
        out_shape, out_axes = self._output_layout(saved.T, saved.B, saved.unbatched)
        d_out = None
        if d_output is not None:
            d_output = self._check_array(d_output, "d_output", out_shape, out_axes)
            d_out = self._to_time_major(d_output, saved.unbatched)
        dh_n, dc_n = self._check_state(
            d_hx, "d_hx", *self._state_shapes(saved.B, saved.unbatched), optional_parts=True
        )
        if saved.unbatched:
            dh_n, dc_n = _batch_axis(dh_n), _batch_axis(dc_n)
        D, H = self.num_directions, self.hidden_size
        dh0, dc0 = [None] * len(saved.calls), [None] * len(saved.calls)
        for layer in reversed(range(self.num_layers)):
            if d_out is not None and saved.masks and layer < self.num_layers - 1:
                d_out = d_out * saved.masks[layer]  # forward: next input = out * mask
            d_in = None
            for direction in range(D):
                k = layer * D + direction
                dy = None
                if d_out is not None:
                    dy = d_out[:, :, direction * H : (direction + 1) * H]
                    dy = np.ascontiguousarray(dy if direction == 0 else dy[::-1])
                dx, dh0[k], dc0[k] = self._run_cell_backward(
                    layer,
                    direction,
                    saved.calls[k],
                    dy,
                    None if dh_n is None else dh_n[k],
                    None if dc_n is None else dc_n[k],
                    input_grad=input_grad or layer > 0,
                )
                if dx is not None:
                    dx = dx if direction == 0 else dx[::-1]
                    d_in = dx if d_in is None else d_in + dx
            d_out = d_in
        self._release_saved(retain_graph)
        dx = None if d_out is None else self._from_time_major(d_out, saved.unbatched)
        if not state_grad:
            return dx, None
        dh0 = np.stack(dh0)
        dc0 = np.stack(dc0) if self._has_cell_state else None
        if saved.unbatched:
            dh0, dc0 = dh0[:, 0], (None if dc0 is None else dc0[:, 0])
        return dx, ((dh0, dc0) if self._has_cell_state else dh0)

    def _run_cell_backward(
        self, layer, direction, call: _CellCall, dy, dh_n, dc_n, input_grad: bool
    ) -> tuple:
        """(dx or None, dh0, dc0 or None) of one layer and direction; adds into its parameters'
        grad."""
        weights = self._cell_parameters(layer, direction)
        grads, frozen = self._cell_gradients(layer, direction)
        if self._has_cell_state:
            dx, dh0, dc0, _ = self._backend.ln_lstm_backward(
                call.x, call.h0, call.c0, weights, call.y, call.workspace, dy, dh_n, dc_n, grads,
                input_grad=input_grad, frozen=frozen,
            )  # fmt: skip
            return dx, dh0, dc0
        dx, dh0, _ = self._backend.ln_gru_backward(
            call.x, call.h0, weights, call.y, call.workspace, dy, dh_n, grads,
            input_grad=input_grad, frozen=frozen,
        )  # fmt: skip
        return dx, dh0, None


class LayerNormLSTM(LayerNormRecurrentLayer):
    """Multi-layer layer-normalised LSTM (Ba et al. 2016, haste's ``LayerNormLSTM``), with
    ``torch.nn.LSTM``'s constructor as far as it applies, on numpy arrays.

    ``pre = ln_ih_weight * LN(W_ih x_t) + ln_hh_weight * LN(W_hh h_{t-1}) + bias`` (gates i, f,
    g, o), ``c_t = f*c_{t-1} + i*g``, ``h_t = o * tanh(ln_cell_weight * LN(c_t) +
    ln_cell_bias)``, where LN normalises each row over its width (4*hidden_size, or
    hidden_size for c) with ``eps``, and the LN of ``W_hh h`` runs in each step's fused pass.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    bias : bool, default True
        Without it, no ``bias`` and no ``ln_cell_bias`` parameters.
    batch_first : bool, default False
    dropout : float in [0, 1], default 0
        Dropout on the output of every layer but the last, in training mode only.
    bidirectional : bool, default False
    eps : float, default 1e-5
        Added to the variance of every LN.
    dtype : numpy.float32 (default) or numpy.float64
    seed : int or None
    backend : 'fused' (C++ kernels, default) or 'reference' (plain NumPy)

    Not supported (unlike `fusedrnn.LSTM`): proj_size, variable lengths, truncated backward.

    Parameters of layer k (suffix ``_l{k}``, ``_l{k}_reverse`` for the reverse direction):
    ``weight_ih`` (4H, input), ``weight_hh`` (4H, H), ``bias`` (4H), ``ln_ih_weight``,
    ``ln_hh_weight`` (4H), ``ln_cell_weight``, ``ln_cell_bias`` (H). Initialised as PyTorch's
    LSTM (weights and bias uniform in +-1/sqrt(H)), the LN gains ones, ``ln_cell_bias`` zeros.

    Examples
    --------
    >>> lstm = LayerNormLSTM(10, 20, num_layers=2, seed=0)
    >>> output, (h_n, c_n) = lstm(np.zeros((5, 3, 10), np.float32))
    >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(output))
    """

    _mode = "lstm"
    _has_cell_state = True


class LayerNormGRU(LayerNormRecurrentLayer):
    """Multi-layer layer-normalised GRU, PyTorch's GRU form with LN on the input and recurrent
    pre-activations, on numpy arrays.

    ``a = ln_ih_weight * LN(W_ih x_t) + bias_ih``, ``b = ln_hh_weight * LN(W_hh h_{t-1}) +
    bias_hh`` (gates r, z, n, each LN over 3*hidden_size); ``r = sigmoid(a_r + b_r)``,
    ``z = sigmoid(a_z + b_z)``, ``n = tanh(a_n + r * b_n)``, ``h_t = (1-z)*n + z*h_{t-1}``. The
    state is not normalised (a GRU has no cell state; LN on h would change what it carries).

    Arguments as `LayerNormLSTM`; bias=False drops ``bias_ih`` and ``bias_hh``. Parameters of
    layer k: ``weight_ih`` (3H, input), ``weight_hh`` (3H, H), ``bias_ih``, ``bias_hh``,
    ``ln_ih_weight``, ``ln_hh_weight`` (3H).
    """

    _mode = "gru"
