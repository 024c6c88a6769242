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
from numba import njit, prange

from fastopt.optimizers.adafactor import block_rows, eps1_of, step_factor

from ._common import CACHE, CHUNK, SPAN_OPTIONS, chunk_table, driver, lerp, span

INLINE = {"inline": "always", **SPAN_OPTIONS}


@njit(**INLINE)
def _grad(x, unscale_by, clip_coef, transform):
    """The gradient as the update sees it: divided by the AMP scale, then times the clipping coefficient."""
    if transform:
        return (x / unscale_by) * clip_coef
    return x


@njit(**INLINE)
def _clamp_min(x, low):
    """torch's clamp_(min=low), NaN kept: the reference's np.where((x >= low) | isnan(x), x, low)."""
    return x if (x >= low or x != x) else low


@njit(**INLINE)
def _tree(l0, l1, l2, l3, l4, l5, l6, l7):
    return ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))


@njit(**INLINE)
def _chunk_sum(x, a, b, square):
    """reduce_chunk's order over x[a:b] (at most CHUNK values): value i to lane (i - a) % 8, lanes combined as a
    tree; float64 terms, squared when `square`."""
    l0 = l1 = l2 = l3 = l4 = l5 = l6 = l7 = 0.0
    m8 = a + ((b - a) // 8) * 8
    for i in range(a, m8, 8):
        v0, v1, v2, v3 = np.float64(x[i]), np.float64(x[i + 1]), np.float64(x[i + 2]), np.float64(x[i + 3])
        v4, v5, v6, v7 = np.float64(x[i + 4]), np.float64(x[i + 5]), np.float64(x[i + 6]), np.float64(x[i + 7])
        if square:
            v0, v1, v2, v3, v4, v5, v6, v7 = v0 * v0, v1 * v1, v2 * v2, v3 * v3, v4 * v4, v5 * v5, v6 * v6, v7 * v7
        l0 += v0
        l1 += v1
        l2 += v2
        l3 += v3
        l4 += v4
        l5 += v5
        l6 += v6
        l7 += v7
    for i in range(m8, b):   # the tail: lane i - m8
        v = np.float64(x[i])
        if square:
            v = v * v
        k = i - m8
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
def _row_sums(g, start, n, col, unscale_by, clip_coef, transform, lanes):
    """One row g[start:start + n]: adds each g^2 (float64) to col[j] and returns the row's sum in reduce_tensor's
    order (chunks of CHUNK, lanes as _chunk_sum). `lanes`: 8 float64 of scratch."""
    total = 0.0
    for c0 in range(0, n, CHUNK):
        c1 = min(c0 + CHUNK, n)
        lanes[:] = 0.0
        for j in range(c0, c1):
            v = np.float64(_grad(g[start + j], unscale_by, clip_coef, transform))
            v = v * v
            col[j] += v
            lanes[(j - c0) & 7] += v
        total += _tree(lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], lanes[5], lanes[6], lanes[7])
    return total


@driver
def sums_of_squares(pchunks, blocks, addr, fmeta, like, unscale_by, clip_coef, transform, pp_part, rowsum,
                    colpart, lanes):
    for c in prange(pchunks.shape[0]):
        t, a, b = pchunks[c, 0], pchunks[c, 1], pchunks[c, 2]
        pp_part[c] = _chunk_sum(span(addr[0, t], a, b, like), 0, b - a, True)
    for k in prange(blocks.shape[0]):
        t, s, r0, r1, off = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3], blocks[k, 4]
        m, n, row_base = fmeta[t, 1], fmeta[t, 2], fmeta[t, 3]
        g = span(addr[1, t], (s * m + r0) * n, (s * m + r1) * n, like)
        col = colpart[off:off + n]
        col[:] = 0.0
        for r in range(r1 - r0):
            rowsum[row_base + s * m + r0 + r] = _row_sums(g, r * n, n, col, unscale_by, clip_coef, transform,
                                                          lanes[k])


@njit(cache=CACHE, error_model="numpy", nogil=True)
def moments(ftensors, addr, fmeta, like, weight, eps1, rowsum, colpart, rmean):
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
            mean = 0.0
            for c0 in range(0, m, CHUNK):
                mean += _chunk_sum(rows, s * m + c0, s * m + min(c0 + CHUNK, m), False)
            rmean[slice_base + s] = _clamp_min(type(like)(mean / m), eps1)


@njit(**INLINE)
def _u(g, grad_sign, rv, cv, rm, eps1_sq, one):
    """U of one element of a factored tensor: rsqrt(max((row_var * col_var) / mean, eps1^2)) * g."""
    return (one / np.sqrt(_clamp_min((rv * cv) / rm, eps1_sq))) * (g * grad_sign)


