"""Conformance adapter over ultralytics' ``RepConv`` (ultralytics 8.4.190, ``ultralytics/nn/modules/conv.py``).

The block is built from the case's arguments, its parameters and buffers are loaded through a
name map, and ultralytics' own fusion (``RepConv.get_equivalent_kernel_bias``, the one
``fuse_convs`` uses) produces ``(K, b)``.

How ultralytics' block differs from the spec's block:
- the identity BN exists only with ``bn=True`` (and ``c1 == c2``, ``s == 1``); the adapter passes
  ``bn=True`` exactly when the case has an identity branch, so both forms are exercised.
- BN ``eps`` is PyTorch's default (1e-5) on a bare module; ultralytics' ``initialize_weights`` sets
  1e-3 on whole models. The adapter sets it on every BN from the case.
- no OABN: a finite ``oabn_threshold`` is declined (``NotProvided``).
- its activation (SiLU by default) comes after the fused conv and is not part of ``(K, b)``.
- the identity kernel is built in float32 (``np.zeros(..., dtype=np.float32)``): its 0/1 entries are
  exact, and PyTorch promotes the product with the float64 BN factor to float64.
ultralytics is imported lazily: repspec never imports it.
"""

import numpy as np

from repspec.conformance import AdapterBase, NotProvided

# spec local name -> ultralytics RepConv state_dict name
NAME_MAP = {"rbr_dense.conv.": "conv1.conv.", "rbr_dense.bn.": "conv1.bn.",
            "rbr_1x1.conv.": "conv2.conv.", "rbr_1x1.bn.": "conv2.bn.", "rbr_identity.": "bn."}


def ultralytics_name(spec_name: str) -> str:
    for ours, theirs in NAME_MAP.items():
        if spec_name.startswith(ours):
            return theirs + spec_name[len(ours):]
    raise KeyError(f"no ultralytics name for {spec_name!r}")


class UltralyticsRepConvAdapter(AdapterBase):
    name = "ultralytics RepConv"
    #: eps multiplier; 1.0 is the honest adapter (tests use 10.0 as a deliberately broken variant)
    eps_factor = 1.0
    #: True builds the block without its identity BN (a second deliberately broken variant for the tests)
    drop_identity = False

    def _block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps):
        import torch
        from ultralytics.nn.modules.conv import RepConv

        identity = "rbr_identity.weight" in params and not self.drop_identity
        block = RepConv(in_channels, out_channels, k=3, s=stride, p=1, g=groups, bn=identity).double().eval()
        for module in block.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eps = eps * self.eps_factor
        state = {ultralytics_name(k): torch.as_tensor(np.asarray(v)) for k, v in {**params, **buffers}.items()
                 if identity or not k.startswith("rbr_identity.")}
        block.load_state_dict(state, strict=True)
        return block

    def fuse_repvgg_block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps,
                          oabn_threshold):
        if not np.isinf(oabn_threshold):
            raise NotProvided("ultralytics RepConv has no OABN threshold")
        import torch

        block = self._block(params, buffers, in_channels=in_channels, out_channels=out_channels, stride=stride,
                            groups=groups, eps=eps)
        with torch.no_grad():
            kernel, bias = block.get_equivalent_kernel_bias()
        return kernel.numpy().astype(np.float64), bias.numpy().astype(np.float64)
