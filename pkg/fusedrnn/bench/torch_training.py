"""A whole PyTorch training step, ``torch.nn`` against ``fusedrnn.torch``, side by side in one run:
``python -m fusedrnn bench --torch-training``.

The model and the step are those of PyTorch's word-language-model example
(github.com/pytorch/examples, ``word_language_model``): an embedding, dropout, a 2-layer LSTM or
GRU with dropout between the layers, dropout, a linear decoder, log-softmax and the negative
log-likelihood; backward, ``clip_grad_norm_(0.25)`` and SGD at lr 20; the hidden state carried
from step to step, detached. emsize = nhid = 200, bptt 35, batch 20, dropout 0.2. Rows: a
character-level vocabulary (100 symbols, where the recurrent layers are most of the work, also
with nhid 512) and a word-level one (WikiText-2's 33,278 words, where the decoder's GEMM is
about ten times the recurrent work). Fine-tuning rows freeze the embedding and the recurrent
layer 0 (``requires_grad_(False)``): only layer 1 and the decoder train, and nothing below
layer 1 needs a gradient.

Each row builds the model twice from one seed, once with ``torch.nn``'s layer and once converted
with `fusedrnn.torch.convert`, checks that one step without dropout gives the same loss and
gradients (float32 tolerance), then times the steps of the two, alternating, after a warm-up.

The cell-loop rows train a cell in a Python loop, as a decoder or a custom recurrent model does:
20 steps of ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell`` (or ``fusedrnn.torch``'s) at
batch 32 on data (inputs that need no gradient), a linear readout of every step's h and the mean
squared error against fixed targets; backward and SGD. Each step's Python, autograd's bookkeeping
and the gradients it adds up over the steps are there as the kernels are.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .. import _config
from .machine import cpu_name, isa_note, torch_description
from .timing import thread_limit

BPTT, BATCH, LAYERS, DROPOUT, CLIP, LR = 35, 20, 2, 0.2, 0.25, 20.0


@dataclass(frozen=True)
class TrainingCase:
    """One row: the model's vocabulary, recurrent cell and sizes (emsize = nhid)."""

    level: str  # "char" or "word": what the vocabulary is
    cell: str  # "LSTM" or "GRU"
    vocab: int
    nhid: int
    bptt: int = BPTT
    batch: int = BATCH
    frozen_bottom: bool = False  # the embedding and layer 0 frozen (fine-tuning the top)

    @property
    def label(self) -> str:
        shape = (
            "" if (self.bptt, self.batch) == (BPTT, BATCH) else f" bptt={self.bptt} B={self.batch}"
        )
        frozen = ", layer 0 frozen" if self.frozen_bottom else ""
        return f"{self.level}-level {self.cell} vocab={self.vocab} nhid={self.nhid}{shape}{frozen}"

    @property
    def family(self) -> str:  # "lstm" or "gru": what --only names
        return self.cell.lower()


@dataclass(frozen=True)
class CellLoopCase:
    """One row of a cell trained in a Python loop of ``steps`` steps (see the top)."""

    cell: str  # "LSTMCell", "GRUCell" or "RNNCell"
    hidden: int  # = input size
    steps: int = 20
    batch: int = 32
    outputs: int = 10  # of the readout

    @property
    def label(self) -> str:
        return f"{self.cell}({self.hidden}) loop T={self.steps} B={self.batch}"

    @property
    def family(self) -> str:  # "lstm", "gru", "rnn": what --only names
        return self.cell.removesuffix("Cell").lower()


CASES = (
    TrainingCase("char", "LSTM", 100, 200),
    TrainingCase("char", "GRU", 100, 200),
    TrainingCase("char", "LSTM", 100, 512),
    TrainingCase("char", "GRU", 100, 512),
    TrainingCase("word", "LSTM", 33278, 200),
    TrainingCase("word", "GRU", 33278, 200),
    TrainingCase("char", "LSTM", 100, 200, frozen_bottom=True),
    TrainingCase("char", "GRU", 100, 200, frozen_bottom=True),
    CellLoopCase("LSTMCell", 256),
    CellLoopCase("LSTMCell", 512),
    CellLoopCase("GRUCell", 256),
    CellLoopCase("GRUCell", 512),
    CellLoopCase("RNNCell", 256),
)


