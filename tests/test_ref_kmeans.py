"""SPEC §5 k-means (non-uniform) quantization: repspec.reference.kmeans (Lloyd, DP optimum, sklearn peer)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from repspec.reference.kmeans import (
    DEFAULT_INIT,
    INITS,
    assign,
    initial_centroids,
    kmeans_1d,
    kmeans_1d_optimal,
    kmeans_fake_quantize,
    kmeans_fake_quantize_backward,
    lloyd_step,
    midpoints,
    sse,
)

from .strategies import cluster_values, rng_from, seeds

ks = st.integers(1, 8)
LLOYD_INITS = ("linear", "quantile", "kmeans++", "optimal")


def _slack(s):
    """Float64 rounding allowance for comparing two SSEs of the same data (relative 1e-12)."""
    return 1e-12 * abs(s) + 1e-300


# ------------------------------------------------------------------- assignment


@given(v=cluster_values(), seed=seeds, k=ks)
def test_assign_is_nearest_centroid(v, seed, k):
    c = np.sort(rng_from(seed).standard_normal(k))
    labels = assign(v, c)
    d = np.abs(v[:, None] - c[None, :])
    np.testing.assert_array_equal(d[np.arange(v.size), labels], d.min(axis=1))


def test_tie_on_midpoint_goes_to_lower_centroid():
    c = np.array([-1.0, 0.0, 1.0, 3.0])
    m = midpoints(c)
    np.testing.assert_array_equal(m, [-0.5, 0.5, 2.0])
    np.testing.assert_array_equal(assign(m, c), [0, 1, 2])  # exactly on a midpoint → lower
    np.testing.assert_array_equal(assign(np.nextafter(m, np.inf), c), [1, 2, 3])
    np.testing.assert_array_equal(kmeans_fake_quantize(m, c), [-1.0, 0.0, 1.0])


def test_duplicate_centroids_go_to_lowest_index():
    c = np.array([0.0, 2.0, 2.0, 2.0, 5.0])
    np.testing.assert_array_equal(assign([1.0, 1.5, 2.0, 3.0, 3.5, 3.6], c), [0, 1, 1, 1, 1, 4])


def test_empty_cluster_keeps_its_centroid():
    v = np.array([0.0, 0.2, 9.8, 10.0])
    c = np.array([0.0, 5.0, 10.0])  # no value is nearest to 5
    new, labels = lloyd_step(v, c)
    np.testing.assert_array_equal(labels, [0, 0, 2, 2])
    np.testing.assert_array_equal(new, [0.1, 5.0, 9.9])
    r = kmeans_1d(v, 3, init_centroids=c)
    assert r.centroids[1] == 5.0 and r.converged


# ------------------------------------------------------------------------ Lloyd


@given(v=cluster_values(), k=ks, init=st.sampled_from(LLOYD_INITS), seed=seeds)
@example(v=np.array([0.0, 0.5, 1.0, 1.0, 7.0]), k=2, init="linear", seed=0)
@example(v=np.array([3.0]), k=1, init="quantile", seed=0)  # batch of 1
def test_sse_never_increases_and_result_is_consistent(v, k, init, seed):
    r = kmeans_1d(v, k, init=init, seed=seed)
    h = r.sse_history
    assert np.all(np.diff(h) <= _slack(h[0]))
    assert len(h) == r.n_iter + 1 and r.sse == h[-1]
    assert r.centroids.shape == (k,) and np.all(np.diff(r.centroids) >= 0)
    np.testing.assert_array_equal(r.labels, assign(v, r.centroids))
    assert r.sse == sse(v, r.centroids)
    if r.converged:  # a fixed point: one more Lloyd step changes nothing
        new, labels = lloyd_step(v, r.centroids)
        np.testing.assert_array_equal(labels, r.labels)


@given(v=cluster_values(), k=ks)
def test_lloyd_step_matches_manual_means(v, k):
    c = initial_centroids(v, k, "linear") if np.unique(v).size > k else np.unique(v)
    new, labels = lloyd_step(v, c)
    for j in range(c.size):
        members = v[labels == j]
        if members.size == 0:
            assert c[j] in new  # an empty cluster keeps its centroid (exactly)
        else:  # sorted afterwards; every mean is there (summation order may differ: 1e-12)
            assert np.min(np.abs(new - members.mean())) <= 1e-12 * np.abs(members).max()


@given(v=cluster_values(), extra=st.integers(0, 3), init=st.sampled_from(LLOYD_INITS))
@example(v=np.array([0.1, 0.1, 0.1, 0.7]), extra=0, init="linear")  # 3·0.1/3 != 0.1 in float64
def test_k_at_least_distinct_values_is_exact(v, extra, init):
    d = np.unique(v).size
    r = kmeans_1d(v, d + extra, init=init, seed=0)
    assert r.sse == 0.0
    np.testing.assert_array_equal(kmeans_fake_quantize(v, r.centroids), v)
    np.testing.assert_array_equal(r.centroids[:d], np.unique(v))
    assert np.all(r.centroids[d:] == v.max())


def test_max_iter_zero_returns_init_assignment():
    v = rng_from(0).standard_t(3, 200)
    r = kmeans_1d(v, 4, init="linear", max_iter=0)
    np.testing.assert_array_equal(r.centroids, initial_centroids(v, 4, "linear"))
    assert r.n_iter == 0 and not r.converged


def test_warm_start_from_a_converged_solution_stops_at_once():
    v = rng_from(1).standard_t(3, 500)
    r = kmeans_1d(v, 8, init="quantile")
    assert r.converged
    w = kmeans_1d(v, 8, init_centroids=r.centroids[::-1])  # sorted on entry
    assert w.n_iter == 1 and w.converged
    np.testing.assert_array_equal(w.centroids, r.centroids)


@given(v=cluster_values(), k=st.integers(1, 5), seed=seeds)
def test_kmeanspp_is_deterministic_with_a_seed(v, k, seed):
    if np.unique(v).size <= k:
        return
    a = kmeans_1d(v, k, init="kmeans++", seed=seed)
    b = kmeans_1d(v, k, init="kmeans++", seed=np.random.default_rng(seed))
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.sse == b.sse
    c0 = initial_centroids(v, k, "kmeans++", seed=seed)
    assert np.all(np.isin(c0, v)) and np.unique(c0).size == k  # D² sampling picks distinct data points


# --------------------------------------------------------------------- optimum


@given(v=cluster_values(), k=ks, seed=seeds)
@example(v=np.array([0.0, 0.0, 1.0, 1.0, 2.0]), k=2, seed=0)
def test_dp_optimum_below_every_lloyd_and_methods_agree(v, k, seed):
    opt = kmeans_1d_optimal(v, k)
    quad = kmeans_1d_optimal(v, k, method="quadratic")
    assert abs(opt.sse - quad.sse) <= _slack(quad.sse)
    for init in LLOYD_INITS:
        if init == "kmeans++" and np.unique(v).size <= k:
            continue
        assert opt.sse <= kmeans_1d(v, k, init=init, seed=seed).sse + _slack(opt.sse)
    rng = rng_from(seed)
    for _ in range(3):  # and below random warm starts
        c = np.sort(rng.choice(v, size=k))
        assert opt.sse <= kmeans_1d(v, k, init_centroids=c).sse + _slack(opt.sse)


def test_dp_optimum_brute_force_small():
    v = np.array([-3.0, -1.0, -0.5, 0.0, 0.2, 4.0, 4.5])
    best = np.inf
    for a in range(1, v.size):  # every split into 3 contiguous groups of the sorted values
        for b in range(a + 1, v.size):
            best = min(best, sum(((g - g.mean()) ** 2).sum() for g in (v[:a], v[a:b], v[b:])))
    assert kmeans_1d_optimal(v, 3).sse == pytest.approx(best, rel=1e-14)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [3, 8])
def test_peer_sklearn_dp_optimum_is_no_worse(seed, k):
    sk = pytest.importorskip("sklearn.cluster")
    v = rng_from(seed).standard_t(3, 2000)
    opt = kmeans_1d_optimal(v, k)
    km = sk.KMeans(n_clusters=k, n_init=4, random_state=seed).fit(v.reshape(-1, 1))
    sk_sse = sse(v, np.sort(km.cluster_centers_.ravel()))  # sklearn's centroids, our assignment
    assert opt.sse <= sk_sse * (1 + 1e-9)
    assert km.inertia_ == pytest.approx(sk_sse, rel=1e-6)  # sklearn's own SSE agrees


def test_default_init_is_optimal():
    assert DEFAULT_INIT == "optimal" and DEFAULT_INIT in INITS
    v = rng_from(5).standard_t(3, 3000)
    assert kmeans_1d(v, 16).sse == pytest.approx(kmeans_1d_optimal(v, 16).sse, rel=1e-12)


# ----------------------------------------------------------- fake quantization


@given(v=cluster_values(), k=ks)
def test_fake_quantize_is_idempotent_and_uses_centroids(v, k):
    w = v.reshape(1, -1)
    r = kmeans_1d(w, k, init="quantile")
    w_hat = kmeans_fake_quantize(w, r.centroids)
    assert w_hat.shape == w.shape and np.all(np.isin(w_hat, r.centroids))
    np.testing.assert_array_equal(w_hat, r.centroids[r.labels])
    np.testing.assert_array_equal(kmeans_fake_quantize(w_hat, r.centroids), w_hat)
    dy = rng_from(0).standard_normal(w.shape)
    np.testing.assert_array_equal(kmeans_fake_quantize_backward(dy), dy)


# -------------------------------------------------------------------- bad input


def test_bad_input():
    v = np.array([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="k must be >= 1"):
        kmeans_1d(v, 0)
    with pytest.raises(TypeError, match="k must be an integer"):
        kmeans_1d(v, 2.0)
    with pytest.raises(ValueError, match="values must contain only finite"):
        kmeans_1d(np.array([0.0, np.nan]), 2)
    with pytest.raises(ValueError, match="values must contain only finite"):
        kmeans_1d_optimal(np.array([0.0, np.inf]), 2)
    with pytest.raises(ValueError, match="values must not be empty"):
        kmeans_1d(np.array([]), 2)
    with pytest.raises(ValueError, match="explicit seed"):
        kmeans_1d(v, 2, init="kmeans++")
    with pytest.raises(ValueError, match="init must be one of"):
        kmeans_1d(v, 2, init="random")
    with pytest.raises(ValueError, match="init='warm' needs init_centroids"):
        kmeans_1d(v, 2, init="warm")
    with pytest.raises(ValueError, match="init_centroids is only used with init='warm'"):
        kmeans_1d(v, 2, init="linear", init_centroids=[0.0, 1.0])
    with pytest.raises(ValueError, match="init_centroids must have shape"):
        kmeans_1d(v, 2, init_centroids=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="centroids must be sorted ascending"):
        assign(v, [1.0, 0.0])
    with pytest.raises(ValueError, match="centroids must contain only finite"):
        kmeans_fake_quantize(v, [0.0, np.nan])
    with pytest.raises(ValueError, match="max_iter must be >= 0"):
        kmeans_1d(v, 2, max_iter=-1)
    with pytest.raises(ValueError, match="method must be one of"):
        kmeans_1d_optimal(v, 2, method="smawk")
