"""Learning-rate schedules, as ``torch.optim.lr_scheduler``: `StepLR`, `MultiStepLR`,
`ExponentialLR`, `CosineAnnealingLR`, `LambdaLR` and `ReduceLROnPlateau`.

A scheduler works on any optimizer with PyTorch's ``param_groups``: a list of dicts, each with
an ``'lr'`` (and its ``'params'`` and other hyperparameters). It reads and writes ``group['lr']``
and, as PyTorch's, stores the learning rate it started from in ``group['initial_lr']``.

The rules are PyTorch's, with its arithmetic (the same recursive updates, so the same floats):

- building a scheduler counts as its first step: ``last_epoch`` goes from -1 to 0, and the
  learning rates are those of epoch 0 (the optimizer's own, for these schedules);
- ``step()`` after every epoch (after ``optimizer.step()``) moves to the next epoch and sets the
  learning rates of that epoch; ``get_last_lr()`` returns them;
- ``state_dict()`` is every attribute but the optimizer (and for `LambdaLR`, the functions);
  ``load_state_dict`` takes it back, from a PyTorch scheduler of the same class too;
- ``last_epoch=k`` resumes at epoch k from the ``'initial_lr'`` of every group.

PyTorch's ``step(epoch)`` (deprecated there) is not offered. ``ReduceLROnPlateau.step(metrics)``
takes the value it watches.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .._checks import check_choice, check_size

__all__ = [
    "CosineAnnealingLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "MultiStepLR",
    "ReduceLROnPlateau",
    "StepLR",
]


def _check_optimizer(optimizer: object) -> list:
    """The ``param_groups`` of ``optimizer``: a non-empty list of dicts, each with an 'lr'."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise TypeError(
            f"optimizer must have param_groups, a non-empty list of dicts (as fusedrnn's and "
            f"PyTorch's optimizers do), got {type(optimizer).__name__}"
        )
    for i, group in enumerate(groups):
        if "lr" not in group:
            raise ValueError(f"optimizer.param_groups[{i}] has no 'lr'")
    return groups


def _check_real(value: object, name: str, minimum: float | None = None) -> float:
    """A real number (not a bool), >= ``minimum`` when given; NaN is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (minimum is not None and value < minimum):
        raise ValueError(f"{name} must be a number >= {minimum}, got {value}")
    return value


def _per_group(value: object, name: str, groups: list, check: Callable) -> list:
    """One ``value`` for every group, or a list / tuple of one per group, each checked."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(groups):
            raise ValueError(
                f"{name} must have one entry per param group ({len(groups)}), got {len(value)}"
            )
        return [check(v, f"{name}[{i}]") for i, v in enumerate(value)]
    return [check(value, name)] * len(groups)


