"""Frozen parameters in the NumPy API (``requires_grad_(False)``), as in PyTorch: no gradient
(``grad`` is None), backward does not compute it and leaves every other result as it was, to the
bit, and optimizers, clipping, ``zero_grad`` and the round trips pass it by or keep it frozen."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional
from fusedrnn.optim import grad_norm
from tests.layers.test_pickle import CASES, TiedLanguageModel

F64 = np.float64

# the modules that have parameters (the losses, activations and attention without weights have
# nothing to freeze)
WITH_PARAMETERS = {name: case for name, case in CASES.items() if list(case[0]().parameters())}


def on_backend(module: fusedrnn.Module, backend: str) -> fusedrnn.Module:
    for part in module.modules():
        if getattr(part, "backend", None) is not None:
            part.backend = backend
    return module


def frozen_sets(module: fusedrnn.Module) -> list[tuple[str, ...]]:
    """Each parameter alone, every other one, and all of them."""
    names = [name for name, _ in module.named_parameters()]
    return [(name,) for name in names] + [tuple(names[::2]), tuple(names)]


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize(("build", "run"), WITH_PARAMETERS.values(), ids=WITH_PARAMETERS)
def test_a_frozen_parameter_gets_no_gradient_and_the_rest_keeps_its_bits(build, run, backend):
    original = on_backend(build(), backend)
    full = copy.deepcopy(original)
    full_outputs = run(np.random.default_rng(1), full)
    full_grads = dict(full.named_parameters())
    for frozen in frozen_sets(original):
        model = copy.deepcopy(original)  # the same generators: the same dropout masks
        params = dict(model.named_parameters())
        for name in frozen:
            params[name].requires_grad_(False)
        outputs = run(np.random.default_rng(1), model)
        assert len(outputs) == len(full_outputs)
        for got, want in zip(outputs, full_outputs):
            np.testing.assert_array_equal(got, want, err_msg=f"frozen {frozen}")
        for name, param in params.items():
            if name in frozen:
                assert param.grad is None and not param.requires_grad, name
            else:
                np.testing.assert_array_equal(
                    param.grad, full_grads[name].grad, err_msg=f"{name}, frozen {frozen}"
                )
        assert set(model.grads) == {
            name
            for name, p in model.named_parameters(remove_duplicate=False)
            if name not in frozen and p.requires_grad
        }


def spy_on(monkeypatch, name: str) -> list:
    """Replace ``fusedrnn.functional.<name>`` by a wrapper that records each call's
    ``frozen``."""
    calls, real = [], getattr(functional, name)

    def spy(*args, **kwargs):
        calls.append(set(kwargs.get("frozen", ())))
        return real(*args, **kwargs)

    monkeypatch.setattr(functional, name, spy)
    return calls


def test_the_layers_tell_the_kernels_what_not_to_compute(monkeypatch):
    """A frozen weight spares its GEMM only if the layer names it to the fused function; the
    bits test above passes as well when a layer computes a frozen gradient and drops it."""
    rng = np.random.default_rng(0)
    stack_calls = spy_on(monkeypatch, "stack_backward")
    lstm = fusedrnn.LSTM(3, 4, num_layers=2, learn_initial_state=True, seed=0)
    for name in ("weight_hh_l0", "bias_ih_l1", "h0"):
        lstm._params[name].requires_grad_(False)
    y, _ = lstm(rng.standard_normal((5, 2, 3)).astype(np.float32))
    lstm.backward(np.ones_like(y))
    assert stack_calls == [{"weight_hh_l0", "bias_ih_l1"}]  # h0 is the layer's own sum
    assert lstm.h0.grad is None and lstm.c0.grad.any()

    cell_calls = spy_on(monkeypatch, "rnn_backward")
    cell = fusedrnn.RNNCell(3, 4, bias=False, seed=0)
    cell.weight_ih.requires_grad_(False)
    h = cell(rng.standard_normal((2, 3)).astype(np.float32))
    cell.backward(np.ones_like(h))
    assert cell_calls == [{"weight_ih", "bias_ih", "bias_hh"}]  # no biases: none computed

    ln_calls = spy_on(monkeypatch, "ln_gru_backward")
    ln_gru = fusedrnn.LayerNormGRU(3, 4, num_layers=2, seed=0)
    ln_gru.weight_ih_l1.requires_grad_(False)
    y, _ = ln_gru(rng.standard_normal((5, 2, 3)).astype(np.float32))
    ln_gru.backward(np.ones_like(y))
    assert ln_calls == [{"weight_ih"}, set()]  # layer 1, then layer 0

    linear_calls = spy_on(monkeypatch, "linear_backward")
    attention = fusedrnn.MultiheadAttention(8, 2, seed=0)
    attention.in_proj_weight.requires_grad_(False)
    attention.out_proj.bias.requires_grad_(False)
    x = rng.standard_normal((4, 2, 8)).astype(np.float32)
    out, _ = attention(x, x, x)
    attention.backward(np.ones_like(out))
    assert linear_calls == [{"bias"}, {"weight"}, {"weight"}, {"weight"}]


def test_requires_grad_and_requires_grad_():
    param = fusedrnn.Parameter(np.arange(6.0).reshape(2, 3))
    assert param.requires_grad and param.grad is not None
    param.grad += 1
    assert param.requires_grad_(True) is param
    np.testing.assert_array_equal(param.grad, 1)  # unfreezing what is not frozen: kept
    assert param.requires_grad_(False) is param
    assert param.grad is None and not param.requires_grad
    param.requires_grad = True
    assert param.grad.shape == (2, 3) and param.grad.dtype == F64 and not param.grad.any()
    assert param.grad.ctypes.data % 64 == 0  # aligned, as a new parameter's
    param.requires_grad = np.False_
    assert param.grad is None
    for bad in (0, "no", None):
        with pytest.raises(TypeError, match="requires_grad must be a bool"):
            param.requires_grad_(bad)
    with pytest.raises(TypeError, match="requires_grad must be a bool"):
        fusedrnn.Linear(2, 2).requires_grad_(1)


def test_module_requires_grad_reaches_every_submodule_and_a_tied_parameter_once():
    model = TiedLanguageModel()
    assert model.requires_grad_(False) is model
    assert not model.grads and all(p.grad is None for p in model.parameters())
    model.zero_grad()  # nothing to zero, no error
    model.rnn.requires_grad_()
    assert set(model.grads) == {name for name, _ in model.rnn.named_parameters(prefix="rnn")}
    model.encoder.requires_grad_(True)  # the decoder's weight is the same object
    assert model.decoder.weight.requires_grad and not model.decoder.bias.requires_grad


def two_layers() -> fusedrnn.Module:
    model = fusedrnn.Sequential(
        fusedrnn.Linear(3, 5, dtype=F64, seed=0), fusedrnn.Linear(5, 2, dtype=F64, seed=1)
    )
    x = np.random.default_rng(0).standard_normal((4, 3))
    model.backward(np.ones_like(model(x)))
    return model


OPTIMIZERS = {
    "sgd": lambda params: fusedrnn.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda params: fusedrnn.Adam(params, lr=0.1, weight_decay=0.01, amsgrad=True),
}


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS)
def test_optimizers_and_clipping_pass_a_frozen_parameter_by(make_optimizer):
    """Frozen after a step (it has state then): it stays, its state too, and every other
    parameter takes the step it takes with nothing frozen (each is updated on its own), from
    gradients clipped by their own norm; unfrozen, it trains again."""
    model = two_layers()
    optimizer = make_optimizer(model.parameters())
    optimizer.step()
    twin = copy.deepcopy(model)
    twin_optimizer = make_optimizer(twin.parameters())
    twin_optimizer.load_state_dict(optimizer.state_dict())
    frozen = model[0].bias
    frozen.requires_grad_(False)
    value, state = frozen.copy(), copy.deepcopy(optimizer.state[id(frozen)])

    norm = grad_norm([p.grad for p in model.parameters() if p.requires_grad])
    assert norm > 0.5  # (so that clipping scales)
    assert fusedrnn.clip_grad_norm_(model.parameters(), 0.5) == norm
    optimizer.step()
    optimizer.zero_grad()  # passes it by as well
    np.testing.assert_array_equal(frozen, value)
    assert optimizer.state[id(frozen)].keys() == state.keys()
    for key, buffer in state.items():
        np.testing.assert_array_equal(optimizer.state[id(frozen)][key], buffer)

    for p in twin.parameters():
        p.grad *= F64(0.5 / (norm + 1e-6))  # (clip_grad_norm_'s factor)
    twin_optimizer.step()
    for (name, p), q in zip(twin.named_parameters(), model.parameters()):
        if q is not frozen:
            np.testing.assert_array_equal(q, p, err_msg=name)

    frozen.requires_grad_(True)
    assert not frozen.grad.any()
    frozen.grad += 1.0
    optimizer.step()
    assert optimizer.state[id(frozen)]["step"] == state["step"] + 1
    assert not np.array_equal(frozen, value)


def test_an_optimizer_of_frozen_parameters_only_steps_nothing():
    model = two_layers().requires_grad_(False)
    before = model.state_dict()
    optimizer = fusedrnn.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    optimizer.step()
    assert optimizer.state == {}
    assert fusedrnn.clip_grad_norm_(model.parameters(), 1.0) == 0.0
    fusedrnn.clip_grad_value_(model.parameters(), 1.0)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize(
    "round_trip", [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy], ids=["pickle", "copy"]
)
def test_a_frozen_parameter_stays_frozen_through_round_trips_and_loads(round_trip):
    model = TiedLanguageModel()
    model.rnn.weight_hh_l0.requires_grad_(False)
    model.encoder.requires_grad_(False)
    clone = round_trip(model)
    frozen = {name for name, p in clone.named_parameters(remove_duplicate=False) if p.grad is None}
    assert frozen == {"rnn.weight_hh_l0", "encoder.weight", "decoder.weight"}
    assert clone.decoder.weight is clone.encoder.weight
    state = {name: value + 1.0 for name, value in model.state_dict().items()}
    clone.load_state_dict(state)  # a frozen parameter is loaded as any other
    np.testing.assert_array_equal(clone.rnn.weight_hh_l0, state["rnn.weight_hh_l0"])
    assert clone.rnn.weight_hh_l0.grad is None


STACKS = {
    "LSTM": lambda: fusedrnn.LSTM(3, 4, num_layers=3, dtype=F64, seed=0),
    "GRU_learned_state": lambda: fusedrnn.GRU(
        3, 4, num_layers=3, learn_initial_state=True, dtype=F64, seed=0
    ),
    "LayerNormLSTM": lambda: fusedrnn.LayerNormLSTM(3, 4, num_layers=3, dtype=F64, seed=0),
}


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("build", STACKS.values(), ids=STACKS)
def test_fine_tuning_the_top_of_a_stack_without_input_or_state_gradients(build, backend):
    """Layers 0 and 1 frozen, backward(input_grad=False, state_grad=False): no dx, no dhx,
    and the top layer's gradients (and a learned initial state's) are those of a full
    backward."""
    original = on_backend(build(), backend)
    full = copy.deepcopy(original)
    tuned = copy.deepcopy(original)
    for name, param in tuned.named_parameters():
        if name.endswith(("_l0", "_l1")):
            param.requires_grad_(False)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    for model in (full, tuned):
        model(x)
    dy = np.random.default_rng(1).standard_normal((6, 2, 4))
    full.backward(dy)
    assert tuned.backward(dy, input_grad=False, state_grad=False) == (None, None)
    for (name, param), twin in zip(tuned.named_parameters(), full.parameters()):
        if name.endswith(("_l0", "_l1")):
            assert param.grad is None, name
        else:
            np.testing.assert_array_equal(param.grad, twin.grad, err_msg=name)


def test_without_state_or_input_gradients_the_stack_skips_the_frozen_bottom(monkeypatch):
    calls = []
    real = functional.stack_backward

    def spy(*args, **kwargs):
        calls.append((kwargs["input_grad"], kwargs["state_grad"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(functional, "stack_backward", spy)
    for learned in (False, True):
        gru = fusedrnn.GRU(3, 4, num_layers=2, learn_initial_state=learned, seed=0)
        y, _ = gru(np.ones((5, 2, 3), np.float32))
        gru.backward(np.ones_like(y), input_grad=False, state_grad=False)
    # a learned initial state that trains needs the states' gradient
    assert calls == [(False, False), (False, True)]


def test_zero_grad_takes_pytorchs_set_to_none_and_zeroes_in_place():
    """Ported code calls ``zero_grad(set_to_none=...)``: either way the gradient arrays stay
    (the kernels add into them) and are zeroed; None stays the mark of a frozen parameter."""
    model = two_layers()
    model[1].bias.requires_grad_(False)
    optimizer = fusedrnn.SGD(model.parameters(), lr=0.1)
    for zero_grad in (model.zero_grad, optimizer.zero_grad):
        for set_to_none in (True, False):
            arrays = [p.grad for p in model.parameters() if p.requires_grad]
            for grad in arrays:
                grad += 1.0
            zero_grad(set_to_none=set_to_none)
            kept = [p.grad for p in model.parameters() if p.requires_grad]
            assert len(kept) == len(arrays) and all(a is b for a, b in zip(kept, arrays))
            assert not any(grad.any() for grad in arrays)
            assert model[1].bias.grad is None
        with pytest.raises(TypeError, match="set_to_none must be a bool"):
            zero_grad(set_to_none=None)
