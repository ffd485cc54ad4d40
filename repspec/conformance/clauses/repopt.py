"""Conformance clauses of SPEC §3: the CSLA block, its kernel W', Grad Mult, the RepOpt-SGD step, the
weight-decay map, the RepOpt theorem and the constant identity, W'_0, HyperSearch, scale files, AdamW."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from hypothesis import strategies as st

from repspec.core.vocabulary import ADAMW_MASK_PLACEMENTS, IDENTITY_MODES
from repspec.reference import optim as ref_optim
from repspec.reference import repopt as ref_repopt
from repspec.reference import repopt_sgd as ref_repopt_sgd
from repspec.reference import scales as ref_scales

from ..adapter import BlockSpec, NetworkSpec
from .base import (
    Checker,
    Clause,
    ErrorStats,
    Mismatch,
    as_f64,
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

# ============================================================ §3 the CSLA block (and the HyperSearch block)


def _linear_add_case(kind: str, o: int, i: int, stride: int, identity: str, training: bool, batch: int, hw: int,
                     bn_momentum: float, bn_eps: float, seed: int, *, dead_channel: bool = False) -> dict:
    """A CSLA (``kind="csla"``) or HyperSearch block case: kernels N(0, 1/4), mixed-sign scales and ``d``,
    BN away from its init, an input and an upstream gradient."""
    rng = case_rng(seed)
    params = {"conv.weight": 0.5 * rng.standard_normal((o, i, 3, 3)),
              "conv_1x1.weight": 0.5 * rng.standard_normal((o, i, 1, 1)),
              "scale_conv.weight": signed_uniform(rng, o, 0.3, 1.5), "scale_1x1.weight": signed_uniform(rng, o, 0.3, 1.5)}
    if identity != "none":
        params["scale_identity.weight"] = signed_uniform(rng, o, 0.5, 1.5)
    if dead_channel:  # output channel 0 sums nothing: z[:, 0] = 0, batch variance 0
        params["conv.weight"][0] = 0.0
        params["conv_1x1.weight"][0] = 0.0
    params["bn.weight"], params["bn.bias"] = signed_uniform(rng, o, 0.3, 2.0), rng.normal(0.0, 0.5, o)
    buffers = {"bn.running_mean": rng.normal(0.0, 0.5, o), "bn.running_var": rng.uniform(0.5, 2.0, o)}
    ho = (hw - 1) // stride + 1
    return dict(kind=kind, in_channels=i, out_channels=o, stride=stride, identity=identity, training=training,
                batch=batch, hw=hw, bn_momentum=bn_momentum, bn_eps=bn_eps, seed=seed, params=params,
                buffers=with_num_batches_tracked(buffers), x=rng.standard_normal((batch, i, hw, hw)),
                dy=rng.standard_normal((batch, o, ho, ho)))


@st.composite
def _block_geometry(draw, *, identity_modes) -> dict:
    """Channels, stride, mode, batch and size of one block; train-mode BN gets at least 2 values per channel."""
    identity = draw(st.sampled_from(identity_modes))
    o = draw(st.integers(1, 3))
    if identity == "none":
        i, stride = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2]))
    else:
        i, stride = o, 1
    training = draw(st.booleans())
    batch, hw = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    if training and batch * ((hw - 1) // stride + 1) ** 2 < 2:
        batch = 2  # the unbiased batch variance needs two values per channel
    return dict(o=o, i=i, stride=stride, identity=identity, training=training, batch=batch, hw=hw,
                bn_momentum=draw(st.sampled_from([0.1, 0.5])), bn_eps=draw(st.sampled_from([1e-5, 1e-3])),
                seed=draw(seeds))


@st.composite
def _csla_cases(draw) -> dict:
    g = draw(_block_geometry(identity_modes=IDENTITY_MODES))
    return _linear_add_case("csla", **g)


def _reference_linear_add(case) -> tuple:
    """``(y, buffers, dx, grads)`` of the reference CSLA / HyperSearch block for a case."""
    kw = dict(bn_momentum=case["bn_momentum"], bn_eps=case["bn_eps"])
    p = case["params"]
    if case["kind"] == "csla":
        block = ref_repopt.CSLABlock(case["in_channels"], case["out_channels"], case["stride"],
                                     scale_conv=p["scale_conv.weight"], scale_1x1=p["scale_1x1.weight"],
                                     identity=case["identity"], scale_identity=p.get("scale_identity.weight"), **kw)
    else:
        block = ref_repopt.HyperSearchBlock(case["in_channels"], case["out_channels"], case["stride"], **kw)
    buffers = without_num_batches_tracked(case["buffers"])
    y, new_buffers, cache = block.forward(p, buffers, case["x"], training=case["training"])
    dx, grads = block.backward(p, cache, case["dy"])
    return y, {**buffers, **new_buffers}, dx, grads


def _check_linear_add(method: str, adapter, case, cmp: Checker) -> None:
    kw = dict(in_channels=case["in_channels"], out_channels=case["out_channels"], stride=case["stride"],
              training=case["training"], bn_momentum=case["bn_momentum"], bn_eps=case["bn_eps"])
    if case["kind"] == "csla":
        kw["identity"] = case["identity"]
    out = call(adapter, method, case["params"], case["buffers"], case["x"], case["dy"], **kw)
    if not isinstance(out, (tuple, list)) or len(out) != 4:
        raise Mismatch(method, f"must return BlockResult(y, buffers, dx, grads), got {type(out).__name__}")
    y, buffers, dx, grads = _reference_linear_add(case)
    cmp.close("y", out[0], y)
    cmp.close_tree("buffers", without_num_batches_tracked(out[1]), buffers)
    cmp.close("dx", out[2], dx)
    cmp.close_tree("grads", out[3], grads)


def _check_csla(adapter, case, cmp: Checker) -> None:
    _check_linear_add("csla_block", adapter, case, cmp)


@special("constant identity with d ≠ 1, eval mode", needs="constant identity")
def _csla_example_constant_identity() -> dict:
    return _linear_add_case("csla", 2, 2, 1, "constant", False, 2, 3, 0.1, 1e-5, 0)


@special("trainable identity, mixed-sign scales, training mode, batch of 1")
def _csla_example_trainable_batch_one() -> dict:
    return _linear_add_case("csla", 3, 3, 1, "trainable", True, 1, 3, 0.1, 1e-5, 1)


@special("stride 2, O ≠ I (no identity), eval mode")
def _csla_example_stride_two() -> dict:
    return _linear_add_case("csla", 3, 2, 2, "none", False, 2, 4, 0.1, 1e-5, 2)


@special("dead output channel (z = 0, batch variance 0), training mode")
def _csla_example_dead_channel() -> dict:
    return _linear_add_case("csla", 2, 3, 1, "none", True, 2, 3, 0.5, 1e-3, 3, dead_channel=True)


register(Clause(
    id="§3.csla", section="§3", title="CSLA block, forward and backward (train and eval)",
    checks="y = relu(BN(α3·conv3x3(x; K3) + α1·conv1x1(x; K1) + d·x)), the updated BN running statistics, "
           "∂L/∂x and the gradients of exactly the trainable names (K3, K1, d iff trainable, BN γ, β: the "
           "constant scales get none) against reference.repopt.CSLABlock, in training and eval mode; identity "
           "trainable/constant/none, O ≠ I, strides 1 and 2, mixed-sign scales and d, batch of 1, a dead "
           "output channel (batch variance 0).",
    tolerance="continuous (rtol 1e-9, atol 1e-11): SPEC §6's float64 contract for convolutions and BN "
              "(the same sums in another order).",
    methods=("csla_block",), strategy=_csla_cases, check=_check_csla,
    examples=(_csla_example_constant_identity, _csla_example_trainable_batch_one, _csla_example_stride_two,
              _csla_example_dead_channel),
))


# ============================================================ §3 the equivalent kernel W'


def _kernel_case(o: int, i: int, with_identity: bool, seed: int) -> dict:
    rng = case_rng(seed)
    return dict(out_channels=o, in_channels=i, with_identity=with_identity, seed=seed,
                conv_weight=rng.standard_normal((o, i, 3, 3)), conv_1x1_weight=rng.standard_normal((o, i, 1, 1)),
                scale_conv=signed_uniform(rng, o, 0.2, 2.0), scale_1x1=signed_uniform(rng, o, 0.2, 2.0),
                scale_identity=signed_uniform(rng, o, 0.2, 2.0) if with_identity else None)


@st.composite
def _kernel_cases(draw) -> dict:
    with_identity = draw(st.booleans())
    o = draw(st.integers(1, 4))
    i = o if with_identity else draw(st.integers(1, 4))
    return _kernel_case(o, i, with_identity, draw(seeds))


_KERNEL_ARGS = ("conv_weight", "conv_1x1_weight", "scale_conv", "scale_1x1", "scale_identity")


def _check_equivalent_kernel(adapter, case, cmp: Checker) -> None:
    args = [case[k] for k in _KERNEL_ARGS]
    cmp.close("W'", call(adapter, "csla_equivalent_kernel", *args), ref_repopt.csla_equivalent_kernel(*args))


@special("the centre cancels exactly: α3·K3[centre] = −α1·K1 (dyadic values), identity present")
def _kernel_example_cancellation() -> dict:
    case = _kernel_case(2, 2, True, 0)
    case["scale_conv"], case["scale_1x1"] = np.array([0.5, -1.25]), np.array([-0.25, 0.625])
    case["conv_weight"][:, :, 1, 1] = np.array([[3.0, -2.0], [1.0, 4.0]])
    case["conv_1x1_weight"][:, :, 0, 0] = 2.0 * case["conv_weight"][:, :, 1, 1]  # W'[centre] = diag(d) exactly
    return case


@special("O ≠ I (no identity), a zero scale")
def _kernel_example_nonsquare() -> dict:
    case = _kernel_case(3, 2, False, 1)
    case["scale_1x1"][1] = 0.0
    return case


register(Clause(
    id="§3.equivalent-kernel", section="§3", title="the single kernel W' a CSLA block equals",
    checks="W' = α3·K3 + α1·pad(K1) + diag(d)·I_c against reference.repopt_sgd.csla_equivalent_kernel: "
           "identity present (O = I) or absent (O ≠ I), a different mixed-sign scale per output channel, "
           "a zero scale, a centre tap where the 3x3 and 1x1 branches cancel exactly.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): three products and two sums per element.",
    methods=("csla_equivalent_kernel",), strategy=_kernel_cases, check=_check_equivalent_kernel,
    examples=(_kernel_example_cancellation, _kernel_example_nonsquare),
))


# ============================================================ §3 Grad Mult


@st.composite
def _grad_mult_cases(draw) -> dict:
    identity = draw(st.sampled_from(["trainable", "none", "constant"]))
    o = draw(st.integers(1, 4))
    i = o if identity != "none" else draw(st.integers(1, 4))
    exponent = draw(st.sampled_from([2, 2, 1]))  # 1 (AdamW) is optional: one case in three
    mixed_signs = draw(st.booleans())
    seed = draw(seeds)
    rng = case_rng(seed)
    a3, a1 = rng.uniform(0.2, 2.0, o), rng.uniform(0.2, 2.0, o)  # a different value in every channel
    if mixed_signs:
        a3, a1 = a3 * rng.choice([-1.0, 1.0], o), a1 * rng.choice([-1.0, 1.0], o)
    return dict(out_channels=o, in_channels=i, identity=identity, exponent=exponent, seed=seed, scale_conv=a3,
                scale_1x1=a1)


def _check_grad_mult(adapter, case, cmp: Checker) -> None:
    args = (case["scale_conv"], case["scale_1x1"], case["in_channels"])
    kw = dict(identity=case["identity"], exponent=case["exponent"])
    m = call(adapter, "grad_mult_mask", *args, **kw)
    try:
        cmp.close("M", m, ref_repopt.grad_mult_mask(*args, **kw))
    except Mismatch as exc:
        swapped = ref_repopt.grad_mult_mask(case["scale_1x1"], case["scale_conv"], case["in_channels"], **kw)
        try:
            Checker(cmp.profile, ErrorStats()).close("M", m, swapped)
        except Mismatch:
            raise exc from None
        raise Mismatch(exc.quantity, exc.detail + ". The adapter's mask is the one for the scales SWAPPED: "
                       "grad_mult_mask takes (scale_conv, scale_1x1), the reverse of the original code's "
                       "(identity, 1x1, conv) tuples (docs/porting.md, 'Protocol pitfalls')",
                       max_abs=exc.max_abs, max_rel=exc.max_rel, tol=exc.tol) from None


@special("trainable identity, different scale per channel")
def _grad_mult_example() -> dict:
    return dict(out_channels=2, in_channels=2, identity="trainable", exponent=2, seed=0,
                scale_conv=np.array([2.0, 0.5]), scale_1x1=np.array([1.0, 3.0]))


@special("O ≠ I, no identity")
def _grad_mult_example_nonsquare() -> dict:
    return dict(out_channels=3, in_channels=2, identity="none", exponent=2, seed=0,
                scale_conv=np.array([2.0, 0.5, 1.5]), scale_1x1=np.array([1.0, 3.0, 0.25]))


register(Clause(
    id="§3.grad-mult", section="§3", title="Grad Mult mask",
    checks="M[o,i,p,q] = α3[o]^e + [p=q=1]·α1[o]^e + [p=q=1, o=i, identity='trainable']·1 against "
           "reference.repopt.grad_mult_mask, with a different scale in every output channel, O ≠ I "
           "(no identity), identity trainable/constant/none, exponent 2 (SGD) and 1 (AdamW), mixed signs.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): squares and sums of the scales.",
    methods=("grad_mult_mask",), strategy=_grad_mult_cases, check=_check_grad_mult,
    examples=(_grad_mult_example, _grad_mult_example_nonsquare),
))


# ============================================================ §3 RepOpt-SGD step


#: parameter shapes an optimizer step meets: 3x3 kernels (maskable), 1x1 kernels, (O,) vectors (BN, CSLA
#: scales, biases), (K, C) head weights, 0-d scalars — §3.theorem steps the 1x1 kernels and (O,) scales
_STEP_SHAPES = ("3x3", "1x1", "vector", "matrix", "scalar")

_ANY_SHAPE_HINT = ("repopt_sgd_step must accept a parameter of any shape: §3.theorem and a training step also "
                   "step 1x1 kernels (O, I, 1, 1), (O,) vectors and scalars, with grad_mult_mask None "
                   "(docs/porting.md, 'Protocol pitfalls')")


@st.composite
def _sgd_step_cases(draw) -> dict:
    o, i = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(_STEP_SHAPES))
    shape = {"3x3": (o, i, 3, 3), "1x1": (o, i, 1, 1), "vector": (o,), "matrix": (o, i), "scalar": ()}[kind]
    hp = draw(sgd_hparams())
    mask_kind = draw(st.sampled_from(["grad_mult", "grad_mult", "none"])) if kind == "3x3" else "none"
    first = draw(st.booleans()) or hp["momentum"] == 0
    seed = draw(seeds)
    rng = case_rng(seed)
    mask = None
    if mask_kind == "grad_mult":
        mask = ref_repopt.grad_mult_mask(rng.uniform(0.3, 2.0, o), rng.uniform(0.3, 2.0, o), i,
                                         identity="trainable" if i == o else "none")
    return dict(shape=shape, **hp, first_step=first, seed=seed, param=np.asarray(rng.standard_normal(shape)),
                grad=np.asarray(rng.standard_normal(shape)),
                momentum_buffer=None if first else np.asarray(rng.standard_normal(shape)), grad_mult_mask=mask)


_HP_KEYS = ("lr", "momentum", "dampening", "nesterov", "weight_decay")


def _check_sgd_step(adapter, case, cmp: Checker) -> None:
    hp = {k: case[k] for k in _HP_KEYS}
    hint = _ANY_SHAPE_HINT if np.shape(case["param"]) != np.shape(case["param"])[:2] + (3, 3) else None
    out = call(adapter, "repopt_sgd_step", case["param"], case["grad"], case["momentum_buffer"],
               grad_mult_mask=case["grad_mult_mask"], hint=hint, **hp)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("repopt_sgd_step", f"must return (new_param, new_buffer), got {type(out).__name__}")
    p_ref, buf_ref = ref_optim.sgd_step(case["param"], case["grad"], case["momentum_buffer"],
                                        grad_mult_mask=case["grad_mult_mask"], **hp)
    cmp.close("new_param", out[0], p_ref)
    if buf_ref is None:
        if out[1] is not None:
            raise Mismatch("new_buffer", "must be None when momentum == 0 (no buffer exists, as in torch)")
    else:
        if out[1] is None:
            raise Mismatch("new_buffer", "is None but momentum > 0 (the first step creates buf = d)")
        cmp.close("new_buffer", out[1], buf_ref)


@special("first step, momentum, dampening (the buffer is NOT dampened)")
def _sgd_example_first_step_dampened() -> dict:
    rng = case_rng(0)
    mask = ref_repopt.grad_mult_mask(np.array([1.5]), np.array([0.7]), 1, identity="trainable")
    return dict(shape=(1, 1, 3, 3), lr=0.1, momentum=0.9, dampening=0.5, nesterov=False, weight_decay=0.0,
                first_step=True, seed=0, param=rng.standard_normal((1, 1, 3, 3)),
                grad=rng.standard_normal((1, 1, 3, 3)), momentum_buffer=None, grad_mult_mask=mask)


@special("masked parameter with weight decay (decay NOT masked)")
def _sgd_example_masked_decay() -> dict:
    rng = case_rng(1)
    mask = ref_repopt.grad_mult_mask(np.array([1.5]), np.array([0.7]), 1, identity="none")
    return dict(shape=(1, 1, 3, 3), lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.05,
                first_step=True, seed=1, param=rng.standard_normal((1, 1, 3, 3)),
                grad=rng.standard_normal((1, 1, 3, 3)), momentum_buffer=None, grad_mult_mask=mask)


@special("(O,) vector, later nesterov step with decay (any shape)")
def _sgd_example_vector_later_step() -> dict:
    rng = case_rng(2)
    return dict(shape=(3,), lr=0.1, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.05,
                first_step=False, seed=2, param=rng.standard_normal(3), grad=rng.standard_normal(3),
                momentum_buffer=rng.standard_normal(3), grad_mult_mask=None)


register(Clause(
    id="§3.repopt-sgd-step", section="§3", title="one RepOpt-SGD step (exact order)",
    checks="d = M⊙g → d = d + λ·W (decay NOT masked) → buf = d (first step, undampened) | μ·buf + (1−τ)·d → "
           "d = d + μ·buf (nesterov) | buf → W − lr·d, against reference.optim.sgd_step; masked 3x3 kernels "
           "and unmasked parameters of any shape (3x3, 1x1, (O,), (K, C), scalar), first and later steps, "
           "every torch.optim.SGD option combination; momentum 0 must return no buffer.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): a handful of float64 multiply-adds.",
    methods=("repopt_sgd_step",), strategy=_sgd_step_cases, check=_check_sgd_step,
    examples=(_sgd_example_first_step_dampened, _sgd_example_masked_decay, _sgd_example_vector_later_step),
))


# ============================================================ §3 the weight-decay map

_DECAY_KINDS = ("csla", "hypersearch", "repopt_target", "repvgg", "qarepvgg")


def _decay_case(specs, weight_decay: float, seed: int) -> dict:
    spec = NetworkSpec(tuple(specs), 2)
    ones = {f"{b.prefix}.scale_{n}.weight": np.ones(b.out_channels) for b in specs for n in ("conv", "1x1", "identity")}
    params, _ = spec.reference_network(ones).init(case_rng(seed))
    return dict(network=spec, weight_decay=weight_decay, seed=seed, params=params)


@st.composite
def _decay_cases(draw) -> dict:
    cin = draw(st.integers(1, 3))
    specs = []
    for j in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(_DECAY_KINDS))
        cout = cin if draw(st.booleans()) else draw(st.integers(1, 3))  # identity branches half the time
        stride = draw(st.sampled_from([1, 2]))
        identity = "none"
        if kind == "csla" and cin == cout and stride == 1:
            identity = draw(st.sampled_from(IDENTITY_MODES))
        specs.append(BlockSpec(kind, "stage0" if j == 0 else f"stage1.{j - 1}", cin, cout, stride,
                               identity=identity))
        cin = cout
    return _decay_case(specs, draw(st.sampled_from([5e-2, 1e-4, 0.0])), draw(seeds))


def _check_weight_decay(adapter, case, cmp: Checker) -> None:
    spec, params = case["network"], case["params"]
    got = call(adapter, "weight_decay_map", spec, params, weight_decay=case["weight_decay"])
    expected = ref_optim.official_weight_decay({k: params[k] for k in spec.trainable_names(params)},
                                               case["weight_decay"])
    cmp.same_keys("decay map", got, expected)
    for name, lam in expected.items():
        cmp.equal(f"decay map[{name!r}]", as_f64(f"decay map[{name!r}]", got[name]), lam)


@special("HyperSearch block with an identity branch: d decayed, α3 and α1 not")
def _decay_example_hypersearch() -> dict:
    return _decay_case([BlockSpec("hypersearch", "stage0", 2, 2, 1)], 5e-2, 0)


@special("CSLA: trainable identity, then a constant one (d frozen: not in the map)", needs="constant identity")
def _decay_example_csla() -> dict:
    return _decay_case([BlockSpec("csla", "stage0", 2, 2, 1, identity="trainable"),
                        BlockSpec("csla", "stage1.0", 2, 2, 1, identity="constant")], 1e-4, 1)


@special("λ = 0: every parameter gets 0")
def _decay_example_zero() -> dict:
    return _decay_case([BlockSpec("repopt_target", "stage0", 2, 3, 2), BlockSpec("repvgg", "stage1.0", 3, 3, 1)],
                       0.0, 2)


register(Clause(
    id="§3.weight-decay", section="§3", title="which parameters are weight-decayed (official map)",
    checks="the per-name decay of every trainable parameter of a 1–3 block network (CSLA with identity "
           "trainable/constant/none, HyperSearch, RepOpt target, RepVGG, QARepVGG blocks, head) against "
           "reference.repopt_sgd.official_weight_decay: λ for '*identity.weight' (d), 0 for the other 1-D "
           "parameters and every '*.bias', λ for the rest; frozen parameters (CSLA's constant scales, a "
           "constant d) are not in the map; λ ∈ {0, 1e-4, 0.05}.",
    tolerance="exact: each entry is a choice between λ and 0.",
    methods=("weight_decay_map",), strategy=_decay_cases, check=_check_weight_decay,
    examples=(_decay_example_hypersearch, _decay_example_csla, _decay_example_zero),
))


# ============================================================ §3 the theorem


@st.composite
def _theorem_cases(draw) -> dict:
    identity = draw(st.sampled_from(["trainable", "none", "constant"]))
    o = draw(st.integers(1, 3))
    i = o if identity != "none" else draw(st.integers(1, 3))
    hp = draw(sgd_hparams(allow_decay=identity != "constant"))
    steps = draw(st.integers(1, 3))
    seed = draw(seeds)
    rng = case_rng(seed)
    d = rng.uniform(0.5, 1.5, o) if identity != "none" else None
    return dict(out_channels=o, in_channels=i, identity=identity, steps=steps, **hp, seed=seed,
                scale_conv=signed_uniform(rng, o, 0.3, 1.5), scale_1x1=signed_uniform(rng, o, 0.3, 1.5),
                conv_weight=rng.standard_normal((o, i, 3, 3)), conv_1x1_weight=rng.standard_normal((o, i, 1, 1)),
                scale_identity=d, grads=[rng.standard_normal((o, i, 3, 3)) for _ in range(steps)])


#: roundings per element on the longest path: composing W'_0 (4), then per step, on each of the two paths,
#: the pulled-back gradient (1), M⊙g (1), weight decay (2), momentum (3), nesterov (2), lr·d (1), W − lr·d (1)
#: and the recomposition α3·K3 + α1·pad(K1) + d (5) — 16 per path, 32 per step
_THEOREM_ROUNDINGS_0, _THEOREM_ROUNDINGS_PER_STEP = 4, 32


def theorem_bound(u: float, steps: int, magnitudes) -> np.ndarray:
    """The round-off bound of the theorem comparison after ``steps`` steps (elementwise).

    Each rounding errs by at most ``u·|operand|``; with ``n = 4 + 32·steps`` roundings on the longest
    path, the standard bound (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1) is
    ``|W'_t − α3·K3_t − α1·pad(K1_t) − diag(d_t)| ≤ γ_n · Σ_s m_s``, ``γ_n = n·u/(1 − n·u)``, where
    ``m_s`` sums the *absolute values* of every term met at step ``s`` (the branches
    ``|α3|·|K3| + |α1|·|pad K1| + |d|``, ``|W'|``, the update ``lr·(|M|·|g| + λ·|W'| + (1 + μ)·|buf|)``
    and the branch buffers): a sum's condition number, so cancellation between the branches widens
    the bound where it must and nowhere else. For float64 and 1–3 steps that is ~1e-14 relative to
    the terms, instead of a flat 1e-9: a systematic 1e-12 relative error per step fails.
    """
    return roundoff_bound(u, _THEOREM_ROUNDINGS_0 + _THEOREM_ROUNDINGS_PER_STEP * steps, magnitudes)


def roundoff_bound(u: float, n: int, magnitudes) -> np.ndarray:
    """``γ_n·Σ magnitudes`` (elementwise), ``γ_n = n·u/(1 − n·u)``: the bound of :func:`theorem_bound` for ``n``
    roundings."""
    return (n * u / (1.0 - n * u)) * np.sum(magnitudes, axis=0)


def _theorem_paths(adapter, case):
    """Run both sides of §3.theorem through the adapter; after each step yield
    ``(t, W'_t (target, RepOpt-SGD), α3·K3_t + α1·pad(K1_t) + diag(d_t)·I_c (CSLA, SGD), magnitudes)``."""
    hp = {k: case[k] for k in _HP_KEYS}
    a3, a1, identity = case["scale_conv"], case["scale_1x1"], case["identity"]
    mask = call(adapter, "grad_mult_mask", a3, a1, case["in_channels"], identity=identity, exponent=2)
    mask_abs = np.abs(as_f64("M", mask))
    branches = {"conv.weight": case["conv_weight"], "conv_1x1.weight": case["conv_1x1_weight"]}
    d_const = None
    if identity == "trainable":
        branches["scale_identity.weight"] = case["scale_identity"]
    elif identity == "constant":
        d_const = case["scale_identity"]

    def w_of(br):
        d = br.get("scale_identity.weight", d_const)
        return ref_repopt.csla_equivalent_kernel(br["conv.weight"], br["conv_1x1.weight"], a3, a1, d)

    def abs_of(br):  # Σ |terms| of the composition, elementwise
        d = br.get("scale_identity.weight", d_const)
        return ref_repopt.csla_equivalent_kernel(np.abs(br["conv.weight"]), np.abs(br["conv_1x1.weight"]),
                                                 np.abs(a3), np.abs(a1), None if d is None else np.abs(d))

    w = w_of(branches)  # W'_0
    magnitudes = [abs_of(branches) + np.abs(w)]
    bufs = {k: None for k in branches}
    buf_w = None
    lr, mu, lam = hp["lr"], hp["momentum"], hp["weight_decay"]
    for t, g in enumerate(case["grads"], start=1):
        d = branches.get("scale_identity.weight", d_const)
        pulled = ref_repopt.csla_equivalent_kernel_backward(g, branches["conv.weight"], branches["conv_1x1.weight"],
                                                            a3, a1, d)
        before = abs_of(branches)
        new = {}
        for k, theta in branches.items():  # the CSLA side: plain SGD on every branch (mask None)
            out = call(adapter, "repopt_sgd_step", theta, pulled[k], bufs[k], grad_mult_mask=None,
                       hint=_ANY_SHAPE_HINT if k != "conv.weight" else None, **hp)
            new[k], bufs[k] = as_f64(f"CSLA {k} after step {t}", out[0]), out[1]
        branches = new
        w_prev = np.abs(w)
        out = call(adapter, "repopt_sgd_step", w, g, buf_w, grad_mult_mask=mask, **hp)  # target: RepOpt-SGD
        w, buf_w = as_f64(f"W' after step {t}", out[0]), out[1]
        m = abs_of(branches) + np.abs(w) + lr * (mask_abs * np.abs(g) + lam * (w_prev + before))
        if mu != 0 and buf_w is not None and all(b is not None for b in bufs.values()):
            b_abs = {k: np.abs(as_f64(f"CSLA {k} momentum buffer after step {t}", b)) for k, b in bufs.items()}
            m = m + lr * (1.0 + mu) * (np.abs(as_f64(f"W' momentum buffer after step {t}", buf_w)) + abs_of(b_abs))
        magnitudes.append(m)
        yield t, w, w_of(branches), list(magnitudes)


def _check_theorem(adapter, case, cmp: Checker) -> None:
    u = cmp.profile["unit_roundoff"]
    for t, w, w_csla, magnitudes in _theorem_paths(adapter, case):
        cmp.within(f"W' after step {t} (target, RepOpt-SGD) vs α3·K3 + α1·pad(K1) + diag(d)·I_c (CSLA, SGD)",
                   w, w_csla, theorem_bound(u, t, magnitudes),
                   f"round-off bound γ_n·Σ|terms| with n = {_THEOREM_ROUNDINGS_0} + "
                   f"{_THEOREM_ROUNDINGS_PER_STEP}·{t} roundings, u = {u:.3g}")


@special("trainable identity, weight decay, mixed-sign 1x1 scale")
def _theorem_example() -> dict:
    rng = case_rng(0)
    return dict(out_channels=2, in_channels=2, identity="trainable", steps=1, lr=0.1, momentum=0.0, dampening=0.0,
                nesterov=False, weight_decay=0.05, seed=0, scale_conv=np.array([1.2, 0.6]),
                scale_1x1=np.array([0.5, -0.9]), conv_weight=rng.standard_normal((2, 2, 3, 3)),
                conv_1x1_weight=rng.standard_normal((2, 2, 1, 1)), scale_identity=np.array([1.0, 0.8]),
                grads=[rng.standard_normal((2, 2, 3, 3))])


register(Clause(
    id="§3.theorem", section="§3", title="RepOpt theorem (CSLA + SGD ≡ target + RepOpt-SGD)",
    checks="A property of the adapter itself: from W'_0 = α3·K3 + α1·pad(K1) + diag(d)·I_c, plain SGD "
           "(the adapter's repopt_sgd_step with mask None) on K3, K1 and a trainable d — pulled-back "
           "gradients α3·g, α1·g_center, g_diag — and RepOpt-SGD on W' with the adapter's own grad_mult_mask "
           "keep α3·K3_t + α1·pad(K1_t) + diag(d_t)·I_c == W'_t for 1–3 steps; identity trainable, none, and "
           "constant (then λ = 0, no +1), every SGD option, mixed-sign scales.",
    tolerance="derived round-off bound γ_n·Σ_s m_s (n = 4 + 32·t roundings after t steps, u = 2^-53, m_s the "
              "sum of the absolute values of every term at step s: the sum's conditioning), about 1e-14 relative "
              "to the terms; the reference measures ~1e-16. A systematic 1e-12 relative error per step fails.",
    methods=("grad_mult_mask", "repopt_sgd_step"), strategy=_theorem_cases, check=_check_theorem,
    examples=(_theorem_example,),
))


# ============================================================ §3 a constant identity


@st.composite
def _constant_identity_cases(draw) -> dict:
    o = draw(st.integers(1, 3))
    hp = draw(sgd_hparams())  # λ ∈ {0, 0.05, 1e-4}: two cases in three decay
    steps = draw(st.integers(1, 3)) if hp["weight_decay"] == 0 else 1
    seed = draw(seeds)
    rng = case_rng(seed)
    return dict(out_channels=o, in_channels=o, identity="constant", steps=steps, **hp, seed=seed,
                scale_conv=signed_uniform(rng, o, 0.3, 1.5), scale_1x1=signed_uniform(rng, o, 0.3, 1.5),
                conv_weight=rng.standard_normal((o, o, 3, 3)), conv_1x1_weight=rng.standard_normal((o, o, 1, 1)),
                scale_identity=signed_uniform(rng, o, 0.5, 1.5), grads=[rng.standard_normal((o, o, 3, 3))
                                                                        for _ in range(steps)])


#: roundings of the first-step difference beyond the theorem's: W'_target − W'(CSLA) (1) and lr·c·λ·d (3)
_CONSTANT_IDENTITY_EXTRA_ROUNDINGS = 4


def _check_constant_identity(adapter, case, cmp: Checker) -> None:
    u = cmp.profile["unit_roundoff"]
    lam, lr = case["weight_decay"], case["lr"]
    for t, w, w_csla, magnitudes in _theorem_paths(adapter, case):
        if lam == 0:
            cmp.within(f"W' after step {t} (target) vs α3·K3 + α1·pad(K1) + diag(d)·I_c (CSLA, d constant, λ = 0)",
                       w, w_csla, theorem_bound(u, t, magnitudes),
                       f"λ = 0: exact up to the theorem's round-off bound, n = {_THEOREM_ROUNDINGS_0} + "
                       f"{_THEOREM_ROUNDINGS_PER_STEP}·{t} roundings, u = {u:.3g}")
            continue
        # first step: buf = d (undampened), then W − lr·buf, or W − lr·(d + μ·buf) with Nesterov
        c = 1.0 + case["momentum"] if case["nesterov"] else 1.0
        o = case["out_channels"]
        delta = np.zeros_like(w)
        delta[np.arange(o), np.arange(o), 1, 1] = -lr * c * lam * case["scale_identity"]
        n = _THEOREM_ROUNDINGS_0 + _THEOREM_ROUNDINGS_PER_STEP + _CONSTANT_IDENTITY_EXTRA_ROUNDINGS
        bound = roundoff_bound(u, n, magnitudes + [np.abs(w) + np.abs(w_csla) + np.abs(delta)])
        cmp.within("W' after the first step (target) vs α3·K3 + α1·pad(K1) + diag(d)·I_c (CSLA) "
                   "− lr·(1 + μ·[nesterov])·λ·diag(d)·I_c", w, w_csla + delta, bound,
                   f"λ > 0: RepOpt-SGD decays the constant diag(d)·I_c part of W', CSLA cannot; round-off bound "
                   f"with n = {n} roundings, u = {u:.3g}")


@special("λ = 0.05, plain SGD: the first step differs by exactly −lr·λ·diag(d)·I_c")
def _constant_identity_example_decay() -> dict:
    rng = case_rng(0)
    return dict(out_channels=2, in_channels=2, identity="constant", steps=1, lr=0.1, momentum=0.0, dampening=0.0,
                nesterov=False, weight_decay=0.05, seed=0, scale_conv=np.array([1.2, -0.6]),
                scale_1x1=np.array([0.5, 0.9]), conv_weight=rng.standard_normal((2, 2, 3, 3)),
                conv_1x1_weight=rng.standard_normal((2, 2, 1, 1)), scale_identity=np.array([1.5, -0.75]),
                grads=[rng.standard_normal((2, 2, 3, 3))])


@special("λ = 0, Nesterov momentum, 3 steps: exact")
def _constant_identity_example_exact() -> dict:
    rng = case_rng(1)
    return dict(out_channels=2, in_channels=2, identity="constant", steps=3, lr=0.1, momentum=0.9, dampening=0.0,
                nesterov=True, weight_decay=0.0, seed=1, scale_conv=np.array([0.8, 1.1]),
                scale_1x1=np.array([-0.4, 0.7]), conv_weight=rng.standard_normal((2, 2, 3, 3)),
                conv_1x1_weight=rng.standard_normal((2, 2, 1, 1)), scale_identity=np.array([1.25, 0.5]),
                grads=[rng.standard_normal((2, 2, 3, 3)) for _ in range(3)])


register(Clause(
    id="§3.constant-identity", section="§3", title="a constant identity is exact only without weight decay",
    checks="A property of the adapter itself, as §3.theorem, with identity='constant' (d fixed, the adapter's "
           "mask without +1): with λ = 0, plain SGD on K3, K1 and RepOpt-SGD on W' keep "
           "α3·K3_t + α1·pad(K1_t) + diag(d)·I_c == W'_t for 1–3 steps; with λ > 0 the first step differs by "
           "exactly −lr·(1 + μ·[nesterov])·λ·diag(d)·I_c (the decay of the constant part); every SGD option, "
           "mixed-sign scales and d.",
    tolerance="derived round-off bound as §3.theorem (the difference adds 4 roundings and |W'| + |W'(CSLA)| + "
              "|Δ| to the terms), ~1e-14 relative to the terms: the decay must be the float64 λ itself.",
    methods=("grad_mult_mask", "repopt_sgd_step"), strategy=_constant_identity_cases,
    check=_check_constant_identity, examples=(_constant_identity_example_decay, _constant_identity_example_exact),
))


# ============================================================ §3 W'_0


def _reinit_case(o: int, i: int, with_identity: bool, use_identity_scales: bool, drawn: bool, seed: int) -> dict:
    rng = case_rng(seed)
    return dict(out_channels=o, in_channels=i, with_identity=with_identity, use_identity_scales=use_identity_scales,
                drawn=drawn, seed=seed, scale_conv=signed_uniform(rng, o, 0.3, 1.5),
                scale_1x1=signed_uniform(rng, o, 0.3, 1.5),
                scale_identity=signed_uniform(rng, o, 0.3, 1.5) if with_identity else None,
                conv_weight=None if drawn else rng.standard_normal((o, i, 3, 3)),
                conv_1x1_weight=None if drawn else rng.standard_normal((o, i, 1, 1)))


@st.composite
def _reinit_cases(draw) -> dict:
    with_identity = draw(st.booleans())
    o = draw(st.integers(1, 4))
    i = o if with_identity else draw(st.integers(1, 4))
    drawn = draw(st.sampled_from([False, False, True]))  # a seeded draw: one case in three
    return _reinit_case(o, i, with_identity, draw(st.booleans()), drawn, draw(seeds))


#: border taps needed before the spread of a draw is tested: a correct U(±b) draw has all of n taps within
#: b/2 with probability 2^-n, so at n ≥ 40 a correct port fails the spread test with probability < 1e-12
_REINIT_SPREAD_MIN_TAPS = 40


def _reinit_call(adapter, case, seed):
    return call(adapter, "reinit_target_kernel", case["scale_conv"], case["scale_1x1"], case["scale_identity"],
                in_channels=case["in_channels"], conv_weight=case["conv_weight"],
                conv_1x1_weight=case["conv_1x1_weight"], use_identity_scales=case["use_identity_scales"], seed=seed)


def _check_reinit(adapter, case, cmp: Checker) -> None:
    a3, a1, d = case["scale_conv"], case["scale_1x1"], case["scale_identity"]
    o, i = case["out_channels"], case["in_channels"]
    w = _reinit_call(adapter, case, case["seed"])
    if not case["drawn"]:
        cmp.close("W'_0", w, ref_repopt_sgd.reinit_target_kernel(
            a3, a1, d, in_channels=i, conv_weight=case["conv_weight"], conv_1x1_weight=case["conv_1x1_weight"],
            use_identity_scales=case["use_identity_scales"]))
        return
    w = as_f64("W'_0", w)
    if w.shape != (o, i, 3, 3):
        raise Mismatch("W'_0", f"shape {w.shape} != expected {(o, i, 3, 3)}")
    cmp.equal("W'_0 drawn again with the same seed (deterministic by construction)",
              as_f64("W'_0", _reinit_call(adapter, case, case["seed"])), w)
    # the imaginary kernels' part: W'_0 − diag(d_0)·I_c; conv_default_init draws K3 ~ U(±1/sqrt(9·I)),
    # K1 ~ U(±1/sqrt(I)), so |part| ≤ |α3|·b3 off the centre and |α3|·b3 + |α1|·b1 at it
    ident = np.zeros_like(w)
    if d is not None:
        ident[np.arange(o), np.arange(o), 1, 1] = d if case["use_identity_scales"] else 1.0
    b3, b1 = 1.0 / np.sqrt(9.0 * i), 1.0 / np.sqrt(i)
    bound = np.broadcast_to((np.abs(a3) * b3)[:, None, None, None], w.shape).copy()
    bound[:, :, 1, 1] += (np.abs(a1) * b1)[:, None]
    slack = 1.0 + 16 * cmp.profile["unit_roundoff"]
    # a bound, not a comparison with a value: kept out of the clause's error statistics
    Checker(cmp.profile, ErrorStats()).within("W'_0 − diag(d_0)·I_c (the imaginary kernels' part)", w - ident,
                                              np.zeros_like(w), bound * slack,
                                              "conv_default_init: |α3|/sqrt(9·I) off the centre, + |α1|/sqrt(I) at it")
    border = np.ones((3, 3), dtype=bool)
    border[1, 1] = False
    spread = (np.abs(w) / (np.abs(a3) * b3)[:, None, None, None])[:, :, border]
    if spread.size >= _REINIT_SPREAD_MIN_TAPS and spread.max() < 0.5:
        raise Mismatch("W'_0 (drawn border taps)", f"max |W'_0|/(|α3|/sqrt(9·I)) over the {spread.size} border taps "
                       f"is {spread.max():.3f} < 0.5: the imaginary K3 is not drawn from U(±1/sqrt(9·I)) "
                       f"(a correct draw does this with probability 2^-{spread.size})")


@special("identity branch, use_identity_scales=False (d_0 = 1), mixed-sign scales")
def _reinit_example_unit_identity() -> dict:
    return _reinit_case(3, 3, True, False, False, 0)


@special("no identity branch, O ≠ I")
def _reinit_example_nonsquare() -> dict:
    return _reinit_case(2, 4, False, True, False, 1)


@special("imaginary kernels drawn from a seed (48 border taps)", needs="seeded draw")
def _reinit_example_drawn() -> dict:
    return _reinit_case(3, 3, True, True, True, 2)


register(Clause(
    id="§3.reinit", section="§3", title="re-initialization W'_0 of the target conv",
    checks="W'_0 = α3·K3_0 + α1·pad(K1_0) + diag(d_0)·I_c against reference.repopt_sgd.reinit_target_kernel for "
           "imaginary kernels the clause hands in: identity branch or not (O ≠ I), d_0 = the searched d or 1 "
           "(use_identity_scales=False), mixed-sign scales. When the port draws the kernels itself from a seed (one "
           "case in three; optional): the same seed gives the same W'_0, and W'_0 − diag(d_0)·I_c lies within "
           "conv_default_init's bounds |α3|/sqrt(9·I) (+ |α1|/sqrt(I) at the centre) and spreads over them.",
    tolerance="continuous (rtol 1e-9, atol 1e-11) for given kernels; for a draw: exact repetition, the init bound "
              "(+16 u), and a spread test whose false-alarm probability is below 1e-12.",
    methods=("reinit_target_kernel",), strategy=_reinit_cases, check=_check_reinit,
    examples=(_reinit_example_unit_identity, _reinit_example_nonsquare, _reinit_example_drawn),
))


# ============================================================ §3 HyperSearch


@st.composite
def _skeletons(draw) -> dict:
    """A small VGG skeleton (§3.architectures): stage0 one block, then 0–2 stages of 1–4 blocks."""
    stages = draw(st.integers(1, 3))
    num_blocks = (1,) + tuple(draw(st.integers(1, 4)) for _ in range(stages - 1))
    widths = tuple(draw(st.integers(1, 3)) for _ in range(stages))
    strides = tuple(draw(st.sampled_from([1, 2])) for _ in range(stages))
    return dict(num_blocks=num_blocks, widths=widths, strides=strides, in_channels=draw(st.integers(1, 3)))


def _hypersearch_scales_case(part: str, num_blocks, widths, strides, in_channels: int, seed: int) -> dict:
    params = None
    if part == "trained":  # every parameter of the network, the scales moved away from the schedule
        net = ref_repopt.hypersearch_network(num_blocks, widths, strides, in_channels=in_channels, num_classes=2)
        rng = case_rng(seed)
        params, _ = net.init(rng)
        for k in params:
            if ".scale_" in k:
                params[k] = signed_uniform(rng, params[k].shape, 0.2, 2.0)
    return dict(part=part, num_blocks=tuple(num_blocks), widths=tuple(widths), strides=tuple(strides),
                in_channels=in_channels, num_classes=2, seed=seed, params=params)


@st.composite
def _hypersearch_cases(draw) -> dict:
    part = draw(st.sampled_from(["init", "trained", "block"]))
    if part == "block":
        g = draw(_block_geometry(identity_modes=("trainable", "none")))
        if g["identity"] == "none" and g["i"] == g["o"] and g["stride"] == 1:
            g["identity"] = "trainable"  # a HyperSearch block has an identity branch wherever one can exist
        return dict(part="block", **_linear_add_case("hypersearch", **g))
    return _hypersearch_scales_case(part, **draw(_skeletons()), seed=draw(seeds))


def _check_hypersearch(adapter, case, cmp: Checker) -> None:
    if case["part"] == "block":
        _check_linear_add("hypersearch_block", adapter, case, cmp)
        return
    skeleton = (case["num_blocks"], case["widths"], case["strides"])
    net = ref_repopt.hypersearch_network(*skeleton, in_channels=case["in_channels"], num_classes=case["num_classes"])
    params = case["params"] if case["params"] is not None else net.init(case_rng(0))[0]
    expected = ref_repopt.extract_scales(net, params)
    got = call(adapter, "hypersearch_scales", *skeleton, in_channels=case["in_channels"],
               num_classes=case["num_classes"], params=case["params"])
    what = "initial scales (the schedule)" if case["params"] is None else "scales of the trained network"
    cmp.close_tree(what, got, expected)


@special("init: stage0, a stride-2 stage of 4 blocks (1, √2, 1, √(2/3)), identity branches")
def _hypersearch_example_schedule() -> dict:
    return _hypersearch_scales_case("init", (1, 4, 2), (2, 3, 3), (1, 2, 1), 2, 0)


@special("extraction: trained, mixed-sign scales; stage0 keeps its identity (in = width, stride 1)")
def _hypersearch_example_trained() -> dict:
    return _hypersearch_scales_case("trained", (1, 2), (2, 2), (1, 1), 2, 1)


@special("block: identity branch, training mode (gradients of α3, α1 and d)")
def _hypersearch_example_block() -> dict:
    return dict(part="block", **_linear_add_case("hypersearch", 2, 2, 1, "trainable", True, 2, 3, 0.1, 1e-5, 2))


@special("block: stride 2, O ≠ I (no identity), eval mode")
def _hypersearch_example_block_stride() -> dict:
    return dict(part="block", **_linear_add_case("hypersearch", 3, 2, 2, "none", False, 1, 4, 0.1, 1e-5, 3))


register(Clause(
    id="§3.hypersearch", section="§3", title="HyperSearch: block, init schedule, scale extraction",
    checks="Three parts, one per case: the HyperSearch block (the CSLA forward with trainable α3, α1, d; y, BN "
           "running statistics, ∂L/∂x and the gradients of every trainable name incl. the scales) against "
           "reference.repopt.HyperSearchBlock in training and eval mode; the initial scales of the HyperSearch "
           "network of a small VGG skeleton (α3 = α1 = 1 for stage0 and each stage's block 0, sqrt(2/i) for "
           "block i ≥ 1, d = 1 where an identity branch exists) and the scales extracted from a trained one "
           "(keys stage{k}[.{i}].scale_*.weight), against reference.repopt.hypersearch_network + "
           "extract_scales.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): the block is convolutions and BN; the schedule is sqrt(2/i) "
              "(a wrong schedule is off by ≥ 5 %); extracted scales are copies.",
    methods=("hypersearch_block", "hypersearch_scales"), strategy=_hypersearch_cases, check=_check_hypersearch,
    examples=(_hypersearch_example_schedule, _hypersearch_example_trained, _hypersearch_example_block,
              _hypersearch_example_block_stride),
))


# ============================================================ §3 scale files


def _scale_file_case(num_blocks, widths, strides, in_channels: int, seed: int) -> dict:
    layout = ref_scales.vgg_scale_layout(num_blocks, widths, strides, in_channels=in_channels)
    rng = case_rng(seed)
    scales = {k: signed_uniform(rng, shape, 0.05, 3.0) for k, shape in ref_scales.scale_keys(layout).items()}
    return dict(num_blocks=tuple(num_blocks), widths=tuple(widths), strides=tuple(strides), in_channels=in_channels,
                seed=seed, layout=layout, scales=scales)


@st.composite
def _scale_file_cases(draw) -> dict:
    return _scale_file_case(**draw(_skeletons()), seed=draw(seeds))


def _tuples_copy(tuples):
    return [tuple(np.array(v, dtype=np.float64, copy=True) for v in entry) for entry in tuples]


def _check_tuples(name: str, got, expected, layout, cmp: Checker) -> None:
    if not isinstance(got, (list, tuple)) or len(got) != len(expected):
        n = len(got) if isinstance(got, (list, tuple)) else type(got).__name__
        raise Mismatch(name, f"must be a list of {len(expected)} per-block tuples (one per block, model order), "
                             f"got {n}")
    for j, ((prefix, _, identity), g, e) in enumerate(zip(layout, got, expected)):
        order = ref_scales.OFFICIAL_ORDER[identity]
        if not isinstance(g, (list, tuple)) or len(g) != len(e):
            n = len(g) if isinstance(g, (list, tuple)) else type(g).__name__
            raise Mismatch(f"{name}[{j}]", f"block {prefix!r} must be a tuple ({', '.join(order)}), got {n} entries")
        for kind, gv, ev in zip(order, g, e):
            try:
                cmp.close(f"{name}[{j}] (block {prefix!r}) scale_{kind}", gv, ev)
            except Mismatch as exc:
                if len(e) > 1 and all(np.array_equal(np.asarray(a, dtype=np.float64), b)
                                      for a, b in zip(g, reversed(e))):
                    raise Mismatch(exc.quantity, exc.detail + ". The adapter's tuple is the reference's REVERSED: the "
                                   "original per-block tuples are (identity, 1x1, conv) / (1x1, conv), the reverse of "
                                   "the scale dict's conv, 1x1 order (docs/porting.md, 'Protocol pitfalls')",
                                   max_abs=exc.max_abs, max_rel=exc.max_rel, tol=exc.tol) from None
                raise


def _check_scale_files(adapter, case, cmp: Checker) -> None:
    layout, scales = case["layout"], case["scales"]
    expected = ref_scales.scales_to_official(scales, layout)
    got = call(adapter, "scales_to_official", scales, layout)
    _check_tuples("scales_to_official", got, expected, layout, cmp)
    given = _tuples_copy(expected)
    back = call(adapter, "scales_from_official", given, layout)
    if not all(np.array_equal(a, b) for ga, ea in zip(given, expected) for a, b in zip(ga, ea)):
        raise Mismatch("scales_from_official input", "the adapter mutated its input (inputs must be left unchanged)")
    cmp.close_tree("scales_from_official", back, ref_scales.scales_from_official(expected, layout))
    round_trip = call(adapter, "scales_from_official", _tuples_copy(got), layout)
    cmp.close_tree("scales_from_official(scales_to_official(scales)) (round trip)", round_trip, scales)


#: RepOpt-VGG-B1 (§3.architectures): the layout of the published scale file, 79 keys
_B1_SKELETON = dict(num_blocks=(1, 4, 6, 16, 1), widths=(64, 128, 256, 512, 2048), strides=(2, 2, 2, 2, 2),
                    in_channels=3)


@special("RepOpt-VGG-B1: the published scale file's layout (22 blocks with 3 scales, 6 with 2: 79 keys)")
def _scale_file_example_b1() -> dict:
    return _scale_file_case(**_B1_SKELETON, seed=0)


@special("stage0 only (a single block, no block index)")
def _scale_file_example_stage0() -> dict:
    return _scale_file_case((1,), (3,), (2,), 1, 1)


@special("every block with an identity branch (3-tuples only)")
def _scale_file_example_all_identity() -> dict:
    return _scale_file_case((1, 3), (2, 2), (1, 1), 2, 2)


register(Clause(
    id="§3.scale-files", section="§3", title="scale files: the scale dict and the original per-block tuples",
    checks="scales_to_official (dict stage{k}[.{i}].scale_{conv|1x1|identity}.weight → the original list of "
           "(d, α1, α3) / (α1, α3) tuples in model order) and scales_from_official against "
           "reference.scales, both directions, and the adapter's own round trip, on VGG skeleton layouts "
           "(plain float64 arrays, no file, no pickle): RepOpt-VGG-B1's published 79-key layout, stage0 "
           "alone, blocks with and without identity branches, mixed-sign values.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): the values are copies (exact in float64); a port that keeps "
              "scales in float32 passes only under --profile float32.",
    methods=("scales_to_official", "scales_from_official"), strategy=_scale_file_cases, check=_check_scale_files,
    examples=(_scale_file_example_b1, _scale_file_example_stage0, _scale_file_example_all_identity),
))


# ============================================================ §3 the AdamW variant

_ADAMW_BETAS = ((0.9, 0.999), (0.5, 0.9), (0.0, 0.99))


def _adamw_case(shape, masked: bool, mask_placement: str, first: bool, step: int, lr: float, betas, eps: float,
                weight_decay: float, seed: int, *, zero_scale: bool = False) -> dict:
    rng = case_rng(seed)
    mask = None
    if masked:
        o, i = shape[:2]
        a3, a1 = signed_uniform(rng, o, 0.3, 2.0), signed_uniform(rng, o, 0.3, 2.0)
        if zero_scale:
            a3[0] = 0.0  # M = 0 on channel 0's border taps: g̃ = 0 there
        mask = ref_repopt.grad_mult_mask(a3, a1, i, identity="trainable" if i == o else "none", exponent=1)
    state = None if first else {"step": float(step), "exp_avg": 0.1 * rng.standard_normal(shape),
                                "exp_avg_sq": rng.uniform(0.0, 0.05, shape)}
    return dict(shape=tuple(shape), masked=masked, mask_placement=mask_placement, first_step=first, lr=lr,
                betas=tuple(betas), eps=eps, weight_decay=weight_decay, seed=seed,
                param=np.asarray(rng.standard_normal(shape)), grad=np.asarray(rng.standard_normal(shape)),
                state=state, grad_mult_mask=mask)


@st.composite
def _adamw_cases(draw) -> dict:
    o, i = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(_STEP_SHAPES))
    shape = {"3x3": (o, i, 3, 3), "1x1": (o, i, 1, 1), "vector": (o,), "matrix": (o, i), "scalar": ()}[kind]
    masked = kind == "3x3" and draw(st.sampled_from([True, True, False]))
    return _adamw_case(shape, masked, draw(st.sampled_from(ADAMW_MASK_PLACEMENTS)), draw(st.booleans()),
                       draw(st.sampled_from([1, 2, 10, 1000])), draw(st.sampled_from([1e-2, 1e-3, 0.1])),
                       draw(st.sampled_from(_ADAMW_BETAS)), draw(st.sampled_from([1e-8, 1e-3])),
                       draw(st.sampled_from([1e-2, 0.0, 0.1])), draw(seeds))


