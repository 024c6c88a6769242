"""torch.optim drop-ins: every fastopt optimizer as a real `torch.optim.Optimizer` subclass.

    opt = fastopt.torch.Adam(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

CPU tensors reach the fused Numba kernels through zero-copy NumPy views; CUDA tensors reach the cuda backend (CuPy
views, launched on torch's current stream; that path has not been run on a GPU yet). Param groups, closures,
`zero_grad`, hooks, `torch.optim.lr_scheduler`, `torch.amp.GradScaler` and `state_dict` work as in torch.optim:
the state dict has torch's exact layout (the same state names, `step` stored as torch stores it for that optimizer),
so checkpoints move between `torch.optim.X` and `fastopt.torch.X` both ways. `to_torch_state_dict` and
`from_torch_state_dict` convert between this layout and the NumPy classes' (`fastopt.X.state_dict()`).

This module imports torch; `import fastopt` does not import this module.
"""

from __future__ import annotations

import inspect
import math
import numbers
import operator
from functools import cache

import numpy as np
import torch

from fastopt import dispatch, functional
from fastopt.specs import SHORTHANDS, SPECS, OptimizerSpec

# torch's implementation switches: any value is accepted (fastopt always runs its own fused kernels) and kept in the
# param groups, so the state dict reads as torch's.
_IMPLEMENTATION_KEYS = ("foreach", "fused")


@cache
def torch_format(class_name: str) -> dict:
    """How torch.optim.<class_name> lays out its state and param groups, read from torch itself (one tiny step).

    {"has_step": does each param's state hold `step`, "eager": is state created at construction
    (Adagrad), "extras": param-group keys torch has beyond fastopt's hyperparameters, with torch's defaults,
    "state_keys": what torch keeps per param with default hyperparameters}.
    Optimizers torch lacks get Adam's conventions (a float32 `step` tensor) and no extras.
    """
    cls = getattr(torch.optim, class_name, None)
    spec = _spec_for(class_name)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        return {"has_step": True, "eager": False, "extras": {}, "state_keys": ()}
    p = torch.zeros(1, requires_grad=True)
    probe = cls([p], lr=1e-3)
    eager = bool(probe.state)
    p.grad = torch.ones(1)
    probe.step()
    step = probe.state[p].get("step") if p in probe.state else None
    hypers = {h.name for h in spec.hypers} if spec else set()
    extras = {k: v for k, v in probe.param_groups[0].items() if k not in hypers and k not in ("params", "lr")}
    return {"has_step": step is not None, "eager": eager, "extras": extras,
            "state_keys": tuple(probe.state[p]) if p in probe.state else ()}


def _step_dtype():
    """torch keeps `step` as a float32 scalar tensor, float64 while float64 is the default dtype (as torch does)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _spec_for(class_name: str) -> OptimizerSpec | None:
    for spec in SPECS.values():
        if spec.class_name == class_name:
            return spec
    return None


def _plain(value):
    """Hyperparameters as Python numbers: torch allows tensor lr/betas; fastopt's kernels take floats."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return value  # left for the spec's check to refuse by name
        return value.item()
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    return value


def _checked_step(value, where: str) -> int:
    """A saved `step` as an int, or ValueError naming the entry (NaN, inf, negative, fractional, absurd)."""
    number = value
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)) and (
            value.numel() if isinstance(value, torch.Tensor) else value.size) == 1:
        number = value.item()
    if isinstance(number, numbers.Integral) and not isinstance(number, bool):
        ok = 0 <= number <= 2 ** 53
    else:
        ok = isinstance(number, numbers.Real) and not isinstance(number, bool) and math.isfinite(number) \
            and 0 <= number <= 2 ** 53 and number == int(number)
    if not ok:
        raise ValueError(f"{where}: expected a whole number of steps in [0, 2**53], got {value!r}")
    return int(number)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor in memory order (elementwise updates only need p, grad and state to share it)."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.size(d)))
    permuted = t.permute(order)
    if not permuted.is_contiguous():
        raise ValueError("expected a dense tensor (no gaps or overlaps between elements)")
    return permuted.view(-1)


