"""``repspec convert``: the deploy form (plain conv + ReLU) of a checkpoint as ``.safetensors``
whose metadata rebuilds it; ``--onnx FILE`` also writes it as FP32 ONNX."""

from __future__ import annotations

import json
import os
from pathlib import Path

from repspec.core.outputs import OutputError, check_output
from repspec.core.version import __version__

from . import _common as common
from ._loading import build_model, setup_torch
from ._sources import resolve_source

NAME = "convert"
OUTPUT = "file"


def add_parser(sub, argv) -> None:
    cv = sub.add_parser("convert", help="the deploy form (plain conv + ReLU) of a checkpoint, as .safetensors "
                                        "with the metadata to rebuild it (quantized exports: `repspec quantize`)")
    cv.add_argument("--checkpoint", required=True, help=common.CHECKPOINT_HELP)
    cv.add_argument("--model", default=None, help=common.MODEL_HELP)
    cv.add_argument("--out", required=True, help="deploy weights (.safetensors)")
    cv.add_argument("--onnx", default=None, metavar="FILE",
                    help="also write the deploy network as FP32 ONNX to FILE (.onnx; needs the onnx package)")
    common.add_overwrite_arg(cv)
    common.add_runtime_args(cv)


# ------------------------------------------------------------------------------------ checks


def check(args) -> None:
    if Path(args.out).suffix != ".safetensors":
        raise common.CLIError(f"--out must end in .safetensors, got {args.out!r}")
    args.source = resolve_source(args.checkpoint, kinds=("checkpoint", "official"), model=args.model)
    inputs = [args.checkpoint]
    if args.onnx:
        check_onnx_output(args, inputs)
    common.check_out(args, OUTPUT, inputs)


def check_onnx_output(args, inputs: list) -> None:
    """``--onnx FILE``: the onnx package, and the output rule for FILE (an ONNX file repspec wrote
    is replaced with ``--overwrite``; its metadata says so)."""
    common.require_modules("repspec convert --onnx", "onnx")
    p = Path(args.onnx)
    if p.suffix != ".onnx":
        raise common.CLIError(f"--onnx must end in .onnx, got {args.onnx!r}")
    if os.path.realpath(os.path.abspath(p)) == os.path.realpath(os.path.abspath(args.out)):
        raise common.CLIError(f"--onnx {args.onnx!r} is the same path as --out")
    if p.is_file() and not p.is_symlink() and repspec_onnx(p):
        if not args.overwrite:
            raise common.CLIError(f"--onnx {args.onnx!r} exists; pass --overwrite to replace this repspec output")
        # an ONNX file repspec wrote: the rule's remaining checks are those of a new file in its directory
        stand_in = p.with_name(f".{p.name}.repspec-check")
        try:
            check_output(stand_in, option="--onnx", kind="file", inputs=inputs)
        except OutputError as exc:
            raise common.CLIError(str(exc).replace(str(stand_in), str(args.onnx))) from None
    else:
        check_output(p, option="--onnx", kind="file", inputs=inputs, overwrite=args.overwrite)


def repspec_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX file that repspec's export_onnx wrote (its ``repspec.format`` metadata)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable as ONNX: not ours
        return False
    return any(e.key == "repspec.format" for e in proto.metadata_props)


def outputs(args) -> list:
    return [args.out] + ([args.onnx] if args.onnx else [])


# ----------------------------------------------------------------------------------- handler


def run(args) -> int:
    from repspec.torch_impl.io import atomic_save_safetensors
    from repspec.torch_impl.modules.deploy import convert_to_deploy

    setup_torch(args)
    source = args.source
    model = build_model(source)
    name = source.model_name
    overrides, origin = _origin(source, model)
    deploy = convert_to_deploy(model)
    info = {"format": "repspec-deploy", "format_version": 1, "repspec_version": __version__,
            "model": name, "num_classes": int(model.num_classes), "model_overrides": overrides,
            "num_blocks": list(model.num_blocks), "widths": list(model.widths), "strides": list(model.strides),
            "in_channels": int(model.in_channels), "data": source.data, **origin}
    if args.onnx:  # first: the ONNX export is what may refuse the network
        from repspec.torch_impl.quantization.onnx_export import export_onnx

        export_onnx(deploy, args.onnx, model_name=name)
    atomic_save_safetensors(deploy.state_dict(), args.out,
                            metadata={"format": "repspec-deploy", "repspec": json.dumps(common.json_clean(info))})
    n_params = sum(p.numel() for p in deploy.parameters())
    print(f"deploy form of {name} ({n_params} parameters, conv + ReLU only) written to {args.out}"
          + (f"; FP32 ONNX written to {args.onnx}" if args.onnx else ""))
    return 0


def _origin(source, model) -> tuple[dict, dict]:
    """``(model_overrides, origin)`` the deploy metadata records: what rebuilds the architecture, and
    which checkpoint it came from."""
    if source.kind == "official":
        from repspec.torch_impl.training.official import official_layout

        # the file's form (deploy, YOLOv6 post-BN): the model's keys are the file's, loaded strictly
        overrides = {k: v for k, v in official_layout(source.model_name, model.state_dict()).items()
                     if k != "num_classes"}
        return overrides, {"checkpoint_manifest_sha256": None,
                           "official_checkpoint": {"path": os.path.abspath(source.path),
                                                   "sha256": common.sha256_file(source.path)}}
    extra = source.meta["manifest"]["extra"]
    return extra.get("model_overrides") or {}, {"checkpoint_manifest_sha256":
                                                source.meta["manifest"].get("manifest_sha256")}
