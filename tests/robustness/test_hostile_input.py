"""Hostile input to every public function and layer of the recurrent part.

Every array argument of every call (the one-layer kernels, the layer stacks, the layers and the
cells; tests/helpers/hostile.py builds them) is spoiled in turn:

- wrong types (lists, Python scalars, strings), wrong dtypes (int, bool, complex, object,
  float16, the other float, byte-swapped, structured): a TypeError naming the argument;
- wrong shapes (an axis more or fewer, 0-d, each axis one longer or empty): a ValueError naming
  the argument (or, for an axis whose size the call reads off that argument, naming the argument
  that then disagrees);
- unusual layouts of the same values (read-only, strided, negative strides, Fortran order,
  misaligned): the same result bit for bit as the plain call; for a gradient buffer that is
  accumulated into in place, a ValueError naming it instead (a copy would hide the result);
- and in every case, the inputs are not modified, and a refused call writes nothing.

Then the scalar arguments, lengths, dropout masks, parameter and gradient dicts, and empty
(0-sized) batches and sequences, which must give the reference's (empty) results.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import fusedrnn
from fusedrnn import LSTM, functional, reference
from tests.helpers.hostile import (
    BAD_TYPES,
    CELLS,
    LAYERS,
    LAYOUTS,
    LB,
    LT,
    STACKS,
    all_specs,
    bad_shapes,
    get,
    layer_inputs,
    make_layer,
    put,
    results_equal,
    snapshot,
    stack_inputs,
    unchanged,
)

SPECS = {spec.name: spec for spec in all_specs()}


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny calls: on one thread, so that a busy machine cannot stall a team of two
    at every call (the checks under test run before, and apart from, any threading)."""
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(1)
    yield
    fusedrnn.set_num_threads(before)


def call_spoiled(spec, arg, value):
    """Run ``spec`` with ``arg`` replaced by ``value(original)``; return (result or exception,
    the names of inputs that changed)."""
    fn, kwargs = spec.fresh()
    original = get(kwargs, arg.path)
    with np.errstate(invalid="ignore"):  # e.g. an lse of +inf cast to int
        kwargs = put(kwargs, arg.path, value(original))
    before = snapshot(kwargs)
    try:
        outcome = fn(**kwargs)
    except Exception as error:
        outcome = error
    # A call that failed must have written nothing, not even into gradient buffers.
    touched = unchanged(
        before
        if isinstance(outcome, Exception)
        else [s for s in before if not s[0].startswith("['grads']")]
    )
    return outcome, touched


def expect_error(outcome, error_type, label, what):
    """A message for the failure list, or None when ``outcome`` is the right, named error."""
    if not isinstance(outcome, error_type):
        got = repr(outcome) if isinstance(outcome, Exception) else "a result"
        return f"{what}: expected {error_type.__name__}, got {got}"[:300]
    if not re.match(label, str(outcome), re.DOTALL):
        return f"{what}: {error_type.__name__} does not name the argument: {outcome}"[:300]
    return None


