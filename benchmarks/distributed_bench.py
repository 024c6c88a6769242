"""ZeRO-1 against all-reduce + an unsharded step, on CPU processes over MPI. Run:

    mpiexec -n 2 python benchmarks/distributed_bench.py [--params 8000000] [--steps 20] [--out benchmarks/results]

Per step, medians after warm-up, every variant side by side in one run (ratios are what to read; absolute times
on a shared machine are not):
  allreduce   MPI Allreduce of the flat grads, divide by the world size, a plain fastopt.Adam step on the whole model
  sharded     ShardedOptimizer, grads given as its grad_views and params trained as its param_views (no copies)
  sharded+copy  ShardedOptimizer with the user's own arrays: one copy in (grads), one copy out (params)
  sharded/engine  reduction="engine" (MPI_Reduce_scatter_block instead of all-to-all + the ordered sum)
Bytes each rank sends per step are the algorithms' own counts for ring-style collectives (MPI does not report what
it sent): all-reduce 2(n-1)/n of the grads; ZeRO-1 (n-1)/n for the reduction plus (n-1)/n for the all-gather, plus
the small validation exchange. State memory per rank: Adam's exp_avg and exp_avg_sq held by this rank.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import ShardedOptimizer

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def model(total, tensors, seed=0):
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, total), tensors - 1, replace=False))
    sizes = np.diff(np.concatenate([[0], cuts, [total]]))
    return [rng.standard_normal(int(n)).astype(np.float32) for n in sizes]


def timed(step, steps, warmup=3):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        COMM.Barrier()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    # the slowest rank sets the pace of a data-parallel step
    slowest = np.empty(len(times))
    COMM.Allreduce(np.array(times), slowest, op=MPI.MAX)
    return float(np.median(slowest))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=int, default=8_000_000)
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    params = model(args.params, args.tensors)
    grads = [np.random.default_rng(RANK + 1).standard_normal(p.size).astype(np.float32) for p in params]
    nbytes = sum(p.nbytes for p in params)
    results = {}

    # baseline: all-reduce + unsharded fused step, on flat buffers (the fastest unsharded layout)
    _, flat_params = fastopt.flatten([p.copy() for p in params])
    grad_buffer, flat_grads = fastopt.flatten(grads)
    plain = fastopt.Adam(flat_params, lr=1e-3)

    def allreduce_step():
        COMM.Allreduce(MPI.IN_PLACE, grad_buffer, op=MPI.SUM)
        np.true_divide(grad_buffer, SIZE, out=grad_buffer)
        plain.step(flat_grads)

    results["allreduce"] = timed(allreduce_step, args.steps)
    state_plain = sum(a.nbytes for e in plain.state_dict()["state"].values() for k, a in e.items() if k != "step")

    sharded = ShardedOptimizer(fastopt.Adam, [p.copy() for p in params], COMM, copy_back=False, lr=1e-3)
    for view, g in zip(sharded.grad_views, grads):
        view[...] = g
    results["sharded"] = timed(lambda: sharded.step(sharded.grad_views), args.steps)

    user = [p.copy() for p in params]
    copying = ShardedOptimizer(fastopt.Adam, user, COMM, lr=1e-3)
    results["sharded+copy"] = timed(lambda: copying.step(grads), args.steps)

    engine = ShardedOptimizer(fastopt.Adam, [p.copy() for p in params], COMM, copy_back=False, reduction="engine",
                              lr=1e-3)
    for view, g in zip(engine.grad_views, grads):
        view[...] = g
    results["sharded/engine"] = timed(lambda: engine.step(engine.grad_views), args.steps)

    local = sharded.local_optimizer.state_dict()["state"] if sharded.local_optimizer else {}
    state_sharded = sum(a.nbytes for e in local.values() for k, a in e.items() if k != "step")
    buffers = {"params": sum(b.params.nbytes for b in sharded.buckets),
               "grads": sum(b.grads.nbytes for b in sharded.buckets),
               "received": sum(b.received.nbytes for b in sharded.buckets if b.received is not b.grads)}
    buffers_engine = sum(b.received.nbytes for b in engine.buckets)
    # what a rank holds in the zero-copy mode (params and grads are the optimizer's views): the model's arrays,
    # the reduction's scratch and the optimizer state, against all-reduce + an unsharded optimizer
    held_plain = 2 * nbytes + state_plain
    held_sharded = sum(buffers.values()) + state_sharded
    exchange = len(pickle.dumps((None, "0" * 40)))  # the validation exchange's message per rank
    share = (SIZE - 1) / SIZE
    report = {
        "world_size": SIZE, "params": args.params, "tensors": args.tensors, "dtype": "float32", "optimizer": "Adam",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
        "ms_per_step": {k: v * 1e3 for k, v in results.items()},
        "time_ratio_to_allreduce": {k: v / results["allreduce"] for k, v in results.items()},
        "bytes_sent_per_rank_per_step": {"allreduce": 2 * share * nbytes,
                                         "sharded": 2 * share * nbytes + exchange * (SIZE - 1)},
        "state_bytes_per_rank": {"unsharded": state_plain, "sharded": COMM.allgather(state_sharded)},
        "sharded_buffers_bytes_per_rank": {**buffers, "received (reduction='engine')": buffers_engine},
    }
    report["state_ratio"] = max(report["state_bytes_per_rank"]["sharded"]) / state_plain
    report["held_bytes_per_rank"] = {"allreduce": held_plain, "sharded": max(COMM.allgather(held_sharded))}
    report["held_ratio"] = report["held_bytes_per_rank"]["sharded"] / held_plain
    if RANK == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"distributed_cpu_{SIZE}ranks_{datetime.date.today().isoformat()}"
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
        lines = [f"# ZeRO-1 vs all-reduce + unsharded step: {SIZE} MPI ranks on CPU, Adam, {args.params:,} float32 "
                 f"params in {args.tensors} tensors",
                 "", f"{report['date']}, load average {report['load_average'][0]:.1f} on {report['cpus']} CPUs "
                 "(a shared machine: read the ratios, measured side by side in one run).", "",
                 "| variant | ms/step (median, slowest rank) | time / allreduce |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v * 1e3:.1f} | {v / results['allreduce']:.2f} |" for k, v in results.items()]
        sent = report["bytes_sent_per_rank_per_step"]
        lines += ["", f"Bytes each rank sends per step: all-reduce {sent['allreduce'] / 1e6:.1f} MB, ZeRO-1 "
                  f"{sent['sharded'] / 1e6:.1f} MB (ratio {sent['sharded'] / sent['allreduce']:.4f}).",
                  f"Adam state per rank: unsharded {state_plain / 1e6:.1f} MB, sharded "
                  f"{max(report['state_bytes_per_rank']['sharded']) / 1e6:.1f} MB (ratio {report['state_ratio']:.3f})."
                  , f"Flat buffers a sharded rank holds besides: params {buffers['params'] / 1e6:.1f} MB, grads "
                  f"{buffers['grads'] / 1e6:.1f} MB, receive {buffers['received'] / 1e6:.1f} MB (the ordered "
                  f"reduction over MPI works in place in the grads; {buffers_engine / 1e6:.1f} MB with "
                  "reduction='engine').",
                  f"Everything a rank holds (params, grads, scratch, state; zero-copy mode): all-reduce + unsharded "
                  f"{held_plain / 1e6:.1f} MB, sharded {report['held_bytes_per_rank']['sharded'] / 1e6:.1f} MB "
                  f"(ratio {report['held_ratio']:.3f}; with n ranks: (8 + 8/n) / 16 bytes per fp32 Adam param)."]
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
