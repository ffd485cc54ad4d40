"""Input validation shared by every reference function: the one set of validators.

Every public reference function validates its arguments *before* computing or
returning anything, and raises ``TypeError`` (wrong kind of object) or
``ValueError`` (right kind, wrong shape/range/value) naming the argument and
what was expected. Nothing is silently clipped, cast from complex, or broadcast.

One rule per kind of argument, everywhere:

* arrays: real (bool/int/float) → float64; complex/object refused; finite; non-empty
  unless stated (:func:`as_float_array`, :func:`check_vector` for ``(C,)`` vectors);
* integers: ``numbers.Integral`` (NumPy integers too), never ``bool`` (:func:`check_int`);
* reals: ``numbers.Real`` (NumPy floats too), never ``bool``, never NaN (:func:`check_real`
  and the range checks built on it);
* flags: Python ``bool`` or ``np.bool_`` (returned as ``bool``), never ``0``/``1``
  (:func:`check_bool`);
* named options: a ``str`` from a fixed tuple (:func:`check_choice`).

Functions whose bodies should read as formulas take their checks from a validator
through :func:`checked`: the validator sees the bound arguments and returns them
checked and converted, and the formula runs only on validated input.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from typing import Callable, Mapping

import numpy as np

# the name tables (identity modes, OABN gradients, AdamW mask placements) are the shared vocabulary's:
# ``"grad_and_update"`` is the original ``RepOptimizerAdamW`` (``g ← M⊙g`` before the moments *and* the step
# ``M ⊙ m̂/(sqrt(v̂)+eps)``), ``"grad"`` only ``g ← M⊙g`` (Adam's normalization then cancels ``M`` up to ``eps``)
from repspec.core.checks import (check_adamw_hparams, check_bool, check_choice, check_int, check_nonneg_float,
                                 check_positive_float, check_probability, check_real, check_sgd_hparams)
from repspec.core.vocabulary import ADAMW_MASK_PLACEMENTS, IDENTITY_MODES
from repspec.core.vocabulary import OABN_GRADIENTS as GRADIENT_MODES

__all__ = [
    "checked",
    "as_float_array",
    "check_vector",
    "check_bool",
    "check_choice",
    "check_real",
    "check_bits",
    "check_conv_config",
    "check_int",
    "check_positive_float",
    "check_nonneg_float",
    "check_same_shape",
    "check_probability",
    "check_sgd_hparams",
    "check_identity_mode",
    "check_threshold",
    "check_gradient_mode",
]


def as_float_array(
    value,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    shape: tuple | None = None,
    allow_empty: bool = False,
    finite: bool = True,
) -> np.ndarray:
    """Return ``value`` as a float64 ndarray, or raise naming ``name``.

    ``shape`` entries that are ``None`` are wildcards. Integer and bool arrays are
    accepted and promoted (they are exact in float64); complex and object arrays
    are refused.
    """
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a real numeric array, got {type(value).__name__}")
    arr = np.asarray(value)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {arr.shape}")
    if shape is not None:
        if arr.ndim != len(shape) or any(
            s is not None and s != a for s, a in zip(shape, arr.shape)
        ):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values (found NaN or Inf)")
    return arr


def check_bits(bits, name: str = "bits", *, weights: bool = False) -> int:
    """Bit widths are integers in 1..16 (SPEC §5); symmetric narrow-range weights need ``>= 2``."""
    bits = check_int(bits, name, min_value=1, max_value=16)
    if weights and bits < 2:
        raise ValueError(f"{name} must be >= 2: symmetric narrow-range weights need bits >= 2 (qmax = 0 at 1), "
                         f"got {bits}")
    return bits


def check_conv_config(in_channels, out_channels, stride, groups=1) -> tuple[int, int, int, int]:
    """A conv block's shape: positive integers, ``groups`` dividing both channel counts."""
    in_channels = check_int(in_channels, "in_channels", min_value=1)
    out_channels = check_int(out_channels, "out_channels", min_value=1)
    stride = check_int(stride, "stride", min_value=1)
    groups = check_int(groups, "groups", min_value=1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels ({in_channels}) and out_channels ({out_channels})")
    return in_channels, out_channels, stride, groups


def check_same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} must have the same shape as {b_name} {b.shape}, got {a.shape}")


def check_vector(value, name: str, length: int | None = None) -> np.ndarray:
    """A 1-D float64 array, of shape ``(length,)`` when ``length`` is given."""
    arr = as_float_array(value, name, ndim=1)
    if length is not None and arr.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {arr.shape}")
    return arr


