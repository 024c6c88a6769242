"""State keeps its param's alignment (issue 9.3), checked through the host build of the CUDA kernels.

The CUDA kernels take the 16-byte vector body for a tensor only when the param, the grad and every active slot have
the same element offset modulo the vector width (`fo_misalign` in kernels/cuda/common.cuh); otherwise the whole
tensor runs with scalar loads. `functional.state_arrays` places each state view at its param's offset modulo 16 bytes,
so after a size-1 tensor (or any size that is not a multiple of the width) the later tensors keep the vector body,
and params laid out back to back keep state back to back.
"""

import itertools

import numpy as np
import pytest

import fastopt
from fastopt import cuda_build, functional, reference
from fastopt.backends.numpy import NumpyArrays
from fastopt.specs import SPECS

SIZES = ([1, 4096, 4096, 4096], [10, 4096, 4096])
HYPER = dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.01, amsgrad=True)


def _address(a) -> int:
    return a.__array_interface__["data"][0]


def _misalign(a, width) -> int:
    """fo_misalign<V>: the element offset of the array's start modulo the vector width V."""
    return (_address(a) // a.dtype.itemsize) % width


def _vector_elements(p, arrays, width) -> int:
    """How many of the tensor's elements fo_range sends through the vector body (0 when the offsets differ)."""
    mis = _misalign(p, width)
    if any(_misalign(a, width) != mis for a in arrays):
        return 0
    head = min((width - mis) % width, p.size)
    return (p.size - head) // width * width


def _params(sizes, dtype, flat):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(n).astype(dtype) for n in sizes]
    return fastopt.flatten(arrays)[1] if flat else arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("flat", [False, True], ids=["separate", "flat"])
@pytest.mark.parametrize("sizes", SIZES, ids=str)
def test_state_has_its_params_alignment_and_the_vector_body_covers_all_but_heads_and_tails(sizes, flat, dtype):
    params = _params(sizes, dtype, flat)
    grads = _params(sizes, dtype, flat)  # a training loop's grads are laid out like its params
    for g in grads:
        g[...] = np.linspace(0.5, 1.5, g.size)
    opt = fastopt.Adam(params, backend="numpy", **HYPER)
    opt.step([np.zeros_like(g) for g in grads])  # creates the state; lr * 0 grads: params barely move
    state = opt._groups[0].state
    width = 16 // np.dtype(dtype).itemsize
    for i, p in enumerate(params):
        slots = [state[name][i] for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
        for s in slots:
            assert _address(s) % 16 == _address(p) % 16, f"tensor {i}: state at another offset than its param"
        vector = _vector_elements(p, [grads[i], *slots], width)
        assert p.size - vector < 2 * width, f"tensor {i}: {p.size - vector} elements outside the vector body"
    if flat:  # flattened params: state back to back too (the cuda backend's flat path)
        for name, arrays in state.items():
            for a, b in itertools.pairwise(arrays):
                assert _address(b) == _address(a) + a.nbytes, f"{name}: not back to back"

    # The same arrays through the host build of the CUDA kernels (table entry point): no misaligned vector access,
    # and the reference's result.
    if cuda_build.find_cxx() is None:
        pytest.skip("no C++ compiler for the host build")
    spec = SPECS["adam"]
    hyper = opt._groups[0].hyper
    expected_p = [p.copy() for p in params]
    expected_s = {name: [a.copy() for a in arrays] for name, arrays in state.items()}
    kernels = cuda_build.HostKernels(spec.kernel)
    slot_lists = [state[s.name] for s in spec.slots]
    for step in (2, 3):
        kernels.table(params, grads, slot_lists, spec.scalars(hyper, step), spec.flags(hyper), chunk_elems=1000)
        for i in range(len(params)):
            reference.adam(expected_p[i], grads[i], *(expected_s[s.name][i] for s in spec.slots),
                           *spec.scalars(hyper, step), *spec.flags(hyper))
    for i in range(len(params)):
        np.testing.assert_array_equal(params[i], expected_p[i])
        for name in state:
            np.testing.assert_array_equal(state[name][i], expected_s[name][i])


class _HalfParams(NumpyArrays):
    """A NumPy stand-in for the cuda backend's layout: float16 params with float32 state."""
    name = "half"

    def state_dtype(self, param_dtype):
        return np.dtype(np.float32) if param_dtype == np.float16 else np.dtype(param_dtype)


def test_wider_state_than_param_keeps_the_element_offset():
    # fo_misalign counts elements of each array's own type, modulo the compute type's width (4 for float32 state).
    buffer = np.zeros(64, np.float16)
    params = [buffer[1:2], buffer[3:40], buffer[42:50]]  # odd element offsets, separate tensors
    arrays = functional.state_arrays(_HalfParams(), params, 0.0)
    for p, s in zip(params, arrays):
        assert s.dtype == np.float32 and s.shape == p.shape
        assert _misalign(s, 4) == _misalign(p, 4)
