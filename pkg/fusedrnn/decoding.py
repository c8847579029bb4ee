"""Decoding a model token by token: greedy, sampling and beam search over any step function.

A step function runs the model one token further on a batch of rows (hypotheses)::

    logits, state = step(tokens, state)  # tokens (N,) int64 -> logits (N, V), the next state

The decoders feed each row's chosen token back in. The state is whatever the model carries from
one step to the next: an array, None, or tuples, lists and dicts of them (an LSTM's ``(h, c)``,
one entry per layer of a stack of cells, an encoder's outputs for attention). Greedy decoding and
sampling only pass it along; beam search also reorders its rows when hypotheses are kept, copied
or dropped, along ``batch_axis`` of every array (0 for the cells' ``(B, H)``, 1 for the layers'
``(L, B, H)``) or with a ``select(state, rows)`` function of your own.

Greedy decoding of a model whose logits depend on the last token only::

    table = np.log(transition_matrix)      # (V, V), row: the previous token
    step = lambda tokens, state: (table[tokens], state)
    greedy_decode(step, None, start=[0, 1], max_len=10, eos=2).tokens

Beam search of an LSTM cell and a head, for B items at once (B * beam_width rows)::

    def step(tokens, state):
        h, c = cell(embedding(tokens), state)
        return head(h), (h, c)

    best = beam_search(step, (h0, c0), start, 50, beam_width=3, eos=EOS, length_penalty=0.6)
    best[0][0].tokens  # item 0's best hypothesis
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ._checks import check_axis, check_size
from .sampling import (
    RngLike,
    _check_temperature,
    _check_top_k,
    _check_top_p,
    _draw,
    as_generator,
    greedy,
)

__all__ = ["Decoded", "Hypothesis", "beam_search", "greedy_decode", "sample_decode"]

Step = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]


class Decoded(NamedTuple):
    """What `greedy_decode` and `sample_decode` return, one row per start token.

    Attributes
    ----------
    tokens : (N, T) int64
        Each row's generated tokens (its EOS included), then -1 past its length; T is the
        longest row's length.
    lengths : (N,) int64
        The number of tokens each row generated, its EOS included.
    log_probs : (N,) float64
        The sum of ``log_softmax(logits)`` over each row's tokens: the model's log-probability
        of them (before temperature, top-k and top-p).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    log_probs: np.ndarray


class Hypothesis(NamedTuple):
    """One output of `beam_search`.

    Attributes
    ----------
    tokens : (length,) int64
        The generated tokens, ending with EOS unless cut at ``max_len``.
    score : float
        ``log_prob / ((5 + length) / 6) ** length_penalty``, what hypotheses are ranked by.
    log_prob : float
        The sum of ``log_softmax(logits)`` over the tokens (EOS included).
    """

    tokens: np.ndarray
    score: float
    log_prob: float


# ---------------------------------------------------------------- checks


def _check_callable(value: object, name: str) -> Callable:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


def _check_start(start: object) -> np.ndarray:
    """The first input token of every row: an int (one row) or a 1-D sequence of ints."""
    array = np.asarray(start)
    if isinstance(start, (bool, np.bool_)) or array.dtype.kind not in "iu":
        raise TypeError(f"start must be an integer token or a 1-D sequence of them, got {start!r}")
    if array.ndim > 1 or array.size == 0:
        raise ValueError(
            f"start must be an int or a non-empty 1-D sequence, but has shape {array.shape}"
        )
    if (array < 0).any():
        raise ValueError(f"start must hold token ids >= 0, got {array.min()}")
    return array.reshape(-1).astype(np.int64)


