"""SPEC §5 cost of every PTQ calibrator (pytest-benchmark; figures and ratios printed, nothing asserted).

Run: ``make bench`` (``REPSPEC_BENCH_SIZE=full``) or ``make bench-smoke``.

:func:`repspec.torch_impl.quantization.ptq.ptq_quantize` (W8A8, per-layer, first/last
block FP32) of a registry model on synthetic images (``torch.randn``, seed 1); each
calibrator runs once per round and the rounds alternate the calibrators (interleaved), so
load drift on a shared machine hits all alike. Small: ``repvgg_tiny8`` at 16x16
(the demo's model and image size), 4 batches of 64. Full: ``repvgg_a0`` and
``repvgg_b1`` at 3x224x224, 2 batches of 8 (ImageNet shape). 1 torch thread.
Target: ``mse`` ≤ 3x ``minmax``.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
from sizes import SIZE, pick

from repspec.torch_impl import create_model
from repspec.torch_impl.quantization.observers import METHODS
from repspec.torch_impl.quantization.ptq import ptq_quantize

CASES = pick([("repvgg_tiny8", 16, 64, 4)], [("repvgg_a0", 224, 8, 2), ("repvgg_b1", 224, 8, 2)])
ROUNDS = pick(2, 1)
RESULTS: dict[str, dict[str, list[float]]] = {}


pytestmark = pytest.mark.usefixtures("one_thread")  # benchmarks/conftest.py


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_calibrators(benchmark, case):
    name, image, batch, batches = case
    torch.manual_seed(0)
    model = create_model(name, 1000 if image == 224 else 10).eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(batch, 3, image, image, generator=g) for _ in range(batches)]
    times = {m: [] for m in METHODS}
    for _ in range(ROUNDS):
        for method in METHODS:
            t0 = time.perf_counter()
            ptq_quantize(model, data, weight_bits=8, act_bits=8, calibrator=method, num_batches=batches,
                         progress=False)
            times[method].append(time.perf_counter() - t0)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    RESULTS[f"{name} {image}x{image}, {batches}x{batch}"] = times


def test_report(capsys):
    if not RESULTS:
        pytest.skip("run with --benchmark-enable to get timings")
    lines = [f"size={SIZE}; 1 thread, calibrators interleaved, W8A8 ptq_quantize; load avg {os.getloadavg()[0]:.1f}"]
    for key, times in RESULTS.items():
        base = min(times["minmax"])
        parts = [f"{m} {min(t):.2f} s ({min(t) / base:.2f}x)" for m, t in times.items()]
        lines.append(f"{key}: " + ", ".join(parts) + f"; mse/minmax {min(times['mse']) / base:.2f}x (target ≤ 3x); "
                     f"medians: " + ", ".join(f"{m} {statistics.median(t):.2f}" for m, t in times.items()))
    with capsys.disabled():
        print("\n" + "\n".join("[bench_calibrators] " + s for s in lines))
