"""The results: a `Row` per case and pass, the `Report` of a sweep and its table, JSON and plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .cases import shape_label
from .machine import BUSY_LOAD, GEMM_SIZE


@dataclass
class Row:
    """One line of the table: a case, a pass, the three timings and what follows from them.

    Times are milliseconds; ``None`` where not measured, with the reason in ``check``
    (``"FAIL"``: the fused result did not match the reference, nothing was timed) or in
    ``torch_status`` (``"not installed"``, ``"n/a"`` for a variant PyTorch does not have,
    ``"FAIL"``, ``"not run"`` after a fused FAIL). ``calls`` counts the timed calls per
    implementation, ``problems`` describes each mismatch.
    """

    case: str
    cell: str
    B: int
    T: int
    I: int
    H: int
    pass_name: str
    dtype: str
    flops: int
    workspace_bytes: int | None
    peak_bytes: int | None = None
    process_peak_bytes: int | None = None
    check: str = "ok"
    problems: list[str] = field(default_factory=list)
    fused_ms: float | None = None
    reference_ms: float | None = None
    torch_ms: float | None = None
    torch_status: str = "not run"
    calls: dict[str, int] = field(default_factory=dict)
    speedup_reference: float | None = None
    speedup_torch: float | None = None
    gflops: float | None = None
    ceiling_percent: float | None = None

    @property
    def label(self) -> str:
        """The case's `shape_label`."""
        return shape_label(self.case, self.B, self.T, self.I, self.H)


@dataclass
class Report:
    """A finished sweep: the machine, the run's settings and the rows.

    ``load_average`` is the 1-minute load at the start and at the end of the run. The load at the
    start is that of other programs (or of a run just before); from `BUSY_LOAD` on, the header
    warns that the times are noisy.
    """

    date: str
    cpu: str
    threads: int
    dtype: str
    gemm_ceiling_gflops: float
    reference_threads: str
    torch: str
    sweep: str
    note: str
    load_average: tuple[float, float]
    config: dict
    rows: list[Row]

    def header(self) -> list[str]:
        """The lines above the table: when, where, with what."""
        cfg = self.config
        lines = [
            f"# fusedrnn {cfg['fusedrnn']} bench ({self.sweep}), {self.date}, {self.dtype}",
            (f"# CPU: {self.cpu} ({cfg['cpu_count']} cores); threads: {self.threads}; "
             f"ISA: {cfg['isa']}; BLAS: {cfg['blas']}"),
            (f"# load average (1 min) at start / end: {self.load_average[0]:.2f} / "
             f"{self.load_average[1]:.2f}"
             + ("; the machine was busy before the run started, expect noisy times"
                if self.load_average[0] >= BUSY_LOAD else "")),
            (f"# float32 GEMM ceiling: {self.gemm_ceiling_gflops:.1f} GFLOP/s (numpy, "
             f"{GEMM_SIZE}^3, best of 5); reference: {self.reference_threads}; "
             f"PyTorch: {self.torch}"),
            ("# GFLOP/s counts GEMM work only (fusedrnn.bench.flops, attention_flops); x ref, "
             "x torch = fused speed-up (their ms / fused ms); workspace = bytes a training "
             "forward keeps; process peak = the process's resident memory at its height during "
             "the first fused call (the JSON also has what that call added)"),
            ("# attention rows: self-attention with q, k, v (B, H, T, I): T = L queries and "
             "keys, I = E head size, H heads"),
        ]
        if self.note:
            lines.append(f"# note: {self.note}")
        return lines

    def table(self) -> str:
        """Header, aligned table and the validation failures, as printed on stdout."""
        columns = ["case", "B", "T", "I", "H", "pass", "check", "fused ms", "ref ms", "torch ms",
                   "x ref", "x torch", "GFLOP/s", "% peak", "workspace", "process peak"]
        cells = [columns] + [_row_cells(row) for row in self.rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        left = {"case", "pass", "check"}
        lines = self.header() + [
            "  ".join(c.ljust(w) if name in left else c.rjust(w)
                      for c, w, name in zip(line, widths, columns)).rstrip()
            for line in cells
        ]
        for row in self.rows:
            for problem in row.problems:
                lines.append(f"mismatch, {row.label} {row.pass_name}: {problem}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """Everything, rows included, as JSON-ready data."""
        return asdict(self)


def _fmt_ms(ms: float | None, missing: str) -> str:
    if ms is None:
        return missing
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.1f} MiB"


def _row_cells(row: Row) -> list[str]:
    torch_missing = row.torch_status if row.check == "ok" else "-"
    return [
        row.case, str(row.B), str(row.T), str(row.I), str(row.H), row.pass_name, row.check,
        _fmt_ms(row.fused_ms, "-"), _fmt_ms(row.reference_ms, "-"),
        _fmt_ms(row.torch_ms, torch_missing),
        _fmt_ratio(row.speedup_reference), _fmt_ratio(row.speedup_torch),
        "-" if row.gflops is None else f"{row.gflops:.1f}",
        "-" if row.ceiling_percent is None else f"{row.ceiling_percent:.1f}%",
        _fmt_bytes(row.workspace_bytes), _fmt_bytes(row.process_peak_bytes),
    ]


def write_json(report: Report, path: str) -> None:
    """Write `Report.to_json` to ``path``."""
    with open(path, "w") as f:
        json.dump(report.to_json(), f, indent=2)
        f.write("\n")


PLOT_HINT = 'needs matplotlib: pip install "fusedrnn[plot]"'


def plot(report: Report, path: str) -> None:
    """Save a PNG bar chart of the fused speed-ups per case and pass (log scale).

    Raises
    ------
    ImportError
        Without matplotlib (the ``plot`` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in report.rows if row.check == "ok"]
    labels = [f"{r.label}\n{r.pass_name}" for r in rows]
    positions = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(rows)), 5.5))
    series = [("over the NumPy reference", "speedup_reference", -0.2),
              ("over PyTorch", "speedup_torch", 0.2)]
    for name, attr, offset in series:
        values = [getattr(r, attr) or np.nan for r in rows]
        ax.bar(positions + offset, values, width=0.4, label=f"fused speed-up {name}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up (x, log scale)")
    ax.set_xticks(positions, labels, rotation=90, fontsize=7)
    ax.set_title(f"fusedrnn {report.dtype}, {report.threads} threads, {report.cpu}, "
                 f"{report.date}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
