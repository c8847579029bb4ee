"""``python -m fusedrnn bench --torch-training``: the training-step rows, on tiny sizes."""

from __future__ import annotations

import numpy as np

from fusedrnn.__main__ import main
from fusedrnn.bench import torch_training
from tests.torch.cases import torch  # skips this module without PyTorch

TINY = [
    torch_training.TrainingCase("char", "LSTM", 20, 8, bptt=4, batch=3),
    torch_training.TrainingCase("word", "GRU", 50, 8, bptt=4, batch=3),
    torch_training.TrainingCase("char", "GRU", 20, 8, bptt=4, batch=3, frozen_bottom=True),
    torch_training.CellLoopCase("LSTMCell", 8, steps=3, batch=2),
    torch_training.CellLoopCase("GRUCell", 8, steps=3, batch=2),
    torch_training.CellLoopCase("RNNCell", 8, steps=3, batch=2),
]


def test_the_rows_check_both_models_and_time_them():
    lines = torch_training.run(TINY, np.float64, threads=1, repeats=1)
    rows = [line for line in lines if line.startswith(("char-level", "word-level", "LSTMCell",
                                                       "GRUCell", "RNNCell"))]  # fmt: skip
    assert len(rows) == 6
    assert sum(row.startswith("char-level GRU vocab=20 nhid=8 bptt=4 B=3, layer 0 frozen")
               for row in rows) == 1  # fmt: skip
    for row in rows:
        *_, torch_ms, fused_ms, speedup, paired, check = row.split()
        assert float(torch_ms) > 0 and float(fused_ms) > 0
        assert float(speedup.rstrip("x")) > 0
        assert paired == speedup  # one pair of steps: its ratio is the medians' ratio
        assert float(check) <= torch_training.TOLERANCE[np.dtype(np.float64)]
    assert not lines[-1].startswith("FAILED")
    assert any("PyTorch 2" in line for line in lines)


def test_command_line_refuses_what_it_cannot_do(capsys):
    assert main(["bench", "--torch-training", "--json", "out.json"]) == 2
    assert main(["bench", "--torch-training", "--only", "attention"]) == 2
    assert "LSTM, GRU and RNN rows only" in capsys.readouterr().err


def test_fine_tuning_rows_train_layer_1_and_the_decoder_only():
    case = torch_training.TrainingCase("char", "LSTM", 20, 8, frozen_bottom=True)
    model = torch_training.make_model(torch, case, 0.0, torch.float64)
    trained = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trained == ["decoder.bias", "decoder.weight", "rnn.bias_hh_l1", "rnn.bias_ih_l1",
                       "rnn.weight_hh_l1", "rnn.weight_ih_l1"]  # fmt: skip
