"""The NumPy reference of LayerNorm and of the layer-normalised LSTM and GRU against central
finite differences in float64: every input, state and parameter gradient."""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import reference
from tests.helpers.numgrad import ATOL, RTOL, central_differences
from tests.layer_norm.cases import CELLS, cell_inputs, cell_loss, run_cell


@pytest.mark.parametrize("affine", ["none", "weight", "weight+bias"])
def test_layer_norm_reference_gradients(affine):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 7))
    weight = None if affine == "none" else 1 + 0.5 * rng.standard_normal(7)
    bias = rng.standard_normal(7) if affine == "weight+bias" else None
    dy = rng.standard_normal((4, 7))

    def loss():
        y, _, _ = reference.layer_norm_forward(x, weight, bias, eps=1e-3, training=False)
        return np.sum(dy * y)

    _, mean, rstd = reference.layer_norm_forward(x, weight, bias, eps=1e-3)
    dx, grads = reference.layer_norm_backward(x, weight, mean, rstd, dy, bias=bias is not None)
    np.testing.assert_allclose(dx, central_differences(loss, x), rtol=RTOL, atol=ATOL)
    for name, param in (("weight", weight), ("bias", bias)):
        if param is None:
            assert name not in grads
            continue
        numeric = central_differences(loss, param)
        np.testing.assert_allclose(grads[name], numeric, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("cell", CELLS)
def test_ln_cell_reference_gradients(cell, bias):
    a = cell_inputs(cell, T=3, B=2, I=3, H=4, dtype=np.float64, seed=1, bias=bias)
    _, analytic = run_cell(reference, cell, a)
    arrays = {"x": a["x"], "h0": a["h0"], "c0": a["c0"]}
    arrays.update({f"weights[{role!r}]": value for role, value in a["weights"].items()})
    assert set(analytic) == {name for name, value in arrays.items() if value is not None}
    for name, array in arrays.items():
        if array is None:
            continue
        numeric = central_differences(lambda: cell_loss(reference, cell, a), array)
        np.testing.assert_allclose(analytic[name], numeric, rtol=RTOL, atol=ATOL, err_msg=name)
