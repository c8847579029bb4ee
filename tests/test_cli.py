"""``python -m fusedrnn bench``: the command line, on tiny cases so each test takes seconds.

The sweeps themselves take minutes; these tests run the same code on the hidden ``--cases`` list
(``VARIANT:B,T,I,H``) with one timed call, the GEMM ceiling measured on a small matrix and no
pause between libraries.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from fusedrnn import __main__ as cli
from fusedrnn import bench, functional

TINY = "lstm:2,3,4,5;gru:2,3,4,5;gru-cho:2,3,4,5;rnn:2,3,4,5"
COLUMNS = ["case", "B", "T", "I", "H", "pass", "check", "fused ms", "ref ms", "torch ms", "x ref",
           "x torch", "GFLOP/s", "% peak", "workspace", "process peak"]


@pytest.fixture(autouse=True)
def fast_timing(monkeypatch):
    """A 256^3 GEMM for the ceiling instead of 2048^3, and no pause between libraries."""
    monkeypatch.setattr(bench.machine, "GEMM_SIZE", 256)
    monkeypatch.setattr(bench.timing, "SETTLE_SECONDS", 0.0)


@pytest.fixture
def no_torch(monkeypatch):
    """Make ``import torch`` fail, as on a machine without PyTorch."""
    monkeypatch.setitem(sys.modules, "torch", None)


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``fusedrnn ARGS`` in-process; return the exit code, stdout and stderr."""
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str) -> list[list[str]]:
    """The table's lines (header row first) split on runs of two or more spaces."""
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    return [re.split(r"\s{2,}", line.strip()) for line in lines if not line.startswith("mismatch")]


def test_table_has_every_column_and_a_row_per_pass(capsys):
    code, out, err = run(capsys, "bench", "--cases", TINY, "--repeats", "1")
    assert code == 0, err
    header, *rows = table_rows(out)
    assert header == COLUMNS
    assert len(rows) == 4 * 2  # B=2: forward and forward+backward
    assert {row[0] for row in rows} == {"lstm", "gru", "gru-cho", "rnn"}
    assert all(row[6] == "ok" for row in rows)
    assert "GEMM ceiling" in out and "ISA" in out and "BLAS" in out
    assert "\r[" in err  # the progress bar, on stderr only


def test_b1_case_adds_the_inference_pass(capsys, no_torch):
    code, out, _ = run(capsys, "bench", "--cases", "lstm:1,3,4,5", "--repeats", "1")
    assert code == 0
    passes = [row[5] for row in table_rows(out)[1:]]
    assert passes == ["forward", "forward+backward", "inference"]


def test_without_torch_the_column_says_not_installed(capsys, no_torch):
    code, out, _ = run(capsys, "bench", "--cases", "gru:2,3,4,5", "--repeats", "1")
    assert code == 0
    rows = table_rows(out)[1:]
    assert all(row[COLUMNS.index("torch ms")] == "not installed" for row in rows)
    assert "PyTorch: not installed" in out


def test_cho_gru_has_no_torch_equivalent(capsys):
    pytest.importorskip("torch")
    code, out, _ = run(capsys, "bench", "--cases", "gru-cho:2,3,4,5;gru:2,3,4,5", "--repeats", "1")
    assert code == 0
    torch_ms = {row[0]: row[COLUMNS.index("torch ms")] for row in table_rows(out)[1:]}
    assert torch_ms["gru-cho"] == "n/a"
    assert float(torch_ms["gru"]) > 0


def test_json_has_rows_and_the_machine(capsys, tmp_path, no_torch):
    path = tmp_path / "bench.json"
    code, _, _ = run(capsys, "bench", "--cases", "rnn:2,3,4,5", "--repeats", "1", "--json",
                     str(path))
    assert code == 0
    data = json.loads(path.read_text())
    assert data["config"]["isa"] and data["config"]["blas"]
    assert data["gemm_ceiling_gflops"] > 0
    assert [row["pass_name"] for row in data["rows"]] == ["forward", "forward+backward"]
    row = data["rows"][1]
    assert row["check"] == "ok" and row["fused_ms"] > 0 and row["reference_ms"] > 0
    assert row["flops"] == bench.flops("rnn", 3, 2, 4, 5, "forward+backward")
    assert row["torch_ms"] is None and row["torch_status"] == "not installed"
    if os.path.exists("/proc/self/clear_refs"):  # Linux: the peak of the first fused call
        assert row["process_peak_bytes"] > 0 and row["peak_bytes"] >= 0


