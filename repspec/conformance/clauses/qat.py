"""SPEC §5.qat and §5.cluster-qat: one QAT / ClusterQAT training iteration of a small network, with
the reference's decision margins as ties (a rounding, ReLU, range-edge, centroid-midpoint or OABN
decision within ε of its boundary is not compared)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from repspec.reference import kmeans as ref_kmeans
from repspec.reference import optim as ref_optim
from repspec.reference import qat as ref_qat
from repspec.reference import quant as ref_quant
from repspec.reference.network import train_step

from ..adapter import BlockSpec, QATSpec, TrainIterationResult, reference_qat_network, without_num_batches_tracked
from .base import INF, Ambiguous, Checker, Clause, Mismatch, call, case_rng, register, seeds, sgd_hparams, special
from .base import with_num_batches_tracked
from .network import _build_train_case
_QAT_KINDS = ("repvgg", "repvgg_oabn", "qarepvgg", "repopt_target")


def _code_margin(r) -> float:
    """Distance of ``r`` to the nearest .5 rounding boundary, relative to ``1 + |r|``."""
    r = np.asarray(r, dtype=np.float64)
    return float(np.min(np.abs(r - np.floor(r) - 0.5) / (1.0 + np.abs(r)))) if r.size else INF


def _midpoint_margin(v, c) -> float:
    c = np.sort(np.asarray(c, dtype=np.float64))
    keep = c[1:] > c[:-1]  # equal centroids: the duplicate rule decides, not the midpoint
    m = (0.5 * c[:-1] + 0.5 * c[1:])[keep]
    if m.size == 0:
        return INF
    return float(np.min(np.abs(np.ravel(v)[:, None] - m[None, :]))) / max(float(np.max(np.abs(v))), 1e-300)


def _refit_margin(v, c0, max_iter) -> float:
    """Smallest midpoint margin along the reference's warm-started Lloyd run from ``c0``."""
    v = np.ravel(np.asarray(v, dtype=np.float64))
    k = np.size(c0)
    if np.unique(v).size <= k:
        return INF
    c = np.sort(np.asarray(c0, dtype=np.float64))
    labels = ref_kmeans.assign(v, c)
    margin = _midpoint_margin(v, c)
    for _ in range(max_iter):
        counts = np.bincount(labels, minlength=k)
        sums = np.bincount(labels, weights=v, minlength=k)
        c = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
        new = ref_kmeans.assign(v, c)
        margin = min(margin, _midpoint_margin(v, c))
        if np.array_equal(new, labels):
            break
        labels = new
    return margin


