"""The fused attention kernels against the NumPy reference: outputs, lse and every gradient, both
dtypes, sizes that are not multiples of the tile or vector sizes, L != S, every mask kind and
broadcast, causal, GQA, dropout, batch dimensions of rank 0-2, fully masked rows; on tiny forced
tiles (many tiles per head, partial tiles, the causal diagonal inside tiles), one and two threads
(two threads also split the keys of a head into chunks), and every compiled instruction set."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _core, functional, reference
from tests.helpers.attention_cases import assert_runs_close, make_qkv, run
from tests.helpers.cells import assert_close

DTYPES = [np.float64, np.float32]


def _mask(kind, batch, Hq, L, S, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if kind is None:
        return None
    if kind == "bool_full":  # every (item, head, row) its own, one row fully masked
        m = rng.random((*batch, Hq, L, S)) > 0.5
        m[(0,) * len(batch) + (0, 1)] = False
        return m
    if kind == "bool_LS":
        m = rng.random((L, S)) > 0.3
        m[2] = False
        return m
    if kind == "bool_keys":  # key padding: (N, 1, 1, S), the last keys of item 0 padded
        m = np.ones((*batch, 1, 1, S), bool)
        m[(0,) * len(batch) + (0, 0, slice(S - 3, S))] = False
        return m
    if kind == "bool_rows":  # broadcast along the keys: (L, 1), whole rows masked
        m = np.ones((L, 1), bool)
        m[1] = False
        return m
    if kind == "additive_heads":  # (Hq, 1, S): per head and key, -inf in places
        m = rng.standard_normal((Hq, 1, S)).astype(dtype)
        m[0, 0, :2] = -np.inf
        return m
    if kind == "additive_row_scalar":  # (L, 1): one value per row, -inf masks a row
        m = rng.standard_normal((L, 1)).astype(dtype)
        m[0] = -np.inf
        return m
    if kind == "additive_full":
        return (3 * rng.standard_normal((*batch, Hq, L, S))).astype(dtype)
    raise ValueError(kind)


# name -> (batch, Hq, Hkv, L, S, E, Ev, mask kind, options)
CASES = {
    "plain": ((2,), 2, 2, 37, 41, 8, 5, None, {}),
    "L_gt_S": ((2,), 2, 2, 29, 13, 6, 7, None, {}),
    "causal_L_lt_S": ((2,), 2, 2, 13, 29, 8, 5, None, {"is_causal": True}),
    "causal_L_gt_S": ((2,), 2, 2, 29, 13, 8, 5, None, {"is_causal": True}),
    "causal_square": ((1,), 3, 3, 33, 33, 4, 4, None, {"is_causal": True}),
    "gqa": ((2,), 6, 2, 17, 23, 8, 3, None, {"enable_gqa": True}),
    "gqa_causal_mask": (
        (1,),
        4,
        1,
        21,
        21,
        8,
        3,
        "bool_keys",
        {"enable_gqa": True, "is_causal": True},
    ),
    "bool_full": ((2,), 2, 2, 19, 27, 8, 5, "bool_full", {}),
    "bool_LS": ((2,), 2, 2, 19, 27, 8, 5, "bool_LS", {}),
    "bool_keys": ((3,), 2, 2, 19, 27, 8, 5, "bool_keys", {}),
    "bool_rows": ((2,), 2, 2, 19, 27, 8, 5, "bool_rows", {}),
    "additive_heads": ((2,), 2, 2, 19, 27, 8, 5, "additive_heads", {}),
    "additive_rows": ((2,), 2, 2, 19, 27, 8, 5, "additive_row_scalar", {}),
    "additive_full_causal": ((2,), 2, 2, 27, 19, 8, 5, "additive_full", {"is_causal": True}),
    "scale": ((2,), 2, 2, 11, 9, 8, 5, None, {"scale": 0.05}),
    "dropout": ((2,), 2, 2, 19, 27, 8, 5, "bool_LS", {"dropout_p": 0.3, "seed": 1234}),
    "dropout_causal": (
        (1,),
        2,
        2,
        27,
        19,
        8,
        5,
        None,
        {"dropout_p": 0.6, "seed": 2**40 + 7, "is_causal": True},
    ),
    "batch_rank0": ((), 3, 3, 15, 17, 8, 5, None, {}),
    "batch_rank2": ((2, 3), 2, 2, 15, 17, 8, 5, "bool_full", {}),
    "single_key_and_row": ((2,), 2, 2, 1, 1, 3, 2, None, {}),
    "one_feature": ((2,), 2, 2, 9, 11, 1, 1, None, {"is_causal": True}),
    "wide_features": ((1,), 2, 2, 20, 20, 33, 70, None, {}),
    # past torch: alignment, window, soft-cap, key lengths (docs/attention.md)
    "bottom_right_L_lt_S": (
        (2,),
        2,
        2,
        13,
        29,
        8,
        5,
        None,
        {"is_causal": True, "causal_alignment": "bottom_right"},
    ),
    "bottom_right_L_gt_S": (  # rows before L - S see no key at all
        (2,),
        2,
        2,
        29,
        13,
        8,
        5,
        "bool_keys",
        {"is_causal": True, "causal_alignment": "bottom_right"},
    ),
    "window_causal": ((2,), 2, 2, 37, 37, 8, 5, None, {"is_causal": True, "window": 6}),
    "window_bottom_right_gqa": (
        (2,),
        4,
        2,
        11,
        40,
        8,
        5,
        "additive_heads",
        {"is_causal": True, "window": 9, "causal_alignment": "bottom_right", "enable_gqa": True},
    ),
    "window_without_causal": ((1,), 2, 2, 23, 31, 8, 5, None, {"window": 4}),
    "softcap": ((2,), 2, 2, 19, 27, 8, 5, None, {"softcap": 1.5, "scale": 1.0}),
    "softcap_mask_dropout": (
        (2,),
        2,
        2,
        19,
        27,
        8,
        5,
        "additive_full",
        {"softcap": 2.0, "dropout_p": 0.3, "seed": 9, "is_causal": True},
    ),
    "key_lengths": ((3,), 2, 2, 19, 27, 8, 5, None, {"key_lengths": np.array([27, 0, 5])}),
    "decode_step": (  # one query row: dot products instead of the tile GEMMs
        (2,),
        4,
        2,
        1,
        300,
        37,
        21,
        "additive_heads",
        {
            "is_causal": True,
            "causal_alignment": "bottom_right",
            "key_lengths": np.array([300, 123]),
            "enable_gqa": True,
        },
    ),
    # a step with more value features than the kernel keeps in registers at once (8 vectors),
    # key counts not multiples of the 8 keys scored together
    "decode_step_wide": ((2,), 2, 2, 1, 45, 70, 150, None, {"key_lengths": np.array([45, 13])}),
    "key_lengths_everything": (
        (2, 2),
        4,
        2,
        17,
        30,
        8,
        5,
        "bool_full",
        {
            "key_lengths": np.array([[30, 3], [12, 29]]),
            "is_causal": True,
            "causal_alignment": "bottom_right",
            "window": 7,
            "softcap": 3.0,
            "enable_gqa": True,
            "dropout_p": 0.2,
            "seed": 3,
        },
    ),
}

TILES = {"tuned": (0, 0), "8x16": (8, 16), "5x7": (5, 7)}


@pytest.fixture(params=list(TILES))
def tiles(request):
    _core._set_attention_tiles(*TILES[request.param])
    yield request.param
    _core._set_attention_tiles(0, 0)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """One thread, or a team of two even on these tiny sizes (which would run on one thread)."""
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(request.param)
    threshold = _core._set_attention_team_threshold(0)
    yield request.param
    _core._set_attention_team_threshold(threshold)
    fusedrnn.set_num_threads(before)


def run_case(name, dtype):
    batch, Hq, Hkv, L, S, E, Ev, mask_kind, options = CASES[name]
    q, k, v, d_out = make_qkv(batch, Hq, Hkv, L, S, E, Ev, dtype=dtype, seed=len(name))
    options = dict(options, attn_mask=_mask(mask_kind, batch, Hq, L, S, dtype))
    fused = run("fused", q, k, v, d_out, **options)
    ref = run("reference", q, k, v, d_out, **options)
    return fused, ref


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_fused_equals_reference(case, dtype, tiles, threads):
    fused, ref = run_case(case, dtype)
    for name, value in fused.items():
        assert value.dtype == dtype, name
    assert_runs_close(fused, ref, dtype, case)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "causal_L_gt_S",
        "bool_full",
        "dropout",
        "gqa",
        "key_lengths_everything",
        "decode_step",
        "decode_step_wide",
    ],
)
def test_every_isa(case, dtype, isa):
    _core._set_attention_tiles(8, 16)
    try:
        fused, ref = run_case(case, dtype)
    finally:
        _core._set_attention_tiles(0, 0)
    assert_runs_close(fused, ref, dtype, f"{case} on {isa}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_tile_gemms_over_several_k_blocks(causal, dtype, isa):
    """Tiles of 300 keys and 300 queries: the tile GEMMs whose k runs over the keys or the
    queries (p v, dS k, dS^T q, p^T dO) take two blocks of k of the step kernel, each scaled
    and added in turn; head sizes of 40 and 24 leave partial panels."""
    q, k, v, d_out = make_qkv((1,), 2, 2, 310, 305, 40, 24, seed=5)
    q, k, v, d_out = (a.astype(dtype) for a in (q, k, v, d_out))
    _core._set_attention_tiles(300, 300)
    try:
        fused = run("fused", q, k, v, d_out, is_causal=causal, scale=0.3)
    finally:
        _core._set_attention_tiles(0, 0)
    ref = run("reference", q, k, v, d_out, is_causal=causal, scale=0.3)
    assert_runs_close(fused, ref, dtype, f"300 x 300 tiles on {isa}")


def test_small_calls_run_on_one_thread_and_agree():
    """Below the work threshold a call skips the team; the results are the team's."""
    q, k, v, d_out = make_qkv((2,), 2, 2, 9, 11, 4, 3, seed=8)
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(2)
    try:
        alone = run("fused", q, k, v, d_out, is_causal=True)
        threshold = _core._set_attention_team_threshold(0)
        try:
            team = run("fused", q, k, v, d_out, is_causal=True)
        finally:
            _core._set_attention_team_threshold(threshold)
    finally:
        fusedrnn.set_num_threads(before)
    assert_runs_close(alone, team, np.float64)


