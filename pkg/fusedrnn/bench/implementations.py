"""The three implementations of a case's pass, on the same inputs, and how results are compared.

`make_inputs` draws the inputs of a case; `numpy_pass` runs a pass through ``fusedrnn.functional``
(the fused kernels) or ``fusedrnn.reference`` (NumPy), which share their signatures; `torch_pass`
runs the same pass through PyTorch with the same weights. Every call includes the conversions a
user pays for. `compare` checks one implementation's outputs against the reference's
(`truth_pass` says which reference pass is the truth of a pass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import ModuleType

import numpy as np

from .. import functional
from .._spec import CELL_PARAMETERS, GATES, layer_suffix
from . import layer_norm
from .cases import TRAINING_PASSES, Case

Outputs = dict[str, np.ndarray]
"""Named results of one pass: ``y``, ``h_n``, ``c_n``, and after a backward ``dx``, ``dh0``,
``dc0``, ``dweight_ih``, ``dweight_hh``, ``dbias_ih``, ``dbias_hh`` (LSTM alone has the ``c``);
for attention ``out``, and after a backward ``dq``, ``dk``, ``dv``."""


# ---------------------------------------------------------------- inputs and the implementations


def make_inputs(case: Case, dtype: np.dtype | type = np.float32, seed: int = 0) -> Outputs:
    """Random inputs of a case by their contract names, plus the output gradients for backward.

    Weights and biases are uniform in ``+-1/sqrt(H)`` (PyTorch's initialisation), so long
    sequences neither saturate nor explode; ``x``, the initial states and the output gradients
    ``dy``, ``dh_n`` (and ``dc_n``) are standard normal.

    Parameters
    ----------
    case : Case
    dtype : float32 or float64
    seed : int

    Returns
    -------
    dict
        ``x (T, B, I)``, ``h0 (B, H)``, ``c0 (B, H)`` (LSTM), ``weight_ih (G*H, I)``,
        ``weight_hh (G*H, H)``, ``bias_ih``, ``bias_hh (G*H,)``, ``dy (T, B, H)``,
        ``dh_n (B, H)``, ``dc_n (B, H)`` (LSTM), all C-contiguous of ``dtype``.
    """
    rng = np.random.default_rng(seed)
    T, B, I, H = case.T, case.B, case.I, case.H
    if case.variant.cell in layer_norm.CELLS:
        return layer_norm.make_inputs(case, dtype, rng)
    if case.variant.options.get("decode"):
        # the last position's query, and a KVCache's buffers holding T keys of T + 64
        arrays = {
            "q": rng.standard_normal((B, H, 1, I)),
            "k": rng.standard_normal((B, H, T + 64, I)),
            "v": rng.standard_normal((B, H, T + 64, I)),
        }
        return {name: a.astype(dtype) for name, a in arrays.items()}
    if case.variant.cell == "attention":  # q, k, v and the output gradient, (B, heads, L, E)
        return {
            name: rng.standard_normal((B, H, T, I)).astype(dtype)
            for name in ("q", "k", "v", "d_out")
        }
    GH = GATES[case.variant.cell] * H
    bound = 1 / np.sqrt(H)
    if case.variant.is_stack:
        return _stack_inputs(case, rng, dtype)
    arrays = {
        "x": rng.standard_normal((T, B, I)),
        **{name: rng.standard_normal((B, H)) for name in case.variant.states},
        "weight_ih": rng.uniform(-bound, bound, (GH, I)),
        "weight_hh": rng.uniform(-bound, bound, (GH, H)),
        "bias_ih": rng.uniform(-bound, bound, GH),
        "bias_hh": rng.uniform(-bound, bound, GH),
        "dy": rng.standard_normal((T, B, H)),
        **{"d" + name: rng.standard_normal((B, H)) for name in case.variant.finals},
    }
    return {name: a.astype(dtype) for name, a in arrays.items()}


def _stack_inputs(case: Case, rng: np.random.Generator, dtype: np.dtype | type) -> Outputs:
    """`make_inputs` of a stack: the parameters by PyTorch's names (``weight_ih_l0``, ...,
    ``_reverse``), states (L*D, B, H), ``dy`` (T, B, D*H), and for a ragged batch ``lengths``:
    spread evenly from T down to T/4, in shuffled order (int64, cast to float never)."""
    v = case.variant
    T, B, I, H, D = case.T, case.B, case.I, case.H, v.directions
    GH = GATES[v.cell] * H
    bound = 1 / np.sqrt(H)
    arrays = {"x": rng.standard_normal((T, B, I))}
    for name in functional.stack_param_names(v.cell, v.layers, v.bidirectional):
        layer = int(name.split("_l")[1].split("_")[0])
        shape = {"weight_ih": (GH, I if layer == 0 else D * H), "weight_hh": (GH, H)}.get(
            name.split("_l")[0], (GH,)
        )
        arrays[name] = rng.uniform(-bound, bound, shape)
    arrays.update({n: rng.standard_normal((v.layers * D, B, H)) for n in v.states})
    arrays["dy"] = rng.standard_normal((T, B, D * H))
    arrays.update({"d" + n: rng.standard_normal((v.layers * D, B, H)) for n in v.finals})
    out = {name: a.astype(dtype) for name, a in arrays.items()}
    if v.ragged:
        out["lengths"] = rng.permutation(np.linspace(T, max(1, T // 4), B).astype(np.int64))
    return out


def _stack_params(case: Case, inputs: Outputs) -> dict[str, np.ndarray]:
    v = case.variant
    return {n: inputs[n] for n in functional.stack_param_names(v.cell, v.layers, v.bidirectional)}


def _stack_pass(
    module: ModuleType, case: Case, inputs: Outputs, pass_name: str
) -> Callable[[], Outputs]:
    """`numpy_pass` of a stack: ``stack_forward`` (and ``stack_backward``) of ``module``."""
    v = case.variant
    params = _stack_params(case, inputs)
    hx = tuple(inputs[n] for n in v.states) if v.cell == "lstm" else inputs["h0"]
    kw = dict(bidirectional=v.bidirectional, lengths=inputs.get("lengths"), **dict(v.options))
    out_grads = {name: inputs[name] for name in ("dy", *("d" + n for n in v.finals))}

    def run() -> Outputs:
        y, h_n, c_n, saved = module.stack_forward(
            v.cell, inputs["x"], hx, params, v.layers, training=pass_name in TRAINING_PASSES, **kw
        )
        outputs = {"y": y, **dict(zip(v.finals, (h_n, c_n)))}
        if pass_name == "forward+backward":
            dx, dh0, dc0, grads = module.stack_backward(
                v.cell, inputs["x"], hx, params, v.layers, y, saved, **out_grads, **kw
            )
            outputs.update({"dx": dx, **dict(zip(("dh0", "dc0")[: len(v.states)], (dh0, dc0)))})
            outputs.update({"d" + n: g for n, g in grads.items()})
        return outputs

    return run


def numpy_pass(
    module: ModuleType, case: Case, inputs: Outputs, pass_name: str
) -> Callable[[], Outputs]:
    """A call of one pass through ``fusedrnn.functional`` or ``fusedrnn.reference``.

    Both modules have the same signatures (docs/kernels.md), so one function serves both. The
    cell's functions are looked up at each call, so a test can replace one.

    Parameters
    ----------
    module : fusedrnn.functional or fusedrnn.reference
    case : Case
    inputs : dict
        From `make_inputs`.
    pass_name : {"forward", "forward+backward", "inference"}

    Returns
    -------
    callable
        Takes no arguments, runs the pass, returns its `Outputs`.
    """
    variant = case.variant
    cell, options = variant.cell, dict(variant.options)
    if cell == "attention":
        if options.pop("decode", False):  # the cache's call: its T keys read in place
            options.update(is_causal=True, key_lengths=np.full(case.B, case.T))
            options["causal_alignment"] = "bottom_right"
        return _attention_pass(module, inputs, pass_name, options)
    if cell in layer_norm.CELLS:
        return layer_norm.numpy_pass(module, case, inputs, pass_name)
    if variant.is_stack:
        return _stack_pass(module, case, inputs, pass_name)
    states = [inputs[name] for name in variant.states]
    out_grads = {name: inputs[name] for name in ("dy", *("d" + n for n in variant.finals))}
    x, w_ih, w_hh = inputs["x"], inputs["weight_ih"], inputs["weight_hh"]

    def run() -> Outputs:
        forward = getattr(module, f"{cell}_forward")
        y, *finals, workspace = forward(
            x,
            *states,
            w_ih,
            w_hh,
            inputs["bias_ih"],
            inputs["bias_hh"],
            **options,
            training=pass_name in TRAINING_PASSES,
        )
        outputs = {"y": y, **dict(zip(variant.finals, finals))}
        if pass_name == "forward+backward":
            backward = getattr(module, f"{cell}_backward")
            dx, *dstates, grads = backward(
                x, *states, w_ih, w_hh, y, workspace, **out_grads, **options
            )
            outputs.update({"dx": dx, **{"d" + n: d for n, d in zip(variant.states, dstates)}})
            outputs.update({"d" + n: grads[n] for n in CELL_PARAMETERS})
        return outputs

    return run


def _attention_pass(
    module: ModuleType, inputs: Outputs, pass_name: str, options: dict
) -> Callable[[], Outputs]:
    """`numpy_pass` of attention: ``attention_forward`` (and ``attention_backward``)."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]

    def run() -> Outputs:
        out, lse = module.attention_forward(q, k, v, **options)
        outputs = {"out": out}
        if pass_name == "forward+backward":
            dq, dk, dv = module.attention_backward(q, k, v, out, lse, inputs["d_out"], **options)
            outputs.update({"dq": dq, "dk": dk, "dv": dv})
        return outputs

    return run


