"""`NLLLoss`, `CrossEntropyLoss` (NumPy path: weights, label smoothing, 'none') and `MSELoss` on
their own: gradients against central differences in float64, the kernel and the NumPy path
agreeing where both apply, eval mode, and errors naming the argument. Parity with torch.nn is
in test_losses_torch.py; the plain fused cross-entropy in tests/kernels/test_cross_entropy.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import CrossEntropyLoss, MSELoss, NLLLoss
from tests.helpers.numgrad import ATOL, RTOL, central_differences

C = 5


def case(leading=(3, 4), dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((*leading, C)).astype(dtype)
    targets = rng.integers(0, C, leading)
    targets.reshape(-1)[0] = -100
    weight = rng.uniform(0.5, 2.0, C).astype(dtype)
    return scores, targets, weight


LOSSES = {
    "nll_weighted_sum": lambda w: NLLLoss(w, reduction="sum"),
    "nll_mean": lambda w: NLLLoss(),
    "ce_smoothing_weighted_mean": lambda w: CrossEntropyLoss(w, label_smoothing=0.3),
    "ce_smoothing_sum": lambda w: CrossEntropyLoss(label_smoothing=0.1, reduction="sum"),
    "ce_weighted_none": lambda w: CrossEntropyLoss(w, reduction="none"),
}


@pytest.mark.parametrize("make", LOSSES.values(), ids=LOSSES)
def test_class_loss_gradient_against_central_differences(make):
    scores, targets, weight = case()
    loss_fn = make(weight)
    loss = loss_fn(scores, targets)
    d_loss = np.random.default_rng(1).standard_normal(np.shape(loss)) if np.ndim(loss) else 0.7
    grad = loss_fn.backward(d_loss)
    evaluate = make(weight).eval()
    expected = central_differences(lambda: np.sum(evaluate(scores, targets) * d_loss), scores)
    np.testing.assert_allclose(grad, expected, rtol=RTOL, atol=ATOL)
    assert not np.any(grad.reshape(-1, C)[0])  # the ignored position


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_path_agrees_with_the_kernel(dtype, reduction):
    """Unit weights and no smoothing: the NumPy path gives the fused kernel's loss and grad."""
    scores, targets, _ = case(dtype=dtype)
    fused = CrossEntropyLoss(reduction=reduction)
    numpy_path = CrossEntropyLoss(np.ones(C, dtype), reduction=reduction)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(numpy_path(scores, targets), fused(scores, targets), rtol=tolerance)
    np.testing.assert_allclose(numpy_path.backward(), fused.backward(), rtol=tolerance, atol=1e-7)
    none = CrossEntropyLoss(reduction="none")(scores, targets)
    np.testing.assert_allclose(
        none.sum() / (np.count_nonzero(targets != -100) if reduction == "mean" else 1),
        fused(scores, targets),
        rtol=tolerance,
    )


def test_mse_loss_and_gradient():
    rng = np.random.default_rng(2)
    x, target = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    loss_fn = MSELoss()
    assert loss_fn(x, target) == pytest.approx(np.mean((x - target) ** 2), rel=1e-14)
    np.testing.assert_allclose(loss_fn.backward(3.0), 6 * (x - target) / x.size, rtol=1e-14)
    none = MSELoss(reduction="none")
    np.testing.assert_array_equal(none(x, target), (x - target) ** 2)
    assert np.isnan(MSELoss()(np.ones(0), np.ones(0)))  # the mean of nothing, as PyTorch


@pytest.mark.parametrize(
    "loss_fn", [NLLLoss(), CrossEntropyLoss(label_smoothing=0.1), MSELoss()], ids=repr
)
def test_eval_mode_computes_the_loss_only(loss_fn):
    scores, targets, _ = case()
    target = scores.copy() if isinstance(loss_fn, MSELoss) else targets
    training_loss = loss_fn.train()(scores, target)
    assert loss_fn.eval()(scores, target) == training_loss
    with pytest.raises(RuntimeError, match="eval mode"):
        loss_fn.backward()


