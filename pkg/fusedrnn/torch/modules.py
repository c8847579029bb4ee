"""`LSTM`, `GRU`, `RNN` and the three cells: ``torch.nn``'s modules whose forward runs the fused
kernels (the ``fusedrnn::stack_forward`` operator), and `convert`.

The cells subclass their ``torch.nn`` namesakes; `LSTM`, `GRU`, `RNN` subclass
``torch.nn.RNNBase``, as their namesakes do (why not the namesakes themselves: `_FusedStack`).
So they have ``torch.nn``'s constructor, Parameters, ``state_dict``, ``flatten_parameters`` and
``repr`` as they are; only ``forward`` differs, and only where the kernels serve the call (CPU
tensors of float32 or float64, no autocast). Anything else runs ``torch.nn``'s own forward, with
one warning per module: never a wrong answer.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fusedrnn.torch import _ops

Tensor = torch.Tensor
FUSED_DTYPES = (torch.float32, torch.float64)


def unserved_reason(tensors: list[Tensor | None]) -> str | None:
    """Why the kernels cannot serve a call of these tensors (None: they can).

    The first tensor is the input; every other one must share its device and dtype, else the
    call is left to PyTorch, which raises its own error for the mismatch.
    """
    first = tensors[0]
    if not (first.is_cpu or first.is_meta):  # meta: the operators' fake implementations
        return f"{first.device.type} tensors"
    dtype, place = first.dtype, (first.is_cpu, first.is_meta)
    if dtype not in FUSED_DTYPES:
        return f"dtype {dtype}"
    if torch.is_autocast_enabled("cpu"):
        return "autocast"
    for t in tensors[1:]:
        if t is not None and ((t.is_cpu, t.is_meta) != place or t.dtype != dtype):
            return ""  # a mismatch: PyTorch's forward raises its own error for it
    return None


def warn_fallback(owner: object, what: str, reason: str) -> None:
    """One warning per ``owner`` (a module, or a function's state) that PyTorch serves a call."""
    if reason and not getattr(owner, "_fusedrnn_fallback_warned", False):
        owner._fusedrnn_fallback_warned = True
        warnings.warn(
            f"fusedrnn.torch: {what} runs PyTorch's own implementation for {reason} (the fused "
            f"kernels take CPU tensors of float32 or float64); warned once",
            UserWarning,
            stacklevel=3,
        )


def before_fallback(module, reason: str) -> None:
    """Before a module runs ``torch.nn``'s forward for ``reason``: its one warning, or a
    ValueError when there is no such forward (GRU's reset_after=False)."""
    if not module.reset_after:
        raise ValueError(
            f"{type(module).__name__}(reset_after=False) has no PyTorch implementation to fall "
            f"back to, and the fused kernels cannot serve {reason or 'mixed devices or dtypes'}"
        )
    warn_fallback(module, type(module).__name__, reason)


def refuse_script(module) -> None:
    """``torch.jit.script``'s hook (``__prepare_scriptable__``): a clear error. TorchScript cannot
    compile a forward that calls Python operators, and the hook's other use, handing script a
    ``torch.nn`` module in this one's place, would put that module into the caller's own model
    too (script writes the hook's result back into the parent module)."""
    name = type(module).__name__
    raise RuntimeError(
        f"torch.jit.script cannot compile fusedrnn.torch.{name}: its forward calls fusedrnn's "
        f"operators from Python. torch.jit.trace and torch.export record those operators, and "
        f"torch.compile runs them; or script a model built on torch.nn.{name}"
    )


def dropout_masks(module, T: int, B: int, like: Tensor) -> Tensor | None:
    """The L-1 inverted-dropout masks (L-1, T, B, D*H_out) between layers, training mode only:
    1/(1-p) with probability 1-p, else 0, drawn from PyTorch's generator."""
    p = module.dropout
    if not module.training or p == 0 or module.num_layers == 1:
        return None
    D = 2 if module.bidirectional else 1
    shape = (module.num_layers - 1, T, B, D * (module.proj_size or module.hidden_size))
    if p == 1:
        return like.new_zeros(shape)
    keep = 1.0 - p
    # kept where a uniform draw in [0, 1) is >= p: probability 1 - p. (bernoulli_ draws one
    # number at a time: 1.19 ms for a (1, 35, 20, 200) mask on a Zen 3 core, this 0.52 ms.)
    return like.new_empty(shape).uniform_().ge_(p).div_(keep)


class _FusedStack:
    """The forward of `LSTM`, `GRU` and `RNN`: the contract of ``torch.nn.LSTM.forward`` (and
    GRU's, RNN's) on the fused kernels.

    The three derive from ``torch.nn.RNNBase``, not from ``torch.nn.LSTM`` / ``GRU`` / ``RNN``:
    ``torch.compile`` refuses any instance of those three (``torch._dynamo.config.allow_rnn``),
    and would refuse these too. So ``isinstance(m, torch.nn.RNNBase)`` holds, ``isinstance(m,
    torch.nn.LSTM)`` does not; ``m.mode`` is "LSTM", "GRU", "RNN_TANH" or "RNN_RELU" as there.
    """

    _fused_mode: ClassVar[str]  # the kernel family: "lstm", "gru" or "rnn"
    _torch_class: ClassVar[type]  # the torch.nn class: its forward is the fallback
    reset_after: bool = True  # GRU only; a class default, so that `convert` needs no __init__

    def __prepare_scriptable__(self):
        refuse_script(self)

    def forward(self, input, hx=None):
        """As ``torch.nn.LSTM`` / ``GRU`` / ``RNN``: ``(output, h_n)``, or for LSTM
        ``(output, (h_n, c_n))``; a PackedSequence input gives a PackedSequence output."""
        self._update_flat_weights()
        data = input.data if isinstance(input, PackedSequence) else input
        states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
        reason = unserved_reason([data, *states, *self._flat_weights])
        if reason is not None:
            before_fallback(self, reason)
            return self._torch_class.forward(self, input, hx)
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        return self._forward_padded(input, hx)

    def _forward_padded(self, input: Tensor, hx):
        name = type(self).__name__
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
        if hx is not None:
            want = 3 if batched else 2
            for i, state in enumerate(self._state_parts(hx)):
                if state.dim() != want:
                    raise RuntimeError(
                        f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, hx"
                        f"{f'[{i}]' if self._fused_mode == 'lstm' else ''} should also be "
                        f"{want}-D but got {state.dim()}-D tensor"
                    )
            if not batched:
                hx = self._map_state(hx, lambda s: s.unsqueeze(1))
        hx = self._zeros_if_none(hx, input, input.size(batch_dim))
        self.check_forward_args(input, hx, None)
        x = input.transpose(0, 1) if self.batch_first else input
        y, hidden = self._run(x, hx, None)
        if self.batch_first:
            y = y.transpose(0, 1)
        if not batched:
            y = y.squeeze(batch_dim)
            hidden = self._map_state(hidden, lambda s: s.squeeze(1))
        return y, hidden

    def _forward_packed(self, input: PackedSequence, hx):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is not None:
            hx = self.permute_hidden(hx, sorted_indices)
        hx = self._zeros_if_none(hx, data, int(batch_sizes[0]))
        self.check_forward_args(data, hx, batch_sizes)
        # time-major and padded, in the packing's order (longest first); lengths (B,) int64
        x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
        y, hidden = self._run(x, hx, lengths)
        output = pack_padded_sequence(y, lengths).data
        packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        return packed, self.permute_hidden(hidden, unsorted_indices)

    def _run(self, x: Tensor, hx, lengths: Tensor | None) -> tuple:
        """The operator on time-major x (T, B, input_size) and batched states."""
        T, B = x.shape[0], x.shape[1]
        h0, c0 = (hx[0], hx[1]) if self._fused_mode == "lstm" else (hx, None)
        weights = list(self._flat_weights)
        training = _ops.needs_grad([x, h0, c0, *weights])
        y, h_n, c_n, _ = _ops.run_stack(
            x.contiguous(),
            h0.contiguous(),
            None if c0 is None else c0.contiguous(),
            weights,
            lengths,
            dropout_masks(self, T, B, x),
            self._fused_mode,
            self.num_layers,
            self.bidirectional,
            self.bias,
            self.proj_size,
            self.reset_after,
            getattr(self, "nonlinearity", "tanh"),
            training,
        )
        return y, ((h_n, c_n) if self._fused_mode == "lstm" else h_n)

    # ------------------------------------------------------------ h, or (h, c) for LSTM

    def _state_parts(self, hx) -> tuple:
        return tuple(hx) if self._fused_mode == "lstm" else (hx,)

    def _map_state(self, hx, fn):
        return tuple(map(fn, hx)) if self._fused_mode == "lstm" else fn(hx)

    def _zeros_if_none(self, hx, like: Tensor, batch: int):
        """Zero initial states (L*D, B, H_out) (and c (L*D, B, hidden_size)) for None."""
        if hx is not None:
            return hx
        LD = self.num_layers * (2 if self.bidirectional else 1)
        h0 = like.new_zeros(LD, batch, self.proj_size or self.hidden_size)
        if self._fused_mode == "lstm":
            return h0, like.new_zeros(LD, batch, self.hidden_size)
        return h0


class LSTM(_FusedStack, torch.nn.RNNBase):
    """``torch.nn.LSTM`` on fusedrnn's kernels: the same constructor, Parameters and forward.

    Examples
    --------
    >>> lstm = LSTM(10, 20, num_layers=2)
    >>> output, (h_n, c_n) = lstm(torch.zeros(5, 3, 10))
    """

    _fused_mode = "lstm"
    _torch_class = torch.nn.LSTM
    # torch.nn.LSTM's own (h, c) handling, borrowed: this class cannot inherit it (see
    # _FusedStack)
    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size
    check_forward_args = torch.nn.LSTM.check_forward_args
    permute_hidden = torch.nn.LSTM.permute_hidden

    def __init__(self, *args, **kwargs) -> None:
        torch.nn.RNNBase.__init__(self, "LSTM", *args, **kwargs)


class GRU(_FusedStack, torch.nn.RNNBase):
    """``torch.nn.GRU`` on fusedrnn's kernels, plus ``reset_after``.

    ``reset_after=True`` (default) is PyTorch's form ``n = tanh(W_in x + b_in + r * (W_hn h +
    b_hn))``; False is Cho et al. 2014, ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``, with
    the same Parameters (PyTorch has no implementation of it to fall back to).
    """

    _fused_mode = "gru"
    _torch_class = torch.nn.GRU

    def __init__(self, *args, reset_after: bool = True, **kwargs) -> None:
        if "proj_size" in kwargs:  # torch.nn.GRU's check
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        torch.nn.RNNBase.__init__(self, "GRU", *args, **kwargs)
        self.reset_after = bool(reset_after)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")


class RNN(_FusedStack, torch.nn.RNNBase):
    """``torch.nn.RNN`` (tanh or relu) on fusedrnn's kernels."""

    _fused_mode = "rnn"
    _torch_class = torch.nn.RNN

    def __init__(self, *args, **kwargs) -> None:
        # torch.nn.RNN's parsing: nonlinearity is the fourth positional argument
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        mode = "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
        torch.nn.RNNBase.__init__(self, mode, *args, **kwargs)


# ---------------------------------------------------------------- cells


class _FusedCell:
    """The forward of the cells: one step, the operator with T = 1 and one layer."""

    _fused_mode: ClassVar[str]
    reset_after: bool = True

    def __prepare_scriptable__(self):
        refuse_script(self)

    def forward(self, input: Tensor, hx=None):
        """As ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell``: h', or for LSTMCell (h', c')."""
        lstm = self._fused_mode == "lstm"
        states = ([None, None] if hx is None else list(hx)) if lstm else [hx]
        weights = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        reason = unserved_reason([input, *states, *weights])
        if reason is not None:
            before_fallback(self, reason)
            return super().forward(input, hx)
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        for i, state in enumerate(states):
            if state is not None and state.dim() not in (1, 2):
                raise ValueError(
                    f"{name}: Expected hx{f'[{i}]' if lstm else ''} to be 1D or 2D, got "
                    f"{state.dim()}D instead"
                )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)

        def batched_state(state: Tensor | None) -> Tensor:
            if state is None:
                return x.new_zeros(x.shape[0], self.hidden_size)
            return state if batched else state.unsqueeze(0)

        h0 = batched_state(states[0])
        c0 = batched_state(states[1]) if lstm else None
        weights = [w for w in weights if w is not None]
        # (RNNCell's own attribute; the others have none: no __getattr__ and its exception)
        nonlinearity = self.__dict__.get("nonlinearity", "tanh")
        h, c = _ops.run_cell(
            x, h0, c0, weights, self._fused_mode, self.bias, self.reset_after, nonlinearity,
            _ops.needs_grad([x, h0, c0, *weights]),
        )  # fmt: skip
        if not batched:
            h, c = h[0], (None if c is None else c[0])
        return (h, c) if lstm else h


