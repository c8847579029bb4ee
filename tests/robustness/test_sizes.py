"""Sizes: tensors past 2**31 elements, and workspaces that cannot be allocated.

The kernels index with int64_t; what they hand to the BLAS is an LP64 int, so the bindings refuse
T*B, input_size, a gate width or a stacked layer input above 2**31 - 1. These tests build such
tensors as zero-strided broadcast views (nothing big exists) and check that the refusal is a
clear ValueError that comes before anything is copied or allocated: each runs under an address
space limit a little above what the process already has, so a regression that copied the view
would fail with a MemoryError instead of filling the machine.

A size whose buffers cannot be allocated is a MemoryError raised by numpy's allocation in the
binding (or, for sizes past what any machine holds, by the binding's own bound), not a crash.
The one correctness run past 2**31 elements allocates ~9 GB and is marked slow.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time

import numpy as np
import pytest

from fusedrnn import GRU, LSTM, LSTMCell, functional
from fusedrnn._spec import GATES

UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
BIG = 2**31  # one past what one BLAS argument takes


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def address_space_limit(extra: int = 2**30):
    """Allow the process only ``extra`` more bytes of address space (no-op under ASan, whose
    shadow reservations make RLIMIT_AS meaningless)."""
    if UNDER_ASAN:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_bytes() + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def view(*shape, dtype=np.float32):
    """A read-only array of ``shape`` (any size) that owns 1 element: a zero-strided view."""
    return np.broadcast_to(np.zeros((), dtype), shape)


@contextlib.contextmanager
def nothing_big_happens():
    """The body must not grow the resident memory by more than 64 MB nor take seconds."""
    rss, start = rss_bytes(), time.perf_counter()
    with address_space_limit():
        yield
    assert rss_bytes() - rss < 64 * 2**20
    assert time.perf_counter() - start < 5


# ---------------------------------------------------------------- refused before any copy


@pytest.mark.parametrize(
    ("x", "pattern"),
    [
        (view(2**16, 2**16, 1), r"T\*B \(the rows of x\) is 4294967296, more than the 2\*\*31 - 1"),
        (view(BIG, 1, 1), r"T\*B \(the rows of x\) is 2147483648"),
        (view(1, BIG, 3), r"T\*B \(the rows of x\) is 2147483648"),
        (view(2, 3, BIG), r"input_size is 2147483648"),
    ],
)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_one_layer_functions_refuse_huge_views_before_copying(cell, x, pattern):
    G = GATES[cell]
    args = {
        "x": x,
        "h0": view(x.shape[1], 4),
        "weight_ih": view(G * 4, x.shape[2]),
        "weight_hh": view(G * 4, 4),
        "bias_ih": view(G * 4),
        "bias_hh": view(G * 4),
    }
    if cell == "lstm":
        args["c0"] = view(x.shape[1], 4)
    with nothing_big_happens(), pytest.raises(ValueError, match=pattern):
        getattr(functional, f"{cell}_forward")(**args)
    y = view(x.shape[0], x.shape[1], 4)
    workspace = view(functional.workspace_size(cell, x.shape[0], x.shape[1], 4))
    backward_args = {k: args[k] for k in ("x", "h0", "c0", "weight_ih", "weight_hh") if k in args}
    with nothing_big_happens(), pytest.raises(ValueError, match=pattern):
        getattr(functional, f"{cell}_backward")(**backward_args, y=y, workspace=workspace, dy=y)


@pytest.mark.parametrize(("cell", "H"), [("lstm", 2**29), ("gru", 715827883)])
def test_a_gate_width_past_one_blas_argument_is_refused(cell, H):
    """(An RNN's weight_hh of gate width 2**31 would have 2**64 bytes: not even a view.)"""
    G = GATES[cell]
    args = {
        "x": np.zeros((2, 1, 3), np.float32),
        "h0": view(1, H),
        "weight_ih": view(G * H, 3),
        "weight_hh": view(G * H, H),
        "bias_ih": view(G * H),
        "bias_hh": view(G * H),
    }
    if cell == "lstm":
        args["c0"] = view(1, H)
    with (
        nothing_big_happens(),
        pytest.raises(
            ValueError,
            match=r"(the gate width|hidden_size) "
            r"is \d+, more than the 2\*\*31 - 1",
        ),
    ):
        getattr(functional, f"{cell}_forward")(**args)


def huge_stack(mode="lstm", T=2**16, B=2**16, I=1, H=4, layers=2, bidirectional=True):
    D = 2 if bidirectional else 1
    G = GATES[mode]
    params = {}
    for name in functional.stack_param_names(mode, layers, bidirectional):
        shape = {
            "weight_ih": (G * H, I if "_l0" in name else D * H),
            "weight_hh": (G * H, H),
            "bias_ih": (G * H,),
            "bias_hh": (G * H,),
        }[name.split("_l")[0]]
        params[name] = view(*shape)
    h0 = view(layers * D, B, H)
    hx = (h0, view(layers * D, B, H)) if mode == "lstm" else h0
    return {
        "mode": mode,
        "x": view(T, B, I),
        "hx": hx,
        "params": params,
        "num_layers": layers,
        "bidirectional": bidirectional,
    }


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"lengths": np.arange(2**16) % 7 + 1},  # would sort (copy) x by length first
        {"dropout_masks": [view(2**16, 2**16, 8)]},  # would stack (copy) the masks first
    ],
)
def test_stacks_refuse_huge_views_before_sorting_or_copying(extra):
    kwargs = {**huge_stack(), **extra}
    with (
        nothing_big_happens(),
        pytest.raises(ValueError, match=r"T\*B \(the rows of x\) is 4294967296"),
    ):
        functional.stack_forward(**kwargs)
    y = view(2**16, 2**16, 8)
    with (
        nothing_big_happens(),
        pytest.raises(ValueError, match=r"T\*B \(the rows of x\) is 4294967296"),
    ):
        functional.stack_backward(**kwargs, y=y, saved=view(10), dy=y)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_layers_refuse_huge_views_before_transposing_copying_or_drawing_masks(
    batch_first, training
):
    layer = LSTM(3, 4, num_layers=2, dropout=0.5, batch_first=batch_first, seed=0)
    layer.train(training)
    x = view(2**16, 2**16, 3)
    with (
        nothing_big_happens(),
        pytest.raises(ValueError, match=r"T\*B \(the rows of x\) is 4294967296"),
    ):
        layer(x)


