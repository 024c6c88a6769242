"""Run under `mpiexec -n 2`: rank 1 dies after the first step; rank 0 goes on stepping. The job must end with an error
from the MPI launcher (no hang, no rank 0 finishing as if nothing happened)."""

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
    os._exit(3)  # dies without a word: no MPI_Finalize, no exception
for _ in range(5):
    opt.step([np.ones(1000, np.float32)])
print("rank 0 finished its steps without rank 1", flush=True)
sys.exit(0)
