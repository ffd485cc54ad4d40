"""SPEC §5/§6: the torch 1-D k-means (repspec.torch_impl.quantization.kmeans) equals the reference (repspec.reference.kmeans).

What "equal" means here (SPEC §6, discrete decisions):

* ``method='direct'`` — and ``'auto'`` on the CPU for ``n ≤ 2^16`` — sums like the
  reference (``bincount``), so on the CPU centroids, labels, ``n_iter`` and ``converged``
  are **bit-identical**, ties included; checked on tie-heavy data (values rounded to
  0–2 decimals: duplicates and exact midpoints are common).
* ``method='sorted'`` (and any method on CUDA) sums with prefix sums: centroids agree to
  ``CENTROID_RTOL·max|v|`` and labels exactly, **except** when some value lies within
  ``EPS·max|v|`` of a midpoint during the reference's run; such examples are found by
  replaying the reference's Lloyd iterations and ``assume``-d away (never compared
  loosely). Continuous data only, so the exclusion is rare.
* ``optimal``: torch's own DP (a dense layer solver for small inputs, the level-by-level
  monotone-split recursion for large ones) against the reference's readable quadratic DP:
  the SSE agrees to ``DP_SSE_RTOL`` (both float64 sums of the same segment costs, in a
  different order); where the centroids differ the segmentations must be SSE ties
  (checked on tie-heavy data with duplicates and exact ties).
* ``kmeans++``: torch's random stream differs from NumPy's, so only determinism, the
  fixed-point property and ``SSE ≥`` the optimum are checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from repspec.reference import kmeans as R
from repspec.torch_impl.quantization import kmeans as T
from tests import strategies as S

CUDA = torch.cuda.is_available()
#: "cpu-torch": CPU tensors sent down the device-generic torch path that CUDA tensors take
#: (``T._COMPILED_CPU = False``, set by the autouse fixture below), so its logic runs without a GPU
DEVICES = ["cpu", "cpu-torch", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]
EPS = 1e-9  # relative distance to a midpoint below which a decision may differ (SPEC §6)
CENTROID_RTOL = 1e-12  # prefix-sum vs bincount sums, relative to max|v|
SSE_RTOL = 1e-12

ks = st.integers(1, 10)
REF_INITS = ["linear", "quantile", "optimal"]
BIT_INITS = ["linear", "quantile"]  # the inits whose arithmetic is NumPy's, bit for bit
#: the exact DP against the reference's: float64 sums of the same segment costs in another order,
#: so the optimal SSE agrees to a few ulps of the centred s2 (|v| ≤ 1e6, n ≤ 200 here)
DP_SSE_RTOL = 1e-9







@pytest.fixture(autouse=True)
def _torch_path_on_cpu(request, monkeypatch):
    """A test parametrized with ``device="cpu-torch"`` runs with the compiled CPU loops switched off."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "cpu-torch":
        monkeypatch.setattr(T, "_COMPILED_CPU", False)


def dev_type(device: str) -> str:
    """The torch device type of a DEVICES entry."""
    return "cpu" if device == "cpu-torch" else device


def tt(a, device="cpu"):
    return torch.as_tensor(np.asarray(a, dtype=np.float64)).to(dev_type(device))


def npy(t):
    return t.detach().cpu().numpy()


def _distinct_midpoints(c: np.ndarray) -> np.ndarray:
    c = np.sort(c)
    keep = c[1:] > c[:-1]
    return (0.5 * c[:-1] + 0.5 * c[1:])[keep]


def _margin(v: np.ndarray, c: np.ndarray) -> float:
    """min |v − m| over values and midpoints between distinct centroids, relative to max|v|."""
    m = _distinct_midpoints(c)
    if m.size == 0:
        return np.inf
    scale = max(float(np.max(np.abs(v))), 1e-300)
    return float(np.min(np.abs(v.ravel()[:, None] - m[None, :]))) / scale


def reference_run_margin(v: np.ndarray, k: int, c0: np.ndarray, max_iter: int) -> float:
    """Replay the reference's Lloyd from ``c0``: the smallest midpoint margin of every assignment."""
    if np.unique(v).size <= k:
        return np.inf  # exact path: no decision
    c = np.sort(c0)
    labels = R.assign(v, c)
    margin = _margin(v, c)
    for _ in range(max_iter):
        counts = np.bincount(labels, minlength=k)
        sums = np.bincount(labels, weights=v, minlength=k)
        c = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
        new = R.assign(v, c)
        margin = min(margin, _margin(v, c))
        if np.array_equal(new, labels):
            break
        labels = new
    return margin


# ------------------------------------------------------------------ bit-identical paths


@pytest.mark.parametrize("method", ["auto", "direct"])
@pytest.mark.parametrize("init", BIT_INITS + ["warm"])
@given(v=S.cluster_values(), k=ks, seed=S.seeds, max_iter=st.sampled_from([0, 1, 3, 300]))
@example(v=np.array([0.0, 0.5, 1.0, 1.0, 3.0]), k=2, seed=0, max_iter=300)  # 0.5 sits on a midpoint
def test_matches_reference_bit_for_bit_on_cpu(init, method, v, k, seed, max_iter):
    kw = {}
    if init == "warm":
        kw["init_centroids"] = np.sort(S.rng_from(seed).normal(size=k) * (np.std(v) + 1))
    ref = R.kmeans_1d(v, k, init=init, max_iter=max_iter, **kw)
    got = T.kmeans_1d(tt(v), k, init=init, max_iter=max_iter, method=method,
                      **{n: tt(a) for n, a in kw.items()})
    assert np.array_equal(npy(got.centroids), ref.centroids), (got.centroids, ref.centroids)
    assert np.array_equal(npy(got.labels), ref.labels)
    assert (got.n_iter, got.converged) == (ref.n_iter, ref.converged)
    assert got.sse == pytest.approx(ref.sse, rel=SSE_RTOL, abs=1e-300)
    assert got.labels.dtype == torch.int64 and got.labels.shape == v.shape


