"""SGD, Adam and AdamW against their textbook update rules (and torch.optim when installed);
gradient clipping against a direct computation (and torch.nn.utils); the layer protocol they
rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusedrnn import (
    SGD,
    Adam,
    AdamW,
    Embedding,
    Linear,
    Module,
    Parameter,
    clip_grad_norm_,
    clip_grad_value_,
)


class Params(Module):
    """A user module with two parameters of its own."""

    def __init__(self, dtype=np.float64, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.a = Parameter(rng.standard_normal((3, 4)).astype(dtype))
        self.b = Parameter(rng.standard_normal(5).astype(dtype))

    @property
    def p(self):
        return dict(self.named_parameters())


def grad_sequence(params, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [
        {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.p.items()}
        for _ in range(steps)
    ]


def run(optimizer_class, options, steps=4, dtype=np.float64):
    params = Params(dtype)
    start = {k: v.copy() for k, v in params.p.items()}
    grads = grad_sequence(params, steps)
    opt = optimizer_class(params.parameters(), **options)
    for g in grads:
        for k in params.grads:
            params.grads[k][...] = g[k]
        opt.step()
    return start, grads, params.p


SGD_OPTIONS = [
    {"lr": 0.1},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.01},
    {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    {"lr": 0.1, "momentum": 0.5, "maximize": True},
]


@pytest.mark.parametrize("options", SGD_OPTIONS, ids=str)
def test_sgd_is_the_textbook_rule(options):
    start, grads, final = run(SGD, options)
    lr, mu = options["lr"], options.get("momentum", 0.0)
    tau, wd = options.get("dampening", 0.0), options.get("weight_decay", 0.0)
    for name, p in start.items():
        p, buf = p.copy(), None
        for t, g in enumerate(grads):
            d = (-g[name] if options.get("maximize") else g[name]) + wd * p
            if mu:
                buf = d if t == 0 else mu * buf + (1 - tau) * d
                d = d + mu * buf if options.get("nesterov") else buf
            p = p - lr * d
        np.testing.assert_allclose(final[name], p, rtol=1e-12, atol=1e-14)


ADAM_OPTIONS = [
    {"lr": 0.01},
    {"lr": 0.1, "betas": (0.8, 0.99), "eps": 1e-6},
    {"lr": 0.01, "weight_decay": 0.1},
    {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
    {"lr": 0.01, "amsgrad": True},
    {"lr": 0.01, "maximize": True},
]


@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=str)
def test_adam_is_the_textbook_rule(options):
    """Kingma and Ba's algorithm 1 with bias-corrected moments (m_hat, v_hat)."""
    start, grads, final = run(Adam, options)
    lr, (b1, b2) = options["lr"], options.get("betas", (0.9, 0.999))
    eps, wd = options.get("eps", 1e-8), options.get("weight_decay", 0.0)
    for name, p in start.items():
        p = p.copy()
        m = v = vmax = np.zeros_like(p)
        for t, g in enumerate(grads, start=1):
            g = -g[name] if options.get("maximize") else g[name]
            if options.get("decoupled_weight_decay"):
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            vmax = np.maximum(vmax, v)
            m_hat = m / (1 - b1**t)
            v_hat = (vmax if options.get("amsgrad") else v) / (1 - b2**t)
            p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(final[name], p, rtol=1e-10, atol=1e-13)


ADAMW_OPTIONS = [
    {"lr": 0.01},  # (the default weight_decay, 1e-2)
    {"lr": 0.05, "weight_decay": 0.3, "betas": (0.8, 0.99)},
    {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "maximize": True},
]


