"""Data-parallel training with optimizer state sharded across ranks (ZeRO-1), over MPI (mpi4py) or NCCL (CuPy).

    from mpi4py import MPI
    import fastopt
    from fastopt.distributed import ShardedOptimizer

    opt = ShardedOptimizer(fastopt.Adam, params, comm=MPI.COMM_WORLD, lr=1e-3)
    opt.step(local_grads)            # launched with: mpiexec -n N python train.py

See docs/distributed.md.
"""

from fastopt.distributed.engines import Engine, MPIEngine, NCCLEngine, as_engine
from fastopt.distributed.sharded import ShardedOptimizer, shard_block

__all__ = ["Engine", "MPIEngine", "NCCLEngine", "ShardedOptimizer", "as_engine", "shard_block"]
