"""The papers' experiments end to end, over several seeds, with their claims tested (``repspec demo``).

One run trains, for each seed, small named variants of

- **RepVGG** (structural re-parameterization, SPEC §2),
- **RepVGG + OABN** at several thresholds ``s`` (SPEC §4),
- **QARepVGG** (SPEC §2),
- **RepOpt-VGG**: HyperSearch first, then the plain target network trained by the
  RepOptimizer with the searched scales (SPEC §3),

then measures for each: FP32 accuracy of the deployed network, INT8 PTQ with every
calibrator, PTQ accuracy against weight bits, and 4-/3-bit uniform QAT against
ClusterQAT (k-means), with state sizes (SPEC §5), plus the merged-weight outlier
statistics (SPEC §2 categories A/B/C).

Seeds: seed ``s`` fixes the train/test split (where the dataset has no official one),
and every model of that seed is initialized and shuffled with its own seed derived from
``(s, model label)`` (:func:`model_seed`), so models are compared **paired by seed**.
Every cell of the table is the mean ± sample standard deviation over the seeds, and
the seeds' five claims are tested one by one (:func:`evaluate_claims`, with
:mod:`repspec.experiments.stats`): each test's effect, its 95% Student-t interval, the number of
seeds, a sign test, and a verdict computed from the interval.

Outputs (``out_dir``, replaced atomically): ``results.json`` (configuration, every
per-seed value under ``runs``, the aggregates under ``models``, the claims, and the
reproducibility conditions of :func:`repspec.core.runtime.reproducibility_info`), ``table.md``,
``claims.md``, ``readme_section.md`` (both, ready to paste), ``timings.json`` (wall
times, kept out of ``results.json`` so that a rerun on the same machine reproduces that
file byte for byte), ``accuracy_vs_bits.png``, ``merged_weights_by_category.png`` and
``analysis/<model>/`` (first seed). :func:`render_results` re-renders the Markdown from an
existing ``results.json`` without training (``repspec demo --render results.json``).

Nothing here is tuned to make a finding appear: the configuration is fixed below,
the seeds are fixed, and what is measured is what is reported.
"""

from __future__ import annotations

import json
import math
import numbers
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from repspec.core.files import atomic_directory, atomic_save_json, atomic_write_text, json_default
from repspec.core.runtime import reproducibility_info
from repspec.core.vocabulary import CALIBRATOR_SHORT_NAMES, CALIBRATORS, DEFAULT_KMEANS_INIT
from repspec.experiments.stats import compare, summarize

__all__ = ["DemoConfig", "QUICK", "FULL", "DEMO_DATASETS", "run_demo", "run_qat", "model_seed", "aggregate",
           "evaluate_claims", "format_table", "format_claims", "render_results", "compare_verdicts", "load_results"]

#: datasets ``run_demo`` accepts: the bundled digits (default), their harder variations
#: (:mod:`repspec.torch_impl.training.synthetic`), and CIFAR-10 from its binary files
DEMO_DATASETS = ("digits", "digits_variations", "cifar10")

#: format of ``results.json`` (2: multi-seed, per-seed values under ``runs``)
RESULTS_SCHEMA = 2


@dataclass(frozen=True)
class DemoConfig:
    image_size: int
    epochs: int
    hs_epochs: int
    qat_epochs: int
    oabn_thresholds: tuple[float, ...]
    calibrators: tuple[str, ...]
    ptq_bits: tuple[int, ...]
    qat_bits: tuple[int, ...]
    qat_models: tuple[str, ...]
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    #: SGD learning rate of QAT fine-tuning. Measured: 1e-2 diverges for every method (8-bit included)
    #: because with frozen BN a branch-parameter step moves the fused kernel by ~lr·(K/σ)²; 1e-3
    #: still diverges for 4-bit uniform QAT; 1e-4 is stable for all, so it is used for all.
    qat_lr: float = 1e-4
    calib_batches: int = 4
    update_every: int = 10
    size: str = "tiny8"
    act_bits: int = 8
    #: number of seeds (``seed, seed + 1, ...``); every cell is a mean ± sd over them
    seeds: int = 1
    #: train on a seeded random subset of this many training images (None: all); for tests
    train_limit: int | None = None


#: 3 seeds; < 2 minutes on 2 otherwise idle CPU cores (measured: README)
QUICK = DemoConfig(image_size=16, epochs=4, hs_epochs=2, qat_epochs=1, oabn_thresholds=(1.0,),
                   calibrators=("minmax", "percentile", "entropy"),
                   ptq_bits=(8, 6, 4), qat_bits=(4,), qat_models=("repvgg", "repvgg_oabn_s1"), calib_batches=2,
                   seeds=3)
#: 5 seeds; the run README's table and claims come from (381 s wall on 2 cores, one torch thread; README)
FULL = DemoConfig(image_size=16, epochs=12, hs_epochs=4, qat_epochs=3, oabn_thresholds=(3.0, 1.0, 0.5),
                  calibrators=CALIBRATORS, ptq_bits=(8, 6, 5, 4, 3), qat_bits=(4, 3),
                  qat_models=("repvgg", "repvgg_oabn_s1", "qarepvgg", "repopt_vgg"), seeds=5)


def _fmt_threshold(s: float) -> str:
    return f"{s:g}".replace(".", "p")


def _oabn_label(s: float) -> str:
    return f"repvgg_oabn_s{_fmt_threshold(s)}"


def _model_specs(cfg: DemoConfig) -> list[tuple[str, str, dict]]:
    """``(label, registry name, overrides)`` for every FP32 model of the demo."""
    specs = [("repvgg", f"repvgg_{cfg.size}", {})]
    specs += [(_oabn_label(s), f"repvgg_{cfg.size}_oabn", {"oabn_threshold": s}) for s in cfg.oabn_thresholds]
    specs += [("qarepvgg", f"qarepvgg_{cfg.size}", {}), ("repopt_vgg", f"repopt_vgg_{cfg.size}", {})]
    return specs