def _check_max_len(max_len: object, rows: int) -> np.ndarray:
    """Tokens to generate at most: one int for every row, or one per row."""
    if isinstance(max_len, (np.ndarray, list, tuple)):
        array = np.asarray(max_len)
        if array.dtype.kind not in "iu":
            raise TypeError(f"max_len must hold integers, but has dtype {array.dtype}")
        if array.shape != (rows,):
            raise ValueError(
                f"max_len must be an int or have shape ({rows},), one per item of start, "
                f"but has {array.shape}"
            )
        if (array < 0).any():
            raise ValueError(f"max_len must be >= 0, got {array.min()}")
        return array.astype(np.int64)
    return np.full(rows, check_size(max_len, "max_len", minimum=0), np.int64)


def _check_eos(eos: object) -> int | None:
    return None if eos is None else check_size(eos, "eos", minimum=0)


def _check_step_output(output: object, rows: int, num_classes: int | None, eos: int | None):
    """``step``'s ``(logits, state)``, its logits (rows, V) with V the same at every step."""
    if not isinstance(output, tuple) or len(output) != 2:
        raise TypeError(f"step must return a pair (logits, state), got {type(output).__name__}")
    logits, state = output
    if not isinstance(logits, np.ndarray) or logits.dtype.kind != "f":
        raise TypeError(
            f"step must return logits as a floating-point numpy.ndarray, got "
            f"{getattr(logits, 'dtype', type(logits).__name__)}"
        )
    expected = (rows, num_classes if num_classes is not None else "V")
    if (
        logits.ndim != 2
        or logits.shape[0] != rows
        or logits.shape[1] == 0
        or (num_classes is not None and logits.shape[1] != num_classes)
    ):
        raise ValueError(
            f"step must return logits of shape (N, V) = ({expected[0]}, {expected[1]}), one "
            f"row per token it was given, but returned {logits.shape}"
        )
    if eos is not None and eos >= logits.shape[1]:
        raise ValueError(
            f"eos must be < V = {logits.shape[1]} (the classes of the logits), got {eos}"
        )
    # a row's maximum is NaN or +inf if the row holds one, -inf if it holds nothing finite: one
    # reduction tells all three (the messages below say which)
    if not np.isfinite(logits.max(axis=1)).all():
        if np.isnan(logits).any() or np.isposinf(logits).any():
            raise ValueError("step returned logits with NaN or +inf")
        raise ValueError("step returned a row of logits with no finite value")
    return logits, state


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------- greedy and sampling


def _generate(
    step: Step,
    state: Any,
    start: object,
    max_len: object,
    eos: object,
    choose: Callable[[np.ndarray], np.ndarray],
) -> Decoded:
    """The loop of greedy decoding and sampling: ``choose(logits)`` picks every row's token."""
    step = _check_callable(step, "step")
    tokens = _check_start(start)
    rows = tokens.size
    max_len, eos = _check_max_len(max_len, rows), _check_eos(eos)
    out = np.full((rows, int(max_len.max())), -1, np.int64)
    lengths = np.zeros(rows, np.int64)
    log_probs = np.zeros(rows)
    live = max_len > 0
    num_classes = None
    while live.any():
        logits, state = _check_step_output(step(tokens, state), rows, num_classes, eos)
        num_classes = logits.shape[1]
        # every row runs (a batched model cannot skip one); a finished row's tokens are dropped
        tokens = choose(logits)
        chosen = np.take_along_axis(_log_softmax(logits), tokens[:, None], axis=1)[:, 0]
        out[live, lengths[live]] = tokens[live]
        log_probs[live] += chosen[live]
        lengths[live] += 1
        live &= lengths < max_len
        if eos is not None:
            live &= tokens != eos
    return Decoded(out[:, : lengths.max()], lengths, log_probs)