class LRScheduler:
    """Base of the epoch-counting schedules: ``last_epoch``, ``base_lrs``, ``step()``,
    ``get_last_lr()``, ``state_dict()``. A subclass defines ``get_lr()``: the learning rates of
    epoch ``last_epoch``, from the current ones or from ``base_lrs``.

    Parameters
    ----------
    optimizer : an optimizer with ``param_groups`` (list of dicts with 'lr')
    last_epoch : int, default -1
        -1 starts afresh (and sets every group's 'initial_lr' to its 'lr' unless it has one);
        k >= 0 resumes after epoch k from the groups' 'initial_lr'.
    """

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        groups = _check_optimizer(optimizer)
        last_epoch = check_size(last_epoch, "last_epoch", minimum=-1)
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(groups):
                if "initial_lr" not in group:
                    raise ValueError(
                        f"last_epoch = {last_epoch} resumes a schedule, but "
                        f"optimizer.param_groups[{i}] has no 'initial_lr'; load the "
                        f"optimizer's state first, or start with last_epoch=-1"
                    )
        self.optimizer = optimizer
        self.base_lrs = [group["initial_lr"] for group in groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        # the first step, made by the constructor: PyTorch's _initial_step
        self._is_initial = True
        self.step()
        self._is_initial = False

    def get_lr(self) -> list[float]:  # pragma: no cover - every schedule defines its own
        """The learning rates of epoch ``last_epoch``, one per param group."""
        raise NotImplementedError

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self) -> None:
        """Move to the next epoch and set its learning rates. Call it after
        ``optimizer.step()``."""
        self._step_count += 1
        self.last_epoch += 1
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = self._current_lrs()

    def get_last_lr(self) -> list[float]:
        """The learning rates the last ``step()`` (or the constructor) set, one per group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer: pickles, and loads into a new scheduler."""
        return {key: value for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take back a `state_dict` (ours, or a PyTorch scheduler's of the same class)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        self.__dict__.update(state_dict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self.get_last_lr()})"


class StepLR(LRScheduler):
    """Multiplies the learning rates by ``gamma`` every ``step_size`` epochs:
    ``lr = initial_lr * gamma ** (epoch // step_size)``.

    Parameters
    ----------
    optimizer, last_epoch : as `LRScheduler`
    step_size : int >= 1
    gamma : float >= 0, default 0.1
    """

    def __init__(
        self, optimizer: Any, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size = check_size(step_size, "step_size")
        self.gamma = _check_real(gamma, "gamma", minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class MultiStepLR(LRScheduler):
    """Multiplies the learning rates by ``gamma`` at each epoch in ``milestones`` (by
    ``gamma ** n`` at an epoch listed n times).

    Parameters
    ----------
    optimizer, last_epoch : as `LRScheduler`
    milestones : iterable of int
    gamma : float >= 0, default 0.1
    """

    def __init__(
        self,
        optimizer: Any,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
            raise TypeError(
                f"milestones must be an iterable of epochs, got {type(milestones).__name__}"
            )
        milestones = list(milestones)
        self.milestones = Counter(
            check_size(epoch, f"milestones[{i}]", minimum=0) for i, epoch in enumerate(milestones)
        )
        self.gamma = _check_real(gamma, "gamma", minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        factor = self.gamma ** self.milestones[self.last_epoch]
        return [lr * factor for lr in self._current_lrs()]


class ExponentialLR(LRScheduler):
    """Multiplies the learning rates by ``gamma`` every epoch:
    ``lr = initial_lr * gamma ** epoch``.

    Parameters
    ----------
    optimizer, last_epoch : as `LRScheduler`
    gamma : float >= 0
    """

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _check_real(gamma, "gamma", minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self._is_initial:  # resuming: the constructor's step keeps the learning rates
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from each group's initial lr down to ``eta_min`` over ``T_max`` epochs
    (then back up, as PyTorch's, if stepped on):
    ``lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``, computed by
    PyTorch's recursive update so that an lr changed from outside carries on.

    Parameters
    ----------
    optimizer, last_epoch : as `LRScheduler`
    T_max : int >= 1
    eta_min : float >= 0, default 0
    """

    def __init__(
        self, optimizer: Any, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = check_size(T_max, "T_max")
        self.eta_min = _check_real(eta_min, "eta_min", minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        epoch, T_max, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:  # also when resuming: the constructor's step keeps the lr
            return self._current_lrs()
        if (epoch - 1 - T_max) % (2 * T_max) == 0:  # at the bottom, where the ratio is 0/0
            return [
                lr + (base - eta_min) * (1 - math.cos(math.pi / T_max)) / 2
                for base, lr in zip(self.base_lrs, self._current_lrs(), strict=True)
            ]
        ratio = (1 + math.cos(math.pi * epoch / T_max)) / (
            1 + math.cos(math.pi * (epoch - 1) / T_max)
        )
        return [ratio * (lr - eta_min) + eta_min for lr in self._current_lrs()]


class LambdaLR(LRScheduler):
    """``lr = initial_lr * lr_lambda(epoch)``.

    Parameters
    ----------
    optimizer, last_epoch : as `LRScheduler`
    lr_lambda : callable (epoch -> factor), or a list of one per param group

    ``state_dict()`` keeps the ``__dict__`` of a callable object but not a function (a lambda
    or ``def`` cannot be saved), as PyTorch's.
    """

    def __init__(
        self,
        optimizer: Any,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        groups = _check_optimizer(optimizer)
        self.lr_lambdas = _per_group(lr_lambda, "lr_lambda", groups, _check_callable)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [
            base * lmbda(self.last_epoch)
            for lmbda, base in zip(self.lr_lambdas, self.base_lrs, strict=True)
        ]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["lr_lambdas"] = [
            None if _is_function(fn) else fn.__dict__.copy() for fn in self.lr_lambdas
        ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        saved_lambdas = state.pop("lr_lambdas", [None] * len(self.lr_lambdas))
        super().load_state_dict(state)
        for fn, saved in zip(self.lr_lambdas, saved_lambdas, strict=True):
            if saved is not None:
                fn.__dict__.update(saved)


def _check_callable(value: object, name: str) -> Callable:
    if not callable(value):
        raise TypeError(f"{name} must be callable (epoch -> factor), got {type(value).__name__}")
    return value


def _is_function(fn: object) -> bool:
    """A plain function or lambda (which has no state worth saving), not a callable object."""
    return hasattr(fn, "__code__")


class ReduceLROnPlateau(LRScheduler):
    """Multiplies the learning rates by ``factor`` when a watched value (a validation loss)
    has not improved for more than ``patience`` epochs, as PyTorch's.

    Parameters
    ----------
    optimizer : an optimizer with ``param_groups`` (list of dicts with 'lr')
    mode : 'min' (default: lower is better) or 'max'
    factor : float in [0, 1), default 0.1
        ``new_lr = max(lr * factor, min_lr)``, applied only if it lowers lr by more than eps.
    patience : int >= 0, default 10
        Epochs without improvement tolerated; the next one reduces.
    threshold : float >= 0, default 1e-4
    threshold_mode : 'rel' (default) or 'abs'
        An improvement is a value below ``best * (1 - threshold)`` ('rel') or ``best -
        threshold`` ('abs') in 'min' mode (above ``best * (1 + threshold)`` / ``best +
        threshold`` in 'max' mode).
    cooldown : int >= 0, default 0
        Epochs after a reduction during which bad epochs are not counted.
    min_lr : float >= 0, or a list of one per param group, default 0
    eps : float >= 0, default 1e-8

    ``step(metrics)`` takes the value of the epoch (anything ``float()`` reads). Not a schedule
    over epochs: it sets no 'initial_lr' and takes no ``last_epoch``.
    """

    def __init__(
        self,
        optimizer: Any,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | list[float] = 0,
        eps: float = 1e-8,
    ) -> None:
        groups = _check_optimizer(optimizer)
        self.factor = _check_real(factor, "factor", minimum=0.0)
        if self.factor >= 1.0:
            raise ValueError(f"factor must be < 1 (it reduces the learning rate), got {factor}")
        self.optimizer = optimizer
        self.min_lrs = _per_group(
            min_lr, "min_lr", groups, lambda v, name: _check_real(v, name, minimum=0.0)
        )
        # a single min_lr also covers param groups added later (PyTorch's name)
        self.default_min_lr = None if isinstance(min_lr, (list, tuple)) else self.min_lrs[0]
        self.patience = check_size(patience, "patience", minimum=0)
        self.cooldown = check_size(cooldown, "cooldown", minimum=0)
        self.eps = _check_real(eps, "eps", minimum=0.0)
        self.mode = check_choice(mode, "mode", ("min", "max"))
        self.threshold = _check_real(threshold, "threshold", minimum=0.0)
        self.threshold_mode = check_choice(threshold_mode, "threshold_mode", ("rel", "abs"))
        self.last_epoch = 0
        self._last_lr = [group["lr"] for group in groups]
        self.best = math.inf if self.mode == "min" else -math.inf
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def _is_better(self, value: float) -> bool:
        """Whether ``value`` improves on ``best`` by more than the threshold."""
        best, threshold, relative = self.best, self.threshold, self.threshold_mode == "rel"
        if self.mode == "min":
            return value < (best * (1.0 - threshold) if relative else best - threshold)
        return value > (best * (threshold + 1.0) if relative else best + threshold)

    def step(self, metrics: Any) -> None:
        """One epoch with the watched value ``metrics``: reduce the learning rates if it has
        not improved for more than ``patience`` epochs (NaN never improves)."""
        try:
            value = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(
                f"metrics must be a number (the value watched), got {type(metrics).__name__}"
            ) from None
        self.last_epoch += 1
        if self._is_better(value):
            self.best = value
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in the cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs) and self.default_min_lr is not None:
            self.min_lrs = [self.default_min_lr] * len(groups)
        if len(groups) != len(self.min_lrs):
            raise RuntimeError(
                f"the optimizer has {len(groups)} param groups, but had {len(self.min_lrs)} "
                f"when this ReduceLROnPlateau was built: set its min_lrs to one per group"
            )
        for group, min_lr in zip(groups, self.min_lrs, strict=True):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr
