"""examples/word_language_model.py, PyTorch's word_language_model ported to fusedrnn.

With PyTorch installed: PyTorch's own model (``model.py``'s RNNModel, copied below) and the
example's, from the same weights (torch's ``state_dict`` loaded into ours, tied weights included),
trained side by side in float64 with dropout 0 by PyTorch's loop (copied below) and the example's
``train``: every step's loss and the final parameters agree, for the four cell types, tied and
untied, and with dropout on when PyTorch's model replays our dropout masks; the ``state_dict``
keys are PyTorch's. Without PyTorch: the example's ``main`` runs end to
end (trains, anneals, saves the best model, reloads it, reports a finite test loss), also in a
process where ``import torch`` fails.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import fusedrnn
from tests.helpers.cells import tolerances
from tests.helpers.examples import example_module

PATH = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "word_language_model.py")
RNN_TYPES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
NTOKEN, NINP, NLAYERS, BSZ, BPTT, CHUNKS = 40, 12, 2, 4, 5, 4


@pytest.fixture(scope="module")
def wlm():
    """The example as a module, registered under its name so that pickle finds RNNModel."""
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(1)  # tiny layers: no team of threads waiting on each other
    with example_module("word_language_model") as module:
        yield module
    fusedrnn.set_num_threads(before)


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(previous)


def torch_rnn_model(torch, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
    """PyTorch's model.py RNNModel (pytorch/examples, word_language_model), as written there."""
    nn, F = torch.nn, torch.nn.functional

    class RNNModel(nn.Module):
        """Container module with an encoder, a recurrent module, and a decoder."""

        def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
            super().__init__()
            self.ntoken = ntoken
            self.drop = nn.Dropout(dropout)
            self.encoder = nn.Embedding(ntoken, ninp)
            if rnn_type in ["LSTM", "GRU"]:
                self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
            else:
                nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
                self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=dropout)
            self.decoder = nn.Linear(nhid, ntoken)
            if tie_weights:
                if nhid != ninp:
                    raise ValueError("When using the tied flag, nhid must be equal to emsize")
                self.decoder.weight = self.encoder.weight
            self.init_weights()
            self.rnn_type = rnn_type
            self.nhid = nhid
            self.nlayers = nlayers

        def init_weights(self):
            initrange = 0.1
            nn.init.uniform_(self.encoder.weight, -initrange, initrange)
            nn.init.zeros_(self.decoder.bias)
            nn.init.uniform_(self.decoder.weight, -initrange, initrange)

        def forward(self, input, hidden):
            emb = self.drop(self.encoder(input))
            output, hidden = self.rnn(emb, hidden)
            output = self.drop(output)
            decoded = self.decoder(output)
            decoded = decoded.view(-1, self.ntoken)
            return F.log_softmax(decoded, dim=1), hidden

        def init_hidden(self, bsz):
            weight = next(self.parameters())
            if self.rnn_type == "LSTM":
                return (
                    weight.new_zeros(self.nlayers, bsz, self.nhid),
                    weight.new_zeros(self.nlayers, bsz, self.nhid),
                )
            else:
                return weight.new_zeros(self.nlayers, bsz, self.nhid)

    return RNNModel(rnn_type, ntoken, ninp, nhid, nlayers, dropout, tie_weights)


def torch_train(torch, model, criterion, train_data, lr, args):
    """PyTorch's main.py train() (the plain-SGD path, without the logging); returns the losses."""

    def repackage_hidden(h):
        """Wraps hidden states in new Tensors, to detach them from their history."""
        if isinstance(h, torch.Tensor):
            return h.detach()
        else:
            return tuple(repackage_hidden(v) for v in h)

    def get_batch(source, i):
        seq_len = min(args.bptt, len(source) - 1 - i)
        data = source[i : i + seq_len]
        target = source[i + 1 : i + 1 + seq_len].view(-1)
        return data, target

    model.train()
    losses = []
    hidden = model.init_hidden(args.batch_size)
    for i in range(0, train_data.size(0) - 1, args.bptt):
        data, targets = get_batch(train_data, i)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        losses.append(loss.item())
    return losses


