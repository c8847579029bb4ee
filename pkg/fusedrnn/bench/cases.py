"""What the benchmark measures: the variants, their shapes, the named sweeps and the FLOP counts.

A `Variant` is a cell with its options (``gru-cho``, ``lstm-2layer-bidir``, ...), a `Case` one
shape of it, a `Sweep` a named list of cases with its timing limits (`SWEEPS`: what
``python -m fusedrnn bench`` runs). `flops` and `attention_flops` count the GEMM work of a pass,
from which the table's GFLOP/s follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from .. import _core, functional
from .._spec import GATES

ATTENTION_WINDOW = 64
"""The window of the ``attention-window`` rows."""
TRAINING_PASSES = ("forward", "forward+backward")
"""``forward``: a training forward (keeps the workspace); ``forward+backward``: that forward then
the backward with given output gradients."""
PASSES = (*TRAINING_PASSES, "inference")
"""The training passes and ``inference``: a forward with ``training=False``."""
# ---------------------------------------------------------------- what is measured


@dataclass(frozen=True)
class Variant:
    """A cell with its options, as the table names it.

    Attributes
    ----------
    name : str
        The name in the table and in ``--only`` (``lstm``, ``gru``, ``gru-cho``, ...).
    cell : {"lstm", "gru", "rnn", "attention", "ln_lstm", "ln_gru", "layer_norm"}
        The kernel family, as in ``functional.<cell>_forward`` (the last three:
        `fusedrnn.bench.layer_norm`).
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
        return _STATES[
            : 2 if self.cell in ("lstm", "ln_lstm") else 0 if self.cell in _NO_STATE else 1
        ]

    @property
    def finals(self) -> tuple[str, ...]:
        """The final states, in the order of `states`: ``h_n, c_n`` (LSTM) or ``h_n``."""
        return _FINALS[: len(self.states)]


_STATES, _FINALS = ("h0", "c0"), ("h_n", "c_n")
_NO_STATE = ("layer_norm",)
_LN_FAMILIES = {"ln_lstm": "lstm", "ln_gru": "gru"}  # layer-normalised cells: their GEMMs


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
        # causal with a sliding window of 64 keys (torch: its flash kernel with the window as a
        # boolean mask, what users write without a windowed kernel)
        Variant(
            "attention-window",
            "attention",
            MappingProxyType({"is_causal": True, "window": ATTENTION_WINDOW}),
        ),
        # one decoding step: the last position's query over the L keys of a KVCache (the buffer
        # read in place with key lengths), against recomputing the prefix without a cache (the
        # causal forward over all L positions); inference passes
        Variant("attention-decode", "attention", MappingProxyType({"decode": True})),
        Variant("attention-nocache", "attention", MappingProxyType({"is_causal": True})),
        # layer normalisation (rows = T*B, N = H) and the layer-normalised cells, against
        # torch.nn.LayerNorm and the per-step PyTorch module (fusedrnn.bench.layer_norm)
        Variant("layer-norm", "layer_norm"),
        Variant("ln-lstm", "ln_lstm"),
        Variant("ln-gru", "ln_gru"),
    )
}
"""The variants by name; the attention rows' options are those of ``attention_forward`` (plus
``decode``: one query over a cache)."""


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
        if self.variant.name in _INFERENCE_ONLY:  # decoding: no backward
            return ("inference",)
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
            return sum(
                v.directions
                * flops(
                    v.cell,
                    self.T,
                    self.B,
                    self.I if k == 0 else v.directions * self.H,
                    self.H,
                    pass_name,
                )
                for k in range(v.layers)
            )
        if self.variant.cell == "attention":
            options = self.variant.options
            if options.get("decode"):  # one query row over T keys: q k^T and p v
                return 2 * 2 * self.B * self.H * self.T * self.I
            return attention_flops(
                self.B,
                self.H,
                self.T,
                self.I,
                bool(options["is_causal"]),
                "forward" if pass_name == "inference" else pass_name,
                window=options.get("window"),
            )
        if self.variant.cell == "layer_norm":
            return layer_norm_flops(self.T * self.B, self.H, pass_name)
        cell = _LN_FAMILIES.get(self.variant.cell, self.variant.cell)
        return flops(cell, self.T, self.B, self.I, self.H, pass_name)

    def workspace_bytes(self, dtype: np.dtype | type) -> int:
        """Bytes a training forward keeps for backward: the workspace, or for attention its
        output and one log-sum-exp per query row (never the attention weights)."""
        v = self.variant
        if v.cell == "attention":
            elements = self.B * self.H * self.T * (self.I + 1)
        elif v.cell == "layer_norm":
            elements = 2 * self.T * self.B  # mean and rstd of each row
        elif v.cell in _LN_FAMILIES:
            elements = functional.ln_workspace_size(_LN_FAMILIES[v.cell], self.T, self.B, self.H)
        elif v.is_stack:
            elements = _core.stack_saved_size(
                v.cell, self.T, self.B, self.I, self.H, 0, v.layers, v.bidirectional
            )
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