def _qat_decision_margin(qnet, params, buffers, x) -> float:
    """Smallest relative distance of any decision of the reference's QAT forward to its boundary: a
    pre-activation at 0 (ReLU), a weight or activation code at .5, an input at the representable range's
    edge (the STE's mask), a weight at a centroid midpoint (before and along a refit), an OABN factor at
    its threshold."""
    margin = INF
    _, _, cache = qnet.forward(params, buffers, x, training=True)
    for bi, ((prefix, qb), c) in enumerate(zip(qnet.blocks, cache[0])):
        margin = min(margin, float(np.min(np.abs(c.pre))) / max(float(np.max(np.abs(c.pre))), 1e-300))
        wq, aq = qb.weight_quantizer, qb.act_quantizer
        if isinstance(wq, ref_qat.UniformWeightQuantizer):
            scale = np.asarray(ref_quant.weight_qparams(c.kernel, wq.bits, wq.per_channel))
            s = scale[:, None, None, None] if wq.per_channel else scale
            margin = min(margin, _code_margin(np.where(s > 0, c.kernel / np.where(s > 0, s, 1.0), 0.0)))
        elif isinstance(wq, ref_qat.KMeansWeightQuantizer):
            if int(buffers[f"{prefix}.weight_quant.step"]) % wq.update_every == 0:
                margin = min(margin, _refit_margin(c.kernel, buffers[f"{prefix}.weight_quant.centroids"],
                                                   wq.max_iter))
            margin = min(margin, _midpoint_margin(c.kernel, c.weight_state["centroids"]))
        if aq is not None:
            lo, hi = float(c.act_state["lo"]), float(c.act_state["hi"])
            scale, zp = ref_quant.activation_qparams(lo, hi, aq.bits)
            lo_r, hi_r = ref_quant.activation_range(scale, zp, aq.bits)
            if scale > 0.0:
                margin = min(margin, _code_margin(c.x / scale))
                if min(lo, 0.0) < 0.0:
                    margin = min(margin, _code_margin(-min(lo, 0.0) / scale))
                # the batch extremes that set a first range are the range's ends: whether they fall inside
                # [lo_r, hi_r] is fixed by §5.uniform-activation's formula, not by a summation order
                xs = c.x[~((c.x == 0.0) & (lo_r == 0.0)) & (c.x != lo) & (c.x != hi)]
                if xs.size:
                    width = max(hi_r - lo_r, 1e-300)
                    margin = min(margin, float(np.min(np.abs(xs - lo_r))) / width,
                                 float(np.min(np.abs(xs - hi_r))) / width)
        inner = qb.inner
        if getattr(inner, "has_identity", False) and math.isfinite(getattr(inner, "oabn_threshold", INF)):
            p = {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}
            b = {k[len(prefix) + 1:]: v for k, v in buffers.items() if k.startswith(prefix + ".")}
            t0 = p["rbr_identity.weight"] / np.sqrt(b["rbr_identity.running_var"] + inner.bn_eps)
            s = inner.oabn_threshold
            margin = min(margin, float(np.min(np.abs(np.abs(t0) - s))) / s)
    return margin


def _build_qat_case(specs, num_classes, cin0, hw, batch, hp, quantizer, later_step, start_step, act_known,
                    seed) -> dict:
    case = _build_train_case(specs, num_classes, cin0, hw, batch, hp, "scalar", False, later_step, seed)
    rng = case_rng(seed + 1)
    _, wrapped = reference_qat_network(case["network"], case["params"], case["buffers"], {}, quantizer)
    qat_buffers = {k: np.array(v, copy=True) for k, v in wrapped.items() if ".weight_quant." in k or ".act_quant." in k}
    for k in qat_buffers:
        if k.endswith("weight_quant.centroids"):
            # centroids fitted on an earlier kernel, not on this one: a refit moves them (a warm start from
            # the current kernel's own fit would be a fixed point, and a skipped refit would go unseen)
            c = qat_buffers[k]
            spread = max(float(np.ptp(c)), 1e-3)
            qat_buffers[k] = np.sort(c + rng.normal(0.0, 0.05 * spread, c.shape))
        if k.endswith("weight_quant.step"):
            qat_buffers[k] = np.array(start_step)
        if k.endswith("act_quant.initialized") and act_known:
            prefix = k[: -len(".act_quant.initialized")]
            lo, hi = sorted(rng.uniform(-1.5, 2.5, 2))
            qat_buffers[k] = np.array(1)
            qat_buffers[f"{prefix}.act_quant.lo"], qat_buffers[f"{prefix}.act_quant.hi"] = np.array(lo), np.array(hi)
    case.update(quantizer=quantizer, qat_buffers=qat_buffers)
    return case


