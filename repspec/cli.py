"""The ``repspec`` command line.

``repspec demo`` runs the reference demonstration of SPEC §3's core theorem: a
network of CSLA blocks trained with plain SGD and the plain-conv network trained
with RepOpt-SGD from ``W'_0`` stay identical at every iteration. It needs only
NumPy (the reference), so it runs anywhere the package installs.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

__all__ = ["main", "theorem_demo"]


def theorem_demo(*, seed: int = 0, iterations: int = 10, channels: int = 4, size: int = 6, batch: int = 4,
                 lr: float = 0.05, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 1e-3,
                 out=sys.stdout) -> float:
    """Train CSLA+SGD and target+RepOpt-SGD side by side; return the largest deviation seen.

    Prints, per iteration, both losses and ``max |α3·K3 + α1·pad(K1) + diag(d)·I − W'|``
    over every block.
    """
    from repspec.reference.network import Network, train
    from repspec.reference.optim import SGD
    from repspec.reference.repopt import (
        CSLABlock,
        RepOptTargetBlock,
        csla_equivalent_kernel,
        grad_mult_mask,
    )

    rng = np.random.default_rng(seed)
    # stage0 changes width and stride (no identity); block 1 keeps both (identity, trainable d)
    shapes = [(3, channels, 2), (channels, channels, 1)]
    scales = [(rng.uniform(0.5, 1.5, size=o), rng.uniform(0.5, 1.5, size=o)) for _, o, _ in shapes]
    prefixes = ["stage0", "stage1.0"]
    csla = Network(tuple((p, CSLABlock(i, o, s, scale_conv=a3, scale_1x1=a1))
                         for p, (i, o, s), (a3, a1) in zip(prefixes, shapes, scales)), num_classes=3)
    target = Network(tuple((p, RepOptTargetBlock(i, o, s)) for p, (i, o, s) in zip(prefixes, shapes)),
                     num_classes=3)

    csla_params, csla_buffers = csla.init(rng)

    def kernel_of(params, prefix):
        return csla_equivalent_kernel(params[f"{prefix}.conv.weight"], params[f"{prefix}.conv_1x1.weight"],
                                      params[f"{prefix}.scale_conv.weight"], params[f"{prefix}.scale_1x1.weight"],
                                      params.get(f"{prefix}.scale_identity.weight"))

    # W'_0: the target starts from the CSLA block's equivalent kernel, everything else shared
    target_params = {k: v.copy() for k, v in csla_params.items()
                     if not any(k.startswith(p + ".") for p in prefixes) or ".bn." in k}
    masks = {}
    for p, (i, o, s) in zip(prefixes, shapes):
        target_params[f"{p}.conv.weight"] = kernel_of(csla_params, p)
        identity = "trainable" if (i == o and s == 1) else "none"
        masks[f"{p}.conv.weight"] = grad_mult_mask(csla_params[f"{p}.scale_conv.weight"],
                                                   csla_params[f"{p}.scale_1x1.weight"], i, identity=identity)
    target_buffers = {k: v.copy() for k, v in csla_buffers.items()}

    batches = [(rng.normal(size=(batch, 3, size, size)), rng.integers(0, 3, size=batch)) for _ in range(3)]
    hp = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    rec_csla = train(csla, csla_params, csla_buffers, SGD(**hp), batches, iterations)
    rec_target = train(target, target_params, target_buffers, SGD(**hp, grad_mult_masks=masks), batches, iterations)

    print("SPEC §3 theorem: CSLA blocks + SGD  ==  plain conv + RepOpt-SGD (Grad Mult), float64 reference",
          file=out)
    print(f"seed={seed} lr={lr} momentum={momentum} nesterov={nesterov} weight_decay={weight_decay}", file=out)
    print(f"{'iter':>4}  {'loss CSLA+SGD':>16}  {'loss RepOpt-SGD':>16}  {'max |W_csla - W_target|':>24}", file=out)
    worst = 0.0
    for a, b in zip(rec_csla, rec_target):
        dev = max(float(np.max(np.abs(kernel_of(a.params, p) - b.params[f"{p}.conv.weight"]))) for p in prefixes)
        worst = max(worst, dev, abs(a.loss - b.loss))
        print(f"{a.iteration:>4}  {a.loss:>16.12f}  {b.loss:>16.12f}  {dev:>24.3e}", file=out)
    print(f"largest deviation over {iterations} iterations: {worst:.3e} (float64 round-off)", file=out)
    return worst


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repspec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the reference demonstration of the RepOpt theorem")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--iterations", type=int, default=10)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        if args.iterations < 1:
            print("repspec demo: --iterations must be >= 1", file=sys.stderr)
            return 2
        worst = theorem_demo(seed=args.seed, iterations=args.iterations)
        return 0 if worst < 1e-9 else 1
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
