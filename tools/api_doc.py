"""Write docs/api.md, the API reference, from the signatures and docstrings of fusedrnn.

    PYTHONPATH=pkg python tools/api_doc.py           # rewrite docs/api.md
    PYTHONPATH=pkg python tools/api_doc.py --check   # exit 1 if docs/api.md is not current

Every name of ``fusedrnn.__all__`` gets a section: classes with each public method and property,
functions with their signature, modules with each of their public functions. A method that
several classes share (an inherited ``state_dict``, say) is written out once, under the first
class that has it, and referred to from the others. tests/package/test_docs.py checks that the
committed file is what this script writes, so a changed docstring shows up as a failing test
until the file is regenerated.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import fusedrnn

API_FILE = Path(__file__).resolve().parents[1] / "docs" / "api.md"

# The order of the reference: what a user meets first comes first. A public name missing here
# still gets a section, under "Other".
GROUPS: list[tuple[str, list[str]]] = [
    ("Modules and parameters", ["Module", "Parameter", "Sequential", "ModuleList", "ModuleDict"]),
    ("Recurrent layers", ["LSTM", "GRU", "RNN"]),
    ("Cells", ["LSTMCell", "GRUCell", "RNNCell"]),
    (
        "Attention",
        [
            "scaled_dot_product_attention",
            "ScaledDotProductAttention",
            "MultiheadAttention",
            "AdditiveAttention",
        ],
    ),
    (
        "Transformer",
        [
            "TransformerDecoderBlock",
            "SinusoidalPositionalEncoding",
            "LearnedPositionalEncoding",
        ],
    ),
    ("Activations", ["ReLU", "GELU", "Tanh", "Sigmoid"]),
    (
        "Training",
        [
            "Embedding",
            "Linear",
            "Dropout",
            "LogSoftmax",
            "CrossEntropyLoss",
            "NLLLoss",
            "MSELoss",
            "SGD",
            "Adam",
            "clip_grad_norm_",
            "clip_grad_value_",
            "save",
            "load",
        ],
    ),
    (
        "Configuration",
        ["show_config", "set_num_threads", "get_num_threads", "empty_cache", "__version__"],
    ),
    ("Modules", ["functional", "reference", "optim", "sampling", "decoding", "distributed"]),
]

HEADER = """\
# API reference

Every public name of `fusedrnn` (`fusedrnn.__all__`), with its signature and docstring: shapes
use `T` steps, `B` batch items, `L` layers, `D` directions (2 if bidirectional). Generated from
the docstrings by `tools/api_doc.py`; do not edit by hand, run
`PYTHONPATH=pkg python tools/api_doc.py` instead (the tests check that this file is current).
How the layers behave where PyTorch leaves a choice: [layers.md](layers.md); the kernels'
contract: [kernels.md](kernels.md).
"""


def _text_block(text: str) -> str:
    if "```" in text:
        raise ValueError(f"a docstring holds a code fence, which would end its block: {text!r}")
    return f"```text\n{text}\n```\n"


def _annotation(annotation: object) -> str:
    # Modules written with `from __future__ import annotations` give strings (a NamedTuple's
    # fields: ForwardRefs to them): shown unquoted.
    annotation = getattr(annotation, "__forward_arg__", annotation)
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _default(value: object) -> str:
    if inspect.isclass(value):  # dtype=numpy.float32 rather than <class 'numpy.float32'>
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def _parameter(parameter: inspect.Parameter) -> str:
    text = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(
        parameter.kind, ""
    ) + parameter.name
    if parameter.annotation is not inspect.Parameter.empty:
        text += f": {_annotation(parameter.annotation)}"
        if parameter.default is not inspect.Parameter.empty:
            text += f" = {_default(parameter.default)}"
    elif parameter.default is not inspect.Parameter.empty:
        text += f"={_default(parameter.default)}"
    return text


def _signature(name: str, obj: Callable, drop_self: bool = False, returns: bool = True) -> str:
    """``name(a: int, b=1, *, c=2) -> T``, one parameter a line when longer than 100 chars."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a text signature
        return f"{name}(...)"
    parameters = list(signature.parameters.values())[1 if drop_self else 0 :]
    words, keyword_only = [], False
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and not keyword_only:
            words.append("*")
        keyword_only |= parameter.kind in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.VAR_POSITIONAL,
        )
        words.append(_parameter(parameter))
    result = ""
    if returns and signature.return_annotation is not inspect.Signature.empty:
        result = f" -> {_annotation(signature.return_annotation)}"
    one_line = f"{name}({', '.join(words)}){result}"
    if len(one_line) <= 100:
        return one_line
    return f"{name}(\n" + "".join(f"    {word},\n" for word in words) + f"){result}"


def _docstring(obj: object) -> str:
    return inspect.getdoc(obj) or "(no docstring)"


