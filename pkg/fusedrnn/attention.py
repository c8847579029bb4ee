"""Attention for NumPy arrays: a function, a differentiable form, and two layers.

- `scaled_dot_product_attention`: ``torch.nn.functional.scaled_dot_product_attention`` on numpy
  arrays (masks, causal, GQA), on the fused tiled kernel.
- `ScaledDotProductAttention`: the same, remembering what backward needs; ``backward(d_out)``
  returns ``(dq, dk, dv)``.
- `MultiheadAttention`: ``torch.nn.MultiheadAttention``'s parameters, names, masks and results,
  plus incremental decoding with a `KVCache` (``mha.new_cache(batch, max_len)``).
- `KVCache`: the preallocated keys and values of a decoder's past positions.
- `AdditiveAttention`: Bahdanau scoring ``v^T tanh(W_q q + W_k k)`` for a batch of decoder steps
  over all encoder states, with a key padding mask.

Every class runs on ``backend="fused"`` (``fusedrnn.functional``, the default) or
``backend="reference"`` (``fusedrnn.reference``, plain NumPy). Shapes and semantics of the kernels:
docs/kernels.md, "Attention". A query whose keys are all masked gets a zero output and zero
gradients, never NaN (PyTorch's math path gives NaN there).
"""

from __future__ import annotations

import numpy as np

from ._attention_args import attention_args, check_alignment
from ._checks import check_flag, check_probability, check_size
from ._counter_rng import dropout_keep
from ._module import DTypeLike, Module, backend_module
from .nn import Linear


def _fresh_seed() -> int:
    return int(np.random.default_rng().integers(2**63))


class KVCache:
    """The keys and values of a decoder's past positions, preallocated for ``max_len`` of them.

    Decoding appends each step's keys and values (`append`) and attends to everything stored,
    the new queries aligned with the new keys: query i sees the stored keys j <= i + p, p the
    length before the append (ONNX's past_key rule; with as many queries as new keys, the
    bottom-right alignment to the end of the cache). Attention reads the buffers in place, passing
    ``key_lengths`` so that the kernel skips the unused tail: one step costs O(length), never
    the prefix recomputed. `scaled_dot_product_attention` and `MultiheadAttention` take it as
    ``cache=``; ``MultiheadAttention(...).new_cache(batch, max_len)`` makes one that fits.

    Parameters
    ----------
    batch, heads, max_len, head_dim : int
        The buffers are ``keys (batch, heads, max_len, head_dim)`` and
        ``values (batch, heads, max_len, value_dim)``.
    value_dim : int, optional
        Default head_dim.
    dtype : float32, float64 or float16 (or ml_dtypes.bfloat16), default float32

    Attributes
    ----------
    keys, values : the buffers; positions ``[0, length)`` hold the past.
    length : int
        The positions stored, the same for every item (the next token's position).
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        max_len: int,
        head_dim: int,
        value_dim: int | None = None,
        dtype=np.float32,
    ) -> None:
        self.batch = check_size(batch, "batch", minimum=0)
        self.heads = check_size(heads, "heads")
        self.max_len = check_size(max_len, "max_len")
        self.head_dim = check_size(head_dim, "head_dim")
        self.value_dim = self.head_dim if value_dim is None else check_size(value_dim, "value_dim")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64, np.float16) and dtype.name != "bfloat16":
            raise TypeError(
                f"dtype must be float32, float64, float16 or ml_dtypes.bfloat16, got {dtype}"
            )
        self.keys = np.zeros((self.batch, self.heads, self.max_len, self.head_dim), dtype)
        self.values = np.zeros((self.batch, self.heads, self.max_len, self.value_dim), dtype)
        self.length = 0

    def __repr__(self) -> str:
        return (
            f"KVCache(batch={self.batch}, heads={self.heads}, length={self.length}, "
            f"max_len={self.max_len}, head_dim={self.head_dim}, dtype={self.keys.dtype})"
        )

    def __len__(self) -> int:
        return self.length

    @property
    def dtype(self) -> np.dtype:
        return self.keys.dtype

    @property
    def key_lengths(self) -> np.ndarray:
        """(batch,) int64: the keys each item attends to (``length`` for all)."""
        return np.full(self.batch, self.length, np.int64)

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Store the keys ``k (batch, heads, T, head_dim)`` and values ``v (batch, heads, T,
        value_dim)`` of the next T positions (copied in). ValueError when they do not fit."""
        for name, x, width, axis in (
            ("k", k, self.head_dim, "head_dim"),
            ("v", v, self.value_dim, "value_dim"),
        ):
            if not isinstance(x, np.ndarray):
                raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
            if x.dtype != self.dtype:
                raise TypeError(f"{name} must have the cache's dtype {self.dtype}, got {x.dtype}")
            if x.ndim != 4 or x.shape[:2] != (self.batch, self.heads) or x.shape[3] != width:
                raise ValueError(
                    f"{name} must have shape (batch, heads, T, {axis}) = ({self.batch}, "
                    f"{self.heads}, T, {width}), but has shape {x.shape}"
                )
        T = k.shape[2]
        if v.shape[2] != T:
            raise ValueError(f"k and v must hold the same T positions, got {T} and {v.shape[2]}")
        if self.length + T > self.max_len:
            raise ValueError(
                f"the KVCache overflows: it holds {self.length} of max_len = {self.max_len} "
                f"positions and {T} more do not fit (make it with a larger max_len)"
            )
        self.keys[:, :, self.length : self.length + T] = k
        self.values[:, :, self.length : self.length + T] = v
        self.length += T

    def reset(self) -> None:
        """Forget the stored positions (the buffers are reused)."""
        self.length = 0

    def reorder(self, indices) -> None:
        """Item b becomes the old item ``indices[b]`` (beam search keeping its best beams)."""
        indices = np.asarray(indices)
        if indices.dtype.kind not in "iu" or indices.shape != (self.batch,):
            raise ValueError(f"indices must be {self.batch} integers, got {indices!r}")
        if np.any((indices < 0) | (indices >= self.batch)):
            raise ValueError(f"indices must be in 0..{self.batch - 1}, got {indices}")
        stored = slice(0, self.length)
        self.keys[:, :, stored] = self.keys[indices, :, stored]
        self.values[:, :, stored] = self.values[indices, :, stored]

    def attention_options(self, attn_mask, causal_alignment, appended: int) -> dict:
        """The attention arguments that read the cache in place after ``appended`` positions
        were appended: k, v (the whole buffers), the key lengths, the alignment (unless given:
        query 0 at the first appended position) and ``attn_mask`` over the ``length`` stored
        keys padded to max_len (the padding is never read)."""
        if attn_mask is not None:
            if not isinstance(attn_mask, np.ndarray) or attn_mask.shape[-1:] != (self.length,):
                raise ValueError(
                    f"with a cache, attn_mask must cover the {self.length} stored keys (its last "
                    f"axis), got shape {getattr(attn_mask, 'shape', type(attn_mask).__name__)}"
                )
            pad = [(0, 0)] * (attn_mask.ndim - 1) + [(0, self.max_len - self.length)]
            attn_mask = np.pad(attn_mask, pad)
        return {
            "k": self.keys,
            "v": self.values,
            "attn_mask": attn_mask,
            "key_lengths": self.key_lengths,
            "causal_alignment": (
                self.length - appended if causal_alignment is None else causal_alignment
            ),
        }


