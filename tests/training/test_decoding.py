"""fusedrnn.decoding: greedy decoding and sampling follow `fusedrnn.sampling` step by step, a beam
of width 1 is greedy, a beam wide enough finds what enumerating every sequence finds (with and
without EOS and length penalty), stopping early never changes a result, items are independent of
their batch, a recurrent state is reordered with its hypotheses, and bad arguments are named."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
from scipy import stats

from fusedrnn import char_lm
from fusedrnn.decoding import beam_search, greedy_decode, sample_decode
from fusedrnn.sampling import sample
from tests.helpers.sampling import processed_distribution

# ---------------------------------------------------------------- step functions


def markov_step(V: int, seed: int, scale: float = 1.5):
    """Logits depending on the last token only: a fixed random transition table."""
    table = np.random.default_rng(seed).standard_normal((V, V)) * scale

    def step(tokens, state):
        return table[tokens], state

    return step


class Recurrent:
    """A two-layer tanh recurrence whose logits depend on every token so far: the state is
    (L, N, H), rows on axis 1, as the layers' hx."""

    def __init__(self, V: int, seed: int, H: int = 5, L: int = 2) -> None:
        rng = np.random.default_rng(seed)
        self.embed = rng.standard_normal((V, H))
        self.W = rng.standard_normal((L, H, H)) * 0.8
        self.U = rng.standard_normal((L, H, H)) * 0.8
        self.out = rng.standard_normal((H, V)) * 1.5
        self.V, self.H, self.L = V, H, L
        self.calls = 0

    def initial(self, N: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((self.L, N, self.H)) * 0.5

    def __call__(self, tokens, state):
        self.calls += 1
        x, new = self.embed[tokens], np.empty_like(state)
        for layer in range(self.L):
            x = new[layer] = np.tanh(state[layer] @ self.W[layer] + x @ self.U[layer])
        return x @ self.out, new


def log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def penalty(length, alpha):
    return ((5 + length) / 6) ** alpha


def every_hypothesis(step, state, start: int, max_len: int, V: int, eos):
    """(tokens, log_prob) of every sequence the model can output from ``start`` (one row): each
    ending with EOS within max_len tokens, or of max_len tokens without one."""
    found = []

    def expand(prefix, token, state, total):
        logits, state = step(np.array([token]), state)
        logp = log_softmax(logits[0])
        for nxt in range(V):
            if not np.isfinite(logp[nxt]):
                continue
            out = (*prefix, nxt)
            if nxt == eos or len(out) == max_len:
                found.append((out, total + logp[nxt]))
            else:
                expand(out, nxt, state, total + logp[nxt])

    expand((), start, state, 0.0)
    return found


def ranked(hypotheses, alpha):
    """(tokens, score, log_prob), best score first."""
    scored = [(t, lp / penalty(len(t), alpha), lp) for t, lp in hypotheses]
    return sorted(scored, key=lambda h: -h[1])


def assert_same_hypotheses(found, expected):
    """The found hypotheses are the expected ones, in order; hypotheses of equal scores (a
    Markov chain's permutations of the same transitions) may come in either order."""
    assert len(found) == len(expected)
    np.testing.assert_allclose([h.score for h in found], [s for _, s, _ in expected], rtol=1e-12)
    by_tokens = {t: (s, lp) for t, s, lp in expected}
    tokens = [tuple(h.tokens.tolist()) for h in found]
    assert len(set(tokens)) == len(tokens)
    for h, t in zip(found, tokens):
        np.testing.assert_allclose((h.score, h.log_prob), by_tokens[t], rtol=1e-12)


# ---------------------------------------------------------------- greedy and sampling


def test_greedy_decode_is_argmax_step_by_step_and_stops_at_eos():
    model = Recurrent(V=5, seed=0)
    state0 = model.initial(6, seed=1)
    start = np.array([1, 2, 3, 4, 1, 2])
    max_len = np.array([7, 7, 7, 7, 2, 0])
    result = greedy_decode(model, state0, start, max_len, eos=0)
    # a hand-written loop, one row at a time
    for row in range(6):
        token, state, tokens, total = start[row], state0[:, row : row + 1], [], 0.0
        while len(tokens) < max_len[row] and (not tokens or tokens[-1] != 0):
            logits, state = model(np.array([token]), state)
            token = int(np.argmax(logits[0]))
            tokens.append(token)
            total += log_softmax(logits[0])[token]
        assert result.lengths[row] == len(tokens)
        assert result.tokens[row, : len(tokens)].tolist() == tokens
        assert (result.tokens[row, len(tokens) :] == -1).all()
        assert result.log_probs[row] == pytest.approx(total, rel=1e-12, abs=1e-15)
    assert result.tokens.shape == (6, result.lengths.max())
    assert (result.lengths < 7).any()  # some rows ended with EOS
    assert result.lengths[4] <= 2 and result.lengths[5] == 0


def test_sample_decode_draws_what_sample_draws_step_by_step():
    model = Recurrent(V=6, seed=2)
    state0 = model.initial(4, seed=3)
    options = {"temperature": 0.7, "top_k": 4, "top_p": 0.9}
    result = sample_decode(model, state0, [1, 2, 3, 4], 8, rng=5, **options)
    rng, tokens, state, drawn = np.random.default_rng(5), np.array([1, 2, 3, 4]), state0, []
    for _ in range(8):
        logits, state = model(tokens, state)
        tokens = sample(logits, options["temperature"], options["top_k"], rng, top_p=0.9)
        drawn.append(tokens)
    np.testing.assert_array_equal(result.tokens, np.stack(drawn, axis=1))
    np.testing.assert_array_equal(result.lengths, 8)
    again = sample_decode(model, state0, [1, 2, 3, 4], 8, rng=np.random.default_rng(5), **options)
    np.testing.assert_array_equal(again.tokens, result.tokens)
    assert greedy_decode(model, state0, [1, 2, 3, 4], 8).tokens.tolist() == (
        sample_decode(model, state0, [1, 2, 3, 4], 8, temperature=0).tokens.tolist()
    )


def test_sampled_sequences_follow_the_processed_distribution():
    """20000 sequences drawn at once from a Markov chain with EOS: the frequency of each whole
    sequence against its exact probability (chi-square, fixed seed)."""
    V, eos, max_len, n = 5, 0, 3, 20000
    step = markov_step(V, seed=4, scale=0.5)
    options = {"temperature": 0.8, "top_k": 4, "top_p": 0.75}
    table = step(np.arange(V), None)[0]
    exact = {}
    for tokens, _ in every_hypothesis(step, None, 2, max_len, V, eos):
        p, previous = 1.0, 2
        for token in tokens:
            p *= processed_distribution(table[previous], **options)[token]
            previous = token
        exact[tokens] = p
    assert sum(exact.values()) == pytest.approx(1.0)
    result = sample_decode(step, None, np.full(n, 2), max_len, eos=eos, rng=6, **options)
    drawn = [tuple(row[:length]) for row, length in zip(result.tokens.tolist(), result.lengths)]
    counts = dict.fromkeys(exact, 0)  # every sequence the chain can output
    for tokens in drawn:
        counts[tokens] += 1
    assert all(counts[t] == 0 for t, p in exact.items() if p == 0)
    possible = [t for t, p in exact.items() if p > 0]
    assert 5 < len(possible) < len(exact)  # top-k and top-p remove some, not all
    observed = np.array([counts[t] for t in possible])
    expected = np.array([exact[t] for t in possible]) * n
    assert stats.chisquare(observed, expected).pvalue > 1e-3


# ---------------------------------------------------------------- beam search


@pytest.mark.parametrize("eos", [None, 0])
@pytest.mark.parametrize("kind", ["markov", "recurrent"])
def test_beam_of_one_is_greedy(kind, eos):
    for seed in range(4):
        model = markov_step(6, seed) if kind == "markov" else Recurrent(6, seed)
        state = None if kind == "markov" else model.initial(5, seed)
        start = np.arange(1, 6)
        greedy = greedy_decode(model, state, start, 9, eos=eos)
        beams = beam_search(model, state, start, 9, beam_width=1, eos=eos, batch_axis=1)
        for row, (best,) in enumerate(beams):
            length = greedy.lengths[row]
            assert best.tokens.tolist() == greedy.tokens[row, :length].tolist()
            assert best.log_prob == pytest.approx(greedy.log_probs[row], rel=1e-12)


@pytest.mark.parametrize(
    ("eos", "alpha"), [(None, 0.0), (0, 0.0), (0, 0.6), (0, 1.0), (0, -0.5), (None, 0.8)]
)
@pytest.mark.parametrize("kind", ["markov", "recurrent"])
def test_a_beam_covering_every_hypothesis_finds_the_brute_force_ranking(kind, eos, alpha):
    """V = 3, 4 tokens: beam_width 81 keeps every hypothesis, so the n best are the n best of
    all sequences, enumerated and scored one at a time."""
    V, max_len, width = 3, 4, 81
    for seed in range(3):
        model = markov_step(V, seed) if kind == "markov" else Recurrent(V, seed)
        state = None if kind == "markov" else model.initial(1, seed)
        expected = ranked(every_hypothesis(model, state, 1, max_len, V, eos), alpha)
        assert len(expected) == (31 if eos == 0 else 81)
        (found,) = beam_search(
            model,
            state,
            1,
            max_len,
            beam_width=width,
            n_best=width,
            eos=eos,
            length_penalty=alpha,
            batch_axis=1,
        )
        assert_same_hypotheses(found, expected)


def chain_with_one_path(V: int, seed: int):
    """From every token one other token and EOS (0) are possible: one live hypothesis at every
    step, one finished per step, so an item has a full set of finished ones long before max_len
    and the search can stop early."""
    rng = np.random.default_rng(seed)
    table = np.full((V, V), -np.inf)
    table[:, 0] = rng.normal(-1.0, 1.0, V)
    table[np.arange(V), np.roll(np.arange(V), -1)] = rng.normal(0.0, 1.0, V)
    table[0, 0], table[0, 1] = -np.inf, 0.0  # from EOS (never fed) anything

    def step(tokens, state):
        return table[tokens], state

    return step


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5, -0.5])
@pytest.mark.parametrize("width", [2, 3])
def test_stopping_early_never_changes_the_best(alpha, width):
    """The search stops once no live hypothesis can beat its finished ones; what it returns is
    still the ranking of every possible output (the bound must take the length penalty of the
    longest possible output when alpha > 0, of the next one when alpha < 0)."""
    V, max_len = 5, 30
    stopped_early = 0
    for seed in range(12):
        step = chain_with_one_path(V, seed)
        expected = ranked(every_hypothesis(step, None, 1, max_len, V, 0), alpha)[:width]
        calls = np.zeros(1)

        def counting(tokens, state, step=step, calls=calls):
            calls[0] += 1
            return step(tokens, state)

        (found,) = beam_search(
            counting, None, 1, max_len, beam_width=width, n_best=width, eos=0, length_penalty=alpha
        )
        assert_same_hypotheses(found, expected)
        stopped_early += calls[0] < max_len
    assert stopped_early >= 6  # the stopping rule is exercised


