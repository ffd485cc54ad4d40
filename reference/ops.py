"""SPEC §0–§1: the building blocks, forward and backward, in float64 NumPy.

Every op is a pure function: inputs are never mutated, running statistics are
*returned* rather than updated in place. Each ``*_backward`` sits next to its
forward and takes the upstream gradient plus the forward's inputs (recomputing
what it needs, so nothing is hidden in a cache).

Shapes: activations NCHW ``(N, C, H, W)``; conv kernels ``(O, I/groups, kh, kw)``;
per-channel vectors ``(C,)`` indexed by the output channel.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._checks import (as_float_array, batch_norm_eval_args, batch_norm_eval_backward_args, batch_norm_train_args,
                      batch_norm_train_backward_args, check_int, check_nonneg_float, checked)

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv_output_size",
    "batch_norm_train",
    "batch_norm_train_backward",
    "batch_norm_eval",
    "batch_norm_eval_backward",
    "BatchNormTrainResult",
    "bn_factor",
    "relu",
    "relu_backward",
    "global_avg_pool",
    "global_avg_pool_backward",
    "linear",
    "linear_backward",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
]


# --------------------------------------------------------------------------- conv2d


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """``floor((size + 2·padding − kernel) / stride) + 1`` (PyTorch's convention)."""
    return (size + 2 * padding - kernel) // stride + 1


def _check_conv_args(x, w, b, stride, padding, groups):
    x = as_float_array(x, "x", ndim=4)
    w = as_float_array(w, "w", ndim=4)
    stride = check_int(stride, "stride", min_value=1)
    padding = check_int(padding, "padding", min_value=0)
    groups = check_int(groups, "groups", min_value=1)
    n_out, cin_per_group, kh, kw = w.shape
    if x.shape[1] % groups or n_out % groups:
        raise ValueError(
            f"groups={groups} must divide x channels ({x.shape[1]}) and w output channels ({n_out})"
        )
    if cin_per_group * groups != x.shape[1]:
        raise ValueError(
            f"w must have shape (O, C/groups, kh, kw) = (*, {x.shape[1] // groups}, *, *) "
            f"for x with {x.shape[1]} channels and groups={groups}, got {w.shape}"
        )
    ho = conv_output_size(x.shape[2], kh, stride, padding)
    wo = conv_output_size(x.shape[3], kw, stride, padding)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"x spatial size {x.shape[2:]} with padding={padding} is smaller than the kernel {w.shape[2:]}"
        )
    if b is not None:
        b = as_float_array(b, "b", shape=(n_out,))
    return x, w, b, stride, padding, groups, ho, wo


def _windows(x_padded: np.ndarray, kh: int, kw: int, stride: int, ho: int, wo: int) -> np.ndarray:
    """Read-only view ``(N, C, Ho, Wo, kh, kw)`` of every receptive field (no copy)."""
    s_n, s_c, s_h, s_w = x_padded.strides
    n, c = x_padded.shape[:2]
    return as_strided(
        x_padded,
        shape=(n, c, ho, wo, kh, kw),
        strides=(s_n, s_c, s_h * stride, s_w * stride, s_h, s_w),
        writeable=False,
    )


