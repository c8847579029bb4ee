"""Optimizers (SGD, Adam) and gradient clipping over the parameters of any set of layers.

The protocol (docs/training.md): a layer is any object with

- ``named_parameters()`` -> iterable of ``(name, array)``: the live parameter arrays, which are
  updated in place (``fusedrnn.LSTM`` / ``GRU`` / ``RNN``, the cells, `fusedrnn.Embedding`,
  `fusedrnn.Linear` all have it). An object with ``parameters()`` returning a mapping of names to
  live arrays is taken as well.
- ``grads``: a mapping with the same names, of arrays of the parameters' shapes and dtypes.

``state_dict()`` is not part of it: the layers return copies there. Optimizers read the
parameters and gradients afresh at every step, so ``load_state_dict`` and ``zero_grad`` (which
work in place) never leave them holding stale arrays.

The updates are those of ``torch.optim.SGD`` and ``torch.optim.Adam``, written with in-place
NumPy operations in each parameter's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["SGD", "Adam", "Optimizer", "clip_grad_norm_", "clip_grad_value_"]


def _as_list(modules) -> list:
    if isinstance(modules, (list, tuple)):
        return list(modules)
    return [modules]


def _named_parameters(module) -> list:
    if hasattr(module, "named_parameters"):
        return list(module.named_parameters())
    params = module.parameters() if hasattr(module, "parameters") else None
    if isinstance(params, Mapping):
        return list(params.items())
    raise TypeError(
        f"{type(module).__name__} has neither named_parameters() nor parameters() "
        f"returning a dict of arrays; an optimizer needs the live parameter arrays "
        f"and a grads dict keyed by the same names"
    )


def parameter_entries(modules) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(key, param, grad)`` of every parameter of ``modules`` (a layer or a list of layers),
    ``key`` being ``"<index of the layer>.<name>"``. Checks the protocol (see the module doc)."""
    entries = []
    for i, module in enumerate(_as_list(modules)):
        grads = getattr(module, "grads", None)
        if not isinstance(grads, Mapping):
            raise TypeError(f"modules[{i}] ({type(module).__name__}) has no grads dict")
        for name, param in _named_parameters(module):
            if not isinstance(param, np.ndarray) or param.dtype.kind != "f":
                raise TypeError(
                    f"modules[{i}] parameter {name!r} must be a floating-point "
                    f"numpy.ndarray, got {type(param).__name__}"
                )
            if name not in grads:
                raise ValueError(
                    f"modules[{i}] ({type(module).__name__}) has no "
                    f"grads[{name!r}] for its parameter {name!r}"
                )
            grad = grads[name]
            if (
                not isinstance(grad, np.ndarray)
                or grad.shape != param.shape
                or grad.dtype != param.dtype
            ):
                raise ValueError(
                    f"modules[{i}] grads[{name!r}] must be an array of the "
                    f"parameter's shape {param.shape} and dtype {param.dtype}, got "
                    f"{getattr(grad, 'shape', type(grad).__name__)}, "
                    f"{getattr(grad, 'dtype', '')}"
                )
            entries.append((f"{i}.{name}", param, grad))
    return entries


