"""SPEC §3.scale-files and §3.hypersearch in the reference: the scale layout of a VGG skeleton, the
original per-block tuples ↔ the scale dict, the HyperSearch network's init and scale extraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given

from repspec.reference.network import Network
from repspec.reference.repopt import (
    CSLABlock,
    HyperSearchBlock,
    extract_scales,
    hypersearch_network,
    hypersearch_scale_init,
)
from repspec.reference.scales import (
    OFFICIAL_ORDER,
    block_prefix,
    check_scale_layout,
    parse_block_prefix,
    scale_keys,
    scales_from_official,
    scales_to_official,
    vgg_scale_layout,
)
from tests import strategies as S

#: RepOpt-VGG-B1 (SPEC §3.architectures)
B1 = dict(num_blocks=(1, 4, 6, 16, 1), widths=(64, 128, 256, 512, 2048), strides=(2, 2, 2, 2, 2), in_channels=3)


def _random_scales(layout, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.choice([-1.0, 1.0], s) * rng.uniform(0.05, 3.0, s) for k, s in scale_keys(layout).items()}


# ------------------------------------------------------------------------------- layout


def test_b1_layout_is_the_published_files():
    layout = vgg_scale_layout(**B1)
    keys = scale_keys(layout)
    assert len(layout) == 28 and len(keys) == 79  # tests/data/README.md: 2 + (2 + 3·3) + (2 + 5·3) + (2 + 15·3) + 2
    assert [p for p, _, ident in layout if ident] == (
        [f"stage1.{i}" for i in range(1, 4)] + [f"stage2.{i}" for i in range(1, 6)]
        + [f"stage3.{i}" for i in range(1, 16)])
    assert layout[0] == ("stage0", 64, False) and layout[-1] == ("stage4.0", 2048, False)
    assert list(keys)[:3] == ["stage0.scale_conv.weight", "stage0.scale_1x1.weight", "stage1.0.scale_conv.weight"]


def test_identity_only_where_in_equals_out_and_stride_one():
    layout = vgg_scale_layout((1, 2, 1), (3, 3, 5), (1, 1, 1), in_channels=3)
    assert layout == (("stage0", 3, True), ("stage1.0", 3, True), ("stage1.1", 3, True), ("stage2.0", 5, False))
    assert vgg_scale_layout((1,), (3,), (2,), in_channels=3) == (("stage0", 3, False),)


def test_prefixes_round_trip_and_bad_prefixes_are_refused():
    for k, i in ((0, 0), (1, 0), (3, 15), (12, 7)):
        assert parse_block_prefix(block_prefix(k, i)) == (k, i)
    for bad in ("stage0.0", "stage1", "stage01.0", "stage1.01", "Stage1.0", "stage-1.0", "stage1.0.0", ""):
        with pytest.raises(ValueError, match="prefix must be"):
            parse_block_prefix(bad)
    with pytest.raises(TypeError, match="prefix must be a str"):
        parse_block_prefix(1)
    with pytest.raises(ValueError, match="stage0 holds a single block"):
        block_prefix(0, 1)


def test_layout_validation():
    with pytest.raises(ValueError, match="num_blocks\\[0\\] must be 1"):
        vgg_scale_layout((2,), (3,), (1,), in_channels=3)
    with pytest.raises(ValueError, match="one entry per stage"):
        vgg_scale_layout((1, 2), (3,), (1, 1), in_channels=3)
    with pytest.raises(ValueError, match="widths\\[1\\]"):
        vgg_scale_layout((1, 2), (3, 0), (1, 1), in_channels=3)
    with pytest.raises(TypeError, match="has_identity"):
        check_scale_layout([("stage0", 3, 1)])
    with pytest.raises(ValueError, match="unique"):
        check_scale_layout([("stage1.0", 3, False), ("stage1.0", 3, False)])
    with pytest.raises(TypeError, match="non-empty sequence"):
        check_scale_layout({"stage0": (3, False)})


# ---------------------------------------------------------------- the original tuples


def test_official_tuples_by_hand():
    layout = (("stage0", 2, False), ("stage1.0", 2, True))
    scales = {"stage0.scale_conv.weight": [1.0, 2.0], "stage0.scale_1x1.weight": [3.0, 4.0],
              "stage1.0.scale_conv.weight": [5.0, 6.0], "stage1.0.scale_1x1.weight": [7.0, 8.0],
              "stage1.0.scale_identity.weight": [9.0, 10.0]}
    tuples = scales_to_official(scales, layout)
    assert [[v.tolist() for v in t] for t in tuples] == [[[3.0, 4.0], [1.0, 2.0]],  # (1x1, conv)
                                                         [[9.0, 10.0], [7.0, 8.0], [5.0, 6.0]]]  # (identity, 1x1, conv)
    back = scales_from_official(tuples, layout)
    assert list(back) == list(scales) and all(back[k].tolist() == v for k, v in scales.items())
    assert OFFICIAL_ORDER == {True: ("identity", "1x1", "conv"), False: ("1x1", "conv")}


@given(skeleton=S.vgg_skeletons(), seed=S.seeds)
def test_official_tuples_round_trip(skeleton, seed):
    layout = vgg_scale_layout(**skeleton)
    scales = _random_scales(layout, seed)
    frozen = {k: v.copy() for k, v in scales.items()}
    tuples = scales_to_official(scales, layout)
    assert [len(t) for t in tuples] == [3 if ident else 2 for _, _, ident in layout]
    back = scales_from_official(tuples, layout)
    assert list(back) == list(scale_keys(layout))
    assert all(np.array_equal(back[k], scales[k]) for k in scales)  # exact: copies
    assert all(np.array_equal(scales[k], frozen[k]) for k in scales)  # inputs untouched
    assert all(t[-1] is not scales[p + ".scale_conv.weight"] for (p, _, _), t in zip(layout, tuples))  # copies
    assert scales_to_official(back, layout)[0][-1].tolist() == tuples[0][-1].tolist()


def test_official_tuples_validation_names_the_block():
    layout = vgg_scale_layout((1, 2), (2, 2), (2, 2), in_channels=3)  # only stage1.1 has an identity branch
    scales = _random_scales(layout, 0)
    tuples = scales_to_official(scales, layout)
    with pytest.raises(ValueError, match="2 tuples for a layout of 3 blocks"):
        scales_from_official(tuples[:2], layout)
    with pytest.raises(ValueError, match=r"tuple 2 \(block 'stage1.1'\) must have 3 entries \(identity, 1x1, conv\)"):
        scales_from_official(tuples[:2] + [tuples[2][1:]], layout)
    with pytest.raises(ValueError, match=r"tuple 0 \(block 'stage0'\) scale_conv must have shape \(2\), got \(3,\)"):
        scales_from_official([(tuples[0][0], np.ones(3))] + tuples[1:], layout)
    with pytest.raises(TypeError, match="list of per-block scale tuples"):
        scales_from_official(scales, layout)
    extra = {**scales, "stage1.0.scale_identity.weight": np.ones(2)}
    with pytest.raises(ValueError, match="unexpected \\['stage1.0.scale_identity.weight'\\]"):
        scales_to_official(extra, layout)
    missing = {k: v for k, v in scales.items() if k != "stage1.1.scale_identity.weight"}
    with pytest.raises(ValueError, match="missing \\['stage1.1.scale_identity.weight'\\]"):
        scales_to_official(missing, layout)
    with pytest.raises(ValueError, match="must contain only finite values"):
        scales_to_official({**scales, "stage0.scale_1x1.weight": np.array([1.0, np.nan])}, layout)


# ------------------------------------------------------------------------- HyperSearch


def test_hypersearch_network_init_is_the_official_schedule():
    net = hypersearch_network((1, 4, 2), (2, 3, 3), (1, 2, 1), in_channels=2, num_classes=3)
    params, _ = net.init(np.random.default_rng(0))
    scales = extract_scales(net, params)
    expected_alpha = {"stage0": 1.0, "stage1.0": 1.0, "stage1.1": math.sqrt(2.0), "stage1.2": 1.0,
                      "stage1.3": math.sqrt(2.0 / 3.0), "stage2.0": 1.0, "stage2.1": math.sqrt(2.0)}
    for prefix, alpha in expected_alpha.items():
        for kind in ("conv", "1x1"):
            assert np.array_equal(scales[f"{prefix}.scale_{kind}.weight"], np.full(3 if prefix != "stage0" else 2, alpha))
    identity = sorted(k for k in scales if "identity" in k)
    # stage0 (2 → 2) and stage2.0 (3 → 3) at stride 1 have one, stage1.0 (stride 2) has none
    assert identity == [f"{p}.scale_identity.weight" for p in
                        ("stage0", "stage1.1", "stage1.2", "stage1.3", "stage2.0", "stage2.1")]
    assert all(np.array_equal(scales[k], np.ones_like(scales[k])) for k in identity)
    assert [b.stride for _, b in net.blocks] == [1, 2, 1, 1, 1, 1, 1]
    assert all(isinstance(b, HyperSearchBlock) for _, b in net.blocks)


@given(skeleton=S.vgg_skeletons(max_width=3), seed=S.seeds)
def test_hypersearch_scales_follow_the_layout(skeleton, seed):
    net = hypersearch_network(**skeleton, num_classes=2)
    params, _ = net.init(np.random.default_rng(seed))
    scales = extract_scales(net, params)
    assert {k: v.shape for k, v in scales.items()} == scale_keys(vgg_scale_layout(**skeleton))
    for prefix, block in net.blocks:
        k, i = parse_block_prefix(prefix)
        assert block.conv_scale_init == hypersearch_scale_init(k, i)


def test_extract_scales_copies_trained_values_of_csla_and_hs_blocks():
    rng = np.random.default_rng(1)
    net = Network((("stage0", CSLABlock(2, 2, scale_conv=[0.5, -1.0], scale_1x1=[2.0, 0.25])),
                   ("stage1.0", HyperSearchBlock(2, 3, 2))), 2)
    params, _ = net.init(rng)
    params["stage1.0.scale_conv.weight"] = np.array([-0.3, 0.7, 1.1])
    scales = extract_scales(net, params)
    assert list(scales) == ["stage0.scale_conv.weight", "stage0.scale_1x1.weight", "stage0.scale_identity.weight",
                            "stage1.0.scale_conv.weight", "stage1.0.scale_1x1.weight"]
    assert scales["stage0.scale_conv.weight"].tolist() == [0.5, -1.0]
    assert scales["stage1.0.scale_conv.weight"].tolist() == [-0.3, 0.7, 1.1]
    scales["stage1.0.scale_conv.weight"][0] = 9.0
    assert params["stage1.0.scale_conv.weight"][0] == -0.3  # a copy
    del params["stage0.scale_identity.weight"]
    with pytest.raises(ValueError, match="params is missing 'stage0.scale_identity.weight'"):
        extract_scales(net, params)