def _check_cache(cache) -> KVCache:
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a fusedrnn.KVCache or None, got {type(cache).__name__}")
    return cache


_EXTRA_DOC = """causal_alignment : "top_left", "bottom_right", int or None, keyword-only
        Where the queries sit among the keys for ``is_causal`` and ``window``: query i sees
        keys j <= i + d with d = 0 (top-left, PyTorch's is_causal), d = S_n - L
        (bottom-right: the queries are the last L positions), or d = the int given. None:
        top-left, or with a cache its length before the new keys.
    window : int, keyword-only, optional
        Sliding window: query i sees key j only if ``i + d - j < window``.
    softcap : float, keyword-only, optional
        Scores become ``softcap * tanh(scores / softcap)`` before the mask (Gemma 2).
    key_lengths : ints broadcastable to the batch shape, keyword-only, optional
        Item n attends to its first key_lengths[n] keys (padding without a mask tensor).
    dtype : "float16" or "bfloat16", keyword-only, optional
        Only for uint16 q, k, v holding 16-bit floats' bits (bfloat16 without ml_dtypes).
    cache : KVCache, keyword-only, optional
        k and v are the new positions' (``(batch, heads, T, head_dim)``): appended to the
        cache, then q attends to everything it holds. attn_mask then covers the stored keys."""


def _sdpa_call(
    backend, q, k, v, attn_mask, is_causal, scale, enable_gqa, dropout_p, seed, extra
) -> tuple:
    """out, lse and the arguments of one call, with a cache's appended and read in place."""
    check_flag(is_causal, "is_causal")  # before anything else: catches torch's positional dropout_p
    seed = _fresh_seed() if seed is None else seed
    extra = {name: value for name, value in extra.items() if value is not None}
    cache = extra.pop("cache", None)
    alignment = extra.pop("causal_alignment", None)
    if alignment is not None:
        check_alignment(alignment)
    options = {"causal_alignment": alignment or "top_left", **extra}
    if cache is not None:
        cache = _check_cache(cache)
        if extra.get("key_lengths") is not None:
            raise ValueError("key_lengths and cache exclude each other: the cache sets them")
        cache.append(k, v)
        reads = cache.attention_options(attn_mask, alignment, k.shape[2])
        k, v, attn_mask = reads.pop("k"), reads.pop("v"), reads.pop("attn_mask")
        options.update(reads)
    options.update(dropout_p=dropout_p, seed=seed)
    out, lse = backend.attention_forward(
        q, k, v, attn_mask, is_causal, scale, enable_gqa, **options
    )
    return out, lse, (k, v, attn_mask, options)


