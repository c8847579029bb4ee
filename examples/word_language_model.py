"""PyTorch's word-level language model example, ported to fusedrnn.

The program is pytorch/examples' ``word_language_model`` (``main.py``, ``model.py``,
``data.py``) with ``torch`` replaced by fusedrnn and NumPy: the same ``RNNModel`` (embedding,
dropout, a multi-layer LSTM / GRU / RNN_TANH / RNN_RELU with dropout between layers, a linear
decoder, optional tied weights, log-softmax), the same training loop over bptt chunks of batchified
text (negative log-likelihood, ``clip_grad_norm_``, the manual SGD update over
``model.parameters()``), the learning rate divided by 4 whenever the validation loss does not
improve, and the best model saved and reloaded for the test loss. The options are PyTorch's::

    python examples/word_language_model.py                   # LSTM, 6 epochs of about 30 s
    python examples/word_language_model.py --model GRU --tied --epochs 3
    python examples/word_language_model.py --data ./data/wikitext-2   # PyTorch's own data

The data: without ``--data``, the text of the Python documentation that every Python
installation carries for ``help()`` (``pydoc_data.topics``, the language reference: about 120,000
words), tokenised into words and punctuation with an ``<eos>`` per line, words seen fewer than 3
times replaced by ``<unk>`` (as WikiText-2 was prepared), split by lines into the first 80%
(train), the next 10% (valid) and the last 10% (test). With ``--data DIR``, ``DIR/train.txt``,
``valid.txt`` and ``test.txt`` are read as PyTorch's ``data.py`` reads them.

What differs from PyTorch's, and why:

- A model has a ``backward`` as well as a ``forward``: fusedrnn has no autograd, so
  ``RNNModel.backward`` chains the parts' backwards in reverse, and ``loss.backward()`` becomes
  ``model.backward(criterion.backward())``.
- ``repackage_hidden`` is gone: the hidden state is a plain array with no history, so backward
  stops at the start of each bptt chunk by itself.
- The dropout before the recurrent layers and the one after are two modules: a fusedrnn module
  keeps what its last forward saved for backward, so one module used twice in a forward would
  lose the first use's mask (PyTorch records every call).
- ``--accel``, ``--use-optimizer`` (AdamW), ``--onnx-export``, ``--nhead`` and the Transformer
  model are left out; ``--dtype`` is added (float32 as PyTorch's default, or float64). The
  defaults are PyTorch's but ``--epochs`` (6, not 40) and ``--log-interval`` (40, not 200), for
  a corpus 20 times smaller than WikiText-2.

Measured on 2026-12-06 on a 2-core AMD EPYC shared with other jobs (load about 4): an epoch of
the defaults (136 steps of 20 x 35 words) took 26-28 s; the validation perplexity was 105 after
the first epoch and 67 after the second.

The training step, from ``model.zero_grad()`` to the update (the lines of code of the plain-SGD
path, ``get_batch`` and the logging left out): PyTorch's main.py has 8 lines (zero_grad,
repackage_hidden, forward, loss, backward, clip, and the two-line update loop); this one has 7
(the same without repackage_hidden). tests/training/test_example_word_lm.py trains this model and
PyTorch's from the same weights in float64, side by side, and checks that every step's loss and
the final parameters agree.
"""

from __future__ import annotations

import os

# Small matrices on few cores: numpy's own OpenBLAS threads and the kernels' OpenMP team would
# spin-wait for the same cores between calls. numpy's BLAS runs on one thread and idle OpenMP
# threads sleep; the fused kernels keep their threads. Set before numpy loads; the environment
# overrides these.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import math
import re
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

import fusedrnn

###############################################################################
# Data (PyTorch's data.py)
###############################################################################


class Dictionary:
    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


class Corpus:
    """The train, valid and test splits as int64 word ids, one ``<eos>`` after every line.

    Parameters
    ----------
    path : str or None
        A folder with train.txt, valid.txt and test.txt (PyTorch's layout); None: the Python
        documentation (`python_docs_splits`).
    """

    def __init__(self, path: str | None = None) -> None:
        self.dictionary = Dictionary()
        if path is None:
            splits = python_docs_splits()
        else:
            splits = [read_lines(os.path.join(path, f"{name}.txt")) for name in SPLITS]
        self.train, self.valid, self.test = (self.tokenize(lines) for lines in splits)

    def tokenize(self, lines: list[str]) -> np.ndarray:
        """Word ids of ``lines`` (words split on white space, ``<eos>`` after each line)."""
        ids = [
            self.dictionary.add_word(word) for line in lines for word in [*line.split(), "<eos>"]
        ]
        return np.array(ids, dtype=np.int64)


SPLITS = ("train", "valid", "test")


