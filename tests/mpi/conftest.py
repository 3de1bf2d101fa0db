"""pytest configuration of the MPI tests (tests/mpi), which run under ``mpiexec``.

They are collected only in a process started by an MPI launcher (Open MPI, MPICH/Hydra,
PMIx) or with ``CYBN_MPI_TESTS=1``; a plain ``pytest`` run skips the directory (the normal
suite launches it under ``mpiexec -n 1/2/3`` from tests/test_sync.py). Run by hand::

    mpiexec -n 3 python -m pytest -q -p no:cacheprovider tests/mpi

from a directory other than the checkout's root (or with ``python -P``), so that the
installed cybn is imported, not the source tree.

When a test fails on one rank with more than one rank running, its report is printed and
the job is aborted: the other ranks may be waiting in a collective the failed rank will
never reach, and would otherwise hang.
"""

import os
import sys

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK",
                  "MPI_LOCALNRANKS")

if not (os.environ.get("CYBN_MPI_TESTS") == "1"
        or any(v in os.environ for v in _LAUNCHER_VARS)):
    collect_ignore_glob = ["test_*.py"]


def pytest_runtest_logreport(report):
    if not report.failed:
        return
    MPI = getattr(sys.modules.get("mpi4py"), "MPI", None)
    if MPI is None or not MPI.Is_initialized() or MPI.COMM_WORLD.Get_size() == 1:
        return
    rank = MPI.COMM_WORLD.Get_rank()
    sys.stderr.write(f"\n[rank {rank}] {report.nodeid} FAILED ({report.when}):\n"
                     f"{report.longreprtext}\n[rank {rank}] aborting the MPI job\n")
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(1)
