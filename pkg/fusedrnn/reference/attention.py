"""Attention in plain NumPy: the twin of the fused attention kernels (docs/kernels.md, "Attention").

Readable before fast: the full ``(..., Hq, L, S)`` score matrix, a plain softmax, and the
textbook backward. Same signatures and results as ``fusedrnn.functional.attention_forward`` /
``attention_backward`` / ``additive_attention_forward`` / ``additive_attention_backward``,
including the same dropout draw (`dropout_keep`), so the two backends agree number for number.
"""

from __future__ import annotations

import numpy as np

from .._attention_args import (
    AttentionArgs,
    additive_args,
    additive_grads,
    additive_saved,
    attention_args,
    widening_backward,
    widening_forward,
)
from .._counter_rng import dropout_keep  # the kernels' counter-based draw (csrc/common)

# ---------------------------------------------------------------- the dropout draw


def _dropout_factor(a: AttentionArgs) -> np.ndarray | float:
    """z: keep / (1 - p) for every (n, h, i, j), or 1 without dropout."""
    if a.dropout_p <= 0:
        return 1.0
    N = a.q.shape[0]
    rows = np.arange(N * a.heads_q * a.L, dtype=np.uint64).reshape(N, a.heads_q, a.L)
    keep = dropout_keep(a.seed, rows, a.S, a.dropout_p)
    scale = 0.0 if a.dropout_p >= 1 else 1.0 / (1.0 - a.dropout_p)
    return np.where(keep, scale, 0.0).astype(a.dtype)


# ---------------------------------------------------------------- scaled dot-product attention


def _probabilities(a: AttentionArgs) -> tuple:
    """(p, lse, k, v): the softmax of the masked scores (N, Hq, L, S), with k and v repeated
    for the query heads that share them (GQA). A row with every key masked: p = 0, lse = inf."""
    k = np.repeat(a.k, a.group, axis=1)
    v = np.repeat(a.v, a.group, axis=1)
    s = a.scores(k)  # scaled, soft-capped, masked (the causal bound, window and key lengths too)
    m = np.max(s, axis=-1, keepdims=True) if a.S else np.full((*s.shape[:-1], 1), -np.inf)
    masked_row = m == -np.inf
    e = np.exp(s - np.where(masked_row, 0, m))
    total = np.sum(e, axis=-1, keepdims=True)
    p = e / np.where(total == 0, 1, total)
    with np.errstate(divide="ignore"):
        lse = np.where(masked_row, np.inf, m + np.log(total))[..., 0]
    return p.astype(a.dtype), lse.astype(a.dtype), k, v


@widening_forward
def attention_forward(
    q,
    k,
    v,
    attn_mask=None,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    *,
    dropout_p=0.0,
    seed=0,
    causal_alignment="top_left",
    window=None,
    softcap=None,
    key_lengths=None,
    dtype=None,
):
    """Scaled dot-product attention; see `fusedrnn.functional.attention_forward`.

    16-bit inputs: the float32 computation on the inputs widened exactly, the output rounded.

    Returns
    -------
    out : (..., Hq, L, Ev)
    lse : (..., Hq, L), the log-sum-exp of each row's masked scores (inf for a masked row)
    """
    # (dtype: 16-bit inputs never get here, @widening_forward widens them)
    a = attention_args(q, k, v, attn_mask, is_causal, scale, enable_gqa, dropout_p, seed,
                       causal_alignment, window, softcap, key_lengths)  # fmt: skip
    p, lse, _, v_rep = _probabilities(a)
    out = (p * _dropout_factor(a)) @ v_rep
    return a.to_user(out.astype(a.dtype), lse)


