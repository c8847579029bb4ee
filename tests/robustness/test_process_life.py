"""What users do to a process around the kernels: fork it, press Ctrl-C, free its memory.

- Fork: a parent that ran the kernels on a team of threads forks (multiprocessing's default start
  method on Linux, data-loader workers); the children's kernels run, on threads of their own,
  with the parent's results, and do not hang.
- Ctrl-C: a long kernel (an LSTM over 40,000 steps, attention over 16,384 keys and its backward
  over 8,192) stops with KeyboardInterrupt within a fraction of a second of SIGINT, instead of
  when it is done; every buffer of the stopped call goes back to the pool (nothing leaked), and
  the next call works.
- empty_cache(): the resident memory falls back to about where it was before the freed outputs
  were made.

Each case runs in a subprocess with a timeout, so that a hang fails the test instead of hanging
the run. The subprocess inherits the environment (PYTHONPATH, the sanitizers' LD_PRELOAD).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fusedrnn import _core

needs_threads = pytest.mark.skipif(
    not _core.have_openmp(), reason="built without OpenMP: the kernels have no team of threads"
)
under_asan = "libasan" in os.environ.get("LD_PRELOAD", "")


def run_script(source: str, timeout: float = 60) -> dict:
    """Run ``source`` in a fresh Python; the JSON object its last output line prints. On a hang
    the whole process group is killed, forked children included."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the subprocess hung: no answer in {timeout} s")
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- fork

FORK_SCRIPT = """
    import json, multiprocessing, os
    import numpy as np
    import fusedrnn
    from fusedrnn import _core

    fusedrnn.set_num_threads(2)
    _core._set_team_thresholds(0, 1, False)  # every loop and GEMM on a team, even this small one
    # {setup}
    layer = fusedrnn.LSTM(8, 32, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((12, 4, 8))

    def fingerprint(_):
        y, _ = layer(x)
        dx, _ = layer.backward(np.ones_like(y))
        return float(y.sum()), float(dx.sum()), os.getpid()

    in_parent = fingerprint(None)  # the parent has run teams before it forks
    with multiprocessing.get_context("fork").Pool(2) as pool:
        in_children = pool.map(fingerprint, range(4))
        child_teams = pool.apply(_core.openmp_teams)
    teams = [_core.openmp_teams(), child_teams]
    print(json.dumps({"parent": in_parent, "children": in_children, "pid": os.getpid(),
                      "openmp_teams": teams}))
"""


@needs_threads
@pytest.mark.parametrize("teams", ["pool", "openmp"])
def test_forked_children_run_the_kernels_after_the_parent_used_threads(teams):
    """On fusedrnn's own pool (the default) and on OpenMP's threads (what fusedrnn.torch asks
    for): the children run on a pool of their own either way."""
    setup = "_core.set_openmp_teams(True)" if teams == "openmp" else ""
    result = run_script(FORK_SCRIPT.replace("# {setup}", setup), timeout=30)
    assert result["openmp_teams"] == [teams == "openmp", False]  # in the parent, in a child
    parent_y, parent_dx, parent_pid = result["parent"]
    assert parent_pid == result["pid"]
    assert len(result["children"]) == 4
    for y, dx, pid in result["children"]:
        assert pid != parent_pid
        assert (y, dx) == (parent_y, parent_dx)  # float64 sums: bit for bit, threads or not


# ---------------------------------------------------------------- Ctrl-C

