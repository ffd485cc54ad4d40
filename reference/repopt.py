"""SPEC §3: gradient re-parameterization (RepOptimizer), CSLA and HyperSearch blocks.

Three block kinds, all implementing :class:`repspec.reference.network.Block`, with the
parameter names of the official RepOptimizers PyTorch code (``LinearAddBlock`` /
``RealVGGBlock`` in ``repoptimizer/repoptvgg_model.py``), so a torch port and the
published scale files (``stage{k}.{i}.scale_{conv|1x1|identity}.weight``) use the
same keys:

- :class:`CSLABlock`: ``y = relu(BN(α3·conv3x3(x; K3) + α1·conv1x1(x; K1) + d·x))`` with
  constant ``α3, α1`` and (if present) an identity scale ``d`` that is trainable
  (the official choice) or constant.
- :class:`HyperSearchBlock`: the same forward with ``α3, α1, d`` all trainable.
- :class:`RepOptTargetBlock`: ``relu(BN(conv3x3(x; W')))``, trained with RepOpt-SGD.

And the kernel-space functions that connect them: :func:`csla_equivalent_kernel`
(``W' = α3·K3 + α1·pad(K1) + diag(d)·I_c``) and its backward,
:func:`reinit_target_kernel` (``W'_0``), :func:`grad_mult_mask` (Grad Mult ``M``),
:func:`hypersearch_scale_init`, plus network-level helpers that build the target
network, its initial parameters and its masks from a CSLA network.

Shapes: ``x (N, I, H, W)``; ``K3 (O, I, 3, 3)``, ``K1 (O, I, 1, 1)``; scales ``(O,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

import numpy as np

from ._checks import (as_float_array, check_bool, check_conv_config, check_identity_mode, check_int, check_nonneg_float,
                      check_probability, check_vector)
from .kernels import conv_default_init, per_channel
from .repopt_sgd import IDENTITY_MODES, csla_equivalent_kernel, grad_mult_mask, reinit_target_kernel
from .network import Network
from .scales import parse_block_prefix, vgg_scale_layout
from .ops import (
    batch_norm_eval,
    batch_norm_eval_backward,
    batch_norm_train,
    batch_norm_train_backward,
    conv2d,
    conv2d_backward,
    relu,
    relu_backward,
)

__all__ = [
    "IDENTITY_MODES",
    "CSLABlock",
    "HyperSearchBlock",
    "RepOptTargetBlock",
    "conv_default_init",
    "csla_equivalent_kernel",
    "csla_equivalent_kernel_backward",
    "reinit_target_kernel",
    "grad_mult_mask",
    "hypersearch_scale_init",
    "target_network",
    "csla_to_target_params",
    "network_grad_mult_masks",
    "hypersearch_network",
    "extract_scales",
]

Arrays = dict[str, np.ndarray]

# ------------------------------------------------------------------------ validation


def _check_kernels(conv_weight, conv_1x1_weight):
    k3 = as_float_array(conv_weight, "conv_weight", shape=(None, None, 3, 3))
    k1 = as_float_array(conv_1x1_weight, "conv_1x1_weight", shape=(k3.shape[0], k3.shape[1], 1, 1))
    return k3, k1


def _frozen_vector(value, name: str, out_channels: int) -> np.ndarray:
    arr = check_vector(value, name, out_channels).copy()
    arr.setflags(write=False)
    return arr


# ------------------------------------------------------------------- initialization


def hypersearch_scale_init(stage_index: int, block_index: int) -> float:
    """Initial ``α3 = α1`` of HyperSearch block ``block_index`` of stage ``stage_index`` (SPEC §3).

    Official ``RepOptVGG._make_stage``: ``1`` for stage0 (a single block) and for
    block 0 of every stage, ``sqrt(2/i)`` for block ``i ≥ 1`` of a stage, so the
    variance of a residual stack does not grow with depth. (``d`` always starts at 1.)

    >>> [round(hypersearch_scale_init(1, i), 4) for i in range(4)]
    [1.0, 1.4142, 1.0, 0.8165]
    >>> hypersearch_scale_init(0, 0)
    1.0
    """
    stage_index = check_int(stage_index, "stage_index", min_value=0)
    block_index = check_int(block_index, "block_index", min_value=0)
    if stage_index == 0:
        if block_index != 0:
            raise ValueError(f"stage0 holds a single block, so block_index must be 0, got {block_index}")
        return 1.0
    return 1.0 if block_index == 0 else math.sqrt(2.0 / block_index)


# ---------------------------------------------------------------- kernel-space maps


def csla_equivalent_kernel_backward(grad_kernel, conv_weight, conv_1x1_weight, scale_conv, scale_1x1,
                                    scale_identity=None) -> Arrays:
    """Pull ``g = ∂L/∂W'`` back to the CSLA branch parameters (the chain rule of the linear map).

    ``∂L/∂K3 = α3·g``, ``∂L/∂K1 = α1·g[:, :, 1, 1]``, ``∂L/∂d[o] = g[o, o, 1, 1]``,
    ``∂L/∂α3[o] = Σ_{i,p,q} g·K3``, ``∂L/∂α1[o] = Σ_i g[o, i, 1, 1]·K1[o, i]``.

    Returns a dict keyed by the block's local names (``conv.weight``, ``conv_1x1.weight``,
    ``scale_conv.weight``, ``scale_1x1.weight`` and ``scale_identity.weight`` if
    ``scale_identity`` is given). This is why Grad Mult works: one SGD step on every
    branch moves ``W'`` by ``−lr·Σ_b J_b J_bᵀ g = −lr·M ⊙ g`` (``J_b = ∂W'/∂θ_b``).
    """
    k3, k1 = _check_kernels(conv_weight, conv_1x1_weight)
    o, i = k3.shape[:2]
    g = as_float_array(grad_kernel, "grad_kernel", shape=k3.shape)
    a3 = check_vector(scale_conv, "scale_conv", o)
    a1 = check_vector(scale_1x1, "scale_1x1", o)
    center = g[:, :, 1:2, 1:2]
    out = {
        "conv.weight": per_channel(a3) * g,
        "conv_1x1.weight": per_channel(a1) * center,
        "scale_conv.weight": (g * k3).sum(axis=(1, 2, 3)),
        "scale_1x1.weight": (center * k1).sum(axis=(1, 2, 3)),
    }
    if scale_identity is not None:
        check_vector(scale_identity, "scale_identity", o)
        if i != o:
            raise ValueError(f"scale_identity needs conv_weight with I == O, got shape {k3.shape}")
        out["scale_identity.weight"] = g[np.arange(o), np.arange(o), 1, 1].copy()
    return out


# ------------------------------------------------------- shared forward and backward


class _BNCache(NamedTuple):
    z: np.ndarray  # BN input
    h: np.ndarray  # BN output (pre-ReLU)
    training: bool
    running_mean: np.ndarray  # the statistics eval mode used
    running_var: np.ndarray


def _bn_relu_forward(z, params, buffers, out_channels, *, training, momentum, eps):
    """``relu(BN(z))`` with the block's ``bn.*`` parameters and buffers; returns ``(y, new_buffers, cache)``."""
    gamma = as_float_array(params["bn.weight"], "bn.weight", shape=(out_channels,))
    beta = as_float_array(params["bn.bias"], "bn.bias", shape=(out_channels,))
    rm = as_float_array(buffers["bn.running_mean"], "bn.running_mean", shape=(out_channels,))
    rv = as_float_array(buffers["bn.running_var"], "bn.running_var", shape=(out_channels,))
    if training:
        res = batch_norm_train(z, gamma, beta, rm, rv, momentum=momentum, eps=eps)
        h, new_buffers = res.y, {"bn.running_mean": res.running_mean, "bn.running_var": res.running_var}
    else:
        h, new_buffers = batch_norm_eval(z, gamma, beta, rm, rv, eps=eps), {}
    return relu(h), new_buffers, _BNCache(z, h, training, rm, rv)


