"""The fused kernels, one layer and one direction over a whole sequence.

Signatures, shapes and workspace layouts are those of `docs/kernels.md`, shared with the NumPy
twin `fusedrnn.reference`. Arrays must be numpy arrays of one dtype, float32 or float64; anything
else is a TypeError/ValueError naming the argument. Non-contiguous inputs are copied first.
Gradient dicts passed as ``grads`` are accumulated into in place (``+=``).
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from . import _core

_GRAD_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _grad_buffers(grads: Optional[Mapping[str, np.ndarray]]) -> list:
    if grads is None:
        return [None] * 4
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays or None, got {type(grads).__name__}")
    missing = [k for k in _GRAD_KEYS if k not in grads]
    if missing:
        raise ValueError(f"grads must have the keys {list(_GRAD_KEYS)}; missing {missing}")
    return [grads[k] for k in _GRAD_KEYS]


def _grads_dict(grads, arrays) -> dict:
    out = dict(zip(_GRAD_KEYS, arrays))
    if grads is not None and not isinstance(grads, dict):
        return out
    if grads is not None:
        grads.update(out)  # the same arrays, accumulated into in place
        return grads
    return out


def workspace_size(cell: str, T: int, B: int, H: int) -> int:
    """Length of the workspace a training forward saves: T*B*5H (lstm), T*B*4H (gru), 0 (rnn)."""
    if cell == "lstm":
        return _core.lstm_workspace_size(T, B, H)
    if cell == "gru":
        return _core.gru_workspace_size(T, B, H)
    if cell == "rnn":
        return 0
    raise ValueError(f"cell must be 'lstm', 'gru' or 'rnn', got {cell!r}")


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


def lstm_backward(x, h0, c0, weight_ih, weight_hh, y, workspace, dy=None, dh_n=None, dc_n=None,
                  grads=None):
    """Gradients of an LSTM sequence.

    Parameters
    ----------
    x, h0, c0, weight_ih, weight_hh : as given to `lstm_forward`
    y, workspace : as returned by a training `lstm_forward`
    dy : (T, B, H) or None;  dh_n, dc_n : (B, H) or None (None = zeros)
    grads : dict of weight_ih, weight_hh, bias_ih, bias_hh arrays to accumulate into, or None

    Returns
    -------
    dx : (T, B, input_size);  dh0, dc0 : (B, H);  grads : dict
    """
    dx, dh0, dc0, *params = _core.lstm_backward(x, h0, c0, weight_ih, weight_hh, y, workspace, dy,
                                                dh_n, dc_n, *_grad_buffers(grads))
    return dx, dh0, dc0, _grads_dict(grads, params)


def gru_forward(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, reset_after: bool = True,
                training: bool = True):
    """GRU over a sequence; `reset_after` picks PyTorch's form (True) or Cho et al. 2014 (False).

    Parameters
    ----------
    x : (T, B, input_size);  h0 : (B, H)
    weight_ih : (3H, input_size), gates r, z, n;  weight_hh : (3H, H);  bias_ih, bias_hh : (3H,)

    Returns
    -------
    y : (T, B, H);  h_n : (B, H);  workspace : (T*B*4H,) or None
    """
    return _core.gru_forward(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, bool(reset_after),
                             bool(training))


def gru_backward(x, h0, weight_ih, weight_hh, y, workspace, dy=None, dh_n=None,
                 reset_after: bool = True, grads=None):
    """Gradients of a GRU sequence. Returns ``(dx, dh0, grads)``; see `lstm_backward`."""
    dx, dh0, *params = _core.gru_backward(x, h0, weight_ih, weight_hh, y, workspace, dy, dh_n,
                                          bool(reset_after), *_grad_buffers(grads))
    return dx, dh0, _grads_dict(grads, params)


def rnn_forward(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity: str = "tanh",
                training: bool = True):
    """Elman RNN over a sequence, ``nonlinearity`` 'tanh' or 'relu'.

    Parameters
    ----------
    x : (T, B, input_size);  h0 : (B, H)
    weight_ih : (H, input_size);  weight_hh : (H, H);  bias_ih, bias_hh : (H,)

    Returns
    -------
    y : (T, B, H);  h_n : (B, H);  workspace : empty array (training) or None
    """
    return _core.rnn_forward(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity,
                             bool(training))


def rnn_backward(x, h0, weight_ih, weight_hh, y, workspace, dy=None, dh_n=None,
                 nonlinearity: str = "tanh", grads=None):
    """Gradients of an RNN sequence. Returns ``(dx, dh0, grads)``; see `lstm_backward`."""
    dx, dh0, *params = _core.rnn_backward(x, h0, weight_ih, weight_hh, y, workspace, dy, dh_n,
                                          nonlinearity, *_grad_buffers(grads))
    return dx, dh0, _grads_dict(grads, params)
