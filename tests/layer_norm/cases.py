"""Inputs of the layer-norm tests: rows for LayerNorm, sequences and parameters for the
layer-normalised cells, and the scalar loss whose gradients the tests compare."""

from __future__ import annotations

import numpy as np

from fusedrnn._spec import LN_CELL_BIASES, LN_CELL_PARAMETERS

CELLS = ("lstm", "gru")
GATES = {"lstm": 4, "gru": 3}


def cell_weights(cell: str, I: int, H: int, dtype, rng, bias: bool = True) -> dict:
    """Parameters by role, with gains and biases away from 1 and 0 so that each matters."""
    G = GATES[cell] * H
    shapes = {
        "weight_ih": (G, I),
        "weight_hh": (G, H),
        "ln_cell_weight": (H,),
        "ln_cell_bias": (H,),
    }
    weights = {}
    for role in LN_CELL_PARAMETERS[cell]:
        if not bias and role in LN_CELL_BIASES:
            continue
        shape = shapes.get(role, (G,))
        value = rng.uniform(-0.6, 0.6, shape)
        if role.startswith("ln_") and role.endswith("weight"):
            value = 1 + 0.5 * value
        weights[role] = value.astype(dtype)
    return weights


def cell_inputs(cell: str, T: int, B: int, I: int, H: int, dtype, seed: int = 0, bias=True):
    """x, h0, c0 (None for the GRU), weights, and the output gradients dy, dh_n, dc_n."""
    rng = np.random.default_rng(seed)

    def draw(*shape):
        return rng.standard_normal(shape).astype(dtype)

    lstm = cell == "lstm"
    return {
        "x": draw(T, B, I),
        "h0": 0.5 * draw(B, H),
        "c0": 0.5 * draw(B, H) if lstm else None,
        "weights": cell_weights(cell, I, H, dtype, rng, bias),
        "dy": draw(T, B, H),
        "dh_n": draw(B, H),
        "dc_n": draw(B, H) if lstm else None,
    }


def run_cell(backend, cell: str, a: dict, eps: float = 1e-5, grads=None, **extra) -> tuple:
    """Forward and backward of one backend: (outputs, gradients by name); ``extra`` goes to
    the backward (``input_grad``)."""
    if cell == "lstm":
        y, h_n, c_n, ws = backend.ln_lstm_forward(a["x"], a["h0"], a["c0"], a["weights"], eps)
        dx, dh0, dc0, g = backend.ln_lstm_backward(
            a["x"],
            a["h0"],
            a["c0"],
            a["weights"],
            y,
            ws,
            a["dy"],
            a["dh_n"],
            a["dc_n"],
            grads,
            **extra,
        )
        outputs = {"y": y, "h_n": h_n, "c_n": c_n, "workspace": ws}
        gradients = {"x": dx, "h0": dh0, "c0": dc0}
    else:
        y, h_n, ws = backend.ln_gru_forward(a["x"], a["h0"], a["weights"], eps)
        dx, dh0, g = backend.ln_gru_backward(
            a["x"], a["h0"], a["weights"], y, ws, a["dy"], a["dh_n"], grads, **extra
        )
        outputs = {"y": y, "h_n": h_n, "workspace": ws}
        gradients = {"x": dx, "h0": dh0}
    gradients.update({f"weights[{role!r}]": value for role, value in g.items()})
    return outputs, gradients


def cell_loss(backend, cell: str, a: dict, eps: float = 1e-5) -> float:
    """sum(dy * y) + sum(dh_n * h_n) (+ sum(dc_n * c_n)): its gradients are the backward's."""
    if cell == "lstm":
        y, h_n, c_n, _ = backend.ln_lstm_forward(
            a["x"], a["h0"], a["c0"], a["weights"], eps, training=False
        )
        return float(np.sum(a["dy"] * y) + np.sum(a["dh_n"] * h_n) + np.sum(a["dc_n"] * c_n))
    y, h_n, _ = backend.ln_gru_forward(a["x"], a["h0"], a["weights"], eps, training=False)
    return float(np.sum(a["dy"] * y) + np.sum(a["dh_n"] * h_n))
