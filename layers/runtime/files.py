"""Crash-safe file writing: a reader sees the old file or the complete new one, never a part."""
import contextlib
import os
import tempfile


def _umask():
    """The process umask (os.umask reads it only by setting it: briefly to a strict one)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write(path, write, mode=None, previous=None):
    """Call ``write(fileobj)`` on a temporary binary file next to ``path``, then move it onto ``path``.

    The file gets ``mode``, by default ``0o666 & ~umask`` as ``open()`` would give it, and
    is flushed and fsynced before ``os.replace``; the folder is fsynced afterwards so the
    rename survives a crash. With ``previous``, the file ``path`` held until then is moved
    there once the new one is complete. On any exception the temporary file is removed and
    ``path`` is left as it was (with ``previous``, should the last rename itself fail, the
    old file is found at ``previous``); an OSError (a full disk, a file-size limit) is
    raised again as one sentence naming ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o666 & ~_umask() if mode is None else mode)
                write(f)
                f.flush()
                os.fsync(f.fileno())
            if previous and os.path.exists(path):
                os.replace(path, previous)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):  # already renamed onto ``path``
                os.unlink(tmp)
            raise
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
    except OSError as err:
        raise OSError(f"could not write {path} ({err.strerror or err})") from err
