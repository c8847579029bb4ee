"""The layers `fusedrnn.LSTM` / `GRU` / `RNN` and cells `LSTMCell` / `GRUCell` / `RNNCell`.

Without PyTorch (parity with torch.nn lives in test_layers_torch.py): the fused backend against
the reference backend over every option that changes what runs (family, layers 1-3, directions,
batch_first, projection, lengths, initial states, unbatched input, dropout, dtype), forward and
backward; the layouts against each other (batch_first, unbatched, lengths against each item run
alone); state dicts, grads, modes; the cells against the layer, and every bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from tests.helpers.cells import assert_close

T, B, I, H = 5, 4, 3, 6
DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["float64", "float32"]

# family -> (layer class, cell class, options both take)
FAMILIES = {
    "lstm": (LSTM, LSTMCell, {}),
    "lstm_proj": (LSTM, None, {"proj_size": 4}),
    "gru": (GRU, GRUCell, {}),
    "gru_reset_before": (GRU, GRUCell, {"reset_after": False}),
    "rnn_tanh": (RNN, RNNCell, {}),
    "rnn_relu": (RNN, RNNCell, {"nonlinearity": "relu"}),
}
CELL_FAMILIES = [name for name, (_, cell, _) in FAMILIES.items() if cell is not None]

# what a forward call is given, besides the layer's own options
SCENARIOS = {
    "plain": {},
    "hx_unsorted_lengths": {"hx": True, "lengths": [3, 5, 1, 4]},  # a length-1 item, unsorted
    "batch_first_equal_lengths": {"batch_first": True, "lengths": [T] * B},
    "unbatched_hx": {"unbatched": True, "hx": True},
}


# ---------------------------------------------------------------- helpers


def make_layer(family, dtype=np.float64, backend="fused", seed=0, **options):
    cls, _, family_options = FAMILIES[family]
    return cls(I, H, dtype=dtype, seed=seed, backend=backend, **family_options, **options)


def random_state(layer, batch, rng, unbatched=False):
    """An h (and c) of the layer's state shapes, for batch size ``batch``."""
    h_shape, c_shape = layer._state_shapes(batch, unbatched)[:2]
    h = rng.standard_normal(h_shape).astype(layer.dtype)
    if isinstance(layer, LSTM):
        return h, rng.standard_normal(c_shape).astype(layer.dtype)
    return h


def state_parts(state):
    return state if isinstance(state, tuple) else (state,)


def run(layer, x, hx=None, lengths=None, seed=1, d_hx=True, layout=lambda a: a):
    """Forward and backward with random output gradients; every result by name.

    ``layout`` maps a gradient drawn in the time-major shape to the output's layout.
    """
    output, h_n = layer(x, hx, lengths=lengths)
    rng = np.random.default_rng(seed)
    d_output = layout(rng.standard_normal(layout(output).shape).astype(layer.dtype))
    d_state = None
    if d_hx:
        d_state = tuple(rng.standard_normal(s.shape).astype(layer.dtype) for s in state_parts(h_n))
        d_state = d_state if isinstance(h_n, tuple) else d_state[0]
    dx, dhx = layer.backward(d_output, d_state)
    results = {"output": output, "dx": dx}
    for i, (s, d) in enumerate(zip(state_parts(h_n), state_parts(dhx))):
        results[f"state{i}"], results[f"dstate{i}"] = s, d
    results.update({f"grad {k}": v.copy() for k, v in layer.grads.items()})
    return results


def assert_all_close(actual, desired, dtype):
    assert actual.keys() == desired.keys()
    for name in desired:
        assert_close(actual[name], desired[name], dtype, name)


def scenario_inputs(layer, scenario, dtype, seed=2):
    rng = np.random.default_rng(seed)
    spec = SCENARIOS[scenario]
    if spec.get("unbatched"):
        x = rng.standard_normal((T, I)).astype(dtype)
    elif layer.batch_first:
        x = rng.standard_normal((B, T, I)).astype(dtype)
    else:
        x = rng.standard_normal((T, B, I)).astype(dtype)
    hx = random_state(layer, B, rng, spec.get("unbatched", False)) if spec.get("hx") else None
    return x, hx, spec.get("lengths")


