"""``python -m fusedrnn bench``: the command line, on tiny cases so each test takes seconds.

The sweeps themselves take a minute or more; these tests run the same code on the hidden
``--cases`` list (``VARIANT:B,T,I,H``) with one timed call, the GEMM ceiling measured on a small
matrix and no pause between libraries. Nothing here depends on how fast the machine is: the
table's layout for the named sweeps is checked on a `Report` of made-up numbers.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from fusedrnn import __main__ as cli
from fusedrnn import _core, bench, functional

TINY = "lstm:2,3,4,5;gru:2,3,4,5;gru-cho:2,3,4,5;rnn:2,3,4,5"
COLUMNS = [
    "case",
    "B",
    "T",
    "I",
    "H",
    "pass",
    "fused ms",
    "spread",
    "torch ms",
    "x ref",
    "x torch",
    "GFLOP/s",
    "% peak",
    "saved",
]
NO_TORCH_COLUMNS = [c for c in COLUMNS if c not in ("torch ms", "x torch")]
HAS_TORCH = bench.import_torch() is not None


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


def table(out: str) -> tuple[list[str], list[dict[str, str]]]:
    """The table's column names and its rows as {column: cell}: the lines from the one that
    starts with ``case`` to the first empty, footnote (``*``) or ``mismatch`` line, split on runs
    of two or more spaces."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("case "))
    header = re.split(r"\s{2,}", lines[start].strip())
    rows = []
    for line in lines[start + 1 :]:
        if not line or line.startswith(("*", "mismatch")):
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return header, rows


def table_rows(out: str) -> list[dict[str, str]]:
    return table(out)[1]


def unwrapped(text: str) -> str:
    """``text`` with the header's wrapped lines (continued after ``#   ``) joined again."""
    return text.replace("\n#   ", " ")


def test_table_has_every_column_and_a_row_per_pass(capsys):
    code, out, err = run(capsys, "bench", "--cases", TINY, "--repeats", "1")
    assert code == 0, err
    header, rows = table(out)
    assert header == (COLUMNS if HAS_TORCH else NO_TORCH_COLUMNS)
    assert len(rows) == 4 * 2  # B=2: forward and forward+backward
    assert {row["case"] for row in rows} == {"lstm", "gru", "gru-cho", "rnn"}
    assert all(float(row["fused ms"]) > 0 for row in rows)  # validated, then timed
    assert "GEMM ceiling" in out and "ISA" in out and "BLAS" in out
    # the progress, on stderr only, from the first step on; a line per step when not a terminal
    progress = err.splitlines()
    assert "importing PyTorch" in progress[0] and "1/10" in progress[1]
    assert "measuring the float32 GEMM ceiling" in progress[1]
    assert "9/10" in progress[-1] and "rnn B=2 T=3 I=4 H=5 forward+backward" in progress[-1]
    assert "[" not in out


def test_progress_rewrites_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = bench.Progress(2, stream)
    bar.show("first")
    bar.step()
    bar.show("second")
    bar.close()
    text = stream.getvalue()
    assert "\n" not in text and text.count("\r") == 4  # two bars, erased at the end
    assert "0/2" in text and "1/2" in text and text.endswith("\r")


def test_b1_case_adds_the_inference_pass(capsys, no_torch):
    code, out, _ = run(capsys, "bench", "--cases", "lstm:1,3,4,5", "--repeats", "1")
    assert code == 0
    passes = [row["pass"] for row in table_rows(out)]
    assert passes == ["fwd", "fwd+bwd", "infer"]