@pytest.mark.parametrize("causal", [False, True])
def test_several_tuned_tiles(causal):
    """Sizes past one tuned tile in every direction (256-row forward tiles, 128-key backward)."""
    q, k, v, d_out = make_qkv((1,), 2, 2, 300, 290, 64, 24, dtype=np.float32, seed=3)
    fused = run("fused", q, k, v, d_out, is_causal=causal)
    ref = run("reference", q, k, v, d_out, is_causal=causal)
    assert_runs_close(fused, ref, np.float32)


def test_float32_error_is_that_of_the_float32_reference():
    """The flash-attention rule: against float64, the fused float32 error is at most a few times
    the float32 reference's own."""
    q, k, v, d_out = make_qkv((2,), 4, 4, 200, 180, 32, 32, seed=5)
    exact = run("reference", q, k, v, d_out, is_causal=True)
    as32 = [x.astype(np.float32) for x in (q, k, v, d_out)]
    fused = run("fused", *as32, is_causal=True)
    ref32 = run("reference", *as32, is_causal=True)
    for name in ("out", "dq", "dk", "dv"):
        err_fused = np.max(np.abs(fused[name] - exact[name]))
        err_ref = np.max(np.abs(ref32[name] - exact[name]))
        assert err_fused <= 3 * err_ref + 1e-6, (name, err_fused, err_ref)


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_fully_masked_rows(mask_kind, threads):
    """Zeros out, lse = +inf, zero gradients for the row, and no NaN anywhere."""
    q, k, v, d_out = make_qkv((2,), 2, 2, 6, 9, 4, 3)
    mask = np.ones((2, 2, 6, 9), bool)
    mask[1, 0, 3] = False
    mask[0, 1, :, 4:] = False
    if mask_kind == "additive":
        mask = np.where(mask, 0.0, -np.inf)
    res = run("fused", q, k, v, d_out, attn_mask=mask)
    assert np.all(res["out"][1, 0, 3] == 0) and res["lse"][1, 0, 3] == np.inf
    assert np.all(res["dq"][1, 0, 3] == 0)
    assert np.all(res["dk"][0, 1, 4:] == 0) and np.all(res["dv"][0, 1, 4:] == 0)
    for name, value in res.items():
        assert not np.any(np.isnan(value)), name
    # S = 0: nothing to attend to at all
    empty = run("fused", q, k[..., :0, :], v[..., :0, :], d_out)
    assert np.all(empty["out"] == 0) and np.all(empty["lse"] == np.inf)
    assert np.all(empty["dq"] == 0) and empty["dk"].shape == (2, 2, 0, 4)


