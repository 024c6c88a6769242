"""`flatten`: many arrays as views of one contiguous buffer, so a whole model is one span of memory."""

from __future__ import annotations


def flatten(arrays, dtype=None):
    """Copy `arrays` into one new contiguous buffer; return (buffer, views), views shaped like the inputs.

    Train the views instead of the originals. With params, grads and states all laid out this way, a fused step is
    one pass over one buffer. Works for NumPy and CuPy arrays (the buffer is of the first array's kind).
    """
    arrays = list(arrays)
    if not arrays:
        raise ValueError("arrays: expected at least one array")
    xp = _array_module(arrays[0])
    dtype = xp.dtype(dtype or arrays[0].dtype)
    sizes = [int(a.size) for a in arrays]
    buffer = xp.empty(sum(sizes), dtype=dtype)
    views, offset = [], 0
    for a, n in zip(arrays, sizes):
        view = buffer[offset:offset + n].reshape(a.shape)
        view[...] = a
        views.append(view)
        offset += n
    return buffer, views


def _array_module(array):
    import numpy

    if isinstance(array, numpy.ndarray):
        return numpy
    try:
        import cupy
    except ImportError as error:
        raise TypeError(f"arrays: expected NumPy or CuPy arrays, got {type(array).__name__}") from error
    return cupy.get_array_module(array)
