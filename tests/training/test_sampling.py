"""Sampling the next token: greedy is argmax, top-k never leaves the k largest, top-p keeps the
smallest set reaching p, a vanishing temperature approaches greedy, draws follow the softmax (and
temperature, top-k and top-p in Hugging Face's order), the same seed gives the same draws."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fusedrnn.sampling import _nucleus, greedy, sample, softmax
from tests.helpers.sampling import processed_distribution

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


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p):
    rows = np.random.default_rng(8).standard_normal((40, 9)) * 2
    p = softmax(rows)
    kept = _nucleus(p, top_p)
    for row, q in zip(p, kept):
        np.testing.assert_allclose(q, processed_distribution(np.log(row), top_p=top_p), rtol=1e-12)
        nucleus = q > 0
        assert row[nucleus].sum() >= top_p  # reaches top_p ...
        assert row[nucleus].sum() - row[nucleus].min() < top_p  # ... and no class is spare
        assert row[nucleus].min() >= row[~nucleus].max(initial=0)  # the most likely ones


def test_top_p_ties_are_ranked_by_position_and_reaching_p_exactly_is_enough():
    p = np.array([[0.2, 0.3, 0.2, 0.3]])
    np.testing.assert_allclose(_nucleus(p, 0.7), [[0.2 / 0.8, 0.3 / 0.8, 0, 0.3 / 0.8]])
    p = np.array([[0.25, 0.5, 0.25]])  # 0.5 + 0.25 is 0.75 exactly, in binary too
    np.testing.assert_allclose(_nucleus(p, 0.75), [[1 / 3, 2 / 3, 0]])


@pytest.mark.parametrize(
    "options",
    [
        {"top_p": 0.6},
        {"temperature": 1.5, "top_p": 0.8},
        {"temperature": 0.7, "top_k": 5, "top_p": 0.9},
        {"temperature": 2.0, "top_k": 3, "top_p": 0.5},
    ],
)
def test_draws_follow_temperature_then_top_k_then_top_p(options):
    """Exact probabilities of the 8 classes against 40000 draws (chi-square, fixed seed)."""
    n = 40000
    draws = sample(np.tile(LOGITS, (n, 1)), rng=np.random.default_rng(9), **options)
    counts = np.bincount(draws, minlength=LOGITS.size)
    p = processed_distribution(LOGITS, **options)
    assert (counts[p == 0] == 0).all()
    assert 1 < np.count_nonzero(p) < LOGITS.size
    assert stats.chisquare(counts[p > 0], p[p > 0] * n).pvalue > 1e-3


def test_top_p_of_one_changes_nothing_and_a_tiny_one_is_greedy():
    rows = np.random.default_rng(10).standard_normal((100, 12))
    assert np.array_equal(sample(rows, rng=1, top_p=1.0), sample(rows, rng=1))
    np.testing.assert_array_equal(sample(rows, 3.0, rng=2, top_p=1e-9), greedy(rows))


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
        ({"top_k": 2.0}, TypeError, r"top_k must be an integer, got float"),
        ({"top_k": True}, TypeError, r"top_k must be an integer, got True"),
        ({"top_p": 0}, ValueError, r"top_p must be in \(0, 1\], got 0"),
        ({"top_p": 1.5}, ValueError, r"top_p must be in \(0, 1\], got 1.5"),
        ({"top_p": True}, TypeError, r"top_p must be a number in \(0, 1\] or None, got bool"),
        ({"rng": "seed"}, TypeError, r"rng must be a numpy.random.Generator"),
    ],
)
def test_bad_input(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        sample(**{"logits": LOGITS, **kwargs})
