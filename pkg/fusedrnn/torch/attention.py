"""`scaled_dot_product_attention`: ``torch.nn.functional.scaled_dot_product_attention`` on the
fused attention tiles (the ``fusedrnn::attention_forward`` operator), with autograd."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from fusedrnn.torch import _ops
from fusedrnn.torch.modules import unserved_reason, warn_fallback

Tensor = torch.Tensor

# Where the one fallback warning of this function is remembered (modules keep their own).
_warned = types.SimpleNamespace()


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` on fusedrnn's fused tiles.

    Parameters
    ----------
    query : (..., Hq, L, E);  key : (..., Hkv, S, E);  value : (..., Hkv, S, Ev)
        CPU tensors of one dtype, float32 or float64; the batch dimensions ``...`` broadcast.
    attn_mask : bool (True = may attend) or query's dtype (added to the scores),
        broadcastable to (..., Hq, L, S), or None
    dropout_p : float
        Dropout on the attention weights, drawn from a seed taken from PyTorch's generator
        (so ``torch.manual_seed`` repeats it; the draws differ from PyTorch's own).
    is_causal : bool
        Top-left aligned causal mask; unlike PyTorch's, it may be combined with attn_mask.
    scale : float or None (1/sqrt(E))
    enable_gqa : bool
        Hq a multiple of Hkv; query head h uses key/value head h // (Hq / Hkv).

    Returns
    -------
    out : (..., Hq, L, Ev)

    A row whose keys are all masked gives zeros and zero gradients (PyTorch's gives NaN).
    Calls the kernels cannot serve run PyTorch's own function, with one warning: other devices
    or dtypes, autocast, and a float attn_mask that requires grad (the kernels give no gradient
    of the mask).
    """
    reason = unserved_reason([query, key, value])
    if reason is None and attn_mask is not None:  # bool or query's dtype: the function checks
        if attn_mask.device != query.device:
            reason = ""  # PyTorch raises its own error
        elif attn_mask.requires_grad:
            reason = "an attn_mask that requires grad"
    if reason is not None:
        warn_fallback(_warned, "scaled_dot_product_attention", reason)
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
        )
    seed = 0
    if dropout_p > 0:
        drawn = torch.randint(0, 2**62, (), dtype=torch.int64)
        if torch._C._functorch.is_batchedtensor(drawn):  # one seed per vmapped index
            raise RuntimeError(
                "fusedrnn.torch.scaled_dot_product_attention: dropout under "
                "torch.vmap(randomness='different') is not supported; use randomness='same' "
                "(the same dropout mask at every index) or dropout_p=0"
            )
        seed = int(drawn)
    out, _ = _ops.run_attention(
        query.contiguous(),
        key.contiguous(),
        value.contiguous(),
        None if attn_mask is None else attn_mask.contiguous(),
        is_causal,
        scale,
        enable_gqa,
        float(dropout_p),
        seed,
    )
    return out
