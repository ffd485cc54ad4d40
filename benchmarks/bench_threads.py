"""Which torch thread count trains fastest on this machine (pytest-benchmark; figures printed, nothing asserted).

Run: ``make bench`` (``REPSPEC_BENCH_SIZE=full``) or ``make bench-smoke``.

One training step (forward + backward + SGD step) of RepVGG at two shapes — the demo's
(``repvgg_tiny8``, batch 64 at 16x16, 10 classes) and RepVGG-A0 (batch 8 at 224x224, 1000
classes, full; batch 32 at 32x32, 10 classes, small) — with ``torch.set_num_threads(t)``
for ``t`` in 1, 2 and 4, the thread counts **interleaved** step by step so that load from
other processes on the shared machine hits every count alike. The result feeds
``repspec/runtime.py: DEFAULT_THREADS`` (the CLI's and the demo's default).
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from sizes import SIZE, pick

from repspec.torch_impl import create_model

THREADS = (1, 2, 4)
SHAPES = {"tiny8 (demo) b64 16x16": ("repvgg_tiny8", 64, 16, 10),
          "A0 " + pick("b32 32x32", "b8 224x224"): ("repvgg_a0",) + pick((32, 32, 10), (8, 224, 1000))}
ROUNDS = pick(4, 4)
RESULTS: dict[str, dict[int, list[float]]] = {}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_threads(benchmark, shape):
    name, b, image, classes = SHAPES[shape]
    torch.manual_seed(0)
    model = create_model(name, classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(b, 3, image, image, generator=g), torch.randint(0, classes, (b,), generator=g)
    old = torch.get_num_threads()
    times = {t: [] for t in THREADS}
    try:
        for r in range(ROUNDS + 1):
            for t in THREADS:
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
                if r:  # round 0 warms every thread count up
                    times[t].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    RESULTS[shape] = times


def test_report(capsys):
    if not RESULTS:
        pytest.skip("run with --benchmark-enable to get timings")
    lines = [f"size={SIZE}; os.cpu_count()={os.cpu_count()}, torch default threads at start "
             f"{torch.get_num_threads()}; thread counts interleaved; load avg {os.getloadavg()[0]:.1f}"]
    for shape, times in RESULTS.items():
        base = statistics.median(times[1])
        lines.append(f"{shape}: " + ", ".join(f"{t} thread(s) median {statistics.median(ts):.3f} s "
                                               f"({statistics.median(ts) / base:.2f}x of 1)" for t, ts in times.items())
                     + f"; fastest: {min(times, key=lambda t: statistics.median(times[t]))}")
    with capsys.disabled():
        print("\n" + "\n".join("[bench_threads] " + s for s in lines))
