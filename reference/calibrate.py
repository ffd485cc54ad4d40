"""SPEC §5: post-training calibrators — each chooses the activation range ``(lo, hi)``.

They differ **only** in how ``lo, hi`` are chosen; the quantizer is always
:func:`repspec.reference.quant.activation_qparams` (which extends the range to
include 0) followed by :func:`repspec.reference.quant.fake_quantize_activation`.

=========================  =====================================================
method                     ``(lo, hi)``
=========================  =====================================================
``minmax``                 ``(min x, max x)`` over all batches
``moving_average_minmax``  EMA of the per-batch min and max (SPEC §0 momentum rule)
``percentile``             ``(P_{100−p}(x), P_p(x))``, linear interpolation
``mse``                    the clipping ratio ``α`` of ``α·[lo0, hi0]`` minimizing MSE
``entropy``                TensorRT-style KL-divergence threshold on a histogram
                           (zero bin replaced by its neighbour, as NVIDIA's
                           pytorch-quantization does; ``zero_bin='keep'`` for
                           TensorRT's original)
=========================  =====================================================

Batches may have any shape; they are flattened. Every function validates its
inputs (finite, non-empty) before computing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from repspec.core.vocabulary import (CALIBRATOR_OPTIONS, CALIBRATORS, DEFAULT_MOMENTUM, DEFAULT_MSE_CANDIDATES,
                                    DEFAULT_NUM_BINS, DEFAULT_PERCENTILE, DEFAULT_ZERO_BIN, ZERO_BIN_MODES)

from ._checks import as_float_array, check_bits, check_choice, check_int, check_probability, check_real
from .quant import activation_qparams, fake_quantize_activation

__all__ = [
    "METHODS",
    "DEFAULT_MOMENTUM",
    "DEFAULT_PERCENTILE",
    "DEFAULT_MSE_CANDIDATES",
    "DEFAULT_NUM_BINS",
    "ZERO_BIN_MODES",
    "DEFAULT_ZERO_BIN",
    "minmax",
    "moving_average_minmax",
    "percentile",
    "clipping_mse",
    "MSEScores",
    "mse_scores",
    "mse_optimal",
    "EntropyScores",
    "entropy_scores",
    "entropy_kl",
    "calibrate",
]



def _flat(x, name: str = "x") -> np.ndarray:
    return as_float_array(x, name).ravel()


# -------------------------------------------------------------------------- min/max


def minmax(x) -> tuple[float, float]:
    """``(lo, hi) = (min x, max x)`` — every value is inside the range.

    >>> minmax(np.array([[0.5, -2.0], [3.0, 1.0]]))
    (-2.0, 3.0)
    """
    x = _flat(x)
    return float(x.min()), float(x.max())


def _check_batches(batches) -> list[np.ndarray]:
    """A single array is one batch; otherwise a non-empty sequence of arrays."""
    if isinstance(batches, np.ndarray):
        return [_flat(batches, "batches")]
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence):
        raise TypeError(f"batches must be an array or a sequence of arrays, got {type(batches).__name__}")
    if len(batches) == 0:
        raise ValueError("batches must hold at least one batch")
    return [_flat(b, f"batches[{i}]") for i, b in enumerate(batches)]


def moving_average_minmax(batches, momentum: float = DEFAULT_MOMENTUM) -> tuple[float, float]:
    """Exponential moving average of the per-batch min and max.

    The first batch initializes ``lo_1 = min(x_1)``, ``hi_1 = max(x_1)``; each later
    batch ``t`` updates with the SPEC §0 running-stat convention (``m`` = weight of
    the new batch)::

        lo_t = (1 − m)·lo_{t−1} + m·min(x_t)
        hi_t = (1 − m)·hi_{t−1} + m·max(x_t)

    ``momentum`` is in ``[0, 1]``; ``m = 1`` keeps exactly the last batch's range,
    ``m = 0`` exactly the first. PyTorch's ``MovingAverageMinMaxObserver``
    (``averaging_constant = m``) evaluates the algebraically equal
    ``lo + m·(min(x_t) − lo)``, which can differ in the last bit.
    ``batches``: a sequence of arrays (a single array is one batch).

    >>> moving_average_minmax([np.array([0.0, 4.0]), np.array([-2.0, 2.0])], momentum=0.5)
    (-1.0, 3.0)
    """
    batches = _check_batches(batches)
    momentum = check_probability(momentum, "momentum")
    lo, hi = float(batches[0].min()), float(batches[0].max())
    for b in batches[1:]:
        lo = (1.0 - momentum) * lo + momentum * float(b.min())
        hi = (1.0 - momentum) * hi + momentum * float(b.max())
    return lo, hi


def percentile(x, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
    """``(lo, hi) = (P_{100−p}(x), P_p(x))`` with ``p ∈ [50, 100]``.

    The percentile is NumPy's default definition (``np.percentile``,
    ``method='linear'``): with the values sorted ``v_0 ≤ … ≤ v_{n−1}``,
    ``P_p = v_⌊h⌋ + (h − ⌊h⌋)·(v_⌊h⌋+1 − v_⌊h⌋)``, ``h = (n − 1)·p/100``.
    ``percentile(x, 100) == minmax(x)`` exactly.

    >>> percentile(np.arange(11.0), 90)
    (1.0, 9.0)
    """
    x = _flat(x)
    p = check_real(percentile, "percentile")
    if not 50.0 <= p <= 100.0:
        raise ValueError(f"percentile must be in [50, 100], got {p}")
    lo, hi = np.percentile(x, [100.0 - p, p], method="linear")
    return float(lo), float(hi)


# --------------------------------------------------------------------- MSE-optimal


def clipping_mse(x, lo, hi, bits) -> float:
    """``mean((x̂ − x)²)`` where ``x̂`` is ``x`` fake-quantized with ``activation_qparams(lo, hi, bits)``.

    >>> clipping_mse(np.array([0.0, 1.0, 2.0]), 0.0, 2.0, 1)  # levels {0, 2}: 1.0 -> 0.0
    0.3333333333333333
    """
    x = _flat(x)
    scale, zp = activation_qparams(lo, hi, bits)
    return float(np.mean((fake_quantize_activation(x, scale, zp, bits) - x) ** 2))


def _mse_ratios(candidates) -> np.ndarray:
    """Clipping ratios, **descending**, always containing 1."""
    if isinstance(candidates, (int, np.integer)) and not isinstance(candidates, bool):
        n = check_int(candidates, "candidates", min_value=1)
        return np.arange(n, 0, -1) / n
    ratios = as_float_array(candidates, "candidates", ndim=1)
    if np.any(ratios <= 0) or np.any(ratios > 1):
        raise ValueError("candidates must be clipping ratios in (0, 1]")
    return np.unique(np.append(ratios, 1.0))[::-1]


class MSEScores(NamedTuple):
    """Every candidate of :func:`mse_optimal`, in the order it scans them."""

    ratios: np.ndarray  # (R,) clipping ratios α, descending, 1 first
    mse: np.ndarray  # (R,) clipping_mse(x, α·lo0, α·hi0, bits)
    lo0: float  # min(min x, 0)
    hi0: float  # max(max x, 0)


def mse_scores(x, bits, candidates=DEFAULT_MSE_CANDIDATES) -> MSEScores:
    """The MSE of every candidate range ``[α·lo0, α·hi0]`` of :func:`mse_optimal` (same ratios, same order).

    >>> s = mse_scores(np.array([0.0, 3.0, 4.0]), 1, candidates=4)  # levels {0, 4α}: α = 1 and 3/4 tie
    >>> s.ratios.tolist(), s.mse.tolist()
    ([1.0, 0.75, 0.5, 0.25], [0.3333333333333333, 0.3333333333333333, 1.6666666666666667, 4.333333333333333])
    """
    x = _flat(x)
    bits = check_bits(bits)
    ratios = _mse_ratios(candidates)
    lo0, hi0 = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    mse = np.array([clipping_mse(x, a * lo0, a * hi0, bits) for a in ratios])
    return MSEScores(ratios, mse, lo0, hi0)


def mse_optimal(x, bits, candidates=DEFAULT_MSE_CANDIDATES) -> tuple[float, float]:
    """MSE-optimal clipping *[repspec grid]*.

    ``lo0 = min(min x, 0)``, ``hi0 = max(max x, 0)``. Candidate ranges are
    ``[α·lo0, α·hi0]`` for the clipping ratios ``α``: ``candidates=N`` (int) means
    ``α ∈ {N/N, (N−1)/N, …, 1/N}``; a sequence gives the ratios in ``(0, 1]``
    explicitly (``1`` is always added). Each candidate is scored by
    :func:`clipping_mse`; the smallest MSE wins and **ties go to the largest
    ratio** (the widest range, i.e. the min/max range wins ties). Because ``α = 1``
    is a candidate and gives the same quantizer as :func:`minmax`, the result's MSE
    is ``≤`` the min/max MSE.

    >>> x = np.concatenate([np.linspace(-1, 1, 1001), [3.0]])
    >>> lo, hi = mse_optimal(x, 2, candidates=10)  # α = 0.4 of [-1, 3]
    >>> round(lo, 12), round(hi, 12)
    (-0.4, 1.2)
    """
    scores = mse_scores(x, bits, candidates)
    best, best_mse = 1.0, np.inf
    for a, mse in zip(scores.ratios, scores.mse):  # descending: a strict '<' keeps the largest ratio on ties
        if mse < best_mse:
            best, best_mse = float(a), mse
    return best * scores.lo0, best * scores.hi0


# -------------------------------------------------------------------------- entropy


def _kl_candidate(hist: np.ndarray, i: int, nq: int) -> float:
    """KL(P‖Q) for the threshold at bin ``i`` (TensorRT's reference algorithm).

    ``P``: bins ``[0, i)``, the outlier mass ``Σ hist[i:]`` added to bin ``i − 1``.
    ``Q``: bins ``[0, i)`` merged into ``nq`` chunks of ``⌊i/nq⌋`` bins (the last chunk
    takes the remainder); each chunk's mass is spread evenly over its **non-empty**
    bins (empty bins stay 0). Both normalized; ``KL = Σ_{P>0} P·log(P/Q)``, ``+inf``
    if some ``P > 0`` meets ``Q = 0``.
    """
    ref = hist[:i]
    p = ref.astype(np.float64)
    p[i - 1] += hist[i:].sum()
    width = i // nq
    starts = np.arange(nq) * width
    chunk = np.minimum(np.arange(i) // width, nq - 1)
    sums = np.add.reduceat(ref, starts).astype(np.float64)
    nonzero = ref > 0
    counts = np.add.reduceat(nonzero.astype(np.int64), starts)
    q = np.zeros(i)
    q[nonzero] = sums[chunk[nonzero]] / counts[chunk[nonzero]]
    pos = p > 0
    if np.any(pos & (q == 0)):
        return np.inf
    pn, qn = p[pos] / p.sum(), q[pos] / q.sum()
    return float(np.sum(pn * np.log(pn / qn)))


class EntropyScores(NamedTuple):
    """Every threshold candidate of :func:`entropy_kl` (empty arrays for all-zero ``x``)."""

    bins: np.ndarray  # (T,) the threshold bins i = nq … num_bins
    thresholds: np.ndarray  # (T,) T_i = edges[i]
    kl: np.ndarray  # (T,) KL(P_i ‖ Q_i), +inf where some P > 0 = Q
    hist: np.ndarray  # (num_bins,) the histogram of |x| the candidates are scored on (zero-bin rule applied)
    nq: int  # quantized levels per side


def entropy_scores(x, bits, num_bins: int = DEFAULT_NUM_BINS, zero_bin: str = DEFAULT_ZERO_BIN) -> EntropyScores:
    """Steps 1–4 of :func:`entropy_kl`: the histogram, the zero-bin rule and the KL of every threshold.

    >>> s = entropy_scores(np.array([0.0, 1.0, 3.0, 4.0]), 1, num_bins=4)  # nq = 2 levels, bins i = 2, 3, 4
    >>> s.bins.tolist(), s.thresholds.tolist(), s.hist.tolist()
    ([2, 3, 4], [2.0, 3.0, 4.0], [1, 1, 0, 2])
    """
    x = _flat(x)
    bits = check_bits(bits)
    num_bins = check_int(num_bins, "num_bins", min_value=1)
    zero_bin = check_choice(zero_bin, "zero_bin", ZERO_BIN_MODES)
    nq = 2 ** (bits - 1) if float(x.min()) < 0 else 2**bits
    if num_bins < nq:
        raise ValueError(f"num_bins must be >= the number of quantized levels per side ({nq} for bits={bits}), "
                         f"got {num_bins}")
    a = np.abs(x)
    amax = float(a.max())
    if amax == 0.0:
        empty = np.zeros(0)
        return EntropyScores(np.zeros(0, dtype=np.int64), empty, empty, np.zeros(num_bins, dtype=np.int64), nq)
    hist, edges = np.histogram(a, bins=num_bins, range=(0.0, amax))
    if zero_bin == "replace" and num_bins > 1:
        hist[0] = hist[1]
    bins = np.arange(nq, num_bins + 1)
    kl = np.array([_kl_candidate(hist, int(i), nq) for i in bins])
    return EntropyScores(bins, edges[bins], kl, hist, nq)


def entropy_kl(x, bits, num_bins: int = DEFAULT_NUM_BINS, zero_bin: str = DEFAULT_ZERO_BIN) -> tuple[float, float]:
    """Entropy (KL-divergence) calibration, TensorRT style *[repspec adaptation]*.

    1. ``A = max|x|``; histogram ``h`` of ``|x|`` with ``num_bins`` equal bins on ``[0, A]``.
    2. Zero bin *[repspec: a choice among published variants]* — ``zero_bin``:

       - ``'replace'`` (default): ``h[0] ← h[1]`` before any candidate is scored, in
         the histogram used for both ``P`` and ``Q`` (and for the outlier mass).
         This is NVIDIA pytorch-quantization's ``_compute_amax_entropy``
         (TensorRT ``tools/pytorch-quantization/.../calib/histogram.py``:
         ``bins = calib_hist[:]; bins[0] = bins[1]``). Why: post-ReLU activations put
         a spike of exact zeros (often half the values or more) into bin 0. ``Q``
         spreads each chunk's mass evenly over its non-empty bins, so the spike is
         smeared over the first ``⌊i/nq⌋`` bins; that KL penalty, weighted by the
         spike's mass, grows with ``i`` and drives the search to thresholds far too
         small, which ruins INT8 PTQ accuracy. Zeros are represented exactly by the
         quantizer at every threshold (``0`` is a level, §5.2), so the spike's
         height says nothing about the best range.
         With ``num_bins == 1`` there is no ``h[1]`` and nothing is replaced (the
         only candidate is ``T = A`` then).
       - ``'keep'``: the histogram as counted (TensorRT's original algorithm and
         repspec's behaviour before the option existed).

       The options agree whenever ``h[0] == h[1]``, e.g. when no ``|x|`` lies below
       ``2·A/num_bins``.
    3. Quantized levels per side: ``nq = 2^b`` when ``x ≥ 0`` (all levels on
       ``[0, T]``), else ``nq = 2^(b−1)`` (half the levels per sign, as TensorRT's
       128 for int8).
    4. For every ``i ∈ [nq, num_bins]``: the KL divergence between the clipped
       reference distribution ``P`` and its ``nq``-level quantization ``Q``
       (:func:`_kl_candidate` on ``h``). The smallest KL wins, **ties to the smallest i**.
    5. Threshold ``T = edges[i]`` (the right edge of the last kept bin;
       ``i = num_bins`` gives ``T = A``), and ``(lo, hi) = (max(−T, min x), min(T, max x))``
       — always inside ``[min x, max x]``.

    ``num_bins`` must be ``>= nq``; ``zero_bin`` must be one of :data:`ZERO_BIN_MODES`.
    All-zero ``x`` gives ``(0.0, 0.0)``.

    >>> x = np.concatenate([np.linspace(0.0, 1.0, 1001), [4.0]])
    >>> entropy_kl(x, 1, num_bins=64)  # the lone 4.0 is clipped
    (0.0, 1.0)
    >>> entropy_kl(x, 1, num_bins=64, zero_bin="keep")
    (0.0, 1.0)
    """
    x = _flat(x)
    scores = entropy_scores(x, bits, num_bins, zero_bin)
    xmin, xmax = float(x.min()), float(x.max())
    if scores.bins.size == 0:  # all zeros
        return xmin, xmax
    t, best_kl = float(scores.thresholds[-1]), np.inf  # i = num_bins: T = A
    for ti, kl in zip(scores.thresholds, scores.kl):  # ascending i: a strict '<' keeps the smallest i on ties
        if kl < best_kl:
            t, best_kl = float(ti), kl
    return max(-t, xmin), min(t, xmax)


# ---------------------------------------------------------------------- entry point

#: the calibrator names (SPEC §5.calibrators)
METHODS = CALIBRATORS
_OPTIONS = CALIBRATOR_OPTIONS


def calibrate(method: str, batches, bits, **options) -> tuple[float, float]:
    """Choose ``(lo, hi)`` for an activation with the named calibrator.

    ``batches``: an array (one batch) or a sequence of arrays. Every method except
    ``moving_average_minmax`` sees all batches concatenated. ``bits`` (1..16) is
    validated for every method and used by ``mse`` and ``entropy``. ``options`` are
    the method's own keyword arguments: ``momentum`` (moving average),
    ``percentile``, ``candidates`` (mse), ``num_bins`` and ``zero_bin`` (entropy).

    >>> calibrate("percentile", [np.arange(6.0), np.arange(6.0, 11.0)], 8, percentile=90)
    (1.0, 9.0)
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    if method not in _OPTIONS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    unknown = sorted(set(options) - set(_OPTIONS[method]))
    if unknown:
        raise TypeError(f"calibrate(method={method!r}) got unexpected option(s) {unknown}; "
                        f"allowed: {list(_OPTIONS[method])}")
    bits = check_bits(bits)
    parts = _check_batches(batches)
    if method == "moving_average_minmax":
        return moving_average_minmax(parts, **options)
    x = np.concatenate(parts)
    if method == "minmax":
        return minmax(x)
    if method == "percentile":
        return percentile(x, **options)
    if method == "mse":
        return mse_optimal(x, bits, **options)
    return entropy_kl(x, bits, **options)
