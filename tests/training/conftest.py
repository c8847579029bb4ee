"""What the tests of the char-LMs (the LSTM's and the transformer's) train on."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """Python-like text with structure to learn: ~20k characters, fixed."""
    rng = np.random.default_rng(0)
    names = ["value", "items", "count", "result", "name"]
    lines = []
    for _i in range(400):
        a, b = rng.choice(names, 2)
        lines.append(f"def get_{a}(self, {b}):\n    return self.{a} + {b}\n\n")
    path = tmp_path_factory.mktemp("text") / "code.py"
    path.write_text("".join(lines))
    return str(path)
