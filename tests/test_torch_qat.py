"""SPEC §5/§6: QAT on merged weights and ClusterQAT in torch (repspec.torch_impl.quantization.qat) equal the reference.

Small networks (1–3 blocks of RepVGG / RepVGG+OABN / QARepVGG / RepOpt target kind, 1–6
channels, strides 1/2, 4–8 px, batch 2–4) start from the same trained-looking state
(random BN affine and statistics), are wrapped by the reference ``make_qat_network`` and
by torch ``make_qat_model`` (uniform weights 2–8 bits per layer or per channel, or
k-means 1–3 bits with ``update_every`` 1–3; activations 2–8 bits or FP32; first block FP32
or not) and trained with reference SGD vs ``torch.optim.SGD``. At **every** iteration the
loss, logits, every parameter, every momentum buffer, the BN statistics, the centroids,
the step counters and the activation ranges agree (float64, ``exact_math`` table).

Quantization is discontinuous, so tiny float differences could flip a decision. The
comparison is made deterministic (SPEC §6):

* both sides run float64 with the same operation order for everything that decides:
  the fused kernel (bit-identical), the quantizers (``quant.py`` is bit-exact), the
  k-means wrap-time fit (bit-identical DP and bincount sums on the CPU);
* every decision the reference takes — each rounding ``x/s`` of weights, activations
  and zero points, each activation STE mask ``lo ≤ x ≤ hi``, each k-means assignment of
  the wrap-time fit, of every Lloyd iteration of every refit and of the fake
  quantization, each ReLU sign and each OABN clip ``|t0| ≤ s`` — is replayed from the
  reference's caches, and an example where one lies within ``EPS`` (relative) of its
  boundary is ``assume``-d away (never compared loosely);
* activation ranges of blocks whose input is computed (not the network input) are
  seeded from a PTQ-style calibration batch: a range initialized *from the training
  batch itself* puts that batch's maximum exactly on the STE boundary (``hi_repr ≈ max x``
  up to one rounding), which no ε can separate. The first-batch initialization is
  checked on the network input, which is bit-identical on both sides.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, event, given
from hypothesis import strategies as st

from repspec.conformance.clauses import qat as qat_clauses
from repspec.reference import optim as ref_optim
from repspec.reference import qat as RQ
from repspec.reference import quant as RQu
from repspec.reference.network import train
from repspec.torch_impl import create_model, load_reference_arrays, module_arrays
from tests.twins import reference_network_for
from repspec.torch_impl.quantization import qat as TQ
from repspec.torch_impl.modules.blocks import CSLABlock, FusedConvBlock, RepVGGBlock
from repspec.torch_impl.quantization.quant import ActivationFakeQuant
from tests import strategies as S
from tests.tolerances import assert_close, assert_trees_close

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]
KINDS = ("repvgg", "repvgg_oabn", "qarepvgg", "target")
MODEL = {"repvgg": "repvgg_tiny8", "repvgg_oabn": "repvgg_tiny8_oabn", "qarepvgg": "qarepvgg_tiny8",
         "target": "repopt_vgg_tiny8"}
OABN_S = 0.8
N_ITER = 5
EPS = 1e-9  # relative distance to a decision boundary below which an example is discarded






# ------------------------------------------------------------------------- set-up


def build(kind: str, layout: dict, seed: int, *, model=None):
    """Torch model (float64, CPU), its reference network, random trained-looking state, 2 batches.

    ``model``: a ready torch model to use instead of the registry one (``kind`` then unused)."""
    if model is None:
        overrides = {k: layout[k] for k in ("num_blocks", "widths", "strides", "in_channels")}
        if kind == "repvgg_oabn":
            overrides["oabn_threshold"] = OABN_S
        model = create_model(MODEL[kind], num_classes=layout["num_classes"], **overrides)
    model = model.double()
    net = reference_network_for(model)
    rng = np.random.default_rng(seed)
    params, buffers = net.init(rng)
    for k in params:
        if k.endswith(("bn.weight", "rbr_identity.weight")):
            params[k] = rng.choice([-1.0, 1.0], params[k].shape) * rng.uniform(0.5, 1.5, params[k].shape)
        elif k.endswith(("bn.bias", "rbr_identity.bias")):
            params[k] = rng.normal(0.0, 0.3, params[k].shape)
    for k in buffers:
        buffers[k] = rng.normal(0.0, 0.3, buffers[k].shape) if k.endswith("running_mean") \
            else rng.uniform(0.5, 2.0, buffers[k].shape)
    load_reference_arrays(model, params, buffers)
    shape = (layout["batch"], layout["in_channels"], *layout["hw"])
    batches = [(rng.standard_normal(shape), rng.integers(0, layout["num_classes"], layout["batch"]))
               for _ in range(2)]
    calib = rng.standard_normal(shape)
    return model, net, params, buffers, batches, calib, rng


def quantizers(spec: dict):
    """(reference quantizer, torch template) for ``spec``."""
    if spec["kind"] == "uniform":
        return (RQ.UniformWeightQuantizer(spec["bits"], per_channel=spec["per_channel"]),
                TQ.UniformWeightQuantizer(spec["bits"], per_channel=spec["per_channel"]))
    return (RQ.KMeansWeightQuantizer(spec["bits"], update_every=spec["update_every"]),
            TQ.KMeansWeightQuantizer(spec["bits"], update_every=spec["update_every"]))


def calibrated_ranges(net, params, buffers, calib, rng, keep_first_fp32):
    """PTQ-style seeds: min/max of each block's input on a calibration batch (FP fused forward), scaled
    by a random factor so that some training values fall outside; not for the network input's block."""
    fp, fpbuf = RQ.make_qat_network(net, params, buffers, weight_quantizer=None, act_bits=None)
    _, _, cache = fp.forward(params, fpbuf, calib, training=False)
    ranges = {}
    for i, ((prefix, _), c) in enumerate(zip(net.blocks, cache[0])):
        if i == 0:
            continue  # the network input: first-batch initialization, bit-identical on both sides
        f = rng.uniform(0.6, 1.3)
        ranges[prefix] = (f * float(c.x.min()), f * float(c.x.max()))
    return ranges


