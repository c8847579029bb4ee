"""ONNX's official node tests of its LSTM, GRU and RNN operators run on fusedrnn: each case's node
through `fusedrnn.from_onnx_node` and the fused layer (`fusedrnn.onnx_forward`), against the
case's expected outputs (Y, Y_h, Y_c as the node has them); and the weight helpers by round trip.

The cases come from the ``onnx`` package (the optional extra ``onnx``): the files under
onnx/backend/test/data/node/ (model.onnx + test_data_set_0/*.pb) where the installed package ships
them, else the same cases built by onnx.backend.test.case.node (the code those files are generated
from). Every case found runs; one fusedrnn cannot express would be listed in NOT_EXPRESSIBLE with
its reason and asserted to be refused, never skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fusedrnn
from tests.helpers.cells import assert_close

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402  (after the importorskip)

from tests.onnx.node_cases import all_node_cases  # noqa: E402

OPS = ("LSTM", "GRU", "RNN")
PREFIXES = ("test_lstm_", "test_gru_", "test_rnn_", "test_simple_rnn_")
# case name -> why fusedrnn cannot run it: the start of the ValueError from_onnx_node must raise
# for it. Empty: every LSTM, GRU and RNN case of ONNX 1.17 to 1.23 runs.
NOT_EXPRESSIBLE: dict[str, str] = {}


def _data_dir_cases() -> dict:
    root = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    cases = {}
    for case_dir in sorted(root.glob("test_*")) if root.is_dir() else ():
        if not case_dir.name.startswith(PREFIXES):
            continue
        model = onnx.load(str(case_dir / "model.onnx"))
        data = case_dir / "test_data_set_0"

        def read(kind, data=data):
            arrays = []
            for path in sorted(data.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1])):
                tensor = onnx.TensorProto()
                tensor.ParseFromString(path.read_bytes())
                arrays.append(numpy_helper.to_array(tensor))
            return arrays

        cases[case_dir.name] = (model, read("input"), read("output"))
    return cases


def _generated_cases() -> dict:
    cases = {}
    for case in all_node_cases():
        if case.name.startswith(PREFIXES) and case.model.graph.node[0].op_type in OPS:
            inputs, outputs = case.data_sets[0]
            cases[case.name] = (case.model, list(inputs), list(outputs))
    return cases


def _cases() -> dict:
    cases = _data_dir_cases()
    return cases if cases else _generated_cases()


CASES = _cases()


def test_the_official_cases_are_found():
    # the three operators' cases, the peephole one among them (ONNX >= 1.17 has all of these)
    for name in (
        "test_lstm_defaults",
        "test_lstm_with_initial_bias",
        "test_lstm_with_peepholes",
        "test_lstm_batchwise",
        "test_gru_defaults",
        "test_gru_seq_length",
        "test_gru_with_initial_bias",
        "test_gru_batchwise",
        "test_rnn_seq_length",
        "test_simple_rnn_defaults",
        "test_simple_rnn_with_initial_bias",
        "test_simple_rnn_batchwise",
    ):
        assert name in CASES, f"{name} is not among ONNX's node tests {sorted(CASES)}"


def run_case(model, inputs):
    graph = model.graph
    assert len(graph.node) == 1
    node = graph.node[0]
    arrays = {value.name: array for value, array in zip(graph.input, inputs)}
    layer = fusedrnn.from_onnx_node(node, arrays)
    names = list(node.input) + [""] * (8 - len(node.input))

    def optional(index):
        return arrays.get(names[index]) if names[index] else None

    outputs = fusedrnn.onnx_forward(
        layer,
        arrays[names[0]],
        optional(4),
        optional(5),
        optional(6) if layer._has_cell_state else None,
    )
    return node, dict(zip(("Y", "Y_h", "Y_c"), outputs))


@pytest.mark.parametrize("name", sorted(CASES))
def test_official_node_case(name):
    model, inputs, expected = CASES[name]
    if name in NOT_EXPRESSIBLE:
        with pytest.raises(ValueError, match=NOT_EXPRESSIBLE[name]):
            run_case(model, inputs)
        return
    node, got = run_case(model, inputs)
    # the node's outputs that have a name, in order, are the case's expected arrays
    roles = [role for role, output in zip(("Y", "Y_h", "Y_c"), node.output) if output]
    assert len(roles) == len(expected) >= 1
    for role, want in zip(roles, expected):
        assert got[role].shape == want.shape, (role, got[role].shape, want.shape)
        assert_close(got[role], want.astype(got[role].dtype), np.float32, f"{name}: {role}")


# ------------------------------------------------------------ the weight helpers


class _Attribute:
    """An AttributeProto's fields, without onnx (from_onnx_node must not need the package)."""

    def __init__(self, name, value):
        self.name = name
        if isinstance(value, float):
            self.type, self.f = 1, value
        elif isinstance(value, int):
            self.type, self.i = 2, value
        elif isinstance(value, str):
            self.type, self.s = 3, value.encode()
        else:
            self.type, self.strings = 8, [v.encode() for v in value]