class dp_solver:
    """Force the exact DP's solver (``T._FORCE_SOLVER``): ``'compiled'`` (the CPU default: Numba,
    depth first), ``'dense'`` (one table; the small-n default elsewhere) or ``'levels'`` (the
    breadth-first torch recursion; the large-n default elsewhere)."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.old, T._FORCE_SOLVER = T._FORCE_SOLVER, self.name

    def __exit__(self, *exc):
        T._FORCE_SOLVER = self.old


SOLVERS = ["compiled", "dense", "levels"]


def assert_same_optimum(got, ref, v, what=""):
    """Same optimal SSE; different centroids only as an SSE tie (both segmentations optimal)."""
    assert got.sse == pytest.approx(ref.sse, rel=DP_SSE_RTOL, abs=1e-12), (what, got.sse, ref.sse)
    assert R.sse(v, npy(got.centroids)) == pytest.approx(ref.sse, rel=DP_SSE_RTOL, abs=1e-12), what
    assert np.array_equal(npy(got.labels), R.assign(v, npy(got.centroids))), what


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", SOLVERS)
@given(v=S.cluster_values(), k=ks)
@example(v=np.array([0.0, 1.0, 2.0]), k=2)  # an exact tie: {0}{1,2} vs {0,1}{2}
@example(v=np.array([-1.0, 0.0, 0.0, 1.0, 5.0, 6.0, 7.0]), k=3)  # duplicates
@example(v=np.array([3.0, 3.0, 3.0, 3.0]), k=3)  # min == max: one distinct value, k > it
@example(v=np.array([0.0, 0.0, 1.0, 1.0, 2.0]), k=3)  # k == #distinct values: exact, SSE 0
@example(v=np.array([0.0, 0.0, 1.0, 1.0, 2.0]), k=5)  # k > #distinct: empty clusters at the max
@example(v=np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]), k=3)  # equally spaced: many tied splits
def test_optimal_dp_equals_the_reference_quadratic_dp(device, solver, v, k):
    if device != "cpu" and solver == "compiled":
        pytest.skip("the compiled solver runs only with the CPU loops on (kmeans.py never picks it otherwise)")
    ref = R.kmeans_1d_optimal(v, k, method="quadratic")
    with dp_solver(solver):
        got = T.kmeans_1d_optimal(tt(v, device), k)
    assert_same_optimum(got, ref, v, f"{solver} on {device}")
    if np.unique(v).size <= k:  # the exact rule: bit for bit
        assert np.array_equal(npy(got.centroids), ref.centroids)
    assert got.n_iter == 0 and got.converged and got.centroids.device.type == dev_type(device)


@pytest.mark.parametrize("solver", ["compiled", "levels"])
@given(seed=S.seeds, n=st.integers(700, 3000), k=st.integers(2, 12), decimals=st.sampled_from([1, 2, 6]))
def test_recursions_are_exact_on_larger_inputs(solver, seed, n, k, decimals):
    """The two monotone-split recursions (compiled depth first; torch level by level, which runs above
    ``_DENSE_MAX`` points off the CPU) on hundreds to thousands of distinct values, duplicates and tied
    splits included: exact against the reference's quadratic DP."""
    v = np.round(S.rng_from(seed).standard_t(3, n), decimals)
    assume(np.unique(v).size > T._DENSE_MAX)
    ref = R.kmeans_1d_optimal(v, k, method="quadratic")
    with dp_solver(solver):
        got = T.kmeans_1d_optimal(tt(v), k)
    assert_same_optimum(got, ref, v, solver)


def test_compiled_and_level_recursions_pick_the_same_splits_on_a_large_input():
    """50,000 distinct t(3) values, k = 9: the compiled (CPU default) and the torch level recursion make the
    same first-minimum decisions (the same float64 operations per candidate), so the same segmentation."""
    v = tt(S.rng_from(7).standard_t(3, 50_000))
    with dp_solver("compiled"):
        a = T.kmeans_1d_optimal(v, 9)
    with dp_solver("levels"):
        b = T.kmeans_1d_optimal(v, 9)
    assert torch.equal(a.centroids, b.centroids), (a.centroids, b.centroids)
    assert a.sse == b.sse


