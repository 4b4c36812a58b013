"""The oneDNN library, from the ``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp`` wheels: where
its headers and library are, which instruction set it runs on this CPU, and which
implementations it chose for the convolutions run so far."""
import ctypes
import functools
import importlib.metadata
from pathlib import Path

LIBRARY = "libdnnl.so.3"

# dnnl_get_effective_cpu_isa()'s values (dnnl_cpu_isa_t, oneDNN 3.2): each ISA's bits hold
# those of the ISAs it includes.
ISAS = {0x1: "sse41", 0x3: "avx", 0x7: "avx2", 0xf: "avx2_vnni", 0x1f: "avx2_vnni_2",
        0x27: "avx512_core", 0x67: "avx512_core_vnni", 0xe7: "avx512_core_bf16",
        0x1ef: "avx512_core_fp16", 0xfef: "avx512_core_amx", 0x1fef: "avx512_core_amx_fp16"}
BF16_ISA = 0xe7  # avx512_core_bf16; the AMX ISAs include it


class OnednnError(RuntimeError):
    """oneDNN cannot be found, or cannot run what was asked; the message says what to do."""


def _installed_file(distribution, suffix):
    """The path of the file of an installed wheel whose name ends with ``suffix``."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.as_posix().endswith(suffix):
            return Path(file.locate()).resolve()
    raise OnednnError(f"oneDNN's {distribution} wheel is not installed; pip install -e . "
                      f"installs it")


@functools.lru_cache(maxsize=None)
def library_dir():
    return str(_installed_file("onednn-cpu-gomp", LIBRARY).parent)


@functools.lru_cache(maxsize=None)
def include_dir():
    return str(_installed_file("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp").parents[2])


@functools.lru_cache(maxsize=None)
def _library():
    return ctypes.CDLL(str(Path(library_dir()) / LIBRARY))


def cpu_isa():
    """The instruction set oneDNN runs on here (``ONEDNN_MAX_CPU_ISA`` can lower it)."""
    value = _library().dnnl_get_effective_cpu_isa()
    return ISAS.get(value, hex(value)), value


def has_bf16():
    """Whether oneDNN runs bf16 products on this CPU's bf16 units (AMX or AVX512-BF16)."""
    return cpu_isa()[1] & BF16_ISA == BF16_ISA


_implementations = {}  # (precision, pass) -> the implementations oneDNN chose


def note_implementation(precision, conv_pass, implementation):
    """Called by the convolution ops' C code when oneDNN chooses an implementation."""
    _implementations.setdefault((precision, conv_pass), set()).add(implementation)


def implementations():
    """``"pass: implementation, ..."`` for each precision and pass run so far, e.g.
    ``{"bf16": "forward: brgconv:avx512_core_amx; ..."}``."""
    found = {}
    for (precision, conv_pass), names in sorted(_implementations.items()):
        found.setdefault(precision, []).append(f"{conv_pass}: {', '.join(sorted(names))}")
    return {precision: "; ".join(parts) for precision, parts in found.items()}
