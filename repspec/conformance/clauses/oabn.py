"""Conformance clauses of SPEC §4 OABN."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from repspec.core.vocabulary import OABN_GRADIENTS
from repspec.reference import oabn as ref_oabn

from ..adapter import OABNResult
from .base import INF, Ambiguous, Checker, Clause, Mismatch, call, case_rng, register, seeds, signed_uniform

# ============================================================ §4 OABN


def _oabn_margin(case) -> float:
    """min over channels of | |t| − s | / s with batch statistics (∞ for s = ∞)."""
    s = case["threshold"]
    if math.isinf(s):
        return INF
    var = case["x"].var(axis=(0, 2, 3))
    t = case["gamma"] / np.sqrt(var + case["eps"])
    return float(np.min(np.abs(np.abs(t) - s)) / s)


@st.composite
def _oabn_cases(draw) -> dict:
    n, c = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    threshold = draw(st.sampled_from([1.0, INF, 0.5, 2.0]))
    gradient = draw(st.sampled_from(OABN_GRADIENTS))
    momentum = draw(st.sampled_from([0.1, 1.0, 0.5]))
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    seed = draw(seeds)
    rng = case_rng(seed)
    spread = rng.choice([0.05, 0.3, 1.0, 3.0], c)  # small spreads give huge t = γ/σ: clipped channels
    x = rng.standard_normal((n, c, h, w)) * spread[None, :, None, None] + rng.normal(0, 2, c)[None, :, None, None]
    case = dict(shape=(n, c, h, w), threshold=threshold, gradient=gradient, momentum=momentum, eps=eps, seed=seed,
                x=x, gamma=signed_uniform(rng, c, 0.1, 3.0), beta=rng.normal(0, 0.5, c),
                running_mean=rng.normal(0, 0.5, c), running_var=rng.uniform(0.2, 2.0, c),
                dy=rng.standard_normal((n, c, h, w)))
    return case


def _check_oabn(adapter, case, cmp: Checker) -> None:
    if _oabn_margin(case) <= cmp.profile["oabn_margin"]:
        raise Ambiguous("some |t| lies within the margin of the threshold (the clip's gradient jumps there)")
    kw = dict(threshold=case["threshold"], momentum=case["momentum"], eps=case["eps"], gradient=case["gradient"])
    arrays = [case[k] for k in ("x", "gamma", "beta", "running_mean", "running_var", "dy")]
    out = call(adapter, "oabn_train", *arrays, **kw)
    if not isinstance(out, (tuple, list)) or len(out) != 6:
        raise Mismatch("oabn_train", "must return (y, running_mean, running_var, dx, dgamma, dbeta)")
    out = OABNResult(*out)
    res = ref_oabn.oabn_train(*arrays[:5], threshold=case["threshold"], momentum=case["momentum"], eps=case["eps"])
    dx, dg, db = ref_oabn.oabn_train_backward(case["dy"], case["x"], case["gamma"], threshold=case["threshold"],
                                              eps=case["eps"], gradient=case["gradient"])
    for name, a, e in (("y", out.y, res.y), ("running_mean", out.running_mean, res.running_mean),
                       ("running_var", out.running_var, res.running_var), ("dx", out.dx, dx),
                       ("dgamma", out.dgamma, dg), ("dbeta", out.dbeta, db)):
        cmp.close(name, a, e)


def _oabn_example() -> dict:
    x = np.array([1.0, 3.0, 5.0, 7.0, 0.2, 0.1, -0.1, 0.0]).reshape(2, 2, 1, 2)
    return dict(shape=(2, 2, 1, 2), threshold=1.0, gradient="clip", momentum=0.1, eps=1e-5, seed=0, x=x,
                gamma=np.array([10.0, 0.05]), beta=np.array([0.5, -0.5]), running_mean=np.zeros(2),
                running_var=np.ones(2), dy=np.array([1.0, 0.0, -2.0, 0.5, 0.3, 0.0, 1.0, -1.0]).reshape(2, 2, 1, 2))


register(Clause(
    id="§4.oabn", section="§4", title="OABN, training mode: forward, running stats, backward",
    checks="t = γ/sqrt(σ²_B + eps), t̃ = clip(t, −s, s), y = t̃·(x − μ_B) + β (biased σ²_B), running stats "
           "as plain BN (unbiased variance, run ← (1−m)·run + m·batch), and dx, dγ, dβ with the 'clip' "
           "(zero through clipped channels) and 'straight_through' gradients, against reference.oabn; "
           "s ∈ {∞, 0.5, 1, 2}, channels with tiny spread (t up to ~60, clipped).",
    tolerance="continuous (rtol 1e-9, atol 1e-11); cases with some |t| within 1e-6·s of s are not compared "
              "(the clip's gradient is discontinuous there, SPEC §6).",
    methods=("oabn_train",), strategy=_oabn_cases, check=_check_oabn, examples=(_oabn_example,),
))
