"""The operators themselves: torch.library.opcheck (schema, fake implementation, autograd
registration, AOT dispatch), no copies of contiguous tensors, the workspace's lifetime (a
tensor autograd saves, freed with the graph), and the clear error of double backward."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from fusedrnn import _core
from fusedrnn._spec import stack_param_names
from tests.torch.cases import torch  # skips this module without PyTorch

from fusedrnn.torch import _ops  # isort: skip  (needs PyTorch)

T, B, I, H = 4, 3, 2, 3
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _stack_args(mode, num_layers=2, bidirectional=True, lengths=None, masks=False, proj=0):
    """Arguments of fusedrnn::stack_forward, every tensor requiring grad."""
    torch.manual_seed(0)
    D = 2 if bidirectional else 1
    H_out = proj or H
    weights = []
    for layer in range(num_layers):
        layer_input = I if layer == 0 else D * H_out
        for _ in range(D):
            weights += [
                torch.randn(GATES[mode] * H, layer_input),
                torch.randn(GATES[mode] * H, H_out),
            ]
            weights += [torch.randn(GATES[mode] * H), torch.randn(GATES[mode] * H)]
            if proj:
                weights.append(torch.randn(proj, H))
    weights = [w.double().requires_grad_() for w in weights]
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(num_layers * D, B, H_out, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(num_layers * D, B, H, dtype=torch.float64, requires_grad=True)
    mask = None
    if masks:
        mask = (torch.rand(num_layers - 1, T, B, D * H_out) > 0.3).double() / 0.7
    lengths = None if lengths is None else torch.tensor(lengths)
    return (x, h0, c0 if mode == "lstm" else None, weights, lengths, mask, mode, num_layers,
            bidirectional, True, proj, True, "tanh", True)  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        _stack_args("lstm", proj=2, masks=True),
        _stack_args("gru", lengths=[2, 4, 1]),
        _stack_args("rnn", num_layers=1, bidirectional=False),
    ],
    ids=["lstm-proj-dropout", "gru-lengths", "rnn"],
)
def test_stack_forward_passes_opcheck(args):
    torch.library.opcheck(_ops.stack_forward, args)


def test_attention_forward_passes_opcheck():
    q = torch.randn(2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 6, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(5, 6) > 0.3
    torch.library.opcheck(_ops.attention_forward, (q, k, v, mask, True, 0.4, True, 0.0, 0))


def test_contiguous_tensors_cross_without_copies():
    x = torch.randn(3, 4)
    array = _ops.as_array(x)
    assert array.ctypes.data == x.data_ptr()
    back = _ops.as_tensor(array, x)
    assert back.data_ptr() == x.data_ptr()
    y = torch.randn(4, 3).T  # not contiguous: one documented copy
    assert _ops.as_array(y).ctypes.data != y.data_ptr()
    np.testing.assert_array_equal(_ops.as_array(y), y.numpy())


def test_the_workspace_is_an_output_autograd_saves_and_frees_with_the_graph():
    args = _stack_args("lstm", num_layers=2, bidirectional=True)
    y, h_n, c_n, workspace = _ops.stack_forward(*args)
    assert workspace.numel() == _core.stack_saved_size("lstm", T, B, I, H, 0, 2, True)
    assert not workspace.requires_grad
    alive = weakref.ref(workspace)
    del workspace
    gc.collect()
    assert alive() is not None  # held by the graph of y, h_n, c_n
    del y, h_n, c_n
    gc.collect()
    assert alive() is None
    inference = _ops.stack_forward(*args[:-1], False)
    assert inference[3].numel() == 0


def test_backward_of_an_inference_forward_is_a_clear_error():
    args = _stack_args("gru", num_layers=1, bidirectional=False)
    y = _ops.stack_forward(*args[:-1], False)[0]
    with pytest.raises(RuntimeError, match="training=False"):
        y.sum().backward()


@pytest.mark.parametrize("path", ["operator", "eager"])
@pytest.mark.parametrize("mode", ["lstm", "attention"])
def test_double_backward_is_a_clear_error(mode, path):
    """Through the operators and through the eager calls (run_stack, run_attention) alike."""
    stack = _ops.stack_forward if path == "operator" else _ops.run_stack
    attention = _ops.attention_forward if path == "operator" else _ops.run_attention
    if mode == "lstm":
        args = _stack_args("lstm", num_layers=1, bidirectional=False)
        x, output = args[0], stack(*args)[0]
    else:
        x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
        output = attention(x, x, x, None, False, None, False, 0.0, 0)[0]
    (grad,) = torch.autograd.grad(output.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"has no derivative: .* gradients of gradients"):
        grad.sum().backward()


def test_meta_tensors_run_the_fake_implementation():
    args = list(_stack_args("lstm", proj=2))
    args[:4] = [a.to("meta") for a in args[:3] if a is not None] + [[w.to("meta") for w in args[3]]]
    y, h_n, c_n, workspace = _ops.stack_forward(*args)
    assert y.device.type == "meta"
    assert (y.shape, h_n.shape, c_n.shape) == ((T, B, 4), (4, B, 2), (4, B, H))
    assert workspace.numel() == _core.stack_saved_size("lstm", T, B, I, H, 2, 2, True)


def test_wrong_weights_and_lengths_are_clear_errors():
    args = list(_stack_args("gru", num_layers=1, bidirectional=False))
    with pytest.raises(ValueError, match=r"weights must hold the 4 tensors"):
        _ops.stack_forward(*args[:3], args[3][:3], *args[4:])
    args[4] = torch.tensor([1, 9, 2])
    with pytest.raises(ValueError, match=r"lengths must be in 1\.\.T"):
        _ops.stack_forward(*args)
    args[4] = None
    args[0] = args[0].float()
    with pytest.raises(TypeError, match="dtype"):
        _ops.stack_forward(*args)


# ---------------------------------------------------------------- eager calls (run_stack, ...)


def _gradients(outputs, inputs):
    """Gradients of a fixed weighted sum of the outputs with respect to every input."""
    torch.manual_seed(1)
    loss = sum((o * torch.randn_like(o)).sum() for o in outputs if o.numel())
    return torch.autograd.grad(loss, inputs, allow_unused=True)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_eager_stack_equals_the_operator_bit_for_bit(mode):
    """run_stack on plain CPU tensors skips the dispatcher (an autograd.Function of its own)
    and gives the operator's bits, outputs and every gradient."""
    args = _stack_args(mode, lengths=[2, 4, 1], masks=True, proj=2 if mode == "lstm" else 0)
    x, h0, c0, weights = args[:4]
    inputs = [t for t in (x, h0, c0, *weights) if t is not None]
    eager = _ops.run_stack(*args)
    operator = _ops.stack_forward(*args)
    assert type(eager[0].grad_fn).__name__ == "_EagerStackBackward"
    assert "fusedrnn_stack_forward" in type(operator[0].grad_fn).__name__
    for got, expected in zip(eager[:3], operator[:3]):
        assert torch.equal(got, expected)
    for got, expected in zip(_gradients(eager[:3], inputs), _gradients(operator[:3], inputs)):
        assert torch.equal(got, expected)


