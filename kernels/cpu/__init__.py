"""Fused Numba kernels, one module per kernel family; each module exposes `update` (see fastopt.backends.cpu)."""