# ------------------------------------------------------------------ decision margins


# the conformance clauses' margins (§5.qat, §5.cluster-qat): one definition of a tie for both
_code_margin, _midpoint_margin, _lloyd_margin = qat_clauses._code_margin, qat_clauses._midpoint_margin, \
    qat_clauses._refit_margin


def _scope(tree, prefix):
    return {k[len(prefix) + 1:]: v for k, v in tree.items() if k.startswith(prefix + ".")}


def decision_margin(qnet, records, params0, buffers0, batches) -> float:
    """Smallest relative distance of any reference decision to its boundary over the whole run."""
    margin = np.inf
    params, buffers = params0, buffers0
    for i in range(len(records)):
        x = batches[i % len(batches)][0]
        _, _, cache = qnet.forward(params, buffers, x, training=True)
        for bi, ((prefix, qb), c) in enumerate(zip(qnet.blocks, cache[0])):
            pre = c.pre
            margin = min(margin, float(np.min(np.abs(pre))) / max(float(np.max(np.abs(pre))), 1e-300))
            wq, aq = qb.weight_quantizer, qb.act_quantizer
            if isinstance(wq, RQ.UniformWeightQuantizer):
                scale = RQu.weight_qparams(c.kernel, wq.bits, wq.per_channel)
                s = np.asarray(scale)[:, None, None, None] if wq.per_channel else scale
                margin = min(margin, _code_margin(c.kernel / s))
            elif isinstance(wq, RQ.KMeansWeightQuantizer):
                prev = buffers[f"{prefix}.weight_quant.centroids"]
                if int(buffers[f"{prefix}.weight_quant.step"]) % wq.update_every == 0:
                    margin = min(margin, _lloyd_margin(c.kernel, prev, wq.max_iter))
                margin = min(margin, _midpoint_margin(c.kernel, c.weight_state["centroids"]))
            if aq is not None and bi > 0:  # block 0 sees the network input: bit-identical on both sides
                lo, hi = float(c.act_state["lo"]), float(c.act_state["hi"])
                scale, zp = RQu.activation_qparams(lo, hi, aq.bits)
                lo_r, hi_r = RQu.activation_range(scale, zp, aq.bits)
                width = max(hi_r - lo_r, 1e-300)
                if scale > 0.0:  # scale 0 (a zero range): every input maps to zp, no rounding decision
                    margin = min(margin, _code_margin(c.x / scale))
                    if min(lo, 0.0) < 0.0:
                        margin = min(margin, _code_margin(-min(lo, 0.0) / scale))
                xs = c.x[~((c.x == 0.0) & (lo_r == 0.0))]  # exact zeros on an exact 0 bound: same on both sides
                if xs.size:
                    margin = min(margin, float(np.min(np.abs(xs - lo_r))) / width,
                                 float(np.min(np.abs(xs - hi_r))) / width)
            inner = qb.inner
            if getattr(inner, "has_identity", False) and np.isfinite(getattr(inner, "oabn_threshold", np.inf)):
                p, b = _scope(params, prefix), _scope(buffers, prefix)
                t0 = p["rbr_identity.weight"] / np.sqrt(b["rbr_identity.running_var"] + inner.bn_eps)
                s = inner.oabn_threshold
                margin = min(margin, float(np.min(np.abs(np.abs(t0) - s))) / s)
        params, buffers = records[i].params, records[i].buffers
    return margin