def model_seed(seed: int, label: str) -> int:
    """The seed of model ``label`` in the run of ``seed``: NumPy ``SeedSequence([seed, crc32(label)])``,
    63 bits — decorrelated across models and seeds, the same on every platform."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(label, str) or not label:
        raise TypeError(f"label must be a non-empty str, got {label!r}")
    words = [int(seed), zlib.crc32(label.encode("utf-8"))]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) >> 1


# ------------------------------------------------------------------------------- QAT


def run_qat(model, train_loader, test_loader, calib_loader=None, *, method: str, bits: int, act_bits: int = 8,
            act_ranges=None, epochs: int = 1, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
            update_every: int = 10, per_channel: bool = False, calib_batches: int = 4, device="cpu",
            progress: bool = True, seed: int = 0, export_path=None) -> dict:
    """QAT on merged weights (``method='qat'``, uniform) or ClusterQAT (``'clusterqat'``), SPEC §5.

    Wraps ``model`` (not modified) with :func:`repspec.torch_impl.quantization.qat.make_qat_model`
    (first block and head FP32, BN statistics frozen), fine-tunes the branch
    parameters with SGD through the straight-through estimators, and returns
    ``{"accuracy", "state_size", "history"}`` measured on the deployed quantized model.
    Activation ranges are seeded from ``act_ranges`` (``{block prefix: (lo, hi)}``, e.g. a PTQ
    model's ``act_ranges()``) or, failing that, by min/max calibration on ``calib_loader``;
    with neither, the first training batch initializes them.
    """
    import torch

    from repspec.torch_impl.quantization.export import export_quantized
    from repspec.torch_impl.quantization.ptq import evaluate, quantized_model_from_qat
    from repspec.torch_impl.quantization.qat import KMeansWeightQuantizer, UniformWeightQuantizer, make_qat_model
    from repspec.torch_impl.training.train import TrainConfig, train_classifier

    if method not in ("qat", "clusterqat"):
        raise ValueError(f"method must be 'qat' or 'clusterqat', got {method!r}")
    wq = (UniformWeightQuantizer(bits, per_channel=per_channel) if method == "qat"
          else KMeansWeightQuantizer(bits, update_every=update_every, init=DEFAULT_KMEANS_INIT))
    if act_ranges is None and calib_loader is not None and act_bits is not None:
        act_ranges = _calibrated_ranges(model, calib_loader, act_bits, calib_batches, device)
    qat_model = make_qat_model(model, weight_quantizer=wq, act_bits=act_bits, act_ranges=act_ranges).to(device)
    optimizer = torch.optim.SGD([p for p in qat_model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    history = train_classifier(qat_model, train_loader, optimizer=optimizer,
                               config=TrainConfig(epochs=epochs, device=device, progress=progress, seed=seed))
    deployed = quantized_model_from_qat(qat_model)
    result = {"accuracy": evaluate(deployed, test_loader, device=device), "state_size": int(deployed.state_size()),
              "history": history.to_dict()}
    if export_path is not None:
        export_quantized(deployed, export_path)
    return result


def _calibrated_ranges(model, calib_loader, act_bits, calib_batches, device):
    from repspec.torch_impl.quantization.ptq import ptq_quantize

    q = ptq_quantize(model, calib_loader, weight_bits=None, act_bits=act_bits, calibrator="minmax",
                     num_batches=calib_batches, progress=False)
    return {k: (float(lo), float(hi)) for k, (lo, hi) in q.act_ranges().items()}


# ------------------------------------------------------------------------------ demo


def _train_fp32(label, name, overrides, cfg, data, device, seed, progress, log):
    import torch

    from repspec.torch_impl.modules.models import create_model
    from repspec.torch_impl.optimizers.hypersearch import extract_scales, train_hypersearch
    from repspec.torch_impl.optimizers.repoptimizer import build_repoptimizer, weight_decay_groups
    from repspec.torch_impl.training.train import TrainConfig, evaluate, seed_everything, train_classifier

    train_loader, test_loader, num_classes = data
    seed_everything(seed)
    extra, seconds = {}, {}
    if name.startswith("repopt_vgg_"):
        hs = create_model(name.replace("repopt_vgg_", "hs_vgg_"), num_classes).to(device)
        t0 = time.perf_counter()
        train_hypersearch(hs, train_loader, epochs=cfg.hs_epochs, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay, device=device, progress=progress)
        scales = extract_scales(hs)
        extra["hypersearch_accuracy"] = evaluate(hs, test_loader, device=device)
        seconds["hypersearch"] = time.perf_counter() - t0
        log(f"  HyperSearch: test acc {extra['hypersearch_accuracy']:.4f} ({seconds['hypersearch']:.1f}s)")
        seed_everything(seed)
        model = create_model(name, num_classes, scales=scales, seed=seed).to(device)
        optimizer = build_repoptimizer(model, None, cfg.lr, momentum=cfg.momentum, nesterov=True,
                                       weight_decay=cfg.weight_decay)
    else:
        model = create_model(name, num_classes, **overrides).to(device)
        optimizer = torch.optim.SGD(weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr,
                                    momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    t0 = time.perf_counter()
    history = train_classifier(model, train_loader, optimizer=optimizer, scheduler=scheduler,
                               config=TrainConfig(epochs=cfg.epochs, device=device, progress=progress, seed=seed))
    seconds["train"] = time.perf_counter() - t0
    extra["train_loss"] = history.epochs[-1]["train_loss"]
    return model, extra, seconds


def _outlier_summary(model) -> dict:
    """Outlier statistics of the quantized layers' merged kernels (SPEC §2 categories A/B/C):
    the largest per-layer ``max|A|/max|C|``, the largest ``|w|`` of each category, their
    ratio ``max|A| / max(max|B|, max|C|)`` (> 1: the network's largest merged weight is in A)
    and the largest identity factor ``|t0|``."""
    from repspec.torch_impl.quantization.analysis import layer_statistics

    rows = [r for r in layer_statistics(model) if r.get("quantized")]

    def finite_max(key):
        vals = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
        return max(vals) if vals else None

    a, b, c = finite_max("A_max_abs"), finite_max("B_max_abs"), finite_max("C_max_abs")
    rest = max([v for v in (b, c) if v is not None], default=None)
    return {"max_ratio_A_C": finite_max("ratio_A_C"), "max_abs_A": a, "max_abs_B": b, "max_abs_C": c,
            "ratio_A_to_BC": None if a is None or not rest else a / rest,
            "max_abs_t0": finite_max("t0_max_abs"),
            "state_size_fp32": int(sum(int(r["distinct_values"]) for r in rows))}


def _category_values(model) -> dict[str, np.ndarray]:
    """The quantized layers' merged weights (every block but the first), pooled by category A/B/C."""
    from repspec.torch_impl.quantization.analysis import fused_kernels, merged_weight_categories

    pooled: dict[str, list] = {"A": [], "B": [], "C": []}
    for i, (kernel, groups) in enumerate(fused_kernels(model).values()):
        if i == 0:
            continue  # the first block stays FP32 under PTQ/QAT (SPEC §5)
        for cat, mask in zip("ABC", merged_weight_categories(kernel, groups)):
            pooled[cat].append(kernel[mask].detach().cpu().double().numpy().ravel())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in pooled.items()}


def _load_data(dataset: str, cfg: DemoConfig, seed: int, data_dir, difficulty):
    from repspec.torch_impl.training.data import random_subset
    from repspec.torch_impl.training.datasets import load_dataset

    if dataset == "cifar10":
        train_set, test_set, info = load_dataset("cifar10", root=data_dir)
    elif dataset == "digits_variations":
        kw = {} if difficulty is None else {"difficulty": difficulty}
        train_set, test_set, info = load_dataset(dataset, image_size=cfg.image_size, seed=seed, **kw)
    else:
        train_set, test_set, info = load_dataset("digits", image_size=cfg.image_size, seed=seed)
    if cfg.train_limit is not None and cfg.train_limit < len(train_set):
        train_set = random_subset(train_set, cfg.train_limit, seed=seed)
    return train_set, test_set, info


def _run_seed(cfg: DemoConfig, seed: int, dataset: str, data_dir, difficulty, device, progress, log,
              analysis_dir: Path | None) -> tuple[dict, dict, dict]:
    """Every model of one seed: ``(run record, wall times, {label: pooled A/B/C values})``."""
    from repspec.torch_impl.quantization.analysis import write_report
    from repspec.torch_impl.quantization.ptq import evaluate, ptq_quantize
    from repspec.torch_impl.training.data import make_loader

    train_set, test_set, info = _load_data(dataset, cfg, seed, data_dir, difficulty)
    test_loader = make_loader(test_set, cfg.batch_size, seed=seed, shuffle=False)
    calib_loader = make_loader(train_set, cfg.batch_size, seed=seed, shuffle=False)
    run: dict = {"seed": seed, "dataset": info.to_dict(), "models": {}}
    seconds: dict = {}
    categories: dict = {}
    trained, act_ranges, loaders = {}, {}, {}
    for label, name, overrides in _model_specs(cfg):
        ms = model_seed(seed, label)
        loaders[label] = make_loader(train_set, cfg.batch_size, seed=ms, shuffle=True)
        log(f"[seed {seed}] [{label}] training {name} {overrides or ''}(model seed {ms})")
        data = (loaders[label], test_loader, info.num_classes)
        model, extra, secs = _train_fp32(label, name, overrides, cfg, data, device, ms, progress, log)
        trained[label], seconds[label] = model, secs
        entry = {"registry_name": name, "overrides": overrides, "model_seed": ms, **extra}
        entry["fp32_accuracy"] = evaluate(model, test_loader, device=device)
        entry.update(_outlier_summary(model))
        ptq_cache: dict = {}

        def ptq(weight_bits, act_bits, calibrator):
            """One PTQ + evaluation per distinct setting (W8A8 min/max appears in both sweeps)."""
            key = (weight_bits, act_bits, calibrator)
            if key not in ptq_cache:
                q = ptq_quantize(model, calib_loader, weight_bits=weight_bits, act_bits=act_bits,
                                 calibrator=calibrator, num_batches=cfg.calib_batches, progress=False)
                ptq_cache[key] = (q, evaluate(q, test_loader, device=device))
            return ptq_cache[key]

        entry["ptq_int8"] = {cal: ptq(8, 8, cal)[1] for cal in cfg.calibrators}
        entry["ptq_bits"] = {}
        for bits in cfg.ptq_bits:
            q, acc = ptq(bits, cfg.act_bits, "minmax")
            entry["ptq_bits"][str(bits)] = {"accuracy": acc, "state_size": int(q.state_size())}
        # min/max ranges are calibrated on the FP32 deploy network, so they do not depend on
        # the weight bits: QAT below starts from these instead of calibrating again
        act_ranges[label] = ptq(cfg.ptq_bits[0], cfg.act_bits, "minmax")[0].act_ranges()
        ratio = entry["max_ratio_A_C"]
        log(f"  FP32 {entry['fp32_accuracy']:.4f}; INT8 PTQ "
            + ", ".join(f"{c} {a:.4f}" for c, a in entry["ptq_int8"].items())
            + f"; max|A|/max|C| {'—' if ratio is None else f'{ratio:.2f}'}")
        if analysis_dir is not None:
            write_report(model, analysis_dir / label, per_layer=False)  # tables + hist_all.png (per-layer PNGs: `repspec analyze`)
            categories[label] = _category_values(model)
        run["models"][label] = entry

    for label in cfg.qat_models:
        entry = run["models"][label]
        entry["qat"] = {}
        for bits in cfg.qat_bits:
            for method in ("qat", "clusterqat"):
                t0 = time.perf_counter()
                r = run_qat(trained[label], loaders[label], test_loader, method=method, bits=bits,
                            act_bits=cfg.act_bits, act_ranges=act_ranges[label], epochs=cfg.qat_epochs,
                            lr=cfg.qat_lr, momentum=cfg.momentum, update_every=cfg.update_every, device=device,
                            progress=progress, seed=entry["model_seed"])
                seconds[label][f"{method}_w{bits}"] = time.perf_counter() - t0
                entry["qat"][f"{method}_w{bits}"] = {"accuracy": r["accuracy"], "state_size": r["state_size"]}
                log(f"[seed {seed}] [{label}] {method} W{bits}A{cfg.act_bits}: acc {r['accuracy']:.4f}, "
                    f"state size {r['state_size']}")
    return run, seconds, categories


def _check_run_args(cfg, seeds, seed, dataset, data_dir, difficulty):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, numbers.Integral) or seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1 (the number of seeds), got {seeds!r}")
        cfg = replace(cfg, seeds=int(seeds))
    if dataset not in DEMO_DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DEMO_DATASETS)}, got {dataset!r}")
    if dataset == "cifar10" and data_dir is None:
        raise ValueError("dataset 'cifar10' needs data_dir (the directory holding cifar-10-batches-bin/)")
    if dataset != "cifar10" and data_dir is not None:
        raise ValueError(f"data_dir applies to dataset 'cifar10' only, not {dataset!r}")
    if difficulty is not None:
        if dataset != "digits_variations":
            raise ValueError(f"difficulty applies to dataset 'digits_variations' only, not {dataset!r}")
        if isinstance(difficulty, bool) or not isinstance(difficulty, numbers.Real) or not 0 <= difficulty <= 1:
            raise ValueError(f"difficulty must be a number in [0, 1], got {difficulty!r}")
    return cfg