def scaled_dot_product_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    dropout_p: float = 0.0,
    seed: int | None = None,
    backend: str = "fused",
    causal_alignment: str | None = None,
    window: int | None = None,
    softcap: float | None = None,
    key_lengths=None,
    dtype: str | None = None,
    cache: KVCache | None = None,
) -> np.ndarray:
    """Scaled dot-product attention, as ``torch.nn.functional.scaled_dot_product_attention``.

    ``softmax(scale * q k^T + mask) v`` for every batch item and head, computed in tiles with
    an online softmax: the ``L x S`` score matrix is never stored.

    Parameters
    ----------
    q : (..., Hq, L, E)
    k : (..., Hkv, S, E)
    v : (..., Hkv, S, Ev)
        float32, float64 or 16 bits (float16, ml_dtypes.bfloat16), one dtype. ``...``: any
        batch dimensions, broadcast together (also none; 2-D ``(L, E)`` arrays have no head
        axis).
    attn_mask : bool or q's dtype, broadcastable to (..., Hq, L, S), optional
        bool: True = may attend. Float: added to the scaled scores (``-inf`` masks).
    is_causal : bool
        Query i attends to keys j <= i (top-left aligned, as PyTorch, also when L != S; see
        causal_alignment); combined with ``attn_mask`` when both are given.
    scale : float, optional
        Default ``1/sqrt(E)``.
    enable_gqa : bool
        Grouped-query attention: Hq a multiple of Hkv; query head h uses kv head h // (Hq/Hkv).
    dropout_p : float, keyword-only
        Dropout on the attention weights (kept weights scaled by 1/(1-p)).
    seed : int, keyword-only
        Seed of the dropout draw; None draws a fresh one.
    backend : "fused" or "reference"
    {extra}

    Returns
    -------
    out : (..., Hq, L, Ev)
        A query whose keys are all masked gets zeros.
    """
    extra = {
        "causal_alignment": causal_alignment,
        "window": window,
        "softcap": softcap,
        "key_lengths": key_lengths,
        "dtype": dtype,
        "cache": cache,
    }
    out, _, _ = _sdpa_call(
        backend_module(backend), q, k, v, attn_mask, is_causal, scale, enable_gqa, dropout_p,
        seed, extra
    )  # fmt: skip
    return out


scaled_dot_product_attention.__doc__ = scaled_dot_product_attention.__doc__.replace(
    "{extra}", _EXTRA_DOC
)


class ScaledDotProductAttention(Module):
    """`scaled_dot_product_attention` that remembers what backward needs.

    ``out = sdpa(q, k, v, ...)`` then ``dq, dk, dv = sdpa.backward(d_out)``. The forward keeps
    its own copies of q, k, v and the mask (the caller may reuse its buffers) plus the output and
    one log-sum-exp per query row, never the attention weights. ``out`` is read-only, since
    backward reads it. backward may run any number of times after one forward. A forward with a
    ``cache`` is for inference (decoding): it keeps nothing, and backward says so.

    Parameters
    ----------
    backend : "fused" (default) or "reference"
    """

    _saves_in_eval = True  # dropout is an argument here, not the mode's

    def __init__(self, backend: str = "fused") -> None:
        super().__init__(backend=backend)

    def _repr_args(self) -> list:
        return [f"backend={self.backend!r}"]

    def forward(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        attn_mask: np.ndarray | None = None,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
        *,
        dropout_p: float = 0.0,
        seed: int | None = None,
        causal_alignment: str | None = None,
        window: int | None = None,
        softcap: float | None = None,
        key_lengths=None,
        dtype: str | None = None,
        cache: KVCache | None = None,
    ) -> np.ndarray:
        """The arguments (also those past torch's: causal_alignment, window, softcap,
        key_lengths, dtype, cache) and result of `scaled_dot_product_attention`."""
        extra = {
            "causal_alignment": causal_alignment,
            "window": window,
            "softcap": softcap,
            "key_lengths": key_lengths,
            "dtype": dtype,
            "cache": cache,
        }
        out, lse, (k_read, v_read, mask, options) = _sdpa_call(
            self._backend, q, k, v, attn_mask, is_causal, scale, enable_gqa, dropout_p, seed,
            extra
        )  # fmt: skip
        if cache is not None:
            self._forget_saved("a forward with a cache is for inference and keeps nothing")
            return out
        copies = tuple(
            np.array(a, copy=True) if isinstance(a, np.ndarray) else a
            for a in (q, k_read, v_read, mask)
        )
        out.flags.writeable = False
        options = {"is_causal": is_causal, "scale": scale, "enable_gqa": enable_gqa, **options}
        self._keep_for_backward((*copies, out, lse, options))
        return out

    def backward(self, d_out: np.ndarray, *, retain_graph: bool = False) -> tuple:
        """Gradients ``(dq, dk, dv)`` of the last forward for ``d_out`` (the shape of out): the
        shapes of q, k, v (under GQA and batch broadcasting, summed over what shared each k / v
        entry). ``retain_graph``: keep the forward for another backward (by default it is
        freed, and a second backward raises, as in PyTorch)."""
        q, k, v, mask, out, lse, options = self._require_saved()
        grads = self._backend.attention_backward(q, k, v, out, lse, d_out, mask, **options)
        self._release_saved(retain_graph)
        return grads


