"""ONNX's cell options (peepholes, clip, input_forget, every activation function) in the fused
layer stack against the NumPy reference stack, both dtypes, every compiled instruction set and
with the time loops on a team of two; the reference against central differences (float64); the
options with PyTorch's activations against PyTorch's cell; the layers' options and their checks."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import cell_options, functional, reference
from fusedrnn._cell_options import ACTIVATION_NAMES
from tests.helpers.cells import assert_close
from tests.helpers.numgrad import ATOL, RTOL, central_differences
from tests.kernels.test_stack_fused_vs_reference import make_params


def with_peepholes(params, layers, D, H, rng, dtype):
    """``params`` plus ``weight_peephole_l{k}{sfx}`` (3H,) for every layer and direction."""
    out = dict(params)
    for k in range(layers):
        for d in range(D):
            out[f"weight_peephole{fusedrnn._spec.layer_suffix(k, d)}"] = rng.uniform(
                -0.5, 0.5, 3 * H
            ).astype(dtype)
    return out


# (mode, cell_options arguments, peephole, gru reset_after, layers, bidirectional, lengths)
CASES = [
    ("lstm", {}, True, True, 2, True, [7, 3, 1, 7, 5]),
    ("lstm", {"clip": 0.7}, True, True, 1, False, None),
    ("lstm", {"input_forget": True}, False, True, 2, False, [2, 7, 7, 4, 1]),
    ("lstm", {"input_forget": True, "clip": 1.1}, True, True, 1, True, None),
    ("lstm", {"activations": ["HardSigmoid", "Elu", "Softsign"]}, True, True, 1, False, None),
    (
        "lstm",
        {"activations": ["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "LeakyRelu", "Softplus"]},
        False,
        True,
        1,
        True,
        [5, 7, 1, 2, 6],
    ),
    ("gru", {"clip": 0.5}, False, True, 2, True, [5, 7, 1, 2, 6]),
    ("gru", {"clip": 0.5}, False, False, 2, True, [7, 6, 5, 4, 3]),
    (
        "gru",
        {
            "activations": ["ScaledTanh", "Affine"],
            "activation_alpha": [0.8, 0.5],
            "activation_beta": [1.2, 0.1],
        },
        False,
        False,
        1,
        False,
        None,
    ),
    (
        "gru",
        {"activations": ["Softsign", "ThresholdedRelu"], "activation_alpha": [0.2]},
        False,
        True,
        1,
        False,
        None,
    ),
    ("rnn", {"clip": 0.4}, False, True, 2, True, [1, 7, 3, 3, 7]),
    ("rnn", {"activations": ["Elu"], "activation_alpha": [0.7]}, False, True, 2, False, None),
    (
        "rnn",
        {"activations": ["Softplus", "LeakyRelu"], "activation_alpha": [0.3]},
        False,
        True,
        1,
        True,
        None,
    ),
]


def run_stack(backend, mode, x, hx, params, layers, kw, seed=5):
    y, h_n, c_n, saved = backend.stack_forward(mode, x, hx, params, layers, **kw)
    rng = np.random.default_rng(seed)
    dy = rng.standard_normal(y.shape).astype(x.dtype)
    dh_n = rng.standard_normal(h_n.shape).astype(x.dtype)
    dc_n = None if c_n is None else rng.standard_normal(c_n.shape).astype(x.dtype)
    dx, dh0, dc0, grads = backend.stack_backward(
        mode, x, hx, params, layers, y, saved, dy, dh_n, dc_n, **kw
    )
    return dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, **grads)


def make_case(mode, options, peephole, reset_after, layers, bidirectional, lengths, dtype, seed=3):
    rng = np.random.default_rng(seed)
    T, B, I, H = 7, 5, 6, 9
    D = 2 if bidirectional else 1
    params = make_params(mode, I, H, layers, bidirectional, True, 0, rng, dtype)
    if peephole:
        params = with_peepholes(params, layers, D, H, rng, dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    hx = (h0, rng.standard_normal((layers * D, B, H)).astype(dtype)) if mode == "lstm" else h0
    kw = {
        "bidirectional": bidirectional,
        "lengths": None if lengths is None else np.array(lengths),
        "cell_options": cell_options(mode, D, peephole=peephole, **options),
    }
    if mode == "gru":
        kw["reset_after"] = reset_after
    return x, hx, params, kw


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    ("mode", "options", "peephole", "reset_after", "layers", "bidirectional", "lengths"), CASES
)
def test_options_fused_equal_reference(
    mode,
    options,
    peephole,
    reset_after,
    layers,
    bidirectional,
    lengths,
    dtype,
    isa,
    threading_mode,
):
    x, hx, params, kw = make_case(
        mode, options, peephole, reset_after, layers, bidirectional, lengths, dtype
    )
    assert kw["cell_options"] is not None
    fused = run_stack(functional, mode, x, hx, params, layers, kw)
    want = run_stack(reference, mode, x, hx, params, layers, kw)
    assert set(fused) == set(want)
    for key, value in want.items():
        if value is not None:
            assert_close(fused[key], value, dtype, key)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_every_activation_in_every_slot_fused_equals_reference(mode, name):
    slots = len(fusedrnn._cell_options.DEFAULT_ACTIVATIONS[mode])
    for slot in range(slots):
        acts = list(fusedrnn._cell_options.DEFAULT_ACTIVATIONS[mode])
        acts[slot] = name
        x, hx, params, kw = make_case(
            mode, {"activations": acts}, False, True, 1, False, None, np.float64, seed=slot
        )
        kw["cell_options"] = cell_options(mode, activations=acts, clip=2.5)
        fused = run_stack(functional, mode, x, hx, params, 1, kw)
        want = run_stack(reference, mode, x, hx, params, 1, kw)
        for key, value in want.items():
            if value is not None:
                assert_close(fused[key], value, np.float64, f"{name} in slot {slot}: {key}")


def test_options_with_pytorchs_functions_equal_pytorchs_cell():
    # a clip no pre-activation reaches: the options' pass computes PyTorch's cell
    for mode in ("lstm", "gru", "rnn"):
        x, hx, params, kw = make_case(mode, {}, False, True, 2, True, [7, 3, 1, 7, 5], np.float64)
        plain = run_stack(functional, mode, x, hx, params, 2, {**kw, "cell_options": None})
        kw["cell_options"] = cell_options(mode, 2, clip=1e6)
        with_options = run_stack(functional, mode, x, hx, params, 2, kw)
        for key, value in plain.items():
            if value is not None:
                assert_close(with_options[key], value, np.float64, f"{mode}: {key}")


def test_input_forget_leaves_the_forget_gate_unused():
    x, hx, params, kw = make_case(
        "lstm", {"input_forget": True}, True, True, 1, False, None, np.float64
    )
    out = run_stack(functional, "lstm", x, hx, params, 1, kw)
    H = 9
    np.testing.assert_array_equal(out["weight_ih_l0"][H : 2 * H], 0)
    np.testing.assert_array_equal(out["weight_hh_l0"][H : 2 * H], 0)
    np.testing.assert_array_equal(out["weight_peephole_l0"][H : 2 * H], 0)  # p_f
    assert np.abs(out["weight_ih_l0"][:H]).max() > 0
    # and changing the forget gate's weights changes nothing
    params["weight_ih_l0"][H : 2 * H] += 1.0
    again = run_stack(functional, "lstm", x, hx, params, 1, kw)
    np.testing.assert_array_equal(again["y"], out["y"])


def test_clip_cuts_the_gradient_where_it_clips():
    x, hx, params, kw = make_case("rnn", {"clip": 0.05}, False, True, 1, False, None, np.float64)
    kw["cell_options"] = cell_options("rnn", clip=0.05)
    y = functional.stack_forward("rnn", x, hx, params, 1, **kw)[0]
    assert np.abs(y).max() <= np.tanh(0.05) + 1e-15  # every output went through the clip
    out = run_stack(functional, "rnn", x, hx, params, 1, kw)
    want = run_stack(reference, "rnn", x, hx, params, 1, kw)
    assert_close(out["weight_ih_l0"], want["weight_ih_l0"], np.float64)


@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_truncated_backward_with_options(mode):
    x, hx, params, kw = make_case(
        mode, {"clip": 0.9}, mode == "lstm", False, 2, False, [7, 3, 1, 7, 5], np.float64
    )
    kw.update(truncate=3, truncate_stride=2)
    fwd = {k: v for k, v in kw.items() if not k.startswith("truncate")}
    outs = {}
    for name, backend in (("fused", functional), ("reference", reference)):
        y, _, _, saved = backend.stack_forward(mode, x, hx, params, 2, **fwd)
        dy = np.random.default_rng(1).standard_normal(y.shape)
        outs[name] = backend.stack_backward(mode, x, hx, params, 2, y, saved, dy, **kw)
    for got, want in zip(outs["fused"][:3], outs["reference"][:3]):
        if want is not None:
            assert_close(got, want, np.float64)
    for key, value in outs["reference"][3].items():
        assert_close(outs["fused"][3][key], value, np.float64, key)


# ------------------------------------------------------------ the reference's gradients

# (mode, cell_options arguments, peephole, gru reset_after)
GRADCHECK_CASES = [
    ("lstm", {"clip": 0.8, "activations": ["HardSigmoid", "Softsign", "Elu"]}, True, True),
    ("lstm", {"input_forget": True}, True, True),
    (
        "lstm",
        {
            "activations": ["Sigmoid", "ScaledTanh", "Softplus"],
            "activation_alpha": [1.3],
            "activation_beta": [0.7],
        },
        False,
        True,
    ),
    ("gru", {"clip": 0.6, "activations": ["Softsign", "LeakyRelu"]}, False, True),
    ("gru", {"clip": 0.6, "activations": ["HardSigmoid", "Elu"]}, False, False),
    (
        "rnn",
        {
            "clip": 0.5,
            "activations": ["Affine"],
            "activation_alpha": [0.6],
            "activation_beta": [0.2],
        },
        False,
        True,
    ),
    ("rnn", {"activations": ["Elu"]}, False, True),
]


@pytest.mark.parametrize(("mode", "options", "peephole", "reset_after"), GRADCHECK_CASES)
def test_reference_options_against_central_differences(mode, options, peephole, reset_after):
    rng = np.random.default_rng(11)
    T, B, I, H = 3, 2, 3, 2
    params = make_params(mode, I, H, 1, True, True, 0, rng, np.float64)
    if peephole:
        params = with_peepholes(params, 1, 2, H, rng, np.float64)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((2, B, H)) * 0.5
    c0 = rng.standard_normal((2, B, H)) * 0.5
    kw = {
        "bidirectional": True,
        "lengths": np.array([3, 2]),
        "cell_options": cell_options(mode, 2, peephole=peephole, **options),
    }
    if mode == "gru":
        kw["reset_after"] = reset_after
    weights = {
        k: rng.standard_normal(s)
        for k, s in (("y", (T, B, 2 * H)), ("h", (2, B, H)), ("c", (2, B, H)))
    }

    def hx():
        return (h0, c0) if mode == "lstm" else h0

    def loss():
        y, h_n, c_n, _ = reference.stack_forward(mode, x, hx(), params, 1, training=False, **kw)
        total = (y * weights["y"]).sum() + (h_n * weights["h"]).sum()
        return total + (0 if c_n is None else (c_n * weights["c"]).sum())

    y, _, c_n, saved = reference.stack_forward(mode, x, hx(), params, 1, **kw)
    dx, dh0, dc0, grads = reference.stack_backward(
        mode,
        x,
        hx(),
        params,
        1,
        y,
        saved,
        weights["y"],
        weights["h"],
        None if c_n is None else weights["c"],
        **kw,
    )
    checks = {"x": (x, dx), "h0": (h0, dh0), **{k: (params[k], grads[k]) for k in params}}
    if mode == "lstm":
        checks["c0"] = (c0, dc0)
    for name, (array, analytic) in checks.items():
        numeric = central_differences(loss, array)
        np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=name)


# ------------------------------------------------------------ the layers


def test_lstm_layer_peephole_parameters_and_training():
    lstm = fusedrnn.LSTM(
        4, 5, num_layers=2, bidirectional=True, peephole=True, seed=0, dtype=np.float64
    )
    names = list(lstm.state_dict())
    assert "weight_peephole_l0" in names and "weight_peephole_l1_reverse" in names
    assert lstm.weight_peephole_l1.shape == (15,)
    assert names.index("weight_peephole_l0") == names.index("bias_hh_l0") + 1
    assert "peephole=True" in repr(lstm)
    twin = fusedrnn.LSTM(
        4,
        5,
        num_layers=2,
        bidirectional=True,
        peephole=True,
        seed=0,
        dtype=np.float64,
        backend="reference",
    )
    x = np.random.default_rng(0).standard_normal((6, 3, 4))
    for layer in (lstm, twin):
        out, _ = layer(x)
        layer.backward(np.ones_like(out))
    for name, p in lstm.named_parameters():
        assert_close(p.grad, dict(twin.named_parameters())[name].grad, np.float64, name)
    assert np.abs(lstm.weight_peephole_l0.grad).max() > 0
    # without the option, the layer is PyTorch's, with PyTorch's names
    plain = fusedrnn.LSTM(4, 5, seed=0)
    assert not any("peephole" in n for n in plain.state_dict())


@pytest.mark.parametrize(
    ("layer", "kwargs"),
    [
        (fusedrnn.GRU, {"activations": ["Relu", "Tanh"], "clip": 3.0}),
        (fusedrnn.RNN, {"activations": ["Softsign"]}),
        (fusedrnn.LSTM, {"input_forget": True, "clip": 2.0}),
    ],
)
def test_layers_with_options_fused_equal_reference(layer, kwargs):
    args = dict(num_layers=2, bidirectional=True, seed=1, dtype=np.float64, **kwargs)
    fused, twin = layer(3, 4, **args), layer(3, 4, backend="reference", **args)
    x = np.random.default_rng(2).standard_normal((5, 2, 3))
    lengths = np.array([5, 3])
    (y, _), (y_ref, _) = fused(x, lengths=lengths), twin(x, lengths=lengths)
    assert_close(y, y_ref, np.float64)
    dx, _ = fused.backward(np.ones_like(y))
    dx_ref, _ = twin.backward(np.ones_like(y))
    assert_close(dx, dx_ref, np.float64)
    for key in kwargs:
        assert f"{key}=" in repr(fused)


@pytest.mark.parametrize(
    ("layer", "kwargs", "message"),
    [
        (fusedrnn.LSTM, {"activations": ["Sigmoid", "Tanh", "Cube"]}, "activations"),
        (fusedrnn.LSTM, {"activations": ["Sigmoid", "Tanh"]}, "3 function"),
        (fusedrnn.GRU, {"clip": 0.0}, "clip"),
        (fusedrnn.GRU, {"clip": -1.0}, "clip"),
        (fusedrnn.RNN, {"activation_alpha": [0.1]}, "need activations"),
    ],
)
def test_bad_options_name_the_argument(layer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        layer(3, 4, **kwargs)


def test_input_forget_and_peephole_are_lstm_only():
    with pytest.raises(ValueError, match="input_forget"):
        cell_options("gru", input_forget=True)
    with pytest.raises(ValueError, match="peephole"):
        cell_options("rnn", peephole=True)
    rng = np.random.default_rng(0)
    params = make_params("gru", 3, 2, 1, False, True, 0, rng, np.float64)
    params["weight_peephole_l0"] = np.zeros(6)
    x = np.zeros((2, 1, 3))
    with pytest.raises(ValueError, match="only an LSTM has peepholes"):
        functional.stack_forward("gru", x, None, params, 1)
    with pytest.raises(ValueError, match="only an LSTM has peepholes"):
        reference.stack_forward("gru", x, None, params, 1)
    with pytest.raises(TypeError, match="cell_options"):
        functional.stack_forward(
            "gru",
            x,
            None,
            {k: v for k, v in params.items() if "peephole" not in k},
            1,
            cell_options={"clip": 1.0},
        )


def test_default_layers_take_pytorchs_path():
    assert cell_options("lstm") is None
    assert cell_options("rnn", nonlinearity="relu") is None
    assert cell_options("gru", 2, activations=["sigmoid", "TANH"]) is None  # names: any case
    assert cell_options("rnn", activations=["Relu"]) is not None  # not the tanh default
    assert fusedrnn.LSTM(2, 3)._cell_options is None


def test_a_layer_with_options_saves_and_loads(tmp_path):
    lstm = fusedrnn.LSTM(3, 4, peephole=True, clip=1.5, activations=["HardSigmoid", "Elu", "Tanh"])
    path = tmp_path / "lstm.pkl"
    fusedrnn.save(lstm, path)
    again = fusedrnn.load(path)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(again(x)[0], lstm(x)[0])
    assert repr(again) == repr(lstm)
