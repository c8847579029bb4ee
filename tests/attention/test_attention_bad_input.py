"""Bad input to attention: a TypeError / ValueError that names the argument and says what was
expected and what came, the same from both backends, never a crash or a silent cast."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _core, functional, reference
from tests.helpers.attention_cases import make_qkv

BACKENDS = [functional, reference]


def args(**changes):
    q, k, v, _ = make_qkv((2,), 4, 2, 5, 7, 4, 3)
    a = {"q": q, "k": k, "v": v}
    a.update(changes)
    return a


@pytest.mark.parametrize("backend", BACKENDS, ids=["fused", "reference"])
@pytest.mark.parametrize(
    ("change", "options", "error", "pattern"),
    [
        (
            {"k": np.ones((2, 4, 7, 5))},
            {},
            ValueError,
            r"q and k must have the same feature size E .* q has E = 4 .* k has E = 5",
        ),
        (
            {"v": np.ones((2, 2, 6, 3))},
            {},
            ValueError,
            r"k and v must have the same number of keys S .* k has S = 7 .* v has S = 6",
        ),
        (
            {"v": np.ones((2, 3, 7, 3))},
            {},
            ValueError,
            r"k and v must have the same number of heads Hkv .* k has 2 .* v has 3",
        ),
        ({}, {}, ValueError, r"q has Hq = 4 heads .* k and v have Hkv = 2; .*enable_gqa=True"),
        (
            {"q": np.ones((2, 3, 5, 4))},
            {"enable_gqa": True},
            ValueError,
            r"query heads Hq = 3 must be a multiple of the key/value heads Hkv = 2",
        ),
        (
            {},
            {"attn_mask": np.ones((5, 6), bool), "enable_gqa": True},
            ValueError,
            r"attn_mask of shape \(5, 6\) does not broadcast to "
            r"\(\.\.\., Hq, L, S\) = \(2, 4, 5, 7\)",
        ),
        (
            {},
            {"attn_mask": np.ones((3, 4, 5, 7), bool), "enable_gqa": True},
            ValueError,
            r"attn_mask of shape \(3, 4, 5, 7\) does not broadcast",
        ),
        (
            {},
            {"attn_mask": np.ones((1, 2, 4, 5, 7), bool), "enable_gqa": True},
            ValueError,
            r"does not broadcast to .* = \(2, 4, 5, 7\)",
        ),
        (
            {},
            {"attn_mask": np.ones((5, 7), np.float32), "enable_gqa": True},
            TypeError,
            r"attn_mask must have dtype bool \(True = may attend\) or float64 like q .*, "
            r"got float32",
        ),
        (
            {},
            {"attn_mask": np.ones((5, 7), np.int64), "enable_gqa": True},
            TypeError,
            r"attn_mask must have dtype bool",
        ),
        (
            {},
            {"attn_mask": [[True]], "enable_gqa": True},
            TypeError,
            r"attn_mask must be a numpy.ndarray",
        ),
        (
            {"q": np.ones((3, 4, 5, 4))},
            {"enable_gqa": True},
            ValueError,
            r"batch dimensions of q \(3,\), k \(2,\) and v \(2,\) .* do not broadcast",
        ),
        (
            {"k": np.ones((2, 2, 7, 4), np.float32)},
            {"enable_gqa": True},
            TypeError,
            r"k must have dtype float64 like q, got float32 .*nothing is cast silently",
        ),
        (
            {"q": np.ones((2, 4, 5, 4), np.int32)},
            {"enable_gqa": True},
            TypeError,
            r"q must have dtype float32 or float64, got int32",
        ),
        ({"q": [[1.0]]}, {"enable_gqa": True}, TypeError, r"q must be a numpy.ndarray .* got list"),
        (
            {"q": np.ones(4)},
            {"enable_gqa": True},
            ValueError,
            r"q must have shape \(\.\.\., Hq, L, E\) \(at least 2 dimensions\), "
            r"but has shape \(4,\)",
        ),
        (
            {},
            {"enable_gqa": True, "is_causal": 0.1},
            TypeError,
            r"is_causal must be a bool, got float 0.1",
        ),
        ({}, {"enable_gqa": 1}, TypeError, r"enable_gqa must be a bool, got int"),
        ({}, {"enable_gqa": True, "dropout_p": 1.5}, ValueError, r"dropout_p must be in \[0, 1\]"),
        ({}, {"enable_gqa": True, "scale": "big"}, TypeError, r"scale must be a real number"),
        ({}, {"enable_gqa": True, "seed": -1}, ValueError, r"seed must be in \[0, 2\*\*64\)"),
        (
            {},
            {"enable_gqa": True, "causal_alignment": "bottom"},
            ValueError,
            r"causal_alignment must be 'top_left' or 'bottom_right', got 'bottom'",
        ),
        (
            {},
            {"enable_gqa": True, "causal_alignment": 1.5},
            TypeError,
            r"causal_alignment must be 'top_left', 'bottom_right' or an int .* got float",
        ),
        ({}, {"enable_gqa": True, "window": 0}, ValueError, r"window must be >= 1, got 0"),
        ({}, {"enable_gqa": True, "window": 2.0}, TypeError, r"window must be an integer"),
        (
            {},
            {"enable_gqa": True, "softcap": -1.0},
            ValueError,
            r"softcap must be a positive number or None \(0: none\), got -1.0",
        ),
        ({}, {"enable_gqa": True, "softcap": "2"}, TypeError, r"softcap must be a positive number"),
        (
            {},
            {"enable_gqa": True, "key_lengths": [7, 8]},
            ValueError,
            r"key_lengths must be in 0..S = 0..7, got 8",
        ),
        (
            {},
            {"enable_gqa": True, "key_lengths": [1, 2, 3]},
            ValueError,
            r"key_lengths of shape \(3,\) does not broadcast to the batch shape \(2,\)",
        ),
        (
            {},
            {"enable_gqa": True, "key_lengths": [1.0, 2.0]},
            TypeError,
            r"key_lengths must hold integers, but has dtype float64",
        ),
    ],
)
def test_forward_rejects(backend, change, options, error, pattern):
    a = args(**change)
    with pytest.raises(error, match=pattern):
        backend.attention_forward(a["q"], a["k"], a["v"], **options)


@pytest.mark.parametrize("backend", BACKENDS, ids=["fused", "reference"])
@pytest.mark.parametrize(
    ("name", "value", "error", "pattern"),
    [
        (
            "out",
            np.ones((2, 4, 5, 4)),
            ValueError,
            (
                r"out must have shape \(2, 4, 5, 3\) \(what forward returns for these q, k, "
                r"v\), but has shape \(2, 4, 5, 4\)"
            ),
        ),
        ("lse", np.ones((2, 4, 5, 1)), ValueError, r"lse must have shape \(2, 4, 5\)"),
        (
            "d_out",
            np.ones((2, 4, 5, 3), np.float32),
            TypeError,
            r"d_out must have dtype float64 like q",
        ),
        ("d_out", None, TypeError, r"d_out must be a numpy.ndarray"),
    ],
)
def test_backward_rejects(backend, name, value, error, pattern):
    a = args()
    out, lse = backend.attention_forward(a["q"], a["k"], a["v"], enable_gqa=True)
    saved = {"out": out, "lse": lse, "d_out": np.ones_like(out)}
    saved[name] = value
    with pytest.raises(error, match=pattern):
        backend.attention_backward(
            a["q"], a["k"], a["v"], saved["out"], saved["lse"], saved["d_out"], enable_gqa=True
        )


def test_binding_checks_what_the_wrapper_hands_it():
    """The compiled entry point re-checks the flattened call, so a wrong offset or shape can
    never make the kernel read outside an array."""
    q, k, v, _ = make_qkv((2,), 2, 2, 5, 7, 4, 3)
    mask = np.ones((5, 7), bool)
    good = np.zeros(4, np.int64)
    call = _core.attention_forward
    call(q, k, v, mask, good, 7, 1, False, 1.0, 0.0, 0)  # fine
    with pytest.raises(ValueError, match="reach outside attn_mask"):
        call(q, k, v, mask, np.array([0, 0, 0, 1], np.int64), 7, 1, False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="reach outside attn_mask"):
        call(q, k, v, mask, good, 8, 1, False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="col_stride must be 0 or 1"):
        call(q, k, v, mask, good, 7, 2, False, 1.0, 0.0, 0)
    with pytest.raises(
        ValueError, match="mask_offsets must be a contiguous, aligned int64 array of N\\*Hq = 4"
    ):
        call(q, k, v, mask, np.zeros(3, np.int64), 7, 1, False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match=r"k must have shape \(N, Hkv, S, E\) = \(2, 2, 7, 4\)"):
        call(q, k[..., :3], v, None, None, 0, 0, False, 1.0, 0.0, 0)
    with pytest.raises(
        ValueError, match="Hq = 2 must be a multiple of the key/value heads Hkv = 3"
    ):
        call(q, np.ones((2, 3, 7, 4)), np.ones((2, 3, 7, 3)), None, None, 0, 0, False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        call(q[0], k, v, None, None, 0, 0, False, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\]"):
        call(q, k, v, None, None, 0, 0, False, 1.0, -0.5, 0)
    with pytest.raises(ValueError, match=r"key_lengths must be in \[0, S = 7\], got 8"):
        call(q, k, v, None, None, 0, 0, False, 1.0, 0.0, 0, {"key_lengths": np.array([1, 8])})
    with pytest.raises(ValueError, match="key_lengths must be a contiguous int64 array of N = 2"):
        call(q, k, v, None, None, 0, 0, False, 1.0, 0.0, 0, {"key_lengths": np.array([1])})
    with pytest.raises(ValueError, match="window must be >= 0"):
        call(q, k, v, None, None, 0, 0, False, 1.0, 0.0, 0, {"window": -1})
    with pytest.raises(ValueError, match="softcap must be finite and >= 0"):
        call(q, k, v, None, None, 0, 0, False, 1.0, 0.0, 0, {"softcap": float("nan")})
    with pytest.raises(TypeError, match="unknown attention option sliding"):
        call(q, k, v, None, None, 0, 0, False, 1.0, 0.0, 0, {"sliding": 1})
    with pytest.raises(TypeError, match="q must hold 16-bit values as uint16, got float64"):
        call(q, k, v, None, None, 0, 0, False, 1.0, 0.0, 0, {}, "float16")
    with pytest.raises(ValueError, match="half must be '', 'float16' or 'bfloat16'"):
        call(q, k, v, None, None, 0, 0, False, 1.0, 0.0, 0, {}, "float8")


@pytest.mark.parametrize("backend", BACKENDS, ids=["fused", "reference"])
def test_additive_rejects(backend):
    rng = np.random.default_rng(0)
    x = {
        "query": rng.standard_normal((2, 3, 4)),
        "keys": rng.standard_normal((2, 5, 6)),
        "values": rng.standard_normal((2, 5, 2)),
        "w_q": np.ones((7, 4)),
        "w_k": np.ones((7, 6)),
        "w_v": np.ones(7),
    }
    cases = [
        (
            {"w_k": np.ones((7, 5))},
            ValueError,
            r"w_k must have shape \(hidden_size, key_size\) = \(7, 6\), but has shape \(7, 5\)",
        ),
        (
            {"values": np.ones((2, 4, 2))},
            ValueError,
            r"values must have shape \(B, S, value_size\)",
        ),
        (
            {"keys": np.ones((3, 5, 6))},
            ValueError,
            r"keys must have shape \(B, S, key_size\) with B = 2",
        ),
        ({"w_v": np.ones((7, 1))}, ValueError, r"w_v must have shape \(hidden_size,\)"),
        (
            {"query": np.ones((2, 3, 4), np.float32)},
            TypeError,
            r"keys must have dtype float32 like q",
        ),
        (
            {"key_mask": np.ones((2, 4), bool)},
            ValueError,
            r"key_mask must have shape \(B, S\) = \(2, 5\)",
        ),
        ({"key_mask": np.ones((2, 5))}, TypeError, r"key_mask must be a bool numpy.ndarray"),
    ]
    for change, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            backend.additive_attention_forward(**{**x, **change})


def test_layers_reject():
    with pytest.raises(ValueError, match="embed_dim = 10 must be divisible by num_heads = 4"):
        fusedrnn.MultiheadAttention(10, 4)
    with pytest.raises(TypeError, match=r"dtype must be float32 or float64"):
        fusedrnn.MultiheadAttention(8, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="backend must be 'fused' or 'reference'"):
        fusedrnn.AdditiveAttention(3, 4, 5, backend="gpu")
    mha = fusedrnn.MultiheadAttention(8, 2, batch_first=True)
    x = np.zeros((2, 5, 8), np.float32)
    with pytest.raises(TypeError, match=r"query must have dtype float32 \(the layer's dtype\)"):
        mha(x.astype(np.float64), x, x)
    with pytest.raises(
        ValueError, match=r"query must have shape \(\*, \*, 8\) = \(N, L, embed_dim\), but"
    ):
        mha(np.zeros((2, 5, 6), np.float32), x, x)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(2, 5\)"):
        mha(x, x, x, key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(5, 5\) or \(4, 5, 5\)"):
        mha(x, x, x, attn_mask=np.zeros((5, 4), bool))
    with pytest.raises(RuntimeError, match="needs a forward first"):
        mha.backward(x)
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        fusedrnn.scaled_dot_product_attention(x, x, x, None, 0.1)
