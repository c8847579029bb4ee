"""Sampling the next token: greedy is argmax, top-k never leaves the k largest, a vanishing
temperature approaches greedy, draws follow the softmax, the same seed gives the same draws."""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn.sampling import greedy, sample, softmax

LOGITS = np.array([0.5, 2.0, -1.0, 1.9, 0.0, 3.0, -4.0, 2.9])


def test_greedy_is_argmax():
    rows = np.random.default_rng(0).standard_normal((20, 9)).astype(np.float32)
    np.testing.assert_array_equal(greedy(rows), np.argmax(rows, axis=1))
    assert greedy(LOGITS) == 5 and isinstance(greedy(LOGITS), int)
    assert greedy(np.array([1.0, 3.0, 3.0])) == 1  # first on ties
    assert sample(LOGITS, temperature=0) == 5
    assert sample(LOGITS, top_k=1, rng=0) == 5


@pytest.mark.parametrize("k", [2, 3, 5])
def test_top_k_never_samples_outside_the_top_k(k):
    rows = np.random.default_rng(1).standard_normal((50, 12))
    allowed = np.argsort(rows, axis=1)[:, -k:]
    rng = np.random.default_rng(2)
    for _ in range(40):
        choice = sample(rows, temperature=5.0, top_k=k, rng=rng)  # hot: would roam everywhere
        assert all(c in a for c, a in zip(choice, allowed))


def test_top_k_reaches_every_one_of_the_k():
    seen = {sample(LOGITS, temperature=10.0, top_k=3, rng=s) for s in range(200)}
    assert seen == {1, 5, 7}


def test_vanishing_temperature_approaches_greedy():
    rng = np.random.default_rng(3)
    draws = sample(np.tile(LOGITS, (2000, 1)), temperature=0.01, rng=rng)
    assert np.all(draws == 5)
    warm = sample(np.tile(LOGITS, (2000, 1)), temperature=1.0, rng=rng)
    assert np.mean(warm == 5) < 0.6  # a real temperature does not


def test_draws_follow_the_softmax():
    n = 40000
    draws = sample(np.tile(LOGITS, (n, 1)), temperature=1.5, rng=np.random.default_rng(4))
    frequencies = np.bincount(draws, minlength=LOGITS.size) / n
    p = softmax(LOGITS, 1.5)
    np.testing.assert_allclose(frequencies, p, atol=4 * np.sqrt(p.max() / n))


def test_seeded_draws_are_reproducible():
    rows = np.random.default_rng(5).standard_normal((6, 30))
    a = [sample(rows, 0.8, top_k=10, rng=np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    assert sample(LOGITS, rng=11) == sample(LOGITS, rng=11)
    rng = np.random.default_rng(0)
    assert len({sample(LOGITS, 3.0, rng=rng) for _ in range(50)}) > 1  # a Generator advances


def test_softmax_is_stable_and_zeroes_minus_inf():
    p = softmax(np.array([1e4, 1e4 - 1, -np.inf]))
    np.testing.assert_allclose(p, [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1)), 0])
    assert sample(np.array([-np.inf, 0.0, -np.inf]), rng=0) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"logits": [1.0, 2.0]}, TypeError, r"logits must be a numpy.ndarray"),
        ({"logits": np.array([1, 2])}, TypeError, r"logits must have a floating-point dtype"),
        ({"logits": np.ones((2, 2, 2))}, ValueError, r"logits must have shape"),
        ({"logits": np.array([1.0, np.nan])}, ValueError, r"logits contain NaN"),
        ({"temperature": -1.0}, ValueError, r"temperature must be >= 0"),
        ({"temperature": "hot"}, TypeError, r"temperature must be a number"),
        ({"top_k": 0}, ValueError, r"top_k must be in \[1, num_classes\] = \[1, 8\], got 0"),
        ({"top_k": 9}, ValueError, r"top_k must be in"),
        ({"top_k": 2.0}, TypeError, r"top_k must be an integer or None"),
    ],
)
def test_bad_input(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        sample(**{"logits": LOGITS, **kwargs})
