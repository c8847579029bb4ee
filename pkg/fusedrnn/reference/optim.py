"""NumPy twin of the optimizers' fused update (csrc/optim.h): one NumPy operation per line."""

from __future__ import annotations

import math

import numpy as np


def adam_update(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    step: int,
) -> None:
    """Adam's update of one parameter, in place (``param``, ``exp_avg``, ``exp_avg_sq`` and,
    with amsgrad, ``max_exp_avg_sq``); the formula: `fusedrnn.optim.Adam`. Twin of
    `fusedrnn.functional.adam_update`.
    """
    dt = param.dtype.type
    g = -grad if maximize else grad
    if weight_decay:
        if decoupled_weight_decay:
            param *= dt(1 - lr * weight_decay)
        else:
            g = g + dt(weight_decay) * param
    exp_avg *= dt(beta1)
    exp_avg += dt(1 - beta1) * g
    exp_avg_sq *= dt(beta2)
    exp_avg_sq += dt(1 - beta2) * (g * g)
    v = exp_avg_sq
    if max_exp_avg_sq is not None:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    step_size = lr / (1 - beta1**step)
    denom = np.sqrt(v)
    denom /= dt(math.sqrt(1 - beta2**step))
    denom += dt(eps)
    np.divide(exp_avg, denom, out=denom)
    denom *= dt(step_size)
    param -= denom


def sum_of_squares(x: np.ndarray) -> float:
    """The sum of the squares of ``x``'s elements, in float64. Twin of
    `fusedrnn.functional.sum_of_squares`."""
    return float(np.sum(np.square(x, dtype=np.float64)))
