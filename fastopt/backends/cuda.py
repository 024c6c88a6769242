"""The `cuda` backend: the CUDA C kernels of kernels/cuda, compiled by CuPy, one launch per param group and dtype.

Arrays: CuPy arrays, and anything exposing `__cuda_array_interface__` or a CUDA `__dlpack__` (torch CUDA tensors...),
viewed zero-copy as CuPy arrays. A torch tensor that requires grad (every `nn.Parameter`) refuses both exports, so it
is viewed through `tensor.detach()` (the same memory). CuPy is imported only when something here needs it.

`prepare` looks up the two kernels of the family for this dtype and these flags (compiling the family's module once
per process with `cupy.RawModule`; CuPy >= 14.1 keeps the compiled module in its disk cache, older CuPy recompiles it
in every process, 1-3 s per family, and a warning says so), records the pointers of params and slots, sizes both grids
from CuPy's occupancy query for the kernel launched (one wave of resident blocks, each looping over its share), and
decides whether the group can run flat: params laid out back to back in memory, and every active slot likewise.
`run` launches ONE kernel:
- flat   when the grads are back to back too: one grid-stride pass over the whole buffer;
- table  otherwise: a device-side table of pointers and int64 sizes built once (params and slots), a chunk table
         (tensor, chunk) built once, and the grads' pointer table, rewritten (one small host-to-device copy on the
         launch stream) only when the grads' addresses differ from the previous step's.
The mode is chosen again only when the grads' addresses change, so a training loop reusing its grad buffers does no
host-to-device copy and no allocation per step. Nothing is remembered from a step whose checks failed.

Kernel contract v2 (specs with `reductions`: LAMB, LARS) always runs the table, in three launches on one stream with
no copy and no synchronization: `reduce` (every declared reduction's partial per chunk of the chunk table, the
"update" value computed without writing), `combine` (per tensor, in a fixed order, then the family's per-tensor
scalars into a device array), and the update kernel, which reads its chunk's tensor's scalars from that array. The
scratch (partials, reduced values, per-tensor scalars) is allocated at prepare time. `reduce_grads` (clipping's norm,
AMP's non-finite count) and `reduce_arrays` (fastopt.clip_grad_norm_) are one multi-tensor pass of
kernels/cuda/reduce.cu (two launches) and one copy of the per-tensor values to the host. Every reduction is
deterministic, bitwise the same run to run, in the order kernels/cuda/common.cuh states (fo_block_reduce; within the
bound tests/test_cuda_reduce.py derives of fastopt.reference's order).

Shaped state (Adafactor: row_var / col_var / variance shaped unlike the params) has its own plan,
fastopt.backends.cuda_adafactor.AdafactorPlan (`prepare` routes to it): the kernels of kernels/cuda/adafactor.cu in
nine launches a step on the same stream, tables and float64 scratch at prepare time, the grads' pointers rewritten
only when their addresses change; float32 and float64 params (TypeError for the half types); not capturable.

Streams: the launch goes to torch's current stream when the params are torch tensors (the backward pass that wrote
the grads ran there), else to CuPy's current stream. Before the grads' table is rewritten on one stream while the
last launch that read it went to another, the writing stream waits for that launch (an event).

Capturable (Optimizer(..., capturable=True) or the functional API's capturable=True; every optimizer whose family
source declares `fo_<family>_scalars` and keeps no host state, fastopt.cuda_build.is_capturable: Adam, AdamW, SGD,
Adagrad, RMSprop, Adadelta, Adamax, RAdam, Lion, Signum, Yogi, AdaBelief, ADOPT, AdEMAMix, Rprop, LAMB, LARS): by
default lr, the bias corrections and the other per-step scalars are kernel arguments, which a CUDA graph freezes at
capture. A capturable
plan (`make_capturable`) keeps the step count (int64), the hyperparameters (float64) and the kernel scalars in
device memory allocated once, and a step is two launches whose arguments never change: `advance` (one thread: step +
1, then the family's fo_<family>_scalars computes the scalars in float64 from the hyperparameters, as the spec's
Python `scalars` does, rounded once to the compute type) and the update (`flatdev` / `tabledev`) reading them; with
per-tensor reductions (LAMB, LARS) four: advance, `reducedev`, `combinedev` (reading the float64 scalars) and
`tabledev`. So a step captured in a graph and replayed is the eager capturable step, bit for bit, and eager
capturable steps are the host-scalar steps bit for bit where CUDA's pow gives the C library's result (else within
the 2-ulp bound tests/test_capturable.py states). Hyperparameters reach the device through `set_hyper`, a copy only
when they changed: every eager step calls it, and between graph replays `Optimizer.write_hyperparameters()` does
(after changing lr in param_groups, e.g. by a scheduler); the plan never reads param_groups itself. The step count
on the device is the truth (state_dict reads it back). Not with max_grad_norm, grad_scale or found_inf (their
decisions are read on the host), nor for optimizers with host state (NAdam, ASGD, schedule-free: their host values
advance per param on the host).

bfloat16: CuPy has no bfloat16 dtype of its own; parameters of dtype `bfloat16` (ml_dtypes) or `uint16` (bfloat16
bits, e.g. a torch bfloat16 tensor viewed as int16) are updated as bfloat16 with float32 state.
"""

