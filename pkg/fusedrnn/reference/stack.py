"""Layer stacks: several layers, two directions, variable lengths, LSTM projections, dropout masks.

The plain NumPy twin of the fused stack (contract: docs/kernels.md, "Layer stacks"), with the
semantics of PyTorch's ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (packed sequences for ``lengths``).
Built from the one-layer cells with a plain Python loop over layers and directions:

- layer ``k`` direction ``d`` runs the cell with ``reverse = (d == 1)`` on the layer's input, from
  ``hx[k*D + d]``; the directions' outputs are concatenated forward first;
- the input of layer ``k + 1`` is layer ``k``'s output times ``dropout_masks[k]``; the last
  layer's output is returned as it is;
- parameters and their gradients are keyed by PyTorch's names; an absent bias is zero and gets no
  gradient key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .._cell_options import CellOptions, cell_options
from .._checks import check_choice, check_frozen, check_lengths, check_size, stack_grads_or_zeros
from .._half import HalfWeights, inference_weights_dtype, rounded_params
from .._recurrent_noise import RecurrentNoise
from .._spec import BIASES, GATES, MODES, PEEPHOLE, layer_roles, layer_suffix
from .._truncation import truncation_steps
from ._common import grad_or_zeros, keep_wanted
from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward
from .truncation import truncated_stack_backward

Hidden = np.ndarray | tuple[np.ndarray, np.ndarray] | None


@dataclass(frozen=True)
class StackSaved:
    """What a training ``stack_forward`` keeps for ``stack_backward`` (reference backend only).

    Attributes
    ----------
    outputs : list of L-1 arrays (T, B, D*H_out)
        The output of every layer but the last, before its dropout mask (the last layer's output
        is the ``y`` handed to ``stack_backward``).
    workspaces : list of L lists of D arrays
        The one-layer cell's workspace of layer ``k``, direction ``d`` (its layout: the cell's
        docstring).
    """

    outputs: list[np.ndarray]
    workspaces: list[list[np.ndarray]]


class _Sizes(NamedTuple):
    G: int  # gate blocks: 4 (LSTM), 3 (GRU), 1 (RNN)
    T: int
    B: int
    I: int  # input size of layer 0
    H: int
    H_out: int  # size of h: proj_size or H
    L: int
    D: int

    def input_size(self, k: int) -> int:
        """``I_k``: the input size of layer ``k``."""
        return self.I if k == 0 else self.D * self.H_out


def _name(role: str, k: int, d: int) -> str:
    """PyTorch's parameter name, e.g. ``weight_hh_l1_reverse``."""
    return f"{role}{layer_suffix(k, d)}"


def _roles(proj_size: int, peephole: bool = False) -> tuple[str, ...]:
    """Every role a layer may have (the biases are optional)."""
    return layer_roles(True, proj_size, peephole)


