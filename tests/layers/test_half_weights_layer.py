"""``LSTM`` / ``GRU`` / ``RNN`` with ``weights_dtype``: eval-mode forwards multiply with a 16-bit
copy of the weight matrices, made once and rebuilt whenever the parameters change; training mode
and the state dict are the float32 layer's."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _core
from tests.helpers.cells import assert_close

LAYERS = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}


def pair(mode, weights_dtype="float16", **kw):
    """A fused layer with weights_dtype and its reference-backend twin (same parameters)."""
    fused = LAYERS[mode](6, 12, seed=0, weights_dtype=weights_dtype, **kw)
    reference = LAYERS[mode](6, 12, seed=0, weights_dtype=weights_dtype, backend="reference", **kw)
    return fused.eval(), reference.eval()


def states(output) -> tuple:
    """(h_n,) or, for an LSTM, (h_n, c_n) of a layer's output."""
    return output[1] if isinstance(output[1], tuple) else (output[1],)


# every option of the layers: (mode, constructor keywords)
OPTIONS = [
    ("lstm", {}),
    ("lstm", {"num_layers": 2, "bidirectional": True, "proj_size": 5, "batch_first": True}),
    ("lstm", {"bias": False, "learn_initial_state": True}),
    ("gru", {"num_layers": 2, "batch_first": True}),
    ("gru", {"bidirectional": True, "reset_after": False}),
    ("rnn", {"nonlinearity": "relu", "num_layers": 2, "bidirectional": True}),
    # ONNX's options: the peepholes stay float32, as the biases
    ("lstm", {"peephole": True, "clip": 2.0, "input_forget": True}),
    ("gru", {"activations": ["HardSigmoid", "Tanh"], "activation_alpha": [0.3]}),
]


@pytest.mark.parametrize("weights_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("mode", "kw"), OPTIONS)
def test_eval_forward_equals_reference(mode, kw, weights_dtype):
    fused, reference = pair(mode, weights_dtype, **kw)
    rng = np.random.default_rng(1)
    T, B = 5, 4
    x = rng.standard_normal((B, T, 6) if fused.batch_first else (T, B, 6)).astype(np.float32)
    LD = fused.num_layers * fused.num_directions
    h0 = rng.standard_normal((LD, B, fused.proj_size or 12)).astype(np.float32)
    hx = (h0, rng.standard_normal((LD, B, 12)).astype(np.float32)) if mode == "lstm" else h0
    lengths = np.array([5, 2, 4, 1])
    for args in ((x,), (x, hx), (x, hx, lengths), (x[0] if fused.batch_first else x[:, 0],)):
        got, want = fused(*args), reference(*args)
        assert_close(got[0], want[0], np.float32, "output")
        for name, a, b in zip(("h_n", "c_n"), states(got), states(want)):
            assert_close(a, b, np.float32, name)
    # and not the float32 layer's numbers
    fused.weights_dtype = None
    assert np.max(np.abs(fused(x)[0] - reference(x)[0])) > 1e-6


def test_training_mode_is_the_float32_layer():
    half = fusedrnn.LSTM(6, 12, seed=0, weights_dtype="bfloat16")
    plain = fusedrnn.LSTM(6, 12, seed=0)
    x = np.random.default_rng(1).standard_normal((5, 3, 6)).astype(np.float32)
    np.testing.assert_array_equal(half(x)[0], plain(x)[0])
    dx_half, _ = half.backward(np.ones((5, 3, 12), np.float32))
    dx_plain, _ = plain.backward(np.ones((5, 3, 12), np.float32))
    np.testing.assert_array_equal(dx_half, dx_plain)
    assert half.state_dict().keys() == plain.state_dict().keys()
    for name, value in half.state_dict().items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, plain.state_dict()[name])


