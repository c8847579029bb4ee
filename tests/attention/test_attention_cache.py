"""Incremental decoding with a KVCache: token-by-token cached decoding equals the full causal
forward (functional and MultiheadAttention, both backends, GQA, masks), the cache's unused tail
is never read, and overflow, misuse and backward after a cached forward are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import scaled_dot_product_attention as sdpa
from tests.helpers.attention_cases import make_qkv
from tests.helpers.cells import assert_close

DTYPES = [np.float64, np.float32]
BACKENDS = ["fused", "reference"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_cached_decoding_equals_the_full_causal_forward(dtype, backend):
    """A prefill of 5 positions, then one token at a time: every step's output is the full
    causal forward's row for that position (GQA: 4 query heads on 2 kv heads)."""
    T = 12
    q, k, v, _ = (x.astype(dtype) for x in make_qkv((2,), 4, 2, T, T, 8, 6, seed=1))
    full = sdpa(q, k, v, is_causal=True, enable_gqa=True, backend=backend)
    cache = fusedrnn.KVCache(2, 2, max_len=16, head_dim=8, value_dim=6, dtype=dtype)
    steps = [slice(0, 5)] + [slice(t, t + 1) for t in range(5, T)]
    for span in steps:
        out = sdpa(
            q[:, :, span],
            k[:, :, span],
            v[:, :, span],
            is_causal=True,
            enable_gqa=True,
            cache=cache,
            backend=backend,
        )
        assert_close(out, full[:, :, span], dtype, f"positions {span}")
    assert len(cache) == T and cache.length == T
    np.testing.assert_array_equal(cache.keys[:, :, :T], k)


def test_the_unused_tail_of_the_cache_is_never_read():
    """NaN past the stored positions (and past key_lengths) leaves the fused output finite: the
    kernel skips those keys instead of masking them after reading."""
    q, k, v, _ = make_qkv((2,), 2, 2, 1, 40, 8, 4, seed=2)
    cache = fusedrnn.KVCache(2, 2, 300, 8, 4, dtype=np.float64)
    cache.keys[:] = np.nan
    cache.values[:] = np.nan
    cache.append(k, v)
    out = sdpa(q, np.zeros((2, 2, 0, 8)), np.zeros((2, 2, 0, 4)), is_causal=True, cache=cache)
    expected = sdpa(q, k, v, is_causal=True, causal_alignment="bottom_right")
    assert_close(out, expected, np.float64)
    padded_k, padded_v = (np.concatenate([x, np.full_like(x, np.nan)], axis=2) for x in (k, v))
    out, _ = fusedrnn.functional.attention_forward(q, padded_k, padded_v, key_lengths=[40, 17])
    assert np.all(np.isfinite(out))
    assert_close(out[1], sdpa(q[1:], k[1:, :, :17], v[1:, :, :17])[0], np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_cached_decoding_equals_full_forward(batch_first, backend):
    """MultiheadAttention with new_cache, token by token, with a key padding mask over the
    stored keys: the full causal self-attention's outputs (and weights)."""
    mha = fusedrnn.MultiheadAttention(
        16, 4, batch_first=batch_first, dtype=np.float64, seed=3, backend=backend
    )
    mha.eval()
    N, T = 3, 9
    x = np.random.default_rng(4).standard_normal((N, T, 16))
    padding = np.zeros((N, T), bool)
    padding[1, 2] = True  # item 1 ignores position 2

    def layout(a):
        return a if batch_first else np.ascontiguousarray(np.swapaxes(a, 0, 1))

    full, full_weights = mha(
        layout(x),
        layout(x),
        layout(x),
        key_padding_mask=padding,
        is_causal=True,
        need_weights=True,
    )
    cache = mha.new_cache(N, max_len=T)
    for t in range(T):
        step = layout(x[:, t : t + 1])
        out, weights = mha(
            step,
            step,
            step,
            key_padding_mask=padding[:, : t + 1],
            is_causal=True,
            need_weights=True,
            cache=cache,
        )
        expected = full[:, t : t + 1] if batch_first else full[t : t + 1]
        assert_close(out, expected, np.float64, f"step {t}")
        assert_close(weights, full_weights[:, t : t + 1, : t + 1], np.float64, f"weights {t}")
    with pytest.raises(RuntimeError, match="cache is for inference"):
        mha.backward(np.ones_like(full))


def test_overflow_and_misuse_are_clear_errors():
    cache = fusedrnn.KVCache(1, 2, max_len=4, head_dim=3)
    k = np.zeros((1, 2, 3, 3), np.float32)
    cache.append(k, k)
    with pytest.raises(ValueError, match=r"overflows: it holds 3 of max_len = 4 .* 2 more"):
        cache.append(k[:, :, :2], k[:, :, :2])
    assert cache.length == 3  # a failed append stores nothing
    with pytest.raises(TypeError, match="the cache's dtype float32"):
        cache.append(k.astype(np.float64), k.astype(np.float64))
    with pytest.raises(ValueError, match=r"k must have shape \(batch, heads, T, head_dim\)"):
        cache.append(np.zeros((1, 3, 1, 3), np.float32), k[:, :, :1])
    with pytest.raises(TypeError, match=r"cache must be a fusedrnn\.KVCache"):
        sdpa(k, k, k, cache={"keys": k})
    with pytest.raises(ValueError, match="key_lengths and cache exclude each other"):
        sdpa(k[:, :, :1], k[:, :, :1], k[:, :, :1], cache=cache, key_lengths=[1])
    mha = fusedrnn.MultiheadAttention(8, 2)
    with pytest.raises(ValueError, match="cache must hold 2 heads of 4 features"):
        mha(np.zeros((1, 1, 8), np.float32), *(np.zeros((1, 1, 8), np.float32),) * 2, cache=cache)
    sdpa_layer = fusedrnn.ScaledDotProductAttention()
    cache.reset()
    assert len(cache) == 0
    sdpa_layer(k, k, k, cache=cache)
    with pytest.raises(RuntimeError, match="cache is for inference"):
        sdpa_layer.backward(k)


def test_reorder_keeps_the_chosen_items():
    """Beam search: item b becomes the old item indices[b], positions stored so far only."""
    cache = fusedrnn.KVCache(3, 1, 5, 2, dtype=np.float64)
    k = np.arange(3 * 2 * 2, dtype=np.float64).reshape(3, 1, 2, 2)
    cache.append(k, -k)
    cache.reorder([2, 2, 0])
    np.testing.assert_array_equal(cache.keys[:, :, :2], k[[2, 2, 0]])
    np.testing.assert_array_equal(cache.values[:, :, :2], -k[[2, 2, 0]])
    with pytest.raises(ValueError, match=r"indices must be in 0\.\.2"):
        cache.reorder([0, 1, 3])
