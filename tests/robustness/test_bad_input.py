"""Bad input to the fused kernels: a TypeError / ValueError that names the argument and says what
was expected and what came, never a crash or a silent cast."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional
from tests.helpers.cells import make_inputs


def lstm_args(dtype=np.float64):
    return make_inputs("lstm", 3, 2, 5, 4, dtype=dtype)


def lstm_training_state():
    inputs = lstm_args()
    y, _h_n, _c_n, workspace = functional.lstm_forward(**inputs)
    args = {k: inputs[k] for k in ("x", "h0", "c0", "weight_ih", "weight_hh")}
    return {**args, "y": y, "workspace": workspace}


@pytest.mark.parametrize(
    ("name", "value", "error", "pattern"),
    [
        ("x", [[[1.0]]], TypeError, r"x must be a numpy.ndarray .* got list"),
        (
            "x",
            np.ones((3, 2, 5), np.int64),
            TypeError,
            r"x must have dtype float32 or float64, got int64",
        ),
        ("x", np.ones((3, 2, 5), np.float16), TypeError, r"x must have dtype float32 or float64"),
        ("x", np.ones((3, 2, 5), np.complex128), TypeError, r"x must have dtype"),
        ("x", np.ones((3, 2, 5), bool), TypeError, r"x must have dtype"),
        ("x", np.ones((3, 2, 5), object), TypeError, r"x must have dtype"),
        (
            "x",
            np.ones((6, 5)),
            ValueError,
            r"x must have 3 dimensions \(T, B, input_size\), but has 2",
        ),
        (
            "h0",
            np.ones((2, 4), np.float32),
            TypeError,
            r"h0 must have dtype float64 like x, got float32",
        ),
        (
            "h0",
            np.ones((3, 4)),
            ValueError,
            r"h0 must have shape \(B, hidden_size\) = \(2, 4\), but has shape \(3, 4\)",
        ),
        ("h0", np.ones(8), ValueError, r"h0 must have shape .* but has shape \(8,\)"),
        ("c0", None, TypeError, r"c0 must be a numpy.ndarray of float64, got NoneType"),
        (
            "weight_ih",
            np.ones((16, 6)),
            ValueError,
            r"weight_ih must have shape \(4\*hidden_size, input_size\) = \(16, 5\)",
        ),
        (
            "weight_hh",
            np.ones((12, 4)),
            ValueError,
            r"weight_hh must have shape \(4\*hidden_size, hidden_size\), but has shape \(12, 4\)",
        ),
        ("weight_hh", np.ones((16,)), ValueError, r"weight_hh must be a 2-D"),
        (
            "bias_ih",
            np.ones(15),
            ValueError,
            r"bias_ih must have shape \(4\*hidden_size\) = \(16,\), but has shape \(15,\)",
        ),
        ("bias_hh", np.ones((16, 1)), ValueError, r"bias_hh must have shape"),
        ("x", np.ones((3, 2, 0)), ValueError, r"x must have input_size >= 1"),
    ],
)
def test_forward_rejects(name, value, error, pattern):
    args = lstm_args()
    args[name] = value
    with pytest.raises(error, match=pattern):
        functional.lstm_forward(**args)


def test_zero_hidden_size_is_rejected():
    args = make_inputs("rnn_tanh", 3, 2, 5, 1)
    args["h0"] = np.ones((2, 0))
    args["weight_ih"] = np.ones((0, 5))
    args["weight_hh"] = np.ones((0, 0))
    args["bias_ih"] = args["bias_hh"] = np.ones(0)
    with pytest.raises(ValueError, match="hidden_size >= 1"):
        functional.rnn_forward(**args)


@pytest.mark.parametrize(
    ("name", "value", "error", "pattern"),
    [
        ("workspace", None, ValueError, r"workspace is None: .*training=True"),
        (
            "workspace",
            np.ones(7),
            ValueError,
            r"workspace must have shape \(T\*B\*5\*hidden_size\) = \(120,\), but has shape \(7,\)",
        ),
        ("workspace", np.ones(120, np.float32), TypeError, r"workspace must have dtype float64"),
        (
            "y",
            np.ones((3, 2, 5)),
            ValueError,
            r"y must have shape \(T, B, hidden_size\) = \(3, 2, 4\)",
        ),
        (
            "dy",
            np.ones((2, 2, 4)),
            ValueError,
            r"dy must have shape \(T, B, hidden_size\) = \(3, 2, 4\)",
        ),
        ("dh_n", np.ones((2, 4), np.float32), TypeError, r"dh_n must have dtype float64"),
        ("dc_n", np.ones((4, 2)), ValueError, r"dc_n must have shape"),
    ],
)
def test_backward_rejects(name, value, error, pattern):
    args = lstm_training_state()
    args[name] = value
    with pytest.raises(error, match=pattern):
        functional.lstm_backward(**args)


def test_gradient_buffers_must_be_exact_writeable_and_contiguous():
    args = lstm_training_state()
    good = {
        "weight_ih": np.zeros((16, 5)),
        "weight_hh": np.zeros((16, 4)),
        "bias_ih": np.zeros(16),
        "bias_hh": np.zeros(16),
    }
    with pytest.raises(ValueError, match=r"grads must have the keys .* missing \['bias_hh'\]"):
        functional.lstm_backward(**args, grads={k: v for k, v in good.items() if k != "bias_hh"})
    with pytest.raises(TypeError, match="grads must be a dict"):
        functional.lstm_backward(**args, grads=[1, 2])
    wrong_shape = {**good, "weight_ih": np.zeros((16, 4))}
    with pytest.raises(ValueError, match=r"grads\['weight_ih'\] must have shape"):
        functional.lstm_backward(**args, grads=wrong_shape)
    wrong_dtype = {**good, "bias_ih": np.zeros(16, np.float32)}
    with pytest.raises(TypeError, match=r"grads\['bias_ih'\] must have dtype float64"):
        functional.lstm_backward(**args, grads=wrong_dtype)
    read_only = {**good, "weight_hh": np.zeros((16, 4))}
    read_only["weight_hh"].flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\['weight_hh'\] .* must be writeable"):
        functional.lstm_backward(**args, grads=read_only)
    strided = {**good, "bias_hh": np.zeros(32)[::2]}
    with pytest.raises(ValueError, match=r"grads\['bias_hh'\] .* must be C-contiguous"):
        functional.lstm_backward(**args, grads=strided)
    # None of the failed calls wrote anything.
    for name, value in good.items():
        assert not value.any(), name


def test_gru_and_rnn_name_their_own_gate_counts():
    args = make_inputs("gru_reset_after", 3, 2, 5, 4)
    args["weight_ih"] = np.ones((16, 5))
    with pytest.raises(
        ValueError, match=r"weight_ih must have shape \(3\*hidden_size, input_size\) = \(12, 5\)"
    ):
        functional.gru_forward(**args)
    args = make_inputs("rnn_tanh", 3, 2, 5, 4)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        functional.rnn_forward(**args, nonlinearity="sigmoid")


def test_rnn_workspace_must_be_empty_or_none():
    inputs = make_inputs("rnn_tanh", 3, 2, 5, 4)
    y, _h_n, _workspace = functional.rnn_forward(**inputs)
    args = {k: inputs[k] for k in ("x", "h0", "weight_ih", "weight_hh")}
    functional.rnn_backward(**args, y=y, workspace=None)  # the RNN saves nothing: None is fine
    with pytest.raises(ValueError, match=r"workspace must have shape"):
        functional.rnn_backward(**args, y=y, workspace=np.ones(3))


def test_thread_count_arguments():
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        fusedrnn.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int, got float"):
        fusedrnn.set_num_threads(1.5)


def test_unknown_isa_is_a_clear_error():
    with pytest.raises(ValueError, match="isa must be one of"):
        fusedrnn._core.select_isa("sse9")


def test_workspace_size_names_the_cell():
    with pytest.raises(ValueError, match="cell must be 'lstm', 'gru' or 'rnn'"):
        functional.workspace_size("transformer", 1, 1, 1)


def test_gradient_buffers_must_be_aligned():
    """A gradient buffer is written through a T*: a view at an odd byte offset (misaligned) is
    refused by name, not written through (undefined behaviour, a fault for vectorised stores)."""
    args = lstm_training_state()
    raw = np.zeros(16 * 8 + 8, np.uint8)
    start = (1 - raw.ctypes.data) % 8
    misaligned = raw[start : start + 16 * 8].view(np.float64)
    assert not misaligned.flags.aligned and misaligned.flags.c_contiguous
    grads = {
        "weight_ih": np.zeros((16, 5)),
        "weight_hh": np.zeros((16, 4)),
        "bias_ih": misaligned,
        "bias_hh": np.zeros(16),
    }
    with pytest.raises(ValueError, match=r"grads\['bias_ih'\] .* must be aligned"):
        functional.lstm_backward(**args, grads=grads)
    assert not misaligned.any() and not grads["weight_ih"].any()


def test_misaligned_contiguous_inputs_are_copied_not_read_misaligned():
    """A contiguous view at an odd byte offset is copied to aligned memory before the kernel reads
    it (reading it in place is undefined behaviour; UBSan flagged it): same numbers as aligned."""
    args = lstm_args()
    expected = functional.lstm_forward(**args)
    buffer = np.zeros(args["x"].nbytes + 1, np.uint8)[1:].view(np.float64).reshape(args["x"].shape)
    buffer[...] = args["x"]
    assert not buffer.flags.aligned and buffer.flags.c_contiguous
    got = functional.lstm_forward(**{**args, "x": buffer})
    for a, b in zip(got[:3], expected[:3]):
        np.testing.assert_array_equal(a, b)


# Every other array a kernel reads, misaligned in the same way (a contiguous view at a byte
# offset that is not a multiple of its itemsize): copied to aligned memory before any typed
# read, or, where only the package's own wrapper supplies it, refused by the binding. Reading
# one in place is undefined behaviour that x86 forgives, so the results-equal checks pass either
# way there; the checks on what reaches the binding fail in the normal run when a copy is
# missing, and tools/sanitize.sh (UBSan) catches any read that is left.


def unaligned_copy(a: np.ndarray, offset: int = 1) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data start ``offset`` bytes past an aligned address."""
    raw = np.zeros(a.nbytes + 2 * a.itemsize, np.uint8)
    start = (offset - raw.ctypes.data) % a.itemsize
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.flags.c_contiguous and not out.flags.aligned
    return out