@pytest.mark.parametrize("spec_name", SPECS)
def test_wrong_types_are_type_errors_naming_the_argument(spec_name):
    spec = SPECS[spec_name]
    failures = []
    for arg in spec.args:
        dtype = get(spec.fresh()[1], arg.path).dtype
        for kind, spoil in BAD_TYPES.items():
            if (
                kind in arg.free_kinds
                or (kind == "bool" and dtype == np.dtype(bool))
                or (kind == "byteswapped" and dtype.itemsize == 1)
            ):
                continue  # a valid call, or no change at all
            label = spec.labels() if kind == "other_float" and arg.dtype_defining else arg.label
            outcome, touched = call_spoiled(spec, arg, spoil)
            what = f"{arg.path} {kind}"
            failures.append(expect_error(outcome, TypeError, label, what))
            if touched:
                failures.append(f"{what}: modified {touched}")
        if not arg.optional:
            outcome, _ = call_spoiled(spec, arg, lambda a: None)
            failures.append(expect_error(outcome, arg.none_error, arg.label, f"{arg.path} None"))
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("spec_name", SPECS)
def test_wrong_shapes_are_value_errors_naming_the_argument(spec_name):
    spec = SPECS[spec_name]
    failures = []
    for arg in spec.args:
        _, kwargs = spec.fresh()
        for kind, (value, axis) in bad_shapes(get(kwargs, arg.path)).items():
            if axis in arg.free or kind in arg.free_kinds:
                continue  # another valid size
            loose = axis in arg.defining or (arg.batched_twin and axis == "ndim")
            outcome, touched = call_spoiled(spec, arg, lambda a, v=value: v)
            what = f"{arg.path} {kind}"
            failures.append(
                expect_error(outcome, ValueError, spec.labels() if loose else arg.label, what)
            )
            if touched:
                failures.append(f"{what}: modified {touched}")
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("spec_name", SPECS)
def test_unusual_layouts_give_the_same_result_or_name_the_gradient_buffer(spec_name):
    spec = SPECS[spec_name]
    fn, kwargs = spec.fresh()
    expected = fn(**kwargs)
    failures = []
    for arg in spec.args:
        for kind, layout in LAYOUTS.items():
            value = get(kwargs, arg.path)
            if kind == "fortran_order" and value.ndim < 2:
                continue
            outcome, touched = call_spoiled(spec, arg, layout)
            what = f"{arg.path} {kind}"
            if touched:
                failures.append(f"{what}: modified {touched}")
            if arg.accumulator:
                # accumulated into in place: a copy would hide the result, so it is refused
                failures.append(expect_error(outcome, ValueError, arg.label, what))
            elif isinstance(outcome, Exception):
                failures.append(f"{what}: raised {outcome!r}")
            else:
                differ = results_equal(outcome, expected, spec.exact)
                if differ:
                    failures.append(f"{what}: results differ from the plain call: {differ}")
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)


def test_every_public_call_is_covered():
    """The specs reach every public function of the recurrent part and every layer and cell."""
    covered = {name.split(".")[0] for name in SPECS}
    for name in (
        "lstm_forward",
        "lstm_backward",
        "gru_forward",
        "gru_backward",
        "rnn_forward",
        "rnn_backward",
    ):
        assert name in covered
    assert {f"stack_{p}_{k}" for p in ("forward", "backward") for k in STACKS} <= covered
    assert set(LAYERS) | set(CELLS) <= covered
    assert {
        "scaled_dot_product_attention",
        "attention_forward",
        "attention_backward",
        "additive_attention_forward",
        "additive_attention_backward",
        "MultiheadAttention",
        "AdditiveAttention",
        "ScaledDotProductAttention",
    } <= covered


# ---------------------------------------------------------------- lengths


def stack_call_with_lengths(lengths, layer=False):
    if layer:
        model = make_layer("LSTM")
        x, hx = layer_inputs(model)
        return lambda: model(x, hx, lengths=lengths)
    kwargs = stack_inputs("lstm")
    kwargs["lengths"] = lengths
    return lambda: functional.stack_forward(**kwargs)


