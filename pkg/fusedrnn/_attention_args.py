"""The arguments of scaled dot-product attention, checked and brought to one layout.

Written once for both backends (`fusedrnn.functional` and `fusedrnn.reference`), so they accept
and reject exactly the same calls. Users see shapes ``q (..., Hq, L, E)``, ``k (..., Hkv, S, E)``,
``v (..., Hkv, S, Ev)`` with any broadcastable batch dimensions ``...`` (also none, and also 2-D
``(L, E)`` arrays without a head axis); the kernels see ``(N, H, L, E)`` with the batch flattened.

The dropout draw of the attention weights (`dropout_keep`, which the reference computes and
`fusedrnn.MultiheadAttention` replays to return the weights after dropout) is the kernels'
counter-based draw in `fusedrnn._counter_rng`, shared with the recurrent cells' zoneout.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np

from ._checks import (
    DTYPES,
    check_choice,
    check_flag,
    check_probability,
    check_seed,
    check_size,
    fits_shape,
    shape_text,
)

ALIGNMENTS = ("top_left", "bottom_right")
HALF_DTYPES = ("float16", "bfloat16")


def _type_name(value) -> str:
    return type(value).__name__


def _check_float_array(value, name: str, dtype=None) -> np.ndarray:
    if isinstance(value, np.ndarray) and dtype == np.uint16 and value.dtype == np.uint16:
        return value  # the bits of 16-bit floats (see half_kind)
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray of float32 or float64, got {_type_name(value)}"
        )
    if dtype is None:
        if value.dtype not in DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {value.dtype}")
    elif value.dtype != dtype:
        raise TypeError(
            f"{name} must have dtype {dtype} like q, got {value.dtype} (all arrays "
            f"of one call share one dtype; nothing is cast silently)"
        )
    return value


def _with_heads(a: np.ndarray, name: str, layout: str) -> np.ndarray:
    if a.ndim < 2:
        raise ValueError(
            f"{name} must have shape {layout} (at least 2 dimensions), but has shape {a.shape}"
        )
    return a[None] if a.ndim == 2 else a


@dataclass
class AttentionArgs:
    """One call's arguments in the kernels' layout, and the way back to the user's shapes."""

    q: np.ndarray  # (N, Hq, L, E)
    k: np.ndarray  # (N, Hkv, S, E)
    v: np.ndarray  # (N, Hkv, S, Ev)
    batch: tuple  # the broadcast batch shape "..."
    drop_head_axis: bool  # q, k, v were all 2-D: the output is (L, Ev)
    q_shape: tuple
    k_shape: tuple
    v_shape: tuple
    heads_q: int
    heads_kv: int
    L: int
    S: int
    E: int
    Ev: int
    is_causal: bool
    scale: float
    dropout_p: float
    seed: int
    bottom_right: bool  # the causal / window alignment: query i at key position i + S_n - L
    query_offset: int  # without bottom_right: query i at key position i + query_offset
    window: int  # > 0: key j visible to query i only if i + d - j < window; 0: none
    softcap: float  # > 0: scores softcap * tanh(scores / softcap) before the mask; 0: none
    key_lengths: np.ndarray | None  # (N,) int64: keys j >= key_lengths[n] masked; None: all S
    half: str | None  # q, k, v hold the bits (uint16) of "float16" / "bfloat16" values
    # the mask: C-contiguous, bool (True = may attend) or additive of q's dtype; None = no mask
    mask: np.ndarray | None
    mask_view: np.ndarray | None  # the mask broadcast to (..., Hq, L, S): a view, no copy
    mask_offsets: np.ndarray | None  # (N*Hq,) int64: element offset of mask[n, h, 0, 0]
    mask_row_stride: int
    mask_col_stride: int

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the arithmetic (and of lse and an additive mask): float32 for 16 bits."""
        return np.dtype(np.float32) if self.half else self.q.dtype

    @property
    def group(self) -> int:
        return self.heads_q // self.heads_kv if self.heads_kv else 1

    def mask_full(self) -> np.ndarray | None:
        """The mask as a (N, Hq, L, S) array (copied when broadcast: for the reference)."""
        if self.mask_view is None:
            return None
        return self.mask_view.reshape(self.q.shape[0], self.heads_q, self.L, self.S)

    @property
    def empty(self) -> bool:
        """No query rows at all: nothing for a kernel to do."""
        return self.q.shape[0] * self.heads_q * self.L == 0

    def kernel_options(self) -> tuple:
        """The last arguments of both bindings, ``_core.attention_forward`` and
        ``attention_backward``: the mask, its offsets and strides, and the options."""
        return (
            self.mask,
            self.mask_offsets,
            self.mask_row_stride,
            self.mask_col_stride,
            self.is_causal,
            self.scale,
            self.dropout_p,
            self.seed,
            {
                "bottom_right": self.bottom_right,
                "query_offset": self.query_offset,
                "window": self.window,
                "softcap": self.softcap,
                "key_lengths": self.key_lengths,
            },
        )

    def visible(self) -> np.ndarray | None:
        """Which keys each query may see by the causal bound, the window and the key lengths
        (not the mask): bool (N, 1, L, S), or None when every key is visible."""
        if not (self.is_causal or self.window or self.key_lengths is not None):
            return None
        N = self.q.shape[0]
        lengths = np.full(N, self.S) if self.key_lengths is None else self.key_lengths
        i = np.arange(self.L)[None, :, None]
        j = np.arange(self.S)[None, None, :]
        shift = lengths - self.L if self.bottom_right else np.full(N, self.query_offset)
        position = i + shift[:, None, None]
        allowed = j < lengths[:, None, None]
        if self.is_causal:
            allowed = allowed & (j <= position)
        if self.window:
            allowed = allowed & (position - j < self.window)
        return allowed[:, None]

    def scores(self, k: np.ndarray) -> np.ndarray:
        """The masked scores (N, Hq, L, S) of q against ``k`` (repeated for GQA), in float64
        or the call's dtype: scale, soft-cap, then the mask and the visibility."""
        s = self.scale * (self.q @ np.swapaxes(k, -1, -2))
        if self.softcap:
            s = self.softcap * np.tanh(s / self.softcap)
        mask = self.mask_full()
        if mask is not None:
            s = np.where(mask, s, -np.inf) if mask.dtype == np.bool_ else s + mask
        visible = self.visible()
        return s if visible is None else np.where(visible, s, -np.inf)

    # ---------------------------------------------------------------- user shapes

    def out_shape(self) -> tuple:
        tail = (self.L, self.Ev) if self.drop_head_axis else (self.heads_q, self.L, self.Ev)
        return self.batch + tail

    def lse_shape(self) -> tuple:
        return self.out_shape()[:-1]

    def to_user(self, out: np.ndarray, lse: np.ndarray) -> tuple:
        return out.reshape(self.out_shape()), lse.reshape(self.lse_shape())

    def saved(self, out, lse, d_out) -> tuple:
        """out, lse (as forward returned them) and d_out, checked, in the kernels' layout."""
        names = {
            "out": (out, self.out_shape()),
            "lse": (lse, self.lse_shape()),
            "d_out": (d_out, self.out_shape()),
        }
        result = []
        for name, (value, shape) in names.items():
            value = _check_float_array(value, name, self.dtype)
            if value.shape != shape:
                raise ValueError(
                    f"{name} must have shape {shape} (what forward returns for "
                    f"these q, k, v), but has shape {value.shape}"
                )
            n = self.q.shape[0]
            result.append(value.reshape((n, self.heads_q, self.L, *shape[len(self.lse_shape()) :])))
        return tuple(result)

    def grads_to_user(self, dq: np.ndarray, dk: np.ndarray, dv: np.ndarray) -> tuple:
        """(N, H, ., .) gradients summed over the batch dimensions each input was broadcast
        along, in the shape of that input."""
        return (
            _unbroadcast(dq, self.batch, self.q_shape),
            _unbroadcast(dk, self.batch, self.k_shape),
            _unbroadcast(dv, self.batch, self.v_shape),
        )