def test_batched_items_are_independent():
    model = Recurrent(V=4, seed=7)
    B = 5
    state = model.initial(B, seed=8)
    start = np.array([1, 2, 3, 1, 2])
    max_len = np.array([3, 6, 5, 8, 1])
    options = {"beam_width": 3, "n_best": 3, "eos": 0, "length_penalty": 0.7, "batch_axis": 1}
    together = beam_search(model, state, start, max_len, **options)
    for item in range(B):
        (alone,) = beam_search(
            model, state[:, item : item + 1], start[item], max_len[item], **options
        )
        assert [h.tokens.tolist() for h in together[item]] == [h.tokens.tolist() for h in alone]
        np.testing.assert_allclose(
            [h.score for h in together[item]], [h.score for h in alone], rtol=1e-12
        )
        assert all(len(h.tokens) <= max_len[item] for h in alone)


def test_every_form_of_state_is_reordered_alike():
    """The (L, B, H) state on axis 1 (and -2), the same state with rows first on axis 0, a
    nested namedtuple / dict / list with None in it, and a select function give one result."""
    model = Recurrent(V=4, seed=9)
    state = model.initial(3, seed=10)
    start, options = [1, 2, 3], {"beam_width": 4, "n_best": 2, "eos": 0, "length_penalty": 0.5}
    reference = beam_search(model, state, start, 6, batch_axis=1, **options)

    def rows_first(tokens, state):
        logits, new = model(tokens, state.transpose(1, 0, 2))
        return logits, np.ascontiguousarray(new.transpose(1, 0, 2))

    Pair = namedtuple("Pair", "h extra")

    def nested(tokens, state):
        logits, new = model(tokens, state["layers"][0].h)
        assert state["layers"][0].extra is None and state["steps"].shape == (1, len(tokens))
        return logits, {"layers": [Pair(new, None)], "steps": state["steps"] + 1}

    class Opaque:
        def __init__(self, h):
            self.h = h

    def opaque(tokens, state):
        logits, new = model(tokens, state.h)
        return logits, Opaque(new)

    runs = [
        beam_search(model, state, start, 6, batch_axis=-2, **options),
        beam_search(rows_first, state.transpose(1, 0, 2), start, 6, **options),
        beam_search(
            nested,
            {"layers": [Pair(state, None)], "steps": np.zeros((1, 3))},
            start,
            6,
            batch_axis=1,
            **options,
        ),
        beam_search(
            opaque,
            Opaque(state),
            start,
            6,
            select=lambda s, rows: Opaque(s.h[:, rows]),
            **options,
        ),
    ]
    for run in runs:
        for got, want in zip(run, reference):
            assert [h.tokens.tolist() for h in got] == [h.tokens.tolist() for h in want]
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want])


