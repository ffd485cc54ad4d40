"""SPEC §5 cost of ClusterQAT vs uniform QAT (pytest-benchmark; figures and ratios printed, nothing asserted).

Run: ``make bench`` (``REPSPEC_BENCH_SIZE=full``) or ``make bench-smoke``.

1. **First fit** — :func:`repspec.torch_impl.quantization.qat.make_qat_model` with
   ``KMeansWeightQuantizer(bits)`` (the default init) fits every quantized layer's codebook
   on its fused kernel before the first step. Full: ``repvgg_a0`` and ``repvgg_b1`` (1000
   classes) at 4 and 8 bits (16 / 256 centroids); small: ``repvgg_a0`` at 4 bits. Reported in
   seconds and as a ratio to one uniform-QAT training step of the same model (batch 8 at
   224x224 full; batch 32 at 32x32 small). **Time to first step**: model wrap (first fit)
   + the first ClusterQAT training step — the target "starts training within a minute" for
   B1 at 8 bits.
2. **Steady-state step** (forward + backward + SGD step), RepVGG-A0, 4-bit weights, 8-bit
   activations: ``uniform`` vs ``cluster_every1`` (warm Lloyd refit of every layer each
   step) vs ``cluster_every10`` (the CLI's ``--update-every`` default), rounds interleaved.
Synthetic data; trained-looking BN statistics; 1 torch thread (shared 2-core machine).
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
from repspec.torch_impl.quantization import qat as TQ

BATCH, IMAGE, CLASSES = pick((32, 32, 10), (8, 224, 1000))
FIT_CASES = pick([("repvgg_a0", 4)], [("repvgg_a0", 4), ("repvgg_a0", 8), ("repvgg_b1", 4), ("repvgg_b1", 8)])
ROUNDS = pick(5, 3)
RESULTS: dict[str, dict] = {}


pytestmark = pytest.mark.usefixtures("one_thread")  # benchmarks/conftest.py


def trained_looking(name: str):
    torch.manual_seed(0)
    model = create_model(name, CLASSES)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.3, generator=g)
                m.running_mean.normal_(0.0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)


def train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _timed_steps(model, steps: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x, y = batch()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(model, opt, x, y)
        out.append(time.perf_counter() - t0)
    return out


@pytest.mark.parametrize("case", FIT_CASES, ids=[f"{n}-{b}bit" for n, b in FIT_CASES])
def test_first_fit(benchmark, case):
    name, bits = case
    base = trained_looking(name).train()
    t0 = time.perf_counter()
    model = TQ.make_qat_model(base, weight_quantizer=TQ.KMeansWeightQuantizer(bits, update_every=10), act_bits=8,
                              progress=True)
    fit = time.perf_counter() - t0
    first_step = _timed_steps(model, 1)[0]
    uniform = TQ.make_qat_model(base, weight_quantizer=TQ.UniformWeightQuantizer(bits), act_bits=8).train()
    uniform_step = min(_timed_steps(uniform, 2))  # the first one warms up
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    layers = sum(1 for b in TQ.qat_blocks(model).values() if b.weight_quant is not None)
    RESULTS[f"first fit {name} {bits}-bit"] = dict(fit=fit, first_step=first_step, uniform_step=uniform_step,
                                                  layers=layers)


def test_train_step_interleaved(benchmark):
    base = trained_looking("repvgg_a0").train()
    quantizers = {"uniform": TQ.UniformWeightQuantizer(4),
                  "cluster_every1": TQ.KMeansWeightQuantizer(4, update_every=1),
                  "cluster_every10": TQ.KMeansWeightQuantizer(4, update_every=10)}
    models = {}
    for name, wq in quantizers.items():
        model = TQ.make_qat_model(base, weight_quantizer=wq, act_bits=8).train()
        models[name] = (model, torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9))
    x, y = batch()
    for model, opt in models.values():
        train_step(model, opt, x, y)
    times = {name: [] for name in models}
    for _ in range(ROUNDS * (2 if SIZE == "small" else 4)):
        for name, (model, opt) in models.items():
            t0 = time.perf_counter()
            train_step(model, opt, x, y)
            times[name].append(time.perf_counter() - t0)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    RESULTS["steady"] = times


def test_report(capsys):
    """Print the figures and ratios measured above (skipped when benchmarks are disabled)."""
    if not RESULTS:
        pytest.skip("run with --benchmark-enable to get timings")
    lines = [f"size={SIZE}; 1 thread; train step batch {BATCH} at {IMAGE}x{IMAGE}, {CLASSES} classes; "
             f"load avg {os.getloadavg()[0]:.1f}"]
    for key, r in RESULTS.items():
        if key == "steady":
            continue
        lines.append(f"{key}: first fit of {r['layers']} layers {r['fit']:.2f} s = {r['fit'] / r['uniform_step']:.1f}x "
                     f"one uniform-QAT step ({r['uniform_step']:.2f} s); time to first step (fit + first ClusterQAT "
                     f"step) {r['fit'] + r['first_step']:.1f} s")
    if "steady" in RESULTS:
        t = RESULTS["steady"]
        u = statistics.fmean(t["uniform"])
        for name, ts in t.items():
            ratios = [a / b for a, b in zip(ts, t["uniform"])]
            lines.append(f"steady-state A0 step {name:16s} mean {statistics.fmean(ts):.3f} s; ratio to uniform: "
                         f"of means {statistics.fmean(ts) / u:.2f}x, median per-round {statistics.median(ratios):.2f}x")
    with capsys.disabled():
        print("\n" + "\n".join("[bench_qat] " + s for s in lines))
