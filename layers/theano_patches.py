"""Workarounds for Theano 1.0.5 on Python 3.11, applied explicitly by `layers.backend`.

`before_import` runs before Theano's first import, `apply` right after it. They were
written for, and checked against, Theano 1.0.5: on another version `apply` changes
nothing and warns, since the internals it replaces may have changed.
"""
import hashlib
import sys
import warnings

WRITTEN_FOR = "1.0.5"


def c_code_version(source):
    """A ``c_code_cache_version`` for C code: Theano reuses a compiled module while this
    is unchanged, so it hashes the code's text."""
    return (hashlib.sha256(source.encode()).hexdigest(),)


def before_import():
    # Theano's graph optimiser and pickler recurse once per node; deep models need room.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    # Theano's Cython loop for scan does not compile on Python >= 3.11 (longintrepr.h
    # moved); a failed import makes scan use its Python loop instead, which works.
    sys.modules.setdefault("theano.scan_module.scan_perform_ext", None)


def apply(theano):
    """Fix two ways Theano 1.0.5's C-module cache misses, so that C code compiled by one
    process is reused by the next (6-7 s per model function at every start)."""
    if theano.__version__ != WRITTEN_FOR:
        warnings.warn(f"layers/theano_patches.py was written for Theano {WRITTEN_FOR}, not "
                      f"{theano.__version__}: its compile-cache fixes are not applied")
        return
    if getattr(theano.gof.cc.CLinker.cmodule_key_, "_iaf_patched", False):
        return
    _version_modules_of_ops_without_props(theano.gof.cc.CLinker)
    _version_cops_by_their_code(theano.gof.op.COp)


def _version_modules_of_ops_without_props(linker):
    """Let the cache keep modules of ops whose ``__props__`` is ``()``.

    ``CLinker.cmodule_key_`` puts each op's ``__props__`` into the module's version tuple
    and treats any empty entry as "unversioned": the module is then recompiled in every
    process. That hits ``Alloc``, ``ScalarFromTensor`` and ~100 other ops, about 0.6 s of
    C compilation each. Their code does not depend on props they do not have, so when the
    op and every type *are* versioned the key gets a version (else Theano's is kept).
    """
    original = linker.cmodule_key_

    def cmodule_key_(self, fgraph, no_recycling, *args, **kwargs):
        version, sig = original(self, fgraph, no_recycling, *args, **kwargs)
        if version:
            return version, sig
        version = ["iaf-props-fix-1"]
        for node in self.schedule(fgraph):
            op_version = (node.op.c_code_cache_version_apply(node)
                          if hasattr(node.op, "c_code_cache_version_apply") else ())
            types = [v.type.c_code_cache_version() for v in node.inputs + node.outputs]
            if not op_version or not all(types):
                return (), sig  # truly unversioned: keep Theano's behaviour
            version += [op_version, getattr(node.op, "__props__", None) or ("no-props",)] + types
        return tuple(version), sig

    cmodule_key_._iaf_patched = True
    linker.cmodule_key_ = cmodule_key_


def _version_cops_by_their_code(cop):
    """``COp`` (e.g. DimShuffle) versions its C code by ``hash()`` of the code's text,
    which Python 3 salts per process: such modules never matched the cache. Hash it."""
    def c_code_cache_version(self):
        version = c_code_version("\0".join(self.func_codes))
        if hasattr(self, "params_type"):
            version += (self.params_type.c_code_cache_version(),)
        return version

    cop.c_code_cache_version = c_code_cache_version
