"""SPEC §3: the optimizers: plain SGD, RepOpt-SGD, AdamW and the masked (RepOpt) AdamW.

Each rule is a pure step function on one parameter (``*_step``) plus a class that
implements the :class:`repspec.reference.network.Optimizer` protocol over a
``{name: ndarray}`` dict. Optimizer state uses PyTorch's per-parameter keys
(``momentum_buffer``; ``step``, ``exp_avg``, ``exp_avg_sq``) so it can be compared
with ``torch.optim`` state key by key. Nothing is mutated; new arrays are returned.

The SGD step, RepOpt-SGD and the official weight-decay rule are written in
:mod:`repspec.reference.repopt_sgd` (with the mask and ``W'_0``) and re-exported here.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ._checks import (ADAMW_MASK_PLACEMENTS, adamw_step_args, as_float_array, check_adamw_hparams, check_choice,
                      check_nonneg_float, check_sgd_hparams, checked)
from .repopt_sgd import official_weight_decay, repopt_sgd_step, sgd_step

__all__ = [
    "sgd_step",
    "repopt_sgd_step",
    "adamw_step",
    "SGD",
    "AdamW",
    "ADAMW_MASK_PLACEMENTS",
    "official_weight_decay",
]

Arrays = dict[str, np.ndarray]


# ---------------------------------------------------------------------------- AdamW


@checked(adamw_step_args)
def adamw_step(param, grad, state: Mapping[str, Any] | None = None, *, lr: float = 1e-3,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
               grad_mult_mask=None, mask_placement: str = "grad_and_update"):
    """One AdamW step matching ``torch.optim.AdamW`` (amsgrad off), optionally masked (official RepOpt AdamW).

    ``g ← M ⊙ g`` (if a mask is given) → ``t ← t + 1`` → ``W ← W − lr·λ·W`` (decoupled) →
    ``m ← β1·m + (1−β1)·g`` → ``v ← β2·v + (1−β2)·g²`` →
    ``W ← W − (lr/(1−β1^t)) · [M ⊙] m / (sqrt(v)/sqrt(1−β2^t) + eps)``
    (the ``[M ⊙]`` only for ``mask_placement='grad_and_update'``, the official code).

    ``state`` is ``{}``/None before the first step, else ``{"step": float, "exp_avg",
    "exp_avg_sq"}`` (torch's keys). Returns ``(new_param, new_state)``.

    >>> w, s = adamw_step(np.array([1.0]), np.array([3.0]), lr=0.1, weight_decay=0.0)
    >>> w.round(6), s["step"]
    (array([0.9]), 1.0)
    """
    mask, (b1, b2) = grad_mult_mask, betas
    g = grad if mask is None else mask * grad
    t = state["step"] + 1.0
    param = param * (1.0 - lr * weight_decay)
    m = b1 * state["exp_avg"] + (1.0 - b1) * g
    v = b2 * state["exp_avg_sq"] + (1.0 - b2) * g * g
    step_size = lr / (1.0 - b1 ** t)
    denom = np.sqrt(v) / math.sqrt(1.0 - b2 ** t) + eps
    numer = m * mask if (mask is not None and mask_placement == "grad_and_update") else m
    return param - step_size * numer / denom, {"step": t, "exp_avg": m, "exp_avg_sq": v}


# ------------------------------------------------------------- Optimizer classes


def _check_per_name(value, name: str):
    """A float, or a ``{param name: float}`` mapping (absent names get 0)."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{name} keys must be parameter names (str), got {k!r}")
            out[k] = check_nonneg_float(v, f"{name}[{k!r}]")
        return out
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float or a mapping name -> float, got {type(value).__name__}")
    return check_nonneg_float(value, name)


def _check_masks(masks) -> dict[str, np.ndarray] | None:
    if masks is None:
        return None
    if not isinstance(masks, Mapping):
        raise TypeError(f"grad_mult_masks must be a mapping name -> array or None, got {type(masks).__name__}")
    out = {}
    for k, m in masks.items():
        arr = as_float_array(m, f"grad_mult_masks[{k!r}]").copy()
        arr.setflags(write=False)
        out[k] = arr
    return out