def _unbroadcast(grad: np.ndarray, batch: tuple, shape: tuple) -> np.ndarray:
    full = grad.reshape(batch + grad.shape[1:])
    padded = shape if len(shape) > 2 else (1, *shape)  # a 2-D input had a head axis added
    lead = len(batch) - (len(padded) - 3)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(padded[:-3]) if n == 1 and batch[lead + i] != 1
    )
    if axes:
        full = full.sum(axis=axes, keepdims=True)
        full = full.reshape(full.shape[lead:])
    return np.ascontiguousarray(full.reshape(shape))


def check_alignment(causal_alignment) -> int:
    """ "top_left", "bottom_right" or an int (the key position of query 0); the int, or 0."""
    if isinstance(causal_alignment, str):
        check_choice(causal_alignment, "causal_alignment", ALIGNMENTS)
        return 0
    try:
        return check_size(causal_alignment, "causal_alignment", minimum=None)
    except TypeError:
        raise TypeError(
            f"causal_alignment must be 'top_left', 'bottom_right' or an int (the key position "
            f"of query 0), got {_type_name(causal_alignment)}"
        ) from None


def half_kind(q, dtype) -> str | None:
    """ "float16" or "bfloat16" when q holds 16-bit floats, else None: a float16 array, an
    ``ml_dtypes.bfloat16`` array, or a uint16 array of their bits with ``dtype`` naming which."""
    if dtype is not None:
        check_choice(dtype, "dtype", HALF_DTYPES)
        if not isinstance(q, np.ndarray) or q.dtype != np.uint16:
            raise TypeError(
                f"dtype={dtype!r} says q, k, v hold the bits of {dtype} values: they must be "
                f"uint16 arrays, but q is {getattr(q, 'dtype', _type_name(q))}"
            )
        return dtype
    if isinstance(q, np.ndarray) and q.dtype == np.float16:
        return "float16"
    if isinstance(q, np.ndarray) and q.dtype.itemsize == 2 and q.dtype.name == "bfloat16":
        return "bfloat16"  # ml_dtypes' (never imported here: any such dtype has these bits)
    return None


