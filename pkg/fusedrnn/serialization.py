"""`save` and `load`: a whole model, a state dict or an optimizer's state in one call each, as
``torch.save`` / ``torch.load``.

Both use pickle, which keeps a tied parameter one object (one gradient) across the round trip.
Like ``torch.load(weights_only=False)``, `load` runs whatever code the file names: load only
files you trust; for weights alone from an untrusted source, ``np.savez(path,
**model.state_dict())`` and ``model.load_state_dict(np.load(path))`` read plain arrays.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, BinaryIO


def save(obj: Any, f: str | os.PathLike | BinaryIO) -> None:
    """Write ``obj`` (a module, ``model.state_dict()``, ``optimizer.state_dict()``, or a dict
    of them, e.g. a checkpoint) to the path or binary file ``f``."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as file:
            pickle.dump(obj, file, protocol=pickle.HIGHEST_PROTOCOL)
    elif hasattr(f, "write"):
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        raise TypeError(f"f must be a path or a binary file, got {type(f).__name__}")


def load(f: str | os.PathLike | BinaryIO) -> Any:
    """Read back what `save` wrote to the path or binary file ``f`` (trusted files only)."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as file:
            return pickle.load(file)
    if hasattr(f, "read"):
        return pickle.load(f)
    raise TypeError(f"f must be a path or a binary file, got {type(f).__name__}")
