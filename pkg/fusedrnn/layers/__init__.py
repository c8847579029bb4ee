"""Drop-in counterparts of PyTorch's recurrent modules on numpy arrays.

`LSTM`, `GRU`, `RNN` (whole sequences, several layers, both directions, packed lengths), all
built on one base class, `Module`, and run by the fused kernels or their NumPy reference.
"""

from ._base import Module
from .recurrent import GRU, LSTM, RNN, RecurrentLayer

__all__ = ["GRU", "LSTM", "Module", "RNN", "RecurrentLayer"]
