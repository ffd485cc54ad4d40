"""SPEC §3: gradient re-parameterization — the RepOptimizer as a real ``torch.optim.Optimizer``.

``RepOptimizerSGD`` executes the official RepOptimizers SGD update in its exact order::

    d = M ⊙ g              (only for parameters that have a Grad Mult mask)
    d = d + λ·W            (weight decay, NOT multiplied by M)
    buf = d (first step) | buf = μ·buf + (1 − τ)·d
    d = d + μ·buf (nesterov) | d = buf
    W = W − lr·d

Without masks it is bit-for-bit ``torch.optim.SGD`` (same operations in the same
order, single-tensor and ``torch._foreach_*`` paths). ``fused=True`` runs the whole step in
one pass per tensor: on CPU a compiled loop (``_fused_kernels.py``) with the unfused step's
arithmetic, bit for bit; on CUDA the masked gradient handed to torch's fused kernel. The masks live in the
per-parameter optimizer state (``state[p]['grad_mult_mask']``) so that
``state_dict()`` / ``load_state_dict()`` carry them, and ``torch.load(...,
weights_only=True)`` can read the checkpoint back.

``RepOptimizerAdamW`` multiplies the gradient by a mask built with exponent 1 and then
follows ``torch.optim.AdamW`` exactly (``fused=True``: one compiled pass on CPU that differs
from that only by a correctly rounded ``sqrt``). It is only *approximately* equivalent to
training the CSLA model with AdamW (SPEC §3 "AdamW variant").

Helpers: :func:`grad_mult_mask_from_scales` (the Grad Mult formula, vectorized),
:func:`csla_equivalent_kernel` (``W' = α3·K3 + α1·pad(K1) + diag(d)·I``),
:func:`build_repoptimizer` (one mask per target conv of a RepOpt-VGG model, official
weight-decay grouping) and :func:`reinit_from_scales` (the ``W'_0`` re-initialization).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from repspec.core.vocabulary import (
    ADAMW_MASK_PLACEMENTS,
    IDENTITY_MODES,
    NESTEROV_ROUNDINGS,
    RENAMED_NESTEROV_ROUNDINGS,
)
from torch import Tensor, nn

from .._validation import (
    check_adamw_hparams,
    check_bool,
    check_choice,
    check_nonneg_float,
    check_optional_bool,
    check_sgd_hparams,
)
from ..modules.blocks import RepOptTargetBlock
from ..modules.kernels import csla_equivalent_kernel

__all__ = [
    "RepOptimizerSGD",
    "RepOptimizerAdamW",
    "grad_mult_mask_from_scales",
    "imaginary_kernels",
    "target_blocks",
    "build_grad_mult_masks",
    "build_repoptimizer",
    "weight_decay_groups",
    "reinit_from_scales",
    "IDENTITY_MODES",
    "ADAMW_MASK_PLACEMENTS",
    "NESTEROV_ROUNDINGS",
    "FUSED_DTYPES",
]


MASK_KEY = "grad_mult_mask"


# ----------------------------------------------------------------------------- validation

def _check_sgd_hparams(lr, momentum, dampening, nesterov, weight_decay, foreach) -> dict:
    """SGD's domain (the reference's, :func:`repspec.core.checks.check_sgd_hparams`) plus ``foreach``."""
    return dict(check_sgd_hparams(lr, momentum, dampening, nesterov, weight_decay),
                foreach=check_optional_bool(foreach, "foreach"))


def _check_adamw_hparams(lr, betas, eps, weight_decay, amsgrad, mask_placement="grad_and_update") -> dict:
    """AdamW's domain (the reference's) plus torch's ``amsgrad`` and the mask placement."""
    return dict(check_adamw_hparams(lr, betas, eps, weight_decay), amsgrad=check_bool(amsgrad, "amsgrad"),
                mask_placement=check_choice(mask_placement, "mask_placement", ADAMW_MASK_PLACEMENTS))


#: the parameter dtypes of ``fused=True`` per device type: the compiled CPU loops
#: (``_fused_kernels.py``, Numba: float32 and float64) and torch's CUDA fused kernels
FUSED_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}


def _check_fused(fused, foreach=None) -> bool | None:
    """``fused``: None/False (off) or True; True excludes ``foreach=True`` (two different paths)."""
    fused = check_optional_bool(fused, "fused")
    if fused and foreach:
        raise ValueError("fused=True and foreach=True are exclusive (the fused step is one pass per tensor, "
                         "foreach the multi-tensor torch._foreach_* path): pass one of them")
    return fused


def _check_fused_params(params) -> None:
    """Every parameter of a ``fused=True`` group has a device and dtype of :data:`FUSED_DTYPES`."""
    for j, p in enumerate(params):
        dtypes = FUSED_DTYPES.get("cpu" if p.is_cpu else "cuda" if p.is_cuda else p.device.type)
        if dtypes is None or p.dtype not in dtypes:
            supported = "; ".join(f"{dev}: {', '.join(str(d).replace('torch.', '') for d in ds)}"
                                  for dev, ds in FUSED_DTYPES.items())
            raise ValueError(f"fused=True does not support parameter {j} ({p.dtype} on {p.device}); "
                             f"the fused step supports {supported} (use fused=False)")


def _flatten_params(params) -> list:
    """The parameter objects in ``params`` (tensors or param-group dicts), for validation only."""
    out = []
    for i, item in enumerate(params):
        if isinstance(item, Mapping):
            if "params" not in item:
                raise ValueError(f"param group {i} has no 'params' entry")
            ps = item["params"]
            out.extend([ps] if isinstance(ps, Tensor) else list(ps))
        else:
            out.append(item)
    for p in out:
        if not isinstance(p, Tensor):
            raise TypeError(f"optimizer can only optimize Tensors, got {type(p).__name__}")
    return out


def _check_mask(p: Tensor, mask, where: str) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{where} must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(p.shape):
        raise ValueError(f"{where} must have the shape of its parameter {tuple(p.shape)}, got {tuple(mask.shape)}")
    if not mask.is_floating_point():
        raise TypeError(f"{where} must be a floating-point tensor, got dtype {mask.dtype}")
    if not bool(torch.isfinite(mask).all()):
        raise ValueError(f"{where} must contain only finite values")
    return mask.detach().to(device=p.device, dtype=p.dtype).clone()


def _check_masks(all_params: list, masks) -> list[tuple[Tensor, Tensor]]:
    if masks is None:
        return []
    if not isinstance(masks, Mapping):
        raise TypeError(f"grad_mult_masks must be a dict {{Parameter: Tensor}} or None, got {type(masks).__name__}")
    ids = {id(p) for p in all_params}
    out = []
    for k, (p, m) in enumerate(masks.items()):
        if not isinstance(p, Tensor):
            raise TypeError(f"grad_mult_masks keys must be the Parameters themselves, got {type(p).__name__} "
                            f"(key #{k})")
        if id(p) not in ids:
            raise ValueError(f"grad_mult_masks key #{k} (shape {tuple(p.shape)}) is not among the optimizer's params")
        out.append((p, _check_mask(p, m, f"grad_mult_masks[key #{k}, param shape {tuple(p.shape)}]")))
    return out


