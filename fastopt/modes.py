"""Optional mode switches: optimizers whose params sit at one of two points (schedule-free's train()/eval()).

A schedule-free optimizer steps from the gradient-evaluation point y but evaluates at the average x; both follow from
the params and one state slot (z), so `opt.eval()` moves every param from y to x and `opt.train()` back, each one fused
pass over the params and that slot. A spec declares this with `register_mode_switch(spec_name, ModeSwitch(...))`; the
classes (fastopt/optim.py) then get `train()` and `eval()`, keep the mode per param group under `ModeSwitch.key`
(saved by `state_dict`, as the schedulefree package keeps `group["train_mode"]`) and refuse to step in eval mode.

The pass is the family's own kernel with the flags `ModeSwitch.flags(hyper)` gives (e.g. a `switch` flag), run with
the slot's arrays in the grads' place and every slot inactive: it reads p and the slot and writes p only, which needs
the slot in the param's dtype (true for float32 and float64; the cuda backend's float16/bfloat16 params keep float32
state, and `train()`/`eval()` refuse them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModeSwitch:
    key: str                                # the param-group entry holding the mode: True = the mode step() runs in
    slot: str                               # the state slot the pass reads in the grads' place
    flags: Callable[[dict], tuple]          # hyper -> the kernel flags of the pass
    scalars: Callable[[dict, bool], tuple]  # (hyper, target mode) -> the kernel scalars of the pass
    names: tuple[str, str] = ("train", "eval")   # the methods switching to True and to False
    # (group entry, per-param state entry): what a checkpoint of the oracle package, which keeps these per param
    # group, gives each of the group's params where its state entry lacks them (e.g. schedulefree's k -> step)
    group_state: tuple[tuple[str, str], ...] = ()


MODE_SWITCHES: dict[str, ModeSwitch] = {}


def register_mode_switch(spec_name: str, switch: ModeSwitch) -> ModeSwitch:
    """Give the optimizer `spec_name` a mode switch (call it before registering the spec, in the same module)."""
    if not isinstance(switch, ModeSwitch):
        raise TypeError(f"register_mode_switch takes a ModeSwitch, got {type(switch).__name__}")
    if spec_name in MODE_SWITCHES:
        raise ValueError(f"a mode switch for {spec_name!r} is already registered")
    MODE_SWITCHES[spec_name] = switch
    return switch


def _mode_of(group: dict, key: str, index: int) -> bool:
    mode = group.get(key)
    if type(mode) is not bool:
        raise TypeError(f"param_groups[{index}][{key!r}]: expected True or False, got {mode!r}")
    return mode


class ModeSwitched:
    """Mixed into the class of an optimizer with a mode switch (fastopt.optim._make_class): `train()`, `eval()`, the
    mode per param group, and the check that step() runs in train mode. Everything is checked before a param moves."""

    def _add_group(self, group, where):
        mode = _mode_of(self.param_groups[0], self._switch.key, 0) if self.param_groups else True
        super()._add_group(group, where)
        self.param_groups[-1][self._switch.key] = mode   # a new group has no state: both points are its params

    @property
    def _switch(self) -> ModeSwitch:
        return MODE_SWITCHES[self.spec.name]

    def train(self):
        """Move every param that has state to the point gradients are evaluated at (y); step() may run."""
        self._set_mode(True)
        return self

    def eval(self):
        """Move every param that has state to the averaged point (x), the one to evaluate and save; no step()."""
        self._set_mode(False)
        return self

    def step(self, *args, **kwargs):
        key = self._switch.key
        for index, group in enumerate(self.param_groups):
            if not _mode_of(group, key, index):
                raise ValueError(f"param_groups[{index}][{key!r}] is False: the optimizer is in eval mode (params "
                                 "at the average x); call train() before step()")
        return super().step(*args, **kwargs)

    def _set_mode(self, to: bool) -> None:
        from fastopt.functional import indices_by

        switch = self._switch
        with self._lock:
            passes = []
            for index, (group, record) in enumerate(zip(self.param_groups, self._groups)):
                if _mode_of(group, switch.key, index) is to or switch.slot not in record.state:
                    continue   # already there, or no step taken yet (no z: x = y = the param)
                _, hyper, _ = self._validated_hyper(group, record)
                for view in record.views:
                    if self.backend.state_dtype(view.dtype) != view.dtype:
                        raise TypeError(f"{'train' if to else 'eval'}(): params of dtype {view.dtype} keep "
                                        f"{self.backend.state_dtype(view.dtype)} state; the fused switch needs both "
                                        "in one dtype (float32 or float64)")
                slots = record.state[switch.slot]
                for indices in indices_by(v.dtype for v in record.views).values():
                    passes.append(([record.views[i] for i in indices], [slots[i] for i in indices], hyper))
            # everything checked: now move the params, one fused pass per group and dtype
            inactive = {s.name: None for s in self.spec.slots}
            for params, slots, hyper in passes:
                plan = self.backend.prepare(self.spec, params, inactive, switch.flags(hyper))
                plan.run(slots, switch.scalars(hyper, to))
            for group in self.param_groups:
                group[switch.key] = to

    def load_state_dict(self, state_dict: dict) -> None:
        """As Optimizer.load_state_dict, and the saved mode of each group. A checkpoint of the oracle package, which
        keeps some state per group (`ModeSwitch.group_state`), gives it to each of the group's params."""
        switch = self._switch
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        modes, given = [], {}
        for index, saved in enumerate(groups if isinstance(groups, (list, tuple)) else ()):
            mode = saved.get(switch.key) if isinstance(saved, dict) else None
            if mode is not None and not isinstance(mode, (bool, np.bool_)):
                raise TypeError(f"state_dict: param group {index}: {switch.key!r} must be True or False, got {mode!r}")
            modes.append(None if mode is None else bool(mode))
            if isinstance(saved, dict):
                shared = {entry: saved[group_key] for group_key, entry in switch.group_state if group_key in saved}
                given.update({p: shared for p in saved.get("params", ()) if shared})
        state = state_dict.get("state") if isinstance(state_dict, dict) else None
        if given and isinstance(state, dict):
            state = {p: ({**given[p], **entry} if isinstance(entry, dict) and p in given else entry)
                     for p, entry in state.items()}
            state_dict = {**state_dict, "state": state}
        with self._lock:
            super().load_state_dict(state_dict)
            for group, mode in zip(self.param_groups, modes):
                if mode is not None:
                    group[switch.key] = mode