def _pad(x: np.ndarray, padding: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def conv2d(x, w, b=None, *, stride: int = 1, padding: int = 0, groups: int = 1) -> np.ndarray:
    """2-D cross-correlation with zero padding and channel groups (SPEC §1).

    ``y[n, o, i, j] = b[o] + Σ_{c, p, q} w[o, c, p, q] · x̃[n, g(o)·C_g + c, i·s + p, j·s + q]``

    where ``x̃`` is ``x`` zero-padded by ``padding`` on each side, ``C_g = C / groups``
    and ``g(o) = o // (O / groups)`` is the group of output channel ``o``.

    Shapes: ``x (N, C, H, W)``, ``w (O, C/groups, kh, kw)``, ``b (O,)`` or None →
    ``y (N, O, Ho, Wo)`` with ``Ho = floor((H + 2·padding − kh)/stride) + 1``.

    >>> import numpy as np
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> conv2d(x, np.ones((1, 1, 3, 3)), padding=1)[0, 0]
    array([[ 8., 15., 12.],
           [21., 36., 27.],
           [20., 33., 24.]])
    """
    x, w, b, stride, padding, groups, ho, wo = _check_conv_args(x, w, b, stride, padding, groups)
    n, c = x.shape[:2]
    n_out, c_g, kh, kw = w.shape
    win = _windows(_pad(x, padding), kh, kw, stride, ho, wo)
    win = win.reshape(n, groups, c_g, ho, wo, kh, kw)
    wg = w.reshape(groups, n_out // groups, c_g, kh, kw)
    y = np.einsum("ngchwpq,gocpq->ngohw", win, wg, optimize=True).reshape(n, n_out, ho, wo)
    if b is not None:
        y = y + b[None, :, None, None]
    return y


def conv2d_backward(dy, x, w, *, stride: int = 1, padding: int = 0, groups: int = 1, with_bias: bool = False):
    """Gradients of :func:`conv2d` given ``dy = ∂L/∂y``.

    ``∂L/∂w[o, c, p, q] = Σ_{n, i, j} dy[n, o, i, j] · x̃[n, g(o)·C_g + c, i·s + p, j·s + q]``

    ``∂L/∂x̃[n, g·C_g + c, i·s + p, j·s + q] += Σ_{o ∈ g} dy[n, o, i, j] · w[o, c, p, q]``
    (scatter-add over the kernel taps, then the padding is cut away)

    ``∂L/∂b[o] = Σ_{n, i, j} dy[n, o, i, j]``

    Returns ``(dx, dw, db)``; ``db`` is None unless ``with_bias``.
    """
    x, w, _, stride, padding, groups, ho, wo = _check_conv_args(x, w, None, stride, padding, groups)
    n, c, h, wd = x.shape
    n_out, c_g, kh, kw = w.shape
    dy = as_float_array(dy, "dy", shape=(n, n_out, ho, wo))
    xp = _pad(x, padding)
    win = _windows(xp, kh, kw, stride, ho, wo).reshape(n, groups, c_g, ho, wo, kh, kw)
    dyg = dy.reshape(n, groups, n_out // groups, ho, wo)
    wg = w.reshape(groups, n_out // groups, c_g, kh, kw)

    dw = np.einsum("ngohw,ngchwpq->gocpq", dyg, win, optimize=True).reshape(w.shape)

    dwin = np.einsum("ngohw,gocpq->ngchwpq", dyg, wg, optimize=True).reshape(n, c, ho, wo, kh, kw)
    dxp = np.zeros_like(xp)
    for p in range(kh):  # each tap contributes to a strided slice of the padded input
        for q in range(kw):
            dxp[:, :, p : p + stride * ho : stride, q : q + stride * wo : stride] += dwin[..., p, q]
    dx = dxp[:, :, padding : padding + h, padding : padding + wd]

    db = dy.sum(axis=(0, 2, 3)) if with_bias else None
    return dx, dw, db


# ----------------------------------------------------------------------- batch norm


def bn_factor(gamma, var, eps: float) -> np.ndarray:
    """The per-channel BN factor ``t = γ / sqrt(σ² + eps)`` (SPEC §0)."""
    gamma = as_float_array(gamma, "gamma", ndim=1)
    var = as_float_array(var, "var", shape=gamma.shape)
    eps = check_nonneg_float(eps, "eps")
    if np.any(var + eps <= 0):
        raise ValueError("var + eps must be > 0 in every channel")
    return gamma / np.sqrt(var + eps)


class BatchNormTrainResult(NamedTuple):
    y: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    batch_mean: np.ndarray
    batch_var: np.ndarray  # biased: the one used to normalize


@checked(batch_norm_train_args)
def batch_norm_train(x, gamma, beta, running_mean, running_var, *, momentum: float = 0.1, eps: float = 1e-5):
    """Training-mode batch norm with the PyTorch running-stat update (SPEC §0).

    ``μ_B = mean_{n,h,w} x``, ``σ²_B = mean_{n,h,w} (x − μ_B)²`` (**biased**, used to normalize)

    ``y = γ · (x − μ_B) / sqrt(σ²_B + eps) + β``

    ``running_mean ← (1 − m)·running_mean + m·μ_B``

    ``running_var ← (1 − m)·running_var + m·σ²_B · n/(n − 1)`` (**unbiased**), ``n = N·H·W``

    Requires ``n ≥ 2`` (the unbiased variance of one value is undefined; PyTorch
    refuses it too). Returns :class:`BatchNormTrainResult`.
    """
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))  # biased, ddof=0
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var + eps)[None, :, None, None]
    y = gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    new_rm = (1.0 - momentum) * running_mean + momentum * mean
    new_rv = (1.0 - momentum) * running_var + momentum * var * n / (n - 1)
    return BatchNormTrainResult(y, new_rm, new_rv, mean, var)


@checked(batch_norm_train_backward_args)
def batch_norm_train_backward(dy, x, gamma, *, eps: float = 1e-5):
    """Gradients of :func:`batch_norm_train` (batch statistics depend on ``x``).

    With ``x̂ = (x − μ_B)/sqrt(σ²_B + eps)``, ``n = N·H·W`` and sums over ``(n, h, w)``:

    ``∂L/∂γ = Σ dy·x̂``, ``∂L/∂β = Σ dy``,

    ``∂L/∂x = γ / (n·sqrt(σ²_B + eps)) · (n·dy − Σ dy − x̂·Σ dy·x̂)``

    Returns ``(dx, dgamma, dbeta)``.
    """
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=(0, 2, 3))
    inv_std = 1.0 / np.sqrt(x.var(axis=(0, 2, 3)) + eps)
    xhat = (x - mean[None, :, None, None]) * inv_std[None, :, None, None]
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dx = (gamma * inv_std / n)[None, :, None, None] * (
        n * dy - dbeta[None, :, None, None] - xhat * dgamma[None, :, None, None]
    )
    return dx, dgamma, dbeta


