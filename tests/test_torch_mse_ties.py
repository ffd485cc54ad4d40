"""SPEC §5.calibrators: the MSE calibrator's tie rule (smallest MSE; ties → the largest ratio α) in torch_impl.

``MSEObserver`` does not score every candidate exactly: it screens them on sorted prefix sums and
evaluates exactly only those within ``MSE_SCREEN_RTOL`` of the best screened SSE. These tests
build data on which two or more ratios have **exactly** equal MSEs (dyadic grids: every error and
every sum is exact in float64, so the tie is a tie in any summation order) and check that the
screen keeps every tied ratio, that their exact MSEs are equal, and that the largest one wins — as
in ``reference.calibrate.mse_optimal`` — with heavy duplicates (up to 20 000 copies of a value)
and any split into batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from repspec.reference import calibrate as rc
from repspec.torch_impl.quantization import observers as obs
from tests.strategies import rng_from, seeds


def _observe(batches, bits, candidates) -> obs.MSEObserver:
    o = obs.MSEObserver(bits, candidates)
    for b in batches:
        o.observe(torch.tensor(b, dtype=torch.float64))
    return o


def _split(rng, values: np.ndarray, n_batches: int) -> list[np.ndarray]:
    k = min(n_batches, values.size)
    cuts = np.sort(rng.choice(np.arange(1, values.size), size=k - 1, replace=False)) if k > 1 else []
    return np.split(rng.permutation(values), cuts)


@st.composite
def two_ratio_ties(draw):
    """``H, a·H, −L, −a·L`` (with multiplicities) and zeros, ``L = zp0·2^e``, ``H = (qmax − zp0)·2^e``,
    ``a = (N−1)/N``, ``N ≥ 2·qmax`` a power of two: α = 1 and α = a have equal, smallest MSEs
    (see ``repspec.conformance.clauses.quantization._mse_tie_values``)."""
    bits = draw(st.integers(1, 6))
    qmax = 2**bits - 1
    n = 2 ** draw(st.integers(int(math.ceil(math.log2(2 * qmax))), int(math.ceil(math.log2(2 * qmax))) + 2))
    zp0 = draw(st.integers(0, qmax))
    e = draw(st.integers(-4, 4))
    k_hi, k_lo = draw(st.sampled_from([1, 2, 7, 1000])), draw(st.sampled_from([1, 3, 20_000]))
    zeros = draw(st.sampled_from([0, 1, 5000]))
    a = (n - 1) / n
    lo_mag, hi_mag = zp0 * 2.0**e, (qmax - zp0) * 2.0**e
    parts = [np.zeros(zeros)]
    if hi_mag > 0:
        parts += [np.full(k_hi, hi_mag), np.full(k_hi, a * hi_mag)]
    if lo_mag > 0:
        parts += [np.full(k_lo, -lo_mag), np.full(k_lo, -a * lo_mag)]
    values = np.concatenate(parts)
    candidates = n if draw(st.booleans()) else [a, 0.5, 0.25]
    return bits, candidates, a, values, draw(st.integers(1, 5)), draw(seeds)


@given(case=two_ratio_ties())
@example(case=(2, 8, 7 / 8, np.array([2.0, 1.75, -1.0, -0.875, 0.0]), 2, 0))
@example(case=(1, [0.75, 0.5], 0.75, np.array([0.0, 3.0, 4.0]), 1, 0))  # levels {0, 4} vs {0, 3}
def test_exact_two_ratio_tie_goes_to_the_largest_ratio(case):
    bits, candidates, a, values, n_batches, seed = case
    batches = _split(rng_from(seed), values, n_batches)
    ref = rc.mse_scores(values, bits, candidates)
    tied = ref.ratios[ref.mse == ref.mse.min()]
    assert 1.0 in tied and a in tied, f"the construction must tie α = 1 and {a}: {dict(zip(ref.ratios, ref.mse))}"
    o = _observe(batches, bits, candidates)
    scored = o.mse()
    assert 1.0 in scored and a in scored, f"the screen dropped a tied ratio: short list {sorted(scored)}"
    assert scored[1.0] == scored[a] == ref.mse.min()
    want = rc.mse_optimal(values, bits, candidates)
    assert want == (ref.lo0, ref.hi0)  # the largest ratio, 1
    assert o.compute_range() == want == obs.calibrate("mse", [torch.tensor(b) for b in batches], bits,
                                                      candidates=candidates)


@st.composite
def dyadic_duplicates(draw):
    """Few distinct dyadic values with ``hi0 − lo0 = qmax·2^e``, each repeated many times, and N a power of
    two: every candidate's MSE is exact, so the reference's ties (frequent here) are exact ties."""
    bits = draw(st.integers(1, 4))
    qmax = 2**bits - 1
    e = draw(st.integers(-3, 3))
    zp0 = draw(st.integers(0, qmax))
    lo0, hi0 = -zp0 * 2.0**e, (qmax - zp0) * 2.0**e
    rng = rng_from(draw(seeds))
    distinct = rng.integers(int(lo0 * 4 / 2.0**e), int(hi0 * 4 / 2.0**e) + 1, draw(st.integers(1, 4))) * 2.0**e / 4
    ends = [v for v in (lo0, hi0) if v != 0]
    values = np.repeat(np.concatenate([distinct, ends]), rng.integers(1, 3000, distinct.size + len(ends)))
    return bits, 2 ** draw(st.integers(1, 5)), values, draw(st.integers(1, 4)), rng


@given(case=dyadic_duplicates())
def test_heavy_duplicates_on_dyadic_grids_equal_the_reference(case):
    bits, n, values, n_batches, rng = case
    batches = _split(rng, values, n_batches)
    ref = rc.mse_scores(values, bits, n)
    o = _observe(batches, bits, n)
    scored = o.mse()
    best = ref.mse.min()
    for a, m in zip(ref.ratios, ref.mse):
        if m == best:  # every exactly tied ratio survives the screen, with the same exact MSE
            assert scored.get(float(a)) == m, f"ratio {a}: {scored.get(float(a))} vs {m}"
    assert o.compute_range() == rc.mse_optimal(values, bits, n)


def test_three_way_tie_and_all_zero_ties():
    # 1 bit, levels {0, 4α}: x = [0, 3, 4] ties α = 1 and 3/4; on zeros every ratio ties (all scales 0)
    for values, candidates, bits in ((np.array([0.0, 3.0, 4.0]), 4, 1), (np.zeros(7), 16, 3)):
        ref = rc.mse_scores(values, bits, candidates)
        o = _observe([values[:1], values[1:]], bits, candidates)
        tied = [float(a) for a, m in zip(ref.ratios, ref.mse) if m == ref.mse.min()]
        assert len(tied) >= 2 and all(o.mse()[a] == ref.mse.min() for a in tied)
        assert o.compute_range() == rc.mse_optimal(values, bits, candidates) == (tied[0] * ref.lo0,
                                                                                tied[0] * ref.hi0)


@pytest.mark.parametrize("n_copies", [1, 50_000])
def test_tie_survives_a_mean_far_from_zero(n_copies):
    """The screen's prefix sums are centred on the mean; with 2·n_copies values near H = 3 and 3 zeros the
    mean sits far from the grid's origin, and the tied ratios still both reach the exact evaluation."""
    a = 7 / 8
    values = np.concatenate([np.full(n_copies, 3.0), np.full(n_copies, 3.0 * a), np.zeros(3)])  # lo0 = 0
    ref = rc.mse_scores(values, 2, 8)
    assert ref.mse[0] == ref.mse[1] == ref.mse.min(), ref.mse[:3]
    o = _observe([values[:n_copies], values[n_copies:]], 2, 8)
    assert o.mse()[1.0] == o.mse()[a] == ref.mse[0]
    assert o.compute_range() == rc.mse_optimal(values, 2, 8) == (0.0, 3.0)
