"""fusedrnn.LayerNorm against torch.nn.LayerNorm: a torch state dict loads as it is, and the
outputs and every gradient match (skipped without PyTorch)."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional
from tests.helpers.cells import assert_close

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    "options",
    [{}, {"bias": False}, {"elementwise_affine": False}, {"eps": 1e-3}],
    ids=["affine", "no_bias", "no_affine", "eps"],
)
@pytest.mark.parametrize("normalized_shape", [7, (3, 4)], ids=["int", "tuple"])
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_matches_torch_layer_norm(dtype, backend, normalized_shape, options):
    torch_dtype = {np.float64: torch.float64, np.float32: torch.float32}[dtype]
    theirs = torch.nn.LayerNorm(normalized_shape, dtype=torch_dtype, **options)
    with torch.no_grad():  # gains and biases away from 1 and 0
        for p in theirs.parameters():
            p.add_(torch.rand_like(p) - 0.5)
    ours = fusedrnn.LayerNorm(normalized_shape, dtype=dtype, backend=backend, **options)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())

    rng = np.random.default_rng(0)
    x = (2 + rng.standard_normal((5, 2, *ours.normalized_shape))).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y = ours(x)
    dx = ours.backward(dy)

    x_t = torch.from_numpy(x).requires_grad_(True)
    y_t = theirs(x_t)
    y_t.backward(torch.from_numpy(dy))
    assert_close(y, y_t.detach().numpy(), dtype, "y")
    assert_close(dx, x_t.grad.numpy(), dtype, "dx")
    for name, p in theirs.named_parameters():
        assert_close(ours.grads[name], p.grad.numpy(), dtype, "d" + name)
    assert set(ours.grads) == {name for name, _ in theirs.named_parameters()}


def test_functional_matches_torch():
    rng = np.random.default_rng(1)
    x, weight, bias = rng.standard_normal((4, 3, 6)), rng.standard_normal(6), rng.standard_normal(6)
    want = torch.nn.functional.layer_norm(
        torch.from_numpy(x), (6,), torch.from_numpy(weight), torch.from_numpy(bias), eps=1e-5
    )
    assert_close(functional.layer_norm(x, 6, weight, bias), want.numpy(), np.float64, "y")
