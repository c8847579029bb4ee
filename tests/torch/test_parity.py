"""fusedrnn.torch's modules against torch.nn's: outputs and the gradients of the input, the
initial states and every Parameter, for every option, float64 to rounding and float32 to its
precision; PackedSequence in and out; dropout between layers; convert()."""

from __future__ import annotations

import contextlib

import pytest

from tests.torch.cases import (
    CELL_CASES,
    DTYPES,
    INPUT_SIZE,
    STACK_CASES,
    assert_close_all,
    case_id,
    flat,
    ft,
    grads_of,
    random_state,
    torch,
    twins,
)

pack_padded_sequence = torch.nn.utils.rnn.pack_padded_sequence

T, B = 5, 3


def _input(module, batched: bool, dtype):
    shape = (T, INPUT_SIZE)
    if batched:
        shape = (B, T, INPUT_SIZE) if module.batch_first else (T, B, INPUT_SIZE)
    return torch.randn(shape, dtype=dtype, requires_grad=True)


def _leaves(x, hx, module) -> list:
    """What the gradients are taken of: x, the states given (none for None), the Parameters."""
    states = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    return [x, *states, *module.parameters()]


def _with_state(x, module, batched: bool, with_hx: bool, dtype) -> tuple:
    """``((x, hx), leaves)``: a random hx (or None) for ``module`` and what to differentiate."""
    hx = random_state(module, B if batched else None, dtype) if with_hx else None
    return (x, hx), _leaves(x, hx, module)


def _run_both(reference, fused, make_args):
    """Forward and backward through both modules on the same inputs (fresh leaves each)."""
    results = []
    for module in (reference, fused):
        torch.manual_seed(1)
        args, leaves = make_args(module)
        outputs = flat(module(*args))
        results.append((outputs, grads_of(outputs, leaves)))
    return results


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", STACK_CASES, ids=case_id)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no-hx"])
def test_stack_equals_torch(case, dtype, batched, with_hx):
    reference, fused = twins(*case, dtype)

    def make_args(module):
        return _with_state(_input(module, batched, dtype), module, batched, with_hx, dtype)

    (out_ref, grads_ref), (out_fused, grads_fused) = _run_both(reference, fused, make_args)
    assert_close_all(out_fused, out_ref, dtype)
    assert_close_all(grads_fused, grads_ref, dtype)


