"""`Embedding` and `Linear`: the layers around a recurrent stack, as ``torch.nn.Embedding`` and
``torch.nn.Linear``, on numpy arrays.

Built on the one base class of every module, they follow the same protocol as ``fusedrnn.LSTM``
/ ``GRU`` / ``RNN`` (docs/training.md), so the optimizers (`fusedrnn.optim`) and gradient
clipping take any mix of them:

- ``named_parameters()`` yields ``(name, array)`` for every parameter: the live arrays, which an
  optimizer updates in place;
- ``grads`` is a dict keyed like ``state_dict()``, of arrays of the parameters' shapes; every
  ``backward`` adds (``+=``) into it and ``zero_grad()`` zeroes it in place.

``forward`` in training mode (the default) saves what ``backward`` needs; ``backward`` uses the
last training-mode forward and may be called more than once (each call adds into ``grads``).
`Linear` runs its GEMMs in C++ on the kernels' BLAS (``backend='fused'``, so that
`fusedrnn.set_num_threads` governs them and numpy's own BLAS threads never compete with the
kernels'), or in NumPy (``backend='reference'``).
"""

from __future__ import annotations

import numpy as np

from ._checks import check_size
from ._module import DTypeLike, Module


class Linear(Module):
    """``y = x W^T + b`` over the last axis, as ``torch.nn.Linear``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
        Without it, no ``bias`` parameter (and the ``bias`` attribute is None).
    dtype : numpy.float32 (default) or numpy.float64
    seed : int or None
        Seeds the initialisation: PyTorch's, ``weight`` and ``bias`` uniform in
        +-1/sqrt(in_features).
    backend : 'fused' (default) or 'reference'
        `fusedrnn.functional.linear_forward` / ``linear_backward`` (C++, the step kernel's GEMM,
        the bias fused into it) or their NumPy twins in `fusedrnn.reference`.

    Parameters: ``weight`` (out_features, in_features), ``bias`` (out_features,).

    Examples
    --------
    >>> head = Linear(256, 96, seed=0)
    >>> logits = head(np.zeros((50, 32, 256), np.float32))     # (50, 32, 96)
    >>> dx = head.backward(np.ones_like(logits))              # (50, 32, 256); grads filled
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
        backend: str = "fused",
    ) -> None:
        super().__init__(dtype, seed, backend)
        self.in_features = check_size(in_features, "in_features")
        self.out_features = check_size(out_features, "out_features")
        self._has_bias = bool(bias)
        bound = 1.0 / np.sqrt(self.in_features)
        params = {"weight": self._rng.uniform(-bound, bound, (self.out_features, self.in_features))}
        if self._has_bias:
            params["bias"] = self._rng.uniform(-bound, bound, self.out_features)
        self._set_parameters(params)

    @property
    def bias(self) -> np.ndarray | None:
        """The live bias array (out_features,), or None for a layer built with bias=False."""
        return self._params.get("bias")

    def _repr_args(self) -> list:
        return [
            str(self.in_features),
            str(self.out_features),
            *([] if self._has_bias else ["bias=False"]),
        ]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x @ weight.T + bias``.

        Parameters
        ----------
        x : (..., in_features), of the layer's dtype

        Returns
        -------
        y : (..., out_features)

        In training mode x is kept for backward (copied unless it is read-only, as the
        outputs of the recurrent layers are, so a caller may refill its buffer).
        """
        x = self._check_array(x, "x", (..., self.in_features), (..., "in_features"))
        # one GEMM over every leading axis
        y = self._backend.linear_forward(
            x.reshape(-1, self.in_features), self._params["weight"], self._params.get("bias")
        )
        y = y.reshape((*x.shape[:-1], self.out_features))
        self._keep_for_backward((x.copy() if x.flags.writeable else x) if self.training else None)
        return y

    def backward(self, d_output: np.ndarray, *, retain_graph: bool = False) -> np.ndarray:
        """Gradients through the last training-mode forward.

        Adds ``d_output^T x`` into ``weight.grad`` and the sum of ``d_output`` over every
        leading axis into ``bias.grad`` (a frozen parameter's is not computed).

        Parameters
        ----------
        d_output : (..., out_features), the shape of the output
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)

        Returns
        -------
        dx : (..., in_features), the shape of x
        """
        x = self._require_saved()
        self._check_array(
            d_output, "d_output", (*x.shape[:-1], self.out_features), (..., "out_features")
        )
        dx, _ = self._backend.linear_backward(
            x.reshape(-1, self.in_features),
            self._params["weight"],
            d_output.reshape(-1, self.out_features),
            grads=self.grads,
            bias=self._has_bias,
            frozen=self._frozen(),
        )
        self._release_saved(retain_graph)
        return dx.reshape(x.shape)


