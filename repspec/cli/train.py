"""``repspec train``: train a registry model (SGD, or the RepOptimizer for ``repopt_vgg_*``) into a
checkpoint directory; ``--resume`` continues the same run bit for bit, and a larger ``--epochs``
extends a finished one."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from repspec.core.files import replace_directory
from repspec.core.outputs import normal_mode, tmp_prefix
from repspec.core.runtime import bit_identity_differences, reproducibility_info

from . import _common as common
from ._loading import load_train_data, setup_torch
from ._sources import OFFICIAL_SUFFIXES, read_checkpoint

NAME = "train"
OUTPUT = "checkpoint"

#: the arguments that define a training run; `--resume` must repeat them (it continues that run)
RUN_KEYS = ("model", "dataset", "image_size", "batch_size", "seed", "epochs", "lr", "momentum", "weight_decay",
            "nesterov", "oabn_threshold")


def add_parser(sub, argv) -> None:
    tr = sub.add_parser("train", help="train a registry model and save a checkpoint")
    tr.add_argument("--model", required=True, help="registry name, e.g. repvgg_tiny8 (`repspec list-models`)")
    tr.add_argument("--oabn-threshold", type=common.parse_threshold, default=None,
                    help="OABN threshold s for *_oabn models")
    tr.add_argument("--scales", default=None, help="HyperSearch scales (.safetensors/.json/.pth) for repopt_vgg_*")
    tr.add_argument("--out", required=True, help="checkpoint directory (new, empty, or with --overwrite/--resume)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the checkpoint in --out with the same arguments; a larger --epochs extends a "
                         "finished run (its added epochs follow a new cosine cycle from --lr)")
    tr.add_argument("--allow-nonidentical-resume", action="store_true",
                    help="resume although threads, torch version or device differ from the checkpoint's "
                         "(the result is then not bit-identical to an uninterrupted run)")
    common.add_overwrite_arg(tr)
    common.add_data_args(tr)
    common.add_batch_arg(tr)
    common.add_sgd_args(tr)
    common.add_runtime_args(tr)


# ------------------------------------------------------------------------------------ checks


def check(args) -> None:
    common.check_data_args(args)
    inputs = [args.data_dir]
    if args.resume and args.overwrite:
        raise common.CLIError("--resume continues the checkpoint in --out and --overwrite replaces it; give one")
    if args.allow_nonidentical_resume and not args.resume:
        raise common.CLIError("--allow-nonidentical-resume applies with --resume only")
    is_repopt = args.model.startswith("repopt_vgg_")
    if args.scales is not None:
        if not is_repopt:
            raise common.CLIError("--scales applies to repopt_vgg_* models only")
        if not Path(args.scales).is_file():
            raise common.CLIError(f"--scales {args.scales!r} is not a file")
        inputs.append(args.scales)
    elif is_repopt:
        raise common.CLIError("repopt_vgg_* models need --scales (run `repspec hypersearch` first)")
    if args.oabn_threshold is not None and "oabn" not in args.model:
        raise common.CLIError("--oabn-threshold applies to *_oabn models only")
    if args.resume and not (Path(args.out) / "checkpoint.json").is_file():
        raise common.CLIError(f"--resume: no checkpoint at {args.out!r}")
    common.check_out(args, OUTPUT, inputs, resume=args.resume)
    if args.resume:
        check_resume_arguments(args)


def run_config(args) -> dict:
    return {k: getattr(args, k) for k in RUN_KEYS}


def check_resume_arguments(args) -> None:
    """``--resume`` continues the same run: refuse changed arguments (a larger ``--epochs``
    extends a finished run). Sets ``args.saved_extra`` and ``args.extend_from``."""
    extra = read_checkpoint(args.out, "--out")["extra"]
    saved = {k: common.decode_float(v) for k, v in (extra.get("run") or {}).items()}
    if not saved:
        raise common.CLIError(f"--resume: the checkpoint at {args.out!r} records no run configuration")
    now = json.loads(json.dumps(run_config(args), default=str))
    now["oabn_threshold"] = args.oabn_threshold
    changed = [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now[k]!r}" for k in RUN_KEYS
               if k != "epochs" and saved.get(k) != now[k]]
    if changed:
        raise common.CLIError("--resume continues the checkpointed run with the same arguments; changed: "
                              + ", ".join(changed))
    ts = extra.get("train_state") or {}
    finished = ts.get("global_step") is not None and ts.get("global_step") >= ts.get("total_steps", math.inf)
    args.extend_from = None
    if args.epochs < saved["epochs"]:
        raise common.CLIError(f"--resume: --epochs {args.epochs} is fewer than the run's {saved['epochs']}")
    if args.epochs > saved["epochs"]:
        if not finished:
            raise common.CLIError(f"--resume: the run is not finished ({ts.get('epoch')} of {saved['epochs']} "
                                  f"epochs); resume it with --epochs {saved['epochs']} first, then extend it")
        args.extend_from = int(saved["epochs"])
    args.saved_extra = extra


def outputs(args) -> list:
    return [args.out]


# ----------------------------------------------------------------------------------- handler


def run(args) -> int:
    import torch

    from repspec.torch_impl.modules.models import create_model
    from repspec.torch_impl.training.data import make_loaders
    from repspec.torch_impl.training.train import TrainConfig, seed_everything, train_classifier

    device = setup_torch(args)
    overrides = model_overrides(args)
    repro = reproducibility_info(device)
    extensions = _resumed_extensions(args, repro) if args.resume else []
    scales, scales_record = _scales(args)
    train_set, test_set, info = load_train_data(args)
    seed_everything(args.seed)
    if scales is not None:
        model = create_model(args.model, info.num_classes, scales=scales, seed=args.seed, **overrides)
    else:
        model = create_model(args.model, info.num_classes, **overrides)
    model = model.to(device)
    optimizer = make_optimizer(model, args, repopt=scales is not None)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    train_loader, test_loader = make_loaders(train_set, test_set, batch_size=args.batch_size, seed=args.seed)
    out = Path(args.out)
    work = _work_directory(args, out)
    extra = {"model": args.model, "num_classes": info.num_classes, "model_overrides": overrides,
             "dataset": info.to_dict(), "data": _data_record(args, info), "run": run_config(args),
             "reproducibility": repro, "scales": scales_record, "extensions": extensions}
    try:
        config = TrainConfig(epochs=args.epochs, device=device, checkpoint_path=work,
                             checkpoint_every=len(train_loader), resume=args.resume, checkpoint_extra=extra,
                             progress=not args.no_progress, seed=args.seed)
        history = train_classifier(
            model, train_loader, optimizer=optimizer, scheduler=scheduler, eval_loader=test_loader, config=config,
            on_resume=_extension_cycle(args, optimizer, scheduler),
            epoch_callback=lambda r: print(f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} "
                                           f"acc {r['train_acc']:.4f}, test acc {r['eval_acc']:.4f}"))
        if work != out:
            replace_directory(work, out)
    except BaseException:
        if work != out:  # the new run did not finish: the old checkpoint stays and the new run's place goes
            shutil.rmtree(work, ignore_errors=True)
        raise
    acc = history.final_eval_acc
    print(f"final test accuracy {'n/a' if acc is None else format(acc, '.4f')}; checkpoint {out}")
    return 0


def model_overrides(args) -> dict:
    return {} if getattr(args, "oabn_threshold", None) is None else {"oabn_threshold": args.oabn_threshold}


def _resumed_extensions(args, repro: dict) -> list:
    """``--resume``: refuse (or, allowed, warn about) settings that break bit-identity; the run's
    extensions, with this one when ``--epochs`` extends it."""
    diffs = bit_identity_differences(args.saved_extra.get("reproducibility"), repro)
    if diffs and not args.allow_nonidentical_resume:
        raise common.CLIError(f"--resume would not be bit-identical to the checkpointed run ({'; '.join(diffs)}); "
                              f"rerun with the recorded settings, or pass --allow-nonidentical-resume")
    if diffs:
        print(f"repspec train: warning: resuming with {'; '.join(diffs)}: the result will not be bit-identical "
              f"to an uninterrupted run", file=sys.stderr)
    extensions = list(args.saved_extra.get("extensions") or [])
    if args.extend_from is not None:
        extensions.append({"from_epochs": args.extend_from, "to_epochs": args.epochs})
    return extensions


def _scales(args):
    """``(scales, record)`` of a ``repopt_vgg_*`` run (``(None, None)`` for other models); a resumed run
    must use the scales file it started with."""
    if not args.model.startswith("repopt_vgg_"):
        return None, None
    scales = load_any_scales(args.scales, args.model)
    record = {"path": os.path.abspath(args.scales), "sha256": common.sha256_file(args.scales)}
    if args.resume and (args.saved_extra.get("scales") or {}).get("sha256") not in (None, record["sha256"]):
        raise common.CLIError(f"--resume: --scales {args.scales!r} is not the scales file the run was started with "
                              f"(SHA-256 differs)")
    return scales, record


def load_any_scales(path, model_name: str):
    """Our own scale files (.safetensors/.json), or a published RepOpt-VGG .pth/.pt (weights_only,
    checked key by key against ``model_name``); every value must be > 0 (SPEC §3)."""
    import torch

    from repspec.torch_impl.optimizers.scales import load_scales
    from repspec.torch_impl.training.official import load_official_scales

    if Path(path).suffix.lower() in OFFICIAL_SUFFIXES:
        scales = load_official_scales(path, model_name)
    else:
        scales = load_scales(path)
    for k, v in scales.items():
        if not bool(torch.all(v > 0)):
            bad = float(v[v <= 0][0])
            raise common.CLIError(f"--scales {str(path)!r}: {k!r} holds {bad!r}; SPEC §3 scales must be > 0")
    return scales


def make_optimizer(model, args, *, repopt: bool):
    import torch

    from repspec.torch_impl.optimizers.repoptimizer import build_repoptimizer, weight_decay_groups

    if repopt:
        return build_repoptimizer(model, None, args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                  weight_decay=args.weight_decay)
    return torch.optim.SGD(weight_decay_groups(model, args.weight_decay), lr=args.lr, momentum=args.momentum,
                           nesterov=args.nesterov, weight_decay=args.weight_decay)


def _extension_cycle(args, optimizer, scheduler):
    """The ``on_resume`` hook: a finished run that ``--epochs`` extends ended its cosine cycle at
    lr ~ 0, so the added epochs follow a new cycle from ``--lr``."""
    def on_resume(state: dict) -> None:
        if args.extend_from is not None and scheduler.last_epoch >= scheduler.T_max:
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"]
            scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
            scheduler.T_max = args.epochs - args.extend_from
            scheduler.last_epoch = 0
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return on_resume


def _work_directory(args, out: Path) -> Path:
    """Where the run writes its checkpoints: ``out``, or with ``--overwrite`` of a checkpoint a
    temporary directory beside it (the old checkpoint stays until the new run finishes)."""
    if out.exists() and not args.resume and any(out.iterdir()):
        work = Path(tempfile.mkdtemp(prefix=tmp_prefix(out.name), dir=out.parent))
        normal_mode(work, directory=True)
        return work
    return out


def _data_record(args, info) -> dict:
    """The data settings the checkpoint records (what `quantize`, `evaluate`, ... reload)."""
    return {"dataset": args.dataset, "data_dir": None if args.data_dir is None else os.path.abspath(args.data_dir),
            "image_size": int(info.image_size[0]), "seed": args.seed,
            **{k: v for k, v in info.to_dict().items() if k in (
                "num_classes", "mean", "std", "train_size", "test_size", "classes")}}