def test_a_wrong_fused_result_is_a_fail_and_not_timed(capsys, monkeypatch, no_torch):
    real = functional.lstm_forward

    def off_by_one(*args, **kwargs):
        y, h_n, c_n, workspace = real(*args, **kwargs)
        return y + 1, h_n, c_n, workspace

    monkeypatch.setattr(functional, "lstm_forward", off_by_one)
    code, out, err = run(capsys, "bench", "--cases", "lstm:2,3,4,5;rnn:2,3,4,5", "--repeats", "1")
    assert code == 1
    assert "failed validation" in err
    rows = {(row[0], row[5]): row for row in table_rows(out)[1:]}
    for pass_name in ("forward", "forward+backward"):
        row = rows["lstm", pass_name]
        assert row[COLUMNS.index("check")] == "FAIL"
        assert row[COLUMNS.index("fused ms")] == "-"
        assert row[COLUMNS.index("ref ms")] == "-"
    assert rows["rnn", "forward"][COLUMNS.index("check")] == "ok"
    assert "mismatch, lstm B=2 T=3 I=4 H=5 forward: fused y: max |error|" in out


def test_a_wrong_torch_result_leaves_torch_out_of_the_row(capsys, monkeypatch):
    pytest.importorskip("torch")
    real = bench.torch_pass

    def wrong_y(*args, **kwargs):
        call = real(*args, **kwargs)
        return lambda: {**call(), "y": np.zeros(1)}

    monkeypatch.setattr(bench.implementations, "torch_pass", wrong_y)
    code, out, _ = run(capsys, "bench", "--cases", "rnn:2,3,4,5", "--repeats", "1")
    assert code == 0  # the fused kernels are fine
    for row in table_rows(out)[1:]:
        assert row[COLUMNS.index("check")] == "ok"
        assert row[COLUMNS.index("torch ms")] == "FAIL"
        assert row[COLUMNS.index("x torch")] == "-"
    assert "mismatch, rnn B=2 T=3 I=4 H=5 forward: torch y: shape (1,)" in out


def test_compare_uses_dtype_tolerances():
    expected = {"y": np.array([1.0, 2.0, -4.0])}
    close32 = {"y": expected["y"] * (1 + 5e-4)}
    assert bench.compare(close32, expected, np.float32) == []
    assert bench.compare(close32, expected, np.float64) != []
    assert bench.compare({"y": np.array([1.0, 2.0])}, expected, np.float32) != []


def test_plot_without_matplotlib_gives_the_install_hint(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--cases", "rnn:2,3,4,5", "--plot", "out.png"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert 'pip install "fusedrnn[plot]"' in err
    assert "Traceback" not in err


def test_plot_writes_a_png(capsys, tmp_path, no_torch):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    code, _, _ = run(capsys, "bench", "--cases", "rnn:2,3,4,5", "--repeats", "1", "--plot",
                     str(path))
    assert code == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "nosuchcell"], "unknown cell nosuchcell"),
        (["--threads", "0"], "must be at least 1"),
        (["--threads", "two"], "expected an integer"),
        (["--repeats", "0"], "must be at least 1"),
        (["--dtype", "float16"], "invalid choice"),
        (["--quick", "--full"], "not allowed with"),
        (["--cases", "lstm:1,2,3"], "bad case"),
    ],
)
def test_bad_arguments_are_clean_argparse_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_only_keeps_the_named_cells_of_the_sweep():
    args = cli.build_parser().parse_args(["bench", "--quick", "--only", "rnn,gru-cho"])
    names = {case.variant.name for case in cli.selected_cases(args)}
    assert names == {"rnn", "gru-cho"}
    quick, default = bench.SWEEPS["quick"], bench.SWEEPS["default"]
    assert len(quick.cases) < len(default.cases)
    cells = cli.build_parser().parse_args(["bench", "--only", "gru"])
    assert {case.variant.name for case in cli.selected_cases(cells)} == {"gru", "gru-cho"}