def test_without_torch_one_line_says_how_to_add_it(capsys, no_torch):
    code, out, _ = run(capsys, "bench", "--cases", "gru:2,3,4,5", "--repeats", "1")
    assert code == 0
    header, rows = table(out)
    assert header == NO_TORCH_COLUMNS and len(rows) == 2
    assert all("not installed" not in cell for row in rows for cell in row.values())
    hint = [line for line in out.splitlines() if "pip install torch" in line]
    assert hint and "PyTorch is not installed" in hint[0] and "torch==2.13.0" in hint[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in out
    assert "x torch" not in out  # nor in the legend
    assert "vs PyTorch    not measured: PyTorch is not installed" in out


def test_cho_gru_has_no_torch_equivalent(capsys):
    pytest.importorskip("torch")
    code, out, _ = run(capsys, "bench", "--cases", "gru-cho:2,3,4,5;gru:2,3,4,5", "--repeats", "1")
    assert code == 0
    torch_ms = {row["case"]: row["torch ms"] for row in table_rows(out)}
    assert torch_ms["gru-cho"] == "n/a"
    assert float(torch_ms["gru"]) > 0


def test_json_has_rows_and_the_machine(capsys, tmp_path, no_torch):
    path = tmp_path / "bench.json"
    code, out, _ = run(
        capsys, "bench", "--cases", "rnn:2,3,4,5", "--repeats", "1", "--json", str(path)
    )
    assert code == 0
    assert f"wrote every row and the machine configuration to {path}" in out
    data = json.loads(path.read_text())
    assert data["config"]["isa"] and data["config"]["blas"]
    assert data["gemm_ceiling_gflops"] == max(data["gemm_ceiling_measurements"]) > 0
    assert [row["pass_name"] for row in data["rows"]] == ["forward", "forward+backward"]
    row = data["rows"][1]
    assert row["check"] == "ok" and row["fused_ms"] > 0 and row["reference_ms"] > 0
    assert 0 < row["fused_min_ms"] <= row["fused_ms"] and row["spread"] >= 1.0
    assert 0 < row["reference_min_ms"] <= row["reference_ms"]
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
    rows = {(row["case"], row["pass"]): row for row in table_rows(out)}
    for pass_name in ("fwd", "fwd+bwd"):
        row = rows["lstm", pass_name]
        assert row["fused ms"] == "FAIL"
        assert row["spread"] == "-" and row["x ref"] == "-"
    assert float(rows["rnn", "fwd"]["fused ms"]) > 0
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
    for row in table_rows(out):
        assert float(row["fused ms"]) > 0
        assert row["torch ms"] == "FAIL"
        assert row["x torch"] == "-"
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
    code, out, _ = run(
        capsys, "bench", "--cases", "rnn:2,3,4,5", "--repeats", "1", "--plot", str(path)
    )
    assert code == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote the plot to {path}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "nosuchcell"], "unknown cell nosuchcell"),
        (["--threads", "0"], "must be at least 1"),
        (["--threads", "two"], "expected an integer"),
        (["--repeats", "0"], "must be at least 1"),
        (["--dtype", "float16"], "invalid choice"),
        (["--full", "--deepbench"], "not allowed with"),
        (["--cases", "lstm:1,2,3"], "bad case"),
        (["--isa", "sse2"], "invalid choice"),
    ],
)
def test_bad_arguments_are_clean_argparse_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_only_keeps_the_named_cells_of_the_sweep():
    args = cli.build_parser().parse_args(["bench", "--full", "--only", "rnn,gru-cho"])
    names = {case.variant.name for case in cli.selected_cases(args)}
    assert names == {"rnn", "gru-cho"}
    cells = cli.build_parser().parse_args(["bench", "--full", "--only", "gru"])
    assert {case.variant.name for case in cli.selected_cases(cells)} == {"gru", "gru-cho"}
    default = cli.build_parser().parse_args(["bench", "--only", "gru"])
    assert {case.variant.name for case in cli.selected_cases(default)} == {"gru"}


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
        code, out, _ = run(
            capsys, "bench", "--cases", "rnn:2,3,4,5", "--repeats", "1", "--threads", "1"
        )
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
    with pytest.raises(ValueError, match=r"pass_name must be one of .*, got 'sideways'"):
        bench.flops("lstm", T, B, I, H, "sideways")


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "fusedrnn", "bench", "--cases", "rnn:1,2,3,4", "--repeats", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [(row["case"], row["pass"]) for row in table_rows(result.stdout)] == [
        ("rnn", "fwd"),
        ("rnn", "fwd+bwd"),
        ("rnn", "infer"),
    ]
    assert "importing PyTorch" in result.stderr.splitlines()[0]


