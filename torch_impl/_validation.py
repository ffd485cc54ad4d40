"""The argument checks of the torch implementation, in one module.

The scalar checks are the shared ones of :mod:`repspec.core.checks` (the reference uses
the same); this module adds what only tensors, dtypes and the data pipeline need. Every
check raises ``TypeError``/``ValueError`` naming the argument before any state changes.
"""

from __future__ import annotations

import numbers

import torch

from repspec.core.checks import (check_adamw_hparams, check_bool, check_choice, check_finite, check_int,
                                 check_nonneg_float, check_positive_float, check_probability, check_real,
                                 check_sgd_hparams)

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
    "check_optional_bool",
    "check_seed",
    "check_fraction",
    "check_float_dtype",
    "check_size_pair",
]


def check_optional_bool(value, name: str) -> bool | None:
    """``None`` (let the implementation choose) or a bool."""
    return None if value is None else check_bool(value, name)


def check_seed(value, name: str = "seed") -> int:
    """A seed for ``torch.Generator.manual_seed`` / NumPy: an integer in ``[0, 2**63)``."""
    value = check_int(value, name, 0)
    if value >= 2**63:
        raise ValueError(f"{name} must be < 2**63, got {value}")
    return value


def check_fraction(value, name: str) -> float:
    """A real number strictly between 0 and 1 (a split fraction)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def check_float_dtype(dtype, name: str = "dtype") -> torch.dtype:
    """A floating-point ``torch.dtype``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.dtype, got {dtype!r}")
    return dtype


def check_size_pair(image_size, name: str = "image_size") -> tuple[int, int]:
    """An image size: one positive int (square) or a ``(height, width)`` pair."""
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2:
            raise ValueError(f"{name} must be an int or a (height, width) pair, got {image_size!r}")
        return check_int(image_size[0], f"{name}[0]", 1), check_int(image_size[1], f"{name}[1]", 1)
    s = check_int(image_size, name, 1)
    return s, s
