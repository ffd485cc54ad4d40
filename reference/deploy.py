"""SPEC §1/§2: a whole network in deploy form — every block fused into one 3x3 conv + bias.

A trained network ``logits = linear(GAP(block_k(… block_1(x))))`` (SPEC §1.network) is
deployed block by block, each block's branches fused with its **running** statistics:

- RepVGG: ``K = t3·K3 + t1·pad(K1) + t̃0·I_c``, ``b = Σ (β − μ·t)`` (SPEC §2.fusion; with
  OABN the identity factor is the clipped ``t̃0``, SPEC §4.oabn-eval);
- QARepVGG: SPEC §2.qarepvgg-fusion with the post BN folded;
- CSLA / HyperSearch: ``W' = α3·K3 + α1·pad(K1) + diag(d)·I_c`` (SPEC §3.equivalent-kernel),
  then its BN folded: ``K = t·W'``, ``b = β − μ·t``;
- RepOpt target ``relu(BN(conv3x3(x; W)))``: ``K = t·W``, ``b = β − μ·t``.

The deployed network is a :class:`repspec.reference.network.Network` of
:class:`DeployedBlock` (``relu(conv2d(x, K, b, stride, padding=1, groups))``, the official
deployed names ``rbr_reparam.weight (O, I/g, 3, 3)``, ``rbr_reparam.bias (O,)``) with the
same prefixes and head, so its forward and backward are the network's own. The fusion
theorem at network level: for every input, the deployed network's logits equal the
multi-branch network's eval-mode logits (``Network.forward(..., training=False)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np

from ._checks import as_float_array, check_bool, check_conv_config
from .network import Network
from .qat import fold_conv_bn
from .repopt import CSLABlock, HyperSearchBlock, RepOptTargetBlock
from .repopt_sgd import csla_equivalent_kernel
from .repvgg import QARepVGGBlock, RepVGGBlock, deploy_forward, deploy_forward_backward

__all__ = ["DeployedBlock", "fuse_block", "deploy_network"]

Arrays = dict[str, np.ndarray]

_K, _B = "rbr_reparam.weight", "rbr_reparam.bias"


class _DeployedCache(NamedTuple):
    x: np.ndarray


@dataclass(frozen=True)
class DeployedBlock:
    """A deployed block: ``y = relu(conv2d(x, K, b, stride, padding=1, groups))`` (SPEC §2.fusion).

    Names ``rbr_reparam.weight (O, I/g, 3, 3)`` and ``rbr_reparam.bias (O,)`` (the official
    deployed RepVGG layout), no buffers. Implements :class:`repspec.reference.network.Block`;
    its backward is :func:`repspec.reference.repvgg.deploy_forward_backward` (SPEC
    §2.fusion-backward: "the deployed form's backward is the conv backward").
    """

    in_channels: int
    out_channels: int
    stride: int = 1
    groups: int = 1

    def __post_init__(self):
        cin, o, stride, groups = check_conv_config(self.in_channels, self.out_channels, self.stride, self.groups)
        for k, v in dict(in_channels=cin, out_channels=o, stride=stride, groups=groups).items():
            object.__setattr__(self, k, v)

    def param_shapes(self) -> dict[str, tuple]:
        return {_K: (self.out_channels, self.in_channels // self.groups, 3, 3), _B: (self.out_channels,)}

    def trainable_names(self) -> tuple[str, ...]:
        return (_K, _B)

    def init_params(self, rng: np.random.Generator) -> Arrays:
        """``K ~ N(0, 2/fan_in)`` (Kaiming normal, ``fan_in = (I/g)·9``, as SPEC §2.repvgg-block), ``b = 0``."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        shape = self.param_shapes()[_K]
        return {_K: rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), size=shape), _B: np.zeros(self.out_channels)}

    def init_buffers(self) -> Arrays:
        return {}

    def _check(self, params) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of name -> array, got {type(params).__name__}")
        shapes = self.param_shapes()
        if set(params) != set(shapes):
            raise ValueError(f"params must hold exactly {sorted(shapes)}, got {sorted(params)}")
        return tuple(as_float_array(params[k], f"params[{k!r}]", shape=s) for k, s in shapes.items())

    def forward(self, params, buffers, x, *, training: bool) -> tuple[np.ndarray, Arrays, Any]:
        """``(y, {}, cache)``; ``training`` changes nothing (a deployed block has no BN)."""
        check_bool(training, "training")
        if not isinstance(buffers, Mapping) or buffers:
            raise ValueError("a deployed block has no buffers: buffers must be an empty mapping")
        kernel, bias = self._check(params)
        x = as_float_array(x, "x", shape=(None, self.in_channels, None, None))
        return deploy_forward(x, kernel, bias, stride=self.stride, groups=self.groups), {}, _DeployedCache(x)

    def backward(self, params, cache: _DeployedCache, dy) -> tuple[np.ndarray, Arrays]:
        """``(dx, {rbr_reparam.weight: ∂L/∂K, rbr_reparam.bias: ∂L/∂b})``."""
        if not isinstance(cache, _DeployedCache):
            raise TypeError("cache must be the cache returned by DeployedBlock.forward")
        kernel, bias = self._check(params)
        dx, dk, db = deploy_forward_backward(dy, cache.x, kernel, bias, stride=self.stride, groups=self.groups)
        return dx, {_K: dk, _B: db}