def test_cells_refuse_huge_views_before_copying():
    cell = LSTMCell(3, 4, seed=0)
    with (
        nothing_big_happens(),
        pytest.raises(ValueError, match=r"T\*B \(the rows of x\) is 2147483648"),
    ):
        cell(view(BIG, 3))


def test_the_reference_backend_has_no_row_limit():
    """The limit is the fused kernels' (one BLAS argument); the reference layer does not check
    it (here it fails later, on the wrong-shaped state, without touching x)."""
    layer = LSTM(3, 4, seed=0, backend="reference").eval()
    with nothing_big_happens(), pytest.raises(ValueError, match=r"hx\[0\] \(h\) must have shape"):
        layer(view(2**16, 2**16, 3), (np.zeros((1, 1, 4), np.float32),) * 2)


def test_a_stacked_layer_input_past_one_blas_argument_is_refused():
    """Layers past the first read D*H_out columns: refused above 2**31 - 1 like the gate width
    (before the bindings' fix, only the gate width G*H was checked)."""
    H = 2**30 + 1  # an RNN's gate width H fits, its bidirectional layer input 2H does not
    params = {}
    for name in functional.stack_param_names("rnn", 2, True, bias=False):
        # weight_ih_l1 (H, 2H) would be 2**63 bytes, too many even for a view: any shape will do,
        # since the sizes are checked before the weights
        wide = "ih" not in name
        params[name] = view(1, 1) if name.startswith("weight_ih_l1") else view(H, H if wide else 1)
    kwargs = {
        "mode": "rnn",
        "x": view(1, 1, 1),
        "hx": view(4, 1, H),
        "params": params,
        "num_layers": 2,
        "bidirectional": True,
    }
    with (
        nothing_big_happens(),
        pytest.raises(
            ValueError,
            match=r"num_directions\*hidden_size \(the input of a layer past the first\) "
            r"is 2147483650",
        ),
    ):
        functional.stack_forward(**kwargs)


