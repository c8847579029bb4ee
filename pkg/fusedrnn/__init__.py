"""fusedrnn: fused C++ CPU kernels for recurrent networks and attention, behind a NumPy API."""

import os

# How long libgomp's idle threads spin before they sleep, between the kernels' OpenMP teams (the
# time loops' per-step barrier is the kernels' own, csrc/common/threading.h, and yields the core
# on a busy machine). Too short and a call's second team wakes a sleeping thread, which the
# scheduler then often places on the caller's own core: on this 2-core machine an RNN forward of
# 0.24 ms took 0.8 ms at random with 10,000 rounds, steadily 0.24 ms with 100,000. libgomp's
# default, 300,000, spins for milliseconds, which on a busy machine burns cores others need.
# Read once, when libgomp loads (with the extension, below); a value the user set is kept.
# fusedrnn.show_config() shows it.
os.environ.setdefault("GOMP_SPINCOUNT", "100000")

from . import distributed, functional, optim, reference, sampling
from ._config import empty_cache, get_num_threads, set_num_threads, show_config
from ._module import Module, Parameter
from ._version import __version__
from .attention import (
    AdditiveAttention,
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
