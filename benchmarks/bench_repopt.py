"""SPEC §3 cost of the RepOptimizer (pytest-benchmark; figures and ratios printed, nothing asserted).

Run: ``make bench`` (``REPSPEC_BENCH_SIZE=full``) or ``make bench-smoke``.

1. Optimizer step on the parameters of RepOpt-VGG-A0 (1000 classes, 8.3M parameters in 68
   tensors, every one of the 22 target convs masked), one torch thread, the optimizers of a
   group **interleaved** round by round (the robust ratio on a shared machine; the load
   average is printed with every figure):

   - SGD (momentum 0.9, Nesterov, weight decay 1e-4): ``torch.optim.SGD(fused=True)``,
     ``torch.optim.SGD(foreach=True)``, ``RepOptimizerSGD(foreach=True)`` and
     ``RepOptimizerSGD(fused=True)``. Target: RepOpt fused / torch fused ≤ 1.30x.
   - AdamW (lr 1e-3, weight decay 0.05, exponent-1 masks, the mask on gradient and update):
     ``torch.optim.AdamW(fused=True)``, ``RepOptimizerAdamW`` and
     ``RepOptimizerAdamW(fused=True)``. Target: RepOpt fused / torch fused ≤ 1.30x.
   - The same on CUDA when a device is present (skipped otherwise; AdamW with
     ``mask_placement='grad'``, the placement torch's fused kernel can run).

   The pytest-benchmark entries time the same steps one optimizer at a time.
2. One training step (forward + backward + optimizer step), A0 widths, interleaved at 1
   thread: RepOpt-VGG-A0 + RepOptimizerSGD vs RepVGG-A0 (training-time branches) +
   torch.optim.SGD, once with both optimizers ``foreach=True`` and once with both
   ``fused=True``. Time ratio and peak-memory ratio. ``REPSPEC_BENCH_SIZE=full``: batch 8
   at 224x224, 1000 classes (ImageNet shape); ``small`` (default): batch 32 at 32x32, 10 classes.

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
import statistics
import subprocess
import sys
import time
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
ADAMW_HP = dict(lr=1e-3, weight_decay=0.05)
FULL = os.environ.get("REPSPEC_BENCH_SIZE", "small") == "full"  # read here too: the peak-RSS child is a script
BATCH, IMAGE, CLASSES = (8, 224, 1000) if FULL else (32, 32, 10)
STEP_ROUNDS = 40 if FULL else 15
TRAIN_KINDS = ("repvgg", "repopt", "repvgg_fused", "repopt_fused")
RESULTS: dict[str, object] = {}

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CUDA variant not run")


def _load() -> str:
    return f"load avg {os.getloadavg()[0]:.2f}"


def _scales(model):
    g = torch.Generator().manual_seed(0)
    return {k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=torch.float64))
            for k, v in initial_scales(model).items()}


def make_training(kind: str):
    """``(model, optimizer)`` for a training step: 'repopt' (RepOpt-VGG-A0 + RepOptimizerSGD) or 'repvgg'
    (RepVGG-A0 + torch.optim.SGD), A0 widths; ``foreach=True``, or ``fused=True`` for the '_fused' kinds."""
    torch.manual_seed(0)
    mode = dict(fused=True) if kind.endswith("_fused") else dict(foreach=True)
    if kind.startswith("repopt"):
        model = create_model("repopt_vgg_a0", CLASSES)
        opt = build_repoptimizer(model, _scales(model), **mode, **HP)
    else:
        model = create_model("repvgg_a0", CLASSES)
        opt = torch.optim.SGD(model.parameters(), **mode, **HP)
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


def _a0_params(device="cpu"):
    model = create_model("repopt_vgg_a0", 1000).to(device)
    g = torch.Generator().manual_seed(2)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=g) * 1e-3).to(device)
    return model


def make_step_optimizer(kind: str, model, *, placement: str = "grad_and_update"):
    """The optimizer ``kind`` over ``model``'s parameters (masks on all 22 target convs for RepOpt)."""
    params = list(model.parameters())
    if kind == "torch_sgd_fused":
        return torch.optim.SGD(params, fused=True, **HP)
    if kind == "torch_sgd_foreach":
        return torch.optim.SGD(params, foreach=True, **HP)
    if kind in ("repopt_sgd_foreach", "repopt_sgd_fused"):
        mode = dict(fused=True) if kind.endswith("fused") else dict(foreach=True)
        return build_repoptimizer(model, _scales(model), no_decay_bn=False, **mode, **HP)
    if kind == "torch_adamw_fused":
        return torch.optim.AdamW(params, fused=True, **ADAMW_HP)
    if kind in ("repopt_adamw", "repopt_adamw_fused"):
        return build_repoptimizer(model, _scales(model), update_rule="adamw", no_decay_bn=False,
                                  fused=kind.endswith("fused"), mask_placement=placement, **ADAMW_HP)
    raise ValueError(kind)


