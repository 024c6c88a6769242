"""The torch-style classes: param groups, state and state_dict. No arithmetic here: it all goes through
`fastopt.functional`.

    opt = fastopt.Adam(params, lr=1e-3)      # params: list of arrays, dict name -> array, or list of group dicts
    opt.step(grads)                          # grads in the same structure; params updated in place

`param_groups` are live, as in torch: hyperparameters edited there are validated at the next step, and params
replaced or appended in `param_groups[i]["params"]` are followed (state kept for the params that stay, created for
new ones). A step checks every group first and changes nothing when anything is wrong. One optimizer stepped from
several threads runs one step at a time. Copies (`copy.deepcopy`, `pickle`) own their arrays; plans are rebuilt.
"""

from __future__ import annotations

import inspect
import math
import numbers
import operator
import threading
from typing import ClassVar

from fastopt import clip, dispatch, functional, reference
from fastopt.modes import MODE_SWITCHES, ModeSwitched
from fastopt.specs import SHORTHANDS, SPECS, OptimizerSpec

_MAX_STEP = 2 ** 53  # steps beyond this are not exact in float64 (the scalars' arithmetic): refused on load


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _split_params(params, where="params"):
    """(arrays, names or None, labels) from a list/tuple of arrays or a dict name -> array."""
    if isinstance(params, dict):
        names = list(params)
        arrays = list(params.values())
        labels = [f"{where}[{n!r}]" for n in names]
    elif isinstance(params, (list, tuple)):
        names, arrays = None, list(params)
        labels = [f"{where}[{i}]" for i in range(len(arrays))]
    else:
        extra = ""
        if hasattr(params, "__next__") or inspect.isgenerator(params):
            extra = (" (an iterator such as model.parameters() is consumed once: pass a list; for a torch model, "
                     "[p.detach().numpy() for p in model.parameters()], or use the torch drop-ins fastopt.torch.*)")
        raise TypeError(f"{where}: expected a list of arrays, a dict name -> array, or a list of param-group dicts; "
                        f"got {type(params).__name__}{extra}")
    for label, a in zip(labels, arrays):
        if not _is_array(a):
            raise TypeError(f"{label}: expected an array, got {type(a).__name__}")
        advice = dispatch.hint(a)
        if advice:
            raise TypeError(f"{label}: expected a NumPy or CUDA array, got {type(a).__name__}{advice}")
    return arrays, names, labels


class _Group:
    """What the optimizer keeps per param group besides the user-visible dict."""

    def __init__(self, where, params, names, labels, views):
        self.where = where              # how the group's params are named in messages
        self.params = tuple(params)     # the user's arrays, as last seen in param_groups[i]["params"]
        self.names = names              # dict keys when params came as a dict, else None
        self.labels = labels            # the name of each param in messages
        self.views = views              # the backend's view of each param (e.g. a plain ndarray of an np.matrix)
        self.state: dict = {}           # slot -> list of arrays (absent until the first step that uses it)
        self.base = [0] * len(views)    # steps taken by each param (SGD: steps since its momentum buffer exists) ...
        self.taken = 0                  # ... plus this many (a step adds 1 here, not to every entry)
        self.hyper_key = None           # the raw hyperparameter values last validated
        self.hyper: dict = {}           # ... their validated, normalized form
        self.flags = None               # ... and the kernel flags they give
        self.updates = None             # (flags, [(indices, FusedUpdate)]) or None: rebuilt lazily
        self.grads: tuple = ()          # the grads checked and used by the last step that ran
        self.grad_views: list = []
        self.host: list = [None] * len(views)  # per param: its host state values (a tuple); None before its first step

    @property
    def steps(self) -> list:
        return [s + self.taken for s in self.base] if self.taken else self.base

    @steps.setter
    def steps(self, steps) -> None:
        self.base, self.taken = list(steps), 0