def test_ties_are_broken_by_beam_then_token():
    """Uniform logits: every continuation ties; the lowest token ids win. Logits of three
    values over 150 classes: the first step keeps the lowest ids of the largest value."""

    def uniform(tokens, state):
        return np.zeros((len(tokens), 50)), state

    for _ in range(2):
        for item in beam_search(uniform, None, [1, 1], 3, beam_width=3, n_best=3):
            assert [h.tokens.tolist() for h in item] == [[0, 0, 0], [0, 0, 1], [0, 0, 2]]
    levels = -np.random.default_rng(0).integers(0, 3, 150).astype(np.float64)

    def three_levels(tokens, state):
        return np.tile(levels, (len(tokens), 1)), state

    (item,) = beam_search(three_levels, None, 0, 1, beam_width=4, n_best=4)
    assert [h.tokens.tolist() for h in item] == [[i] for i in np.flatnonzero(levels == 0)[:4]]


def test_max_len_zero_and_items_that_cannot_continue():
    def only_eos(tokens, state):
        logits = np.full((len(tokens), 3), -np.inf)
        logits[:, 0] = 0.0
        return logits, state

    (item,) = beam_search(only_eos, None, 1, 5, beam_width=2, n_best=2, eos=0)
    assert [h.tokens.tolist() for h in item] == [[0]] and item[0].log_prob == 0.0
    empty = beam_search(only_eos, None, [1, 2], [0, 0], beam_width=2, eos=0)
    assert [[h.tokens.tolist() for h in item] for item in empty] == [[[]], [[]]]
    assert greedy_decode(only_eos, None, [1, 2], 0).tokens.shape == (2, 0)