@checked(batch_norm_eval_args)
def batch_norm_eval(x, gamma, beta, running_mean, running_var, *, eps: float = 1e-5) -> np.ndarray:
    """Eval-mode batch norm: the affine map ``y = t·x + (β − μ·t)``, ``t = γ/sqrt(σ² + eps)`` (SPEC §0)."""
    t = bn_factor(gamma, running_var, eps)
    return t[None, :, None, None] * x + (beta - running_mean * t)[None, :, None, None]


@checked(batch_norm_eval_backward_args)
def batch_norm_eval_backward(dy, x, gamma, running_mean, running_var, *, eps: float = 1e-5):
    """Gradients of :func:`batch_norm_eval` (statistics are constants).

    ``∂L/∂x = t·dy``, ``∂L/∂γ = Σ dy·(x − μ)/sqrt(σ² + eps)``, ``∂L/∂β = Σ dy``.
    Returns ``(dx, dgamma, dbeta)``.
    """
    inv_std = 1.0 / np.sqrt(running_var + eps)
    dx = (gamma * inv_std)[None, :, None, None] * dy
    dgamma = (dy * (x - running_mean[None, :, None, None]) * inv_std[None, :, None, None]).sum(axis=(0, 2, 3))
    dbeta = dy.sum(axis=(0, 2, 3))
    return dx, dgamma, dbeta


# ------------------------------------------------------------- relu, pool, linear, CE


def relu(x) -> np.ndarray:
    """``y = max(x, 0)``."""
    x = as_float_array(x, "x", allow_empty=True)
    return np.maximum(x, 0.0)


def relu_backward(dy, x) -> np.ndarray:
    """``∂L/∂x = dy · [x > 0]`` (the subgradient at 0 is 0, as in PyTorch)."""
    x = as_float_array(x, "x", allow_empty=True)
    dy = as_float_array(dy, "dy", shape=x.shape, allow_empty=True)
    return dy * (x > 0)


def global_avg_pool(x) -> np.ndarray:
    """``y[n, c] = mean_{h, w} x[n, c, h, w]``; ``(N, C, H, W) → (N, C)``."""
    x = as_float_array(x, "x", ndim=4)
    return x.mean(axis=(2, 3))


def global_avg_pool_backward(dy, x_shape) -> np.ndarray:
    """``∂L/∂x[n, c, h, w] = dy[n, c] / (H·W)``."""
    n, c, h, w = (check_int(s, "x_shape entry", min_value=1) for s in x_shape)
    dy = as_float_array(dy, "dy", shape=(n, c))
    return np.broadcast_to(dy[:, :, None, None] / (h * w), (n, c, h, w)).copy()


def linear(x, w, b=None) -> np.ndarray:
    """``y = x·wᵀ + b``; ``x (N, F)``, ``w (K, F)``, ``b (K,)`` → ``y (N, K)``."""
    x = as_float_array(x, "x", ndim=2)
    w = as_float_array(w, "w", shape=(None, x.shape[1]))
    y = x @ w.T
    if b is not None:
        y = y + as_float_array(b, "b", shape=(w.shape[0],))
    return y


def linear_backward(dy, x, w):
    """``∂L/∂x = dy·w``, ``∂L/∂w = dyᵀ·x``, ``∂L/∂b = Σ_n dy``. Returns ``(dx, dw, db)``."""
    x = as_float_array(x, "x", ndim=2)
    w = as_float_array(w, "w", shape=(None, x.shape[1]))
    dy = as_float_array(dy, "dy", shape=(x.shape[0], w.shape[0]))
    return dy @ w, dy.T @ x, dy.sum(axis=0)


def _check_ce_args(logits, labels):
    logits = as_float_array(logits, "logits", ndim=2)
    labels_arr = np.asarray(labels)
    if not np.issubdtype(labels_arr.dtype, np.integer):
        raise TypeError(f"labels must be an integer array, got dtype {labels_arr.dtype}")
    if labels_arr.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {labels_arr.shape}")
    if np.any(labels_arr < 0) or np.any(labels_arr >= logits.shape[1]):
        raise ValueError(f"labels must be in [0, {logits.shape[1] - 1}]")
    return logits, labels_arr


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)  # exp never overflows
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, labels) -> float:
    """Mean softmax cross-entropy: ``L = −(1/N)·Σ_n log softmax(logits_n)[labels_n]``."""
    logits, labels = _check_ce_args(logits, labels)
    return float(-_log_softmax(logits)[np.arange(logits.shape[0]), labels].mean())


def softmax_cross_entropy_backward(logits, labels) -> np.ndarray:
    """``∂L/∂logits = (softmax(logits) − onehot(labels)) / N``."""
    logits, labels = _check_ce_args(logits, labels)
    grad = np.exp(_log_softmax(logits))
    grad[np.arange(logits.shape[0]), labels] -= 1.0
    return grad / logits.shape[0]

