"""Compiled single-pass CPU steps of the RepOptimizers' ``fused=True`` mode (SPEC §3), built with Numba.

One loop per parameter reads ``W, g, M`` and the optimizer state once and writes ``W`` and
the state once: the memory traffic of torch's fused SGD / AdamW plus one read of the mask
(6/5 of fused SGD's, 8/7 of fused AdamW's). The unfused path needs a separate pass for
``M ⊙ g`` (read ``g``, ``M``, write a temporary) before the usual update.

**Arithmetic.** Each element goes through the operations of the unfused per-tensor step of
``repoptimizer.py`` in the same order, with the rounding torch's CPU kernels give them on
an FMA machine (x86-64 with AVX2/AVX-512, AArch64): where the unfused step calls
``a.add(b, alpha=c)`` (weight decay, the momentum-buffer update, torch's Nesterov form, the
parameter update), ``addcmul`` or ``lerp``, the kernel computes the same fused multiply-add
``fma(b, c, a)`` (one rounding); where it multiplies and adds in two calls, so does the
kernel; scalars are cast to the tensor's dtype first, as torch casts them. No ``fastmath``:
LLVM neither contracts nor reorders anything else. Hence:

- **SGD**: bit for bit the unfused step (tests/test_torch_fused.py), on every element — the
  vectorized body and the scalar tail compute the same thing.
- **AdamW**: bit for bit the unfused step except ``sqrt``: the kernel's is correctly rounded
  (IEEE), torch's vectorized CPU ``sqrt`` is not always (it differs from the correctly
  rounded one on ~1 % of float64 and ~20 % of float32 inputs here, by one ulp). So the
  denominator can differ by an ulp, and with it the step; the tests check that with a
  correctly rounded ``sqrt`` the unfused step gives the kernel's bits.

Compiled on first use (a few seconds) and cached on disk (``cache=True``). Numba is
imported only when a fused CPU step first runs.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["fma", "repopt_sgd_kernel", "repopt_adamw_kernel", "repopt_sgd_many", "repopt_adamw_many"]

_JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy", boundscheck=False)


@intrinsic
def fma(typingctx, a, b, c):
    """``a·b + c`` with one rounding (LLVM's ``llvm.fma``; a hardware FMA where there is one)."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@intrinsic
def _voidptr(typingctx, address):
    """The memory address ``address`` (an integer: a tensor's ``data_ptr()``) as a pointer."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@njit(**_JIT)
def repopt_sgd_kernel(p, g, m, buf, neg_lr, momentum, damp1, weight_decay, masked, first, nesterov, separate):
    """One RepOpt-SGD step on flat contiguous arrays (SPEC §3.repopt-sgd-step), in place on ``p``/``buf``.

    Per element, as the unfused step: ``d = g·M`` (``masked``) → ``d = fma(W, λ, d)`` →
    ``buf = d`` (``first``) or ``fma(d, 1 − τ, round(μ·buf))`` → ``d = fma(buf, μ, d)``
    (``separate``: ``d + round(μ·buf)``) or ``buf`` → ``W = fma(d, −lr, W)``. ``m`` and ``buf``
    are never read when ``masked`` is false / ``momentum == 0`` (any array may stand in).
    """
    for i in range(p.size):
        d = g[i] * m[i] if masked else g[i]
        if weight_decay != 0:
            d = fma(p[i], weight_decay, d)
        if momentum != 0:
            if first:
                b = d
            else:
                b = fma(d, damp1, buf[i] * momentum)
            buf[i] = b
            if nesterov:
                d = d + b * momentum if separate else fma(b, momentum, d)
            else:
                d = b
        p[i] = fma(d, neg_lr, p[i])


@njit(**_JIT)
def repopt_adamw_kernel(p, g, m, exp_avg, exp_avg_sq, max_exp_avg_sq, decay, beta1_weight, beta1_weight_minus_one,
                        beta2, beta2_weight, neg_step_size, bias_correction2_sqrt, eps, masked, twice, amsgrad,
                        decayed):
    """One RepOpt-AdamW step on flat contiguous arrays (SPEC §3.adamw), in place on ``p`` and the moments.

    Per element, as the unfused step: ``g̃ = g·M`` (``masked``) → ``W = W·(1 − lr·λ)``
    (``decayed``) → ``m = lerp(m, g̃, 1 − β1)`` (torch's: ``fma(w, g̃ − m, m)`` for ``|w| < 0.5``,
    else ``fma(w − 1, g̃ − m, g̃)``) → ``v = fma((1 − β2)·g̃, g̃, round(β2·v))`` → (``amsgrad``)
    ``v_max = max(v_max, v)`` (NaN propagates) → ``den = sqrt(v)/sqrt(1 − β2^t) + eps`` →
    ``W = W + round(−step_size · [round(m·M)|m]) / den`` (``twice``: the mask on the update too).
    """
    small = abs(beta1_weight) < 0.5
    for i in range(p.size):
        gi = g[i] * m[i] if masked else g[i]
        w = p[i] * decay if decayed else p[i]
        a = exp_avg[i]
        diff = gi - a
        a = fma(beta1_weight, diff, a) if small else fma(beta1_weight_minus_one, diff, gi)
        exp_avg[i] = a
        v = fma(beta2_weight * gi, gi, exp_avg_sq[i] * beta2)
        exp_avg_sq[i] = v
        if amsgrad:
            vm = max_exp_avg_sq[i]
            if v > vm or v != v:
                vm = v
            max_exp_avg_sq[i] = vm
            v = vm
        den = np.sqrt(v) / bias_correction2_sqrt + eps
        num = a * m[i] if (masked and twice) else a
        p[i] = w + (neg_step_size * num) / den


@njit(**_JIT)
def repopt_sgd_many(addresses, sizes, flags, scalars, nesterov, separate):
    """:func:`repopt_sgd_kernel` on ``n`` tensors in one call (no per-tensor Python overhead).

    ``addresses (n, 4)``: the ``data_ptr()`` of each tensor's ``W, g, M, buf`` (contiguous, of
    ``scalars``' dtype; ``g``'s where there is no mask / no buffer), ``sizes (n,)`` their
    element counts, ``flags (n,)``: bit 0 masked, bit 1 first step (no buffer yet);
    ``scalars = (−lr, μ, 1 − τ, λ)`` in the tensors' dtype.
    """
    dt = scalars.dtype
    for k in range(sizes.size):
        n = sizes[k]
        repopt_sgd_kernel(carray(_voidptr(addresses[k, 0]), n, dt), carray(_voidptr(addresses[k, 1]), n, dt),
                          carray(_voidptr(addresses[k, 2]), n, dt), carray(_voidptr(addresses[k, 3]), n, dt),
                          scalars[0], scalars[1], scalars[2], scalars[3], (flags[k] & 1) != 0, (flags[k] & 2) != 0,
                          nesterov, separate)


@njit(**_JIT)
def repopt_adamw_many(addresses, sizes, flags, scalars, twice, amsgrad, decayed):
    """:func:`repopt_adamw_kernel` on ``n`` tensors in one call.

    ``addresses (n, 6)``: ``W, g, M, exp_avg, exp_avg_sq, max_exp_avg_sq`` (``g``'s where absent),
    ``flags (n,)``: bit 0 masked; ``scalars (n, 8)`` per tensor (its own step count):
    ``(1 − lr·λ, 1 − β1, (1 − β1) − 1, β2, 1 − β2, −lr/(1 − β1^t), sqrt(1 − β2^t), eps)``.
    """
    dt = scalars.dtype
    for k in range(sizes.size):
        n = sizes[k]
        s = scalars[k]
        repopt_adamw_kernel(carray(_voidptr(addresses[k, 0]), n, dt), carray(_voidptr(addresses[k, 1]), n, dt),
                            carray(_voidptr(addresses[k, 2]), n, dt), carray(_voidptr(addresses[k, 3]), n, dt),
                            carray(_voidptr(addresses[k, 4]), n, dt), carray(_voidptr(addresses[k, 5]), n, dt),
                            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], (flags[k] & 1) != 0, twice, amsgrad,
                            decayed)
