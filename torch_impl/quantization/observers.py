"""SPEC §5: PTQ calibrators in PyTorch — streaming observers that choose ``(lo, hi)``.

Each observer sees an activation batch by batch (on its device, no gradient) and,
at the end, returns the **same** ``(lo, hi)`` as the reference function in
:mod:`repspec.reference.calibrate` applied to all batches (flattened, concatenated):

==========================  ==========================================  =======  ==================================
method                      observer                                    passes   memory per observed tensor
==========================  ==========================================  =======  ==================================
``minmax``                  :class:`MinMaxObserver`                     1        two scalars
``moving_average_minmax``   :class:`MovingAverageMinMaxObserver`        1        two scalars
``percentile``              :class:`PercentileObserver`                 1        ≤ 2·``capacity`` float64 (tails)
``mse``                     :class:`MSEObserver`                        1        every value (sorted, its dtype)
``entropy``                 :class:`EntropyObserver`                    2        ``num_bins`` int64 counts
==========================  ==========================================  =======  ==================================

Exactness (float64 data, tested in ``tests/test_torch_ptq.py``):

- ``minmax``, ``moving_average_minmax``: bit-identical (the moving average evaluates
  ``(1 − m)·lo + m·min`` in float64 like the reference).
- ``percentile``: bit-identical. NumPy's ``method='linear'`` needs two order
  statistics per side; the observer keeps the ``capacity`` smallest and largest
  values seen (``torch.topk``), which contain them as long as
  ``(n − 1)·(100 − p)/100 + 2 <= capacity`` (``n`` = values observed). Otherwise
  :meth:`PercentileObserver.compute_range` raises ``ValueError`` (never an
  approximate answer). Default ``capacity = 2^20`` (16 MiB of float64 per observer):
  exact for ``p = 99.99`` up to 10^10 values.
- ``mse``: the candidate grid ``α ∈ {N/N, …, 1/N}`` on ``α·[lo0, hi0]`` (or explicit
  ratios) and the tie rule (smallest MSE, ties → largest ``α``) are the reference's.
  ``lo0, hi0`` are global, so the observer keeps every observed batch (sorted) and,
  after the single pass, screens every candidate cheaply (sorted values and prefix
  sums), then computes the exact squared error of the short-listed candidates
  (:class:`MSEObserver`). The exact MSE is summed in a different order than NumPy's
  pairwise ``np.mean`` (over the sorted values), so two candidates
  whose MSEs differ by a few ulps (not exact ties) may be ordered differently; exact
  ties (identical error vectors) resolve identically.
- ``entropy``: two passes (``max|x|`` first, then the histogram of ``|x|`` with NumPy's
  own bin-index computation, integer counts — identical to ``np.histogram``); the KL
  of every threshold is then computed at once in torch (:func:`kl_divergences`, on
  the histogram's device), equal to the reference's per-threshold loop to ``1e-12``
  relative (float64 sums in another order); the threshold is the first minimum, so
  it is the reference's unless two KLs lie within that tolerance. ``zero_bin`` (``'replace'``, the default: ``h[0] ← h[1]``
  as NVIDIA pytorch-quantization does; or ``'keep'``, TensorRT's original) is applied
  to that histogram exactly as the reference does.

Every observer is an ``nn.Module`` whose ``forward`` observes and returns its input
unchanged (insert it anywhere during calibration). Inputs must be non-empty, finite,
floating-point tensors (``ValueError``/``TypeError`` naming the argument otherwise,
before any state changes); any shape (flattened).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from repspec.core.vocabulary import (CALIBRATOR_OPTIONS, CALIBRATORS, DEFAULT_MOMENTUM, DEFAULT_MSE_CANDIDATES,
                                    DEFAULT_NUM_BINS, DEFAULT_PERCENTILE, DEFAULT_ZERO_BIN, ZERO_BIN_MODES)

from .._validation import check_int, check_real
from .quant import _check_tensor, activation_qmax, activation_qparams, check_bits

__all__ = [
    # observers and entry points
    "RangeObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PercentileObserver",
    "MSEObserver",
    "EntropyObserver",
    "kl_divergences",
    "make_observer",
    "calibrate",
    # names and defaults (SPEC §5; the reference's values)
    "METHODS",
    "DEFAULT_MOMENTUM",
    "DEFAULT_PERCENTILE",
    "DEFAULT_PERCENTILE_CAPACITY",
    "DEFAULT_MSE_CANDIDATES",
    "DEFAULT_NUM_BINS",
    "DEFAULT_ZERO_BIN",
    "ZERO_BIN_MODES",
]

#: the calibrator names (SPEC §5.calibrators)
METHODS = CALIBRATORS
DEFAULT_PERCENTILE_CAPACITY = 2**20


# ----------------------------------------------------------------------------- base


class RangeObserver(nn.Module):
    """SPEC §5 calibrator base: ``forward(x)`` observes ``x`` and returns it unchanged.

    Protocol: observe every batch; observers with ``passes == 2`` need the same
    batches again after :meth:`next_pass`; then :meth:`compute_range` gives
    ``(lo, hi)`` as Python floats. :meth:`reset` starts over.
    """

    passes: int = 1

    def __init__(self):
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.pass_index = 0
        self.count = 0  # values observed in the current pass
        self.batches = 0
        self._reset_state()

    def _reset_state(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def next_pass(self) -> None:
        """Finish the current pass (two-pass observers: the next one sees the same batches again)."""
        if self.batches == 0:
            raise RuntimeError(f"{type(self).__name__}: no batch observed in pass {self.pass_index}")
        if self.pass_index + 1 >= self.passes:
            raise RuntimeError(f"{type(self).__name__} makes {self.passes} pass(es); no further pass")
        self._end_pass(self.pass_index)
        self.pass_index += 1
        self._first_pass_count, self.count, self.batches = self.count, 0, 0

    def _end_pass(self, index: int) -> None:
        pass

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        x = _check_tensor(x, "x")
        self._observe(x.detach().reshape(-1))
        self.count += x.numel()
        self.batches += 1

    def forward(self, x: Tensor) -> Tensor:
        self.observe(x)
        return x

    def _require(self) -> None:
        if self.pass_index != self.passes - 1 or self.batches == 0:
            raise RuntimeError(f"{type(self).__name__} needs {self.passes} complete pass(es) over the batches "
                               f"before compute_range (in pass {self.pass_index}, {self.batches} batch(es) seen)")
        if self.passes >= 2 and self.count != self._first_pass_count:
            raise RuntimeError(f"{type(self).__name__}: the second pass saw {self.count} values, the first "
                               f"{self._first_pass_count}; both passes must see the same batches")

    def compute_range(self) -> tuple[float, float]:  # pragma: no cover - overridden
        raise NotImplementedError


class _MinMaxTracker(RangeObserver):
    def _reset_state(self) -> None:
        self.min_val: Tensor | None = None
        self.max_val: Tensor | None = None

    def _track(self, x: Tensor) -> tuple[Tensor, Tensor]:
        bmin, bmax = torch.aminmax(x)
        bmin, bmax = bmin.to(torch.float64), bmax.to(torch.float64)
        if self.min_val is None:
            self.min_val, self.max_val = bmin, bmax
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, bmin), torch.maximum(self.max_val, bmax)
        return bmin, bmax


class MinMaxObserver(_MinMaxTracker):
    """SPEC §5 ``minmax``: ``(min x, max x)`` over all batches (= ``calibrate.minmax``)."""

    def _observe(self, x: Tensor) -> None:
        self._track(x)

    def compute_range(self) -> tuple[float, float]:
        self._require()
        return float(self.min_val), float(self.max_val)


class MovingAverageMinMaxObserver(RangeObserver):
    """SPEC §5 ``moving_average_minmax``: first batch initializes, then
    ``lo ← (1 − m)·lo + m·min x_t`` (same for ``hi``) — ``calibrate.moving_average_minmax``."""

    def __init__(self, momentum: float = DEFAULT_MOMENTUM):
        momentum = check_real(momentum, "momentum")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        super().__init__()

    def _reset_state(self) -> None:
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def _observe(self, x: Tensor) -> None:
        bmin, bmax = torch.aminmax(x)
        bmin, bmax = bmin.to(torch.float64), bmax.to(torch.float64)
        if self.lo is None:
            self.lo, self.hi = bmin, bmax
        else:
            m = self.momentum
            self.lo = (1.0 - m) * self.lo + m * bmin
            self.hi = (1.0 - m) * self.hi + m * bmax

    def compute_range(self) -> tuple[float, float]:
        self._require()
        return float(self.lo), float(self.hi)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


def _numpy_linear_percentile(get, n: int, p: float) -> float:
    """NumPy's ``np.percentile(v, p, method='linear')`` on sorted values ``get(i) = v_i`` (same float ops)."""
    q = p / 100.0
    vi = (n - 1) * q
    if vi >= n - 1:
        return get(n - 1)
    prev = math.floor(vi)
    a, b = get(prev), get(prev + 1)
    gamma = vi - prev
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


