"""The arguments of truncated backpropagation through time, checked once for both backends."""

from __future__ import annotations

from ._checks import check_size


def truncation_steps(truncate, truncate_stride, bidirectional: bool) -> tuple:
    """(k2, k1) for the kernels, 0 for full BPTT; checks the arguments."""
    if truncate is None:
        if truncate_stride is not None:
            raise ValueError("truncate_stride needs truncate")
        return 0, 0
    k2 = check_size(truncate, "truncate")
    k1 = k2 if truncate_stride is None else check_size(truncate_stride, "truncate_stride")
    if k2 < k1:
        raise ValueError(f"truncate (k2 = {k2}) must be >= truncate_stride (k1 = {k1})")
    if bidirectional:
        raise ValueError(
            "truncate needs a unidirectional layer: the reverse direction runs "
            "from the end of the sequence"
        )
    return k2, k1
