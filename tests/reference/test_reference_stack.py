"""The NumPy reference of layer stacks (docs/kernels.md, "Layer stacks") and the one-layer options
it is built from (``lengths``, ``reverse``, ``weight_hr``).

Pinned three ways: central differences in float64 for every input, initial state and parameter;
PyTorch's ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (packed sequences for lengths) where it is
installed; and, without PyTorch, each item of a variable-length batch run on its own. The package
never needs PyTorch: those tests skip without it.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import reference
from fusedrnn._spec import STACK_ROLES, layer_suffix, stack_param_names
from tests.helpers.cells import CASES, GATES
from tests.helpers.numgrad import central_differences

T, B, I, H, P = 4, 3, 2, 3, 2  # small: central differences run the stack ~700 times per case
LENGTHS = [3, 1, 4]  # unsorted, a length-1 item and a full-length one
RTOL, ATOL = 1e-6, 1e-8  # float64 against central differences
TORCH_RTOL, TORCH_ATOL = 1e-10, 1e-12  # float64 against PyTorch: the same math, other order


# ---------------------------------------------------------------- helpers


def names(num_layers, bidirectional, proj_size=0, bias=True):
    """PyTorch's parameter names, in PyTorch's order (the same for every cell)."""
    return stack_param_names("lstm", num_layers, bidirectional, bias, proj_size)


def make_stack(
    case,
    num_layers=2,
    bidirectional=True,
    lengths=LENGTHS,
    proj_size=0,
    bias=True,
    dropout=False,
    sizes=(T, B, I, H),
    dtype=np.float64,
    seed=0,
):
    """Inputs and keyword options of one stack call, keyed as ``stack_forward`` takes them."""
    mode, options = CASES[case]
    T_, B_, I_, H_ = sizes
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    H_out = proj_size or H_
    G = GATES[mode]
    params = {}
    for name in names(num_layers, bidirectional, proj_size, bias):
        role, layer = name.split("_l")
        I_k = I_ if layer.startswith("0") else D * H_out
        shape = {
            "weight_ih": (G * H_, I_k),
            "weight_hh": (G * H_, H_out),
            "bias_ih": (G * H_,),
            "bias_hh": (G * H_,),
            "weight_hr": (proj_size, H_),
        }[role]
        params[name] = rng.uniform(-0.6, 0.6, shape).astype(dtype)
    h0 = (0.5 * rng.standard_normal((num_layers * D, B_, H_out))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((num_layers * D, B_, H_))).astype(dtype)
    masks = None
    if dropout:  # p = 0.3: zeros and 1/0.7
        keep = [rng.random((T_, B_, D * H_out)) > 0.3 for _ in range(num_layers - 1)]
        masks = [(m / 0.7).astype(dtype) for m in keep]
    return {
        "mode": mode,
        "x": rng.standard_normal((T_, B_, I_)).astype(dtype),
        "hx": (h0, c0) if mode == "lstm" else h0,
        "params": params,
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "lengths": lengths,
        "dropout_masks": masks,
        "proj_size": proj_size,
        **options,
    }


def forward(setup, training=True):
    y, h_n, c_n, saved = reference.stack_forward(**setup, training=training)
    return {"y": y, "h_n": h_n, "c_n": c_n, "saved": saved}


def backward(setup, out, weights, grads=None):
    """Gradients keyed ``x``, ``h0``, (``c0``), and the params' names."""
    dx, dh0, dc0, grads = reference.stack_backward(
        **setup, y=out["y"], saved=out["saved"], **weights, grads=grads
    )
    result = {"x": dx, "h0": dh0, **grads}
    if dc0 is not None:
        result["c0"] = dc0
    return result


def loss_weights(out, seed=1):
    """Random dy (padded positions too: they must be ignored), dh_n, (dc_n)."""
    rng = np.random.default_rng(seed)
    weights = {
        "dy": rng.standard_normal(out["y"].shape),
        "dh_n": rng.standard_normal(out["h_n"].shape),
    }
    weights["dc_n"] = None if out["c_n"] is None else rng.standard_normal(out["c_n"].shape)
    return weights


def loss(out, weights):
    total = np.sum(out["y"] * weights["dy"]) + np.sum(out["h_n"] * weights["dh_n"])
    if out["c_n"] is not None:
        total += np.sum(out["c_n"] * weights["dc_n"])
    return total


def differentiable_inputs(setup):
    """Every array the loss is differentiated by, keyed as ``backward`` returns its gradient."""
    arrays = {"x": setup["x"]}
    if setup["mode"] == "lstm":
        arrays["h0"], arrays["c0"] = setup["hx"]
    else:
        arrays["h0"] = setup["hx"]
    return {**arrays, **setup["params"]}


def padded(lengths, T_=T):
    """(T, B) bool: True at padded positions t >= lengths[b]."""
    return np.arange(T_)[:, None] >= np.asarray(lengths)[None, :]


# ---------------------------------------------------------------- central differences