@given(v=S.cluster_values(), k=ks)
@example(v=np.array([0.0, 1.0, 2.0]), k=2)
def test_inits_are_the_reference_inits_bit_for_bit(v, k):
    for init in BIT_INITS:
        assert np.array_equal(npy(T.initial_centroids(tt(v), k, init)), R.initial_centroids(v, k, init)), init
    got = T.initial_centroids(tt(v), k, "optimal")
    assert R.sse(v, npy(got)) == pytest.approx(R.kmeans_1d_optimal(v, k).sse, rel=DP_SSE_RTOL, abs=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@given(seed=S.seeds, n=st.integers(200, 5000), k=st.integers(2, 16))
def test_cuda_dp_and_lloyd_stay_on_the_device_and_match_the_cpu(seed, n, k):
    """CUDA variant: every k-means path runs on the GPU tensor (results on the device) and agrees
    with the CPU run (optimal: same SSE; Lloyd: same decisions unless a value sits within EPS of a midpoint)."""
    v = S.rng_from(seed).standard_t(3, n)
    for init in ("optimal", "binned", "quantile"):
        cpu = T.kmeans_1d(tt(v), k, init=init, method="sorted")
        gpu = T.kmeans_1d(tt(v, "cuda"), k, init=init, method="sorted")
        assert gpu.centroids.device.type == "cuda" and gpu.labels.device.type == "cuda"
        assert gpu.sse == pytest.approx(cpu.sse, rel=1e-9), init
    opt = T.kmeans_1d_optimal(tt(v, "cuda"), k)
    assert opt.sse == pytest.approx(R.kmeans_1d_optimal(v, k).sse, rel=DP_SSE_RTOL)


class HostRoundTrips(TorchDispatchMode):
    """Counts host round trips: ``aten._local_scalar_dense`` (what ``.item()``, ``bool()``, ``int()`` and
    ``float()`` of a tensor dispatch to) and any op that takes a CUDA tensor and returns a CPU one
    (``.cpu()``, ``.tolist()``). On CPU tensors the first still counts, so the device-generic
    path's round trips are counted without a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        outs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        if func is torch.ops.aten._local_scalar_dense.default or (
                any(t.device.type == "cuda" for t in ins) and any(t.device.type == "cpu" for t in outs)):
            self.count += 1
        return out


def round_trips(fn):
    with HostRoundTrips() as counter:
        result = fn()
    return counter.count, result


@pytest.mark.parametrize("device", ["cpu-torch", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA,
                                                                                                reason="no CUDA device"))])
def test_device_path_makes_no_host_round_trip_per_iteration(device):
    """On a GPU tensor the k-means loops stay on the device. kmeans++ makes none at all (its
    random numbers are drawn up front); the exact DP's count does not grow with k; the sorted Lloyd
    loop makes one per block of ``_SYNC_EVERY`` iterations (its convergence check); the whole default
    ``kmeans_1d`` adds a fixed number (init, labels, SSE), whatever k and the iteration count."""
    x = tt(S.rng_from(3).standard_t(3, 20_000), device)
    for k in (4, 40):
        count, c = round_trips(lambda: T._kmeans_pp(x, k, torch.Generator().manual_seed(0)))
        assert count == 0, f"kmeans++ with k={k}: {count} host round trips"
        assert c.device == x.device and torch.unique(c).numel() == k
    dp = {}
    for k in (3, 12):
        with dp_solver("levels"):
            dp[k], _ = round_trips(lambda: T.kmeans_1d_optimal(x, k))
    assert dp[3] == dp[12], f"exact DP: {dp} host round trips for k = 3 / 12"
    sv = T._SortedValues(x)
    c0 = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64, device=x.device)  # far from the optimum
    count, (c, n_iter, converged, _) = round_trips(lambda: T._lloyd_sorted_torch(sv, c0, 300))
    assert n_iter > 2 * T._SYNC_EVERY, "the example should iterate over several blocks"
    assert count == -(-n_iter // T._SYNC_EVERY), f"{count} round trips for {n_iter} Lloyd iterations"
    whole = {}
    for k, max_iter in ((4, 1), (40, 300)):
        whole[k], r = round_trips(lambda: T.kmeans_1d(x, k, max_iter=max_iter, method="sorted"))
        whole[k] -= -(-r.n_iter // T._SYNC_EVERY)
    assert whole[4] == whole[40], f"kmeans_1d outside Lloyd: {whole} round trips for k = 4 / 40"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [3, 16, 100])
def test_compiled_cpu_loops_equal_the_device_generic_torch_path(seed, k, monkeypatch):
    """The compiled CPU loops (sort + prefix, binned DP, Lloyd, labels) and the torch path that CUDA
    tensors take do the same float64 operations in the same order: on 2·10^5 continuous float32 values
    the default ``kmeans_1d`` gives the same centroids, labels, iteration count and SSE, bit for bit."""
    x = torch.from_numpy(S.rng_from(seed).standard_t(3, 200_000).astype(np.float32))
    compiled = T.kmeans_1d(x, k)
    monkeypatch.setattr(T, "_COMPILED_CPU", False)
    generic = T.kmeans_1d(x, k)
    assert torch.equal(compiled.centroids, generic.centroids), (compiled.centroids, generic.centroids)
    assert torch.equal(compiled.labels, generic.labels)
    assert (compiled.n_iter, compiled.converged) == (generic.n_iter, generic.converged)
    assert compiled.sse == pytest.approx(generic.sse, rel=1e-12)  # run-by-run vs per-label summation


def test_without_numba_the_torch_path_runs_with_a_warning(monkeypatch):
    """Numba missing (an install with ``--no-deps``): one RuntimeWarning, then the torch path — the same result."""
    x = torch.from_numpy(S.rng_from(5).standard_t(3, 100_000).astype(np.float32))
    want = T.kmeans_1d(x, 8)
    monkeypatch.setattr(T, "_NUMBA", None)
    monkeypatch.setattr(T.importlib.util, "find_spec", lambda name, *a: None if name == "numba" else object())
    with pytest.warns(RuntimeWarning, match="numba is not installed"):
        got = T.kmeans_1d(x, 8)
    assert T._NUMBA is False
    assert torch.equal(got.centroids, want.centroids) and torch.equal(got.labels, want.labels)


def test_workspace_reuse_changes_no_result_and_aliases_nothing(monkeypatch):
    """The per-thread sort buffers (``T._Workspace``): a second call reuses them without touching what the
    first returned; two live ``_SortedValues`` never share them; results equal those of fresh buffers."""
    rng = S.rng_from(11)
    a = torch.from_numpy(rng.standard_t(3, 150_000).astype(np.float32))
    b = torch.from_numpy(rng.standard_t(5, 90_000))  # float64, fewer values: the same buffers, shorter views
    first = T.kmeans_1d(a, 16)
    kept = [t.clone() for t in (first.centroids, first.labels)]
    second = T.kmeans_1d(b, 7)
    assert torch.equal(first.centroids, kept[0]) and torch.equal(first.labels, kept[1])
    opt = T.kmeans_1d_optimal(a[:5000], 5)
    held = T._SortedValues(a)  # holds the lease...
    other = T._SortedValues(b)  # ...so this one allocates its own buffers
    assert held.sorted.data_ptr() != other.sorted.data_ptr()
    assert torch.equal(held.sorted, torch.sort(a.double()).values)
    assert torch.equal(other.sorted, torch.sort(b).values)
    del held, other
    monkeypatch.setattr(T, "_WORKSPACE_MAX", 0)  # fresh buffers every call
    for got, want in ((first, T.kmeans_1d(a, 16)), (second, T.kmeans_1d(b, 7)),
                      (opt, T.kmeans_1d_optimal(a[:5000], 5))):
        assert torch.equal(got.centroids, want.centroids) and torch.equal(got.labels, want.labels)
        assert (got.sse, got.n_iter) == (want.sse, want.n_iter)


# --------------------------------------------------------- prefix-sum path, any device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("init", REF_INITS + ["warm"])
@given(v=S.continuous_values(), k=ks, seed=S.seeds)
def test_sorted_path_matches_reference_except_near_midpoints(device, init, v, k, seed):
    kw = {}
    if init == "warm":
        kw["init_centroids"] = np.sort(S.rng_from(seed).normal(size=k) * np.std(v))
    ref = R.kmeans_1d(v, k, init=init, **kw)
    c0 = kw.get("init_centroids") if init == "warm" else R.initial_centroids(v, k, init) \
        if np.unique(v).size > k else None
    if c0 is not None:
        assume(reference_run_margin(v, k, c0, 300) > EPS)
    got = T.kmeans_1d(tt(v, device), k, init=init, method="sorted",
                      **{n: tt(a, device) for n, a in kw.items()})
    if init == "optimal":
        # torch's DP sums in another order: a different segmentation must be a tie
        if not np.allclose(npy(got.centroids), ref.centroids, rtol=0, atol=1e-9 * np.abs(v).max()):
            assert got.sse == pytest.approx(ref.sse, rel=1e-9)
            assume(False)
    scale = float(np.abs(v).max())
    np.testing.assert_allclose(npy(got.centroids), ref.centroids, rtol=0, atol=CENTROID_RTOL * scale)
    assert np.array_equal(npy(got.labels), ref.labels)
    assert (got.n_iter, got.converged) == (ref.n_iter, ref.converged)
    assert got.sse == pytest.approx(ref.sse, rel=1e-9, abs=1e-12 * scale**2)
    assert got.centroids.device.type == dev_type(device)


@given(v=S.cluster_values(), c=st.lists(st.sampled_from([-3.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 7.5]),
                                      min_size=1, max_size=8), seed=S.seeds, jitter=st.booleans())
@example(v=np.array([0.0, 0.5, 1.0, 1.0, 3.0]), c=[0.0, 1.0, 1.0, 2.0], seed=0, jitter=False)  # on a midpoint; duplicates
def test_prefix_sum_lloyd_step_equals_the_plain_step(v, c, seed, jitter):
    """One prefix-sum Lloyd step (run ends by binary search, sums by prefix differences, float64) makes
    the plain O(n) step's decisions exactly — same assignment (midpoint ties low, duplicates to the
    lowest index, empty clusters keep their centroid) — and its centroids within a few ulps."""
    c = np.asarray(c)  # grid centroids: values rounded to 0-2 decimals often sit exactly on their midpoints
    if jitter:  # plus random centroids
        c = np.concatenate([c, S.rng_from(seed).normal(size=len(c)) * (np.std(v) + 1.0)])
    c = np.sort(c)
    k, x = c.size, tt(v)
    labels = T._assign(x, tt(c))  # the plain assignment (the rule tests below pin it to the reference)
    plain_ends = torch.cumsum(torch.bincount(labels, minlength=k), 0)
    plain_c = T._direct_update(x, tt(c), labels)
    sv = T._SortedValues(x)
    ends = sv.run_ends(tt(c))
    assert torch.equal(ends, plain_ends), f"run ends {ends.tolist()} != plain assignment's {plain_ends.tolist()}"
    got = sv.update(tt(c), ends)
    ulps = np.spacing(np.maximum(np.abs(npy(plain_c)), np.abs(v).max()))
    err = np.abs(npy(got) - npy(plain_c))
    assert np.all(err <= 4 * ulps * len(v)), f"centroids differ by up to {err.max():.3g} ({(err / ulps).max():.1f} ulps)"
    # the CPU NumPy loop and the torch block loop: the same operations, so the same result bit for bit
    for max_iter in (1, 300):
        a = T._lloyd_sorted_cpu(sv, tt(c), max_iter)
        b = T._lloyd_sorted_torch(sv, tt(c), max_iter)
        assert torch.equal(a[0], b[0]) and a[1:3] == b[1:3], (max_iter, a[:3], b[:3])
    assert torch.equal(T._lloyd_sorted_cpu(sv, tt(c), 1)[0], got)


def test_large_warm_start_takes_the_sorted_path_and_still_matches():
    """n > 2^16 on the CPU: ``method='auto'`` sorts once and iterates on prefix sums."""
    rng = np.random.default_rng(0)  # seed chosen: every decision is > EPS from a midpoint (5.6e-9)
    v = rng.standard_t(3, 70_000)
    c0 = np.linspace(-1, 1, 8)  # far from the optimum: ~100 iterations
    assert reference_run_margin(v, 8, c0, 300) > EPS, "the fixed example comes too close to a midpoint"
    ref = R.kmeans_1d(v, 8, init_centroids=c0)
    got = T.kmeans_1d(tt(v), 8, init_centroids=tt(c0))
    assert ref.n_iter > 50 and not T._use_direct("auto", tt(v))
    np.testing.assert_allclose(npy(got.centroids), ref.centroids, rtol=0, atol=1e-10 * np.abs(v).max())
    assert np.array_equal(npy(got.labels), ref.labels)
    assert (got.n_iter, got.converged) == (ref.n_iter, ref.converged)


# -------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("device", DEVICES)
@given(a=st.integers(-64, 64), gap=st.integers(1, 64), shift=st.integers(-3, 3))
@example(a=0, gap=1, shift=0)
def test_value_on_a_midpoint_goes_to_the_lower_centroid(device, a, gap, shift):
    """Dyadic centroids ``a·2^s`` and ``(a + 2·gap)·2^s``: their midpoint is exact."""
    s = 2.0**shift
    c = tt([a * s, (a + 2 * gap) * s], device)
    mid = (a + gap) * s
    v = tt([mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf)], device)
    assert npy(T.assign(v, c)).tolist() == [0, 1, 0]
    assert npy(T.kmeans_fake_quantize(v, c)).tolist() == [a * s, (a + 2 * gap) * s, a * s]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", T.METHODS)
def test_every_lloyd_implementation_sends_midpoint_values_to_the_lower_cluster(device, method):
    """{0, 1, 2} from [0, 2]: 1 sits on the midpoint, joins 0 -> [0.5, 2] (the upper choice would give [0, 1.5])."""
    got = T.kmeans_1d(tt([0.0, 1.0, 2.0], device), 2, init_centroids=tt([0.0, 2.0], device), method=method)
    ref = R.kmeans_1d(np.array([0.0, 1.0, 2.0]), 2, init_centroids=np.array([0.0, 2.0]))
    assert npy(got.centroids).tolist() == [0.5, 2.0] == ref.centroids.tolist()
    assert npy(got.labels).tolist() == [0, 0, 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", T.METHODS)
def test_duplicate_centroid_moving_past_its_copy_is_resorted(device, method):
    """From [1, 1, 9]: {2, 2.5} join the lowest copy, which moves to 2.25 past the empty copy at 1 -> sorted."""
    v = np.array([2.0, 2.5, 8.0, 9.0])
    ref = R.kmeans_1d(v, 3, init_centroids=np.array([1.0, 1.0, 9.0]), max_iter=1)
    assert ref.centroids.tolist() == [1.0, 2.25, 8.5]
    for max_iter in (1, 300):
        got = T.kmeans_1d(tt(v, device), 3, init_centroids=tt([1.0, 1.0, 9.0], device), method=method,
                          max_iter=max_iter)
        ref = R.kmeans_1d(v, 3, init_centroids=np.array([1.0, 1.0, 9.0]), max_iter=max_iter)
        assert npy(got.centroids).tolist() == ref.centroids.tolist()
        assert npy(got.labels).tolist() == ref.labels.tolist()
        assert (got.n_iter, got.converged) == (ref.n_iter, ref.converged)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", T.METHODS)
def test_empty_cluster_keeps_its_centroid(device, method):
    v = tt([0.0, 1.0, 10.0, 11.0], device)
    got = T.kmeans_1d(v, 3, init_centroids=tt([0.0, 5.0, 100.0], device), method=method)
    # 100 never gets a member; 5 takes {10, 11} — the reference's lloyd_step example
    ref = R.kmeans_1d(npy(v), 3, init_centroids=np.array([0.0, 5.0, 100.0]))
    assert npy(got.centroids).tolist() == ref.centroids.tolist() == [0.5, 10.5, 100.0]
    assert npy(got.labels).tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", T.METHODS)
def test_duplicate_centroids_assign_to_the_lowest_index(device, method):
    v = tt([1.0, 1.2, 5.0], device)
    assert npy(T.assign(v, tt([0.0, 1.0, 1.0], device))).tolist() == [1, 1, 1]
    got = T.kmeans_1d(v, 3, init_centroids=tt([1.0, 1.0, 5.0], device), method=method)
    ref = R.kmeans_1d(npy(v), 3, init_centroids=np.array([1.0, 1.0, 5.0]))
    assert npy(got.centroids).tolist() == ref.centroids.tolist()
    assert npy(got.labels).tolist() == ref.labels.tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("init", ["linear", "quantile", "kmeans++", "optimal", "binned", "warm"])
@given(v=S.cluster_values(max_size=12), extra=st.integers(0, 5))
def test_k_at_least_distinct_is_exact(device, init, v, extra):
    """k ≥ #distinct (also k > #values): distinct values, then copies of the max; SSE 0; no iteration."""
    k = np.unique(v).size + extra
    kw = {"init_centroids": tt(np.zeros(k), device)} if init == "warm" else {}
    got = T.kmeans_1d(tt(v, device), k, init=init, seed=0, **kw)
    ref = R.kmeans_1d(v, k, init="linear")
    assert np.array_equal(npy(got.centroids), ref.centroids)
    assert np.array_equal(npy(got.labels), ref.labels)
    assert got.sse == 0.0 and got.n_iter == 0 and got.converged
    assert npy(got.centroids)[-1] == v.max() and got.centroids.numel() == k


