"""Memory: repeated forward + backward keeps the resident set flat; no references leak.

The RSS (from /proc/self/statm) is read after a warm-up and around each of three windows of
many more iterations; each iteration allocates several MB (outputs, the saved workspace,
scratch, gradients), so a leak of any of them would grow the RSS in every window by tens to
hundreds of MB, far past the 4 MB bound on the smallest window's growth. Calls that fail in
the binding after it allocated their outputs are repeated the same way. Reference counts of the
inputs are unchanged after calls (successful or not), and what a layer or cell saved for
backward is released when it is no longer needed, without waiting for the cycle collector.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import weakref

import numpy as np
import pytest

import fusedrnn
from fusedrnn import GRU, LSTM, GRUCell, LSTMCell, functional
from tests.helpers.cells import make_inputs
from tests.helpers.hostile import stack_inputs

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20
# ASan holds freed memory in quarantine (256 MB by default): the RSS grows by design there.
rss_is_meaningful = pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="ASan's quarantine keeps freed memory resident",
)


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def rss_growth(step, warmup: int, repeats: int, windows: int = 3) -> list:
    """The RSS growth, in bytes, over each of ``windows`` runs of ``repeats / windows`` calls of
    ``step`` after ``warmup`` calls.

    A leak grows the RSS in every window. The allocator's one-off growth (glibc raising its mmap
    threshold, a new arena page, a pooled buffer of a new size) lands in one window, and how much
    of it is left for the measured calls depends on what ran before in the same process (the rest
    of the suite): the tests assert on the smallest window's growth.
    """
    for _ in range(warmup):
        step()
    growths = []
    for _ in range(windows):
        before = rss()
        for _ in range(max(1, repeats // windows)):
            step()
        growths.append(rss() - before)
    return growths


def assert_rss_flat(growths: list, bound: int = 4 * MB) -> None:
    """Every window grew (a leak) by ``bound`` or more: fail with the windows' growth in MB."""
    assert min(growths) < bound, "RSS grew in every window: " + ", ".join(
        f"{g / MB:.1f} MB" for g in growths
    )


def layer_step(cls, **options):
    layer = cls(32, 64, num_layers=2, bidirectional=True, dtype=np.float64, seed=0, **options)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 8, 32))
    lengths = [20, 3, 17, 9, 20, 1, 5, 12]
    d_out = rng.standard_normal((20, 8, 128))

    def step():  # ~3 MB of outputs, saved state and scratch per iteration
        layer(x, lengths=lengths)
        layer.backward(d_out)
        layer.zero_grad()

    return step


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """The long loops run on one thread (a busy machine can stall a team at every step); the
    team path gets a shorter loop of its own."""
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(request.param)
    yield request.param
    fusedrnn.set_num_threads(before)


def repeats_for(threads: int) -> int:
    return 100 if threads == 1 else 20


@rss_is_meaningful
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_layer_forward_backward_keeps_rss_flat(cls, threads):
    growths = rss_growth(layer_step(cls), warmup=10, repeats=repeats_for(threads))
    assert_rss_flat(growths)


@rss_is_meaningful
@pytest.mark.slow
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_layer_forward_backward_keeps_rss_flat_over_thousands_of_calls(cls):
    growths = rss_growth(layer_step(cls), warmup=20, repeats=3000)
    assert_rss_flat(growths)


@rss_is_meaningful
def test_one_layer_functions_keep_rss_flat(threads):
    inputs = {case: make_inputs(case, 16, 8, 32, 96) for case in ("lstm", "gru_reset_before")}

    def step():
        for case, args in inputs.items():
            run = functional.lstm_forward if case == "lstm" else functional.gru_forward
            out = run(**args) if case == "lstm" else run(**args, reset_after=False)
            y, workspace = out[0], out[-1]
            keys = ("x", "h0", "c0", "weight_ih", "weight_hh")
            kw = {k: args[k] for k in keys if k in args}
            if case == "lstm":
                functional.lstm_backward(**kw, y=y, workspace=workspace, dy=y)
            else:
                functional.gru_backward(**kw, y=y, workspace=workspace, dy=y, reset_after=False)

    growths = rss_growth(step, warmup=10, repeats=repeats_for(threads))
    assert_rss_flat(growths)