def _spy(monkeypatch, name, *keywords):
    """Record the ``keywords`` arguments of every call of fusedrnn.functional's ``name``: one
    value per call for one keyword, a tuple for several (``frozen`` sorted)."""
    seen = []
    real = getattr(_ops.functional, name)

    def spy(*args, **kwargs):
        values = tuple(sorted(kwargs[k]) if k == "frozen" else kwargs[k] for k in keywords)
        seen.append(values[0] if len(values) == 1 else values)
        return real(*args, **kwargs)

    monkeypatch.setattr(_ops.functional, name, spy)
    return seen


def _cell_args(mode):
    """x (B, I), h0, c0 (B, H; c0 None unless LSTM) and the 4 weights of a cell step, float64,
    every tensor requiring grad."""
    torch.manual_seed(1)
    G = GATES[mode] * H
    weights = [torch.randn(G, I), torch.randn(G, H), torch.randn(G), torch.randn(G)]
    weights = [w.double().requires_grad_() for w in weights]
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True) if mode == "lstm" else None
    return x, h0, c0, weights


@pytest.mark.parametrize("path", ["eager", "operator"])
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_an_input_that_needs_no_grad_is_not_differentiated(mode, path, monkeypatch):
    """An x that needs no gradient (data): the backward is asked for no dx (input_grad=False,
    which spares layer 0's dgates W_ih), and every other gradient has the bits of a call whose
    x needs one."""
    seen = _spy(monkeypatch, "stack_backward", "input_grad")
    run = _ops.run_stack if path == "eager" else _ops.stack_forward
    args = _stack_args(mode, lengths=[2, 4, 1], masks=True, proj=2 if mode == "lstm" else 0)
    x, h0, c0, weights = args[:4]
    others = [t for t in (h0, c0, *weights) if t is not None]
    with_dx = _gradients(run(*args)[:3], [x, *others])
    data = x.detach()
    without_dx = _gradients(run(data, *args[1:])[:3], others)
    assert seen == [True, False]
    for got, expected in zip(without_dx, with_dx[1:]):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_a_cell_step_on_data_is_not_differentiated_by_its_input(mode, monkeypatch):
    """The cells' eager step (`run_cell`): an x that needs no gradient asks the one-layer
    backward for no dx, and the other gradients keep their bits."""
    seen = _spy(monkeypatch, f"{mode}_backward", "input_grad")
    x, h0, c0, weights = _cell_args(mode)
    others = [t for t in (h0, c0, *weights) if t is not None]
    options = (mode, True, True, "tanh", True)

    def step(x):  # (h', c'), c' None unless LSTM
        return [s for s in _ops.run_cell(x, h0, c0, weights, *options) if s is not None]

    with_dx = _gradients(step(x), [x, *others])
    without_dx = _gradients(step(x.detach()), others)
    assert seen == [True, False]
    for got, expected in zip(without_dx, with_dx[1:]):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("path", ["eager", "operator"])
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_weights_that_need_no_grad_are_not_differentiated(mode, path, monkeypatch):
    """Parameters that need no gradient (requires_grad=False: a frozen layer, biases trained
    alone) reach the backward as ``frozen`` (their GEMMs skipped), get no gradient, and every
    other gradient has the bits of a call where all of them need one."""
    seen = _spy(monkeypatch, "stack_backward", "frozen")
    run = _ops.run_stack if path == "eager" else _ops.stack_forward
    proj = 2 if mode == "lstm" else 0
    args = _stack_args(mode, lengths=[2, 4, 1], masks=True, proj=proj)
    x, h0, c0, weights = args[:4]
    names = stack_param_names(mode, 2, True, True, proj)
    inputs = [t for t in (x, h0, c0, *weights) if t is not None]
    full = dict(zip(["x", "h0", "c0"][: len(inputs) - len(weights)] + names,
                    _gradients(run(*args)[:3], inputs)))  # fmt: skip
    frozen = {names[0], names[5 if proj else 4], *(n for n in names if n.startswith("bias_hh"))}
    partly = [w.detach() if name in frozen else w for name, w in zip(names, weights)]
    trained = [name for name in names if name not in frozen]
    got = _gradients(run(x, h0, c0, partly, *args[4:])[:3], [w for w in partly if w.requires_grad])
    assert seen == [[], sorted(frozen)]
    for name, value in zip(trained, got):
        assert torch.equal(value, full[name]), name


