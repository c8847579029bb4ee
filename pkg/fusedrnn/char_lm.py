"""A character-level language model trained with truncated backpropagation through time.

Embedding -> LSTM (or GRU) -> Linear, trained on the source text of Python's own standard library
(found at run time, nothing is downloaded) or on any text file given with ``--text``. The text is
cut into ``--batch`` parallel streams; each step runs ``--seq-len`` characters of every stream,
carrying the recurrent state from one step to the next and cutting the gradient there (TBPTT with
k1 = k2 = seq_len; ``--truncate`` / ``--truncate-stride`` truncate further inside a step, in the
kernels). A progress line shows the running loss and the throughput; the loss on held-out text
(whole files the model never trains on) is compared with the unigram model's, and samples are
generated one character at a time with the cells. Every evaluation, from the untrained model's to
the last, is on the same held-out characters, so the numbers compare with each other.

Run::

    python -m fusedrnn train-charlm                        # 5 minutes on the standard library
    python -m fusedrnn train-charlm --time 60 --cell gru   # shorter, with a GRU
    python -m fusedrnn train-charlm --text book.txt        # any text file
    python -m fusedrnn train-charlm --backend reference    # the same on the NumPy reference
    python examples/char_lm.py [options]                   # the same program, as a script
    mpiexec -n 2 python -m fusedrnn train-charlm --distributed   # data-parallel on 2 ranks

With ``--distributed`` (under ``mpiexec``, ``pip install "fusedrnn[mpi]"``) the ``--batch``
streams are dealt out over the ranks (`fusedrnn.distributed.DistributedSampler`): each rank runs
its own streams, carries their recurrent state across steps, and the gradients are averaged
(`fusedrnn.distributed.allreduce_gradients`), so the run trains the model one process would
with the same global batch. Rank 0's clock decides when to stop and sets the learning rate;
rank 0 alone evaluates, prints and samples.

Everything it uses is public fusedrnn API: ``Embedding``, ``LSTM`` / ``GRU``, ``Linear``,
``CrossEntropyLoss``, ``clip_grad_norm_``, ``Adam``, the cells and ``fusedrnn.sampling``.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

import fusedrnn
from fusedrnn import distributed
from fusedrnn._spec import CELL_PARAMETERS, layer_suffix
from fusedrnn.decoding import sample_decode

UNKNOWN = "\ufffd"  # stands for every character too rare to get its own class


@dataclass
class Config:
    text: str | None = None  # a text file; None: the standard library's .py files
    max_chars: int = 6_000_000  # training text read at most (standard library)
    val_chars: int = 100_000  # held-out text (whole files never trained on): every evaluation's
    cell: str = "lstm"
    embed: int = 32
    hidden: int = 256
    layers: int = 1
    batch: int = 32
    seq_len: int = 32
    truncate: int | None = None
    truncate_stride: int | None = None
    lr: float = 3e-3
    clip: float = 1.0
    time: float = 300.0  # seconds of training (evaluations and samples included)
    steps: int | None = None  # stop after this many steps instead (or as well)
    eval_every: float = 60.0  # seconds between held-out evaluations (0: only at the end)
    sample_chars: int = 300
    temperature: float = 0.8
    top_k: int | None = None
    prompt: str = "def "
    backend: str = "fused"
    dtype: str = "float32"
    threads: int | None = None
    seed: int = 0
    quiet: bool = False
    distributed: bool = False  # data-parallel over the MPI ranks (under mpiexec)


# ---------------------------------------------------------------- data


def standard_library_files() -> list[str]:
    """The .py files of the running Python's standard library (not site-packages), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    files = glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
    return sorted(f for f in files if "site-packages" not in f and "dist-packages" not in f)


