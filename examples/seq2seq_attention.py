"""An encoder-decoder with attention that learns to reverse digit sequences, in NumPy on fusedrnn.

    python examples/seq2seq_attention.py                  # train with attention (<= 5 minutes)
    python examples/seq2seq_attention.py --no-attention   # the same model without attention
    python examples/seq2seq_attention.py --compare        # both, one after the other

The model (Luong et al. 2015, with Bahdanau's additive scoring):

- encoder: embedding, then a bidirectional `fusedrnn.LSTM` over the source digits, padded items
  run with ``lengths`` (packed-sequence semantics, so padding never touches a state);
- decoder: embedding, then a `fusedrnn.LSTM` started from the encoder's final states, trained with
  teacher forcing: the whole target sequence in one call;
- attention: `fusedrnn.AdditiveAttention` from every decoder step at once over all encoder states,
  the source padding masked;
- output: ``softmax(W_s tanh(W_c [decoder state; context]))`` over the digits and an end token.

Without attention the output layer sees the decoder state alone: the source must squeeze through
the encoder's final state. Decoding is greedy, or beam search (summed log-probabilities, no length
penalty), both from `fusedrnn.decoding` over the decoder's step. Accuracy is exact-sequence
accuracy on held-out sequences of length 5 to 15 that training never sees. Adam, gradient
clipping; everything else is plain NumPy.
"""

from __future__ import annotations

import os

# Small matrices on few cores: numpy's own OpenBLAS threads and the kernels' OpenMP team would
# spin-wait for the same cores between calls (10-30x slower here on 2 cores). numpy's BLAS runs on
# one thread, idle OpenMP threads sleep; the fused kernels keep their threads. Set before numpy
# loads; the environment overrides these.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time

import numpy as np

import fusedrnn

DIGITS, EOS, BOS, PAD = 10, 10, 11, 12  # tokens 0-9 are the digits
VOCAB = 13
OUT = 11  # the decoder predicts a digit or EOS
MIN_LEN, MAX_LEN = 5, 15
DTYPE = np.float32


# ---------------------------------------------------------------- data


def random_sequences(rng, n: int, exclude: set | None = None) -> list[tuple]:
    """n digit sequences of uniform length 5..15, none of them in ``exclude``."""
    out = []
    while len(out) < n:
        seq = tuple(rng.integers(0, DIGITS, rng.integers(MIN_LEN, MAX_LEN + 1)).tolist())
        if exclude is None or seq not in exclude:
            out.append(seq)
    return out


def batch_arrays(sequences: list[tuple]) -> dict:
    """Padded time-major arrays of one batch: the task is to output the reversed sequence."""
    B = len(sequences)
    lengths = np.array([len(s) for s in sequences])
    S = lengths.max()
    src = np.full((S, B), PAD, np.int64)
    tgt_in = np.full((S + 1, B), PAD, np.int64)  # BOS, y_1 .. y_n
    tgt_out = np.full((S + 1, B), PAD, np.int64)  # y_1 .. y_n, EOS
    for b, seq in enumerate(sequences):
        n = len(seq)
        src[:n, b] = seq
        rev = seq[::-1]
        tgt_in[0, b] = BOS
        tgt_in[1 : n + 1, b] = rev
        tgt_out[:n, b] = rev
        tgt_out[n, b] = EOS
    return {
        "src": src,
        "lengths": lengths,
        "tgt_in": tgt_in,
        "tgt_out": tgt_out,
        "sequences": sequences,
    }


# ---------------------------------------------------------------- the model


