"""``repspec quantize ptq|qat|clusterqat``: quantize a trained checkpoint (SPEC §5) into an output
directory (``metrics.json``, ``export.safetensors``; ``--onnx``: also ``model.onnx``, QDQ)."""

from __future__ import annotations

import os
from pathlib import Path

from repspec.core.files import atomic_directory, atomic_save_json
from repspec.core.runtime import reproducibility_info
from repspec.core.vocabulary import CALIBRATORS

from . import _common as common
from ._loading import build_model, check_classes, load_data_from_settings, setup_torch
from ._sources import resolve_source, settle_data

NAME = "quantize"
OUTPUT = "dir"

#: training options of qat/clusterqat (ptq refuses them); frozen-BN fine-tuning diverges at 1e-2
#: (docs/07-qat.md)
QAT_DEFAULTS = (("epochs", 3), ("lr", 1e-4), ("momentum", 0.9), ("weight_decay", 1e-4))
UPDATE_EVERY_DEFAULT = 10


def add_parser(sub, argv) -> None:
    qz = sub.add_parser("quantize", help="quantize a trained checkpoint: ptq | qat | clusterqat (SPEC §5)")
    qz.add_argument("method", choices=["ptq", "qat", "clusterqat"], help="the quantization method")
    qz.add_argument("--checkpoint", required=True, help=common.CHECKPOINT_HELP)
    qz.add_argument("--model", default=None, help=common.MODEL_HELP)
    qz.add_argument("--bits", type=common.parse_bits, default=8,
                    help="weight bits (1..16; uniform weights need >= 2)")
    qz.add_argument("--act-bits", type=common.parse_bits, default=8, help="activation bits (1..16)")
    qz.add_argument("--calibrator", default="minmax", choices=CALIBRATORS,
                    help="activation-range calibrator (ptq; for qat/clusterqat it sets the initial ranges)")
    qz.add_argument("--calib-batches", type=common.parse_positive_int, default=8, help="calibration batches")
    qz.add_argument("--per-channel", action="store_true",
                    help="per-output-channel weight scales (ptq, qat; refused for clusterqat)")
    qz.add_argument("--update-every", type=common.parse_positive_int, default=None,
                    help="ClusterQAT centroid refit period in steps (clusterqat only; default 10)")
    qz.add_argument("--out", required=True, help="output directory (metrics.json, export.safetensors)")
    qz.add_argument("--onnx", action="store_true",
                    help="also write OUT/model.onnx: the quantized deploy network as a standard QDQ graph "
                         "(int8 weights per tensor/channel, int32 bias; clusterqat: uint8 indices -> Gather from "
                         "the codebook); needs --act-bits 8, --bits <= 8 and the onnx package")
    common.add_overwrite_arg(qz)
    common.add_data_args(qz, from_checkpoint=True)
    common.add_batch_arg(qz)
    common.add_sgd_args(qz, lr=None, epochs=None, momentum=None, weight_decay=None, nesterov=False,
                        note=" (qat and clusterqat only; defaults: --epochs 3 --lr 1e-4 --momentum 0.9 "
                             "--weight-decay 1e-4)")
    common.add_runtime_args(qz)


# ------------------------------------------------------------------------------------ checks


def check(args) -> None:
    check_method_options(args)
    args.source = resolve_source(args.checkpoint, kinds=("checkpoint", "official"), model=args.model)
    settle_data(args, args.source, f"checkpoint {args.checkpoint!r}")
    if args.onnx:
        common.require_modules("repspec quantize --onnx", "onnx")
        if args.act_bits != 8:
            raise common.CLIError(f"--onnx: --act-bits {args.act_bits} has no standard QDQ form (ONNX uint8 "
                                  f"activations); use --act-bits 8")
        if args.bits > 8:
            raise common.CLIError(f"--onnx: --bits {args.bits} do not fit ONNX int8/uint8 weight codes; use "
                                  f"--bits <= 8")
        # OUT/model.onnx is inside the output directory, which the output rule checks
    common.check_out(args, OUTPUT, [args.checkpoint, args.data_dir])