# ---------------------------------------------------------------- layers


def _xavier_uniform(rng, shape) -> np.ndarray:
    fan_out, fan_in = shape
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, shape)


class MultiheadAttention(Module):
    """Multi-head attention, as ``torch.nn.MultiheadAttention``, on the fused attention kernel.

    ``q = query W_q^T + b_q``, ``k = key W_k^T + b_k``, ``v = value W_v^T + b_v``, split into
    ``num_heads`` heads of ``embed_dim // num_heads`` features, scaled dot-product attention per
    head, heads concatenated, ``output = attn out_proj.weight^T + out_proj.bias``.

    Parameters
    ----------
    embed_dim, num_heads : int
        ``embed_dim`` must be a multiple of ``num_heads``.
    dropout : float
        Dropout on the attention weights in training mode.
    bias : bool
        ``in_proj_bias`` and ``out_proj.bias``.
    kdim, vdim : int, optional
        Feature sizes of key and value (default embed_dim). When either differs from embed_dim
        the input projections are ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` instead
        of one ``in_proj_weight``.
    batch_first : bool
        Inputs and output are (N, L, E) instead of (L, N, E).
    dtype : numpy.float32 or numpy.float64
    seed : int, optional
        Seeds the initialisation (PyTorch's: xavier-uniform input projections, zero biases,
        uniform(+-1/sqrt(embed_dim)) output projection) and the dropout draws.
    backend : "fused" or "reference"

    Attributes
    ----------
    grads : dict
        The gradient of every parameter, keyed like ``state_dict()``; backward adds into it.
    """

    _saves_in_eval = True  # backward works after an eval forward too (without dropout)
    _repr_fields = (("dropout", 0.0), ("bias", True), ("batch_first", False))

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(dtype, seed, backend)
        self.embed_dim = check_size(embed_dim, "embed_dim")
        self.num_heads = check_size(num_heads, "num_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim = {self.embed_dim} must be divisible by num_heads = {self.num_heads}"
            )
        self.head_dim = self.embed_dim // self.num_heads
        self.dropout = check_probability(dropout, "dropout")
        self.bias = bool(bias)
        self.kdim = self.embed_dim if kdim is None else check_size(kdim, "kdim")
        self.vdim = self.embed_dim if vdim is None else check_size(vdim, "vdim")
        self._qkv_same_embed_dim = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        self.batch_first = bool(batch_first)
        E = self.embed_dim
        values = {}
        if self._qkv_same_embed_dim:
            values["in_proj_weight"] = _xavier_uniform(self._rng, (3 * E, E))
        else:
            values["q_proj_weight"] = _xavier_uniform(self._rng, (E, E))
            values["k_proj_weight"] = _xavier_uniform(self._rng, (E, self.kdim))
            values["v_proj_weight"] = _xavier_uniform(self._rng, (E, self.vdim))
        if self.bias:
            values["in_proj_bias"] = np.zeros(3 * E)
        self._set_parameters(values)
        # a Linear submodule, as PyTorch's (mha.out_proj.weight); the layer runs its GEMMs itself
        self.out_proj = Linear(E, E, bias=self.bias, dtype=self.dtype, backend=self.backend)
        bound = 1.0 / np.sqrt(E)
        out_values = {"weight": self._rng.uniform(-bound, bound, (E, E))}
        if self.bias:
            out_values["bias"] = np.zeros(E)
        self.out_proj._set_parameters(out_values)

    def _repr_args(self) -> list:
        args = [str(self.embed_dim), str(self.num_heads), *super()._repr_args()]
        if not self._qkv_same_embed_dim:
            args += [f"kdim={self.kdim}", f"vdim={self.vdim}"]
        return args

    def _projection(self, which: int) -> tuple:
        """(weight, bias or None, the grads' views) of the q (0), k (1) or v (2) projection, as
        a `linear_forward` / `linear_backward` takes them: the grads in a dict ('weight',
        'bias' when the layer has one), without a frozen parameter's."""
        E = self.embed_dim
        rows = slice(which * E, (which + 1) * E)
        # (each parameter's own .grad: self.grads walks every submodule, a cost per decoding step)
        params = self._params
        if self._qkv_same_embed_dim:
            weight, d_weight = params["in_proj_weight"][rows], params["in_proj_weight"].grad
            d_weight = None if d_weight is None else d_weight[rows]
        else:
            name = ("q_proj_weight", "k_proj_weight", "v_proj_weight")[which]
            weight, d_weight = params[name], params[name].grad
        grads = {} if d_weight is None else {"weight": d_weight}
        if not self.bias:
            return weight, None, grads
        bias = params["in_proj_bias"]
        if bias.grad is not None:
            grads["bias"] = bias.grad[rows]
        return weight, bias[rows], grads

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty `KVCache` for decoding ``batch`` sequences of up to ``max_len`` positions
        with this layer (``forward(..., cache=cache)``): num_heads heads of head_dim features
        of the layer's dtype."""
        return KVCache(batch, self.num_heads, max_len, self.head_dim, dtype=self.dtype)

    # ------------------------------------------------------------ forward

    def _layout(
        self,
        length: str,
        size: str,
        N: int | None = None,
        T: int | None = None,
        width: int | None = None,
    ) -> tuple:
        """(shape, axes) of a (length, size) input or output in the layer's layout, and its
        unbatched form: ``(N, L, embed_dim)`` with batch_first, else ``(L, N, embed_dim)``."""
        sizes, axes = {"N": N, length: T, size: width}, ("N", length, size)
        if not self.batch_first:
            axes = (length, "N", size)
        return (tuple(sizes[a] for a in axes), axes, ((T, width), (length, size)))

    def _batch_major(self, x: object, name: str, length: str, size: str, width: int) -> tuple:
        """x checked, as (N, T, width), and whether it was unbatched."""
        shape, axes, unbatched = self._layout(length, size, width=width)
        x = self._check_array(x, name, shape, axes, unbatched=unbatched)
        if x.ndim == 2:
            return x[None], True
        return (x if self.batch_first else np.swapaxes(x, 0, 1)), False

    def _combined_mask(self, attn_mask, key_padding_mask, N: int, L: int, S: int):
        """One SDPA mask (True = may attend, or additive) broadcastable to (N, H, L, S), from
        PyTorch's attn_mask (True = may NOT attend) and key_padding_mask (True = padding)."""
        H = self.num_heads
        masks = []
        for name, m, shapes in (
            ("attn_mask", attn_mask, {(L, S): (1, 1, L, S), (N * H, L, S): (N, H, L, S)}),
            ("key_padding_mask", key_padding_mask, {(N, S): (N, 1, 1, S)}),
        ):
            if m is None:
                continue
            if not isinstance(m, np.ndarray):
                raise TypeError(f"{name} must be a numpy.ndarray or None, got {type(m).__name__}")
            if m.dtype != np.bool_ and m.dtype != self.dtype:
                raise TypeError(
                    f"{name} must have dtype bool or {self.dtype} (the layer's "
                    f"dtype), got {m.dtype}"
                )
            if m.shape not in shapes:
                expected = " or ".join(str(shape) for shape in shapes)
                raise ValueError(
                    f"{name} must have shape {expected} (N = {N}, num_heads = {H}, "
                    f"L = {L}, S = {S}), but has shape {m.shape}"
                )
            masks.append(m.reshape(shapes[m.shape]))
        if not masks:
            return None
        if len(masks) == 1:
            m = masks[0]
            return ~m if m.dtype == np.bool_ else m
        a, b = masks
        if a.dtype == np.bool_ and b.dtype == np.bool_:
            return ~(a | b)

        # as PyTorch: both made additive (-inf where masked) and added
        def additive(m):
            return np.where(m, -np.inf, 0).astype(self.dtype) if m.dtype == np.bool_ else m

        return additive(a) + additive(b)

    def forward(
        self,
        query: np.ndarray,
        key: np.ndarray,
        value: np.ndarray,
        key_padding_mask: np.ndarray | None = None,
        need_weights: bool = False,
        attn_mask: np.ndarray | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        *,
        window: int | None = None,
        softcap: float | None = None,
        cache: KVCache | None = None,
    ) -> tuple:
        """Attention of query over key / value.

        Parameters
        ----------
        query : (L, N, embed_dim), batch_first (N, L, embed_dim), or unbatched (L, embed_dim)
        key : (S, N, kdim), batch_first (N, S, kdim), or unbatched (S, kdim)
        value : (S, N, vdim), batch_first (N, S, vdim), or unbatched (S, vdim)
        key_padding_mask : (N, S) or unbatched (S,), optional
            bool: True = a padding key, ignored. Float: added to the scores.
        need_weights : bool
            Also return the attention weights (this stores ``N*num_heads*L*S`` numbers).
        attn_mask : (L, S) or (N*num_heads, L, S), optional
            bool: True = may NOT attend (PyTorch's rule for this layer). Float: added.
        average_attn_weights : bool
            Weights averaged over the heads (N, L, S), else per head (N, num_heads, L, S).
        is_causal : bool
            Apply the causal mask (query i attends to keys j <= i). Unlike PyTorch, where it is
            only a hint about attn_mask, it needs no attn_mask; given both, both apply.
        window : int, keyword-only, optional
            Sliding window: query i sees key j only if ``i - j < window`` (aligned as the
            causal mask; docs/attention.md).
        softcap : float, keyword-only, optional
            Scores become ``softcap * tanh(scores / softcap)`` before the masks (Gemma 2).
        cache : KVCache, keyword-only, optional
            Incremental decoding (`new_cache`): key and value are the new positions', their
            projections are appended to the cache, and query attends to all it holds, the
            causal mask aligned with the new keys (new query i sees the stored keys j <= i + p,
            p the cache's length before; with L new keys, its end). The masks' S is then the
            cache's length after the append.
            For inference: such a forward keeps nothing for backward.

        Returns
        -------
        output : the layout of query, with embed_dim features
        weights : (N, L, S) / (N, num_heads, L, S) (unbatched: no N), or None. In training mode
            with dropout, the weights after dropout (as PyTorch).
        """
        need_weights = check_flag(need_weights, "need_weights")
        average_attn_weights = check_flag(average_attn_weights, "average_attn_weights")
        is_causal = check_flag(is_causal, "is_causal")
        q_in, unbatched = self._batch_major(query, "query", "L", "embed_dim", self.embed_dim)
        k_in, k_unbatched = self._batch_major(key, "key", "S", "kdim", self.kdim)
        v_in, v_unbatched = self._batch_major(value, "value", "S", "vdim", self.vdim)
        if not unbatched == k_unbatched == v_unbatched:
            raise ValueError(
                f"query, key and value must all be batched (3-D) or all unbatched "
                f"(2-D), got shapes {query.shape}, {key.shape}, {value.shape}"
            )
        N, L, _ = q_in.shape
        if k_in.shape[:2] != v_in.shape[:2] or k_in.shape[0] != N:
            raise ValueError(
                f"key and value must have the same batch size N = {N} as query and "
                f"the same length S, got key {key.shape} and value {value.shape}"
            )
        S = k_in.shape[1]
        if unbatched and key_padding_mask is not None and isinstance(key_padding_mask, np.ndarray):
            key_padding_mask = key_padding_mask[None]
        S_total = S if cache is None else _check_cache(cache).length + S
        mask = self._combined_mask(attn_mask, key_padding_mask, N, L, S_total)
        H, D = self.num_heads, self.head_dim

        def project_heads(x, which, length):  # x W^T + b, (N, T, E_in) -> (N, H, T, D)
            weight, bias = self._projection(which)[:2]
            # (every size spelt out: an empty batch or sequence has no -1 to infer)
            y = self._backend.linear_forward(x.reshape(N * length, x.shape[-1]), weight, bias)
            return np.ascontiguousarray(y.reshape(N, length, H, D).transpose(0, 2, 1, 3))

        q = project_heads(q_in, 0, L)
        k = project_heads(k_in, 1, S)
        v = project_heads(v_in, 2, S)
        dropout_p = self.dropout if self.training else 0.0
        seed = int(self._rng.integers(2**63)) if dropout_p > 0 else 0
        options = {"is_causal": is_causal, "dropout_p": dropout_p, "seed": seed}
        options.update(window=window, softcap=softcap)
        if cache is not None:
            if cache.dtype != self.dtype or cache.heads != H or cache.head_dim != D:
                raise ValueError(
                    f"cache must hold {H} heads of {D} features of {self.dtype} "
                    f"(this layer's new_cache makes one), got {cache!r}"
                )
            cache.append(k, v)
            reads = cache.attention_options(mask, None, S)
            k, v, mask = reads.pop("k"), reads.pop("v"), reads.pop("attn_mask")
            options.update(reads)
        attn, lse = self._backend.attention_forward(q, k, v, mask, **options)
        merged = np.ascontiguousarray(attn.transpose(0, 2, 1, 3)).reshape(N * L, self.embed_dim)
        out = self._backend.linear_forward(
            merged,
            self.out_proj.weight,
            self.out_proj.bias,
        )
        out = out.reshape(N, L, self.embed_dim)
        weights = None
        if need_weights:
            weights = self._weights(q, k, mask, lse, options, average_attn_weights)
            if unbatched:
                weights = weights[0]
            if cache is not None:
                weights = weights[..., : cache.length]
        if cache is not None:
            self._forget_saved("a forward with a cache is for inference and keeps nothing")
            return self._to_layout(out, unbatched), weights
        self._keep_for_backward(
            {
                "q_in": q_in.copy(),
                "k_in": k_in.copy(),
                "v_in": v_in.copy(),
                "q": q,
                "k": k,
                "v": v,
                "mask": mask,
                "attn": attn,
                "lse": lse,
                "merged": merged,
                "options": options,
                "unbatched": unbatched,
                "shape": (N, L, S),
            }
        )
        return self._to_layout(out, unbatched), weights

    def _weights(self, q, k, mask, lse, options, average) -> np.ndarray:
        """softmax(q k^T / sqrt(D) + mask) (after dropout in training), from the saved lse."""
        N, H, L, _ = q.shape
        S = k.shape[2]
        s = attention_args(q, k, k, mask, **options).scores(k)
        with np.errstate(invalid="ignore", over="ignore"):
            p = np.where(np.isinf(lse)[..., None], 0.0, np.exp(s - lse[..., None]))
        if options["dropout_p"] > 0:
            rows = np.arange(N * H * L, dtype=np.uint64).reshape(N, H, L)
            keep = dropout_keep(options["seed"], rows, S, options["dropout_p"])
            p = p * np.where(
                keep, 1.0 / (1.0 - options["dropout_p"]) if options["dropout_p"] < 1 else 0.0, 0.0
            )
        p = p.astype(self.dtype)
        return p.mean(axis=1) if average else p

    def _to_layout(self, x: np.ndarray, unbatched: bool) -> np.ndarray:
        if unbatched:
            return x[0]
        return x if self.batch_first else np.ascontiguousarray(np.swapaxes(x, 0, 1))

    # ------------------------------------------------------------ backward

    def backward(self, d_output: np.ndarray, *, retain_graph: bool = False) -> tuple:
        """Gradients through the last forward; adds every parameter's into its ``grad``.

        Parameters
        ----------
        d_output : the shape of output
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        d_query, d_key, d_value : the shapes of query, key, value (for self-attention with one
            array as all three, its gradient is their sum)
        """
        saved = self._require_saved()
        N, L, S = saved["shape"]
        unbatched = saved["unbatched"]
        shape, axes, unbatched_layout = self._layout("L", "embed_dim", N, L, self.embed_dim)
        if unbatched:
            shape, axes = unbatched_layout
        self._check_array(d_output, "d_output", shape, axes)  # the shape of output
        d_out = (
            d_output[None]
            if unbatched
            else (d_output if self.batch_first else np.swapaxes(d_output, 0, 1))
        )
        H, D, E = self.num_heads, self.head_dim, self.embed_dim
        flat = np.ascontiguousarray(d_out).reshape(N * L, E)
        # forward: out = merged out_proj.weight^T + out_proj.bias
        d_merged, _ = self._backend.linear_backward(
            saved["merged"],
            self.out_proj.weight,
            flat,
            grads=self.out_proj.grads,
            bias=self.bias,
            frozen=self.out_proj._frozen(),
        )
        d_merged = d_merged.reshape(N, L, H, D)
        d_attn = np.ascontiguousarray(d_merged.transpose(0, 2, 1, 3))
        dq, dk, dv = self._backend.attention_backward(
            saved["q"],
            saved["k"],
            saved["v"],
            saved["attn"],
            saved["lse"],
            d_attn,
            saved["mask"],
            **saved["options"],
        )
        grads_in = []
        for which, (dh, x_in, length) in enumerate(
            ((dq, saved["q_in"], L), (dk, saved["k_in"], S), (dv, saved["v_in"], S))
        ):
            # forward: y = x W^T + b, split into heads
            dy = np.ascontiguousarray(dh.transpose(0, 2, 1, 3)).reshape(N * length, E)
            weight, _, grads = self._projection(which)
            names = ("weight", "bias") if self.bias else ("weight",)
            features = x_in.shape[-1]
            dx, _ = self._backend.linear_backward(
                x_in.reshape(N * length, features),
                weight,
                dy,
                grads=grads,
                bias=self.bias,
                frozen=[name for name in names if name not in grads],
            )
            grads_in.append(self._to_layout(dx.reshape(N, length, features), unbatched))
        self._release_saved(retain_graph)
        return tuple(grads_in)


