"""Transport engines behind `ShardedOptimizer`: a small interface over an existing communication library.

fastopt writes no transport of its own. An engine wraps a communicator and offers the five operations the sharded
optimizer needs, on flat contiguous buffers split into `size` equal blocks of `block` elements:

    reduce_scatter_sum(send, recv)   recv (one block) = the sum over ranks of their send's block `rank`
    all_to_all(send, recv)           block r of send goes to rank r, block r of recv comes from rank r; recv may be
                                     send itself (in place) where `in_place_all_to_all` is True
    all_gather(buffer)               in place: every rank's block `rank` is copied to every rank
    exchange(obj)                    small picklable host objects from every rank, as a list in rank order
    rank, size

Another engine (Gloo, torch.distributed, ...) is added by implementing these on top of its own collectives.
"""

from __future__ import annotations

import pickle


def array_module(array):
    """numpy for NumPy arrays, cupy for CuPy arrays."""
    import numpy

    if isinstance(array, numpy.ndarray):
        return numpy
    import cupy

    return cupy.get_array_module(array)


class Engine:
    """Base of every engine: `rank`, `size` and the collectives listed in the module docstring."""

    name = "engine"
    rank: int
    size: int
    in_place_all_to_all = False  # True: all_to_all(buffer, buffer) is allowed, and saves a buffer of a bucket

    def reduce_scatter_sum(self, send, recv) -> None:
        raise NotImplementedError

    def all_to_all(self, send, recv) -> None:
        raise NotImplementedError

    def all_gather(self, buffer) -> None:
        raise NotImplementedError

    def exchange(self, obj) -> list:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


# ---- MPI (mpi4py) ---------------------------------------------------------------------------------------------------

class MPIEngine(Engine):
    """An mpi4py communicator. NumPy buffers; CuPy buffers need a CUDA-aware MPI (passed as device pointers by
    mpi4py), and the current stream is synchronized before each call since MPI does not order itself on it."""

    name = "mpi"
    in_place_all_to_all = True  # MPI_Alltoall with MPI_IN_PLACE (MPI 2.2)

    def __init__(self, comm):
        from mpi4py import MPI

        self.comm, self._mpi = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    @staticmethod
    def _ready(*buffers):
        if any(hasattr(b, "__cuda_array_interface__") for b in buffers):
            import cupy

            cupy.cuda.get_current_stream().synchronize()

    def reduce_scatter_sum(self, send, recv) -> None:
        self._ready(send, recv)
        self.comm.Reduce_scatter_block(send, recv, op=self._mpi.SUM)

    def all_to_all(self, send, recv) -> None:
        self._ready(send, recv)
        self.comm.Alltoall(self._mpi.IN_PLACE if recv is send else send, recv)

    def all_gather(self, buffer) -> None:
        self._ready(buffer)
        self.comm.Allgather(self._mpi.IN_PLACE, buffer)

    def exchange(self, obj) -> list:
        return self.comm.allgather(obj)


# ---- NCCL (cupy.cuda.nccl) ------------------------------------------------------------------------------------------