def half_bits(a, half: str, user_dtype: np.dtype, name: str) -> np.ndarray:
    """The uint16 bits of a 16-bit input of the user's dtype (checked), C-contiguous."""
    if not isinstance(a, np.ndarray) or a.dtype != user_dtype:
        raise TypeError(
            f"{name} must have dtype {user_dtype} like q (all arrays of one call share one "
            f"dtype; nothing is cast silently), got {getattr(a, 'dtype', _type_name(a))}"
        )
    return np.ascontiguousarray(a).view(np.uint16)


def half_to_float32(bits: np.ndarray, half: str) -> np.ndarray:
    """16-bit values (their uint16 bits) as float32, exactly."""
    if half == "float16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_half(x: np.ndarray, half: str) -> np.ndarray:
    """float32 values rounded to the nearest 16-bit value (ties to even), as uint16 bits."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if half == "float16":
        return x.astype(np.float16).view(np.uint16)
    bits = x.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> 16).astype(
        np.uint16
    )
    nan = ((bits >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return np.where(np.isnan(x), nan, rounded)


def half_inputs_as_float32(half: str, user_dtype: np.dtype, **arrays) -> list:
    """16-bit arrays of the user's dtype (checked, named by their keywords) as float32."""
    return [half_to_float32(half_bits(a, half, user_dtype, n), half) for n, a in arrays.items()]


def widening_forward(forward):
    """``forward`` (an attention forward of float32 / float64) taking 16-bit q, k, v too: on
    the inputs widened exactly to float32, the output rounded to q's 16-bit dtype once."""

    @functools.wraps(forward)
    def wrapper(q, k, v, *args, dtype=None, **kwargs):
        half = half_kind(q, dtype)
        if half is None:
            return forward(q, k, v, *args, **kwargs)
        user = q.dtype
        q, k, v = half_inputs_as_float32(half, user, q=q, k=k, v=v)
        out, lse = forward(q, k, v, *args, **kwargs)
        return float32_to_half(out, half).view(user), lse

    return wrapper


