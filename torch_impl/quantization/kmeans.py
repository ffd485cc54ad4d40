"""SPEC §5 *[repspec]*: 1-D k-means in PyTorch — sort once, then ``O(k log n)`` Lloyd iterations.

The rules are those of :mod:`repspec.reference.kmeans` (the oracle, never imported
here); this module is an independent, device-agnostic implementation (CPU or CUDA:
results stay on the device of the input). docs/12-torch-qat.md has the measurements.

**Assignment** (:func:`assign`). Centroids sorted ascending; decision boundaries are
the midpoints ``m_j = 0.5·c_j + 0.5·c_{j+1}`` (the reference's formula, same float
operations); ``label(v) = #{j : m_j < v}`` — for ``k ≤ 32`` a branchless scan of ``k − 1``
vectorized comparisons, else ``torch.searchsorted(m, v, right=False)`` (NumPy
``side='left'``) — so a value **exactly on a midpoint goes to the lower centroid**;
duplicate centroids: the **lowest index** of the equal group.

**Lloyd without an n×k matrix** (``method='sorted'``). The values are sorted once
(``O(n log n)``) and their float64 prefix sums ``S`` taken once. With sorted values
every cluster is a contiguous run, so one iteration only needs the run ends
``E_j = #{v : label(v) ≤ j}`` = ``searchsorted(sorted_v, m, right=True)`` (``#{v ≤ m_j}``,
``O(k log n)``) mapped through the duplicate rule. The update is
``c_j = (S[E_j] − S[E_{j−1}]) / (E_j − E_{j−1})``; an **empty cluster keeps its
centroid**; then the centroids are sorted again. The labels are unchanged iff ``E`` is
unchanged, so the stopping rule ("no label changed, or ``max_iter`` updates") is the
reference's; iterations run in blocks without a host round trip (:func:`_lloyd`). The
per-value labels are computed once at the end. ``method='direct'`` assigns all values
and sums with ``bincount`` (``O(n)`` per iteration, bit-identical centroids to NumPy's
``bincount`` on the CPU); ``'auto'`` (default) is direct on the CPU up to 2^16 values,
sorted otherwise. Results stay on the values' device (CPU or CUDA). On a CUDA tensor
every step is a torch kernel and no loop makes a host round trip per iteration (the
sorted Lloyd loop checks convergence once per block of iterations; kmeans++ draws its
random numbers up front; the DP backtracks on the device). On a CPU tensor the
sequential scans — the sort's widening and prefix sums, the DP's split search, the
sorted Lloyd loop, the per-value labels and the SSE — run as compiled loops
(:mod:`._cpu_kernels`, Numba) with the torch path's float64 operations in the same
order: the same results, bit for bit, at a fraction of the per-call overhead
(``_COMPILED_CPU = False`` sends CPU tensors down the torch path; the tests run both).

**k ≥ number of distinct values**: exact, as the reference — the centroids are the
distinct values followed by ``k − d`` copies of the largest; no iterations; SSE 0.

**Inits** (``init=``): ``linear`` (NumPy's ``linspace`` arithmetic on ``[min, max]``),
``quantile`` (NumPy's default ``linear`` quantile arithmetic at ``(2j+1)/(2k)``) — both
bit-identical to the reference; ``kmeans++`` (D² sampling; needs ``seed`` — an ``int``
or a :class:`torch.Generator`; the random stream is torch's, so the centroids differ from
the reference's NumPy stream for the same seed); ``optimal`` (:func:`kmeans_1d_optimal`,
the exact DP); ``warm`` (``init_centroids``, sorted on entry: the ClusterQAT refit); and
``binned`` (:func:`binned_optimal_centroids`: the exact DP over a few hundred weighted
runs of the sorted values, then Lloyd on all values) — **the default**
(:data:`DEFAULT_INIT`, used by :class:`~repspec.torch_impl.quantization.qat.KMeansWeightQuantizer`
and ``repspec quantize clusterqat``): on 10^6 values it reaches scikit-learn's
``KMeans(n_init=1)`` SSE or lower at a small fraction of its time
(``benchmarks/bench_kmeans.py``; README "Performance").

**The exact DP** (:func:`kmeans_1d_optimal`) is repspec's own algorithm for the reference's
recurrence (section comment above :func:`_cost`): the monotone-split (divide-and-conquer)
recursion, ``O(k·n log n)`` candidate evaluations. On the CPU it runs depth first as a
compiled loop (~50 ms a layer at 10^6 distinct values: 10^6 values at k = 16 in less
than scikit-learn's ``KMeans(16, n_init=1)`` time); elsewhere a dense layer solver for a
few hundred points, else the same recursion evaluated level by level over all
sub-problems at once (no host synchronisation inside a layer). Every solver is tested
against the reference's readable quadratic DP (same optimal SSE; a different
segmentation only as an exact tie).

**Precision.** All arithmetic is float64 (other dtypes are converted for the
computation); ``centroids`` are returned in the input's dtype and ``labels`` are the
assignment of the input values to *those* centroids. Against the reference (float64,
CPU): ``'direct'`` with ``linear``/``quantile``/``warm`` is bit-identical; ``'sorted'``
gives the same labels and centroids within a few ulps (prefix-sum vs ``bincount`` sums)
except for values within ``ε`` of a midpoint (SPEC §6; tests/test_torch_kmeans.py
states ε); the DP's optimal SSE agrees to ``1e-9`` relative.

Errors: ``TypeError`` for non-tensors, non-floating tensors, non-integer ``k`` /
``max_iter``; ``ValueError`` for empty or non-finite values, ``k < 1``, unsorted or
mis-shaped centroids, unknown inits or methods, ``kmeans++`` without ``seed``.
Everything is validated before anything is computed. ``k`` larger than the number of
values is not an error: it is the exact rule above.
"""

from __future__ import annotations

import importlib.util
import math
import threading
import warnings
import weakref
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from repspec.core.vocabulary import DEFAULT_KMEANS_INIT, KMEANS_INITS

from .._validation import check_int

__all__ = [
    "binned_optimal_centroids",
    "kmeans_1d",
    "kmeans_1d_optimal",
    "kmeans_fake_quantize",
    "initial_centroids",
    "assign",
    "midpoints",
    "sse",
    "KMeansResult",
    "DEFAULT_INIT",
    "INITS",
    "METHODS",
]

#: the default init of kmeans_1d, KMeansWeightQuantizer and ``repspec quantize clusterqat`` — the reference's
#: too (one source, ``repspec.core.vocabulary.DEFAULT_KMEANS_INIT``; SPEC §5.kmeans-binned): the exact DP
#: over a few hundred bins, then Lloyd — at or below scikit-learn's SSE at more than 50x its speed on
#: 10^6-2.4M values, k = 16 and 256 (benchmarks/bench_kmeans.py; README "Performance"); ``'optimal'`` is the
#: exact optimum at about 30x the default's cost
DEFAULT_INIT = DEFAULT_KMEANS_INIT
#: every init of :func:`kmeans_1d` (SPEC §5.kmeans)
INITS = KMEANS_INITS
#: bins of the ``binned`` init: ``None`` = ``max(128, 2k)`` (:func:`binned_optimal_centroids`)
DEFAULT_BINS = None

