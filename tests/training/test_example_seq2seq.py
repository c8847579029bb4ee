"""examples/seq2seq_attention.py stays correct: its hand-written backward against central
differences (in float64), and its decoders (beam width 1 is greedy; a wider beam never finds a
worse summed log-probability). Seconds, not the minutes of a training run."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from tests.helpers.examples import example_module


@pytest.fixture(scope="module")
def s2s():
    # tiny layers: one thread, so no thread pool waits on another between the many small calls
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(1)
    with example_module("seq2seq_attention") as module:
        yield module
    fusedrnn.set_num_threads(before)


@pytest.mark.parametrize("attention", [True, False])
def test_backward_by_central_differences(s2s, monkeypatch, attention):
    monkeypatch.setattr(s2s, "DTYPE", np.float64)
    model = s2s.Seq2Seq(hidden=8, embed=4, attention=attention, seed=1)
    batch = s2s.batch_arrays([(1, 2, 3, 4, 5), (9, 8, 7, 6, 5, 4, 3), (0, 0, 1, 1, 2, 9)])
    model.zero_grad()
    model.loss_and_backward(batch)
    rng = np.random.default_rng(0)
    for name, p, g in model.parameters():
        flat, grad = p.reshape(-1), g.reshape(-1).copy()
        for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            keep = flat[i]
            flat[i] = keep + 1e-6
            model.zero_grad()
            up = model.loss_and_backward(batch)
            flat[i] = keep - 1e-6
            model.zero_grad()
            down = model.loss_and_backward(batch)
            flat[i] = keep
            numeric = (up - down) / 2e-6
            assert abs(grad[i] - numeric) <= 1e-6 + 1e-5 * abs(numeric), (name, i, grad[i], numeric)


def test_decoders(s2s):
    model = s2s.Seq2Seq(hidden=16, embed=8, seed=2)
    rng = np.random.default_rng(3)
    optimizer = s2s.Adam(model)
    for _ in range(20):  # a little training, so the scores are not uniform
        model.zero_grad()
        model.loss_and_backward(s2s.batch_arrays(s2s.random_sequences(rng, 16)))
        optimizer.step()
    sequences = s2s.random_sequences(rng, 12)

    def log_prob(seq, out):
        """Summed log-probability of emitting ``out`` then EOS, decoding step by step."""
        batch = s2s.batch_arrays([seq])
        model.train(False)
        keys, state = model.encode(batch["src"], batch["lengths"])
        pad = (batch["src"] == s2s.PAD).T
        total, token = 0.0, s2s.BOS
        for nxt in [*out, s2s.EOS][: len(seq) + 2]:  # decoding stops 2 steps past the length
            logp, state = model.step(np.array([token]), state, keys, pad)
            total += logp[0, nxt]
            token = nxt
        model.train(True)
        return total

    greedy = model.decode(sequences, beam=1, with_scores=True)
    beams = model.decode(sequences, beam=4, with_scores=True)
    for seq, (g, g_score), (b, b_score) in zip(sequences, greedy, beams):
        assert all(0 <= t < 10 for t in g + b)
        # the scores are the summed log-probabilities of what was output
        assert abs(g_score - log_prob(seq, g)) < 1e-4
        assert abs(b_score - log_prob(seq, b)) < 1e-4
    # a beam of one is greedy decoding, and batching does not change a result
    assert [model.decode([seq])[0] for seq in sequences[:4]] == [g for g, _ in greedy[:4]]
    assert model.decode(sequences, beam=1) == [g for g, _ in greedy]