class Embedding(Module):
    """A lookup table of vectors, as ``torch.nn.Embedding``.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    padding_idx : int or None
        As in PyTorch: that row starts at zero and gets no gradient (so it stays what it is
        unless set by hand); a negative value counts from the end.
    dtype : numpy.float32 (default) or numpy.float64
    seed : int or None
        Seeds the initialisation: PyTorch's, standard normal.

    Parameters: ``weight`` (num_embeddings, embedding_dim).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        dtype: DTypeLike = np.float32,
        seed: int | None = None,
    ) -> None:
        super().__init__(dtype, seed)
        self.num_embeddings = check_size(num_embeddings, "num_embeddings")
        self.embedding_dim = check_size(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            padding_idx = check_size(padding_idx, "padding_idx", minimum=None)
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(
                    f"padding_idx must be within num_embeddings = "
                    f"{self.num_embeddings} (in [-{self.num_embeddings}, "
                    f"{self.num_embeddings})), got {padding_idx}"
                )
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        weight = self._rng.standard_normal((self.num_embeddings, self.embedding_dim))
        if padding_idx is not None:
            weight[padding_idx] = 0
        self._set_parameters({"weight": weight})

    _repr_fields = (("padding_idx", None),)

    def _repr_args(self) -> list:
        return [str(self.num_embeddings), str(self.embedding_dim), *super()._repr_args()]

    def forward(self, indices: np.ndarray) -> np.ndarray:
        """The rows ``weight[indices]``.

        Parameters
        ----------
        indices : (...), any integer dtype, each in [0, num_embeddings)

        Returns
        -------
        out : (..., embedding_dim), a fresh array
        """
        if not isinstance(indices, np.ndarray):
            raise TypeError(
                f"indices must be a numpy.ndarray of integers, got {type(indices).__name__}"
            )
        if indices.dtype.kind not in "iu":
            raise TypeError(f"indices must have an integer dtype, got {indices.dtype}")
        if indices.size:
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= self.num_embeddings:
                bad = low if low < 0 else high
                raise ValueError(
                    f"indices must be in [0, num_embeddings) = "
                    f"[0, {self.num_embeddings}), but hold {bad}"
                )
        out = self._params["weight"][indices]
        self._keep_for_backward(indices.copy() if self.training else None)
        return out

    def backward(self, d_output: np.ndarray, *, retain_graph: bool = False) -> None:
        """Adds the rows of ``d_output`` into ``weight.grad`` at the last forward's indices
        (repeated indices add up; ``padding_idx`` gets nothing). The indices have no gradient,
        so this returns None.

        Parameters
        ----------
        d_output : (..., embedding_dim), the shape of the output
        retain_graph : bool, default False (see `fusedrnn.Module.backward`)
        """
        indices = self._require_saved()
        self._check_array(
            d_output, "d_output", (*indices.shape, self.embedding_dim), (..., "embedding_dim")
        )
        flat = indices.reshape(-1)
        rows = d_output.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            flat, rows = flat[keep], rows[keep]
        if self.weight.grad is not None and flat.size:  # (None: frozen)
            # the rows of each index summed (sorted, stably: in their order), then added once:
            # np.add.at took 0.24 ms for the char-LM's 1024 rows of 32, this 0.07
            order = np.argsort(flat, kind="stable")
            ids = flat[order]
            starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
            self.weight.grad[ids[starts]] += np.add.reduceat(rows[order], starts, axis=0)
        self._release_saved(retain_graph)
