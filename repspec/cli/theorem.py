"""``repspec theorem``: SPEC §3's theorem shown in the float64 reference
(:func:`repspec.experiments.theorem.theorem_demo`); exit status 1 if the two runs part."""

from __future__ import annotations

from . import _common as common

NAME = "theorem"
OUTPUT = None
#: the largest deviation float64 round-off explains over the demo's iterations
TOLERANCE = 1e-9


def add_parser(sub, argv) -> None:
    th = sub.add_parser("theorem", help="float64 reference demonstration of the RepOpt theorem (SPEC §3)")
    th.add_argument("--seed", type=common.parse_seed, default=0, help="seed of the random blocks, scales and batches")
    th.add_argument("--iterations", type=common.parse_positive_int, default=10, help="training iterations to compare")


def check(args) -> None:
    """Nothing beyond argparse's types: the command writes no file and reads none."""


def outputs(args) -> list:
    return []


def run(args) -> int:
    from repspec.experiments.theorem import theorem_demo  # NumPy and the reference: imported when run

    return 0 if theorem_demo(seed=args.seed, iterations=args.iterations) < TOLERANCE else 1
