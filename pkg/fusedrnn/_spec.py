"""The facts of the recurrent cells that every part of fusedrnn spells the same way: how many gate
blocks each cell has, and PyTorch's names of the parameters of a cell and of a layer stack.

The layers, the fused functions, the NumPy reference, the benchmark and the tests all read them
from here, so that a name or a count is written once.
"""

from __future__ import annotations

import functools

# Gate blocks of hidden_size rows each in weight_ih / weight_hh / the biases, in PyTorch's order:
# LSTM i, f, g, o; GRU r, z, n; Elman RNN one.
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
MODES = tuple(GATES)  # the kernel families, "lstm", "gru", "rnn"

# The parameters of one cell (one layer, one direction), in PyTorch's order; a stack's parameter
# of layer k, direction d is the role with the suffix `layer_suffix(k, d)`.
CELL_PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
BIASES = ("bias_ih", "bias_hh")  # the roles a layer built with bias=False lacks
PROJECTION = "weight_hr"  # LSTM with proj_size > 0 only: h = weight_hr (o * tanh(c))
# LSTM with peepholes only (ONNX's P, oneDNN's): (3*hidden_size,) = p_i, p_f, p_o in fusedrnn's
# gate order (ONNX stores them p_i, p_o, p_f); i and f see c_{t-1}, o sees c_t.
PEEPHOLE = "weight_peephole"
STACK_ROLES = (*CELL_PARAMETERS, PROJECTION, PEEPHOLE)

DIRECTION_SUFFIXES = ("", "_reverse")  # direction 0 runs forward in time, 1 backward


def num_directions(bidirectional: bool) -> int:
    """``D``: 2 for a bidirectional stack, else 1."""
    return 2 if bidirectional else 1


def layer_suffix(layer: int, direction: int) -> str:
    """PyTorch's suffix of layer ``layer``, direction ``direction``: ``_l1_reverse``."""
    return f"_l{layer}{DIRECTION_SUFFIXES[direction]}"


def layer_roles(bias: bool = True, proj_size: int = 0, peephole: bool = False) -> tuple:
    """The roles every layer and direction of a stack has, in PyTorch's order (peepholes last)."""
    return (
        (CELL_PARAMETERS if bias else CELL_PARAMETERS[:2])
        + ((PROJECTION,) if proj_size else ())
        + ((PEEPHOLE,) if peephole else ())
    )


def stack_param_names(
    mode: str,
    num_layers: int,
    bidirectional: bool,
    bias: bool = True,
    proj_size: int = 0,
    peephole: bool = False,
) -> list:
    """PyTorch's parameter names of a stack, in its order (``_flat_weights_names``).

    ``mode`` is the cell ('lstm', 'gru', 'rnn'); the names are the same for all three (only an
    LSTM has ``proj_size`` and ``peephole``).

    Examples
    --------
    >>> stack_param_names("gru", 1, True, bias=False)
    ['weight_ih_l0', 'weight_hh_l0', 'weight_ih_l0_reverse', 'weight_hh_l0_reverse']
    """
    return list(
        _stack_param_names(
            num_layers, num_directions(bidirectional), bias, bool(proj_size), bool(peephole)
        )
    )


@functools.lru_cache(maxsize=64)
def _stack_param_names(
    num_layers: int, D: int, bias: bool, projection: bool, peephole: bool
) -> tuple:
    roles = layer_roles(bias, projection, peephole)
    return tuple(
        name
        for layer_names in stack_role_names(num_layers, D)
        for name, role in zip(layer_names, STACK_ROLES)
        if role in roles
    )


# Cached, as the names above: every forward and backward of a stack looks its parameters up by
# these names, and spelling them anew each time cost a tiny LSTM layer a fifth of its call time.
@functools.lru_cache(maxsize=64)
def stack_role_names(num_layers: int, D: int) -> tuple:
    """For each layer and direction of a stack (layer-major), the names of its `STACK_ROLES`:
    ``(("weight_ih_l0", ..., "weight_hr_l0"), ("weight_ih_l0_reverse", ...), ...)``."""
    return tuple(
        tuple(role + layer_suffix(layer, direction) for role in STACK_ROLES)
        for layer in range(num_layers)
        for direction in range(D)
    )


# The parameters of one layer-normalised cell (one layer, one direction; csrc/ln_cell.h) in a
# layer's order: a stack's are these roles with the suffix `layer_suffix(k, d)`. The roles in
# LN_CELL_BIASES are what a layer built with bias=False lacks (the kernels read zeros).
LN_CELL_PARAMETERS = {
    "lstm": (
        "weight_ih",
        "weight_hh",
        "bias",
        "ln_ih_weight",
        "ln_hh_weight",
        "ln_cell_weight",
        "ln_cell_bias",
    ),
    "gru": ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_weight", "ln_hh_weight"),
}
LN_CELL_BIASES = ("bias", "bias_ih", "bias_hh", "ln_cell_bias")
