"""Run under `mpiexec -n N python tests/distributed/run_cases.py OUT.json`: every sharded case at this world size.

Every rank can compute every rank's grads (seeded), so every rank also runs the single-process reference on the mean
grads and compares bitwise. Rank 0 writes one JSON report; tests/test_distributed.py launches this and checks it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys

import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import ShardedOptimizer
from fastopt.distributed.sharded import splittable

WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()

# hyperparameters that switch on every slot and branch worth covering, per optimizer
HYPER = {
    "sgd": {"lr": 0.05, "momentum": 0.8, "dampening": 0.1, "weight_decay": 1e-3},
    "momentum": {"lr": 0.05},
    "nesterov": {"lr": 0.05, "weight_decay": 1e-3},
    "adagrad": {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 1e-3, "initial_accumulator_value": 0.1},
    "rmsprop": {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 1e-3},
    "adadelta": {"lr": 0.5, "weight_decay": 1e-3},
    "adam": {"lr": 0.01, "amsgrad": True, "weight_decay": 1e-3},
    "adamw": {"lr": 0.01, "maximize": True},
}



def hyper_for(name):
    """The hand-picked entries above, else the busy configuration of the optimizer's test record (every optimizer
    added since is covered without editing this file)."""
    if name in HYPER:
        return HYPER[name]
    from fastopt.records import RECORDS

    return dict(RECORDS[name].busy)


# shapes chosen so that params are split between ranks at 2 and 3 ranks, with float32 and float64 in one group
SHAPES = [((13, 7), np.float32), ((5,), np.float64), ((29,), np.float32), ((0,), np.float32), ((3, 3), np.float64)]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(d) for s, d in SHAPES]


def grads_of(step, rank, params):
    rng = np.random.default_rng(1000 * step + rank + 7)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def mean_grads(step, world, params):
    """The mean as documented: a left fold over ranks in order, in the grads' dtype, divided by the world size."""
    per_rank = [grads_of(step, r, params) for r in range(world)]
    out = []
    for i in range(len(params)):
        total = per_rank[0][i].copy()
        for r in range(1, world):
            total += per_rank[r][i]
        out.append(total / world)
        # the same, bit for bit, as numpy's mean over the stacked grads
        assert np.array_equal(out[-1], np.mean(np.stack([g[i] for g in per_rank]), axis=0))
    return out


def grouped(arrays, split=2):
    return [{"params": arrays[:split]}, {"params": arrays[split:], "lr": 0.02}]


def per_group(arrays, split=2):
    return [arrays[:split], arrays[split:]]


