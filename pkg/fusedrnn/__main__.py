"""The ``fusedrnn`` command line: ``python -m fusedrnn bench | train-charlm | bench-distributed``.

Each subcommand adds its parser in a ``_add_<name>`` function and sets ``handler``; `main` is the
console-script entry point declared in pyproject.toml.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence

import numpy as np

from . import bench, char_lm


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _variant_filter(text: str) -> set[str]:
    """``--only``: cell names (every variant of the cell) or variant names, comma separated."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    known = set(bench.VARIANTS) | {v.cell for v in bench.VARIANTS.values()}
    unknown = sorted(names - known)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown cell {', '.join(unknown) or repr(text)}; choose from "
            f"{', '.join(sorted(known))}"
        )
    return names


def _case_list(text: str) -> list[bench.Case]:
    """``--cases "lstm:1,3,4,5;gru:2,2,3,3"``: variant:B,T,I,H, separated by semicolons
    (attention: variant:B,L,E,heads)."""
    cases = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, _, shape = item.partition(":")
        try:
            sizes = [int(n) for n in shape.split(",")]
        except ValueError:
            sizes = []
        if name not in bench.VARIANTS or len(sizes) != 4 or min(sizes) < 1:
            raise argparse.ArgumentTypeError(
                f"bad case {item!r}: expected VARIANT:B,T,I,H with VARIANT in "
                f"{', '.join(bench.VARIANTS)} and positive sizes"
            )
        cases.append(bench.Case(bench.VARIANTS[name], *sizes))
    if not cases:
        raise argparse.ArgumentTypeError("no case given")
    return cases


