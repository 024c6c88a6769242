"""Write Lion's second-oracle trajectories in tests/golden/lion_pytorch/ by running lion-pytorch's Lion (needs torch and
lion-pytorch; CI never runs this; tests/test_lion_pytorch_golden.py checks the files without them).

    python tests/golden/make_golden_lion_pytorch.py            # rewrite every file
    python tests/golden/make_golden_lion_pytorch.py --check    # regenerate into a temporary folder, compare bytes

The first oracle, optax.lion, writes Lion's files in tests/golden/data/ (tests/golden/make_golden.py). Here the same
configurations (Lion's record) and the same seeded params and grads (make_golden.draw) run through
lion_pytorch.Lion (its plain PyTorch update, use_triton=False), in float64 and float32, and the files have
make_golden's format (meta with `oracle` and `lion_pytorch_version`). lion-pytorch has no maximize: a maximize
configuration runs it on the negated gradients (negation is exact).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "lion_pytorch"
ROOT = HERE.parent.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from make_golden import DTYPES, STEPS, draw, full_hyper, write_npz, write_or_check  # noqa: E402 - after the paths

from fastopt.records import RECORDS  # noqa: E402


def run_lion_pytorch(hyper: dict, dtype: str, params0, grads, steps=STEPS):
    import torch
    from lion_pytorch import Lion

    tdtype = getattr(torch, dtype)
    params = [torch.tensor(p, dtype=tdtype) for p in params0]
    opt = Lion(params, lr=hyper["lr"], betas=tuple(hyper["betas"]), weight_decay=hyper["weight_decay"])
    sign = -1.0 if hyper["maximize"] else 1.0
    trajectory = [np.empty((steps,) + p.shape, dtype=dtype) for p in params0]
    for t in range(steps):
        for p, g in zip(params, grads):
            p.grad = torch.tensor(sign * g[t], dtype=tdtype)
        opt.step()
        for i, p in enumerate(params):
            trajectory[i][t] = p.detach().numpy()
    states = [opt.state[p]["exp_avg"].detach().numpy().copy() for p in params]
    return trajectory, states


def generate(out: Path) -> list[Path]:
    import torch

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for config, overrides in RECORDS["lion"].golden.items():
        hyper = full_hyper("lion", overrides)
        params0, grads = draw("lion", config)
        for dtype in DTYPES:
            params_d = [p.astype(dtype) for p in params0]
            grads_d = [g.astype(dtype) for g in grads]
            trajectory, states = run_lion_pytorch(hyper, dtype, params_d, grads_d)
            meta = {"optimizer": "lion", "config": config, "dtype": dtype, "steps": STEPS, "hyper": hyper,
                    "oracle": "lion_pytorch.Lion", "lion_pytorch_version": metadata.version("lion-pytorch"),
                    "torch_version": torch.__version__, "numpy_version": np.__version__,
                    "shapes": [list(p.shape) for p in params0]}
            arrays = {"meta": np.array(json.dumps(meta, sort_keys=True))}
            for i, (p0, g, traj, exp_avg) in enumerate(zip(params_d, grads_d, trajectory, states)):
                arrays[f"p{i}_init"] = p0
                arrays[f"p{i}_grads"] = g
                arrays[f"p{i}_params"] = traj
                arrays[f"p{i}_state_exp_avg"] = exp_avg
            path = out / f"lion-{config}-{dtype}.npz"
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
