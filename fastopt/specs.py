"""Every optimizer, declared once.

A declaration names the optimizer's hyperparameters (defaults and checks), its state slots (initial value and when
they exist), the boolean flags its kernels are specialised on, and the run-time scalars the kernels receive for a
given step. Every layer (the classes, the functional API, the backends, the tests, the benchmarks) reads these
declarations and nothing else, so adding an optimizer means registering one `OptimizerSpec` (`register`, in its own
module under fastopt/optimizers/), its reference function, its two element functions, its record and its golden data
(docs/adding-an-optimizer.md); fastopt.codegen generates the kernels' argument lists, drivers and entry points.

Kernel calling convention, shared by the reference, the Numba kernels and the CUDA kernels:

    kernel(param, grad, *slots, *scalars, *flags)

`slots` are all of `spec.slots` in declaration order (an inactive slot is passed as a placeholder and never
touched), `scalars` is `spec.scalars(hyper, step)` and `flags` is `spec.flags(hyper)`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# ---- hyperparameter checks: each returns None when the value is fine, else what was expected ----------------------

def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def at_least_zero(value):
    return None if _real(value) and value >= 0 else "a number >= 0"


def above_zero(value):
    return None if _real(value) and value > 0 else "a number > 0"


def in_unit_interval(value):
    return None if _real(value) and 0 <= value <= 1 else "a number in [0, 1]"


def finite(value):
    return None if _real(value) and math.isfinite(value) else "a finite number"


def boolean(value):
    return None if isinstance(value, bool) else "True or False"


def beta_pair(value):
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(_real(b) and 0 <= b < 1 for b in value))
    return None if ok else "a pair (beta1, beta2) of numbers in [0, 1)"


@dataclass(frozen=True)
class Hyper:
    name: str
    default: Any
    check: Callable[[Any], str | None]


def _zero(hyper) -> float:
    return 0.0


def _always(hyper) -> bool:
    return True


def _no_flags(hyper) -> tuple:
    return ()


def _no_cross_check(hyper):
    return None


# Specs are built from module-level functions only (no lambdas), so anything holding one pickles and deep-copies;
# a registered spec also pickles by name (see OptimizerSpec.__reduce__).

@dataclass(frozen=True)
class Slot:
    """A state array, filled with `init(hyper)` when first needed, for the params whose hyperparameters make it
    `active`.

    Shaped state (kernel contract v2): `shape` None (the default) gives the slot its param's shape; else
    `shape(param_shape, hyper)`, a module-level function, gives this param's slot shape (a tuple), or None when
    the param keeps no such slot (Adafactor: `row_var` and `col_var` for params of 2 or more dimensions,
    `variance` for the others). The layers that allocate, check, save and load state ask `shape_for`, so a slot
    absent for some params is a None in its per-param list, and none of them special-cases an optimizer."""
    name: str
    init: Callable[[dict], float] = _zero
    active: Callable[[dict], bool] = _always
    shape: Callable[[tuple, dict], tuple | None] | None = None

    def shape_for(self, param_shape, hyper: dict) -> tuple | None:
        """This slot's shape for a param of `param_shape` under `hyper`, None when the param has no such slot."""
        if not self.active(hyper):
            return None
        if self.shape is None:
            return tuple(param_shape)
        out = self.shape(tuple(param_shape), hyper)
        return None if out is None else tuple(int(n) for n in out)


@dataclass(frozen=True)
class HostScalar:
    """A per-param float kept on the host between steps, for state that is not a function of (hyper, step) alone
    (torch's 0-d state tensors: NAdam's `mu_product`, ASGD's `eta` and `mu`). `name` is the oracle's state name (the
    state_dict entry); `init(hyper)` is its value before the first step, taken with that step's hyperparameters."""
    name: str
    init: Callable[[dict], float] = _zero


