"""torch.autograd.gradcheck in float64 (central differences against our backward) for every
module and option: inputs, initial states and every Parameter, also packed, with dropout (masks
fixed by re-seeding) and GRU(reset_after=False), which has no torch.nn twin to compare to."""

from __future__ import annotations

import pytest

from tests.torch.cases import (
    CELL_CASES,
    INPUT_SIZE,
    STACK_CASES,
    case_id,
    flat,
    ft,
    random_state,
    torch,
)

pack_padded_sequence = torch.nn.utils.rnn.pack_padded_sequence

T, B, H = 3, 2, 3
EXTRA_CASES = [
    ("GRU", {"reset_after": False, "num_layers": 2, "bidirectional": True}),
    ("LSTM", {"num_layers": 2, "dropout": 0.5}),
]


def _check(module, make_input, batch):
    """gradcheck of (input, states, parameters) -> every output of ``module``."""
    torch.manual_seed(0)
    module = module.double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = make_input()
    hx = random_state(module, batch, torch.float64)
    states = list(hx) if isinstance(hx, tuple) else [hx]

    def function(x, *rest):
        states_now, params_now = rest[: len(states)], rest[len(states) :]
        hx_now = tuple(states_now) if len(states_now) == 2 else states_now[0]
        torch.manual_seed(3)  # the same dropout masks on every call
        result = torch.func.functional_call(module, dict(zip(names, params_now)), (wrap(x), hx_now))
        return tuple(flat(result))

    wrap = make_input.wrap if hasattr(make_input, "wrap") else (lambda v: v)
    # fast_mode: the Jacobian against random vectors on both sides (one column of it), which
    # a wrong gradient of any input or Parameter changes
    assert torch.autograd.gradcheck(
        function, (x, *states, *params), eps=1e-6, atol=1e-7, fast_mode=True
    )


@pytest.mark.parametrize("case", STACK_CASES + EXTRA_CASES, ids=case_id)
def test_stack_gradcheck(case):
    name, options = case
    module = getattr(ft, name)(INPUT_SIZE, H, **options)
    shape = (B, T, INPUT_SIZE) if module.batch_first else (T, B, INPUT_SIZE)
    _check(module, lambda: torch.randn(shape, dtype=torch.float64, requires_grad=True), B)


@pytest.mark.parametrize("case", [STACK_CASES[2], STACK_CASES[5], EXTRA_CASES[0]], ids=case_id)
def test_packed_gradcheck(case):
    name, options = case
    module = getattr(ft, name)(INPUT_SIZE, H, **options)
    lengths = torch.tensor([2, 3])

    def make_input():
        shape = (B, T, INPUT_SIZE) if module.batch_first else (T, B, INPUT_SIZE)
        return torch.randn(shape, dtype=torch.float64, requires_grad=True)

    make_input.wrap = lambda x: pack_padded_sequence(
        x, lengths, batch_first=module.batch_first, enforce_sorted=False
    )
    _check(module, make_input, B)


@pytest.mark.parametrize("case", [*CELL_CASES, ("GRUCell", {"reset_after": False})], ids=case_id)
def test_cell_gradcheck(case):
    name, options = case
    module = getattr(ft, name)(INPUT_SIZE, H, **options)
    _check(module, lambda: torch.randn(B, INPUT_SIZE, dtype=torch.float64, requires_grad=True), B)


def test_unbatched_gradcheck():
    module = ft.LSTM(INPUT_SIZE, H, proj_size=1)
    _check(module, lambda: torch.randn(T, INPUT_SIZE, dtype=torch.float64, requires_grad=True),
           None)  # fmt: skip
