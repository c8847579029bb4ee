"""Running a sweep: validate every pass of every case, then time it, with a progress bar."""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TextIO

import numpy as np

from .. import _config, functional, reference
from . import implementations, machine, timing
from .cases import TRAINING_PASSES, Case
from .implementations import Outputs, compare, import_torch, make_inputs, numpy_pass, truth_pass
from .machine import MemoryPeak, cpu_name, gemm_ceiling
from .report import TORCH_MISSING, Report, Row
from .timing import measure, thread_limit


class Progress:
    """A one-line progress bar with the seconds elapsed (on stderr by default).

    On a terminal the line is rewritten in place with ``\\r`` and erased at the end; elsewhere
    (a log file, a pipe) each step is a line of its own.
    """

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.done, self.width = total, 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last = 0

    def show(self, label: str) -> None:
        """Draw the bar with ``label`` as the step now running."""
        filled = self.width * self.done // max(self.total, 1)
        seconds = time.perf_counter() - self.start
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"{seconds:3.0f}s {label}"
        )
        if self.tty:  # cut to the terminal's width: a wrapped line could not be rewritten
            line = line[: shutil.get_terminal_size().columns - 1]
            self.stream.write("\r" + line.ljust(self._last))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last = len(line)

    def step(self) -> None:
        """Count one step as done."""
        self.done += 1

    def close(self) -> None:
        """Erase the bar (on a terminal)."""
        if self.tty:
            self.stream.write("\r" + " " * self._last + "\r")
            self.stream.flush()


def run_case(
    case: Case,
    dtype: np.dtype | type,
    repeats: int,
    budget: float,
    torch: ModuleType | None,
    ceiling: float,
    progress: Progress | None = None,
    min_seconds: float = 0.0,
) -> list[Row]:
    """Validate and time every pass of one case.

    Parameters
    ----------
    case : Case
    dtype : float32 or float64
    repeats, budget, min_seconds
        As for `measure`.
    torch : module or None
    ceiling : float
        The float32 GEMM rate in GFLOP/s the fused rate is compared with.
    progress : Progress, optional
        Advanced by one step per pass.

    Returns
    -------
    list of Row
        One per pass of ``case.passes``.
    """
    inputs = make_inputs(case, dtype)
    expected: dict[str, Outputs] = {}  # truth_pass -> the reference's outputs, computed once
    truth_seconds: dict[str, float] = {}  # truth_pass -> how long that reference call took
    rows = []
    for pass_name in case.passes:
        if progress:
            progress.show(f"{case.label} {pass_name}")
        training = pass_name in TRAINING_PASSES
        row = Row(
            case=case.variant.name,
            cell=case.variant.cell,
            B=case.B,
            T=case.T,
            I=case.I,
            H=case.H,
            pass_name=pass_name,
            dtype=np.dtype(dtype).name,
            flops=case.flops(pass_name),
            workspace_bytes=case.workspace_bytes(dtype) if training else None,
        )
        truth = truth_pass(pass_name)
        if truth not in expected:
            start = time.perf_counter()
            expected[truth] = numpy_pass(reference, case, inputs, truth)()
            truth_seconds[truth] = time.perf_counter() - start
        calls = _validated_calls(row, case, inputs, expected[truth], torch)
        if row.check == "ok":
            _time_calls(
                row,
                calls,
                repeats,
                budget,
                ceiling,
                min_seconds,
                truth_seconds[truth] if truth == pass_name else None,
            )
        rows.append(row)
        if progress:
            progress.step()
    return rows


def _validated_calls(
    row: Row, case: Case, inputs: Outputs, expected: Outputs, torch: ModuleType | None
) -> dict[str, Callable[[], Outputs]]:
    """The calls of ``row``'s pass worth timing, each run once against ``expected``.

    A fused mismatch makes the row ``FAIL`` and returns nothing to time. PyTorch, when importable
    and the variant exists there, is checked the same way and left out (``torch_status`` FAIL) if
    it does not match. The reference is the truth itself. Problems go to ``row.problems``.
    """
    dtype = np.dtype(row.dtype)
    fused = numpy_pass(functional, case, inputs, row.pass_name)
    peak = MemoryPeak()
    with peak:
        got = fused()
    row.peak_bytes, row.process_peak_bytes = peak.added_bytes, peak.process_bytes
    row.problems = [f"fused {p}" for p in compare(got, expected, dtype)]
    if row.problems:
        row.check = "FAIL"
        return {}
    calls = {"fused": fused, "reference": numpy_pass(reference, case, inputs, row.pass_name)}
    if torch is None:
        row.torch_status = TORCH_MISSING
    elif not case.variant.in_torch:
        row.torch_status = "n/a"
    else:
        call = implementations.torch_pass(torch, case, inputs, row.pass_name)
        row.problems = [f"torch {p}" for p in compare(call(), expected, dtype)]
        row.torch_status = "FAIL" if row.problems else "ok"
        if not row.problems:
            calls["torch"] = call
    return calls


