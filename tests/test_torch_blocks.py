"""SPEC §2–§4 in torch: blocks, OABN, the model registry, deployment and interop.

- every registered architecture: structure (state-dict layout, parameter counts of the
  official sizes, on the ``meta`` device) and ``convert_to_deploy(model)(x) == model.eval()(x)``
  in float64 with randomized BN statistics (tiny variants and the A0 sizes; the big
  A1/B0/B1 only structurally, to keep the suite fast);
- ``switch_to_deploy`` per block kind; the fused kernel's autograd against the reference's
  fusion backward (the QAT path of SPEC §5);
- OABN: ``s = inf`` is ``BatchNorm2d`` bit for bit (train, eval, grads, running stats);
  finite ``s`` against the reference (both gradient modes);
- bad arguments raise before any state changes; registry errors list the valid names.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from repspec.reference import oabn as ref_oabn
from repspec.reference import repvgg as ref_repvgg
from repspec.torch_impl import (
    OABN,
    CSLABlock,
    FusedConvBlock,
    HyperSearchBlock,
    QARepVGGBlock,
    RepOptTargetBlock,
    RepVGGBlock,
    VGGNet,
    convert_to_deploy,
    create_model,
    expected_scale_keys,
    list_models,
    load_reference_arrays,
    module_arrays,
    repopt_from_csla,
)
from tests.twins import reference_network_for
from tests.strategies import grouped_block_shapes, seeds
from tests.tolerances import assert_close, assert_trees_close

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]
F64 = torch.float64




@torch.no_grad()
def randomize_bn_(model: nn.Module, seed: int) -> nn.Module:
    """Random γ (either sign, |γ| ∈ [0.5, 1.5]), β, running mean and running var ∈ [0.5, 2]."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            sign = torch.where(torch.rand(c, generator=g) < 0.3, -1.0, 1.0)
            for t, v in ((m.weight, sign * (0.5 + torch.rand(c, generator=g))),
                         (m.bias, 0.5 * torch.randn(c, generator=g)),
                         (m.running_mean, 0.5 * torch.randn(c, generator=g)),
                         (m.running_var, 0.5 + 1.5 * torch.rand(c, generator=g))):
                t.copy_(v)
    return model


def _input_size(name: str) -> int:
    return 8 if "tiny8" in name else 32


# ------------------------------------------------------------------------ registry

FAMILIES = ("repvgg_{}", "repvgg_{}_oabn", "qarepvgg_{}", "csla_vgg_{}", "repopt_vgg_{}", "hs_vgg_{}")
SIZES = ("a0", "a1", "b0", "b1", "tiny8", "tiny32")


SIZES_ALL_FAMILIES = SIZES + ("a2", "b2", "b3")
GROUPED_SIZES = tuple(f"{b}g{g}" for b in ("b1", "b2", "b3") for g in (2, 4))


def test_registry_lists_every_family_and_size():
    names = list_models()
    assert names == sorted(names)
    expected = {f.format(s) for f in FAMILIES for s in SIZES_ALL_FAMILIES}
    expected |= {f.format(s) for f in FAMILIES[:3] for s in GROUPED_SIZES}  # blocks with groups
    expected |= {"repvgg_d2se"}  # SE block: RepVGG blocks only
    expected |= {f.format(s) for f in FAMILIES[3:] for s in ("l1", "l2")}  # RepOpt-VGG-L1/L2
    assert set(names) == expected


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        create_model("repvgg_z9")
    assert "repvgg_z9" in str(info.value)
    assert all(n in str(info.value) for n in list_models())
    with pytest.raises(TypeError, match="name"):
        create_model(3)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(name="repvgg_tiny8", bogus=1), TypeError, "bogus"),
    (dict(name="qarepvgg_tiny8", oabn_threshold=1.0), TypeError, "oabn_threshold"),
    (dict(name="repvgg_tiny8", num_classes=0), ValueError, "num_classes"),
    (dict(name="repvgg_tiny8", oabn_threshold=0.0), ValueError, "oabn_threshold"),
    (dict(name="repvgg_tiny8_oabn", oabn_gradient="sign"), ValueError, "oabn_gradient"),
    (dict(name="repvgg_tiny8", widths=(8, 8)), ValueError, "widths"),
    (dict(name="repvgg_tiny8", num_blocks=(2, 2, 2, 1)), ValueError, "num_blocks"),
    (dict(name="repvgg_tiny8", deploy="yes"), TypeError, "deploy"),
    (dict(name="csla_vgg_tiny8", identity="maybe"), ValueError, "identity"),
    (dict(name="csla_vgg_tiny8", scales={"stage0.scale_conv.weight": torch.ones(8)}), ValueError,
     "stage0.scale_1x1.weight"),
    (dict(name="repopt_vgg_tiny8", seed=1.5), TypeError, "seed"),
])
def test_create_model_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        create_model(**kwargs)


