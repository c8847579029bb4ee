"""fusedrnn.torch.scaled_dot_product_attention against torch.nn.functional's: outputs and
gradients for masks, causality, scale, GQA and broadcast batches, both dtypes; gradcheck in
float64, dropout included; dropout drawn from PyTorch's generator."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from tests.torch.cases import DTYPES, assert_close_all, ft, torch

F = torch.nn.functional
L, S, E, EV = 5, 6, 3, 4

OPTIONS = {
    "plain": {},
    "causal": {"is_causal": True},
    "bool-mask": {"attn_mask": "bool"},
    "float-mask": {"attn_mask": "float"},
    "scale": {"scale": 0.3},
    "gqa": {"enable_gqa": True},
}


def _inputs(dtype, gqa: bool, requires_grad: bool = True) -> list:
    torch.manual_seed(0)
    shapes = [(2, 4, L, E), (1, 2 if gqa else 4, S, E), (1, 2 if gqa else 4, S, EV)]
    return [torch.randn(s, dtype=dtype, requires_grad=requires_grad) for s in shapes]


def _options(name: str, dtype) -> dict:
    options = dict(OPTIONS[name])
    if options.get("attn_mask") == "bool":
        options["attn_mask"] = torch.rand(L, S, generator=torch.Generator().manual_seed(1)) > 0.3
        options["attn_mask"][:, 0] = True  # no row fully masked (PyTorch gives NaN there)
    elif options.get("attn_mask") == "float":
        options["attn_mask"] = torch.randn(L, S, dtype=dtype)
    return options


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPTIONS)
def test_equals_torchs_function(name, dtype):
    options = _options(name, dtype)
    results = []
    for function in (F.scaled_dot_product_attention, ft.scaled_dot_product_attention):
        q, k, v = _inputs(dtype, "enable_gqa" in options)
        out = function(q, k, v, **options)
        weights = torch.linspace(0.5, 1.5, out.numel(), dtype=dtype).view_as(out)
        results.append([out, *torch.autograd.grad((out * weights).sum(), [q, k, v])])
    assert_close_all(results[1], results[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode", "no_requires_grad"])
def test_without_gradients_equals_torchs_function(name, dtype, grad_mode):
    """No gradient wanted: the call runs without an autograd node (_ops.run_attention)."""
    options = _options(name, dtype)
    q, k, v = _inputs(dtype, "enable_gqa" in options, requires_grad=grad_mode != "no_requires_grad")
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    outputs = []
    for function in (F.scaled_dot_product_attention, ft.scaled_dot_product_attention):
        with context.get(grad_mode, torch.enable_grad)():
            outputs.append(function(q, k, v, **options))
    assert_close_all(outputs[1:], outputs[:1], dtype)
    assert not outputs[1].requires_grad


@pytest.mark.parametrize("name", ["causal", "float-mask", "gqa"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_gradcheck(name, dropout_p):
    options = _options(name, torch.float64)
    inputs = _inputs(torch.float64, "enable_gqa" in options)

    def function(q, k, v):
        torch.manual_seed(5)  # the same dropout draw on every call
        return ft.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, **options)

    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


def test_dropout_is_the_kernels_draw_from_a_seed_of_torchs_generator():
    q, k, v = _inputs(torch.float64, False, requires_grad=False)
    torch.manual_seed(11)
    out = ft.scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    torch.manual_seed(11)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    expected, _ = fusedrnn.functional.attention_forward(
        q.numpy(), k.numpy(), v.numpy(), dropout_p=0.4, seed=seed
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=0)
    without = ft.scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(out, without)


def test_a_fully_masked_row_gives_zeros_not_nan():
    q, k, v = _inputs(torch.float64, False)
    mask = torch.ones(L, S, dtype=torch.bool)
    mask[2] = False
    out = ft.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out[..., 2, :], torch.zeros_like(out[..., 2, :]))
    grads = torch.autograd.grad(out.sum(), [q, k, v])
    assert all(torch.isfinite(g).all() for g in grads)
