"""SPEC §0–§1: the reference building blocks.

Driven by one registry (OpInfo style): each record names the op, how to draw a
sample, the scalar loss built from the forward, and the analytic gradients from
the backward. Every record is checked against central finite differences.
Then: peers (SciPy's correlate for conv2d), the BN variance convention exactly,
and bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import scipy.signal
from hypothesis import example, given
from hypothesis import strategies as st

from repspec.reference import ops
from repspec.reference.gradcheck import numerical_gradient
from tests import strategies as S
from tests.tolerances import assert_close


@dataclass(frozen=True)
class GradRecord:
    """One op under finite-difference test.

    ``sample(rng)`` returns a dict of named float64 inputs (plus fixed kwargs under
    "kw"); ``loss(inputs)`` is a scalar built from the forward; ``grads(inputs)``
    returns the analytic ``∂loss/∂input`` for each differentiable input name.
    """

    name: str
    sample: Callable[[np.random.Generator], dict]
    loss: Callable[[dict], float]
    grads: Callable[[dict], dict]


def _proj(rng, shape):
    return rng.normal(size=shape)


def _conv_sample(rng):
    cfg = dict(n=2, c=4, h=5, w=6, o=6, groups=2, k=3, stride=2, padding=1)
    # shape drawn inside the record so the registry stays declarative; the Hypothesis
    # test below covers random shapes
    x = rng.normal(size=(cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    w = rng.normal(size=(cfg["o"], cfg["c"] // cfg["groups"], cfg["k"], cfg["k"]))
    b = rng.normal(size=cfg["o"])
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], groups=cfg["groups"])
    y_shape = ops.conv2d(x, w, b, **kw).shape
    return dict(x=x, w=w, b=b, kw=kw, R=_proj(rng, y_shape))


def _conv_loss(d):
    return float((ops.conv2d(d["x"], d["w"], d["b"], **d["kw"]) * d["R"]).sum())


def _conv_grads(d):
    dx, dw, db = ops.conv2d_backward(d["R"], d["x"], d["w"], **d["kw"], with_bias=True)
    return dict(x=dx, w=dw, b=db)


def _bn_train_sample(rng):
    x = rng.normal(size=(3, 4, 3, 2)) * rng.uniform(0.5, 3, size=(1, 4, 1, 1)) + rng.normal(size=(1, 4, 1, 1))
    return dict(x=x, gamma=rng.normal(size=4), beta=rng.normal(size=4), R=_proj(rng, x.shape))


def _bn_train_loss(d):
    c = d["x"].shape[1]
    y = ops.batch_norm_train(d["x"], d["gamma"], d["beta"], np.zeros(c), np.ones(c)).y
    return float((y * d["R"]).sum())


def _bn_train_grads(d):
    dx, dg, db = ops.batch_norm_train_backward(d["R"], d["x"], d["gamma"])
    return dict(x=dx, gamma=dg, beta=db)


def _bn_eval_sample(rng):
    d = _bn_train_sample(rng)
    d.update(rm=rng.normal(size=4), rv=rng.uniform(0.1, 2.0, size=4))
    return d


def _bn_eval_loss(d):
    return float((ops.batch_norm_eval(d["x"], d["gamma"], d["beta"], d["rm"], d["rv"]) * d["R"]).sum())


def _bn_eval_grads(d):
    dx, dg, db = ops.batch_norm_eval_backward(d["R"], d["x"], d["gamma"], d["rm"], d["rv"])
    return dict(x=dx, gamma=dg, beta=db)


def _relu_sample(rng):
    x = rng.normal(size=(2, 3, 4, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink where the FD is not a derivative
    return dict(x=x, R=_proj(rng, x.shape))


def _gap_sample(rng):
    x = rng.normal(size=(2, 3, 4, 5))
    return dict(x=x, R=_proj(rng, (2, 3)))


def _linear_sample(rng):
    x = rng.normal(size=(3, 5))
    return dict(x=x, w=rng.normal(size=(4, 5)), b=rng.normal(size=4), R=_proj(rng, (3, 4)))


def _ce_sample(rng):
    logits = rng.normal(size=(4, 5)) * 3
    return dict(logits=logits, labels=rng.integers(0, 5, size=4))


GRAD_REGISTRY = [
    GradRecord("conv2d", _conv_sample, _conv_loss, _conv_grads),
    GradRecord("batch_norm_train", _bn_train_sample, _bn_train_loss, _bn_train_grads),
    GradRecord("batch_norm_eval", _bn_eval_sample, _bn_eval_loss, _bn_eval_grads),
    GradRecord(
        "relu",
        _relu_sample,
        lambda d: float((ops.relu(d["x"]) * d["R"]).sum()),
        lambda d: dict(x=ops.relu_backward(d["R"], d["x"])),
    ),
    GradRecord(
        "global_avg_pool",
        _gap_sample,
        lambda d: float((ops.global_avg_pool(d["x"]) * d["R"]).sum()),
        lambda d: dict(x=ops.global_avg_pool_backward(d["R"], d["x"].shape)),
    ),
    GradRecord(
        "linear",
        _linear_sample,
        lambda d: float((ops.linear(d["x"], d["w"], d["b"]) * d["R"]).sum()),
        lambda d: dict(zip(("x", "w", "b"), ops.linear_backward(d["R"], d["x"], d["w"]))),
    ),
    GradRecord(
        "softmax_cross_entropy",
        _ce_sample,
        lambda d: ops.softmax_cross_entropy(d["logits"], d["labels"]),
        lambda d: dict(logits=ops.softmax_cross_entropy_backward(d["logits"], d["labels"])),
    ),
]


def _check_record(record: GradRecord, seed: int) -> None:
    d = record.sample(S.rng_from(seed))
    analytic = record.grads(d)
    for name, grad in analytic.items():
        def f(v, name=name):
            return record.loss({**d, name: v})

        assert_close(grad, numerical_gradient(f, d[name]), name=f"{record.name}: d/d{name}", kind="finite_difference")


@pytest.mark.parametrize("record", GRAD_REGISTRY, ids=lambda r: r.name)
@given(seed=S.seeds)
def test_backward_matches_finite_differences(record, seed):
    _check_record(record, seed)


@given(cfg=S.conv_configs(), seed=S.seeds)
def test_conv2d_backward_random_shapes(cfg, seed):
    rng = S.rng_from(seed)
    x = rng.normal(size=(cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    w = rng.normal(size=(cfg["o"], cfg["c"] // cfg["groups"], cfg["k"], cfg["k"]))
    b = rng.normal(size=cfg["o"])
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], groups=cfg["groups"])
    R = rng.normal(size=ops.conv2d(x, w, b, **kw).shape)
    dx, dw, db = ops.conv2d_backward(R, x, w, **kw, with_bias=True)
    assert_close(dx, numerical_gradient(lambda v: (ops.conv2d(v, w, b, **kw) * R).sum(), x),
                 name="conv2d dx", kind="finite_difference")
    assert_close(dw, numerical_gradient(lambda v: (ops.conv2d(x, v, b, **kw) * R).sum(), w),
                 name="conv2d dw", kind="finite_difference")
    assert_close(db, R.sum(axis=(0, 2, 3)), name="conv2d db")


# ------------------------------------------------------------------ peers


def _scipy_conv2d(x, w, b, stride, padding, groups):
    """An independent conv: scipy.signal.correlate2d per (n, o, c), then stride by slicing."""
    n, c, _, _ = x.shape
    o, cg = w.shape[:2]
    og = o // groups
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = None
    for ni in range(n):
        for oi in range(o):
            g = oi // og
            acc = sum(scipy.signal.correlate2d(xp[ni, g * cg + ci], w[oi, ci], mode="valid") for ci in range(cg))
            acc = acc[::stride, ::stride] + (0.0 if b is None else b[oi])
            if out is None:
                out = np.zeros((n, o) + acc.shape)
            out[ni, oi] = acc
    return out


@given(cfg=S.conv_configs(), seed=S.seeds)
def test_conv2d_equals_scipy(cfg, seed):
    rng = S.rng_from(seed)
    x = rng.normal(size=(cfg["n"], cfg["c"], cfg["h"], cfg["w"]))
    w = rng.normal(size=(cfg["o"], cfg["c"] // cfg["groups"], cfg["k"], cfg["k"]))
    b = rng.normal(size=cfg["o"])
    got = ops.conv2d(x, w, b, stride=cfg["stride"], padding=cfg["padding"], groups=cfg["groups"])
    want = _scipy_conv2d(x, w, b, cfg["stride"], cfg["padding"], cfg["groups"])
    assert_close(got, want, name="conv2d vs scipy.signal.correlate2d")


# ------------------------------------------------- BN conventions, exactly


@given(seed=S.seeds, n=st.integers(1, 3), hw=st.integers(1, 3), momentum=st.sampled_from([0.1, 0.5, 1.0]))
@example(seed=0, n=1, hw=2, momentum=1.0)  # momentum 1: running stats ARE the batch stats
def test_batch_norm_variance_conventions(seed, n, hw, momentum):
    """Normalize with the biased variance; update running_var with the unbiased one (SPEC §0)."""
    rng = S.rng_from(seed)
    if n * hw * hw < 2:
        n = 2
    x = rng.normal(size=(n, 3, hw, hw))
    gamma, beta = np.ones(3), np.zeros(3)
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    out = ops.batch_norm_train(x, gamma, beta, rm, rv, momentum=momentum, eps=0.0)
    count = n * hw * hw
    for c in range(3):
        vals = x[:, c].ravel()
        biased = np.var(vals, ddof=0)
        unbiased = np.var(vals, ddof=1)
        assert out.batch_var[c] == pytest.approx(biased, rel=1e-12)
        assert out.running_var[c] == pytest.approx((1 - momentum) * rv[c] + momentum * unbiased, rel=1e-12)
        assert out.running_mean[c] == pytest.approx((1 - momentum) * rm[c] + momentum * vals.mean(), rel=1e-12)
        # biased normalization: the normalized values have population variance exactly 1
        assert np.var(out.y[:, c].ravel(), ddof=0) == pytest.approx(1.0, rel=1e-9)
        assert unbiased == pytest.approx(biased * count / (count - 1), rel=1e-12)


def test_batch_norm_zero_variance_channel_is_finite_with_eps():
    x = np.ones((2, 1, 2, 2))  # a dead channel: variance exactly 0
    out = ops.batch_norm_train(x, np.ones(1), np.full(1, 0.25), np.zeros(1), np.ones(1), eps=1e-5)
    assert np.all(out.y == 0.25)
    dx, dg, db = ops.batch_norm_train_backward(np.ones_like(x), x, np.ones(1), eps=1e-5)
    assert np.all(np.isfinite(dx)) and dg[0] == 0.0 and db[0] == 8.0


def test_batch_norm_train_matches_torch_functional():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4, 5, 2))
    g, b, rm, rv = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, size=4)
    out = ops.batch_norm_train(x, g, b, rm, rv, momentum=0.3, eps=1e-3)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    y = torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, torch.tensor(g), torch.tensor(b),
                                       training=True, momentum=0.3, eps=1e-3)
    assert_close(y.numpy(), out.y, name="bn y vs torch")
    assert_close(trm.numpy(), out.running_mean, name="running_mean vs torch")
    assert_close(trv.numpy(), out.running_var, name="running_var vs torch")


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0], [-1000.0, 0.0]])
    loss = ops.softmax_cross_entropy(logits, np.array([0, 1]))
    assert loss == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.isfinite(ops.softmax_cross_entropy_backward(logits, np.array([0, 1]))))


# -------------------------------------------------------------- bad input

BAD_CALLS = [
    ("x must have 4 dimensions", lambda: ops.conv2d(np.ones((3, 3)), np.ones((1, 1, 3, 3)))),
    ("w must have shape", lambda: ops.conv2d(np.ones((1, 2, 3, 3)), np.ones((1, 3, 3, 3)))),
    ("groups=3 must divide", lambda: ops.conv2d(np.ones((1, 4, 3, 3)), np.ones((3, 1, 3, 3)), groups=3)),
    ("stride must be >= 1", lambda: ops.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)), stride=0)),
    ("stride must be an integer", lambda: ops.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)), stride=1.5)),
    ("smaller than the kernel", lambda: ops.conv2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)))),
    ("b must have shape", lambda: ops.conv2d(np.ones((1, 1, 3, 3)), np.ones((2, 1, 3, 3)), np.ones(3))),
    ("w must contain only finite", lambda: ops.conv2d(np.ones((1, 1, 3, 3)), np.full((1, 1, 3, 3), np.nan))),
    ("x must contain only finite", lambda: ops.relu(np.array([np.inf]))),
    ("x must not be empty", lambda: ops.conv2d(np.ones((0, 1, 3, 3)), np.ones((1, 1, 3, 3)))),
    ("gamma must have shape", lambda: ops.batch_norm_train(np.ones((2, 3, 2, 2)), np.ones(2), np.ones(3),
                                                           np.ones(3), np.ones(3))),
    ("at least 2 values per channel", lambda: ops.batch_norm_train(np.ones((1, 1, 1, 1)), np.ones(1), np.ones(1),
                                                                    np.ones(1), np.ones(1))),
    ("momentum must be in", lambda: ops.batch_norm_train(np.ones((2, 1, 1, 1)), np.ones(1), np.ones(1),
                                                          np.ones(1), np.ones(1), momentum=1.5)),
    ("eps must be a finite number >= 0", lambda: ops.batch_norm_eval(np.ones((2, 1, 1, 1)), np.ones(1),
                                                                      np.ones(1), np.ones(1), np.ones(1), eps=-1)),
    ("labels must be in", lambda: ops.softmax_cross_entropy(np.ones((2, 3)), np.array([0, 3]))),
    ("labels must be an integer array", lambda: ops.softmax_cross_entropy(np.ones((2, 3)), np.array([0.0, 1.0]))),
    ("x must be a real numeric array", lambda: ops.relu("abc")),
    ("must be a real numeric array, got dtype complex", lambda: ops.relu(np.array([1j]))),
]


@pytest.mark.parametrize("match, call", BAD_CALLS, ids=[m for m, _ in BAD_CALLS])
def test_bad_input_raises_clear_error(match, call):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_inputs_are_never_mutated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 2, 3, 3))
    rm, rv = np.zeros(2), np.ones(2)
    snapshot = (x.copy(), rm.copy(), rv.copy())
    ops.batch_norm_train(x, np.ones(2), np.zeros(2), rm, rv)
    ops.conv2d_backward(np.ones((2, 2, 3, 3)), x, np.ones((2, 2, 3, 3)), padding=1)
    assert all(np.array_equal(a, b) for a, b in zip((x, rm, rv), snapshot))