# Deployed parameter counts of the official sizes (RepVGG paper Table: 8.30M, 12.78M, 14.33M, 51.82M).
DEPLOY_PARAMS_M = {"a0": 8.30, "a1": 12.78, "b0": 14.33, "b1": 51.82}


@pytest.mark.parametrize("name", list_models())
def test_architecture_structure(name):
    """Layout and size on the meta device (no memory, no time): official prefixes, widths, param counts."""
    with torch.device("meta"):
        model = create_model(name)
        deployed = convert_to_deploy(model)
    prefixes = [p for p, _ in model.named_blocks()]
    assert prefixes[0] == "stage0" and all(p.startswith("stage") for p in prefixes)
    assert len(prefixes) == sum(model.num_blocks)
    keys = set(model.state_dict())
    assert {"linear.weight", "linear.bias"} <= keys
    assert all(k.split(".")[0] in {f"stage{i}" for i in range(model.num_stages)} | {"linear"} for k in keys)
    size = name.split("_")[2] if name.startswith(("csla", "repopt", "hs")) else name.split("_")[1]
    if size in DEPLOY_PARAMS_M:
        a, b = {"a0": (0.75, 2.5), "a1": (1, 2.5), "b0": (1, 2.5), "b1": (2, 4)}[size]
        assert model.widths == (min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b))
        assert model.strides == (2, 2, 2, 2, 2)
        n = sum(p.numel() for p in deployed.parameters()) / 1e6
        assert abs(n - DEPLOY_PARAMS_M[size]) < 0.015, n
    se = {f"{p}.se.{c}.{w}" for p in prefixes for c in ("down", "up") for w in ("weight", "bias")} \
        if name == "repvgg_d2se" else set()
    assert set(deployed.state_dict()) == {f"{p}.rbr_reparam.{w}" for p in prefixes for w in ("weight", "bias")} \
        | {"linear.weight", "linear.bias"} | se


