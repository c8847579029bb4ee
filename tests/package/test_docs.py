"""Every code block of README.md, CHANGELOG.md and docs/*.md runs as written: the manual stays true.

- ```python blocks run: the blocks of one file in order, in one namespace (a later block may use
  an earlier one's names), from a scratch folder. A block preceded by the line
  ``<!-- docs-test: requires MODULE -->`` is skipped only when MODULE cannot be imported.
- ```bash blocks are commands a user types: every command must exist here (an executable on
  PATH, a module for ``python -m``, a file for ``python FILE`` / ``bash FILE``, an extra that
  pyproject.toml declares for ``pip install ".[extra]"``; for ``mpiexec [options] python ...``
  the python command, and mpiexec itself where mpi4py is installed), and every ``--option`` given to
  ``python -m fusedrnn SUBCOMMAND`` must appear in that subcommand's ``--help``.
- ```text and ```console blocks are not run; a signature written in a text block as
  ``name(arg, ...)`` at the start of a line, for a function of ``fusedrnn.functional``, must
  list that function's parameters in order.
- Any other block (no language, or another one) fails: say what it is.
- Relative links point at files that exist; docs/api.md is what tools/api_doc.py generates,
  with a section for every name of ``fusedrnn.__all__``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import fusedrnn


def _repo_root() -> Path:
    """The folder holding pyproject.toml, above this file (tests may move into subfolders)."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    raise RuntimeError(f"no pyproject.toml above {__file__}")


ROOT = _repo_root()
DOC_FILES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = {"python", "bash"}
QUIET_LANGUAGES = {"text", "console"}
REQUIRES = re.compile(r"<!--\s*docs-test:\s*requires\s+([\w.]+)\s*-->")
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>.*)$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    source: str
    requires: str | None  # a module the block needs, from a docs-test marker

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, dedented by their fence's indentation."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent = len(opening["indent"])
        marker = REQUIRES.search(lines[i - 1]) if i > 0 else None
        body, j = [], i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: code block never closed")
        language = opening["info"].strip().split(" ")[0]
        blocks.append(
            Block(path, i + 1, language, "\n".join(body) + "\n", marker[1] if marker else None)
        )
        i = j + 1
    return blocks


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def _files_with(language: str) -> list[Path]:
    return [p for p in DOC_FILES if any(b.language == language for b in code_blocks(p))]


PYTHON_FILES, BASH_FILES = _files_with("python"), _files_with("bash")


@pytest.fixture
def restore_threads():
    """A block may call fusedrnn.set_num_threads: the tests after it get the count back."""
    before = fusedrnn.get_num_threads()
    yield
    fusedrnn.set_num_threads(before)


@pytest.mark.parametrize("path", DOC_FILES, ids=_ids(DOC_FILES))
def test_every_block_says_what_it_is(path):
    for block in code_blocks(path):
        assert block.language in RUN_LANGUAGES | QUIET_LANGUAGES, (
            f"{block.where}: a code block must be ```python or ```bash (run by this test) or "
            f"```text / ```console (not run); it is {block.language or 'unlabelled'!r}"
        )


