#!/usr/bin/env bash
# Build fusedrnn with AddressSanitizer and UndefinedBehaviorSanitizer in a fresh virtual
# environment and run the test suite under them. Slower than the normal run, so not part of
# .ci/run; run it before a release or after touching the kernels:
#
#   bash tools/sanitize.sh [--head] [pytest args]
#
# The tests marked slow are left out as in the default run; add -m "" to run them too.
#
# Every instruction-set path of the kernels the CPU can run is exercised: the whole suite runs on
# the widest (tests/kernels force each supported one in turn), then the tests that reach the
# kernels through the layers and bindings (tests/layers, attention, robustness, training) run again
# with each other supported path forced (pytest --isa, tests/conftest.py): the portable baseline
# and AVX2 on any x86-64 machine with AVX2, AVX-512 only where the CPU has it (it cannot be
# emulated here; the summary says which paths ran). With pytest args, the forced runs take them
# instead of those folders.
#
# What is built: a clean copy of the source in a temporary folder, never the checkout itself,
# whose build/ folder, in-place _core*.so and egg-info could otherwise be picked up by pip and
# installed uninstrumented. By default the copy holds the working tree as it is, uncommitted
# edits included: every tracked file that exists plus untracked files that .gitignore does not
# ignore (`git ls-files --cached --others --exclude-standard`). With --head it is exactly the
# last commit (`git archive HEAD`). Outside a git checkout the folder is copied without build/,
# dist/, *.so, *.egg-info and caches.
#
# The run refuses to start unless the installed fusedrnn/_core*.so references the ASan and UBSan
# runtimes, and unless the test process imports that installed package (not pkg/ of a source
# tree). Sanitizer reports are written to files; any report fails the run, after printing it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

source_mode=worktree
if [[ "${1:-}" == "--head" ]]; then
  source_mode=head
  shift
fi

fail() {
  echo "sanitize.sh: $*" >&2
  exit 1
}

start=$SECONDS
work="$(mktemp -d -t fusedrnn-sanitize.XXXXXX)"
src="$work/src"
logs="$work/reports"
mkdir -p "$src" "$logs"
echo "sanitize.sh: working in $work"

# ---------------------------------------------------------------- a clean copy of the source
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  if [[ $source_mode == head ]]; then
    git -C "$repo" archive --format=tar HEAD | tar -x -C "$src"
    echo "sanitize.sh: source = HEAD ($(git -C "$repo" rev-parse --short HEAD)); uncommitted edits are not tested"
  else
    # Files deleted in the working tree are listed by --cached but absent: skip them.
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
       | while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done \
       | tar --null -T - -c -f -) | tar -x -C "$src"
    dirty="$(git -C "$repo" status --porcelain --untracked-files=normal | wc -l)"
    echo "sanitize.sh: source = working tree of $(git -C "$repo" rev-parse --short HEAD)" \
         "with $dirty uncommitted/untracked path(s) included (--head for the commit alone)"
  fi
else
  [[ $source_mode == head ]] && fail "--head needs a git checkout"
  tar -C "$repo" -c -f - --exclude=./build --exclude=./dist --exclude='*.so' \
      --exclude='*.egg-info' --exclude=__pycache__ --exclude='.venv*' --exclude=.pytest_cache \
      --exclude=.hypothesis . | tar -x -C "$src"
  echo "sanitize.sh: source = a copy of $repo (not a git checkout)"
fi
# Nothing prebuilt may reach the build.
stale="$(find "$src" \( -name '*.so' -o -name '*.egg-info' -o -name build -type d \) -print)"
[[ -z "$stale" ]] || fail "the clean copy holds build products: $stale"

# ---------------------------------------------------------------- build and install
venv="$work/venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
# pip's isolated build environment brings setuptools, pybind11, Cython and scipy into the fresh
# venv's build (pyproject.toml); --no-cache-dir so no wheel built earlier is reused.
(cd "$src" && FUSEDRNN_SANITIZE=1 python -m pip install --quiet --no-cache-dir ".[test]")

# ---------------------------------------------------------------- is it the instrumented build?
# Located without importing it (an ASan-built module cannot load before the runtime is
# preloaded), from the folder pytest runs in, as pytest does: it must be the venv's copy.
site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')"
pkgdir="$(cd "$src" && PYTHONSAFEPATH=1 python -c \
  'import importlib.util as u; print(u.find_spec("fusedrnn").submodule_search_locations[0])')"
[[ "$pkgdir" == "$site/fusedrnn" ]] \
  || fail "fusedrnn is found in $pkgdir, not in the venv's $site: refusing to run"
