"""The error of 16-bit weights (``weights_dtype``) on a trained model: docs/layers.md's numbers.

Trains the char-LM of ``python -m fusedrnn train-charlm`` (on the standard library's source,
``--time`` seconds, quiet), then evaluates its held-out loss with the float32 weights and with
``weights_dtype="float16"`` and ``"bfloat16"``; and, on the same held-out text, the largest
difference of the LSTM's outputs from the float32 layer's. Run from the repository root:

    PYTHONPATH=pkg python tools/half_weights_error.py --time 60 [--cell gru]
"""

from __future__ import annotations

import sys

import numpy as np

from fusedrnn import char_lm


def main(argv: list[str]) -> None:
    cfg = char_lm.parse_args([*argv, "--quiet", "--sample-chars", "8", "--eval-every", "0"])
    result = char_lm.train(cfg)
    model = result["model"]
    train_text, val_text, _ = char_lm.load_text(cfg)
    val_ids = char_lm.Vocabulary(train_text).encode(val_text)
    x = model.embedding(val_ids[:4096].reshape(16, 256).T)  # 16 streams of 256 characters
    model.rnn.eval()
    reference_output = model.rnn(x)[0]
    print(f"{cfg.cell}, hidden {cfg.hidden}, {result['steps']} training steps")
    for weights_dtype in (None, "float16", "bfloat16"):
        model.rnn.weights_dtype = weights_dtype
        loss = char_lm.evaluate(model, val_ids)
        output = model.rnn.eval()(x)[0]
        error = float(np.max(np.abs(output - reference_output)))
        print(
            f"weights {weights_dtype or 'float32':>8}: held-out loss {loss:.5f} nats/char, "
            f"max |output - float32's| {error:.2e}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