def _png_path(text: str) -> str:
    """``--plot``: checked before the sweep runs, so a missing matplotlib costs no minutes."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise argparse.ArgumentTypeError(bench.PLOT_HINT) from None
    return text


def _sweep_description(sweep: bench.Sweep) -> str:
    """A sweep's shapes, variants of the same shapes together: ``lstm, gru at (B, T, I, H) =
    (1, 100, 256, 256), (64, 50, 512, 512); attention at (B, heads, L, E) = (8, 8, 256, 64)``."""
    by_variant: dict[str, list[str]] = {}
    for c in sweep.cases:  # attention's Case keeps (B, heads, L, E) as (B, H, T, I)
        shape = (c.B, c.H, c.T, c.I) if c.variant.cell == "attention" else (c.B, c.T, c.I, c.H)
        by_variant.setdefault(c.variant.name, []).append(str(shape))
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, shapes in by_variant.items():
        groups.setdefault(tuple(shapes), []).append(name)
    return "; ".join(
        f"{', '.join(names)} at "
        f"{'(B, heads, L, E)' if bench.VARIANTS[names[0]].cell == 'attention' else '(B, T, I, H)'}"
        f" = {', '.join(shapes)}"
        for shapes, names in groups.items()
    )


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    default, full = bench.SWEEPS["default"], bench.SWEEPS["full"]
    rows = {
        name: sum(len(case.passes) for case in sweep.cases) for name, sweep in bench.SWEEPS.items()
    }
    parser = subparsers.add_parser(
        "bench",
        help="validate and time the fused kernels against the NumPy reference and PyTorch",
        description="Validate every case against the NumPy reference, then time the fused "
        "kernels, the reference and PyTorch (when installed) and print one table of "
        "speed-ups, GFLOP/s and the share of this machine's float32 GEMM rate, then a summary. "
        f"The default sweep ({rows['default']} rows, under a minute) is "
        f"{_sweep_description(default)}.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--full",
        action="store_const",
        const="full",
        dest="sweep",
        help=f"the full sweep ({rows['full']} rows, a few minutes): {_sweep_description(full)}",
    )
    size.add_argument(
        "--deepbench",
        action="store_const",
        const="deepbench",
        dest="sweep",
        help=f"DeepBench's RNN shapes ({rows['deepbench']} rows, several minutes)",
    )
    size.add_argument(
        "--layer-norm",
        action="store_const",
        const="layer-norm",
        dest="sweep",
        help=f"layer normalisation and the layer-normalised LSTM and GRU ({rows['layer-norm']} "
        "rows): fusedrnn.LayerNorm's kernels against torch.nn.LayerNorm, the cells against "
        "the per-step PyTorch module users write",
    )
    size.add_argument(
        "--torch-training",
        action="store_const",
        const="torch-training",
        dest="sweep",
        help="instead of the kernels: one whole PyTorch training step of PyTorch's "
        "word-language-model example (embedding, 2-layer LSTM or GRU, linear decoder, "
        "cross-entropy, backward, SGD; char- and word-level vocabularies) with torch.nn's "
        "layer and with fusedrnn.torch's, side by side, and cells trained in a Python loop of "
        "20 steps (11 rows, a few minutes; needs PyTorch)",
    )
    size.add_argument(
        "--half-weights",
        action="store_const",
        const="half-weights",
        dest="sweep",
        help="instead of the sweep: batch-1 inference of LSTM and GRU (T=100, H=256) with "
        "float32, float16 and bfloat16 weights (weights_dtype), and onnxruntime's float32 when "
        "onnx and onnxruntime are installed, timed in interleaved blocks (a minute or less)",
    )
    # Internal: an explicit case list, for the tests (seconds instead of minutes).
    size.add_argument("--cases", type=_case_list, help=argparse.SUPPRESS)
    parser.set_defaults(sweep="default")
    parser.add_argument(
        "--only",
        type=_variant_filter,
        metavar="CELLS",
        help="comma list of cells (lstm, gru, rnn, attention) or variants "
        "(gru-cho, rnn-relu, attention-causal, ...) to keep",
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="threads of the fused kernels, numpy's BLAS and PyTorch "
        "(default: fusedrnn.get_num_threads())",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        metavar="N",
        help="timed calls per measurement after a warm-up, exactly (default: "
        "the sweep's, and fast calls go on for a tenth of the sweep's time "
        "budget; slow calls get fewer within the budget)",
    )
    parser.add_argument(
        "--isa",
        choices=tuple(bench.machine.ISA_LIMITS),
        help="run on this instruction set's path on a CPU that has more (avx2 on an AVX-512 "
        "machine; avx512 without AMX), with PyTorch, MKL, oneDNN and numpy's and scipy's "
        "OpenBLAS limited alike: the run goes on in a second process whose environment limits "
        "them (onnxruntime keeps its own choice)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="write every row (memory peaks and call "
        "counts included) and the machine configuration as JSON",
    )
    parser.add_argument(
        "--plot",
        type=_png_path,
        metavar="PATH",
        help=f"save a PNG of the speed-ups ({bench.PLOT_HINT})",
    )
    parser.set_defaults(handler=_run_bench)


NEXT_STEPS = [
    "next: --full ({full} rows, a few minutes) or --deepbench (DeepBench's shapes); --only "
    "lstm,attention for some cells;",
    "      --json PATH for every number and the machine; --plot PATH.png for a chart; --help for "
    "the rest",
]
"""The hint printed at the end of a run."""


def selected_cases(args: argparse.Namespace) -> list[bench.Case]:
    """The cases a parsed ``bench`` command line asks for: its sweep's (or ``--cases``), less
    those ``--only`` leaves out."""
    cases = args.cases or list(bench.SWEEPS[args.sweep].cases)
    if args.only:
        cases = [c for c in cases if c.variant.name in args.only or c.variant.cell in args.only]
    return cases


def _run_torch_training(args: argparse.Namespace) -> int:
    from .bench import torch_training

    if args.json or args.plot:
        print("--json and --plot are not available with --torch-training", file=sys.stderr)
        return 2
    cases = [case for case in torch_training.CASES if not args.only or case.family in args.only]
    if not cases:
        print(
            "--torch-training has LSTM, GRU and RNN rows only (--only lstm,gru,rnn)",
            file=sys.stderr,
        )
        return 2
    try:
        lines = torch_training.run(cases, np.dtype(args.dtype), args.threads, args.repeats or 15)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 1 if lines[-1].startswith("FAILED") else 0


def _run_half_weights(args: argparse.Namespace) -> int:
    from .bench import half_weights

    if args.json or args.plot or args.dtype != "float32":
        print("--half-weights prints its table only, of float32 layers", file=sys.stderr)
        return 2
    cells = tuple(c for c in ("lstm", "gru") if not args.only or c in args.only)
    if not cells:
        print("--half-weights has LSTM and GRU rows only (--only lstm,gru)", file=sys.stderr)
        return 2
    lines = half_weights.run(args.threads, args.repeats or 200, cells)
    print("\n".join(lines))
    return 1 if any(line.startswith("FAILED") for line in lines) else 0


# Set in the environment of the process `_run_limited_to` starts: it runs the bench itself.
_ISA_CHILD = "_FUSEDRNN_BENCH_ISA_CHILD"


def _run_limited_to(isa: str, argv: Sequence[str]) -> int:
    """``bench --isa``: the same command line in a new process whose environment limits the
    other libraries to ``isa`` (bench.machine.ISA_LIMITS: they read it when they load, and numpy's
    OpenBLAS is loaded here already); that process forces fusedrnn's kernels onto it."""
    from . import _config

    supported = _config.supported_isas()
    if isa not in supported:
        print(
            f"--isa {isa}: this CPU or build has no {isa} path (it has {', '.join(supported)})",
            file=sys.stderr,
        )
        return 2
    env = {**os.environ, **bench.machine.ISA_LIMITS[isa], _ISA_CHILD: isa}
    return subprocess.run([sys.executable, "-m", "fusedrnn", *argv], env=env).returncode