class _Node:
    def __init__(self, op_type, inputs, **attributes):
        self.op_type, self.input, self.output = op_type, inputs, ["Y", "Y_h"]
        self.attribute = [_Attribute(k, v) for k, v in attributes.items()]


@pytest.mark.parametrize(
    ("layer", "op", "attributes"),
    [
        (
            fusedrnn.LSTM(3, 4, bidirectional=True, peephole=True, seed=0, dtype=np.float64),
            "LSTM",
            {"direction": "bidirectional"},
        ),
        (
            fusedrnn.LSTM(3, 4, input_forget=True, clip=2.0, seed=1),
            "LSTM",
            {"input_forget": 1, "clip": 2.0},
        ),
        (fusedrnn.GRU(3, 4, reset_after=False, seed=2), "GRU", {}),
        (
            fusedrnn.GRU(3, 4, reset_after=True, bidirectional=True, seed=3),
            "GRU",
            {"linear_before_reset": 1, "direction": "bidirectional"},
        ),
        (fusedrnn.RNN(3, 4, activations=["Relu"], seed=4), "RNN", {"activations": ["Relu"]}),
    ],
)
def test_weights_round_trip(layer, op, attributes):
    weights = fusedrnn.to_onnx_weights(layer)
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    D = layer.num_directions
    assert weights["W"].shape == (D, G * 4, 3) and weights["R"].shape == (D, G * 4, 4)
    assert weights["B"].shape == (D, 2 * G * 4)
    node = _Node(op, ["X", "W", "R", "B", "", "", "", "P" if "P" in weights else ""], **attributes)
    rebuilt = fusedrnn.from_onnx_node(node, weights)
    assert type(rebuilt) is type(layer)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(rebuilt.state_dict()[key], value, err_msg=key)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(layer.dtype)
    np.testing.assert_array_equal(rebuilt(x)[0], layer(x)[0])


def test_gate_orders_are_onnxs():
    # fusedrnn's i, f, g, o blocks land in ONNX's i, o, f, c; r, z, n in z, r, h; p_i, p_f, p_o
    # in p_i, p_o, p_f
    lstm = fusedrnn.LSTM(1, 1, peephole=True, dtype=np.float64)
    lstm.load_state_dict(
        {
            "weight_ih_l0": np.array([[0.0], [1.0], [2.0], [3.0]]),  # i, f, g, o
            "weight_hh_l0": np.zeros((4, 1)),
            "bias_ih_l0": np.array([0.0, 1.0, 2.0, 3.0]),
            "bias_hh_l0": np.array([10.0, 11.0, 12.0, 13.0]),
            "weight_peephole_l0": np.array([0.0, 1.0, 2.0]),  # i, f, o
        }
    )
    w = fusedrnn.to_onnx_weights(lstm)
    np.testing.assert_array_equal(w["W"][0, :, 0], [0, 3, 1, 2])  # i, o, f, c
    np.testing.assert_array_equal(w["B"][0], [0, 3, 1, 2, 10, 13, 11, 12])
    np.testing.assert_array_equal(w["P"][0], [0, 2, 1])  # i, o, f
    gru = fusedrnn.GRU(1, 1, dtype=np.float64)
    gru.load_state_dict({**gru.state_dict(), "weight_ih_l0": np.array([[0.0], [1.0], [2.0]])})
    np.testing.assert_array_equal(fusedrnn.to_onnx_weights(gru)["W"][0, :, 0], [1, 0, 2])


def test_from_onnx_node_refuses_what_it_cannot_run():
    w = fusedrnn.to_onnx_weights(fusedrnn.GRU(2, 3))
    with pytest.raises(ValueError, match="op_type"):
        fusedrnn.from_onnx_node(_Node("Scan", ["X", "W", "R"]), w)
    with pytest.raises(ValueError, match="direction"):
        fusedrnn.from_onnx_node(_Node("GRU", ["X", "W", "R"], direction="sideways"), w)
    with pytest.raises(ValueError, match="initializers lack R"):
        fusedrnn.from_onnx_node(_Node("GRU", ["X", "W", "Q"]), w)
    with pytest.raises(ValueError, match="activations"):
        fusedrnn.from_onnx_node(_Node("GRU", ["X", "W", "R"], activations=["Cube", "Tanh"]), w)
    with pytest.raises(ValueError, match="projection"):
        fusedrnn.to_onnx_weights(fusedrnn.LSTM(3, 4, proj_size=2))
