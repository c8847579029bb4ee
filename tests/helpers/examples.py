"""The programs in examples/ loaded as modules, for tests of their parts."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


@contextlib.contextmanager
def example_module(name: str) -> Iterator:
    """``examples/<name>.py`` as a module, registered in ``sys.modules`` under its name while
    the context lasts (pickle and dataclasses look a module up there). The environment variables
    an example sets when it loads (OPENBLAS_NUM_THREADS, OMP_WAIT_POLICY: meant for its own
    process) are taken back at once: left in the test process they reached every later test's
    subprocess (an OpenBLAS started with one thread, then given two, spins 0.1 s)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    environment = dict(os.environ)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    try:
        yield module
    finally:
        del sys.modules[name]