@pytest.mark.parametrize("options", ADAMW_OPTIONS, ids=str)
def test_adamw_is_adam_with_decoupled_weight_decay(options):
    """AdamW: Adam's update after ``p *= 1 - lr * weight_decay``, weight_decay 1e-2 unless
    given; the same bits as ``Adam(decoupled_weight_decay=True)``, which its groups record."""
    _, _, final = run(AdamW, options)
    as_adam = {"weight_decay": 1e-2, **options, "decoupled_weight_decay": True}
    _, _, expected = run(Adam, as_adam)
    for name, value in expected.items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)
    group = AdamW(Params().parameters(), **options).param_groups[0]
    assert group["decoupled_weight_decay"] is True
    assert group["weight_decay"] == options.get("weight_decay", 1e-2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("name", "options"),
    [("SGD", o) for o in SGD_OPTIONS]
    + [("Adam", o) for o in ADAM_OPTIONS]
    + [("AdamW", o) for o in ADAMW_OPTIONS],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_matches_torch_optim(name, options, dtype):
    torch = pytest.importorskip("torch")
    ours = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name]
    start, grads, final = run(ours, options, dtype=dtype)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    torch_opt = getattr(torch.optim, name)(list(tensors.values()), **options)
    for g in grads:
        for k, tensor in tensors.items():
            tensor.grad = torch.tensor(g[k])
        torch_opt.step()
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-14}
    for k, tensor in tensors.items():
        assert final[k].dtype == np.dtype(dtype)
        np.testing.assert_allclose(final[k], tensor.detach().numpy(), **tol, err_msg=k)


def test_optimizers_update_the_live_arrays_of_several_layers():
    emb, lin = Embedding(5, 3, seed=0), Linear(3, 2, seed=1)
    weight_arrays = [emb.weight, lin.weight, lin.bias]
    before = [w.copy() for w in weight_arrays]
    for layer in (emb, lin):
        for g in layer.grads.values():
            g.fill(1)
    opt = SGD([emb, lin], lr=0.5)
    opt.step()
    assert emb.weight is weight_arrays[0] and lin.weight is weight_arrays[1]
    for w, b in zip(weight_arrays, before):
        np.testing.assert_allclose(w, b - 0.5, rtol=1e-6)
    opt.zero_grad()
    assert not any(g.any() for layer in (emb, lin) for g in layer.grads.values())


def test_a_parameter_loaded_in_place_keeps_its_optimizer_state():
    lin = Linear(2, 2, dtype=np.float64, seed=0)
    opt = SGD(lin, lr=1.0, momentum=1.0)
    lin.grads["weight"].fill(1)
    opt.step()
    lin.load_state_dict({"weight": np.zeros((2, 2)), "bias": np.zeros(2)})
    opt.step()  # the momentum buffer (1) + the gradient (1): 2 more
    np.testing.assert_allclose(lin.weight, -2.0)