SGD_KINDS = ("torch_sgd_fused", "torch_sgd_foreach", "repopt_sgd_foreach", "repopt_sgd_fused")
ADAMW_KINDS = ("torch_adamw_fused", "repopt_adamw", "repopt_adamw_fused")


@pytest.fixture(scope="module")
def a0_params():
    return _a0_params()


@pytest.mark.benchmark(group="optimizer-step (RepOpt-VGG-A0 params)")
@pytest.mark.parametrize("kind", SGD_KINDS + ADAMW_KINDS)
def test_optimizer_step(benchmark, a0_params, kind, one_thread):
    opt = make_step_optimizer(kind, a0_params)
    if kind.startswith("repopt"):
        assert len(opt.grad_mult_masks) == 22
    opt.step()  # state exists from here on (the steady state is what is timed)
    benchmark.pedantic(opt.step, rounds=30, warmup_rounds=3, iterations=1)
    _record(benchmark, kind)


def _interleaved(opts: dict, rounds: int, sync=None) -> dict[str, list[float]]:
    """Per-round step times of each optimizer, the optimizers alternated within every round."""
    times = {k: [] for k in opts}
    for r in range(rounds + 3):
        for k, opt in opts.items():
            if sync:
                sync()
            t0 = time.perf_counter()
            opt.step()
            if sync:
                sync()
            if r >= 3:  # three warm-up rounds: state, allocator, compiled kernels
                times[k].append(time.perf_counter() - t0)
    return times


def _ratios(times: dict[str, list[float]], base: str) -> dict[str, tuple[float, float, float]]:
    """``{kind: (median time, median of per-round ratios to base, ratio of medians)}``."""
    b = times[base]
    return {k: (statistics.median(v), statistics.median(a / c for a, c in zip(v, b)),
                statistics.median(v) / statistics.median(b)) for k, v in times.items()}


def test_optimizer_step_interleaved(a0_params, one_thread):
    """The robust ratios: each group's optimizers alternated round by round, 1 thread."""
    for group, kinds, base in (("sgd", SGD_KINDS, "torch_sgd_fused"), ("adamw", ADAMW_KINDS, "torch_adamw_fused")):
        before = _load()
        times = _interleaved({k: make_step_optimizer(k, a0_params) for k in kinds}, STEP_ROUNDS)
        RESULTS[f"interleaved_{group}"] = (_ratios(times, base), before, _load())


@cuda_only
@pytest.mark.cuda
def test_optimizer_step_interleaved_cuda():
    """The same on CUDA (torch.cuda.synchronize around every step); AdamW with mask_placement='grad'."""
    model = _a0_params("cuda")
    sync = torch.cuda.synchronize
    for group, kinds, base in (("sgd", SGD_KINDS, "torch_sgd_fused"), ("adamw", ADAMW_KINDS, "torch_adamw_fused")):
        opts = {k: make_step_optimizer(k, model, placement="grad") for k in kinds}
        times = _interleaved(opts, 50, sync)
        RESULTS[f"interleaved_{group}_cuda"] = (_ratios(times, base), torch.cuda.get_device_name(0), "")


# --------------------------------------------------------------------- 2. training step


@pytest.mark.benchmark(group=f"train-step (A0, batch {BATCH}, {IMAGE}x{IMAGE})")
@pytest.mark.parametrize("kind", TRAIN_KINDS)
def test_train_step(benchmark, kind):
    model, opt = make_training(kind)
    x, y = batch()
    benchmark.pedantic(train_step, args=(model, opt, x, y), rounds=5 if FULL else 15, warmup_rounds=1 if FULL else 3,
                       iterations=1)
    _record(benchmark, f"train_{kind}")