class Optimizer:
    """Base class: `spec` (an OptimizerSpec) says which optimizer; `default_overrides` change its defaults."""

    spec: ClassVar[OptimizerSpec]
    default_overrides: ClassVar[dict] = {}
    max_grad_norm: float | None = None    # gradient clipping (constructor argument), None: off
    norm_type: float = 2.0
    last_step_skipped: bool = False       # True after a step AMP skipped (inf or NaN gradients, or found_inf)
    capturable: bool = False              # step count, hyperparameters and scalars in device memory (cuda backend)

    def __init__(self, params, backend=None, max_grad_norm=None, norm_type=2.0, capturable=False, **hyperparameters):
        if not isinstance(capturable, bool):
            raise TypeError(f"capturable: expected True or False, got {capturable!r}")
        # Gradient clipping by the total norm over every group, folded into the update (fastopt.clip).
        self.max_grad_norm = None if max_grad_norm is None else clip.max_norm_value(max_grad_norm, "max_grad_norm")
        self.norm_type = clip.norm_type_value(norm_type)
        self.defaults = {**self.spec.defaults, **self.default_overrides, **hyperparameters}
        self.spec.validate(self.defaults)
        self._requested_backend = backend
        self.param_groups: list[dict] = []
        self._groups: list[_Group] = []
        self._lock = threading.RLock()
        self._init_hyper_names()
        self.backend = None
        if isinstance(params, (list, tuple)) and params and all(isinstance(g, dict) for g in params):
            for group in params:
                self.add_param_group(group)
        elif isinstance(params, (list, tuple)) and any(isinstance(g, dict) for g in params):
            raise TypeError("params: expected either arrays or param-group dicts, not a mix")
        else:
            self._add_group({"params": params}, "params")
        if capturable:
            self._check_capturable()
        self.capturable = capturable

    # ---- capturable (cuda): a step a CUDA graph can capture and replay ------------------------------------------
    # The step count, the hyperparameters and the kernel scalars live in device memory: each step is two launches
    # with no argument that changes (advance: step + 1 and the scalars by the family's fo_<family>_scalars, then the
    # update reading them; fastopt/backends/cuda.py). An eager step writes changed hyperparameters to the device
    # first; between graph replays, `write_hyperparameters()` does (after an lr change in param_groups, e.g. a
    # scheduler's step). The device's step count is the truth: state_dict() reads it back.

    def _check_capturable(self) -> None:
        from fastopt import cuda_build
        if self.backend is None or self.backend.name != "cuda":
            raise ValueError(f"capturable=True needs the cuda backend (CUDA graphs), got backend "
                             f"{getattr(self.backend, 'name', None)!r}")
        if not cuda_build.is_capturable(self.spec.kernel):
            capable = sorted(s.class_name for s in SPECS.values() if cuda_build.is_capturable(s.kernel))
            raise ValueError(f"capturable=True: {self.spec.class_name} has no capturable step; these have: "
                             f"{', '.join(capable)}")
        if self.max_grad_norm is not None:
            raise ValueError("capturable=True does not take max_grad_norm (clipping reads the norm on the host)")

    def write_hyperparameters(self) -> None:
        """capturable: validate param_groups' hyperparameters and write those that changed into the device buffers
        the captured step reads (no step is taken). Call it between graph replays after changing lr (or any other
        hyperparameter that selects no different kernel); an eager step() does it by itself."""
        if not self.capturable:
            raise ValueError("write_hyperparameters: the optimizer is not capturable (capturable=True)")
        with self._lock:
            for group, record in zip(self.param_groups, self._groups):
                if record.updates is None:
                    continue   # no step yet: the first step writes them
                _, hyper, flags = self._validated_hyper(group, record)
                if flags != record.flags:
                    raise ValueError("write_hyperparameters: a hyperparameter change that selects other kernels "
                                     f"({self.spec.flag_names}) needs an eager step (and a new capture)")
                for _, update in record.updates[1]:
                    for _, plan in update.plans:
                        plan.set_hyper(hyper)

    def _device_steps(self, record) -> list:
        """capturable: each param's step count as the device holds it (graph replays count there only)."""
        steps = list(record.steps)
        if record.updates is not None:
            for indices, update in record.updates[1]:
                counted = [plan.device_step() for _, plan in update.plans if plan.total]
                if counted:
                    for i in indices:
                        steps[i] = counted[0]
        return steps

    def _init_hyper_names(self) -> None:
        self._hyper_names = tuple(h.name for h in self.spec.hypers)
        getter = operator.itemgetter(*self._hyper_names)
        self._hyper_getter = getter if len(self._hyper_names) > 1 else (lambda group: (getter(group),))

    # ---- param groups ---------------------------------------------------------------------------------------------

    def add_param_group(self, group: dict) -> None:
        """Add a group: a dict with "params" (list or dict of arrays) and any hyperparameters to override."""
        with self._lock:
            self._add_group(group, f"param_groups[{len(self.param_groups)}]['params']")

    def _add_group(self, group: dict, where: str) -> None:
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("param group: expected a dict with a 'params' entry")
        arrays, names, labels = _split_params(group["params"], where)
        if not arrays:
            raise ValueError(f"{where}: a param group needs at least one array")
        new = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self.spec.validate(new)
        backend, views = self._checked_views(arrays, labels, where, len(self._groups))
        self.backend = backend
        new["params"] = arrays
        if names is not None:
            new["param_names"] = names
        self.param_groups.append(new)
        self._groups.append(_Group(where, arrays, names, labels, views))

    def _checked_views(self, arrays, labels, where, index):
        """The backend and its views of `arrays` as group `index`, checked against every other group's params."""
        backend = dispatch.choose_backend(arrays, self._requested_backend)
        if self.backend is not None and backend is not self.backend:
            raise TypeError(f"{where}: these arrays need the {backend.name} backend, the optimizer uses "
                            f"{self.backend.name}; use one optimizer per kind of array")
        views = [backend.as_array(a) for a in arrays]
        others = [g for i, g in enumerate(self._groups) if i != index]
        functional.check_params([v for g in others for v in g.views] + views, backend,
                                [label for g in others for label in g.labels] + labels)
        return backend, views

    # ---- the step -------------------------------------------------------------------------------------------------

    def _grads_per_group(self, grads, names) -> list[list]:
        if len(names) == 1:
            return [self._match(grads, names[0], "grads")]
        if not isinstance(grads, (list, tuple)) or len(grads) != len(names):
            raise TypeError(f"grads: with {len(names)} param groups, expected a list with one entry "
                            "per group (each a list or dict like that group's params)")
        return [self._match(g, group_names, f"grads[{i}]") for i, (g, group_names) in enumerate(zip(grads, names))]

    @staticmethod
    def _match(grads, names, where: str) -> list:
        if names is None:
            if not isinstance(grads, (list, tuple)):
                raise TypeError(f"{where}: expected a list of arrays like params, got {type(grads).__name__}"
                                f"{dispatch.hint(grads)}")
            return list(grads)
        if not isinstance(grads, dict):
            raise TypeError(f"{where}: params were given as a dict, so grads must be a dict with the same names")
        missing = [n for n in names if n not in grads]
        extra = [n for n in grads if n not in set(names)]
        if missing or extra:
            raise ValueError(f"{where}: names differ from params' (missing {missing}, unexpected {extra})")
        return [grads[n] for n in names]

    def step(self, grads, grad_scale=None, found_inf=None) -> None:
        """Update every param in place from `grads` (same structure as params). Checks everything first.

        A training loop that passes the very grad arrays of the previous step (refilled in place) skips the per-array
        checks and conversions: they were done on those objects, and the optimizer holds them, so they cannot be
        freed or resized meanwhile. Calls from several threads run one at a time.

        AMP, as torch's fused optimizers: with `grad_scale` (a number or one-element array) the update sees each
        gradient divided by it (the gradient arrays are left as they are); when `found_inf` is non-zero, or, not
        given, when any gradient holds inf or NaN (found by a fused pass over the gradients), the whole step is
        skipped: params, state and step counts stay as they were. With `max_grad_norm` (constructor), the gradients
        are clipped by their total `norm_type`-norm over every group (torch.nn.utils.clip_grad_norm_'s coefficient,
        of the unscaled gradients), folded into the update: one pass over the gradients for the norm, then the
        update; the gradient arrays are not written.
        """
        transform = grad_scale is not None or found_inf is not None or self.max_grad_norm is not None
        if self.capturable and transform:
            raise ValueError("capturable=True: step() takes no grad_scale or found_inf (the skip decision would be "
                             "read on the host)")
        with self._lock:
            self.last_step_skipped = False   # True after a step AMP skipped (read by fastopt.GradScaler)
            if transform:
                self._step(grads, (_scalar_arg(grad_scale, "grad_scale"), _scalar_arg(found_inf, "found_inf")))
            elif not self._repeat_step(grads):
                self._step(grads)

    def _repeat_step(self, grads) -> bool:
        """The training loop's usual step, checked in a few identity tests: one group, the same params, grads and
        hyperparameter objects as the last step, one prepared update. False (nothing done) when anything differs."""
        if len(self._groups) != 1 or len(self.param_groups) != 1 or type(grads) not in (list, tuple):
            return False
        record, group = self._groups[0], self.param_groups[0]
        updates, params, key = record.updates, group.get("params"), record.hyper_key
        if updates is None or len(updates[1]) != 1 or record.names is not None or type(params) is not list \
                or len(params) != len(record.params) or len(grads) != len(record.grads) or key is None:
            return False
        try:
            values = self._hyper_getter(group)
        except KeyError:
            return False
        if not (all(map(operator.is_, values, key)) and all(map(operator.is_, grads, record.grads))
                and all(map(operator.is_, params, record.params))) or list in map(type, values):
            return False
        after = _run(updates[1][0][1], _host(self.spec, record.host[0], record.hyper), record.grad_views,
                     record.hyper, record.base[0] + record.taken + 1)
        if after is not None:
            record.host = [after] * len(record.host)
        record.taken += 1
        return True

    def _step(self, grads, transform=None, decided=None) -> None:
        """`transform`: (grad_scale, found_inf) as step() takes them. `decided`: (grad_scale, clipping factor) already
        settled by the caller, which reduced the gradients itself (fastopt.distributed: across ranks)."""
        groups = self._groups
        if len(self.param_groups) != len(groups):
            raise ValueError("param_groups: groups were added or removed by hand; use add_param_group")
        # 1. Check everything for every group; change nothing.
        layouts = [self._followed_params(i, group, record)
                   for i, (group, record) in enumerate(zip(self.param_groups, groups))]
        per_group = self._grads_per_group(grads, [r.names if lay is None else lay[4]
                                                  for r, lay in zip(groups, layouts)])
        work = []
        as_array = self.backend.as_array
        for index, (group, record, layout, group_grads) in enumerate(zip(self.param_groups, groups, layouts,
                                                                          per_group)):
            hyper = self._validated_hyper(group, record)
            if layout is None and len(group_grads) == len(record.grads) \
                    and all(map(operator.is_, group_grads, record.grads)):
                grad_views = None  # the very arrays checked last step, and held since
            else:
                params, labels, where = (record.params, record.labels, record.where) if layout is None \
                    else (layout[0], layout[2], layout[3])
                to = "grads" if len(per_group) == 1 else f"grads[{index}]"
                functional.check_grads(group_grads, params, labels,
                                       lambda i, labels=labels, where=where, to=to: to + labels[i][len(where):])
                grad_views = list(map(as_array, group_grads))
            work.append((layout, hyper, group_grads, grad_views))
        # 2. Prepare every group (state for new params or slots, plans) without committing anything.
        prepared = [self._prepared(record, layout, hyper) for record, (layout, hyper, _, _) in zip(groups, work)]
        # 3. Run every group (after the gradient transform's reductions, which may skip the whole step).
        grad_scale = grad_factor = None
        if decided is not None:
            grad_scale, grad_factor = decided
        elif transform is not None:
            every = [(update, record.grad_views if grad_views is None else grad_views, indices, len(updates))
                     for record, (_, _, (_, updates)), (_, _, _, grad_views) in zip(groups, prepared, work)
                     for indices, update in updates]
            grad_scale, found_inf = transform
            go, grad_factor = self._grad_transform(every, grad_scale, found_inf)
            self.last_step_skipped = not go
            if not go:
                return   # nothing ran, nothing is committed: params, state and step counts stay as they were
        hosts = []  # per group, per param: the host state values after this step (None without host state)
        for record, (_, steps, (_, updates)), (layout, hyper, _, grad_views) in zip(groups, prepared, work):
            views = record.grad_views if grad_views is None else grad_views
            host = _host_layout(record, layout)
            if steps is None and len(updates) == 1:  # the usual case: one update, one step count
                after = _run(updates[0][1], _host(self.spec, host[0], hyper[1]), views, hyper[1],
                             record.base[0] + record.taken + 1, transform=(grad_scale, grad_factor))
                hosts.append([after] * len(host))
                continue
            steps = record.steps if steps is None else steps
            hosts.append([None] * len(host))
            for indices, update in updates:
                after = _run(update, _host(self.spec, host[indices[0]], hyper[1]),
                             views if len(updates) == 1 else [views[i] for i in indices], hyper[1],
                             steps[indices[0]] + 1, transform=(grad_scale, grad_factor))
                for i in indices:
                    hosts[-1][i] = after
        # 4. The step ran: remember what it checked and built.
        for group, record, (state, steps, updates), (layout, hyper, group_grads, grad_views), host_after in zip(
                self.param_groups, groups, prepared, work, hosts):
            if layout is not None:
                record.params, record.views, record.labels, _, record.names = layout
                if type(group["params"]) is not list:
                    group["params"] = list(layout[0])
                if record.names is None:
                    group.pop("param_names", None)
                else:
                    group["param_names"] = record.names
            if steps is not None:
                record.steps = steps
            record.taken += 1
            record.state, record.updates = state, updates
            record.host = host_after
            record.hyper_key, record.hyper, record.flags = hyper
            if grad_views is not None:
                record.grads, record.grad_views = tuple(group_grads), grad_views

    def _grad_transform(self, every, grad_scale, found_inf):
        """(run the step?, clipping coefficient or None) from the reductions over every group's gradients."""
        def reduce(op, power=2.0):
            values = []
            for update, views, indices, count in every:
                values += update.reduce_grads(views if count == 1 else [views[i] for i in indices], op, power,
                                              grad_scale)
            return values

        if found_inf is not None:
            if found_inf != 0:
                return False, None
        elif grad_scale is not None:
            if self.max_grad_norm is None or self.norm_type != 2:
                if reference.reduce_group(reduce("nonfinite"), "nonfinite") != 0:
                    return False, None
            else:
                # One pass serves both: the sum of squares (float64) is finite exactly when no gradient holds inf or
                # NaN, unless it overflowed; only then count the non-finite values.
                squares = reduce("sumsq")
                total = reference.reduce_group(squares, "sumsq")
                if not math.isfinite(total) and reference.reduce_group(reduce("nonfinite"), "nonfinite") != 0:
                    return False, None
                return True, self._clip_coefficient(clip.norm_from(total, 2.0))
        if self.max_grad_norm is None:
            return True, None
        op, power = clip.reduction_for(self.norm_type)
        return True, self._clip_coefficient(clip.total_norm_of(reduce(op, power), self.norm_type))

    def _clip_coefficient(self, total_norm: float) -> float:
        dtype = self.backend.state_dtype(self._groups[0].views[0].dtype)
        return reference.clip_coefficient(total_norm, self.max_grad_norm, dtype)

    def _followed_params(self, index, group, record):
        """None when param_groups[index]["params"] still holds the arrays of the last step (a cheap identity check);
        else the checked new layout (params, views, labels, where, names)."""
        params = group.get("params")
        if type(params) is list and len(params) == len(record.params) \
                and all(map(operator.is_, params, record.params)):
            return None
        where = record.where
        arrays, names, labels = _split_params(params, where)
        if not arrays:
            raise ValueError(f"{where}: a param group needs at least one array")
        _, views = self._checked_views(arrays, labels, where, index)
        return tuple(arrays), views, labels, where, names

    def _validated_hyper(self, group, record):
        """(raw values, normalized hyper, flags): re-validated only when a value in param_groups changed."""
        try:
            key = self._hyper_getter(group)
        except KeyError as error:
            raise KeyError(f"param_groups: hyperparameter {error.args[0]!r} was removed from a group") from None
        if list in map(type, key):  # a list can be edited in place: compare its contents
            key = tuple(tuple(v) if type(v) is list else v for v in key)
        previous = record.hyper_key  # identity, not ==: True == 1 and 0.1 == Fraction(1, 10)
        if previous is not None and all(map(operator.is_, key, previous)):
            return previous, record.hyper, record.flags
        raw = dict(zip(self._hyper_names, key))
        self.spec.validate(raw)  # param_groups are live: check edits
        hyper = self.spec.normalize(raw)
        return key, hyper, self.spec.flags(hyper)

    def _prepared(self, record, layout, hyper):
        """(state, steps or None when unchanged, updates) for this step: the current ones, or new ones (nothing is
        committed here)."""
        _, hyper, flags = hyper
        if layout is None and record.updates is not None and hyper is record.hyper:
            return record.state, None, record.updates  # nothing changed since the last step
        if self.capturable and record.updates is not None:
            record.steps = self._device_steps(record)   # graph replays counted on the device only
        state, steps, views = record.state, None, record.views
        rebuild = record.updates is None or record.updates[0] != flags
        if layout is not None:  # params replaced or appended: carry state over by identity, as torch keys it
            params, views = layout[0], layout[1]
            old = {id(p): i for i, p in enumerate(record.params)}
            kept = [old.get(id(p)) for p in params]
            current = record.steps
            steps = [0 if j is None else current[j] for j in kept]
            state = {}
            for slot in self.spec.slots:
                if slot.name not in record.state:
                    continue
                arrays = functional.slot_arrays(self.backend, views, slot, hyper)
                for target, j in zip(arrays, kept):
                    if j is not None and target is not None and record.state[slot.name][j] is not None:
                        target[...] = record.state[slot.name][j]
                state[slot.name] = arrays
            rebuild = True
        missing = [s for s in self.spec.active_slots(hyper) if s.name not in state]
        if missing:
            state = dict(state)
            for slot in missing:
                state[slot.name] = functional.slot_arrays(self.backend, views, slot, hyper)
                if slot.name == self.spec.first_step_slot:
                    steps = [0] * len(views)  # torch's SGD: the step that creates the buffer is a first step
            rebuild = True
        if not rebuild:
            return state, steps, record.updates
        updates = []
        keys = record.steps if steps is None else steps
        record_steps = keys   # capturable: each device step count starts from its param's (before this step)
        if self.spec.host_state:  # params that differ in host state values run as separate updates, like steps
            keys = list(zip(keys, _host_layout(record, layout)))
        for indices in functional.indices_by(keys).values():
            subset = {name: [arrays[i] for i in indices] for name, arrays in state.items()}
            updates.append((indices, functional.FusedUpdate(
                self.spec, [views[i] for i in indices], subset, hyper, self.backend,
                capturable_step=record_steps[indices[0]] if self.capturable else None)))
        if steps is None:
            steps = record.steps
        return state, steps, (flags, updates)

    # ---- state_dict ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """torch's layout with NumPy copies inside: {"state": {index: {"step", slots...}}, "param_groups": [...]}.

        As in torch, SGD saves no step (its momentum buffer's presence says whether the first step was taken)."""
        with self._lock:
            state, groups, offset = {}, [], 0
            for group, record in zip(self.param_groups, self._groups):
                if self.capturable:   # graph replays counted their steps on the device only
                    record.steps = self._device_steps(record)
                n = len(record.params)
                saved = {k: (list(v) if isinstance(v, list) else v) for k, v in group.items() if k != "params"}
                saved["params"] = list(range(offset, offset + n))
                groups.append(saved)
                for i in range(n):
                    entry = {"step": record.steps[i]} if self.spec.counts_steps else {}
                    if record.steps[i] == 0 and not record.state:
                        continue  # like torch: no entry until the first step
                    for name, arrays in record.state.items():
                        if arrays[i] is not None:   # shaped state: None where this param keeps no such slot
                            entry[name] = self.backend.to_numpy(arrays[i])
                    if record.host[i] is not None:  # host state: plain floats under the oracle's names
                        entry.update(zip((h.name for h in self.spec.host_state), record.host[i]))
                    if entry:
                        state[offset + i] = entry
                offset += n
            return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters, steps and state saved by `state_dict` (any backend), or by torch.optim and
        converted to NumPy (torch tensors are read through np.asarray; `step` may be a tensor). Checks everything
        first: damaged state (a slot missing after steps were taken, another optimizer's slots, a step that is not a
        whole number) is refused and nothing changes."""
        with self._lock:
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError("state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_state, dict):
            raise TypeError(f"state_dict['state']: expected a dict index -> entry, got {type(saved_state).__name__}")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict: has {len(saved_groups)} param groups, this optimizer "
                             f"{len(self.param_groups)}")
        listed = {key for saved in saved_groups if isinstance(saved, dict) for key in saved.get("params", ())}
        orphans = sorted(map(repr, set(saved_state) - listed))
        if orphans:  # e.g. keys turned into strings by JSON: the state would otherwise be dropped silently
            raise ValueError(f"state_dict: state has entries {orphans[:5]} that no param group lists in 'params' "
                             f"(its params are {sorted(map(repr, listed))[:5]}...)")
        known = {s.name for s in self.spec.slots} | {h.name for h in self.spec.host_state}
        new = []
        for index, (saved, record) in enumerate(zip(saved_groups, self._groups)):
            n = len(record.params)
            if not isinstance(saved, dict) or len(saved.get("params", ())) != n:
                got = len(saved.get("params", ())) if isinstance(saved, dict) else saved
                raise ValueError(f"state_dict: param group {index} has {got} params, this optimizer's has {n}")
            hyper = {h.name: saved.get(h.name, self.param_groups[index][h.name]) for h in self.spec.hypers}
            if isinstance(hyper.get("betas"), list):
                hyper["betas"] = tuple(hyper["betas"])
            self.spec.validate(hyper)
            active = self.spec.active_slots(hyper)
            steps, slots, hosts = [], {}, []
            for i, key in enumerate(saved["params"]):
                entry = saved_state.get(key, {})
                if not isinstance(entry, dict):
                    raise TypeError(f"state_dict: state[{key!r}] must be a dict, got {type(entry).__name__}")
                unknown = sorted(str(k) for k in entry if k != "step" and k not in known)
                if unknown:
                    raise ValueError(f"state_dict: state[{key!r}] has entries {unknown} that {self.spec.name} does "
                                     f"not keep (expected {sorted(known)}): the state of another optimizer?")
                shapes = {s.name: s.shape_for(record.views[i].shape, hyper) for s in active}
                present = {s.name for s in active if entry.get(s.name) is not None}
                stray = sorted(name for name in present if shapes[name] is None)
                if stray:   # shaped state (fastopt.specs.Slot.shape): a slot this param does not keep
                    raise ValueError(f"state_dict: state[{key!r}] has {stray}, which {self.spec.name} does not keep "
                                     f"for a param of shape {tuple(record.views[i].shape)}")
                if self.spec.counts_steps:
                    step = self._checked_step(entry.get("step", 0), key)
                    lost = [s.name for s in active if s.name not in present and shapes[s.name] is not None]
                    if step > 0 and lost:
                        raise ValueError(f"state_dict: state[{key!r}] has step {step} but no {lost}: damaged state "
                                         "(refusing to restart them from zeros)")
                else:
                    if "step" in entry:
                        self._checked_step(entry["step"], key)  # an older fastopt checkpoint: checked, not needed
                    step = 1 if self.spec.first_step_slot in present else 0  # torch: the buffer says it all
                steps.append(step)
                hosts.append(self._checked_host(entry, key, step))
                for name in present:
                    slots.setdefault(name, [None] * n)[i] = self._checked_array(
                        entry[name], record.views[i], key, name, shapes[name])
            for name, arrays in slots.items():
                slot = next(s for s in active if s.name == name)
                if any(a is None and slot.shape_for(v.shape, hyper) is not None
                       for a, v in zip(arrays, record.views)):
                    raise ValueError(f"state_dict: slot {name!r} is saved for some params of group {index} "
                                     "but not for all")
            new.append((hyper, steps, slots, hosts))
        for group, record, (hyper, steps, slots, hosts) in zip(self.param_groups, self._groups, new):
            group.update(hyper)  # everything checked: now change things
            record.steps = steps
            record.host = hosts
            state = {}
            for name, values in slots.items():
                slot = next(s for s in self.spec.slots if s.name == name)
                state[name] = functional.slot_arrays(self.backend, record.views, slot, hyper)
                for target, source in zip(state[name], values):
                    if target is not None:
                        self.backend.copy_into(target, source)
            record.state = state
            record.updates = None
            record.hyper_key = None

    def _checked_host(self, entry, key, step):
        """This param's saved host state values (a tuple of floats), checked; None when none is saved before its
        first step (they start from their initial values then)."""
        names = [h.name for h in self.spec.host_state]
        saved = [n for n in names if entry.get(n) is not None]
        if not names or (not saved and step == 0):
            return None
        if len(saved) != len(names):
            lost = [n for n in names if n not in saved]
            raise ValueError(f"state_dict: state[{key!r}] has step {step} but no {lost}: damaged state (refusing to "
                             "restart them from their initial values)")
        return tuple(functional.host_float(entry[n], f"state_dict: state[{key!r}][{n!r}]") for n in names)

    @staticmethod
    def _checked_step(step, key) -> int:
        value = step
        try:
            if hasattr(value, "item"):  # NumPy scalar or 0-d array, torch tensor
                value = value.item()
        except (ValueError, RuntimeError):  # more than one element
            pass
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if ok and isinstance(value, float):
            ok = math.isfinite(value)
        if not ok or value < 0 or value > _MAX_STEP or value != int(value):
            raise ValueError(f"state_dict: state[{key!r}]['step'] must be a whole number in [0, 2**53], "
                             f"got {step!r}")
        return int(value)

    def _checked_array(self, value, param, key, name, shape=None):
        import numpy as np

        try:
            array = np.asarray(value)
        except Exception as error:  # noqa: BLE001 - e.g. a torch tensor on a GPU or one that requires grad
            raise TypeError(f"state_dict: state[{key!r}][{name!r}] cannot be read as a NumPy array "
                            f"({type(error).__name__}: {error}); convert it first, e.g. t.detach().cpu().numpy()"
                            ) from None
        want = tuple(param.shape) if shape is None else tuple(shape)
        if array.shape != want:
            raise ValueError(f"state_dict: state[{key!r}][{name!r}] has shape {array.shape}, expected {want} "
                             f"(the param has {tuple(param.shape)})")
        if array.dtype.kind != "f":
            raise TypeError(f"state_dict: state[{key!r}][{name!r}] must be floating point, got {array.dtype}")
        return array.astype(self.backend.state_dtype(param.dtype), copy=False)

    # ---- copies ---------------------------------------------------------------------------------------------------

    def __getstate__(self):
        # Plans hold raw addresses and the lock cannot be copied: a copy rebuilds them. The backend travels by name,
        # and views are re-made from the copy's own params.
        with self._lock:
            groups = [(r.where, r.params, r.names, r.labels, r.state,
                       self._device_steps(r) if self.capturable else r.steps) for r in self._groups]
            return {"defaults": self.defaults, "requested": self._requested_backend, "param_groups": self.param_groups,
                    "backend": self.backend.name, "groups": groups, "host": [list(r.host) for r in self._groups],
                    "clip": (self.max_grad_norm, self.norm_type), "capturable": self.capturable}

    def __setstate__(self, saved):
        self.max_grad_norm, self.norm_type = saved.get("clip", (None, 2.0))
        self.defaults = saved["defaults"]
        self._requested_backend = saved["requested"]
        self.param_groups = saved["param_groups"]
        self.backend = dispatch.get_backend(saved["backend"])
        if self.backend.unavailable_reason() and saved["requested"] is None:  # e.g. unpickled where Numba is missing
            self.backend = dispatch.choose_backend([p for g in saved["groups"] for p in g[1]])
        self._lock = threading.RLock()
        self._init_hyper_names()
        self._groups = []
        for where, params, names, labels, state, steps in saved["groups"]:
            record = _Group(where, params, names, labels, [self.backend.as_array(p) for p in params])
            record.steps = list(steps)
            slots = {s.name: s for s in self.spec.slots}
            for name, arrays in state.items():  # one aligned buffer per slot again, as the original had
                shapes = None if slots[name].shape is None else [None if a is None else a.shape for a in arrays]
                record.state[name] = functional.state_arrays(self.backend, record.views, 0.0, shapes)
                for target, source in zip(record.state[name], arrays):
                    if target is not None:
                        target[...] = source
            self._groups.append(record)
        for record, host in zip(self._groups, saved.get("host", ())):  # host state values, per param
            record.host = list(host)
        # capturable: the copy gets its own device step count and buffers (from the saved steps) at its first step
        self.capturable = bool(saved.get("capturable", False)) and self.backend.name == "cuda"

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        backend = self.backend.name if self.backend else None
        return f"{type(self).__name__}({hyper}, backend={backend!r}, groups={len(self.param_groups)})"


def _host(spec, values, hyper):
    """A param's host state values before this step: its saved ones, or before its first step the initial ones (taken
    with this step's hyperparameters, as torch initialises state at the first step). None without host state."""
    if values is not None or spec.advance is None:
        return values
    return tuple(float(h.init(hyper)) for h in spec.host_state)


def _run(update, host, *args, transform=(None, None)):
    """update.run(*args), given the host state values when the spec keeps some and the gradient transform (AMP's
    grad_scale, clipping's factor) when there is one; returns the host values after the step."""
    extra = {} if host is None else {"host": host}
    if transform[0] is not None or transform[1] is not None:
        extra["grad_scale"], extra["grad_factor"] = transform
    return update.run(*args, **extra)


def _host_layout(record, layout) -> list:
    """record.host for the params of `layout` (None: unchanged): carried over by identity, None for a new param."""
    if layout is None:
        return record.host
    old = {id(p): i for i, p in enumerate(record.params)}
    return [None if j is None else record.host[j] for j in (old.get(id(p)) for p in layout[0])]


def _scalar_arg(value, name: str):
    """A float from a number or a one-element array (NumPy, CuPy or torch: read once, on the host); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a number or a one-element array, got {value!r}")
    if isinstance(value, numbers.Real):
        out = float(value)
    else:
        size = getattr(value, "size", None)
        size = size() if callable(size) and not isinstance(size, int) else size   # torch: size() is a method
        numel = getattr(value, "numel", None)
        count = numel() if callable(numel) else size
        if count != 1:
            raise TypeError(f"{name}: expected a number or a one-element array, got {type(value).__name__}"
                            f"{'' if count is None else f' of {count} elements'}")
        item = value.item() if hasattr(value, "item") else value
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise TypeError(f"{name}: expected a real number, got {item!r}")
        out = float(item)
    if name == "grad_scale" and not (math.isfinite(out) and out > 0):
        raise ValueError(f"grad_scale: expected a finite number > 0, got {out!r}")
    return out


def _make_class(class_name: str, spec: OptimizerSpec, overrides: dict):
    """A public class with a real signature from the spec: params, then the hyperparameters in torch's order
    (positional allowed, as in torch: `SGD(params, 0.1)`), `maximize` and `backend` keyword-only."""
    defaults = {**spec.defaults, **overrides}
    positional = [h.name for h in spec.hypers if h.name != "maximize"]
    keyword = [h.name for h in spec.hypers if h.name == "maximize"]
    P = inspect.Parameter
    signature = inspect.Signature(
        [P("self", P.POSITIONAL_OR_KEYWORD), P("params", P.POSITIONAL_OR_KEYWORD)]
        + [P(n, P.POSITIONAL_OR_KEYWORD, default=defaults[n]) for n in positional]
        + [P(n, P.KEYWORD_ONLY, default=defaults[n]) for n in keyword]
        + [P("max_grad_norm", P.KEYWORD_ONLY, default=None), P("norm_type", P.KEYWORD_ONLY, default=2.0),
           P("capturable", P.KEYWORD_ONLY, default=False)]
        + [P("backend", P.KEYWORD_ONLY, default=None)])

    def __init__(self, params, *args, backend=None, max_grad_norm=None, norm_type=2.0, capturable=False,
                 **hyperparameters):
        if len(args) > len(positional):
            raise TypeError(f"{class_name}() takes at most {len(positional) + 1} positional arguments "
                            f"(params, {', '.join(positional)}); got {len(args) + 1}")
        for name, value in zip(positional, args):
            if name in hyperparameters:
                raise TypeError(f"{class_name}() got multiple values for argument {name!r}")
            hyperparameters[name] = value
        Optimizer.__init__(self, params, backend=backend, max_grad_norm=max_grad_norm, norm_type=norm_type,
                           capturable=capturable, **hyperparameters)

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{class_name}.__init__"
    doc = (f"{class_name}: fused {spec.name} with torch.optim's semantics.\n\n"
           f"{class_name}{str(signature).replace('(self, ', '(')}\n\n"
           "max_grad_norm, norm_type: gradient clipping by the total norm, folded into the update (Optimizer.step)."
           "\n\n"
           "capturable=False (keyword): True keeps the step count, hyperparameters and kernel scalars in device "
           "memory (cuda backend), so a step can be captured in a CUDA graph; see Optimizer.write_hyperparameters."
           "\n\n"
           f"State per param: {'step, ' if spec.counts_steps else ''}"
           f"{', '.join(s.name for s in spec.slots)} (each only when used).")
    __init__.__doc__ = doc
    # An optimizer with a mode switch (fastopt.modes, e.g. schedule-free) also gets train() and eval().
    bases = (ModeSwitched, Optimizer) if spec.name in MODE_SWITCHES else (Optimizer,)
    return type(class_name, bases, {"spec": spec, "default_overrides": overrides, "__doc__": doc,
                                           "__init__": __init__, "__module__": __name__})


# Every public class, by lower-case name: the spec names ("adam", ...) and the shorthands ("momentum", "nesterov").
OPTIMIZERS: dict[str, type] = {name: _make_class(spec.class_name, spec, {}) for name, spec in SPECS.items()}
OPTIMIZERS.update({name.lower(): _make_class(name, spec, overrides) for name, (spec, overrides) in SHORTHANDS.items()})
globals().update({cls.__name__: cls for cls in OPTIMIZERS.values()})
