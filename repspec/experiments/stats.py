"""The demo's statistics: per-cell summaries over seeds and paired-by-seed tests of a claim.

Small, pure functions on plain sequences of floats (NumPy/SciPy do the arithmetic):

- :func:`summarize` — ``n``, mean, sample standard deviation (``ddof=1``), min, max.
- :func:`mean_ci` — Student-t confidence interval of a mean,
  ``mean ± t_{(1+c)/2, n-1} · sd / sqrt(n)`` (``scipy.stats.t``).
- :func:`sign_test` — exact binomial sign test of "the differences tend to lie on the
  claimed side" (``scipy.stats.binomtest``; zero differences are dropped, as usual).
- :func:`compare` — one claim row: the per-seed effects ``d_i`` (a paired difference
  ``x_i − y_i`` of two methods run with the same seed, or one method's value), their mean
  with its interval, the sign test, and a **computed** verdict (:func:`verdict`: the interval
  excludes the bound on one side *and* the sign test towards that side has p < 0.05).

Degenerate inputs give explicit results instead of NaN: ``n = 1`` has no interval
(``ci = None``, verdict ``"inconclusive"``, with the reason); equal differences give a
zero-width interval ``[d, d]``; all-zero differences a sign-test p of 1.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["summarize", "mean_ci", "sign_test", "verdict", "compare", "VERDICTS", "SIGN_ALPHA"]

#: the verdicts :func:`verdict` computes
VERDICTS = ("reproduced", "contradicted", "inconclusive")


def _values(values, name: str = "values") -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a sequence of numbers: {e}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def _confidence(confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def summarize(values: Sequence[float]) -> dict:
    """``{"n", "mean", "sd", "min", "max"}`` of finite ``values``; ``sd`` (``ddof=1``) is None for n = 1."""
    arr = _values(values)
    return {"n": int(arr.size), "mean": float(arr.mean()),
            "sd": float(arr.std(ddof=1)) if arr.size > 1 else None,
            "min": float(arr.min()), "max": float(arr.max())}


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Student-t interval ``(low, high)`` of the mean; None for n = 1 (no spread to estimate).

    Equal values give the zero-width interval ``(v, v)``.
    """
    arr = _values(values)
    c = _confidence(confidence)
    if arr.size < 2:
        return None
    m = float(arr.mean())
    se = float(arr.std(ddof=1)) / math.sqrt(arr.size)
    if se == 0.0:
        return m, m
    half = float(_st.t.ppf(0.5 + c / 2, df=arr.size - 1)) * se
    return m - half, m + half


def sign_test(effects: Sequence[float], bound: float = 0.0, direction: str = "greater") -> dict:
    """Exact sign test that the effects lie on the claimed side of ``bound``.

    Returns ``{"n_nonzero", "n_claimed_side", "p"}``: ``n_claimed_side`` of the
    ``n_nonzero`` effects that differ from ``bound`` lie on the ``direction`` side
    (``"greater"``: above ``bound``; ``"less"``: below), and ``p`` is the one-sided
    ``binomtest(n_claimed_side, n_nonzero, 0.5, alternative="greater")`` p-value (1.0
    when every effect equals ``bound``: there is no evidence either way).
    """
    arr = _values(effects, "effects")
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    d = arr - float(bound)
    if direction == "less":
        d = -d
    nonzero = int(np.count_nonzero(d))
    k = int(np.count_nonzero(d > 0))
    p = 1.0 if nonzero == 0 else float(_st.binomtest(k, nonzero, 0.5, alternative="greater").pvalue)
    return {"n_nonzero": nonzero, "n_claimed_side": k, "p": p}


#: one-sided level of the sign test that a verdict other than "inconclusive" also needs
SIGN_ALPHA = 0.05


def verdict(ci: tuple[float, float] | None, bound: float = 0.0, direction: str = "greater", *,
            sign_p: float | None = None, opposite_sign_p: float | None = None, alpha: float = SIGN_ALPHA) -> str:
    """``"reproduced"`` if the interval excludes ``bound`` on the claimed side, ``"contradicted"``
    if it excludes it on the other side, ``"inconclusive"`` otherwise (also for no interval).

    With ``sign_p`` (``opposite_sign_p``) given, "reproduced" ("contradicted") also needs the
    one-sided sign test towards that side to reach ``p < alpha``: the interval rests on the
    mean and the t distribution, the sign test only on how many seeds agree, and a conclusion
    needs both (with 5 seeds: all 5 on that side).
    """
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    if ci is None:
        return "inconclusive"
    low, high = ci
    claimed, other = (low > bound, high < bound) if direction == "greater" else (high < bound, low > bound)
    if claimed and (sign_p is None or sign_p < alpha):
        return "reproduced"
    if other and (opposite_sign_p is None or opposite_sign_p < alpha):
        return "contradicted"
    return "inconclusive"


def compare(x: Sequence[float], y: Sequence[float] | None = None, *, bound: float = 0.0,
            direction: str = "greater", confidence: float = 0.95) -> dict:
    """Test the claim "effect > bound" (``direction='greater'``) or "effect < bound" (``'less'``).

    The effect of seed ``i`` is ``x_i − y_i`` (paired by seed; ``x`` and ``y`` must have
    the same length) or ``x_i`` when ``y`` is None. Returns a JSON-able dict: ``n``,
    ``effects`` (per seed), ``mean``, ``sd`` (None for n = 1), ``ci`` (``[low, high]`` at
    ``confidence`` or None), ``confidence``, ``bound``, ``direction``, ``sign_test``
    (:func:`sign_test`), ``verdict`` (:func:`verdict` of the interval) and ``reason``
    (why the verdict is inconclusive for lack of data, else None).
    """
    xa = _values(x, "x")
    if y is not None:
        ya = _values(y, "y")
        if ya.shape != xa.shape:
            raise ValueError(f"x and y must be paired by seed (same length), got {xa.size} and {ya.size}")
        effects = xa - ya
    else:
        effects = xa
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not math.isfinite(bound):
        raise ValueError(f"bound must be a finite number, got {bound!r}")
    ci = mean_ci(effects, confidence)
    s = summarize(effects)
    sign = sign_test(effects, bound, direction)
    opposite = sign_test(effects, bound, "less" if direction == "greater" else "greater")
    return {"n": s["n"], "effects": effects.tolist(), "mean": s["mean"], "sd": s["sd"],
            "ci": None if ci is None else [ci[0], ci[1]], "confidence": _confidence(confidence),
            "bound": float(bound), "direction": direction, "sign_test": sign,
            "verdict": verdict(ci, bound, direction, sign_p=sign["p"], opposite_sign_p=opposite["p"]),
            "reason": "n = 1: no interval without a second seed" if ci is None else None}
