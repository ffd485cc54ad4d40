"""``repspec hypersearch``: train a HyperSearch model and save its searched scales (SPEC §3)."""

from __future__ import annotations

from pathlib import Path

from . import _common as common
from ._loading import load_train_data, setup_torch

NAME = "hypersearch"
OUTPUT = "file"


def add_parser(sub, argv) -> None:
    hs = sub.add_parser("hypersearch", help="train a HyperSearch model and save its scales (SPEC §3)")
    hs.add_argument("--model", default="hs_vgg_tiny8", help="an hs_vgg_* registry name (`repspec list-models`)")
    hs.add_argument("--out", required=True, help="scales file (.safetensors or .json)")
    common.add_overwrite_arg(hs)
    common.add_data_args(hs)
    common.add_batch_arg(hs)
    common.add_sgd_args(hs, epochs=5)
    common.add_runtime_args(hs)


def check(args) -> None:
    common.check_data_args(args)
    if not args.model.startswith("hs_vgg_"):
        raise common.CLIError(f"--model must be a hs_vgg_* model, got {args.model!r}")
    if Path(args.out).suffix not in (".safetensors", ".json"):
        raise common.CLIError(f"--out must end in .safetensors or .json, got {args.out!r}")
    common.check_out(args, OUTPUT, [args.data_dir])


def outputs(args) -> list:
    return [args.out]


def run(args) -> int:
    from repspec.torch_impl.modules.models import create_model
    from repspec.torch_impl.optimizers.hypersearch import extract_scales, train_hypersearch
    from repspec.torch_impl.optimizers.scales import save_scales
    from repspec.torch_impl.training.data import make_loaders
    from repspec.torch_impl.training.train import evaluate, seed_everything

    device = setup_torch(args)
    train_set, test_set, info = load_train_data(args)
    seed_everything(args.seed)
    model = create_model(args.model, info.num_classes).to(device)
    train_loader, test_loader = make_loaders(train_set, test_set, batch_size=args.batch_size, seed=args.seed)
    train_hypersearch(model, train_loader, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                      nesterov=args.nesterov, weight_decay=args.weight_decay, device=device,
                      progress=not args.no_progress)
    acc = evaluate(model, test_loader, device=device)
    save_scales(extract_scales(model), args.out)
    print(f"HyperSearch test accuracy {acc:.4f}; scales written to {args.out}")
    return 0
