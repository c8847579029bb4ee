"""fusedrnn's attention against PyTorch: torch.nn.functional.scaled_dot_product_attention and
torch.nn.MultiheadAttention, outputs and every gradient (parameters too). Skipped without torch."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from tests.helpers.attention_cases import make_qkv
from tests.helpers.cells import assert_close

torch = pytest.importorskip("torch")
F = torch.nn.functional
# One torch thread: otherwise torch's OpenMP workers, spinning between its calls, take the cores
# from fusedrnn's team (two OpenMP runtimes in one process), and tiny tests take 100x longer.
torch.set_num_threads(1)

DTYPES = [np.float64, np.float32]
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def torch_sdpa(q, k, v, d_out, mask=None, **options):
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    tmask = None if mask is None else torch.tensor(mask)
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, **options)
    out.backward(torch.tensor(d_out))
    return [x.detach().numpy() for x in (out, tq.grad, tk.grad, tv.grad)]


def fused_sdpa(q, k, v, d_out, mask=None, **options):
    sdpa = fusedrnn.ScaledDotProductAttention()
    out = sdpa(q, k, v, mask, **options)
    return [out, *sdpa.backward(d_out)]


# name -> (batch, Hq, Hkv, L, S, E, Ev, mask kind, options)
CASES = {
    "plain": ((2,), 3, 3, 37, 41, 16, 8, None, {}),
    "causal_L_lt_S": ((2,), 2, 2, 13, 29, 8, 5, None, {"is_causal": True}),
    "causal_L_gt_S": ((2,), 2, 2, 29, 13, 8, 5, None, {"is_causal": True}),
    "causal_long": ((1,), 2, 2, 300, 300, 64, 64, None, {"is_causal": True}),
    "gqa": ((2,), 6, 2, 17, 23, 8, 8, None, {"enable_gqa": True}),
    "bool_mask": ((2,), 2, 2, 19, 27, 8, 5, "bool", {}),
    "float_mask": ((2,), 2, 2, 19, 27, 8, 5, "float", {}),
    "key_padding": ((3,), 2, 2, 19, 27, 8, 5, "keys", {}),
    "scale": ((2,), 2, 2, 11, 9, 8, 5, None, {"scale": 0.05}),
    "batch_rank0": ((), 3, 3, 15, 17, 8, 5, "bool", {}),
    "batch_rank2": ((2, 3), 2, 2, 15, 17, 8, 5, "float", {}),
}


def make_mask(kind, batch, Hq, L, S, dtype):
    rng = np.random.default_rng(1)
    if kind == "bool":
        return rng.random((L, S)) > 0.3
    if kind == "float":
        m = rng.standard_normal((*batch, Hq, L, S)).astype(dtype)
        m[..., 0, :3] = -np.inf
        return m
    if kind == "keys":
        m = np.ones((*batch, 1, 1, S), bool)
        m[0, ..., S - 4 :] = False
        return m
    return None


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_sdpa_equals_torch(case, dtype):
    batch, Hq, Hkv, L, S, E, Ev, mask_kind, options = CASES[case]
    q, k, v, d_out = make_qkv(batch, Hq, Hkv, L, S, E, Ev, dtype=dtype, seed=2)
    mask = make_mask(mask_kind, batch, Hq, L, S, dtype)
    ours = fused_sdpa(q, k, v, d_out, mask, **options)
    theirs = torch_sdpa(q, k, v, d_out, mask, **options)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
        assert_close(a, b, dtype, name)


def test_sdpa_no_head_axis_equals_torch():
    q, k, v, d_out = make_qkv(L=7, S=9, E=4, Ev=3, no_head_axis=True)
    for a, b in zip(
        fused_sdpa(q, k, v, d_out, is_causal=True), torch_sdpa(q, k, v, d_out, is_causal=True)
    ):
        assert_close(a, b, np.float64)


def test_sdpa_mask_and_causal_as_torch_cpu_flash_kernel():
    """Both apply, as in PyTorch's CPU flash kernel (float32; its math kernel refuses this)."""
    q, k, v, d_out = make_qkv((2,), 2, 2, 17, 17, 8, 8, dtype=np.float32)
    mask = np.random.default_rng(0).random((17, 17)) > 0.3
    mask[:, 0] = True
    try:
        theirs = torch_sdpa(q, k, v, d_out, mask, is_causal=True)
    except RuntimeError:
        pytest.skip("this torch refuses attn_mask with is_causal")
    for a, b in zip(fused_sdpa(q, k, v, d_out, mask, is_causal=True), theirs):
        assert_close(a, b, np.float32)


