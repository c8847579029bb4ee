"""``frozen=`` (parameters whose gradients are not wanted, PyTorch's requires_grad=False): the
fused kernels skip those gradients' GEMMs and the reference drops them. Every other gradient, and
dx, dh0, dc0, keep the bits of the call that computes everything: one-layer cells (one step and a
sequence) and stacks (layers, directions, lengths, projections, peepholes, recurrent noise,
truncation; without dx and the states' gradients, where frozen bottom layers are skipped), both
backends. A given ``grads`` keeps its arrays for frozen parameters untouched; bad names are
errors naming them."""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import functional, reference
from fusedrnn._spec import BIASES
from tests.helpers.cells import CASES, PARAMS, backward, forward, loss_weights, make_inputs
from tests.kernels.test_recurrent_noise import CASES as NOISE_CASES
from tests.kernels.test_recurrent_noise import make_case as noise_case
from tests.kernels.test_stack_fused_vs_reference import CASES as STACK_CASES
from tests.kernels.test_stack_fused_vs_reference import make_stack_inputs

BACKENDS = [functional, reference]
BACKEND_IDS = ["fused", "reference"]
DTYPES = [np.float64, np.float32]
CELL_FROZEN = [
    ("weight_ih",),
    ("weight_hh",),
    ("bias_ih", "bias_hh"),
    ("weight_ih", "weight_hh"),
    PARAMS,
]


