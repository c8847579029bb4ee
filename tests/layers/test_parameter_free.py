"""`Dropout` and `LogSoftmax` on their own: seeding, the masks' statistics, the edge cases p = 0
and p = 1, any shape and both dtypes, the gradient against central differences, and errors
naming the argument. Parity with torch.nn is in test_parameter_free_torch.py."""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import Dropout, LogSoftmax
from tests.helpers.numgrad import ATOL, RTOL, central_differences

DTYPES = [np.float32, np.float64]
SHAPES = [(), (7,), (3, 4), (2, 3, 5), (0, 4)]


def inputs(shape, dtype, seed=0):
    return np.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


# ---------------------------------------------------------------- Dropout


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dropout_zeroes_or_scales_every_entry_and_backward_uses_the_same_mask(shape, dtype):
    p = 0.4
    drop = Dropout(p, seed=3)
    x = inputs(shape, dtype)
    x += dtype(5)  # no entry is zero by chance
    y = drop(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    kept = y != 0
    scale = dtype(1) / dtype(1 - p)
    np.testing.assert_array_equal(y[kept], x[kept] * scale)
    d_output = inputs(shape, dtype, seed=1)
    np.testing.assert_array_equal(drop.backward(d_output), np.where(kept, d_output * scale, 0))


def test_dropout_backward_is_of_the_last_forward():
    drop = Dropout(0.5, seed=0)
    x = np.ones(1000)
    drop(x)
    second = drop(x)
    np.testing.assert_array_equal(drop.backward(np.ones(1000)), second)


def test_dropout_keeps_entries_with_probability_1_minus_p():
    n, p = 200_000, 0.3
    kept = np.count_nonzero(Dropout(p, seed=1)(np.ones(n)))
    sigma = np.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 5 * sigma


def test_dropout_seed_gives_the_same_stream_for_both_dtypes():
    x = np.ones((50, 40))
    first, second = Dropout(0.5, seed=7), Dropout(0.5, seed=7)
    masks = [first(x) != 0 for _ in range(3)]
    for mask in masks:  # call after call, float32 input or float64
        np.testing.assert_array_equal(second(x.astype(np.float32)) != 0, mask)
    assert not np.array_equal(masks[0], masks[1])
    assert not np.array_equal(Dropout(0.5, seed=8)(x) != 0, masks[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_p0_and_eval_are_the_identity_p1_zeroes(dtype):
    x = inputs((4, 5), dtype)
    d_output = inputs((4, 5), dtype, seed=2)
    for drop in (Dropout(0.0), Dropout(0.5).eval(), Dropout(1.0).eval()):
        assert drop(x) is x  # the input itself, as PyTorch's
    identity = Dropout(0.0)
    identity(x)
    assert identity.backward(d_output) is d_output
    x[0, 0] = np.nan
    everything = Dropout(1.0)
    y = everything(x)
    assert np.isnan(y[0, 0]) and not np.any(y.ravel()[1:])  # x * 0, as PyTorch's
    assert not np.any(everything.backward(d_output))


def test_dropout_backward_needs_a_training_forward():
    drop = Dropout(0.5).eval()
    with pytest.raises(RuntimeError, match="training-mode forward"):
        Dropout(0.5).backward(np.ones(3))
    drop(np.ones(3))
    with pytest.raises(RuntimeError, match="eval mode"):
        drop.backward(np.ones(3))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: Dropout(1.5), ValueError, r"p must be in \[0, 1\], got 1.5"),
        (lambda: Dropout("half"), TypeError, "p must be a number"),
        (lambda: Dropout(0.5, seed=-1), ValueError, "seed must be in"),
        (lambda: Dropout(0.5, seed=1.5), TypeError, "seed must be an integer"),
        (lambda: Dropout()([1.0, 2.0]), TypeError, "x must be a numpy.ndarray"),
        (lambda: Dropout()(np.ones(3, np.float16)), TypeError, "x must have dtype float32"),
        (lambda: Dropout()(np.arange(3)), TypeError, "x must have dtype float32"),
    ],
)
def test_dropout_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_dropout_checks_d_output():
    drop = Dropout(0.5, seed=0)
    drop(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"d_output must have shape \(2, 3\)"):
        drop.backward(np.ones((3, 2)))
    with pytest.raises(TypeError, match="d_output must have dtype float64"):
        drop.backward(np.ones((2, 3), np.float32))


def test_dropout_repr():
    assert repr(Dropout()) == "Dropout()"
    assert repr(Dropout(0.1, seed=3)) == "Dropout(p=0.1)"


# ---------------------------------------------------------------- LogSoftmax


@pytest.mark.parametrize("dim", [0, 1, -1, -3])
def test_log_softmax_gradient_against_central_differences(dim):
    x = inputs((3, 4, 5), np.float64)
    weights = inputs((3, 4, 5), np.float64, seed=1)
    layer = LogSoftmax(dim)
    out = layer(x)
    assert np.allclose(np.exp(out).sum(axis=dim), 1, rtol=1e-14)
    expected = central_differences(lambda: np.sum(LogSoftmax(dim).eval()(x) * weights), x)
    np.testing.assert_allclose(layer.backward(weights), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_is_stable_for_huge_inputs(dtype):
    x = np.array([[1e4, 1e4 - 1, -1e4], [-3e4, -3e4, -3e4]], dtype)
    out = LogSoftmax()(x)
    lse = np.log1p(np.exp(-1.0))
    expected = np.array([[-lse, -1 - lse, -2e4 - lse], [-np.log(3)] * 3])
    np.testing.assert_allclose(
        out, expected.astype(dtype), rtol=1e-6 if dtype == np.float32 else 1e-14
    )


def test_log_softmax_output_is_read_only_in_training_only():
    x = inputs((2, 3), np.float64)
    assert not LogSoftmax()(x).flags.writeable
    assert LogSoftmax().eval()(x).flags.writeable


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: LogSoftmax(1.0), TypeError, "dim must be an integer"),
        (lambda: LogSoftmax(2)(np.ones((2, 3))), ValueError, r"dim must be in \[-2, 2\)"),
        (lambda: LogSoftmax()(np.float64(1.0)), TypeError, "x must be a numpy.ndarray"),
        (lambda: LogSoftmax()(np.array(1.0)), ValueError, "at least one axis"),
        (lambda: LogSoftmax()(np.ones(3, np.int32)), TypeError, "x must have dtype"),
    ],
)
def test_log_softmax_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_log_softmax_checks_d_output():
    layer = LogSoftmax()
    layer(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="d_output must have dtype float32"):
        layer.backward(np.ones((2, 3)))
