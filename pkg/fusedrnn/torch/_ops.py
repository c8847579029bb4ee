"""The fused kernels as PyTorch operators: ``fusedrnn::stack_forward`` / ``stack_backward`` and
``fusedrnn::attention_forward`` / ``attention_backward``.

Each is a ``torch.library.custom_op`` built on the NumPy functions of `fusedrnn.functional`, with
a fake implementation (shapes only, for ``torch.compile`` and meta tensors) and, for the forward
ones, an autograd formula that calls the backward one. Contiguous CPU tensors cross as NumPy
views of their memory and the results come back as tensors over the arrays the kernels filled:
no copies either way. The workspace a training forward keeps is an output tensor that autograd
saves, so it is freed with the graph. The backward operators have no derivative themselves:
asking for one (double backward) raises `DOUBLE_BACKWARD_MESSAGE`. Every operator has a vmap
rule, and under torch.func's transforms the forward ones run inside autograd.Functions with the
same formulas (`_FuncStack`, `_FuncAttention`: "torch.func's transforms" below).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from fusedrnn import _config, _core, functional
from fusedrnn._spec import CELL_PARAMETERS, GATES, num_directions, stack_param_names

Tensor = torch.Tensor

DOUBLE_BACKWARD_MESSAGE = (
    "{op} has no derivative: fusedrnn's operators support one backward pass, not gradients of "
    "gradients (create_graph=True, torch.autograd.grad of a grad, torch.func.hessian). Use "
    "torch.nn's own module for double backward."
)


FORWARD_MODE_MESSAGE = (
    "{op} has no forward-mode derivative (torch.func.jvp, jacfwd, and hessian, which is jacfwd "
    "of jacrev): use reverse mode (torch.func.grad, vjp, jacrev), or torch.nn's own module"
)


def use_torch_threads() -> None:
    """Run the kernels with ``torch.get_num_threads()`` threads (docs/torch.md, "Threads").

    PyTorch and fusedrnn share one OpenMP runtime in a process; inside PyTorch, its thread count
    is the one setting, so that a call of ours never runs more threads than PyTorch's own ops.
    """
    # The teams run on OpenMP's threads, PyTorch's own: they spin after each of its operations,
    # and a second set of threads (fusedrnn's pool) would find the cores taken (docs/design.md,
    # "Threads"). A forked child still uses a pool of its own.
    _core.set_openmp_teams(True)
    wanted = torch.get_num_threads()
    # torch.set_num_threads sets the shared OpenMP runtime's count, which the kernels read, but
    # not that of the BLAS they call (scipy's OpenBLAS, its own threads): check both
    if _core.get_num_threads() != wanted or _config._blas_threads() not in (None, wanted):
        _config.set_num_threads(wanted)


def needs_grad(tensors: list[Tensor | None]) -> bool:
    """Whether autograd will want a backward: the forward must then save its workspace. Always
    while torch.jit.trace records: its graph serves every later call, with gradients or without
    (and its check traces again under no_grad: the two graphs must be the same)."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def as_array(tensor: Tensor | None) -> np.ndarray | None:
    """A NumPy view of a CPU tensor's memory (no copy when it is contiguous)."""
    if tensor is None:
        return None
    return tensor.detach().contiguous().numpy()


def as_tensor(array: np.ndarray | None, like: Tensor) -> Tensor:
    """The tensor over ``array``'s memory (no copy); an empty one of ``like``'s dtype for None."""
    if array is None:
        return like.new_empty(0)
    return torch.from_numpy(np.ascontiguousarray(array))


# ---------------------------------------------------------------- layer stacks


def _stack_params(mode, weights, num_layers, bidirectional, bias, proj_size) -> dict:
    """PyTorch's names (``_flat_weights_names``) for the flat weights, as NumPy views."""
    names = stack_param_names(mode, num_layers, bidirectional, bias, proj_size)
    if len(names) != len(weights):
        raise ValueError(
            f"weights must hold the {len(names)} tensors {names} of a {num_layers}-layer "
            f"{mode} stack, got {len(weights)}"
        )
    return {name: as_array(w) for name, w in zip(names, weights)}


def _stack_arrays(h0, c0, weights, dropout_masks, mode, num_layers, bidirectional, bias,
                  proj_size) -> tuple:  # fmt: skip
    """``(hx, params, dropout_masks)`` as `fusedrnn.functional`'s stack functions take them."""
    params = _stack_params(mode, weights, num_layers, bidirectional, bias, proj_size)
    hx = (as_array(h0), as_array(c0)) if mode == "lstm" else as_array(h0)
    masks = None if dropout_masks is None else functional._StackedMasks(as_array(dropout_masks))
    return hx, params, masks


