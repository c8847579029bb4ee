"""Zoneout and variational recurrent dropout (fusedrnn.recurrent_noise; docs/layers.md): the fused
stack against the NumPy reference (the same counter-based masks), both dtypes, every compiled
instruction set, the time loops on a team of two, layers, directions, lengths and truncated
backpropagation; the reference against central differences (float64, the masks fixed by the
seed); the published formulas (Krueger et al. 2016's zoneout, its expectation in eval mode;
Gal and Ghahramani 2016's one mask per sequence); the masks' statistics; p = 0."""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import RecurrentNoise, functional, recurrent_noise, reference
from fusedrnn._counter_rng import dropout_keep
from fusedrnn._recurrent_noise import NoiseMask
from tests.helpers.cells import assert_close
from tests.helpers.numgrad import assert_stack_gradients
from tests.kernels.test_cell_options import make_case as options_case
from tests.kernels.test_cell_options import run_stack
from tests.kernels.test_stack_fused_vs_reference import make_params

# (mode, recurrent_noise arguments, layers, bidirectional, lengths, reset_after, peephole, clip)
CASES = [
    ("lstm", {"zoneout": 0.3, "zoneout_cell": 0.4, "recurrent_dropout": 0.25}, 2, True,
     [7, 3, 1, 7, 5], True, False, None),
    ("lstm", {"zoneout": 0.5}, 1, False, None, True, True, 1.5),
    ("lstm", {"zoneout_cell": 0.2, "recurrent_dropout": 0.5}, 2, False, [2, 7, 7, 4, 1], True,
     True, None),
    ("lstm", {"recurrent_dropout": 0.3}, 1, True, None, True, False, None),
    ("gru", {"zoneout": 0.3, "recurrent_dropout": 0.25}, 2, True, [5, 7, 1, 2, 6], True, False,
     None),
    ("gru", {"zoneout": 0.45}, 2, True, [7, 6, 5, 4, 3], False, False, None),
    ("gru", {"recurrent_dropout": 0.4}, 1, False, None, True, False, 0.9),
]  # fmt: skip
IDS = [f"{c[0]}-{'-'.join(c[1])}-L{c[2]}{'-bi' if c[3] else ''}" for c in CASES]


def make_case(mode, noise, layers, bidirectional, lengths, reset_after, peephole, clip, dtype,
              *, training=True, T=7):  # fmt: skip
    """test_cell_options' case (x (T, 5, 6), H = 9) with ``noise`` (recurrent_noise's
    arguments) under a fixed seed."""
    options = {} if clip is None else {"clip": clip}
    x, hx, params, kw = options_case(
        mode, options, peephole, reset_after, layers, bidirectional, lengths, dtype, T=T
    )
    kw["noise"] = recurrent_noise(
        mode, seed=2**63 + 12345, training=training, reset_after=reset_after, **noise
    )
    return x, hx, params, kw


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_equals_reference(case, dtype, training, isa, threading_mode):
    x, hx, params, kw = make_case(*case, dtype, training=training)
    fused = run_stack(functional, case[0], x, hx, params, case[2], kw)
    want = run_stack(reference, case[0], x, hx, params, case[2], kw)
    assert set(fused) == set(want)
    for key, value in want.items():
        if value is not None:
            assert_close(fused[key], value, dtype, key)