def greedy_decode(
    step: Step,
    state: Any,
    start: int | np.ndarray,
    max_len: int | np.ndarray,
    *,
    eos: int | None = None,
) -> Decoded:
    """The most likely token at every step (`fusedrnn.sampling.greedy`: the first on ties), for
    N rows at once.

    Parameters
    ----------
    step : callable ``(tokens (N,) int64, state) -> (logits (N, V) float, state)``
        One step of the model; called at most ``max(max_len)`` times, always on all N rows.
    state : anything ``step`` takes (an array, None, tuples, lists, dicts): passed along as is
    start : int or (N,) ints
        The first input token of every row (a start-of-sequence token, a prompt's last token).
    max_len : int >= 0 or (N,) ints
        Tokens each row generates at most.
    eos : int or None
        End-of-sequence token: a row that generates it (it included) is finished. None: every
        row generates ``max_len`` tokens.

    Returns
    -------
    Decoded
        ``tokens (N, T)`` (-1 past each row's length), ``lengths (N,)``, ``log_probs (N,)``.
    """
    return _generate(step, state, start, max_len, eos, greedy)


def sample_decode(
    step: Step,
    state: Any,
    start: int | np.ndarray,
    max_len: int | np.ndarray,
    *,
    eos: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: RngLike = None,
) -> Decoded:
    """Draw every token with `fusedrnn.sampling.sample`, for N rows at once: temperature, then
    top-k, then top-p (Hugging Face transformers' order).

    Parameters
    ----------
    step, state, start, max_len, eos : as in `greedy_decode`
    temperature : float >= 0 (0 is greedy)
    top_k : int >= 1 or None
        At most V, the number of classes of the logits.
    top_p : float in (0, 1] or None
    rng : numpy.random.Generator, int seed or None
        One generator for the whole sequence: each step draws one number per row from it, so
        the same seed gives the same tokens as calling ``sample`` at every step with it.

    Returns
    -------
    Decoded
        ``tokens (N, T)`` (-1 past each row's length), ``lengths (N,)``, ``log_probs (N,)``
        (the model's log-probabilities of the drawn tokens, before temperature, top-k, top-p).
    """
    temperature = _check_temperature(temperature)
    top_k = None if top_k is None else check_size(top_k, "top_k", minimum=1)
    top_p = _check_top_p(top_p)
    rng = as_generator(rng)

    def choose(logits: np.ndarray) -> np.ndarray:  # (checked by _check_step_output)
        return _draw(logits, temperature, _check_top_k(top_k, logits.shape[1]), top_p, rng)

    return _generate(step, state, start, max_len, eos, choose)


# ---------------------------------------------------------------- beam search


def _take_rows(
    state: Any, rows: np.ndarray, axis: int, expected: tuple[int, str], path: str = "state"
) -> Any:
    """Every array of ``state`` indexed by ``rows`` along ``axis``, after checking that it has
    ``expected`` = (count, what they are) rows there."""
    if state is None:
        return None
    if isinstance(state, np.ndarray):
        where = check_axis(axis, "batch_axis", state.ndim)
        if state.shape[where] != expected[0]:
            raise ValueError(
                f"{path} must have {expected[0]} rows along batch_axis={axis} ({expected[1]}), "
                f"but has shape {state.shape}"
            )
        return np.take(state, rows, axis=where)
    if isinstance(state, dict):
        return {
            key: _take_rows(value, rows, axis, expected, f"{path}[{key!r}]")
            for key, value in state.items()
        }
    if isinstance(state, (tuple, list)):
        items = [
            _take_rows(value, rows, axis, expected, f"{path}[{i}]") for i, value in enumerate(state)
        ]
        return type(state)(*items) if hasattr(state, "_fields") else type(state)(items)
    raise TypeError(
        f"{path} must be a numpy array, None, or tuples, lists or dicts of them (or pass "
        f"select=), got {type(state).__name__}"
    )


def _penalty(length: int | np.ndarray, alpha: float) -> float | np.ndarray:
    """GNMT's length penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016, eq. 14)."""
    return ((5.0 + np.asarray(length, np.float64)) / 6.0) ** alpha


