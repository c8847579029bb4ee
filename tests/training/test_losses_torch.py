"""`NLLLoss`, `CrossEntropyLoss` (weights, label smoothing, ignore_index, every reduction) and
`MSELoss` against torch.nn (skipped without PyTorch): loss and input gradient, float64 and
float32, any leading shape.

Ours put the class axis last, (..., C); torch's second, (N, C, d1, ...): the tests move it.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from tests.helpers.cells import assert_close

torch = pytest.importorskip("torch")

DTYPES = [np.float32, np.float64]
C = 6
LEADING_SHAPES = [(), (9,), (4, 5)]  # unbatched, (N,), (T, B)
REDUCTIONS = ["mean", "sum", "none"]


def to_torch_layout(a):
    """(..., C) -> torch's (N, C, d1, ...): the class axis second (first when unbatched)."""
    return np.moveaxis(a, -1, 1) if a.ndim > 2 else a


def case(leading, dtype, ignore_index=-100, seed=0):
    """Scores (..., C), targets (...) with some ignored, and class weights (C,)."""
    rng = np.random.default_rng(seed)
    scores = (3 * rng.standard_normal((*leading, C))).astype(dtype)
    targets = rng.integers(0, C, leading)
    if targets.size > 2:
        targets.reshape(-1)[[1, -1]] = ignore_index
    weight = rng.uniform(0.2, 2.0, C).astype(dtype)
    return scores, targets, weight, rng


def d_loss_for(reduction, leading, dtype, rng):
    if reduction == "none":
        return rng.standard_normal(leading).astype(dtype)
    return 1.7


def torch_loss_and_grad(fn, scores, targets, d_loss, dtype, **options):
    """torch's loss of ``scores`` (our layout) and the gradient of ``d_loss * loss`` in it."""
    x = torch.tensor(to_torch_layout(scores), requires_grad=True)
    loss = fn(x, torch.tensor(targets), **options)
    loss.backward(
        torch.tensor(d_loss, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    )
    grad = x.grad.numpy()
    return loss.detach().numpy(), (np.moveaxis(grad, 1, -1) if scores.ndim > 2 else grad)


def check_against_torch(ours, torch_fn, scores, targets, d_loss, dtype, **options):
    loss = ours(scores, targets)
    grad = ours.backward(d_loss)
    expected_loss, expected_grad = torch_loss_and_grad(
        torch_fn, scores, targets, d_loss, dtype, **options
    )
    assert_close(np.asarray(loss), expected_loss, dtype, "loss")
    assert_close(grad, expected_grad, dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_nll_loss_as_torch(ignore_index, weighted, reduction, leading, dtype):
    scores, targets, weight, rng = case(leading, dtype, ignore_index)
    log_probs = fusedrnn.LogSoftmax().eval()(scores)
    weight = weight if weighted else None
    check_against_torch(
        fusedrnn.NLLLoss(weight, ignore_index=ignore_index, reduction=reduction),
        torch.nn.functional.nll_loss,
        log_probs,
        targets,
        d_loss_for(reduction, leading, dtype, rng),
        dtype,
        weight=None if weight is None else torch.tensor(weight),
        ignore_index=ignore_index,
        reduction=reduction,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_cross_entropy_loss_as_torch(backend, label_smoothing, weighted, reduction, leading, dtype):
    ignore_index = 3
    scores, targets, weight, rng = case(leading, dtype, ignore_index, seed=1)
    weight = weight if weighted else None
    ours = fusedrnn.CrossEntropyLoss(
        weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        backend=backend,
    )
    check_against_torch(
        ours,
        torch.nn.functional.cross_entropy,
        scores,
        targets,
        d_loss_for(reduction, leading, dtype, rng),
        dtype,
        weight=None if weight is None else torch.tensor(weight),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


@pytest.mark.parametrize(
    ("loss", "label_smoothing"), [("nll", 0.0), ("cross_entropy", 0.0), ("cross_entropy", 0.1)]
)
@pytest.mark.parametrize("weighted", [False, True])
def test_every_target_ignored_as_torch(weighted, loss, label_smoothing):
    """The mean is NaN (0/0) and the gradient zero, as torch's."""
    scores, _, weight, _ = case((5,), np.float64)
    targets = np.full(5, -100)
    weight = weight if weighted else None
    options = {"weight": None if weight is None else torch.tensor(weight)}
    if loss == "nll":
        ours, torch_fn = fusedrnn.NLLLoss(weight), torch.nn.functional.nll_loss
    else:
        ours = fusedrnn.CrossEntropyLoss(weight, label_smoothing=label_smoothing)
        torch_fn = torch.nn.functional.cross_entropy
        options["label_smoothing"] = label_smoothing
    check_against_torch(ours, torch_fn, scores, targets, 1.0, np.float64, **options)
    assert np.isnan(ours(scores, targets))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (7,), (3, 4, 5)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_as_torch(reduction, shape, dtype):
    rng = np.random.default_rng(4)
    prediction = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    d_loss = rng.standard_normal(shape).astype(dtype) if reduction == "none" else 0.6
    ours = fusedrnn.MSELoss(reduction=reduction)
    loss = ours(prediction, target)
    grad = ours.backward(d_loss)
    x = torch.tensor(prediction, requires_grad=True)
    expected = torch.nn.functional.mse_loss(x, torch.tensor(target), reduction=reduction)
    expected.backward(torch.tensor(d_loss, dtype=x.dtype))
    assert_close(np.asarray(loss), expected.detach().numpy(), dtype, "loss")
    assert_close(grad, x.grad.numpy(), dtype, "grad")