def _run_bench(args: argparse.Namespace) -> int:
    if args.isa:
        if os.environ.get(_ISA_CHILD) != args.isa:
            return _run_limited_to(args.isa, args.argv)
        bench.machine.force_isa(args.isa)
    if args.sweep == "torch-training":
        return _run_torch_training(args)
    if args.sweep == "half-weights":
        return _run_half_weights(args)
    sweep = bench.SWEEPS[args.sweep]
    cases = selected_cases(args)
    if not cases:
        print(f"no case of {', '.join(sorted(args.only))} in this sweep", file=sys.stderr)
        return 2
    report = bench.run_sweep(
        cases,
        dtype=np.dtype(args.dtype),
        threads=args.threads,
        repeats=args.repeats or sweep.repeats,
        budget=sweep.budget,
        # --repeats N asks for exactly N timed calls; a sweep's own count is a minimum
        min_seconds=0.0 if args.repeats else bench.MIN_TIMED_SHARE * sweep.budget,
        sweep="custom" if args.cases else sweep.name,
        note="" if args.cases else sweep.note,
    )
    print(report.table())
    print()
    print("\n".join(report.summary()))
    if args.json:
        path = bench.write_json(report, args.json)
        print(f"wrote every row and the machine configuration to {path}")
    if args.plot:
        print(f"wrote the plot to {bench.plot(report, args.plot)}")
    full_rows = sum(len(case.passes) for case in bench.SWEEPS["full"].cases)
    print("\n".join(NEXT_STEPS).format(full=full_rows))
    failed = sum(row.check == "FAIL" for row in report.rows)
    if failed:
        print(f"{failed} row(s) failed validation against the reference", file=sys.stderr)
        return 1
    return 0


def _add_train_charlm(subparsers: argparse._SubParsersAction) -> None:
    # Listed here for --help; `main` hands everything after the name to char_lm's own parser.
    parser = subparsers.add_parser(
        "train-charlm",
        add_help=False,
        help="train a character-level language model with TBPTT (fusedrnn.char_lm; "
        "`fusedrnn train-charlm --help` for its options)",
    )
    parser.set_defaults(handler=lambda args: _run_train_charlm([]))


def _run_train_charlm(argv: Sequence[str]) -> int:
    char_lm.main(list(argv), prog="fusedrnn train-charlm")
    return 0


def _add_bench_distributed(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench-distributed",
        help="time data-parallel char-LM training on MPI ranks and print the cost model "
        "(needs fusedrnn[mpi])",
        description="Time the char-LM's training step (same global batch) as 1 rank x 1 "
        "thread, 1 rank x N threads and N ranks x 1 thread (mpiexec -n N), in interleaved "
        "rounds; time the gradient allreduce against its size; then print the cost model of "
        "docs/distributed.md: its prediction for N ranks here next to the measurement, and "
        "the predicted scaling efficiency at 2-64 machines for 1-100 Gbit/s networks.",
    )
    parser.add_argument(
        "--model",
        choices=("char", "word"),
        default="char",
        help="char: train-charlm's default model; word: PyTorch's word_language_model sizes",
    )
    parser.add_argument("--ranks", type=_positive_int, default=2, help="ranks (and threads)")
    parser.add_argument(
        "--batch", type=_positive_int, help="the global batch (default: the model's; char 32)"
    )
    parser.add_argument("--rounds", type=_positive_int, default=3, help="rounds of every job")
    parser.add_argument("--steps", type=_positive_int, default=30, help="timed steps per job")
    parser.add_argument("--json", metavar="PATH", help="write every measured number as JSON")
    # Internal: one timed job, started by the launcher (under mpiexec with --worker-mpi).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-mpi", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-batch", type=_positive_int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=_positive_int, help=argparse.SUPPRESS)
    parser.set_defaults(handler=_run_bench_distributed)


def _run_bench_distributed(args: argparse.Namespace) -> int:
    from .bench import distributed as bench_distributed

    if args.worker:
        bench_distributed.main_worker(
            args.model, args.worker_batch, args.worker_threads, args.steps, args.worker_mpi
        )
        return 0
    numbers = bench_distributed.run(args.model, args.ranks, args.rounds, args.steps, args.batch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(numbers, f, indent=1, default=str)
        print(f"wrote every number to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``fusedrnn`` parser with all its subcommands."""
    parser = argparse.ArgumentParser(prog="fusedrnn", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_bench(subparsers)
    _add_train_charlm(subparsers)
    _add_bench_distributed(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit code: 0, 1 when a case failed validation; argparse exits with 2 on bad arguments.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train-charlm"]:  # its options are char_lm's own
        return _run_train_charlm(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