def test_the_16_bit_copy_is_made_once_and_rebuilt_when_the_parameters_change():
    layer = fusedrnn.GRU(6, 12, seed=0, weights_dtype="float16").eval()
    x = np.random.default_rng(1).standard_normal((5, 3, 6)).astype(np.float32)
    first = layer(x)[0]
    packed = layer._half_weights
    layer(x)
    assert layer._half_weights is packed  # not packed again

    def expected():
        twin = fusedrnn.GRU(6, 12, weights_dtype="float16", backend="reference").eval()
        twin.load_state_dict(layer.state_dict())
        return twin(x)[0]

    # load_state_dict copies new values into the same arrays
    state = {k: v * np.float32(0.5) for k, v in layer.state_dict().items()}
    layer.load_state_dict(state)
    assert_close(layer(x)[0], expected(), np.float32, "after load_state_dict")
    # assigning a parameter
    layer.weight_hh_l0 = np.ascontiguousarray(layer.weight_hh_l0[::-1])
    assert_close(layer(x)[0], expected(), np.float32, "after assignment")
    # training steps change the parameters in place: a training-mode forward drops the copy
    layer.train()
    layer(x)
    layer.backward(np.ones((5, 3, 12), np.float32))
    weight = layer.weight_ih_l0  # (no assignment: in place)
    weight -= weight.grad
    layer.eval()
    assert_close(layer(x)[0], expected(), np.float32, "after a training step")
    # an edit in place in eval mode: setting weights_dtype (again) rebuilds it
    layer.bias_hh_l0[:] = 0.25
    layer.weight_hh_l0[:] = 0.01
    layer.weights_dtype = "float16"
    assert_close(layer(x)[0], expected(), np.float32, "after setting weights_dtype")
    assert not np.allclose(layer(x)[0], first)


def test_another_instruction_set_repacks():
    layer = fusedrnn.LSTM(6, 40, seed=0, weights_dtype="float16").eval()
    x = np.random.default_rng(1).standard_normal((3, 2, 6)).astype(np.float32)
    y = layer(x)[0]
    default = _core.active_isa()
    try:
        _core.select_isa("baseline")
        assert_close(layer(x)[0], y, np.float32, "baseline")
        assert layer._half_weights.panel_width == _core.step_panel_width()
    finally:
        _core.select_isa(default)


def _panels(layer):
    return [a for parts in layer._half_weights.layers for a in parts if a is not None]


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("weights_dtype", ["float16", "bfloat16"])
def test_the_panels_start_on_a_cache_line_and_a_copy_packs_its_own(weights_dtype, copier):
    """numpy aligns to 16 bytes; the panels start on a 64-byte line (an AVX-512 load of a panel
    row spanning two lines made a bfloat16 inference 1.35x slower on a Xeon). A copy of the
    layer leaves its 16-bit copy behind (numpy's copies of the panels keep only their
    allocator's alignment) and packs its own, on a line, with the same numbers."""
    layer = fusedrnn.LSTM(6, 40, seed=0, weights_dtype=weights_dtype).eval()
    x = np.random.default_rng(1).standard_normal((3, 2, 6)).astype(np.float32)
    y = layer(x)[0]
    for _ in range(8):  # packings of the same size, wherever numpy puts them
        layer.weights_dtype = weights_dtype  # packed again at the next forward
        np.testing.assert_array_equal(layer(x)[0], y)
        assert _panels(layer) and all(a.ctypes.data % 64 == 0 for a in _panels(layer))
    twin = copy.deepcopy(layer) if copier == "deepcopy" else pickle.loads(pickle.dumps(layer))
    assert twin._half_weights is None and layer._half_weights is not None
    np.testing.assert_array_equal(twin(x)[0], y)
    assert _panels(twin) and all(a.ctypes.data % 64 == 0 for a in _panels(twin))


def test_bad_weights_dtype():
    with pytest.raises(TypeError, match=r"needs a float32 layer.*float64"):
        fusedrnn.GRU(4, 8, weights_dtype="bfloat16", dtype=np.float64)
    with pytest.raises(ValueError, match="'float16' or 'bfloat16', got 'float8'"):
        fusedrnn.RNN(4, 8, weights_dtype="float8")
    layer = fusedrnn.LSTM(4, 8)
    with pytest.raises(TypeError, match="got type"):
        layer.weights_dtype = np.float32
    assert layer.weights_dtype is None
    layer.weights_dtype = np.float16
    assert layer.weights_dtype == "float16"
    assert repr(layer) == "LSTM(4, 8, weights_dtype='float16')"