@pytest.mark.parametrize("path", PYTHON_FILES, ids=_ids(PYTHON_FILES))
def test_python_blocks_run(path, tmp_path, monkeypatch, restore_threads):
    blocks = [b for b in code_blocks(path) if b.language == "python"]
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands in a scratch folder
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in blocks:
        if block.requires and importlib.util.find_spec(block.requires) is None:
            warnings.warn(
                f"{block.where}: skipped, {block.requires} is not installed", stacklevel=1
            )
            continue
        try:
            exec(compile(block.source, block.where, "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{block.where}: the python block fails: {error!r}") from error


def _commands(source: str) -> list[list[str]]:
    """The simple commands of a bash block: continuations joined, comments dropped, split at
    ``&&``, ``||``, ``;`` and ``|``, leading ``NAME=value`` assignments removed."""
    commands = []
    for line in source.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in {"&&", "||", ";", "|"}:
                while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                    words.pop(0)
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(token)
    return commands


def _declared_extras() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: no TOML reader in the standard library
        pytest.skip("tomllib (Python 3.11+) is needed to read pyproject.toml's extras")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"].get("optional-dependencies", {}))


@cache
def _subcommand_help(subcommand: str) -> str:
    """``python -m fusedrnn SUBCOMMAND --help``, with this checkout's package importable."""
    env = dict(os.environ)
    package_root = str(Path(fusedrnn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "fusedrnn", subcommand, "--help"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"`python -m fusedrnn {subcommand} --help` fails: {done.stderr}"
    return done.stdout


def _module_exists(name: str) -> bool:
    """Whether ``python -m name`` finds a module. pip is looked up by its installed metadata:
    asking the import system about pip makes setuptools' import hook (_distutils_hack) give up
    its own distutils for the rest of the process, and a later `import setuptools` (PyTorch's
    inductor does one in torch.compile) then fails on an assertion."""
    if name == "pip":
        try:
            importlib.metadata.distribution("pip")
        except importlib.metadata.PackageNotFoundError:
            return False
        return True
    return importlib.util.find_spec(name) is not None


def _check_python(words: list[str], where: str) -> None:
    args = words[1:]
    if args[:1] == ["-c"]:
        return
    if args[:1] == ["-m"]:
        module = args[1]
        assert _module_exists(module), f"{where}: no module {module}"
        if module == "pip":
            _check_pip(args[2:], where)
        if module == "fusedrnn" and len(args) > 2:
            help_text = _subcommand_help(args[2])
            for option in (a.split("=")[0] for a in args[3:] if a.startswith("--")):
                assert option in help_text, (
                    f"{where}: `python -m fusedrnn {args[2]}` has no option {option}"
                )
        return
    script = ROOT / args[0]
    assert script.is_file(), f"{where}: `python {args[0]}`: no such file in the repository"


def _check_pip(args: list[str], where: str) -> None:
    for target in (a for a in args if not a.startswith("-")):
        match = re.fullmatch(r"\.(?:\[(?P<extras>[\w,-]+)\])?", target)
        if target in {"install", "uninstall"} or not match:
            continue  # a subcommand, or a package from the index (e.g. torch==2.13.0)
        unknown = set((match["extras"] or "").split(",")) - {""} - _declared_extras()
        assert not unknown, f"{where}: pyproject.toml declares no extra {sorted(unknown)}"


def _launched_command(words: list[str], where: str) -> list[str]:
    """The command ``mpiexec [options]`` runs on every rank: what follows its options."""
    for i, word in enumerate(words):
        if word in {"python", "python3"}:
            return words[i:]
    raise AssertionError(f"{where}: `{' '.join(words)}` launches no python program")


def _check_command(words: list[str], where: str) -> None:
    program = words[0]
    if program in {"python", "python3"}:
        _check_python(words, where)
    elif program == "mpiexec":
        # the mpi extra's launcher: on PATH where mpi4py is installed (CI), not in every venv
        if importlib.util.find_spec("mpi4py") is not None:
            assert shutil.which(program), f"{where}: mpi4py is installed but mpiexec is not"
        _check_python(_launched_command(words, where), where)
    elif program == "pip":
        assert _module_exists("pip"), f"{where}: pip is not installed"
        _check_pip(words[1:], where)
    elif program in {"bash", "sh"}:
        script = ROOT / words[1]
        assert script.is_file(), f"{where}: `{program} {words[1]}`: no such file"
    elif program != "cd":
        assert shutil.which(program), f"{where}: `{program}` is not a command here"


@pytest.mark.parametrize("path", BASH_FILES, ids=_ids(BASH_FILES))
def test_bash_blocks_name_real_commands(path):
    blocks = [b for b in code_blocks(path) if b.language == "bash"]
    for block in blocks:
        for words in _commands(block.source):
            _check_command(words, block.where)


def _documented_signatures(source: str) -> list[tuple[str, list[str]]]:
    """``name(a, b=1, *, c=2)`` written at the start of a line (possibly over several lines):
    the name and its parameter names, ``*`` kept as a marker of keyword-only ones."""
    found = []
    for start in re.finditer(r"^(\w+)\(", source, flags=re.MULTILINE):
        depth, i = 1, start.end()
        while depth and i < len(source):
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        inner = source[start.end() : i - 1]
        names, depth, current = [], 0, ""
        for char in inner + ",":
            if char == "," and depth == 0:
                names.append(re.split(r"[=:]", current)[0].strip())
                current = ""
                continue
            depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
            current += char
        found.append((start[1], [n for n in names if n]))
    return found


def _signature_names(function) -> list[str]:
    names, keyword_only = [], False
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and not keyword_only:
            names.append("*")
            keyword_only = True
        names.append(parameter.name)
    return names


def test_the_docs_have_blocks_to_run():
    """The parametrised tests above run on these lists: an empty list would test nothing."""
    assert ROOT / "README.md" in PYTHON_FILES and ROOT / "README.md" in BASH_FILES
    assert len(PYTHON_FILES) >= 3 and len(BASH_FILES) >= 3


def test_documented_kernel_signatures_match_the_functions():
    checked = 0
    for path in DOC_FILES:
        for block in code_blocks(path):
            if block.language != "text":
                continue
            for name, documented in _documented_signatures(block.source):
                function = getattr(fusedrnn.functional, name, None)
                if not inspect.isfunction(function):
                    continue
                assert documented == _signature_names(function), (
                    f"{block.where}: {name}'s documented parameters {documented} differ from "
                    f"fusedrnn.functional.{name}'s {_signature_names(function)}"
                )
                checked += 1
    assert checked >= 10, f"only {checked} kernel signatures found in the docs' text blocks"


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


@pytest.mark.parametrize("path", DOC_FILES, ids=_ids(DOC_FILES))
def test_relative_links_point_at_files(path):
    text = path.read_text(encoding="utf-8")
    for match in LINK.finditer(text):
        target = match["target"].split("#")[0]
        if not target or re.match(r"[a-z]+:", target):
            continue  # an anchor in the same file, or a URL
        line = text.count("\n", 0, match.start()) + 1
        assert (path.parent / target).exists(), (
            f"{path.relative_to(ROOT)}:{line}: the link {match['target']} points at nothing"
        )


def _api_doc_tool():
    """tools/api_doc.py, imported from its file (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("api_doc", ROOT / "tools" / "api_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_current():
    committed = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    generated = _api_doc_tool().render()
    if committed != generated:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    generated.splitlines(keepends=True),
                    "docs/api.md (committed)",
                    "docs/api.md (from the docstrings)",
                )
            )[:40]
        )
        pytest.fail(
            "docs/api.md is not what the docstrings give: run "
            f"`PYTHONPATH=pkg python tools/api_doc.py` and commit it.\n{diff}"
        )


def test_api_reference_has_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in fusedrnn.__all__ if f"### `fusedrnn.{name}`" not in text]
    assert not missing, f"docs/api.md has no section for {missing}"