def run_demo(out_dir, *, quick: bool = False, seed: int = 0, device: str = "cpu", progress: bool = True,
             config: DemoConfig | None = None, log=print, seeds: int | None = None, dataset: str = "digits",
             data_dir=None, difficulty: float | None = None) -> int:
    """Run the demo over ``seeds`` seeds (default: the configuration's; ``seed, seed + 1, ...``)
    and write ``results.json``, the Markdown tables and the PNGs to ``out_dir`` (replaced
    atomically; see the module docstring). ``dataset`` is one of :data:`DEMO_DATASETS`
    (``cifar10`` reads the binary files in ``data_dir``; ``difficulty`` is the knob of
    ``digits_variations``)."""
    import torch

    cfg = _check_run_args(config or (QUICK if quick else FULL), seeds, seed, dataset, data_dir, difficulty)
    seed_list = [int(seed) + i for i in range(cfg.seeds)]
    mode = "custom" if config is not None else "quick" if quick else "full"
    started = time.perf_counter()
    log(f"repspec demo ({mode}): {dataset}, seeds {seed_list}, device {device}, "
        f"torch threads {torch.get_num_threads()}")
    results: dict = {"schema": RESULTS_SCHEMA, "mode": mode, "config": asdict(cfg), "seeds": seed_list,
                     "dataset": {"name": dataset, "difficulty": difficulty},
                     "reproducibility": reproducibility_info(device), "runs": {}}
    timings: dict = {"seeds": {}}
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        categories = {}
        for i, s in enumerate(tqdm(seed_list, desc="seeds", disable=not progress)):
            t0 = time.perf_counter()
            run, seconds, cats = _run_seed(cfg, s, dataset, data_dir, difficulty, device, progress, log,
                                           tmp / "analysis" if i == 0 else None)
            results["runs"][str(s)] = run
            categories = categories or cats
            timings["seeds"][str(s)] = {"seconds": time.perf_counter() - t0, "models": seconds}
            log(f"[seed {s}] done in {timings['seeds'][str(s)]['seconds']:.0f}s")
        first = results["runs"][str(seed_list[0])]["dataset"]
        results["dataset"].update({k: first[k] for k in ("num_classes", "image_size", "train_size", "test_size",
                                                         "source")})
        results["models"] = aggregate(results)
        results["claims"] = evaluate_claims(results)
        _plot_accuracy_vs_bits(results, tmp / "accuracy_vs_bits.png")
        _plot_categories(categories, seed_list[0], tmp / "merged_weights_by_category.png")
        atomic_save_json(results, tmp / "results.json", indent=1, default=json_default, allow_nan=False)
        _write_markdown(results, tmp)
        timings["total_seconds"] = time.perf_counter() - started
        timings["reproducibility"] = results["reproducibility"]
        atomic_save_json(timings, tmp / "timings.json", indent=1, default=json_default)
    log("")
    log(format_table(results))
    log("")
    log(format_claims(results))
    log(f"\nwritten to {out_dir}/ (results.json, table.md, claims.md, readme_section.md, timings.json, "
        f"accuracy_vs_bits.png, merged_weights_by_category.png, analysis/<model>/) in "
        f"{timings['total_seconds']:.0f}s")
    return 0