@pytest.mark.parametrize("device", DEVICES)
@given(v=S.continuous_values(max_size=60), k=st.integers(2, 6), seed=S.seeds)
def test_kmeans_plus_plus_is_deterministic_and_a_local_optimum(device, v, k, seed):
    assume(np.unique(v).size > k)
    x = tt(v, device)
    a = T.kmeans_1d(x, k, init="kmeans++", seed=seed)
    b = T.kmeans_1d(x, k, init="kmeans++", seed=torch.Generator().manual_seed(seed))
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    opt = R.kmeans_1d_optimal(v, k)
    assert a.sse >= opt.sse * (1 - 1e-12) - 1e-300
    if a.converged:  # a Lloyd fixed point: one more reference update moves nothing
        c, labels = R.lloyd_step(v, npy(a.centroids))
        assert np.array_equal(labels, npy(a.labels))
        np.testing.assert_allclose(c, npy(a.centroids), rtol=0, atol=1e-12 * np.abs(v).max())
    init = T.initial_centroids(x, k, "kmeans++", seed=seed)
    assert np.all(np.isin(npy(init), v)), "kmeans++ centroids are drawn from the values"


@pytest.mark.parametrize("device", DEVICES)
@given(seed=S.seeds, n=st.integers(50, 800), k=st.integers(2, 8))
def test_optimal_sse_not_above_sklearn(device, seed, n, k):
    """Peer: the exact optimum's SSE ≤ scikit-learn ``KMeans(n_init=10)`` SSE (1e-9 relative)."""
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    v = S.rng_from(seed).standard_t(3, n)
    ours = T.kmeans_1d_optimal(tt(v, device), k)
    with threadpoolctl.threadpool_limits(1):  # tiny problems: threads only add overhead on a shared CPU
        km = sklearn_cluster.KMeans(k, n_init=10, random_state=seed % 2**31).fit(v.reshape(-1, 1))
    theirs = R.sse(v, np.sort(km.cluster_centers_.ravel()))
    assert ours.sse <= theirs * (1 + 1e-9)
    assert ours.sse <= km.inertia_ * (1 + 1e-9)


