"""The contract (docs/kernels.md) that both backends keep: None means zeros, parameter gradients
accumulate, inference equals training, dtypes are kept, empty sizes give empty results, outputs are
fresh arrays. Every test runs on the NumPy reference and on the fused kernels."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.helpers.cells import (
    BACKENDS,
    CASES,
    GATES,
    PARAMS,
    backward,
    forward,
    large_weights_sizes,
    loss_weights,
    make_inputs,
)


@pytest.fixture(params=list(BACKENDS))
def backend(request):
    return BACKENDS[request.param]


@pytest.mark.parametrize("case", CASES)
def test_none_output_gradients_mean_zeros(backend, case):
    inputs = make_inputs(case, 3, 2, 3, 4)
    out = forward(case, inputs, backend=backend)
    weights = loss_weights(case, out)
    for missing in weights:
        with_none, _ = backward(case, inputs, out, {**weights, missing: None}, backend=backend)
        zeros = np.zeros_like(weights[missing])
        with_zeros, _ = backward(case, inputs, out, {**weights, missing: zeros}, backend=backend)
        for name in inputs:
            np.testing.assert_array_equal(with_none[name], with_zeros[name], err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_grads_dict_is_accumulated_into(backend, case):
    inputs = make_inputs(case, 3, 2, 3, 4)
    out = forward(case, inputs, backend=backend)
    weights = loss_weights(case, out)
    once, _ = backward(case, inputs, out, weights, backend=backend)

    grads = {name: np.zeros_like(once[name]) for name in PARAMS}
    first, returned = backward(case, inputs, out, weights, grads=grads, backend=backend)
    assert returned is grads
    first = {name: value.copy() for name, value in first.items()}
    second, _ = backward(case, inputs, out, weights, grads=grads, backend=backend)
    for name in PARAMS:  # the fused path may sum in another order: equal up to float64 rounding
        np.testing.assert_allclose(grads[name], 2 * once[name], rtol=1e-12, atol=0, err_msg=name)
    for name in set(inputs) - set(PARAMS):  # activation gradients are fresh, not accumulated
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_inference_forward_equals_training_forward(backend, case):
    inputs = make_inputs(case, 3, 2, 3, 4)
    trained = forward(case, inputs, training=True, backend=backend)
    inferred = forward(case, inputs, training=False, backend=backend)
    assert inferred.pop("workspace") is None
    for name, value in inferred.items():
        np.testing.assert_array_equal(value, trained[name], err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_float32_stays_float32(backend, case):
    inputs32 = make_inputs(case, 3, 2, 3, 4, dtype=np.float32)
    out32 = forward(case, inputs32, backend=backend)
    grads32, _ = backward(case, inputs32, out32, loss_weights(case, out32), backend=backend)
    for name, value in {**out32, **grads32}.items():
        assert value.dtype == np.float32, name

    inputs64 = make_inputs(case, 3, 2, 3, 4)
    out64 = forward(case, inputs64, backend=backend)
    grads64, _ = backward(case, inputs64, out64, loss_weights(case, out64), backend=backend)
    for name in ("y", "h_n"):
        np.testing.assert_allclose(out32[name], out64[name], rtol=1e-4, atol=1e-5)
    for name in grads64:
        np.testing.assert_allclose(grads32[name], grads64[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_workspace_length_is_workspace_size(backend, case, dtype):
    cell, _ = CASES[case]
    T, B, H = 3, 2, 4
    workspace = forward(case, make_inputs(case, T, B, 3, H, dtype=dtype), backend=backend)[
        "workspace"
    ]
    assert workspace.shape == (backend.workspace_size(cell, T, B, H),)
    assert workspace.dtype == dtype
    blocks = {"lstm": 5, "gru": 4, "rnn": 0}[cell]
    assert backend.workspace_size(cell, T, B, H) == T * B * H * blocks


@pytest.mark.parametrize("case", ["lstm", "gru_reset_after"])
def test_backward_without_workspace_is_a_clear_error(backend, case):
    inputs = make_inputs(case, 3, 2, 3, 4)
    out = forward(case, inputs, training=False, backend=backend)
    with pytest.raises(ValueError, match="training=True"):
        backward(case, inputs, out, loss_weights(case, out), backend=backend)


@pytest.mark.parametrize("case", CASES)
def test_wrong_shape_is_a_value_error(backend, case):
    inputs = make_inputs(case, 3, 2, 3, 4)
    inputs["weight_hh"] = inputs["weight_hh"][:, :-1]
    with pytest.raises(ValueError, match="weight_hh"):
        forward(case, inputs, backend=backend)


@pytest.mark.parametrize("case", CASES)
def test_huge_preactivations_saturate_without_warnings(backend, case):
    inputs = make_inputs(case, 3, 2, 3, 4, dtype=np.float32)
    inputs["x"] *= np.float32(1e4)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out = forward(case, inputs, backend=backend)
        backward(case, inputs, out, loss_weights(case, out), backend=backend)
    assert np.all(np.isfinite(out["y"]))
    if out["workspace"].size:  # the saved gates reach their 0 / 1 (and -1 / 1) limits exactly
        gates = out["workspace"][: out["y"].size * GATES[CASES[case][0]]]
        assert np.any(gates == 0) and np.any(gates == 1)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("T", "B"), [(0, 2), (3, 0), (0, 0)])
def test_empty_sequence_or_batch(backend, case, T, B):
    I, H = 3, 4
    inputs = make_inputs(case, T, B, I, H)
    out = forward(case, inputs, backend=backend)
    assert out["y"].shape == (T, B, H)
    assert out["workspace"].shape == (0,)
    if T == 0:
        np.testing.assert_array_equal(out["h_n"], inputs["h0"])
        if "c_n" in out:
            np.testing.assert_array_equal(out["c_n"], inputs["c0"])
    assert out["h_n"].shape == (B, H) and not np.shares_memory(out["h_n"], inputs["h0"])

    weights = loss_weights(case, out)
    start = {name: np.full_like(inputs[name], 7.0) for name in PARAMS}
    grads = {name: value.copy() for name, value in start.items()}
    given, _ = backward(case, inputs, out, weights, grads=grads, backend=backend)
    assert given["x"].shape == (T, B, I)
    for name in PARAMS:
        np.testing.assert_array_equal(grads[name], start[name], err_msg=name)
    if T == 0:
        np.testing.assert_array_equal(given["h0"], weights["dh_n"])
        assert not np.shares_memory(given["h0"], weights["dh_n"])
        if "c0" in given:
            np.testing.assert_array_equal(given["c0"], weights["dc_n"])

    nothing, _ = backward(case, inputs, out, dict.fromkeys(weights), backend=backend)
    for name in set(nothing) - set(PARAMS) - {"x"}:
        np.testing.assert_array_equal(nothing[name], np.zeros((B, H)), err_msg=name)


def test_outputs_are_fresh_arrays(backend):
    inputs = make_inputs("lstm", 3, 2, 3, 4)
    snapshot = {name: value.copy() for name, value in inputs.items()}
    out = forward("lstm", inputs, backend=backend)
    weights = loss_weights("lstm", out)
    grads, _ = backward("lstm", inputs, out, weights, backend=backend)
    for produced in (*out.values(), *grads.values()):
        for given in (*inputs.values(), *weights.values()):
            assert not np.shares_memory(produced, given)
    assert not np.shares_memory(out["h_n"], out["y"])
    for name, value in inputs.items():
        np.testing.assert_array_equal(value, snapshot[name], err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_fused_outputs_start_on_a_cache_line(case):
    """The fused kernels' outputs are 64-byte aligned (numpy's own are 16): a team member's share
    of a row then starts on a cache line, and two cores never write one line."""
    inputs = make_inputs(case, 3, 2, 3, 4)
    out = forward(case, inputs, backend=BACKENDS["fused"])
    grads, _ = backward(case, inputs, out, loss_weights(case, out), backend=BACKENDS["fused"])
    for name, value in (*out.items(), *grads.items()):
        if isinstance(value, np.ndarray) and value.size:
            assert value.ctypes.data % 64 == 0, name


def test_fused_outputs_reuse_freed_buffers_but_never_live_ones():
    """Freed outputs go back to a pool: the next call of the same sizes gets their memory (no page
    faults), while the arrays a caller still holds are never handed out again."""
    inputs = make_inputs("lstm", 5, 3, 4, 8)
    first = forward("lstm", inputs, backend=BACKENDS["fused"])
    second = forward("lstm", inputs, backend=BACKENDS["fused"])
    live = {
        value.ctypes.data
        for value in (*first.values(), *second.values())
        if isinstance(value, np.ndarray)
    }
    assert len(live) == sum(isinstance(v, np.ndarray) for v in (*first.values(), *second.values()))
    freed = {value.ctypes.data for value in first.values() if isinstance(value, np.ndarray)}
    first = None
    third = forward("lstm", inputs, backend=BACKENDS["fused"])
    reused = {value.ctypes.data for value in third.values() if isinstance(value, np.ndarray)}
    assert reused <= freed
    np.testing.assert_array_equal(third["y"], second["y"])


# (T, B, I, H): one step of one row; a sequence whose GEMMs a team splits, over more than one
# block of 256 rows of k (csrc/step_gemm.inc, kBlockK); the RNN's 3 gate rows, a tile of few
# rows; the single step of many rows with a large W_hh (read in place) that the fresh write is
# for; no steps; no rows
FRESH_SIZES = [
    (1, 1, 3, 4),
    (20, 17, 6, 40),
    (20, 13, 5, 3),
    (1, 32, None, None),
    (0, 3, 4, 5),
    (4, 0, 4, 5),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("size", FRESH_SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("case", CASES)
def test_fused_backward_without_grads_sets_every_element(case, size, dtype, isa, threading_mode):
    """Without a grads dict the fused backward sets the parameter gradients in fresh arrays
    instead of adding into zero-filled ones (csrc/recurrent_cell.h, LayerGrads::fresh): the same
    bits as adding into zeros given, and every element written. The arrays come from the memory
    pool, so the first call's gradients are filled with NaN and freed before the second: an
    element the kernel left unwritten would hold a NaN."""
    from fusedrnn import functional

    T, B, I, H = size
    if I is None:
        I, H = large_weights_sizes(case, dtype, "hh")
    inputs = make_inputs(case, T, B, I, H, dtype=dtype)
    out = forward(case, inputs, backend=functional)
    weights = loss_weights(case, out)
    zeros = {name: np.zeros_like(inputs[name]) for name in PARAMS}
    added, _ = backward(case, inputs, out, weights, grads=zeros, backend=functional)
    poisoned = backward(case, inputs, out, weights, backend=functional)[0]
    addresses = set()
    for name in PARAMS:
        poisoned[name].fill(np.nan)
        addresses.add(poisoned[name].__array_interface__["data"][0])
    del poisoned
    fresh, _ = backward(case, inputs, out, weights, backend=functional)
    reused = {fresh[name].__array_interface__["data"][0] for name in PARAMS} & addresses
    assert reused or not T * B, "the pool handed out other memory: nothing was poisoned"
    for name in PARAMS:
        np.testing.assert_array_equal(fresh[name], added[name], err_msg=name)