class NCCLEngine(Engine):
    """A `cupy.cuda.nccl.NcclCommunicator` (or the one inside `cupyx.distributed.init_process_group(...)`).

    Collectives are enqueued on CuPy's current stream, like the fused kernels, so no host synchronization is needed
    between them. `exchange` moves pickled bytes through the device (two all-gathers) and synchronizes.
    """

    name = "nccl"

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = int(comm.rank_id()), int(comm.size())

    # hooks: a stand-in replaces these three to test the engine's arithmetic of counts and offsets without a GPU
    def _nccl(self):
        from cupy.cuda import nccl

        return nccl

    def _stream(self) -> int:
        import cupy

        return cupy.cuda.get_current_stream().ptr

    @staticmethod
    def _ptr(array) -> int:
        return array.data.ptr

    def _empty(self, n, dtype):
        import cupy

        return cupy.zeros(n, dtype)

    def _dtype(self, array) -> int:
        nccl = self._nccl()
        codes = {"e": nccl.NCCL_FLOAT16, "f": nccl.NCCL_FLOAT32, "d": nccl.NCCL_FLOAT64, "B": nccl.NCCL_UINT8,
                 "q": nccl.NCCL_INT64, "l": nccl.NCCL_INT64}
        if array.dtype.char not in codes:
            raise TypeError(f"NCCL engine: no NCCL type for dtype {array.dtype}")
        return codes[array.dtype.char]

    def reduce_scatter_sum(self, send, recv) -> None:
        nccl = self._nccl()
        self.comm.reduceScatter(self._ptr(send), self._ptr(recv), recv.size, self._dtype(send), nccl.NCCL_SUM,
                                self._stream())

    def all_to_all(self, send, recv) -> None:
        nccl, block = self._nccl(), send.size // self.size
        step, dtype, stream = block * send.itemsize, self._dtype(send), self._stream()
        nccl.groupStart()  # one fused group of send/recv pairs: NCCL's documented way to express all-to-all
        try:
            for peer in range(self.size):
                self.comm.send(self._ptr(send) + peer * step, block, dtype, peer, stream)
                self.comm.recv(self._ptr(recv) + peer * step, block, dtype, peer, stream)
        finally:
            nccl.groupEnd()

    def all_gather(self, buffer) -> None:
        block = buffer.size // self.size
        base = self._ptr(buffer)
        # in place: NCCL's all-gather is in place when sendbuff == recvbuff + rank * count * itemsize
        self.comm.allGather(base + self.rank * block * buffer.itemsize, base, block, self._dtype(buffer),
                            self._stream())

    def exchange(self, obj) -> list:
        """Pickled objects through one all-gather of fixed-size slots (a length, then the bytes); a second, wider one
        only when some rank's object does not fit. Reading the result synchronizes the host with the stream."""
        import numpy

        data = numpy.frombuffer(pickle.dumps(obj), numpy.uint8)
        slots = self._gather_slots(data, self.EXCHANGE_SLOT)
        lengths = [int(numpy.frombuffer(slot[:8].tobytes(), numpy.int64)[0]) for slot in slots]
        if max(lengths) > self.EXCHANGE_SLOT - 8:
            slots = self._gather_slots(data, max(lengths) + 8)
        return [pickle.loads(slot[8:8 + n].tobytes()) for slot, n in zip(slots, lengths)]

    EXCHANGE_SLOT = 256  # bytes per rank: the per-step validation message (~60 bytes) fits in one round

    def _gather_slots(self, data, width):
        import numpy

        mine = numpy.zeros(width, numpy.uint8)
        mine[:8] = numpy.frombuffer(numpy.int64(data.size).tobytes(), numpy.uint8)
        fit = min(data.size, width - 8)
        mine[8:8 + fit] = data[:fit]
        buffer = self._empty(self.size * width, numpy.uint8)
        buffer[self.rank * width:(self.rank + 1) * width] = _like(buffer, mine)
        self.all_gather(buffer)
        host = _to_host(buffer)
        return [host[r * width:(r + 1) * width] for r in range(self.size)]


def _to_host(array):
    return array.get() if hasattr(array, "get") else array  # CuPy's .get() synchronizes the stream


def _like(target, host):
    return array_module(target).asarray(host)


def as_engine(comm) -> Engine:
    """An Engine for `comm`: an Engine itself, an mpi4py communicator, a cupy NcclCommunicator, or
    cupyx.distributed's NCCL backend (`init_process_group(...)`)."""
    if isinstance(comm, Engine):
        return comm
    if hasattr(comm, "Get_rank") and hasattr(comm, "Reduce_scatter_block"):
        return MPIEngine(comm)
    if hasattr(comm, "reduceScatter") and hasattr(comm, "rank_id"):
        return NCCLEngine(comm)
    inner = getattr(comm, "_comm", None)  # cupyx.distributed.NCCLBackend keeps its NcclCommunicator here
    if inner is not None and hasattr(inner, "reduceScatter"):
        return NCCLEngine(inner)
    raise TypeError(f"comm: expected an mpi4py communicator, a cupy.cuda.nccl.NcclCommunicator, a "
                    f"cupyx.distributed NCCL backend or a fastopt.distributed Engine, got {type(comm).__name__}")