def load_text(cfg: Config) -> tuple[str, str, str]:
    """(training text, held-out text, where it came from)."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.text is not None:
        with open(cfg.text, encoding="utf-8", errors="replace") as f:
            text = f.read()
        n_val = min(cfg.val_chars, len(text) // 10)
        return text[: len(text) - n_val], text[len(text) - n_val :], cfg.text
    files = standard_library_files()
    if not files:
        raise SystemExit(
            "no .py files found in the standard library "
            f"({sysconfig.get_paths()['stdlib']}); give a text file with --text"
        )
    order = rng.permutation(len(files))
    val, train, n_val, n_train = [], [], 0, 0
    for i in order:  # held-out first (whole files), then training text up to max_chars
        with open(files[i], encoding="utf-8", errors="replace") as f:
            content = f.read()
        if n_val < cfg.val_chars:
            val.append(content)
            n_val += len(content)
        elif n_train < cfg.max_chars:
            train.append(content)
            n_train += len(content)
        else:
            break
    source = f"{len(train)} files of the standard library in {sysconfig.get_paths()['stdlib']}"
    return "".join(train)[: cfg.max_chars], "".join(val)[: cfg.val_chars], source


class Vocabulary:
    """Characters seen at least ``min_count`` times in the training text, and UNKNOWN."""

    def __init__(self, text: str, min_count: int = 5) -> None:
        counts = Counter(text)
        chars = sorted(c for c, n in counts.items() if n >= min_count and c != UNKNOWN)
        self.chars = [*chars, UNKNOWN]
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        unknown = len(self.chars) - 1
        table = np.full(0x110000, unknown, np.int32)  # every code point -> class
        for c, i in self.index.items():
            table[ord(c)] = i
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        return table[codes].astype(np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


def text_streams(ids: np.ndarray, streams: int) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` cut into ``streams`` contiguous stretches side by side: inputs ``x (length,
    streams)`` and the next characters ``y`` (x shifted by one), ``length = (len(ids) - 1) //
    streams``."""
    length = (len(ids) - 1) // streams
    x = ids[: streams * length].reshape(streams, length).T
    y = ids[1 : streams * length + 1].reshape(streams, length).T
    return x, y


def unigram_loss(train: np.ndarray, val: np.ndarray, V: int) -> float:
    """Held-out cross-entropy (nats/char) of character frequencies (add-one smoothed)."""
    counts = np.bincount(train, minlength=V) + 1.0
    return float(-np.mean(np.log(counts / counts.sum())[val]))


# ---------------------------------------------------------------- model


class CharLM(fusedrnn.Module):
    """Embedding -> LSTM/GRU -> Linear, with the loss, on either backend."""

    def __init__(self, V: int, cfg: Config) -> None:
        super().__init__()
        dtype = np.dtype(cfg.dtype)
        recurrent = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}[cfg.cell]
        self.cfg = cfg
        self.embedding = fusedrnn.Embedding(V, cfg.embed, dtype=dtype, seed=cfg.seed)
        self.rnn = recurrent(
            cfg.embed, cfg.hidden, cfg.layers, dtype=dtype, seed=cfg.seed + 1, backend=cfg.backend
        )
        self.head = fusedrnn.Linear(
            cfg.hidden, V, dtype=dtype, seed=cfg.seed + 2, backend=cfg.backend
        )
        self.loss = fusedrnn.CrossEntropyLoss(backend=cfg.backend)
        self.layers = [self.embedding, self.rnn, self.head]

    def forward(self, x: np.ndarray, y: np.ndarray, state):
        """x, y: (T, B) character ids; returns (mean loss, final state)."""
        output, state = self.rnn(self.embedding(x), state)
        return self.loss(self.head(output), y), state

    def backward(self) -> None:
        d_output = self.head.backward(self.loss.backward())
        dx, _ = self.rnn.backward(
            d_output, truncate=self.cfg.truncate, truncate_stride=self.cfg.truncate_stride
        )
        self.embedding.backward(dx)

    def cells(self) -> list:
        """One cell per layer holding a snapshot of the layer's weights, for generation."""
        make = {"lstm": fusedrnn.LSTMCell, "gru": fusedrnn.GRUCell}[self.cfg.cell]
        params = self.rnn.state_dict()
        cells = []
        for k in range(self.cfg.layers):
            cell = make(
                self.cfg.embed if k == 0 else self.cfg.hidden,
                self.cfg.hidden,
                dtype=self.rnn.dtype,
                backend=self.cfg.backend,
            ).eval()
            cell.load_state_dict(
                {name: params[name + layer_suffix(k, 0)] for name in CELL_PARAMETERS}
            )
            cells.append(cell)
        return cells


def generate(
    model: CharLM,
    vocab: Vocabulary,
    prompt: str,
    n: int,
    temperature: float,
    top_k: int | None,
    rng: np.random.Generator,
) -> str:
    """Feed the prompt, then draw n characters one at a time through the cells
    (`fusedrnn.decoding.sample_decode`)."""
    model.train(False)
    cells = model.cells()

    def step(tokens: np.ndarray, states: list) -> tuple:
        h = model.embedding(tokens)  # (rows, embed)
        new_states = []
        for cell, state in zip(cells, states):
            state = cell(h, state)
            h = state[0] if isinstance(state, tuple) else state
            new_states.append(state)
        return model.head(h), new_states

    ids = list(vocab.encode(prompt)) or [0]
    states = [None] * len(cells)
    for token in ids[:-1]:  # the prompt but its last character: only the states
        _, states = step(np.array([token]), states)
    out = sample_decode(step, states, ids[-1], n, temperature=temperature, top_k=top_k, rng=rng)
    model.train(True)
    return prompt + vocab.decode(out.tokens[0])