_ADAMW_KEYS = ("lr", "betas", "eps", "weight_decay", "grad_mult_mask", "mask_placement")


def _check_adamw(adapter, case, cmp: Checker) -> None:
    kw = {k: case[k] for k in _ADAMW_KEYS}
    hint = _ANY_SHAPE_HINT.replace("repopt_sgd_step", "adamw_step") if len(case["shape"]) != 4 else None
    out = call(adapter, "adamw_step", case["param"], case["grad"], case["state"], hint=hint, **kw)
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not isinstance(out[1], Mapping):
        raise Mismatch("adamw_step", f"must return (new_param, new_state), got {type(out).__name__}")
    p_ref, s_ref = ref_optim.adamw_step(case["param"], case["grad"], case["state"], **kw)
    try:
        cmp.close("new_param", out[0], p_ref)
    except Mismatch as exc:
        if case["grad_mult_mask"] is not None and case["mask_placement"] == "grad_and_update":
            once, _ = ref_optim.adamw_step(case["param"], case["grad"], case["state"], **{**kw, "mask_placement": "grad"})
            try:
                Checker(cmp.profile, ErrorStats()).close("new_param", out[0], once)
            except Mismatch:
                raise exc from None
            raise Mismatch(exc.quantity, exc.detail + ". The adapter's step is the one with the mask on the gradient "
                           "only: mask_placement='grad_and_update' (the official RepOptimizerAdamW) also multiplies "
                           "the step by M", max_abs=exc.max_abs, max_rel=exc.max_rel, tol=exc.tol) from None
        raise
    missing = [k for k in ("step", "exp_avg", "exp_avg_sq") if k not in out[1]]
    if missing:
        raise Mismatch("new_state", f"must hold 'step', 'exp_avg' and 'exp_avg_sq' (torch's keys), missing {missing}")
    cmp.equal("new_state['step']", as_f64("new_state['step']", out[1]["step"]), s_ref["step"])
    cmp.close("new_state['exp_avg']", out[1]["exp_avg"], s_ref["exp_avg"])
    cmp.close("new_state['exp_avg_sq']", out[1]["exp_avg_sq"], s_ref["exp_avg_sq"])