FORWARD_CHECKED = [n for n in list_models() if "tiny" in n or "_a0" in n]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", FORWARD_CHECKED)
def test_convert_to_deploy_equals_eval_model(name, device):
    torch.manual_seed(0)
    model = randomize_bn_(create_model(name, num_classes=7).to(device=device, dtype=F64), seed=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hw = _input_size(name)
    x = torch.randn(1 if "_a0" in name else 3, 3, hw, hw, dtype=F64, device=device)
    deployed = convert_to_deploy(model)
    assert all(isinstance(b, FusedConvBlock) for _, b in deployed.named_blocks())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    with torch.no_grad():
        expected, actual = model(x), deployed(x)
    scale = max(1.0, expected.abs().max().item())
    assert_close(actual.cpu(), expected.cpu(), name=f"{name} logits", atol=1e-11 * scale)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "convert_to_deploy modified its input"
    assert model.training is False


def test_oabn_model_deploys_with_clipped_identity_factor():
    """A finite threshold that actually clips: the deployed net equals the OABN net, not the plain one."""
    torch.manual_seed(0)
    model = randomize_bn_(create_model("repvgg_tiny8_oabn", num_classes=3, oabn_threshold=0.7).double(), 2).eval()
    plain = create_model("repvgg_tiny8", num_classes=3).double().eval()
    plain.load_state_dict(model.state_dict())
    factors = [b.rbr_identity.factor() for _, b in model.named_blocks() if b.rbr_identity is not None]
    assert any(torch.any(f.abs() == 0.7) for f in factors), "the test must clip some channel"
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    with torch.no_grad():
        y, yd, yp = model(x), convert_to_deploy(model)(x), plain(x)
    assert_close(yd, y, name="oabn deploy")
    assert (y - yp).abs().max() > 1e-6


# ---------------------------------------------------------------------- blocks

def _make_block(kind: str, cin: int, cout: int, stride: int, groups: int, seed: int) -> nn.Module:
    rng = np.random.default_rng(seed)
    if kind == "repvgg":
        return RepVGGBlock(cin, cout, stride, groups)
    if kind == "repvgg_oabn":
        return RepVGGBlock(cin, cout, stride, groups, oabn_threshold=0.8,
                           oabn_gradient=str(rng.choice(["clip", "straight_through"])))
    if kind.startswith("qarepvgg"):
        return QARepVGGBlock(cin, cout, stride, groups)
    if kind == "csla":
        ident = "constant" if (cin == cout and stride == 1 and rng.random() < 0.5) else None
        return CSLABlock(cin, cout, stride, rng.uniform(-2, 2, cout), rng.uniform(-2, 2, cout), ident,
                         scale_identity=rng.uniform(-2, 2, cout) if cin == cout and stride == 1 else 1.0)
    if kind == "hs":
        return HyperSearchBlock(cin, cout, stride, float(rng.uniform(0.5, 1.5)))
    return RepOptTargetBlock(cin, cout, stride)


BLOCK_KINDS = ("repvgg", "repvgg_oabn", "qarepvgg", "qarepvgg_keep", "csla", "hs", "target")


@pytest.mark.parametrize("kind", BLOCK_KINDS)
@given(shape=grouped_block_shapes(max_per_group=3), seed=seeds)
def test_switch_to_deploy_per_block(kind, shape, seed):
    cin, cout, stride, groups = shape
    if kind in ("csla", "hs", "target"):
        groups = 1
    torch.manual_seed(seed % 2**31)
    block = randomize_bn_(_make_block(kind, cin, cout, stride, groups, seed).double(), seed).eval()
    x = torch.randn(2, cin, 5, 6, dtype=F64)
    with torch.no_grad():
        expected = block(x)
        keep = kind == "qarepvgg_keep"
        if keep:
            block.switch_to_deploy(keep_post_bn=True)
        else:
            block.switch_to_deploy()
        actual = block(x)
        block.switch_to_deploy()  # idempotent (QARepVGG: now folds the kept post BN)
        again = block(x)
    assert_close(actual, expected, name=f"{kind} deployed", atol=1e-11 * max(1.0, expected.abs().max().item()))
    assert_close(again, expected, name=f"{kind} deployed twice", atol=1e-11 * max(1.0, expected.abs().max().item()))
    assert set(block.state_dict()) == {"rbr_reparam.weight", "rbr_reparam.bias"}
    assert block.rbr_reparam.weight.dtype == F64


def test_qarepvgg_keep_post_bn_layout():
    block = randomize_bn_(QARepVGGBlock(4, 4).double(), 3).eval()
    x = torch.randn(2, 4, 5, 5, dtype=F64)
    with torch.no_grad():
        y = block(x)
        block.switch_to_deploy(keep_post_bn=True)
    assert set(block.state_dict()) == {"rbr_reparam.weight", "rbr_reparam.bias", "bn.weight", "bn.bias",
                                       "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    with torch.no_grad():
        assert_close(block(x), y, name="kept post BN")


def _bn_keys(prefix):
    return {f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


@pytest.mark.parametrize("cin, cout, stride", [(4, 4, 1), (4, 6, 1), (4, 4, 2)])
def test_state_dict_keys_are_the_official_ones(cin, cout, stride):
    ident = cin == cout and stride == 1
    rep = {"rbr_dense.conv.weight", "rbr_1x1.conv.weight"} | _bn_keys("rbr_dense.bn") | _bn_keys("rbr_1x1.bn")
    assert set(RepVGGBlock(cin, cout, stride).state_dict()) == rep | (_bn_keys("rbr_identity") if ident else set())
    assert set(RepVGGBlock(cin, cout, stride, oabn_threshold=1.0).state_dict()) == \
        rep | (_bn_keys("rbr_identity") if ident else set())
    assert set(QARepVGGBlock(cin, cout, stride).state_dict()) == \
        {"rbr_dense.conv.weight", "rbr_1x1.weight"} | _bn_keys("rbr_dense.bn") | _bn_keys("bn")
    lin = {"conv.weight", "scale_conv.weight", "conv_1x1.weight", "scale_1x1.weight"} | _bn_keys("bn")
    lin |= {"scale_identity.weight"} if ident else set()
    assert set(CSLABlock(cin, cout, stride).state_dict()) == lin
    assert set(HyperSearchBlock(cin, cout, stride).state_dict()) == lin
    assert set(RepOptTargetBlock(cin, cout, stride).state_dict()) == {"conv.weight"} | _bn_keys("bn")
    assert set(RepVGGBlock(cin, cout, stride, deploy=True).state_dict()) == {"rbr_reparam.weight",
                                                                           "rbr_reparam.bias"}
    csla = CSLABlock(cin, cout, stride, identity="constant" if ident else "none")
    assert not csla.scale_conv.weight.requires_grad and not csla.scale_1x1.weight.requires_grad
    if ident:
        assert not csla.scale_identity.weight.requires_grad
        assert CSLABlock(cin, cout, stride).scale_identity.weight.requires_grad
    assert all(p.requires_grad for p in HyperSearchBlock(cin, cout, stride).parameters())


@pytest.mark.parametrize("kind", ["repvgg", "clip", "straight_through", "qa_fold", "qa_keep"])
@given(shape=grouped_block_shapes(), seed=seeds)
def test_fused_kernel_autograd_matches_reference_backward(kind, shape, seed):
    """``get_equivalent_kernel_bias`` is differentiable (QAT on merged weights) and its gradient is the reference's."""
    cin, cout, stride, groups = shape
    qa = kind.startswith("qa")
    s = math.inf if kind == "repvgg" else 0.9
    mode = kind if kind in ("clip", "straight_through") else "clip"
    block = QARepVGGBlock(cin, cout, stride, groups) if qa else \
        RepVGGBlock(cin, cout, stride, groups, oabn_threshold=s, oabn_gradient=mode)
    block = randomize_bn_(block.double(), seed)
    rng = np.random.default_rng(seed)
    params, buffers = module_arrays(block)
    dk = rng.standard_normal((cout, cin // groups, 3, 3))
    db = rng.standard_normal(cout)
    if qa:
        kernel, bias = block.get_equivalent_kernel_bias(include_post_bn=kind == "qa_fold")
    else:
        kernel, bias = block.get_equivalent_kernel_bias()
    ((kernel * torch.from_numpy(dk)).sum() + (bias * torch.from_numpy(db)).sum()).backward()
    cfg = dict(in_channels=cin, out_channels=cout, stride=stride, groups=groups)
    if qa:
        rp = {k: v for k, v in params.items() if not k.startswith("bn.") or kind == "qa_fold"}
        ref_k = ref_repvgg.fuse_qarepvgg_block(params, buffers, fold_post_bn=kind == "qa_fold", **cfg)[:2]
        ref_g = ref_repvgg.fuse_qarepvgg_block_backward(dk, db, params, buffers, fold_post_bn=kind == "qa_fold",
                                                        **cfg)
    else:
        rp = params
        ref_k = ref_repvgg.fuse_repvgg_block(params, buffers, oabn_threshold=s, **cfg)
        ref_g = ref_repvgg.fuse_repvgg_block_backward(dk, db, params, buffers, oabn_threshold=s,
                                                      oabn_gradient=mode, **cfg)
    assert_close(kernel.detach(), ref_k[0], name="kernel")
    assert_close(bias.detach(), ref_k[1], name="bias")
    grads = {n: p.grad.numpy() for n, p in block.named_parameters() if n in rp}
    assert_trees_close(grads, ref_g)


# ------------------------------------------------------------------------ OABN

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_oabn_infinite_threshold_is_batchnorm_bit_for_bit(device, momentum):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5, momentum=momentum).to(device, F64)
    randomize_bn_(bn, 4)
    oabn = OABN(5, momentum=momentum, threshold=math.inf).to(device, F64)
    oabn.load_state_dict(bn.state_dict())
    for step in range(3):
        for m in (bn, oabn):
            m.train(step < 2)
        x1 = torch.randn(4, 5, 3, 3, dtype=F64, device=device, requires_grad=True)
        x2 = x1.detach().clone().requires_grad_(True)
        y1, y2 = bn(x1), oabn(x2)
        dy = torch.randn_like(y1)
        y1.backward(dy)
        y2.backward(dy)
        assert torch.equal(y1, y2) and torch.equal(x1.grad, x2.grad)
        assert torch.equal(bn.weight.grad, oabn.weight.grad) and torch.equal(bn.bias.grad, oabn.bias.grad)
        for k, v in bn.state_dict().items():
            assert torch.equal(v, oabn.state_dict()[k]), k
        bn.zero_grad()
        oabn.zero_grad()
    assert isinstance(oabn, nn.BatchNorm2d) and set(oabn.state_dict()) == set(bn.state_dict())


@pytest.mark.parametrize("gradient", ["clip", "straight_through"])
@given(seed=seeds, c=st.integers(1, 5), s=st.sampled_from([0.3, 0.8, 2.0]))
def test_oabn_matches_reference(gradient, seed, c, s):
    rng = np.random.default_rng(seed)
    gamma = rng.choice([-1, 1], c) * rng.uniform(0.1, 3.0, c)
    beta, rm, rv = rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.3, 2.0, c)
    x = rng.standard_normal((3, c, 2, 3)) * rng.uniform(0.2, 3.0, c)[None, :, None, None]
    dy = rng.standard_normal(x.shape)
    m = OABN(c, threshold=s, gradient=gradient).double()
    load_reference_arrays(m, {"weight": gamma, "bias": beta}, {"running_mean": rm, "running_var": rv})
    for training in (True, False):
        m.train(training)
        m.zero_grad()
        xt = torch.tensor(x, requires_grad=True)
        y = m(xt)
        y.backward(torch.from_numpy(dy))
        if training:
            res = ref_oabn.oabn_train(x, gamma, beta, rm, rv, threshold=s)
            ref_y, ref_stats = res.y, {"running_mean": res.running_mean, "running_var": res.running_var}
            ref_dx, ref_dg, ref_db = ref_oabn.oabn_train_backward(dy, x, gamma, threshold=s, gradient=gradient)
            rm, rv = res.running_mean, res.running_var  # eval then uses the updated statistics
        else:
            ref_y = ref_oabn.oabn_eval(x, gamma, beta, rm, rv, threshold=s)
            ref_stats = {"running_mean": rm, "running_var": rv}
            ref_dx, ref_dg, ref_db = ref_oabn.oabn_eval_backward(dy, x, gamma, rm, rv, threshold=s,
                                                                 gradient=gradient)
        assert_close(y.detach(), ref_y, name=f"y (training={training})")
        assert_close(xt.grad, ref_dx, name=f"dx (training={training})")
        assert_close(m.weight.grad, ref_dg, name=f"dgamma (training={training})")
        assert_close(m.bias.grad, ref_db, name=f"dbeta (training={training})")
        assert_trees_close(module_arrays(m)[1], ref_stats)


def test_oabn_running_stats_are_batchnorms():
    """Clipping never touches the statistics: finite-s OABN updates them exactly as BatchNorm2d."""
    torch.manual_seed(1)
    bn, oabn = nn.BatchNorm2d(3).double(), OABN(3, threshold=0.1).double()
    x = 5 * torch.randn(4, 3, 2, 2, dtype=F64)
    bn(x), oabn(x)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(oabn, k), getattr(bn, k), name=k)


# ---------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("factory, exc, match", [
    (lambda: OABN(4, threshold=0.0), ValueError, "threshold"),
    (lambda: OABN(4, threshold=-1.0), ValueError, "threshold"),
    (lambda: OABN(4, threshold=float("nan")), ValueError, "threshold"),
    (lambda: OABN(4, threshold="2"), TypeError, "threshold"),
    (lambda: OABN(4, gradient="ste"), ValueError, "gradient"),
    (lambda: OABN(0), ValueError, "num_features"),
    (lambda: OABN(4, momentum=1.5), ValueError, "momentum"),
    (lambda: RepVGGBlock(0, 4), ValueError, "in_channels"),
    (lambda: RepVGGBlock(4, 4, 1.5), TypeError, "stride"),
    (lambda: RepVGGBlock(4, 6, 1, 4), ValueError, "groups"),
    (lambda: RepVGGBlock(4, 4, oabn_threshold=0), ValueError, "oabn_threshold"),
    (lambda: RepVGGBlock(4, 4, oabn_gradient="x"), ValueError, "oabn_gradient"),
    (lambda: RepVGGBlock(4, 4, deploy=1), TypeError, "deploy"),
    (lambda: RepVGGBlock(4, 4, bn_momentum=2.0), ValueError, "bn_momentum"),
    (lambda: QARepVGGBlock(4, 4, keep_post_bn="no"), TypeError, "keep_post_bn"),
    (lambda: CSLABlock(4, 6, 1, identity="trainable"), ValueError, "identity"),
    (lambda: CSLABlock(4, 4, 1, identity="yes"), ValueError, "identity"),
    (lambda: CSLABlock(4, 4, 1, np.ones(3)), ValueError, "scale_conv"),
    (lambda: CSLABlock(4, 4, 1, 1.0, "a"), TypeError, "scale_1x1"),
    (lambda: CSLABlock(4, 4, 1, 1.0, [1.0, 2.0, np.inf, 1.0]), ValueError, "scale_1x1"),
    (lambda: HyperSearchBlock(4, 4, 1, None), TypeError, "conv_scale_init"),
    (lambda: VGGNet(lambda *a: RepVGGBlock(*a[:3]), (2, 1), (4, 4), (1, 1), 3), ValueError, "num_blocks"),
])
def test_bad_arguments_raise(factory, exc, match):
    with pytest.raises(exc, match=match):
        factory()


