"""Property tests: the fused layers equal the reference layers on random configurations.

Hypothesis draws the cell and its variant, the dtype, the sizes (1 and odd ones included, and
sizes past one vector width), layers, direction, batch_first, unbatched input, lengths, initial
states, bias, projection, dropout masks, truncated backpropagation (unidirectional) and whether
the time loops run on a forced team of threads; the fused layer (``backend='fused'``) must equal
the reference layer (``backend='reference'``, built from the same seed, so with the same
parameters and dropout masks) within the dtype's tolerance, forward and backward.

The default run draws a few dozen examples per property (``max_examples`` below); the ``slow``
copies draw many more: ``python -m pytest tests/layers/test_properties.py -m slow``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusedrnn import (
    GRU,
    LSTM,
    RNN,
    GRUCell,
    LSTMCell,
    RNNCell,
    _core,
    get_num_threads,
    set_num_threads,
)
from tests.helpers.cells import assert_close

FAMILIES = {  # name -> (layer class, cell class, options)
    "lstm": (LSTM, LSTMCell, {}),
    "gru_reset_after": (GRU, GRUCell, {"reset_after": True}),
    "gru_reset_before": (GRU, GRUCell, {"reset_after": False}),
    "rnn_tanh": (RNN, RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (RNN, RNNCell, {"nonlinearity": "relu"}),
}
SIZES = st.sampled_from([1, 2, 3, 5, 7, 9, 17])  # 1, odd, and past an 8- or 16-lane vector
DEFAULT = settings(
    max_examples=30,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
THOROUGH = settings(DEFAULT, max_examples=600)


class forced_team:
    """Optionally run the time loops on a team of two threads even for tiny sizes."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.threads = get_num_threads()
        self.thresholds = _core._team_thresholds()
        if self.on:
            set_num_threads(2)
            _core._set_team_thresholds(0, 1, False)

    def __exit__(self, *exc):
        _core._set_team_thresholds(*self.thresholds)
        set_num_threads(self.threads)