BAD_LENGTHS = [  # (lengths for B = 3, T = 4; error; pattern)
    ([-1, 2, 3], ValueError, r"lengths must be in 1..T = 1..4"),
    ([0, 2, 3], ValueError, r"lengths must be in 1..T"),
    ([5, 2, 3], ValueError, r"lengths must be in 1..T"),
    ([2**31, 2, 3], ValueError, r"lengths must be in 1..T"),
    ([2**63 - 1, 2, 3], ValueError, r"lengths must be in 1..T"),
    ([-(2**63), 2, 3], ValueError, r"lengths must be in 1..T"),
    (np.array([2**64 - 1, 2, 3], np.uint64), ValueError, r"lengths must be in 1..T"),
    (np.array([255, 2, 3], np.uint8), ValueError, r"lengths must be in 1..T"),
    ([2**64, 2, 3], TypeError, r"lengths must hold integers"),
    ([4.0, 2.0, 3.0], TypeError, r"lengths must hold integers"),
    ([True, True, True], TypeError, r"lengths must hold integers"),
    (np.array([4, 2, 3], np.complex128), TypeError, r"lengths must hold integers"),
    (np.array([4, 2, 3], object), TypeError, r"lengths must hold integers"),
    (["4", "2", "3"], TypeError, r"lengths must hold integers"),
    ([4, None, 3], TypeError, r"lengths must"),
    ([4, 2], ValueError, r"lengths must have shape \(B,\) = \(3,\)"),
    ([4, 2, 3, 1], ValueError, r"lengths must have shape \(B,\) = \(3,\)"),
    ([[4, 2, 3]], ValueError, r"lengths must have shape"),
    (np.array([[4], [2], [3]]), ValueError, r"lengths must have shape"),
    (4, ValueError, r"lengths must have shape"),
    ([], TypeError, r"lengths must hold integers"),  # np.asarray([]) is float64
]


@pytest.mark.parametrize("layer", [False, True], ids=["stack_forward", "LSTM"])
@pytest.mark.parametrize(("lengths", "error", "pattern"), BAD_LENGTHS)
def test_bad_lengths_are_named(lengths, error, pattern, layer):
    kept = np.array(lengths, dtype=object, copy=True) if isinstance(lengths, np.ndarray) else None
    with pytest.raises(error, match=pattern):
        stack_call_with_lengths(lengths, layer)()
    if kept is not None:
        assert np.array_equal(np.asarray(lengths, dtype=object), kept)


GOOD_LENGTHS = {  # the same lengths [4, 1, 3] in other integer forms
    "list": [4, 1, 3],
    "tuple": (4, 1, 3),
    "int8": np.array([4, 1, 3], np.int8),
    "uint8": np.array([4, 1, 3], np.uint8),
    "uint64": np.array([4, 1, 3], np.uint64),
    "int32_byteswapped": np.array([4, 1, 3], np.dtype(np.int32).newbyteorder()),
    "negative_strides": np.array([3, 1, 4])[::-1],
    "strided": np.array([4, 0, 1, 0, 3, 0])[::2],
    "read_only": np.array([4, 1, 3]),
}
GOOD_LENGTHS["read_only"].flags.writeable = False


@pytest.mark.parametrize("layer", [False, True], ids=["stack_forward", "LSTM"])
@pytest.mark.parametrize("form", GOOD_LENGTHS)
def test_any_integer_form_of_lengths_gives_the_same_result(form, layer):
    lengths = GOOD_LENGTHS[form]
    before = np.array(lengths, copy=True)
    got = stack_call_with_lengths(lengths, layer)()
    want = stack_call_with_lengths(np.array([4, 1, 3], np.int64), layer)()
    assert not results_equal(got, want)
    assert np.array_equal(np.asarray(lengths), before)


# ---------------------------------------------------------------- the other arguments of a stack


def stack_kwargs(key="lstm", **changes):
    kwargs = stack_inputs(key)
    kwargs.update(changes)
    return kwargs