def test_stack_buffers_past_any_machine_are_a_memory_error_before_int64_overflow():
    """L*D*T*B*H beyond 2**63: the int64 sizes of the saved and scratch buffers would wrap
    around (and a wrapped, small buffer would be overrun). The binding refuses such stacks as a
    MemoryError before computing them, or copying anything."""
    L, H, P = 8, 2**28, 1
    params = {}
    for name in functional.stack_param_names("lstm", L, True, bias=False, proj_size=P):
        kind = name.split("_l")[0]
        layer_input = 1 if "_l0" in name else 2 * P
        params[name] = view(
            *{"weight_ih": (4 * H, layer_input), "weight_hh": (4 * H, P), "weight_hr": (P, H)}[kind]
        )
    hx = (view(2 * L, 1, P), view(2 * L, 1, H))
    with nothing_big_happens(), pytest.raises(MemoryError, match=r"more than 2\*\*60 elements"):
        functional.stack_forward("lstm", view(2**30, 1, 1), hx, params, L, True, proj_size=P)


# ---------------------------------------------------------------- allocation failures


def innermost_frame(excinfo):
    entry = excinfo.traceback[-1]
    return os.path.basename(str(entry.path)), entry.name


def test_outputs_past_the_address_space_are_a_memory_error_from_the_binding():
    """y of 2**47 bytes (128 TiB, more than x86-64 user space holds): numpy's allocation inside
    the binding fails, on any machine and under ASan (allocator_may_return_null=1)."""
    H = 2**21
    params = {"weight_ih_l0": view(3 * H, 1), "weight_hh_l0": view(3 * H, H)}
    x = np.zeros((2**24, 1, 1), np.float32)  # calloc'd: never touched
    h0 = np.zeros((1, 1, H), np.float32)
    for training in (False, True):
        with nothing_big_happens(), pytest.raises(MemoryError) as excinfo:
            functional.stack_forward("gru", x, h0, params, 1, training=training)
        assert innermost_frame(excinfo) == ("functional.py", "stack_forward")


@pytest.mark.skipif(UNDER_ASAN, reason="RLIMIT_AS does not work under ASan")
@pytest.mark.parametrize("training", [False, True])
def test_layer_whose_output_and_workspace_cannot_be_allocated_raises_memory_error(training):
    """T*B*H*4 bytes = 8 GiB under an address-space limit of 1 GiB more than the process has:
    numpy's np.empty in the binding fails; the kernel never runs, nothing is touched."""
    layer = GRU(1, 256, seed=0).train(training)
    x = np.zeros((2**13, 2**10, 1), np.float32)  # a training forward copies it: 32 MB
    with nothing_big_happens(), pytest.raises(MemoryError, match=r"Unable to allocate") as excinfo:
        layer(x)
    assert innermost_frame(excinfo) == ("functional.py", "stack_forward")
    # the layer still works afterwards
    output, _h_n = layer(x[:3, :2])
    assert output.shape == (3, 2, 256) and np.isfinite(output).all()


@pytest.mark.skipif(UNDER_ASAN, reason="RLIMIT_AS does not work under ASan")
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_one_layer_workspace_that_cannot_be_allocated_raises_memory_error(cell):
    G = GATES[cell]
    H, rng = 256, np.random.default_rng(0)
    args = {
        "x": np.zeros((2**14, 2**10, 1), np.float32),
        "h0": np.zeros((2**10, H), np.float32),
        "weight_ih": rng.standard_normal((G * H, 1)).astype(np.float32),
        "weight_hh": rng.standard_normal((G * H, H)).astype(np.float32),
        "bias_ih": np.zeros(G * H, np.float32),
        "bias_hh": np.zeros(G * H, np.float32),
    }
    if cell == "lstm":
        args["c0"] = np.zeros((2**10, H), np.float32)
    with nothing_big_happens(), pytest.raises(MemoryError, match=r"Unable to allocate") as excinfo:
        getattr(functional, f"{cell}_forward")(**args)
    assert innermost_frame(excinfo) == ("functional.py", f"{cell}_forward")