class Seq2Seq:
    """Embeddings, encoder, decoder, attention and output layer, with forward and backward of
    a teacher-forced batch and step-by-step decoding."""

    def __init__(
        self, hidden: int = 128, embed: int = 32, attention: bool = True, seed: int = 0
    ) -> None:
        rng = np.random.default_rng(seed)
        self.hidden, self.attention = hidden, attention
        half = hidden // 2
        self.encoder = fusedrnn.LSTM(embed, half, bidirectional=True, dtype=DTYPE, seed=seed)
        self.decoder = fusedrnn.LSTM(embed, hidden, dtype=DTYPE, seed=seed + 1)
        self.attend = fusedrnn.AdditiveAttention(hidden, hidden, 64, dtype=DTYPE, seed=seed + 2)
        feat = 2 * hidden if attention else hidden

        def uniform(shape, fan_in):
            return (rng.uniform(-1, 1, shape) / np.sqrt(fan_in)).astype(DTYPE)

        self.params = {
            "src_embed": rng.standard_normal((VOCAB, embed)).astype(DTYPE) * 0.3,
            "tgt_embed": rng.standard_normal((VOCAB, embed)).astype(DTYPE) * 0.3,
            "W_c": uniform((hidden, feat), feat),
            "b_c": np.zeros(hidden, DTYPE),
            "W_s": uniform((OUT, hidden), hidden),
            "b_s": np.zeros(OUT, DTYPE),
        }
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}

    def layers(self) -> list:
        return [self.encoder, self.decoder] + ([self.attend] if self.attention else [])

    def parameters(self):
        """(name, array, gradient) of every parameter, the layers' live arrays included."""
        for name, p in self.params.items():
            yield name, p, self.grads[name]
        for i, layer in enumerate(self.layers()):
            for name, p in layer.named_parameters():
                yield f"{i}.{name}", p, layer.grads[name]

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)
        for layer in self.layers():
            layer.zero_grad()

    def train(self, mode: bool = True) -> None:
        for layer in self.layers():
            layer.train(mode)

    # ------------------------------------------------------------ pieces

    def encode(self, src, lengths) -> tuple:
        """Encoder states (B, S, hidden) and the decoder's initial (h, c), each (1, B, hidden)."""
        x = self.params["src_embed"][src]  # (S, B, embed)
        enc, (h_n, c_n) = self.encoder(x, lengths=lengths)  # (S, B, hidden), (2, B, half)
        keys = np.ascontiguousarray(enc.transpose(1, 0, 2))
        state = (
            np.concatenate([h_n[0], h_n[1]], axis=1)[None],
            np.concatenate([c_n[0], c_n[1]], axis=1)[None],
        )
        return keys, state

    def readout(self, dec, keys, pad) -> tuple:
        """Logits (B, T, OUT) from decoder states (B, T, hidden); the cache for backward."""
        feats = dec
        if self.attention:
            context, _ = self.attend(dec, keys, key_padding_mask=pad)
            feats = np.concatenate([dec, context], axis=-1)
        h = np.tanh(feats @ self.params["W_c"].T + self.params["b_c"])
        logits = h @ self.params["W_s"].T + self.params["b_s"]
        return logits, (feats, h)

    # ------------------------------------------------------------ training

    def loss_and_backward(self, batch: dict) -> float:
        """Mean cross-entropy of a teacher-forced batch; adds every gradient."""
        src, lengths, tgt_in, tgt_out = (batch[k] for k in ("src", "lengths", "tgt_in", "tgt_out"))
        pad = (src == PAD).T  # (B, S), True = padding
        keys, state = self.encode(src, lengths)
        dec, _ = self.decoder(self.params["tgt_embed"][tgt_in], state)  # (T, B, hidden)
        dec_b = np.ascontiguousarray(dec.transpose(1, 0, 2))
        logits, (feats, h) = self.readout(dec_b, keys, pad)
        target = tgt_out.T  # (B, T)
        valid = target != PAD
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        count = valid.sum()
        safe = np.where(valid, target, 0)
        loss = -np.sum(np.take_along_axis(logp, safe[..., None], -1)[..., 0] * valid) / count
        # backward, in reverse order of the forward
        d_logits = np.exp(logp)
        np.put_along_axis(
            d_logits, safe[..., None], np.take_along_axis(d_logits, safe[..., None], -1) - 1, -1
        )
        d_logits *= (valid / count)[..., None]
        d_logits = d_logits.astype(DTYPE)
        p, g = self.params, self.grads
        g["W_s"] += d_logits.reshape(-1, OUT).T @ h.reshape(-1, self.hidden)
        g["b_s"] += d_logits.sum((0, 1))
        d_pre = (d_logits @ p["W_s"]) * (1 - h * h)
        g["W_c"] += d_pre.reshape(-1, self.hidden).T @ feats.reshape(-1, feats.shape[-1])
        g["b_c"] += d_pre.sum((0, 1))
        d_feats = d_pre @ p["W_c"]
        d_dec = d_feats[..., : self.hidden]
        d_keys = np.zeros_like(keys)
        if self.attention:
            d_query, d_keys, d_values = self.attend.backward(d_feats[..., self.hidden :])
            d_dec = d_dec + d_query
            d_keys = d_keys + d_values if d_values is not None else d_keys
        d_tgt_embed, (dh0, dc0) = self.decoder.backward(
            np.ascontiguousarray(d_dec.transpose(1, 0, 2))
        )
        np.add.at(g["tgt_embed"], tgt_in, d_tgt_embed)
        half = self.hidden // 2
        d_hx = (
            np.stack([dh0[0, :, :half], dh0[0, :, half:]]),
            np.stack([dc0[0, :, :half], dc0[0, :, half:]]),
        )
        d_src_embed, _ = self.encoder.backward(
            np.ascontiguousarray(d_keys.transpose(1, 0, 2)), d_hx
        )
        np.add.at(g["src_embed"], src, d_src_embed)
        return float(loss)

    # ------------------------------------------------------------ decoding

    def step(self, tokens, state, keys, pad) -> tuple:
        """One decoder step for a batch of hypotheses: log-probabilities (N, OUT) in float64 (the
        logits `fusedrnn.decoding` takes: their log-softmax is themselves), new state."""
        x = self.params["tgt_embed"][tokens][None]  # (1, N, embed)
        dec, state = self.decoder(x, state)
        logits, _ = self.readout(dec[0][:, None], keys, pad)
        logits = logits[:, 0].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(-1, keepdims=True)), state

    def decode(self, sequences: list[tuple], beam: int = 1, with_scores: bool = False) -> list:
        """Greedy (beam = 1) or beam-search outputs (`fusedrnn.decoding`), up to the EOS token;
        with_scores: pairs (output, summed log-probability of the output and its EOS)."""
        batch = batch_arrays(sequences)
        self.train(False)
        keys, state = self.encode(batch["src"], batch["lengths"])
        pad = (batch["src"] == PAD).T
        # beam search runs example b's hypotheses as rows b*beam .. b*beam + beam - 1: they all
        # attend to example b's encoder states, whichever hypotheses survive
        keys, pad = np.repeat(keys, beam, axis=0), np.repeat(pad, beam, axis=0)

        def step(tokens, state):
            return self.step(tokens, state, keys, pad)

        start = np.full(len(sequences), BOS)
        # each example stops 2 steps past its own length (so batching does not change results)
        max_len = batch["lengths"] + 2
        if beam == 1:
            result = fusedrnn.decoding.greedy_decode(step, state, start, max_len, eos=EOS)
            found = [
                (tokens[:length], log_prob)
                for tokens, length, log_prob in zip(result.tokens, result.lengths, result.log_probs)
            ]
        else:
            # the decoder's (h, c) are (1, rows, hidden): the hypotheses are on axis 1
            best = fusedrnn.decoding.beam_search(
                step, state, start, max_len, beam_width=beam, eos=EOS, batch_axis=1
            )
            found = [(hypothesis.tokens, hypothesis.log_prob) for (hypothesis,) in best]
        self.train(True)
        outputs = []
        for tokens, log_prob in found:
            seq = tokens.tolist()
            out = tuple(seq[: seq.index(EOS)] if EOS in seq else seq)
            outputs.append((out, float(log_prob)) if with_scores else out)
        return outputs


