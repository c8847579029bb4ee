"""fusedrnn inside PyTorch: the fused kernels as drop-in ``torch.nn`` modules with autograd.

``import fusedrnn.torch`` needs PyTorch (``pip install "fusedrnn[torch]"``); ``import fusedrnn``
does not. The kernels are registered as PyTorch operators (``torch.ops.fusedrnn.stack_forward``,
``stack_backward``, ``attention_forward``, ``attention_backward``) with fake implementations and
autograd formulas, so they run under ``torch.compile``. See docs/torch.md.
"""

from __future__ import annotations

from fusedrnn.torch import _ops  # noqa: F401  (registers the operators)
from fusedrnn.torch.attention import scaled_dot_product_attention
from fusedrnn.torch.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, convert

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "convert",
    "scaled_dot_product_attention",
]