def test_loss_dtype_follows_the_input():
    for dtype in (np.float32, np.float64):
        scores, targets, weight = case(dtype=dtype)
        loss_fn = CrossEntropyLoss(weight, reduction="none")
        assert loss_fn(scores, targets).dtype == dtype
        assert loss_fn.backward(np.ones(targets.shape, dtype)).dtype == dtype
        assert NLLLoss()(scores, targets).dtype == dtype


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s, t: NLLLoss(reduction="avg"), ValueError, "reduction must be 'mean', 'sum' or"),
        (lambda s, t: NLLLoss(np.ones((2, C))), ValueError, r"weight must have shape \(C,\)"),
        (lambda s, t: NLLLoss([1.0] * C), TypeError, r"weight must be a numpy\.ndarray"),
        (lambda s, t: NLLLoss(ignore_index=0.5), TypeError, "ignore_index must be an integer"),
        (lambda s, t: NLLLoss(np.ones(C + 1))(s, t), ValueError, "weight has 6 entries"),
        (
            lambda s, t: NLLLoss(np.ones(C, np.float32))(s, t),
            TypeError,
            r"weight has dtype float32, but log_probs has float64",
        ),
        (lambda s, t: NLLLoss()(s.tolist(), t), TypeError, "log_probs must be a numpy.ndarray"),
        (lambda s, t: NLLLoss()(s, t.astype(float)), TypeError, "targets must have an integer"),
        (lambda s, t: NLLLoss()(s, t[:2]), ValueError, "targets must have the leading shape"),
        (lambda s, t: NLLLoss()(s, t + 7), ValueError, r"targets\[0, 0\] = -93 is out of range"),
        (lambda s, t: NLLLoss()(s[..., :0], t), ValueError, "C >= 1 classes"),
        (
            lambda s, t: CrossEntropyLoss(label_smoothing=1.5),
            ValueError,
            r"label_smoothing must be in \[0, 1\]",
        ),
        (
            lambda s, t: CrossEntropyLoss(label_smoothing=0.1)(s, t.tolist()),
            TypeError,
            "targets must be a numpy.ndarray",
        ),
        (lambda s, t: MSELoss()(s, s.astype(np.float32)), TypeError, "target must have dtype"),
        (lambda s, t: MSELoss()(s, s[0]), ValueError, r"target must have shape \(3, 4, 5\)"),
        (lambda s, t: MSELoss()(t, t), TypeError, "input must have dtype float32 or float64"),
    ],
)
def test_bad_arguments_are_named(call, error, message):
    scores, targets, _ = case()
    with pytest.raises(error, match=message):
        call(scores, targets)


@pytest.mark.parametrize(
    "loss_fn",
    [NLLLoss(reduction="none"), CrossEntropyLoss(reduction="none"), MSELoss(reduction="none")],
    ids=repr,
)
def test_d_loss_of_reduction_none_has_the_loss_shape(loss_fn):
    scores, targets, _ = case()
    target = scores.copy() if isinstance(loss_fn, MSELoss) else targets
    loss = loss_fn(scores, target)
    with pytest.raises(TypeError, match=r"d_loss must be a numpy\.ndarray"):
        loss_fn.backward()
    with pytest.raises(ValueError, match="d_loss must have shape"):
        loss_fn.backward(np.ones((*loss.shape, 1)))
    assert loss_fn.backward(np.ones_like(loss)).shape == scores.shape


@pytest.mark.parametrize("loss_fn", [NLLLoss(), CrossEntropyLoss(), MSELoss()], ids=repr)
def test_d_loss_of_a_scalar_loss_is_a_number(loss_fn):
    scores, targets, _ = case()
    target = scores.copy() if isinstance(loss_fn, MSELoss) else targets
    loss_fn(scores, target)
    with pytest.raises(TypeError, match="d_loss must be a real number"):
        loss_fn.backward(np.ones(3))
    once = np.array(loss_fn.backward(1.0))  # a copy: the kernel's gradient is its own buffer
    loss_fn(scores, target)  # one backward per forward
    np.testing.assert_allclose(loss_fn.backward(np.float64(2.0)), 2 * once)


def test_reprs():
    assert repr(NLLLoss()) == "NLLLoss(ignore_index=-100, reduction='mean')"
    assert (
        repr(CrossEntropyLoss(np.ones(3), label_smoothing=0.1, reduction="sum"))
        == "CrossEntropyLoss(weight=<3 class weights>, ignore_index=-100, reduction='sum', "
        "label_smoothing=0.1)"
    )
    assert repr(MSELoss(reduction="none")) == "MSELoss(reduction='none')"