# ---------------------------------------------------------------- fused against reference


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_layer_equals_reference_layer(family, num_layers, bidirectional, scenario, dtype):
    batch_first = SCENARIOS[scenario].get("batch_first", False)
    results = {}
    for backend in ("fused", "reference"):
        layer = make_layer(
            family,
            dtype,
            backend,
            num_layers=num_layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
        )
        x, hx, lengths = scenario_inputs(layer, scenario, dtype)
        results[backend] = run(layer, x, hx, lengths)
        assert set(layer.grads) == set(layer.state_dict())
    assert_all_close(results["fused"], results["reference"], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("family", ["lstm_proj", "gru_reset_before", "rnn_relu"])
def test_dropout_in_training_same_seed_same_masks_on_both_backends(family, dtype):
    """Same seed: same weights and the same dropout masks whichever backend runs them."""
    results = {}
    for backend in ("fused", "reference"):
        layer = make_layer(
            family, dtype, backend, num_layers=3, bidirectional=True, dropout=0.5, seed=7
        )
        x, hx, lengths = scenario_inputs(layer, "hx_unsorted_lengths", dtype)
        results[backend] = run(layer, x, hx, lengths)
    assert_all_close(results["fused"], results["reference"], dtype)


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("family", ["lstm", "gru", "rnn_tanh"])
def test_dropout_only_in_training_and_eval_is_deterministic(family, backend):
    layer = make_layer(family, backend=backend, num_layers=2, dropout=0.5, seed=3)
    plain = make_layer(family, backend=backend, num_layers=2, seed=3)  # same weights, no dropout
    x, _, _ = scenario_inputs(layer, "plain", np.float64)
    trained, _ = layer(x)
    trained_again, _ = layer(x)
    assert not np.allclose(trained, trained_again)  # fresh masks each forward
    evaluated, h_eval = layer.eval()(x)
    assert not np.allclose(trained, evaluated)
    expected, h_plain = plain.eval()(x)
    np.testing.assert_array_equal(evaluated, expected)
    np.testing.assert_array_equal(state_parts(h_eval)[0], state_parts(h_plain)[0])
    np.testing.assert_array_equal(layer(x)[0], evaluated)


def test_dropout_one_drops_every_layer_output_but_the_last():
    layer = make_layer("rnn_tanh", num_layers=2, dropout=1.0, seed=0)
    rng = np.random.default_rng(0)
    out_a, _ = layer(rng.standard_normal((T, B, I)))
    out_b, _ = layer(rng.standard_normal((T, B, I)))
    np.testing.assert_array_equal(out_a, out_b)  # layer 1 sees zeros either way


def test_dropout_with_one_layer_warns_as_torch():
    with pytest.warns(UserWarning, match="num_layers=1"):
        LSTM(I, H, dropout=0.2)


# ---------------------------------------------------------------- layouts against each other


@pytest.mark.parametrize("family", FAMILIES)
def test_lengths_equal_each_item_run_alone(family):
    """Unsorted lengths, no sorting by the user: each item as if run alone on its own steps."""
    layer = make_layer(family, num_layers=2, bidirectional=True)
    lengths = [3, 5, 1, 4]
    x, hx, _ = scenario_inputs(layer, "hx_unsorted_lengths", np.float64)
    output, h_n = layer(x, hx, lengths=lengths)
    for b, n in enumerate(lengths):
        hx_b = None if hx is None else tuple(s[:, b : b + 1] for s in state_parts(hx))
        hx_b = hx_b if isinstance(hx, tuple) else hx_b[0]
        out_b, h_b = layer(x[:n, b : b + 1], hx_b)
        assert_close(output[:n, b : b + 1], out_b, np.float64, f"output of item {b}")
        assert not np.any(output[n:, b]), "output after an item's length must be zero"
        for full, alone in zip(state_parts(h_n), state_parts(h_b)):
            assert_close(full[:, b : b + 1], alone, np.float64, f"final state of item {b}")


@pytest.mark.parametrize("family", FAMILIES)
def test_lengths_all_full_equal_no_lengths(family):
    layer = make_layer(family, num_layers=2, bidirectional=True)
    x, hx, _ = scenario_inputs(layer, "hx_unsorted_lengths", np.float64)
    with_lengths = run(layer, x, hx, [T] * B)
    layer.zero_grad()
    assert_all_close(run(layer, x, hx, None), with_lengths, np.float64)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_first_is_time_major_transposed(family):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    time_major = make_layer(family, num_layers=2, bidirectional=True)
    batch_first = make_layer(family, num_layers=2, bidirectional=True, batch_first=True)
    hx = random_state(time_major, B, rng)
    expected = run(time_major, x, hx, [2, 5, 1, 5])
    got = run(
        batch_first,
        np.ascontiguousarray(x.swapaxes(0, 1)),
        hx,
        [2, 5, 1, 5],
        layout=lambda a: a.swapaxes(0, 1),
    )
    for name in ("output", "dx"):
        got[name] = np.ascontiguousarray(got[name].swapaxes(0, 1))
    assert_all_close(got, expected, np.float64)


@pytest.mark.parametrize("family", FAMILIES)
def test_unbatched_is_a_batch_of_one(family):
    rng = np.random.default_rng(0)
    layer = make_layer(family, num_layers=2, bidirectional=True)
    x = rng.standard_normal((T, I))
    hx = random_state(layer, 1, rng, unbatched=True)
    got = run(layer, x, hx)
    layer.zero_grad()
    hx_batched = tuple(s[:, None] for s in state_parts(hx))
    expected = run(layer, x[:, None], hx_batched if isinstance(hx, tuple) else hx_batched[0])
    for name, value in expected.items():
        if not name.startswith("grad"):
            expected[name] = value[:, 0]
    assert_all_close(got, expected, np.float64)


@pytest.mark.parametrize("family", FAMILIES)
def test_absent_initial_state_is_zeros_and_still_gets_a_gradient(family):
    layer = make_layer(family, num_layers=2, bidirectional=True)
    x, _, _ = scenario_inputs(layer, "plain", np.float64)
    zeros = tuple(
        np.zeros_like(s) for s in state_parts(random_state(layer, B, np.random.default_rng()))
    )
    absent = run(layer, x, None)
    layer.zero_grad()
    given = run(layer, x, zeros if isinstance(layer, LSTM) else zeros[0])
    assert_all_close(absent, given, np.float64)
    assert absent["dstate0"].shape == zeros[0].shape and np.any(absent["dstate0"])


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_backward_without_input_grad_gives_no_dx_and_the_same_other_gradients(family, backend):
    """``backward(..., input_grad=False)`` (x is data) returns None for dx, and the state and
    parameter gradients of the call that computes dx; the cells' backward alike."""
    layer = make_layer(family, num_layers=2, backend=backend)
    x, hx, lengths = scenario_inputs(layer, "hx_unsorted_lengths", np.float64)
    output, _ = layer(x, hx, lengths=lengths)
    d_output = np.random.default_rng(3).standard_normal(output.shape)
    dx, dhx = layer.backward(d_output, retain_graph=True)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    layer.zero_grad()
    no_dx, no_dx_dhx = layer.backward(d_output, input_grad=False)
    assert dx is not None and no_dx is None
    for got, expected in zip(state_parts(no_dx_dhx), state_parts(dhx)):
        np.testing.assert_array_equal(got, expected)
    for name, expected in grads.items():
        np.testing.assert_array_equal(layer.grads[name], expected, err_msg=name)
    cell_class = FAMILIES[family][1]
    if cell_class is None:
        return
    cell = cell_class(I, H, seed=0, backend=backend, dtype=np.float64, **FAMILIES[family][2])
    cell(x[0])  # two equal steps on the tape, one for each backward
    cell(x[0])
    cell_dx, cell_dhx = cell.backward(np.ones((B, H)))
    cell_grads = {k: v.copy() for k, v in cell.grads.items()}
    cell.zero_grad()
    no_cell_dx, no_cell_dhx = cell.backward(np.ones((B, H)), input_grad=False)
    assert cell_dx is not None and no_cell_dx is None
    for got, expected in zip(state_parts(no_cell_dhx), state_parts(cell_dhx)):
        np.testing.assert_array_equal(got, expected)
    for name, expected in cell_grads.items():
        np.testing.assert_array_equal(cell.grads[name], expected, err_msg=name)


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_none_output_gradients_are_zeros(family):
    layer = make_layer(family, num_layers=2)
    x, _, _ = scenario_inputs(layer, "plain", np.float64)
    output, h_n = layer(x)
    dx_none, _ = layer.backward(retain_graph=True)
    zero_state = tuple(np.zeros_like(s) for s in state_parts(h_n))
    dx_zero, _ = layer.backward(
        np.zeros_like(output),
        zero_state if isinstance(h_n, tuple) else zero_state[0],
        retain_graph=True,
    )
    np.testing.assert_array_equal(dx_none, np.zeros_like(dx_none))
    np.testing.assert_array_equal(dx_none, dx_zero)
    assert all(not np.any(g) for g in layer.grads.values())
    if family == "lstm":  # either part of the LSTM pair may be None
        dx_half, _ = layer.backward(np.zeros_like(output), (None, np.zeros_like(h_n[1])))
        np.testing.assert_array_equal(dx_half, dx_zero)


def test_empty_batch_and_empty_sequence_give_empty_results():
    layer = make_layer("lstm", num_layers=2, bidirectional=True)
    for shape in ((0, B, I), (T, 0, I)):
        output, (h_n, c_n) = layer(np.zeros(shape))
        assert output.shape == (*shape[:2], 2 * H)
        assert h_n.shape == c_n.shape == (4, shape[1], H)
        dx, (dh0, dc0) = layer.backward(np.zeros_like(output))
        assert dx.shape == shape and dh0.shape == dc0.shape == (4, shape[1], H)
    assert all(not np.any(g) for g in layer.grads.values())


# ---------------------------------------------------------------- parameters and state dicts


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]),
        (
            {"bias": False, "bidirectional": True},
            ["weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse", "weight_hh_l0_reverse"],
        ),
        (
            {"num_layers": 2, "proj_size": 2},
            [
                "weight_ih_l0",
                "weight_hh_l0",
                "bias_ih_l0",
                "bias_hh_l0",
                "weight_hr_l0",
                "weight_ih_l1",
                "weight_hh_l1",
                "bias_ih_l1",
                "bias_hh_l1",
                "weight_hr_l1",
            ],
        ),
    ],
)
def test_parameter_names_and_order(options, expected):
    assert list(LSTM(I, H, **options).state_dict()) == expected


