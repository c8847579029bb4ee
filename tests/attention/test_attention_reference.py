"""The NumPy attention reference pinned down on its own: against a per-row loop written from the
definition, against central differences in float64 for every input (and the additive
parameters), and on the documented rules (masked rows, causal alignment, dropout draw)."""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import reference
from fusedrnn.reference.attention import dropout_keep
from tests.helpers.attention_cases import make_qkv
from tests.helpers.numgrad import central_differences


def loop_attention(q, k, v, mask=None, causal=False, scale=None, z=None, softcap=None):
    """softmax(scale q k^T + mask) v, one (batch, head, row) at a time; (N, H, L, E) arrays with
    Hq == Hkv; mask (N, H, L, S) bool or additive; z (N, H, L, S) dropout factors."""
    N, H, L, E = q.shape
    S = k.shape[2]
    scale = 1 / np.sqrt(E) if scale is None else scale
    out = np.zeros((N, H, L, v.shape[3]))
    for n in range(N):
        for h in range(H):
            for i in range(L):
                s = np.array([scale * q[n, h, i] @ k[n, h, j] for j in range(S)])
                if softcap is not None:
                    s = softcap * np.tanh(s / softcap)
                if mask is not None:
                    m = mask[n, min(h, mask.shape[1] - 1), i]
                    s = np.where(m, s, -np.inf) if mask.dtype == bool else s + m
                if causal:
                    s[i + 1 :] = -np.inf
                if np.all(s == -np.inf):
                    continue  # a fully masked row: zeros
                p = np.exp(s - s.max())
                p /= p.sum()
                if z is not None:
                    p = p * z[n, h, i]
                out[n, h, i] = p @ v[n, h]
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
@pytest.mark.parametrize(("L", "S"), [(4, 6), (6, 4), (5, 5)])
def test_reference_equals_loop(L, S, mask_kind, causal):
    q, k, v, _ = make_qkv((2,), 3, 3, L, S, 4, 3, seed=L * S)
    rng = np.random.default_rng(1)
    mask = None
    if mask_kind == "bool":
        mask = rng.random((2, 3, L, S)) > 0.4
        mask[0, 1, 2] = False  # one fully masked row
    elif mask_kind == "additive":
        mask = rng.standard_normal((2, 3, L, S))
        mask[1, 0, 1] = -np.inf
    out, lse = reference.attention_forward(q, k, v, mask, is_causal=causal, scale=0.7)
    np.testing.assert_allclose(
        out, loop_attention(q, k, v, mask, causal, 0.7), rtol=1e-12, atol=1e-12
    )
    # lse is the log-sum-exp of the masked scores, +inf exactly where a row is fully masked
    s = 0.7 * q @ np.swapaxes(k, -1, -2)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    if causal:
        s = np.where(np.tril(np.ones((L, S), bool)), s, -np.inf)
    with np.errstate(divide="ignore"):
        expected = np.log(np.sum(np.exp(s), axis=-1))
    expected[expected == -np.inf] = np.inf
    np.testing.assert_allclose(lse, expected, rtol=1e-12)


def test_causal_is_top_left_aligned():
    """Query i sees keys 0..i whatever L and S are (PyTorch's is_causal): with L > S the late
    queries see every key, with L < S the last S - L keys are seen by nobody."""
    q, k, v, d_out = make_qkv((1,), 1, 1, 3, 6, 4, 2)
    out, _ = reference.attention_forward(q, k, v, is_causal=True)
    for i in range(3):
        row, _ = reference.attention_forward(
            q[..., i : i + 1, :], k[..., : i + 1, :], v[..., : i + 1, :]
        )
        np.testing.assert_allclose(out[..., i, :], row[..., 0, :], rtol=1e-12)
    _, lse = reference.attention_forward(q, k, v, is_causal=True)
    _, dk, dv = reference.attention_backward(q, k, v, out, lse, d_out, is_causal=True)
    assert np.all(dk[..., 3:, :] == 0) and np.all(dv[..., 3:, :] == 0)
    assert np.any(dk[..., :3, :] != 0)


def visible_by_definition(L, S, length, causal, alignment, window):
    """The documented rule, one (i, j) at a time: j < length, causal j <= i + d, window
    i + d - j < window, with d = 0 (top-left) or length - L (bottom-right)."""
    d = length - L if alignment == "bottom_right" else 0
    return np.array(
        [
            [
                j < length and (not causal or j <= i + d) and (window is None or i + d - j < window)
                for j in range(S)
            ]
            for i in range(L)
        ]
    )


