"""Which k-means init should be the default? (SPEC §5; the table in docs/05-quantization.md)

Heavy-tailed "weights" (Student-t, df=3), n values, k ∈ {4, 8, 16}, several seeds. For
each repspec init (Lloyd until no change or max_iter=300 after the init) and for
scikit-learn's KMeans (k-means++, Lloyd, default tol), report the SSE relative to the
exact DP optimum (``kmeans_1d_optimal``): mean and worst over seeds, the mean number
of Lloyd iterations, and the mean wall time.

    python benchmarks/kmeans_init_study.py                 # the table in the docs
    python benchmarks/kmeans_init_study.py --n 200000 --seeds 1 --ks 16

Not a test: it prints a Markdown table and takes ~1 minute on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from repspec.reference.kmeans import kmeans_1d, kmeans_1d_optimal, sse


def _row(name, ratios, iters, times):
    it = "—" if iters is None else f"{np.mean(iters):.0f}"
    return f"| {name} | {np.mean(ratios):.4f} | {np.max(ratios):.4f} | {it} | {1e3 * np.mean(times):.0f} |"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--df", type=float, default=3.0)
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-iter", type=int, default=300)
    args = ap.parse_args(argv)
    try:
        from sklearn.cluster import KMeans
    except ImportError:  # the table is still useful without the peer
        KMeans = None

    print(f"Student-t df={args.df:g}, n={args.n}, seeds 0..{args.seeds - 1}, max_iter={args.max_iter}; "
          "SSE / SSE(DP optimum)\n")
    for k in args.ks:
        print(f"k = {k}\n")
        print("| init | mean SSE ratio | worst SSE ratio | mean Lloyd iters | mean ms |")
        print("|---|---|---|---|---|")
        res: dict[str, tuple[list, list, list]] = {}

        def add(name, ratio, it, dt):
            r = res.setdefault(name, ([], [], []))
            r[0].append(ratio)
            r[1].append(it)
            r[2].append(dt)

        for seed in range(args.seeds):
            v = np.random.default_rng(seed).standard_t(args.df, args.n)
            t0 = time.perf_counter()
            opt = kmeans_1d_optimal(v, k)
            add("`kmeans_1d_optimal` (DP, no Lloyd)", 1.0, None, time.perf_counter() - t0)
            for init in ("linear", "quantile", "kmeans++", "optimal"):
                t0 = time.perf_counter()
                r = kmeans_1d(v, k, init=init, seed=seed, max_iter=args.max_iter)
                add(f"`{init}` + Lloyd", r.sse / opt.sse, r.n_iter, time.perf_counter() - t0)
            if KMeans is not None:
                for n_init in (1, 10):
                    t0 = time.perf_counter()
                    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed,
                                max_iter=args.max_iter).fit(v.reshape(-1, 1))
                    dt = time.perf_counter() - t0
                    s = sse(v, np.sort(km.cluster_centers_.ravel()))
                    add(f"sklearn KMeans k-means++, n_init={n_init}", s / opt.sse, km.n_iter_, dt)
        for name, (ratios, iters, times) in res.items():
            print(_row(name, ratios, None if iters[0] is None else iters, times))
        print()


if __name__ == "__main__":
    main()
