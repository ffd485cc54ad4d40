"""Input validation shared by every reference function.

Every public reference function validates its arguments *before* computing or
returning anything, and raises ``TypeError`` (wrong kind of object) or
``ValueError`` (right kind, wrong shape/range/value) naming the argument and
what was expected. Nothing is silently clipped, cast from complex, or broadcast.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "as_float_array",
    "check_bits",
    "check_int",
    "check_positive_float",
    "check_nonneg_float",
    "check_same_shape",
    "check_probability",
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


def check_int(value, name: str, *, min_value: int | None = None, max_value: int | None = None) -> int:
    """Return ``value`` as a Python int in ``[min_value, max_value]`` or raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name} must be <= {max_value}, got {value}")
    return value


def check_bits(bits, name: str = "bits") -> int:
    """Bit widths are integers in 1..16 (SPEC §5)."""
    return check_int(bits, name, min_value=1, max_value=16)


def _check_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if np.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def check_positive_float(value, name: str, *, allow_inf: bool = False) -> float:
    value = _check_real(value, name)
    if value <= 0 or (np.isinf(value) and not allow_inf):
        rng = "(0, inf]" if allow_inf else "(0, inf)"
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return value


def check_nonneg_float(value, name: str) -> float:
    value = _check_real(value, name)
    if value < 0 or np.isinf(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_probability(value, name: str, *, closed_right: bool = True) -> float:
    value = _check_real(value, name)
    ok = 0 <= value <= 1 if closed_right else 0 <= value < 1
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if closed_right else ')'}, got {value}")
    return value


def check_same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} must have the same shape as {b_name} {b.shape}, got {a.shape}")
