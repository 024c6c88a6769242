"""Adafactor, fused (fastopt.optimizers.adafactor: the reference, whose sums these kernels reproduce bit for bit).

Per step, over every tensor of a plan (one dtype), in phases:

1. `sums_of_squares`: ||p||^2 per chunk of every param (reduce_tensor's chunks and lanes); for each factored tensor
   (2 or more dims, as (B, m, n)), per block of rows, each row's sum of g^2 and the block's column sums of g^2, in one
   pass over g. Reads p and g once: 2 arrays.
2. `moments` (serial, O(rows + columns)): row_var and col_var from the row and column sums, each slice's mean of
   row_var.
3. `update_norms`: ||U||^2, U computed without writing: per row of a factored tensor, per chunk of a vector (which
   also reads its variance). Reads g (and a vector's variance): 1 array (2).
4. `combine` (serial): per tensor ||p||^2 and ||U||^2 in the reference's order; the host makes each tensor's factor.
5. `apply`: p = p * decay + factor * U; a vector's variance written. Reads p and g, writes p: 3 arrays (5).

Every scratch array is allocated when the plan is built (`Plan`); a step allocates no array.
"""

from __future__ import annotations

import operator

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from fastopt.optimizers.adafactor import block_rows, eps1_of, step_factor

from ._common import CACHE, CHUNK, SPAN_OPTIONS, chunk_table, driver, lerp, span

INLINE = {"inline": "always", **SPAN_OPTIONS}


def _grad(x, unscale_by, clip_coef):
    """The gradient as the update sees it: divided by the AMP scale, then times the clipping coefficient; both None
    when unused, which Numba compiles as a variant without the division (see _grad_typed)."""
    return x if unscale_by is None else (x / unscale_by) * clip_coef


@overload(_grad, inline="always")
def _grad_typed(x, unscale_by, clip_coef):
    # Decided by the argument's type when a driver is compiled: no run-time branch splits the loop bodies (which
    # keeps LLVM from vectorising them) and no division is paid when the transform is off.
    if isinstance(unscale_by, types.NoneType):
        return lambda x, unscale_by, clip_coef: x
    return lambda x, unscale_by, clip_coef: (x / unscale_by) * clip_coef


@njit(**INLINE)
def _clamp_min(x, low):
    """torch's clamp_(min=low), NaN kept: the reference's np.where((x >= low) | isnan(x), x, low)."""
    return low if x < low else x


@njit(**INLINE)
def _tree(l0, l1, l2, l3, l4, l5, l6, l7):
    return ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))


# Sums in reduce_chunk's order: term i of a chunk to lane i % 8, each lane a float64 local, the lanes combined as a
# tree. `term(x, y, i, args)` gives term i (float64). As the generated reductions do (fastopt.codegen.REDUCE_BLOCK):
# per block of BLOCK elements, the terms into `buf` (a loop LLVM vectorises), then the block's terms into the lanes
# (blocks start at multiples of 8, so lane j of a block is lane j of the chunk). Loops run from 0 on slices: a
# possibly negative index makes Numba wrap it, which keeps LLVM from vectorising (measured: 11x slower update pass).
BLOCK = 256


@njit(**INLINE)
def _lanes(term, x, y, args, buf):
    l0 = l1 = l2 = l3 = l4 = l5 = l6 = l7 = 0.0
    n = x.size
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        xs, ys = x[start:stop], y[start:stop]
        size = stop - start
        for i in range(size):
            buf[i] = term(xs, ys, i, args)
        m8 = size - size % 8
        for j in range(0, m8, 8):
            l0 += buf[j]
            l1 += buf[j + 1]
            l2 += buf[j + 2]
            l3 += buf[j + 3]
            l4 += buf[j + 4]
            l5 += buf[j + 5]
            l6 += buf[j + 6]
            l7 += buf[j + 7]
        for j in range(m8, size):   # the chunk's last terms, fewer than 8: lanes 0...
            v, k = buf[j], j - m8
            if k == 0:
                l0 += v
            elif k == 1:
                l1 += v
            elif k == 2:
                l2 += v
            elif k == 3:
                l3 += v
            elif k == 4:
                l4 += v
            elif k == 5:
                l5 += v
            else:
                l6 += v
    return _tree(l0, l1, l2, l3, l4, l5, l6, l7)


