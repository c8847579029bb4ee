"""Plain NumPy twins of the fused kernels in ``fusedrnn.functional`` (contract: docs/kernels.md).

Readable before fast: a Python loop over time steps, one NumPy expression per line of math.
Every fused kernel is tested against these functions, and the workspaces are interchangeable.
``stack_forward`` / ``stack_backward`` run layer stacks (layers, directions, lengths, LSTM
projections, dropout masks) with a Python loop over the one-layer cells. ``attention_forward`` /
``attention_backward`` and the additive pair compute attention from the full score matrix.
``cross_entropy`` is the twin of the fused softmax cross-entropy (loss and gradient of the
logits), ``linear_forward`` / ``linear_backward`` of the dense layer, ``layer_norm_*`` of layer
normalisation and ``ln_lstm_*`` / ``ln_gru_*`` of the layer-normalised cells; ``adam_update``
and ``sum_of_squares`` of the optimizer's update and of the gradient norm.
"""

from ._common import workspace_size
from .attention import (
    additive_attention_backward,
    additive_attention_forward,
    attention_backward,
    attention_forward,
)
from .cross_entropy import cross_entropy
from .gru import gru_backward, gru_forward
from .layer_norm import (
    layer_norm_backward,
    layer_norm_forward,
    ln_gru_backward,
    ln_gru_forward,
    ln_lstm_backward,
    ln_lstm_forward,
)
from .linear import linear_backward, linear_forward
from .lstm import lstm_backward, lstm_forward
from .optim import adam_update, sum_of_squares
from .rnn import rnn_backward, rnn_forward
from .stack import StackSaved, stack_backward, stack_forward

__all__ = [
    "StackSaved",
    "adam_update",
    "additive_attention_backward",
    "additive_attention_forward",
    "attention_backward",
    "attention_forward",
    "cross_entropy",
    "gru_backward",
    "gru_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "linear_backward",
    "linear_forward",
    "ln_gru_backward",
    "ln_gru_forward",
    "ln_lstm_backward",
    "ln_lstm_forward",
    "lstm_backward",
    "lstm_forward",
    "rnn_backward",
    "rnn_forward",
    "stack_backward",
    "stack_forward",
    "sum_of_squares",
    "workspace_size",
]