# The script starts `call` on the main thread, sends itself SIGINT `delay` seconds later from
# another thread, and reports how it ended, how long after SIGINT, and the pool's bytes after the
# call (twice: a leaked buffer would not come back); `check` then shows a call after it works.
INTERRUPT_SCRIPT = """
    import gc, json, os, signal, threading, time
    import numpy as np
    import fusedrnn
    from fusedrnn import _core, functional

    # Ctrl-C as an interactive Python has it, whatever the parent left: Python keeps SIGINT
    # ignored when it starts ignored, as in a job a script put in the background with &.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    {setup}

    def interrupted_call():
        sent = {{}}

        def interrupt():
            time.sleep({delay})
            sent["at"] = time.perf_counter()
            os.kill(os.getpid(), signal.SIGINT)

        timer = threading.Thread(target=interrupt)
        fusedrnn.empty_cache()
        timer.start()
        try:
            call()
            outcome = "returned"
        except KeyboardInterrupt:
            outcome = "KeyboardInterrupt"
        end = time.perf_counter()
        timer.join()
        gc.collect()
        return outcome, end - sent["at"], _core.cached_bytes()

    first = interrupted_call()
    second = interrupted_call()
    check()  # a call after the interrupts
    print(json.dumps({{"first": first, "second": second}}))
"""

LSTM_SETUP = """
    # One layer over 40,000 steps at H=512, batch 1 (seconds of work); eval mode keeps the
    # memory small (no workspace).
    layer = fusedrnn.LSTM(16, 512, dtype=np.float32, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((40000, 1, 16)).astype(np.float32)
    small = fusedrnn.LSTM(16, 512, dtype=np.float32, seed=0).eval()

    def call():
        layer(x)

    def check():
        y, _ = small(x[:5])
        expected, _ = fusedrnn.LSTM(16, 512, dtype=np.float32, seed=0, backend="reference").eval()(
            x[:5]
        )
        assert np.allclose(y, expected, rtol=1e-4, atol=1e-5)
"""

# The attention calls are sized for the fastest CPU seen (a 2026 Xeon with AVX-512: 0.30 s per
# head of the forward over 16,384 positions, 0.18 s of the backward over 8,192), so that SIGINT,
# sent after 0.2 s, lands inside the call: 16 heads, some seconds of work there.
ATTENTION_SETUP = """
    # Self-attention over 16,384 positions in 16 heads.
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 16, 16384, 64)).astype(np.float32) for _ in range(3))

    def call():
        functional.attention_forward(q, k, v)

    def check():
        out, _ = functional.attention_forward(q[:, :, :64], k[:, :, :64], v[:, :, :64])
        expected, _ = fusedrnn.reference.attention_forward(
            q[:, :, :64].astype(np.float64), k[:, :, :64].astype(np.float64),
            v[:, :, :64].astype(np.float64)
        )
        assert np.allclose(out, expected, rtol=1e-4, atol=1e-5)
"""

ATTENTION_BACKWARD_SETUP = """
    # Its backward over 8,192 positions in 16 heads. The heads are copies of one, so one head's
    # forward gives every head's out and lse (the setup stays short).
    rng = np.random.default_rng(0)
    one_head = [rng.standard_normal((1, 1, 8192, 64)).astype(np.float32) for _ in range(3)]
    out, lse = (np.repeat(a, 16, axis=1) for a in functional.attention_forward(*one_head))
    q, k, v = (np.repeat(a, 16, axis=1) for a in one_head)
    d_out = np.ones_like(out)

    def call():
        functional.attention_backward(q, k, v, out, lse, d_out)

    def check():
        small = [a[:, :, :64] for a in (q, k, v)]
        out, lse = functional.attention_forward(*small)
        dq, dk, dv = functional.attention_backward(*small, out, lse, d_out[:, :, :64])
        expected = fusedrnn.reference.attention_backward(
            *(a.astype(np.float64) for a in small),
            out.astype(np.float64), lse.astype(np.float64), d_out[:, :, :64].astype(np.float64)
        )
        for got, want in zip((dq, dk, dv), expected):
            assert np.allclose(got, want, rtol=1e-3, atol=1e-4)
"""

# What the issue asks is about 0.1 s; the bound leaves room for a loaded machine and the
# sanitizers' slowdown, and stays far below the seconds the uninterrupted calls take.
RESPONSE_BOUND = 1.0 if under_asan else 0.5


