"""``repspec analyze``: the merged-weight outlier report of a checkpoint (SPEC §2/§5): the A/B/C
table, ``report.json``, ``layer_stats.csv`` and PNG histograms."""

from __future__ import annotations

import os
from pathlib import Path

from repspec.core.files import atomic_directory

from . import _common as common
from ._loading import build_model, setup_torch
from ._sources import resolve_source

NAME = "analyze"
OUTPUT = "dir"


def add_parser(sub, argv) -> None:
    an = sub.add_parser("analyze", help="merged-weight outlier report (table, JSON, PNG histograms)")
    an.add_argument("--checkpoint", required=True, help=common.CHECKPOINT_HELP)
    an.add_argument("--model", default=None, help=common.MODEL_HELP)
    an.add_argument("--out", required=True, help="output directory")
    common.add_overwrite_arg(an)
    common.add_runtime_args(an)


def check(args) -> None:
    args.source = resolve_source(args.checkpoint, kinds=("checkpoint", "official"), model=args.model)
    common.check_out(args, OUTPUT, [args.checkpoint])


def outputs(args) -> list:
    return [args.out]


def run(args) -> int:
    from repspec.torch_impl.quantization.analysis import write_report

    setup_torch(args)
    model = build_model(args.source)
    out = Path(args.out)
    with atomic_directory(out, kind="analyze", checkpoint=os.path.abspath(args.checkpoint)) as tmp:
        write_report(model, tmp)
        table = (tmp / "layer_stats.md").read_text()
    print(f"analysis of {args.source.describe} written to {out}")
    print(table)
    return 0
