"""`Parameter` and `Module`: the one base of every fusedrnn layer, cell, attention layer, loss and
user model.

What a user touches the same way on every module is written here, once:

- parameters: `Parameter` arrays (numpy arrays that carry their own gradient, ``p.grad``), held
  under PyTorch's names and read and assigned as attributes (``lstm.weight_ih_l0``,
  ``decoder.weight = encoder.weight``); every backward adds (``+=``) into ``p.grad``;
- submodules held as attributes, as in ``torch.nn.Module``: recursive ``named_parameters`` /
  ``parameters`` / ``state_dict`` / ``load_state_dict`` with PyTorch's dotted names,
  ``train()`` / ``eval()`` / ``zero_grad()`` reaching every submodule;
- the dtype, the random generator and the backend (``'fused'``: `fusedrnn.functional`,
  ``'reference'``: `fusedrnn.reference`);
- the checks of the arrays a user hands in (`_check_array`: the module's dtype and shape, with the
  meaning of every axis, never a cast);
- what a forward keeps for backward, PyTorch's rule that one forward has one backward
  (``retain_graph=True`` keeps it for another), and the error that says why there is nothing
  to use.

A layer says only what differs: its parameters (`_set_parameters`), its forward and backward,
and its ``repr`` arguments. A user model sets its parts as attributes in ``__init__`` and writes
a ``forward`` and a ``backward`` that chain them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any, ClassVar, NamedTuple

import numpy as np

from ._checks import check_array, check_choice, check_dtype, check_flag
from ._thread_guard import guard_training_state

DTypeLike = type | str | np.dtype
BACKENDS = ("fused", "reference")

NO_FORWARD_YET = "no forward has run yet"
EVAL_FORWARD = (
    "the last forward ran in eval mode, which saves nothing for backward; call "
    "train() and run forward again"
)
LOADED = "load_state_dict discarded the state saved by the last forward; run forward again"
BACKWARD_DONE = (
    "backward already ran through the last forward and freed what it saved (as PyTorch "
    "does); run forward again, or pass retain_graph=True to the first backward to keep it "
    "for another"
)
PARAMETER_CHANGED = (
    "a parameter was reassigned after the last forward; run forward again with the new one"
)


def check_backend(name: object) -> str:
    """``name`` if it is a backend: 'fused' or 'reference'."""
    return check_choice(name, "backend", BACKENDS)


_backend_modules: dict[str, ModuleType] = {}  # filled by backend_module, name by name


def backend_module(name: str) -> ModuleType:
    """The functions behind a backend name: `fusedrnn.functional` for 'fused', `fusedrnn.reference`
    for 'reference' (checked: ValueError for any other name).

    Imported when first asked for: the fused path itself never loads the reference.
    """
    # only names that passed check_backend are keys (an unhashable name goes to the check)
    module = _backend_modules.get(name) if isinstance(name, str) else None
    if module is None:
        check_backend(name)
        if name == "fused":
            from . import functional as module
        else:
            from . import reference as module
        _backend_modules[name] = module
    return module


def as_float_array(value: object, name: str) -> np.ndarray:
    """A real floating-point ndarray from an array-like; TypeError naming ``name`` otherwise."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as error:  # RuntimeError: a tensor needing grad
        raise TypeError(f"{name} cannot be read as an array: {error}") from None
    if array.dtype.kind != "f":
        raise TypeError(
            f"{name} must hold real floating-point numbers, but has dtype {array.dtype}"
        )
    return array


def cache_aligned_zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Zeros that start on a 64-byte cache line (numpy's own arrays start on 16 bytes).

    The kernels' threads accumulate into disjoint columns of a weight gradient; with the rows
    aligned, two cores never write the same cache line.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + nbytes].view(dtype).reshape(shape)


# ---------------------------------------------------------------- Parameter


def _plain(value: Any) -> Any:
    """``value`` with every Parameter in it (also inside tuples and lists) seen as a plain array."""
    if isinstance(value, Parameter):
        return value.view(np.ndarray)
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(item) for item in value)
    return value