@given(seed=S.seeds, k=st.integers(2, 12), bins=st.sampled_from([8, 32, 128]))
def test_binned_init_is_exact_with_few_distinct_values_and_near_optimal_otherwise(seed, k, bins):
    rng = S.rng_from(seed)
    few = np.round(rng.standard_t(3, 2000), 1)  # a few dozen distinct values
    b = max(bins, k)
    if np.unique(few).size <= 2 * b:  # the DP runs on the distinct values themselves
        c = T.binned_optimal_centroids(tt(few), k, bins=bins)
        assert R.sse(few, npy(c)) == pytest.approx(R.kmeans_1d_optimal(few, k).sse, rel=DP_SSE_RTOL)
    many = rng.standard_t(3, 1500)
    got = T.kmeans_1d(tt(many), k, init="binned", bins=bins)
    opt = R.kmeans_1d_optimal(many, k)
    assert got.converged and opt.sse * (1 - 1e-12) <= got.sse
    # Near-optimality is a measured property, not a guarantee: over 40 seeds x k in {2, 5, 7, 12}
    # the worst SSE / optimum was 1.0023 at bins = 128 (the default's floor), 1.025 at 32 and
    # 1.18 at 8 (16 runs are too coarse an init for Lloyd to escape a local optimum; the random
    # `dev` profile found seed 199, k 7). So the 5% bound is asserted from 32 runs per kind up.
    if bins >= 32:
        assert got.sse <= opt.sse * 1.05, (got.sse / opt.sse, bins, k)


