"""Inference with 16-bit weights (``weights_dtype``): the fused stack against the float32 reference
run with the weights rounded the same way, on every compiled instruction set and with the time
loops on a team; and the rounding itself (float16 by numpy, bfloat16 by PyTorch when installed,
and by its definition on chosen bit patterns)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _core, functional, reference
from fusedrnn._half import (
    bits_to_float32,
    pack_half_weights,
    round_weights,
    weight_bits,
)
from tests.helpers.cells import assert_close, assert_within_float32_error
from tests.kernels.test_stack_fused_vs_reference import CASES, make_params

WEIGHTS_DTYPES = ["float16", "bfloat16"]


def stack_inputs(mode, layers, bidirectional, proj, T, B, I, H, seed=3):
    """float32 inputs, states and weights of a stack."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((layers * D, B, proj or H)).astype(np.float32)
    hx = (h0, rng.standard_normal((layers * D, B, H)).astype(np.float32)) if mode == "lstm" else h0
    return x, hx


@pytest.mark.parametrize("weights_dtype", WEIGHTS_DTYPES)
@pytest.mark.parametrize(
    ("mode", "options", "layers", "bidirectional", "bias", "proj", "lengths"), CASES
)
def test_fused_equals_reference_with_rounded_weights(
    mode, options, layers, bidirectional, bias, proj, lengths, weights_dtype, isa, threading_mode
):
    T, B, I, H = 7, 5, 6, 9
    params = make_params(
        mode, I, H, layers, bidirectional, bias, proj, np.random.default_rng(1), np.float32
    )
    x, hx = stack_inputs(mode, layers, bidirectional, proj, T, B, I, H)
    kw = dict(
        lengths=None if lengths is None else np.array(lengths),
        proj_size=proj,
        bidirectional=bidirectional,
        training=False,
        **options,
    )
    fused = functional.stack_forward(mode, x, hx, params, layers, weights_dtype=weights_dtype, **kw)
    # the definition: the float32 stack with every weight matrix rounded, the biases as they are
    rounded = {
        k: round_weights(v, weights_dtype) if k.startswith("weight") else v
        for k, v in params.items()
    }
    expected = reference.stack_forward(mode, x, hx, rounded, layers, **kw)
    for name, got, want in zip(("y", "h_n", "c_n"), fused[:3], expected[:3]):
        if want is not None:
            assert_close(got, want, np.float32, name)
    # and the rounding matters: the float32 weights give other numbers
    unrounded = reference.stack_forward(mode, x, hx, params, layers, **kw)
    assert np.max(np.abs(unrounded[0] - expected[0])) > 1e-5


@pytest.mark.parametrize("weights_dtype", WEIGHTS_DTYPES)
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("B", "H"), [(1, 256), (3, 40), (16, 70)])
def test_batch_one_and_wide_hidden(mode, B, H, weights_dtype, isa):
    """The batch-1 tiles (several panels at once), a partial last panel, and full row tiles."""
    T, I = 6, 24
    params = make_params(mode, I, H, 1, False, True, 0, np.random.default_rng(2), np.float32)
    # weights of PyTorch's scale (1/sqrt(H)): at +-0.5 a wide RNN is chaotic, and the last bit of
    # a sum (the reference's BLAS adds in another order) would grow past any tolerance
    params = {k: v * np.float32(2 / np.sqrt(H)) for k, v in params.items()}
    x, hx = stack_inputs(mode, 1, False, 0, T, B, I, H)
    packed = pack_half_weights(mode, params, 1, False, weights_dtype)
    fused = functional.stack_forward(mode, x, hx, params, 1, training=False, half_weights=packed)
    expected = reference.stack_forward(
        mode, x, hx, params, 1, training=False, weights_dtype=weights_dtype
    )
    assert_close(fused[0], expected[0], np.float32, "y")