# ---------------------------------------------------------------- past 2**31 elements, for real


def available_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
@pytest.mark.skipif(available_memory() < 14 * 2**30, reason="needs ~10 GB of free memory")
def test_an_output_past_2_31_elements_is_computed_correctly():
    """An RNN whose y has 2**31 + 2**27 float32 elements (8.5 GB): every offset past 2**31 is
    right. With W_hh = 0 each output is tanh(w_ih * x + b), checked at sampled positions, among
    them the very last."""
    T, B, H = 2**13 + 2**9, 2**14, 16  # T*B*H = 2**31 + 2**27
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, 1), dtype=np.float32)
    w_ih = rng.standard_normal((H, 1)).astype(np.float32)
    bias = rng.standard_normal(H).astype(np.float32)
    y, h_n, _ = functional.rnn_forward(
        x,
        np.zeros((B, H), np.float32),
        w_ih,
        np.zeros((H, H), np.float32),
        bias,
        np.zeros(H, np.float32),
        training=False,
    )
    assert y.size > BIG
    flat = [*rng.integers(0, y.size, 4096).tolist(), y.size - 1, BIG, BIG - 1, BIG + H]
    t, b, j = np.unravel_index(np.array(flat), y.shape)
    want = np.tanh(w_ih[j, 0] * x[t, b, 0] + bias[j])
    np.testing.assert_allclose(y[t, b, j], want, rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(h_n, y[-1])


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize(
    ("q", "k", "v"),
    [
        (view(1, 1, BIG, 1), view(1, 1, 4, 1), view(1, 1, 4, 1)),  # L
        (view(1, 1, 4, 1), view(1, 1, BIG, 1), view(1, 1, BIG, 1)),  # S
        (view(1, 1, 4, BIG), view(1, 1, 4, BIG), view(1, 1, 4, 1)),  # E
        (view(1, 1, 4, 1), view(1, 1, 4, 1), view(1, 1, 4, BIG)),  # Ev
    ],
)
def test_attention_refuses_huge_views_before_copying(q, k, v):
    """(Before the binding's fix it copied q, k, v, 8 GB each here, and only then checked.)"""
    with nothing_big_happens(), pytest.raises(ValueError, match=r"an attention size is 2147483648"):
        functional.attention_forward(q, k, v)
    out, lse = view(*q.shape[:-1], v.shape[-1]), view(*q.shape[:-1])
    with nothing_big_happens(), pytest.raises(ValueError, match=r"an attention size is 2147483648"):
        functional.attention_backward(q, k, v, out, lse, out)


@pytest.mark.parametrize(
    ("sizes", "pattern"),
    [
        ({"T": 2**16, "B": 2**16}, r"B\*T is 4294967296"),
        ({"S": 2**16, "B": 2**16}, r"B\*S is 4294967296"),
        ({"A": BIG}, r"hidden_size is 2147483648"),
        ({"Dq": BIG}, r"query_size is 2147483648"),
        ({"Dk": BIG}, r"key_size is 2147483648"),
        ({"Dv": BIG}, r"value_size is 2147483648"),
    ],
)
def test_additive_attention_refuses_huge_views_before_copying(sizes, pattern):
    """hidden_size and the three feature sizes were not checked at all before the fix (they go
    to the GEMMs as int), and B*T / B*S only after the inputs were copied."""
    s = {"B": 2, "T": 3, "S": 4, "A": 5, "Dq": 1, "Dk": 1, "Dv": 1, **sizes}
    args = (
        view(s["B"], s["T"], s["Dq"]),
        view(s["B"], s["S"], s["Dk"]),
        view(s["B"], s["S"], s["Dv"]),
        view(s["A"], s["Dq"]),
        view(s["A"], s["Dk"]),
        view(s["A"]),
    )
    with nothing_big_happens(), pytest.raises(ValueError, match=pattern):
        functional.additive_attention_forward(*args)
