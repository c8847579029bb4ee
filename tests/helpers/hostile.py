"""The machinery of test_hostile_input.py: the public calls of the recurrent part with good
arguments, and the ways of spoiling one argument.

A `Spec` builds one public call with good, small arguments (``make()`` returns a fresh
``(function, kwargs)`` each time, from fixed seeds, so two calls are bit-comparable). Its `Arg`
entries say where each array argument sits in ``kwargs`` (a path: ``("x",)``,
``("hx", 0)``, ``("params", "weight_ih_l0")``), how an error must name it, and what is special
about it (accumulated into, optional, axes whose size the call reads off it).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fusedrnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, functional
from fusedrnn._spec import GATES
from tests.helpers.cells import make_inputs

# ---------------------------------------------------------------- specs


@dataclass
class Arg:
    path: tuple
    label: str  # regex an error message must start with when it is about this argument
    accumulator: bool = False  # written in place: must be exact, writeable, C-contiguous, aligned
    optional: bool = False  # None is a valid value
    # axes whose size the call reads off this argument: a wrong size there may be reported
    # against another argument (the one that then disagrees), but still as a ValueError
    defining: frozenset = frozenset()
    free: frozenset = frozenset()  # axes of any size (a different size is another valid call)
    dtype_defining: bool = False  # another float dtype here may be reported against another arg
    batched_twin: bool = False  # a layer's x: one axis fewer is the valid unbatched form
    none_error: type = TypeError  # what None is, when not optional
    # spoilings that are valid calls (e.g. one axis fewer of a broadcast batch, a bool mask)
    free_kinds: frozenset = frozenset()


@dataclass
class Spec:
    name: str
    make: Callable[[], tuple]
    args: list = field(default_factory=list)
    # the function keeps no state: make() once, then hand out deep copies of its arguments
    stateless: bool = False
    # results of another memory layout equal bit for bit (kernels copy to C order first); the
    # attention layers reduce in NumPy, whose summation order follows the layout: to rounding
    exact: bool = True
    _made: tuple | None = None

    def fresh(self) -> tuple:
        """``(function, kwargs)``: a new call, equal to every other one."""
        if not self.stateless:
            return self.make()
        if self._made is None:
            self._made = self.make()
        fn, kwargs = self._made
        return fn, copy.deepcopy(kwargs)

    def labels(self) -> str:
        """A regex matching the start of an error that names any argument of the call."""
        return "|".join(f"(?:{a.label})" for a in self.args) + r"|lengths|dropout_masks"


def get(kwargs: dict, path: tuple):
    value = kwargs
    for key in path:
        value = getattr(value, key) if dataclasses.is_dataclass(value) else value[key]
    return value


def put(kwargs: dict, path: tuple, new) -> dict:
    """A shallow copy of ``kwargs`` with the value at ``path`` replaced (tuples and records
    rebuilt)."""

    def replace(container, keys):
        if not keys:
            return new
        key, rest = keys[0], keys[1:]
        if dataclasses.is_dataclass(container):  # a record, e.g. the saved state of a forward
            return dataclasses.replace(container, **{key: replace(getattr(container, key), rest)})
        if isinstance(container, dict):
            out = dict(container)
            out[key] = replace(container[key], rest)
            return out
        items = list(container)
        items[key] = replace(items[key], rest)
        return type(container)(items)

    return replace(kwargs, path)


def word(name: str) -> str:
    return re.escape(name) + r"(?![\w\[])"


def run_single(cell: str, fn_name: str, options: dict):
    def call(**kwargs):
        return getattr(functional, fn_name)(**kwargs, **options)

    return call


SINGLE_CASES = {  # cell -> (case name in tests/helpers/cells.py, options, gate count)
    "lstm": ("lstm", {}, 4),
    "gru": ("gru_reset_before", {"reset_after": False}, 3),
    "rnn": ("rnn_relu", {"nonlinearity": "relu"}, 1),
}
T, B, I, H = 3, 2, 5, 4


def single_forward_spec(cell: str) -> Spec:
    case, options, _ = SINGLE_CASES[cell]

    def make():
        return run_single(cell, f"{cell}_forward", options), make_inputs(case, T, B, I, H)

    names = list(make()[1])
    args = [
        Arg(("x",), word("x"), defining=frozenset({1, 2}), free=frozenset({0}), dtype_defining=True)
    ]
    args += [Arg((n,), word(n)) for n in names if n != "x"]
    return Spec(f"{cell}_forward", make, args, stateless=True)


def single_backward_spec(cell: str) -> Spec:
    case, options, G = SINGLE_CASES[cell]

    def make():
        inputs = make_inputs(case, T, B, I, H)
        y, *_states, workspace = getattr(functional, f"{cell}_forward")(**inputs, **options)
        rng = np.random.default_rng(7)
        kwargs = {k: inputs[k] for k in ("x", "h0", "c0", "weight_ih", "weight_hh") if k in inputs}
        kwargs.update(
            y=y,
            workspace=workspace,
            dy=rng.standard_normal(y.shape),
            dh_n=rng.standard_normal((B, H)),
        )
        if cell == "lstm":
            kwargs["dc_n"] = rng.standard_normal((B, H))
        kwargs["grads"] = {
            "weight_ih": np.zeros((G * H, I)),
            "weight_hh": np.zeros((G * H, H)),
            "bias_ih": np.zeros(G * H),
            "bias_hh": np.zeros(G * H),
        }
        return run_single(cell, f"{cell}_backward", options), kwargs

    kwargs = make()[1]
    args = [Arg(("x",), word("x"), defining=frozenset({0, 1, 2}), dtype_defining=True)]
    for name in kwargs:
        if name in ("x", "grads") or (cell == "rnn" and name == "workspace"):
            continue  # the RNN's workspace is empty: spoiling it is tested on its own
        args.append(
            Arg(
                (name,),
                word(name),
                optional=name in ("dy", "dh_n", "dc_n"),
                none_error=ValueError if name == "workspace" else TypeError,
            )
        )
    args.extend(  # None entries: fresh zeroed buffers
        Arg(("grads", name), re.escape(f"grads['{name}']"), accumulator=True, optional=True)
        for name in kwargs["grads"]
    )
    return Spec(f"{cell}_backward", make, args, stateless=True)


# (mode, options, layers, bidirectional, bias, proj, lengths)
STACKS = {
    "lstm": ("lstm", {}, 2, True, True, 2, [4, 1, 3]),
    "gru": ("gru", {"reset_after": True}, 2, False, False, 0, None),
    "rnn": ("rnn", {"nonlinearity": "tanh"}, 2, True, True, 0, [2, 4, 4]),
}
ST, SB, SI, SH = 4, 3, 5, 3


def stack_params(mode, layers, bidirectional, bias, proj, rng, dtype=np.float64):
    G, R, D = GATES[mode], proj or SH, 2 if bidirectional else 1
    params = {}
    for name in functional.stack_param_names(mode, layers, bidirectional, bias, proj):
        layer = int(name.split("_l")[1].split("_")[0])
        width = SI if layer == 0 else D * R
        shape = {
            "weight_ih": (G * SH, width),
            "weight_hh": (G * SH, R),
            "bias_ih": (G * SH,),
            "bias_hh": (G * SH,),
            "weight_hr": (proj, SH),
        }[name.split("_l")[0]]
        params[name] = rng.uniform(-0.5, 0.5, shape).astype(dtype)
    return params


def stack_inputs(key: str, seed: int = 0, dtype=np.float64) -> dict:
    """Good keyword arguments of stack_forward for the stack ``key`` of STACKS."""
    mode, options, layers, bidirectional, bias, proj, lengths = STACKS[key]
    rng = np.random.default_rng(seed)
    D, R = 2 if bidirectional else 1, proj or SH
    params = stack_params(mode, layers, bidirectional, bias, proj, rng, dtype)
    h0 = rng.standard_normal((layers * D, SB, R)).astype(dtype)
    hx = (h0, rng.standard_normal((layers * D, SB, SH)).astype(dtype)) if mode == "lstm" else h0
    masks = [
        (rng.random((ST, SB, D * R)) > 0.3).astype(dtype) / dtype(0.7) for _ in range(layers - 1)
    ]
    return dict(
        mode=mode,
        x=rng.standard_normal((ST, SB, SI)).astype(dtype),
        hx=hx,
        params=params,
        num_layers=layers,
        bidirectional=bidirectional,
        lengths=None if lengths is None else np.array(lengths),
        dropout_masks=masks,
        proj_size=proj,
        **options,
    )


def stack_arg_list(key: str, kwargs: dict) -> list:
    mode = STACKS[key][0]
    # every stack here has dropout masks, so a different T is an error too (naming the masks)
    args = [Arg(("x",), word("x"), defining=frozenset({0, 1, 2}), dtype_defining=True)]
    if mode == "lstm":
        args += [Arg(("hx", 0), word("h0")), Arg(("hx", 1), word("c0"))]
    else:
        args.append(Arg(("hx",), word("h0"), optional=True))
    for name in kwargs["params"]:
        args.append(
            Arg(
                ("params", name),
                r"(?:params\[')?" + word(name),
                defining=frozenset({0}) if name == "weight_hh_l0" else frozenset(),
            )
        )
    for i in range(len(kwargs["dropout_masks"])):
        args.append(Arg(("dropout_masks", i), re.escape(f"dropout_masks[{i}]")))
    return args


def stack_forward_spec(key: str) -> Spec:
    def make():
        return functional.stack_forward, stack_inputs(key)

    return Spec(f"stack_forward_{key}", make, stack_arg_list(key, make()[1]), stateless=True)


def stack_backward_spec(key: str) -> Spec:
    def make():
        kwargs = stack_inputs(key)
        y, h_n, c_n, saved = functional.stack_forward(**kwargs)
        rng = np.random.default_rng(9)
        kwargs.update(
            y=y,
            saved=saved,
            dy=rng.standard_normal(y.shape),
            dh_n=rng.standard_normal(h_n.shape),
            grads={k: np.zeros_like(v) for k, v in kwargs["params"].items()},
        )
        if c_n is not None:
            kwargs["dc_n"] = rng.standard_normal(c_n.shape)
        return functional.stack_backward, kwargs

    kwargs = make()[1]
    args = stack_arg_list(key, kwargs)
    for name in ("y", "saved", "dy", "dh_n", "dc_n"):
        if name in kwargs:  # saved: spoil its workspace (the flat array the binding reads)
            args.append(
                Arg(
                    (name, "workspace") if name == "saved" else (name,),
                    word(name),
                    optional=name not in ("y", "saved"),
                    none_error=ValueError if name == "saved" else TypeError,
                )
            )
    for name in kwargs["grads"]:  # None entries: no gradient wanted (biases), else an error
        args.append(
            Arg(("grads", name), re.escape(f"grads['{name}']"), accumulator=True, optional=True)
        )
    return Spec(f"stack_backward_{key}", make, args, stateless=True)


LAYERS = {  # name -> (class, options)
    "LSTM": (LSTM, {"num_layers": 2, "bidirectional": True, "proj_size": 2}),
    "GRU": (GRU, {"num_layers": 2, "batch_first": True, "reset_after": False}),
    "RNN": (RNN, {"nonlinearity": "relu", "bidirectional": True}),
}
LT, LB, LI, LH = 4, 3, 5, 3


def make_layer(name: str, backend: str = "fused", dtype=np.float64, seed: int = 0):
    cls, options = LAYERS[name]
    return cls(LI, LH, **options, dtype=dtype, seed=seed, backend=backend)


def layer_inputs(layer, seed: int = 1):
    rng = np.random.default_rng(seed)
    x_shape = (LB, LT, LI) if layer.batch_first else (LT, LB, LI)
    x = rng.standard_normal(x_shape).astype(layer.dtype)
    h_shape, c_shape = layer._state_shapes(LB, False)[:2]
    h0 = rng.standard_normal(h_shape).astype(layer.dtype)
    hx = (h0, rng.standard_normal(c_shape).astype(layer.dtype)) if isinstance(layer, LSTM) else h0
    return x, hx


def with_grads(layer, result):
    return result, {k: v.copy() for k, v in layer.grads.items()}


def layer_forward_spec(name: str) -> Spec:
    def make():
        layer = make_layer(name)
        x, hx = layer_inputs(layer)
        return (lambda **kw: layer(**kw)), {"x": x, "hx": hx, "lengths": [LT, 1, 3]}

    time_axis = 1 if LAYERS[name][1].get("batch_first") else 0  # any T is another valid call
    args = [
        Arg(
            ("x",),
            word("x"),
            defining=frozenset({0, 1, 2}),
            free=frozenset({time_axis}),
            batched_twin=True,
        )
    ]
    if name == "LSTM":
        args += [Arg(("hx", 0), word("hx[0] (h)")), Arg(("hx", 1), word("hx[1] (c)"))]
    else:
        args.append(Arg(("hx",), word("hx"), optional=True))
    return Spec(f"{name}.forward", make, args)


def layer_backward_spec(name: str) -> Spec:
    def make():
        layer = make_layer(name)
        x, hx = layer_inputs(layer)
        output, h_n = layer(x, hx, lengths=[LT, 1, 3])
        rng = np.random.default_rng(5)
        d_output = rng.standard_normal(output.shape)
        d_hx = (
            tuple(rng.standard_normal(s.shape) for s in h_n)
            if isinstance(h_n, tuple)
            else rng.standard_normal(h_n.shape)
        )
        return (lambda **kw: with_grads(layer, layer.backward(**kw))), {
            "d_output": d_output,
            "d_hx": d_hx,
        }

    args = [Arg(("d_output",), word("d_output"), optional=True)]
    if name == "LSTM":
        args += [
            Arg(("d_hx", 0), word("d_hx[0] (h)"), optional=True),
            Arg(("d_hx", 1), word("d_hx[1] (c)"), optional=True),
        ]
    else:
        args.append(Arg(("d_hx",), word("d_hx"), optional=True))
    return Spec(f"{name}.backward", make, args)


CELLS = {"LSTMCell": LSTMCell, "GRUCell": GRUCell, "RNNCell": RNNCell}


def cell_state(cls, rng, dtype=np.float64):
    parts = [
        rng.standard_normal((LB, LH)).astype(dtype) for _ in range(2 if cls is LSTMCell else 1)
    ]
    return tuple(parts) if cls is LSTMCell else parts[0]


def cell_forward_spec(name: str) -> Spec:
    cls = CELLS[name]

    def make():
        cell = cls(LI, LH, dtype=np.float64, seed=0)
        rng = np.random.default_rng(1)
        return (lambda **kw: cell(**kw)), {
            "x": rng.standard_normal((LB, LI)),
            "hx": cell_state(cls, rng),
        }

    args = [Arg(("x",), word("x"), defining=frozenset({0, 1}), batched_twin=True)]
    if cls is LSTMCell:
        args += [Arg(("hx", 0), word("hx[0] (h)")), Arg(("hx", 1), word("hx[1] (c)"))]
    else:
        args.append(Arg(("hx",), word("hx"), optional=True))
    return Spec(f"{name}.forward", make, args)


def cell_backward_spec(name: str) -> Spec:
    cls = CELLS[name]

    def make():
        cell = cls(LI, LH, dtype=np.float64, seed=0)
        rng = np.random.default_rng(1)
        cell(rng.standard_normal((LB, LI)), cell_state(cls, rng))
        kwargs = {"dh": rng.standard_normal((LB, LH))}
        if cls is LSTMCell:
            kwargs["dc"] = rng.standard_normal((LB, LH))
        return (lambda **kw: with_grads(cell, cell.backward(**kw))), kwargs

    args = [Arg(("dh",), word("dh"), optional=True)]
    if cls is LSTMCell:
        args.append(Arg(("dc",), word("dc"), optional=True))
    return Spec(f"{name}.backward", make, args)


# ---------------------------------------------------------------- attention

AN, AH, AL, AS, AE, AEv = 2, 2, 5, 7, 4, 3
BROADCAST_BATCH = frozenset({"extra_axis", "missing_axis"})  # another valid batch shape


def anywhere(name: str) -> str:
    """An error naming ``name`` anywhere (attention's messages name the pair that disagrees)."""
    return r".*(?<![\w'])" + re.escape(name) + r"(?![\w])"


def attention_inputs(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((AN, AH, AL, AE)).astype(dtype)
    k = rng.standard_normal((AN, AH, AS, AE)).astype(dtype)
    v = rng.standard_normal((AN, AH, AS, AEv)).astype(dtype)
    mask = rng.random((AN, AH, AL, AS)) > 0.3
    return {"q": q, "k": k, "v": v, "attn_mask": mask}


def attention_qkv_args() -> list:
    # L (q's axis 2) and S (k's) are read off q and k, and the mask (N, H, L, S) must fit them;
    # one axis fewer on q, k or v, or a 0-d mask, broadcasts: a valid call.
    return [
        Arg(
            ("q",),
            anywhere("q"),
            defining=frozenset({2}),
            dtype_defining=True,
            free_kinds=BROADCAST_BATCH,
        ),
        Arg(("k",), anywhere("k"), defining=frozenset({2}), free_kinds=BROADCAST_BATCH),
        Arg(("v",), anywhere("v"), free=frozenset({3}), free_kinds=BROADCAST_BATCH),
        Arg(
            ("attn_mask",),
            anywhere("attn_mask"),
            optional=True,
            free_kinds=frozenset({"bool", "missing_axis", "zero_dim"}),
        ),
    ]


def attention_forward_spec() -> Spec:
    def make():
        return (lambda **kw: functional.attention_forward(**kw, is_causal=True)), attention_inputs()

    return Spec("attention_forward", make, attention_qkv_args(), stateless=True)


def attention_backward_spec() -> Spec:
    def make():
        kwargs = attention_inputs()
        out, lse = functional.attention_forward(**kwargs, is_causal=True)
        d_out = np.random.default_rng(3).standard_normal(out.shape)
        return (
            (lambda **kw: functional.attention_backward(**kw, is_causal=True)),
            {**kwargs, "out": out, "lse": lse, "d_out": d_out},
        )

    args = attention_qkv_args()
    for arg in args:  # out, lse and d_out pin Ev and the batch shape: no extra axis, any Ev
        arg.free = frozenset()
        arg.defining = arg.defining | ({3} if arg.path == ("v",) else set())
        arg.free_kinds = arg.free_kinds - {"extra_axis"}
    args += [Arg((name,), anywhere(name)) for name in ("out", "lse", "d_out")]
    return Spec("attention_backward", make, args, stateless=True)


def additive_inputs(seed=0, dtype=np.float64, sizes=(2, 3, 5, 4, 3, 2, 6)):
    """Additive attention's arguments; sizes = (B, T, S, Dq, Dk, Dv, A)."""
    rng = np.random.default_rng(seed)
    B, T, S, Dq, Dk, Dv, A = sizes
    return {
        "query": rng.standard_normal((B, T, Dq)).astype(dtype),
        "keys": rng.standard_normal((B, S, Dk)).astype(dtype),
        "values": rng.standard_normal((B, S, Dv)).astype(dtype),
        "w_q": rng.standard_normal((A, Dq)).astype(dtype),
        "w_k": rng.standard_normal((A, Dk)).astype(dtype),
        "w_v": rng.standard_normal(A).astype(dtype),
        "key_mask": rng.random((B, S)) > 0.3,
    }


def additive_args_list(backward: bool) -> list:
    args = [
        Arg(
            ("query",),
            anywhere("query"),
            defining=frozenset({0, 2}),
            free=frozenset() if backward else frozenset({1}),
            dtype_defining=True,
        ),
        Arg(("keys",), anywhere("keys"), defining=frozenset({0, 1, 2})),
        Arg(("values",), anywhere("values"), free=frozenset() if backward else frozenset({2})),
        Arg(("w_q",), anywhere("w_q")),
        Arg(("w_k",), anywhere("w_k")),
        Arg(("w_v",), anywhere("w_v"), defining=frozenset({0})),
        Arg(("key_mask",), anywhere("key_mask"), optional=True, free_kinds=frozenset({"bool"})),
    ]
    return args


def additive_forward_spec() -> Spec:
    return Spec(
        "additive_attention_forward",
        lambda: (functional.additive_attention_forward, additive_inputs()),
        additive_args_list(False),
        stateless=True,
    )


def additive_backward_spec() -> Spec:
    def make():
        kwargs = additive_inputs()
        context, weights, qp, kp = functional.additive_attention_forward(**kwargs)
        grads = {
            "w_q": np.zeros_like(kwargs["w_q"]),
            "w_k": np.zeros_like(kwargs["w_k"]),
            "w_v": np.zeros_like(kwargs["w_v"]),
        }
        return functional.additive_attention_backward, {
            **kwargs,
            "weights": weights,
            "qp": qp,
            "kp": kp,
            "d_context": np.random.default_rng(4).standard_normal(context.shape),
            "grads": grads,
        }

    args = additive_args_list(True)
    for arg in args:  # the saved weights, qp, kp and d_context pin T and value_size too
        if arg.path in (("query",), ("values",)):
            arg.defining = arg.defining | {1 if arg.path == ("query",) else 2}
    args += [Arg((name,), anywhere(name)) for name in ("weights", "qp", "kp", "d_context")]
    args += [
        Arg(("grads", name), anywhere(f"grads['{name}']"), accumulator=True)
        for name in ("w_q", "w_k", "w_v")
    ]
    return Spec("additive_attention_backward", make, args, stateless=True)


ALL_AXES = frozenset({0, 1, 2, "ndim"})


def multihead_forward_spec() -> Spec:
    from fusedrnn import MultiheadAttention

    def make():
        layer = MultiheadAttention(8, 2, kdim=5, vdim=3, dtype=np.float64, seed=0)
        rng = np.random.default_rng(1)
        kwargs = {
            "query": rng.standard_normal((4, 2, 8)),
            "key": rng.standard_normal((6, 2, 5)),
            "value": rng.standard_normal((6, 2, 3)),
            "key_padding_mask": rng.random((2, 6)) > 0.7,
            "attn_mask": rng.standard_normal((4, 6)),
        }
        return (lambda **kw: layer(**kw, need_weights=True)), kwargs

    args = [
        Arg(
            (name,),
            anywhere(name),
            defining=ALL_AXES,
            free=frozenset({0}) if name == "query" else frozenset(),
        )
        for name in ("query", "key", "value")
    ]
    args += [
        Arg(
            ("key_padding_mask",),
            anywhere("key_padding_mask"),
            optional=True,
            free_kinds=frozenset({"bool"}),
        ),
        Arg(("attn_mask",), anywhere("attn_mask"), optional=True, free_kinds=frozenset({"bool"})),
    ]
    return Spec("MultiheadAttention.forward", make, args, exact=False)


def multihead_backward_spec() -> Spec:
    from fusedrnn import MultiheadAttention

    def make():
        layer = MultiheadAttention(8, 2, kdim=5, vdim=3, dtype=np.float64, seed=0)
        rng = np.random.default_rng(1)
        output, _ = layer(
            rng.standard_normal((4, 2, 8)),
            rng.standard_normal((6, 2, 5)),
            rng.standard_normal((6, 2, 3)),
            is_causal=True,
        )
        return (
            (lambda **kw: with_grads(layer, layer.backward(**kw))),
            {"d_output": rng.standard_normal(output.shape)},
        )

    return Spec(
        "MultiheadAttention.backward",
        make,
        [Arg(("d_output",), anywhere("d_output"), defining=ALL_AXES)],
        exact=False,
    )


def additive_layer_forward_spec() -> Spec:
    from fusedrnn import AdditiveAttention

    def make():
        layer = AdditiveAttention(4, 3, 6, dtype=np.float64, seed=0)
        rng = np.random.default_rng(1)
        return layer, {
            "query": rng.standard_normal((2, 3, 4)),
            "keys": rng.standard_normal((2, 5, 3)),
            "values": rng.standard_normal((2, 5, 2)),
            "key_padding_mask": rng.random((2, 5)) > 0.7,
        }

    args = [
        Arg(
            ("query",),
            anywhere("query"),
            defining=ALL_AXES,
            free=frozenset({1}),
            free_kinds=frozenset({"missing_axis"}),
        ),  # (B, query_size): one step per item
        Arg(("keys",), anywhere("keys"), defining=ALL_AXES),
        Arg(("values",), anywhere("values"), defining=ALL_AXES, free=frozenset({2}), optional=True),
        Arg(("key_padding_mask",), anywhere("key_padding_mask"), optional=True),
    ]
    return Spec("AdditiveAttention.forward", make, args, exact=False)


def additive_layer_backward_spec() -> Spec:
    from fusedrnn import AdditiveAttention

    def make():
        layer = AdditiveAttention(4, 3, 6, dtype=np.float64, seed=0)
        rng = np.random.default_rng(1)
        context, _ = layer(
            rng.standard_normal((2, 3, 4)),
            rng.standard_normal((2, 5, 3)),
            rng.standard_normal((2, 5, 2)),
        )
        return (
            (lambda **kw: with_grads(layer, layer.backward(**kw))),
            {"d_context": rng.standard_normal(context.shape)},
        )

    return Spec(
        "AdditiveAttention.backward",
        make,
        [Arg(("d_context",), anywhere("d_context"), defining=ALL_AXES)],
        exact=False,
    )


def sdpa_module_spec() -> Spec:
    from fusedrnn import ScaledDotProductAttention

    def make():
        module = ScaledDotProductAttention()
        return (lambda **kw: module(**kw, seed=1)), attention_inputs()

    return Spec("ScaledDotProductAttention.forward", make, attention_qkv_args())


def sdpa_function_spec() -> Spec:
    import fusedrnn

    def make():
        return (
            lambda **kw: fusedrnn.scaled_dot_product_attention(**kw, is_causal=True, seed=1),
            attention_inputs(),
        )

    return Spec("scaled_dot_product_attention", make, attention_qkv_args(), stateless=True)


def attention_specs() -> list:
    return [
        sdpa_function_spec(),
        attention_forward_spec(),
        attention_backward_spec(),
        additive_forward_spec(),
        additive_backward_spec(),
        multihead_forward_spec(),
        multihead_backward_spec(),
        additive_layer_forward_spec(),
        additive_layer_backward_spec(),
        sdpa_module_spec(),
    ]


def all_specs() -> list:
    specs = []
    for cell in SINGLE_CASES:
        specs += [single_forward_spec(cell), single_backward_spec(cell)]
    for key in STACKS:
        specs += [stack_forward_spec(key), stack_backward_spec(key)]
    for name in LAYERS:
        specs += [layer_forward_spec(name), layer_backward_spec(name)]
    for name in CELLS:
        specs += [cell_forward_spec(name), cell_backward_spec(name)]
    return specs + attention_specs()


# ---------------------------------------------------------------- spoiling one array


def unaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` whose data start one byte past an aligned address."""
    buffer = np.zeros(a.nbytes + a.itemsize + 1, np.uint8)
    start = (1 - buffer.ctypes.data) % a.itemsize  # data at 1 past a multiple of itemsize
    out = buffer[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned or a.itemsize == 1
    return out


def strided(a: np.ndarray) -> np.ndarray:
    """A view of a copy of ``a`` that takes every other element of its last axis."""
    if a.ndim == 0:
        return a.copy()
    wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


def reversed_view(a: np.ndarray) -> np.ndarray:
    """A view with negative strides along every axis, holding the values of ``a``."""
    index = (slice(None, None, -1),) * a.ndim
    return a[index].copy()[index]


def read_only(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out.flags.writeable = False
    return out


# name -> how to make a view or copy that holds the same values in an unusual layout
LAYOUTS = {
    "read_only": read_only,
    "strided": strided,
    "negative_strides": reversed_view,
    "fortran_order": np.asfortranarray,
    "unaligned": unaligned,
}

OTHER_FLOAT = {np.dtype(np.float64): np.float32, np.dtype(np.float32): np.float64}
# name -> the spoiled value; all must be TypeErrors naming the argument
BAD_TYPES = {
    "list": lambda a: a.tolist(),
    "python_float": lambda a: 1.0,
    "int32": lambda a: a.astype(np.int32),
    "int64": lambda a: a.astype(np.int64),
    "bool": lambda a: a.astype(bool),
    "complex128": lambda a: a.astype(np.complex128),
    "object": lambda a: a.astype(object),
    "float16": lambda a: a.astype(np.float16),
    "other_float": lambda a: a.astype(OTHER_FLOAT.get(a.dtype, np.float32)),
    "byteswapped": lambda a: a.astype(a.dtype.newbyteorder()),
    "structured": lambda a: np.zeros(a.shape, [("v", a.dtype)]),
    "string": lambda a: "array",
}


def bad_shapes(a: np.ndarray) -> dict:
    """name -> (the spoiled value, the axis whose size changed or None) for wrong shapes."""
    out = {"extra_axis": (a[None], "ndim"), "zero_dim": (np.array(a.flat[0]), "ndim")}
    if a.ndim > 1:
        out["missing_axis"] = (a[0], "ndim")
    for axis in range(a.ndim):
        out[f"axis{axis}+1"] = (np.concatenate([a, np.take(a, [0], axis=axis)], axis=axis), axis)
        if a.shape[axis]:
            out[f"axis{axis}=0"] = (np.take(a, [], axis=axis), axis)
    return out


def arrays_in(obj, prefix="") -> list:
    """Every ndarray inside ``obj`` (dicts, tuples, lists, dataclasses of arrays) with a name."""
    if isinstance(obj, np.ndarray):
        return [(prefix, obj)]
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in arrays_in(v, f"{prefix}[{k!r}]")]
    if isinstance(obj, (tuple, list)):
        return [item for i, v in enumerate(obj) for item in arrays_in(v, f"{prefix}[{i}]")]
    return []


def snapshot(kwargs: dict, skip_accumulators: bool = False) -> list:
    """(name, the array, a copy of it) for every array argument (``grads`` left out when the call
    may add into them)."""
    items = arrays_in({k: v for k, v in kwargs.items() if not (skip_accumulators and k == "grads")})
    return [(name, a, a.copy()) for name, a in items]


def unchanged(snap: list) -> list:
    """The names of snapshot arrays whose contents changed."""
    return [
        name
        for name, a, before in snap
        if a.shape != before.shape or not np.array_equal(a, before, equal_nan=a.dtype.kind in "fc")
    ]


def results_equal(got, want, exact: bool = True) -> list:
    """Names of results that differ (bit for bit, NaN equal to NaN; or, not ``exact``, beyond
    float64 rounding)."""
    got_items, want_items = arrays_in(got), arrays_in(want)
    if [n for n, _ in got_items] != [n for n, _ in want_items]:
        return ["<structure>"]

    def same(g, w):
        if exact or g.dtype.kind != "f":
            return np.array_equal(g, w, equal_nan=True)
        return np.allclose(g, w, rtol=1e-12, atol=1e-12, equal_nan=True)

    return [
        n
        for (n, g), (_, w) in zip(got_items, want_items)
        if g.dtype != w.dtype or g.shape != w.shape or not same(g, w)
    ]