@special("first step, exponent-1 mask with mixed signs, grad_and_update (the official variant)")
def _adamw_example_official() -> dict:
    return _adamw_case((2, 2, 3, 3), True, "grad_and_update", True, 1, 1e-2, (0.9, 0.999), 1e-8, 1e-2, 0)


@special("later step, masked, mask_placement='grad', a zero mask entry")
def _adamw_example_grad_only() -> dict:
    return _adamw_case((2, 3, 3, 3), True, "grad", False, 10, 0.1, (0.5, 0.9), 1e-3, 0.1, 1, zero_scale=True)


@special("(O,) vector, later step, β1 = 0, weight decay (unmasked: torch.optim.AdamW)")
def _adamw_example_vector() -> dict:
    return _adamw_case((3,), False, "grad_and_update", False, 2, 1e-3, (0.0, 0.99), 1e-8, 0.1, 2)


register(Clause(
    id="§3.adamw", section="§3", title="one (masked) AdamW step (the RepOpt AdamW variant)",
    checks="g̃ = M⊙g → t + 1 → W·(1 − lr·λ) → m, v → W − lr/(1−β1^t)·[M⊙]m/(sqrt(v)/sqrt(1−β2^t) + eps) against "
           "reference.optim.adamw_step: unmasked parameters of any shape and masked 3x3 kernels (exponent-1 masks, "
           "mixed-sign scales, a zero entry), mask_placement 'grad_and_update' and 'grad', first and later steps "
           "(state step, exp_avg, exp_avg_sq), β1 ∈ {0.9, 0.5, 0}, eps ∈ {1e-8, 1e-3}, λ ∈ {0, 0.01, 0.1}. The "
           "step of the port is checked against the reference step, not against the CSLA + AdamW bound.",
    tolerance="continuous (rtol 1e-9, atol 1e-11): a handful of float64 operations and one square root per "
              "element; the step count is exact.",
    methods=("adamw_step",), strategy=_adamw_cases, check=_check_adamw,
    examples=(_adamw_example_official, _adamw_example_grad_only, _adamw_example_vector),
))