cores=("$pkgdir"/_core*.so)
[[ ${#cores[@]} -eq 1 && -f "${cores[0]}" ]] || fail "expected one _core*.so in $pkgdir: ${cores[*]}"
core="${cores[0]}"
asan_lib="$(ldd "$core" | awk '/libasan\.so/ {print $3; exit}')"
ubsan_lib="$(ldd "$core" | awk '/libubsan\.so/ {print $3; exit}')"
asan_syms="$(nm -D --undefined-only "$core" | grep -c '__asan_report_load' || true)"
ubsan_syms="$(nm -D --undefined-only "$core" | grep -c '__ubsan_handle_' || true)"
echo "sanitize.sh: $core"
echo "  ldd: libasan = ${asan_lib:-MISSING}, libubsan = ${ubsan_lib:-MISSING}"
echo "  nm -D: $asan_syms __asan_report_load* and $ubsan_syms __ubsan_handle_* symbols"
if [[ -z "$asan_lib" || -z "$ubsan_lib" || "$asan_syms" -eq 0 || "$ubsan_syms" -eq 0 ]]; then
  fail "the installed extension is NOT instrumented with ASan + UBSan: refusing to run the tests"
fi

# ---------------------------------------------------------------- the run
# Python itself is not built with ASan (nor are numpy and scipy): the runtimes the extension was
# linked against are preloaded. Python's own allocations at exit are not leaks of ours, so leak
# detection is off. A failed huge allocation returns NULL (numpy then raises MemoryError, which
# tests/robustness/test_sizes.py expects) instead of ASan aborting on it. The first error aborts the run.
# ASan writes every report to a file in $logs (one per process: subprocesses of the tests too).
# GCC's UBSan runtime, preloaded beside libasan, ignores log_path and writes to stderr: pytest
# runs with --capture=sys so that native stderr is not swallowed with a test that dies, and its
# "runtime error:" reports are copied from the log into $logs below.
export LD_PRELOAD="$asan_lib:$ubsan_lib"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1:log_path=$logs/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"

# The check again with the runtimes loaded, in the test folder.
(cd "$src" && PYTHONSAFEPATH=1 python -c 'import fusedrnn._core as c; print(c.__file__)') \
  | grep -qxF "$core" || fail "with the sanitizers preloaded fusedrnn._core is not $core"

cd "$src"
supported_isas="$(PYTHONSAFEPATH=1 python -c 'from fusedrnn import _core
print(" ".join(i for i in ("baseline", "avx2", "avx512") if _core.isa_supported(i)))')"
default_isa="$(PYTHONSAFEPATH=1 python -c 'from fusedrnn import _core; print(_core.active_isa())')"
status=0
summary=()
# One pytest run: its log is $work/pytest.<name>.log. PYTHONSAFEPATH: `python -m pytest` puts no
# source folder on sys.path. Not -q: the report header (tests/conftest.py) names the _core the
# test process really imported and the instruction-set path in use, both checked.
run_pytest() {
  local name="$1" isa="$2"
  shift 2
  local log="$work/pytest.$name.log" run_status
  set +e
  PYTHONSAFEPATH=1 python -m pytest -p no:cacheprovider --capture=sys "$@" 2>&1 | tee "$log"
  run_status=${PIPESTATUS[0]}
  set -e
  if ! grep -qxF "fusedrnn._core: $core" "$log"; then
    echo "sanitize.sh: the test process did not report importing $core" >&2
    run_status=1
  fi
  if ! grep -qxF "fusedrnn isa: $isa" "$log"; then
    echo "sanitize.sh: the $name run did not run on the $isa path" >&2
    run_status=1
  fi
  [[ $run_status -eq 0 ]] || status=1
  summary+=("$name ($isa): $(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 | tr -d '=')")
  # A UBSan report: its "file:line:col: runtime error: ..." line and the stack lines after it.
  LD_PRELOAD= awk '/: runtime error: /{on=1} on && !/^( +#[0-9]|0x[0-9a-f]+: note|  *\^| [0-9a-f ]+$|.*: runtime error: )/{on=0} on' \
    "$log" > "$logs/ubsan.$name.from-stderr"
  [[ -s "$logs/ubsan.$name.from-stderr" ]] || rm -f "$logs/ubsan.$name.from-stderr"
}

run_pytest suite "$default_isa" "$@"
forced_targets=("$@")
[[ $# -gt 0 ]] || forced_targets=(tests/layers tests/attention tests/robustness tests/training)
for isa in $supported_isas; do
  [[ $isa == "$default_isa" ]] && continue
  run_pytest "forced-$isa" "$isa" --isa "$isa" "${forced_targets[@]}"
done
unset LD_PRELOAD
# With allocator_may_return_null, ASan still notes each refused huge allocation (tests/robustness/test_sizes
# asks for them): printed, not counted. Any other line in a report fails the run.
benign='^==[0-9]+==WARNING: AddressSanitizer failed to allocate 0x[0-9a-f]+ bytes$'
failed_reports=0
shopt -s nullglob
for f in "$logs"/*; do
  echo "===== sanitizer report $f"
  cat "$f"
  if grep -qvE "$benign" "$f"; then
    failed_reports=$((failed_reports + 1))
  else
    echo "(only refused huge allocations, which the tests ask for: not an error)"
  fi
done
if [[ $failed_reports -gt 0 ]]; then
  echo "sanitize.sh: $failed_reports sanitizer report(s) with errors above" >&2
  status=1
fi
echo "sanitize.sh: instruction-set paths this CPU runs: $supported_isas (default $default_isa)"
for isa in baseline avx2 avx512; do
  [[ " $supported_isas " == *" $isa "* ]] || echo "  $isa: not supported by this CPU, not run"
done
printf '  %s\n' "${summary[@]}"
echo "sanitize.sh: wall time $((SECONDS - start)) s; logs in $work"
if [[ $status -ne 0 ]]; then
  echo "sanitizers: FAILED (pytest exit status and reports above)" >&2
  exit "$status"
fi
echo "sanitizers: clean"
