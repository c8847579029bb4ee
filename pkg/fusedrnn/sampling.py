"""Picking the next token from logits, one step at a time: greedy, and sampling with temperature,
top-k and top-p (nucleus) with a numpy Generator.

A generation loop runs a cell (or a layer on one step) in eval mode, projects the state to
logits and calls `sample` (see `fusedrnn.char_lm`)::

    rng = np.random.default_rng(0)
    for _ in range(n):
        h, c = cell(embedding(token), (h, c))
        token = sample(head(h), temperature=0.8, top_k=20, rng=rng)

`fusedrnn.decoding` runs such loops over any step function: greedy, sampling and beam search.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._checks import check_size

__all__ = ["greedy", "sample", "softmax"]

RngLike = np.random.Generator | int | None


def _check_logits(logits: object) -> np.ndarray:
    if not isinstance(logits, np.ndarray):
        raise TypeError(f"logits must be a numpy.ndarray, got {type(logits).__name__}")
    if logits.dtype.kind != "f":
        raise TypeError(f"logits must have a floating-point dtype, got {logits.dtype}")
    if logits.ndim not in (1, 2) or logits.shape[-1] == 0:
        raise ValueError(
            f"logits must have shape (num_classes,) or (B, num_classes) with "
            f"num_classes >= 1, but has {logits.shape}"
        )
    if np.isnan(logits).any():
        raise ValueError("logits contain NaN")
    return logits


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(
        temperature, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return temperature


def _check_top_k(top_k: object, num_classes: int) -> int | None:
    if top_k is None:
        return None
    top_k = check_size(top_k, "top_k", minimum=None)
    if not 1 <= top_k <= num_classes:
        raise ValueError(f"top_k must be in [1, num_classes] = [1, {num_classes}], got {top_k}")
    return top_k


def _check_top_p(top_p: object) -> float | None:
    if top_p is None:
        return None
    if isinstance(top_p, (bool, np.bool_)) or not isinstance(top_p, numbers.Real):
        raise TypeError(f"top_p must be a number in (0, 1] or None, got {type(top_p).__name__}")
    if not 0 < float(top_p) <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    return float(top_p)


def as_generator(rng: RngLike) -> np.random.Generator:
    """``rng`` itself if it is a numpy Generator, else ``numpy.random.default_rng(rng)`` (a seed
    or None); anything default_rng refuses is an error naming ``rng``."""
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as error:
        raise type(error)(
            f"rng must be a numpy.random.Generator, an integer seed or None, got {rng!r}: {error}"
        ) from None


def greedy(logits: np.ndarray) -> int | np.ndarray:
    """The most likely class (the first one on ties).

    Parameters
    ----------
    logits : (num_classes,) or (B, num_classes)

    Returns
    -------
    int, or (B,) int64
    """
    logits = _check_logits(logits)
    choice = np.argmax(logits, axis=-1)
    return int(choice) if logits.ndim == 1 else choice.astype(np.int64)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` over the last axis, in float64, stable for any
    magnitude (the maximum is subtracted first). -inf logits get probability 0.

    Parameters
    ----------
    logits : (..., num_classes)
    temperature : float > 0
    """
    temperature = _check_temperature(temperature)
    if temperature == 0:
        raise ValueError("temperature must be > 0 for softmax (0 is greedy: use greedy())")
    return _softmax(np.asarray(logits, dtype=np.float64), temperature)


def _softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    """`softmax` of float64 logits, temperature > 0 (checked by the caller)."""
    z = z / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def sample(
    logits: np.ndarray,
    temperature: float = 1.0,
    top_k: int | None = None,
    rng: RngLike = None,
    *,
    top_p: float | None = None,
) -> int | np.ndarray:
    """Draw a class from ``softmax(logits / temperature)``, among the ``top_k`` largest logits
    and the ``top_p`` nucleus.

    The three apply in the order of Hugging Face transformers' sampling (its temperature, top-k
    and top-p logits warpers): the logits are divided by the temperature, all but the ``top_k``
    largest are dropped, then the smallest set of the most likely remaining classes whose
    probability (under the softmax of what is left) reaches ``top_p`` is kept; the draw is from
    the softmax renormalised over what is kept.

    Parameters
    ----------
    logits : (num_classes,) or (B, num_classes), any float dtype; one draw per row
    temperature : float >= 0, default 1
        Below 1 sharpens the distribution, above 1 flattens it; 0 is `greedy`.
    top_k : int in [1, num_classes] or None
        Only the k largest logits can be drawn (exactly k: ties at the boundary are broken by
        position); None allows every class; 1 is `greedy`.
    rng : numpy.random.Generator, int seed or None
        The source of randomness; the same seed gives the same draws.
    top_p : float in (0, 1] or None
        Nucleus sampling (Holtzman et al. 2020): only the smallest set of the most likely classes
        whose probability reaches ``top_p`` can be drawn (the most likely class always can; ties
        in probability are ranked by position). None or 1 allows every class.

    Returns
    -------
    int, or (B,) int64
    """
    logits = _check_logits(logits)
    temperature = _check_temperature(temperature)
    top_k = _check_top_k(top_k, logits.shape[-1])
    top_p = _check_top_p(top_p)
    choice = _draw(np.atleast_2d(logits), temperature, top_k, top_p, as_generator(rng))
    return int(choice[0]) if logits.ndim == 1 else choice


def _draw(
    logits: np.ndarray,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """`sample`'s draw, one per row of ``logits`` (B, V), with every argument already checked
    as `sample` checks it (the decoding loops check once per sequence, not per step); (B,)
    int64."""
    V = logits.shape[-1]
    if temperature == 0 or top_k == 1:
        return np.argmax(logits, axis=-1).astype(np.int64)
    rows = logits.astype(np.float64)
    if top_k is not None and top_k < V:
        keep = np.argpartition(rows, V - top_k, axis=-1)[:, V - top_k :]
        masked = np.full_like(rows, -np.inf)
        np.put_along_axis(masked, keep, np.take_along_axis(rows, keep, axis=-1), axis=-1)
        rows = masked
    p = _softmax(rows, temperature)
    if top_p is not None and top_p < 1:
        p = _nucleus(p, top_p)
    # inverse CDF: the first class whose cumulative probability exceeds u * total; a class of
    # probability 0 never is, as the CDF does not rise there
    cdf = np.cumsum(p, axis=-1)
    u = rng.random((rows.shape[0], 1)) * cdf[:, -1:]
    choice = np.sum(cdf <= u, axis=-1)
    # rounding (u * total == total) could step past the last class of positive probability
    last = V - 1 - np.argmax(p[:, ::-1] > 0, axis=-1)
    return np.minimum(choice, last).astype(np.int64)


def _nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """``p`` (rows of probabilities) restricted to each row's top-p nucleus and renormalised: the
    smallest set of the most likely classes whose probability reaches ``top_p`` (ties ranked by
    position, the most likely class always kept); the other classes get probability 0."""
    order = np.argsort(-p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    # a class is in the nucleus if the classes ranked before it do not yet reach top_p
    before = np.zeros_like(ranked)
    np.cumsum(ranked[:, :-1], axis=-1, out=before[:, 1:])
    kept = np.zeros_like(p)
    np.put_along_axis(kept, order, np.where(before < top_p, ranked, 0.0), axis=-1)
    return kept / kept.sum(axis=-1, keepdims=True)
