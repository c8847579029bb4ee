"""fusedrnn's ONNX LSTM / GRU / RNN options against onnxruntime, an independent implementation.

ONNX's own node tests (tests/onnx/) do not exercise ``clip``, ``input_forget`` or the activation
functions beyond PyTorch's, and ONNX's reference implementation ignores them; onnxruntime
implements them all. This builds one node per case, runs it in onnxruntime and through
``fusedrnn.from_onnx_node`` + ``fusedrnn.onnx_forward``, prints the largest relative difference of
each and fails past 1e-5 (float32). Not part of the test suite: onnxruntime is no dependency.

    pip install onnx onnxruntime   # (into a venv or a --target folder of your own)
    PYTHONPATH=pkg python tools/onnxruntime_recurrent_parity.py
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime
from onnx import TensorProto, helper

import fusedrnn
from fusedrnn._cell_options import ACTIVATION_NAMES

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def relative_difference(op, attributes, peephole=False, lengths=None, seed=0):
    """Largest |fusedrnn - onnxruntime| / max(1, |onnxruntime|) over the node's outputs."""
    rng = np.random.default_rng(seed)
    T, B, I, H = 5, 3, 4, 6
    D = 2 if attributes.get("direction") == "bidirectional" else 1
    G = GATES[op]
    arrays = {
        "X": rng.standard_normal((T, B, I)).astype(np.float32) * 2,
        "W": rng.uniform(-0.8, 0.8, (D, G * H, I)).astype(np.float32),
        "R": rng.uniform(-0.8, 0.8, (D, G * H, H)).astype(np.float32),
        "B": rng.uniform(-0.5, 0.5, (D, 2 * G * H)).astype(np.float32),
        "lengths": np.array(lengths or [T] * B, np.int32),
        "h0": rng.standard_normal((D, B, H)).astype(np.float32),
        "c0": rng.standard_normal((D, B, H)).astype(np.float32),
        "P": rng.uniform(-0.8, 0.8, (D, 3 * H)).astype(np.float32),
    }
    names = ["X", "W", "R", "B", "lengths", "h0"]
    if op == "LSTM":
        names += ["c0", "P" if peephole else ""]
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outputs, hidden_size=H, **attributes)
    graph = helper.make_graph(
        [node],
        "cell",
        [
            helper.make_tensor_value_info(
                n, TensorProto.INT32 if n == "lengths" else TensorProto.FLOAT, arrays[n].shape
            )
            for n in names
            if n
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    want = session.run(None, {n: arrays[n] for n in names if n})
    layer = fusedrnn.from_onnx_node(node, arrays)
    c0 = arrays["c0"] if op == "LSTM" else None
    got = fusedrnn.onnx_forward(layer, arrays["X"], arrays["lengths"], arrays["h0"], c0)
    return max(
        float(np.max(np.abs(g - w))) / max(1.0, float(np.max(np.abs(w)))) for g, w in zip(got, want)
    )


def cases():
    yield "LSTM", {}, True, None
    yield "LSTM", {"clip": 0.7}, True, None
    yield "LSTM", {"input_forget": 1, "clip": 1.5}, True, [5, 3, 2]
    yield "LSTM", {"direction": "bidirectional", "clip": 1.0}, True, [5, 2, 4]
    yield "LSTM", {"direction": "reverse"}, True, None
    yield "GRU", {"clip": 0.5, "linear_before_reset": 1, "direction": "bidirectional"}, False, None
    yield "RNN", {"clip": 0.3}, False, [1, 5, 3]
    for name in ACTIVATION_NAMES:
        # every function in every slot (alpha, beta given: onnxruntime's default alpha of
        # ThresholdedRelu is 0, the specification's 1.0)
        alpha = {"activation_alpha": [0.4], "activation_beta": [0.7]}
        for op, slots in (("LSTM", ["Sigmoid", "Tanh", "Tanh"]), ("GRU", ["Sigmoid", "Tanh"])):
            for slot in range(len(slots)):
                acts = list(slots)
                acts[slot] = name
                for lbr in (0, 1) if op == "GRU" else (None,):
                    extra = {} if lbr is None else {"linear_before_reset": lbr}
                    yield op, {"activations": acts, **alpha, **extra}, op == "LSTM", None
        yield "RNN", {"activations": [name], **alpha}, False, None
    yield (
        "GRU",
        {
            "activations": ["Sigmoid", "ThresholdedRelu", "Softsign", "ScaledTanh"],
            "activation_alpha": [0.3, 0.9],
            "activation_beta": [1.1],
            "direction": "bidirectional",
            "clip": 2.0,
        },
        False,
        [2, 5, 4],
    )


def main() -> int:
    worst = 0.0
    for op, attributes, peephole, lengths in cases():
        difference = relative_difference(op, attributes, peephole, lengths)
        worst = max(worst, difference)
        print(f"{op:4} peephole={peephole!s:5} {attributes}: {difference:.2e}")
    print(f"largest relative difference: {worst:.2e}")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