def twin_models(torch, wlm, rnn_type, tied):
    """PyTorch's model in float64 with dropout 0, and the example's from the same weights."""
    torch.manual_seed(0)
    theirs = torch_rnn_model(torch, rnn_type, NTOKEN, NINP, NINP, NLAYERS, 0.0, tied).double()
    ours = wlm.RNNModel(rnn_type, NTOKEN, NINP, NINP, NLAYERS, 0.0, tied, dtype=np.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return theirs, ours


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_state_dict_keys_are_pytorchs(torch, wlm, rnn_type, tied):
    theirs, ours = twin_models(torch, wlm, rnn_type, tied)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [name for name, _ in ours.named_parameters()] == [
        name for name, _ in theirs.named_parameters()
    ]  # a tied weight once, under the encoder's name, in both


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_training_matches_pytorch_step_by_step(torch, wlm, rnn_type, tied):
    theirs, ours = twin_models(torch, wlm, rnn_type, tied)
    # PyTorch's defaults for lr and clip: clipping is active at every step
    args = SimpleNamespace(bptt=BPTT, batch_size=BSZ, clip=0.25, log_interval=10**9, dry_run=False)
    tokens = np.random.default_rng(1).integers(0, NTOKEN, BSZ * (BPTT * CHUNKS + 1))
    train_data = wlm.batchify(tokens, BSZ)

    our_losses = wlm.train(ours, fusedrnn.NLLLoss(), train_data, 20.0, args)
    their_losses = torch_train(
        torch, theirs, torch.nn.NLLLoss(), torch.from_numpy(train_data), 20.0, args
    )

    rtol, atol = tolerances(np.float64)
    assert len(our_losses) == len(their_losses) == CHUNKS
    np.testing.assert_allclose(our_losses, their_losses, rtol=rtol, atol=0)
    assert their_losses[-1] != their_losses[0]  # the parameters did move
    expected = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
    final = ours.state_dict()
    assert list(final) == list(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(final[name], value, rtol=rtol, atol=atol, err_msg=name)
    assert (ours.decoder.weight is ours.encoder.weight) == tied  # training kept the tie


@pytest.mark.filterwarnings("ignore:dropout.*num_layers:UserWarning")  # 1 layer: on purpose
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_training_with_dropout_matches_pytorch_replaying_our_masks(torch, wlm, tied):
    """Dropout on: the masks our two Dropout modules draw, replayed by PyTorch's ``self.drop``
    (called in the same order: embeddings, then the recurrent output), give the same steps.
    One recurrent layer, since the masks between layers are drawn inside each library's LSTM."""
    torch.manual_seed(0)
    theirs = torch_rnn_model(torch, "LSTM", NTOKEN, NINP, NINP, 1, 0.3, tied).double()
    ours = wlm.RNNModel("LSTM", NTOKEN, NINP, NINP, 1, 0.3, tied, dtype=np.float64, seed=2)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})

    masks = []  # every mask our Dropout modules applied, in the order they applied them
    for drop in (ours.drop_in, ours.drop_out):

        def recording_forward(x, forward=drop.forward):
            y = forward(x)
            masks.append(y / x)  # x is never 0 here: embeddings and LSTM outputs
            return y

        drop.forward = recording_forward

    class Replay(torch.nn.Module):
        def forward(self, x):
            return x * torch.from_numpy(masks.pop(0))

    theirs.drop = Replay()
    args = SimpleNamespace(bptt=BPTT, batch_size=BSZ, clip=0.25, log_interval=10**9, dry_run=False)
    tokens = np.random.default_rng(1).integers(0, NTOKEN, BSZ * (BPTT * CHUNKS + 1))
    train_data = wlm.batchify(tokens, BSZ)
    our_losses = wlm.train(ours, fusedrnn.NLLLoss(), train_data, 20.0, args)
    assert len(masks) == 2 * CHUNKS and any((mask == 0).any() for mask in masks)
    their_losses = torch_train(
        torch, theirs, torch.nn.NLLLoss(), torch.from_numpy(train_data), 20.0, args
    )

    rtol, atol = tolerances(np.float64)
    assert not masks  # PyTorch's model used every one of them
    np.testing.assert_allclose(our_losses, their_losses, rtol=rtol, atol=0)
    final = ours.state_dict()
    for name, value in theirs.state_dict().items():
        np.testing.assert_allclose(final[name], value.numpy(), rtol=rtol, atol=atol, err_msg=name)