@pytest.mark.parametrize(
    ("make", "error", "pattern"),
    [
        (lambda: SGD([object()], lr=0.1), TypeError, r"params\[0\] must be a fusedrnn.Parameter"),
        (lambda: SGD([np.ones(3)], lr=0.1), TypeError, r"a plain array has no gradient"),
        (lambda: SGD(np.ones(3), lr=0.1), TypeError, r"params must be parameters"),
        (lambda: SGD([], lr=0.1), ValueError, r"at least one parameter"),
        (lambda: SGD(Params(), lr=-1), ValueError, r"lr must be >= 0.0, got -1.0"),
        (lambda: SGD(Params(), lr="0.1"), TypeError, r"lr must be a number"),
        (lambda: SGD(Params(), lr=0.1, nesterov=True), ValueError, r"nesterov momentum needs"),
        (lambda: Adam(Params(), betas=(0.9, 1.0)), ValueError, r"betas must be in \[0, 1\)"),
        (lambda: Adam(Params(), betas=0.9), TypeError, r"betas must be a pair"),
        (lambda: Adam(Params(), eps=float("nan")), ValueError, r"eps must be >= 0.0, got nan"),
        (
            lambda: SGD([{"params": [Params().a], "momentun": 0.9}], lr=0.1),
            ValueError,
            r"unknown options \['momentun'\]",
        ),
        (
            lambda: (lambda m: SGD([{"params": [m.a]}, {"params": [m.a, m.b]}], lr=0.1))(Params()),
            ValueError,
            r"more than one parameter group",
        ),
    ],
)
def test_bad_arguments(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_a_refused_step_changes_nothing():
    model = Params()
    for p in model.parameters():
        p.grad.fill(1.0)
    model.b.flags.writeable = False
    before = model.state_dict()
    opt = Adam(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"read-only.*nothing was updated"):
        opt.step()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert opt.state == {}


def test_param_groups_state_dict_and_torch_agree():
    """Two groups with their own lr and momentum, and a state_dict saved mid-training and loaded
    into a fresh optimizer, step for step as torch.optim.SGD (and torch's layout of the dict)."""
    torch = pytest.importorskip("torch")
    model, start = Params(), None
    start = {k: v.copy() for k, v in model.p.items()}
    groups = [{"params": [model.a], "lr": 0.05, "momentum": 0.5}, {"params": [model.b]}]
    opt = SGD(groups, lr=0.1, momentum=0.9)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    torch_opt = torch.optim.SGD(
        [{"params": [tensors["a"]], "lr": 0.05, "momentum": 0.5}, {"params": [tensors["b"]]}],
        lr=0.1,
        momentum=0.9,
    )
    for step, g in enumerate(grad_sequence(model, 6)):
        for k, p in model.p.items():
            p.grad[...] = g[k]
            tensors[k].grad = torch.tensor(g[k])
        opt.step()
        torch_opt.step()
        if step == 2:  # save, and go on with a fresh optimizer that loaded it
            saved = opt.state_dict()
            assert saved["param_groups"][0]["params"] == [0]
            assert saved["param_groups"][1]["params"] == [1]
            assert sorted(saved["state"]) == sorted(torch_opt.state_dict()["state"])
            opt = SGD([{"params": [model.a]}, {"params": [model.b]}], lr=1.0)
            opt.load_state_dict(saved)
            assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[1]["momentum"] == 0.9
    for k, tensor in tensors.items():
        np.testing.assert_allclose(model.p[k], tensor.detach().numpy(), rtol=1e-12, err_msg=k)


def test_load_state_dict_refuses_what_does_not_fit():
    opt = Adam(Params().parameters())
    other = Adam([Parameter(np.zeros(2))])
    other.param_groups[0]["params"][0].grad.fill(1.0)
    other.step()
    with pytest.raises(ValueError, match=r"parameter group 0 has 1 parameters in state_dict, 2"):
        opt.load_state_dict(other.state_dict())
    assert opt.state == {}


def test_a_tied_parameter_is_updated_once_with_the_sum_of_its_uses():
    emb, lin = Embedding(5, 3, dtype=np.float64, seed=0), Linear(3, 5, dtype=np.float64, seed=1)
    lin.weight = emb.weight  # tied
    emb(np.array([1, 2]))
    emb.backward(np.ones((2, 3)))
    lin(np.ones((4, 3)))
    lin.backward(np.ones((4, 5)))
    expected_grad = np.full((5, 3), 4.0)
    expected_grad[[1, 2]] += 1.0
    np.testing.assert_allclose(emb.weight.grad, expected_grad)
    before = emb.weight.copy()
    opt = SGD([emb, lin], lr=0.5)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2  # weight once, and lin.bias
    opt.step()
    np.testing.assert_allclose(emb.weight, before - 0.5 * expected_grad)
    assert lin.weight is emb.weight


# ---------------------------------------------------------------- clipping


def filled_layers(scale=1.0, dtype=np.float64):
    emb, lin = Embedding(4, 3, dtype=dtype, seed=0), Linear(3, 2, dtype=dtype, seed=1)
    rng = np.random.default_rng(2)
    for layer in (emb, lin):
        for g in layer.grads.values():
            g[...] = scale * rng.standard_normal(g.shape)
    return emb, lin


def all_grads(layers):
    return np.concatenate([g.ravel() for layer in layers for g in layer.grads.values()])


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_clip_grad_norm_scales_to_the_max_norm(norm_type):
    layers = filled_layers()
    flat = all_grads(layers)
    direct = (
        np.max(np.abs(flat))
        if math.isinf(norm_type)
        else np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type)
    )
    total = clip_grad_norm_(list(layers), max_norm=0.5, norm_type=norm_type)
    assert isinstance(total, float)
    np.testing.assert_allclose(total, direct, rtol=1e-12)
    np.testing.assert_allclose(all_grads(layers), flat * 0.5 / (direct + 1e-6), rtol=1e-12)