def _flat_numpy(t: Tensor):
    """A contiguous tensor's memory as a flat NumPy array (no copy), for the compiled CPU loops."""
    return t.detach().view(-1).numpy()


#: the NumPy scalar type of each CPU dtype the compiled loops take (scalars are cast to it, as torch does)
_NUMPY_SCALAR = {torch.float32: "float32", torch.float64: "float64"}


class _MaskedOptimizer(torch.optim.Optimizer):
    """Mask bookkeeping shared by the RepOptimizers (SPEC §3): masks are per-param state."""

    #: group keys that say *how* a step runs, not what it computes: kept from this optimizer on load
    _EXECUTION_KEYS: tuple[str, ...] = ("fused",)

    def _install_masks(self, checked: list[tuple[Tensor, Tensor]]) -> None:
        for p, m in checked:
            self.state[p][MASK_KEY] = m

    # -- mask accessors
    def grad_mult_mask(self, p: Tensor) -> Tensor | None:
        """The Grad Mult mask of ``p`` (SPEC §3), or None if ``p`` has none."""
        st = self.state.get(p)
        return None if st is None else st.get(MASK_KEY)

    @property
    def grad_mult_masks(self) -> dict[Tensor, Tensor]:
        """``{param: mask}`` for every parameter that has a Grad Mult mask (SPEC §3)."""
        return {p: st[MASK_KEY] for p, st in self.state.items() if MASK_KEY in st}

    def set_grad_mult_mask(self, p: Tensor, mask: Tensor | None) -> None:
        """Set (or with None, remove) the mask of parameter ``p`` (SPEC §3); validated first."""
        if not any(p is q for g in self.param_groups for q in g["params"]):
            raise ValueError(f"parameter of shape {tuple(p.shape)} is not optimized by this optimizer")
        if mask is None:
            if p in self.state:
                self.state[p].pop(MASK_KEY, None)
            return
        self.state[p][MASK_KEY] = _check_mask(p, mask, "mask")

    # -- state dict: masks travel inside per-param state; validate before touching anything
    def _upgrade_saved_group(self, group: dict) -> dict:
        """A saved param group in this version's terms (renamed options); the default changes nothing."""
        return group

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load optimizer state, masks included (SPEC §3).

        The masks of ``state_dict`` replace the current ones; a parameter that has a mask
        now but none in ``state_dict`` keeps its current mask. Shapes are validated and
        group hyper-parameters checked before any state changes. The execution switches
        (``fused``, and ``foreach`` for SGD) stay this optimizer's: they change how a step
        runs, not the state, so a state saved by a fused optimizer loads into an unfused
        one and back.
        """
        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        groups = self.param_groups
        saved_groups = [self._upgrade_saved_group(dict(sg)) if isinstance(sg, Mapping) else sg
                        for sg in state_dict["param_groups"]]
        if len(groups) != len(saved_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(groups)}")
        for gi, (g, sg) in enumerate(zip(groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(f"loaded state dict group {gi} has {len(sg['params'])} parameters, "
                                 f"this optimizer's group has {len(g['params'])}")
            merged = {**g, **{k: v for k, v in sg.items() if k != "params" and k not in self._EXECUTION_KEYS}}
            self._check_group(merged, f"loaded param group {gi}", g["params"])
            for pid, p in zip(sg["params"], g["params"]):
                st = state_dict["state"].get(pid, {})
                if MASK_KEY in st:
                    m = st[MASK_KEY]
                    if not isinstance(m, Tensor) or tuple(m.shape) != tuple(p.shape):
                        got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                        raise ValueError(f"loaded state dict: grad_mult_mask of param {pid} (group {gi}) must have "
                                         f"shape {tuple(p.shape)}, got {got}")
        execution = [{k: g[k] for k in self._EXECUTION_KEYS if k in g} for g in groups]
        keep = {p: st[MASK_KEY] for p, st in self.state.items() if MASK_KEY in st}
        super().load_state_dict({**state_dict, "param_groups": saved_groups})
        for g, ex in zip(self.param_groups, execution):
            g.update(ex)
        for p, m in keep.items():
            if MASK_KEY not in self.state[p]:
                self.state[p][MASK_KEY] = m

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``torch.optim.Optimizer.add_param_group`` plus hyper-parameter validation (SPEC §3)."""
        if isinstance(param_group, Mapping):
            param_group = dict(param_group)
            ps = param_group.get("params", [])
            if not isinstance(ps, (Tensor, set)):  # a set is refused by torch below
                param_group["params"] = ps = list(ps)
            merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
            self._check_group(merged, "param group",
                              [ps] if isinstance(ps, Tensor) else [p for p in ps if isinstance(p, Tensor)])
        super().add_param_group(param_group)

    def _check_group(self, group: Mapping, where: str, params=()) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_fused_group(self, group: Mapping, params, where: str) -> None:
        """A ``fused=True`` group's parameters: devices and dtypes the fused step supports (subclasses add
        the options a device's kernel cannot reproduce)."""
        _check_fused_params(params)

    def _check_fused_groups(self) -> None:
        """Before a step changes anything: every ``fused=True`` group is still supported (its model may
        have moved to another device or dtype since the optimizer was built)."""
        for gi, group in enumerate(self.param_groups):
            if group.get("fused"):
                try:
                    self._check_fused_group(group, group["params"], f"param group {gi}")
                except ValueError as e:
                    raise ValueError(f"param group {gi}: {e}") from None


# ----------------------------------------------------------------------------- SGD


def _check_nesterov_rounding(value) -> str:
    if isinstance(value, str) and value in RENAMED_NESTEROV_ROUNDINGS:
        raise ValueError(
            f"nesterov_rounding={value!r} is an earlier name; the modes are named after the code they reproduce: "
            f"'torch' (torch.optim.SGD, d.add(buf, alpha=momentum)), 'original' (the original RepOptimizers step at "
            f"its current head, d_p + buf * momentum) and 'original-legacy' (its earlier d_p.add(momentum, buf)); "
            f"{value!r} had the arithmetic of {RENAMED_NESTEROV_ROUNDINGS[value]!r}")
    if not isinstance(value, str) or value not in NESTEROV_ROUNDINGS:
        raise ValueError(f"nesterov_rounding must be one of {NESTEROV_ROUNDINGS}, got {value!r}")
    return value


def _nesterov_step(d: Tensor, buf: Tensor, momentum: float, rounding: str) -> Tensor:
    """``d + μ·buf``: one fused ``add(buf, alpha=μ)`` ('torch', 'original-legacy') or ``d + round(μ·buf)``
    ('original')."""
    if rounding == "original":
        return d.add(buf.mul(momentum))
    return d.add(buf, alpha=momentum)


def _single_tensor_repopt_sgd(params, grads, masks, bufs, *, lr, momentum, dampening, nesterov, weight_decay,
                              nesterov_rounding="torch"):
    for i, p in enumerate(params):
        m = masks[i]
        d = grads[i] if m is None else grads[i] * m
        if weight_decay != 0:
            d = d.add(p, alpha=weight_decay)
        if momentum != 0:
            buf = bufs[i]
            if buf is None:
                buf = d.detach().clone()
                bufs[i] = buf
            else:
                buf.mul_(momentum).add_(d, alpha=1 - dampening)
            d = _nesterov_step(d, buf, momentum, nesterov_rounding) if nesterov else buf
        p.add_(d, alpha=-lr)


