"""SPEC §3 in the reference: CSLA / HyperSearch / target blocks, Grad Mult and the RepOpt theorem.

``python -m tests.test_ref_repopt`` prints the measured AdamW-variant deviation table
quoted in ``docs/03-repopt.md``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from repspec.reference.gradcheck import numerical_gradient
from repspec.reference.kernels import identity_kernel
from repspec.reference.network import Network, train
from repspec.reference.optim import SGD, AdamW, adamw_step, official_weight_decay
from repspec.reference.repopt import (
    CSLABlock,
    HyperSearchBlock,
    RepOptTargetBlock,
    conv_default_init,
    csla_equivalent_kernel,
    csla_equivalent_kernel_backward,
    csla_to_target_params,
    grad_mult_mask,
    hypersearch_scale_init,
    network_grad_mult_masks,
    reinit_target_kernel,
    target_network,
)
from tests import strategies as S
from tests.tolerances import assert_close, tol

# ------------------------------------------------------------------------- helpers


def random_scales(rng, o, *, signed=True):
    """Per-channel scales with |α| in [0.3, 1.5] (random signs if ``signed``)."""
    mag = rng.uniform(0.3, 1.5, size=o)
    return mag * (rng.choice([-1.0, 1.0], size=o) if signed else 1.0)


def make_csla_network(rng, chain, *, num_classes=3, identity=None, signed=True):
    blocks = []
    for k, (cin, cout, stride) in enumerate(chain):
        ident = identity if (identity is not None and cin == cout and stride == 1) else None
        kw = {} if ident is None else {"identity": ident}
        if ident == "constant":
            kw["scale_identity"] = rng.uniform(0.5, 1.5, size=cout)
        blocks.append((f"stage{k}", CSLABlock(cin, cout, stride, scale_conv=random_scales(rng, cout, signed=signed),
                                             scale_1x1=random_scales(rng, cout, signed=signed), **kw)))
    return Network(tuple(blocks), num_classes)


def make_batches(rng, cin, n_batches=2, n=3, hw=6, num_classes=3):
    return [(rng.normal(size=(n, cin, hw, hw)), rng.integers(0, num_classes, size=n)) for _ in range(n_batches)]


def perturb_bn(rng, params, buffers):
    """Non-trivial BN affine parameters and running statistics (so eval mode is not the identity)."""
    params, buffers = dict(params), dict(buffers)
    for k in list(params):
        if k.endswith("bn.weight"):
            params[k] = rng.uniform(0.5, 1.5, size=params[k].shape)
        elif k.endswith("bn.bias"):
            params[k] = rng.normal(0, 0.3, size=params[k].shape)
    for k in list(buffers):
        if k.endswith("running_mean"):
            buffers[k] = rng.normal(0, 0.3, size=buffers[k].shape)
        elif k.endswith("running_var"):
            buffers[k] = rng.uniform(0.5, 2.0, size=buffers[k].shape)
    return params, buffers


def compare_csla_target(csla_net, rec_csla, rec_target, *, kind="theorem", **kw):
    """Everything the theorem says is equal at one iteration (SPEC §3)."""
    i = rec_csla.iteration
    assert_close(rec_target.loss, rec_csla.loss, name="loss", kind=kind, iteration=i, **kw)
    assert_close(rec_target.logits, rec_csla.logits, name="logits", kind=kind, iteration=i, **kw)
    equivalent = csla_to_target_params(csla_net, rec_csla.params)
    assert set(equivalent) == set(rec_target.params)
    for k in sorted(equivalent):
        assert_close(rec_target.params[k], equivalent[k], name=k, kind=kind, iteration=i, **kw)
    assert set(rec_target.buffers) == set(rec_csla.buffers)
    for k in sorted(rec_csla.buffers):
        assert_close(rec_target.buffers[k], rec_csla.buffers[k], name=k, kind=kind, iteration=i, **kw)


def max_kernel_deviation(csla_net, rec_csla, rec_target):
    equivalent = csla_to_target_params(csla_net, rec_csla.params)
    return max(float(np.abs(rec_target.params[k] - equivalent[k]).max()) for k in equivalent if k.endswith("conv.weight"))


# ------------------------------------------------------- names and initialization


def test_parameter_names_match_official_code():
    a = np.ones(4)
    csla = CSLABlock(4, 4, 1, scale_conv=a, scale_1x1=a)
    p = csla.init_params(np.random.default_rng(0))
    assert sorted(p) == sorted(["conv.weight", "conv_1x1.weight", "scale_conv.weight", "scale_1x1.weight",
                                "scale_identity.weight", "bn.weight", "bn.bias"])
    assert sorted(csla.init_buffers()) == ["bn.running_mean", "bn.running_var"]
    assert csla.trainable_names() == ("conv.weight", "conv_1x1.weight", "scale_identity.weight", "bn.weight",
                                      "bn.bias")
    no_id = CSLABlock(4, 4, 2, scale_conv=a, scale_1x1=a)
    assert no_id.identity == "none" and "scale_identity.weight" not in no_id.init_params(np.random.default_rng(0))
    const = CSLABlock(4, 4, 1, scale_conv=a, scale_1x1=a, identity="constant", scale_identity=2 * a)
    assert "scale_identity.weight" not in const.trainable_names()
    np.testing.assert_array_equal(const.init_params(np.random.default_rng(0))["scale_identity.weight"], 2 * a)
    hs = HyperSearchBlock(4, 4, 1, conv_scale_init=0.5)
    hp = hs.init_params(np.random.default_rng(0))
    assert set(hs.trainable_names()) == set(hp)
    np.testing.assert_array_equal(hp["scale_conv.weight"], np.full(4, 0.5))
    np.testing.assert_array_equal(hp["scale_identity.weight"], np.ones(4))
    t = RepOptTargetBlock(4, 8, 2)
    assert sorted(t.init_params(np.random.default_rng(0))) == ["bn.bias", "bn.weight", "conv.weight"]


def test_block_validation():
    a = np.ones(3)
    with pytest.raises(ValueError, match="identity='trainable' needs in_channels == out_channels"):
        CSLABlock(2, 3, 1, scale_conv=a, scale_1x1=a, identity="trainable")
    with pytest.raises(ValueError, match="stride == 1"):
        CSLABlock(3, 3, 2, scale_conv=a, scale_1x1=a, identity="constant")
    with pytest.raises(ValueError, match=r"scale_conv must have shape \(3,\)"):
        CSLABlock(3, 3, scale_conv=np.ones(2), scale_1x1=a)
    with pytest.raises(ValueError, match="scale_1x1 must contain only finite"):
        CSLABlock(3, 3, scale_conv=a, scale_1x1=np.array([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="identity must be one of"):
        CSLABlock(3, 3, scale_conv=a, scale_1x1=a, identity="learned")
    with pytest.raises(ValueError, match="stride must be >= 1"):
        RepOptTargetBlock(3, 3, 0)
    blk = RepOptTargetBlock(3, 3)
    p = blk.init_params(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 3, \*, \*\)"):
        blk.forward(p, blk.init_buffers(), np.zeros((2, 2, 4, 4)), training=True)
    with pytest.raises(TypeError, match="training must be a bool"):
        blk.forward(p, blk.init_buffers(), np.zeros((2, 3, 4, 4)), training=1)


def test_hypersearch_scale_init_is_official_schedule():
    assert hypersearch_scale_init(0, 0) == 1.0
    assert [hypersearch_scale_init(s, 0) for s in (1, 2, 3, 4)] == [1.0] * 4
    for i in range(1, 15):
        assert hypersearch_scale_init(3, i) == pytest.approx(np.sqrt(2.0 / i), rel=0, abs=0)
    with pytest.raises(ValueError, match="block_index must be 0"):
        hypersearch_scale_init(0, 1)
    with pytest.raises(ValueError, match="stage_index must be >= 0"):
        hypersearch_scale_init(-1, 0)


def test_conv_default_init_is_torch_bound():
    w = conv_default_init(np.random.default_rng(1), (64, 8, 3, 3))
    bound = 1 / np.sqrt(8 * 9)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound


# ----------------------------------------------------------------- grad_mult_mask


def test_grad_mult_mask_hand_built():
    a3, a1 = np.array([2.0, -1.0]), np.array([0.5, 3.0])
    expected = np.empty((2, 2, 3, 3))
    expected[0], expected[1] = 4.0, 1.0
    expected[0, :, 1, 1] = 4.0 + 0.25
    expected[1, :, 1, 1] = 1.0 + 9.0
    np.testing.assert_array_equal(grad_mult_mask(a3, a1, 2, identity="none"), expected)
    np.testing.assert_array_equal(grad_mult_mask(a3, a1, 2, identity="constant"), expected)
    with_id = expected.copy()
    with_id[0, 0, 1, 1] += 1.0
    with_id[1, 1, 1, 1] += 1.0
    np.testing.assert_array_equal(grad_mult_mask(a3, a1, 2, identity="trainable"), with_id)
    # exponent 1 (AdamW): signed scales, + 1 on the diagonal
    adam = np.empty((2, 3, 3, 3))
    adam[0], adam[1] = 2.0, -1.0
    adam[0, :, 1, 1], adam[1, :, 1, 1] = 2.5, 2.0
    np.testing.assert_array_equal(grad_mult_mask(a3, a1, 3, identity="none", exponent=1), adam)


def test_grad_mult_mask_validation():
    a = np.ones(3)
    with pytest.raises(ValueError, match="identity='trainable' needs in_channels == out_channels"):
        grad_mult_mask(a, a, 2, identity="trainable")
    with pytest.raises(ValueError, match="identity='constant' needs"):
        grad_mult_mask(a, a, 4, identity="constant")
    with pytest.raises(ValueError, match=r"scale_1x1 must have shape \(3,\)"):
        grad_mult_mask(a, np.ones(2), 3, identity="none")
    with pytest.raises(ValueError, match="scale_conv must have 1 dimensions"):
        grad_mult_mask(np.ones((3, 1)), a, 3, identity="none")
    with pytest.raises(ValueError, match="scale_conv must contain only finite"):
        grad_mult_mask(np.array([1.0, np.nan, 1.0]), a, 3, identity="none")
    with pytest.raises(TypeError, match="scale_1x1 must be a real numeric array"):
        grad_mult_mask(a, "abc", 3, identity="none")
    with pytest.raises(ValueError, match="exponent must be 2"):
        grad_mult_mask(a, a, 3, identity="none", exponent=3)
    with pytest.raises(TypeError, match="in_channels must be an integer"):
        grad_mult_mask(a, a, 3.0, identity="none")
    with pytest.raises(TypeError, match="identity"):
        grad_mult_mask(a, a, 3)  # identity is required


# ------------------------------------------------------- kernel-space functions


@given(S.block_shapes(), S.seeds)
def test_equivalent_kernel_backward_is_the_pullback(shape, seed):
    """CSLA block grads == csla_equivalent_kernel_backward(grad of the target conv at W') (chain rule)."""
    cin, cout, stride = shape
    rng = S.rng_from(seed)
    hs = HyperSearchBlock(cin, cout, stride)
    p = hs.init_params(rng)
    p["scale_conv.weight"], p["scale_1x1.weight"] = random_scales(rng, cout), random_scales(rng, cout)
    has_id = hs._has_identity()
    if has_id:
        p["scale_identity.weight"] = rng.uniform(0.5, 1.5, cout)
    d = p.get("scale_identity.weight")
    x = rng.normal(size=(2, cin, 5, 5))
    y, _, cache = hs.forward(p, hs.init_buffers(), x, training=True)
    dy = rng.normal(size=y.shape)
    dx, g_hs = hs.backward(p, cache, dy)
    tgt = RepOptTargetBlock(cin, cout, stride)
    w = csla_equivalent_kernel(p["conv.weight"], p["conv_1x1.weight"], p["scale_conv.weight"], p["scale_1x1.weight"], d)
    tp = {"conv.weight": w, "bn.weight": p["bn.weight"], "bn.bias": p["bn.bias"]}
    y_t, _, cache_t = tgt.forward(tp, tgt.init_buffers(), x, training=True)
    assert_close(y_t, y, name="y", kind="exact_math")
    dx_t, g_t = tgt.backward(tp, cache_t, dy)
    assert_close(dx_t, dx, name="dx", kind="exact_math")
    pulled = csla_equivalent_kernel_backward(g_t["conv.weight"], p["conv.weight"], p["conv_1x1.weight"],
                                             p["scale_conv.weight"], p["scale_1x1.weight"], d)
    for k, v in pulled.items():
        assert_close(v, g_hs[k], name=k, kind="exact_math")


def test_equivalent_kernel_validation():
    k3, k1, a = np.zeros((3, 2, 3, 3)), np.zeros((3, 2, 1, 1)), np.ones(3)
    with pytest.raises(ValueError, match="scale_identity needs conv_weight with I == O"):
        csla_equivalent_kernel(k3, k1, a, a, a)
    with pytest.raises(ValueError, match=r"conv_1x1_weight must have shape \(3, 2, 1, 1\)"):
        csla_equivalent_kernel(k3, np.zeros((3, 2, 3, 3)), a, a)
    with pytest.raises(ValueError, match=r"scale_conv must have shape \(3,\)"):
        csla_equivalent_kernel(k3, k1, np.ones(2), a)


@given(st.integers(1, 4), S.seeds, st.booleans())
def test_reinit_target_kernel(c, seed, use_identity_scales):
    rng = S.rng_from(seed)
    a3, a1, d = random_scales(rng, c), random_scales(rng, c), rng.uniform(0.5, 1.5, c)
    k3, k1 = rng.normal(size=(c, c, 3, 3)), rng.normal(size=(c, c, 1, 1))
    w = reinit_target_kernel(a3, a1, d, in_channels=c, conv_weight=k3, conv_1x1_weight=k1,
                             use_identity_scales=use_identity_scales)
    expected = csla_equivalent_kernel(k3, k1, a3, a1, d if use_identity_scales else np.ones(c))
    np.testing.assert_array_equal(w, expected)
    # drawn kernels: K3 first, then K1, from conv_default_init; deterministic in the seed
    w1 = reinit_target_kernel(a3, a1, None, in_channels=c + 1, rng=np.random.default_rng(seed))
    r = np.random.default_rng(seed)
    k3d, k1d = conv_default_init(r, (c, c + 1, 3, 3)), conv_default_init(r, (c, c + 1, 1, 1))
    np.testing.assert_array_equal(w1, csla_equivalent_kernel(k3d, k1d, a3, a1))


def test_reinit_target_kernel_validation():
    a = np.ones(2)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        reinit_target_kernel(a, a, in_channels=2)
    with pytest.raises(ValueError, match="scale_identity needs in_channels == 2"):
        reinit_target_kernel(a, a, a, in_channels=3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"conv_weight must have shape \(2, 3, 3, 3\)"):
        reinit_target_kernel(a, a, in_channels=3, conv_weight=np.zeros((2, 2, 3, 3)), rng=np.random.default_rng(0))


# ------------------------------------------------------------ backward vs finite differences


def _fd_check(block, params, buffers, x, training, rng):
    y, _, cache = block.forward(params, buffers, x, training=training)
    assume(np.abs(cache.bn.h).min() > 1e-4)  # away from ReLU kinks
    r = rng.normal(size=y.shape)
    dx, grads = block.backward(params, cache, r)
    assert set(grads) == set(block.trainable_names())

    def loss_x(xx):
        return float((block.forward(params, buffers, xx, training=training)[0] * r).sum())

    t = tol("finite_difference")
    assert_close(dx, numerical_gradient(loss_x, x), name="dx", rtol=t.rtol, atol=t.atol)
    for name in block.trainable_names():
        def loss_p(v, _name=name):
            return float((block.forward({**params, _name: v}, buffers, x, training=training)[0] * r).sum())

        assert_close(grads[name], numerical_gradient(loss_p, params[name]), name=name, rtol=t.rtol, atol=t.atol)


def _block_of_kind(kind, cin, cout, stride, rng):
    if kind == "csla":
        return CSLABlock(cin, cout, stride, scale_conv=random_scales(rng, cout), scale_1x1=random_scales(rng, cout))
    if kind == "csla_constant_identity":
        ident = "constant" if cin == cout and stride == 1 else "none"
        return CSLABlock(cin, cout, stride, scale_conv=random_scales(rng, cout), scale_1x1=random_scales(rng, cout),
                         identity=ident)
    if kind == "hs":
        return HyperSearchBlock(cin, cout, stride, conv_scale_init=float(rng.uniform(0.5, 1.5)))
    return RepOptTargetBlock(cin, cout, stride)


@pytest.mark.parametrize("kind", ["csla", "csla_constant_identity", "hs", "target"])
@given(st.integers(1, 3), st.booleans(), S.strides, st.booleans(), S.seeds)
def test_block_backward_matches_finite_differences(kind, cin, same, stride, training, seed):
    rng = S.rng_from(seed)
    cout = cin if same else cin % 3 + 1
    block = _block_of_kind(kind, cin, cout, stride, rng)
    params, buffers = block.init_params(rng), block.init_buffers()
    if not training:
        params, buffers = perturb_bn(rng, params, buffers)
    if "scale_identity.weight" in params:
        params["scale_identity.weight"] = rng.uniform(0.5, 1.5, cout)
    x = rng.normal(size=(2, cin, 4, 4))
    _fd_check(block, params, buffers, x, training, rng)


# -------------------------------------------------------------- the core theorem


@given(S.block_shapes(), S.sgd_hparams(), S.seeds)
def test_theorem_block_level(shape, hp, seed):
    """One CSLA block + plain SGD == one target block + RepOpt-SGD, at every iteration (readout loss Σ R⊙y)."""
    cin, cout, stride = shape
    rng = S.rng_from(seed)
    csla = CSLABlock(cin, cout, stride, scale_conv=random_scales(rng, cout), scale_1x1=random_scales(rng, cout))
    tgt = RepOptTargetBlock(cin, cout, stride)
    pc, bc = csla.init_params(rng), csla.init_buffers()
    d = pc.get("scale_identity.weight")
    w0 = reinit_target_kernel(pc["scale_conv.weight"], pc["scale_1x1.weight"], d, in_channels=cin,
                              conv_weight=pc["conv.weight"], conv_1x1_weight=pc["conv_1x1.weight"])
    pt, bt = {"conv.weight": w0, "bn.weight": pc["bn.weight"], "bn.bias": pc["bn.bias"]}, tgt.init_buffers()
    mask = grad_mult_mask(pc["scale_conv.weight"], pc["scale_1x1.weight"], cin, identity=csla.identity)
    opt_c, opt_t = SGD(**hp), SGD(**hp, grad_mult_masks={"conv.weight": mask})
    names_c = csla.trainable_names()
    sc, st_ = opt_c.init_state({k: pc[k] for k in names_c}), opt_t.init_state(pt)
    for it in range(5):
        x = rng.normal(size=(3, cin, 5, 5))
        r = rng.normal(size=(3, cout, (5 - 1) // stride + 1, (5 - 1) // stride + 1))
        yc, nbc, cc = csla.forward(pc, bc, x, training=True)
        yt, nbt, ct = tgt.forward(pt, bt, x, training=True)
        assert_close(yt, yc, name="y", kind="theorem", iteration=it)
        _, gc = csla.backward(pc, cc, r)
        _, gt = tgt.backward(pt, ct, r)
        new_c, sc = opt_c.step({k: pc[k] for k in names_c}, gc, sc)
        pc = {**pc, **new_c}
        pt, st_ = opt_t.step(pt, gt, st_)
        bc, bt = nbc, nbt
        w_eq = csla_equivalent_kernel(pc["conv.weight"], pc["conv_1x1.weight"], pc["scale_conv.weight"],
                                      pc["scale_1x1.weight"], pc.get("scale_identity.weight"))
        assert_close(pt["conv.weight"], w_eq, name="W' vs equivalent kernel", kind="theorem", iteration=it)
        for k in ("bn.weight", "bn.bias"):
            assert_close(pt[k], pc[k], name=k, kind="theorem", iteration=it)
        for k in bc:
            assert_close(bt[k], bc[k], name=k, kind="theorem", iteration=it)


@given(S.block_chains(), S.sgd_hparams(), st.booleans(), S.seeds)
def test_theorem_network_level(chain, hp, official_decay, seed):
    """CSLA network + SGD == target network + RepOpt-SGD from W'_0, at every one of 6 iterations (SPEC §3)."""
    rng = S.rng_from(seed)
    net = make_csla_network(rng, chain)
    params, buffers = net.init(rng)
    tnet = target_network(net)
    tparams = csla_to_target_params(net, params)
    masks = network_grad_mult_masks(net, params)
    hp_c, hp_t = dict(hp), dict(hp)
    if official_decay:  # per-name decay of the official set_weight_decay (d decayed, BN/bias not)
        hp_c["weight_decay"] = official_weight_decay({k: params[k] for k in net.trainable_names()}, hp["weight_decay"])
        hp_t["weight_decay"] = official_weight_decay(tparams, hp["weight_decay"])
    batches = make_batches(rng, chain[0][0])
    rec_c = train(net, params, buffers, SGD(**hp_c), batches, 6)
    rec_t = train(tnet, tparams, buffers, SGD(**hp_t, grad_mult_masks=masks), batches, 6)
    for a, b in zip(rec_c, rec_t):
        compare_csla_target(net, a, b)


@given(S.block_chains(max_blocks=2), S.sgd_hparams(), S.seeds)
def test_theorem_constant_identity_exact_without_weight_decay(chain, hp, seed):
    chain = [(chain[0][0], chain[0][0], 1)] + chain  # at least one block with a (constant) identity
    hp = {**hp, "weight_decay": 0.0}
    rng = S.rng_from(seed)
    net = make_csla_network(rng, chain, identity="constant")
    params, buffers = net.init(rng)
    masks = network_grad_mult_masks(net, params)  # no +1: d is constant
    batches = make_batches(rng, chain[0][0])
    rec_c = train(net, params, buffers, SGD(**hp), batches, 5)
    rec_t = train(target_network(net), csla_to_target_params(net, params), buffers,
                  SGD(**hp, grad_mult_masks=masks), batches, 5)
    for a, b in zip(rec_c, rec_t):
        compare_csla_target(net, a, b)


@given(st.integers(1, 4), S.seeds)
def test_theorem_constant_identity_drifts_with_weight_decay(c, seed):
    """λ > 0 also decays the constant part diag(d)·I_c of W': after step 1 the gap is exactly lr·λ·d on the diagonal."""
    lr, lam = 0.1, 0.05
    rng = S.rng_from(seed)
    net = make_csla_network(rng, [(c, c, 1), (c, c, 1)], identity="constant")
    params, buffers = net.init(rng)
    tparams = csla_to_target_params(net, params)
    batches = make_batches(rng, c)
    rec_c = train(net, params, buffers, SGD(lr, weight_decay=lam), batches, 5)
    rec_t = train(target_network(net), tparams, buffers,
                  SGD(lr, weight_decay=lam, grad_mult_masks=network_grad_mult_masks(net, params)), batches, 5)
    eq = csla_to_target_params(net, rec_c[0].params)
    for k in ("stage0", "stage1"):
        d = params[f"{k}.scale_identity.weight"]
        gap = rec_t[0].params[f"{k}.conv.weight"] - eq[f"{k}.conv.weight"]
        assert_close(gap, -lr * lam * d[:, None, None, None] * identity_kernel(c), name=f"{k} gap after step 1",
                     kind="theorem", iteration=0)
    # the gap persists (weight decay keeps removing λ·lr·d from the target): far above the theorem tolerance
    for a, b in zip(rec_c[1:], rec_t[1:]):
        assert max_kernel_deviation(net, a, b) > 0.5 * lr * lam * 0.5


def test_theorem_breaks_without_identity_plus_one():
    """Sanity: dropping the +1 for a trainable d (a wrong mask) is detected at the first step."""
    rng = np.random.default_rng(3)
    net = make_csla_network(rng, [(3, 3, 1)])
    params, buffers = net.init(rng)
    bad = {"stage0.conv.weight": grad_mult_mask(params["stage0.scale_conv.weight"],
                                                params["stage0.scale_1x1.weight"], 3, identity="constant")}
    batches = make_batches(rng, 3)
    rec_c = train(net, params, buffers, SGD(0.1), batches, 1)
    rec_t = train(target_network(net), csla_to_target_params(net, params), buffers, SGD(0.1, grad_mult_masks=bad),
                  batches, 1)
    assert max_kernel_deviation(net, rec_c[0], rec_t[0]) > 1e-6


def test_gradient_clipping_breaks_equivalence():
    """Per-parameter clipping (a non-linear per-branch treatment) breaks the theorem (SPEC §3)."""
    rng = np.random.default_rng(5)
    net = make_csla_network(rng, [(2, 2, 1)])
    params, buffers = net.init(rng)
    x, y = make_batches(rng, 2, n_batches=1)[0]
    _, _, grads, _ = net.loss_and_grads(params, buffers, x, y)
    tnet, tparams = target_network(net), csla_to_target_params(net, params)
    _, _, tgrads, _ = tnet.loss_and_grads(tparams, buffers, x, y)
    clip = 0.5 * min(np.abs(grads["stage0.conv.weight"]).max(), np.abs(tgrads["stage0.conv.weight"]).max())
    clipped = {k: np.clip(v, -clip, clip) for k, v in grads.items()}
    tclipped = {k: np.clip(v, -clip, clip) for k, v in tgrads.items()}
    new, _ = SGD(0.1).step({k: params[k] for k in net.trainable_names()}, clipped, {})
    tnew, _ = SGD(0.1, grad_mult_masks=network_grad_mult_masks(net, params)).step(tparams, tclipped, {})
    eq = csla_to_target_params(net, {**params, **new})
    assert np.abs(eq["stage0.conv.weight"] - tnew["stage0.conv.weight"]).max() > 1e-4


# --------------------------------------------------------------- HyperSearch


def test_hypersearch_network_to_repopt():
    """A trained-HS network's scales give masks/W'_0; CSLA with those scales ≡ target (theorem)."""
    rng = np.random.default_rng(11)
    blocks = (("stage0", HyperSearchBlock(2, 3, 2)), ("stage1.0", HyperSearchBlock(3, 3, 2)),
              ("stage1.1", HyperSearchBlock(3, 3, 1, conv_scale_init=hypersearch_scale_init(1, 1))))
    hs = Network(blocks, 3)
    params, buffers = hs.init(rng)
    batches = make_batches(rng, 2, hw=8)
    recs = train(hs, params, buffers, SGD(0.05, momentum=0.9), batches, 3)
    trained = recs[-1].params
    assert not np.allclose(trained["stage1.1.scale_conv.weight"], np.sqrt(2.0))  # the scales are trained
    scales = {k: v for k, v in trained.items() if ".scale_" in k}
    assert sorted(scales) == sorted(["stage0.scale_conv.weight", "stage0.scale_1x1.weight",
                                     "stage1.0.scale_conv.weight", "stage1.0.scale_1x1.weight",
                                     "stage1.1.scale_conv.weight", "stage1.1.scale_1x1.weight",
                                     "stage1.1.scale_identity.weight"])
    csla = Network(tuple((p, CSLABlock(b.in_channels, b.out_channels, b.stride,
                                       scale_conv=scales[f"{p}.scale_conv.weight"],
                                       scale_1x1=scales[f"{p}.scale_1x1.weight"],
                                       scale_identity=scales.get(f"{p}.scale_identity.weight")))
                         for p, b in blocks), 3)
    cp, cb = csla.init(rng)
    masks_hs = network_grad_mult_masks(hs, trained)
    masks_csla = network_grad_mult_masks(csla, cp)
    for k in masks_hs:
        np.testing.assert_array_equal(masks_hs[k], masks_csla[k])
    rec_c = train(csla, cp, cb, SGD(0.05, momentum=0.9, weight_decay=1e-2), batches, 5)
    rec_t = train(target_network(csla), csla_to_target_params(csla, cp), cb,
                  SGD(0.05, momentum=0.9, weight_decay=1e-2, grad_mult_masks=masks_csla), batches, 5)
    for a, b in zip(rec_c, rec_t):
        compare_csla_target(csla, a, b)


# ------------------------------------------------------------------ AdamW variant


def _csla_adamw_kernel_steps(gs, k3, k1, a3, a1, d, hp):
    """AdamW on each CSLA branch (K3, K1, d) fed the pullback of the same W'-gradient sequence ``gs``."""
    theta = {"conv.weight": k3, "conv_1x1.weight": k1}
    if d is not None:
        theta["scale_identity.weight"] = d
    state = {k: {} for k in theta}
    out = []
    for g in gs:
        pulled = csla_equivalent_kernel_backward(g, theta["conv.weight"], theta["conv_1x1.weight"], a3, a1,
                                                 theta.get("scale_identity.weight"))
        for k in theta:
            theta[k], state[k] = adamw_step(theta[k], pulled[k], state[k], **hp)
        out.append(csla_equivalent_kernel(theta["conv.weight"], theta["conv_1x1.weight"], a3, a1,
                                          theta.get("scale_identity.weight")))
    return out


def _target_adamw_kernel_steps(gs, w0, mask, hp, placement="grad_and_update"):
    w, state, out = w0, {}, []
    for g in gs:
        w, state = adamw_step(w, g, state, grad_mult_mask=mask, mask_placement=placement, **hp)
        out.append(w)
    return out


def _adam_kernel_setup(c, seed, signed):
    rng = S.rng_from(seed)
    a3, a1 = random_scales(rng, c, signed=signed), random_scales(rng, c, signed=signed)
    d = rng.uniform(0.5, 1.5, c)
    k3, k1 = rng.normal(size=(c, c, 3, 3)), rng.normal(size=(c, c, 1, 1))
    gs = [rng.normal(size=(c, c, 3, 3)) * 10.0 ** rng.uniform(-4, 0) for _ in range(6)]
    return a3, a1, d, k3, k1, gs


@given(st.integers(2, 4), S.seeds, st.sampled_from([1e-8, 1e-6, 1e-3]))
def test_adamw_variant_kernel_space_bound(c, seed, eps):
    """Same W'-gradient history: border taps exact, centre taps off by ≤ lr·(n_b−1)·eps·|m̂|/v̂ per step (n_b branches)."""
    hp = dict(lr=0.01, betas=(0.9, 0.999), eps=eps, weight_decay=0.1)
    a3, a1, d, k3, k1, gs = _adam_kernel_setup(c, seed, signed=False)
    w0 = csla_equivalent_kernel(k3, k1, a3, a1, d)
    mask = grad_mult_mask(a3, a1, c, identity="trainable", exponent=1)
    ws_c = _csla_adamw_kernel_steps(gs, k3, k1, a3, a1, d, hp)
    ws_t = _target_adamw_kernel_steps(gs, w0, mask, hp)
    n_b = np.ones((c, c, 3, 3))
    n_b[:, :, 1, 1] = 2
    n_b[np.arange(c), np.arange(c), 1, 1] = 3
    m = v = 0.0
    prev_gap = np.zeros_like(w0)
    for t, (g, wc, wt) in enumerate(zip(gs, ws_c, ws_t), start=1):
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        m_hat, v_hat = m / (1 - 0.9 ** t), v / (1 - 0.999 ** t)
        gap = wt - wc
        step_gap = gap - (1 - hp["lr"] * hp["weight_decay"]) * prev_gap  # this step's contribution
        bound = hp["lr"] * (n_b - 1) * eps * np.abs(m_hat) / v_hat
        assert np.all(np.abs(step_gap) <= bound * (1 + 1e-6) + 1e-13), f"step {t}"
        border = np.ones((3, 3), bool)
        border[1, 1] = False
        assert np.abs(gap[:, :, border]).max() <= 1e-13  # a single branch: exact, eps included
        prev_gap = gap
    assert np.abs(ws_t[-1] - ws_c[-1])[:, :, 1, 1].max() > 1e-13  # but not exact where branches add up


@given(st.integers(2, 4), S.seeds)
def test_adamw_variant_exact_for_eps_zero_and_positive_scales(c, seed):
    hp = dict(lr=0.01, betas=(0.9, 0.999), eps=0.0, weight_decay=0.1)
    a3, a1, d, k3, k1, gs = _adam_kernel_setup(c, seed, signed=False)
    mask = grad_mult_mask(a3, a1, c, identity="trainable", exponent=1)
    ws_c = _csla_adamw_kernel_steps(gs, k3, k1, a3, a1, d, hp)
    ws_t = _target_adamw_kernel_steps(gs, csla_equivalent_kernel(k3, k1, a3, a1, d), mask, hp)
    for t, (wc, wt) in enumerate(zip(ws_c, ws_t)):
        assert_close(wt, wc, name="W'", kind="theorem", iteration=t)


@given(st.integers(2, 4), S.seeds)
def test_adamw_variant_sign_of_scales_breaks_it(c, seed):
    """eps = 0, mixed signs: the first-step centre gap is lr·(|α3| + |α1| − |α3 + α1|) off the diagonal."""
    hp = dict(lr=0.01, betas=(0.9, 0.999), eps=0.0, weight_decay=0.0)
    rng = S.rng_from(seed)
    a3 = rng.uniform(0.3, 1.5, c)
    a1 = -rng.uniform(0.3, 1.5, c)
    k3, k1, d = rng.normal(size=(c, c, 3, 3)), rng.normal(size=(c, c, 1, 1)), np.ones(c)
    g = rng.normal(size=(c, c, 3, 3))
    mask = grad_mult_mask(a3, a1, c, identity="trainable", exponent=1)
    wc = _csla_adamw_kernel_steps([g], k3, k1, a3, a1, d, hp)[0]
    wt = _target_adamw_kernel_steps([g], csla_equivalent_kernel(k3, k1, a3, a1, d), mask, hp)[0]
    expected = hp["lr"] * np.sign(g[:, :, 1, 1]) * (np.abs(a3) + np.abs(a1) - np.abs(a3 + a1))[:, None]
    off = ~np.eye(c, dtype=bool)
    assert_close((wt - wc)[:, :, 1, 1][off], expected[off], name="centre gap", kind="theorem")
    assert np.abs(expected[off]).min() > 0.005  # 2·lr·min|α| ≥ 0.006: a gross deviation


def test_adamw_mask_on_gradient_only_is_cancelled_by_adam():
    """Why the official code multiplies the update too: Adam normalizes a masked gradient back to ±lr."""
    w, g = np.zeros((1, 1, 3, 3)), np.full((1, 1, 3, 3), 0.3)
    mask = np.full((1, 1, 3, 3), 4.0)
    w_grad, _ = adamw_step(w, g, None, lr=0.01, eps=0.0, weight_decay=0.0, grad_mult_mask=mask, mask_placement="grad")
    w_both, _ = adamw_step(w, g, None, lr=0.01, eps=0.0, weight_decay=0.0, grad_mult_mask=mask)
    np.testing.assert_allclose(w_grad, -0.01 * np.ones_like(w), rtol=1e-15)
    np.testing.assert_allclose(w_both, -0.04 * np.ones_like(w), rtol=1e-15)


def adam_ratio_bound(t, betas):
    """``R_t ≥ |m̂_t| / sqrt(v̂_t)`` for ANY gradient history (Cauchy–Schwarz; R_1 = 1).

    ``|m_t| ≤ (1−β1)·sqrt(Σ_{j<t} (β1²/β2)^j)·sqrt(v_t/(1−β2))``, then the bias corrections.
    """
    b1, b2 = betas
    q = sum((b1 * b1 / b2) ** j for j in range(t))
    return (1 - b1) * np.sqrt(q * (1 - b2 ** t) / (1 - b2)) / (1 - b1 ** t)


def adamw_rigorous_gap_bound(net, params, *, lr, betas, weight_decay, n_iter):
    """Per-element worst case of ``|W'_target − W'(CSLA)|`` after ``n_iter`` AdamW steps (positive or any scales).

    Each CSLA branch moves ``W'`` by ≤ ``lr·R_t·|α_b|`` per step, the target by ≤ ``lr·R_t·|M|``; both decay by
    ``(1 − lr·λ)``: ``|gap_T| ≤ Σ_t (1−lr·λ)^{T−t}·lr·R_t·(Σ_b|α_b| + |M|)``.
    """
    out = {}
    for prefix, block in net.blocks:
        a3, a1 = np.abs(params[f"{prefix}.scale_conv.weight"]), np.abs(params[f"{prefix}.scale_1x1.weight"])
        branch_abs = grad_mult_mask(a3, a1, block.in_channels, identity=block.identity, exponent=1)
        m = np.abs(grad_mult_mask(params[f"{prefix}.scale_conv.weight"], params[f"{prefix}.scale_1x1.weight"],
                                  block.in_channels, identity=block.identity, exponent=1))
        total = sum((1 - lr * weight_decay) ** (n_iter - t) * lr * adam_ratio_bound(t, betas)
                    for t in range(1, n_iter + 1))
        out[f"{prefix}.conv.weight"] = total * (branch_abs + m)
    return out


def adamw_network_run(seed, chain, *, eps=1e-8, lr=0.01, weight_decay=0.05, n_iter=6):
    rng = S.rng_from(seed)
    net = make_csla_network(rng, chain, signed=False)
    params, buffers = net.init(rng)
    hp = dict(lr=lr, eps=eps, weight_decay=weight_decay)
    batches = make_batches(rng, chain[0][0])
    rec_c = train(net, params, buffers, AdamW(**hp), batches, n_iter)
    rec_t = train(target_network(net), csla_to_target_params(net, params), buffers,
                  AdamW(**hp, grad_mult_masks=network_grad_mult_masks(net, params, exponent=1)), batches, n_iter)
    return net, params, rec_c, rec_t


def adamw_network_deviation(seed, chain, **kw):
    """Per iteration: (max |ΔW'|, max |Δlogits|, |Δloss|) between CSLA+AdamW and target+masked AdamW."""
    net, _, rec_c, rec_t = adamw_network_run(seed, chain, **kw)
    return [(max_kernel_deviation(net, a, b), float(np.abs(a.logits - b.logits).max()), abs(a.loss - b.loss))
            for a, b in zip(rec_c, rec_t)]


@given(S.block_chains(max_blocks=2), S.seeds)
def test_adamw_variant_network_deviation_bounded_not_zero(chain, seed):
    """Derived worst case holds for every example; the deviation is not zero where ≥ 2 branches share a tap."""
    lr, wd, n_iter = 0.01, 0.05, 6
    net, params, rec_c, rec_t = adamw_network_run(seed, chain, lr=lr, weight_decay=wd, n_iter=n_iter)
    bound = adamw_rigorous_gap_bound(net, params, lr=lr, betas=(0.9, 0.999), weight_decay=wd, n_iter=n_iter)
    eq = csla_to_target_params(net, rec_c[-1].params)
    for k, b in bound.items():
        assert np.all(np.abs(rec_t[-1].params[k] - eq[k]) <= b), k
    assert max_kernel_deviation(net, rec_c[-1], rec_t[-1]) > 1e-13, \
        "the AdamW variant is not exact (every centre tap sums >= 2 branches): zero means the test lost its power"


#: the measured envelope quoted in docs/03-repopt.md (eps = 1e-8, lr = 0.01, λ = 0.05, positive scales in
#: [0.3, 1.5], 6 iterations): the largest of 1000 runs was max|ΔW'| = 1.42e-4, max|Δlogits| = 4.2e-5.
ADAMW_KERNEL_ENVELOPE = 2e-4
ADAMW_LOGIT_ENVELOPE = 1e-4
ADAMW_CHAINS = [[(3, 3, 1), (3, 4, 2)], [(2, 2, 1)], [(4, 4, 1), (4, 4, 1)], [(1, 3, 2), (3, 3, 1)]]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chain", ADAMW_CHAINS, ids=str)
def test_adamw_variant_measured_envelope(chain, seed):
    """Fixed seeds (deterministic): the network-level deviation stays inside the documented envelope."""
    dev = np.array(adamw_network_deviation(seed, chain))
    assert dev[:, 0].max() <= ADAMW_KERNEL_ENVELOPE and dev[:, 1].max() <= ADAMW_LOGIT_ENVELOPE, dev
    assert dev[0, 1] <= 1e-14  # iteration 0's logits come from identical W'_0
    assert dev[-1, 0] > 1e-12  # …but the kernels have already drifted apart


if __name__ == "__main__":  # the measurement quoted in docs/03-repopt.md (about 30 s)
    runs = np.array([adamw_network_deviation(seed, chain) for seed in range(250) for chain in ADAMW_CHAINS])
    print(f"{len(runs)} runs: CSLA+AdamW vs target+masked AdamW, eps=1e-8, lr=0.01, weight decay 0.05")
    print("iteration  max|dW'| median  p99        max        max|dlogits| median  p99        max")
    for i in range(runs.shape[1]):
        k, lg = runs[:, i, 0], runs[:, i, 1]
        print(f"{i:9d}  {np.median(k):.2e}         {np.quantile(k, .99):.2e}   {k.max():.2e}   "
              f"{np.median(lg):.2e}             {np.quantile(lg, .99):.2e}   {lg.max():.2e}")
