"""Configure Theano before its first import, then re-export it.

Theano reads its configuration once, at import, from ``THEANO_FLAGS`` and ``~/.theanorc``.
This module puts our defaults *in front of* the user's ``THEANO_FLAGS`` (Theano lets the
later value of a key win) and skips any key the user set in ``.theanorc``:

- ``floatX=float32``: the model is float32 throughout, as the original.
- ``blas.ldflags``: the 32-bit-integer OpenBLAS from the PyPI wheel ``scipy-openblas32``.
  numpy's own bundled OpenBLAS is ILP64 with suffixed symbols, which Theano cannot call.
  The wheel prefixes its symbols with ``scipy_``; Theano passes non ``-l/-L`` tokens of
  ``blas.ldflags`` to the compiler, so ``-Dsgemm_=scipy_sgemm_`` renames the calls.
- ``openmp=True``, ``openmp_elemwise_minsize=4000``: Theano's elementwise ops over more
  than 4000 elements (the default, 200000, leaves the model's 8x8 maps on one core) use
  all cores, like our own ops; ``OMP_NUM_THREADS`` sets how many.
- ``base_compiledir``: a cache folder of our own, so that these flags never mix with
  modules compiled under other settings.
- ``cycle_detection=fast``: the default ('regular') checks the whole graph for cycles
  after every candidate in-place rewrite, quadratic in graph size; 'fast' checks one level
  and makes fewer ops in-place, which optimises the training step's graph much faster.
- ``traceback.limit=0``: Theano records the Python stack at every variable it creates, for
  error messages that say where a node came from; that is a third of the time it takes to
  build the Table 3 model. Set it to 8 (Theano's default) when debugging a graph.
"""
import configparser
import ctypes
import os
import sys
import warnings

from . import patches

# BLAS routines Theano's C code calls (theano/tensor/blas*.py, nnet/corr*.py).
_BLAS_ROUTINES = ("gemm", "gemv", "ger", "dot", "axpy", "scal", "copy")


def _openblas_ldflags():
    try:
        import scipy_openblas32
    except ImportError:
        return None
    libdir = scipy_openblas32.get_lib_dir()
    # Load it process-wide now, so that Theano's compiled modules find it by soname
    # at dlopen time (THEANO_FLAGS cannot carry the commas of an -rpath linker flag).
    ctypes.CDLL(os.path.join(libdir, "libscipy_openblas.so"), mode=ctypes.RTLD_GLOBAL)
    renames = [f"-D{p}{r}_=scipy_{p}{r}_" for r in _BLAS_ROUTINES for p in "sd"]
    renames += [f"-Dopenblas_{f}_num_threads=scipy_openblas_{f}_num_threads" for f in ("set", "get")]
    renames += ["-Dgoto_set_num_threads=scipy_goto_set_num_threads"]  # for openmp=True
    renames = " ".join(renames)
    return f"-L{libdir} -lscipy_openblas {renames}"


def _user_theanorc_keys():
    """Keys (``section.option``) set in the user's .theanorc files."""
    paths = os.environ.get("THEANORC", os.path.expanduser("~/.theanorc")).split(os.pathsep)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read([p for p in paths if os.path.isfile(p)])
    keys = set()
    for section in parser.sections():
        prefix = "" if section == "global" else section + "."
        keys.update(prefix + option for option in parser.options(section))
    return keys


def default_flags():
    """Our defaults as a dict of Theano flag name -> value."""
    flags = {
        "floatX": "float32",
        "openmp": "True",
        "openmp_elemwise_minsize": "4000",
        "base_compiledir": os.path.join(os.path.expanduser("~"), ".cache", "iaf-theano"),
        "cycle_detection": "fast",
        "traceback.limit": "0",
    }
    # Always set: Theano's own BLAS detection fails with numpy >= 1.22 (no blas_opt_info);
    # empty means Theano's slower fallback built on numpy's C API.
    flags["blas.ldflags"] = _openblas_ldflags() or ""
    return flags


def configure():
    if "theano" in sys.modules:  # too late to change flags: whoever imported it decided
        warnings.warn("Theano was imported before layers.runtime.backend, so this project's "
                      "Theano settings (floatX=float32, BLAS, compile directory) are not applied")
        return
    user_keys = _user_theanorc_keys()
    ours = [f"{k}={v}" for k, v in default_flags().items() if k not in user_keys]
    user = os.environ.get("THEANO_FLAGS", "")
    os.environ["THEANO_FLAGS"] = ",".join(ours + ([user] if user else []))
    patches.before_import()


configure()

import theano  # noqa: E402
import theano.tensor as T  # noqa: E402,F401  (re-exported)
from theano import gof  # noqa: E402,F401
from theano.ifelse import IfElse, ifelse  # noqa: E402,F401

from .patches import c_code_version  # noqa: E402,F401

patches.apply(theano)
floatX = theano.config.floatX