@dataclass
class TrainingRow:
    case: TrainingCase | CellLoopCase
    torch_ms: float
    fused_ms: float
    max_difference: float  # of the loss and the gradients of the checked step, relative
    # the median over the pairs of steps (a torch.nn step and the fusedrnn step right after it)
    # of their ratio: a slow spell of the shared machine that lasts a few steps moves the two
    # medians apart, but mostly falls on both steps of a pair
    paired_speedup: float

    @property
    def speedup(self) -> float:
        return self.torch_ms / self.fused_ms


def make_model(torch: ModuleType, case: TrainingCase, dropout: float, dtype):
    """The word-language-model example's ``RNNModel`` (untied weights), seeded."""

    class RNNModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = torch.nn.Dropout(dropout)
            self.encoder = torch.nn.Embedding(case.vocab, case.nhid)
            self.rnn = getattr(torch.nn, case.cell)(case.nhid, case.nhid, LAYERS, dropout=dropout)
            self.decoder = torch.nn.Linear(case.nhid, case.vocab)

        def forward(self, tokens, hidden):
            output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
            decoded = self.decoder(self.drop(output)).view(-1, case.vocab)
            return torch.nn.functional.log_softmax(decoded, dim=1), hidden

    torch.manual_seed(0)
    model = RNNModel().to(dtype)
    if case.frozen_bottom:
        for name, parameter in model.named_parameters():
            if name.startswith("encoder.") or name.endswith("_l0"):
                parameter.requires_grad_(False)
    return model


def _initial_hidden(torch: ModuleType, case: TrainingCase, dtype):
    h = torch.zeros(LAYERS, case.batch, case.nhid, dtype=dtype)
    return (h, h.clone()) if case.cell == "LSTM" else h


def _detach(hidden):
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


class _Trainer:
    """The example's ``train()`` loop body, one step per call, on fixed random batches."""

    def __init__(self, torch: ModuleType, model, case: TrainingCase, dtype) -> None:
        self.torch, self.model = torch, model
        generator = torch.Generator().manual_seed(1)
        self.data = torch.randint(0, case.vocab, (case.bptt, case.batch), generator=generator)
        self.targets = torch.randint(0, case.vocab, (case.bptt * case.batch,), generator=generator)
        self.hidden = _initial_hidden(torch, case, dtype)
        self.criterion = torch.nn.NLLLoss()

    def step(self, update: bool = True):
        torch, model = self.torch, self.model
        self.hidden = _detach(self.hidden)
        model.zero_grad()
        output, self.hidden = model(self.data, self.hidden)
        loss = self.criterion(output, self.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        if update:
            for p in model.parameters():
                if p.grad is not None:  # (a frozen parameter has none)
                    p.data.add_(p.grad, alpha=-LR)
        return loss


class _CellLoopTrainer:
    """A cell and its readout trained in a Python loop over the steps (`CellLoopCase`)."""

    LR = 0.01

    def __init__(self, torch: ModuleType, case: CellLoopCase, fused: bool, dtype) -> None:
        import fusedrnn.torch as ft

        self.torch, self.case = torch, case
        torch.manual_seed(0)
        cell = getattr(torch.nn, case.cell)(case.hidden, case.hidden)
        readout = torch.nn.Linear(case.hidden, case.outputs)
        self.model = torch.nn.ModuleDict({"cell": cell, "readout": readout}).to(dtype)
        if fused:
            ft.convert(self.model)
        generator = torch.Generator().manual_seed(1)
        shape = (case.steps, case.batch)
        self.inputs = torch.randn(*shape, case.hidden, generator=generator).to(dtype)
        self.targets = torch.randn(*shape, case.outputs, generator=generator).to(dtype)

    def step(self, update: bool = True):
        torch, case, model = self.torch, self.case, self.model
        model.zero_grad()
        h = torch.zeros(case.batch, case.hidden, dtype=self.inputs.dtype)
        state = (h, h.clone()) if case.cell == "LSTMCell" else h
        outputs = []
        for t in range(case.steps):
            state = model["cell"](self.inputs[t], state)
            outputs.append(model["readout"](state[0] if isinstance(state, tuple) else state))
        loss = torch.nn.functional.mse_loss(torch.stack(outputs), self.targets)
        loss.backward()
        if update:
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-self.LR)
        return loss


def _trainer(torch: ModuleType, case, fused: bool, dtype, dropout: float):
    """A trainer (``.model``, ``.step(update)``) of the row's model, torch.nn's or fused."""
    import fusedrnn.torch as ft

    if isinstance(case, CellLoopCase):
        return _CellLoopTrainer(torch, case, fused, dtype)
    model = make_model(torch, case, dropout, dtype)
    return _Trainer(torch, ft.convert(model) if fused else model, case, dtype)