class AdditiveAttention(Module):
    """Additive (Bahdanau) attention over a batch of decoder steps at once.

    ``score[b, t, s] = w_v . tanh(w_q query[b, t] + w_k keys[b, s])``, softmax over the encoder
    states s (padding excluded), ``context[b, t] = sum_s weights[b, t, s] values[b, s]``. Forward
    and backward are fused kernels; the ``B*T*S*hidden_size`` tanh terms are never stored.

    Parameters
    ----------
    query_size, key_size, hidden_size : int
        Sizes of the decoder state, the encoder state, and the scoring layer.
    dtype : numpy.float32 or numpy.float64
    seed : int, optional
        Seeds the initialisation: every weight uniform in +-1/sqrt(its fan-in), as nn.Linear.
    backend : "fused" or "reference"

    Parameters of the layer (``state_dict`` keys): ``w_q (hidden_size, query_size)``,
    ``w_k (hidden_size, key_size)``, ``w_v (hidden_size,)``.
    """

    _saves_in_eval = True  # backward works after an eval forward too

    def __init__(
        self,
        query_size: int,
        key_size: int,
        hidden_size: int,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(dtype, seed, backend)
        self.query_size = check_size(query_size, "query_size")
        self.key_size = check_size(key_size, "key_size")
        self.hidden_size = check_size(hidden_size, "hidden_size")
        A = self.hidden_size
        self._set_parameters(
            {
                "w_q": self._rng.uniform(-1, 1, (A, self.query_size)) / np.sqrt(self.query_size),
                "w_k": self._rng.uniform(-1, 1, (A, self.key_size)) / np.sqrt(self.key_size),
                "w_v": self._rng.uniform(-1, 1, (A,)) / np.sqrt(A),
            }
        )

    def _repr_args(self) -> list:
        return [str(self.query_size), str(self.key_size), str(self.hidden_size)]

    def forward(
        self,
        query: np.ndarray,
        keys: np.ndarray,
        values: np.ndarray | None = None,
        key_padding_mask: np.ndarray | None = None,
        need_weights: bool = False,
    ) -> tuple:
        """Context vectors of every query over the keys.

        Parameters
        ----------
        query : (B, T, query_size), or one step per item (B, query_size)
        keys : (B, S, key_size)
        values : (B, S, value_size), optional; default the keys themselves
        key_padding_mask : (B, S) bool, True = padding (ignored), optional
        need_weights : bool

        Returns
        -------
        context : (B, T, value_size), or (B, value_size) for a 2-D query
        weights : (B, T, S) / (B, S), or None
        """
        need_weights = check_flag(need_weights, "need_weights")
        query = self._check_array(
            query,
            "query",
            (None, None, self.query_size),
            ("B", "T", "query_size"),
            unbatched=((None, self.query_size), ("B", "query_size"), "one step per item"),
        )
        single_step = query.ndim == 2  # one decoder step per item
        q = query[:, None] if single_step else query
        keys = self._check_array(keys, "keys", (None, None, self.key_size), ("B", "S", "key_size"))
        vals = (
            keys
            if values is None
            else self._check_array(values, "values", (None, None, None), ("B", "S", "value_size"))
        )
        key_mask = None
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, np.ndarray) or key_padding_mask.dtype != np.bool_:
                raise TypeError(
                    "key_padding_mask must be a bool numpy.ndarray (True = padding) or None"
                )
            if key_padding_mask.shape != (q.shape[0], keys.shape[1]):
                raise ValueError(
                    f"key_padding_mask must have shape (B, S) = "
                    f"{(q.shape[0], keys.shape[1])}, but has shape "
                    f"{key_padding_mask.shape}"
                )
            key_mask = ~key_padding_mask
        p = self._params
        context, weights, qp, kp = self._backend.additive_attention_forward(
            q, keys, vals, p["w_q"], p["w_k"], p["w_v"], key_mask
        )
        self._keep_for_backward(
            {
                "q": q.copy(),
                "keys": keys.copy(),
                "values": None if values is None else vals.copy(),
                "key_mask": key_mask,
                "weights": weights,
                "qp": qp,
                "kp": kp,
                "single_step": single_step,
            }
        )
        if single_step:
            context, weights = context[:, 0], weights[:, 0]
        return context, (weights.copy() if need_weights else None)

    def backward(self, d_context: np.ndarray, *, retain_graph: bool = False) -> tuple:
        """Gradients through the last forward; adds into every parameter's ``grad``.
        ``retain_graph``: keep the forward for another backward (by default it is freed, and a
        second backward raises, as in PyTorch).

        Returns
        -------
        d_query, d_keys : the shapes of query and keys
        d_values : the shape of values, or None when forward used the keys as values (their
            gradient is then part of d_keys)
        """
        s = self._require_saved()
        d_context = self._check_array(d_context, "d_context")  # its shape: by the backend
        if s["single_step"]:
            d_context = d_context[:, None] if d_context.ndim == 2 else d_context
        values = s["keys"] if s["values"] is None else s["values"]
        p = self._params
        d_query, d_keys, d_values, _ = self._backend.additive_attention_backward(
            s["q"],
            s["keys"],
            values,
            p["w_q"],
            p["w_k"],
            p["w_v"],
            s["weights"],
            s["qp"],
            s["kp"],
            d_context,
            s["key_mask"],
            self._grads_or_scratch(),
        )
        if s["values"] is None:
            d_keys = d_keys + d_values
            d_values = None
        if s["single_step"]:
            d_query = d_query[:, 0]
        self._release_saved(retain_graph)
        return d_query, d_keys, d_values