def _shaped_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor itself, for optimizers with shaped state (fastopt.specs.Slot.shape), which read the params' shapes;
    the callers have checked it is contiguous."""
    return t


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.stride() == b.stride() or (a.is_contiguous() and b.is_contiguous())


def _like(param: torch.Tensor, value: torch.Tensor, dtype) -> torch.Tensor:
    """`value` copied into a tensor with `param`'s layout and device, of `dtype` (no copy when it already is one)."""
    if value.dtype == dtype and value.device == param.device and _same_layout(value, param):
        return value
    out = torch.empty_like(param, dtype=dtype)
    out.copy_(value)
    return out


class _Run:
    """One FusedUpdate over the params of a group that share a device and a step count."""

    def __init__(self, update, positions, backend, step, counter, keep, host=None, host_tensors=()):
        self.update, self.positions, self.backend = update, positions, backend
        self.step = step          # steps taken so far
        self.counter = counter    # the tensor every param's state["step"] views (None for SGD)
        self.keep = keep          # every tensor whose memory the plan's address tables point into
        self.host = host          # host state values shared by the run's params (a tuple), None without host state
        self.host_tensors = host_tensors   # per host scalar, the tensor each param's state[name] views


class _Plan:
    """A param group's prepared update, valid while the same params (at the same addresses) have grads, their state
    tensors are the same objects and the flags are the same. Checking that costs a few list comparisons."""

    def __init__(self, params, state, flags, runs, contiguous, shaped=False):
        self.params, self.flags, self.runs, self.contiguous = list(params), flags, runs, contiguous
        self.shaped = shaped   # shaped state (fastopt.specs.Slot.shape): the kernels see grads in the params' shape
        self.ptrs = [p.data_ptr() for p in params]
        self.value_ids = self._value_ids(params, state)
        self.grads: list = []       # the grad tensors of the last step (held: their memory stays theirs)
        self.grad_views: list = []  # and what the kernels were given for them

    @staticmethod
    def _value_ids(params, state):
        return [id(v) for p in params for v in state.get(p, _NO_STATE).values()]

    def matches(self, params, state, flags) -> bool:
        return (flags == self.flags and len(params) == len(self.params)
                and all(map(operator.is_, params, self.params))
                and [p.data_ptr() for p in params] == self.ptrs  # `p.data = ...` moves a param
                and self._value_ids(params, state) == self.value_ids)

    def same_grads(self, grads) -> bool:
        return len(grads) == len(self.grads) and all(map(operator.is_, grads, self.grads))

    def run(self, grads, hyper) -> None:
        if not self.same_grads(grads):
            self.grad_views = [_grad_view(g, p, c) for g, p, c in zip(grads, self.params, self.contiguous)]
            if self.shaped:   # contiguous params (checked when built): the flat view in the param's shape
                self.grad_views = [v.reshape(tuple(p.shape)) for v, p in zip(self.grad_views, self.params)]
            self.grads = list(grads)
        views = self.grad_views
        single = len(self.runs) == 1
        for run in self.runs:
            run_grads = views if single else [views[i] for i in run.positions]
            step = run.step + 1
            if run.backend.name == "cuda":
                after = _run_on_torch_stream(run, run_grads, hyper, step)
            elif run.host is None:
                after = run.update.run(run_grads, hyper, step)
            else:
                after = run.update.run(run_grads, hyper, step, host=run.host)
            run.step = step
            if after is not None:   # host state: the values after the step, into torch's 0-d state tensors
                run.host = after
                for tensor, value in zip(run.host_tensors, after):
                    tensor.fill_(value)
            if run.counter is not None:
                run.counter += 1


_NO_STATE: dict = {}


def _grad_view(g, p, contiguous):
    """What the kernel reads for grad `g` of param `p`: a flat view in the param's memory order."""
    if contiguous and g.is_contiguous():  # the common case, kept short: this runs per tensor per step
        flat = g.detach().view(-1)
    else:
        if not _same_layout(g, p):
            g = _like(p, g, g.dtype)  # torch allows any grad strides; the kernel needs the param's memory order
        flat = _flat(g.detach())
    return flat.numpy() if flat.device.type == "cpu" else flat


