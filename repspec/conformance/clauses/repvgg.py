"""Conformance clauses of SPEC §2 RepVGG and QARepVGG fusion."""

from __future__ import annotations

from hypothesis import strategies as st

from repspec.reference import repvgg as ref_repvgg

from .base import (
    INF,
    Checker,
    Clause,
    Mismatch,
    bn_buffers,
    bn_params,
    call,
    case_rng,
    register,
    seeds,
    special,
    with_num_batches_tracked,
    without_num_batches_tracked,
)

# ============================================================ §2 RepVGG fusion


@st.composite
def _repvgg_fusion_cases(draw) -> dict:
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = cin if draw(st.booleans()) else groups * draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 2]))
    if draw(st.booleans()):  # half the cases have an identity branch
        cout, stride = cin, 1
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    # OABN (a finite threshold) is an optional feature: one case in three, so that a port without it
    # declines a minority of the clause
    threshold = draw(st.sampled_from([1.0, 0.5, 3.0])) if draw(st.integers(0, 2)) == 2 else INF
    dead = draw(st.booleans())
    seed = draw(seeds)
    rng = case_rng(seed)
    params = bn_params(rng, ref_repvgg.repvgg_param_shapes(cin, cout, stride, groups))
    buffers = bn_buffers(rng, ref_repvgg.repvgg_buffer_shapes(cin, cout, stride, groups))
    if dead and "rbr_identity.running_var" in buffers:  # a dead post-ReLU channel: σ0² = 0, t0 ≈ γ0/sqrt(eps)
        v = buffers["rbr_identity.running_var"]
        v[rng.integers(0, v.size)] = 0.0
    return dict(in_channels=cin, out_channels=cout, stride=stride, groups=groups, eps=eps, oabn_threshold=threshold,
                seed=seed, params=params, buffers=buffers)


def _check_repvgg_fusion(adapter, case, cmp: Checker) -> None:
    kw = {k: case[k] for k in ("in_channels", "out_channels", "stride", "groups", "eps", "oabn_threshold")}
    out = call(adapter, "fuse_repvgg_block", case["params"], with_num_batches_tracked(case["buffers"]), **kw)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("fuse_repvgg_block", f"must return (K, b), got {type(out).__name__}")
    k_ref, b_ref = ref_repvgg.fuse_repvgg_block(case["params"], case["buffers"], **kw)
    cmp.close("K", out[0], k_ref)
    cmp.close("b", out[1], b_ref)


def _dead_identity_case(threshold: float) -> dict:
    rng = case_rng(0)
    params = bn_params(rng, ref_repvgg.repvgg_param_shapes(2, 2, 1, 1))
    buffers = bn_buffers(rng, ref_repvgg.repvgg_buffer_shapes(2, 2, 1, 1))
    buffers["rbr_identity.running_var"][0] = 0.0
    buffers["rbr_1x1.bn.running_var"][1] = 0.0  # a dead channel in a conv branch too
    params["rbr_identity.weight"][:] = [4.0, -0.3]
    return dict(in_channels=2, out_channels=2, stride=1, groups=1, eps=1e-5, oabn_threshold=threshold, seed=0,
                params=params, buffers=buffers)


@special("dead channels (running variance 0), plain BN")
def _fusion_example_dead_identity_plain() -> dict:
    return _dead_identity_case(INF)


@special("dead identity channel clipped by OABN (s = 1)", needs="OABN")
def _fusion_example_dead_identity() -> dict:
    return _dead_identity_case(1.0)


@special("grouped block with identity (groups 2)")
def _fusion_example_grouped() -> dict:
    rng = case_rng(1)
    params = bn_params(rng, ref_repvgg.repvgg_param_shapes(4, 4, 1, 2))
    buffers = bn_buffers(rng, ref_repvgg.repvgg_buffer_shapes(4, 4, 1, 2))
    return dict(in_channels=4, out_channels=4, stride=1, groups=2, eps=1e-5, oabn_threshold=INF, seed=1,
                params=params, buffers=buffers)


register(Clause(
    id="§2.fusion", section="§2", title="RepVGG branch fusion (eval-mode BN, OABN-clipped identity)",
    checks="K = t3·K3 + t1·pad(K1) + t̃0·I_c, b = Σ(β − μ·t) against reference.repvgg.fuse_repvgg_block: "
           "groups 1/2, strides 1/2, with and without identity, dead channels (σ² = 0, t0 ≈ 316) with plain BN "
           "and with OABN, OABN thresholds s ∈ {∞, 0.5, 1, 3} (t̃0 = clip(t0, −s, s); a finite s in one case "
           "in three). The adapter gets a PyTorch-style buffers dict (num_batches_tracked included).",
    tolerance="continuous (rtol 1e-9, atol 1e-11): products and sums of float64 values in another order.",
    methods=("fuse_repvgg_block",), strategy=_repvgg_fusion_cases, check=_check_repvgg_fusion,
    examples=(_fusion_example_dead_identity_plain, _fusion_example_grouped, _fusion_example_dead_identity),
))


@st.composite
def _qarepvgg_fusion_cases(draw) -> dict:
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = cin if draw(st.booleans()) else groups * draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 2]))
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    fold = draw(st.booleans())
    seed = draw(seeds)
    rng = case_rng(seed)
    params = bn_params(rng, ref_repvgg.qarepvgg_param_shapes(cin, cout, stride, groups))
    buffers = bn_buffers(rng, ref_repvgg.qarepvgg_buffer_shapes(cin, cout, stride, groups))
    return dict(in_channels=cin, out_channels=cout, stride=stride, groups=groups, eps=eps, fold_post_bn=fold,
                seed=seed, params=params, buffers=buffers)


def _check_qarepvgg_fusion(adapter, case, cmp: Checker) -> None:
    kw = {k: case[k] for k in ("in_channels", "out_channels", "stride", "groups", "eps", "fold_post_bn")}
    out = call(adapter, "fuse_qarepvgg_block", case["params"], with_num_batches_tracked(case["buffers"]), **kw)
    ref = ref_repvgg.fuse_qarepvgg_block(case["params"], case["buffers"], **kw)
    if not isinstance(out, (tuple, list)) or len(out) != len(ref):
        want = "(K, b)" if case["fold_post_bn"] else "(K, b, post_bn)"
        raise Mismatch("fuse_qarepvgg_block", f"must return {want}, got {type(out).__name__} of length "
                                              f"{len(out) if isinstance(out, (tuple, list)) else '?'}")
    cmp.close("K", out[0], ref[0])
    cmp.close("b", out[1], ref[1])
    if not case["fold_post_bn"]:
        cmp.close_tree("post_bn", without_num_batches_tracked(out[2]), ref[2])


register(Clause(
    id="§2.qarepvgg-fusion", section="§2", title="QARepVGG fusion (post BN folded or kept)",
    checks="K = t3·K3 + pad(K1) + I_c, b = β3 − μ3·t3, then with fold_post_bn K ← tpost·K, "
           "b ← tpost·(b − μpost) + βpost (else the post BN is returned unchanged), against "
           "reference.repvgg.fuse_qarepvgg_block; groups 1/2, strides 1/2, with and without identity.",
    tolerance="continuous (rtol 1e-9, atol 1e-11).",
    methods=("fuse_qarepvgg_block",), strategy=_qarepvgg_fusion_cases, check=_check_qarepvgg_fusion,
))