def test_failed_calls_leave_state_unchanged():
    torch.manual_seed(0)
    qa = QARepVGGBlock(3, 3)
    sd = copy.deepcopy(qa.state_dict())
    with pytest.raises(TypeError, match="keep_post_bn"):
        qa.switch_to_deploy(keep_post_bn="yes")
    assert not qa.deployed and all(torch.equal(sd[k], v) for k, v in qa.state_dict().items())

    target = RepOptTargetBlock(3, 3)
    w = target.conv.weight.detach().clone()
    with pytest.raises(ValueError, match="scale_1x1"):
        target.reinitialize(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="scale_identity"):
        RepOptTargetBlock(3, 5).reinitialize(np.ones(5), np.ones(5), np.ones(5))
    assert torch.equal(target.conv.weight, w)

    model = create_model("repvgg_tiny8", num_classes=3)
    sd = copy.deepcopy(model.state_dict())
    params, buffers = module_arrays(model)
    params = {k: v + 1.0 for k, v in params.items()}
    bad = dict(params)
    bad["stage2.1.rbr_dense.conv.weight"] = np.zeros((1, 1, 3, 3))
    with pytest.raises(ValueError, match="stage2.1.rbr_dense.conv.weight"):
        load_reference_arrays(model, bad, buffers)
    missing = {k: v for k, v in params.items() if k != "linear.bias"}
    with pytest.raises(ValueError, match="linear.bias"):
        load_reference_arrays(model, missing, buffers)
    with pytest.raises(ValueError, match="bogus"):
        load_reference_arrays(model, params, {**buffers, "bogus": np.zeros(1)})
    with pytest.raises(TypeError, match="params"):
        load_reference_arrays(model, [1, 2], buffers)
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------- interop and twins

