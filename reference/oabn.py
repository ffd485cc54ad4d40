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

from ._checks import as_float_array, check_nonneg_float, check_positive_float
from .ops import BatchNormTrainResult, batch_norm_train, bn_factor

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

#: the values of the ``gradient`` option (SPEC §4)
GRADIENT_MODES = ("clip", "straight_through")


def check_threshold(threshold, name: str = "threshold") -> float:
    """``s`` must be a real number in ``(0, ∞]``; NaN, 0 and negatives are refused."""
    return check_positive_float(threshold, name, allow_inf=True)


def check_gradient_mode(gradient, name: str = "gradient") -> str:
    """The gradient option must be one of :data:`GRADIENT_MODES`."""
    if not isinstance(gradient, str) or gradient not in GRADIENT_MODES:
        raise ValueError(f"{name} must be one of {GRADIENT_MODES}, got {gradient!r}")
    return gradient


def _vec(v: np.ndarray) -> np.ndarray:
    return v[None, :, None, None]


def oabn_factor(gamma, var, eps: float, threshold: float) -> np.ndarray:
    """``t̃ = clip(γ / sqrt(σ² + eps), −s, s)`` per channel (SPEC §4).

    Shapes: ``gamma (C,)``, ``var (C,)`` → ``(C,)``. With ``s = ∞`` this is exactly
    :func:`repspec.reference.ops.bn_factor`.

    >>> oabn_factor(np.array([0.5, 4.0, -4.0]), np.ones(3), 0.0, 2.0)
    array([ 0.5,  2. , -2. ])
    """
    threshold = check_threshold(threshold)
    t = bn_factor(gamma, var, eps)
    return np.clip(t, -threshold, threshold)


def oabn_unclipped(gamma, var, eps: float, threshold: float) -> np.ndarray:
    """Boolean ``(C,)``: ``|t| ≤ s``, the channels through which the ``"clip"`` gradient passes.

    *[repspec]* the boundary ``|t| == s`` counts as unclipped (closed interval, like
    ``torch.clamp``'s backward).
    """
    threshold = check_threshold(threshold)
    return np.abs(bn_factor(gamma, var, eps)) <= threshold


def oabn_train(x, gamma, beta, running_mean, running_var, *, threshold: float, momentum: float = 0.1,
               eps: float = 1e-5) -> BatchNormTrainResult:
    """Training-mode OABN (SPEC §4): ``y = t̃·(x − μ_B) + β``, ``t̃ = clip(γ/sqrt(σ²_B + eps), −s, s)``.

    ``μ_B``, ``σ²_B`` are the batch mean and **biased** batch variance over ``(N, H, W)``;
    the running statistics are updated as in plain BN (SPEC §0: unbiased variance,
    ``run ← (1−m)·run + m·batch``). Returns the same
    :class:`repspec.reference.ops.BatchNormTrainResult` as ``batch_norm_train``.

    Channels with ``|t| ≤ s`` are computed by the very same expression as
    :func:`repspec.reference.ops.batch_norm_train` (so they equal plain BN bit for
    bit, and ``s = ∞`` *is* plain BN); clipped channels are ``±s·(x − μ_B) + β``.
    """
    threshold = check_threshold(threshold)
    res = batch_norm_train(x, gamma, beta, running_mean, running_var, momentum=momentum, eps=eps)
    x = as_float_array(x, "x", ndim=4)
    gamma = as_float_array(gamma, "gamma", shape=(x.shape[1],))
    beta = as_float_array(beta, "beta", shape=(x.shape[1],))
    t = gamma / np.sqrt(res.batch_var + eps)
    clipped = np.abs(t) > threshold
    if not np.any(clipped):
        return res
    t_clip = np.clip(t, -threshold, threshold)
    y_clip = _vec(t_clip) * (x - _vec(res.batch_mean)) + _vec(beta)
    return res._replace(y=np.where(_vec(clipped), y_clip, res.y))


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
    threshold = check_threshold(threshold)
    gradient = check_gradient_mode(gradient)
    x = as_float_array(x, "x", ndim=4)
    gamma = as_float_array(gamma, "gamma", shape=(x.shape[1],))
    eps = check_nonneg_float(eps, "eps")
    dy = as_float_array(dy, "dy", shape=x.shape)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    if np.any(var + eps <= 0):
        raise ValueError("batch variance + eps is 0 in some channel; use eps > 0")
    d = x - _vec(mean)
    t = gamma / np.sqrt(var + eps)
    t_clip = np.clip(t, -threshold, threshold)
    dbeta = dy.sum(axis=(0, 2, 3))
    dt_clip = (dy * d).sum(axis=(0, 2, 3))
    dt = dt_clip * (np.abs(t) <= threshold) if gradient == "clip" else dt_clip
    dgamma = dt / np.sqrt(var + eps)
    dvar = dt * gamma * (-0.5) * (var + eps) ** -1.5
    dx = _vec(t_clip) * (dy - _vec(dbeta / n)) + _vec(dvar) * 2.0 * d / n
    return dx, dgamma, dbeta


