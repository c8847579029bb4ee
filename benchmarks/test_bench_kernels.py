"""pytest-benchmark suite over the full sweep of ``python -m fusedrnn bench --full``.

Run with ``pytest benchmarks/`` (kept out of the default test run, whose testpaths is tests/).
Cases, inputs and the calls themselves come from `fusedrnn.bench`, so this suite and the command
line measure the same thing. Each benchmark first checks its result against the reference; the
reference itself is benchmarked only where it takes milliseconds. Fused and reference of one case
and pass share a benchmark group, so the report puts them side by side.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import bench, functional, reference

DTYPE = np.float32
REFERENCE_MAX_FLOPS = 1e9  # the reference runs at a few GFLOP/s: above this it takes seconds

CASE_PASSES = [(case, p) for case in bench.SWEEPS["full"].cases for p in case.passes]


def _params(case_passes: list[tuple[bench.Case, str]]) -> list:
    """Parameters with ids ``-k`` can select, e.g.
    ``gru-cho-B16-T50-I128-H128-forward_backward``."""
    return [
        pytest.param(
            case,
            p,
            id=f"{case.variant.name}-B{case.B}-T{case.T}-I{case.I}-H{case.H}-{p.replace('+', '_')}",
        )
        for case, p in case_passes
    ]


def _checked_call(module, case: bench.Case, pass_name: str, benchmark):
    """The call to benchmark, checked against the reference first; sets its group and GFLOP."""
    inputs = bench.make_inputs(case, DTYPE)
    run = bench.numpy_pass(module, case, inputs, pass_name)
    expected = bench.numpy_pass(reference, case, inputs, bench.truth_pass(pass_name))()
    assert bench.compare(run(), expected, DTYPE) == []
    benchmark.group = f"{case.label} {pass_name}"
    benchmark.extra_info["gflop"] = case.flops(pass_name) / 1e9
    return run


@pytest.mark.parametrize(("case", "pass_name"), _params(CASE_PASSES))
def test_fused(benchmark, case: bench.Case, pass_name: str) -> None:
    benchmark(_checked_call(functional, case, pass_name, benchmark))


@pytest.mark.parametrize(
    ("case", "pass_name"),
    _params([(case, p) for case, p in CASE_PASSES if case.flops(p) <= REFERENCE_MAX_FLOPS]),
)
def test_reference(benchmark, case: bench.Case, pass_name: str) -> None:
    benchmark(_checked_call(reference, case, pass_name, benchmark))
