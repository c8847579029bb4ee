"""The benchmark sweep behind ``python -m fusedrnn bench``.

Every case is first validated: the fused kernels (``fusedrnn.functional``), the NumPy reference
(``fusedrnn.reference``) and, when it can be imported, PyTorch run the same pass on the same random
inputs, and the fused outputs and gradients must match the reference's. Only then is each of them
timed: the median of several calls after a warm-up call, each call including every conversion a
user pays for (for PyTorch, ``torch.from_numpy`` of the inputs and ``.numpy()`` of the results).

Times on a shared machine are noisy, so the table quotes ratios measured in the same run: the
fused speed-up over the reference and over PyTorch, and the fused GFLOP/s (from `flops`) as a
percentage of this machine's float32 GEMM ceiling (`gemm_ceiling`).

The modules, in the order a run uses them:

* `cases`: the variants, shapes and named sweeps (`SWEEPS`), and the FLOP counts.
* `implementations`: the inputs, the fused, reference and PyTorch passes, and `compare`.
* `timing`: `measure` and `thread_limit`.
* `machine`: the GEMM ceiling, the CPU's name, the memory high-water mark.
* `runner`: `run_sweep`, which validates and times every case into a `Report`.
* `report`: `Row` and `Report` (table, JSON, plot).

The same case list and inputs are used by the pytest-benchmark suite in ``benchmarks/``.
"""

from .cases import (
    PASSES,
    SWEEPS,
    TRAINING_PASSES,
    VARIANTS,
    Case,
    Sweep,
    Variant,
    attention_flops,
    cases_for,
    flops,
    shape_label,
)
from .implementations import (
    TOLERANCES,
    Outputs,
    compare,
    import_torch,
    make_inputs,
    numpy_pass,
    torch_pass,
    truth_pass,
)
from .machine import BUSY_LOAD, GEMM_SIZE, MemoryPeak, cpu_name, gemm_ceiling
from .report import PLOT_HINT, Report, Row, plot, write_json
from .runner import Progress, run_case, run_sweep
from .timing import (
    MIN_TIMED_SHARE,
    REFERENCE_BUDGET_SHARE,
    SETTLE_SECONDS,
    Timing,
    measure,
    thread_limit,
)

__all__ = [
    "BUSY_LOAD",
    "GEMM_SIZE",
    "MIN_TIMED_SHARE",
    "PASSES",
    "PLOT_HINT",
    "REFERENCE_BUDGET_SHARE",
    "SETTLE_SECONDS",
    "SWEEPS",
    "TOLERANCES",
    "TRAINING_PASSES",
    "VARIANTS",
    "Case",
    "MemoryPeak",
    "Outputs",
    "Progress",
    "Report",
    "Row",
    "Sweep",
    "Timing",
    "Variant",
    "attention_flops",
    "cases_for",
    "compare",
    "cpu_name",
    "flops",
    "gemm_ceiling",
    "import_torch",
    "make_inputs",
    "measure",
    "numpy_pass",
    "plot",
    "run_case",
    "run_sweep",
    "shape_label",
    "thread_limit",
    "torch_pass",
    "truth_pass",
    "write_json",
]