@pytest.mark.skipif(not _core.isa_supported("avx2"), reason="needs a CPU with AVX2 and FMA")
def test_isa_limits_the_run_and_the_other_libraries_to_it(tmp_path):
    """--isa avx2 runs the bench in a second process on fusedrnn's AVX2 path, with OpenBLAS
    (and PyTorch, when installed) limited to AVX2 by their environment variables."""
    result = subprocess.run(
        [sys.executable, "-m", "fusedrnn", "bench", "--isa", "avx2", "--cases", "rnn:1,2,3,4",
         "--repeats", "1", "--json", str(tmp_path / "run.json")],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header = [line for line in result.stdout.splitlines() if line.startswith("#")]
    assert "ISA: avx2 forced (--isa)" in header[1]
    assert "OPENBLAS_CORETYPE=Haswell" in " ".join(header)
    assert "Haswell" in next(line for line in header if line.startswith("# BLAS:"))
    if "PyTorch:" in " ".join(header):
        assert "AVX2 kernels" in " ".join(header)
    assert [row["pass"] for row in table_rows(result.stdout)] == ["fwd", "fwd+bwd", "infer"]
    config = json.loads((tmp_path / "run.json").read_text())["config"]
    assert config["isa"] == "avx2" and config["isa_forced"].startswith("avx2 forced")


def test_isa_the_cpu_lacks_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(_core, "isa_supported", lambda name: name == "baseline")
    assert cli.main(["bench", "--isa", "avx512", "--cases", "rnn:1,2,3,4"]) == 2
    err = capsys.readouterr().err
    assert "--isa avx512: this CPU or build has no avx512 path (it has baseline)" in err


# ---------------------------------------------------------------- attention rows


def test_attention_rows_are_validated_and_timed(capsys):
    code, out, err = run(
        capsys, "bench", "--cases", "attention:2,9,4,3;attention-causal:2,9,4,3", "--repeats", "1"
    )
    assert code == 0, err
    rows = table_rows(out)
    assert [(row["case"], row["pass"]) for row in rows] == [
        ("attention", "fwd"),
        ("attention", "fwd+bwd"),
        ("attention-causal", "fwd"),
        ("attention-causal", "fwd+bwd"),
    ]
    assert all(float(row["fused ms"]) > 0 for row in rows)
    assert "(B, H, T, I) = (batch, heads, L queries and keys, E head size)" in out
    # the saved state: out and one lse per query row, (2*3*9*(4+1)) float32
    assert all(row["saved"] == bench.report._fmt_bytes(2 * 3 * 9 * 5 * 4) for row in rows)


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
    args = cli.build_parser().parse_args(["bench", "--full", "--only", "attention"])
    shapes = {(c.variant.name, c.B, c.H, c.T, c.I) for c in cli.selected_cases(args)}
    assert shapes == {
        (name, B, H, L, E)
        for name in ("attention", "attention-causal", "attention-window")
        for B, H, L, E in ((8, 8, 256, 64), (4, 8, 1024, 64))
    } | {
        (name, B, 8, 1024, 64) for name in ("attention-decode", "attention-nocache") for B in (1, 4)
    }


def test_attention_flops():
    B, H, L, E = 2, 3, 5, 4
    assert bench.attention_flops(B, H, L, E, False, "forward") == 2 * (2 * B * H * L * L * E)
    full = 7 * (2 * B * H * L * L * E)
    assert bench.attention_flops(B, H, L, E, False, "forward+backward") == full
    assert bench.attention_flops(B, H, L, E, True, "forward") == 2 * (2 * B * H * 15 * E)
    with pytest.raises(ValueError, match="for attention, got 'inference'"):
        bench.attention_flops(B, H, L, E, False, "inference")


def test_stack_rows_validate_against_reference_and_torch(capsys):
    """The layers' path: a 2-layer bidirectional LSTM and a variable-lengths batch (PyTorch with
    packed sequences when installed)."""
    code, out, err = run(
        capsys,
        "bench",
        "--cases",
        "lstm-2layer-bidir:3,5,4,6;lstm-lengths:5,6,4,6",
        "--repeats",
        "1",
    )
    assert code == 0, err
    rows = table_rows(out)
    assert [row["case"] for row in rows] == ["lstm-2layer-bidir"] * 2 + ["lstm-lengths"] * 2
    assert all(float(row["fused ms"]) > 0 for row in rows)
    if HAS_TORCH:
        assert all(float(row["torch ms"]) > 0 for row in rows)


def test_layer_norm_rows_validate_against_reference_and_torch(capsys):
    """The layer-normalised LSTM and GRU (PyTorch: the per-step module) and LayerNorm
    (PyTorch: torch.nn.LayerNorm), every pass of a B=1 case and the training ones of a batch."""
    code, out, err = run(
        capsys,
        "bench",
        "--cases",
        "ln-lstm:1,5,4,6;ln-gru:3,5,4,6;layer-norm:3,5,7,7",
        "--repeats",
        "1",
    )
    assert code == 0, err
    rows = table_rows(out)
    assert [(row["case"], row["pass"]) for row in rows] == [
        ("ln-lstm", "fwd"),
        ("ln-lstm", "fwd+bwd"),
        ("ln-lstm", "infer"),
        ("ln-gru", "fwd"),
        ("ln-gru", "fwd+bwd"),
        ("layer-norm", "fwd"),
        ("layer-norm", "fwd+bwd"),
    ]
    assert all(float(row["fused ms"]) > 0 for row in rows)
    if HAS_TORCH:
        assert all(float(row["torch ms"]) > 0 for row in rows)


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


def test_measure_gives_the_median_and_the_fastest_call(monkeypatch):
    """The spread of a row is its median over its fastest call: both come from the same timed
    calls (not the warm-up), whatever their order."""
    durations = iter([9.0, 0.003, 0.001, 0.002, 0.005, 0.004])  # the first: the warm-up
    clock = [0.0]
    monkeypatch.setattr(bench.timing.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench.timing.time, "sleep", lambda seconds: None)

    def call():
        clock[0] += next(durations)

    timed = bench.measure(call, repeats=5, budget=100.0)
    assert timed.calls == 5
    assert (timed.seconds, timed.minimum) == pytest.approx((0.003, 0.001), rel=1e-9)
    row = bench.Row("lstm", "lstm", 1, 1, 1, 1, "forward", "float32", 1, None)
    assert row.spread is None  # not timed
    row.fused_ms, row.fused_min_ms = timed.seconds * 1e3, timed.minimum * 1e3
    assert row.spread == pytest.approx(3.0)


def test_reference_is_timed_on_its_share_of_the_budget(monkeypatch):
    clock = [0.0]  # every call takes exactly 10 ms of a fake clock, however busy the machine
    monkeypatch.setattr(bench.timing.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench.timing.time, "sleep", lambda seconds: None)

    def takes_10_ms():
        clock[0] += 0.01

    row = bench.Row(
        case="lstm",
        cell="lstm",
        B=1,
        T=1,
        I=1,
        H=1,
        pass_name="forward",
        dtype="float32",
        flops=1,
        workspace_bytes=None,
    )
    budget = 0.2
    bench.runner._time_calls(
        row,
        {"fused": takes_10_ms, "reference": takes_10_ms},
        repeats=100,
        budget=budget,
        ceiling=1.0,
    )
    assert row.calls["fused"] == pytest.approx(budget / 0.01, abs=1)
    assert row.fused_min_ms == pytest.approx(10.0) and row.spread == pytest.approx(1.0)
    assert row.calls["reference"] == pytest.approx(
        bench.REFERENCE_BUDGET_SHARE * budget / 0.01, abs=1
    )


def test_measure_takes_a_call_already_made_as_its_warm_up():
    calls = []

    def fast():
        calls.append(None)

    timed = bench.measure(fast, repeats=3, budget=5.0, warm_up=0.001)
    assert timed.calls == 3 and len(calls) == 3  # no call of its own before the timed ones
    calls.clear()
    slow = bench.measure(fast, repeats=3, budget=1.0, warm_up=2.0)
    assert (slow.seconds, slow.calls, len(calls)) == (2.0, 1, 0)  # that call is the measurement


# ---------------------------------------------------------------- what a newcomer reads


def fake_report(cases, torch: bool = True, fused_ms: float = 12345.6) -> bench.Report:
    """A `Report` of every pass of ``cases`` with the widest numbers a run can print: a
    5-digit time in each column, 3-4 digit speed-ups and GFLOP/s, % peak over 100 with its
    footnote mark, a 4-digit MiB workspace. No timing involved."""
    rows = []
    for case in cases:
        for pass_name in case.passes:
            row = bench.Row(
                case=case.variant.name,
                cell=case.variant.cell,
                B=case.B,
                T=case.T,
                I=case.I,
                H=case.H,
                pass_name=pass_name,
                dtype="float32",
                flops=case.flops(pass_name),
                workspace_bytes=1023 * 2**20 + 1,
            )
            row.fused_ms, row.reference_ms = fused_ms, 99999.0
            row.fused_min_ms = fused_ms / 99.99  # the widest spread the column prints
            row.speedup_reference, row.gflops, row.ceiling_percent = 999.0, 9999.9, 999.0
            if torch and case.variant.in_torch:
                row.torch_ms, row.torch_status, row.speedup_torch = 99999.0, "ok", 999.0
            else:
                row.torch_status = "n/a" if torch else bench.report.TORCH_MISSING
            rows.append(row)
    config = {
        "fusedrnn": "0.1.0",
        "cpu_count": 2,
        "isa": "avx2",
        "blas": "scipy.linalg.cython_blas -> OpenBLAS 0.3.30 DYNAMIC_ARCH NO_AFFINITY "
        "Haswell MAX_THREADS=64 and a much longer description of the library",
    }
    return bench.Report(
        date="2026-12-06 12:00 UTC",
        cpu="AMD EPYC 9R14 96-Core Processor with a long name",
        threads=2,
        dtype="float32",
        gemm_ceiling_gflops=123.4,
        reference_threads="numpy's OpenBLAS limited to 2 threads",
        torch="2.13.0+cpu" if torch else bench.report.TORCH_MISSING,
        sweep="default",
        note="",
        load_average=(12.5, 13.25),
        config=config,
        rows=rows,
        gemm_ceiling_measurements=[100.0, 123.4, 110.0],
    )


@pytest.mark.parametrize("torch", [True, False], ids=["with_torch", "without_torch"])
@pytest.mark.parametrize("sweep", ["default", "full", "layer-norm", "deepbench"])
def test_every_line_of_a_named_sweep_fits_120_columns(sweep, torch):
    report = fake_report(bench.SWEEPS[sweep].cases, torch=torch)
    text = report.table() + "\n" + "\n".join(report.summary())
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120, max(lines, key=len)
    header, rows = table(report.table())
    assert len(rows) == len(report.rows)
    assert header == (COLUMNS if torch else NO_TORCH_COLUMNS)
    legend = [line for line in lines if line.startswith("# ") and ":" in line]
    assert (
        3
        <= len(
            [
                line
                for line in legend
                if line.startswith(("# ms", "# GFLOP", "# pass", "# attention"))
            ]
        )
        <= 5
    )


def test_the_default_sweep_covers_each_cell_small_and_large_in_about_20_rows():
    default = bench.SWEEPS["default"]
    shapes = {(case.variant.name, case.B) for case in default.cases}
    for cell in ("lstm", "gru", "rnn"):
        assert (cell, 1) in shapes and (cell, 32) in shapes
    assert {"lstm-2layer-bidir", "attention", "attention-causal"} <= {n for n, _ in shapes}
    assert all(case.variant.in_torch for case in default.cases)
    full = {case.label for case in bench.SWEEPS["full"].cases}
    assert {case.label for case in default.cases} <= full  # rows of the full sweep, to compare
    assert 15 <= sum(len(case.passes) for case in default.cases) <= 25


def test_over_100_percent_of_the_ceiling_gets_a_footnote():
    report = fake_report(bench.SWEEPS["default"].cases[:1])
    text = report.table()
    assert "999%*" in text
    assert text.count("* above the GEMM ceiling even after measuring it again") == 1
    assert (
        "measured at the start and again after a row read above it: 100.0, 123.4, 110.0"
        in unwrapped(text)
    )
    for row in report.rows:
        row.ceiling_percent = 99.6
    assert "*" not in report.table() and "100%" in report.table()


def test_a_row_over_the_ceiling_makes_the_run_measure_it_again(capsys, monkeypatch, no_torch):
    """The first ceiling was caught in a slow spell (made up here: 1e-6 GFLOP/s); measured again,
    it is higher, and every row's % peak is taken of the best measurement."""
    measurements = iter([1e-6, 1e6, 1.0])
    monkeypatch.setattr(bench.runner, "gemm_ceiling", lambda size: next(measurements))
    code, out, err = run(capsys, "bench", "--cases", "rnn:2,3,4,5;gru:2,3,4,5", "--repeats", "1")
    assert code == 0
    assert "measuring the ceiling again" in err
    assert "measured at the start and again after a row read above it: 0.0, 1000000.0" in unwrapped(
        out
    )
    assert "*" not in "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    rows = table_rows(out)
    assert all(row["% peak"] == "0%" for row in rows)


def test_a_row_still_over_the_ceiling_is_marked_and_the_ceiling_measured_at_most_thrice(
    capsys, monkeypatch, no_torch
):
    calls = []

    def always_tiny(size):
        calls.append(size)
        return 1e-6

    monkeypatch.setattr(bench.runner, "gemm_ceiling", always_tiny)
    code, out, _ = run(
        capsys, "bench", "--cases", "rnn:2,3,4,5;gru:2,3,4,5;lstm:2,3,4,5", "--repeats", "1"
    )
    assert code == 0
    assert len(calls) == 1 + bench.runner.MAX_CEILING_REMEASURES
    assert all(row["% peak"].endswith("%*") for row in table_rows(out))
    assert "* above the GEMM ceiling even after measuring it again" in out


def test_the_run_ends_with_a_summary_and_what_to_try_next(capsys):
    code, out, _ = run(capsys, "bench", "--cases", "rnn:2,3,4,5;lstm:1,3,4,5", "--repeats", "1")
    assert code == 0
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("summary: "))
    summary = lines[start : start + 4]
    assert "fused is faster" in summary[0] and "of 5 rows" in summary[0]
    assert summary[1].startswith("  vs PyTorch") and summary[2].startswith("  vs reference")
    assert summary[3].startswith("  spread") and "of its fastest call in" in summary[3]
    rows = table_rows(out)
    ratios = {
        f"{row['case']} B={row['B']} T={row['T']} I={row['I']} H={row['H']} {row['pass']}": row[
            "x ref"
        ]
        for row in rows
    }
    best = max(ratios, key=lambda label: float(ratios[label].rstrip("x")))
    assert f"{ratios[best]} {best};" in summary[2]
    tail = "\n".join(lines[start + 4 :])
    for option in ("--full", "--deepbench", "--only", "--json", "--plot"):
        assert option in tail


