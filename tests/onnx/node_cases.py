"""ONNX's node test cases, generated once per test process.

``onnx.backend.test.case.node.collect_testcases(op_type)`` builds its cases on the first call and
only for that call's operator; a later call for another operator finds nothing. Both ONNX test
files of this folder take their cases from here: one call, with no operator, for all.
"""

from __future__ import annotations

import functools
import warnings


@functools.cache
def all_node_cases() -> tuple:
    """Every node test case of the installed onnx (its model, data sets and name)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # some operators' generators warn
        warnings.simplefilter("ignore", RuntimeWarning)
        return tuple(collect_testcases())
