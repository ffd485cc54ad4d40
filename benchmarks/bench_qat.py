"""SPEC §5 cost of ClusterQAT vs uniform QAT (pytest-benchmark; figures and ratios printed, nothing asserted).

Run: ``.venv/bin/python -m pytest benchmarks/bench_qat.py --benchmark-enable -q -s``

One training step (forward + backward + SGD step) of a RepVGG-A0-shaped model (A0 widths
and depths, 10 classes, trained-looking BN statistics), batch 32 at 32x32, wrapped by
:func:`repspec.torch_impl.quantization.qat.make_qat_model` (first block FP32, 8-bit activations):

* ``uniform``: :class:`~repspec.torch_impl.quantization.qat.UniformWeightQuantizer` (4 bits, per layer);
* ``cluster_every1``: :class:`~repspec.torch_impl.quantization.qat.KMeansWeightQuantizer` (4 bits = 16
  centroids, ``update_every=1``: a warm-started Lloyd refit of all 21 layers, ~7M weights,
  at every step);
* ``cluster_every10``: the same with ``update_every=10`` (9 steps out of 10 only assign).

The k-means quantizers are fitted at wrap time with ``init='binned'`` (the exact DP on
10^6-value layers takes tens of seconds; the refits are warm starts either way).
Single-threaded (``torch.set_num_threads(1)``), so the figures are reproducible on a
shared 2-core machine. Reported: median and mean step time (the mean includes the
refit steps of ``update_every=10``) and the ratios to uniform QAT, once from separate
pytest-benchmark runs and once from an interleaved run (the three models step in turn,
so load drift on a shared machine hits all of them alike — the figure to quote).
"""

from __future__ import annotations

import os
import platform

import pytest
import torch
import torch.nn.functional as F

from repspec.torch_impl import create_model
from repspec.torch_impl.quantization import qat as TQ

RESULTS: dict[str, float] = {}
ROUNDS = 20


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    model = create_model("repvgg_a0", 10)
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
    return torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)


QUANTIZERS = {
    "uniform": lambda: TQ.UniformWeightQuantizer(4),
    "cluster_every1": lambda: TQ.KMeansWeightQuantizer(4, update_every=1, init="binned"),
    "cluster_every10": lambda: TQ.KMeansWeightQuantizer(4, update_every=10, init="binned"),
}


def train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.benchmark(group="QAT train step (RepVGG-A0 shape, batch 32, 32x32, 1 thread)")
@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_train_step(benchmark, base_model, name):
    model = TQ.make_qat_model(base_model, weight_quantizer=QUANTIZERS[name](), act_bits=8).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = batch()
    train_step(model, opt, x, y)  # momentum buffers exist from here on
    benchmark.pedantic(train_step, args=(model, opt, x, y), rounds=ROUNDS, warmup_rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[name] = stats.stats.median
        RESULTS[name + "_mean"] = stats.stats.mean


def test_train_step_interleaved(base_model):
    """The same steps with the three models alternated, step by step (robust to load drift on a shared
    machine): per-round ratios to the uniform step, their median, and the ratio of the mean times."""
    import statistics
    import time

    models = {}
    for name, make in QUANTIZERS.items():
        model = TQ.make_qat_model(base_model, weight_quantizer=make(), act_bits=8).train()
        models[name] = (model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    x, y = batch()
    for model, opt in models.values():
        train_step(model, opt, x, y)
    times = {name: [] for name in models}
    for _ in range(ROUNDS):
        for name, (model, opt) in models.items():
            t0 = time.perf_counter()
            train_step(model, opt, x, y)
            times[name].append(time.perf_counter() - t0)
    for name in models:
        ratios = [a / b for a, b in zip(times[name], times["uniform"])]
        RESULTS[f"interleaved_{name}_median_ratio"] = statistics.median(ratios)
        RESULTS[f"interleaved_{name}_mean_ratio"] = statistics.fmean(times[name]) / statistics.fmean(times["uniform"])
        RESULTS[f"interleaved_{name}_mean"] = statistics.fmean(times[name])


def test_report(capsys):
    """Print the figures and ratios measured above (skipped when benchmarks are disabled)."""
    if "uniform" not in RESULTS:
        pytest.skip("run with --benchmark-enable to get timings")
    r = RESULTS
    lines = [f"machine: {platform.machine()} {platform.processor() or ''}, os.cpu_count()={os.cpu_count()}, "
             f"torch {torch.__version__}, 1 thread; RepVGG-A0 shape, batch 32 at 32x32, 4-bit weights, 8-bit acts"]
    for name in QUANTIZERS:
        if name in r:
            lines.append(f"{name:16s} median {r[name] * 1e3:8.1f} ms, mean {r[name + '_mean'] * 1e3:8.1f} ms; "
                         f"ratio to uniform: median {r[name] / r['uniform']:.2f}x, "
                         f"mean {r[name + '_mean'] / r['uniform_mean']:.2f}x (target <= 1.2x)")
    for name in QUANTIZERS:
        key = f"interleaved_{name}"
        if key + "_mean" in r:
            lines.append(f"interleaved {name:16s} mean {r[key + '_mean'] * 1e3:8.1f} ms; ratio to uniform: "
                         f"median of per-round ratios {r[key + '_median_ratio']:.2f}x, "
                         f"ratio of means {r[key + '_mean_ratio']:.2f}x")
    with capsys.disabled():
        print("\n" + "\n".join("[bench_qat] " + s for s in lines))
