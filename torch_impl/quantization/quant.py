"""SPEC §5: uniform fake quantization in PyTorch — the primitives QAT and PTQ build on.

Mirrors :mod:`repspec.reference.quant` operation for operation, so that in float64
every result is **bit-identical** to the reference (same divisions, same rounding,
same order of operations):

* **weights** — symmetric, narrow range, per tensor or per output channel (dim 0)::

      qmax = 2^(b−1) − 1,  scale = max|w| / qmax,  q = clamp(round(w / scale), −qmax, qmax),  ŵ = q·scale

* **activations** — asymmetric, per tensor::

      lo' = min(lo, 0), hi' = max(hi, 0), qmax = 2^b − 1
      scale = (hi' − lo') / qmax,  zp = clamp(round(−lo'/scale), 0, qmax)
      q = clamp(round(x / scale) + zp, 0, qmax),  x̂ = (q − zp)·scale

Rounding is half to even (``torch.round``, like ``np.rint``). The quotient is
``x / scale`` — *not* ``x * (1/scale)`` as PyTorch's own fake-quant kernels compute,
which can differ by one ulp and flip a rounding decision next to a ``.5`` tie.

Zero range *[repspec]*: ``scale == 0`` represents only the value 0; every input maps
to the code ``zp`` (0 for weights), ``x̂ = 0``, and nothing is divided by 0. A
computed scale (:func:`weight_scale`, :func:`activation_qparams`) below float32's
smallest normal number, ``MIN_SCALE = 2^-126``, is set to 0 — in every dtype, as
the reference does (docs/05-quantization.md, "Scales below float32's smallest normal").

Straight-through estimators (autograd):

* weights: the gradient passes **unchanged**. The scale is recomputed from ``max|w|``
  of the very tensor being quantized, so every element is inside the representable
  range by construction; the test is deliberately not evaluated in floating point
  (``(max|w|/qmax)·qmax`` can round one ulp below ``max|w|``), exactly like
  :meth:`repspec.reference.qat.UniformWeightQuantizer.backward`. No gradient flows
  into the scale.
* activations: gradient 1 where the **input value** lies in the representable range
  ``[(0 − zp)·scale, (qmax − zp)·scale]`` (boundaries included), 0 elsewhere — as
  :func:`repspec.reference.quant.fake_quantize_backward`. (``torch.fake_quantize_*``
  masks on the rounded code instead, which also passes gradients up to half a step
  outside the range.)

Validation: bit widths are integers in 1..16 (weights need ``>= 2``); tensors must be
floating point, non-empty and finite. Errors are ``TypeError``/``ValueError`` naming the
argument. The finiteness checks synchronize with the device once per call; pass
``validate=False`` to skip them (NaN/Inf then propagate silently, as in plain PyTorch).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

# MIN_SCALE, *[repspec]* the smallest nonzero computed scale (float32's smallest normal number)
from repspec.core.vocabulary import ACTIVATION_OBSERVERS, MIN_SCALE

from .._validation import check_bool

__all__ = [
    "weight_qmax",
    "activation_qmax",
    "weight_scale",
    "fake_quantize_weight",
    "activation_qparams",
    "activation_range",
    "fake_quantize_activation",
    "quantize_weight_codes",
    "quantize_activation_codes",
    "dequantize",
    "ActivationFakeQuant",
    "OBSERVERS",
    "check_bits",
    "MIN_SCALE",
    "state_size",
]

#: observers of :class:`ActivationFakeQuant`
OBSERVERS = ACTIVATION_OBSERVERS


# ------------------------------------------------------------------------ validation


def check_bits(bits, name: str = "bits", *, min_value: int = 1) -> int:
    """Bit widths are integers in ``min_value..16`` (SPEC §5); returns a Python int."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"{name} must be an integer in {min_value}..16, got {type(bits).__name__}")
    bits = int(bits)
    if not min_value <= bits <= 16:
        extra = " (symmetric narrow-range weights need bits >= 2: bits=1 gives qmax=0)" if min_value == 2 else ""
        raise ValueError(f"{name} must be in {min_value}..16{extra}, got {bits}")
    return bits