def write_splits(folder, lines: list[list[str]]) -> None:
    for name, split in zip(["train", "valid", "test"], lines):
        (folder / f"{name}.txt").write_text("\n".join(split) + "\n", encoding="utf8")


def test_main_trains_anneals_saves_and_reloads_the_best(wlm, tmp_path, capsys):
    train, valid, test = wlm.python_docs_splits()
    write_splits(tmp_path, [train[:300], valid[:60], test[:60]])
    save = tmp_path / "model.pt"
    # lr 100 with clip 0.25: steps so long that the validation loss worsens after the first
    # epochs, so the learning rate is annealed
    flags = "--emsize 16 --nhid 16 --epochs 4 --batch_size 8 --bptt 10 --lr 100 --tied"
    result = wlm.main([*flags.split(), "--data", str(tmp_path), "--save", str(save)])

    lrs, val_losses = result["lrs"], result["val_losses"]
    assert len(lrs) == len(val_losses) == 4
    assert all(math.isfinite(loss) for loss in result["train_losses"])
    for k in range(1, 4):  # lr / 4 after an epoch whose validation loss was not the best
        improved = k == 1 or val_losses[k - 1] < min(val_losses[: k - 1])
        assert lrs[k] == (lrs[k - 1] if improved else lrs[k - 1] / 4)
    assert lrs[-1] < lrs[0]  # annealed at least once
    assert result["best_val_loss"] == min(val_losses)

    # the file holds the best model: its losses are the best validation loss and the test loss
    corpus = wlm.Corpus(str(tmp_path))
    model = fusedrnn.load(save)
    assert model.decoder.weight is model.encoder.weight  # tied through the round trip
    criterion = fusedrnn.NLLLoss()
    valid_data, test_data = (wlm.batchify(split, 10) for split in (corpus.valid, corpus.test))
    assert wlm.evaluate(model, criterion, valid_data, 10) == result["best_val_loss"]
    assert math.isfinite(result["test_loss"])
    assert wlm.evaluate(model, criterion, test_data, 10) == result["test_loss"]
    assert "End of training" in capsys.readouterr().out


def test_python_docs_corpus(wlm):
    splits = wlm.python_docs_splits()
    assert splits == wlm.python_docs_splits()  # deterministic
    sizes = [len(split) for split in splits]
    total = sum(sizes)
    assert sizes[0] == total * 8 // 10 and sizes[1] == total * 9 // 10 - sizes[0]
    corpus = wlm.Corpus()
    assert corpus.train.dtype == np.int64 and len(corpus.train) > 50_000
    eos = corpus.dictionary.word2idx["<eos>"]
    for split, lines in zip([corpus.train, corpus.valid, corpus.test], splits):
        assert np.count_nonzero(split == eos) == len(lines) and split[-1] == eos


def test_runs_as_a_script_without_torch(tmp_path):
    """``python examples/word_language_model.py`` on the Python documentation, in a process
    where ``import torch`` fails: the best model pickled from ``__main__`` and reloaded."""
    script = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"sys.argv = [{PATH!r}, *sys.argv[1:]]; runpy.run_path({PATH!r}, run_name='__main__')"
    )
    flags = "--emsize 8 --nhid 8 --nlayers 1 --epochs 2 --dry-run --model GRU --dropout 0"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script, *flags.split()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "End of training" in done.stdout
    test_loss = float(done.stdout.split("| test loss")[1].split("|")[0])
    assert math.isfinite(test_loss) and (tmp_path / "model.pt").is_file()
