"""The functional layer: validate, allocate state, group tensors by dtype, and hand them to a backend.

    state = fastopt.functional.init_state("adam", params, lr=1e-3)
    for step in range(1, n + 1):
        fastopt.functional.adam(params, grads, state, step=step, lr=1e-3)

`update` (and one function per optimizer, named after it) is a one-shot call; `FusedUpdate` keeps what the backend
prepared (tables, typed lists, compiled kernels) from one step to the next, and is what `fastopt.optim` uses.
Everything is checked before any kernel runs, so bad input raises and changes nothing.
"""

from __future__ import annotations

import itertools

from fastopt import dispatch
from fastopt.specs import SPECS, OptimizerSpec


def get_spec(optimizer) -> OptimizerSpec:
    if isinstance(optimizer, OptimizerSpec):
        return optimizer
    if optimizer not in SPECS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {sorted(SPECS)}")
    return SPECS[optimizer]


def with_defaults(spec: OptimizerSpec, hyper: dict) -> dict:
    """The hyperparameters with defaults filled in, validated."""
    full = {**spec.defaults, **hyper}
    spec.validate(full)
    return full


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


def check_params(params, backend, names) -> None:
    """Floating point of a dtype the backend supports, writable, C-contiguous, and no memory shared between two."""
    ranges = []
    for name, p in zip(names, params):
        if not backend.owns(p):
            raise TypeError(f"{name}: expected an array the {backend.name} backend updates, got {type(p).__name__}")
        try:
            backend.state_dtype(p.dtype)  # the backend knows which dtypes it updates (cuda: bfloat16 as uint16 bits)
        except TypeError as error:
            raise TypeError(f"{name}: expected a floating-point array the {backend.name} backend updates: "
                            f"{error}") from None
        if not _is_contiguous(p):
            raise ValueError(f"{name}: expected a C-contiguous array (fused kernels update memory in place); "
                             "pass a contiguous copy and train that")
        memory = _memory_range(p)
        if memory is not None:
            if memory[2]:
                raise ValueError(f"{name}: the array is read-only; an optimizer must update it in place")
            if p.size:
                ranges.append((memory[0], memory[1], name))
    ranges.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(ranges):
        if start < end:
            raise ValueError(f"{first} and {second} share memory: each parameter must be its own array")


def check_grads(grads, params, names, grad_names) -> None:
    """One array per param, of the param's array type, shape and dtype, and C-contiguous.

    `names` and `grad_names` are sequences or callables index -> name: names are only built when something is wrong,
    because this runs every step over every tensor.
    """
    if len(grads) != len(params):
        raise ValueError(f"grads: expected {len(params)} arrays (one per param), got {len(grads)}")
    for i, (p, g) in enumerate(zip(params, grads)):
        if type(g) is not type(p) or g.shape != p.shape or g.dtype != p.dtype or not _is_contiguous(g):
            _explain_bad_grad(p, g, _name(names, i), _name(grad_names, i))


def _name(names, i):
    return names(i) if callable(names) else names[i]


def _explain_bad_grad(p, g, pname, gname):
    if g is None:
        raise TypeError(f"{gname}: gradient is None; every param needs a gradient")
    if type(g) is not type(p):
        raise TypeError(f"{gname}: expected a {type(p).__name__} like {pname}, got {type(g).__name__}")
    if g.shape != p.shape:
        raise ValueError(f"{gname}: expected shape {tuple(p.shape)} like {pname}, got {tuple(g.shape)}")
    if g.dtype != p.dtype:
        raise TypeError(f"{gname}: expected dtype {p.dtype} like {pname}, got {g.dtype}")
    raise ValueError(f"{gname}: expected a C-contiguous array")


# ---- state ----------------------------------------------------------------------------------------------------------

def init_state(optimizer, params, backend=None, **hyper) -> dict:
    """Fresh state: slot name -> list of arrays (one per param), for the slots these hyperparameters use."""
    spec = get_spec(optimizer)
    hyper = with_defaults(spec, hyper)
    backend = dispatch.choose_backend(list(params), backend)
    arrays = [backend.as_array(p) for p in params]
    return {slot.name: state_arrays(backend, arrays, slot.init(hyper)) for slot in spec.active_slots(hyper)}


