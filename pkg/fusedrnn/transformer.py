"""Positional encodings and a causal (GPT-style) transformer block, built from fusedrnn's layers.

- `SinusoidalPositionalEncoding`: Vaswani et al.'s fixed sines and cosines, added to the input.
- `LearnedPositionalEncoding`: a learned vector per position, added to the input.
- `TransformerDecoderBlock`: a pre-LN causal self-attention block (GPT-2's), ``x + Attn(LN1(x))``
  then ``+ FFN(LN2(x))``, with ``torch.nn.TransformerEncoderLayer(norm_first=True)``'s parts and
  parameter names, its backward, and token-by-token decoding with a `fusedrnn.KVCache`.

Both encodings take an ``offset``, the position of the first of the L positions given, so that a
decoder feeding one token at a time (``offset = len(cache)``) adds the right position's vector.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_choice, check_probability, check_size
from ._module import DTypeLike, Module
from .attention import KVCache, MultiheadAttention
from .nn import Linear
from .normalization import LayerNorm
from .parameter_free import GELU, Dropout, ReLU

__all__ = ["LearnedPositionalEncoding", "SinusoidalPositionalEncoding", "TransformerDecoderBlock"]


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """(max_len, d_model) float64: ``PE[p, 2i] = sin(p / 10000^(2i/d_model))`` and
    ``PE[p, 2i+1] = cos(p / 10000^(2i/d_model))`` (Vaswani et al. 2017, section 3.5)."""
    positions = np.arange(max_len, dtype=np.float64)[:, None]
    rates = 10000.0 ** (-np.arange(0, d_model, 2, dtype=np.float64) / d_model)
    table = np.zeros((max_len, d_model))
    table[:, 0::2] = np.sin(positions * rates)
    table[:, 1::2] = np.cos(positions * rates[: d_model // 2])
    return table


class _PositionalEncoding(Module):
    """What both encodings share: ``x (..., L, d_model) + table[offset : offset + L]``, the
    checks of x and of the positions, and a backward that passes the gradient through."""

    def __init__(self, max_len: int, d_model: int, dtype: DTypeLike, seed: int | None) -> None:
        super().__init__(dtype, seed)
        self.max_len = check_size(max_len, "max_len")
        self.d_model = check_size(d_model, "d_model")

    def _repr_args(self) -> list:
        return [f"d_model={self.d_model}", f"max_len={self.max_len}"]

    def _table(self) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: np.ndarray, offset: int = 0) -> np.ndarray:
        """``x`` plus the vectors of positions ``offset .. offset + L - 1``.

        Parameters
        ----------
        x : (..., L, d_model), of the module's dtype: the positions along the second-to-last
            axis (batch_first ``(N, L, d_model)``, or unbatched ``(L, d_model)``)
        offset : int >= 0
            The position of x's first row (``len(cache)`` when decoding one token at a time).

        Returns
        -------
        y : the shape of x, a fresh array
        """
        x = self._check_array(x, "x", (..., None, self.d_model), (..., "L", "d_model"))
        offset = check_size(offset, "offset", minimum=0)
        L = x.shape[-2]
        if offset + L > self.max_len:
            raise ValueError(
                f"offset + L must be <= max_len = {self.max_len} (the positions the table "
                f"holds), got offset {offset} and L = {L} (x of shape {x.shape})"
            )
        self._keep_for_backward((x.shape, offset))
        return x + self._table()[offset : offset + L]

    def backward(self, d_output: np.ndarray, *, retain_graph: bool = False) -> np.ndarray:
        """The gradient of x, which is ``d_output`` (the encoding is added);
        `LearnedPositionalEncoding` also adds it, summed over the leading axes, into
        ``weight.grad``.

        Parameters
        ----------
        d_output : the shape of the output
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        dx : the shape of x
        """
        shape, offset = self._require_saved()
        self._check_array(d_output, "d_output", shape)
        self._accumulate(d_output, offset)
        self._release_saved(retain_graph)
        return d_output

    def _accumulate(self, d_output: np.ndarray, offset: int) -> None:
        """Add the table's gradient (none for a fixed table)."""