def test_clip_grad_norm_leaves_small_gradients_alone():
    layers = filled_layers(scale=1e-3)
    flat = all_grads(layers)
    total = clip_grad_norm_(layers, max_norm=1.0)
    np.testing.assert_allclose(total, np.linalg.norm(flat), rtol=1e-12)
    np.testing.assert_array_equal(all_grads(layers), flat)


def test_clip_grad_norm_takes_parameters_and_float32():
    layers = filled_layers(dtype=np.float32)
    flat = all_grads(layers).astype(np.float64)
    total = clip_grad_norm_([*layers[0].parameters(), layers[1]], max_norm=1.0)
    np.testing.assert_allclose(total, np.linalg.norm(flat), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(all_grads(layers).astype(np.float64)), 1.0, rtol=1e-5)
    assert all(g.dtype == np.float32 for layer in layers for g in layer.grads.values())


def test_clip_grad_norm_nonfinite():
    layers = filled_layers()
    layers[1].grads["bias"][0] = np.nan
    with pytest.raises(RuntimeError, match=r"the total norm of order 2\.0 of the gradients is nan"):
        clip_grad_norm_(layers, 1.0, error_if_nonfinite=True)
    assert math.isnan(clip_grad_norm_(layers, 1.0))
    assert np.isnan(all_grads(layers)).all()  # as torch: everything times NaN


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    layers = filled_layers(scale=3.0)
    tensors = [
        torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        for layer in layers
        for g in layer.grads.values()
    ]
    for t, g in zip(tensors, (g for layer in layers for g in layer.grads.values())):
        t.grad = torch.tensor(g)
    expected = torch.nn.utils.clip_grad_norm_(tensors, 2.0)
    total = clip_grad_norm_(layers, 2.0)
    np.testing.assert_allclose(total, expected.item(), rtol=1e-12)
    np.testing.assert_allclose(
        all_grads(layers), np.concatenate([t.grad.numpy().ravel() for t in tensors]), rtol=1e-12
    )


def test_clip_grad_value():
    layers = filled_layers()
    flat = all_grads(layers)
    clip_grad_value_(layers, 0.3)
    np.testing.assert_array_equal(all_grads(layers), np.clip(flat, -0.3, 0.3))
    with pytest.raises(ValueError, match=r"clip_value must be >= 0\.0"):
        clip_grad_value_(layers, -1)
    with pytest.raises(TypeError, match=r"parameters\[0\] must be a fusedrnn.Parameter"):
        clip_grad_value_([3], 1.0)


# ---------------------------------------------------------------- the fused update and its twin