def test_no_head_axis_and_batch_broadcast():
    """2-D (L, E) arrays give an (L, Ev) result; k, v broadcast along q's batch get summed
    gradients of their own shape."""
    q, k, v, d_out = make_qkv(L=6, S=5, E=4, Ev=3, no_head_axis=True)
    for backend in ("fused", "reference"):
        res = run(backend, q, k, v, d_out, attn_mask=np.tril(np.ones((6, 5), bool)))
        assert res["out"].shape == (6, 3) and res["lse"].shape == (6,)
        assert res["dq"].shape == q.shape and res["dv"].shape == v.shape
    q, _, _, d_out = make_qkv((3, 2), 2, 2, 6, 5, 4, 3, seed=1)
    _, k, v, _ = make_qkv((1, 2), 2, 2, 6, 5, 4, 3, seed=2)
    fused = run("fused", q, k, v, d_out)
    ref = run("reference", q, k, v, d_out)
    assert fused["dk"].shape == k.shape and fused["out"].shape == (3, 2, 2, 6, 3)
    assert_runs_close(fused, ref, np.float64)
    # the same as giving the broadcast copies, with their gradients summed
    k_full, v_full = (
        np.broadcast_to(k, (3, 2, 2, 5, 4)).copy(),
        np.broadcast_to(v, (3, 2, 2, 5, 3)).copy(),
    )
    full = run("fused", q, k_full, v_full, d_out)
    assert_close(fused["dk"], full["dk"].sum(axis=0, keepdims=True), np.float64)
    assert_close(fused["out"], full["out"], np.float64)


