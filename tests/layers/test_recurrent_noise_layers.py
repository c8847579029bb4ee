"""The layers' zoneout and recurrent dropout (fusedrnn's options, not torch.nn's;
docs/layers.md): fused against reference layers with the same seed (training and eval,
directions, lengths, batch_first, truncated backpropagation), a seed per training forward that
its backward redraws the masks from, eval's expectation, and the options' checks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fusedrnn
from tests.helpers.cells import assert_close

LAYERS = [
    (fusedrnn.LSTM, {"zoneout": 0.3, "zoneout_cell": 0.2, "recurrent_dropout": 0.25}),
    (fusedrnn.LSTM, {"recurrent_dropout": 0.5, "peephole": True}),
    (fusedrnn.GRU, {"zoneout": 0.4, "recurrent_dropout": 0.3}),
    (fusedrnn.GRU, {"zoneout": 0.2, "reset_after": False}),
]


def pair(cls, kwargs, dtype, **more):
    """A fused and a reference layer with the same parameters and generator."""
    options = {"num_layers": 2, "dtype": dtype, "seed": 4, **kwargs, **more}
    fused = cls(6, 8, **options)
    ref = cls(6, 8, backend="reference", **options)
    return fused, ref


def forward_backward(layer, x, lengths=None, **backward):
    out, state = layer(x, lengths=lengths)
    d_out = np.random.default_rng(0).standard_normal(out.shape).astype(out.dtype)
    dx, _ = layer.backward(d_out, **backward)
    return out, state, dx, {name: p.grad.copy() for name, p in layer.named_parameters()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(("cls", "kwargs"), LAYERS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_fused_layer_equals_reference_layer(cls, kwargs, bidirectional, dtype):
    fused, ref = pair(cls, kwargs, dtype, bidirectional=bidirectional, batch_first=True)
    x = np.random.default_rng(1).standard_normal((5, 7, 6)).astype(dtype)
    lengths = np.array([7, 2, 5, 7, 1])
    for step in range(2):  # two training forwards: each its own seed, the same in both layers
        got = forward_backward(fused, x, lengths)
        want = forward_backward(ref, x, lengths)
        assert_close(got[0], want[0], dtype, f"output {step}")
        assert_close(got[2], want[2], dtype, f"dx {step}")
        for name, grad in want[3].items():
            assert_close(got[3][name], grad, dtype, name)
    fused.eval()
    ref.eval()
    assert_close(fused(x, lengths=lengths)[0], ref(x, lengths=lengths)[0], dtype, "eval")


def test_each_training_forward_draws_new_masks_and_backward_uses_its_own():
    lstm = fusedrnn.LSTM(4, 16, zoneout=0.5, recurrent_dropout=0.5, dtype=np.float64, seed=0)
    x = np.random.default_rng(2).standard_normal((6, 3, 4))
    first, _ = lstm(x)
    second, _ = lstm(x)
    assert np.mean(first != second) > 0.2  # new masks
    # backward of the second forward equals the functional backward with that forward's noise
    noise = lstm._saved.noise
    assert noise is not None and noise.training
    params = {name: np.asarray(p) for name, p in lstm.named_parameters()}
    y, _, _, saved = fusedrnn.functional.stack_forward("lstm", x, None, params, 1, noise=noise)
    np.testing.assert_array_equal(y, second)
    dy = np.ones_like(y)
    dx, _ = lstm.backward(dy)
    want = fusedrnn.functional.stack_backward("lstm", x, None, params, 1, y, saved, dy, noise=noise)
    np.testing.assert_array_equal(dx, want[0])
    # and the same seed gives the same layer, masks and all
    twin = fusedrnn.LSTM(4, 16, zoneout=0.5, recurrent_dropout=0.5, dtype=np.float64, seed=0)
    np.testing.assert_array_equal(twin(x)[0], first)


def test_eval_is_deterministic_and_without_recurrent_dropout():
    gru = fusedrnn.GRU(4, 8, zoneout=0.3, recurrent_dropout=0.6, dtype=np.float64, seed=0)
    plain = fusedrnn.GRU(4, 8, zoneout=0.3, dtype=np.float64, seed=0)
    gru.eval()
    plain.eval()
    x = np.random.default_rng(3).standard_normal((5, 2, 4))
    out, _ = gru(x)
    np.testing.assert_array_equal(gru(x)[0], out)
    np.testing.assert_array_equal(plain(x)[0], out)  # eval: recurrent dropout does nothing
    no_zoneout = fusedrnn.GRU(4, 8, dtype=np.float64, seed=0)
    no_zoneout.eval()
    assert np.abs(no_zoneout(x)[0] - out).max() > 1e-3  # eval: zoneout's expectation acts


@pytest.mark.parametrize("weights_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (fusedrnn.LSTM, {"zoneout": 0.3, "zoneout_cell": 0.2, "recurrent_dropout": 0.25}),
        (fusedrnn.GRU, {"zoneout": 0.4, "recurrent_dropout": 0.3, "bidirectional": True}),
    ],
    ids=["LSTM", "GRU"],
)
def test_16_bit_weights_with_zoneout(cls, kwargs, weights_dtype):
    """weights_dtype and zoneout together: eval multiplies with the 16-bit weights and applies
    zoneout's expectation (recurrent dropout does nothing), as the reference layer with the
    rounded weights does; training mode is the float32 layer's, masks and all."""
    fused, ref = pair(cls, kwargs, np.float32, weights_dtype=weights_dtype)
    x = np.random.default_rng(6).standard_normal((7, 3, 6)).astype(np.float32)
    lengths = np.array([7, 2, 5])
    float32_layer, _ = pair(cls, kwargs, np.float32)
    np.testing.assert_array_equal(fused(x)[0], float32_layer(x)[0])  # training: float32
    for layer in (fused, ref, float32_layer):
        layer.eval()
    expected = ref(x, lengths=lengths)[0]
    half = fused(x, lengths=lengths)[0]
    assert_close(half, expected, np.float32, "eval with 16-bit weights and zoneout")
    # the 16-bit weights act (not the float32 layer's numbers) ...
    assert np.abs(half - float32_layer(x, lengths=lengths)[0]).max() > 1e-6
    # ... and so does zoneout's expectation
    without_zoneout, _ = pair(
        cls,
        {"bidirectional": kwargs.get("bidirectional", False)},
        np.float32,
        weights_dtype=weights_dtype,
    )
    assert np.abs(without_zoneout.eval()(x, lengths=lengths)[0] - half).max() > 1e-3


