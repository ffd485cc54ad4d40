"""A model argument resolved without torch: which kind of file or directory it is, what
rebuilds it, and which data to evaluate it on (``quantize``, ``analyze``, ``convert``,
``evaluate`` and ``verify --reference``). Only JSON manifests and safetensors headers are
read here; :mod:`repspec.cli._loading` builds the model once the checks are done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from repspec.core.outputs import OUTPUT_MANIFEST, read_json_format, safetensors_metadata

from ._common import CLIError, check_data_args

#: file suffixes of original-code checkpoints (read with torch.load(weights_only=True), never unpickled)
OFFICIAL_SUFFIXES = (".pth", ".pt")

#: --image-size defaults when the source records no data (the loaders' own defaults)
DEFAULT_IMAGE_SIZE = {"digits": 16, "cifar10": 32, "cifar100": 32, "folder": 32}


class Source:
    """A model argument resolved without torch: ``kind`` is ``checkpoint``, ``deploy``,
    ``quantized`` or ``official`` (a ``.pth``/``.pt`` of the original code, with ``--model``);
    ``data`` the data settings to evaluate it on (None where the source records none);
    ``meta`` what rebuilds it; ``model_name`` the registry name (None if unknown)."""

    def __init__(self, kind: str, path: Path, data: dict | None, meta: dict, describe: str,
                 model_name: str | None = None):
        self.kind, self.path, self.data, self.meta, self.describe = kind, path, data, meta, describe
        self.model_name = model_name


def read_checkpoint(path, option: str = "--checkpoint") -> dict:
    """The manifest of a `repspec train` checkpoint directory (JSON only, no torch)."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{option} {str(path)!r} does not exist")
    if not p.is_dir():
        raise CLIError(f"{option} {str(path)!r} is a file, not a checkpoint directory")
    man = p / "checkpoint.json"
    if not man.is_file() or read_json_format(man) != "repspec-checkpoint":
        raise CLIError(f"{option} {str(path)!r} is not a repspec checkpoint (no valid checkpoint.json)")
    manifest = json.loads(man.read_text(encoding="utf-8"))
    extra = manifest.get("extra") or {}
    if not isinstance(extra, dict) or "model" not in extra:
        raise CLIError(f"{option} {str(path)!r} was not written by `repspec train` (no model name recorded)")
    return manifest


def data_settings(extra: dict) -> dict:
    """How to reload a checkpoint's data: recorded by `repspec train` (older checkpoints: rebuilt
    from their run configuration and dataset record)."""
    if isinstance(extra.get("data"), dict):
        return dict(extra["data"])
    run, ds = extra.get("run") or {}, extra.get("dataset") or {}
    size = ds.get("image_size") or [run.get("image_size")]
    return {"dataset": run.get("dataset", ds.get("name")), "data_dir": None, "image_size": size[0],
            "seed": run.get("seed", ds.get("split_seed")), "num_classes": extra.get("num_classes"),
            "mean": ds.get("mean"), "std": ds.get("std"), "train_size": ds.get("train_size"),
            "test_size": ds.get("test_size"), "classes": ds.get("classes")}


def check_data_flags_match(args, data: dict, source: str) -> None:
    """A command that reads a checkpoint uses its data settings; a flag may only repeat them."""
    for flag, key in (("dataset", "dataset"), ("image_size", "image_size"), ("seed", "seed")):
        given = getattr(args, flag, None)
        if given is not None and given != data.get(key):
            raise CLIError(f"--{flag.replace('_', '-')} {given} contradicts {source}, which was trained with "
                           f"{key.replace('_', ' ')} {data.get(key)!r} (the data settings come from the checkpoint)")
    if getattr(args, "data_dir", None) is not None:
        if data.get("dataset") == "digits":
            raise CLIError("--data-dir: the checkpoint was trained on the bundled digits, which need no data directory")
        if not Path(args.data_dir).is_dir():
            raise CLIError(f"--data-dir {args.data_dir!r} is not a directory")