@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
@pytest.mark.parametrize(
    ("causal", "window", "lengths"),
    [
        (True, None, None),
        (True, 3, None),
        (False, 2, None),
        (True, None, (7, 4)),
        (True, 2, (5, 7)),
    ],
)
@pytest.mark.parametrize(("L", "S"), [(4, 7), (7, 4)])
def test_visibility_rules_equal_a_boolean_mask(L, S, causal, window, lengths, alignment):
    """Alignment, window and key lengths are a boolean mask written from the definition (and the
    soft-cap is softcap * tanh(s / softcap) before it)."""
    q, k, v, _d_out = make_qkv((2,), 2, 2, L, S, 4, 3, seed=L + S)
    lengths = None if lengths is None else np.minimum(lengths, S)
    options = {"is_causal": causal, "window": window, "key_lengths": lengths}
    options["causal_alignment"] = alignment
    out, _lse = reference.attention_forward(q, k, v, softcap=1.3, **options)
    mask = np.stack(
        [
            visible_by_definition(
                L, S, S if lengths is None else lengths[n], causal, alignment, window
            )
            for n in range(2)
        ]
    )[:, None]
    capped = loop_attention(q, k, v, mask, scale=1 / 2, softcap=1.3)
    np.testing.assert_allclose(out, capped, rtol=1e-12, atol=1e-12)


def test_fully_masked_rows_are_zero_with_zero_gradients():
    q, k, v, d_out = make_qkv((2,), 2, 2, 4, 5, 3, 2)
    mask = np.ones((2, 2, 4, 5), bool)
    mask[0, 1, 2] = False
    additive = np.where(mask, 0.0, -np.inf)
    for m in (mask, additive):
        with np.errstate(all="raise"):
            out, lse = reference.attention_forward(q, k, v, m)
            dq, dk, dv = reference.attention_backward(q, k, v, out, lse, d_out, m)
        assert np.all(out[0, 1, 2] == 0) and lse[0, 1, 2] == np.inf
        assert np.all(dq[0, 1, 2] == 0)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(dq))
        assert np.all(np.isfinite(dk)) and np.all(np.isfinite(dv))
    # S = 0: every row is fully masked
    out, lse = reference.attention_forward(q, k[..., :0, :], v[..., :0, :])
    assert out.shape == (2, 2, 4, 2) and np.all(out == 0) and np.all(lse == np.inf)