def test_non_contiguous_inputs_are_read_correctly():
    q, k, v, d_out = make_qkv((2,), 2, 2, 7, 9, 6, 4, seed=3)
    qt = np.asfortranarray(q)
    kt = np.swapaxes(np.swapaxes(k, -1, -2).copy(), -1, -2)  # a transposed view
    mask = (np.random.default_rng(0).random((9, 7)) > 0.4).T  # non-contiguous bool mask
    fused = run("fused", qt, kt, v[..., ::1], d_out, attn_mask=mask)
    ref = run("reference", q, k, v, d_out, attn_mask=mask.copy())
    assert_runs_close(fused, ref, np.float64)


def test_inputs_are_not_modified():
    q, k, v, d_out = make_qkv((2,), 2, 2, 7, 9, 6, 4, seed=4)
    mask = np.random.default_rng(0).standard_normal((7, 9))
    copies = [x.copy() for x in (q, k, v, d_out, mask)]
    run("fused", q, k, v, d_out, attn_mask=mask, is_causal=True)
    for before, after in zip(copies, (q, k, v, d_out, mask)):
        np.testing.assert_array_equal(before, after)


def test_saved_lse_is_interchangeable():
    """The fused backward from the reference forward's (out, lse), and the other way round."""
    q, k, v, d_out = make_qkv((2,), 2, 2, 9, 11, 4, 3, seed=6)
    out_f, lse_f = functional.attention_forward(q, k, v, is_causal=True)
    out_r, lse_r = reference.attention_forward(q, k, v, is_causal=True)
    g_ff = functional.attention_backward(q, k, v, out_f, lse_f, d_out, is_causal=True)
    g_fr = functional.attention_backward(q, k, v, out_r, lse_r, d_out, is_causal=True)
    for a, b in zip(g_ff, g_fr):
        assert_close(a, b, np.float64)