# ------------------------------------------------------------------------------ aggregates


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _has_number(node) -> bool:
    if isinstance(node, dict):
        return any(_has_number(v) for v in node.values())
    return _is_number(node)


def _aggregate_node(nodes: list):
    """Per-seed nodes of the same shape -> one node whose numbers are :func:`repspec.experiments.stats.summarize`
    dicts (plus the per-seed ``values``); strings that agree are kept; None where a seed lacks a value."""
    first = nodes[0]
    if isinstance(first, dict):
        if all(n == first for n in nodes) and not _has_number(first):
            return first  # e.g. an empty overrides dict
        keys = [k for k in first if all(isinstance(n, dict) and k in n for n in nodes) and k != "model_seed"]
        return {k: _aggregate_node([n[k] for n in nodes]) for k in keys}
    if all(_is_number(n) and math.isfinite(float(n)) for n in nodes):
        return {**summarize([float(n) for n in nodes]), "values": [n for n in nodes]}
    if all(n == first for n in nodes):
        return first
    return None


def aggregate(results: dict) -> dict:
    """``{model label: same nesting as a run's entry, numbers -> {n, mean, sd, min, max, values}}``
    over the seeds of ``results`` (in seed order)."""
    runs = [results["runs"][str(s)]["models"] for s in results["seeds"]]
    labels = [k for k in runs[0] if all(k in r for r in runs)]
    return {label: _aggregate_node([r[label] for r in runs]) for label in labels}


# ------------------------------------------------------------------------------ claims

_PRETTY = {"repvgg": "RepVGG", "qarepvgg": "QARepVGG", "repopt_vgg": "RepOpt-VGG"}


def _pretty(label: str) -> str:
    if label.startswith("repvgg_oabn_s"):
        return "OABN s=" + label[len("repvgg_oabn_s"):].replace("p", ".")
    return _PRETTY.get(label, label)


#: why a claim may fail to show at the demo's scale (printed only under a computed verdict other than "reproduced")
_SCALE_NOTES = {
    1: "The papers' INT8 gap is measured on ImageNet with RepVGG-A/B networks whose merged kernels have "
       "hundreds of channels and long training; here tiny networks on a small task leave INT8 with a "
       "resolution fine enough for every model, and the gap shows at lower weight bits (supplementary rows).",
    2: "OABN bounds the identity factor |t0| by s, so a threshold above the |t0| that plain training reaches "
       "(the max|t0| column: RepVGG's value against s) clamps nothing and cannot shrink the outliers; "
       "max|A|/max|C| also depends on the 3x3 and 1x1 branches, which short training on a small task may not grow.",
    3: "On ImageNet a too-small threshold removes useful identity signal from deep networks; the demo's "
       "5-block networks trained for minutes may not need it, and a small test set cannot resolve FP32 "
       "differences much below a point. The seeds' 'about 1-3 is best' refers to ImageNet and is not tested here.",
    4: "With few epochs of fine-tuning at a small learning rate, uniform QAT at 4 bits may already recover "
       "FP32 accuracy on an easy task, leaving no room for ClusterQAT to be better.",
    5: "At INT8 every model of the demo quantizes well, so 'PTQ-friendly' is only tested against a fixed "
       "1-point margin; the contrast with RepVGG shows at lower weight bits (supplementary row).",
}


