"""Conformance clauses of SPEC §2 RepVGG and QARepVGG fusion, its backward, and the merged-weight categories."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from repspec.reference import analysis as ref_analysis
from repspec.reference import repvgg as ref_repvgg

from .base import (
    INF,
    Ambiguous,
    Checker,
    Clause,
    Mismatch,
    bn_buffers,
    bn_params,
    call,
    case_rng,
    expect_value_error,
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


# ============================================================ §2 differentiable fusion

#: a dyadic eps: with running variance 4 − 2^-10, σ² + eps = 4 exactly and t = γ/2 in any correct port
_DYADIC_EPS = 2.0**-10


def _t0_margin(params, buffers, eps: float, threshold: float) -> float:
    """min over identity channels of | |t0| − s | / s (∞ without identity or for s = ∞)."""
    if math.isinf(threshold) or "rbr_identity.weight" not in params:
        return INF
    t0 = params["rbr_identity.weight"] / np.sqrt(buffers["rbr_identity.running_var"] + eps)
    return float(np.min(np.abs(np.abs(t0) - threshold)) / threshold)


@st.composite
def _fusion_backward_cases(draw) -> dict:
    kind = draw(st.sampled_from(["repvgg", "repvgg", "qarepvgg"]))  # QARepVGG (optional) one case in three
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = cin if draw(st.booleans()) else groups * draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 2]))
    if draw(st.booleans()):  # half the cases have an identity branch
        cout, stride = cin, 1
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    threshold, gradient, fold = INF, "clip", True
    if kind == "repvgg":
        # OABN (optional): one RepVGG case in three, with either gradient through the clip
        threshold = draw(st.sampled_from([1.0, 0.5, 3.0])) if draw(st.integers(0, 2)) == 2 else INF
        gradient = draw(st.sampled_from(["clip", "straight_through"]))
    else:
        fold = draw(st.booleans())
    dead = draw(st.booleans())
    seed = draw(seeds)
    return _fusion_backward_case(kind, cin, cout, stride, groups, eps, threshold, gradient, fold, dead, seed)


def _fusion_backward_case(kind, cin, cout, stride, groups, eps, threshold, gradient, fold, dead, seed) -> dict:
    rng = case_rng(seed)
    shapes = ref_repvgg.repvgg_param_shapes if kind == "repvgg" else ref_repvgg.qarepvgg_param_shapes
    bshapes = ref_repvgg.repvgg_buffer_shapes if kind == "repvgg" else ref_repvgg.qarepvgg_buffer_shapes
    params = bn_params(rng, shapes(cin, cout, stride, groups))
    buffers = bn_buffers(rng, bshapes(cin, cout, stride, groups))
    if dead:  # a dead channel (σ² = 0) in every BN: t ≈ γ/sqrt(eps), the category-A outlier
        for k, v in buffers.items():
            if k.endswith("running_var"):
                v[rng.integers(0, v.size)] = 0.0
    case = dict(kind=kind, in_channels=cin, out_channels=cout, stride=stride, groups=groups, eps=eps, seed=seed,
                params=params, buffers=buffers, dkernel=rng.standard_normal((cout, cin // groups, 3, 3)),
                dbias=rng.standard_normal(cout))
    if kind == "repvgg":
        case.update(oabn_threshold=threshold, oabn_gradient=gradient)
    else:
        case["fold_post_bn"] = fold
    return case


def _check_fusion_backward(adapter, case, cmp: Checker) -> None:
    kw = {k: case[k] for k in ("in_channels", "out_channels", "stride", "groups", "eps")}
    args = (case["dkernel"], case["dbias"], case["params"])
    if case["kind"] == "repvgg":
        kw.update(oabn_threshold=case["oabn_threshold"], oabn_gradient=case["oabn_gradient"])
        near = _t0_margin(case["params"], case["buffers"], case["eps"], case["oabn_threshold"])
        if case["oabn_gradient"] == "clip" and not case.get("dyadic") and near <= cmp.profile["oabn_margin"]:
            raise Ambiguous("an identity |t0| lies within the margin of s (the clip's gradient jumps there)")
        method, ref = "fuse_repvgg_block_backward", ref_repvgg.fuse_repvgg_block_backward
    else:
        kw["fold_post_bn"] = case["fold_post_bn"]
        method, ref = "fuse_qarepvgg_block_backward", ref_repvgg.fuse_qarepvgg_block_backward
    out = call(adapter, method, *args, with_num_batches_tracked(case["buffers"]), **kw)
    cmp.close_tree("grads", out, ref(*args, case["buffers"], **kw))


@special("dead channels (σ² = 0, t ≈ 316), plain BN, identity")
def _fusion_backward_example_dead() -> dict:
    return _fusion_backward_case("repvgg", 2, 2, 1, 1, 1e-5, INF, "clip", True, True, 0)


@special("no identity, stride 2, groups 2")
def _fusion_backward_example_grouped() -> dict:
    return _fusion_backward_case("repvgg", 4, 2, 2, 2, 1e-5, INF, "clip", True, False, 1)


def _boundary_case(gradient: str) -> dict:
    """Identity factors t0 = γ0/2 = (1, −1, 3, 0.25) exactly (dyadic): two channels ON the boundary |t0| = s = 1
    (the "clip" gradient passes there), one clipped, one inside."""
    case = _fusion_backward_case("repvgg", 4, 4, 1, 1, _DYADIC_EPS, 1.0, gradient, True, False, 2)
    case["params"]["rbr_identity.weight"] = np.array([2.0, -2.0, 6.0, 0.5])
    case["buffers"]["rbr_identity.running_var"] = np.full(4, 4.0 - _DYADIC_EPS)
    case["dyadic"] = True  # exact in every correct float64 port: compared although |t0| = s
    return case


@special("OABN: |t0| = s exactly (dyadic), 'clip' passes at the boundary, a clipped channel gets 0", needs="OABN")
def _fusion_backward_example_boundary() -> dict:
    return _boundary_case("clip")


@special("OABN: straight-through gradient through a clipped channel", needs="OABN")
def _fusion_backward_example_straight_through() -> dict:
    return _boundary_case("straight_through")


@special("QARepVGG, post BN folded, identity, groups 2", needs="QARepVGG")
def _fusion_backward_example_qarepvgg() -> dict:
    return _fusion_backward_case("qarepvgg", 4, 4, 1, 2, 1e-5, INF, "clip", True, False, 3)


@special("QARepVGG, post BN kept (only rbr_* gradients)", needs="QARepVGG")
def _fusion_backward_example_qarepvgg_kept() -> dict:
    return _fusion_backward_case("qarepvgg", 2, 3, 2, 1, 1e-5, INF, "clip", False, False, 4)


register(Clause(
    id="§2.fusion-backward", section="§2", title="differentiable fusion: gradients into the branch parameters",
    checks="for upstream dK, db, the gradients of the fused (K, b) w.r.t. every trainable parameter (running "
           "statistics constant) against reference.repvgg.fuse_repvgg_block_backward / "
           "fuse_qarepvgg_block_backward: RepVGG with plain BN and with OABN (s ∈ {0.5, 1, 3}; 'clip': zero "
           "through clipped channels, passes at |t0| = s; 'straight_through'), QARepVGG with the post BN folded "
           "(its γ, β included) or kept (rbr_* only); groups 1/2, strides 1/2, with and without identity, dead "
           "channels; a dyadic special value with |t0| = s exactly.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): sums of products over the kernel; 'clip' cases with an "
              "identity |t0| within 1e-6·s of s are not compared (the gradient jumps there), except the dyadic "
              "boundary case, which is exact in every correct port.",
    methods=("fuse_repvgg_block_backward", "fuse_qarepvgg_block_backward"), strategy=_fusion_backward_cases,
    check=_check_fusion_backward,
    examples=(_fusion_backward_example_dead, _fusion_backward_example_grouped, _fusion_backward_example_boundary,
              _fusion_backward_example_straight_through, _fusion_backward_example_qarepvgg,
              _fusion_backward_example_qarepvgg_kept),
))


# ============================================================ §2 merged-weight categories

_STATS = ("count", "max_abs", "mean_abs", "std", "excess_kurtosis")
#: how each statistic is compared: a count is exact, a maximum is a selected input element (exact in float64),
#: the ratio one division of two such maxima (an ulp), the moments sums in some order
_STAT_KIND = {"count": "exact", "max_abs": "selection", "mean_abs": "continuous", "std": "continuous",
              "excess_kurtosis": "continuous"}
_KERNEL_KINDS = ("fused", "fused", "fused", "border_zero", "all_zero", "constant")


@st.composite
def _category_cases(draw) -> dict:
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))  # I/g = 1 (category B empty) one case in three
    cout = cin if draw(st.booleans()) else groups * draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 2]))
    if draw(st.booleans()):
        cout, stride = cin, 1
    threshold = draw(st.sampled_from([1.0, 0.5, 3.0])) if draw(st.integers(0, 2)) == 2 else INF  # OABN optional
    kernel_kind = draw(st.sampled_from(_KERNEL_KINDS))
    dead = draw(st.booleans())
    seed = draw(seeds)
    return _category_case(cin, cout, stride, groups, 1e-5, threshold, kernel_kind, dead, seed)


def _category_case(cin, cout, stride, groups, eps, threshold, kernel_kind, dead, seed) -> dict:
    """A RepVGG block (its identity ratio is checked) and a kernel to split: the block's fused kernel, or
    one with special values (an all-zero border: ratio inf; all zero: ratio nan; constant categories of a
    non-dyadic value 0.1·(1 + category index): σ = 0, κ = nan)."""
    rng = case_rng(seed)
    params = bn_params(rng, ref_repvgg.repvgg_param_shapes(cin, cout, stride, groups))
    buffers = bn_buffers(rng, ref_repvgg.repvgg_buffer_shapes(cin, cout, stride, groups))
    if dead and "rbr_identity.running_var" in buffers:  # a dead identity channel: t0 ≈ γ0/sqrt(eps)
        buffers["rbr_identity.running_var"][rng.integers(0, cout)] = 0.0
    kernel, _ = ref_repvgg.fuse_repvgg_block(params, buffers, in_channels=cin, out_channels=cout, stride=stride,
                                             groups=groups, eps=eps, oabn_threshold=threshold)
    masks = ref_analysis.merged_weight_categories(kernel, groups)
    if kernel_kind == "border_zero":
        kernel[masks.C] = 0.0
    elif kernel_kind == "all_zero":
        kernel[:] = 0.0
    elif kernel_kind == "constant":
        for j, m in enumerate(masks):
            kernel[m] = 0.1 * (1 + j)
    return dict(in_channels=cin, out_channels=cout, stride=stride, groups=groups, eps=eps, threshold=threshold,
                kernel_kind=kernel_kind, seed=seed, kernel=kernel, params=params, buffers=buffers)


def _compare_stat(cmp: Checker, name: str, actual, expected: float, kind: str) -> None:
    """One statistic; a NaN or infinite expected value must be returned as exactly that."""
    try:
        value = float(actual)
    except (TypeError, ValueError):
        raise Mismatch(name, f"must be a real number, got {actual!r}") from None
    if math.isnan(expected) or math.isinf(expected):
        if not (value == expected or (math.isnan(value) and math.isnan(expected))):
            raise Mismatch(name, f"must be {expected!r} (SPEC §2.categories guards), got {value!r}")
        cmp.stats.update(0.0, 0.0)
    elif kind == "exact":
        cmp.equal(name, np.float64(value), np.float64(expected))
    else:
        cmp.close(name, value, expected, kind=kind)


def _check_categories(adapter, case, cmp: Checker) -> None:
    kernel, groups = case["kernel"], case["groups"]
    masks = call(adapter, "merged_weight_categories", kernel, groups=groups)
    want_masks = ref_analysis.merged_weight_categories(kernel, groups)
    if not isinstance(masks, (tuple, list)) or len(masks) != 3:
        raise Mismatch("merged_weight_categories", "must return the three masks (A, B, C)")
    for cat, got, want in zip("ABC", masks, want_masks):
        cmp.equal(f"mask {cat}", np.asarray(got).astype(bool), want)
    want = ref_analysis.category_statistics(kernel, groups)
    stats = call(adapter, "category_statistics", kernel, groups=groups)
    if not isinstance(stats, (tuple, list)) or len(stats) != 4:
        raise Mismatch("category_statistics", "must return (A, B, C, ratio_A_C)")
    for cat, got, w in zip("ABC", stats[:3], want[:3]):
        if not isinstance(got, (tuple, list)) or len(got) != 5:
            raise Mismatch(f"category_statistics {cat}", f"must be {_STATS}, got {got!r}")
        for stat, a, e in zip(_STATS, got, w):
            _compare_stat(cmp, f"{cat}.{stat}", a, float(e), _STAT_KIND[stat])
    _compare_stat(cmp, "ratio_A_C", stats[3], want.ratio_A_C, "quantized")
    kw = {k: case[k] for k in ("in_channels", "out_channels", "stride", "groups", "eps", "threshold")}
    buffers = with_num_batches_tracked(case["buffers"])
    if "rbr_identity.weight" not in case["params"]:
        expect_value_error(adapter, "identity_ratio", case["params"], buffers, **kw,
                           why="SPEC §2.categories: a block without an identity branch has no identity ratio")
        return
    t0 = call(adapter, "identity_ratio", case["params"], buffers, **kw)
    cmp.close("t0", t0, ref_analysis.identity_ratio(case["params"], case["buffers"], eps=case["eps"],
                                                    threshold=case["threshold"]))


@special("I/g = 1: category B empty (count 0, nan statistics), identity")
def _categories_example_b_empty() -> dict:
    return _category_case(2, 2, 1, 2, 1e-5, INF, "fused", False, 0)


@special("all-zero border (ratio inf) and a dead identity channel (t0 ≈ γ0/sqrt(eps))")
def _categories_example_border_zero() -> dict:
    return _category_case(3, 3, 1, 1, 1e-5, INF, "border_zero", True, 1)


@special("all-zero kernel (ratio nan, κ nan), no identity branch (identity_ratio raises ValueError)")
def _categories_example_all_zero() -> dict:
    return _category_case(2, 4, 2, 1, 1e-5, INF, "all_zero", False, 2)


@special("constant categories of non-dyadic values (σ = 0, κ = nan, mean not exact in float)")
def _categories_example_constant() -> dict:
    return _category_case(4, 4, 1, 2, 1e-5, INF, "constant", False, 3)


@special("OABN: a dead identity channel clipped to s = 0.5", needs="OABN")
def _categories_example_oabn() -> dict:
    return _category_case(3, 3, 1, 1, 1e-5, 0.5, "fused", True, 4)


register(Clause(
    id="§2.categories", section="§2", title="merged-weight categories A/B/C, their statistics, the identity ratio",
    checks="the masks A (center, i == o mod (I/g)), B (other center taps), C (border) of a kernel; per category "
           "count, max|w|, mean|w|, population sd, excess kurtosis, and max|A|/max|C| against "
           "reference.analysis.category_statistics, on fused RepVGG kernels (groups 1/2, I/g = 1..3, dead "
           "channels) and special kernels: B empty (I/g = 1), all-zero border (ratio inf), all zero (ratio nan), "
           "constant categories of non-dyadic values (σ = 0, κ = nan); the identity ratio t0 (clipped to ±s with "
           "OABN, s ∈ {0.5, 1, 3} one case in three) against reference.analysis.identity_ratio, and a "
           "ValueError from identity_ratio for a block without identity branch.",
    tolerance="masks and counts exact (discrete: a partition, an integer); max|w| selection (exact: an input "
              "element); the ratio quantized (rtol 1e-12: one division of exact maxima); mean, sd, kurtosis and t0 "
              "continuous (rtol 1e-9, atol 1e-11: sums in another order); the nan and inf guards exactly.",
    methods=("merged_weight_categories", "category_statistics", "identity_ratio"), strategy=_category_cases,
    check=_check_categories,
    examples=(_categories_example_b_empty, _categories_example_border_zero, _categories_example_all_zero,
              _categories_example_constant, _categories_example_oabn),
))