_F64 = torch.float64


#: run the compiled CPU loops (:mod:`._cpu_kernels`) for CPU tensors; ``False`` sends CPU tensors down the
#: device-generic torch path that CUDA tensors take (tests use it to run that path without a GPU)
_COMPILED_CPU = True
#: whether Numba can be imported (looked up once); without it CPU tensors take the torch path, which
#: gives the same results bit for bit, only slower — so its absence is a warning, not an error
_NUMBA: bool | None = None


def _numba_available() -> bool:
    global _NUMBA
    if _NUMBA is None:
        _NUMBA = importlib.util.find_spec("numba") is not None
        if not _NUMBA:
            warnings.warn("numba is not installed: the k-means runs its torch path on the CPU (the same results, "
                          "several times slower); pip install numba", RuntimeWarning, stacklevel=3)
    return _NUMBA


def _compiled_cpu(device) -> bool:
    """Whether work on ``device`` runs in the compiled CPU loops."""
    return _COMPILED_CPU and torch.device(device).type == "cpu" and _numba_available()


def _compiled(t: Tensor) -> bool:
    """Whether ``t``'s work runs in the compiled CPU loops."""
    return _compiled_cpu(t.device)


def _kernels():
    """The compiled CPU loops (:mod:`._cpu_kernels`), imported on first use (Numba's import and first
    compile stay out of ``import repspec``)."""
    from . import _cpu_kernels
    return _cpu_kernels


class KMeansResult(NamedTuple):
    """SPEC §5: the result of :func:`kmeans_1d` / :func:`kmeans_1d_optimal`.

    ``centroids (k,)`` ascending, in the values' dtype and device; ``labels`` int64,
    shaped like the values; ``sse = Σ (v − c_label)²`` (float64, a Python float);
    ``n_iter`` Lloyd updates made; ``converged``: the labels stopped changing (True when
    no iteration was needed).
    """

    centroids: Tensor
    labels: Tensor
    sse: float
    n_iter: int
    converged: bool


# ------------------------------------------------------------------------ validation


def _check_values(values, name: str = "values") -> Tensor:
    if not isinstance(values, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    if not values.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {values.dtype}")
    if values.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(torch.stack(torch.aminmax(values.detach()))).all()):  # NaN propagates: one pass
        raise ValueError(f"{name} must contain only finite values (found NaN or Inf)")
    return values


def _check_centroids(centroids, name: str = "centroids", *, k: int | None = None, sorted_: bool = True,
                     device=None) -> Tensor:
    c = _check_values(centroids, name)
    if c.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(c.shape)}")
    if k is not None and c.shape[0] != k:
        raise ValueError(f"{name} must have shape ({k},), got {tuple(c.shape)}")
    if device is not None and c.device != device:
        raise ValueError(f"{name} is on {c.device}, the values are on {device}")
    if sorted_ and c.shape[0] > 1 and bool((c[1:] < c[:-1]).any()):
        raise ValueError(f"{name} must be sorted ascending")
    return c


def _generator(seed, device) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        raise ValueError("init='kmeans++' needs an explicit seed (an int or a torch.Generator) to be deterministic")
    seed = check_int(seed, "seed", min_value=0)
    return torch.Generator(device="cpu").manual_seed(seed)


# ------------------------------------------------------------------------ assignment


def _midpoints(c: Tensor) -> Tensor:
    return 0.5 * c[:-1] + 0.5 * c[1:]


def _first_of_group(c: Tensor) -> Tensor:
    return torch.searchsorted(c, c, right=False)


#: up to this many centroids the assignment is a branchless scan over the midpoints
#: (``k − 1`` vectorized comparisons: ~3x faster than ``torch.searchsorted`` for k = 16 on the CPU)
_SCAN_MAX_K = 32


#: cells of the lookup-table assignment (:func:`_lut_labels`), used from this many values on
_LUT_CELLS = 1 << 16
_LUT_MIN_VALUES = 1 << 17


def _lut_labels(flat: Tensor, m: Tensor, bounds: tuple[Tensor, Tensor] | None = None) -> Tensor | None:
    """``#{j : m_j < v}`` through a table over ``G`` equal cells of ``[min, max]``; ``None`` if it does not apply.

    A value's cell ``floor((v − lo)·G/(hi − lo))`` is computed in the values' dtype, so it
    may be off by one cell; a value in cell ``c`` therefore lies in cells ``[c − 1, c + 2)``
    of the exact grid. Midpoints below that window count for every value of the cell
    (``base[c]``); midpoints above it for none; a midpoint inside it (``amb[c]``, at most
    one per cell, else ``None``) is compared: ``label = base[c] + (amb[c] < v)`` — the
    same strict comparison as the scan, so the result is exactly the scan's. ``bounds``: the
    values' ``(min, max)`` in their dtype when already known (the sorted path's ends).
    """
    g = _LUT_CELLS
    lo, hi = torch.aminmax(flat) if bounds is None else bounds
    span = (hi - lo).to(_F64)
    if not bool(torch.isfinite(hi - lo) & (span > 0)):
        return None
    pos = (m.to(_F64) - lo.to(_F64)) * (g / span)  # midpoints in cell units, ascending
    cells = torch.arange(g, dtype=_F64, device=flat.device)
    base = torch.searchsorted(pos, cells - 1.0, right=False)  # #{j : pos_j < c − 1}
    upto = torch.searchsorted(pos, cells + 2.0, right=False)  # #{j : pos_j < c + 2}
    if bool((upto - base > 1).any()):
        return None
    amb = torch.cat([m, m.new_full((1,), math.inf)]).index_select(0, torch.where(upto > base, base, m.numel()))
    scale = (g / (hi - lo)).to(flat.dtype)
    if _compiled(flat):  # the same float operations and table, one compiled pass per value
        out = torch.empty(flat.shape, dtype=torch.int64)
        npdt = np.float32 if flat.dtype == torch.float32 else np.float64
        _kernels().lut_labels(flat.detach().contiguous().numpy(), npdt(lo.item()), npdt(scale.item()), g,
                              base.numpy(), amb.contiguous().numpy(), out.numpy())
        return out
    cell = torch.sub(flat, lo).mul_(scale).clamp_(0, g - 1).to(torch.int32)  # ≥ 0: truncation is floor
    above = (amb.index_select(0, cell) < flat).view(torch.uint8)
    if m.numel() < 256:  # labels ≤ k − 1 ≤ 255: gather and add in uint8 (~2x less memory traffic), widen once
        return torch.add(base.to(torch.uint8).index_select(0, cell), above).long()
    return base.index_select(0, cell).add_(above)


