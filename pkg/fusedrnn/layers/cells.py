"""`LSTMCell`, `GRUCell`, `RNNCell`: one time step, as ``torch.nn.LSTMCell`` / ``GRUCell`` /
``RNNCell``, for autoregressive generation and hand-written loops.

A step is the backend's one-layer function (``lstm_forward`` ...) with T = 1. Since a custom loop
calls the cell many times before it backpropagates, the cell keeps a LIFO tape: every
training-mode forward pushes what its backward needs, and every ``backward`` pops the most recent
step. Backpropagate the steps in reverse order of their forwards, as through time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._module import DTypeLike
from .._spec import layer_roles
from ._base import RecurrentModule, State, check_nonlinearity

# A cell without biases (bias=False) runs the one-layer functions with zero biases, whose
# gradients it does not want.
_BIASES = frozenset({"bias_ih", "bias_hh"})


@dataclass(frozen=True)
class _TapeEntry:
    """One training-mode step, batched: x (1, B, I), states ((B, H) each), y (1, B, H)."""

    x: np.ndarray
    states: tuple
    y: np.ndarray
    workspace: np.ndarray | None
    unbatched: bool


class RecurrentCell(RecurrentModule):
    """One step of a recurrent cell: the shared implementation of the three cells.

    Shapes: ``x`` (B, input_size) or unbatched (input_size,); ``h`` and ``c`` (B, hidden_size)
    or unbatched (hidden_size,).
    """

    _repr_fields = (("nonlinearity", "tanh"), ("reset_after", True))

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool,
        *,
        options: dict | None = None,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(input_size, hidden_size, bias, dtype, seed, backend, options)
        self._tape: list[_TapeEntry] = []
        self._reset_parameters()

    def _parameter_shapes(self) -> dict[str, tuple]:
        shapes = self._role_shapes(self.input_size, self.hidden_size)
        return {role: shapes[role] for role in layer_roles(self.bias)}

    @property
    def tape_depth(self) -> int:
        """How many training-mode steps wait for their backward."""
        return len(self._tape)

    def clear_tape(self) -> None:
        """Forget every recorded step (e.g. after generating in training mode)."""
        self._tape.clear()

    def _forget_saved(self, reason: str) -> None:
        self.clear_tape()  # a cell keeps a tape of steps, not one saved forward

    # ------------------------------------------------------------ forward

    def forward(self, x: np.ndarray, hx: State | None = None) -> State:
        """One step.

        Parameters
        ----------
        x : (B, input_size) or unbatched (input_size,), of the cell's dtype
        hx : h (B, hidden_size), or for LSTMCell a tuple (h, c); None means zeros.
            Unbatched: (hidden_size,).

        Returns
        -------
        h' : (B, hidden_size), or for LSTMCell (h', c'); unbatched: (hidden_size,)

        In training mode the step is pushed on the tape (with copies of x and hx, so the caller
        may reuse its buffers); in eval mode nothing is recorded.
        """
        self._check_array(
            x,
            "x",
            (None, self.input_size),
            ("B", "input_size"),
            unbatched=((self.input_size,), ("input_size",)),
        )
        unbatched = x.ndim == 1
        B = 1 if unbatched else x.shape[0]
        self._check_rows(B)  # before the copies below
        h0, c0 = self._check_state(hx, "hx", *self._state_shape(B, unbatched))
        states = [
            _batched(s, unbatched) if s is not None else np.zeros((B, self.hidden_size), self.dtype)
            for s in ((h0, c0) if self._has_cell_state else (h0,))
        ]
        x_seq = _batched(x, unbatched)[None]  # (1, B, input_size)
        if self.training:  # own copies: the tape must not change when the caller's buffers do
            x_seq = x_seq.copy()
            states = [s.copy() for s in states]
        y, *finals, workspace = getattr(self._backend, f"{self._mode}_forward")(
            x_seq, *states, *self._weights(), **self._options, training=self.training
        )
        if self.training:
            self._tape.append(_TapeEntry(x_seq, tuple(states), y, workspace, unbatched))
        finals = [f[0] if unbatched else f for f in finals]
        return tuple(finals) if self._has_cell_state else finals[0]

    # ------------------------------------------------------------ backward

    def backward(
        self, dh: np.ndarray | None = None, dc: np.ndarray | None = None, *, input_grad: bool = True
    ) -> tuple:
        """Gradients through the most recent recorded step, which is popped off the tape.

        Adds the parameter gradients into ``self.grads`` (a frozen parameter's is not
        computed).

        Parameters
        ----------
        dh : shape of h', or None for zeros
        dc : shape of c' (LSTMCell only), or None for zeros
        input_grad : bool, default True
            False when x is data whose gradient is not wanted: ``dx`` is then None, and the
            step skips ``dgates @ weight_ih``, a quarter of its GEMM work when input_size
            equals hidden_size.

        Returns
        -------
        dx : shape of x, or None (``input_grad=False``)
        dhx : shape of hx: dh_prev, or for LSTMCell (dh_prev, dc_prev)
        """
        name = type(self).__name__
        if not self._tape:
            raise RuntimeError(
                f"{name}.backward: the tape is empty; every backward pops one "
                f"training-mode forward (eval-mode forwards record nothing)"
            )
        if dc is not None and not self._has_cell_state:
            raise TypeError(f"dc is only for LSTMCell: {name} has no cell state")
        step = self._tape[-1]
        B = step.x.shape[1]
        shape, _, axes, _ = self._state_shape(B, step.unbatched)
        if dh is not None:
            dh = _batched(self._check_array(dh, "dh", shape, axes), step.unbatched)
        if dc is not None:
            dc = _batched(self._check_array(dc, "dc", shape, axes), step.unbatched)
        cell_grads = {"dc_n": dc} if self._has_cell_state else {}
        dx, *dstates, _ = getattr(self._backend, f"{self._mode}_backward")(
            step.x,
            *step.states,
            *self._weights()[:2],
            step.y,
            step.workspace,
            dy=None,
            dh_n=dh,
            **cell_grads,
            **self._options,
            grads=self.grads,
            input_grad=input_grad,
            frozen=self._frozen() if self.bias else self._frozen() | _BIASES,
        )
        self._tape.pop()  # only now: a call rejected above leaves the step for a retry
        if dx is not None:
            dx = dx[0, 0] if step.unbatched else dx[0]
        dstates = [d[0] if step.unbatched else d for d in dstates]
        return dx, (tuple(dstates) if self._has_cell_state else dstates[0])

    # ------------------------------------------------------------ helpers

    def _state_shape(self, B: int, unbatched: bool) -> tuple:
        shape = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        axes = ("hidden_size",) if unbatched else ("B", "hidden_size")
        return shape, shape, axes, axes

    def _weights(self) -> tuple:
        """(weight_ih, weight_hh, bias_ih, bias_hh); zero biases when the cell has none."""
        p = self._params
        if self.bias:
            return p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]
        zeros = np.zeros(p["weight_ih"].shape[0], self.dtype)
        return p["weight_ih"], p["weight_hh"], zeros, zeros


def _batched(a: np.ndarray, unbatched: bool) -> np.ndarray:
    return a[None] if unbatched else a


class LSTMCell(RecurrentCell):
    """One LSTM step, as ``torch.nn.LSTMCell``: ``(h', c') = cell(x, (h, c))``.

    Parameters
    ----------
    input_size, hidden_size : int
    bias : bool, default True
    dtype : numpy.float32 (default) or numpy.float64
    seed : int or None
        Seeds the initialisation (uniform in +-1/sqrt(hidden_size), as PyTorch).
    backend : 'fused' (default) or 'reference'

    Parameters: ``weight_ih`` (4H, input_size), ``weight_hh`` (4H, H), ``bias_ih``, ``bias_hh``
    (4H,), gates i, f, g, o. ``backward(dh, dc=None)`` returns ``(dx, (dh_prev, dc_prev))``.
    """

    _mode = "lstm"
    _has_cell_state = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(input_size, hidden_size, bias, dtype=dtype, seed=seed, backend=backend)


class GRUCell(RecurrentCell):
    """One GRU step, as ``torch.nn.GRUCell``: ``h' = cell(x, h)``.

    Arguments as `LSTMCell`, plus ``reset_after`` (True: PyTorch's form; False: Cho et al.
    2014). Gates r, z, n. ``backward(dh)`` returns ``(dx, dh_prev)``.
    """

    _mode = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        reset_after: bool = True,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            bias,
            options={"reset_after": bool(reset_after)},
            dtype=dtype,
            seed=seed,
            backend=backend,
        )


class RNNCell(RecurrentCell):
    """One Elman RNN step, as ``torch.nn.RNNCell``: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Arguments as `LSTMCell`, plus ``nonlinearity`` 'tanh' (default) or 'relu'.
    ``backward(dh)`` returns ``(dx, dh_prev)``.
    """

    _mode = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            bias,
            options={"nonlinearity": check_nonlinearity(nonlinearity)},
            dtype=dtype,
            seed=seed,
            backend=backend,
        )
