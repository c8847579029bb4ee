#!/usr/bin/env bash
# Cross-compile fusedrnn for aarch64 Linux with GCC and run tests under qemu-user: the check that
# on a CPU without x86 instruction sets (AWS Graviton, Linux on Apple silicon) the sources build,
# the portable baseline (16-byte generic vectors, which GCC maps to NEON) is the path chosen, and
# its results pass the tests. Not part of .ci/run: on 2 shared cores the build took 1.5 to 5
# minutes and the default tests 4 to 21 under emulation, by how busy the cores were (the first run
# also fetches about 140 MB of Debian packages: 2.5 min with a quick build and two test files).
#
#   bash tools/aarch64.sh [pytest args]
#
# Without pytest args it runs the kernel and layer test files listed in default_tests below.
#
# Needs, on Debian bookworm x86-64 as root: g++-aarch64-linux-gnu, qemu-user-static (or
# qemu-user), debootstrap, and an active Python environment with pybind11 and Cython (the build
# requirements: pybind11 is header-only, Cython writes portable C). The aarch64 Python, with
# Debian's python3 (3.11), numpy 1.24, scipy 1.10, pytest and hypothesis, is unpacked once into
# $FUSEDRNN_ARM64_ROOT (default: build/aarch64/root). Its packages are only unpacked (no chroot,
# no maintainer scripts: `debootstrap --foreign`, then `dpkg-deb -x`), so the BLAS links that
# Debian's alternatives would make are made here; qemu's -L finds the libraries in that root.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
start=$SECONDS

out="$repo/build/aarch64"
root="${FUSEDRNN_ARM64_ROOT:-$out/root}"
triplet=aarch64-linux-gnu
default_tests=(
  tests/kernels tests/attention/test_attention.py tests/layers/test_nn.py
  tests/layers/test_layers.py tests/robustness/test_nonfinite.py tests/robustness/test_threads.py
  tests/package/test_build_config.py
)

fail() {
  echo "aarch64.sh: $*" >&2
  exit 1
}
qemu="$(command -v qemu-aarch64-static || command -v qemu-aarch64)" \
  || fail "no qemu-aarch64: apt-get install qemu-user-static"
command -v "$triplet-g++" > /dev/null || fail "no $triplet-g++: apt-get install g++-$triplet"
pybind11_include="$(python -c 'import pybind11; print(pybind11.get_include())')" \
  || fail "the active Python needs pybind11 (and Cython)"

# ---- the aarch64 Python, once ----
if [[ ! -x "$root/usr/bin/python3" ]]; then
  command -v debootstrap > /dev/null || fail "no debootstrap: apt-get install debootstrap"
  mkdir -p "$root"
  packages=python3,python3-dev,python3-numpy,python3-scipy,python3-pytest,python3-hypothesis
  debootstrap --arch=arm64 --foreign --variant=minbase --include="$packages,libgomp1" \
    bookworm "$root" http://deb.debian.org/debian
  for deb in "$root"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$root"; done
  # What update-alternatives would link: numpy and scipy load libblas.so.3 and liblapack.so.3.
  lib="$root/usr/lib/$triplet"
  for name in libblas.so.3 liblapack.so.3 libopenblas.so.0; do
    ln -sf "openblas-pthread/$name" "$lib/$name"
  done
fi
python_arm64="$root/usr/bin/python3"
run_arm64() { "$qemu" -L "$root" "$python_arm64" "$@"; }
suffix="$(run_arm64 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"

# ---- the two extensions, cross-compiled (setup.py's flags; OpenMP with the cross libgomp) ----
rm -rf "$out/obj" "$out/pkg"
mkdir -p "$out/obj" "$out/pkg"
cp -r pkg/fusedrnn "$out/pkg/"
find "$out/pkg" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
python_includes=(-I"$root/usr/include/python3.11" -idirafter "$root/usr/include")
cxx_flags=(-std=c++17 -O3 -fno-math-errno -Wall -Wno-psabi -fPIC -fvisibility=hidden -DNDEBUG
           -fopenmp -DFUSEDRNN_OPENMP=1 -Icsrc -I"$pybind11_include" "${python_includes[@]}")
export out triplet
printf '%s\n' csrc/*.cpp csrc/common/*.cpp csrc/isa/*.cpp csrc/bindings/*.cpp \
  | xargs -P "$(nproc)" -I{} sh -c \
      'src="$1"; shift; "$triplet-g++" "$@" -c "$src" -o "$out/obj/$(echo "$src" | tr / _).o"' \
      sh {} "${cxx_flags[@]}"
"$triplet-g++" -shared -fopenmp "$out"/obj/*.o -o "$out/pkg/fusedrnn/_core$suffix"
# Cython reads the cimported declarations of the aarch64 root's SciPy (the signatures of
# scipy.linalg.cython_blas that it checks at import).
python -m cython -3 -I "$root/usr/lib/python3/dist-packages" pkg/fusedrnn/_blas.pyx \
  -o "$out/obj/_blas.c"
"$triplet-gcc" -O2 -fPIC -shared -DNDEBUG "${python_includes[@]}" "$out/obj/_blas.c" \
  -o "$out/pkg/fusedrnn/_blas$suffix"
echo "aarch64.sh: built in $((SECONDS - start)) s"

# ---- the tests, under emulation ----
export PYTHONPATH="$out/pkg"
run_arm64 -c 'import fusedrnn, platform; assert platform.machine() == "aarch64"
assert fusedrnn._core.active_isa() == "baseline", fusedrnn._core.active_isa()
fusedrnn.show_config()'
# The two tests that time one 60000-step call against the other thread's calls: under emulation
# that call alone outlasts their two-minute join.
if [[ $# -eq 0 ]]; then set -- -q -k "not two_threads_overlap" "${default_tests[@]}"; fi
run_arm64 -m pytest -p no:cacheprovider "$@"
echo "aarch64.sh: done in $((SECONDS - start)) s"
