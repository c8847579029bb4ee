"""The house's structure, pinned: one module base under every layer, each fact and each check in one
place, the fused path apart from the reference, and the batch packing made once per forward."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional, reference
from fusedrnn._module import Module
from fusedrnn._spec import GATES, stack_param_names

PACKAGE = Path(fusedrnn.__file__).parent

MODULE_CLASSES = [
    fusedrnn.LSTM,
    fusedrnn.GRU,
    fusedrnn.RNN,
    fusedrnn.LSTMCell,
    fusedrnn.GRUCell,
    fusedrnn.RNNCell,
    fusedrnn.MultiheadAttention,
    fusedrnn.AdditiveAttention,
    fusedrnn.ScaledDotProductAttention,
    fusedrnn.Linear,
    fusedrnn.Embedding,
    fusedrnn.CrossEntropyLoss,
]
# what every module does the one way the base does it
SHARED = [
    "__call__",
    "__getattr__",
    "__repr__",
    "named_parameters",
    "parameters",
    "state_dict",
    "load_state_dict",
    "zero_grad",
    "train",
    "eval",
    "_set_parameters",
    "_check_array",
    "_keep_for_backward",
    "_require_saved",
    "_backend",
]


@pytest.mark.parametrize("cls", MODULE_CLASSES, ids=lambda c: c.__name__)
def test_every_module_has_the_one_base_and_does_not_redo_it(cls):
    assert issubclass(cls, Module)
    for name in SHARED:
        owners = [klass.__name__ for klass in cls.__mro__[:-1] if name in vars(klass)]  # not object
        assert owners == ["Module"], f"{cls.__name__}.{name} is defined again by {owners[:-1]}"


def make(cls, backend="fused"):
    sizes = {
        fusedrnn.MultiheadAttention: (4, 2),
        fusedrnn.AdditiveAttention: (3, 4, 5),
        fusedrnn.Linear: (3, 4),
        fusedrnn.Embedding: (5, 3),
    }
    if cls is fusedrnn.Embedding:
        return cls(*sizes[cls])
    if cls in (fusedrnn.ScaledDotProductAttention, fusedrnn.CrossEntropyLoss):
        return cls(backend=backend)
    return cls(*sizes.get(cls, (3, 4)), backend=backend)


@pytest.mark.parametrize(
    "cls", [c for c in MODULE_CLASSES if c is not fusedrnn.Embedding], ids=lambda c: c.__name__
)
def test_one_backend_table_with_one_message(cls):
    with pytest.raises(ValueError, match="backend") as error:
        make(cls, backend="gpu")
    assert str(error.value) == "backend must be 'fused' or 'reference', got 'gpu'"
    assert make(cls, "fused")._backend is functional
    assert make(cls, "reference")._backend is reference


def test_one_backend_table_for_the_attention_function_too():
    q = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"^backend must be 'fused' or 'reference', got 'gpu'$"):
        fusedrnn.scaled_dot_product_attention(q, q, q, backend="gpu")


@pytest.mark.parametrize(
    "cls", [c for c in MODULE_CLASSES if not c.__name__.endswith("Cell")], ids=lambda c: c.__name__
)
def test_backward_before_any_forward_says_why(cls):  # (a cell has a tape of steps instead)
    with pytest.raises(
        RuntimeError,
        match=f"^{cls.__name__}.backward needs .*forward first: no forward has run yet$",
    ):
        make(cls).backward(np.zeros(1, np.float32))


# ---------------------------------------------------------------- each fact once


def test_parameter_names_come_from_the_one_spec():
    lstm = fusedrnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, bias=False)
    assert list(lstm.state_dict()) == stack_param_names("lstm", 2, True, False, 2)
    assert functional.stack_param_names is stack_param_names
    for mode, cls in (("lstm", fusedrnn.LSTM), ("gru", fusedrnn.GRU), ("rnn", fusedrnn.RNN)):
        assert cls(3, 4).weight_ih_l0.shape == (GATES[mode] * 4, 3)
        assert cls._mode == mode
    # kept for the benchmark, which reads the gate counts there
    assert reference._common.GATES is GATES


BAD_LENGTHS = {  # lengths for T = 4, B = 3 -> (error, message)
    "float": ([4.0, 2.0, 1.0], TypeError, "lengths must hold integers, but has dtype float64"),
    "count": (
        [4, 2],
        ValueError,
        "lengths must have shape (B,) = (3,), one per batch item, but has (2,)",
    ),
    "range": ([4, 0, 1], ValueError, "lengths must be in 1..T = 1..4, but lengths[1] = 0"),
}


@pytest.mark.parametrize("case", BAD_LENGTHS)
def test_lengths_are_checked_by_one_function_with_one_message(case):
    lengths, error, message = BAD_LENGTHS[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2))
    layer = fusedrnn.LSTM(2, 3, dtype=np.float64, seed=0)
    params = layer.state_dict()
    h = np.zeros((3, 3))
    calls = {
        "LSTM": lambda: layer(x, lengths=lengths),
        "LSTM reference": lambda: fusedrnn.LSTM(2, 3, dtype=np.float64, backend="reference")(
            x, lengths=lengths
        ),
        "functional.stack_forward": lambda: functional.stack_forward(
            "lstm", x, None, params, 1, lengths=lengths
        ),
        "reference.stack_forward": lambda: reference.stack_forward(
            "lstm", x, None, params, 1, lengths=lengths
        ),
        "reference.lstm_forward": lambda: reference.lstm_forward(
            x,
            h,
            h,
            params["weight_ih_l0"],
            params["weight_hh_l0"],
            params["bias_ih_l0"],
            params["bias_hh_l0"],
            lengths=lengths,
        ),
    }
    for name, call in calls.items():
        with pytest.raises(error) as raised:
            call()
        assert str(raised.value) == message, name


# ---------------------------------------------------------------- the fused path


FUSED_PATH = [
    "functional.py",
    "_checks.py",
    "_spec.py",
    "_attention_args.py",
    "_truncation.py",
    "_module.py",
    "attention.py",
    "nn.py",
    "losses.py",
    "layers/__init__.py",
    "layers/_base.py",
    "layers/recurrent.py",
    "layers/cells.py",
]


def imports_of_reference(path: Path) -> list:
    """(line, enclosing function or None) of every import that names the reference package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = (
                child.name
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                else function
            )
            if isinstance(child, ast.ImportFrom):
                names = [child.module or ""] + [
                    f"{child.module or ''}.{a.name}" for a in child.names
                ]
                if any("reference" in n.split(".") for n in names):
                    found.append((child.lineno, function))
            elif isinstance(child, ast.Import) and any(
                "reference" in a.name.split(".") for a in child.names
            ):
                found.append((child.lineno, function))
            visit(child, inner)

    visit(tree, None)
    return found