# The shapes of the full sweep (the default one before it was cut down to a minute)
_FULL_SHAPES = _square([(1, 100, 256), (16, 50, 128), (32, 100, 256), (64, 50, 512)])
_FULL_VARIANTS = ("lstm", "gru", "gru-cho", "rnn")
# A single step of 32 rows with 4 MiB of LSTM weights (a decoder's beams, teacher forcing one
# token at a time): the product reads the weights in place, packing them would be two more
# passes over them (csrc/common/step_gemm.h, StepWeights)
_STEP_SHAPES = _square([(32, 1, 512)])
_STEP_VARIANTS = ("lstm", "gru", "rnn")
# (B, heads, L, E) of the attention rows, as Case's (B, T=L, I=E, H=heads)
_ATTENTION_SHAPES = [(B, L, E, heads) for B, heads, L, E in ((8, 8, 256, 64), (4, 8, 1024, 64))]
_ATTENTION_VARIANTS = ("attention", "attention-causal", "attention-window")
# a decoding step at prefix 1024 (B, heads, L, E) with and without a cache
_DECODE_SHAPES = [(B, L, E, heads) for B, heads, L, E in ((1, 8, 1024, 64), (4, 8, 1024, 64))]
_DECODE_VARIANTS = ("attention-decode", "attention-nocache")
_INFERENCE_ONLY = _DECODE_VARIANTS
# The layers' path: a 2-layer bidirectional stack and a variable-lengths batch (PyTorch: packed)
_STACK_SHAPES = _square([(16, 50, 128), (32, 100, 256)])
_STACK_VARIANTS = ("lstm-2layer-bidir", "lstm-lengths")
# The default sweep: rows of the full one for what a newcomer asks first, within a minute. Each
# cell PyTorch also has at one sequence (B=1: latency, and the inference pass) and at a batch of
# 32 (throughput; B=64, H=512 takes four times as long, and on a busy machine the reference's
# validation alone took 15 s there), one layer stack, attention causal and not.
_DEFAULT_CASES = (
    cases_for(("lstm", "gru", "rnn"), [_FULL_SHAPES[0], _FULL_SHAPES[2]])
    + cases_for(_STACK_VARIANTS[:1], _STACK_SHAPES[:1])
    + cases_for(_ATTENTION_VARIANTS, _ATTENTION_SHAPES[:1])
    + cases_for(_DECODE_VARIANTS, _DECODE_SHAPES[:1])
)


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
    # Half the full sweep's budget: the default run's large rows are budget-bound, and this keeps
    # the run within a minute on a busy 2-core machine.
    "default": Sweep("default", tuple(_DEFAULT_CASES), 7, 0.5),
    "full": Sweep(
        "full",
        tuple(
            cases_for(_FULL_VARIANTS, _FULL_SHAPES)
            + cases_for(_STEP_VARIANTS, _STEP_SHAPES)
            + cases_for(_STACK_VARIANTS, _STACK_SHAPES)
            + cases_for(_ATTENTION_VARIANTS, _ATTENTION_SHAPES)
            + cases_for(_DECODE_VARIANTS, _DECODE_SHAPES)
        ),
        7,
        1.0,
    ),
    "layer-norm": Sweep(
        "layer-norm",
        tuple(
            cases_for(["ln-lstm", "ln-gru"], _square([(1, 100, 256), (32, 100, 256)]))
            + cases_for(["layer-norm"], [(32, 100, 512, 512), (64, 50, 1024, 1024)])
        ),
        7,
        0.5,
        note="ln-lstm / ln-gru: PyTorch is a per-step module of nn.Linear and layer_norm (what "
        "users write); layer-norm: T*B rows of H values, PyTorch's torch.nn.LayerNorm",
    ),
    "deepbench": Sweep(
        "deepbench",
        tuple(
            cases_for(
                ["lstm"],
                _square([(1, 25, 512)] + [(B, 25, H) for H in (512, 1024) for B in (16, 32, 64)]),
            )
            + cases_for(["lstm"], _square([(B, 150, 256) for B in (16, 32, 64)]))
            + cases_for(
                ["gru"],
                _square([(1, 25, 512)] + [(32, T, H) for H in (512, 1024) for T in (25, 75, 150)]),
            )
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
"""The named sweeps of ``python -m fusedrnn bench``: ``default`` (25 rows, under a minute);
``full`` (66 rows, minutes: every variant at four shapes, each cell at a single step, both
stacks at two, attention at two, decoding at two; the default sweep until issue 17);
``layer-norm`` (layer normalisation and the layer-normalised cells); ``deepbench``
(DeepBench's shapes)."""


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
    G = GATES[cell] * H
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


def attention_flops(
    B: int, heads: int, L: int, E: int, causal: bool, pass_name: str, window: int | None = None
) -> int:
    """Floating-point operations of one pass of self-attention, ``2*M*N*K`` per GEMM.

    Per head, forward is ``s = q k^T`` and ``out = p v``, each ``2*P*E`` for the ``P`` (query,
    key) pairs that are computed: ``L*L``, or ``L*(L+1)/2`` under the causal mask, or
    ``sum_i min(i+1, window)`` with a sliding window as well. Backward
    recomputes ``s`` and does ``dv = p^T do``, ``dp = do v^T``, ``dq = ds k``, ``dk = ds^T q``:
    five more of that size (the FlashAttention count, recomputation included). The softmax and
    the other elementwise work, O(P) per head, is ignored.
    """
    pairs = L * (L + 1) // 2 if causal else L * L
    if window:
        w = min(window, L)
        pairs = w * (w + 1) // 2 + (L - w) * w if causal else pairs
    gemm = 2 * B * heads * pairs * E
    if pass_name == "forward":
        return 2 * gemm
    if pass_name != "forward+backward":
        raise ValueError(
            f"pass_name must be one of {TRAINING_PASSES} for attention, got {pass_name!r}"
        )
    return 7 * gemm


def layer_norm_flops(rows: int, N: int, pass_name: str) -> int:
    """Elementwise operations of layer normalisation over ``rows`` rows of ``N`` values (it has
    no GEMM): 8 per value forward (mean, centring, variance, scaling, gain, bias), 11 more
    backward (the two row sums, dx, the gain's and bias's column sums)."""
    forward = 8 * rows * N
    if pass_name in ("forward", "inference"):
        return forward
    if pass_name != "forward+backward":
        raise ValueError(f"pass_name must be one of {PASSES}, got {pass_name!r}")
    return forward + 11 * rows * N