@rss_is_meaningful
def test_cells_keep_rss_flat():
    cell = LSTMCell(32, 64, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((16, 32))

    def step():
        state = None
        for _ in range(10):
            state = cell(x, state)
        for _ in range(10):
            cell.backward(np.ones((16, 64)), np.ones((16, 64)))

    growths = rss_growth(step, warmup=5, repeats=50)
    assert cell.tape_depth == 0
    assert_rss_flat(growths)


@rss_is_meaningful
def test_calls_failing_after_allocation_keep_rss_flat():
    """The stack binding allocates y, the saved state and scratch (~4 MB here) before it checks
    the weights: a failing call must free them."""
    kwargs = stack_inputs("lstm")
    kwargs["x"] = np.random.default_rng(0).standard_normal((200, 3, 5))
    kwargs["lengths"] = None
    kwargs["dropout_masks"] = None
    kwargs["params"] = {**kwargs["params"], "weight_hh_l1_reverse": np.zeros((12, 3))}  # (12, 2)

    def step():
        with pytest.raises(ValueError, match="weight_hh_l1_reverse must have shape"):
            functional.stack_forward(**kwargs)

    growths = rss_growth(step, warmup=10, repeats=500)
    assert_rss_flat(growths)


# ---------------------------------------------------------------- references


def refcounts(arrays):
    return [sys.getrefcount(a) for a in arrays]


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_kernel_calls_keep_no_reference_to_their_inputs(layout):
    inputs = make_inputs("lstm", 5, 3, 4, 6)
    if layout == "strided":  # copied by the binding: the copies must go too
        inputs = {k: np.repeat(v, 2, axis=-1)[..., ::2] for k, v in inputs.items()}
    arrays = list(inputs.values())
    before = refcounts(arrays)
    y, h_n, c_n, workspace = functional.lstm_forward(**inputs)
    probes = [weakref.ref(a) for a in (y, h_n, c_n, workspace)]
    grads = functional.lstm_backward(
        **{k: inputs[k] for k in ("x", "h0", "c0", "weight_ih", "weight_hh")},
        y=y,
        workspace=workspace,
        dy=y,
    )
    grad_probes = [weakref.ref(a) for a in grads[:3]] + [weakref.ref(a) for a in grads[3].values()]
    del y, h_n, c_n, workspace, grads
    assert refcounts(arrays) == before
    assert all(p() is None for p in probes + grad_probes), "an output outlived its last reference"


def test_failing_calls_keep_no_reference_to_their_inputs():
    inputs = make_inputs("gru_reset_after", 5, 3, 4, 6)
    bad = {**inputs, "bias_hh": np.zeros(5)}
    arrays = list(bad.values())
    before = refcounts(arrays)
    for _ in range(10):
        with contextlib.suppress(ValueError):
            functional.gru_forward(**bad)
    assert refcounts(arrays) == before


def test_stack_calls_keep_no_reference_to_their_inputs():
    kwargs = stack_inputs("lstm")
    arrays = [
        kwargs["x"],
        *kwargs["hx"],
        *kwargs["params"].values(),
        *kwargs["dropout_masks"],
        kwargs["lengths"],
    ]
    before = refcounts(arrays)
    y, h_n, c_n, saved = functional.stack_forward(**kwargs)
    out = functional.stack_backward(**kwargs, y=y, saved=saved, dy=y)
    probe = weakref.ref(saved)
    del y, h_n, c_n, saved, out
    assert probe() is None
    assert refcounts(arrays) == before


def test_layers_release_what_they_saved_without_the_cycle_collector():
    gc.disable()
    try:
        layer = LSTM(4, 6, num_layers=2, dropout=0.5, dtype=np.float64, seed=0)
        x = np.ones((5, 3, 4))
        output, _ = layer(x)
        saved = weakref.ref(layer._saved.saved)
        out_probe = weakref.ref(layer._saved.y)
        layer.backward(np.ones(output.shape), retain_graph=True)
        del output
        assert saved() is not None  # kept: retain_graph
        layer.eval()
        layer(x)  # an eval forward discards the saved training state
        assert saved() is None and out_probe() is None
        params = [weakref.ref(p) for _, p in layer.named_parameters()]
        grads = [weakref.ref(g) for g in layer.grads.values()]
        layer_probe = weakref.ref(layer)
        del layer
        assert layer_probe() is None, "the layer is kept alive by a reference cycle"
        assert all(p() is None for p in params + grads)
        assert sys.getrefcount(x) == 2  # x itself and the getrefcount argument
    finally:
        gc.enable()


def test_cells_release_each_step_when_it_is_popped():
    gc.disable()
    try:
        cell = GRUCell(4, 6, dtype=np.float64, seed=0)
        x = np.ones((3, 4))
        h = cell(x)
        entry = cell._tape[-1]
        probes = [weakref.ref(entry.x), weakref.ref(entry.y)]
        del entry
        cell.backward(np.ones_like(h))
        assert all(p() is None for p in probes)
        h = cell(x)
        probe = weakref.ref(cell._tape[-1].x)
        cell.clear_tape()
        assert probe() is None
        cell_probe = weakref.ref(cell)
        del cell
        assert cell_probe() is None
        assert sys.getrefcount(x) == 2
    finally:
        gc.enable()


# ---------------------------------------------------------------- attention


@rss_is_meaningful
def test_attention_forward_backward_keeps_rss_flat():
    from fusedrnn import MultiheadAttention
    from tests.helpers.attention_cases import make_qkv

    q, k, v, d_out = make_qkv((4,), 4, 2, 128, 160, 32, 32, seed=0)
    layer = MultiheadAttention(32, 4, dropout=0.1, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((40, 4, 32))

    def step():  # ~2 MB of outputs and gradients per iteration
        out, lse = functional.attention_forward(q, k, v, is_causal=True, enable_gqa=True)
        functional.attention_backward(q, k, v, out, lse, d_out, is_causal=True, enable_gqa=True)
        output, _ = layer(x, x, x, need_weights=True)
        layer.backward(np.ones_like(output))
        layer.zero_grad()

    growths = rss_growth(step, warmup=5, repeats=60)
    assert_rss_flat(growths)


def test_attention_calls_keep_no_reference_to_their_inputs():
    from tests.helpers.attention_cases import make_qkv

    q, k, v, d_out = make_qkv((2,), 2, 2, 5, 7, 4, 3, seed=0)
    mask = np.ones((5, 7), bool)
    strided_q = np.repeat(q, 2, axis=-1)[..., ::2]  # copied by the binding
    arrays = [q, k, v, d_out, mask, strided_q]
    before = refcounts(arrays)
    out, lse = functional.attention_forward(strided_q, k, v, mask)
    grads = functional.attention_backward(q, k, v, out, lse, d_out, mask)
    probes = [weakref.ref(a) for a in (out, lse, *grads)]
    with pytest.raises(ValueError, match="q and k must have the same feature size E"):
        functional.attention_forward(q, k[..., :2], v, mask)
    del out, lse, grads
    assert all(p() is None for p in probes)
    assert refcounts(arrays) == before


@rss_is_meaningful
def test_empty_cache_returns_the_pooled_outputs_to_the_system():
    """Freed outputs stay pooled for the next calls (no page faults per step); empty_cache gives
    that memory back, and the next call still works."""
    from fusedrnn import _core

    inputs = make_inputs("rnn_tanh", 400, 64, 8, 256, dtype=np.float64)  # y: 52 MB
    expected = functional.rnn_forward(**inputs)[0].copy()
    fusedrnn.empty_cache()
    baseline = rss()
    y, _h_n, _workspace = functional.rnn_forward(**inputs)
    del y
    pooled = _core.cached_bytes()
    assert pooled >= 400 * 64 * 256 * 8
    assert fusedrnn._config.config()["cached_bytes"] == pooled
    assert rss() - baseline > 40 * MB  # still resident, ready for the next call
    fusedrnn.empty_cache()
    assert _core.cached_bytes() == 0
    assert rss() - baseline < 20 * MB
    y, _h_n, _workspace = functional.rnn_forward(**inputs)
    np.testing.assert_array_equal(y, expected)
