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

from tests.torch.cases import torch

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps"
)


def _check(report: dict) -> None:
    assert len(report["runtimes"]) == 1, report["runtimes"]
    for n in (1, 2):
        kernels, blas = report["counts"][str(n)]
        assert kernels == n
        assert blas in (None, n)  # None: scipy's OpenBLAS not identified (another BLAS)
    torch_default, cpus = report["defaults"]
    assert torch_default <= cpus


def test_fusedrnn_imported_first():
    """This process: the test suite's conftest imported fusedrnn before anything imported
    torch."""
    from tests.torch import threads_probe  # imports torch: after the skip of cases.py

    before = torch.get_num_threads()
    try:
        _check(json.loads(threads_probe.report()))
    finally:
        torch.set_num_threads(before)


def test_torch_imported_first():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.torch.threads_probe"],
        capture_output=True, text=True, timeout=120, env=env, cwd=root, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _check(json.loads(result.stdout.splitlines()[-1]))


def test_the_teams_run_on_pytorchs_openmp_threads_and_show_config_says_so():
    """Once fusedrnn.torch has run an operator the kernels' teams run on OpenMP's threads,
    PyTorch's own, instead of a second set that would find the cores taken by PyTorch's spinning
    threads."""
    from fusedrnn import _config, _core
    from fusedrnn.torch import LSTM

    LSTM(2, 3)(torch.zeros(4, 1, 2))

    assert _core.openmp_teams() == _core.have_openmp()
    if _core.have_openmp():
        assert _config.config()["idle_threads"].startswith("OpenMP's threads, shared with PyTorch")
