"""One tolerance table per dtype, and the comparison every equivalence test uses.

The reference is always ``expected``. A failure message names the iteration (when
there is one), the tensor, the max abs and rel error and the index where it occurs.

Why these numbers:
- float64 (``exact_math``): both sides do the same arithmetic in a different order
  (einsum vs cuDNN/MKL-DNN convolution, fused vs separate BN). Forward error grows
  ~ sqrt(#terms)·eps ≈ 1e-15 per op; a few training iterations of amplification
  through BN (1/σ) keeps it far below 1e-9 relative, which is the SPEC §6 contract.
- float64 theorems (``theorem``): the *reference against itself* through two
  algebraically equal paths (CSLA + SGD vs single conv + RepOpt-SGD). Same bound.
- float64 finite differences (``finite_difference``): central differences with
  h = 1e-6 have truncation error O(h²)·|f'''| and rounding error O(eps/h) ≈ 1e-10
  relative to |f|; 1e-6 relative/absolute leaves two orders of margin.
- float32 (``exact_math``): unit roundoff 6e-8; a few iterations of conv+BN with
  cancellation lose ~3 digits, so 1e-4 relative, 1e-5 absolute.
- The RepOptimizers' ``fused=True`` mode (tests/test_torch_fused.py), every iteration:
  ``fused_cpu_sgd`` / ``fused_cpu_adamw`` against the reference; ``fused_adamw_vs_unfused``
  and ``fused_cuda`` against the unfused step. The CPU SGD loop is the unfused step bit for
  bit (tested with ``torch.equal``), so it has the unfused bound. The CPU AdamW loop is the
  unfused step except a correctly rounded ``sqrt`` (torch's vectorized CPU ``sqrt`` is off by
  an ulp on some inputs; tested bit for bit against the unfused step with a correctly
  rounded ``sqrt``): one ulp in ``sqrt(v)`` per step moves the update by about one ulp
  relative, so parameters differ by a few ulps of ``|W|`` after the tests' ≤ 8 steps; the
  moments, from the same given gradients, are equal. On CUDA the fused mode is torch's fused
  kernel on ``M ⊙ g``, which rounds its own way (nvcc contracts products into FMAs): ≤ 1 ulp
  per operation per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float
    reason: str


TOLERANCES: dict[str, dict[str, Tol]] = {
    "float64": {
        "exact_math": Tol(1e-9, 1e-11, "same math, different summation order; SPEC §6 'order 1e-9 relative'"),
        "theorem": Tol(1e-9, 1e-11, "two algebraically equal paths in float64"),
        "finite_difference": Tol(1e-6, 1e-7, "central differences, h=1e-6: O(h^2) truncation + O(eps/h) rounding"),
        "fused_cpu_sgd": Tol(1e-9, 1e-11, "fused CPU RepOpt-SGD vs the reference: the unfused step bit for bit "
                                          "(tested), so its bound: same math, FMA vs two roundings"),
        "fused_cpu_adamw": Tol(1e-9, 1e-11, "fused CPU RepOpt-AdamW vs the reference: the unfused step's bound; "
                                            "its correctly rounded sqrt moves a step by ~1 ulp"),
        "fused_adamw_vs_unfused": Tol(1e-13, 1e-15, "fused vs unfused CPU AdamW: sqrt(v) 1 ulp apart (torch's "
                                                    "vectorized sqrt), ~1 ulp per update, <= 8 steps"),
        "fused_cuda": Tol(1e-12, 1e-14, "fused vs unfused on CUDA: torch's fused kernel rounds its own way "
                                        "(FMA contraction), <= 1 ulp per operation per step, <= 8 steps"),
    },
    "float32": {
        "exact_math": Tol(1e-4, 1e-5, "float32 unit roundoff 6e-8, amplified by BN 1/sigma and a few iterations"),
        "theorem": Tol(1e-4, 1e-5, "float32 through two algebraically equal paths"),
        "fused_adamw_vs_unfused": Tol(1e-6, 1e-7, "fused vs unfused CPU AdamW in float32: sqrt(v) 1 ulp apart "
                                                  "(torch's vectorized sqrt), a few ulps of |W| after <= 8 steps"),
        "fused_cuda": Tol(1e-5, 1e-6, "fused vs unfused on CUDA in float32: torch's fused kernel rounds its own "
                                      "way (FMA contraction), <= 1 ulp per operation per step, <= 8 steps"),
    },
}


def tol(kind: str, dtype: str = "float64") -> Tol:
    return TOLERANCES[dtype][kind]


def assert_close(actual, expected, *, name: str, kind: str = "exact_math", dtype: str = "float64",
                 iteration: int | None = None, rtol: float | None = None, atol: float | None = None) -> None:
    """``|actual − expected| ≤ atol + rtol·|expected|`` elementwise, with a useful message."""
    t = tol(kind, dtype)
    rtol = t.rtol if rtol is None else rtol
    atol = t.atol if atol is None else atol
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    where = f"iteration {iteration}, " if iteration is not None else ""
    if actual.shape != expected.shape:
        raise AssertionError(f"{where}{name}: shape {actual.shape} != expected {expected.shape}")
    if actual.size == 0:
        return
    err = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    bad = ~(err <= bound)  # NaN counts as a failure
    if np.any(bad):
        idx = np.unravel_index(int(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), -1.0))), err.shape)
        rel = err / np.maximum(np.abs(expected), 1e-300)
        raise AssertionError(
            f"{where}{name}: max abs err {np.nanmax(err):.3e}, max rel err {np.nanmax(rel):.3e} "
            f"(rtol={rtol:g}, atol={atol:g}, {t.reason}); worst at index {tuple(int(i) for i in idx)}: "
            f"actual {actual[idx]!r} vs expected {expected[idx]!r}; {int(bad.sum())}/{bad.size} elements off"
        )


def assert_trees_close(actual: dict, expected: dict, *, prefix: str = "", **kw) -> None:
    """Compare two ``{name: array}`` dicts (nested dicts allowed) key by key; keys must match."""
    if set(actual) != set(expected):
        raise AssertionError(
            f"{prefix}keys differ: missing {sorted(set(expected) - set(actual))}, "
            f"extra {sorted(set(actual) - set(expected))}"
        )
    for k in sorted(expected):
        a, e = actual[k], expected[k]
        if isinstance(e, dict):
            assert_trees_close(a, e, prefix=f"{prefix}{k}.", **kw)
        else:
            assert_close(a, e, name=f"{prefix}{k}", **kw)
