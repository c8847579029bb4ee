"""Softmax cross-entropy: the reference against central differences and PyTorch, the fused kernel
against the reference (both dtypes, every ISA, one and two threads), the edge cases PyTorch
defines (ignored rows, mean over no targets, huge logits), and bad input on both backends."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import CrossEntropyLoss, _core, functional, reference
from tests.helpers.cells import assert_close
from tests.helpers.numgrad import ATOL, RTOL, central_differences

BACKENDS = {"reference": reference, "fused": functional}
DTYPES = [np.float32, np.float64]


def case(N=13, V=37, dtype=np.float64, scale=3.0, ignore_every=4, seed=0, ignore_index=-100):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((N, V))).astype(dtype)
    targets = rng.integers(0, V, N)
    if ignore_every:
        targets[::ignore_every] = ignore_index
    return logits, targets


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reference_gradient_matches_central_differences(reduction):
    logits, targets = case(N=5, V=7)
    _, dlogits = reference.cross_entropy(logits, targets, reduction=reduction)
    numeric = central_differences(
        lambda: reference.cross_entropy(logits, targets, reduction=reduction, grad=False)[0], logits
    )
    np.testing.assert_allclose(dlogits, numeric, rtol=RTOL, atol=ATOL)
    assert np.all(dlogits[::4] == 0)  # ignored rows


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reference_loss_is_the_textbook_formula(reduction):
    logits, targets = case(N=6, V=5)
    valid = targets != -100
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    rows = -np.log(p[np.flatnonzero(valid), targets[valid]])
    expected = rows.mean() if reduction == "mean" else rows.sum()
    loss, _ = reference.cross_entropy(logits, targets, reduction=reduction)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("V", [1, 5, 37, 64])  # below, at and off the vector widths
def test_fused_matches_reference(isa, dtype, reduction, V):
    if not _core.isa_supported(isa):
        pytest.skip(f"{isa} not supported by this CPU")
    logits, targets = case(N=11, V=V, dtype=dtype)
    before = _core.active_isa()
    _core.select_isa(isa)
    try:
        loss, dlogits = functional.cross_entropy(logits, targets, reduction=reduction)
    finally:
        _core.select_isa(before)
    ref_loss, ref_dlogits = reference.cross_entropy(logits, targets, reduction=reduction)
    assert loss.dtype == np.dtype(dtype) and np.ndim(loss) == 0
    assert_close(np.asarray(loss), np.asarray(ref_loss), dtype, "loss")
    assert_close(dlogits, ref_dlogits, dtype, "dlogits")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_fused_matches_reference_on_many_rows(threads, dtype):
    """N * V above the parallel threshold: rows split across a team; the loss is the same."""
    logits, targets = case(N=700, V=97, dtype=dtype, ignore_every=9)
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(threads)
    try:
        loss, dlogits = functional.cross_entropy(logits, targets)
        loss_only, none = functional.cross_entropy(logits, targets, grad=False)
    finally:
        fusedrnn.set_num_threads(before)
    ref_loss, ref_dlogits = reference.cross_entropy(logits, targets)
    assert none is None and loss_only == loss
    assert_close(np.asarray(loss), np.asarray(ref_loss), dtype, "loss")
    assert_close(dlogits, ref_dlogits, dtype, "dlogits")


def test_fused_loss_does_not_depend_on_threads():
    logits, targets = case(N=1000, V=64, dtype=np.float32)
    before = fusedrnn.get_num_threads()
    try:
        fusedrnn.set_num_threads(1)
        one = functional.cross_entropy(logits, targets)
        fusedrnn.set_num_threads(2)
        two = functional.cross_entropy(logits, targets)
    finally:
        fusedrnn.set_num_threads(before)
    assert one[0] == two[0]
    np.testing.assert_array_equal(one[1], two[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_target_ignored(backend, dtype):
    """As PyTorch: mean over no targets is NaN (0/0), sum is 0; the gradient is zero."""
    logits, _ = case(N=4, V=6, dtype=dtype)
    targets = np.full(4, -1)
    mean, dmean = BACKENDS[backend].cross_entropy(logits, targets, ignore_index=-1)
    total, dsum = BACKENDS[backend].cross_entropy(logits, targets, ignore_index=-1, reduction="sum")
    assert np.isnan(mean) and mean.dtype == np.dtype(dtype)
    assert total == 0
    assert not np.any(dmean) and not np.any(dsum)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    logits = np.zeros((0, 5), np.float32)
    loss, dlogits = BACKENDS[backend].cross_entropy(logits, np.zeros(0, np.int64), reduction="sum")
    assert loss == 0 and dlogits.shape == (0, 5)
    loss, _ = BACKENDS[backend].cross_entropy(logits, np.zeros(0, np.int64))
    assert np.isnan(loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_inside_the_class_range(backend):
    """An ignore_index that is a real class (say padding 0) ignores exactly those rows."""
    logits, targets = case(N=9, V=5, ignore_every=0)
    targets[[1, 4]] = 0
    loss, dlogits = BACKENDS[backend].cross_entropy(logits, targets, ignore_index=0)
    keep = targets != 0
    ref_loss, ref_d = reference.cross_entropy(logits[keep], targets[keep])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(dlogits[keep], ref_d, rtol=1e-12)
    assert not np.any(dlogits[~keep])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_large_logits_are_stable(backend, dtype):
    """Logits of 1e4 (exp overflows without the max subtraction) give the exact answer."""
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 1e4 - 1, 3.0], [-1e4, -1e4, -1e4]], dtype)
    targets = np.array([2, 1, 0])
    loss, dlogits = BACKENDS[backend].cross_entropy(logits, targets, reduction="sum")
    lse1 = 1e4 + np.log1p(np.exp(-1.0))  # logsumexp of row 1, the 3.0 entry negligible
    expected = 2e4 + (lse1 - (1e4 - 1)) + np.log(3.0)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    p1 = np.array([1 / (1 + np.exp(-1.0)), np.exp(-1.0) / (1 + np.exp(-1.0)), 0.0])
    expected_d = np.array([[1, 0, -1], p1 - [0, 1, 0], [1 / 3 - 1, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(dlogits, expected_d, atol=1e-6)


def test_nan_logits_propagate():
    logits, targets = case(N=3, V=4, ignore_every=0)
    logits[1, 2] = np.nan
    for backend in BACKENDS.values():
        loss, dlogits = backend.cross_entropy(logits, targets)
        assert np.isnan(loss)
        assert np.all(np.isnan(dlogits[1])) and np.all(np.isfinite(dlogits[[0, 2]]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target_dtype", [np.int8, np.int32, np.uint16, np.int64])
def test_any_integer_target_dtype(backend, target_dtype):
    logits, targets = case(N=5, V=7, ignore_every=0)
    expected = reference.cross_entropy(logits, targets)
    got = BACKENDS[backend].cross_entropy(logits, targets.astype(target_dtype))
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-12)


def test_non_contiguous_logits():
    logits, targets = case(N=6, V=10, ignore_every=0)
    view = logits[:, ::2]
    expected = reference.cross_entropy(np.ascontiguousarray(view), targets % 5)
    got = functional.cross_entropy(view, targets % 5)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_matches_torch(reduction, dtype):
    torch = pytest.importorskip("torch")
    logits, targets = case(N=20, V=11, dtype=dtype)
    x = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(
        x, torch.tensor(targets), ignore_index=-100, reduction=reduction
    )
    expected.backward()
    loss, dlogits = functional.cross_entropy(logits, targets, reduction=reduction)
    assert_close(np.asarray(loss), np.asarray(expected.item(), dtype), dtype, "loss")
    assert_close(dlogits, x.grad.numpy(), dtype, "dlogits")


# ---------------------------------------------------------------- CrossEntropyLoss


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_object_takes_any_leading_shape(backend):
    logits, targets = case(N=12, V=7)
    loss_fn = CrossEntropyLoss(reduction="sum", backend=backend)
    loss = loss_fn(logits.reshape(3, 4, 7), targets.reshape(3, 4))
    dlogits = loss_fn.backward(retain_graph=True)
    expected = reference.cross_entropy(logits, targets, reduction="sum")
    np.testing.assert_allclose(loss, expected[0], rtol=1e-12)
    assert dlogits.shape == (3, 4, 7)
    np.testing.assert_allclose(dlogits.reshape(12, 7), expected[1], rtol=1e-12)
    np.testing.assert_allclose(loss_fn.backward(2.0), 2 * dlogits, rtol=1e-15)


def test_loss_object_in_eval_mode_computes_no_gradient():
    logits, targets = case()
    loss_fn = CrossEntropyLoss().eval()
    assert loss_fn(logits, targets) == functional.cross_entropy(logits, targets)[0]
    with pytest.raises(RuntimeError, match="training-mode forward"):
        loss_fn.backward()


def test_loss_object_rejects_bad_arguments():
    logits, targets = case()
    with pytest.raises(ValueError, match="targets must have the leading shape of logits"):
        CrossEntropyLoss()(logits, targets[:-1])
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="backend must be"):
        CrossEntropyLoss(backend="torch")
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        CrossEntropyLoss(ignore_index=1.5)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        ({"logits": [[1.0, 2.0]]}, TypeError, r"logits must be a numpy.ndarray .* got list"),
        (
            {"logits": np.ones((13, 37), np.int64)},
            TypeError,
            r"logits must have dtype float32 or float64, got int64",
        ),
        ({"logits": np.ones((13, 37), np.float16)}, TypeError, r"logits must have dtype"),
        (
            {"logits": np.ones((13, 37, 2))},
            ValueError,
            r"logits must have 2 dimensions \(N, num_classes\), but has 3",
        ),
        ({"logits": np.ones((13, 0))}, ValueError, r"logits must have num_classes >= 1"),
        (
            {"targets": np.zeros(13, np.float64)},
            TypeError,
            r"targets must have an integer dtype \(class indices\), got float64",
        ),
        ({"targets": np.zeros(13, bool)}, TypeError, r"targets must have an integer dtype"),
        ({"targets": [0] * 13}, TypeError, r"targets must be a numpy.ndarray .* got list"),
        (
            {"targets": np.zeros(12, np.int64)},
            ValueError,
            r"targets must have shape \(N,\) = \(13,\), .* but has shape \(12,\)",
        ),
        (
            {"targets": np.zeros((13, 1), np.int64)},
            ValueError,
            r"targets must have shape \(N,\) = \(13,\), .* but has shape \(13, 1\)",
        ),
        (
            {"targets": np.r_[np.zeros(5, np.int64), 37, np.zeros(7, np.int64)]},
            ValueError,
            r"targets\[5\] = 37 is out of range: .* \[0, 37\) or ignore_index = -100",
        ),
        (
            {"targets": np.r_[np.zeros(2, np.int64), -1, np.zeros(10, np.int64)]},
            ValueError,
            r"targets\[2\] = -1 is out of range",
        ),
        ({"reduction": "none"}, ValueError, r"reduction must be 'mean' or 'sum', got 'none'"),
        ({"ignore_index": 2.0}, TypeError, r"ignore_index must be an integer, got float"),
        ({"ignore_index": True}, TypeError, r"ignore_index must be an integer"),
    ],
)
def test_bad_input_names_the_argument(backend, change, error, pattern):
    logits, targets = case(ignore_every=0)
    args = {
        "logits": logits,
        "targets": targets,
        "ignore_index": -100,
        "reduction": "mean",
        **change,
    }
    with pytest.raises(error, match=pattern):
        BACKENDS[backend].cross_entropy(**args)