@pytest.mark.parametrize("input_grad", [True, False], ids=["dx", "no_dx"])
@pytest.mark.parametrize("frozen", CELL_FROZEN, ids="+".join)
@pytest.mark.parametrize("backend", BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize("size", [(1, 24, 40, 24), (5, 3, 16, 33)], ids=["one_step", "sequence"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_cell_frozen_gradients_are_absent_and_the_others_keep_their_bits(
    case, dtype, size, backend, frozen, input_grad, threading_mode
):
    inputs = make_inputs(case, *size, dtype=dtype)
    out = forward(case, inputs, backend=backend)
    weights = loss_weights(case, out)
    full, _ = backward(case, inputs, out, weights, backend=backend)
    part, grads = backward(
        case, inputs, out, weights, backend=backend, frozen=frozen, input_grad=input_grad
    )
    assert set(grads) == set(PARAMS) - set(frozen)
    assert (part.pop("x") is None) != input_grad
    full.pop("x")
    assert set(part) == set(full) - set(frozen)
    for name, value in part.items():
        np.testing.assert_array_equal(value, full[name], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_cell_given_grads_keep_frozen_arrays_untouched(case, dtype, backend):
    """Accumulation (``+=``) into a given dict reaches the wanted arrays only; the frozen ones
    may be there (untouched) or missing."""
    inputs = make_inputs(case, 4, 3, 7, 5, dtype=dtype)
    out = forward(case, inputs, backend=backend)
    weights = loss_weights(case, out)
    full, _ = backward(case, inputs, out, weights, backend=backend)
    start = {name: np.full_like(inputs[name] if "weight" in name else full[name], 0.25)
             for name in PARAMS}  # fmt: skip
    given = {name: value.copy() for name, value in start.items()}
    _, returned = backward(case, inputs, out, weights, given, backend=backend, frozen=["weight_hh"])
    assert returned is given
    np.testing.assert_array_equal(given["weight_hh"], start["weight_hh"])
    for name in ("weight_ih", "bias_ih", "bias_hh"):
        np.testing.assert_allclose(given[name], start[name] + full[name], rtol=1e-6, atol=1e-6)
    del given["weight_hh"]  # a frozen one may be left out
    _, returned = backward(case, inputs, out, weights, given, backend=backend, frozen=["weight_hh"])
    assert "weight_hh" not in returned


def _frozen_choices(params):
    """Named choices of frozen stack parameters: a whole layer (the bottom one), every weight
    matrix, every bias, and every other name."""
    names = list(params)
    choices = {
        "layer0": [n for n in names if "_l0" in n],
        "weights": [n for n in names if n.startswith("weight") and "peephole" not in n],
        "every_other": names[::2],
    }
    biases = [n for n in names if n.rsplit("_l", 1)[0] in BIASES]
    if biases:
        choices["biases"] = biases
    return choices


def _stack_cases():
    """(mode, x, hx, params, layers, kw) of test_stack_fused_vs_reference's cases (lengths,
    dropout between layers, projections, no bias; one direction also truncated) and
    test_recurrent_noise's (zoneout, recurrent dropout, peepholes, clipping)."""
    rng = np.random.default_rng(21)
    for i, case in enumerate(STACK_CASES):
        mode, layers, bidirectional = case[0], case[2], case[3]
        x, hx, params, kw = make_stack_inputs(*case, rng)
        yield f"{mode}-{i}", (mode, x, hx, params, layers, kw)
        if not bidirectional:
            yield f"{mode}-{i}-truncate3", (mode, x, hx, params, layers, {**kw, "truncate": 3})
    for i, case in enumerate(NOISE_CASES):
        x, hx, params, kw = noise_case(*case, np.float64)
        yield f"{case[0]}-noise{i}", (case[0], x, hx, params, case[2], kw)


STACK_PARAMS = [
    pytest.param(case, name, id=f"{case_id}-{name}")
    for case_id, case in _stack_cases()
    for name in _frozen_choices(case[3])
]


@pytest.mark.parametrize(
    ("input_grad", "state_grad"),
    [(True, True), (False, True), (False, False)],
    ids=["dx", "no_dx", "no_dx_no_states"],
)
@pytest.mark.parametrize("backend", BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize(("case", "choice"), STACK_PARAMS)
def test_stack_frozen_gradients_are_absent_and_the_others_keep_their_bits(
    case, choice, backend, input_grad, state_grad, threading_mode
):
    """Also without dx and the states' gradients (``state_grad=False``), where the fused stack
    skips the layers below the lowest one with a gradient wanted (a frozen bottom layer)."""
    mode, x, hx, params, layers, kw = case
    frozen = _frozen_choices(params)[choice]
    forward_kw = {k: v for k, v in kw.items() if k != "truncate"}
    y, _, _, saved = backend.stack_forward(mode, x, hx, params, layers, **forward_kw)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    full = backend.stack_backward(mode, x, hx, params, layers, y, saved, dy, **kw)
    part = backend.stack_backward(
        mode, x, hx, params, layers, y, saved, dy, frozen=frozen, input_grad=input_grad,
        state_grad=state_grad, **kw,
    )  # fmt: skip
    assert (part[0] is None) != input_grad
    if input_grad:
        np.testing.assert_array_equal(part[0], full[0], err_msg="dx")
    if not state_grad:
        assert part[1] is None and part[2] is None
    for name, a, b in (("dh0", part[1], full[1]), ("dc0", part[2], full[2])):
        if state_grad:
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert set(part[3]) == set(params) - set(frozen)
    for name in part[3]:
        np.testing.assert_array_equal(part[3][name], full[3][name], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS, ids=BACKEND_IDS)
def test_stack_given_grads_keep_frozen_arrays_untouched(backend):
    _, (mode, x, hx, params, layers, kw) = next(_stack_cases())
    y, _, _, saved = backend.stack_forward(mode, x, hx, params, layers, **kw)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    full = backend.stack_backward(mode, x, hx, params, layers, y, saved, dy, **kw)[3]
    frozen = [n for n in params if "_l1" in n]
    given = {name: np.full_like(value, 0.5) for name, value in params.items()}
    returned = backend.stack_backward(
        mode, x, hx, params, layers, y, saved, dy, grads=given, frozen=frozen, **kw
    )[3]
    assert returned is given
    for name in params:
        want = 0.5 if name in frozen else 0.5 + full[name]
        np.testing.assert_allclose(given[name], want, rtol=1e-12, atol=1e-12, err_msg=name)
    for name in frozen:  # a frozen one may be left out; a wanted one may not
        del given[name]
    backend.stack_backward(mode, x, hx, params, layers, y, saved, dy, grads=given, frozen=frozen,
                           **kw)  # fmt: skip
    del given["weight_ih_l0"]
    with pytest.raises(ValueError, match=r"frozen one may be left out.*missing \['weight_ih_l0'\]"):
        backend.stack_backward(mode, x, hx, params, layers, y, saved, dy, grads=given,
                               frozen=frozen, **kw)  # fmt: skip


@pytest.mark.parametrize(
    ("frozen", "error", "match"),
    [
        ("weight_ih", TypeError, "frozen must be a collection of parameter names, got str"),
        (3, TypeError, "frozen must be a collection of parameter names, got int 3"),
        (["weight_xx"], ValueError, r"frozen must name parameters of this call .*'weight_xx'"),
        ([None], ValueError, r"frozen must name parameters of this call .*None"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS, ids=BACKEND_IDS)
def test_bad_frozen_names_raise_naming_them(backend, frozen, error, match):
    inputs = make_inputs("lstm", 2, 3, 4, 5)
    out = forward("lstm", inputs, backend=backend)
    with pytest.raises(error, match=match):
        backward("lstm", inputs, out, loss_weights("lstm", out), backend=backend, frozen=frozen)
    _, (mode, x, hx, params, layers, kw) = next(_stack_cases())
    y, _, _, saved = backend.stack_forward(mode, x, hx, params, layers, **kw)
    stack_names = frozen if not isinstance(frozen, list) else [*frozen, "weight_ih_l0"]
    with pytest.raises(error, match=match):
        backend.stack_backward(mode, x, hx, params, layers, y, saved, frozen=stack_names, **kw)


@pytest.mark.parametrize("backend", BACKENDS, ids=BACKEND_IDS)
def test_stack_with_nothing_wanted_returns_nothing(backend):
    """Every parameter frozen, no dx, no states' gradients: nothing to compute, nothing back."""
    _, (mode, x, hx, params, layers, kw) = next(_stack_cases())
    y, _, _, saved = backend.stack_forward(mode, x, hx, params, layers, **kw)
    got = backend.stack_backward(mode, x, hx, params, layers, y, saved, y, frozen=list(params),
                                 input_grad=False, state_grad=False, **kw)  # fmt: skip
    assert got == (None, None, None, {})
