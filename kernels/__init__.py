"""Kernel sources, installed as fastopt.kernels: cpu/ holds the Numba kernels, cuda/ the CUDA C sources."""