def attention_case(dtype):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 2, 5, 4)).astype(dtype)
    k = rng.standard_normal((2, 2, 7, 4)).astype(dtype)
    v = rng.standard_normal((2, 2, 7, 3)).astype(dtype)
    mask = np.where(rng.random((5, 7)) > 0.3, 0.0, -np.inf).astype(dtype)
    mask[:, 0] = rng.standard_normal(5)  # finite additive entries too
    d_out = rng.standard_normal((2, 2, 5, 3)).astype(dtype)
    return q, k, v, mask, d_out


@pytest.mark.parametrize(("dtype", "offset"), [(np.float32, 1), (np.float64, 1), (np.float64, 4)])
@pytest.mark.parametrize("keys", ["all", "broadcast"])
def test_misaligned_additive_attention_mask_is_copied_not_read_misaligned(dtype, offset, keys):
    """An additive (float) attn_mask that is contiguous but misaligned (a float64 mask 4 bytes
    into a float32 buffer, or at an odd offset into a byte buffer) reaches the kernel as an
    aligned copy: the wrapper's mask is aligned, and forward and backward give the same bits.
    "broadcast": an (L, 1) mask, which the kernel reads one scalar per row (UBSan flagged that
    load when the misaligned mask reached it)."""
    from fusedrnn._attention_args import attention_args

    q, k, v, mask, d_out = attention_case(dtype)
    if keys == "broadcast":
        mask = np.ascontiguousarray(mask[:, :1])  # the finite column
    bad = unaligned_copy(mask, offset)
    assert attention_args(q, k, v, bad).mask.flags.aligned
    expected = functional.attention_forward(q, k, v, mask)
    expected_grads = functional.attention_backward(q, k, v, *expected, d_out, mask)
    for layout in (bad, bad[None, None]):  # as given, and a (1, 1, L, .) view of it
        out, lse = functional.attention_forward(q, k, v, layout)
        np.testing.assert_array_equal(out, expected[0])
        np.testing.assert_array_equal(lse, expected[1])
        grads = functional.attention_backward(q, k, v, out, lse, d_out, layout)
        for got, want in zip(grads, expected_grads):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fusedrnn.scaled_dot_product_attention(q, k, v, bad), expected[0])