# ------------------------------------------------------------------------ the check


def run_and_compare(kind, layout, spec, hp, seed, device, *, act_bits, keep_first_fp32, on_tie=assume,
                    record=event, model=None):
    model, net, params, buffers, batches, calib, rng = build(kind, layout, seed, model=model)
    rwq, twq = quantizers(spec)
    ranges = calibrated_ranges(net, params, buffers, calib, rng, keep_first_fp32) if act_bits else {}
    qnet, qbuf = RQ.make_qat_network(net, params, buffers, weight_quantizer=rwq, act_bits=act_bits,
                                     keep_first_fp32=keep_first_fp32, act_ranges=ranges)
    model = model.to(device)
    qmodel = TQ.make_qat_model(model, weight_quantizer=twq, act_bits=act_bits, keep_first_fp32=keep_first_fp32,
                               act_ranges=ranges)
    cmp = dict(kind="exact_math", dtype="float64")
    p0, b0 = module_arrays(qmodel)
    if spec["kind"] == "kmeans":
        for prefix, qb in qnet.blocks:  # the wrap-time fit: bit-identical on the CPU
            if qb.weight_quantizer is not None:
                key = f"{prefix}.weight_quant.centroids"
                if device == "cpu":
                    assert np.array_equal(b0[key], qbuf[key]), f"{key} at wrap time"
                else:  # another device sums the DP's centring mean differently: a near-tie may resolve apart
                    if not np.allclose(b0[key], qbuf[key], rtol=1e-12, atol=0):
                        on_tie(False)
    assert_trees_close(p0, params, prefix="param ", **cmp)
    assert_trees_close(b0, qbuf, prefix="buffer ", **cmp)

    records = train(qnet, params, qbuf, ref_optim.SGD(**hp), batches, N_ITER)
    margin = decision_margin(qnet, records, params, qbuf, batches)
    on_tie(margin > EPS)
    n_quant = sum(qb.weight_quantizer is not None for _, qb in qnet.blocks)
    record(f"{spec['kind']}: {n_quant} quantized block(s), act_bits={act_bits}")

    qmodel.train()
    named = dict(qmodel.named_parameters())
    opt = torch.optim.SGD(qmodel.parameters(), **hp)
    for i, rec in enumerate(records):
        x, labels = batches[i % len(batches)]
        opt.zero_grad()
        logits = qmodel(torch.from_numpy(x).to(device))
        loss = F.cross_entropy(logits, torch.from_numpy(labels).to(device))
        loss.backward()
        grads = {k: p.grad.detach().cpu().double().numpy() for k, p in named.items()}
        opt.step()
        assert_close(loss.item(), rec.loss, name="loss", iteration=i, **cmp)
        assert_close(logits.detach().cpu(), rec.logits, name="logits", iteration=i, **cmp)
        assert_trees_close(grads, rec.grads, prefix="grad ", iteration=i, **cmp)
        p_now, b_now = module_arrays(qmodel)
        assert_trees_close(p_now, rec.params, prefix="param ", iteration=i, **cmp)
        assert_trees_close(b_now, rec.buffers, prefix="buffer ", iteration=i, **cmp)  # centroids, steps, ranges
        for k, v in b_now.items():
            if "running_" in k:  # BN statistics are frozen during QAT
                assert np.array_equal(v, buffers[k]), f"iteration {i}: {k} changed"
        state = {}
        for k, p in named.items():
            buf = opt.state.get(p, {}).get("momentum_buffer")
            state[k] = {} if buf is None else {"momentum_buffer": buf.detach().cpu().double().numpy()}
        assert_trees_close(state, rec.optimizer_state, prefix="optimizer state ", iteration=i, **cmp)


