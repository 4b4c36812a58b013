"""Compiled Theano functions kept on disk, so that a new process starts in seconds.

Theano caches the C code it compiles, but re-optimises every graph in every process, which
for the Table 3 training step takes far longer than loading it: at each run, resume,
``evaluate`` and MPI rank. A compiled function pickles. This module stores it under a
key covering everything that could change it (the source that builds its graph, Theano's
version and configuration, numpy and Python, the model's options and which function it
is) in the user's own cache folder, next to Theano's compiled C code, and loads it
instead of compiling.

Unpickling runs code named in the file, so an entry is loaded only if nobody but this user
can have written it: its folder and the file must belong to the user and be writable by
no one else, and the file's content must match the SHA-256 digest it starts with. A
foreign, damaged or unreadable entry is compiled afresh, with one line saying why; it
never stops a run. ``IAF_FUNCTION_CACHE=0`` turns the cache off. Beyond 4 GB, the least
recently used entries are removed.
"""
import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
from .backend import theano
from .files import atomic_write

ENABLED = os.environ.get("IAF_FUNCTION_CACHE", "1") != "0"
MAX_BYTES = 4 * 2**30  # beyond this, the least recently used entries are removed


def _source_files(sources):
    """The files among ``sources``, and the Python, C and C++ files in the folders among
    them (subfolders too), each with the name it is known by: relative to its source's
    parent folder."""
    for source in map(Path, sources):
        paths = sorted(p for p in source.rglob("*") if p.suffix in (".py", ".c", ".cpp")) \
            if source.is_dir() else [source]
        for path in paths:
            yield path.relative_to(source.parent).as_posix(), path


def _source_digest(sources):
    """A digest of the source files `_source_files` finds in ``sources``."""
    digest = hashlib.sha256()
    for name, path in _source_files(sources):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _theano_config():
    """Every Theano setting as text (without the addresses of its value checkers)."""
    return re.sub(r" at 0x[0-9a-f]+", "", str(theano.config))


def _check_trusted(fd, path):
    """Refuse an open file or folder that someone else could have written."""
    info = os.fstat(fd)
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"{path} is writable by other users")


class FunctionCache:
    """Compiled functions of one model, looked up by name.

    ``key`` is JSON-able data that selects the model (its options, which ops build it);
    ``sources`` are the files and folders of the code that builds its graphs (a change
    there makes new entries); ``shared`` are the model's shared variables by name: a file
    refers to them by name (it holds none of their values), and a loaded function uses the
    model's own.
    """

    def __init__(self, key, sources, shared, log=print):
        self.shared, self.log = shared, log
        self.folder = os.path.join(theano.config.base_compiledir, "functions")
        self.key = {"model": key, "source": _source_digest(sources),
                    "theano": theano.__version__, "numpy": np.__version__,
                    "python": sys.version, "config": _theano_config(),
                    "flags": os.environ.get("THEANO_FLAGS", "")}

    def _path(self, name):
        text = json.dumps({**self.key, "function": name}, sort_keys=True, default=str)
        return os.path.join(self.folder, hashlib.sha256(text.encode()).hexdigest() + ".pkl")

    def get(self, name, build):
        """``build()`` -> ``(function, extra)``, or the same loaded from the cache (``extra``
        is picklable data the caller needs with the function, e.g. output names)."""
        if not ENABLED:
            return build()
        path = self._path(name)
        if os.path.exists(path):
            try:
                return self._load(path)
            except Exception as err:  # any failure means: compile instead
                self.log(f"Compiling the {name} function: its cached copy {path} cannot be "
                         f"used ({err})")
        function, extra = build()
        try:
            self._save(path, function, extra)
        except OSError as err:
            self.log(f"warning: could not cache the {name} function in {self.folder} ({err})")
        return function, extra

    def _load(self, path):
        # Checked and read through open descriptors, symbolic links refused, so that the
        # file read is the file checked.
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            _check_trusted(folder, self.folder)
            fd = os.open(os.path.basename(path), os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
        finally:
            os.close(folder)
        with os.fdopen(fd, "rb") as f:
            _check_trusted(f.fileno(), path)
            digest, payload = f.readline().strip(), f.read()
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise ValueError("its content does not match its digest")
        os.utime(path)  # recently used: the last to be evicted
        return _Unpickler(io.BytesIO(payload), self.shared).load()

    def _save(self, path, function, extra):
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _Pickler(buffer, self.shared).dump((function, extra))
        payload = buffer.getvalue()
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        digest = hashlib.sha256(payload).hexdigest().encode()
        atomic_write(path, lambda f: f.write(digest + b"\n" + payload), mode=0o600)
        self._evict()

    def _evict(self):
        """Remove the least recently used entries while the cache exceeds `MAX_BYTES`."""
        entries = []
        for entry in os.scandir(self.folder):
            if not entry.name.endswith(".pkl"):
                continue  # e.g. another process's file being written
            with contextlib.suppress(FileNotFoundError):  # another process was first
                info = entry.stat()
                entries.append((info.st_mtime, info.st_size, entry.path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries[:-1]:
            if total <= MAX_BYTES:
                break
            with contextlib.suppress(FileNotFoundError):  # another process was first
                os.unlink(path)
            total -= size


class _Pickler(pickle.Pickler):
    """Pickles a function with references to the model's shared variables, their
    containers and values in place of the objects (so without the parameters)."""

    def __init__(self, file, shared):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.references = {}
        for name, var in shared.items():
            for kind, obj in _parts(var).items():
                self.references[id(obj)] = (kind, name)

    def persistent_id(self, obj):
        return self.references.get(id(obj))


class _Unpickler(pickle.Unpickler):
    """Loads what `_Pickler` wrote, attached to this model's shared variables."""

    def __init__(self, file, shared):
        super().__init__(file)
        self.shared = shared

    def persistent_load(self, reference):
        kind, name = reference
        return _parts(self.shared[name])[kind]


def _parts(var):
    """What of a shared variable a compiled function refers to: the variable, its container,
    the container's one-element storage list (which the function's thunks read, so that a
    value set later is seen) and the value itself."""
    return {"variable": var, "container": var.container, "storage": var.container.storage,
            "value": var.get_value(borrow=True)}
