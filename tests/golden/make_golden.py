"""Write the golden trajectories in tests/golden/data/ by running torch.optim (needs torch; CI never runs this).

    python tests/golden/make_golden.py            # rewrite every file
    python tests/golden/make_golden.py --check    # rewrite into a temporary folder and compare byte for byte
    python tests/golden/make_golden.py --only adam   # only one optimizer's files (also with --check)

For every optimizer in `fastopt.specs.SPECS` and every configuration its record lists (fastopt.records:
Record.golden), in float64 and float32, this runs the record's oracle, by default the torch optimizer of the same
name on the single-tensor path (foreach=False, fused=False) for STEPS steps
over a few small parameters of odd sizes, with seeded random parameters and a fresh seeded random gradient every step,
and stores one `<optimizer>-<config>-<dtype>.npz` holding:

    meta            JSON: optimizer, config, dtype, steps, hyper (every hyperparameter, defaults filled in),
                    torch_version, numpy_version, shapes, state_keys (torch's state names per parameter, 'step' aside)
    p{i}_init       parameter i before the first step
    p{i}_grads      the gradient of parameter i at every step, shape (STEPS, *shape)
    p{i}_params     parameter i after every step, shape (STEPS, *shape)
    p{i}_state_{s}  torch's final state slot s of parameter i (only the slots torch keeps as tensors)
    p{i}_step       torch's final step count of parameter i

Then, for every optimizer and every configuration in EXTREME_CONFIGS, `<optimizer>-extreme_<config>-<dtype>.npz`
(same members, meta also holding `extreme: true` and `magnitudes`) runs EXTREME_STEPS steps at the magnitudes where
float32 and float64 overflow or underflow (MAGNITUDES): one parameter per magnitude, so each array has one scale.

Gradients are drawn in float64 and cast, so the float32 and float64 files of a configuration follow the same
trajectory up to rounding. Their scale shrinks over the steps (with random jitter) so that AMSGrad's running maximum
really departs from the second moment. The files are written deterministically: a zip with fixed timestamps and
sorted members, so running the script twice gives identical bytes (with the same torch and NumPy).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastopt import records  # noqa: E402 - after making the checkout importable
from fastopt.specs import SPECS  # noqa: E402

STEPS = 12
SHAPES = [(7,), (3, 13), (1,)]   # odd sizes; 39 elements reach torch's vectorised loop, 7 and 1 only its scalar tail
DTYPES = ("float64", "float32")

# Per optimizer, its record (fastopt.records) lists its configurations: config name -> hyperparameters that differ
# from the defaults (Record.golden, and Record.extreme at the float extremes), and the oracle that runs them.
RECORDS = records.RECORDS
CONFIGS = {name: r.golden for name, r in RECORDS.items()}


# ---- extreme magnitudes (issue 10: torch's operation order decides overflow and underflow) ---------------------------
EXTREME_STEPS = 5
EXTREME_SIZE = 37   # float32: 32 elements in torch's AVX512 vector loop, 5 in its scalar tail
# Per dtype, the gradient magnitudes, one parameter each. float32: 1e-36 makes lr * exp_avg subnormal before the
# division by a tiny eps (addcdiv's order decides the rounding); 1e-30 squares to 0; 1e19 squares past float32's
# max above 1.8e19 while (1 - beta2) * g * g, torch's order, stays finite; 1e30 overflows in either order (Adam's
# exp_avg_sq becomes inf, centred RMSprop's variance inf - finite). float64: the same four regimes at its own range
# (1e-306, 1e-170, 1e154, 1e200), and the float32 magnitudes, harmless there.
MAGNITUDES = {
    "float32": (1e-36, 1e-30, 1e19, 1e30),
    "float64": (1e-306, 1e-170, 1e-30, 1e19, 1e30, 1e154, 1e200),
}
TINY = "tiny"   # stands for TINY_EPS[dtype] in EXTREME_CONFIGS
TINY_EPS = {"float32": 1e-45, "float64": 5e-324}   # the smallest subnormal of each dtype (1e-45 rounds to it)
EXTREME_CONFIGS = {name: r.extreme for name, r in RECORDS.items()}


def extreme_hyper(name: str, overrides: dict, dtype: str) -> dict:
    return full_hyper(name, {k: TINY_EPS[dtype] if v == TINY else v for k, v in overrides.items()})


def draw_extreme(name: str, config: str, dtype: str):
    """N(0, 1) params; per magnitude, grads log-uniform within a factor 4 of it, random signs, about 1 in 6 zero."""
    rng = np.random.default_rng(seed_of(name, "extreme", config, dtype))
    n = len(MAGNITUDES[dtype])
    params = [rng.standard_normal(EXTREME_SIZE) for _ in range(n)]
    grads = []
    for scale in MAGNITUDES[dtype]:
        size = (EXTREME_STEPS, EXTREME_SIZE)
        g = scale * 4.0 ** rng.uniform(-1, 1, size) * rng.choice([-1.0, 1.0], size)
        grads.append(np.where(rng.uniform(size=size) < 1 / 6, 0.0, g))
    return params, grads


def full_hyper(name: str, overrides: dict) -> dict:
    spec = SPECS[name]
    unknown = set(overrides) - set(spec.defaults)
    if unknown:
        raise SystemExit(f"{name}: unknown hyperparameters {sorted(unknown)}")
    hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.defaults.items()}
    hyper.update(overrides)
    spec.validate(hyper)
    return hyper


def seed_of(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def draw(name: str, config: str):
    """Initial params and per-step grads in float64, identical for both dtypes of one configuration."""
    rng = np.random.default_rng(seed_of(name, config))
    shapes = RECORDS[name].golden_shapes or SHAPES
    params = [rng.standard_normal(shape) for shape in shapes]
    scales = 2.0 * 0.75 ** np.arange(STEPS) * rng.uniform(0.5, 1.5, STEPS)
    grads = [np.stack([s * rng.standard_normal(shape) for s in scales]) for shape in shapes]
    return params, grads


def run_torch(torch, name: str, hyper: dict, dtype: str, params0, grads, steps=STEPS):
    tdtype = getattr(torch, dtype)
    params = [torch.tensor(p.astype(dtype), dtype=tdtype) for p in params0]
    kwargs = dict(hyper)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    cls = getattr(torch.optim, SPECS[name].class_name)
    extra = {"foreach": False}
    if "fused" in cls.__init__.__code__.co_varnames:
        extra["fused"] = False
    opt = cls(params, **kwargs, **extra)
    trajectory = [np.empty((steps,) + p.shape, dtype=dtype) for p in params0]
    for t in range(steps):
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g[t].astype(dtype), dtype=tdtype)
        opt.step()
        for i, p in enumerate(params):
            trajectory[i][t] = p.detach().numpy()
    states = []
    for p in params:
        state = opt.state[p]
        slots = {k: v.detach().numpy().copy() for k, v in state.items()
                 if k != "step" and isinstance(v, torch.Tensor)}
        step = state.get("step", None)
        steps_done = float(step.item()) if isinstance(step, torch.Tensor) else step
        states.append((slots, steps_done))
    return trajectory, states


def write_npz(path: Path, arrays: dict) -> None:
    """np.savez_compressed, but byte-for-byte reproducible (fixed timestamps, sorted members)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, arr.getvalue(), compresslevel=9)
    path.write_bytes(buf.getvalue())