# ---------------------------------------------------------------- training


class Adam:
    def __init__(self, model: Seq2Seq, lr: float = 3e-3, clip: float = 5.0) -> None:
        self.model, self.lr, self.clip, self.t = model, lr, clip, 0
        self.m = {name: np.zeros_like(p) for name, p, _ in model.parameters()}
        self.v = {name: np.zeros_like(p) for name, p, _ in model.parameters()}

    def step(self) -> None:
        self.t += 1
        items = list(self.model.parameters())
        norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for _, _, g in items))
        scale = min(1.0, self.clip / (norm + 1e-12))
        b1, b2 = 0.9, 0.999
        for name, p, g in items:
            g = g * scale
            self.m[name] = b1 * self.m[name] + (1 - b1) * g
            self.v[name] = b2 * self.v[name] + (1 - b2) * g * g
            m_hat = self.m[name] / (1 - b1**self.t)
            v_hat = self.v[name] / (1 - b2**self.t)
            p -= (self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(p.dtype)


def accuracy(model: Seq2Seq, sequences: list[tuple], beam: int = 1) -> float:
    correct = 0
    for start in range(0, len(sequences), 250):
        chunk = sequences[start : start + 250]
        outputs = model.decode(chunk, beam)
        correct += sum(out == seq[::-1] for out, seq in zip(outputs, chunk))
    return correct / len(sequences)


def train(
    attention: bool, minutes: float, batch_size: int, seed: int, beam: int, target: float = 0.995
) -> dict:
    rng = np.random.default_rng(seed)
    test = random_sequences(np.random.default_rng(12345), 1000)
    valid = random_sequences(np.random.default_rng(54321), 500, exclude=set(test))
    held_out = set(test) | set(valid)
    model = Seq2Seq(attention=attention, seed=seed)
    optimizer = Adam(model)
    name = "with attention" if attention else "without attention"
    print(f"--- {name}: training for up to {minutes:g} min, batch {batch_size}")
    start, step, valid_acc = time.perf_counter(), 0, 0.0
    while time.perf_counter() - start < 60 * minutes:
        batch = batch_arrays(random_sequences(rng, batch_size, exclude=held_out))
        model.zero_grad()
        loss = model.loss_and_backward(batch)
        optimizer.step()
        step += 1
        if step % 200 == 0:
            valid_acc = accuracy(model, valid)
            print(
                f"step {step:5d}  {time.perf_counter() - start:6.1f}s  loss {loss:.4f}  "
                f"held-out greedy accuracy {valid_acc:.3f}",
                flush=True,
            )
            if valid_acc >= target:
                break
    elapsed = time.perf_counter() - start
    result = {
        "name": name,
        "steps": step,
        "seconds": elapsed,
        "greedy": accuracy(model, test, 1),
        f"beam{beam}": accuracy(model, test, beam),
    }
    print(
        f"{name}: {step} steps in {elapsed:.0f} s; exact-sequence accuracy on 1000 held-out "
        f"sequences of length {MIN_LEN}-{MAX_LEN}: greedy {result['greedy']:.3f}, "
        f"beam {beam} {result[f'beam{beam}']:.3f}"
    )
    for seq in test[:3]:
        out = model.decode([seq], beam)[0]
        print(f"  {''.join(map(str, seq)):>15} -> {''.join(map(str, out))}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-attention", action="store_true", help="the model without attention")
    parser.add_argument("--compare", action="store_true", help="train with and without attention")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per model")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--beam", type=int, default=5, help="beam width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        fusedrnn.set_num_threads(args.threads)
    runs = [True, False] if args.compare else [not args.no_attention]
    results = [train(a, args.minutes, args.batch, args.seed, args.beam) for a in runs]
    if len(results) > 1:
        print("\nexact-sequence accuracy on held-out sequences (greedy / beam):")
        for r in results:
            print(
                f"  {r['name']:>18}: {r['greedy']:.3f} / {r[f'beam{args.beam}']:.3f}  "
                f"({r['steps']} steps, {r['seconds']:.0f} s)"
            )


if __name__ == "__main__":
    main()
