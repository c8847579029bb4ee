"""The results: a `Row` per case and pass, the `Report` of a sweep and its table, JSON and plot."""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import asdict, dataclass, field

import numpy as np

from .cases import shape_label
from .machine import BUSY_LOAD, GEMM_SIZE


@dataclass
class Row:
    """One line of the table: a case, a pass, the three timings and what follows from them.

    Times are milliseconds, ``<name>_ms`` the median of the timed calls and ``<name>_min_ms`` the
    fastest; ``None`` where not measured, with the reason in ``check``
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
    fused_min_ms: float | None = None
    reference_min_ms: float | None = None
    torch_min_ms: float | None = None
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

    @property
    def short_label(self) -> str:
        """`label` and the pass as the table names it: ``lstm B=1 T=100 I=256 H=256 fwd+bwd``."""
        return f"{self.label} {PASS_NAMES[self.pass_name]}"

    @property
    def spread(self) -> float | None:
        """The fused calls' median over their fastest (1.0: every call as fast as the best);
        None when not timed."""
        if self.fused_ms is None or not self.fused_min_ms:
            return None
        return self.fused_ms / self.fused_min_ms

    @property
    def over_ceiling(self) -> bool:
        """Whether the fused rate read above the GEMM ceiling (``% peak`` over 100)."""
        return self.ceiling_percent is not None and self.ceiling_percent > 100


@dataclass
class Report:
    """A finished sweep: the machine, the run's settings and the rows.

    ``load_average`` is the 1-minute load at the start and at the end of the run. The load at the
    start is that of other programs (or of a run just before); from `BUSY_LOAD` on, the header
    warns that the times are noisy. ``gemm_ceiling_measurements`` holds every measurement of the
    ceiling in GFLOP/s (the first at the start; more when a row read above 100% of the best so
    far), and ``gemm_ceiling_gflops`` the best of them, which ``% peak`` is a share of.
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
    gemm_ceiling_measurements: list[float] = field(default_factory=list)

    @property
    def has_torch(self) -> bool:
        """Whether PyTorch was importable in the run (its columns are shown)."""
        return self.torch != TORCH_MISSING

    def header(self) -> list[str]:
        """The lines above the table: when, where, with what, and the legend."""
        cfg = self.config
        ceiling = (
            f"# float32 GEMM ceiling: {self.gemm_ceiling_gflops:.1f} GFLOP/s (numpy, "
            f"{GEMM_SIZE}^3, best of 5"
        )
        if len(self.gemm_ceiling_measurements) > 1:
            ceiling += "; measured at the start and again after a row read above it: " + ", ".join(
                f"{g:.1f}" for g in self.gemm_ceiling_measurements
            )
        lines = [
            f"# fusedrnn {cfg['fusedrnn']} bench ({self.sweep} sweep), {self.date}, {self.dtype}",
            (
                f"# CPU: {self.cpu} ({cfg['cpu_count']} cores); threads: {self.threads}; "
                f"ISA: {cfg.get('isa_forced') or cfg['isa']}"
            ),
            f"# BLAS: {cfg['blas']}",
            (
                f"# load average (1 min) at start / end: {self.load_average[0]:.2f} / "
                f"{self.load_average[1]:.2f}"
                + (
                    "; the machine was busy before the run started, expect noisy times"
                    if self.load_average[0] >= BUSY_LOAD
                    else ""
                )
            ),
            ceiling + ")",
            f"# reference: {self.reference_threads}"
            + (f"; PyTorch: {self.torch}" if self.has_torch else ""),
        ]
        if not self.has_torch:
            lines += TORCH_HINT
        if self.note:
            lines.append(f"# note: {self.note}")
        lines += LEGEND if self.has_torch else [line.replace(", x torch", "") for line in LEGEND]
        return _wrap(lines, "#   ")

    def columns(self) -> list[str]:
        """The table's column names (PyTorch's two only when it was importable)."""
        return [name for name in COLUMNS if self.has_torch or name not in TORCH_COLUMNS]

    def table(self) -> str:
        """Header, aligned table, footnotes and the validation failures, as printed on stdout.

        The table is at most `WIDTH` columns wide for the named sweeps (the header and notes
        are wrapped to it).
        """
        columns = self.columns()
        cells = [columns] + [_row_cells(row, columns) for row in self.rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        lines = self.header() + [
            "  ".join(
                c.ljust(w) if name in LEFT_ALIGNED else c.rjust(w)
                for c, w, name in zip(line, widths, columns)
            ).rstrip()
            for line in cells
        ]
        if any(row.over_ceiling for row in self.rows):
            lines += _wrap([OVER_CEILING_NOTE], "  ")
        lines += _wrap(
            [
                f"mismatch, {row.label} {row.pass_name}: {problem}"
                for row in self.rows
                for problem in row.problems
            ],
            "  ",
        )
        return "\n".join(lines)

    def summary(self) -> list[str]:
        """Three lines (wrapped at `WIDTH`): in how many rows fused is faster, and its best and
        worst row against PyTorch and against the reference (the speed-up, their ms / fused ms).
        """
        baselines = {"PyTorch": "speedup_torch", "the reference": "speedup_reference"}
        measured = {
            name: [row for row in self.rows if getattr(row, attr) is not None]
            for name, attr in baselines.items()
        }
        counts = [
            f"than {name} in {sum(getattr(row, baselines[name]) > 1 for row in rows)} of "
            f"{len(rows)} rows"
            for name, rows in measured.items()
            if rows
        ]
        lines = [
            f"summary: fused is faster {' and '.join(counts)}; best and worst:"
            if counts
            else "summary: no row passed validation, nothing was timed"
        ]
        for name, attr in baselines.items():
            rows = measured[name]
            label = f"  vs {name.split()[-1]:<10}"
            if not rows:
                reason = (
                    "no row passed validation"
                    if not any(r.check == "ok" for r in self.rows)
                    else "PyTorch is not installed"
                    if not self.has_torch
                    else "no row has a PyTorch result (n/a or FAIL)"
                )
                lines.append(f"{label} not measured: {reason}")
                continue
            best = max(rows, key=lambda row: getattr(row, attr))
            worst = min(rows, key=lambda row: getattr(row, attr))
            lines.append(
                f"{label} {_fmt_ratio(getattr(best, attr))} {best.short_label}; "
                f"{_fmt_ratio(getattr(worst, attr))} {worst.short_label}"
            )
        lines.append(self._spread_line())
        return _wrap(lines, " " * 16)

    def _spread_line(self) -> str:
        """How steady the fused times were: in how many rows the median is within `STEADY_SPREAD`
        of the fastest call, and the widest spread."""
        spread_rows = [row for row in self.rows if row.spread is not None]
        label = f"  {'spread':<12}"
        if not spread_rows:
            return f"{label} not measured: no row was timed"
        steady = sum(row.spread <= STEADY_SPREAD for row in spread_rows)
        widest = max(spread_rows, key=lambda row: row.spread)
        return (
            f"{label} fused median within {STEADY_SPREAD}x of its fastest call in {steady} of "
            f"{len(spread_rows)} rows; widest {_fmt_ratio(widest.spread)} {widest.short_label}"
        )

    def to_json(self) -> dict:
        """Everything, rows included, as JSON-ready data (each row with its ``spread``)."""
        data = asdict(self)
        for row, row_data in zip(self.rows, data["rows"]):
            row_data["spread"] = row.spread
        return data


WIDTH = 120
"""Columns the header, the table of a named sweep and the summary fit in."""

STEADY_SPREAD = 1.2
"""A fused row whose median time is within this factor of its fastest call is steady (the summary
counts them): on a quiet machine every row is."""

TORCH_MISSING = "not installed"
"""`Report.torch` and `Row.torch_status` when PyTorch cannot be imported."""

TORCH_HINT = [
    "# PyTorch is not installed, so it is left out. To compare with its CPU build: "
    "pip install torch==2.13.0",
    "#   (or any version without CUDA: pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu)",
]
"""What the header says instead of PyTorch's columns when it is missing."""

PASS_NAMES = {"forward": "fwd", "forward+backward": "fwd+bwd", "inference": "infer"}
"""The table's short names of the passes (the JSON has the long ones)."""

LEGEND = [
    "# ms: median time of one call, conversions included; x ref, x torch: fused speed-up (their ms "
    "/ fused ms; the reference's ms are in --json)",
    "# GFLOP/s: the fused rate, GEMM work only (fusedrnn.bench.flops); % peak: its share of the "
    "GEMM ceiling",
    "# spread: fused median / fastest fused call (over 1.2: the machine was busy or the kernel "
    "waited on a member)",
    "# pass: fwd = training forward, fwd+bwd = it and the backward, infer = inference; saved: what "
    "fwd keeps for bwd",
    "# attention rows: q, k, v are (B, H, T, I) = (batch, heads, L queries and keys, E head size)",
    "# attention-window: causal, window 64; attention-decode: one query over T cached keys, "
    "attention-nocache: the causal forward of all T (a decoder without a cache)",
]
"""The legend printed above the table."""

OVER_CEILING_NOTE = (
    "* above the GEMM ceiling even after measuring it again: numpy's 2048^3 product is not this "
    "CPU's FMA limit (its operands stream from memory, a recurrent kernel's weights can stay in "
    "cache), or the row and the ceiling met different loads on this shared machine"
)
"""The footnote of a ``% peak`` over 100%."""

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
TORCH_COLUMNS = {"torch ms", "x torch"}
LEFT_ALIGNED = {"case", "pass"}


def _wrap(lines: list[str], indent: str) -> list[str]:
    """Each line cut at word boundaries to `WIDTH` columns, continued after ``indent``."""
    return [
        part
        for line in lines
        for part in textwrap.wrap(
            line, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
        )
    ]


def _fmt_ms(ms: float | None, missing: str) -> str:
    if ms is None:
        return missing
    # Three significant digits, and a thousandth below 1 ms: a small call on a fast CPU takes a
    # few microseconds (a layer norm of 15 rows: 5 us on a 2026 Xeon), which printed as 0.00.
    if ms >= 100:
        return f"{ms:.0f}"
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


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


def _fmt_percent(row: Row) -> str:
    if row.ceiling_percent is None:
        return "-"
    return f"{row.ceiling_percent:.0f}%" + ("*" if row.over_ceiling else "")


def _row_cells(row: Row, columns: list[str]) -> list[str]:
    """The row's cells under ``columns``: ``FAIL`` under ``fused ms`` when the fused result did
    not match (nothing timed), PyTorch's status (``n/a``, ``FAIL``) under ``torch ms``."""
    failed = row.check != "ok"
    cells = {
        "case": row.case,
        "B": str(row.B),
        "T": str(row.T),
        "I": str(row.I),
        "H": str(row.H),
        "pass": PASS_NAMES[row.pass_name],
        "fused ms": "FAIL" if failed else _fmt_ms(row.fused_ms, "-"),
        "spread": "-" if row.spread is None else f"{row.spread:.2f}",
        "torch ms": _fmt_ms(row.torch_ms, "-" if failed else row.torch_status),
        "x ref": _fmt_ratio(row.speedup_reference),
        "x torch": _fmt_ratio(row.speedup_torch),
        "GFLOP/s": "-" if row.gflops is None else f"{row.gflops:.1f}",
        "% peak": _fmt_percent(row),
        "saved": _fmt_bytes(row.workspace_bytes),
    }
    return [cells[name] for name in columns]


def write_json(report: Report, path: str) -> str:
    """Write `Report.to_json` to ``path``; return the absolute path written."""
    with open(path, "w") as f:
        json.dump(report.to_json(), f, indent=2)
        f.write("\n")
    return os.path.abspath(path)


PLOT_HINT = 'needs matplotlib: pip install "fusedrnn[plot]"'


def plot_series(rows: list[Row]) -> list[tuple[str, str, str]]:
    """The plot's bar series, ``(legend name, Row attribute, colour)``: the speed-up over the
    reference, and over PyTorch only where some row has it (no empty legend entry)."""
    return [
        (f"over {name}", attr, color)
        for name, attr, color in (
            ("the NumPy reference", "speedup_reference", "tab:blue"),
            ("PyTorch", "speedup_torch", "tab:orange"),
        )
        if any(getattr(row, attr) is not None for row in rows)
    ]


def plot(report: Report, path: str) -> str:
    """Save a PNG bar chart of the fused speed-ups per case and pass; return its absolute path.

    One horizontal bar per row and baseline (the NumPy reference, and PyTorch where it ran),
    labelled with its value, on a log axis with the line of equal speed at 1x.

    Raises
    ------
    ImportError
        Without matplotlib (the ``plot`` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [row for row in report.rows if row.check == "ok"]
    series = plot_series(rows)
    bar = 0.8 / max(len(series), 1)
    positions = np.arange(len(rows))
    fig, ax = plt.subplots(
        figsize=(10.0, 2.0 + 0.28 * len(rows) * max(len(series), 1)), layout="constrained"
    )
    for k, (name, attr, color) in enumerate(series):
        values = np.array([getattr(row, attr) or np.nan for row in rows], dtype=float)
        offset = (k - (len(series) - 1) / 2) * bar
        # from 1x, the line of equal speed: a row where fused is slower points left
        bars = ax.barh(
            positions + offset,
            values - 1,
            left=1,
            height=bar,
            color=color,
            label=f"fused speed-up {name}",
        )
        ax.bar_label(
            bars,
            labels=[_fmt_ratio(v) if np.isfinite(v) else "" for v in values],
            padding=3,
            fontsize=8,
        )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.15)  # room for the value labels at the bars' ends
    ax.set_xlabel("fused speed-up (their time / fused time; log scale, 1x = as fast)", fontsize=10)
    ax.set_yticks(positions, [row.short_label for row in rows], fontsize=9)
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.tick_params(axis="x", labelsize=9)
    ax.set_title(
        f"fusedrnn bench ({report.sweep}), {report.dtype}, {report.threads} threads\n"
        f"{report.cpu}, {report.date}",
        fontsize=10,
    )
    if series:  # below the axes, where it covers no bar
        fig.legend(fontsize=9, loc="outside lower center", ncol=len(series))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.path.abspath(path)