def _check_tensor(x, name: str, *, validate: bool = True, min_ndim: int = 0) -> Tensor:
    """A non-empty floating-point tensor (finite when ``validate``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if validate and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must contain only finite values (found NaN or Inf)")
    return x


def _as_tensor(value, name: str, *, like: Tensor | None = None, dtype=None) -> Tensor:
    """A real scalar or a real tensor as a tensor (floats → float64, on ``like``'s device)."""
    device = like.device if like is not None else None
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
        return value.to(device=device) if device is not None else value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or a tensor, got {type(value).__name__}")
    if dtype is None:
        dtype = torch.int64 if isinstance(value, numbers.Integral) else torch.float64
    return torch.tensor(value, dtype=dtype, device=device)


def _per_dim0(v: Tensor, ndim: int) -> Tensor:
    """Broadcast a scalar or ``(O,)`` tensor along dim 0 of an ``ndim``-d tensor (SPEC §0)."""
    return v if v.ndim == 0 else v.reshape((-1,) + (1,) * (ndim - 1))


def _check_scale(scale, name: str, x: Tensor, *, per_channel_ok: bool, validate: bool = True) -> Tensor:
    """A finite scale ``>= 0`` (scalar, or ``(x.shape[0],)`` when ``per_channel_ok``), on ``x``'s device."""
    s = _as_tensor(scale, name, like=x, dtype=torch.float64)
    if not s.is_floating_point():
        s = s.to(torch.float64)
    if s.ndim == 1 and per_channel_ok and x.ndim >= 1 and s.shape[0] == x.shape[0]:
        pass
    elif s.ndim != 0:
        want = f"a scalar or shape ({x.shape[0]},)" if (per_channel_ok and x.ndim >= 1) else "a scalar"
        raise ValueError(f"{name} must be {want}, got shape {tuple(s.shape)}")
    if validate and not bool((torch.isfinite(s) & (s >= 0)).all()):
        raise ValueError(f"{name} must be finite and >= 0")
    return s


def _check_zero_point(zero_point, qmax: int, x: Tensor, *, validate: bool = True) -> Tensor:
    if not isinstance(zero_point, Tensor) and (isinstance(zero_point, bool)
                                               or not isinstance(zero_point, numbers.Integral)):
        raise TypeError(f"zero_point must be an integer (or a 0-d tensor), got {type(zero_point).__name__}")
    zp = _as_tensor(zero_point, "zero_point", like=x, dtype=torch.int64)
    if zp.ndim != 0:
        raise ValueError(f"zero_point must be a scalar, got shape {tuple(zp.shape)}")
    if zp.is_floating_point():
        if validate and not bool(zp == torch.round(zp)):
            raise ValueError(f"zero_point must be an integer, got {zp.item()}")
    if validate and not bool((zp >= 0) & (zp <= qmax)):
        raise ValueError(f"zero_point must be in 0..{qmax}, got {zp.item()}")
    return zp


def _divide_or_zero(x: Tensor, scale: Tensor) -> Tensor:
    """``x / scale`` where ``scale > 0``, 0 where ``scale == 0`` (never divides by 0)."""
    pos = scale > 0
    return torch.where(pos, x / torch.where(pos, scale, torch.ones_like(scale)), torch.zeros_like(x))


# --------------------------------------------------------------------------- weights


def weight_qmax(bits) -> int:
    """``2^(b−1) − 1`` (SPEC §5 symmetric narrow range); ``bits`` in 2..16."""
    return 2 ** (check_bits(bits, min_value=2) - 1) - 1


def activation_qmax(bits) -> int:
    """``2^b − 1`` (SPEC §5 asymmetric activations); ``bits`` in 1..16."""
    return 2 ** check_bits(bits) - 1


def weight_scale(w: Tensor, bits: int, per_channel: bool = False, *, validate: bool = True) -> Tensor:
    """SPEC §5: symmetric weight scale ``max|w| / (2^(b−1) − 1)``.

    Per tensor: a 0-d tensor; ``per_channel=True``: one scale per output channel
    (dim 0), shape ``(O,)``. All-zero tensor/channel, or ``max|w|/qmax < MIN_SCALE =
    2^-126`` → scale 0 (the zero-range rule). Same dtype and device
    as ``w``; no gradient (the scale is a constant of the STE). Equals
    :func:`repspec.reference.quant.weight_qparams` bit for bit in float64.
    """
    qmax = weight_qmax(bits)
    check_bool(per_channel, "per_channel")
    w = _check_tensor(w, "w", validate=validate, min_ndim=1 if per_channel else 0)
    a = w.detach().abs()
    amax = a.reshape(a.shape[0], -1).amax(dim=1) if per_channel else a.amax()
    return _zero_below_min_scale(amax / qmax)


def _zero_below_min_scale(scale: Tensor) -> Tensor:
    """The zero-range rule: a computed scale below ``MIN_SCALE = 2^-126`` becomes 0."""
    return torch.where(scale < MIN_SCALE, torch.zeros_like(scale), scale)


def _weight_codes(w: Tensor, scale: Tensor, qmax: int) -> Tensor:
    return torch.clamp(torch.round(_divide_or_zero(w, _per_dim0(scale, w.ndim))), -qmax, qmax)


class _WeightFakeQuant(torch.autograd.Function):
    """ŵ = q·scale; backward: the gradient unchanged (see the module docstring)."""

    @staticmethod
    def forward(ctx, w, scale, qmax):
        return _weight_codes(w, scale, qmax) * _per_dim0(scale, w.ndim)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def fake_quantize_weight(w: Tensor, bits: int, per_channel: bool = False, *, validate: bool = True) -> Tensor:
    """SPEC §5: ``ŵ = clamp(round(w/s), −qmax, qmax)·s`` with ``s = weight_scale(w, bits, per_channel)``.

    Autograd: straight-through, ``∂L/∂w = ∂L/∂ŵ`` unchanged (every element is inside
    the dynamic range; no floating-point boundary test — reference
    ``qat.UniformWeightQuantizer.backward``). Bit-exact with
    :func:`repspec.reference.quant.fake_quantize_weight` in float64.
    """
    scale = weight_scale(w, bits, per_channel, validate=validate)
    return _WeightFakeQuant.apply(w, scale, weight_qmax(bits))


def quantize_weight_codes(w: Tensor, scale, bits: int, *, validate: bool = True) -> Tensor:
    """SPEC §5: integer codes ``clamp(round(w/scale), −qmax, qmax)`` as ``int64`` (0 where scale is 0).

    ``scale``: a scalar or an ``(O,)`` tensor (per output channel, broadcast along dim 0).
    Equals :func:`repspec.reference.quant.quantize_weight`.
    """
    qmax = weight_qmax(bits)
    w = _check_tensor(w, "w", validate=validate)
    s = _check_scale(scale, "scale", w, per_channel_ok=True, validate=validate).to(w.dtype)
    return _weight_codes(w.detach(), s, qmax).to(torch.int64)


def dequantize(q: Tensor, scale, zp=0) -> Tensor:
    """SPEC §5: ``x̂ = (q − zp)·scale`` (``scale`` scalar or ``(O,)`` along dim 0).

    The result has ``scale``'s dtype (float64 for a Python float), as
    :func:`repspec.reference.quant.dequantize`; weights use ``zp = 0``.
    """
    if not isinstance(q, Tensor):
        raise TypeError(f"q must be a torch.Tensor of integer codes, got {type(q).__name__}")
    if q.is_floating_point():
        if not bool((q == torch.round(q)).all()):
            raise ValueError("q must hold integer codes")
        q = q.to(torch.int64)
    elif q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"q must be a tensor of integer codes, got dtype {q.dtype}")
    s = _check_scale(scale, "scale", q, per_channel_ok=True)
    if not isinstance(zp, Tensor) and (isinstance(zp, bool) or not isinstance(zp, numbers.Integral)):
        raise TypeError(f"zp must be an integer (or a 0-d integer tensor), got {type(zp).__name__}")
    z = _as_tensor(zp, "zp", like=q, dtype=torch.int64)
    if z.is_floating_point() or z.ndim != 0:
        raise TypeError("zp must be an integer scalar (or a 0-d integer tensor)")
    return (q.to(torch.int64) - z).to(s.dtype) * _per_dim0(s, q.ndim)