def import_torch() -> ModuleType | None:
    """PyTorch if it can be imported, else None (it is never required)."""
    try:
        import torch
    except (ImportError, OSError):
        return None
    return torch


def torch_pass(
    torch: ModuleType, case: Case, inputs: Outputs, pass_name: str
) -> Callable[[], Outputs]:
    """The same pass through ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` with the same weights.

    The module is built here, outside the timing, with the weights copied in. The returned call
    converts the inputs with ``torch.from_numpy`` (zero-copy), runs the pass and converts the
    results back with ``.numpy()``; a backward is ``torch.autograd.backward(outputs, grads)`` with
    the case's ``dy``, ``dh_n`` (``dc_n``), after the parameter gradients are set to None. The
    inference pass runs under ``torch.inference_mode()``.

    Parameters
    ----------
    torch : module
        The imported ``torch``.
    case : Case
        Its variant must have ``in_torch``.
    inputs : dict
        From `make_inputs`.
    pass_name : {"forward", "forward+backward", "inference"}

    Returns
    -------
    callable
        Takes no arguments, runs the pass, returns its `Outputs`.
    """
    variant = case.variant
    if variant.cell == "attention":
        return _torch_attention_pass(torch, case, inputs, pass_name)
    if variant.cell in layer_norm.CELLS:
        return layer_norm.torch_pass(torch, case, inputs, pass_name)
    if variant.is_stack:
        return _torch_stack_pass(torch, case, inputs, pass_name)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[variant.cell]
    kwargs = {"nonlinearity": variant.options["nonlinearity"]} if variant.cell == "rnn" else {}
    module = cls(case.I, case.H, **kwargs).to(torch.from_numpy(inputs["x"]).dtype)
    with torch.no_grad():
        for name in CELL_PARAMETERS:
            getattr(module, f"{name}{layer_suffix(0, 0)}").copy_(torch.from_numpy(inputs[name]))
    params = [getattr(module, f"{name}{layer_suffix(0, 0)}") for name in CELL_PARAMETERS]
    lstm = variant.cell == "lstm"  # LSTM's state is a tuple (h, c), the others' a tensor
    training = pass_name in TRAINING_PASSES

    def run() -> Outputs:
        # (B, H) states are (layers=1, B, H) in PyTorch: a view, no copy.
        x = torch.from_numpy(inputs["x"])
        states = [torch.from_numpy(inputs[n][None]) for n in variant.states]
        if pass_name == "forward+backward":
            for tensor in (x, *states):
                tensor.requires_grad_(True)
            for p in params:
                p.grad = None
        context = contextlib.nullcontext() if training else torch.inference_mode()
        with context:
            y, finals = module(x, tuple(states) if lstm else states[0])
        finals = finals if lstm else (finals,)
        outputs = {
            "y": y.detach().numpy(),
            **{n: f[0].detach().numpy() for n, f in zip(variant.finals, finals)},
        }
        if pass_name == "forward+backward":
            grads = [torch.from_numpy(inputs["dy"])]
            grads += [torch.from_numpy(inputs["d" + n][None]) for n in variant.finals]
            torch.autograd.backward([y, *finals], grads)
            outputs["dx"] = x.grad.numpy()
            outputs.update({"d" + n: s.grad[0].numpy() for n, s in zip(variant.states, states)})
            outputs.update({"d" + n: p.grad.numpy() for n, p in zip(CELL_PARAMETERS, params)})
        return outputs

    return run


