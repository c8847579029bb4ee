"""Threads: kernels called from several Python threads at once, the GIL, and the thread count.

- Several Python threads running different layers, or the same read-only weights with their own
  inputs, get bit for bit the results of the same calls made one after another.
- The GIL is released while a kernel runs: short kernel calls made by one thread start and end
  while another thread's long kernel call is still running (their kernels overlap in time).
- set_num_threads(n) for n from 1 to the core count gives the same float64 results bit for bit,
  and float32 results within tolerance, with the kernels' own choice of teams and with every time
  loop forced onto a team.
"""

from __future__ import annotations

import copy
import os
import threading
import time

import numpy as np
import pytest

import fusedrnn
from fusedrnn import GRU, LSTM, RNN, GRUCell, _core, functional
from tests.helpers.cells import (
    CASES,
    assert_close,
    backward,
    forward,
    large_weights_sizes,
    loss_weights,
    make_inputs,
)
from tests.helpers.hostile import results_equal, stack_inputs

CORES = os.cpu_count() or 1
THREAD_COUNTS = sorted({n for n in (1, 2, 3, 4, CORES) if n <= max(CORES, 2)})


DEFAULT_THRESHOLDS = _core._team_thresholds()


@pytest.fixture
def restore_threads():
    before = fusedrnn.get_num_threads()
    yield
    _core._set_team_thresholds(*DEFAULT_THRESHOLDS)
    fusedrnn.set_num_threads(before)


def run_concurrently(jobs, repeats=3):
    """Run every job ``repeats`` times, each job on its own thread, all released at once; return
    each job's list of results."""
    barrier = threading.Barrier(len(jobs))
    results = [[] for _ in jobs]
    errors = []

    def worker(i, job):
        try:
            barrier.wait()
            for _ in range(repeats):
                results[i].append(job())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, errors
    return results