def _bn_relu_backward(params, cache: _BNCache, dy, *, eps):
    """Returns ``(dz, {"bn.weight": …, "bn.bias": …})``."""
    dh = relu_backward(dy, cache.h)
    gamma = params["bn.weight"]
    if cache.training:
        dz, dgamma, dbeta = batch_norm_train_backward(dh, cache.z, gamma, eps=eps)
    else:
        dz, dgamma, dbeta = batch_norm_eval_backward(dh, cache.z, gamma, cache.running_mean, cache.running_var,
                                                     eps=eps)
    return dz, {"bn.weight": dgamma, "bn.bias": dbeta}


def _check_block_config(block) -> None:
    check_conv_config(block.in_channels, block.out_channels, block.stride)
    check_probability(block.bn_momentum, "bn_momentum")
    check_nonneg_float(block.bn_eps, "bn_eps")


def _bn_init(out_channels: int) -> Arrays:
    return {"bn.weight": np.ones(out_channels), "bn.bias": np.zeros(out_channels)}


def _bn_buffers(out_channels: int) -> Arrays:
    return {"bn.running_mean": np.zeros(out_channels), "bn.running_var": np.ones(out_channels)}


class _LinearAddCache(NamedTuple):
    x: np.ndarray
    c3: np.ndarray  # conv3x3(x; K3)
    c1: np.ndarray  # conv1x1(x; K1)
    bn: _BNCache