# Per mode: every option on at once (2 layers, both directions, unsorted lengths, dropout masks,
# LSTM projection), and a plain stack without bias (no lengths, one direction, no masks).
FD_SETUPS = {
    "all_options": {"bidirectional": True, "lengths": LENGTHS, "dropout": True},
    "plain_no_bias": {"bidirectional": False, "lengths": None, "bias": False},
}


@pytest.mark.parametrize("setup_name", FD_SETUPS)
@pytest.mark.parametrize("case", CASES)
def test_stack_backward_matches_central_differences(case, setup_name):
    options = dict(FD_SETUPS[setup_name])
    if case == "lstm" and setup_name == "all_options":
        options["proj_size"] = P
    setup = make_stack(case, **options)
    out = forward(setup)
    weights = loss_weights(out)
    analytic = backward(setup, out, weights)

    inputs = differentiable_inputs(setup)
    assert set(analytic) == set(inputs)
    for name, value in inputs.items():
        numeric = central_differences(lambda: loss(forward(setup, training=False), weights), value)
        np.testing.assert_allclose(analytic[name], numeric, rtol=RTOL, atol=ATOL, err_msg=name)


# ---------------------------------------------------------------- padding and bookkeeping


@pytest.mark.parametrize("case", CASES)
def test_padded_positions_output_zero_ignore_dy_and_get_zero_dx(case):
    setup = make_stack(case, dropout=True, proj_size=P if case == "lstm" else 0)
    out = forward(setup)
    pad = padded(LENGTHS)
    assert np.all(out["y"][pad] == 0)

    weights = loss_weights(out)
    grads = backward(setup, out, weights)
    assert np.all(grads["x"][pad] == 0)
    changed = dict(weights, dy=weights["dy"].copy())
    changed["dy"][pad] = 1e3
    for name, value in backward(setup, out, changed).items():
        np.testing.assert_array_equal(value, grads[name], err_msg=name)


@pytest.mark.parametrize("case", ["lstm", "gru_reset_before", "rnn_relu"])
def test_full_lengths_and_no_lengths_are_the_same_stack(case):
    none = make_stack(case, lengths=None)
    full = dict(none, lengths=np.full(B, T))
    out_none, out_full = forward(none), forward(full)
    for name in ("y", "h_n", "c_n"):
        np.testing.assert_array_equal(out_full[name], out_none[name], err_msg=name)
    weights = loss_weights(out_none)
    got, expected = backward(full, out_full, weights), backward(none, out_none, weights)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_grads_are_accumulated_keyed_like_params_and_absent_biases_get_no_keys():
    setup = make_stack("gru_reset_after", bias=False)
    out = forward(setup)
    weights = loss_weights(out)
    once = backward(setup, out, weights)
    assert not any(name.startswith("bias") for name in once)

    grads = {name: np.zeros_like(value) for name, value in setup["params"].items()}
    *_, dc0, returned = reference.stack_backward(
        **setup, y=out["y"], saved=out["saved"], **weights, grads=grads
    )
    assert returned is grads and dc0 is None
    backward(setup, out, weights, grads=grads)
    for name in setup["params"]:
        np.testing.assert_allclose(grads[name], 2 * once[name], rtol=1e-14, err_msg=name)


def test_hx_none_means_zeros_and_dropout_masks_of_ones_mean_no_dropout():
    setup = make_stack("lstm", proj_size=P)
    zeros = tuple(np.zeros_like(s) for s in setup["hx"])
    ones = [np.ones((T, B, 2 * P)) for _ in range(setup["num_layers"] - 1)]
    reference_out = forward(dict(setup, hx=zeros))
    for variant in (dict(setup, hx=None), dict(setup, hx=zeros, dropout_masks=ones)):
        out = forward(variant)
        for name in ("y", "h_n", "c_n"):
            np.testing.assert_array_equal(out[name], reference_out[name], err_msg=name)


def test_float32_stays_float32():
    setup = make_stack("lstm", proj_size=P, dropout=True, dtype=np.float32)
    out = forward(setup)
    grads = backward(setup, out, dict.fromkeys(("dy", "dh_n", "dc_n")))
    for name, value in [*out.items(), *grads.items()]:
        if isinstance(value, np.ndarray):
            assert value.dtype == np.float32, name


@pytest.mark.parametrize(("T_", "B_"), [(0, 2), (3, 0)])
def test_empty_sequence_or_batch(T_, B_):
    setup = make_stack("lstm", lengths=None if B_ else [], dropout=True, sizes=(T_, B_, I, H))
    out = forward(setup)
    assert out["y"].shape == (T_, B_, 2 * H)
    if T_ == 0:
        np.testing.assert_array_equal(out["h_n"], setup["hx"][0])
        np.testing.assert_array_equal(out["c_n"], setup["hx"][1])
    weights = loss_weights(out)
    grads = backward(setup, out, weights)
    assert grads["x"].shape == (T_, B_, I)
    if T_ == 0:
        np.testing.assert_array_equal(grads["h0"], weights["dh_n"])
        np.testing.assert_array_equal(grads["c0"], weights["dc_n"])
        for name in setup["params"]:
            assert not np.any(grads[name]), name


