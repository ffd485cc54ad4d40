"""Conformance clauses of SPEC §4 OABN."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from repspec.core.vocabulary import OABN_GRADIENTS
from repspec.reference import oabn as ref_oabn

from ..adapter import OABNEvalResult, OABNResult
from .base import (INF, Ambiguous, Checker, Clause, Mismatch, call, case_rng, expect_value_error, register, seeds,
                   signed_uniform, special)

#: a dyadic eps: with a variance of 4 − 2^-10, σ² + eps = 4 exactly, so t = γ/2 in any correct float64 port
_DYADIC_EPS = 2.0**-10

# ============================================================ §4 the clipped factor


@st.composite
def _factor_cases(draw) -> dict:
    c = draw(st.integers(1, 4))
    threshold = draw(st.sampled_from([1.0, 0.5, 2.0, 3.0, INF]))
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    dead = draw(st.booleans())
    seed = draw(seeds)
    rng = case_rng(seed)
    var = rng.choice([0.01, 0.3, 1.0, 4.0], c) * rng.uniform(0.5, 2.0, c)  # small σ²: |t| far above s
    if dead:  # a dead channel: σ² = 0, t = γ/sqrt(eps)
        var[rng.integers(0, c)] = 0.0
    return dict(channels=c, threshold=threshold, eps=eps, seed=seed, gamma=signed_uniform(rng, c, 0.05, 4.0),
                var=var)


def _check_factor(adapter, case, cmp: Checker) -> None:
    gamma, var, eps, s = case["gamma"], case["var"], case["eps"], case["threshold"]
    if s <= 0 or math.isnan(s):  # a refused threshold (special values only)
        expect_value_error(adapter, "oabn_factor", gamma, var, eps=eps, threshold=s,
                           why=f"SPEC §4.oabn-factor: s must be in (0, ∞], got {s!r}")
        return
    plain = call(adapter, "oabn_factor", gamma, var, eps=eps, threshold=INF)
    cmp.close("t̃ (s = ∞)", plain, ref_oabn.oabn_factor(gamma, var, eps, INF))
    want = ref_oabn.oabn_factor(gamma, var, eps, s)
    got = call(adapter, "oabn_factor", gamma, var, eps=eps, threshold=s) if math.isfinite(s) else plain
    if case.get("dyadic"):  # exact in every correct float64 port, the boundary |t| = s included
        cmp.equal("t̃", np.asarray(got, dtype=np.float64), want)
        return
    cmp.close("t̃", got, want)
    t = gamma / np.sqrt(var + eps)
    margin = cmp.profile["oabn_margin"]
    clipped, inside = np.abs(t) > s * (1 + margin), np.abs(t) < s * (1 - margin)
    got = np.asarray(got, dtype=np.float64)
    # clipping gives ±s itself, and leaves every other channel bit for bit the plain factor (s = ∞ is plain BN)
    cmp.equal("t̃ of the clipped channels (must be ±s exactly)", got[clipped], np.sign(gamma[clipped]) * s)
    cmp.equal("t̃ of the unclipped channels (must be the s = ∞ factor bit for bit)", got[inside],
              np.asarray(plain, dtype=np.float64)[inside])


@special("dyadic: |t| = s exactly, clipped and inside channels of both signs (compared exactly)")
def _factor_example_dyadic() -> dict:
    return dict(channels=5, threshold=1.0, eps=_DYADIC_EPS, seed=0, dyadic=True,
                gamma=np.array([2.0, -2.0, 6.0, -6.0, 0.5]), var=np.full(5, 4.0 - _DYADIC_EPS))


@special("dead channels (σ² = 0): t = γ/sqrt(eps) ≈ ±316·|γ|, clipped to s = 0.5")
def _factor_example_dead() -> dict:
    return dict(channels=3, threshold=0.5, eps=1e-5, seed=0, gamma=np.array([1.0, -1.0, 0.3]),
                var=np.array([0.0, 0.0, 1.0]))


def _refused(s: float):
    @special(f"s = {s!r} is refused with ValueError", needs="refusal of a bad threshold")
    def make() -> dict:
        return dict(channels=2, threshold=s, eps=1e-5, seed=0, gamma=np.array([1.0, -2.0]), var=np.ones(2))

    return make


register(Clause(
    id="§4.oabn-factor", section="§4", title="OABN's clipped factor t̃ = clip(γ/sqrt(σ² + eps), −s, s)",
    checks="t̃ against reference.oabn.oabn_factor for s ∈ {0.5, 1, 2, 3, ∞}, γ of both signs, small and zero "
           "variances (|t| up to ~1e3); the clipped channels are ±s exactly and the others equal the port's own "
           "s = ∞ factor bit for bit (s = ∞ is plain BN); a dyadic case with |t| = s exactly is compared exactly; "
           "s = NaN, 0 and −1 must raise ValueError (special values; a port may decline them as not validating).",
    tolerance="continuous (rtol 1e-9, atol 1e-11) against the reference (sqrt and division in another order); "
              "exact where the clause is discrete: ±s, the port's own unclipped factor, the dyadic case; channels "
              "with |t| within 1e-6·s of s are compared only under the continuous tolerance.",
    methods=("oabn_factor",), strategy=_factor_cases, check=_check_factor,
    examples=(_factor_example_dyadic, _factor_example_dead, _refused(float("nan")), _refused(0.0), _refused(-1.0)),
))

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

# ============================================================ §4 OABN in eval mode


@st.composite
def _oabn_eval_cases(draw) -> dict:
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))  # eval mode: a batch of 1 and 1x1 maps are fine
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    threshold = draw(st.sampled_from([1.0, INF, 0.5, 2.0]))
    gradient = draw(st.sampled_from(OABN_GRADIENTS))
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    dead = draw(st.booleans())
    seed = draw(seeds)
    rng = case_rng(seed)
    running_var = rng.choice([0.01, 0.3, 1.0, 4.0], c) * rng.uniform(0.5, 2.0, c)  # small σ²: clipped channels
    if dead:
        running_var[rng.integers(0, c)] = 0.0
    return dict(shape=(n, c, h, w), threshold=threshold, gradient=gradient, eps=eps, seed=seed,
                x=rng.normal(0, 2, (n, c, h, w)), gamma=signed_uniform(rng, c, 0.1, 3.0), beta=rng.normal(0, 0.5, c),
                running_mean=rng.normal(0, 1.0, c), running_var=running_var, dy=rng.standard_normal((n, c, h, w)))


def _check_oabn_eval(adapter, case, cmp: Checker) -> None:
    s, eps, gradient = case["threshold"], case["eps"], case["gradient"]
    if gradient == "clip" and math.isfinite(s) and not case.get("dyadic"):
        t = case["gamma"] / np.sqrt(case["running_var"] + eps)
        if np.min(np.abs(np.abs(t) - s)) / s <= cmp.profile["oabn_margin"]:
            raise Ambiguous("some |t| lies within the margin of the threshold (the clip's gradient jumps there)")
    arrays = [case[k] for k in ("x", "gamma", "beta", "running_mean", "running_var", "dy")]
    out = call(adapter, "oabn_eval", *arrays, threshold=s, eps=eps, gradient=gradient)
    if not isinstance(out, (tuple, list)) or len(out) != 4:
        raise Mismatch("oabn_eval", "must return (y, dx, dgamma, dbeta)")
    out = OABNEvalResult(*out)
    y = ref_oabn.oabn_eval(*arrays[:5], threshold=s, eps=eps)
    dx, dg, db = ref_oabn.oabn_eval_backward(case["dy"], *arrays[:2], *arrays[3:5], threshold=s, eps=eps,
                                             gradient=gradient)
    for name, a, e in (("y", out.y, y), ("dx", out.dx, dx), ("dgamma", out.dgamma, dg), ("dbeta", out.dbeta, db)):
        cmp.close(name, a, e)


def _eval_boundary_case(gradient: str) -> dict:
    """t = γ/2 = (1, −1, 3, 0.25) exactly (dyadic): two channels on |t| = s = 1 (the "clip" gradient passes),
    one clipped (its γ gets 0 under "clip", Σ dy·(x − μ)/2 under "straight_through"), one inside."""
    x = np.arange(-8.0, 8.0).reshape(2, 4, 1, 2) / 4.0
    dy = np.array([1.0, -0.5, 2.0, 0.25, -1.0, 0.75, 0.5, -2.0] * 2).reshape(2, 4, 1, 2)
    return dict(shape=(2, 4, 1, 2), threshold=1.0, gradient=gradient, eps=_DYADIC_EPS, seed=0, dyadic=True, x=x,
                gamma=np.array([2.0, -2.0, 6.0, 0.5]), beta=np.array([0.5, -0.25, 1.0, 0.0]),
                running_mean=np.array([0.25, -0.5, 1.0, 0.0]), running_var=np.full(4, 4.0 - _DYADIC_EPS), dy=dy)


@special("dyadic: |t| = s exactly, 'clip' passes at the boundary and gives 0 through a clipped channel")
def _oabn_eval_example_boundary() -> dict:
    return _eval_boundary_case("clip")


@special("dyadic: 'straight_through' trains γ of a clipped channel")
def _oabn_eval_example_straight_through() -> dict:
    return _eval_boundary_case("straight_through")


@special("a batch of 1 with a 1x1 map, a dead channel (σ² = 0) clipped to s = 0.5")
def _oabn_eval_example_batch_of_one() -> dict:
    return dict(shape=(1, 2, 1, 1), threshold=0.5, gradient="clip", eps=1e-5, seed=0,
                x=np.array([0.7, -1.3]).reshape(1, 2, 1, 1), gamma=np.array([1.5, -0.2]), beta=np.array([0.1, 0.2]),
                running_mean=np.array([0.3, -0.4]), running_var=np.array([0.0, 2.0]),
                dy=np.array([1.0, -2.0]).reshape(1, 2, 1, 1))


register(Clause(
    id="§4.oabn-eval", section="§4", title="OABN, eval mode: t̃·x + (β − μ·t̃) and its backward",
    checks="y = t̃·x + (β − μ·t̃) with the running statistics, dx = t̃·dy, dβ = Σ dy, dγ = Σ dy·(x − μ)/sqrt(σ² + "
           "eps) through [|t| ≤ s] ('clip', closed at the boundary) or not ('straight_through'), against "
           "reference.oabn.oabn_eval / oabn_eval_backward: s ∈ {∞, 0.5, 1, 2}, small and zero running variances "
           "(|t| up to ~1e3, clipped), batches of 1 and 1x1 maps; dyadic cases with |t| = s exactly.",
    tolerance="continuous (rtol 1e-9, atol 1e-11); 'clip' cases with some |t| within 1e-6·s of s are not compared "
              "(the gradient jumps there), except the dyadic ones, which are exact in every correct port.",
    methods=("oabn_eval",), strategy=_oabn_eval_cases, check=_check_oabn_eval,
    examples=(_oabn_eval_example_boundary, _oabn_eval_example_straight_through, _oabn_eval_example_batch_of_one),
))