def check_method_options(args) -> None:
    """An option either works for the method or is refused; the training options get their defaults."""
    m = args.method
    if m in ("ptq", "qat") and args.bits < 2:
        raise common.CLIError(f"--bits must be >= 2 for uniform (symmetric narrow-range) weights ({m}), "
                              f"got {args.bits}")
    if m == "ptq":
        given = [f"--{k.replace('_', '-')}" for k in ("epochs", "lr", "momentum", "weight_decay", "update_every")
                 if getattr(args, k) is not None]
        if given:
            raise common.CLIError(f"{', '.join(given)}: ptq does no training; these apply to qat/clusterqat")
    if m == "qat" and args.update_every is not None:
        raise common.CLIError("--update-every is the ClusterQAT centroid refit period; it applies to clusterqat only")
    if m == "clusterqat" and args.per_channel:
        raise common.CLIError("--per-channel applies to uniform weights (ptq, qat); clusterqat uses one codebook "
                              "per layer")
    if m != "ptq":
        for k, v in QAT_DEFAULTS:
            if getattr(args, k) is None:
                setattr(args, k, v)
        if m == "clusterqat" and args.update_every is None:
            args.update_every = UPDATE_EVERY_DEFAULT


def outputs(args) -> list:
    return [args.out]


# ----------------------------------------------------------------------------------- handler


def run(args) -> int:
    from repspec.torch_impl.quantization.ptq import evaluate
    from repspec.torch_impl.training.data import make_loader, make_loaders

    device = setup_torch(args)
    model = build_model(args.source).to(device)
    name = args.source.model_name
    refuse_se(model, name)
    data = args.source.data
    train_set, test_set, info = load_data_from_settings(data, args.data_dir)
    check_classes(model, info, args.source)
    if args.source.kind == "official":  # record what the data was, so the output can be evaluated again
        data = {**data, **{k: v for k, v in info.to_dict().items() if k in (
            "num_classes", "mean", "std", "train_size", "test_size", "classes")}}
    seed = int(data["seed"])
    loaders = make_loaders(train_set, test_set, batch_size=args.batch_size, seed=seed)
    calib_loader = make_loader(train_set, args.batch_size, seed=seed, shuffle=False)
    fp32_acc = evaluate(model, loaders[1], device=device)
    if data.get("data_dir") is not None and args.data_dir is not None:
        data = {**data, "data_dir": os.path.abspath(args.data_dir)}
    out = Path(args.out)
    metrics = _metrics_header(args, name, data, fp32_acc)
    with atomic_directory(out, kind="quantize", data=data, model=name, method=args.method) as tmp:
        if args.method == "ptq":
            qmodel, acc = _ptq(args, model, calib_loader, loaders[1], device, tmp, metrics)
        else:
            qmodel, acc = None, _qat(args, model, loaders, calib_loader, device, seed, tmp, metrics)
        metrics["onnx"] = _export_onnx(args, qmodel, name, tmp) if args.onnx else None
        metrics["reproducibility"] = reproducibility_info(device)
        atomic_save_json(common.json_clean(metrics), tmp / "metrics.json", indent=2, allow_nan=False)
    print(f"{args.method}: FP32 accuracy {fp32_acc:.4f} -> quantized {acc:.4f} "
          f"(W{args.bits}A{args.act_bits}); written to {out}" + (" (with model.onnx)" if args.onnx else ""))
    return 0


def refuse_se(model, name) -> None:
    """repspec's PTQ/QAT do not quantize SE blocks (RepVGG-D2se): refuse rather than drop them."""
    if any(getattr(b, "se", None) is not None for _, b in model.named_blocks()):
        raise common.CLIError(f"{name} has SE blocks (RepVGG-D2se), which repspec's quantization does not handle: "
                              f"quantizing it would drop them; refused")