@pytest.mark.parametrize(
    ("name", "used"),
    [("LSTM", "y"), ("LSTM", "h_n"), ("LSTM", "c_n"), ("GRU", "y"), ("GRU", "h_n")],
)
def test_gradients_through_one_output(name, used):
    """A loss on one output: the others (and the workspace) reach backward as None, which must
    count as zeros."""
    dtype = torch.float64
    reference, fused = twins(name, {"num_layers": 2}, dtype)

    def make_args(module):
        return _with_state(_input(module, True, dtype), module, True, True, dtype)

    results = []
    for module in (reference, fused):
        torch.manual_seed(1)
        args, leaves = make_args(module)
        y, state = module(*args)
        h_n, c_n = state if isinstance(state, tuple) else (state, None)
        output = {"y": y, "h_n": h_n, "c_n": c_n}[used]
        results.append(grads_of([output], leaves))
    assert_close_all(results[1], results[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", STACK_CASES, ids=case_id)
def test_frozen_parameters_equal_torch(case, dtype):
    """Parameters set to requires_grad=False (every other one: weights and biases, layers and
    directions) keep no gradient, as torch.nn's, and the rest equal torch.nn's."""
    reference, fused = twins(*case, dtype)
    for module in (reference, fused):
        for parameter in list(module.parameters())[::2]:
            parameter.requires_grad_(False)

    results = []
    for module in (reference, fused):  # a training step's backward, into .grad
        torch.manual_seed(1)
        x = _input(module, True, dtype)
        outputs = flat(module(x))
        sum(o.square().sum() for o in outputs).backward()
        results.append([x.grad] + [p.grad for p in module.parameters()])
    assert [g is None for g in results[1]] == [g is None for g in results[0]]
    assert sum(g is None for g in results[0]) == len(list(fused.parameters())[::2])
    assert_close_all(*([g for g in grads if g is not None] for grads in results[::-1]), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", STACK_CASES, ids=case_id)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no-hx"])
def test_stack_without_gradients_equals_torch(case, dtype, batched, with_hx):
    """No gradient wanted: no autograd node, and one-layer stacks run the one-layer kernels
    (_ops._one_layer_forward)."""
    reference, fused = twins(*case, dtype)
    torch.manual_seed(1)
    x = _input(reference, batched, dtype).detach()
    hx = random_state(reference, B if batched else None, dtype, False) if with_hx else None
    with torch.no_grad():
        outputs = [flat(module(x, hx)) for module in (reference, fused)]
    assert_close_all(outputs[1], outputs[0], dtype)
    assert not any(o.requires_grad for o in outputs[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", STACK_CASES, ids=case_id)
def test_packed_sequence_equals_torch(case, dtype):
    reference, fused = twins(*case, dtype)
    lengths = torch.tensor([3, 5, 1])  # unsorted: sorted_indices and unsorted_indices matter

    def make_args(module):
        x = _input(module, True, dtype)
        hx = random_state(module, B, dtype)
        packed = pack_padded_sequence(x, lengths, batch_first=module.batch_first,
                                      enforce_sorted=False)  # fmt: skip
        return (packed, hx), _leaves(x, hx, module)

    (out_ref, grads_ref), (out_fused, grads_fused) = _run_both(reference, fused, make_args)
    assert_close_all(out_fused, out_ref, dtype)
    assert_close_all(grads_fused, grads_ref, dtype)
    packed_out = fused(*make_args(fused)[0])[0]
    assert isinstance(packed_out, torch.nn.utils.rnn.PackedSequence)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CELL_CASES, ids=case_id)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no-hx"])
def test_cell_equals_torch(case, dtype, batched, with_hx):
    reference, fused = twins(*case, dtype)

    def make_args(module):
        shape = (B, INPUT_SIZE) if batched else (INPUT_SIZE,)
        x = torch.randn(shape, dtype=dtype, requires_grad=True)
        return _with_state(x, module, batched, with_hx, dtype)

    (out_ref, grads_ref), (out_fused, grads_fused) = _run_both(reference, fused, make_args)
    assert_close_all(out_fused, out_ref, dtype)
    assert_close_all(grads_fused, grads_ref, dtype)


def test_a_sequence_of_cell_steps_equals_torch():
    """Steps chained through hx, one backward at the end (the cells' use in a hand loop)."""
    reference, fused = twins("LSTMCell", {}, torch.float64)
    x = torch.randn(4, B, INPUT_SIZE, dtype=torch.float64)
    results = []
    for module in (reference, fused):
        hx = None
        outputs = []
        for t in range(4):
            hx = module(x[t], hx)
            outputs.append(hx[0])
        loss = torch.stack(outputs).square().sum()
        results.append([loss, *torch.autograd.grad(loss, list(module.parameters()))])
    assert_close_all(results[1], results[0], torch.float64)


MORE_CELL_CASES = [*CELL_CASES, ("LSTMCell", {"bias": False}), ("RNNCell", {})]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MORE_CELL_CASES, ids=case_id)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode", "no_requires_grad"])
def test_cell_step_without_gradients_equals_torch(case, dtype, batched, grad_mode):
    """A step that wants no gradient runs on arrays straight away (_ops.run_cell): the same
    numbers, and outputs that need no grad."""
    reference, fused = twins(*case, dtype)
    torch.manual_seed(1)
    x = torch.randn((B, INPUT_SIZE) if batched else (INPUT_SIZE,), dtype=dtype)
    hx = random_state(reference, B if batched else None, dtype, requires_grad=False)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    outputs = []
    for module in (reference, fused):
        if grad_mode == "no_requires_grad":
            module.requires_grad_(False)
        with context.get(grad_mode, contextlib.nullcontext)():
            outputs.append(flat(module(x, hx)))
    assert_close_all(outputs[1], outputs[0], dtype)
    assert not any(o.requires_grad for o in outputs[1])


@pytest.mark.parametrize("case", MORE_CELL_CASES, ids=case_id)
def test_cell_gradients_of_gradients_raise_the_double_backward_error(case):
    """create_graph=True: the first gradients as torch.nn's; differentiating them again raises
    the operators' error."""
    reference, fused = twins(*case, torch.float64)
    x = torch.randn(B, INPUT_SIZE, dtype=torch.float64, requires_grad=True)
    grads = []
    for module in (reference, fused):
        h = flat(module(x))[0]
        grads.append(torch.autograd.grad(h.square().sum(), x, create_graph=True)[0])
    assert_close_all(grads[1:], grads[:1], torch.float64)
    with pytest.raises(RuntimeError, match=r"has no derivative: .* gradients of gradients"):
        grads[1].sum().backward()


def test_cell_step_with_dual_tensors_raises_the_forward_mode_error():
    import torch.autograd.forward_ad as forward_ad

    cell = ft.GRUCell(INPUT_SIZE, 4).double()
    x = torch.randn(B, INPUT_SIZE, dtype=torch.float64)
    with (
        forward_ad.dual_level(),
        torch.no_grad(),
        pytest.raises(RuntimeError, match="has no forward-mode"),
    ):
        cell(forward_ad.make_dual(x, torch.ones_like(x)))


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
def test_cell_step_sees_an_in_place_change_of_what_its_backward_reads(name):
    """As torch.nn's cells: a state changed in place after the step makes backward raise
    instead of giving gradients of other numbers."""
    cell = getattr(ft, name)(INPUT_SIZE, 4).double()
    h0 = torch.randn(B, 4, dtype=torch.float64, requires_grad=True) * 1  # not a leaf
    hx = (h0, h0.clone()) if name == "LSTMCell" else h0
    h = flat(cell(torch.randn(B, INPUT_SIZE, dtype=torch.float64), hx))[0]
    with torch.no_grad():
        h0.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_dropout_between_layers_is_inverted_dropout_from_torchs_generator(name):
    """Training mode: each layer but the last has its output multiplied by a mask of 0 or
    1/(1-p), drawn from PyTorch's generator; equal to a hand-built stack of one-layer torch.nn
    modules with those masks. Eval mode: no dropout, equal to torch.nn."""
    p, dtype = 0.4, torch.float64
    options = {"num_layers": 3, "bidirectional": True, "dropout": p}
    reference, fused = twins(name, options, dtype)
    x = torch.randn(T, B, INPUT_SIZE, dtype=dtype)
    torch.manual_seed(7)
    output, _ = fused(x)
    # the same masks, drawn as fusedrnn.torch draws them: one tensor (L-1, T, B, D*H)
    torch.manual_seed(7)
    masks = torch.empty(2, T, B, 2 * reference.hidden_size, dtype=dtype).uniform_().ge_(p)
    masks /= 1 - p
    assert set(masks.unique().tolist()) == {0.0, 1 / (1 - p)}
    layer_input = x
    for layer in range(3):
        one = getattr(torch.nn, name)(layer_input.shape[-1], reference.hidden_size,
                                      bidirectional=True).to(dtype)  # fmt: skip
        one.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in
                             reference.state_dict().items() if f"_l{layer}" in k})  # fmt: skip
        layer_input, _ = one(layer_input)
        if layer < 2:
            layer_input = layer_input * masks[layer]
    torch.testing.assert_close(output, layer_input, rtol=1e-10, atol=1e-12)
    fused.eval()
    reference.eval()
    torch.testing.assert_close(fused(x)[0], reference(x)[0], rtol=1e-10, atol=1e-12)