@pytest.mark.parametrize(
    "setup",
    [LSTM_SETUP, ATTENTION_SETUP, ATTENTION_BACKWARD_SETUP],
    ids=["lstm", "attention", "attention_backward"],
)
def test_ctrl_c_stops_a_long_kernel_promptly_and_frees_its_memory(setup):
    script = textwrap.dedent(INTERRUPT_SCRIPT).format(setup=textwrap.dedent(setup), delay=0.2)
    result = run_script(script, timeout=120)
    for key in ("first", "second"):
        outcome, response, cached = result[key]
        assert outcome == "KeyboardInterrupt", result
        assert response < RESPONSE_BOUND, f"KeyboardInterrupt {response:.3f} s after SIGINT"
        assert cached > 0, "the stopped call's buffers did not come back to the pool"
    # The second call took the buffers the first gave back, and gave them back again.
    assert result["second"][2] == result["first"][2], result


# ---------------------------------------------------------------- empty_cache

EMPTY_CACHE_SCRIPT = """
    import gc, json, os
    import numpy as np
    import fusedrnn
    from fusedrnn import functional

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def rss_mib():
        gc.collect()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 256)).astype(np.float32)
    w = rng.standard_normal((512, 256)).astype(np.float32)
    functional.linear_forward(x[:8], w, None)  # warm: the kernels' own first-call memory
    fusedrnn.empty_cache()
    before = rss_mib()
    # Outputs of 4 MiB each, 400 MiB in all, held at once and then freed: below glibc's largest
    # mmap threshold, so after the first is freed the others come from its heap.
    outputs = [functional.linear_forward(x, w, None) for _ in range(100)]
    for y in outputs:
        y[:] = 1  # touched: resident
    peak = rss_mib()
    del outputs, y
    freed = rss_mib()
    fusedrnn.empty_cache()
    after = rss_mib()
    print(json.dumps({"before": before, "peak": peak, "freed": freed, "after": after}))
"""


@pytest.mark.skipif(under_asan, reason="ASan's quarantine keeps freed memory resident")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_empty_cache_gives_the_memory_back_to_the_system():
    rss = run_script(EMPTY_CACHE_SCRIPT)
    assert rss["peak"] - rss["before"] > 350, rss  # the outputs were resident
    assert rss["after"] - rss["before"] < 40, rss  # and are given back


# ---------------------------------------------------------------- idle threads

IDLE_SCRIPT = """
    import json, time
    {first_import}
    import numpy as np
    import fusedrnn
    from fusedrnn import _core

    fusedrnn.set_num_threads(2)
    _core._set_team_thresholds(0, 1, False)  # the time loops on a team of two
    layer = fusedrnn.GRU(16, 64, dtype=np.float32, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((20, 4, 16)).astype(np.float32)
    layer(x)
    idle_cpu = 0.0
    for _ in range(10):
        layer(x)
        before = time.process_time()
        time.sleep(0.05)  # the process waits: its idle threads should too
        idle_cpu += time.process_time() - before
    idle_threads = fusedrnn._config.config()["idle_threads"]
    print(json.dumps({{"idle_cpu": idle_cpu, "idle_threads": idle_threads}}))
"""


@needs_threads
@pytest.mark.parametrize("first", ["fusedrnn", "torch"], ids=["alone", "torch_imported_first"])
def test_idle_threads_leave_the_cores_whichever_library_loaded_first(first):
    """Between calls the kernels' worker threads give their cores back within a millisecond,
    also when PyTorch loaded libgomp (and read its GOMP_SPINCOUNT) before fusedrnn; show_config
    says what is in force. (Before, libgomp's idle threads spun after every call: 4.5 ms of CPU
    per call alone, 10 ms with PyTorch first, measured on a 2-core Zen 3.)"""
    if first == "torch":
        pytest.importorskip("torch")
    result = run_script(
        IDLE_SCRIPT.format(first_import="import torch" if first == "torch" else ""), timeout=60
    )
    assert result["idle_cpu"] < 0.02, f"{result['idle_cpu'] * 1e3:.1f} ms of CPU in 10 idle waits"
    assert "GOMP_SPINCOUNT does not apply" in result["idle_threads"]