def widening_backward(backward):
    """``backward`` (an attention backward of float32 / float64) taking the 16-bit q, k, v,
    out, d_out of a 16-bit forward too: float32 arithmetic on the inputs widened exactly, each
    gradient rounded to q's 16-bit dtype."""

    @functools.wraps(backward)
    def wrapper(q, k, v, out, lse, d_out, *args, dtype=None, **kwargs):
        half = half_kind(q, dtype)
        if half is None:
            return backward(q, k, v, out, lse, d_out, *args, **kwargs)
        user = q.dtype
        q, k, v, out, d_out = half_inputs_as_float32(
            half, user, q=q, k=k, v=v, out=out, d_out=d_out
        )
        grads = backward(q, k, v, out, lse, d_out, *args, **kwargs)
        return tuple(float32_to_half(g, half).view(user) for g in grads)

    return wrapper


def _check_key_lengths(key_lengths, batch: tuple, S: int) -> np.ndarray | None:
    if key_lengths is None:
        return None
    lengths = np.asarray(key_lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"key_lengths must hold integers, but has dtype {lengths.dtype}")
    if lengths.shape != batch:  # (np.broadcast_to takes microseconds: a decoding step's)
        try:
            lengths = np.broadcast_to(lengths, batch)
        except ValueError:
            raise ValueError(
                f"key_lengths of shape {lengths.shape} does not broadcast to the batch shape "
                f"{batch} of q, k, v (all but their last three axes)"
            ) from None
    if lengths.size and (lengths.min() < 0 or lengths.max() > S):
        bad = np.flatnonzero((lengths < 0) | (lengths > S))
        raise ValueError(f"key_lengths must be in 0..S = 0..{S}, got {lengths.reshape(-1)[bad[0]]}")
    return np.ascontiguousarray(lengths.reshape(-1), dtype=np.int64)


def attention_args(
    q,
    k,
    v,
    attn_mask=None,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    dropout_p=0.0,
    seed=0,
    causal_alignment="top_left",
    window=None,
    softcap=None,
    key_lengths=None,
    half=None,
) -> AttentionArgs:
    """Check one call and bring it to the kernels' layout (see the module docstring).
    ``half``: q, k, v are the uint16 bits of 16-bit values (see `half_kind`)."""
    q = _check_float_array(q, "q", np.uint16 if half else None)
    k = _check_float_array(k, "k", q.dtype)
    v = _check_float_array(v, "v", q.dtype)
    is_causal = check_flag(is_causal, "is_causal")
    query_offset = check_alignment(causal_alignment)
    window = 0 if window is None else check_size(window, "window")
    if softcap is None:
        softcap = 0.0
    elif isinstance(softcap, (bool, np.bool_)) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap must be a positive number or None, got {_type_name(softcap)}")
    elif not 0 <= float(softcap) < math.inf:
        raise ValueError(f"softcap must be a positive number or None (0: none), got {softcap}")
    enable_gqa = check_flag(enable_gqa, "enable_gqa")
    dropout_p = check_probability(dropout_p, "dropout_p")
    seed = check_seed(seed)
    drop_head_axis = q.ndim == 2 and k.ndim == 2 and v.ndim == 2
    q3 = _with_heads(q, "q", "(..., Hq, L, E)")
    k3 = _with_heads(k, "k", "(..., Hkv, S, E)")
    v3 = _with_heads(v, "v", "(..., Hkv, S, Ev)")
    (Hq, L, E), (Hkv, S, Ek), (Hv, Sv, Ev) = q3.shape[-3:], k3.shape[-3:], v3.shape[-3:]
    if Ek != E:
        raise ValueError(
            f"q and k must have the same feature size E (their last axis), but q "
            f"has E = {E} (shape {q.shape}) and k has E = {Ek} (shape {k.shape})"
        )
    if Sv != S:
        raise ValueError(
            f"k and v must have the same number of keys S (axis -2), but k has "
            f"S = {S} (shape {k.shape}) and v has S = {Sv} (shape {v.shape})"
        )
    if Hv != Hkv:
        raise ValueError(
            f"k and v must have the same number of heads Hkv (axis -3), but k has "
            f"{Hkv} (shape {k.shape}) and v has {Hv} (shape {v.shape})"
        )
    if not enable_gqa and Hq != Hkv:
        raise ValueError(
            f"q has Hq = {Hq} heads (axis -3) but k and v have Hkv = {Hkv}; they "
            f"must be equal, or Hq a multiple of Hkv with enable_gqa=True"
        )
    if enable_gqa and (Hkv == 0 or Hq % Hkv != 0):
        raise ValueError(
            f"with enable_gqa=True the query heads Hq = {Hq} must be a multiple of "
            f"the key/value heads Hkv = {Hkv}"
        )
    try:
        batch = q3.shape[:-3]
        if not batch == k3.shape[:-3] == v3.shape[:-3]:  # (np.broadcast_shapes is slow)
            batch = np.broadcast_shapes(q3.shape[:-3], k3.shape[:-3], v3.shape[:-3])
    except ValueError:
        raise ValueError(
            f"the batch dimensions of q {q.shape[:-3]}, k {k.shape[:-3]} and v "
            f"{v.shape[:-3]} (all but the last three axes) do not broadcast "
            f"together"
        ) from None
    N = math.prod(batch)
    if scale is None:
        scale = 1.0 / math.sqrt(E) if E > 0 else 1.0
    elif isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {_type_name(scale)}")

    def flat(a, heads, rows, cols):
        if a.shape[:-3] != batch:
            a = np.broadcast_to(a, batch + a.shape[-3:])
        return a.reshape(N, heads, rows, cols)

    args = AttentionArgs(
        q=flat(q3, Hq, L, E),
        k=flat(k3, Hkv, S, E),
        v=flat(v3, Hkv, S, Ev),
        batch=batch,
        drop_head_axis=drop_head_axis,
        q_shape=q.shape,
        k_shape=k.shape,
        v_shape=v.shape,
        heads_q=Hq,
        heads_kv=Hkv,
        L=L,
        S=S,
        E=E,
        Ev=Ev,
        is_causal=is_causal,
        scale=float(scale),
        dropout_p=dropout_p,
        seed=seed,
        bottom_right=causal_alignment == "bottom_right",
        query_offset=query_offset,
        window=window,
        softcap=float(softcap),
        key_lengths=_check_key_lengths(key_lengths, batch, S),
        half=half,
        mask=None,
        mask_view=None,
        mask_offsets=None,
        mask_row_stride=0,
        mask_col_stride=0,
    )
    if attn_mask is not None:
        _set_mask(args, attn_mask)
    return args