def _foreach_add_owned(d: list, owned: list, other: list, alpha: float) -> None:
    """``d[j] ← d[j] + alpha·other[j]``: in place where ``d[j]`` is our temporary, out of place where
    it is still ``p.grad`` (never modified); afterwards every ``d[j]`` is ours."""
    mine = [j for j in range(len(d)) if owned[j]]
    theirs = [j for j in range(len(d)) if not owned[j]]
    if mine:
        torch._foreach_add_([d[j] for j in mine], [other[j] for j in mine], alpha=alpha)
    if theirs:
        for j, t in zip(theirs, torch._foreach_add([d[j] for j in theirs], [other[j] for j in theirs], alpha=alpha)):
            d[j] = t
    owned[:] = [True] * len(d)


def _multi_tensor_repopt_sgd(params, grads, masks, bufs, *, lr, momentum, dampening, nesterov, weight_decay,
                             nesterov_rounding="torch"):
    buckets: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    for idx in buckets.values():
        ps = [params[i] for i in idx]
        d = [grads[i] for i in idx]
        owned = [False] * len(idx)  # d[j] is our temporary (safe to modify in place)
        masked = [j for j, i in enumerate(idx) if masks[i] is not None]
        if masked:
            prods = torch._foreach_mul([d[j] for j in masked], [masks[idx[j]] for j in masked])
            for j, t in zip(masked, prods):
                d[j], owned[j] = t, True
        if weight_decay != 0:
            _foreach_add_owned(d, owned, ps, weight_decay)
        if momentum != 0:
            group_bufs = [bufs[i] for i in idx]
            if all(b is not None for b in group_bufs):
                torch._foreach_mul_(group_bufs, momentum)
                torch._foreach_add_(group_bufs, d, alpha=1 - dampening)
            else:
                for j, i in enumerate(idx):
                    if bufs[i] is None:
                        bufs[i] = d[j].detach().clone()
                    else:
                        bufs[i].mul_(momentum).add_(d[j], alpha=1 - dampening)
                group_bufs = [bufs[i] for i in idx]
            if nesterov and nesterov_rounding == "original":
                _foreach_add_owned(d, owned, torch._foreach_mul(group_bufs, momentum), 1.0)
            elif nesterov:
                _foreach_add_owned(d, owned, group_bufs, momentum)
            else:
                d = group_bufs
        torch._foreach_add_(ps, d, alpha=-lr)


def _fused_repopt_sgd(params, grads, masks, bufs, *, lr, momentum, dampening, nesterov, weight_decay,
                      nesterov_rounding="torch"):
    """The ``fused=True`` step: CPU tensors through the compiled loop, CUDA tensors through torch's kernel."""
    cpu = [i for i, p in enumerate(params) if p.device.type == "cpu"]
    other = [i for i, p in enumerate(params) if p.device.type != "cpu"]
    hp = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)
    if cpu:
        _cpu_fused_repopt_sgd(cpu, params, grads, masks, bufs, nesterov_rounding=nesterov_rounding, **hp)
    if other:
        _cuda_fused_repopt_sgd(other, params, grads, masks, bufs, **hp)


def _cpu_fused_repopt_sgd(idx, params, grads, masks, bufs, *, lr, momentum, dampening, nesterov, weight_decay,
                          nesterov_rounding):
    """One compiled pass per tensor (``_fused_kernels.repopt_sgd_many``, one call per dtype): the unfused
    step's arithmetic bit for bit. A tensor whose gradient, mask or buffer is not contiguous or not of the
    parameter's dtype takes the per-tensor step (the same bits)."""
    from ._fused_kernels import repopt_sgd_many

    rows: dict[torch.dtype, list] = {}
    keep = []  # tensors whose addresses are passed stay referenced until the kernel returns
    for i in idx:
        p, g, m, buf = params[i], grads[i], masks[i], bufs[i]
        if not _kernel_ready(p, g, m, buf):
            one = [buf]
            _single_tensor_repopt_sgd([p], [g], [m], one, lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=nesterov, weight_decay=weight_decay,
                                      nesterov_rounding=nesterov_rounding)
            bufs[i] = one[0]
            continue
        first = momentum != 0 and buf is None
        if first:
            buf = bufs[i] = torch.empty_like(p, memory_format=torch.contiguous_format)
        if p.numel() == 0:
            continue
        keep.append(g)
        gp = g.data_ptr()
        rows.setdefault(p.dtype, []).append((p.data_ptr(), gp, gp if m is None else m.data_ptr(),
                                             buf.data_ptr() if momentum != 0 else gp, p.numel(),
                                             (m is not None) | (first << 1)))
    for dtype, rs in rows.items():
        scalars = np.array([-lr, momentum, 1 - dampening, weight_decay], dtype=_NUMPY_SCALAR[dtype])
        repopt_sgd_many(np.array([r[:4] for r in rs], dtype=np.int64), np.array([r[4] for r in rs], dtype=np.int64),
                        np.array([r[5] for r in rs], dtype=np.uint8), scalars, nesterov,
                        nesterov_rounding == "original")


def _kernel_ready(p: Tensor, *others) -> bool:
    """Whether the compiled CPU loops can take ``p`` with ``others`` (None entries skipped): all contiguous,
    all of ``p``'s dtype."""
    if not p.is_contiguous():
        return False
    dtype = p.dtype
    for t in others:
        if t is not None and (t.dtype != dtype or not t.is_contiguous()):
            return False
    return True


def _cuda_fused_repopt_sgd(idx, params, grads, masks, bufs, *, lr, momentum, dampening, nesterov, weight_decay):
    """The masked gradient ``M ⊙ g`` (``torch._foreach_mul``) handed to torch's fused SGD kernel, which adds
    the unmasked weight decay itself: the order of SPEC §3.repopt-sgd-step in one kernel, rounded as
    ``torch.optim.SGD(fused=True)`` rounds on that device."""
    buckets: dict[tuple, list[int]] = {}
    for i in idx:
        buckets.setdefault((params[i].device, params[i].dtype), []).append(i)
    for ids in buckets.values():
        d = {i: grads[i] for i in ids}
        masked = [i for i in ids if masks[i] is not None]
        if masked:  # in the gradient's dtype: torch's fused kernel takes one dtype per call
            for i, t in zip(masked, torch._foreach_mul([grads[i] for i in masked],
                                                       [masks[i].to(grads[i].dtype) for i in masked])):
                d[i] = t
        if momentum == 0:
            parts = [(ids, False)]
        else:
            fresh = [i for i in ids if bufs[i] is None]
            for i in fresh:
                bufs[i] = torch.empty_like(params[i])
            parts = [([i for i in ids if i not in fresh], False), (fresh, True)]
        for sel, first in parts:
            if sel:
                torch._fused_sgd_([params[i] for i in sel], [d[i] for i in sel],
                                  [] if momentum == 0 else [bufs[i] for i in sel], weight_decay=weight_decay,
                                  momentum=momentum, lr=lr, dampening=dampening, nesterov=nesterov, maximize=False,
                                  is_first_step=first)