class PercentileObserver(RangeObserver):
    """SPEC §5 ``percentile``: ``(P_{100−p}, P_p)`` with NumPy's linear interpolation (= ``calibrate.percentile``).

    Keeps the ``capacity`` smallest and largest values (float64, on the data's device);
    exact while the needed order statistics are among them (see the module docstring),
    ``ValueError`` otherwise.
    """

    def __init__(self, percentile: float = DEFAULT_PERCENTILE, capacity: int = DEFAULT_PERCENTILE_CAPACITY):
        p = check_real(percentile, "percentile")
        if not 50.0 <= p <= 100.0:
            raise ValueError(f"percentile must be in [50, 100], got {p}")
        self.percentile = p
        self.capacity = check_int(capacity, "capacity", 2)
        super().__init__()

    def _reset_state(self) -> None:
        self.low: Tensor | None = None  # the smallest values seen (unsorted)
        self.high: Tensor | None = None  # the largest values seen (unsorted)

    def _observe(self, x: Tensor) -> None:
        x = x.to(torch.float64)
        low = x if self.low is None else torch.cat([self.low, x])
        high = x if self.high is None else torch.cat([self.high, x])
        if low.numel() > self.capacity:
            low = torch.topk(low, self.capacity, largest=False, sorted=False).values
            high = torch.topk(high, self.capacity, largest=True, sorted=False).values
        self.low, self.high = low.clone() if low is x else low, high.clone() if high is x else high

    def compute_range(self) -> tuple[float, float]:
        self._require()
        n, p = self.count, self.percentile
        low = torch.sort(self.low).values.cpu()
        high = torch.sort(self.high, descending=True).values.cpu()
        kept = low.numel()  # == high.numel(): both are min(n, capacity)
        need_lo = math.floor((n - 1) * ((100.0 - p) / 100.0)) + 2
        need_hi = n - math.floor((n - 1) * (p / 100.0))
        if kept < n and max(need_lo, need_hi) > kept:
            raise ValueError(f"PercentileObserver(capacity={self.capacity}) kept too few tail values for "
                             f"p={p} over {n} values (needs {max(need_lo, need_hi)}); increase capacity")

        def lo_get(i):
            return float(low[i])

        def hi_get(i):
            return float(high[n - 1 - i])

        return _numpy_linear_percentile(lo_get, n, 100.0 - p), _numpy_linear_percentile(hi_get, n, p)

    def extra_repr(self) -> str:
        return f"percentile={self.percentile}, capacity={self.capacity}"