def test_packing_is_reused_and_checked():
    """A packing serves many calls; one made for another panel width, another format or of
    the wrong size is refused."""
    mode, T, B, I, H = "gru", 4, 2, 5, 8
    params = make_params(mode, I, H, 1, False, True, 0, np.random.default_rng(0), np.float32)
    x, hx = stack_inputs(mode, 1, False, 0, T, B, I, H)
    packed = pack_half_weights(mode, params, 1, False, "float16")
    first = functional.stack_forward(mode, x, hx, params, 1, training=False, half_weights=packed)
    again = functional.stack_forward(mode, x, hx, params, 1, training=False, half_weights=packed)
    np.testing.assert_array_equal(first[0], again[0])
    with pytest.raises(ValueError, match="bfloat16"):
        functional.stack_forward(
            mode, x, hx, params, 1, training=False, weights_dtype="bfloat16", half_weights=packed
        )
    other_width = packed._replace(panel_width=packed.panel_width * 2)
    with pytest.raises(ValueError, match="pack them again"):
        functional.stack_forward(mode, x, hx, params, 1, training=False, half_weights=other_width)
    short = packed._replace(layers=[(packed.layers[0][0][:-1], *packed.layers[0][1:])])
    with pytest.raises(ValueError, match="half weight_ih_l0"):
        functional.stack_forward(mode, x, hx, params, 1, training=False, half_weights=short)
    with pytest.raises(TypeError, match="HalfWeights"):
        functional.stack_forward(mode, x, hx, params, 1, training=False, half_weights=("float16",))


@pytest.mark.parametrize("backend", [functional, reference], ids=["fused", "reference"])
def test_bad_arguments(backend):
    mode, T, B, I, H = "lstm", 3, 2, 4, 5
    params = make_params(mode, I, H, 1, False, True, 0, np.random.default_rng(0), np.float32)
    x, hx = stack_inputs(mode, 1, False, 0, T, B, I, H)
    with pytest.raises(ValueError, match="training=False"):
        backend.stack_forward(mode, x, hx, params, 1, training=True, weights_dtype="float16")
    with pytest.raises(ValueError, match="'float16' or 'bfloat16', got 'half'"):
        backend.stack_forward(mode, x, hx, params, 1, training=False, weights_dtype="half")
    with pytest.raises(TypeError, match="got int"):
        backend.stack_forward(mode, x, hx, params, 1, training=False, weights_dtype=16)
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    hx64 = tuple(h.astype(np.float64) for h in hx)
    with pytest.raises(TypeError, match="float32 layer"):
        backend.stack_forward(
            mode, x.astype(np.float64), hx64, params64, 1, training=False, weights_dtype="float16"
        )


# ---------------------------------------------------------------- the rounding