def _check_array(name: str, value: object, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``value`` itself if it is an ndarray of ``shape`` and ``dtype``; else TypeError /
    ValueError naming ``name``."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)} like x, got {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    return value


def _check_sizes(
    mode: str,
    x: np.ndarray,
    params: Mapping[str, np.ndarray],
    num_layers: int,
    bidirectional: bool,
    proj_size: int,
) -> _Sizes:
    """Check the scalars, ``x`` and ``params`` (names, types, shapes); return the sizes."""
    check_choice(mode, "mode", MODES)
    num_layers = check_size(num_layers, "num_layers", 1)
    proj_size = check_size(proj_size, "proj_size", 0)
    if proj_size and mode != "lstm":
        raise ValueError(f"proj_size > 0 is only for mode='lstm', got mode={mode!r}")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must have dtype float32 or float64, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"x must have shape (T, B, I), got {x.shape}")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of names to arrays, got {type(params).__name__}")

    L, D = int(num_layers), 2 if bidirectional else 1
    peephole = _has_peepholes(mode, params)
    setting = f"(mode={mode!r}, num_layers={L}, bidirectional={bool(bidirectional)}, "
    setting += f"proj_size={proj_size}, peephole={peephole})"
    layers = [(k, d) for k in range(L) for d in range(D)]
    roles = _roles(proj_size, peephole)
    required = {_name(role, k, d) for k, d in layers for role in roles if role not in BIASES}
    optional = {_name(role, k, d) for k, d in layers for role in BIASES}
    missing = sorted(required - set(params))
    if missing:
        raise ValueError(f"params is missing {missing} for {setting}")
    extra = sorted(set(params) - required - optional)
    if extra:
        raise ValueError(f"params has unexpected keys {extra} for {setting}")

    first = params["weight_ih_l0"]
    G = GATES[mode]
    if not isinstance(first, np.ndarray) or first.ndim != 2 or first.shape[0] % G or not len(first):
        shape = getattr(first, "shape", type(first).__name__)
        raise ValueError(f"params['weight_ih_l0'] must be ({G}*H, I) with H >= 1, got {shape}")
    H = first.shape[0] // G
    sizes = _Sizes(G, *x.shape, H=H, H_out=proj_size or H, L=L, D=D)
    for k, d in layers:
        shapes = {
            "weight_ih": (G * H, sizes.input_size(k)),
            "weight_hh": (G * H, sizes.H_out),
            "bias_ih": (G * H,),
            "bias_hh": (G * H,),
            "weight_hr": (proj_size, H),
            PEEPHOLE: (3 * H,),
        }
        for role in roles:
            name = _name(role, k, d)
            if name in params:
                _check_array(f"params[{name!r}]", params[name], shapes[role], x.dtype)
    return sizes


def _layer_params(
    params: Mapping[str, np.ndarray], sizes: _Sizes, proj_size: int, k: int, d: int
) -> dict[str, np.ndarray]:
    """The one-layer cell's parameters of layer ``k``, direction ``d``, by their role (an absent
    bias is zeros; ``weight_hr`` only with a projection)."""
    zeros = np.zeros(sizes.G * sizes.H, dtype=params["weight_ih_l0"].dtype)
    roles = _roles(proj_size, f"{PEEPHOLE}_l0" in params)
    return {role: params.get(_name(role, k, d), zeros) for role in roles}


def _has_peepholes(mode: str, params: Mapping[str, np.ndarray]) -> bool:
    """Whether ``params`` hold an LSTM's peepholes (``weight_peephole_l0`` and the others)."""
    if f"{PEEPHOLE}_l0" not in params:
        return False
    if mode != "lstm":
        raise ValueError(f"params hold {PEEPHOLE}_l0, but only an LSTM has peepholes, not a {mode}")
    return True


def _direction_options(
    mode: str, params: Mapping[str, np.ndarray], options: CellOptions | None, d: int
) -> CellOptions | None:
    """The cell options of direction ``d``: those given, PyTorch's activations when only
    peepholes ask for the options' cell, or None."""
    if options is None and _has_peepholes(mode, params):
        options = cell_options(mode, peephole=True)
    return None if options is None else options.direction(d)


def _stream_noise(noise: RecurrentNoise | None, stream: int) -> RecurrentNoise | None:
    """The noise of layer and direction ``stream`` (``k*D + d``), or None."""
    return None if noise is None else noise.for_stream(stream)


