import os
import sys

import fusedrnn
import pytest
from fusedrnn import _core

# The shared helpers (tests/cells.py) import as a plain module.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(params=["auto", "team"])
def threading_mode(request):
    """'auto': the kernels' own choice; 'team': split even tiny time loops across two threads,
    one hidden unit each at least, so the multi-threaded path meets every shape."""
    before = fusedrnn.get_num_threads()
    if request.param == "team":
        fusedrnn.set_num_threads(2)
        _core._set_team_thresholds(0, 1)
    yield request.param
    _core._set_team_thresholds(1 << 15, 16)
    fusedrnn.set_num_threads(before)