@driver
def update_norms(blocks, vchunks, addr, fmeta, like, grad_sign, weight, eps1_sq, unscale_by, clip_coef, transform,
                 rmean, urow, vpart, lanes):
    one = type(like)(1)
    for k in prange(blocks.shape[0]):
        t, s, r0, r1 = blocks[k, 0], blocks[k, 1], blocks[k, 2], blocks[k, 3]
        m, n, row_base, slice_base = fmeta[t, 1], fmeta[t, 2], fmeta[t, 3], fmeta[t, 5]
        g = span(addr[1, t], (s * m + r0) * n, (s * m + r1) * n, like)
        rows = span(addr[2, t], s * m + r0, s * m + r1, like)
        cols = span(addr[3, t], s * n, (s + 1) * n, like)
        rm = rmean[slice_base + s]
        buf = lanes[k]
        for r in range(r1 - r0):
            rv = rows[r]
            total = 0.0
            for c0 in range(0, n, CHUNK):
                c1 = min(c0 + CHUNK, n)
                buf[:] = 0.0
                for j in range(c0, c1):
                    u = np.float64(_u(_grad(g[r * n + j], unscale_by, clip_coef, transform), grad_sign, rv, cols[j],
                                      rm, eps1_sq, one))
                    buf[(j - c0) & 7] += u * u
                total += _tree(buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7])
            urow[row_base + s * m + r0 + r] = total
    for c in prange(vchunks.shape[0]):
        t, a, b = vchunks[c, 0], vchunks[c, 1], vchunks[c, 2]
        g = span(addr[1, t], a, b, like)
        var = span(addr[4, t], a, b, like)
        buf = lanes[blocks.shape[0] + c]
        buf[:] = 0.0
        for i in range(b - a):
            d = _grad(g[i], unscale_by, clip_coef, transform) * grad_sign
            v = lerp(var[i], d * d, weight)
            u = np.float64((one / np.sqrt(_clamp_min(v, eps1_sq))) * d)
            buf[i & 7] += u * u
        vpart[c] = _tree(buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7])


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
def apply(fchunks, vchunks, addr, fmeta, like, grad_sign, weight, eps1_sq, decay, use_decay, unscale_by, clip_coef,
          transform, rmean, factors):
    one = type(like)(1)
    for c in prange(fchunks.shape[0]):
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
            cols = span(addr[3, t], (row // m) * n, (row // m + 1) * n, like)
            rv, rm = rows[row], rmean[slice_base + row // m]
            base = k - a - j0
            for j in range(j0, j1):
                u = _u(_grad(g[base + j], unscale_by, clip_coef, transform), grad_sign, rv, cols[j], rm, eps1_sq, one)
                x = p[base + j]
                if use_decay:
                    x = x * decay
                p[base + j] = x + factor * u
            k += j1 - j0
    for c in prange(vchunks.shape[0]):
        t, a, b = vchunks[c, 0], vchunks[c, 1], vchunks[c, 2]
        p = span(addr[0, t], a, b, like)
        g = span(addr[1, t], a, b, like)
        var = span(addr[4, t], a, b, like)
        factor = factors[t]
        for i in range(b - a):
            d = _grad(g[i], unscale_by, clip_coef, transform) * grad_sign
            v = lerp(var[i], d * d, weight)
            var[i] = v
            u = (one / np.sqrt(_clamp_min(v, eps1_sq))) * d
            x = p[i]
            if use_decay:
                x = x * decay
            p[i] = x + factor * u


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
        # scratch, float64 unless said otherwise
        self.pp_part = np.empty(len(self.pchunks))
        self.rowsum = np.empty(row_total)
        self.urow = np.empty(row_total)
        self.colpart = np.empty(cp_total)
        self.vpart = np.empty(len(self.vchunks))
        self.lanes = np.empty((len(self.blocks) + len(self.vchunks), 8))
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
        transform = grad_scale is not None or grad_factor is not None
        unscale_by = cast(1.0 if grad_scale is None else grad_scale)
        clip_coef = cast(1.0 if grad_factor is None else grad_factor)
        like, sign, w, e1_sq = self.like, cast(grad_sign), cast(weight), cast(e1 * e1)
        self._launch(sums_of_squares, self.pchunks, self.blocks, self.addr, self.fmeta, like, unscale_by, clip_coef,
                     transform, self.pp_part, self.rowsum, self.colpart, self.lanes)
        moments(self.ftensors, self.addr, self.fmeta, like, w, cast(e1), self.rowsum, self.colpart, self.rmean)
        self._launch(update_norms, self.blocks, self.vchunks, self.addr, self.fmeta, like, sign, w, e1_sq, unscale_by,
                     clip_coef, transform, self.rmean, self.urow, self.vpart, self.lanes)
        combine(self.pchunks, self.vchunks, self.ftensors, self.fmeta, self.pp_part, self.urow, self.vpart, self.pp,
                self.uu)
        with np.errstate(all="ignore"):
            for t, size in enumerate(self.sizes):
                if size:
                    self.factors[t] = step_factor(float(self.pp[t]), float(self.uu[t]), size, rho, eps2, d)
        self._launch(apply, self.fchunks, self.vchunks, self.addr, self.fmeta, like, sign, w, e1_sq, cast(decay),
                     weight_decay != 0, unscale_by, clip_coef, transform, self.rmean, self.factors)


from fastopt import reference, threads  # noqa: E402 - the cpu backend started Numba's threading layer first
from fastopt.kernels.cpu import _reduce  # noqa: E402