def _entry(heading: str, signature: str, doc: str) -> str:
    return f"{heading}\n\n{_text_block(signature + chr(10) + chr(10) + doc)}"


def _class_members(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties, in alphabetical order (inherited ones included)."""
    members = []
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, (property, staticmethod, classmethod)) or inspect.isfunction(raw):
            members.append((name, raw))
    return members


def _render_class(qualified: str, cls: type, written: dict[int, str]) -> str:
    short = qualified.rsplit(".", 1)[-1]
    parts = [
        _entry(f"### `{qualified}`", _signature(qualified, cls, returns=False), _docstring(cls))
    ]
    members = _class_members(cls)
    if any(name == "forward" for name, _ in members):
        parts.append(
            "An instance is called as its `forward`: `layer(...)` is `layer.forward(...)`.\n"
        )
    elif any("__call__" in vars(base) for base in cls.__mro__[:-1]):  # not type.__call__
        members.insert(0, ("__call__", inspect.getattr_static(cls, "__call__")))
    shared: dict[str, list[str]] = {}  # the class a member was written under -> member names
    for name, member in members:
        function = (
            member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        )
        if id(function) in written:
            shared.setdefault(written[id(function)].split(".")[0], []).append(f"`{name}`")
            continue
        written[id(function)] = f"{short}.{name}"
        if isinstance(member, property):
            parts.append(
                _entry(f"#### `{short}.{name}` (property)", f"{short}.{name}", _docstring(member))
            )
        else:
            drop_self = not isinstance(member, staticmethod)
            parts.append(
                _entry(
                    f"#### `{short}.{name}`",
                    _signature(f"{short}.{name}", function, drop_self),
                    _docstring(function),
                )
            )
    for owner, names in shared.items():
        parts.append(textwrap.fill(f"{', '.join(names)}: as under `{owner}`.", 100) + "\n")
    return "\n".join(parts)


def _module_names(module: ModuleType) -> list[str]:
    """A module's ``__all__``, or else the public functions and classes it defines itself."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    )


def _render_module(qualified: str, module: ModuleType, written: dict[int, str]) -> str:
    parts = [f"### `{qualified}`\n\n{_text_block(_docstring(module))}"]
    for name in _module_names(module):
        obj = getattr(module, name)
        if id(obj) in written:  # e.g. fusedrnn.optim.SGD is fusedrnn.SGD
            parts.append(f"`{qualified}.{name}` is {written[id(obj)]}.\n")
        elif inspect.isclass(obj):
            written[id(obj)] = f"`{qualified}.{name}`"
            parts.append(_render_class(f"{qualified}.{name}", obj, written))
        else:
            written[id(obj)] = f"`{qualified}.{name}`"
            parts.append(
                _entry(
                    f"#### `{qualified}.{name}`",
                    _signature(f"{qualified}.{name}", obj),
                    _docstring(obj),
                )
            )
    return "\n".join(parts)


def _render_name(name: str, written: dict[int, str]) -> str:
    obj = getattr(fusedrnn, name)
    qualified = f"fusedrnn.{name}"
    if isinstance(obj, str):
        return f"### `{qualified}`\n\nThe version of this build: `{obj!r}`.\n"
    if inspect.ismodule(obj):
        return _render_module(qualified, obj, written)
    written[id(obj)] = f"`{qualified}`"
    if inspect.isclass(obj):
        return _render_class(qualified, obj, written)
    return _entry(f"### `{qualified}`", _signature(qualified, obj), _docstring(obj))


def render() -> str:
    """The text of docs/api.md for the fusedrnn that is imported."""
    public = list(fusedrnn.__all__)
    grouped = [name for _, names in GROUPS for name in names]
    unknown = sorted(set(grouped) - set(public))
    if unknown:
        raise ValueError(f"GROUPS names {unknown}, which fusedrnn.__all__ does not have")
    groups = [*GROUPS, ("Other", [n for n in public if n not in grouped])]
    groups = [(title, names) for title, names in groups if names]

    contents = ["## Contents\n"]
    for title, names in groups:
        contents.append(
            textwrap.fill(
                f"- {title}: " + ", ".join(f"`{n}`" for n in names), 100, subsequent_indent="  "
            )
        )
    sections, written = [], {}
    for title, names in groups:
        sections.append(f"## {title}\n")
        sections.extend(_render_name(name, written) for name in names)
    text = "\n".join([HEADER, "\n".join(contents) + "\n", *sections])
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if docs/api.md differs from what would be written",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = API_FILE.read_text(encoding="utf-8") if API_FILE.exists() else ""
        if current != text:
            print(
                f"{API_FILE} is not current: run PYTHONPATH=pkg python tools/api_doc.py",
                file=sys.stderr,
            )
            return 1
        return 0
    API_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {API_FILE} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
