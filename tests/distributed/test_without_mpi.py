"""What `fusedrnn.distributed` does without an MPI job: the sampler (given the ranks by number),
the arguments it refuses, and that ``import fusedrnn`` never imports mpi4py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedrnn
from fusedrnn.bench.distributed import _json_objects, efficiency, fit_line, ring_allreduce_seconds
from fusedrnn.distributed import DistributedSampler, allreduce_gradients, broadcast_parameters


def shards(num_samples, ranks, **options):
    return [
        DistributedSampler(num_samples, num_replicas=ranks, rank=r, **options).indices()
        for r in range(ranks)
    ]


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("num_samples", "ranks"), [(12, 3), (10, 4), (7, 2), (3, 3)])
def test_every_rank_gets_an_equal_share_of_one_shuffled_order(num_samples, ranks, drop_last):
    parts = shards(num_samples, ranks, seed=5, drop_last=drop_last)
    counts = {len(p) for p in parts}
    assert len(counts) == 1  # equal counts: a mean loss weighs every sample alike
    taken = np.concatenate(parts)
    if drop_last:
        assert len(taken) == num_samples - num_samples % ranks
        assert len(set(taken.tolist())) == len(taken)  # no sample twice
    else:
        assert len(taken) == -(-num_samples // ranks) * ranks
        assert set(taken.tolist()) == set(range(num_samples))  # every sample, a few twice
    order = np.random.default_rng([5, 0]).permutation(num_samples)
    padded = np.resize(order, len(parts[0]) * ranks)
    for r, part in enumerate(parts):
        np.testing.assert_array_equal(part, padded[r::ranks])


def test_the_order_depends_on_seed_and_epoch_only():
    sampler = DistributedSampler(50, num_replicas=2, rank=1, seed=3)
    first = list(sampler)
    assert list(DistributedSampler(50, num_replicas=2, rank=1, seed=3)) == first
    assert list(DistributedSampler(50, num_replicas=2, rank=1, seed=4)) != first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    other = DistributedSampler(50, num_replicas=2, rank=0, seed=3)
    other.set_epoch(1)
    assert sorted(second + list(other)) == list(range(50))  # the epoch's own order, dealt out
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert len(sampler) == 25


def test_without_shuffle_the_ranks_deal_the_indices_in_order():
    assert [p.tolist() for p in shards(5, 2, shuffle=False)] == [[0, 2, 4], [1, 3, 0]]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_replicas": 2}, ValueError, "give comm, or both num_replicas and rank"),
        ({"num_replicas": 2, "rank": 2}, ValueError, r"rank must be in \[0, 2\), got 2"),
        ({"num_replicas": 0, "rank": 0}, ValueError, "num_replicas must be >= 1, got 0"),
        ({"num_replicas": 2, "rank": 1.0}, TypeError, "rank must be an int, got float"),
        ({"num_replicas": 2, "rank": 0, "seed": -1}, ValueError, "seed must be >= 0"),
        ({"num_replicas": 4, "rank": 0, "drop_last": True}, ValueError, "leaves none"),
    ],
)
def test_sampler_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DistributedSampler(3, **kwargs)


def test_the_collectives_refuse_what_is_not_a_model_or_a_communicator():
    model = fusedrnn.Linear(2, 2)
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        allreduce_gradients(model, object())
    with pytest.raises(TypeError, match="model must be a fusedrnn Module, got list"):
        broadcast_parameters([model], object())


def test_importing_fusedrnn_never_imports_mpi4py():
    """mpi4py is optional: fusedrnn and fusedrnn.distributed import without it, and using a
    collective (or train-charlm --distributed) without it says what to install."""
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"  # as if not installed
        "import fusedrnn, fusedrnn.distributed, fusedrnn.char_lm\n"
        "assert 'mpi4py.MPI' not in sys.modules\n"
        "try:\n"
        "    fusedrnn.distributed.world()\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "try:\n"
        "    fusedrnn.char_lm.train(fusedrnn.char_lm.Config(distributed=True, steps=1))\n"
        "except SystemExit as stop:\n"
        "    print(stop)\n"
    )
    env = dict(os.environ)
    package_root = str(Path(fusedrnn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert 'needs mpi4py and an MPI: pip install "fusedrnn[mpi]"' in done.stdout
    assert "--distributed: fusedrnn.distributed needs mpi4py" in done.stdout  # train-charlm


def test_the_cost_model_terms():
    """docs/distributed.md's formulas: a ring allreduce moves 2 (N - 1) / N of the buffer in
    2 (N - 1) messages; efficiency is compute over compute plus what is not hidden."""
    gigabyte_at_8_gbit = 1e9 * 8 / 8e9  # one second per gigabyte
    assert ring_allreduce_seconds(1e9, 1, 8.0) == 0.0
    assert ring_allreduce_seconds(1e9, 2, 8.0, latency_s=0.0) == pytest.approx(gigabyte_at_8_gbit)
    assert ring_allreduce_seconds(1e9, 4, 8.0, latency_s=1e-3) == pytest.approx(1.5 + 6e-3)
    assert efficiency(3.0, 1.0) == pytest.approx(0.75)
    assert efficiency(3.0, 1.0, overlap=True) == 1.0
    assert efficiency(1.0, 3.0, overlap=True) == pytest.approx(1 / 3)
    latency, per_mb = fit_line([(1.0, 0.003), (2.0, 0.005), (4.0, 0.009)])
    assert latency == pytest.approx(0.001) and per_mb == pytest.approx(0.002)


def test_the_ranks_numbers_are_read_even_when_their_lines_arrive_glued():
    """mpiexec forwards each rank's output as it comes: under load one rank's JSON line arrived
    glued to the other's (CI saw two objects on one line)."""
    glued = 'warning: x\n{"step_seconds": 1.5, "rank": 0}{"step_seconds": 2.0, "rank": 1}\n\n'
    assert _json_objects(glued) == [
        {"step_seconds": 1.5, "rank": 0},
        {"step_seconds": 2.0, "rank": 1},
    ]
    assert _json_objects('{"a": {"b": 1}}\n{"a": 2}\n') == [{"a": {"b": 1}}, {"a": 2}]
    assert _json_objects("no numbers\n") == []


