"""``python -m fusedrnn bench --half-weights``: batch-1 inference with 16-bit weights.

For each case (LSTM and GRU, one sequence of T=100 steps, I = H = 256) one layer runs in eval
mode with float32 weights, with ``weights_dtype="float16"`` and with ``"bfloat16"`` (on a CPU
with AMX, whose tiles then take bfloat16's products, also without them: "FMA"), and, when
``onnx`` and ``onnxruntime`` can be imported, onnxruntime runs the same layer as an ONNX LSTM /
GRU node in float32. Each is first checked: the float32 runs against the float32 NumPy reference,
the 16-bit ones against the reference with the weights rounded the same way. Then the calls are
timed in short blocks, interleaved (each implementation one block per round, so a busy spell of
this shared machine slows them alike), and the table gives each one's minimum and median and the
ratios to float32 and to onnxruntime, of the minima and of the medians.

Blocks, not single calls, with a pause before each: onnxruntime's pool threads keep spinning for
about 55 ms after its last call (measured on a 2-core Zen 3: 48 ms of CPU in a 50 ms sleep).
Interleaved call by call, they held a core all through the fused calls' two-thread team, which
then ran slower than on one thread (GRU bfloat16 median 1.8-2.5 ms against 1.0 alone).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .. import _config, _core
from ..layers import GRU, LSTM
from .implementations import compare
from .machine import cpu_name, isa_note

# (cell, B, T, I, H): the batch-1 inference cases
CASES = (("lstm", 1, 100, 256, 256), ("gru", 1, 100, 256, 256))
WEIGHTS_DTYPES = (None, "float16", "bfloat16")
_LAYERS = {"lstm": LSTM, "gru": GRU}
# ONNX's gate order as blocks of PyTorch's: LSTM i,o,f,c of i,f,g,o; GRU z,r,h of r,z,n
_ONNX_BLOCKS = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}


@dataclass
class Timings:
    """One implementation's seconds per call, over the rounds."""

    name: str
    seconds: list

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))


def import_onnxruntime() -> tuple[ModuleType, ModuleType] | None:
    """``(onnx, onnxruntime)`` when both can be imported, else None (they are optional)."""
    try:
        import onnx
        import onnxruntime
    except (ImportError, OSError):
        return None
    return onnx, onnxruntime