# ----------------------------------------------------------------------- activations


def activation_qparams(lo, hi, bits: int, *, validate: bool = True) -> tuple[Tensor, Tensor]:
    """SPEC §5: asymmetric ``(scale, zero_point)`` for the calibrated range ``[lo, hi]``.

    ``lo' = min(lo, 0)``, ``hi' = max(hi, 0)``, ``scale = (hi' − lo')/(2^b − 1)``,
    ``zp = clamp(round(−lo'/scale), 0, 2^b − 1)``; a zero range (scale 0, or below
    ``MIN_SCALE = 2^-126``, float32's smallest normal) gives ``(0, 0)``. The clamp is
    reachable only in dtypes coarser than float32 (bfloat16, float16).
    ``lo, hi``: Python numbers (computed in float64) or 0-d tensors (their dtype and
    device). Returns ``(scale, zp)`` as 0-d tensors, ``zp`` ``int64``. Equals
    :func:`repspec.reference.quant.activation_qparams` in float64.

    ``validate`` checks ``lo, hi`` finite, ``lo <= hi`` and a finite width (one
    device sync); with ``validate=False`` nothing synchronizes.
    """
    qmax = activation_qmax(bits)
    lo_t = _as_tensor(lo, "lo", dtype=torch.float64)
    hi_t = _as_tensor(hi, "hi", like=lo_t if isinstance(lo, Tensor) else None, dtype=torch.float64)
    if not isinstance(lo, Tensor) and isinstance(hi, Tensor):
        lo_t = lo_t.to(hi_t.device)
    for v, name in ((lo_t, "lo"), (hi_t, "hi")):
        if v.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(v.shape)}")
    dtype = torch.promote_types(lo_t.dtype, hi_t.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    lo_t, hi_t = lo_t.to(dtype), hi_t.to(dtype)
    if validate:
        lo_f, hi_f = float(lo_t), float(hi_t)
        if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
            raise ValueError(f"lo and hi must be finite, got lo={lo_f}, hi={hi_f}")
        if lo_f > hi_f:
            raise ValueError(f"lo must be <= hi, got lo={lo_f}, hi={hi_f}")
    zero = torch.zeros((), dtype=dtype, device=lo_t.device)
    lo_t, hi_t = torch.minimum(lo_t, zero), torch.maximum(hi_t, zero)
    width = hi_t - lo_t
    if validate and not bool(torch.isfinite(width)):
        raise ValueError(f"hi - lo overflows {dtype} (lo={float(lo_t)}, hi={float(hi_t)})")
    scale = _zero_below_min_scale(width / qmax)
    zp = torch.clamp(torch.round(_divide_or_zero(-lo_t, scale)), 0, qmax)
    zp = torch.where(scale > 0, zp, zero).to(torch.int64)
    return scale, zp


def activation_range(scale, zero_point, bits: int) -> tuple[Tensor, Tensor]:
    """SPEC §5: representable range ``((0 − zp)·scale, (qmax − zp)·scale)`` — the dequantized extreme codes."""
    qmax = activation_qmax(bits)
    s = _as_tensor(scale, "scale", dtype=torch.float64)
    z = _as_tensor(zero_point, "zero_point", like=s, dtype=torch.int64)
    return (0 - z).to(s.dtype) * s, (qmax - z).to(s.dtype) * s


def _activation_codes(x: Tensor, scale: Tensor, zp: Tensor, qmax: int) -> Tensor:
    return torch.clamp(torch.round(_divide_or_zero(x, scale)) + zp.to(x.dtype), 0, qmax)


class _ActivationFakeQuant(torch.autograd.Function):
    """x̂ = (q − zp)·scale; backward: gradient where lo_repr <= x <= hi_repr (on the input value)."""

    @staticmethod
    def forward(ctx, x, scale, zp, qmax):
        q = _activation_codes(x, scale, zp, qmax)
        zpf = zp.to(x.dtype)
        lo_r = (0 - zp).to(x.dtype) * scale
        hi_r = (qmax - zp).to(x.dtype) * scale
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward((x >= lo_r) & (x <= hi_r))
        return (q - zpf) * scale

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, torch.zeros_like(grad)), None, None, None


