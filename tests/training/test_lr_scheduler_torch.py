"""The learning-rate schedules against ``torch.optim.lr_scheduler`` (skipped without PyTorch):
the same learning rates, to the last bit, over many steps, for several param groups, after an lr
changed from outside, when resuming with ``last_epoch`` and across ``state_dict``.
"""

from __future__ import annotations

import math

import pytest

from fusedrnn.optim import lr_scheduler
from tests.training.test_lr_scheduler import make_optimizer

torch = pytest.importorskip("torch")

LRS = [0.1, 0.03]  # two param groups
STEPS = 60

# name -> (constructor arguments of both)
SCHEDULES = {
    "StepLR": {"step_size": 3, "gamma": 0.5},
    "MultiStepLR": {"milestones": [2, 5, 5, 9, 30], "gamma": 0.3},
    "ExponentialLR": {"gamma": 0.93},
    "CosineAnnealingLR": {"T_max": 7, "eta_min": 0.001},  # 60 steps: down, up, down, ...
    "CosineAnnealingLR_to_zero": {"T_max": 10},
    "LambdaLR": {"lr_lambda": lambda epoch: 1 / (1 + epoch) ** 0.5},
    "LambdaLR_per_group": {"lr_lambda": [lambda epoch: 0.97**epoch, lambda epoch: epoch % 4]},
}


def torch_optimizer(lrs):
    return torch.optim.SGD(
        [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    )


def build(name, ours_or_theirs, lrs=LRS, **extra):
    """The schedule ``name`` on a fresh optimizer: ours (fusedrnn) or theirs (torch)."""
    cls_name = name.split("_")[0]
    if ours_or_theirs == "ours":
        optimizer, module = make_optimizer(lrs), lr_scheduler
    else:
        optimizer, module = torch_optimizer(lrs), torch.optim.lr_scheduler
    return getattr(module, cls_name)(optimizer, **SCHEDULES[name], **extra)


def lrs_of(scheduler):
    return [group["lr"] for group in scheduler.optimizer.param_groups]


def advance(scheduler, steps, history):
    """``steps`` epochs (torch's optimizer steps first, as torch asks), recording the lrs."""
    for _ in range(steps):
        if isinstance(scheduler.optimizer, torch.optim.Optimizer):
            scheduler.optimizer.step()
        scheduler.step()
        history.append((lrs_of(scheduler), scheduler.get_last_lr(), scheduler.last_epoch))
    return history


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_gives_torchs_learning_rates_bit_for_bit(name):
    ours, theirs = build(name, "ours"), build(name, "theirs")
    assert lrs_of(ours) == lrs_of(theirs) == ours.get_last_lr() == theirs.get_last_lr()
    assert ours.base_lrs == theirs.base_lrs == LRS
    assert [g["initial_lr"] for g in ours.optimizer.param_groups] == LRS
    assert advance(ours, STEPS, []) == advance(theirs, STEPS, [])


@pytest.mark.parametrize("name", SCHEDULES)
def test_lr_changed_from_outside_carries_on_as_in_torch(name):
    ours, theirs = build(name, "ours"), build(name, "theirs")
    history = [advance(ours, 5, []), advance(theirs, 5, [])]
    for scheduler in (ours, theirs):
        scheduler.optimizer.param_groups[1]["lr"] = 0.2
    assert advance(ours, 20, history[0]) == advance(theirs, 20, history[1])


@pytest.mark.parametrize("name", SCHEDULES)
def test_resuming_with_last_epoch_as_torch(name):
    """A schedule built with last_epoch=k on groups that have 'initial_lr' (a resumed run)."""
    resumed = []
    for side in ("ours", "theirs"):
        first = build(name, side)
        advance(first, 8, [])
        again = type(first)(first.optimizer, **SCHEDULES[name], last_epoch=first.last_epoch)
        resumed.append(advance(again, 20, [(lrs_of(again), again.get_last_lr(), 0)]))
    assert resumed[0] == resumed[1]


@pytest.mark.parametrize("name", SCHEDULES)
def test_our_schedule_loads_torchs_state_dict(name):
    ours, theirs = build(name, "ours"), build(name, "theirs")
    advance(theirs, 11, [])
    for group, lr in zip(ours.optimizer.param_groups, lrs_of(theirs), strict=True):
        group["lr"] = lr  # the optimizer's state (its lr) goes with the scheduler's
    ours.load_state_dict(theirs.state_dict())
    assert ours.last_epoch == theirs.last_epoch == 11
    assert advance(ours, 30, []) == advance(theirs, 30, [])


# ---------------------------------------------------------------- ReduceLROnPlateau

PLATEAU_METRICS = (
    [1.0, 0.9, 0.9, 0.9, 0.9, 0.89995, 0.8, 0.8, math.nan, 0.8, 0.7]
    + [0.7] * 12
    + [0.5, 0.6, 0.55, 0.5, 0.4999, 0.3]
    + [0.3] * 20
)
PLATEAU_OPTIONS = {
    "defaults": {},
    "patience_2": {"patience": 2, "factor": 0.5},
    "patience_0_cooldown_3": {"patience": 0, "cooldown": 3, "factor": 0.7},
    "abs_threshold": {"patience": 1, "threshold": 0.05, "threshold_mode": "abs"},
    "max_mode": {"mode": "max", "patience": 1, "factor": 0.5},
    "max_mode_abs": {"mode": "max", "patience": 2, "threshold_mode": "abs", "threshold": 0.01},
    "min_lr_per_group": {"patience": 1, "factor": 0.2, "min_lr": [0.01, 0.001]},
    "min_lr_and_eps": {"patience": 0, "factor": 0.5, "min_lr": 0.004, "eps": 1e-3},
}


@pytest.mark.parametrize("options", PLATEAU_OPTIONS.values(), ids=PLATEAU_OPTIONS)
def test_reduce_on_plateau_as_torch(options):
    ours = lr_scheduler.ReduceLROnPlateau(make_optimizer(LRS), **options)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_optimizer(LRS), **options)
    history = {"ours": [], "theirs": []}
    for metric in PLATEAU_METRICS:
        for side, scheduler in (("ours", ours), ("theirs", theirs)):
            scheduler.step(metric)
            history[side].append(
                (
                    lrs_of(scheduler),
                    scheduler.get_last_lr(),
                    scheduler.num_bad_epochs,
                    scheduler.cooldown_counter,
                    scheduler.best,
                    scheduler.last_epoch,
                )
            )
    assert history["ours"] == history["theirs"]
    assert history["ours"][-1][0] != LRS  # the metrics do reduce the learning rates


def test_reduce_on_plateau_loads_torchs_state_dict():
    options = {"patience": 2, "factor": 0.5, "cooldown": 1}
    ours = lr_scheduler.ReduceLROnPlateau(make_optimizer(LRS), **options)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_optimizer(LRS), **options)
    for metric in PLATEAU_METRICS[:15]:
        theirs.step(metric)
    for group, lr in zip(ours.optimizer.param_groups, lrs_of(theirs), strict=True):
        group["lr"] = lr
    ours.load_state_dict(theirs.state_dict())
    for metric in PLATEAU_METRICS[15:]:
        ours.step(metric)
        theirs.step(metric)
        assert (lrs_of(ours), ours.num_bad_epochs, ours.best) == (
            lrs_of(theirs),
            theirs.num_bad_epochs,
            theirs.best,
        )