def _check_hyper(value, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not value >= minimum:  # also refuses NaN
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class Optimizer:
    """Base: holds the layers and per-parameter state; ``step()`` updates the parameters."""

    def __init__(self, modules, lr: float) -> None:
        self.modules = _as_list(modules)
        if not self.modules:
            raise ValueError("an optimizer needs at least one layer")
        self.lr = _check_hyper(lr, "lr")
        self.state: dict[str, dict] = {}
        self.step_count = 0
        parameter_entries(self.modules)  # check the protocol now, not at the first step

    def zero_grad(self) -> None:
        """Zero every layer's grads, in place."""
        for module in self.modules:
            if hasattr(module, "zero_grad"):
                module.zero_grad()
            else:
                for grad in module.grads.values():
                    grad.fill(0)

    def step(self) -> None:
        """One update of every parameter from its gradient."""
        self.step_count += 1
        for key, param, grad in parameter_entries(self.modules):
            state = self.state.setdefault(key, {})
            for buffer in state.values():
                if isinstance(buffer, np.ndarray) and buffer.shape != param.shape:
                    raise ValueError(f"parameter {key} changed shape since the last step")
            self._update(param, grad, state)

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Per parameter ``p`` with gradient ``g`` (``-g`` if ``maximize``)::

        g = g + weight_decay * p
        if momentum:  b = g at the first step, else b = momentum * b + (1 - dampening) * g
                      g = g + momentum * b  if nesterov  else  b
        p -= lr * g

    Parameters
    ----------
    modules : a layer or a list of layers (see the module doc for the protocol)
    lr : float
    momentum, dampening, weight_decay : float, default 0
    nesterov : bool, default False (needs momentum > 0 and dampening = 0)
    maximize : bool, default False
    """

    def __init__(
        self,
        modules,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        super().__init__(modules, lr)
        self.momentum = _check_hyper(momentum, "momentum")
        self.dampening = _check_hyper(dampening, "dampening")
        self.weight_decay = _check_hyper(weight_decay, "weight_decay")
        self.nesterov = bool(nesterov)
        self.maximize = bool(maximize)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict) -> None:
        dt = param.dtype.type
        d = -grad if self.maximize else grad
        if self.weight_decay:
            d = d + dt(self.weight_decay) * param
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(d, copy=True)
            else:
                buf *= dt(self.momentum)
                buf += dt(1 - self.dampening) * d
            d = d + dt(self.momentum) * buf if self.nesterov else buf
        param -= dt(self.lr) * d


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015), as ``torch.optim.Adam``, with bias correction.

    Per parameter ``p`` with gradient ``g`` (``-g`` if ``maximize``), at step ``t = 1, 2, ...``::

        p *= 1 - lr * weight_decay           if decoupled_weight_decay (AdamW)
        g = g + weight_decay * p             otherwise (L2, PyTorch's Adam)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                if amsgrad (then v_max replaces v below)
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    modules : a layer or a list of layers (see the module doc for the protocol)
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    amsgrad, maximize, decoupled_weight_decay : bool, default False
    """

    def __init__(
        self,
        modules,
        lr: float = 1e-3,
        betas: tuple = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        super().__init__(modules, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_check_hyper(b, f"betas[{i}]") for i, b in enumerate(betas))
        if not all(b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        self.eps = _check_hyper(eps, "eps")
        self.weight_decay = _check_hyper(weight_decay, "weight_decay")
        self.amsgrad = bool(amsgrad)
        self.maximize = bool(maximize)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict) -> None:
        dt = param.dtype.type
        beta1, beta2 = self.betas
        t = self.step_count
        g = -grad if self.maximize else grad
        if self.weight_decay:
            if self.decoupled_weight_decay:
                param *= dt(1 - self.lr * self.weight_decay)
            else:
                g = g + dt(self.weight_decay) * param
        if "exp_avg" not in state:
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
            if self.amsgrad:
                state["max_exp_avg_sq"] = np.zeros_like(param)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= dt(beta1)
        m += dt(1 - beta1) * g
        v *= dt(beta2)
        v += dt(1 - beta2) * (g * g)
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        step_size = self.lr / (1 - beta1**t)
        denom = np.sqrt(v)
        denom /= dt(math.sqrt(1 - beta2**t))
        denom += dt(self.eps)
        np.divide(m, denom, out=denom)
        denom *= dt(step_size)
        param -= denom


# ---------------------------------------------------------------- clipping

GradSource = object | Mapping | Iterable


def _grad_arrays(modules) -> list[np.ndarray]:
    """Every gradient array of ``modules``: layers (anything with a ``grads`` mapping), grads
    dicts themselves, or a list of either."""
    arrays = []
    for i, item in enumerate(_as_list(modules)):
        grads = item if isinstance(item, Mapping) else getattr(item, "grads", None)
        if not isinstance(grads, Mapping):
            raise TypeError(
                f"modules[{i}] must be a layer with a grads dict or a dict of "
                f"gradient arrays, got {type(item).__name__}"
            )
        for name, grad in grads.items():
            if not isinstance(grad, np.ndarray) or grad.dtype.kind != "f":
                raise TypeError(
                    f"modules[{i}] grads[{name!r}] must be a floating-point "
                    f"numpy.ndarray, got {type(grad).__name__}"
                )
            arrays.append(grad)
    return arrays


def clip_grad_norm_(
    modules: GradSource, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> float:
    """Scale all gradients together so that their global norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_``.

    The norm is taken over every gradient array of ``modules`` as if concatenated into one
    vector; the gradients are multiplied in place by ``min(1, max_norm / (total + 1e-6))``.

    Parameters
    ----------
    modules : a layer (anything with a ``grads`` dict), a grads dict, or a list of them
    max_norm : float
    norm_type : float, default 2; ``float('inf')`` for the largest absolute value
    error_if_nonfinite : bool
        Raise instead of clipping when the total norm is NaN or infinite.

    Returns
    -------
    total_norm : float
        The norm before clipping.
    """
    max_norm = _check_hyper(max_norm, "max_norm")
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    arrays = _grad_arrays(modules)
    if not arrays:
        return 0.0
    if math.isinf(norm_type):
        total = max((float(np.max(np.abs(g))) if g.size else 0.0) for g in arrays)
    elif norm_type == 2.0:
        # squares summed in float64, without BLAS (np.dot would wake numpy's BLAS threads)
        total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in arrays))
    else:
        total = sum(float(np.sum(np.abs(g, dtype=np.float64) ** norm_type)) for g in arrays)
        total = total ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is {total}, "
            f"so they cannot be clipped; set error_if_nonfinite=False to go on"
        )
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # a NaN norm makes the gradients NaN, as in PyTorch
        for g in arrays:
            g *= g.dtype.type(coef)
    return total


def clip_grad_value_(modules: GradSource, clip_value: float) -> None:
    """Clip every gradient entry into ``[-clip_value, clip_value]`` in place, as
    ``torch.nn.utils.clip_grad_value_``.

    Parameters
    ----------
    modules : a layer (anything with a ``grads`` dict), a grads dict, or a list of them
    clip_value : float >= 0
    """
    clip_value = _check_hyper(clip_value, "clip_value")
    for g in _grad_arrays(modules):
        np.clip(g, -clip_value, clip_value, out=g)
