"""The functional layer: validate, allocate state, group tensors by dtype, and hand them to a backend.

    state = fastopt.functional.init_state("adam", params, lr=1e-3)
    for step in range(1, n + 1):
        fastopt.functional.adam(params, grads, state, step=step, lr=1e-3)

`update` (and one function per optimizer, named after it) checks everything, then runs a prepared `FusedUpdate`.
Prepared updates are cached, keyed on the identities of the params and state arrays (which the cache holds, so an
id is never reused while cached) and the kernel flags: an optax-style loop that passes the same arrays every step
costs what the classes cost. Everything is checked before any kernel runs, so bad input raises and changes nothing.

SGD follows torch: it keeps no step count, and its first step is the one that creates the momentum buffer
(`init_state("sgd", ...)` returns no buffer; the first `sgd(...)` call adds it to `state`). Its `step` is ignored.
"""

from __future__ import annotations

import itertools
import math
import numbers
import operator
import threading
from collections import OrderedDict

from fastopt import dispatch
from fastopt.specs import SPECS, OptimizerSpec


def get_spec(optimizer) -> OptimizerSpec:
    if isinstance(optimizer, OptimizerSpec):
        return optimizer
    if optimizer not in SPECS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {sorted(SPECS)}")
    return SPECS[optimizer]


def with_defaults(spec: OptimizerSpec, hyper: dict) -> dict:
    """The hyperparameters with defaults filled in, validated, as the kernels take them (floats, bools)."""
    full = {**spec.defaults, **hyper}
    spec.validate(full)
    return spec.normalize(full)


