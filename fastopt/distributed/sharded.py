"""ZeRO-1: optimizer state sharded across data-parallel ranks, the fused step run on each rank's shard only.

    from mpi4py import MPI
    opt = ShardedOptimizer(fastopt.Adam, params, comm=MPI.COMM_WORLD, lr=1e-3)
    opt.step(local_grads)      # every rank ends with the same params: one step on the mean of the ranks' grads

Layout. The params of each (param group, dtype) form a bucket: one flat buffer, params back to back in order, padded
to `size * block` elements. Rank r owns elements [r * block, (r + 1) * block); `block` is the bucket's size over the
ranks rounded up to 16 bytes, so every shard starts 16-byte aligned, shards differ only by the tail padding, and a
param may be split between ranks. Each rank's inner fastopt optimizer sees the pieces of params inside its shard as
1-D views of the flat buffers (one param group per bucket, so one fused kernel call per bucket) and holds state for
them only.

A step: copy the local grads into the flat grad bucket (one copy; none when they are `grad_views`), reduce across
ranks to this rank's block, divide by the world size, run the fused update on the shard, all-gather the param bucket,
copy into the user's arrays (unless `copy_back=False`: then train `param_views`). No array is allocated per step.

Clipping (`max_grad_norm=`) and AMP (`step(grads, grad_scale=, found_inf=)`) work as on a plain optimizer, on the mean
grads: under AMP the shard's mean is divided by grad_scale in place (the values a plain optimizer's update sees); each
rank reduces its pieces (the cpu/cuda reduction kernels, float64), one small exchange gathers every rank's values,
and every rank combines them per param in rank order and then over the params in order: the same total norm and the
same skip decision on every rank, run to run. The total norm differs from a single process's in the last bits when
a param is split between ranks (the sum is grouped by piece), so clipped steps follow a plain optimizer within
rounding, not bit for bit; AMP's skip decisions are exact.
The grad bucket is the reduction's scratch: after a step, `grad_views` hold other ranks' data (write every grad
each step, as a backward pass does).

The mean (reduction="ordered", the default): every rank receives the other ranks' blocks of its shard (all-to-all)
and adds them in rank order, in the grads' dtype, then divides by the world size:
    mean = (((g_0 + g_1) + g_2) + ... + g_{n-1}) / n
which is bitwise `numpy.mean(numpy.stack([g_0, ..., g_{n-1}]), axis=0)`, so a sharded step equals, bit for bit, a
single process stepping on that mean (the updates are elementwise, so a shard computes exactly what the whole
would). Over MPI the all-to-all runs in place in the grad bucket; NCCL has no in-place all-to-all, so there the
ordered reduction holds a receive buffer the size of the bucket. reduction="engine" uses the engine's reduce-scatter
instead (MPI_Reduce_scatter_block / ncclReduceScatter; a receive buffer of one shard), but the engine chooses the
order of the additions, so with more than two ranks the mean may differ from the ordered one in the last bits (with
two, a + b = b + a and it is still exact). Either way every rank ends with bitwise identical params, since each
element is computed on one rank and gathered.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import operator

import numpy

from fastopt import clip, reference
from fastopt.distributed.engines import Engine, array_module, as_engine
from fastopt.modes import MODE_SWITCHES
from fastopt.optim import _scalar_arg

ALIGN_BYTES = 16  # a shard starts on a 16-byte boundary: vector loads stay aligned on every rank


def shard_block(total: int, itemsize: int, size: int) -> int:
    """Elements per rank for a bucket of `total` elements: ceil(total / size) rounded up to 16 bytes."""
    unit = max(1, ALIGN_BYTES // itemsize)
    per_rank = -(-total // size)
    return -(-per_rank // unit) * unit


def pieces(offsets, sizes, start, stop):
    """(param index, first, last) in bucket coordinates of every param overlapping [start, stop), in order."""
    found = []
    for i, (offset, n) in enumerate(zip(offsets, sizes)):
        first, last = max(offset, start), min(offset + n, stop)
        if first < last:
            found.append((i, first, last))
    return found


def _aligned_zeros(xp, n, dtype):
    """A zeroed 1-D buffer starting on a 64-byte boundary (CuPy's allocations already are)."""
    dtype = numpy.dtype(dtype)
    if xp is not numpy:
        return xp.zeros(n, dtype)
    raw = numpy.zeros(n + 64 // dtype.itemsize, dtype)
    skip = (-raw.ctypes.data % 64) // dtype.itemsize
    return raw[skip:skip + n]


class _Bucket:
    """The params of one (param group, dtype): flat buffers and this rank's pieces."""

    def __init__(self, group, members, arrays, size, rank, reduction, in_place, xp):
        self.group, self.members = group, members            # members: indices into the group's params
        self.shapes = [tuple(arrays[i].shape) for i in members]
        self.sizes = [int(arrays[i].size) for i in members]
        self.offsets = [int(o) for o in numpy.cumsum([0] + self.sizes[:-1])]
        self.dtype = numpy.dtype(arrays[members[0]].dtype)
        self.total = sum(self.sizes)
        self.block = shard_block(self.total, self.dtype.itemsize, size)
        self.start = rank * self.block
        self.pieces = pieces(self.offsets, self.sizes, self.start, self.start + self.block)
        padded = size * self.block
        self.params = _aligned_zeros(xp, padded, self.dtype)
        self.grads = _aligned_zeros(xp, padded, self.dtype)  # padding stays zero: the reduction adds zeros there
        if reduction == "ordered":  # the other ranks' blocks of this shard: in the grad bucket itself where allowed
            self.received = self.grads if in_place else _aligned_zeros(xp, padded, self.dtype)
        else:
            self.received = _aligned_zeros(xp, self.block, self.dtype)
        self.mean = self.received[:self.block]                # the reduced grads of this rank's shard
        self.param_views = [self.params[o:o + n].reshape(s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)]
        self.grad_views = [self.grads[o:o + n].reshape(s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)]
        self.shard_params = [self.params[a:b] for _, a, b in self.pieces]
        self.shard_grads = [self.mean[a - self.start:b - self.start] for _, a, b in self.pieces]


def splittable(spec) -> bool:
    """Whether a spec's update of an element reads only that element (and group scalars), so a tensor split between
    ranks steps as it would whole. Per-tensor reductions (LAMB's and LARS's trust ratios) and slots shaped unlike
    their param (Adafactor's row and column state) read the whole tensor."""
    return not getattr(spec, "reductions", ()) and all(getattr(s, "shape", None) is None for s in spec.slots)


class ShardedOptimizer:
    """ZeRO-1 around any fastopt optimizer class: state for this rank's shard only, the mean of the ranks' grads.

    ShardedOptimizer(optimizer_class, params, comm, *, reduction="ordered", copy_back=True, backend=None,
                     max_grad_norm=None, norm_type=2.0, **hyper)

    - `optimizer_class`: a fastopt optimizer class (fastopt.Adam, fastopt.Momentum, ...); `hyper` as for it.
    - `params`: as for the class (list or dict of arrays, or a list of param-group dicts); identical on every rank.
      They are copied into flat buckets; after each step the updated values are copied back into these arrays,
      unless `copy_back=False`, in which case train `param_views` (views of the buckets) instead.
    - `comm`: an mpi4py communicator, a cupy.cuda.nccl.NcclCommunicator, cupyx.distributed's NCCL backend, or an
      Engine (see fastopt.distributed.engines).
    - `reduction`: "ordered" (default; bitwise the mean a single process computes, see the module docstring) or
      "engine" (the engine's reduce-scatter, in the engine's order of additions; over NCCL it needs less memory).
    - `max_grad_norm`, `norm_type`: clipping by the total norm of the mean grads, folded into the update, as on the
      optimizer classes (see the module docstring for the order of the sum).

    Every call is collective: every rank must call it, in the same order. Bad input on any rank raises the same
    error on every rank (prefixed with the rank it came from) before any data moves.
    """

    last_step_skipped: bool = False   # True after a step AMP skipped (read by fastopt.GradScaler)

    def __init__(self, optimizer_class, params, comm, *, reduction="ordered", copy_back=True, backend=None,
                 max_grad_norm=None, norm_type=2.0, **hyperparameters):
        self.engine: Engine = as_engine(comm)
        self.rank, self.world_size = self.engine.rank, self.engine.size
        error = None
        try:
            self.max_grad_norm = None if max_grad_norm is None else clip.max_norm_value(max_grad_norm,
                                                                                         "max_grad_norm")
            self.norm_type = clip.norm_type_value(norm_type)
            self._setup(optimizer_class, params, reduction, copy_back, backend, hyperparameters)
        except (TypeError, ValueError) as caught:
            error = caught
        # the layout decides every collective's size: ranks that disagree on it would deadlock or mix data
        self._agree(error, None if error else self._fingerprint(layout=True))
        error = None
        try:
            self._allocate()
        except (TypeError, ValueError) as caught:
            error = caught
        self._agree(error)
        for bucket in self.buckets:  # every rank starts from the same params: each shard's owner's values
            if bucket.block:
                self.engine.all_gather(bucket.params)
        self._copy_back()

    # ---- construction ---------------------------------------------------------------------------------------------

    def _setup(self, optimizer_class, params, reduction, copy_back, backend, hyperparameters):
        spec = getattr(optimizer_class, "spec", None)
        if not isinstance(optimizer_class, type) or spec is None or not hasattr(spec, "slots"):
            raise TypeError(f"optimizer_class: expected a fastopt optimizer class (fastopt.Adam, ...), got "
                            f"{optimizer_class!r}")
        if not splittable(spec):
            raise ValueError(f"optimizer_class: {optimizer_class.__name__} reads whole tensors (per-tensor norms or "
                             "state shaped unlike its param), which the shards split; it cannot be sharded yet")
        if reduction not in ("ordered", "engine"):
            raise ValueError(f"reduction: expected 'ordered' or 'engine', got {reduction!r}")
        if not isinstance(copy_back, bool):
            raise TypeError(f"copy_back: expected True or False, got {copy_back!r}")
        self.optimizer_class, self.spec = optimizer_class, spec
        self._counts_steps = getattr(spec, "counts_steps", True)
        self.reduction, self.copy_back, self._backend = reduction, copy_back, backend
        self.defaults = {**spec.defaults, **getattr(optimizer_class, "default_overrides", {}), **hyperparameters}
        spec.validate(self.defaults)
        if isinstance(params, (list, tuple)) and params and all(isinstance(g, dict) for g in params):
            groups, grouped = list(params), True
        elif isinstance(params, (list, tuple)) and any(isinstance(g, dict) for g in params):
            raise TypeError("params: expected either arrays or param-group dicts, not a mix")
        else:
            groups, grouped = [{"params": params}], False
        self.param_groups: list[dict] = []
        for index, group in enumerate(groups):
            where = f"param_groups[{index}]['params']" if grouped else "params"
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError("param group: expected a dict with a 'params' entry")
            arrays, names = _split(group["params"], where)
            new = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
            spec.validate(new)
            new["params"] = arrays
            if names is not None:
                new["param_names"] = names
            self.param_groups.append(new)
        self._switch = MODE_SWITCHES.get(spec.name)   # train()/eval() (fastopt.modes), e.g. schedule-free
        if self._switch is not None:
            for group in self.param_groups:
                group[self._switch.key] = True
        kinds = {type(a) for g in self.param_groups for a in g["params"]}
        known = [k for k in kinds if k.__module__.split(".")[0] in ("numpy", "cupy")]
        if len(known) < len(kinds):  # the buckets are NumPy or CuPy arrays (torch: pass CuPy/NumPy views)
            raise TypeError(f"params: expected NumPy or CuPy arrays, got {sorted(k.__name__ for k in kinds)}")
        if len(kinds) > 1:
            raise TypeError(f"params: expected arrays of one kind, got {sorted(k.__name__ for k in kinds)}")
        for g, group in enumerate(self.param_groups):
            for i, a in enumerate(group["params"]):
                if numpy.dtype(a.dtype).kind != "f":
                    raise TypeError(f"param_groups[{g}]['params'][{i}]: expected a floating-point array, got "
                                    f"{a.dtype}")
        self._arrays = [list(g["params"]) for g in self.param_groups]  # what step() copies back into
        self._steps = [[0] * len(g["params"]) for g in self.param_groups]

    def _allocate(self):
        first = self._arrays[0][0]
        self._xp = array_module(first)
        self.buckets: list[_Bucket] = []
        for g, arrays in enumerate(self._arrays):
            by_dtype: dict = {}
            for i, a in enumerate(arrays):
                by_dtype.setdefault(numpy.dtype(a.dtype), []).append(i)
            for members in by_dtype.values():
                bucket = _Bucket(g, members, arrays, self.world_size, self.rank, self.reduction,
                                 self.engine.in_place_all_to_all, self._xp)
                for view, i in zip(bucket.param_views, members):
                    self._xp.copyto(view, arrays[i])
                self.buckets.append(bucket)
        # the inner optimizer: one param group per bucket in which this rank holds something
        self._local = [b for b in self.buckets if b.pieces]
        self.local_optimizer = None
        if self._local:
            groups = [{**self._hyper(self.param_groups[b.group]), "params": b.shard_params} for b in self._local]
            self.local_optimizer = self.optimizer_class(groups, backend=self._backend, **self._hyper(self.defaults))
        # the inner optimizer takes one list per group, or the list itself when it has a single group
        grads = [b.shard_grads for b in self._local]
        self._local_grads = grads[0] if len(grads) == 1 else grads
        self.param_views = self._structured([b.param_views for b in self.buckets])
        self.grad_views = self._structured([b.grad_views for b in self.buckets])

    def _structured(self, per_bucket):
        """Views per bucket -> the structure of params: per group a list, or a dict when params were named."""
        per_group = [[None] * len(arrays) for arrays in self._arrays]
        for bucket, views in zip(self.buckets, per_bucket):
            for i, view in zip(bucket.members, views):
                per_group[bucket.group][i] = view
        shaped = [dict(zip(g["param_names"], views)) if "param_names" in g else views
                  for g, views in zip(self.param_groups, per_group)]
        return shaped[0] if len(shaped) == 1 else shaped

    def _hyper(self, group: dict) -> dict:
        return {h.name: group[h.name] for h in self.spec.hypers}

    def _fingerprint(self, layout=False, step=None) -> str:
        """A digest of what every rank must agree on: the buckets' shapes and dtypes, hyperparameters and steps (and
        `step`, what a step's arguments must agree on)."""
        parts = [self.optimizer_class.__name__, self.reduction, repr((self.max_grad_norm, self.norm_type)),
                 repr(step)]
        for g, group in enumerate(self.param_groups):
            parts.append(repr(sorted((k, _plain(v)) for k, v in self._hyper(group).items())))
            parts.append(repr([(tuple(a.shape), str(a.dtype)) for a in self._arrays[g]]))
            if not layout:
                parts.append(repr(self._steps[g]))
        return hashlib.sha1("|".join(parts).encode()).hexdigest()

    def _agree(self, error, fingerprint=None):
        """Collective validation: any rank's error, or ranks whose models or hyperparameters differ, raise the same
        error on every rank. One small exchange; it comes before any collective that bad input could hang."""
        reports = self.engine.exchange((None if error is None else (type(error).__name__, str(error)), fingerprint))
        for rank, (report, _) in enumerate(reports):
            if report is not None:
                kind = {"TypeError": TypeError, "ValueError": ValueError}.get(report[0], RuntimeError)
                raise kind(f"rank {rank}: {report[1]}") from error
        prints = [p for _, p in reports]
        if fingerprint is not None and len(set(prints)) > 1:
            other = next(r for r, p in enumerate(prints) if p != prints[0])
            raise ValueError(f"ranks 0 and {other} differ in their params' shapes or dtypes, hyperparameters, steps "
                             "or optimizer: every rank must build the same optimizer and change it the same way")

    # ---- the step -------------------------------------------------------------------------------------------------

    def step(self, grads, grad_scale=None, found_inf=None) -> None:
        """One step on the mean of every rank's `grads` (same structure as params). Collective.

        `grad_scale` and `found_inf` as fastopt.Optimizer.step takes them (AMP), on the mean grads: grad_scale must be
        the same on every rank; the step is skipped on every rank when any rank's found_inf is non-zero or, without
        found_inf, when any mean grad holds inf or NaN."""
        error = None
        try:
            self._check_mode()
            per_group = self._check_grads(grads)
            grad_scale = _scalar_arg(grad_scale, "grad_scale")
            found_inf = _scalar_arg(found_inf, "found_inf")
        except (TypeError, ValueError) as caught:
            error = caught
        # grad_scale must agree (it changes every update); whether found_inf is given too (one exchange more)
        self._agree(error, self._fingerprint(step=(grad_scale, found_inf is None)))
        for bucket in self.buckets:
            views, group_grads = bucket.grad_views, per_group[bucket.group]
            for view, i in zip(views, bucket.members):
                if group_grads[i] is not view:  # grads that are grad_views are in place already
                    self._xp.copyto(view, group_grads[i])
            if not bucket.block:
                continue
            if self.reduction == "ordered":
                self.engine.all_to_all(bucket.grads, bucket.received)
                received = bucket.received.reshape(self.world_size, bucket.block)
                for r in range(1, self.world_size):  # rank order, in the grads' dtype: see the module docstring
                    self._xp.add(bucket.mean, received[r], out=bucket.mean)
            else:
                self.engine.reduce_scatter_sum(bucket.grads, bucket.mean)
            self._xp.true_divide(bucket.mean, self.world_size, out=bucket.mean)
            if grad_scale is not None:   # AMP: what a plain optimizer's update sees, mean / grad_scale in its dtype
                self._xp.true_divide(bucket.mean, bucket.dtype.type(grad_scale), out=bucket.mean)
        go, factor = True, None
        if grad_scale is not None or found_inf is not None or self.max_grad_norm is not None:
            go, factor = self._grad_transform(grad_scale, found_inf)
        self.last_step_skipped = not go
        if not go:
            return   # on every rank: params, state and step counts stay as they were
        if self.local_optimizer is not None:
            inner = self.local_optimizer
            for group, bucket in zip(inner.param_groups, self._local):
                group.update(self._hyper(self.param_groups[bucket.group]))  # param_groups are live, as in torch
            if factor is None:
                inner.step(self._local_grads)
            else:
                with inner._lock:
                    inner._step(self._local_grads, decided=(None, factor))
        for bucket in self.buckets:
            if bucket.block:
                self.engine.all_gather(bucket.params)
        for g, steps in enumerate(self._steps):
            self._steps[g] = [s + 1 for s in steps]
        self._copy_back()

    def _grad_transform(self, grad_scale, found_inf):
        """(run the step?, clipping factor or None): the decisions of fastopt.Optimizer._grad_transform, from every
        rank's reductions of its pieces of the mean grads (already divided by grad_scale), combined alike on every
        rank. Collective."""
        if found_inf is not None:
            if any(flag != 0 for flag in self.engine.exchange(found_inf)):
                return False, None
        elif grad_scale is not None:
            if self.max_grad_norm is not None and self.norm_type == 2:
                # one pass serves both (as Optimizer._grad_transform): finite unless a grad is inf/NaN or it overflowed
                squares = self._per_param("sumsq")
                total = reference.reduce_group(squares, "sumsq")
                if not math.isfinite(total) and reference.reduce_group(self._per_param("nonfinite"), "nonfinite"):
                    return False, None
                return True, self._clip_coefficient(clip.norm_from(total, 2.0))
            if reference.reduce_group(self._per_param("nonfinite"), "nonfinite") != 0:
                return False, None
        if self.max_grad_norm is None:
            return True, None
        op, power = clip.reduction_for(self.norm_type)
        return True, self._clip_coefficient(clip.total_norm_of(self._per_param(op, power), self.norm_type))

    def _per_param(self, op: str, power: float = 2.0) -> list:
        """Per param of every group (in order), the reduction `op` of its mean grads: each rank reduces its pieces,
        one exchange, then every rank combines the pieces of each param in rank order."""
        mine = []
        if self.local_optimizer is not None:
            arrays = [g for bucket in self._local for g in bucket.shard_grads]
            values = clip._per_tensor(self.local_optimizer.backend, arrays, op, power)
            keys = [(bucket.group, bucket.members[j]) for bucket in self._local for j, _, _ in bucket.pieces]
            mine = [(*key, value) for key, value in zip(keys, values)]
        per_param = {}
        for report in self.engine.exchange(mine):   # rank order
            for g, i, value in report:
                key = (g, i)
                per_param[key] = value if key not in per_param else reference.combine(op, per_param[key], value)
        start = reference.reduction_start(op)   # an empty param: no piece anywhere
        return [per_param.get((g, i), start) for g, arrays in enumerate(self._arrays) for i in range(len(arrays))]

    def _clip_coefficient(self, total_norm: float) -> float:
        first = numpy.dtype(self._arrays[0][0].dtype)   # as a plain optimizer: the first param's state dtype
        dtype = numpy.dtype(numpy.float32) if first.itemsize < 4 else first
        return reference.clip_coefficient(total_norm, self.max_grad_norm, dtype)

    def _check_mode(self):
        if self._switch is not None and not all(g[self._switch.key] for g in self.param_groups):
            raise ValueError(f"the optimizer is in eval mode ({self._switch.key}=False): call train() before step()")

    def train(self):
        """Collective: every param that has state moves to the point step() runs at (fastopt.modes)."""
        self._set_mode(True)
        return self

    def eval(self):
        """Collective: every param that has state moves to the point to evaluate and save (fastopt.modes)."""
        self._set_mode(False)
        return self

    def _set_mode(self, to: bool) -> None:
        # each rank moves its own shard (params and the switch's slot are sharded alike), then the params are gathered
        if self._switch is None:
            raise TypeError(f"{self.optimizer_class.__name__} has no train()/eval()")
        error = None
        try:
            if self.local_optimizer is not None:
                for inner, bucket in zip(self.local_optimizer.param_groups, self._local):
                    inner.update(self._hyper(self.param_groups[bucket.group]))
                self.local_optimizer._set_mode(to)
        except (TypeError, ValueError) as caught:
            error = caught
        self._agree(error, self._fingerprint())
        for bucket in self.buckets:
            if bucket.block:
                self.engine.all_gather(bucket.params)
        for group in self.param_groups:
            group[self._switch.key] = to
        self._copy_back()

    def _copy_back(self):
        if not self.copy_back:
            return
        for bucket in self.buckets:
            for view, i in zip(bucket.param_views, bucket.members):
                self._xp.copyto(self._arrays[bucket.group][i], view)

    def _check_grads(self, grads) -> list:
        for g, group in enumerate(self.param_groups):
            self.spec.validate(self._hyper(group))
            if len(group["params"]) != len(self._arrays[g]) or \
                    not all(map(operator.is_, group["params"], self._arrays[g])):
                raise ValueError(f"param_groups[{g}]['params']: the arrays were replaced; a ShardedOptimizer keeps "
                                 "the arrays it was built with (build a new one for new arrays)")
        if len(self.param_groups) == 1:
            per_group = [self._match(grads, 0, "grads")]
        elif not isinstance(grads, (list, tuple)) or len(grads) != len(self.param_groups):
            raise TypeError(f"grads: with {len(self.param_groups)} param groups, expected a list with one entry "
                            "per group (each a list or dict like that group's params)")
        else:
            per_group = [self._match(gr, g, f"grads[{g}]") for g, gr in enumerate(grads)]
        for g, group_grads in enumerate(per_group):
            where = "grads" if len(per_group) == 1 else f"grads[{g}]"
            names = self.param_groups[g].get("param_names")
            if len(group_grads) != len(self._arrays[g]):
                raise ValueError(f"{where}: expected {len(self._arrays[g])} arrays (one per param), got "
                                 f"{len(group_grads)}")
            for i, (p, grad) in enumerate(zip(self._arrays[g], group_grads)):
                label = f"{where}[{names[i]!r}]" if names else f"{where}[{i}]"
                if grad is None:
                    raise TypeError(f"{label}: gradient is None; every param needs a gradient")
                if type(grad) is not type(p):
                    raise TypeError(f"{label}: expected a {type(p).__name__} like its param, got "
                                    f"{type(grad).__name__}")
                if tuple(grad.shape) != tuple(p.shape):
                    raise ValueError(f"{label}: expected shape {tuple(p.shape)} like its param, got "
                                     f"{tuple(grad.shape)}")
                if grad.dtype != p.dtype:
                    raise TypeError(f"{label}: expected dtype {p.dtype} like its param, got {grad.dtype}")
        return per_group

    def _match(self, grads, index, where) -> list:
        names = self.param_groups[index].get("param_names")
        if names is None:
            if not isinstance(grads, (list, tuple)):
                raise TypeError(f"{where}: expected a list of arrays like params, got {type(grads).__name__}")
            return list(grads)
        if not isinstance(grads, dict):
            raise TypeError(f"{where}: params were given as a dict, so grads must be a dict with the same names")
        missing = [n for n in names if n not in grads]
        extra = [n for n in grads if n not in set(names)]
        if missing or extra:
            raise ValueError(f"{where}: names differ from params' (missing {missing}, unexpected {extra})")
        return [grads[n] for n in names]

    # ---- state_dict -----------------------------------------------------------------------------------------------

    def _local_state(self):
        """(bucket index in self._local, piece index) -> {slot: 1-D NumPy array} of this rank's state."""
        if self.local_optimizer is None:
            return {}
        saved, out, key = self.local_optimizer.state_dict()["state"], {}, 0
        for k, bucket in enumerate(self._local):
            for p in range(len(bucket.pieces)):
                entry = saved.get(key, {})
                out[(k, p)] = {name: value for name, value in entry.items() if name != "step"}
                key += 1
        return out

    def state_dict(self) -> dict:
        """The full, unsharded state in torch's layout (NumPy arrays), gathered: the same dict on every rank, and
        loadable by a plain fastopt optimizer of the same class. Collective."""
        self._agree(None, self._fingerprint())
        local = self._local_state()
        # which slots exist, in which dtype: reported by the ranks holding pieces (rank 0 holds a piece of every
        # bucket that has elements); a group's buckets share its slots, as in a plain optimizer
        # host scalars (e.g. NAdam's mu_product): every piece of a param holds the same value; sent as
        # {member: {name: value}} by the ranks holding a piece of it
        host_names = [h.name for h in getattr(self.spec, "host_state", ())]
        mine = {}
        for k, bucket in enumerate(self._local):
            names = {name for p in range(len(bucket.pieces)) for name in local[(k, p)] if name not in host_names}
            dtypes = {str(a.dtype) for p in range(len(bucket.pieces)) for name, a in local[(k, p)].items()
                      if name not in host_names}
            host = {i: {name: float(local[(k, p)][name]) for name in host_names if name in local[(k, p)]}
                    for p, (i, _, _) in enumerate(bucket.pieces)}
            mine[self.buckets.index(bucket)] = (sorted(names), sorted(dtypes), host)
        reports = self.engine.exchange(mine)
        host_of, host_by_step = {}, {}  # (bucket, member position) -> values; (group, step) -> values
        for report in reports:
            for b, (_, _, host) in report.items():
                for j, values in host.items():
                    host_of.setdefault((b, j), values)
                    host_by_step.setdefault((self.buckets[b].group, self._steps[self.buckets[b].group]
                                             [self.buckets[b].members[j]]), values)
        order = [s.name for s in self.spec.slots]
        group_slots = [set() for _ in self.param_groups]
        for report in reports:
            for b, (names, _, _) in report.items():
                group_slots[self.buckets[b].group].update(names)
        first_index = numpy.cumsum([0] + [len(a) for a in self._arrays])
        state = {}
        for b, bucket in enumerate(self.buckets):
            names = sorted(group_slots[bucket.group], key=order.index)
            dtypes = {d for report in reports for d in report.get(b, ((), (), {}))[1]}
            dtype = numpy.dtype(dtypes.pop()) if len(dtypes) == 1 else self._state_dtype(bucket)
            k = self._local.index(bucket) if bucket in self._local else None
            gathered = {}
            for name in names:
                full = _aligned_zeros(self._xp, bucket.params.size, dtype)
                if k is not None:
                    for p, (_, first, last) in enumerate(bucket.pieces):
                        if name in local[(k, p)]:
                            full[first:last] = self._xp.asarray(local[(k, p)][name].reshape(-1))
                if bucket.block:
                    self.engine.all_gather(full)
                gathered[name] = full.get() if hasattr(full, "get") else full
            for j, (i, start, size, shape) in enumerate(zip(bucket.members, bucket.offsets, bucket.sizes,
                                                             bucket.shapes)):
                step = self._steps[bucket.group][i]
                if step == 0 and not names:
                    continue  # like torch: no entry before the first step
                entry = {"step": step} if self._counts_steps else {}  # torch's SGD keeps no step
                for name in names:
                    entry[name] = gathered[name][start:start + size].reshape(shape).copy()
                # an empty param has no piece on any rank: its values are those of its group's params at its step
                # (they step together)
                entry.update(host_of.get((b, j)) or host_by_step.get((bucket.group, step), {}))
                if entry:
                    state[int(first_index[bucket.group]) + i] = entry
        groups = []
        for g, group in enumerate(self.param_groups):
            saved = {k: (list(v) if isinstance(v, list) else v) for k, v in group.items() if k != "params"}
            saved["params"] = list(range(int(first_index[g]), int(first_index[g + 1])))
            groups.append(saved)
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    @staticmethod
    def _state_dtype(bucket):
        # no rank holds a piece (an empty bucket): the backends' rule, float32 state for 16-bit params
        return numpy.dtype(numpy.float32) if bucket.dtype.itemsize < 4 else bucket.dtype

    def load_state_dict(self, state_dict: dict) -> None:
        """Take a full torch-layout state (from any world size, or a plain fastopt optimizer) and keep this rank's
        shard of it. Checks everything on every rank first; collective."""
        error = None
        try:
            hypers, steps, slots, host = self._checked_state(state_dict)
            inner = self._inner_state(hypers, steps, slots, host)
        except (TypeError, ValueError) as caught:
            error = caught
        self._agree(error)
        error = None
        try:  # the inner optimizer re-checks; an error here would be a bug, but it must still not hang other ranks
            if self.local_optimizer is not None:
                self.local_optimizer.load_state_dict(inner)
        except (TypeError, ValueError) as caught:
            error = caught
        self._agree(error)
        for group, hyper in zip(self.param_groups, hypers):
            group.update(hyper)
        if self._switch is not None:
            key = self._switch.key
            for group, saved in zip(self.param_groups, state_dict["param_groups"]):
                if isinstance(saved.get(key), bool):
                    group[key] = saved[key]
            if self.local_optimizer is not None:
                for inner, bucket in zip(self.local_optimizer.param_groups, self._local):
                    inner[key] = self.param_groups[bucket.group][key]
        self._steps = steps

    def _checked_state(self, state_dict):
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError("state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups, state = state_dict["param_groups"], state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict: has {len(saved_groups)} param groups, this optimizer "
                             f"{len(self.param_groups)}")
        hypers, steps, slots, host = [], [], [], []
        host_names = [h.name for h in getattr(self.spec, "host_state", ())]
        for g, (saved, arrays) in enumerate(zip(saved_groups, self._arrays)):
            keys = list(saved.get("params", ()))
            if len(keys) != len(arrays):
                raise ValueError(f"state_dict: param group {g} has {len(keys)} params, this optimizer's has "
                                 f"{len(arrays)}")
            hyper = {h.name: saved.get(h.name, self.param_groups[g][h.name]) for h in self.spec.hypers}
            if isinstance(hyper.get("betas"), list):
                hyper["betas"] = tuple(hyper["betas"])
            self.spec.validate(hyper)
            group_steps, group_slots, group_host = [], {}, []
            for i, key in enumerate(keys):
                entry = state.get(key, {})
                if not isinstance(entry, dict):
                    raise TypeError(f"state_dict: state[{key!r}] must be a dict, got {type(entry).__name__}")
                step = _checked_step(entry.get("step", 0), key)
                first_slot = getattr(self.spec, "first_step_slot", None)
                if not self._counts_steps:  # the first step is the one that creates this slot (torch's SGD)
                    step = max(step, int(entry.get(first_slot) is not None))
                group_steps.append(step)
                # host scalars travel as they are: the inner optimizer's load_state_dict checks them
                group_host.append({name: entry[name] for name in host_names if name in entry})
                for slot in self.spec.slots:
                    if slot.name in entry:
                        value = numpy.asarray(entry[slot.name])
                        if value.shape != tuple(arrays[i].shape):
                            raise ValueError(f"state_dict: state[{key}][{slot.name!r}] has shape {value.shape}, "
                                             f"the param has {tuple(arrays[i].shape)}")
                        if value.dtype.kind != "f":
                            raise TypeError(f"state_dict: state[{key}][{slot.name!r}] must be floating point, got "
                                            f"{value.dtype}")
                        group_slots.setdefault(slot.name, [None] * len(arrays))[i] = value
            for name, values in group_slots.items():
                if any(v is None for v in values):
                    raise ValueError(f"state_dict: slot {name!r} is saved for some params of group {g} but not "
                                     "for all")
            hypers.append(hyper)
            steps.append(group_steps)
            slots.append(group_slots)
            host.append(group_host)
        return hypers, steps, slots, host

    def _inner_state(self, hypers, steps, slots, host) -> dict:
        """The local optimizer's state dict: each piece's step and its slice of every saved slot."""
        state, groups, key = {}, [], 0
        for bucket in self._local:
            g = bucket.group
            keys = []
            for i, first, last in bucket.pieces:
                member = bucket.members[i]
                lo, hi = first - bucket.offsets[i], last - bucket.offsets[i]
                entry = {"step": steps[g][member]}
                for name, values in slots[g].items():
                    entry[name] = values[member].reshape(-1)[lo:hi]
                entry.update(host[g][member])
                if entry["step"] or len(entry) > 1:
                    state[key] = entry
                keys.append(key)
                key += 1
            groups.append({**hypers[g], "params": keys})
        return {"state": state, "param_groups": groups}

    def __repr__(self) -> str:
        return (f"ShardedOptimizer({self.optimizer_class.__name__}, rank={self.rank}, world_size={self.world_size}, "
                f"buckets={len(self.buckets)}, reduction={self.reduction!r})")


def _split(params, where):
    if isinstance(params, dict):
        names, arrays = list(params), list(params.values())
    elif isinstance(params, (list, tuple)):
        names, arrays = None, list(params)
    else:
        raise TypeError(f"{where}: expected a list of arrays, a dict name -> array, or a list of param-group dicts; "
                        f"got {type(params).__name__}")
    if not arrays:
        raise ValueError(f"{where}: a param group needs at least one array")
    for i, a in enumerate(arrays):
        if not (hasattr(a, "shape") and hasattr(a, "dtype")):
            raise TypeError(f"{where}[{names[i] if names else i}]: expected an array, got {type(a).__name__}")
    return arrays, names


def _checked_step(step, key) -> int:
    value = step.item() if hasattr(step, "item") else step
    if not isinstance(value, numbers.Real) or value < 0 or value != int(value):
        raise ValueError(f"state_dict: state[{key}]['step'] must be a whole number >= 0, got {step!r}")
    return int(value)


def _plain(value):
    """A hyperparameter as plain Python values, so that 0.01 and numpy.float64(0.01) digest the same."""
    if isinstance(value, (bool, numpy.bool_)):
        return bool(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    return value