from __future__ import annotations

import operator
import sys
import warnings

import numpy as np

from fastopt import codegen, cuda_build

# The oldest CuPy whose disk cache keeps modules built with name_expressions (older ones recompile in every process).
CUPY_DISK_CACHE_VERSION = (14, 1)

_cupy = None
_import_error: str | None = None
_modules: dict = {}        # family -> cupy.RawModule (compiled lazily, per device)
_sm_counts: dict = {}      # device id -> number of SMs
_warned_cache = False


def _import_cupy():
    global _cupy, _import_error
    if _cupy is None and _import_error is None:
        try:
            import cupy
            _cupy = cupy
        except ImportError as error:
            _import_error = (f"CuPy is not installed ({error}); install cupy-cuda12x or cupy-cuda13x to match the "
                             "CUDA driver")
        except Exception as error:  # noqa: BLE001 - a broken CuPy install is "not available", with its message
            _import_error = f"CuPy failed to import: {type(error).__name__}: {error}"
    return _cupy


def _cp():
    cp = _import_cupy()
    if cp is None:
        raise RuntimeError(f"the cuda backend is not available: {_import_error}")
    return cp


def _torch():
    """torch, when the program has imported it (fastopt never imports it itself)."""
    return sys.modules.get("torch")


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits) if piece[:1].isdigit() else 0)
    return tuple(parts)


def cupy_caches_on_disk(cp=None) -> bool:
    """True when this CuPy keeps modules built with name_expressions in its disk cache (CuPy >= 14.1)."""
    cp = cp or _cp()
    return _version_tuple(getattr(cp, "__version__", "0")) >= CUPY_DISK_CACHE_VERSION


def _dtype_key(dtype) -> str:
    d = np.dtype(dtype)
    if d == np.uint16 or d.name == "bfloat16":
        return "bfloat16"
    if d.name in cuda_build.PARAM_TYPES:
        return d.name
    raise TypeError(f"the cuda backend updates float16, bfloat16 (or its uint16 bits), float32 and float64 params, "
                    f"got {d}")


def _module(family: str):
    global _warned_cache
    mod = _modules.get(family)
    if mod is None:
        cp = _cp()
        if not cupy_caches_on_disk(cp) and not _warned_cache:
            _warned_cache = True
            warnings.warn(f"CuPy {cp.__version__} does not keep kernels built with name expressions in its disk "
                          f"cache: every new process compiles each fastopt kernel family again (1-3 s each). "
                          f"CuPy >= {'.'.join(map(str, CUPY_DISK_CACHE_VERSION))} caches them.", RuntimeWarning,
                          stacklevel=3)
        mod = cp.RawModule(code=cuda_build.source(family), options=cuda_build.DEVICE_OPTIONS,
                           name_expressions=cuda_build.name_expressions(family))
        _modules[family] = mod
    return mod


def _sm_count(device_id: int) -> int:
    if device_id not in _sm_counts:
        _sm_counts[device_id] = int(_cp().cuda.Device(device_id).attributes["MultiProcessorCount"])
    return _sm_counts[device_id]


def resident_blocks(kernel, device_id: int) -> int:
    """Blocks of BLOCK threads of `kernel` (a CuPy RawKernel) resident on the whole device at once: CUDA's occupancy
    calculator for this compiled kernel (its registers decide it: 3-6 blocks per SM for these kernels on sm_90)."""
    cp = _cp()
    per_sm = int(cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(kernel.kernel.ptr, cuda_build.BLOCK, 0))
    if per_sm < 1:
        raise RuntimeError(f"{kernel.name}: no block of {cuda_build.BLOCK} threads fits on an SM (occupancy 0)")
    return per_sm * _sm_count(device_id)


def _back_to_back(ptrs, sizes, itemsize) -> bool:
    """True when the non-empty arrays follow one another in memory, in order, without gaps."""
    expected = None
    for ptr, n in zip(ptrs, sizes):
        if n == 0:
            continue
        if expected is not None and ptr != expected:
            return False
        expected = ptr + n * itemsize
    return True


def _first_ptr(ptrs, sizes) -> int:
    return next((p for p, n in zip(ptrs, sizes) if n), 0)


def _from_torch(array) -> bool:
    """True when a CuPy array is a view of a torch tensor's memory (CuPy keeps the exporting object as the owner)."""
    torch = _torch()
    owner = getattr(getattr(getattr(array, "data", None), "mem", None), "_owner", None)
    return torch is not None and owner is not None and isinstance(owner, torch.Tensor)


class _StreamHandle:
    """A raw cudaStream_t under the CUDA stream protocol, for cupy.cuda.Stream.from_external."""

    def __init__(self, handle: int):
        self.handle = handle

    def __cuda_stream__(self):
        return (0, self.handle)