def test_parameter_shapes_and_initialisation():
    lstm = LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2, seed=0)
    params = lstm.state_dict()
    assert params["weight_ih_l0"].shape == (4 * H, I)
    assert params["weight_ih_l1_reverse"].shape == (4 * H, 2 * 2)
    assert params["weight_hh_l1"].shape == (4 * H, 2)
    assert params["bias_hh_l0"].shape == (4 * H,)
    assert params["weight_hr_l0_reverse"].shape == (2, H)
    assert GRU(I, H).weight_ih_l0.shape == (3 * H, I)
    assert RNN(I, H).weight_hh_l0.shape == (H, H)
    bound = 1 / np.sqrt(H)
    values = np.concatenate([v.ravel() for v in params.values()])
    assert values.dtype == np.float32
    assert np.all(np.abs(values) <= bound) and values.max() > 0.8 * bound
    assert values.min() < -0.8 * bound


def test_seed_fixes_the_initialisation_across_dtypes_and_backends():
    a = GRU(I, H, seed=5).state_dict()
    b = GRU(I, H, seed=5, dtype=np.float64, backend="reference").state_dict()
    c = GRU(I, H, seed=6).state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name].astype(np.float32))
        assert not np.array_equal(a[name], c[name])


def test_state_dict_returns_copies_and_named_parameters_the_live_arrays():
    layer = make_layer("rnn_tanh")
    snapshot = layer.state_dict()
    snapshot["weight_ih_l0"][:] = 0
    assert np.any(layer.weight_ih_l0)
    for _name, param in layer.named_parameters():
        param[:] = 1
    np.testing.assert_array_equal(layer.state_dict()["bias_hh_l0"], np.ones(H))


