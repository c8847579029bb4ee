"""fusedrnn: fused C++ CPU kernels for recurrent networks and attention, behind a NumPy API."""

__version__ = "0.1.0"

import os

# The kernels' OpenMP teams meet at a barrier every time step. libgomp, seeing as many threads as
# cores, spins up to 300,000 rounds (milliseconds) at each wait before it sleeps; when other
# programs share the cores, a waiting thread then burns the core its partner needs, and a step
# of microseconds takes milliseconds (measured: LSTM B=16 H=128 forward+backward 400 ms instead
# of 25 ms on a busy machine). A short spin keeps barriers fast on a quiet machine and yields the
# core on a busy one. Read once, when libgomp loads (with the extension, below); a value the
# user set is kept. fusedrnn.show_config() shows it.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from . import functional, optim, reference, sampling
from ._config import get_num_threads, set_num_threads, show_config
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
    "functional",
    "get_num_threads",
    "optim",
    "reference",
    "sampling",
    "scaled_dot_product_attention",
    "set_num_threads",
    "show_config",
]