def check_case(torch: ModuleType, case, dtype) -> float:
    """One step without dropout through both models: the largest difference of the loss and of
    any gradient, relative to that tensor's largest magnitude."""
    results = []
    for fused in (False, True):
        trainer = _trainer(torch, case, fused, dtype, 0.0)
        loss = trainer.step(update=False)
        grads = (p.grad for p in trainer.model.parameters() if p.requires_grad)
        results.append([loss.detach(), *grads])
    return max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        for a, b in zip(results[1], results[0])
    )


def run_case(torch: ModuleType, case, dtype, repeats: int) -> TrainingRow:
    difference = check_case(torch, case, dtype)
    trainers = {fused: _trainer(torch, case, fused, dtype, DROPOUT) for fused in (False, True)}
    for trainer in trainers.values():  # warm-up: first-call allocations, caches
        trainer.step()
    # One step of each in turn: a slow spell of the shared machine then hits both alike
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for fused, trainer in trainers.items():
            start = time.perf_counter()
            trainer.step()
            times[fused].append(time.perf_counter() - start)
    return TrainingRow(
        case,
        1e3 * statistics.median(times[False]),
        1e3 * statistics.median(times[True]),
        difference,
        statistics.median(a / b for a, b in zip(times[False], times[True])),
    )


TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
"""The largest relative difference `check_case` accepts."""


def run(
    cases: Sequence[TrainingCase | CellLoopCase] = CASES,
    dtype: np.dtype | type = np.float32,
    threads: int | None = None,
    repeats: int = 15,
) -> list[str]:
    """Check and time every case; the lines of the report (header, table, summary).

    Raises
    ------
    RuntimeError
        When PyTorch cannot be imported.
    """
    try:
        import torch
    except ImportError:
        raise RuntimeError(
            "--torch-training needs PyTorch: pip install 'fusedrnn[torch]' (install the CPU "
            "build of torch first, see docs/install.md)"
        ) from None
    dtype = np.dtype(dtype)
    torch_dtype = getattr(torch, dtype.name)
    threads = threads or _config.get_num_threads()
    load_at_start = os.getloadavg()[0]
    with thread_limit(threads, torch):
        rows = [run_case(torch, case, torch_dtype, repeats) for case in cases]
    width = max([40, *(len(row.case.label) for row in rows)])  # of the model column
    lines = [
        f"# fusedrnn bench --torch-training, "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {dtype.name}",
        f"# CPU: {cpu_name()} ({os.cpu_count()} cores); threads: {threads}; "
        f"PyTorch {torch_description(torch)}",
        *([f"# ISA: {note}"] if (note := isa_note()) else []),
        f"# load average (1 min) at start / end: {load_at_start:.2f} / {os.getloadavg()[0]:.2f}",
        f"# one training step of PyTorch's word_language_model example: embedding, dropout "
        f"{DROPOUT}, {LAYERS}-layer RNN, linear decoder, log-softmax + NLL, backward, clip "
        f"{CLIP}, SGD; bptt {BPTT}, batch {BATCH}, emsize = nhid",
        "# cell loops: a cell stepped in a Python loop on data, a linear readout of each h, MSE, "
        "backward, SGD",
        f"# ms: median of {repeats} steps of each, alternating (one torch.nn step, one fusedrnn "
        f"step), after a warm-up step; speed-up: of the medians; paired: the median of each "
        f"pair's ratio (a torch.nn step / the fusedrnn step after it); check: largest relative "
        f"difference of the loss and gradients of one step without dropout",
        "",
        f"{'model':<{width}} {'torch.nn ms':>12} {'fusedrnn ms':>12} {'speed-up':>9} {'paired':>7} "
        f"{'check':>9}",
    ]
    failed = []
    for row in rows:
        ok = row.max_difference <= TOLERANCE[dtype]
        if not ok:
            failed.append(row.case.label)
        lines.append(
            f"{row.case.label:<{width}} {row.torch_ms:>12.2f} {row.fused_ms:>12.2f} "
            f"{row.speedup:>8.2f}x {row.paired_speedup:>6.2f}x {row.max_difference:>9.1e}"
            + ("" if ok else " FAIL")
        )
    if failed:
        lines.append(f"FAILED the check: {', '.join(failed)}")
    return lines
