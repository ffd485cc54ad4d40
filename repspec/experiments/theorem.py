"""SPEC §3's theorem, demonstrated in the float64 reference (``repspec theorem``).

:func:`theorem_demo` trains a small network of CSLA blocks with SGD and, side by side, the
same network with plain 3x3 convolutions trained by RepOpt-SGD (the Grad Mult masks of
:func:`repspec.reference.repopt.grad_mult_mask`), both starting from the same weights
(``W'_0``, the CSLA blocks' equivalent kernels). The theorem says the two runs are the
same run: the losses agree and every CSLA block's equivalent kernel equals the target's
kernel at every iteration, up to float64 round-off.
"""

from __future__ import annotations

import sys

import numpy as np

from repspec.reference.network import Network, train
from repspec.reference.optim import SGD
from repspec.reference.repopt import CSLABlock, RepOptTargetBlock, csla_equivalent_kernel, grad_mult_mask

__all__ = ["theorem_demo"]


def theorem_demo(*, seed: int = 0, iterations: int = 10, channels: int = 4, size: int = 6, batch: int = 4,
                 lr: float = 0.05, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 1e-3,
                 out=None) -> float:
    """Train CSLA+SGD and target+RepOpt-SGD side by side in the float64 reference.

    Prints, per iteration, both losses and ``max |α3·K3 + α1·pad(K1) + diag(d)·I − W'|``
    over every block, and returns the largest deviation seen (loss or kernel).
    """
    out = sys.stdout if out is None else out
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

    # W'_0: the target starts from the CSLA block's equivalent kernel; BN and head shared
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
