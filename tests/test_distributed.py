"""fastopt.distributed (ZeRO-1): the shard layout, the NCCL engine through a host stand-in, and the MPI runs.

The MPI cases run in one `mpiexec` launch per world size (tests/distributed/run_cases.py, 2 and 3 ranks: 3 gives
uneven shards on this 2-core machine, which MPICH runs oversubscribed); this file launches them and checks the
reports. Skipped where mpi4py or mpiexec is missing (.ci/run installs both from wheels). The GPU test runs NCCL at
world size 1 and is skipped without CuPy and a device.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import fastopt
from fastopt.distributed import NCCLEngine, ShardedOptimizer, as_engine, shard_block
from fastopt.distributed.sharded import pieces, splittable

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "distributed" / "run_cases.py"


# ---- layout ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("total", [0, 1, 3, 4, 5, 37, 4097, 1_000_003])
@pytest.mark.parametrize("itemsize", [2, 4, 8])
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_shard_block_is_aligned_balanced_and_covers(total, itemsize, size):
    block = shard_block(total, itemsize, size)
    unit = 16 // itemsize
    assert block % unit == 0                      # every shard start r * block is 16-byte aligned
    assert size * block >= total                  # the shards cover the bucket
    assert block - (-(-total // size)) < unit     # and are the balanced share, rounded up to 16 bytes only


def test_pieces_split_params_across_shards():
    sizes = [5, 10, 1]
    offsets = [0, 5, 15]
    block = shard_block(16, 4, 3)  # 8: ranks own [0, 8), [8, 16), [16, 24)
    assert block == 8
    assert pieces(offsets, sizes, 0, 8) == [(0, 0, 5), (1, 5, 8)]
    assert pieces(offsets, sizes, 8, 16) == [(1, 8, 15), (2, 15, 16)]
    assert pieces(offsets, sizes, 16, 24) == []


def test_as_engine_refuses_other_objects():
    with pytest.raises(TypeError, match="comm: expected an mpi4py communicator"):
        as_engine(object())


# ---- the NCCL engine through a stand-in ------------------------------------------------------------------------------

class _FakeNccl:
    """The names the engine reads from cupy.cuda.nccl, with NCCL's own values."""
    NCCL_UINT8, NCCL_INT64, NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 1, 4, 6, 7, 8, 0
    ITEMSIZE: ClassVar[dict] = {1: 1, 4: 8, 6: 2, 7: 4, 8: 8}

    def __init__(self):
        self.depth, self.groups = 0, 0

    def groupStart(self):
        self.depth += 1

    def groupEnd(self):
        self.depth -= 1
        self.groups += 1


class _HostComm:
    """A NcclCommunicator of one rank over host memory: the same method names and arguments as CuPy's."""

    def __init__(self, nccl, size=1, rank=0):
        self.nccl, self._size, self._rank, self.calls, self._pending = nccl, size, rank, [], []

    def rank_id(self):
        return self._rank

    def size(self):
        return self._size

    def _bytes(self, count, dtype):
        return count * self.nccl.ITEMSIZE[dtype]

    def reduceScatter(self, send, recv, count, dtype, op, stream):
        self.calls.append(("reduceScatter", send, recv, count, dtype, op))
        if self._size == 1:
            ctypes.memmove(recv, send, self._bytes(count, dtype))

    def allGather(self, send, recv, count, dtype, stream):
        self.calls.append(("allGather", send, recv, count, dtype))
        if self._size == 1:
            ctypes.memmove(recv, send, self._bytes(count, dtype))

    def send(self, buf, count, dtype, peer, stream):
        assert self.nccl.depth > 0, "send outside groupStart/groupEnd would deadlock"
        self.calls.append(("send", buf, count, dtype, peer))
        self._pending.append((buf, count, dtype))

    def recv(self, buf, count, dtype, peer, stream):
        assert self.nccl.depth > 0, "recv outside groupStart/groupEnd would deadlock"
        self.calls.append(("recv", buf, count, dtype, peer))
        if self._size == 1:
            source, n, _ = self._pending.pop(0)
            ctypes.memmove(buf, source, self._bytes(n, dtype))


class _StandInEngine(NCCLEngine):
    """NCCLEngine with host memory for device memory: its counts, offsets and types are what is tested."""

    def __init__(self, comm, nccl):
        self._fake = nccl
        super().__init__(comm)

    def _nccl(self):
        return self._fake

    def _stream(self):
        return 0

    @staticmethod
    def _ptr(array):
        return array.ctypes.data

    def _empty(self, n, dtype):
        return np.zeros(n, dtype)


