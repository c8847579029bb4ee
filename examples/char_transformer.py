"""A small causal transformer character language model, the LSTM char-LM's rival.

Embedding + positional encoding -> N pre-LN causal blocks (`fusedrnn.TransformerDecoderBlock`)
-> LayerNorm -> Linear, trained on the same text, the same streams of characters and the same
schedule as the LSTM of `fusedrnn.char_lm` (``python -m fusedrnn train-charlm``), whose data
loading, vocabulary, batching, held-out evaluation, training step and command line it reuses.
The one difference in the data: the LSTM carries its state from one window of ``--context``
characters to the next, while the transformer sees each window on its own (in training and in
the held-out evaluation alike), so its first characters have little context.

Generation samples one character at a time, twice from the same seed: with a `fusedrnn.KVCache`
per block (each step attends to the stored keys and values: its cost grows with the prefix) and
without (each step recomputes the whole prefix: its cost grows with the prefix's square). Both
give the same characters; the program prints both speeds in tokens per second.

Run::

    python examples/char_transformer.py                  # 60 s on the standard library
    python examples/char_transformer.py --time 300 --layers 4
    python examples/char_transformer.py --text book.txt --positions learned
    python examples/char_transformer.py --help           # every option
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import fusedrnn
from fusedrnn import char_lm
from fusedrnn.decoding import sample_decode


@dataclass
class Config:
    text: str | None = None  # a text file; None: the standard library's .py files
    max_chars: int = 6_000_000
    val_chars: int = 100_000
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    d_ff: int = 256
    context: int = 64  # characters per window: the positions the model knows
    positions: str = "sinusoidal"
    activation: str = "relu"
    dropout: float = 0.0
    batch: int = 32
    lr: float = 6e-3
    clip: float = 1.0
    time: float = 60.0
    steps: int | None = None
    sample_chars: int = 60
    temperature: float = 0.8
    top_k: int | None = None
    prompt: str = "def "
    backend: str = "fused"
    dtype: str = "float32"
    threads: int | None = None
    seed: int = 0
    quiet: bool = False


HELPS = {
    **char_lm.HELPS,
    "d_model": "width of the embedding and of every block",
    "heads": "attention heads",
    "layers": "transformer blocks",
    "d_ff": "width of the feed-forward layer inside a block",
    "context": "characters per window (training, evaluation, and the longest prompt + sample)",
    "positions": "sinusoidal (fixed) or learned positional encoding",
    "activation": "the feed-forward layer's activation: relu or gelu (exact, slower)",
    "dropout": "dropout in the blocks (attention weights, feed-forward, residual branches)",
    "sample_chars": "characters per sample (at most context - len(prompt) + 1)",
}


class CharTransformer(fusedrnn.Module):
    """Embedding + positions -> blocks -> LayerNorm -> Linear, with the loss.

    ``forward(x, y, state)`` and ``backward()`` are `fusedrnn.char_lm.CharLM`'s, so the same
    training step runs it; x and y are (T, B) ids (time first, as the char-LM's streams).
    """

    def __init__(self, V: int, cfg: Config) -> None:
        super().__init__()
        dtype = np.dtype(cfg.dtype)
        self.cfg = cfg
        self.embedding = fusedrnn.Embedding(V, cfg.d_model, dtype=dtype, seed=cfg.seed)
        if cfg.positions == "learned":
            self.positions = fusedrnn.LearnedPositionalEncoding(
                cfg.context, cfg.d_model, dtype=dtype, seed=cfg.seed + 1
            )
        else:
            self.positions = fusedrnn.SinusoidalPositionalEncoding(
                cfg.d_model, cfg.context, dtype=dtype
            )
        self.blocks = fusedrnn.ModuleList(
            fusedrnn.TransformerDecoderBlock(
                cfg.d_model,
                cfg.heads,
                cfg.d_ff,
                dropout=cfg.dropout,
                activation=cfg.activation,
                dtype=dtype,
                seed=cfg.seed + 2 + k,
                backend=cfg.backend,
            )
            for k in range(cfg.layers)
        )
        self.norm = fusedrnn.LayerNorm(cfg.d_model, dtype=dtype, backend=cfg.backend)
        self.head = fusedrnn.Linear(
            cfg.d_model, V, dtype=dtype, seed=cfg.seed + 2 + cfg.layers, backend=cfg.backend
        )
        self.loss = fusedrnn.CrossEntropyLoss(backend=cfg.backend)

    def logits(self, tokens: np.ndarray, caches: list | None = None) -> np.ndarray:
        """``tokens (N, L)`` -> logits ``(N, L, V)``, each position seeing those before it.
        With ``caches`` (one `KVCache` per block) the tokens continue the cached ones."""
        offset = 0 if caches is None else len(caches[0])
        h = self.positions(self.embedding(tokens), offset=offset)
        for block, cache in zip(self.blocks, caches or [None] * len(self.blocks)):
            h = block(h, cache=cache)
        return self.head(self.norm(h))

    def forward(self, x: np.ndarray, y: np.ndarray, state=None) -> tuple:
        """x, y: (T, B) ids; returns (mean loss, None): nothing is carried to the next window."""
        return self.loss(self.logits(x.T), y.T), None

    def backward(self) -> None:
        d_h = self.norm.backward(self.head.backward(self.loss.backward()))
        for block in reversed(self.blocks):
            d_h = block.backward(d_h)
        self.embedding.backward(self.positions.backward(d_h))


def evaluate(model: CharTransformer, data: np.ndarray) -> float:
    """Held-out loss (nats/char): the char-LM's evaluation, each window of ``context``
    characters on its own."""

    def logits(x: np.ndarray, state) -> tuple:
        return model.logits(x.T).transpose(1, 0, 2), None

    return char_lm.held_out_loss(model, logits, data, chunk=model.cfg.context)


def generate(
    model: CharTransformer,
    vocab: char_lm.Vocabulary,
    prompt: str,
    n: int,
    *,
    cached: bool,
    temperature: float,
    top_k: int | None,
    seed: int,
) -> tuple[str, float]:
    """(prompt + n sampled characters, tokens per second of the sampling), one character at a
    time with a KVCache per block, or (``cached=False``) recomputing the whole prefix at every
    step. n is cut to what fits in the context."""
    model.eval()
    ids = list(vocab.encode(prompt)) or [0]
    n = max(0, min(n, model.cfg.context - len(ids) + 1))
    start = time.perf_counter()
    if cached:
        caches = [block.new_cache(1, model.cfg.context) for block in model.blocks]
        if len(ids) > 1:  # the prompt but its last character: fills the caches
            model.logits(np.array([ids[:-1]]), caches)

        def step(tokens: np.ndarray, state) -> tuple:
            return model.logits(tokens[:, None], caches)[:, -1], state

        state = None
    else:

        def step(tokens: np.ndarray, prefix: np.ndarray) -> tuple:
            prefix = np.concatenate([prefix, tokens[:, None]], axis=1)
            return model.logits(prefix)[:, -1], prefix

        state = np.array([ids[:-1]], np.int64)
    out = sample_decode(step, state, ids[-1], n, temperature=temperature, top_k=top_k, rng=seed)
    seconds = time.perf_counter() - start
    model.train()
    return prompt + vocab.decode(out.tokens[0]), n / seconds if seconds else math.inf


def train(cfg: Config) -> dict:
    """Train for ``cfg.time`` seconds (or ``cfg.steps`` steps); evaluate and generate.

    Returns the numbers: ``held_out`` and ``initial`` (the held-out loss after and before),
    ``unigram``, ``history`` (every step's loss), ``steps``, ``sample`` / ``sample_uncached``
    (the same seed, with and without the cache) and ``tokens_per_second`` /
    ``tokens_per_second_uncached``, and the model.
    """
    if not cfg.time and cfg.steps is None:
        raise SystemExit("give a time limit (--time SECONDS) or a number of steps (--steps N)")
    if cfg.threads:
        fusedrnn.set_num_threads(cfg.threads)
    train_text, val_text, source = char_lm.load_text(cfg)
    vocab = char_lm.Vocabulary(train_text)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    V, B, T = len(vocab), cfg.batch, cfg.context
    model = CharTransformer(V, cfg)
    optimizer = fusedrnn.Adam(model.parameters(), lr=cfg.lr)
    progress = char_lm.Progress(cfg.time, cfg.quiet)
    unigram = char_lm.unigram_loss(train_ids, val_ids, V)
    n_params = sum(p.size for p in model.parameters())
    progress.message(
        f"text: {source}: {len(train_ids):,} characters to train on, {len(val_ids):,} held "
        f"out, {V} classes\n"
        f"model: {cfg.layers} blocks of d_model {cfg.d_model}, {cfg.heads} heads, d_ff "
        f"{cfg.d_ff} ({cfg.activation}), {cfg.positions} positions, context {T}: "
        f"{n_params:,} parameters; batch {B}, backend {cfg.backend}, "
        f"{fusedrnn.get_num_threads()} threads\n"
        f"held-out loss of the unigram model: {unigram:.3f} nats/char"
    )
    initial = evaluate(model, val_ids)
    x_streams, y_streams = char_lm.text_streams(train_ids, B)  # the char-LM's streams
    position, step, history, train_time = 0, 0, [], 0.0
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if (cfg.steps is not None and step >= cfg.steps) or (cfg.time and elapsed >= cfg.time):
            break
        if position + T > len(x_streams):
            position = 0
        done = step / cfg.steps if cfg.steps else elapsed / cfg.time
        for group in optimizer.param_groups:  # the char-LM's schedule: down to a tenth
            group["lr"] = cfg.lr * (1 - 0.9 * min(done, 1.0))
        t0 = time.perf_counter()
        window = slice(position, position + T)
        loss, _ = char_lm.train_step(
            model, optimizer, x_streams[window], y_streams[window], None, cfg.clip
        )
        train_time += time.perf_counter() - t0
        position, step = position + T, step + 1
        history.append(float(loss))
        progress.update(step, time.perf_counter() - start, history[-1], step * B * T / train_time)
    elapsed = time.perf_counter() - start
    final = evaluate(model, val_ids)
    options = {"temperature": cfg.temperature, "top_k": cfg.top_k, "seed": cfg.seed}
    sample, rate = generate(model, vocab, cfg.prompt, cfg.sample_chars, cached=True, **options)
    sample_uncached, rate_uncached = generate(
        model, vocab, cfg.prompt, cfg.sample_chars, cached=False, **options
    )
    progress.message(
        f"done: {step} steps, {step * B * T:,} characters in {elapsed:.0f}s "
        f"({step * B * T / max(train_time, 1e-9) / 1000:.1f}k chars/s in training steps)\n"
        f"held-out loss {final:.3f} nats/char ({final / math.log(2):.2f} bits), unigram "
        f"model {unigram:.3f}, untrained {initial:.3f}\n"
        f"generation: {rate:.0f} tokens/s with the KV cache, {rate_uncached:.0f} tokens/s "
        f"recomputing the prefix ({len(sample) - len(cfg.prompt)} characters; "
        f"{'the same' if sample == sample_uncached else 'DIFFERENT'} characters)\n"
        f"sample (temperature {cfg.temperature}):\n---\n{sample}\n---"
    )
    return {
        "held_out": final,
        "initial": initial,
        "unigram": unigram,
        "history": history,
        "steps": step,
        "seconds": elapsed,
        "sample": sample,
        "sample_uncached": sample_uncached,
        "tokens_per_second": rate,
        "tokens_per_second_uncached": rate_uncached,
        "model": model,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``) and train; return `train`'s numbers."""
    cfg = char_lm.parse_args(
        argv,
        "examples/char_transformer.py",
        Config,
        HELPS,
        {"positions": ["sinusoidal", "learned"], "activation": ["relu", "gelu"]},
        description=__doc__.split("\n\n")[0],
    )
    return train(cfg)


if __name__ == "__main__":
    main()