@pytest.mark.parametrize("device", DEVICES)
def test_interop_round_trip_keeps_dtype_and_device(device):
    src = randomize_bn_(create_model("qarepvgg_tiny8", num_classes=4).double(), 5)
    params, buffers = module_arrays(src)
    assert not any(k.endswith("num_batches_tracked") for k in buffers)
    assert all(v.dtype == np.float64 for v in {**params, **buffers}.values())
    dst = create_model("qarepvgg_tiny8", num_classes=4).to(device)
    load_reference_arrays(dst, params, buffers)
    assert all(p.dtype == torch.float32 and p.device.type == device for p in dst.state_dict().values()
               if p.is_floating_point())
    p2, b2 = module_arrays(dst)
    assert_trees_close(p2, params, dtype="float32", kind="exact_math")
    assert_trees_close(b2, buffers, dtype="float32", kind="exact_math")
    net = reference_network_for(src)
    assert set(net.trainable_names()) == set(params)


def test_reference_network_trainable_names_match_requires_grad():
    for name in ("csla_vgg_tiny8", "hs_vgg_tiny8", "repopt_vgg_tiny8", "repvgg_tiny8_oabn"):
        model = create_model(name, num_classes=3)
        net = reference_network_for(model)
        assert set(net.trainable_names()) == {n for n, p in model.named_parameters() if p.requires_grad}, name