@pytest.mark.parametrize("weights_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_eval_with_16_bit_weights_equals_reference(case, weights_dtype, isa, threading_mode):
    # inference with weights_dtype runs the options' pass too: zoneout's expectation after the
    # 16-bit step GEMM; the reference rounds the weights and applies the same formula
    x, hx, params, kw = make_case(*case, np.float32, training=False)
    kw = {**kw, "training": False, "weights_dtype": weights_dtype}
    got = functional.stack_forward(case[0], x, hx, params, case[2], **kw)
    want = reference.stack_forward(case[0], x, hx, params, case[2], **kw)
    for name, a, b in zip(("y", "h_n", "c_n"), got[:3], want[:3]):
        if b is not None:
            assert_close(a, b, np.float32, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", [c for c in CASES if not c[3]], ids=lambda c: c[0])
@pytest.mark.parametrize(("truncate", "stride"), [(3, 3), (5, 2)])
def test_truncated_backward_fused_equals_reference(case, truncate, stride, dtype):
    # the chunks of truncated backpropagation redraw the masks of their own steps and rows
    x, hx, params, kw = make_case(*case, dtype, T=11)
    kw = {**kw, "lengths": np.array([11, 4, 9, 1, 11])}
    kw_back = {**kw, "truncate": truncate, "truncate_stride": stride}
    y, _, _, saved = functional.stack_forward(case[0], x, hx, params, case[2], **kw)
    y_ref, _, _, saved_ref = reference.stack_forward(case[0], x, hx, params, case[2], **kw)
    assert_close(y, y_ref, dtype, "y")
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    got = functional.stack_backward(case[0], x, hx, params, case[2], y, saved, dy, **kw_back)
    want = reference.stack_backward(
        case[0], x, hx, params, case[2], y_ref, saved_ref, dy, **kw_back
    )
    for name, a, b in zip(("dx", "dh0", "dc0"), got[:3], want[:3]):
        if b is not None:
            assert_close(a, b, dtype, name)
    for key, value in want[3].items():
        assert_close(got[3][key], value, dtype, key)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    ("mode", "noise", "reset_after"),
    [
        ("lstm", {"zoneout": 0.4, "zoneout_cell": 0.3, "recurrent_dropout": 0.3}, True),
        ("gru", {"zoneout": 0.4, "recurrent_dropout": 0.3}, True),
        ("gru", {"zoneout": 0.4}, False),
    ],
)
def test_reference_and_fused_against_central_differences(mode, noise, reset_after, training):
    # the masks are a function of the seed, so the loss is a smooth function of every input
    rng = np.random.default_rng(11)
    T, B, I, H = 4, 3, 3, 4
    params = make_params(mode, I, H, 1, True, True, 0, rng, np.float64)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((2, B, H)) * 0.5
    c0 = rng.standard_normal((2, B, H)) * 0.5
    kw = {
        "bidirectional": True,
        "lengths": np.array([4, 2, 3]),
        "noise": recurrent_noise(
            mode, seed=99, training=training, reset_after=reset_after, **noise
        ),
    }
    if mode == "gru":
        kw["reset_after"] = reset_after
    for backend in (reference, functional):
        assert_stack_gradients(backend, mode, x, h0, c0, params, kw, rng)


@pytest.mark.parametrize("backend", [functional, reference], ids=["fused", "reference"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_chunks_with_first_step_draw_the_masks_of_the_whole_sequence(mode, backend):
    kw = {"zoneout_cell": 0.3} if mode == "lstm" else {}
    x, hx, params, _ = make_case(mode, {}, 2, False, None, True, False, None, np.float64, T=9)
    whole_noise = noise_at(mode, 0, kw)
    whole = backend.stack_forward(mode, x, hx, params, 2, noise=whole_noise)[0]
    state, parts = hx, []
    for start, end in ((0, 4), (4, 5), (5, 9)):
        noise = noise_at(mode, start, kw)
        y, h_n, c_n, _ = backend.stack_forward(mode, x[start:end], state, params, 2, noise=noise)
        state = h_n if c_n is None else (h_n, c_n)
        parts.append(y)
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-13, atol=1e-14)
    # without first_step, each chunk would draw zoneout's masks of steps 0, 1, ... again
    again = backend.stack_forward(mode, x[4:5], hx, params, 2, noise=whole_noise)[0]
    first = backend.stack_forward(mode, x[4:5], hx, params, 2, noise=noise_at(mode, 4, kw))[0]
    assert np.abs(again - first).max() > 1e-6


def noise_at(mode, start, kw):
    """The noise of a chunk of the sequence starting at step ``start`` (one seed)."""
    return recurrent_noise(
        mode, zoneout=0.4, recurrent_dropout=0.3, seed=21, first_step=start, **kw
    )


# ------------------------------------------------------------ the published formulas


def one_step(mode, noise, dtype=np.float64, B=64, H=48):
    """One step of a one-layer stack, plain and with ``noise``: (plain, noisy, h0, c0)."""
    rng = np.random.default_rng(7)
    params = make_params(mode, 5, H, 1, False, True, 0, rng, dtype)
    x = rng.standard_normal((1, B, 5)).astype(dtype)
    h0 = rng.standard_normal((1, B, H)).astype(dtype)
    c0 = rng.standard_normal((1, B, H)).astype(dtype)
    hx = (h0, c0) if mode == "lstm" else h0
    plain = functional.stack_forward(mode, x, hx, params, 1)
    noisy = functional.stack_forward(mode, x, hx, params, 1, noise=noise)
    return plain, noisy, h0[0], c0[0]


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_eval_is_the_expectation(mode):
    # eval: h_t = p*h_{t-1} + (1-p)*h~_t (and c likewise), h~ the plain cell's step (the paper)
    p_h, p_c = 0.35, 0.6
    kw = {"zoneout_cell": p_c} if mode == "lstm" else {}
    noise = recurrent_noise(mode, zoneout=p_h, recurrent_dropout=0.5, training=False, **kw)
    (y, _, c_plain, _), (y_z, h_n, c_n, _), h0, c0 = one_step(mode, noise)
    np.testing.assert_allclose(y_z[0], p_h * h0 + (1 - p_h) * y[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(h_n[0], y_z[0])
    if mode == "lstm":
        np.testing.assert_allclose(
            c_n[0], p_c * c0 + (1 - p_c) * c_plain[0], rtol=1e-12, atol=1e-14
        )


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_training_zoneout_keeps_units_with_probability_p(mode):
    # training: each unit is the previous one (exactly) or the plain step's, with P(previous) = p
    p = 0.3
    kw = {"zoneout_cell": 0.7} if mode == "lstm" else {}
    noise = recurrent_noise(mode, zoneout=p, seed=5, **kw)
    (y, _, c_plain, _), (y_z, _, c_n, _), h0, c0 = one_step(mode, noise)
    kept = y_z[0] == h0  # exactly the previous value; elsewhere the plain step's (to rounding:
    # the noise runs in the options' pass, the plain cell in its own)
    assert_close(y_z[0][~kept], y[0][~kept], np.float64, "h")
    n = kept.size
    assert abs(kept.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)  # binomial, 5 sigma
    if mode == "lstm":
        kept_c = c_n[0] == c0
        assert_close(c_n[0][~kept_c], c_plain[0][~kept_c], np.float64, "c")
        assert abs(kept_c.mean() - 0.7) < 5 * np.sqrt(0.7 * 0.3 / n)
        assert 0.1 < np.mean(kept_c == kept) < 0.9  # c and h have masks of their own
        # h~ = o*tanh(c~) of the candidate c~, not of the zoned c: where only c is kept, h is
        # the plain step's
        only_c = kept_c & ~kept
        assert only_c.sum() > 100
        assert_close(y_z[0][only_c], y[0][only_c], np.float64, "h where c is kept")


def test_recurrent_dropout_one_mask_per_sequence():
    # forward: gates += (h_{t-1} * m / (1-p)) W_hh^T: where m drops a unit of h_{t-1}, dL/dh_0 is
    # zero for that unit (an LSTM's h_{t-1} enters nowhere else); the same units at every step
    p, T, B, H = 0.4, 6, 32, 40
    rng = np.random.default_rng(2)
    params = make_params("lstm", 3, H, 1, False, True, 0, rng, np.float64)
    x = rng.standard_normal((T, B, 3))
    hx = (rng.standard_normal((1, B, H)), rng.standard_normal((1, B, H)))
    noise = recurrent_noise("lstm", recurrent_dropout=p, seed=77)
    y, _, _, saved = functional.stack_forward("lstm", x, hx, params, 1, noise=noise)
    dy = rng.standard_normal(y.shape)
    _, dh0, _, grads = functional.stack_backward(
        "lstm", x, hx, params, 1, y, saved, dy, noise=noise
    )
    dropped = noise.dropout_scale(B, H, np.float64) == 0
    np.testing.assert_array_equal(dh0[0] == 0, dropped)
    assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / dropped.size)
    scale = noise.dropout_scale(B, H, np.float64)
    np.testing.assert_array_equal(np.unique(scale), [0, 1 / (1 - p)])
    # the same mask at every step: the reference draws it once per call and the fused
    # kernels equal it (test_fused_equals_reference); dW_hh reads the masked states too
    y_ref, _, _, saved_ref = reference.stack_forward("lstm", x, hx, params, 1, noise=noise)
    want = reference.stack_backward("lstm", x, hx, params, 1, y_ref, saved_ref, dy, noise=noise)
    np.testing.assert_allclose(grads["weight_hh_l0"], want[3]["weight_hh_l0"], rtol=1e-10)


def test_zero_probabilities_are_the_plain_cell():
    x, hx, params, kw = make_case("lstm", {"zoneout": 0.3}, 2, True, [7, 3, 1, 7, 5], True,
                                  False, None, np.float64)  # fmt: skip
    plain = run_stack(functional, "lstm", x, hx, params, 2, {**kw, "noise": None})
    # all zero: nothing enabled, bit for bit
    zero = run_stack(functional, "lstm", x, hx, params, 2, {**kw, "noise": RecurrentNoise()})
    for key, value in plain.items():
        if value is not None:
            np.testing.assert_array_equal(zero[key], value, err_msg=key)
    # a p whose threshold rounds to 0 (every unit kept) runs the noise passes: to rounding
    tiny = RecurrentNoise(zoneout=1e-12, zoneout_cell=1e-12, recurrent_dropout=1e-12, seed=3)
    almost = run_stack(functional, "lstm", x, hx, params, 2, {**kw, "noise": tiny})
    for key, value in plain.items():
        if value is not None:
            assert_close(almost[key], value, np.float64, key)


def test_masks_follow_the_seed_and_the_callers_rows():
    x, hx, params, kw = make_case("gru", {"zoneout": 0.5, "recurrent_dropout": 0.5}, 1, False,
                                  [3, 7, 5, 7, 2], True, False, None, np.float64)  # fmt: skip
    first = functional.stack_forward("gru", x, hx, params, 1, **kw)[0]
    again = functional.stack_forward("gru", x, hx, params, 1, **kw)[0]
    np.testing.assert_array_equal(first, again)
    other_seed = recurrent_noise("gru", zoneout=0.5, recurrent_dropout=0.5, seed=1)
    other = functional.stack_forward("gru", x, hx, params, 1, **{**kw, "noise": other_seed})[0]
    assert np.mean(other != first) > 0.3
    # the kernels sort the batch by length; the masks follow the caller's rows, as the
    # reference's (which sorts nothing) do
    np.testing.assert_allclose(
        first, reference.stack_forward("gru", x, hx, params, 1, **kw)[0], rtol=1e-12, atol=1e-13
    )
    assert not np.all(np.diff(kw["lengths"]) <= 0)  # (the lengths are not sorted)


def test_the_draw_is_the_kernels_formula():
    # one formula: the stream seed and row counters of csrc/recurrent_noise.h
    noise = RecurrentNoise(zoneout=0.5, seed=2**64 - 1, stream=3)
    zoned = noise._zoned(NoiseMask.ZONEOUT_H, 2, 4, 8)
    seed = (2**64 - 1 + (3 * 3 + 1 + 1) * 0x9E3779B97F4A7C15) % 2**64
    rows = (np.uint64(2) << np.uint64(32)) | np.arange(4, dtype=np.uint64)
    np.testing.assert_array_equal(zoned, ~dropout_keep(seed, rows, 8, 0.5))


# ------------------------------------------------------------ checks


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"zoneout": 1.0}, ValueError, "zoneout must be in \\[0, 1\\)"),
        ({"zoneout": -0.1}, ValueError, "zoneout"),
        ({"zoneout_cell": 1.5}, ValueError, "zoneout_cell"),
        ({"recurrent_dropout": 1}, ValueError, "recurrent_dropout"),
        ({"zoneout": "0.1"}, TypeError, "zoneout must be a number"),
        ({"recurrent_dropout": True}, TypeError, "recurrent_dropout"),
        ({"zoneout": 0.1, "seed": -1}, ValueError, "seed"),
        ({"zoneout": 0.1, "proj_size": 2}, ValueError, "proj_size"),
    ],
)
def test_bad_options_raise_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        recurrent_noise("lstm", **kwargs)


def test_options_of_the_wrong_cell_raise():
    with pytest.raises(ValueError, match="not an RNN"):
        recurrent_noise("rnn", zoneout=0.1)
    with pytest.raises(ValueError, match="zoneout_cell"):
        recurrent_noise("gru", zoneout_cell=0.1)
    with pytest.raises(ValueError, match="reset_after"):
        recurrent_noise("gru", recurrent_dropout=0.1, reset_after=False)
    x, hx, params, _ = make_case("gru", {"zoneout": 0.1}, 1, False, None, True, False, None,
                                  np.float64)  # fmt: skip
    with pytest.raises(TypeError, match="noise must be a RecurrentNoise"):
        functional.stack_forward("gru", x, hx, params, 1, noise=(0.1, 0, 0, 1, True, None))
    with pytest.raises(ValueError, match="reset_after"):  # the binding checks too
        functional.stack_forward(
            "gru", x, hx, params, 1, reset_after=False, noise=RecurrentNoise(recurrent_dropout=0.2)
        )
