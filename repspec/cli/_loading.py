"""The steps several handlers share once the checks are done: torch's settings, the model of a
resolved :class:`~repspec.cli._sources.Source`, and the data it was trained on.

Every function imports torch or ``repspec.torch_impl`` inside its body: the handlers call
them after every argument and output path was checked (the command line checks before it
imports torch).
"""

from __future__ import annotations

from pathlib import Path

from repspec.core.runtime import DEFAULT_THREADS

from ._common import CLIError, decode_float
from ._sources import Source, resolve_source


def setup_torch(args) -> str:
    """Apply ``--threads`` and ``--device`` (no TF32 on CUDA); returns the device."""
    import torch

    torch.set_num_threads(int(getattr(args, "threads", None) or DEFAULT_THREADS))
    device = getattr(args, "device", "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: CUDA is not available on this machine")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


def load_train_data(args):
    """(train, test, info) of ``train``/``hypersearch``'s data flags."""
    from repspec.torch_impl.training.datasets import load_dataset

    return load_dataset(args.dataset, root=args.data_dir, image_size=args.image_size, seed=args.seed)


def load_data_from_settings(data: dict, data_dir=None):
    """(train, test, info) exactly as the checkpoint's run had them; the reloaded data must match the record."""
    from repspec.torch_impl.training.datasets import load_dataset

    name = data["dataset"]
    root = None if name == "digits" else (data_dir or data.get("data_dir"))
    if name != "digits" and (root is None or not Path(root).is_dir()):
        raise CLIError(f"the recorded {name} data directory {root!r} is not there; give --data-dir with the same data")
    size = None if name in ("cifar10", "cifar100") else data["image_size"]
    train_set, test_set, info = load_dataset(name, root=root, image_size=size, seed=int(data["seed"]))
    got = info.to_dict()
    for key in ("num_classes", "train_size", "test_size", "classes"):
        if data.get(key) is not None and got[key] != data[key]:
            raise CLIError(f"the data in {root!r} is not the data the checkpoint was trained on ({key}: recorded "
                           f"{data[key]!r}, found {got[key]!r})")
    for key in ("mean", "std"):
        if data.get(key) is not None and any(abs(a - b) > 1e-9 * max(1.0, abs(a)) for a, b in zip(data[key], got[key])):
            raise CLIError(f"the data in {root!r} is not the data the checkpoint was trained on (normalization {key} "
                           f"recorded {data[key]}, found {got[key]})")
    return train_set, test_set, info


def build_model(source: Source):
    """The torch model of a resolved :class:`Source` (weights loaded and verified)."""
    if source.kind == "official":
        import torch

        from repspec.torch_impl.training.official import load_official_checkpoint

        # strict: keys and shapes checked before any weight is copied; float32 like every other source
        return load_official_checkpoint(source.path, source.model_name, dtype=torch.float32)
    if source.kind == "checkpoint":
        from repspec.torch_impl.modules.models import create_model
        from repspec.torch_impl.training.checkpoint import load_checkpoint, load_checkpoint_extra

        extra = load_checkpoint_extra(source.path) or {}  # verifies the manifest digest and file hashes
        model = create_model(extra["model"], int(extra["num_classes"]), **dict(extra.get("model_overrides", {})))
        load_checkpoint(source.path, model)
        return model
    if source.kind == "deploy":
        return _build_deploy(source)
    from repspec.torch_impl.quantization.export import load_exported

    return load_exported(source.path)


def _build_deploy(source: Source):
    """A `repspec convert` file: the architecture its metadata names, checked against it, in deploy form."""
    from repspec.torch_impl.modules.deploy import convert_to_deploy
    from repspec.torch_impl.modules.models import create_model
    from repspec.torch_impl.training.checkpoint import load_weights

    meta = source.meta
    overrides = {k: decode_float(v) for k, v in (meta.get("model_overrides") or {}).items()}
    net = create_model(meta["model"], int(meta["num_classes"]), **overrides)
    for key in ("num_blocks", "widths", "strides", "in_channels"):
        have = getattr(net, key)
        have = list(have) if isinstance(have, (list, tuple)) else have
        if meta.get(key) is not None and have != meta[key]:
            raise CLIError(f"{source.describe}: its metadata says {key} {meta[key]}, but {meta['model']} has "
                           f"{have}; the file's metadata does not describe its weights")
    deploy = convert_to_deploy(net)
    load_weights(source.path, deploy)
    return deploy


def build_from_checkpoint(path):
    """``(model, extra)`` of a `repspec train` checkpoint directory (weights loaded and verified)."""
    source = resolve_source(path)
    return build_model(source), source.meta["manifest"]["extra"]


def num_classes(model) -> int | None:
    n = getattr(model, "num_classes", None)
    if n is None:
        n = getattr(getattr(model, "net", None), "num_classes", None)
    return None if n is None else int(n)


def check_classes(model, info, source: Source) -> None:
    """The model's classifier must fit the data it is evaluated on."""
    n = num_classes(model)
    if n is not None and n != int(info.num_classes):
        raise CLIError(f"{source.describe} has a {n}-class classifier, but the {info.name} data has "
                       f"{info.num_classes} classes; give the --dataset it was trained on")
