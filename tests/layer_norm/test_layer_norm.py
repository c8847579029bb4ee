"""`fusedrnn.LayerNorm` and its kernels: fused against the NumPy reference (both dtypes, every
instruction set, a team of threads), finite differences in float64, parity with
torch.nn.LayerNorm (state dict, outputs, gradients), and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional, reference
from tests.helpers.cells import assert_close
from tests.helpers.numgrad import ATOL, RTOL, central_differences

DTYPES = [np.float64, np.float32]
# (M, N): one value, odd widths around the vector widths, no rows, enough for a team
SHAPES = [(1, 1), (3, 5), (7, 33), (5, 64), (0, 4), (300, 520)]
AFFINE = ["none", "weight", "weight+bias"]


def rows_case(M, N, dtype, affine, seed=0):
    rng = np.random.default_rng(seed)
    x = (3 + 2 * rng.standard_normal((M, N))).astype(dtype)  # off-centre: the mean matters
    weight = None if affine == "none" else (1 + 0.5 * rng.standard_normal(N)).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype) if affine == "weight+bias" else None
    dy = rng.standard_normal((M, N)).astype(dtype)
    return x, weight, bias, dy


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "M{}N{}".format(*s))
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_fused_equals_reference(dtype, shape, affine, isa, threading_mode):
    x, weight, bias, dy = rows_case(*shape, dtype, affine)
    results = {}
    for name, backend in (("fused", functional), ("reference", reference)):
        y, mean, rstd = backend.layer_norm_forward(x, weight, bias, eps=1e-5)
        dx, grads = backend.layer_norm_backward(x, weight, mean, rstd, dy, bias=bias is not None)
        results[name] = {"y": y, "mean": mean, "rstd": rstd, "dx": dx, **grads}
    assert results["fused"].keys() == results["reference"].keys()
    for name, want in results["reference"].items():
        assert_close(results["fused"][name], want, dtype, name)


def test_backward_adds_into_grads():
    x, weight, bias, dy = rows_case(6, 9, np.float64, "weight+bias")
    _, mean, rstd = functional.layer_norm_forward(x, weight, bias)
    _, once = functional.layer_norm_backward(x, weight, mean, rstd, dy)
    grads = {name: g.copy() for name, g in once.items()}
    _, again = functional.layer_norm_backward(x, weight, mean, rstd, dy, grads=grads)
    assert again is grads
    for name in once:
        np.testing.assert_allclose(grads[name], 2 * once[name], rtol=1e-12, err_msg=name)


def test_inference_forward_saves_nothing():
    x, weight, bias, _ = rows_case(4, 8, np.float32, "weight+bias")
    y, mean, rstd = functional.layer_norm_forward(x, weight, bias, training=False)
    assert mean is None and rstd is None
    assert_close(y, reference.layer_norm_forward(x, weight, bias)[0], np.float32, "y")


@pytest.mark.parametrize("normalized_shape", [5, (2, 3)])
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_layer_finite_differences(backend, normalized_shape):
    norm = fusedrnn.LayerNorm(normalized_shape, eps=1e-3, dtype=np.float64, backend=backend)
    rng = np.random.default_rng(2)
    norm.weight[...] = 1 + 0.5 * rng.standard_normal(norm.weight.shape)
    norm.bias[...] = rng.standard_normal(norm.bias.shape)
    x = rng.standard_normal((2, 3, *norm.normalized_shape))
    dy = rng.standard_normal(x.shape)

    def loss():
        return np.sum(dy * norm.eval()(x))

    norm.train()
    norm(x)
    dx = norm.backward(dy)
    np.testing.assert_allclose(dx, central_differences(loss, x), rtol=RTOL, atol=ATOL)
    for name in ("weight", "bias"):
        numeric = central_differences(loss, getattr(norm, name))
        np.testing.assert_allclose(norm.grads[name], numeric, rtol=RTOL, atol=ATOL, err_msg=name)


def test_layer_api():
    norm = fusedrnn.LayerNorm((4, 6))
    assert norm.normalized_shape == (4, 6) and norm.eps == 1e-5
    assert [name for name, _ in norm.named_parameters()] == ["weight", "bias"]
    np.testing.assert_array_equal(norm.weight, np.ones((4, 6), np.float32))
    np.testing.assert_array_equal(norm.bias, np.zeros((4, 6), np.float32))
    assert repr(norm) == "LayerNorm((4, 6), eps=1e-05, elementwise_affine=True)"
    plain = fusedrnn.LayerNorm(8, elementwise_affine=False)
    assert plain.weight is None and plain.bias is None and not list(plain.parameters())
    no_bias = fusedrnn.LayerNorm(8, bias=False, dtype=np.float64)
    assert no_bias.bias is None and list(no_bias.state_dict()) == ["weight"]
    assert "bias=False" in repr(no_bias) and "dtype=np.float64" in repr(no_bias)
    y = no_bias(np.ones((2, 8)))
    no_bias.backward(np.ones_like(y))
    assert no_bias.weight.grad.shape == (8,)


def test_functional_layer_norm_matches_reference():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5))
    weight, bias = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    y = functional.layer_norm(x, (4, 5), weight, bias, eps=1e-4)
    want, _, _ = reference.layer_norm_forward(
        x.reshape(6, 20), weight.reshape(-1), bias.reshape(-1), eps=1e-4
    )
    assert_close(y, want.reshape(x.shape), np.float64, "y")


# ---------------------------------------------------------------- bad input


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="normalized_shape must be an int or a tuple"):
        fusedrnn.LayerNorm("4")
    with pytest.raises(ValueError, match="normalized_shape must have at least one axis"):
        fusedrnn.LayerNorm(())
    with pytest.raises(ValueError, match=r"normalized_shape\[1\] must be >= 1, got 0"):
        fusedrnn.LayerNorm((3, 0))
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got -1"):
        fusedrnn.LayerNorm(3, eps=-1)
    with pytest.raises(TypeError, match="eps must be a real number"):
        fusedrnn.LayerNorm(3, eps="small")
    norm = fusedrnn.LayerNorm((2, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2, 3\).*but has \(4, 3\)"):
        norm(np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        norm(np.zeros((4, 2, 3)))
    with pytest.raises(RuntimeError, match=r"LayerNorm\.backward needs a training-mode forward"):
        norm.backward(np.zeros((4, 2, 3), np.float32))
    norm(np.zeros((4, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"d_output must have shape \(4, 2, 3\)"):
        norm.backward(np.zeros((4, 3, 2), np.float32))


def test_bad_kernel_arguments_are_named():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"x must have 2 dimensions \(M, N\), but has 3"):
        functional.layer_norm_forward(np.zeros((1, 3, 4)))
    with pytest.raises(
        ValueError, match=r"weight must have shape \(N\) = \(4,\), but has shape \(5,\)"
    ):
        functional.layer_norm_forward(x, np.ones(5))
    with pytest.raises(TypeError, match="bias must have dtype float64 like x, got float32"):
        functional.layer_norm_forward(x, np.ones(4), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="x must have N >= 1"):
        functional.layer_norm_forward(np.zeros((3, 0)))
    _, mean, rstd = functional.layer_norm_forward(x, np.ones(4))
    with pytest.raises(ValueError, match=r"dy must have shape \(M, N\) = \(3, 4\)"):
        functional.layer_norm_backward(x, np.ones(4), mean, rstd, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"rstd must have shape \(M\) = \(3,\)"):
        functional.layer_norm_backward(x, np.ones(4), mean, rstd[:2], np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 5\)"):
        functional.layer_norm(x, 5)