def layer_job(cls, dtype, seed, **options):
    """A job: a fresh layer's training forward and backward on fixed inputs; all results."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 4, 5)).astype(dtype)
    if options.get("batch_first"):
        x = np.ascontiguousarray(x.swapaxes(0, 1))
    lengths = [6, 2, 5, 1]
    d_out = None

    def job():
        nonlocal d_out
        layer = cls(5, 7, dtype=dtype, seed=seed, **options)
        output, h_n = layer(x, lengths=lengths)
        if d_out is None:
            d_out = np.random.default_rng(seed + 1).standard_normal(output.shape).astype(dtype)
        dx, dhx = layer.backward(d_out)
        return output.copy(), h_n, dx, dhx, dict(layer.grads)

    return job


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("team", [False, True], ids=["auto", "team"])
def test_different_layers_in_threads_equal_serial_calls(dtype, team, restore_threads):
    if team:
        fusedrnn.set_num_threads(2)
        _core._set_team_thresholds(0, 1, False)
    jobs = [
        layer_job(LSTM, dtype, 0, num_layers=2, bidirectional=True, proj_size=3),
        layer_job(GRU, dtype, 1, num_layers=2, reset_after=False),
        layer_job(RNN, dtype, 2, nonlinearity="relu", bidirectional=True),
        layer_job(LSTM, dtype, 3, batch_first=True),
    ]
    serial = [job() for job in jobs]
    concurrent = run_concurrently(jobs)
    for i, runs in enumerate(concurrent):
        for run in runs:
            assert not results_equal(run, serial[i]), f"job {i}"


@pytest.mark.parametrize("key", ["lstm", "gru", "rnn"])
def test_threads_sharing_read_only_weights_equal_serial_calls(key):
    """One params dict, read-only, read by every thread; each thread its own x and grads."""
    base = stack_inputs(key)
    for value in base["params"].values():
        value.flags.writeable = False
    inputs = [stack_inputs(key, seed=seed)["x"] for seed in range(4)]

    def job_for(x):
        def job():
            kwargs = {**base, "x": x}
            y, h_n, c_n, saved = functional.stack_forward(**kwargs)
            dx, dh0, dc0, grads = functional.stack_backward(
                **kwargs, y=y, saved=saved, dy=np.ones_like(y)
            )
            return y, h_n, c_n, dx, dh0, dc0, grads

        return job

    jobs = [job_for(x) for x in inputs]
    serial = [job() for job in jobs]
    for i, runs in enumerate(run_concurrently(jobs, repeats=4)):
        for run in runs:
            assert not results_equal(run, serial[i]), f"thread {i}"


def test_one_eval_layer_shared_by_threads_equals_serial_calls():
    layer = LSTM(5, 7, num_layers=2, bidirectional=True, dtype=np.float64, seed=0).eval()
    inputs = [np.random.default_rng(s).standard_normal((5, 3, 5)) for s in range(4)]
    serial = [layer(x) for x in inputs]
    jobs = [lambda x=x: layer(x) for x in inputs]
    for i, runs in enumerate(run_concurrently(jobs, repeats=5)):
        for run in runs:
            assert not results_equal(run, serial[i])


def test_cells_in_threads_equal_serial_calls():
    def job_for(seed):
        def job():
            cell = GRUCell(4, 6, dtype=np.float64, seed=seed)
            rng = np.random.default_rng(seed)
            h, states = None, []
            for _ in range(5):
                h = cell(rng.standard_normal((3, 4)), h)
                states.append(h)
            grads = [cell.backward(np.ones((3, 6))) for _ in range(5)]
            return states, grads, dict(cell.grads)

        return job

    jobs = [job_for(s) for s in range(3)]
    serial = [job() for job in jobs]
    for i, runs in enumerate(run_concurrently(jobs)):
        for run in runs:
            assert not results_equal(run, serial[i])


def test_kernel_calls_of_two_threads_overlap(restore_threads):
    """While thread A is inside one long kernel call, thread B makes whole kernel calls of its
    own, start to end: A's kernel runs without the GIL, and the two threads' kernels run at the
    same time. (Were the GIL held, B could not run any Python between A's call and return.)"""
    fusedrnn.set_num_threads(1)  # one core each
    long_inputs = make_inputs("lstm", 60000, 8, 32, 64, dtype=np.float32)
    short_inputs = make_inputs("gru_reset_after", 20, 8, 16, 32, dtype=np.float32)
    a_window = {}
    b_calls = []
    a_started = threading.Event()
    a_done = threading.Event()

    def thread_a():
        a_started.set()
        a_window["start"] = time.perf_counter()
        functional.lstm_forward(**long_inputs, training=False)
        a_window["end"] = time.perf_counter()
        a_done.set()

    def thread_b():
        a_started.wait()
        while not a_done.is_set() and len(b_calls) < 10000:
            start = time.perf_counter()
            functional.gru_forward(**short_inputs, training=False)
            b_calls.append((start, time.perf_counter()))

    a, b = threading.Thread(target=thread_a), threading.Thread(target=thread_b)
    b.start()
    a.start()
    a.join(120)
    b.join(120)
    assert "end" in a_window, "thread A did not finish"
    inside = [(s, e) for s, e in b_calls if a_window["start"] < s and e < a_window["end"]]
    duration = a_window["end"] - a_window["start"]
    assert duration > 0.05, f"A's kernel ran {duration:.3f} s: too short to tell"
    assert len(inside) >= 3, (
        f"only {len(inside)} of B's {len(b_calls)} kernel calls ran "
        f"inside A's {duration:.3f} s kernel call"
    )


# ---------------------------------------------------------------- thread counts

# Below the kernels' team threshold (B*G*H_out multiply-adds per step) and too small for
# OpenBLAS to thread: nothing depends on the thread count.
SMALL = (5, 3, 7, 20)
# Large enough for the kernels' own teams: a team splits each step's hidden units and every
# GEMM's columns.
MEDIUM = (4, 8, 16, 256)


def one_layer_results(case, size, dtype):
    inputs = make_inputs(case, *size, dtype=dtype)
    out = forward(case, inputs, backend=functional)
    grads, _ = backward(case, inputs, out, loss_weights(case, out), backend=functional)
    return {**{k: v for k, v in out.items() if v is not None}, **grads}


def stack_results(key, dtype):
    kwargs = stack_inputs(key, dtype=dtype)
    y, h_n, c_n, saved = functional.stack_forward(**kwargs)
    dx, dh0, dc0, grads = functional.stack_backward(**kwargs, y=y, saved=saved, dy=np.ones_like(y))
    results = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0, **grads}
    return {k: v for k, v in results.items() if v is not None}


def results_by_thread_count(run):
    results = {}
    for n in THREAD_COUNTS:
        fusedrnn.set_num_threads(n)
        assert fusedrnn.get_num_threads() == n
        results[n] = run()
    return results


@pytest.mark.parametrize("what", [*CASES, "stack_lstm", "stack_gru", "stack_rnn"])
def test_thread_count_does_not_change_small_float64_results_at_all(what, restore_threads):
    """Small layers (stacks: two directions, run on two threads when there are two) give the
    same bits with any thread count."""

    def run():
        if what.startswith("stack_"):
            return stack_results(what[len("stack_") :], np.float64)
        return one_layer_results(what, SMALL, np.float64)

    results = results_by_thread_count(run)
    for n, result in results.items():
        for name, value in results[1].items():
            np.testing.assert_array_equal(result[name], value, err_msg=f"{name}, {n} threads")