class _LinearAddMixin:
    """Forward/backward of the official ``LinearAddBlock`` (CSLA and HyperSearch share it).

    ``z = α3·conv3x3(x; K3) + α1·conv1x1(x; K1) + [identity]·d·x``, ``y = relu(BN(z))``.
    The scales are read from ``params`` (the state dict is the truth, as in torch).
    """

    def _has_identity(self) -> bool:
        raise NotImplementedError

    def init_buffers(self) -> Arrays:
        return _bn_buffers(self.out_channels)

    def forward(self, params: Mapping[str, np.ndarray], buffers: Mapping[str, np.ndarray], x, *, training: bool):
        """Return ``(y, new_buffers, cache)``; ``x (N, I, H, W)`` → ``y (N, O, Ho, Wo)``."""
        training = check_bool(training, "training")
        o, i = self.out_channels, self.in_channels
        x = as_float_array(x, "x", shape=(None, i, None, None))
        k3 = as_float_array(params["conv.weight"], "conv.weight", shape=(o, i, 3, 3))
        k1 = as_float_array(params["conv_1x1.weight"], "conv_1x1.weight", shape=(o, i, 1, 1))
        a3 = check_vector(params["scale_conv.weight"], "scale_conv.weight", o)
        a1 = check_vector(params["scale_1x1.weight"], "scale_1x1.weight", o)
        c3 = conv2d(x, k3, stride=self.stride, padding=1)
        c1 = conv2d(x, k1, stride=self.stride, padding=0)
        z = a3[None, :, None, None] * c3 + a1[None, :, None, None] * c1
        if self._has_identity():
            d = check_vector(params["scale_identity.weight"], "scale_identity.weight", o)
            z = z + d[None, :, None, None] * x
        y, new_buffers, bn_cache = _bn_relu_forward(z, params, buffers, o, training=training,
                                                    momentum=self.bn_momentum, eps=self.bn_eps)
        return y, new_buffers, _LinearAddCache(x, c3, c1, bn_cache)

    def backward(self, params: Mapping[str, np.ndarray], cache: _LinearAddCache, dy):
        """Return ``(dx, grads)`` for :meth:`trainable_names`.

        ``dz = ∂L/∂z`` from BN/ReLU; ``∂L/∂K3 = conv_w_grad(α3·dz)``, ``∂L/∂K1`` likewise;
        ``∂L/∂α3[o] = Σ dz·c3``, ``∂L/∂α1[o] = Σ dz·c1``, ``∂L/∂d[o] = Σ dz·x``;
        ``∂L/∂x = conv_x_grad(α3·dz; K3) + conv_x_grad(α1·dz; K1) + d·dz``.
        """
        dz, grads = _bn_relu_backward(params, cache.bn, dy, eps=self.bn_eps)
        a3 = np.asarray(params["scale_conv.weight"], dtype=np.float64)
        a1 = np.asarray(params["scale_1x1.weight"], dtype=np.float64)
        dx3, grads["conv.weight"], _ = conv2d_backward(a3[None, :, None, None] * dz, cache.x, params["conv.weight"],
                                                       stride=self.stride, padding=1)
        dx1, grads["conv_1x1.weight"], _ = conv2d_backward(a1[None, :, None, None] * dz, cache.x,
                                                           params["conv_1x1.weight"], stride=self.stride, padding=0)
        grads["scale_conv.weight"] = (dz * cache.c3).sum(axis=(0, 2, 3))
        grads["scale_1x1.weight"] = (dz * cache.c1).sum(axis=(0, 2, 3))
        dx = dx3 + dx1
        if self._has_identity():
            d = np.asarray(params["scale_identity.weight"], dtype=np.float64)
            grads["scale_identity.weight"] = (dz * cache.x).sum(axis=(0, 2, 3))
            dx = dx + d[None, :, None, None] * dz
        names = self.trainable_names()
        return dx, {k: grads[k] for k in names}


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True, eq=False)
class CSLABlock(_LinearAddMixin):
    """Constant-scale linear addition block (SPEC §3; official ``LinearAddBlock(is_csla=True)``).

    ``y = relu(BN(α3·conv3x3(x; K3) + α1·conv1x1(x; K1) + d·x))``: conv3x3 padding 1,
    conv1x1 padding 0, both with ``stride``, no bias, groups 1.

    Local names: ``conv.weight (O, I, 3, 3)`` = K3, ``conv_1x1.weight (O, I, 1, 1)`` = K1,
    ``scale_conv.weight (O,)`` = α3, ``scale_1x1.weight (O,)`` = α1,
    ``scale_identity.weight (O,)`` = d (iff ``identity != 'none'``), ``bn.weight``,
    ``bn.bias``; buffers ``bn.running_mean``, ``bn.running_var``.

    ``scale_conv``, ``scale_1x1`` (keyword-only, ``(O,)``) are the constants written
    into the parameters by :meth:`init_params`; ``scale_identity`` is the initial (or,
    for ``identity='constant'``, the fixed) ``d``, default ones. ``identity`` defaults
    to ``'trainable'`` when ``in == out`` and ``stride == 1`` (official), else ``'none'``.
    """

    in_channels: int
    out_channels: int
    stride: int = 1
    scale_conv: np.ndarray = field(kw_only=True)
    scale_1x1: np.ndarray = field(kw_only=True)
    identity: str | None = field(default=None, kw_only=True)
    scale_identity: np.ndarray | None = field(default=None, kw_only=True)
    bn_momentum: float = field(default=0.1, kw_only=True)
    bn_eps: float = field(default=1e-5, kw_only=True)

    def __post_init__(self):
        _check_block_config(self)
        o = self.out_channels
        identity = self.identity
        if identity is None:
            identity = "trainable" if self.in_channels == o and self.stride == 1 else "none"
        identity = check_identity_mode(identity, self.in_channels, o, self.stride)
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "scale_conv", _frozen_vector(self.scale_conv, "scale_conv", o))
        object.__setattr__(self, "scale_1x1", _frozen_vector(self.scale_1x1, "scale_1x1", o))
        if identity == "none":
            if self.scale_identity is not None:
                raise ValueError("scale_identity must be None when identity='none'")
        else:
            d = np.ones(o) if self.scale_identity is None else self.scale_identity
            object.__setattr__(self, "scale_identity", _frozen_vector(d, "scale_identity", o))

    def _has_identity(self) -> bool:
        return self.identity != "none"

    def init_params(self, rng: np.random.Generator) -> Arrays:
        """K3 then K1 from :func:`conv_default_init`; scales copied from the block; BN ``γ=1, β=0``."""
        o, i = self.out_channels, self.in_channels
        params = {
            "conv.weight": conv_default_init(rng, (o, i, 3, 3)),
            "conv_1x1.weight": conv_default_init(rng, (o, i, 1, 1)),
            "scale_conv.weight": self.scale_conv.copy(),
            "scale_1x1.weight": self.scale_1x1.copy(),
        }
        if self._has_identity():
            params["scale_identity.weight"] = self.scale_identity.copy()
        params.update(_bn_init(o))
        return params

    def trainable_names(self) -> tuple[str, ...]:
        names = ("conv.weight", "conv_1x1.weight")
        if self.identity == "trainable":
            names += ("scale_identity.weight",)
        return names + ("bn.weight", "bn.bias")


