"""The positional encodings and the causal transformer block (`fusedrnn.transformer`), and the
activations they use: values against the published formulas, every gradient against central
differences in float64, cached token-by-token decoding against the full causal forward."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fusedrnn
from tests.helpers.cells import assert_close
from tests.helpers.numgrad import ATOL, RTOL, central_differences

DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["float64", "float32"]


def assert_gradient(analytic, numeric, name):
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=name)


# ---------------------------------------------------------------- positional encodings


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sinusoidal_values_are_the_formula(dtype):
    d_model, max_len = 6, 50
    pe = fusedrnn.SinusoidalPositionalEncoding(d_model, max_len, dtype=dtype)
    y = pe(np.zeros((max_len, d_model), dtype))
    for p in range(max_len):
        for i in range(d_model // 2):
            angle = p / 10000 ** (2 * i / d_model)
            assert y[p, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
            assert y[p, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)
    assert y.dtype == dtype


def test_sinusoidal_odd_width_and_offset():
    pe = fusedrnn.SinusoidalPositionalEncoding(5, 20, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((3, 7, 5))
    whole = pe(x)
    np.testing.assert_array_equal(pe(x[:, 4:6], offset=4), whole[:, 4:6])
    assert whole[0, 3, 4] - x[0, 3, 4] == pytest.approx(math.sin(3 / 10000 ** (4 / 5)))
    np.testing.assert_array_equal(pe.backward(np.ones_like(x[:, 4:6])), np.ones((3, 2, 5)))
    assert list(pe.parameters()) == []


@pytest.mark.parametrize("batch_shape", [(), (2,), (2, 3)], ids=["unbatched", "N", "N_M"])
def test_learned_gradients_by_central_differences(batch_shape):
    rng = np.random.default_rng(1)
    pe = fusedrnn.LearnedPositionalEncoding(8, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((*batch_shape, 4, 3))
    weights = rng.standard_normal(x.shape)

    def loss():
        return float(np.sum(weights * pe(x, offset=2)))

    loss()
    pe.zero_grad()
    dx = pe.backward(weights)
    assert_gradient(pe.weight.grad, central_differences(loss, pe.weight), "weight")
    assert_gradient(dx, central_differences(loss, x), "x")
    assert not pe.weight.grad[:2].any() and not pe.weight.grad[6:].any()


def test_positional_encoding_bad_input():
    pe = fusedrnn.SinusoidalPositionalEncoding(4, 10)
    with pytest.raises(ValueError, match="offset \\+ L must be <= max_len = 10"):
        pe(np.zeros((2, 4, 4), np.float32), offset=7)
    with pytest.raises(ValueError, match="x must have shape"):
        pe(np.zeros((2, 4, 5), np.float32))
    with pytest.raises(TypeError, match="dtype float32"):
        pe(np.zeros((2, 4, 4), np.float64))
    with pytest.raises(ValueError, match="offset must be >= 0"):
        pe(np.zeros((2, 4, 4), np.float32), offset=-1)
    learned = fusedrnn.LearnedPositionalEncoding(10, 4)
    with pytest.raises(RuntimeError, match="needs a training-mode forward"):
        learned.backward(np.zeros((1, 4), np.float32))
    assert [name for name, _ in learned.named_parameters()] == ["weight"]


# ---------------------------------------------------------------- activations


@pytest.mark.parametrize(
    "activation", [fusedrnn.GELU, fusedrnn.ReLU, fusedrnn.Tanh, fusedrnn.Sigmoid]
)
def test_activation_gradient(activation):
    x = np.random.default_rng(2).standard_normal((3, 5)) * 2
    module = activation()
    weights = np.random.default_rng(3).standard_normal(x.shape)
    module(x)
    dx = module.backward(weights)
    x[np.abs(x) < 1e-3] += 0.01  # keep ReLU's kink away from the differences
    module(x)
    dx = module.backward(weights)
    assert_gradient(dx, central_differences(lambda: np.sum(weights * module(x)), x), "x")


def test_gelu_is_the_normal_cdf_form():
    x = np.linspace(-4, 4, 17)
    want = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(fusedrnn.GELU()(x), want, rtol=1e-15, atol=1e-15)
    assert fusedrnn.GELU()(x.astype(np.float32)).dtype == np.float32
    np.testing.assert_array_equal(fusedrnn.ReLU()(x), np.maximum(x, 0))


def test_tanh_and_sigmoid_values_dtypes_and_extremes():
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 0.5, 30.0, 1000.0])
    np.testing.assert_allclose(fusedrnn.Tanh()(x), [math.tanh(v) for v in x], rtol=1e-15)
    want = [1 / (1 + math.exp(-v)) if v > -700 else 0.0 for v in x]
    np.testing.assert_allclose(fusedrnn.Sigmoid()(x), want, rtol=1e-15, atol=1e-300)
    for activation in (fusedrnn.Tanh(), fusedrnn.Sigmoid()):
        with np.errstate(all="raise"):  # no overflow warning at +-1000
            y = activation(x.astype(np.float32))
        assert y.dtype == np.float32 and np.isfinite(y).all()
        # the derivative is kept apart from the output a caller may overwrite
        y = activation(x)
        y[:] = 7.0
        dx = activation.backward(np.ones_like(x))
        assert np.isfinite(dx).all() and np.all(np.abs(dx) <= 1)


# ---------------------------------------------------------------- the block


def make_block(dtype=np.float64, **options):
    defaults = {"dim_feedforward": 12, "dropout": 0.0, "seed": 0, "dtype": dtype}
    block = fusedrnn.TransformerDecoderBlock(8, 2, **{**defaults, **options})
    rng = np.random.default_rng(4)
    for _, p in block.named_parameters():  # the LN gains and all biases away from 1 and 0
        p += 0.3 * rng.standard_normal(p.shape).astype(p.dtype)
    return block


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_block_gradients_by_central_differences(backend, activation, batch_first):
    block = make_block(activation=activation, batch_first=batch_first, backend=backend)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 8) if batch_first else (4, 2, 8))
    weights = rng.standard_normal(x.shape)

    def loss():
        return float(np.sum(weights * block(x)))

    loss()
    block.zero_grad()
    dx = block.backward(weights)
    assert_gradient(dx, central_differences(loss, x), "x")
    for name, p in block.named_parameters():
        assert_gradient(p.grad, central_differences(loss, p), name)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_cached_decoding_equals_the_causal_forward(dtype, batch_first):
    block = make_block(dtype, batch_first=batch_first).eval()
    x = np.random.default_rng(6).standard_normal((3, 7, 8)).astype(dtype)
    x_in = x if batch_first else np.ascontiguousarray(x.swapaxes(0, 1))
    whole = block(x_in)
    whole = whole if batch_first else whole.swapaxes(0, 1)
    cache = block.new_cache(3, 10)
    pieces = []
    for start, stop in [(0, 2), (2, 3), (3, 4), (4, 5), (5, 7)]:  # a prompt, then steps
        piece = (
            x[:, start:stop]
            if batch_first
            else np.ascontiguousarray(x[:, start:stop].swapaxes(0, 1))
        )
        out = block(piece, cache=cache)
        pieces.append(out if batch_first else out.swapaxes(0, 1))
        assert len(cache) == stop
    assert_close(np.concatenate(pieces, axis=1), whole, dtype, "cached")
    # the future does not leak: a changed last position leaves the earlier outputs
    changed = x.copy()
    changed[:, -1] += 1
    again = block(changed if batch_first else np.ascontiguousarray(changed.swapaxes(0, 1)))
    again = again if batch_first else again.swapaxes(0, 1)
    assert_close(again[:, :-1], whole[:, :-1], dtype, "past")
    assert not np.allclose(again[:, -1], whole[:, -1])


def test_block_dropout_is_on_in_training_only():
    block = make_block(dropout=0.5)
    plain = make_block(dropout=0.0)
    x = np.random.default_rng(7).standard_normal((2, 5, 8))
    assert not np.allclose(block(x), plain(x))
    np.testing.assert_array_equal(block.eval()(x), plain.eval()(x))
    block.train()
    y = block(x)
    dx = block.backward(np.ones_like(y))  # runs through every dropout's mask
    assert dx.shape == x.shape and np.isfinite(dx).all()


def test_block_backward_once_and_bad_input():
    block = make_block()
    x = np.zeros((2, 3, 8))
    with pytest.raises(RuntimeError, match="needs a training-mode forward"):
        block.backward(x)
    block(x)
    with pytest.raises(ValueError, match="d_output must have shape"):
        block.backward(np.zeros((2, 4, 8)))
    block.backward(x)
    with pytest.raises(RuntimeError, match="backward already ran"):
        block.backward(x)
    with pytest.raises(ValueError, match="activation must be 'relu' or 'gelu', got 'tanh'"):
        fusedrnn.TransformerDecoderBlock(8, 2, activation="tanh")
    with pytest.raises(ValueError, match="x must have shape"):
        block(np.zeros((2, 3, 7)))
    with pytest.raises(TypeError, match="dtype float64"):
        block(np.zeros((2, 3, 8), np.float32))
    block(x, cache=block.new_cache(2, 5))  # decoding: for inference, keeps nothing
    with pytest.raises(RuntimeError, match="inference and keeps nothing"):
        block.backward(x)


def test_block_retain_graph_adds_twice():
    block = make_block()
    x = np.random.default_rng(8).standard_normal((1, 4, 8))
    y = block(x)
    block.zero_grad()
    dx1 = block.backward(np.ones_like(y), retain_graph=True)
    once = {name: g.copy() for name, g in block.grads.items()}
    dx2 = block.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx1, dx2)
    for name, g in block.grads.items():
        np.testing.assert_allclose(g, 2 * once[name], rtol=1e-14, atol=1e-14, err_msg=name)