@pytest.mark.parametrize("case", CASES)
def test_a_given_thread_count_is_reproducible(case, restore_threads):
    """Same thread count, same inputs: the same bits, run after run, teams or not."""
    fusedrnn.set_num_threads(max(2, min(CORES, 4)))
    for thresholds in (DEFAULT_THRESHOLDS, (0, 1, False)):
        _core._set_team_thresholds(*thresholds)
        first = one_layer_results(case, MEDIUM, np.float64)
        for _ in range(3):
            assert not results_equal(one_layer_results(case, MEDIUM, np.float64), first)


# Batch 1, odd sizes, a hidden size of several panels of the step kernel; and a batch whose rows
# two or three members split between them (csrc/common/sequence.h, StepSplit: from 8 rows each);
# single steps of 1 and 3 rows, whose products read the weights in place (csrc/row_dot.inc).
ROW_SPLIT = (30, 24, 9, 100)
EXACT_SIZES = [
    SMALL,
    MEDIUM,
    (6, 1, 9, 100),
    (3, 5, 33, 97),
    ROW_SPLIT,
    (1, 1, 9, 100),
    (1, 3, 9, 100),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("team", [False, True], ids=["auto", "team"])
@pytest.mark.parametrize("size", EXACT_SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("case", CASES)
def test_thread_count_does_not_change_results_at_all(case, size, team, dtype, restore_threads):
    """Every GEMM of the recurrent kernels runs on the step kernel, which forms each output
    element as one chain of multiply-adds over k in a fixed order whatever the tile, panel or
    thread (csrc/common/step_gemm.h); the elementwise passes and bias sums work element by
    element. So any thread count gives the same bits, in both dtypes, with teams of the kernels'
    own choosing or forced on every loop."""
    if team:  # every time loop and every GEMM on a team of up to n members
        _core._set_team_thresholds(0, 1, False)
    results = results_by_thread_count(lambda: one_layer_results(case, size, dtype))
    for n, result in results.items():
        for name, value in results[1].items():
            np.testing.assert_array_equal(result[name], value, err_msg=f"{name}, {n} threads")


@pytest.mark.parametrize("case", CASES)
def test_inference_by_batch_rows_equals_training(case, restore_threads):
    """With the batch rows split between members, an inference forward projects its inputs chunk
    by chunk (10 steps of 24 rows here), each chunk between two barriers of the team, while the
    steps themselves have none: its outputs are the training forward's, bit for bit, with every
    thread count."""
    inputs = make_inputs(case, *ROW_SPLIT)
    for n in THREAD_COUNTS:
        fusedrnn.set_num_threads(n)
        trained = forward(case, inputs, training=True, backend=functional)
        inferred = forward(case, inputs, training=False, backend=functional)
        assert inferred.pop("workspace") is None
        for name, value in inferred.items():
            np.testing.assert_array_equal(value, trained[name], err_msg=f"{name}, {n} threads")


@pytest.mark.parametrize("large", ["hh", "ih"])
@pytest.mark.parametrize("B", [23, 64])
@pytest.mark.parametrize("case", ["lstm", "gru_reset_before", "rnn_tanh"])
def test_single_step_of_large_weights_is_exact(case, B, large, restore_threads):
    """A single step of 17-64 rows reads a matrix of 1.5 MiB or more (W_hh, or W_ih) in place
    (csrc/common/sequence.h, in_place_weights) in training and in inference alike: the same bits
    either way, with every thread count."""
    I, H = large_weights_sizes(case, np.float32, large)
    inputs = make_inputs(case, 1, B, I, H, dtype=np.float32)
    first = None
    for n in THREAD_COUNTS:
        fusedrnn.set_num_threads(n)
        trained = forward(case, inputs, training=True, backend=functional)
        inferred = forward(case, inputs, training=False, backend=functional)
        inferred.pop("workspace")
        first = first or inferred
        for name, value in inferred.items():
            np.testing.assert_array_equal(value, trained[name], err_msg=f"{name}, {n} threads")
            np.testing.assert_array_equal(value, first[name], err_msg=f"{name}, {n} threads")


@pytest.mark.parametrize("what", ["stack_lstm", "stack_gru", "stack_rnn"])
def test_thread_count_does_not_change_stack_results_with_teams(what, restore_threads):
    """Stacks (bidirectional, packed lengths, an LSTM projection) with every loop on a team."""
    _core._set_team_thresholds(0, 1, False)
    results = results_by_thread_count(lambda: stack_results(what[len("stack_") :], np.float64))
    for n, result in results.items():
        for name, value in results[1].items():
            np.testing.assert_array_equal(result[name], value, err_msg=f"{name}, {n} threads")


# ---------------------------------------------------------------- attention


def attention_job(seed, dtype=np.float64, causal=False, gqa=False):
    from tests.helpers.attention_cases import make_qkv, run

    q, k, v, d_out = make_qkv((2,), 4 if gqa else 2, 2, 33, 17, 8, 5, dtype=dtype, seed=seed)
    mask = np.random.default_rng(seed).random((33, 17)) > 0.2
    return lambda: run(
        "fused",
        q,
        k,
        v,
        d_out,
        attn_mask=mask,
        is_causal=causal,
        enable_gqa=gqa,
        dropout_p=0.1,
        seed=seed,
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_attention_calls_in_threads_equal_serial_calls(dtype):
    from fusedrnn import MultiheadAttention

    jobs = [
        attention_job(0, dtype),
        attention_job(1, dtype, causal=True),
        attention_job(2, dtype, gqa=True),
    ]
    layer = MultiheadAttention(8, 2, dtype=dtype, seed=0).eval()  # one layer, shared
    x = [np.random.default_rng(s).standard_normal((6, 2, 8)).astype(dtype) for s in range(2)]
    jobs += [lambda x=x: layer(x, x, x)[0] for x in x]
    serial = [job() for job in jobs]
    for i, runs in enumerate(run_concurrently(jobs)):
        for result in runs:
            assert not results_equal(result, serial[i]), f"job {i}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("causal", [False, True])
def test_thread_count_does_not_change_attention_results_at_all(causal, dtype, restore_threads):
    """Attention hands whole (batch, head, query tile) units to the threads and each unit runs
    alone: any thread count gives the same bits, in both dtypes."""
    job = attention_job(3, dtype, causal=causal)
    results = results_by_thread_count(job)
    for n, result in results.items():
        assert not results_equal(result, results[1]), f"{n} threads"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("sizes", [None, (3, 7, 300, 20, 9, 33, 40)], ids=["small", "S300"])
def test_thread_count_and_additive_attention(dtype, sizes, restore_threads):
    """The additive layer on teams of any size. Its products on the step kernel (context,
    d_values, dP, d_query) take whole items per member, so their sums do not depend on how a team
    splits the rows (with 300 keys, one row alone would sum k in one chain where an item's rows
    sum blocks of 256): they, and the weights, have the same bits for every thread count.
    d_keys and the weight gradients sum the members' partial sums over rows, so with rows of an
    item split across members they agree only closely (in float64 small sizes keep each item on
    one member: the same bits)."""
    from tests.helpers.hostile import additive_inputs

    def job():
        inputs = (
            additive_inputs(dtype=dtype)
            if sizes is None
            else additive_inputs(seed=4, dtype=dtype, sizes=sizes)
        )
        context, weights, qp, kp = functional.additive_attention_forward(**inputs)
        grads = functional.additive_attention_backward(
            **inputs, weights=weights, qp=qp, kp=kp, d_context=np.ones_like(context)
        )
        return {
            "context": context,
            "weights": weights,
            "d_query": grads[0],
            "d_keys": grads[1],
            "d_values": grads[2],
            **grads[3],
        }

    threshold = _core._set_attention_team_threshold(0)
    try:
        results = results_by_thread_count(job)
    finally:
        _core._set_attention_team_threshold(threshold)
    per_row = {"context", "weights", "d_query", "d_values"}
    for n, result in results.items():
        for name, value in results[1].items():
            if name in per_row or (sizes is None and dtype == np.float64):
                np.testing.assert_array_equal(result[name], value, err_msg=f"{name}, {n} threads")
            else:
                assert_close(result[name], value, dtype, f"{name}, {n} threads")


def test_attention_kernel_calls_of_two_threads_overlap(restore_threads):
    """As test_kernel_calls_of_two_threads_overlap, with a long attention call in thread A."""
    fusedrnn.set_num_threads(1)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 8, 4000, 32)).astype(np.float32) for _ in range(3))
    short = [a[:, :1, :64] for a in (q, k, v)]
    a_window, b_calls = {}, []
    a_started, a_done = threading.Event(), threading.Event()

    def thread_a():
        a_started.set()
        a_window["start"] = time.perf_counter()
        functional.attention_forward(q, k, v)
        a_window["end"] = time.perf_counter()
        a_done.set()

    def thread_b():
        a_started.wait()
        while not a_done.is_set() and len(b_calls) < 10000:
            start = time.perf_counter()
            functional.attention_forward(*short)
            b_calls.append((start, time.perf_counter()))

    a, b = threading.Thread(target=thread_a), threading.Thread(target=thread_b)
    b.start()
    a.start()
    a.join(120)
    b.join(120)
    assert "end" in a_window
    inside = [c for c in b_calls if a_window["start"] < c[0] and c[1] < a_window["end"]]
    duration = a_window["end"] - a_window["start"]
    assert duration > 0.05, f"A's kernel ran {duration:.3f} s: too short to tell"
    assert len(inside) >= 3, f"only {len(inside)} of B's calls ran inside A's {duration:.3f} s"