GRADCHECK_CASES = {
    "plain": {"shape": ((2,), 2, 2, 3, 4), "options": {}},
    "causal_L_gt_S": {"shape": ((1,), 2, 2, 5, 3), "options": {"is_causal": True}},
    "bool_mask": {"shape": ((2,), 2, 2, 3, 4), "options": {"attn_mask": "bool"}},
    "additive_mask": {"shape": ((2,), 2, 2, 3, 4), "options": {"attn_mask": "additive"}},
    "gqa": {"shape": ((1,), 4, 2, 3, 4), "options": {"enable_gqa": True, "scale": 0.3}},
    "dropout": {"shape": ((2,), 2, 2, 3, 4), "options": {"dropout_p": 0.3, "seed": 11}},
    "batch_broadcast": {"shape": None, "options": {}},
    "softcap": {
        "shape": ((2,), 2, 2, 3, 4),
        "options": {"softcap": 0.8, "scale": 1.0, "attn_mask": "additive"},
    },
    "window_bottom_right": {
        "shape": ((1,), 2, 2, 3, 6),
        "options": {"is_causal": True, "causal_alignment": "bottom_right", "window": 2},
    },
    "key_lengths": {
        "shape": ((2,), 2, 2, 3, 5),
        "options": {"key_lengths": np.array([2, 5]), "is_causal": True, "window": 3},
    },
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_reference_gradients_by_central_differences(case):
    spec = GRADCHECK_CASES[case]
    options = dict(spec["options"])
    if spec["shape"] is None:  # k, v broadcast along a batch axis of q: their gradients sum
        q, _, _, _ = make_qkv((3, 2), 2, 2, 3, 4, 3, 2, seed=5)
        _, k, v, _ = make_qkv((1, 2), 2, 2, 3, 4, 3, 2, seed=6)
        d_out = np.random.default_rng(7).standard_normal((3, 2, 2, 3, 2))
    else:
        batch, Hq, Hkv, L, S = spec["shape"]
        q, k, v, d_out = make_qkv(batch, Hq, Hkv, L, S, 3, 2, seed=3)
    rng = np.random.default_rng(4)
    if options.get("attn_mask") == "bool":
        options["attn_mask"] = rng.random((*q.shape[:-1], k.shape[-2])) > 0.3
    elif options.get("attn_mask") == "additive":
        options["attn_mask"] = rng.standard_normal((k.shape[-2],))  # broadcast along rows
    mask = options.pop("attn_mask", None)

    def loss():
        out, _ = reference.attention_forward(q, k, v, mask, **options)
        return np.sum(out * d_out)

    out, lse = reference.attention_forward(q, k, v, mask, **options)
    grads = reference.attention_backward(q, k, v, out, lse, d_out, mask, **options)
    for name, x, g in zip("qkv", (q, k, v), grads):
        assert g.shape == x.shape
        np.testing.assert_allclose(
            g, central_differences(loss, x), rtol=1e-6, atol=1e-8, err_msg=f"d{name}"
        )


def test_dropout_draw():
    """About a fraction p dropped, independent of the other rows, reproducible from the seed."""
    rows = np.arange(200, dtype=np.uint64)
    keep = dropout_keep(7, rows, 500, 0.25)
    assert abs(keep.mean() - 0.75) < 0.01
    np.testing.assert_array_equal(keep, dropout_keep(7, rows, 500, 0.25))
    assert np.mean(keep != dropout_keep(8, rows, 500, 0.25)) > 0.3
    assert dropout_keep(7, rows, 10, 0.0).all()
    assert not dropout_keep(7, rows, 10, 1.0).any()
    # p = 0 is plain attention; p = 1 drops everything
    q, k, v, _ = make_qkv()
    plain, _ = reference.attention_forward(q, k, v)
    np.testing.assert_array_equal(
        reference.attention_forward(q, k, v, dropout_p=0.0, seed=3)[0], plain
    )
    assert np.all(reference.attention_forward(q, k, v, dropout_p=1.0, seed=3)[0] == 0)
    # the expectation over seeds is plain attention (kept weights are scaled by 1/(1-p))
    mean = np.mean(
        [reference.attention_forward(q, k, v, dropout_p=0.5, seed=s)[0] for s in range(400)], axis=0
    )
    np.testing.assert_allclose(mean, plain, atol=0.15)


# ---------------------------------------------------------------- additive attention


def additive_inputs(B=2, T=3, S=4, Dq=3, Dk=5, Dv=2, A=6, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    arrays = {
        "query": rng.standard_normal((B, T, Dq)),
        "keys": rng.standard_normal((B, S, Dk)),
        "values": rng.standard_normal((B, S, Dv)),
        "w_q": rng.uniform(-0.5, 0.5, (A, Dq)),
        "w_k": rng.uniform(-0.5, 0.5, (A, Dk)),
        "w_v": rng.uniform(-1, 1, A),
    }
    return {name: a.astype(dtype) for name, a in arrays.items()}


def test_additive_reference_equals_loop():
    x = additive_inputs()
    mask = np.ones((2, 4), bool)
    mask[1, 2:] = False
    context, weights, _, _ = reference.additive_attention_forward(**x, key_mask=mask)
    for b in range(2):
        for t in range(3):
            e = np.array(
                [
                    x["w_v"] @ np.tanh(x["w_q"] @ x["query"][b, t] + x["w_k"] @ x["keys"][b, s])
                    for s in range(4)
                ]
            )
            e[~mask[b]] = -np.inf
            p = np.exp(e - e.max())
            p /= p.sum()
            np.testing.assert_allclose(weights[b, t], p, rtol=1e-12)
            np.testing.assert_allclose(context[b, t], p @ x["values"][b], rtol=1e-12)


def test_additive_reference_gradients_by_central_differences():
    x = additive_inputs()
    mask = np.ones((2, 4), bool)
    mask[0, 1] = False
    d_context = np.random.default_rng(9).standard_normal((2, 3, 2))

    def loss():
        return np.sum(reference.additive_attention_forward(**x, key_mask=mask)[0] * d_context)

    _, weights, qp, kp = reference.additive_attention_forward(**x, key_mask=mask)
    d_query, d_keys, d_values, grads = reference.additive_attention_backward(
        **x, weights=weights, qp=qp, kp=kp, d_context=d_context, key_mask=mask
    )
    expected = {"query": d_query, "keys": d_keys, "values": d_values, **grads}
    for name, g in expected.items():
        np.testing.assert_allclose(
            g, central_differences(loss, x[name]), rtol=1e-6, atol=1e-8, err_msg=name
        )


def test_additive_fully_masked_query_is_zero():
    x = additive_inputs()
    mask = np.ones((2, 4), bool)
    mask[1] = False
    context, weights, qp, kp = reference.additive_attention_forward(**x, key_mask=mask)
    assert np.all(context[1] == 0) and np.all(weights[1] == 0)
    d_query, d_keys, d_values, _ = reference.additive_attention_backward(
        **x, weights=weights, qp=qp, kp=kp, d_context=np.ones((2, 3, 2)), key_mask=mask
    )
    assert np.all(d_query[1] == 0) and np.all(d_keys[1] == 0) and np.all(d_values[1] == 0)