@widening_backward
def attention_backward(
    q,
    k,
    v,
    out,
    lse,
    d_out,
    attn_mask=None,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    *,
    dropout_p=0.0,
    seed=0,
    causal_alignment="top_left",
    window=None,
    softcap=None,
    key_lengths=None,
    dtype=None,
):
    """Gradients of `attention_forward`; see `fusedrnn.functional.attention_backward`.

    Recomputes the probabilities from q and k (``out`` and ``lse`` are checked, not used).
    """
    a = attention_args(q, k, v, attn_mask, is_causal, scale, enable_gqa, dropout_p, seed,
                       causal_alignment, window, softcap, key_lengths)  # fmt: skip
    _, _, d_out = a.saved(out, lse, d_out)
    p, _, k_rep, v_rep = _probabilities(a)
    z = _dropout_factor(a)
    # forward: out = (p*z) v
    dv = np.swapaxes(p * z, -1, -2) @ d_out
    dp = (d_out @ np.swapaxes(v_rep, -1, -2)) * z
    # forward: p = softmax(s)
    ds = p * (dp - np.sum(p * dp, axis=-1, keepdims=True))
    if a.softcap:  # forward: s = softcap * tanh(c / softcap), c = scale * q k^T
        c = a.scale * (a.q @ np.swapaxes(k_rep, -1, -2))
        ds = ds * (1 - np.tanh(c / a.softcap) ** 2)
    # forward: s = scale * q k^T
    dq = a.scale * (ds @ k_rep)
    dk = a.scale * (np.swapaxes(ds, -1, -2) @ a.q)
    N = a.q.shape[0]
    # GQA: the query heads of a group share k and v, so their gradients add up
    dk = dk.reshape(N, a.heads_kv, a.group, a.S, a.E).sum(axis=2)
    dv = dv.reshape(N, a.heads_kv, a.group, a.S, a.Ev).sum(axis=2)
    return a.grads_to_user(dq.astype(a.dtype), dk.astype(a.dtype), dv.astype(a.dtype))


# ---------------------------------------------------------------- additive attention


def additive_attention_forward(query, keys, values, w_q, w_k, w_v, key_mask=None):
    """Additive (Bahdanau) attention; see `fusedrnn.functional.additive_attention_forward`.

    Returns ``(context (B, T, Dv), weights (B, T, S), qp (B, T, A), kp (B, S, A))``.
    """
    query, keys, values, w_q, w_k, w_v, key_mask = additive_args(
        query, keys, values, w_q, w_k, w_v, key_mask
    )
    qp = query @ w_q.T
    kp = keys @ w_k.T
    a = np.tanh(qp[:, :, None, :] + kp[:, None, :, :])  # (B, T, S, A)
    e = a @ w_v
    if key_mask is not None:
        e = np.where(key_mask[:, None, :], e, -np.inf)
    m = np.max(e, axis=-1, keepdims=True) if e.shape[-1] else np.full((*e.shape[:-1], 1), -np.inf)
    x = np.exp(e - np.where(m == -np.inf, 0, m))
    total = np.sum(x, axis=-1, keepdims=True)
    weights = x / np.where(total == 0, 1, total)
    context = weights @ values
    dtype = query.dtype
    return context.astype(dtype), weights.astype(dtype), qp.astype(dtype), kp.astype(dtype)


def additive_attention_backward(
    query, keys, values, w_q, w_k, w_v, weights, qp, kp, d_context, key_mask=None, grads=None
):
    """Gradients of `additive_attention_forward`; ``grads`` (keys w_q, w_k, w_v) accumulate.

    Returns ``(d_query, d_keys, d_values, grads)``.
    """
    query, keys, values, w_q, w_k, w_v, key_mask = additive_args(
        query, keys, values, w_q, w_k, w_v, key_mask
    )
    weights, qp, kp, d_context = additive_saved(
        query, keys, values, w_v, weights, qp, kp, d_context
    )
    grads = additive_grads(grads, w_q, w_k, w_v)
    p = weights
    # forward: context = p values
    d_values = np.swapaxes(p, -1, -2) @ d_context
    dp = d_context @ np.swapaxes(values, -1, -2)
    # forward: p = softmax(e)
    de = p * (dp - np.sum(p * dp, axis=-1, keepdims=True))
    # forward: e = w_v . a, a = tanh(qp + kp)
    a = np.tanh(qp[:, :, None, :] + kp[:, None, :, :])
    grads["w_v"] += np.einsum("bts,btsa->a", de, a)
    dpre = de[..., None] * w_v * (1 - a * a)
    dqp = dpre.sum(axis=2)
    dkp = dpre.sum(axis=1)
    # forward: qp = query w_q^T, kp = keys w_k^T
    d_query = dqp @ w_q
    d_keys = dkp @ w_k
    grads["w_q"] += np.einsum("bta,btd->ad", dqp, query)
    grads["w_k"] += np.einsum("bsa,bsd->ad", dkp, keys)
    dtype = query.dtype
    return d_query.astype(dtype), d_keys.astype(dtype), d_values.astype(dtype), grads
