"""A run's folder: ``$ML_LOG_PATH/<time>-<pid>/`` (as the original, which named it by the
time alone) or ``./runs/<time>-<pid>/``, with ``log.txt`` (all console output), ``command.sh``
and ``config.json``; one process writes it (rank 0 under MPI), holding ``writer.lock``."""
import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import time

from layers.runtime.files import atomic_write

CONFIG = "config.json"  # the run's settings, which commands that inspect the run read
LOCK = "writer.lock"  # locked by the process that writes the run; names it
_held_locks = {}  # this process's lock files by path, open (so locked) until it ends


class FolderInUse(Exception):
    """Another process is writing the run folder."""


class Tee:
    """Write console output to a log file too; if the log cannot be written (a full disk),
    say so once and go on with the console alone."""

    def __init__(self, stream, path):
        self.stream, self.path, self.file = stream, path, open(path, "a", buffering=1)

    def write(self, text):
        self.stream.write(text)
        self._to_file(self.file.write, text)

    def flush(self):
        self.stream.flush()
        self._to_file(self.file.flush)

    def _to_file(self, method, *args):
        if self.file.closed:
            return
        try:
            method(*args)
        except OSError as err:
            with contextlib.suppress(OSError):
                self.file.close()
            self.stream.write(f"warning: stopped logging to {self.path} ({err.strerror})\n")

    def __getattr__(self, name):
        return getattr(self.stream, name)


def new_folder():
    """A new, empty run folder named by the time and the process."""
    root = os.environ.get("ML_LOG_PATH") or "runs"
    path = os.path.join(root, time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    os.makedirs(path)
    return path


def hold(folder):
    """Make this process the one writer of ``folder`` until it ends: an advisory lock on
    ``folder/writer.lock``, which the operating system releases when the process ends in any
    way (kill -9 too), so a stale lock never needs removing by hand (on a local
    filesystem). If another process holds it, raise `FolderInUse`. Returns None, or on a
    filesystem without working locks a warning to show."""
    path = os.path.join(folder, LOCK)
    if os.path.realpath(path) in _held_locks:  # a second command of this process
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "pid unknown"
        os.close(fd)
        raise FolderInUse(f"the run folder {folder} is being written by another process "
                          f"({holder}): let that one finish, or stop it (Ctrl-C or kill: it "
                          f"saves a checkpoint) and then resume (if it no longer runs, e.g. "
                          f"its machine was lost, delete {path}); to train besides it, start "
                          f"a new run") from None
    except OSError as err:  # ENOLCK, EOPNOTSUPP, ENOSYS: locks not supported there
        os.close(fd)
        return (f"warning: {folder} cannot be locked ({err.strerror}), so nothing stops a "
                f"second process from writing into this run: start each run only once")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    _held_locks[os.path.realpath(path)] = fd
    return None


def open_folder(config, folder=None):
    """Hold ``folder`` (see `hold`) and log to ``folder/log.txt`` from now on; without a
    ``folder`` (a new run), make one and write the command and ``config`` (a dict) into it.
    Returns the folder."""
    new = folder is None
    folder = folder or new_folder()
    warning = hold(folder)
    sys.stdout = Tee(sys.stdout, os.path.join(folder, "log.txt"))
    if warning:
        print(warning)
    if new:
        with open(os.path.join(folder, "command.sh"), "w") as f:
            f.write(" ".join(shlex.quote(a) for a in ["python"] + sys.argv) + "\n")
        atomic_write(os.path.join(folder, CONFIG),
                     lambda f: f.write(json.dumps(config, indent=1).encode()))
        print(f"Run folder: {folder}")
    return folder


def saved_config(folder):
    """The config saved with the run in ``folder``, or None (e.g. the original's folders)."""
    path = folder and os.path.join(folder, CONFIG)
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
