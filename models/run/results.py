"""``results.txt``, the original's table of a run's reports: a header, then a line per report
(the epoch, then every evaluation output)."""
import os

from layers.runtime.files import atomic_write

NAME = "results.txt"


def append_results(folder, epoch, results):
    """Add the report's line (the header first, in a new file)."""
    lines = _read(folder) or ["Epoch " + " ".join(results) + "\n"]
    lines.append(f"{epoch} " + " ".join(repr(v) for v in results.values()) + "\n")
    _write(folder, lines)


def trim_results(folder, reported_epochs):
    """Keep only the reports a checkpoint knows of: a run killed between a report and the
    next checkpoint repeats that report when resumed."""
    lines = _read(folder)
    if lines:
        header, *reports = lines
        _write(folder, [header] + [line for line in reports
                                   if int(line.split()[0]) in reported_epochs])


def _read(folder):
    """The lines of results.txt, or [] if there is none yet."""
    path = os.path.join(folder, NAME)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.readlines()


def _write(folder, lines):
    """Rewrite results.txt whole: a failed write (a full disk) leaves it as it was, never
    half a line."""
    atomic_write(os.path.join(folder, NAME), lambda f: f.write("".join(lines).encode()))