def test_fully_masked_rows_against_torch():
    """Zeros and zero gradients; PyTorch 2.5+ does the same (older ones gave NaN)."""
    q, k, v, d_out = make_qkv((2,), 2, 2, 5, 6, 4, 3, dtype=np.float32)
    mask = np.ones((5, 6), bool)
    mask[2] = False
    ours = fused_sdpa(q, k, v, d_out, mask)
    assert np.all(ours[0][..., 2, :] == 0) and np.all(ours[1][..., 2, :] == 0)
    theirs = torch_sdpa(q, k, v, d_out, mask)
    if np.isnan(theirs[0]).any():
        pytest.skip("this torch gives NaN for fully masked rows")
    for a, b in zip(ours, theirs):
        assert_close(a, b, np.float32)


# ---------------------------------------------------------------- MultiheadAttention


MHA_CASES = {
    "self_time_major": {"batch_first": False},
    "batch_first": {"batch_first": True},
    "kdim_vdim": {"kdim": 6, "vdim": 10, "batch_first": True},
    "no_bias": {"bias": False},
    "unbatched": {"unbatched": True},
}
MASKS = {
    "none": {},
    "key_padding": {"key_padding_mask": "bool"},
    "key_padding_float": {"key_padding_mask": "float"},
    "attn_bool": {"attn_mask": "bool"},
    "attn_float_per_head": {"attn_mask": "float3d"},
    "both": {"key_padding_mask": "bool", "attn_mask": "bool"},
    "both_mixed": {"key_padding_mask": "bool", "attn_mask": "float"},
    "causal": {"is_causal": True},
}


def mha_inputs(spec, masks, N, L, S, E, H, dtype):
    rng = np.random.default_rng(3)
    kd, vd = spec.get("kdim", E), spec.get("vdim", E)
    unbatched = spec.get("unbatched", False)

    def shape(T, d):
        if unbatched:
            return (T, d)
        return (N, T, d) if spec.get("batch_first") else (T, N, d)

    q, k, v = (
        rng.standard_normal(shape(T, d)).astype(dtype) for T, d in ((L, E), (S, kd), (S, vd))
    )
    kwargs = {}
    n = 1 if unbatched else N
    if masks.get("key_padding_mask") == "bool":
        m = np.zeros((n, S), bool)
        m[0, S - 2 :] = True
        kwargs["key_padding_mask"] = m[0] if unbatched else m
    elif masks.get("key_padding_mask") == "float":
        m = rng.standard_normal((n, S)).astype(dtype)
        kwargs["key_padding_mask"] = m[0] if unbatched else m
    if masks.get("attn_mask") == "bool":
        m = rng.random((L, S)) > 0.7
        m[:, 0] = False
        kwargs["attn_mask"] = m
    elif masks.get("attn_mask") == "float":
        kwargs["attn_mask"] = rng.standard_normal((L, S)).astype(dtype)
    elif masks.get("attn_mask") == "float3d":
        kwargs["attn_mask"] = rng.standard_normal((n * H, L, S)).astype(dtype)
    if masks.get("is_causal"):
        kwargs["is_causal"] = True
    return q, k, v, kwargs


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("case", MHA_CASES)
def test_multihead_attention_equals_torch(case, masks, dtype):
    spec = MHA_CASES[case]
    N, L, S, E, H = 3, 5, 7, 16, 4
    options = {k: v for k, v in spec.items() if k != "unbatched"}
    theirs = torch.nn.MultiheadAttention(E, H, dtype=TORCH_DTYPE[dtype], **options)
    ours = fusedrnn.MultiheadAttention(E, H, dtype=dtype, **options)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    q, k, v, kwargs = mha_inputs(spec, MASKS[masks], N, L, S, E, H, dtype)
    torch_kwargs = {name: torch.tensor(m) for name, m in kwargs.items() if name != "is_causal"}
    if kwargs.get("is_causal"):  # torch's is_causal is a hint that needs the mask itself
        torch_kwargs["attn_mask"] = torch.triu(torch.ones(L, S, dtype=torch.bool), 1)
        torch_kwargs["is_causal"] = True
    for average in (True, False):
        tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
        out_t, w_t = theirs(
            tq, tk, tv, need_weights=True, average_attn_weights=average, **torch_kwargs
        )
        out, w = ours(q, k, v, need_weights=True, average_attn_weights=average, **kwargs)
        assert_close(out, out_t.detach().numpy(), dtype, "output")
        assert_close(w, w_t.detach().numpy(), dtype, "weights")
    d_out = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
    out_t.backward(torch.tensor(d_out))
    ours.zero_grad()
    grads = ours.backward(d_out)
    for name, g, t in zip(("query", "key", "value"), grads, (tq, tk, tv)):
        assert_close(g, t.grad.numpy(), dtype, "d_" + name)
    for name, p in theirs.named_parameters():
        assert_close(ours.grads[name], p.grad.numpy(), dtype, name)