def _raw_labels(flat: Tensor, m: Tensor, bounds=None) -> Tensor:
    """``#{j : m_j < v}`` for every ``v`` (``torch.searchsorted(m, v, right=False)``), int64."""
    if flat.numel() >= _LUT_MIN_VALUES and flat.dtype in (torch.float32, _F64):
        labels = _lut_labels(flat, m, bounds)
        if labels is not None:
            return labels
    if m.numel() + 1 <= _SCAN_MAX_K:
        acc = torch.zeros(flat.shape, dtype=torch.uint8, device=flat.device)
        for j in range(m.numel()):
            acc += flat > m[j]
        return acc.long()
    return torch.searchsorted(m, flat.contiguous(), right=False)


def _assign(v: Tensor, c: Tensor, bounds: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Labels of ``v`` (any shape) for sorted ``c`` of the same dtype (reference ``_assign``).

    ``label = #{j : m_j < v}`` (a value on a midpoint goes to the lower centroid), then
    the duplicate rule (the lowest index of a group of equal centroids).
    """
    flat = v.reshape(-1)
    if c.numel() == 1:
        return torch.zeros(v.shape, dtype=torch.int64, device=v.device)
    labels = _raw_labels(flat, _midpoints(c), bounds)
    if bool((c[1:] == c[:-1]).any()):
        labels = _first_of_group(c)[labels]
    return labels.reshape(v.shape)


def midpoints(centroids: Tensor) -> Tensor:
    """SPEC §5: the decision boundaries ``m_j = 0.5·c_j + 0.5·c_{j+1}``, shape ``(k − 1,)``.

    >>> midpoints(torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64))
    tensor([0.5000, 2.0000], dtype=torch.float64)

    """
    return _midpoints(_check_centroids(centroids))


def assign(values: Tensor, centroids: Tensor) -> Tensor:
    """SPEC §5: nearest-centroid labels (int64, shaped like ``values``); on a midpoint → the lower centroid.

    ``centroids (k,)`` sorted ascending, converted to the values' dtype.

    >>> c = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    >>> assign(torch.tensor([0.5, 0.50001, 2.0, 5.0], dtype=torch.float64), c)
    tensor([0, 1, 1, 2])

    """
    v = _check_values(values)
    c = _check_centroids(centroids, device=v.device).to(v.dtype)
    return _assign(v, c)


def _sse(v: Tensor, c: Tensor, labels: Tensor) -> float:
    d = v.reshape(-1).to(_F64) - c.to(_F64).index_select(0, labels.reshape(-1))
    return float(torch.dot(d, d))


def sse(values: Tensor, centroids: Tensor) -> float:
    """SPEC §5: ``Σ (v − c_{assign(v)})²`` in float64 for sorted ``centroids``."""
    v = _check_values(values)
    c = _check_centroids(centroids, device=v.device).to(v.dtype)
    return _sse(v, c, _assign(v, c))


# ------------------------------------------------------------------ sorted values


def _sort(flat: Tensor) -> Tensor:
    """Ascending values. On the CPU NumPy's vectorized sort (zero-copy; measured ~30x faster than
    ``torch.sort`` on 10^6 float32 values, which also computes indices); elsewhere ``torch.sort``."""
    if flat.device.type == "cpu":
        if flat.dtype == torch.bfloat16:  # no NumPy dtype; float32 holds it exactly
            flat = flat.float()
        return torch.from_numpy(np.sort(flat.detach().contiguous().numpy()))
    return torch.sort(flat).values


class _Workspace(threading.local):
    """Per-thread buffers reused by :class:`_SortedValues` on the compiled CPU path.

    A fresh multi-megabyte buffer costs a page fault per 4 KiB on first touch, and glibc
    hands large freed blocks back to the system, so without reuse every call on a
    2.36M-weight layer faults in ~47 MB again (measured: 40–50 ms a call instead of ~30).
    One :class:`_SortedValues` at a time holds the lease (released when it is collected);
    a second one alive at the same time allocates its own buffers. Nothing returned to a
    caller is a view of these buffers (tested: a later call leaves earlier results intact).
    """

    def __init__(self):
        self.busy = False
        self.capacity = 0
        self.f32 = self.f64 = self.prefix = None

    def lease(self, owner, n: int):
        """``(float32 (n,), float64 (n,), float64 (n + 1,))`` numpy views, or ``None`` if leased or too big."""
        if self.busy or n > _WORKSPACE_MAX:
            return None
        if n > self.capacity:
            self.capacity = min(_WORKSPACE_MAX, 1 << max(n - 1, 1).bit_length())
            self.f32 = np.empty(self.capacity, dtype=np.float32)
            self.f64 = np.empty(self.capacity, dtype=np.float64)
            self.prefix = np.empty(self.capacity + 1, dtype=np.float64)
        self.busy = True
        weakref.finalize(owner, self._release)
        return self.f32[:n], self.f64[:n], self.prefix[: n + 1]

    def _release(self):
        self.busy = False


_WORKSPACE = _Workspace()
#: the most values served from the workspace (4.2M: at most ~84 MB kept per thread); larger inputs allocate per call
_WORKSPACE_MAX = 1 << 22


class _SortedValues:
    """The values sorted once (float64) and their prefix sums ``S[p] = Σ_{i<p} v_(i)``."""

    def __init__(self, flat: Tensor):
        self.n = flat.numel()
        if _compiled(flat) and flat.dtype in (torch.float32, _F64):
            self._sort_compiled(flat)
        else:
            self.sorted = _sort(flat).to(_F64)
            self.prefix = torch.empty(self.n + 1, dtype=_F64, device=flat.device)
            self.prefix[0] = 0.0
            torch.cumsum(self.sorted, 0, out=self.prefix[1:])
        self._distinct: Tensor | None = None
        self._counts: Tensor | None = None

    def _sort_compiled(self, flat: Tensor) -> None:
        """Sort (NumPy, in place, what ``np.sort`` does to its copy), then widen + sum in one compiled pass,
        into the thread's :class:`_Workspace` when it is free, else into fresh buffers."""
        src = flat.detach().contiguous().numpy()
        bufs = _WORKSPACE.lease(self, self.n)
        if bufs is None:
            f64, prefix = np.empty(self.n), np.empty(self.n + 1)
            work = f64 if src.dtype == np.float64 else np.empty(self.n, dtype=src.dtype)
        else:
            f32, f64, prefix = bufs
            work = f64 if src.dtype == np.float64 else f32
        np.copyto(work, src)
        work.sort()
        _kernels().sorted_prefix(work, f64, prefix)  # float64 input: widening in place is the identity
        self.sorted, self.prefix = torch.from_numpy(f64), torch.from_numpy(prefix)

    def distinct(self) -> tuple[Tensor, Tensor]:
        if self._distinct is None:
            self._distinct, self._counts = torch.unique_consecutive(self.sorted, return_counts=True)
        return self._distinct, self._counts

    def run_ends(self, c: Tensor) -> Tensor:
        """``E_j = #{v : label(v) ≤ j}`` for sorted float64 ``c`` (``(k,)``, ``E_{k−1} = n``)."""
        raw = torch.searchsorted(self.sorted, _midpoints(c), right=True)  # #{v <= m_j}
        raw = torch.cat([raw, raw.new_full((1,), self.n)])
        last_of_group = torch.searchsorted(c, c, right=True) - 1
        return raw[last_of_group]

    def update(self, c: Tensor, ends: Tensor) -> Tensor:
        """One Lloyd update from run ends: means of the runs, empty clusters keep ``c_j``; sorted."""
        starts = torch.cat([ends.new_zeros(1), ends[:-1]])
        counts = ends - starts
        sums = self.prefix[ends] - self.prefix[starts]
        means = sums / counts.clamp_min(1).to(_F64)
        return torch.sort(torch.where(counts > 0, means, c)).values