def _mse_ratios(candidates) -> list[float]:
    """Clipping ratios, descending, always containing 1 (reference ``calibrate._mse_ratios``)."""
    if isinstance(candidates, numbers.Integral) and not isinstance(candidates, bool):
        n = check_int(candidates, "candidates", 1)
        return [k / n for k in range(n, 0, -1)]
    if isinstance(candidates, Tensor):
        candidates = candidates.detach().cpu().numpy()
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, (Sequence, np.ndarray)):
        raise TypeError(f"candidates must be an int or a sequence of ratios, got {type(candidates).__name__}")
    try:
        ratios = np.asarray(candidates, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("candidates must be an int or a sequence of real ratios") from None
    if ratios.ndim != 1 or ratios.size == 0:
        raise ValueError(f"candidates must be a non-empty 1-D sequence, got shape {ratios.shape}")
    if not np.all(np.isfinite(ratios)) or np.any(ratios <= 0) or np.any(ratios > 1):
        raise ValueError("candidates must be clipping ratios in (0, 1]")
    return [float(a) for a in np.unique(np.append(ratios, 1.0))[::-1]]


#: candidates whose screened SSE is within this relative margin of the smallest one are evaluated exactly
MSE_SCREEN_RTOL = 1e-4
#: ... plus this margin relative to Σx² (the scale of the screen's rounding error)
MSE_SCREEN_ATOL = 1e-9


def _sorted_1d(x: Tensor) -> Tensor:
    if x.device.type == "cpu":  # NumPy's vectorized sort: several times faster than torch.sort on the CPU
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # half / bfloat16: exact in float32
        return torch.from_numpy(np.sort(x.contiguous().numpy()))
    return torch.sort(x).values


class MSEObserver(_MinMaxTracker):
    """SPEC §5 ``mse``: the clipping ratio ``α`` of ``α·[lo0, hi0]`` minimizing the fake-quant MSE.

    **One pass** over the data (like ``minmax``): each batch is sorted once (in its own
    dtype) and **kept** — the candidate grids depend on the global ``lo0 = min(min x, 0)``,
    ``hi0 = max(max x, 0)``, known only after the last batch, so the observer caches the
    calibration values instead of asking for the batches again (memory: one copy of every
    observed value in its dtype, e.g. ~0.3 GB of float32 for ``repvgg_b1`` with 2 batches
    of 8 at 224x224). :meth:`compute_range` (and :meth:`mse`) then work on that cache:

    1. **screen** every candidate cheaply: a candidate's levels are contiguous runs of the
       sorted values (run ends by binary search at the rounding boundaries
       ``(q + ½ − zp)·s``), and a run's squared error follows from prefix sums of
       ``y = x − mean`` and ``y²`` — ``O(2^b · log n)`` per candidate instead of ``O(n)``;
    2. evaluate **exactly** (per value, float64, the reference's arithmetic) only the
       candidates whose screened SSE is within ``MSE_SCREEN_RTOL`` (relative) +
       ``MSE_SCREEN_ATOL·Σx²`` of the smallest; the winner is the smallest exact MSE among
       them, ties → the largest ``α`` (= ``calibrate.mse_optimal``).

    The screen's rounding error is orders of magnitude below that margin (prefix sums of
    centred values), so the true minimum is always short-listed unless the data cancel
    catastrophically (``|mean| ≫`` spread by ~10^4 and more). Observing another batch
    after :meth:`compute_range` is allowed: the next call recomputes over all batches.
    """

    passes = 1

    def __init__(self, bits: int, candidates=DEFAULT_MSE_CANDIDATES, *, chunk: int = 2**22):
        self.bits = check_bits(bits)
        self.ratios = _mse_ratios(candidates)
        self.chunk = check_int(chunk, "chunk", 1)
        super().__init__()

    def _reset_state(self) -> None:
        super()._reset_state()
        self._cache: list[Tensor] = []  # every observed batch, sorted, in its dtype
        self.sse: Tensor | None = None
        self.screen: Tensor | None = None
        self._sum_sq = 0.0
        self._qparams = None
        self.shortlist: list[int] | None = None

    def _observe(self, x: Tensor) -> None:
        self._track(x)
        self._cache.append(_sorted_1d(x))  # a sorted copy: later in-place edits of x do not reach it
        self.shortlist = None  # a result computed before this batch is stale

    def _finish(self) -> None:
        """Screen, short-list and evaluate exactly over the cached batches (once per set of batches)."""
        self._require()
        if self.shortlist is not None:
            return
        lo0 = min(float(self.min_val), 0.0)
        hi0 = max(float(self.max_val), 0.0)
        self.lo0, self.hi0 = lo0, hi0
        params = [activation_qparams(a * lo0, a * hi0, self.bits) for a in self.ratios]
        self._qparams = (torch.stack([s for s, _ in params]), torch.stack([z for _, z in params]).to(torch.float64))
        self.screen, self._sum_sq = None, 0.0
        for v in self._cache:
            self._screen(v)
        screen = self.screen.cpu().tolist()
        best = min(screen)
        limit = best + MSE_SCREEN_RTOL * abs(best) + MSE_SCREEN_ATOL * self._sum_sq
        shortlist = [i for i, v in enumerate(screen) if v <= limit]
        self.sse = None
        for v in self._cache:
            self._exact(v, shortlist)
        self.shortlist = shortlist

    def _screen(self, v: Tensor) -> None:
        """Add every candidate's screened SSE over the sorted batch ``v``."""
        scale, zp = (t.to(v.device) for t in self._qparams)
        qmax = activation_qmax(self.bits)
        n = v.numel()
        y = v.to(torch.float64, copy=True)  # exact in float64; a copy: v stays cached unchanged
        q = torch.arange(qmax + 1, dtype=torch.float64, device=v.device)
        bounds = (q[None, :-1] + 0.5 - zp[:, None]) * scale[:, None]  # (R, qmax): level q | q + 1
        ends = torch.searchsorted(y, bounds.contiguous())
        mean = y.mean()
        y.sub_(mean)
        p1 = y.new_empty(n + 1)
        p2 = y.new_empty(n + 1)
        p1[0] = p2[0] = 0.0
        torch.cumsum(y, 0, out=p1[1:])
        torch.cumsum(y.mul_(y), 0, out=p2[1:])
        del y
        nn_ = v.new_full((scale.numel(), 1), n, dtype=torch.int64)
        ends = torch.cat([ends, nn_], dim=1)
        starts = torch.cat([torch.zeros_like(nn_), ends[:, :-1]], dim=1)
        d = (q[None, :] - zp[:, None]) * scale[:, None] - mean  # level value, centred
        s1, s2 = p1[ends] - p1[starts], p2[ends] - p2[starts]
        cnt = (ends - starts).to(torch.float64)
        sse = (s2 - 2 * d * s1 + cnt * d * d).clamp_min(0).sum(dim=1)
        total = float(p2[-1] + mean * (2 * p1[-1] + n * mean))  # Σx² = Σy² + 2·mean·Σy + n·mean²
        sse = torch.where(scale > 0, sse, torch.full_like(sse, total))  # zero scale: x̂ = 0
        self.screen = sse if self.screen is None else self.screen + sse
        self._sum_sq += total

    def _exact(self, v: Tensor, shortlist: list[int]) -> None:
        """Add the exact SSE of the short-listed candidates over the batch ``v`` (per value, float64)."""
        idx = torch.tensor(shortlist, device=v.device)
        scale, zp = (t.to(v.device).index_select(0, idx) for t in self._qparams)
        if self.sse is None:
            self.sse = torch.zeros(idx.numel(), dtype=torch.float64, device=v.device)
        qmax = float(activation_qmax(self.bits))
        # a zero scale (all-zero range) divides by 1 instead: (q − zp)·0 = 0 either way, error −x
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
        zp, scale = zp[:, None], scale[:, None]
        # blocks of ~2^16 elements (candidates × values) stay in cache; every step is in place
        step = max(1, min(self.chunk, 1 << 16) // idx.numel())
        for start in range(0, v.numel(), step):
            xs = v[start:start + step].to(torch.float64)
            err = torch.div(xs, safe).round_().add_(zp).clamp_(0.0, qmax).sub_(zp).mul_(scale).sub_(xs)
            self.sse += torch.einsum("rn,rn->r", err, err)

    def mse(self) -> dict[float, float]:
        """``{α: exact MSE}`` of the short-listed candidates (the others screened out as worse)."""
        self._finish()
        return {self.ratios[i]: float(v) / self.count for i, v in zip(self.shortlist, self.sse.cpu().tolist())}

    def compute_range(self) -> tuple[float, float]:
        best, best_mse = 1.0, math.inf
        for a, m in self.mse().items():  # descending α: strict '<' keeps the largest ratio on ties
            if m < best_mse:
                best, best_mse = a, m
        return best * self.lo0, best * self.hi0

    def extra_repr(self) -> str:
        return f"bits={self.bits}, candidates={len(self.ratios)}"


def kl_divergences(hist: Tensor, nq: int, *, rows_per_block: int = 256) -> Tensor:
    """SPEC §5 ``entropy``: ``KL(P_i ‖ Q_i)`` for every threshold bin ``i = nq … len(hist)`` at once (float64).

    For threshold ``i`` (TensorRT's calibration): ``P_i`` is the histogram's first ``i``
    bins with the tail ``Σ_{b ≥ i} h_b`` added to bin ``i − 1``; ``Q_i`` quantizes those
    ``i`` bins to ``nq`` levels — level ``c`` covers bins ``[c·w, (c+1)·w)`` (``w = ⌊i/nq⌋``,
    the last level runs to ``i``) and spreads its count evenly over its *non-empty*
    bins. Both are normalized; ``KL = Σ_{P>0} P·log(P/Q)``, ``+inf`` where ``Q = 0 < P``.
    Level sums and non-empty counts come from integer prefix sums (exact), so one
    ``(rows × bins)`` block of thresholds is a handful of batched kernels on the
    histogram's device. Returns ``(len(hist) − nq + 1,)``.
    """
    nb = hist.numel()
    dev = hist.device
    h = hist.to(torch.int64)
    zero = h.new_zeros(1)
    cum = torch.cat([zero, torch.cumsum(h, 0)])  # Σ_{b < e} h_b
    nonzero = torch.cat([zero, torch.cumsum((h > 0).to(torch.int64), 0)])
    total = cum[-1].to(torch.float64)
    hf_all = h.to(torch.float64)[None, :]
    b_all = torch.arange(nb, device=dev)[None, :]
    out = []
    for first in range(nq, nb + 1, rows_per_block):
        last = min(first + rows_per_block, nb + 1)
        i = torch.arange(first, last, device=dev)[:, None]
        hf, b = hf_all[:, :last - 1], b_all[:, :last - 1]  # bins ≥ the block's largest threshold are outside
        width = torch.div(i, nq, rounding_mode="floor")
        level = torch.minimum(torch.div(b, width, rounding_mode="floor"), torch.full_like(b, nq - 1))
        lo_edge = level * width
        hi_edge = torch.where(level == nq - 1, i, lo_edge + width)
        inside = b < i
        hi_edge = torch.where(inside, hi_edge, lo_edge)  # beyond the threshold: an empty level
        spread = ((cum[hi_edge] - cum[lo_edge]).to(torch.float64)
                  / (nonzero[hi_edge] - nonzero[lo_edge]).clamp_min(1).to(torch.float64))
        q = torch.where(inside & (hf > 0), spread, 0.0)
        p = torch.where(inside, hf, 0.0) + torch.where(b == i - 1, total - cum[i].to(torch.float64), 0.0)
        pos = p > 0
        pn, qn = p / total, q / q.sum(dim=1, keepdim=True)
        terms = torch.where(pos, pn * torch.log(torch.where(pos, pn, 1.0) / torch.where(pos, qn, 1.0)), 0.0)
        kl = terms.sum(dim=1)
        out.append(torch.where((pos & (q == 0)).any(dim=1), math.inf, kl))
    return torch.cat(out)


class EntropyObserver(_MinMaxTracker):
    """SPEC §5 ``entropy``: TensorRT-style KL threshold on the histogram of ``|x|`` (= ``calibrate.entropy_kl``).

    Two passes: pass 0 finds ``min x, max x`` (so ``A = max|x|``); pass 1 counts ``|x|``
    into ``num_bins`` equal bins on ``[0, A]`` with ``np.histogram``'s index rule
    (integer counts: identical). ``nq = 2^b`` levels when ``x >= 0``, else ``2^(b−1)``;
    ``num_bins >= nq`` is required.

    ``zero_bin='replace'`` (default) sets ``h[0] ← h[1]`` before the KL search (NVIDIA
    pytorch-quantization's ``_compute_amax_entropy``: the spike of exact zeros of
    post-ReLU activations otherwise drives the threshold far too low);
    ``zero_bin='keep'`` searches the histogram as counted (TensorRT's original).
    Same rule as the reference (no replacement when ``num_bins == 1``).
    """

    passes = 2

    def __init__(self, bits: int, num_bins: int = DEFAULT_NUM_BINS, zero_bin: str = DEFAULT_ZERO_BIN):
        self.bits = check_bits(bits)
        self.num_bins = check_int(num_bins, "num_bins", 1)
        if not isinstance(zero_bin, str) or zero_bin not in ZERO_BIN_MODES:
            raise ValueError(f"zero_bin must be one of {ZERO_BIN_MODES}, got {zero_bin!r}")
        self.zero_bin = zero_bin
        if self.num_bins < 2 ** (self.bits - 1):
            raise ValueError(f"num_bins must be >= the number of quantized levels per side "
                             f"({2 ** (self.bits - 1)} or more for bits={self.bits}), got {self.num_bins}")
        super().__init__()

    def _reset_state(self) -> None:
        super()._reset_state()
        self.hist: Tensor | None = None
        self._edges = None

    def _end_pass(self, index: int) -> None:
        xmin, xmax = float(self.min_val), float(self.max_val)
        self.nq = 2 ** (self.bits - 1) if xmin < 0 else 2**self.bits
        if self.num_bins < self.nq:
            raise ValueError(f"num_bins must be >= the number of quantized levels per side ({self.nq} for "
                             f"bits={self.bits}), got {self.num_bins}")
        self.amax = max(-xmin, xmax)
        # np.histogram(a, bins=num_bins, range=(0.0, A)) bin edges
        self._edges = torch.from_numpy(np.linspace(0.0, self.amax, self.num_bins + 1))

    def _observe(self, x: Tensor) -> None:
        if self.pass_index == 0:
            self._track(x)
            return
        nb = self.num_bins
        if self.hist is None:
            self.hist = torch.zeros(nb, dtype=torch.int64, device=x.device)
        if self.amax == 0.0:
            return
        a = x.to(torch.float64).abs()
        edges = self._edges.to(a.device)
        if bool((a > self.amax).any()):
            raise ValueError("x holds values beyond the first pass's max|x|: both passes must see the same batches")
        # NumPy's uniform-bin index computation, then its ±1 corrections at the edges
        idx = ((a - 0.0) / self.amax * nb).to(torch.int64)
        idx[idx == nb] -= 1
        idx = idx - (a < edges[idx]).to(torch.int64)
        idx = idx + ((a >= edges[idx + 1]) & (idx != nb - 1)).to(torch.int64)
        self.hist += torch.bincount(idx, minlength=nb)

    def compute_range(self) -> tuple[float, float]:
        self._require()
        xmin, xmax = float(self.min_val), float(self.max_val)
        if self.amax == 0.0:
            return xmin, xmax
        hist = self.hist.clone()
        if self.zero_bin == "replace" and self.num_bins > 1:
            hist[0] = hist[1]
        kl = kl_divergences(hist, self.nq)
        best = torch.argmin(kl)  # the first minimum: ties → the smallest i
        best_i = self.num_bins if bool(torch.isinf(kl[best])) else self.nq + int(best)
        t = float(self._edges[best_i])
        return max(-t, xmin), min(t, xmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, num_bins={self.num_bins}, zero_bin={self.zero_bin!r}"


# ---------------------------------------------------------------------- entry points

#: the specified options of each calibrator plus this implementation's memory knobs
_OPTIONS = {m: CALIBRATOR_OPTIONS[m] + {"percentile": ("capacity",), "mse": ("chunk",)}.get(m, ()) for m in CALIBRATORS}


def make_observer(method: str, bits: int, **options) -> RangeObserver:
    """SPEC §5: the observer for a calibrator name of :data:`METHODS` (reference names and options)."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    allowed = _OPTIONS.get(method)
    if allowed is None:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    extra = sorted(name for name in options if name not in allowed)
    if extra:
        raise TypeError(f"calibrator {method!r} got unexpected option(s) {extra}; allowed: {list(allowed)}")
    bits = check_bits(bits)
    if method == "minmax":
        return MinMaxObserver()
    if method == "moving_average_minmax":
        return MovingAverageMinMaxObserver(**options)
    if method == "percentile":
        return PercentileObserver(**options)
    if method == "mse":
        return MSEObserver(bits, **options)
    return EntropyObserver(bits, **options)


def calibrate(method: str, batches, bits: int, **options) -> tuple[float, float]:
    """SPEC §5: ``(lo, hi)`` of the named calibrator over ``batches`` — same contract as
    :func:`repspec.reference.calibrate.calibrate` (a tensor is one batch, else a sequence of tensors)."""
    observer = make_observer(method, bits, **options)
    if isinstance(batches, Tensor):
        batches = [batches]
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence):
        raise TypeError(f"batches must be a tensor or a sequence of tensors, got {type(batches).__name__}")
    if len(batches) == 0:
        raise ValueError("batches must hold at least one batch")
    for i, b in enumerate(batches):
        _check_tensor(b, f"batches[{i}]")
    for p in range(observer.passes):
        if p:
            observer.next_pass()
        for b in batches:
            observer.observe(b)
    return observer.compute_range()
