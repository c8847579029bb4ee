"""The attention layers and the differentiable SDPA: both backends agree (dropout included, since
both draw the same), gradients by central differences, state dicts, accumulation, modes, the
saved state, and the layouts (batch_first, unbatched, single decoder step, keys as values)."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional, reference
from tests.helpers.attention_cases import make_qkv
from tests.helpers.cells import assert_close
from tests.helpers.numgrad import central_differences

# ---------------------------------------------------------------- ScaledDotProductAttention


def test_sdpa_module_backward_equals_functional_and_repeats():
    q, k, v, d_out = make_qkv((2,), 4, 2, 6, 8, 4, 3)
    mask = np.random.default_rng(0).random((6, 8)) > 0.2
    options = {"is_causal": True, "enable_gqa": True, "dropout_p": 0.2, "seed": 99}
    sdpa = fusedrnn.ScaledDotProductAttention()
    out = sdpa(q, k, v, mask, **options)
    assert not out.flags.writeable
    expected_out, lse = reference.attention_forward(q, k, v, mask, **options)
    assert_close(out, expected_out, np.float64)
    expected = reference.attention_backward(q, k, v, expected_out, lse, d_out, mask, **options)
    q += 1.0  # the module kept its own copies
    for a, b in zip(sdpa.backward(d_out, retain_graph=True), expected):
        assert_close(a, b, np.float64)
    for a, b in zip(sdpa.backward(d_out), expected):  # again, since the first retained it
        assert_close(a, b, np.float64)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        sdpa.backward(d_out)  # the second freed it


def test_sdpa_fresh_dropout_seed_per_call():
    q, k, v, _ = make_qkv()
    a = fusedrnn.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    b = fusedrnn.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(
        fusedrnn.scaled_dot_product_attention(q, k, v, dropout_p=0.5, seed=3),
        fusedrnn.scaled_dot_product_attention(q, k, v, dropout_p=0.5, seed=3),
    )


def test_sdpa_backends_agree():
    q, k, v, _ = make_qkv((3,), 2, 2, 9, 5, 4, 4, dtype=np.float32)
    a = fusedrnn.scaled_dot_product_attention(q, k, v, is_causal=True)
    b = fusedrnn.scaled_dot_product_attention(q, k, v, is_causal=True, backend="reference")
    assert_close(a, b, np.float32)


# ---------------------------------------------------------------- MultiheadAttention


def mha_pair(**options):
    layers = [
        fusedrnn.MultiheadAttention(backend=backend, seed=7, **options)
        for backend in ("fused", "reference")
    ]
    return layers


@pytest.mark.parametrize(
    "options",
    [
        {"embed_dim": 12, "num_heads": 3, "dtype": np.float64},
        {"embed_dim": 12, "num_heads": 2, "dropout": 0.3, "batch_first": True, "dtype": np.float64},
        {"embed_dim": 8, "num_heads": 4, "kdim": 5, "vdim": 3, "bias": False, "dtype": np.float32},
    ],
    ids=["plain", "dropout", "kdim_vdim_nobias"],
)
def test_multihead_backends_agree(options):
    fused, ref = mha_pair(**options)
    for name, value in fused.state_dict().items():
        np.testing.assert_array_equal(value, ref.state_dict()[name])
    rng = np.random.default_rng(1)
    dtype = options["dtype"]
    N, L, S = 3, 5, 6
    E, kd, vd = (
        options["embed_dim"],
        options.get("kdim", options["embed_dim"]),
        options.get("vdim", options["embed_dim"]),
    )
    layout = (lambda T, d: (N, T, d)) if options.get("batch_first") else (lambda T, d: (T, N, d))
    q, k, v = (
        rng.standard_normal(layout(T, d)).astype(dtype) for T, d in ((L, E), (S, kd), (S, vd))
    )
    kpm = np.zeros((N, S), bool)
    kpm[1, 3:] = True
    results = []
    for layer in (fused, ref):
        out, w = layer(q, k, v, key_padding_mask=kpm, need_weights=True, is_causal=True)
        d_out = np.random.default_rng(2).standard_normal(out.shape).astype(dtype)
        grads = layer.backward(d_out)
        results.append((out, w, grads, dict(layer.grads)))
    (o1, w1, g1, p1), (o2, w2, g2, p2) = results
    assert_close(o1, o2, dtype, "output")
    assert_close(w1, w2, dtype, "weights")
    for a, b in zip(g1, g2):
        assert_close(a, b, dtype)
    for name in p1:
        assert_close(p1[name], p2[name], dtype, name)


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_multihead_window_and_softcap_gradients_by_central_differences(backend):
    """The sliding window and the soft-cap through the layer: its gradients (inputs and
    parameters) by central differences, and the window's effect on the weights."""
    layer = fusedrnn.MultiheadAttention(6, 2, dtype=np.float64, seed=1, backend=backend)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 2, 6))
    d_out = rng.standard_normal((7, 2, 6))
    options = {"is_causal": True, "window": 3, "softcap": 1.2}

    def loss():
        return np.sum(layer(x, x, x, **options)[0] * d_out)

    _, weights = layer(x, x, x, need_weights=True, **options)
    i, j = np.arange(7)[:, None], np.arange(7)[None, :]
    assert np.all(weights[:, (i - j >= 3) | (j > i)] == 0)
    assert np.all(weights[:, (i - j < 3) & (j <= i)] > 0)
    layer(x, x, x, **options)
    (d_query, d_key, d_value) = layer.backward(d_out)
    np.testing.assert_allclose(
        d_query + d_key + d_value, central_differences(loss, x), rtol=1e-6, atol=1e-8
    )
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(
            layer.grads[name], central_differences(loss, p), rtol=1e-6, atol=1e-8, err_msg=name
        )


