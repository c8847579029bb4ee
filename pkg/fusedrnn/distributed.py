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
import time
import traceback
import weakref
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

    The gradients of one dtype travel in one flat buffer (a bucket), kept from call to call on
    the parameters: the sum over the ranks, divided by the number of ranks, comes back into each
    ``p.grad``. A tied parameter (one object in two modules) is sent once; a frozen one
    (``requires_grad_(False)``) has no gradient and is not sent. Every rank must call it at the
    same point, with the same model and the same parameters frozen (`broadcast_parameters`
    checks both).

    When every rank of ``comm`` runs on one machine, the buckets are memory all of them map (an
    MPI-3 shared window), and each rank sums its share of the elements over every rank's
    bucket, where they are, instead of ``comm.Allreduce`` copying them through MPI's buffers:
    with bucket views the char-LM's step on 2 ranks spent 0.3-0.4 ms in the call instead of
    0.65-0.75 (docs/distributed.md). On 2 ranks, the same bits either way.

    A NaN or infinity in any rank's gradient reaches every rank (the sum propagates it), so
    ``clip_grad_norm_(..., error_if_nonfinite=True)`` after it stops every rank alike.

    Parameters
    ----------
    model : Module, or ``model.parameters()`` (anything an optimizer takes)
    comm : mpi4py communicator, e.g. ``MPI.COMM_WORLD``
        The same object at every call: a bucket belongs to the communicator it was made for
        (another one, even of the same ranks, makes new buckets).
    gradient_as_bucket_view : bool, default False
        As PyTorch DDP's option of that name: the gradients become views of the bucket (the
        first call replaces each ``p.grad`` by a view holding the same values), so later calls
        sum them where they are, with no copy in or out. An array taken from ``p.grad`` before
        the first call is then no longer the parameter's gradient; a ``p.grad`` replaced later
        is taken into the bucket again at the next call. The same bits either way.

    Returns
    -------
    int
        The bytes of gradients each rank sent into the allreduce (the cost model of
        docs/distributed.md counts them).
    """
    _check_comm(comm)
    params = [p for p in _parameter_list(model, "model") if p.grad is not None]
    sent = 0
    for dtype, group in _by_dtype(params).items():
        bucket = _bucket(group, dtype, comm, gradient_as_bucket_view)
        grads = [p.grad for p in group]
        if gradient_as_bucket_view:
            bucket.average()
        else:
            _pack(grads, dtype, bucket.flat)
            bucket.average(divide=False)
            _unpack(bucket.flat, grads, divisor=comm.Get_size())  # the mean, on the way back
        sent += sum(g.nbytes for g in grads)
    return sent


_BUCKET_ALIGN = 64  # bytes: each gradient of a bucket starts on a cache line, as a new one does
_SHARED_MEMORY = True
"""Whether the ranks of one machine sum their buckets in a shared window (the tests set it False
to run MPI's Allreduce on one machine too)."""


class _Bucket:
    """The flat buffer of one dtype's gradients, kept from call to call (on the first of its
    parameters), and how it is averaged over the ranks.

    ``flat`` holds the gradients of the parameters one after another; with ``views`` each
    ``p.grad`` is a view of it, from a cache line (the gaps zeros). A bucket on a communicator
    whose ranks all run on one machine is this rank's part of an MPI-3 shared window
    (``MPI.Win.Allocate_shared``): `average` then has rank r add up the r-th share of the
    elements over every rank's part, in rank order, divide, and write the mean into every part,
    between two barriers, with no copy through MPI's buffers. Otherwise `average` is one
    ``comm.Allreduce``. On 2 ranks both give the same bits (a sum of two is the same either way
    round). The bucket holds its parameters weakly: it does not keep a deleted model alive.
    """

    def __init__(self, members: list[Parameter], dtype: np.dtype, comm: Any, views: bool):
        self.members = [weakref.ref(p) for p in members]
        self.comm, self.views, self.ranks = comm, views, comm.Get_size()
        self.shapes = tuple(p.shape for p in members)
        step = _BUCKET_ALIGN // dtype.itemsize if views else 1  # (copies: no gaps needed)
        offsets, self.size = [], 0
        for p in members:
            offsets.append(self.size)
            self.size += -(-p.size // step) * step
        self.window = self.node = self.memory = None
        self.parts: list[np.ndarray] = []
        if _SHARED_MEMORY and self.ranks > 1:
            self._share(dtype)  # collective: every rank comes to the same answer
        own = self.parts[self.node.Get_rank()] if self.window is not None else None
        self.flat = own if own is not None else cache_aligned_zeros((self.size,), dtype)
        for p, offset in zip(members, offsets):
            part = self.flat[offset : offset + p.size]
            part[...] = p.grad.reshape(-1)
            if views:
                p.grad = part.reshape(p.shape)
        self.grads = [p.grad for p in members]

    def _share(self, dtype: np.dtype) -> None:
        """The shared window, when every rank of ``comm`` runs on this machine."""
        MPI = _mpi()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        if node.Get_size() != self.ranks:  # ranks on several machines: MPI's Allreduce
            node.Free()
            return
        # room for the window beside what else uses the memory, on every rank; and the same
        # gradients everywhere (MPI's Allreduce ends a job whose sizes differ; a rank here would
        # fail alone and leave the others waiting in the barrier)
        room = _shared_memory_room() >= 2 * self.ranks * self.size * dtype.itemsize
        rooms, shapes = zip(*node.allgather((room, self.shapes)))
        for rank, theirs in enumerate(shapes):
            if theirs != shapes[0]:
                node.Free()
                raise ValueError(
                    f"allreduce_gradients: the ranks' {dtype} gradients differ: rank {rank} has "
                    f"shapes {list(theirs)}, rank 0 {list(shapes[0])}; every rank must have the "
                    "same model with the same parameters frozen (broadcast_parameters checks)"
                )
        if not all(rooms):
            node.Free()  # MPI's Allreduce
            return
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")  # each rank's part on pages of its own
        try:
            window = MPI.Win.Allocate_shared(
                self.size * dtype.itemsize, dtype.itemsize, info, comm=node
            )
        finally:
            info.Free()
        window.Lock_all(MPI.MODE_NOCHECK)  # the passive epoch Sync needs, open till Free
        self.node, self.window = node, window
        self.parts = [
            np.ndarray((self.size,), dtype, buffer=window.Shared_query(r)[0])
            for r in range(self.ranks)
        ]
        # this rank's share: whole cache lines, so that no line is written by two ranks
        step = _BUCKET_ALIGN // dtype.itemsize
        bounds = [self.size * r // self.ranks // step * step for r in range(self.ranks)]
        rank = node.Get_rank()
        self.share = slice(bounds[rank], [*bounds[1:], self.size][rank])
        _shared_buckets.append(self)

    def fits(self, group: list[Parameter], comm: Any, views: bool) -> bool:
        """Whether this bucket still serves ``group``: the same parameters, communicator and
        kind, and (views) every gradient still its view."""
        return (
            comm is self.comm
            and views == self.views
            and len(group) == len(self.members)
            and all(m() is p for m, p in zip(self.members, group))
            and (not views or all(p.grad is g for p, g in zip(group, self.grads)))
        )

    def average(self, divide: bool = True) -> None:
        """``flat`` becomes the sum of every rank's ``flat`` (the mean with ``divide``)."""
        if self.window is None:
            self.comm.Allreduce(_mpi().IN_PLACE, self.flat, op=_mpi().SUM)
            if divide:
                self.flat /= self.flat.dtype.type(self.ranks)
            return
        self._barrier()  # every rank's gradients are in its part
        total = self.parts[0][self.share]  # the sum in rank order, into rank 0's part
        for part in self.parts[1:]:
            np.add(total, part[self.share], out=total)
        if divide:
            total /= total.dtype.type(self.ranks)
        for part in self.parts[1:]:
            part[self.share] = total
        self._barrier()  # every share is in every part

    def _barrier(self) -> None:
        # (Sync around it: the memory barriers of the MPI-3 shared memory model)
        self.window.Sync()
        self.node.Barrier()
        self.window.Sync()

    def unused(self) -> bool:
        """Whether this shared bucket serves no parameter any more (its model was deleted, or
        its first parameter has another bucket now) and nothing holds an array of its memory
        (a gradient view a user kept): then its window may be freed. Drops its own arrays
        once it serves no parameter."""
        owner = self.members[0]()
        if owner is not None and getattr(owner, "_gradient_bucket", None) is self:
            return False
        if self.memory is None:
            self.memory = weakref.ref(self.flat)
            self.flat, self.parts, self.grads = None, [], []
        return self.memory() is None

    def free(self) -> None:
        """Free the shared window: collective, every rank at once."""
        self.window.Unlock_all()
        self.window.Free()
        self.node.Free()
        self.window = self.node = None


def _shared_memory_room() -> float:
    """Bytes free in /dev/shm, where MPICH maps shared windows (unbounded where there is none).

    A window larger than that is not refused when it is made: the process dies of a bus error
    when it first touches the part that does not fit (as in a container's default 64 MB
    /dev/shm), so buckets that would not fit twice over are summed by MPI's Allreduce instead.
    """
    try:
        stat = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return math.inf
    return stat.f_bavail * stat.f_frsize


# The buckets in shared windows that are not freed yet, in the order they were made (the same
# order on every rank, since making one is collective). `_bucket` frees those no rank needs.
_shared_buckets: list[_Bucket] = []


def _bucket(group: list[Parameter], dtype: np.dtype, comm: Any, views: bool) -> _Bucket:
    """The bucket of ``group`` (one dtype), kept on its first parameter; made (again) when there
    is none or it no longer fits.

    Shared windows are made and freed collectively, so on that path the ranks first agree, in
    one small Allreduce (which also waits for every rank's gradients), on whether any of them
    needs a new bucket, and on which of the windows of ``comm`` no rank needs any more (`unused`
    on every rank: those are freed). A window a user still holds a view of stays until it is
    not held; what is left when the program ends, MPI frees when it finalizes.
    """
    owner = group[0]
    bucket = getattr(owner, "_gradient_bucket", None)
    fits = bucket is not None and bucket.fits(group, comm, views)
    if not (_SHARED_MEMORY and comm.Get_size() > 1):
        if not fits:  # a bucket of this rank's own memory: no other rank needs to know
            owner._gradient_bucket = bucket = _Bucket(group, dtype, comm, views)
        return bucket
    MPI = _mpi()
    mine = [b for b in _shared_buckets if b.comm is comm]
    votes = np.array([not fits, *(b.unused() for b in mine)], np.int64)
    comm.Allreduce(MPI.IN_PLACE, votes, op=MPI.SUM)  # (ranks that need a new one, then free)
    for b, count in zip(mine, votes[1:]):
        if count == comm.Get_size():
            b.free()
            _shared_buckets.remove(b)
    if votes[0] > 0:
        owner._gradient_bucket = bucket = _Bucket(group, dtype, comm, views)
    return bucket


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