def test_hypersearch_init_scales():
    model = create_model("hs_vgg_tiny32")
    expected = {"stage0": 1.0, "stage1.0": 1.0, "stage1.1": math.sqrt(2.0), "stage4.0": 1.0}
    blocks = dict(model.named_blocks())
    for prefix, value in expected.items():
        assert torch.allclose(blocks[prefix].scale_conv.weight, torch.tensor(value))
        assert torch.allclose(blocks[prefix].scale_1x1.weight, torch.tensor(value))
    assert torch.all(blocks["stage1.1"].scale_identity.weight == 1.0)
    assert not blocks["stage1.0"].has_identity


def test_repopt_reinitialization_and_csla_twin():
    """``repopt_vgg_*`` starts from W'_0 of the given scales; ``repopt_from_csla`` equals its CSLA net."""
    rng = np.random.default_rng(0)
    keys = expected_scale_keys("repopt_vgg_tiny8")
    scales = {k: torch.from_numpy(rng.uniform(0.5, 1.5, s)) for k, s in keys.items()}
    torch.set_default_dtype(F64)
    try:
        model = create_model("repopt_vgg_tiny8", num_classes=3, scales=scales, seed=7)
        csla = randomize_bn_(create_model("csla_vgg_tiny8", num_classes=3, scales=scales), 3)
    finally:
        torch.set_default_dtype(torch.float32)
    gen = torch.Generator().manual_seed(7)
    for prefix, block in model.named_blocks():
        o, i = block.out_channels, block.in_channels
        k3 = torch.empty(o, i, 3, 3, dtype=F64).uniform_(-1 / math.sqrt(9 * i), 1 / math.sqrt(9 * i), generator=gen)
        k1 = torch.empty(o, i, dtype=F64).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i), generator=gen)
        w = k3 * scales[f"{prefix}.scale_conv.weight"][:, None, None, None]
        w[:, :, 1, 1] += k1 * scales[f"{prefix}.scale_1x1.weight"][:, None]
        if block.has_identity:
            w[range(o), range(o), 1, 1] += scales[f"{prefix}.scale_identity.weight"]
        assert_close(block.conv.weight.detach(), w, name=f"{prefix} W'_0")
    assert set(model.repopt_scales) == set(keys)

    twin = repopt_from_csla(csla)
    x = torch.randn(4, 3, 8, 8, dtype=F64)
    for training in (False, True):
        csla.train(training)
        twin.train(training)
        with torch.no_grad():
            assert_close(twin(x), csla(x), name=f"twin (training={training})")
    assert_trees_close(module_arrays(twin)[1], module_arrays(csla)[1])
    assert_trees_close(twin.repopt_scales, {k: v.numpy() for k, v in scales.items()})


