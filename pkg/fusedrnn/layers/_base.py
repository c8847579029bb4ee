"""What the recurrent layers and cells share beyond `fusedrnn._module.Module`: the sizes, the
gate blocks of their parameters and PyTorch's initialisation, and the checks of a state ``h`` or
an LSTM's pair ``(h, c)``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .._checks import check_choice, check_rows, check_size
from .._module import DTypeLike, Module
from .._spec import GATES

# hx of an LSTM is a pair (h, c); of a GRU or RNN one array.
State = np.ndarray | tuple


class RecurrentModule(Module):
    """Base of `fusedrnn.LSTM` / `GRU` / `RNN` and of the three cells.

    Holds the sizes, the kernel family and its options, and initialises the parameters named by
    `_parameter_shapes` as PyTorch does; the subclasses say which parameters they have and how
    a forward / backward runs.
    """

    _mode: ClassVar[str]  # "lstm", "gru" or "rnn": the kernel family
    _has_cell_state: ClassVar[bool] = False  # LSTM: hx is (h, c)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool,
        dtype: DTypeLike,
        seed: int | None,
        backend: str,
        options: dict | None = None,
    ) -> None:
        self.input_size = check_size(input_size, "input_size")
        self.hidden_size = check_size(hidden_size, "hidden_size")
        self.bias = bool(bias)
        super().__init__(dtype, seed, backend)
        # the kernel options of the family: reset_after (GRU) or nonlinearity (RNN)
        self._options = dict(options or {})
        for name, value in self._options.items():
            setattr(self, name, value)

    def _repr_args(self) -> list:
        # the family's fields (_repr_fields), then bias, as PyTorch's signatures order them
        return [
            str(self.input_size),
            str(self.hidden_size),
            *super()._repr_args(),
            *([] if self.bias else ["bias=False"]),
        ]

    def _role_shapes(self, input_size: int, output_size: int, proj_size: int = 0) -> dict:
        """The shape of each parameter role (`fusedrnn._spec.STACK_ROLES`) of one layer and
        direction taking inputs of ``input_size`` and states of ``output_size``: weight_ih and
        weight_hh have one block of hidden_size rows per gate."""
        rows = GATES[self._mode] * self.hidden_size
        return {
            "weight_ih": (rows, input_size),
            "weight_hh": (rows, output_size),
            "bias_ih": (rows,),
            "bias_hh": (rows,),
            "weight_hr": (proj_size, self.hidden_size),
            "weight_peephole": (3 * self.hidden_size,),
        }

    def _parameter_shapes(self) -> dict[str, tuple]:
        """Every parameter's name and shape, in PyTorch's order. Defined by each subclass."""
        raise NotImplementedError

    def _reset_parameters(self) -> None:
        """PyTorch's initialisation: every parameter uniform in +-1/sqrt(hidden_size).

        Drawn in float64 from the module's generator in name order and then cast, so modules of
        either dtype built with the same seed start from the same values.
        """
        bound = 1.0 / np.sqrt(self.hidden_size)
        self._set_parameters(
            {
                name: self._rng.uniform(-bound, bound, shape)
                for name, shape in self._parameter_shapes().items()
            }
        )

    # ------------------------------------------------------------ argument checks

    def _check_rows(self, rows: int) -> None:
        """Refuse, before anything is copied, T*B rows the fused kernels cannot take."""
        if self.backend == "fused":
            check_rows(rows)

    def _check_state(
        self,
        value: object,
        name: str,
        shape_h: tuple,
        shape_c: tuple,
        axes_h: tuple,
        axes_c: tuple,
        optional_parts: bool = False,
    ) -> tuple:
        """``(h, c)`` from ``value``: h, or (h, c) for an LSTM; ``(None, None)`` for None.

        ``optional_parts``: either part of an LSTM pair may be None (gradients: zeros).
        """
        if value is None:
            return None, None
        if not self._has_cell_state:
            return self._check_array(value, name, shape_h, axes_h), None
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(
                f"{name} of {type(self).__name__} must be a tuple (h, c), "
                f"got {type(value).__name__}"
            )
        h, c = value
        if not (optional_parts and h is None):
            h = self._check_array(h, f"{name}[0] (h)", shape_h, axes_h)
        if not (optional_parts and c is None):
            c = self._check_array(c, f"{name}[1] (c)", shape_c, axes_c)
        return h, c


def check_nonlinearity(nonlinearity: object) -> str:
    """``nonlinearity`` of an RNN or RNNCell: 'tanh' or 'relu'."""
    return check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
