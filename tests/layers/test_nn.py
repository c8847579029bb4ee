"""Embedding and Linear: gradients against central differences, PyTorch's semantics (names,
shapes, initial ranges, padding_idx, outputs and gradients when torch is installed), the layer
protocol (live parameters, grads keyed like state_dict, zero_grad, load_state_dict), bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import Embedding, Linear, _core, functional, reference
from tests.helpers.cells import assert_close
from tests.helpers.numgrad import ATOL, RTOL, central_differences


def weights_like(a, seed=5):
    return np.random.default_rng(seed).standard_normal(a.shape)


# ---------------------------------------------------------------- Linear


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("lead", [(), (4,), (3, 2)], ids=["unbatched", "2d", "3d"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_match_central_differences(lead, bias, backend):
    lin = Linear(5, 3, bias=bias, dtype=np.float64, seed=0, backend=backend)
    x = np.random.default_rng(1).standard_normal((*lead, 5))
    w = weights_like(lin(x))

    def loss():
        return np.sum(lin.forward(x) * w)

    loss()
    dx = lin.backward(w)
    np.testing.assert_allclose(dx, central_differences(loss, x), rtol=RTOL, atol=ATOL)
    for name, param in lin.named_parameters():
        np.testing.assert_allclose(
            lin.grads[name], central_differences(loss, param), rtol=RTOL, atol=ATOL, err_msg=name
        )
    assert set(lin.grads) == ({"weight", "bias"} if bias else {"weight"})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("M", [0, 1, 37])
def test_fused_linear_matches_reference(dtype, bias, M):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((M, 20)).astype(dtype)
    dy = rng.standard_normal((M, 9)).astype(dtype)
    w = rng.standard_normal((9, 20)).astype(dtype)
    b = rng.standard_normal(9).astype(dtype) if bias else None
    y = functional.linear_forward(x, w, b)
    assert_close(y, reference.linear_forward(x, w, b), dtype, "y")
    start = {
        "weight": rng.standard_normal((9, 20)).astype(dtype),
        **({"bias": rng.standard_normal(9).astype(dtype)} if bias else {}),
    }
    grads = {k: v.copy() for k, v in start.items()}
    arrays = dict(grads)
    dx, out = functional.linear_backward(x, w, dy, grads=grads, bias=bias)
    ref_dx, ref = reference.linear_backward(
        x, w, dy, grads={k: v.copy() for k, v in start.items()}, bias=bias
    )
    assert out is grads and all(grads[k] is arrays[k] for k in grads)  # accumulated in place
    assert_close(dx, ref_dx, dtype, "dx")
    for k in start:
        assert_close(grads[k], ref[k], dtype, k)
    none, fresh = functional.linear_backward(x, w, dy, bias=bias, need_dx=False)
    assert none is None and set(fresh) == set(start)


@pytest.mark.parametrize(
    "isa", [i for i in ("baseline", "avx2", "avx512") if _core.isa_supported(i)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("M", "K", "N"), [(3, 33, 70), (4, 33, 70), (300, 64, 100), (9, 7, 33)])
def test_fused_linear_on_the_step_kernel(M, K, N, dtype, isa, threading_mode):
    """From 4 rows on the product runs on the step kernel (fewer go to the BLAS): partial
    panels of W^T (N not a multiple of the panel width), odd K, both dtypes, every instruction
    set, one thread or a team; results the same bits whatever the thread count."""
    rng = np.random.default_rng(M + K + N)
    x = rng.standard_normal((M, K)).astype(dtype)
    dy = rng.standard_normal((M, N)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    default = _core.active_isa()
    _core.select_isa(isa)
    try:
        y = functional.linear_forward(x, w, b)
        dx, grads = functional.linear_backward(x, w, dy, bias=True)
        fusedrnn.set_num_threads(1)
        y_one = functional.linear_forward(x, w, b)
        dx_one, grads_one = functional.linear_backward(x, w, dy, bias=True)
    finally:
        _core.select_isa(default)
    assert_close(y, reference.linear_forward(x, w, b), dtype, "y")
    ref_dx, ref = reference.linear_backward(x, w, dy, bias=True)
    assert_close(dx, ref_dx, dtype, "dx")
    for k in ref:
        assert_close(grads[k], ref[k], dtype, k)
    np.testing.assert_array_equal(y, y_one)
    np.testing.assert_array_equal(dx, dx_one)
    for k in grads:
        np.testing.assert_array_equal(grads[k], grads_one[k], err_msg=k)


def test_fused_linear_bad_input():
    x, w = np.ones((4, 3)), np.ones((2, 3))
    with pytest.raises(TypeError, match=r"weight must have dtype float64 like x, got float32"):
        functional.linear_forward(x, w.astype(np.float32))
    with pytest.raises(
        ValueError,
        match=r"weight must have shape \(out_features, in_features\) "
        r"= \(2, 3\), but has shape \(2, 4\)",
    ):
        functional.linear_forward(x, np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"bias must have shape \(out_features\) = \(2,\)"):
        functional.linear_forward(x, w, np.ones(3))
    with pytest.raises(ValueError, match=r"dy must have shape \(M, out_features\) = \(4, 2\)"):
        functional.linear_backward(x, w, np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"grads\['weight'\] is accumulated into in place"):
        functional.linear_backward(
            x, w, np.ones((4, 2)), grads={"weight": np.ones((3, 2)).T, "bias": np.ones(2)}
        )
    with pytest.raises(ValueError, match=r"x must have 2 dimensions"):
        functional.linear_forward(np.ones(3), w)
    with pytest.raises(ValueError, match=r"backend must be 'fused' or 'reference'"):
        Linear(3, 2, backend="numpy")


def test_linear_is_torch_shaped_and_initialised():
    lin = Linear(16, 7, seed=0)
    assert lin.weight.shape == (7, 16) and lin.bias.shape == (7,)
    assert lin.weight.dtype == np.float32
    bound = 1 / np.sqrt(16)
    assert np.all(np.abs(lin.weight) <= bound) and np.all(np.abs(lin.bias) <= bound)
    assert np.abs(lin.weight).max() > 0.8 * bound  # uses the range, not a tiny corner of it
    assert list(lin.state_dict()) == ["weight", "bias"]
    assert Linear(16, 7, bias=False).bias is None
    assert (
        repr(Linear(3, 2, bias=False, dtype=np.float64))
        == "Linear(3, 2, bias=False, dtype=np.float64)"
    )
    np.testing.assert_array_equal(Linear(4, 3, seed=3).weight, Linear(4, 3, seed=3).weight)


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_matches_torch(dtype, backend):
    torch = pytest.importorskip("torch")
    lin = Linear(6, 4, dtype=dtype, seed=0, backend=backend)
    ref = torch.nn.Linear(6, 4).to(torch.float32 if dtype == np.float32 else torch.float64)
    ref.load_state_dict({k: torch.tensor(v) for k, v in lin.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((2, 3, 6)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    w = weights_like(yt.detach().numpy()).astype(dtype)
    (yt * torch.tensor(w)).sum().backward()
    y = lin(x)
    dx = lin.backward(w)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12}
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(lin.grads[name], p.grad.numpy(), **tol, err_msg=name)


def test_linear_backward_accumulates_and_zero_grad_keeps_the_arrays():
    lin = Linear(3, 2, dtype=np.float64, seed=0)
    x = np.ones((4, 3))
    lin(x)
    lin.backward(np.ones((4, 2)), retain_graph=True)
    once = {k: v.copy() for k, v in lin.grads.items()}
    arrays = dict(lin.grads)
    lin.backward(np.ones((4, 2)))
    for name, value in once.items():
        np.testing.assert_allclose(lin.grads[name], 2 * value)
        assert lin.grads[name] is arrays[name]
    lin.zero_grad()
    assert all(not v.any() and v is arrays[k] for k, v in lin.grads.items())


def test_linear_keeps_its_own_copy_of_a_writeable_input():
    lin = Linear(3, 2, dtype=np.float64, seed=0)
    x = np.ones((4, 3))
    lin(x)
    x[:] = 100  # the caller refills its buffer before backward
    lin.backward(np.ones((4, 2)))
    np.testing.assert_allclose(lin.grads["weight"], np.full((2, 3), 4.0))


def test_linear_live_parameters_and_state_dict_copies():
    lin = Linear(3, 2, seed=0)
    params = dict(lin.named_parameters())
    assert params["weight"] is lin.weight
    state = lin.state_dict()
    state["weight"] += 1
    assert not np.array_equal(state["weight"], lin.weight)
    lin.load_state_dict(state)
    np.testing.assert_array_equal(lin.weight, state["weight"])
    assert params["weight"] is lin.weight  # loaded in place
    assert next(iter(lin.parameters())) is lin.weight


def test_linear_eval_mode_saves_nothing():
    lin = Linear(3, 2, seed=0).eval()
    lin(np.ones((1, 3), np.float32))
    with pytest.raises(RuntimeError, match="needs a training-mode forward"):
        lin.backward(np.ones((1, 2), np.float32))


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda lin: lin(np.ones((2, 3))),
            TypeError,
            r"x must have dtype float32 \(the layer's dtype\), but has float64",
        ),
        (lambda lin: lin([[1.0, 2.0, 3.0]]), TypeError, r"x must be a numpy.ndarray"),
        (
            lambda lin: lin(np.ones((2, 4), np.float32)),
            ValueError,
            r"x must have shape \(\.\.\., 3\) = \(\.\.\., in_features\), but has \(2, 4\)",
        ),
        (
            lambda lin: (
                lin(np.ones((2, 3), np.float32)),
                lin.backward(np.ones((3, 2), np.float32)),
            ),
            ValueError,
            r"d_output must have shape \(2, 2\) = \(\.\.\., out_features\), but has \(3, 2\)",
        ),
        (
            lambda lin: (lin(np.ones((2, 3), np.float32)), lin.backward(np.ones((2, 2)))),
            TypeError,
            r"d_output must have dtype float32",
        ),
        (
            lambda lin: lin.backward(np.ones((2, 2), np.float32)),
            RuntimeError,
            r"Linear.backward needs a training-mode forward first",
        ),
        (
            lambda lin: lin.load_state_dict({"weight": np.ones((2, 3))}),
            ValueError,
            r"missing \['bias'\]",
        ),
        (
            lambda lin: lin.load_state_dict({"weight": np.ones((3, 2)), "bias": np.ones(2)}),
            ValueError,
            r"state_dict\['weight'\] has shape \(3, 2\), but .* expects \(2, 3\)",
        ),
        (
            lambda lin: lin.load_state_dict({"weight": np.ones((2, 3), int), "bias": np.ones(2)}),
            TypeError,
            r"state_dict\['weight'\] must hold real floating-point numbers",
        ),
        (lambda lin: Linear(0, 3), ValueError, r"in_features must be >= 1, got 0"),
        (lambda lin: Linear(2.5, 3), TypeError, r"in_features must be an integer"),
        (lambda lin: Linear(2, 3, dtype=np.float16), TypeError, r"dtype must be"),
    ],
)
def test_linear_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(Linear(3, 2, seed=0))


# ---------------------------------------------------------------- Embedding


@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_gradient_matches_central_differences(padding_idx):
    emb = Embedding(6, 3, padding_idx=padding_idx, dtype=np.float64, seed=0)
    idx = np.array([[0, 2, 2], [5, 1, 2]])  # repeats add up; 2 / 5 may be padding
    w = weights_like(emb(idx))

    def loss():
        return np.sum(emb.forward(idx) * w)

    loss()
    assert emb.backward(w) is None
    numeric = central_differences(loss, emb.weight)
    if padding_idx is not None:
        numeric[padding_idx] = 0  # as PyTorch: the padding row gets no gradient
    np.testing.assert_allclose(emb.grads["weight"], numeric, rtol=RTOL, atol=ATOL)


def test_embedding_backward_accumulates_and_takes_all_padding():
    """Two backwards add up (repeated indices summed each time, in their order of appearance);
    a batch of padding only adds nothing."""
    emb = Embedding(5, 2, padding_idx=0, dtype=np.float64, seed=0)
    idx = np.array([3, 1, 3, 0, 3])
    d = np.arange(10, dtype=np.float64).reshape(5, 2)
    expected = np.zeros((5, 2))
    for _ in range(2):
        emb(idx)
        emb.backward(d)
        for i, row in zip(idx, d):
            if i != 0:
                expected[i] += row
    np.testing.assert_array_equal(emb.weight.grad, expected)
    emb(np.zeros(4, np.int64))
    emb.backward(np.ones((4, 2)))
    np.testing.assert_array_equal(emb.weight.grad, expected)


def test_embedding_is_torch_shaped_and_pads_like_torch():
    emb = Embedding(10, 4, padding_idx=-2, seed=0)
    assert emb.weight.shape == (10, 4) and emb.weight.dtype == np.float32
    assert emb.padding_idx == 8
    assert not emb.weight[8].any() and emb.weight[7].any()
    out = emb(np.array([[8, 1]], np.int32))
    assert out.shape == (1, 2, 4)
    np.testing.assert_array_equal(out[0, 1], emb.weight[1])
    assert list(emb.state_dict()) == ["weight"]
    assert repr(emb) == "Embedding(10, 4, padding_idx=8)"
    # standard normal, as PyTorch
    big = Embedding(1000, 50, seed=1, dtype=np.float64).weight
    assert abs(big.mean()) < 0.02 and abs(big.std() - 1) < 0.02


def test_embedding_matches_torch():
    torch = pytest.importorskip("torch")
    emb = Embedding(7, 3, padding_idx=1, dtype=np.float64, seed=0)
    ref = torch.nn.Embedding(7, 3, padding_idx=1).double()
    ref.load_state_dict({"weight": torch.tensor(emb.weight)})
    idx = np.array([[1, 3, 3, 6], [0, 1, 3, 2]])
    w = weights_like(emb(idx))
    (ref(torch.tensor(idx)) * torch.tensor(w)).sum().backward()
    emb.backward(w)
    np.testing.assert_allclose(emb(idx), ref(torch.tensor(idx)).detach().numpy(), rtol=1e-15)
    np.testing.assert_allclose(emb.grads["weight"], ref.weight.grad.numpy(), rtol=1e-12)


def test_embedding_backward_uses_the_indices_of_the_forward():
    emb = Embedding(4, 2, dtype=np.float64, seed=0)
    idx = np.array([0, 0, 3])
    emb(idx)
    idx[:] = 1  # the caller reuses its buffer
    emb.backward(np.ones((3, 2)))
    np.testing.assert_allclose(emb.grads["weight"], [[2, 2], [0, 0], [0, 0], [1, 1]])


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda e: e(np.array([0.0, 1.0])),
            TypeError,
            r"indices must have an integer dtype, got float64",
        ),
        (lambda e: e([0, 1]), TypeError, r"indices must be a numpy.ndarray of integers"),
        (
            lambda e: e(np.array([0, 5])),
            ValueError,
            r"indices must be in \[0, num_embeddings\) = \[0, 5\), but hold 5",
        ),
        (lambda e: e(np.array([-1, 2])), ValueError, r"but hold -1"),
        (
            lambda e: (e(np.array([0, 1])), e.backward(np.ones((2, 4), np.float32))),
            ValueError,
            r"d_output must have shape \(2, 3\) = \(\.\.\., embedding_dim\), but has \(2, 4\)",
        ),
        (
            lambda e: (e(np.array([0, 1])), e.backward(np.ones((3, 3), np.float32))),
            ValueError,
            r"d_output must have shape \(2, 3\) = \(\.\.\., embedding_dim\), but has \(3, 3\)",
        ),
        (lambda e: Embedding(5, 3, padding_idx=5), ValueError, r"padding_idx must be within"),
        (lambda e: Embedding(5, 3, padding_idx=1.0), TypeError, r"padding_idx must be an"),
    ],
)
def test_embedding_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(Embedding(5, 3, seed=0))
