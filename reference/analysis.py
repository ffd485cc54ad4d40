"""SPEC §2 and §5: where the outliers of a merged kernel live, and the state size.

A merged RepVGG kernel ``K = t3·K3 + t1·pad(K1) + t0·I_c`` (SPEC §2) has three kinds of
positions (the seed's categories):

- **A** — center & "diagonal" ``i == o mod (I/g)``: ``t3·K3 + t1·K1 + t0`` (``O`` entries)
- **B** — center & off-diagonal: ``t3·K3 + t1·K1`` (``O·(I/g − 1)`` entries)
- **C** — the 8 border taps: ``t3·K3`` (``8·O·I/g`` entries)

so ``|A| ≤ |B| ≤ |C|`` in count when ``I/g ≥ 2``. ``t0`` can be huge (a dead channel has
``σ0² ≈ 0``), which puts the outliers in A.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from ._checks import as_float_array, check_int
from .oabn import oabn_factor

__all__ = [
    "CategoryMasks",
    "CategoryStats",
    "CategoryStatistics",
    "merged_weight_categories",
    "excess_kurtosis",
    "category_statistics",
    "identity_ratio",
    "state_size",
]


class CategoryMasks(NamedTuple):
    """Boolean masks of the kernel's shape; they partition it."""

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray


class CategoryStats(NamedTuple):
    """Statistics of one category's values ``w`` (``nan`` where undefined, e.g. ``count == 0``)."""

    count: int
    max_abs: float  # max |w|
    mean_abs: float  # mean |w|
    std: float  # population standard deviation of w (ddof = 0)
    excess_kurtosis: float  # see excess_kurtosis()


class CategoryStatistics(NamedTuple):
    A: CategoryStats
    B: CategoryStats
    C: CategoryStats
    ratio_A_C: float  # max|A| / max|C|, see category_statistics()


def _check_kernel(kernel, groups):
    kernel = as_float_array(kernel, "kernel", shape=(None, None, 3, 3))
    groups = check_int(groups, "groups", min_value=1)
    if kernel.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the kernel's output channels ({kernel.shape[0]})")
    return kernel, groups


def merged_weight_categories(kernel, groups: int = 1) -> CategoryMasks:
    """Masks A (center & ``i == o mod (I/g)``), B (center, other ``i``), C (the 8 border taps).

    ``kernel`` is ``(O, I/g, 3, 3)``; the diagonal is the support of ``I_c`` (SPEC §0), so
    it depends only on ``I/g = kernel.shape[1]``; ``groups`` is checked to divide ``O``.

    >>> m = merged_weight_categories(np.zeros((2, 2, 3, 3)))
    >>> int(m.A.sum()), int(m.B.sum()), int(m.C.sum())
    (2, 2, 32)
    """
    kernel, groups = _check_kernel(kernel, groups)
    o, per_group = kernel.shape[:2]
    center = np.zeros(kernel.shape, dtype=bool)
    center[:, :, 1, 1] = True
    diag = np.zeros(kernel.shape, dtype=bool)
    ch = np.arange(o)
    diag[ch, ch % per_group, 1, 1] = True
    return CategoryMasks(A=diag, B=center & ~diag, C=~center)


def excess_kurtosis(values) -> float:
    """Fisher's excess kurtosis with population moments: ``m4 / m2² − 3``, ``m_k = mean((w − mean w)^k)``.

    0 for a normal distribution, −1.2 for a uniform one, larger for heavy tails.
    *[repspec]* ``nan`` when ``m2 == 0``: constant values (the ratio is undefined). Constancy
    is tested on the values themselves, not on the computed ``m2``: the float mean of
    ``n`` copies of ``v`` is not always ``v`` (``(0.1 + 0.1 + 0.1)/3 ≠ 0.1``), and every
    ``w − mean w`` would then be the same tiny number, whose ``m4/m2²`` is 1 (κ = −2).
    Same definition as ``scipy.stats.kurtosis(fisher=True, bias=True)``.

    >>> excess_kurtosis([-1.0, 1.0])
    -2.0
    >>> excess_kurtosis([0.1, 0.1, 0.1])
    nan
    """
    w = as_float_array(values, "values").reshape(-1)
    d = w - w.mean()
    m2 = np.mean(d * d)
    if w.min() == w.max() or m2 == 0:  # m2 == 0 also when the differences underflow
        return float("nan")
    return float(np.mean(d**4) / (m2 * m2) - 3.0)