def _set_mask(args: AttentionArgs, attn_mask) -> None:
    if not isinstance(attn_mask, np.ndarray):
        raise TypeError(
            f"attn_mask must be a numpy.ndarray (bool, or {args.dtype} like q) or "
            f"None, got {_type_name(attn_mask)}"
        )
    if attn_mask.dtype != np.bool_ and attn_mask.dtype != args.dtype:
        raise TypeError(
            f"attn_mask must have dtype bool (True = may attend) or {args.dtype} "
            f"like q (added to the scores), got {attn_mask.dtype}"
        )
    user_target = (*args.out_shape()[:-1], args.S)  # (..., Hq, L, S) or (L, S)
    try:
        fits = np.broadcast_shapes(attn_mask.shape, user_target) == user_target
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"attn_mask of shape {attn_mask.shape} does not broadcast to "
            f"(..., Hq, L, S) = {user_target}"
        )
    # Aligned too: np.ascontiguousarray would hand a contiguous float mask at an odd byte offset
    # (a view into a byte buffer) to the kernel as it is, and reading it is undefined behaviour.
    mask = np.require(attn_mask, None, ("C", "A"))
    target = (*args.batch, args.heads_q, args.L, args.S)
    full = np.broadcast_to(mask, user_target)
    if args.drop_head_axis:
        full = full[None]
    full = np.broadcast_to(full, target)  # a view: strides 0 along every broadcast axis
    strides = [s // mask.itemsize for s in full.strides]
    lead = target[:-2]
    offsets = np.zeros(lead, dtype=np.int64)
    for axis, (n, stride) in enumerate(zip(lead, strides[:-2])):
        shape = [1] * len(lead)
        shape[axis] = n
        offsets = offsets + (np.arange(n, dtype=np.int64) * stride).reshape(shape)
    args.mask = mask
    args.mask_view = full
    args.mask_offsets = np.ascontiguousarray(offsets.reshape(-1))
    args.mask_row_stride = int(strides[-2]) if args.L > 1 else 0
    args.mask_col_stride = int(strides[-1]) if args.S > 1 else 0


# ---------------------------------------------------------------- additive attention


def _check_shape(value: np.ndarray, name: str, shape: tuple, axes: str) -> np.ndarray:
    if not fits_shape(value, shape):
        raise ValueError(
            f"{name} must have shape {axes} = {shape_text(shape)}, but has shape {value.shape}"
        )
    return value


def additive_args(query, keys, values, w_q, w_k, w_v, key_mask=None) -> tuple:
    """The arguments of additive attention, checked (shapes in `additive_attention_forward`)."""
    query = _check_float_array(query, "query")
    dtype = query.dtype
    keys = _check_float_array(keys, "keys", dtype)
    values = _check_float_array(values, "values", dtype)
    w_q = _check_float_array(w_q, "w_q", dtype)
    w_k = _check_float_array(w_k, "w_k", dtype)
    w_v = _check_float_array(w_v, "w_v", dtype)
    if query.ndim != 3:
        raise ValueError(
            f"query must have 3 dimensions (B, T, query_size), but has shape {query.shape}"
        )
    B, _, Dq = query.shape
    if keys.ndim != 3 or keys.shape[0] != B:
        raise ValueError(
            f"keys must have shape (B, S, key_size) with B = {B} like query, but "
            f"has shape {keys.shape}"
        )
    S, Dk = keys.shape[1:]
    if w_v.ndim != 1:
        raise ValueError(f"w_v must have shape (hidden_size,), but has shape {w_v.shape}")
    A = w_v.shape[0]
    _check_shape(values, "values", (B, S, None), "(B, S, value_size)")
    _check_shape(w_q, "w_q", (A, Dq), "(hidden_size, query_size)")
    _check_shape(w_k, "w_k", (A, Dk), "(hidden_size, key_size)")
    if key_mask is not None:
        if not isinstance(key_mask, np.ndarray) or key_mask.dtype != np.bool_:
            raise TypeError(
                f"key_mask must be a bool numpy.ndarray (True = may attend) or "
                f"None, got {_type_name(key_mask)}"
                + (f" of {key_mask.dtype}" if isinstance(key_mask, np.ndarray) else "")
            )
        _check_shape(key_mask, "key_mask", (B, S), "(B, S)")
    return query, keys, values, w_q, w_k, w_v, key_mask


def additive_saved(query, keys, values, w_v, weights, qp, kp, d_context) -> tuple:
    """What additive backward reads besides the inputs, checked against them."""
    B, T = query.shape[:2]
    S = keys.shape[1]
    A = w_v.shape[0]
    dtype = query.dtype
    checks = (
        ("weights", weights, (B, T, S), "(B, T, S)"),
        ("qp", qp, (B, T, A), "(B, T, hidden_size)"),
        ("kp", kp, (B, S, A), "(B, S, hidden_size)"),
        ("d_context", d_context, (B, T, values.shape[2]), "(B, T, value_size)"),
    )
    return tuple(
        _check_shape(_check_float_array(value, name, dtype), name, shape, axes)
        for name, value, shape, axes in checks
    )


def additive_grads(grads, w_q, w_k, w_v) -> dict:
    """``grads`` (accumulated into in place) or a fresh zeroed dict, keyed w_q, w_k, w_v."""
    if grads is None:
        return {"w_q": np.zeros_like(w_q), "w_k": np.zeros_like(w_k), "w_v": np.zeros_like(w_v)}
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict of arrays or None, got {_type_name(grads)}")
    missing = [name for name in ("w_q", "w_k", "w_v") if name not in grads]
    if missing:
        raise ValueError(f"grads must have the keys ['w_q', 'w_k', 'w_v']; missing {missing}")
    for name, param in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
        g = _check_float_array(grads[name], f"grads[{name!r}]", param.dtype)
        _check_shape(g, f"grads[{name!r}]", param.shape, "the parameter's shape")
    return grads