def test_misaligned_attention_mask_of_a_layer_is_copied():
    """MultiheadAttention hands a float attn_mask (L, S) through to the kernel as a reshaped
    view: misaligned, it gives the aligned mask's results."""
    layer = fusedrnn.MultiheadAttention(8, 2, dtype=np.float64, seed=0)
    rng = np.random.default_rng(1)
    query, key = rng.standard_normal((4, 2, 8)), rng.standard_normal((6, 2, 8))
    mask = rng.standard_normal((4, 6))
    expected, _ = layer(query, key, key, attn_mask=mask)
    got, _ = layer(query, key, key, attn_mask=unaligned_copy(mask))
    np.testing.assert_array_equal(got, expected)


def test_binding_refuses_a_misaligned_attention_mask_or_offsets():
    """The compiled entry point reads the mask and its offsets through typed pointers: a
    misaligned one is a ValueError, never a misaligned read (the wrapper always copies)."""
    from fusedrnn import _core

    q, k, v, mask, _ = attention_case(np.float64)
    offsets = np.zeros(4, np.int64)
    _core.attention_forward(q, k, v, mask, offsets, 7, 1, False, 0.5, 0.0, 0)  # fine
    with pytest.raises(ValueError, match="attn_mask must be C-contiguous and aligned"):
        _core.attention_forward(q, k, v, unaligned_copy(mask), offsets, 7, 1, False, 0.5, 0.0, 0)
    with pytest.raises(ValueError, match="mask_offsets must be a contiguous, aligned int64"):
        _core.attention_forward(q, k, v, mask, unaligned_copy(offsets), 7, 1, False, 0.5, 0.0, 0)


