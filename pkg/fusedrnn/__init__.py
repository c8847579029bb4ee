"""fusedrnn: fused C++ CPU kernels for recurrent networks and attention, behind a NumPy API."""

__version__ = "0.1.0"

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
