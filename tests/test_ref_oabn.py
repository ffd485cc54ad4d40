"""SPEC §4: OABN — the clipped identity BN [repspec reconstruction].

s = ∞ is plain BN exactly; clipped factors stay within ±s; the training output is
the formula with batch statistics (biased variance to normalize, unbiased for the
running variance); both backward functions equal finite differences in both
gradient modes ("straight_through" through its surrogate); bad input is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from repspec.reference import ops
from repspec.reference.gradcheck import numerical_gradient
from repspec.reference.oabn import (
    oabn_eval,
    oabn_eval_backward,
    oabn_factor,
    oabn_train,
    oabn_train_backward,
    oabn_unclipped,
)
from tests import strategies as S
from tests.tolerances import assert_close

INF = float("inf")


def _x(rng, n, c, hw):
    """``(n, c, h, w)`` with per-channel scale and shift, so that channel variances differ.

    Training-mode batch norm needs ``n·h·w ≥ 2`` values per channel (batch 1 is drawn)."""
    assume(n * hw[0] * hw[1] >= 2)
    return rng.normal(size=(n, c, *hw)) * rng.uniform(0.5, 3, size=(1, c, 1, 1)) + rng.normal(size=(1, c, 1, 1))


def _gamma_for(rng, var, eps, s):
    """γ whose factor t = γ/sqrt(var+eps) is far from ±s: |t| in [0.2s, 0.6s] or [1.5s, 3s] (FD stays valid)."""
    c = var.shape[0]
    mag = np.where(rng.random(c) < 0.5, rng.uniform(0.2, 0.6, c), rng.uniform(1.5, 3.0, c)) * s
    return mag * rng.choice([-1.0, 1.0], c) * np.sqrt(var + eps)


def _check_fd(loss, inputs: dict, analytic: dict):
    for name, value in inputs.items():
        fd = numerical_gradient(lambda a, name=name: loss({**inputs, name: a}), value)
        assert_close(analytic[name], fd, name=f"d{name}", kind="finite_difference")


# batch 1..4 and non-square (h, w) in 1..3 each
shape_args = dict(n=S.batch, c=st.integers(1, 4), hw=st.tuples(st.integers(1, 3), st.integers(1, 3)), seed=S.seeds)


# ------------------------------------------------------------------- s = ∞ is BN


@given(**shape_args)
def test_infinite_threshold_is_plain_bn(n, c, hw, seed):
    rng = S.rng_from(seed)
    x = _x(rng, n, c, hw)
    g, b, rm, rv = rng.normal(size=c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.1, 2, c)
    got = oabn_train(x, g, b, rm, rv, threshold=INF, momentum=0.3)
    want = ops.batch_norm_train(x, g, b, rm, rv, momentum=0.3)
    for field in ("running_mean", "running_var", "batch_mean", "batch_var"):  # bit for bit: same expressions
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    # y: t·(x − μ) + β (OABN, SPEC §4) vs γ·((x − μ)/sqrt(σ² + eps)) + β (BN): the same value
    # through a different order of a division and two products, so each side is within
    # ~3 ulp of |t·(x − μ)| + |β|; 8·eps of that bounds the difference, with room.
    mu, t = want.batch_mean[None, :, None, None], ops.bn_factor(g, want.batch_var, 1e-5)[None, :, None, None]
    scale = np.abs(t * (x - mu)) + np.abs(b)[None, :, None, None]
    err = np.abs(got.y - want.y)
    assert np.all(err <= 8 * np.finfo(float).eps * scale), (
        f"y: max abs err {err.max():.3e} exceeds 8·eps·(|t(x−μ)| + |β|) (max ratio {(err / scale).max():.3e})")
    np.testing.assert_array_equal(oabn_eval(x, g, b, rm, rv, threshold=INF), ops.batch_norm_eval(x, g, b, rm, rv))
    np.testing.assert_array_equal(oabn_factor(g, rv, 1e-5, INF), ops.bn_factor(g, rv, 1e-5))
    dy = rng.normal(size=x.shape)
    for mode in ("clip", "straight_through"):  # the derivation through t equals BN's up to rounding
        for a, e, nm in zip(oabn_train_backward(dy, x, g, threshold=INF, gradient=mode),
                            ops.batch_norm_train_backward(dy, x, g), ("dx", "dgamma", "dbeta")):
            assert_close(a, e, name=f"train {mode} {nm}")
        for a, e, nm in zip(oabn_eval_backward(dy, x, g, rm, rv, threshold=INF, gradient=mode),
                            ops.batch_norm_eval_backward(dy, x, g, rm, rv), ("dx", "dgamma", "dbeta")):
            assert_close(a, e, name=f"eval {mode} {nm}")


# ------------------------------------------------------------- forward formulas


@given(**shape_args, s=st.sampled_from([0.5, 1.0, 3.0]), momentum=st.sampled_from([0.0, 0.1, 1.0]))
def test_train_output_is_the_formula_and_running_stats_are_unbiased(n, c, hw, seed, s, momentum):
    rng = S.rng_from(seed)
    x = _x(rng, n, c, hw)
    g, b, rm, rv = rng.normal(size=c) * 3, rng.normal(size=c), rng.normal(size=c), rng.uniform(0.1, 2, c)
    eps = 1e-5
    res = oabn_train(x, g, b, rm, rv, threshold=s, momentum=momentum, eps=eps)
    cnt = n * hw[0] * hw[1]
    mu = x.mean(axis=(0, 2, 3))
    var_biased = ((x - mu[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) / cnt
    var_unbiased = ((x - mu[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) / (cnt - 1)
    t = np.clip(g / np.sqrt(var_biased + eps), -s, s)
    assert np.all(np.abs(t) <= s)
    want = t[None, :, None, None] * (x - mu[None, :, None, None]) + b[None, :, None, None]
    assert_close(res.y, want, name="y (normalized with the biased batch variance)")
    # the running variance uses the unbiased one; 1e-13 separates n/(n-1) from 1 for any n here
    tight = dict(rtol=1e-13, atol=0.0)
    assert_close(res.running_var, (1 - momentum) * rv + momentum * var_unbiased, name="running_var", **tight)
    assert_close(res.running_mean, (1 - momentum) * rm + momentum * mu, name="running_mean", **tight)
    assert_close(res.batch_var, var_biased, name="batch_var (biased)", **tight)
    if momentum > 0:
        with pytest.raises(AssertionError):  # the test tells the two conventions apart
            assert_close(res.running_var, (1 - momentum) * rv + momentum * var_biased, name="biased", **tight)


@given(c=st.integers(1, 6), seed=S.seeds, s=st.sampled_from([0.25, 1.0, 2.0]))
def test_factor_is_clipped_to_threshold(c, seed, s):
    rng = S.rng_from(seed)
    g, var = rng.normal(size=c) * 10, rng.uniform(0, 2, c)
    t = ops.bn_factor(g, var, 1e-5)
    tc = oabn_factor(g, var, 1e-5, s)
    assert np.all(np.abs(tc) <= s)
    keep = np.abs(t) <= s
    np.testing.assert_array_equal(tc[keep], t[keep])
    np.testing.assert_array_equal(tc[~keep], s * np.sign(t[~keep]))
    np.testing.assert_array_equal(oabn_unclipped(g, var, 1e-5, s), keep)


@given(**shape_args, s=st.sampled_from([0.5, 2.0]))
def test_eval_is_the_clipped_affine_map(n, c, hw, seed, s):
    rng = S.rng_from(seed)
    x = _x(rng, n, c, hw)
    g, b, rm, rv = rng.normal(size=c) * 3, rng.normal(size=c), rng.normal(size=c), rng.uniform(0, 2, c)
    t = np.clip(g / np.sqrt(rv + 1e-5), -s, s)
    want = t[None, :, None, None] * (x - rm[None, :, None, None]) + b[None, :, None, None]
    assert_close(oabn_eval(x, g, b, rm, rv, threshold=s), want, name="oabn_eval")


# ------------------------------------------------------------ finite differences


@given(**shape_args, s=st.sampled_from([0.5, 1.0, 2.0]))
def test_train_backward_clip_matches_finite_differences(n, c, hw, seed, s):
    rng = S.rng_from(seed)
    x = _x(rng, n, c, hw)
    eps = 1e-5
    g = _gamma_for(rng, x.var(axis=(0, 2, 3)), eps, s)
    b, R = rng.normal(size=c), rng.normal(size=x.shape)

    def loss(d):
        return float((oabn_train(d["x"], d["gamma"], d["beta"], np.zeros(c), np.ones(c), threshold=s,
                                 eps=eps).y * R).sum())

    dx, dg, db = oabn_train_backward(R, x, g, threshold=s, eps=eps, gradient="clip")
    _check_fd(loss, dict(x=x, gamma=g, beta=b), dict(x=dx, gamma=dg, beta=db))


@given(**shape_args, s=st.sampled_from([0.5, 1.0, 2.0]))
def test_train_backward_straight_through_is_the_surrogate_gradient(n, c, hw, seed, s):
    # ST is the exact gradient of (t − sg(t − t̃))·(x − μ_B) + β: freeze c = t − t̃ at the point
    rng = S.rng_from(seed)
    x = _x(rng, n, c, hw)
    eps = 1e-5
    g = _gamma_for(rng, x.var(axis=(0, 2, 3)), eps, s)
    b, R = rng.normal(size=c), rng.normal(size=x.shape)
    t0 = g / np.sqrt(x.var(axis=(0, 2, 3)) + eps)
    frozen = t0 - np.clip(t0, -s, s)

    def loss(d):
        xx = d["x"]
        mu, var = xx.mean(axis=(0, 2, 3)), xx.var(axis=(0, 2, 3))
        t = d["gamma"] / np.sqrt(var + eps) - frozen
        y = t[None, :, None, None] * (xx - mu[None, :, None, None]) + d["beta"][None, :, None, None]
        return float((y * R).sum())

    assert abs(loss(dict(x=x, gamma=g, beta=b)) - float((oabn_train(x, g, b, np.zeros(c), np.ones(c), threshold=s,
                                                                    eps=eps).y * R).sum())) < 1e-9
    dx, dg, db = oabn_train_backward(R, x, g, threshold=s, eps=eps, gradient="straight_through")
    _check_fd(loss, dict(x=x, gamma=g, beta=b), dict(x=dx, gamma=dg, beta=db))


@given(**shape_args, s=st.sampled_from([0.5, 2.0]), mode=st.sampled_from(["clip", "straight_through"]))
def test_eval_backward_matches_finite_differences(n, c, hw, seed, s, mode):
    rng = S.rng_from(seed)
    x = _x(rng, n, c, hw)
    eps = 1e-5
    rm, rv = rng.normal(size=c), rng.uniform(0.1, 2, c)
    g = _gamma_for(rng, rv, eps, s)
    b, R = rng.normal(size=c), rng.normal(size=x.shape)
    t0 = g / np.sqrt(rv + eps)
    frozen = t0 - np.clip(t0, -s, s) if mode == "straight_through" else np.zeros(c)

    def loss(d):
        if mode == "clip":
            y = oabn_eval(d["x"], d["gamma"], d["beta"], rm, rv, threshold=s, eps=eps)
        else:  # the surrogate (t − sg(t − t̃))·(x − μ) + β
            t = d["gamma"] / np.sqrt(rv + eps) - frozen
            y = t[None, :, None, None] * (d["x"] - rm[None, :, None, None]) + d["beta"][None, :, None, None]
        return float((y * R).sum())

    dx, dg, db = oabn_eval_backward(R, x, g, rm, rv, threshold=s, eps=eps, gradient=mode)
    _check_fd(loss, dict(x=x, gamma=g, beta=b), dict(x=dx, gamma=dg, beta=db))


def test_clip_gradient_at_the_boundary_passes():
    # [repspec] |t| == s counts as unclipped (closed interval, like torch.clamp's backward)
    x = np.arange(8.0).reshape(2, 1, 2, 2)
    rm, rv, s = np.zeros(1), np.array([4.0]), 1.5
    g = np.array([3.0])  # t = 3/sqrt(4) = 1.5 == s exactly (eps = 0)
    assert oabn_factor(g, rv, 0.0, s)[0] == s and oabn_unclipped(g, rv, 0.0, s)[0]
    dy = np.ones_like(x)
    _, dg, _ = oabn_eval_backward(dy, x, g, rm, rv, threshold=s, eps=0.0, gradient="clip")
    assert dg[0] == x.sum() / 2.0
    _, dg_out, _ = oabn_eval_backward(dy, x, np.nextafter(g, 10), rm, rv, threshold=s, eps=0.0, gradient="clip")
    assert dg_out[0] == 0.0


@given(**shape_args)
@example(n=2, c=2, hw=(2, 2), seed=0)
@example(n=1, c=2, hw=(1, 3), seed=0)  # a batch of one, non-square
def test_clipped_channel_gets_no_gamma_gradient_but_x_still_does(n, c, hw, seed):
    rng = S.rng_from(seed)
    x = _x(rng, n, c, hw)
    g = np.full(c, 1e3)  # far beyond s = 1
    dy = rng.normal(size=x.shape)
    dx, dg, db = oabn_train_backward(dy, x, g, threshold=1.0)
    np.testing.assert_array_equal(dg, np.zeros(c))
    assert_close(dx, np.sign(g)[None, :, None, None] * (dy - dy.mean(axis=(0, 2, 3), keepdims=True)), name="dx")
    _, dg_st, _ = oabn_train_backward(dy, x, g, threshold=1.0, gradient="straight_through")
    assert np.all(dg_st != 0)


# -------------------------------------------------------------------- bad input


X = np.ones((2, 2, 2, 2))
V2 = np.ones(2)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: oabn_factor(V2, V2, 1e-5, -1.0), ValueError, "threshold"),
        (lambda: oabn_factor(V2, V2, 1e-5, 0.0), ValueError, "threshold"),
        (lambda: oabn_factor(V2, V2, 1e-5, float("nan")), ValueError, "threshold"),
        (lambda: oabn_factor(V2, V2, 1e-5, "1"), TypeError, "threshold"),
        (lambda: oabn_factor(V2, np.ones(3), 1e-5, 1.0), ValueError, "var"),
        (lambda: oabn_factor(np.array([np.nan, 1.0]), V2, 1e-5, 1.0), ValueError, "gamma"),
        (lambda: oabn_factor(np.array([]), np.array([]), 1e-5, 1.0), ValueError, "gamma"),
        (lambda: oabn_train(X, V2, V2, V2, V2, threshold=float("nan")), ValueError, "threshold"),
        (lambda: oabn_train(X, np.ones(3), V2, V2, V2, threshold=1.0), ValueError, "gamma"),
        (lambda: oabn_train(np.ones((0, 2, 2, 2)), V2, V2, V2, V2, threshold=1.0), ValueError, "x"),
        (lambda: oabn_train(X[:1, :, :1, :1], V2, V2, V2, V2, threshold=1.0), ValueError, "x"),
        (lambda: oabn_train_backward(X, X, V2, threshold=1.0, gradient="ste"), ValueError, "gradient"),
        (lambda: oabn_train_backward(X[:1], X, V2, threshold=1.0), ValueError, "dy"),
        (lambda: oabn_train_backward(X, X, V2, threshold=-2.0), ValueError, "threshold"),
        (lambda: oabn_eval(X, V2, V2, V2, np.ones(3), threshold=1.0), ValueError, "running_var"),
        (lambda: oabn_eval(X * np.inf, V2, V2, V2, V2, threshold=1.0), ValueError, "x"),
        (lambda: oabn_eval_backward(X, X, V2, V2, V2, threshold=1.0, gradient=None), ValueError, "gradient"),
    ],
)
def test_bad_input_is_refused(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_inputs_are_not_mutated():
    rng = np.random.default_rng(0)
    x, g, b, rm, rv = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=3) * 5, rng.normal(size=3), np.zeros(3), np.ones(3)
    before = [a.copy() for a in (x, g, b, rm, rv)]
    oabn_train(x, g, b, rm, rv, threshold=1.0)
    oabn_train_backward(x, x, g, threshold=1.0)
    oabn_eval(x, g, b, rm, rv, threshold=1.0)
    for a, a0 in zip((x, g, b, rm, rv), before):
        np.testing.assert_array_equal(a, a0)