def explicit_data(args, describe: str) -> dict:
    """Data settings from the flags, for a source that records none (an original-code .pth, or a
    file converted from one): --dataset is required; the classes are checked against the model later."""
    if args.dataset is None:
        raise CLIError(f"{describe} records no dataset: give --dataset (and --data-dir, --image-size as it needs)")
    check_data_args(args)
    size = args.image_size if args.image_size is not None else DEFAULT_IMAGE_SIZE[args.dataset]
    return {"dataset": args.dataset, "data_dir": None if args.data_dir is None else os.path.abspath(args.data_dir),
            "image_size": int(size), "seed": 0 if args.seed is None else int(args.seed)}


def settle_data(args, source: Source, recorded_by: str) -> None:
    """``source.data``: what the source records (the flags may only repeat it; ``recorded_by`` names
    the source in the refusal), or, where it records nothing, what the flags say."""
    if source.data is None:
        source.data = explicit_data(args, source.describe)
    else:
        check_data_flags_match(args, source.data, recorded_by)


def resolve_source(path, option: str = "--checkpoint", kinds=("checkpoint",), model: str | None = None) -> Source:
    """Turn "a checkpoint argument" into a :class:`Source` (JSON and headers only, no torch)."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{option} {str(path)!r} does not exist")
    if p.is_file() and p.suffix.lower() in OFFICIAL_SUFFIXES and "official" in kinds:
        if model is None:
            raise CLIError(f"{option} {str(path)!r} is a {p.suffix} checkpoint of the original code; name its "
                           f"architecture with --model NAME (`repspec list-models`)")
        return Source("official", p, None, {"model": model}, f"original-code checkpoint {str(p)!r} ({model})", model)
    if model is not None:
        raise CLIError(f"--model applies to original-code .pth/.pt checkpoints; {option} {str(path)!r} is not one "
                       f"(a repspec checkpoint or file records its own model)")
    if p.is_dir() and (p / OUTPUT_MANIFEST).is_file() and "quantized" in kinds:
        p = p / "export.safetensors"
    if p.is_dir() or "checkpoint" in kinds and p.suffix != ".safetensors":
        manifest = read_checkpoint(p, option)
        extra = manifest["extra"]
        return Source("checkpoint", p, data_settings(extra), {"manifest": manifest},
                      f"checkpoint {str(p)!r} ({extra['model']})", extra["model"])
    if p.suffix != ".safetensors" or not p.is_file():
        raise CLIError(f"{option} {str(path)!r} is not a checkpoint directory or a repspec .safetensors file")
    meta = safetensors_metadata(p)
    if not meta:
        raise CLIError(f"{option} {str(path)!r} is not a valid safetensors file")
    if meta.get("format") == "repspec-deploy" and "deploy" in kinds:
        info = json.loads(meta.get("repspec", "{}"))
        return Source("deploy", p, info.get("data"), info, f"deploy file {str(p)!r} ({info.get('model')})",
                      info.get("model"))
    if "repspec" in meta and "quantized" in kinds:
        source = _quantized_source(p, meta, option, path)
        if source is not None:
            return source
    raise CLIError(f"{option} {str(path)!r} is a safetensors file without repspec metadata "
                   f"(old `repspec convert` files lack it: convert the checkpoint again)")


def _quantized_source(p: Path, meta: dict, option: str, given) -> Source | None:
    """A `repspec quantize` export, with the data its output directory's manifest records (None:
    the file's metadata names no quantized export)."""
    try:
        info = json.loads(meta["repspec"])
    except ValueError:
        info = {}
    if info.get("format") != "repspec-quantized":
        return None
    man = p.parent / OUTPUT_MANIFEST
    data = None
    if man.is_file() and read_json_format(man) == "repspec-output":
        data = json.loads(man.read_text(encoding="utf-8")).get("data")
    if data is None:
        raise CLIError(f"{option} {str(given)!r}: the quantized export has no {OUTPUT_MANIFEST} next to it "
                       f"recording its dataset (keep the `repspec quantize` output directory together)")
    return Source("quantized", p, data, info, f"quantized export {str(p)!r}", info.get("model"))
