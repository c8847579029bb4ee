"""One thread at a time on a module's training state.

A training-mode forward saves what its backward needs in the module, and every backward adds into
the module's ``grads``: two threads training one module would use each other's saved state and add
into the same arrays at once, and get wrong gradients without a word. `guard_training_state`
wraps a module class's ``forward`` and ``backward`` so that instead

- a training-mode forward or a backward while another thread is inside one of them on the same
  module raises RuntimeError (checked without waiting: the second thread is told, not queued);
- a backward on another thread than the module's last state-saving forward raises RuntimeError
  (its saved state is not this thread's: another thread's forward came in between, or the forward
  ran elsewhere).

Eval-mode forwards are not guarded: they save nothing the next call needs (attention layers save
for a backward, which then checks whose forward that was), so threads may share a module for
inference. A module may call its own forward or backward again on the same thread (a subclass
calling ``super().forward``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

SHARED = (
    "{name}.{method}: {what}. One module's training state (what a forward saves for backward, "
    "the grads backward adds into) cannot be shared by threads: give each thread its own module "
    "(copy the parameters with state_dict / load_state_dict), or call eval() to share one for "
    "inference"
)


def guard_training_state(cls: type) -> None:
    """Wrap the ``forward`` and ``backward`` that ``cls`` itself defines (see the module doc)."""
    for method in ("forward", "backward"):
        if method in cls.__dict__:
            setattr(cls, method, _one_thread_at_a_time(cls.__dict__[method], method))


class _Markers(dict):
    """A module's markers: "busy", the thread inside its forward or backward, and "state", the
    thread whose forward saved what backward would use. A copy or a pickle of the module starts
    without them (a module saved while a thread was inside must not stay busy when loaded)."""

    def __reduce__(self):
        return _Markers, ()

    def __deepcopy__(self, memo: dict) -> _Markers:
        return _Markers()


def _markers(module) -> _Markers:
    markers = module.__dict__.get("_thread_markers")
    if markers is None:
        markers = module.__dict__.setdefault("_thread_markers", _Markers())
    return markers


def _one_thread_at_a_time(function: Callable, method: str) -> Callable:
    is_forward = method == "forward"

    @functools.wraps(function)
    def guarded(self, *args, **kwargs):
        markers = _markers(self)
        me = threading.get_ident()
        if is_forward and not self.training:
            result = function(self, *args, **kwargs)
            if self._saves_in_eval:  # what a backward would now use is this thread's
                markers["state"] = me
            return result
        # Claimed with one dict.setdefault, which no other thread can split (no lock to take:
        # this runs on every call).
        outermost = markers.get("busy") is None
        if markers.setdefault("busy", me) != me:
            what = "another thread is running this module's forward or backward"
        elif not is_forward and markers.get("state", me) != me:
            what = "the forward whose saved state backward would use ran on another thread"
        else:
            what = None
        if what is not None:
            if outermost and markers.get("busy") == me:
                del markers["busy"]
            raise RuntimeError(SHARED.format(name=type(self).__name__, method=method, what=what))
        try:
            result = function(self, *args, **kwargs)
            if is_forward:
                markers["state"] = me
            return result
        finally:
            if outermost:
                del markers["busy"]

    return guarded