def _torch_stack_pass(
    torch: ModuleType, case: Case, inputs: Outputs, pass_name: str
) -> Callable[[], Outputs]:
    """`torch_pass` of a stack: ``torch.nn.LSTM(..., num_layers, bidirectional)`` with the same
    weights; a ragged batch goes through ``pack_padded_sequence(enforce_sorted=False)`` and back
    through ``pad_packed_sequence(total_length=T)``, both inside the timing."""
    v = case.variant
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[v.cell]
    module = cls(case.I, case.H, num_layers=v.layers, bidirectional=v.bidirectional)
    module = module.to(torch.from_numpy(inputs["x"]).dtype)
    module.load_state_dict({n: torch.from_numpy(a) for n, a in _stack_params(case, inputs).items()})
    params = dict(module.named_parameters())
    rnn_utils = torch.nn.utils.rnn
    lengths = inputs.get("lengths")
    training = pass_name in TRAINING_PASSES

    def run() -> Outputs:
        x = torch.from_numpy(inputs["x"])
        states = [torch.from_numpy(inputs[n]) for n in v.states]
        if pass_name == "forward+backward":
            for tensor in (x, *states):
                tensor.requires_grad_(True)
            for p in params.values():
                p.grad = None
        context = contextlib.nullcontext() if training else torch.inference_mode()
        with context:
            packed = (
                x
                if lengths is None
                else rnn_utils.pack_padded_sequence(
                    x, torch.from_numpy(lengths), enforce_sorted=False
                )
            )
            y, finals = module(packed, tuple(states) if v.cell == "lstm" else states[0])
            if lengths is not None:
                y = rnn_utils.pad_packed_sequence(y, total_length=case.T)[0]
        finals = finals if v.cell == "lstm" else (finals,)
        outputs = {
            "y": y.detach().numpy(),
            **{n: f.detach().numpy() for n, f in zip(v.finals, finals)},
        }
        if pass_name == "forward+backward":
            grads = [torch.from_numpy(inputs[n]) for n in ("dy", *("d" + f for f in v.finals))]
            torch.autograd.backward([y, *finals], grads)
            outputs["dx"] = x.grad.numpy()
            outputs.update({"d" + n: t.grad.numpy() for n, t in zip(v.states, states)})
            outputs.update({"d" + n: p.grad.numpy() for n, p in params.items()})
        return outputs

    return run