@njit(**INLINE)
def _tensor_sum(term, x, y, args, buf):
    """reduce_tensor's order over x (and y alike): chunks of CHUNK, each by _lanes, added in order from 0.0."""
    total = 0.0
    for c0 in range(0, x.size, CHUNK):
        c1 = min(c0 + CHUNK, x.size)
        total += _lanes(term, x[c0:c1], y[c0:c1], args, buf)
    return total


@njit(**INLINE)
def _square(x, y, i, args):
    v = np.float64(x[i])
    return v * v


@njit(**INLINE)
def _value(x, y, i, args):
    return np.float64(x[i])


@njit(**INLINE)
def _grad_square_into(x, y, i, args):
    """g^2 of element i (float64), also added to its column's partial y[i] (in the same loop: measured 1.35x
    faster than a second loop over the block or the row)."""
    v = np.float64(_grad(x[i], args[0], args[1]))
    v = v * v
    y[i] += v
    return v


@driver
def sums_of_squares(order, pchunks, blocks, addr, fmeta, like, unscale_by, clip_coef, pp_part, rowsum,
                    colpart, scratch):
    grad_args = (unscale_by, clip_coef)
    npc = pchunks.shape[0]
    for q in prange(order.size):   # one parallel region over both kinds of items, interleaved (Plan._order)
        item = order[q]
        if item < npc:
            c = item
            t, a, b = pchunks[c, 0], pchunks[c, 1], pchunks[c, 2]
            p = span(addr[0, t], a, b, like)
            pp_part[c] = _lanes(_square, p, p, 0, scratch[c])
            continue
        k = item - npc
        t, s, r0, r1, off = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3], blocks[k, 4]
        m, n, row_base = fmeta[t, 1], fmeta[t, 2], fmeta[t, 3]
        g = span(addr[1, t], (s * m + r0) * n, (s * m + r1) * n, like)
        col = colpart[off:off + n]
        col[:] = 0.0
        for r in range(r1 - r0):
            row = g[r * n:(r + 1) * n]
            rowsum[row_base + s * m + r0 + r] = _tensor_sum(_grad_square_into, row, col, grad_args, scratch[npc + k])


@njit(cache=CACHE, error_model="numpy", nogil=True)
def moments(ftensors, addr, fmeta, like, weight, eps1, rowsum, colpart, rmean, buf):
    """row_var and col_var of every factored tensor from this step's sums, then each slice's clamped mean of
    row_var (the reference's update_value, the part that is not per element)."""
    for t in ftensors:
        nb, m, n, row_base, cp_base, slice_base, nblocks = (fmeta[t, 0], fmeta[t, 1], fmeta[t, 2], fmeta[t, 3],
                                                            fmeta[t, 4], fmeta[t, 5], fmeta[t, 6])
        rows = span(addr[2, t], 0, nb * m, like)
        cols = span(addr[3, t], 0, nb * n, like)
        for s in range(nb):
            for r in range(m):
                i = s * m + r
                rows[i] = lerp(rows[i], type(like)(rowsum[row_base + i] / n), weight)
            for j in range(n):
                total = 0.0
                for k in range(nblocks):
                    total += colpart[cp_base + (s * nblocks + k) * n + j]
                cols[s * n + j] = lerp(cols[s * n + j], type(like)(total / m), weight)
            mine = rows[s * m:(s + 1) * m]
            rmean[slice_base + s] = _clamp_min(type(like)(_tensor_sum(_value, mine, mine, 0, buf) / m), eps1)


@njit(**INLINE)
def _u(g, grad_sign, rv, cv, rm, eps1_sq, one):
    """U of one element of a factored tensor: rsqrt(max((row_var * col_var) / mean, eps1^2)) * g."""
    return (one / np.sqrt(_clamp_min((rv * cv) / rm, eps1_sq))) * (g * grad_sign)


@njit(**INLINE)
def _u_square(x, y, i, args):
    """U^2 of element i of a factored row: x its g, y its columns' col_var."""
    rv, rm, grad_sign, eps1_sq, one, unscale_by, clip_coef = args
    u = np.float64(_u(_grad(x[i], unscale_by, clip_coef), grad_sign, rv, y[i], rm, eps1_sq, one))
    return u * u


@njit(**INLINE)
def _vector_u(g, var, weight, grad_sign, eps1_sq, one, unscale_by, clip_coef):
    """A vector element's new variance and U."""
    d = _grad(g, unscale_by, clip_coef) * grad_sign
    v = lerp(var, d * d, weight)
    return v, (one / np.sqrt(_clamp_min(v, eps1_sq))) * d


