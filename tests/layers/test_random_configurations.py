"""The fused layers against the reference backend on random configurations, in float64: every
output, input gradient and parameter gradient, for combinations of options (layers,
directions, projection, peepholes, zoneout, dropout, learned initial state, lengths,
truncation, threads, ...) that the option-by-option tests do not each meet. Seeded, so that a
failure names its configuration.

This is how two bugs were found (CHANGELOG): the reference backend's backward refused a layer
with a learned initial state, and its layer-normalised LSTM failed at hidden_size 1.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM
from tests.helpers.cells import assert_close

F64 = np.float64
BACKENDS = ("fused", "reference")


@pytest.fixture(autouse=True)
def restore_threads():
    before = fusedrnn.get_num_threads()
    yield
    fusedrnn.set_num_threads(before)


def stack_options(rng) -> dict:
    """The options every stack has: layers, bias, layout, dropout between layers, directions."""
    num_layers = int(rng.integers(1, 4))
    return {
        "num_layers": num_layers,
        "bias": bool(rng.integers(2)),
        "batch_first": bool(rng.integers(2)),
        "dropout": float(rng.choice([0.0, 0.3])) if num_layers > 1 else 0.0,
        "bidirectional": bool(rng.integers(2)),
    }


def recurrent_options(rng, cell: str, H: int) -> dict:
    """Constructor options of a random, valid LSTM / GRU / RNN (the rules: zoneout and recurrent
    dropout need proj_size = 0, and for the GRU reset_after)."""
    kw = stack_options(rng)
    if rng.random() < 0.3:
        kw["clip"] = float(rng.choice([0.5, 2.0]))
    if rng.random() < 0.2:
        kw["learn_initial_state"] = True
    if cell == "rnn":
        kw["nonlinearity"] = str(rng.choice(["tanh", "relu"]))
        return kw
    if cell == "gru":
        kw["reset_after"] = bool(rng.integers(2))
    elif rng.random() < 0.3 and H > 1:
        kw["proj_size"] = int(rng.integers(1, H))
    if cell == "lstm":
        kw["peephole"] = rng.random() < 0.2
        kw["input_forget"] = rng.random() < 0.2
    if not kw.get("proj_size") and kw.get("reset_after", True):
        kw["zoneout"] = float(rng.choice([0.0, 0.2]))
        kw["recurrent_dropout"] = float(rng.choice([0.0, 0.25]))
        if cell == "lstm":
            kw["zoneout_cell"] = float(rng.choice([0.0, 0.3]))
    return kw


def run_both(make, x, hx, d_out_seed, forward_kw=None, backward_kw=None):
    """(output, h_n parts, dx, dhx parts, grads) of each backend's layer, by backend."""
    results = {}
    for backend in BACKENDS:
        layer = make(backend)
        out, h_n = layer(x, hx, **(forward_kw or {}))
        rng = np.random.default_rng(d_out_seed)
        h_parts = h_n if isinstance(h_n, tuple) else (h_n,)
        d_h = tuple(rng.standard_normal(h.shape) for h in h_parts)
        d_out = rng.standard_normal(out.shape)
        dx, dhx = layer.backward(
            d_out, d_h if isinstance(h_n, tuple) else d_h[0], **(backward_kw or {})
        )
        dhx_parts = dhx if isinstance(dhx, tuple) else (dhx,)
        results[backend] = (out, h_parts, dx, dhx_parts, dict(layer.grads), repr(layer))
    return results


def assert_backends_agree(results):
    fused, ref = results["fused"], results["reference"]
    where = ref[5]
    assert_close(fused[0], ref[0], F64, f"output of {where}")
    for name, got, want in [("h_n", fused[1], ref[1]), ("dhx", fused[3], ref[3])]:
        for i, (a, b) in enumerate(zip(got, want)):
            if a is not None or b is not None:
                assert_close(a, b, F64, f"{name}[{i}] of {where}")
    assert_close(fused[2], ref[2], F64, f"dx of {where}")
    assert fused[4].keys() == ref[4].keys(), where
    for name in ref[4]:
        assert_close(fused[4][name], ref[4][name], F64, f"d{name} of {where}")


@pytest.mark.parametrize("seed", range(150))
def test_recurrent_layers_agree_on_random_configurations(seed):
    rng = np.random.default_rng(seed)
    cell = str(rng.choice(["lstm", "gru", "rnn"]))
    T, B, I, H = (int(rng.integers(1, n)) for n in (8, 7, 7, 10))
    kw = recurrent_options(rng, cell, H)
    cls = {"lstm": LSTM, "gru": GRU, "rnn": RNN}[cell]
    L, D = kw["num_layers"], 2 if kw["bidirectional"] else 1
    x = rng.standard_normal((B, T, I) if kw["batch_first"] else (T, B, I))
    hx = None
    if rng.random() < 0.6:
        h0 = rng.standard_normal((L * D, B, kw.get("proj_size") or H))
        hx = (h0, rng.standard_normal((L * D, B, H))) if cell == "lstm" else h0
    lengths = rng.integers(1, T + 1, B) if rng.random() < 0.4 else None
    truncation = {}
    if not kw["bidirectional"] and rng.random() < 0.3:
        k2 = int(rng.integers(1, T + 1))
        truncation = {"truncate": k2, "truncate_stride": int(rng.integers(1, k2 + 1))}
    fusedrnn.set_num_threads(int(rng.integers(1, 3)))
    results = run_both(
        lambda backend: cls(I, H, dtype=F64, seed=seed, backend=backend, **kw),
        x,
        hx,
        seed + 1,
        {"lengths": lengths},
        truncation,
    )
    assert_backends_agree(results)


@pytest.mark.parametrize("seed", range(100))
def test_layer_normalised_layers_agree_on_random_configurations(seed):
    rng = np.random.default_rng(seed)
    cell = str(rng.choice(["lstm", "gru"]))
    T, B, I, H = (int(rng.integers(1, n)) for n in (8, 7, 7, 10))
    kw = {**stack_options(rng), "eps": float(rng.choice([1e-5, 1e-3]))}
    cls = LayerNormLSTM if cell == "lstm" else LayerNormGRU
    L, D = kw["num_layers"], 2 if kw["bidirectional"] else 1
    x = rng.standard_normal((B, T, I) if kw["batch_first"] else (T, B, I))
    hx = None
    if rng.random() < 0.6:
        h0 = rng.standard_normal((L * D, B, H))
        hx = (h0, rng.standard_normal((L * D, B, H))) if cell == "lstm" else h0
    fusedrnn.set_num_threads(int(rng.integers(1, 3)))
    results = run_both(
        lambda backend: cls(I, H, dtype=F64, seed=seed, backend=backend, **kw), x, hx, seed + 1
    )
    assert_backends_agree(results)
