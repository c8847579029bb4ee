"""Fixtures and hooks of the whole suite (helpers shared by tests live in tests/helpers/)."""

import pytest

import fusedrnn
from fusedrnn import _core

ISAS = [isa for isa in ("baseline", "avx2", "avx512") if _core.isa_supported(isa)]


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test on each compiled instruction set this CPU has, then restore the active one."""
    default = _core.active_isa()
    _core.select_isa(request.param)
    yield request.param
    _core.select_isa(default)


@pytest.fixture(params=["auto", "team"])
def threading_mode(request):
    """'auto': the kernels' own choice; 'team': split even tiny time loops across two threads,
    one hidden unit each at least, so the multi-threaded path meets every shape."""
    if request.param == "team" and not _core.have_openmp():
        pytest.skip("built without OpenMP: the kernels have no team of threads")
    before = fusedrnn.get_num_threads()
    defaults = _core._team_thresholds()
    if request.param == "team":
        fusedrnn.set_num_threads(2)
        _core._set_team_thresholds(0, 1, False)
    yield request.param
    _core._set_team_thresholds(*defaults)
    fusedrnn.set_num_threads(before)


def pytest_addoption(parser):
    parser.addoption(
        "--isa",
        default=None,
        help="run every test on this instruction-set path of the kernels (baseline, avx2, avx512; "
        "the CPU must have it) instead of the widest the CPU has; tools/sanitize.sh uses it. "
        "tests/package checks the choice made without forcing: leave it out then",
    )


def pytest_configure(config):
    isa = config.getoption("--isa")
    if isa is not None:
        _core.select_isa(isa)  # ValueError when unknown or not supported by this CPU


def pytest_report_header(config):
    """Which build the tests run against (tools/sanitize.sh checks it is the installed one), and
    the instruction-set path in use."""
    return [f"fusedrnn._core: {_core.__file__}", f"fusedrnn isa: {_core.active_isa()}"]


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run only when asked for (``-m slow``), as pyproject.toml says: a plain
    ``python -m pytest`` (CI) skips them."""
    if config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