def test_multihead_attention_without_weights_matches_and_returns_none():
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    ours = fusedrnn.MultiheadAttention(8, 2, batch_first=True)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 6, 8)).astype(np.float32)
    out, weights = ours(x, x, x)
    assert weights is None
    out_t, _ = theirs(torch.tensor(x), torch.tensor(x), torch.tensor(x), need_weights=False)
    assert_close(out, out_t.detach().numpy(), np.float32)


def test_bottom_right_causal_equals_torch_causal_lower_right():
    """causal_alignment="bottom_right" is torch's causal_lower_right bias (and ONNX's is_causal
    for L != S): outputs and gradients, L < S as when decoding after a prefix."""
    from torch.nn.attention.bias import causal_lower_right

    q, k, v, d_out = make_qkv((2,), 3, 3, 7, 19, 8, 5, seed=4)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=causal_lower_right(7, 19))
    out.backward(torch.tensor(d_out))
    expected = [x.detach().numpy() for x in (out, tq.grad, tk.grad, tv.grad)]
    got = fused_sdpa(q, k, v, d_out, is_causal=True, causal_alignment="bottom_right")
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        assert_close(a, b, np.float64, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_window_softcap_and_key_lengths_equal_torch_autograd_of_the_formula(dtype):
    """Sliding window, soft-cap and key lengths against torch's autograd of the written formula
    (Gemma 2's: scale, softcap * tanh(s / softcap), then the mask) on a boolean mask."""
    L, S, window, softcap, lengths = 13, 30, 5, 2.5, np.array([30, 17])
    q, k, v, d_out = (x.astype(dtype) for x in make_qkv((2,), 4, 2, L, S, 8, 6, seed=5))
    i, j = np.arange(L)[:, None], np.arange(S)[None, :]
    position = i + (lengths - L)[:, None, None]  # bottom-right
    visible = (j <= position) & (position - j < window) & (j < lengths[:, None, None])
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    tk_rep, tv_rep = (x.repeat_interleave(2, dim=1) for x in (tk, tv))
    s = (tq @ tk_rep.transpose(-1, -2)) / np.sqrt(8)
    s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~torch.tensor(visible)[:, None], -torch.inf)
    out = torch.softmax(s, dim=-1) @ tv_rep
    out.backward(torch.tensor(d_out))
    expected = [x.detach().numpy() for x in (out, tq.grad, tk.grad, tv.grad)]
    got = fused_sdpa(
        q,
        k,
        v,
        d_out,
        is_causal=True,
        causal_alignment="bottom_right",
        window=window,
        softcap=softcap,
        key_lengths=lengths,
        enable_gqa=True,
    )
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        assert_close(a, b, dtype, name)