def test_load_state_dict_round_trip_casts_floats_and_takes_lists():
    source = make_layer("lstm_proj", num_layers=2, seed=1)
    target = make_layer("lstm_proj", num_layers=2, dtype=np.float32, seed=2)
    live = target.weight_ih_l0
    target.load_state_dict(source.state_dict())  # float64 -> float32, on purpose
    for name, value in source.state_dict().items():
        assert target.state_dict()[name].dtype == np.float32
        np.testing.assert_array_equal(target.state_dict()[name], value.astype(np.float32))
    assert target.weight_ih_l0 is live  # loaded in place: live references stay valid
    as_lists = {k: v.tolist() for k, v in source.state_dict().items()}
    fresh = make_layer("lstm_proj", num_layers=2, seed=3)
    fresh.load_state_dict(as_lists)
    np.testing.assert_array_equal(fresh.weight_hr_l1, source.weight_hr_l1)


def _state_dict_of(cls, **options):
    return cls(I, H, dtype=np.float64, **options).state_dict()


@pytest.mark.parametrize(
    ("make_bad", "error", "pattern"),
    [
        (
            lambda d: {k: v for k, v in d.items() if k != "bias_hh_l1"},
            ValueError,
            r"missing \['bias_hh_l1'\]",
        ),
        (
            lambda d: {**d, "weight_hr_l0": np.zeros((2, H))},
            ValueError,
            r"unexpected \['weight_hr_l0'\]",
        ),
        (
            lambda d: {**d, "weight_ih_l0": np.zeros((4 * H, I + 1))},
            ValueError,
            r"state_dict\['weight_ih_l0'\] has shape \(24, 4\).*expects \(24, 3\)",
        ),
        (
            lambda d: {**d, "bias_ih_l0": d["bias_ih_l0"].astype(complex)},
            TypeError,
            r"state_dict\['bias_ih_l0'\].*complex",
        ),
        (lambda d: {**d, "bias_ih_l0": ["a"] * (4 * H)}, TypeError, r"state_dict\['bias_ih_l0'\]"),
        (
            lambda d: {**d, "bias_ih_l0": np.ones(4 * H, dtype=int)},
            TypeError,
            r"state_dict\['bias_ih_l0'\].*floating",
        ),
        (lambda d: [1, 2], TypeError, "mapping"),
        (
            lambda d: _state_dict_of(GRU, num_layers=2),
            ValueError,
            r"state_dict\['weight_ih_l0'\] has shape \(18, 3\).*another architecture",
        ),
        (lambda d: _state_dict_of(LSTM), ValueError, r"missing \['weight_ih_l1'"),
        (
            lambda d: _state_dict_of(LSTM, num_layers=2, bidirectional=True),
            ValueError,
            r"unexpected \['weight_ih_l0_reverse'",
        ),
        (
            lambda d: _state_dict_of(LSTM, num_layers=2, bias=False),
            ValueError,
            r"missing \['bias_ih_l0'",
        ),
    ],
)
def test_load_state_dict_rejects_and_loads_nothing(make_bad, error, pattern):
    layer = LSTM(I, H, num_layers=2, dtype=np.float64, seed=0)
    before = layer.state_dict()
    with pytest.raises(error, match=pattern):
        layer.load_state_dict(make_bad(layer.state_dict()))
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_load_state_dict_discards_the_saved_forward():
    layer = make_layer("gru")
    x, _, _ = scenario_inputs(layer, "plain", np.float64)
    layer(x)
    layer.load_state_dict(layer.state_dict())
    with pytest.raises(RuntimeError, match="load_state_dict"):
        layer.backward()


