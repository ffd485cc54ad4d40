"""SPEC §2 merged-weight categories and SPEC §5 state size.

The categories partition the kernel with the stated counts, and on a fused kernel
they hold exactly the stated branch sums (A: t3·K3 + t1·K1 + t0, B: t3·K3 + t1·K1,
C: t3·K3); constructed kernels give known statistics; the kurtosis equals SciPy's
(a peer, used only here); state sizes of small cases are exact; bad input is refused.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import example, given
from hypothesis import strategies as st

from repspec.reference import ops
from repspec.reference.analysis import (
    category_statistics,
    excess_kurtosis,
    identity_ratio,
    merged_weight_categories,
    state_size,
)
from repspec.reference.repvgg import RepVGGBlock
from tests import strategies as S
from tests.tolerances import assert_close


@given(o_per=st.integers(1, 4), i_per=st.integers(1, 4), groups=st.integers(1, 3))
def test_categories_partition_the_kernel_with_the_stated_counts(o_per, i_per, groups):
    o = o_per * groups
    masks = merged_weight_categories(np.zeros((o, i_per, 3, 3)), groups)
    total = masks.A.astype(int) + masks.B.astype(int) + masks.C.astype(int)
    np.testing.assert_array_equal(total, np.ones((o, i_per, 3, 3), int))  # disjoint and covering
    assert (masks.A.sum(), masks.B.sum(), masks.C.sum()) == (o, o * (i_per - 1), 8 * o * i_per)
    if i_per >= 2:
        assert masks.A.sum() <= masks.B.sum() <= masks.C.sum()
    assert not masks.A[:, :, [0, 2], :].any() and not masks.B[:, :, :, [0, 2]].any()


@given(cfg=S.grouped_block_shapes(max_per_group=3), seed=S.seeds)
@example(cfg=(4, 4, 1, 2), seed=0)
def test_categories_hold_the_stated_branch_sums_of_a_fused_kernel(cfg, seed):
    cin, _, _, groups = cfg
    block = RepVGGBlock(cin, cin, 1, groups)
    rng = S.rng_from(seed)
    params = {k: rng.normal(size=s) for k, s in block.param_shapes().items()}
    buffers = {k: rng.uniform(0.1, 2, s) if "var" in k else rng.normal(size=s)
               for k, s in block.buffer_shapes().items()}
    kernel, _ = block.fuse(params, buffers)
    t = {p: ops.bn_factor(params[f"{p}.weight"], buffers[f"{p}.running_var"], 1e-5)[:, None, None, None]
         for p in ("rbr_dense.bn", "rbr_1x1.bn", "rbr_identity")}
    k3 = t["rbr_dense.bn"] * params["rbr_dense.conv.weight"]
    k1 = np.zeros_like(k3)
    k1[:, :, 1, 1] = (t["rbr_1x1.bn"] * params["rbr_1x1.conv.weight"])[:, :, 0, 0]
    m = merged_weight_categories(kernel, groups)
    assert_close(kernel[m.C], k3[m.C], name="C = t3·K3")
    assert_close(kernel[m.B], (k3 + k1)[m.B], name="B = t3·K3 + t1·K1")
    t0 = identity_ratio(params, buffers)
    assert_close(kernel[m.A], (k3 + k1)[m.A] + t0, name="A = t3·K3 + t1·K1 + t0")  # A is in channel order


def test_constructed_kernel_gives_known_statistics():
    k = np.zeros((2, 2, 3, 3))
    k[0, 0, 1, 1], k[1, 1, 1, 1] = 3.0, -3.0  # A = {3, -3}
    k[0, 1, 1, 1] = k[1, 0, 1, 1] = 1.0  # B = {1, 1}: constant
    border = np.ones((2, 2, 3, 3), bool)
    border[:, :, 1, 1] = False
    k[border] = np.tile([0.5, -0.5], 16)  # C = 16 × ±0.5
    st_ = category_statistics(k)
    assert st_.A == (2, 3.0, 3.0, 3.0, -2.0)
    assert st_.B[:4] == (2, 1.0, 1.0, 0.0) and math.isnan(st_.B.excess_kurtosis)
    assert st_.C == (32, 0.5, 0.5, 0.5, -2.0)
    assert st_.ratio_A_C == 6.0


def test_empty_category_and_zero_ratio_guards():
    k = np.zeros((3, 1, 3, 3))  # I/g = 1: B is empty
    k[:, 0, 1, 1] = [1.0, 2.0, 4.0]
    s = category_statistics(k)
    assert s.B.count == 0 and all(math.isnan(v) for v in s.B[1:])
    assert s.ratio_A_C == math.inf  # max|C| = 0 < max|A|
    assert math.isnan(category_statistics(np.zeros((1, 1, 3, 3))).ratio_A_C)


@given(seed=S.seeds, size=st.integers(2, 200), df=st.sampled_from([3.0, 10.0, 1e6]))
def test_excess_kurtosis_equals_scipy(seed, size, df):
    w = S.rng_from(seed).standard_t(df, size=size)
    assert_close(excess_kurtosis(w), scipy.stats.kurtosis(w, fisher=True, bias=True), name="kurtosis")


def test_excess_kurtosis_of_known_distributions():
    assert excess_kurtosis([-1.0, 1.0]) == -2.0
    assert math.isnan(excess_kurtosis([2.0, 2.0, 2.0]))
    w = np.random.default_rng(0).normal(size=400_000)
    assert abs(excess_kurtosis(w)) < 0.05
    assert abs(excess_kurtosis(np.linspace(-1, 1, 100_001)) + 1.2) < 1e-3


@pytest.mark.parametrize("value, n", [(0.1, 3), (0.1, 9), (0.7, 7), (1 / 3, 5), (-2.2, 11)])
def test_excess_kurtosis_of_constant_values_is_nan_even_when_the_float_mean_is_off(value, n):
    """SPEC §2.categories: κ = nan for constant values (m2 = 0), including values whose float mean is not the
    value itself; without the constancy test every w − mean is the same tiny number and κ = m4/m2² − 3 = −2."""
    w = np.full(n, value)
    assert math.isnan(excess_kurtosis(w)), (value, n, w.mean() - value)
    k = np.full((2, 2, 3, 3), value)  # every category constant
    assert all(math.isnan(getattr(category_statistics(k), c).excess_kurtosis) for c in "ABC")


def test_identity_ratio_dead_channel_and_oabn():
    params = {"rbr_identity.weight": np.array([1.0, 2.0, -3.0])}
    buffers = {"rbr_identity.running_var": np.array([0.0, 3.0, 8.0])}
    t0 = identity_ratio(params, buffers, eps=1e-5)
    want = np.array([1.0, 2.0, -3.0]) / np.sqrt(np.array([0.0, 3.0, 8.0]) + 1e-5)
    assert_close(t0, want, name="t0")
    assert t0[0] > 300  # a dead channel: the outlier of category A
    np.testing.assert_array_equal(identity_ratio(params, buffers, eps=1e-5, threshold=2.0),
                                  [2.0, want[1], want[2]])


def test_state_size_exact_small_cases():
    assert state_size([np.array([1.0, 1.0, 2.0])]) == 2
    assert state_size([np.array([1.0, 2.0]), np.array([2.0, 1.0])]) == 4  # summed over layers, not a union
    assert state_size([np.array([0.0, -0.0, 0.0])]) == 1  # compared with ==
    assert state_size({"a": np.zeros((3, 3)), "b": np.arange(6).reshape(2, 3)}) == 7
    assert state_size((np.array([3]),)) == 1  # integer arrays are accepted
    q = np.round(np.random.default_rng(0).normal(size=(8, 8, 3, 3)) * 10) / 10  # a quantized-like layer
    assert state_size([q]) == len(set(q.ravel().tolist()))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: merged_weight_categories(np.zeros((2, 2, 1, 1))), ValueError, r"kernel must have shape"),
        (lambda: merged_weight_categories(np.zeros((2, 2, 3))), ValueError, "kernel"),
        (lambda: merged_weight_categories(np.zeros((3, 2, 3, 3)), groups=2), ValueError, "groups"),
        (lambda: merged_weight_categories(np.zeros((0, 2, 3, 3))), ValueError, "kernel must not be empty"),
        (lambda: category_statistics(np.full((1, 1, 3, 3), np.nan)), ValueError, "kernel.*finite"),
        (lambda: category_statistics("kernel"), TypeError, "kernel"),
        (lambda: excess_kurtosis([]), ValueError, "values"),
        (lambda: identity_ratio({}, {"rbr_identity.running_var": np.ones(2)}), ValueError,
         "params has no 'rbr_identity.weight'"),
        (lambda: identity_ratio({"rbr_identity.weight": np.ones(2)}, {"rbr_identity.running_var": np.ones(3)}),
         ValueError, "running_var"),
        (lambda: identity_ratio({"rbr_identity.weight": np.ones(2)}, {"rbr_identity.running_var": np.ones(2)},
                                threshold=-1.0), ValueError, "threshold"),
        (lambda: identity_ratio({"rbr_identity.weight": np.ones(2)}, {"rbr_identity.running_var": -np.ones(2)}),
         ValueError, "running_var.*>= 0"),
        (lambda: state_size([]), ValueError, "kernels"),
        (lambda: state_size([np.array([])]), ValueError, r"kernels\[0\] must not be empty"),
        (lambda: state_size({"conv": np.array([np.inf])}), ValueError, r"kernels\['conv'\].*finite"),
        (lambda: state_size(np.ones(3)), TypeError, "kernels"),
    ],
)
def test_bad_input_is_refused(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
