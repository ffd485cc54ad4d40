"""``repspec evaluate``: test accuracy of a checkpoint, a deploy file, a quantized export or an
original-code ``.pth``, on the data the source records (or the one the flags name)."""

from __future__ import annotations

from . import _common as common
from ._loading import build_model, check_classes, load_data_from_settings, setup_torch
from ._sources import resolve_source, settle_data

NAME = "evaluate"
OUTPUT = None


def add_parser(sub, argv) -> None:
    ev = sub.add_parser("evaluate", help="test accuracy of a checkpoint, a deploy .safetensors or a quantized "
                                         "export, on the dataset the checkpoint was trained on")
    ev.add_argument("source", nargs="?", default=None,
                    help="a checkpoint directory, a `repspec convert` file, a `repspec quantize` output directory or "
                         "its export.safetensors, or an original-code .pth/.pt with --model")
    ev.add_argument("--checkpoint", default=None, help="the same as SOURCE (give one of them)")
    ev.add_argument("--model", default=None, help=common.MODEL_HELP)
    g = ev.add_argument_group("data (taken from the source where it records them; a flag that contradicts it is "
                              "refused. A .pth/.pt or a file converted from one records none: give --dataset)")
    g.add_argument("--dataset", default=None, choices=common.DATASETS, help="the dataset to evaluate on")
    g.add_argument("--data-dir", default=None,
                   help="directory of cifar10/cifar100/folder data (for a recorded dataset: where it now is; it "
                        "must be the same data)")
    g.add_argument("--image-size", type=common.parse_image_size, default=None,
                   help=f"input resolution, 1..{common.MAX_IMAGE_SIZE} (default: digits 16, cifar 32, folder 32)")
    g.add_argument("--seed", type=common.parse_seed, default=None, help="seed of the train/test split (default 0)")
    common.add_batch_arg(ev)
    common.add_runtime_args(ev)


def check(args) -> None:
    if (args.source is None) == (args.checkpoint is None):
        raise common.CLIError("give the model to evaluate once: as SOURCE or as --checkpoint")
    option = "SOURCE" if args.checkpoint is None else "--checkpoint"
    args.source = resolve_source(args.source or args.checkpoint, option,
                                 kinds=("checkpoint", "deploy", "quantized", "official"), model=args.model)
    settle_data(args, args.source, args.source.describe)


def outputs(args) -> list:
    return []


def run(args) -> int:
    from repspec.torch_impl.training.data import make_loader
    from repspec.torch_impl.training.train import evaluate_metrics

    device = setup_torch(args)
    source = args.source
    model = build_model(source).to(device)
    _, test_set, info = load_data_from_settings(source.data, args.data_dir)
    check_classes(model, info, source)
    loader = make_loader(test_set, args.batch_size, seed=int(source.data["seed"]), shuffle=False)
    m = evaluate_metrics(model, loader, device, progress=not args.no_progress)
    print(f"{source.describe}: test accuracy {m['accuracy']:.4f} on {m['count']} {info.name} test images "
          f"(loss {m['loss']:.4f})")
    return 0