class SinusoidalPositionalEncoding(_PositionalEncoding):
    """Adds Vaswani et al.'s fixed encoding: ``PE[p, 2i] = sin(p / 10000^(2i/d_model))``,
    ``PE[p, 2i+1] = cos(p / 10000^(2i/d_model))``; no parameters.

    Parameters
    ----------
    d_model : int
    max_len : int, default 5000
        Positions the table holds: ``offset + L`` may not exceed it.
    dtype : numpy.float32 (default) or numpy.float64

    Examples
    --------
    >>> pe = SinusoidalPositionalEncoding(64, max_len=512)
    >>> y = pe(np.zeros((8, 100, 64), np.float32))       # (N, L, d_model)
    >>> step = pe(np.zeros((8, 1, 64), np.float32), offset=100)   # position 100 only
    """

    def __init__(self, d_model: int, max_len: int = 5000, *, dtype: DTypeLike = np.float32) -> None:
        super().__init__(max_len, d_model, dtype, None)
        self._pe = sinusoidal_table(self.max_len, self.d_model).astype(self.dtype)
        self._pe.flags.writeable = False

    def _table(self) -> np.ndarray:
        return self._pe


class LearnedPositionalEncoding(_PositionalEncoding):
    """Adds a learned vector per position, ``weight[offset : offset + L]`` (GPT-2's ``wpe``).

    Parameters
    ----------
    max_len : int
        Positions it has a vector for.
    d_model : int
    dtype : numpy.float32 (default) or numpy.float64
    seed : int or None
        Seeds the initialisation: normal with standard deviation 0.02 (GPT-2's).

    Parameters: ``weight`` (max_len, d_model); backward adds the output's gradient, summed over
    the leading axes, into the rows it used.
    """

    def __init__(
        self,
        max_len: int,
        d_model: int,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(max_len, d_model, dtype, seed)
        self._set_parameters(
            {"weight": 0.02 * self._rng.standard_normal((self.max_len, self.d_model))}
        )

    def _table(self) -> np.ndarray:
        return self._params["weight"].view(np.ndarray)

    def _accumulate(self, d_output: np.ndarray, offset: int) -> None:
        grad = self._params["weight"].grad
        if grad is not None:  # (None: frozen)
            rows = d_output.reshape(-1, *d_output.shape[-2:]).sum(axis=0)
            grad[offset : offset + len(rows)] += rows


ACTIVATIONS = {"relu": ReLU, "gelu": GELU}


class TransformerDecoderBlock(Module):
    """A causal self-attention block with the layer norms first (GPT-2's; PyTorch's
    ``TransformerEncoderLayer(norm_first=True)`` given a causal mask)::

        x = x + dropout1(self_attn(norm1(x), is_causal=True))
        x = x + dropout2(linear2(dropout(activation(linear1(norm2(x))))))

    The parts and the parameter names are ``TransformerEncoderLayer``'s (``self_attn``,
    ``linear1``, ``linear2``, ``norm1``, ``norm2``), so its state dict loads as it is.

    Parameters
    ----------
    d_model, nhead : int
        ``d_model`` must be a multiple of ``nhead``.
    dim_feedforward : int, default 2048
    dropout : float, default 0.1
        On the attention weights, after the activation and on both residual branches
        (PyTorch's four places), in training mode.
    activation : 'relu' (default, as PyTorch's) or 'gelu' (exact, GPT-2's choice; its ``erf``
        makes it several times slower than relu on a CPU)
    layer_norm_eps : float, default 1e-5
    batch_first : bool, default True
        x is (N, L, d_model); False: (L, N, d_model).
    dtype : numpy.float32 (default) or numpy.float64
    seed : int or None
        Seeds every part's initialisation and dropout.
    backend : 'fused' (default) or 'reference'

    Examples
    --------
    >>> block = TransformerDecoderBlock(64, 4, dim_feedforward=256, dropout=0.0, seed=0)
    >>> y = block(x)                           # x (N, L, 64): position i sees 0..i
    >>> dx = block.backward(np.ones_like(y))   # every parameter's grad filled
    >>> cache = block.new_cache(N, max_len=100)
    >>> y_t = block.eval()(x[:, :1], cache=cache)   # one position at a time
    """

    _repr_fields = (("batch_first", True),)

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(dtype, seed, backend)
        self.d_model = check_size(d_model, "d_model")
        self.dim_feedforward = check_size(dim_feedforward, "dim_feedforward")
        p = check_probability(dropout, "dropout")
        self.activation_name = check_choice(activation, "activation", tuple(ACTIVATIONS))
        self.batch_first = bool(batch_first)
        seeds = iter(self._rng.integers(2**63, size=8).tolist())
        parts = {"dtype": self.dtype, "backend": self.backend}
        self.self_attn = MultiheadAttention(
            d_model, nhead, dropout=p, batch_first=True, seed=next(seeds), **parts
        )
        self.linear1 = Linear(d_model, self.dim_feedforward, seed=next(seeds), **parts)
        self.dropout = Dropout(p, seed=next(seeds))
        self.linear2 = Linear(self.dim_feedforward, d_model, seed=next(seeds), **parts)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, **parts)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, **parts)
        self.dropout1 = Dropout(p, seed=next(seeds))
        self.dropout2 = Dropout(p, seed=next(seeds))
        self.activation = ACTIVATIONS[self.activation_name]()

    def _repr_args(self) -> list:
        return [
            str(self.d_model),
            str(self.self_attn.num_heads),
            f"dim_feedforward={self.dim_feedforward}",
            f"activation={self.activation_name!r}",
            *super()._repr_args(),
        ]

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty `KVCache` of the block's attention for decoding ``batch`` sequences of up to
        ``max_len`` positions (``forward(x, cache=cache)``)."""
        return self.self_attn.new_cache(batch, max_len)

    def forward(self, x: np.ndarray, *, cache: KVCache | None = None) -> np.ndarray:
        """The block over x, position i attending to positions 0..i.

        Parameters
        ----------
        x : (N, L, d_model), or (L, N, d_model) without batch_first, of the block's dtype
        cache : KVCache, optional
            Incremental decoding (`new_cache`): x holds the next L positions of each sequence,
            which attend to the cache's past positions and to each other (causally); their
            keys and values are appended. For inference (call ``eval()`` first, which turns
            dropout off): such a forward keeps nothing for backward.

        Returns
        -------
        y : the shape of x
        """
        axes = ("N", "L", "d_model") if self.batch_first else ("L", "N", "d_model")
        x = self._check_array(x, "x", (None, None, self.d_model), axes)
        x = x if self.batch_first else np.swapaxes(x, 0, 1)
        h = self.norm1(x)
        attended, _ = self.self_attn(h, h, h, is_causal=True, cache=cache)
        x = x + self.dropout1(attended)
        hidden = self.dropout(self.activation(self.linear1(self.norm2(x))))
        y = x + self.dropout2(self.linear2(hidden))
        if cache is not None:
            self._forget_saved("a forward with a cache is for inference and keeps nothing")
        else:
            self._keep_for_backward(x.shape)  # the parts keep what their backwards need
        return y if self.batch_first else np.ascontiguousarray(np.swapaxes(y, 0, 1))

    def backward(self, d_output: np.ndarray, *, retain_graph: bool = False) -> np.ndarray:
        """Gradients through the last training-mode forward: every parameter's added into its
        ``grad``.

        Parameters
        ----------
        d_output : the shape of the output
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        dx : the shape of x
        """
        N, L, _ = self._require_saved()
        shape, axes = ((N, L), ("N", "L")) if self.batch_first else ((L, N), ("L", "N"))
        self._check_array(d_output, "d_output", (*shape, self.d_model), (*axes, "d_model"))
        dy = d_output if self.batch_first else np.swapaxes(d_output, 0, 1)
        keep = {"retain_graph": retain_graph}
        # forward: y = x1 + dropout2(linear2(dropout(activation(linear1(norm2(x1))))))
        d_hidden = self.linear2.backward(self.dropout2.backward(dy, **keep), **keep)
        d_pre = self.activation.backward(self.dropout.backward(d_hidden, **keep), **keep)
        dx1 = dy + self.norm2.backward(self.linear1.backward(d_pre, **keep), **keep)
        # forward: x1 = x + dropout1(self_attn(h, h, h)), h = norm1(x)
        dq, dk, dv = self.self_attn.backward(self.dropout1.backward(dx1, **keep), **keep)
        dx = dx1 + self.norm1.backward(dq + dk + dv, **keep)
        self._release_saved(retain_graph)
        return dx if self.batch_first else np.ascontiguousarray(np.swapaxes(dx, 0, 1))
