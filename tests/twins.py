"""The reference twin of a torch model: the same blocks, built with ``repspec.reference``.

Needs both implementations, so it lives above them, with the tests that run a network on
both sides (``module_arrays`` / ``load_reference_arrays`` move the parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from repspec.reference import repopt as ref_repopt
from repspec.reference import repvgg as ref_repvgg
from repspec.reference.network import Network
from repspec.torch_impl.modules.blocks import CSLABlock, HyperSearchBlock, QARepVGGBlock, RepOptTargetBlock, RepVGGBlock
from repspec.torch_impl.modules.models import VGGNet

__all__ = ["reference_block_for", "reference_network_for"]


def reference_block_for(block: nn.Module):
    """The reference block (``repspec.reference``) with the same configuration as a torch block."""
    if getattr(block, "deployed", False):
        raise TypeError(f"{type(block).__name__} is deployed; the reference trains only the training form")
    if isinstance(block, RepVGGBlock):
        return ref_repvgg.RepVGGBlock(block.in_channels, block.out_channels, block.stride, block.groups,
                                      bn_momentum=block.bn_momentum, bn_eps=block.bn_eps,
                                      oabn_threshold=block.oabn_threshold, oabn_gradient=block.oabn_gradient)
    if isinstance(block, QARepVGGBlock):
        return ref_repvgg.QARepVGGBlock(block.in_channels, block.out_channels, block.stride, block.groups,
                                        bn_momentum=block.bn_momentum, bn_eps=block.bn_eps)
    bn = getattr(block, "bn", None)
    if isinstance(block, (CSLABlock, HyperSearchBlock, RepOptTargetBlock)):
        kw = dict(bn_momentum=float(bn.momentum), bn_eps=float(bn.eps))

        def vec(layer):
            return layer.weight.detach().to("cpu", torch.float64).numpy().copy()

        if isinstance(block, CSLABlock):
            d = vec(block.scale_identity) if block.has_identity else None
            return ref_repopt.CSLABlock(block.in_channels, block.out_channels, block.stride,
                                        scale_conv=vec(block.scale_conv), scale_1x1=vec(block.scale_1x1),
                                        identity=block.identity, scale_identity=d, **kw)
        if isinstance(block, HyperSearchBlock):
            init = block.conv_scale_init if block.conv_scale_init is not None else 1.0
            return ref_repopt.HyperSearchBlock(block.in_channels, block.out_channels, block.stride, init, **kw)
        return ref_repopt.RepOptTargetBlock(block.in_channels, block.out_channels, block.stride, **kw)
    raise TypeError(f"no reference block for {type(block).__name__}")


def reference_network_for(model: nn.Module):
    """The :class:`repspec.reference.network.Network` equivalent to a (non-deployed) registry model.

    Prefixes are the module names (``stage0``, ``stage1.0`` …), the head is ``linear``;
    ``load_reference_arrays`` / ``module_arrays`` move parameters between the two.
    CSLA constant scales are taken from the model's current values.
    """
    if not isinstance(model, VGGNet):
        raise TypeError(f"model must be a VGGNet, got {type(model).__name__}")
    blocks = tuple((prefix, reference_block_for(block)) for prefix, block in model.named_blocks())
    return Network(blocks, model.num_classes, "linear")
