"""One record per optimizer: everything the tests, the golden script and the benchmarks need to know about it.

The tests (tests/registry.py, test_backends, test_api, test_golden, test_cuda_host), the golden script
(tests/golden/make_golden.py), the benchmark (fastopt.bench.workloads.CASES) and the convergence study
(benchmarks/convergence/optimizers.py) read these records and nothing else. The six original optimizers are recorded
below; an optimizer added since registers its record with `register_record` in its own module under
fastopt/optimizers/ (docs/adding-an-optimizer.md).

No test library is imported here: `strategy` receives the `hypothesis.strategies` module when a test calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BenchCase:
    """One configuration the benchmark runs: its name on the command line and in results, the fastopt class (also the
    torch.optim class of the baselines), hyperparameters that differ from the defaults, and whether torch.optim
    offers fused=True for it."""
    name: str
    cls: str
    hyper: dict = field(default_factory=dict)
    torch_fused: bool = True


@dataclass(frozen=True)
class ConvergenceEntry:
    """One curve of the convergence study (benchmarks/convergence): its label, the fastopt class, its keyword
    arguments on the MLP and on the toy problem, and its colour."""
    label: str
    cls: str
    mlp: dict
    toy: dict
    color: str


@dataclass(frozen=True)
class GoldenTolerance:
    """A wider tolerance against the golden oracle than tests/tolerances.py's GOLDEN_ULPS, with the reason (e.g. an
    oracle that evaluates in another order). ulps: dtype name -> eps multiples."""
    ulps: dict
    reason: str


@dataclass(frozen=True)
class Record:
    optimizer: str                              # the spec's name (fastopt.specs.SPECS)
    # hypothesis.strategies -> a strategy drawing valid hyperparameter dicts that reach every branch of the kernels
    strategy: Callable[[Any], Any]
    busy: dict                                  # one configuration taking as many kernel branches as possible at once
    # Golden trajectories (tests/golden/make_golden.py): config name -> overrides of the defaults. Together they
    # cover every flag value and give every hyperparameter a non-default value once (tests/test_golden.py checks).
    golden: dict
    # The same at the float extremes (make_golden.MAGNITUDES); the value "tiny" stands for the dtype's smallest eps.
    extreme: dict = field(default_factory=dict)
    # Extreme configurations the oracle cannot judge (optax: XLA on CPU flushes subnormals to zero), drawn and written
    # like `extreme`: tests/test_extremes_unjudged.py runs the cpu backend and the CUDA host build on make_golden's
    # extreme data against the reference, bit for bit, and requires the reference runs to report `extreme_events`
    # (NumPy's floating-point events) so that agreement means something.
    extreme_unjudged: dict = field(default_factory=dict)
    extreme_events: frozenset = frozenset({"overflow", "underflow"})
    # The oracle that writes the golden files: None runs torch.optim.<class_name> (single-tensor path); else a
    # callable(name, hyper, dtype, params0, grads, steps) -> (trajectory, states) as make_golden.run_torch returns.
    oracle: Callable | None = None
    # Extra hyperparameters for the host build's grid of every flag combination (tests/test_cuda_host.py), so that
    # the grid also reaches branches the flags alone do not (e.g. SGD's dampening).
    cuda_grid: dict = field(default_factory=dict)
    golden_tolerance: GoldenTolerance | None = None
    # The golden files' param shapes (tests/golden/make_golden.py), when the default SHAPES do not reach every
    # branch (Adafactor: 3-D and 1x1 tensors, factored over their last two dims).
    golden_shapes: tuple = ()
    bench: tuple[BenchCase, ...] = ()
    convergence: tuple[ConvergenceEntry, ...] = ()


RECORDS: dict[str, Record] = {}


def register_record(record: Record) -> Record:
    if not isinstance(record, Record):
        raise TypeError(f"register_record takes a Record, got {type(record).__name__}")
    if record.optimizer in RECORDS:
        raise ValueError(f"a record for {record.optimizer!r} is already registered")
    RECORDS[record.optimizer] = record
    return record


# ---- the six original optimizers -------------------------------------------------------------------------------------

def _lr(st):
    return st.floats(1e-3, 0.3)


def _decay(st):
    return st.sampled_from([0.0, 0.0, 1e-2, 0.3])


def _fraction(st):
    return st.sampled_from([0.0, 0.5, 0.9, 0.99])


def _sgd_nesterov(h):
    if h["nesterov"]:
        h["momentum"], h["dampening"] = h["momentum"] or 0.9, 0.0
    return h


def _sgd_strategy(st):
    return st.fixed_dictionaries(dict(lr=_lr(st), momentum=st.sampled_from([0.0, 0.5, 0.9]),
                                      dampening=st.sampled_from([0.0, 0.1]), weight_decay=_decay(st),
                                      nesterov=st.booleans(), maximize=st.booleans())).map(_sgd_nesterov)


def _adagrad_strategy(st):
    return st.fixed_dictionaries(dict(lr=_lr(st), lr_decay=st.sampled_from([0.0, 0.01]), weight_decay=_decay(st),
                                      initial_accumulator_value=st.sampled_from([0.0, 0.1]),
                                      eps=st.sampled_from([1e-10, 1e-6]), maximize=st.booleans()))


def _rmsprop_strategy(st):
    return st.fixed_dictionaries(dict(lr=st.floats(1e-4, 1e-2), alpha=st.sampled_from([0.9, 0.99]),
                                      eps=st.sampled_from([1e-8, 1e-4]), weight_decay=_decay(st),
                                      momentum=st.sampled_from([0.0, 0.9]), centered=st.booleans(),
                                      maximize=st.booleans()))


def _adadelta_strategy(st):
    return st.fixed_dictionaries(dict(lr=st.floats(0.1, 1.0), rho=_fraction(st), eps=st.sampled_from([1e-6, 1e-3]),
                                      weight_decay=_decay(st), maximize=st.booleans()))


def _adam_strategy(st):
    return st.fixed_dictionaries(dict(lr=_lr(st), betas=st.tuples(_fraction(st), st.sampled_from([0.9, 0.999])),
                                      eps=st.sampled_from([1e-8, 1e-3]), weight_decay=_decay(st),
                                      amsgrad=st.booleans(), maximize=st.booleans()))


register_record(Record(
    optimizer="sgd", strategy=_sgd_strategy,
    busy=dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True),
    golden={
        "default": {},
        "lr_wd_maximize": {"lr": 0.05, "weight_decay": 0.1, "maximize": True},
        "momentum_dampening": {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
        "nesterov": {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05},
        "momentum_maximize": {"lr": 0.02, "momentum": 0.5, "maximize": True},
    },
    extreme={
        "momentum_wd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.01},
        "nesterov_maximize": {"lr": 0.01, "momentum": 0.5, "nesterov": True, "maximize": True},
    },
    cuda_grid={"dampening": 0.1},
    bench=(BenchCase("sgd", "SGD", {"lr": 1e-2}),
           BenchCase("momentum", "SGD", {"lr": 1e-2, "momentum": 0.9}),
           BenchCase("nesterov", "SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True})),
    convergence=(
        ConvergenceEntry("SGD", "SGD", {"lr": 0.01}, {"lr": 0.95}, "tab:blue"),
        ConvergenceEntry("Momentum", "Momentum", {"lr": 0.01, "momentum": 0.9}, {"lr": 0.1, "momentum": 0.9},
                         "tab:orange"),
        ConvergenceEntry("Nesterov", "Nesterov", {"lr": 0.01, "momentum": 0.9, "nesterov": True},
                         {"lr": 0.1, "momentum": 0.9, "nesterov": True}, "tab:brown"),
    ),
))

register_record(Record(
    optimizer="adagrad", strategy=_adagrad_strategy,
    busy=dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
    golden={
        "default": {},
        "lr_decay_init_acc": {"lr": 0.1, "lr_decay": 0.05, "initial_accumulator_value": 0.3},
        "wd_maximize_eps": {"lr": 0.05, "weight_decay": 0.1, "maximize": True, "eps": 1e-6},
    },
    extreme={"default": {}, "tiny_eps": {"lr": 1e-5, "eps": "tiny"}},
    cuda_grid={"lr_decay": 0.01, "initial_accumulator_value": 0.1},
    bench=(BenchCase("adagrad", "Adagrad", {"lr": 1e-2}),),
    convergence=(ConvergenceEntry("AdaGrad", "Adagrad", {"lr": 0.01}, {"lr": 1.5}, "tab:green"),),
))

register_record(Record(
    optimizer="rmsprop", strategy=_rmsprop_strategy,
    busy=dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01, maximize=True),
    golden={
        "default": {},
        "centered": {"lr": 0.005, "alpha": 0.9, "centered": True},
        "momentum_wd": {"momentum": 0.9, "weight_decay": 0.1},
        "centered_momentum_maximize": {"lr": 0.003, "alpha": 0.95, "eps": 1e-6, "momentum": 0.5,
                                       "centered": True, "maximize": True},
        # 1 - alpha >= 0.5 takes the other branch of torch's lerp in the centred average
        "centered_low_alpha": {"lr": 0.001, "alpha": 0.3, "centered": True},
    },
    extreme={
        "default": {},
        "centered": {"centered": True},
        "centered_momentum_wd": {"centered": True, "momentum": 0.9, "weight_decay": 0.01},
        "tiny_eps": {"lr": 1e-5, "eps": "tiny"},
    },
    bench=(BenchCase("rmsprop", "RMSprop", {"lr": 1e-3}, torch_fused=False),),
    convergence=(ConvergenceEntry("RMSprop", "RMSprop", {"lr": 0.01, "alpha": 0.99}, {"lr": 0.3, "alpha": 0.99},
                                  "tab:purple"),),
))

register_record(Record(
    optimizer="adadelta", strategy=_adadelta_strategy,
    busy=dict(lr=0.5, rho=0.8, weight_decay=0.01, maximize=True),
    golden={
        "default": {},
        "lr_rho_eps_wd": {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.1},
        "maximize": {"rho": 0.95, "maximize": True},
    },
    extreme={"default": {}, "tiny_eps": {"eps": "tiny"}},
    bench=(BenchCase("adadelta", "Adadelta", {"lr": 1.0}, torch_fused=False),),
    # AdaDelta's first steps are about lr * sqrt(eps) / sqrt(1 - rho) ~ 3e-3 * lr long whatever the gradient, so
    # with torch's lr=1.0 it barely leaves (-7, 2) in 30 toy steps; lr=100 makes its path comparable to the others.
    convergence=(ConvergenceEntry("AdaDelta", "Adadelta", {"lr": 1.0, "rho": 0.9, "eps": 1e-6},
                                  {"lr": 100.0, "rho": 0.9, "eps": 1e-6}, "tab:gray"),),
))

register_record(Record(
    optimizer="adam", strategy=_adam_strategy,
    busy=dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.01, amsgrad=True, maximize=True),
    golden={
        "default": {},
        "amsgrad": {"lr": 0.01, "amsgrad": True},
        "wd_maximize": {"lr": 0.01, "weight_decay": 0.1, "maximize": True},
        "betas_eps_amsgrad_wd": {"lr": 0.02, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.05,
                                 "amsgrad": True},
        # 1 - beta1 >= 0.5 takes the other branch of torch's lerp in the first moment
        "low_beta1": {"lr": 0.01, "betas": [0.3, 0.9]},
    },
    extreme={"default": {}, "amsgrad": {"amsgrad": True}, "tiny_eps": {"lr": 1e-5, "eps": "tiny"}},
    bench=(BenchCase("adam", "Adam", {"lr": 1e-3}),
           BenchCase("adam_amsgrad", "Adam", {"lr": 1e-3, "amsgrad": True})),
    convergence=(ConvergenceEntry("Adam", "Adam", {"lr": 0.001, "betas": (0.9, 0.999)},
                                  {"lr": 0.3, "betas": (0.9, 0.999)}, "tab:red"),),
))

register_record(Record(
    optimizer="adamw", strategy=_adam_strategy,
    busy=dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True),
    golden={
        "default": {},
        "no_weight_decay": {"lr": 0.01, "weight_decay": 0.0},
        "amsgrad_maximize": {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "maximize": True},
        "betas_eps_wd": {"lr": 0.02, "betas": [0.85, 0.98], "eps": 1e-6, "weight_decay": 0.3},
    },
    extreme={"default": {}, "tiny_eps": {"lr": 1e-5, "eps": "tiny"}},
    bench=(BenchCase("adamw", "AdamW", {"lr": 1e-3, "weight_decay": 1e-2}),),
    convergence=(ConvergenceEntry("AdamW", "AdamW", {"lr": 0.001, "betas": (0.9, 0.999), "weight_decay": 0.01},
                                  {"lr": 0.3, "betas": (0.9, 0.999), "weight_decay": 0.01}, "tab:pink"),),
))


import fastopt.specs  # noqa: E402,F401 - loads fastopt/optimizers/*, which register the later optimizers' records
