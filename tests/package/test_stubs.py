"""The type stubs of the compiled modules (``fusedrnn/_core.pyi``, ``_blas.pyi``) and the
``py.typed`` marker, as installed beside the modules.

Each stub must name exactly what its module exports, each function with the module's parameters
(names, order, which have defaults), so a stub cannot drift from csrc/bindings/: after changing a
binding, regenerate ``_core.pyi`` with ``python tools/generate_stubs.py``.
"""

import ast
import inspect
import re
from pathlib import Path

import pytest

import fusedrnn
from fusedrnn import _blas, _core

PACKAGE_DIR = Path(fusedrnn.__file__).parent
REGENERATE = "regenerate it with `python tools/generate_stubs.py`"

# A parameter as (name, has a default); *args and **kwargs keep their stars.
Parameter = tuple[str, bool]


def stub_tree(module) -> ast.Module:
    path = PACKAGE_DIR / f"{module.__name__.rpartition('.')[2]}.pyi"
    assert path.is_file(), f"{path} is missing (the wheel must ship it: pyproject.toml)"
    return ast.parse(path.read_text(), filename=str(path))


def stub_names(tree: ast.Module) -> set[str]:
    """Top-level functions, classes and annotated attributes of a stub (``__all__`` aside)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names - {"__all__"}


def module_names(module) -> set[str]:
    return {name for name in dir(module) if not (name.startswith("__") and name.endswith("__"))}


def stub_signatures(tree: ast.Module) -> dict[str, list[list[Parameter]]]:
    """Each top-level function's parameter lists (several for an overloaded function)."""
    signatures: dict[str, list[list[Parameter]]] = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        args = node.args
        positional = args.posonlyargs + args.args
        first_default = len(positional) - len(args.defaults)
        params = [(a.arg, i >= first_default) for i, a in enumerate(positional)]
        if args.vararg:
            params.append(("*" + args.vararg.arg, False))
        params += [(a.arg, d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
        if args.kwarg:
            params.append(("**" + args.kwarg.arg, False))
        signatures.setdefault(node.name, []).append(params)
    return signatures


def split_top_level(text: str) -> list[str]:
    """``a: list[int, int] = (1, 2), b`` -> the two parameters: commas outside brackets/quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def pybind11_signatures(function) -> list[list[Parameter]]:
    """The parameter lists of a pybind11 function, read from the signature lines pybind11 writes
    at the top of its docstring (``1. name(...) -> ...`` for each overload)."""
    name = function.__name__
    pattern = rf"^(?:\d+\. )?{re.escape(name)}\((.*)\)(?: -> .*)?$"
    lines = re.findall(pattern, function.__doc__, re.MULTILINE)
    if len(lines) > 1:  # overloaded: the first line is name(*args, **kwargs), then one per overload
        lines = lines[1:]
    assert lines, f"no signature line in the docstring of {name}: {function.__doc__!r}"
    signatures = []
    for line in lines:
        params = []
        for part in split_top_level(line):
            if part in ("/", "*"):
                continue
            params.append((part.split(":")[0].split("=")[0].strip(), " = " in part))
        signatures.append(params)
    return signatures


def cython_signatures(function) -> list[list[Parameter]]:
    kinds = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [
        [
            (kinds.get(p.kind, "") + p.name, p.default is not p.empty)
            for p in inspect.signature(function).parameters.values()
        ]
    ]


@pytest.mark.parametrize("module", [_core, _blas], ids=["_core", "_blas"])
def test_stub_names_exactly_what_the_module_exports(module):
    tree = stub_tree(module)
    in_module, in_stub = module_names(module), stub_names(tree)
    assert in_module - in_stub == set(), (
        f"{module.__name__} exports names its stub lacks: {REGENERATE}"
    )
    assert in_stub - in_module == set(), (
        f"the stub of {module.__name__} names what it does not export: {REGENERATE}"
    )


@pytest.mark.parametrize(
    ("module", "read_signatures"),
    [(_core, pybind11_signatures), (_blas, cython_signatures)],
    ids=["_core", "_blas"],
)
def test_stub_functions_take_the_module_functions_parameters(module, read_signatures):
    stubs = stub_signatures(stub_tree(module))
    functions = {name for name in module_names(module) if callable(getattr(module, name))}
    assert functions, f"{module.__name__} exports no function"
    for name in sorted(functions):
        assert stubs.get(name) == read_signatures(getattr(module, name)), (
            f"the stub of {module.__name__}.{name} has other parameters than the function: "
            f"{REGENERATE}"
        )


def test_the_pybind11_signature_reader_sees_parameters_and_defaults():
    # Not a stub check: it guards the reader above, whose mistakes would hide a drifted stub.
    assert pybind11_signatures(_core.lstm_workspace_size) == [
        [("T", False), ("B", False), ("H", False), ("P", True)]
    ]
    assert split_top_level("a: dict[str, int] = {'x,y': 1}, b: str = ','") == [
        "a: dict[str, int] = {'x,y': 1}",
        "b: str = ','",
    ]


def test_the_package_is_marked_typed():
    assert (PACKAGE_DIR / "py.typed").is_file(), "fusedrnn/py.typed is missing (PEP 561)"
