"""The golden oracle of torch optimizers that keep host scalar state (fastopt.specs.HostScalar: NAdam, ASGD).

It runs torch.optim.<class_name> on its single-tensor path as tests/golden/make_golden.py's default oracle does, and
stores the slots only: tests/test_golden.py expects torch's state keys to be the spec's slots. The host state is
checked against torch directly, step by step and with hyperparameters changed mid-run, in
tests/test_host_state_torch.py. Imported by the golden script only (needs torch).
"""

from __future__ import annotations

import numpy as np

from fastopt.specs import SPECS


def torch_oracle(name, hyper, dtype, params0, grads, steps):
    import torch

    spec = SPECS[name]
    tdtype = getattr(torch, dtype)
    params = [torch.tensor(p, dtype=tdtype) for p in params0]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()}
    opt = getattr(torch.optim, spec.class_name)(params, foreach=False, **kwargs)
    trajectory = [np.empty((steps,) + p.shape, dtype=dtype) for p in params0]
    for t in range(steps):
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g[t], dtype=tdtype)
        opt.step()
        for i, p in enumerate(params):
            trajectory[i][t] = p.detach().numpy()
    host = {h.name for h in spec.host_state}
    states = []
    for p in params:
        state = opt.state[p]
        slots = {k: v.detach().numpy().copy() for k, v in state.items()
                 if k != "step" and k not in host and isinstance(v, torch.Tensor)}
        states.append((slots, float(state["step"].item())))
    return trajectory, states