# ---------------------------------------------------------------- additive attention


def additive_inputs(B=3, T=5, S=7, Dq=6, Dk=9, Dv=4, A=19, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "query": rng.standard_normal((B, T, Dq)),
        "keys": rng.standard_normal((B, S, Dk)),
        "values": rng.standard_normal((B, S, Dv)),
        "w_q": rng.uniform(-0.5, 0.5, (A, Dq)),
        "w_k": rng.uniform(-0.5, 0.5, (A, Dk)),
        "w_v": rng.uniform(-1, 1, A),
    }
    return {name: a.astype(dtype) for name, a in x.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize(
    "size",
    [(3, 5, 7, 6, 9, 4, 19), (1, 1, 1, 1, 1, 1, 1), (2, 9, 33, 8, 8, 16, 64)],
    ids=["odd", "ones", "wide"],
)
@pytest.mark.parametrize("masked", [False, True])
def test_additive_fused_equals_reference(size, masked, dtype, threads):
    B, T, S, Dq, Dk, Dv, A = size
    x = additive_inputs(B, T, S, Dq, Dk, Dv, A, dtype=dtype)
    mask = None
    if masked:
        mask = np.random.default_rng(1).random((B, S)) > 0.3
        mask[0] = False  # item 0: every key padded
    d_context = np.random.default_rng(2).standard_normal((B, T, Dv)).astype(dtype)
    results = {}
    for name, impl in (("fused", functional), ("reference", reference)):
        context, weights, qp, kp = impl.additive_attention_forward(**x, key_mask=mask)
        start = {
            "w_q": np.full_like(x["w_q"], 0.5),
            "w_k": np.zeros_like(x["w_k"]),
            "w_v": np.ones_like(x["w_v"]),
        }
        d_query, d_keys, d_values, grads = impl.additive_attention_backward(
            **x, weights=weights, qp=qp, kp=kp, d_context=d_context, key_mask=mask, grads=start
        )
        assert grads is start  # accumulated in place
        results[name] = dict(
            context=context,
            weights=weights,
            qp=qp,
            kp=kp,
            d_query=d_query,
            d_keys=d_keys,
            d_values=d_values,
            **grads,
        )
    for name, value in results["reference"].items():
        assert_close(results["fused"][name], value, dtype, name)
    if masked:
        assert np.all(results["fused"]["context"][0] == 0)
        assert np.all(results["fused"]["d_keys"][0] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_additive_every_isa(dtype, isa):
    x = additive_inputs(2, 4, 19, 5, 6, 3, 37, dtype=dtype)  # 37 hidden units: a partial vector
    mask = np.ones((2, 19), bool)
    mask[1, 5:] = False
    d_context = np.random.default_rng(4).standard_normal((2, 4, 3)).astype(dtype)
    results = []
    for impl in (functional, reference):
        context, weights, qp, kp = impl.additive_attention_forward(**x, key_mask=mask)
        grads = impl.additive_attention_backward(
            **x, weights=weights, qp=qp, kp=kp, d_context=d_context, key_mask=mask
        )
        results.append([context, weights, *grads[:3], *grads[3].values()])
    for a, b in zip(*results):
        assert_close(a, b, dtype, isa)
