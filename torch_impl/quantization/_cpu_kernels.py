"""Compiled CPU loops of the torch 1-D k-means (SPEC §5), built with Numba on first use.

Three parts of :mod:`~repspec.torch_impl.quantization.kmeans` are sequential scans that
torch can only express as many small batched kernels, each paying per-call overhead:
the exact DP's monotone-split search, the sorted Lloyd loop on ``k``-element arrays,
and the final per-value lookup of the labels. On CPU tensors kmeans.py runs them here
as plain loops over NumPy views of the tensors' memory (no copies); on any other device
it keeps its torch kernels. The arithmetic is the torch path's, operation for operation,
in the same order (no ``fastmath``: IEEE float64 throughout), so the two paths decide the
same way; tests/test_torch_kmeans.py runs both and checks them against the reference.

Compiled functions are cached on disk (Numba's ``cache=True``: ``__pycache__`` beside this
file, or Numba's per-user cache when that is read-only), so only the first use on a machine
pays the compile time (a few seconds). Numba is imported here only, and this module only
when a CPU k-means first needs it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["optimal_starts", "lloyd_sorted", "lut_labels", "sorted_prefix", "sse_runs"]

_JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


@njit(**_JIT)
def _dp_layer(g, s0, s1, s2, d, opt, stack):
    """One DP layer: ``d[i] = max(0, min_{m<i} g[m] − (s1[i] − s1[m])²/(s0[i] − s0[m]) + s2[i])``
    with ``g = D_prev − s2``, and ``opt[i]`` its first minimiser, for ``i ∈ [1, n]``.

    The first minimiser is monotone in ``i`` (the cost is Monge), so row ``mid`` of the
    sub-problem ``[lo, hi]`` searches only ``[opt(lo − 1), min(opt(hi + 1), mid − 1)]``
    (depth-first here; kmeans.py's torch path runs the same tree breadth-first):
    ``O(n log n)`` evaluations a layer. ``stack`` is scratch of ``(≥ 2·log2(n) + 2, 4)``.
    """
    n = d.size - 1
    d[0] = math.inf
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = 1, n, 0, n - 1
    top = 1
    while top > 0:
        top -= 1
        lo, hi, a, b = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        mid = (lo + hi) >> 1
        end = min(b, mid - 1)
        w_mid, t_mid = s0[mid], s1[mid]
        best, best_m = math.inf, a
        for m in range(a, end + 1):
            r = t_mid - s1[m]
            value = g[m] - r * r / (w_mid - s0[m])
            if value < best:  # strict: ties keep the smallest split
                best, best_m = value, m
        value = best + s2[mid]
        d[mid] = value if value > 0.0 else 0.0
        opt[mid] = best_m
        if mid + 1 <= hi:
            stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = mid + 1, hi, best_m, b
            top += 1
        if lo <= mid - 1:
            stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = lo, mid - 1, a, best_m
            top += 1


@njit(**_JIT)
def _cost(s0, s1, s2, m, i):
    w = s0[i] - s0[m]
    t = s1[i] - s1[m]
    c = s2[i] - s2[m] - t * t / w
    return c if c > 0.0 else 0.0


@njit(**_JIT)
def optimal_starts(s0, s1, s2, k):
    """Segment starts ``(k,)`` int64 of the exact ``k``-segmentation of ``n = len(s0) − 1``
    sorted weighted points from their centred prefix sums (``1 < k < n``; ties → the
    smallest split at every step): all ``k − 2`` middle layers, the last layer at ``i = n``
    only, then the backtrack. Splits are kept as int32 (half the memory): ``n < 2^31 − 1``."""
    n = s0.size - 1
    d = np.empty(n + 1)
    d[0] = math.inf
    for i in range(1, n + 1):
        d[i] = _cost(s0, s1, s2, 0, i)
    layers = max(k - 2, 0)
    opts = np.empty((layers, n + 1), dtype=np.int32)
    nxt = np.empty(n + 1)
    g = np.empty(n + 1)
    stack = np.empty((2 * 64 + 2, 4), dtype=np.int64)
    for layer in range(layers):
        for i in range(n + 1):
            g[i] = d[i] - s2[i]
        _dp_layer(g, s0, s1, s2, nxt, opts[layer], stack)
        d, nxt = nxt, d
    best, split = math.inf, k - 1
    for m in range(k - 1, n):
        value = d[m] + _cost(s0, s1, s2, m, n)
        if value < best:
            best, split = value, m
    starts = np.zeros(k, dtype=np.int64)
    starts[k - 1] = split
    for layer in range(layers - 1, -1, -1):  # cluster j starts at opt_j[start of cluster j + 1]
        split = opts[layer, split]
        starts[layer + 1] = split
    return starts


@njit(**_JIT)
def _run_ends(s, n, c, ends):
    """``E_j = #{v ≤ m_j}`` (``E_{k−1} = n``) mapped to each duplicate group's last member."""
    k = c.size
    raw = np.empty(k, dtype=np.int64)
    for j in range(k - 1):
        raw[j] = np.searchsorted(s, 0.5 * c[j] + 0.5 * c[j + 1], side="right")
    raw[k - 1] = n
    last = np.searchsorted(c, c, side="right") - 1
    for j in range(k):
        ends[j] = raw[last[j]]


@njit(**_JIT)
def lloyd_sorted(s, prefix, c0, max_iter):
    """Sorted Lloyd on float64 ``s`` (ascending, ``n``) with prefix sums ``(n + 1,)`` from sorted
    float64 ``c0``: ``c_j = (S[E_j] − S[E_{j−1}]) / max(E_j − E_{j−1}, 1)``, an empty cluster keeps
    ``c_j``, centroids re-sorted, until the run ends repeat or ``max_iter`` updates.
    Returns ``(c, n_iter, converged)``."""
    n = s.size
    k = c0.size
    c = c0.copy()
    ends = np.empty(k, dtype=np.int64)
    new_ends = np.empty(k, dtype=np.int64)
    _run_ends(s, n, c, ends)
    for t in range(1, max_iter + 1):
        start = 0
        for j in range(k):
            count = ends[j] - start
            if count > 0:
                c[j] = (prefix[ends[j]] - prefix[start]) / np.float64(count)
            start = ends[j]
        c = np.sort(c)
        _run_ends(s, n, c, new_ends)
        same = True
        for j in range(k):
            if new_ends[j] != ends[j]:
                same = False
            ends[j] = new_ends[j]
        if same:
            return c, t, True
    return c, max_iter, False


@njit(**_JIT)
def lut_labels(flat, lo, scale, cells, base, amb, out):
    """``out[i] = base[c] + (amb[c] < v)`` with ``c = floor(clamp((v − lo)·scale, 0, cells − 1))``,
    ``v = flat[i]``; ``lo``/``scale`` in ``flat``'s dtype, so the cell is computed as torch does."""
    top = cells - 1
    for i in range(flat.size):
        v = flat[i]
        x = (v - lo) * scale
        if x < 0:
            x = 0
        elif x > top:
            x = top
        c = int(x)
        out[i] = base[c] + (1 if amb[c] < v else 0)


@njit(**_JIT)
def sorted_prefix(sorted_values, out_sorted, out_prefix):
    """``out_sorted = float64(sorted_values)``, ``out_prefix[p] = Σ_{i<p} out_sorted[i]`` (left to right)."""
    acc = 0.0
    out_prefix[0] = 0.0
    for i in range(sorted_values.size):
        x = np.float64(sorted_values[i])
        out_sorted[i] = x
        acc += x
        out_prefix[i + 1] = acc


@njit(**_JIT)
def sse_runs(s, c, ends):
    """``Σ_j Σ_{E_{j−1} ≤ i < E_j} (s[i] − c[j])²`` (``E_{−1} = 0``), each run summed left to right."""
    total = 0.0
    start = 0
    for j in range(c.size):
        run = 0.0
        cj = c[j]
        for i in range(start, ends[j]):
            d = s[i] - cj
            run += d * d
        total += run
        start = max(start, ends[j])
    return total
