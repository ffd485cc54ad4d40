"""``repspec demo``: the main job (:mod:`repspec.experiments.demo`), or ``--render`` of a finished run."""

from __future__ import annotations

from pathlib import Path

from . import _common as common
from ._loading import setup_torch

NAME = "demo"
OUTPUT = "dir"


def add_parser(sub, argv) -> None:
    demo = sub.add_parser("demo", help="the main job on the embedded digits data (table + JSON + PNG plots)")
    demo.add_argument("--quick", action="store_true", help="a smaller run (< 2 minutes on 2 CPU cores)")
    demo.add_argument("--out", default="runs/demo", help="output directory")
    demo.add_argument("--seed", type=common.parse_seed, default=0,
                      help="first seed: seed of the split, the shuffling and the initialization")
    common.add_overwrite_arg(demo)
    demo.add_argument("--seeds", type=common.parse_positive_int, default=None,
                      help="number of seeds (seed, seed+1, ...; default 5, --quick 3); cells are mean ± sd")
    demo.add_argument("--dataset", default="digits", choices=["digits", "digits_variations", "cifar10"],
                      help="digits (default), digits_variations (harder, offline) or cifar10 (binary files "
                           "in --data-dir)")
    demo.add_argument("--data-dir", default=None, help="directory holding cifar-10-batches-bin/ (cifar10)")
    demo.add_argument("--render", default=None, metavar="RESULTS_JSON",
                      help="only re-render table.md/claims.md/readme_section.md from an existing results.json")
    common.add_runtime_args(demo)


def check(args) -> None:
    if args.render is not None:  # re-rendering writes next to the results, not to --out
        if not Path(args.render).is_file():
            raise common.CLIError(f"--render {args.render!r} is not a file (give a demo's results.json)")
        return
    if args.dataset == "cifar10" and args.data_dir is None:
        raise common.CLIError("--dataset cifar10 needs --data-dir (the folder holding cifar-10-batches-bin/)")
    common.check_out(args, OUTPUT)


def outputs(args) -> list:
    return [args.out]


def run(args) -> int:
    from repspec.experiments.demo import render_results, run_demo

    if args.render is not None:
        print(f"rendered table.md, claims.md, readme_section.md into {render_results(args.render)}")
        return 0
    device = setup_torch(args)  # --threads default: runtime.DEFAULT_THREADS, like every command
    return run_demo(out_dir=Path(args.out), quick=args.quick, seed=args.seed, device=device,
                    progress=not args.no_progress, seeds=args.seeds, dataset=args.dataset, data_dir=args.data_dir)
