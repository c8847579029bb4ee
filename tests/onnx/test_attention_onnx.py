"""ONNX's official node tests of its Attention operator (opsets 23-25) run on fusedrnn.

The cases are those the `onnx` package generates its backend test data from
(``onnx.backend.test.case.node.collect_testcases``, called once in tests/onnx/node_cases.py: the
model, the inputs, and the outputs of ONNX's reference implementation; recent wheels ship the
generators instead of the ``data/node/test_attention_*`` files). Each case is mapped onto
`fusedrnn.scaled_dot_product_attention`: is_causal (ONNX aligns it bottom-right when there is a
cache or nonpad_kv_seqlen, top-left otherwise), scale, softcap, q/kv_num_heads of 3-D inputs,
attn_mask (padded to the keys as ONNX pads it), past_key / past_value (a `fusedrnn.KVCache`:
present_key / present_value are its contents), nonpad_kv_seqlen (key_lengths) and
left_window_size (window). Every case that cannot be expressed is listed in NOT_EXPRESSIBLE with
the reason, and the test asserts that exactly those are left out. Skipped without onnx.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx.backend.test.case.node")
from tests.onnx.node_cases import all_node_cases  # noqa: E402

# Cases fusedrnn cannot express, and why (the test checks this list is exact).
NOT_EXPRESSIBLE = {
    "test_attention_bidirectional_window": (
        "right_window_size >= 0 without is_causal: fusedrnn's window bounds the keys from "
        "below only (a query sees every later key unless is_causal)"
    ),
}
# Outputs fusedrnn does not produce: the fused kernel never forms the L x S score matrix, so
# qk_matmul_output (any qk_matmul_output_mode) is not returned; Y and the presents are checked.
NOT_PRODUCED = {"qk_matmul_output"}
# Attributes that change nothing here: fusedrnn's softmax is float32 or float64 already.
IGNORED_ATTRIBUTES = {"softmax_precision", "qk_matmul_output_mode"}


def attention_cases():
    cases = {}
    for case in all_node_cases():
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type == "Attention":  # not the _expanded graphs
            cases[case.name] = case
    return cases


CASES = attention_cases()


def attributes(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def to_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(N, T, heads * D) -> (N, heads, T, D), as ONNX reads 3-D inputs."""
    N, T, width = x.shape
    return np.ascontiguousarray(x.reshape(N, T, heads, width // heads).transpose(0, 2, 1, 3))


def run_on_fusedrnn(node, inputs: dict) -> dict:
    """The outputs of one ONNX Attention node, computed by fusedrnn."""
    attrs = attributes(node)
    unknown = (
        set(attrs)
        - IGNORED_ATTRIBUTES
        - {
            "is_causal",
            "scale",
            "softcap",
            "q_num_heads",
            "kv_num_heads",
            "left_window_size",
            "right_window_size",
        }
    )
    assert not unknown, f"unmapped attributes {unknown}"
    q, k, v = inputs["Q"], inputs["K"], inputs["V"]
    three_d = q.ndim == 3
    if three_d:
        q = to_heads(q, attrs["q_num_heads"])
        k = to_heads(k, attrs["kv_num_heads"])
        v = to_heads(v, attrs["kv_num_heads"])
    N, Hq, L, _ = q.shape
    Hkv = k.shape[1]
    causal = bool(attrs.get("is_causal", 0))
    left, right = attrs.get("left_window_size", -1), attrs.get("right_window_size", -1)
    assert right < 0 or causal, "not expressible (NOT_EXPRESSIBLE)"
    options = {
        "is_causal": causal,
        "scale": attrs.get("scale"),
        "enable_gqa": Hq != Hkv,
        "softcap": attrs.get("softcap") or None,
        "window": left + 1 if left >= 0 else None,
    }
    past_key, past_value = inputs.get("past_key"), inputs.get("past_value")
    lengths = inputs.get("nonpad_kv_seqlen")
    S_total = k.shape[2] + (0 if past_key is None else past_key.shape[2])
    # ONNX's causal mask and window: query i at key position i + past length with a cache (the
    # KVCache's own rule), the last L of each item's keys with key lengths, else i (top-left)
    if past_key is None:
        options["causal_alignment"] = "top_left" if lengths is None else "bottom_right"
    mask = inputs.get("attn_mask")
    if mask is not None:
        if mask.dtype != np.bool_:  # additive: fusedrnn takes q's arithmetic type
            arithmetic = np.float64 if q.dtype == np.float64 else np.float32
            mask = mask.astype(arithmetic)
        pad = S_total - mask.shape[-1]  # ONNX pads a short mask with "may not attend"
        if pad > 0:
            fill = False if mask.dtype == np.bool_ else -np.inf
            mask = np.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, pad)], constant_values=fill)
    outputs = {}
    if past_key is not None:
        cache = fusedrnn.KVCache(N, Hkv, S_total, k.shape[3], v.shape[3], dtype=k.dtype)
        cache.append(past_key, past_value)
        y = fusedrnn.scaled_dot_product_attention(q, k, v, mask, cache=cache, **options)
        outputs["present_key"] = cache.keys[:, :, : cache.length]
        outputs["present_value"] = cache.values[:, :, : cache.length]
    else:
        y = fusedrnn.scaled_dot_product_attention(q, k, v, mask, key_lengths=lengths, **options)
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(N, L, -1)
    outputs["Y"] = y
    return outputs


def named(names, arrays) -> dict:
    """The arrays of a data set by the node's names (optional ones left out are '' there)."""
    names = [n for n in names if n]
    assert len(names) == len(arrays)
    return dict(zip(names, arrays))


def tolerance(dtype) -> float:
    """ONNX's reference computes 16-bit cases in 16-bit arithmetic and fusedrnn in float32, so
    they differ by a few units in the last place of the type; float32 by rounding only."""
    name = np.dtype(dtype).name
    return {"float16": 4 * 2.0**-10, "bfloat16": 4 * 2.0**-7}.get(name, 1e-5)


def as_float64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(np.float64) if x.dtype.itemsize == 2 else x


@pytest.mark.parametrize("name", sorted(set(CASES) - set(NOT_EXPRESSIBLE)))
def test_onnx_attention_case(name):
    case = CASES[name]
    node = case.model.graph.node[0]
    assert case.data_sets, name
    for case_inputs, expected in case.data_sets:
        got = run_on_fusedrnn(node, named(node.input, case_inputs))
        for out_name, want in named(node.output, expected).items():
            if out_name in NOT_PRODUCED:
                continue
            have = got[out_name]
            assert have.dtype == want.dtype and have.shape == want.shape, out_name
            tol = tolerance(want.dtype)
            scale = max(1.0, float(np.max(np.abs(as_float64(want)))))
            np.testing.assert_allclose(
                as_float64(have), as_float64(want), rtol=tol, atol=tol * scale, err_msg=out_name
            )


def test_the_cases_left_out_are_exactly_the_inexpressible_ones():
    """Every listed case exists and is what the mapping refuses; the three kinds the issue names
    (softcap, float16, bfloat16) are all run."""
    assert set(NOT_EXPRESSIBLE) <= set(CASES)
    for name in NOT_EXPRESSIBLE:
        node = CASES[name].model.graph.node[0]
        with pytest.raises(AssertionError, match="not expressible"):
            run_on_fusedrnn(node, named(node.input, CASES[name].data_sets[0][0]))
    run = set(CASES) - set(NOT_EXPRESSIBLE)
    for kind in ("softcap", "fp16", "bf16"):
        assert any(kind in name for name in run), kind
    assert len(run) >= 50
