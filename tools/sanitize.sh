#!/usr/bin/env bash
# Build fusedrnn with AddressSanitizer and UndefinedBehaviorSanitizer in a fresh virtual
# environment and run the test suite under them. Slower than the normal run, so not part of
# .ci/run; run it before a release or after touching the kernels:  bash tools/sanitize.sh [pytest args]
# (the tests marked slow are left out as in the default run; add -m "" to run them too).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
FUSEDRNN_SANITIZE=1 python -m pip install --quiet ".[test]"

# Python itself is not built with ASan: the runtimes are preloaded. Python's own allocations at
# exit are not leaks of ours, so leak detection is off; any error aborts the run. A failed huge
# allocation returns NULL (numpy then raises MemoryError, which tests/test_sizes.py expects)
# instead of ASan aborting on it.
LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
python -m pytest -q -p no:cacheprovider "$@"
echo "sanitizers: clean"
