"""Workarounds for Theano 1.0.5 on Python 3.11, applied explicitly by `backend`.

`before_import` runs before Theano's first import, `apply` right after it. They were
written for, and checked against, Theano 1.0.5: on another version `apply` changes
nothing and warns, since the internals it replaces may have changed.
"""
import functools
import hashlib
import os
import shutil
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WRITTEN_FOR = "1.0.5"


@functools.lru_cache(maxsize=None)
def c_code_version(*files):
    """A ``c_code_cache_version`` for an op whose C code ``files`` hold or write (its Python
    module too: the code it writes around its C text, checks and sizes, counts as much).
    Theano reuses a compiled module while this is unchanged, so it hashes their text."""
    return _text_version(*(Path(f).read_text() for f in files))


def _text_version(*texts):
    return (hashlib.sha256("\0".join(texts).encode()).hexdigest(),)


def before_import():
    # Theano's graph optimiser and pickler recurse once per node; deep models need room.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    # Theano's Cython loop for scan does not compile on Python >= 3.11 (longintrepr.h
    # moved); a failed import makes scan use its Python loop instead, which works.
    sys.modules.setdefault("theano.scan_module.scan_perform_ext", None)
    _keep_mpi_uninitialised()


def _keep_mpi_uninitialised():
    """Theano's ``tensor/io.py`` imports ``mpi4py.MPI`` when it can, and that import would
    initialise MPI (``MPI_Init``: time, and under a file-size limit MPICH dies in it). So
    mpi4py is told not to initialise MPI on import; a rank of an MPI run initialises it
    itself (models/run/processes.py)."""
    try:
        import mpi4py
    except ImportError:
        return
    mpi4py.rc.initialize = False
    mpi4py.rc.finalize = False


def apply(theano):
    """Fix two ways Theano 1.0.5's C-module cache misses, so that C code compiled by one
    process is reused by the next (instead of compiled again at every start), and compile
    a function's missing C modules on all cores at once."""
    if theano.__version__ != WRITTEN_FOR:
        warnings.warn(f"layers/runtime/patches.py was written for Theano {WRITTEN_FOR}, not "
                      f"{theano.__version__}: its compile-cache fixes are not applied")
        return
    if getattr(theano.gof.cc.CLinker.cmodule_key_, "_iaf_patched", False):
        return
    _version_modules_of_ops_without_props(theano.gof.cc.CLinker)
    _version_cops_by_their_code(theano.gof.op.COp)
    _compile_missing_modules_on_all_cores(theano.gof, theano.config)
    _remember_the_module_of_each_kind_of_node(theano.gof)