@dataclass(frozen=True, eq=False)
class HyperSearchBlock(_LinearAddMixin):
    """HyperSearch block (SPEC §3; official ``LinearAddBlock(is_csla=False)``, mode ``'hs'``).

    The CSLA forward with **trainable** per-channel ``α3, α1`` and (iff ``in == out``
    and ``stride == 1``) ``d``. Init: ``d = 1``, ``α3 = α1 = conv_scale_init`` (see
    :func:`hypersearch_scale_init`). Same names as :class:`CSLABlock`; after the search
    the ``scale_*.weight`` entries are the RepOptimizer's constants. (Official weight
    decay reaches only ``scale_identity.weight`` among the scales: see
    :func:`repspec.reference.optim.official_weight_decay`.)
    """

    in_channels: int
    out_channels: int
    stride: int = 1
    conv_scale_init: float = 1.0
    bn_momentum: float = field(default=0.1, kw_only=True)
    bn_eps: float = field(default=1e-5, kw_only=True)

    def __post_init__(self):
        _check_block_config(self)
        value = as_float_array(self.conv_scale_init, "conv_scale_init", shape=())
        object.__setattr__(self, "conv_scale_init", float(value))

    def _has_identity(self) -> bool:
        return self.in_channels == self.out_channels and self.stride == 1

    def init_params(self, rng: np.random.Generator) -> Arrays:
        o, i = self.out_channels, self.in_channels
        params = {
            "conv.weight": conv_default_init(rng, (o, i, 3, 3)),
            "conv_1x1.weight": conv_default_init(rng, (o, i, 1, 1)),
            "scale_conv.weight": np.full(o, self.conv_scale_init),
            "scale_1x1.weight": np.full(o, self.conv_scale_init),
        }
        if self._has_identity():
            params["scale_identity.weight"] = np.ones(o)
        params.update(_bn_init(o))
        return params

    def trainable_names(self) -> tuple[str, ...]:
        names = ("conv.weight", "conv_1x1.weight", "scale_conv.weight", "scale_1x1.weight")
        if self._has_identity():
            names += ("scale_identity.weight",)
        return names + ("bn.weight", "bn.bias")


