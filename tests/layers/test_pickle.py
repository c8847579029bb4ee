"""Every module of fusedrnn survives ``pickle`` and ``copy.deepcopy``: after a round trip (taken
after a training step, so that gradients, saved forwards and generators are mid-use) the copy
computes the same forward and backward as the original, to the bit, and is independent of it.
"""

from __future__ import annotations

import copy
import inspect
import pickle

import numpy as np
import pytest

import fusedrnn
from fusedrnn._module import Module

F64 = np.float64


def randn(rng, *shape):
    return rng.standard_normal(shape)


def recurrent(rng, layer):
    x = randn(rng, 5, 2, 3)
    y, _ = layer(x)
    return [y, *flat(layer.backward(randn(rng, *y.shape)))]


def cell(rng, layer):
    x = randn(rng, 2, 3)
    out = layer(x)
    h = out[0] if isinstance(out, tuple) else out
    return [*flat(out), *flat(layer.backward(randn(rng, *h.shape)))]


def multihead(rng, layer):
    query, key = randn(rng, 4, 2, 8), randn(rng, 6, 2, 8)
    out, _ = layer(query, key, key)
    return [out, *flat(layer.backward(randn(rng, *out.shape)))]


def additive(rng, layer):
    query, keys = randn(rng, 2, 3, 4), randn(rng, 2, 5, 6)
    context, _ = layer(query, keys)
    return [context, *flat(layer.backward(randn(rng, *context.shape)))]


def sdpa(rng, layer):
    q, k, v = randn(rng, 2, 3, 4), randn(rng, 2, 5, 4), randn(rng, 2, 5, 4)
    out = layer(q, k, v)
    return [out, *flat(layer.backward(randn(rng, *out.shape)))]


def elementwise(rng, layer):
    y = layer(randn(rng, 3, 7))
    return [y, layer.backward(randn(rng, *y.shape))]


def block(rng, layer):
    y = layer(randn(rng, 2, 4, 8))
    return [y, layer.backward(randn(rng, *y.shape))]


def linear(rng, layer):
    y = layer(randn(rng, 4, 3))
    return [y, layer.backward(randn(rng, *y.shape))]


def embedding(rng, layer):
    y = layer(rng.integers(0, 10, (3, 4)))
    layer.backward(randn(rng, *y.shape))
    return [y]


def class_loss(rng, loss_fn):
    targets = rng.integers(0, 6, (3, 4))
    loss = loss_fn(randn(rng, 3, 4, 6), targets)
    return [
        np.asarray(loss),
        loss_fn.backward(randn(rng, *np.shape(loss)) if np.ndim(loss) else 1.3),
    ]


def mse(rng, loss_fn):
    loss = loss_fn(randn(rng, 3, 4), randn(rng, 3, 4))
    return [np.asarray(loss), loss_fn.backward(0.5)]


