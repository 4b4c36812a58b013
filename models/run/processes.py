"""One training run over several processes with MPI (``mpiexec -n K python train.py ...``).

Each process (rank) takes its share of every global minibatch; the flat gradients are
summed across ranks in one all-reduce, and every rank applies the same update, so the
parameters stay identical everywhere (docs/model.md §11). Started without mpiexec, a run
is one process and never initialises MPI. This module needs neither Theano nor the model.
"""
import atexit
import os
import zlib

import numpy as np

# Set by the launchers of Open MPI (OMPI_*), MPICH/Hydra (PMI_*) and PMIx-based ones.
MPI_LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


def started_by_mpiexec():
    """Whether an MPI launcher started this process (a rank of an MPI run)."""
    return any(v in os.environ for v in MPI_LAUNCHER_VARIABLES)


def _initialised_mpi():
    """mpi4py's MPI, initialised. Importing Theano tells mpi4py not to initialise MPI on
    import (layers/runtime/patches.py), so a rank may have to initialise it here."""
    from mpi4py import MPI
    if not MPI.Is_initialized():
        MPI.Init()
        atexit.register(MPI.Finalize)
    return MPI


class ParallelError(Exception):
    """MPI is needed but missing, or the ranks disagree; the message says which."""


class Processes:
    """The processes of one run: ``rank``, ``size`` and the collectives training needs.
    With one process every operation is the identity."""

    def __init__(self):
        self.rank, self.size, self._comm = 0, 1, None
        if started_by_mpiexec():
            try:
                MPI = _initialised_mpi()
            except ImportError:
                raise ParallelError("this process was started by mpiexec, but mpi4py is not "
                                    "installed: pip install -e '.[mpi]'") from None
            self._mpi, self._comm = MPI, MPI.COMM_WORLD
            self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()

    @property
    def is_main(self):
        """Rank 0, the one process that writes files and prints."""
        return self.rank == 0

    def share(self, items):
        """This rank's part of ``items`` (a range or array): the ``rank``-th of ``size``
        near-equal consecutive slices."""
        return np.array_split(np.asarray(items), self.size)[self.rank]

    def sum_(self, buffer):
        """Replace a numeric array by its sum over all ranks, in place."""
        if self._comm is not None:
            self._comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)

    def broadcast_(self, buffer):
        """Overwrite an array with rank 0's, in place."""
        if self._comm is not None:
            self._comm.Bcast(buffer, root=0)

    def broadcast(self, value):
        """Rank 0's value of a small picklable object (JSON-like data)."""
        return value if self._comm is None else self._comm.bcast(value, root=0)

    def gather(self, value):
        """Every rank's value of a small object, in rank order, on every rank."""
        return [value] if self._comm is None else self._comm.allgather(value)

    def check_identical(self, array, what, advice):
        """Stop with an error (``what`` differ ...; ``advice``) if ``array`` differs between
        ranks (a checksum compared)."""
        checksums = self.gather(zlib.crc32(np.ascontiguousarray(array).view(np.uint8)))
        if len(set(checksums)) > 1:
            differing = [r for r, c in enumerate(checksums) if c != checksums[0]]
            raise ParallelError(f"the {what} of rank(s) {differing} differ from rank 0's; "
                                f"{advice}")

    def check_same_parameters(self, buffer):
        """Stop with an error if the ranks' parameters (``buffer``) differ, before anything
        is written from them."""
        self.check_identical(buffer, "parameters", "the ranks no longer train one model (a "
                             "faulty machine or MPI library?): resume from the last checkpoint")

    def abort(self, code):
        """End every rank at once (after an error on this one)."""
        if self._comm is not None:
            self._comm.Abort(code)
