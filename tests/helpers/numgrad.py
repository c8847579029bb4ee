"""Central differences: the numerical gradients every gradient test checks against."""

from __future__ import annotations

import numpy as np

RTOL, ATOL = 1e-6, 1e-8  # float64 analytic gradients against central differences


def central_differences(f, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f() / d array by central differences, perturbing ``array`` in place (then restoring)."""
    grad = np.zeros_like(array, dtype=np.float64)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        f_plus = float(f())
        array[index] = saved - eps
        f_minus = float(f())
        array[index] = saved
        grad[index] = (f_plus - f_minus) / (2 * eps)
    return grad


def assert_stack_gradients(backend, mode, x, h0, c0, params, kw, rng) -> None:
    """``backend``'s stack_backward (functional or reference) against central differences of the
    reference's stack_forward, for x, h0, c0 (LSTM) and every parameter, on a random linear loss
    of y, h_n and c_n. ``kw``: the stack's keyword arguments (both directions: ``h0`` (2, B, H))."""
    from fusedrnn import reference

    weights = {"y": rng.standard_normal((*x.shape[:2], 2 * h0.shape[2]))}
    weights["h"], weights["c"] = rng.standard_normal(h0.shape), rng.standard_normal(h0.shape)

    def hx():
        return (h0, c0) if mode == "lstm" else h0

    def loss():
        y, h_n, c_n, _ = reference.stack_forward(mode, x, hx(), params, 1, training=False, **kw)
        total = (y * weights["y"]).sum() + (h_n * weights["h"]).sum()
        return total + (0 if c_n is None else (c_n * weights["c"]).sum())

    y, _, c_n, saved = backend.stack_forward(mode, x, hx(), params, 1, **kw)
    dc_n = None if c_n is None else weights["c"]
    dx, dh0, dc0, grads = backend.stack_backward(
        mode, x, hx(), params, 1, y, saved, weights["y"], weights["h"], dc_n, **kw
    )
    checks = {"x": (x, dx), "h0": (h0, dh0), **{k: (params[k], grads[k]) for k in params}}
    if mode == "lstm":
        checks["c0"] = (c0, dc0)
    for name, (array, analytic) in checks.items():
        numeric = central_differences(loss, array)
        np.testing.assert_allclose(
            analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=f"{backend.__name__}: {name}"
        )