BAD_STACK_ARGUMENTS = [  # (changes to the lstm stack's kwargs, error, pattern)
    ({"mode": "transformer"}, ValueError, r"mode must be 'lstm', 'gru' or 'rnn'"),
    ({"mode": None}, ValueError, r"mode must be"),
    ({"mode": ["lstm"]}, ValueError, r"mode must be"),
    ({"num_layers": 0}, ValueError, r"num_layers must be >= 1, got 0"),
    ({"num_layers": -3}, ValueError, r"num_layers must be >= 1"),
    ({"num_layers": 2.0}, TypeError, r"num_layers must be an integer, got float"),
    ({"num_layers": True}, TypeError, r"num_layers must be an int"),
    ({"num_layers": "2"}, TypeError, r"num_layers must be an int"),
    ({"num_layers": 10**12}, ValueError, r"params hold 20 entries, fewer than"),  # no hang
    ({"num_layers": 2**70}, ValueError, r"params hold 20 entries"),
    ({"num_layers": 3}, ValueError, r"params do not fit a 3-layer bidirectional lstm"),
    ({"proj_size": -1}, ValueError, r"proj_size must be >= 0"),
    ({"proj_size": 1.5}, TypeError, r"proj_size must be an int"),
    ({"proj_size": 3}, ValueError, r"params do not fit|proj_size must be"),
    ({"proj_size": 2**63}, ValueError, r"proj_size|params do not fit"),
    ({"nonlinearity": None}, ValueError, r"nonlinearity must be 'tanh' or 'relu'"),
    ({"nonlinearity": "sigmoid"}, ValueError, r"nonlinearity must be"),
    ({"params": [1, 2]}, TypeError, r"params must be a mapping"),
    ({"params": None}, TypeError, r"params must be a mapping"),
    ({"hx": [1, 2]}, TypeError, r"h0 must be a numpy.ndarray"),
    ({"hx": np.zeros((4, 3, 2))}, TypeError, r"hx of an LSTM must be a tuple"),
    ({"hx": (np.zeros((4, 3, 2)),)}, TypeError, r"hx of an LSTM must be a tuple"),
    ({"dropout_masks": 5}, TypeError, r"dropout_masks must be None or a list"),
    ({"dropout_masks": np.ones((1, 4, 3, 4))}, TypeError, r"dropout_masks must be None or a list"),
    (
        {"dropout_masks": []},
        ValueError,
        r"dropout_masks must hold num_layers - 1 = 1 arrays, got 0",
    ),
    ({"dropout_masks": [np.ones((4, 3, 4))] * 2}, ValueError, r"dropout_masks must hold"),
    ({"dropout_masks": [None]}, TypeError, r"dropout_masks\[0\] must be a numpy.ndarray"),
    (
        {"dropout_masks": [np.ones((4, 3))]},
        ValueError,
        r"dropout_masks\[0\] must have shape \(T, B, num_directions\*H_out\) = \(4, 3, 4\)",
    ),
    (
        {"dropout_masks": [np.ones((4, 3, 4), np.float32)]},
        TypeError,
        r"dropout_masks\[0\] must have dtype float64",
    ),
    (
        {"dropout_masks": [np.ones((4, 3, 4), int)]},
        TypeError,
        r"dropout_masks\[0\] must have dtype",
    ),
]


@pytest.mark.parametrize(
    ("changes", "error", "pattern"),
    BAD_STACK_ARGUMENTS,
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None,
)
def test_bad_stack_arguments_are_named(changes, error, pattern):
    kwargs = stack_kwargs(**changes)
    before = snapshot(kwargs)
    with pytest.raises(error, match=pattern):
        functional.stack_forward(**kwargs)
    assert not unchanged(before)


def test_params_with_missing_unexpected_or_none_entries_are_named():
    base = stack_inputs("lstm")
    params = dict(base["params"])
    del params["weight_hr_l1_reverse"]
    with pytest.raises(ValueError, match=r"missing \['weight_hr_l1_reverse'\]"):
        functional.stack_forward(**{**base, "params": params})
    params = {**base["params"], "weight_ih_l7": np.zeros((12, 5))}
    with pytest.raises(ValueError, match=r"unexpected \['weight_ih_l7'\]"):
        functional.stack_forward(**{**base, "params": params})
    params = {**base["params"], "weight_hh_l1": None}
    with pytest.raises(TypeError, match=r"weight_hh_l1 must be a numpy.ndarray"):
        functional.stack_forward(**{**base, "params": params})
    params = {**base["params"], "weight_hh_l0": np.zeros((3, 2))}  # 3 rows: not 4*hidden_size
    with pytest.raises(ValueError, match=r"weight_hh_l0 must have shape \(4\*hidden_size"):
        functional.stack_forward(**{**base, "params": params})


