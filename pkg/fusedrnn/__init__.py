"""fusedrnn: fused C++ CPU kernels for recurrent networks and attention, behind a NumPy API."""

from . import functional, optim, reference, sampling
from ._config import empty_cache, get_num_threads, set_num_threads, show_config
from ._version import __version__
from .attention import (
    AdditiveAttention,
    MultiheadAttention,
    ScaledDotProductAttention,
    scaled_dot_product_attention,
)
from .layers import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .losses import CrossEntropyLoss
from .nn import Embedding, Linear
from .optim import SGD, Adam, clip_grad_norm_, clip_grad_value_

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "SGD",
    "Adam",
    "AdditiveAttention",
    "CrossEntropyLoss",
    "Embedding",
    "GRUCell",
    "LSTMCell",
    "Linear",
    "MultiheadAttention",
    "RNNCell",
    "ScaledDotProductAttention",
    "__version__",
    "clip_grad_norm_",
    "clip_grad_value_",
    "empty_cache",
    "functional",
    "get_num_threads",
    "optim",
    "reference",
    "sampling",
    "scaled_dot_product_attention",
    "set_num_threads",
    "show_config",
]