# ---------------------------------------------------------------- one layer's training state


def test_a_second_thread_training_a_busy_layer_is_told_not_queued():
    """While one thread is inside a training forward of a layer, another thread's training
    forward or backward on that layer raises RuntimeError at once; its eval forward runs."""
    inside, release = threading.Event(), threading.Event()

    class HeldLSTM(LSTM):  # holds its forward open until told (its forward is guarded too)
        def forward(self, *args, **kwargs):
            inside.set()
            release.wait(30)
            return super().forward(*args, **kwargs)

    layer = HeldLSTM(5, 7, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 4, 5))
    holder = threading.Thread(target=layer, args=(x,))
    holder.start()
    try:
        assert inside.wait(30)
        copied = copy.deepcopy(layer)  # (so would a pickle) made while that thread is inside
        with pytest.raises(RuntimeError, match=r"HeldLSTM.forward: another thread is running"):
            layer(x)
        with pytest.raises(RuntimeError, match=r"HeldLSTM.backward: another thread is running"):
            layer.backward(np.ones((6, 4, 7)))
    finally:
        release.set()
        holder.join(30)
    # (that thread's forward saved the state; this thread's own forward and backward then work)
    output, _ = layer(x)
    layer.backward(np.ones_like(output))
    output, _ = copied(x)  # the copy is nobody's: not busy, its state this thread's
    copied.backward(np.ones_like(output))


