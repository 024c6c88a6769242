"""CUDA C kernel sources (one .cu per kernel family), compiled by CuPy at run time; see fastopt.backends.cuda."""