def state_arrays(backend, params, value) -> list:
    """One state array per param, filled with `value`: views of one contiguous buffer per state dtype, in params'
    order. Params that are views of one buffer (`fastopt.flatten`) then have state laid out the same way, and a
    backend can update the whole group as one span of memory (the cuda backend's flat path)."""
    arrays: list = [None] * len(params)
    for dtype, indices in indices_by(backend.state_dtype(p.dtype) for p in params).items():
        buffer = backend.full_like(params[indices[0]], value, dtype, size=sum(int(params[i].size) for i in indices))
        offset = 0
        for i in indices:
            n = int(params[i].size)
            arrays[i] = buffer[offset:offset + n].reshape(params[i].shape)
            offset += n
    return arrays


def check_state(spec, hyper, params, state, backend, names) -> None:
    for slot in spec.active_slots(hyper):
        arrays = state.get(slot.name)
        if arrays is None or len(arrays) != len(params):
            raise ValueError(f"state[{slot.name!r}]: expected {len(params)} arrays, one per param")
        for p, s, name in zip(params, arrays, names):
            if not backend.owns(s) or s.shape != p.shape or s.dtype != backend.state_dtype(p.dtype) \
                    or not _is_contiguous(s):
                raise ValueError(f"state[{slot.name!r}] for {name}: expected a contiguous "
                                 f"{backend.state_dtype(p.dtype)} array of shape {tuple(p.shape)}")


# ---- the update -----------------------------------------------------------------------------------------------------

class FusedUpdate:
    """A prepared update of a fixed list of params and their state: one backend plan per dtype."""

    def __init__(self, spec: OptimizerSpec, params, state: dict, hyper: dict, backend):
        self.spec, self.backend = spec, backend
        self.flags = spec.flags(hyper)
        by_dtype = indices_by(p.dtype for p in params)
        self.plans = []
        for indices in by_dtype.values():
            slots = {s.name: ([state[s.name][i] for i in indices] if s.active(hyper) else None) for s in spec.slots}
            plan = backend.prepare(spec, [params[i] for i in indices], slots, self.flags)
            self.plans.append((None if len(by_dtype) == 1 else indices, plan))

    def run(self, grads, hyper: dict, step: int) -> None:
        scalars = self.spec.scalars(hyper, step)
        for indices, plan in self.plans:
            plan.run(grads if indices is None else [grads[i] for i in indices], scalars)


def update(optimizer, params, grads, state, *, step: int, backend=None, **hyper) -> None:
    """One step of `optimizer` on `params` (updated in place) and `state` (from `init_state`, updated in place)."""
    spec = get_spec(optimizer)
    hyper = with_defaults(spec, hyper)
    params, grads = list(params), list(grads)
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise ValueError(f"step: expected an int >= 1 (the number of this step), got {step!r}")
    backend = dispatch.choose_backend(params, backend)
    names = [f"params[{i}]" for i in range(len(params))]
    check_grads(grads, params, names, "grads[{}]".format)
    arrays = [backend.as_array(p) for p in params]
    check_params(arrays, backend, names)
    check_state(spec, hyper, arrays, state, backend, names)
    FusedUpdate(spec, arrays, state, hyper, backend).run([backend.as_array(g) for g in grads], hyper, step)


def _named(spec: OptimizerSpec):
    def step_function(params, grads, state, *, step, backend=None, **hyper):
        update(spec, params, grads, state, step=step, backend=backend, **hyper)
    step_function.__name__ = step_function.__qualname__ = spec.name
    step_function.__doc__ = (f"One {spec.name} step, in place. Hyperparameters and defaults: {spec.defaults}; "
                             f"state slots: {[s.name for s in spec.slots]} (see init_state).")
    return step_function


globals().update({name: _named(spec) for name, spec in SPECS.items()})
__all__ = ["update", "init_state", "FusedUpdate", *SPECS]