def test_truncated_backward_of_a_layer_equals_the_reference_layer():
    fused, ref = pair(fusedrnn.LSTM, {"zoneout": 0.3, "recurrent_dropout": 0.3}, np.float64)
    x = np.random.default_rng(5).standard_normal((9, 3, 6))
    got = forward_backward(fused, x, truncate=4, truncate_stride=2)
    want = forward_backward(ref, x, truncate=4, truncate_stride=2)
    assert_close(got[2], want[2], np.float64, "dx")
    for name, grad in want[3].items():
        assert_close(got[3][name], grad, np.float64, name)


def test_options_show_in_repr_and_survive_pickling():
    lstm = fusedrnn.LSTM(3, 5, zoneout=0.1, zoneout_cell=0.2, recurrent_dropout=0.3)
    assert "zoneout=0.1, zoneout_cell=0.2, recurrent_dropout=0.3" in repr(lstm)
    copy = pickle.loads(pickle.dumps(lstm))
    assert (copy.zoneout, copy.zoneout_cell, copy.recurrent_dropout) == (0.1, 0.2, 0.3)
    assert "zoneout" not in repr(fusedrnn.GRU(3, 5))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: fusedrnn.LSTM(3, 4, zoneout=1.0), ValueError, "zoneout must be in \\[0, 1\\)"),
        (lambda: fusedrnn.LSTM(3, 4, zoneout_cell=-0.5), ValueError, "zoneout_cell"),
        (lambda: fusedrnn.GRU(3, 4, recurrent_dropout=2), ValueError, "recurrent_dropout"),
        (lambda: fusedrnn.LSTM(3, 4, zoneout="0.2"), TypeError, "zoneout must be a number"),
        (lambda: fusedrnn.GRU(3, 4, recurrent_dropout=None), TypeError, "recurrent_dropout"),
        (lambda: fusedrnn.LSTM(3, 4, proj_size=2, zoneout=0.1), ValueError, "proj_size"),
        (
            lambda: fusedrnn.GRU(3, 4, reset_after=False, recurrent_dropout=0.1),
            ValueError,
            "reset_after",
        ),
        (lambda: fusedrnn.GRU(3, 4, zoneout_cell=0.1), TypeError, "zoneout_cell"),
        (lambda: fusedrnn.RNN(3, 4, zoneout=0.1), TypeError, "zoneout"),
    ],
)
def test_bad_options_raise_naming_them(make, error, match):
    with pytest.raises(error, match=match):
        make()
