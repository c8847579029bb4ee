"""Peak memory of fused attention forward + backward grows linearly in the sequence length: the
kernels never hold an L x S matrix. Measured with tracemalloc, which sees numpy's allocations (the
outputs, lse, the gradients and the kernels' scratch, all numpy arrays made by the binding)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fusedrnn import functional


def peak_bytes(B, H, L, E, causal=False):
    """Peak bytes allocated during one forward + backward, beyond the inputs."""
    rng = np.random.default_rng(0)
    q, k, v, d_out = (rng.standard_normal((B, H, L, E)).astype(np.float32) for _ in range(4))
    tracemalloc.start()
    try:
        out, lse = functional.attention_forward(q, k, v, is_causal=causal)
        functional.attention_backward(q, k, v, out, lse, d_out, is_causal=causal)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def assert_linear(B, H, E, causal):
    small, large = peak_bytes(B, H, 1024, E, causal), peak_bytes(B, H, 4096, E, causal)
    inputs_small = 4 * B * H * 1024 * E * 4  # q, k, v, d_out
    # 4x the length: about 4x the memory (an L x S matrix would make it 16x)
    assert large < 4.5 * small, (small, large)
    # and far below one float32 L x S score matrix per head at L = 4096
    assert large < B * H * 4096 * 4096 * 4 / 4, large
    # the outputs (out, dq, dk, dv, lse) are about the inputs' size; scratch adds little
    assert small < 2 * inputs_small, (small, inputs_small)
    return small, large


@pytest.mark.parametrize("causal", [False, True])
def test_peak_memory_is_linear_in_length(causal):
    assert_linear(1, 2, 32, causal)


@pytest.mark.slow
def test_peak_memory_at_benchmark_size():
    """(4, 8, L, 64) float32 at L = 1024 and 4096, the sizes in the issue."""
    small, large = assert_linear(4, 8, 64, False)
    print(
        f"\npeak bytes beyond the inputs, fwd+bwd (4, 8, L, 64) float32: L=1024 {small / 2**20:.1f}"
        f" MiB, L=4096 {large / 2**20:.1f} MiB"
    )
