"""ONNX's ``LSTM`` / ``GRU`` / ``RNN`` nodes as fusedrnn layers, and back (docs/onnx.md).

ONNX stores one layer's weights per direction as ``W (D, G*H, I)``, ``R (D, G*H, H)``,
``B (D, 2*G*H)`` (``Wb`` then ``Rb``) and, for an LSTM, ``P (D, 3*H)``, with the gates in its own
order: LSTM i, o, f, c; GRU z, r, h; peepholes i, o, f. fusedrnn (as PyTorch) orders them
i, f, g, o and r, z, n, and its peepholes i, f, o. The helpers here are block permutations, and
nothing else: the numbers are not touched.

The ``onnx`` package is not needed: a node is any object with NodeProto's fields (``op_type``,
``input``, ``output``, ``attribute`` of AttributeProto's ``name``, ``type`` and value fields).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._spec import layer_suffix
from .layers import GRU, LSTM, RNN
from .layers.recurrent import RecurrentLayer

# ONNX's gate blocks in fusedrnn's order: fusedrnn block k is ONNX block _TO_FUSED[op][k].
_TO_FUSED = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}
_PEEPHOLE_TO_FUSED = (0, 2, 1)  # fusedrnn p_i, p_f, p_o from ONNX p_i, p_o, p_f
_LAYERS = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}
_OP_OF_MODE = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_DIRECTIONS = ("forward", "reverse", "bidirectional")

# AttributeProto.AttributeType values (onnx.proto), so that onnx need not be imported.
_FLOAT, _INT, _STRING, _FLOATS, _INTS, _STRINGS = 1, 2, 3, 6, 7, 8


def _attribute_value(attribute: Any) -> Any:
    kind = attribute.type
    if kind == _FLOAT:
        return float(attribute.f)
    if kind == _INT:
        return int(attribute.i)
    if kind == _STRING:
        return attribute.s.decode() if isinstance(attribute.s, bytes) else str(attribute.s)
    if kind == _FLOATS:
        return [float(v) for v in attribute.floats]
    if kind == _INTS:
        return [int(v) for v in attribute.ints]
    if kind == _STRINGS:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in attribute.strings]
    raise ValueError(f"attribute {attribute.name!r} has a type ({kind}) no recurrent node uses")


def _permute_blocks(a: np.ndarray, order: Sequence[int], axis: int = 0) -> np.ndarray:
    """``a`` with its ``len(order)`` equal blocks along ``axis`` taken in ``order``."""
    blocks = np.split(a, len(order), axis=axis)
    return np.concatenate([blocks[k] for k in order], axis=axis)


def _inverse(order: Sequence[int]) -> list[int]:
    return [order.index(k) for k in range(len(order))]


def from_onnx_node(
    node: Any,
    initializers: Mapping[str, np.ndarray],
    *,
    backend: str = "fused",
) -> RecurrentLayer:
    """A fusedrnn `LSTM`, `GRU` or `RNN` with the weights and attributes of an ONNX node.

    Parameters
    ----------
    node : onnx.NodeProto (or any object with its fields) of op_type LSTM, GRU or RNN
    initializers : mapping of the node's input names to numpy arrays
        At least ``W`` and ``R``; ``B`` and (LSTM) ``P`` when the node has them. float32 or
        float64: the layer takes their dtype.
    backend : 'fused' (default) or 'reference'

    Returns
    -------
    layer : LSTM, GRU or RNN
        One layer; ``bidirectional`` for direction='bidirectional'. Its attribute
        ``onnx_node_attributes`` keeps ``direction`` and ``layout``, which `onnx_forward` reads
        to run it on the node's inputs and give its outputs in ONNX's layouts (direction
        'reverse' runs the layer on the time-reversed sequence).

    Raises
    ------
    ValueError
        An op_type, direction, layout or activation fusedrnn cannot run, or missing weights.
    """
    op = str(node.op_type)
    if op not in _LAYERS:
        raise ValueError(f"node.op_type must be 'LSTM', 'GRU' or 'RNN', got {op!r}")
    attrs = {a.name: _attribute_value(a) for a in node.attribute}
    direction = attrs.get("direction", "forward")
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
    layout = attrs.get("layout", 0)
    if layout not in (0, 1):
        raise ValueError(f"layout must be 0 or 1, got {layout!r}")
    names = list(node.input) + [""] * 8

    def weight(index: int, role: str) -> np.ndarray | None:
        name = names[index]
        if not name:
            return None
        if name not in initializers:
            raise ValueError(f"initializers lack {role} ({name!r}) of the {op} node")
        return np.asarray(initializers[name])

    W, R, B = weight(1, "W"), weight(2, "R"), weight(3, "B")
    P = weight(7, "P") if op == "LSTM" else None
    if W is None or R is None:
        raise ValueError(f"the {op} node needs its W and R inputs")
    if W.dtype not in (np.float32, np.float64):
        raise TypeError(f"W must be float32 or float64, got {W.dtype}")
    D, rows, input_size = W.shape
    G = len(_TO_FUSED[op])
    hidden = attrs.get("hidden_size", R.shape[-1])
    directions = 2 if direction == "bidirectional" else 1
    if directions != D or rows != G * hidden:
        raise ValueError(
            f"W must have shape ({directions}, {G}*hidden_size, input_size) for "
            f"direction={direction!r}, got {W.shape}"
        )
    options = {
        "activations": attrs.get("activations"),
        "activation_alpha": attrs.get("activation_alpha", ()),
        "activation_beta": attrs.get("activation_beta", ()),
        "clip": attrs.get("clip"),
    }
    if op == "LSTM":
        options["input_forget"] = bool(attrs.get("input_forget", 0))
        options["peephole"] = P is not None
    if op == "GRU":
        options["reset_after"] = bool(attrs.get("linear_before_reset", 0))
    layer = _LAYERS[op](
        input_size,
        hidden,
        bidirectional=direction == "bidirectional",
        dtype=W.dtype,
        backend=backend,
        **options,
    )
    state = {}
    order = _TO_FUSED[op]
    for d in range(D):
        suffix = layer_suffix(0, d)
        state[f"weight_ih{suffix}"] = _permute_blocks(W[d], order)
        state[f"weight_hh{suffix}"] = _permute_blocks(R[d], order)
        biases = np.zeros((2, G * hidden), W.dtype) if B is None else np.split(B[d], 2)
        state[f"bias_ih{suffix}"] = _permute_blocks(biases[0], order)
        state[f"bias_hh{suffix}"] = _permute_blocks(biases[1], order)
        if P is not None:
            state[f"weight_peephole{suffix}"] = _permute_blocks(P[d], _PEEPHOLE_TO_FUSED)
    layer.load_state_dict({k: v.astype(W.dtype) for k, v in state.items()})
    layer.onnx_node_attributes = {"direction": direction, "layout": layout}
    return layer


def to_onnx_weights(layer: RecurrentLayer, num_layer: int = 0) -> dict[str, np.ndarray]:
    """Layer ``num_layer`` of a fusedrnn `LSTM`, `GRU` or `RNN` as an ONNX node's weights.

    Returns
    -------
    weights : dict
        ``W`` (D, G*H, I), ``R`` (D, G*H, H), ``B`` (D, 2*G*H) (zeros for a layer without
        bias) and, with peepholes, ``P`` (D, 3*H), in ONNX's gate orders. The node's attributes:
        direction 'bidirectional' when the layer is, GRU ``linear_before_reset`` =
        ``int(layer.reset_after)``, and ``activations``, ``clip``, ``input_forget`` as the
        layer's.

    Raises
    ------
    ValueError
        A projection (``proj_size``), which ONNX's LSTM lacks, or no layer ``num_layer``.
    """
    if not isinstance(layer, (LSTM, GRU, RNN)):
        raise TypeError(f"layer must be a fusedrnn LSTM, GRU or RNN, got {type(layer).__name__}")
    if getattr(layer, "proj_size", 0):
        raise ValueError("ONNX's LSTM has no projection: a layer with proj_size > 0 has no twin")
    if not 0 <= num_layer < layer.num_layers:
        raise ValueError(f"num_layer must be in 0..{layer.num_layers - 1}, got {num_layer}")
    op = _OP_OF_MODE[layer._mode]
    back = _inverse(_TO_FUSED[op])
    params = layer.state_dict()
    out: dict[str, list] = {"W": [], "R": [], "B": []}
    for d in range(layer.num_directions):
        suffix = layer_suffix(num_layer, d)
        out["W"].append(_permute_blocks(params[f"weight_ih{suffix}"], back))
        out["R"].append(_permute_blocks(params[f"weight_hh{suffix}"], back))
        rows = params[f"weight_ih{suffix}"].shape[0]
        zeros = np.zeros(rows, layer.dtype)
        b_ih, b_hh = (params.get(f"bias_{kind}{suffix}", zeros) for kind in ("ih", "hh"))
        out["B"].append(np.concatenate([_permute_blocks(b, back) for b in (b_ih, b_hh)]))
        if f"weight_peephole{suffix}" in params:
            p = _permute_blocks(params[f"weight_peephole{suffix}"], _inverse(_PEEPHOLE_TO_FUSED))
            out.setdefault("P", []).append(p)
    return {name: np.stack(arrays) for name, arrays in out.items()}


def onnx_forward(
    layer: RecurrentLayer,
    X: np.ndarray,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
) -> tuple:
    """Run a layer that `from_onnx_node` built on its node's inputs, in ONNX's layouts.

    Parameters
    ----------
    X : (T, B, I), or (B, T, I) with layout 1
    sequence_lens : (B,) ints in 1..T, or None
    initial_h, initial_c : (D, B, H), or (B, D, H) with layout 1; None: zeros

    Returns
    -------
    Y : (T, D, B, H), or (B, T, D, H) with layout 1 (zero past each item's length)
    Y_h : (D, B, H), or (B, D, H) with layout 1
    Y_c : as Y_h (LSTM only; the tuple has two entries for GRU and RNN)
    """
    attrs = getattr(layer, "onnx_node_attributes", {"direction": "forward", "layout": 0})
    batchwise = attrs["layout"] == 1
    x = np.swapaxes(X, 0, 1) if batchwise else X
    T, B = x.shape[:2]
    lengths = None if sequence_lens is None else np.asarray(sequence_lens, np.int64)
    states = [
        s if s is None or not batchwise else np.swapaxes(s, 0, 1) for s in (initial_h, initial_c)
    ]
    states = [None if s is None else np.ascontiguousarray(s) for s in states]
    reverse = attrs["direction"] == "reverse"
    if reverse:  # the one direction runs from each item's last step back to its first
        x = _reverse_in_time(x, lengths)
    x = np.ascontiguousarray(x)
    hx = None
    if states[0] is not None or states[1] is not None:
        zeros = np.zeros((layer.num_directions, B, layer.hidden_size), layer.dtype)
        h0 = zeros if states[0] is None else states[0]
        hx = (h0, zeros if states[1] is None else states[1]) if layer._has_cell_state else h0
    y, state = layer(x, hx, lengths=lengths)
    if reverse:
        y = _reverse_in_time(y, lengths)
    y = y.reshape(T, B, layer.num_directions, layer.hidden_size)
    y = y.transpose(1, 0, 2, 3) if batchwise else y.transpose(0, 2, 1, 3)
    finals = state if isinstance(state, tuple) else (state,)
    finals = tuple(np.swapaxes(s, 0, 1) if batchwise else s for s in finals)
    return (np.ascontiguousarray(y), *finals)


def _reverse_in_time(a: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """(T, B, ...) with each item's own first ``lengths[b]`` steps in reverse order."""
    if lengths is None:
        return a[::-1].copy()
    out = np.zeros_like(a)
    for b, n in enumerate(lengths):
        out[:n, b] = a[:n, b][::-1]
    return out
