"""SPEC §5 *[repspec]*: 1-D k-means (Lloyd and the exact DP optimum) and k-means fake quantization.

A layer's weights are clustered as a flat list of values ``v`` (any shape, flattened)
into ``k`` centroids ``c_0 ≤ c_1 ≤ … ≤ c_{k−1}`` minimizing
``SSE = Σ_i (v_i − c_{label(i)})²``.

**Assignment** (:func:`assign`). With the centroids sorted, the decision boundaries
are the midpoints ``m_j = fl(0.5·c_j + 0.5·c_{j+1})`` (equal to ``fl((c_j + c_{j+1})/2)``
but never overflowing). ``label(v) = #{j : m_j < v}`` (``np.searchsorted(m, v,
side='left')``), so a value **exactly on a midpoint goes to the lower centroid**.
Duplicate centroids: the value goes to the **lowest index** of the group of equal
centroids (the higher duplicates stay empty).

**Update** (:func:`lloyd_step`): each centroid becomes the mean of its members
(``Σ v / count``, sums by ``np.bincount``); an **empty cluster keeps its centroid**;
then the centroids are sorted again (``np.sort``). Without duplicate centroids the
update already preserves the order (cluster ``j``'s members lie in ``(m_{j−1}, m_j]``);
with duplicates the lowest one may move past the empty copies it leaves behind.

**Lloyd** (:func:`kmeans_1d`): assign, then repeat {update, assign} until the
labels no longer change or ``max_iter`` updates were made. ``SSE`` never increases
from one assignment to the next (exact arithmetic; up to rounding in float64).

**k ≥ number of distinct values** *[repspec]*: the optimum is exact (SSE 0). The
centroids are the ``d`` distinct values, ascending, followed by ``k − d`` copies of
the largest one (empty clusters); no iterations are run.

**Inits** (``init=``): ``linear`` (``np.linspace(min, max, k)``, Deep Compression),
``quantile`` (the mid-quantiles ``(2j+1)/(2k)``, ``np.quantile`` linear),
``kmeans++`` (D² sampling, needs an explicit ``seed``), ``optimal`` (the exact DP
optimum, :func:`kmeans_1d_optimal`), ``binned`` (the exact DP over a few hundred
weighted runs of the sorted values, :func:`binned_optimal_centroids`), and ``warm``
(the given ``init_centroids``, used by ClusterQAT refits). The default,
:data:`DEFAULT_INIT` (``repspec.core.vocabulary.DEFAULT_KMEANS_INIT``, shared with
torch_impl), is ``binned``: the exact optimum whenever a layer has at most ``2B``
distinct values, and within a measured fraction of it on large layers at a small part
of the exact DP's cost (SPEC §5.kmeans-binned).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from repspec.core.vocabulary import DEFAULT_KMEANS_INIT, KMEANS_INITS, OPTIMAL_METHODS

from ._checks import as_float_array, check_choice, check_int

__all__ = [
    "DEFAULT_INIT",
    "INITS",
    "BINNED_FINE_CELLS",
    "KMeansResult",
    "midpoints",
    "assign",
    "sse",
    "lloyd_step",
    "initial_centroids",
    "kmeans_1d",
    "kmeans_1d_optimal",
    "binned_bin_count",
    "binned_run_edges",
    "binned_optimal_centroids",
    "kmeans_fake_quantize",
    "kmeans_fake_quantize_backward",
]

#: the default init, shared with torch_impl (one source: ``repspec.core.vocabulary``): the exact DP over
#: weighted runs of the sorted values, then Lloyd (SPEC §5.kmeans-binned)
DEFAULT_INIT = DEFAULT_KMEANS_INIT
#: every init (``warm`` last: it is the only one that takes ``init_centroids``)
INITS = KMEANS_INITS
#: fine cells of each kind (equal count, equal width) on which the binned init estimates ``p^{1/3}`` mass
BINNED_FINE_CELLS = 4096


class KMeansResult(NamedTuple):
    centroids: np.ndarray  # (k,), ascending
    labels: np.ndarray  # int64, shaped like the input values; index into centroids
    sse: float  # Σ (v − centroids[labels])²
    n_iter: int  # number of Lloyd updates performed
    converged: bool  # labels stopped changing (True when no iteration was needed)
    sse_history: np.ndarray  # SSE after the initial assignment and after each update+assign


# ------------------------------------------------------------------------ validation


def _check_sorted_centroids(centroids, name: str = "centroids", k: int | None = None) -> np.ndarray:
    c = as_float_array(centroids, name, ndim=1) if k is None else as_float_array(centroids, name, shape=(k,))
    if np.any(np.diff(c) < 0):
        raise ValueError(f"{name} must be sorted ascending")
    return c


# ------------------------------------------------------------------------ assignment


def midpoints(centroids) -> np.ndarray:
    """Decision boundaries ``m_j = fl(0.5·c_j + 0.5·c_{j+1})``, shape ``(k − 1,)``.

    >>> midpoints(np.array([0.0, 1.0, 3.0]))
    array([0.5, 2. ])
    """
    c = _check_sorted_centroids(centroids)
    return 0.5 * c[:-1] + 0.5 * c[1:]


def _assign(v: np.ndarray, c: np.ndarray) -> np.ndarray:
    labels = np.searchsorted(0.5 * c[:-1] + 0.5 * c[1:], v, side="left")  # on a midpoint: lower
    first_of_group = np.searchsorted(c, c, side="left")  # duplicates: lowest index
    return first_of_group[labels].astype(np.int64)


def assign(values, centroids) -> np.ndarray:
    """Nearest-centroid labels with the midpoint tie rule (module docstring).

    ``values`` any shape, ``centroids (k,)`` sorted ascending → ``int64`` labels shaped
    like ``values``.

    >>> assign(np.array([0.5, 0.50001, 2.0, 5.0]), np.array([0.0, 1.0, 3.0]))  # 0.5 is a midpoint
    array([0, 1, 1, 2])
    >>> assign(np.array([1.0, 1.2]), np.array([0.0, 1.0, 1.0]))  # duplicates: lowest index
    array([1, 1])
    """
    v = as_float_array(values, "values")
    c = _check_sorted_centroids(centroids)
    return _assign(v, c)


def _sse(v: np.ndarray, c: np.ndarray, labels: np.ndarray) -> float:
    return float(np.sum((v - c[labels]) ** 2))


def sse(values, centroids) -> float:
    """``Σ_i (v_i − c_{assign(v_i)})²`` for sorted ``centroids``.

    >>> sse(np.array([0.0, 1.0, 4.0]), np.array([0.5, 4.0]))
    0.5
    """
    v = as_float_array(values, "values")
    c = _check_sorted_centroids(centroids)
    return _sse(v, c, _assign(v, c))


def _update(v: np.ndarray, c: np.ndarray, labels: np.ndarray) -> np.ndarray:
    k = c.shape[0]
    counts = np.bincount(labels.ravel(), minlength=k)
    sums = np.bincount(labels.ravel(), weights=v.ravel(), minlength=k)
    return np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))


def lloyd_step(values, centroids) -> tuple[np.ndarray, np.ndarray]:
    """One Lloyd update: ``labels = assign(v, c)``; ``c'_j = mean{v_i : label_i = j}``
    (an empty cluster keeps ``c_j``), then sorted. Returns ``(c', labels)`` where
    ``labels`` are the assignment to the *input* centroids.

    >>> lloyd_step(np.array([0.0, 1.0, 10.0]), np.array([0.0, 5.0, 100.0]))  # cluster 2 is empty
    (array([  0.5,  10. , 100. ]), array([0, 0, 1]))
    """
    v = as_float_array(values, "values")
    c = _check_sorted_centroids(centroids)
    labels = _assign(v, c)
    return _update(v, c, labels), labels


# ----------------------------------------------------------------------------- inits


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("init='kmeans++' needs an explicit seed (an int or a numpy Generator) to be deterministic")
    return np.random.default_rng(check_int(seed, "seed", min_value=0))


def _kmeans_pp(v: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """D² sampling (Arthur & Vassilvitskii): first centroid uniform over the values, each
    next one drawn with probability ``∝ min_j (v − c_j)²`` (inverse-CDF on the cumulative
    sum with one ``rng.random()`` per draw). Needs ``k ≤`` #distinct values."""
    chosen = [v[rng.integers(v.size)]]
    d2 = (v - chosen[0]) ** 2
    for _ in range(1, k):
        cum = np.cumsum(d2)
        idx = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        if idx >= v.size or d2[idx] == 0:  # r rounded up to the total: take the last positive weight
            idx = int(np.flatnonzero(d2)[-1])
        chosen.append(v[idx])
        d2 = np.minimum(d2, (v - v[idx]) ** 2)
    return np.sort(np.asarray(chosen))


def initial_centroids(values, k, init: str = DEFAULT_INIT, *, seed=None, bins=None) -> np.ndarray:
    """The ``(k,)`` sorted starting centroids of ``init`` ∈ {linear, quantile, kmeans++, optimal, binned}.

    * ``linear``: ``np.linspace(min v, max v, k)``.
    * ``quantile``: ``np.quantile(v, (2j + 1)/(2k))``, ``j = 0..k−1`` (linear interpolation).
    * ``kmeans++``: D² sampling with ``seed`` (int or ``np.random.Generator``; a Generator
      is advanced). Requires ``k <`` #distinct values.
    * ``optimal``: the centroids of :func:`kmeans_1d_optimal`.
    * ``binned``: :func:`binned_optimal_centroids` with ``bins`` (``None``: ``max(128, 2k)``).

    >>> initial_centroids(np.arange(9.0), 3, "linear")
    array([0., 4., 8.])
    >>> initial_centroids(np.arange(9.0), 3, "quantile")
    array([1.33333333, 4.        , 6.66666667])
    """
    v = as_float_array(values, "values").ravel()
    k = check_int(k, "k", min_value=1)
    init = check_choice(init, "init", INITS[:-1])
    if bins is not None:
        check_int(bins, "bins", min_value=1)
    if init == "binned":
        return binned_optimal_centroids(v, k, bins=bins)
    if init == "linear":
        return np.linspace(v.min(), v.max(), k)
    if init == "quantile":
        return np.quantile(v, (2 * np.arange(k) + 1) / (2 * k))
    if init == "kmeans++":
        rng = _rng(seed)
        if k >= np.unique(v).size:
            raise ValueError(f"init='kmeans++' needs k < the number of distinct values ({np.unique(v).size}), got k={k}")
        return _kmeans_pp(v, k, rng)
    return kmeans_1d_optimal(v, k).centroids


# ------------------------------------------------------------------------ exact DP


def _segment_cost(s0, s1, s2, m, i):
    """SSE of the (weighted) sorted points ``[m, i)`` from prefix sums, clamped at 0."""
    w = s0[i] - s0[m]
    t = s1[i] - s1[m]
    return np.maximum(s2[i] - s2[m] - t * t / w, 0.0)


def _layer_quadratic(prev, j, n, s0, s1, s2):
    """``D_j[i] = min_{j−1 ≤ m < i} D_{j−1}[m] + cost(m, i)`` for every ``i``, trying every
    split ``m`` (``O(n²)`` time, ``O(n)`` memory); ``opt[i]`` is the smallest best split."""
    d = np.full(n + 1, np.inf)
    opt = np.zeros(n + 1, dtype=np.int64)
    for i in range(j, n + 1):
        m = np.arange(j - 1, i)
        total = prev[m] + _segment_cost(s0, s1, s2, m, i)
        best = np.argmin(total)  # first minimum: smallest split
        d[i], opt[i] = total[best], m[best]
    return d, opt


def _layer_divide_and_conquer(prev, j, n, s0, s1, s2):
    """The same layer, using that the optimal split ``opt(i)`` is non-decreasing in ``i``
    (the 1-D SSE cost is Monge): solve the middle ``i`` of a range, then the left half
    searches only ``m ≤ opt(mid)`` and the right half ``m ≥ opt(mid)`` (``O(n log n)``)."""
    d = np.full(n + 1, np.inf)
    opt = np.zeros(n + 1, dtype=np.int64)

    def solve(i_lo, i_hi, m_lo, m_hi):
        if i_lo > i_hi:
            return
        mid = (i_lo + i_hi) // 2
        m = np.arange(m_lo, min(m_hi, mid - 1) + 1)
        total = prev[m] + _segment_cost(s0, s1, s2, m, mid)
        best = np.argmin(total)  # first minimum: smallest split
        d[mid], opt[mid] = total[best], m[best]
        solve(i_lo, mid - 1, m_lo, opt[mid])
        solve(mid + 1, i_hi, opt[mid], m_hi)

    solve(j, n, j - 1, n - 1)
    return d, opt


def _optimal_starts(points: np.ndarray, weights: np.ndarray, k: int, method: str) -> np.ndarray:
    """Segment starts ``(k,)`` of the exact ``k``-segmentation of sorted weighted points (``k < n``).

    ``points`` ascending (equal points allowed: the binned init's runs), ``weights > 0``. Ties between
    splits of equal cost → the smallest split at every backtracking step (SPEC §5.kmeans)."""
    n = points.size
    w = weights.astype(np.float64)
    x = points - np.average(points, weights=w)  # centred: less cancellation in S2 − S1²/S0
    s0 = np.concatenate([[0.0], np.cumsum(w)])
    s1 = np.concatenate([[0.0], np.cumsum(w * x)])
    s2 = np.concatenate([[0.0], np.cumsum(w * x * x)])
    layer = _layer_quadratic if method == "quadratic" else _layer_divide_and_conquer
    d = np.full(n + 1, np.inf)
    d[1:] = _segment_cost(s0, s1, s2, np.zeros(n, dtype=np.int64), np.arange(1, n + 1))
    opts = []
    for j in range(2, k + 1):
        d, opt = layer(d, j, n, s0, s1, s2)
        opts.append(opt)
    starts, i = [0], n  # backtrack: cluster j starts at opt_j[end of cluster j]
    for opt in reversed(opts):
        i = int(opt[i])
        starts.insert(1, i)
    return np.array(starts, dtype=np.int64)


def _optimal_centroids(uniq: np.ndarray, counts: np.ndarray, k: int, method: str) -> np.ndarray:
    """Exact 1-D k-means over distinct sorted values with multiplicities (``k < n``)."""
    starts = _optimal_starts(uniq, counts, k, method)
    sums = np.add.reduceat(counts * uniq, starts)
    return sums / np.add.reduceat(counts.astype(np.float64), starts)


def _exact_when_few_distinct(v: np.ndarray, k: int):
    uniq = np.unique(v)
    if k < uniq.size:
        return None
    c = np.concatenate([uniq, np.full(k - uniq.size, uniq[-1])])
    labels = _assign(v, c)
    return KMeansResult(c, labels, _sse(v, c, labels), 0, True, np.array([_sse(v, c, labels)]))


def kmeans_1d_optimal(values, k, *, method: str = "quadratic") -> KMeansResult:
    """The exact 1-D k-means optimum by dynamic programming over the sorted values.

    Sort the distinct values ``u_0 < … < u_{n−1}`` with multiplicities ``w``; with
    prefix sums ``S0, S1, S2`` of ``w, w·u, w·u²`` the cost of the segment ``[m, i)``
    is ``S2 − S1²/S0`` (differences of prefix sums). Then
    ``D_1[i] = cost(0, i)``, ``D_j[i] = min_{j−1 ≤ m < i} D_{j−1}[m] + cost(m, i)``;
    ``D_k[n]`` is optimal and backtracking gives the ``k`` segments (ties → the
    smallest split). Centroids are the segment means; labels use :func:`assign`
    (which can only lower the SSE further).

    ``method``: ``"quadratic"`` (default, the recurrence as written) tries every split
    (``O(k·n²)`` time, ``O(n)`` memory); ``"divide_and_conquer"`` uses the monotone
    optimal split (``O(k·n log n)``) for large ``n``. Their SSEs agree to float64
    rounding (tests/test_ref_kmeans.py; with exact arithmetic they are equal).

    >>> r = kmeans_1d_optimal(np.array([0.0, 1.0, 2.0, 10.0, 11.0, 30.0]), 3)
    >>> r.centroids, r.sse
    (array([ 1. , 10.5, 30. ]), 2.5)
    """
    v = as_float_array(values, "values")
    k = check_int(k, "k", min_value=1)
    method = check_choice(method, "method", OPTIMAL_METHODS)
    exact = _exact_when_few_distinct(v, k)
    if exact is not None:
        return exact
    uniq, counts = np.unique(v, return_counts=True)
    c = _optimal_centroids(uniq, counts, k, method)
    labels = _assign(v, c)
    s = _sse(v, c, labels)
    return KMeansResult(c, labels, s, 0, True, np.array([s]))


# ------------------------------------------------------------------ the binned init


def binned_bin_count(k, bins=None) -> int:
    """``B``, the number of runs of each kind of the binned init: ``max(128, 2k)`` by default, else
    ``max(bins, k)`` (SPEC §5.kmeans-binned).

    >>> binned_bin_count(16), binned_bin_count(256), binned_bin_count(4, bins=8), binned_bin_count(16, bins=8)
    (128, 512, 8, 16)
    """
    k = check_int(k, "k", min_value=1)
    if bins is None:
        return max(128, 2 * k)
    return max(check_int(bins, "bins", min_value=1), k)


def binned_run_edges(sorted_values, bins) -> np.ndarray:
    """Run boundaries of the binned init: indices into the ascending values, ``0`` and ``n`` included,
    ascending and distinct (so no run is empty). SPEC §5.kmeans-binned.

    The union of

    * ``bins`` **equal-count** runs: ``⌊r·n/bins⌋``, ``r = 0..bins`` (such a boundary may fall inside a
      group of equal values, splitting it between two runs);
    * ``bins`` runs of **equal ``p^{1/3}`` mass** (``p`` the values' density; the high-resolution optimal
      quantizer puts its levels with density ``∝ p^{1/3}``), estimated on fine cells: the union of
      ``F = 4096`` equal-count cells (``⌊i·n/F⌋``) and ``F`` equal-width cells (``#{v < g_i}`` at
      ``g_i = v_0 + (v_{n−1} − v_0)·(i/F)``, ``i = 1..F−1``). A fine boundary at index ``c`` sits at
      ``x_c = 0.5·v_{c−1} + 0.5·v_c`` (the ends at ``v_0`` and ``v_{n−1}``); a fine cell of ``m`` values
      and width ``Δx`` has mass ``m^{1/3}·max(Δx, 0)^{2/3}``. With ``M`` the cumulative mass (``M_0 = 0``),
      target ``τ_r = r·(M_last/bins)``, ``r = 1..bins−1``, is found in cell ``j = #{a : M_a ≤ τ_r}``
      (clamped to ``[1, len(M) − 1]``), interpolated linearly to
      ``y = x_{j−1} + f·(x_j − x_{j−1})``, ``f = clamp((τ_r − M_{j−1}) / max(M_j − M_{j−1}, 1e-300), 0, 1)``,
      and becomes the boundary ``#{v ≤ y}`` (never inside a group of equal values).

    >>> binned_run_edges(np.arange(8.0), 2)  # uniform data: the equal-mass boundary is the median
    array([0, 4, 8])
    >>> binned_run_edges(np.arange(12.0) ** 2, 3)  # sparse upper tail: equal mass adds 6 and 9
    array([ 0,  4,  6,  8,  9, 12])
    """
    s = as_float_array(sorted_values, "sorted_values", ndim=1)
    if np.any(np.diff(s) < 0):
        raise ValueError("sorted_values must be sorted ascending")
    bins = check_int(bins, "bins", min_value=1)
    n, fine = s.size, BINNED_FINE_CELLS
    grid = s[0] + (s[-1] - s[0]) * (np.arange(1, fine, dtype=np.float64) / fine)
    cells = np.unique(np.concatenate([np.arange(fine + 1) * n // fine, np.searchsorted(s, grid, side="left")]))
    inner = np.clip(cells, 1, n - 1)
    x = 0.5 * s[inner - 1] + 0.5 * s[inner]  # fine boundaries in value space
    x[0], x[-1] = s[0], s[-1]
    mass = np.diff(cells).astype(np.float64) ** (1 / 3) * np.maximum(np.diff(x), 0.0) ** (2 / 3)
    cum = np.concatenate([[0.0], np.cumsum(mass)])
    target = np.arange(1, bins, dtype=np.float64) * (cum[-1] / bins)
    j = np.clip(np.searchsorted(cum, target, side="right"), 1, cum.size - 1)
    frac = np.clip((target - cum[j - 1]) / np.maximum(cum[j] - cum[j - 1], 1e-300), 0.0, 1.0)
    by_mass = np.searchsorted(s, x[j - 1] + frac * (x[j] - x[j - 1]), side="right")
    by_count = np.arange(bins + 1) * n // bins
    return np.unique(np.concatenate([by_count, by_mass]))


def binned_optimal_centroids(values, k, *, bins=None, method: str = "quadratic") -> np.ndarray:
    """The ``binned`` init (SPEC §5.kmeans-binned): the exact DP over weighted runs of the sorted values.

    With ``B = binned_bin_count(k, bins)`` and the ``n`` values sorted ascending (prefix sums
    ``S[p] = Σ_{i<p} v_(i)``, left to right):

    1. if ``n ≤ 4B`` or at most ``2B`` values are distinct: the exact optimum on the values
       themselves (:func:`kmeans_1d_optimal`; ``k ≥ d`` is its exact rule);
    2. else the runs ``[e_r, e_{r+1})`` between the :func:`binned_run_edges` ``e`` each become one point,
       their mean ``(S[e_{r+1}] − S[e_r]) / w_r``, weighted by their count ``w_r``; with at most ``k``
       runs, the exact optimum on the values as in 1;
    3. the exact DP (:func:`kmeans_1d_optimal`'s recurrence, ties → the smallest split) cuts the runs
       into ``k`` segments; each centroid is the mean of all the values of its segment's runs,
       ``(S[end] − S[start]) / (end − start)``.

    Returns the ``(k,)`` ascending centroids (Lloyd then runs from them in ``kmeans_1d(init="binned")``).
    ``method``: the DP solver (:data:`~repspec.core.vocabulary.OPTIMAL_METHODS`; same result).

    >>> v = np.linspace(0.0, 1.0, 9) ** 2  # few values: the exact optimum
    >>> np.array_equal(binned_optimal_centroids(v, 3), kmeans_1d_optimal(v, 3).centroids)
    True
    """
    v = as_float_array(values, "values")
    b = binned_bin_count(k, bins)
    k = check_int(k, "k", min_value=1)
    method = check_choice(method, "method", OPTIMAL_METHODS)
    s = np.sort(v.ravel())
    n = s.size
    if n <= 4 * b or np.unique(s).size <= 2 * b:
        return kmeans_1d_optimal(s, k, method=method).centroids
    edges = binned_run_edges(s, b)
    prefix = np.concatenate([[0.0], np.cumsum(s)])
    w = np.diff(edges)
    points = (prefix[edges[1:]] - prefix[edges[:-1]]) / w
    if points.size <= k:
        return kmeans_1d_optimal(s, k, method=method).centroids
    starts = edges[_optimal_starts(points, w, k, method)]
    ends = np.append(starts[1:], n)
    return (prefix[ends] - prefix[starts]) / (ends - starts)


# ---------------------------------------------------------------------------- Lloyd


def kmeans_1d(values, k, *, init: str | None = None, max_iter: int = 300, seed=None,
              init_centroids=None, bins=None) -> KMeansResult:
    """1-D k-means (Lloyd) with a named init (SPEC §5, module docstring for every rule).

    ``values``: any shape (flattened for clustering; ``labels`` keep the shape).
    ``k ≥ 1``. ``init``: one of :data:`INITS`; ``None`` means ``"warm"`` when
    ``init_centroids`` is given and :data:`DEFAULT_INIT` otherwise. ``init="warm"``
    needs ``init_centroids`` (``(k,)``, finite; sorted ascending here) and any other
    init refuses them. ``seed``: int or ``np.random.Generator``, required by
    ``kmeans++``. ``max_iter ≥ 0`` bounds the number of updates. ``bins``: the ``binned``
    init's run count (``None``: ``max(128, 2k)``; SPEC §5.kmeans-binned).

    Returns :class:`KMeansResult`; ``sse_history[t]`` is the SSE after ``t`` updates
    (``sse_history[0]``: the init's assignment), non-increasing.

    >>> v = np.array([0.0, 0.1, 0.2, 5.0, 5.2, 9.0])
    >>> r = kmeans_1d(v, 2, init="linear")
    >>> r.centroids, r.labels, r.n_iter, r.converged
    (array([0.1, 6.4]), array([0, 0, 0, 1, 1, 1]), 1, True)
    """
    v = as_float_array(values, "values")
    k = check_int(k, "k", min_value=1)
    max_iter = check_int(max_iter, "max_iter", min_value=0)
    if bins is not None:
        check_int(bins, "bins", min_value=1)
    if init is None:
        init = "warm" if init_centroids is not None else DEFAULT_INIT
    init = check_choice(init, "init", INITS)
    if init == "warm":
        if init_centroids is None:
            raise ValueError("init='warm' needs init_centroids")
        c = np.sort(as_float_array(init_centroids, "init_centroids", shape=(k,)))
    elif init_centroids is not None:
        raise ValueError(f"init_centroids is only used with init='warm' (or init=None), got init={init!r}")
    if init == "kmeans++":
        _rng(seed)  # refuse a missing seed even when the few-distinct shortcut applies
    exact = _exact_when_few_distinct(v, k)
    if exact is not None:
        return exact
    if init != "warm":
        c = initial_centroids(v, k, init, seed=seed, bins=bins)
    labels = _assign(v, c)
    history = [_sse(v, c, labels)]
    converged, n_iter = False, 0
    for n_iter in range(1, max_iter + 1):
        c = _update(v, c, labels)
        new_labels = _assign(v, c)
        history.append(_sse(v, c, new_labels))
        if np.array_equal(new_labels, labels):
            converged = True
            break
        labels = new_labels
    return KMeansResult(c, labels, history[-1], n_iter, converged, np.array(history))


# ------------------------------------------------------------- fake quantization


def kmeans_fake_quantize(w, centroids) -> np.ndarray:
    """``ŵ = centroids[assign(w, centroids)]`` (same tie rule), shaped like ``w``.

    >>> kmeans_fake_quantize(np.array([[0.2, 0.5], [0.9, 3.0]]), np.array([0.0, 1.0]))
    array([[0., 0.],
           [1., 1.]])
    """
    w = as_float_array(w, "w")
    c = _check_sorted_centroids(centroids)
    return c[_assign(w, c)]


def kmeans_fake_quantize_backward(dy) -> np.ndarray:
    """Straight-through: ``∂L/∂w = dy`` (SPEC §5)."""
    return as_float_array(dy, "dy", allow_empty=True).copy()
