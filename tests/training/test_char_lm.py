"""The character-level language model (`fusedrnn.char_lm`, behind ``fusedrnn train-charlm`` and
examples/char_lm.py): a short training run on a fixed seed makes the held-out loss go down and beat
the unigram model, on both backends alike, and every evaluation uses the same held-out text."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fusedrnn import char_lm as char_lm_module

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "char_lm.py"


@pytest.fixture(scope="module")
def char_lm():
    return char_lm_module


def small(char_lm, text_file, **options):
    defaults = {
        "text": text_file,
        "embed": 16,
        "hidden": 32,
        "batch": 8,
        "seq_len": 32,
        "time": 0,
        "steps": 60,
        "eval_every": 0,
        "sample_chars": 40,
        "lr": 1e-2,
        "quiet": True,
        "seed": 0,
    }
    return char_lm.Config(**{**defaults, **options})


@pytest.fixture(scope="module")
def long_text_file(tmp_path_factory):
    """~300k characters: a tenth (30k) is held out, more than the 20k the evaluations during
    training used to take from it."""
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    path = tmp_path_factory.mktemp("long") / "long.txt"
    path.write_text("".join(f"{a} = {b}({c})\n" for a, b, c in rng.choice(words, (20000, 3))))
    return str(path)


def test_every_evaluation_uses_the_same_held_out_text(char_lm, long_text_file, monkeypatch):
    """Evaluations during training (here after every step) and the final one see one and the
    same held-out array; with the learning rate at 0 the model never changes, so every held-out
    loss is the same number."""
    seen = []
    real = char_lm.evaluate

    def recording(model, data, *args, **kwargs):
        seen.append(data.copy())
        return real(model, data, *args, **kwargs)

    monkeypatch.setattr(char_lm, "evaluate", recording)
    result = char_lm.train(
        small(char_lm, long_text_file, steps=3, lr=0.0, eval_every=1e-9, sample_chars=4)
    )
    assert result["held_out_chars"] > 20_000
    assert len(seen) == len(result["evals"]) >= 4  # the untrained model, 2+ during, the final
    for data in seen:
        np.testing.assert_array_equal(data, seen[0])
    assert len(seen[0]) == result["held_out_chars"]
    losses = [loss for _, _, loss in result["evals"]]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-12)
    assert result["held_out"] == losses[-1] and result["initial"] == losses[0]


def test_short_training_run_makes_the_loss_go_down(char_lm, text_file):
    result = char_lm.train(small(char_lm, text_file))
    assert result["steps"] == 60
    assert result["held_out"] < result["initial"] - 1.0
    assert result["held_out"] < result["unigram"] - 0.5
    history = result["history"]
    assert np.mean(history[-10:]) < np.mean(history[:10]) - 1.0
    assert result["sample"].startswith("def ") and len(result["sample"]) == 4 + 40
    assert result["chars_per_second"] > 0


def test_reference_backend_trains_the_same_model(char_lm, text_file):
    runs = [
        char_lm.train(
            small(char_lm, text_file, steps=4, dtype="float64", backend=backend, sample_chars=5)
        )
        for backend in ("fused", "reference")
    ]
    np.testing.assert_allclose(runs[0]["history"], runs[1]["history"], rtol=1e-9)
    assert math.isclose(runs[0]["held_out"], runs[1]["held_out"], rel_tol=1e-9)


@pytest.mark.parametrize(
    "options",
    [{"cell": "gru"}, {"truncate": 8, "truncate_stride": 4}, {"layers": 2}],
    ids=["gru", "truncate", "two_layers"],
)
def test_variants_train(char_lm, text_file, options):
    result = char_lm.train(small(char_lm, text_file, steps=30, **options))
    assert result["held_out"] < result["initial"] - 0.5


def test_vocabulary_maps_rare_characters_to_unknown(char_lm):
    vocab = char_lm.Vocabulary("aaaaabbbbbc", min_count=5)
    assert vocab.chars == ["a", "b", char_lm.UNKNOWN]
    ids = vocab.encode("abcz")
    np.testing.assert_array_equal(ids, [0, 1, 2, 2])
    assert vocab.decode(ids) == "ab" + 2 * char_lm.UNKNOWN


def test_command_line(char_lm):
    cfg = char_lm.parse_args(
        [
            "--time",
            "5",
            "--cell",
            "gru",
            "--top-k",
            "5",
            "--quiet",
            "--backend",
            "reference",
            "--truncate",
            "16",
        ]
    )
    assert (cfg.time, cfg.cell, cfg.top_k, cfg.quiet, cfg.backend, cfg.truncate) == (
        5.0,
        "gru",
        5,
        True,
        "reference",
        16,
    )
    assert char_lm.parse_args([]) == char_lm.Config()


def test_command_line_subcommand(text_file, capsys):
    from fusedrnn.__main__ import build_parser, main

    assert "train-charlm" in build_parser().format_help()
    code = main(
        [
            "train-charlm",
            "--text",
            text_file,
            "--time",
            "0",
            "--steps",
            "3",
            "--hidden",
            "16",
            "--batch",
            "4",
            "--seq-len",
            "8",
            "--eval-every",
            "0",
            "--sample-chars",
            "10",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "held-out loss" in out and "unigram model" in out and "done: 3 steps" in out
    with pytest.raises(SystemExit):
        main(["train-charlm", "--help"])
    assert "fusedrnn train-charlm" in capsys.readouterr().out


def test_the_example_script_runs_the_package_program():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(
                None,
                [
                    str(pathlib.Path(char_lm_module.__file__).parents[1]),
                    os.environ.get("PYTHONPATH"),
                ],
            )
        ),
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "examples/char_lm.py" in result.stdout and "--val-chars" in result.stdout