def test_threads_are_set_for_the_run_and_restored(capsys, no_torch):
    import fusedrnn

    before = fusedrnn.get_num_threads()
    seen = []
    real = functional.rnn_forward

    def spy(*args, **kwargs):
        seen.append(fusedrnn.get_num_threads())
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(functional, "rnn_forward", spy)
        code, out, _ = run(capsys, "bench", "--cases", "rnn:2,3,4,5", "--repeats", "1",
                           "--threads", "1")
    assert code == 0
    assert set(seen) == {1}
    assert "threads: 1" in out
    assert fusedrnn.get_num_threads() == before


def test_flops_counts_each_gemm_once():
    T, B, I, H = 7, 3, 5, 4
    G = 4 * H  # LSTM
    forward = 2 * T * B * I * G + 2 * T * B * H * G
    assert bench.flops("lstm", T, B, I, H, "forward") == forward
    assert bench.flops("lstm", T, B, I, H, "inference") == forward
    backward = 2 * T * B * G * H + 2 * T * B * G * I + 2 * G * T * B * I + 2 * G * T * B * H
    assert bench.flops("lstm", T, B, I, H, "forward+backward") == forward + backward
    with pytest.raises(ValueError):
        bench.flops("lstm", T, B, I, H, "sideways")


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "fusedrnn", "bench", "--cases", "rnn:1,2,3,4", "--repeats", "1"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "rnn" in result.stdout and "inference" in result.stdout


# ---------------------------------------------------------------- attention rows


def test_attention_rows_are_validated_and_timed(capsys):
    code, out, err = run(capsys, "bench", "--cases", "attention:2,9,4,3;attention-causal:2,9,4,3",
                         "--repeats", "1")
    assert code == 0, err
    _, *rows = table_rows(out)
    assert [(row[0], row[5]) for row in rows] == [
        ("attention", "forward"), ("attention", "forward+backward"),
        ("attention-causal", "forward"), ("attention-causal", "forward+backward")]
    assert all(row[6] == "ok" for row in rows)
    assert "T = L queries and keys, I = E head size, H heads" in out
    # the saved state: out and one lse per query row, (2*3*9*(4+1)) float32
    assert all(row[-2] == bench.report._fmt_bytes(2 * 3 * 9 * 5 * 4) for row in rows)


def test_a_wrong_attention_result_is_a_fail(capsys, monkeypatch, no_torch):
    real = functional.attention_backward

    def wrong(*args, **kwargs):
        dq, dk, dv = real(*args, **kwargs)
        return dq, dk, dv * 1.01

    monkeypatch.setattr(functional, "attention_backward", wrong)
    code, out, _ = run(capsys, "bench", "--cases", "attention:1,8,4,2", "--repeats", "1")
    assert code == 1
    assert "mismatch, attention B=1 H=2 L=8 E=4 forward+backward: fused dv" in out


def test_only_attention_keeps_both_attention_rows_of_the_issue():
    args = cli.build_parser().parse_args(["bench", "--only", "attention"])
    shapes = {(c.variant.name, c.B, c.H, c.T, c.I) for c in cli.selected_cases(args)}
    assert shapes == {(name, B, H, L, E) for name in ("attention", "attention-causal")
                      for B, H, L, E in ((8, 8, 256, 64), (4, 8, 1024, 64))}


def test_attention_flops():
    B, H, L, E = 2, 3, 5, 4
    assert bench.attention_flops(B, H, L, E, False, "forward") == 2 * (2 * B * H * L * L * E)
    assert bench.attention_flops(B, H, L, E, False, "forward+backward") == 7 * (2 * B * H * L * L * E)
    assert bench.attention_flops(B, H, L, E, True, "forward") == 2 * (2 * B * H * 15 * E)
    with pytest.raises(ValueError):
        bench.attention_flops(B, H, L, E, False, "inference")


