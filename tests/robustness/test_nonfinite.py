"""Non-finite values: NaN or +-Inf in any input or weight propagate exactly as in the reference.

One element of one argument at a time becomes NaN, +Inf or -Inf (and, for the weights, a whole
row, so every step meets it); the fused result must have the reference's pattern of NaN, +Inf
and -Inf in every output and gradient, and equal it within the dtype's tolerance where both are
finite. The calls may not hang (each runs under a time limit), abort, or raise: no numpy
floating-point warning or error escapes either, even with every FP error set to 'raise'.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

from fusedrnn import functional, reference
from tests.helpers.cells import CASES, backward, forward, loss_weights, make_inputs, tolerances
from tests.helpers.hostile import stack_inputs

VALUES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def within(seconds, fn, *args, **kwargs):
    """fn(*args, **kwargs), failing the test (not hanging it) if it takes longer."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as error:
            box["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn.__name__} did not return within {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def strict(fn):
    """fn under numpy's strictest error state, with warnings as errors: nothing may fire."""

    def run(*args, **kwargs):
        with warnings.catch_warnings(), np.errstate(all="raise"):
            warnings.simplefilter("error")
            return fn(*args, **kwargs)

    run.__name__ = fn.__name__
    return run


def assert_same_pattern(got, want, dtype, name):
    assert got.shape == want.shape and got.dtype == want.dtype, name
    for kind, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        differ = np.flatnonzero(test(got) != test(want))
        assert not differ.size, (
            f"{name}: {kind} at {differ.size} positions where the reference "
            f"has none or the other way round, e.g. flat index {differ[0]}: "
            f"fused {got.flat[differ[0]]}, reference {want.flat[differ[0]]}"
        )
    finite = np.isfinite(want)
    if finite.any():
        rtol, atol = tolerances(dtype)
        scale = max(1.0, float(np.max(np.abs(want[finite]))))
        np.testing.assert_allclose(
            got[finite], want[finite], rtol=rtol, atol=atol * scale, err_msg=name
        )


def spoil(array, value, where):
    out = array.copy()
    if where == "one":
        out.flat[out.size // 2] = value
    else:  # a whole row of a matrix (every step reads it), or everything of a vector
        out[out.shape[0] // 2] = value
    return out


# ---------------------------------------------------------------- one layer


def one_layer(case, inputs, backend, out_grads=None):
    out = forward(case, inputs, backend=backend)
    grads_in = out_grads if out_grads is not None else loss_weights(case, out)
    grads, _ = backward(case, inputs, out, grads_in, backend=backend)
    return {**{k: v for k, v in out.items() if k != "workspace" and v is not None}, **grads}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_one_layer_nonfinite_inputs_propagate_as_in_the_reference(case, dtype):
    base = make_inputs(case, 4, 3, 5, 6, dtype=dtype)
    out_grads = loss_weights(case, forward(case, base, backend=reference))
    failures = []
    for name in base:
        for label, value in VALUES.items():
            wheres = ("one", "row") if name.startswith("weight") else ("one",)
            for where in wheres:
                inputs = {**base, name: spoil(base[name], value, where)}
                kept = inputs[name].copy()
                with np.errstate(all="ignore"):
                    want = one_layer(case, inputs, reference, out_grads)
                got = within(60, strict(one_layer), case, inputs, functional, out_grads)
                np.testing.assert_array_equal(inputs[name], kept)
                for key in want:
                    try:
                        assert_same_pattern(
                            got[key], want[key], dtype, f"{key} ({name}={label}, {where})"
                        )
                    except AssertionError as error:
                        failures.append(str(error).splitlines()[0][:300])
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", CASES)
def test_one_layer_nonfinite_output_gradients_propagate_as_in_the_reference(case):
    inputs = make_inputs(case, 4, 3, 5, 6)
    base = loss_weights(case, forward(case, inputs, backend=reference))
    failures = []
    for name in base:
        for label, value in VALUES.items():
            out_grads = {**base, name: spoil(base[name], value, "one")}
            with np.errstate(all="ignore"):
                want = one_layer(case, inputs, reference, out_grads)
            got = within(60, strict(one_layer), case, inputs, functional, out_grads)
            for key in want:
                try:
                    assert_same_pattern(got[key], want[key], np.float64, f"{key} ({name}={label})")
                except AssertionError as error:
                    failures.append(str(error).splitlines()[0][:300])
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- stacks


def stack_run(kwargs, backend, dy, dh_n, dc_n):
    y, h_n, c_n, saved = backend.stack_forward(**kwargs)
    dx, dh0, dc0, grads = backend.stack_backward(
        **kwargs, y=y, saved=saved, dy=dy, dh_n=dh_n, dc_n=dc_n
    )
    out = {"y": y, "h_n": h_n, "dx": dx, "dh0": dh0, **grads}
    if c_n is not None:
        out.update(c_n=c_n, dc0=dc0)
    return out


def stack_targets(kwargs):
    """(path, array) of every array a stack call reads."""
    targets = [(("x",), kwargs["x"])]
    hx = kwargs["hx"]
    targets += (
        [(("hx", i), h) for i, h in enumerate(hx)] if isinstance(hx, tuple) else [(("hx",), hx)]
    )
    targets += [(("params", k), v) for k, v in kwargs["params"].items()]
    return targets


@pytest.mark.parametrize("key", ["lstm", "gru", "rnn"])
def test_stack_nonfinite_inputs_propagate_as_in_the_reference(key):
    """Two layers (bidirectional with lengths for lstm and rnn, a projection for lstm), dropout
    masks: NaN / Inf in x, the states, any parameter, and the output gradients."""
    from tests.helpers.hostile import put

    base = stack_inputs(key)
    y, h_n, c_n, _ = reference.stack_forward(**base)
    rng = np.random.default_rng(3)
    grads_in = {
        "dy": rng.standard_normal(y.shape),
        "dh_n": rng.standard_normal(h_n.shape),
        "dc_n": None if c_n is None else rng.standard_normal(c_n.shape),
    }
    failures = []
    cases = [(path, array, "input") for path, array in stack_targets(base)]
    cases += [((name,), array, "grad") for name, array in grads_in.items() if array is not None]
    for path, array, kind in cases:
        for label, value in VALUES.items():
            spoiled = spoil(array, value, "one")
            kwargs, out_grads = base, grads_in
            if kind == "input":
                kwargs = put(base, path, spoiled)
            else:
                out_grads = {**grads_in, path[0]: spoiled}
            with np.errstate(all="ignore"):
                want = stack_run(kwargs, reference, **out_grads)
            got = within(60, strict(stack_run), kwargs, functional, **out_grads)
            for name in want:
                try:
                    assert_same_pattern(
                        got[name], want[name], np.float64, f"{name} ({path}={label})"
                    )
                except AssertionError as error:
                    failures.append(str(error).splitlines()[0][:300])
    assert not failures, "\n".join(failures)


def test_nonfinite_inputs_change_nothing_else():
    """A NaN in one item of the batch stays in that item: the others are bit-identical."""
    inputs = make_inputs("lstm", 4, 3, 5, 6)
    clean = forward("lstm", inputs, backend=functional)
    x = inputs["x"].copy()
    x[2, 1, 3] = np.nan
    dirty = forward("lstm", {**inputs, "x": x}, backend=functional)
    for name in ("y", "h_n", "c_n"):
        a, b = clean[name], dirty[name]
        np.testing.assert_array_equal(np.delete(a, 1, axis=-2), np.delete(b, 1, axis=-2))
    assert np.isnan(dirty["y"][2:, 1]).all() and not np.isnan(dirty["y"][:2]).any()


@pytest.mark.parametrize("garbage", [np.nan, np.inf, -1e308])
@pytest.mark.parametrize("key", ["lstm", "rnn"])
@pytest.mark.parametrize("backend", [functional, reference], ids=["fused", "reference"])
def test_values_at_padded_steps_do_not_matter(backend, key, garbage):
    """Padded steps (t >= lengths[b]) of x, of the dropout masks and of dy are no input: NaN, Inf
    or huge garbage there (an np.empty buffer filled only up to each length) changes nothing.
    (Before, x there reached the weight gradients as 0 * NaN, in both backends.)"""
    kwargs = stack_inputs(key)
    lengths = kwargs["lengths"]
    padded = np.arange(kwargs["x"].shape[0])[:, None] >= lengths[None, :]  # (T, B)
    y, h_n, _, _ = reference.stack_forward(**kwargs)
    rng = np.random.default_rng(2)
    dy = rng.standard_normal(y.shape)
    dh_n = rng.standard_normal(h_n.shape)
    clean = stack_run(kwargs, backend, dy, dh_n, None)
    dirty_kwargs = dict(kwargs)
    dirty_kwargs["x"] = kwargs["x"].copy()
    dirty_kwargs["x"][padded] = garbage
    dirty_kwargs["dropout_masks"] = [m.copy() for m in kwargs["dropout_masks"]]
    for m in dirty_kwargs["dropout_masks"]:
        m[padded] = garbage
    dirty_dy = dy.copy()
    dirty_dy[padded] = garbage
    with np.errstate(all="ignore"):
        dirty = stack_run(dirty_kwargs, backend, dirty_dy, dh_n, None)
    for name, value in clean.items():
        assert np.isfinite(dirty[name]).all(), name
        np.testing.assert_allclose(dirty[name], value, rtol=1e-12, atol=1e-12, err_msg=name)
    assert not dirty["dx"][padded].any()


# ---------------------------------------------------------------- attention
#
# The reference computes whole L x S matrices, so a NaN in one key reaches, as 0 * NaN, rows that
# cannot see that key (masked, or past the causal diagonal) and their gradients; the fused
# kernels skip the tiles that are masked as a whole, but inside a tile a masked key still meets
# its value as 0 * NaN in the GEMM, as in flash attention. So for attention: (1) the fused
# results are non-finite only where the reference's are (no spurious NaN / Inf), and (2) a NaN
# reaches every output row that depends on it (none is silently swallowed), and every output
# row that stays finite is bit for bit that of the clean call.


def attention_run(backend, q, k, v, d_out, mask, causal):
    out, lse = backend.attention_forward(q, k, v, mask, is_causal=causal)
    dq, dk, dv = backend.attention_backward(q, k, v, out, lse, d_out, mask, is_causal=causal)
    return {"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv}


def assert_nonfinite_within_reference(got, want, name):
    spurious = np.flatnonzero(~np.isfinite(got) & np.isfinite(want))
    assert not spurious.size, (
        f"{name}: non-finite at {spurious.size} positions where the "
        f"reference is finite, e.g. flat index {spurious[0]}: "
        f"{got.flat[spurious[0]]} vs {want.flat[spurious[0]]}"
    )


def visible(mask, causal, L, S):
    """(N, H, L, S) bool: which keys each query row attends to."""
    seen = (
        np.ones((L, S), bool)
        if mask is None
        else (mask if mask.dtype == bool else np.isfinite(mask) | (mask > 0))
    )
    if causal:
        seen = seen & np.tril(np.ones((L, S), bool))
    return seen


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_nonfinite_values_reach_exactly_what_depends_on_them(mask_kind, causal):
    from tests.helpers.hostile import attention_inputs

    base = attention_inputs()
    bool_mask = base["attn_mask"]
    mask = {"none": None, "bool": bool_mask, "additive": np.where(bool_mask, 0.0, -np.inf)}[
        mask_kind
    ]
    q, k, v = base["q"], base["k"], base["v"]
    d_out = np.random.default_rng(5).standard_normal((*q.shape[:-1], v.shape[-1]))
    L, S = q.shape[2], k.shape[2]
    seen = visible(mask, causal, L, S)  # (N, H, L, S)
    clean = attention_run(functional, q, k, v, d_out, mask, causal)
    arrays = {"q": q, "k": k, "v": v, "d_out": d_out}
    if mask_kind == "additive":
        arrays["mask"] = mask
    failures = []
    for name, array in arrays.items():
        for label, value in VALUES.items():
            spoiled = {**arrays, name: spoil(array, value, "one")}
            args = (
                spoiled["q"],
                spoiled["k"],
                spoiled["v"],
                spoiled["d_out"],
                spoiled.get("mask", mask),
                causal,
            )
            with np.errstate(all="ignore"):
                want = attention_run(reference, *args)
            got = within(60, strict(attention_run), functional, *args)
            for key in want:
                try:
                    assert_nonfinite_within_reference(
                        got[key], want[key], f"{key} ({name}={label})"
                    )
                except AssertionError as error:
                    failures.append(str(error)[:300])
            if label != "nan" or name not in ("q", "k", "v"):
                continue
            # which query rows depend on the spoiled element
            index = np.unravel_index(array.size // 2, array.shape)
            n, h = index[0], index[1]
            rows = np.zeros(q.shape[:3], bool)
            seen_nh = seen if seen.ndim == 2 else seen[n, h]
            if name == "q":
                rows[n, h, index[2]] = seen_nh[index[2]].any()
            else:
                rows[n, h] = seen_nh[:, index[2]]
            out_nan = np.isnan(got["out"]).any(axis=-1)
            if (rows & ~out_nan).any():
                failures.append(
                    f"out ({name}=nan): rows {np.argwhere(rows & ~out_nan).tolist()} "
                    f"depend on the NaN but are finite"
                )
            finite = ~out_nan
            if not np.array_equal(got["out"][finite], clean["out"][finite]):
                failures.append(f"out ({name}=nan): finite rows differ from the clean call")
    assert not failures, "\n".join(failures)


def test_additive_attention_nonfinite_values_reach_exactly_what_depends_on_them():
    from tests.helpers.hostile import additive_inputs

    base = additive_inputs()
    d_context = np.random.default_rng(6).standard_normal((2, 3, 2))

    def run(backend, inputs, d_ctx):
        context, weights, qp, kp = backend.additive_attention_forward(**inputs)
        grads = backend.additive_attention_backward(
            **inputs, weights=weights, qp=qp, kp=kp, d_context=d_ctx
        )
        return {
            "context": context,
            "weights": weights,
            "d_query": grads[0],
            "d_keys": grads[1],
            "d_values": grads[2],
            **grads[3],
        }

    clean = run(functional, base, d_context)
    failures = []
    for name in ["query", "keys", "values", "w_q", "w_k", "w_v", "d_context"]:
        for label, value in VALUES.items():
            inputs, d_ctx = dict(base), d_context
            if name == "d_context":
                d_ctx = spoil(d_context, value, "one")
            else:
                inputs[name] = spoil(base[name], value, "one")
            with np.errstate(all="ignore"):
                want = run(reference, inputs, d_ctx)
            got = within(60, strict(run), functional, inputs, d_ctx)
            for key in want:
                try:
                    assert_nonfinite_within_reference(
                        got[key], want[key], f"{key} ({name}={label})"
                    )
                except AssertionError as error:
                    failures.append(str(error)[:300])
            if label != "nan" or name == "d_context":
                continue
            # a NaN query reaches its own row; a NaN weight every row; a NaN key or value the
            # rows of its batch item that may attend to it
            index = np.unravel_index(
                base[name].size // 2 if name != "d_context" else 0, base[name].shape
            )
            rows = np.zeros(clean["context"].shape[:2], bool)
            if name == "query":
                rows[index[0], index[1]] = True
            elif name in ("keys", "values"):
                rows[index[0]] = base["key_mask"][index[0], index[1]]
            else:
                rows[:] = base["key_mask"].any(axis=1)[:, None]
            nan_rows = np.isnan(got["context"]).any(axis=-1)
            if (rows & ~nan_rows).any():
                failures.append(
                    f"context ({name}=nan): rows {np.argwhere(rows & ~nan_rows)} "
                    f"depend on the NaN but are finite"
                )
            if not np.array_equal(got["context"][~nan_rows], clean["context"][~nan_rows]):
                failures.append(f"context ({name}=nan): finite rows differ from the clean call")
    assert not failures, "\n".join(failures)