def _entry(tree, tree_name: str, key: str) -> np.ndarray:
    if not isinstance(tree, Mapping):
        raise TypeError(f"{tree_name} must be a mapping of name -> array, got {type(tree).__name__}")
    if key not in tree:
        raise ValueError(f"{tree_name} is missing {key!r}")
    return tree[key]


def _fold_bn(weight, params, buffers, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``K = t·W``, ``b = β − μ·t`` with the block's ``bn.*`` (eval mode)."""
    return fold_conv_bn(weight, _entry(params, "params", "bn.weight"), _entry(params, "params", "bn.bias"),
                        _entry(buffers, "buffers", "bn.running_mean"), _entry(buffers, "buffers", "bn.running_var"),
                        eps=eps)


def fuse_block(block, params: Mapping[str, np.ndarray], buffers: Mapping[str, np.ndarray]):
    """The deployed ``(K (O, I/g, 3, 3), b (O,))`` of one eval-mode block (local names; see the module docstring).

    ``relu(conv2d(x, K, b, stride, padding=1, groups))`` equals ``block.forward(params, buffers, x,
    training=False)``. A block of another kind is a ``TypeError``.
    """
    if isinstance(block, RepVGGBlock):
        return block.fuse(params, buffers)
    if isinstance(block, QARepVGGBlock):
        return block.fuse(params, buffers, fold_post_bn=True)
    if isinstance(block, (CSLABlock, HyperSearchBlock)):
        d = _entry(params, "params", "scale_identity.weight") if block._has_identity() else None
        w = csla_equivalent_kernel(_entry(params, "params", "conv.weight"), _entry(params, "params", "conv_1x1.weight"),
                                   _entry(params, "params", "scale_conv.weight"),
                                   _entry(params, "params", "scale_1x1.weight"), d)
        return _fold_bn(w, params, buffers, block.bn_eps)
    if isinstance(block, RepOptTargetBlock):
        return _fold_bn(_entry(params, "params", "conv.weight"), params, buffers, block.bn_eps)
    raise TypeError(f"cannot deploy a {type(block).__name__}: expected a RepVGG, QARepVGG, CSLA, HyperSearch or "
                    f"RepOpt target block")


def deploy_network(network: Network, params: Mapping[str, np.ndarray],
                   buffers: Mapping[str, np.ndarray]) -> tuple[Network, Arrays]:
    """The deployed form of ``network``: ``(Network of DeployedBlock, its params)``.

    Same prefixes, strides, groups and head as ``network``; ``{prefix}.rbr_reparam.weight`` and
    ``{prefix}.rbr_reparam.bias`` from :func:`fuse_block` with each block's running statistics,
    ``{head}.weight`` and ``{head}.bias`` copied. Its eval forward (``training`` is irrelevant:
    it has no BN and no buffers, pass ``{}``) equals ``network``'s eval-mode forward.
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network, got {type(network).__name__}")
    for tree, name in ((params, "params"), (buffers, "buffers")):
        if not isinstance(tree, Mapping):
            raise TypeError(f"{name} must be a mapping of name -> array, got {type(tree).__name__}")
    blocks, deployed = [], {}
    for prefix, block in network.blocks:
        cut = len(prefix) + 1
        local_p = {k[cut:]: v for k, v in params.items() if k.startswith(prefix + ".")}
        local_b = {k[cut:]: v for k, v in buffers.items() if k.startswith(prefix + ".")}
        kernel, bias = fuse_block(block, local_p, local_b)
        groups = block.groups if isinstance(block, (RepVGGBlock, QARepVGGBlock)) else 1  # §3 blocks: groups 1
        blocks.append((prefix, DeployedBlock(block.in_channels, block.out_channels, block.stride, groups)))
        deployed[f"{prefix}.{_K}"], deployed[f"{prefix}.{_B}"] = kernel, bias
    for n in ("weight", "bias"):
        key = f"{network.head_name}.{n}"
        deployed[key] = as_float_array(_entry(params, "params", key), f"params[{key!r}]").copy()
    return Network(tuple(blocks), network.num_classes, network.head_name), deployed