@pytest.mark.parametrize("device", DEVICES)
@given(seed=S.seeds, n=st.integers(20, 700), k=st.sampled_from([1, 2, 4, 8, 16]),
       bins=st.sampled_from([None, 2, 4, 8, 32]), kind=st.sampled_from(["heavy", "duplicates", "grid"]),
       max_iter=st.sampled_from([0, 1, 300]))
@example(seed=3, n=120, k=4, bins=4, kind="duplicates", max_iter=0)  # equal values straddling a count boundary
def test_binned_init_equals_the_reference(device, seed, n, k, bins, kind, max_iter):
    """SPEC §5.kmeans-binned: torch's binned init (and Lloyd from it) is the reference's — the same run
    boundaries (integers, exactly), centroids to CENTROID_RTOL, labels exactly; on both the run path and
    the few-values path. (The conformance clause §5.kmeans-binned checks it with ε-ambiguity handling.)"""
    rng = S.rng_from(seed)
    v = rng.standard_t(3, n)
    if kind == "duplicates":
        v[rng.random(n) < 1 / 3] = v[0]
    elif kind == "grid":
        v = np.round(v * 8) / 8
    b = R.binned_bin_count(k, bins)
    if n > 4 * b and np.unique(v).size > 2 * b:
        edges = T._bin_edges(T._SortedValues(tt(v, device)), b)
        np.testing.assert_array_equal(npy(edges), R.binned_run_edges(np.sort(v), b))
    init = T.binned_optimal_centroids(tt(v, device), k, bins=bins)
    np.testing.assert_allclose(npy(init), R.binned_optimal_centroids(v, k, bins=bins), rtol=CENTROID_RTOL, atol=0)
    ref = R.kmeans_1d(v, k, init="binned", bins=bins, max_iter=max_iter)
    got = T.kmeans_1d(tt(v, device), k, init="binned", bins=bins, max_iter=max_iter)
    assume(reference_run_margin(v, k, R.binned_optimal_centroids(v, k, bins=bins), max_iter) > EPS)
    np.testing.assert_allclose(npy(got.centroids), ref.centroids, rtol=CENTROID_RTOL, atol=0)
    np.testing.assert_array_equal(npy(got.labels), ref.labels)