def _default_foreach(params: list[Tensor]) -> bool:
    """torch's default: the multi-tensor path when every parameter lives on an accelerator."""
    return bool(params) and all(p.device.type != "cpu" for p in params)


class RepOptimizerSGD(_MaskedOptimizer):
    """RepOpt-SGD (SPEC §3): SGD whose update for masked parameters starts from ``M ⊙ g``.

    Args:
        params: parameters or param-group dicts (as for ``torch.optim.SGD``).
        lr, momentum, dampening, nesterov, weight_decay: ``torch.optim.SGD``'s meaning
            (per param group). Weight decay is added *after* the mask (not masked).
        grad_mult_masks: ``{Parameter: Tensor}`` of Grad Mult masks (same shape as the
            parameter; see :func:`grad_mult_mask_from_scales`). Copied into
            ``state[p]['grad_mult_mask']`` in the parameter's dtype and device.
        foreach: multi-tensor (``torch._foreach_*``) path if True, per-tensor loop if
            False, torch's default (foreach on accelerators) if None. Both give the same
            result.
        fused: one pass per tensor over ``W, g, M`` and the buffer (per param group;
            None/False: off, the default). Parameters must be float32/float64 on CPU or
            float16/bfloat16/float32/float64 on CUDA (:data:`FUSED_DTYPES`); ``fused=True``
            with ``foreach=True`` is refused.

            - CPU: a compiled loop (``_fused_kernels.py``, Numba, compiled on first use)
              with the unfused step's operations and roundings — the same bits as
              ``fused=False``, every ``nesterov_rounding`` included (tested).
            - CUDA: ``M ⊙ g`` (one ``torch._foreach_mul``) handed to torch's fused SGD
              kernel, which adds the unmasked decay ``λ·W`` itself, so the order is SPEC's.
              Without masks that is ``torch.optim.SGD(fused=True)`` bit for bit; against the
              unfused step it differs by the kernel's roundings (``tests/tolerances.py``,
              ``fused_cuda``). Only ``nesterov_rounding='torch'`` there (with Nesterov).
        nesterov_rounding: how the Nesterov term ``d + μ·buf`` is rounded (per param group),
            each mode named by the code it reproduces bit for bit (float32 and float64,
            against transcriptions in ``tests/test_official_optim.py``):

            - ``'torch'`` (default): ``d.add(buf, alpha=μ)``, one rounding, as
              ``torch.optim.SGD``.
            - ``'original'``: the original RepOptimizers ``repoptimizer_sgd.py`` at its
              current head (commit ``c52651e``): ``d_p = d_p + buf * momentum``, the product
              rounded on its own, then the sum.
            - ``'original-legacy'``: the same file before that change (e.g. commit
              ``1d41318``): ``d_p = d_p.add(momentum, buf)``, torch's deprecated
              ``add(alpha, other)`` overload, which runs as ``d_p.add(buf, alpha=momentum)``:
              the arithmetic of ``'torch'``.

            The earlier names ``'official'`` (= ``'original-legacy'``) and ``'separate'``
            (= ``'original'``) are refused with a message naming these; an optimizer state
            saved under one of them loads under the new name (same arithmetic, with a warning).

    The original call order ``RepOptimizerSGD(grad_mult_map, params, lr=…, momentum=…,
    dampening=…, weight_decay=…, nesterov=…)`` (RepOptimizers' ``repoptimizer_sgd.py``)
    is accepted too: when the first positional argument is a ``{Parameter: mask}`` dict
    and a second positional argument follows, they are read as ``grad_mult_masks`` and
    ``params``, and further positional arguments follow the original's order
    ``(lr, momentum, dampening, weight_decay, nesterov)``. (repspec's own positional order
    after ``params`` is ``(lr, momentum, dampening, nesterov, weight_decay)``.)

    Everything is validated (like ``torch.optim.SGD``: ``lr >= 0``, nesterov needs
    ``momentum > 0`` and ``dampening == 0``, masks match their parameters' shapes …)
    before any state is created. Without masks the result equals ``torch.optim.SGD``.
    """

    _POSITIONAL = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
    _ORIGINAL_POSITIONAL = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    _EXECUTION_KEYS = ("foreach", "fused")

    def __init__(self, params: Iterable, *args, grad_mult_masks: Mapping[Tensor, Tensor] | None = None,
                 foreach: bool | None = None, fused: bool | None = None, nesterov_rounding: str = "torch", **kwargs):
        params, hp, grad_mult_masks = self._bind_arguments(params, args, kwargs, grad_mult_masks)
        defaults = _check_sgd_hparams(hp["lr"], hp["momentum"], hp["dampening"], hp["nesterov"],
                                      hp["weight_decay"], foreach)
        defaults["fused"] = _check_fused(fused, foreach)
        defaults["nesterov_rounding"] = _check_nesterov_rounding(nesterov_rounding)
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got a Tensor")
        params = list(params)
        all_params = _flatten_params(params)
        checked = _check_masks(all_params, grad_mult_masks)
        self.defaults = defaults  # add_param_group (called by super) validates groups against these
        super().__init__(params, defaults)
        self._install_masks(checked)

    @classmethod
    def _bind_arguments(cls, params, args, kwargs, grad_mult_masks):
        """``(params, {lr, momentum, dampening, nesterov, weight_decay}, masks)`` from either call order."""
        original = (isinstance(params, Mapping) and "params" not in params and len(args) >= 1
                    and not isinstance(args[0], numbers.Real)
                    and all(isinstance(k, Tensor) for k in params))
        if original:
            if grad_mult_masks is not None:
                raise TypeError("RepOptimizerSGD got the Grad Mult masks twice: as the first positional argument "
                                "(the original RepOptimizers call order) and as grad_mult_masks=")
            grad_mult_masks, params, args = params, args[0], args[1:]
            names = cls._ORIGINAL_POSITIONAL
        else:
            names = cls._POSITIONAL
        if len(args) > len(names):
            raise TypeError(f"RepOptimizerSGD takes at most {len(names)} positional hyper-parameters after params "
                            f"({', '.join(names)}), got {len(args)}")
        hp = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in cls._POSITIONAL:
                raise TypeError(f"RepOptimizerSGD got an unexpected keyword argument {k!r}")
            if k in hp:
                raise TypeError(f"RepOptimizerSGD got multiple values for {k!r} (positional and keyword)")
            hp[k] = v
        if isinstance(params, Mapping) and params and all(isinstance(k, Tensor) for k in params):
            raise TypeError("RepOptimizerSGD: the first argument is a {Parameter: mask} dict but no params "
                            "follow; call RepOptimizerSGD(params, lr=…, grad_mult_masks=masks) or the original "
                            "order RepOptimizerSGD(masks, params, lr=…)")
        if "lr" not in hp:
            raise TypeError("RepOptimizerSGD missing required argument 'lr'")
        hp.setdefault("momentum", 0.0)
        hp.setdefault("dampening", 0.0)
        hp.setdefault("nesterov", False)
        hp.setdefault("weight_decay", 0.0)
        return params, hp, grad_mult_masks


    def _check_group(self, group, where, params=()):
        try:
            _check_sgd_hparams(group["lr"], group["momentum"], group["dampening"], group["nesterov"],
                               group["weight_decay"], group.get("foreach"))
            _check_nesterov_rounding(group.get("nesterov_rounding", "torch"))
            if _check_fused(group.get("fused"), group.get("foreach")):
                self._check_fused_group(group, params, where)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from None

    def _check_fused_group(self, group, params, where):
        _check_fused_params(params)
        if group["nesterov"] and group.get("nesterov_rounding", "torch") != "torch" and \
                any(p.device.type != "cpu" for p in params):
            raise ValueError(f"fused=True on {next(p.device for p in params if p.device.type != 'cpu')} runs "
                             f"torch's fused SGD kernel, whose Nesterov rounding is torch's: nesterov_rounding must "
                             f"be 'torch' there, got {group['nesterov_rounding']!r} (use fused=False)")

    def _upgrade_saved_group(self, group):
        old = group.get("nesterov_rounding")
        if isinstance(old, str) and old in RENAMED_NESTEROV_ROUNDINGS:
            group["nesterov_rounding"] = RENAMED_NESTEROV_ROUNDINGS[old]
            warnings.warn(f"loaded optimizer state: nesterov_rounding {old!r} (an earlier name) is loaded as "
                          f"{group['nesterov_rounding']!r}, the same arithmetic", UserWarning, stacklevel=3)
        return group

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("nesterov_rounding", "torch")
            self._upgrade_saved_group(group)

    @torch.no_grad()
    def step(self, closure=None):
        """One RepOpt-SGD step (SPEC §3) for every param group; returns ``closure()``'s loss."""
        self._check_fused_groups()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, masks, bufs = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RepOptimizerSGD does not support sparse gradients")
                st = self.state[p]
                params.append(p)
                grads.append(p.grad)
                masks.append(st.get(MASK_KEY))
                bufs.append(st.get("momentum_buffer"))
            if not params:
                continue
            if group.get("fused"):
                fn = _fused_repopt_sgd
            else:
                foreach = group["foreach"]
                if foreach is None:
                    foreach = _default_foreach(params)
                fn = _multi_tensor_repopt_sgd if foreach else _single_tensor_repopt_sgd
            fn(params, grads, masks, bufs, lr=group["lr"], momentum=group["momentum"],
               dampening=group["dampening"], nesterov=group["nesterov"], weight_decay=group["weight_decay"],
               nesterov_rounding=group.get("nesterov_rounding", "torch"))
            if group["momentum"] != 0:
                for p, b in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = b
        return loss


