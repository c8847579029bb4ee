"""The threads rule of docs/torch.md: one OpenMP runtime in the process whichever of fusedrnn
and torch is imported first, and fusedrnn.torch's operators run the kernels (and the BLAS they
call) with torch.get_num_threads() threads, so that torch.set_num_threads is the one setting and
the two never run more threads than it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.torch.cases import torch  # noqa: F401  (skips the module without PyTorch)

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, os
{imports}
import fusedrnn.torch as ft
from fusedrnn._config import config

def openmp_runtimes():
    with open("/proc/self/maps") as maps:
        return sorted({{line.split()[-1] for line in maps if "libgomp" in line or "libomp" in line
                        or "libiomp" in line}})

lstm = ft.LSTM(3, 8, num_layers=2)
x = torch.randn(6, 4, 3)
counts = {{}}
for n in (1, 2):
    torch.set_num_threads(n)
    lstm(x)[0].sum().backward()
    counts[n] = (fusedrnn.get_num_threads(), config()["blas_threads"])
print(json.dumps({{"runtimes": openmp_runtimes(), "counts": counts,
                  "defaults": [torch.get_num_threads(), os.cpu_count()]}}))
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("first", ["torch", "fusedrnn"])
def test_one_openmp_runtime_and_torchs_thread_count(first):
    imports = (
        "import torch\nimport fusedrnn" if first == "torch" else "import fusedrnn\nimport torch"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=imports)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert len(report["runtimes"]) == 1, report["runtimes"]
    assert report["counts"]["1"][0] == 1
    assert report["counts"]["2"][0] == 2
    if report["counts"]["1"][1] is not None:  # scipy's OpenBLAS, when it is identified
        assert report["counts"]["1"][1] == 1
        assert report["counts"]["2"][1] == 2
    assert report["defaults"][0] <= report["defaults"][1]
