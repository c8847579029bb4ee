"""Models that compose, as in PyTorch: parameters that carry their gradient, assignment and
tying, submodules with PyTorch's dotted names, containers, the backward-once rule, the dtype
rule, and the learned initial state; against PyTorch (float64) where PyTorch has the same thing.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fusedrnn
from fusedrnn import (
    GRU,
    LSTM,
    RNN,
    Embedding,
    Linear,
    Module,
    Parameter,
    Sequential,
)
from tests.helpers.cells import assert_close
from tests.layers.test_pickle import CASES

F64 = np.float64


class TiedModel(Module):
    """Embedding -> GRU -> Linear with the decoder's weight tied to the embedding's."""

    def __init__(self, tied: bool = True, vocab: int = 11, size: int = 6, dtype=F64):
        super().__init__()
        self.encoder = Embedding(vocab, size, dtype=dtype, seed=0)
        self.rnn = GRU(size, size, num_layers=2, dtype=dtype, seed=1)
        self.decoder = Linear(size, vocab, dtype=dtype, seed=2)
        if tied:
            self.decoder.weight = self.encoder.weight

    def forward(self, tokens, h=None):
        y, h = self.rnn(self.encoder(tokens), h)
        return self.decoder(y), h

    def backward(self, d_logits):
        dx, _ = self.rnn.backward(self.decoder.backward(d_logits))
        self.encoder.backward(dx)


def torch_tied_model(torch, tied: bool = True, vocab: int = 11, size: int = 6):
    class TorchModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Embedding(vocab, size)
            self.rnn = torch.nn.GRU(size, size, num_layers=2)
            self.decoder = torch.nn.Linear(size, vocab)
            if tied:
                self.decoder.weight = self.encoder.weight

        def forward(self, tokens, h=None):
            y, h = self.rnn(self.encoder(tokens), h)
            return self.decoder(y), h

    return TorchModel().double()


# ---------------------------------------------------------------- Parameter


def test_a_parameter_is_an_array_with_its_gradient():
    p = Parameter(np.arange(6.0).reshape(2, 3))
    assert p.grad.shape == (2, 3) and p.grad.dtype == F64 and not p.grad.any()
    assert p.grad.ctypes.data % 64 == 0  # cache-line aligned, as the kernels' threads want
    for derived in (p * 2, p[0], p.T, p.copy(), p.reshape(3, 2), np.concatenate([p, p])):
        assert type(derived) is np.ndarray  # computed from a parameter: a plain array
    q = p
    q -= 1.0  # in place: still the parameter
    assert q is p and isinstance(p, Parameter) and p[0, 0] == -1.0
    assert repr(p).startswith("Parameter([[-1.,")
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        Parameter(np.zeros(3, np.float16))
    with pytest.raises(TypeError, match="data must hold real floating-point numbers"):
        Parameter(np.zeros(3, np.int64))


def test_a_pickled_parameter_keeps_its_values_and_gradient():
    p = Parameter(np.ones(4, np.float32))
    p.grad += 2.0
    q = pickle.loads(pickle.dumps(p))
    assert isinstance(q, Parameter) and q.dtype == np.float32
    np.testing.assert_array_equal(q, p)
    np.testing.assert_array_equal(q.grad, p.grad)
    assert q.grad is not p.grad


# ---------------------------------------------------------------- assignment


def test_assigning_a_parameter_rebinds_it_everywhere():
    rng = np.random.default_rng(0)
    lstm, twin = LSTM(3, 4, dtype=F64, seed=0), LSTM(3, 4, dtype=F64, seed=1)
    new = rng.standard_normal((16, 3))
    lstm.weight_ih_l0 = new
    assert np.shares_memory(lstm.weight_ih_l0, new)  # the array given, not a copy
    assert isinstance(lstm.weight_ih_l0, Parameter)
    assert dict(lstm.named_parameters())["weight_ih_l0"] is lstm.weight_ih_l0
    np.testing.assert_array_equal(lstm.state_dict()["weight_ih_l0"], new)
    twin.load_state_dict(lstm.state_dict())
    x = rng.standard_normal((5, 2, 3))
    np.testing.assert_array_equal(lstm(x)[0], twin(x)[0])  # forward uses the new weight

    lin = Linear(4, 2, dtype=F64)
    lin.bias = np.arange(2.0)
    np.testing.assert_array_equal(lin(np.zeros((1, 4))), [[0.0, 1.0]])


@pytest.mark.parametrize(
    ("value", "error", "pattern"),
    [
        (np.zeros((16, 4)), ValueError, r"LSTM.weight_ih_l0 must have shape \(16, 3\)"),
        (np.zeros((16, 3), np.float32), TypeError, r"module's dtype float64, got float32"),
        (np.zeros((16, 3), np.int64), TypeError, r"module's dtype float64, got int64"),
        ([[0.0] * 3] * 16, TypeError, r"must be assigned a numpy array .* got list"),
        (None, TypeError, r"got NoneType"),
        (np.zeros((3, 16)).T, ValueError, r"C-contiguous"),
    ],
)
def test_a_refused_assignment_names_it_and_changes_nothing(value, error, pattern):
    lstm = LSTM(3, 4, dtype=F64, seed=0)
    before = lstm.weight_ih_l0
    with pytest.raises(error, match=pattern):
        lstm.weight_ih_l0 = value
    assert lstm.weight_ih_l0 is before


def test_assigning_after_forward_discards_the_saved_forward():
    lin = Linear(3, 2, dtype=F64)
    lin(np.ones((1, 3)))
    lin.weight = np.zeros((2, 3))
    with pytest.raises(RuntimeError, match="a parameter was reassigned"):
        lin.backward(np.ones((1, 2)))


# ---------------------------------------------------------------- tying and submodules


def test_a_tied_parameter_is_one_array_with_one_gradient():
    model = TiedModel()
    assert model.decoder.weight is model.encoder.weight
    names = [name for name, _ in model.named_parameters()]
    assert "encoder.weight" in names and "decoder.weight" not in names  # once, as PyTorch
    assert list(model.state_dict()) == [
        name for name, _ in model.named_parameters(remove_duplicate=False)
    ]
    assert "decoder.weight" in model.state_dict()  # both names, as PyTorch
    tokens = np.array([[1, 2], [3, 4], [5, 1]])
    logits, _ = model(tokens)
    model.backward(np.ones_like(logits))
    grad = model.encoder.weight.grad
    assert grad is model.decoder.weight.grad and grad.any()
    model.zero_grad()
    assert not grad.any()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_composed_model_equals_pytorch(tied):
    """A PyTorch model's whole state_dict loads into the same fusedrnn model: the same outputs,
    the same gradient of every parameter (the tied one the sum of both uses), the same
    clipped norm over parameters()."""
    torch = pytest.importorskip("torch")
    ours, theirs = TiedModel(tied), torch_tied_model(torch, tied)
    state = {name: value.detach().numpy() for name, value in theirs.state_dict().items()}
    assert list(ours.state_dict()) == list(state)
    ours.load_state_dict(state)
    tokens = np.random.default_rng(0).integers(0, 11, (7, 3))
    d_logits = np.random.default_rng(1).standard_normal((7, 3, 11))
    logits, _ = ours(tokens)
    torch_logits, _ = theirs(torch.from_numpy(tokens))
    assert_close(logits, torch_logits.detach().numpy(), F64, "logits")
    ours.backward(d_logits)
    torch_logits.backward(torch.from_numpy(d_logits))
    torch_params = dict(theirs.named_parameters())
    assert list(dict(ours.named_parameters())) == list(torch_params)
    for name, param in ours.named_parameters():
        assert_close(param.grad, torch_params[name].grad.numpy(), F64, name)
    norm = fusedrnn.clip_grad_norm_(ours.parameters(), 0.5)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
    assert norm == pytest.approx(torch_norm.item(), rel=1e-12)


def test_train_eval_and_repr_reach_every_submodule():
    model = TiedModel()
    model.eval()
    assert not any(module.training for module in model.modules())
    model.train()
    assert all(module.training for module in model.modules())
    assert [name for name, _ in model.named_modules()] == ["", "encoder", "rnn", "decoder"]
    assert repr(model).splitlines()[1] == "  (encoder): Embedding(11, 6, dtype=np.float64)"


def test_submodules_must_come_after_init_and_names_are_checked():
    class Early(Module):
        def __init__(self):
            self.linear = Linear(2, 2)  # before super().__init__()
            super().__init__()

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first"):
        Early()
    model = Module()
    model.head = Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign int as submodule 'head'"):
        model.head = 3
    with pytest.raises(TypeError, match=r"must be a fusedrnn\.Parameter"):
        model.register_parameter("w", np.zeros(2))
    del model.head
    assert list(model.named_parameters()) == []


def test_load_state_dict_strict_and_not():
    model = TiedModel()
    state = model.state_dict()
    state.pop("rnn.bias_hh_l1")
    state["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['rnn.bias_hh_l1'\], unexpected \['extra'\]"):
        model.load_state_dict(state)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["rnn.bias_hh_l1"] and result.unexpected_keys == ["extra"]


def test_sequential_backward_runs_its_children_in_reverse_as_pytorch():
    torch = pytest.importorskip("torch")
    ours = Sequential(Linear(4, 5, dtype=F64, seed=0), Linear(5, 3, dtype=F64, seed=1))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 3)).double()
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((6, 4))
    tx = torch.tensor(x, requires_grad=True)
    assert_close(ours(x), theirs(tx).detach().numpy(), F64, "output")
    dy = np.random.default_rng(1).standard_normal((6, 3))
    dx = ours.backward(dy)
    theirs(tx).backward(torch.from_numpy(dy))
    assert_close(dx, tx.grad.numpy(), F64, "dx")
    for name, param in theirs.named_parameters():
        assert_close(ours.grads[name], param.grad.numpy(), F64, name)
    assert len(ours) == 2 and isinstance(ours[-1], Linear) and len(ours[:1]) == 1


# ---------------------------------------------------------------- rules


# every module with a backward (the list and dict containers have none, as in PyTorch)
BACKWARD_CASES = {name: case for name, case in CASES.items() if not name.startswith("Module")}
BACKWARD_CASES["Module_tied"] = CASES["Module_tied"]


@pytest.mark.parametrize(("build", "run"), BACKWARD_CASES.values(), ids=BACKWARD_CASES)
def test_a_second_backward_raises_unless_the_first_retained(build, run, monkeypatch):
    module = build()
    calls = []
    original_backward = module.backward

    def recording_backward(*args, **kwargs):
        calls.append((args, kwargs))
        return original_backward(*args, **kwargs)

    monkeypatch.setattr(module, "backward", recording_backward)
    run(np.random.default_rng(0), module)
    args, kwargs = calls[-1]
    with pytest.raises(RuntimeError, match=r"retain_graph=True|the tape is empty"):
        original_backward(*args, **kwargs)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (None, np.float32),
        ("float64", np.float64),
        ("f4", np.float32),
        (np.dtype("float64"), np.float64),
        (float, np.float64),
    ],
)
def test_dtype_names_and_none(dtype, expected):
    for make in (lambda: RNN(2, 3, dtype=dtype), lambda: Linear(2, 3, dtype=dtype)):
        layer = make()
        assert layer.dtype == expected
        assert all(p.dtype == expected for p in layer.parameters())
        assert "None" not in repr(layer)


def test_dtype_from_torch():
    torch = pytest.importorskip("torch")
    assert LSTM(2, 3, dtype=torch.float32).dtype == np.float32
    assert LSTM(2, 3, dtype=torch.float64).weight_hh_l0.dtype == np.float64
    with pytest.raises(TypeError, match=r"dtype must be float32 or float64.*torch\.float16"):
        LSTM(2, 3, dtype=torch.float16)


@pytest.mark.parametrize("dtype", [np.float16, np.int32, "complex", object, 3])
def test_other_dtypes_are_type_errors(dtype):
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        GRU(2, 3, dtype=dtype)


# ---------------------------------------------------------------- learned initial state


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_learned_initial_state_equals_pytorch_with_a_broadcast_parameter(cls, unbatched, backend):
    torch = pytest.importorskip("torch")
    layer = cls(
        3, 4, num_layers=2, bidirectional=True, learn_initial_state=True, dtype=F64, backend=backend
    )
    names = [name for name, _ in layer.named_parameters()]
    assert names[-2:] == ["h0", "c0"] if cls is LSTM else names[-1] == "h0"
    assert not layer.h0.any()  # zeros at first: the same as no initial state
    rng = np.random.default_rng(0)
    layer.h0[...] = rng.standard_normal(layer.h0.shape)
    if cls is LSTM:
        layer.c0[...] = rng.standard_normal(layer.c0.shape)
    theirs = getattr(torch.nn, cls.__name__)(3, 4, num_layers=2, bidirectional=True).double()
    theirs.load_state_dict(
        {k: torch.from_numpy(v) for k, v in layer.state_dict().items() if k not in ("h0", "c0")}
    )
    h0 = torch.tensor(layer.h0, requires_grad=True)
    c0 = torch.tensor(layer.c0, requires_grad=True) if cls is LSTM else None
    B = 1 if unbatched else 3
    x = rng.standard_normal((5, 3) if unbatched else (5, B, 3))

    def expand(s):  # (L*D, H) over the batch, as a user of PyTorch would write it
        return s if unbatched else s[:, None].expand(-1, B, -1)

    hx = (expand(h0), expand(c0)) if cls is LSTM else expand(h0)
    torch_y, _ = theirs(torch.from_numpy(x), hx)
    y, _ = layer(x)
    assert_close(y, torch_y.detach().numpy(), F64, "output")
    dy = rng.standard_normal(y.shape)
    layer.backward(dy)
    torch_y.backward(torch.from_numpy(dy))
    assert_close(layer.h0.grad, h0.grad.numpy(), F64, "h0")
    if cls is LSTM:
        assert_close(layer.c0.grad, c0.grad.numpy(), F64, "c0")
    for name, param in theirs.named_parameters():
        assert_close(layer.grads[name], param.grad.numpy(), F64, name)


@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
def test_learned_initial_state_trains_alike_on_both_backends(cls):
    """The reference backend's backward refused the layer's gradients with h0 among them."""
    layers = [
        cls(3, 4, num_layers=2, learn_initial_state=True, dtype=F64, seed=1, backend=backend)
        for backend in ("fused", "reference")
    ]
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    for layer in layers:
        layer.h0[...] = 0.5
        layer(x)
        layer.backward(dy)
    fused, ref = (dict(layer.grads) for layer in layers)
    assert fused.keys() == ref.keys() and "h0" in fused
    assert np.abs(fused["h0"]).max() > 0
    for name in ref:
        assert_close(fused[name], ref[name], F64, name)


def test_a_given_hx_takes_the_place_of_the_learned_state():
    layer = GRU(2, 3, learn_initial_state=True, dtype=F64, seed=0)
    layer.h0 += 1.0
    x = np.ones((4, 2, 2))
    y, _ = layer(x, np.zeros((1, 2, 3)))
    layer.backward(np.ones_like(y))
    assert not layer.h0.grad.any()  # not used, so no gradient
    plain = GRU(2, 3, dtype=F64, seed=0)
    np.testing.assert_array_equal(y, plain(x)[0])
    assert "learn_initial_state=True" in repr(layer)


def test_a_refused_backward_keeps_the_forward_and_adds_nothing():
    layer = LSTM(3, 4, dtype=F64, seed=0)
    y, _ = layer(np.ones((5, 2, 3)))
    with pytest.raises(ValueError, match="d_output"):
        layer.backward(np.ones((5, 2, 5)))
    assert not any(p.grad.any() for p in layer.parameters())
    layer.backward(np.ones_like(y))  # the forward is still there
    assert layer.weight_ih_l0.grad.any()


def test_a_slice_of_a_sequential_keeps_the_names_as_pytorch():
    from collections import OrderedDict

    model = Sequential(OrderedDict([("a", Linear(2, 3)), ("b", Linear(3, 4)), ("c", Linear(4, 1))]))
    head = model[1:]
    assert isinstance(head, Sequential) and list(dict(head.named_children())) == ["b", "c"]
    assert head.b is model.b
    layers = fusedrnn.ModuleList([Linear(2, 2), Linear(2, 2), Linear(2, 2)])
    assert list(dict(layers[1:].named_children())) == ["0", "1"]
