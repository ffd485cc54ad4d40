"""SPEC §5 cost of the torch 1-D k-means (pytest-benchmark; figures and ratios printed, nothing asserted).

Run: ``make bench`` (``REPSPEC_BENCH_SIZE=full``) or ``make bench-smoke`` (small sizes).

Data (full): 10^6 float32 Student-t (df = 3) values, seed 0 — heavy tails like merged
kernels — and one 512x512x3x3 float32 layer (2.36M weights, N(0, 0.02²): the size of a
RepVGG-B1 stage-3 conv). Small: 10^5 values and a 128x128x3x3 layer. k = 16 and 256.
Both sides single-threaded (``torch.set_num_threads(1)``; scikit-learn under
``threadpoolctl.threadpool_limits(1)``) so the ratio is reproducible on a shared 2-core
machine; ours and scikit-learn run **alternately** (interleaved rounds), so load from
other processes hits both alike.

* ours, the default (``init='binned'``): the exact DP over a few hundred runs, then Lloyd;
* ours, ``kmeans_1d_optimal`` (the exact DP on every distinct value), k = 16, 10^6 values;
* scikit-learn ``KMeans(k, n_init=1)`` (k-means++ init, Lloyd, ``tol=1e-4``).

Reported: min and median seconds, the speed-up (sklearn / ours, of the mins) and the SSE
ratio (ours / sklearn; every SSE evaluated the same way, float64, nearest centroid).
Targets: default ≥ 50x at SSE ≤ 1; optimal ≤ 1x sklearn's time at k = 16.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
import pytest
import torch

from sizes import SIZE, pick
from repspec.torch_impl.quantization import kmeans as T

SEED = 0
N = pick(100_000, 1_000_000)
LAYER = pick((128, 128, 3, 3), (512, 512, 3, 3))
ROUNDS = pick(2, 3)
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def datasets():
    rng = np.random.default_rng(SEED)
    return {f"t3 x{N:,}": rng.standard_t(3, N).astype(np.float32),
            "layer " + "x".join(map(str, LAYER)): (rng.standard_normal(LAYER) * 0.02).astype(np.float32).ravel()}


pytestmark = pytest.mark.usefixtures("one_thread")  # benchmarks/conftest.py


def _sse(values: torch.Tensor, centroids) -> float:
    c = torch.sort(torch.as_tensor(np.asarray(centroids, dtype=np.float64))).values
    return T.sse(values.double(), c)


def _sklearn(x: np.ndarray, k: int):
    cluster = pytest.importorskip("sklearn.cluster")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        return cluster.KMeans(k, n_init=1, random_state=SEED).fit(x.reshape(-1, 1)).cluster_centers_.ravel()


def _interleaved(fns: dict, rounds: int) -> tuple[dict, dict]:
    times = {name: [] for name in fns}
    out = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return times, out


@pytest.mark.parametrize("k", [16, 256])
@pytest.mark.parametrize("data", ["t3", "layer"])
def test_default_vs_sklearn(benchmark, datasets, data, k):
    name = next(n for n in datasets if n.startswith(data))
    x = datasets[name]
    v = torch.from_numpy(x)
    T.kmeans_1d(v, k)  # warm-up
    times, out = _interleaved({"ours": lambda: T.kmeans_1d(v, k).centroids, "sklearn": lambda: _sklearn(x, k)},
                              1 if k == 256 and SIZE == "full" else ROUNDS)
    benchmark.pedantic(T.kmeans_1d, args=(v, k), rounds=ROUNDS, iterations=1)
    RESULTS[f"default {name} k={k}"] = dict(times=times, sse=_sse(v, out["ours"]) / _sse(v, out["sklearn"]),
                                            target="≥ 50x at SSE ≤ 1")


def test_optimal_vs_sklearn(benchmark, datasets):
    name = next(n for n in datasets if n.startswith("t3"))
    x = datasets[name]
    v = torch.from_numpy(x)
    times, out = _interleaved({"ours": lambda: T.kmeans_1d_optimal(v, 16).centroids,
                               "sklearn": lambda: _sklearn(x, 16)}, 1)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    RESULTS[f"optimal {name} k=16"] = dict(times=times, sse=_sse(v, out["ours"]) / _sse(v, out["sklearn"]),
                                           target="time ≤ 1x sklearn")


def test_report(capsys):
    """Print the figures and ratios measured above (skipped when benchmarks are disabled)."""
    if not RESULTS:
        pytest.skip("run with --benchmark-enable to get timings")
    lines = [f"size={SIZE}; machine: {platform.machine()}, os.cpu_count()={os.cpu_count()}, torch {torch.__version__}, "
             f"1 thread each, ours and sklearn interleaved; load avg {os.getloadavg()[0]:.1f}"]
    for key, r in RESULTS.items():
        o, s = r["times"]["ours"], r["times"]["sklearn"]
        lines.append(f"{key:32s} ours min {min(o):8.3f} s (median {statistics.median(o):.3f}) | sklearn n_init=1 "
                     f"min {min(s):8.3f} s | speed-up {min(s) / min(o):7.1f}x | SSE ours/sklearn {r['sse']:.5f} "
                     f"| target {r['target']}")
    with capsys.disabled():
        print("\n" + "\n".join("[bench_kmeans] " + s for s in lines))