@pytest.mark.parametrize("backend", [functional, reference], ids=["fused", "reference"])
def test_stack_gradient_dicts_have_exactly_the_keys_of_params(backend):
    """Both backends, the same words: a missing gradient and one of no parameter (a layer's
    learned h0 passed along with the stack's) are refused, never skipped or ignored."""
    kwargs = stack_inputs("lstm")
    y, _h_n, _c_n, saved = backend.stack_forward(**kwargs)
    grads = {k: np.zeros_like(v) for k, v in kwargs["params"].items()}
    missing = {k: v for k, v in grads.items() if k != "bias_hh_l0"}
    with pytest.raises(
        ValueError, match=r"exactly the keys of params; missing \['bias_hh_l0'\], unexpected \[\]"
    ):
        backend.stack_backward(**kwargs, y=y, saved=saved, grads=missing)
    extra = {**grads, "h0": np.zeros(3)}
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['h0'\]"):
        backend.stack_backward(**kwargs, y=y, saved=saved, grads=extra)
    with pytest.raises(TypeError, match="grads must be a dict of arrays or None, got list"):
        backend.stack_backward(**kwargs, y=y, saved=saved, grads=[1])


def test_bad_stack_gradient_dicts_are_named():
    kwargs = stack_inputs("lstm")
    y, _h_n, _c_n, saved = functional.stack_forward(**kwargs)
    grads = {k: np.zeros_like(v) for k, v in kwargs["params"].items()}
    with pytest.raises(TypeError, match="grads must be a dict"):
        functional.stack_backward(**kwargs, y=y, saved=saved, grads=[1])
    with pytest.raises(TypeError, match=r"grads\['weight_ih_l0'\] must be an array .* got None"):
        functional.stack_backward(**kwargs, y=y, saved=saved, grads={**grads, "weight_ih_l0": None})
    with pytest.raises(ValueError, match="saved is None"):
        functional.stack_backward(**kwargs, y=y, saved=None)
    other = functional.stack_forward(
        **{
            **kwargs,
            "x": kwargs["x"][:2],
            "lengths": [2, 1, 2],
            "dropout_masks": [m[:2] for m in kwargs["dropout_masks"]],
        }
    )
    with pytest.raises(ValueError, match=r"saved must come from a stack_forward of x with T = 4"):
        functional.stack_backward(**kwargs, y=y, saved=other[3])  # another T and lengths
    other = functional.stack_forward(**{**kwargs, "lengths": [1, 1, 2]})
    with pytest.raises(ValueError, match=r"lengths must be those given to the stack_forward"):
        functional.stack_backward(**kwargs, y=y, saved=other[3])
    other = functional.stack_forward(
        **{
            **kwargs,
            "x": kwargs["x"][:, :2],
            "lengths": None,
            "hx": tuple(h[:, :2] for h in kwargs["hx"]),
            "dropout_masks": [m[:, :2] for m in kwargs["dropout_masks"]],
        }
    )
    with pytest.raises(ValueError, match=r"saved must have shape \(saved size\)"):
        functional.stack_backward(**{**kwargs, "lengths": None}, y=y, saved=other[3])
    assert not any(g.any() for g in grads.values())


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bad_scalar_arguments_of_the_one_layer_functions(cell):
    from tests.helpers.hostile import SINGLE_CASES, make_inputs

    case, options, _ = SINGLE_CASES[cell]
    inputs = make_inputs(case, 3, 2, 5, 4)
    forward = getattr(functional, f"{cell}_forward")
    if cell == "rnn":
        for bad in (None, 1, "Tanh", ["tanh"]):
            with pytest.raises(ValueError, match=r"nonlinearity must be 'tanh' or 'relu'"):
                forward(**inputs, nonlinearity=bad)
    y, *_, workspace = forward(**inputs, **options)
    backward = getattr(functional, f"{cell}_backward")
    args = {k: inputs[k] for k in ("x", "h0", "c0", "weight_ih", "weight_hh") if k in inputs}
    for bad in (np.zeros(4), [np.zeros(4)], "grads"):
        with pytest.raises(TypeError, match="grads must be a dict"):
            backward(**args, y=y, workspace=workspace, grads=bad, **options)
    if cell == "rnn":
        with pytest.raises(ValueError, match=r"workspace must have shape"):
            backward(**args, y=y, workspace=np.ones(3), **options)
        with pytest.raises(TypeError, match=r"workspace must be a numpy.ndarray"):
            backward(**args, y=y, workspace=[], **options)


