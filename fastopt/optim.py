"""The torch-style classes: param groups, state and state_dict. No arithmetic here: it all goes through
`fastopt.functional`.

    opt = fastopt.Adam(params, lr=1e-3)      # params: list of arrays, dict name -> array, or list of group dicts
    opt.step(grads)                          # grads in the same structure; params updated in place
"""

from __future__ import annotations

import numbers
import operator
from typing import ClassVar

from fastopt import dispatch, functional
from fastopt.specs import SHORTHANDS, SPECS, OptimizerSpec


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _split_params(params, where="params"):
    """(arrays, names or None) from a list/tuple of arrays or a dict name -> array."""
    if isinstance(params, dict):
        names = list(params)
        arrays = list(params.values())
        labels = [f"{where}[{n!r}]" for n in names]
    elif isinstance(params, (list, tuple)):
        names, arrays = None, list(params)
        labels = [f"{where}[{i}]" for i in range(len(arrays))]
    else:
        raise TypeError(f"{where}: expected a list of arrays, a dict name -> array, or a list of param-group dicts; "
                        f"got {type(params).__name__}")
    for label, a in zip(labels, arrays):
        if not _is_array(a):
            raise TypeError(f"{label}: expected an array, got {type(a).__name__}")
    return arrays, names, labels


class Optimizer:
    """Base class: `spec` (an OptimizerSpec) says which optimizer; `default_overrides` change its defaults."""

    spec: OptimizerSpec
    default_overrides: ClassVar[dict] = {}

    def __init__(self, params, backend=None, **hyperparameters):
        self.defaults = functional.with_defaults(self.spec, {**self.default_overrides, **hyperparameters})
        self._requested_backend = backend
        self.param_groups: list[dict] = []
        self._wheres: list[str] = []         # per group: how its params are named in error messages
        self._labels: list[list[str]] = []   # per group: the name of each param in error messages
        self._arrays: list[list] = []        # per group: the backend's view of each param
        self._state: list[dict] = []         # per group: slot -> list of arrays (absent until the first step)
        self._steps: list[list[int]] = []    # per group: steps taken by each param
        self._updates: list = []             # per group: (flags, [(indices, FusedUpdate)]) or None
        self._checked_grads: list = []       # per group: (the grads last checked, the backend's views) or None
        self.backend = None
        if isinstance(params, (list, tuple)) and params and all(isinstance(g, dict) for g in params):
            for group in params:
                self.add_param_group(group)
        elif isinstance(params, (list, tuple)) and any(isinstance(g, dict) for g in params):
            raise TypeError("params: expected either arrays or param-group dicts, not a mix")
        else:
            self._add_group({"params": params}, "params")

    # ---- param groups ---------------------------------------------------------------------------------------------

    def add_param_group(self, group: dict) -> None:
        """Add a group: a dict with "params" (list or dict of arrays) and any hyperparameters to override."""
        self._add_group(group, f"param_groups[{len(self.param_groups)}]['params']")

    def _add_group(self, group: dict, where: str) -> None:
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("param group: expected a dict with a 'params' entry")
        arrays, names, labels = _split_params(group["params"], where)
        if not arrays:
            raise ValueError(f"{where}: a param group needs at least one array")
        new = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self.spec.validate(new)
        backend = dispatch.choose_backend(arrays, self._requested_backend)
        if self.backend is not None and backend is not self.backend:
            raise TypeError(f"{where}: these arrays need the {backend.name} backend, the optimizer uses "
                            f"{self.backend.name}; use one optimizer per kind of array")
        views = [backend.as_array(a) for a in arrays]  # e.g. CuPy views of torch CUDA tensors
        functional.check_params([v for vs in self._arrays for v in vs] + views, backend,
                                [label for ls in self._labels for label in ls] + labels)
        self.backend = backend
        new["params"] = arrays
        if names is not None:
            new["param_names"] = names
        self.param_groups.append(new)
        self._wheres.append(where)
        self._labels.append(labels)
        self._arrays.append(views)
        self._state.append({})
        self._steps.append([0] * len(arrays))
        self._updates.append(None)
        self._checked_grads.append(None)

    def _hyper(self, group: dict) -> dict:
        return {h.name: group[h.name] for h in self.spec.hypers}

    # ---- the step -------------------------------------------------------------------------------------------------

    def _grads_per_group(self, grads) -> list[list]:
        if len(self.param_groups) == 1:
            return [self._match(grads, 0, "grads")]
        if not isinstance(grads, (list, tuple)) or len(grads) != len(self.param_groups):
            raise TypeError(f"grads: with {len(self.param_groups)} param groups, expected a list with one entry "
                            "per group (each a list or dict like that group's params)")
        return [self._match(g, i, f"grads[{i}]") for i, g in enumerate(grads)]

    def _match(self, grads, index: int, where: str) -> list:
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

    def step(self, grads) -> None:
        """Update every param in place from `grads` (same structure as params). Checks everything first.

        A training loop that passes the very grad arrays of the previous step (refilled in place) skips the per-array
        checks and conversions: they were done on those objects, and the optimizer holds them, so they cannot be
        freed or resized meanwhile. This keeps host time per step to a few us per hundred tensors.
        """
        per_group = self._grads_per_group(grads)
        fresh = []  # (group index, grads) of the groups whose grads are not the arrays checked last step
        for index, (group, group_grads) in enumerate(zip(self.param_groups, per_group)):
            self.spec.validate(self._hyper(group))  # param_groups are live: check edits
            checked = self._checked_grads[index]
            if checked is not None and len(checked[0]) == len(group_grads) \
                    and all(map(operator.is_, group_grads, checked[0])):
                continue
            labels, where = self._labels[index], self._wheres[index]
            grads_where = "grads" if len(per_group) == 1 else f"grads[{index}]"
            functional.check_grads(group_grads, group["params"], labels,
                                   lambda i, labels=labels, where=where, to=grads_where: to + labels[i][len(where):])
            fresh.append((index, group_grads))
        for index, group_grads in fresh:  # everything checked: now remember them
            self._checked_grads[index] = (list(group_grads), [self.backend.as_array(g) for g in group_grads])
        for index in range(len(self.param_groups)):
            self._step_group(index, self._checked_grads[index][1])

    def _step_group(self, index: int, grads: list) -> None:
        hyper = self._hyper(self.param_groups[index])
        flags = self.spec.flags(hyper)
        cached = self._updates[index]
        if cached is None or cached[0] != flags:
            self._allocate_missing_state(index, hyper)
            cached = self._updates[index] = (flags, self._build_updates(index, hyper))
        steps = self._steps[index]
        for indices, update in cached[1]:
            step = steps[indices[0]] + 1
            update.run(grads if len(cached[1]) == 1 else [grads[i] for i in indices], hyper, step)
            for i in indices:
                steps[i] = step

    def _allocate_missing_state(self, index: int, hyper: dict) -> None:
        state = self._state[index]
        for slot in self.spec.active_slots(hyper):
            if slot.name not in state:
                state[slot.name] = functional.state_arrays(self.backend, self._arrays[index], slot.init(hyper))

    def _build_updates(self, index: int, hyper: dict):
        """One FusedUpdate per distinct step count (params normally share one: then a single update)."""
        by_step = functional.indices_by(self._steps[index])
        arrays, state = self._arrays[index], self._state[index]
        updates = []
        for indices in by_step.values():
            subset_state = {name: [arrs[i] for i in indices] for name, arrs in state.items()}
            update = functional.FusedUpdate(self.spec, [arrays[i] for i in indices], subset_state, hyper,
                                            self.backend)
            updates.append((indices, update))
        return updates

    # ---- state_dict ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """torch's layout with NumPy copies inside: {"state": {index: {"step", slots...}}, "param_groups": [...]}."""
        state, groups, offset = {}, [], 0
        for index, group in enumerate(self.param_groups):
            n = len(group["params"])
            saved = {k: (list(v) if isinstance(v, list) else v) for k, v in group.items() if k != "params"}
            saved["params"] = list(range(offset, offset + n))
            groups.append(saved)
            for i in range(n):
                if self._steps[index][i] == 0 and not self._state[index]:
                    continue  # like torch: no entry until the first step
                entry = {"step": self._steps[index][i]}
                for name, arrays in self._state[index].items():
                    entry[name] = self.backend.to_numpy(arrays[i])
                state[offset + i] = entry
            offset += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters, steps and state saved by `state_dict` (any backend). Checks everything first."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError("state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict: has {len(saved_groups)} param groups, this optimizer "
                             f"{len(self.param_groups)}")
        new_hypers, new_steps, new_state, offset = [], [], [], 0
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            n = len(group["params"])
            if len(saved.get("params", ())) != n:
                raise ValueError(f"state_dict: param group {index} has {len(saved.get('params', ()))} params, "
                                 f"this optimizer's has {n}")
            hyper = {h.name: saved.get(h.name, group[h.name]) for h in self.spec.hypers}
            if isinstance(hyper.get("betas"), list):
                hyper["betas"] = tuple(hyper["betas"])
            self.spec.validate(hyper)
            steps, slots = [], {}
            for i, key in enumerate(saved["params"]):
                entry = state_dict["state"].get(key, {})
                steps.append(self._checked_step(entry.get("step", 0), key))
                for slot in self.spec.active_slots(hyper):
                    if slot.name in entry:
                        slots.setdefault(slot.name, [None] * n)[i] = self._checked_array(
                            entry[slot.name], self._arrays[index][i], key, slot.name)
            for name, arrays in slots.items():
                if any(a is None for a in arrays):
                    raise ValueError(f"state_dict: slot {name!r} is saved for some params of group {index} "
                                     "but not for all")
            new_hypers.append(hyper)
            new_steps.append(steps)
            new_state.append(slots)
            offset += n
        for index, group in enumerate(self.param_groups):  # everything checked: now change things
            group.update(new_hypers[index])
            self._steps[index] = new_steps[index]
            arrays = self._arrays[index]
            state = {}
            for name, values in new_state[index].items():
                state[name] = functional.state_arrays(self.backend, arrays, 0.0)
                for target, source in zip(state[name], values):
                    self.backend.copy_into(target, source)
            self._state[index] = state
            self._updates[index] = None

    @staticmethod
    def _checked_step(step, key) -> int:
        value = step.item() if hasattr(step, "item") else step
        if not isinstance(value, numbers.Real) or value < 0 or value != int(value):
            raise ValueError(f"state_dict: state[{key}]['step'] must be a whole number >= 0, got {step!r}")
        return int(value)

    def _checked_array(self, value, param, key, name):
        import numpy as np

        array = np.asarray(value)
        if array.shape != tuple(param.shape):
            raise ValueError(f"state_dict: state[{key}][{name!r}] has shape {array.shape}, "
                             f"the param has {tuple(param.shape)}")
        if array.dtype.kind != "f":
            raise TypeError(f"state_dict: state[{key}][{name!r}] must be floating point, got {array.dtype}")
        return array.astype(self.backend.state_dtype(param.dtype), copy=False)

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        backend = self.backend.name if self.backend else None
        return f"{type(self).__name__}({hyper}, backend={backend!r}, groups={len(self.param_groups)})"


def _make_class(class_name: str, spec: OptimizerSpec, overrides: dict):
    defaults = {**spec.defaults, **overrides}
    doc = (f"{class_name}: fused {spec.name} with torch.optim's semantics.\n\n"
           f"{class_name}(params, *, backend=None, " + ", ".join(f"{k}={v!r}" for k, v in defaults.items()) + ")\n"
           f"State per param: step, {', '.join(s.name for s in spec.slots)} (each only when used).")
    return type(class_name, (Optimizer,), {"spec": spec, "default_overrides": overrides, "__doc__": doc,
                                           "__module__": __name__})


# Every public class, by lower-case name: the spec names ("adam", ...) and the shorthands ("momentum", "nesterov").
OPTIMIZERS: dict[str, type] = {name: _make_class(spec.class_name, spec, {}) for name, spec in SPECS.items()}
OPTIMIZERS.update({name.lower(): _make_class(name, spec, overrides) for name, (spec, overrides) in SHORTHANDS.items()})
globals().update({cls.__name__: cls for cls in OPTIMIZERS.values()})