def replay_scalars(hyper: dict, step: int, host_state: tuple[HostScalar, ...], advance: Callable) -> tuple:
    """The kernel scalars of step `step` for a spec with host state, had these hyperparameters held since step 1
    (host values from `init`, advanced once per step). What such a spec gives as its `scalars`, so code that knows
    only (hyper, step), such as a test replaying a run with fixed hyperparameters, still gets the right numbers;
    the classes and the functional API carry the real values instead."""
    try:
        key = (advance, tuple(sorted(hyper.items())))
        start, host = _REPLAYED.get(key, (1, None))
    except TypeError:   # an unhashable value (betas as a list): no memo
        key, start, host = None, 1, None
    if host is None or start > step:
        start, host = 1, tuple(h.init(hyper) for h in host_state)
    for earlier in range(start, step):
        host = advance(hyper, earlier, host)[1]
    scalars, after = advance(hyper, step, host)
    if key is not None:
        _REPLAYED[key] = (step + 1, after)   # a run asks for steps 1, 2, 3, ...: each costs one advance
        if len(_REPLAYED) > 64:
            _REPLAYED.pop(next(iter(_REPLAYED)), None)
    return scalars


_REPLAYED: dict = {}   # (advance, hyper) -> (the next step, host values before it) of the last replay


@dataclass(frozen=True)
class Reduction:
    """A per-tensor reduction the update reads (kernel contract v2): `op` (sumsq, sum, nonfinite or nonzero, summed
    in lanes; maxabs, the largest |x| with NaN winning; or count, the number of elements) of `of`: "param", "grad"
    (as the update sees it: unscaled and clipped), a slot's name, or "update" (the family's `update_value`, computed
    without writing). Computed before the update, in float64, in fastopt.reference.reduce_tensor's order."""
    op: str
    of: str


def _no_tensor_scalars(scalars, reduced, dtype) -> tuple:
    return ()


@dataclass(frozen=True)
class OptimizerSpec:
    name: str                                   # the functional name, e.g. "adam"
    class_name: str                             # the public class, e.g. "Adam"
    kernel: str                                 # the kernel family, e.g. "adam" for Adam and AdamW
    hypers: tuple[Hyper, ...]
    slots: tuple[Slot, ...]
    scalar_names: tuple[str, ...]               # names of what `scalars` returns, in kernel order
    scalars: Callable[[dict, int], tuple]       # (hyper, step) -> run-time kernel scalars, computed in float64
    flag_names: tuple[str, ...] = ()
    flags: Callable[[dict], tuple] = _no_flags
    cross_check: Callable[[dict], str | None] = _no_cross_check  # a rule joining several hyperparameters
    # torch's SGD keeps no step count: its first step is the one that creates the momentum buffer. For such a spec
    # `first_step_slot` names that slot; the step passed to `scalars` is then 1 exactly when the slot is new.
    first_step_slot: str | None = None
    # Host scalar state (see HostScalar), with `advance(hyper, step, host) -> (scalars, host after)`: a pure function
    # from this param's host values before step `step` (a tuple, in host_state order) to the kernel scalars and the
    # values after it. The layers above keep the values per param and store them only once the step has run, so a
    # failed step leaves them as they were. Such a spec's `scalars` is usually `replay_scalars` over the same two.
    host_state: tuple[HostScalar, ...] = ()
    advance: Callable[[dict, int, tuple], tuple] | None = None
    # Per-tensor reductions and the per-tensor scalars made of them (kernel contract v2): `tensor_scalars(scalars,
    # reduced, dtype)` maps this step's scalars and one tensor's reduced values (floats, in `reductions` order) to
    # that tensor's scalars (in `tensor_scalar_names` order), which the element function receives after `scalars`:
    # kernel(param, grad, *slots, *scalars, *tensor_scalars, *flags).
    reductions: tuple[Reduction, ...] = ()
    tensor_scalar_names: tuple[str, ...] = ()
    tensor_scalars: Callable[[tuple, tuple, Any], tuple] = _no_tensor_scalars

    @property
    def counts_steps(self) -> bool:
        """True when the state has a `step` entry (every torch optimizer but SGD)."""
        return self.first_step_slot is None

    def __reduce__(self):
        if SPECS.get(self.name) is self:  # a registered spec pickles by name: the copy is the very same object
            return (_registered_spec, (self.name,))
        return super().__reduce__()

    @property
    def defaults(self) -> dict:
        return {h.name: h.default for h in self.hypers}

    def validate(self, hyper: dict) -> None:
        """Raise TypeError/ValueError naming the first bad hyperparameter; return None when all are fine."""
        known = {h.name for h in self.hypers}
        for key in hyper:
            if key not in known and key not in ("params", "param_names"):
                raise TypeError(f"{self.name}: unknown hyperparameter {key!r}; expected one of {sorted(known)}")
        for h in self.hypers:
            value = hyper[h.name]
            expected = h.check(value)
            if expected is not None:
                kind = TypeError if h.check is boolean or not _value_like(value) else ValueError
                raise kind(f"{self.name}: invalid {h.name}={value!r}; expected {expected}")
        problem = self.cross_check(hyper)
        if problem:
            raise ValueError(f"{self.name}: {problem}")

    def normalize(self, hyper: dict) -> dict:
        """Validated hyperparameters as the kernels take them: Python floats (a Fraction or NumPy scalar lr becomes
        a float once, here), bools, and betas as a tuple of floats."""
        out = {}
        for h in self.hypers:
            value = hyper[h.name]
            if h.check is boolean:
                out[h.name] = value
            elif isinstance(value, (tuple, list)):   # None stays None (Adafactor's eps1: the dtype's eps)
                out[h.name] = tuple(None if v is None else float(v) for v in value)
            else:
                out[h.name] = float(value)
        return out

    def active_slots(self, hyper: dict) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.active(hyper))