class Parameter(np.ndarray):
    """A module's parameter: a C-contiguous float32 / float64 numpy array that carries its own
    gradient, as ``torch.nn.Parameter``.

    ``grad`` is an array of the same shape and dtype, zero at creation and after
    ``zero_grad()``; every backward through a module using the parameter adds (``+=``) into it.
    A parameter used by two modules (tied weights, ``decoder.weight = encoder.weight``) is one
    object, so it has one gradient, the sum of both uses, and optimizers, clipping and
    ``zero_grad`` treat it once.

    Everything computed from a parameter (arithmetic, slices, ``copy()``, ``reshape``, ``.T``)
    is a plain numpy array; in-place updates (``p -= lr * p.grad``) change the parameter itself.

    ``requires_grad_(False)`` freezes it, as in PyTorch: ``grad`` becomes None, backward does
    not compute its gradient (the kernels skip that work where they can), and optimizers,
    clipping, ``zero_grad`` and `fusedrnn.distributed.allreduce_gradients` pass it by.
    ``requires_grad_(True)`` gives it a zeroed gradient again. ``requires_grad`` says which it
    is: whether ``grad`` is an array.

    Parameters
    ----------
    data : array-like of real floating-point numbers
        Used as it is when it is a C-contiguous float32 / float64 ndarray (the parameter is a view
        of its memory); copied into one otherwise.
    dtype : numpy.float32 or numpy.float64, optional
        Default: the dtype of ``data`` (which must then be float32 or float64).
    """

    grad: np.ndarray | None

    def __new__(cls, data: object, dtype: DTypeLike | None = None) -> Parameter:
        array = as_float_array(data, "data")
        dtype = check_dtype(array.dtype if dtype is None else dtype)
        param = np.ascontiguousarray(array, dtype=dtype).view(cls)
        param.grad = cache_aligned_zeros(param.shape, dtype)
        return param

    @property
    def requires_grad(self) -> bool:
        """Whether backward computes this parameter's gradient (``grad`` is an array), as
        ``torch.nn.Parameter.requires_grad``; assigning it is ``requires_grad_``."""
        return self.grad is not None

    @requires_grad.setter
    def requires_grad(self, requires_grad: bool) -> None:
        self.requires_grad_(requires_grad)

    def requires_grad_(self, requires_grad: bool = True) -> Parameter:
        """Freeze (False) or unfreeze (True, the default) this parameter, in place; returns it.

        Freezing drops the gradient (``grad`` becomes None); unfreezing a frozen parameter gives
        it a zeroed one, and leaves a gradient it has as it is.
        """
        if not check_flag(requires_grad, "requires_grad"):
            self.grad = None
        elif self.grad is None:
            self.grad = cache_aligned_zeros(self.shape, self.dtype)
        return self

    def __array_finalize__(self, obj: object) -> None:
        # a view made by numpy itself carries no gradient; `__new__` and `_rebuild` set one
        self.grad = None

    # Whatever is computed from a parameter is a plain ndarray, as in PyTorch (``p * 2`` is a
    # Tensor, not a Parameter): ufuncs, numpy functions and the common array methods.

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if out is not None:
            kwargs["out"] = _plain(out)
        result = getattr(ufunc, method)(*_plain(inputs), **kwargs)
        if out is not None:  # in place: hand back the objects given (``p -= g`` keeps ``p``)
            return out[0] if len(out) == 1 else out
        return result

    def __array_function__(self, func, types, args, kwargs):
        return func(*_plain(args), **{key: _plain(value) for key, value in kwargs.items()})

    def __getitem__(self, index):
        return self.view(np.ndarray)[index]

    def __repr__(self) -> str:
        # numpy's repr, its continuation lines moved under "Parameter(" rather than "array("
        text = repr(self.view(np.ndarray)).removeprefix("array(")
        return "Parameter(" + text.replace("\n", "\n    ")

    @property
    def T(self) -> np.ndarray:
        return self.view(np.ndarray).T

    def copy(self, order: str = "C") -> np.ndarray:
        return self.view(np.ndarray).copy(order)

    __copy__ = copy

    def __deepcopy__(self, memo: dict) -> Parameter:
        return _rebuild_parameter(self.copy(), copy.deepcopy(self.grad, memo))

    def __reduce__(self):
        # pickled with its gradient; pickle's memo keeps a tied parameter one object
        return _rebuild_parameter, (self.copy(), self.grad)