def _check_step_inputs(params, grads, state, per_name: dict[str, Mapping]) -> None:
    for what, tree in (("params", params), ("grads", grads), ("state", state)):
        if not isinstance(tree, Mapping):
            raise TypeError(f"{what} must be a mapping name -> value, got {type(tree).__name__}")
    missing = [k for k in params if k not in grads]
    if missing:
        raise ValueError(f"grads is missing entries for {missing}")
    for label, mapping in per_name.items():
        unknown = sorted(set(mapping) - set(params))
        if unknown:
            raise ValueError(f"{label} names parameters that are not being optimized: {unknown}")


def _decay_for(weight_decay, name: str) -> float:
    return weight_decay.get(name, 0.0) if isinstance(weight_decay, dict) else weight_decay


@dataclass(frozen=True, eq=False)
class SGD:
    """``torch.optim.SGD`` (and, with ``grad_mult_masks``, official RepOptimizerSGD) over a name → array dict.

    ``weight_decay`` is a float for every parameter or a ``{name: λ}`` mapping (names
    not in it get 0; see :func:`official_weight_decay`). ``grad_mult_masks`` maps the
    names of the masked parameters (target conv weights) to their ``M``. State per
    name: ``{}`` then ``{"momentum_buffer": buf}`` once momentum created one.
    """

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float | Mapping[str, float] = 0.0
    grad_mult_masks: Mapping[str, np.ndarray] | None = field(default=None)

    def __post_init__(self):
        check_sgd_hparams(self.lr, self.momentum, self.dampening, self.nesterov, 0.0)
        object.__setattr__(self, "weight_decay", _check_per_name(self.weight_decay, "weight_decay"))
        object.__setattr__(self, "grad_mult_masks", _check_masks(self.grad_mult_masks))

    def init_state(self, params: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
        return {k: {} for k in params}

    def step(self, params, grads, state):
        masks = self.grad_mult_masks or {}
        decays = self.weight_decay if isinstance(self.weight_decay, dict) else {}
        _check_step_inputs(params, grads, state, {"grad_mult_masks": masks, "weight_decay": decays})
        new_params: Arrays = {}
        new_state: dict[str, dict[str, Any]] = {}
        for name, p in params.items():
            s = dict(state.get(name, {}))
            w, buf = sgd_step(p, grads[name], s.get("momentum_buffer"), lr=self.lr, momentum=self.momentum,
                              dampening=self.dampening, nesterov=self.nesterov,
                              weight_decay=_decay_for(self.weight_decay, name), grad_mult_mask=masks.get(name))
            if buf is not None:
                s["momentum_buffer"] = buf
            new_params[name], new_state[name] = w, s
        return new_params, new_state


@dataclass(frozen=True, eq=False)
class AdamW:
    """``torch.optim.AdamW`` (amsgrad off) and the official masked RepOptimizerAdamW over a name → array dict.

    ``weight_decay`` as in :class:`SGD`; ``grad_mult_masks`` (exponent-1 masks,
    :func:`repspec.reference.repopt.grad_mult_mask` with ``exponent=1``) and
    ``mask_placement`` as in :func:`adamw_step`. State per name: torch's ``step``,
    ``exp_avg``, ``exp_avg_sq`` (``{}`` before the first step).
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float | Mapping[str, float] = 1e-2
    grad_mult_masks: Mapping[str, np.ndarray] | None = field(default=None)
    mask_placement: str = "grad_and_update"

    def __post_init__(self):
        check_adamw_hparams(self.lr, self.betas, self.eps, 0.0)
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))
        check_choice(self.mask_placement, "mask_placement", ADAMW_MASK_PLACEMENTS)
        object.__setattr__(self, "weight_decay", _check_per_name(self.weight_decay, "weight_decay"))
        object.__setattr__(self, "grad_mult_masks", _check_masks(self.grad_mult_masks))

    def init_state(self, params: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
        return {k: {} for k in params}

    def step(self, params, grads, state):
        masks = self.grad_mult_masks or {}
        decays = self.weight_decay if isinstance(self.weight_decay, dict) else {}
        _check_step_inputs(params, grads, state, {"grad_mult_masks": masks, "weight_decay": decays})
        new_params: Arrays = {}
        new_state: dict[str, dict[str, Any]] = {}
        for name, p in params.items():
            new_params[name], new_state[name] = adamw_step(
                p, grads[name], state.get(name), lr=self.lr, betas=self.betas, eps=self.eps,
                weight_decay=_decay_for(self.weight_decay, name), grad_mult_mask=masks.get(name),
                mask_placement=self.mask_placement)
        return new_params, new_state
