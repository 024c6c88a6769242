"""Run under `mpiexec -n 2 python -m mpi4py tests/distributed/dead_rank.py exit|raise`: rank 1 dies after the first
step (`exit`: the process vanishes; `raise`: an exception only rank 1 sees); rank 0 goes on stepping. The job must
end with an error from the MPI launcher (no hang, no rank 0 finishing as if nothing happened). `python -m mpi4py`
is what turns an uncaught exception on one rank into MPI_Abort; without it the other ranks wait forever."""

import os
import sys

import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import ShardedOptimizer

comm = MPI.COMM_WORLD
params = [np.ones(1000, np.float32)]
opt = ShardedOptimizer(fastopt.Adam, params, comm, lr=0.01)
opt.step([np.ones(1000, np.float32)])
if comm.Get_rank() == 1:
    if sys.argv[1] == "exit":
        os._exit(3)  # dies without a word: no MPI_Finalize, no exception
    raise RuntimeError("rank 1 fails on its own (e.g. out of memory in its forward pass)")
for _ in range(5):
    opt.step([np.ones(1000, np.float32)])
print("rank 0 finished its steps without rank 1", flush=True)
sys.exit(0)