def _prepare_activation(x, scale, zero_point, bits, validate):
    qmax = activation_qmax(bits)
    x = _check_tensor(x, "x", validate=validate)
    s = _check_scale(scale, "scale", x, per_channel_ok=False, validate=validate).to(x.dtype)
    zp = _check_zero_point(zero_point, qmax, x, validate=validate)
    return x, s, zp.to(torch.int64), qmax


def fake_quantize_activation(x: Tensor, scale, zero_point, bits: int, *, validate: bool = True) -> Tensor:
    """SPEC §5: ``x̂ = (clamp(round(x/scale) + zp, 0, qmax) − zp)·scale``, ``qmax = 2^b − 1``.

    Autograd (STE): ``∂L/∂x = ∂L/∂x̂`` where ``(0 − zp)·scale <= x <= (qmax − zp)·scale``
    (on the input value, boundaries included), 0 elsewhere — the reference
    :func:`~repspec.reference.quant.fake_quantize_backward`. ``scale`` is cast to
    ``x``'s dtype; bit-exact with :func:`repspec.reference.quant.fake_quantize_activation`
    in float64. No gradient flows into ``scale`` or ``zero_point``.
    """
    x, s, zp, qmax = _prepare_activation(x, scale, zero_point, bits, validate)
    return _ActivationFakeQuant.apply(x, s.detach(), zp, qmax)