# ---------------------------------------------------------------- grads and modes


def test_grads_start_zero_accumulate_and_zero_grad_clears_in_place():
    layer = make_layer("lstm", num_layers=2, bidirectional=True)
    assert list(layer.grads) == list(layer.state_dict())
    assert all(not np.any(g) for g in layer.grads.values())
    x, _, _ = scenario_inputs(layer, "plain", np.float64)
    output, _ = layer(x)
    d_output = np.random.default_rng(0).standard_normal(output.shape)
    dx_once, _ = layer.backward(d_output, retain_graph=True)
    once = {k: v.copy() for k, v in layer.grads.items()}
    arrays = dict(layer.grads)
    dx_twice, _ = layer.backward(d_output)  # allowed: the first backward retained the forward
    np.testing.assert_array_equal(dx_once, dx_twice)
    for name, value in layer.grads.items():
        np.testing.assert_allclose(value, 2 * once[name], rtol=1e-12)
    layer.zero_grad()
    assert all(layer.grads[k] is arrays[k] and not np.any(arrays[k]) for k in arrays)


def test_train_eval_return_self_and_set_training():
    layer = make_layer("rnn_tanh")
    assert layer.training
    assert layer.eval() is layer and not layer.training
    assert layer.train() is layer and layer.training
    assert layer.train(False) is layer and not layer.training


def test_backward_needs_a_training_forward():
    layer = make_layer("lstm")
    x, _, _ = scenario_inputs(layer, "plain", np.float64)
    with pytest.raises(RuntimeError, match="no forward has run"):
        layer.backward()
    layer(x)
    layer.eval()(x)  # an eval forward replaces the saved training forward with nothing
    with pytest.raises(RuntimeError, match="eval mode"):
        layer.backward()


def test_training_output_is_read_only_and_caller_buffers_may_be_reused():
    layer = make_layer("rnn_tanh", num_layers=2)
    x, hx, _ = scenario_inputs(layer, "hx_unsorted_lengths", np.float64)
    expected = run(layer, x.copy(), hx.copy())
    layer.zero_grad()
    output, _ = layer(x, hx)
    with pytest.raises(ValueError, match="read-only"):
        output[0] = 0
    x[:] = 0  # the caller refills its buffers before backward
    hx[:] = 0
    rng = np.random.default_rng(1)
    d_output = rng.standard_normal(output.shape)
    dx, dh0 = layer.backward(d_output, rng.standard_normal(hx.shape))
    assert_close(dx, expected["dx"], np.float64, "dx")
    assert_close(dh0, expected["dstate0"], np.float64, "dh0")
    eval_output, _ = layer.eval()(x)
    eval_output[0] = 0  # nothing saved in eval mode: writeable


def test_forward_does_not_modify_its_inputs():
    layer = make_layer("lstm", num_layers=2, dropout=0.3, batch_first=True)
    x, hx, _ = scenario_inputs(layer, "batch_first_equal_lengths", np.float64)
    hx = random_state(layer, B, np.random.default_rng(0))
    copies = [a.copy() for a in (x, *hx)]
    run(layer, x, hx, [1, 2, 3, 4])
    for before, after in zip(copies, (x, *hx)):
        np.testing.assert_array_equal(before, after)


