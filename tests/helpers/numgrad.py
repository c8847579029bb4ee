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