@st.composite
def _qat_cases(draw, kmeans: bool):
    n_blocks = draw(st.integers(1, 2))
    cin0 = draw(st.integers(1, 3))
    cin, specs = cin0, []
    for j in range(n_blocks):
        kind = draw(st.sampled_from(_QAT_KINDS))
        cout = cin if draw(st.booleans()) else draw(st.integers(1, 3))
        stride = draw(st.sampled_from([1, 2]))
        extra = dict(bn_eps=draw(st.sampled_from([1e-5, 1e-3])))
        if kind == "repvgg_oabn":
            kind = "repvgg"
            extra.update(oabn_threshold=draw(st.sampled_from([1.0, 0.5])))
        specs.append(BlockSpec(kind, "stage0" if j == 0 else f"stage1.{j - 1}", cin, cout, stride, **extra))
        cin = cout
    act_bits = draw(st.one_of(st.none(), st.integers(2, 8)))
    first = draw(st.booleans())
    if kmeans:
        quantizer = QATSpec("kmeans", draw(st.integers(1, 3)), update_every=draw(st.integers(1, 3)),
                            act_bits=act_bits, keep_first_fp32=first)
        start_step = draw(st.integers(0, 4))
    else:
        quantizer = QATSpec("uniform", draw(st.integers(2, 8)), per_channel=draw(st.booleans()), act_bits=act_bits,
                            keep_first_fp32=first)
        start_step = 0
    hp = draw(sgd_hparams())
    later = draw(st.booleans()) and hp["momentum"] > 0
    return _build_qat_case(tuple(specs), draw(st.integers(2, 3)), cin0, draw(st.integers(3, 5)),
                           draw(st.integers(2, 3)), hp, quantizer, later, start_step, draw(st.booleans()),
                           draw(seeds))


def _check_qat(adapter, case, cmp: Checker) -> None:
    spec, opt, quantizer = case["network"], case["optimizer"], case["quantizer"]
    qnet, buffers = reference_qat_network(spec, case["params"], case["buffers"], case["qat_buffers"], quantizer)
    if _qat_decision_margin(qnet, case["params"], buffers, case["x"]) <= cmp.tie_eps:
        raise Ambiguous("a rounding, ReLU, range-edge, midpoint or OABN decision of the reference lies within ε of "
                        "its boundary")
    out = call(adapter, "qat_train_iteration", spec, case["params"], with_num_batches_tracked(case["buffers"]),
               case["qat_buffers"], case["x"], case["labels"], quantizer=quantizer, optimizer=opt,
               opt_state=case["opt_state"])
    if not isinstance(out, (tuple, list)) or len(out) != 6:
        raise Mismatch("qat_train_iteration", "must return (loss, logits, grads, params, buffers, opt_state)")
    out = TrainIterationResult(*out)
    sgd = ref_optim.SGD(lr=opt.lr, momentum=opt.momentum, dampening=opt.dampening, nesterov=opt.nesterov,
                        weight_decay=opt.weight_decay)
    loss, logits, grads, params, new_buffers, state = train_step(
        qnet, case["params"], buffers, sgd, {k: dict(v) for k, v in case["opt_state"].items()}, case["x"],
        case["labels"])
    cmp.close("loss", out.loss, loss)
    cmp.close("logits", out.logits, logits)
    if out.grads is not None:
        cmp.close_tree("grads", out.grads, grads)
    cmp.close_tree("params", out.params, params)
    cmp.close_tree("buffers (BN frozen, quantizer state after)", without_num_batches_tracked(out.buffers),
                   new_buffers)
    for k in state:
        for key in state[k]:
            cmp.close(f"opt_state[{k!r}][{key!r}]", out.opt_state[k][key], state[k][key])


def _qat_plain(kind, seed, **q) -> dict:
    specs = (BlockSpec("repvgg", "stage0", 2, 2, 1), BlockSpec("repvgg", "stage1.0", 2, 3, 2))
    hp = dict(lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=1e-4)
    return _build_qat_case(specs, 3, 2, 4, 3, hp, QATSpec(kind, **q), False, 0, False, seed)


@special("uniform 4-bit per channel, 8-bit activations whose first batch sets the range, first block FP32")
def _qat_example_uniform() -> dict:
    return _qat_plain("uniform", 0, bits=4, per_channel=True, act_bits=8)


