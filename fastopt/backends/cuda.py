"""The `cuda` backend: the CUDA C kernels of kernels/cuda, compiled by CuPy, one launch per param group and dtype.

Arrays: CuPy arrays, and anything exposing `__cuda_array_interface__` or a CUDA `__dlpack__` (torch CUDA tensors...),
viewed zero-copy as CuPy arrays. CuPy is imported only when something here needs it; nothing needs it at import.

`prepare` looks up the two kernels of the family for this dtype and these flags (compiling the family's module once
per process: `cupy.RawModule`, cached on disk by CuPy), records the pointers of params and slots, and decides whether
the group can run flat: params laid out back to back in memory, and every active slot likewise (views of flat
buffers, or a single tensor). `run` launches ONE kernel on the current CuPy stream:
- flat   when the grads are back to back too: one grid-stride pass over the whole buffer;
- table  otherwise: a device-side table of pointers and int64 sizes built once (params and slots), a chunk table
         (tensor, chunk) built once, and the grads' pointer table, rewritten (one small host-to-device copy on the
         current stream) only when the grads' addresses differ from the previous step's.
The mode is chosen again only when the grads' addresses change, so a training loop reusing its grad buffers does no
host-to-device copy and no allocation per step (the launch itself is graph-capturable then).

bfloat16: CuPy has no bfloat16 dtype of its own; parameters of dtype `bfloat16` (ml_dtypes) or `uint16` (bfloat16
bits, e.g. a torch bfloat16 tensor viewed as int16) are updated as bfloat16 with float32 state.
"""

from __future__ import annotations

import operator
import sys

import numpy as np

from fastopt import cuda_build

BLOCKS_PER_SM = 8          # 2048 resident threads per SM / BLOCK (256): the flat grid fills the device once
_TABLE_BLOCKS_PER_SM = 32  # table grids: up to 4 waves of chunks before blocks loop over chunks

_cupy = None
_import_error: str | None = None
_modules: dict = {}        # family -> cupy.RawModule (CuPy compiles lazily, caches on disk and per device)
_sm_counts: dict = {}      # device id -> number of SMs


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


def _dtype_key(dtype) -> str:
    d = np.dtype(dtype)
    if d == np.uint16 or d.name == "bfloat16":
        return "bfloat16"
    if d.name in cuda_build.PARAM_TYPES:
        return d.name
    raise TypeError(f"the cuda backend updates float16, bfloat16 (or its uint16 bits), float32 and float64 params, "
                    f"got {d}")


def _module(family: str):
    mod = _modules.get(family)
    if mod is None:
        mod = _cp().RawModule(code=cuda_build.source(family), options=cuda_build.DEVICE_OPTIONS,
                              name_expressions=cuda_build.name_expressions(family))
        _modules[family] = mod
    return mod


def _sm_count(device_id: int) -> int:
    if device_id not in _sm_counts:
        _sm_counts[device_id] = int(_cp().cuda.Device(device_id).attributes["MultiProcessorCount"])
    return _sm_counts[device_id]


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
        sms = _sm_count(self.device)
        width = cuda_build.vector_width(key)
        per_block = cuda_build.BLOCK * width
        self.flat_blocks = max(1, min(-(-self.total // per_block), sms * BLOCKS_PER_SM))
        self._table = None        # built on first need: (prefix args, blocks, grad table device array)
        self._grad_key = None     # the grads' addresses the current mode was chosen for
        self._grad_objects = []   # the grads of the last step (held, so their memory stays theirs)
        self._kernel = None
        self._blocks = 0
        self._prefix = ()
        self._sms = sms

    # -- the table, built once --------------------------------------------------------------------------------------

    def _build_table(self):
        cp = _cp()
        chunk_elems = cuda_build.choose_chunk_elems(self.total, self._sms * BLOCKS_PER_SM)
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
            stream.synchronize()  # the host arrays above are temporaries
        blocks = max(1, min(len(chunks), self._sms * _TABLE_BLOCKS_PER_SM))
        prefix = (d_chunks, np.int64(len(chunks)), np.int64(chunk_elems), d_ptrs, d_grads, d_sizes,
                  np.int64(len(self.sizes)))
        self._table = (prefix, blocks, d_grads)

    # -- choosing the mode when the grads' addresses change --------------------------------------------------------

    def _select(self, grads, key):
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
                # Ordered on the current stream after any launch that still reads the previous table.
                d_grads.set(np.asarray(key, dtype=np.uint64), stream=cp.cuda.get_current_stream())
            self._kernel = self.table_kernel
            self._blocks = blocks
            self._prefix = prefix
        self._grad_key = key

    def run(self, grads, scalars):
        if not self.total:
            return
        # The same grad objects as last step: a CuPy array's memory never moves, so nothing needs a new look.
        if len(grads) == len(self._grad_objects) and all(map(operator.is_, grads, self._grad_objects)):
            self._launch(self._kernel, self._blocks, self._prefix + tuple([self.ctype(s) for s in scalars]))
            return
        self._grad_objects = list(grads)
        try:
            key = tuple([g.data.ptr for g in grads])
        except AttributeError:  # not CuPy arrays: view them
            grads = [BACKEND.as_array(g) for g in grads]
            key = tuple([g.data.ptr for g in grads])
        if key != self._grad_key:
            self._select(grads, key)
        ctype = self.ctype
        self._launch(self._kernel, self._blocks, self._prefix + tuple([ctype(s) for s in scalars]))

    def _launch(self, kernel, blocks, args):
        cp = _cupy
        if cp.cuda.runtime.getDevice() != self.device:
            with cp.cuda.Device(self.device):
                kernel((blocks,), (cuda_build.BLOCK,), args)
        else:
            kernel((blocks,), (cuda_build.BLOCK,), args)


def _one_device(arrays, what) -> int:
    devices = {a.device.id for a in arrays}
    if len(devices) > 1:
        raise ValueError(f"{what} are on different CUDA devices {sorted(devices)}; one update runs on one device")
    return devices.pop() if devices else _cp().cuda.runtime.getDevice()


_DLPACK_CUDA = (2, 13)   # kDLCUDA, kDLCUDAManaged


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
        module = type(array).__module__
        if module.startswith("cupy"):
            cp = _import_cupy()
            return cp is not None and isinstance(array, cp.ndarray)
        if isinstance(array, np.ndarray):
            return False
        try:
            has_interface = array.__cuda_array_interface__ is not None
        except Exception:  # noqa: BLE001 - torch raises AttributeError/RuntimeError for CPU tensors
            has_interface = False
        if has_interface:
            return True
        device = getattr(array, "__dlpack_device__", None)
        if device is None:
            return False
        try:
            return int(device()[0]) in _DLPACK_CUDA
        except Exception:  # noqa: BLE001
            return False

    def as_array(self, array):
        cp = _cp()
        if isinstance(array, cp.ndarray):
            return array
        if str(getattr(array, "dtype", "")).endswith("bfloat16") and "torch" in sys.modules:
            # torch exports no bfloat16 through __cuda_array_interface__: travel as the bits (uint16).
            return cp.asarray(array.view(sys.modules["torch"].int16)).view(cp.uint16)
        if hasattr(array, "__cuda_array_interface__"):
            return cp.asarray(array)          # zero-copy view
        return cp.from_dlpack(array)          # zero-copy view

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
    lines.append(f"CuPy kernel cache {cache}; fastopt kernel families compiled in this process: {sorted(_modules)}")
    return lines
