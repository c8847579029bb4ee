"""``python -m fusedrnn bench-distributed``: data-parallel throughput, and the cost model of
docs/distributed.md from numbers measured here.

The launcher (`run`) starts the worker (`worker`) as separate jobs, in interleaved rounds so
that a change in the machine's load hits every configuration alike:

- 1 rank x 1 thread and 1 rank x R threads at the global batch B, R ranks x 1 thread
  (``mpiexec -n R``) at B / R streams each: the char-LM's training step (`char_lm.train_step`:
  forward, backward, gradient allreduce, clipping, Adam) on the same global batch;
- 1 rank x 1 thread at the per-rank batch B / R: the compute time the cost model needs;
- R such processes at once, without communication (``mpiexec -n R`` without ``--worker-mpi``):
  the compute time the cores give R ranks when they all run (on a machine shared with other
  programs, less than a core each).

The R-rank job also times `distributed.allreduce_gradients` on gradients of 0.06 to 16 MB
(latency and time per MB; here, the ranks sharing a machine, in a shared window). The cost model
then predicts the R-rank step here, to compare with the measurement, and the scaling efficiency
at 2-64 machines for network bandwidths of 1-100 Gbit/s (docs/distributed.md explains each
term).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import char_lm, distributed
from ..char_lm import CharLM, Config, train_step
from .machine import cpu_name


@dataclass(frozen=True)
class Preset:
    """A model to measure: the char-LM's layers at a vocabulary and sizes."""

    vocab: int
    embed: int
    hidden: int
    layers: int
    batch: int  # global batch (streams)
    seq_len: int
    note: str


PRESETS = {
    "char": Preset(96, 32, 256, 1, 32, 32, "train-charlm's defaults (about 96 characters)"),
    "word": Preset(
        33278, 200, 200, 2, 20, 35, "PyTorch's word_language_model defaults (WikiText-2 words)"
    ),
}
ALLREDUCE_MB = (1 / 16, 1 / 4, 1, 4, 16)
BANDWIDTHS_GBIT = (1, 10, 25, 100)
MACHINES = (2, 4, 8, 16, 32, 64)
NETWORK_LATENCY_S = 30e-6  # per message on an Ethernet network: an assumption, not measured


# ---------------------------------------------------------------- the worker (one job)


def worker(preset: Preset, batch: int, steps: int, warmup: int, threads: int, comm=None) -> dict:
    """Time ``steps`` training steps of ``preset`` with ``batch`` streams per rank on every rank
    of ``comm`` (None: one process, no MPI), after ``warmup`` steps; rank 0's numbers (the other
    ranks return an empty dict)."""
    import fusedrnn

    fusedrnn.set_num_threads(threads)
    rank, ranks = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    cfg = Config(
        embed=preset.embed, hidden=preset.hidden, layers=preset.layers, batch=batch * ranks,
        seq_len=preset.seq_len, seed=0, quiet=True,
    )  # fmt: skip
    model = CharLM(preset.vocab, cfg)
    optimizer = fusedrnn.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(rank)  # each rank its own streams of synthetic characters
    ids = rng.integers(0, preset.vocab, ((warmup + steps) * preset.seq_len + 1, batch))
    phases, state, T = [], None, preset.seq_len
    for k in range(warmup + steps):
        if comm is not None and k == warmup:
            comm.Barrier()  # the timed steps start together
        seconds: dict = {}
        chunk = ids[k * T : (k + 1) * T + 1]
        t0 = time.perf_counter()
        _, state = train_step(model, optimizer, chunk[:-1], chunk[1:], state, 1.0, comm, seconds)
        seconds["step"] = time.perf_counter() - t0
        if k >= warmup:
            phases.append(seconds)
    # medians over the steps: a step slowed by another program's burst weighs little
    median = {name: statistics.median(p[name] for p in phases) for name in phases[0]}
    result = {
        "ranks": ranks,
        "threads": threads,
        "batch_per_rank": batch,
        "steps": steps,
        "step_seconds": median["step"],
        "chars_per_second": batch * ranks * T / median["step"],
        "gradient_bytes": sum(p.grad.nbytes for p in model.parameters()),
        **{name: value for name, value in median.items() if name != "step"},
    }
    if comm is not None:
        result["allreduce_curve"] = allreduce_curve(comm)
    return result if rank == 0 else {}


