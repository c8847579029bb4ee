"""fusedrnn's ONNX helpers never import the ``onnx`` package: importing fusedrnn, and converting a
node given as any object with NodeProto's fields, leave it unimported (runs without onnx too)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import sys
    from types import SimpleNamespace

    import numpy as np
    import fusedrnn

    assert "onnx" not in sys.modules
    weights = fusedrnn.to_onnx_weights(fusedrnn.GRU(3, 4, seed=0))
    attribute = SimpleNamespace(name="linear_before_reset", type=2, i=1)  # an INT attribute
    node = SimpleNamespace(op_type="GRU", input=["X", "W", "R", "B"], attribute=[attribute])
    gru = fusedrnn.from_onnx_node(node, weights)
    assert gru.reset_after and "onnx" not in sys.modules
    Y, Y_h = fusedrnn.onnx_forward(gru, np.zeros((2, 1, 3), np.float32))
    assert Y.shape == (2, 1, 1, 4) and Y_h.shape == (1, 1, 4)
    print("ok")
    """
)


def test_fusedrnn_does_not_import_onnx():
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