def test_stack_rows_validate_against_reference_and_torch(capsys):
    """The layers' path: a 2-layer bidirectional LSTM and a variable-lengths batch (PyTorch with
    packed sequences when installed)."""
    code, out, err = run(capsys, "bench", "--cases", "lstm-2layer-bidir:3,5,4,6;lstm-lengths:5,6,4,6",
                         "--repeats", "1")
    assert code == 0, err
    _, *rows = table_rows(out)
    assert [row[0] for row in rows] == ["lstm-2layer-bidir"] * 2 + ["lstm-lengths"] * 2
    assert all(row[6] == "ok" for row in rows)
    torch_ms = [row[9] for row in rows]
    assert all(ms == "not installed" for ms in torch_ms) or all(re.match(r"[\d.]+$", ms) for ms in torch_ms)


def test_stack_flops_add_up_layers_and_directions():
    case = bench.Case(bench.VARIANTS["lstm-2layer-bidir"], 4, 10, 8, 6)
    one = bench.flops("lstm", 10, 4, 8, 6, "forward+backward")
    upper = bench.flops("lstm", 10, 4, 2 * 6, 6, "forward+backward")
    assert case.flops("forward+backward") == 2 * one + 2 * upper


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_memory_peak_sees_memory_held_only_inside_the_block():
    """64 MiB touched and freed inside the block: the peak saw it, although the process holds
    it no more."""
    size = 64 << 20
    with bench.MemoryPeak() as peak:
        block = np.ones(size // 8)
        del block
    assert peak.added_bytes is not None and peak.added_bytes >= 0.9 * size
    assert peak.process_bytes >= peak.added_bytes
    with bench.MemoryPeak() as quiet:
        pass
    assert quiet.added_bytes < 0.5 * size


def test_measure_times_fast_calls_for_min_seconds_and_exactly_repeats_without():
    calls = []

    def fast():
        calls.append(None)
        time.sleep(0.001)

    exactly = bench.measure(fast, repeats=3, budget=5.0)
    assert exactly.calls == 3 and len(calls) == 4  # and the warm-up
    at_least = bench.measure(fast, repeats=3, budget=5.0, min_seconds=0.05)
    assert 20 <= at_least.calls <= 60
    capped = bench.measure(fast, repeats=3, budget=0.01, min_seconds=1.0)
    assert capped.calls <= 12


def test_reference_is_timed_on_its_share_of_the_budget(monkeypatch):
    clock = [0.0]  # every call takes exactly 10 ms of a fake clock, however busy the machine
    monkeypatch.setattr(bench.timing.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench.timing.time, "sleep", lambda seconds: None)

    def takes_10_ms():
        clock[0] += 0.01

    row = bench.Row(case="lstm", cell="lstm", B=1, T=1, I=1, H=1, pass_name="forward",
                    dtype="float32", flops=1, workspace_bytes=None)
    budget = 0.2
    bench.runner._time_calls(row, {"fused": takes_10_ms, "reference": takes_10_ms}, repeats=100,
                      budget=budget, ceiling=1.0)
    assert row.calls["fused"] == pytest.approx(budget / 0.01, abs=1)
    assert row.calls["reference"] == pytest.approx(
        bench.REFERENCE_BUDGET_SHARE * budget / 0.01, abs=1)


def test_measure_takes_a_call_already_made_as_its_warm_up():
    calls = []

    def fast():
        calls.append(None)

    timed = bench.measure(fast, repeats=3, budget=5.0, warm_up=0.001)
    assert timed.calls == 3 and len(calls) == 3  # no call of its own before the timed ones
    calls.clear()
    slow = bench.measure(fast, repeats=3, budget=1.0, warm_up=2.0)
    assert (slow.seconds, slow.calls, len(calls)) == (2.0, 1, 0)  # that call is the measurement
