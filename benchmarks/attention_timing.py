"""Timing of fused scaled dot-product attention against the NumPy reference and PyTorch.

    PYTHONPATH=pkg python benchmarks/attention_timing.py [--threads 2] [--repeat 7] [--no-reference]

A standalone script for the attention rows (the sweep behind ``python -m fusedrnn bench`` is
written elsewhere). Each case is validated first: the fused float32 result against the float64
reference. Times are medians after a warm-up. Each implementation is timed in a block of its own,
after a pause, so that the spinning worker threads of another thread pool (OpenBLAS's, torch's
OpenMP runtime) do not eat into its time; ratios are to the fused kernel in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import fusedrnn
import numpy as np
from fusedrnn import functional, reference

CASES = [(8, 8, 256, 64), (4, 8, 1024, 64)]


def flops(B, H, L, E, causal, backward):
    """2 x the multiply-adds of the GEMMs: forward q k^T and p v, backward five of that size."""
    pairs = L * (L + 1) / 2 if causal else L * L
    return 2 * B * H * pairs * E * (2 + (5 if backward else 0))


def median_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def numpy_runs(impl, q, k, v, d_out, causal):
    """fwd and fwd+bwd of one backend (fusedrnn.functional or fusedrnn.reference)."""

    def forward():
        return impl.attention_forward(q, k, v, is_causal=causal)

    def forward_backward():
        out, lse = forward()
        return impl.attention_backward(q, k, v, out, lse, d_out, is_causal=causal)

    return {"fwd": forward, "fwd+bwd": forward_backward}


def torch_runs(torch, q, k, v, d_out, causal):
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    t_out = torch.from_numpy(d_out)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def forward():
        with torch.no_grad():
            return sdpa(tq, tk, tv, is_causal=causal)

    def forward_backward():
        out = sdpa(tq, tk, tv, is_causal=causal)
        out.backward(t_out)
        tq.grad = tk.grad = tv.grad = None

    return {"fwd": forward, "fwd+bwd": forward_backward}


def validate(q, k, v, causal):
    out, _ = functional.attention_forward(q[:1], k[:1], v[:1], is_causal=causal)
    exact, _ = reference.attention_forward(*(x[:1].astype(np.float64) for x in (q, k, v)),
                                           is_causal=causal)
    err = float(np.max(np.abs(out - exact)))
    if err > 1e-4:
        raise AssertionError(f"fused attention differs from the reference by {err}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    fusedrnn.set_num_threads(args.threads)
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
        else:
            torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} isa={fusedrnn._core.active_isa()} "
          f"torch={torch.__version__ if torch else 'not installed'}")
    print(f"{'case':<26}{'pass':<9}{'fused ms':>9}{'GFLOP/s':>9}{'ref ms':>9}{'ref/fused':>10}"
          f"{'torch ms':>9}{'torch/fused':>12}")
    for B, H, L, E in CASES:
        q, k, v, d_out = (rng.standard_normal((B, H, L, E)).astype(np.float32) for _ in range(4))
        for causal in (False, True):
            validate(q, k, v, causal)
            times = {}
            blocks = {"fused": numpy_runs(functional, q, k, v, d_out, causal)}
            if not args.no_reference:
                blocks["reference"] = numpy_runs(reference, q, k, v, d_out, causal)
            if torch is not None:
                blocks["torch"] = torch_runs(torch, q, k, v, d_out, causal)
            for name, runs in blocks.items():
                time.sleep(0.3)  # let the previous block's worker threads go to sleep
                repeat = max(2, args.repeat // 3) if name == "reference" else args.repeat
                times[name] = {p: median_time(fn, repeat) for p, fn in runs.items()}
            for p in ("fwd", "fwd+bwd"):
                tf = times["fused"][p]
                line = f"({B},{H},{L},{E}) {'causal' if causal else 'full':<7}{'':<4}{p:<9}"
                line += f"{tf * 1e3:>9.1f}{flops(B, H, L, E, causal, p != 'fwd') / tf / 1e9:>9.1f}"
                for other in ("reference", "torch"):
                    t = times.get(other, {}).get(p)
                    line += f"{t * 1e3:>9.1f}{t / tf:>{10 if other == 'reference' else 12}.2f}" \
                        if t else f"{'-':>9}{'-':>{10 if other == 'reference' else 12}}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
