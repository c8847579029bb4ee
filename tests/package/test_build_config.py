"""What the build chose: the instruction-set path, OpenMP, and how show_config reports them.

The kernel tests force each instruction set the CPU supports (`_core.select_isa`, parametrised
over `_core.isa_supported`); these check the choice made without forcing, and what a user reads.
"""

import platform

import pytest

import fusedrnn
from fusedrnn import _core

# Taken when the module is collected, before any test selects an instruction set.
DEFAULT_ISA = _core.active_isa()
ALL_ISAS = ("baseline", "avx2", "avx512")
SUPPORTED = [isa for isa in ALL_ISAS if _core.isa_supported(isa)]
MACHINE = platform.machine().lower()
X86 = MACHINE in ("x86_64", "amd64", "i386", "i686")


def test_the_default_is_the_widest_supported_path():
    assert SUPPORTED[0] == "baseline"
    assert SUPPORTED[-1] == DEFAULT_ISA


def test_only_x86_has_paths_beyond_the_portable_baseline():
    if not X86:
        assert SUPPORTED == ["baseline"]
    for isa in ("avx2", "avx512"):
        if isa not in SUPPORTED:
            with pytest.raises(ValueError, match="supported by this CPU"):
                _core.select_isa(isa)


@pytest.mark.parametrize("isa", SUPPORTED)
def test_every_supported_path_can_be_forced(isa):
    try:
        _core.select_isa(isa)
        assert _core.active_isa() == isa
        assert fusedrnn._config.config()["isa"] == isa
    finally:
        _core.select_isa(DEFAULT_ISA)


def test_show_config_names_the_path_and_its_vectors(capsys):
    fusedrnn.show_config()
    lines = capsys.readouterr().out.splitlines()
    assert f"isa: {DEFAULT_ISA}" in [line.strip() for line in lines]
    vectors = next(line for line in lines if line.strip().startswith("isa_vectors:"))
    expected = {
        "avx512": "AVX-512, 64-byte vectors",
        "avx2": "AVX2 + FMA, 32-byte vectors",
        "baseline": "portable 16-byte vectors",
    }[DEFAULT_ISA]
    assert expected in vectors
    if DEFAULT_ISA == "baseline" and X86:
        assert "(SSE2)" in vectors
    if MACHINE in ("aarch64", "arm64"):
        assert "(NEON)" in vectors


def test_show_config_says_when_the_build_has_no_openmp(capsys):
    fusedrnn.show_config()
    line = next(
        line.strip()
        for line in capsys.readouterr().out.splitlines()
        if line.strip().startswith("openmp:")
    )
    if _core.have_openmp():
        assert line == "openmp: True"
    else:
        assert line.startswith("openmp: False (built without OpenMP: the kernels run on one thread")


def test_show_config_says_whether_amx_serves_bfloat16():
    """AMX only where the CPU and OS allow it (x86, AVX-512 among the paths), used on the AVX-512
    path and named so; off it (another path forced, or switched off) it is available, unused."""
    usable = _core.amx_usable()
    if usable:
        assert X86 and "avx512" in SUPPORTED
    states = {}
    try:
        for isa in SUPPORTED:
            _core.select_isa(isa)
            for enabled in (True, False):
                _core._set_amx_enabled(enabled)
                states[isa, enabled] = (_core.amx_active(), fusedrnn._config.config()["amx"])
    finally:
        _core._set_amx_enabled(True)
        _core.select_isa(DEFAULT_ISA)
    for (isa, enabled), (active, line) in states.items():
        assert active == (usable and enabled and isa == "avx512")
        if active:
            assert line.startswith("yes: inference with bfloat16 weights")
        elif usable:
            assert line == "available, not in use (it serves the avx512 path)"
        else:
            assert line.startswith("no (needs an Intel Xeon with AMX")