@pytest.mark.parametrize("path", ["eager", "operator"])
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_a_frozen_bottom_layer_on_data_with_constant_states_is_skipped(mode, path, monkeypatch):
    """x data, h0 / c0 constants and layer 0 frozen: the backward is asked for no dx, no
    states' gradients and none of layer 0's (so the kernel skips layer 0), and layer 1's
    gradients have the bits of a call that computes everything."""
    seen = _spy(monkeypatch, "stack_backward", "input_grad", "state_grad", "frozen")
    run = _ops.run_stack if path == "eager" else _ops.stack_forward
    args = _stack_args(mode, masks=True)
    x, h0, c0, weights = args[:4]
    names = stack_param_names(mode, 2, True, True, 0)
    full = _gradients(run(*args)[:1], weights)
    layer0 = [name for name in names if name.endswith(("_l0", "_l0_reverse"))]
    partly = [w.detach() if name in layer0 else w for name, w in zip(names, weights)]
    constants = [None if t is None else t.detach() for t in (x, h0, c0)]
    trained = [w for w in partly if w.requires_grad]
    got = _gradients(run(*constants, partly, *args[4:])[:1], trained)
    assert seen[-1] == (False, False, sorted(layer0))
    for value, name in zip(got, [n for n in names if n not in layer0]):
        assert torch.equal(value, full[names.index(name)]), name


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_a_cell_steps_frozen_weights_are_not_differentiated(mode, monkeypatch):
    """The cells' eager step: a weight that needs no gradient is ``frozen`` in the one-layer
    backward, and the other gradients keep their bits."""
    seen = _spy(monkeypatch, f"{mode}_backward", "frozen")
    x, h0, c0, weights = _cell_args(mode)
    options = (mode, True, True, "tanh", True)

    def step(weights):  # (h', c'), c' None unless LSTM
        return [s for s in _ops.run_cell(x, h0, c0, weights, *options) if s is not None]

    full = _gradients(step(weights), weights)
    partly = [weights[0], weights[1].detach(), weights[2].detach(), weights[3]]
    got = _gradients(step(partly), [partly[0], partly[3]])
    assert seen == [[], ["bias_ih", "weight_hh"]]
    assert torch.equal(got[0], full[0]) and torch.equal(got[1], full[3])


def test_eager_attention_equals_the_operator_bit_for_bit():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    options = (None, True, 0.7, False, 0.0, 0)
    eager = _ops.run_attention(q, k, v, *options)
    operator = _ops.attention_forward(q, k, v, *options)
    assert type(eager[0].grad_fn).__name__ == "_EagerAttentionBackward"
    assert torch.equal(eager[0], operator[0])
    for got, expected in zip(_gradients(eager[:1], (q, k, v)), _gradients(operator[:1], (q, k, v))):
        assert torch.equal(got, expected)


def test_calls_the_eager_path_cannot_serve_take_the_operator():
    """Dispatch modes (here FlopCounterMode) and meta tensors see the operator, never the
    autograd.Function; torch.compile is tested in test_compile_and_ddp.py."""
    from torch.utils.flop_counter import FlopCounterMode

    args = _stack_args("gru", num_layers=1, bidirectional=False)
    with FlopCounterMode(display=False):
        y = _ops.run_stack(*args)[0]
    assert "fusedrnn_stack_forward" in type(y.grad_fn).__name__
    meta = list(args)
    meta[:4] = [args[0].to("meta"), args[1].to("meta"), None, [w.to("meta") for w in args[3]]]
    assert _ops.run_stack(*meta)[0].device.type == "meta"