def test_float16_bits_are_numpys():
    w = np.array([0.1, -2.5, 1e-6, 65504, np.inf, -0.0], np.float32)
    np.testing.assert_array_equal(weight_bits(w, "float16"), w.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(round_weights(w, "float16"), w.astype(np.float16))


def test_weights_past_float16s_range_are_refused():
    params = make_params("rnn", 3, 4, 1, False, True, 0, np.random.default_rng(0), np.float32)
    params["weight_hh_l0"][1, 2] = -7e4
    x = np.ones((2, 1, 3), np.float32)
    for backend in (functional, reference):
        with pytest.raises(ValueError, match=r"cannot hold weight_hh_l0: .* 70000 is past"):
            backend.stack_forward(
                "rnn", x, None, params, 1, training=False, weights_dtype="float16"
            )
    y = functional.stack_forward(
        "rnn", x, None, params, 1, training=False, weights_dtype="bfloat16"
    )
    assert np.all(np.isfinite(y[0]))


def test_bfloat16_rounds_to_nearest_even():
    # bit patterns: exact, just below half (down), exactly half with an even kept bit (down),
    # exactly half with an odd one (up), just above half (up), the largest finite float (up to
    # infinity), NaN (stays NaN), a subnormal
    bits = np.array(
        [0x3F800000, 0x3F807FFF, 0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF, 0x7FC00001, 1],
        np.uint32,
    )
    expected = np.array([0x3F80, 0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x7F80, 0x7FC0, 0x0000], np.uint16)
    np.testing.assert_array_equal(weight_bits(bits.view(np.float32), "bfloat16"), expected)
    assert np.isnan(bits_to_float32(weight_bits(np.float32([np.nan]), "bfloat16"), "bfloat16"))


def test_bfloat16_rounding_equals_pytorchs():
    torch = pytest.importorskip("torch")
    w = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 3
    ours = round_weights(w, "bfloat16")
    theirs = torch.from_numpy(w).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_baseline_float16_conversion_of_special_values():
    """The portable build widens float16 without F16C: subnormals, infinities, signed zero."""
    if not _core.isa_supported("baseline"):
        pytest.skip("no baseline build")
    special = np.array([6e-8, -6e-5, 65504, -np.inf, np.inf, -0.0, 1.0, 1 / 3], np.float32)
    T, B, H = 1, 1, len(special)
    # an RNN with relu, no bias, h0 = 0 and W_ih = I (one input per unit) passes x W_ih^T through
    params = {"weight_ih_l0": np.diag(special), "weight_hh_l0": np.zeros((H, H), np.float32)}
    x = np.ones((T, B, H), np.float32)
    default = _core.active_isa()
    try:
        _core.select_isa("baseline")
        y = functional.stack_forward(
            "rnn", x, None, params, 1, training=False, nonlinearity="relu", weights_dtype="float16"
        )[0]
    finally:
        _core.select_isa(default)
    expected = np.maximum(special.astype(np.float16).astype(np.float32), 0)
    np.testing.assert_array_equal(y[0, 0], expected)


# ---------------------------------------------------------------- AMX's input projection

needs_amx = pytest.mark.skipif(
    not _core.amx_usable(),
    reason="needs AMX's bfloat16 tiles (an Intel Xeon from Sapphire Rapids on, Linux 5.16 on)",
)


@contextmanager
def amx_enabled(on: bool):
    """AMX on or off for bfloat16 inference (with the AVX-512 path active), then as it was."""
    default = _core.active_isa()
    _core.select_isa("avx512")
    _core._set_amx_enabled(on)
    try:
        yield
    finally:
        _core._set_amx_enabled(True)
        _core.select_isa(default)


@needs_amx
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(
    ("T", "B", "I", "H", "layers", "bidirectional"),
    [
        (7, 5, 6, 9, 1, False),  # K and the columns short of one tile
        (60, 5, 256, 40, 1, False),  # four passes over the rows (80 a pass at K = 256)
        (20, 1, 33, 70, 2, True),  # K one past a tile; the second layer's K = 2H
        (4, 4, 2100, 16, 1, False),  # K past 2048: two groups of rows a pass
        (5, 21, 30, 50, 1, False),  # the steps on AMX too (21 rows; by units on a team)
        (3, 34, 40, 33, 2, False),  # 17 rows a member by rows
    ],
)
def test_amx_projection_equals_the_fma_panels_and_the_reference(
    mode, T, B, I, H, layers, bidirectional, threading_mode
):
    """bfloat16 inference with its input projection and its steps on AMX's tiles (x and h split
    exactly into three bfloat16 parts) against the FMA panels and the float64
    reference: float32's error, whether the projection runs in one pass or several, on one
    thread or a team."""
    check_amx_against_fma_and_reference(mode, T, B, I, H, layers, bidirectional, {})


@needs_amx
@pytest.mark.parametrize("B", [1, 2, 3, 4, 7, 11, 13])
def test_amx_groups_of_every_size(B, threading_mode):
    """A pass over n rows splits them into ceil(n / 5) groups of even size, whose A and C tiles
    hold only their rows' three parts: every size of group from 1 to 5, and a last group one
    or two rows short (7 = 4 + 3, 11 = 4 + 4 + 3, 13 = 5 + 5 + 3), in the steps (B rows) and in
    the input projection (a chunk of steps' rows)."""
    check_amx_against_fma_and_reference("lstm", 5, B, 40, 36, 1, False, {})


@needs_amx
@pytest.mark.parametrize("mode", ["lstm", "gru"])
# 36: each member of a team takes its own 18 rows, which sit in other groups than on one thread
@pytest.mark.parametrize("B", [1, 7, 36])
def test_amx_bits_do_not_depend_on_the_thread_count(mode, B):
    """A row's result on the tiles depends on its own A row alone, not on which rows share its
    groups (which a team's split changes): one thread and a team of two give the same bits.
    (One direction: the two of a bidirectional layer would run one thread each.)"""
    params = make_params(mode, 48, 64, 2, False, True, 0, np.random.default_rng(6), np.float32)
    params = {k: v * np.float32(0.2) for k, v in params.items()}
    x, hx = stack_inputs(mode, 2, False, 0, 9, B, 48, 64)
    before, defaults = fusedrnn.get_num_threads(), _core._team_thresholds()
    outputs = []
    try:
        with amx_enabled(True):
            packed = pack_half_weights(mode, params, 2, False, "bfloat16")
            for threads in (1, 2):
                fusedrnn.set_num_threads(threads)
                _core._set_team_thresholds(0, 1, False)  # (a team even for small loops)
                outputs.append(
                    functional.stack_forward(
                        mode,
                        x,
                        hx,
                        params,
                        2,
                        bidirectional=False,
                        training=False,
                        half_weights=packed,
                    )
                )
    finally:
        _core._set_team_thresholds(*defaults)
        fusedrnn.set_num_threads(before)
    for i, name in enumerate(("y", "h_n")):
        np.testing.assert_array_equal(outputs[0][i], outputs[1][i], err_msg=name)


@needs_amx
@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("lstm", {"proj_size": 7}),
        ("lstm", {"lengths": [6, 6, 5, 3, 3, 2] * 3}),  # 18 rows, then fewer than 16
        ("gru", {"reset_after": False}),  # Cho's GRU: (r * h) W_hn^T, a second product a step
        ("gru", {"lengths": [6, 4, 4, 1] * 5}),
        ("rnn", {"nonlinearity": "relu", "lengths": [5] * 17 + [2]}),
    ],
)
def test_amx_with_options(mode, options, threading_mode):
    check_amx_against_fma_and_reference(
        mode,
        6,
        18 if "lengths" not in options else len(options["lengths"]),
        20,
        36,
        2,
        True,
        options,
    )