class _TargetCache(NamedTuple):
    x: np.ndarray
    bn: _BNCache


@dataclass(frozen=True, eq=False)
class RepOptTargetBlock:
    """RepOpt-VGG target block (SPEC §3; official ``RealVGGBlock``): ``y = relu(BN(conv3x3(x; W')))``.

    conv3x3 padding 1, ``stride``, no bias. Names ``conv.weight (O, I, 3, 3)``,
    ``bn.weight``, ``bn.bias``; buffers ``bn.running_mean``, ``bn.running_var``.
    Train it with RepOpt-SGD (masks from :func:`grad_mult_mask`) starting from
    :func:`reinit_target_kernel` / :func:`csla_to_target_params`.
    """

    in_channels: int
    out_channels: int
    stride: int = 1
    bn_momentum: float = field(default=0.1, kw_only=True)
    bn_eps: float = field(default=1e-5, kw_only=True)

    def __post_init__(self):
        _check_block_config(self)

    def init_params(self, rng: np.random.Generator) -> Arrays:
        params = {"conv.weight": conv_default_init(rng, (self.out_channels, self.in_channels, 3, 3))}
        params.update(_bn_init(self.out_channels))
        return params

    def init_buffers(self) -> Arrays:
        return _bn_buffers(self.out_channels)

    def trainable_names(self) -> tuple[str, ...]:
        return ("conv.weight", "bn.weight", "bn.bias")

    def forward(self, params, buffers, x, *, training: bool):
        training = check_bool(training, "training")
        x = as_float_array(x, "x", shape=(None, self.in_channels, None, None))
        w = as_float_array(params["conv.weight"], "conv.weight", shape=(self.out_channels, self.in_channels, 3, 3))
        z = conv2d(x, w, stride=self.stride, padding=1)
        y, new_buffers, bn_cache = _bn_relu_forward(z, params, buffers, self.out_channels, training=training,
                                                    momentum=self.bn_momentum, eps=self.bn_eps)
        return y, new_buffers, _TargetCache(x, bn_cache)

    def backward(self, params, cache: _TargetCache, dy):
        """``dz`` from BN/ReLU, then ``(∂L/∂x, ∂L/∂W')`` of the conv."""
        dz, grads = _bn_relu_backward(params, cache.bn, dy, eps=self.bn_eps)
        dx, grads["conv.weight"], _ = conv2d_backward(dz, cache.x, params["conv.weight"], stride=self.stride,
                                                      padding=1)
        return dx, grads