@pytest.mark.parametrize(
    ("args", "error", "pattern"),
    [
        (("lstm", -1, 2, 3), ValueError, r"T must be >= 0, got -1"),
        (("gru", 2, -5, 3), ValueError, r"B must be >= 0"),
        (("lstm", 2.5, 2, 3), TypeError, r"T must be an integer, got float"),
        (("lstm", 2, 2, None), TypeError, r"H must be an int"),
        (("lstm", 2**62, 2**62, 3), ValueError, r"does not fit in int64"),
        (("rnn", True, 2, 3), TypeError, r"T must be an int"),
        (("LSTM", 1, 1, 1), ValueError, r"cell must be 'lstm', 'gru' or 'rnn'"),
    ],
)
def test_bad_workspace_size_arguments(args, error, pattern):
    with pytest.raises(error, match=pattern):
        functional.workspace_size(*args)


def test_workspace_size_of_huge_but_representable_sizes_is_exact():
    assert functional.workspace_size("lstm", 2**20, 2**20, 2**20) == 5 * 2**60
    assert functional.workspace_size("gru", np.int64(7), 3, 2) == 7 * 3 * 4 * 2
    assert functional.workspace_size("rnn", 10**30, 10**30, 1) == 0  # the RNN saves nothing


def test_thread_counts_are_checked():
    for bad, error in (
        (0, ValueError),
        (-1, ValueError),
        (1.0, TypeError),
        ("2", TypeError),
        (None, TypeError),
        (True, TypeError),
    ):
        with pytest.raises(error, match="n must be"):
            fusedrnn.set_num_threads(bad)
    assert fusedrnn.get_num_threads() >= 1


# ---------------------------------------------------------------- empty batches and sequences


@pytest.mark.parametrize(("T", "B"), [(0, 3), (4, 0), (0, 0)])
@pytest.mark.parametrize("key", STACKS)
def test_empty_stack_gives_the_reference_results(key, T, B):
    kwargs = stack_inputs(key)
    D = 2 if kwargs["bidirectional"] else 1
    kwargs["x"] = kwargs["x"][:T, :B]
    kwargs["lengths"] = None if kwargs["lengths"] is None or T == 0 else kwargs["lengths"][:B]
    kwargs["dropout_masks"] = [m[:T, :B] for m in kwargs["dropout_masks"]]
    kwargs["hx"] = (
        tuple(h[:, :B] for h in kwargs["hx"])
        if isinstance(kwargs["hx"], tuple)
        else kwargs["hx"][:, :B]
    )
    results = {}
    for name, backend in (("fused", functional), ("reference", reference)):
        y, h_n, c_n, saved = backend.stack_forward(**kwargs)
        grads = {k: np.ones_like(v) for k, v in kwargs["params"].items()}
        dy = np.ones_like(y)
        dh_n = np.ones_like(h_n)
        dx, dh0, dc0, grads = backend.stack_backward(
            **kwargs, y=y, saved=saved, dy=dy, dh_n=dh_n, grads=grads
        )
        results[name] = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, **grads)
    assert results["fused"]["y"].shape == (T, B, D * (kwargs["proj_size"] or 3))
    for k, want in results["reference"].items():
        got = results["fused"][k]
        if want is None:
            assert got is None, k
        else:
            assert got.shape == want.shape and got.dtype == want.dtype, k
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=k)
    if T == 0 or B == 0:  # nothing ran: the states pass through, the parameter grads stay put
        np.testing.assert_array_equal(
            results["fused"]["dh0"], np.ones_like(results["fused"]["dh0"])
        )
        for k in kwargs["params"]:
            np.testing.assert_array_equal(results["fused"][k], np.ones_like(results["fused"][k]))