def _initial_states(
    mode: str, hx: Hidden, sizes: _Sizes, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(h0, c0)`` from ``hx`` (``c0`` is None unless LSTM); None means zeros."""
    h_shape = (sizes.L * sizes.D, sizes.B, sizes.H_out)
    c_shape = (sizes.L * sizes.D, sizes.B, sizes.H)
    if mode != "lstm":
        if hx is None:
            return np.zeros(h_shape, dtype=dtype), None
        if not isinstance(hx, np.ndarray):
            raise TypeError(f"hx must be None or an array h0 for mode={mode!r}, got {type(hx)}")
        return _check_array("hx", hx, h_shape, dtype), None
    if hx is None:
        return np.zeros(h_shape, dtype=dtype), np.zeros(c_shape, dtype=dtype)
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx must be None or a pair (h0, c0) for mode='lstm', got {type(hx)}")
    return _check_array("hx[0] (h0)", hx[0], h_shape, dtype), _check_array(
        "hx[1] (c0)", hx[1], c_shape, dtype
    )


def _check_masks(
    dropout_masks: Sequence[np.ndarray] | None, sizes: _Sizes, dtype: np.dtype
) -> Sequence[np.ndarray] | None:
    """``dropout_masks`` checked: None, or L-1 arrays (T, B, D*H_out) of the dtype of x."""
    if dropout_masks is None:
        return None
    if isinstance(dropout_masks, np.ndarray) or not isinstance(dropout_masks, Sequence):
        raise TypeError(
            f"dropout_masks must be None or a list of arrays, got {type(dropout_masks).__name__}"
        )
    if len(dropout_masks) != sizes.L - 1:
        raise ValueError(
            f"dropout_masks must hold num_layers - 1 = {sizes.L - 1} arrays, "
            f"got {len(dropout_masks)}"
        )
    shape = (sizes.T, sizes.B, sizes.D * sizes.H_out)
    for k, mask in enumerate(dropout_masks):
        _check_array(f"dropout_masks[{k}]", mask, shape, dtype)
    return dropout_masks


def _dropped(a: np.ndarray, dropout_masks: Sequence[np.ndarray] | None, k: int) -> np.ndarray:
    """``a`` times layer ``k``'s dropout mask (unchanged without masks).

    Forward: the next layer's input from layer ``k``'s output. Backward: the gradient of layer
    ``k``'s output from that of the next layer's input (the derivative of ``a * mask`` is
    ``mask``).
    """
    return a if dropout_masks is None else a * dropout_masks[k]


def _cell_forward(
    mode: str,
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    w: dict[str, np.ndarray],
    options: dict,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One layer, one direction: ``(y, h_n, c_n or None, workspace)``."""
    weights = (w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"])
    steps = {"lengths": options["lengths"], "reverse": options["reverse"]}
    steps["options"] = options["cell_options"]
    if options["noise"] is not None:
        steps["noise"] = options["noise"]
    training = options["training"]
    if mode == "lstm":
        return lstm_forward(
            x,
            h0,
            c0,
            *weights,
            training,
            weight_hr=w.get("weight_hr"),
            weight_peephole=w.get(PEEPHOLE),
            **steps,
        )
    if mode == "gru":
        y, h_n, workspace = gru_forward(x, h0, *weights, options["reset_after"], training, **steps)
    else:
        y, h_n, workspace = rnn_forward(x, h0, *weights, options["nonlinearity"], training, **steps)
    return y, h_n, None, workspace


def _cell_backward(
    mode: str,
    x: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    w: dict[str, np.ndarray],
    y: np.ndarray,
    workspace: np.ndarray,
    dy: np.ndarray,
    dh_n: np.ndarray,
    dc_n: np.ndarray | None,
    grads: dict[str, np.ndarray],
    options: dict,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One layer, one direction: ``(dx, dh0, dc0 or None)``, accumulating into ``grads``."""
    steps = {"lengths": options["lengths"], "reverse": options["reverse"]}
    steps["options"] = options["cell_options"]
    if options["noise"] is not None:
        steps["noise"] = options["noise"]
    args = (x, h0, c0) if mode == "lstm" else (x, h0)
    args += (w["weight_ih"], w["weight_hh"], y, workspace, dy, dh_n)
    if mode == "lstm":
        peephole = {"weight_hr": w.get("weight_hr"), "weight_peephole": w.get(PEEPHOLE)}
        return lstm_backward(*args, dc_n, grads, **peephole, **steps)[:3]
    if mode == "gru":
        dx, dh0, _ = gru_backward(*args, options["reset_after"], grads, **steps)
    else:
        dx, dh0, _ = rnn_backward(*args, options["nonlinearity"], grads, **steps)
    return dx, dh0, None


def stack_forward(
    mode: str,
    x: np.ndarray,
    hx: Hidden,
    params: Mapping[str, np.ndarray],
    num_layers: int,
    bidirectional: bool = False,
    lengths: ArrayLike | None = None,
    dropout_masks: Sequence[np.ndarray] | None = None,
    training: bool = True,
    reset_after: bool = True,
    nonlinearity: str = "tanh",
    proj_size: int = 0,
    cell_options: CellOptions | None = None,
    noise: RecurrentNoise | None = None,
    weights_dtype: str | None = None,
    half_weights: HalfWeights | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, StackSaved | None]:
    """Run a stack of recurrent layers over a sequence, like ``torch.nn.LSTM`` / ``GRU`` / ``RNN``.

    ``L = num_layers``, ``D = 2 if bidirectional else 1``, ``H`` the hidden size (read off
    ``params``), ``H_out = proj_size or H``, ``I_0 = I`` and ``I_k = D*H_out`` for ``k > 0``.

    Parameters
    ----------
    mode : {"lstm", "gru", "rnn"}
    x : (T, B, I) array
        Time-major input, float32 or float64 (every other array has its dtype).
    hx : None, (L*D, B, H_out) array, or a pair of (L*D, B, H_out) and (L*D, B, H) arrays
        ``h0`` (GRU, RNN) or ``(h0, c0)`` (LSTM), indexed ``k*D + d``; None means zeros.
    params : mapping of str to array
        PyTorch's names: ``weight_ih_l{k}{sfx}`` (G*H, I_k), ``weight_hh_l{k}{sfx}``
        (G*H, H_out), optional ``bias_ih_l{k}{sfx}`` and ``bias_hh_l{k}{sfx}`` (G*H,) (an absent
        one is zero), and ``weight_hr_l{k}{sfx}`` (P, H) exactly when ``proj_size = P > 0``;
        ``sfx`` is ``""`` or, when bidirectional, ``"_reverse"``. G = 4 (LSTM), 3 (GRU), 1 (RNN).
    num_layers : int
        ``L >= 1``.
    bidirectional : bool
    lengths : (B,) ints in 1..T, optional
        Item b's own steps are ``0 .. lengths[b]-1``, in any order of items (PyTorch's packed
        sequences): later steps leave its state unchanged and output zeros, and the reverse
        direction starts at ``lengths[b] - 1``. None: all T steps.
    dropout_masks : list of L-1 arrays (T, B, D*H_out), optional
        Multiplied into the output of every layer but the last (already scaled by
        ``1/(1-p)``). None: no dropout.
    training : bool
        Whether to return ``saved`` for ``stack_backward``.
    reset_after : bool
        GRU only: the variant (see ``gru_forward``).
    nonlinearity : {"tanh", "relu"}
        RNN only.
    proj_size : int
        LSTM only: ``P > 0`` projects ``h`` to size P with ``weight_hr``.
    cell_options : CellOptions, optional
        ONNX's activations, clip and input_forget (``fusedrnn.cell_options``, docs/onnx.md).
        LSTM peepholes are the parameters ``weight_peephole_l{k}{sfx}`` (3H,) = p_i, p_f, p_o.
    noise : RecurrentNoise, optional
        Zoneout and recurrent dropout (``fusedrnn.recurrent_noise``, docs/layers.md); layer k,
        direction d draws its masks from stream ``k*D + d``.
    weights_dtype : None, 'float16' or 'bfloat16'
        Inference of float32 arrays only: the weight matrices (not the biases) are rounded to
        that format, to nearest, ties to even, and the stack runs in float32 with them.
    half_weights : HalfWeights, optional
        The fused twin's packed 16-bit weights; here only their ``weights_dtype`` is read.

    Returns
    -------
    y : (T, B, D*H_out) array
        The last layer's output, forward direction first; zero at padded positions.
    h_n : (L*D, B, H_out) array
        Each layer and direction's state after the item's own last step, index ``k*D + d``.
    c_n : (L*D, B, H) array or None
        The LSTM cell states likewise; None for GRU and RNN.
    saved : StackSaved or None
        What ``stack_backward`` needs; None when not training.
    """
    sizes = _check_sizes(mode, x, params, num_layers, bidirectional, proj_size)
    weights_dtype = inference_weights_dtype(weights_dtype, half_weights, training, x.dtype)
    params = rounded_params(params, weights_dtype)
    if lengths is not None:  # None stays None: T = 0 has no valid full length
        lengths = check_lengths(lengths, sizes.T, sizes.B)
    h0, c0 = _initial_states(mode, hx, sizes, x.dtype)
    dropout_masks = _check_masks(dropout_masks, sizes, x.dtype)
    options = {"lengths": lengths, "training": training, "reset_after": reset_after}
    options["nonlinearity"] = nonlinearity

    h_n = np.empty_like(h0)
    c_n = None if c0 is None else np.empty_like(c0)
    outputs, workspaces = [], []
    layer_input = x
    for k in range(sizes.L):
        directions, layer_workspaces = [], []
        for d in range(sizes.D):
            j = k * sizes.D + d
            y_d, h_n[j], c_n_j, workspace = _cell_forward(
                mode,
                layer_input,
                h0[j],
                None if c0 is None else c0[j],
                _layer_params(params, sizes, proj_size, k, d),
                {
                    **options,
                    "reverse": d == 1,
                    "cell_options": _direction_options(mode, params, cell_options, d),
                    "noise": _stream_noise(noise, j),
                },
            )
            if c_n is not None:
                c_n[j] = c_n_j
            directions.append(y_d)
            layer_workspaces.append(workspace)
        output = np.concatenate(directions, axis=2)
        outputs.append(output)
        workspaces.append(layer_workspaces)
        if k < sizes.L - 1:
            layer_input = _dropped(output, dropout_masks, k)

    saved = StackSaved(outputs=outputs[:-1], workspaces=workspaces) if training else None
    return outputs[-1], h_n, c_n, saved


def stack_backward(
    mode: str,
    x: np.ndarray,
    hx: Hidden,
    params: Mapping[str, np.ndarray],
    num_layers: int,
    y: np.ndarray,
    saved: StackSaved,
    dy: np.ndarray | None = None,
    dh_n: np.ndarray | None = None,
    dc_n: np.ndarray | None = None,
    bidirectional: bool = False,
    lengths: ArrayLike | None = None,
    dropout_masks: Sequence[np.ndarray] | None = None,
    reset_after: bool = True,
    nonlinearity: str = "tanh",
    proj_size: int = 0,
    grads: dict[str, np.ndarray] | None = None,
    truncate: int | None = None,
    truncate_stride: int | None = None,
    cell_options: CellOptions | None = None,
    noise: RecurrentNoise | None = None,
    input_grad: bool = True,
    frozen=(),
    state_grad: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
    """Backpropagate through ``stack_forward``.

    Sizes and names as in ``stack_forward``.

    Parameters
    ----------
    mode, x, hx, params, num_layers, bidirectional, lengths, dropout_masks, reset_after,
    nonlinearity, proj_size, cell_options, noise
        As given to ``stack_forward``.
    y : (T, B, D*H_out) array
        The forward's ``y``.
    saved : StackSaved
        The forward's ``saved`` (from ``training=True``).
    dy : (T, B, D*H_out) array, optional
        Gradient of the loss with respect to ``y``; None means zeros. Entries at padded
        positions ``t >= lengths[b]`` are ignored.
    dh_n : (L*D, B, H_out) array, optional
        Gradient with respect to ``h_n``; None means zeros. Enters at each item's own last step.
    dc_n : (L*D, B, H) array, optional
        LSTM only: likewise for ``c_n``.
    grads : dict, optional
        Keyed like ``params`` (exactly its keys), arrays of the same shapes: accumulated into
        with ``+=``. None makes a fresh zeroed dict with ``params``' keys.
    truncate, truncate_stride : int, optional
        TBPTT(k1 = truncate_stride, k2 = truncate), one direction only: see
        ``fusedrnn.reference.truncation``. None: full backpropagation through time.
    input_grad : bool
        False: the input is data, whose gradient is not wanted: ``dx`` is None. (The fused
        kernels then skip layer 0's ``dgates @ weight_ih``; the reference computes it and drops
        it.)
    frozen : collection of str
        Names of ``params`` whose gradients are not wanted (PyTorch's ``requires_grad=False``):
        absent from the returned dict; a given ``grads`` need not have them, and what it has for
        them stays untouched. (The fused kernels skip their GEMMs; the reference computes and
        drops them.)
    state_grad : bool
        False: the initial states' gradients are not wanted: ``dh0`` and ``dc0`` are None. (With
        ``input_grad=False`` the fused kernels then skip the layers below the lowest one with a
        parameter gradient wanted; the reference computes them and drops them.)

    Returns
    -------
    dx : (T, B, I) array, or None (``input_grad=False``)
        Zero at padded positions.
    dh0 : (L*D, B, H_out) array, or None (``state_grad=False``)
    dc0 : (L*D, B, H) array or None
        None for GRU and RNN, or with ``state_grad=False``.
    grads : dict
        The accumulated (or fresh) parameter gradients, keyed like ``params``.
    """
    sizes = _check_sizes(mode, x, params, num_layers, bidirectional, proj_size)
    if lengths is not None:  # None stays None: T = 0 has no valid full length
        lengths = check_lengths(lengths, sizes.T, sizes.B)
    h0, c0 = _initial_states(mode, hx, sizes, x.dtype)
    dropout_masks = _check_masks(dropout_masks, sizes, x.dtype)
    out_shape = (sizes.T, sizes.B, sizes.D * sizes.H_out)
    _check_array("y", y, out_shape, x.dtype)
    if dy is not None:
        _check_array("dy", dy, out_shape, x.dtype)
    if dh_n is not None:
        _check_array("dh_n", dh_n, h0.shape, x.dtype)
    if dc_n is not None:
        if c0 is None:
            raise ValueError(f"dc_n is only for mode='lstm', got mode={mode!r}")
        _check_array("dc_n", dc_n, c0.shape, x.dtype)
    _check_saved(saved, sizes, out_shape)
    frozen = check_frozen(frozen, tuple(params))
    given = _grads_or_zeros(grads, params, frozen)
    grads = _grads_or_zeros(None, params) if frozen else given  # (frozen: computed, dropped)
    k2, k1 = truncation_steps(truncate, truncate_stride, bidirectional)

    dy = grad_or_zeros(dy, out_shape, x.dtype)
    dh_n = grad_or_zeros(dh_n, h0.shape, x.dtype)
    dc_n = None if c0 is None else grad_or_zeros(dc_n, c0.shape, x.dtype)
    if k2:
        dx, dh0, dc0, grads = truncated_stack_backward(
            stack_forward,
            stack_backward,
            mode,
            x,
            h0,
            c0,
            params,
            num_layers,
            y,
            saved,
            dy,
            dh_n,
            dc_n,
            lengths,
            dropout_masks,
            {
                "reset_after": reset_after,
                "nonlinearity": nonlinearity,
                "proj_size": proj_size,
                "cell_options": cell_options,
                "noise": noise,
            },
            grads,
            k2,
            k1,
        )
        states = (dh0, dc0) if state_grad else (None, None)
        return (dx if input_grad else None), *states, keep_wanted(grads, given, frozen)
    options = {"lengths": lengths, "reset_after": reset_after, "nonlinearity": nonlinearity}
    dh0 = np.zeros_like(h0)
    dc0 = None if c0 is None else np.zeros_like(c0)
    outputs = [*saved.outputs, y]
    d_output = dy  # gradient of the current layer's output
    for k in reversed(range(sizes.L)):
        layer_input = x if k == 0 else _dropped(outputs[k - 1], dropout_masks, k - 1)
        d_input = np.zeros_like(layer_input)
        for d in range(sizes.D):
            j = k * sizes.D + d
            columns = slice(d * sizes.H_out, (d + 1) * sizes.H_out)
            dx_d, dh0[j], dc0_j = _cell_backward(
                mode,
                layer_input,
                h0[j],
                None if c0 is None else c0[j],
                _layer_params(params, sizes, proj_size, k, d),
                outputs[k][..., columns],
                saved.workspaces[k][d],
                d_output[..., columns],
                dh_n[j],
                None if dc_n is None else dc_n[j],
                _layer_grads(grads, params, sizes, proj_size, k, d),
                {
                    **options,
                    "reverse": d == 1,
                    "cell_options": _direction_options(mode, params, cell_options, d),
                    "noise": _stream_noise(noise, j),
                },
            )
            if dc0 is not None:
                dc0[j] = dc0_j
            d_input += dx_d  # both directions read the same input
        if k > 0:
            d_output = _dropped(d_input, dropout_masks, k - 1)
    states = (dh0, dc0) if state_grad else (None, None)
    return (d_input if input_grad else None), *states, keep_wanted(grads, given, frozen)


def _check_saved(saved: StackSaved | None, sizes: _Sizes, out_shape: tuple[int, ...]) -> None:
    if saved is None:
        raise ValueError("saved is None: stack_backward needs a stack_forward with training=True")
    if not isinstance(saved, StackSaved):
        raise TypeError(
            f"saved must be the StackSaved of the reference stack_forward, got {type(saved)}"
        )
    if (
        len(saved.outputs) != sizes.L - 1
        or any(output.shape != out_shape for output in saved.outputs)
        or len(saved.workspaces) != sizes.L
        or any(len(layer) != sizes.D for layer in saved.workspaces)
    ):
        raise ValueError(
            "saved does not come from a stack_forward with these sizes "
            f"(num_layers={sizes.L}, D={sizes.D}, T={sizes.T}, B={sizes.B})"
        )


def _grads_or_zeros(
    grads: dict[str, np.ndarray] | None,
    params: Mapping[str, np.ndarray],
    frozen: frozenset = frozenset(),
) -> dict[str, np.ndarray]:
    """``grads`` checked against ``params`` (same keys but for frozen ones, shapes, dtypes), or
    fresh zeros for every parameter not frozen."""
    grads = stack_grads_or_zeros(grads, params, frozen)
    for name, value in params.items():
        if name not in frozen:  # (a frozen one's array, given or not, is never read)
            _check_array(f"grads[{name!r}]", grads[name], value.shape, value.dtype)
    return grads


def _layer_grads(
    grads: dict[str, np.ndarray],
    params: Mapping[str, np.ndarray],
    sizes: _Sizes,
    proj_size: int,
    k: int,
    d: int,
) -> dict[str, np.ndarray]:
    """The one-layer cell's grads dict for layer ``k``, direction ``d``: the arrays of ``grads``
    (so the cell accumulates into them), and a scratch zeros for an absent bias."""
    scratch = np.zeros(sizes.G * sizes.H, dtype=grads["weight_ih_l0"].dtype)
    return {
        role: grads[_name(role, k, d)] if _name(role, k, d) in params else scratch.copy()
        for role in _roles(proj_size, f"{PEEPHOLE}_l0" in params)
    }