def _external_stream(cp, handle: int, device_id: int):
    from_external = getattr(cp.cuda.Stream, "from_external", None)   # CuPy >= 14; ExternalStream is deprecated there
    if from_external is not None:
        return from_external(_StreamHandle(handle))
    return cp.cuda.ExternalStream(handle, device_id)


class _Reducer:
    """Scratch and launches of one multi-tensor reduction of arrays (kernels/cuda/reduce.cu) for a fixed list of sizes
    and one dtype: the chunk table, per-tensor chunk offsets, partials and values allocated once, the arrays' pointer
    table rewritten only when their addresses change. Two launches, then one device-to-host copy of the values."""

    def __init__(self, device: int, key: str, sizes: list[int]):
        cp = _cp()
        self.device, self.key, self.sizes = device, key, list(sizes)
        self.ctype = np.float64 if key == "float64" else np.float32
        self.total = sum(self.sizes)
        with cp.cuda.Device(device):
            mod = _module(cuda_build.REDUCE)
            self.partials_kernel = mod.get_function(cuda_build.kernel_name(cuda_build.REDUCE, "partials", key, ()))
            self.combine_kernel = mod.get_function(cuda_build.kernel_name(cuda_build.REDUCE, "combine", key, ()))
            resident = resident_blocks(self.partials_kernel, device)
            self.combine_blocks = max(1, min(len(sizes), resident_blocks(self.combine_kernel, device)))
            chunk_elems = cuda_build.choose_chunk_elems(self.total, resident)
            chunks = cuda_build.build_chunk_table(self.sizes, chunk_elems)
            self.nchunks, self.chunk_elems = len(chunks), chunk_elems
            self.blocks = max(1, min(len(chunks), resident))
            offsets = cuda_build.tensor_chunk_offsets(chunks, len(sizes))
            stream = cp.cuda.get_current_stream()
            self.d_chunks = cp.empty(max(len(chunks), 1), dtype=np.int64)
            self.d_sizes = cp.empty(max(len(sizes), 1), dtype=np.int64)
            self.d_offsets = cp.empty(len(offsets), dtype=np.int64)
            self.d_ptrs = cp.zeros(max(len(sizes), 1), dtype=np.uint64)
            self.d_partials = cp.empty(max(len(chunks), 1), dtype=np.float64)
            self.d_values = cp.empty(max(len(sizes), 1), dtype=np.float64)
            self.d_chunks[:len(chunks)].set(chunks, stream=stream)
            self.d_sizes[:len(sizes)].set(np.asarray(self.sizes, dtype=np.int64), stream=stream)
            self.d_offsets.set(offsets, stream=stream)
            stream.synchronize()   # the host arrays above are temporaries
        self._ptrs = None
        self._last_stream = None

    def run(self, ptrs: tuple, op: str, power: float, unscale_by, stream) -> list:
        from fastopt.reference import REDUCTIONS, reduction_start
        if not self.total:
            return [reduction_start(op)] * len(self.sizes)
        if op not in REDUCTIONS:
            raise ValueError(f"unknown reduction {op!r}; expected one of {sorted(REDUCTIONS)}")
        cp = _cupy
        with cp.cuda.Device(self.device):
            if ptrs != self._ptrs:
                last = self._last_stream
                if last is not None and last.ptr != stream.ptr:   # a launch on another stream may still read it
                    done = cp.cuda.Event(disable_timing=True)
                    done.record(last)
                    stream.wait_event(done)
                self.d_ptrs.set(np.asarray(ptrs, dtype=np.uint64), stream=stream)
                self._ptrs = ptrs
            self._last_stream = stream
            code = np.int32(REDUCTIONS[op])
            with stream:
                self.partials_kernel((self.blocks,), (cuda_build.BLOCK,), (
                    self.d_chunks, np.int64(self.nchunks), np.int64(self.chunk_elems), self.d_ptrs, self.d_sizes,
                    code, np.float64(power), self.ctype(1.0 if unscale_by is None else unscale_by), self.d_partials))
                self.combine_kernel((self.combine_blocks,), (cuda_build.BLOCK,), (
                    self.d_offsets, np.int64(len(self.sizes)), code, self.d_partials, self.d_values))
            values = self.d_values.get(stream=stream)
        return [float(v) for v in values[:len(self.sizes)]]