def test_nccl_engine_offsets_and_counts():
    nccl = _FakeNccl()
    comm = _HostComm(nccl, size=3, rank=1)
    engine = _StandInEngine(comm, nccl)
    buffer = np.zeros(12, np.float32)
    base = buffer.ctypes.data
    engine.all_gather(buffer)
    assert comm.calls[-1] == ("allGather", base + 4 * 4, base, 4, nccl.NCCL_FLOAT32)  # in place: own block
    received = np.zeros(12, np.float32)
    comm.calls.clear()
    engine.all_to_all(buffer, received)
    assert nccl.depth == 0 and nccl.groups == 1  # one group around all pairs
    assert [c for c in comm.calls if c[0] == "send"] == [("send", base + 16 * p, 4, nccl.NCCL_FLOAT32, p)
                                                         for p in range(3)]
    assert [c for c in comm.calls if c[0] == "recv"] == [
        ("recv", received.ctypes.data + 16 * p, 4, nccl.NCCL_FLOAT32, p) for p in range(3)]
    shard = np.zeros(4, np.float64)
    engine.reduce_scatter_sum(np.zeros(12, np.float64), shard)
    assert comm.calls[-1][2:] == (shard.ctypes.data, 4, nccl.NCCL_FLOAT64, nccl.NCCL_SUM)
    with pytest.raises(TypeError, match="no NCCL type"):
        engine.all_gather(np.zeros(3, np.complex64))


def test_nccl_engine_exchange_small_and_large_objects():
    nccl = _FakeNccl()
    comm = _HostComm(nccl)
    engine = _StandInEngine(comm, nccl)
    assert engine.exchange((None, "f" * 40)) == [(None, "f" * 40)]
    assert [c[0] for c in comm.calls] == ["allGather"]  # the per-step message fits one round
    big = ("ValueError", "x" * 1000)
    assert engine.exchange(big) == [big]
    assert [c[0] for c in comm.calls] == ["allGather"] * 3  # a second, wider round for what did not fit


@pytest.mark.parametrize("reduction", ["ordered", "engine"])
@pytest.mark.parametrize("name", ["adam", "momentum", "rmsprop"])
def test_nccl_engine_world_of_one_matches_plain_optimizer(name, reduction):
    """ShardedOptimizer end to end through the NCCL engine's code (stand-in transport, one rank): a plain step."""
    nccl = _FakeNccl()
    cls = fastopt.OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(7, 3), (5,), (0,)]]
    sharded_params = [p.copy() for p in params]
    sharded = ShardedOptimizer(cls, sharded_params, _StandInEngine(_HostComm(nccl), nccl), reduction=reduction,
                               lr=0.01)
    plain = cls([p.copy() for p in params], lr=0.01)
    for _ in range(5):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        sharded.step(grads)
        plain.step(grads)
    for a, b in zip(sharded_params, plain.param_groups[0]["params"]):
        np.testing.assert_array_equal(a, b)
    saved, expected = sharded.state_dict(), plain.state_dict()
    assert sorted(saved["state"]) == sorted(expected["state"])
    for key, entry in expected["state"].items():
        for slot, value in entry.items():
            np.testing.assert_array_equal(saved["state"][key][slot], value)


@pytest.mark.parametrize("name", [n for n, s in fastopt.SPECS.items() if not splittable(s)])
def test_optimizers_reading_whole_tensors_are_refused(name):
    """LAMB's and LARS's per-tensor norms (and shaped state) would be computed over each rank's piece: refused."""
    nccl = _FakeNccl()
    params = [np.ones((4, 3), np.float32)]
    with pytest.raises(ValueError, match=r"optimizer_class: .* cannot be sharded"):
        ShardedOptimizer(fastopt.OPTIMIZERS[name], params, _StandInEngine(_HostComm(nccl), nccl))
    np.testing.assert_array_equal(params[0], 1)


