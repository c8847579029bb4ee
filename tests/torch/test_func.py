"""fusedrnn.torch under torch.func's transforms: grad (of the input, the states and every
Parameter, through functional_call), vmap (of inputs, of stacked Parameters: an ensemble),
per-sample gradients (vmap of grad), jacrev and vjp, against torch.nn's modules and PyTorch's
scaled_dot_product_attention; and the clear errors of what has no derivative here (forward
mode, gradients of gradients, dropout drawn per vmapped index in attention)."""

from __future__ import annotations

import pytest

from tests.torch.cases import (
    CELL_CASES,
    DTYPES,
    INPUT_SIZE,
    STACK_CASES,
    assert_close_all,
    case_id,
    ft,
    random_state,
    torch,
    twins,
)

from fusedrnn.torch import _ops  # isort: skip  (needs PyTorch)

func = torch.func
T, B = 4, 3


def _weighted_sum(output) -> torch.Tensor:
    """A scalar of every tensor of a module's output, each element its own weight, so that a
    gradient routed to the wrong element or output would show."""
    tensors = (
        [output] if isinstance(output, torch.Tensor) else torch.utils._pytree.tree_leaves(output)
    )
    return sum((t * torch.linspace(0.5, 1.5, t.numel(), dtype=t.dtype).view_as(t)).sum()
               for t in tensors)  # fmt: skip


def _loss(module):
    """loss(params, x, hx) of ``module`` called with ``params`` (functional_call)."""

    def loss(params, x, hx):
        return _weighted_sum(func.functional_call(module, params, (x, hx)))

    return loss


def _params(module) -> dict:
    return {name: p.detach() for name, p in module.named_parameters()}


