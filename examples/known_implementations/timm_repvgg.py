"""Conformance adapter over timm's ``RepVggBlock`` (timm 1.0.31, ``timm/models/byobnet.py``).

The block is built from the case's arguments, its parameters and buffers are loaded through a
name map, and timm's own fusion (``RepVggBlock._get_kernel_bias``) produces ``(K, b)``.

How timm's block differs from the spec's block:
- BN ``eps`` is timm's ``BatchNormAct2d`` default (1e-5) unless set; the adapter sets it on every BN
  from the case, so a case with another eps is answered honestly.
- no OABN: a finite ``oabn_threshold`` is declined (``NotProvided``).
- groups are given as ``group_size = in_channels // groups``.
- the identity branch exists iff ``in == out and stride == 1`` (as in the spec).
timm is imported lazily: repspec never imports it.
"""

import numpy as np

from repspec.conformance import AdapterBase, NotProvided

# spec local name -> timm RepVggBlock state_dict name
NAME_MAP = {"rbr_dense.conv.": "conv_kxk.conv.", "rbr_dense.bn.": "conv_kxk.bn.",
            "rbr_1x1.conv.": "conv_1x1.conv.", "rbr_1x1.bn.": "conv_1x1.bn.", "rbr_identity.": "identity."}


def timm_name(spec_name: str) -> str:
    for ours, theirs in NAME_MAP.items():
        if spec_name.startswith(ours):
            return theirs + spec_name[len(ours):]
    raise KeyError(f"no timm name for {spec_name!r}")


class TimmRepVggAdapter(AdapterBase):
    name = "timm RepVggBlock"
    #: eps multiplier; 1.0 is the honest adapter (tests use 10.0 as a deliberately broken variant)
    eps_factor = 1.0
    #: True drops the identity branch before fusing (a second deliberately broken variant for the tests)
    drop_identity = False

    def _block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps):
        import torch
        from timm.models.byobnet import RepVggBlock

        block = RepVggBlock(in_channels, out_channels, stride=stride, group_size=in_channels // groups)
        block = block.double().eval()
        for module in block.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eps = eps * self.eps_factor
        state = {timm_name(k): torch.as_tensor(np.asarray(v)) for k, v in {**params, **buffers}.items()}
        block.load_state_dict(state, strict=True)
        if self.drop_identity:
            block.identity = None
        return block

    def fuse_repvgg_block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps,
                          oabn_threshold):
        if not np.isinf(oabn_threshold):
            raise NotProvided("timm RepVggBlock has no OABN threshold")
        import torch

        block = self._block(params, buffers, in_channels=in_channels, out_channels=out_channels, stride=stride,
                            groups=groups, eps=eps)
        with torch.no_grad():
            kernel, bias = block._get_kernel_bias()
        return kernel.numpy().astype(np.float64), bias.numpy().astype(np.float64)
