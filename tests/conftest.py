import os
import sys

# The shared helpers (tests/cells.py) import as a plain module.
sys.path.insert(0, os.path.dirname(__file__))
