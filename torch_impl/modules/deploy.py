"""SPEC §2/§3: whole-model conversion to the deployed (plain VGG) form.

``convert_to_deploy(model)`` returns a *new* network of :class:`FusedConvBlock`
(``Conv2d(3x3, bias=True) + ReLU``, keys ``rbr_reparam.{weight,bias}`` — the official
deployed RepVGG layout), then ``gap`` and ``linear``; no BN, no branches. Each block's
kernel is its eval-mode ``get_equivalent_kernel_bias()``: RepVGG (OABN-clipped ``t̃0``),
QARepVGG (post BN folded), CSLA / HyperSearch (``W'`` with the BN folded) and RepOpt
target blocks (conv + BN folded). The input model is not modified, and the result
equals ``model.eval()`` on every input (up to float rounding).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .blocks import FusedConvBlock
from .models import VGGNet

__all__ = ["convert_to_deploy", "fuse_block"]


@torch.no_grad()
def fuse_block(block: nn.Module) -> FusedConvBlock:
    """A new :class:`FusedConvBlock` equal to ``block`` in eval mode (``block`` is untouched)."""
    if not hasattr(block, "get_equivalent_kernel_bias"):
        raise TypeError(f"{type(block).__name__} is not a re-parameterizable block (no get_equivalent_kernel_bias)")
    kernel, bias = block.get_equivalent_kernel_bias()
    with torch.device("meta"):  # skip the default init: the weights are replaced right away
        fused = FusedConvBlock(block.in_channels, block.out_channels, block.stride, getattr(block, "groups", 1))
    fused.rbr_reparam.weight = nn.Parameter(kernel.detach().clone())
    fused.rbr_reparam.bias = nn.Parameter(bias.detach().clone())
    se = getattr(block, "se", None)
    if se is not None:  # non-linear: kept as it is after the fused conv (RepVGG-D2se)
        fused.se = copy.deepcopy(se)
    return fused.eval()


@torch.no_grad()
def convert_to_deploy(model: nn.Module) -> nn.Module:
    """SPEC §2: a new plain network equal to ``model`` in eval mode; ``model`` is not modified.

    ``model`` is a :class:`~repspec.torch_impl.modules.models.VGGNet` (any block kind of this
    package, deployed or not) or a single block. The result is in eval mode, on the
    model's device and dtype.
    """
    if isinstance(model, VGGNet):
        fused = {prefix: fuse_block(block) for prefix, block in model.named_blocks()}

        def factory(i, o, s, stage, index):
            return fused["stage0" if stage == 0 else f"stage{stage}.{index}"]

        with torch.device("meta"):  # the head is replaced by a copy of the model's
            out = VGGNet(factory, model.num_blocks, model.widths, model.strides, model.num_classes,
                         model.in_channels)
        out.linear.weight = nn.Parameter(model.linear.weight.detach().clone())
        out.linear.bias = nn.Parameter(model.linear.bias.detach().clone())
        return out.eval()
    if hasattr(model, "get_equivalent_kernel_bias"):
        return fuse_block(model)
    raise TypeError(f"model must be a VGGNet or a re-parameterizable block, got {type(model).__name__}")