@special("uniform 3-bit per layer, every block quantized (the first block's signed input too)")
def _qat_example_first() -> dict:
    return _qat_plain("uniform", 1, bits=3, act_bits=6, keep_first_fp32=False)


def _cluster_case(seed, start, update_every, bits=2, **q) -> dict:
    specs = (BlockSpec("repvgg", "stage0", 2, 2, 1), BlockSpec("qarepvgg", "stage1.0", 2, 2, 1))
    hp = dict(lr=0.05, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-4)
    return _build_qat_case(specs, 2, 2, 4, 2, hp, QATSpec("kmeans", bits, update_every=update_every, **q), True,
                           start, True, seed)


@special("ClusterQAT, a refit step: t = 3, update_every = 3")
def _cluster_example_refit() -> dict:
    return _cluster_case(0, 3, 3)


@special("ClusterQAT, a step between refits: t = 4, update_every = 3 (the centroids stay)")
def _cluster_example_fixed() -> dict:
    return _cluster_case(1, 4, 3)


@special("ClusterQAT, 3 bits (8 centroids) on a 1-channel block: k ≥ #distinct values of a kernel")
def _cluster_example_many_centroids() -> dict:
    specs = (BlockSpec("repvgg", "stage0", 1, 1, 1), BlockSpec("repvgg", "stage1.0", 1, 1, 1))
    hp = dict(lr=0.05, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)
    return _build_qat_case(specs, 2, 1, 3, 2, hp, QATSpec("kmeans", 3, update_every=1, keep_first_fp32=False), False,
                           0, False, 2)


register(Clause(
    id="§5.qat", section="§5", title="one QAT iteration on merged weights (uniform weights)",
    checks="one training iteration of a QAT-wrapped network (reference.qat.make_qat_network + network.train_step): "
           "per forward the branches fused with the frozen running statistics, the fused kernel fake-quantized "
           "(uniform 2–8 bits, per layer or per channel, scale from the current kernel), the block input "
           "fake-quantized (2–8 bits or FP32; moving-average min/max, the first training batch setting an "
           "uninitialized range), the deployed form; STE backward through the fusion; one SGD step — loss, "
           "logits, gradients, parameters, BN buffers (unchanged) and the activation ranges after, momentum "
           "buffers. RepVGG (with and without OABN), QARepVGG and RepOpt target blocks; first block FP32 or "
           "quantized.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): SPEC §6's float64 contract; a case where a rounding, ReLU, "
              "range-edge or OABN decision of the reference lies within 1e-9 (relative) of its boundary is not "
              "compared (SPEC §6): a last-bit difference may flip it.",
    methods=("qat_train_iteration",), strategy=lambda: _qat_cases(False), check=_check_qat, budget=0.4,
    examples=(_qat_example_uniform, _qat_example_first),
))

register(Clause(
    id="§5.cluster-qat", section="§5", title="one ClusterQAT iteration, the refit schedule included",
    checks="§5.qat's iteration with the k-means weight quantizer: 2^b centroids per layer (b ∈ 1..3) handed in as "
           "the quantizer state with its step counter t ∈ 0..4; a training forward with t mod update_every = 0 "
           "(update_every ∈ 1..3) refits them by warm-started Lloyd on the current fused kernel, then t ← t + 1; "
           "in between they stay; each weight replaced by its centroid (ties to the lower one), STE — loss, "
           "logits, gradients, parameters, centroids and step after, activation ranges, momentum buffers.",
    tolerance="continuous (rtol 1e-9, atol 1e-11); the step counter exact (compared as a value); a case where a "
              "weight came within 1e-9 (relative to max|K|) of a centroid midpoint before or during the refit, or "
              "another decision of §5.qat is that close, is not compared (SPEC §6).",
    methods=("qat_train_iteration",), strategy=lambda: _qat_cases(True), check=_check_qat, budget=0.4,
    examples=(_cluster_example_refit, _cluster_example_fixed, _cluster_example_many_centroids),
))
