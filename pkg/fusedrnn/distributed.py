"""Data-parallel training over MPI (``pip install "fusedrnn[mpi]"``: mpi4py and MPICH).

Every rank (process) holds a whole copy of the model and trains on its own slice of each batch;
after each backward the ranks average their gradients, so every rank takes the same optimizer
step and the copies stay equal, bit for bit. The pieces, in the order a training loop uses them:

- `broadcast_parameters`: every rank starts from rank 0's parameters (and optimizer state), after
  a check that all ranks built the same model;
- `DistributedSampler`: each rank's share of the samples of an epoch;
- `allreduce_gradients`: the mean of every parameter's gradient over the ranks, in one flat
  buffer per dtype (one ``MPI_Allreduce`` per step, not one per array), written back in place;
- `abort_on_error`: a rank that fails ends the whole job (``MPI_Abort``) instead of leaving the
  others waiting for it in a collective call for ever.

With a loss that is a mean over the batch (``reduction='mean'``, the default) and the same number
of samples on every rank, the averaged gradient is exactly the gradient of the mean loss over the
combined batch (up to rounding), so training on N ranks of B samples is training on one process
of N * B samples; the learning rate does not depend on the number of ranks. Clipping after
`allreduce_gradients` clips by the global norm (that of the averaged gradient): every rank
computes the same norm. docs/distributed.md shows a whole loop, the run commands and the
measured cost.

mpi4py is imported when one of these functions first needs it, never by ``import fusedrnn``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._module import Module, Parameter, cache_aligned_zeros
from .optim import Optimizer, _parameter_list

__all__ = [
    "DistributedSampler",
    "abort_on_error",
    "allreduce_gradients",
    "broadcast_parameters",
    "threads_per_rank",
    "world",
]

MPI_HINT = 'fusedrnn.distributed needs mpi4py and an MPI: pip install "fusedrnn[mpi]"'
ABORT_GRACE_SECONDS = 0.5
"""How long `abort_on_error` waits between writing the error and aborting the job, so that
``mpiexec`` forwards the message before it stops every rank."""


def _mpi() -> Any:
    """mpi4py's ``MPI`` module, imported on first use (initialising MPI)."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(f"{MPI_HINT} ({error})") from error
    return MPI


def world() -> Any:
    """``MPI.COMM_WORLD``: every process the job started (``mpiexec -n N``)."""
    return _mpi().COMM_WORLD