def test_backward_of_another_threads_forward_raises():
    """Thread A's forward, then thread B's, then A's backward: the saved state is B's, so A's
    backward raises instead of returning B's gradients; B's own backward works."""
    layer = LSTM(5, 7, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x_a, x_b = rng.standard_normal((6, 4, 5)), rng.standard_normal((6, 4, 5))
    d_out = np.ones((6, 4, 7))
    errors = []

    def in_thread(call):
        def run():
            try:
                call()
            except RuntimeError as error:
                errors.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(30)

    in_thread(lambda: layer(x_a))
    layer(x_b)  # this (the main) thread
    in_thread(lambda: layer.backward(d_out))
    assert len(errors) == 1 and "ran on another thread" in str(errors[0]), errors
    reference = LSTM(5, 7, dtype=np.float64, seed=0)
    reference(x_b)
    expected = reference.backward(d_out)
    assert not results_equal(layer.backward(d_out), expected)


@pytest.mark.parametrize("cls", [LSTM, GRUCell], ids=["LSTM", "GRUCell"])
def test_one_training_layer_used_by_two_threads_never_gives_wrong_numbers(cls):
    """Two threads train one layer at once, many times: every step either raises RuntimeError
    or returns what a layer of its own would, and the layer's grads are the sum of the steps
    that ran (before, the two threads' backward kernels added into grads at once and lost
    updates: wrong gradients, silently)."""
    rng = np.random.default_rng(0)
    shape = (32, 5) if cls is GRUCell else (30, 4, 5)
    inputs = [rng.standard_normal(shape) for _ in range(2)]

    def fresh():
        return cls(5, 128, dtype=np.float64, seed=0)

    def step(layer, x):
        output = layer(x)
        output = output if cls is GRUCell else output[0]
        return output.copy(), layer.backward(np.ones_like(output))

    alone = [fresh() for _ in inputs]
    expected = [step(layer, x) for layer, x in zip(alone, inputs)]
    shared = fresh()
    ran, refused, wrong = [0, 0], [0, 0], [0, 0]
    barrier = threading.Barrier(2)

    def worker(i):
        barrier.wait()
        for _ in range(50):
            try:
                result = step(shared, inputs[i])
            except RuntimeError:
                refused[i] += 1
                continue
            ran[i] += 1
            wrong[i] += bool(results_equal(result, expected[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert wrong == [0, 0] and sum(ran) > 0, (ran, refused, wrong)
    for name, grad in shared.grads.items():
        want = ran[0] * alone[0].grads[name] + ran[1] * alone[1].grads[name]
        np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-10, err_msg=name)