#: the constructed exact DP ties of tests/test_ref_kmeans.py (dyadic data, several optimal segmentations of
#: exactly equal SSE): every solver must take the documented one, the reference's
DP_TIES = [
    (np.array([0.0, 1.0, 2.0]), 2),
    (np.array([0.0, 1.0, 2.0, 3.0, 4.0]), 2),
    (np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0]), 2),
    (np.repeat([0.0, 1.0, 2.0], 4), 2),
    (np.array([0.0, 1.0, 2.0, 4.0, 5.0, 6.0]), 3),
    (np.repeat([0.0, 1.0, 2.0, 4.0, 5.0, 6.0], 2), 3),
    (np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 8.0, 9.0, 10.0]), 3),
    (np.arange(9.0), 4),
    (np.array([0.0, 0.25, 0.5, 1.0, 1.25, 1.5]), 3),
    (np.array([0.0, 0.0, 1.0, 1.0, 2.0]), 2),  # k < #distinct with duplicates
    (np.array([0.0, 0.0, 1.0, 1.0, 2.0]), 4),  # k ≥ #distinct: the exact rule
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("v, k", DP_TIES, ids=[f"{len(v)}v-k{k}-{i}" for i, (v, k) in enumerate(DP_TIES)])
def test_every_dp_solver_takes_the_documented_tie(device, solver, v, k):
    """SPEC §5.kmeans's tie rule (the segment starts, read from the last backwards, smallest): torch's three
    DP solvers pick exactly the reference's segmentation on exact ties, for both reference methods."""
    if device != "cpu" and solver == "compiled":
        pytest.skip("the compiled solver runs only with the CPU loops on (kmeans.py never picks it otherwise)")
    refs = [R.kmeans_1d_optimal(v, k, method=m).centroids for m in ("quadratic", "divide_and_conquer")]
    assert np.array_equal(refs[0], refs[1])
    with dp_solver(solver):
        got = T.kmeans_1d_optimal(tt(v, device), k)
    np.testing.assert_array_equal(npy(got.centroids), refs[0])


#: The default's SSE / exact optimum bound, by k. Measured on 20,000 t(df) values, 26 seeds each
#: (seeds 0..24 and 5166723): worst 1.0018 at k = 16 (df 2), 1.031 at k = 64 (df 3) and 1.056 at
#: k = 64 (df 2, median 1.016) — with 64 clusters on heavy tails Lloyd stops in local optima a few
#: percent above the optimum, which `make test-random` found (seed 2670707498). The bounds leave
#: about 2x that margin; they are a regression guard, not a guarantee.
DEFAULT_INIT_SSE_BOUND = {4: 1.05, 16: 1.05, 64: 1.10}


@given(seed=S.seeds, k=st.sampled_from([4, 16, 64]), df=st.sampled_from([2, 3, 30]))
@example(seed=1024, k=4, df=30)
@example(seed=5166723, k=64, df=2)
def test_default_init_is_binned_and_near_the_optimum(seed, k, df):
    """The default (``binned`` + Lloyd) on heavy- and light-tailed data: converged, within
    ``DEFAULT_INIT_SSE_BOUND[k]`` of the exact SSE. (The ≥ 50x-at-≤-SSE comparison with
    scikit-learn is a benchmark: benchmarks/bench_kmeans.py.)"""
    assert T.DEFAULT_INIT == "binned"
    x = tt(S.rng_from(seed).standard_t(df, 20_000)).float()
    got = T.kmeans_1d(x, k)
    opt = T.kmeans_1d_optimal(x.double(), k)  # the optimum of the values clustered (float32-rounded: seed 1024,
    # k 4, df 30 beats the optimum of the unrounded float64 values by 1.1e-9 relative)
    assert got.converged
    assert opt.sse * (1 - 1e-9) <= got.sse <= opt.sse * DEFAULT_INIT_SSE_BOUND[k], (got.sse / opt.sse)


@pytest.mark.parametrize("device", DEVICES)
@given(v=S.continuous_values(), k=st.integers(2, 8))
def test_float32_values_give_float32_centroids_and_consistent_labels(device, v, k):
    x = tt(v, device).float()
    got = T.kmeans_1d(x, k)
    assert got.centroids.dtype == torch.float32 and got.centroids.device.type == dev_type(device)
    assert torch.equal(got.labels, T.assign(x, got.centroids))
    ref = R.kmeans_1d_optimal(npy(x).astype(np.float64), k)
    assert got.sse == pytest.approx(ref.sse, rel=1e-5, abs=1e-6 * float(np.abs(v).max()) ** 2)


