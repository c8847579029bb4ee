"""The benchmark sweep behind ``python -m fusedrnn bench``.

Every case is first validated: the fused kernels (``fusedrnn.functional``), the NumPy reference
(``fusedrnn.reference``) and, when it can be imported, PyTorch run the same pass on the same random
inputs, and the fused outputs and gradients must match the reference's. Only then is each of them
timed: the median of several calls after a warm-up call, each call including every conversion a
user pays for (for PyTorch, ``torch.from_numpy`` of the inputs and ``.numpy()`` of the results).

Times on a shared machine are noisy, so the table quotes ratios measured in the same run: the
fused speed-up over the reference and over PyTorch, and the fused GFLOP/s (from `flops`) as a
percentage of this machine's float32 GEMM ceiling (`gemm_ceiling`).

The same case list and inputs are used by the pytest-benchmark suite in ``benchmarks/``.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import glob
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations here are never evaluated

import numpy as np

from . import _config, _core, functional, reference

TRAINING_PASSES = ("forward", "forward+backward")
"""``forward``: a training forward (keeps the workspace); ``forward+backward``: that forward then
the backward with given output gradients."""
PASSES = (*TRAINING_PASSES, "inference")
"""The training passes and ``inference``: a forward with ``training=False``."""

Outputs = dict[str, np.ndarray]
"""Named results of one pass: ``y``, ``h_n``, ``c_n``, and after a backward ``dx``, ``dh0``,
``dc0``, ``dweight_ih``, ``dweight_hh``, ``dbias_ih``, ``dbias_hh`` (LSTM alone has the ``c``);
for attention ``out``, and after a backward ``dq``, ``dk``, ``dv``."""


# ---------------------------------------------------------------- what is measured


@dataclass(frozen=True)
class Variant:
    """A cell with its options, as the table names it.

    Attributes
    ----------
    name : str
        The name in the table and in ``--only`` (``lstm``, ``gru``, ``gru-cho``, ...).
    cell : {"lstm", "gru", "rnn", "attention"}
        The kernel family, as in ``functional.<cell>_forward``.
    options : mapping
        Keyword options of the forward and backward (``reset_after``, ``nonlinearity``,
        ``is_causal``).
    in_torch : bool
        Whether ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` computes the same function.
    layers, bidirectional, ragged : int, bool, bool
        A layer stack (``stack_forward`` / ``stack_backward``, the layers' path): its number of
        layers, whether both directions run, and whether the batch has variable lengths
        (PyTorch: packed sequences). The defaults are one plain layer.
    """

    name: str
    cell: str
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    in_torch: bool = True
    layers: int = 1
    bidirectional: bool = False
    ragged: bool = False

    @property
    def is_stack(self) -> bool:
        """Whether the variant runs as a layer stack rather than one cell function."""
        return self.layers > 1 or self.bidirectional or self.ragged

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def states(self) -> tuple[str, ...]:
        """The initial states by their contract names: ``h0, c0`` (LSTM) or ``h0``."""
        return _STATES[: 2 if self.cell == "lstm" else 1]

    @property
    def finals(self) -> tuple[str, ...]:
        """The final states, in the order of `states`: ``h_n, c_n`` (LSTM) or ``h_n``."""
        return _FINALS[: len(self.states)]


_STATES, _FINALS = ("h0", "c0"), ("h_n", "c_n")


VARIANTS = {
    v.name: v
    for v in (
        Variant("lstm", "lstm"),
        Variant("gru", "gru", MappingProxyType({"reset_after": True})),
        # Cho et al. 2014: r multiplies h before W_hn; PyTorch has no such GRU.
        Variant("gru-cho", "gru", MappingProxyType({"reset_after": False}), in_torch=False),
        Variant("rnn", "rnn", MappingProxyType({"nonlinearity": "tanh"})),
        Variant("rnn-relu", "rnn", MappingProxyType({"nonlinearity": "relu"})),
        # the layers' path: a stack in C++ (layers and directions), packed variable lengths
        Variant("lstm-2layer-bidir", "lstm", layers=2, bidirectional=True),
        Variant("lstm-lengths", "lstm", ragged=True),
        # scaled dot-product attention, self-attention shapes (S = L)
        Variant("attention", "attention", MappingProxyType({"is_causal": False})),
        Variant("attention-causal", "attention", MappingProxyType({"is_causal": True})),
    )
}


@dataclass(frozen=True)
class Case:
    """One shape of one variant: ``x`` is (T, B, I), the hidden size H.

    For attention the same four sizes are (B, L, E, heads): ``q``, ``k``, ``v`` are
    (B, H, T, I), T queries over as many keys, head size I, H heads (the table's columns read
    that way on attention rows).

    A training case runs the passes ``forward`` and ``forward+backward``; a recurrent case with
    B = 1 also runs ``inference`` (the latency of one sequence).
    """

    variant: Variant
    B: int
    T: int
    I: int
    H: int

    @property
    def passes(self) -> tuple[str, ...]:
        """The passes measured for this case, in table order."""
        if self.variant.cell == "attention":  # no separate inference pass
            return TRAINING_PASSES
        return PASSES if self.B == 1 else TRAINING_PASSES

    @property
    def label(self) -> str:
        """``lstm B=16 T=50 I=128 H=128``, for the progress bar and notes."""
        return shape_label(self.variant.name, self.B, self.T, self.I, self.H)

    def flops(self, pass_name: str) -> int:
        """The GEMM work of one pass of this case (the module's `flops` or `attention_flops`).

        A stack counts `flops` for every layer and direction (layer k > 0 reads D*H inputs); with
        variable lengths every item is counted at full length T (an upper bound).
        """
        v = self.variant
        if v.is_stack:
            return sum(v.directions * flops(v.cell, self.T, self.B, self.I if k == 0 else
                                            v.directions * self.H, self.H, pass_name)
                       for k in range(v.layers))
        if self.variant.cell == "attention":
            return attention_flops(self.B, self.H, self.T, self.I,
                                   bool(self.variant.options["is_causal"]), pass_name)
        return flops(self.variant.cell, self.T, self.B, self.I, self.H, pass_name)

    def workspace_bytes(self, dtype: np.dtype | type) -> int:
        """Bytes a training forward keeps for backward: the workspace, or for attention its
        output and one log-sum-exp per query row (never the attention weights)."""
        v = self.variant
        if v.cell == "attention":
            elements = self.B * self.H * self.T * (self.I + 1)
        elif v.is_stack:
            elements = _core.stack_saved_size(v.cell, self.T, self.B, self.I, self.H, 0, v.layers,
                                              v.bidirectional)
        else:
            elements = functional.workspace_size(self.variant.cell, self.T, self.B, self.H)
        return elements * np.dtype(dtype).itemsize


def shape_label(name: str, B: int, T: int, I: int, H: int) -> str:
    """``lstm B=16 T=50 I=128 H=128`` (attention: ``attention B=8 H=8 L=256 E=64``): how a case
    is named outside the table."""
    if name in VARIANTS and VARIANTS[name].cell == "attention":
        return f"{name} B={B} H={H} L={T} E={I}"
    return f"{name} B={B} T={T} I={I} H={H}"


def cases_for(variants: Sequence[str], shapes: Sequence[tuple[int, int, int, int]]) -> list[Case]:
    """Every variant at every shape ``(B, T, I, H)``, variant by variant."""
    return [Case(VARIANTS[name], *shape) for name in variants for shape in shapes]


def _square(shapes: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    """``(B, T, H)`` to ``(B, T, I, H)`` with I = H, as DeepBench and the default sweep have it."""
    return [(B, T, H, H) for B, T, H in shapes]


_DEFAULT_SHAPES = _square([(1, 100, 256), (16, 50, 128), (32, 100, 256), (64, 50, 512)])
_DEFAULT_VARIANTS = ("lstm", "gru", "gru-cho", "rnn")
# (B, heads, L, E) of the attention rows, as Case's (B, T=L, I=E, H=heads)
_ATTENTION_SHAPES = [(B, L, E, heads) for B, heads, L, E in ((8, 8, 256, 64), (4, 8, 1024, 64))]
_ATTENTION_VARIANTS = ("attention", "attention-causal")
# The layers' path: a 2-layer bidirectional stack and a variable-lengths batch (PyTorch: packed)
_STACK_SHAPES = _square([(16, 50, 128), (32, 100, 256)])
_STACK_VARIANTS = ("lstm-2layer-bidir", "lstm-lengths")


@dataclass(frozen=True)
class Sweep:
    """A named list of cases with its timing limits.

    Attributes
    ----------
    cases : tuple of Case
    repeats : int
        Timed calls per measurement, after one warm-up call.
    budget : float
        Seconds one measurement may spend: a slower implementation gets fewer timed calls
        (at least one). This keeps the reference's big cases from dominating the wall time.
    note : str
        What the sweep changed from its model (printed in the table header), or "".
    """

    name: str
    cases: tuple[Case, ...]
    repeats: int
    budget: float
    note: str = ""


SWEEPS = {
    "quick": Sweep("quick", tuple(cases_for(_DEFAULT_VARIANTS, _DEFAULT_SHAPES[:2])
                                  + cases_for(_STACK_VARIANTS, _STACK_SHAPES[:1])
                                  + cases_for(_ATTENTION_VARIANTS, _ATTENTION_SHAPES[:1])), 5, 0.5),
    "default": Sweep("default", tuple(cases_for(_DEFAULT_VARIANTS, _DEFAULT_SHAPES)
                                      + cases_for(_STACK_VARIANTS, _STACK_SHAPES)
                                      + cases_for(_ATTENTION_VARIANTS, _ATTENTION_SHAPES)), 7, 1.0),
    "full": Sweep(
        "full",
        tuple(
            cases_for(["lstm"], _square([(1, 25, 512)] + [(B, 25, H) for H in (512, 1024)
                                                          for B in (16, 32, 64)]))
            + cases_for(["lstm"], _square([(B, 150, 256) for B in (16, 32, 64)]))
            + cases_for(["gru"], _square([(1, 25, 512)] + [(32, T, H) for H in (512, 1024)
                                                          for T in (25, 75, 150)]))
            + cases_for(["rnn-relu"], _square([(1, 50, 1760), (16, 50, 1760), (32, 50, 1760)]))
            + cases_for(_ATTENTION_VARIANTS, _ATTENTION_SHAPES)
        ),
        5,
        2.0,
        note="DeepBench shapes with GRU T=25..150 (DeepBench goes to T=375; scaled down so the "
        "NumPy reference, validated on every case, fits in minutes); B=1 cases added for "
        "inference",
    ),
}


def flops(cell: str, T: int, B: int, I: int, H: int, pass_name: str) -> int:
    """Floating-point operations of one pass, counted as ``2*M*N*K`` per GEMM.

    With ``G`` gate blocks (4 for LSTM, 3 for GRU, 1 for RNN) the GEMMs are:

    * forward (``forward`` and ``inference``): the input projection of all steps,
      ``(T*B, I) x (I, G*H)``, and one recurrent GEMM per step, ``(B, H) x (H, G*H)``. GRU with
      reset_before splits the latter into ``(B, H) x (H, 2H)`` and ``(B, H) x (H, H)``: the same
      count.
    * backward adds, per step, the state gradient ``dh = dgates W_hh``, ``(B, G*H) x (G*H, H)``;
      after the loop ``dx = dgates W_ih``, ``(T*B, G*H) x (G*H, I)``, and the weight gradients
      ``dW_ih``, ``(G*H, T*B) x (T*B, I)``, and ``dW_hh``, ``(G*H, T*B) x (T*B, H)``.

    Elementwise work (bias, nonlinearities, state update, bias gradients) is ignored: it is
    O(T*B*G*H), a factor of H (or I) below the GEMMs.

    Parameters
    ----------
    cell : {"lstm", "gru", "rnn"}
    T, B, I, H : int
        Sequence length, batch, input size, hidden size.
    pass_name : {"forward", "forward+backward", "inference"}

    Returns
    -------
    int
    """
    G = reference._common.GATES[cell] * H
    input_projection = 2 * T * B * I * G
    recurrent = T * 2 * B * H * G
    forward = input_projection + recurrent
    if pass_name in ("forward", "inference"):
        return forward
    if pass_name != "forward+backward":
        raise ValueError(f"pass_name must be one of {PASSES}, got {pass_name!r}")
    dh = T * 2 * B * G * H
    dx = 2 * T * B * G * I
    dweight_ih = 2 * G * T * B * I
    dweight_hh = 2 * G * T * B * H
    return forward + dh + dx + dweight_ih + dweight_hh


def attention_flops(B: int, heads: int, L: int, E: int, causal: bool, pass_name: str) -> int:
    """Floating-point operations of one pass of self-attention, ``2*M*N*K`` per GEMM.

    Per head, forward is ``s = q k^T`` and ``out = p v``, each ``2*P*E`` for the ``P`` (query,
    key) pairs that are computed: ``L*L``, or ``L*(L+1)/2`` under the causal mask. Backward
    recomputes ``s`` and does ``dv = p^T do``, ``dp = do v^T``, ``dq = ds k``, ``dk = ds^T q``:
    five more of that size (the FlashAttention count, recomputation included). The softmax and
    the other elementwise work, O(P) per head, is ignored.
    """
    pairs = L * (L + 1) // 2 if causal else L * L
    gemm = 2 * B * heads * pairs * E
    if pass_name == "forward":
        return 2 * gemm
    if pass_name != "forward+backward":
        raise ValueError(f"pass_name must be one of {TRAINING_PASSES} for attention, got "
                         f"{pass_name!r}")
    return 7 * gemm


# ---------------------------------------------------------------- inputs and the three implementations


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
    if case.variant.cell == "attention":  # q, k, v and the output gradient, (B, heads, L, E)
        return {name: rng.standard_normal((B, H, T, I)).astype(dtype)
                for name in ("q", "k", "v", "d_out")}
    GH = reference._common.GATES[case.variant.cell] * H
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


_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _stack_inputs(case: Case, rng: np.random.Generator, dtype: np.dtype | type) -> Outputs:
    """`make_inputs` of a stack: the parameters by PyTorch's names (``weight_ih_l0``, ...,
    ``_reverse``), states (L*D, B, H), ``dy`` (T, B, D*H), and for a ragged batch ``lengths``:
    spread evenly from T down to T/4, in shuffled order (int64, cast to float never)."""
    v = case.variant
    T, B, I, H, D = case.T, case.B, case.I, case.H, v.directions
    GH = reference._common.GATES[v.cell] * H
    bound = 1 / np.sqrt(H)
    arrays = {"x": rng.standard_normal((T, B, I))}
    for name in functional.stack_param_names(v.cell, v.layers, v.bidirectional):
        layer = int(name.split("_l")[1].split("_")[0])
        shape = {"weight_ih": (GH, I if layer == 0 else D * H), "weight_hh": (GH, H)}.get(
            name.split("_l")[0], (GH,))
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


def _stack_pass(module: ModuleType, case: Case, inputs: Outputs,
                pass_name: str) -> Callable[[], Outputs]:
    """`numpy_pass` of a stack: ``stack_forward`` (and ``stack_backward``) of ``module``."""
    v = case.variant
    params = _stack_params(case, inputs)
    hx = tuple(inputs[n] for n in v.states) if v.cell == "lstm" else inputs["h0"]
    kw = dict(bidirectional=v.bidirectional, lengths=inputs.get("lengths"), **dict(v.options))
    out_grads = {name: inputs[name] for name in ("dy", *("d" + n for n in v.finals))}

    def run() -> Outputs:
        y, h_n, c_n, saved = module.stack_forward(v.cell, inputs["x"], hx, params, v.layers,
                                                  training=pass_name in TRAINING_PASSES, **kw)
        outputs = {"y": y, **dict(zip(v.finals, (h_n, c_n)))}
        if pass_name == "forward+backward":
            dx, dh0, dc0, grads = module.stack_backward(v.cell, inputs["x"], hx, params, v.layers,
                                                        y, saved, **out_grads, **kw)
            outputs.update({"dx": dx, **dict(zip(("dh0", "dc0")[: len(v.states)], (dh0, dc0)))})
            outputs.update({"d" + n: g for n, g in grads.items()})
        return outputs

    return run


def numpy_pass(module: ModuleType, case: Case, inputs: Outputs,
               pass_name: str) -> Callable[[], Outputs]:
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
        return _attention_pass(module, inputs, pass_name, options)
    if variant.is_stack:
        return _stack_pass(module, case, inputs, pass_name)
    states = [inputs[name] for name in variant.states]
    out_grads = {name: inputs[name] for name in ("dy", *("d" + n for n in variant.finals))}
    x, w_ih, w_hh = inputs["x"], inputs["weight_ih"], inputs["weight_hh"]

    def run() -> Outputs:
        forward = getattr(module, f"{cell}_forward")
        y, *finals, workspace = forward(x, *states, w_ih, w_hh, inputs["bias_ih"],
                                        inputs["bias_hh"], **options,
                                        training=pass_name in TRAINING_PASSES)
        outputs = {"y": y, **dict(zip(variant.finals, finals))}
        if pass_name == "forward+backward":
            backward = getattr(module, f"{cell}_backward")
            dx, *dstates, grads = backward(x, *states, w_ih, w_hh, y, workspace, **out_grads,
                                           **options)
            outputs.update({"dx": dx, **{"d" + n: d for n, d in zip(variant.states, dstates)}})
            outputs.update({"d" + n: grads[n] for n in _PARAMS})
        return outputs

    return run


def _attention_pass(module: ModuleType, inputs: Outputs, pass_name: str,
                    options: dict) -> Callable[[], Outputs]:
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


def torch_pass(torch: ModuleType, case: Case, inputs: Outputs,
               pass_name: str) -> Callable[[], Outputs]:
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
        return _torch_attention_pass(torch, inputs, pass_name, bool(variant.options["is_causal"]))
    if variant.is_stack:
        return _torch_stack_pass(torch, case, inputs, pass_name)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[variant.cell]
    kwargs = {"nonlinearity": variant.options["nonlinearity"]} if variant.cell == "rnn" else {}
    module = cls(case.I, case.H, **kwargs).to(torch.from_numpy(inputs["x"]).dtype)
    with torch.no_grad():
        for name in _PARAMS:
            getattr(module, f"{name}_l0").copy_(torch.from_numpy(inputs[name]))
    params = [getattr(module, f"{name}_l0") for name in _PARAMS]
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
        outputs = {"y": y.detach().numpy(),
                   **{n: f[0].detach().numpy() for n, f in zip(variant.finals, finals)}}
        if pass_name == "forward+backward":
            grads = [torch.from_numpy(inputs["dy"])]
            grads += [torch.from_numpy(inputs["d" + n][None]) for n in variant.finals]
            torch.autograd.backward([y, *finals], grads)
            outputs["dx"] = x.grad.numpy()
            outputs.update({"d" + n: s.grad[0].numpy() for n, s in zip(variant.states, states)})
            outputs.update({"d" + n: p.grad.numpy() for n, p in zip(_PARAMS, params)})
        return outputs

    return run


def _torch_stack_pass(torch: ModuleType, case: Case, inputs: Outputs,
                      pass_name: str) -> Callable[[], Outputs]:
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
            packed = x if lengths is None else rnn_utils.pack_padded_sequence(
                x, torch.from_numpy(lengths), enforce_sorted=False)
            y, finals = module(packed, tuple(states) if v.cell == "lstm" else states[0])
            if lengths is not None:
                y = rnn_utils.pad_packed_sequence(y, total_length=case.T)[0]
        finals = finals if v.cell == "lstm" else (finals,)
        outputs = {"y": y.detach().numpy(),
                   **{n: f.detach().numpy() for n, f in zip(v.finals, finals)}}
        if pass_name == "forward+backward":
            grads = [torch.from_numpy(inputs[n]) for n in ("dy", *("d" + f for f in v.finals))]
            torch.autograd.backward([y, *finals], grads)
            outputs["dx"] = x.grad.numpy()
            outputs.update({"d" + n: t.grad.numpy() for n, t in zip(v.states, states)})
            outputs.update({"d" + n: p.grad.numpy() for n, p in params.items()})
        return outputs

    return run


def _torch_attention_pass(torch: ModuleType, inputs: Outputs, pass_name: str,
                          causal: bool) -> Callable[[], Outputs]:
    """`torch_pass` of attention: ``torch.nn.functional.scaled_dot_product_attention`` on
    ``torch.from_numpy`` views, the gradients by ``out.backward(d_out)``."""
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run() -> Outputs:
        q, k, v = (torch.from_numpy(inputs[name]) for name in ("q", "k", "v"))
        if pass_name != "forward+backward":
            with torch.no_grad():
                return {"out": sdpa(q, k, v, is_causal=causal).numpy()}
        for tensor in (q, k, v):
            tensor.requires_grad_(True)
        out = sdpa(q, k, v, is_causal=causal)
        out.backward(torch.from_numpy(inputs["d_out"]))
        return {"out": out.detach().numpy(), "dq": q.grad.numpy(), "dk": k.grad.numpy(),
                "dv": v.grad.numpy()}

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


GEMM_SIZE = 2048
"""Side of the square float32 GEMM that measures the ceiling."""

MIN_TIMED_SHARE = 0.1
"""The named sweeps time each measurement's calls for at least this share of their budget in
all (0.1 s in the default sweep), however fast each call is (`measure`'s ``min_seconds``)."""
SETTLE_SECONDS = 0.15
"""Pause before timing the fused kernels and PyTorch: the reference ran just before, and OpenBLAS
threads spin for about 0.1 s after it (`measure`). The reference itself follows the fused calls,
whose OpenMP threads spin for well under a millisecond, and is timed without a pause."""
REFERENCE_BUDGET_SHARE = 0.5
"""The share of the sweep's budget the NumPy reference's timing gets: it is the slow baseline
(10-1500 ms a call), and its big cases took half the default sweep's time at the full budget."""


@dataclass(frozen=True)
class Timing:
    """Median seconds of ``calls`` timed calls."""

    seconds: float
    calls: int


def measure(fn: Callable[[], object], repeats: int, budget: float, settle: float = 0.0,
            min_seconds: float = 0.0, warm_up: float | None = None) -> Timing:
    """Time ``fn``: a pause and one warm-up call (unless ``warm_up`` gives one already made), then
    the median of ``repeats`` calls or more.

    Fast calls go on past ``repeats`` until they have spent ``min_seconds``: on a shared machine a
    slow spell of some milliseconds would otherwise cover all 7 calls of a 1 ms case and move its
    median by 20% or more (seen in the LSTM rows at B=16), while a hundred calls outlast it.

    The pause of ``settle`` seconds lets the thread pools of whatever ran before go idle: OpenBLAS
    and OpenMP worker threads keep spinning for a while after their last call, and on a machine
    with few cores they would slow down the first calls of the next library by up to 100x.
    Timed calls stop early once they have spent ``budget`` seconds, and a warm-up slower than the
    budget is itself the single measurement (such a call is far slower than anything a warm-up
    removes, and it comes after the validation call of the same code).

    Parameters
    ----------
    fn : callable
        No arguments.
    repeats : int
        At least 1.
    budget, settle, min_seconds : float
        Seconds.
    warm_up : float, optional
        Seconds of a call of ``fn`` already made in this process (the reference's run that
        computed the truth a pass is checked against): it serves as the warm-up, with no pause.

    Returns
    -------
    Timing
    """
    if warm_up is None:
        time.sleep(settle)
        start = time.perf_counter()
        fn()
        warm_up = time.perf_counter() - start
    if warm_up >= budget:
        return Timing(warm_up, 1)
    times: list[float] = []
    spent = 0.0
    while (len(times) < repeats or spent < min_seconds) and spent < budget:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return Timing(statistics.median(times), len(times))


def gemm_ceiling(size: int = GEMM_SIZE, repeats: int = 5) -> float:
    """This machine's float32 GEMM rate in GFLOP/s: ``a @ b`` of two (size, size) numpy arrays.

    The best of ``repeats`` products after a warm-up, with the threads numpy's BLAS has now. The
    best, not the median: a ceiling is what the machine can do, and on a shared machine the noise
    only ever slows a product down (phases at half the rate are common on 2 shared cores).
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# ---------------------------------------------------------------- threads


def _numpy_openblas() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """Get/set of the thread count of the OpenBLAS bundled in numpy's wheel, or None.

    numpy wheels ship scipy-openblas in ``numpy.libs``, with the thread functions suffixed
    ``64_`` (ILP64) or not; other builds (MKL, Accelerate, a system BLAS) are not recognised.
    """
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", ""):
            get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                return (lambda get=get: int(get())), (lambda n, put=put: put(ctypes.c_int(n)))
    return None


@contextlib.contextmanager
def thread_limit(threads: int, torch: ModuleType | None) -> Iterator[str]:
    """Run the fused kernels, numpy's BLAS and PyTorch on ``threads`` threads, then restore.

    Yields
    ------
    str
        How the reference's threads were set, for the table header.
    """
    numpy_blas = _numpy_openblas()
    saved_fused = _config.get_num_threads()
    saved_numpy = numpy_blas[0]() if numpy_blas else None
    saved_torch = torch.get_num_threads() if torch else None
    _config.set_num_threads(threads)
    if numpy_blas:
        numpy_blas[1](threads)
        note = f"numpy's OpenBLAS limited to {threads} threads"
    else:
        note = "numpy's BLAS with its own thread count (not an OpenBLAS fusedrnn can set)"
    if torch:
        torch.set_num_threads(threads)
    try:
        yield note
    finally:
        _config.set_num_threads(saved_fused)
        if numpy_blas:
            numpy_blas[1](saved_numpy)
        if torch:
            torch.set_num_threads(saved_torch)


# ---------------------------------------------------------------- the sweep


@dataclass
class Row:
    """One line of the table: a case, a pass, the three timings and what follows from them.

    Times are milliseconds; ``None`` where not measured, with the reason in ``check``
    (``"FAIL"``: the fused result did not match the reference, nothing was timed) or in
    ``torch_status`` (``"not installed"``, ``"n/a"`` for a variant PyTorch does not have,
    ``"FAIL"``, ``"not run"`` after a fused FAIL). ``calls`` counts the timed calls per
    implementation, ``problems`` describes each mismatch.
    """

    case: str
    cell: str
    B: int
    T: int
    I: int
    H: int
    pass_name: str
    dtype: str
    flops: int
    workspace_bytes: int | None
    peak_bytes: int | None = None
    process_peak_bytes: int | None = None
    check: str = "ok"
    problems: list[str] = field(default_factory=list)
    fused_ms: float | None = None
    reference_ms: float | None = None
    torch_ms: float | None = None
    torch_status: str = "not run"
    calls: dict[str, int] = field(default_factory=dict)
    speedup_reference: float | None = None
    speedup_torch: float | None = None
    gflops: float | None = None
    ceiling_percent: float | None = None

    @property
    def label(self) -> str:
        """The case's `shape_label`."""
        return shape_label(self.case, self.B, self.T, self.I, self.H)


class Progress:
    """A one-line progress bar rewritten in place with ``\\r`` (on stderr by default)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.done, self.width = total, 0, width
        self.stream = stream if stream is not None else sys.stderr
        self._last = 0

    def show(self, label: str) -> None:
        """Draw the bar with ``label`` as the step now running."""
        filled = self.width * self.done // max(self.total, 1)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        self.stream.write("\r" + line.ljust(self._last))
        self.stream.flush()
        self._last = len(line)

    def step(self) -> None:
        """Count one step as done."""
        self.done += 1

    def close(self) -> None:
        """Erase the bar."""
        self.stream.write("\r" + " " * self._last + "\r")
        self.stream.flush()


def run_case(case: Case, dtype: np.dtype | type, repeats: int, budget: float,
             torch: ModuleType | None, ceiling: float,
             progress: Progress | None = None, min_seconds: float = 0.0) -> list[Row]:
    """Validate and time every pass of one case.

    Parameters
    ----------
    case : Case
    dtype : float32 or float64
    repeats, budget, min_seconds
        As for `measure`.
    torch : module or None
    ceiling : float
        The float32 GEMM rate in GFLOP/s the fused rate is compared with.
    progress : Progress, optional
        Advanced by one step per pass.

    Returns
    -------
    list of Row
        One per pass of ``case.passes``.
    """
    inputs = make_inputs(case, dtype)
    expected: dict[str, Outputs] = {}  # truth_pass -> the reference's outputs, computed once
    truth_seconds: dict[str, float] = {}  # truth_pass -> how long that reference call took
    rows = []
    for pass_name in case.passes:
        if progress:
            progress.show(f"{case.label} {pass_name}")
        training = pass_name in TRAINING_PASSES
        row = Row(
            case=case.variant.name, cell=case.variant.cell, B=case.B, T=case.T, I=case.I, H=case.H,
            pass_name=pass_name, dtype=np.dtype(dtype).name, flops=case.flops(pass_name),
            workspace_bytes=case.workspace_bytes(dtype) if training else None,
        )
        truth = truth_pass(pass_name)
        if truth not in expected:
            start = time.perf_counter()
            expected[truth] = numpy_pass(reference, case, inputs, truth)()
            truth_seconds[truth] = time.perf_counter() - start
        calls = _validated_calls(row, case, inputs, expected[truth], torch)
        if row.check == "ok":
            _time_calls(row, calls, repeats, budget, ceiling, min_seconds,
                        truth_seconds[truth] if truth == pass_name else None)
        rows.append(row)
        if progress:
            progress.step()
    return rows


def _status_bytes(field_name: str) -> int | None:
    """A ``kB`` line of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes, or None."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return None


class MemoryPeak:
    """The process's resident memory at its height while the ``with`` block ran.

    Linux only: entering resets the kernel's high-water mark (``VmHWM``, by writing 5 to
    /proc/self/clear_refs); on leaving, ``process_bytes`` is that mark and ``added_bytes`` the
    mark above the resident memory at entry: the outputs, workspace and any scratch the call
    needed beyond what the process already held. Both stay None where this cannot be measured.
    """

    def __init__(self) -> None:
        self.before: int | None = None
        self.process_bytes: int | None = None
        self.added_bytes: int | None = None

    def __enter__(self) -> Self:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return self
        self.before = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.before is None:
            return
        self.process_bytes = _status_bytes("VmHWM")
        if self.process_bytes is not None:
            self.added_bytes = max(0, self.process_bytes - self.before)


def _validated_calls(row: Row, case: Case, inputs: Outputs, expected: Outputs,
                     torch: ModuleType | None) -> dict[str, Callable[[], Outputs]]:
    """The calls of ``row``'s pass worth timing, each run once against ``expected``.

    A fused mismatch makes the row ``FAIL`` and returns nothing to time. PyTorch, when importable
    and the variant exists there, is checked the same way and left out (``torch_status`` FAIL) if
    it does not match. The reference is the truth itself. Problems go to ``row.problems``.
    """
    dtype = np.dtype(row.dtype)
    fused = numpy_pass(functional, case, inputs, row.pass_name)
    peak = MemoryPeak()
    with peak:
        got = fused()
    row.peak_bytes, row.process_peak_bytes = peak.added_bytes, peak.process_bytes
    row.problems = [f"fused {p}" for p in compare(got, expected, dtype)]
    if row.problems:
        row.check = "FAIL"
        return {}
    calls = {"fused": fused, "reference": numpy_pass(reference, case, inputs, row.pass_name)}
    if torch is None:
        row.torch_status = "not installed"
    elif not case.variant.in_torch:
        row.torch_status = "n/a"
    else:
        call = torch_pass(torch, case, inputs, row.pass_name)
        row.problems = [f"torch {p}" for p in compare(call(), expected, dtype)]
        row.torch_status = "FAIL" if row.problems else "ok"
        if not row.problems:
            calls["torch"] = call
    return calls


def _time_calls(row: Row, calls: dict[str, Callable[[], Outputs]], repeats: int, budget: float,
                ceiling: float, min_seconds: float = 0.0,
                reference_warm_up: float | None = None) -> None:
    """Time each call into ``row.<name>_ms``, then fill in the ratios that follow from them.

    ``reference_warm_up``: seconds of the reference's call of this very pass made for the truth,
    which then serves as the reference's warm-up (`measure`).
    """
    for name, call in calls.items():
        if name == "reference":
            timing = measure(call, repeats, budget * REFERENCE_BUDGET_SHARE, 0.0, min_seconds,
                             reference_warm_up)
        else:
            timing = measure(call, repeats, budget, SETTLE_SECONDS, min_seconds)
        setattr(row, f"{name}_ms", timing.seconds * 1e3)
        row.calls[name] = timing.calls
    row.speedup_reference = row.reference_ms / row.fused_ms
    if row.torch_ms is not None:
        row.speedup_torch = row.torch_ms / row.fused_ms
    row.gflops = row.flops / (row.fused_ms * 1e-3) / 1e9
    row.ceiling_percent = 100 * row.gflops / ceiling


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or what ``platform`` knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


BUSY_LOAD = 1.0
"""A 1-minute load average, before the run, from which other programs are competing for cores."""


@dataclass
class Report:
    """A finished sweep: the machine, the run's settings and the rows.

    ``load_average`` is the 1-minute load at the start and at the end of the run. The load at the
    start is that of other programs (or of a run just before); from `BUSY_LOAD` on, the header
    warns that the times are noisy.
    """

    date: str
    cpu: str
    threads: int
    dtype: str
    gemm_ceiling_gflops: float
    reference_threads: str
    torch: str
    sweep: str
    note: str
    load_average: tuple[float, float]
    config: dict
    rows: list[Row]

    def header(self) -> list[str]:
        """The lines above the table: when, where, with what."""
        cfg = self.config
        lines = [
            f"# fusedrnn {cfg['fusedrnn']} bench ({self.sweep}), {self.date}, {self.dtype}",
            (f"# CPU: {self.cpu} ({cfg['cpu_count']} cores); threads: {self.threads}; "
             f"ISA: {cfg['isa']}; BLAS: {cfg['blas']}"),
            (f"# load average (1 min) at start / end: {self.load_average[0]:.2f} / "
             f"{self.load_average[1]:.2f}"
             + ("; the machine was busy before the run started, expect noisy times"
                if self.load_average[0] >= BUSY_LOAD else "")),
            (f"# float32 GEMM ceiling: {self.gemm_ceiling_gflops:.1f} GFLOP/s (numpy, "
             f"{GEMM_SIZE}^3, best of 5); reference: {self.reference_threads}; "
             f"PyTorch: {self.torch}"),
            ("# GFLOP/s counts GEMM work only (fusedrnn.bench.flops, attention_flops); x ref, "
             "x torch = fused speed-up (their ms / fused ms); workspace = bytes a training "
             "forward keeps; process peak = the process's resident memory at its height during "
             "the first fused call (the JSON also has what that call added)"),
            ("# attention rows: self-attention with q, k, v (B, H, T, I): T = L queries and "
             "keys, I = E head size, H heads"),
        ]
        if self.note:
            lines.append(f"# note: {self.note}")
        return lines

    def table(self) -> str:
        """Header, aligned table and the validation failures, as printed on stdout."""
        columns = ["case", "B", "T", "I", "H", "pass", "check", "fused ms", "ref ms", "torch ms",
                   "x ref", "x torch", "GFLOP/s", "% peak", "workspace", "process peak"]
        cells = [columns] + [_row_cells(row) for row in self.rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        left = {"case", "pass", "check"}
        lines = self.header() + [
            "  ".join(c.ljust(w) if name in left else c.rjust(w)
                      for c, w, name in zip(line, widths, columns)).rstrip()
            for line in cells
        ]
        for row in self.rows:
            for problem in row.problems:
                lines.append(f"mismatch, {row.label} {row.pass_name}: {problem}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """Everything, rows included, as JSON-ready data."""
        return asdict(self)


def _fmt_ms(ms: float | None, missing: str) -> str:
    if ms is None:
        return missing
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.1f} MiB"


def _row_cells(row: Row) -> list[str]:
    torch_missing = row.torch_status if row.check == "ok" else "-"
    return [
        row.case, str(row.B), str(row.T), str(row.I), str(row.H), row.pass_name, row.check,
        _fmt_ms(row.fused_ms, "-"), _fmt_ms(row.reference_ms, "-"),
        _fmt_ms(row.torch_ms, torch_missing),
        _fmt_ratio(row.speedup_reference), _fmt_ratio(row.speedup_torch),
        "-" if row.gflops is None else f"{row.gflops:.1f}",
        "-" if row.ceiling_percent is None else f"{row.ceiling_percent:.1f}%",
        _fmt_bytes(row.workspace_bytes), _fmt_bytes(row.process_peak_bytes),
    ]


def run_sweep(cases: Sequence[Case], dtype: np.dtype | type = np.float32,
              threads: int | None = None, repeats: int = 7, budget: float = 1.0,
              sweep: str = "custom", note: str = "", progress: bool = True,
              min_seconds: float = 0.0) -> Report:
    """Measure the ceiling, then validate and time every case.

    Parameters
    ----------
    cases : sequence of Case
    dtype : float32 or float64
    threads : int, optional
        Threads for the fused kernels, numpy's BLAS and PyTorch (restored afterwards); default
        the fused kernels' current count.
    repeats, budget, min_seconds
        As for `measure`.
    sweep, note : str
        The sweep's name and note, for the header.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    Report
    """
    load_at_start = os.getloadavg()[0]
    torch = import_torch()
    threads = threads or _config.get_num_threads()
    steps = sum(len(case.passes) for case in cases)
    bar = Progress(steps + 1) if progress else None
    with thread_limit(threads, torch) as reference_threads:
        if bar:
            bar.show("float32 GEMM ceiling")
        ceiling = gemm_ceiling(GEMM_SIZE)
        if bar:
            bar.step()
        rows = [row for case in cases
                for row in run_case(case, dtype, repeats, budget, torch, ceiling, bar,
                                    min_seconds)]
        config = _config.config()
    if bar:
        bar.close()
    return Report(
        date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        cpu=cpu_name(), threads=threads, dtype=np.dtype(dtype).name,
        gemm_ceiling_gflops=ceiling, reference_threads=reference_threads,
        torch=f"{torch.__version__}" if torch else "not installed", sweep=sweep, note=note,
        load_average=(load_at_start, os.getloadavg()[0]), config=config, rows=rows,
    )


def write_json(report: Report, path: str) -> None:
    """Write `Report.to_json` to ``path``."""
    with open(path, "w") as f:
        json.dump(report.to_json(), f, indent=2)
        f.write("\n")


PLOT_HINT = 'needs matplotlib: pip install "fusedrnn[plot]"'


def plot(report: Report, path: str) -> None:
    """Save a PNG bar chart of the fused speed-ups per case and pass (log scale).

    Raises
    ------
    ImportError
        Without matplotlib (the ``plot`` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in report.rows if row.check == "ok"]
    labels = [f"{r.label}\n{r.pass_name}" for r in rows]
    positions = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(rows)), 5.5))
    series = [("over the NumPy reference", "speedup_reference", -0.2),
              ("over PyTorch", "speedup_torch", 0.2)]
    for name, attr, offset in series:
        values = [getattr(r, attr) or np.nan for r in rows]
        ax.bar(positions + offset, values, width=0.4, label=f"fused speed-up {name}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up (x, log scale)")
    ax.set_xticks(positions, labels, rotation=90, fontsize=7)
    ax.set_title(f"fusedrnn {report.dtype}, {report.threads} threads, {report.cpu}, "
                 f"{report.date}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
