"""The ``repspec`` command line.

Sub-commands (``repspec <command> --help`` for each):

- ``demo``        the main job: on scikit-learn's bundled digits, why RepVGG quantizes
                  badly and how RepOpt-VGG, QARepVGG, OABN and ClusterQAT fix it.
- ``theorem``     the float64 reference demonstration of the RepOpt theorem (SPEC §3).
- ``train``       train a registry model (SGD, or RepOptimizer for ``repopt_vgg_*``).
- ``hypersearch`` train a HyperSearch model and save its scales (SPEC §3).
- ``quantize``    ``ptq`` | ``qat`` | ``clusterqat`` a trained checkpoint (SPEC §5).
- ``analyze``     the merged-weight outlier report of a checkpoint (SPEC §2/§5).
- ``convert``     ``deploy`` (plain conv network) or ``export`` (quantized codes).
- ``verify``      the conformance suite against an implementation (per-clause report).

Every argument is checked before anything is written; errors print one clear line
and exit with status 2; outputs are written atomically (temp + rename).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["main", "theorem_demo", "build_parser"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------ reference theorem


def theorem_demo(*, seed: int = 0, iterations: int = 10, channels: int = 4, size: int = 6, batch: int = 4,
                 lr: float = 0.05, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 1e-3,
                 out=None) -> float:
    """Train CSLA+SGD and target+RepOpt-SGD side by side in the float64 reference.

    Prints, per iteration, both losses and ``max |α3·K3 + α1·pad(K1) + diag(d)·I − W'|``
    over every block, and returns the largest deviation seen (loss or kernel).
    """
    from repspec.reference.network import Network, train
    from repspec.reference.optim import SGD
    from repspec.reference.repopt import CSLABlock, RepOptTargetBlock, csla_equivalent_kernel, grad_mult_mask

    out = sys.stdout if out is None else out
    rng = np.random.default_rng(seed)
    # stage0 changes width and stride (no identity); block 1 keeps both (identity, trainable d)
    shapes = [(3, channels, 2), (channels, channels, 1)]
    scales = [(rng.uniform(0.5, 1.5, size=o), rng.uniform(0.5, 1.5, size=o)) for _, o, _ in shapes]
    prefixes = ["stage0", "stage1.0"]
    csla = Network(tuple((p, CSLABlock(i, o, s, scale_conv=a3, scale_1x1=a1))
                         for p, (i, o, s), (a3, a1) in zip(prefixes, shapes, scales)), num_classes=3)
    target = Network(tuple((p, RepOptTargetBlock(i, o, s)) for p, (i, o, s) in zip(prefixes, shapes)),
                     num_classes=3)
    csla_params, csla_buffers = csla.init(rng)

    def kernel_of(params, prefix):
        return csla_equivalent_kernel(params[f"{prefix}.conv.weight"], params[f"{prefix}.conv_1x1.weight"],
                                      params[f"{prefix}.scale_conv.weight"], params[f"{prefix}.scale_1x1.weight"],
                                      params.get(f"{prefix}.scale_identity.weight"))

    # W'_0: the target starts from the CSLA block's equivalent kernel; BN and head shared
    target_params = {k: v.copy() for k, v in csla_params.items()
                     if not any(k.startswith(p + ".") for p in prefixes) or ".bn." in k}
    masks = {}
    for p, (i, o, s) in zip(prefixes, shapes):
        target_params[f"{p}.conv.weight"] = kernel_of(csla_params, p)
        identity = "trainable" if (i == o and s == 1) else "none"
        masks[f"{p}.conv.weight"] = grad_mult_mask(csla_params[f"{p}.scale_conv.weight"],
                                                   csla_params[f"{p}.scale_1x1.weight"], i, identity=identity)
    target_buffers = {k: v.copy() for k, v in csla_buffers.items()}

    batches = [(rng.normal(size=(batch, 3, size, size)), rng.integers(0, 3, size=batch)) for _ in range(3)]
    hp = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    rec_csla = train(csla, csla_params, csla_buffers, SGD(**hp), batches, iterations)
    rec_target = train(target, target_params, target_buffers, SGD(**hp, grad_mult_masks=masks), batches, iterations)

    print("SPEC §3 theorem: CSLA blocks + SGD  ==  plain conv + RepOpt-SGD (Grad Mult), float64 reference",
          file=out)
    print(f"seed={seed} lr={lr} momentum={momentum} nesterov={nesterov} weight_decay={weight_decay}", file=out)
    print(f"{'iter':>4}  {'loss CSLA+SGD':>16}  {'loss RepOpt-SGD':>16}  {'max |W_csla - W_target|':>24}", file=out)
    worst = 0.0
    for a, b in zip(rec_csla, rec_target):
        dev = max(float(np.max(np.abs(kernel_of(a.params, p) - b.params[f"{p}.conv.weight"]))) for p in prefixes)
        worst = max(worst, dev, abs(a.loss - b.loss))
        print(f"{a.iteration:>4}  {a.loss:>16.12f}  {b.loss:>16.12f}  {dev:>24.3e}", file=out)
    print(f"largest deviation over {iterations} iterations: {worst:.3e} (float64 round-off)", file=out)
    return worst


# ------------------------------------------------------------------------ arguments


def _bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits must be an integer in 1..16, got {text!r}") from None
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"bits must be in 1..16, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _nonneg_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def _threshold(text: str) -> float:
    if text.lower() in ("inf", "infinity"):
        return float("inf")
    return _positive_float(text)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", choices=["digits", "cifar10", "cifar100", "folder"],
                   help="digits: scikit-learn's bundled handwritten digits (default, no download); "
                        "cifar10/cifar100: the *binary* distribution in --data-dir; folder: class sub-folders")
    g.add_argument("--data-dir", default=None, help="directory of cifar10/cifar100/folder data")
    g.add_argument("--image-size", type=_positive_int, default=None,
                   help="input resolution (digits: default 16; cifar: 32)")
    g.add_argument("--batch-size", type=_positive_int, default=64)
    g.add_argument("--seed", type=int, default=0, help="seed of the split, the shuffling and the init")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's; the demo uses 1 on CPU)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_sgd_args(p: argparse.ArgumentParser, *, lr: float = 0.1, epochs: int = 10) -> None:
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=_positive_int, default=epochs)
    g.add_argument("--lr", type=_positive_float, default=lr)
    g.add_argument("--momentum", type=_nonneg_float, default=0.9)
    g.add_argument("--weight-decay", type=_nonneg_float, default=1e-4)
    g.add_argument("--nesterov", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repspec", description="repspec: RepVGG-family re-parameterization, "
                                     "executable spec and PyTorch implementation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the main job on the embedded digits data (table + JSON + PNG plots)")
    demo.add_argument("--quick", action="store_true", help="a smaller run (< 2 minutes on 2 CPU cores)")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--seeds", type=_positive_int, default=None,
                      help="number of seeds (seed, seed+1, ...; default 5, --quick 3); cells are mean ± sd")
    demo.add_argument("--dataset", default="digits", choices=["digits", "digits_variations", "cifar10"],
                      help="digits (default), digits_variations (harder, offline) or cifar10 (binary files "
                           "in --data-dir)")
    demo.add_argument("--data-dir", default=None, help="directory holding cifar-10-batches-bin/ (cifar10)")
    demo.add_argument("--render", default=None, metavar="RESULTS_JSON",
                      help="only re-render table.md/claims.md/readme_section.md from an existing results.json")
    _add_runtime_args(demo)

    th = sub.add_parser("theorem", help="float64 reference demonstration of the RepOpt theorem (SPEC §3)")
    th.add_argument("--seed", type=int, default=0)
    th.add_argument("--iterations", type=_positive_int, default=10)

    tr = sub.add_parser("train", help="train a registry model and save a checkpoint")
    tr.add_argument("--model", required=True, help="registry name, e.g. repvgg_tiny8 (see --list-models)")
    tr.add_argument("--oabn-threshold", type=_threshold, default=None, help="OABN threshold s for *_oabn models")
    tr.add_argument("--scales", default=None, help="HyperSearch scales (.safetensors/.json/.pth) for repopt_vgg_*")
    tr.add_argument("--out", required=True, help="checkpoint directory")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    _add_data_args(tr)
    _add_sgd_args(tr)
    _add_runtime_args(tr)

    hs = sub.add_parser("hypersearch", help="train a HyperSearch model and save its scales (SPEC §3)")
    hs.add_argument("--model", default="hs_vgg_tiny8", help="an hs_vgg_* registry name")
    hs.add_argument("--out", required=True, help="scales file (.safetensors or .json)")
    _add_data_args(hs)
    _add_sgd_args(hs, epochs=5)
    _add_runtime_args(hs)

    qz = sub.add_parser("quantize", help="quantize a trained checkpoint: ptq | qat | clusterqat (SPEC §5)")
    qz.add_argument("method", choices=["ptq", "qat", "clusterqat"])
    qz.add_argument("--checkpoint", required=True, help="checkpoint directory written by `repspec train`")
    qz.add_argument("--bits", type=_bits, default=8, help="weight bits (1..16; uniform weights need >= 2)")
    qz.add_argument("--act-bits", type=_bits, default=8, help="activation bits (1..16)")
    qz.add_argument("--calibrator", default="minmax",
                    choices=["minmax", "moving_average_minmax", "percentile", "mse", "entropy"])
    qz.add_argument("--calib-batches", type=_positive_int, default=8)
    qz.add_argument("--per-channel", action="store_true", help="per-output-channel weight scales (uniform)")
    qz.add_argument("--update-every", type=_positive_int, default=10, help="ClusterQAT centroid refit period")
    qz.add_argument("--out", required=True, help="output directory (metrics.json, export.safetensors)")
    _add_data_args(qz)
    _add_sgd_args(qz, lr=1e-4, epochs=3)  # frozen-BN fine-tuning diverges at 1e-2 (docs/07-qat.md)
    _add_runtime_args(qz)

    an = sub.add_parser("analyze", help="merged-weight outlier report (table, JSON, PNG histograms)")
    an.add_argument("--checkpoint", required=True)
    an.add_argument("--out", required=True, help="output directory")

    cv = sub.add_parser("convert", help="deploy: plain conv network weights; export: see `quantize --out`")
    cv.add_argument("--checkpoint", required=True)
    cv.add_argument("--out", required=True, help="deploy weights (.safetensors)")

    vf = sub.add_parser("verify", help="run the conformance suite and print a per-clause report (docs/porting.md)")
    from repspec.conformance.runner import add_arguments as _add_verify_arguments

    _add_verify_arguments(vf)

    sub.add_parser("list-models", help="the registry's model names")
    return parser


# ----------------------------------------------------------------------------- helpers


def _setup_torch(args) -> str:
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    device = getattr(args, "device", "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: CUDA is not available on this machine")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif device != "cpu":
        raise CLIError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    return device


def _check_model_name(name: str, *, prefix: str | None = None) -> None:
    from repspec.torch_impl.modules.models import list_models

    names = list_models()
    if name not in names:
        raise CLIError(f"unknown model {name!r}; choose one of: {', '.join(names)}")
    if prefix is not None and not name.startswith(prefix):
        raise CLIError(f"--model must be a {prefix}* model, got {name!r}")


def _load_data(args):
    from repspec.torch_impl.training.data import load_dataset

    if args.dataset in ("cifar10", "cifar100", "folder"):
        if args.data_dir is None:
            raise CLIError(f"--dataset {args.dataset} needs --data-dir")
        if not Path(args.data_dir).is_dir():
            raise CLIError(f"--data-dir {args.data_dir!r} is not a directory")
    return load_dataset(args.dataset, root=args.data_dir, image_size=args.image_size, seed=args.seed)


def _load_any_scales(path):
    """Our own scale files (.safetensors/.json), or a published RepOpt-VGG .pth (weights_only)."""
    from repspec.torch_impl.optimizers.scales import load_published_scales, load_scales

    if not Path(path).is_file():
        raise CLIError(f"--scales {str(path)!r} is not a file")
    return load_published_scales(path) if Path(path).suffix == ".pth" else load_scales(path)


def _model_overrides(args) -> dict:
    over = {}
    if getattr(args, "oabn_threshold", None) is not None:
        if "oabn" not in args.model:
            raise CLIError("--oabn-threshold applies to *_oabn models only")
        over["oabn_threshold"] = args.oabn_threshold
    return over


def _build_from_checkpoint(path):
    """Rebuild the model recorded in a `repspec train` checkpoint and load its weights."""
    from repspec.torch_impl.training.checkpoint import load_checkpoint, load_checkpoint_extra
    from repspec.torch_impl.modules.models import create_model

    if not Path(path).exists():
        raise CLIError(f"--checkpoint {str(path)!r} does not exist")
    extra = load_checkpoint_extra(path) or {}
    if "model" not in extra:
        raise CLIError(f"--checkpoint {str(path)!r} was not written by `repspec train` (no model name recorded)")
    overrides = dict(extra.get("model_overrides", {}))
    model = create_model(extra["model"], int(extra["num_classes"]), **overrides)
    load_checkpoint(path, model)
    return model, extra


# ---------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    import torch

    from repspec.torch_impl.training.data import make_loaders
    from repspec.torch_impl.modules.models import create_model
    from repspec.torch_impl.training.train import seed_everything, train_classifier

    _check_model_name(args.model)
    device = _setup_torch(args)
    overrides = _model_overrides(args)
    is_repopt = args.model.startswith("repopt_vgg_")
    if args.scales is not None and not is_repopt:
        raise CLIError("--scales applies to repopt_vgg_* models only")
    if is_repopt and args.scales is None:
        raise CLIError("repopt_vgg_* models need --scales (run `repspec hypersearch` first)")
    out = Path(args.out)
    if args.resume:
        _check_resume_matches(out, args, overrides)
    train_set, test_set, info = _load_data(args)
    seed_everything(args.seed)
    if is_repopt:
        scales = _load_any_scales(args.scales)
        model = create_model(args.model, info.num_classes, scales=scales, seed=args.seed, **overrides)
    else:
        model = create_model(args.model, info.num_classes, **overrides)
    model = model.to(device)
    optimizer = _make_optimizer(model, args, repopt=is_repopt)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    train_loader, test_loader = make_loaders(train_set, test_set, batch_size=args.batch_size, seed=args.seed)
    history = train_classifier(
        model, train_loader, optimizer=optimizer, scheduler=scheduler, epochs=args.epochs, device=device,
        eval_loader=test_loader, checkpoint_path=out, checkpoint_every=len(train_loader), resume=args.resume,
        checkpoint_extra={"model": args.model, "num_classes": info.num_classes, "model_overrides": overrides,
                          "dataset": info.to_dict(), "run": _run_config(args)},
        progress=not args.no_progress, seed=args.seed,
        epoch_callback=lambda r: print(f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} "
                                       f"acc {r['train_acc']:.4f}, test acc {r['eval_acc']:.4f}"))
    print(f"final test accuracy {history.final_eval_acc:.4f}; checkpoint {out}")
    return 0


#: the arguments that define a training run; `--resume` must repeat them (it continues that run)
_RUN_KEYS = ("model", "dataset", "image_size", "batch_size", "seed", "epochs", "lr", "momentum", "weight_decay",
             "nesterov", "oabn_threshold")


def _run_config(args) -> dict:
    return {k: getattr(args, k) for k in _RUN_KEYS}


def _check_resume_matches(out: Path, args, overrides) -> None:
    """``--resume`` continues the same run: refuse a missing checkpoint or changed arguments."""
    from repspec.torch_impl.training.checkpoint import checkpoint_exists, load_checkpoint_extra

    if not checkpoint_exists(out):
        raise CLIError(f"--resume: no checkpoint at {str(out)!r}")
    saved = (load_checkpoint_extra(out) or {}).get("run")
    if saved is None:
        raise CLIError(f"--resume: the checkpoint at {str(out)!r} records no run configuration")
    now = json.loads(json.dumps(_run_config(args), default=str))
    changed = [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now[k]!r}" for k in _RUN_KEYS if saved.get(k) != now[k]]
    if changed:
        raise CLIError("--resume continues the checkpointed run with the same arguments; changed: "
                       + ", ".join(changed))


def _make_optimizer(model, args, *, repopt: bool):
    import torch

    from repspec.torch_impl.optimizers.repoptimizer import build_repoptimizer, weight_decay_groups

    if repopt:
        return build_repoptimizer(model, None, args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                  weight_decay=args.weight_decay)
    return torch.optim.SGD(weight_decay_groups(model, args.weight_decay), lr=args.lr, momentum=args.momentum,
                           nesterov=args.nesterov, weight_decay=args.weight_decay)


def cmd_hypersearch(args) -> int:
    from repspec.torch_impl.training.data import make_loaders
    from repspec.torch_impl.optimizers.hypersearch import extract_scales, train_hypersearch
    from repspec.torch_impl.modules.models import create_model
    from repspec.torch_impl.optimizers.scales import save_scales
    from repspec.torch_impl.training.train import evaluate, seed_everything

    _check_model_name(args.model, prefix="hs_vgg_")
    out = Path(args.out)
    if out.suffix not in (".safetensors", ".json"):
        raise CLIError(f"--out must end in .safetensors or .json, got {str(out)!r}")
    device = _setup_torch(args)
    train_set, test_set, info = _load_data(args)
    seed_everything(args.seed)
    model = create_model(args.model, info.num_classes).to(device)
    train_loader, test_loader = make_loaders(train_set, test_set, batch_size=args.batch_size, seed=args.seed)
    train_hypersearch(model, train_loader, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                      nesterov=args.nesterov, weight_decay=args.weight_decay, device=device,
                      progress=not args.no_progress)
    acc = evaluate(model, test_loader, device=device)
    save_scales(extract_scales(model), out)
    print(f"HyperSearch test accuracy {acc:.4f}; scales written to {out}")
    return 0


def cmd_quantize(args) -> int:
    from repspec.torch_impl.training.data import make_loader, make_loaders
    from repspec.torch_impl.training.io import atomic_directory, atomic_save_json, json_default
    from repspec.torch_impl.quantization.export import export_quantized
    from repspec.torch_impl.quantization.ptq import evaluate, ptq_quantize

    if args.method in ("ptq", "qat") and args.bits < 2:
        raise CLIError("--bits must be >= 2 for uniform (symmetric narrow-range) weights")
    device = _setup_torch(args)
    model, extra = _build_from_checkpoint(args.checkpoint)
    model = model.to(device)
    train_set, test_set, info = _load_data(args)
    if info.num_classes != int(extra["num_classes"]):
        raise CLIError(f"the checkpoint has {extra['num_classes']} classes, --dataset {args.dataset} has "
                       f"{info.num_classes}")
    train_loader, test_loader = make_loaders(train_set, test_set, batch_size=args.batch_size, seed=args.seed)
    calib_loader = make_loader(train_set, args.batch_size, seed=args.seed, shuffle=False)
    fp32_acc = evaluate(model, test_loader, device=device)
    out = Path(args.out)
    with atomic_directory(out) as tmp:
        if args.method == "ptq":
            qmodel = ptq_quantize(model, calib_loader, weight_bits=args.bits, act_bits=args.act_bits,
                                  calibrator=args.calibrator, per_channel=args.per_channel,
                                  num_batches=args.calib_batches, progress=not args.no_progress)
            acc = evaluate(qmodel, test_loader, device=device)
            export_quantized(qmodel, tmp / "export.safetensors")
        else:
            from repspec.experiments import run_qat

            result = run_qat(model, train_loader, test_loader, calib_loader, method=args.method, bits=args.bits,
                             act_bits=args.act_bits, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                             weight_decay=args.weight_decay, update_every=args.update_every,
                             per_channel=args.per_channel, calib_batches=args.calib_batches, device=device,
                             progress=not args.no_progress, seed=args.seed, export_path=tmp / "export.safetensors")
            acc = result["accuracy"]
        metrics = {"method": args.method, "bits": args.bits, "act_bits": args.act_bits, "fp32_accuracy": fp32_acc,
                   "quantized_accuracy": acc, "checkpoint": str(args.checkpoint), "model": extra["model"]}
        if args.method == "ptq":
            metrics["calibrator"] = args.calibrator
        atomic_save_json(metrics, tmp / "metrics.json", indent=2, default=json_default, allow_nan=True)
    print(f"{args.method}: FP32 accuracy {fp32_acc:.4f} -> quantized {acc:.4f} "
          f"(W{args.bits}A{args.act_bits}); written to {out}")
    return 0


def cmd_analyze(args) -> int:
    from repspec.torch_impl.quantization.analysis import write_report
    from repspec.torch_impl.training.io import atomic_directory

    model, extra = _build_from_checkpoint(args.checkpoint)
    out = Path(args.out)
    with atomic_directory(out) as tmp:
        write_report(model, tmp)
    print(f"analysis of {extra['model']} written to {out}")
    print((out / "layer_stats.md").read_text())
    return 0


def cmd_convert(args) -> int:
    from repspec.torch_impl.training.checkpoint import save_weights
    from repspec.torch_impl.modules.deploy import convert_to_deploy

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CLIError(f"--out must end in .safetensors, got {str(out)!r}")
    model, extra = _build_from_checkpoint(args.checkpoint)
    deploy = convert_to_deploy(model)
    save_weights(out, deploy)
    n_params = sum(p.numel() for p in deploy.parameters())
    print(f"deploy form of {extra['model']} ({n_params} parameters, conv + ReLU only) written to {out}")
    return 0


def cmd_verify(args) -> int:
    from repspec.conformance.runner import run_from_args

    if args.impl is None and not args.list:
        args.impl = "torch"  # the shipped adapter: repspec.conformance.torch_adapter:TorchAdapter
    return run_from_args(args)


def cmd_demo(args) -> int:
    import torch

    from repspec.experiments import render_results, run_demo

    if args.render is not None:
        print(f"rendered table.md, claims.md, readme_section.md into {render_results(args.render)}")
        return 0
    if args.threads is None and args.device == "cpu":
        # the demo's models are tiny: one thread was measured 4x faster than torch's default of 2
        # on a 2-core machine (35 s vs 137 s for --quick); --threads overrides
        torch.set_num_threads(1)
    device = _setup_torch(args)
    return run_demo(out_dir=Path(args.out), quick=args.quick, seed=args.seed, device=device,
                    progress=not args.no_progress, seeds=args.seeds, dataset=args.dataset, data_dir=args.data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "theorem":
            return 0 if theorem_demo(seed=args.seed, iterations=args.iterations) < 1e-9 else 1
        if args.command == "list-models":
            from repspec.torch_impl.modules.models import list_models

            print("\n".join(list_models()))
            return 0
        handler = {"demo": cmd_demo, "train": cmd_train, "hypersearch": cmd_hypersearch,
                   "quantize": cmd_quantize, "analyze": cmd_analyze, "convert": cmd_convert,
                   "verify": cmd_verify}[args.command]
        return handler(args)
    except CLIError as e:
        print(f"repspec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        # the library's own validation errors name the argument; show them as one line
        msg = e.args[0] if e.args else repr(e)
        print(f"repspec {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
