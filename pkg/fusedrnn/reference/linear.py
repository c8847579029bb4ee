"""The dense layer ``y = x W^T + b``: the NumPy twin of ``fusedrnn.functional.linear_forward`` /
``linear_backward`` (csrc/linear.h), same signatures."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .._checks import check_frozen


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None):
    """``x @ weight.T + bias``: x (M, in_features), weight (out_features, in_features),
    bias (out_features,) or None; returns y (M, out_features)."""
    _check(x, weight, bias=bias)
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y


def linear_backward(
    x: np.ndarray,
    weight: np.ndarray,
    dy: np.ndarray,
    grads=None,
    bias: bool = True,
    need_dx: bool = True,
    frozen=(),
):
    """dx = dy @ weight (None unless ``need_dx``); grads['weight'] += dy^T x and, when ``bias``,
    grads['bias'] += the column sums of dy, but for the names in ``frozen``. grads None makes a
    fresh zeroed dict."""
    _check(x, weight, dy=dy)
    frozen = check_frozen(frozen, ("weight", "bias") if bias else ("weight",))
    wanted = {"weight": "weight" not in frozen, "bias": bias and "bias" not in frozen}
    if grads is None:
        grads = {}
        if wanted["weight"]:
            grads["weight"] = np.zeros_like(weight)
        if wanted["bias"]:
            grads["bias"] = np.zeros(weight.shape[0], weight.dtype)
    elif not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of arrays or None, got {type(grads).__name__}")
    if wanted["weight"]:
        grads["weight"] += dy.T @ x
    if wanted["bias"]:
        grads["bias"] += dy.sum(axis=0)
    return (dy @ weight if need_dx else None), grads


def _check(x, weight, bias=None, dy=None) -> None:
    for name, a in (("x", x), ("weight", weight)):
        if not isinstance(a, np.ndarray) or a.ndim != 2:
            raise ValueError(f"{name} must be a 2-D numpy.ndarray")
    for name, a in (("weight", weight), ("bias", bias), ("dy", dy)):
        if a is not None and a.dtype != x.dtype:
            raise TypeError(f"{name} must have dtype {x.dtype} like x, got {a.dtype}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight must have shape (out_features, in_features) = "
            f"({weight.shape[0]}, {x.shape[1]}), but has shape {weight.shape}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), but has {bias.shape}")
    if dy is not None and dy.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(
            f"dy must have shape (M, out_features) = ({x.shape[0]}, "
            f"{weight.shape[0]}), but has shape {dy.shape}"
        )