def check_amx_against_fma_and_reference(mode, T, B, I, H, layers, bidirectional, options):
    """A stack's bfloat16 inference with AMX on and off, each within float32's error of the
    float64 reference with the weights rounded the same way."""
    proj = options.get("proj_size", 0)
    params = make_params(
        mode, I, H, layers, bidirectional, True, proj, np.random.default_rng(4), np.float32
    )
    params = {k: v * np.float32(2 / np.sqrt(max(I, H))) for k, v in params.items()}
    x, hx = stack_inputs(mode, layers, bidirectional, proj, T, B, I, H)
    kw = {"bidirectional": bidirectional, "training": False, **options}
    if "lengths" in kw:
        kw["lengths"] = np.array(kw["lengths"])
    outputs = {}
    for on in (True, False):
        with amx_enabled(on):
            packed = pack_half_weights(mode, params, layers, bidirectional, "bfloat16")
            assert packed.amx is on
            # each matrix in one packing: AMX's tiles, or the FMA panels
            has = [not on, not on, not on and proj > 0, on, on, on and proj > 0]
            assert all([p is not None for p in parts] == has for parts in packed.layers)
            outputs[on] = functional.stack_forward(
                mode, x, hx, params, layers, half_weights=packed, **kw
            )
    rounded = {
        k: round_weights(v, "bfloat16") if k.startswith("weight") else v for k, v in params.items()
    }
    expected32 = reference.stack_forward(mode, x, hx, rounded, layers, **kw)
    as64 = {k: v.astype(np.float64) for k, v in rounded.items()}
    hx64 = tuple(h.astype(np.float64) for h in hx) if mode == "lstm" else hx.astype(np.float64)
    expected64 = reference.stack_forward(mode, x.astype(np.float64), hx64, as64, layers, **kw)
    for i, name in enumerate(("y", "h_n")):
        for on in (True, False):
            assert_within_float32_error(
                outputs[on][i], expected32[i], expected64[i], f"{name}, AMX {on}"
            )