def allreduce_curve(comm, sizes_mb=ALLREDUCE_MB, repeats: int = 15) -> list[tuple[float, float]]:
    """(MB, median seconds) of `distributed.allreduce_gradients` with bucket views, as the
    char-LM calls it, over float32 gradients of that size: on one machine a shared window, on
    several ``MPI_Allreduce``."""
    import fusedrnn

    curve = []
    for mb in sizes_mb:
        holder = fusedrnn.Module()
        holder.weight = fusedrnn.Parameter(np.ones(int(mb * 2**20) // 4, np.float32))
        distributed.allreduce_gradients(holder, comm, gradient_as_bucket_view=True)  # makes it
        times = []
        for _ in range(repeats):
            comm.Barrier()
            t0 = time.perf_counter()
            distributed.allreduce_gradients(holder, comm, gradient_as_bucket_view=True)
            times.append(time.perf_counter() - t0)
        # rank 0's median; the ranks' medians differ by the barrier's skew only
        curve.append((mb, statistics.median(times)))
    return curve


# ---------------------------------------------------------------- the cost model


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of seconds against MB: latency and seconds per MB."""
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    slope, intercept = np.polyfit(x, y, 1)
    return max(float(intercept), 0.0), float(slope)


def ring_allreduce_seconds(
    nbytes: float, machines: int, gbit_per_s: float, latency_s: float = NETWORK_LATENCY_S
) -> float:
    """A ring allreduce of ``nbytes`` over ``machines``: each sends and receives
    ``2 (N - 1) / N`` of the buffer, in ``2 (N - 1)`` messages (the bandwidth-optimal algorithm
    MPI libraries use for large buffers)."""
    if machines == 1:
        return 0.0
    volume = 2 * (machines - 1) / machines * nbytes
    return volume * 8 / (gbit_per_s * 1e9) + 2 * (machines - 1) * latency_s


def efficiency(step_seconds: float, comm_seconds: float, overlap: bool = False) -> float:
    """Throughput per machine relative to one machine, the per-machine batch fixed: the step
    grows by the allreduce (by what of it the compute cannot hide, with ``overlap``)."""
    added = max(0.0, comm_seconds - step_seconds) if overlap else comm_seconds
    return step_seconds / (step_seconds + added)


# ---------------------------------------------------------------- the launcher


def _launch(
    preset_name: str, ranks: int, batch: int, threads: int, steps: int, together: bool
) -> dict:
    """One worker job: ``[mpiexec -n ranks] python -m fusedrnn bench-distributed --worker``;
    with ``together=False`` the ranks train independently (no MPI communication), and the
    slowest one's numbers are returned."""
    command = [sys.executable, "-m", "fusedrnn", "bench-distributed", "--worker"]
    command += ["--model", preset_name, "--worker-batch", str(batch)]
    command += ["--worker-threads", str(threads), "--steps", str(steps)]
    if ranks > 1:
        command = [_mpiexec(), "-n", str(ranks), *command, *(["--worker-mpi"] * together)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    package_root = str(Path(char_lm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return max(_json_objects(done.stdout), key=lambda result: result["step_seconds"])


def _json_objects(text: str) -> list[dict]:
    """The JSON objects printed by the ranks, in order. mpiexec forwards each rank's output as it
    comes, so one rank's line may arrive glued to another's (seen under load: two objects on one
    line): the objects are read one after another, not line by line."""
    decoder, objects, start = json.JSONDecoder(), [], text.find("{")
    while start != -1:
        found, end = decoder.raw_decode(text, start)
        objects.append(found)
        start = text.find("{", end)
    return objects


def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file():
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise SystemExit(f"no mpiexec beside {sys.executable} or on PATH: {distributed.MPI_HINT}")
    return found


def run(preset_name: str, ranks: int, rounds: int, steps: int, batch: int | None = None) -> dict:
    """Measure (rounds of interleaved jobs) and print the throughputs and the cost model;
    ``batch`` replaces the preset's global batch."""
    preset = PRESETS[preset_name]
    if batch is not None:
        preset = dataclasses.replace(preset, batch=batch)
    B = preset.batch
    if B % ranks:
        raise SystemExit(f"the {preset_name} model's batch {B} is not a multiple of {ranks} ranks")
    configs = {  # name: (processes, batch each, threads each, communicating)
        "1 rank x 1 thread": (1, B, 1, True),
        f"1 rank x {ranks} threads": (1, B, ranks, True),
        f"{ranks} ranks x 1 thread": (ranks, B // ranks, 1, True),
        f"1 rank x 1 thread, batch {B // ranks}": (1, B // ranks, 1, True),
        f"{ranks} independent x 1 thread, batch {B // ranks}": (ranks, B // ranks, 1, False),
    }
    load = os.getloadavg()[0]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average before: {load:.2f}")
    print(f"model: {preset_name} ({preset.note}), global batch {B} x {preset.seq_len} steps")
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for r in range(rounds):
        for name, (n, batch, threads, together) in configs.items():
            runs[name].append(_launch(preset_name, n, batch, threads, steps, together))
            rate = runs[name][-1]["chars_per_second"]
            print(f"  round {r + 1}/{rounds}: {name}: {rate / 1e3:.1f}k chars/s", flush=True)
    numbers = report(preset, ranks, runs, list(configs))
    numbers["load_average"] = [load, os.getloadavg()[0]]
    print(f"\nload average before {load:.2f}, after {os.getloadavg()[0]:.2f}")
    return numbers


def report(preset: Preset, ranks: int, runs: dict, names: list[str]) -> dict:
    """Print the measured throughputs (medians over the rounds, and ratios to 1 rank x 1
    thread within each round) and the cost model's predictions; return every number."""
    # 1 x 1, 1 x R threads, R ranks x 1, 1 x 1 at B / R, R processes at once at B / R
    base, _, multi_rank, half, concurrent = names
    rate = {name: statistics.median(r["chars_per_second"] for r in runs[name]) for name in names}
    ratio = {
        name: statistics.median(
            r["chars_per_second"] / b["chars_per_second"] for r, b in zip(runs[name], runs[base])
        )
        for name in names
    }
    print(f"\nthroughput, median of {len(runs[base])} rounds (ratio: within each round)")
    for name in [base, names[1], multi_rank]:
        print(f"  {name:24s} {rate[name] / 1e3:8.1f}k chars/s   {ratio[name]:.2f}x")

    # the cost model, from single-rank numbers and the allreduce curve
    gradient_bytes = runs[base][0]["gradient_bytes"]
    points = [point for r in runs[multi_rank] for point in r["allreduce_curve"]]
    latency, per_mb = fit_line(points)
    # the median time of each size over the rounds, interpolated at the gradients' size (caches
    # make the small buffers' time per MB smaller than the line's)
    sizes = sorted({mb for mb, _ in points})
    times = [statistics.median(t for mb, t in points if mb == size) for size in sizes]
    allreduce_here = float(np.interp(gradient_bytes / 2**20, sizes, times))
    one = statistics.median(r["step_seconds"] for r in runs[base])
    shard = statistics.median(r["step_seconds"] for r in runs[half])
    predicted = one / (shard + allreduce_here)
    # the same with the compute time R processes get when they run at once (the slowest):
    # what the cores give R ranks, without any communication
    shared = statistics.median(r["step_seconds"] for r in runs[concurrent])
    predicted_shared = one / (shared + allreduce_here)
    measured_allreduce = statistics.median(r["allreduce"] for r in runs[multi_rank])
    print(
        f"\ncost model: gradients {gradient_bytes / 2**20:.2f} MB per step; allreduce here "
        f"(allreduce_gradients, bucket views): "
        + ", ".join(f"{mb:g} MB {t * 1e3:.2f} ms" for mb, t in zip(sizes, times))
        + f" (a line: {latency * 1e6:.0f} us + {per_mb * 1e3:.2f} ms/MB) -> "
        f"{allreduce_here * 1e3:.2f} ms per step (measured in the step, waiting for the "
        f"slower rank included: {measured_allreduce * 1e3:.2f} ms)\n"
        f"  step at batch {preset.batch}: {one * 1e3:.1f} ms; at batch "
        f"{preset.batch // ranks}: {shard * 1e3:.1f} ms (1 thread)\n"
        f"  predicted {ranks} ranks x 1 thread: {shard * 1e3:.1f} + {allreduce_here * 1e3:.2f} "
        f"ms per step = {predicted:.2f}x one rank, if each rank has a core to itself\n"
        f"  {ranks} independent processes at once (no communication): {shared * 1e3:.1f} ms "
        f"per step (the slowest); with the allreduce: {predicted_shared:.2f}x one rank\n"
        f"  measured {ranks} ranks x 1 thread: {ratio[multi_rank]:.2f}x"
    )
    print(
        f"\npredicted efficiency, {shard * 1e3:.1f} ms of compute per step per machine "
        f"(batch {preset.batch // ranks} each, the global batch growing with the machines), "
        f"ring allreduce of {gradient_bytes / 2**20:.2f} MB, {NETWORK_LATENCY_S * 1e6:.0f} us "
        "per message:"
    )
    header = "  machines " + "".join(f"{bw:>9d} Gb/s" for bw in BANDWIDTHS_GBIT)
    print(header)
    table: dict[int, dict[int, float]] = {}  # machines -> Gbit/s -> efficiency
    for n in MACHINES:
        table[n] = {
            bw: efficiency(shard, ring_allreduce_seconds(gradient_bytes, n, bw))
            for bw in BANDWIDTHS_GBIT
        }
        print(f"  {n:8d} " + "".join(f"{100 * e:13.0f}%" for e in table[n].values()))
    return {
        "rate": rate,
        "ratio": ratio,
        "gradient_bytes": gradient_bytes,
        "latency": latency,
        "per_mb": per_mb,
        "allreduce_curve": dict(zip(sizes, times)),
        "allreduce_here": allreduce_here,
        "predicted_ratio": predicted,
        "predicted_ratio_shared_cores": predicted_shared,
        "measured_ratio": ratio[multi_rank],
        "efficiency": table,
        "runs": runs,
    }


def main_worker(preset_name: str, batch: int, threads: int, steps: int, use_mpi: bool) -> None:
    """Run `worker` (on ``MPI.COMM_WORLD`` with ``use_mpi``) and print rank 0's numbers as one
    JSON line."""
    comm = distributed.world() if use_mpi else None
    guard = distributed.abort_on_error(comm) if use_mpi else contextlib.nullcontext()
    with guard:
        result = worker(PRESETS[preset_name], batch, steps, max(2, steps // 5), threads, comm)
    if result:  # one write of the whole line (mpiexec forwards each write as it comes)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
