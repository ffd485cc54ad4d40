"""SPEC §3 cost of the RepOptimizer (pytest-benchmark; figures and ratios printed, nothing asserted).

Run: ``make bench`` (``REPSPEC_BENCH_SIZE=full``) or ``make bench-smoke``.

1. Optimizer step on the parameters of RepOpt-VGG-A0 (1000 classes, every target conv masked):
   ``RepOptimizerSGD(foreach=True)`` vs ``torch.optim.SGD(foreach=True)``, same hyper-parameters
   (momentum 0.9, nesterov, weight decay 1e-4). Target ratio ≤ 1.10x.
2. One training step (forward + backward + optimizer step), A0 widths (separate runs, and interleaved at
   1 thread — the robust ratio on a shared machine): RepOpt-VGG-A0 +
   RepOptimizerSGD vs RepVGG-A0 (training-time branches) + torch.optim.SGD. Time ratio and
   peak-memory ratio. ``REPSPEC_BENCH_SIZE=full``: batch 8 at 224x224, 1000 classes (ImageNet
   shape, issue 11); ``small`` (default): batch 32 at 32x32, 10 classes.

Peak memory (CPU): each model runs in a fresh subprocess (``python benchmarks/bench_repopt.py
--peak-rss NAME``) with ``MALLOC_MMAP_THRESHOLD_=65536`` (every tensor buffer is mmapped and
returned to the OS on free, so RSS follows live memory); after one warm-up step and
``zero_grad(set_to_none=True)`` it reads VmRSS, runs one step, and reports
``ru_maxrss − VmRSS_before`` = the peak extra resident memory of a step (activations,
gradients, temporaries; the momentum buffers already exist). On CUDA one would use
``torch.cuda.max_memory_allocated`` instead.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # also runnable as a script (the --peak-rss child)
    sys.path.insert(0, str(ROOT))

from repspec.torch_impl.modules.models import create_model  # noqa: E402
from repspec.torch_impl.optimizers.repoptimizer import build_repoptimizer  # noqa: E402
from repspec.torch_impl.optimizers.scales import initial_scales  # noqa: E402

HP = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
FULL = os.environ.get("REPSPEC_BENCH_SIZE", "small") == "full"  # read here too: the peak-RSS child is a script
BATCH, IMAGE, CLASSES = (8, 224, 1000) if FULL else (32, 32, 10)
RESULTS: dict[str, float] = {}


def _scales(model):
    g = torch.Generator().manual_seed(0)
    return {k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=torch.float64))
            for k, v in initial_scales(model).items()}


def make_training(kind: str):
    """``(model, optimizer)`` for a training step: 'repopt' (RepOpt-VGG-A0 + RepOptimizerSGD) or
    'repvgg' (RepVGG-A0 + torch.optim.SGD), A0 widths, 10 classes."""
    torch.manual_seed(0)
    if kind == "repopt":
        model = create_model("repopt_vgg_a0", CLASSES)
        opt = build_repoptimizer(model, _scales(model), foreach=True, **HP)
    else:
        model = create_model("repvgg_a0", CLASSES)
        opt = torch.optim.SGD(model.parameters(), foreach=True, **HP)
    return model.train(), opt


def batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g),
            torch.randint(0, CLASSES, (BATCH,), generator=g))


def train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _record(benchmark, key):
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # median (robust on a shared machine) and min (best case)
        RESULTS[key] = stats.stats.median
        RESULTS[key + "_min"] = stats.stats.min


# --------------------------------------------------------------------- 1. optimizer step


@pytest.fixture(scope="module")
def a0_params():
    model = create_model("repopt_vgg_a0", 1000)
    g = torch.Generator().manual_seed(2)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return model


@pytest.mark.benchmark(group="optimizer-step (RepOpt-VGG-A0 params)")
@pytest.mark.parametrize("kind", ["torch_sgd_foreach", "repopt_sgd_foreach"])
def test_optimizer_step(benchmark, a0_params, kind):
    params = list(a0_params.parameters())
    if kind == "repopt_sgd_foreach":
        opt = build_repoptimizer(a0_params, _scales(a0_params), foreach=True, no_decay_bn=False, **HP)
        assert len(opt.grad_mult_masks) == 22
    else:
        opt = torch.optim.SGD(params, foreach=True, **HP)
    opt.step()  # momentum buffers exist from here on (the steady state is what is timed)
    benchmark.pedantic(opt.step, rounds=30, warmup_rounds=3, iterations=1)
    _record(benchmark, kind)


def test_optimizer_step_interleaved(a0_params):
    """The same ratio with the two optimizers' steps alternated (robust to load drift on a shared machine)."""
    import statistics
    import time

    ours = build_repoptimizer(a0_params, _scales(a0_params), foreach=True, no_decay_bn=False, **HP)
    theirs = torch.optim.SGD(a0_params.parameters(), foreach=True, **HP)
    times = {"ours": [], "theirs": []}
    for _ in range(3):
        ours.step()
        theirs.step()
    for _ in range(40):
        for key, opt in (("ours", ours), ("theirs", theirs)):
            t0 = time.perf_counter()
            opt.step()
            times[key].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(times["ours"], times["theirs"])]
    RESULTS["interleaved_median_ratio"] = statistics.median(ratios)
    RESULTS["interleaved_min_ratio"] = min(times["ours"]) / min(times["theirs"])