@needs_amx
def test_amx_projection_of_special_inputs_is_exact():
    """An RNN of one unit with W_ih = 1 and W_hh = 0, a batch of chosen inputs: AMX gives the
    bits of the FMA panels, which multiply by 1 exactly. 1/3 and 1 + 2^-23 need all 24 bits of
    a float (three bfloat16 parts); infinities stay infinite, a NaN whose payload sits in its low
    bits stays NaN (not the infinity its top 16 bits alone would be), and 3e38 does not overflow
    on the way."""
    special = np.array([1 / 3, 1 + 2**-23, np.inf, -np.inf, 3e38, -1e-30, -0.0, 0.1], np.float32)
    low_payload_nan = np.array([0x7F800001], np.uint32).view(np.float32)
    values = np.concatenate([special, low_payload_nan])
    T = 16  # (the input projection multiplies T * 9 rows, the steps 9 each)
    params = {
        "weight_ih_l0": np.ones((1, 1), np.float32),
        "weight_hh_l0": np.zeros((1, 1), np.float32),
    }
    x = np.tile(values[None, :, None], (T, 1, 1))
    outputs = {}
    for on in (True, False):
        with amx_enabled(on):
            outputs[on] = functional.stack_forward(
                "rnn", x, None, params, 1, training=False, weights_dtype="bfloat16"
            )[0]
    np.testing.assert_array_equal(outputs[True], outputs[False])
    assert_close(outputs[True], np.tanh(x), np.float32, "tanh(x)")
    assert np.all(np.isnan(outputs[True][:, -1]))


@needs_amx
def test_a_packing_for_the_other_amx_state_is_refused_and_layers_repack():
    mode, T, B, I, H = "lstm", 8, 3, 5, 12
    params = make_params(mode, I, H, 1, False, True, 0, np.random.default_rng(0), np.float32)
    x, hx = stack_inputs(mode, 1, False, 0, T, B, I, H)
    with amx_enabled(True):
        packed = pack_half_weights(mode, params, 1, False, "bfloat16")
    with amx_enabled(False):
        with pytest.raises(ValueError, match="with AMX's panels, but AMX is not active"):
            functional.stack_forward(mode, x, hx, params, 1, training=False, half_weights=packed)
        without = pack_half_weights(mode, params, 1, False, "bfloat16")
        # float16 weights never take AMX's packing
        assert not pack_half_weights(mode, params, 1, False, "float16").amx
    with amx_enabled(True):
        with pytest.raises(ValueError, match="without AMX's panels, but AMX is active"):
            functional.stack_forward(mode, x, hx, params, 1, training=False, half_weights=without)
        for role, at in (("weight_ih", 3), ("weight_hh", 4)):
            parts = list(packed.layers[0])
            parts[at] = parts[at][:-1]
            short = packed._replace(layers=[tuple(parts)])
            with pytest.raises(ValueError, match=rf"AMX {role}_l0 .* \(pack_amx_panels\)"):
                functional.stack_forward(mode, x, hx, params, 1, training=False, half_weights=short)
    layer = fusedrnn.LSTM(I, H, seed=0, weights_dtype="bfloat16").eval()
    with amx_enabled(True):
        y = layer(x)[0]
        assert layer._half_weights.amx
    with amx_enabled(False):
        assert_close(layer(x)[0], y, np.float32, "AMX off")
        assert not layer._half_weights.amx


@needs_amx
def test_an_infinite_weight_keeps_the_fma_panels():
    """An infinite weight times x's zero parts (1.0 is one part and two zeros) would make NaN on
    AMX's tiles; such a matrix keeps the FMA panels, which give the infinite product (and tanh
    of it). 3.4e38 rounds to bfloat16's infinity, so it counts too."""
    x = np.tile(np.array([1.0, -2.0, 0.5, 3.0], np.float32)[None, :, None], (16, 1, 1))
    for weight in (np.inf, 3.4e38):
        params = {
            "weight_ih_l0": np.array([[weight]], np.float32),
            "weight_hh_l0": np.zeros((1, 1), np.float32),
        }
        with amx_enabled(True):
            packed = pack_half_weights("rnn", params, 1, False, "bfloat16")
            assert packed.amx
            assert [p is not None for p in packed.layers[0]] == [
                True,
                False,
                False,
                False,
                True,
                False,
            ]
            y = functional.stack_forward(
                "rnn", x, None, params, 1, training=False, half_weights=packed
            )
        np.testing.assert_array_equal(y[0], np.sign(x))
