"""Write tests/golden/schedulefree/*.npz: schedule-free trajectories with train()/eval() switches mid-run, from the
schedulefree package (needs torch and schedulefree; CI never runs this, tests/test_schedulefree.py reads the files).

    python tests/golden/make_golden_schedulefree.py            # rewrite every file
    python tests/golden/make_golden_schedulefree.py --check    # regenerate in memory and compare byte for byte

Per optimizer, configuration and dtype (float64, float32), one `<optimizer>-<config>-<dtype>.npz`: the package's
optimizer runs STEPS steps over params of odd sizes, calling eval() then train() before each step in SWITCHES, and
eval() after the last step. It holds `meta` (JSON: optimizer, config, dtype, steps, switches, hyper, versions),
`p{i}_init`, `p{i}_grads` (STEPS, *shape), `p{i}_params` (the params after every step, y), `p{i}_evals` (the params
right after each eval(), x: one row per switch, then the final eval()) and `p{i}_state_<slot>` (the final state).
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "schedulefree"
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from make_golden import full_hyper, write_npz, write_or_check  # noqa: E402

STEPS = 14
SWITCHES = (1, 5, 6, 11)      # eval() then train() before these steps (0-based): after 1 step, twice in a row, late
SHAPES = [(7,), (3, 13), (1,)]
DTYPES = ("float64", "float32")
CONFIGS = {
    "schedulefree_sgd": {
        "default": {},
        "wd_warmup_r": {"lr": 0.2, "momentum": 0.8, "weight_decay": 0.05, "warmup_steps": 4, "r": 1.0,
                        "weight_lr_power": 1.0},
        "low_momentum": {"lr": 0.05, "momentum": 0.3},   # the other branch of torch's lerp in both switches
    },
    "schedulefree_adamw": {
        "default": {},
        "wd_warmup_r": {"lr": 0.02, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1, "warmup_steps": 4,
                        "r": 1.0, "weight_lr_power": 1.0},
        "low_beta1": {"lr": 0.01, "betas": [0.3, 0.9]},
    },
}


def run(name, hyper, dtype, params0, grads):
    import schedulefree
    import torch

    tdtype = getattr(torch, dtype)
    params = [torch.tensor(p, dtype=tdtype) for p in params0]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()}
    cls = schedulefree.AdamWScheduleFree if name == "schedulefree_adamw" else schedulefree.SGDScheduleFree
    opt = cls(params, **kwargs)
    opt.train()
    trajectory = [np.empty((STEPS,) + p.shape, dtype=dtype) for p in params0]
    evals = [[] for _ in params0]
    for t in range(STEPS + 1):
        if t in SWITCHES or t == STEPS:
            opt.eval()
            for i, p in enumerate(params):
                evals[i].append(p.detach().numpy().copy())
            if t == STEPS:
                break
            opt.train()
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g[t], dtype=tdtype)
        opt.step()
        for i, p in enumerate(params):
            trajectory[i][t] = p.detach().numpy()
    states = [{k: v.detach().numpy().copy() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
              for p in params]
    return trajectory, [np.stack(e) for e in evals], states, torch.__version__


def generate(out: Path) -> list[Path]:
    import importlib.metadata

    import torch

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, configs in CONFIGS.items():
        for config, overrides in configs.items():
            hyper = full_hyper(name, overrides)
            rng = np.random.default_rng(zlib.crc32(f"{name}/{config}/switches".encode()))
            params0 = [rng.standard_normal(s) for s in SHAPES]
            scales = 2.0 * 0.8 ** np.arange(STEPS) * rng.uniform(0.5, 1.5, STEPS)
            grads0 = [np.stack([s * rng.standard_normal(shape) for s in scales]) for shape in SHAPES]
            for dtype in DTYPES:
                params = [p.astype(dtype) for p in params0]
                grads = [g.astype(dtype) for g in grads0]
                trajectory, evals, states, torch_version = run(name, hyper, dtype, params, grads)
                meta = {"optimizer": name, "config": config, "dtype": dtype, "steps": STEPS,
                        "switches": list(SWITCHES), "hyper": hyper, "torch_version": torch_version,
                        "schedulefree_version": importlib.metadata.version("schedulefree"),
                        "numpy_version": np.__version__, "shapes": [list(s) for s in SHAPES]}
                arrays = {"meta": np.array(json.dumps(meta, sort_keys=True))}
                for i in range(len(SHAPES)):
                    arrays[f"p{i}_init"] = params[i]
                    arrays[f"p{i}_grads"] = grads[i]
                    arrays[f"p{i}_params"] = trajectory[i]
                    arrays[f"p{i}_evals"] = evals[i]
                    for slot, value in states[i].items():
                        arrays[f"p{i}_state_{slot}"] = value
                path = out / f"{name}-{config}-{dtype}.npz"
                write_npz(path, arrays)
                written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="regenerate into a temporary folder and compare")
    args = ap.parse_args(argv)
    return write_or_check(generate, OUT, args.check)

if __name__ == "__main__":
    sys.exit(main())