def checked(validate: Callable[..., dict]) -> Callable:
    """Decorator: validate a formula's arguments, then run the formula on them.

    ``validate`` is called with the formula's arguments bound by name (defaults
    applied) and returns them as a dict, checked and converted (it raises naming the
    bad argument). The decorated function keeps the formula's name, signature and
    docstring; the unchecked formula stays reachable as ``.formula``.
    """

    def decorate(formula: Callable) -> Callable:
        signature = inspect.signature(formula)

        @functools.wraps(formula)
        def entry(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return formula(**validate(**bound.arguments))

        entry.formula = formula
        return entry

    return decorate


# ------------------------------------------ argument validators of the formula modules
# Each ``<function>_args`` takes the bound arguments of ``<function>`` and returns them
# checked and converted; the formula is wrapped with ``@checked(<function>_args)``.


def check_identity_mode(identity, in_channels: int, out_channels: int, stride: int = 1) -> str:
    """One of :data:`IDENTITY_MODES`; an identity branch needs ``in == out`` and stride 1."""
    identity = check_choice(identity, "identity", IDENTITY_MODES)
    if identity != "none" and (in_channels != out_channels or stride != 1):
        raise ValueError(f"identity={identity!r} needs in_channels == out_channels and stride == 1, got "
                         f"in_channels={in_channels}, out_channels={out_channels}, stride={stride}; "
                         "use identity='none'")
    return identity


def csla_equivalent_kernel_args(conv_weight, conv_1x1_weight, scale_conv, scale_1x1, scale_identity):
    k3 = as_float_array(conv_weight, "conv_weight", shape=(None, None, 3, 3))
    o, i = k3.shape[:2]
    k1 = as_float_array(conv_1x1_weight, "conv_1x1_weight", shape=(o, i, 1, 1))
    if scale_identity is not None:
        scale_identity = check_vector(scale_identity, "scale_identity", o)
        if i != o:
            raise ValueError(f"scale_identity needs conv_weight with I == O, got shape {k3.shape}")
    return dict(conv_weight=k3, conv_1x1_weight=k1, scale_conv=check_vector(scale_conv, "scale_conv", o),
                scale_1x1=check_vector(scale_1x1, "scale_1x1", o), scale_identity=scale_identity)


def reinit_target_kernel_args(scale_conv, scale_1x1, scale_identity, in_channels, conv_weight, conv_1x1_weight,
                              rng, use_identity_scales):
    a3 = check_vector(scale_conv, "scale_conv")
    o, i = len(a3), check_int(in_channels, "in_channels", min_value=1)
    if scale_identity is not None:
        scale_identity = check_vector(scale_identity, "scale_identity", o)
        if i != o:
            raise ValueError(f"scale_identity needs in_channels == {o} (an identity branch), got {i}")
    if conv_weight is not None:
        conv_weight = as_float_array(conv_weight, "conv_weight", shape=(o, i, 3, 3))
    if conv_1x1_weight is not None:
        conv_1x1_weight = as_float_array(conv_1x1_weight, "conv_1x1_weight", shape=(o, i, 1, 1))
    if (conv_weight is None or conv_1x1_weight is None) and not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator when conv_weight or conv_1x1_weight is None")
    return dict(scale_conv=a3, scale_1x1=check_vector(scale_1x1, "scale_1x1", o), scale_identity=scale_identity,
                in_channels=i, conv_weight=conv_weight, conv_1x1_weight=conv_1x1_weight, rng=rng,
                use_identity_scales=check_bool(use_identity_scales, "use_identity_scales"))


def grad_mult_mask_args(scale_conv, scale_1x1, in_channels, identity, exponent):
    a3 = check_vector(scale_conv, "scale_conv")
    in_channels = check_int(in_channels, "in_channels", min_value=1)
    if isinstance(exponent, bool) or exponent not in (1, 2):
        raise ValueError(f"exponent must be 2 (SGD) or 1 (AdamW), got {exponent!r}")
    return dict(scale_conv=a3, scale_1x1=check_vector(scale_1x1, "scale_1x1", len(a3)), in_channels=in_channels,
                identity=check_identity_mode(identity, in_channels, len(a3)), exponent=int(exponent))


def sgd_step_args(param, grad, momentum_buffer, lr, momentum, dampening, nesterov, weight_decay, grad_mult_mask):
    hp = check_sgd_hparams(lr, momentum, dampening, nesterov, weight_decay)
    param = as_float_array(param, "param", allow_empty=True)
    like = dict(shape=param.shape, allow_empty=True)
    if momentum_buffer is not None:
        if hp["momentum"] == 0:
            raise ValueError("momentum_buffer must be None when momentum == 0 (torch keeps no buffer then)")
        momentum_buffer = as_float_array(momentum_buffer, "momentum_buffer", **like)
    mask = None if grad_mult_mask is None else as_float_array(grad_mult_mask, "grad_mult_mask", shape=param.shape)
    return dict(param=param, grad=as_float_array(grad, "grad", **like), momentum_buffer=momentum_buffer,
                grad_mult_mask=mask, **hp)



def check_threshold(threshold, name: str = "threshold") -> float:
    """An OABN threshold ``s``: a real number in ``(0, ∞]`` (NaN, 0 and negatives refused)."""
    return check_positive_float(threshold, name, allow_inf=True)


def check_gradient_mode(gradient, name: str = "gradient") -> str:
    """OABN's gradient option: one of :data:`GRADIENT_MODES`."""
    return check_choice(gradient, name, GRADIENT_MODES)


def _bn_input(x, gamma, running_mean, running_var, eps):
    x = as_float_array(x, "x", ndim=4)
    c = x.shape[1]
    return dict(x=x, gamma=as_float_array(gamma, "gamma", shape=(c,)), eps=check_nonneg_float(eps, "eps"),
                running_mean=as_float_array(running_mean, "running_mean", shape=(c,)),
                running_var=as_float_array(running_var, "running_var", shape=(c,)))


def _batch_statistics_defined(x: np.ndarray, eps: float, *, training: bool = True) -> None:
    n = x.shape[0] * x.shape[2] * x.shape[3]
    if training and n < 2:
        raise ValueError(f"x must hold at least 2 values per channel in training mode, got N·H·W = {n}")
    if np.any(x.var(axis=(0, 2, 3)) + eps <= 0):
        raise ValueError("batch variance + eps is 0 in some channel; use eps > 0")


def batch_norm_train_args(x, gamma, beta, running_mean, running_var, momentum, eps):
    a = _bn_input(x, gamma, running_mean, running_var, eps)
    _batch_statistics_defined(a["x"], a["eps"])
    return dict(a, beta=as_float_array(beta, "beta", shape=(a["x"].shape[1],)),
                momentum=check_probability(momentum, "momentum"))


def batch_norm_train_backward_args(dy, x, gamma, eps):
    x = as_float_array(x, "x", ndim=4)
    gamma, eps = as_float_array(gamma, "gamma", shape=(x.shape[1],)), check_nonneg_float(eps, "eps")
    dy = as_float_array(dy, "dy", shape=x.shape)
    _batch_statistics_defined(x, eps, training=False)
    return dict(dy=dy, x=x, gamma=gamma, eps=eps)


def batch_norm_eval_args(x, gamma, beta, running_mean, running_var, eps):
    a = _bn_input(x, gamma, running_mean, running_var, eps)
    return dict(a, beta=as_float_array(beta, "beta", shape=(a["x"].shape[1],)))


def batch_norm_eval_backward_args(dy, x, gamma, running_mean, running_var, eps):
    a = _bn_input(x, gamma, running_mean, running_var, eps)
    return dict(a, dy=as_float_array(dy, "dy", shape=a["x"].shape))


def oabn_train_args(x, gamma, beta, running_mean, running_var, threshold, momentum, eps):
    return dict(batch_norm_train_args(x, gamma, beta, running_mean, running_var, momentum, eps),
                threshold=check_threshold(threshold))


def oabn_train_backward_args(dy, x, gamma, threshold, eps, gradient):
    return dict(batch_norm_train_backward_args(dy, x, gamma, eps), threshold=check_threshold(threshold),
                gradient=check_gradient_mode(gradient))


def oabn_eval_args(x, gamma, beta, running_mean, running_var, threshold, eps):
    return dict(batch_norm_eval_args(x, gamma, beta, running_mean, running_var, eps),
                threshold=check_threshold(threshold))


def oabn_eval_backward_args(dy, x, gamma, running_mean, running_var, threshold, eps, gradient):
    return dict(batch_norm_eval_backward_args(dy, x, gamma, running_mean, running_var, eps),
                threshold=check_threshold(threshold), gradient=check_gradient_mode(gradient))


#: where the masked AdamW applies Grad Mult ``M``:


def adamw_step_args(param, grad, state, lr, betas, eps, weight_decay, grad_mult_mask, mask_placement):
    """``state`` comes back complete: ``{}``/None becomes step 0 with zero moments."""
    hp = check_adamw_hparams(lr, betas, eps, weight_decay)
    mask_placement = check_choice(mask_placement, "mask_placement", ADAMW_MASK_PLACEMENTS)
    param = as_float_array(param, "param", allow_empty=True)
    like = dict(shape=param.shape, allow_empty=True)
    grad = as_float_array(grad, "grad", **like)
    mask = None if grad_mult_mask is None else as_float_array(grad_mult_mask, "grad_mult_mask", shape=param.shape)
    if state is None or len(state) == 0:
        state = {"step": 0.0, "exp_avg": np.zeros_like(param), "exp_avg_sq": np.zeros_like(param)}
    else:
        if not isinstance(state, Mapping) or not {"step", "exp_avg", "exp_avg_sq"} <= set(state):
            raise ValueError("state must be empty or hold 'step', 'exp_avg' and 'exp_avg_sq'")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, numbers.Real) or not (step >= 1 and step == int(step)):
            raise ValueError(f"state['step'] must be a whole number >= 1, got {step!r}")
        state = {"step": float(step), "exp_avg": as_float_array(state["exp_avg"], "state['exp_avg']", **like),
                 "exp_avg_sq": as_float_array(state["exp_avg_sq"], "state['exp_avg_sq']", **like)}
    return dict(param=param, grad=grad, state=state, grad_mult_mask=mask, mask_placement=mask_placement, **hp)
