"""fusedrnn.TransformerDecoderBlock against PyTorch in float64: a block written out of
torch.nn.LayerNorm, nn.MultiheadAttention with a causal mask and nn.Linear, and
torch.nn.TransformerEncoderLayer(norm_first=True) with a causal mask; both state dicts load as
they are, and the outputs, the input's gradient and every parameter's gradient match (skipped
without PyTorch). Also GELU, ReLU, Tanh and Sigmoid against torch.nn's."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from tests.helpers.cells import assert_close

torch = pytest.importorskip("torch")


class TorchBlock(torch.nn.Module):
    """The pre-LN causal block from torch's parts, named as TransformerEncoderLayer's."""

    def __init__(self, d_model, nhead, dim_feedforward, activation):
        super().__init__()
        kwargs = {"dtype": torch.float64}
        self.self_attn = torch.nn.MultiheadAttention(d_model, nhead, batch_first=True, **kwargs)
        self.linear1 = torch.nn.Linear(d_model, dim_feedforward, **kwargs)
        self.linear2 = torch.nn.Linear(dim_feedforward, d_model, **kwargs)
        self.norm1 = torch.nn.LayerNorm(d_model, **kwargs)
        self.norm2 = torch.nn.LayerNorm(d_model, **kwargs)
        self.activation = {"gelu": torch.nn.GELU(), "relu": torch.nn.ReLU()}[activation]

    def forward(self, x):
        L = x.shape[1]
        future = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)  # True: masked
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, attn_mask=future, need_weights=False)[0]
        return x + self.linear2(self.activation(self.linear1(self.norm2(x))))


def encoder_layer(d_model, nhead, dim_feedforward, activation):
    layer = torch.nn.TransformerEncoderLayer(
        d_model,
        nhead,
        dim_feedforward,
        dropout=0.0,
        activation=activation,
        batch_first=True,
        norm_first=True,
        dtype=torch.float64,
    )

    def forward(x):
        mask = torch.nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype)
        return layer(x, src_mask=mask, is_causal=True)

    return layer, forward


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("theirs_kind", ["parts", "encoder_layer"])
def test_block_matches_torch(theirs_kind, activation, backend):
    torch.manual_seed(0)
    if theirs_kind == "parts":
        theirs = TorchBlock(16, 4, 32, activation)
        run = theirs
    else:
        theirs, run = encoder_layer(16, 4, 32, activation)
    with torch.no_grad():  # biases and LN parameters away from 0 and 1 (torch starts them there)
        for p in theirs.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ours = fusedrnn.TransformerDecoderBlock(
        16, 4, 32, dropout=0.0, activation=activation, dtype=np.float64, backend=backend
    )
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9, 16))
    dy = rng.standard_normal(x.shape)
    y = ours(x)
    dx = ours.backward(dy)
    x_t = torch.from_numpy(x).requires_grad_(True)
    y_t = run(x_t)
    y_t.backward(torch.from_numpy(dy))
    assert_close(y, y_t.detach().numpy(), np.float64, "y")
    assert_close(dx, x_t.grad.numpy(), np.float64, "dx")
    for name, p in theirs.named_parameters():
        assert_close(ours.grads[name], p.grad.numpy(), np.float64, "d" + name)
    assert set(ours.grads) == {name for name, _ in theirs.named_parameters()}


@pytest.mark.parametrize("name", ["GELU", "ReLU", "Tanh", "Sigmoid"])
def test_activations_match_torch(name):
    x = np.random.default_rng(1).standard_normal((4, 6)) * 3
    dy = np.random.default_rng(2).standard_normal(x.shape)
    ours = getattr(fusedrnn, name)()
    y = ours(x)
    dx = ours.backward(dy)
    x_t = torch.from_numpy(x).requires_grad_(True)
    y_t = getattr(torch.nn, name)()(x_t)
    y_t.backward(torch.from_numpy(dy))
    assert_close(y, y_t.detach().numpy(), np.float64, "y")
    assert_close(dx, x_t.grad.numpy(), np.float64, "dx")
