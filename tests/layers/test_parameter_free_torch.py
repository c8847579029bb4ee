"""`Dropout` and `LogSoftmax` against torch.nn (skipped without PyTorch).

The dropout masks come from different generators, so they are compared where both keep an
entry: there the outputs and gradients must be torch's to the bit (the same ``x * noise`` with
``noise = 1 / (1 - p)`` in the input's dtype); the rest is the identity / zero edge cases and the
keep rate.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import Dropout, LogSoftmax
from tests.helpers.cells import assert_close

torch = pytest.importorskip("torch")

DTYPES = [np.float32, np.float64]


def torch_dtype(dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_values_and_gradient_are_torchs_where_both_keep(p, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 50)) + 10).astype(dtype)  # never zero
    d_output = rng.standard_normal(x.shape).astype(dtype)
    ours = Dropout(p, seed=0)
    y = ours(x)
    dx = ours.backward(d_output)
    torch.manual_seed(0)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.Dropout(p)(xt)
    yt.backward(torch.tensor(d_output))
    both = (y != 0) & (yt.detach().numpy() != 0)
    assert both.sum() > 0.5 * (1 - p) ** 2 * x.size
    np.testing.assert_array_equal(y[both], yt.detach().numpy()[both])
    np.testing.assert_array_equal(dx[both], xt.grad.numpy()[both])
    np.testing.assert_array_equal(dx[y == 0], 0)
    # both keep 1 - p of the entries (5 sigma)
    sigma = np.sqrt(x.size * p * (1 - p))
    for output in (y, yt.detach().numpy()):
        assert abs(np.count_nonzero(output) - (1 - p) * x.size) < 5 * sigma


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("p", "training"), [(0.0, True), (1.0, True), (0.5, False)])
def test_dropout_edge_cases_as_torch(p, training, dtype):
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(dtype)
    x[1, 2] = np.nan
    d_output = np.full(x.shape, 2.0, dtype)
    ours, theirs = Dropout(p).train(training), torch.nn.Dropout(p).train(training)
    y = ours(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    np.testing.assert_array_equal(y, yt.detach().numpy())  # NaN where torch has NaN
    if training:
        yt.backward(torch.tensor(d_output))
        np.testing.assert_array_equal(ours.backward(d_output), xt.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, 2, -1, -2])
def test_log_softmax_forward_and_backward_as_torch(dim, dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 5, 6)) * 30).astype(dtype)
    x[0, 0, 0] = 1e4  # large magnitudes
    x[1, 1, :] = -1e4
    x[2, 2, 3] = -np.inf  # a class of probability 0
    d_output = rng.standard_normal(x.shape).astype(dtype)
    ours = LogSoftmax(dim)
    out = ours(x)
    dx = ours.backward(d_output)
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.nn.LogSoftmax(dim)(xt)
    out_t.backward(torch.tensor(d_output))
    finite = np.isfinite(out_t.detach().numpy())
    np.testing.assert_array_equal(np.isfinite(out), finite)
    assert_close(np.where(finite, out, 0), np.where(finite, out_t.detach().numpy(), 0), dtype)
    assert_close(dx, xt.grad.numpy(), dtype, "dx")