def _torch_attention_pass(
    torch: ModuleType, case: Case, inputs: Outputs, pass_name: str
) -> Callable[[], Outputs]:
    """`torch_pass` of attention: ``torch.nn.functional.scaled_dot_product_attention`` on
    ``torch.from_numpy`` views, the gradients by ``out.backward(d_out)``. A window is a boolean
    mask there; a decoding step reads the cache's first T keys (a view) without a mask."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    options = case.variant.options
    decode = bool(options.get("decode"))
    arguments = {"is_causal": bool(options.get("is_causal"))}
    if options.get("window"):
        i = np.arange(case.T)[:, None]
        j = np.arange(case.T)[None, :]
        visible = (j <= i) & (i - j < options["window"])
        arguments = {"attn_mask": torch.from_numpy(visible)}

    def run() -> Outputs:
        q, k, v = (torch.from_numpy(inputs[name]) for name in ("q", "k", "v"))
        if decode:
            k, v = k[:, :, : case.T], v[:, :, : case.T]
        if pass_name != "forward+backward":
            with torch.no_grad():
                return {"out": sdpa(q, k, v, **arguments).numpy()}
        for tensor in (q, k, v):
            tensor.requires_grad_(True)
        out = sdpa(q, k, v, **arguments)
        out.backward(torch.from_numpy(inputs["d_out"]))
        return {
            "out": out.detach().numpy(),
            "dq": q.grad.numpy(),
            "dk": k.grad.numpy(),
            "dv": v.grad.numpy(),
        }

    return run


# ---------------------------------------------------------------- validation and timing


def truth_pass(pass_name: str) -> str:
    """The reference pass whose outputs a fused ``pass_name`` is checked against.

    A training pass is checked against the reference's forward+backward (its outputs include the
    forward's, so one reference run serves both training passes); inference against inference.
    """
    return "inference" if pass_name == "inference" else "forward+backward"


TOLERANCES = {np.dtype(np.float32): (1e-3, 1e-4), np.dtype(np.float64): (1e-9, 1e-9)}
"""dtype -> (rtol, atol relative to the largest magnitude of the expected array)."""


def compare(got: Outputs, expected: Outputs, dtype: np.dtype | type) -> list[str]:
    """The outputs of ``got`` that do not match ``expected``, each described in one line.

    An array matches when ``|got - expected| <= atol + rtol * |expected|`` everywhere, with
    ``rtol`` and ``atol = atol_rel * max|expected|`` from `TOLERANCES`: scaling atol by the
    array's magnitude lets long sequences and large batches, whose weight gradients are sums of
    many terms, be judged by the same rule as short ones.

    Parameters
    ----------
    got : dict
        Outputs of the implementation under test; each key must be in ``expected``.
    expected : dict
        The reference's outputs.
    dtype : float32 or float64

    Returns
    -------
    list of str
        Empty when everything matches.
    """
    rtol, atol_rel = TOLERANCES[np.dtype(dtype)]
    problems = []
    for name, value in got.items():
        want = expected[name]
        if value.shape != want.shape:
            problems.append(f"{name}: shape {value.shape}, expected {want.shape}")
            continue
        atol = atol_rel * float(np.max(np.abs(want), initial=0.0))
        if not np.allclose(value, want, rtol=rtol, atol=atol):
            error = float(np.max(np.abs(value.astype(np.float64) - want)))
            problems.append(f"{name}: max |error| {error:.3g} (atol {atol:.3g}, rtol {rtol:g})")
    return problems
