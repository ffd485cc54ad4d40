"""SPEC §2 payoff of re-parameterization: deployed vs training-form inference (pytest-benchmark).

Run: ``.venv/bin/python -m pytest benchmarks/bench_deploy.py --benchmark-enable -q``

RepVGG-A0 widths (10 classes), batch 32 at 32x32, float32, ``eval()`` + ``torch.no_grad()``:

1. inference of the training-form model (three branches + BN per block) vs the model from
   ``convert_to_deploy`` (one 3x3 conv + bias + ReLU per block), same inputs, same outputs;
2. the one-off cost of ``convert_to_deploy`` itself.

Figures and the time ratio are printed by ``test_report`` (nothing is asserted except that the
two forms agree). Medians are reported because the machine may be shared.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from repspec.torch_impl.modules.deploy import convert_to_deploy  # noqa: E402
from repspec.torch_impl.modules.models import create_model  # noqa: E402

ARCH = "repvgg_a0"
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BN statistics so the fused kernels are realistic
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    model.eval()
    deployed = convert_to_deploy(model)
    x = torch.randn(32, 3, 32, 32, generator=g)
    with torch.no_grad():
        err = (model(x) - deployed(x)).abs().max().item()
    assert err < 1e-3, f"deployed and training-form outputs differ by {err}"
    return model, deployed, x


def _record(benchmark, key):
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[key] = stats.stats.median
        RESULTS[key + "_min"] = stats.stats.min


@pytest.mark.benchmark(group=f"inference ({ARCH}, batch 32, 32x32, float32)")
@pytest.mark.parametrize("form", ["train_form", "deployed"])
def test_inference(benchmark, models, form):
    model, deployed, x = models
    net = model if form == "train_form" else deployed

    def run():
        with torch.no_grad():
            return net(x)

    benchmark.pedantic(run, rounds=20, warmup_rounds=3, iterations=1)
    _record(benchmark, form)


@pytest.mark.benchmark(group="conversion")
def test_convert_to_deploy(benchmark, models):
    model, _, _ = models
    benchmark.pedantic(convert_to_deploy, args=(model,), rounds=5, warmup_rounds=1, iterations=1)
    _record(benchmark, "convert")


def _interleaved_medians(model, deployed, x, rounds: int = 15) -> tuple[float, float]:
    """Alternate the two forms round by round, so load from other processes hits both alike."""
    times = {"train_form": [], "deployed": []}
    with torch.no_grad():
        for _ in range(rounds):
            for key, net in (("train_form", model), ("deployed", deployed)):
                t0 = time.perf_counter()
                net(x)
                times[key].append(time.perf_counter() - t0)
    return statistics.median(times["train_form"]), statistics.median(times["deployed"])


def test_report(capsys, models):
    """Print the figures and the deployed / training-form ratio (skipped when benchmarks are disabled)."""
    if "deployed" not in RESULTS or "train_form" not in RESULTS:
        pytest.skip("run with --benchmark-enable to get timings")
    tf, dp = _interleaved_medians(*models)
    r = RESULTS
    lines = [f"machine: {platform.machine()}, os.cpu_count()={os.cpu_count()}, torch {torch.__version__}, "
             f"torch threads={torch.get_num_threads()}",
             f"{ARCH} inference, batch 32, 32x32: training form median {r['train_form'] * 1e3:.2f} ms "
             f"(min {r['train_form_min'] * 1e3:.2f}), deployed median {r['deployed'] * 1e3:.2f} ms "
             f"(min {r['deployed_min'] * 1e3:.2f}) -> deployed/train-form time ratio "
             f"{r['deployed'] / r['train_form']:.3f}x (min-based {r['deployed_min'] / r['train_form_min']:.3f}x), "
             f"speed-up {r['train_form'] / r['deployed']:.2f}x"]
    lines.append(f"interleaved rounds (same run): training form median {tf * 1e3:.2f} ms, deployed median "
                 f"{dp * 1e3:.2f} ms -> ratio {dp / tf:.3f}x, speed-up {tf / dp:.2f}x")
    if "convert" in r:
        lines.append(f"convert_to_deploy({ARCH}): median {r['convert'] * 1e3:.1f} ms")
    with capsys.disabled():
        print("\n" + "\n".join("[bench_deploy] " + s for s in lines))