def test_summary_names_the_best_and_worst_row():
    report = fake_report(bench.cases_for(["lstm", "gru-cho"], [(1, 5, 4, 3), (8, 5, 4, 3)]))
    speedups = iter([3.0, 0.5, 7.0, 2.0, 1.5, 0.9, 4.0, 1.1, 1.2, 1.3])
    for row in report.rows:
        row.speedup_reference = next(speedups)
    for row, torch_ratio in zip(report.rows[:5], [1.2, 0.8, 2.5, 1.1, 0.95]):
        row.speedup_torch = torch_ratio  # the lstm rows; gru-cho has no PyTorch twin
    for row, spread in zip(report.rows, [1.23, 1.0, 2.5, 1.1, 1.2, 1.19, 1.0, 1.3, 1.05, 1.01]):
        row.fused_min_ms = row.fused_ms / spread
    first, torch_line, reference_line, spread_line = report.summary()
    assert "faster than PyTorch in 3 of 5 rows" in first
    assert "than the reference in 8 of 10 rows" in first
    assert torch_line == (
        "  vs PyTorch    2.50x lstm B=1 T=5 I=4 H=3 infer; 0.80x lstm B=1 T=5 I=4 H=3 fwd+bwd"
    )
    assert reference_line == (
        "  vs reference  7.00x lstm B=1 T=5 I=4 H=3 infer; 0.50x lstm B=1 T=5 I=4 H=3 fwd+bwd"
    )
    assert spread_line == (
        "  spread       fused median within 1.2x of its fastest call in 7 of 10 rows; widest "
        "2.50x lstm B=1 T=5 I=4 H=3 infer"
    )


def test_plot_has_no_pytorch_series_without_pytorch(tmp_path):
    pytest.importorskip("matplotlib")
    report = fake_report(bench.SWEEPS["default"].cases[:2], torch=False)
    assert [name for name, _, _ in bench.report.plot_series(report.rows)] == [
        "over the NumPy reference"
    ]
    with_torch = fake_report(bench.SWEEPS["default"].cases[:2])
    assert [name for name, _, _ in bench.report.plot_series(with_torch.rows)] == [
        "over the NumPy reference",
        "over PyTorch",
    ]
    path = bench.plot(report, str(tmp_path / "plot.png"))
    assert path == str(tmp_path / "plot.png")


def test_help_names_the_sweeps(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--full" in help_text and "--deepbench" in help_text
    assert (
        "The default sweep (25 rows, under a minute) is lstm, gru, rnn at (B, T, I, H) ="
        in help_text
    )