def quantize_activation_codes(x: Tensor, scale, zero_point, bits: int, *, validate: bool = True) -> Tensor:
    """SPEC §5: codes ``clamp(round(x/scale) + zp, 0, 2^b − 1)`` as ``int64`` (``zp`` where scale is 0)."""
    x, s, zp, qmax = _prepare_activation(x, scale, zero_point, bits, validate)
    return _activation_codes(x.detach(), s, zp, qmax).to(torch.int64)


# ------------------------------------------------------------------- observer module


class ActivationFakeQuant(nn.Module):
    """SPEC §5: per-tensor asymmetric activation fake quantization with a range observer.

    ``ActivationFakeQuant(bits, observer='moving_average', momentum=0.01)``.

    Buffers (saved in the state dict): ``lo``, ``hi`` (floating, follow ``.to(dtype)``)
    and ``initialized`` (``int64`` 0/1), as the state of
    :class:`repspec.reference.qat.ActivationQuantizer`.

    - training: observe the batch, then fake-quantize with the updated range.
      ``'moving_average'``: the first batch initializes ``lo = min x, hi = max x``;
      later batches ``lo ← (1 − m)·lo + m·min x`` (same for ``hi``) — identical to the
      reference ``ActivationQuantizer`` and ``calibrate.moving_average_minmax``.
      ``'minmax'``: running ``lo ← min(lo, min x)``, ``hi ← max(hi, max x)``
      (``calibrate.minmax`` over all batches seen).
    - eval: the frozen range; an uninitialized module raises ``ValueError``.
    - :meth:`set_range` seeds the range (e.g. from PTQ calibration).

    Inputs are validated (floating, non-empty, finite) before any state changes;
    ``validate=False`` skips the checks (no device synchronization).
    """

    def __init__(self, bits: int, observer: str = "moving_average", momentum: float = 0.01, *,
                 validate: bool = True):
        super().__init__()
        self.bits = check_bits(bits)
        if not isinstance(observer, str):
            raise TypeError(f"observer must be one of {OBSERVERS}, got {type(observer).__name__}")
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {observer!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
            raise TypeError(f"momentum must be a real number in [0, 1], got {type(momentum).__name__}")
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:  # also refuses NaN
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.observer = observer
        self.momentum = momentum
        self.validate = check_bool(validate, "validate")
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.int64))

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def extra_repr(self) -> str:
        return f"bits={self.bits}, observer={self.observer!r}, momentum={self.momentum}"

    @torch.no_grad()
    def set_range(self, lo, hi) -> None:
        """Set (and mark initialized) the range ``[lo, hi]`` — validated like :func:`activation_qparams`."""
        activation_qparams(lo, hi, self.bits)
        self.lo.fill_(float(lo))
        self.hi.fill_(float(hi))
        self.initialized.fill_(1)

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Update the range from one batch (what a training forward does before quantizing)."""
        x = _check_tensor(x, "x", validate=self.validate)
        bmin, bmax = torch.aminmax(x.detach())
        bmin, bmax = bmin.to(self.lo.dtype), bmax.to(self.hi.dtype)
        init = self.initialized.bool()
        if self.observer == "moving_average":
            m = self.momentum
            lo = (1.0 - m) * self.lo + m * bmin
            hi = (1.0 - m) * self.hi + m * bmax
        else:
            lo, hi = torch.minimum(self.lo, bmin), torch.maximum(self.hi, bmax)
        self.lo.copy_(torch.where(init, lo, bmin))
        self.hi.copy_(torch.where(init, hi, bmax))
        self.initialized.fill_(1)

    def qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` of the current range (:func:`activation_qparams`)."""
        return activation_qparams(self.lo, self.hi, self.bits, validate=self.validate)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.observe(x)
        else:
            _check_tensor(x, "x", validate=self.validate)
            if self.validate and int(self.initialized) == 0:
                raise ValueError("activation range is not initialized: run a training forward, "
                                 "calibrate, or call set_range(lo, hi) first")
        scale, zp = self.qparams()
        return fake_quantize_activation(x, scale, zp, self.bits, validate=False)


# --------------------------------------------------------------------------- state size

def state_size(kernels: Sequence[Tensor] | Mapping[str, Tensor]) -> int:
    """SPEC §5: number of distinct weight values summed over the given tensors (one per layer).

    Compared with ``==`` (``-0.0`` and ``0.0`` count once); NaN/Inf are refused
    (= :func:`repspec.reference.analysis.state_size`).
    """
    if not isinstance(kernels, (Mapping, list, tuple)):
        raise TypeError(f"kernels must be a list/tuple or mapping of tensors, got {type(kernels).__name__}")
    keyed = kernels.items() if isinstance(kernels, Mapping) else enumerate(kernels)
    items = [(f"kernels[{k!r}]" if isinstance(kernels, Mapping) else f"kernels[{k}]", v) for k, v in keyed]
    if not items:
        raise ValueError("kernels must contain at least one tensor")
    total = 0
    for name, v in items:
        if not isinstance(v, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        if v.numel() == 0:
            raise ValueError(f"{name} must not be empty")
        v = v.detach()
        if v.is_floating_point():
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name} must contain only finite values (found NaN or Inf)")
            v = v + 0.0  # -0.0 + 0.0 == +0.0: one zero
        total += int(torch.unique(v).numel())
    return total
