"""SPEC §4: OABN — outlier-aware batch normalization *[repspec reconstruction]*.

The paper's Algorithm 1 is not available. repspec defines OABN as a batch norm whose
per-channel factor is clipped to ``[−s, s]``:

``t = γ / sqrt(σ² + eps)``, ``t̃ = clip(t, −s, s)``, ``OABN(x) = t̃·(x − μ) + β``

with batch statistics ``(μ_B, σ²_B)`` (biased variance) in training and running
statistics in eval. The running statistics are updated exactly as plain BN does
(SPEC §0); clipping never touches them. ``s = ∞`` is plain BN.

Gradient options (the named option ``gradient``):

- ``"clip"`` (default, SPEC §4): the true gradient of ``clip``: ``∂t̃/∂t = [|t| ≤ s]``.
  *[repspec]* At the boundary ``|t| == s`` the gradient **passes** (the closed
  interval), which is what ``torch.clamp``'s autograd does, so a port that writes
  ``torch.clamp(t, -s, s)`` matches without special code.
- ``"straight_through"``: ``∂t̃/∂t := 1`` everywhere (clipped channels still train
  ``γ`` and still carry the variance path to ``x``). This is not the gradient of any
  function of ``(x, γ)`` at clipped channels; it is the gradient of the surrogate
  ``(t − sg(t − t̃))·(x − μ) + β`` where ``sg`` stops the gradient.

Shapes: ``x (N, C, H, W)``, per-channel vectors ``(C,)``.
"""

from __future__ import annotations

import numpy as np

from ._checks import (GRADIENT_MODES, check_gradient_mode, check_threshold, checked, oabn_eval_args,
                      oabn_eval_backward_args, oabn_train_args, oabn_train_backward_args)
from .ops import BatchNormTrainResult, bn_factor

__all__ = [
    "GRADIENT_MODES",
    "oabn_factor",
    "oabn_unclipped",
    "oabn_train",
    "oabn_train_backward",
    "oabn_eval",
    "oabn_eval_backward",
    "check_threshold",
    "check_gradient_mode",
]


def _vec(v: np.ndarray) -> np.ndarray:
    return v[None, :, None, None]


def oabn_factor(gamma, var, eps: float, threshold: float) -> np.ndarray:
    """``t̃ = clip(γ / sqrt(σ² + eps), −s, s)`` per channel (SPEC §4).

    Shapes: ``gamma (C,)``, ``var (C,)`` → ``(C,)``. With ``s = ∞`` this is exactly
    :func:`repspec.reference.ops.bn_factor`.

    >>> oabn_factor(np.array([0.5, 4.0, -4.0]), np.ones(3), 0.0, 2.0)
    array([ 0.5,  2. , -2. ])
    """
    s = check_threshold(threshold)
    return np.clip(bn_factor(gamma, var, eps), -s, s)


def oabn_unclipped(gamma, var, eps: float, threshold: float) -> np.ndarray:
    """Boolean ``(C,)``: ``|t| ≤ s``, the channels through which the ``"clip"`` gradient passes.

    *[repspec]* the boundary ``|t| == s`` counts as unclipped (closed interval, like
    ``torch.clamp``'s backward).
    """
    return np.abs(bn_factor(gamma, var, eps)) <= check_threshold(threshold)


def _sum(a: np.ndarray) -> np.ndarray:
    """Per-channel sum over ``(N, H, W)``."""
    return a.sum(axis=(0, 2, 3))


def _pass(dt_clip: np.ndarray, t: np.ndarray, threshold: float, gradient: str) -> np.ndarray:
    """``∂L/∂t`` from ``∂L/∂t̃``: ``· [|t| ≤ s]`` (``"clip"``) or unchanged (``"straight_through"``)."""
    return dt_clip * (np.abs(t) <= threshold) if gradient == "clip" else dt_clip