@njit(**INLINE)
def _vector_u_square(x, y, i, args):
    """U^2 of element i of a vector: x its g, y its variance (not written)."""
    weight, grad_sign, eps1_sq, one, unscale_by, clip_coef = args
    u = np.float64(_vector_u(x[i], y[i], weight, grad_sign, eps1_sq, one, unscale_by, clip_coef)[1])
    return u * u


@driver
def update_norms(order, blocks, vchunks, addr, fmeta, like, grad_sign, weight, eps1_sq, unscale_by, clip_coef, rmean,
                 urow, vpart, scratch):
    one = type(like)(1)
    nbl = blocks.shape[0]
    vector_args = (weight, grad_sign, eps1_sq, one, unscale_by, clip_coef)
    for q in prange(order.size):   # one parallel region
        item = order[q]
        if item >= nbl:
            c = item - nbl
            t, a, b = vchunks[c, 0], vchunks[c, 1], vchunks[c, 2]
            vpart[c] = _lanes(_vector_u_square, span(addr[1, t], a, b, like), span(addr[4, t], a, b, like),
                              vector_args, scratch[item])
            continue
        k = item
        t, s, r0, r1 = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3]
        m, n, row_base, slice_base = fmeta[t, 1], fmeta[t, 2], fmeta[t, 3], fmeta[t, 5]
        g = span(addr[1, t], (s * m + r0) * n, (s * m + r1) * n, like)
        rows = span(addr[2, t], s * m + r0, s * m + r1, like)
        cols = span(addr[3, t], s * n, (s + 1) * n, like)
        rm = rmean[slice_base + s]
        for r in range(r1 - r0):
            args = (rows[r], rm, grad_sign, eps1_sq, one, unscale_by, clip_coef)
            urow[row_base + s * m + r0 + r] = _tensor_sum(_u_square, g[r * n:(r + 1) * n], cols, args, scratch[k])


@njit(cache=CACHE, error_model="numpy", nogil=True)
def combine(pchunks, vchunks, ftensors, fmeta, pp_part, urow, vpart, pp, uu):
    """Per tensor, ||p||^2 (its chunks in order) and ||U||^2 (a factored tensor's rows, a vector's chunks, in order),
    each from 0.0 as the reference adds them."""
    pp[:] = 0.0
    uu[:] = 0.0
    for c in range(pchunks.shape[0]):
        pp[pchunks[c, 0]] += pp_part[c]
    for c in range(vchunks.shape[0]):
        uu[vchunks[c, 0]] += vpart[c]
    for t in ftensors:
        row_base, rows = fmeta[t, 3], fmeta[t, 0] * fmeta[t, 1]
        for r in range(rows):
            uu[t] += urow[row_base + r]