def evaluate(model: CharLM, data: np.ndarray, streams: int = 16, chunk: int = 256) -> float:
    """Mean held-out loss (nats/char) over ``streams`` parallel streams, state carried."""

    def logits(x: np.ndarray, state):
        output, state = model.rnn(model.embedding(x), state)
        return model.head(output), state

    return held_out_loss(model, logits, data, streams, chunk)


def held_out_loss(
    model: fusedrnn.Module, logits, data: np.ndarray, streams: int = 16, chunk: int = 256
) -> float:
    """Mean loss (nats/char) of ``model`` in eval mode on ``data`` cut into ``streams`` parallel
    streams (`text_streams`) read ``chunk`` characters at a time: ``logits(x, state)`` maps the
    ids ``x (chunk, streams)`` and the state the last chunk returned (None at first) to
    ``(logits (chunk, streams, V), state)``."""
    model.train(False)
    x_all, y_all = text_streams(data, streams)
    loss_fn = fusedrnn.CrossEntropyLoss(reduction="sum", backend=model.cfg.backend).eval()
    total, state = 0.0, None
    for t in range(0, len(x_all), chunk):
        chunk_logits, state = logits(x_all[t : t + chunk], state)
        total += float(loss_fn(chunk_logits, y_all[t : t + chunk]))
    model.train(True)
    return total / x_all.size


# ---------------------------------------------------------------- training


