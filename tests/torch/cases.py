"""Shared pieces of the fusedrnn.torch tests: the module options, a torch.nn module and its
fusedrnn.torch twin with the same Parameters' values, random states, tolerances by dtype."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import fusedrnn.torch as ft  # noqa: E402

# (class name, constructor options): every option of torch.nn's constructors at least once
STACK_CASES = [
    ("LSTM", {}),
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"proj_size": 2, "num_layers": 2, "bidirectional": True}),
    ("LSTM", {"bias": False, "batch_first": True}),
    ("GRU", {}),
    ("GRU", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("GRU", {"bias": False}),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2, "bidirectional": True}),
    ("RNN", {"bias": False}),
]
CELL_CASES = [
    ("LSTMCell", {}),
    ("GRUCell", {}),
    ("GRUCell", {"bias": False}),
    ("RNNCell", {"nonlinearity": "relu"}),
]
DTYPES = [torch.float64, torch.float32]
INPUT_SIZE, HIDDEN_SIZE = 3, 4


def case_id(case) -> str:
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


def tolerances(dtype) -> dict:
    """float64: the two implementations agree to rounding; float32: to float32's precision."""
    if dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-12}
    return {"rtol": 1e-4, "atol": 1e-5}


def twins(name: str, options: dict, dtype, input_size=INPUT_SIZE, hidden_size=HIDDEN_SIZE):
    """(torch.nn module, fusedrnn.torch module) with equal Parameters, of ``dtype``."""
    torch.manual_seed(0)
    reference = getattr(torch.nn, name)(input_size, hidden_size, **options).to(dtype)
    fused = getattr(ft, name)(input_size, hidden_size, **options).to(dtype)
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def random_state(module, batch: int | None, dtype, requires_grad: bool = True):
    """A random hx for ``module`` (a stack or a cell): h, or (h, c) for an LSTM; batch None =
    unbatched."""
    H = module.hidden_size
    if isinstance(module, torch.nn.RNNCellBase):
        lstm = isinstance(module, torch.nn.LSTMCell)
        shapes = [(H,), (H,)] if lstm else [(H,)]
        if batch is not None:
            shapes = [(batch, *s) for s in shapes]
    else:
        lstm = module.mode == "LSTM"
        LD = module.num_layers * (2 if module.bidirectional else 1)
        shapes = [(LD, module.proj_size or H), (LD, H)] if lstm else [(LD, H)]
        if batch is not None:
            shapes = [(s[0], batch, s[1]) for s in shapes]
    states = [torch.randn(s, dtype=dtype, requires_grad=requires_grad) for s in shapes]
    return tuple(states) if lstm else states[0]


def flat(result) -> list:
    """The tensors of a module's output, in order (PackedSequence: its data)."""
    out = []
    for item in result if isinstance(result, tuple) else (result,):
        if isinstance(item, tuple):
            out.extend(flat(item))
        elif isinstance(item, torch.nn.utils.rnn.PackedSequence):
            out.append(item.data)
        else:
            out.append(item)
    return out


def assert_close_all(actual: list, expected: list, dtype) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **tolerances(dtype), msg=lambda m, i=i: f"[{i}] {m}")


def grads_of(outputs: list, inputs: list) -> list:
    """d(sum of every output * a fixed weight)/d inputs: each output gets its own weighting so
    that a gradient routed to the wrong output would show."""
    total = sum((o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).view_as(o)).sum()
                for o in outputs)  # fmt: skip
    return list(torch.autograd.grad(total, inputs))
