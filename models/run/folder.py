"""A run's folder: ``$ML_LOG_PATH/<time>/`` (as the original) or ``./runs/<time>/``, with
``log.txt`` (all console output), ``command.sh`` and ``config.json``; rank 0 alone writes."""
import contextlib
import json
import os
import shlex
import sys
import time

from layers.runtime.files import atomic_write

CONFIG = "config.json"  # the run's settings, which commands that inspect the run read


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


def open_folder(config, folder=None):
    """Log to ``folder/log.txt`` from now on; without a ``folder`` (a new run), make one and
    write the command and ``config`` (a dict) into it. Returns the folder."""
    new = folder is None
    folder = folder or new_folder()
    sys.stdout = Tee(sys.stdout, os.path.join(folder, "log.txt"))
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