# Every optimizer by its functional name. Filled by `register`: the six above here, each later optimizer by the
# `register(...)` call in its own module under fastopt/optimizers/ (imported at the end of this file), so adding one
# edits no shared line.
SPECS: dict[str, OptimizerSpec] = {}


# Scalars every generated kernel takes after the declaration's (fastopt.codegen.GRAD_SCALARS), and names the generated
# code uses itself: no slot, scalar or flag may take them.
RESERVED_SCALARS = ("unscale_by", "clip_coef")
_RESERVED = {*RESERVED_SCALARS, "p", "g", "gv", "i", "zero", "new_p", "chunks", "table", "t", "a", "b", "c", "span",
             "element", "driver", "prange", "njit", "n", "s", "op", "param", "grad",
             "update_value", "ts", "out", "lanes", "u", "np", "update"}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    """Add `spec` to SPECS (and so to every layer: classes, functional API, backends, tests); returns it."""
    if not isinstance(spec, OptimizerSpec):
        raise TypeError(f"register takes an OptimizerSpec, got {type(spec).__name__}")
    names = [s.name for s in spec.slots] + list(spec.scalar_names) + list(spec.tensor_scalar_names) + \
        list(spec.flag_names)
    for name in names + [spec.kernel]:
        if not name.isidentifier() or name in _RESERVED or name.startswith("fo_") or name.startswith("active_"):
            raise ValueError(f"{spec.name}: {name!r} cannot name a slot, scalar, flag or kernel family (an identifier, "
                             f"none of {sorted(_RESERVED)}, no fo_ prefix)")
    if len(set(names)) != len(names):
        raise ValueError(f"{spec.name}: slot, scalar and flag names must all differ, got {names}")
    if spec.name in SPECS:
        raise ValueError(f"an optimizer named {spec.name!r} is already registered")
    if len(spec.scalar_names) == 0:
        raise ValueError(f"{spec.name}: declare at least one scalar (it carries the compute dtype to the kernels)")
    if bool(spec.host_state) != (spec.advance is not None) or (spec.host_state and not spec.counts_steps):
        raise ValueError(f"{spec.name}: host_state and advance come together, with a step count")
    for r in spec.reductions:
        if r.op not in ("sumsq", "sum", "maxabs", "nonfinite", "nonzero", "count") or \
                r.of not in ("param", "grad", "update", *(s.name for s in spec.slots)):
            raise ValueError(f"{spec.name}: reduction {r}: op must be sumsq, sum, maxabs, nonfinite, nonzero or count, "
                             "of param, grad, update or a slot")
    if bool(spec.reductions) != bool(spec.tensor_scalar_names):
        raise ValueError(f"{spec.name}: reductions and tensor_scalar_names come together")
    SPECS[spec.name] = spec
    return spec