def test_multihead_gradients_by_central_differences():
    layer = fusedrnn.MultiheadAttention(6, 2, kdim=4, vdim=5, dtype=np.float64, seed=0)
    rng = np.random.default_rng(3)
    q, k, v = (
        rng.standard_normal((4, 2, 6)),
        rng.standard_normal((5, 2, 4)),
        rng.standard_normal((5, 2, 5)),
    )
    am = np.zeros((4, 5), bool)
    am[0, 1:] = True
    d_out = rng.standard_normal((4, 2, 6))

    def loss():
        return np.sum(layer(q, k, v, attn_mask=am)[0] * d_out)

    layer(q, k, v, attn_mask=am)
    grads = layer.backward(d_out)
    for name, x, g in zip(("query", "key", "value"), (q, k, v), grads):
        np.testing.assert_allclose(
            g, central_differences(loss, x), rtol=1e-6, atol=1e-8, err_msg=name
        )
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(
            layer.grads[name], central_differences(loss, p), rtol=1e-6, atol=1e-8, err_msg=name
        )


def test_multihead_state_grads_and_modes():
    layer = fusedrnn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True, seed=1)
    assert repr(layer) == (
        "MultiheadAttention(8, 2, dropout=0.5, batch_first=True\n  (out_proj): Linear(8, 8)\n)"
    )
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    # dropout is drawn anew in training mode, off in eval mode
    assert not np.allclose(layer(x, x, x)[0], layer(x, x, x)[0])
    layer.eval()
    np.testing.assert_array_equal(layer(x, x, x)[0], layer(x, x, x)[0])
    # grads accumulate over backward calls, zero_grad clears them in place
    d_out = np.ones((2, 5, 8), np.float32)
    arrays = dict(layer.grads)
    layer.backward(d_out, retain_graph=True)
    once = {name: g.copy() for name, g in layer.grads.items()}
    layer.backward(d_out)
    for name, g in layer.grads.items():
        assert g is arrays[name]
        assert_close(g, 2 * once[name], np.float32, name)
    layer.zero_grad()
    assert all(np.all(g == 0) for g in layer.grads.values())
    # state dicts are copies; loading one forgets the saved forward
    state = layer.state_dict()
    state["out_proj.weight"] += 1
    assert not np.allclose(layer.state_dict()["out_proj.weight"], state["out_proj.weight"])
    layer.load_state_dict(state)
    np.testing.assert_array_equal(layer.state_dict()["out_proj.weight"], state["out_proj.weight"])
    with pytest.raises(RuntimeError, match="load_state_dict discarded"):
        layer.backward(d_out)
    with pytest.raises(ValueError, match=r"missing \['in_proj_bias'\]"):
        layer.load_state_dict({k: v for k, v in state.items() if k != "in_proj_bias"})
    with pytest.raises(ValueError, match=r"state_dict\['in_proj_weight'\] has shape \(3, 3\)"):
        layer.load_state_dict({**state, "in_proj_weight": np.zeros((3, 3))})


