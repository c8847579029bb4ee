"""Containers of modules, as ``torch.nn.Sequential``, ``ModuleList`` and ``ModuleDict``.

Their children are submodules like any attribute of a `fusedrnn.Module`: their parameters are
the container's (``'0.weight'``, ``'encoder.weight'``, PyTorch's names), and ``train()``,
``eval()``, ``zero_grad()``, ``state_dict()`` reach them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping

from ._module import Module


class _ModuleSequence(Module):
    """What `Sequential` and `ModuleList` share: children in order, read by position (a slice
    gives a container of the same kind), iterated, appended to (named by their position)."""

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int | slice):
        if isinstance(index, slice):
            return self._slice(list(self._modules.items())[index])
        return list(self._modules.values())[_check_index(index, len(self))]

    def _slice(self, items: list) -> _ModuleSequence:
        """A container of the same kind holding ``items`` (name, module), numbered anew, as
        PyTorch's ModuleList does (Sequential keeps the names)."""
        return type(self)(module for _, module in items)

    def append(self, module: Module):
        """Add ``module`` at the end; returns self."""
        self.add_module(str(len(self)), module)
        return self


class Sequential(_ModuleSequence):
    """Modules run one after another: ``forward`` passes each one's output to the next, and
    ``backward`` runs their backwards in reverse, each one's input gradient into the one before.

    Every child's forward takes one input and its backward one gradient and returns the
    gradient of its input (Linear, Dropout, activations, ...). A recurrent layer returns
    ``(output, h_n)`` and takes more than one gradient: chain it in a model of your own (a
    `fusedrnn.Module` with a forward and a backward), as in PyTorch.

    Parameters
    ----------
    *modules : Module
        The children, named '0', '1', ...; or one ``OrderedDict`` of names to modules.

    Examples
    --------
    >>> head = Sequential(Linear(64, 64), Dropout(0.1), Linear(64, 10))
    >>> y = head(x)                   # x (..., 64), y (..., 10)
    >>> dx = head.backward(dy)        # the gradients of every child's parameters, too
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                self.add_module(name, module)
        else:
            for index, module in enumerate(modules):
                self.add_module(str(index), module)

    def _slice(self, items: list) -> Sequential:
        return Sequential(OrderedDict(items))

    def forward(self, x):
        """Every child's forward in order, each one's output into the next."""
        for module in self:
            x = module(x)
        return x

    def backward(self, d_output, *, retain_graph: bool = False):
        """Every child's backward in reverse order, each one's input gradient into the one
        before; returns the gradient of the first child's input."""
        grad = d_output
        for module in reversed(list(self)):
            grad = module.backward(grad, retain_graph=retain_graph)
        return grad


class ModuleList(_ModuleSequence):
    """A list of modules whose parameters are the container's (``'0.weight'``, ...), as
    ``torch.nn.ModuleList``: index, iterate, ``append``, ``extend``, ``insert``."""

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __setitem__(self, index: int, module: Module) -> None:
        self.add_module(str(_check_index(index, len(self))), module)

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        """Add every module of ``modules`` at the end; returns self."""
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Put ``module`` before position ``index`` (the names are renumbered)."""
        modules = list(self._modules.values())
        modules.insert(index, module)
        self._modules.clear()
        self.extend(modules)


class ModuleDict(Module):
    """A dict of modules whose parameters are the container's (``'<key>.weight'``), as
    ``torch.nn.ModuleDict``: keys in insertion order."""

    def __init__(self, modules: Mapping[str, Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __contains__(self, key: object) -> bool:
        return key in self._modules

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, module)

    def __delitem__(self, key: str) -> None:
        del self._modules[key]

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def update(self, modules: Mapping[str, Module]) -> None:
        """Add (or replace) every ``name: module`` of ``modules``."""
        for name, module in dict(modules).items():
            self.add_module(name, module)


def _check_index(index: object, length: int) -> int:
    """``index`` (negative counts from the end) as a position in ``range(length)``."""
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"index must be an integer or a slice, got {type(index).__name__}")
    if not -length <= index < length:
        raise IndexError(f"index {index} is out of range for {length} modules")
    return index % length