class Progress:
    """One self-overwriting line on a terminal; a line every few seconds otherwise."""

    def __init__(self, total: float, quiet: bool) -> None:
        self.total, self.quiet = total, quiet
        self.tty = sys.stdout.isatty()
        self.last_print = 0.0

    def update(self, step: int, elapsed: float, loss: float, rate: float) -> None:
        if self.quiet or (not self.tty and elapsed - self.last_print < 10):
            return
        self.last_print = elapsed
        done = min(1.0, elapsed / self.total) if self.total else 0.0
        bar = "#" * int(24 * done) + "." * (24 - int(24 * done))
        line = (
            f"step {step:5d} [{bar}] {elapsed:5.0f}s/{self.total:.0f}s  loss {loss:.3f}  "
            f"{rate / 1000:.1f}k chars/s"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

    def message(self, text: str) -> None:
        if not self.quiet:
            print(("\n" if self.tty else "") + text, flush=True)


def train_step(
    model: CharLM,
    optimizer: fusedrnn.optim.Optimizer,
    x: np.ndarray,
    y: np.ndarray,
    state,
    clip: float,
    comm=None,
    seconds: dict | None = None,
):
    """One training step: forward ``x`` (T, B) from the carried ``state``, backward to the step's
    start, the gradients averaged over the ranks of ``comm`` (when given), clipped to the global
    norm ``clip``, and the optimizer's step.

    Returns (this rank's mean loss, an array; the state to carry on). ``seconds``, when given,
    collects the time spent in ``'compute'`` (forward and backward), ``'allreduce'`` and
    ``'update'`` (clipping and the step): `fusedrnn.bench.distributed` times the step with it.
    """
    t0 = time.perf_counter()
    loss, state = model.forward(x, y, state)
    optimizer.zero_grad()
    model.backward()
    t1 = time.perf_counter()
    if comm is not None:
        # the gradients live in the allreduce's buffer: no copy in or out (the model is ours)
        distributed.allreduce_gradients(model, comm, gradient_as_bucket_view=True)
    t2 = time.perf_counter()
    fusedrnn.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    if seconds is not None:
        t3 = time.perf_counter()
        for name, span in (("compute", t1 - t0), ("allreduce", t2 - t1), ("update", t3 - t2)):
            seconds[name] = seconds.get(name, 0.0) + span
    return loss, state


def _start_distributed(cfg: Config):
    """The communicator of a ``--distributed`` run (None otherwise), and the kernels' threads:
    ``--threads``, else OMP_NUM_THREADS, else this machine's cores shared among its ranks."""
    try:
        comm = distributed.world() if cfg.distributed else None
    except ImportError as error:  # no mpi4py: say what to install, without a traceback
        raise SystemExit(f"--distributed: {error}") from None
    if cfg.threads:
        fusedrnn.set_num_threads(cfg.threads)
    elif comm is not None and "OMP_NUM_THREADS" not in os.environ:
        fusedrnn.set_num_threads(distributed.threads_per_rank(comm))
    return comm


def train(cfg: Config) -> dict:
    """Train; return the numbers (losses, throughput, a sample) and the model.

    ``evals`` lists ``(seconds, step, held-out loss)`` of every evaluation: the untrained model's,
    one every ``eval_every`` seconds and the final one (``held_out``), all on the same
    ``held_out_chars`` held-out characters.

    With ``cfg.distributed`` every rank of ``MPI.COMM_WORLD`` calls this; rank 0 evaluates,
    prints and samples, the other ranks return None for those numbers (see the module doc).
    An exception on one rank ends the whole job (`fusedrnn.distributed.abort_on_error`).
    """
    comm = _start_distributed(cfg)
    if comm is None:
        return _train(cfg, None)
    with distributed.abort_on_error(comm):
        return _train(cfg, comm)


def _train(cfg: Config, comm) -> dict:
    if not cfg.time and cfg.steps is None:
        raise SystemExit("give a time limit (--time SECONDS) or a number of steps (--steps N)")
    rank, ranks = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    is_root = rank == 0
    rng = np.random.default_rng(cfg.seed)
    train_text, val_text, source = load_text(cfg)
    vocab = Vocabulary(train_text)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    V, B, T = len(vocab), cfg.batch, cfg.seq_len
    if len(train_ids) < B * (T + 1):
        raise SystemExit(
            f"the training text has {len(train_ids)} characters, fewer than "
            f"batch * (seq_len + 1) = {B * (T + 1)}"
        )
    if B % ranks:
        raise SystemExit(
            f"--batch {B} must be a multiple of the {ranks} ranks: each rank runs an equal "
            "share of the streams"
        )
    unigram = unigram_loss(train_ids, val_ids, V)
    model = CharLM(V, cfg)
    optimizer = fusedrnn.Adam(model.parameters(), lr=cfg.lr)
    if comm is not None:
        distributed.broadcast_parameters(model, comm, optimizer)
    progress = Progress(cfg.time, cfg.quiet or not is_root)
    placement = f", {ranks} ranks of {B // ranks} streams" if comm is not None else ""
    progress.message(
        f"text: {source}: {len(train_ids):,} characters to train on, "
        f"{len(val_ids):,} held out (every evaluation uses them all), {V} "
        "classes\n"
        f"model: embedding {cfg.embed} -> {cfg.cell.upper()} {cfg.layers}x"
        f"{cfg.hidden} -> linear {V}; batch {B} x {T} steps{placement}, backend {cfg.backend}, "
        f"{fusedrnn.get_num_threads()} threads{' per rank' if placement else ''}\n"
        f"held-out loss of the unigram model: {unigram:.3f} nats/char"
    )
    initial = evaluate(model, val_ids) if is_root else None

    # B streams, each a contiguous stretch of the text; a step takes the next T characters of
    # every stream and carries the state on (the gradient stops at the step's start). With
    # ranks, each takes its share of the streams and carries their state.
    x_streams, y_streams = text_streams(train_ids, B)  # (length, B)
    length = len(x_streams)
    if comm is not None:
        mine = distributed.DistributedSampler(B, comm, shuffle=False).indices()
        x_streams, y_streams = x_streams[:, mine], y_streams[:, mine]
    position, state = 0, None
    history, evals = [], [(0.0, 0, initial)]
    running = None
    start = time.perf_counter()
    next_eval = cfg.eval_every or math.inf
    train_time = 0.0  # seconds in training steps only, for the throughput
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        stop = (cfg.steps is not None and step >= cfg.steps) or (cfg.time and elapsed >= cfg.time)
        done = step / cfg.steps if cfg.steps else elapsed / cfg.time
        if comm is not None:  # rank 0's clock decides for every rank, which must agree
            stop, done = comm.bcast((stop, done), root=0)
        if stop:
            break
        if position + T > length:
            position, state = 0, None  # an epoch done: start the streams again
        t0 = time.perf_counter()
        # the learning rate falls linearly to a tenth over the run
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * (1 - 0.9 * min(done, 1.0))
        loss, state = train_step(
            model,
            optimizer,
            x_streams[position : position + T],
            y_streams[position : position + T],
            state,
            cfg.clip,
            comm,
        )
        position += T
        step += 1
        train_time += time.perf_counter() - t0
        loss = float(loss)
        if comm is not None:  # the mean over the global batch, as one process would report
            loss = comm.allreduce(loss) / ranks
        history.append(loss)
        running = loss if running is None else 0.95 * running + 0.05 * loss
        progress.update(step, time.perf_counter() - start, running, step * B * T / train_time)
        if is_root and time.perf_counter() - start >= next_eval:
            held_out = evaluate(model, val_ids)
            evals.append((time.perf_counter() - start, step, held_out))
            text = generate(
                model, vocab, cfg.prompt, cfg.sample_chars // 2, cfg.temperature, cfg.top_k, rng
            )
            progress.message(
                f"held-out loss {held_out:.3f} nats/char (unigram {unigram:.3f}, "
                f"untrained {initial:.3f}) after {step} steps\n---\n{text}\n---"
            )
            next_eval += cfg.eval_every
    elapsed = time.perf_counter() - start
    rate = step * B * T / train_time if train_time else 0.0
    final = text = None
    if is_root:
        final = evaluate(model, val_ids)
        evals.append((elapsed, step, final))
        text = generate(model, vocab, cfg.prompt, cfg.sample_chars, cfg.temperature, cfg.top_k, rng)
        progress.message(
            f"done: {step} steps, {step * B * T:,} characters in {elapsed:.0f}s "
            f"({rate / 1000:.1f}k chars/s in training steps)\n"
            f"held-out loss {final:.3f} nats/char ({final / math.log(2):.2f} bits), "
            f"unigram model {unigram:.3f}, untrained {initial:.3f}\n"
            f"sample (temperature {cfg.temperature}):\n---\n{text}\n---"
        )
    return {
        "held_out": final,
        "unigram": unigram,
        "initial": initial,
        "steps": step,
        "chars_per_second": rate,
        "seconds": elapsed,
        "history": history,
        "evals": evals if is_root else None,
        "sample": text,
        "vocab_size": V,
        "held_out_chars": len(val_ids),
        "model": model,
        "rank": rank,
        "ranks": ranks,
    }


# the help of every option of `Config` and the choices of those that have them
HELPS = {
    "text": "train on this text file instead of the standard library's source",
    "max_chars": "characters of standard-library text to read at most",
    "val_chars": "held-out characters, the same for every evaluation",
    "cell": "lstm or gru",
    "embed": "embedding size",
    "hidden": "hidden size",
    "layers": "recurrent layers",
    "batch": "parallel streams",
    "seq_len": "characters per stream per step (the TBPTT window)",
    "truncate": "truncate the gradient inside a step to this many steps (kernel TBPTT k2)",
    "truncate_stride": "TBPTT k1 (with --truncate)",
    "lr": "Adam's learning rate",
    "clip": "clip the gradients' global norm to this",
    "time": "seconds to train (0: no limit, use --steps)",
    "steps": "steps to train",
    "eval_every": "seconds between held-out evaluations and samples (0: at the end only)",
    "sample_chars": "characters per sample",
    "temperature": "sampling temperature",
    "top_k": "sample among the k most likely characters",
    "prompt": "text samples start with",
    "backend": "fused (C++ kernels) or reference (NumPy)",
    "dtype": "float32 or float64",
    "threads": "threads of the kernels (default: all cores; where other busy processes "
    "share the cores, 1 can be several times faster)",
    "seed": "random seed",
    "quiet": "print nothing",
    "distributed": "data-parallel over the MPI ranks: run under mpiexec -n N (needs "
    "fusedrnn[mpi]); --batch is the global batch, split among the ranks",
}
CHOICES = {
    "cell": ["lstm", "gru"],
    "backend": ["fused", "reference"],
    "dtype": ["float32", "float64"],
}


def parse_args(
    argv: Sequence[str] | None = None,
    prog: str = "char_lm.py",
    config: type = Config,
    helps: dict | None = None,
    choices: dict | None = None,
    description: str | None = None,
):
    """The ``config`` (default `Config`) of a command line (``--hidden 128 --cell gru ...``, one
    option per field, described by ``helps``, default `HELPS`); the fields of `CHOICES` and of
    ``choices`` take one of the values listed."""
    helps = HELPS if helps is None else helps
    choices = {**CHOICES, **(choices or {})}
    defaults = config()
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or __doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(config):
        name = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type == "bool":
            parser.add_argument(name, action="store_true", help=helps[f.name])
            continue
        kind = {"str": str, "int": int, "float": float}[f.type.split(" ")[0]]
        parser.add_argument(
            name, type=kind, default=default, choices=choices.get(f.name), help=helps[f.name]
        )
    return config(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None, prog: str = "char_lm.py") -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``) and train; return `train`'s numbers."""
    return train(parse_args(argv, prog))
