"""The cpu backend's threads: small steps run serially, large ones in parallel, both exactly the reference; OpenMP's
idle threads sleep unless the user chose otherwise; the thread count is exposed."""

import ctypes
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from registry import BUSY

import fastopt
from fastopt.kernels.cpu._common import CHUNK

pytestmark = pytest.mark.skipif(fastopt.available_backends()["cpu"] is not None, reason="the cpu backend is off")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu():
    from fastopt.backends import cpu

    return cpu


def _plan(opt):
    """The cpu plans an optimizer built (one per param group and dtype)."""
    plans = []
    for value in vars(opt).values():  # walk to the prepared update without relying on private names
        stack = [value]
        while stack:
            item = stack.pop()
            if type(item).__name__ == "_NumbaPlan" or type(item).__module__.startswith("fastopt.kernels.cpu."):
                plans.append(item)
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif hasattr(item, "__dict__") and type(item).__module__.startswith("fastopt"):
                stack.extend(vars(item).values())
    return plans


def test_plan_picks_serial_below_the_grain_and_parallel_above():
    cpu = _cpu()
    per_element = 7 * 4  # float32 Adam: p, g read; p, m, v read and written
    small = cpu.PARALLEL_MIN_BYTES // per_element - 1
    large = cpu.PARALLEL_MIN_BYTES // per_element + 1
    driver = fastopt.codegen.numba_driver("adam", (True, True, False))   # exp_avg, exp_avg_sq; no max_exp_avg_sq
    for n, parallel in ((small, False), (large, True)):
        params = [np.zeros(n // 2, np.float32), np.zeros(n - n // 2, np.float32)]  # counted over the whole group
        plan = cpu.BACKEND.prepare(fastopt.SPECS["adam"], params,
                                   {"exp_avg": [np.zeros_like(p) for p in params],
                                    "exp_avg_sq": [np.zeros_like(p) for p in params], "max_exp_avg_sq": None},
                                   (False, False))
        assert plan.bytes_per_step == n * per_element
        parallel = parallel and __import__("numba").get_num_threads() > 1
        assert plan.parallel is parallel
        assert plan.kernel is (driver.parallel if parallel else driver.serial)


def test_the_classic_mlp_steps_serially():
    sizes = (64, 100, 100, 100, 100, 10)  # 37,810 float64 params: 2.1 MB moved per Adam step
    params = [np.zeros((a, b)) for a, b in itertools.pairwise(sizes)] + [np.zeros(b) for b in sizes[1:]]
    opt = fastopt.Adam(params, lr=1e-3, backend="cpu")
    opt.step([np.ones_like(p) for p in params])
    plans = _plan(opt)
    assert plans and not any(p.parallel for p in plans)


@pytest.mark.parametrize("name", sorted(BUSY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_and_parallel_kernels_match_the_reference_bit_for_bit(name, dtype, monkeypatch):
    cpu = _cpu()
    rng = np.random.default_rng(7)
    shapes = [(3,), (CHUNK + 5,), (0,), (2 * CHUNK + 1,), (7, 5)]  # chunk boundaries, an empty tensor
    params0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    results = {}
    for mode, threshold in (("serial", 1 << 62), ("parallel", 0), ("numpy", None)):
        if threshold is not None:
            monkeypatch.setattr(cpu, "PARALLEL_MIN_BYTES", threshold)
        params = [p.copy() for p in params0]
        opt = fastopt.OPTIMIZERS[name](
            params, backend="cpu" if threshold is not None else "numpy", **BUSY[name])
        for g in grads:
            opt.step(g)
        if threshold is not None:
            assert {p.parallel for p in _plan(opt)} == {mode == "parallel"}
        results[mode] = (params, opt.state_dict()["state"])
    for mode in ("serial", "parallel"):
        for got, want in zip(results[mode][0], results["numpy"][0]):
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {mode} params")
        for index, slots in results["numpy"][1].items():
            for slot, want in slots.items():
                np.testing.assert_array_equal(results[mode][1][index][slot], want, err_msg=f"{name} {mode} {slot}")


def test_one_thread_means_serial_kernels():
    from fastopt import threads

    before = threads.get_num_threads()
    n = _cpu().PARALLEL_MIN_BYTES // 12 + 1  # plain SGD moves 12 bytes per float32 element
    try:
        threads.set_num_threads(1)
        opt = fastopt.SGD([np.zeros(n, np.float32)], lr=0.1, backend="cpu")
        opt.step([np.ones(n, np.float32)])
        plans = _plan(opt)
        assert plans and not any(p.parallel for p in plans)
    finally:
        threads.set_num_threads(before)


def test_set_num_threads_validates_and_sets():
    from fastopt import threads

    limit = __import__("numba").config.NUMBA_NUM_THREADS
    before = threads.get_num_threads()
    for bad, kind in ((0, ValueError), (limit + 1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)):
        with pytest.raises(kind, match="n must"):
            threads.set_num_threads(bad)
    assert threads.get_num_threads() == before  # a refused call changes nothing
    try:
        threads.set_num_threads(1)
        assert threads.get_num_threads() == 1
        threads.set_num_threads(np.int64(limit))
        assert threads.get_num_threads() == limit
    finally:
        threads.set_num_threads(before)


def _gomp_wait_policy(env_vars):
    """(layer, OMP_WAIT_POLICY left in os.environ, {variable: value as libgomp read it}) in a fresh process that
    used the cpu backend with `env_vars` set."""
    code = textwrap.dedent("""
        import ctypes, os, sys
        import numpy as np, fastopt, numba
        opt = fastopt.SGD([np.ones(10)], lr=0.1, backend="cpu")
        opt.step([np.ones(10)])
        print("LAYER", numba.threading_layer(), "LEFT", os.environ.get("OMP_WAIT_POLICY"), flush=True)
        ctypes.CDLL("libgomp.so.1").omp_display_env(1)
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_LIBRARY", "NUMBA_THREADING_LAYER")}
    env.update(env_vars, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    layer, left = out.stdout.split()[1], out.stdout.split()[3]
    read = dict(line.strip().split(" = ", 1) for line in out.stderr.splitlines() if " = " in line)
    return layer, left, {k: v.strip("'") for k, v in read.items()}


def _has_gomp():
    try:
        return hasattr(ctypes.CDLL("libgomp.so.1"), "omp_display_env")
    except OSError:
        return False


@pytest.mark.skipif(not _has_gomp(), reason="GNU OpenMP with omp_display_env is not here")
def test_openmp_threads_sleep_after_a_step_unless_the_user_chose():
    layer, left, read = _gomp_wait_policy({})
    if layer != "omp":
        pytest.skip(f"Numba's threading layer here is {layer}, not OpenMP")
    assert (read["OMP_WAIT_POLICY"], read["GOMP_SPINCOUNT"]) == ("PASSIVE", "0")
    assert left == "None"  # set only while the layer started: OpenMP libraries loaded later keep their defaults
    assert _gomp_wait_policy({"OMP_WAIT_POLICY": "ACTIVE"})[2]["OMP_WAIT_POLICY"] == "ACTIVE"
    assert _gomp_wait_policy({"GOMP_SPINCOUNT": "1000"})[2]["GOMP_SPINCOUNT"] == "1000"  # any choice stands


def test_addresses_come_from_the_compiled_route_and_agree_with_the_array_interface():
    from fastopt.backends import cpu

    arrays = [np.zeros((3, 4), np.float32), np.zeros(5), np.zeros((2, 2, 2, 2), np.float32), np.zeros(0, np.float32),
              np.zeros(3, np.float16)]  # float16: Numba refuses it, the interface answers
    readonly = np.zeros(7)
    readonly.flags.writeable = False
    arrays.append(readonly)
    assert cpu._addresses(arrays) == [a.__array_interface__["data"][0] for a in arrays]
    assert cpu._address(arrays[0]) == arrays[0].ctypes.data
