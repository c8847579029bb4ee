"""Optimizers (SGD, Adam, AdamW) and gradient clipping over parameters, as ``torch.optim`` and
``torch.nn.utils``.

An optimizer takes what PyTorch's take: ``model.parameters()`` (any iterable of
`fusedrnn.Parameter`), or a list of parameter groups (dicts with ``'params'`` and the
hyperparameters that differ from the defaults). For convenience a module, or a list of modules,
stands for all their parameters. Each parameter carries its gradient (``p.grad``), so a tied
parameter, one object in two modules, is updated once with the sum of both uses.

The updates are those of ``torch.optim.SGD``, ``torch.optim.Adam`` and ``torch.optim.AdamW``,
written with in-place operations in each parameter's dtype. A step checks every parameter
before it updates any, so a refused step changes nothing. Learning-rate schedules:
`fusedrnn.optim.lr_scheduler`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping

import numpy as np

from .. import functional
from .._checks import check_flag
from .._module import Module, Parameter
from . import lr_scheduler  # fusedrnn.optim.lr_scheduler, as torch.optim.lr_scheduler

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Optimizer",
    "clip_grad_norm_",
    "clip_grad_value_",
    "lr_scheduler",
]


def _parameter_list(params: object, name: str = "params") -> list[Parameter]:
    """The parameters ``params`` stands for, each once, in order: a Parameter, a Module (all its
    parameters), or an iterable of either (``model.parameters()``)."""
    if isinstance(params, (Parameter, Module)):
        params = [params]
    elif isinstance(params, (np.ndarray, Mapping, str)) or not isinstance(params, Iterable):
        raise TypeError(
            f"{name} must be parameters (model.parameters(), fusedrnn.Parameter arrays) or "
            f"modules, got {type(params).__name__}"
        )
    found: dict[int, Parameter] = {}
    for i, item in enumerate(params):
        members = item.parameters() if isinstance(item, Module) else [item]
        for param in members:
            if not isinstance(param, Parameter):
                hint = (
                    "; a plain array has no gradient: wrap it as fusedrnn.Parameter(array)"
                    if isinstance(param, np.ndarray)
                    else ""
                )
                raise TypeError(
                    f"{name}[{i}] must be a fusedrnn.Parameter (with its .grad) or a module, "
                    f"got {type(param).__name__}{hint}"
                )
            found.setdefault(id(param), param)
    return list(found.values())


def _trained(group: dict) -> list[Parameter]:
    """The parameters of ``group`` that are not frozen (their gradient is an array)."""
    return [param for param in group["params"] if param.grad is not None]


def _check_hyper(value, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not value >= minimum:  # also refuses NaN
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class Optimizer:
    """Base of the optimizers: parameter groups, per-parameter state, ``zero_grad``, ``step``
    and ``state_dict`` / ``load_state_dict``, as ``torch.optim.Optimizer``.

    Parameters
    ----------
    params : parameters, modules, or a list of parameter groups (dicts with 'params')
    defaults : dict
        The hyperparameters of a group that does not set its own.

    Attributes
    ----------
    param_groups : list of dict
        Each with 'params' (a list of Parameters) and every hyperparameter; a schedule changes
        ``group['lr']`` here.
    state : dict
        Per parameter (keyed by the Parameter object's id), its buffers ('momentum_buffer',
        'exp_avg', ...) and 'step'.
    """

    def __init__(self, params: object, defaults: dict) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        if isinstance(params, Iterable) and not isinstance(params, (np.ndarray, Module, str)):
            params = list(params)  # once: model.parameters() is a generator
        is_groups = (
            isinstance(params, list) and params and all(isinstance(g, Mapping) for g in params)
        )
        for group in params if is_groups else [{"params": params}]:
            self.add_param_group(group)
        if not any(group["params"] for group in self.param_groups):
            raise ValueError("an optimizer needs at least one parameter; got an empty list")

    def add_param_group(self, param_group: Mapping) -> None:
        """Add a group of parameters with its own hyperparameters (the others from the
        defaults), e.g. a layer to fine-tune at a smaller ``lr``."""
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError(f"a parameter group must be a dict with 'params', got {param_group!r}")
        unknown = [key for key in param_group if key != "params" and key not in self.defaults]
        if unknown:
            raise ValueError(
                f"parameter group has unknown options {unknown}; "
                f"{type(self).__name__} takes {sorted(self.defaults)}"
            )
        group = {**self.defaults, **param_group}
        group["params"] = _parameter_list(param_group["params"])
        self._check_group(group)
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in taken for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def _check_group(self, group: dict) -> None:
        """Check (and normalise) a group's hyperparameters: ValueError / TypeError by name."""
        group["lr"] = _check_hyper(group["lr"], "lr")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set the gradient of every parameter to zero, in place (a frozen one has none);
        ``set_to_none`` as in `fusedrnn.Module.zero_grad` (zeroed in place either way)."""
        check_flag(set_to_none, "set_to_none")
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.fill(0)

    def step(self) -> None:
        """One update of every parameter from its gradient.

        A frozen parameter (``requires_grad_(False)``: no gradient) is passed by, as PyTorch's
        optimizers pass by a parameter whose ``grad`` is None: it does not change, and neither
        does its state (its step count included). Every other parameter is checked first
        (writeable; its gradient of its shape and dtype), so a step that raises has changed
        nothing.
        """
        for group in self.param_groups:
            self._check_group(group)  # a schedule or a user may have set them
            for param in _trained(group):
                if not param.flags.writeable:
                    raise ValueError(
                        f"a parameter of shape {param.shape} is read-only, so "
                        f"{type(self).__name__} cannot update it in place; nothing was updated"
                    )
                grad = param.grad
                if (
                    not isinstance(grad, np.ndarray)
                    or grad.shape != param.shape
                    or grad.dtype != param.dtype
                ):
                    raise ValueError(
                        f"the gradient of a parameter of shape {param.shape} and dtype "
                        f"{param.dtype} must be an array of the same shape and dtype, got "
                        f"{getattr(grad, 'shape', type(grad).__name__)}; nothing was updated"
                    )
        for group in self.param_groups:
            for param in _trained(group):
                state = self.state.setdefault(id(param), {})
                state["step"] = state.get("step", 0) + 1
                self._update(param, param.grad, state, group)

    def _update(self, param: Parameter, grad: np.ndarray, state: dict, group: dict) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """The optimizer's state as PyTorch lays it out: ``{'state': {index: buffers},
        'param_groups': [hyperparameters with 'params': [indices]]}``, the parameters numbered
        in group order. Copies: it does not change as training goes on."""
        index = {}
        groups = []
        for group in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {
            index[key]: copy.deepcopy(buffers)
            for key, buffers in self.state.items()
            if key in index
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load a `state_dict` of an optimizer over parameters of the same shapes, in the same
        groups; an error naming what does not fit, and then nothing is loaded."""
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
            raise TypeError(
                "state_dict must be an optimizer's state_dict(): 'state' and 'param_groups'"
            )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} parameter groups, this optimizer "
                f"{len(self.param_groups)}"
            )
        params = [p for group in self.param_groups for p in group["params"]]
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"parameter group {i} has {len(saved['params'])} parameters in state_dict, "
                    f"{len(group['params'])} here"
                )
        state = {}
        for index, buffers in state_dict["state"].items():
            param = params[index]
            for name, value in buffers.items():
                if isinstance(value, np.ndarray) and value.shape != param.shape:
                    raise ValueError(
                        f"state_dict['state'][{index}][{name!r}] has shape {value.shape}, but "
                        f"parameter {index} has {param.shape}"
                    )
            state[id(param)] = {
                name: value.astype(param.dtype) if isinstance(value, np.ndarray) else value
                for name, value in buffers.items()
            }
        for saved, group in zip(saved_groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = state


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Per parameter ``p`` with gradient ``g`` (``-g`` if ``maximize``)::

        g = g + weight_decay * p
        if momentum:  b = g at the first step, else b = momentum * b + (1 - dampening) * g
                      g = g + momentum * b  if nesterov  else  b
        p -= lr * g

    Parameters
    ----------
    params : ``model.parameters()``, parameter groups, or modules (see the module doc)
    lr : float
    momentum, dampening, weight_decay : float, default 0
    nesterov : bool, default False (needs momentum > 0 and dampening = 0)
    maximize : bool, default False
    """

    def __init__(
        self,
        params: object,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        for name in ("momentum", "dampening", "weight_decay"):
            group[name] = _check_hyper(group[name], name)
        group["nesterov"], group["maximize"] = bool(group["nesterov"]), bool(group["maximize"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")

    def _update(self, param: Parameter, grad: np.ndarray, state: dict, group: dict) -> None:
        dt = param.dtype.type
        d = -grad if group["maximize"] else grad
        if group["weight_decay"]:
            d = d + dt(group["weight_decay"]) * param
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(d, copy=True)
            else:
                buf *= dt(momentum)
                buf += dt(1 - group["dampening"]) * d
            d = d + dt(momentum) * buf if group["nesterov"] else buf
        param -= dt(group["lr"]) * d


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015), as ``torch.optim.Adam``, with bias correction.

    Per parameter ``p`` with gradient ``g`` (``-g`` if ``maximize``), at its step ``t = 1, 2,
    ...``::

        p *= 1 - lr * weight_decay           if decoupled_weight_decay (AdamW)
        g = g + weight_decay * p             otherwise (L2, PyTorch's Adam)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                if amsgrad (then v_max replaces v below)
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    params : ``model.parameters()``, parameter groups, or modules (see the module doc)
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    amsgrad, maximize, decoupled_weight_decay : bool, default False
    """

    def __init__(
        self,
        params: object,
        lr: float = 1e-3,
        betas: tuple = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        group["betas"] = tuple(_check_hyper(b, f"betas[{i}]") for i, b in enumerate(betas))
        if not all(b < 1 for b in group["betas"]):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        group["eps"] = _check_hyper(group["eps"], "eps")
        group["weight_decay"] = _check_hyper(group["weight_decay"], "weight_decay")
        for flag in ("amsgrad", "maximize", "decoupled_weight_decay"):
            group[flag] = bool(group[flag])

    def _update(self, param: Parameter, grad: np.ndarray, state: dict, group: dict) -> None:
        beta1, beta2 = group["betas"]
        lr, t = group["lr"], state["step"]
        if "exp_avg" not in state:
            state["exp_avg"] = np.zeros_like(param.view(np.ndarray))
            state["exp_avg_sq"] = np.zeros_like(param.view(np.ndarray))
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = np.zeros_like(param.view(np.ndarray))
        # the formula above, in one pass (csrc/optim.h; twin: fusedrnn.reference.adam_update)
        functional.adam_update(
            param.view(np.ndarray),
            grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            state["max_exp_avg_sq"] if group["amsgrad"] else None,
            lr,
            beta1,
            beta2,
            group["eps"],
            group["weight_decay"],
            group["decoupled_weight_decay"],
            group["maximize"],
            t,
        )


class AdamW(Adam):
    """AdamW (Loshchilov and Hutter, 2019), as ``torch.optim.AdamW``: `Adam` with the weight
    decay decoupled from the gradient (``p *= 1 - lr * weight_decay`` before Adam's step), and
    ``weight_decay`` 1e-2 by default. The same update as ``Adam(...,
    decoupled_weight_decay=True)``, which its ``param_groups`` and ``state_dict`` record; the
    parameters are `Adam`'s but that one.
    """

    def __init__(
        self,
        params: object,
        lr: float = 1e-3,
        betas: tuple = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay=True
        )


# ---------------------------------------------------------------- clipping


def _gradients(parameters: object) -> list[np.ndarray]:
    """The gradient of every parameter ``parameters`` stands for, each once (a frozen
    parameter has none)."""
    params = _parameter_list(parameters, "parameters")
    return [param.grad for param in params if param.grad is not None]


def clip_grad_norm_(
    parameters: object, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> float:
    """Scale all gradients together so that their global norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_``.

    The norm is taken over the gradient of every parameter as if concatenated into one vector
    (a tied parameter counts once); the gradients are multiplied in place by
    ``min(1, max_norm / (total + 1e-6))``.

    Parameters
    ----------
    parameters : ``model.parameters()``, a Parameter, a module, or a list of modules
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
    arrays = _gradients(parameters)
    if not arrays:
        return 0.0
    total = grad_norm(arrays, norm_type)
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


def grad_norm(arrays: list[np.ndarray], norm_type: float = 2.0) -> float:
    """The norm of order ``norm_type`` of ``arrays`` taken as one vector (``inf``: the largest
    absolute value), summed in float64."""
    if math.isinf(norm_type):
        return max((float(np.max(np.abs(g))) if g.size else 0.0) for g in arrays)
    if norm_type == 2.0:
        # squares summed in float64 in one pass each, without BLAS (np.dot would wake numpy's
        # BLAS threads)
        return math.sqrt(sum(functional.sum_of_squares(g) for g in arrays))
    total = sum(float(np.sum(np.abs(g, dtype=np.float64) ** norm_type)) for g in arrays)
    return total ** (1.0 / norm_type)


def clip_grad_value_(parameters: object, clip_value: float) -> None:
    """Clip every gradient entry into ``[-clip_value, clip_value]`` in place, as
    ``torch.nn.utils.clip_grad_value_``.

    Parameters
    ----------
    parameters : ``model.parameters()``, a Parameter, a module, or a list of modules
    clip_value : float >= 0
    """
    clip_value = _check_hyper(clip_value, "clip_value")
    for g in _gradients(parameters):
        np.clip(g, -clip_value, clip_value, out=g)
