"""A character-level language model trained with truncated backpropagation through time.

The program lives in the package as `fusedrnn.char_lm` (so ``python -m fusedrnn train-charlm``
runs it from an installed wheel too); this script runs the same program::

    python examples/char_lm.py                        # 5 minutes on the standard library
    python examples/char_lm.py --time 60 --cell gru   # shorter, with a GRU
    python examples/char_lm.py --help                 # every option

Read pkg/fusedrnn/char_lm.py for the model, the training loop and the evaluation.
"""

from fusedrnn.char_lm import main

if __name__ == "__main__":
    main(prog="examples/char_lm.py")
