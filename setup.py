"""Build of the two compiled parts of fusedrnn.

* ``fusedrnn._core``: the pybind11 extension with every C++ kernel (``csrc/``).
* ``fusedrnn._blas``: a small Cython module that hands the addresses of the BLAS routines that SciPy
  ships (``scipy.linalg.cython_blas``) to ``_core``, so no separate BLAS is installed or linked.

The elementwise kernels are compiled once per instruction set (portable, AVX2+FMA, AVX-512) by
``csrc/isa/*.cpp`` and chosen at import time; nothing is built for the native CPU unless
``FUSEDRNN_NATIVE=1`` is set.
"""

import os
import sys
from glob import glob

from Cython.Build import cythonize
from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import Extension, setup
from setuptools.errors import CompileError


def _has_flag(compiler, flag: str, source: str = "int main() { return 0; }\n") -> bool:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".cpp", delete=False) as f:
        f.write(source)
        name = f.name
    try:
        compiler.compile([name], output_dir=tempfile.gettempdir(), extra_postargs=[flag])
    except CompileError:
        return False
    finally:
        os.unlink(name)
    return True


class BuildExt(build_ext):
    """Adds OpenMP when the compiler has it (scikit-learn does the same probe) and
    ``FUSEDRNN_OPENMP=0`` is not set; without it the kernels run on one thread."""

    def build_extensions(self):
        # omp.h, not only the flag: clang accepts -fopenmp even where libomp is not installed.
        openmp = (
            os.environ.get("FUSEDRNN_OPENMP") != "0"
            and sys.platform != "win32"
            and _has_flag(
                self.compiler,
                "-fopenmp",
                "#include <omp.h>\nint main() { return omp_get_max_threads(); }\n",
            )
        )
        for ext in self.extensions:
            if ext.name == "fusedrnn._core" and openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
                ext.define_macros.append(("FUSEDRNN_OPENMP", "1"))
        super().build_extensions()


# Compile the two dozen C++ files in parallel, one per core (one at a time took over 2
# minutes on 2 cores). NPY_NUM_BUILD_JOBS=N sets another number of jobs, as for numpy and scipy.
ParallelCompile("NPY_NUM_BUILD_JOBS", default=0).install()

sources = sorted(
    glob("csrc/*.cpp")
    + glob("csrc/common/*.cpp")
    + glob("csrc/isa/*.cpp")
    + glob("csrc/bindings/*.cpp")
)
compile_args = ["-O3", "-fno-math-errno", "-Wall", "-Wno-psabi"]
if os.environ.get("FUSEDRNN_NATIVE") == "1":
    compile_args.append("-march=native")
if os.environ.get("FUSEDRNN_SANITIZE") == "1":
    # -UNDEBUG (Python's CFLAGS define NDEBUG): the asserts come back, among them pybind11's
    # check that no reference count is touched without the GIL (PYBIND11_ASSERT_GIL_HELD_...).
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-UNDEBUG"]

# Headers and included kernel texts: without them, editing a .h or .inc leaves the build
# "up to date".
depends = sorted(glob("csrc/**/*.h", recursive=True) + glob("csrc/**/*.inc", recursive=True))

core = Pybind11Extension(
    "fusedrnn._core",
    sources,
    depends=depends,
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=compile_args,
    extra_link_args=["-fsanitize=address,undefined"]
    if os.environ.get("FUSEDRNN_SANITIZE") == "1"
    else [],
)
blas = Extension("fusedrnn._blas", ["pkg/fusedrnn/_blas.pyx"], extra_compile_args=["-O2"])

setup(
    ext_modules=[core, *cythonize([blas], compiler_directives={"language_level": "3"})],
    cmdclass={"build_ext": BuildExt},
)