def indices_by(keys) -> dict:
    """key -> the positions holding it, in order of first appearance (tensors grouped by dtype, step, ...)."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


# ---- array checks -------------------------------------------------------------------------------------------------

def _memory_range(array):
    interface = getattr(array, "__array_interface__", None) or getattr(array, "__cuda_array_interface__", None)
    if interface is None:
        return None
    start = interface["data"][0]
    return start, start + array.nbytes, bool(interface["data"][1])


def _is_contiguous(array) -> bool:
    try:
        return array.flags.c_contiguous  # NumPy, CuPy
    except AttributeError:
        return array.is_contiguous()     # torch


def _check_disjoint(arrays, names) -> None:
    """No two of `arrays` share memory (kernels read and write each in place, through raw addresses)."""
    ranges = []
    for name, a in zip(names, arrays):
        memory = _memory_range(a)
        if memory is not None and a.size:
            ranges.append((memory[0], memory[1], name))
    ranges.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(ranges):
        if start < end:
            raise ValueError(f"{first} and {second} share memory: each parameter and state array must be its own "
                             "array")


def _check_writable(array, name, what) -> None:
    memory = _memory_range(array)
    if memory is not None and memory[2]:
        raise ValueError(f"{name}: the array is read-only; an optimizer must update its {what} in place")


def check_params(params, backend, names) -> None:
    """Floating point of a dtype the backend supports, writable, C-contiguous, and no memory shared between two."""
    for name, p in zip(names, params):
        if not backend.owns(p):
            raise TypeError(f"{name}: expected an array the {backend.name} backend updates, got {type(p).__name__}"
                            f"{dispatch.hint(p)}")
        try:
            backend.state_dtype(p.dtype)  # the backend knows which dtypes it updates (cuda: bfloat16 as uint16 bits)
        except TypeError as error:
            raise TypeError(f"{name}: expected a floating-point array the {backend.name} backend updates: "
                            f"{error}") from None
        if not _is_contiguous(p):
            raise ValueError(f"{name}: expected a C-contiguous array (fused kernels update memory in place); "
                             "pass a contiguous copy and train that")
        _check_writable(p, name, "params")
    _check_disjoint(params, names)


def check_grads(grads, params, names, grad_names) -> None:
    """One array per param, of the param's array kind, shape and dtype, and C-contiguous. Any NumPy array (a memmap,
    an np.matrix, ...) is a valid grad for a NumPy param: kernels see plain ndarray views.

    `names` and `grad_names` are sequences or callables index -> name: names are only built when something is wrong,
    because this runs every step over every tensor.
    """
    if len(grads) != len(params):
        raise ValueError(f"grads: expected {len(params)} arrays (one per param), got {len(grads)}")
    try:  # the common case in one tight pass (this runs every step that brings new grad arrays)
        if all(type(g) is type(p) and g.shape == p.shape and g.dtype == p.dtype and g.flags.c_contiguous
               for p, g in zip(params, grads)):
            return
    except AttributeError:  # not NumPy/CuPy-like (torch tensors have no .flags, None has nothing): look closer
        pass
    for i, (p, g) in enumerate(zip(params, grads)):
        if (type(g) is not type(p) and not _same_kind(p, g)) or not hasattr(g, "shape") or g.shape != p.shape \
                or g.dtype != p.dtype or not _is_contiguous(g):
            _explain_bad_grad(p, g, _name(names, i), _name(grad_names, i))


def _same_kind(p, g) -> bool:
    """Arrays of one kind though of different classes: any two NumPy arrays (memmap, np.matrix, ...), or two torch
    tensors (an nn.Parameter's grad is a plain Tensor)."""
    import sys

    import numpy as np

    if isinstance(p, np.ndarray) and isinstance(g, np.ndarray):
        return True
    torch = sys.modules.get("torch")  # only torch tensors can reach here if torch was imported
    return torch is not None and isinstance(p, torch.Tensor) and isinstance(g, torch.Tensor)


def _name(names, i):
    return names(i) if callable(names) else names[i]


def _explain_bad_grad(p, g, pname, gname):
    if g is None:
        raise TypeError(f"{gname}: gradient is None; every param needs a gradient")
    if not hasattr(g, "shape") or not hasattr(g, "dtype") or (type(g) is not type(p) and not _same_kind(p, g)):
        raise TypeError(f"{gname}: expected a {type(p).__name__} like {pname}, got {type(g).__name__}"
                        f"{dispatch.hint(g)}")
    if g.shape != p.shape:
        raise ValueError(f"{gname}: expected shape {tuple(p.shape)} like {pname}, got {tuple(g.shape)}")
    if g.dtype != p.dtype:
        raise TypeError(f"{gname}: expected dtype {p.dtype} like {pname}, got {g.dtype}; convert it, e.g. "
                        f"grad.astype({p.dtype.name!r})")
    raise ValueError(f"{gname}: expected a C-contiguous array")


# ---- state ----------------------------------------------------------------------------------------------------------

VECTOR_BYTES = 16  # the widest vector access of the kernels (CUDA: 16-byte loads)


def init_state(optimizer, params, backend=None, **hyper) -> dict:
    """Fresh state: slot name -> list of arrays (one per param), for the slots these hyperparameters use (SGD's
    momentum buffer excepted: as in torch, the first step creates it)."""
    spec = get_spec(optimizer)
    hyper = with_defaults(spec, hyper)
    backend = dispatch.choose_backend(list(params), backend)
    arrays = [backend.as_array(p) for p in params]
    state = {slot.name: slot_arrays(backend, arrays, slot, hyper) for slot in spec.active_slots(hyper)
             if slot.name != spec.first_step_slot}
    for h in spec.host_state:  # host scalar state: a list of floats, one per param, replaced by each update()
        state[h.name] = [float(h.init(hyper))] * len(arrays)
    return state


def _element_offset(array, width: int) -> int:
    """The array's first element's index modulo `width`, counted in its own elements (0 when unknown)."""
    memory = _memory_range(array)
    return 0 if memory is None else (memory[0] // array.dtype.itemsize) % width


def state_arrays(backend, params, value, shapes=None) -> list:
    """One state array per param, filled with `value`: views of one buffer per state dtype, in params' order.

    Each view starts at its param's element offset modulo the vector width (16 bytes of state), so a param and its
    state are either both aligned for vector access or misaligned alike, and the kernels' vector body covers every
    element but heads and tails. Params laid out back to back (`fastopt.flatten`) get state back to back too (the
    offsets then follow by themselves), and a backend can update the whole group as one span of memory.

    `shapes` (shaped state, see fastopt.specs.Slot): per param, its array's shape, or None for no array (the list
    then holds None there); each such array starts at a 16-byte boundary. None: every array shaped like its param.
    """
    arrays: list = [None] * len(params)
    if shapes is None:
        shapes = [None] * len(params)
        own = [True] * len(params)
    else:
        own = [False] * len(params)
        shapes = [None if s is None else tuple(s) for s in shapes]
    keep = [i for i in range(len(params)) if own[i] or shapes[i] is not None]
    for dtype, indices in indices_by(backend.state_dtype(params[i].dtype) for i in keep).items():
        indices = [keep[k] for k in indices]
        width = max(1, VECTOR_BYTES // _itemsize(dtype))
        offsets, cursor, sizes = [], 0, []
        for i in indices:
            size = int(params[i].size) if own[i] else math.prod(shapes[i])
            if size:
                target = _element_offset(params[i], width) if own[i] else 0
                cursor += (target - cursor) % width
            offsets.append(cursor)
            sizes.append(size)
            cursor += size
        # width - 1 spare elements let the first view start at a 16-byte boundary whatever the allocator returned
        buffer = backend.full_like(params[indices[0]], value, dtype, size=cursor + width - 1)
        start = (-(_element_offset(buffer, width))) % width
        for i, offset, size in zip(indices, offsets, sizes):
            begin = start + offset
            arrays[i] = buffer[begin:begin + size].reshape(params[i].shape if own[i] else shapes[i])
    return arrays


def slot_arrays(backend, params, slot, hyper) -> list:
    """A slot's fresh arrays, one per param (None where the param keeps no such slot: fastopt.specs.Slot.shape)."""
    value = slot.init(hyper)
    if slot.shape is None:
        return state_arrays(backend, params, value)
    return state_arrays(backend, params, value, [slot.shape_for(p.shape, hyper) for p in params])


def _itemsize(dtype) -> int:
    import numpy as np

    return np.dtype(dtype).itemsize


def check_state(spec, hyper, params, state, backend, names) -> None:
    """As strict as for params: per active slot one writable, C-contiguous array of the backend's kind, state dtype
    and the param's shape; no state array shares memory with a param or another state array."""
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict slot name -> list of arrays (see init_state), got "
                        f"{type(state).__name__}")
    every, every_name = list(params), list(names)
    for slot in spec.active_slots(hyper):
        arrays = state.get(slot.name)
        if arrays is None and slot.name == spec.first_step_slot:
            continue  # created by this (first) step
        if not isinstance(arrays, (list, tuple)) or len(arrays) != len(params):
            raise ValueError(f"state[{slot.name!r}]: expected a list of {len(params)} arrays, one per param")
        for i, (p, s, name) in enumerate(zip(params, arrays, names)):
            where = f"state[{slot.name!r}][{i}]"
            want = backend.state_dtype(p.dtype)
            shape = slot.shape_for(p.shape, hyper)
            if shape is None or s is None:   # shaped state: this param keeps no such slot (or should keep one)
                if shape is not None or s is not None:
                    raise ValueError(f"{where}: expected {'None' if shape is None else f'an array of shape {shape}'}"
                                     f" for {name} of shape {tuple(p.shape)}, got "
                                     f"{'None' if s is None else type(s).__name__}")
                continue
            if not backend.owns(s):
                raise TypeError(f"{where}: expected an array the {backend.name} backend updates, got "
                                f"{type(s).__name__}")
            if s.dtype != want:
                raise TypeError(f"{where}: expected dtype {want} for {name}, got {s.dtype}")
            if tuple(s.shape) != shape:
                raise ValueError(f"{where}: expected shape {shape} for {name} of shape {tuple(p.shape)}, got "
                                 f"{tuple(s.shape)}")
            if not _is_contiguous(s):
                raise ValueError(f"{where}: expected a C-contiguous array")
            _check_writable(s, where, "state")
            every.append(s)
            every_name.append(where)
    _check_disjoint(every, every_name)


# ---- the update -----------------------------------------------------------------------------------------------------

class FusedUpdate:
    """A prepared update of a fixed list of params and their state: one backend plan per dtype."""

    def __init__(self, spec: OptimizerSpec, params, state: dict, hyper: dict, backend, capturable_step=None):
        self.spec, self.backend = spec, backend
        self.flags = spec.flags(hyper)
        by_dtype = indices_by(p.dtype for p in params)
        self.plans = []
        for indices in by_dtype.values():
            slots = {s.name: ([state[s.name][i] for i in indices] if s.active(hyper) else None) for s in spec.slots}
            plan = backend.prepare(spec, [params[i] for i in indices], slots, self.flags)
            self.plans.append((None if len(by_dtype) == 1 else indices, plan))
        # capturable (cuda backend, Optimizer(capturable=True)): the step count (after `capturable_step` steps), the
        # hyperparameters and the kernel scalars live in device memory; see fastopt/backends/cuda.py.
        self.capturable = capturable_step is not None
        if self.capturable:
            for _, plan in self.plans:
                plan.make_capturable(hyper, capturable_step)

    def run(self, grads, hyper: dict, step: int, grad_scale=None, grad_factor=None, host=None):
        """One step. `grad_scale` (AMP) divides and `grad_factor` (clipping) multiplies the gradients inside the
        fused update (the gradient arrays are left as they are); None: not applied. A spec with host state needs
        `host`, the values before this step that every param of this update shares; returns those after it (the
        caller stores them), else None."""
        if self.capturable:   # `step` is counted on the device; changed hyperparameters are written there first
            for indices, plan in self.plans:
                plan.set_hyper(hyper)
                plan.run_capturable(grads if indices is None else [grads[i] for i in indices])
            return None
        if self.spec.advance is None:
            scalars, after = self.spec.scalars(hyper, step), None
        elif host is None:
            raise TypeError(f"{self.spec.name} keeps host state {[h.name for h in self.spec.host_state]}: "
                            "FusedUpdate.run needs host=")
        else:
            scalars, after = self.spec.advance(hyper, step, host)
        if grad_scale is None and grad_factor is None:
            for indices, plan in self.plans:
                plan.run(grads if indices is None else [grads[i] for i in indices], scalars)
            return after
        for indices, plan in self.plans:
            plan.run(grads if indices is None else [grads[i] for i in indices], scalars, grad_scale, grad_factor)
        return after

    def reduce_grads(self, grads, op: str, power: float = 2.0, grad_scale=None) -> list:
        """Per gradient, in the order of `grads`, the reduction `op` (fastopt.reference.REDUCTIONS) of the gradient
        as the update sees it (divided by grad_scale when given): one multi-tensor pass per dtype."""
        values: list = [None] * len(grads)
        for indices, plan in self.plans:
            part = plan.reduce_grads(grads if indices is None else [grads[i] for i in indices], op, power, grad_scale)
            for k, v in enumerate(part):
                values[k if indices is None else indices[k]] = v
        return values


class _Prepared:
    """A cached FusedUpdate with the arrays it was built for (held, so their ids stay theirs while cached) and the
    grads last checked against them."""

    def __init__(self, params, held, update, backend, grads, grad_views):
        self.params, self.held, self.update, self.backend = params, held, update, backend
        self.grads, self.grad_views = grads, grad_views

    def holds(self, params, state) -> bool:
        """True when `params` and every active slot in `state` are the very arrays this was prepared for."""
        if len(params) != len(self.params) or not all(map(operator.is_, params, self.params)):
            return False
        for name, arrays in self.held:
            current = state.get(name)
            if current is None or len(current) != len(arrays) or not all(map(operator.is_, current, arrays)):
                return False
        return True

    def with_grads(self, grads) -> _Prepared:
        """A copy remembering other (checked) grads; the cached one stays as it was until the step has run."""
        return _Prepared(self.params, self.held, self.update, self.backend, grads,
                         list(map(self.backend.as_array, grads)))


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 8
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Drop every prepared update (and the references to arrays it holds)."""
    with _cache_lock:
        _CACHE.clear()


def update(optimizer, params, grads, state, *, step: int | None = None, backend=None, capturable: bool = False,
           **hyper) -> None:
    """One step of `optimizer` on `params` (updated in place) and `state` (from `init_state`, updated in place).

    capturable=True (cuda backend; see fastopt/backends/cuda.py): the step count, hyperparameters and kernel scalars
    live in device memory, so the call can be captured in a CUDA graph and replayed. The step count starts on the
    device at the first call with these arrays (`step` - 1 steps before it) and counts there from then on: later
    calls' `step` is not read (a replayed graph passes none); changed hyperparameters are written to the device."""
    spec = get_spec(optimizer)
    if not isinstance(capturable, bool):
        raise TypeError(f"capturable: expected True or False, got {capturable!r}")
    hyper, flags = _validated(spec, hyper)
    params, grads = list(params), list(grads)
    if step is not None and (type(step) is not int or step < 1):
        raise ValueError(f"step: expected an int >= 1 (the number of this step), got {step!r}")
    if step is None and spec.counts_steps:
        raise TypeError(f"{spec.name}: step is required (an int >= 1, the number of this step)")
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict slot name -> list of arrays (see init_state), got "
                        f"{type(state).__name__}")
    if not params:
        raise ValueError("params is empty: an optimizer needs at least one array")
    host = _host_values(spec, state, len(params))
    creates = False
    if spec.first_step_slot is not None:
        creates = state.get(spec.first_step_slot) is None and \
            any(s.name == spec.first_step_slot for s in spec.active_slots(hyper))
        step = 1 if creates else 2  # torch: the first step is the one that creates the buffer
    # A short key finds the candidate; identity checks against the arrays it holds confirm it.
    key = (spec.name, flags, backend, dispatch.environment_backend(), len(params), id(params[0]), capturable)
    prepared = _CACHE.get(key)
    if prepared is None or not prepared.holds(params, state):
        prepared = _prepare(spec, hyper, params, grads, state, backend, creates,
                            capturable_step=step - 1 if capturable else None)
    elif len(grads) != len(prepared.grads) or not all(map(operator.is_, grads, prepared.grads)):
        check_grads(grads, prepared.params, "params[{}]".format, "grads[{}]".format)
        prepared = prepared.with_grads(grads)
    if host is None:
        prepared.update.run(prepared.grad_views, hyper, step)
    else:
        after = _run_with_host(spec, prepared, hyper, step, host)
        for k, h in enumerate(spec.host_state):  # the kernels ran: now the values after the step
            state[h.name] = [values[k] for values in after]
    if creates:
        state[spec.first_step_slot] = list(dict(prepared.held)[spec.first_step_slot])
    with _cache_lock:  # the step ran: now remember what it checked
        _CACHE[key] = prepared
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def host_float(value, where: str) -> float:
    """A host state value as a finite Python float: a real number, a NumPy scalar, or a 0-d array or tensor."""
    item = value
    if hasattr(item, "shape") and hasattr(item, "item"):
        if tuple(item.shape) != ():
            raise ValueError(f"{where}: expected a number or a 0-d array, got shape {tuple(item.shape)}")
        item = item.item()
    if isinstance(item, bool) or not isinstance(item, numbers.Real):
        raise TypeError(f"{where}: expected a real number, got {type(value).__name__}")
    out = float(item)
    if not math.isfinite(out):
        raise ValueError(f"{where}: expected a finite number, got {out!r}")
    return out


def _host_values(spec, state, n: int):
    """Per param, the tuple of its host state values (checked), or None for a spec without host state."""
    if not spec.host_state:
        return None
    columns = []
    for h in spec.host_state:
        values, where = state.get(h.name), f"state[{h.name!r}]"
        if not isinstance(values, (list, tuple)) or len(values) != n:
            raise ValueError(f"{where}: expected a list of {n} floats, one per param (see init_state)")
        columns.append([host_float(v, f"{where}[{i}]") for i, v in enumerate(values)])
    return list(zip(*columns))


def _run_with_host(spec, prepared, hyper, step, host) -> list:
    """Run the step, params that share host values together (all of them, usually); the values after, per param."""
    by_host = indices_by(host)
    if len(by_host) == 1:
        return [prepared.update.run(prepared.grad_views, hyper, step, host=host[0])] * len(host)
    backend, held = prepared.backend, dict(prepared.held)
    runs = []  # every update prepared before any runs
    for values, indices in by_host.items():
        slots = {name: [None if arrays[i] is None else backend.as_array(arrays[i]) for i in indices]
                 for name, arrays in held.items()}
        update = FusedUpdate(spec, [backend.as_array(prepared.params[i]) for i in indices], slots, hyper, backend)
        runs.append((values, indices, update))
    after: list = [None] * len(host)
    for values, indices, update in runs:
        new = update.run([prepared.grad_views[i] for i in indices], hyper, step, host=values)
        for i in indices:
            after[i] = new
    return after


_LAST_HYPER: dict = {}  # spec name -> (names, values, validated hyper, flags) of the last call


def _validated(spec, hyper: dict):
    """with_defaults(spec, hyper) and its flags, re-validated only when a value differs (by identity) from the last
    call's: an optax-style loop passes the same hyperparameters every step."""
    names, values = tuple(hyper), tuple(hyper.values())
    last = _LAST_HYPER.get(spec.name)
    if last is not None and last[0] == names and all(map(operator.is_, values, last[1])) \
            and list not in map(type, values):
        return last[2], last[3]
    full = with_defaults(spec, hyper)
    flags = spec.flags(full)
    _LAST_HYPER[spec.name] = (names, values, full, flags)
    return full, flags


def _prepare(spec, hyper, params, grads, state, requested, creates, capturable_step=None) -> _Prepared:
    backend = dispatch.choose_backend(params, requested)
    if capturable_step is not None:
        from fastopt import cuda_build
        if backend.name != "cuda":
            raise ValueError(f"capturable=True needs the cuda backend (CUDA graphs), got backend {backend.name!r}")
        if not cuda_build.is_capturable(spec.kernel):
            raise ValueError(f"capturable=True: {spec.class_name} has no capturable step")
    names = [f"params[{i}]" for i in range(len(params))]
    check_grads(grads, params, names, "grads[{}]".format)
    arrays = [backend.as_array(p) for p in params]
    check_params(arrays, backend, names)
    check_state(spec, hyper, arrays, state, backend, names)
    slots = dict(state)
    if creates:  # the first step's buffer (zeros: the first step's scalars ignore it); joins `state` once it ran
        slot = next(s for s in spec.slots if s.name == spec.first_step_slot)
        slots[spec.first_step_slot] = state_arrays(backend, arrays, 0.0, None if slot.shape is None else
                                                   [slot.shape_for(a.shape, hyper) for a in arrays])
    active = spec.active_slots(hyper)
    views = {s.name: [None if a is None else backend.as_array(a) for a in slots[s.name]] for s in active}
    held = [(s.name, list(slots[s.name])) for s in active]  # copies: a list edited in place must not match
    update = FusedUpdate(spec, arrays, views, hyper, backend, capturable_step=capturable_step)
    return _Prepared(params, held, update, backend, grads, [backend.as_array(g) for g in grads])


def _named(spec: OptimizerSpec):
    def step_function(params, grads, state, *, step=None, backend=None, **hyper):
        update(spec, params, grads, state, step=step, backend=backend, **hyper)
    step_function.__name__ = step_function.__qualname__ = spec.name
    step_note = ("no step count: the first call (no buffer in state yet) is the first step, as in torch"
                 if not spec.counts_steps else "step: the number of this step, from 1")
    step_function.__doc__ = (f"One {spec.name} step, in place. Hyperparameters and defaults: {spec.defaults}; "
                             f"state slots: {[s.name for s in spec.slots]} (see init_state); {step_note}.")
    return step_function


globals().update({name: _named(spec) for name, spec in SPECS.items()})
__all__ = ["FusedUpdate", "clear_cache", "init_state", "update", *SPECS]
