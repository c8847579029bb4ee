"""The distribution `fusedrnn.sampling.sample` draws from, written out directly for one row, for
the tests of sampling and of `fusedrnn.decoding.sample_decode`."""

from __future__ import annotations

import numpy as np


def processed_distribution(
    logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> np.ndarray:
    """Hugging Face's order: ``softmax(logits / temperature)``; the ``top_k`` most likely
    classes (ties: the lower index first), renormalised; of those, the most likely ones, one at
    a time, until their probability reaches ``top_p``, renormalised."""
    z = np.asarray(logits, np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    kept = order[: top_k or len(p)]
    q = np.zeros_like(p)
    q[kept] = p[kept] / p[kept].sum()
    nucleus, mass = [], 0.0
    for i in kept:
        nucleus.append(i)
        mass += q[i]
        if mass >= top_p:
            break
    r = np.zeros_like(p)
    r[nucleus] = q[nucleus] / q[nucleus].sum()
    return r