def test_a_gradient_bucket_holds_the_gradients_as_views_and_takes_back_a_replaced_one():
    """`gradient_as_bucket_view`'s buffer (no MPI needed to build it on one rank): each
    ``p.grad`` becomes a view of one flat buffer with its values, on its own cache line; the
    next call finds the same buffer; a gradient the user replaced is taken in again, its values
    kept."""
    from fusedrnn.distributed import _bucket

    class OneRank:  # what _bucket asks of a communicator of one rank
        def Get_size(self):
            return 1

    comm = OneRank()
    model = fusedrnn.Module()
    model.a = fusedrnn.Linear(3, 5, seed=0)
    model.b = fusedrnn.Linear(5, 2, seed=1)
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad[...] = np.arange(p.size).reshape(p.shape) + 100 * i
    before = [p.grad.copy() for p in params]
    bucket = _bucket(params, params[0].dtype, comm, True)
    flat = bucket.flat
    for p, old in zip(params, before):
        assert np.shares_memory(p.grad, flat)
        assert p.grad.ctypes.data % 64 == 0
        np.testing.assert_array_equal(p.grad, old)
    flat *= 2  # the allreduce's work, in place
    np.testing.assert_array_equal(params[2].grad, 2 * before[2])
    assert _bucket(params, params[0].dtype, comm, True) is bucket
    params[1].grad = np.full(params[1].shape, 7.0, params[1].dtype)  # replaced by the user
    again = _bucket(params, params[0].dtype, comm, True)
    assert again is not bucket and np.shares_memory(params[1].grad, again.flat)
    np.testing.assert_array_equal(params[1].grad, 7.0)
    np.testing.assert_array_equal(params[0].grad, 2 * before[0])
    model.zero_grad()
    assert not again.flat.any()
    # the copying path's bucket is the gradients back to back, and leaves p.grad alone
    grads = [p.grad for p in params]
    copying = _bucket(params, params[0].dtype, comm, False)
    assert copying.flat.size == sum(p.size for p in params)
    assert all(p.grad is g for p, g in zip(params, grads))
    assert _bucket(params, params[0].dtype, comm, False) is copying