@st.composite
def layer_cases(draw):
    family = draw(st.sampled_from(sorted(FAMILIES)))
    T, B, I, H = draw(SIZES), draw(SIZES), draw(SIZES), draw(SIZES)
    T = min(T, 9)
    num_layers = draw(st.integers(1, 3))
    bidirectional = draw(st.booleans())
    proj = 0
    if family == "lstm" and H > 1 and draw(st.booleans()):
        proj = draw(st.integers(1, H - 1))
    unbatched = draw(st.booleans()) if B == 1 else False
    lengths = None
    if not unbatched and draw(st.booleans()):
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    truncate = None
    if not bidirectional and draw(st.booleans()):
        k2 = draw(st.integers(1, T + 1))
        truncate = (k2, draw(st.integers(1, k2)))
    return {
        "family": family,
        "T": T,
        "B": B,
        "I": I,
        "H": H,
        "proj": proj,
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "batch_first": draw(st.booleans()),
        "unbatched": unbatched,
        "lengths": lengths,
        "hx": draw(st.booleans()),
        "d_hx": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "dropout": draw(st.sampled_from([0.0, 0.0, 0.4])) if num_layers > 1 else 0.0,
        "truncate": truncate,
        "dtype": draw(st.sampled_from([np.float64, np.float32])),
        "team": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def run_layer(case, backend):
    cls, _, options = FAMILIES[case["family"]]
    if case["proj"]:
        options = {**options, "proj_size": case["proj"]}
    layer = cls(
        case["I"],
        case["H"],
        num_layers=case["num_layers"],
        bias=case["bias"],
        batch_first=case["batch_first"],
        dropout=case["dropout"],
        bidirectional=case["bidirectional"],
        dtype=case["dtype"],
        seed=case["seed"],
        backend=backend,
        **options,
    )
    rng = np.random.default_rng(case["seed"] + 1)
    dtype = case["dtype"]
    T, B, I = case["T"], case["B"], case["I"]
    shape = (T, I) if case["unbatched"] else (B, T, I) if case["batch_first"] else (T, B, I)
    x = rng.standard_normal(shape).astype(dtype)
    h_shape, c_shape = layer._state_shapes(B, case["unbatched"])[:2]
    hx = None
    if case["hx"]:
        h0 = rng.standard_normal(h_shape).astype(dtype)
        hx = (h0, rng.standard_normal(c_shape).astype(dtype)) if cls is LSTM else h0
    output, h_n = layer(x, hx, lengths=case["lengths"])
    d_output = rng.standard_normal(output.shape).astype(dtype)
    d_hx = None
    if case["d_hx"]:
        parts = [
            rng.standard_normal(s.shape).astype(dtype)
            for s in (h_n if isinstance(h_n, tuple) else (h_n,))
        ]
        d_hx = tuple(parts) if isinstance(h_n, tuple) else parts[0]
    k2, k1 = case["truncate"] or (None, None)
    dx, dhx = layer.backward(d_output, d_hx, truncate=k2, truncate_stride=k1)
    results = {"output": output, "dx": dx}
    for name, value in (("h_n", h_n), ("dhx", dhx)):
        for i, part in enumerate(value if isinstance(value, tuple) else (value,)):
            results[f"{name}[{i}]"] = part
    results.update({f"grad {k}": v for k, v in layer.grads.items()})
    return results


def check_layer_case(case):
    with forced_team(case["team"]):
        fused = run_layer(case, "fused")
    want = run_layer(case, "reference")
    assert fused.keys() == want.keys()
    for name, value in want.items():
        assert_close(fused[name], value, case["dtype"], f"{name} of {case}")


@DEFAULT
@given(layer_cases())
def test_fused_layer_equals_reference_layer(case):
    check_layer_case(case)


@pytest.mark.slow
@THOROUGH
@given(layer_cases())
def test_fused_layer_equals_reference_layer_thoroughly(case):
    check_layer_case(case)


@st.composite
def cell_cases(draw):
    return {
        "family": draw(st.sampled_from(sorted(FAMILIES))),
        "B": draw(SIZES),
        "I": draw(SIZES),
        "H": draw(SIZES),
        "steps": draw(st.integers(1, 5)),
        "unbatched": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "hx": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.float64, np.float32])),
        "team": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def run_cell(case, backend):
    """A hand-written loop of ``steps`` steps, then backward through them in reverse."""
    _, cls, options = FAMILIES[case["family"]]
    cell = cls(
        case["I"],
        case["H"],
        bias=case["bias"],
        dtype=case["dtype"],
        seed=case["seed"],
        backend=backend,
        **options,
    )
    rng = np.random.default_rng(case["seed"] + 1)
    lead = () if case["unbatched"] else (case["B"],)

    def draw(*shape):
        return rng.standard_normal(lead + shape).astype(case["dtype"])

    state = None
    if case["hx"]:
        state = (draw(case["H"]), draw(case["H"])) if cls is LSTMCell else draw(case["H"])
    results = {}
    for t in range(case["steps"]):
        state = cell(draw(case["I"]), state)
        for i, part in enumerate(state if isinstance(state, tuple) else (state,)):
            results[f"h{t}[{i}]"] = part
    for t in reversed(range(case["steps"])):
        parts = [draw(case["H"]) for _ in range(2 if cls is LSTMCell else 1)]
        dx, dhx = cell.backward(*parts)
        results[f"dx{t}"] = dx
        for i, part in enumerate(dhx if isinstance(dhx, tuple) else (dhx,)):
            results[f"dh{t}[{i}]"] = part
    results.update({f"grad {k}": v for k, v in cell.grads.items()})
    return results


@DEFAULT
@given(cell_cases())
def test_fused_cell_loop_equals_reference_cell_loop(case):
    with forced_team(case["team"]):
        fused = run_cell(case, "fused")
    want = run_cell(case, "reference")
    assert fused.keys() == want.keys()
    for name, value in want.items():
        assert_close(fused[name], value, case["dtype"], f"{name} of {case}")


# ---------------------------------------------------------------- attention


@st.composite
def attention_cases(draw):
    Hkv = draw(st.integers(1, 3))
    gqa = draw(st.booleans())
    Hq = Hkv * draw(st.integers(1, 3)) if gqa else Hkv
    no_head_axis = draw(st.integers(0, 5)) == 0
    return {
        "batch": draw(st.sampled_from([(), (1,), (2,), (2, 1), (1, 3)])),
        "Hq": 1 if no_head_axis else Hq,
        "Hkv": 1 if no_head_axis else Hkv,
        "gqa": gqa and not no_head_axis,
        "no_head_axis": no_head_axis,
        "L": draw(SIZES),
        "S": draw(SIZES),
        "E": draw(SIZES),
        "Ev": draw(SIZES),
        "causal": draw(st.booleans()),
        "mask": draw(st.sampled_from(["none", "bool", "additive", "bool_rows", "bool_keys"])),
        "scale": draw(st.sampled_from([None, 0.3, 2.0])),
        "dropout": draw(st.sampled_from([0.0, 0.0, 0.3])),
        "dtype": draw(st.sampled_from([np.float64, np.float32])),
        "threads": draw(st.sampled_from([1, 2])),
        "seed": draw(st.integers(0, 2**16)),
    }