def read_lines(path: str) -> list[str]:
    if not os.path.exists(path):
        raise SystemExit(f"no such file: {path} (--data needs train.txt, valid.txt, test.txt)")
    with open(path, encoding="utf8") as f:
        return f.readlines()


def python_docs_splits(min_count: int = 3) -> list[list[str]]:
    """The Python documentation shipped for ``help()`` as three lists of lines: train (the
    first 80% of the lines), valid (the next 10%), test (the last 10%).

    Each non-blank line of the topics (in the order of their names) becomes its words and
    punctuation marks separated by spaces; a word seen fewer than ``min_count`` times in the
    whole text becomes ``<unk>``. The same Python version gives the same text.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise SystemExit(
            "this Python has no pydoc_data (the documentation behind help()); "
            "give a folder of train.txt, valid.txt and test.txt with --data"
        ) from None
    text = "\n".join(topics[name] for name in sorted(topics))
    lines = [re.findall(r"\w+|[^\w\s]", line) for line in text.splitlines() if line.strip()]
    counts = Counter(word for line in lines for word in line)
    lines = [
        " ".join(word if counts[word] >= min_count else "<unk>" for word in line) for line in lines
    ]
    train_end, valid_end = len(lines) * 8 // 10, len(lines) * 9 // 10
    return [lines[:train_end], lines[train_end:valid_end], lines[valid_end:]]


###############################################################################
# The model (PyTorch's model.py)
###############################################################################


class RNNModel(fusedrnn.Module):
    """Container module with an encoder, a recurrent module, and a decoder.

    Parameters
    ----------
    rnn_type : 'LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU'
    ntoken, ninp, nhid, nlayers : int
        Vocabulary size, embedding size, hidden size, number of recurrent layers.
    dropout : float
        On the embeddings, between the recurrent layers and on the recurrent output.
    tie_weights : bool
        The decoder's weight is the encoder's (one array, one gradient); needs nhid == ninp.
    dtype : numpy.float32 or numpy.float64
    seed : int or None
        Seeds the initial weights and the dropout masks.
    """

    def __init__(
        self,
        rnn_type: str,
        ntoken: int,
        ninp: int,
        nhid: int,
        nlayers: int,
        dropout: float = 0.5,
        tie_weights: bool = False,
        *,
        dtype: type = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        seeds = iter(rng.integers(2**31, size=5).tolist())  # one per module that draws
        self.ntoken = ntoken
        self.drop_in = fusedrnn.Dropout(dropout, seed=next(seeds))
        self.encoder = fusedrnn.Embedding(ntoken, ninp, dtype=dtype, seed=next(seeds))
        if rnn_type in ["LSTM", "GRU"]:
            self.rnn = getattr(fusedrnn, rnn_type)(
                ninp, nhid, nlayers, dropout=dropout, dtype=dtype, seed=next(seeds)
            )
        else:
            try:
                nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            except KeyError as e:
                raise ValueError(
                    "An invalid option for `--model` was supplied, "
                    "options are ['LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU']"
                ) from e
            self.rnn = fusedrnn.RNN(
                ninp,
                nhid,
                nlayers,
                nonlinearity=nonlinearity,
                dropout=dropout,
                dtype=dtype,
                seed=next(seeds),
            )
        self.drop_out = fusedrnn.Dropout(dropout, seed=next(seeds))
        self.decoder = fusedrnn.Linear(nhid, ntoken, dtype=dtype, seed=next(seeds))
        self.log_softmax = fusedrnn.LogSoftmax(dim=1)

        # Optionally tie weights as in:
        # "Using the Output Embedding to Improve Language Models" (Press & Wolf 2016)
        # https://arxiv.org/abs/1608.05859
        # and
        # "Tying Word Vectors and Word Classifiers: A Loss Framework for Language Modeling"
        # (Inan et al. 2016) https://arxiv.org/abs/1611.01462
        if tie_weights:
            if nhid != ninp:
                raise ValueError("When using the tied flag, nhid must be equal to emsize")
            self.decoder.weight = self.encoder.weight

        self.init_weights(rng)

        self.rnn_type = rnn_type
        self.nhid = nhid
        self.nlayers = nlayers

    def init_weights(self, rng: np.random.Generator) -> None:
        initrange = 0.1
        self.encoder.weight[...] = rng.uniform(-initrange, initrange, self.encoder.weight.shape)
        self.decoder.bias[...] = 0
        self.decoder.weight[...] = rng.uniform(-initrange, initrange, self.decoder.weight.shape)

    def forward(self, input: np.ndarray, hidden) -> tuple:
        """Log-probabilities (seq_len * batch, ntoken) of the next word, and the new hidden
        state, from word ids ``input`` (seq_len, batch) and the hidden state."""
        emb = self.drop_in(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop_out(output)
        decoded = self.decoder(output)
        self.decoded_shape = decoded.shape  # for backward, to undo the reshape below
        decoded = decoded.reshape(-1, self.ntoken)
        return self.log_softmax(decoded), hidden

    def backward(self, d_log_probs: np.ndarray) -> None:
        """Add every parameter's gradient into its ``p.grad``, from the gradient of the
        log-probabilities of the last forward (nothing flows back into its ``hidden``)."""
        d_decoded = self.log_softmax.backward(d_log_probs).reshape(self.decoded_shape)
        d_output = self.drop_out.backward(self.decoder.backward(d_decoded))
        d_emb, _ = self.rnn.backward(d_output)
        self.encoder.backward(self.drop_in.backward(d_emb))

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (
                np.zeros((self.nlayers, bsz, self.nhid), weight.dtype),
                np.zeros((self.nlayers, bsz, self.nhid), weight.dtype),
            )
        else:
            return np.zeros((self.nlayers, bsz, self.nhid), weight.dtype)


###############################################################################
# Training code (PyTorch's main.py)
###############################################################################

# Starting from sequential data, batchify arranges the dataset into columns.
# For instance, with the alphabet as the sequence and batch size 4, we'd get
# ┌ a g m s ┐
# │ b h n t │
# │ c i o u │
# │ d j p v │
# │ e k q w │
# └ f l r x ┘.
# These columns are treated as independent by the model, which means that the
# dependence of e. g. 'g' on 'f' can not be learned, but allows more efficient
# batch processing.


def batchify(data: np.ndarray, bsz: int) -> np.ndarray:
    # Work out how cleanly we can divide the dataset into bsz parts.
    nbatch = data.shape[0] // bsz
    # Trim off any extra elements that wouldn't cleanly fit (remainders).
    data = data[: nbatch * bsz]
    # Evenly divide the data across the bsz batches.
    return np.ascontiguousarray(data.reshape(bsz, -1).T)


# get_batch subdivides the source data into chunks of length bptt.
# If source is equal to the example output of the batchify function, with
# a bptt-limit of 2, we'd get the following two arrays for i = 0:
# ┌ a g m s ┐ ┌ b h n t ┐
# └ b h n t ┘ └ c i o u ┘
# Note that despite the name of the function, the subdivison of data is not
# done along the batch dimension (i.e. dimension 1), since that was handled
# by the batchify function. The chunks are along dimension 0, corresponding
# to the seq_len dimension in the LSTM.


def get_batch(source: np.ndarray, i: int, bptt: int) -> tuple[np.ndarray, np.ndarray]:
    seq_len = min(bptt, len(source) - 1 - i)
    data = source[i : i + seq_len]
    target = source[i + 1 : i + 1 + seq_len].reshape(-1)
    return data, target


def evaluate(model: RNNModel, criterion, data_source: np.ndarray, bptt: int) -> float:
    """The mean loss per word of ``data_source`` (batchified)."""
    # Turn on evaluation mode which disables dropout (and keeps nothing for backward).
    model.eval()
    total_loss = 0.0
    hidden = model.init_hidden(data_source.shape[1])
    for i in range(0, data_source.shape[0] - 1, bptt):
        data, targets = get_batch(data_source, i, bptt)
        output, hidden = model(data, hidden)
        total_loss += len(data) * criterion(output, targets).item()
    return total_loss / (len(data_source) - 1)


def train(
    model: RNNModel, criterion, train_data: np.ndarray, lr: float, args, epoch: int = 1
) -> list[float]:
    """One epoch over ``train_data`` (batchified); returns the loss of every step."""
    # Turn on training mode which enables dropout.
    model.train()
    total_loss = 0.0
    losses = []
    start_time = time.time()
    hidden = model.init_hidden(train_data.shape[1])
    for batch, i in enumerate(range(0, train_data.shape[0] - 1, args.bptt)):
        data, targets = get_batch(train_data, i, args.bptt)
        # The training step (PyTorch's, line for line; no repackage_hidden: the hidden state
        # is a plain array, so backward stops at the start of this chunk by itself).
        model.zero_grad()
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        model.backward(criterion.backward())
        # `clip_grad_norm_` helps prevent the exploding gradient problem in RNNs / LSTMs.
        fusedrnn.clip_grad_norm_(model.parameters(), args.clip)
        for p in model.parameters():
            p -= lr * p.grad

        total_loss += loss.item()
        losses.append(loss.item())

        if batch % args.log_interval == 0 and batch > 0:
            cur_loss = total_loss / args.log_interval
            elapsed = time.time() - start_time
            print(
                f"| epoch {epoch:3d} | {batch:5d}/{len(train_data) // args.bptt:5d} batches "
                f"| lr {lr:02.2f} | ms/batch {elapsed * 1000 / args.log_interval:5.2f} | "
                f"loss {cur_loss:5.2f} | ppl {math.exp(cur_loss):8.2f}"
            )
            total_loss = 0
            start_time = time.time()
        if args.dry_run:
            break
    return losses


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="fusedrnn RNN/LSTM/GRU language model (PyTorch's word_language_model)"
    )
    parser.add_argument(
        "--data",
        type=str,
        default=None,
        help="folder with train.txt, valid.txt, test.txt "
        "(default: the Python documentation of this installation)",
    )
    parser.add_argument(
        "--model", type=str, default="LSTM", help="type of network (RNN_TANH, RNN_RELU, LSTM, GRU)"
    )
    parser.add_argument("--emsize", type=int, default=200, help="size of word embeddings")
    parser.add_argument("--nhid", type=int, default=200, help="number of hidden units per layer")
    parser.add_argument("--nlayers", type=int, default=2, help="number of layers")
    parser.add_argument("--lr", type=float, default=20, help="initial learning rate")
    parser.add_argument("--clip", type=float, default=0.25, help="gradient clipping")
    parser.add_argument("--epochs", type=int, default=6, help="upper epoch limit")
    parser.add_argument("--batch_size", type=int, default=20, metavar="N", help="batch size")
    parser.add_argument("--bptt", type=int, default=35, help="sequence length")
    parser.add_argument(
        "--dropout", type=float, default=0.2, help="dropout applied to layers (0 = no dropout)"
    )
    parser.add_argument(
        "--tied", action="store_true", help="tie the word embedding and softmax weights"
    )
    parser.add_argument("--seed", type=int, default=1111, help="random seed")
    parser.add_argument("--log-interval", type=int, default=40, metavar="N", help="report interval")
    parser.add_argument("--save", type=str, default="model.pt", help="path to save the final model")
    parser.add_argument(
        "--dtype",
        type=str,
        default="float32",
        choices=["float32", "float64"],
        help="of the parameters and every computation",
    )
    parser.add_argument("--dry-run", action="store_true", help="verify the code and the model")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train, keep the best model by validation loss, and report its test loss.

    Returns
    -------
    dict
        'lrs' and 'val_losses' (one per epoch: the learning rate it trained with and the
        validation loss after it), 'train_losses' (every step's), 'best_val_loss',
        'test_loss'.
    """
    args = parse_args(argv)

    ###########################################################################
    # Load data
    ###########################################################################

    corpus = Corpus(args.data)
    eval_batch_size = 10
    train_data = batchify(corpus.train, args.batch_size)
    val_data = batchify(corpus.valid, eval_batch_size)
    test_data = batchify(corpus.test, eval_batch_size)

    ###########################################################################
    # Build the model
    ###########################################################################

    ntokens = len(corpus.dictionary)
    model = RNNModel(
        args.model,
        ntokens,
        args.emsize,
        args.nhid,
        args.nlayers,
        args.dropout,
        args.tied,
        dtype=np.dtype(args.dtype),
        seed=args.seed,
    )
    criterion = fusedrnn.NLLLoss()
    print(f"{len(corpus.train)} training words, a vocabulary of {ntokens}")

    # Loop over epochs.
    lr = args.lr
    best_val_loss = None
    history = {"lrs": [], "val_losses": [], "train_losses": []}

    # At any point you can hit Ctrl + C to break out of training early.
    try:
        for epoch in range(1, args.epochs + 1):
            epoch_start_time = time.time()
            history["train_losses"] += train(model, criterion, train_data, lr, args, epoch)
            val_loss = evaluate(model, criterion, val_data, args.bptt)
            history["lrs"].append(lr)
            history["val_losses"].append(val_loss)
            print("-" * 89)
            print(
                f"| end of epoch {epoch:3d} | time: {time.time() - epoch_start_time:5.2f}s | "
                f"valid loss {val_loss:5.2f} | valid ppl {math.exp(val_loss):8.2f}"
            )
            print("-" * 89)
            # Save the model if the validation loss is the best we've seen so far.
            if not best_val_loss or val_loss < best_val_loss:
                with open(args.save, "wb") as f:
                    fusedrnn.save(model, f)
                best_val_loss = val_loss
            else:
                # Anneal the learning rate if no improvement has been seen in the validation
                # dataset.
                lr /= 4.0
    except KeyboardInterrupt:
        print("-" * 89)
        print("Exiting from training early")

    # Load the best saved model.
    with open(args.save, "rb") as f:
        model = fusedrnn.load(f)

    # Run on test data.
    test_loss = evaluate(model, criterion, test_data, args.bptt)
    print("=" * 89)
    print(f"| End of training | test loss {test_loss:5.2f} | test ppl {math.exp(test_loss):8.2f}")
    print("=" * 89)
    return {**history, "best_val_loss": best_val_loss, "test_loss": test_loss}


if __name__ == "__main__":
    main()
