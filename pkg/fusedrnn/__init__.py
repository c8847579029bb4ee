"""fusedrnn: fused C++ CPU kernels for recurrent networks and attention, behind a NumPy API."""

from . import decoding, distributed, functional, optim, reference, sampling
from ._config import empty_cache, get_num_threads, set_num_threads, show_config
from ._module import Module, Parameter
from ._version import __version__
from .attention import (
    AdditiveAttention,
    KVCache,
    MultiheadAttention,
    ScaledDotProductAttention,
    scaled_dot_product_attention,
)
from .containers import ModuleDict, ModuleList, Sequential
from .layers import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .losses import CrossEntropyLoss, MSELoss, NLLLoss
from .nn import Embedding, Linear
from .optim import SGD, Adam, clip_grad_norm_, clip_grad_value_
from .parameter_free import Dropout, LogSoftmax
from .serialization import load, save

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "SGD",
    "Adam",
    "AdditiveAttention",
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "GRUCell",
    "KVCache",
    "LSTMCell",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "Module",
    "ModuleDict",
    "ModuleList",
    "MultiheadAttention",
    "NLLLoss",
    "Parameter",
    "RNNCell",
    "ScaledDotProductAttention",
    "Sequential",
    "__version__",
    "clip_grad_norm_",
    "clip_grad_value_",
    "decoding",
    "distributed",
    "empty_cache",
    "functional",
    "get_num_threads",
    "load",
    "optim",
    "reference",
    "sampling",
    "save",
    "scaled_dot_product_attention",
    "set_num_threads",
    "show_config",
]