def _metrics_header(args, name, data: dict, fp32_acc: float) -> dict:
    """What ``metrics.json`` records before the quantization runs: the arguments, data and FP32 accuracy."""
    return {"method": args.method, "model": name, "checkpoint": os.path.abspath(args.checkpoint),
            "checkpoint_kind": "original-code .pth" if args.source.kind == "official" else "repspec",
            "bits": args.bits, "act_bits": args.act_bits, "calibrator": args.calibrator,
            "calib_batches": args.calib_batches, "per_channel": args.per_channel,
            "update_every": args.update_every, "epochs": args.epochs, "lr": args.lr, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "batch_size": args.batch_size, "data": data,
            "fp32_accuracy": fp32_acc}


def _ptq(args, model, calib_loader, test_loader, device, tmp: Path, metrics: dict):
    from repspec.torch_impl.quantization.export import export_quantized
    from repspec.torch_impl.quantization.ptq import evaluate, ptq_quantize

    qmodel = ptq_quantize(model, calib_loader, weight_bits=args.bits, act_bits=args.act_bits,
                          calibrator=args.calibrator, per_channel=args.per_channel,
                          num_batches=args.calib_batches, progress=not args.no_progress)
    acc = evaluate(qmodel, test_loader, device=device)
    export_quantized(qmodel, tmp / "export.safetensors")
    metrics.update(quantized_accuracy=acc, state_size=int(qmodel.state_size()), qat_history=None,
                   initial_act_ranges=None)
    return qmodel, acc


def _qat(args, model, loaders, calib_loader, device, seed: int, tmp: Path, metrics: dict) -> float:
    from repspec.experiments.demo import run_qat
    from repspec.torch_impl.quantization.ptq import ptq_quantize

    # the activation ranges QAT starts from come from --calibrator (run_qat would use min/max)
    ranges = ptq_quantize(model, calib_loader, weight_bits=None, act_bits=args.act_bits,
                          calibrator=args.calibrator, num_batches=args.calib_batches,
                          progress=False).act_ranges()
    ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}
    train_loader, test_loader = loaders
    result = run_qat(model, train_loader, test_loader, calib_loader, method=args.method, bits=args.bits,
                     act_bits=args.act_bits, act_ranges=ranges, epochs=args.epochs, lr=args.lr,
                     momentum=args.momentum, weight_decay=args.weight_decay,
                     update_every=args.update_every or UPDATE_EVERY_DEFAULT, per_channel=args.per_channel,
                     calib_batches=args.calib_batches, device=device, progress=not args.no_progress,
                     seed=seed, export_path=tmp / "export.safetensors")
    metrics.update(quantized_accuracy=result["accuracy"], state_size=result["state_size"],
                   qat_history=result["history"], initial_act_ranges={k: list(v) for k, v in ranges.items()})
    return result["accuracy"]


def _export_onnx(args, qmodel, name, tmp: Path) -> dict:
    """``OUT/model.onnx`` (QDQ) and its ``metrics.json`` record; the QAT result as exported."""
    from repspec.torch_impl.quantization.export import load_exported
    from repspec.torch_impl.quantization.onnx_export import export_onnx

    if qmodel is None:  # qat/clusterqat: the QuantizedModel of the export just written
        qmodel = load_exported(tmp / "export.safetensors")
    export_onnx(qmodel, tmp / "model.onnx", model_name=name, bias="int32")
    kmeans = args.method == "clusterqat"
    return {"file": "model.onnx", "format": "qdq", "activations": "uint8 QuantizeLinear/DequantizeLinear",
            "weights": "uint8 indices -> Cast -> Gather(float codebook) (a codebook is not an affine grid)"
            if kmeans else "int8 codes -> DequantizeLinear (" + ("per channel)" if args.per_channel else
                                                                 "per tensor)"),
            "bias": "float (no weight scale for an int32 grid)" if kmeans else "int32 codes at s_x*s_w"}