def test_multihead_unbatched_equals_batch_of_one():
    layer = fusedrnn.MultiheadAttention(8, 2, dtype=np.float64, seed=2)
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((5, 8)), rng.standard_normal((6, 8))
    kpm = np.array([False, False, False, False, True, True])
    out, w = layer(q, k, k, key_padding_mask=kpm, need_weights=True)
    g = layer.backward(np.ones((5, 8)))
    out_b, w_b = layer(
        q[:, None], k[:, None], k[:, None], key_padding_mask=kpm[None], need_weights=True
    )
    g_b = layer.backward(np.ones((5, 1, 8)))
    assert out.shape == (5, 8) and w.shape == (5, 6)
    assert_close(out, out_b[:, 0], np.float64)
    assert_close(w, w_b[0], np.float64)
    for a, b in zip(g, g_b):
        assert_close(a, b[:, 0], np.float64)


# ---------------------------------------------------------------- AdditiveAttention


def test_additive_layer_gradients_by_central_differences():
    layer = fusedrnn.AdditiveAttention(3, 4, 5, dtype=np.float64, seed=0)
    rng = np.random.default_rng(1)
    query, keys, values = (
        rng.standard_normal((2, 3, 3)),
        rng.standard_normal((2, 6, 4)),
        rng.standard_normal((2, 6, 2)),
    )
    pad = np.zeros((2, 6), bool)
    pad[1, 4:] = True
    d_context = rng.standard_normal((2, 3, 2))

    def loss():
        return np.sum(layer(query, keys, values, key_padding_mask=pad)[0] * d_context)

    _, weights = layer(query, keys, values, key_padding_mask=pad, need_weights=True)
    assert np.all(weights[1, :, 4:] == 0)  # True = padding: no weight
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0)
    grads = layer.backward(d_context)
    for name, x, g in zip(("query", "keys", "values"), (query, keys, values), grads):
        np.testing.assert_allclose(
            g, central_differences(loss, x), rtol=1e-6, atol=1e-8, err_msg=name
        )
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(
            layer.grads[name], central_differences(loss, p), rtol=1e-6, atol=1e-8, err_msg=name
        )


def test_additive_keys_as_values_and_single_step():
    layer = fusedrnn.AdditiveAttention(3, 4, 5, dtype=np.float64, seed=0)
    rng = np.random.default_rng(2)
    query, keys = rng.standard_normal((2, 3)), rng.standard_normal((2, 6, 4))
    context, weights = layer(query, keys, need_weights=True)
    assert context.shape == (2, 4) and weights.shape == (2, 6)
    d_query, d_keys, d_values = layer.backward(np.ones((2, 4)))
    assert d_values is None and d_query.shape == (2, 3)
    # the same as passing the keys as values too, with the two key gradients summed
    twin = fusedrnn.AdditiveAttention(3, 4, 5, dtype=np.float64, seed=0)
    context2, _ = twin(query[:, None], keys, keys.copy())
    dq2, dk2, dv2 = twin.backward(np.ones((2, 1, 4)))
    assert_close(context, context2[:, 0], np.float64)
    assert_close(d_query, dq2[:, 0], np.float64)
    assert_close(d_keys, dk2 + dv2, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_additive_backends_agree(dtype):
    layers = [
        fusedrnn.AdditiveAttention(7, 5, 16, dtype=dtype, seed=4, backend=b)
        for b in ("fused", "reference")
    ]
    rng = np.random.default_rng(5)
    query, keys = (
        rng.standard_normal((3, 4, 7)).astype(dtype),
        rng.standard_normal((3, 9, 5)).astype(dtype),
    )
    pad = rng.random((3, 9)) > 0.7
    results = []
    for layer in layers:
        context, weights = layer(query, keys, key_padding_mask=pad, need_weights=True)
        grads = layer.backward(np.ones_like(context))
        results.append((context, weights, grads, layer.grads))
    for a, b in zip(results[0][:2], results[1][:2]):
        assert_close(a, b, dtype)
    for a, b in zip(results[0][2][:2], results[1][2][:2]):
        assert_close(a, b, dtype)
    for name in results[0][3]:
        assert_close(results[0][3][name], results[1][3][name], dtype, name)


def test_functional_and_reference_export_the_same_attention_names():
    for name in (
        "attention_forward",
        "attention_backward",
        "additive_attention_forward",
        "additive_attention_backward",
    ):
        assert callable(getattr(functional, name)) and callable(getattr(reference, name))
