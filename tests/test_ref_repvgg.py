"""SPEC §2 (and §4 inside a block): RepVGG and QARepVGG blocks, fusion, fusion's backward.

- every block backward (train and eval; plain, OABN "clip", OABN "straight_through"
  through its surrogate; QARepVGG) equals central finite differences;
- the fused conv equals the multi-branch block in eval mode (groups 1 and 2, dead
  channels, huge identity ratios, OABN, QARepVGG folded and kept);
- fusion's backward equals finite differences of the fusion;
- training mode updates running statistics with the unbiased variance;
- bad input is refused with a message naming the argument.

ReLU kinks: the block's pre-activation is read from the forward's cache and examples
with |pre| < 1e-4 are rejected, so no finite-difference step crosses the kink. OABN
factors are kept at |t| ≤ 0.6·s or ≥ 1.5·s for the same reason.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from repspec.reference import ops
from repspec.reference.gradcheck import numerical_gradient
from repspec.reference.kernels import identity_kernel
from repspec.reference.network import Block
from repspec.reference.repvgg import (
    QARepVGGBlock,
    RepVGGBlock,
    deploy_forward,
    deploy_forward_backward,
    deploy_state,
    fuse_qarepvgg_block,
    fuse_qarepvgg_block_backward,
    fuse_repvgg_block,
    fuse_repvgg_block_backward,
)
from tests import strategies as S
from tests.tolerances import assert_close

INF = float("inf")
KINK = 1e-4


# ------------------------------------------------------------------------ helpers


def _random_state(block, rng, *, dead: bool = False, huge_t0: bool = False):
    """Random params and buffers (not the init: γ, β, μ, σ² all random)."""
    params = {}
    for k, shape in block.param_shapes().items():
        params[k] = rng.normal(size=shape) * (0.5 if len(shape) == 4 else 1.0)
        if k.endswith(".weight") and len(shape) == 1:
            params[k] = params[k] + np.sign(params[k])  # |γ| ≥ 1, nowhere near 0
    buffers = {k: (rng.uniform(0.2, 2.0, s) if k.endswith("running_var") else rng.normal(size=s))
               for k, s in block.buffer_shapes().items()}
    if dead:  # a dead channel: running variance exactly 0 (only eps keeps t finite)
        for k in buffers:
            if k.endswith("running_var"):
                buffers[k][0] = 0.0
    if huge_t0 and "rbr_identity.weight" in params:  # t0 ~ 1e3
        v = buffers["rbr_identity.running_var"]
        params["rbr_identity.weight"] = rng.uniform(800, 1500, v.shape) * np.sqrt(v + block.bn_eps)
    return params, buffers


def _loss_and_check_fd(fn, arrays: dict, analytic: dict, kind="finite_difference", h=1e-6):
    """``fn(arrays) -> scalar``; compare every analytic gradient with central differences."""
    for name, value in arrays.items():
        fd = numerical_gradient(lambda a, name=name: fn({**arrays, name: a}), value, h=h)
        assert_close(analytic[name], fd, name=f"d/d {name}", kind=kind)


def _pre(block, params, buffers, x, training):
    return block.forward(params, buffers, x, training=training)[2].pre


def _set_oabn_gamma(block, params, buffers, x, training, rng, s, *, clip_some: bool):
    """Choose γ0 so that t0 is far from ±s (|t0| ≤ 0.6s, or ≥ 1.5s when clip_some)."""
    var = x.var(axis=(0, 2, 3)) if training else buffers["rbr_identity.running_var"]
    c = var.shape[0]
    clipped = rng.random(c) < 0.5 if clip_some else np.zeros(c, bool)
    mag = np.where(clipped, rng.uniform(1.5, 3.0, c), rng.uniform(0.2, 0.6, c)) * s
    params = dict(params)
    params["rbr_identity.weight"] = mag * rng.choice([-1.0, 1.0], c) * np.sqrt(var + block.bn_eps)
    return params, clipped


# batch 1..3, non-square (h, w) in 3..5 each: N·H·W >= 4 after a stride-2 conv, enough for training BN
block_args = dict(cfg=S.grouped_block_shapes(), n=st.integers(1, 3), hw=st.tuples(st.integers(3, 5), st.integers(3, 5)),
                  seed=S.seeds)


def _setup(block_cls, cfg, n, hw, seed, **kw):
    cin, cout, stride, groups = cfg
    block = block_cls(cin, cout, stride, groups, **kw)
    rng = S.rng_from(seed)
    params, buffers = _random_state(block, rng)
    x = rng.normal(size=(n, cin, *hw))
    return block, rng, params, buffers, x


# ----------------------------------------------------------------- Block protocol


def test_blocks_implement_the_protocol_with_official_names():
    b = RepVGGBlock(4, 4)
    assert isinstance(b, Block) and isinstance(QARepVGGBlock(4, 4), Block)
    assert set(b.init_params(np.random.default_rng(0))) == {
        "rbr_dense.conv.weight", "rbr_dense.bn.weight", "rbr_dense.bn.bias",
        "rbr_1x1.conv.weight", "rbr_1x1.bn.weight", "rbr_1x1.bn.bias",
        "rbr_identity.weight", "rbr_identity.bias"}
    assert set(b.init_buffers()) == {f"{p}.{s}" for p in ("rbr_dense.bn", "rbr_1x1.bn", "rbr_identity")
                                     for s in ("running_mean", "running_var")}
    assert not any(k.startswith("rbr_identity") for k in RepVGGBlock(4, 4, stride=2).init_params(
        np.random.default_rng(0)))
    assert not any(k.startswith("rbr_identity") for k in RepVGGBlock(4, 6).init_buffers())
    qa = QARepVGGBlock(4, 4, groups=2)
    assert set(qa.trainable_names()) == {"rbr_dense.conv.weight", "rbr_dense.bn.weight", "rbr_dense.bn.bias",
                                         "rbr_1x1.weight", "bn.weight", "bn.bias"}
    assert qa.init_params(np.random.default_rng(0))["rbr_1x1.weight"].shape == (4, 2, 1, 1)


def test_init_is_kaiming_normal_gamma_one_beta_zero():
    b = RepVGGBlock(64, 64, groups=2)
    p = b.init_params(np.random.default_rng(0))
    fan_in = 32 * 9
    assert abs(p["rbr_dense.conv.weight"].std() / np.sqrt(2 / fan_in) - 1) < 0.02
    assert abs(p["rbr_1x1.conv.weight"].std() / np.sqrt(2 / 32) - 1) < 0.05
    for k in ("rbr_dense.bn", "rbr_1x1.bn", "rbr_identity"):
        np.testing.assert_array_equal(p[f"{k}.weight"], np.ones(64))
        np.testing.assert_array_equal(p[f"{k}.bias"], np.zeros(64))
    buf = b.init_buffers()
    np.testing.assert_array_equal(buf["rbr_identity.running_mean"], np.zeros(64))
    np.testing.assert_array_equal(buf["rbr_identity.running_var"], np.ones(64))


# ------------------------------------------------------------- forward semantics


@given(**block_args, training=st.booleans())
def test_repvgg_forward_is_the_sum_of_three_branches(cfg, n, hw, seed, training):
    block, rng, params, buffers, x = _setup(RepVGGBlock, cfg, n, hw, seed)
    y, nb, _ = block.forward(params, buffers, x, training=training)
    s, g = block.stride, block.groups
    z3 = ops.conv2d(x, params["rbr_dense.conv.weight"], stride=s, padding=1, groups=g)
    z1 = ops.conv2d(x, params["rbr_1x1.conv.weight"], stride=s, padding=0, groups=g)
    branches = [("rbr_dense.bn", z3), ("rbr_1x1.bn", z1)] + ([("rbr_identity", x)] if block.has_identity else [])
    pre = 0
    for p, z in branches:
        args = (z, params[f"{p}.weight"], params[f"{p}.bias"], buffers[f"{p}.running_mean"],
                buffers[f"{p}.running_var"])
        if training:
            r = ops.batch_norm_train(*args)
            pre = pre + r.y
            m = z.mean(axis=(0, 2, 3))
            v_unbiased = z.var(axis=(0, 2, 3), ddof=1)
            assert_close(nb[f"{p}.running_mean"], 0.9 * args[3] + 0.1 * m, name=f"{p}.running_mean")
            assert_close(nb[f"{p}.running_var"], 0.9 * args[4] + 0.1 * v_unbiased, name=f"{p}.running_var",
                         rtol=1e-13, atol=0)
        else:
            pre = pre + ops.batch_norm_eval(*args)
            np.testing.assert_array_equal(nb[f"{p}.running_var"], buffers[f"{p}.running_var"])
    assert_close(y, np.maximum(pre, 0), name="y")


@given(**block_args, training=st.booleans())
def test_qarepvgg_forward_formula(cfg, n, hw, seed, training):
    block, rng, params, buffers, x = _setup(QARepVGGBlock, cfg, n, hw, seed)
    y, nb, _ = block.forward(params, buffers, x, training=training)
    s, g = block.stride, block.groups
    bn = ops.batch_norm_train if training else ops.batch_norm_eval

    def run(p, z):
        out = bn(z, params[f"{p}.weight"], params[f"{p}.bias"], buffers[f"{p}.running_mean"],
                 buffers[f"{p}.running_var"])
        return out.y if training else out

    z3 = ops.conv2d(x, params["rbr_dense.conv.weight"], stride=s, padding=1, groups=g)
    mid = run("rbr_dense.bn", z3) + ops.conv2d(x, params["rbr_1x1.weight"], stride=s, groups=g)
    if block.has_identity:
        mid = mid + x
    assert_close(y, np.maximum(run("bn", mid), 0), name="y")
    if training:
        assert_close(nb["bn.running_var"], 0.9 * buffers["bn.running_var"] + 0.1 * mid.var(axis=(0, 2, 3), ddof=1),
                     name="bn.running_var", rtol=1e-13, atol=0)


def test_inputs_are_not_mutated():
    block = RepVGGBlock(3, 3, oabn_threshold=1.0)
    rng = np.random.default_rng(1)
    params, buffers = _random_state(block, rng)
    x = rng.normal(size=(2, 3, 4, 4))
    snap = ({k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in buffers.items()}, x.copy())
    for training in (True, False):
        y, nb, cache = block.forward(params, buffers, x, training=training)
        block.backward(params, cache, np.ones_like(y))
        nb["rbr_identity.running_var"][:] = -7  # returned buffers never alias the inputs
    block.fuse(params, buffers)
    for a, b in zip(snap[0].values(), params.values()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(snap[1].values(), buffers.values()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(snap[2], x)


# ----------------------------------------------------------- backward vs FD


def _block_fd(block, params, buffers, x, training, rng, surrogate=None):
    """Check block.backward against FD of L = Σ y·R over every parameter and x.

    ``surrogate(params, x) -> pre`` replaces the block's pre-activation in the loss
    (used for the straight-through estimator); at the base point it equals the block's.
    """
    pre = _pre(block, params, buffers, x, training)
    assume(np.all(np.abs(pre) > KINK))
    y, _, cache = block.forward(params, buffers, x, training=training)
    R = rng.normal(size=y.shape)
    dx, grads = block.backward(params, cache, R)
    assert set(grads) == set(block.trainable_names())

    def loss(d):
        p = {k: d[k] for k in params}
        if surrogate is None:
            out = block.forward(p, buffers, d["x"], training=training)[0]
        else:
            out = np.maximum(surrogate(p, d["x"]), 0)
        return float((out * R).sum())

    _loss_and_check_fd(loss, {**params, "x": x}, {**grads, "x": dx})


@given(**block_args, training=st.booleans())
def test_repvgg_backward_matches_finite_differences(cfg, n, hw, seed, training):
    block, rng, params, buffers, x = _setup(RepVGGBlock, cfg, n, hw, seed)
    _block_fd(block, params, buffers, x, training, rng)


@given(**block_args, training=st.booleans(), s=st.sampled_from([0.5, 2.0]))
def test_repvgg_oabn_clip_backward_matches_finite_differences(cfg, n, hw, seed, training, s):
    cin, _, stride, groups = cfg
    block, rng, params, buffers, x = _setup(RepVGGBlock, (cin, cin, 1, groups), n, hw, seed, oabn_threshold=s)
    params, _ = _set_oabn_gamma(block, params, buffers, x, training, rng, s, clip_some=True)
    _block_fd(block, params, buffers, x, training, rng)


@given(**block_args, training=st.booleans(), s=st.sampled_from([0.5, 2.0]))
def test_repvgg_oabn_straight_through_is_the_surrogate_gradient(cfg, n, hw, seed, training, s):
    # ST = exact gradient of the block whose identity is (t − sg(t − t̃))·(x − μ) + β,
    # i.e. plain-BN identity minus frozen·(x − μ); μ = batch mean (train) or running mean (eval)
    cin, _, stride, groups = cfg
    block, rng, params, buffers, x = _setup(RepVGGBlock, (cin, cin, 1, groups), n, hw, seed, oabn_threshold=s,
                                            oabn_gradient="straight_through")
    params, clipped = _set_oabn_gamma(block, params, buffers, x, training, rng, s, clip_some=True)
    plain = RepVGGBlock(cin, cin, 1, groups)
    var = x.var(axis=(0, 2, 3)) if training else buffers["rbr_identity.running_var"]
    t0 = params["rbr_identity.weight"] / np.sqrt(var + block.bn_eps)
    frozen = (t0 - np.clip(t0, -s, s))[None, :, None, None]

    def surrogate(p, xx):
        mu = xx.mean(axis=(0, 2, 3), keepdims=True) if training else \
            buffers["rbr_identity.running_mean"][None, :, None, None]
        return _pre(plain, p, buffers, xx, training) - frozen * (xx - mu)

    assert_close(surrogate(params, x), _pre(block, params, buffers, x, training), name="surrogate at the point")
    _block_fd(block, params, buffers, x, training, rng, surrogate=surrogate)


@given(**block_args, training=st.booleans())
def test_qarepvgg_backward_matches_finite_differences(cfg, n, hw, seed, training):
    block, rng, params, buffers, x = _setup(QARepVGGBlock, cfg, n, hw, seed)
    _block_fd(block, params, buffers, x, training, rng)


# ------------------------------------------------------------------ fusion


def _stats_state(block, seed, dead, huge):
    rng = S.rng_from(seed)
    params, buffers = _random_state(block, rng, dead=dead, huge_t0=huge)
    return rng, params, buffers


fusion_args = dict(cfg=S.grouped_block_shapes(max_per_group=3), seed=S.seeds, dead=st.booleans(),
                   huge=st.booleans())


@given(**fusion_args, s=st.sampled_from([INF, INF, 0.5, 3.0]))
@example(cfg=(4, 4, 1, 2), seed=0, dead=True, huge=False, s=INF)  # dead channels, groups 2
@example(cfg=(3, 3, 1, 1), seed=1, dead=False, huge=True, s=INF)  # t0 ~ 1e3
@example(cfg=(3, 3, 1, 1), seed=2, dead=True, huge=True, s=INF)
@example(cfg=(4, 4, 1, 2), seed=3, dead=True, huge=True, s=1.0)  # OABN clips the huge t0
@example(cfg=(2, 4, 2, 2), seed=4, dead=True, huge=False, s=INF)  # no identity, stride 2
def test_fused_repvgg_equals_multibranch_in_eval(cfg, seed, dead, huge, s):
    cin, cout, stride, groups = cfg
    block = RepVGGBlock(cin, cout, stride, groups, oabn_threshold=s)
    rng, params, buffers = _stats_state(block, seed, dead, huge)
    x = rng.normal(size=(2, cin, 5, 4))
    y, _, _ = block.forward(params, buffers, x, training=False)
    kernel, bias = block.fuse(params, buffers)
    assert kernel.shape == (cout, cin // groups, 3, 3) and bias.shape == (cout,)
    assert_close(deploy_forward(x, kernel, bias, stride=stride, groups=groups), y, name="fused vs multi-branch")
    if block.has_identity and s < INF:
        t0 = np.clip(ops.bn_factor(params["rbr_identity.weight"], buffers["rbr_identity.running_var"], 1e-5), -s, s)
        plain_k, _ = RepVGGBlock(cin, cout, stride, groups).fuse(params, buffers)
        t0_plain = ops.bn_factor(params["rbr_identity.weight"], buffers["rbr_identity.running_var"], 1e-5)
        assert_close(kernel - plain_k, ((t0 - t0_plain)[:, None, None, None] * identity_kernel(cout, groups)),
                     name="OABN changes only the identity taps")


@given(**fusion_args, fold=st.booleans())
@example(cfg=(4, 4, 1, 2), seed=0, dead=True, huge=False, fold=True)
@example(cfg=(4, 4, 1, 2), seed=0, dead=True, huge=False, fold=False)
@example(cfg=(3, 5, 2, 1), seed=1, dead=False, huge=False, fold=True)
def test_fused_qarepvgg_equals_multibranch_in_eval(cfg, seed, dead, huge, fold):
    cin, cout, stride, groups = cfg
    block = QARepVGGBlock(cin, cout, stride, groups)
    rng, params, buffers = _stats_state(block, seed, dead, huge)
    x = rng.normal(size=(2, cin, 4, 5))
    y, _, _ = block.forward(params, buffers, x, training=False)
    out = block.fuse(params, buffers, fold_post_bn=fold)
    if fold:
        kernel, bias = out
        got = deploy_forward(x, kernel, bias, stride=stride, groups=groups)
    else:
        kernel, bias, post = out
        assert set(post) == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"}
        z = ops.conv2d(x, kernel, bias, stride=stride, padding=1, groups=groups)
        got = np.maximum(ops.batch_norm_eval(z, post["bn.weight"], post["bn.bias"], post["bn.running_mean"],
                                             post["bn.running_var"]), 0)
        t3 = ops.bn_factor(params["rbr_dense.bn.weight"], buffers["rbr_dense.bn.running_var"], 1e-5)
        assert_close(bias, params["rbr_dense.bn.bias"] - buffers["rbr_dense.bn.running_mean"] * t3, name="b")
    assert_close(got, y, name=f"fused (fold_post_bn={fold}) vs multi-branch")


def test_deploy_state_uses_official_names():
    k, b = np.zeros((2, 2, 3, 3)), np.zeros(2)
    assert set(deploy_state(k, b)) == {"rbr_reparam.weight", "rbr_reparam.bias"}


# --------------------------------------------------------- fusion backward vs FD
#
# Fusion is linear in each single parameter (running statistics are constants), so
# central differences are exact up to rounding for any step; h = 1e-3 keeps the
# rounding error O(eps·|L|/h) small even for dead channels (t ~ 1/sqrt(eps), |L| ~ 1e5).
# OABN clipping is the only kink: there dead channels are excluded (a step of 1e-3 in
# γ0 would move t0 = γ0/sqrt(eps) by 0.3) and |t0| stays ≥ 0.4·s away from ±s.
FUSION_H = 1e-3


def _fusion_fd(fuse, fuse_bwd, params, buffers, rng, kw, n_out=2, surrogate=None):
    k, b = fuse(params, buffers, **kw)[:n_out]
    rk, rb = rng.normal(size=k.shape), rng.normal(size=b.shape)
    grads = fuse_bwd(rk, rb, params, buffers, **kw)

    def loss(p):
        kk, bb = (fuse(p, buffers, **kw)[:2] if surrogate is None else surrogate(p))
        return float((kk * rk).sum() + (bb * rb).sum())

    _loss_and_check_fd(loss, params, grads, h=FUSION_H)


@given(**fusion_args, s=st.sampled_from([INF, 0.5, 2.0]))
def test_repvgg_fusion_backward_matches_finite_differences(cfg, seed, dead, huge, s):
    cin, cout, stride, groups = cfg
    block = RepVGGBlock(cin, cout, stride, groups)
    rng, params, buffers = _stats_state(block, seed, dead and s == INF, False)
    if block.has_identity and s < INF:
        x_unused = np.zeros((2, cin, 1, 1))
        params, _ = _set_oabn_gamma(block, params, buffers, x_unused, False, rng, s, clip_some=True)
    kw = dict(in_channels=cin, out_channels=cout, stride=stride, groups=groups, oabn_threshold=s)
    _fusion_fd(fuse_repvgg_block, fuse_repvgg_block_backward, params, buffers, rng, kw)


@given(cfg=S.grouped_block_shapes(max_per_group=3), seed=S.seeds, s=st.sampled_from([0.5, 2.0]))
def test_repvgg_fusion_backward_straight_through_is_the_surrogate_gradient(cfg, seed, s):
    cin, _, _, groups = cfg
    block = RepVGGBlock(cin, cin, 1, groups)
    rng, params, buffers = _stats_state(block, seed, False, False)
    params, _ = _set_oabn_gamma(block, params, buffers, np.zeros((2, cin, 1, 1)), False, rng, s, clip_some=True)
    var, mu = buffers["rbr_identity.running_var"], buffers["rbr_identity.running_mean"]
    t0 = params["rbr_identity.weight"] / np.sqrt(var + 1e-5)
    frozen = t0 - np.clip(t0, -s, s)
    kw = dict(in_channels=cin, out_channels=cin, stride=1, groups=groups, oabn_threshold=s,
              oabn_gradient="straight_through")
    ikern = identity_kernel(cin, groups)

    def surrogate(p):  # plain fusion with t0 − frozen in place of t̃0
        k, b = fuse_repvgg_block(p, buffers, in_channels=cin, out_channels=cin, stride=1, groups=groups)
        return k - frozen[:, None, None, None] * ikern, b + mu * frozen

    fuse_kw = {k: v for k, v in kw.items() if k != "oabn_gradient"}
    assert_close(surrogate(params)[0], fuse_repvgg_block(params, buffers, **fuse_kw)[0], name="surrogate K")

    def fuse(p, b, **k):
        return fuse_repvgg_block(p, b, **fuse_kw)

    _fusion_fd(fuse, fuse_repvgg_block_backward, params, buffers, rng, kw, surrogate=surrogate)


@given(**fusion_args, fold=st.booleans())
def test_qarepvgg_fusion_backward_matches_finite_differences(cfg, seed, dead, huge, fold):
    cin, cout, stride, groups = cfg
    block = QARepVGGBlock(cin, cout, stride, groups)
    rng, params, buffers = _stats_state(block, seed, dead, False)
    kw = dict(in_channels=cin, out_channels=cout, stride=stride, groups=groups, fold_post_bn=fold)
    k, b = fuse_qarepvgg_block(params, buffers, **kw)[:2]
    rk, rb = rng.normal(size=k.shape), rng.normal(size=b.shape)
    grads = fuse_qarepvgg_block_backward(rk, rb, params, buffers, **kw)
    branch = {n: v for n, v in params.items() if fold or not n.startswith("bn.")}
    assert set(grads) == set(branch)

    def loss(p):
        kk, bb = fuse_qarepvgg_block({**params, **p}, buffers, **kw)[:2]
        return float((kk * rk).sum() + (bb * rb).sum())

    _loss_and_check_fd(loss, branch, grads, h=FUSION_H)


@given(**block_args)
def test_qat_chain_deploy_then_fusion_backward_matches_finite_differences(cfg, n, hw, seed):
    # SPEC §5 QAT skeleton (no quantizer): y = deploy(x; fuse(θ)); ∂L/∂θ = fuse_backward(deploy_backward)
    block, rng, params, buffers, x = _setup(RepVGGBlock, cfg, n, hw, seed)
    kernel, bias = block.fuse(params, buffers)
    pre = ops.conv2d(x, kernel, bias, stride=block.stride, padding=1, groups=block.groups)
    assume(np.all(np.abs(pre) > KINK))
    R = rng.normal(size=pre.shape)
    dx, dk, db = deploy_forward_backward(R, x, kernel, bias, stride=block.stride, groups=block.groups)
    grads = block.fuse_backward(dk, db, params, buffers)

    def loss(d):
        k, b = block.fuse({n: d[n] for n in params}, buffers)
        return float((block.deploy_forward(d["x"], k, b) * R).sum())

    _loss_and_check_fd(loss, {**params, "x": x}, {**grads, "x": dx})
    # and in eval mode the chain's gradients equal the multi-branch block's eval backward
    y, _, cache = block.forward(params, buffers, x, training=False)
    dx_mb, grads_mb = block.backward(params, cache, R)
    assert_close(dx, dx_mb, name="dx chain vs multi-branch")
    for k in grads_mb:
        assert_close(grads[k], grads_mb[k], name=f"{k} chain vs multi-branch")


# -------------------------------------------------------------------- bad input


def _good(block, seed=0):
    return _random_state(block, np.random.default_rng(seed))


def _with(tree, **changes):
    out = dict(tree)
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            out.pop(k)
        else:
            out[k] = v
    return out


def _bad_cases():
    b44 = RepVGGBlock(4, 4)
    p44, bu44 = _good(b44)
    b46 = RepVGGBlock(4, 6)
    p46, bu46 = _good(b46)
    b44s2 = RepVGGBlock(4, 4, stride=2)
    p44s2, bu44s2 = _good(b44s2)
    qa = QARepVGGBlock(4, 4)
    pqa, buqa = _good(qa)
    x = np.ones((2, 4, 3, 3))
    kw44 = dict(in_channels=4, out_channels=4, stride=1)
    nan_k = p44["rbr_dense.conv.weight"].copy()
    nan_k[0, 0, 0, 0] = np.nan
    inf_k = nan_k.copy()
    inf_k[0, 0, 0, 0] = np.inf
    return [
        ("5x5 dense kernel", lambda: fuse_repvgg_block(_with(p44, rbr_dense__conv__weight=np.ones((4, 4, 5, 5))), bu44,
                                                       **kw44), ValueError, r"rbr_dense\.conv\.weight.*\(4, 4, 3, 3\)"),
        ("1x1 branch given 3x3", lambda: fuse_repvgg_block(
            _with(p44, rbr_1x1__conv__weight=np.ones((4, 4, 3, 3))), bu44, **kw44),
         ValueError, r"rbr_1x1\.conv\.weight"),
        ("identity params with in != out", lambda: fuse_repvgg_block(
            {**p46, "rbr_identity.weight": np.ones(6), "rbr_identity.bias": np.ones(6)}, bu46,
            in_channels=4, out_channels=6, stride=1), ValueError, r"unexpected keys.*rbr_identity.*no identity"),
        ("identity params with stride 2", lambda: b44s2.forward(
            {**p44s2, "rbr_identity.weight": np.ones(4), "rbr_identity.bias": np.ones(4)}, bu44s2, x, training=True),
         ValueError, r"params has unexpected keys.*rbr_identity"),
        ("identity buffers with stride 2", lambda: fuse_repvgg_block(p44s2, bu44, in_channels=4, out_channels=4,
                                                                      stride=2), ValueError, r"buffers.*rbr_identity"),
        ("identity missing", lambda: b44.forward(_with(p44, rbr_identity__weight=None), bu44, x, training=False),
         ValueError, r"params is missing \['rbr_identity\.weight'\]"),
        ("identity buffers missing", lambda: fuse_repvgg_block(p44, _with(bu44, rbr_identity__running_var=None),
                                                               **kw44), ValueError, r"buffers is missing"),
        ("wrong gamma shape", lambda: b44.fuse(_with(p44, rbr_1x1__bn__weight=np.ones(3)), bu44),
         ValueError, r"rbr_1x1\.bn\.weight.*\(4\)"),
        ("NaN weight", lambda: b44.fuse(_with(p44, rbr_dense__conv__weight=nan_k), bu44), ValueError,
         r"rbr_dense\.conv\.weight.*finite"),
        ("Inf weight", lambda: b44.forward(_with(p44, rbr_dense__conv__weight=inf_k), bu44, x, training=True),
         ValueError, r"rbr_dense\.conv\.weight.*finite"),
        ("negative running var", lambda: b44.fuse(p44, _with(bu44, rbr_dense__bn__running_var=-np.ones(4))),
         ValueError, r"rbr_dense\.bn\.running_var.*>= 0"),
        ("negative threshold", lambda: RepVGGBlock(4, 4, oabn_threshold=-1.0), ValueError, "oabn_threshold"),
        ("NaN threshold", lambda: fuse_repvgg_block(p44, bu44, **kw44, oabn_threshold=float("nan")), ValueError,
         "oabn_threshold"),
        ("zero threshold", lambda: RepVGGBlock(4, 4, oabn_threshold=0.0), ValueError, "oabn_threshold"),
        ("bad gradient mode", lambda: RepVGGBlock(4, 4, oabn_gradient="ste"), ValueError, "oabn_gradient"),
        ("groups do not divide", lambda: RepVGGBlock(4, 6, groups=4), ValueError, "groups"),
        ("zero channels", lambda: RepVGGBlock(0, 4), ValueError, "in_channels"),
        ("float channels", lambda: QARepVGGBlock(4.0, 4), TypeError, "in_channels"),
        ("x wrong channels", lambda: b44.forward(p44, bu44, np.ones((2, 3, 3, 3)), training=True), ValueError,
         r"x must have shape \(\*, 4, \*, \*\)"),
        ("empty x", lambda: b44.forward(p44, bu44, np.ones((0, 4, 3, 3)), training=False), ValueError, "x"),
        ("training not bool", lambda: b44.forward(p44, bu44, x, training=1), TypeError, "training"),
        ("params not a mapping", lambda: b44.forward([1], bu44, x, training=True), TypeError, "params"),
        ("dkernel wrong shape", lambda: fuse_repvgg_block_backward(np.ones((4, 4, 1, 1)), np.ones(4), p44, bu44,
                                                                   **kw44), ValueError, "dkernel"),
        ("dbias NaN", lambda: fuse_repvgg_block_backward(np.ones((4, 4, 3, 3)), np.full(4, np.nan), p44, bu44,
                                                         **kw44), ValueError, "dbias"),
        ("qa 1x1 under the RepVGG name", lambda: qa.fuse({**_with(pqa, rbr_1x1__weight=None),
                                                          "rbr_1x1.conv.weight": np.ones((4, 4, 1, 1))}, buqa),
         ValueError, r"missing \['rbr_1x1\.weight'\].*unexpected keys \['rbr_1x1\.conv\.weight'\]"),
        ("qa fold not bool", lambda: qa.fuse(pqa, buqa, fold_post_bn="yes"), TypeError, "fold_post_bn"),
        ("qa post bn missing", lambda: qa.fuse(pqa, _with(buqa, bn__running_var=None)), ValueError,
         r"buffers is missing \['bn\.running_var'\]"),
        ("deploy kernel 1x1", lambda: deploy_forward(x, np.ones((4, 4, 1, 1)), np.ones(4)), ValueError, "kernel"),
        ("deploy bias shape", lambda: deploy_forward(x, np.ones((4, 4, 3, 3)), np.ones(3)), ValueError, "bias"),
        ("foreign cache", lambda: b44.backward(p44, ("not", "a", "cache"), np.ones((2, 4, 3, 3))), TypeError,
         "cache"),
    ]


@pytest.mark.parametrize("what, call, exc, match", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_is_refused(what, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_backward_dy_shape_is_checked():
    block = RepVGGBlock(2, 2)
    params, buffers = _good(block)
    y, _, cache = block.forward(params, buffers, np.ones((2, 2, 3, 3)), training=True)
    with pytest.raises(ValueError, match="dy"):
        block.backward(params, cache, np.ones((2, 2, 3, 4)))
