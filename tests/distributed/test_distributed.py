"""Data-parallel training on 2 MPI ranks (`fusedrnn.distributed`), launched with ``mpiexec -n 2``
and a timeout: after some steps the ranks hold the same bits, and those are (float64, 1e-12) the
parameters one process gets training on the combined batch; with clipping by the global norm, with
Adam, with dropout (each rank its own stream); averaged gradients carry a NaN to every rank; a
model that differs across ranks is refused at broadcast time, naming the parameter; a rank that
fails ends the job within a bounded time. Skipped without mpi4py (CI installs it: the mpi extra).

The programs the ranks run are in `mpi_cases.py`; its one-process twins run here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fusedrnn
from fusedrnn.bench.distributed import PRESETS
from fusedrnn.char_lm import CharLM, Config
from tests.distributed import mpi_cases

pytest.importorskip("mpi4py")

RANKS = 2
CASES_FILE = Path(mpi_cases.__file__)
TIMEOUT = 180  # seconds for one mpiexec run: a hang fails the test rather than CI
EXACT = 1e-12  # float64: the ranks sum the same numbers in another order than one process


def mpiexec() -> str:
    """The mpiexec of the MPI mpi4py runs on: beside this Python (the mpich wheel puts it in the
    venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpi4py is installed but no mpiexec is beside python or on PATH")
    return found


def package_env(**variables: str) -> dict[str, str]:
    """This environment, with the fusedrnn under test importable in a subprocess."""
    env = dict(os.environ, **variables)
    package_root = str(Path(fusedrnn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def run_mpi(args: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """``mpiexec -n 2 python ARGS`` with this fusedrnn importable and 1 thread per rank; killed
    (with every rank) and failed if it runs past ``timeout`` seconds."""
    env = package_env(OMP_NUM_THREADS="1")
    command = [mpiexec(), "-n", str(RANKS), sys.executable, *args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: a timeout kills every rank
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command)} still ran after {timeout} s\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta"]
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("".join(f"{a} = {b}({c})\n" for a, b, c in rng.choice(words, (600, 3))))
    return str(path)


MISMATCHES = ["mismatch_shape", "mismatch_order", "mismatch_frozen"]
REFREEZES = ["refreeze", "refreeze_kept_view"]
RANK_CASES = [
    *mpi_cases.TRAINING_CASES,
    *REFREEZES,
    "deleted_model",
    "no_room",
    "size_mismatch",
    "allreduce_nan",
    *MISMATCHES,
]


@pytest.fixture(scope="module")
def on_ranks(tmp_path_factory, text_file) -> dict[str, list[dict]]:
    """Every case of `mpi_cases` run on 2 ranks, in one mpiexec: per case, what each rank saw."""
    out = tmp_path_factory.mktemp("ranks")
    cases = [*RANK_CASES, "char_lm"]
    done = run_mpi([str(CASES_FILE), str(out), f"text={text_file}", *cases])
    assert done.returncode == 0, done.stderr
    results = {}
    for case in cases:
        results[case] = []
        for rank in range(RANKS):
            with np.load(out / f"{case}.rank{rank}.npz") as saved:
                result = dict(saved)
            assert "error" not in result or case.startswith("mismatch"), (
                f"case {case} failed on rank {rank}: {result['error']}"
            )
            results[case].append(result)
    return results


def parameters(result: dict) -> dict[str, np.ndarray]:
    return {key: value for key, value in result.items() if key.startswith("param.")}


def assert_ranks_identical(results: list[dict]) -> None:
    first = parameters(results[0])
    assert first
    for other in results[1:]:
        assert parameters(other).keys() == first.keys()
        for key, value in first.items():
            assert np.array_equal(parameters(other)[key], value), f"{key} differs across ranks"


@pytest.mark.parametrize("case", ["sgd", "clip", "adam"])
def test_ranks_train_the_model_one_process_trains_on_the_combined_batch(on_ranks, case):
    """Each rank starts from another seed (broadcast makes them equal) and trains on its half
    of the streams, state carried across chunks; the averaged gradients give one process's
    training on all the streams."""
    results = on_ranks[case]
    assert_ranks_identical(results)
    one_process = mpi_cases.train(case)
    initial = mpi_cases.TinyLM(seed=0)
    for key, value in parameters(one_process).items():
        np.testing.assert_allclose(results[0][key], value, rtol=EXACT, atol=EXACT, err_msg=key)
    moved = [
        not np.allclose(p, results[0][f"param.{name}"]) for name, p in initial.named_parameters()
    ]
    assert all(moved), "training changed no parameter: the comparison would prove nothing"
    # the loss is a mean over each rank's tokens: the mean over the ranks is the global one
    mean_loss = np.mean([r["losses"] for r in results], axis=0)
    np.testing.assert_allclose(mean_loss, one_process["losses"], rtol=EXACT)


def test_gradients_as_bucket_views_give_the_same_bits_with_no_copies(on_ranks):
    """``gradient_as_bucket_view=True``: the gradients become views of the allreduce's flat
    buffer (summed where they are: in a shared window, both ranks being on this machine, or by
    MPI's Allreduce), and training gives the bits of the copying path."""
    for copied, viewed, reduced in zip(
        on_ranks["adam"], on_ranks["adam_bucket"], on_ranks["adam_bucket_allreduce"]
    ):
        assert not copied["one_buffer"] and viewed["one_buffer"] and reduced["one_buffer"]
        for key, value in parameters(copied).items():
            np.testing.assert_array_equal(viewed[key], value, err_msg=key)
            np.testing.assert_array_equal(reduced[key], value, err_msg=key)
        np.testing.assert_array_equal(viewed["norms"], copied["norms"])
    assert_ranks_identical(on_ranks["adam_bucket"])


@pytest.mark.parametrize("case", REFREEZES)
def test_a_new_bucket_after_freezing_trains_on_and_frees_the_old_one_unless_kept(on_ranks, case):
    """A parameter frozen mid-training: the ranks agree to make new buckets (shared windows)
    without it and train on as one process does. The old window is freed; but not under a view
    of it that a user kept, which still holds what it held (nor written by the other rank)."""
    results = on_ranks[case]
    assert_ranks_identical(results)
    one_process = mpi_cases.refreeze()
    for key, value in parameters(one_process).items():
        np.testing.assert_allclose(results[0][key], value, rtol=EXACT, atol=EXACT, err_msg=key)
    kept = case == "refreeze_kept_view"
    for result in results:
        assert bool(result["old_window_freed"]) == (not kept)
        if kept:
            assert result["kept_still_holds"] and result["kept_is_not_the_gradient"]


def test_frozen_parameters_are_not_sent_and_stay_rank_0s(on_ranks):
    """Two parameters frozen (``requires_grad_(False)``): the others' gradients, bucket views
    of one buffer without them, train as one process does; the frozen ones stay what
    broadcast_parameters gave every rank."""
    results = on_ranks["frozen_bucket"]
    assert_ranks_identical(results)
    frozen = mpi_cases.TRAINING_CASES["frozen_bucket"][4]
    one_process = mpi_cases.train("frozen_bucket")
    initial = dict(mpi_cases.TinyLM(seed=0).named_parameters())
    for key, value in parameters(one_process).items():
        np.testing.assert_allclose(results[0][key], value, rtol=EXACT, atol=EXACT, err_msg=key)
    for name, param in initial.items():
        trained = results[0][f"param.{name}"]
        assert np.array_equal(trained, param) == (name in frozen), name
    assert all(r["one_buffer"] for r in results)


def test_clipping_uses_the_global_norm_of_the_averaged_gradient(on_ranks):
    results = on_ranks["clip"]
    one_process = mpi_cases.train("clip")
    max_norm = mpi_cases.TRAINING_CASES["clip"][1]
    assert np.all(one_process["norms"] > max_norm), "the case must clip at every step"
    for result in results:
        # the norm clip_grad_norm_ saw on each rank is the one process's, over all streams ...
        np.testing.assert_allclose(result["norms"], one_process["norms"], rtol=EXACT)
        # ... not the norm of the rank's own gradient
        assert not np.allclose(result["local_norms"], result["norms"], rtol=1e-3)
    np.testing.assert_array_equal(results[0]["norms"], results[1]["norms"])


def test_dropout_each_rank_its_own_stream_and_the_ranks_stay_equal(on_ranks):
    """Dropout seeded per rank (seed + rank) draws other masks on each rank: the combined batch
    is not one process's (whose single stream draws other masks), but the averaged gradients
    keep the ranks' parameters bit-identical."""
    results = on_ranks["dropout"]
    assert_ranks_identical(results)
    masks = [r["masks"][0] for r in results]
    assert masks[0].shape == masks[1].shape and masks[0].any()
    assert not np.array_equal(masks[0], masks[1]), "the ranks drew the same dropout masks"
    initial = mpi_cases.TinyLM(seed=0)
    assert not np.allclose(initial.rnn.weight_hh_l0, results[0]["param.rnn.weight_hh_l0"])


def test_a_deleted_models_shared_window_is_freed(on_ranks):
    """Each model's bucket views live in a shared window on this machine; once the model is
    deleted, the next allreduce (of another model) frees it on every rank: a program that
    trains model after model does not pile up windows until MPI finalizes."""
    for result in on_ranks["deleted_model"]:
        assert result["had_window"] and result["old_freed"]
        assert int(result["live"]) == 1 and result["live_is_second"]


def test_without_room_in_dev_shm_bucket_views_are_summed_by_allreduce(on_ranks):
    """A shared window that /dev/shm cannot hold would kill the ranks with a bus error when
    first touched (a container's 64 MB one, a large model): then MPI's Allreduce sums."""
    for result in on_ranks["no_room"]:
        assert not result["shared"]
        np.testing.assert_array_equal(result["grad"], 1.5)


def test_gradients_of_other_sizes_raise_on_every_rank(on_ranks):
    """Models of other sizes on the two ranks, not checked by broadcast_parameters: making the
    shared window raises the same error on both ranks, naming the shapes, copying or with views
    (whose padded buckets are of one size here), and both go on."""
    results = on_ranks["size_mismatch"]
    for result in results:
        assert int(result["alive"]) == RANKS
        for error in result["errors"]:
            assert "rank 1 has shapes [(5, 3), (5,)], rank 0 [(4, 3), (4,)]" in str(error), error
    np.testing.assert_array_equal(results[0]["errors"], results[1]["errors"])


def test_allreduce_averages_in_one_buffer_per_dtype_and_spreads_a_nan(on_ranks):
    """Rank r's gradients are (r + 1) * (i + 1) for parameter i; rank 1 puts one NaN in
    wide.weight. Every rank gets the means, and the NaN, the tied weight sent once: by MPI, in
    one Allreduce per dtype of the parameters' elements; with the ranks on one machine, in
    shared windows (copied, or as bucket views), MPI carrying only each bucket's agreement (a
    few counts), not the gradients."""
    results = on_ranks["allreduce_nan"]
    names = ["small.weight", "small.bias", "wide.weight", "wide.bias", "tied.bias"]
    for result in results:
        for run in ("allreduce", "shared", "view"):
            assert sorted(k for k in result if k.startswith(f"{run}.")) == sorted(
                f"{run}.{n}" for n in names
            )
            for i, name in enumerate(names):
                grad = result[f"{run}.{name}"]
                expected = np.full(grad.shape, 1.5 * (i + 1), grad.dtype)
                if name == "wide.weight":
                    assert np.isnan(grad[2, 3])
                    expected[2, 3] = np.nan
                np.testing.assert_array_equal(grad, expected, err_msg=f"{run} {name}")
            assert int(result[f"{run}_sent"]) == 10 * 4 + 25 * 8
        np.testing.assert_array_equal(result["allreduce_call_dtypes"], ["float32", "float64"])
        np.testing.assert_array_equal(result["allreduce_call_sizes"], [6 + 2 + 2, 20 + 5])
        for run in ("shared", "view"):
            np.testing.assert_array_equal(result[f"{run}_call_dtypes"], ["int64", "int64"])


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("mismatch_shape", ["'rnn.weight_ih_l0'", "(28, 6)", "(24, 6)"]),
        ("mismatch_order", ["'rnn.weight_ih_l0'", "'encoder.weight'"]),
        ("mismatch_frozen", ["'rnn.bias_hh_l0' is frozen", "on rank 0 it is not frozen"]),
    ],
)
def test_broadcast_refuses_models_that_differ_naming_the_parameter(on_ranks, case, named):
    """Rank 1 built another model, or froze a parameter: every rank raises the same error,
    which names the first parameter that differs, and no rank hangs (both reach the allreduce
    after it)."""
    results = on_ranks[case]
    errors = [str(r["error"]) for r in results]
    assert errors[0] == errors[1] and "rank 1" in errors[0]
    for text in named:
        assert text in errors[0], errors[0]
    assert [int(r["alive"]) for r in results] == [RANKS, RANKS]


def test_char_lm_on_two_ranks_is_the_one_process_run(on_ranks, text_file):
    """`fusedrnn.char_lm.train` with distributed=True (what ``train-charlm --distributed``
    runs): each rank 2 of the 4 streams, their state carried; the same parameters and losses
    as one process with the 4 streams."""
    results = on_ranks["char_lm"]
    assert_ranks_identical(results)
    one_process = mpi_cases.char_lm_run(text_file)
    np.testing.assert_allclose(results[0]["history"], one_process["history"], rtol=EXACT)
    for key, value in parameters(one_process).items():
        np.testing.assert_allclose(results[0][key], value, rtol=EXACT, atol=EXACT, err_msg=key)


def test_train_charlm_command_line_on_two_ranks(text_file):
    options = ["--text", text_file, "--hidden", "16", "--embed", "8", "--batch", "4"]
    options += ["--steps", "2", "--time", "0", "--eval-every", "0", "--sample-chars", "5"]
    done = run_mpi(["-m", "fusedrnn", "train-charlm", "--distributed", *options])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("2 ranks of 2 streams") == 1, done.stdout  # rank 0 alone prints
    assert "done: 2 steps" in done.stdout


def test_a_failing_rank_ends_the_job_within_bounded_time(tmp_path):
    """Rank 1 raises while rank 0 waits in an allreduce for it: under abort_on_error the job
    ends with an error, long before the timeout, and says which rank failed and why."""
    start = time.perf_counter()
    done = run_mpi([str(CASES_FILE), str(tmp_path), "raise_guarded"], timeout=60)
    seconds = time.perf_counter() - start
    assert done.returncode != 0
    assert "[rank 1] RuntimeError: rank 1 fails on purpose" in done.stderr, done.stderr
    assert seconds < 60


def test_a_bad_batch_ends_every_rank_with_the_reason(text_file):
    """--batch 5 cannot be split over 2 ranks: the job stops (no rank left waiting), saying so."""
    options = ["--text", text_file, "--batch", "5", "--steps", "1", "--time", "0"]
    done = run_mpi(["-m", "fusedrnn", "train-charlm", "--distributed", *options], timeout=60)
    assert done.returncode != 0
    assert "--batch 5 must be a multiple of the 2 ranks" in done.stderr, done.stderr


def test_bench_distributed_measures_and_models(tmp_path):
    """The tool behind docs/distributed.md's numbers runs end to end (tiny: 1 round of 2
    steps; the numbers themselves depend on the machine and are not asserted)."""
    path = tmp_path / "numbers.json"
    command = [sys.executable, "-m", "fusedrnn", "bench-distributed", "--rounds", "1"]
    done = subprocess.run(
        [*command, "--steps", "2", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=package_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "predicted 2 ranks x 1 thread" in done.stdout and "64 " in done.stdout
    numbers = json.loads(path.read_text())
    char = PRESETS["char"]
    model = CharLM(char.vocab, Config(embed=char.embed, hidden=char.hidden))
    assert numbers["gradient_bytes"] == sum(p.nbytes for p in model.parameters())
    assert set(numbers["rate"]) == {
        "1 rank x 1 thread", "1 rank x 2 threads", "2 ranks x 1 thread",
        "1 rank x 1 thread, batch 16", "2 independent x 1 thread, batch 16",
    }  # fmt: skip
    assert all(rate > 0 for rate in numbers["rate"].values())
    assert numbers["per_mb"] > 0 and numbers["predicted_ratio"] > 0
    assert numbers["predicted_ratio_shared_cores"] > 0
    assert all(0 < e <= 1 for row in numbers["efficiency"].values() for e in row.values())