def onnx_recurrent_model(onnx: ModuleType, cell: str, params: dict, B: int, T: int, I: int):
    """An in-memory ONNX model of one LSTM / GRU node (float32) with the layer's ``params``
    (PyTorch's names and gate order; GRU with ``linear_before_reset=1``, PyTorch's form).
    Inputs ``X`` (T, B, I), ``initial_h`` (1, B, H) (and ``initial_c``); output ``Y``
    (T, 1, B, H)."""
    helper, TensorProto = onnx.helper, onnx.TensorProto
    H = params["weight_hh_l0"].shape[1]
    order = _ONNX_BLOCKS[cell]

    def reordered(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[k * H : (k + 1) * H] for k in order])[None]

    weights = {
        "W": reordered(params["weight_ih_l0"]),
        "R": reordered(params["weight_hh_l0"]),
        "B": np.concatenate(
            [reordered(params["bias_ih_l0"])[0], reordered(params["bias_hh_l0"])[0]]
        )[None],
    }
    initializers = [
        helper.make_tensor(name, TensorProto.FLOAT, a.shape, a.astype(np.float32).ravel())
        for name, a in weights.items()
    ]
    states = ["initial_h", "initial_c"] if cell == "lstm" else ["initial_h"]
    attributes = {"hidden_size": H}
    if cell == "gru":
        attributes["linear_before_reset"] = 1
    node = helper.make_node(cell.upper(), ["X", "W", "R", "B", "", *states], ["Y"], **attributes)
    graph = helper.make_graph(
        [node],
        f"fusedrnn_{cell}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])]
        + [helper.make_tensor_value_info(s, TensorProto.FLOAT, [1, B, H]) for s in states],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, B, H])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _calls(cell: str, B: int, T: int, I: int, H: int, threads: int) -> tuple[dict, list]:
    """The validated calls of a case by name (each returns the output y (T, B, H)), and the
    problems of those that did not match their reference."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    hx = rng.standard_normal((1, B, H)).astype(np.float32)
    state = (hx, rng.standard_normal((1, B, H)).astype(np.float32)) if cell == "lstm" else hx
    calls, problems = {}, []
    for weights_dtype in WEIGHTS_DTYPES:
        name = f"fused {weights_dtype or 'float32'}"
        layer = _LAYERS[cell](I, H, seed=0, weights_dtype=weights_dtype).eval()
        truth = _LAYERS[cell](I, H, seed=0, weights_dtype=weights_dtype, backend="reference")
        expected = truth.eval()(x, state)[0]
        found = compare({"y": layer(x, state)[0]}, {"y": expected}, np.float32)
        problems += [f"{cell} {name}: {p}" for p in found]
        if not found:
            calls[name] = lambda layer=layer: layer(x, state)[0]
        if not found and weights_dtype == "bfloat16" and _core.amx_active():
            # the same without AMX's tiles: the FMA panels, as on a CPU without AMX
            fma_layer = _LAYERS[cell](I, H, seed=0, weights_dtype=weights_dtype).eval()
            calls[f"{name} FMA"] = lambda layer=fma_layer: _without_amx(layer, x, state)
        if weights_dtype is None:
            params, float32_output = dict(layer.named_parameters()), expected
    modules = import_onnxruntime()
    if modules is not None:
        onnx, onnxruntime = modules
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        model = onnx_recurrent_model(onnx, cell, params, B, T, I)
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        feeds = {"X": x, "initial_h": hx}
        if cell == "lstm":
            feeds["initial_c"] = state[1]

        def ort_call() -> np.ndarray:
            return session.run(None, feeds)[0][:, 0]

        found = compare({"y": ort_call()}, {"y": float32_output}, np.float32)
        problems += [f"{cell} onnxruntime float32: {p}" for p in found]
        if not found:
            calls["onnxruntime float32"] = ort_call
    return calls, problems


def _without_amx(layer, x: np.ndarray, state) -> np.ndarray:
    """``layer(x, state)[0]`` with AMX switched off for the call (the layer keeps a packing
    without AMX's tiles)."""
    _core._set_amx_enabled(False)
    try:
        return layer(x, state)[0]
    finally:
        _core._set_amx_enabled(True)


BLOCK_CALLS = 10
"""Timed calls of one implementation in a row (`time_in_blocks`)."""
SETTLE_SECONDS = 0.1
"""Pause before each block, longer than onnxruntime's threads spin after a call (55 ms)."""


def time_in_blocks(
    calls: dict[str, Callable], timed: int, settle: float = SETTLE_SECONDS
) -> list[Timings]:
    """``timed`` timed calls of each, in blocks of up to `BLOCK_CALLS`: per round one block of
    each implementation, in an order that rotates every round; before each block a pause of
    ``settle`` seconds (the last block's threads go idle) and one untimed call (the first
    after a pause finds cold caches)."""
    names = list(calls)
    block = min(BLOCK_CALLS, timed)
    seconds = {name: [] for name in names}
    for r in range(-(-timed // block)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(settle)
            calls[name]()
            for _ in range(min(block, timed - len(seconds[name]))):
                start = time.perf_counter()
                calls[name]()
                seconds[name].append(time.perf_counter() - start)
    return [Timings(name, seconds[name]) for name in names]


def run(threads: int | None = None, timed: int = 200, cells: tuple = ("lstm", "gru")) -> list:
    """Validate and time every case of ``cells`` (``timed`` calls of each implementation); the
    lines of the table and its notes."""
    threads = threads or _config.get_num_threads()
    load, note = os.getloadavg()[0], isa_note()
    lines = [
        f"batch-1 inference with 16-bit weights: {cpu_name()}, {threads} threads, "
        f"{timed} timed calls each, interleaved in blocks of {min(BLOCK_CALLS, timed)}, "
        f"load average {load:.2f} at the start",
        *([f"ISA: {note}"] if note else []),
        f"{'case':<24} {'implementation':<20} {'min ms':>8} {'median ms':>10} "
        f"{'float32/this':>13} {'onnxruntime/this':>17}",
    ]
    problems = []
    before = _config.get_num_threads()
    _config.set_num_threads(threads)
    try:
        for cell, B, T, I, H in CASES:
            if cell not in cells:
                continue
            calls, found = _calls(cell, B, T, I, H, threads)
            problems += found
            timings = {t.name: t for t in time_in_blocks(calls, timed)}
            base, ort = timings.get("fused float32"), timings.get("onnxruntime float32")
            lines += [
                f"{f'{cell} B={B} T={T} I={I} H={H}':<24} {t.name:<20} "
                f"{t.best * 1e3:8.3f} {t.median * 1e3:10.3f} "
                f"{_ratios(base, t):>13} {_ratios(ort, t):>17}"
                for t in timings.values()
            ]
    finally:
        _config.set_num_threads(before)
    lines.append("ratios: of the minima (of the medians); > 1 means this implementation is faster")
    if _core.amx_active():
        lines.append(
            "AMX: bfloat16 multiplies on AMX's tiles; 'fused bfloat16 FMA' is the same without them"
        )
    if import_onnxruntime() is None:
        lines.append("onnxruntime: not installed (pip install onnx onnxruntime) - no row")
    lines.append(f"load average {os.getloadavg()[0]:.2f} at the end")
    if problems:
        lines += ["FAILED validation (not timed):", *problems]
    return lines


def _ratios(baseline: Timings | None, t: Timings) -> str:
    if baseline is None:
        return "-"
    return f"{baseline.best / t.best:.2f}x ({baseline.median / t.median:.2f}x)"