@checked(oabn_train_args)
def oabn_train(x, gamma, beta, running_mean, running_var, *, threshold: float, momentum: float = 0.1,
               eps: float = 1e-5) -> BatchNormTrainResult:
    """Training-mode OABN (SPEC §4): ``y = t̃·(x − μ_B) + β``, ``t̃ = clip(γ/sqrt(σ²_B + eps), −s, s)``.

    ``μ_B``, ``σ²_B``: batch mean and **biased** batch variance over ``(N, H, W)``. Running
    statistics as plain BN (SPEC §0): ``run ← (1−m)·run + m·batch``, unbiased variance
    ``σ²_B·n/(n−1)``, ``n = N·H·W ≥ 2``. Returns
    :class:`repspec.reference.ops.BatchNormTrainResult`; with ``s = ∞`` it equals
    :func:`repspec.reference.ops.batch_norm_train` up to float64 rounding (that one
    computes ``γ·((x − μ)/sqrt(σ² + eps)) + β``).
    """
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mu, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    t_clip = np.clip(gamma / np.sqrt(var + eps), -threshold, threshold)
    y = _vec(t_clip) * (x - _vec(mu)) + _vec(beta)
    new_mean = (1.0 - momentum) * running_mean + momentum * mu
    new_var = (1.0 - momentum) * running_var + momentum * var * n / (n - 1)
    return BatchNormTrainResult(y, new_mean, new_var, mu, var)


@checked(oabn_train_backward_args)
def oabn_train_backward(dy, x, gamma, *, threshold: float, eps: float = 1e-5, gradient: str = "clip"):
    """Gradients of :func:`oabn_train` (batch statistics depend on ``x``), derived through ``t``.

    With ``n = N·H·W``, sums over ``(n, h, w)``, ``d = x − μ_B``, ``v = σ²_B``:

    - ``∂L/∂t̃ = Σ dy·d``; ``∂L/∂t = ∂L/∂t̃ · [|t| ≤ s]`` (``"clip"``) or ``∂L/∂t̃``
      (``"straight_through"``)
    - ``∂L/∂γ = ∂L/∂t / sqrt(v + eps)``, ``∂L/∂β = Σ dy``
    - ``∂L/∂v = ∂L/∂t · γ · (−½)(v + eps)^(−3/2)``
    - ``∂L/∂x = t̃·(dy − mean(dy)) + ∂L/∂v · 2d/n``

    With ``s = ∞`` this equals :func:`repspec.reference.ops.batch_norm_train_backward`
    up to float rounding. Returns ``(dx, dgamma, dbeta)``.
    """
    n = x.shape[0] * x.shape[2] * x.shape[3]
    var = x.var(axis=(0, 2, 3))
    d = x - _vec(x.mean(axis=(0, 2, 3)))
    t = gamma / np.sqrt(var + eps)
    dt = _pass(_sum(dy * d), t, threshold, gradient)
    dvar = dt * gamma * (-0.5) * (var + eps) ** -1.5
    dx = _vec(np.clip(t, -threshold, threshold)) * (dy - _vec(_sum(dy) / n)) + _vec(dvar) * 2.0 * d / n
    return dx, dt / np.sqrt(var + eps), _sum(dy)


@checked(oabn_eval_args)
def oabn_eval(x, gamma, beta, running_mean, running_var, *, threshold: float, eps: float = 1e-5) -> np.ndarray:
    """Eval-mode OABN: the affine map ``y = t̃·x + (β − μ·t̃)`` with running statistics (SPEC §4).

    With ``s = ∞`` this is :func:`repspec.reference.ops.batch_norm_eval` bit for bit.

    >>> x = np.ones((1, 1, 1, 1))
    >>> oabn_eval(x, np.array([3.0]), np.zeros(1), np.zeros(1), np.ones(1), threshold=1.0, eps=0.0)[0, 0]
    array([[1.]])
    """
    t_clip = np.clip(bn_factor(gamma, running_var, eps), -threshold, threshold)
    return _vec(t_clip) * x + _vec(beta - running_mean * t_clip)


@checked(oabn_eval_backward_args)
def oabn_eval_backward(dy, x, gamma, running_mean, running_var, *, threshold: float, eps: float = 1e-5,
                       gradient: str = "clip"):
    """Gradients of :func:`oabn_eval` (statistics are constants).

    ``∂L/∂x = t̃·dy``, ``∂L/∂t̃ = Σ dy·(x − μ)``, ``∂L/∂t = ∂L/∂t̃·[|t| ≤ s]`` (``"clip"``)
    or ``∂L/∂t̃`` (``"straight_through"``), ``∂L/∂γ = ∂L/∂t / sqrt(σ² + eps)``, ``∂L/∂β = Σ dy``.
    Returns ``(dx, dgamma, dbeta)``.
    """
    t = bn_factor(gamma, running_var, eps)
    dt = _pass(_sum(dy * (x - _vec(running_mean))), t, threshold, gradient)
    return _vec(np.clip(t, -threshold, threshold)) * dy, dt / np.sqrt(running_var + eps), _sum(dy)