def _plain_method(name: str) -> Callable:
    method = getattr(np.ndarray, name)

    def plain(self, *args, **kwargs):
        return method(self.view(np.ndarray), *args, **kwargs)

    plain.__name__ = name
    plain.__doc__ = method.__doc__
    return plain


for _name in ("reshape", "ravel", "flatten", "transpose", "swapaxes", "squeeze", "astype"):
    setattr(Parameter, _name, _plain_method(_name))


def grad_or_scratch(param: Parameter) -> np.ndarray:
    """The gradient to add into for ``param``: its ``grad``, or for a frozen parameter a
    throw-away array of zeros (for the backward functions that compute every gradient)."""
    return np.zeros(param.shape, param.dtype) if param.grad is None else param.grad


def _rebuild_parameter(data: np.ndarray, grad: np.ndarray | None) -> Parameter:
    """A parameter holding ``data`` (as it is) with the gradient ``grad`` (copied to aligned
    memory), frozen when ``grad`` is None; used by pickle and deepcopy."""
    param = Parameter(data)
    if grad is None:
        param.grad = None
    else:
        param.grad[...] = grad
    return param


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` did not match, as PyTorch returns it."""

    missing_keys: list
    unexpected_keys: list


class _NoDtype:
    """The default of ``Module(dtype=...)``: a module without a dtype of its own."""

    def __repr__(self) -> str:
        return "NO_DTYPE"


NO_DTYPE: Any = _NoDtype()


class Module:
    """Base of every fusedrnn module and of user models (see the module docstring).

    Parameters
    ----------
    dtype : numpy.float32 or numpy.float64, or their names, or torch.float32 / torch.float64
        Of the parameters and of every array the module accepts; None means float32. Not given
        (``NO_DTYPE``): a module without a dtype of its own (a loss, a container, a user model).
    seed : int or None
        Seeds the module's generator (initialisation, dropout).
    backend : 'fused' or 'reference', optional
        None for a module that computes one way only (Embedding).

    Attributes
    ----------
    training : bool
        True after ``train()`` (the default), False after ``eval()``.

    Examples
    --------
    A model is a module whose parts are attributes; its backward chains theirs in reverse:

    >>> class Model(fusedrnn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.encoder = fusedrnn.Embedding(100, 32)
    ...         self.rnn = fusedrnn.GRU(32, 32)
    ...         self.decoder = fusedrnn.Linear(32, 100)
    ...         self.decoder.weight = self.encoder.weight      # tied: one array, one gradient
    ...     def forward(self, tokens, h=None):
    ...         y, h = self.rnn(self.encoder(tokens), h)
    ...         return self.decoder(y), h
    ...     def backward(self, d_logits):
    ...         dx, _ = self.rnn.backward(self.decoder.backward(d_logits))
    ...         self.encoder.backward(dx)
    """

    # Whether a forward in eval mode also keeps what backward needs (the attention layers do;
    # the others save nothing in eval mode).
    _saves_in_eval: ClassVar[bool] = False
    # (attribute, default) of the constructor arguments ``repr`` shows when not the default
    _repr_fields: ClassVar[tuple] = ()

    def __init__(
        self,
        dtype: DTypeLike | None = NO_DTYPE,
        seed: int | None = None,
        backend: str | None = None,
    ) -> None:
        state = self.__dict__
        state["_params"] = state.get("_params", {})  # the parameters, by name, in order
        state["_modules"] = state.get("_modules", {})  # the submodules, by name, in order
        if dtype is not NO_DTYPE:
            self.dtype = check_dtype(dtype)
        if backend is not None:
            self.backend = check_backend(backend)
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._saved = None  # what the last forward kept for backward
        self._no_saved_reason = NO_FORWARD_YET

    # ------------------------------------------------------------ calling

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        guard_training_state(cls)  # its forward / backward: one thread at a time (_thread_guard)

    def __call__(self, *args, **kwargs):
        """Same as ``forward``."""
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no forward")

    def backward(self, *args, retain_graph: bool = False, **kwargs):
        """Gradients through the last forward: every module's takes the gradient of its
        output(s), adds into its parameters' ``grad`` and returns the gradient of its input(s).

        One forward has one backward, as in PyTorch: backward frees what its forward saved,
        and a second raises a RuntimeError, unless the first was given ``retain_graph=True``
        (then it adds into the gradients again). A backward that raises for its arguments
        frees nothing and adds nothing.
        """
        raise NotImplementedError(f"{type(self).__name__} defines no backward")

    @property
    def _backend(self) -> ModuleType:
        """The functions of ``self.backend``."""
        return backend_module(self.backend)

    def __repr__(self) -> str:
        args = self._repr_args()
        if getattr(self, "dtype", np.float32) != np.float32:
            args.append(f"dtype=np.{self.dtype}")
        head = f"{type(self).__name__}({', '.join(args)}"
        if not self._modules:
            return head + ")"
        lines = [
            f"  ({name}): " + repr(child).replace("\n", "\n  ")
            for name, child in self._modules.items()
        ]
        return head + "\n" + "\n".join(lines) + "\n)"

    def _repr_args(self) -> list:
        """The arguments ``repr`` shows (but dtype): a subclass puts its required ones first."""
        return [
            f"{name}={getattr(self, name, default)!r}"
            for name, default in self._repr_fields
            if getattr(self, name, default) != default
        ]

    # ------------------------------------------------------------ attributes

    def __getattr__(self, name: str) -> Any:
        # parameters and submodules read as attributes (``lstm.weight_ih_l0``, ``model.rnn``)
        state = self.__dict__
        for registry in ("_params", "_modules"):
            if name in state.get(registry, ()):
                return state[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        params, modules = self.__dict__.get("_params"), self.__dict__.get("_modules")
        if params is not None and name in params:
            self._assign_parameter(name, value)
        elif isinstance(value, (Parameter, Module)):
            if params is None:
                raise AttributeError(
                    f"cannot assign {type(value).__name__} {name!r} before "
                    f"Module.__init__() has run: call super().__init__() first"
                )
            self.__dict__.pop(name, None)
            if isinstance(value, Parameter):
                self.register_parameter(name, value)
            else:
                modules[name] = value
        elif modules is not None and name in modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as submodule {name!r} "
                    f"(a fusedrnn Module or None expected)"
                )
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        for registry in (self._params, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def __dir__(self) -> list:
        return sorted({*super().__dir__(), *self._params, *self._modules})

    def _assign_parameter(self, name: str, value: object) -> None:
        """``module.<name> = value`` for an existing parameter: rebind it everywhere this module
        uses it. A Parameter is used as it is (the same object: tying); any other array becomes
        a Parameter over its memory, with a gradient of its own."""
        old = self._params[name]
        where = f"{type(self).__name__}.{name}"
        if not isinstance(value, np.ndarray):
            raise TypeError(
                f"{where} must be assigned a numpy array (or a fusedrnn.Parameter) of dtype "
                f"{old.dtype} and shape {old.shape}, got {type(value).__name__}"
            )
        if value.dtype != old.dtype:
            raise TypeError(
                f"{where} must be assigned an array of the module's dtype {old.dtype}, got "
                f"{value.dtype} (convert it first; nothing is cast silently)"
            )
        if value.shape != old.shape:
            raise ValueError(
                f"{where} must have shape {old.shape}, but the new array has {value.shape}"
            )
        if not value.flags.c_contiguous:
            raise ValueError(
                f"{where} must be assigned a C-contiguous array (the kernels read it in "
                f"place); pass np.ascontiguousarray(...)"
            )
        self._params[name] = value if isinstance(value, Parameter) else Parameter(value)
        if self._saved is not None:
            self._forget_saved(PARAMETER_CHANGED)

    def _set_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        """The module's parameters, from arrays (cast to the module's dtype), replacing any
        before; each with a zeroed gradient."""
        self._params.clear()
        for name, value in params.items():
            self.register_parameter(name, Parameter(value, self.dtype))

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a parameter under ``name`` (as ``setattr(module, name, param)`` does)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(f"a parameter name must be an identifier string, got {name!r}")
        if not isinstance(param, Parameter):
            raise TypeError(
                f"parameter {name!r} must be a fusedrnn.Parameter, got {type(param).__name__}"
            )
        if hasattr(self, "dtype") and param.dtype != self.dtype:
            raise TypeError(
                f"parameter {name!r} must have the module's dtype {self.dtype}, got {param.dtype}"
            )
        if name in self._modules:
            raise KeyError(f"{name!r} is already a submodule of {type(self).__name__}")
        self._params[name] = param

    def add_module(self, name: str, module: Module | None) -> None:
        """Add a submodule under ``name`` (as ``setattr(module, name, child)`` does)."""
        if not isinstance(name, str) or not name or "." in name:
            raise TypeError(
                f"a submodule name must be a non-empty string without '.', got {name!r}"
            )
        if module is not None and not isinstance(module, Module):
            raise TypeError(
                f"submodule {name!r} must be a fusedrnn Module, got {type(module).__name__}"
            )
        if name in self._params:
            raise KeyError(f"{name!r} is already a parameter of {type(self).__name__}")
        self._modules[name] = module

    # ------------------------------------------------------------ the module tree

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """``(name, submodule)`` of the direct submodules, in the order they were set."""
        return ((name, child) for name, child in self._modules.items() if child is not None)

    def children(self) -> Iterator[Module]:
        """The direct submodules."""
        return (child for _, child in self.named_children())

    def named_modules(
        self, memo: set | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """``(dotted name, module)`` of this module (name '') and every submodule below it,
        depth first, each once (unless ``remove_duplicate=False``)."""
        memo = set() if memo is None else memo
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(
                memo, f"{prefix}.{name}" if prefix else name, remove_duplicate
            )

    def modules(self) -> Iterator[Module]:
        """This module and every submodule below it."""
        return (module for _, module in self.named_modules())

    def apply(self, fn: Callable[[Module], None]) -> Module:
        """Call ``fn`` on every submodule (children first) and on this module; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, parameter)`` of every parameter, in PyTorch's order: a module's own,
        then its submodules' in the order they were set. A parameter shared by two modules
        (tied) comes once, under its first name, unless ``remove_duplicate=False``.

        These are the live arrays: an optimizer updates them in place (``p -= lr * p.grad``);
        backward reads them as they are when it runs.
        """
        seen: set = set()
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, param in module._params.items():
                if remove_duplicate:
                    if id(param) in seen:
                        continue
                    seen.add(id(param))
                yield (f"{module_prefix}.{name}" if module_prefix else name), param

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Every parameter (live), each once, in the order of `named_parameters`."""
        return (param for _, param in self.named_parameters(recurse=recurse))

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """``{name: parameter.grad}`` keyed like ``state_dict()``: the gradient arrays themselves,
        which every backward adds into (a tied parameter's under each of its names). A frozen
        parameter (``requires_grad_(False)``) has none, so it is not in the dict."""
        if not self._modules:  # a layer: its own parameters (the per-call path, kept short)
            return {name: p.grad for name, p in self._params.items() if p.grad is not None}
        return {
            name: p.grad
            for name, p in self.named_parameters(remove_duplicate=False)
            if p.grad is not None
        }

    def _frozen(self) -> frozenset:
        """The names of this module's own parameters that are frozen (no ``grad``)."""
        return frozenset(name for name, p in self._params.items() if p.grad is None)

    def _grads_or_scratch(self) -> dict[str, np.ndarray]:
        """This module's own parameters' gradients to add into, by name (`grad_or_scratch`)."""
        return {name: grad_or_scratch(p) for name, p in self._params.items()}

    # ------------------------------------------------------------ state

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """A copy of every parameter, keyed by PyTorch's dotted names, in PyTorch's order; a
        tied parameter under each of its names, as in PyTorch.

        Copies, unlike PyTorch's references: a saved state dict does not change when the module
        trains on. Use `named_parameters` for the live arrays.
        """
        return {
            name: param.copy()
            for name, param in self.named_parameters(prefix=prefix, remove_duplicate=False)
        }

    def load_state_dict(self, state_dict: Mapping, strict: bool = True) -> IncompatibleKeys:
        """Copy parameters in from a mapping of dotted names to array-likes.

        Every entry must be a real floating-point array-like (numpy arrays, lists, or PyTorch
        tensors through ``{k: v.detach().numpy() ...}``; a PyTorch model's whole ``state_dict``
        loads into the same fusedrnn model) of the parameter's shape; it is cast to the
        parameter's dtype (the one conversion a module makes on purpose). With ``strict`` (the
        default) a missing or unexpected name is an error; a wrongly shaped or non-float entry
        always is. On any error nothing is loaded. What the last forwards saved for backward is
        discarded.

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``: both empty after a strict load.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}"
            )
        params = dict(self.named_parameters(remove_duplicate=False))
        missing = [name for name in params if name not in state_dict]
        unexpected = [name for name in state_dict if name not in params]
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict does not fit {type(self).__name__}: missing {missing}, "
                f"unexpected {unexpected}"
            )
        loaded = {}
        for name, param in params.items():
            if name not in state_dict:
                continue
            loaded[name] = as_float_array(state_dict[name], f"state_dict[{name!r}]")
            if loaded[name].shape != param.shape:
                raise ValueError(
                    f"state_dict[{name!r}] has shape {loaded[name].shape}, but "
                    f"{type(self).__name__} expects {param.shape}; is it from another "
                    f"architecture or size?"
                )
        for name, value in loaded.items():
            np.copyto(params[name], value, casting="same_kind")
        for module in self.modules():
            module._forget_saved(LOADED)  # the saved forwards used the old parameters
        return IncompatibleKeys(missing, unexpected)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set the gradient of every parameter to zero, in place (each array stays the same
        object, so a tied parameter's is zeroed once; a frozen parameter has none).

        ``set_to_none`` is PyTorch's argument, taken so that ported code runs: here a gradient is
        zeroed in place either way, since the kernels add into the arrays and a gradient of
        None means a frozen parameter (`Parameter.requires_grad_`).
        """
        check_flag(set_to_none, "set_to_none")
        for param in self.parameters():
            if param.grad is not None:
                param.grad.fill(0)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (False) or unfreeze (True) every parameter of this module and its submodules,
        as ``torch.nn.Module.requires_grad_``; returns self. See `Parameter.requires_grad_`:
        backward then skips the frozen parameters' gradients, and optimizers skip them.

        Examples
        --------
        Fine-tune a model's decoder only (the embedding and the recurrent layers as they are):

        >>> model.requires_grad_(False)
        >>> model.decoder.requires_grad_(True)
        """
        check_flag(requires_grad, "requires_grad")
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def train(self, mode: bool = True) -> Module:
        """Training mode (default) for this module and every submodule: forward saves what
        backward needs (and dropout is on). Returns self."""
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self) -> Module:
        """Eval mode for this module and every submodule: forward saves nothing for backward (and
        no dropout). Same as ``train(False)``."""
        return self.train(False)

    # ------------------------------------------------------------ checks

    def _check_array(
        self,
        value: object,
        name: str,
        shape: tuple | None = None,
        axes: tuple | None = None,
        unbatched: tuple | None = None,
    ) -> np.ndarray:
        """``value`` if it is a numpy array of the module's dtype and ``shape``, else an error
        naming ``name`` (`fusedrnn._checks.check_array`)."""
        return check_array(value, name, self.dtype, shape, axes, unbatched)

    # ------------------------------------------------------------ saved for backward

    def _keep_for_backward(self, saved: object) -> None:
        """After a forward: keep ``saved`` for backward, or, after an eval-mode forward of a
        module that saves nothing then, forget the last one (backward then says why)."""
        if self.training or self._saves_in_eval:
            self.__dict__["_saved"] = saved  # (plain attributes: not through __setattr__,
        else:  # which every forward of every module paid for twice)
            self._forget_saved(EVAL_FORWARD)

    def _forget_saved(self, reason: str) -> None:
        """Drop what forwards saved for backward; a backward then fails saying ``reason``."""
        state = self.__dict__
        state["_saved"] = None
        state["_no_saved_reason"] = reason

    def _require_saved(self):
        """What the last forward kept for backward, or a RuntimeError that says why there is
        none."""
        if self._saved is None:
            needs = "a forward" if self._saves_in_eval else "a training-mode forward"
            raise RuntimeError(
                f"{type(self).__name__}.backward needs {needs} first: {self._no_saved_reason}"
            )
        return self._saved

    def _release_saved(self, retain_graph: bool) -> None:
        """After a backward that succeeded: free what the forward saved, unless
        ``retain_graph`` (PyTorch's rule: one backward per forward, unless asked)."""
        if not retain_graph:
            self._forget_saved(BACKWARD_DONE)