# ---------------------------------------------------------------- a team without its cores

STALL_SCRIPT = """
    import json, os, threading, time
    import numpy as np
    import fusedrnn
    from fusedrnn import _core

    cpus = sorted(os.sched_getaffinity(0))[:{cpus}]
    os.sched_setaffinity(0, cpus)  # the team's two threads, and the neighbour if any
    fusedrnn.set_num_threads(1)
    layer = fusedrnn.GRU(16, 64, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((50, 4, 16))
    alone = layer(x)[0]
    fusedrnn.set_num_threads(2)
    _core._set_team_thresholds(0, 1, {pause})  # the time loops on a team of two

    done = threading.Event()

    def neighbour():  # another library's thread in this process: numpy's ufunc loop runs
        big = np.ones(1 << 20)  # without the GIL, so it takes a core
        while not done.is_set():
            np.sin(big, out=big)

    thread = threading.Thread(target=neighbour) if {neighbour} else None
    if thread:
        thread.start()
    same = True
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:  # until a pause has run calls alone, or 10 windows
            same = same and bool(np.array_equal(layer(x)[0], alone))
            stalls = _core.team_stalls()
            if stalls["calls_alone"] >= 3 or stalls["windows_judged"] >= 10:
                break
    finally:
        done.set()
        if thread:
            thread.join()
    print(json.dumps({{**_core.team_stalls(), "same": same}}))
"""


def stall_script(pause: bool, neighbour: bool) -> str:
    """A GRU on a team of two without a core of its own: on one CPU, or on two CPUs beside a
    thread of the same process that keeps one busy (``neighbour``)."""
    return STALL_SCRIPT.format(pause=pause, neighbour=neighbour, cpus=2 if neighbour else 1)


@needs_threads
@pytest.mark.parametrize("pause", [True, False], ids=["pausing", "not_pausing"])
def test_a_team_stalled_by_a_member_without_a_core_runs_alone_for_a_while(pause):
    """A team whose member has no core of its own (here: two threads on one CPU, as when another
    program holds the other core) waits at every step's barrier for a member that is not
    running. The calling thread notices (its members waited past their spinning for a quarter
    of the team's time or more), runs its next calls on one thread for a pause, then tries the
    team again: `team_stalls` counts both. The results are the same bits either way. With the
    pauses turned off (the testing knob), every call runs on the team."""
    result = run_script(stall_script(pause, neighbour=False), timeout=60)
    assert result["same"], "a call on the stalled team or alone changed the results"
    assert result["teams_stalled"] >= 1, result
    if pause:
        assert result["calls_alone"] >= 3, result
        assert result["pause_us"] >= 20_000, result
    else:
        assert result["calls_alone"] == 0, result


@needs_threads
@pytest.mark.parametrize("pause", [True, False], ids=["pausing", "not_pausing"])
def test_a_team_stalled_by_a_thread_of_this_process_runs_alone_for_a_while(pause):
    """The team's stalls are told by its members' own CPU clocks, so a thread of another
    library in the same process that takes a core (here numpy's ufunc loop; in the field
    OpenBLAS's or onnxruntime's threads spinning after their calls) is seen. Before, the
    process's CPU clock counted that thread's time as the team's: a GRU at B=1 ran 2x slower on
    two threads than on one, and only a window now and then (the clock's ticks) read stalled;
    with the pauses off, most windows must."""
    result = run_script(stall_script(pause, neighbour=True), timeout=60)
    assert result["same"], "a call on the stalled team or alone changed the results"
    if pause:
        assert result["teams_stalled"] >= 1, result
        assert result["calls_alone"] >= 3, result
    else:
        assert result["windows_judged"] >= 10, result
        assert result["teams_stalled"] >= 7, result
