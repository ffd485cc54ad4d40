"""The registry covers the original authors' architectures, and their state dicts load strictly.

``original_layout`` below is an *independent* transcription of the original code's
construction rules (RepVGG ``repvgg.py``: ``RepVGG(num_blocks, width_multiplier,
override_groups_map, use_se)``, ``cur_layer_idx`` from 1, ``optional_groupwise_layers``;
RepOptimizers ``RepOptVGG(mode=…)``; YOLOv6 ``QARepVGGBlock``) — key names and shapes
written from those rules, not from repspec's modules. Every model is built on the meta
device, so even RepVGG-D2se costs no memory.
"""

from __future__ import annotations

import math

import pytest
import torch

from repspec.torch_impl import convert_to_deploy, create_model
from repspec.torch_impl.modules.models import hypersearch_scale_init
from repspec.torch_impl.optimizers.scales import initial_scales

F64 = torch.float64
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# name → (num_blocks of stages 1..4, width_multiplier, groups on layers 2, 4, …, 26, use_se)
ORIGINAL_REPVGG = {
    "a0": ([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], 1, False),
    "a1": ([2, 4, 14, 1], [1, 1, 1, 2.5], 1, False),
    "a2": ([2, 4, 14, 1], [1.5, 1.5, 1.5, 2.75], 1, False),
    "b0": ([4, 6, 16, 1], [1, 1, 1, 2.5], 1, False),
    "b1": ([4, 6, 16, 1], [2, 2, 2, 4], 1, False),
    "b1g2": ([4, 6, 16, 1], [2, 2, 2, 4], 2, False),
    "b1g4": ([4, 6, 16, 1], [2, 2, 2, 4], 4, False),
    "b2": ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5], 1, False),
    "b2g2": ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5], 2, False),
    "b2g4": ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5], 4, False),
    "b3": ([4, 6, 16, 1], [3, 3, 3, 5], 1, False),
    "b3g2": ([4, 6, 16, 1], [3, 3, 3, 5], 2, False),
    "b3g4": ([4, 6, 16, 1], [3, 3, 3, 5], 4, False),
    "d2se": ([8, 14, 24, 1], [2.5, 2.5, 2.5, 5], 1, True),
}
ORIGINAL_REPOPT = {
    "b1": ([4, 6, 16, 1], [2, 2, 2, 4]),
    "b2": ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5]),
    "l1": ([8, 14, 24, 1], [2, 2, 2, 4]),
    "l2": ([8, 14, 24, 1], [2.5, 2.5, 2.5, 5]),
}


def original_blocks(num_blocks, wm, groups=1):
    """``[(prefix, in, out, stride, groups, (stage, index))]`` as the original constructors lay them out."""
    planes = min(64, int(64 * wm[0]))
    out = [("stage0", 3, planes, 2, 1, (0, 0))]
    layer = 1
    for s, (base, n) in enumerate(zip((64, 128, 256, 512), num_blocks), start=1):
        width = int(base * wm[s - 1])
        for i in range(n):
            g = groups if layer in range(2, 27, 2) else 1
            out.append((f"stage{s}.{i}", planes, width, 2 if i == 0 else 1, g, (s, i)))
            planes = width
            layer += 1
    return out, planes


def _bn(prefix, c):
    return {f"{prefix}.{b}": (() if b == "num_batches_tracked" else (c,)) for b in BN}