# ---------------------------------------------------------------- the char-LM's generation


def test_char_lm_generation_draws_what_sample_draws(tmp_path):
    """char_lm.generate (through sample_decode) gives the characters of the loop it replaced:
    the prompt fed through the cells, then one `sample` per character with one generator."""
    path = tmp_path / "text.py"
    path.write_text("def f(x):\n    return x + 1\n\n" * 200)
    cfg = char_lm.Config(text=str(path), embed=8, hidden=16, layers=2, quiet=True)
    train_text, _, _ = char_lm.load_text(cfg)
    vocab = char_lm.Vocabulary(train_text)
    model = char_lm.CharLM(len(vocab), cfg)
    text = char_lm.generate(model, vocab, "def ", 30, 1.3, 5, np.random.default_rng(3))
    model.train(False)
    cells, states, rng = model.cells(), [None, None], np.random.default_rng(3)
    ids, out = list(vocab.encode("def ")), []
    for i in range(len(ids) + 30 - 1):
        h = model.embedding(np.array([ids[i] if i < len(ids) else out[-1]]))
        for k, cell in enumerate(cells):
            states[k] = cell(h, states[k])
            h = states[k][0]
        if i >= len(ids) - 1:
            out.append(sample(model.head(h)[0], temperature=1.3, top_k=5, rng=rng))
    assert text == "def " + vocab.decode(out)