@pytest.mark.parametrize("name", CELLS)
def test_cells_take_an_empty_batch(name):
    cell = CELLS[name](5, 3, dtype=np.float64, seed=0)
    out = cell(np.zeros((0, 5)))
    parts = out if isinstance(out, tuple) else (out,)
    assert all(p.shape == (0, 3) for p in parts)
    dx, _dhx = cell.backward(np.zeros((0, 3)))
    assert dx.shape == (0, 5)
    assert all(not g.any() for g in cell.grads.values())


def test_layer_empty_batch_with_empty_lengths():
    layer = make_layer("LSTM")
    x, hx = layer_inputs(layer)
    x, hx = x[:, :0], tuple(h[:, :0] for h in hx)
    output, (h_n, c_n) = layer(x, hx, lengths=np.zeros(0, np.int64))
    assert output.shape == (LT, 0, 4) and h_n.shape == (4, 0, 2) and c_n.shape == (4, 0, 3)
    dx, (dh0, _dc0) = layer.backward(np.zeros_like(output))
    assert dx.shape == x.shape and dh0.shape == h_n.shape


def test_layer_rejects_lengths_for_an_empty_sequence():
    layer = make_layer("LSTM")
    x, hx = layer_inputs(layer)
    with pytest.raises(ValueError, match=r"lengths must be in 1..T = 1..0"):
        layer(x[:0], hx, lengths=[1] * LB)


@pytest.mark.parametrize(("N", "L", "S"), [(0, 3, 4), (2, 0, 4), (2, 3, 0), (0, 0, 0)])
def test_multihead_attention_takes_empty_batches_and_sequences(N, L, S):
    """Empty batch, queries or keys: the empty (or, with no keys, bias-only) result of the
    reference backend, and gradients of the inputs' shapes, parameter grads included."""
    rng = np.random.default_rng(0)
    query, key, value = (rng.standard_normal((n, N, 8)) for n in (L, S, S))
    results = {}
    for backend in ("fused", "reference"):
        layer = fusedrnn.MultiheadAttention(8, 2, dtype=np.float64, seed=0, backend=backend)
        output, weights = layer(query, key, value, need_weights=True)
        assert output.shape == (L, N, 8) and weights.shape == (N, L, S)
        d_query, d_key, d_value = layer.backward(np.ones_like(output))
        assert (d_query.shape, d_key.shape, d_value.shape) == (query.shape, key.shape, value.shape)
        results[backend] = (output, weights, d_query, d_key, d_value, layer.grads)
    assert not results_equal(results["fused"], results["reference"], exact=False)


def test_layers_refuse_non_float_state_dicts_and_keep_their_weights():
    layer = LSTM(3, 4, dtype=np.float32, seed=0)
    before = layer.state_dict()
    for bad in (
        {k: v.astype(np.int32) for k, v in before.items()},
        {k: v.astype(complex) for k, v in before.items()},
        {k: v.tolist() if k != "weight_ih_l0" else "w" for k, v in before.items()},
        {k: np.broadcast_to(v, (2, *v.shape)) for k, v in before.items()},
    ):
        with pytest.raises((TypeError, ValueError), match=r"state_dict\['weight_ih_l0'\]"):
            layer.load_state_dict(bad)
        for k, v in layer.state_dict().items():
            np.testing.assert_array_equal(v, before[k])