# ---------------------------------------------------------------- one layer, item by item


def cell_forward(case, x, h0, c0, w, **options):
    """The one-layer reference: (y, h_n, c_n or None, workspace)."""
    mode, cell_options = CASES[case]
    weights = (w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"])
    if mode == "lstm":
        return reference.lstm_forward(x, h0, c0, *weights, weight_hr=w.get("weight_hr"), **options)
    run = reference.gru_forward if mode == "gru" else reference.rnn_forward
    y, h_n, workspace = run(x, h0, *weights, **cell_options, **options)
    return y, h_n, None, workspace


def cell_backward(case, x, h0, c0, w, y, workspace, dy, dh_n, dc_n, **options):
    """The one-layer reference backward: a dict of dx, dh0, (dc0) and the parameter grads."""
    mode, cell_options = CASES[case]
    if mode == "lstm":
        dx, dh0, dc0, grads = reference.lstm_backward(
            x, h0, c0, w["weight_ih"], w["weight_hh"], y, workspace, dy, dh_n, dc_n,
            weight_hr=w.get("weight_hr"), **options,
        )  # fmt: skip
        return {"x": dx, "h0": dh0, "c0": dc0, **grads}
    run = reference.gru_backward if mode == "gru" else reference.rnn_backward
    args = (x, h0, w["weight_ih"], w["weight_hh"], y, workspace, dy, dh_n)
    dx, dh0, grads = run(*args, **cell_options, **options)
    return {"x": dx, "h0": dh0, **grads}


def cell_inputs(case, projection, seed=0):
    mode, _ = CASES[case]
    rng = np.random.default_rng(seed)
    H_out = P if projection else H
    G = GATES[mode]
    w = {
        "weight_ih": rng.uniform(-0.6, 0.6, (G * H, I)),
        "weight_hh": rng.uniform(-0.6, 0.6, (G * H, H_out)),
        "bias_ih": rng.uniform(-0.3, 0.3, G * H),
        "bias_hh": rng.uniform(-0.3, 0.3, G * H),
    }
    if projection:
        w["weight_hr"] = rng.uniform(-0.6, 0.6, (P, H))
    x = rng.standard_normal((T, B, I))
    h0 = 0.5 * rng.standard_normal((B, H_out))
    c0 = 0.5 * rng.standard_normal((B, H)) if mode == "lstm" else None
    return x, h0, c0, w


def workspace_parts(case, workspace, T_, B_):
    """The flat one-layer workspace as its parts (T, B, G*H) and (T, B, H); none for RNN."""
    mode, _ = CASES[case]
    if mode == "rnn":
        return []
    G = GATES[mode]
    gates, saved = np.split(workspace, [workspace.size // (G + 1) * G])
    return [gates.reshape(T_, B_, G * H), saved.reshape(T_, B_, H)]


CELL_CASES = [(case, False) for case in CASES] + [("lstm", True)]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    ("case", "projection"), CELL_CASES, ids=[c + ("_proj" if p else "") for c, p in CELL_CASES]
)
def test_one_layer_lengths_and_reverse_equal_each_item_run_alone(case, projection, reverse):
    """Item b of a variable-length batch is the plain cell run on its own ``lengths[b]`` steps
    (in reverse time order when ``reverse``): outputs, final state, workspace (indexed by time,
    zero where padded) and every gradient (parameter gradients summed over the items)."""
    x, h0, c0, w = cell_inputs(case, projection)
    y, h_n, c_n, workspace = cell_forward(case, x, h0, c0, w, lengths=LENGTHS, reverse=reverse)
    rng = np.random.default_rng(2)
    dy, dh_n = rng.standard_normal(y.shape), rng.standard_normal(h_n.shape)
    dc_n = None if c_n is None else rng.standard_normal(c_n.shape)
    grads = cell_backward(
        case, x, h0, c0, w, y, workspace, dy, dh_n, dc_n, lengths=LENGTHS, reverse=reverse
    )

    parts = workspace_parts(case, workspace, T, B)
    summed = {name: np.zeros_like(value) for name, value in w.items()}
    for b, n in enumerate(LENGTHS):
        order = slice(None, None, -1) if reverse else slice(None)
        c0_b = None if c0 is None else c0[b : b + 1]
        y_b, h_b, c_b, ws_b = cell_forward(case, x[:n, b : b + 1][order], h0[b : b + 1], c0_b, w)
        np.testing.assert_allclose(y[:n, b], y_b[order][:, 0], rtol=1e-14, atol=1e-15)
        assert np.all(y[n:, b] == 0)
        np.testing.assert_allclose(h_n[b], h_b[0], rtol=1e-14, atol=1e-15)
        if c_n is not None:
            np.testing.assert_allclose(c_n[b], c_b[0], rtol=1e-14, atol=1e-15)
        for part, part_b in zip(parts, workspace_parts(case, ws_b, n, 1)):
            np.testing.assert_allclose(part[:n, b], part_b[order][:, 0], rtol=1e-14, atol=1e-15)
            assert np.all(part[n:, b] == 0)

        dc_b = None if dc_n is None else dc_n[b : b + 1]
        grads_b = cell_backward(
            case, x[:n, b : b + 1][order], h0[b : b + 1], c0_b, w, y_b, ws_b,
            dy[:n, b : b + 1][order], dh_n[b : b + 1], dc_b,
        )  # fmt: skip
        np.testing.assert_allclose(grads["x"][:n, b], grads_b["x"][order][:, 0], rtol=1e-12)
        assert np.all(grads["x"][n:, b] == 0)
        for name in ("h0", "c0") if c0 is not None else ("h0",):
            np.testing.assert_allclose(grads[name][b], grads_b[name][0], rtol=1e-12, err_msg=name)
        for name in summed:
            summed[name] += grads_b[name]
    for name, value in summed.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("case", ["lstm", "gru_reset_before", "rnn_tanh"])
def test_one_layer_explicit_defaults_keep_the_plain_results(case):
    x, h0, c0, w = cell_inputs(case, projection=False)
    plain = cell_forward(case, x, h0, c0, w)
    for options in ({"lengths": None, "reverse": False}, {"lengths": [T] * B}):
        for got, expected in zip(cell_forward(case, x, h0, c0, w, **options), plain):
            if expected is not None:
                np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", ["lstm", "gru_reset_after", "rnn_relu"])
def test_one_layer_reverse_without_lengths_is_the_plain_cell_on_flipped_time(case):
    x, h0, c0, w = cell_inputs(case, projection=case == "lstm")
    y, h_n, c_n, workspace = cell_forward(case, x, h0, c0, w, reverse=True)
    y_f, h_f, c_f, workspace_f = cell_forward(case, x[::-1], h0, c0, w)
    np.testing.assert_allclose(y, y_f[::-1], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(h_n, h_f, rtol=1e-14, atol=1e-15)
    if c_n is not None:
        np.testing.assert_allclose(c_n, c_f, rtol=1e-14, atol=1e-15)
    parts, parts_f = (
        workspace_parts(case, workspace, T, B),
        workspace_parts(case, workspace_f, T, B),
    )
    for part, part_f in zip(parts, parts_f):  # indexed by time: position t = the step reading x[t]
        np.testing.assert_allclose(part, part_f[::-1], rtol=1e-14, atol=1e-15)


ROLES = STACK_ROLES


def one_layer_by_cells(case, setup, weights):
    """A one-layer bidirectional stack computed straight from the cells: direction d is the cell
    with ``reverse = (d == 1)``. Returns outputs and gradients keyed as ``forward`` and
    ``backward`` return them."""
    assert setup["num_layers"] == 1 and setup["bidirectional"]
    params = setup["params"]
    lstm = setup["mode"] == "lstm"
    h0, c0 = setup["hx"] if lstm else (setup["hx"], [None, None])
    H_out = h0.shape[2]
    ys, h_n, c_n = [], [], []
    grads = {"x": 0, "h0": [], "c0": []}
    for d in range(2):
        sfx = layer_suffix(0, d)
        roles = [role for role in ROLES if f"{role}{sfx}" in params]
        w = {role: params[f"{role}{sfx}"] for role in roles}
        for role in ("bias_ih", "bias_hh"):  # an absent bias is zero, its gradient dropped
            w.setdefault(role, np.zeros(len(w["weight_ih"])))
        options = {"lengths": setup["lengths"], "reverse": d == 1}
        y, h_n_d, c_n_d, workspace = cell_forward(case, setup["x"], h0[d], c0[d], w, **options)
        columns = slice(d * H_out, (d + 1) * H_out)
        dc_n = weights["dc_n"][d] if lstm else None
        cell = cell_backward(
            case, setup["x"], h0[d], c0[d], w, y, workspace, weights["dy"][..., columns],
            weights["dh_n"][d], dc_n, **options,
        )  # fmt: skip
        ys.append(y)
        h_n.append(h_n_d)
        c_n.append(c_n_d)
        grads["x"] = grads["x"] + cell["x"]
        grads["h0"].append(cell["h0"])
        grads["c0"].append(cell.get("c0"))
        grads.update({f"{role}{sfx}": cell[role] for role in roles})
    out = {"y": np.concatenate(ys, axis=2), "h_n": np.stack(h_n)}
    out["c_n"] = np.stack(c_n) if lstm else None
    grads["h0"] = np.stack(grads["h0"])
    if lstm:
        grads["c0"] = np.stack(grads["c0"])
    else:
        del grads["c0"]
    return out, grads


@pytest.mark.parametrize("case", CASES)
def test_one_layer_cells_equal_the_one_layer_stack(case):
    setup = make_stack(case, num_layers=1, proj_size=P if case == "lstm" else 0, bias=False)
    out = forward(setup)
    weights = loss_weights(out)
    grads = backward(setup, out, weights)
    expected_out, expected_grads = one_layer_by_cells(case, setup, weights)
    for name in ("y", "h_n", "c_n"):
        if expected_out[name] is None:
            assert out[name] is None
        else:
            np.testing.assert_array_equal(out[name], expected_out[name], err_msg=name)
    assert set(grads) == set(expected_grads)
    for name, value in expected_grads.items():
        np.testing.assert_array_equal(grads[name], value, err_msg=name)


# ---------------------------------------------------------------- against PyTorch


def torch_module(setup, torch):
    """The PyTorch twin of ``setup``, float64, its parameters copied from ``setup["params"]``."""
    mode = setup["mode"]
    classes = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
    options = {"proj_size": setup["proj_size"]} if mode == "lstm" else {}
    if mode == "rnn":
        options["nonlinearity"] = setup["nonlinearity"]
    first = setup["params"]["weight_ih_l0"]
    module = classes[mode](
        input_size=first.shape[1],
        hidden_size=first.shape[0] // GATES[mode],
        num_layers=setup["num_layers"],
        bias="bias_ih_l0" in setup["params"],
        bidirectional=setup["bidirectional"],
        dtype=torch.float64,
        **options,
    )
    torch_params = dict(module.named_parameters())
    assert set(torch_params) == set(setup["params"])  # the same names, PyTorch's
    with torch.no_grad():
        for name, value in setup["params"].items():
            torch_params[name].copy_(torch.from_numpy(value))
    return module


def run_torch(module, x, hx, lengths, weights, torch):
    """Forward and backward of the loss sum(y*dy) + sum(h_n*dh_n) (+ sum(c_n*dc_n)) in PyTorch.

    ``hx`` is None, an array or a pair of arrays; returns the outputs and the gradients keyed as
    ``backward`` does (``x``, ``h0``, ``c0`` when given, the parameter names).
    """
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    xt = torch.tensor(x, requires_grad=True)
    states = {}
    if hx is not None:
        pair = isinstance(hx, tuple)
        states = {"h0": torch.tensor(hx[0] if pair else hx, requires_grad=True)}
        if pair:
            states["c0"] = torch.tensor(hx[1], requires_grad=True)
    hx_t = tuple(states.values()) if len(states) == 2 else states.get("h0")
    if lengths is None:
        y, h_n = module(xt, hx_t)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
        y, h_n = module(packed, hx_t)
        y, _ = pad_packed_sequence(y, total_length=x.shape[0])
    h_n, c_n = h_n if isinstance(h_n, tuple) else (h_n, None)
    total = (y * torch.from_numpy(weights["dy"])).sum() + (
        h_n * torch.from_numpy(weights["dh_n"])
    ).sum()
    if c_n is not None:
        total = total + (c_n * torch.from_numpy(weights["dc_n"])).sum()
    total.backward()
    out = {"y": y.detach().numpy(), "h_n": h_n.detach().numpy()}
    out["c_n"] = None if c_n is None else c_n.detach().numpy()
    grads = {"x": xt.grad.numpy(), **{k: v.grad.numpy() for k, v in states.items()}}
    grads.update({k: v.grad.numpy() for k, v in module.named_parameters()})
    return out, grads


# (case, num_layers, bidirectional, lengths, proj_size, bias): every option, every torch twin
TORCH_SETUPS = [
    ("lstm", 2, True, LENGTHS, P, True),
    ("lstm", 3, False, None, 0, False),
    ("lstm", 2, True, [2, 4, 1], 0, False),
    ("lstm", 3, True, None, P, False),
    ("gru_reset_after", 2, True, LENGTHS, 0, True),
    ("gru_reset_after", 3, False, [4, 2, 1], 0, False),
    ("rnn_tanh", 2, True, LENGTHS, 0, False),
    ("rnn_tanh", 3, False, None, 0, True),
    ("rnn_relu", 3, True, [1, 4, 2], 0, True),
    ("rnn_relu", 2, False, LENGTHS, 0, False),
]


@pytest.mark.parametrize(
    ("case", "num_layers", "bidirectional", "lengths", "proj_size", "bias"),
    TORCH_SETUPS,
    ids=lambda v: str(v) if not isinstance(v, list) else "lengths" + "".join(map(str, v)),
)
def test_stack_matches_torch(case, num_layers, bidirectional, lengths, proj_size, bias):
    torch = pytest.importorskip("torch")
    setup = make_stack(
        case, num_layers, bidirectional, lengths, proj_size, bias, sizes=(5, 3, I, 4)
    )
    out = forward(setup)
    weights = loss_weights(out)
    grads = backward(setup, out, weights)
    module = torch_module(setup, torch)
    expected_out, expected_grads = run_torch(
        module, setup["x"], setup["hx"], lengths, weights, torch
    )
    for name in ("y", "h_n", "c_n"):
        if expected_out[name] is None:
            assert out[name] is None
        else:
            np.testing.assert_allclose(
                out[name], expected_out[name], rtol=TORCH_RTOL, atol=TORCH_ATOL, err_msg=name
            )
    assert set(grads) == set(expected_grads)
    for name, value in expected_grads.items():
        np.testing.assert_allclose(
            grads[name], value, rtol=TORCH_RTOL, atol=TORCH_ATOL, err_msg=name
        )


@pytest.mark.parametrize(("case", "proj_size"), [("lstm", P), ("lstm", 0), ("gru_reset_after", 0),
                                             ("rnn_tanh", 0), ("rnn_relu", 0)])  # fmt: skip
def test_one_layer_cells_with_lengths_reverse_and_projection_match_torch(case, proj_size):
    """The cells' ``lengths`` / ``reverse`` / ``weight_hr`` straight against a one-layer
    bidirectional PyTorch module on a packed batch (forward half reverse=False, reverse half
    reverse=True)."""
    torch = pytest.importorskip("torch")
    setup = make_stack(case, num_layers=1, proj_size=proj_size, sizes=(5, 3, I, 4))
    setup["lengths"] = [4, 1, 5]
    rng = np.random.default_rng(3)
    D_H_out = 2 * (proj_size or 4)
    weights = {"dy": rng.standard_normal((5, 3, D_H_out)),
               "dh_n": rng.standard_normal((2, 3, proj_size or 4)),
               "dc_n": rng.standard_normal((2, 3, 4)) if case == "lstm" else None}  # fmt: skip
    out, grads = one_layer_by_cells(case, setup, weights)
    expected_out, expected_grads = run_torch(
        torch_module(setup, torch), setup["x"], setup["hx"], setup["lengths"], weights, torch
    )
    for name in ("y", "h_n", "c_n"):
        if expected_out[name] is not None:
            np.testing.assert_allclose(
                out[name], expected_out[name], rtol=TORCH_RTOL, atol=TORCH_ATOL, err_msg=name
            )
    assert set(grads) == set(expected_grads)
    for name, value in expected_grads.items():
        np.testing.assert_allclose(
            grads[name], value, rtol=TORCH_RTOL, atol=TORCH_ATOL, err_msg=name
        )


@pytest.mark.parametrize("case", ["lstm", "gru_reset_after", "rnn_tanh"])
def test_stack_with_hx_none_matches_torch_without_hx(case):
    torch = pytest.importorskip("torch")
    setup = dict(make_stack(case, proj_size=P if case == "lstm" else 0), hx=None)
    out = forward(setup)
    weights = loss_weights(out)
    grads = backward(setup, out, weights)
    expected_out, expected_grads = run_torch(
        torch_module(setup, torch), setup["x"], None, LENGTHS, weights, torch
    )
    np.testing.assert_allclose(out["y"], expected_out["y"], rtol=TORCH_RTOL, atol=TORCH_ATOL)
    for name, value in expected_grads.items():
        np.testing.assert_allclose(
            grads[name], value, rtol=TORCH_RTOL, atol=TORCH_ATOL, err_msg=name
        )


@pytest.mark.parametrize("case", ["lstm", "gru_reset_after", "rnn_relu"])
def test_dropout_masks_match_torch_layers_chained_with_the_masks(case):
    """PyTorch's dropout draws its own masks, so chain one-layer PyTorch modules by hand with our
    masks multiplied into every output but the last: the stack with masks must equal that."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    proj = P if case == "lstm" else 0
    setup = make_stack(case, num_layers=3, proj_size=proj, dropout=True)
    out = forward(setup)
    weights = loss_weights(out)
    grads = backward(setup, out, weights)

    mode = setup["mode"]
    L, D = setup["num_layers"], 2
    xt = torch.tensor(setup["x"], requires_grad=True)
    pair = mode == "lstm"
    h0 = torch.tensor(setup["hx"][0] if pair else setup["hx"], requires_grad=True)
    c0 = torch.tensor(setup["hx"][1], requires_grad=True) if pair else None
    lengths = torch.tensor(LENGTHS)
    layer_input, h_ns, c_ns, modules = xt, [], [], []
    for k in range(L):
        layer_params = {  # layer k's parameters named as a one-layer stack's
            name.replace(layer_suffix(k, 0), layer_suffix(0, 0)): value
            for name, value in setup["params"].items()
            if layer_suffix(k, 0) in name
        }
        first = layer_params["weight_ih_l0"]
        layer_setup = dict(setup, params=layer_params, num_layers=1)
        module = torch_module(layer_setup, torch)
        modules.append((k, module))
        assert first.shape[1] == layer_input.shape[2]
        hx = h0[k * D : (k + 1) * D]
        hx = (hx, c0[k * D : (k + 1) * D]) if pair else hx
        packed = pack_padded_sequence(layer_input, lengths, enforce_sorted=False)
        y, h_n = module(packed, hx)
        y, _ = pad_packed_sequence(y, total_length=T)
        h_n, c_n = h_n if pair else (h_n, None)
        h_ns.append(h_n)
        c_ns.append(c_n)
        layer_input = y * torch.from_numpy(setup["dropout_masks"][k]) if k < L - 1 else y
    h_n, y = torch.cat(h_ns), layer_input
    total = (y * torch.from_numpy(weights["dy"])).sum() + (
        h_n * torch.from_numpy(weights["dh_n"])
    ).sum()
    if pair:
        c_n = torch.cat(c_ns)
        total = total + (c_n * torch.from_numpy(weights["dc_n"])).sum()
        np.testing.assert_allclose(
            out["c_n"], c_n.detach().numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL
        )
    total.backward()
    np.testing.assert_allclose(out["y"], y.detach().numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)
    np.testing.assert_allclose(out["h_n"], h_n.detach().numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)
    expected = {"x": xt.grad.numpy(), "h0": h0.grad.numpy()}
    if pair:
        expected["c0"] = c0.grad.numpy()
    for k, module in modules:
        for name, value in module.named_parameters():
            expected[name.replace(layer_suffix(0, 0), layer_suffix(k, 0))] = value.grad.numpy()
    assert set(expected) == set(grads)
    for name, value in expected.items():
        np.testing.assert_allclose(
            grads[name], value, rtol=TORCH_RTOL, atol=TORCH_ATOL, err_msg=name
        )


# ---------------------------------------------------------------- bad input


def lstm_setup():
    return make_stack("lstm", num_layers=2, proj_size=P, dropout=True)


def _set(setup, path, value):
    """``setup`` with ``path`` (a key, or (key, subkey)) replaced by ``value``."""
    setup = dict(setup, params=dict(setup["params"]))
    if isinstance(path, tuple):
        outer, inner = path
        if value is _DELETE:
            del setup[outer][inner]
        else:
            setup[outer][inner] = value
    else:
        setup[path] = value
    return setup


_DELETE = object()
_h0, _c0 = lstm_setup()["hx"]
_w = lstm_setup()["params"]["weight_ih_l1"]
_masks = lstm_setup()["dropout_masks"]

BAD_FORWARD = {
    "missing weight": (
        ("params", "weight_hh_l1"),
        _DELETE,
        ValueError,
        r"missing \['weight_hh_l1'\]",
    ),
    "missing projection": (
        ("params", "weight_hr_l0_reverse"),
        _DELETE,
        ValueError,
        "weight_hr_l0_reverse",
    ),
    "extra key": (
        ("params", "weight_ih_l2"),
        _w,
        ValueError,
        r"unexpected keys \['weight_ih_l2'\]",
    ),
    "misspelt key": (("params", "bias_ih_l0_rev"), np.ones(12), ValueError, "bias_ih_l0_rev"),
    "zero hidden size": (("params", "weight_ih_l0"), np.ones((0, I)), ValueError, r"H >= 1"),
    "wrong shape": (("params", "weight_ih_l1"), _w[:, :-1], ValueError, r"weight_ih_l1.*\(12, 4\)"),
    "wrong bias shape": (("params", "bias_hh_l1"), np.ones(11), ValueError, "bias_hh_l1"),
    "wrong projection shape": (
        ("params", "weight_hr_l1"),
        np.ones((3, 2)),
        ValueError,
        "weight_hr_l1",
    ),
    "wrong dtype": (
        ("params", "weight_hh_l0"),
        np.ones((12, P), np.float32),
        TypeError,
        "weight_hh_l0",
    ),
    "not an array": (("params", "bias_ih_l0"), [0.0] * 12, TypeError, "bias_ih_l0"),
    "length zero": ("lengths", [3, 0, 4], ValueError, r"lengths must be in 1\.\.T"),
    "length above T": ("lengths", [3, 5, 4], ValueError, "lengths must be in"),
    "lengths count": ("lengths", [3, 4], ValueError, r"lengths must have shape \(B,\) = \(3,\)"),
    "lengths float": ("lengths", [3.0, 1.0, 4.0], TypeError, "lengths must hold integers"),
    "lengths bool": ("lengths", [True, True, True], TypeError, "lengths must hold integers"),
    "h0 shape": ("hx", (_h0[:2], _c0), ValueError, r"hx\[0\] \(h0\) must have shape \(4, 3, 2\)"),
    "c0 shape": (
        "hx",
        (_h0, _c0[..., :P]),
        ValueError,
        r"hx\[1\] \(c0\) must have shape \(4, 3, 3\)",
    ),
    "lstm hx not a pair": ("hx", _h0, TypeError, r"hx must be None or a pair"),
    "masks count": (
        "dropout_masks",
        _masks * 2,
        ValueError,
        "dropout_masks must hold num_layers - 1 = 1",
    ),
    "mask shape": (
        "dropout_masks",
        [_masks[0][..., :P]],
        ValueError,
        r"dropout_masks\[0\] must have shape",
    ),
    "mask dtype": (
        "dropout_masks",
        [_masks[0].astype(np.float32)],
        TypeError,
        r"dropout_masks\[0\]",
    ),
    "masks one array": (
        "dropout_masks",
        _masks[0],
        TypeError,
        "dropout_masks must be None or a list",
    ),
    "mode": ("mode", "LSTM", ValueError, "mode must be 'lstm', 'gru' or 'rnn'"),
    "num_layers zero": ("num_layers", 0, ValueError, "num_layers must be >= 1"),
    "num_layers float": ("num_layers", 2.0, TypeError, "num_layers must be an int"),
    "proj_size negative": ("proj_size", -1, ValueError, "proj_size must be >= 0"),
    "x dtype": ("x", np.ones((T, B, I), np.int64), TypeError, "x must have dtype"),
    "x shape": ("x", np.ones((T, B)), ValueError, r"x must have shape \(T, B, I\)"),
}


@pytest.mark.parametrize("bad", BAD_FORWARD)
def test_stack_forward_rejects(bad):
    path, value, error, pattern = BAD_FORWARD[bad]
    setup = _set(lstm_setup(), path, value)
    with pytest.raises(error, match=pattern):
        forward(setup)


def test_stack_rejects_gru_rnn_specific_mistakes():
    gru = make_stack("gru_reset_after")
    with pytest.raises(TypeError, match=r"hx must be None or an array h0 for mode='gru'"):
        forward(dict(gru, hx=(gru["hx"], gru["hx"])))
    with pytest.raises(ValueError, match=r"hx must have shape \(4, 3, 3\)"):
        forward(dict(gru, hx=gru["hx"][:1]))
    rnn = make_stack("rnn_tanh")
    with pytest.raises(ValueError, match="proj_size > 0 is only for mode='lstm'"):
        forward(dict(rnn, proj_size=2))
    with pytest.raises(ValueError, match="nonlinearity"):
        forward(dict(rnn, nonlinearity="sigmoid"))


def test_stack_backward_rejects():
    setup = lstm_setup()
    out = forward(setup)
    weights = loss_weights(out)

    def run(**changes):
        arguments = {"y": out["y"], "saved": out["saved"], **weights, **changes}
        return reference.stack_backward(**setup, **arguments)

    with pytest.raises(ValueError, match="training=True"):
        run(saved=forward(setup, training=False)["saved"])
    with pytest.raises(TypeError, match="saved must be the StackSaved"):
        run(saved=np.zeros(3))
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 3, 4\)"):
        run(dy=weights["dy"][..., :2])
    with pytest.raises(ValueError, match=r"y must have shape"):
        run(y=out["y"][:2])
    with pytest.raises(ValueError, match=r"dh_n must have shape"):
        run(dh_n=weights["dh_n"][:1])
    with pytest.raises(ValueError, match=r"dc_n must have shape"):
        run(dc_n=weights["dc_n"][..., :1])
    grads = {name: np.zeros_like(value) for name, value in setup["params"].items()}
    with pytest.raises(
        ValueError, match=r"grads must have exactly the keys of params; missing \['bias_hh_l0'\]"
    ):
        run(grads={k: v for k, v in grads.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match=r"grads\['weight_hr_l0'\] must have shape"):
        run(grads=dict(grads, weight_hr_l0=np.zeros((P, H + 1))))
    with pytest.raises(
        ValueError, match="saved does not come from a stack_forward with these sizes"
    ):
        run(saved=forward(make_stack("lstm", num_layers=1, proj_size=P))["saved"])

    gru = make_stack("gru_reset_after")
    gru_out = forward(gru)
    with pytest.raises(ValueError, match="dc_n is only for mode='lstm'"):
        reference.stack_backward(
            **gru, y=gru_out["y"], saved=gru_out["saved"], dc_n=np.zeros((4, B, H))
        )


def test_one_layer_options_reject_bad_input():
    x, h0, c0, w = cell_inputs("lstm", projection=True)
    with pytest.raises(ValueError, match="lengths must be in"):
        cell_forward("lstm", x, h0, c0, w, lengths=[1, 2, T + 1])
    with pytest.raises(TypeError, match="lengths must hold integers"):
        cell_forward("lstm", x, h0, c0, w, lengths=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"weight_hr has shape \(2, 4\), expected \(2, 3\)"):
        cell_forward("lstm", x, h0, c0, dict(w, weight_hr=np.ones((P, H + 1))))
    with pytest.raises(ValueError, match=r"weight_hh has shape \(12, 2\), expected \(12, 3\)"):
        cell_forward("lstm", x, np.ones((B, H)), c0, w)  # P is read off h0
    y, _, _, workspace = cell_forward("lstm", x, h0, c0, w)
    grads = {name: np.zeros_like(value) for name, value in w.items() if name != "weight_hr"}
    with pytest.raises(ValueError, match="grads must have a 'weight_hr' key"):
        reference.lstm_backward(
            x, h0, c0, w["weight_ih"], w["weight_hh"], y, workspace, grads=grads,
            weight_hr=w["weight_hr"],
        )  # fmt: skip