weight_specs = st.one_of(
    st.fixed_dictionaries({"kind": st.just("uniform"), "bits": st.integers(2, 8), "per_channel": st.booleans()}),
    st.fixed_dictionaries({"kind": st.just("kmeans"), "bits": st.integers(1, 3), "update_every": st.integers(1, 3)}),
)


@pytest.mark.parametrize("device", DEVICES)
@given(kind=st.sampled_from(KINDS), layout=S.qat_layouts(), spec=weight_specs, hp=S.sgd_hparams(), seed=S.seeds,
       act_bits=st.one_of(st.none(), st.integers(2, 8)), keep_first_fp32=st.booleans())
def test_qat_training_matches_reference_every_iteration(device, kind, layout, spec, hp, seed, act_bits,
                                                        keep_first_fp32):
    run_and_compare(kind, layout, spec, hp, seed, device, act_bits=act_bits, keep_first_fp32=keep_first_fp32)


def _require(ok: bool) -> None:
    assert ok, "the fixed example comes too close to a decision boundary"


FIXED_LAYOUT = dict(num_blocks=(1, 2, 1), widths=(3, 4, 5), strides=(1, 1, 2), in_channels=2, hw=(6, 6), batch=3,
                    num_classes=3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", [{"kind": "uniform", "bits": 4, "per_channel": True},
                                  {"kind": "kmeans", "bits": 2, "update_every": 2}], ids=["uniform", "kmeans"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_block_kind_and_quantizer_on_a_fixed_network(kind, spec, device):
    """Every (block kind, quantizer) pair once, all blocks quantized, 4-bit activations, momentum + nesterov."""
    hp = dict(lr=0.05, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-4)
    run_and_compare(kind, FIXED_LAYOUT, spec, hp, 11, device, act_bits=4, keep_first_fp32=False,
                    on_tie=_require, record=lambda _: None)


@pytest.mark.parametrize("spec", [{"kind": "uniform", "bits": 3, "per_channel": True},
                                  {"kind": "kmeans", "bits": 2, "update_every": 1}], ids=["uniform", "kmeans"])
def test_grouped_blocks(spec):
    """Grouped convolutions (RepVGG ``groups=2``, with and without identity): fusion, quantization, training."""
    from repspec.torch_impl.modules.models import VGGNet

    def factory(i, o, s, stage, index):
        return RepVGGBlock(i, o, s, groups=1 if stage == 0 else 2)

    model = VGGNet(factory, (1, 2), (4, 4), (1, 2), num_classes=3, in_channels=2)
    layout = dict(num_blocks=(1, 2), widths=(4, 4), strides=(1, 2), in_channels=2, hw=(6, 6), batch=3, num_classes=3)
    hp = dict(lr=0.05, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0)
    run_and_compare("repvgg", layout, spec, hp, 5, "cpu", act_bits=5, keep_first_fp32=False, on_tie=_require,
                    record=lambda _: None, model=model)


# ---------------------------------------------------------------- torch-side properties


def _fresh(kind="repvgg", seed=0, **layout):
    lay = dict(FIXED_LAYOUT, **layout)
    model, net, params, buffers, batches, calib, rng = build(kind, lay, seed)
    return model, batches


@pytest.mark.parametrize("kind", KINDS)
def test_fused_kernel_bias_is_the_reference_fusion_bit_for_bit_and_differentiable(kind):
    model, net, params, buffers, batches, _, _ = build(kind, FIXED_LAYOUT, 3)
    for prefix, block in model.named_blocks():
        kernel, bias = TQ.fused_kernel_bias(block)
        rb = dict(net.blocks)[prefix]
        ref = RQ._fuse(rb, _scope(params, prefix), _scope(buffers, prefix))
        assert np.array_equal(kernel.detach().numpy(), ref[0]) and np.array_equal(bias.detach().numpy(), ref[1])
        k2, b2 = block.eval().get_equivalent_kernel_bias()
        assert_close(kernel.detach(), k2.detach().numpy(), name="vs get_equivalent_kernel_bias")
        (kernel.sum() + bias.sum()).backward()
        for name, p in block.named_parameters():
            assert p.grad is not None, f"{prefix}.{name} gets no gradient"


def test_first_block_and_head_stay_fp32_and_bn_statistics_stay_frozen():
    model, batches = _fresh("repvgg")
    before = copy.deepcopy(model.state_dict())
    qmodel = TQ.make_qat_model(model, weight_quantizer=TQ.KMeansWeightQuantizer(2), act_bits=8)
    first = qmodel.stage0
    assert isinstance(first, TQ.QATBlock) and first.weight_quant is None and first.act_quant is None
    assert isinstance(qmodel.linear, torch.nn.Linear) and not isinstance(qmodel.linear, TQ.QATBlock)
    others = [b for p, b in qmodel.named_blocks() if p != "stage0"]
    assert all(isinstance(b.weight_quant, TQ.KMeansWeightQuantizer) and b.act_quant.bits == 8 for b in others)
    assert len({id(b.weight_quant) for b in others}) == len(others), "one codebook per layer"
    x = torch.from_numpy(batches[0][0])
    ref_first = copy.deepcopy(model.stage0).eval()
    assert_close(first(x).detach(), ref_first(x).detach().numpy(), name="FP32 first block == eval block")
    opt = torch.optim.SGD(qmodel.parameters(), lr=0.1)
    qmodel.train()
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(qmodel(x), torch.from_numpy(batches[0][1])).backward()
        opt.step()
    sd = qmodel.state_dict()
    for k, v in before.items():
        if "running_" in k or "num_batches_tracked" in k:
            assert torch.equal(sd[k], v), f"{k} changed during QAT"
    assert torch.equal(model.state_dict()["stage1.0.rbr_dense.conv.weight"],
                       before["stage1.0.rbr_dense.conv.weight"]), "make_qat_model must not modify its input"
    extra = set(sd) - set(before)
    assert extra and all(".weight_quant." in k or ".act_quant." in k for k in extra)
    assert set(before) <= set(sd), "the QAT state dict keeps every original key"


@pytest.mark.parametrize("update_every", [1, 2, 3])
def test_cluster_qat_refit_schedule_and_eval_freezes(update_every):
    model, batches = _fresh("qarepvgg")
    qmodel = TQ.make_qat_model(model, weight_quantizer=TQ.KMeansWeightQuantizer(2, update_every=update_every),
                               act_bits=None, keep_first_fp32=False)
    wq = qmodel.stage1[0].weight_quant
    opt = torch.optim.SGD(qmodel.parameters(), lr=0.5)
    x, y = (torch.from_numpy(a) for a in batches[0])
    qmodel.train()
    for t in range(6):
        before = wq.centroids.clone()
        kernel = qmodel.stage1[0].fused_kernel_bias()[0].detach()
        opt.zero_grad()
        F.cross_entropy(qmodel(x), y).backward()
        opt.step()
        if t % update_every == 0:
            from repspec.torch_impl.quantization.kmeans import kmeans_1d
            assert torch.equal(wq.centroids, kmeans_1d(kernel, 4, init_centroids=before).centroids)
        else:
            assert torch.equal(wq.centroids, before), f"step {t}: centroids must stay fixed between refits"
        assert int(wq.step) == t + 1
    qmodel.eval()
    frozen = {k: v.clone() for k, v in qmodel.state_dict().items()}
    qmodel(x * 3)
    assert all(torch.equal(v, qmodel.state_dict()[k]) for k, v in frozen.items()), "eval must change no state"


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_codebooks_reproduce_the_quantized_kernels(bits):
    model, batches = _fresh("repvgg", seed=5)
    qmodel = TQ.make_qat_model(model, weight_quantizer=TQ.KMeansWeightQuantizer(bits), act_bits=8)
    books = TQ.codebooks(qmodel)
    assert set(books) == {p for p, _ in qmodel.named_blocks()} - {"stage0"}
    for prefix, cb in books.items():
        block = TQ.qat_blocks(qmodel)[prefix]
        k_hat, b = block.quantized_kernel_bias()
        assert torch.equal(cb.centroids[cb.indices], k_hat) and torch.equal(cb.bias, b)
        assert cb.centroids.shape == (2**bits,) and cb.indices.shape == k_hat.shape
        assert torch.unique(k_hat).numel() <= 2**bits
        assert (cb.stride, cb.groups) == (block.stride, block.groups)


@given(seed=S.seeds, bits=st.integers(1, 4), update_every=st.integers(1, 4),
       scales=st.lists(st.sampled_from([0.0, 1e-3, 0.1, 2.0]), min_size=1, max_size=6))
def test_cached_assignment_equals_the_full_assignment(seed, bits, update_every, scales):
    """``cache_assignments=True`` (check the two midpoints around each weight, re-assign the movers) gives
    exactly ``kmeans_fake_quantize(kernel, centroids)``, in training (with refits) and in eval, for small
    and large moves (weights crossing several midpoints)."""
    from repspec.torch_impl.quantization.kmeans import kmeans_fake_quantize
    rng = S.rng_from(seed)
    kernel = torch.from_numpy(rng.standard_t(3, (4, 3, 3, 3)))
    cached = TQ.KMeansWeightQuantizer(bits, update_every=update_every)
    plain = TQ.KMeansWeightQuantizer(bits, update_every=update_every, cache_assignments=False)
    for q in (cached, plain):
        q.initialize(kernel)
    for i, scale in enumerate(scales):
        kernel = kernel + scale * torch.from_numpy(rng.standard_normal(kernel.shape))
        if cached._cache is not None and i % 2:  # some weights exactly on the midpoint below / above them
            bounds = cached._bounds(cached.centroids)
            if cached._cache[2] is None:
                lower, upper = bounds[:-1][cached._cache[1]], bounds[1:][cached._cache[1]]
            else:
                lower, upper = cached._cache[2], cached._cache[3]
            pick = torch.from_numpy(rng.random(kernel.shape) < 0.3)
            kernel = torch.where(pick & torch.isfinite(lower), lower, kernel)
            kernel = torch.where(pick & ~torch.isfinite(lower) & torch.isfinite(upper), upper, kernel)
        mode = i % 3 != 2
        cached.train(mode)
        plain.train(mode)
        a, b = cached(kernel), plain(kernel)
        assert torch.equal(cached.centroids, plain.centroids)
        assert torch.equal(a, b) and torch.equal(a, kmeans_fake_quantize(kernel, cached.centroids))
    assert plain._cache is None


def test_uniform_quantized_kernel_uses_at_most_2_to_the_bits_minus_1_values():
    model, _ = _fresh("target", seed=2)
    qmodel = TQ.make_qat_model(model, weight_quantizer=TQ.UniformWeightQuantizer(3), act_bits=None)
    for prefix, block in TQ.qat_blocks(qmodel).items():
        if block.weight_quant is not None:
            assert torch.unique(block.quantized_kernel_bias()[0]).numel() <= 7
    assert TQ.codebooks(qmodel) == {}


def test_activation_observer_matches_the_reference_quantizer():
    """The unseeded (first training batch) observer path, compared on identical inputs."""
    rng = np.random.default_rng(4)
    ref = RQ.ActivationQuantizer(6, momentum=0.3)
    state = ref.init_state()
    ours = ActivationFakeQuant(6, momentum=0.3).double()
    for i in range(4):
        xb = rng.normal(size=(2, 3, 4, 4)) * (i + 1)
        y_ref, state = ref.forward(xb, state, training=True)
        y = ours(torch.from_numpy(xb))
        assert np.array_equal(y.numpy(), y_ref)
        assert float(ours.lo) == float(state["lo"]) and float(ours.hi) == float(state["hi"])


def test_float32_model_runs_on_float32_state():
    model, batches = _fresh("repvgg_oabn", seed=1)
    model = model.float()
    qmodel = TQ.make_qat_model(model, weight_quantizer=TQ.KMeansWeightQuantizer(2), act_bits=8)
    assert qmodel.stage1[0].weight_quant.centroids.dtype == torch.float32
    assert qmodel.stage1[0].act_quant.lo.dtype == torch.float32
    qmodel.train()
    out = qmodel(torch.from_numpy(batches[0][0]).float())
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


# -------------------------------------------------------------------------- bad input


def _csla_model():
    return create_model("csla_vgg_tiny8", num_classes=2, num_blocks=(1, 1), widths=(2, 2), strides=(1, 1),
                        in_channels=2)


BAD = [
    (TypeError, "block must be a RepVGGBlock", lambda: TQ.QATBlock(CSLABlock(2, 2))),
    (TypeError, "block must be a RepVGGBlock", lambda: TQ.QATBlock(torch.nn.Conv2d(2, 2, 3))),
    (TypeError, "block must be a RepVGGBlock", lambda: TQ.QATBlock(FusedConvBlock(2, 2))),
    (TypeError, "deployed", lambda: TQ.QATBlock(RepVGGBlock(2, 2, deploy=True))),
    (TypeError, "block 'stage0' must be", lambda: TQ.make_qat_model(_csla_model(), weight_quantizer=None,
                                                                     act_bits=8)),
    (TypeError, "model must be a VGGNet", lambda: TQ.make_qat_model(RepVGGBlock(2, 2), weight_quantizer=None,
                                                                    act_bits=8)),
    (TypeError, "weight_quantizer must be", lambda: TQ.QATBlock(RepVGGBlock(2, 2), weight_quantizer="uniform")),
    (TypeError, "act_quantizer must be", lambda: TQ.QATBlock(RepVGGBlock(2, 2), act_quantizer=torch.nn.ReLU())),
    (ValueError, "must be in 2..16", lambda: TQ.UniformWeightQuantizer(1)),
    (ValueError, "must be in 1..16", lambda: TQ.KMeansWeightQuantizer(17)),
    (ValueError, "update_every must be >= 1", lambda: TQ.KMeansWeightQuantizer(2, update_every=0)),
    (ValueError, "max_iter must be >= 0", lambda: TQ.KMeansWeightQuantizer(2, max_iter=-1)),
    (ValueError, "init must be one of", lambda: TQ.KMeansWeightQuantizer(2, init="warm")),
    (ValueError, "needs an explicit seed", lambda: TQ.KMeansWeightQuantizer(2, init="kmeans++")),
    (TypeError, "per_channel must be a bool", lambda: TQ.UniformWeightQuantizer(4, per_channel=1)),
    (ValueError, "not block prefixes", lambda: TQ.make_qat_model(_fresh()[0], weight_quantizer=None, act_bits=8,
                                                                 act_ranges={"stage9": (0.0, 1.0)})),
    (ValueError, "lo <= hi", lambda: TQ.make_qat_model(_fresh()[0], weight_quantizer=None, act_bits=8,
                                                       act_ranges={"stage1.0": (1.0, 0.0)})),
    (ValueError, "act_momentum must be in", lambda: TQ.make_qat_model(_fresh()[0], weight_quantizer=None,
                                                                      act_bits=8, act_momentum=2.0)),
    (ValueError, "act_bits must be in", lambda: TQ.make_qat_model(_fresh()[0], weight_quantizer=None, act_bits=0)),
    (RuntimeError, "no centroids yet", lambda: TQ.KMeansWeightQuantizer(2)(torch.randn(2, 2, 3, 3))),
]


@pytest.mark.parametrize("exc, match, call", BAD, ids=[f"{i}-{m}" for i, (_, m, _) in enumerate(BAD)])
def test_bad_input(exc, match, call):
    with pytest.raises(exc, match=match):
        call()


def test_validation_happens_before_any_change():
    model, _ = _fresh()
    model.stage1[1] = CSLABlock(4, 4)  # an unsupported block late in the network
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError):
        TQ.make_qat_model(model, weight_quantizer=TQ.KMeansWeightQuantizer(2), act_bits=8, inplace=True)
    assert isinstance(model.stage0, RepVGGBlock), "the model was modified before the error"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