def test_bad_input_changes_nothing_single_rank():
    nccl = _FakeNccl()
    params = [np.ones(5, np.float32)]
    opt = ShardedOptimizer(fastopt.Adam, params, _StandInEngine(_HostComm(nccl), nccl), lr=0.1)
    with pytest.raises(ValueError, match=r"rank 0: grads\[0\]: expected shape \(5,\)"):
        opt.step([np.ones(4, np.float32)])
    with pytest.raises(ValueError, match="reduction"):
        ShardedOptimizer(fastopt.Adam, params, _StandInEngine(_HostComm(nccl), nccl), reduction="tree")
    class ArrayLike:  # shaped and typed, but neither NumPy nor CuPy: the buckets could not hold it
        shape, dtype, size = (3,), np.dtype(np.float32), 3

    with pytest.raises(TypeError, match="rank 0: params: expected NumPy or CuPy arrays"):
        ShardedOptimizer(fastopt.Adam, [ArrayLike()], _StandInEngine(_HostComm(nccl), nccl))
    np.testing.assert_array_equal(params[0], np.ones(5, np.float32))
    assert opt.state_dict()["state"] == {}


# ---- MPI ------------------------------------------------------------------------------------------------------------

def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install -e '.[mpi]')")
    found = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                           os.environ.get("PATH", "")]))
    if found is None:
        pytest.skip("no mpiexec on PATH (pip install mpich)")
    command = [found]
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "Open MPI" in version or "OpenRTE" in version:  # Open MPI refuses more ranks than cores, and root, by default
        command += ["--oversubscribe", "--allow-run-as-root"]
    return command