def generate(out: Path, only: str | None = None) -> list[Path]:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    missing = set(SPECS) - set(CONFIGS)
    if missing:
        raise SystemExit(f"no golden configurations for {sorted(missing)}: add them to CONFIGS")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    missing = set(SPECS) - set(EXTREME_CONFIGS)
    if missing:
        raise SystemExit(f"no extreme-magnitude configurations for {sorted(missing)}: add them to EXTREME_CONFIGS")
    runs = []   # (file stem, optimizer, config, dtype, hyper, params0, grads, steps, extra meta)
    for name in sorted(SPECS) if only is None else [only]:
        for config, overrides in CONFIGS[name].items():
            hyper = full_hyper(name, overrides)
            params0, grads = draw(name, config)
            runs += [(f"{name}-{config}-{dtype}", name, config, dtype, hyper, params0, grads, STEPS, {})
                     for dtype in DTYPES]
        for config, overrides in EXTREME_CONFIGS[name].items():
            for dtype in DTYPES:
                params0, grads = draw_extreme(name, config, dtype)
                runs.append((f"{name}-extreme_{config}-{dtype}", name, f"extreme_{config}", dtype,
                             extreme_hyper(name, overrides, dtype), params0, grads, EXTREME_STEPS,
                             {"extreme": True, "magnitudes": list(MAGNITUDES[dtype])}))
    written = []
    for stem, name, config, dtype, hyper, params0, grads, steps, extra in runs:
        params_d = [p.astype(dtype) for p in params0]
        grads_d = [g.astype(dtype) for g in grads]
        oracle = RECORDS[name].oracle
        if oracle is None:   # torch.optim's class of the same name
            trajectory, states = run_torch(torch, name, hyper, dtype, params_d, grads_d, steps)
        else:
            trajectory, states = oracle(name, hyper, dtype, params_d, grads_d, steps)
        meta = {"optimizer": name, "config": config, "dtype": dtype, "steps": steps, "hyper": hyper,
                "torch_version": torch.__version__, "numpy_version": np.__version__,
                "shapes": [list(p.shape) for p in params0],
                "state_keys": [sorted(slots) for slots, _ in states], **extra}
        arrays = {"meta": np.array(json.dumps(meta, sort_keys=True))}
        for i, (p0, g, traj, (slots, steps_done)) in enumerate(zip(params_d, grads_d, trajectory, states)):
            arrays[f"p{i}_init"] = p0
            arrays[f"p{i}_grads"] = g
            arrays[f"p{i}_params"] = traj
            arrays[f"p{i}_step"] = np.array(steps_done, dtype=np.float64)
            for slot, value in slots.items():
                arrays[f"p{i}_state_{slot}"] = value
        path = out / f"{stem}.npz"
        write_npz(path, arrays)
        written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary folder and report files that differ from data/")
    ap.add_argument("--only", metavar="OPTIMIZER", choices=sorted(SPECS),
                    help="write (or check) only this optimizer's files, leaving every other file alone")
    args = ap.parse_args(argv)
    pattern = "*.npz" if args.only is None else f"{args.only}-*.npz"
    return write_or_check(lambda out: generate(out, args.only), DATA, args.check, pattern)


def write_or_check(generate, folder: Path, check: bool, pattern: str = "*.npz") -> int:
    """Every golden script's command: regenerate `folder`'s files matching `pattern` with `generate(out) -> [paths]`,
    or, with `check`, regenerate into a temporary folder and report files that differ or are no longer made."""
    if check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = generate(Path(tmp))
            names = {p.name for p in fresh}
            stored = {p.name for p in folder.glob(pattern)}
            differ = sorted(p.name for p in fresh
                            if not (folder / p.name).exists() or (folder / p.name).read_bytes() != p.read_bytes())
            stale = sorted(stored - names)
        for n in differ:
            print("differs:", n)
        for n in stale:
            print("stale (no longer generated):", n)
        print(f"{len(fresh)} files checked, {len(differ)} differ, {len(stale)} stale")
        return 1 if differ or stale else 0
    for old in folder.glob(pattern):
        old.unlink()
    written = generate(folder)
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files, {total / 1024:.0f} KiB, to {folder}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