# ----------------------------------------------------------------------------- AdamW

def _single_tensor_repopt_adamw(p, grad, m, st, *, lr, beta1, beta2, eps, weight_decay, amsgrad, twice):
    """One unfused RepOpt-AdamW step of one parameter (``st['step']`` already counts this step)."""
    grad = grad if m is None else grad * m
    exp_avg, exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
    if weight_decay != 0:
        p.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = st["step"].item()
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5
    if amsgrad:
        torch.maximum(st["max_exp_avg_sq"], exp_avg_sq, out=st["max_exp_avg_sq"])
        denom = (st["max_exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(eps)
    else:
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    p.addcdiv_(exp_avg if (m is None or not twice) else exp_avg * m, denom, value=-step_size)


def _cpu_fused_repopt_adamw(items, *, lr, beta1, beta2, eps, weight_decay, amsgrad, twice):
    """One compiled pass per tensor (``_fused_kernels.repopt_adamw_many``, one call per dtype): the unfused
    step's arithmetic with a correctly rounded ``sqrt``. A tensor whose gradient, mask or state is not
    contiguous or not of the parameter's dtype takes the unfused per-tensor step. Counts the step itself."""
    from ._fused_kernels import repopt_adamw_many

    torch._foreach_add_([st["step"] for *_, st in items], 1)
    steps = torch.stack([st["step"] for *_, st in items]).tolist()
    rows: dict[torch.dtype, list] = {}
    for (p, g, m, st), step in zip(items, steps):
        if not _kernel_ready(p, g, m, st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq") if amsgrad else None):
            _single_tensor_repopt_adamw(p, g, m, st, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                        weight_decay=weight_decay, amsgrad=amsgrad, twice=twice)
        elif p.numel():
            gp = g.data_ptr()
            rows.setdefault(p.dtype, []).append((
                (p.data_ptr(), gp, gp if m is None else m.data_ptr(), st["exp_avg"].data_ptr(),
                 st["exp_avg_sq"].data_ptr(), st["max_exp_avg_sq"].data_ptr() if amsgrad else gp),
                p.numel(), m is not None, step))
    for dtype, rs in rows.items():
        c = getattr(np, _NUMPY_SCALAR[dtype])
        per_step = {}
        for t in {r[3] for r in rs}:  # the scalars of each step count, cast as torch casts them
            row = np.array([1 - lr * weight_decay, 1 - beta1, 1 - beta1, beta2, 1 - beta2, -lr / (1 - beta1 ** t),
                            (1 - beta2 ** t) ** 0.5, eps], dtype=c)
            row[2] -= c(1)  # (1 − β1) − 1 in the tensors' dtype (lerp's other branch)
            per_step[t] = row
        repopt_adamw_many(np.array([r[0] for r in rs], dtype=np.int64), np.array([r[1] for r in rs], dtype=np.int64),
                          np.array([r[2] for r in rs], dtype=np.uint8), np.stack([per_step[r[3]] for r in rs]),
                          twice, amsgrad, weight_decay != 0)


def _cuda_fused_repopt_adamw(items, *, lr, beta1, beta2, eps, weight_decay, amsgrad):
    """The masked gradient handed to torch's fused AdamW kernel (``mask_placement='grad'`` only: the kernel
    cannot multiply the update by the mask). ``step`` lives on the parameter's device, as torch keeps it."""
    buckets: dict[tuple, list] = {}
    for item in items:
        buckets.setdefault((item[0].device, item[0].dtype), []).append(item)
    for group in buckets.values():
        ps = [p for p, _, _, _ in group]
        grads = [g for _, g, _, _ in group]
        masked = [j for j, (_, _, m, _) in enumerate(group) if m is not None]
        if masked:
            for j, t in zip(masked, torch._foreach_mul([grads[j] for j in masked],
                                                       [group[j][2].to(grads[j].dtype) for j in masked])):
                grads[j] = t
        steps = [st["step"] for _, _, _, st in group]
        torch._fused_adamw_(ps, grads, [st["exp_avg"] for *_, st in group], [st["exp_avg_sq"] for *_, st in group],
                            [st["max_exp_avg_sq"] for *_, st in group] if amsgrad else [], steps, amsgrad=amsgrad,
                            lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps, maximize=False,
                            grad_scale=None, found_inf=None)


class RepOptimizerAdamW(_MaskedOptimizer):
    """RepOpt-AdamW (SPEC §3 "AdamW variant"): ``torch.optim.AdamW`` with a Grad Mult mask ``M``.

    The masks are normally built with ``exponent=1`` (:func:`grad_mult_mask_from_scales`).
    With ``g̃ = M ⊙ g`` the update (decoupled weight decay, bias-corrected moments,
    optional AMSGrad) is::

        W ← W·(1 − lr·λ);  m ← β1·m + (1−β1)·g̃;  v ← β2·v + (1−β2)·g̃²
        W ← W − lr/(1−β1^t) · [M ⊙] m / (sqrt(v)/sqrt(1−β2^t) + eps)

    ``mask_placement`` (see ``repspec.reference.optim.ADAMW_MASK_PLACEMENTS``):
    ``'grad_and_update'`` (default; the official ``RepOptimizerAdamW``, which multiplies
    the gradient *and* the step by ``M``) or ``'grad'`` (only the gradient; Adam's
    normalization then cancels ``|M|`` up to ``eps``, so it is nearly plain AdamW).
    Either way it is only approximately equivalent to AdamW on the CSLA model.
    Without masks it equals ``torch.optim.AdamW``. State keys: ``step`` (float32 scalar
    tensor), ``exp_avg``, ``exp_avg_sq`` (``max_exp_avg_sq`` with AMSGrad), ``grad_mult_mask``.

    ``fused=True`` (per param group; None/False: off, the default) runs one pass per tensor:

    - CPU (float32/float64): a compiled loop (``_fused_kernels.py``) with the unfused step's
      operations and roundings except ``sqrt``, which is correctly rounded there and not
      always in torch's vectorized CPU kernel: the denominator, and so the step, can differ
      by an ulp (``tests/tolerances.py``, ``fused_cpu_adamw``). Both placements.
    - CUDA (float16/bfloat16/float32/float64): ``M ⊙ g`` handed to torch's fused AdamW
      kernel; only ``mask_placement='grad'``, since that kernel cannot multiply the update
      by the mask (``'grad_and_update'`` is refused with ``fused=True`` on CUDA). ``step``
      then lives on the parameter's device, as in ``torch.optim.AdamW(fused=True)``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 grad_mult_masks: Mapping[Tensor, Tensor] | None = None, mask_placement: str = "grad_and_update",
                 fused: bool | None = None):
        defaults = _check_adamw_hparams(lr, betas, eps, weight_decay, amsgrad, mask_placement)
        defaults["fused"] = _check_fused(fused)
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got a Tensor")
        params = list(params)
        checked = _check_masks(_flatten_params(params), grad_mult_masks)
        self.defaults = defaults
        super().__init__(params, defaults)
        self._install_masks(checked)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("mask_placement", "grad_and_update")
            group.setdefault("fused", None)

    def _check_group(self, group, where, params=()):
        try:
            _check_adamw_hparams(group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"],
                                 group["amsgrad"], group["mask_placement"])
            if _check_fused(group.get("fused")):
                self._check_fused_group(group, params, where)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from None

    def _check_fused_group(self, group, params, where):
        _check_fused_params(params)
        if group["mask_placement"] == "grad_and_update" and any(p.device.type != "cpu" for p in params):
            raise ValueError(f"fused=True on {next(p.device for p in params if p.device.type != 'cpu')} runs "
                             f"torch's fused AdamW kernel, which cannot multiply the update by the mask: "
                             f"mask_placement='grad_and_update' needs fused=False there (or mask_placement='grad')")

    @torch.no_grad()
    def step(self, closure=None):
        """One RepOpt-AdamW step (SPEC §3) for every param group; returns ``closure()``'s loss."""
        self._check_fused_groups()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            hp = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                      amsgrad=group["amsgrad"])
            twice = group["mask_placement"] == "grad_and_update"
            fused = bool(group.get("fused"))
            cpu_items, cuda_items = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RepOptimizerAdamW does not support sparse gradients")
                st = self.state[p]
                on_device = fused and p.device.type != "cpu"
                if "step" not in st:
                    st["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device if on_device else None)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif on_device and st["step"].device != p.device:  # a state saved by an unfused optimizer
                    st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
                if fused:  # these count their steps in one torch._foreach_add_
                    (cuda_items if on_device else cpu_items).append((p, p.grad, st.get(MASK_KEY), st))
                    continue
                st["step"] += 1
                _single_tensor_repopt_adamw(p, p.grad, st.get(MASK_KEY), st, twice=twice, **hp)
            if cpu_items:
                _cpu_fused_repopt_adamw(cpu_items, twice=twice, **hp)
            if cuda_items:
                torch._foreach_add_([st["step"] for *_, st in cuda_items], 1)
                _cuda_fused_repopt_adamw(cuda_items, **hp)
        return loss


# ----------------------------------------------------------------------------- masks and kernels

def _as_vector(v, name: str, *, length: int | None = None) -> Tensor:
    if not isinstance(v, Tensor):
        try:
            v = torch.as_tensor(v)
        except Exception as e:  # noqa: BLE001 - re-raised with a clear message
            raise TypeError(f"{name} must be a 1-D floating tensor, got {type(v).__name__}") from e
    if not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {v.dtype}")
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D per-channel tensor, got shape {tuple(v.shape)}")
    if length is not None and v.numel() != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must contain only finite values")
    return v.detach()


def grad_mult_mask_from_scales(scale_conv, scale_1x1, in_channels: int, *, identity: str = "trainable",
                               exponent: int = 2) -> Tensor:
    """The Grad Mult mask of one target conv (SPEC §3), shape ``(O, in_channels, 3, 3)``::

        M[o,i,p,q] = α3[o]^e + [p=q=1]·α1[o]^e + [p=q=1, o=i, identity == 'trainable']·1

    ``e = exponent`` (2 for SGD, 1 for the AdamW variant). ``identity`` is one of
    :data:`IDENTITY_MODES`; ``'trainable'`` and ``'constant'`` require
    ``in_channels == O`` (an identity branch exists). Computed in the scales' dtype.
    """
    if isinstance(in_channels, bool) or not isinstance(in_channels, numbers.Integral) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if identity not in IDENTITY_MODES:
        raise ValueError(f"identity must be one of {IDENTITY_MODES}, got {identity!r}")
    if isinstance(exponent, bool) or not isinstance(exponent, numbers.Integral) or exponent < 1:
        raise ValueError(f"exponent must be a positive integer (2 for SGD, 1 for AdamW), got {exponent!r}")
    a3 = _as_vector(scale_conv, "scale_conv")
    a1 = _as_vector(scale_1x1, "scale_1x1", length=a3.numel())
    a1 = a1.to(device=a3.device)
    dtype = torch.promote_types(a3.dtype, a1.dtype)
    a3, a1 = a3.to(dtype), a1.to(dtype)
    o = a3.numel()
    if identity != "none" and in_channels != o:
        raise ValueError(f"identity={identity!r} needs in_channels == out_channels, got in_channels={in_channels}, "
                         f"out_channels={o} (use identity='none' for blocks without an identity branch)")
    mask = (a3 ** exponent).view(o, 1, 1, 1).expand(o, in_channels, 3, 3).clone()
    mask[:, :, 1, 1] += (a1 ** exponent).view(o, 1)
    if identity == "trainable":
        idx = torch.arange(o, device=a3.device)
        mask[idx, idx, 1, 1] += 1
    return mask


def imaginary_kernels(out_channels: int, in_channels: int, generator: torch.Generator, *,
                      dtype: torch.dtype = torch.float32, device=None) -> tuple[Tensor, Tensor]:
    """Fresh imaginary ``(K3, K1)`` of a CSLA block (SPEC §3 "Re-initialization").

    torch's default conv init (``kaiming_uniform_(a=√5)`` = ``U(±1/√fan_in)``):
    ``K3 ~ U(±1/√(9·I))``, then ``K1 ~ U(±1/√I)``, drawn in that order from ``generator``
    (on CPU, so results do not depend on the device).
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    b3, b1 = 1.0 / math.sqrt(9 * in_channels), 1.0 / math.sqrt(in_channels)
    k3 = (torch.rand((out_channels, in_channels, 3, 3), generator=generator, dtype=torch.float64) * 2 - 1) * b3
    k1 = (torch.rand((out_channels, in_channels, 1, 1), generator=generator, dtype=torch.float64) * 2 - 1) * b1
    return k3.to(dtype=dtype, device=device), k1.to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------- models

def _is_target_block(m: nn.Module) -> bool:
    if isinstance(m, RepOptTargetBlock):
        return True
    conv = getattr(m, "conv", None)
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (3, 3) and isinstance(getattr(m, "bn", None),
            nn.BatchNorm2d) and not hasattr(m, "scale_conv") and not hasattr(m, "conv_1x1"))




def target_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(prefix, block)]`` of every RepOpt target block (``conv3x3 → BN → ReLU``) in model
    order, prefixes like ``stage0``, ``stage1.0`` (SPEC §3 "Architectures")."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    out = [(name, m) for name, m in model.named_modules() if name and _is_target_block(m)]
    if not out:
        raise ValueError(f"{type(model).__name__} has no RepOpt target blocks (conv3x3 → BN → ReLU)")
    return out


def _has_identity(block: nn.Module) -> bool:
    conv = block.conv
    return conv.in_channels == conv.out_channels and tuple(conv.stride) == (1, 1) and conv.groups == 1


def _block_scales(scales: Mapping[str, Tensor], prefix: str, block: nn.Module) -> tuple[Tensor, Tensor, Tensor | None]:
    conv = block.conv
    o = conv.out_channels
    keys = {k: f"{prefix}.scale_{k}.weight" for k in ("conv", "1x1", "identity")}
    for k in ("conv", "1x1"):
        if keys[k] not in scales:
            raise KeyError(f"scales has no entry {keys[k]!r} for block {prefix!r} (out_channels={o})")
    vals = {}
    for k in ("conv", "1x1", "identity"):
        if keys[k] in scales:
            v = scales[keys[k]]
            if not isinstance(v, Tensor):
                raise TypeError(f"scales[{keys[k]!r}] must be a torch.Tensor, got {type(v).__name__}")
            if tuple(v.shape) != (o,):
                raise ValueError(f"scales[{keys[k]!r}] must have shape ({o},) for block {prefix!r} "
                                 f"(out_channels={o}), got {tuple(v.shape)}")
            vals[k] = v
    if _has_identity(block) and "identity" not in vals:
        raise KeyError(f"scales has no entry {keys['identity']!r}, but block {prefix!r} has an identity branch "
                       f"(in == out == {o}, stride 1)")
    if not _has_identity(block) and "identity" in vals:
        raise ValueError(f"scales has {keys['identity']!r}, but block {prefix!r} has no identity branch "
                         f"(in={conv.in_channels}, out={o}, stride={tuple(conv.stride)})")
    return vals["conv"], vals["1x1"], vals.get("identity")


def _check_scales_cover(scales: Mapping[str, Tensor], blocks) -> None:
    if not isinstance(scales, Mapping):
        raise TypeError(f"scales must be a dict {{name: Tensor}}, got {type(scales).__name__}")
    known = {f"{p}.scale_{k}.weight" for p, _ in blocks for k in ("conv", "1x1", "identity")}
    extra = sorted(set(scales) - known)
    if extra:
        raise KeyError(f"scales has entries for no target block of the model: {extra[:5]}"
                       f"{' …' if len(extra) > 5 else ''}")


def build_grad_mult_masks(model: nn.Module, scales: Mapping[str, Tensor], *, identity: str = "trainable",
                          exponent: int = 2) -> dict[Tensor, Tensor]:
    """``{target conv weight: Grad Mult mask}`` for a RepOpt-VGG model (SPEC §3).

    ``scales`` is keyed ``stage{k}.{i}.scale_{conv|1x1|identity}.weight``; every target
    block needs its ``scale_conv``/``scale_1x1`` (shape ``(out_channels,)``), and a
    ``scale_identity`` exactly when it has an identity branch (``in == out``, stride 1).
    Masks are computed in float64 and cast to the weight's dtype/device. ``identity``
    applies to blocks that have an identity branch (others always use ``'none'``).
    """
    if identity not in IDENTITY_MODES:
        raise ValueError(f"identity must be one of {IDENTITY_MODES}, got {identity!r}")
    blocks = target_blocks(model)
    _check_scales_cover(scales, blocks)
    masks = {}
    for prefix, block in blocks:
        a3, a1, _ = _block_scales(scales, prefix, block)
        w = block.conv.weight
        mode = identity if _has_identity(block) else "none"
        m = grad_mult_mask_from_scales(a3.detach().double().cpu(), a1.detach().double().cpu(),
                                       block.conv.in_channels, identity=mode, exponent=exponent)
        masks[w] = m.to(dtype=w.dtype, device=w.device)
    return masks


def weight_decay_groups(model: nn.Module, weight_decay: float, *, no_decay_bn: bool = True) -> list[dict]:
    """Param groups with the official RepOptimizers weight-decay rule (SPEC §3).

    With ``no_decay_bn``: every 1-D parameter (BN ``γ, β``, trainable scales) and every
    ``*.bias`` gets ``weight_decay = 0``, except identity scales (``*identity.weight``,
    the ``d`` of a HyperSearch/CSLA block), which are decayed. Conv kernels and the
    linear weight are decayed. Frozen parameters are skipped; empty groups are dropped.
    """
    weight_decay = check_nonneg_float(weight_decay, "weight_decay")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not isinstance(no_decay_bn, bool):
        raise TypeError(f"no_decay_bn must be a bool, got {type(no_decay_bn).__name__}")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if no_decay_bn and "identity.weight" not in name and (p.dim() <= 1 or name.endswith(".bias")):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_repoptimizer(model: nn.Module, scales: Mapping[str, Tensor] | None, lr: float, *, momentum: float = 0.0,
                       dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                       no_decay_bn: bool = True, identity: str = "trainable", update_rule: str = "sgd",
                       betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, amsgrad: bool = False,
                       mask_placement: str = "grad_and_update", foreach: bool | None = None,
                       fused: bool | None = None,
                       nesterov_rounding: str = "torch") -> RepOptimizerSGD | RepOptimizerAdamW:
    """The RepOptimizer of a RepOpt-VGG model from its HyperSearch scales (SPEC §3).

    One Grad Mult mask per target conv (:func:`build_grad_mult_masks`, exponent 2 for
    ``update_rule='sgd'``, 1 for ``'adamw'``), param groups by
    :func:`weight_decay_groups`. ``scales=None`` takes ``model.repopt_scales`` (set by
    ``create_model('repopt_vgg_…')`` and ``repopt_from_csla``). ``foreach`` and
    ``nesterov_rounding`` are SGD's only; ``fused`` is either optimizer's one-pass step
    (:class:`RepOptimizerSGD`, :class:`RepOptimizerAdamW`). Everything is validated
    before the optimizer exists.
    """
    if scales is None:
        scales = getattr(model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model,
                         "repopt_scales", None)
        if scales is None:
            raise ValueError("scales is None and the model has no 'repopt_scales'; pass the HyperSearch scales")
    if update_rule not in ("sgd", "adamw"):
        raise ValueError(f"update_rule must be 'sgd' or 'adamw', got {update_rule!r}")
    if update_rule == "sgd":
        _check_sgd_hparams(lr, momentum, dampening, nesterov, weight_decay, foreach)
        _check_fused(fused, foreach)
        _check_nesterov_rounding(nesterov_rounding)
    else:
        _check_adamw_hparams(lr, betas, eps, weight_decay, amsgrad, mask_placement)
        _check_fused(fused)
        if foreach is not None:
            raise ValueError(f"foreach is RepOptimizerSGD's option; update_rule='adamw' takes foreach=None, "
                             f"got {foreach!r}")
        if nesterov_rounding != "torch":
            raise ValueError(f"nesterov_rounding is RepOptimizerSGD's option; update_rule='adamw' takes 'torch', "
                             f"got {nesterov_rounding!r}")
    masks = build_grad_mult_masks(model, scales, identity=identity, exponent=2 if update_rule == "sgd" else 1)
    groups = weight_decay_groups(model, weight_decay, no_decay_bn=no_decay_bn)
    if update_rule == "sgd":
        return RepOptimizerSGD(groups, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                               weight_decay=weight_decay, grad_mult_masks=masks, foreach=foreach, fused=fused,
                               nesterov_rounding=nesterov_rounding)
    return RepOptimizerAdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                             grad_mult_masks=masks, mask_placement=mask_placement, fused=fused)


@torch.no_grad()
def reinit_from_scales(target_model: nn.Module, scales: Mapping[str, Tensor], generator: torch.Generator | None = None,
                       use_identity_scales: bool = True, *,
                       kernels: Mapping[str, tuple[Tensor | None, Tensor | None]] | None = None,
                       k3_from_weight: bool = False) -> None:
    """Re-initialize every target conv to ``W'_0 = α3·K3 + α1·pad(K1) + diag(d)·I`` (SPEC §3).

    Where the imaginary kernels ``K3 (O, I, 3, 3)``, ``K1 (O, I, 1, 1)`` come from:

    - ``kernels[prefix] = (K3, K1)`` when given for a block (either may be ``None``);
    - else ``K3`` is the conv's *current* weight when ``k3_from_weight=True`` — what the
      original ``RepOptVGGHandler.reinitialize`` does (it reuses the freshly built
      target conv's weight as ``K3`` and draws only ``K1``);
    - a block that lacks one takes one :func:`imaginary_kernels` draw from ``generator``
      (torch's default conv init, ``K3`` then ``K1``, float64 on the CPU; the drawn kernel
      that was given is discarded), block by block in model order. With neither
      ``kernels`` nor ``k3_from_weight`` these are the same draws as
      ``RepOptTargetBlock.reinitialize``, which then does the per-block work.

    ``generator`` may be ``None`` only when no kernel has to be drawn. ``d`` is the
    block's ``scale_identity`` if ``use_identity_scales`` else 1, and only for blocks with
    an identity branch (official ``RepOptVGGHandler.reinitialize``). All scales and given
    kernels are validated before any weight changes.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if not isinstance(use_identity_scales, bool):
        raise TypeError(f"use_identity_scales must be a bool, got {type(use_identity_scales).__name__}")
    if not isinstance(k3_from_weight, bool):
        raise TypeError(f"k3_from_weight must be a bool, got {type(k3_from_weight).__name__}")
    if kernels is not None and not isinstance(kernels, Mapping):
        raise TypeError(f"kernels must be a dict {{block prefix: (K3, K1)}} or None, got {type(kernels).__name__}")
    blocks = target_blocks(target_model)
    _check_scales_cover(scales, blocks)
    kernels = {} if kernels is None else dict(kernels)
    unknown = sorted(set(kernels) - {p for p, _ in blocks})
    if unknown:
        raise KeyError(f"kernels has entries for no target block of the model: {unknown[:5]}")
    plan = []
    need_draw = False
    for prefix, block in blocks:  # validate everything first
        conv = block.conv
        o, i = conv.out_channels, conv.in_channels
        k3, k1 = None, None
        if prefix in kernels:
            pair = kernels[prefix]
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"kernels[{prefix!r}] must be a pair (K3, K1), got {type(pair).__name__}")
            k3, k1 = pair
            for t, name, shape in ((k3, "K3", (o, i, 3, 3)), (k1, "K1", (o, i, 1, 1))):
                if t is None:
                    continue
                if not isinstance(t, Tensor) or not t.is_floating_point():
                    raise TypeError(f"kernels[{prefix!r}] {name} must be a floating-point tensor")
                if tuple(t.shape) != shape:
                    raise ValueError(f"kernels[{prefix!r}] {name} must have shape {shape}, got {tuple(t.shape)}")
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"kernels[{prefix!r}] {name} must be finite")
        if k3 is None and k3_from_weight:
            k3 = conv.weight.detach().clone()
        need_draw = need_draw or k3 is None or k1 is None
        plan.append((prefix, block, _block_scales(scales, prefix, block), k3, k1))
    if need_draw and generator is None:
        raise TypeError("generator is required: some imaginary kernels are not given (kernels=…, k3_from_weight=…) "
                        "and must be drawn")
    for prefix, block, (a3, a1, d), k3, k1 in plan:
        a3, a1 = a3.detach().double().cpu(), a1.detach().double().cpu()
        d = None if (d is None or not use_identity_scales) else d.detach().double().cpu()
        if k3 is None and k1 is None and hasattr(block, "reinitialize"):
            block.reinitialize(a3, a1, d, generator=generator)
            continue
        conv = block.conv
        if k3 is None or k1 is None:
            d3, d1 = imaginary_kernels(conv.out_channels, conv.in_channels, generator, dtype=torch.float64)
            k3 = d3 if k3 is None else k3
            k1 = d1 if k1 is None else k1
        if d is None and _has_identity(block):
            d = torch.ones(conv.out_channels, dtype=torch.float64)
        w = csla_equivalent_kernel(k3.detach().double().cpu(), k1.detach().double().cpu(), a3, a1, d)
        conv.weight.copy_(w.to(dtype=conv.weight.dtype, device=conv.weight.device))
