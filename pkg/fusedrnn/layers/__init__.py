"""Drop-in counterparts of PyTorch's recurrent modules on numpy arrays.

`LSTM`, `GRU`, `RNN` (whole sequences, several layers, both directions, packed lengths) and
`LSTMCell`, `GRUCell`, `RNNCell` (one step, with a LIFO tape for custom loops), the
layer-normalised `LayerNormLSTM` and `LayerNormGRU`, all built on the
one base class of every fusedrnn module, `Module` (through `RecurrentModule`, what the recurrent
ones share), and run by the fused kernels or their NumPy reference.
"""

from .._module import Module
from ._base import RecurrentModule
from .cells import GRUCell, LSTMCell, RecurrentCell, RNNCell
from .layer_norm import LayerNormGRU, LayerNormLSTM, LayerNormRecurrentLayer
from .recurrent import GRU, LSTM, RNN, RecurrentLayer

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "LayerNormGRU",
    "LayerNormLSTM",
    "LayerNormRecurrentLayer",
    "Module",
    "RNNCell",
    "RecurrentCell",
    "RecurrentLayer",
    "RecurrentModule",
]
