"""The arguments of truncated backpropagation through time, checked once for both backends."""

from __future__ import annotations

import numpy as np


def truncation_steps(truncate, truncate_stride, bidirectional: bool) -> tuple:
    """(k2, k1) for the kernels, 0 for full BPTT; checks the arguments."""
    if truncate is None:
        if truncate_stride is not None:
            raise ValueError("truncate_stride needs truncate")
        return 0, 0
    for name, value in (("truncate", truncate), ("truncate_stride", truncate_stride)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    k2 = int(truncate)
    k1 = k2 if truncate_stride is None else int(truncate_stride)
    if k2 < 1 or k1 < 1:
        raise ValueError(f"truncate and truncate_stride must be >= 1, got {k2} and {k1}")
    if k2 < k1:
        raise ValueError(f"truncate (k2 = {k2}) must be >= truncate_stride (k1 = {k1})")
    if bidirectional:
        raise ValueError("truncate needs a unidirectional layer: the reverse direction runs "
                         "from the end of the sequence")
    return k2, k1
