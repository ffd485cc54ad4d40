"""SPEC §1.network / §2.fusion: a whole network in deploy form (``reference/deploy.py``).

The fusion theorem at network level: the deployed network (every block one 3x3 conv + bias)
gives the multi-branch network's eval-mode logits, for every block kind, strides 1/2,
groups, OABN identity, dead channels and a batch of 1; the deployed block's backward is the
conv backward (finite differences); names are the official deployed ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from repspec.reference.deploy import DeployedBlock, deploy_network, fuse_block
from repspec.reference.gradcheck import numerical_gradient
from repspec.reference.network import Network
from repspec.reference.repopt import CSLABlock, HyperSearchBlock, RepOptTargetBlock
from repspec.reference.repvgg import QARepVGGBlock, RepVGGBlock

from .strategies import rng_from, seeds
from .tolerances import assert_close

KINDS = ("repvgg", "repvgg_oabn", "qarepvgg", "csla", "hypersearch", "repopt_target")


def _block(kind: str, cin: int, cout: int, stride: int, groups: int, rng):
    o = cout
    if kind == "repvgg":
        return RepVGGBlock(cin, cout, stride, groups)
    if kind == "repvgg_oabn":
        return RepVGGBlock(cin, cout, stride, groups, oabn_threshold=0.5)
    if kind == "qarepvgg":
        return QARepVGGBlock(cin, cout, stride, groups)
    if kind == "csla":
        ident = "constant" if cin == cout and stride == 1 else "none"
        return CSLABlock(cin, cout, stride, scale_conv=rng.uniform(0.3, 1.5, o), scale_1x1=rng.uniform(0.3, 1.5, o),
                         identity=ident, scale_identity=rng.uniform(0.5, 1.5, o) if ident != "none" else None)
    if kind == "hypersearch":
        return HyperSearchBlock(cin, cout, stride, 1.2)
    return RepOptTargetBlock(cin, cout, stride)


def _network(kinds, chans, strides, groups, seed):
    rng = rng_from(seed)
    blocks = []
    for j, (kind, stride, g) in enumerate(zip(kinds, strides, groups)):
        grouped = kind in ("repvgg", "repvgg_oabn", "qarepvgg")
        blocks.append((f"stage{j}", _block(kind, chans[j], chans[j + 1], stride, g if grouped else 1, rng)))
    net = Network(tuple(blocks), 3)
    params, buffers = net.init(rng)
    for k in params:  # BN affine and running statistics away from their init
        if k.endswith(("bn.weight", "rbr_identity.weight")):
            params[k] = rng.choice([-1.0, 1.0], params[k].shape) * rng.uniform(0.2, 3.0, params[k].shape)
        elif k.endswith(("bn.bias", "rbr_identity.bias")):
            params[k] = rng.normal(0.0, 0.5, params[k].shape)
    for k in buffers:
        buffers[k] = rng.normal(0, 0.5, buffers[k].shape) if k.endswith("mean") else rng.uniform(0.05, 3.0,
                                                                                               buffers[k].shape)
    return net, params, buffers, rng


@st.composite
def networks(draw):
    n = draw(st.integers(1, 3))
    kinds = [draw(st.sampled_from(KINDS)) for _ in range(n)]
    groups = [draw(st.sampled_from([1, 2])) for _ in range(n)]
    chans = [2 * draw(st.integers(1, 2))]
    for _ in range(n):
        chans.append(chans[-1] if draw(st.booleans()) else 2 * draw(st.integers(1, 2)))
    strides = [draw(st.sampled_from([1, 2])) for _ in range(n)]
    return kinds, chans, strides, groups, draw(st.integers(1, 3)), draw(st.booleans()), draw(seeds)


@given(cfg=networks())
@example(cfg=(["repvgg_oabn", "qarepvgg", "csla"], [2, 2, 4, 4], [1, 2, 1], [1, 2, 1], 1, True, 0))
@example(cfg=(["repvgg", "repopt_target", "hypersearch"], [4, 4, 2, 2], [1, 2, 1], [2, 1, 1], 2, False, 1))
def test_deployed_network_equals_the_eval_multibranch_network(cfg):
    kinds, chans, strides, groups, batch, dead, seed = cfg
    net, params, buffers, rng = _network(kinds, chans, strides, groups, seed)
    if dead:  # a dead channel in every BN population: σ² = 0, t ≈ γ/sqrt(eps) ≈ 316·γ
        for k in buffers:
            if k.endswith("running_var"):
                buffers[k][0] = 0.0
    x = rng.standard_normal((batch, chans[0], 5, 4))
    want, _, _ = net.forward(params, buffers, x, training=False)
    deployed_net, deployed = deploy_network(net, params, buffers)
    got, new_buffers, _ = deployed_net.forward(deployed, {}, x, training=False)
    assert new_buffers == {}
    assert_close(got, want, name="deployed logits vs eval-mode multi-branch logits")


def test_deployed_names_shapes_and_blocks_are_the_official_ones():
    net, params, buffers, _ = _network(["repvgg", "qarepvgg", "repopt_target"], [4, 4, 6, 2], [1, 2, 2], [2, 2, 1], 0)
    deployed_net, deployed = deploy_network(net, params, buffers)
    assert set(deployed) == {f"stage{j}.rbr_reparam.{n}" for j in range(3) for n in ("weight", "bias")} | \
        {"linear.weight", "linear.bias"}
    assert deployed["stage1.rbr_reparam.weight"].shape == (6, 2, 3, 3) and deployed["stage2.rbr_reparam.bias"].shape \
        == (2,)
    assert [(p, b.stride, b.groups) for p, b in deployed_net.blocks] == [("stage0", 1, 2), ("stage1", 2, 2),
                                                                         ("stage2", 2, 1)]
    np.testing.assert_array_equal(deployed["linear.weight"], params["linear.weight"])
    k, b = fuse_block(net.blocks[0][1], {k[7:]: v for k, v in params.items() if k.startswith("stage0.")},
                      {k[7:]: v for k, v in buffers.items() if k.startswith("stage0.")})
    np.testing.assert_array_equal(deployed["stage0.rbr_reparam.weight"], k)
    np.testing.assert_array_equal(deployed["stage0.rbr_reparam.bias"], b)


@pytest.mark.parametrize("cfg", [(2, 2, 1, 1), (4, 2, 2, 2)])
def test_deployed_block_backward_matches_finite_differences(cfg):
    cin, cout, stride, groups = cfg
    rng = rng_from(3)
    block = DeployedBlock(cin, cout, stride, groups)
    params = block.init_params(rng)
    params["rbr_reparam.bias"] = rng.normal(0, 0.3, cout)
    x = rng.standard_normal((2, cin, 4, 3))
    y, _, cache = block.forward(params, {}, x, training=True)
    r = rng.standard_normal(y.shape)
    dx, grads = block.backward(params, cache, r)

    def loss(p, xx):
        return float(np.sum(block.forward(p, {}, xx, training=False)[0] * r))

    assert_close(dx, numerical_gradient(lambda a: loss(params, a), x), name="dx", kind="finite_difference")
    for name in block.trainable_names():
        fd = numerical_gradient(lambda a, name=name: loss({**params, name: a}, x), params[name])
        assert_close(grads[name], fd, name=name, kind="finite_difference")


def test_inputs_are_not_mutated_and_bad_input_is_refused():
    net, params, buffers, _ = _network(["repvgg_oabn", "csla"], [2, 2, 2], [1, 1], [1, 1], 4)
    before = ({k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in buffers.items()})
    deploy_network(net, params, buffers)
    assert all(np.array_equal(params[k], v) for k, v in before[0].items())
    assert all(np.array_equal(buffers[k], v) for k, v in before[1].items())
    with pytest.raises(TypeError, match="network must be a Network"):
        deploy_network("net", params, buffers)
    with pytest.raises(TypeError, match="buffers must be a mapping"):
        deploy_network(net, params, [1])
    with pytest.raises(ValueError, match="stage1.conv_1x1.weight|conv_1x1.weight"):
        deploy_network(net, {k: v for k, v in params.items() if k != "stage1.conv_1x1.weight"}, buffers)
    with pytest.raises(ValueError, match="linear.bias"):
        deploy_network(net, {k: v for k, v in params.items() if k != "linear.bias"}, buffers)
    with pytest.raises(TypeError, match="cannot deploy a DeployedBlock"):
        fuse_block(DeployedBlock(2, 2), {}, {})
    block = DeployedBlock(2, 3)
    with pytest.raises(ValueError, match="rbr_reparam"):
        block.forward({"rbr_reparam.weight": np.zeros((3, 2, 3, 3))}, {}, np.zeros((1, 2, 3, 3)), training=False)
    with pytest.raises(ValueError, match="no buffers"):
        block.forward(block.init_params(rng_from(0)), {"x": np.zeros(1)}, np.zeros((1, 2, 3, 3)), training=False)
    with pytest.raises(ValueError, match="groups"):
        DeployedBlock(3, 2, 1, 2)