def _exact_centroids(sv: _SortedValues, k: int) -> Tensor | None:
    """k ≥ #distinct: the distinct values then copies of the largest (reference ``_exact_when_few_distinct``)."""
    uniq, _ = sv.distinct()
    d = uniq.numel()
    if k < d:
        return None
    return torch.cat([uniq, uniq[-1:].expand(k - d)])


# ----------------------------------------------------------------------------- inits


def _linspace_numpy(lo: Tensor, hi: Tensor, k: int) -> Tensor:
    """``np.linspace(lo, hi, k)`` with NumPy's arithmetic (bit-identical in float64)."""
    y = torch.arange(k, dtype=_F64, device=lo.device)
    delta = hi - lo
    div = k - 1
    if div > 0:
        step = delta / div
        if bool(step == 0):
            y = (y / div) * delta
        else:
            y = y * step
    else:
        y = y * delta
    y = y + lo
    if k > 1:
        y[-1] = hi
    return y


def _quantile_numpy(sorted_v: Tensor, q: Tensor) -> Tensor:
    """``np.quantile(v, q)`` (method ``linear``) on already sorted float64 values, NumPy's arithmetic."""
    n = sorted_v.numel()
    virtual = (n - 1) * q
    prev = torch.floor(virtual)
    gamma_idx = prev.to(torch.int64)
    nxt = gamma_idx + 1
    above = virtual >= n - 1
    gamma_idx = torch.where(above, torch.full_like(gamma_idx, n - 1), gamma_idx)
    nxt = torch.where(above, torch.full_like(nxt, n - 1), nxt)
    prev_f = torch.where(above, torch.full_like(prev, -1.0), prev)
    a, b = sorted_v[gamma_idx], sorted_v[nxt]
    gamma = virtual - prev_f
    diff = b - a
    return torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def _kmeans_pp(v: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """D² sampling, the reference's algorithm with torch's random stream (float64 ``v``, flat).

    Every random number is drawn up front (one index, then ``k − 1`` uniforms, from ``gen`` on its
    device, moved once), and each pick stays a device tensor: no host round trip per centroid.
    Pick ``t``: the first ``i`` with ``cumsum(D²)[i] > r_t·Σ D²`` — a point of positive weight; if
    ``r_t·Σ D²`` rounds up to the total, the point where the running total last rises.
    """
    n = v.numel()
    first = torch.randint(n, (1,), generator=gen, device=gen.device).to(v.device)
    draws = torch.rand(k - 1, generator=gen, device=gen.device, dtype=_F64).to(v.device)
    chosen = torch.empty(k, dtype=_F64, device=v.device)
    pick = v.index_select(0, first)
    chosen[0:1] = pick
    d2 = (v - pick) ** 2
    for t in range(1, k):
        cum = torch.cumsum(d2, 0)
        idx = torch.searchsorted(cum, draws[t - 1:t] * cum[-1:], right=True)
        last_rise = torch.searchsorted(cum, cum[-1:], right=False)
        pick = v.index_select(0, torch.where(idx >= n, last_rise, idx))
        chosen[t:t + 1] = pick
        d2 = torch.minimum(d2, (v - pick) ** 2)
    return torch.sort(chosen).values


# ------------------------------------------------------------------------ exact DP
#
# The recurrence is SPEC §5's (the reference's ``kmeans_1d_optimal``); the algorithm is
# repspec's own. Over ``n`` sorted weighted points with prefix sums ``s0, s1, s2`` (centred),
#   D_1[i] = cost(0, i),   D_j[i] = min_{m < i} D_{j-1}[m] + cost(m, i),   answer D_k[n],
# and the optimal split ``opt_j(i)`` is monotone in ``i`` (the 1-D SSE cost is Monge).
# Three solvers (:func:`_dp_solver`) give the same minima:
#   * compiled — CPU tensors: the monotone-split recursion depth first in a compiled loop
#              (:func:`._cpu_kernels.optimal_starts`, all layers and the backtrack in one call);
#   * dense  — all splits at once from one precomputed (n+1)×(n+1) cost table: 2 kernels a
#              layer (small n off the CPU: the binned init);
#   * levels — the monotone-split recursion evaluated breadth first: the recursion tree
#              over i ∈ [1, n] depends on n only, so it is built once (a :class:`_Plan`)
#              and every level of every layer is a fixed-size batch of tensor kernels
#              (candidates of all sub-problems laid end to end; the ranges of one level
#              overlap only at their ends, so ``n + #sub-problems`` slots always suffice):
#              O(n log n) work a layer, no host synchronisation inside a layer.
# The last layer only needs ``i = n`` (one argmin). Backtracking gathers on the device.


def _cost(s0, s1, s2, m, i):
    """SSE of the weighted points ``[m, i)`` from centred prefix sums, clamped at 0."""
    w = s0[i] - s0[m]
    t = s1[i] - s1[m]
    return (s2[i] - s2[m] - t * t / w).clamp_min_(0.0)


class _Plan:
    """The breadth-first recursion tree of the monotone-split search over ``i ∈ [1, n]``.

    Level ``l`` holds the sub-problems ``[lo, hi]`` of depth ``l``; each solves its middle
    ``mid`` searching splits in ``[opt(lo − 1), min(opt(hi + 1), mid − 1)]`` where ``opt(0)``
    and ``opt(n + 1)`` are sentinels (``0`` and ``n − 1``). Built with host tensors once per
    ``n``, then moved to the device.
    """

    def __init__(self, n: int, device):
        lo, hi = torch.tensor([1]), torch.tensor([n])
        self.levels = []
        widest = 1
        while lo.numel():
            mid = (lo + hi) // 2
            t = mid.numel()
            widest = max(widest, n + t)
            self.levels.append(tuple(x.to(device) for x in (mid, mid - 1, lo - 1, hi + 1,
                                                             torch.arange(t + 1))) + (n + t,))
            left, right = lo <= mid - 1, mid + 1 <= hi
            lo, hi = torch.cat([lo[left], mid[right] + 1]), torch.cat([mid[left] - 1, hi[right]])
        self.slots = torch.arange(widest, device=device)


def _layer_levels(prev, s0, s1, s2, plan: _Plan, n: int):
    """One layer by the level-by-level monotone-split recursion (see the section comment).

    Per candidate split ``m`` of sub-problem ``mid`` it evaluates
    ``g[m] − (s1[mid] − s1[m])² / (s0[mid] − s0[m])`` with ``g = D_{j−1} − s2`` (``s2[mid]``
    is common to the sub-problem and added back to its minimum); the candidates of all
    sub-problems of a level lie end to end in ``width`` slots, the unused tail points at a
    sentinel split ``n + 1`` whose value is ``+inf``. Indices are int32 where torch allows.
    """
    dev = prev.device
    g = torch.cat([prev - s2, prev.new_full((1,), math.inf)])  # g[n + 1] = +inf: the sentinel split
    t0 = torch.cat([s0, s0.new_full((1,), -1.0)])  # s0[mid] − s0[n + 1] > 0: no 0/0 at the sentinel
    t1 = torch.cat([s1, s1.new_zeros(1)])
    d = torch.full((n + 1,), math.inf, dtype=_F64, device=dev)
    opt = torch.zeros(n + 2, dtype=torch.int64, device=dev)
    opt[n + 1] = n - 1
    for mid, mid_1, lo_ref, hi_ref, tasks, width in plan.levels:
        t = mid.numel()
        a = opt[lo_ref]
        lens = torch.minimum(opt[hi_ref], mid_1) - a + 1
        ends = torch.cumsum(lens, 0)
        owner = torch.repeat_interleave(tasks, torch.cat([lens, width - ends[-1:]]), output_size=width)
        slot = plan.slots[:width]
        shift = torch.cat([a - (ends - lens), (n + 1 + width) * slot.new_ones(1)])
        m = torch.add(slot, shift.index_select(0, owner)).clamp_(max=n + 1).to(torch.int32)
        i0 = torch.cat([s0.index_select(0, mid), s0.new_ones(1)]).index_select(0, owner)
        i1 = torch.cat([s1.index_select(0, mid), s1.new_zeros(1)]).index_select(0, owner)
        w = i0.sub_(t0.index_select(0, m))
        r = i1.sub_(t1.index_select(0, m))
        vals = g.index_select(0, m).sub_(r.mul_(r).div_(w))
        best = torch.full((t + 1,), math.inf, dtype=_F64, device=dev).scatter_reduce_(0, owner, vals, "amin")
        cand = torch.where(vals == best.index_select(0, owner), slot, width)
        first = torch.full((t + 1,), width, dtype=torch.int64, device=dev).scatter_reduce_(0, owner, cand, "amin")
        d[mid] = (best[:t] + s2.index_select(0, mid)).clamp_min_(0.0)
        opt[mid] = m.index_select(0, first[:t]).long()
    return d, opt


def _layer_dense(prev, table):
    """``min_m prev[m] + table[m, i]`` for every ``i`` (first minimum): one broadcast, one reduction."""
    d, opt = torch.min(prev[:, None] + table, dim=0)
    return d, opt


#: up to this many points a layer is one dense (n+1)×(n+1) reduction (a few hundred µs on a CPU);
#: above it the level-by-level recursion (O(n log n)) is cheaper
_DENSE_MAX = 640


#: the exact DP's solver, forced (tests): ``'compiled'``, ``'dense'`` or ``'levels'``; ``None`` chooses by
#: device and size (:func:`_dp_solver`)
_FORCE_SOLVER: str | None = None
#: the compiled solver keeps splits as int32
_COMPILED_MAX = 2**31 - 2


def _dp_solver(n: int, device) -> str:
    """CPU: the compiled depth-first recursion (:func:`._cpu_kernels.optimal_starts`, ~50 ms a layer at
    10^6 points); elsewhere the dense table up to :data:`_DENSE_MAX` points, then the level recursion."""
    if _FORCE_SOLVER is not None:
        return _FORCE_SOLVER
    if _compiled_cpu(device) and n <= _COMPILED_MAX:
        return "compiled"
    return "dense" if n <= _DENSE_MAX else "levels"


def _optimal_segments(points: Tensor, weights: Tensor, k: int) -> Tensor:
    """Segment starts ``(k,)`` (int64, on the points' device) of the exact k-segmentation of
    sorted weighted ``points`` (``k < len(points)``); ties → the smallest split at every step."""
    n = points.numel()
    dev = points.device
    total = weights.sum()
    x = points - (points * weights).sum() / total  # centred: less cancellation in s2 − s1²/s0
    zero = torch.zeros(1, dtype=_F64, device=dev)
    s0 = torch.cat([zero, torch.cumsum(weights, 0)])
    s1 = torch.cat([zero, torch.cumsum(weights * x, 0)])
    s2 = torch.cat([zero, torch.cumsum(weights * x * x, 0)])
    solver = _dp_solver(n, dev)
    if solver == "compiled" and k > 1:
        return torch.from_numpy(_kernels().optimal_starts(s0.numpy(), s1.numpy(), s2.numpy(), k))
    ar = torch.arange(n + 1, device=dev)
    d = _cost(s0, s1, s2, torch.zeros_like(ar), ar)
    d[0] = math.inf  # no point cannot form a cluster
    opts = []
    if k > 2:
        if solver == "dense":
            mm, ii = ar[:, None], ar[None, :]
            table = torch.where(mm < ii, _cost(s0, s1, s2, torch.minimum(mm, ii - 1).clamp_min(0), ii.clamp_min(1)),
                                math.inf)
            for _ in range(2, k):
                d, opt = _layer_dense(d, table)
                opts.append(opt)
        else:
            plan = _Plan(n, dev)
            for _ in range(2, k):
                d, opt = _layer_levels(d, s0, s1, s2, plan, n)
                opts.append(opt)
    m = ar[k - 1:n]
    last = torch.argmin(d[m] + _cost(s0, s1, s2, m, torch.full_like(m, n)))  # first minimum
    split = m.index_select(0, last.reshape(1))  # (1,) tensors throughout: no host round trip
    starts = [split]
    for opt in reversed(opts):  # cluster j starts at opt_j[start of cluster j + 1]
        split = opt.index_select(0, split)
        starts.append(split)
    starts.append(torch.zeros(1, dtype=torch.int64, device=dev))
    return torch.cat(starts[::-1]) if k > 1 else torch.zeros(1, dtype=torch.int64, device=dev)


def _segment_means(points: Tensor, weights: Tensor, starts: Tensor) -> Tensor:
    """Weighted means of the runs of ``points`` that start at ``starts`` (float64 prefix sums)."""
    zero = torch.zeros(1, dtype=_F64, device=points.device)
    pw = torch.cat([zero, torch.cumsum(weights * points, 0)])
    pc = torch.cat([zero, torch.cumsum(weights, 0)])
    ends = torch.cat([starts[1:], starts.new_full((1,), points.numel())])
    return (pw[ends] - pw[starts]) / (pc[ends] - pc[starts])


def _optimal_from_sorted(sv: _SortedValues, k: int) -> Tensor:
    exact = _exact_centroids(sv, k)
    if exact is not None:
        return exact
    uniq, counts = sv.distinct()
    w = counts.to(_F64)
    return _segment_means(uniq, w, _optimal_segments(uniq, w, k))


def _default_bins(k: int) -> int:
    return max(128, 2 * k)


def _bin_edges(sv: _SortedValues, bins: int) -> Tensor:
    """Run boundaries (indices into the sorted values, ``0`` and ``n`` included) of the binned init.

    ``bins`` equal-count runs, plus ``bins`` runs of equal *Panter–Dite mass*: the mass of a
    stretch of values is ``∫ p^{1/3}`` (the high-resolution optimal quantizer's point density
    is ``∝ p^{1/3}``), estimated on a fine grid of 4096 equal-count and 4096 equal-width cells.
    Equal counts resolve the dense core; equal ``p^{1/3}`` mass puts boundaries where
    optimal centroids go, including the sparse heavy tails that equal counts merge away.
    """
    s, n, dev = sv.sorted, sv.n, sv.sorted.device
    fine = 4096
    grid = s[0] + (s[-1] - s[0]) * (torch.arange(1, fine, dtype=_F64, device=dev) / fine)
    cells = torch.unique(torch.cat([torch.div(torch.arange(fine + 1, device=dev) * n, fine, rounding_mode="floor"),
                                    torch.searchsorted(s, grid)]))
    inner = cells.clamp(1, n - 1)
    x = 0.5 * s[inner - 1] + 0.5 * s[inner]  # cell boundaries in value space
    x[0], x[-1] = s[0], s[-1]
    mass = (cells[1:] - cells[:-1]).to(_F64).pow(1 / 3) * (x[1:] - x[:-1]).clamp_min(0).pow(2 / 3)
    cum = torch.cat([torch.zeros(1, dtype=_F64, device=dev), torch.cumsum(mass, 0)])
    target = torch.arange(1, bins, dtype=_F64, device=dev) * (cum[-1] / bins)
    j = torch.searchsorted(cum, target, right=True).clamp_(1, cum.numel() - 1)
    frac = ((target - cum[j - 1]) / (cum[j] - cum[j - 1]).clamp_min(1e-300)).clamp_(0, 1)
    by_mass = torch.searchsorted(s, x[j - 1] + frac * (x[j] - x[j - 1]), right=True)
    by_count = torch.div(torch.arange(bins + 1, device=dev) * n, bins, rounding_mode="floor")
    return torch.unique(torch.cat([by_count, by_mass]))


def _at_most_distinct(sv: _SortedValues, limit: int) -> bool:
    if torch.unique_consecutive(sv.sorted[: 2 * limit + 1]).numel() > limit:  # decided on the head
        return False
    return sv.distinct()[0].numel() <= limit


def _binned_from_sorted(sv: _SortedValues, k: int, bins: int | None) -> Tensor:
    bins = _default_bins(k) if bins is None else max(bins, k)
    if sv.n <= 4 * bins or _at_most_distinct(sv, 2 * bins):
        return _optimal_from_sorted(sv, k)  # few values: the DP on all of them is as cheap
    edges = _bin_edges(sv, bins)  # ascending, distinct: no empty run
    w = (edges[1:] - edges[:-1]).to(_F64)
    means = (sv.prefix[edges[1:]] - sv.prefix[edges[:-1]]) / w
    if means.numel() <= k:
        return _optimal_from_sorted(sv, k)
    return _segment_means(means, w, _optimal_segments(means, w, k))


def binned_optimal_centroids(values: Tensor, k: int, *, bins: int | None = None) -> Tensor:
    """SPEC §5.kmeans-binned: the exact k-segmentation of a few hundred weighted bins (reference
    :func:`~repspec.reference.kmeans.binned_optimal_centroids`).

    The sorted values are cut into runs (:func:`_bin_edges`: ``B`` equal-count runs and
    ``B`` runs of equal ``p^{1/3}`` mass, ``B = bins`` or ``max(128, 2k)``); each run
    becomes one point at its mean weighted by its count; the exact DP
    (:func:`kmeans_1d_optimal`'s recurrence) segments those points; the centroids are
    the segments' means over all their values. With few values (``n ≤ 4B``, or at most
    ``2B`` distinct) the DP runs on the values themselves: the exact optimum. Followed by
    Lloyd (``kmeans_1d(init='binned')``, the default) it reaches a local optimum at or
    below scikit-learn's SSE (``benchmarks/bench_kmeans.py``).
    """
    v = _check_values(values)
    k = check_int(k, "k", min_value=1)
    if bins is not None:
        bins = check_int(bins, "bins", min_value=1)
    return _binned_from_sorted(_SortedValues(v.reshape(-1)), k, bins).to(v.dtype)


def initial_centroids(values: Tensor, k: int, init: str = DEFAULT_INIT, *, seed=None,
                      bins: int | None = DEFAULT_BINS) -> Tensor:
    """SPEC §5: the ``(k,)`` sorted starting centroids of ``init`` (float64, on the values' device).

    ``init`` ∈ {linear, quantile, kmeans++, optimal, binned} as in the module docstring
    (``linear``/``quantile`` bit-identical to the reference's NumPy arithmetic;
    ``kmeans++`` needs ``seed`` and ``k <`` #distinct values, as the reference).
    """
    v = _check_values(values)
    k = check_int(k, "k", min_value=1)
    if not isinstance(init, str) or init not in INITS[:-1]:
        raise ValueError(f"init must be one of {INITS[:-1]}, got {init!r}")
    if bins is not None:
        bins = check_int(bins, "bins", min_value=1)
    if init == "kmeans++":
        gen = _generator(seed, v.device)
    sv = _SortedValues(v.reshape(-1))
    return _initial(sv, v.reshape(-1), k, init, gen if init == "kmeans++" else None, bins)


def _initial(sv: _SortedValues, flat: Tensor, k: int, init: str, gen, bins: int | None) -> Tensor:
    if init == "linear":
        return _linspace_numpy(sv.sorted[0], sv.sorted[-1], k)
    if init == "quantile":
        q = (2 * torch.arange(k, dtype=_F64, device=flat.device) + 1) / (2 * k)
        return _quantile_numpy(sv.sorted, q)
    if init == "kmeans++":
        d = sv.distinct()[0].numel()
        if k >= d:
            raise ValueError(f"init='kmeans++' needs k < the number of distinct values ({d}), got k={k}")
        return _kmeans_pp(flat.to(_F64), k, gen)
    if init == "binned":
        return _binned_from_sorted(sv, k, bins)
    return _optimal_from_sorted(sv, k)


def _more_than_k_distinct(flat: Tensor, k: int) -> bool:
    """``#distinct(flat) > k`` — decided on a short prefix when possible (no full sort in QAT refits)."""
    n = flat.numel()
    if n <= k:
        return False
    head = flat[: min(n, max(4 * (k + 1), 1024))]
    if torch.unique(head).numel() > k:
        return True
    return torch.unique(flat).numel() > k


#: Lloyd implementations (``method=``); see :func:`kmeans_1d`
METHODS = ("auto", "direct", "sorted")
#: ``method='auto'`` on the CPU clusters at most this many values directly (bit-identical to the reference)
_SMALL = 1 << 16
#: sorted Lloyd iterations run between two host synchronisations (the convergence check)
_SYNC_EVERY = 16


def _direct_update(flat64: Tensor, c: Tensor, labels: Tensor) -> Tensor:
    """Means by ``torch.bincount`` sums (serial on the CPU: NumPy's ``bincount`` order); empty clusters keep ``c_j``."""
    k = c.numel()
    counts = torch.bincount(labels, minlength=k)
    sums = torch.bincount(labels, weights=flat64, minlength=k)
    return torch.sort(torch.where(counts > 0, sums / counts.clamp_min(1).to(_F64), c)).values


def _use_direct(method: str, flat: Tensor) -> bool:
    if method != "auto":
        return method == "direct"
    return flat.device.type == "cpu" and flat.numel() <= _SMALL


def _lloyd_sorted_cpu(sv: _SortedValues, c: Tensor, max_iter: int):
    """The sorted Lloyd loop on the CPU, compiled (:func:`._cpu_kernels.lloyd_sorted`):
    :meth:`_SortedValues.run_ends` / :meth:`~_SortedValues.update` step for step with the same
    float64 operations (so the same centroids as :func:`_lloyd_sorted_torch`, bit for bit), without
    torch's per-call overhead (a k = 16 iteration is ``k − 1`` binary searches and a few ``k``-element
    loops: microseconds instead of ~0.3 ms). Returns ``_lloyd``'s tuple."""
    c, n_iter, converged = _kernels().lloyd_sorted(sv.sorted.numpy(), sv.prefix.numpy(),
                                                   c.detach().contiguous().numpy(), max_iter)
    return torch.from_numpy(c), int(n_iter), bool(converged), None


def _lloyd(flat: Tensor, c: Tensor, max_iter: int, sv: _SortedValues | None, method: str = "auto"):
    """Lloyd from sorted float64 ``c`` until no label changes or ``max_iter`` updates.

    Returns ``(c, n_iter, converged, labels or None)``. Two implementations, same
    decisions (same midpoints, same labels), different summation:

    * **direct** — assign every value (``O(n·min(k, log k))``), sums by ``torch.bincount``
      (serial on the CPU, so the centroids are bit-identical to NumPy's ``bincount`` sums);
    * **sorted** — sort once, then ``O(k log n)`` per iteration from run ends and prefix
      sums (the module docstring). On the CPU the loop is compiled
      (:func:`_lloyd_sorted_cpu`: the same float64 operations, so the same centroids, without
      per-call overhead); elsewhere (:func:`_lloyd_sorted_torch`) iterations run in
      blocks of :data:`_SYNC_EVERY` without a host round trip; once the run ends repeat, an update reproduces the same centroids
      (a fixed point), so the extra iterations of a block change nothing and ``n_iter`` is
      the first iteration whose run ends repeated.

    ``method='auto'``: direct on the CPU for ``n ≤ 2^16``, sorted otherwise.
    """
    converged, n_iter = False, 0
    if _use_direct(method, flat):
        flat64 = flat.to(_F64)
        labels = _assign(flat64, c)
        while n_iter < max_iter:
            n_iter += 1
            c = _direct_update(flat64, c, labels)
            new_labels = _assign(flat64, c)
            if torch.equal(new_labels, labels):
                return c, n_iter, True, new_labels
            labels = new_labels
        return c, n_iter, False, labels
    if sv is None:
        sv = _SortedValues(flat)
    if _compiled(sv.sorted):
        return _lloyd_sorted_cpu(sv, c, max_iter)
    return _lloyd_sorted_torch(sv, c, max_iter)


def _lloyd_sorted_torch(sv: _SortedValues, c: Tensor, max_iter: int):
    """The sorted Lloyd loop in torch on the values' device, in blocks of :data:`_SYNC_EVERY` iterations
    without a host round trip (see :func:`_lloyd`). Returns ``_lloyd``'s tuple."""
    ends = sv.run_ends(c)
    never = torch.tensor(max_iter + 1, device=c.device)
    done = 0
    while done < max_iter:
        stop_at = never
        for t in range(done + 1, min(done + _SYNC_EVERY, max_iter) + 1):
            c = sv.update(c, ends)
            new_ends = sv.run_ends(c)
            stop_at = torch.where((stop_at > max_iter) & (new_ends == ends).all(), t, stop_at)
            ends = new_ends
        done = min(done + _SYNC_EVERY, max_iter)
        first = int(stop_at)  # one host round trip per block
        if first <= max_iter:
            return c, first, True, None
    return c, max_iter, False, None


def _sse_sorted(sv: _SortedValues, c: Tensor) -> float:
    """``Σ (v − c_label)²`` over the sorted CPU values for sorted ``c`` in the values' dtype — :func:`_sse` of
    :func:`_assign`'s labels without touching the labels: value ``v`` gets ``c_j`` with ``j = #{m_i < v}``
    (midpoints in the values' dtype, compared exactly in float64; equal centroids are equal, so the
    duplicate rule does not change a term), i.e. the runs ``(E_{j−1}, E_j]`` with ``E_j = #{v ≤ m_j}``,
    summed in one compiled pass (:func:`._cpu_kernels.sse_runs`)."""
    ends = torch.cat([torch.searchsorted(sv.sorted, _midpoints(c).to(_F64), right=True), torch.tensor([sv.n])])
    return float(_kernels().sse_runs(sv.sorted.numpy(), c.to(_F64).contiguous().numpy(), ends.numpy()))


def _kmeans(v: Tensor, k: int, init: str, max_iter: int, gen, c_warm: Tensor | None, bins: int | None,
            method: str = "auto"):
    """The validated core of :func:`kmeans_1d`: ``(centroids in v's dtype, labels, n_iter, converged)``."""
    return _kmeans_sse(v, k, init, max_iter, gen, c_warm, bins, method)[:4]


def _kmeans_sse(v: Tensor, k: int, init: str, max_iter: int, gen, c_warm: Tensor | None, bins: int | None,
                method: str = "auto"):
    """:func:`_kmeans` plus the SSE: ``(centroids, labels, n_iter, converged, sse)`` (float64)."""
    flat = v.reshape(-1)
    if not _more_than_k_distinct(flat, k):
        sv = _SortedValues(flat)
        c = _exact_centroids(sv, k).to(v.dtype)
        labels = _assign(v, c)
        return c, labels, 0, True, _sse(v, c, labels)
    sv = None
    if init == "warm":
        c = c_warm
    elif init == "linear":
        lo, hi = torch.aminmax(flat)
        c = _linspace_numpy(lo.to(_F64), hi.to(_F64), k)
    elif init == "kmeans++":
        c = _kmeans_pp(flat.to(_F64), k, gen)
    else:
        sv = _SortedValues(flat)
        c = _initial(sv, flat, k, init, gen, bins)
    if sv is None and not _use_direct(method, flat):
        sv = _SortedValues(flat)
    c, n_iter, converged, labels = _lloyd(flat, c, max_iter, sv, method)
    c_out = c.to(v.dtype)
    if labels is None or v.dtype != _F64:
        bounds = None if sv is None else (sv.sorted[0].to(v.dtype), sv.sorted[-1].to(v.dtype))  # exact
        labels = _assign(v, c_out, bounds)
    else:
        labels = labels.reshape(v.shape)
    if sv is not None and _compiled(sv.sorted):
        return c_out, labels, n_iter, converged, _sse_sorted(sv, c_out)
    return c_out, labels, n_iter, converged, _sse(v, c_out, labels)


def kmeans_1d_optimal(values: Tensor, k: int) -> KMeansResult:
    """SPEC §5: the exact 1-D k-means optimum (reference :func:`~repspec.reference.kmeans.kmeans_1d_optimal`).

    Dynamic programming over the distinct sorted values with multiplicities: prefix
    sums ``S0, S1, S2`` (values centred) give ``cost(m, i) = S2 − S1²/S0``;
    ``D_j[i] = min_{j−1 ≤ m < i} D_{j−1}[m] + cost(m, i)`` layer by layer by the
    monotone-split recursion (``O(k·n log n)`` work): on the CPU a compiled depth-first
    loop; elsewhere a dense reduction for at most ``_DENSE_MAX`` points, else the
    recursion run level by level over all sub-problems (``O(k log n)`` batched kernels, no
    host synchronisation inside a layer). Backtracking gives the segments, whose means are
    the centroids; labels by :func:`assign`.
    ``k ≥`` #distinct values: the exact rule of the module docstring.
    """
    v = _check_values(values)
    k = check_int(k, "k", min_value=1)
    c = _optimal_from_sorted(_SortedValues(v.reshape(-1)), k).to(v.dtype)
    labels = _assign(v, c)
    return KMeansResult(c, labels, _sse(v, c, labels), 0, True)


def kmeans_1d(values: Tensor, k: int, *, init: str | None = None, max_iter: int = 300, seed=None,
              init_centroids: Tensor | None = None, bins: int | None = DEFAULT_BINS, method: str = "auto") -> KMeansResult:
    """SPEC §5: 1-D k-means (Lloyd) with a named init — the reference :func:`~repspec.reference.kmeans.kmeans_1d`.

    ``values``: a floating tensor of any shape (clustered flat; ``labels`` keep the
    shape). ``k ≥ 1``. ``init``: one of :data:`INITS`; ``None`` means ``'warm'`` when
    ``init_centroids`` is given and :data:`DEFAULT_INIT` otherwise. ``'warm'`` needs
    ``init_centroids`` (``(k,)``, finite, on the values' device; sorted here) and other
    inits refuse them. ``seed`` (int or :class:`torch.Generator`) is required by
    ``kmeans++``. ``max_iter ≥ 0`` bounds the number of updates; ``bins`` is the
    ``binned`` init's bin count. ``method``: the Lloyd implementation, one of
    :data:`METHODS` (same decisions, different summation; :func:`_lloyd`): ``'direct'``
    sums like the reference (bit-identical centroids on the CPU), ``'sorted'`` iterates
    in ``O(k log n)`` after one sort, ``'auto'`` (default) is direct on the CPU for
    ``n ≤ 2^16`` and sorted otherwise.

    Cost (sorted): one sort (``O(n log n)``), then ``O(k log n)`` per Lloyd iteration,
    then one assignment for the labels (``k − 1`` vectorized comparisons for ``k ≤ 32``,
    else a binary search); never an ``n×k`` matrix.

    >>> v = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.2, 9.0], dtype=torch.float64)
    >>> r = kmeans_1d(v, 2, init="linear")
    >>> r.centroids, r.labels, r.n_iter, r.converged
    (tensor([0.1000, 6.4000], dtype=torch.float64), tensor([0, 0, 0, 1, 1, 1]), 1, True)

    """
    v = _check_values(values)
    k = check_int(k, "k", min_value=1)
    max_iter = check_int(max_iter, "max_iter", min_value=0)
    if bins is not None:
        bins = check_int(bins, "bins", min_value=1)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if init is None:
        init = "warm" if init_centroids is not None else DEFAULT_INIT
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    c = None
    if init == "warm":
        if init_centroids is None:
            raise ValueError("init='warm' needs init_centroids")
        c = torch.sort(_check_centroids(init_centroids, "init_centroids", k=k, sorted_=False,
                                        device=v.device).to(_F64)).values
    elif init_centroids is not None:
        raise ValueError(f"init_centroids is only used with init='warm' (or init=None), got init={init!r}")
    gen = _generator(seed, v.device) if init == "kmeans++" else None  # refuse a missing seed up front
    centroids, labels, n_iter, converged, total = _kmeans_sse(v, k, init, max_iter, gen, c, bins, method)
    return KMeansResult(centroids, labels, total, n_iter, converged)


# ------------------------------------------------------------- fake quantization


class _KMeansFakeQuant(torch.autograd.Function):
    """``ŵ = c[assign(w, c)]``; backward: straight-through (``∂L/∂w = ∂L/∂ŵ``)."""

    @staticmethod
    def forward(ctx, w, c):
        return c[_assign(w.detach(), c)]

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def kmeans_fake_quantize(w: Tensor, centroids: Tensor, *, validate: bool = True) -> Tensor:
    """SPEC §5: replace every weight by its assigned centroid (same tie rule); gradient straight-through.

    ``centroids (k,)`` sorted ascending (cast to ``w``'s dtype). The output is exactly
    ``centroids[assign(w, centroids)]`` — not ``w + (ĉ − w).detach()``, which would round.
    ``validate=False`` skips the finiteness/sortedness checks (no device sync).

    >>> w = torch.tensor([[0.2, 0.5], [0.9, 3.0]], dtype=torch.float64, requires_grad=True)
    >>> kmeans_fake_quantize(w, torch.tensor([0.0, 1.0], dtype=torch.float64))
    tensor([[0., 0.],
            [1., 1.]], dtype=torch.float64, grad_fn=<_KMeansFakeQuantBackward>)

    """
    if validate:
        _check_values(w, "w")
        c = _check_centroids(centroids, device=w.device)
    else:
        c = centroids
    return _KMeansFakeQuant.apply(w, c.to(w.dtype))
