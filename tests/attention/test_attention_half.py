"""16-bit attention inputs: float16 arrays, bfloat16 as uint16 bits with dtype="bfloat16" (and
ml_dtypes.bfloat16 arrays when ml_dtypes is installed). The fused forward converts the tiles and
computes in float32; it is checked against the reference (float32 on the widened inputs, output
rounded), against float64 truth, and its conversions bit for bit; backward likewise."""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import functional, reference
from fusedrnn._attention_args import float32_to_half, half_to_float32
from tests.helpers.attention_cases import make_qkv

# the spacing of 16-bit values relative to their magnitude: one unit in the last place
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def as_half(x, half):
    """float64 values rounded to the 16-bit type: (the user's array, its value as float64)."""
    bits = float32_to_half(x.astype(np.float32), half)
    user = bits.view(np.float16) if half == "float16" else bits
    return user, half_to_float32(bits, half).astype(np.float64)


def to64(x, half):
    bits = x.view(np.uint16)
    return half_to_float32(bits, half).astype(np.float64)


def dtype_arg(half):
    return {"dtype": "bfloat16"} if half == "bfloat16" else {}


def assert_within_ulps(actual, desired, half, ulps, name):
    scale = max(1.0, float(np.max(np.abs(desired))))
    np.testing.assert_allclose(actual, desired, rtol=0, atol=ulps * EPS[half] * scale, err_msg=name)


CASES = {
    "plain": ((2,), 2, 2, 37, 41, 16, 8, {}),
    "causal_gqa": ((2,), 4, 2, 70, 70, 32, 16, {"is_causal": True, "enable_gqa": True}),
    "window_softcap_lengths": (
        (2,),
        2,
        2,
        33,
        50,
        8,
        8,
        {
            "is_causal": True,
            "causal_alignment": "bottom_right",
            "window": 9,
            "softcap": 2.0,
            "key_lengths": np.array([50, 21]),
        },
    ),
}


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES)
def test_half_forward_and_backward_equal_the_reference(case, half):
    batch, Hq, Hkv, L, S, E, Ev, options = CASES[case]
    arrays = make_qkv(batch, Hq, Hkv, L, S, E, Ev, seed=len(case))
    (q, k, v, d_out), (q64, k64, v64, _d64) = zip(*(as_half(x, half) for x in arrays))
    options = {**options, **dtype_arg(half)}
    out, lse = functional.attention_forward(q, k, v, **options)
    ref_out, ref_lse = reference.attention_forward(q, k, v, **options)
    assert out.dtype == q.dtype and out.shape == ref_out.shape and lse.dtype == np.float32
    # both round a float32 result: at most one unit apart
    assert_within_ulps(to64(out, half), to64(ref_out, half), half, 1, "out")
    finite = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[finite], ref_lse[finite], rtol=1e-5, atol=1e-5)
    # against float64 truth on the same (rounded) inputs: the rounding of the output, no more
    exact_options = {name: value for name, value in options.items() if name != "dtype"}
    exact, _ = reference.attention_forward(q64, k64, v64, **exact_options)
    assert_within_ulps(to64(out, half), exact, half, 1.01, "out against float64")
    grads = functional.attention_backward(q, k, v, out, lse, d_out, **options)
    ref_grads = reference.attention_backward(q, k, v, ref_out, ref_lse, d_out, **options)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.dtype == q.dtype, name
        assert_within_ulps(to64(g, half), to64(r, half), half, 2, name)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_the_kernels_conversions_are_exact_and_round_to_nearest_even(half):
    """One key (p = 1): out is v read and written back, for all 65536 bit patterns (NaN stays
    NaN); two equal keys (p = 1/2 each): out is the mean of two 16-bit values, exact in float32,
    rounded to nearest even like numpy's float16 cast (and the bfloat16 rule written down)."""
    bits = np.arange(2**16, dtype=np.uint16)
    user = bits.view(np.float16) if half == "float16" else bits
    q = np.zeros((1, 1, 1), user.dtype)  # (H, L, E)
    k = np.zeros((1, 1, 1), user.dtype)
    out, _ = functional.attention_forward(q, k, user.reshape(1, 1, -1), **dtype_arg(half))
    values = half_to_float32(bits, half)
    nan = np.isnan(values)
    # (values, not bits: -0 comes back +0, the sum 0 + 1 * -0 being +0)
    read_back = half_to_float32(out.view(np.uint16).ravel(), half)
    np.testing.assert_array_equal(read_back[~nan], values[~nan])
    assert np.all(np.isnan(read_back[nan]))
    finite = bits[np.isfinite(values)]
    rng = np.random.default_rng(0)
    a, b = rng.choice(finite, 20000), rng.choice(finite, 20000)
    v = np.stack([a, b]).view(user.dtype).reshape(1, 2, -1)
    out, _ = functional.attention_forward(
        np.zeros((1, 1, 1), user.dtype), np.zeros((1, 2, 1), user.dtype), v, **dtype_arg(half)
    )
    mean = (half_to_float32(a, half) + half_to_float32(b, half)) * np.float32(0.5)
    np.testing.assert_array_equal(out.view(np.uint16).ravel(), float32_to_half(mean, half))
    if half == "float16":
        np.testing.assert_array_equal(
            float32_to_half(mean, half), mean.astype(np.float16).view(np.uint16)
        )


def test_ml_dtypes_bfloat16_arrays():
    """ml_dtypes.bfloat16 in, bfloat16 out: the numbers of the uint16 route."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    q, k, v, d_out = make_qkv((2,), 2, 2, 9, 11, 8, 4, seed=3)
    bf = [x.astype(ml_dtypes.bfloat16) for x in (q, k, v, d_out)]
    out, lse = functional.attention_forward(*bf[:3], is_causal=True)
    assert out.dtype == ml_dtypes.bfloat16
    bits = [x.view(np.uint16) for x in bf]
    out_bits, _lse_bits = functional.attention_forward(*bits[:3], is_causal=True, dtype="bfloat16")
    np.testing.assert_array_equal(out.view(np.uint16), out_bits)
    # the bfloat16 rounding written down in float32_to_half is ml_dtypes' cast
    x = np.random.default_rng(1).standard_normal(100000).astype(np.float32) * 1e3
    np.testing.assert_array_equal(
        float32_to_half(x, "bfloat16"), x.astype(ml_dtypes.bfloat16).view(np.uint16)
    )
    grads = functional.attention_backward(*bf[:3], out, lse, bf[3], is_causal=True)
    assert all(g.dtype == ml_dtypes.bfloat16 for g in grads)


def test_half_input_errors():
    q = np.zeros((1, 2, 4), np.float16)
    with pytest.raises(TypeError, match="k must have dtype float16 like q"):
        functional.attention_forward(q, q.astype(np.float32), q)
    with pytest.raises(TypeError, match="they must be uint16 arrays, but q is float16"):
        functional.attention_forward(q, q, q, dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype must be 'float16' or 'bfloat16'"):
        functional.attention_forward(q.view(np.uint16), q, q, dtype="half")
    with pytest.raises(TypeError, match=r"attn_mask must have dtype bool .* or float32"):
        functional.attention_forward(q, q, q, attn_mask=np.zeros((2, 2), np.float16))