class LSTMCell(_FusedCell, torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` on fusedrnn's kernels."""

    _fused_mode = "lstm"


class GRUCell(_FusedCell, torch.nn.GRUCell):
    """``torch.nn.GRUCell`` on fusedrnn's kernels, plus ``reset_after`` (see `GRU`)."""

    _fused_mode = "gru"

    def __init__(self, *args, reset_after: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reset_after = bool(reset_after)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")


class RNNCell(_FusedCell, torch.nn.RNNCell):
    """``torch.nn.RNNCell`` (tanh or relu) on fusedrnn's kernels."""

    _fused_mode = "rnn"


# ---------------------------------------------------------------- convert

_FUSED_CLASS = {
    torch.nn.LSTM: LSTM,
    torch.nn.GRU: GRU,
    torch.nn.RNN: RNN,
    torch.nn.LSTMCell: LSTMCell,
    torch.nn.GRUCell: GRUCell,
    torch.nn.RNNCell: RNNCell,
}


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Make every ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (and cell) in ``model`` run on fusedrnn.

    In place: each such module becomes an instance of its `fusedrnn.torch` subclass, the same
    object with the same Parameters, buffers and hooks, so an optimizer built before still
    updates them and a state_dict loads unchanged. Subclasses of those modules (whose forward
    may differ) are left alone. A call the kernels cannot serve (CUDA tensors, dtypes other
    than float32/float64) runs PyTorch's own forward, with one warning.

    Parameters
    ----------
    model : torch.nn.Module
        Also when it is itself an LSTM, GRU or RNN.

    Returns
    -------
    model : the same object
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        fused = _FUSED_CLASS.get(type(module))
        if fused is not None:
            module.__class__ = fused
    return model