def _launch(n, script, *args, timeout=120):
    """`mpiexec -n n python -m mpi4py script args`: -m mpi4py makes an uncaught exception on one rank abort the job."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*_mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py", str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def mpi_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi") / f"cases_{request.param}.json"
    done = _launch(request.param, CASES, out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return request.param, json.loads(out.read_text())["ranks"]


ALL = [*(n for n, s in fastopt.SPECS.items() if splittable(s)), "momentum", "nesterov"]


@pytest.mark.parametrize("name", ALL)
def test_sharded_steps_equal_single_process_on_mean_grads(mpi_run, name):
    size, ranks = mpi_run
    assert len(ranks) == size
    for rank in ranks:
        case = rank["trajectory"][name]
        assert case["params_equal"], f"{name}: max |diff| {case['max_abs_diff']}"
        assert case["state_equal"]
        assert case["identical_across_ranks"]
        assert case["views_current"]


def test_clipping_and_amp_follow_a_single_process(mpi_run):
    size, ranks = mpi_run
    for rank in ranks:
        for label, case in rank["clip_amp"].items():
            assert case["skips_agree"], f"{label}: {case['skipped']}"
            assert case["identical_across_ranks"], label
            if label.startswith("amp"):   # the inf at step 3 and found_inf at step 5 skip everywhere
                assert case["skipped"][2] and case["skipped"][4] and not any(case["skipped"][:2]), label
            if label in ("clip_inf", "amp") or size == 1:   # no sum split between ranks: exact
                assert case["params_equal"], f"{label}: max relative difference {case['max_rel_diff']}"
            else:   # the 2- and 1-norms are summed by piece: the coefficient may differ in its last bits
                assert case["max_rel_diff"] < 1e-5, label


def test_engine_reduction(mpi_run):
    size, ranks = mpi_run
    for rank in ranks:
        case = rank["engine_reduction"]
        assert case["identical_across_ranks"]
        if size == 2:  # a + b == b + a: the engine's sum is the ordered one
            assert case["params_equal"]
        else:  # the engine picks the order of additions: a few ulps of the grads, through 10 Adam steps
            assert case["max_abs_diff"] < 1e-5


def test_resume_at_another_world_size(mpi_run):
    size, ranks = mpi_run
    other = 2 if size > 2 else 1
    expected = {f"{other}->{size}", f"{size}->{other}"}
    for rank_index, rank in enumerate(ranks):
        for name, report in rank["resume"].items():
            # ranks outside the smaller world only see the resume at the larger one
            assert set(report) == (expected if rank_index < other else {f"{other}->{size}"}), name
            for key, result in report.items():
                assert result == {"params_equal": True, "state_equal": True, "plain_resume_equal": True}, \
                    (name, key)


def test_bad_input_on_one_rank_fails_everywhere_with_the_same_error(mpi_run):
    size, ranks = mpi_run
    errors = ranks[0]["faults"]["errors"]
    assert len(errors) == size
    last = size - 1
    for case in ["bad_shape", "bad_dtype", "lr_differs", "bad_lr", "bad_state", "bad_construction", "bad_class"]:
        seen = {tuple(e[case]) if e[case] else None for e in errors}
        assert len(seen) == 1 and None not in seen, (case, seen)  # every rank raised, the same type and text
    expected = {"bad_shape": ("ValueError", rf"rank {last}: grads\[2\]: expected shape \(29,\)"),
                "bad_dtype": ("TypeError", rf"rank {last}: grads\[1\]: expected dtype float64"),
                "lr_differs": ("ValueError", rf"ranks 0 and {last} differ"),
                "bad_lr": ("ValueError", rf"rank {last}: adam: invalid lr=-1.0"),
                "bad_state": ("ValueError", rf"rank {last}: state_dict: state\[0\]\['exp_avg'\] has shape"),
                "bad_construction": ("ValueError", rf"ranks 0 and {last} differ"),
                "bad_class": ("TypeError", rf"rank {last}: optimizer_class: expected a fastopt optimizer class")}
    for case, (kind, pattern) in expected.items():
        assert errors[0][case][0] == kind and re.match(pattern, errors[0][case][1]), (case, errors[0][case])
    for rank in ranks:
        assert rank["faults"]["unchanged"] and rank["faults"]["works_after"]


def test_views_without_copies(mpi_run):
    _, ranks = mpi_run
    for rank in ranks:
        views = rank["views"]
        assert views["views_equal"] and views["user_untouched"] and views["shard_starts_aligned"]
        assert views["local_state_elements"] == sum(views["local_elements"])
        assert views["inner_groups"] == views["local_buckets"] == 2  # one fused update per (group, dtype) bucket
    # state exists for the shard only: the ranks' local elements add up to the model, none held twice
    totals = np.sum([rank["views"]["local_elements"] for rank in ranks], axis=0)
    assert totals.tolist() == [13 * 7 + 29 + 0, 5 + 9]


@pytest.mark.parametrize("how", ["exit", "raise"])
def test_dead_rank_ends_the_job_with_an_error(how):
    done = _launch(2, ROOT / "tests" / "distributed" / "dead_rank.py", how, timeout=60)  # a hang fails by timeout
    assert done.returncode != 0
    assert "finished its steps without rank 1" not in done.stdout
    if how == "raise":
        assert "rank 1 fails on its own" in done.stderr


def test_sharded_example_runs():
    """docs/examples/sharded_mpi.py (the README's sharded example): it trains, and each rank holds half the state."""
    done = _launch(2, ROOT / "docs" / "examples" / "sharded_mpi.py")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == 2
    for line in lines:
        loss = float(line.split("loss ")[1].split(",")[0])
        assert loss < 1e-4
    held = [int(line.split("held there ")[1].split(" ")[0]) for line in lines]
    total = int(lines[0].split(" of ")[1])
    assert sum(held) == total and max(held) <= total // 2 + 64


# ---- NCCL on a GPU ------------------------------------------------------------------------------------------------

def _nccl_or_skip():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
        from cupy.cuda import nccl
    except Exception as error:  # noqa: BLE001 - any failure to reach a device or NCCL means: skip here
        pytest.skip(f"no CUDA device or NCCL: {error}")
    if not nccl.available:
        pytest.skip("CuPy was built without NCCL")
    return cupy, nccl


@pytest.mark.cuda
@pytest.mark.parametrize("reduction", ["ordered", "engine"])
def test_gpu_nccl_world_of_one_matches_plain_optimizer(reduction):
    cupy, nccl = _nccl_or_skip()
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s).astype(np.float32) for s in [(257, 33), (1000,), (3,)]]
    params = [cupy.asarray(p) for p in host]
    sharded = ShardedOptimizer(fastopt.Adam, params, comm, reduction=reduction, lr=0.01, amsgrad=True)
    plain = fastopt.Adam([cupy.asarray(p) for p in host], lr=0.01, amsgrad=True)
    for _ in range(10):
        grads = [cupy.asarray(rng.standard_normal(p.shape).astype(np.float32)) for p in host]
        sharded.step(grads)
        plain.step(grads)
    for a, b in zip(params, plain.param_groups[0]["params"]):
        np.testing.assert_array_equal(cupy.asnumpy(a), cupy.asnumpy(b))
    saved, expected = sharded.state_dict(), plain.state_dict()
    for key, entry in expected["state"].items():
        for slot, value in entry.items():
            np.testing.assert_array_equal(saved["state"][key][slot], value)
