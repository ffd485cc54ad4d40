"""SPEC §5: uniform quantization, fake quantization and the straight-through backward.

Two quantizers, both with rounding **half to even** (``np.rint``):

* **weights** — symmetric, narrow range, per layer or per output channel (axis 0,
  SPEC §0 broadcast ``v[:, None, None, None]``)::

      qmax  = 2^(b−1) − 1
      scale = max|w| / qmax
      q     = clamp(rint(w / scale), −qmax, qmax)
      ŵ     = q · scale

* **activations** — asymmetric, per layer::

      lo' = min(lo, 0),  hi' = max(hi, 0),  qmax = 2^b − 1
      scale = (hi' − lo') / qmax
      zp    = clamp(rint(−lo' / scale), 0, qmax)
      q     = clamp(rint(x / scale) + zp, 0, qmax)
      x̂     = (q − zp) · scale

Zero range *[repspec]*: a scale of 0 represents the single value 0. Every input then
maps to the code ``zp`` (0 for weights), ``x̂ = 0``, and the representable range is
``[0, 0]``. Nothing is ever divided by 0. A computed scale is 0 when the layer or
channel is all zeros, when ``lo = hi = 0``, and whenever it is below float32's
smallest normal number (``scale < MIN_SCALE = 2^-126``): a scale that small cannot be
held in float32 (where deployed quantizers keep their scales) without losing
precision, its float32 reciprocal overflows, and the values it could represent are
all within ``qmax · 2^-126 < 8e-34`` of 0. With ``scale >= 2^-126`` the zero point
``rint(−lo'/scale)`` is provably in ``[0, qmax]``; the clamp is kept as a guard.

The *representable range* of a quantizer is ``[(0 − zp)·scale, (qmax − zp)·scale]``
for activations and ``[−qmax·scale, qmax·scale]`` for weights — exactly the
dequantized extreme codes (same float arithmetic), so ``x̂`` always lies inside it.
The straight-through estimator passes the gradient where the *input* lies inside
that range, boundaries included (see :func:`fake_quantize_backward` for how this
differs from PyTorch's code-based mask).
"""

from __future__ import annotations

import numpy as np

# *[repspec]* the smallest nonzero scale, float32's smallest normal number: a computed scale below it
# is a zero range (module docstring)
from repspec.core.vocabulary import MIN_SCALE

from ._checks import as_float_array, check_bits, check_bool, check_int, check_nonneg_float, check_real
from .analysis import state_size  # SPEC §5 state size lives with the other weight statistics

__all__ = [
    "weight_qmax",
    "activation_qmax",
    "weight_qparams",
    "quantize_weight",
    "dequantize",
    "fake_quantize_weight",
    "weight_range",
    "activation_qparams",
    "quantize_activation",
    "fake_quantize_activation",
    "activation_range",
    "fake_quantize_backward",
    "state_size",
    "MIN_SCALE",
]



# ------------------------------------------------------------------------ code ranges


def weight_qmax(bits) -> int:
    """``qmax = 2^(b−1) − 1`` for symmetric narrow-range weights; codes lie in ``[−qmax, qmax]``.

    *[repspec]* ``b = 1`` would give ``qmax = 0`` (every weight quantized to 0), so
    weights need ``bits >= 2``.

    >>> weight_qmax(8), weight_qmax(2)
    (127, 1)
    """
    return 2 ** (check_bits(bits, weights=True) - 1) - 1


def activation_qmax(bits) -> int:
    """``qmax = 2^b − 1`` for asymmetric activations; codes lie in ``[0, qmax]``.

    >>> activation_qmax(8), activation_qmax(1)
    (255, 1)
    """
    return 2 ** check_bits(bits) - 1


def _check_scale(scale, name: str = "scale", *, channels: int | None = None) -> np.ndarray:
    """A scale is finite and ``>= 0``; a scalar, or ``(channels,)`` for per-channel weights."""
    scale = as_float_array(scale, name, ndim=(0, 1))
    if scale.ndim == 1 and (channels is None or scale.shape[0] != channels):
        want = "a scalar" if channels is None else f"a scalar or shape ({channels},)"
        raise ValueError(f"{name} must be {want}, got shape {scale.shape}")
    if np.any(scale < 0):
        raise ValueError(f"{name} must be >= 0, got min {scale.min()}")
    return scale


def _per_axis0(v: np.ndarray, ndim: int) -> np.ndarray:
    """Broadcast a scalar or an ``(O,)`` vector along axis 0 of an ``ndim``-d array (SPEC §0)."""
    return v if v.ndim == 0 else v.reshape((-1,) + (1,) * (ndim - 1))