# ----------------------------------------------------------- network-level helpers


def _linear_add_blocks(network: Network):
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network, got {type(network).__name__}")
    for prefix, block in network.blocks:
        if not isinstance(block, (CSLABlock, HyperSearchBlock)):
            raise TypeError(f"block {prefix!r} must be a CSLABlock or HyperSearchBlock, got {type(block).__name__}")
    return network.blocks


def _block_identity_mode(block) -> str:
    if isinstance(block, CSLABlock):
        return block.identity
    return "trainable" if block._has_identity() else "none"


def target_network(network: Network) -> Network:
    """The RepOpt target network of a CSLA/HyperSearch network: same prefixes, strides, BN settings, head."""
    blocks = tuple(
        (p, RepOptTargetBlock(b.in_channels, b.out_channels, b.stride, bn_momentum=b.bn_momentum, bn_eps=b.bn_eps))
        for p, b in _linear_add_blocks(network)
    )
    return Network(blocks, network.num_classes, network.head_name)


def csla_to_target_params(network: Network, params: Mapping[str, np.ndarray]) -> Arrays:
    """Target parameters equal to a CSLA network's: ``{prefix}.conv.weight = W'`` per block, BN and head copied.

    Buffers carry over unchanged (same names). With the block's current ``K3, K1, d``
    this is the ``W'_0`` of the theorem (SPEC §3).
    """
    out: Arrays = {}
    for prefix, block in _linear_add_blocks(network):
        def get(name, _p=prefix):
            key = f"{_p}.{name}"
            if key not in params:
                raise ValueError(f"params is missing {key!r}")
            return params[key]

        d = get("scale_identity.weight") if block._has_identity() else None
        out[f"{prefix}.conv.weight"] = csla_equivalent_kernel(get("conv.weight"), get("conv_1x1.weight"),
                                                              get("scale_conv.weight"), get("scale_1x1.weight"), d)
        out[f"{prefix}.bn.weight"] = np.array(get("bn.weight"), dtype=np.float64)
        out[f"{prefix}.bn.bias"] = np.array(get("bn.bias"), dtype=np.float64)
    for name in ("weight", "bias"):
        key = f"{network.head_name}.{name}"
        if key not in params:
            raise ValueError(f"params is missing {key!r}")
        out[key] = np.array(params[key], dtype=np.float64)
    return out


