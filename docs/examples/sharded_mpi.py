"""Data-parallel training with sharded optimizer state (ZeRO-1) over MPI. Launch with

    mpiexec -n 2 python docs/examples/sharded_mpi.py

Every rank holds the whole model and computes grads on its own slice of each batch; the ShardedOptimizer averages
the grads across ranks, updates only this rank's shard of the params (so Adam's state exists once across the job,
not once per rank) and gathers the params back, so every rank continues from the same model.
"""

import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import ShardedOptimizer

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

# a linear least-squares model; the same initial weights and data on every rank (same seed)
rng = np.random.default_rng(0)
x = rng.standard_normal((512, 32)).astype(np.float32)
y = x @ rng.standard_normal((32, 4)).astype(np.float32)
params = {"w": np.zeros((32, 4), np.float32), "b": np.zeros(4, np.float32)}

opt = ShardedOptimizer(fastopt.Adam, params, comm, lr=0.05)
mine = slice(rank * len(x) // size, (rank + 1) * len(x) // size)  # this rank's part of the batch
for _ in range(200):
    xb, yb = x[mine], y[mine]
    err = xb @ params["w"] + params["b"] - yb
    grads = {"w": xb.T @ err * (2 / err.size), "b": err.sum(axis=0) * (2 / err.size)}
    opt.step(grads)  # the mean over ranks of these grads: the full batch's gradient

loss = float(np.mean((x @ params["w"] + params["b"] - y) ** 2))
local = sum(a.nbytes for entry in opt.local_optimizer.state_dict()["state"].values()
            for k, a in entry.items() if k != "step") if opt.local_optimizer else 0
held = comm.gather(local, root=0)  # print from rank 0 only: lines from several ranks would interleave
checkpoint = opt.state_dict()  # the full state, the same on every rank: save it from rank 0
if rank == 0:
    for r, nbytes in enumerate(held):
        print(f"rank {r}/{size}: loss {loss:.2e}, Adam state held there {nbytes} bytes "
              f"of {2 * sum(p.nbytes for p in params.values())}")
    print("checkpoint steps:", sorted({entry["step"] for entry in checkpoint["state"].values()}))