def _divide_or_zero(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``x / scale`` where ``scale > 0`` and 0 where ``scale == 0``; overflow to ±inf is
    harmless (it is clamped to the code range right after)."""
    safe = np.where(scale > 0, scale, 1.0)
    with np.errstate(over="ignore"):
        return np.where(scale > 0, x / safe, 0.0)


# --------------------------------------------------------------------------- weights


def weight_qparams(w, bits, per_channel: bool = False) -> float | np.ndarray:
    """Symmetric weight scale ``max|w| / (2^(b−1) − 1)`` (SPEC §5).

    ``per_channel=False``: one scale for the whole tensor (a Python float).
    ``per_channel=True``: one scale per output channel (axis 0), shape ``(O,)``;
    ``w`` must have at least one dimension.

    A channel of zeros, or one with ``max|w| / qmax < MIN_SCALE = 2^-126``, gets
    scale 0 (the zero-range rule in the module docstring).

    >>> weight_qparams(np.array([[1.0, -2.0], [0.5, 0.25]]), 3)
    0.6666666666666666
    >>> weight_qparams(np.array([[1.0, -2.0], [0.0, 0.0]]), 3, per_channel=True)
    array([0.66666667, 0.        ])
    """
    w = as_float_array(w, "w")
    qmax = weight_qmax(bits)
    per_channel = check_bool(per_channel, "per_channel")
    if per_channel:
        if w.ndim < 1:
            raise ValueError(f"per_channel=True needs w with at least 1 dimension, got shape {w.shape}")
        scale = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / qmax
        return np.where(scale < MIN_SCALE, 0.0, scale)
    scale = float(np.abs(w).max()) / qmax
    return scale if scale >= MIN_SCALE else 0.0


def quantize_weight(w, scale, bits) -> np.ndarray:
    """Integer codes ``q = clamp(rint(w / scale), −qmax, qmax)``, ``qmax = 2^(b−1) − 1``.

    ``scale`` is a scalar or ``(O,)`` (per output channel, broadcast along axis 0).
    Where ``scale == 0`` the code is 0. Returns an ``int64`` array shaped like ``w``.

    >>> quantize_weight(np.array([0.5, 1.5, 2.5, -1.5, 9.0]), 1.0, 3)  # ties to even, clamp at 3
    array([ 0,  2,  2, -2,  3])
    """
    w = as_float_array(w, "w")
    qmax = weight_qmax(bits)
    scale = _check_scale(scale, channels=w.shape[0] if w.ndim >= 1 else None)
    s = _per_axis0(scale, w.ndim)
    return np.clip(np.rint(_divide_or_zero(w, s)), -qmax, qmax).astype(np.int64)


def dequantize(q, scale, zero_point: int = 0) -> np.ndarray:
    """``x̂ = (q − zp) · scale`` (float64); ``scale`` a scalar or ``(O,)`` along axis 0.

    Weights use ``zero_point = 0``.

    >>> dequantize(np.array([0, 1, 255]), 0.5, zero_point=1)
    array([ -0.5,   0. , 127. ])
    """
    q = as_float_array(q, "q", allow_empty=True)
    if np.any(q != np.rint(q)):
        raise ValueError("q must hold integer codes")
    scale = _check_scale(scale, channels=q.shape[0] if q.ndim >= 1 else None)
    zero_point = check_int(zero_point, "zero_point")
    return (q - zero_point) * _per_axis0(scale, q.ndim)


def fake_quantize_weight(w, bits, per_channel: bool = False) -> np.ndarray:
    """``ŵ = quantize_weight(w, s, b) · s`` with ``s = weight_qparams(w, b, per_channel)``.

    Idempotent: ``fake_quantize_weight(ŵ, b, per_channel) == ŵ`` exactly
    (``tests/test_ref_quant.py``).

    >>> fake_quantize_weight(np.array([0.1, -0.3, 1.0]), 2)
    array([0., 0., 1.])
    """
    w = as_float_array(w, "w")
    scale = weight_qparams(w, bits, per_channel)
    return dequantize(quantize_weight(w, scale, bits), scale)


def weight_range(scale, bits):
    """Representable range ``(−qmax·scale, qmax·scale)`` of the weight quantizer (scalars or ``(O,)``)."""
    qmax = weight_qmax(bits)
    scale = _check_scale(scale, channels=np.size(scale) if np.ndim(scale) == 1 else None)
    return -qmax * scale, qmax * scale


# ----------------------------------------------------------------------- activations


def _check_range(lo, hi):
    lo = check_real(lo, "lo")
    hi = check_real(hi, "hi")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"lo and hi must be finite, got lo={lo}, hi={hi}")
    if lo > hi:
        raise ValueError(f"lo must be <= hi, got lo={lo}, hi={hi}")
    return lo, hi


def activation_qparams(lo, hi, bits) -> tuple[float, int]:
    """Asymmetric ``(scale, zero_point)`` for the calibrated range ``[lo, hi]`` (SPEC §5).

    ``lo' = min(lo, 0)``, ``hi' = max(hi, 0)`` (0 is always exactly representable),
    ``scale = (hi' − lo') / (2^b − 1)``, ``zp = clamp(rint(−lo'/scale), 0, 2^b − 1)``.

    A zero range gives ``(0.0, 0)``: ``lo = hi = 0``, or ``scale < MIN_SCALE = 2^-126``
    (float32's smallest normal; module docstring).

    >>> activation_qparams(-1.0, 3.0, 2)
    (1.3333333333333333, 1)
    >>> activation_qparams(2.0, 5.0, 8)  # the range is extended down to 0
    (0.0196078431372549, 0)
    >>> activation_qparams(0.0, 0.0, 8)
    (0.0, 0)
    >>> activation_qparams(-511 * 2.0**-1074, 0.0, 8)  # scale 1e-323 < 2^-126: zero range
    (0.0, 0)
    """
    lo, hi = _check_range(lo, hi)
    qmax = activation_qmax(bits)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    width = hi - lo
    if not np.isfinite(width):
        raise ValueError(f"hi - lo overflows float64 (lo={lo}, hi={hi})")
    scale = width / qmax
    if scale < MIN_SCALE:
        return 0.0, 0
    zp = int(np.clip(np.rint(-lo / scale), 0, qmax))
    return float(scale), zp


def _check_act_qparams(scale, zero_point, bits):
    qmax = activation_qmax(bits)
    scale = check_nonneg_float(scale, "scale")
    zero_point = check_int(zero_point, "zero_point", min_value=0, max_value=qmax)
    return scale, zero_point, qmax


def quantize_activation(x, scale, zero_point, bits) -> np.ndarray:
    """Codes ``q = clamp(rint(x / scale) + zp, 0, 2^b − 1)`` (``int64``, shaped like ``x``).

    ``scale == 0`` maps every input to ``zp``.

    >>> quantize_activation(np.array([-9.0, -0.5, 0.5, 1.5, 9.0]), 1.0, 1, 2)
    array([0, 1, 1, 3, 3])
    """
    x = as_float_array(x, "x")
    scale, zero_point, qmax = _check_act_qparams(scale, zero_point, bits)
    q = np.rint(_divide_or_zero(x, np.asarray(scale))) + zero_point
    return np.clip(q, 0, qmax).astype(np.int64)


def fake_quantize_activation(x, scale, zero_point, bits) -> np.ndarray:
    """``x̂ = (quantize_activation(x, scale, zp, b) − zp) · scale`` (SPEC §5).

    >>> s, zp = activation_qparams(-1.0, 3.0, 2)
    >>> fake_quantize_activation(np.array([-5.0, 0.0, 0.7, 2.0, 5.0]), s, zp, 2)
    array([-1.33333333,  0.        ,  1.33333333,  2.66666667,  2.66666667])
    """
    q = quantize_activation(x, scale, zero_point, bits)
    return (q - int(zero_point)) * float(scale)


def activation_range(scale, zero_point, bits) -> tuple[float, float]:
    """Representable range ``((0 − zp)·scale, (2^b − 1 − zp)·scale)`` of the activation quantizer."""
    scale, zero_point, qmax = _check_act_qparams(scale, zero_point, bits)
    return (0 - zero_point) * scale, (qmax - zero_point) * scale


# ------------------------------------------------------------------ straight-through


def fake_quantize_backward(dy, x, lo_repr, hi_repr) -> np.ndarray:
    """Straight-through estimator: ``∂L/∂x = dy · [lo_repr ≤ x ≤ hi_repr]`` (SPEC §5).

    ``lo_repr, hi_repr`` are the representable range (:func:`activation_range`,
    :func:`weight_range`): scalars, or ``(O,)`` vectors broadcast along axis 0 for
    per-channel weights. Boundaries are inside (gradient 1).

    *[repspec]* The mask is on the **input value**. PyTorch's
    ``fake_quantize_per_tensor_affine`` masks on the **rounded code**
    (``quant_min ≤ rint(x/scale) + zp ≤ quant_max``), which also passes the gradient
    for inputs up to half a step outside the range; an implementation following this
    spec must compare ``x`` with the range instead.

    >>> fake_quantize_backward(np.ones(4), np.array([-1.5, -1.0, 2.0, 2.1]), -1.0, 2.0)
    array([0., 1., 1., 0.])
    """
    x = as_float_array(x, "x")
    dy = as_float_array(dy, "dy", shape=x.shape)
    channels = x.shape[0] if x.ndim >= 1 else None
    lo = as_float_array(lo_repr, "lo_repr", ndim=(0, 1))
    hi = as_float_array(hi_repr, "hi_repr", ndim=(0, 1))
    for v, name in ((lo, "lo_repr"), (hi, "hi_repr")):
        if v.ndim == 1 and v.shape[0] != channels:
            raise ValueError(f"{name} must be a scalar or shape ({channels},) along axis 0 of x, got {v.shape}")
    if np.any(lo > hi):
        raise ValueError("lo_repr must be <= hi_repr")
    lo, hi = _per_axis0(lo, x.ndim), _per_axis0(hi, x.ndim)
    return np.where((x >= lo) & (x <= hi), dy, 0.0)