def _check_eval_args(x, gamma, running_mean, running_var, eps):
    x = as_float_array(x, "x", ndim=4)
    c = x.shape[1]
    gamma = as_float_array(gamma, "gamma", shape=(c,))
    running_mean = as_float_array(running_mean, "running_mean", shape=(c,))
    running_var = as_float_array(running_var, "running_var", shape=(c,))
    eps = check_nonneg_float(eps, "eps")
    return x, gamma, running_mean, running_var, eps


def oabn_eval(x, gamma, beta, running_mean, running_var, *, threshold: float, eps: float = 1e-5) -> np.ndarray:
    """Eval-mode OABN: the affine map ``y = t̃·x + (β − μ·t̃)`` with running statistics (SPEC §4).

    With ``s = ∞`` this is :func:`repspec.reference.ops.batch_norm_eval` bit for bit.

    >>> x = np.ones((1, 1, 1, 1))
    >>> oabn_eval(x, np.array([3.0]), np.zeros(1), np.zeros(1), np.ones(1), threshold=1.0, eps=0.0)[0, 0]
    array([[1.]])
    """
    threshold = check_threshold(threshold)
    x, gamma, running_mean, running_var, eps = _check_eval_args(x, gamma, running_mean, running_var, eps)
    beta = as_float_array(beta, "beta", shape=(x.shape[1],))
    t = oabn_factor(gamma, running_var, eps, threshold)
    return _vec(t) * x + _vec(beta - running_mean * t)


def oabn_eval_backward(dy, x, gamma, running_mean, running_var, *, threshold: float, eps: float = 1e-5,
                       gradient: str = "clip"):
    """Gradients of :func:`oabn_eval` (statistics are constants).

    ``∂L/∂x = t̃·dy``, ``∂L/∂t̃ = Σ dy·(x − μ)``, ``∂L/∂t = ∂L/∂t̃·[|t| ≤ s]`` (``"clip"``) or
    ``∂L/∂t̃`` (``"straight_through"``), ``∂L/∂γ = ∂L/∂t / sqrt(σ² + eps)``, ``∂L/∂β = Σ dy``.
    Returns ``(dx, dgamma, dbeta)``.
    """
    threshold = check_threshold(threshold)
    gradient = check_gradient_mode(gradient)
    x, gamma, running_mean, running_var, eps = _check_eval_args(x, gamma, running_mean, running_var, eps)
    dy = as_float_array(dy, "dy", shape=x.shape)
    t = bn_factor(gamma, running_var, eps)
    t_clip = np.clip(t, -threshold, threshold)
    dx = _vec(t_clip) * dy
    dt_clip = (dy * (x - _vec(running_mean))).sum(axis=(0, 2, 3))
    dt = dt_clip * (np.abs(t) <= threshold) if gradient == "clip" else dt_clip
    dgamma = dt / np.sqrt(running_var + eps)
    dbeta = dy.sum(axis=(0, 2, 3))
    return dx, dgamma, dbeta
