"""Input the kernels cannot or should not take: the documented fallback to PyTorch's own
implementation (one warning), or the error torch.nn raises, word for word; never a crash or a
wrong answer. (CUDA takes the same path as float16, unserved_reason; this machine has no GPU.)"""

from __future__ import annotations

import re
import warnings

import pytest

from tests.torch.cases import INPUT_SIZE, assert_close_all, flat, ft, grads_of, torch, twins

F = torch.nn.functional


def _fallback_warnings(record) -> list:
    return [w for w in record if "runs PyTorch's own implementation" in str(w.message)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["GRU", "LSTMCell"])
def test_other_dtypes_run_torchs_implementation_with_one_warning(name, dtype):
    reference, fused = twins(name, {}, dtype)
    x = torch.randn((5, 2, INPUT_SIZE) if name == "GRU" else (2, INPUT_SIZE)).to(dtype)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        results = [flat(fused(x)), flat(fused(x))]
    assert len(_fallback_warnings(record)) == 1
    assert str(dtype) in str(_fallback_warnings(record)[0].message)
    for result in results:
        for a, e in zip(result, flat(reference(x))):
            assert torch.equal(a, e)


def test_meta_tensors_give_shapes_without_a_warning():
    lstm = ft.LSTM(INPUT_SIZE, 4, num_layers=2, proj_size=2, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output, (h_n, c_n) = lstm(torch.empty(5, 3, INPUT_SIZE, device="meta"))
    assert output.device.type == "meta"
    assert (output.shape, h_n.shape, c_n.shape) == ((5, 3, 2), (2, 3, 2), (2, 3, 4))


def test_gru_reset_after_false_cannot_fall_back():
    gru = ft.GRU(INPUT_SIZE, 4, reset_after=False).half()
    with pytest.raises(ValueError, match=r"reset_after=False\) has no PyTorch implementation"):
        gru(torch.randn(5, 2, INPUT_SIZE).half())
    cell = ft.GRUCell(INPUT_SIZE, 4, reset_after=False).half()
    with pytest.raises(ValueError, match=r"reset_after=False\) has no PyTorch implementation"):
        cell(torch.randn(2, INPUT_SIZE).half())


@pytest.mark.parametrize(
    "make_x",
    [
        lambda: torch.randn(2, 5, INPUT_SIZE).transpose(0, 1),  # non-contiguous
        lambda: torch.randn(5, 1, INPUT_SIZE).expand(5, 2, INPUT_SIZE),  # overlapping (stride 0)
        lambda: torch.randn(5, 2, 2 * INPUT_SIZE)[..., ::2],  # strided
    ],
    ids=["transposed", "expanded", "strided"],
)
def test_non_contiguous_and_overlapping_inputs_give_torchs_numbers(make_x):
    reference, fused = twins("LSTM", {"num_layers": 2}, torch.float64)
    x = make_x().double().requires_grad_()
    h0 = torch.randn(2, 1, 4, dtype=torch.float64).expand(2, 2, 4).requires_grad_()
    c0 = torch.randn(2, 4, 2, dtype=torch.float64).transpose(1, 2).requires_grad_()
    results = []
    for module in (reference, fused):
        outputs = flat(module(x, (h0, c0)))
        results.append(outputs + grads_of(outputs, [x, h0, c0, *module.parameters()]))
    assert_close_all(results[1], results[0], torch.float64)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m(torch.randn(5, 2, INPUT_SIZE + 1)),  # wrong input_size
        lambda m: m(torch.randn(5, 2, INPUT_SIZE), torch.randn(1, 3, 4)),  # wrong batch of hx
        lambda m: m(torch.randn(5, 2, INPUT_SIZE), torch.randn(3, 4)),  # 2-D hx, 3-D input
        lambda m: m(torch.randn(5, 2, 1, INPUT_SIZE)),  # 4-D input
        lambda m: m(torch.randn(5, 2, INPUT_SIZE).double()),  # dtype of the input
    ],
    ids=["input_size", "hx-batch", "hx-dims", "input-dims", "dtype"],
)
def test_wrong_shapes_and_dtypes_raise_torch_nns_errors(call):
    reference, fused = twins("GRU", {}, torch.float32)
    with pytest.raises(Exception) as expected:  # noqa: PT011  (whatever torch.nn raises)
        call(reference)
    with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
        call(fused)


@pytest.mark.parametrize("needs", ["input", "hx", "parameters", "nothing"])
def test_any_combination_of_requires_grad(needs):
    reference, fused = twins("LSTM", {"bidirectional": True}, torch.float64)
    x0 = torch.randn(5, 2, INPUT_SIZE, dtype=torch.float64)
    hx0 = [torch.randn(2, 2, 4, dtype=torch.float64) for _ in "hc"]
    results = []
    for module in (reference, fused):
        x = x0.clone().requires_grad_(needs == "input")
        hx = tuple(s.clone().requires_grad_(needs == "hx") for s in hx0)
        for p in module.parameters():
            p.requires_grad_(needs == "parameters")
        outputs = flat(module(x, hx))
        leaves = {"input": [x], "hx": list(hx), "parameters": list(module.parameters())}
        if needs == "nothing":
            assert not any(o.requires_grad for o in outputs)
            results.append(outputs)
        else:
            results.append(outputs + grads_of(outputs, leaves[needs]))
    assert_close_all(results[1], results[0], torch.float64)


def test_no_grad_saves_nothing_and_matches():
    reference, fused = twins("RNN", {"num_layers": 2}, torch.float64)
    x = torch.randn(5, 2, INPUT_SIZE, dtype=torch.float64)
    with torch.no_grad():
        output = fused(x)[0]
    assert output.grad_fn is None
    torch.testing.assert_close(output, reference(x)[0], rtol=1e-10, atol=1e-12)


def test_attention_falls_back_for_float16_and_a_mask_that_requires_grad():
    q, k, v = (torch.randn(2, 3, 4, dtype=torch.float64) for _ in range(3))
    mask = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    out = ft.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    (grad,) = torch.autograd.grad(out.sum(), mask)  # PyTorch's own gradient of the mask
    assert grad.abs().sum() > 0
    half = [t.half() for t in (q, k, v)]
    assert torch.equal(
        ft.scaled_dot_product_attention(*half), F.scaled_dot_product_attention(*half)
    )