def digest(arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def same_state(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or sorted(a["state"]) != sorted(b["state"]):
        return False
    for key, entry in b["state"].items():
        mine = a["state"][key]
        if sorted(mine) != sorted(entry):
            return False
        for name, value in entry.items():
            if name == "step":
                if mine[name] != value:
                    return False
            elif not (np.asarray(mine[name]).dtype == np.asarray(value).dtype
                      and np.array_equal(mine[name], value)):
                return False
    return True


def on_every_rank(comm, value) -> bool:
    return len(set(comm.allgather(value))) == 1


def case_trajectory(name, reduction="ordered", steps=10):
    """10 sharded steps (two param groups, two dtypes per group) equal the single-process run on the mean grads."""
    cls = fastopt.OPTIMIZERS[name]
    params = make_params()
    sharded = ShardedOptimizer(cls, grouped([p.copy() for p in params]), WORLD, reduction=reduction, **hyper_for(name))
    reference = cls(grouped([p.copy() for p in params]), **hyper_for(name))
    equal, max_diff = True, 0.0
    for t in range(1, steps + 1):
        if t == 6:  # live hyperparameters, as in torch: the same edit on every rank
            sharded.param_groups[1]["lr"] = reference.param_groups[1]["lr"] = 0.03
        sharded.step(per_group(grads_of(t, RANK, params)))
        reference.step(per_group(mean_grads(t, SIZE, params)))
        mine = sharded.param_groups[0]["params"] + sharded.param_groups[1]["params"]
        ref = reference.param_groups[0]["params"] + reference.param_groups[1]["params"]
        for a, b in zip(mine, ref):
            equal &= bool(np.array_equal(a, b))
            if a.size:
                max_diff = max(max_diff, float(np.max(np.abs(a.astype(np.float64) - b))))
    state_equal = same_state(sharded.state_dict(), reference.state_dict())
    return {"params_equal": equal, "max_abs_diff": max_diff, "state_equal": state_equal,
            "identical_across_ranks": on_every_rank(WORLD, digest(mine)),
            "views_current": all(np.array_equal(v, p) for v, p in
                                 zip(sharded.param_views[0] + sharded.param_views[1], mine))}


def case_clip_amp(steps=8):
    """Clipping and AMP on the mean grads against a single process stepping on them: the same skips (an inf in one
    rank's grads at step 3, found_inf from the last rank only at step 5) and the same params, bit for bit except
    where the 2-norm is summed over pieces split between ranks (then within rounding)."""
    report = {}
    variants = {"clip2": ({"max_grad_norm": 0.5}, False),
                "clip_inf": ({"max_grad_norm": 0.05, "norm_type": "inf"}, False),
                "amp": ({}, True),
                "amp_clip2": ({"max_grad_norm": 0.5}, True),
                "amp_clip1": ({"max_grad_norm": 2.0, "norm_type": 1.0}, True)}
    for label, (clip, amp) in variants.items():
        params = make_params()
        # SGD with momentum: unlike Adam its step scales with the clipping coefficient
        sharded = ShardedOptimizer(fastopt.SGD, grouped([p.copy() for p in params]), WORLD, lr=0.01, momentum=0.9,
                                   **clip)
        single = fastopt.SGD(grouped([p.copy() for p in params]), lr=0.01, momentum=0.9, **clip)
        skips, max_rel, equal = [], 0.0, True
        for t in range(1, steps + 1):
            mine, mean = grads_of(t, RANK, params), mean_grads(t, SIZE, params)
            if amp:   # scaled grads, as a loss scaler leaves them (a power of two: exact)
                mine, mean = [g * 256 for g in mine], [g * 256 for g in mean]
            if t == 3 and RANK == SIZE - 1:
                mine[1][0] = np.inf
            if t == 3:
                mean[1][0] = np.inf   # what the mean holds when one rank's grad is inf
            kwargs = {"grad_scale": 256.0} if amp else {}
            if t == 5 and amp:
                sharded.step(per_group(mine), found_inf=1.0 if RANK == SIZE - 1 else 0.0, **kwargs)
                single.step(per_group(mean), found_inf=1.0, **kwargs)
            elif t == 3 and not amp:
                continue   # without AMP an inf grad is stepped on (NaN params), as in torch
            else:
                sharded.step(per_group(mine), **kwargs)
                single.step(per_group(mean), **kwargs)
            skips.append((sharded.last_step_skipped, single.last_step_skipped))
            got = sharded.param_groups[0]["params"] + sharded.param_groups[1]["params"]
            want = single.param_groups[0]["params"] + single.param_groups[1]["params"]
            for a, b in zip(got, want):
                equal &= bool(np.array_equal(a, b))
                if a.size:
                    scale = np.maximum(np.abs(b.astype(np.float64)), 1e-3)
                    max_rel = max(max_rel, float(np.max(np.abs(a.astype(np.float64) - b) / scale)))
        report[label] = {"skips_agree": all(x == y for x, y in skips), "skipped": [x for x, _ in skips],
                         "params_equal": equal, "max_rel_diff": max_rel,
                         "identical_across_ranks": on_every_rank(WORLD, digest(got))}
    return report


def run_sharded(comm, cls, params, hyper, first, last, checkpoint=None):
    """Steps first..last on `comm` (None: this rank sits out); returns (params, state_dict) on members."""
    if comm is None:
        return None
    opt = ShardedOptimizer(cls, params, comm, **hyper)
    if checkpoint is not None:
        opt.load_state_dict(pickle.loads(checkpoint))
    for t in range(first, last + 1):
        opt.step(grads_of(t, comm.Get_rank(), params))
    return params, opt.state_dict()


def case_resume(name, other):
    """Save after 5 steps at one world size, resume for 5 at another: the single-process trajectory, exactly."""
    cls, hyper = fastopt.OPTIMIZERS[name], hyper_for(name)
    start = make_params(3)
    # a sub-communicator of `other` ranks (other <= SIZE); ranks outside it get MPI.COMM_NULL
    sub = WORLD.Split(0 if RANK < other else MPI.UNDEFINED, RANK)
    sub = None if sub == MPI.COMM_NULL else sub
    report = {}
    for first_world, second_world, first_comm, second_comm in ((other, SIZE, sub, WORLD), (SIZE, other, WORLD, sub)):
        params = [p.copy() for p in start]
        saved = run_sharded(first_comm, cls, params, hyper, 1, 5)
        blob = WORLD.bcast(pickle.dumps(saved) if RANK == 0 else None, root=0)  # "the file", read by every rank
        params, state = pickle.loads(blob)
        resumed = run_sharded(second_comm, cls, [p.copy() for p in params], hyper, 6, 10, pickle.dumps(state))
        reference = cls([p.copy() for p in start], **hyper)
        for t in range(1, 11):
            reference.step(mean_grads(t, first_world if t <= 5 else second_world, start))
        plain = cls([p.copy() for p in params], **hyper)  # a plain optimizer loads the gathered checkpoint
        plain.load_state_dict(state)
        for t in range(6, 11):
            plain.step(mean_grads(t, second_world, start))
        key = f"{first_world}->{second_world}"
        if resumed is not None:
            ok = all(np.array_equal(a, b) for a, b in zip(resumed[0], reference.param_groups[0]["params"]))
            report[key] = {"params_equal": ok, "state_equal": same_state(resumed[1], reference.state_dict()),
                           "plain_resume_equal": all(np.array_equal(a, b) for a, b in
                                                     zip(plain.param_groups[0]["params"],
                                                         reference.param_groups[0]["params"]))}
    if sub is not None:
        sub.Free()
    return report


def expect_error(action):
    try:
        action()
    except (TypeError, ValueError) as error:
        return [type(error).__name__, str(error)]
    return None


def case_faults():
    """Bad input on the last rank only: every rank raises the same error, and nothing changed."""
    params = make_params(5)
    mine = [p.copy() for p in params]
    opt = ShardedOptimizer(fastopt.Adam, mine, WORLD, lr=0.01)
    opt.step(grads_of(1, RANK, params))
    before, state_before = [p.copy() for p in mine], opt.state_dict()
    bad = RANK == SIZE - 1
    report = {}

    grads = grads_of(2, RANK, params)
    if bad:
        grads[2] = grads[2][:-1]
    report["bad_shape"] = expect_error(lambda: opt.step(grads))

    grads = grads_of(2, RANK, params)
    if bad:
        grads[1] = grads[1].astype(np.float32)
    report["bad_dtype"] = expect_error(lambda: opt.step(grads))

    if bad:
        opt.param_groups[0]["lr"] = 0.5  # ranks disagree on a hyperparameter: silently wrong without the check
    report["lr_differs"] = expect_error(lambda: opt.step(grads_of(2, RANK, params)))
    opt.param_groups[0]["lr"] = 0.01

    if bad:
        opt.param_groups[0]["lr"] = -1.0
    report["bad_lr"] = expect_error(lambda: opt.step(grads_of(2, RANK, params)))
    opt.param_groups[0]["lr"] = 0.01

    state = opt.state_dict()
    if bad:
        state["state"][0]["exp_avg"] = state["state"][0]["exp_avg"][:1]
    report["bad_state"] = expect_error(lambda: opt.load_state_dict(state))

    shapes = [p.copy() for p in params]
    if bad:
        shapes[0] = shapes[0][:2]
    report["bad_construction"] = expect_error(lambda: ShardedOptimizer(fastopt.Adam, shapes, WORLD, lr=0.01))
    report["bad_class"] = expect_error(lambda: ShardedOptimizer(dict if bad else fastopt.Adam, [p.copy() for p in
                                                                                                params], WORLD))

    unchanged = all(np.array_equal(a, b) for a, b in zip(mine, before)) and same_state(opt.state_dict(),
                                                                                       state_before)
    # and it still works: the next good step is the reference's second step; an equal lr of another type on one
    # rank is not a difference (the digest compares values)
    if bad:
        opt.param_groups[0]["lr"] = np.float64(0.01)
    opt.step(grads_of(2, RANK, params))
    reference = fastopt.Adam([p.copy() for p in params], lr=0.01)
    for t in (1, 2):
        reference.step(mean_grads(t, SIZE, params))
    works = all(np.array_equal(a, b) for a, b in zip(mine, reference.param_groups[0]["params"]))
    return {"errors": WORLD.gather(report, root=0), "unchanged": on_every_rank(WORLD, unchanged) and unchanged,
            "works_after": works}


def case_views():
    """copy_back=False: train param_views; grads written into grad_views are not copied again."""
    params = make_params(9)
    user = [p.copy() for p in params]
    opt = ShardedOptimizer(fastopt.AdamW, user, WORLD, copy_back=False, lr=0.01)
    reference = fastopt.AdamW([p.copy() for p in params], lr=0.01)
    for t in range(1, 4):
        for view, g in zip(opt.grad_views, grads_of(t, RANK, params)):
            view[...] = g
        opt.step(opt.grad_views)
        reference.step(mean_grads(t, SIZE, params))
    return {"views_equal": all(np.array_equal(a, b) for a, b in zip(opt.param_views,
                                                                       reference.param_groups[0]["params"])),
            "user_untouched": all(np.array_equal(a, b) for a, b in zip(user, params)),
            "shard_starts_aligned": all(b.params[b.start:].ctypes.data % 16 == 0 for b in opt.buckets),
            "local_elements": [sum(last - first for _, first, last in b.pieces) for b in opt.buckets],
            # state for the shard only: exp_avg covers exactly the local elements; one inner group per local bucket
            "local_state_elements": sum(e["exp_avg"].size for e in opt.local_optimizer.state_dict()["state"].values()),
            "inner_groups": len(opt.local_optimizer.param_groups),
            "local_buckets": sum(1 for b in opt.buckets if b.pieces)}


def main(out):
    names = [*(n for n, s in fastopt.SPECS.items() if splittable(s)), "momentum", "nesterov"]
    results = {"world_size": SIZE, "trajectory": {n: case_trajectory(n) for n in names}}
    results["engine_reduction"] = case_trajectory("adam", reduction="engine")
    results["resume"] = {n: case_resume(n, 2 if SIZE > 2 else 1) for n in ("adam", "sgd", "rmsprop")}
    results["faults"] = case_faults()
    results["clip_amp"] = case_clip_amp()
    results["views"] = case_views()
    gathered = WORLD.gather(results, root=0)
    if RANK == 0:
        with open(out, "w") as f:
            json.dump({"ranks": gathered}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
