"""Every fused kernel against its NumPy twin: all cells and variants, both dtypes, every compiled
instruction set this CPU runs, shapes with B=1, T=1, I != H and sizes that are not multiples of
any vector width; forward outputs, saved workspace, and every gradient."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _core, functional, reference
from tests.helpers.cells import (
    CASES,
    assert_close,
    assert_within_float32_error,
    backward,
    forward,
    large_weights_sizes,
    loss_weights,
    make_inputs,
)

# (T, B, I, H): single step, single item, I != H, odd sizes, H past one vector, a wider batch;
# single steps of 2 and 5 rows (read in place: 2 rows, 4 + 1) with more gate rows than one pass
# of the in-place product takes
SIZES = [
    (1, 1, 1, 1),
    (1, 3, 5, 2),
    (6, 1, 7, 19),
    (5, 3, 16, 33),
    (4, 6, 9, 64),
    (1, 2, 13, 37),
    (1, 5, 13, 37),
]
DTYPES = [np.float64, np.float32]


def run_both(case, size, dtype, seed=0):
    """Forward and backward of both backends on the same inputs and output gradients."""
    inputs = make_inputs(case, *size, dtype=dtype, seed=seed)
    results = {}
    for name, backend in (("fused", functional), ("reference", reference)):
        out = forward(case, inputs, backend=backend)
        weights = loss_weights(case, out, seed=seed + 1)
        grads, _ = backward(case, inputs, out, weights, backend=backend)
        results[name] = (out, grads)
    return inputs, results


def assert_within_float32_rule(case, inputs, results, seed=0):
    """float32 results of `run_both` held to the rule of GUIDE.md: each fused error against the
    float64 reference on the very same (float32-rounded) inputs and output gradients is at most
    3x the float32 reference's own."""
    (out_f, grads_f), (out_r, grads_r) = results["fused"], results["reference"]
    inputs64 = {name: value.astype(np.float64) for name, value in inputs.items()}
    out64 = forward(case, inputs64, backend=reference)
    weights64 = {
        name: w.astype(np.float64) for name, w in loss_weights(case, out_r, seed=seed + 1).items()
    }
    grads64, _ = backward(case, inputs64, out64, weights64, backend=reference)
    for name in out_r:
        assert_within_float32_error(out_f[name], out_r[name], out64[name], name)
    for name in grads_r:
        assert_within_float32_error(grads_f[name], grads_r[name], grads64[name], "d" + name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("case", CASES)
def test_fused_equals_reference(case, size, dtype, isa, threading_mode):
    _, results = run_both(case, size, dtype)
    (out_f, grads_f), (out_r, grads_r) = results["fused"], results["reference"]
    for name in out_r:
        assert_close(out_f[name], out_r[name], dtype, name)
    for name in grads_r:
        assert_close(grads_f[name], grads_r[name], dtype, "d" + name)


# 23 rows: on AVX-512 as out^T = W x^T, in one panel of rows (float) or two (float64:
# csrc/common/step_gemm.h, transposed_step_fits); elsewhere by dot products, in groups of 4 and 3
# against triples of weight rows (csrc/row_dot.inc); 64, the most read in place; 65, packed
# again. "hh": a large W_hh (and a small W_ih, packed from 33
# rows on); "ih": a large W_ih (input sizes of 328-656) and a W_hh under 1.5 MiB.
@pytest.mark.parametrize("large", ["hh", "ih"])
@pytest.mark.parametrize("B", [23, 64, 65])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_single_step_of_large_weights_equals_reference(case, dtype, B, large, isa):
    I, H = large_weights_sizes(case, dtype, large)
    inputs, results = run_both(case, (1, B, I, H), dtype)
    if dtype == np.float32:  # (sums of hundreds of products)
        assert_within_float32_rule(case, inputs, results)
        return
    (out_f, grads_f), (out_r, grads_r) = results["fused"], results["reference"]
    for name in out_r:
        assert_close(out_f[name], out_r[name], dtype, name)
    for name in grads_r:
        assert_close(grads_f[name], grads_r[name], dtype, "d" + name)


@pytest.mark.parametrize("backend", [functional, reference], ids=["fused", "reference"])
@pytest.mark.parametrize("size", [(1, 24, 40, 24), (5, 3, 16, 33)], ids=["one_step", "sequence"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_input_grad_false_gives_no_dx_and_the_same_other_gradients(
    case, size, dtype, backend, threading_mode
):
    """``input_grad=False`` (x is data): dx is None, and dh0, dc0 and every parameter's gradient
    have the bits of the call that computes dx (the kernels skip dgates W_ih and nothing else)."""
    inputs = make_inputs(case, *size, dtype=dtype)
    out = forward(case, inputs, backend=backend)
    weights = loss_weights(case, out)
    full, _ = backward(case, inputs, out, weights, backend=backend)
    skipped, _ = backward(case, inputs, out, weights, backend=backend, input_grad=False)
    assert skipped.pop("x") is None
    assert full["x"] is not None
    for name, value in skipped.items():
        np.testing.assert_array_equal(value, full[name], err_msg=name)


# AVX-512 reads a single step in place from half a panel of rows on; AVX2 only whole panels
# (part of a panel goes by dot products there, with other bits)
TRANSPOSED_STEPS = [
    *(("avx512", rows) for rows in ("half_panel", "panel", "panel_and_a_half", "two_panels")),
    *(("avx2", rows) for rows in ("panel", "two_panels")),
]


@pytest.mark.parametrize(("isa_name", "rows"), TRANSPOSED_STEPS)
@pytest.mark.parametrize("large", ["hh", "ih"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_single_step_read_in_place_gives_the_bits_of_a_sequences_step(
    case, dtype, large, rows, isa_name, threading_mode
):
    """A single step reads its weights in place as out^T = W x^T (csrc/common/step_gemm.h,
    transposed_step_gemm) on AVX-512 from half a panel of rows on, on AVX2 when its rows fill
    whole panels: each output the same chain of multiply-adds as with the weights packed, so its
    output equals, bit for bit, the first step of a sequence of two (packed weights), for W_ih
    and W_hh, whichever is large; on a team split by units or by rows alike."""
    if not _core.isa_supported(isa_name):
        pytest.skip(f"this CPU has no {isa_name}")
    default = _core.active_isa()
    _core.select_isa(isa_name)
    try:
        check_single_step_bits(case, dtype, large, rows)
    finally:
        _core.select_isa(default)


def check_single_step_bits(case, dtype, large, rows):
    float_width = _core.step_panel_width()
    width = float_width if dtype == np.float32 else float_width // 2  # (vectors of doubles)
    B = {
        "half_panel": width // 2,
        "panel": width,
        "panel_and_a_half": width + width // 2,
        "two_panels": 2 * width,  # (in float64 a team of two splits them by rows: whole panels)
    }[rows]
    I, H = large_weights_sizes(case, dtype, large)
    inputs = make_inputs(case, 2, B, I, H, dtype=dtype, seed=5)
    sequence = forward(case, inputs, backend=functional)["y"]
    step = forward(case, {**inputs, "x": inputs["x"][:1]}, backend=functional)["y"]
    np.testing.assert_array_equal(step[0], sequence[0])


@pytest.mark.parametrize("B", [8, 65], ids=["in_place", "packed"])
def test_long_input_float32_error(B, isa):
    """A float32 step of 32,768 input features, with its weights read in place (8 rows) and
    packed (65): each sum goes in blocks (csrc/row_dot.inc, kDotBlock; the packed kernel's
    blocks of k), so the error against float64 stays within 3x numpy's float32 product's own.
    (One chain per lane over all the features erred 5x numpy's at 65,536.)"""
    I, H = 32768, 16
    inputs = make_inputs("rnn_relu", 1, B, I, H, dtype=np.float32, seed=3)
    inputs["h0"][:] = 0  # y = relu(x W_ih^T + b): the long sums alone
    y = forward("rnn_relu", inputs, training=False, backend=functional)["y"]
    y32 = forward("rnn_relu", inputs, training=False, backend=reference)["y"]
    inputs64 = {name: value.astype(np.float64) for name, value in inputs.items()}
    y64 = forward("rnn_relu", inputs64, training=False, backend=reference)["y"]
    assert_within_float32_error(y, y32, y64, "y")


@pytest.mark.parametrize(
    ("case", "dtype", "H"),
    [("lstm", np.float64, 128), ("lstm", np.float32, 256), ("rnn_tanh", np.float64, 512)],
)
def test_weight_gradients_of_gates_4_kib_wide(case, dtype, H, isa):
    """The weight-gradient GEMMs copy blocks of dgates^T first when a row of dgates is a multiple
    of 4 KiB (csrc/step_gemm.inc): 3 steps of 90 rows cross a block of k (256 rows)."""
    _, results = run_both(case, (3, 90, 5, H), dtype)
    (_, grads_f), (_, grads_r) = results["fused"], results["reference"]
    for name in grads_r:
        assert_close(grads_f[name], grads_r[name], dtype, "d" + name)


@pytest.mark.parametrize("case", CASES)
def test_threaded_elementwise_pass_equals_reference(case):
    """A batch wide enough that each step's elementwise pass is split across threads.

    At this size (sums of 288 products per gate) the float32 reference itself is off by more than
    the small-size tolerance near zero, so the float32 results are held to the rule of GUIDE.md:
    the fused error against a float64 reference is at most 3x the float32 reference's own."""
    inputs, results = run_both(case, (3, 64, 32, 256), np.float32)
    assert_within_float32_rule(case, inputs, results)


@pytest.mark.parametrize("case", CASES)
def test_workspaces_are_interchangeable(case):
    """The fused workspace has the reference's layout: either backward can consume either."""
    inputs = make_inputs(case, 4, 3, 5, 6)
    out_f = forward(case, inputs, backend=functional)
    out_r = forward(case, inputs, backend=reference)
    weights = loss_weights(case, out_r)
    cross, _ = backward(case, inputs, out_f, weights, backend=reference)
    direct, _ = backward(case, inputs, out_r, weights, backend=reference)
    for name in direct:
        assert_close(cross[name], direct[name], np.float64, name)


def awkward_view(value: np.ndarray) -> np.ndarray:
    """A read-only copy of ``value`` that is not C-contiguous: Fortran order for matrices, a
    strided view (every other element of a larger buffer) otherwise."""
    if value.ndim == 2:
        view = np.asfortranarray(value)
    else:
        wide = np.zeros((*value.shape[:-1], 2 * value.shape[-1]), value.dtype)
        wide[..., 1::2] = value
        view = wide[..., 1::2]
    assert not view.flags.c_contiguous or view.size <= 1
    view.flags.writeable = False
    return view


@pytest.mark.parametrize("case", CASES)
def test_non_contiguous_and_read_only_inputs(case):
    """Strided, Fortran-ordered and read-only inputs give the same numbers and are not modified."""
    inputs = make_inputs(case, 4, 3, 5, 6)
    expected = forward(case, inputs, backend=functional)
    odd = {name: awkward_view(value) for name, value in inputs.items()}
    snapshot = {name: value.copy() for name, value in odd.items()}
    got = forward(case, odd, backend=functional)
    for name in expected:
        if expected[name] is not None:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    grads_expected, _ = backward(
        case, inputs, expected, loss_weights(case, expected), backend=functional
    )
    grads_got, _ = backward(case, odd, got, loss_weights(case, got), backend=functional)
    for name in grads_expected:
        np.testing.assert_array_equal(grads_got[name], grads_expected[name], err_msg=name)
    for name, value in odd.items():
        np.testing.assert_array_equal(value, snapshot[name], err_msg=name)


@pytest.mark.parametrize("case", ["lstm", "gru_reset_after", "rnn_tanh"])
def test_thread_count_does_not_change_float64_results(case):
    inputs = make_inputs(case, 5, 64, 32, 128)
    before = fusedrnn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            fusedrnn.set_num_threads(threads)
            out = forward(case, inputs, backend=functional)
            grads, _ = backward(case, inputs, out, loss_weights(case, out), backend=functional)
            results.append((out, grads))
    finally:
        fusedrnn.set_num_threads(before)
    (out1, grads1), (out2, grads2) = results
    for name in out1:
        np.testing.assert_array_equal(out1[name], out2[name], err_msg=name)
    for name in grads1:
        np.testing.assert_array_equal(grads1[name], grads2[name], err_msg=name)


def test_kernels_release_the_gil():
    """While a long kernel runs, a pure-Python thread keeps running: the GIL was released."""
    inputs = make_inputs("lstm", 400, 32, 256, 256, dtype=np.float32)
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())

    start = time.perf_counter()
    counter = threading.Thread(target=count)
    counter.start()
    try:
        kernel_start = time.perf_counter()
        functional.lstm_forward(**inputs)
        kernel_end = time.perf_counter()
    finally:
        done.set()
        counter.join()
    during = [t for t in ticks if kernel_start + 0.2 * (kernel_end - kernel_start) < t < kernel_end]
    assert kernel_end - kernel_start > 0.02, "the kernel was too short to tell"
    assert start <= kernel_start
    # With the GIL held for the whole call, the counter could not tick inside it at all.
    assert len(during) > 100