# --------------------------------------------------------------------- 2. training step


@pytest.mark.benchmark(group=f"train-step (A0, batch {BATCH}, {IMAGE}x{IMAGE})")
@pytest.mark.parametrize("kind", ["repvgg", "repopt"])
def test_train_step(benchmark, kind):
    model, opt = make_training(kind)
    x, y = batch()
    benchmark.pedantic(train_step, args=(model, opt, x, y), rounds=5 if FULL else 15, warmup_rounds=1 if FULL else 3,
                       iterations=1)
    _record(benchmark, f"train_{kind}")


def test_train_step_interleaved():
    """The two training steps alternated step by step, 1 thread (robust to load drift on a shared machine)."""
    import statistics
    import time

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {kind: make_training(kind) for kind in ("repvgg", "repopt")}
        x, y = batch()
        times = {kind: [] for kind in runs}
        for r in range(4 if FULL else 10):
            for kind, (model, opt) in runs.items():
                t0 = time.perf_counter()
                train_step(model, opt, x, y)
                if r:  # round 0 warms up (momentum buffers, allocator)
                    times[kind].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    ratios = [a / b for a, b in zip(times["repopt"], times["repvgg"])]
    RESULTS["train_interleaved_median_ratio"] = statistics.median(ratios)
    RESULTS["train_interleaved_means"] = (statistics.fmean(times["repopt"]), statistics.fmean(times["repvgg"]))


def _peak_rss_child(kind: str) -> dict:
    model, opt = make_training(kind)
    x, y = batch()
    train_step(model, opt, x, y)
    opt.zero_grad(set_to_none=True)
    before = _vmrss_bytes()
    train_step(model, opt, x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"kind": kind, "rss_before": before, "peak_extra": peak - before,
            "params": sum(p.numel() for p in model.parameters())}


def _vmrss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS via /proc and ru_maxrss (Linux)")
def test_peak_memory():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    for kind in ("repvgg", "repopt"):
        out = subprocess.run([sys.executable, __file__, "--peak-rss", kind], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        RESULTS[f"mem_{kind}"] = res["peak_extra"]
        RESULTS[f"params_{kind}"] = res["params"]


def test_report(capsys):
    """Print the figures and ratios measured above (skipped when benchmarks are disabled)."""
    if "repopt_sgd_foreach" not in RESULTS:
        pytest.skip("run with --benchmark-enable to get timings")
    lines = [f"machine: {platform.machine()} {platform.processor() or ''}, os.cpu_count()={os.cpu_count()}, "
             f"torch {torch.__version__}, torch threads={torch.get_num_threads()}"]
    r = RESULTS

    def pair(a, b):
        am, bm = r[a + "_min"], r[b + "_min"]
        return (f"median {r[a] * 1e3:.2f} vs {r[b] * 1e3:.2f} ms -> ratio {r[a] / r[b]:.3f}x; "
                f"min {am * 1e3:.2f} vs {bm * 1e3:.2f} ms -> ratio {am / bm:.3f}x")

    lines.append("optimizer step on RepOpt-VGG-A0 params, RepOptimizerSGD vs torch.optim.SGD (both foreach): "
                 + pair("repopt_sgd_foreach", "torch_sgd_foreach") + " (target <= 1.10x)")
    if "interleaved_median_ratio" in RESULTS:
        lines.append(f"optimizer step, interleaved (40 alternating pairs): median of per-pair ratios "
                     f"{RESULTS['interleaved_median_ratio']:.3f}x, "
                     f"ratio of mins {RESULTS['interleaved_min_ratio']:.3f}x")
    if "train_repopt" in RESULTS:
        lines.append(f"train step (fwd+bwd+step, A0, batch {BATCH}, {IMAGE}x{IMAGE}, {CLASSES} classes), RepOpt-VGG vs RepVGG: "
                     + pair("train_repopt", "train_repvgg"))
    if "train_interleaved_median_ratio" in RESULTS:
        a, b = RESULTS["train_interleaved_means"]
        lines.append(f"train step interleaved, 1 thread: RepOpt-VGG {a:.3f} s vs RepVGG {b:.3f} s (means) -> "
                     f"time ratio {a / b:.3f}x, median of per-round ratios "
                     f"{RESULTS['train_interleaved_median_ratio']:.3f}x (RepVGG/RepOpt speed-up {b / a:.2f}x)")
    if "mem_repopt" in RESULTS:
        a, b = RESULTS["mem_repopt"], RESULTS["mem_repvgg"]
        lines.append(f"peak extra RSS of a train step: RepOpt-VGG {a / 2**20:.1f} MiB vs RepVGG {b / 2**20:.1f} MiB "
                     f"-> memory ratio {a / b:.3f}x (params {RESULTS['params_repopt']:,} vs "
                     f"{RESULTS['params_repvgg']:,})")
    with capsys.disabled():
        print("\n" + "\n".join("[bench_repopt] " + s for s in lines))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--peak-rss":
    print(json.dumps(_peak_rss_child(sys.argv[2])))