def network_grad_mult_masks(network: Network, params: Mapping[str, np.ndarray], *, exponent: int = 2) -> Arrays:
    """``{prefix}.conv.weight → M`` for every block of a CSLA/HyperSearch network (its scales from ``params``).

    The identity mode is the block's (HyperSearch: ``'trainable'`` iff it has one).
    Feed the result to ``repspec.reference.optim.SGD(grad_mult_masks=…)`` for the target network.
    """
    masks: Arrays = {}
    for prefix, block in _linear_add_blocks(network):
        a3 = params[f"{prefix}.scale_conv.weight"]
        a1 = params[f"{prefix}.scale_1x1.weight"]
        masks[f"{prefix}.conv.weight"] = grad_mult_mask(a3, a1, block.in_channels,
                                                        identity=_block_identity_mode(block), exponent=exponent)
    return masks


def hypersearch_network(num_blocks, widths, strides, *, in_channels: int, num_classes: int,
                        bn_momentum: float = 0.1, bn_eps: float = 1e-5) -> Network:
    """The HyperSearch network of a VGG skeleton (SPEC §3.hypersearch, §3.architectures; official
    ``RepOptVGG(mode='hs')``).

    Block ``i`` of stage ``k`` (prefix ``stage{k}.{i}``, stage0 a single block ``stage0``) is a
    :class:`HyperSearchBlock` whose ``α3 = α1`` start at :func:`hypersearch_scale_init` ``(k, i)``
    and whose ``d`` (iff the block has an identity branch) starts at 1; the first block of a stage
    has the stage's stride. ``network.init(rng)`` gives the initial parameters, and
    :func:`extract_scales` reads the scales from them (the schedule) or from trained ones.

    >>> net = hypersearch_network((1, 3), (4, 4), (1, 1), in_channels=3, num_classes=2)
    >>> [(p, round(b.conv_scale_init, 4)) for p, b in net.blocks]
    [('stage0', 1.0), ('stage1.0', 1.0), ('stage1.1', 1.4142), ('stage1.2', 1.0)]
    """
    layout = vgg_scale_layout(num_blocks, widths, strides, in_channels=in_channels)
    blocks, cin = [], check_int(in_channels, "in_channels", min_value=1)
    for prefix, cout, _ in layout:
        stage, index = parse_block_prefix(prefix)
        stride = strides[stage] if index == 0 else 1
        blocks.append((prefix, HyperSearchBlock(cin, cout, stride, conv_scale_init=hypersearch_scale_init(stage, index),
                                                bn_momentum=bn_momentum, bn_eps=bn_eps)))
        cin = cout
    return Network(tuple(blocks), num_classes)


def extract_scales(network: Network, params: Mapping[str, np.ndarray]) -> Arrays:
    """The RepOpt scales of a (trained) HyperSearch or CSLA network (SPEC §3.hypersearch, §3.scale-files).

    ``{"{prefix}.scale_conv.weight": α3, "{prefix}.scale_1x1.weight": α1[, "{prefix}.scale_identity.weight": d]}``
    per block in network order, float64 copies of ``params``' entries: the learned scales *are*
    the RepOptimizer's constants (official ``extract_scales``, which keeps them as per-block
    tuples: :func:`repspec.reference.scales.scales_to_official`). ``scale_identity`` is present
    exactly for the blocks with an identity branch.
    """
    out: Arrays = {}
    for prefix, block in _linear_add_blocks(network):
        kinds = ("conv", "1x1", "identity") if block._has_identity() else ("conv", "1x1")
        for kind in kinds:
            key = f"{prefix}.scale_{kind}.weight"
            if key not in params:
                raise ValueError(f"params is missing {key!r}")
            out[key] = check_vector(params[key], key, block.out_channels).copy()
    return out
