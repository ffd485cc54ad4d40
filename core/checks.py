"""The scalar argument checks both implementations share (standard library only).

Each check takes the value and the argument's name, returns the value converted (a
Python ``int``/``float``/``bool``/``str``), and otherwise raises ``TypeError`` (wrong
kind) or ``ValueError`` (out of range) naming the argument and what it must be. Array
and tensor checks live with their implementation (``reference/_checks.py``,
``torch_impl/_validation.py``), which build on these.
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "check_int",
    "check_real",
    "check_finite",
    "check_positive_float",
    "check_nonneg_float",
    "check_probability",
    "check_bool",
    "check_choice",
    "check_sgd_hparams",
    "check_adamw_hparams",
]


def check_int(value, name: str, min_value: int | None = None, max_value: int | None = None) -> int:
    """``value`` as a Python int in ``[min_value, max_value]`` (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name} must be <= {max_value}, got {value}")
    return value


def check_real(value, name: str) -> float:
    """A real number (not ``bool``, not NaN; ±inf allowed) as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def check_finite(value, name: str) -> float:
    """A finite real number as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_positive_float(value, name: str, *, allow_inf: bool = False) -> float:
    """A real number in ``(0, inf)`` (``(0, inf]`` with ``allow_inf``)."""
    value = check_real(value, name)
    if value <= 0 or (math.isinf(value) and not allow_inf):
        rng = "(0, inf]" if allow_inf else "(0, inf)"
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return value


def check_nonneg_float(value, name: str) -> float:
    """A finite real number ``>= 0``."""
    value = check_real(value, name)
    if value < 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_probability(value, name: str, *, closed_right: bool = True) -> float:
    """A real number in ``[0, 1]`` (``[0, 1)`` without ``closed_right``)."""
    value = check_real(value, name)
    ok = 0 <= value <= 1 if closed_right else 0 <= value < 1
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if closed_right else ')'}, got {value}")
    return value


def check_bool(value, name: str) -> bool:
    """A flag: Python ``bool`` or NumPy's bool scalar (``0``/``1`` and other objects are refused)."""
    # NumPy's bool scalar is no subclass of bool; it is recognised by its type, without importing NumPy
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    if not (isinstance(value, bool) or numpy_bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    """A named option: one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_sgd_hparams(lr, momentum, dampening, nesterov, weight_decay) -> dict:
    """SGD's domain (SPEC §3.repopt-sgd-step): ``lr, μ, λ ≥ 0`` finite, ``τ ∈ [0, 1]``, nesterov needs
    ``μ > 0, τ = 0``."""
    hp = dict(lr=check_nonneg_float(lr, "lr"), momentum=check_nonneg_float(momentum, "momentum"),
              dampening=check_probability(dampening, "dampening"), nesterov=check_bool(nesterov, "nesterov"),
              weight_decay=check_nonneg_float(weight_decay, "weight_decay"))
    if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
        raise ValueError(f"nesterov requires momentum > 0 and dampening == 0, got momentum={hp['momentum']}, "
                         f"dampening={hp['dampening']}")
    return hp


def check_adamw_hparams(lr, betas, eps, weight_decay) -> dict:
    """AdamW's domain (SPEC §3.adamw): ``lr, eps, λ ≥ 0`` finite, ``betas`` a pair in ``[0, 1)``."""
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return dict(lr=check_nonneg_float(lr, "lr"),
                betas=(check_probability(betas[0], "betas[0]", closed_right=False),
                       check_probability(betas[1], "betas[1]", closed_right=False)),
                eps=check_nonneg_float(eps, "eps"), weight_decay=check_nonneg_float(weight_decay, "weight_decay"))