ADAM_OPTIONS = [
    {},
    {"amsgrad": True},
    {"maximize": True},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decoupled_weight_decay": True},
    {"amsgrad": True, "weight_decay": 0.05, "maximize": True},
]
# float32: a few roundings of the update; float64: the same at its precision
UPDATE_RTOL = {np.float32: 2e-6, np.float64: 1e-14}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_fused_adam_update_equals_its_numpy_twin(options, dtype):
    """fusedrnn.functional.adam_update (one pass in C++) against fusedrnn.reference's, five
    steps of one (7, 33) parameter and its state."""
    from fusedrnn import functional, reference

    rng = np.random.default_rng(0)
    amsgrad = options.get("amsgrad", False)
    start = rng.standard_normal((7, 33)).astype(dtype)

    def fresh():
        zeros = np.zeros((7, 33), dtype)
        return {"p": start.copy(), "m": zeros.copy(), "v": zeros.copy(),
                "v_max": zeros.copy() if amsgrad else None}  # fmt: skip

    fused, twin = fresh(), fresh()
    for step in range(1, 6):
        grad = rng.standard_normal((7, 33)).astype(dtype)
        args = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8,
                "weight_decay": options.get("weight_decay", 0.0),
                "decoupled_weight_decay": options.get("decoupled_weight_decay", False),
                "maximize": options.get("maximize", False), "step": step}  # fmt: skip
        for fn, s in ((functional.adam_update, fused), (reference.adam_update, twin)):
            fn(s["p"], grad, s["m"], s["v"], s["v_max"], **args)
    for name in ("p", "m", "v") + (("v_max",) if amsgrad else ()):
        np.testing.assert_allclose(fused[name], twin[name], rtol=UPDATE_RTOL[dtype], atol=0,
                                   err_msg=name)  # fmt: skip
    assert np.abs(fused["p"] - start).min() > 0  # every element moved


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adam_update_on_threads_gives_the_bits_of_one_thread(dtype):
    """A parameter large enough for the update to split among threads (101,437 elements, not a
    multiple of the members' shares): the bits of one thread, and the NumPy twin's values."""
    import fusedrnn
    from fusedrnn import functional, reference

    rng = np.random.default_rng(1)
    shape = (301, 337)
    start = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
    before = fusedrnn.get_num_threads()
    results = []
    try:
        for fn, threads in ((functional.adam_update, 1), (functional.adam_update, 2),
                            (reference.adam_update, 1)):  # fmt: skip
            fusedrnn.set_num_threads(threads)
            p, m, v, v_max = start.copy(), *(np.zeros(shape, dtype) for _ in range(3))
            hyper = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1,
                     "decoupled_weight_decay": True, "maximize": False}  # fmt: skip
            for step, grad in enumerate(grads, 1):
                fn(p, grad, m, v, v_max, step=step, **hyper)
            results.append((p, m, v, v_max))
    finally:
        fusedrnn.set_num_threads(before)
    one, two, twin = results
    for name, a, b, c in zip(("p", "m", "v", "v_max"), one, two, twin):
        np.testing.assert_array_equal(b, a, err_msg=name)
        np.testing.assert_allclose(a, c, rtol=UPDATE_RTOL[dtype], atol=0, err_msg=name)
    assert np.abs(one[0] - start).min() > 0  # every element moved


def test_fused_adam_update_propagates_nan_as_numpy():
    from fusedrnn import functional, reference

    results = []
    for fn in (functional.adam_update, reference.adam_update):
        p, m, v, v_max = np.ones(5), np.zeros(5), np.zeros(5), np.zeros(5)
        grad = np.array([1.0, np.nan, -2.0, 0.0, np.inf])
        with np.errstate(invalid="ignore"):  # inf / inf
            fn(p, grad, m, v, v_max, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, 1)
        results.append((p, m, v, v_max))
    for fused, twin in zip(*results):
        np.testing.assert_array_equal(np.isnan(fused), np.isnan(twin))
        np.testing.assert_allclose(fused, twin, rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sum_of_squares_equals_its_numpy_twin(dtype):
    from fusedrnn import functional, reference

    x = np.random.default_rng(0).standard_normal((31, 17)).astype(dtype)
    got = functional.sum_of_squares(x)
    assert isinstance(got, float)
    assert got == pytest.approx(reference.sum_of_squares(x), rel=1e-13)
    assert functional.sum_of_squares(x[:, ::2]) == pytest.approx(
        reference.sum_of_squares(x[:, ::2]), rel=1e-13
    )  # a strided input is read through a copy
    assert functional.sum_of_squares(np.zeros(0, dtype)) == 0.0


def test_fused_adam_update_bad_input_is_a_clear_error():
    from fusedrnn import functional

    p, g = np.zeros((4, 6)), np.ones((4, 6))
    args = (1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, 1)
    with pytest.raises(ValueError, match="param is updated in place, so it must be C-contiguous"):
        functional.adam_update(p.T, g.T, np.zeros((6, 4)), np.zeros((6, 4)), None, *args)
    with pytest.raises(TypeError, match="float64"):
        functional.adam_update(p, g.astype(np.float32), np.zeros_like(p), np.zeros_like(p),
                               None, *args)  # fmt: skip
    with pytest.raises(ValueError, match="exp_avg"):
        functional.adam_update(p, g, np.zeros(5), np.zeros_like(p), None, *args)
    with pytest.raises(TypeError, match=r"grad must be a numpy\.ndarray"):
        functional.adam_update(p, [1.0], np.zeros_like(p), np.zeros_like(p), None, *args)
    with pytest.raises(ValueError, match="step must be >= 1"):
        functional.adam_update(p, g, np.zeros_like(p), np.zeros_like(p), None, *args[:-1], 0)
