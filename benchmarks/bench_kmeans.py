"""SPEC §5 cost of the torch 1-D k-means (pytest-benchmark; figures and ratios printed, nothing asserted).

Run: ``.venv/bin/python -m pytest benchmarks/bench_kmeans.py --benchmark-enable -q -s``

Data: 10^6 float32 values, Student-t (df = 3, heavy tails like merged kernels), seed 0; k = 16.
Both sides run single-threaded (``torch.set_num_threads(1)``; scikit-learn under
``threadpoolctl.threadpool_limits(1)``) so that the ratio is reproducible on a shared
2-core machine.

* ours, ``init='binned'`` — the fast path: the exact DP over ≤ 2·4096 bins (equal-count and
  equal-width edges), then Lloyd on all values (sorted once, ``O(k log n)`` per iteration);
* ours, ``init='kmeans++'`` (seed 0) — Lloyd to convergence (``max_iter=1000``);
* ours, ``init='optimal'`` — the exact DP on all 10^6 values (one round: slow on purpose,
  it is the reference point for the SSE);
* scikit-learn ``KMeans(16, n_init=1)`` (its k-means++ default ``n_init='auto'`` = 1) and
  ``n_init=10``, Lloyd with its default ``tol=1e-4``.

Every SSE is evaluated the same way: float64, each value assigned to its nearest centroid
(:func:`repspec.torch_impl.quantization.kmeans.sse`). The report gives time ratios (sklearn / ours) and
SSE ratios (against the exact optimum).
"""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest
import torch

from repspec.torch_impl.quantization import kmeans as T

N, K, SEED = 1_000_000, 16, 0
RESULTS: dict[str, float] = {}
SSE: dict[str, float] = {}


@pytest.fixture(scope="module")
def values():
    return torch.from_numpy(np.random.default_rng(SEED).standard_t(3, N).astype(np.float32))


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _record(benchmark, key):
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[key] = stats.stats.median
        RESULTS[key + "_min"] = stats.stats.min


def _sse(values, centroids) -> float:
    c = torch.sort(torch.as_tensor(np.asarray(centroids, dtype=np.float64))).values
    return T.sse(values.double(), c)


OURS = {
    "binned": dict(init="binned"),
    "kmeans++": dict(init="kmeans++", seed=0, max_iter=1000),
}


@pytest.mark.benchmark(group="1-D k-means, 10^6 float32, k=16")
@pytest.mark.parametrize("name", list(OURS))
def test_ours(benchmark, values, name):
    result = benchmark.pedantic(T.kmeans_1d, args=(values, K), kwargs=OURS[name], rounds=5, warmup_rounds=1,
                                iterations=1)
    SSE[f"ours_{name}"] = _sse(values, result.centroids)
    RESULTS[f"ours_{name}_iters"] = result.n_iter
    _record(benchmark, f"ours_{name}")


@pytest.mark.benchmark(group="1-D k-means, 10^6 float32, k=16")
def test_ours_exact_dp(benchmark, values):
    result = benchmark.pedantic(T.kmeans_1d_optimal, args=(values, K), rounds=1, iterations=1)
    SSE["optimal"] = _sse(values, result.centroids)
    _record(benchmark, "ours_optimal")


@pytest.mark.benchmark(group="1-D k-means, 10^6 float32, k=16")
@pytest.mark.parametrize("n_init", [1, 10])
def test_sklearn(benchmark, values, n_init):
    cluster = pytest.importorskip("sklearn.cluster")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = values.numpy().reshape(-1, 1)

    def fit():
        with threadpoolctl.threadpool_limits(1):
            return cluster.KMeans(K, n_init=n_init, random_state=0).fit(x)

    km = benchmark.pedantic(fit, rounds=3 if n_init == 1 else 1, iterations=1)
    SSE[f"sklearn_{n_init}"] = _sse(values, km.cluster_centers_.ravel())
    _record(benchmark, f"sklearn_{n_init}")


def test_report(capsys):
    """Print the figures and ratios measured above (skipped when benchmarks are disabled)."""
    if "ours_binned" not in RESULTS:
        pytest.skip("run with --benchmark-enable to get timings")
    r = RESULTS
    opt = SSE.get("optimal")
    lines = [f"machine: {platform.machine()} {platform.processor() or ''}, os.cpu_count()={os.cpu_count()}, "
             f"torch {torch.__version__}, 1 thread each; n={N:,} float32 t(3), k={K}"]
    for key in ("ours_binned", "ours_kmeans++", "ours_optimal", "sklearn_1", "sklearn_10"):
        if key not in r:
            continue
        sse_key = "optimal" if key == "ours_optimal" else key
        rel = f", SSE/optimum {SSE[sse_key] / opt:.7f}" if opt else ""
        iters = f", {int(r[key + '_iters'])} Lloyd iterations" if key + "_iters" in r else ""
        lines.append(f"{key:14s} median {r[key] * 1e3:9.1f} ms (min {r[key + '_min'] * 1e3:9.1f} ms), "
                     f"SSE {SSE[sse_key]:.6f}{rel}{iters}")
    for ours in ("ours_binned", "ours_kmeans++"):
        for theirs in ("sklearn_1", "sklearn_10"):
            if ours in r and theirs in r:
                lines.append(f"speed-up {ours} vs {theirs}: {r[theirs] / r[ours]:.1f}x (median), "
                             f"{r[theirs + '_min'] / r[ours + '_min']:.1f}x (min); "
                             f"SSE {'<=' if SSE[ours] <= SSE[theirs] else '>'} sklearn's "
                             f"({SSE[ours] / SSE[theirs]:.7f})")
    with capsys.disabled():
        print("\n" + "\n".join("[bench_kmeans] " + s for s in lines))
