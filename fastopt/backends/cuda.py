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

Streams: the launch goes to torch's current stream when the params are torch tensors (the backward pass that wrote
the grads ran there), else to CuPy's current stream. Before the grads' table is rewritten on one stream while the
last launch that read it went to another, the writing stream waits for that launch (an event).

Not capturable in a CUDA graph: lr, the bias corrections and the other per-step scalars are kernel arguments, frozen
at capture, so a replayed graph would keep training with the first step's values.

bfloat16: CuPy has no bfloat16 dtype of its own; parameters of dtype `bfloat16` (ml_dtypes) or `uint16` (bfloat16
bits, e.g. a torch bfloat16 tensor viewed as int16) are updated as bfloat16 with float32 state.
"""

from __future__ import annotations

import operator
import sys
import warnings

import numpy as np

from fastopt import cuda_build

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


class _CudaPlan:
    def __init__(self, spec, params, slots, flags):
        cp = _cp()
        self.family = spec.kernel
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
        self.flat_layout = _back_to_back(self.param_ptrs, self.sizes, p_size) and all(
            s is None or _back_to_back(s, self.sizes, s_size) for s in self.slot_ptrs)
        with cp.cuda.Device(self.device):
            mod = _module(self.family)
            self.flat_kernel = mod.get_function(cuda_build.kernel_name(self.family, "flat", key, flags))
            self.table_kernel = mod.get_function(cuda_build.kernel_name(self.family, "table", key, flags))
            # One wave of resident blocks; more would queue behind it, a partial last wave idling most of the device.
            self.flat_resident = resident_blocks(self.flat_kernel, self.device)
            self.table_resident = resident_blocks(self.table_kernel, self.device)
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

    def run(self, grads, scalars, grad_scale=None, grad_factor=None):
        if not self.total:
            return
        # The gradient transform (fastopt.codegen.GRAD_SCALARS): 1 and 1 leave the gradient exactly as it is.
        scalars = (*scalars, 1.0 if grad_scale is None else grad_scale, 1.0 if grad_factor is None else grad_factor)
        stream = self._stream()
        # The same grad objects as last step: a CuPy array's memory never moves, so nothing needs a new look.
        if len(grads) == len(self._grad_objects) and all(map(operator.is_, grads, self._grad_objects)):
            self._launch(stream, self._prefix + tuple([self.ctype(s) for s in scalars]))
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
        ctype = self.ctype
        self._launch(stream, self._prefix + tuple([ctype(s) for s in scalars]))

    def reduce_grads(self, grads, op: str, power: float = 2.0, grad_scale=None) -> list:
        with self._stream():
            return reduce_arrays([BACKEND.as_array(g) for g in grads], op, power, grad_scale)

    def _launch(self, stream, args):
        kernel = self._kernel
        if kernel is self.table_kernel:
            self._table_stream = stream
        cp = _cupy
        if cp.cuda.runtime.getDevice() != self.device:
            with cp.cuda.Device(self.device), stream:
                kernel((self._blocks,), (cuda_build.BLOCK,), args)
        elif self.on_torch_stream:
            with stream:
                kernel((self._blocks,), (cuda_build.BLOCK,), args)
        else:
            kernel((self._blocks,), (cuda_build.BLOCK,), args)   # stream is CuPy's current one


def _float_view(array):
    """The values as CuPy computes with them: bfloat16 bits (uint16) widened to float32."""
    cp = _cp()
    if array.dtype == np.uint16:
        return (array.astype(cp.uint32) << 16).view(cp.float32)
    return array


def reduce_arrays(arrays, op: str, power: float = 2.0, grad_scale=None) -> list:
    """Per array, the reduction `op` (fastopt.reference.REDUCTIONS) in float64, with CuPy array operations (one
    device-to-host copy for all of them). Deterministic run to run; the order differs from the reference's (CuPy's
    own reduction tree), within the bound tests/test_reductions.py states. Not yet one fused multi-tensor launch."""
    cp = _cp()
    if not arrays:
        return []
    parts = []
    for a in arrays:
        x = _float_view(a).ravel()
        if grad_scale is not None:
            x = x / x.dtype.type(grad_scale)
        x = x.astype(cp.float64)
        if op == "sumsq":
            parts.append(cp.sum(x * x))
        elif op == "sum":
            parts.append(cp.sum(x))
        elif op == "maxabs":
            parts.append(cp.max(cp.abs(x)) if x.size else cp.zeros((), cp.float64))
        elif op == "minabs":
            parts.append(cp.min(cp.abs(x)) if x.size else cp.full((), cp.inf))
        elif op == "nonfinite":
            parts.append(cp.sum(~cp.isfinite(x)).astype(cp.float64))
        elif op == "nonzero":
            parts.append(cp.sum(x != 0).astype(cp.float64))
        elif op == "sumpow":
            parts.append(cp.sum(cp.abs(x) ** power))
        else:
            raise ValueError(f"unknown reduction {op!r}")
    return [float(v) for v in cp.stack(parts).get()]


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
        if spec.reductions:
            raise NotImplementedError(f"{spec.class_name}: the cuda backend does not run optimizers with per-tensor "
                                      "reductions yet (kernel contract v2); use backend='cpu' or 'numpy'")
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