def _grads_flat(grads) -> list:
    return torch.utils._pytree.tree_leaves(grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", STACK_CASES + CELL_CASES, ids=case_id)
def test_grad_of_input_states_and_parameters_equals_torch_nn(case, dtype):
    reference, fused = twins(*case, dtype)
    torch.manual_seed(1)
    is_cell = isinstance(fused, torch.nn.RNNCellBase)
    shape = (B, INPUT_SIZE) if is_cell else (T, B, INPUT_SIZE)
    if not is_cell and fused.batch_first:
        shape = (B, T, INPUT_SIZE)
    x = torch.randn(shape, dtype=dtype)
    hx = random_state(fused, B, dtype, requires_grad=False)
    argnums = (0, 1, 2)
    got = func.grad(_loss(fused), argnums)(_params(fused), x, hx)
    expected = func.grad(_loss(reference), argnums)(_params(reference), x, hx)
    assert_close_all(_grads_flat(got), _grads_flat(expected), dtype)


@pytest.mark.parametrize("case", STACK_CASES[:2] + STACK_CASES[4:5] + CELL_CASES[:2], ids=case_id)
def test_per_sample_gradients_equal_one_grad_per_sample(case):
    """vmap of grad over the batch: each sample's own parameter gradients (torch.nn's modules
    have no vmap rule; the reference is torch.nn's grad sample by sample)."""
    dtype = torch.float64
    reference, fused = twins(*case, dtype)
    is_cell = isinstance(fused, torch.nn.RNNCellBase)
    torch.manual_seed(2)
    x = torch.randn((B, INPUT_SIZE) if is_cell else (B, T, INPUT_SIZE), dtype=dtype)
    if not is_cell and not fused.batch_first:
        x = x.transpose(0, 1).contiguous()
    batch_dim = 0 if is_cell or fused.batch_first else 1

    def one_sample(module):
        def loss(params, sample):
            batch_of_one = sample.unsqueeze(batch_dim)
            return _weighted_sum(func.functional_call(module, params, (batch_of_one,)))

        return loss

    got = func.vmap(func.grad(one_sample(fused)), in_dims=(None, batch_dim))(_params(fused), x)
    for b in range(B):
        sample = x.select(batch_dim, b)
        expected = func.grad(one_sample(reference))(_params(reference), sample)
        assert_close_all([got[k][b] for k in expected], list(expected.values()), dtype)


@pytest.mark.parametrize("case", STACK_CASES[1:2] + STACK_CASES[5:6] + CELL_CASES[1:2], ids=case_id)
def test_vmap_of_inputs_and_of_an_ensemble_equals_a_loop(case):
    dtype = torch.float64
    reference, fused = twins(*case, dtype)
    is_cell = isinstance(fused, torch.nn.RNNCellBase)
    torch.manual_seed(3)
    shape = (B, INPUT_SIZE) if is_cell else (T, B, INPUT_SIZE)
    xs = torch.randn((5, *shape), dtype=dtype)  # 5 inputs, mapped over
    got = func.vmap(fused)(xs)
    for i in range(5):
        assert_close_all(_grads_flat(_index(got, i)), _grads_flat(reference(xs[i])), dtype)
    # an ensemble: 3 sets of Parameters stacked, one input
    members = [twins(*case, dtype)[1] for _ in range(3)]
    for k, member in enumerate(members):
        with torch.no_grad():
            for p in member.parameters():
                p.add_(0.1 * (k + 1))
    params, buffers = func.stack_module_state(members)

    def run(p, b, x):
        return func.functional_call(fused, (p, b), (x,))

    got = func.vmap(run, in_dims=(0, 0, None))(params, buffers, xs[0])
    for k, member in enumerate(members):
        assert_close_all(_grads_flat(_index(got, k)), _grads_flat(member(xs[0])), dtype)


@pytest.mark.parametrize(
    "case", STACK_CASES[1:3] + STACK_CASES[5:6] + STACK_CASES[7:8], ids=case_id
)
def test_vmap_of_an_inference_is_one_call_equal_to_a_loop(case, monkeypatch):
    """Without gradients and with the same weights at every index, the mapped inputs (or states)
    run side by side in one batch: one kernel call, the bits of one call per index."""
    from fusedrnn import functional

    dtype = torch.float64
    _, fused = twins(*case, dtype)
    calls = []
    forward = functional.stack_forward
    monkeypatch.setattr(
        functional, "stack_forward", lambda *a, **k: calls.append(1) or forward(*a, **k)
    )
    torch.manual_seed(6)
    shape = (B, T, INPUT_SIZE) if fused.batch_first else (T, B, INPUT_SIZE)
    xs = torch.randn((5, *shape), dtype=dtype)
    hx = random_state(fused, B, dtype, requires_grad=False)
    hxs = torch.utils._pytree.tree_map(lambda h: torch.stack([h + i for i in range(5)], 2), hx)
    with torch.no_grad():
        for in_dim in (0, 1, 2):
            calls.clear()
            got = func.vmap(fused, in_dims=(in_dim, None))(xs.movedim(0, in_dim), hx)
            assert len(calls) == 1
            for i in range(5):
                assert_equal_all(_index(got, i), fused(xs[i], hx))
        calls.clear()  # the states mapped (at dim 2), the input not
        got = func.vmap(fused, in_dims=(None, 2))(xs[0], hxs)
        assert len(calls) == 1
        for i in range(5):
            assert_equal_all(_index(got, i), fused(xs[0], _index_at(hxs, 2, i)))


def test_vmap_of_states_in_a_training_mode_inference_folds_the_dropout_masks(monkeypatch):
    """Train mode without gradients: the masks drawn once (randomness="same", the input not
    mapped) serve every index of the one folded call, as one call per index with them."""
    from fusedrnn import functional

    module = ft.LSTM(INPUT_SIZE, 4, num_layers=2, dropout=0.5).double().train()
    x = torch.randn(T, B, INPUT_SIZE, dtype=torch.float64)
    hs = torch.randn(3, 2, B, 4, dtype=torch.float64)
    calls = []
    forward = functional.stack_forward
    monkeypatch.setattr(
        functional, "stack_forward", lambda *a, **k: calls.append(1) or forward(*a, **k)
    )
    with torch.no_grad():
        torch.manual_seed(8)
        got = func.vmap(lambda h: module(x, (h, h))[0], randomness="same")(hs)
        assert len(calls) == 1
        for i in range(3):
            torch.manual_seed(8)  # the same masks
            assert torch.equal(got[i], module(x, (hs[i], hs[i]))[0])


def assert_equal_all(got, expected) -> None:
    for a, b in zip(_grads_flat(got), _grads_flat(expected), strict=True):
        assert torch.equal(a, b)


def _index_at(output, dim: int, i: int):
    return torch.utils._pytree.tree_map(lambda t: t.select(dim, i), output)


def test_vmap_over_an_empty_dimension_gives_empty_results_of_the_right_shapes():
    module = ft.LSTM(INPUT_SIZE, 4, num_layers=2, proj_size=2).double()
    x = torch.randn(0, T, B, INPUT_SIZE, dtype=torch.float64)
    for grad_mode in (torch.enable_grad, torch.no_grad):  # index by index; one folded call
        with grad_mode():
            y, (h_n, c_n) = func.vmap(module)(x)
        assert (y.shape, h_n.shape, c_n.shape) == ((0, T, B, 2), (0, 2, B, 2), (0, 2, B, 4))
    q = torch.randn(0, 2, 5, 3, dtype=torch.float64)
    grads = func.vmap(func.grad(lambda q: ft.scaled_dot_product_attention(q, q, q).sum()))(q)
    assert grads.shape == q.shape


def _index(output, i: int):
    return torch.utils._pytree.tree_map(lambda t: t[i], output)


def test_jacrev_and_vjp_equal_torch_nn():
    dtype = torch.float64
    reference, fused = twins("LSTM", {"num_layers": 2, "bidirectional": True}, dtype)
    x = torch.randn(T, 2, INPUT_SIZE, dtype=dtype)
    got = func.jacrev(lambda i: fused(i)[0])(x)
    expected = func.jacrev(lambda i: reference(i)[0])(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    cotangent = torch.randn(T, 2, 2 * fused.hidden_size, dtype=dtype)
    (got,) = func.vjp(lambda i: fused(i)[0], x)[1](cotangent)
    (expected,) = func.vjp(lambda i: reference(i)[0], x)[1](cotangent)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_dropout_between_layers_follows_vmaps_randomness(dropout):
    """randomness='same': one mask for every index (equal inputs give equal outputs);
    'different': each index its own; 'error' (the default): PyTorch's error."""
    torch.manual_seed(4)
    module = ft.LSTM(INPUT_SIZE, 4, num_layers=2, dropout=dropout).double()
    xs = torch.randn(T, B, INPUT_SIZE, dtype=torch.float64).expand(2, T, B, INPUT_SIZE)
    same = func.vmap(lambda x: module(x)[0], randomness="same")(xs)
    different = func.vmap(lambda x: module(x)[0], randomness="different")(xs)
    assert torch.equal(same[0], same[1])
    assert torch.equal(different[0], different[1]) == (dropout == 0)
    if dropout:
        with pytest.raises(RuntimeError, match="randomness"):
            func.vmap(lambda x: module(x)[0])(xs)


# ---------------------------------------------------------------- attention


def _qkv(dtype=torch.float64):
    torch.manual_seed(5)
    return [torch.randn(2, 3, 5, 4, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_grad_vmap_and_per_sample_grad_equal_pytorchs(is_causal):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    q, k, v = _qkv()

    def loss(attention):
        return lambda q, k, v: _weighted_sum(attention(q, k, v, is_causal=is_causal))

    tight = {"rtol": 1e-10, "atol": 1e-12}
    for got, expected in zip(
        func.grad(loss(ft.scaled_dot_product_attention), (0, 1, 2))(q, k, v),
        func.grad(loss(sdpa), (0, 1, 2))(q, k, v),
    ):
        torch.testing.assert_close(got, expected, **tight)
    mapped = func.vmap(lambda q: ft.scaled_dot_product_attention(q, k, v, is_causal=is_causal))
    expected = func.vmap(lambda q: sdpa(q, k, v, is_causal=is_causal))
    torch.testing.assert_close(mapped(q), expected(q), **tight)
    per_sample = func.vmap(func.grad(loss(ft.scaled_dot_product_attention), (0, 1, 2)))
    expected = func.vmap(func.grad(loss(sdpa), (0, 1, 2)))
    for got, want in zip(per_sample(q, k, v), expected(q, k, v)):
        torch.testing.assert_close(got, want, **tight)


def test_attention_dropout_under_vmap():
    q, k, v = _qkv()
    qs = q[0].expand(2, *q[0].shape)

    def attention(q):
        return ft.scaled_dot_product_attention(q, k[0], v[0], dropout_p=0.5)

    same = func.vmap(attention, randomness="same")(qs)
    assert torch.equal(same[0], same[1])
    with pytest.raises(RuntimeError, match=r"randomness='different'\) is not supported"):
        func.vmap(attention, randomness="different")(qs)


# ---------------------------------------------------------------- what has no derivative


@pytest.mark.parametrize(
    "transform",
    [
        lambda f, x: func.jvp(f, (x,), (torch.ones_like(x),)),
        lambda f, x: func.jacfwd(f)(x),
        lambda f, x: func.hessian(f)(x),
    ],
    ids=["jvp", "jacfwd", "hessian"],
)
def test_forward_mode_raises_a_clear_error(transform):
    module = ft.GRU(INPUT_SIZE, 4).double()
    x = torch.randn(T, B, INPUT_SIZE, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="fusedrnn::stack_forward has no forward-mode"):
        transform(lambda i: module(i)[0].sum(), x)
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="fusedrnn::attention_forward has no forward-mode"):
        transform(lambda i: ft.scaled_dot_product_attention(i, k, v).sum(), q)


def test_dual_tensors_of_forward_ad_raise_the_same_error():
    """Outside torch.func too (the eager path): torch.autograd.forward_ad."""
    import torch.autograd.forward_ad as forward_ad

    module = ft.LSTM(INPUT_SIZE, 4).double()
    x = torch.randn(T, B, INPUT_SIZE, dtype=torch.float64)
    q, k, v = _qkv()
    with forward_ad.dual_level():
        with pytest.raises(RuntimeError, match="fusedrnn::stack_forward has no forward-mode"):
            module(forward_ad.make_dual(x, torch.ones_like(x)))
        with pytest.raises(RuntimeError, match="fusedrnn::attention_forward has no forward-mode"):
            ft.scaled_dot_product_attention(forward_ad.make_dual(q, torch.ones_like(q)), k, v)


def test_gradients_of_gradients_raise_the_double_backward_error():
    module = ft.RNN(INPUT_SIZE, 4).double()
    x = torch.randn(T, B, INPUT_SIZE, dtype=torch.float64)
    message = _ops.DOUBLE_BACKWARD_MESSAGE.format(op="fusedrnn::stack_backward")
    with pytest.raises(RuntimeError, match=message[:40]):
        func.jacrev(func.grad(lambda i: module(i)[0].sum()))(x)
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="fusedrnn::attention_backward has no derivative"):
        func.jacrev(func.grad(lambda i: ft.scaled_dot_product_attention(i, k, v).sum()))(q)
