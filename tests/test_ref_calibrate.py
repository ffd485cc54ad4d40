"""SPEC §5 PTQ calibrators: repspec.reference.calibrate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from repspec.reference.calibrate import (
    METHODS,
    calibrate,
    clipping_mse,
    entropy_kl,
    entropy_scores,
    minmax,
    moving_average_minmax,
    mse_optimal,
    mse_scores,
    percentile,
)
from repspec.reference.quant import activation_qparams

from .strategies import quant_arrays, quant_bits, rng_from, seeds


@given(x=quant_arrays())
@example(x=np.array([[0.0]]))
@example(x=np.array([[3.0, 3.0]]))
def test_minmax_contains_data_and_percentile_100_equals_it(x):
    lo, hi = minmax(x)
    assert lo <= x.min() and hi >= x.max() and lo == x.min() and hi == x.max()
    assert percentile(x, 100.0) == (lo, hi)


@given(x=quant_arrays(), p=st.floats(50, 100))
def test_percentile_is_numpy_linear(x, p):
    lo, hi = percentile(x, p)
    assert lo == np.percentile(x, 100 - p) and hi == np.percentile(x, p)
    assert x.min() <= lo <= hi <= x.max()


@given(seed=seeds, n_batches=st.integers(1, 5), m=st.sampled_from([0.0, 0.01, 0.5, 1.0]))
def test_moving_average_formula_exact(seed, n_batches, m):
    rng = rng_from(seed)
    batches = [rng.standard_normal(rng.integers(1, 20)) * 10 ** rng.uniform(-2, 2) for _ in range(n_batches)]
    lo, hi = batches[0].min(), batches[0].max()
    for b in batches[1:]:
        lo = (1 - m) * lo + m * b.min()
        hi = (1 - m) * hi + m * b.max()
    assert moving_average_minmax(batches, momentum=m) == (lo, hi)
    assert calibrate("moving_average_minmax", batches, 8, momentum=m) == (lo, hi)
    if m == 0.0:
        assert (lo, hi) == (batches[0].min(), batches[0].max())
    if m == 1.0:
        assert (lo, hi) == (batches[-1].min(), batches[-1].max())


@given(x=quant_arrays(), bits=quant_bits, n=st.integers(1, 30))
@example(x=np.array([[0.0, 0.0]]), bits=8, n=5)
def test_mse_optimal_beats_minmax_and_every_candidate(x, bits, n):
    lo, hi = mse_optimal(x, bits, candidates=n)
    best = clipping_mse(x, lo, hi, bits)
    assert best <= clipping_mse(x, *minmax(x), bits)
    lo0, hi0 = min(x.min(), 0.0), max(x.max(), 0.0)
    for a in np.arange(1, n + 1) / n:
        assert best <= clipping_mse(x, a * lo0, a * hi0, bits)


def test_mse_optimal_ties_go_to_the_widest_range():
    # 1 bit, x = [0, 1, 2]: α = 1 gives levels {0, 2} (1 ties to even → 0, error 1);
    # α = 1/2 gives levels {0, 1} (2 clamps to 1, error 1): equal MSE 1/3 → α = 1 wins
    x = np.array([0.0, 1.0, 2.0])
    assert clipping_mse(x, 0.0, 2.0, 1) == clipping_mse(x, 0.0, 1.0, 1) == 1.0 / 3.0
    assert mse_optimal(x, 1, candidates=[0.5]) == (0.0, 2.0)
    assert mse_optimal(x, 1, candidates=4) == (0.0, 1.5)  # α = 3/4 is strictly better
    assert mse_optimal(np.zeros(3), 4, candidates=[0.5, 0.25]) == (0.0, 0.0)


@given(x=quant_arrays(max_cols=30), bits=st.integers(1, 6), n=st.sampled_from([1, 4, 7, 25]))
@example(x=np.array([[0.0, 3.0, 4.0]]), bits=1, n=4)  # α = 1 and 3/4 tie exactly: α = 1
def test_mse_scores_are_every_candidate_and_the_optimum_is_the_largest_tied_ratio(x, bits, n):
    s = mse_scores(x, bits, candidates=n)
    assert np.array_equal(s.ratios, np.arange(n, 0, -1) / n)
    assert s.mse.tolist() == [clipping_mse(x, a * s.lo0, a * s.hi0, bits) for a in s.ratios]
    best = float(s.ratios[np.flatnonzero(s.mse == s.mse.min())[0]])  # descending: the first tied is the largest
    assert mse_optimal(x, bits, candidates=n) == (best * s.lo0, best * s.hi0)


@given(x=quant_arrays(max_cols=40), bits=st.integers(1, 4), num_bins=st.sampled_from([16, 20, 64]),
       zero_bin=st.sampled_from(["replace", "keep"]))
@example(x=np.zeros((1, 3)), bits=2, num_bins=16, zero_bin="replace")
def test_entropy_scores_are_every_threshold_and_the_range_is_the_smallest_tied_bin(x, bits, num_bins, zero_bin):
    s = entropy_scores(x, bits, num_bins, zero_bin)
    got = entropy_kl(x, bits, num_bins, zero_bin)
    if not np.any(x):
        assert s.bins.size == 0 and got == (float(x.min()), float(x.max()))
        return
    a = np.abs(x).ravel()
    hist, edges = np.histogram(a, bins=num_bins, range=(0.0, a.max()))
    if zero_bin == "replace" and num_bins > 1:
        hist[0] = hist[1]
    assert np.array_equal(s.hist, hist) and np.array_equal(s.bins, np.arange(s.nq, num_bins + 1))
    assert np.array_equal(s.thresholds, edges[s.bins]) and s.kl.shape == s.bins.shape
    t = float(s.thresholds[np.flatnonzero(s.kl == s.kl.min())[0]])  # ascending: the first tied is the smallest i
    assert got == (max(-t, float(x.min())), min(t, float(x.max())))


def test_mse_optimal_clips_outliers():
    x = np.concatenate([np.linspace(-1, 1, 1001), [3.0]])
    lo, hi = mse_optimal(x, 2, candidates=10)
    assert (lo, hi) == pytest.approx((-0.4, 1.2), abs=1e-12)


@given(x=quant_arrays(max_cols=40), bits=st.integers(1, 6), num_bins=st.sampled_from([64, 128, 256]))
@example(x=np.zeros((1, 3)), bits=2, num_bins=64)
def test_entropy_range_inside_data_range(x, bits, num_bins):
    lo, hi = entropy_kl(x, bits, num_bins=num_bins)
    assert x.min() <= lo <= hi <= x.max()
    t = max(abs(lo), abs(hi))
    assert t <= np.abs(x).max()


def test_entropy_clips_a_lone_outlier_and_keeps_a_uniform_range():
    x = np.concatenate([np.linspace(0.0, 1.0, 1001), [4.0]])
    assert entropy_kl(x, 1, num_bins=64) == (0.0, 1.0)
    u = np.linspace(-1.0, 1.0, 4001)
    assert entropy_kl(u, 4, num_bins=128) == (-1.0, 1.0)  # nothing to gain by clipping a uniform


def _post_relu(seed: int, n: int = 20_000) -> np.ndarray:
    """ReLU(N(μ, 1)), μ ∈ [−1, 0] (50–84 % exact zeros), times a magnitude 10^[-2, 2]."""
    rng = rng_from(seed)
    return np.maximum(rng.normal(rng.uniform(-1.0, 0.0), 1.0, n), 0.0) * 10 ** rng.uniform(-2, 2)


@settings(max_examples=6)
@given(seed=seeds)
@example(seed=0)
def test_entropy_zero_bin_replace_fixes_post_relu_ranges(seed):
    """The spike of exact zeros drives 'keep' (TensorRT's original) to a threshold ≤ A/2 with a
    fake-quant MSE hundreds of times min/max's; 'replace' (NVIDIA pytorch-quantization) stays
    near min/max. Margins from 200 seeds: hi_replace/hi_mm ≥ 0.61, MSE_keep/MSE_replace ≥ 75."""
    x = _post_relu(seed)
    assert np.mean(x == 0.0) > 0.4
    mm = minmax(x)
    rep = entropy_kl(x, 8)  # the default is 'replace'
    assert rep == entropy_kl(x, 8, zero_bin="replace") == calibrate("entropy", [x], 8, zero_bin="replace")
    keep = entropy_kl(x, 8, zero_bin="keep")
    assert keep == calibrate("entropy", [x], 8, zero_bin="keep")
    assert rep[1] >= 0.55 * mm[1]
    assert keep[1] < rep[1]
    mse_mm, mse_rep, mse_keep = (clipping_mse(x, *r, 8) for r in (mm, rep, keep))
    assert mse_keep >= 10.0 * mse_rep
    assert mse_keep >= 100.0 * mse_mm


@given(seed=seeds, bits=st.integers(1, 6), num_bins=st.sampled_from([64, 128, 256]), signed=st.booleans())
def test_entropy_zero_bin_options_agree_without_small_values(seed, bits, num_bins, signed):
    """No |x| below 2·A/num_bins: bins 0 and 1 are both empty, the histograms and the results identical."""
    rng = rng_from(seed)
    n = int(rng.integers(1, 400))
    x = rng.uniform(2.5 / num_bins, 1.0, n) * 10 ** rng.uniform(-3, 3)
    if signed:
        x *= rng.choice([-1.0, 1.0], n)
    if (2 ** (bits - 1) if x.min() < 0 else 2**bits) > num_bins:
        return
    assert entropy_kl(x, bits, num_bins, zero_bin="replace") == entropy_kl(x, bits, num_bins, zero_bin="keep")


def test_calibrate_dispatch_matches_functions():
    rng = rng_from(7)
    batches = [rng.standard_t(3, 50) for _ in range(3)]
    x = np.concatenate(batches)
    assert calibrate("minmax", batches, 8) == minmax(x)
    assert calibrate("percentile", batches, 8, percentile=99.0) == percentile(x, 99.0)
    assert calibrate("mse", batches, 4, candidates=20) == mse_optimal(x, 4, 20)
    assert calibrate("entropy", batches, 3, num_bins=64) == entropy_kl(x, 3, 64)
    for zb in ("replace", "keep"):
        assert calibrate("entropy", batches, 3, num_bins=64, zero_bin=zb) == entropy_kl(x, 3, 64, zero_bin=zb)
    assert calibrate("minmax", x, 8) == minmax(x)  # one array = one batch
    assert set(METHODS) == {"minmax", "moving_average_minmax", "percentile", "mse", "entropy"}
    lo, hi = calibrate("minmax", batches, 8)
    activation_qparams(lo, hi, 8)  # the range feeds the quantizer


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bits, exc", [(0, ValueError), (17, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_bits(bits, exc):
    for method in METHODS:
        with pytest.raises(exc, match="bits"):
            calibrate(method, [np.ones(3)], bits)


def test_bad_input():
    with pytest.raises(ValueError, match="method must be one of"):
        calibrate("kl", [np.ones(3)], 8)
    with pytest.raises(TypeError, match="unexpected option"):
        calibrate("minmax", [np.ones(3)], 8, momentum=0.1)
    with pytest.raises(ValueError, match="batches must hold at least one batch"):
        calibrate("minmax", [], 8)
    with pytest.raises(ValueError, match=r"batches\[1\] must contain only finite"):
        calibrate("minmax", [np.ones(2), np.array([np.nan])], 8)
    with pytest.raises(ValueError, match="x must contain only finite"):
        minmax(np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="x must not be empty"):
        percentile(np.array([]), 99)
    with pytest.raises(ValueError, match="percentile must be in \\[50, 100\\]"):
        percentile(np.ones(3), 101)
    with pytest.raises(ValueError, match="momentum must be in \\[0, 1\\]"):
        moving_average_minmax([np.ones(3)], momentum=1.5)
    with pytest.raises(ValueError, match="candidates must be clipping ratios"):
        mse_optimal(np.ones(3), 8, candidates=[0.0, 0.5])
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        mse_optimal(np.ones(3), 8, candidates=0)
    with pytest.raises(ValueError, match="num_bins must be >= the number of quantized levels"):
        entropy_kl(np.ones(3), 8, num_bins=64)
    for bad in ("drop", None, "Replace"):
        with pytest.raises(ValueError, match=r"zero_bin must be one of \('replace', 'keep'\)"):
            entropy_kl(np.ones(3), 8, zero_bin=bad)
    with pytest.raises(ValueError, match="zero_bin must be one of"):
        calibrate("entropy", [np.ones(3)], 8, zero_bin="drop")
    with pytest.raises(TypeError, match="batches must be an array or a sequence"):
        calibrate("minmax", "abc", 8)
