"""fusedrnn: fused C++ CPU kernels for recurrent networks and attention, behind a NumPy API."""

from . import decoding, distributed, functional, optim, reference, sampling
from ._cell_options import CellOptions, cell_options
from ._config import empty_cache, get_num_threads, set_num_threads, show_config
from ._module import Module, Parameter
from ._onnx_recurrent import from_onnx_node, onnx_forward, to_onnx_weights
from ._recurrent_noise import RecurrentNoise, recurrent_noise
from ._version import __version__
from .attention import (
    AdditiveAttention,
    KVCache,
    MultiheadAttention,
    ScaledDotProductAttention,
    scaled_dot_product_attention,
)
from .containers import ModuleDict, ModuleList, Sequential
from .layers import GRU, LSTM, RNN, GRUCell, LayerNormGRU, LayerNormLSTM, LSTMCell, RNNCell
from .losses import CrossEntropyLoss, MSELoss, NLLLoss
from .nn import Embedding, Linear
from .normalization import LayerNorm
from .optim import SGD, Adam, AdamW, clip_grad_norm_, clip_grad_value_
from .parameter_free import GELU, Dropout, LogSoftmax, ReLU, Sigmoid, Tanh
from .serialization import load, save
from .transformer import (
    LearnedPositionalEncoding,
    SinusoidalPositionalEncoding,
    TransformerDecoderBlock,
)

__all__ = [
    "GELU",
    "GRU",
    "LSTM",
    "RNN",
    "SGD",
    "Adam",
    "AdamW",
    "AdditiveAttention",
    "CellOptions",
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "GRUCell",
    "KVCache",
    "LSTMCell",
    "LayerNorm",
    "LayerNormGRU",
    "LayerNormLSTM",
    "LearnedPositionalEncoding",
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
    "ReLU",
    "RecurrentNoise",
    "ScaledDotProductAttention",
    "Sequential",
    "Sigmoid",
    "SinusoidalPositionalEncoding",
    "Tanh",
    "TransformerDecoderBlock",
    "__version__",
    "cell_options",
    "clip_grad_norm_",
    "clip_grad_value_",
    "decoding",
    "distributed",
    "empty_cache",
    "from_onnx_node",
    "functional",
    "get_num_threads",
    "load",
    "onnx_forward",
    "optim",
    "recurrent_noise",
    "reference",
    "sampling",
    "save",
    "scaled_dot_product_attention",
    "set_num_threads",
    "show_config",
    "to_onnx_weights",
]
