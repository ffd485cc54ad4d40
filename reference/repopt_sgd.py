"""SPEC §3: RepOpt-SGD in one place — mask, weight-decay rule, step and ``W'_0``.

A RepOpt target block is a plain 3x3 conv ``W'`` trained so that it follows the CSLA
block ``α3·conv3x3(K3) + α1·conv1x1(K1) + d·x`` it replaces (constant scales ``α3,
α1`` per output channel, trainable identity scale ``d``):

1. start from ``W'_0 = α3·K3_0 + α1·pad(K1_0) + diag(d_0)·I``           (:func:`reinit_target_kernel`)
2. Grad Mult ``M = α3² + [centre]·α1² + [centre, o = i, d trainable]·1``  (:func:`grad_mult_mask`)
3. weight decay ``λ`` on conv kernels, the identity scales and the head weight,
   ``0`` on 1-D parameters and biases                               (:func:`official_weight_decay`)
4. each step: ``d = M ⊙ g + λ·W``, momentum ``buf = μ·buf + (1 − τ)·d``,
   ``W ← W − lr·(d + μ·buf if nesterov else buf)``                   (:func:`sgd_step`)

Shapes: ``K3, W' (O, I, 3, 3)``, ``K1 (O, I, 1, 1)``, scales ``(O,)``. Each formula's
arguments are checked first by the ``*_args`` validator of ``_checks.py`` named in its ``@checked``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ._checks import (IDENTITY_MODES, check_nonneg_float, checked, csla_equivalent_kernel_args, grad_mult_mask_args,
                      reinit_target_kernel_args, sgd_step_args)
from .kernels import conv_default_init, identity_kernel, pad_1x1_to_3x3, per_channel

__all__ = ["IDENTITY_MODES", "csla_equivalent_kernel", "reinit_target_kernel",
           "grad_mult_mask", "official_weight_decay", "sgd_step", "repopt_sgd_step"]


@checked(csla_equivalent_kernel_args)
def csla_equivalent_kernel(conv_weight, conv_1x1_weight, scale_conv, scale_1x1, scale_identity=None) -> np.ndarray:
    """``W' = α3·K3 + α1·pad(K1) + diag(d)·I`` — the one 3x3 kernel a CSLA block equals.

    ``scale_identity`` None: no identity branch. Valid for any stride (the branches share it).

    >>> k3, k1 = np.zeros((2, 2, 3, 3)), np.ones((2, 2, 1, 1))
    >>> csla_equivalent_kernel(k3, k1, np.ones(2), np.array([2.0, 3.0]), np.array([0.5, 0.5]))[:, :, 1, 1]
    array([[2.5, 2. ],
           [3. , 3.5]])
    """
    w = per_channel(scale_conv) * conv_weight + per_channel(scale_1x1) * pad_1x1_to_3x3(conv_1x1_weight)
    if scale_identity is not None:
        w = w + per_channel(scale_identity) * identity_kernel(len(scale_identity))
    return w


@checked(reinit_target_kernel_args)
def reinit_target_kernel(scale_conv, scale_1x1, scale_identity=None, *, in_channels: int, conv_weight=None,
                         conv_1x1_weight=None, rng: np.random.Generator | None = None,
                         use_identity_scales: bool = True) -> np.ndarray:
    """``W'_0 = α3·K3_0 + α1·pad(K1_0) + diag(d_0)·I``: :func:`csla_equivalent_kernel` of fresh kernels.

    ``K3_0, K1_0``: ``conv_weight, conv_1x1_weight`` or, where None, drawn from ``rng``
    by :func:`conv_default_init` (K3 first). ``d_0 = scale_identity`` (None: no identity
    branch), or ``1`` with ``use_identity_scales=False`` (official ``use_identity_scales_for_reinit``).

    >>> w = reinit_target_kernel(np.ones(2), np.ones(2), np.full(2, 3.0), in_channels=2,
    ...                          conv_weight=np.zeros((2, 2, 3, 3)), conv_1x1_weight=np.zeros((2, 2, 1, 1)),
    ...                          use_identity_scales=False)
    >>> w[:, :, 1, 1]
    array([[1., 0.],
           [0., 1.]])
    """
    o = len(scale_conv)
    k3_0 = conv_default_init(rng, (o, in_channels, 3, 3)) if conv_weight is None else conv_weight
    k1_0 = conv_default_init(rng, (o, in_channels, 1, 1)) if conv_1x1_weight is None else conv_1x1_weight
    d_0 = np.ones(o) if scale_identity is not None and not use_identity_scales else scale_identity
    return csla_equivalent_kernel(k3_0, k1_0, scale_conv, scale_1x1, d_0)


@checked(grad_mult_mask_args)
def grad_mult_mask(scale_conv, scale_1x1, in_channels: int, *, identity: str, exponent: int = 2) -> np.ndarray:
    """Grad Mult ``M (O, I, 3, 3)`` (official ``generate_grad_mults``):

    ``M[o, i, p, q] = α3[o]^e + [p = q = 1]·α1[o]^e + [p = q = 1, o = i, identity = 'trainable']``

    ``exponent=2``: SGD (the exact theorem); ``1``: the official AdamW rule.

    >>> grad_mult_mask(np.array([2.0, 1.0]), np.array([1.0, 3.0]), 2, identity="trainable")[:, :, 1, 1]
    array([[ 6.,  5.],
           [10., 11.]])
    """
    o = len(scale_conv)
    mask = np.broadcast_to(per_channel(scale_conv ** exponent), (o, in_channels, 3, 3)).copy()
    mask[:, :, 1, 1] += (scale_1x1 ** exponent)[:, None]
    if identity == "trainable":
        mask[np.arange(o), np.arange(o), 1, 1] += 1.0
    return mask


def official_weight_decay(params: Mapping[str, np.ndarray], weight_decay: float) -> dict[str, float]:
    """Official ``set_weight_decay``: ``λ`` for ``*identity.weight`` (the ``d``: decayed, for the theorem),
    ``0`` for 1-D parameters and ``*.bias``, ``λ`` for the rest (kernels, head weight).

    >>> official_weight_decay({"a.scale_identity.weight": np.ones(2), "a.bn.weight": np.ones(2),
    ...                        "a.conv.weight": np.ones((2, 2, 3, 3))}, 0.1)
    {'a.scale_identity.weight': 0.1, 'a.bn.weight': 0.0, 'a.conv.weight': 0.1}
    """
    lam = check_nonneg_float(weight_decay, "weight_decay")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping name -> array, got {type(params).__name__}")
    return {name: lam if "identity.weight" in name or not (np.ndim(p) == 1 or name.endswith(".bias")) else 0.0
            for name, p in params.items()}


@checked(sgd_step_args)
def sgd_step(param, grad, momentum_buffer=None, *, lr: float, momentum: float = 0.0, dampening: float = 0.0,
             nesterov: bool = False, weight_decay: float = 0.0, grad_mult_mask=None):
    """One (RepOpt-)SGD step, in the order of ``torch.optim.SGD`` / official ``RepOptimizerSGD``.

    ``d = M ⊙ g`` (if masked) → ``d = d + λ·W`` (not masked) → ``buf = d`` (first step)
    or ``μ·buf + (1 − τ)·d`` → ``d = d + μ·buf`` (nesterov) or ``buf`` → ``W − lr·d``.
    No buffer when ``μ = 0`` (as torch). Returns ``(new_param, new_buffer_or_None)``.

    >>> sgd_step(np.array([1.0]), np.array([0.5]), lr=0.1, momentum=0.9, weight_decay=0.1)
    (array([0.94]), array([0.6]))
    """
    d = grad if grad_mult_mask is None else grad_mult_mask * grad
    if weight_decay != 0:
        d = d + weight_decay * param
    buf = None
    if momentum != 0:
        buf = d.copy() if momentum_buffer is None else momentum * momentum_buffer + (1.0 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return param - lr * d, buf


def repopt_sgd_step(param, grad, momentum_buffer=None, *, grad_mult_mask, lr: float, momentum: float = 0.0,
                    dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    """RepOpt-SGD: :func:`sgd_step` with a **required** Grad Mult mask ``M``."""
    if grad_mult_mask is None:
        raise TypeError("grad_mult_mask is required for repopt_sgd_step (use sgd_step for plain SGD)")
    return sgd_step(param, grad, momentum_buffer, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                    weight_decay=weight_decay, grad_mult_mask=grad_mult_mask)