def _stats(values: np.ndarray) -> CategoryStats:
    if values.size == 0:
        nan = float("nan")
        return CategoryStats(0, nan, nan, nan, nan)
    a = np.abs(values)
    return CategoryStats(int(values.size), float(a.max()), float(a.mean()), float(values.std()),
                         excess_kurtosis(values))


def category_statistics(kernel, groups: int = 1) -> CategoryStatistics:
    """Per category (A, B, C): count, max |w|, mean |w|, std, excess kurtosis; and ``max|A| / max|C|``.

    *[repspec]* an empty category (B when ``I/g = 1``) has ``count 0`` and ``nan``
    statistics; the ratio is ``inf`` when ``max|C| = 0 < max|A|`` and ``nan`` when both are 0.

    >>> k = np.zeros((1, 1, 3, 3)); k[0, 0, 1, 1] = 10.0; k[0, 0, 0, 0] = -2.0
    >>> category_statistics(k).ratio_A_C
    5.0
    """
    kernel, groups = _check_kernel(kernel, groups)
    masks = merged_weight_categories(kernel, groups)
    a, b, c = (_stats(kernel[m]) for m in masks)
    if c.max_abs > 0:
        ratio = a.max_abs / c.max_abs
    else:
        ratio = float("inf") if a.max_abs > 0 else float("nan")
    return CategoryStatistics(a, b, c, float(ratio))


def identity_ratio(params: Mapping[str, np.ndarray], buffers: Mapping[str, np.ndarray], eps: float = 1e-5,
                   threshold: float = float("inf")) -> np.ndarray:
    """``t0 = γ0 / sqrt(σ0² + eps)`` per channel of a RepVGG block's identity BN (clipped to ``±threshold``: OABN).

    Reads ``params['rbr_identity.weight']`` and ``buffers['rbr_identity.running_var']``;
    a block without identity branch has neither and raises ``ValueError``.
    """
    for tree, tname, key in ((params, "params", "rbr_identity.weight"),
                             (buffers, "buffers", "rbr_identity.running_var")):
        if not isinstance(tree, Mapping):
            raise TypeError(f"{tname} must be a mapping of name -> array, got {type(tree).__name__}")
        if key not in tree:
            raise ValueError(f"{tname} has no {key!r}: the block has no identity branch")
    gamma = as_float_array(params["rbr_identity.weight"], "params['rbr_identity.weight']", ndim=1)
    var = as_float_array(buffers["rbr_identity.running_var"], "buffers['rbr_identity.running_var']",
                         shape=gamma.shape)
    if np.any(var < 0):
        raise ValueError("buffers['rbr_identity.running_var'] must be >= 0 (a variance)")
    return oabn_factor(gamma, var, eps, threshold)


def state_size(kernels: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> int:
    """SPEC §5: the number of distinct weight values, summed over the given arrays (one per layer).

    Values are compared with ``==`` (so ``-0.0`` and ``0.0`` count once); NaN/Inf are refused.
    A mapping counts its values.

    >>> state_size([np.array([0.5, 0.5, -1.0]), np.zeros((2, 2))])
    3
    """
    if isinstance(kernels, Mapping):
        items = [(f"kernels[{k!r}]", v) for k, v in kernels.items()]
    elif isinstance(kernels, (list, tuple)):
        items = [(f"kernels[{i}]", v) for i, v in enumerate(kernels)]
    else:
        raise TypeError(f"kernels must be a list/tuple or mapping of arrays, got {type(kernels).__name__}")
    if not items:
        raise ValueError("kernels must contain at least one array")
    arrays = [as_float_array(v, name) for name, v in items]
    return int(sum(np.unique(a).size for a in arrays))