def _registered_spec(name: str) -> OptimizerSpec:
    return SPECS[name]


def _value_like(value) -> bool:
    return _real(value) or isinstance(value, (tuple, list))


def _grad_sign(hyper) -> float:
    return -1.0 if hyper["maximize"] else 1.0


# ---- SGD (torch.optim.SGD) ----------------------------------------------------------------------------------------

def _sgd_scalars(h, step):
    # torch copies the gradient into a fresh buffer on the first step; with a zero buffer, decay 0 and scale 1
    # give exactly that, so the kernel needs no first-step branch.
    first = step == 1
    return (h["lr"], _grad_sign(h), h["weight_decay"], h["momentum"],
            0.0 if first else h["momentum"], 1.0 if first else 1.0 - h["dampening"])


def _has_momentum(h) -> bool:
    return h["momentum"] != 0


def _sgd_flags(h) -> tuple:
    return (h["momentum"] != 0, h["nesterov"])


def _sgd_cross_check(h):
    if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
        return "nesterov=True requires momentum > 0 and dampening = 0"
    return None


SGD = OptimizerSpec(
    name="sgd", class_name="SGD", kernel="sgd",
    hypers=(Hyper("lr", 1e-3, at_least_zero), Hyper("momentum", 0.0, at_least_zero),
            Hyper("dampening", 0.0, finite), Hyper("weight_decay", 0.0, at_least_zero),
            Hyper("nesterov", False, boolean), Hyper("maximize", False, boolean)),
    slots=(Slot("momentum_buffer", active=_has_momentum),),
    scalar_names=("lr", "grad_sign", "weight_decay", "momentum", "buffer_decay", "grad_scale"),
    scalars=_sgd_scalars,
    flag_names=("use_momentum", "nesterov"),
    flags=_sgd_flags,
    cross_check=_sgd_cross_check,
    first_step_slot="momentum_buffer",
)


# ---- Adagrad (torch.optim.Adagrad) --------------------------------------------------------------------------------

def _initial_accumulator(h) -> float:
    return h["initial_accumulator_value"]


def _adagrad_scalars(h, step):
    return (h["lr"] / (1 + (step - 1) * h["lr_decay"]), _grad_sign(h), h["weight_decay"], h["eps"])


ADAGRAD = OptimizerSpec(
    name="adagrad", class_name="Adagrad", kernel="adagrad",
    hypers=(Hyper("lr", 1e-2, at_least_zero), Hyper("lr_decay", 0.0, at_least_zero),
            Hyper("weight_decay", 0.0, at_least_zero), Hyper("initial_accumulator_value", 0.0, at_least_zero),
            Hyper("eps", 1e-10, above_zero), Hyper("maximize", False, boolean)),
    slots=(Slot("sum", init=_initial_accumulator),),
    scalar_names=("clr", "grad_sign", "weight_decay", "eps"),
    scalars=_adagrad_scalars,
)


# ---- RMSprop (torch.optim.RMSprop) --------------------------------------------------------------------------------

def _rmsprop_momentum(h) -> bool:
    return h["momentum"] > 0


def _centered(h) -> bool:
    return h["centered"]


def _rmsprop_scalars(h, step):
    return (h["lr"], _grad_sign(h), h["weight_decay"], h["alpha"], 1.0 - h["alpha"], h["eps"], h["momentum"])


def _rmsprop_flags(h) -> tuple:
    return (h["centered"], h["momentum"] > 0)


RMSPROP = OptimizerSpec(
    name="rmsprop", class_name="RMSprop", kernel="rmsprop",
    hypers=(Hyper("lr", 1e-2, at_least_zero), Hyper("alpha", 0.99, in_unit_interval), Hyper("eps", 1e-8, above_zero),
            Hyper("weight_decay", 0.0, at_least_zero), Hyper("momentum", 0.0, at_least_zero),
            Hyper("centered", False, boolean), Hyper("maximize", False, boolean)),
    slots=(Slot("square_avg"),
           Slot("momentum_buffer", active=_rmsprop_momentum),
           Slot("grad_avg", active=_centered)),
    scalar_names=("lr", "grad_sign", "weight_decay", "alpha", "one_minus_alpha", "eps", "momentum"),
    scalars=_rmsprop_scalars,
    flag_names=("centered", "use_momentum"),
    flags=_rmsprop_flags,
)


