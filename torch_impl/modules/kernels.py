"""SPEC §0/§2/§3 kernel algebra on tensors: ``pad(K1)``, ``I_c``, BN folding and the CSLA
equivalent kernel ``W'``, the pieces that blocks and the RepOptimizer both build on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .oabn import bn_factor

__all__ = ["pad_1x1_to_3x3", "identity_kernel", "fold_bn", "csla_equivalent_kernel"]


def pad_1x1_to_3x3(k1: torch.Tensor) -> torch.Tensor:
    """SPEC §0 ``pad(K1)``: ``(O, I, 1, 1) → (O, I, 3, 3)`` with the value at the center."""
    return F.pad(k1, [1, 1, 1, 1])


def identity_kernel(channels: int, groups: int = 1, *, dtype=None, device=None) -> torch.Tensor:
    """SPEC §0 ``I_c``: ``(C, C/groups, 3, 3)`` with ``I[o, o mod (C/groups), 1, 1] = 1``."""
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, 3, 3, dtype=dtype, device=device)
    o = torch.arange(channels, device=device)
    kernel[o, o % per_group, 1, 1] = 1.0
    return kernel


def _per_channel(v: torch.Tensor) -> torch.Tensor:
    return v[:, None, None, None]


def fold_bn(kernel: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``BN(conv(x; K) + b)`` in eval mode as one conv: ``(t·K, t·(b − μ) + β)`` (SPEC §0, §2)."""
    t = bn_factor(bn)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(t)
    b = -bn.running_mean if bias is None else bias - bn.running_mean
    return kernel * _per_channel(t), beta + b * t


def csla_equivalent_kernel(conv_weight: Tensor, conv_1x1_weight: Tensor, scale_conv: Tensor, scale_1x1: Tensor,
                           scale_identity: Tensor | None = None) -> Tensor:
    """``W' = α3·K3 + α1·pad(K1) + diag(d)·I`` (SPEC §3), differentiable.

    Shapes: ``K3 (O, I, 3, 3)``, ``K1 (O, I, 1, 1)``, scales ``(O,)``; ``scale_identity``
    (``d``) requires ``O == I``.
    """
    for t, n in ((conv_weight, "conv_weight"), (conv_1x1_weight, "conv_1x1_weight")):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{n} must be a floating-point torch.Tensor")
    if conv_weight.dim() != 4 or tuple(conv_weight.shape[2:]) != (3, 3):
        raise ValueError(f"conv_weight must have shape (O, I, 3, 3), got {tuple(conv_weight.shape)}")
    o, i = conv_weight.shape[:2]
    if tuple(conv_1x1_weight.shape) != (o, i, 1, 1):
        raise ValueError(f"conv_1x1_weight must have shape ({o}, {i}, 1, 1), got {tuple(conv_1x1_weight.shape)}")
    a3 = _check_scale_like(scale_conv, "scale_conv", o)
    a1 = _check_scale_like(scale_1x1, "scale_1x1", o)
    w = conv_weight * a3.view(o, 1, 1, 1) + F.pad(conv_1x1_weight * a1.view(o, 1, 1, 1), [1, 1, 1, 1])
    if scale_identity is not None:
        if o != i:
            raise ValueError(f"scale_identity needs a square kernel (O == I), got O={o}, I={i}")
        d = _check_scale_like(scale_identity, "scale_identity", o)
        eye = torch.zeros_like(w)
        idx = torch.arange(o, device=w.device)
        eye[idx, idx, 1, 1] = 1
        w = w + eye * d.view(o, 1, 1, 1)
    return w


def _check_scale_like(v, name: str, o: int) -> Tensor:
    if not isinstance(v, Tensor) or not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor")
    if v.numel() != o or (v.dim() != 1 and tuple(v.shape) != (1, o, 1, 1)):
        raise ValueError(f"{name} must have shape ({o},), got {tuple(v.shape)}")
    return v.reshape(o)