def threads_per_rank(comm: Any = None) -> int:
    """The threads each rank should use: this machine's cores shared equally among the ranks of
    ``comm`` running on it (at least 1; no more than the cores the rank may run on).

    More threads than that make the ranks of one machine fight over its cores; pass it to
    `fusedrnn.set_num_threads` (``train-charlm --distributed`` does when neither ``--threads``
    nor OMP_NUM_THREADS is given). Collective: every rank of ``comm`` must call it.
    """
    comm = world() if comm is None else comm
    _check_comm(comm)
    local = comm.Split_type(_mpi().COMM_TYPE_SHARED)  # the ranks on this machine
    try:
        ranks_here = local.Get_size()
    finally:
        local.Free()
    cores = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return max(1, min(allowed, cores // ranks_here))


def _check_comm(comm: object) -> None:
    if not all(hasattr(comm, name) for name in ("Get_rank", "Get_size", "allgather")):
        raise TypeError(
            f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got {type(comm).__name__}"
        )


def _agree(comm: Any, error: str | None) -> None:
    """Raise the same error on every rank if any rank has one (``error``, None for none).

    A check that fails on some ranks only must not let the others go on into a collective call
    they would then wait in for ever: every rank learns every rank's verdict, and all raise.
    """
    errors = comm.allgather(error)
    failed = [(rank, text) for rank, text in enumerate(errors) if text is not None]
    if failed:
        rank, text = failed[0]
        raise ValueError(f"rank {rank}: {text}")


# ---------------------------------------------------------------- flat buffers


def _by_dtype(params: list[Parameter]) -> dict[np.dtype, list[Parameter]]:
    """The parameters grouped by dtype, each group in the parameters' order."""
    groups: dict[np.dtype, list[Parameter]] = {}
    for param in params:
        groups.setdefault(param.dtype, []).append(param)
    return groups


# The flat buffers of `allreduce_gradients`, one per (dtype, size) and thread, kept from step to
# step: a new one each step (1.3 MB for the char-LM) cost fresh pages, their faults and a cold
# buffer for MPI, about a third of the call (measured, 2 ranks on one machine). Every element is
# written by `_pack` before it is read, so a buffer left by other parameters of the same size
# serves as well.
_flat_buffers = threading.local()


def _flat_buffer(size: int, dtype: np.dtype) -> np.ndarray:
    buffers = _flat_buffers.__dict__.setdefault("by_key", {})
    key = (dtype, size)
    if key not in buffers:
        buffers[key] = cache_aligned_zeros((size,), dtype)
    return buffers[key]


def _pack(arrays: list[np.ndarray], dtype: np.dtype, flat: np.ndarray | None = None) -> np.ndarray:
    """One flat array (``flat``, or a new one) holding ``arrays`` one after another."""
    if flat is None:
        flat = np.empty(sum(a.size for a in arrays), dtype)
    offset = 0
    for a in arrays:
        flat[offset : offset + a.size] = a.reshape(-1)
        offset += a.size
    return flat


def _unpack(flat: np.ndarray, arrays: list[np.ndarray], divisor: int = 1) -> None:
    """Copy ``flat`` back into ``arrays`` (the inverse of `_pack`), in place, divided by
    ``divisor`` on the way (one pass over the memory instead of two)."""
    offset = 0
    for a in arrays:  # out=: also into a gradient a user replaced by a non-contiguous array
        part = flat[offset : offset + a.size].reshape(a.shape)
        if divisor == 1:
            np.copyto(a, part)
        else:
            np.divide(part, a.dtype.type(divisor), out=a)
        offset += a.size


# ---------------------------------------------------------------- broadcast


def _signature(model: Module) -> list[tuple[str, tuple[int, ...], str, bool]]:
    """(name, shape, dtype, requires_grad) of every parameter, each once, in order."""
    return [(name, p.shape, p.dtype.name, p.requires_grad) for name, p in model.named_parameters()]


def _signature_difference(mine: list, root: list, root_rank: int) -> str | None:
    """What differs between this rank's parameters and the root's, naming the first parameter
    that does; None if nothing does."""
    for i, (own, theirs) in enumerate(zip(mine, root)):
        if own[:3] != theirs[:3]:
            return (
                f"parameter {i} is {own[0]!r} of shape {own[1]} and dtype {own[2]}, but on rank "
                f"{root_rank} it is {theirs[0]!r} of shape {theirs[1]} and dtype {theirs[2]}: "
                "every rank must build the same model"
            )
        if own != theirs:
            here, there = ("not frozen" if trained else "frozen" for trained in (own[3], theirs[3]))
            return (
                f"parameter {own[0]!r} is {here} (requires_grad={own[3]}), but on rank "
                f"{root_rank} it is {there}: every rank must freeze the same parameters "
                "(allreduce_gradients sends the gradients of the others)"
            )
    if len(mine) != len(root):
        extra = mine[len(root)][0] if len(mine) > len(root) else root[len(mine)][0]
        return (
            f"the model has {len(mine)} parameters, on rank {root_rank} {len(root)} (the first "
            f"one not on both: {extra!r}): every rank must build the same model"
        )
    return None


def broadcast_parameters(
    model: Module, comm: Any, optimizer: Optimizer | None = None, root: int = 0
) -> None:
    """Give every rank the parameters (and optimizer state) of rank ``root``, in place.

    Call it once on every rank, after building the model and the optimizer and before training
    (and after loading a checkpoint on the root only). It first checks that every rank has the
    same parameter names, shapes and dtypes in the same order, each frozen
    (``requires_grad_(False)``) on every rank or on none; if not, every rank raises the same
    ValueError naming the first parameter that differs (no rank is left waiting). Then the
    parameters travel in one flat buffer per dtype (``comm.Bcast``); they are loaded with
    ``load_state_dict``, so what earlier forwards saved for backward is discarded. Gradients are
    not touched.

    Parameters
    ----------
    model : Module
    comm : mpi4py communicator, e.g. ``MPI.COMM_WORLD``
    optimizer : Optimizer, optional
        Its ``state_dict()`` (per-parameter buffers, step counts and the groups' hyperparameters)
        is sent from the root and loaded on the other ranks.
    root : int, default 0
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fusedrnn Module, got {type(model).__name__}")
    _check_comm(comm)
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
        raise TypeError(f"root must be an int rank, got {type(root).__name__}")
    if not 0 <= root < comm.Get_size():
        raise ValueError(f"root must be a rank in [0, {comm.Get_size()}), got {root}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a fusedrnn optimizer or None, got {type(optimizer).__name__}"
        )
    signatures = comm.allgather(_signature(model))
    # every rank has every signature, so every rank finds the same first difference
    for rank, signature in enumerate(signatures):
        difference = _signature_difference(signature, signatures[root], root)
        if difference is not None:
            raise ValueError(f"broadcast_parameters: rank {rank}: {difference}")

    received: dict[int, np.ndarray] = {}  # id(parameter) -> rank root's values
    for dtype, params in _by_dtype(list(model.parameters())).items():
        flat = _pack(params, dtype)
        comm.Bcast(flat, root=root)
        offset = 0
        for param in params:
            received[id(param)] = flat[offset : offset + param.size].reshape(param.shape)
            offset += param.size
    if comm.Get_rank() != root:
        model.load_state_dict(
            {name: received[id(p)] for name, p in model.named_parameters(remove_duplicate=False)}
        )

    if optimizer is not None:
        state = comm.bcast(optimizer.state_dict() if comm.Get_rank() == root else None, root)
        error = None
        if comm.Get_rank() != root:
            try:
                optimizer.load_state_dict(state)
            except (TypeError, ValueError) as failure:
                error = f"the optimizer does not take rank {root}'s state: {failure}"
        _agree(comm, error)


# ---------------------------------------------------------------- allreduce


def allreduce_gradients(model: object, comm: Any, *, gradient_as_bucket_view: bool = False) -> int:
    """Average every parameter's gradient over the ranks, in place.

    The gradients are copied into one flat buffer per dtype, summed over the ranks by one
    ``comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)`` per buffer, divided by the number of
    ranks and copied back into each ``p.grad``. A tied parameter (one object in two modules)
    is sent once; a frozen one (``requires_grad_(False)``) has no gradient and is not sent.
    Every rank must call it at the same point, with the same model and the same parameters
    frozen (`broadcast_parameters` checks both).

    A NaN or infinity in any rank's gradient reaches every rank (the sum propagates it), so
    ``clip_grad_norm_(..., error_if_nonfinite=True)`` after it stops every rank alike.

    Parameters
    ----------
    model : Module, or ``model.parameters()`` (anything an optimizer takes)
    comm : mpi4py communicator, e.g. ``MPI.COMM_WORLD``
    gradient_as_bucket_view : bool, default False
        As PyTorch DDP's option of that name: the gradients become views of the flat buffer
        (the first call replaces each ``p.grad`` by a view holding the same values), so later
        calls sum them where they are, with no copy in or out: the char-LM's step on 2 ranks
        spent 0.35 ms in the call instead of 0.59. An array taken from ``p.grad`` before the
        first call is then no longer the parameter's gradient; a ``p.grad`` replaced later is
        taken into the buffer again at the next call. The values are the same bits either way.

    Returns
    -------
    int
        The bytes of gradients each rank sent into the allreduce (the cost model of
        docs/distributed.md counts them).
    """
    _check_comm(comm)
    params = [p for p in _parameter_list(model, "model") if p.grad is not None]
    size = comm.Get_size()
    MPI = _mpi()
    sent = 0
    for dtype, group in _by_dtype(params).items():
        grads = [p.grad for p in group]
        if gradient_as_bucket_view:
            flat = _bucket(group, dtype)
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            flat /= dtype.type(size)  # the mean, each gradient where it is
        else:
            flat = _pack(grads, dtype, _flat_buffer(sum(g.size for g in grads), dtype))
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            _unpack(flat, grads, divisor=size)  # the mean
        sent += sum(g.nbytes for g in grads)
    return sent


_BUCKET_ALIGN = 64  # bytes: each gradient of a bucket starts on a cache line, as a new one does


def _bucket(group: list[Parameter], dtype: np.dtype) -> np.ndarray:
    """The flat buffer whose views are the gradients of ``group`` (one dtype), made and taken up
    by the first call (``p.grad`` replaced by a view with its values; each view on a cache line,
    the gaps zeros), kept on the group's first parameter; made again when a gradient is no longer
    its view (replaced by the user) or the group changed."""
    owner = group[0]
    bucket = getattr(owner, "_gradient_bucket", None)
    if bucket is not None:
        members, flat, views = bucket
        if len(members) == len(group) and all(
            m is p and p.grad is v for m, p, v in zip(members, group, views)
        ):
            return flat
    step = _BUCKET_ALIGN // dtype.itemsize
    offsets, total = [], 0
    for p in group:
        offsets.append(total)
        total += -(-p.size // step) * step
    flat = cache_aligned_zeros((total,), dtype)
    views = []
    for p, offset in zip(group, offsets):
        view = flat[offset : offset + p.size].reshape(p.shape)
        view[...] = p.grad
        p.grad = view
        views.append(view)
    owner._gradient_bucket = (list(group), flat, views)
    return flat


# ---------------------------------------------------------------- data


class DistributedSampler:
    """Which samples each rank takes in an epoch, as ``torch.utils.data.DistributedSampler``.

    The ``num_samples`` indices are shuffled by a generator seeded with ``(seed, epoch)`` (the
    same order on every rank, a new one each epoch: call `set_epoch`), then dealt out: rank ``r``
    takes positions ``r, r + R, r + 2R, ...`` of that order (``R`` ranks). Every rank gets the
    same count, so a mean loss weighs every sample alike:

    - ``drop_last=False`` (default): the order is padded with its own first indices up to a
      multiple of ``R``, so a few samples are seen twice in the epoch;
    - ``drop_last=True``: the last ``num_samples % R`` samples of the order are left out.

    Parameters
    ----------
    num_samples : int
        Size of the dataset (indices ``0 .. num_samples - 1``).
    comm : mpi4py communicator, optional
        Gives the number of ranks and this rank; or pass ``num_replicas`` and ``rank``.
    num_replicas, rank : int, optional
    shuffle : bool, default True
        False: the indices in order, dealt out the same way.
    seed : int, default 0
        Must be the same on every rank.
    drop_last : bool, default False

    Examples
    --------
    >>> sampler = DistributedSampler(len(dataset), MPI.COMM_WORLD, seed=0)
    >>> for epoch in range(epochs):
    ...     sampler.set_epoch(epoch)
    ...     for batch in np.array_split(np.fromiter(sampler, int), steps): ...
    """

    def __init__(
        self,
        num_samples: int,
        comm: Any = None,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if comm is not None:
            _check_comm(comm)
            if num_replicas is not None or rank is not None:
                raise ValueError("give either comm or num_replicas and rank, not both")
            num_replicas, rank = comm.Get_size(), comm.Get_rank()
        elif num_replicas is None or rank is None:
            raise ValueError("give comm, or both num_replicas and rank")
        for name, value, minimum in (
            ("num_samples", num_samples, 1),
            ("num_replicas", num_replicas, 1),
            ("seed", seed, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
            raise TypeError(f"rank must be an int, got {type(rank).__name__}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if drop_last and num_samples < num_replicas:
            raise ValueError(
                f"drop_last with {num_samples} samples over {num_replicas} ranks leaves none"
            )
        self.num_samples, self.num_replicas, self.rank = num_samples, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = bool(shuffle), seed, bool(drop_last)
        self.epoch = 0
        rounded = math.floor if drop_last else math.ceil
        self.per_rank = rounded(num_samples / num_replicas)
        self.total_size = self.per_rank * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order `__iter__` gives; the same on every rank."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's sample indices for the current epoch, ``(per_rank,)`` int64."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        if self.total_size > self.num_samples:  # pad with the order's first indices
            order = np.resize(order, self.total_size)
        return order[self.rank : self.total_size : self.num_replicas].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.per_rank


# ---------------------------------------------------------------- faults


@contextlib.contextmanager
def abort_on_error(comm: Any = None) -> Iterator[None]:
    """End the whole MPI job if the code inside raises, rather than leave the other ranks
    waiting for this one.

    A rank that dies with an exception would otherwise leave the others blocked in their next
    collective call (an allreduce that never completes: the job hangs). Inside this context an
    uncaught exception (KeyboardInterrupt and a non-zero ``SystemExit`` included) prints its
    traceback, prefixed with the rank, to stderr and calls ``comm.Abort(1)``: ``mpiexec`` then
    stops every rank and exits with an error, within seconds. ``SystemExit(0)`` passes through.

    Parameters
    ----------
    comm : mpi4py communicator, default ``MPI.COMM_WORLD``

    Examples
    --------
    >>> with abort_on_error(MPI.COMM_WORLD):
    ...     train()
    """
    comm = world() if comm is None else comm
    try:
        yield
    except SystemExit as exit_:
        if exit_.code in (None, 0):
            raise
        _abort(comm, exit_)
    except BaseException as error:  # anything uncaught ends the whole job
        _abort(comm, error)


def _abort(comm: Any, error: BaseException) -> None:
    rank = comm.Get_rank()
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    sys.stderr.write(
        "".join(f"[rank {rank}] {line}\n" for line in text.rstrip("\n").split("\n"))
        + f"[rank {rank}] aborting the MPI job (fusedrnn.distributed.abort_on_error)\n"
    )
    sys.stderr.flush()
    sys.stdout.flush()
    # mpiexec stops forwarding the ranks' output once a rank aborts: give it a moment to pass on
    # what was just written (CI, on a busy machine, once lost the message whole)
    time.sleep(ABORT_GRACE_SECONDS)
    comm.Abort(1)
    os._exit(1)  # Abort does not return; should an MPI let it, still never go on