def _hidden_size(mode: str, weights: list[Tensor]) -> int:
    return weights[1].shape[0] // GATES[mode]


def _stack_forward_impl(
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    weights: list[Tensor],
    lengths: Tensor | None,
    dropout_masks: Tensor | None,
    mode: str,
    num_layers: int,
    bidirectional: bool,
    bias: bool,
    proj_size: int,
    reset_after: bool,
    nonlinearity: str,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`fusedrnn.functional.stack_forward` on tensors.

    x (T, B, input_size); h0 (L*D, B, H_out); c0 (L*D, B, H) for LSTM, else None; weights in
    the order of ``torch.nn.LSTM._flat_weights``; lengths (B,) int64 or None; dropout_masks
    (L-1, T, B, D*H_out) or None. Returns y, h_n, c_n (empty unless LSTM) and the workspace
    (empty unless ``training``).
    """
    use_torch_threads()
    one_layer = num_layers == 1 and not bidirectional and not proj_size
    if not training and one_layer and lengths is None and dropout_masks is None:
        c0_array = None if c0 is None else as_array(c0)[0]
        y, h_n, c_n, _ = _one_layer_forward(
            as_array(x), as_array(h0)[0], c0_array, _cell_weights(weights, bias), mode,
            reset_after, nonlinearity, False,
        )  # fmt: skip
        c_n = x.new_empty(0) if c_n is None else as_tensor(c_n[None], x)
        return as_tensor(y, x), as_tensor(h_n[None], x), c_n, x.new_empty(0)  # (no aliases)
    hx, params, masks = _stack_arrays(
        h0, c0, weights, dropout_masks, mode, num_layers, bidirectional, bias, proj_size
    )
    y, h_n, c_n, saved = functional.stack_forward(
        mode,
        as_array(x),
        hx,
        params,
        num_layers,
        bidirectional,
        lengths=as_array(lengths),
        dropout_masks=masks,
        training=training,
        reset_after=reset_after,
        nonlinearity=nonlinearity,
        proj_size=proj_size,
    )
    workspace = None if saved is None else saved.workspace
    return as_tensor(y, x), as_tensor(h_n, x), as_tensor(c_n, x), as_tensor(workspace, x)


def _one_layer_forward(x, h0, c0, w, mode, reset_after, nonlinearity, training) -> tuple:
    """One unidirectional layer without lengths, dropout or projection: x (T, B, I), h0 and c0
    (B, H) (c0 None unless LSTM) and the weights w (`_cell_weights`) as arrays. Returns the
    arrays y, h_n, c_n (None unless LSTM) and the workspace.

    The layer's own kernel (`fusedrnn.functional.lstm_forward`, ...): the stack's arithmetic
    with fewer checks in Python, which a loop of cell steps pays every step.
    """
    if mode == "lstm":
        return functional.lstm_forward(x, h0, c0, *w, training=training)
    if mode == "gru":
        y, h_n, workspace = functional.gru_forward(
            x, h0, *w, reset_after=reset_after, training=training
        )
    else:
        y, h_n, workspace = functional.rnn_forward(
            x, h0, *w, nonlinearity=nonlinearity, training=training
        )
    return y, h_n, None, workspace


stack_forward = torch.library.custom_op(
    "fusedrnn::stack_forward", mutates_args=(), device_types="cpu"
)(_stack_forward_impl)


@stack_forward.register_fake
def _(x, h0, c0, weights, lengths, dropout_masks, mode, num_layers, bidirectional, bias,
      proj_size, reset_after, nonlinearity, training):  # fmt: skip
    T, B, input_size = x.shape
    H = _hidden_size(mode, weights)
    H_out = proj_size or H
    D = num_directions(bidirectional)
    y = x.new_empty(T, B, D * H_out)
    h_n = x.new_empty(num_layers * D, B, H_out)
    c_n = x.new_empty(num_layers * D, B, H) if mode == "lstm" else x.new_empty(0)
    if not training:
        size = 0
    elif all(isinstance(n, int) for n in (T, B, input_size)):
        size = _core.stack_saved_size(mode, T, B, input_size, H, proj_size, num_layers,
                                      bidirectional)  # fmt: skip
    else:  # symbolic sizes (torch.compile(dynamic=True)): a size known when the kernel runs
        size = torch.library.get_ctx().new_dynamic_size()
    return y, h_n, c_n, x.new_empty(size)


def _stack_backward_impl(
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    weights: list[Tensor],
    lengths: Tensor | None,
    dropout_masks: Tensor | None,
    y: Tensor,
    workspace: Tensor,
    dy: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None,
    mode: str,
    num_layers: int,
    bidirectional: bool,
    bias: bool,
    proj_size: int,
    reset_after: bool,
    nonlinearity: str,
    input_grad: bool = True,
    weight_grads: list[bool] | None = None,
    state_grad: bool = True,
) -> list[Tensor]:
    """`fusedrnn.functional.stack_backward` on tensors: ``[dx, dh0, dc0, *dweights]`` (dc0 is
    empty unless LSTM; dx empty when not ``input_grad``), the arguments of `stack_forward` plus
    what it returned. ``weight_grads``: which of ``weights`` want a gradient (None: all); the
    others' are not computed (their GEMMs skipped) and come back empty. ``state_grad=False``:
    dh0 and dc0 are not wanted (empty), and without dx the layers below the lowest one with a
    gradient wanted are skipped."""
    use_torch_threads()
    x_array = as_array(x)
    lengths_array = as_array(lengths)
    # the batch packing forward made is rebuilt from the same lengths (it is not a tensor)
    packing = functional._packing(lengths_array, x_array)
    saved = functional.StackSaved(as_array(workspace), packing)
    hx, params, masks = _stack_arrays(
        h0, c0, weights, dropout_masks, mode, num_layers, bidirectional, bias, proj_size
    )
    dx, dh0, dc0, grads = functional.stack_backward(
        mode,
        x_array,
        hx,
        params,
        num_layers,
        as_array(y),
        saved,
        dy=as_array(dy),
        dh_n=as_array(dh_n),
        dc_n=as_array(dc_n),
        bidirectional=bidirectional,
        lengths=lengths_array,
        dropout_masks=masks,
        reset_after=reset_after,
        nonlinearity=nonlinearity,
        proj_size=proj_size,
        input_grad=input_grad,
        frozen=_frozen_names(params, weight_grads),
        state_grad=state_grad,
    )
    return [as_tensor(dx, x), as_tensor(dh0, x), as_tensor(dc0, x)] + [
        as_tensor(grads.get(name), x) for name in params
    ]


def _frozen_names(names, wanted: list[bool] | None) -> list[str]:
    """The parameter names (in the weights' order) whose flag in ``wanted`` is False."""
    if wanted is None:
        return []
    if len(wanted) != len(names):
        raise ValueError(f"weight_grads must hold {len(names)} flags, got {len(wanted)}")
    return [name for name, flag in zip(names, wanted) if not flag]


stack_backward = torch.library.custom_op(
    "fusedrnn::stack_backward", mutates_args=(), device_types="cpu"
)(_stack_backward_impl)


@stack_backward.register_fake
def _(x, h0, c0, weights, lengths, dropout_masks, y, workspace, dy, dh_n, dc_n, mode,
      num_layers, bidirectional, bias, proj_size, reset_after, nonlinearity,
      input_grad=True, weight_grads=None, state_grad=True):  # fmt: skip
    dc0 = torch.empty_like(c0) if c0 is not None and state_grad else x.new_empty(0)
    dh0 = torch.empty_like(h0) if state_grad else x.new_empty(0)
    dx = torch.empty_like(x) if input_grad else x.new_empty(0)
    wanted = [True] * len(weights) if weight_grads is None else weight_grads
    dweights = [torch.empty_like(w) if flag else x.new_empty(0) for w, flag in zip(weights, wanted)]
    return [dx, dh0, dc0, *dweights]


def _backward_function(ctx, operator):
    """What an autograd formula calls for the gradients: the backward operator, or, after an
    eager forward (`run_stack`, `run_attention`), its Python function without the dispatcher;
    under torch.func's transforms the operator inside an autograd.Function (`_FuncBackward`).
    With create_graph=True always the operator, whose autograd raises DOUBLE_BACKWARD_MESSAGE
    when the gradients are differentiated."""
    if getattr(ctx, "func_transform", False):
        return lambda *args: _func_backward(operator, args)
    eager = getattr(ctx, "eager_backward", None)
    return operator if eager is None or torch.is_grad_enabled() else eager


_STACK_CONFIG = ("mode", "num_layers", "bidirectional", "bias", "proj_size", "reset_after",
                 "nonlinearity")  # fmt: skip


def _stack_setup_context(ctx, inputs, output) -> None:
    x, h0, c0, weights, lengths, masks, *config, training = inputs
    y, _, _, workspace = output
    ctx.mark_non_differentiable(workspace)
    ctx.training = training
    ctx.config = config
    ctx.num_weights = len(weights)
    ctx.save_for_backward(x, h0, c0, lengths, masks, y, workspace, *weights)


def _stack_backward_formula(ctx, dy, dh_n, dc_n, _dworkspace, weights_need_grad=None):
    """The gradients of a stack's forward. ``weights_need_grad``: autograd's flags for the
    weights (None: the operator's, whose weights are one list argument)."""
    if not ctx.training:
        raise RuntimeError(
            "fusedrnn::stack_forward ran with training=False, which saves nothing for "
            "backward; call it with training=True when a gradient is wanted"
        )
    x, h0, c0, lengths, masks, y, workspace, *weights = ctx.saved_tensors
    mode = ctx.config[0]
    # x is the first input of the operator and of _EagerStack and _FuncStack alike. An x that
    # needs no gradient (data) spares layer 0's dgates W_ih, a quarter of its GEMM work.
    input_grad = ctx.needs_input_grad[0]
    # A frozen weight (requires_grad=False) spares its dW GEMM, about a quarter of the backward;
    # constant initial states (hx None) with data as x spare the layers below the lowest one
    # whose weights need a gradient.
    wanted = [bool(flag) for flag in (weights_need_grad or ctx.needs_input_grad[3])]
    weight_grads = None if all(wanted) else wanted
    state_grad = bool(ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
    dx, dh0, dc0, *dweights = _backward_function(ctx, stack_backward)(
        x, h0, c0, weights, lengths, masks, y, workspace, dy, dh_n,
        dc_n if mode == "lstm" else None, *ctx.config, input_grad, weight_grads, state_grad,
    )  # fmt: skip
    dx = dx if input_grad else None
    dh0, dc0 = (dh0, dc0 if mode == "lstm" else None) if state_grad else (None, None)
    dweights = [d if flag else None for d, flag in zip(dweights, wanted)]
    return dx, dh0, dc0, dweights, None, None, *[None] * 8


stack_forward.register_autograd(_stack_backward_formula, setup_context=_stack_setup_context)


def _no_double_backward(op_name: str):
    def setup_context(ctx, inputs, output) -> None:
        pass

    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE.format(op=op_name))

    return backward, setup_context


_backward, _setup = _no_double_backward("fusedrnn::stack_backward")
stack_backward.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------- attention


def _attention_forward_impl(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    dropout_p: float,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """`fusedrnn.functional.attention_forward` on tensors: ``(out, lse)``."""
    use_torch_threads()
    out, lse = functional.attention_forward(
        as_array(q), as_array(k), as_array(v), as_array(attn_mask), is_causal, scale,
        enable_gqa, dropout_p=dropout_p, seed=seed,
    )  # fmt: skip
    return as_tensor(out, q), as_tensor(lse, q)


attention_forward = torch.library.custom_op(
    "fusedrnn::attention_forward", mutates_args=(), device_types="cpu"
)(_attention_forward_impl)


def attention_out_shape(q: Tensor, k: Tensor, v: Tensor) -> tuple:
    """The shape of the output: the broadcast batch dimensions, (Hq, L, Ev); 2-D: (L, Ev)."""
    if q.dim() == k.dim() == v.dim() == 2:
        return (q.shape[0], v.shape[-1])
    batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    heads = q.shape[-3] if q.dim() >= 3 else 1
    return (*batch, heads, q.shape[-2], v.shape[-1])


@attention_forward.register_fake
def _(q, k, v, attn_mask, is_causal, scale, enable_gqa, dropout_p, seed):
    shape = attention_out_shape(q, k, v)
    return q.new_empty(shape), q.new_empty(shape[:-1])


def _attention_backward_impl(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    d_out: Tensor,
    attn_mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    dropout_p: float,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """`fusedrnn.functional.attention_backward` on tensors: ``(dq, dk, dv)``."""
    use_torch_threads()
    dq, dk, dv = functional.attention_backward(
        as_array(q), as_array(k), as_array(v), as_array(out), as_array(lse), as_array(d_out),
        as_array(attn_mask), is_causal, scale, enable_gqa, dropout_p=dropout_p, seed=seed,
    )  # fmt: skip
    return as_tensor(dq, q), as_tensor(dk, q), as_tensor(dv, q)


attention_backward = torch.library.custom_op(
    "fusedrnn::attention_backward", mutates_args=(), device_types="cpu"
)(_attention_backward_impl)


@attention_backward.register_fake
def _(q, k, v, out, lse, d_out, attn_mask, is_causal, scale, enable_gqa, dropout_p, seed):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attention_setup_context(ctx, inputs, output) -> None:
    q, k, v, attn_mask, *options = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.options = options
    ctx.save_for_backward(q, k, v, attn_mask, out, lse)


def _attention_backward_formula(ctx, d_out, _dlse):
    if d_out is None:  # (eager calls: an undefined gradient of out) zero gradients
        return (None,) * 9
    q, k, v, attn_mask, out, lse = ctx.saved_tensors
    backward = _backward_function(ctx, attention_backward)
    dq, dk, dv = backward(q, k, v, out, lse, d_out, attn_mask, *ctx.options)
    return dq, dk, dv, None, None, None, None, None, None


attention_forward.register_autograd(
    _attention_backward_formula, setup_context=_attention_setup_context
)
_backward, _setup = _no_double_backward("fusedrnn::attention_backward")
attention_backward.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------- torch.func's transforms

# vmap: an operator maps over a dimension one index at a time, the results stacked along a new
# first dimension. Correct whatever is mapped (inputs, states, weights, lengths, masks), and
# per-sample gradients (vmap of grad) need it: folding the mapped dimension into the batch would
# sum the weight gradients over it. An inference with the same weights at every index folds
# (_stack_forward_vmap).


def _select(arg, dim, index: int | None):
    """``arg`` at ``index`` of its mapped dimension ``dim`` (None: not mapped), lists itemwise;
    index None: a meta tensor of one index's shape, for every tensor."""
    if isinstance(arg, (list, tuple)):
        return type(arg)(_select(a, d, index) for a, d in zip(arg, dim))
    if index is None and isinstance(arg, Tensor):
        shape = arg.shape if dim is None else arg.shape[:dim] + arg.shape[dim + 1 :]
        return arg.new_empty(shape, device="meta")
    return arg if dim is None else arg.select(dim, index)


def _vmap_by_index(operator):
    """The vmap rule of ``operator``: one call per index, the results stacked."""

    def rule(info, in_dims, *args):
        count = info.batch_size
        # an empty mapped dimension: the results' shapes from one call on meta tensors
        indices = range(count) if count else [None]
        results = [operator(*(_select(a, d, i) for a, d in zip(args, in_dims))) for i in indices]
        stacked = type(results[0])(
            torch.stack(parts) if count else torch.empty(0, *parts[0].shape, dtype=parts[0].dtype)
            for parts in zip(*results)
        )
        return stacked, type(results[0])(0 for _ in stacked)

    return rule


def _batch_folded(t: Tensor | None, dim: int | None, count: int, axis: int = 1) -> Tensor | None:
    """``t`` of one index, its batch B at ``axis``, for all ``count`` indices at once: the batch
    count*B, index-major (``t`` mapped at ``dim``, or the same for every index when dim is None)."""
    if t is None:
        return None
    if dim is None:
        t = t.unsqueeze(axis).expand(*t.shape[:axis], count, *t.shape[axis:])
    else:
        t = t.movedim(dim, axis)
    return t.reshape(*t.shape[:axis], count * t.shape[axis + 1], *t.shape[axis + 2 :])


def _stack_forward_vmap(info, in_dims, x, h0, c0, weights, lengths, masks, *config):
    """vmap of stack_forward: an inference over mapped inputs, states or dropout masks with the
    same weights (and lengths) at every index is one call, the indices side by side in the
    batch; anything else (training: its workspace is per index; mapped weights) one call per
    index."""
    x_dim, h0_dim, c0_dim, weight_dims, lengths_dim, masks_dim = in_dims[:6]
    training = config[-1]
    mapped_weights = any(d is not None for d in weight_dims)
    if training or lengths_dim is not None or mapped_weights:
        return _vmap_by_index(stack_forward)(info, in_dims, x, h0, c0, weights, lengths, masks,
                                             *config)  # fmt: skip
    count = info.batch_size
    T, B = (x.shape[:x_dim] + x.shape[x_dim + 1 :] if x_dim is not None else x.shape)[:2]
    if lengths is not None:
        lengths = lengths.repeat(count)
    y, h_n, c_n, workspace = stack_forward(
        _batch_folded(x, x_dim, count), _batch_folded(h0, h0_dim, count),
        _batch_folded(c0, c0_dim, count), weights, lengths,
        _batch_folded(masks, masks_dim, count, axis=2), *config,
    )  # fmt: skip
    y = y.view(T, count, B, *y.shape[2:])
    h_n = h_n.view(h_n.shape[0], count, B, *h_n.shape[2:])
    lstm = config[0] == "lstm"  # (else c_n is an empty placeholder)
    c_n = c_n.view(c_n.shape[0], count, B, *c_n.shape[2:]) if lstm else c_n
    return (y, h_n, c_n, workspace), (1, 1, 1 if lstm else None, None)


torch.library.register_vmap(stack_forward, _stack_forward_vmap)
for _operator in (stack_backward, attention_forward, attention_backward):
    torch.library.register_vmap(_operator, _vmap_by_index(_operator))


# grad, vjp, jacrev: PyTorch's transforms take an autograd.Function only with a setup_context
# staticmethod, which the one register_autograd generates lacks (pytorch/pytorch#168393), so
# under a transform the forward operators run inside these Functions, with the same formulas.
# generate_vmap_rule: under vmap their bodies run on batched tensors, which the operators'
# rules above take.


class _FuncStack(torch.autograd.Function):
    """fusedrnn::stack_forward and its autograd formula, for torch.func's transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, h0, c0, lengths, masks, options, *weights):
        return stack_forward(x, h0, c0, list(weights), lengths, masks, *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, c0, lengths, masks, options, *weights = inputs
        _stack_setup_context(ctx, (x, h0, c0, weights, lengths, masks, *options), output)
        ctx.func_transform = True

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, dworkspace):
        dx, dh0, dc0, dweights, *_ = _stack_backward_formula(
            ctx, dy, dh_n, dc_n, dworkspace, ctx.needs_input_grad[6:]
        )
        return dx, dh0, dc0, None, None, None, *dweights

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(FORWARD_MODE_MESSAGE.format(op="fusedrnn::stack_forward"))


class _FuncAttention(torch.autograd.Function):
    """fusedrnn::attention_forward and its autograd formula, for torch.func's transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, attn_mask, *options):
        return attention_forward(q, k, v, attn_mask, *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _attention_setup_context(ctx, inputs, output)
        ctx.func_transform = True

    @staticmethod
    def backward(ctx, d_out, dlse):
        return _attention_backward_formula(ctx, d_out, dlse)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(FORWARD_MODE_MESSAGE.format(op="fusedrnn::attention_forward"))


def _func_backward(operator, args: tuple) -> tuple:
    """``operator(*args)`` through `_FuncBackward`, the list arguments (weights) spread out: a
    transform sees only the tensors among an autograd.Function's own arguments."""
    flat, sizes = [], []
    for arg in args:
        is_list = isinstance(arg, list)
        flat.extend(arg if is_list else [arg])
        sizes.append(len(arg) if is_list else None)
    return _FuncBackward.apply(operator, tuple(sizes), *flat)


class _FuncBackward(torch.autograd.Function):
    """A backward operator under torch.func's transforms (arguments: `_func_backward`); its
    gradient (hessian, jacrev of grad) raises DOUBLE_BACKWARD_MESSAGE."""

    generate_vmap_rule = True

    @staticmethod
    def forward(operator, sizes, *flat):
        rest = iter(flat)
        args = [next(rest) if size is None else [next(rest) for _ in range(size)] for size in sizes]
        return tuple(operator(*args))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.name = inputs[0]._qualname

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE.format(op=ctx.name))


# ---------------------------------------------------------------- eager calls

# A forward+backward through an operator pays PyTorch's dispatcher and the custom-op wrapper in
# Python: about 0.9 ms on a Zen 3 core for a small 2-layer LSTM, where the kernels take 0.2 ms.
# Eager CPU calls (most training loops) skip it: an autograd.Function with the operators'
# functions and formulas (0.48 ms). torch.compile, torch.func's transforms, dispatch modes
# (FakeTensor, meta), tracing and tensor subclasses keep the operators.


def _in_func_transform() -> bool:
    """Whether torch.func's transforms (vmap, grad, ...) are running, outside torch.compile."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None


def _eager(tensors) -> bool:
    """Whether a call on these tensors may skip the operators (see above)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:  # vmap, grad, ...
        return False
    if is_in_torch_dispatch_mode():  # FakeTensorMode, FlopCounterMode, ...
        return False
    plain = (Tensor, torch.nn.Parameter)  # not a subclass with its own dispatch
    return all(t is None or (type(t) in plain and t.is_cpu) for t in tensors)


class _EagerStack(torch.autograd.Function):
    """fusedrnn::stack_forward and its autograd formula, without the dispatcher."""

    @staticmethod
    def forward(ctx, x, h0, c0, lengths, masks, options, *weights):
        inputs = (x, h0, c0, list(weights), lengths, masks, *options)
        output = _stack_forward_impl(*inputs)
        _stack_setup_context(ctx, inputs, output)
        ctx.eager_backward = _stack_backward_impl
        # an output without a gradient (the workspace always, h_n or y often) reaches backward
        # as None, which the kernel reads as zeros, instead of as a tensor of zeros filled for
        # it (the workspace's 7 MB at (35, 20, 200) x 2 layers: 1.2 ms, 5% of a whole step)
        ctx.set_materialize_grads(False)
        return output

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, dworkspace):
        dx, dh0, dc0, dweights, *_ = _stack_backward_formula(
            ctx, dy, dh_n, dc_n, dworkspace, ctx.needs_input_grad[6:]
        )
        return dx, dh0, dc0, None, None, None, *dweights

    jvp = _FuncStack.jvp  # (torch.autograd.forward_ad's dual tensors)


def run_stack(x, h0, c0, weights, lengths, dropout_masks, *options) -> tuple:
    """`stack_forward` (the same arguments; options: mode, ..., training), eager where it may
    be (see `_eager`)."""
    if _eager([x, h0, c0, lengths, dropout_masks, *weights]):
        if not options[-1] and _no_dual_level():  # no gradient wanted: no autograd node either
            return _stack_forward_impl(x, h0, c0, weights, lengths, dropout_masks, *options)
        return _EagerStack.apply(x, h0, c0, lengths, dropout_masks, options, *weights)
    if _in_func_transform():
        return _FuncStack.apply(x, h0, c0, lengths, dropout_masks, options, *weights)
    return stack_forward(x, h0, c0, weights, lengths, dropout_masks, *options)


def _no_dual_level() -> bool:
    """Whether no forward-mode level is open (torch.autograd.forward_ad.dual_level): then no
    input can carry a tangent that a call on arrays would drop. Unknown: assume one is."""
    return getattr(torch.autograd.forward_ad, "_current_level", 0) < 0


def _cell_weights(weights, bias: bool) -> list:
    """The one-layer kernels' (w_ih, w_hh, b_ih, b_hh) as arrays: zero biases without bias."""
    w = [as_array(t) for t in weights]
    if not bias:
        zeros = np.zeros(w[0].shape[0], w[0].dtype)
        w += [zeros, zeros]
    return w


class _EagerCell(torch.autograd.Function):
    """One step of a cell on the one-layer kernels (`fusedrnn.functional.lstm_forward` and
    `lstm_backward`, GRU's, RNN's), with eager autograd: the arithmetic of the stack operator
    at T = 1, with the Python of a one-layer call, which a loop of steps pays every step."""

    @staticmethod
    def forward(ctx, x, h0, c0, config, *weights):
        # config: (mode, bias, reset_after, nonlinearity)
        mode, bias, reset_after, nonlinearity = config
        use_torch_threads()
        arrays = (as_array(x)[None], as_array(h0), as_array(c0), _cell_weights(weights, bias))
        y, h_n, c_n, workspace = _one_layer_forward(*arrays, mode, reset_after, nonlinearity, True)
        # saved as tensors, so that autograd's check of in-place changes covers them; backward
        # reads them through the arrays over their memory (made once: a loop of steps pays
        # every conversion). y and the workspace are the kernel's own (freed with the node).
        ctx.save_for_backward(x, h0, c0, *weights)
        ctx.arrays = arrays
        ctx.outputs = (y, workspace)
        ctx.config = config
        ctx.set_materialize_grads(False)  # an unused c' or h': None, read as zeros
        return torch.from_numpy(h_n), (x.new_empty(0) if c_n is None else torch.from_numpy(c_n))

    @staticmethod
    def backward(ctx, dh, dc):
        mode, bias, reset_after, nonlinearity = ctx.config
        saved = ctx.saved_tensors  # (raises if one was changed in place since the forward)
        xs, h, c, w = ctx.arrays
        y, workspace = ctx.outputs
        dh_n = as_array(dh)  # (None: no gradient of h', read as zeros)
        # an x that needs no gradient (data) spares dgates W_ih, a quarter of the GEMM work;
        # a frozen weight (requires_grad=False) its dW GEMM. Without bias the kernel's zero
        # biases need no gradient either.
        input_grad = ctx.needs_input_grad[0]
        names = CELL_PARAMETERS if bias else CELL_PARAMETERS[:2]
        frozen = _frozen_names(CELL_PARAMETERS, [*ctx.needs_input_grad[4:], False, False][:4])
        kw = {"input_grad": input_grad, "frozen": frozen}
        if mode == "lstm":
            dx, dh0, dc0, grads = functional.lstm_backward(
                xs, h, c, w[0], w[1], y, workspace, dh_n=dh_n, dc_n=as_array(dc), **kw
            )
        elif mode == "gru":
            dx, dh0, grads = functional.gru_backward(
                xs, h, *w[:2], y, workspace, dh_n=dh_n, reset_after=reset_after, **kw
            )
            dc0 = None
        else:
            dx, dh0, grads = functional.rnn_backward(
                xs, h, *w[:2], y, workspace, dh_n=dh_n, nonlinearity=nonlinearity, **kw
            )
            dc0 = None
        results = [None if dx is None else torch.from_numpy(dx[0]), torch.from_numpy(dh0)]
        results += [None if dc0 is None else torch.from_numpy(dc0)]
        results += [torch.from_numpy(grads[name]) if name in grads else None for name in names]
        if torch.is_grad_enabled():  # create_graph=True: these gradients have no derivative
            results = list(_NoDerivative.apply(len(results), *results, *saved))
        return results[0], results[1], results[2], None, *results[3:]

    jvp = _FuncStack.jvp  # (torch.autograd.forward_ad's dual tensors)


class _NoDerivative(torch.autograd.Function):
    """The identity on a cell step's ``count`` gradients, whose own backward raises the
    double-backward error, as the stack operator's does. The step's inputs come after them:
    the gradients depend on those, which gives the results a node to raise from."""

    @staticmethod
    def forward(ctx, count, *tensors):
        return tuple(t.clone() if t is not None else None for t in tensors[:count])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE.format(op="fusedrnn::stack_backward"))


def run_cell(x, h0, c0, weights, mode, bias, reset_after, nonlinearity, training) -> tuple:
    """One step of a cell: x (B, I), h0 and c0 (B, H) (c0 None unless LSTM), weights as
    `run_stack`'s. Returns (h', c'), c' None unless LSTM.

    Eager calls (outside compile, tracing and transforms) run on the one-layer kernels: on
    arrays straight away when no gradient is wanted (``training`` False), else `_EagerCell`.
    A decoding loop pays this path's overhead every step.
    """
    if _eager([x, h0, c0, *weights]) and _no_dual_level():
        if training:
            h_n, c_n = _EagerCell.apply(
                x, h0, c0, (mode, bias, reset_after, nonlinearity), *weights
            )
            return h_n, (c_n if c0 is not None else None)
        use_torch_threads()
        _, h_n, c_n, _ = _one_layer_forward(
            as_array(x)[None], as_array(h0), as_array(c0), _cell_weights(weights, bias), mode,
            reset_after, nonlinearity, False,
        )  # fmt: skip
        return torch.from_numpy(h_n), None if c_n is None else torch.from_numpy(c_n)
    _, h_n, c_n, _ = run_stack(
        x.unsqueeze(0).contiguous(),
        h0.unsqueeze(0).contiguous(),
        None if c0 is None else c0.unsqueeze(0).contiguous(),
        weights,
        None,
        None,
        mode,
        1,
        False,
        bias,
        0,
        reset_after,
        nonlinearity,
        training,
    )
    return h_n[0], (c_n[0] if c0 is not None else None)


class _EagerAttention(torch.autograd.Function):
    """fusedrnn::attention_forward and its autograd formula, without the dispatcher."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, *options):
        inputs = (q, k, v, attn_mask, *options)
        output = _attention_forward_impl(*inputs)
        _attention_setup_context(ctx, inputs, output)
        ctx.eager_backward = _attention_backward_impl
        ctx.set_materialize_grads(False)  # lse never has a gradient: no zeros filled for it
        return output

    @staticmethod
    def backward(ctx, d_out, dlse):
        return _attention_backward_formula(ctx, d_out, dlse)

    jvp = _FuncAttention.jvp


def run_attention(q, k, v, attn_mask, *options) -> tuple:
    """`attention_forward` (same arguments), eager where it may be (see `_eager`)."""
    if _eager([q, k, v, attn_mask]):
        if not needs_grad([q, k, v, attn_mask]) and _no_dual_level():  # no autograd node
            return _attention_forward_impl(q, k, v, attn_mask, *options)
        return _EagerAttention.apply(q, k, v, attn_mask, *options)
    if _in_func_transform():
        return _FuncAttention.apply(q, k, v, attn_mask, *options)
    return attention_forward(q, k, v, attn_mask, *options)