def test_repr_names_the_non_default_options():
    assert repr(LSTM(3, 6, num_layers=2, proj_size=2)) == "LSTM(3, 6, num_layers=2, proj_size=2)"
    assert (
        repr(GRU(3, 6, reset_after=False, dtype=np.float64))
        == "GRU(3, 6, reset_after=False, dtype=np.float64)"
    )
    assert (
        repr(RNNCell(3, 6, bias=False, nonlinearity="relu"))
        == "RNNCell(3, 6, nonlinearity='relu', bias=False)"
    )


def test_exports():
    for name in (
        "LSTM",
        "GRU",
        "RNN",
        "LSTMCell",
        "GRUCell",
        "RNNCell",
        "functional",
        "reference",
        "show_config",
    ):
        assert name in fusedrnn.__all__ and hasattr(fusedrnn, name)


# ---------------------------------------------------------------- bad input


def _lstm():
    return LSTM(I, H, num_layers=2, dtype=np.float32)


X32 = np.zeros((T, B, I), np.float32)
H32 = np.zeros((2, B, H), np.float32)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda m: m([[0.0] * I] * T),
            TypeError,
            r"x must be a numpy.ndarray of dtype float32, got list",
        ),
        (lambda m: m(X32.astype(np.float64)), TypeError, r"x must have dtype float32.*float64"),
        (lambda m: m(X32.astype(np.int32)), TypeError, r"x must have dtype float32.*int32"),
        (
            lambda m: m(np.zeros((T, B, I + 1), np.float32)),
            ValueError,
            r"x must have shape \(\*, \*, 3\) = \(T, B, input_size\), but has \(5, 4, 4\)",
        ),
        (
            lambda m: m(np.zeros((1, T, B, I), np.float32)),
            ValueError,
            r"x must have shape .*unbatched",
        ),
        (lambda m: m(X32, H32), TypeError, r"hx of LSTM must be a tuple \(h, c\)"),
        (
            lambda m: m(X32, (H32[:1], H32)),
            ValueError,
            (
                r"hx\[0\] \(h\) must have shape \(2, 4, 6\) = \(num_layers\*num_directions, B, "
                r"proj_size or hidden_size\), but has \(1, 4, 6\)"
            ),
        ),
        (
            lambda m: m(X32, (H32, H32.astype(np.float64))),
            TypeError,
            r"hx\[1\] \(c\) must have dtype",
        ),
        (lambda m: m(X32[:, 0], (H32, H32)), ValueError, r"hx\[0\] \(h\) must have shape \(2, 6\)"),
        (
            lambda m: m(X32, lengths=[0, 1, 2, 3]),
            ValueError,
            r"lengths must be in 1..T = 1..5.*lengths\[0\] = 0",
        ),
        (lambda m: m(X32, lengths=[1, 2, 3, 6]), ValueError, r"lengths\[3\] = 6"),
        (
            lambda m: m(X32, lengths=[1, 2, 3]),
            ValueError,
            r"lengths must have shape \(B,\) = \(4,\)",
        ),
        (lambda m: m(X32, lengths=[1.0, 2.0, 3.0, 4.0]), TypeError, r"lengths must hold integers"),
        (lambda m: m(X32, lengths=[True] * B), TypeError, r"lengths must hold integers"),
        (lambda m: m(X32[:, 0], lengths=[T]), ValueError, r"lengths needs batched input"),
    ],
)
def test_forward_rejects(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(_lstm())


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda m, out: m.backward(out.astype(np.float64)),
            TypeError,
            r"d_output must have dtype float32",
        ),
        (
            lambda m, out: m.backward(out[:-1]),
            ValueError,
            r"d_output must have shape \(5, 4, 6\) = \(T, B, num_directions\*H_out\), "
            r"but has \(4, 4, 6\)",
        ),
        (lambda m, out: m.backward(out.tolist()), TypeError, r"d_output must be a numpy.ndarray"),
        (lambda m, out: m.backward(None, H32), TypeError, r"d_hx of LSTM must be a tuple"),
        (
            lambda m, out: m.backward(None, (H32[:, :1], None)),
            ValueError,
            r"d_hx\[0\] \(h\) must have shape",
        ),
        (
            lambda m, out: m.backward(None, (None, H32.astype(np.float64))),
            TypeError,
            r"d_hx\[1\] \(c\) must have dtype float32",
        ),
    ],
)
def test_backward_rejects(call, error, pattern):
    layer = _lstm()
    output, _ = layer(X32)
    with pytest.raises(error, match=pattern):
        call(layer, output)


def test_gru_hx_must_not_be_a_pair():
    layer = GRU(I, H)
    with pytest.raises(TypeError, match=r"hx must be a numpy\.ndarray"):
        layer(X32, (H32[:1], H32[:1]))


