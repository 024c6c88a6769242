"""The cpu backend under hostile environments (issue 10.9), each in a fresh process: NUMBA_DISABLE_JIT, no writable
Numba cache directory, and Numba's thread-unsafe workqueue layer with two optimizers stepping in two threads."""

import os
import subprocess
import sys
import textwrap

import pytest

import fastopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, **env_vars):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "FASTOPT_"))}
    env.update(env_vars, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=240)


def test_disable_jit_reports_cpu_unavailable_and_falls_back_to_numpy():
    out = _run("""
        import warnings
        import numpy as np, fastopt
        reason = fastopt.available_backends()["cpu"]
        assert reason is not None and "NUMBA_DISABLE_JIT" in reason, reason
        p, g = [np.ones(5)], [np.full(5, 0.5)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = fastopt.Adam(p, lr=0.1)
            opt.step(g)
        assert any("NUMBA_DISABLE_JIT" in str(w.message) for w in caught), [str(w.message) for w in caught]
        assert np.allclose(p[0], 0.9), p
        print("OK")
    """, NUMBA_DISABLE_JIT="1")
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


@pytest.mark.skipif(fastopt.available_backends()["cpu"] is not None, reason="the cpu backend is off")
def test_no_writable_cache_directory_compiles_without_the_disk_cache():
    # Numba finds no writable cache directory (read-only install, read-only home and NUMBA_CACHE_DIR) when every
    # locator's writability check fails: make that check fail, as a read-only filesystem does (we may run as root).
    out = _run("""
        import warnings
        import numba.core.caching as caching

        def read_only(self):
            raise PermissionError(30, "Read-only file system", self.get_cache_path())

        caching._CacheLocator.ensure_cache_path = read_only
        import numpy as np, fastopt
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert fastopt.available_backends()["cpu"] is None, fastopt.available_backends()
            p, g = [np.ones(5)], [np.full(5, 0.5)]
            fastopt.SGD(p, lr=0.1, backend="cpu").step(g)
            fastopt.SGD([np.ones(3)], lr=0.1, backend="cpu").step([np.ones(3)])
        messages = [str(w.message) for w in caught]
        assert np.allclose(p[0], 0.95), p
        assert sum("NUMBA_CACHE_DIR" in m for m in messages) == 1, messages
        from fastopt.kernels.cpu import _common
        assert _common.CACHE is False
        print("OK")
    """, NUMBA_CACHE_DIR="/proc/fastopt-read-only")
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


@pytest.mark.skipif(fastopt.available_backends()["cpu"] is not None, reason="the cpu backend is off")
def test_workqueue_layer_two_optimizers_in_two_threads_do_not_abort():
    # Without the lock, Numba's workqueue layer aborts the process ("Concurrent access has been detected").
    out = _run("""
        import threading
        import numpy as np, numba, fastopt
        from fastopt.backends import cpu

        n = cpu.PARALLEL_MIN_BYTES // (5 * 4) + 1  # float32 SGD with momentum moves 20 bytes per element
        results = {}

        def train(name):
            p, g = [np.ones(n, np.float32)], [np.full(n, 0.5, np.float32)]
            opt = fastopt.SGD(p, lr=0.01, momentum=0.9, backend="cpu")
            for _ in range(30):
                opt.step(g)
            results[name] = p[0][[0, -1]].copy()

        threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert numba.threading_layer() == "workqueue"
        reference = [np.ones(3, np.float32)]
        opt = fastopt.SGD(reference, lr=0.01, momentum=0.9, backend="numpy")
        for _ in range(30):
            opt.step([np.full(3, 0.5, np.float32)])
        for value in results.values():
            np.testing.assert_array_equal(value, reference[0][:2])
        print("OK", len(results))
    """, NUMBA_THREADING_LAYER="workqueue")
    assert out.returncode == 0 and "OK 2" in out.stdout, out.stderr
