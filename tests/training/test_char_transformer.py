"""examples/char_transformer.py, tiny (seconds, on conftest.py's text): the loss falls and beats
the untrained and the unigram models on held-out text, and sampling with the KV caches gives the
very characters that recomputing the prefix gives, from the same seed."""

from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn import char_lm
from tests.helpers.examples import example_module


@pytest.fixture(scope="module")
def example():
    with example_module("char_transformer") as module:
        yield module


def tiny(example, text_file, **options):
    defaults = {
        "text": text_file,
        "d_model": 16,
        "heads": 2,
        "layers": 2,
        "d_ff": 32,
        "context": 24,
        "batch": 8,
        "time": 0,
        "steps": 60,
        "lr": 1e-2,
        "sample_chars": 20,
        "prompt": "def get_",
        "quiet": True,
    }
    return example.Config(**{**defaults, **options})


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"positions": "learned", "dtype": "float64", "activation": "gelu"},
        {"dropout": 0.1, "backend": "reference"},
    ],
    ids=["sinusoidal", "learned_gelu_float64", "dropout_reference"],
)
def test_loss_falls_and_cached_generation_is_the_same(example, text_file, options):
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(1)  # tiny layers: no thread waits on another
    try:
        result = example.train(tiny(example, text_file, **options))
    finally:
        fusedrnn.set_num_threads(before)
    history = result["history"]
    assert np.mean(history[-10:]) < 0.6 * np.mean(history[:5])
    assert result["held_out"] < result["unigram"] < result["initial"]
    assert result["sample"] == result["sample_uncached"]
    assert result["sample"].startswith("def get_")
    assert len(result["sample"]) == len("def get_") + 17  # cut to context - prompt + 1
    assert result["tokens_per_second"] > 0 and result["tokens_per_second_uncached"] > 0


def test_command_line(example):
    cfg = char_lm.parse_args(
        ["--layers", "3", "--positions", "learned", "--d-model", "32"],
        "char_transformer.py",
        example.Config,
        example.HELPS,
        {"positions": ["sinusoidal", "learned"]},
    )
    assert (cfg.layers, cfg.positions, cfg.d_model) == (3, "learned", 32)
    with pytest.raises(SystemExit):
        example.main(["--positions", "rotary"])