class Optimizer(torch.optim.Optimizer):
    """Base of the generated classes: `spec` says which optimizer, `default_overrides` change its defaults."""

    spec: OptimizerSpec
    default_overrides: dict = {}  # noqa: RUF012 - read only, replaced per class
    _positional: tuple = ()       # the arguments after params that may be given by position, in torch's order

    def __init__(self, params, *args, backend: str | None = None, **hyperparameters):
        names = self._positional
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}: takes at most {len(names)} positional arguments after params "
                            f"({', '.join(names)}), got {len(args)}")
        for name, value in zip(names, args):
            if name in hyperparameters:
                raise TypeError(f"{type(self).__name__}: got two values for argument {name!r}")
            hyperparameters[name] = value
        fmt = self._format()
        extras = dict(fmt["extras"])
        known = {h.name for h in self.spec.hypers}
        for key in hyperparameters:
            if key not in known and key not in extras:
                raise TypeError(f"{type(self).__name__}: unknown argument {key!r}; expected one of "
                                f"{sorted(known | set(extras))} or backend")
        given = {**self.default_overrides, **{k: v for k, v in hyperparameters.items() if k in known}}
        functional.with_defaults(self.spec, {k: _plain(v) for k, v in given.items()})  # validates by name
        defaults = {**self.spec.defaults, **given}  # torch keeps a tensor lr as given: so do we
        extras.update({k: v for k, v in hyperparameters.items() if k in extras})
        self._check_extras(extras, "")
        if backend is not None:
            dispatch.get_backend(backend)  # ValueError naming the choices
        self._requested_backend = backend
        self._plans: dict[int, tuple] = {}
        super().__init__(params, {**defaults, **extras})
        if fmt["eager"]:  # torch's Adagrad creates its state at construction
            for group in self.param_groups:
                for p in group["params"]:
                    self._new_state(p, self._hyper(group, "param_groups"))

    @classmethod
    def _format(cls) -> dict:
        return torch_format(cls.spec.class_name)

    def _check_extras(self, group: dict, where: str) -> None:
        for key, default in self._format()["extras"].items():
            if key not in group:
                continue
            value = group[key]
            if key in _IMPLEMENTATION_KEYS:
                if value is not None and not isinstance(value, bool):
                    raise TypeError(f"{where}{key}: expected None, True or False, got {value!r}")
            elif value != default:
                raise ValueError(f"{where}{key}={value!r} is not supported by fastopt.torch."
                                 f"{type(self).__name__} (only {default!r})")

    # ---- param groups -------------------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        """torch's add_param_group, after checking the hyperparameters and that fastopt can update the params."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group: expected a dict, got {type(param_group).__name__}")
        where = f"param_groups[{len(self.param_groups)}]"
        merged = {**self.defaults, **param_group}
        hyper = {h.name: _plain(merged[h.name]) for h in self.spec.hypers}
        try:
            self.spec.validate(hyper)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from None
        self._check_extras(merged, f"{where}: ")
        params = param_group.get("params")
        params = [params] if isinstance(params, torch.Tensor) else list(params) if params is not None else []
        for i, p in enumerate(params):
            if isinstance(p, tuple) and len(p) == 2:  # named parameters: (name, tensor)
                p = p[1]
            if isinstance(p, torch.Tensor):
                self._check_param(p, f"{where}['params'][{i}]")
        super().add_param_group(param_group)
        self._plans.pop(len(self.param_groups) - 1, None)

    def _check_param(self, p: torch.Tensor, where: str) -> None:
        if p.layout != torch.strided:
            raise TypeError(f"{where}: expected a dense tensor, got layout {p.layout}")
        if p.device.type not in ("cpu", "cuda"):
            raise TypeError(f"{where}: fastopt updates CPU and CUDA tensors, got a {p.device.type} tensor")
        if p.device.type == "cpu" and p.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{where}: fastopt updates float32 and float64 CPU tensors, got {p.dtype}")
        if p.device.type == "cuda" and p.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"{where}: fastopt updates float16, bfloat16, float32 and float64 CUDA tensors, "
                            f"got {p.dtype}")
        try:
            _flat(p)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    def _hyper(self, group: dict, where: str) -> dict:
        try:
            hyper = {h.name: _plain(group[h.name]) for h in self.spec.hypers}
        except KeyError as error:
            raise ValueError(f"{where}: missing hyperparameter {error.args[0]!r}") from None
        try:
            self.spec.validate(hyper)  # param groups are live (schedulers, users): check edits
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from None
        return hyper

    # ---- pickling and load_state_dict: plans are rebuilt, never shared ---------------------------------------------

    def __getstate__(self):
        return {**super().__getstate__(), "_requested_backend": self._requested_backend}

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        backend = state.pop("_requested_backend", getattr(self, "_requested_backend", None))
        super().__setstate__(state)
        self._requested_backend = backend
        self._plans = {}
        for group in self.param_groups:  # old checkpoints may lack some keys; torch fills them the same way
            for key, value in {**self.spec.defaults, **self.default_overrides, **self._format()["extras"]}.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load_state_dict, after checking the saved state fits this optimizer: nothing changes on error."""
        self._check_loadable(state_dict)
        super().load_state_dict(state_dict)
        self._plans = {}

    def _check_loadable(self, state_dict) -> None:
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError("state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict: has {len(saved_groups)} param groups, this optimizer "
                             f"{len(self.param_groups)}")
        fmt = self._format()
        allowed = {s.name for s in self.spec.slots} | ({"step"} if fmt["has_step"] else set())
        host_names = {h.name for h in self.spec.host_state}
        allowed |= host_names
        class_defaults = {**self.spec.defaults, **self.default_overrides}
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            where = f"state_dict['param_groups'][{g}]"
            if len(saved.get("params", ())) != len(group["params"]):
                raise ValueError(f"{where}: has {len(saved.get('params', ()))} params, this optimizer's group "
                                 f"{len(group['params'])}")
            hyper = {h.name: _plain(saved.get(h.name, class_defaults[h.name])) for h in self.spec.hypers}
            try:
                self.spec.validate(hyper)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{where}: {error}") from None
            self._check_extras(saved, f"{where}: ")
            active = {s.name for s in self.spec.active_slots(hyper)}
            for key, p in zip(saved["params"], group["params"]):
                entry = state_dict["state"].get(key)
                if entry is None:
                    continue
                # shaped state (fastopt.specs.Slot.shape): each slot's shape for this param, None where it has none
                shapes = {s.name: s.shape_for(tuple(p.shape), hyper) for s in self.spec.active_slots(hyper)}
                at = f"state_dict['state'][{key!r}]"
                if not isinstance(entry, dict):
                    raise TypeError(f"{at}: expected a dict, got {type(entry).__name__}")
                unknown = sorted(set(entry) - allowed, key=str)
                if unknown:
                    raise ValueError(f"{at}: {unknown} are not state of {type(self).__name__} (expected "
                                     f"{sorted(allowed)}): a state dict of another optimizer?")
                step = _checked_step(entry["step"], f"{at}['step']") if "step" in entry else 0
                for name in allowed - {"step"}:
                    value = entry.get(name)
                    if name in host_names:   # a number or 0-d tensor; needed once steps were taken
                        if value is None and step > 0:
                            raise ValueError(f"{at}: {name!r} is missing but step is {step}; the state is "
                                             "incomplete")
                        if value is not None:
                            functional.host_float(value, f"{at}[{name!r}]")
                        continue
                    if value is None:
                        if name in active and shapes[name] is not None and step > 0:
                            raise ValueError(f"{at}: {name!r} is missing but step is {step}; the state is "
                                             "incomplete (starting it from zeros would change the trajectory)")
                        continue
                    if name in shapes and shapes[name] is None:
                        raise ValueError(f"{at}[{name!r}]: {type(self).__name__} keeps no {name!r} for a param of "
                                         f"shape {tuple(p.shape)}")
                    if isinstance(value, np.ndarray):
                        raise TypeError(f"{at}[{name!r}]: a NumPy array: a fastopt.{self.spec.class_name} state "
                                        "dict? convert it with fastopt.torch.to_torch_state_dict(state_dict, self)")
                    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                        raise TypeError(f"{at}[{name!r}]: expected a floating-point tensor, got "
                                        f"{getattr(value, 'dtype', type(value).__name__)}")
                    want = shapes.get(name) or tuple(p.shape)
                    if tuple(value.shape) != want:
                        raise ValueError(f"{at}[{name!r}]: has shape {tuple(value.shape)}, expected {want} (the "
                                         f"param has {tuple(p.shape)})")
                if fmt["has_step"] and "step" not in entry and any(entry.get(n) is not None for n in active):
                    raise ValueError(f"{at}: has state but no 'step'")

    # ---- the step ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One fused update of every param that has a gradient; returns closure()'s loss when a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Check everything (hyperparameters, grads) for every group before any state is created or updated.
        work = []
        for index, group in enumerate(self.param_groups):
            hyper = self._hyper(group, f"param_groups[{index}]")
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            plan = self._plans.get(index)
            if plan is not None and not plan.matches(params, self.state, self.spec.flags(hyper)):
                plan = None
            if plan is None or not plan.same_grads(grads):
                self._check_grads(params, grads, index, group)
            work.append((index, hyper, params, grads, plan))
        ready = []
        for index, hyper, params, grads, plan in work:
            if plan is None:
                plan = self._plans[index] = self._build(index, hyper, params)
            ready.append((plan, hyper, grads))
        for plan, hyper, grads in ready:
            plan.run(grads, hyper)
        return loss

    def _check_grads(self, params, grads, index, group) -> None:
        for p, g in zip(params, grads):
            if g.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                position = next(i for i, q in enumerate(group["params"]) if q is p)
                raise ValueError(f"param_groups[{index}]['params'][{position}].grad: expected shape "
                                 f"{tuple(p.shape)}, {p.dtype} on {p.device} like the param, got {tuple(g.shape)}, "
                                 f"{g.dtype} on {g.device}")

    def _new_state(self, p, hyper) -> dict:
        state = {}
        if self._format()["has_step"]:
            state["step"] = torch.tensor(0.0, dtype=_step_dtype())
        for slot in self.spec.active_slots(hyper):
            if slot.shape is not None:   # shaped state: its own shape for this param, or none
                shape = slot.shape_for(tuple(p.shape), hyper)
                if shape is not None:
                    state[slot.name] = torch.full(shape, slot.init(hyper), dtype=self._state_dtype(p),
                                                  device=p.device)
                continue
            state[slot.name] = torch.full_like(p, slot.init(hyper), dtype=self._state_dtype(p),
                                               memory_format=torch.preserve_format)
        for h in self.spec.host_state:  # torch's 0-d scalar state (NAdam's mu_product, ASGD's eta and mu)
            state[h.name] = torch.tensor(float(h.init(hyper)), dtype=_step_dtype())
        if state:  # like torch: SGD without momentum keeps no state at all
            self.state[p] = state
        return state

    def _host_values(self, p, state, hyper, step, label):
        """The param's host state values (a tuple of floats, checked) from its 0-d state tensors; None without host
        state. A missing value is its initial one before the first step, and damaged state after it."""
        if not self.spec.host_state:
            return None
        values = []
        for h in self.spec.host_state:
            value = state.get(h.name)
            if value is None:
                if step > 0:
                    raise ValueError(f"state of {label}: {h.name!r} is missing but step is {step}")
                value = h.init(hyper)
            values.append(functional.host_float(value, f"state of {label}: {h.name!r}"))
        return tuple(values)

    @staticmethod
    def _state_dtype(p):
        # the cuda backend keeps float16/bfloat16 params' state in float32 (torch keeps it in the param's dtype)
        return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype

    def _build(self, index: int, hyper: dict, params: list) -> _Plan:
        """Create missing state, check it, and prepare one FusedUpdate per device and step count."""
        fmt = self._format()
        active = self.spec.active_slots(hyper)
        shaped = any(s.shape is not None for s in self.spec.slots)
        view = _shaped_view if shaped else _flat   # shaped state: the kernels factor the params' own shapes
        position = {id(p): i for i, p in enumerate(self.param_groups[index]["params"])}
        labels = [f"param_groups[{index}]['params'][{position[id(p)]}]" for p in params]
        steps, views, hosts = [], [], []
        for p, label in zip(params, labels):
            self._check_param(p, label)
            created = not self.state.get(p)
            state = self._new_state(p, hyper) if created else self.state[p]
            step_value = 0
            if fmt["has_step"]:
                step_t = state.get("step")
                step_value = _checked_step(0 if step_t is None else step_t, f"state of {label}: 'step'")
            if shaped and not p.is_contiguous():
                raise ValueError(f"{label}: {type(self).__name__} factors the param's last two dims and needs a "
                                 "contiguous param; pass p.contiguous()")
            for slot in active:
                value = state.get(slot.name)
                shape = slot.shape_for(tuple(p.shape), hyper)
                if shape is None:   # shaped state this param does not keep
                    if value is not None:
                        raise ValueError(f"state of {label}: {type(self).__name__} keeps no {slot.name!r} for a "
                                         f"param of shape {tuple(p.shape)}")
                    continue
                if value is None:
                    if step_value > 0:
                        raise ValueError(f"state of {label}: {slot.name!r} is missing but step is {step_value}")
                    value = torch.full(shape, slot.init(hyper), dtype=self._state_dtype(p), device=p.device)
                    created = True
                if slot.shape is None:
                    state[slot.name] = _like(p, value, self._state_dtype(p))  # torch's load casts; the kernel can't
                else:
                    state[slot.name] = value.to(p.device, self._state_dtype(p)).contiguous()
            # torch's SGD stores no step: its first step is the one that creates the momentum buffer.
            steps.append(step_value if fmt["has_step"] else 0 if created else 1)
            hosts.append(self._host_values(p, state, hyper, step_value, label))
            views.append([view(p.detach())] + [None if state.get(s.name) is None else view(state[s.name].detach())
                                               for s in active])
        runs = []
        for (device, step, host), positions in functional.indices_by(
                (p.device, s, h) for p, s, h in zip(params, steps, hosts)).items():
            tensors = [views[i] for i in positions]
            arrays = [[t.numpy() if device.type == "cpu" and t is not None else t for t in row] for row in tensors]
            backend = dispatch.choose_backend([row[0] for row in arrays], self._requested_backend)
            param_arrays = [backend.as_array(row[0]) for row in arrays]
            state_lists = {s.name: [None if row[1 + j] is None else backend.as_array(row[1 + j]) for row in arrays]
                           for j, s in enumerate(active)}
            names = [labels[i] for i in positions]
            kept = [(a, f"state {s} of {n}") for s, arrs in state_lists.items() for a, n in zip(arrs, names)
                    if a is not None]
            functional.check_params(param_arrays + [a for a, _ in kept], backend, names + [n for _, n in kept])
            functional.check_state(self.spec, hyper, param_arrays, state_lists, backend, names)
            if device.type == "cuda":
                with _torch_stream(device):
                    update = functional.FusedUpdate(self.spec, param_arrays, state_lists, hyper, backend)
            else:
                update = functional.FusedUpdate(self.spec, param_arrays, state_lists, hyper, backend)
            counter = None
            if fmt["has_step"]:
                # One counter per run: each param's `step` becomes a view of it, so a step adds 1 to all at once
                # (torch's own state dicts and checkpoints take such views as they are).
                counter = torch.full((len(positions),), float(step), dtype=_step_dtype())
                for k, i in enumerate(positions):
                    self.state[params[i]]["step"] = counter[k]
            host_tensors = []
            for k, h in enumerate(self.spec.host_state):
                # as for step: one tensor per run, each param's state[name] a 0-d view of it
                host_tensors.append(torch.tensor([host[k]] * len(positions), dtype=_step_dtype()))
                for j, i in enumerate(positions):
                    self.state[params[i]][h.name] = host_tensors[-1][j]
            runs.append(_Run(update, positions, backend, step, counter, keep=(tensors, arrays), host=host,
                             host_tensors=tuple(host_tensors)))
        return _Plan(params, self.state, self.spec.flags(hyper), runs, [p.is_contiguous() for p in params], shaped)


# ---- CUDA: launch on torch's current stream (not yet run on a GPU) ---------------------------------------------------

def _torch_stream(device):
    import cupy

    stream = torch.cuda.current_stream(device)
    return cupy.cuda.ExternalStream(stream.cuda_stream, device.index if device.index is not None else -1)


def _run_on_torch_stream(run, grads, hyper, step):
    device = grads[0].device if grads else torch.device("cuda")
    with _torch_stream(device):
        if run.host is None:
            return run.update.run(grads, hyper, step)
        return run.update.run(grads, hyper, step, host=run.host)


# ---- the classes, one per spec and shorthand -----------------------------------------------------------------------

def _signature(spec: OptimizerSpec, overrides: dict) -> inspect.Signature:
    """torch's signature for the optimizer (positional arguments in torch's order, its extra keywords), with
    fastopt's defaults and `backend`; for optimizers torch lacks, the spec's hyperparameters in order."""
    defaults = {**spec.defaults, **overrides}
    P = inspect.Parameter
    twin = getattr(torch.optim, spec.class_name, None)
    if twin is not None:
        theirs = [q for q in inspect.signature(twin.__init__).parameters.values() if q.name not in ("self", "params")]
        listed = {q.name for q in theirs}
        ours = [q.replace(default=defaults.get(q.name, q.default), annotation=P.empty) for q in theirs]
        ours += [P(h.name, P.KEYWORD_ONLY, default=defaults[h.name]) for h in spec.hypers if h.name not in listed]
    else:
        ours = [P(h.name, P.POSITIONAL_OR_KEYWORD, default=defaults[h.name]) for h in spec.hypers]
    keyword = [q for q in ours if q.kind == P.KEYWORD_ONLY] + [P("backend", P.KEYWORD_ONLY, default=None)]
    return inspect.Signature([P("params", P.POSITIONAL_OR_KEYWORD)]
                             + [q for q in ours if q.kind == P.POSITIONAL_OR_KEYWORD] + keyword)


def _make_class(class_name: str, spec: OptimizerSpec, overrides: dict) -> type:
    signature = _signature(spec, overrides)
    in_torch = hasattr(torch.optim, spec.class_name)
    doc = (f"{class_name}: fused {spec.name} as a torch.optim.Optimizer"
           + (f" (torch.optim.{spec.class_name}'s semantics and state dict)" if in_torch else "") + ".\n\n"
           f"{class_name}{signature}\n"
           f"State per param: step, {', '.join(s.name for s in spec.slots)} (each only when used).")
    positional = tuple(q.name for q in signature.parameters.values()
                       if q.kind == q.POSITIONAL_OR_KEYWORD and q.name != "params")
    return type(class_name, (Optimizer,), {"spec": spec, "default_overrides": overrides, "__doc__": doc,
                                           "__module__": __name__, "__qualname__": class_name,
                                           "__signature__": signature, "_positional": positional})


OPTIMIZERS: dict[str, type] = {name: _make_class(spec.class_name, spec, {}) for name, spec in SPECS.items()}
OPTIMIZERS.update({name.lower(): _make_class(name, spec, overrides) for name, (spec, overrides) in SHORTHANDS.items()})
globals().update({cls.__name__: cls for cls in OPTIMIZERS.values()})


# ---- state dict conversion: fastopt's NumPy classes <-> torch ------------------------------------------------------

def _class_name_of(optimizer) -> str:
    if isinstance(optimizer, Optimizer):
        return optimizer.spec.class_name
    for cls in type(optimizer).__mro__:
        if cls.__module__.startswith("torch.optim") and cls is not torch.optim.Optimizer:
            return cls.__name__
    raise TypeError(f"optimizer: expected a torch.optim or fastopt.torch optimizer, got {type(optimizer).__name__}")


def to_torch_state_dict(state_dict: dict, optimizer) -> dict:
    """A `fastopt.X(...).state_dict()` (NumPy arrays, int steps) as the state dict `optimizer.load_state_dict`
    takes, where `optimizer` is a `torch.optim.X` or `fastopt.torch.X` over the same params in the same order.

    State arrays become tensors (load_state_dict casts them to each param's dtype and device), `step` becomes what
    torch stores (a float32 tensor; nothing for SGD), and the param groups gain torch's extra keys with the values
    `optimizer` has.
    """
    class_name = _class_name_of(optimizer)
    spec = _spec_for(class_name)
    if spec is None:
        raise ValueError(f"optimizer: fastopt has no {class_name}")
    fmt = torch_format(class_name)
    state, groups = _checked_shape(state_dict)
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"state_dict: has {len(groups)} param groups, optimizer {len(optimizer.param_groups)}")
    slots = {s.name for s in spec.slots}
    host_names = {h.name for h in spec.host_state}
    new_state = {}
    for key, entry in state.items():
        unknown = set(entry) - slots - host_names - {"step"}
        if unknown:
            raise ValueError(f"state_dict['state'][{key!r}]: {sorted(unknown)} are not state of {class_name}")
        step = _checked_step(entry.get("step", 0), f"state_dict['state'][{key!r}]['step']")
        converted = {}
        for name, value in entry.items():
            if name in host_names and value is not None:   # a float: torch's 0-d scalar state tensor
                converted[name] = torch.tensor(functional.host_float(value, f"state_dict['state'][{key!r}]"
                                                                           f"[{name!r}]"), dtype=_step_dtype())
            elif name in slots and value is not None:
                array = np.asarray(value)
                if array.dtype.kind != "f":
                    raise TypeError(f"state_dict['state'][{key!r}][{name!r}]: expected a floating-point array, "
                                    f"got {array.dtype}")
                converted[name] = torch.tensor(array)
        if fmt["has_step"]:
            converted = {"step": torch.tensor(float(step), dtype=_step_dtype()), **converted}
        if converted:  # torch keeps no entry where it has nothing to keep (SGD without momentum)
            new_state[key] = converted
    new_groups = []
    for saved, target in zip(groups, optimizer.param_groups):
        group = {k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "param_names"}
        if "param_names" in target and "param_names" in saved:
            group["param_names"] = list(saved["param_names"])
        for k in fmt["extras"]:
            if k in target:
                group.setdefault(k, target[k])
        new_groups.append(group)
    return {"state": new_state, "param_groups": new_groups}


def from_torch_state_dict(state_dict: dict, optimizer) -> dict:
    """A `torch.optim.X` (or `fastopt.torch.X`) state dict as the state dict `optimizer.load_state_dict` takes,
    where `optimizer` is a `fastopt.X` (NumPy classes) over the same params in the same order.

    Tensors become NumPy copies (float16 and bfloat16 as float32; load_state_dict casts to the params' dtype),
    `step` an int; torch's SGD saves no step, so a saved momentum buffer counts as one step taken (torch's SGD starts
    a fresh buffer only when it has none). torch's implementation keys are dropped, after checking that none of them
    changes the arithmetic (e.g. `decoupled_weight_decay` must match Adam/AdamW).
    """
    spec = getattr(optimizer, "spec", None)
    if spec is None or isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a fastopt optimizer (fastopt.Adam, ...), got {type(optimizer).__name__}")
    fmt = torch_format(spec.class_name)
    state, groups = _checked_shape(state_dict)
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"state_dict: has {len(groups)} param groups, optimizer {len(optimizer.param_groups)}")
    hypers = {h.name for h in spec.hypers}
    new_groups = []
    for g, saved in enumerate(groups):
        for key, default in fmt["extras"].items():
            if key in saved and key not in _IMPLEMENTATION_KEYS and saved[key] != default:
                raise ValueError(f"state_dict['param_groups'][{g}]: {key}={saved[key]!r} has no fastopt "
                                 f"{spec.class_name} equivalent (only {default!r})")
        group = {k: _plain(v) for k, v in saved.items() if k in hypers}
        group["params"] = list(saved["params"])
        if "param_names" in saved and "param_names" in optimizer.param_groups[g]:
            group["param_names"] = list(saved["param_names"])
        new_groups.append(group)
    slots = {s.name for s in spec.slots}
    host_names = {h.name for h in spec.host_state}
    new_state = {}
    for key, entry in state.items():
        at = f"state_dict['state'][{key!r}]"
        unknown = set(entry) - slots - host_names - {"step"}
        if unknown:
            raise ValueError(f"{at}: {sorted(unknown)} are not state of {spec.class_name}")
        converted = {}
        for name, value in entry.items():
            if name == "step" or value is None:
                continue
            if name in host_names:   # torch's 0-d scalar state: a plain float
                converted[name] = functional.host_float(value, f"{at}[{name!r}]")
                continue
            tensor = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            if not tensor.is_floating_point():
                raise TypeError(f"{at}[{name!r}]: expected a floating-point tensor, got {tensor.dtype}")
            if tensor.dtype in (torch.float16, torch.bfloat16):  # NumPy has no bfloat16; load casts to the params'
                tensor = tensor.float()
            converted[name] = tensor.numpy().copy()
        if "step" in entry:
            step = _checked_step(entry["step"], f"{at}['step']")
        else:
            step = 1 if converted else 0
        if converted or step:
            new_state[key] = {"step": step, **converted}
    return {"state": new_state, "param_groups": new_groups}


def _checked_shape(state_dict):
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict) \
            or not isinstance(state_dict.get("param_groups"), (list, tuple)):
        raise TypeError("state_dict: expected a dict with 'state' (a dict) and 'param_groups' (a list)")
    for key, entry in state_dict["state"].items():
        if not isinstance(entry, dict):
            raise TypeError(f"state_dict['state'][{key!r}]: expected a dict, got {type(entry).__name__}")
    for g, group in enumerate(state_dict["param_groups"]):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"state_dict['param_groups'][{g}]: expected a dict with 'params'")
    return state_dict["state"], state_dict["param_groups"]


__all__ = ["OPTIMIZERS", "Optimizer", "from_torch_state_dict", "to_torch_state_dict", "torch_format",
           *(cls.__name__ for cls in OPTIMIZERS.values())]
