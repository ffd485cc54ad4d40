"""SPEC §4: OABN — outlier-aware batch normalization (repspec's reconstruction), in PyTorch.

``t = γ / sqrt(σ² + eps)``, ``t̃ = clip(t, −s, s)`` per channel and ``y = t̃·(x − μ) + β``,
with batch statistics (biased variance) in training and running statistics in eval.
Running statistics are updated exactly like :class:`torch.nn.BatchNorm2d` (unbiased
variance, ``momentum`` or the cumulative average when ``momentum is None``).
``threshold = inf`` is *exactly* ``BatchNorm2d`` (same kernel, same numbers).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

# the gradient modes through the clip (SPEC §4): exact derivative of the clip, or identity
from repspec.core.vocabulary import OABN_GRADIENTS

__all__ = ["OABN", "OABN_GRADIENTS", "bn_factor", "check_oabn_threshold", "check_oabn_gradient"]



def check_oabn_threshold(value, name: str = "threshold") -> float:
    """A threshold ``s`` is a real number in ``(0, inf]``; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, inf], got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be in (0, inf], got {value}")
    return value


def check_oabn_gradient(value, name: str = "gradient") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {OABN_GRADIENTS}, got {type(value).__name__}")
    if value not in OABN_GRADIENTS:
        raise ValueError(f"{name} must be one of {OABN_GRADIENTS}, got {value!r}")
    return value


def _clip_factor(t: torch.Tensor, threshold: float, gradient: str) -> torch.Tensor:
    if math.isinf(threshold):
        return t
    # not t.clamp(): SPEC §4 passes the gradient at |t| == s (a closed interval). torch.clamp's backward
    # did so up to torch 2.13; torch 2.14 gives 0 there (0.5 with tensor bounds). torch.where's backward
    # is 1 where |t| <= s and 0 elsewhere in every version; the forward is clamp's, bit for bit (NaN too).
    clipped = torch.where(t.abs() <= threshold, t, torch.sign(t) * threshold)
    if gradient == "straight_through":
        return t + (clipped - t).detach()  # forward: clipped, backward: identity
    return clipped


def bn_factor(bn: nn.Module) -> torch.Tensor:
    """The eval-mode per-channel factor of a BN module: ``γ/sqrt(σ²+eps)``, clipped for OABN.

    Use this (not the plain formula) whenever a BN that may be an :class:`OABN` is folded.
    Differentiable in ``γ`` (clip gradient as configured for OABN).
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.running_var is None:
        raise ValueError("bn must track running statistics to be folded")
    weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    t = weight / torch.sqrt(bn.running_var + bn.eps)
    if isinstance(bn, OABN):
        t = _clip_factor(t, bn.threshold, bn.gradient)
    return t


class OABN(nn.BatchNorm2d):
    """SPEC §4 [repspec]: outlier-aware BN, a drop-in for ``nn.BatchNorm2d`` (same state_dict keys).

    ``OABN(num_features, eps=1e-5, momentum=0.1, threshold=inf, gradient='clip')``.

    - training: ``μ_B``, biased ``σ²_B`` of the batch; ``t = γ/sqrt(σ²_B + eps)``;
      ``t̃ = clip(t, −s, s)``; ``y = t̃·(x − μ_B) + β``; running stats updated PyTorch-style.
    - eval: the same with running statistics.
    - ``gradient='clip'``: the exact derivative of the clip (zero for clipped channels);
      ``'straight_through'``: the clip is treated as the identity in backward.
    - ``threshold=inf``: calls ``BatchNorm2d.forward`` itself (bit-identical).

    ``threshold`` and ``gradient`` are plain attributes, not state: the state_dict is
    exactly BatchNorm2d's. Fold with :func:`bn_factor`, which applies the clip.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, threshold: float = math.inf, gradient: str = "clip",
                 device=None, dtype=None):
        threshold = check_oabn_threshold(threshold, "threshold")
        gradient = check_oabn_gradient(gradient, "gradient")
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
                                     or not 0 <= momentum <= 1):
            raise ValueError(f"momentum must be None or in [0, 1], got {momentum!r}")
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, device=device, dtype=dtype)
        self.threshold = threshold
        self.gradient = gradient

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold}, gradient={self.gradient!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if math.isinf(self.threshold):
            return super().forward(x)
        self._check_input_dim(x)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        weight = self.weight if self.weight is not None else x.new_ones(self.num_features)
        bias = self.bias if self.bias is not None else x.new_zeros(self.num_features)
        if bn_training:
            n = x.numel() // x.shape[1]
            if n < 2:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean.detach(), var.detach(), n)
        else:
            mean, var = self.running_mean, self.running_var
        t = _clip_factor(weight / torch.sqrt(var + self.eps), self.threshold, self.gradient)
        return (x - mean[None, :, None, None]) * t[None, :, None, None] + bias[None, :, None, None]

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as BatchNorm2d
            m = 1.0 / float(self.num_batches_tracked)
        else:
            m = self.momentum
        self.running_mean.mul_(1.0 - m).add_(mean, alpha=m)
        self.running_var.mul_(1.0 - m).add_(var * (n / (n - 1)), alpha=m)

    def factor(self) -> torch.Tensor:
        """Eval-mode ``t̃ = clip(γ/sqrt(running_var + eps), −s, s)`` (what fusion uses)."""
        return bn_factor(self)