def test_misaligned_int64_targets_are_copied_not_read_misaligned():
    """cross_entropy's int64 targets at an odd byte offset: the same loss and gradient as
    aligned ones (the binding copies them before its range check and the kernel read them)."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5))
    targets = np.array([0, 4, 2, -100, 1, 3], np.int64)
    expected = functional.cross_entropy(logits, targets)
    got = functional.cross_entropy(logits, unaligned_copy(targets))
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    with pytest.raises(ValueError, match=r"targets\[1\] = 7 is out of range"):
        functional.cross_entropy(logits, unaligned_copy(np.array([0, 7, 0, 0, 0, 0], np.int64)))


def test_misaligned_lengths_and_batch_sizes_reaching_the_binding_are_copied(monkeypatch):
    """The stack binding reads lengths and batch_sizes (int64) through typed pointers: handed
    misaligned ones, it gives the results of aligned ones (the wrapper's are fresh arrays)."""
    from fusedrnn import _core
    from tests.helpers.hostile import stack_inputs

    kwargs = stack_inputs("lstm")
    expected = functional.stack_forward(**kwargs)
    real = _core.stack_forward
    seen = []

    def misaligning(mode, x, h0, c0, weights, masks, batch_sizes, lengths, *rest):
        batch_sizes, lengths = unaligned_copy(batch_sizes), unaligned_copy(lengths)
        seen.append(lengths)
        return real(mode, x, h0, c0, weights, masks, batch_sizes, lengths, *rest)

    monkeypatch.setattr(_core, "stack_forward", misaligning)
    got = functional.stack_forward(**kwargs)
    assert seen  # the binding was called with the misaligned arrays
    for a, b in zip(got[:3], expected[:3]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got[3].workspace, expected[3].workspace)  # the saved record