class _Finished:
    """One item's best finished hypotheses (at most ``capacity``), best first; equal scores in
    the order they finished."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.entries, self.count = capacity, [], 0

    def add(self, tokens: np.ndarray, log_prob: float, alpha: float) -> None:
        score = float(log_prob / _penalty(len(tokens), alpha))
        self.entries.append((-score, self.count, tokens.copy(), float(log_prob)))
        self.count += 1
        self.entries = sorted(self.entries)[: self.capacity]

    def full(self) -> bool:
        return len(self.entries) == self.capacity

    def worst(self) -> float:
        return -self.entries[-1][0]

    def best(self, n: int) -> list[Hypothesis]:
        return [Hypothesis(tokens, -neg, log_prob) for neg, _, tokens, log_prob in self.entries[:n]]


def beam_search(
    step: Step,
    state: Any,
    start: int | np.ndarray,
    max_len: int | np.ndarray,
    *,
    beam_width: int,
    n_best: int = 1,
    eos: int | None = None,
    length_penalty: float = 0.0,
    batch_axis: int = 0,
    select: Callable[[Any, np.ndarray], Any] | None = None,
) -> list[list[Hypothesis]]:
    """The ``n_best`` most likely outputs of every item by beam search of width ``beam_width``,
    for B items at once (B * beam_width rows; each item's search is independent of the others).

    Every step extends each of an item's ``beam_width`` live hypotheses by every token and
    ranks the candidates by their summed log-probability (``log_softmax`` of the logits, in
    float64); equal sums rank by beam, then by token id, lower first. A candidate ending in
    ``eos`` among the ``beam_width`` best is finished and kept aside (an item keeps its
    ``beam_width`` best finished hypotheses); the ``beam_width`` best other candidates are the
    next step's live hypotheses. Finished hypotheses are ranked by ``log_prob / ((5 + length) /
    6) ** length_penalty``, GNMT's length penalty (Wu et al. 2016; length counts the EOS).
    An item's search stops when its ``beam_width`` best hypotheses are finished: when it has
    ``beam_width`` finished ones and no live one can still end with a better score (a sum of
    log-probabilities only falls; the bound takes the most favourable length penalty up to
    ``max_len``), or at ``max_len`` tokens, where the live hypotheses join the finished ones.
    With ``beam_width=1`` and ``length_penalty=0`` this is greedy decoding.

    Parameters
    ----------
    step : callable ``(tokens (B*beam_width,) int64, state) -> (logits (B*beam_width, V), state)``
        One step of the model; row ``b * beam_width + j`` is item b's j-th hypothesis. It is
        called on all rows until every item's search has stopped.
    state : the model's state for the B items
        An array, None, or tuples, lists, dicts (nested) of them, every array with B rows along
        ``batch_axis``; or anything ``select`` takes. Each item's state is first repeated
        ``beam_width`` times, then reordered after every step.
    start : int or (B,) ints
        Each item's first input token; an int is one item.
    max_len : int >= 0 or (B,) ints
        Tokens each item's hypotheses have at most.
    beam_width : int >= 1
    n_best : int in [1, beam_width]
        Hypotheses returned per item (fewer if fewer exist).
    eos : int or None
        End-of-sequence token; None: every hypothesis runs to ``max_len``.
    length_penalty : float
        GNMT's alpha: 0 ranks by the summed log-probability; above 0 favours longer outputs
        (0.6 to 1 in the GNMT paper), below 0 shorter ones.
    batch_axis : int
        The axis of the rows in every array of ``state``: 0 for cells' ``(B, H)``, 1 for the
        layers' ``(L*D, B, H)``.
    select : callable ``(state, rows (M,) int64) -> state`` or None
        A state of M rows, the given rows of ``state`` (which may repeat them); replaces
        ``batch_axis`` for a state of another form, or with arrays whose rows lie on different
        axes.

    Returns
    -------
    list of B lists of Hypothesis
        Every item's best hypotheses, best first: ``tokens``, ``score``, ``log_prob``.
    """
    step = _check_callable(step, "step")
    start = _check_start(start)
    items = start.size
    max_len = _check_max_len(max_len, items)
    width = check_size(beam_width, "beam_width")
    n_best = check_size(n_best, "n_best")
    if n_best > width:
        raise ValueError(f"n_best must be <= beam_width = {width}, got {n_best}")
    eos = _check_eos(eos)
    if isinstance(length_penalty, (bool, np.bool_)) or not isinstance(length_penalty, numbers.Real):
        raise TypeError(f"length_penalty must be a number, got {type(length_penalty).__name__}")
    alpha = float(length_penalty)
    if not np.isfinite(alpha):
        raise ValueError(f"length_penalty must be finite, got {alpha}")
    if select is None:
        batch_axis = check_size(batch_axis, "batch_axis", minimum=None)

        def select_rows(state: Any, rows: np.ndarray, expected: tuple[int, str]) -> Any:
            return _take_rows(state, rows, batch_axis, expected)
    else:
        select = _check_callable(select, "select")

        def select_rows(state: Any, rows: np.ndarray, expected: tuple[int, str]) -> Any:
            return select(state, rows)

    rows = items * width
    state = select_rows(state, np.repeat(np.arange(items), width), (items, "one per item"))
    tokens = np.repeat(start, width)
    # each item starts from one live hypothesis (the others cannot be chosen)
    scores = np.tile(np.r_[0.0, np.full(width - 1, -np.inf)], items)
    history = np.zeros((rows, int(max_len.max())), np.int64)
    finished = [_Finished(width) for _ in range(items)]
    done = max_len == 0
    for item in np.flatnonzero(done):
        finished[item].add(np.zeros(0, np.int64), 0.0, alpha)
    num_classes, t = None, 0
    while not done.all():
        logits, state = _check_step_output(step(tokens, state), rows, num_classes, eos)
        V = num_classes = logits.shape[1]
        t += 1  # the candidates have t tokens
        total = (scores[:, None] + _log_softmax(logits)).reshape(items, width * V)
        ranked = np.argsort(-total, axis=1, kind="stable")  # (items, width * V)
        is_eos = (ranked % V == eos) if eos is not None else np.zeros(ranked.shape, bool)
        for item in np.flatnonzero(~done):
            for candidate in ranked[item, :width][is_eos[item, :width]]:
                if np.isfinite(total[item, candidate]):
                    row = item * width + candidate // V
                    output = np.append(history[row, : t - 1], eos)
                    finished[item].add(output, total[item, candidate], alpha)
        # the best candidates that do not end in EOS live on (-inf if there are too few)
        live = np.argsort(is_eos, axis=1, kind="stable")[:, :width]
        chosen = np.take_along_axis(ranked, live, axis=1)
        scores = np.where(
            np.take_along_axis(is_eos, live, axis=1),
            -np.inf,
            np.take_along_axis(total, chosen, axis=1),
        ).reshape(-1)
        parents = (np.arange(items)[:, None] * width + chosen // V).reshape(-1)
        tokens = (chosen % V).reshape(-1)
        history[:, : t - 1] = history[parents, : t - 1]
        history[:, t - 1] = tokens
        state = select_rows(state, parents, (rows, "one per hypothesis, items * beam_width"))
        for item in np.flatnonzero(~done):
            beams = slice(item * width, (item + 1) * width)
            if t == max_len[item]:
                for row in np.flatnonzero(np.isfinite(scores[beams])) + item * width:
                    finished[item].add(history[row, :t], scores[row], alpha)
                done[item] = True
                continue
            # the best a live hypothesis can still reach: its sum only falls, and its final
            # length is between t + 1 and max_len
            best_live = scores[beams].max()
            penalty = max(_penalty(t + 1, alpha), _penalty(max_len[item], alpha))
            done[item] = not np.isfinite(best_live) or (
                finished[item].full() and best_live / penalty <= finished[item].worst()
            )
    return [pool.best(n_best) for pool in finished]