class _CudaPlan:
    def __init__(self, spec, params, slots, flags):
        cp = _cp()
        self.spec = spec
        self.family = spec.kernel
        self.flags = tuple(flags)
        self.capturable = False    # make_capturable: the scalars and the step count in device memory
        dtype = params[0].dtype
        key = _dtype_key(dtype)
        self.ctype = np.float64 if key == "float64" else np.float32
        self.params = list(params)
        self.slots = [slots[s.name] for s in spec.slots]   # kept alive: the tables hold their addresses
        self.sizes = [int(p.size) for p in params]
        self.total = sum(self.sizes)
        arrays = self.params + [a for s in self.slots if s is not None for a in s]
        self.device = _one_device(arrays, "params and state")
        self.on_torch_stream = any(_from_torch(p) for p in self.params)
        self.param_ptrs = [int(p.data.ptr) for p in self.params]
        self.slot_ptrs = [None if s is None else [int(a.data.ptr) for a in s] for s in self.slots]
        p_size = np.dtype(dtype).itemsize
        s_size = np.dtype(self.ctype).itemsize
        self.p_itemsize = p_size
        # Kernel contract v2: per-tensor scalars need the chunk's tensor, so such a spec always runs the table.
        self.reductions = bool(spec.reductions)
        self.flat_layout = not self.reductions and _back_to_back(self.param_ptrs, self.sizes, p_size) and all(
            s is None or _back_to_back(s, self.sizes, s_size) for s in self.slot_ptrs)
        self.key = key
        with cp.cuda.Device(self.device):
            mod = _module(self.family)
            self.table_kernel = mod.get_function(cuda_build.kernel_name(self.family, "table", key, flags))
            # One wave of resident blocks; more would queue behind it, a partial last wave idling most of the device.
            self.table_resident = resident_blocks(self.table_kernel, self.device)
            if self.reductions:
                self.flat_kernel = None
                self.reduce_kernel = mod.get_function(cuda_build.kernel_name(self.family, "reduce", key, flags))
                self.combine_kernel = mod.get_function(cuda_build.kernel_name(self.family, "combine", key, flags))
                self.reduce_resident = resident_blocks(self.reduce_kernel, self.device)
                self.combine_blocks = max(1, min(len(self.sizes), resident_blocks(self.combine_kernel, self.device)))
            else:
                self.flat_kernel = mod.get_function(cuda_build.kernel_name(self.family, "flat", key, flags))
                self.flat_resident = resident_blocks(self.flat_kernel, self.device)
        if not self.reductions:
            per_block = cuda_build.BLOCK * cuda_build.vector_width(key)
            self.flat_blocks = max(1, min(-(-self.total // per_block), self.flat_resident))
        self._table = None        # built on first need: (prefix args, blocks, grad table device array)
        self._table_stream = None  # the stream of the last launch that read the grads' table
        self._grad_key = None     # the grads' addresses the current mode was chosen for
        self._grad_objects = []   # the grads of the last step (held, so their memory stays theirs)
        self._kernel = None
        self._blocks = 0
        self._prefix = ()
        self._streams = {}        # torch stream handle -> CuPy stream object
        self._grad_reducer = None  # reduce_grads' scratch (_Reducer), built on its first call
        if self.reductions and self.total:
            self._build_table()    # and the reductions' scratch with it: nothing is allocated per step

    # -- the table, built once --------------------------------------------------------------------------------------

    def _build_table(self):
        cp = _cp()
        chunk_elems = cuda_build.choose_chunk_elems(self.total, self.table_resident)
        chunks = cuda_build.build_chunk_table(self.sizes, chunk_elems)
        ptrs = cuda_build.pack_pointer_table(self.param_ptrs, self.slot_ptrs)
        with cp.cuda.Device(self.device):
            stream = cp.cuda.get_current_stream()
            d_chunks = cp.empty(max(len(chunks), 1), dtype=np.int64)
            d_ptrs = cp.empty(len(ptrs), dtype=np.uint64)
            d_sizes = cp.empty(len(self.sizes), dtype=np.int64)
            d_grads = cp.zeros(len(self.sizes), dtype=np.uint64)
            d_chunks[:len(chunks)].set(chunks, stream=stream)
            d_ptrs.set(ptrs, stream=stream)
            d_sizes.set(np.asarray(self.sizes, dtype=np.int64), stream=stream)
            stream.synchronize()  # the host arrays above are temporaries; every stream sees the tables from now on
        blocks = max(1, min(len(chunks), self.table_resident))
        prefix = (d_chunks, np.int64(len(chunks)), np.int64(chunk_elems), d_ptrs, d_grads, d_sizes,
                  np.int64(len(self.sizes)))
        self._table = (prefix, blocks, d_grads)
        if self.reductions:
            # Scratch of the per-tensor reductions (common.cuh, fo_block_reduce): partials per chunk, each tensor's
            # reduced values and its per-tensor scalars (read by the update kernel by the chunk's tensor).
            nred, nts = len(self.spec.reductions), len(self.spec.tensor_scalar_names)
            offsets = cuda_build.tensor_chunk_offsets(chunks, len(self.sizes))
            with cp.cuda.Device(self.device):
                self.d_offsets = cp.empty(len(offsets), dtype=np.int64)
                self.d_offsets.set(offsets, stream=stream)
                self.d_partials = cp.empty(max(len(chunks), 1) * nred, dtype=np.float64)
                self.d_reduced = cp.empty(len(self.sizes) * nred, dtype=np.float64)
                self.d_tensor_scalars = cp.empty(len(self.sizes) * nts, dtype=self.ctype)
                stream.synchronize()
            self.reduce_blocks = max(1, min(len(chunks), self.reduce_resident))

    # -- the launch stream ------------------------------------------------------------------------------------------

    def _stream(self):
        cp = _cupy
        if not self.on_torch_stream:
            if cp.cuda.runtime.getDevice() == self.device:
                return cp.cuda.get_current_stream()
            with cp.cuda.Device(self.device):
                return cp.cuda.get_current_stream()
        handle = int(_torch().cuda.current_stream(self.device).cuda_stream)
        stream = self._streams.get(handle)
        if stream is None:
            if len(self._streams) >= 16:
                self._streams.clear()
            stream = self._streams[handle] = _external_stream(cp, handle, self.device)
        return stream

    # -- choosing the mode when the grads' addresses change --------------------------------------------------------

    def _select(self, grads, key, stream):
        # Every check first: a failed one leaves the plan exactly as it was.
        if len(grads) != len(self.params):
            raise ValueError(f"grads: expected {len(self.params)} arrays (one per param), got {len(grads)}")
        device = _one_device(grads, "grads")
        if device != self.device and self.total:
            raise ValueError(f"grads are on CUDA device {device} but params and state are on device {self.device}")
        if self.flat_layout and _back_to_back(key, self.sizes, self.p_itemsize):
            slots = tuple(np.uint64(0 if s is None else _first_ptr(s, self.sizes)) for s in self.slot_ptrs)
            self._kernel = self.flat_kernel
            self._blocks = self.flat_blocks
            self._prefix = (np.uint64(_first_ptr(self.param_ptrs, self.sizes)), np.uint64(_first_ptr(key, self.sizes)),
                            *slots, np.int64(self.total))
        else:
            if self._table is None:
                self._build_table()
            prefix, blocks, d_grads = self._table
            cp = _cp()
            with cp.cuda.Device(self.device):
                last = self._table_stream
                if last is not None and last.ptr != stream.ptr:
                    # The last launch that reads this table went to another stream: wait for it before overwriting.
                    done = cp.cuda.Event(disable_timing=True)
                    done.record(last)
                    stream.wait_event(done)
                d_grads.set(np.asarray(key, dtype=np.uint64), stream=stream)
            self._kernel = self.table_kernel
            self._blocks = blocks
            self._prefix = prefix
        self._grad_key = key

    def _ready(self, grads, stream) -> None:
        """The mode (flat or table) and its argument prefix for these grads: chosen again only when their addresses
        change. The same grad objects as last step need no look at all: a CuPy array's memory never moves."""
        if len(grads) == len(self._grad_objects) and all(map(operator.is_, grads, self._grad_objects)):
            return
        given = list(grads)
        try:
            key = tuple([g.data.ptr for g in grads])
        except AttributeError:  # not CuPy arrays: view them
            grads = [BACKEND.as_array(g) for g in grads]
            key = tuple([g.data.ptr for g in grads])
        if key != self._grad_key or len(grads) != len(self.params):
            self._select(grads, key, stream)
        self._grad_objects = given   # only now: these grads passed every check

    def run(self, grads, scalars, grad_scale=None, grad_factor=None):
        if not self.total:
            return
        if self.capturable:
            raise RuntimeError("this plan is capturable: run_capturable takes the step (scalars live on the device)")
        # The gradient transform (fastopt.codegen.GRAD_SCALARS): 1 and 1 leave the gradient exactly as it is.
        scalars = (*scalars, 1.0 if grad_scale is None else grad_scale, 1.0 if grad_factor is None else grad_factor)
        self._host_scalars = scalars   # in float64, for the per-tensor scalars' launch (kernel contract v2)
        stream = self._stream()
        self._ready(grads, stream)
        ctype = self.ctype
        self._launch(stream, self._prefix + tuple([ctype(s) for s in scalars]))

    # -- the capturable step: everything a step reads that changes lives in device memory ---------------------------

    def make_capturable(self, hyper: dict, step: int) -> None:
        """From now on `run_capturable` takes the steps: the step count (after `step` steps so far), the
        hyperparameters (float64, codegen.hyper_names order) and the kernel scalars live in device memory, allocated
        here; each step is two launches (advance: step + 1 and the scalars, by the family's fo_<family>_scalars; then
        the update reading them), with no argument that changes from step to step, so a CUDA graph captured around a
        step replays as the same step. Changed hyperparameters reach the device through `set_hyper`."""
        if not cuda_build.is_capturable(self.family):
            raise ValueError(f"capturable=True: {self.spec.class_name} has no capturable CUDA step (kernel family "
                             f"{self.family!r} declares no fo_{self.family}_scalars)")
        cp = _cp()
        names = codegen.hyper_names(self.family)
        with cp.cuda.Device(self.device):
            mod = _module(self.family)

            def get(kind):
                return mod.get_function(cuda_build.kernel_name(self.family, kind, self.key, self.flags))

            self.advance_kernel = get("advance")
            self.tabledev_kernel = get("tabledev")
            if self.reductions:   # the reductions read the device scalars too; the combine launch their float64
                self.flatdev_kernel = None
                self.reducedev_kernel, self.combinedev_kernel = get("reducedev"), get("combinedev")
            else:
                self.flatdev_kernel = get("flatdev")
            stream = cp.cuda.get_current_stream()
            self.d_hyper = cp.zeros(len(names), dtype=np.float64)
            self.d_step = cp.empty(1, dtype=np.int64)
            self.d_scalars = cp.zeros(len(self.spec.scalar_names) + 2, dtype=self.ctype)
            self.d_scalars64 = cp.zeros(max(len(self.spec.scalar_names), 1), dtype=np.float64)
            self.d_step.set(np.array([step], dtype=np.int64), stream=stream)
            stream.synchronize()
        self._hyper_written = None
        self.capturable = True
        self.set_hyper(hyper)

    def set_hyper(self, hyper: dict) -> bool:
        """Write the hyperparameters into the device hyper buffer when they differ from those written last (one
        small copy on the launch stream; none when unchanged, so a step captured in a graph records no copy).
        Returns True when it wrote."""
        values = codegen.hyper_values(self.family, hyper)
        if values == self._hyper_written:
            return False
        cp = _cp()
        with cp.cuda.Device(self.device):
            self.d_hyper.set(np.array(values, dtype=np.float64), stream=self._stream())
        self._hyper_written = values
        return True

    def device_step(self) -> int:
        """The step count kept on the device (one copy to the host, synchronizing)."""
        return int(self.d_step.get(stream=self._stream())[0])

    def run_capturable(self, grads) -> None:
        """One capturable step (see make_capturable): advance, then the update reading the device scalars."""
        if not self.capturable:
            raise RuntimeError("make_capturable first")
        if not self.total:
            return
        stream = self._stream()
        self._ready(grads, stream)
        self._launch_kernel(self.advance_kernel, 1, stream,
                            (self.d_hyper, self.d_step, self.d_scalars, self.d_scalars64))
        if self.reductions:   # kernel contract v2: reduce, combine, then the update, all reading device scalars
            self._table_stream = stream
            self._launch_kernel(self.reducedev_kernel, self.reduce_blocks, stream,
                                self._prefix + (self.d_scalars, self.d_partials))
            self._launch_kernel(self.combinedev_kernel, self.combine_blocks, stream,
                                (self.d_offsets, np.int64(len(self.sizes)), self.d_partials, self.d_scalars64,
                                 self.d_reduced, self.d_tensor_scalars))
            self._launch_kernel(self.tabledev_kernel, self._blocks, stream,
                                self._prefix + (self.d_scalars, self.d_tensor_scalars))
            return
        if self._kernel is self.table_kernel:
            self._table_stream = stream
            kernel = self.tabledev_kernel
        else:
            kernel = self.flatdev_kernel
        self._launch_kernel(kernel, self._blocks, stream, self._prefix + (self.d_scalars,))

    def _run_reductions(self, stream, kernel_scalars, scalars):
        """Kernel contract v2, before the update: launch 1 (partials per chunk of every reduction, the update value
        computed without writing), launch 2 (per tensor, then its per-tensor scalars into device memory). The
        update kernel then reads them: three launches on one stream, no copy, no synchronization."""
        args = self._prefix + kernel_scalars + (self.d_partials,)
        self._launch_kernel(self.reduce_kernel, self.reduce_blocks, stream, args)
        args = (self.d_offsets, np.int64(len(self.sizes)), self.d_partials,
                *[np.float64(s) for s in scalars], self.d_reduced, self.d_tensor_scalars)
        self._launch_kernel(self.combine_kernel, self.combine_blocks, stream, args)

    def reduce_grads(self, grads, op: str, power: float = 2.0, grad_scale=None) -> list:
        """Per gradient, the reduction `op` of grad / grad_scale, by kernels/cuda/reduce.cu: two launches over the
        whole group (order: common.cuh, fo_block_reduce), then one copy of the values to the host."""
        if len(grads) != len(self.params):
            raise ValueError(f"grads: expected {len(self.params)} arrays (one per param), got {len(grads)}")
        views = [BACKEND.as_array(g) for g in grads]
        if self.total:
            device = _one_device(views, "grads")
            if device != self.device:
                raise ValueError(f"grads are on CUDA device {device} but params and state are on device "
                                 f"{self.device}")
        if self._grad_reducer is None:
            self._grad_reducer = _Reducer(self.device, self.key, self.sizes)
        return self._grad_reducer.run(tuple(int(v.data.ptr) for v in views), op, power, grad_scale, self._stream())

    def _launch(self, stream, args):
        kernel = self._kernel
        if kernel is self.table_kernel:
            self._table_stream = stream
            if self.reductions:
                nsc = len(self.spec.scalar_names)
                scalars = args[len(self._prefix):]
                self._run_reductions(stream, scalars, [float(s) for s in self._host_scalars[:nsc]])
                args = args + (self.d_tensor_scalars,)
        self._launch_kernel(kernel, self._blocks, stream, args)

    def _launch_kernel(self, kernel, blocks, stream, args):
        cp = _cupy
        if cp.cuda.runtime.getDevice() != self.device:
            with cp.cuda.Device(self.device), stream:
                kernel((blocks,), (cuda_build.BLOCK,), args)
        elif self.on_torch_stream:
            with stream:
                kernel((blocks,), (cuda_build.BLOCK,), args)
        else:
            kernel((blocks,), (cuda_build.BLOCK,), args)   # stream is CuPy's current one


def _float_view(array):
    """The values as CuPy computes with them: bfloat16 bits (uint16) widened to float32."""
    cp = _cp()
    if array.dtype == np.uint16:
        return (array.astype(cp.uint32) << 16).view(cp.float32)
    return array


_reducers: dict = {}   # (device, dtype, sizes) -> _Reducer, for reduce_arrays (a few recent ones)


def reduce_arrays(arrays, op: str, power: float = 2.0, grad_scale=None) -> list:
    """Per array, the reduction `op` (fastopt.reference.REDUCTIONS) of x / grad_scale in float64: one multi-tensor
    pass (two launches, kernels/cuda/reduce.cu) per dtype, then one copy of the values to the host. Deterministic,
    bitwise the same run to run; the order (common.cuh, fo_block_reduce) differs from the reference's, within the
    bound tests/test_cuda_reduce.py derives. The scratch is kept for the last few lists of sizes (no allocation when a
    training loop clips the same grads every step)."""
    from fastopt.reference import REDUCTIONS
    if op not in REDUCTIONS:
        raise ValueError(f"unknown reduction {op!r}; expected one of {sorted(REDUCTIONS)}")
    if not arrays:
        return []
    cp = _cp()
    values: list = [None] * len(arrays)
    groups: dict = {}
    for i, a in enumerate(arrays):
        if not a.flags.c_contiguous:
            raise ValueError(f"arrays[{i}]: the cuda reductions read contiguous arrays only")
        groups.setdefault(_dtype_key(a.dtype), []).append(i)
    torch_stream = next((a for a in arrays if _from_torch(a)), None) is not None and _torch() is not None
    for key, indices in groups.items():
        members = [arrays[i] for i in indices]
        device = _one_device(members, "arrays")
        sizes = tuple(int(a.size) for a in members)
        cache_key = (device, key, sizes)
        reducer = _reducers.pop(cache_key, None) or _Reducer(device, key, list(sizes))
        _reducers[cache_key] = reducer
        while len(_reducers) > 8:
            _reducers.pop(next(iter(_reducers)))
        if torch_stream:
            handle = int(_torch().cuda.current_stream(device).cuda_stream)
            stream = _external_stream(cp, handle, device)
        else:
            with cp.cuda.Device(device):
                stream = cp.cuda.get_current_stream()
        part = reducer.run(tuple(int(a.data.ptr) for a in members), op, power, grad_scale, stream)
        for i, v in zip(indices, part):
            values[i] = v
    return values


def scale_in_place(array, coef: float) -> None:
    """array *= coef, rounded in the array's dtype (bfloat16 bits: in float32, then rounded to nearest even)."""
    cp = _cp()
    if array.dtype == np.uint16:
        scaled = _float_view(array) * cp.float32(coef)
        bits = scaled.view(cp.uint32)
        rounded = (bits + cp.uint32(0x7FFF) + ((bits >> 16) & cp.uint32(1))) >> 16
        nan = cp.isnan(scaled)
        array[...] = cp.where(nan, (bits >> 16) | cp.uint32(0x40), rounded).astype(cp.uint16)
        return
    cp.multiply(array, array.dtype.type(coef), out=array)


def _one_device(arrays, what) -> int:
    devices = {a.device.id for a in arrays}
    if len(devices) > 1:
        raise ValueError(f"{what} are on different CUDA devices {sorted(devices)}; one update runs on one device")
    return devices.pop() if devices else _cp().cuda.runtime.getDevice()


_DLPACK_CUDA = (2, 13)   # kDLCUDA, kDLCUDAManaged


def _exportable(array):
    """What to view: a torch tensor that requires grad refuses both exports (its __cuda_array_interface__ raises
    RuntimeError, which hasattr does not catch), its detach() shares the memory and exports."""
    detach = getattr(array, "detach", None)
    if callable(detach) and (getattr(array, "requires_grad", False) is True or _refuses_export(array)):
        return detach()
    return array


def _refuses_export(array) -> bool:
    try:
        array.__cuda_array_interface__  # noqa: B018 - the access is the test
    except AttributeError:   # no interface at all (or a CPU tensor): nothing detach() would change
        return False
    except Exception:  # noqa: BLE001 - torch raises RuntimeError for a tensor that requires grad
        return True
    return False


def _cuda_interface(array):
    try:
        return array.__cuda_array_interface__
    except Exception:  # noqa: BLE001 - torch raises AttributeError (CPU tensor) or RuntimeError; absent: not CUDA
        return None


def _dlpack_on_cuda(array) -> bool:
    device = getattr(array, "__dlpack_device__", None)
    if device is None:
        return False
    try:
        return int(device()[0]) in _DLPACK_CUDA
    except Exception:  # noqa: BLE001
        return False


class CudaBackend:
    name = "cuda"

    def __init__(self):
        self._reason = None
        self._checked = False

    def unavailable_reason(self):
        if not self._checked:
            self._reason = self._probe()
            self._checked = True
        return self._reason

    @staticmethod
    def _probe():
        cp = _import_cupy()
        if cp is None:
            return _import_error
        try:
            count = cp.cuda.runtime.getDeviceCount()
        except Exception as error:  # noqa: BLE001 - CUDARuntimeError and friends: driver missing or broken
            return f"CUDA driver error: {type(error).__name__}: {error}"
        if count == 0:
            return "no CUDA device visible to CuPy (check CUDA_VISIBLE_DEVICES and the driver)"
        return None

    def owns(self, array) -> bool:
        """True exactly when `as_array` can view `array` (a CuPy array, or CUDA memory through one of the two
        exports, torch tensors that require grad included)."""
        module = type(array).__module__
        if module.startswith("cupy"):
            cp = _import_cupy()
            return cp is not None and isinstance(array, cp.ndarray)
        if isinstance(array, np.ndarray):
            return False
        try:
            array = _exportable(array)
        except Exception:  # noqa: BLE001 - an object whose detach() fails is not ours to view
            return False
        return _cuda_interface(array) is not None or _dlpack_on_cuda(array)

    def as_array(self, array):
        cp = _cp()
        if isinstance(array, cp.ndarray):
            return array
        array = _exportable(array)
        torch = _torch()
        if torch is not None and isinstance(array, torch.Tensor) and array.dtype == torch.bfloat16:
            # torch exports no bfloat16 through __cuda_array_interface__: travel as the bits (uint16).
            array = array.view(torch.int16)
            return cp.asarray(array).view(cp.uint16)
        if _cuda_interface(array) is not None:
            return cp.asarray(array)          # zero-copy view; CuPy keeps `array` as the memory's owner
        if _dlpack_on_cuda(array):
            return cp.from_dlpack(array)      # zero-copy view
        raise TypeError(f"the cuda backend updates CuPy arrays and CUDA arrays that export __cuda_array_interface__ "
                        f"or DLPack, got {type(array).__module__}.{type(array).__qualname__}")

    def state_dtype(self, param_dtype):
        key = _dtype_key(param_dtype)
        return np.dtype(np.float64 if key == "float64" else np.float32)

    def full_like(self, param, value, dtype, size=None):
        cp = _cp()
        param = self.as_array(param)
        with param.device:
            return cp.full(param.shape if size is None else size, value, dtype=dtype)

    def to_numpy(self, array):
        return _cp().asnumpy(self.as_array(array))

    def copy_into(self, target, source):
        target = self.as_array(target)
        source = np.asarray(source)
        if target.dtype == np.uint16 and source.dtype.name == "bfloat16":
            source = source.view(np.uint16)
        source = np.ascontiguousarray(source.astype(target.dtype, copy=False).reshape(target.shape))
        with target.device:
            target.set(source)

    def prepare(self, spec, params, slots, flags):
        if spec.kernel == "adafactor":   # shaped state: its own plan (None where a param keeps no such slot)
            from fastopt.backends.cuda_adafactor import AdafactorPlan
            return AdafactorPlan(spec, [self.as_array(p) for p in params], {k: None if v is None else [
                None if a is None else self.as_array(a) for a in v] for k, v in slots.items()}, flags)
        if spec.kernel not in cuda_build.FAMILIES:
            raise NotImplementedError(f"{spec.class_name}: the cuda backend has no kernels for kernel family "
                                      f"{spec.kernel!r} (slots shaped unlike their params); use backend='cpu' or "
                                      "'numpy'")
        return _CudaPlan(spec, [self.as_array(p) for p in params],
                         {k: None if v is None else [self.as_array(a) for a in v] for k, v in slots.items()}, flags)


BACKEND = CudaBackend()


def describe() -> list[str]:
    """Lines for `python -m fastopt info`: the GPUs, CUDA versions and CuPy's kernel cache."""
    import os

    cp = _cp()
    lines = []
    for index in range(cp.cuda.runtime.getDeviceCount()):
        props = cp.cuda.runtime.getDeviceProperties(index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        lines.append(f"GPU {index}: {name}, sm_{props['major']}{props['minor']}, "
                     f"{props['totalGlobalMem'] / 2**30:.0f} GiB, {props['multiProcessorCount']} SMs")
    lines.append(f"CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}, driver {cp.cuda.runtime.driverGetVersion()}, "
                 f"CuPy {cp.__version__}")
    cache = os.environ.get("CUPY_CACHE_DIR", os.path.expanduser("~/.cupy/kernel_cache"))
    kept = "kept across processes" if cupy_caches_on_disk(cp) else \
        f"NOT kept for fastopt's kernels by CuPy {cp.__version__} (needs >= 14.1): every process recompiles"
    lines.append(f"CuPy kernel cache {cache} ({kept}); fastopt kernel families compiled in this process: "
                 f"{sorted(_modules)}")
    return lines