def test_published_b1_scale_file_fits_the_registry_layout():
    """The official RepOpt-VGG-B1 scale file (tests/data) has exactly the keys/shapes of ``repopt_vgg_b1``."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / "RepOpt-VGG-B1-scales.pth"
    if not path.exists():
        pytest.skip("tests/data/RepOpt-VGG-B1-scales.pth is not present")
    scales = torch.load(path, weights_only=True, map_location="cpu")
    assert {k: tuple(v.shape) for k, v in scales.items()} == expected_scale_keys("repopt_vgg_b1")
    with torch.device("meta"):
        model = create_model("repopt_vgg_b1", scales=scales)
        csla = create_model("csla_vgg_b1", scales=scales)
    assert set(model.repopt_scales) == set(scales)
    assert torch.equal(model.repopt_scales["stage3.15.scale_identity.weight"],
                       scales["stage3.15.scale_identity.weight"].double())
    assert dict(csla.named_blocks())["stage1.1"].has_identity


def test_oabn_clip_gradient_passes_at_the_threshold_in_every_torch_version():
    """SPEC §4: ``∂t̃/∂t = [|t| ≤ s]``, boundary included. torch.clamp's backward changed at the boundary
    in torch 2.14 (0 there), so the clip must not rest on it."""
    from repspec.torch_impl.modules.oabn import _clip_factor

    t = torch.tensor([1.0, -1.0, 0.5, 2.0, -3.0], dtype=torch.float64, requires_grad=True)
    clipped = _clip_factor(t, 1.0, "clip")
    clipped.sum().backward()
    assert clipped.tolist() == [1.0, -1.0, 0.5, 1.0, -1.0]
    assert t.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
