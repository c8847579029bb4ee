"""The programs the tests of this folder run on 2 ranks, and their one-process twins.

Run by `test_distributed.py` as ``mpiexec -n 2 python mpi_cases.py OUT_DIR CASE [CASE ...]``:
each rank runs each case and writes what it saw to ``OUT_DIR/<case>.rank<r>.npz``; the test then
compares the ranks with each other and with the same training in one process (`run_case` with
``comm=None``, in the test's own process, which needs no MPI).

A case that raises on a rank records the error (``error``) rather than ending the run, so that
the other cases still run; the fault cases (``raise_*``) are the exception: they are about how the
job ends.

Imports only numpy and fusedrnn here (mpi4py inside `main`): the test imports this file too.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import fusedrnn
from fusedrnn import distributed
from fusedrnn.optim import grad_norm

VOCAB, WIDTH, STEPS_PER_CHUNK, GLOBAL_BATCH, CHUNKS = 11, 6, 5, 4, 4
DTYPE = np.float64


class TinyLM(fusedrnn.Module):
    """Embedding -> LSTM -> (Dropout) -> Linear, the output layer tied to the embedding (one
    parameter used twice: one gradient, sent once)."""

    def __init__(self, seed: int = 0, hidden: int = WIDTH, dropout_seed: int | None = None):
        super().__init__()
        self.encoder = fusedrnn.Embedding(VOCAB, WIDTH, dtype=DTYPE, seed=seed)
        self.rnn = fusedrnn.LSTM(WIDTH, hidden, dtype=DTYPE, seed=seed + 1)
        self.drop = None if dropout_seed is None else fusedrnn.Dropout(0.3, seed=dropout_seed)
        self.decoder = fusedrnn.Linear(hidden, VOCAB, dtype=DTYPE, seed=seed + 2)
        if hidden == WIDTH:
            self.decoder.weight = self.encoder.weight
        self.loss = fusedrnn.CrossEntropyLoss()  # the mean over the batch's T * B tokens

    def forward(self, x, y, state=None):
        output, state = self.rnn(self.encoder(x), state)
        if self.drop is not None:
            output = self.drop(output)
            self.dropped = output == 0  # the mask this rank's stream drew
        return self.loss(self.decoder(output), y), state

    def backward(self):
        d_output = self.decoder.backward(self.loss.backward())
        if self.drop is not None:
            d_output = self.drop.backward(d_output)
        dx, _ = self.rnn.backward(d_output)
        self.encoder.backward(dx)


class ReorderedLM(TinyLM):
    """TinyLM with its submodules set in another order: the same arrays, named in another order."""

    def __init__(self):
        fusedrnn.Module.__init__(self)
        self.rnn = fusedrnn.LSTM(WIDTH, WIDTH, dtype=DTYPE, seed=1)
        self.encoder = fusedrnn.Embedding(VOCAB, WIDTH, dtype=DTYPE, seed=0)
        self.decoder = fusedrnn.Linear(WIDTH, VOCAB, dtype=DTYPE, seed=2)


def streams() -> np.ndarray:
    """(CHUNKS * STEPS_PER_CHUNK + 1, GLOBAL_BATCH) token ids: one stream per column."""
    rng = np.random.default_rng(42)
    return rng.integers(0, VOCAB, (CHUNKS * STEPS_PER_CHUNK + 1, GLOBAL_BATCH))


def make_optimizer(kind: str, model: fusedrnn.Module):
    if kind == "adam":
        return fusedrnn.Adam(model.parameters(), lr=0.05)
    return fusedrnn.SGD(model.parameters(), lr=0.5, momentum=0.9)


# name: (optimizer, clip max_norm or None, dropout, gradient_as_bucket_view, frozen parameters);
# gradient_as_bucket_view "allreduce": views summed by MPI's Allreduce, not in a shared window
TRAINING_CASES = {
    "sgd": ("sgd", None, False, False, ()),
    "clip": ("sgd", 0.05, False, False, ()),
    "adam": ("adam", 0.5, False, False, ()),
    "dropout": ("adam", None, True, False, ()),
    "adam_bucket": ("adam", 0.5, False, True, ()),
    "frozen_bucket": ("adam", 0.5, False, True, ("rnn.weight_ih_l0", "rnn.bias_hh_l0")),
    "adam_bucket_allreduce": ("adam", 0.5, False, "allreduce", ()),
}
REFREEZE_AT = 2  # the chunk before which the "refreeze" case freezes a parameter


def train(case: str, comm=None) -> dict[str, np.ndarray]:
    """Train TinyLM for CHUNKS steps of truncated BPTT on this rank's streams (all of them
    without ``comm``), the state carried from step to step; what the tests compare."""
    kind, clip, dropout, bucket_view, frozen = TRAINING_CASES[case]
    rank = comm.Get_rank() if comm is not None else 0
    # a seed per rank on purpose: broadcast_parameters must make the models equal
    model = TinyLM(seed=10 * rank, dropout_seed=100 + rank if dropout else None)
    optimizer = make_optimizer(kind, model)
    for name, param in model.named_parameters():
        if name in frozen:  # after the optimizer took it: the optimizer must pass it by
            param.requires_grad_(False)
    data = streams()
    distributed._SHARED_MEMORY = bucket_view != "allreduce"
    if comm is not None:
        distributed.broadcast_parameters(model, comm, optimizer)
        data = data[:, distributed.DistributedSampler(GLOBAL_BATCH, comm, shuffle=False).indices()]
    state, norms, local_norms, losses, first_masks = None, [], [], [], []
    for k in range(CHUNKS):
        chunk = data[k * STEPS_PER_CHUNK : (k + 1) * STEPS_PER_CHUNK + 1]
        loss, state = model(chunk[:-1], chunk[1:], state)
        if dropout and k == 0:
            first_masks.append(model.dropped)
        optimizer.zero_grad()
        model.backward()
        local_norms.append(grad_norm(list(model.grads.values())))
        if comm is not None:
            distributed.allreduce_gradients(model, comm, gradient_as_bucket_view=bool(bucket_view))
        if clip is not None:
            norms.append(fusedrnn.clip_grad_norm_(model.parameters(), clip))
        optimizer.step()
        losses.append(float(loss))
    result = {f"param.{name}": p.copy() for name, p in model.named_parameters()}
    result.update(norms=np.array(norms), local_norms=np.array(local_norms))
    result.update(losses=np.array(losses), masks=np.array(first_masks))
    # whether the gradients are views of one buffer (gradient_as_bucket_view)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    owners = {id(g.base) for g in grads if g.base is not None}
    result["one_buffer"] = np.array(len(owners) == 1 and all(g.base is not None for g in grads))
    distributed._SHARED_MEMORY = True
    return result


def refreeze(comm=None, keep_a_view: bool = True) -> dict[str, np.ndarray]:
    """Bucket views (in a shared window on 2 ranks of one machine), and before chunk REFREEZE_AT
    ``rnn.bias_hh_l0`` is frozen: every rank makes a new bucket without it. A view of the old
    bucket (``decoder.bias``'s gradient) is kept, as a user might, so the old window must stay
    readable and untouched (without ``keep_a_view``, the ranks free it); the parameters, whether
    the kept view did, and whether the old window was freed."""
    rank = comm.Get_rank() if comm is not None else 0
    model = TinyLM(seed=10 * rank)
    optimizer = make_optimizer("adam", model)
    data = streams()
    if comm is not None:
        distributed.broadcast_parameters(model, comm, optimizer)
        data = data[:, distributed.DistributedSampler(GLOBAL_BATCH, comm, shuffle=False).indices()]
    state, kept, kept_values, old = None, None, None, None
    for k in range(CHUNKS):
        if k == REFREEZE_AT:
            model.rnn.bias_hh_l0.requires_grad_(False)
        chunk = data[k * STEPS_PER_CHUNK : (k + 1) * STEPS_PER_CHUNK + 1]
        _, state = model(chunk[:-1], chunk[1:], state)
        optimizer.zero_grad()
        model.backward()
        if k == REFREEZE_AT and comm is not None:  # the bucket about to be replaced
            old = model.encoder.weight._gradient_bucket  # (on the first parameter)
            if keep_a_view:
                kept, kept_values = model.decoder.bias.grad, model.decoder.bias.grad.copy()
        if comm is not None:
            distributed.allreduce_gradients(model, comm, gradient_as_bucket_view=True)
        optimizer.step()
    result = {f"param.{name}": p.copy() for name, p in model.named_parameters()}
    if kept is not None:
        result["kept_still_holds"] = np.array(np.array_equal(kept, kept_values))
        result["kept_is_not_the_gradient"] = np.array(kept is not model.decoder.bias.grad)
    if old is not None:
        result["old_window_freed"] = np.array(old.window is None)
    return result


def deleted_model(comm) -> dict[str, np.ndarray]:
    """A model's gradients averaged as bucket views (a shared window on one machine), then the
    model deleted and another one trained: the first window is freed at the next call, and
    only the live model's remains."""
    import gc

    first = TinyLM()
    first(streams()[:5], streams()[1:6])
    first.backward()
    distributed.allreduce_gradients(first, comm, gradient_as_bucket_view=True)
    old = first.encoder.weight._gradient_bucket
    had_window = old.window is not None
    del first
    gc.collect()
    second = TinyLM(seed=3)
    for _ in range(2):
        second(streams()[:5], streams()[1:6])
        second.zero_grad()
        second.backward()
        distributed.allreduce_gradients(second, comm, gradient_as_bucket_view=True)
    live = [b for b in distributed._shared_buckets if b.comm is comm]
    return {
        "had_window": np.array(had_window),
        "old_freed": np.array(old.window is None),
        "live": np.array(len(live)),
        "live_is_second": np.array(
            len(live) == 1 and live[0] is second.encoder.weight._gradient_bucket
        ),
    }


def size_mismatch(comm) -> dict[str, np.ndarray]:
    """Rank 1 has a larger model and no broadcast_parameters caught it: the first allreduce
    raises the same error on every rank (none left waiting), and the job goes on."""
    model = fusedrnn.Linear(3, 4 if comm.Get_rank() == 0 else 5, dtype=np.float64)
    errors = []
    for views in (False, True):
        try:
            distributed.allreduce_gradients(model, comm, gradient_as_bucket_view=views)
            errors.append("")
        except ValueError as failure:
            errors.append(str(failure))
    return {"errors": np.array(errors), "alive": np.array(comm.allreduce(1))}


def no_room(comm) -> dict[str, np.ndarray]:
    """Bucket views when /dev/shm has no room for the window (a container's small one): the
    ranks sum by MPI's Allreduce instead (a window that does not fit kills the process with a
    bus error when touched), and get the mean."""
    room = distributed._shared_memory_room
    distributed._shared_memory_room = lambda: 0
    try:
        model = fusedrnn.Module()
        model.weight = fusedrnn.Parameter(np.zeros(1000))
        model.weight.grad[...] = comm.Get_rank() + 1
        distributed.allreduce_gradients(model, comm, gradient_as_bucket_view=True)
        return {
            "shared": np.array(model.weight._gradient_bucket.window is not None),
            "grad": model.weight.grad.copy(),
        }
    finally:
        distributed._shared_memory_room = room


def allreduce_nan(comm) -> dict[str, np.ndarray]:
    """Known gradients, one NaN on rank 1, through a model of two dtypes: the averages, the NaN
    on every rank, and which Allreduce calls (dtype, elements) carried them: by MPI's
    Allreduce (``allreduce.*``), and in shared windows, copied (``shared.*``) and as bucket
    views (``view.*``)."""
    rank = comm.Get_rank()
    calls = []

    class CountingComm:
        """The communicator, with every Allreduce recorded (dtype, elements)."""

        def __getattr__(self, name):
            return getattr(comm, name)

        def Allreduce(self, send, receive, op):  # mpi4py's name
            calls.append((str(receive.dtype), receive.size))
            return comm.Allreduce(send, receive, op=op)

    counting = CountingComm()
    result = {}
    for run, shared, views in [("allreduce", False, False), ("shared", True, False),
                               ("view", True, True)]:  # fmt: skip
        model = fusedrnn.Module()  # (a new one each run: new buckets)
        model.small = fusedrnn.Linear(3, 2, dtype=np.float32, seed=0)
        model.wide = fusedrnn.Linear(4, 5, dtype=np.float64, seed=0)
        model.tied = fusedrnn.Linear(3, 2, dtype=np.float32, seed=0)
        model.tied.weight = model.small.weight  # one parameter in two modules: sent once
        for i, p in enumerate(model.parameters()):
            p.grad[...] = (rank + 1) * (i + 1)
        if rank == 1:
            model.wide.weight.grad[2, 3] = np.nan
        calls.clear()
        distributed._SHARED_MEMORY = shared
        try:
            sent = distributed.allreduce_gradients(model, counting, gradient_as_bucket_view=views)
        finally:
            distributed._SHARED_MEMORY = True
        result.update({f"{run}.{name}": p.grad.copy() for name, p in model.named_parameters()})
        result[f"{run}_call_dtypes"] = np.array([dtype for dtype, _ in calls])
        result[f"{run}_call_sizes"] = np.array([size for _, size in calls])
        result[f"{run}_sent"] = np.array(sent)
    return result


def broadcast_mismatch(comm, which: str) -> dict[str, np.ndarray]:
    """Rank 1 builds another model (another hidden size, or another parameter order), or
    freezes a parameter the others train: the error every rank raises, and that the job goes on
    afterwards (an allreduce still works)."""
    rank = comm.Get_rank()
    model = TinyLM()
    if rank == 1 and which == "frozen":
        model.rnn.bias_hh_l0.requires_grad_(False)
    elif rank == 1:
        model = TinyLM(hidden=WIDTH + 1) if which == "shape" else ReorderedLM()
    try:
        distributed.broadcast_parameters(model, comm)
        error = ""
    except ValueError as failure:
        error = str(failure)
    alive = comm.allreduce(1)
    return {"error": np.array(error), "alive": np.array(alive)}


def raise_on_one_rank(comm) -> None:
    """Rank 1 fails before the allreduce rank 0 waits in."""
    model = TinyLM()
    with distributed.abort_on_error(comm):
        if comm.Get_rank() == 1:
            raise RuntimeError("rank 1 fails on purpose")
        distributed.allreduce_gradients(model, comm)
        time.sleep(3600)  # never reached by a correct abort: rank 0 waits above


def char_lm_config(text_file: str, distributed: bool):
    from fusedrnn import char_lm

    return char_lm.Config(
        text=text_file,
        embed=8,
        hidden=16,
        batch=4,
        seq_len=8,
        time=0,
        steps=3,
        eval_every=0,
        sample_chars=5,
        dtype="float64",
        threads=1,
        quiet=True,
        distributed=distributed,
    )


def char_lm_run(text_file: str, comm=None) -> dict[str, np.ndarray]:
    """Three steps of the char-LM program (`fusedrnn.char_lm.train`), distributed or not."""
    from fusedrnn import char_lm

    result = char_lm.train(char_lm_config(text_file, comm is not None))
    params = {f"param.{n}": p.copy() for n, p in result["model"].named_parameters()}
    return {**params, "history": np.array(result["history"])}


def run_case(case: str, comm=None, text_file: str | None = None) -> dict[str, np.ndarray]:
    if case in TRAINING_CASES:
        return train(case, comm)
    if case.startswith("refreeze"):
        return refreeze(comm, keep_a_view=case == "refreeze_kept_view")
    if case == "size_mismatch":
        return size_mismatch(comm)
    if case == "no_room":
        return no_room(comm)
    if case == "deleted_model":
        return deleted_model(comm)
    if case == "allreduce_nan":
        return allreduce_nan(comm)
    if case.startswith("mismatch_"):
        return broadcast_mismatch(comm, case.removeprefix("mismatch_"))
    if case == "char_lm":
        return char_lm_run(text_file, comm)
    if case == "raise_guarded":
        return raise_on_one_rank(comm)
    raise ValueError(f"unknown case {case!r}")


def main(argv: list[str]) -> None:
    out, cases = Path(argv[0]), argv[1:]
    comm = distributed.world()
    text_file = None
    for case in cases:
        if case.startswith("text="):
            text_file = case.removeprefix("text=")
            continue
        try:
            result = run_case(case, comm, text_file)
        except Exception as failure:  # recorded, so that the test shows it
            result = {"error": np.array(f"{type(failure).__name__}: {failure}")}
        np.savez(out / f"{case}.rank{comm.Get_rank()}.npz", **result)


if __name__ == "__main__":
    main(sys.argv[1:])