def check_attention_case(case):
    from tests.helpers.attention_cases import assert_runs_close, make_qkv, run

    q, k, v, d_out = make_qkv(
        case["batch"],
        case["Hq"],
        case["Hkv"],
        case["L"],
        case["S"],
        case["E"],
        case["Ev"],
        dtype=case["dtype"],
        seed=case["seed"],
        no_head_axis=case["no_head_axis"],
    )
    rng = np.random.default_rng(case["seed"] + 1)
    L, S = case["L"], case["S"]
    shape = {
        "none": None,
        "bool": (L, S),
        "additive": (L, S),
        "bool_rows": (L, 1),
        "bool_keys": (S,),
    }[case["mask"]]
    mask = None
    if shape is not None:
        mask = rng.random(shape) > 0.3
        if case["mask"] == "additive":
            mask = np.where(mask, rng.standard_normal(shape), -np.inf).astype(case["dtype"])
    options = {
        "attn_mask": mask,
        "is_causal": case["causal"],
        "scale": case["scale"],
        "enable_gqa": case["gqa"],
        "dropout_p": case["dropout"],
        "seed": case["seed"],
    }
    before = get_num_threads()
    set_num_threads(case["threads"])
    try:
        fused = run("fused", q, k, v, d_out, **dict(options))
    finally:
        set_num_threads(before)
    want = run("reference", q, k, v, d_out, **dict(options))
    if case["dtype"] == np.float64:
        assert_runs_close(fused, want, case["dtype"], str(case))
        return
    # float32: the absolute tolerance scales with the largest magnitude in the whole call, not
    # of each result, since a gradient that is 0 in exact arithmetic (a single key: softmax's
    # gradient vanishes) is the difference of terms of that magnitude in both formulations
    magnitude = max(
        1.0, *(float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in want.values())
    )
    for name in ("out", "dq", "dk", "dv"):
        np.testing.assert_allclose(
            fused[name], want[name], rtol=1e-4, atol=1e-5 * magnitude, err_msg=f"{case} {name}"
        )
    finite = np.isfinite(want["lse"])
    np.testing.assert_array_equal(np.isfinite(fused["lse"]), finite)
    np.testing.assert_allclose(
        fused["lse"][finite], want["lse"][finite], rtol=1e-4, atol=1e-5 * magnitude
    )


@DEFAULT
@given(attention_cases())
def test_fused_attention_equals_reference(case):
    check_attention_case(case)


@pytest.mark.slow
@THOROUGH
@given(attention_cases())
def test_fused_attention_equals_reference_thoroughly(case):
    check_attention_case(case)


@DEFAULT
@given(
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 9),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(1, 9),
    st.booleans(),
    st.sampled_from([np.float64, np.float32]),
    st.integers(0, 2**16),
)
def test_fused_additive_attention_equals_reference(B, T, S, Dq, Dk, Dv, A, masked, dtype, seed):
    from fusedrnn import functional, reference

    rng = np.random.default_rng(seed)
    args = {
        "query": rng.standard_normal((B, T, Dq)),
        "keys": rng.standard_normal((B, S, Dk)),
        "values": rng.standard_normal((B, S, Dv)),
        "w_q": rng.standard_normal((A, Dq)),
        "w_k": rng.standard_normal((A, Dk)),
        "w_v": rng.standard_normal(A),
    }
    args = {k: v.astype(dtype) for k, v in args.items()}
    args["key_mask"] = rng.random((B, S)) > 0.3 if masked else None
    d_context = rng.standard_normal((B, T, Dv)).astype(dtype)
    results = {}
    for name, backend in (("fused", functional), ("reference", reference)):
        context, weights, qp, kp = backend.additive_attention_forward(**args)
        dq, dk, dv, grads = backend.additive_attention_backward(
            **args, weights=weights, qp=qp, kp=kp, d_context=d_context
        )
        results[name] = {
            "context": context,
            "weights": weights,
            "d_query": dq,
            "d_keys": dk,
            "d_values": dv,
            **grads,
        }
    for name, value in results["reference"].items():
        assert_close(results["fused"][name], value, dtype, name)
