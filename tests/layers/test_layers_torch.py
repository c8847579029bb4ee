"""Parity of the layers and cells with torch.nn, where PyTorch is installed (skipped otherwise).

Weights go from the torch module to ours through ``load_state_dict`` of torch's state dict; then
outputs, final states and every gradient (input, initial states, each parameter) are compared in
float64, including packed sequences (``pack_padded_sequence(..., enforce_sorted=False)``),
batch_first, projections, both directions, bias=False and unbatched input. GRU with
reset_after=False has no torch twin and is not here.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from tests.helpers.cells import assert_close

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402 (after the skip)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny sizes: torch's threads only add seconds of start-up and contention here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


T, B, I, H = 5, 4, 3, 6
LENGTHS = [3, 5, 1, 4]  # unsorted, with a length-1 item

# family -> (our class, torch class, options both take)
FAMILIES = {
    "lstm": (fusedrnn.LSTM, torch.nn.LSTM, {}),
    "lstm_proj": (fusedrnn.LSTM, torch.nn.LSTM, {"proj_size": 4}),
    "gru": (fusedrnn.GRU, torch.nn.GRU, {}),
    "rnn_tanh": (fusedrnn.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fusedrnn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
}
# constructor options and forward inputs of one comparison
SETUPS = {
    "one_layer": ({}, {}),
    "bidirectional_hx_lengths": (
        {"num_layers": 2, "bidirectional": True},
        {"hx": True, "lengths": LENGTHS},
    ),
    "batch_first_no_bias_lengths": (
        {"num_layers": 2, "batch_first": True, "bias": False},
        {"lengths": LENGTHS},
    ),
    "unbatched_bidirectional_hx": (
        {"num_layers": 2, "bidirectional": True},
        {"unbatched": True, "hx": True},
    ),
    "three_layers_batch_first_bidirectional": (
        {"num_layers": 3, "batch_first": True, "bidirectional": True},
        {"hx": True},
    ),
}


def numpy_of(tensor):
    return tensor.detach().numpy()


def twins(family, dtype=np.float64, **options):
    """Our layer with the weights of a freshly initialised torch layer."""
    ours_cls, torch_cls, family_options = FAMILIES[family]
    torch.manual_seed(0)
    theirs = torch_cls(
        I,
        H,
        **family_options,
        **options,
        dtype=torch.float64 if dtype == np.float64 else torch.float32,
    )
    ours = ours_cls(I, H, **family_options, **options, dtype=dtype)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def inputs(ours, spec, dtype=np.float64, seed=1):
    """x, hx (None or ours' shape) and the random output gradients, as numpy arrays."""
    rng = np.random.default_rng(seed)
    unbatched = spec.get("unbatched", False)
    x_shape = (T, I) if unbatched else ((B, T, I) if ours.batch_first else (T, B, I))
    x = rng.standard_normal(x_shape).astype(dtype)
    h_shape, c_shape = ours._state_shapes(B, unbatched)[:2]
    lstm = isinstance(ours, fusedrnn.LSTM)
    shapes = (h_shape, c_shape) if lstm else (h_shape,)
    hx = tuple(rng.standard_normal(s).astype(dtype) for s in shapes) if spec.get("hx") else None
    out_shape = ours._output_layout(T, B, unbatched)[0]
    d_output = rng.standard_normal(out_shape).astype(dtype)
    d_hx = tuple(rng.standard_normal(s).astype(dtype) for s in shapes)
    return x, hx, d_output, d_hx


def torch_run(module, x, hx, lengths, d_output, d_hx, batch_first):
    """Forward (packed when lengths are given) and backward of sum(out*dy) + sum(h*dh) (+ c)."""
    x_t = torch.tensor(x, requires_grad=True)
    hx_t = None if hx is None else tuple(torch.tensor(s, requires_grad=True) for s in hx)
    call_hx = hx_t if hx_t is None or len(hx_t) == 2 else hx_t[0]
    if lengths is None:
        out, h_n = module(x_t, call_hx)
    else:
        packed = pack_padded_sequence(
            x_t, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
        out, h_n = module(packed, call_hx)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    finals = h_n if isinstance(h_n, tuple) else (h_n,)
    loss = (out * torch.tensor(d_output)).sum()
    loss = loss + sum((s * torch.tensor(d)).sum() for s, d in zip(finals, d_hx))
    loss.backward()
    results = {"output": numpy_of(out), "dx": x_t.grad.numpy()}
    for i, s in enumerate(finals):
        results[f"state{i}"] = numpy_of(s)
        if hx_t is not None:
            results[f"dstate{i}"] = hx_t[i].grad.numpy()
    results.update({f"grad {k}": p.grad.numpy() for k, p in module.named_parameters()})
    return results


def our_run(layer, x, hx, lengths, d_output, d_hx):
    call_hx = hx if hx is None or len(hx) == 2 else hx[0]
    output, h_n = layer(x, call_hx, lengths=lengths)
    finals = h_n if isinstance(h_n, tuple) else (h_n,)
    dx, dhx = layer.backward(d_output, d_hx if len(d_hx) == 2 else d_hx[0])
    results = {"output": output, "dx": dx}
    for i, (s, d) in enumerate(zip(finals, dhx if isinstance(dhx, tuple) else (dhx,))):
        results[f"state{i}"] = s
        if hx is not None:
            results[f"dstate{i}"] = d
    results.update({f"grad {k}": v for k, v in layer.grads.items()})
    return results


def assert_all_close(actual, desired, dtype):
    assert actual.keys() == desired.keys()
    for name in desired:
        assert_close(np.asarray(actual[name]), desired[name], dtype, name)


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("family", FAMILIES)
def test_layer_matches_torch(family, setup):
    options, spec = SETUPS[setup]
    ours, theirs = twins(family, **options)
    x, hx, d_output, d_hx = inputs(ours, spec)
    lengths = spec.get("lengths")
    expected = torch_run(theirs, x, hx, lengths, d_output, d_hx, ours.batch_first)
    assert_all_close(our_run(ours, x, hx, lengths, d_output, d_hx), expected, np.float64)


@pytest.mark.parametrize("family", ["lstm_proj", "gru"])
def test_float32_layer_matches_torch(family):
    ours, theirs = twins(family, np.float32, num_layers=2, bidirectional=True)
    x, hx, d_output, d_hx = inputs(ours, {"hx": True, "lengths": LENGTHS}, np.float32)
    expected = torch_run(theirs, x, hx, LENGTHS, d_output, d_hx, False)
    assert_all_close(our_run(ours, x, hx, LENGTHS, d_output, d_hx), expected, np.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_mode_with_dropout_matches_torch(family):
    ours, theirs = twins(family, num_layers=3, dropout=0.5, batch_first=True, bidirectional=True)
    ours.eval()
    theirs.eval()
    x = np.random.default_rng(0).standard_normal((B, T, I))
    output, h_n = ours(x)
    out_t, h_t = theirs(torch.tensor(x))
    assert_close(output, numpy_of(out_t), np.float64, "output")
    for got, want in zip(
        h_n if isinstance(h_n, tuple) else (h_n,), h_t if isinstance(h_t, tuple) else (h_t,)
    ):
        assert_close(got, numpy_of(want), np.float64, "final state")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_layers": 3, "bidirectional": True},
        {"bias": False, "num_layers": 2},
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_names_shapes_and_order_are_torchs(family, options):
    ours, theirs = twins(family, **options)
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert list(ours.state_dict()) == list(expected)
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    assert list(ours.grads) == list(expected)


def test_torch_state_dict_of_another_architecture_is_rejected():
    ours = fusedrnn.LSTM(I, H, dtype=np.float64)
    gru = torch.nn.GRU(I, H, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"state_dict\['weight_ih_l0'\] has shape \(18, 3\)"):
        ours.load_state_dict({k: v.detach().numpy() for k, v in gru.state_dict().items()})


CELLS = {
    "lstm": (fusedrnn.LSTMCell, torch.nn.LSTMCell, {}),
    "gru": (fusedrnn.GRUCell, torch.nn.GRUCell, {}),
    "rnn_tanh": (fusedrnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (fusedrnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
}


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("family", CELLS)
def test_cell_matches_torch(family, bias, unbatched):
    ours_cls, torch_cls, options = CELLS[family]
    torch.manual_seed(0)
    theirs = torch_cls(I, H, bias=bias, **options, dtype=torch.float64)
    ours = ours_cls(I, H, bias=bias, **options, dtype=np.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((I,) if unbatched else (B, I))
    state_shape = (H,) if unbatched else (B, H)
    n_states = 2 if family == "lstm" else 1
    hx = tuple(rng.standard_normal(state_shape) for _ in range(n_states))
    d_new = tuple(rng.standard_normal(state_shape) for _ in range(n_states))

    x_t = torch.tensor(x, requires_grad=True)
    hx_t = tuple(torch.tensor(s, requires_grad=True) for s in hx)
    new_t = theirs(x_t, hx_t if n_states == 2 else hx_t[0])
    new_t = new_t if isinstance(new_t, tuple) else (new_t,)
    sum((s * torch.tensor(d)).sum() for s, d in zip(new_t, d_new)).backward()

    new = ours(x, hx if n_states == 2 else hx[0])
    new = new if isinstance(new, tuple) else (new,)
    dx, dhx = ours.backward(*d_new)
    dhx = dhx if isinstance(dhx, tuple) else (dhx,)
    assert_close(dx, x_t.grad.numpy(), np.float64, "dx")
    for i in range(n_states):
        assert_close(new[i], numpy_of(new_t[i]), np.float64, f"state {i}")
        assert_close(dhx[i], hx_t[i].grad.numpy(), np.float64, f"dstate {i}")
    for name, param in theirs.named_parameters():
        assert_close(ours.grads[name], param.grad.numpy(), np.float64, name)
