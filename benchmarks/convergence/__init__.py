"""Convergence study (issue 5): the classic optimizer comparison, run through fastopt's fused kernels.

`python -m benchmarks.convergence` trains the same small MLP with every optimizer on every fastopt backend available,
draws the smoothed loss curves and the optimizers' paths on f(x, y) = x^2/20 + y^2, and writes a results table under
`benchmarks/results/convergence/`. See README.md next to this file.
"""