# ---------------------------------------------------------------- bad arguments


def _markov(tokens, state):
    return np.zeros((len(tokens), 4)), state


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"step": "model"}, TypeError, r"step must be callable, got str"),
        ({"start": 1.0}, TypeError, r"start must be an integer token"),
        ({"start": True}, TypeError, r"start must be an integer token"),
        ({"start": [[1]]}, ValueError, r"start must be an int or a non-empty 1-D"),
        ({"start": []}, TypeError, r"start must be an integer token"),
        ({"start": [1, -2]}, ValueError, r"start must hold token ids >= 0, got -2"),
        ({"max_len": -1}, ValueError, r"max_len must be >= 0, got -1"),
        ({"max_len": 2.0}, TypeError, r"max_len must be an integer"),
        ({"max_len": [3, 3, 3]}, ValueError, r"max_len must be an int or have shape \(2,\)"),
        ({"max_len": [3.0, 3.0]}, TypeError, r"max_len must hold integers"),
        ({"eos": -1}, ValueError, r"eos must be >= 0"),
        ({"eos": 4}, ValueError, r"eos must be < V = 4"),
        ({"beam_width": 0}, ValueError, r"beam_width must be >= 1, got 0"),
        ({"n_best": 3}, ValueError, r"n_best must be <= beam_width = 2, got 3"),
        ({"length_penalty": "long"}, TypeError, r"length_penalty must be a number"),
        ({"length_penalty": np.inf}, ValueError, r"length_penalty must be finite"),
        ({"batch_axis": 1.0}, TypeError, r"batch_axis must be an integer"),
        ({"batch_axis": 2}, ValueError, r"batch_axis must be in \[-2, 2\)"),
        ({"select": "rows"}, TypeError, r"select must be callable"),
        ({"state": np.zeros((3, 5))}, ValueError, r"state must have 2 rows along batch_axis=0"),
        ({"state": {"h": [np.zeros((2, 5)), "x"]}}, TypeError, r"state\['h'\]\[1\] must be a"),
        ({"step": lambda t, s: np.zeros((len(t), 4))}, TypeError, r"step must return a pair"),
        ({"step": lambda t, s: (np.zeros((len(t), 4), int), s)}, TypeError, r"floating-point"),
        ({"step": lambda t, s: (np.zeros(4), s)}, ValueError, r"logits of shape \(N, V\) = \(4"),
        ({"step": lambda t, s: (np.full((len(t), 4), np.nan), s)}, ValueError, r"NaN or \+inf"),
        (
            {"step": lambda t, s: (np.full((len(t), 4), -np.inf), s)},
            ValueError,
            r"a row of logits with no finite value",
        ),
    ],
)
def test_beam_search_bad_arguments(kwargs, error, pattern):
    arguments = {"step": _markov, "state": np.zeros((2, 5)), "start": [1, 2], "max_len": 3}
    arguments.update({"beam_width": 2, "eos": 0, **kwargs})
    with pytest.raises(error, match=pattern):
        beam_search(**arguments)


def test_step_logits_must_keep_their_width():
    widths = iter([4, 5])

    def changing(tokens, state):
        return np.zeros((len(tokens), next(widths))), state

    with pytest.raises(ValueError, match=r"logits of shape \(N, V\) = \(2, 4\)"):
        greedy_decode(changing, None, [1, 2], 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"temperature": -1.0}, ValueError, r"temperature must be >= 0"),
        ({"top_k": 0}, ValueError, r"top_k must be >= 1, got 0"),
        ({"top_k": 5}, ValueError, r"top_k must be in \[1, num_classes\] = \[1, 4\], got 5"),
        ({"top_p": 0.0}, ValueError, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_p": "half"}, TypeError, r"top_p must be a number"),
        ({"rng": "seed"}, TypeError, r"rng must be a numpy.random.Generator, an integer seed"),
        ({"eos": 1.5}, TypeError, r"eos must be an integer"),
    ],
)
def test_sample_decode_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        sample_decode(_markov, None, [1, 2], 3, **kwargs)