# ---- Adadelta (torch.optim.Adadelta) ------------------------------------------------------------------------------

def _adadelta_scalars(h, step):
    return (h["lr"], _grad_sign(h), h["weight_decay"], h["rho"], 1.0 - h["rho"], h["eps"])


ADADELTA = OptimizerSpec(
    name="adadelta", class_name="Adadelta", kernel="adadelta",
    hypers=(Hyper("lr", 1.0, at_least_zero), Hyper("rho", 0.9, in_unit_interval), Hyper("eps", 1e-6, above_zero),
            Hyper("weight_decay", 0.0, at_least_zero), Hyper("maximize", False, boolean)),
    slots=(Slot("square_avg"), Slot("acc_delta")),
    scalar_names=("lr", "grad_sign", "weight_decay", "rho", "one_minus_rho", "eps"),
    scalars=_adadelta_scalars,
)


# ---- Adam and AdamW (torch.optim.Adam / AdamW): one kernel, weight decay coupled or decoupled ----------------------

def _adam_scalars(h, step):
    beta1, beta2 = h["betas"]
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    # 1 - beta and the bias corrections come from the host in float64: computing them in fp32 in a kernel drifts.
    # ** 0.5 as torch computes it (pow, not math.sqrt: they differ by 1 ulp at times in float64).
    return (h["lr"], _grad_sign(h), h["weight_decay"], beta1, 1.0 - beta1, beta2, 1.0 - beta2, h["eps"],
            h["lr"] / bias_correction1, bias_correction2 ** 0.5, 1.0 - h["lr"] * h["weight_decay"])


def _amsgrad(h) -> bool:
    return h["amsgrad"]


def _adam_flags(h) -> tuple:
    return (h["amsgrad"], False)


def _adamw_flags(h) -> tuple:
    return (h["amsgrad"], True)


def _adam_like(name, class_name, weight_decay, decoupled):
    return OptimizerSpec(
        name=name, class_name=class_name, kernel="adam",
        hypers=(Hyper("lr", 1e-3, at_least_zero), Hyper("betas", (0.9, 0.999), beta_pair),
                Hyper("eps", 1e-8, above_zero), Hyper("weight_decay", weight_decay, at_least_zero),
                Hyper("amsgrad", False, boolean), Hyper("maximize", False, boolean)),
        slots=(Slot("exp_avg"), Slot("exp_avg_sq"), Slot("max_exp_avg_sq", active=_amsgrad)),
        scalar_names=("lr", "grad_sign", "weight_decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2",
                      "eps", "step_size", "bias_correction2_sqrt", "decay_factor"),
        scalars=_adam_scalars,
        flag_names=("amsgrad", "decoupled"),
        flags=_adamw_flags if decoupled else _adam_flags,
    )


ADAM = _adam_like("adam", "Adam", 0.0, decoupled=False)
ADAMW = _adam_like("adamw", "AdamW", 1e-2, decoupled=True)


for _spec in (SGD, ADAGRAD, RMSPROP, ADADELTA, ADAM, ADAMW):
    register(_spec)

# Named shorthands: the classic chapters' names for SGD with momentum (public class name -> spec, new defaults).
SHORTHANDS: dict[str, tuple[OptimizerSpec, dict]] = {
    "Momentum": (SGD, {"momentum": 0.9}),
    "Nesterov": (SGD, {"momentum": 0.9, "nesterov": True}),
}


def _load_optimizer_modules() -> None:
    """Import every module of fastopt/optimizers (sorted by name): each declares and registers its optimizers."""
    import importlib
    import pkgutil

    from fastopt import optimizers
    for info in sorted(pkgutil.iter_modules(optimizers.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"fastopt.optimizers.{info.name}")


_load_optimizer_modules()