def original_layout(kind, num_blocks, wm, groups=1, use_se=False, num_classes=1000, deploy=False,
                    keep_post_bn=False):
    sd = {}
    blocks, last = original_blocks(num_blocks, wm, groups)
    for p, cin, cout, stride, g, _ in blocks:
        identity = cin == cout and stride == 1
        if kind == "repvgg" and deploy or kind == "qarepvgg" and deploy:
            sd[f"{p}.rbr_reparam.weight"] = (cout, cin // g, 3, 3)
            sd[f"{p}.rbr_reparam.bias"] = (cout,)
            if kind == "qarepvgg" and keep_post_bn:
                sd.update(_bn(f"{p}.bn", cout))
        elif kind == "repvgg":
            for br, k in (("rbr_dense", 3), ("rbr_1x1", 1)):
                sd[f"{p}.{br}.conv.weight"] = (cout, cin // g, k, k)
                sd.update(_bn(f"{p}.{br}.bn", cout))
            if identity:
                sd.update(_bn(f"{p}.rbr_identity", cout))
        elif kind == "qarepvgg":
            sd[f"{p}.rbr_dense.conv.weight"] = (cout, cin // g, 3, 3)
            sd.update(_bn(f"{p}.rbr_dense.bn", cout))
            sd[f"{p}.rbr_1x1.weight"] = (cout, cin // g, 1, 1)
            sd.update(_bn(f"{p}.bn", cout))
        elif kind == "target":
            sd[f"{p}.conv.weight"] = (cout, cin, 3, 3)
            sd.update(_bn(f"{p}.bn", cout))
        elif kind in ("csla", "hs"):
            sd[f"{p}.conv.weight"] = (cout, cin, 3, 3)
            sd[f"{p}.scale_conv.weight"] = (cout,)
            sd[f"{p}.conv_1x1.weight"] = (cout, cin, 1, 1)
            sd[f"{p}.scale_1x1.weight"] = (cout,)
            if identity:
                sd[f"{p}.scale_identity.weight"] = (cout,)
            sd.update(_bn(f"{p}.bn", cout))
        if use_se:
            sd[f"{p}.se.down.weight"] = (cout // 16, cout, 1, 1)
            sd[f"{p}.se.down.bias"] = (cout // 16,)
            sd[f"{p}.se.up.weight"] = (cout, cout // 16, 1, 1)
            sd[f"{p}.se.up.bias"] = (cout,)
    sd["linear.weight"] = (num_classes, last)
    sd["linear.bias"] = (num_classes,)
    return sd


def meta_state_dict(layout):
    return {k: torch.empty(s, device="meta", dtype=torch.int64 if k.endswith("num_batches_tracked") else None)
            for k, s in layout.items()}


def _load_strictly(model, layout, name):
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(got) == set(layout), (f"{name}: keys differ; only in repspec {sorted(set(got) - set(layout))[:4]}, "
                                     f"only in the original {sorted(set(layout) - set(got))[:4]}")
    diff = {k: (got[k], layout[k]) for k in layout if got[k] != layout[k]}
    assert not diff, f"{name}: shapes differ (repspec, original): {dict(list(diff.items())[:4])}"
    model.load_state_dict(meta_state_dict(layout), strict=True)


@pytest.mark.parametrize("deploy", [False, True])
@pytest.mark.parametrize("size", sorted(ORIGINAL_REPVGG))
def test_repvgg_registry_loads_original_layout(size, deploy):
    nb, wm, g, se = ORIGINAL_REPVGG[size]
    layout = original_layout("repvgg", nb, wm, g, se, deploy=deploy)
    with torch.device("meta"):
        model = create_model(f"repvgg_{size}", deploy=deploy)
    _load_strictly(model, layout, f"repvgg_{size} deploy={deploy}")


@pytest.mark.parametrize("keep_post_bn", [False, True])
@pytest.mark.parametrize("deploy", [False, True])
@pytest.mark.parametrize("size", sorted(set(ORIGINAL_REPVGG) - {"d2se"}))
def test_qarepvgg_registry_loads_yolov6_layout(size, deploy, keep_post_bn):
    if keep_post_bn and not deploy:
        pytest.skip("keep_post_bn only applies to the deploy form")
    nb, wm, g, _ = ORIGINAL_REPVGG[size]
    layout = original_layout("qarepvgg", nb, wm, g, deploy=deploy, keep_post_bn=keep_post_bn)
    with torch.device("meta"):
        model = create_model(f"qarepvgg_{size}", deploy=deploy, keep_post_bn=keep_post_bn)
    _load_strictly(model, layout, f"qarepvgg_{size}")


@pytest.mark.parametrize("mode", ["target", "csla", "hs"])
@pytest.mark.parametrize("size", sorted(ORIGINAL_REPOPT))
def test_repopt_registry_loads_original_layout(size, mode):
    nb, wm = ORIGINAL_REPOPT[size]
    name = {"target": "repopt_vgg_{}", "csla": "csla_vgg_{}", "hs": "hs_vgg_{}"}[mode].format(size)
    with torch.device("meta"):
        model = create_model(name)
    _load_strictly(model, original_layout(mode, nb, wm), name)


@pytest.mark.parametrize("size", ["a0", "b1g2", "d2se"])
def test_original_parametrization_is_accepted(size):
    """``num_blocks=[2,4,14,1], width_multiplier=[…]`` (the original's) gives the registered layout."""
    nb, wm, _, _ = ORIGINAL_REPVGG[size]
    with torch.device("meta"):
        ours = create_model(f"repvgg_{size}")
        theirs = create_model(f"repvgg_{size}", num_blocks=nb, width_multiplier=wm)
    assert (theirs.num_blocks, theirs.widths, theirs.strides) == (ours.num_blocks, ours.widths, ours.strides)
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(name="repvgg_a0", width_multiplier=[1, 1, 1]), ValueError, "width_multiplier must be 4"),
    (dict(name="repvgg_a0", width_multiplier=[1, 1, 1, 2], widths=(8,) * 5), TypeError, "not both"),
    (dict(name="repvgg_a0", width_multiplier=[1, 1, 1, 2], num_blocks=[1, 2, 4, 14, 1]), ValueError,
     "4 entries"),
    (dict(name="repvgg_a0", width_multiplier=[1, 0, 1, 2]), ValueError, r"width_multiplier\[1\]"),
    (dict(name="repvgg_b1", groups=0), ValueError, "groups must be a positive"),
    (dict(name="repvgg_b1", groups=2, override_groups_map={2: 2}), TypeError, "not both"),
    (dict(name="repvgg_b1", override_groups_map={0: 2}), ValueError, "stage0 cannot be grouped"),
    (dict(name="repvgg_tiny8", groups=3), ValueError, "groups=3 must divide"),
    (dict(name="csla_vgg_b1", groups=2), TypeError, "groups"),
    (dict(name="qarepvgg_a0", keep_post_bn=True), ValueError, "keep_post_bn=True needs deploy=True"),
    (dict(name="repvgg_tiny8", use_se=True), ValueError, "use_se needs out_channels >= 16"),
    (dict(name="csla_vgg_tiny8", scales="ones"), ValueError, "'unit', 'hypersearch'"),
])
def test_new_overrides_reject_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        create_model(**kwargs)


def _randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                if k.endswith("running_var"):
                    v.copy_(torch.rand(v.shape, generator=g, dtype=v.dtype) + 0.5)
                else:
                    v.copy_(torch.randn(v.shape, generator=g, dtype=v.dtype) * 0.3)
    return model


@pytest.mark.parametrize("overrides", [
    dict(override_groups_map={2: 2, 3: 4}),
    dict(use_se=True),
    dict(use_se=True, override_groups_map={1: 2}),
])
def test_groups_and_se_deploy_equal_eval_model(overrides):
    """Grouped and SE blocks fuse exactly (float64): deploy net == eval net; SE survives fusion."""
    model = _randomize(create_model("repvgg_tiny32", num_classes=5, **overrides).to(F64), 3).eval()
    x = torch.randn(2, 3, 32, 32, dtype=F64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        actual = convert_to_deploy(model)(x)
    err = (actual - expected).abs().max().item()
    assert err <= 1e-11 * max(1.0, expected.abs().max().item()), f"deploy vs eval logits: max abs err {err:.3e}"
    groups = [b.groups for _, b in model.named_blocks()]
    if "override_groups_map" in overrides:
        assert max(groups) > 1


def test_qarepvgg_deploy_keeps_post_bn_like_yolov6():
    """``create_model('qarepvgg_*', deploy=True, keep_post_bn=True)`` holds the switched block's state exactly."""
    train = _randomize(create_model("qarepvgg_tiny8", num_classes=3).to(F64), 5).eval()
    x = torch.randn(2, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    for _, b in train.named_blocks():
        b.switch_to_deploy(keep_post_bn=True)
    deployed = create_model("qarepvgg_tiny8", num_classes=3, deploy=True, keep_post_bn=True).to(F64).eval()
    deployed.load_state_dict(train.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(deployed(x), train(x))
    assert "stage0.bn.running_var" in deployed.state_dict()


# ---------------------------------------------------------------- csla default = the original's


@pytest.mark.parametrize("name", ["csla_vgg_a0", "csla_vgg_tiny32"])
def test_csla_default_scales_are_the_original_csla_constants(name):
    """``RepOptVGG(mode='csla')``: α = 1 for block 0, sqrt(2/i) for block i ≥ 1, d = 1 (independent formula)."""
    with torch.device("cpu"):
        model = create_model(name)
    for prefix, block in model.named_blocks():
        i = 0 if prefix == "stage0" else int(prefix.split(".")[1])
        want = 1.0 if i == 0 else (2.0 / i) ** 0.5
        for key in ("scale_conv", "scale_1x1"):
            got = getattr(block, key).weight
            assert torch.all(got == torch.tensor(want, dtype=got.dtype)), f"{prefix}.{key}: {got[0]} != {want}"
            assert not got.requires_grad
        if block.has_identity:
            assert torch.all(block.scale_identity.weight == 1)
    unit = create_model(name, scales="unit")
    assert all(torch.all(b.scale_conv.weight == 1) for _, b in unit.named_blocks())


# ------------------------------------------------- one source for the HyperSearch schedule


def test_hypersearch_scale_init_is_the_official_schedule():
    """Literal values of the original ``RepOptVGG._make_stage``: 1 for i = 0, (2/i)**0.5 otherwise."""
    assert hypersearch_scale_init(0, 0) == 1.0
    for stage in (1, 2, 3, 4):
        assert hypersearch_scale_init(stage, 0) == 1.0
        for i in range(1, 16):
            assert hypersearch_scale_init(stage, i) == (2.0 / i) ** 0.5, (stage, i)


@pytest.mark.parametrize("name", ["repopt_vgg_tiny32", "hs_vgg_tiny32", "csla_vgg_b1"])
def test_initial_scales_equal_the_hypersearch_block_init_key_by_key(name):
    """``initial_scales`` == the scales a fresh ``hs_vgg_*`` model is built with, key by key (bit for bit)."""
    size = name.split("_")[-1]
    with torch.device("cpu"):
        hs = create_model(f"hs_vgg_{size}")  # float32 parameters
        target = create_model(name)
    ours = initial_scales(target, dtype=torch.float32)
    theirs = {f"{p}.{k}": v.detach() for p, b in hs.named_blocks() for k, v in b.scale_parameters().items()}
    assert list(ours) == [k for k in ours if k in theirs] and set(ours) == set(theirs)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), f"{k}: initial_scales {ours[k][0].item()} vs HyperSearch " \
                                                f"{theirs[k][0].item()}"
    assert not math.isnan(ours["stage0.scale_conv.weight"][0].item())
    for k, v in initial_scales(target).items():  # float64: the schedule's exact value
        assert v.dtype == F64


# Deployed parameter counts in the RepVGG paper (Table 3, millions).
PAPER_DEPLOY_PARAMS_M = {"a2": 25.49, "b2": 80.31, "b2g4": 55.77, "b3": 110.96, "b3g4": 75.62, "b1g2": 41.36,
                         "b1g4": 36.12}


@pytest.mark.parametrize("size", sorted(PAPER_DEPLOY_PARAMS_M))
def test_new_sizes_match_the_paper_parameter_counts(size):
    with torch.device("meta"):
        deployed = convert_to_deploy(create_model(f"repvgg_{size}"))
    n = sum(p.numel() for p in deployed.parameters()) / 1e6
    assert abs(n - PAPER_DEPLOY_PARAMS_M[size]) < 0.015, f"repvgg_{size}: {n:.3f}M deployed parameters"
