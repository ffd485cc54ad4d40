"""tinyrep — a deliberately *foreign* port: the conformance suite's worked third-party example.

A small pure-NumPy library for RepVGG-style deployment, RepOpt training steps and fake
quantization, written the way a TensorFlow/JAX user would: activations **NHWC**, kernels
**HWIO** ``(kh, kw, in/groups, out)``, dense kernels ``(in, out)``, per-channel quantities on
the **last** axis, and RepOpt scales in the original code's per-block order
``(identity, 1x1, conv)``. It shares no code with ``repspec.reference``: it is what
``docs/porting.md`` wraps in an adapter (``tests/third_party/tinyrep_adapter.py``).

It offers only the SGD form of the Grad Mult mask (``power=2``); the AdamW form is left out.
"""

from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------- deployment

def fold_bn(gamma, beta, mean, var, eps):
    """Eval-mode BN as ``scale·x + shift`` per channel."""
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def repvgg_deploy(k3, bn3, k1, bn1, bn_id=None, *, groups=1, eps=1e-5, id_clip=None):
    """Fold a RepVGG block into one HWIO kernel and a bias.

    ``k3 (3, 3, I/g, O)``, ``k1 (1, 1, I/g, O)``; ``bn*`` are ``(gamma, beta, mean, var)`` tuples;
    ``bn_id`` the identity branch's BN (None: no identity); ``id_clip`` bounds the identity
    factor to ``[-id_clip, id_clip]`` (outlier-aware BN; None: no bound).
    """
    s3, t3 = fold_bn(*bn3, eps)
    s1, t1 = fold_bn(*bn1, eps)
    kernel = k3 * s3  # the output channel is the last axis: broadcasting does the per-channel product
    kernel[1, 1] += k1[0, 0] * s1
    bias = t3 + t1
    if bn_id is not None:
        s0, _ = fold_bn(*bn_id, eps)
        if id_clip is not None:
            s0 = np.clip(s0, -id_clip, id_clip)
        per_group = kernel.shape[2]
        out = np.arange(kernel.shape[3])
        kernel[1, 1, out % per_group, out] += s0
        bias = bias + (bn_id[1] - bn_id[2] * s0)  # the shift of the (possibly clipped) factor
    return kernel, bias


# --------------------------------------------------------------------------- RepOpt

def grad_mult(scales, in_channels, power=2):
    """The Grad Mult mask in HWIO for ``scales = (identity, s_1x1, s_conv)``, the original order.

    ``identity`` is None for a block without a *trainable* identity branch; otherwise its
    centre tap gains ``+1``. Only ``power=2`` (SGD) is implemented.
    """
    if power != 2:
        raise NotImplementedError("tinyrep implements the SGD mask (power 2) only")
    identity, s1, s3 = scales
    s3, s1 = np.asarray(s3, dtype=float), np.asarray(s1, dtype=float)
    mask = np.empty((3, 3, in_channels, s3.size))
    mask[...] = s3**2
    mask[1, 1] += s1**2
    if identity is not None:
        diag = np.arange(s3.size)
        mask[1, 1, diag, diag] += 1.0
    return mask


def sgd(w, g, velocity, *, lr, momentum=0.0, dampening=0.0, nesterov=False, wd=0.0, mult=None):
    """One (RepOpt-)SGD update of an array of any shape; returns ``(w, velocity)``.

    ``mult`` multiplies the raw gradient (RepOpt); the decay term is added afterwards, unscaled.
    ``velocity`` is None before the first step (it then starts as the step itself, undamped).
    """
    step = g if mult is None else mult * g
    if wd:
        step = step + wd * w
    if momentum:
        velocity = step if velocity is None else momentum * velocity + (1.0 - dampening) * step
        step = step + momentum * velocity if nesterov else velocity
    else:
        velocity = None
    return w - lr * step, velocity


# --------------------------------------------------------------------------- outlier-aware BN

def obn_train(x, gamma, beta, mean_ema, var_ema, *, bound=np.inf, momentum=0.1, eps=1e-5):
    """Training-mode BN on NHWC ``x`` whose factor ``γ/σ`` is clipped to ``[-bound, bound]``.

    Returns ``(y, mean_ema, var_ema, cache)``; the EMAs use the unbiased batch variance.
    """
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mu = x.mean(axis=(0, 1, 2))
    centred = x - mu
    var = (centred**2).mean(axis=(0, 1, 2))
    factor = gamma / np.sqrt(var + eps)
    used = np.clip(factor, -bound, bound)
    y = used * centred + beta
    unbiased = var * n / max(n - 1, 1)
    mean_ema = (1 - momentum) * mean_ema + momentum * mu
    var_ema = (1 - momentum) * var_ema + momentum * unbiased
    return y, mean_ema, var_ema, (centred, var, gamma, factor, used, bound, eps, n)


def obn_train_grad(dy, cache, *, through_clip=False):
    """``(dx, dgamma, dbeta)`` of :func:`obn_train`; a clipped channel passes no gradient to ``γ``
    or through ``σ`` unless ``through_clip`` (straight-through)."""
    centred, var, gamma, factor, used, bound, eps, n = cache
    dbeta = dy.sum(axis=(0, 1, 2))
    d_used = (dy * centred).sum(axis=(0, 1, 2))
    d_factor = d_used if through_clip else np.where(np.abs(factor) <= bound, d_used, 0.0)
    inv_std = 1.0 / np.sqrt(var + eps)
    dgamma = d_factor * inv_std
    d_var = -0.5 * d_factor * gamma * inv_std**3
    dx = used * (dy - dbeta / n) + d_var * 2.0 * centred / n
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------- quantization

def quant_sym_lastaxis(w, bits, per_channel):
    """Symmetric narrow-range fake quantization; per channel = per entry of the LAST axis."""
    levels = 2 ** (bits - 1) - 1
    amax = np.abs(w).max(axis=tuple(range(w.ndim - 1)), keepdims=True) if per_channel else np.abs(w).max()
    step = amax / levels
    safe = np.where(step > 0, step, 1.0)
    return np.where(step > 0, np.clip(np.rint(w / safe), -levels, levels) * step, 0.0)


def asym_params(lo, hi, bits):
    """``(step, zero_point)`` for a calibrated range widened to contain 0."""
    top = 2**bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    step = (hi - lo) / top
    zero = 0.0 if step == 0 else float(np.clip(np.rint(-lo / step), 0, top))
    return step, zero, top


def quant_asym(x, lo, hi, bits):
    step, zero, top = asym_params(lo, hi, bits)
    if step == 0:
        return np.zeros_like(x)
    return (np.clip(np.rint(x / step) + zero, 0, top) - zero) * step


def quant_asym_grad(dy, x, lo, hi, bits):
    """Straight-through: ``dy`` where ``x`` lies in the representable range (ends included)."""
    step, zero, top = asym_params(lo, hi, bits)
    lowest, highest = -zero * step, (top - zero) * step
    return np.where((x >= lowest) & (x <= highest), dy, 0.0)


def snap_to_codebook(w, codebook):
    """Nearest entry of an ascending ``codebook``; a value on a midpoint takes the lower entry."""
    mids = 0.5 * codebook[:-1] + 0.5 * codebook[1:]
    return codebook[np.digitize(w, mids, right=True)]