@pytest.mark.parametrize("name", FUSED_PATH)
def test_the_fused_path_imports_nothing_from_the_reference(name):
    found = imports_of_reference(PACKAGE / name)
    if name == "_module.py":  # the backend table, when a module asks for backend='reference'
        assert found and all(function == "backend_module" for _, function in found), found
    else:
        assert not found, f"{name} imports the reference at lines {[n for n, _ in found]}"


def test_the_import_check_sees_imports():
    """The check above would catch an import (so its passing means something)."""
    assert imports_of_reference(PACKAGE / "reference" / "stack.py") == []  # relative, own package
    assert imports_of_reference(PACKAGE / "__init__.py")  # `from . import ..., reference, ...`


# ---------------------------------------------------------------- the batch packing, made once


def stack_setup(seed=0):
    rng = np.random.default_rng(seed)
    layer = fusedrnn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=seed)
    x = rng.standard_normal((5, 4, 3))
    return layer, x, [2, 5, 1, 4]


def test_stack_backward_reuses_the_packing_of_its_forward(monkeypatch):
    layer, x, lengths = stack_setup()
    params = layer.state_dict()
    y, _h_n, _c_n, saved = functional.stack_forward("lstm", x, None, params, 2, True, lengths)
    assert saved.packing is not None
    np.testing.assert_array_equal(saved.packing.unsorted_lengths(), lengths)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    want = functional.stack_backward(
        "lstm", x, None, params, 2, y, saved, dy, bidirectional=True, lengths=lengths
    )

    def no_second_packing(*args, **kwargs):
        raise AssertionError("stack_backward made the batch packing again")

    monkeypatch.setattr(functional, "_Packing", no_second_packing)
    got = functional.stack_backward(
        "lstm", x, None, params, 2, y, saved, dy, bidirectional=True, lengths=lengths
    )
    for a, b in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(a, b)
    for name in params:
        np.testing.assert_array_equal(got[3][name], want[3][name])
    with pytest.raises(AssertionError, match="made the batch packing again"):
        functional.stack_forward("lstm", x, None, params, 2, True, lengths)  # the probe works


def test_a_layer_backward_reuses_the_packing_of_its_forward(monkeypatch):
    layer, x, lengths = stack_setup()
    twin = fusedrnn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    dy = np.random.default_rng(1).standard_normal((5, 4, 8))
    twin(x, lengths=lengths)
    want = twin.backward(dy)  # with the packing made freely
    layer(x, lengths=lengths)

    def no_second_packing(*args, **kwargs):
        raise AssertionError("backward made the batch packing again")

    monkeypatch.setattr(functional, "_Packing", no_second_packing)
    dx, (dh0, _dc0) = layer.backward(dy)
    np.testing.assert_array_equal(dx, want[0])
    np.testing.assert_array_equal(dh0, want[1][0])
    for name, grad in layer.grads.items():
        np.testing.assert_array_equal(grad, twin.grads[name])


def test_stack_backward_refuses_lengths_other_than_its_forwards():
    layer, x, lengths = stack_setup()
    params = layer.state_dict()
    y, _, _, saved = functional.stack_forward("lstm", x, None, params, 2, True, lengths)
    with pytest.raises(
        ValueError,
        match=r"lengths must be those given to the stack_forward that "
        r"made saved \(\[2, 5, 1, 4\]\), got \[5, 2, 1, 4\]",
    ):
        functional.stack_backward(
            "lstm", x, None, params, 2, y, saved, bidirectional=True, lengths=[5, 2, 1, 4]
        )
    with pytest.raises(ValueError, match=r"got None"):
        functional.stack_backward("lstm", x, None, params, 2, y, saved, bidirectional=True)
    with pytest.raises(
        TypeError,
        match="saved must be the StackSaved a training stack_forward returned, got ndarray",
    ):
        functional.stack_backward(
            "lstm", x, None, params, 2, y, saved.workspace, bidirectional=True, lengths=lengths
        )
    # full lengths are the same as none: nothing to pack either way
    y, _, _, saved = functional.stack_forward("lstm", x, None, params, 2, True, [5, 5, 5, 5])
    assert saved.packing is None
    full = functional.stack_backward(
        "lstm", x, None, params, 2, y, saved, bidirectional=True, lengths=[5, 5, 5, 5]
    )
    none = functional.stack_backward("lstm", x, None, params, 2, y, saved, bidirectional=True)
    np.testing.assert_array_equal(full[0], none[0])