def _series(runs: list[dict], label: str, *path) -> list[float] | None:
    out = []
    for r in runs:
        node = r.get(label)
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        if not _is_number(node) or not math.isfinite(float(node)):
            return None
        out.append(float(node))
    return out


def _sub(a, b):
    return None if a is None or b is None else [x - y for x, y in zip(a, b)]


def _scale(a, k):
    return None if a is None else [k * x for x in a]


def _mean_over(series_list):
    if not series_list or any(s is None for s in series_list):
        return None
    return [float(np.mean(col)) for col in zip(*series_list)]


_ONE_SAMPLE = object()


def _row(test: str, x, y=_ONE_SAMPLE, *, bound: float = 0.0, direction: str = "greater", unit: str = "pp",
         primary: bool = True, extra: dict | None = None) -> dict:
    """One test row: :func:`repspec.experiments.stats.compare` of ``x − y`` (paired) or of ``x`` (``y`` omitted);
    ``"not run"`` when a series is missing (None: a model or value this run does not have)."""
    row = {"test": test, "primary": primary, "unit": unit, **(extra or {})}
    if x is None or y is None:
        return {**row, "n": 0, "verdict": "not run", "reason": "not in this run"}
    return {**row, **compare(x, None if y is _ONE_SAMPLE else y, bound=bound, direction=direction)}


def _not_run(test: str, why: str, primary: bool = True) -> dict:
    return {"test": test, "primary": primary, "unit": "", "n": 0, "verdict": "not run", "reason": why}


def _claim_verdict(rows: list[dict]) -> str:
    verdicts = [r["verdict"] for r in rows if r["primary"] and r["verdict"] != "not run"]
    if not verdicts:
        return "not run"
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if any(v == "reproduced" for v in verdicts):
        return "partly reproduced"
    if any(v == "contradicted" for v in verdicts):
        return "contradicted"
    return "not reproduced (inconclusive)"


def evaluate_claims(results: dict) -> list[dict]:
    """The seeds' five claims, each as test rows (:func:`repspec.experiments.stats.compare` over the seeds,
    paired by seed) and a verdict computed from its primary rows: ``reproduced`` (every primary
    interval excludes the bound on the claimed side), ``partly reproduced``, ``contradicted`` or
    ``not reproduced (inconclusive)``. Supplementary rows (``primary: False``) are reported but
    do not enter the verdict. Accuracy effects are in percentage points (pp)."""
    cfg = results["config"]
    act = cfg["act_bits"]
    runs = [results["runs"][str(s)]["models"] for s in results["seeds"]]
    labels = list(runs[0])
    oabn = sorted((lbl for lbl in labels if lbl.startswith("repvgg_oabn_s")),
                  key=lambda lbl: -float(lbl[len("repvgg_oabn_s"):].replace("p", ".")))
    s_of = {lbl: float(lbl[len("repvgg_oabn_s"):].replace("p", ".")) for lbl in oabn}
    ptq_bits = [int(b) for b in cfg["ptq_bits"]]
    low = 4 if 4 in ptq_bits else min(ptq_bits)

    def pp(label, *path):
        return _scale(_series(runs, label, *path), 100.0)

    def int8_drop(label):
        return _sub(pp(label, "fp32_accuracy"), pp(label, "ptq_int8", "minmax"))

    def low_drop(label):
        return _sub(pp(label, "fp32_accuracy"), pp(label, "ptq_bits", str(low), "accuracy"))

    claims = []
    others = [lbl for lbl in oabn + ["qarepvgg", "repopt_vgg"] if lbl in labels]
    rows = [_row(f"INT8 PTQ drop (FP32 − W8A8 min/max), RepVGG − {_pretty(o)} > 0",
                 int8_drop("repvgg"), int8_drop(o)) for o in others]
    if low != 8:
        rows += [_row(f"W{low}A{act} PTQ drop, RepVGG − {_pretty(o)} > 0", low_drop("repvgg"), low_drop(o),
                      primary=False) for o in others]
    claims.append({"id": 1, "claim": "RepVGG loses more accuracy under INT8 PTQ than QARepVGG / OABN / RepOpt-VGG.",
                   "rows": rows})

    rows = [_row("RepVGG: max|A| / max(max|B|, max|C|) over the quantized layers > 1",
                 _series(runs, "repvgg", "ratio_A_to_BC"), bound=1.0, unit="ratio")]
    chain = ["repvgg"] + oabn
    if len(chain) < 2:
        rows.append(_not_run("max|A|/max|C| decreases as s decreases", "no OABN model in this run"))
    for hi, lo in zip(chain, chain[1:]):
        rows.append(_row(f"max|A|/max|C|, {_pretty(hi)} − {_pretty(lo)} > 0",
                         _sub(_series(runs, hi, "max_ratio_A_C"), _series(runs, lo, "max_ratio_A_C")),
                         unit="ratio"))
    claims.append({"id": 2, "claim": "The merged kernel's category A (identity diagonal) holds the outliers, and OABN "
                   "shrinks them monotonically with s.", "rows": rows})

    rows = []
    if len(oabn) < 2:
        rows.append(_not_run("FP32: RepVGG − smallest-s OABN > 0; s in [1, 3] − smallest s > 0",
                             "needs at least two OABN thresholds"))
    else:
        smallest = oabn[-1]
        rows.append(_row(f"FP32, RepVGG − {_pretty(smallest)} > 0 (too small s hurts)",
                         pp("repvgg", "fp32_accuracy"), pp(smallest, "fp32_accuracy")))
        rows += [_row(f"FP32, {_pretty(lbl)} − {_pretty(smallest)} > 0 (s in [1, 3] beats too small)",
                      pp(lbl, "fp32_accuracy"), pp(smallest, "fp32_accuracy"))
                 for lbl in oabn[:-1] if 1.0 <= s_of[lbl] <= 3.0]
    claims.append({"id": 3, "claim": "OABN's threshold has a sweet spot: too small hurts FP32; about 1–3 is best "
                   "(on ImageNet).", "rows": rows})

    rows = []
    qat_models = [m for m in cfg["qat_models"] if m in labels]
    for bits in cfg["qat_bits"]:
        cq = [pp(m, "qat", f"clusterqat_w{bits}", "accuracy") for m in qat_models]
        uq = [pp(m, "qat", f"qat_w{bits}", "accuracy") for m in qat_models]
        sizes = {meth: _mean_over([_series(runs, m, "qat", f"{meth}_w{bits}", "state_size") for m in qat_models])
                 for meth in ("clusterqat", "qat")}
        state = {meth: (None if v is None else float(np.mean(v))) for meth, v in sizes.items()}
        rows.append(_row(f"W{bits}A{act}: ClusterQAT − uniform QAT, mean over {len(qat_models)} models > 0",
                         _mean_over(cq), _mean_over(uq), extra={"state_size": state}))
        for m, c, u in zip(qat_models, cq, uq):
            st = {meth: (None if (v := _series(runs, m, "qat", f"{meth}_w{bits}", "state_size")) is None
                         else float(np.mean(v))) for meth in ("clusterqat", "qat")}
            rows.append(_row(f"W{bits}A{act}: ClusterQAT − uniform QAT, {_pretty(m)} > 0", c, u, primary=False,
                             extra={"state_size": st}))
    if not rows:
        rows.append(_not_run("ClusterQAT − uniform QAT > 0", "no QAT in this run"))
    claims.append({"id": 4, "claim": "ClusterQAT beats uniform QAT at 4 and 3 bits (with the state size of each).",
                   "rows": rows})

    rows = [_row("INT8 PTQ drop of RepOpt-VGG (FP32 − W8A8 min/max) < 1 pp", int8_drop("repopt_vgg"),
                 bound=1.0, direction="less")]
    if low != 8:
        rows.append(_row(f"W{low}A{act} PTQ accuracy, RepOpt-VGG − RepVGG > 0",
                         pp("repopt_vgg", "ptq_bits", str(low), "accuracy"),
                         pp("repvgg", "ptq_bits", str(low), "accuracy"), primary=False))
    claims.append({"id": 5, "claim": "RepOpt-VGG is PTQ-friendly.", "rows": rows})

    for c in claims:
        c["verdict"] = _claim_verdict(c["rows"])
        c["scale_note"] = None if c["verdict"] in ("reproduced", "not run") else _SCALE_NOTES[c["id"]]
    return claims