@pytest.mark.parametrize(
    ("make", "error", "pattern"),
    [
        (
            lambda: LSTM(I, H, dtype=np.int32),
            TypeError,
            "dtype must be float32 or float64",
        ),
        (lambda: LSTM(I, H, dtype="complex"), TypeError, "dtype must be"),
        (lambda: LSTM(I, H, backend="cuda"), ValueError, "backend must be 'fused' or 'reference'"),
        (lambda: LSTM(I, H, proj_size=H), ValueError, "proj_size must be smaller than hidden_size"),
        (lambda: LSTM(I, H, proj_size=-1), ValueError, "proj_size must be >= 0"),
        (lambda: LSTM(0, H), ValueError, "input_size must be >= 1"),
        (lambda: LSTM(I, 2.5), TypeError, "hidden_size must be an integer"),
        (lambda: LSTM(I, H, num_layers=0), ValueError, "num_layers must be >= 1"),
        (lambda: LSTM(I, H, 2, dropout=1.5), ValueError, r"dropout must be in \[0, 1\]"),
        (lambda: LSTM(I, H, 2, dropout="0.5"), TypeError, "dropout must be a number"),
        (
            lambda: RNN(I, H, nonlinearity="sigmoid"),
            ValueError,
            "nonlinearity must be 'tanh' or 'relu'",
        ),
        (lambda: RNNCell(I, H, nonlinearity="gelu"), ValueError, "nonlinearity must be"),
        (lambda: GRU(I, H, proj_size=2), TypeError, "proj_size"),
    ],
)
def test_constructors_reject(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


# ---------------------------------------------------------------- cells


def make_cell(family, dtype=np.float64, backend="fused", seed=0, **options):
    _, cls, family_options = FAMILIES[family]
    return cls(I, H, dtype=dtype, seed=seed, backend=backend, **family_options, **options)


def cell_state(cell, batch, rng, unbatched=False):
    shape = (H,) if unbatched else (batch, H)
    parts = tuple(
        rng.standard_normal(shape).astype(cell.dtype)
        for _ in range(2 if isinstance(cell, LSTMCell) else 1)
    )
    return parts if isinstance(cell, LSTMCell) else parts[0]


def run_cell(cell, x, hx, seed=1):
    h_new = cell(x, hx)
    rng = np.random.default_rng(seed)
    d = [rng.standard_normal(s.shape).astype(cell.dtype) for s in state_parts(h_new)]
    dx, dhx = cell.backward(*d)
    results = {"dx": dx}
    for i, (s, g) in enumerate(zip(state_parts(h_new), state_parts(dhx))):
        results[f"state{i}"], results[f"dstate{i}"] = s, g
    results.update({f"grad {k}": v.copy() for k, v in cell.grads.items()})
    return results


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("family", CELL_FAMILIES)
def test_fused_cell_equals_reference_cell(family, dtype, bias, unbatched):
    results = {}
    for backend in ("fused", "reference"):
        cell = make_cell(family, dtype, backend, bias=bias)
        rng = np.random.default_rng(2)
        x = rng.standard_normal((I,) if unbatched else (B, I)).astype(dtype)
        results[backend] = run_cell(cell, x, cell_state(cell, B, rng, unbatched))
        assert cell.tape_depth == 0
    assert_all_close(results["fused"], results["reference"], dtype)


def _layer_twin(cell, family):
    """A one-layer layer with the cell's weights (``weight_ih`` -> ``weight_ih_l0``)."""
    layer_cls, _, options = FAMILIES[family]
    layer = layer_cls(I, H, bias=cell.bias, dtype=cell.dtype, backend=cell.backend, **options)
    layer.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    return layer


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("family", CELL_FAMILIES)
def test_cell_loop_with_tape_equals_the_layer(family, backend):
    """T cell steps, then T backwards popping the tape, equal one layer over the sequence."""
    cell = make_cell(family, backend=backend, seed=4)
    layer = _layer_twin(cell, family)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    hx = cell_state(cell, B, rng)
    d_output = rng.standard_normal((T, B, H))
    d_final = cell_state(cell, B, rng)

    layer_hx = tuple(s[None] for s in state_parts(hx))
    output, h_n = layer(x, layer_hx if isinstance(hx, tuple) else layer_hx[0])
    layer_d_final = tuple(s[None] for s in state_parts(d_final))
    dx, dhx = layer.backward(d_output, layer_d_final if isinstance(hx, tuple) else layer_d_final[0])

    state, outputs = hx, []
    for t in range(T):
        state = cell(x[t], state)
        outputs.append(state_parts(state)[0])
    assert cell.tape_depth == T
    assert_close(np.stack(outputs), output, np.float64, "outputs")
    for got, want in zip(state_parts(state), state_parts(h_n)):
        assert_close(got, want[0], np.float64, "final state")
    carried, dxs = list(state_parts(d_final)), []
    for t in reversed(range(T)):
        carried[0] = carried[0] + d_output[t]
        dx_t, carried = cell.backward(*carried)
        carried = list(state_parts(carried))
        dxs.append(dx_t)
    assert cell.tape_depth == 0
    assert_close(np.stack(dxs[::-1]), dx, np.float64, "dx")
    for got, want in zip(carried, state_parts(dhx)):
        assert_close(got, want[0], np.float64, "dh0")
    for name, grad in cell.grads.items():
        assert_close(grad, layer.grads[f"{name}_l0"], np.float64, name)


def test_cell_step_equals_one_layer_step_without_bias_and_unbatched():
    cell = make_cell("lstm", bias=False)
    layer = _layer_twin(cell, "lstm")
    rng = np.random.default_rng(0)
    x, (h, c) = rng.standard_normal(I), cell_state(cell, 1, rng, unbatched=True)
    h1, c1 = cell(x, (h, c))
    output, (_, c_n) = layer(x[None], (h[None], c[None]))
    assert h1.shape == c1.shape == (H,)
    assert_close(h1, output[0], np.float64, "h'")
    assert_close(c1, c_n[0], np.float64, "c'")
    assert set(cell.grads) == {"weight_ih", "weight_hh"}


def test_cell_tape_is_lifo_copies_buffers_and_eval_records_nothing():
    cell = make_cell("gru")
    rng = np.random.default_rng(0)
    buffer = rng.standard_normal((B, I))
    h = cell_state(cell, B, rng)
    first_x = buffer.copy()
    h1 = cell(buffer, h)
    buffer[:] = rng.standard_normal((B, I))  # refilled: the tape kept its own copy
    second_x = buffer.copy()
    h2 = cell(buffer, h1)
    cell.eval()(buffer, h2)
    assert cell.tape_depth == 2
    cell.train()
    dh = rng.standard_normal((B, H))
    dx2, _ = cell.backward(dh)  # pops the second step
    dx1, _ = cell.backward(dh)
    twin = make_cell("gru")
    twin(first_x, h)
    twin(second_x, h1)
    expected2, _ = twin.backward(dh)
    expected1, _ = twin.backward(dh)
    assert_close(dx2, expected2, np.float64, "second step")
    assert_close(dx1, expected1, np.float64, "first step")
    with pytest.raises(RuntimeError, match="tape is empty"):
        cell.backward(dh)
    cell(buffer, h)
    cell.clear_tape()
    assert cell.tape_depth == 0


def test_cell_load_state_dict_clears_the_tape_and_grads_zero_grad():
    cell = make_cell("rnn_relu")
    cell(np.ones((B, I)))
    cell.load_state_dict(cell.state_dict())
    assert cell.tape_depth == 0
    cell(np.ones((B, I)))
    cell.backward(np.ones((B, H)))
    assert any(np.any(g) for g in cell.grads.values())
    cell.zero_grad()
    assert all(not np.any(g) for g in cell.grads.values())


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda c: c.backward(np.ones((B, H), np.float32)),
            RuntimeError,
            r"LSTMCell.backward: the tape is empty",
        ),
        (lambda c: c(np.ones((B, I))), TypeError, "x must have dtype float32"),
        (
            lambda c: c(np.ones((B, I + 1), np.float32)),
            ValueError,
            r"x must have shape \(\*, 3\) = \(B, input_size\), but has \(4, 4\)",
        ),
        (
            lambda c: c(np.ones(I, np.float32), np.ones(H, np.float32)),
            TypeError,
            "hx of LSTMCell must be a tuple",
        ),
        (
            lambda c: c(
                np.ones((B, I), np.float32),
                (np.ones((B, H), np.float32), np.ones((1, H), np.float32)),
            ),
            ValueError,
            r"hx\[1\] \(c\) must have shape \(4, 6\) = \(B, hidden_size\)",
        ),
        (lambda c: c("x"), TypeError, "x must be a numpy.ndarray"),
    ],
)
def test_cell_rejects(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(LSTMCell(I, H))


def test_cell_backward_rejections_keep_the_step():
    cell = GRUCell(I, H)
    cell(np.ones((B, I), np.float32))
    with pytest.raises(TypeError, match="dc is only for LSTMCell: GRUCell has no cell state"):
        cell.backward(np.ones((B, H), np.float32), np.ones((B, H), np.float32))
    with pytest.raises(ValueError, match=r"dh must have shape \(4, 6\)"):
        cell.backward(np.ones((B, H + 1), np.float32))
    with pytest.raises(TypeError, match="dh must have dtype float32"):
        cell.backward(np.ones((B, H)))
    assert cell.tape_depth == 1
    dx, dh_prev = cell.backward(np.ones((B, H), np.float32))
    assert dx.shape == (B, I) and dh_prev.shape == (B, H) and cell.tape_depth == 0
