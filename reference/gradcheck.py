"""Central finite differences: how every analytic backward in the reference is checked.

``∂f/∂x_i ≈ (f(x + h·e_i) − f(x − h·e_i)) / (2h)``, truncation error ``O(h²)``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._checks import as_float_array, check_positive_float

__all__ = ["numerical_gradient", "directional_derivative"]


def numerical_gradient(f: Callable[[np.ndarray], float], x, *, h: float = 1e-6) -> np.ndarray:
    """Gradient of the scalar function ``f`` at ``x`` by central differences, one entry at a time."""
    x = as_float_array(x, "x", allow_empty=True)
    h = check_positive_float(h, "h")
    grad = np.zeros_like(x)
    flat = x.reshape(-1).copy()
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        f_plus = float(f(flat.reshape(x.shape).copy()))
        flat[i] = old - h
        f_minus = float(f(flat.reshape(x.shape).copy()))
        flat[i] = old
        grad.reshape(-1)[i] = (f_plus - f_minus) / (2 * h)
    return grad


def directional_derivative(f: Callable[[np.ndarray], float], x, direction, *, h: float = 1e-6) -> float:
    """``(f(x + h·v) − f(x − h·v)) / (2h)``: checks ``⟨∇f, v⟩`` with two evaluations (for large inputs)."""
    x = as_float_array(x, "x")
    direction = as_float_array(direction, "direction", shape=x.shape)
    h = check_positive_float(h, "h")
    return (float(f(x + h * direction)) - float(f(x - h * direction))) / (2 * h)