def compare_verdicts(a: dict, b: dict) -> list[str]:
    """Where two ``results.json`` (e.g. two machines) disagree on a verdict: one line per claim or test
    row whose verdict differs (empty: every conclusion holds in both)."""
    diffs = []
    for ca, cb in zip(a["claims"], b["claims"]):
        if ca["verdict"] != cb["verdict"]:
            diffs.append(f"claim {ca['id']}: {ca['verdict']} -> {cb['verdict']}")
        for ra, rb in zip(ca["rows"], cb["rows"]):
            if ra["verdict"] != rb["verdict"]:
                diffs.append(f"claim {ca['id']} row '{ra['test']}': {ra['verdict']} -> {rb['verdict']}")
    return diffs


# ------------------------------------------------------------------------------ Markdown


def _pm(node, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± sd`` of an aggregate node (``mean`` alone for one seed; — when missing)."""
    if not isinstance(node, dict) or "mean" not in node:
        return "—"
    m = f"{scale * node['mean']:.{digits}f}"
    return m if node.get("sd") is None else f"{m} ± {scale * node['sd']:.{digits}f}"


def format_table(results: dict) -> str:
    """The demo's results as one Markdown table of mean ± sd over the seeds (also printed on the terminal)."""
    cfg = results["config"]
    cals = cfg["calibrators"]
    short = CALIBRATOR_SHORT_NAMES
    qat_cols = [f"{m}_w{b}" for b in cfg["qat_bits"] for m in ("qat", "clusterqat")]
    head = (["model", "FP32"] + [f"INT8 {short.get(c, c)}" for c in cals]
            + [f"PTQ W{b}A{cfg['act_bits']}" for b in cfg["ptq_bits"] if b != 8]
            + [f"{'ClusterQAT' if c.startswith('cluster') else 'QAT'} W{c.rsplit('_w', 1)[1]}" for c in qat_cols]
            + [r"max\|A\|/max\|C\|", r"max\|t0\|"])  # pipes escaped inside a Markdown table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, e in results["models"].items():
        row = [label, _pm(e.get("fp32_accuracy"))] + [_pm(e.get("ptq_int8", {}).get(c)) for c in cals]
        row += [_pm(e.get("ptq_bits", {}).get(str(b), {}).get("accuracy")) for b in cfg["ptq_bits"] if b != 8]
        for col in qat_cols:
            q = (e.get("qat") or {}).get(col)
            if not q:
                row.append("—")
            else:
                size = q.get("state_size", {})
                row.append(f"{_pm(q.get('accuracy'))} ({size['mean']:.0f})" if "mean" in size else _pm(q["accuracy"]))
        row += [_pm(e.get("max_ratio_A_C"), 1.0, 1), _pm(e.get("max_abs_t0"), 1.0, 2)]
        lines.append("| " + " | ".join(row) + " |")
    n = len(results["seeds"])
    ds = results.get("dataset", {}).get("name", "digits")
    notes = (f"mean ± sample standard deviation over {n} seed{'s' if n != 1 else ''} ({', '.join(map(str, results['seeds']))}); "
             f"accuracy in % on the {ds} test split; QAT cells: accuracy (mean state size = distinct weight values "
             "summed over the quantized layers); INT8 columns are PTQ W8A8 by calibrator (mm min/max, ma moving "
             "average, pct percentile, mse MSE-optimal, kl entropy); max|A|/max|C| is the largest ratio over "
             "quantized layers of the merged kernel's center-diagonal to border magnitude (SPEC §2).")
    return "\n".join(lines) + "\n\n" + notes


def _fmt_effect(r: dict) -> str:
    if r.get("verdict") == "not run":
        return "—"
    d = 2
    u = " pp" if r["unit"] == "pp" else ""
    m = f"{r['mean']:+.{d}f}" if r["unit"] == "pp" else f"{r['mean']:.{d}f}"
    if r.get("ci") is None:
        return f"{m}{u} (no interval: n = 1)"
    lo, hi = r["ci"]
    fmt = (lambda v: f"{v:+.{d}f}") if r["unit"] == "pp" else (lambda v: f"{v:.{d}f}")
    return f"{m}{u} [{fmt(lo)}, {fmt(hi)}]"


def _fmt_sign(r: dict) -> str:
    if r.get("verdict") == "not run":
        return "—"
    st = r["sign_test"]
    ties = r["n"] - st["n_nonzero"]
    return (f"{st['n_claimed_side']}/{r['n']}" + (f", {ties} tie{'s' if ties != 1 else ''}" if ties else "")
            + f" (p = {st['p']:.3f})")


def format_claims(results: dict) -> str:
    """The claims table (Markdown) of ``results['claims']`` (or recomputed when absent)."""
    claims = results.get("claims") or evaluate_claims(results)
    n = len(results["seeds"])
    lines = ["| # | claim | test (paired by seed) | n | effect: mean [95% CI] | seeds on the claimed side "
             "(sign test p) | verdict |", "|---|---|---|---|---|---|---|"]
    for c in claims:
        for i, r in enumerate(c["rows"]):
            test = r["test"] if r["primary"] else f"*supplementary:* {r['test']}"
            if r.get("state_size") and all(v is not None for v in r["state_size"].values()):
                test += (f" (state size: ClusterQAT {r['state_size']['clusterqat']:.0f}, "
                         f"uniform {r['state_size']['qat']:.0f})")
            verdict = r["verdict"] if r["primary"] else f"({r['verdict']})"
            if r["verdict"] == "not run" and r.get("reason"):
                verdict += f": {r['reason']}"
            test = test.replace("|", r"\|")  # pipes inside a Markdown table cell
            lines.append(f"| {c['id'] if i == 0 else ''} | {c['claim'] if i == 0 else ''} | {test} | "
                         f"{r.get('n', 0)} | {_fmt_effect(r)} | {_fmt_sign(r)} | {verdict} |")
    lines.append("")
    lines.append(f"Verdicts at this scale ({n} seed{'s' if n != 1 else ''}, {results['dataset']['name']}):")
    lines.append("")
    for c in claims:
        line = f"{c['id']}. {c['claim']} **{c['verdict']}**."
        if c.get("scale_note"):
            line += f" Why this may be a matter of scale: {c['scale_note']}"
        lines.append(line)
    lines.append("")
    lines.append("How the verdicts are computed (`repspec/experiments/stats.py`): each test's effect is taken per seed, paired "
                 "by seed; the interval is the two-sided 95% Student-t interval of its mean (`scipy.stats.t`); a "
                 "test is *reproduced* when the interval lies entirely on the claimed side of the bound (0 unless "
                 "stated) **and** the exact one-sided sign test towards that side (`scipy.stats.binomtest`, ties "
                 f"dropped) has p < 0.05 (with {n} seeds its smallest p is 1/2^{n} ≈ {0.5 ** n:.3f}), "
                 "*contradicted* when both point to the other side, *inconclusive* otherwise. A claim is "
                 "*reproduced* when all its primary tests are, *partly reproduced* when some are. No correction "
                 "for multiple tests is applied. PTQ uses the min/max calibrator in the claims; accuracy effects are percentage points (pp).")
    return "\n".join(lines)


def format_conditions(results: dict) -> str:
    """One paragraph: what was run and the conditions that fix its bits (from ``results['reproducibility']``)."""
    rep = results.get("reproducibility", {})
    ds = results["dataset"]
    cfg = results["config"]
    knob = f", difficulty {ds['difficulty']}" if ds.get("difficulty") is not None else ""
    return (f"`repspec demo` ({results['mode']}), {len(results['seeds'])} seeds {results['seeds']}, on "
            f"{ds['name']}{knob} ({ds.get('train_size')} train / {ds.get('test_size')} test images at "
            f"{'x'.join(map(str, ds.get('image_size', [])))}), {cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''} per model. Conditions "
            f"(`results.json` → `reproducibility`): torch {rep.get('torch_version')}, {rep.get('torch_threads')} "
            f"torch thread(s), device {rep.get('device')}, CPU capability {rep.get('cpu_capability')}, "
            f"ONEDNN_MAX_CPU_ISA {rep.get('onednn_max_cpu_isa') or 'unset'}, oneDNN "
            f"{'on' if rep.get('mkldnn_enabled') else 'off'}, {rep.get('cpu_model')}.")


def _write_markdown(results: dict, out: Path) -> None:
    table, claims, cond = format_table(results), format_claims(results), format_conditions(results)
    atomic_write_text(out / "table.md", table + "\n")
    atomic_write_text(out / "claims.md", claims + "\n")
    atomic_write_text(out / "readme_section.md", "<!-- generated by `repspec demo --render results.json`; "
                      "paste as a whole -->\n" + cond + "\n\n" + table + "\n\n" + claims + "\n")


def render_results(path, out_dir=None) -> Path:
    """Re-render ``table.md``, ``claims.md`` and ``readme_section.md`` from an existing ``results.json``
    (no training); the claims are recomputed from the per-seed values. Writes beside ``path``
    unless ``out_dir`` is given; returns the directory written."""
    results = load_results(path)
    if results.get("schema") != RESULTS_SCHEMA or "runs" not in results:
        raise ValueError(f"{path} is not a multi-seed demo results.json (schema {RESULTS_SCHEMA}); rerun the demo")
    results["models"] = aggregate(results)
    results["claims"] = evaluate_claims(results)
    out = Path(path).parent if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_markdown(results, out)
    return out


def load_results(path) -> dict:
    """Read a demo's ``results.json``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"results file {p} does not exist")
    return json.loads(p.read_text())


# ------------------------------------------------------------------------------ plots


def _dodge(i: int, n: int, width: float = 0.5) -> float:
    """Horizontal offset of series ``i`` of ``n`` so that markers at the same x do not cover each other."""
    return 0.0 if n < 2 else (i - (n - 1) / 2) * width / (n - 1)


def _plot_accuracy_vs_bits(results: dict, path: Path) -> None:
    """Two panels, mean ± sd error bars over the seeds: PTQ (min/max) accuracy against weight bits with FP32 at
    its own x position; uniform QAT against ClusterQAT at the QAT bits, again beside FP32."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    cfg = results["config"]
    n = len(models)
    bits = sorted({int(b) for b in cfg["ptq_bits"]}, reverse=True)
    qbits = sorted({int(b) for b in cfg["qat_bits"]}, reverse=True)
    fig, (ax, axq) = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True,
                                  gridspec_kw={"width_ratios": [max(len(bits), 2) + 1, 2 * len(qbits) + 1.5]})

    def ms(node):
        return (np.nan, 0.0) if not isinstance(node, dict) or "mean" not in node else \
            (100 * node["mean"], 0.0 if node.get("sd") is None else 100 * node["sd"])

    fp_x = bits[0] + 1.5
    for i, (label, e) in enumerate(models.items()):
        color, dx = f"C{i}", _dodge(i, n, 0.6)
        m, s = zip(*[ms(e.get("ptq_bits", {}).get(str(b), {}).get("accuracy")) for b in bits])
        ax.errorbar([b + dx for b in bits], m, yerr=s, fmt="o-", color=color, capsize=3, lw=1.3, ms=5,
                    label=_pretty(label))
        fm, fs = ms(e.get("fp32_accuracy"))
        ax.errorbar([fp_x + dx], [fm], yerr=[fs], fmt="D", color=color, capsize=3, ms=6)
    ax.set_xticks([fp_x] + bits, ["FP32"] + [str(b) for b in bits])
    ax.set_xlim(fp_x + 0.8, bits[-1] - 0.8)  # inverted: fewer bits to the right
    ax.set_xlabel("weight bits (PTQ, min/max calibration; activations 8 bits; first conv and head FP32)")
    ax.set_ylabel("test accuracy (%), mean ± sd over seeds")
    ax.set_title("PTQ: accuracy vs weight bits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", title="model (diamond: FP32)", title_fontsize=8)

    qat_models = [lbl for lbl in models if models[lbl].get("qat")]
    if qat_models:
        positions = {"fp32": 0.0}
        positions.update({b: 1.2 * (k + 1) for k, b in enumerate(qbits)})
        for j, label in enumerate(qat_models):
            i = list(models).index(label)
            color, dx = f"C{i}", _dodge(j, len(qat_models), 0.5)
            fm, fs = ms(models[label].get("fp32_accuracy"))
            axq.errorbar([positions["fp32"] + dx], [fm], yerr=[fs], fmt="D", color=color, capsize=3, ms=6)
            for b in qbits:
                for method, marker, off in (("qat", "s", -0.22), ("clusterqat", "*", 0.22)):
                    q = models[label]["qat"].get(f"{method}_w{b}")
                    if q is None:
                        continue
                    qm, qs = ms(q.get("accuracy"))
                    axq.errorbar([positions[b] + off + dx * 0.35], [qm], yerr=[qs], fmt=marker, color=color,
                                 capsize=3, ms=11 if marker == "*" else 7, mec="black", mew=0.6)
        axq.set_xticks([positions["fp32"]] + [positions[b] for b in qbits],
                       ["FP32"] + [f"{b}\n(QAT | Cluster)" for b in qbits])
        axq.set_xlim(-0.7, positions[qbits[-1]] + 0.7)
        axq.plot([], [], "s", color="gray", mec="black", label="uniform QAT (left of each bit)")
        axq.plot([], [], "*", color="gray", mec="black", ms=11, label="ClusterQAT (right)")
        axq.legend(fontsize=8, loc="lower left")
    axq.set_xlabel("weight bits (QAT on merged weights, activations 8 bits)")
    axq.set_ylabel("test accuracy (%), mean ± sd over seeds")
    axq.yaxis.set_tick_params(labelleft=True)
    axq.set_title("uniform QAT vs ClusterQAT")
    axq.grid(alpha=0.3)
    n_seeds = len(results["seeds"])
    fig.suptitle(f"{results['dataset']['name']}: {n_seeds} seed{'s' if n_seeds != 1 else ''}, error bars ± 1 sd")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_categories(categories: dict[str, dict[str, np.ndarray]], seed: int, path: Path, bins: int = 60) -> None:
    """One row per model (first seed): merged-weight histograms by category, values (left) and |w| on
    log bins (right); x-axes shared down each column so that outliers compare across models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(categories)
    n = max(len(labels), 1)
    fig, axes = plt.subplots(n, 2, figsize=(12, 1.9 * n + 1.2), sharex="col", squeeze=False)
    allv = np.concatenate([v for c in categories.values() for v in c.values() if v.size] or [np.zeros(1)])
    lim = float(np.abs(allv).max()) or 1.0
    edges = np.linspace(-lim, lim, bins + 1)
    mags = np.abs(allv[allv != 0])
    log_edges = np.geomspace(max(float(mags.min()), lim * 1e-4), lim, bins + 1) if mags.size else None
    colors = {"A": "tab:red", "B": "tab:orange", "C": "tab:blue"}
    for row, label in enumerate(labels):
        ax, axl = axes[row]
        for cat in ("C", "B", "A"):
            v = categories[label][cat]
            if not v.size:
                continue
            ax.hist(v, bins=edges, histtype="step", lw=1.4, color=colors[cat],
                    label=f"{cat}: max|w| {np.abs(v).max():.2f}")
            if log_edges is not None:
                nz = np.abs(v[v != 0])
                axl.hist(nz, bins=log_edges, histtype="step", lw=1.4, color=colors[cat])
        ax.set_yscale("log")
        axl.set_xscale("log")
        axl.set_yscale("log")
        ax.set_ylabel(f"{_pretty(label)}\ncount (log)", fontsize=9)
        axl.set_ylabel("count (log)", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
        axl.grid(alpha=0.3)
    axes[-1][0].set_xlabel("merged (fused) weight value")
    axes[-1][1].set_xlabel("|merged weight| (log-spaced bins; zeros omitted)")
    fig.suptitle(f"Merged 3x3 kernels of the quantized layers by category (seed {seed}). "
                 "A: centre tap on the identity diagonal (out = in channel); B: centre tap off the diagonal; "
                 "C: the 8 border taps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
