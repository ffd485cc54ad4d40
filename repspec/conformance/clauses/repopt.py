"""Conformance clauses of SPEC §3 Grad Mult, the RepOpt-SGD step and the RepOpt theorem."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from repspec.reference import optim as ref_optim
from repspec.reference import repopt as ref_repopt

from .base import (
    Checker,
    Clause,
    ErrorStats,
    Mismatch,
    as_f64,
    call,
    case_rng,
    register,
    seeds,
    sgd_hparams,
    signed_uniform,
    special,
)

# ============================================================ §3 Grad Mult


@st.composite
def _grad_mult_cases(draw) -> dict:
    identity = draw(st.sampled_from(["trainable", "none", "constant"]))
    o = draw(st.integers(1, 4))
    i = o if identity != "none" else draw(st.integers(1, 4))
    exponent = draw(st.sampled_from([2, 2, 1]))  # 1 (AdamW) is optional: one case in three
    mixed_signs = draw(st.booleans())
    seed = draw(seeds)
    rng = case_rng(seed)
    a3, a1 = rng.uniform(0.2, 2.0, o), rng.uniform(0.2, 2.0, o)  # a different value in every channel
    if mixed_signs:
        a3, a1 = a3 * rng.choice([-1.0, 1.0], o), a1 * rng.choice([-1.0, 1.0], o)
    return dict(out_channels=o, in_channels=i, identity=identity, exponent=exponent, seed=seed, scale_conv=a3,
                scale_1x1=a1)


def _check_grad_mult(adapter, case, cmp: Checker) -> None:
    args = (case["scale_conv"], case["scale_1x1"], case["in_channels"])
    kw = dict(identity=case["identity"], exponent=case["exponent"])
    m = call(adapter, "grad_mult_mask", *args, **kw)
    try:
        cmp.close("M", m, ref_repopt.grad_mult_mask(*args, **kw))
    except Mismatch as exc:
        swapped = ref_repopt.grad_mult_mask(case["scale_1x1"], case["scale_conv"], case["in_channels"], **kw)
        try:
            Checker(cmp.profile, ErrorStats()).close("M", m, swapped)
        except Mismatch:
            raise exc from None
        raise Mismatch(exc.quantity, exc.detail + ". The adapter's mask is the one for the scales SWAPPED: "
                       "grad_mult_mask takes (scale_conv, scale_1x1), the reverse of the original code's "
                       "(identity, 1x1, conv) tuples (docs/porting.md, 'Protocol pitfalls')",
                       max_abs=exc.max_abs, max_rel=exc.max_rel, tol=exc.tol) from None


@special("trainable identity, different scale per channel")
def _grad_mult_example() -> dict:
    return dict(out_channels=2, in_channels=2, identity="trainable", exponent=2, seed=0,
                scale_conv=np.array([2.0, 0.5]), scale_1x1=np.array([1.0, 3.0]))


@special("O ≠ I, no identity")
def _grad_mult_example_nonsquare() -> dict:
    return dict(out_channels=3, in_channels=2, identity="none", exponent=2, seed=0,
                scale_conv=np.array([2.0, 0.5, 1.5]), scale_1x1=np.array([1.0, 3.0, 0.25]))


register(Clause(
    id="§3.grad-mult", section="§3", title="Grad Mult mask",
    checks="M[o,i,p,q] = α3[o]^e + [p=q=1]·α1[o]^e + [p=q=1, o=i, identity='trainable']·1 against "
           "reference.repopt.grad_mult_mask, with a different scale in every output channel, O ≠ I "
           "(no identity), identity trainable/constant/none, exponent 2 (SGD) and 1 (AdamW), mixed signs.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): squares and sums of the scales.",
    methods=("grad_mult_mask",), strategy=_grad_mult_cases, check=_check_grad_mult,
    examples=(_grad_mult_example, _grad_mult_example_nonsquare),
))


# ============================================================ §3 RepOpt-SGD step


#: parameter shapes an optimizer step meets: 3x3 kernels (maskable), 1x1 kernels, (O,) vectors (BN, CSLA
#: scales, biases), (K, C) head weights, 0-d scalars — §3.theorem steps the 1x1 kernels and (O,) scales
_STEP_SHAPES = ("3x3", "1x1", "vector", "matrix", "scalar")

_ANY_SHAPE_HINT = ("repopt_sgd_step must accept a parameter of any shape: §3.theorem and a training step also "
                   "step 1x1 kernels (O, I, 1, 1), (O,) vectors and scalars, with grad_mult_mask None "
                   "(docs/porting.md, 'Protocol pitfalls')")


@st.composite
def _sgd_step_cases(draw) -> dict:
    o, i = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(_STEP_SHAPES))
    shape = {"3x3": (o, i, 3, 3), "1x1": (o, i, 1, 1), "vector": (o,), "matrix": (o, i), "scalar": ()}[kind]
    hp = draw(sgd_hparams())
    mask_kind = draw(st.sampled_from(["grad_mult", "grad_mult", "none"])) if kind == "3x3" else "none"
    first = draw(st.booleans()) or hp["momentum"] == 0
    seed = draw(seeds)
    rng = case_rng(seed)
    mask = None
    if mask_kind == "grad_mult":
        mask = ref_repopt.grad_mult_mask(rng.uniform(0.3, 2.0, o), rng.uniform(0.3, 2.0, o), i,
                                         identity="trainable" if i == o else "none")
    return dict(shape=shape, **hp, first_step=first, seed=seed, param=np.asarray(rng.standard_normal(shape)),
                grad=np.asarray(rng.standard_normal(shape)),
                momentum_buffer=None if first else np.asarray(rng.standard_normal(shape)), grad_mult_mask=mask)


_HP_KEYS = ("lr", "momentum", "dampening", "nesterov", "weight_decay")


def _check_sgd_step(adapter, case, cmp: Checker) -> None:
    hp = {k: case[k] for k in _HP_KEYS}
    hint = _ANY_SHAPE_HINT if np.shape(case["param"]) != np.shape(case["param"])[:2] + (3, 3) else None
    out = call(adapter, "repopt_sgd_step", case["param"], case["grad"], case["momentum_buffer"],
               grad_mult_mask=case["grad_mult_mask"], hint=hint, **hp)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("repopt_sgd_step", f"must return (new_param, new_buffer), got {type(out).__name__}")
    p_ref, buf_ref = ref_optim.sgd_step(case["param"], case["grad"], case["momentum_buffer"],
                                        grad_mult_mask=case["grad_mult_mask"], **hp)
    cmp.close("new_param", out[0], p_ref)
    if buf_ref is None:
        if out[1] is not None:
            raise Mismatch("new_buffer", "must be None when momentum == 0 (no buffer exists, as in torch)")
    else:
        if out[1] is None:
            raise Mismatch("new_buffer", "is None but momentum > 0 (the first step creates buf = d)")
        cmp.close("new_buffer", out[1], buf_ref)


@special("first step, momentum, dampening (the buffer is NOT dampened)")
def _sgd_example_first_step_dampened() -> dict:
    rng = case_rng(0)
    mask = ref_repopt.grad_mult_mask(np.array([1.5]), np.array([0.7]), 1, identity="trainable")
    return dict(shape=(1, 1, 3, 3), lr=0.1, momentum=0.9, dampening=0.5, nesterov=False, weight_decay=0.0,
                first_step=True, seed=0, param=rng.standard_normal((1, 1, 3, 3)),
                grad=rng.standard_normal((1, 1, 3, 3)), momentum_buffer=None, grad_mult_mask=mask)


@special("masked parameter with weight decay (decay NOT masked)")
def _sgd_example_masked_decay() -> dict:
    rng = case_rng(1)
    mask = ref_repopt.grad_mult_mask(np.array([1.5]), np.array([0.7]), 1, identity="none")
    return dict(shape=(1, 1, 3, 3), lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.05,
                first_step=True, seed=1, param=rng.standard_normal((1, 1, 3, 3)),
                grad=rng.standard_normal((1, 1, 3, 3)), momentum_buffer=None, grad_mult_mask=mask)


@special("(O,) vector, later nesterov step with decay (any shape)")
def _sgd_example_vector_later_step() -> dict:
    rng = case_rng(2)
    return dict(shape=(3,), lr=0.1, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.05,
                first_step=False, seed=2, param=rng.standard_normal(3), grad=rng.standard_normal(3),
                momentum_buffer=rng.standard_normal(3), grad_mult_mask=None)


register(Clause(
    id="§3.repopt-sgd-step", section="§3", title="one RepOpt-SGD step (exact order)",
    checks="d = M⊙g → d = d + λ·W (decay NOT masked) → buf = d (first step, undampened) | μ·buf + (1−τ)·d → "
           "d = d + μ·buf (nesterov) | buf → W − lr·d, against reference.optim.sgd_step; masked 3x3 kernels "
           "and unmasked parameters of any shape (3x3, 1x1, (O,), (K, C), scalar), first and later steps, "
           "every torch.optim.SGD option combination; momentum 0 must return no buffer.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): a handful of float64 multiply-adds.",
    methods=("repopt_sgd_step",), strategy=_sgd_step_cases, check=_check_sgd_step,
    examples=(_sgd_example_first_step_dampened, _sgd_example_masked_decay, _sgd_example_vector_later_step),
))


# ============================================================ §3 the theorem


@st.composite
def _theorem_cases(draw) -> dict:
    identity = draw(st.sampled_from(["trainable", "none", "constant"]))
    o = draw(st.integers(1, 3))
    i = o if identity != "none" else draw(st.integers(1, 3))
    hp = draw(sgd_hparams(allow_decay=identity != "constant"))
    steps = draw(st.integers(1, 3))
    seed = draw(seeds)
    rng = case_rng(seed)
    d = rng.uniform(0.5, 1.5, o) if identity != "none" else None
    return dict(out_channels=o, in_channels=i, identity=identity, steps=steps, **hp, seed=seed,
                scale_conv=signed_uniform(rng, o, 0.3, 1.5), scale_1x1=signed_uniform(rng, o, 0.3, 1.5),
                conv_weight=rng.standard_normal((o, i, 3, 3)), conv_1x1_weight=rng.standard_normal((o, i, 1, 1)),
                scale_identity=d, grads=[rng.standard_normal((o, i, 3, 3)) for _ in range(steps)])


#: roundings per element on the longest path: composing W'_0 (4), then per step, on each of the two paths,
#: the pulled-back gradient (1), M⊙g (1), weight decay (2), momentum (3), nesterov (2), lr·d (1), W − lr·d (1)
#: and the recomposition α3·K3 + α1·pad(K1) + d (5) — 16 per path, 32 per step
_THEOREM_ROUNDINGS_0, _THEOREM_ROUNDINGS_PER_STEP = 4, 32


def theorem_bound(u: float, steps: int, magnitudes) -> np.ndarray:
    """The round-off bound of the theorem comparison after ``steps`` steps (elementwise).

    Each rounding errs by at most ``u·|operand|``; with ``n = 4 + 32·steps`` roundings on the longest
    path, the standard bound (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1) is
    ``|W'_t − α3·K3_t − α1·pad(K1_t) − diag(d_t)| ≤ γ_n · Σ_s m_s``, ``γ_n = n·u/(1 − n·u)``, where
    ``m_s`` sums the *absolute values* of every term met at step ``s`` (the branches
    ``|α3|·|K3| + |α1|·|pad K1| + |d|``, ``|W'|``, the update ``lr·(|M|·|g| + λ·|W'| + (1 + μ)·|buf|)``
    and the branch buffers): a sum's condition number, so cancellation between the branches widens
    the bound where it must and nowhere else. For float64 and 1–3 steps that is ~1e-14 relative to
    the terms, instead of a flat 1e-9: a systematic 1e-12 relative error per step fails.
    """
    n = _THEOREM_ROUNDINGS_0 + _THEOREM_ROUNDINGS_PER_STEP * steps
    return (n * u / (1.0 - n * u)) * np.sum(magnitudes, axis=0)


def _check_theorem(adapter, case, cmp: Checker) -> None:
    hp = {k: case[k] for k in _HP_KEYS}
    a3, a1, identity = case["scale_conv"], case["scale_1x1"], case["identity"]
    u = cmp.profile["unit_roundoff"]
    mask = call(adapter, "grad_mult_mask", a3, a1, case["in_channels"], identity=identity, exponent=2)
    mask_abs = np.abs(as_f64("M", mask))
    branches = {"conv.weight": case["conv_weight"], "conv_1x1.weight": case["conv_1x1_weight"]}
    d_const = None
    if identity == "trainable":
        branches["scale_identity.weight"] = case["scale_identity"]
    elif identity == "constant":
        d_const = case["scale_identity"]

    def w_of(br):
        d = br.get("scale_identity.weight", d_const)
        return ref_repopt.csla_equivalent_kernel(br["conv.weight"], br["conv_1x1.weight"], a3, a1, d)

    def abs_of(br):  # Σ |terms| of the composition, elementwise
        d = br.get("scale_identity.weight", d_const)
        return ref_repopt.csla_equivalent_kernel(np.abs(br["conv.weight"]), np.abs(br["conv_1x1.weight"]),
                                                 np.abs(a3), np.abs(a1), None if d is None else np.abs(d))

    w = w_of(branches)  # W'_0
    magnitudes = [abs_of(branches) + np.abs(w)]
    bufs = {k: None for k in branches}
    buf_w = None
    lr, mu, lam = hp["lr"], hp["momentum"], hp["weight_decay"]
    for t, g in enumerate(case["grads"], start=1):
        d = branches.get("scale_identity.weight", d_const)
        pulled = ref_repopt.csla_equivalent_kernel_backward(g, branches["conv.weight"], branches["conv_1x1.weight"],
                                                            a3, a1, d)
        before = abs_of(branches)
        new = {}
        for k, theta in branches.items():  # the CSLA side: plain SGD on every branch (mask None)
            out = call(adapter, "repopt_sgd_step", theta, pulled[k], bufs[k], grad_mult_mask=None,
                       hint=_ANY_SHAPE_HINT if k != "conv.weight" else None, **hp)
            new[k], bufs[k] = as_f64(f"CSLA {k} after step {t}", out[0]), out[1]
        branches = new
        w_prev = np.abs(w)
        out = call(adapter, "repopt_sgd_step", w, g, buf_w, grad_mult_mask=mask, **hp)  # target: RepOpt-SGD
        w, buf_w = as_f64(f"W' after step {t}", out[0]), out[1]
        m = abs_of(branches) + np.abs(w) + lr * (mask_abs * np.abs(g) + lam * (w_prev + before))
        if mu != 0 and buf_w is not None and all(b is not None for b in bufs.values()):
            b_abs = {k: np.abs(as_f64(f"CSLA {k} momentum buffer after step {t}", b)) for k, b in bufs.items()}
            m = m + lr * (1.0 + mu) * (np.abs(as_f64(f"W' momentum buffer after step {t}", buf_w)) + abs_of(b_abs))
        magnitudes.append(m)
        cmp.within(f"W' after step {t} (target, RepOpt-SGD) vs α3·K3 + α1·pad(K1) + diag(d)·I_c (CSLA, SGD)",
                   w, w_of(branches), theorem_bound(u, t, magnitudes),
                   f"round-off bound γ_n·Σ|terms| with n = {_THEOREM_ROUNDINGS_0} + "
                   f"{_THEOREM_ROUNDINGS_PER_STEP}·{t} roundings, u = {u:.3g}")


@special("trainable identity, weight decay, mixed-sign 1x1 scale")
def _theorem_example() -> dict:
    rng = case_rng(0)
    return dict(out_channels=2, in_channels=2, identity="trainable", steps=1, lr=0.1, momentum=0.0, dampening=0.0,
                nesterov=False, weight_decay=0.05, seed=0, scale_conv=np.array([1.2, 0.6]),
                scale_1x1=np.array([0.5, -0.9]), conv_weight=rng.standard_normal((2, 2, 3, 3)),
                conv_1x1_weight=rng.standard_normal((2, 2, 1, 1)), scale_identity=np.array([1.0, 0.8]),
                grads=[rng.standard_normal((2, 2, 3, 3))])


register(Clause(
    id="§3.theorem", section="§3", title="RepOpt theorem (CSLA + SGD ≡ target + RepOpt-SGD)",
    checks="A property of the adapter itself: from W'_0 = α3·K3 + α1·pad(K1) + diag(d)·I_c, plain SGD "
           "(the adapter's repopt_sgd_step with mask None) on K3, K1 and a trainable d — pulled-back "
           "gradients α3·g, α1·g_center, g_diag — and RepOpt-SGD on W' with the adapter's own grad_mult_mask "
           "keep α3·K3_t + α1·pad(K1_t) + diag(d_t)·I_c == W'_t for 1–3 steps; identity trainable, none, and "
           "constant (then λ = 0, no +1), every SGD option, mixed-sign scales.",
    tolerance="derived round-off bound γ_n·Σ_s m_s (n = 4 + 32·t roundings after t steps, u = 2^-53, m_s the "
              "sum of the absolute values of every term at step s: the sum's conditioning), about 1e-14 relative "
              "to the terms; the reference measures ~1e-16. A systematic 1e-12 relative error per step fails.",
    methods=("grad_mult_mask", "repopt_sgd_step"), strategy=_theorem_cases, check=_check_theorem,
    examples=(_theorem_example,),
))