@driver
def apply(order, fchunks, vchunks, addr, fmeta, like, grad_sign, weight, eps1_sq, decay, use_decay, unscale_by,
          clip_coef, rmean, factors):
    one = type(like)(1)
    nfc = fchunks.shape[0]
    for q in prange(order.size):   # one parallel region
        item = order[q]
        if item >= nfc:
            c = item - nfc
            t, a, b = vchunks[c, 0], vchunks[c, 1], vchunks[c, 2]
            p = span(addr[0, t], a, b, like)
            g = span(addr[1, t], a, b, like)
            var = span(addr[4, t], a, b, like)
            factor = factors[t]
            for i in range(b - a):
                v, u = _vector_u(g[i], var[i], weight, grad_sign, eps1_sq, one, unscale_by, clip_coef)
                var[i] = v
                x = p[i] * decay if use_decay else p[i]
                p[i] = x + factor * u
            continue
        c = item
        t, a, b = fchunks[c, 0], fchunks[c, 1], fchunks[c, 2]
        m, n, slice_base = fmeta[t, 1], fmeta[t, 2], fmeta[t, 5]
        p = span(addr[0, t], a, b, like)
        g = span(addr[1, t], a, b, like)
        rows = span(addr[2, t], 0, fmeta[t, 0] * m, like)
        factor = factors[t]
        k = a
        while k < b:   # row by row: row_var and the slice's mean are fixed along a row
            row = k // n
            j0 = k - row * n
            j1 = min(n, j0 + (b - k))
            ps = p[k - a:k - a + (j1 - j0)]
            gs = g[k - a:k - a + (j1 - j0)]
            cs = span(addr[3, t], (row // m) * n + j0, (row // m) * n + j1, like)
            rv, rm = rows[row], rmean[slice_base + row // m]
            for j in range(j1 - j0):
                u = _u(_grad(gs[j], unscale_by, clip_coef), grad_sign, rv, cs[j], rm, eps1_sq, one)
                x = ps[j] * decay if use_decay else ps[j]
                ps[j] = x + factor * u
            k += j1 - j0


def _order(first, second) -> np.ndarray:
    """Item numbers 0.. of `first` then of `second` (their work, e.g. elements), merged by where each item's work
    falls within its kind's total."""
    keys = []
    for base, work in ((0, np.asarray(first, np.float64)), (len(first), np.asarray(second, np.float64))):
        if len(work):
            ends = np.cumsum(work)
            mid = (ends - work / 2) / max(ends[-1], 1.0)
            keys += [(float(m), base + i) for i, m in enumerate(mid)]
    return np.array([i for _, i in sorted(keys)], dtype=np.int64)


class Plan:
    """The cpu backend's plan for Adafactor (shaped state: fastopt.backends.cpu hands such families to their kernel
    module's `Plan`). Tables and scratch are built here, once; `run` launches the five phases."""

    def __init__(self, spec, params, slots, flags, addresses, parallel_min_bytes):
        import numba

        self.spec, self.params = spec, params
        self.slots = slots   # held: the address table points into them
        self.dtype = params[0].dtype
        self.like = self.dtype.type(0)
        self.addresses = addresses
        n = len(params)
        sizes = [int(p.size) for p in params]
        rows, cols, var = slots["row_var"], slots["col_var"], slots["variance"]
        self.factored = [p.ndim >= 2 and p.size > 0 for p in params]
        self.addr = np.zeros((5, n), dtype=np.int64)
        self.addr[0] = addresses(params)
        for i in range(n):
            if not sizes[i]:
                continue
            if self.factored[i]:
                self.addr[2, i], self.addr[3, i] = addresses([rows[i], cols[i]])
            else:
                self.addr[4, i] = addresses([var[i]])[0]
        # Factored tensors as (B, m, n): fmeta[t] = B, m, n, first row (in rowsum/urow), first column partial (in
        # colpart), first slice (in rmean), blocks per slice.
        self.fmeta = np.zeros((n, 7), dtype=np.int64)
        blocks, row_total, cp_total, slice_total = [], 0, 0, 0
        for t, p in enumerate(params):
            if not self.factored[t]:
                continue
            nb, m, cols_n = int(np.prod(p.shape[:-2], dtype=np.int64)), p.shape[-2], p.shape[-1]
            per = block_rows(m, cols_n)
            nblocks = -(-m // per)
            self.fmeta[t] = (nb, m, cols_n, row_total, cp_total, slice_total, nblocks)
            for s in range(nb):
                for k, r0 in enumerate(range(0, m, per)):
                    blocks.append((t, s, r0, min(r0 + per, m), cp_total + (s * nblocks + k) * cols_n))
            row_total += nb * m
            cp_total += nb * nblocks * cols_n
            slice_total += nb
        self.blocks = np.array(blocks, dtype=np.int64).reshape(-1, 5)
        self.ftensors = np.array([t for t in range(n) if self.factored[t]], dtype=np.int64)
        self.pchunks = chunk_table(sizes)
        self.fchunks = chunk_table([s if f else 0 for s, f in zip(sizes, self.factored)])
        self.vchunks = chunk_table([0 if f else s for s, f in zip(sizes, self.factored)])
        self.sizes = sizes
        # Each pass's items (first kind, then second), in an order that spreads both kinds evenly: Numba's threads
        # take contiguous runs of it, so each gets a like share of the work (a thread done early may spin).
        rows = self.blocks[:, 3] - self.blocks[:, 2]
        block_work = rows * self.fmeta[self.blocks[:, 0], 2] if len(self.blocks) else np.zeros(0, np.int64)
        self.order1 = _order(self.pchunks[:, 2] - self.pchunks[:, 1], block_work)
        self.order2 = _order(block_work, self.vchunks[:, 2] - self.vchunks[:, 1])
        self.order3 = _order(self.fchunks[:, 2] - self.fchunks[:, 1], self.vchunks[:, 2] - self.vchunks[:, 1])
        # scratch, float64 unless said otherwise
        self.pp_part = np.empty(len(self.pchunks))
        self.rowsum = np.empty(row_total)
        self.urow = np.empty(row_total)
        self.colpart = np.empty(cp_total)
        self.vpart = np.empty(len(self.vchunks))
        # the terms of a block of BLOCK elements, one row per work item of the busiest pass (at least one row)
        items = max(len(self.pchunks), len(self.vchunks)) + len(self.blocks)
        self.scratch = np.empty((max(items, 1), BLOCK))
        self.rmean = np.empty(slice_total, dtype=self.dtype)
        self.pp = np.empty(n)
        self.uu = np.empty(n)
        self.factors = np.empty(n, dtype=self.dtype)
        itemsize = self.dtype.itemsize
        total = sum(sizes)
        vectors = sum(s for s, f in zip(sizes, self.factored) if not f)
        # bytes a step moves: pass 1 reads p and g, pass 2 g (and a vector's variance), pass 3 reads p and g and
        # writes p (a vector's variance read and written too); the factored state and scratch are small
        self.bytes_per_step = itemsize * (6 * total + 3 * vectors)
        self.parallel = self.bytes_per_step >= parallel_min_bytes and numba.get_num_threads() > 1
        self.lock = threads.KERNEL_LOCK if self.parallel else None
        self._grads: list = []

    def _set_grads(self, grads):
        if len(grads) != len(self._grads) or not all(map(operator.is_, grads, self._grads)):
            self.addr[1] = self.addresses(grads)
            self._grads = list(grads)

    def _launch(self, kernel, *args):
        kernel = kernel.parallel if self.parallel else kernel.serial
        if self.lock is None:
            kernel(*args)
        else:
            with self.lock:
                kernel(*args)

    def reduce_grads(self, grads, op: str, power: float = 2.0, grad_scale=None) -> list:
        """Per tensor, the reduction `op` of the (unscaled) gradients in fastopt.reference's order, as every cpu plan
        (the address table's row 1 holds the grads, as the generic plan's)."""
        self._set_grads(grads)
        cast = self.dtype.type
        self._launch(_reduce.partials, self.pchunks, self.addr, 1, reference.REDUCTIONS[op], float(power),
                     grad_scale is not None, cast(1.0 if grad_scale is None else grad_scale), cast(0.0), self.pp_part)
        values = [reference.reduction_start(op)] * len(self.params)
        for c, t in enumerate(self.pchunks[:, 0].tolist()):
            values[t] = reference.combine(op, values[t], float(self.pp_part[c]))
        return values

    def run(self, grads, scalars, grad_scale=None, grad_factor=None):
        self._set_grads(grads)
        _lr, grad_sign, weight_decay, decay, weight, rho, eps1, eps2, d = scalars
        cast = self.dtype.type
        e1 = eps1_of(eps1, self.dtype)
        if grad_scale is None and grad_factor is None:   # no gradient transform: the drivers' variant without it
            unscale_by = clip_coef = None
        else:
            unscale_by = cast(1.0 if grad_scale is None else grad_scale)
            clip_coef = cast(1.0 if grad_factor is None else grad_factor)
        like, sign, w, e1_sq = self.like, cast(grad_sign), cast(weight), cast(e1 * e1)
        self._launch(sums_of_squares, self.order1, self.pchunks, self.blocks, self.addr, self.fmeta, like, unscale_by,
                     clip_coef, self.pp_part, self.rowsum, self.colpart, self.scratch)
        moments(self.ftensors, self.addr, self.fmeta, like, w, cast(e1), self.rowsum, self.colpart, self.rmean,
                self.scratch[0])
        self._launch(update_norms, self.order2, self.blocks, self.vchunks, self.addr, self.fmeta, like, sign, w, e1_sq,
                     unscale_by, clip_coef, self.rmean, self.urow, self.vpart, self.scratch)
        combine(self.pchunks, self.vchunks, self.ftensors, self.fmeta, self.pp_part, self.urow, self.vpart, self.pp,
                self.uu)
        with np.errstate(all="ignore"):
            for t, size in enumerate(self.sizes):
                if size:
                    self.factors[t] = step_factor(float(self.pp[t]), float(self.uu[t]), size, rho, eps2, d)
        self._launch(apply, self.order3, self.fchunks, self.vchunks, self.addr, self.fmeta, like, sign, w, e1_sq,
                     cast(decay), weight_decay != 0, unscale_by, clip_coef, self.rmean, self.factors)


from fastopt import reference, threads  # noqa: E402 - the cpu backend started Numba's threading layer first
from fastopt.kernels.cpu import _reduce  # noqa: E402