def _version_modules_of_ops_without_props(linker):
    """Let the cache keep modules of ops whose ``__props__`` is ``()``.

    ``CLinker.cmodule_key_`` puts each op's ``__props__`` into the module's version tuple
    and treats any empty entry as "unversioned": the module is then recompiled in every
    process. That hits ``Alloc``, ``ScalarFromTensor`` and ~100 other ops, each a C compilation
    at every start. Their code does not depend on props they do not have, so when the
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
        version = _text_version(*self.func_codes)
        if hasattr(self, "params_type"):
            version += (self.params_type.c_code_cache_version(),)
        return version

    cop.c_code_cache_version = c_code_cache_version


def _compile_missing_modules_on_all_cores(gof, config):
    """Compile the C modules a function lacks with one g++ per core at once.

    Theano makes a function's thunks one node after another, and a node whose C module is
    not in the cache waits for g++ to compile it: on a fresh machine, hundreds of modules,
    one at a time. Here the first missing module a function meets sets
    off the compilation of all the function's missing modules, one g++ per core this
    process may use, each into a folder of its own; the node-by-node pass then takes each
    library from there instead of running g++ on the same source with the same command. A
    start that finds every module in the cache runs none of this.
    """
    cmodule = gof.cmodule
    linking = []  # the graph of each function whose thunks are being made (a stack)
    compiled = {}  # (module name, source digest) -> a library compiled ahead

    def digest(source):
        return hashlib.sha256(source.encode()).hexdigest()

    def missing(cache, key, linker):
        if cache._get_from_key(key) is not None:
            return False
        return cmodule.get_module_hash(linker.get_src_code(), key) not in \
            cache.module_hash_to_key_data

    def compile_apart(linker):
        """Compile a one-node linker's module into a new folder; its library file."""
        module = linker.get_dynamic_module()
        folder = tempfile.mkdtemp(dir=config.compiledir)
        try:
            compile_str(module.code_hash, module.code(), folder, linker.header_dirs(),
                        linker.lib_dirs(), linker.libraries(), linker.compile_args(),
                        py_module=False)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return os.path.join(folder, f"{module.code_hash}.{cmodule.get_lib_extension()}")

    def compile_ahead(cache, nodes):
        jobs = {}
        for node in nodes:
            try:  # ops without C code, or whose code fails, are left to Theano's own pass
                linker = gof.cc.CLinker().accept(gof.FunctionGraph(node.inputs, node.outputs))
                key = linker.cmodule_key()
                if key is not None and missing(cache, key, linker):
                    name = linker.get_dynamic_module().code_hash
                    jobs[name, digest(linker.get_src_code())] = linker
            except Exception:
                continue
        with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
            futures = {job: pool.submit(compile_apart, linker) for job, linker in jobs.items()}
        for job, future in futures.items():
            if future.exception() is None:
                compiled[job] = future.result()

    make_all = gof.vm.VM_Linker.make_all

    def make_all_(self, *args, **kwargs):
        linking.append(self.fgraph)
        try:
            return make_all(self, *args, **kwargs)
        finally:
            linking.pop()
            while not linking and compiled:  # libraries no node took (after an error)
                shutil.rmtree(os.path.dirname(compiled.popitem()[1]), ignore_errors=True)

    module_from_key = cmodule.ModuleCache.module_from_key

    def module_from_key_(self, key, lnk=None, keep_lock=False):
        if linking and linking[-1] is not None and key[0] and missing(self, key, lnk):
            fgraph, linking[-1] = linking[-1], None  # once per function
            compile_ahead(self, fgraph.apply_nodes)
        return module_from_key(self, key, lnk, keep_lock)

    compile_str = cmodule.GCC_compiler.compile_str

    def compile_str_(module_name, src_code, location=None, *args, py_module=True, **kwargs):
        job = (module_name, digest(src_code))
        if job not in compiled or not py_module or location is None:
            return compile_str(module_name, src_code, location, *args, py_module=py_module,
                               **kwargs)
        library = compiled.pop(job)
        target = os.path.join(location, os.path.basename(library))
        shutil.move(library, target)
        shutil.rmtree(os.path.dirname(library), ignore_errors=True)
        with open(os.path.join(location, "mod.cpp"), "w") as f:
            f.write(src_code)
        open(os.path.join(location, "__init__.py"), "w").close()
        return cmodule.dlimport(target)

    gof.vm.VM_Linker.make_all = make_all_
    cmodule.ModuleCache.module_from_key = module_from_key_
    cmodule.GCC_compiler.compile_str = staticmethod(compile_str_)


def _remember_the_module_of_each_kind_of_node(gof):
    """Look a node's C module up once per kind of node, not once per node.

    Making a function's thunks (at every start, from the function cache too) asks, for
    each of its thousands of nodes, for the key of a one-node C module (a large tuple
    built from the op, the types, the compiler options and the libraries) and looks the
    key up in the module cache: much of the time a cached function takes to load.
    Nodes with the same op, input and output types, constants and input pattern have the
    same key and module, so both are remembered for the process, under that (cheap) key.
    """
    linker_class = gof.cc.CLinker
    cmodule_key, cache = linker_class.cmodule_key, gof.cmodule.ModuleCache
    keys, modules = {}, {}  # node kind -> module key; id(module key) -> (module key, module)

    def kind(linker):
        """What the key of a one-node linker depends on, or None for another linker."""
        nodes = linker.fgraph.apply_nodes
        if len(nodes) != 1:
            return None
        (node,) = nodes
        inputs = [(v.type, _Identity(v) if isinstance(v, gof.Constant) else None,
                   node.inputs.index(v)) for v in node.inputs]
        outputs = [(v.type, v in linker.no_recycling) for v in node.outputs]
        return node.op, tuple(inputs), tuple(outputs)

    def cmodule_key_(self):
        node_kind = kind(self)
        if node_kind is None:
            return cmodule_key(self)
        if node_kind not in keys:
            keys[node_kind] = cmodule_key(self)
        return keys[node_kind]

    module_from_key = cache.module_from_key

    def module_from_key_(self, key, lnk=None, keep_lock=False):
        if id(key) not in modules:
            modules[id(key)] = key, module_from_key(self, key, lnk, keep_lock)
        return modules[id(key)][1]

    linker_class.cmodule_key = cmodule_key_
    cache.module_from_key = module_from_key_


class _Identity:
    """An object, compared and hashed by identity (and kept alive, so its id is not reused):
    cheaper than a large constant's value, and never mistaken for another."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.obj is self.obj
