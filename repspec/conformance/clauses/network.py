"""Conformance clauses of SPEC §1: a whole network in train and deploy form, one training iteration."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from hypothesis import strategies as st

from repspec.core.vocabulary import IDENTITY_MODES, OABN_GRADIENTS
from repspec.reference import optim as ref_optim
from repspec.reference import repopt as ref_repopt
from repspec.reference.deploy import deploy_network
from repspec.reference.network import train_step

from ..adapter import BlockSpec, DeployedNetworkResult, NetworkForwardResult, NetworkSpec, SGDSpec, TrainIterationResult
from .base import (
    INF,
    Ambiguous,
    Checker,
    Clause,
    ErrorStats,
    Mismatch,
    call,
    case_rng,
    register,
    seeds,
    sgd_hparams,
    signed_uniform,
    special,
    with_num_batches_tracked,
    without_num_batches_tracked,
)

# ============================================================ §1 a network in train and deploy form

_NETWORK_KINDS = ("repvgg", "repvgg", "repvgg_oabn", "qarepvgg", "csla", "repopt_target")


@st.composite
def _network_cases(draw) -> dict:
    n_blocks = draw(st.integers(1, 3))
    cin = cin0 = draw(st.integers(1, 4))
    specs = []
    for j in range(n_blocks):
        kind = draw(st.sampled_from(_NETWORK_KINDS))
        cout = cin if draw(st.booleans()) else draw(st.integers(1, 4))
        stride = draw(st.sampled_from([1, 2]))
        groups = 1
        if kind in ("repvgg", "repvgg_oabn", "qarepvgg") and cin % 2 == 0 and cout % 2 == 0 and draw(st.booleans()):
            groups = 2
        extra = dict(bn_momentum=draw(st.sampled_from([0.1, 0.5])), bn_eps=draw(st.sampled_from([1e-5, 1e-3])))
        if kind == "repvgg_oabn":
            kind = "repvgg"
            extra.update(oabn_threshold=draw(st.sampled_from([1.0, 0.5, 2.0])))
        if kind == "csla":
            can = cin == cout and stride == 1
            extra["identity"] = draw(st.sampled_from(IDENTITY_MODES)) if can else "none"
        prefix = "stage0" if j == 0 else f"stage1.{j - 1}"
        specs.append(BlockSpec(kind, prefix, cin, cout, stride, groups, **extra))
        cin = cout
    batch = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    return _build_network_case(tuple(specs), draw(st.integers(2, 3)), cin0, batch, h, w, draw(st.booleans()),
                               draw(seeds))


def _build_network_case(specs, num_classes, cin0, batch, h, w, dead, seed) -> dict:
    """Random BN affine, running statistics, CSLA scales (as §1.train-iteration's cases); ``dead``: one dead
    channel (running variance 0, t ≈ γ/sqrt(eps)) in every BN of the first block, which only the deploy form
    sees (in later blocks too they would compound to logits ~1e10: ill-conditioned, not a realistic network)."""
    rng = case_rng(seed)
    spec = NetworkSpec(tuple(specs), num_classes)
    net = spec.reference_network({f"{b.prefix}.scale_{n}.weight": np.ones(b.out_channels) for b in specs
                                  for n in ("conv", "1x1", "identity")})
    params, buffers = net.init(rng)
    _randomize_state(rng, net, params, buffers, specs)
    if dead:
        for k, v in buffers.items():
            if k.startswith(specs[0].prefix + ".") and k.endswith("running_var"):
                v[rng.integers(0, v.size)] = 0.0
    # the train form needs n = N·H·W >= 2 values per BN channel (SPEC §0.batch-norm) at the smallest map
    shrink = 2 ** sum(b.stride == 2 for b in specs)
    if batch * -(-h // shrink) * -(-w // shrink) < 2:
        w = shrink + 1
    x = rng.standard_normal((batch, cin0, h, w))
    return dict(network=spec, batch=batch, hw=(h, w), dead=dead, seed=seed, params=params, buffers=buffers, x=x)


def _check_network(adapter, case, cmp: Checker) -> None:
    spec, params, buffers, x = case["network"], case["params"], case["buffers"], case["x"]
    net = spec.reference_network(params)
    out = call(adapter, "network_forward_train", spec, params, with_num_batches_tracked(buffers), x)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("network_forward_train", "must return (logits, buffers)")
    out = NetworkForwardResult(*out)
    logits, new_buffers, _ = net.forward(params, buffers, x, training=True)
    cmp.close("train-form logits", out.logits, logits)
    cmp.close_tree("train-form buffers", without_num_batches_tracked(out.buffers), {**buffers, **new_buffers})

    out = call(adapter, "network_forward_deployed", spec, params, with_num_batches_tracked(buffers), x)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("network_forward_deployed", "must return (logits, deployed params or None)")
    out = DeployedNetworkResult(*out)
    deployed_net, deployed = deploy_network(net, params, buffers)
    eval_logits, _, _ = net.forward(params, buffers, x, training=False)
    # the fusion theorem at network level: the port's deployed network is the reference's eval-mode network …
    cmp.close("deploy-form logits vs the reference's eval-mode multi-branch network", out.logits, eval_logits)
    # … and the reference's deployed one
    cmp.close("deploy-form logits vs the reference's deployed network", out.logits,
              deployed_net.forward(deployed, {}, x, training=False)[0])
    if out.params is not None:
        cmp.close_tree("deployed params", out.params, deployed)


@special("RepVGG: identity with groups 2, then stride 2; a batch of 1")
def _network_example_repvgg() -> dict:
    specs = (BlockSpec("repvgg", "stage0", 2, 2, 1, 2), BlockSpec("repvgg", "stage1.0", 2, 3, 2))
    return _build_network_case(specs, 3, 2, 1, 4, 5, False, 0)


@special("RepVGG with dead channels (σ² = 0: t0 ≈ 316 in the deployed kernel)")
def _network_example_dead() -> dict:
    specs = (BlockSpec("repvgg", "stage0", 3, 3, 1), BlockSpec("repvgg", "stage1.0", 3, 3, 1, bn_eps=1e-3))
    return _build_network_case(specs, 2, 3, 2, 3, 3, True, 1)


@special("OABN identity (s = 0.5) with a dead channel: the deployed t̃0 is clipped", needs="OABN")
def _network_example_oabn() -> dict:
    specs = (BlockSpec("repvgg", "stage0", 2, 2, 1, oabn_threshold=0.5),
             BlockSpec("repvgg", "stage1.0", 2, 2, 1, 2, oabn_threshold=1.0))
    return _build_network_case(specs, 2, 2, 2, 3, 4, True, 2)


@special("QARepVGG blocks (post BN folded in the deploy form), groups 2 and stride 2", needs="QARepVGG")
def _network_example_qarepvgg() -> dict:
    specs = (BlockSpec("qarepvgg", "stage0", 2, 2, 1, 2), BlockSpec("qarepvgg", "stage1.0", 2, 4, 2, 2))
    return _build_network_case(specs, 3, 2, 2, 4, 4, False, 3)


@special("CSLA blocks with trainable, constant and no identity (W' with its BN folded)", needs="CSLA")
def _network_example_csla() -> dict:
    specs = (BlockSpec("csla", "stage0", 2, 2, 1, identity="trainable"),
             BlockSpec("csla", "stage1.0", 2, 2, 1, identity="constant"), BlockSpec("csla", "stage1.1", 2, 3, 2))
    return _build_network_case(specs, 2, 2, 2, 4, 3, True, 4)


@special("RepOpt target blocks (K = t·W, b = β − μ·t), strides 1 and 2", needs="RepOpt target")
def _network_example_target() -> dict:
    specs = (BlockSpec("repopt_target", "stage0", 3, 2, 1), BlockSpec("repopt_target", "stage1.0", 2, 2, 2))
    return _build_network_case(specs, 2, 3, 3, 3, 3, False, 5)


register(Clause(
    id="§1.network", section="§1", title="a whole network: train-form forward and deploy-form forward",
    checks="train form: the training-mode forward of 1–3 chained blocks (logits and every updated BN running "
           "statistic) against reference.network.Network.forward(training=True); deploy form: every block fused "
           "with its running statistics (RepVGG with the OABN-clipped t̃0, QARepVGG with the post BN folded, CSLA "
           "W' and the RepOpt target conv with their BN folded) and the deployed network run — its logits against "
           "the reference's eval-mode multi-branch network (the fusion theorem at network level) AND the "
           "reference's deployed network (reference.deploy.deploy_network), and the deployed rbr_reparam.* "
           "parameters when returned; every block kind, strides 1/2, groups 1/2, OABN identity, dead channels "
           "(t ≈ 316), batches of 1.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): a forward pass in another summation order; the deployed and "
              "the multi-branch network are algebraically equal, so the same bound holds between them.",
    methods=("network_forward_train", "network_forward_deployed"), strategy=_network_cases, check=_check_network,
    budget=0.5,
    examples=(_network_example_repvgg, _network_example_dead, _network_example_oabn, _network_example_qarepvgg,
              _network_example_csla, _network_example_target),
))


# ============================================================ §1 one training iteration

_TRAIN_KINDS = ("repvgg", "qarepvgg", "csla", "repopt_target", "repvgg_oabn")


def _randomize_state(rng, net, params, buffers, specs) -> None:
    """BN γ/β and running stats away from their init, CSLA scales random (in place)."""
    for k in list(params):
        if k.endswith(("bn.weight", "rbr_identity.weight")):
            params[k] = signed_uniform(rng, params[k].shape, 0.3, 2.0)
        elif k.endswith(("bn.bias", "rbr_identity.bias")):
            params[k] = rng.normal(0.0, 0.5, params[k].shape)
        elif k.endswith(("scale_conv.weight", "scale_1x1.weight")):
            params[k] = signed_uniform(rng, params[k].shape, 0.3, 1.5)
        elif k.endswith("scale_identity.weight"):
            params[k] = rng.uniform(0.5, 1.5, params[k].shape)
    for k in buffers:
        buffers[k] = rng.normal(0.0, 0.5, buffers[k].shape) if k.endswith("running_mean") \
            else rng.uniform(0.5, 2.0, buffers[k].shape)


@st.composite
def _train_cases(draw) -> dict:
    n_blocks = draw(st.integers(1, 3))
    cin = cin0 = draw(st.integers(1, 3))
    specs = []
    for j in range(n_blocks):
        kind = draw(st.sampled_from(_TRAIN_KINDS))
        cout = cin if draw(st.booleans()) else draw(st.integers(1, 4))
        stride = draw(st.sampled_from([1, 2]))
        groups = 1
        if kind in ("repvgg", "repvgg_oabn", "qarepvgg") and cin % 2 == 0 and cout % 2 == 0 and draw(st.booleans()):
            groups = 2
        extra = dict(bn_momentum=draw(st.sampled_from([0.1, 0.5])), bn_eps=draw(st.sampled_from([1e-5, 1e-3])))
        if kind == "repvgg_oabn":
            kind = "repvgg"
            extra.update(oabn_threshold=draw(st.sampled_from([1.0, 0.5, 2.0])),
                         oabn_gradient=draw(st.sampled_from(OABN_GRADIENTS)))
        if kind == "csla":
            can = cin == cout and stride == 1
            extra["identity"] = draw(st.sampled_from(IDENTITY_MODES)) if can else "none"
        prefix = "stage0" if j == 0 else f"stage1.{j - 1}"
        specs.append(BlockSpec(kind, prefix, cin, cout, stride, groups, **extra))
        cin = cout
    num_classes = draw(st.integers(2, 3))
    hw, batch = draw(st.integers(3, 6)), draw(st.integers(2, 4))
    hp = draw(sgd_hparams())
    decay_kind = draw(st.sampled_from(["scalar", "official"]))
    use_masks = draw(st.booleans())
    later_step = draw(st.booleans()) and hp["momentum"] > 0
    seed = draw(seeds)
    return _build_train_case(tuple(specs), num_classes, cin0, hw, batch, hp, decay_kind, use_masks, later_step, seed)


def _build_train_case(specs, num_classes, cin0, hw, batch, hp, decay_kind, use_masks, later_step, seed) -> dict:
    hp = dict(hp)
    rng = case_rng(seed)
    spec = NetworkSpec(tuple(specs), num_classes)
    net = spec.reference_network({f"{b.prefix}.scale_{n}.weight": np.ones(b.out_channels) for b in specs
                                  for n in ("conv", "1x1", "identity")})
    params, buffers = net.init(rng)
    _randomize_state(rng, net, params, buffers, specs)
    names = spec.trainable_names(params)
    wd = hp.pop("weight_decay")
    weight_decay = ref_optim.official_weight_decay({k: params[k] for k in names}, wd) if decay_kind == "official" \
        else wd
    masks = None
    if use_masks:
        masks = {}
        for b in specs:
            if b.kind == "repopt_target":
                ident = "trainable" if b.has_identity else "none"
                masks[f"{b.prefix}.conv.weight"] = ref_repopt.grad_mult_mask(
                    rng.uniform(0.3, 1.5, b.out_channels), rng.uniform(0.3, 1.5, b.out_channels), b.in_channels,
                    identity=ident)
        masks = masks or None
    opt_state = {k: ({"momentum_buffer": rng.standard_normal(params[k].shape)} if later_step else {}) for k in names}
    x = rng.standard_normal((batch, cin0, hw, hw))
    labels = rng.integers(0, num_classes, batch)
    return dict(network=spec, optimizer=SGDSpec(weight_decay=weight_decay, grad_mult_masks=masks, **hp),
                seed=seed, params=params, buffers=buffers, opt_state=opt_state, x=x, labels=labels)


def _train_oabn_margin(case) -> float:
    spec: NetworkSpec = case["network"]
    net = spec.reference_network(case["params"])
    h = case["x"]
    margin = INF
    for (prefix, block), b in zip(net.blocks, spec.blocks):
        p = {k[len(prefix) + 1:]: v for k, v in case["params"].items() if k.startswith(prefix + ".")}
        bu = {k[len(prefix) + 1:]: v for k, v in case["buffers"].items() if k.startswith(prefix + ".")}
        if b.kind == "repvgg" and b.has_identity and math.isfinite(b.oabn_threshold):
            t0 = p["rbr_identity.weight"] / np.sqrt(h.var(axis=(0, 2, 3)) + b.bn_eps)
            margin = min(margin, float(np.min(np.abs(np.abs(t0) - b.oabn_threshold))) / b.oabn_threshold)
        h, _, _ = block.forward(p, bu, h, training=True)
    return margin


def _check_train(adapter, case, cmp: Checker) -> None:
    if _train_oabn_margin(case) <= cmp.profile["oabn_margin"]:
        raise Ambiguous("an OABN identity factor |t0| lies within the margin of its threshold")
    spec, opt = case["network"], case["optimizer"]
    out = call(adapter, "train_iteration", spec, case["params"], with_num_batches_tracked(case["buffers"]), case["x"],
               case["labels"], optimizer=opt, opt_state=case["opt_state"])
    if not isinstance(out, (tuple, list)) or len(out) != 6:
        raise Mismatch("train_iteration", "must return (loss, logits, grads, params, buffers, opt_state)")
    out = TrainIterationResult(*out)
    net = spec.reference_network(case["params"])
    wd = opt.weight_decay
    sgd = ref_optim.SGD(lr=opt.lr, momentum=opt.momentum, dampening=opt.dampening, nesterov=opt.nesterov,
                        weight_decay=dict(wd) if isinstance(wd, Mapping) else wd, grad_mult_masks=opt.grad_mult_masks)
    loss, logits, grads, params, buffers, state = train_step(net, case["params"], case["buffers"], sgd,
                                                             {k: dict(v) for k, v in case["opt_state"].items()},
                                                             case["x"], case["labels"])
    cmp.close("loss", out.loss, loss)
    cmp.close("logits", out.logits, logits)
    if out.grads is not None:
        try:
            cmp.close_tree("grads", out.grads, grads)
        except Mismatch as exc:
            raise _explain_grads_after_step(exc, out.grads, grads, case, cmp) from None
    cmp.close_tree("params", out.params, params)
    cmp.close_tree("buffers", without_num_batches_tracked(out.buffers), buffers)
    cmp.same_keys("opt_state", out.opt_state, state)
    for k in state:
        got = out.opt_state[k]
        if not isinstance(got, Mapping):
            raise Mismatch(f"opt_state[{k!r}]", f"must be a mapping, got {type(got).__name__}")
        cmp.same_keys(f"opt_state[{k!r}]", got, state[k])
        for key in state[k]:
            cmp.close(f"opt_state[{k!r}][{key!r}]", got[key], state[k][key])


def _explain_grads_after_step(exc: Mismatch, got, grads, case, cmp: Checker) -> Mismatch:
    """Name the cause when a returned gradient equals ``∂L/∂θ + λ·θ`` for an unmasked, decayed ``θ``.

    The original RepOptimizer's step adds the weight decay into ``p.grad`` in place
    (``d_p = p.grad.data; d_p.add_(p.data, alpha=λ)``) for parameters without a mask, so an adapter
    that reads ``p.grad`` after ``optimizer.step()`` returns exactly that. Other mismatches are
    returned unchanged."""
    opt: SGDSpec = case["optimizer"]
    masks = opt.grad_mult_masks or {}
    hits = []
    for k, g in grads.items():
        lam = opt.decay_for(k)
        if lam == 0.0 or k in masks or not isinstance(got, Mapping) or k not in got:
            continue
        try:
            Checker(cmp.profile, ErrorStats()).close(k, got[k], g + lam * case["params"][k])
        except Mismatch:
            continue
        try:
            Checker(cmp.profile, ErrorStats()).close(k, got[k], g)
        except Mismatch:
            hits.append(k)
    if not hits:
        return exc
    return Mismatch(exc.quantity, f"{exc.detail}. The returned gradient of {', '.join(hits)} equals ∂L/∂θ + λ·θ: "
                                  f"the adapter read p.grad AFTER optimizer.step(), and the optimizer added the "
                                  f"weight decay into p.grad in place (the original RepOptimizer code does, for "
                                  f"unmasked decayed parameters). Copy the gradients before step() "
                                  f"(docs/porting.md, 'Protocol pitfalls').",
                    max_abs=exc.max_abs, max_rel=exc.max_rel, tol=exc.tol)


def _plain_sgd(lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=5e-2) -> dict:
    return dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)


@special("RepVGG identity and stride-2 blocks, later momentum step, per-name weight decay")
def _train_example_repvgg() -> dict:
    specs = (BlockSpec("repvgg", "stage0", 2, 2, 1), BlockSpec("repvgg", "stage1.0", 2, 3, 2))
    return _build_train_case(specs, 3, 2, 5, 3, _plain_sgd(), "official", False, True, 0)


@special("RepVGG identity, first step, scalar weight decay on every parameter")
def _train_example_repvgg_first() -> dict:
    specs = (BlockSpec("repvgg", "stage0", 2, 2, 1, bn_momentum=0.5, bn_eps=1e-3),)
    return _build_train_case(specs, 2, 2, 4, 2, _plain_sgd(momentum=0.5, dampening=0.1, weight_decay=1e-4),
                             "scalar", False, False, 1)


@special("CSLA blocks with trainable and constant identity", needs="CSLA")
def _train_example_csla() -> dict:
    specs = (BlockSpec("csla", "stage0", 2, 2, 1, identity="trainable"),
             BlockSpec("csla", "stage1.0", 2, 2, 1, identity="constant"))
    return _build_train_case(specs, 2, 2, 4, 3, _plain_sgd(nesterov=True), "official", False, True, 2)


@special("RepOpt target blocks with Grad Mult masks and weight decay", needs="Grad Mult masks")
def _train_example_masked() -> dict:
    specs = (BlockSpec("repopt_target", "stage0", 2, 2, 1), BlockSpec("repopt_target", "stage1.0", 2, 3, 2))
    return _build_train_case(specs, 2, 2, 4, 3, _plain_sgd(), "scalar", True, True, 3)


@special("OABN identity with a clipped channel (clip and straight-through gradients)", needs="OABN")
def _train_example_oabn() -> dict:
    specs = (BlockSpec("repvgg", "stage0", 2, 2, 1, oabn_threshold=0.5, oabn_gradient="clip"),
             BlockSpec("repvgg", "stage1.0", 2, 2, 1, oabn_threshold=0.5, oabn_gradient="straight_through"))
    return _build_train_case(specs, 2, 2, 4, 3, _plain_sgd(), "official", False, False, 4)


@special("QARepVGG block", needs="QARepVGG")
def _train_example_qarepvgg() -> dict:
    specs = (BlockSpec("qarepvgg", "stage0", 2, 2, 1), BlockSpec("qarepvgg", "stage1.0", 2, 2, 2))
    return _build_train_case(specs, 2, 2, 4, 2, _plain_sgd(momentum=0.0), "scalar", False, False, 5)


register(Clause(
    id="§1.train-iteration", section="§1", title="one training iteration of a small network",
    checks="train-mode forward (BN batch statistics, running-stat update), mean softmax cross-entropy, "
           "backward, one SGD/RepOpt-SGD step — loss, logits, gradients (if returned), every parameter, BN "
           "buffers and momentum buffers against reference.network.train_step; 1–3 chained blocks of any kind "
           "(RepVGG with and without OABN identity and groups, QARepVGG, CSLA with trainable/constant/no "
           "identity, RepOpt target with Grad Mult masks), strides 1/2, first and later steps, scalar and "
           "official per-name weight decay; hand-written cases for every block feature (plain RepVGG ones every "
           "port must run). The adapter gets PyTorch-style buffers (num_batches_tracked included; returned ones "
           "are not compared); returned gradients must be read before the optimizer step.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): SPEC §6's float64 contract; cases where an OABN |t0| is within "
              "1e-6·s of s are not compared.",
    methods=("train_iteration",), strategy=_train_cases, check=_check_train, budget=0.5,
    examples=(_train_example_repvgg, _train_example_repvgg_first, _train_example_csla, _train_example_masked,
              _train_example_oabn, _train_example_qarepvgg),
))
