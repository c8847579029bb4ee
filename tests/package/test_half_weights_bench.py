"""``python -m fusedrnn bench --half-weights``: every implementation validated, then timed; the
ONNX model it builds for onnxruntime is PyTorch's layer (gate order, GRU's linear_before_reset)."""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import __main__ as cli
from fusedrnn import reference
from fusedrnn.bench import half_weights


def test_cli_prints_a_validated_row_per_implementation(capsys):
    code = cli.main(["bench", "--half-weights", "--repeats", "2", "--only", "gru"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAILED" not in out
    for name in ("fused float32", "fused float16", "fused bfloat16"):
        assert f"gru B=1 T=100 I=256 H=256 {name}" in out
    assert "lstm B=1" not in out
    expected_ort = half_weights.import_onnxruntime() is not None
    assert ("onnxruntime float32" in out) == expected_ort


def test_cli_refuses_what_it_does_not_print(capsys):
    assert cli.main(["bench", "--half-weights", "--only", "rnn"]) == 2
    assert cli.main(["bench", "--half-weights", "--json", "x.json"]) == 2


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_onnx_model_is_the_layer(cell):
    pytest.importorskip("onnxruntime")
    onnx, onnxruntime = half_weights.import_onnxruntime()
    T, B, I, H = 4, 3, 5, 6
    layer = half_weights._LAYERS[cell](I, H, seed=1, backend="reference").eval()
    params = dict(layer.named_parameters())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    c0 = rng.standard_normal((1, B, H)).astype(np.float32)
    model = half_weights.onnx_recurrent_model(onnx, cell, params, B, T, I)
    onnx.checker.check_model(model)
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = {"X": x, "initial_h": h0, **({"initial_c": c0} if cell == "lstm" else {})}
    (y,) = session.run(None, feeds)
    hx = (h0, c0) if cell == "lstm" else h0
    expected = reference.stack_forward(cell, x, hx, params, 1, training=False)[0]
    np.testing.assert_allclose(y[:, 0], expected, rtol=1e-4, atol=1e-5)