def test_train_step_interleaved(one_thread):
    """The four training steps alternated step by step, 1 thread (robust to load drift on a shared machine)."""
    runs = {kind: make_training(kind) for kind in TRAIN_KINDS}
    x, y = batch()
    times = {kind: [] for kind in runs}
    before = _load()
    for r in range(5 if FULL else 10):
        for kind, (model, opt) in runs.items():
            t0 = time.perf_counter()
            train_step(model, opt, x, y)
            if r:  # round 0 warms up (momentum buffers, allocator, compiled kernels)
                times[kind].append(time.perf_counter() - t0)
    RESULTS["train_interleaved"] = (times, before, _load())


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
    for kind in ("repvgg", "repopt", "repopt_fused"):
        out = subprocess.run([sys.executable, __file__, "--peak-rss", kind], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        RESULTS[f"mem_{kind}"] = res["peak_extra"]
        RESULTS[f"params_{kind}"] = res["params"]


def _ratio_lines(title: str, entry, base: str, target: str) -> list[str]:
    ratios, before, after = entry
    out = [f"{title} ({before} -> {after}):"]
    for k, (med, per_round, of_medians) in ratios.items():
        mark = f" (target {target})" if k.endswith("fused") and k.startswith("repopt") else ""
        out.append(f"  {k:20s} median {med * 1e3:8.2f} ms   vs {base}: median of per-round ratios "
                   f"{per_round:.3f}x, ratio of medians {of_medians:.3f}x{mark}")
    return out


def test_report(capsys):
    """Print the figures and ratios measured above (skipped when benchmarks are disabled)."""
    if "repopt_sgd_fused" not in RESULTS:
        pytest.skip("run with --benchmark-enable to get timings")
    lines = [f"machine: {platform.machine()} {platform.processor() or ''}, os.cpu_count()={os.cpu_count()}, "
             f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
             f"torch threads={torch.get_num_threads()}, {_load()}"]
    r = RESULTS

    def pair(a, b):
        am, bm = r[a + "_min"], r[b + "_min"]
        return (f"median {r[a] * 1e3:.2f} vs {r[b] * 1e3:.2f} ms -> ratio {r[a] / r[b]:.3f}x; "
                f"min {am * 1e3:.2f} vs {bm * 1e3:.2f} ms -> ratio {am / bm:.3f}x")

    lines.append("optimizer step on RepOpt-VGG-A0 params, one at a time, 1 thread: RepOpt-SGD fused vs torch SGD fused: "
                 + pair("repopt_sgd_fused", "torch_sgd_fused") + "; RepOpt-AdamW fused vs torch AdamW fused: "
                 + pair("repopt_adamw_fused", "torch_adamw_fused"))
    for key, title, base in (("sgd", "SGD", "torch_sgd_fused"), ("adamw", "AdamW", "torch_adamw_fused")):
        if f"interleaved_{key}" in r:
            lines += _ratio_lines(f"optimizer step {title}, interleaved ({STEP_ROUNDS} rounds, 1 thread)",
                                  r[f"interleaved_{key}"], base, "<= 1.30x")
        if f"interleaved_{key}_cuda" in r:
            lines += _ratio_lines(f"optimizer step {title} on CUDA, interleaved (50 rounds)",
                                  r[f"interleaved_{key}_cuda"], base, "report")
    if "train_interleaved" in r:
        times, before, after = r["train_interleaved"]
        means = {k: statistics.fmean(v) for k, v in times.items()}
        lines.append(f"train step (fwd+bwd+step, A0, batch {BATCH}, {IMAGE}x{IMAGE}, {CLASSES} classes), "
                     f"interleaved, 1 thread ({before} -> {after}): "
                     + ", ".join(f"{k} {m:.3f} s" for k, m in means.items()))
        for suffix, label in (("", "foreach"), ("_fused", "fused")):
            a, b = times["repopt" + suffix], times["repvgg" + suffix]
            med = statistics.median(x / y for x, y in zip(a, b))
            lines.append(f"  {label}: RepOpt-VGG {statistics.fmean(a):.3f} s vs RepVGG {statistics.fmean(b):.3f} s "
                         f"(means) -> time ratio {statistics.fmean(a) / statistics.fmean(b):.3f}x, median of "
                         f"per-round ratios {med:.3f}x (RepOpt-VGG speed-up {statistics.fmean(b) / statistics.fmean(a):.2f}x)")
    if "train_repopt_fused" in r:
        lines.append("train step one at a time, RepOpt-VGG fused vs RepVGG fused: "
                     + pair("train_repopt_fused", "train_repvgg_fused"))
    if "mem_repopt" in r:
        a, f, b = r["mem_repopt"], r["mem_repopt_fused"], r["mem_repvgg"]
        lines.append(f"peak extra RSS of a train step: RepOpt-VGG {a / 2**20:.1f} MiB (fused {f / 2**20:.1f}) vs "
                     f"RepVGG {b / 2**20:.1f} MiB -> memory ratio {a / b:.3f}x (fused {f / b:.3f}x) (params "
                     f"{r['params_repopt']:,} vs {r['params_repvgg']:,})")
    with capsys.disabled():
        print("\n" + "\n".join("[bench_repopt] " + s for s in lines))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--peak-rss":
    print(json.dumps(_peak_rss_child(sys.argv[2])))
