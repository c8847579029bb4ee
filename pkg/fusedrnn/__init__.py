"""fusedrnn: fused C++ CPU kernels for recurrent networks and attention, behind a NumPy API."""

__version__ = "0.1.0"

import os  # noqa: E402

# The kernels' OpenMP teams meet at a barrier every time step. libgomp, seeing as many threads as
# cores, spins up to 300,000 rounds (milliseconds) at each wait before it sleeps; when other
# programs share the cores, a waiting thread then burns the core its partner needs, and a step
# of microseconds takes milliseconds (measured: LSTM B=16 H=128 forward+backward 400 ms instead
# of 25 ms on a busy machine). A short spin keeps barriers fast on a quiet machine and yields the
# core on a busy one. Read once, when libgomp loads (with the extension, below); a value the
# user set is kept. fusedrnn.show_config() shows it.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from . import functional, reference  # noqa: E402
from ._config import get_num_threads, set_num_threads, show_config  # noqa: E402
from .attention import (  # noqa: E402
    AdditiveAttention,
    MultiheadAttention,
    ScaledDotProductAttention,
    scaled_dot_product_attention,
)
from .layers import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell  # noqa: E402

__all__ = ["functional", "reference", "get_num_threads", "set_num_threads", "show_config",
           "__version__", "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell",
           "scaled_dot_product_attention", "ScaledDotProductAttention", "MultiheadAttention",
           "AdditiveAttention"]