def _time_calls(
    row: Row,
    calls: dict[str, Callable[[], Outputs]],
    repeats: int,
    budget: float,
    ceiling: float,
    min_seconds: float = 0.0,
    reference_warm_up: float | None = None,
) -> None:
    """Time each call into ``row.<name>_ms`` (the median) and ``row.<name>_min_ms`` (the fastest
    call), then fill in the ratios that follow from them.

    ``reference_warm_up``: seconds of the reference's call of this very pass made for the truth,
    which then serves as the reference's warm-up (`measure`).
    """
    for name, call in calls.items():
        if name == "reference":
            measured = measure(
                call,
                repeats,
                budget * timing.REFERENCE_BUDGET_SHARE,
                0.0,
                min_seconds,
                reference_warm_up,
            )
        else:
            measured = measure(call, repeats, budget, timing.SETTLE_SECONDS, min_seconds)
        setattr(row, f"{name}_ms", measured.seconds * 1e3)
        setattr(row, f"{name}_min_ms", measured.minimum * 1e3)
        row.calls[name] = measured.calls
    row.speedup_reference = row.reference_ms / row.fused_ms
    if row.torch_ms is not None:
        row.speedup_torch = row.torch_ms / row.fused_ms
    row.gflops = row.flops / (row.fused_ms * 1e-3) / 1e9
    row.ceiling_percent = 100 * row.gflops / ceiling


MAX_CEILING_REMEASURES = 2
"""How often a run measures the GEMM ceiling again after a row read above it."""


def run_sweep(
    cases: Sequence[Case],
    dtype: np.dtype | type = np.float32,
    threads: int | None = None,
    repeats: int = 7,
    budget: float = 1.0,
    sweep: str = "custom",
    note: str = "",
    progress: bool = True,
    min_seconds: float = 0.0,
) -> Report:
    """Measure the ceiling, then validate and time every case.

    When a row's fused rate reads above the ceiling, the ceiling was probably measured in a slow
    spell of this shared machine: it is measured again (at most `MAX_CEILING_REMEASURES` times)
    and every row's ``% peak`` is taken of the best measurement.

    Parameters
    ----------
    cases : sequence of Case
    dtype : float32 or float64
    threads : int, optional
        Threads for the fused kernels, numpy's BLAS and PyTorch (restored afterwards); default
        the fused kernels' current count.
    repeats, budget, min_seconds
        As for `measure`.
    sweep, note : str
        The sweep's name and note, for the header.
    progress : bool
        Show a progress bar on stderr, from the first step (importing PyTorch) on.

    Returns
    -------
    Report
    """
    load_at_start = os.getloadavg()[0]
    threads = threads or _config.get_num_threads()
    steps = sum(len(case.passes) for case in cases)
    bar = Progress(steps + 2) if progress else None  # + importing PyTorch, the ceiling
    _show(bar, "importing PyTorch, if installed (for its columns)")
    torch = import_torch()
    _step(bar)
    with thread_limit(threads, torch) as reference_threads:
        _show(bar, f"measuring the float32 GEMM ceiling (numpy, {machine.GEMM_SIZE}^3)")
        ceilings = [gemm_ceiling(machine.GEMM_SIZE)]
        _step(bar)
        rows: list[Row] = []
        for case in cases:
            case_rows = run_case(
                case, dtype, repeats, budget, torch, max(ceilings), bar, min_seconds
            )
            over = [row for row in case_rows if row.over_ceiling]
            if over and len(ceilings) <= MAX_CEILING_REMEASURES:
                _show(
                    bar,
                    f"{over[0].label} read {over[0].ceiling_percent:.0f}% of the GEMM "
                    "ceiling: measuring the ceiling again",
                )
                ceilings.append(gemm_ceiling(machine.GEMM_SIZE))
            rows += case_rows
        config = {**_config.config(), "isa_forced": machine.isa_note() or None}
    if bar:
        bar.close()
    ceiling = max(ceilings)
    for row in rows:
        if row.gflops is not None:
            row.ceiling_percent = 100 * row.gflops / ceiling
    return Report(
        date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        cpu=cpu_name(),
        threads=threads,
        dtype=np.dtype(dtype).name,
        gemm_ceiling_gflops=ceiling,
        reference_threads=reference_threads,
        torch=machine.torch_description(torch) if torch else TORCH_MISSING,
        sweep=sweep,
        note=note,
        load_average=(load_at_start, os.getloadavg()[0]),
        config=config,
        rows=rows,
        gemm_ceiling_measurements=ceilings,
    )


def _show(bar: Progress | None, label: str) -> None:
    if bar:
        bar.show(label)


def _step(bar: Progress | None) -> None:
    if bar:
        bar.step()