class TiedLanguageModel(Module):
    """A user model: submodules as attributes, the decoder's weight tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.encoder = fusedrnn.Embedding(10, 4, dtype=F64, seed=0)
        self.rnn = fusedrnn.GRU(4, 4, dtype=F64, seed=1)
        self.decoder = fusedrnn.Linear(4, 10, dtype=F64, seed=2)
        self.decoder.weight = self.encoder.weight

    def forward(self, tokens):
        y, _ = self.rnn(self.encoder(tokens))
        return self.decoder(y)

    def backward(self, d_logits):
        dx, _ = self.rnn.backward(self.decoder.backward(d_logits))
        self.encoder.backward(dx)


def language_model(rng, model):
    y = model(rng.integers(0, 10, (3, 2)))
    model.backward(randn(rng, *y.shape))
    return [y]


def module_list(rng, layers):
    x = randn(rng, 4, 3)
    for layer in layers:
        x = layer(x)
    d = randn(rng, *x.shape)
    for layer in reversed(list(layers)):
        d = layer.backward(d)
    return [x, d]


def module_dict(rng, layers):
    return module_list(rng, list(layers.values()))


# name -> (a module, float64, with an input of every kind it takes; one run of it)
CASES = {
    "Module_tied": (TiedLanguageModel, language_model),
    "Sequential": (
        lambda: fusedrnn.Sequential(
            fusedrnn.Linear(3, 5, dtype=F64, seed=0),
            fusedrnn.Dropout(0.5, seed=1),
            fusedrnn.Linear(5, 2, dtype=F64, seed=2),
        ),
        linear,
    ),
    "ModuleList": (
        lambda: fusedrnn.ModuleList([fusedrnn.Linear(3, 3, dtype=F64, seed=i) for i in range(2)]),
        module_list,
    ),
    "ModuleDict": (
        lambda: fusedrnn.ModuleDict(
            {"a": fusedrnn.Linear(3, 4, dtype=F64, seed=0), "b": fusedrnn.Linear(4, 2, dtype=F64)}
        ),
        module_dict,
    ),
    "LSTM": (lambda: fusedrnn.LSTM(3, 4, num_layers=2, dtype=F64, seed=0), recurrent),
    "LSTM_proj_dropout": (
        lambda: fusedrnn.LSTM(3, 4, num_layers=2, proj_size=2, dropout=0.5, dtype=F64, seed=0),
        recurrent,
    ),
    "GRU": (lambda: fusedrnn.GRU(3, 4, bidirectional=True, dtype=F64, seed=0), recurrent),
    "RNN": (lambda: fusedrnn.RNN(3, 4, nonlinearity="relu", dtype=F64, seed=0), recurrent),
    "LSTMCell": (lambda: fusedrnn.LSTMCell(3, 4, dtype=F64, seed=0), cell),
    "GRUCell": (lambda: fusedrnn.GRUCell(3, 4, dtype=F64, seed=0), cell),
    "RNNCell": (lambda: fusedrnn.RNNCell(3, 4, dtype=F64, seed=0), cell),
    "MultiheadAttention": (
        lambda: fusedrnn.MultiheadAttention(8, 2, dtype=F64, seed=0),
        multihead,
    ),
    "AdditiveAttention": (lambda: fusedrnn.AdditiveAttention(4, 6, 5, dtype=F64, seed=0), additive),
    "ScaledDotProductAttention": (fusedrnn.ScaledDotProductAttention, sdpa),
    "Linear": (lambda: fusedrnn.Linear(3, 5, dtype=F64, seed=0), linear),
    "LayerNorm": (lambda: fusedrnn.LayerNorm(3, dtype=F64), linear),
    "LayerNormLSTM": (
        lambda: fusedrnn.LayerNormLSTM(3, 4, num_layers=2, dropout=0.2, dtype=F64, seed=0),
        recurrent,
    ),
    "LayerNormGRU": (
        lambda: fusedrnn.LayerNormGRU(3, 4, bidirectional=True, dtype=F64, seed=0),
        recurrent,
    ),
    "Embedding": (lambda: fusedrnn.Embedding(10, 4, padding_idx=0, dtype=F64, seed=0), embedding),
    "CrossEntropyLoss": (fusedrnn.CrossEntropyLoss, class_loss),
    "CrossEntropyLoss_smoothing_weight": (
        lambda: fusedrnn.CrossEntropyLoss(np.arange(1.0, 7.0), label_smoothing=0.2),
        class_loss,
    ),
    "NLLLoss": (lambda: fusedrnn.NLLLoss(reduction="none"), class_loss),
    "MSELoss": (fusedrnn.MSELoss, mse),
    "Dropout": (lambda: fusedrnn.Dropout(0.3, seed=0), elementwise),
    "LogSoftmax": (lambda: fusedrnn.LogSoftmax(0), elementwise),
    "ReLU": (fusedrnn.ReLU, elementwise),
    "GELU": (fusedrnn.GELU, elementwise),
    "Tanh": (fusedrnn.Tanh, elementwise),
    "Sigmoid": (fusedrnn.Sigmoid, elementwise),
    "SinusoidalPositionalEncoding": (
        lambda: fusedrnn.SinusoidalPositionalEncoding(7, 10, dtype=F64),
        elementwise,
    ),
    "LearnedPositionalEncoding": (
        lambda: fusedrnn.LearnedPositionalEncoding(10, 7, dtype=F64, seed=0),
        elementwise,
    ),
    "TransformerDecoderBlock": (
        lambda: fusedrnn.TransformerDecoderBlock(8, 2, 16, dropout=0.2, dtype=F64, seed=0),
        block,
    ),
}

ROUND_TRIPS = {
    "pickle": lambda module: pickle.loads(pickle.dumps(module)),
    "deepcopy": copy.deepcopy,
}


def flat(value):
    """The arrays of a nested tuple / list of arrays (Nones left out)."""
    if isinstance(value, (tuple, list)):
        return [array for item in value for array in flat(item)]
    return [] if value is None else [value]


def gradients(module) -> dict:
    """Every parameter's gradient, by name (copies)."""
    return {name: np.array(grad) for name, grad in module.grads.items()}


def snapshot(module) -> tuple:
    return module.state_dict(), gradients(module)


def assert_same_arrays(actual: dict | list, expected: dict | list):
    assert len(actual) == len(expected)
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        actual, expected = list(actual.values()), list(expected.values())
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("round_trip", ROUND_TRIPS.values(), ids=ROUND_TRIPS)
@pytest.mark.parametrize(("build", "run"), CASES.values(), ids=CASES)
def test_round_trip_computes_the_same_and_is_independent(build, run, round_trip):
    original = build()
    run(np.random.default_rng(0), original)  # mid-training: grads, a saved forward, a generator
    clone = round_trip(original)
    assert type(clone) is type(original) and repr(clone) == repr(original)
    assert_same_arrays(snapshot(clone)[0], snapshot(original)[0])
    assert_same_arrays(snapshot(clone)[1], snapshot(original)[1])

    outputs = [run(np.random.default_rng(1), module) for module in (original, clone)]
    assert_same_arrays(outputs[1], outputs[0])
    before = snapshot(original)
    assert_same_arrays(snapshot(clone)[1], before[1])

    # independent: changing the clone's parameters, gradients and mode leaves the original
    for _, param in clone.named_parameters():
        param += 1.0
    clone.zero_grad()
    clone.eval()
    assert original.training
    assert_same_arrays(snapshot(original)[0], before[0])
    assert_same_arrays(snapshot(original)[1], before[1])


def test_every_module_of_fusedrnn_has_a_case():
    exported = {
        name
        for name in fusedrnn.__all__
        if inspect.isclass(value := getattr(fusedrnn, name)) and issubclass(value, Module)
    }
    covered = {name.split("_")[0] for name in CASES}
    assert exported <= covered, f"no pickle case for {sorted(exported - covered)}"


@pytest.mark.parametrize("round_trip", ROUND_TRIPS.values(), ids=ROUND_TRIPS)
def test_a_tied_parameter_stays_one_object_with_one_gradient(round_trip):
    clone = round_trip(TiedLanguageModel())
    assert clone.decoder.weight is clone.encoder.weight
    assert clone.decoder.weight.grad is clone.encoder.weight.grad
    assert [name for name, _ in clone.named_parameters()].count("decoder.weight") == 0