@pytest.mark.parametrize("device", DEVICES)
@given(w=S.quant_arrays(), k=st.integers(1, 6), seed=S.seeds)
def test_fake_quantize_equals_reference_and_is_straight_through(device, w, k, seed):
    c = np.sort(S.rng_from(seed).choice(w.ravel(), size=k))
    x = tt(w, device).requires_grad_(True)
    y = T.kmeans_fake_quantize(x, tt(c, device))
    assert np.array_equal(npy(y), R.kmeans_fake_quantize(w, c))
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g)


# -------------------------------------------------------------------------- bad input

BAD = [
    (ValueError, "k must be >= 1", lambda: T.kmeans_1d(tt([1.0, 2.0]), 0)),
    (TypeError, "k must be an integer", lambda: T.kmeans_1d(tt([1.0, 2.0]), 2.0)),
    (TypeError, "k must be an integer", lambda: T.kmeans_1d(tt([1.0, 2.0]), True)),
    (ValueError, "finite", lambda: T.kmeans_1d(tt([1.0, np.nan]), 1)),
    (ValueError, "finite", lambda: T.kmeans_1d(tt([1.0, np.inf]), 1)),
    (ValueError, "must not be empty", lambda: T.kmeans_1d(torch.zeros(0, dtype=torch.float64), 1)),
    (TypeError, "torch.Tensor", lambda: T.kmeans_1d(np.array([1.0]), 1)),
    (TypeError, "floating-point", lambda: T.kmeans_1d(torch.tensor([1, 2]), 1)),
    (ValueError, "init must be one of", lambda: T.kmeans_1d(tt([1.0, 2.0]), 1, init="random")),
    (ValueError, "needs an explicit seed", lambda: T.kmeans_1d(tt([1.0, 2.0, 3.0]), 2, init="kmeans++")),
    (ValueError, "needs k < the number of distinct", lambda: T.initial_centroids(tt([1.0, 2.0]), 2, "kmeans++",
                                                                                  seed=0)),
    (ValueError, "needs init_centroids", lambda: T.kmeans_1d(tt([1.0, 2.0]), 1, init="warm")),
    (ValueError, "only used with init='warm'", lambda: T.kmeans_1d(tt([1.0, 2.0]), 1, init="linear",
                                                                   init_centroids=tt([0.0]))),
    (ValueError, r"shape \(2,\)", lambda: T.kmeans_1d(tt([1.0, 2.0]), 2, init_centroids=tt([0.0]))),
    (ValueError, "max_iter must be >= 0", lambda: T.kmeans_1d(tt([1.0, 2.0]), 1, max_iter=-1)),
    (ValueError, "method must be one of", lambda: T.kmeans_1d(tt([1.0, 2.0]), 1, method="fast")),
    (ValueError, "sorted ascending", lambda: T.assign(tt([1.0]), tt([2.0, 1.0]))),
    (ValueError, "1-D", lambda: T.assign(tt([1.0]), tt([[1.0, 2.0]]))),
    (ValueError, "finite", lambda: T.kmeans_fake_quantize(tt([1.0]), tt([0.0, np.nan]))),
]


@pytest.mark.parametrize("exc, match, call", BAD, ids=[f"{i}-{m}" for i, (_, m, _) in enumerate(BAD)])
def test_bad_input(exc, match, call):
    with pytest.raises(exc, match=match):
        call()


def test_k_larger_than_the_number_of_values_is_the_exact_rule():
    """Documented behaviour: no error — k ≥ #distinct gives the distinct values, then copies of the max."""
    got = T.kmeans_1d(tt([0.3, -1.0, 0.3]), 5)
    assert npy(got.centroids).tolist() == [-1.0, 0.3, 0.3, 0.3, 0.3]
    assert npy(got.labels).tolist() == [1, 0, 1]
    assert got.sse == 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(seed=S.seeds, k=st.integers(2, 300), on_midpoints=st.booleans())
def test_lookup_table_assignment_is_the_comparison_rule(device, dtype, seed, k, on_midpoints):
    """The large-input assignment (a table over 2^16 cells, one comparison per value) equals
    ``#{j : m_j < v}`` exactly — values placed exactly on midpoints included — or declines (``None``)."""
    rng = S.rng_from(seed)
    v = torch.from_numpy(rng.standard_t(3, 3000)).to(device=dev_type(device), dtype=dtype)
    c = torch.sort(v[torch.from_numpy(rng.choice(3000, k, replace=False)).to(dev_type(device))]).values
    m = T._midpoints(c)
    x = torch.cat([v, m]) if on_midpoints else v
    got = T._lut_labels(x, m)
    if got is not None:
        assert torch.equal(got, torch.searchsorted(m, x, right=False))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@given(v=S.cluster_values(), c=st.lists(st.sampled_from([-3.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 7.5]),
                                      min_size=1, max_size=8))
def test_sse_from_sorted_runs_equals_the_sse_of_the_labels(dtype, v, c):
    """kmeans_1d's SSE on the CPU sorted path sums run by run over the sorted values (no labels): it is
    the SSE of :func:`assign`'s labels — midpoint ties, duplicate centroids, values in any dtype — up to
    the summation order (float64: 1e-12 relative, plus 1e-300 for an exact 0)."""
    x = tt(v).to(dtype)
    cc = torch.sort(tt(c).to(dtype)).values
    want = T._sse(x, cc, T._assign(x, cc))
    got = T._sse_sorted(T._SortedValues(x.reshape(-1)), cc)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-300), f"sorted-run SSE {got!r} vs labels' SSE {want!r}"