def test_dropout_masks_keep_a_fraction_one_minus_p():
    """Over 100k draws the kept fraction is 1 - p within 0.01 (about 6 standard deviations)."""
    from fusedrnn.torch.modules import dropout_masks

    for p in (0.1, 0.4, 0.9):
        module = ft.LSTM(INPUT_SIZE, 50, num_layers=2, dropout=p)
        masks = dropout_masks(module, 100, 20, torch.empty(0))
        assert masks.shape == (1, 100, 20, 50)
        assert abs((masks > 0).double().mean().item() - (1 - p)) < 0.01
        assert masks.unique().tolist() == pytest.approx([0.0, 1 / (1 - p)])


def test_gru_reset_after_false_is_chos_gru():
    """GRU(reset_after=False): n = tanh(W_in x + b_in + W_hn (r * h) + b_hn), one step by hand."""
    torch.manual_seed(0)
    gru = ft.GRU(INPUT_SIZE, 4, reset_after=False).double()
    assert "reset_after=False" in repr(gru)
    x = torch.randn(1, 2, INPUT_SIZE, dtype=torch.float64)
    h = torch.randn(1, 2, 4, dtype=torch.float64)
    w_ir, w_iz, w_in = gru.weight_ih_l0.chunk(3)
    w_hr, w_hz, w_hn = gru.weight_hh_l0.chunk(3)
    b_ir, b_iz, b_in = gru.bias_ih_l0.chunk(3)
    b_hr, b_hz, b_hn = gru.bias_hh_l0.chunk(3)
    r = torch.sigmoid(x[0] @ w_ir.T + b_ir + h[0] @ w_hr.T + b_hr)
    z = torch.sigmoid(x[0] @ w_iz.T + b_iz + h[0] @ w_hz.T + b_hz)
    n = torch.tanh(x[0] @ w_in.T + b_in + (r * h[0]) @ w_hn.T + b_hn)
    expected = (1 - z) * n + z * h[0]
    output, h_n = gru(x, h)
    torch.testing.assert_close(output[0], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_n[0], expected, rtol=1e-10, atol=1e-12)
    cell = ft.GRUCell(INPUT_SIZE, 4, reset_after=False).double()
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in gru.state_dict().items()})
    torch.testing.assert_close(cell(x[0], h[0]), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", STACK_CASES + CELL_CASES, ids=case_id)
def test_same_constructor_parameters_and_state_dict_as_torch(case):
    reference, fused = twins(*case, torch.float32)
    assert [(n, p.shape) for n, p in fused.named_parameters()] == [
        (n, p.shape) for n, p in reference.named_parameters()
    ]
    assert repr(fused) == repr(reference)
    assert isinstance(fused, torch.nn.RNNBase | torch.nn.RNNCellBase)
    fused.load_state_dict(reference.state_dict())  # strict: the same keys


def test_convert_keeps_the_parameter_objects_and_an_optimizer_built_before():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(INPUT_SIZE, 4, num_layers=2)
            self.cell = torch.nn.GRUCell(4, 4)
            self.head = torch.nn.Sequential(torch.nn.RNN(4, 4), torch.nn.Identity())

    torch.manual_seed(0)
    model = Model().double()
    before = dict(model.named_parameters())
    values = {name: p.detach().clone() for name, p in before.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(T, B, INPUT_SIZE, dtype=torch.float64)
    expected_output = model.lstm(x)[0]

    assert ft.convert(model) is model
    assert type(model.lstm) is ft.LSTM
    assert type(model.cell) is ft.GRUCell
    assert type(model.head[0]) is ft.RNN
    assert all(p is before[name] for name, p in model.named_parameters())
    output = model.lstm(x)[0]
    torch.testing.assert_close(output, expected_output, rtol=1e-10, atol=1e-12)
    output.sum().backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, values[n])]
    assert changed == [n for n in before if n.startswith("lstm.")]
    lone = torch.nn.GRU(2, 3)
    assert type(ft.convert(lone)) is ft.GRU


def test_convert_leaves_subclasses_alone():
    class MyLSTM(torch.nn.LSTM):
        pass

    model = torch.nn.Sequential(MyLSTM(2, 3))
    ft.convert(model)
    assert type(model[0]) is MyLSTM
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        ft.convert("not a model")
