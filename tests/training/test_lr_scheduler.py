"""The learning-rate schedules on their own: the closed forms they follow, ``initial_lr``,
``state_dict`` through pickle, and errors naming the argument. Their parity with PyTorch's is in
test_lr_scheduler_torch.py.
"""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

import fusedrnn
from fusedrnn.optim import lr_scheduler
from fusedrnn.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    MultiStepLR,
    ReduceLROnPlateau,
    StepLR,
)


def make_optimizer(lrs):
    """fusedrnn's SGD with one param group (of one parameter) per learning rate."""
    return fusedrnn.SGD([{"params": [fusedrnn.Parameter(np.zeros(1))], "lr": lr} for lr in lrs])


def run(scheduler, steps):
    lrs = [scheduler.get_last_lr()]
    for _ in range(steps):
        scheduler.step()
        lrs.append(scheduler.get_last_lr())
    return lrs


@pytest.mark.parametrize(
    ("make", "closed_form"),
    [
        (lambda opt: StepLR(opt, 4, gamma=0.5), lambda e: 0.5 ** (e // 4)),
        (lambda opt: MultiStepLR(opt, [3, 7, 7]), lambda e: 0.1 ** ((e >= 3) + 2 * (e >= 7))),
        (lambda opt: ExponentialLR(opt, 0.9), lambda e: 0.9**e),
        (
            lambda opt: CosineAnnealingLR(opt, 10),
            lambda e: (1 + math.cos(math.pi * e / 10)) / 2,
        ),
        (lambda opt: LambdaLR(opt, lambda e: 1 / (e + 1)), lambda e: 1 / (e + 1)),
    ],
    ids=["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR"],
)
def test_schedule_follows_its_closed_form(make, closed_form):
    scheduler = make(make_optimizer([0.2, 0.05]))
    for epoch, lrs in enumerate(run(scheduler, 25)):
        expected = [0.2 * closed_form(epoch), 0.05 * closed_form(epoch)]
        assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15), epoch
    assert scheduler.last_epoch == 25


def test_building_a_schedule_sets_initial_lr_once():
    optimizer = make_optimizer([0.1])
    StepLR(optimizer, 2)
    optimizer.param_groups[0]["lr"] = 0.5
    second = ExponentialLR(optimizer, 0.5)  # keeps the first one's initial_lr, as PyTorch's
    assert optimizer.param_groups[0]["initial_lr"] == 0.1
    assert second.base_lrs == [0.1]


def test_state_dict_pickles_and_resumes_the_schedule():
    first = CosineAnnealingLR(make_optimizer([0.1]), T_max=9, eta_min=0.01)
    run(first, 6)
    state = pickle.loads(pickle.dumps(first.state_dict()))
    optimizer = make_optimizer([first.get_last_lr()[0]])
    second = CosineAnnealingLR(optimizer, T_max=9)
    second.load_state_dict(state)
    assert run(second, 10)[1:] == run(first, 10)[1:]
    assert "optimizer" not in state


def test_lambda_state_dict_keeps_callable_objects_not_functions():
    class Warmup:
        def __init__(self):
            self.steps = 3

        def __call__(self, epoch):
            return min(1.0, (epoch + 1) / self.steps)

    scheduler = LambdaLR(make_optimizer([1.0, 1.0]), [Warmup(), lambda epoch: 1.0])
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [{"steps": 3}, None]
    state["lr_lambdas"][0]["steps"] = 10
    scheduler.load_state_dict(state)
    assert scheduler.lr_lambdas[0].steps == 10


def test_reduce_on_plateau_waits_patience_then_cools_down():
    optimizer = make_optimizer([1.0])
    scheduler = ReduceLROnPlateau(optimizer, patience=2, cooldown=1, factor=0.5)
    lrs = []
    for metric in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]:
        scheduler.step(metric)
        lrs.append(scheduler.get_last_lr()[0])
    # epoch 1 sets the best; epochs 2-4 are bad (3 > patience) -> halve; epoch 5 in the
    # cooldown does not count; epochs 6-7 are two bad ones; epoch 8 improves
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert "initial_lr" not in optimizer.param_groups[0]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: StepLR(object(), 2), TypeError, "optimizer must have param_groups"),
        (
            lambda: StepLR(SimpleNamespace(param_groups=[{"params": []}]), 2),
            ValueError,
            r"param_groups\[0\] has no 'lr'",
        ),
        (lambda: StepLR(make_optimizer([0.1]), 0), ValueError, "step_size must be >= 1"),
        (lambda: StepLR(make_optimizer([0.1]), 2.0), TypeError, "step_size must be an integer"),
        (lambda: StepLR(make_optimizer([0.1]), 2, gamma="x"), TypeError, "gamma must be a real"),
        (lambda: ExponentialLR(make_optimizer([0.1]), -0.5), ValueError, "gamma must be"),
        (lambda: MultiStepLR(make_optimizer([0.1]), 5), TypeError, "milestones must be an iter"),
        (
            lambda: MultiStepLR(make_optimizer([0.1]), [2, -1]),
            ValueError,
            r"milestones\[1\] must be >= 0",
        ),
        (lambda: CosineAnnealingLR(make_optimizer([0.1]), 0), ValueError, "T_max must be >= 1"),
        (
            lambda: CosineAnnealingLR(make_optimizer([0.1]), 5, eta_min=math.nan),
            ValueError,
            "eta_min must be",
        ),
        (lambda: LambdaLR(make_optimizer([0.1]), 0.5), TypeError, "lr_lambda must be callable"),
        (
            lambda: LambdaLR(make_optimizer([0.1, 0.2]), [abs]),
            ValueError,
            "lr_lambda must have one entry per param group",
        ),
        (
            lambda: StepLR(make_optimizer([0.1]), 2, last_epoch=3),
            ValueError,
            r"param_groups\[0\] has no 'initial_lr'",
        ),
        (lambda: StepLR(make_optimizer([0.1]), 2, last_epoch=-2), ValueError, "last_epoch"),
        (lambda: ReduceLROnPlateau(make_optimizer([0.1]), factor=1.0), ValueError, "factor"),
        (lambda: ReduceLROnPlateau(make_optimizer([0.1]), mode="low"), ValueError, "mode must"),
        (
            lambda: ReduceLROnPlateau(make_optimizer([0.1]), threshold_mode="x"),
            ValueError,
            "threshold_mode must",
        ),
        (lambda: ReduceLROnPlateau(make_optimizer([0.1]), patience=-1), ValueError, "patience"),
        (
            lambda: ReduceLROnPlateau(make_optimizer([0.1]), min_lr=[0.1, 0.2]),
            ValueError,
            "min_lr must have one entry per param group",
        ),
        (lambda: ReduceLROnPlateau(make_optimizer([0.1])).step("low"), TypeError, "metrics"),
    ],
)
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_refused_schedule_leaves_the_optimizer_alone():
    optimizer = make_optimizer([0.1])
    before = [dict(group) for group in optimizer.param_groups]
    with pytest.raises(ValueError, match="step_size"):
        StepLR(optimizer, 0)
    assert optimizer.param_groups == before
    assert "initial_lr" not in optimizer.param_groups[0]


def test_module_lists_every_schedule():
    assert sorted(lr_scheduler.__all__) == sorted(
        name
        for name, value in vars(lr_scheduler).items()
        if isinstance(value, type) and issubclass(value, lr_scheduler.LRScheduler)
    )
