"""Helpers shared by the attention tests: inputs, one forward+backward on either backend, and the
comparison of two runs with the tolerances of tests/cells.py."""

from __future__ import annotations

import numpy as np

from fusedrnn import functional, reference
from tests.helpers.cells import assert_close

BACKENDS = {"fused": functional, "reference": reference}


def make_qkv(
    batch=(2,), Hq=2, Hkv=2, L=5, S=7, E=4, Ev=3, dtype=np.float64, seed=0, no_head_axis=False
):
    """q (*batch, Hq, L, E), k (*batch, Hkv, S, E), v (*batch, Hkv, S, Ev), and d_out; 2-D
    (L, E) arrays with ``no_head_axis``."""
    rng = np.random.default_rng(seed)
    if no_head_axis:
        shapes = ((L, E), (S, E), (S, Ev), (L, Ev))
    else:
        b = tuple(batch)
        shapes = ((*b, Hq, L, E), (*b, Hkv, S, E), (*b, Hkv, S, Ev), (*b, Hq, L, Ev))
    q, k, v, d_out = (rng.standard_normal(s).astype(dtype) for s in shapes)
    return q, k, v, d_out


def run(backend, q, k, v, d_out, **options):
    """out, lse and the three gradients of one call on ``backend`` ("fused" / "reference")."""
    impl = BACKENDS[backend]
    mask = options.pop("attn_mask", None)
    out, lse = impl.attention_forward(q, k, v, mask, **options)
    dq, dk, dv = impl.attention_backward(q, k, v, out, lse, d_out, mask, **options)
    return {"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv}


def assert_runs_close(actual: dict, desired: dict, dtype, context=""):
    """Every result within the dtype's tolerance; lse compared where finite, and infinite in the
    same places."""
    for name in ("out", "dq", "dk", "dv"):
        assert_close(actual[name], desired[name], dtype, f"{context} {name}")
    finite = np.isfinite(desired["lse"])
    np.testing.assert_array_equal(np.isfinite(actual["lse"]), finite, err_msg=f"{context} lse")
    assert_close(actual["lse"][finite], desired["lse"][finite], dtype, f"{context} lse")
