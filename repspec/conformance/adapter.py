"""The adapter protocol: what a port provides so the conformance suite can check it.

A *port* is any implementation of the spec (another framework, a compiler, a kernel).
It plugs into the suite through an **adapter**: a small object whose methods take and
return NumPy **float64** arrays (the port converts internally) and whose names and
argument conventions are the reference's (``repspec.reference``). Every method is
optional: one that is missing, or that raises :class:`NotProvided`, makes its clauses
report ``skipped: not provided`` instead of pass or fail.

=====================================  ============================  ======================
method                                 SPEC                          clauses
=====================================  ============================  ======================
``fuse_repvgg_block``                  §2 fusion (+ §4 OABN ``t̃0``)   ``§2.fusion``
``fuse_qarepvgg_block``                §2 QARepVGG fusion            ``§2.qarepvgg-fusion``
``fuse_repvgg_block_backward``         §2 differentiable fusion      ``§2.fusion-backward``
``fuse_qarepvgg_block_backward``       §2 differentiable fusion      ``§2.fusion-backward``
``merged_weight_categories``           §2 categories A/B/C           ``§2.categories``
``category_statistics``                §2 category statistics        ``§2.categories``
``identity_ratio``                     §2 identity ratio ``t0``      ``§2.categories``
``grad_mult_mask``                     §3 Grad Mult                  ``§3.grad-mult``, ``§3.theorem``,
                                                                     ``§3.constant-identity``
``repopt_sgd_step``                    §3 RepOpt-SGD step            ``§3.repopt-sgd-step``, ``§3.theorem``,
                                                                     ``§3.constant-identity``
``csla_block``                         §3 CSLA block fwd + bwd       ``§3.csla``
``csla_equivalent_kernel``             §3 ``W'`` of a CSLA block     ``§3.equivalent-kernel``
``reinit_target_kernel``               §3 ``W'_0`` of the target     ``§3.reinit``
``weight_decay_map``                   §3 official decay map         ``§3.weight-decay``
``adamw_step``                         §3 (masked) AdamW step        ``§3.adamw``
``hypersearch_block``                  §3 HyperSearch block          ``§3.hypersearch``
``hypersearch_scales``                 §3 HS init / extraction       ``§3.hypersearch``
``scales_to_official``                 §3 dict → original tuples     ``§3.scale-files``
``scales_from_official``               §3 original tuples → dict     ``§3.scale-files``
``oabn_factor``                        §4 clipped factor ``t̃``       ``§4.oabn-factor``
``oabn_train``                         §4 OABN train fwd + bwd       ``§4.oabn``
``oabn_eval``                          §4 OABN eval fwd + bwd        ``§4.oabn-eval``
``fake_quantize_weight``               §5 uniform weights            ``§5.uniform-weight``
``fake_quantize_weight_backward``      §5 STE (weights)              ``§5.ste-weight``
``fake_quantize_activation``           §5 uniform activations        ``§5.uniform-activation``
``fake_quantize_activation_backward``  §5 STE (activations)          ``§5.ste``
``calibrate``                          §5 PTQ calibrators            ``§5.calibrators``
``weight_qparams``                     §5 weight scale               ``§5.zero-range``, ``§5.scale-underflow``
``quantize_weight``                    §5 weight codes               ``§5.zero-range``, ``§5.scale-underflow``
``activation_qparams``                 §5 scale, zero point          ``§5.zero-range``, ``§5.scale-underflow``
``quantize_activation``                §5 activation codes           ``§5.zero-range``, ``§5.scale-underflow``
``quantized_network``                  §5 what is quantized          ``§5.quantized-layers``
``state_size``                         §5 state size                 ``§5.state-size``
``kmeans_fake_quantize``               §5 k-means assignment         ``§5.kmeans-ties``
``kmeans_1d``                          §5 1-D k-means                ``§5.kmeans``
``train_iteration``                    §1 one training iteration     ``§1.train-iteration``
``network_forward_train``              §1 network, train form        ``§1.network``
``network_forward_deployed``           §1 network, deploy form       ``§1.network``
``qat_train_iteration``                §5 one QAT / ClusterQAT step  ``§5.qat``, ``§5.cluster-qat``
=====================================  ============================  ======================

:class:`ReferenceAdapter` implements every method with the reference itself (it is the
oracle, so it passes every clause by construction; the suite's own tests use it, and
its source is the shortest complete example of an adapter). Network and optimizer
descriptions for ``train_iteration`` are the plain dataclasses :class:`BlockSpec`,
:class:`NetworkSpec` and :class:`SGDSpec`; ``quantized_network`` returns a
:class:`QuantizedNetworkResult` of :class:`QuantizedLayer` records. See ``docs/porting.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from repspec.core.vocabulary import IDENTITY_MODES
from repspec.reference.analysis import category_statistics, identity_ratio, merged_weight_categories, state_size
from repspec.reference.calibrate import calibrate
from repspec.reference.deploy import deploy_network
from repspec.reference.kmeans import kmeans_1d, kmeans_fake_quantize
from repspec.reference.network import Network, train_step
from repspec.reference.oabn import oabn_eval, oabn_eval_backward, oabn_factor, oabn_train, oabn_train_backward
from repspec.reference.optim import SGD, adamw_step, sgd_step
from repspec.reference.qat import KMeansWeightQuantizer, UniformWeightQuantizer, make_qat_network
from repspec.reference.quant import (
    activation_qparams,
    activation_range,
    fake_quantize_activation,
    fake_quantize_backward,
    fake_quantize_weight,
    quantize_activation,
    quantize_weight,
    weight_qparams,
)
from repspec.reference.repopt import (
    CSLABlock,
    HyperSearchBlock,
    RepOptTargetBlock,
    extract_scales,
    grad_mult_mask,
    hypersearch_network,
)
from repspec.reference.repopt_sgd import csla_equivalent_kernel, official_weight_decay, reinit_target_kernel
from repspec.reference.repvgg import (
    QARepVGGBlock,
    RepVGGBlock,
    fuse_qarepvgg_block,
    fuse_qarepvgg_block_backward,
    fuse_repvgg_block,
    fuse_repvgg_block_backward,
)
from repspec.reference.scales import scales_from_official, scales_to_official

__all__ = [
    "NotProvided",
    "ConformanceAdapter",
    "AdapterBase",
    "ReferenceAdapter",
    "OABNResult",
    "OABNEvalResult",
    "BlockResult",
    "TrainIterationResult",
    "QATSpec",
    "NetworkForwardResult",
    "DeployedNetworkResult",
    "QuantizedLayer",
    "QuantizedNetworkResult",
    "BlockSpec",
    "NetworkSpec",
    "SGDSpec",
    "BLOCK_KINDS",
    "ADAPTER_METHODS",
    "without_num_batches_tracked",
]

Arrays = dict[str, np.ndarray]

#: every method of the protocol, in the order of the table above
ADAPTER_METHODS = (
    "fuse_repvgg_block",
    "fuse_qarepvgg_block",
    "fuse_repvgg_block_backward",
    "fuse_qarepvgg_block_backward",
    "merged_weight_categories",
    "category_statistics",
    "identity_ratio",
    "grad_mult_mask",
    "repopt_sgd_step",
    "csla_block",
    "csla_equivalent_kernel",
    "reinit_target_kernel",
    "weight_decay_map",
    "adamw_step",
    "hypersearch_block",
    "hypersearch_scales",
    "scales_to_official",
    "scales_from_official",
    "oabn_factor",
    "oabn_train",
    "oabn_eval",
    "fake_quantize_weight",
    "fake_quantize_weight_backward",
    "fake_quantize_activation",
    "fake_quantize_activation_backward",
    "calibrate",
    "weight_qparams",
    "quantize_weight",
    "activation_qparams",
    "quantize_activation",
    "quantized_network",
    "state_size",
    "kmeans_fake_quantize",
    "kmeans_1d",
    "train_iteration",
    "network_forward_train",
    "network_forward_deployed",
    "qat_train_iteration",
)

#: the block kinds a :class:`BlockSpec` may name (SPEC §2 and §3)
BLOCK_KINDS = ("repvgg", "qarepvgg", "csla", "repopt_target", "hypersearch")


class NotProvided(NotImplementedError):
    """Raise from an adapter method (or leave the method out) when the port does not offer it.

    The clauses that need the method are reported as ``skipped: not provided``.
    """


# ---------------------------------------------------------------------- results


class OABNResult(NamedTuple):
    """What :meth:`ConformanceAdapter.oabn_train` returns (a plain 6-tuple in this order is accepted)."""

    y: np.ndarray  # (N, C, H, W) forward output
    running_mean: np.ndarray  # (C,) updated running mean
    running_var: np.ndarray  # (C,) updated running variance (unbiased batch variance, SPEC §0)
    dx: np.ndarray  # (N, C, H, W) ∂L/∂x for the given upstream gradient dy
    dgamma: np.ndarray  # (C,)
    dbeta: np.ndarray  # (C,)


class OABNEvalResult(NamedTuple):
    """What :meth:`ConformanceAdapter.oabn_eval` returns (a plain 4-tuple in this order is accepted)."""

    y: np.ndarray  # (N, C, H, W) forward output t̃·x + (β − μ·t̃)
    dx: np.ndarray  # (N, C, H, W) ∂L/∂x for the given upstream gradient dy
    dgamma: np.ndarray  # (C,)
    dbeta: np.ndarray  # (C,)
class BlockResult(NamedTuple):
    """What :meth:`ConformanceAdapter.csla_block` and :meth:`~ConformanceAdapter.hypersearch_block` return
    (a plain 4-tuple in this order is accepted)."""

    y: np.ndarray  # (N, O, Ho, Wo) forward output relu(BN(z))
    buffers: Mapping[str, np.ndarray]  # {"bn.running_mean", "bn.running_var"} after the forward (eval: unchanged)
    dx: np.ndarray  # (N, I, H, W) ∂L/∂x for the upstream gradient dy
    grads: Mapping[str, np.ndarray]  # ∂L/∂θ for exactly the block's trainable local names


class TrainIterationResult(NamedTuple):
    """What :meth:`ConformanceAdapter.train_iteration` returns (a plain tuple in this order is accepted).

    ``grads`` may be None (then only the step's results are compared); when given it
    maps every trainable name to ``∂L/∂θ`` *before* the optimizer step.
    """

    loss: float
    logits: np.ndarray  # (N, num_classes), computed before the step
    grads: Mapping[str, np.ndarray] | None
    params: Mapping[str, np.ndarray]  # every parameter after the step (constants carried over)
    buffers: Mapping[str, np.ndarray]  # BN running statistics after the training-mode forward
    opt_state: Mapping[str, Mapping[str, np.ndarray]]  # {trainable name: {} | {"momentum_buffer": array}}


class NetworkForwardResult(NamedTuple):
    """What :meth:`ConformanceAdapter.network_forward_train` returns (a plain 2-tuple is accepted)."""

    logits: np.ndarray  # (N, num_classes)
    buffers: Mapping[str, np.ndarray]  # every BN running statistic after the training-mode forward


class DeployedNetworkResult(NamedTuple):
    """What :meth:`ConformanceAdapter.network_forward_deployed` returns (a plain 2-tuple is accepted).

    ``params`` may be None (then only the logits are compared); when given it is the deployed
    network's state: ``{prefix}.rbr_reparam.weight (O, I/g, 3, 3)`` and ``{prefix}.rbr_reparam.bias
    (O,)`` for every block, ``{head_name}.weight`` and ``{head_name}.bias``.
    """

    logits: np.ndarray  # (N, num_classes) of the deployed network
    params: Mapping[str, np.ndarray] | None
class QuantizedLayer(NamedTuple):
    """One layer of :meth:`ConformanceAdapter.quantized_network` (a plain 5-tuple in this order is accepted).

    ``kernel`` is what the deployed layer computes with: for a block the merged 3x3 kernel
    ``(O, I/g, 3, 3)``, fake-quantized when ``weight_bits`` is set (FP otherwise); for the head its
    weight ``(K, C)``. ``bias`` ``(O,)`` is never quantized. ``weight_bits`` / ``act_bits`` are None
    for a layer whose weights / input stay FP32; ``per_channel`` is False when ``weight_bits`` is None.
    """

    kernel: np.ndarray
    bias: np.ndarray
    weight_bits: int | None
    per_channel: bool
    act_bits: int | None


class QuantizedNetworkResult(NamedTuple):
    """What :meth:`ConformanceAdapter.quantized_network` returns (a plain 2-tuple is accepted)."""

    layers: Mapping[str, QuantizedLayer]  # every block prefix and the head name
    logits: np.ndarray  # (N, num_classes): the quantized network in eval mode on the given x


# ------------------------------------------------------------- network description


@dataclass(frozen=True)
class BlockSpec:
    """One block of a :class:`NetworkSpec` (local parameter names are the reference's / torch's).

    ``kind``:

    - ``"repvgg"``: SPEC §2 RepVGG block (``rbr_dense.*``, ``rbr_1x1.*``, ``rbr_identity.*`` iff
      ``in == out and stride == 1``); the identity BN is an OABN (SPEC §4) with
      ``oabn_threshold``/``oabn_gradient`` when the threshold is finite.
    - ``"qarepvgg"``: SPEC §2 QARepVGG block (``rbr_dense.*``, ``rbr_1x1.weight``, ``bn.*``).
    - ``"csla"``: SPEC §3 CSLA block (``conv.weight``, ``conv_1x1.weight``, constant
      ``scale_conv.weight``/``scale_1x1.weight``, ``scale_identity.weight`` unless
      ``identity == "none"``, ``bn.*``); ``identity`` is ``"trainable"`` (d trained),
      ``"constant"`` (d fixed) or ``"none"``. Its scales are read from the parameters.
    - ``"repopt_target"``: SPEC §3 target block ``relu(BN(conv3x3(x; W')))``
      (``conv.weight``, ``bn.*``), usually trained with Grad Mult masks.
    - ``"hypersearch"``: SPEC §3 HyperSearch block: the CSLA forward with **trainable**
      ``scale_conv.weight``, ``scale_1x1.weight`` and (iff ``in == out and stride == 1``)
      ``scale_identity.weight``.

    ``groups`` is for ``repvgg``/``qarepvgg`` only (1 otherwise).
    """

    kind: str
    prefix: str
    in_channels: int
    out_channels: int
    stride: int = 1
    groups: int = 1
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    oabn_threshold: float = math.inf
    oabn_gradient: str = "clip"
    identity: str = "none"

    def __post_init__(self):
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"BlockSpec.kind must be one of {BLOCK_KINDS}, got {self.kind!r}")
        if self.kind not in ("repvgg", "qarepvgg") and self.groups != 1:
            raise ValueError(f"groups must be 1 for kind {self.kind!r}, got {self.groups}")
        if self.kind == "csla" and self.identity not in IDENTITY_MODES:
            raise ValueError(f"identity must be one of {IDENTITY_MODES}, got {self.identity!r}")

    @property
    def has_identity(self) -> bool:
        """Whether the block has an identity branch (SPEC §2/§3)."""
        if self.kind == "csla":
            return self.identity != "none"
        return self.in_channels == self.out_channels and self.stride == 1

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class NetworkSpec:
    """``logits = linear(GAP(block_k(… block_1(x))))``, loss = mean softmax cross-entropy (SPEC §1).

    Parameters and buffers are flat ``{"{prefix}.{local name}": array}`` dicts; the head owns
    ``{head_name}.weight (K, C)`` and ``{head_name}.bias (K,)``.
    """

    blocks: tuple[BlockSpec, ...]
    num_classes: int
    head_name: str = "linear"

    def reference_network(self, params: Mapping[str, np.ndarray]):
        """The equivalent :class:`repspec.reference.network.Network` (CSLA scales read from ``params``)."""
        blocks = []
        for b in self.blocks:
            bn = dict(bn_momentum=b.bn_momentum, bn_eps=b.bn_eps)
            if b.kind == "repvgg":
                block = RepVGGBlock(b.in_channels, b.out_channels, b.stride, b.groups, oabn_threshold=b.oabn_threshold,
                                    oabn_gradient=b.oabn_gradient, **bn)
            elif b.kind == "qarepvgg":
                block = QARepVGGBlock(b.in_channels, b.out_channels, b.stride, b.groups, **bn)
            elif b.kind == "csla":
                d = params.get(f"{b.prefix}.scale_identity.weight") if b.identity != "none" else None
                block = CSLABlock(b.in_channels, b.out_channels, b.stride,
                                  scale_conv=params[f"{b.prefix}.scale_conv.weight"],
                                  scale_1x1=params[f"{b.prefix}.scale_1x1.weight"], identity=b.identity,
                                  scale_identity=d, **bn)
            elif b.kind == "hypersearch":
                block = HyperSearchBlock(b.in_channels, b.out_channels, b.stride, **bn)
            else:
                block = RepOptTargetBlock(b.in_channels, b.out_channels, b.stride, **bn)
            blocks.append((b.prefix, block))
        return Network(tuple(blocks), self.num_classes, self.head_name)

    def trainable_names(self, params: Mapping[str, np.ndarray]) -> tuple[str, ...]:
        """The names an optimizer updates, in network order (CSLA's constant scales excluded)."""
        return self.reference_network(params).trainable_names()

    def as_dict(self) -> dict:
        return {"blocks": [b.as_dict() for b in self.blocks], "num_classes": self.num_classes,
                "head_name": self.head_name}


@dataclass(frozen=True)
class SGDSpec:
    """SGD / RepOpt-SGD hyper-parameters for one :meth:`ConformanceAdapter.train_iteration` (SPEC §3).

    ``weight_decay``: one λ for every trainable parameter, or ``{name: λ}`` (names left out
    get 0). ``grad_mult_masks``: ``{name: M}`` for the parameters that have a Grad Mult mask
    (RepOpt-SGD); the others get plain SGD. The step order is SPEC §3's.
    """

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float | Mapping[str, float] = 0.0
    grad_mult_masks: Mapping[str, np.ndarray] | None = field(default=None)

    def decay_for(self, name: str) -> float:
        wd = self.weight_decay
        return float(wd.get(name, 0.0)) if isinstance(wd, Mapping) else float(wd)

    def as_dict(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening, "nesterov": self.nesterov,
                "weight_decay": dict(self.weight_decay) if isinstance(self.weight_decay, Mapping)
                else self.weight_decay,
                "grad_mult_masks": None if self.grad_mult_masks is None else dict(self.grad_mult_masks)}


@dataclass(frozen=True)
class QATSpec:
    """How :meth:`ConformanceAdapter.qat_train_iteration` wraps a network for QAT on merged weights
    (SPEC §5.qat, §5.cluster-qat).

    ``kind``: ``'uniform'`` (``bits`` 2–8, per layer or ``per_channel``) or ``'kmeans'`` (ClusterQAT:
    ``2^bits`` centroids, refit by warm-started Lloyd when ``step mod update_every = 0``).
    ``act_bits``: the block inputs' fake quantization (``None``: FP32 inputs), moving-average
    min/max with ``act_momentum``. ``keep_first_fp32``: the first block's weights and input stay FP32.
    """

    kind: str
    bits: int
    per_channel: bool = False
    update_every: int = 1
    act_bits: int | None = 8
    act_momentum: float = 0.01
    keep_first_fp32: bool = True

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --------------------------------------------------------------------- the protocol


@runtime_checkable
class ConformanceAdapter(Protocol):
    """The protocol a port implements (every method optional; see the module docstring).

    All arrays are NumPy float64 on the way in and may be any real array-like on the way
    out (they are converted with ``np.asarray(..., dtype=float64)``; integer labels are
    compared exactly). Inputs must not be mutated.
    """

    #: a short human-readable name for reports
    name: str

    def fuse_repvgg_block(self, params: Mapping[str, np.ndarray], buffers: Mapping[str, np.ndarray], *,
                          in_channels: int, out_channels: int, stride: int, groups: int, eps: float,
                          oabn_threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """SPEC §2 (§4): ``(K (O, I/g, 3, 3), b (O,))`` of an eval-mode RepVGG block.

        ``params``/``buffers`` use the local names ``rbr_dense.conv.weight``,
        ``rbr_dense.bn.{weight,bias}``, ``rbr_1x1.conv.weight``, ``rbr_1x1.bn.{weight,bias}``,
        ``rbr_identity.{weight,bias}`` (iff ``in == out and stride == 1``) and the
        ``running_mean``/``running_var``/``num_batches_tracked`` buffers of each BN (the counter is
        a 0-d int64 0, as in a torch ``state_dict``; it is never compared). ``oabn_threshold`` clips the
        identity factor ``t0`` to ``[−s, s]`` (``inf``: plain BN).
        """
        ...

    def fuse_qarepvgg_block(self, params, buffers, *, in_channels: int, out_channels: int, stride: int, groups: int,
                            eps: float, fold_post_bn: bool):
        """SPEC §2 QARepVGG: ``(K, b)`` (``fold_post_bn=True``) or ``(K, b, post_bn)`` with
        ``post_bn = {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"}``.
        Names: ``rbr_dense.conv.weight``, ``rbr_dense.bn.*``, ``rbr_1x1.weight``, ``bn.*``."""
        ...

    def fuse_repvgg_block_backward(self, dkernel: np.ndarray, dbias: np.ndarray, params, buffers, *,
                                   in_channels: int, out_channels: int, stride: int, groups: int, eps: float,
                                   oabn_threshold: float, oabn_gradient: str) -> Mapping[str, np.ndarray]:
        """SPEC §2.fusion-backward: the gradients of :meth:`fuse_repvgg_block`'s ``(K, b)`` w.r.t. every
        trainable parameter of the block, running statistics held constant.

        ``dkernel (O, I/g, 3, 3) = ∂L/∂K``, ``dbias (O,) = ∂L/∂b``; ``params``/``buffers`` as for
        :meth:`fuse_repvgg_block` (``num_batches_tracked`` included). Returns ``{name: ∂L/∂θ}`` for exactly
        the keys of ``params`` (``rbr_dense.conv.weight``, ``rbr_dense.bn.{weight,bias}``,
        ``rbr_1x1.conv.weight``, ``rbr_1x1.bn.{weight,bias}``, ``rbr_identity.{weight,bias}`` with identity).
        ``oabn_gradient`` ∈ {"clip", "straight_through"}: the identity factor's gradient through
        ``t̃0 = clip(t0, −s, s)`` is ``·[|t0| ≤ s]`` (passes at ``|t0| == s``) or ``·1``.
        """
        ...

    def fuse_qarepvgg_block_backward(self, dkernel: np.ndarray, dbias: np.ndarray, params, buffers, *,
                                     in_channels: int, out_channels: int, stride: int, groups: int, eps: float,
                                     fold_post_bn: bool) -> Mapping[str, np.ndarray]:
        """SPEC §2.fusion-backward for :meth:`fuse_qarepvgg_block`: ``{name: ∂L/∂θ}`` for ``(dkernel, dbias)``
        the gradients of its ``(K, b)``. With ``fold_post_bn`` every key of ``params``; without, the post BN
        is not part of the fused ``(K, b)`` and only the ``rbr_*`` keys are returned."""
        ...

    def merged_weight_categories(self, kernel: np.ndarray, *, groups: int) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
        """SPEC §2.categories: boolean masks ``(A, B, C)`` shaped like ``kernel (O, I/g, 3, 3)``: A the center
        taps with ``i == o mod (I/g)``, B the other center taps, C the 8 border taps (any 0/1 array works)."""
        ...

    def category_statistics(self, kernel: np.ndarray, *, groups: int):
        """SPEC §2.categories: ``(A, B, C, ratio_A_C)``, each category ``(count, max_abs, mean_abs, std,
        excess_kurtosis)`` (the order of ``repspec.reference.analysis.CategoryStatistics``/``CategoryStats``,
        whose NamedTuples are accepted): population std (``ddof = 0``), ``κ = m4/m2² − 3`` with
        population moments and ``nan`` for constant values, ``nan`` statistics and count 0 for an empty
        category, ``ratio_A_C = max|A|/max|C|`` (``inf`` when ``max|C| = 0 < max|A|``, ``nan`` when both are 0)."""
        ...

    def identity_ratio(self, params, buffers, *, in_channels: int, out_channels: int, stride: int, groups: int,
                       eps: float, threshold: float) -> np.ndarray:
        """SPEC §2.categories: ``t0 = γ0/sqrt(σ0² + eps)`` ``(O,)`` of a RepVGG block's identity BN, clipped
        to ``[−s, s]`` with a finite ``threshold`` (OABN). ``params``/``buffers`` as for
        :meth:`fuse_repvgg_block`. A block without an identity branch (``in != out`` or ``stride != 1``)
        must raise ``ValueError``."""
        ...

    def grad_mult_mask(self, scale_conv: np.ndarray, scale_1x1: np.ndarray, in_channels: int, *, identity: str,
                       exponent: int) -> np.ndarray:
        """SPEC §3 Grad Mult ``M (O, I, 3, 3)``; scales ``(O,)`` indexed by the **output** channel, in the
        order ``(scale_conv, scale_1x1)`` — the reverse of the original code's per-block tuple
        ``(identity, 1x1, conv)``;
        ``identity`` ∈ {"trainable", "constant", "none"} (only "trainable" adds the ``+1``);
        ``exponent`` 2 (SGD) or 1 (AdamW)."""
        ...

    def repopt_sgd_step(self, param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None, *,
                        grad_mult_mask: np.ndarray | None, lr: float, momentum: float, dampening: float,
                        nesterov: bool, weight_decay: float) -> tuple[np.ndarray, np.ndarray | None]:
        """SPEC §3: one (RepOpt-)SGD step on a parameter of ANY shape (3x3 and 1x1 kernels, (O,) vectors,
        (K, C) matrices, scalars); ``grad_mult_mask=None`` is plain SGD.
        ``momentum_buffer`` None means "first step". Returns ``(new_param, new_buffer)``;
        ``new_buffer`` is None iff ``momentum == 0``."""
        ...

    # ---- §3: the CSLA block, W', W'_0, the decay map, AdamW, HyperSearch and scale files

    def csla_block(self, params: Mapping[str, np.ndarray], buffers: Mapping[str, np.ndarray], x: np.ndarray,
                   dy: np.ndarray, *, in_channels: int, out_channels: int, stride: int, identity: str,
                   training: bool, bn_momentum: float, bn_eps: float) -> BlockResult:
        """SPEC §3.csla: ``y = relu(BN(α3·conv3x3(x; K3) + α1·conv1x1(x; K1) + d·x))`` and its backward.

        ``params``: ``conv.weight (O, I, 3, 3)``, ``conv_1x1.weight (O, I, 1, 1)``, the constants
        ``scale_conv.weight``, ``scale_1x1.weight (O,)``, ``scale_identity.weight (O,)`` iff
        ``identity != "none"`` (``"trainable"``: d is trained; ``"constant"``: d is fixed), ``bn.weight``,
        ``bn.bias``; ``buffers``: ``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked``.
        conv3x3 padding 1, conv1x1 padding 0, both with ``stride``. ``training``: BN on batch statistics
        (and the running statistics updated) or on the running ones. Returns ``BlockResult(y, buffers, dx,
        grads)`` with ``grads`` for exactly the trainable names (``conv.weight``, ``conv_1x1.weight``,
        ``scale_identity.weight`` iff trainable, ``bn.weight``, ``bn.bias``)."""
        ...

    def csla_equivalent_kernel(self, conv_weight: np.ndarray, conv_1x1_weight: np.ndarray, scale_conv: np.ndarray,
                               scale_1x1: np.ndarray, scale_identity: np.ndarray | None = None) -> np.ndarray:
        """SPEC §3.equivalent-kernel: ``W' = α3·K3 + α1·pad(K1) + diag(d)·I_c`` ``(O, I, 3, 3)``; ``K3 (O, I, 3, 3)``,
        ``K1 (O, I, 1, 1)``, scales ``(O,)`` by output channel; ``scale_identity`` None: no identity term
        (given: ``I == O``)."""
        ...

    def reinit_target_kernel(self, scale_conv: np.ndarray, scale_1x1: np.ndarray, scale_identity: np.ndarray | None,
                             *, in_channels: int, conv_weight: np.ndarray | None, conv_1x1_weight: np.ndarray | None,
                             use_identity_scales: bool, seed: int) -> np.ndarray:
        """SPEC §3.reinit: ``W'_0 = α3·K3_0 + α1·pad(K1_0) + diag(d_0)·I_c`` ``(O, in_channels, 3, 3)``.

        ``scale_identity`` None: the block has no identity branch (no identity term); else ``d_0`` is it,
        or 1 with ``use_identity_scales=False``. The imaginary kernels ``K3_0 (O, I, 3, 3)``,
        ``K1_0 (O, I, 1, 1)`` are handed in (``conv_weight``, ``conv_1x1_weight``), or both are None: then
        the port draws them with its own generator seeded with ``seed`` (conv default init
        ``U(±1/sqrt(fan_in))``, K3 before K1) — the same ``seed`` must give the same ``W'_0``."""
        ...

    def weight_decay_map(self, network: NetworkSpec, params: Mapping[str, np.ndarray], *,
                         weight_decay: float) -> Mapping[str, float]:
        """SPEC §3.weight-decay: ``{name: λ or 0}`` for every trainable parameter of ``network``
        (``network.trainable_names(params)``) under the official ``set_weight_decay`` rule."""
        ...

    def adamw_step(self, param: np.ndarray, grad: np.ndarray, state: Mapping[str, Any] | None, *, lr: float,
                   betas: tuple[float, float], eps: float, weight_decay: float, grad_mult_mask: np.ndarray | None,
                   mask_placement: str) -> tuple[np.ndarray, Mapping[str, Any]]:
        """SPEC §3.adamw: one (masked) AdamW step, amsgrad off, on a parameter of any shape.

        ``state`` None before the first step, else ``{"step": t (a whole number ≥ 1), "exp_avg", "exp_avg_sq"}``
        (torch's keys); ``grad_mult_mask`` an exponent-1 Grad Mult mask shaped like ``param`` or None;
        ``mask_placement`` ``"grad_and_update"`` (the official RepOptimizerAdamW) or ``"grad"``. Returns
        ``(new_param, new_state)`` with ``new_state["step"] = t + 1``."""
        ...

    def hypersearch_block(self, params: Mapping[str, np.ndarray], buffers: Mapping[str, np.ndarray], x: np.ndarray,
                          dy: np.ndarray, *, in_channels: int, out_channels: int, stride: int, training: bool,
                          bn_momentum: float, bn_eps: float) -> BlockResult:
        """SPEC §3.hypersearch: the HyperSearch block, the CSLA forward with trainable ``α3, α1`` and ``d``
        (iff ``in == out and stride == 1``), and its backward; names as :meth:`csla_block`, and ``grads``
        include ``scale_conv.weight``, ``scale_1x1.weight`` (and ``scale_identity.weight``)."""
        ...

    def hypersearch_scales(self, num_blocks: tuple[int, ...], widths: tuple[int, ...], strides: tuple[int, ...], *,
                           in_channels: int, num_classes: int,
                           params: Mapping[str, np.ndarray] | None = None) -> Mapping[str, np.ndarray]:
        """SPEC §3.hypersearch: the scale dict ``{stage{k}[.{i}].scale_{conv|1x1|identity}.weight: (C,)}`` of the
        HyperSearch network of a VGG skeleton (§3.architectures: stage ``k`` has ``num_blocks[k]`` blocks of
        width ``widths[k]``, the first with stride ``strides[k]``; ``num_blocks[0] == 1``).

        ``params`` None: of the freshly built network (the init schedule); else ``params`` (every parameter of
        that network, head ``linear.*`` included) are loaded first: the scales of the trained network."""
        ...

    def scales_to_official(self, scales: Mapping[str, np.ndarray],
                           layout: tuple[tuple[str, int, bool], ...]) -> list[tuple[np.ndarray, ...]]:
        """SPEC §3.scale-files: the scale dict → the original per-block list, in ``layout`` order;
        ``layout = ((prefix, out_channels, has_identity), …)``; tuples ``(d, α1, α3)`` with an identity
        branch, ``(α1, α3)`` without."""
        ...

    def scales_from_official(self, tuples: list[tuple[np.ndarray, ...]],
                             layout: tuple[tuple[str, int, bool], ...]) -> Mapping[str, np.ndarray]:
        """SPEC §3.scale-files: the inverse of :meth:`scales_to_official` (plain lists/tuples of float64
        arrays in, the scale dict out)."""
    def oabn_factor(self, gamma: np.ndarray, var: np.ndarray, *, eps: float, threshold: float) -> np.ndarray:
        """SPEC §4.oabn-factor: ``t̃ = clip(γ/sqrt(σ² + eps), −s, s)`` per channel, ``(C,)`` from ``gamma (C,)``,
        ``var (C,)``; ``threshold = inf`` is the plain BN factor. A ``threshold`` that is NaN, 0 or negative
        must raise ``ValueError`` (SPEC §0.inputs)."""
        ...

    def oabn_train(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                   running_var: np.ndarray, dy: np.ndarray, *, threshold: float, momentum: float, eps: float,
                   gradient: str) -> OABNResult:
        """SPEC §4: training-mode OABN forward (``y``, updated running stats) and backward for the
        upstream gradient ``dy`` (``dx, dγ, dβ``); ``gradient`` ∈ {"clip", "straight_through"}."""
        ...

    def oabn_eval(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                  running_var: np.ndarray, dy: np.ndarray, *, threshold: float, eps: float,
                  gradient: str) -> OABNEvalResult:
        """SPEC §4.oabn-eval: eval-mode OABN ``y = t̃·x + (β − μ·t̃)`` with the running statistics (left
        unchanged) and its backward for ``dy``: ``dx = t̃·dy``, ``dβ = Σ dy``, ``dγ = Σ dy·(x − μ)·[|t| ≤ s]
        / sqrt(σ² + eps)`` (``"clip"``; the indicator is 1 for ``"straight_through"``). Shapes as
        :meth:`oabn_train`."""
        ...

    def fake_quantize_weight(self, w: np.ndarray, *, bits: int, per_channel: bool) -> np.ndarray:
        """SPEC §5: symmetric narrow-range fake quantization, scale ``max|w|/(2^(b−1)−1)`` per layer
        or per output channel (axis 0); round half to even; scale 0 → 0."""
        ...

    def fake_quantize_weight_backward(self, dy: np.ndarray, w: np.ndarray, *, bits: int,
                                      per_channel: bool) -> np.ndarray:
        """SPEC §5 STE for :meth:`fake_quantize_weight` (scale from ``w`` itself) → ``∂L/∂w``."""
        ...

    def fake_quantize_activation(self, x: np.ndarray, *, lo: float, hi: float, bits: int) -> np.ndarray:
        """SPEC §5: asymmetric per-layer fake quantization of ``x`` for the calibrated range
        ``[lo, hi]`` (the port derives ``scale`` and the rounded zero point itself)."""
        ...

    def fake_quantize_activation_backward(self, dy: np.ndarray, x: np.ndarray, *, lo: float, hi: float,
                                          bits: int) -> np.ndarray:
        """SPEC §5 STE: ``dy·[lo_repr ≤ x ≤ hi_repr]`` with the representable range of the quantizer."""
        ...

    def calibrate(self, method: str, batches: Sequence[np.ndarray], *, bits: int, **options) -> tuple[float, float]:
        """SPEC §5.calibrators: the range ``(lo, hi)`` that calibrator ``method`` chooses over ``batches``.

        ``method`` ∈ {"minmax", "moving_average_minmax", "percentile", "mse", "entropy"}. ``batches`` is
        a list of 1–4 float64 arrays of any shapes and sizes (1 element and up), in the order a deployed
        calibrator sees them: feed them to your observer one at a time and read the range at the end
        (an observer that needs two passes, as the entropy one does for ``max|x|``, iterates the list
        again). ``bits`` (1..16) is used by ``mse`` and ``entropy``. ``options`` holds only what the
        case sets — ``momentum`` (moving average), ``percentile``, ``candidates`` (mse: an int ``N`` or a
        1-D array of ratios in ``(0, 1]``), ``num_bins`` and ``zero_bin`` (entropy) — and an absent one
        takes the SPEC default (0.01, 99.99, 100, 2048, "replace")."""
        ...

    def weight_qparams(self, w: np.ndarray, *, bits: int, per_channel: bool):
        """SPEC §5 weight scale ``max|w|/(2^(b−1)−1)``: a float (per tensor) or ``(O,)`` (per output channel,
        axis 0); a scale below ``2^−126`` (float32's smallest normal) is 0 (§5.scale-underflow)."""
        ...

    def quantize_weight(self, w: np.ndarray, *, bits: int, per_channel: bool) -> np.ndarray:
        """SPEC §5 integer weight codes ``clamp(rint(w/scale), −qmax, qmax)`` shaped like ``w``, with the scale
        of :meth:`weight_qparams`; where the scale is 0 every code is 0 (§5.zero-range)."""
        ...

    def activation_qparams(self, lo: float, hi: float, *, bits: int) -> tuple[float, int]:
        """SPEC §5 ``(scale, zero_point)`` for the calibrated range ``[lo, hi]`` (zero point an integer);
        a zero range — ``lo = hi = 0`` or a scale below ``2^−126`` — is ``(0.0, 0)``."""
        ...

    def quantize_activation(self, x: np.ndarray, *, lo: float, hi: float, bits: int) -> np.ndarray:
        """SPEC §5 integer activation codes ``clamp(rint(x/scale) + zp, 0, 2^b − 1)`` shaped like ``x``, with
        the ``(scale, zp)`` of :meth:`activation_qparams`; a zero range maps every input to ``zp``."""
        ...

    def quantized_network(self, network: NetworkSpec, params: Mapping[str, np.ndarray],
                          buffers: Mapping[str, np.ndarray], x: np.ndarray, *, weight_bits: int, per_channel: bool,
                          act_bits: int, act_ranges: Mapping[str, tuple[float, float]]) -> QuantizedNetworkResult:
        """SPEC §5.quantized-layers: the network quantized as deployed (QAT on merged weights, eval mode).

        ``network`` (blocks of kind ``repvgg`` — OABN identity and groups included —, ``qarepvgg`` or
        ``repopt_target``), ``params``, ``buffers`` as for :meth:`train_iteration`. The port decides which
        layers it quantizes: ``weight_bits``/``per_channel`` for the uniform weight quantizer and
        ``act_bits`` for the activation quantizer apply to every layer the SPEC quantizes, and
        ``act_ranges`` gives a calibrated ``(lo, hi)`` for the input of **every** block (use it only where
        the block's input is quantized). Returns the :class:`QuantizedLayer` of every block prefix and of
        the head, and the eval-mode ``logits (N, K)`` of the quantized network on ``x (N, C, H, W)``."""
        ...

    def state_size(self, kernels: Sequence[np.ndarray]) -> int:
        """SPEC §5.state-size: distinct values of each array (one per quantized layer), summed; ``−0.0 == 0.0``;
        a NaN, an Inf or an empty array must raise ``ValueError``."""
        ...

    def kmeans_fake_quantize(self, w: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """SPEC §5: each value → its nearest centroid (``centroids`` sorted ascending; a value on a
        midpoint goes to the **lower** centroid)."""
        ...

    def kmeans_1d(self, values: np.ndarray, k: int, *, init: str, max_iter: int,
                  init_centroids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """SPEC §5: 1-D k-means → ``(centroids (k,) ascending, labels int, shaped like values)``.
        ``init`` ∈ {"optimal", "linear", "quantile", "binned", "warm"} (``warm`` uses ``init_centroids``;
        ``binned`` is SPEC §5.kmeans-binned with its default bin count ``max(128, 2k)``)."""
        ...

    def train_iteration(self, network: NetworkSpec, params: Mapping[str, np.ndarray],
                        buffers: Mapping[str, np.ndarray], x: np.ndarray, labels: np.ndarray, *,
                        optimizer: SGDSpec,
                        opt_state: Mapping[str, Mapping[str, np.ndarray]]) -> TrainIterationResult:
        """SPEC §1/§3: one training iteration (train-mode forward, mean CE, backward, one optimizer step)."""
        ...

    def network_forward_train(self, network: NetworkSpec, params: Mapping[str, np.ndarray],
                              buffers: Mapping[str, np.ndarray], x: np.ndarray) -> NetworkForwardResult:
        """SPEC §1.network, train form: the training-mode forward of ``network`` (every BN on batch
        statistics) → ``(logits (N, K), buffers)`` with every BN running statistic after its update
        (returned ``num_batches_tracked`` counters are ignored). Names and blocks as :meth:`train_iteration`."""
        ...

    def network_forward_deployed(self, network: NetworkSpec, params: Mapping[str, np.ndarray],
                                 buffers: Mapping[str, np.ndarray], x: np.ndarray) -> DeployedNetworkResult:
        """SPEC §1.network, deploy form: fuse every block of ``network`` with its running statistics into
        one ``relu(conv2d(x, K, b, stride, padding=1, groups))`` (RepVGG §2.fusion with the OABN-clipped
        identity, QARepVGG with its post BN folded, CSLA ``W'`` and the RepOpt target conv with their BN
        folded), then run the deployed network on ``x`` → ``(logits (N, K), deployed params or None)``
        (keys in :class:`DeployedNetworkResult`)."""
        ...

    def qat_train_iteration(self, network: NetworkSpec, params: Mapping[str, np.ndarray],
                            buffers: Mapping[str, np.ndarray], qat_buffers: Mapping[str, np.ndarray],
                            x: np.ndarray, labels: np.ndarray, *, quantizer: QATSpec, optimizer: SGDSpec,
                            opt_state: Mapping[str, Mapping[str, np.ndarray]]) -> TrainIterationResult:
        """SPEC §5.qat / §5.cluster-qat: one QAT training iteration of ``network`` wrapped as ``quantizer``
        says. Every forward fuses each block with its frozen running statistics, fake-quantizes the fused
        kernel and the block input, runs ``relu(conv(x̂, K̂) + b)``; the backward is the STE through the
        fusion; then one SGD step. ``qat_buffers`` is the quantizers' state before the iteration, by block
        prefix: ``{prefix}.act_quant.lo / .hi / .initialized`` (0: the first training batch sets the
        range) and, for ``'kmeans'``, ``{prefix}.weight_quant.centroids (2^bits,)`` and
        ``{prefix}.weight_quant.step``. Returns a :class:`TrainIterationResult` whose ``buffers`` hold the
        BN buffers (unchanged: frozen) and the quantizers' state after the iteration."""
        ...


def without_num_batches_tracked(buffers: Mapping[str, np.ndarray]) -> dict:
    """``buffers`` without the ``*.num_batches_tracked`` counters the suite adds (as in a PyTorch
    ``state_dict``, so that ``load_state_dict(strict=True)`` works); for ports that do not model them."""
    return {k: v for k, v in buffers.items() if not k.endswith("num_batches_tracked")}


class AdapterBase:
    """Convenience base class: every protocol method raises :class:`NotProvided` until overridden."""

    name = "unnamed adapter"

    def _missing(self, *args, **kwargs):
        raise NotProvided(f"{type(self).__name__} does not provide this method")


for _m in ADAPTER_METHODS:
    setattr(AdapterBase, _m, AdapterBase._missing)
del _m


# ------------------------------------------------------------- the reference adapter


class ReferenceAdapter(AdapterBase):
    """The oracle as an adapter: every method is the reference function (so every clause passes).

    Also the template for a port's adapter, and the base class of the deliberately broken
    adapters in ``tests/broken_adapters.py``.
    """

    name = "reference"

    def fuse_repvgg_block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps, oabn_threshold):
        return fuse_repvgg_block(params, without_num_batches_tracked(buffers), in_channels=in_channels, out_channels=out_channels, stride=stride,
                                 groups=groups, eps=eps, oabn_threshold=oabn_threshold)

    def fuse_qarepvgg_block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps, fold_post_bn):
        return fuse_qarepvgg_block(params, without_num_batches_tracked(buffers), in_channels=in_channels, out_channels=out_channels,
                                   stride=stride, groups=groups, eps=eps, fold_post_bn=fold_post_bn)

    def fuse_repvgg_block_backward(self, dkernel, dbias, params, buffers, *, in_channels, out_channels, stride,
                                   groups, eps, oabn_threshold, oabn_gradient):
        return fuse_repvgg_block_backward(dkernel, dbias, params, without_num_batches_tracked(buffers),
                                          in_channels=in_channels, out_channels=out_channels, stride=stride,
                                          groups=groups, eps=eps, oabn_threshold=oabn_threshold,
                                          oabn_gradient=oabn_gradient)

    def fuse_qarepvgg_block_backward(self, dkernel, dbias, params, buffers, *, in_channels, out_channels, stride,
                                     groups, eps, fold_post_bn):
        return fuse_qarepvgg_block_backward(dkernel, dbias, params, without_num_batches_tracked(buffers),
                                            in_channels=in_channels, out_channels=out_channels, stride=stride,
                                            groups=groups, eps=eps, fold_post_bn=fold_post_bn)

    def merged_weight_categories(self, kernel, *, groups):
        return tuple(merged_weight_categories(kernel, groups))

    def category_statistics(self, kernel, *, groups):
        return category_statistics(kernel, groups)

    def identity_ratio(self, params, buffers, *, in_channels, out_channels, stride, groups, eps, threshold):
        # the reference reads the identity from the names: a block without one has no rbr_identity.* and raises
        return identity_ratio(params, without_num_batches_tracked(buffers), eps=eps, threshold=threshold)

    def grad_mult_mask(self, scale_conv, scale_1x1, in_channels, *, identity, exponent):
        return grad_mult_mask(scale_conv, scale_1x1, in_channels, identity=identity, exponent=exponent)

    def repopt_sgd_step(self, param, grad, momentum_buffer, *, grad_mult_mask, lr, momentum, dampening, nesterov,
                        weight_decay):
        return sgd_step(param, grad, momentum_buffer, lr=lr, momentum=momentum, dampening=dampening,
                        nesterov=nesterov, weight_decay=weight_decay, grad_mult_mask=grad_mult_mask)

    # ---- §3: the CSLA block, W', W'_0, the decay map, AdamW, HyperSearch and scale files

    @staticmethod
    def _linear_add_block(block, params, buffers, x, dy, training):
        buffers = without_num_batches_tracked(buffers)
        y, new_buffers, cache = block.forward(params, buffers, x, training=training)
        dx, grads = block.backward(params, cache, dy)
        return BlockResult(y, {**buffers, **new_buffers}, dx, grads)

    def csla_block(self, params, buffers, x, dy, *, in_channels, out_channels, stride, identity, training,
                   bn_momentum, bn_eps):
        block = CSLABlock(in_channels, out_channels, stride, scale_conv=params["scale_conv.weight"],
                          scale_1x1=params["scale_1x1.weight"], identity=identity,
                          scale_identity=params.get("scale_identity.weight"), bn_momentum=bn_momentum, bn_eps=bn_eps)
        return self._linear_add_block(block, params, buffers, x, dy, training)

    def csla_equivalent_kernel(self, conv_weight, conv_1x1_weight, scale_conv, scale_1x1, scale_identity=None):
        return csla_equivalent_kernel(conv_weight, conv_1x1_weight, scale_conv, scale_1x1, scale_identity)

    def reinit_target_kernel(self, scale_conv, scale_1x1, scale_identity, *, in_channels, conv_weight,
                             conv_1x1_weight, use_identity_scales, seed):
        return reinit_target_kernel(scale_conv, scale_1x1, scale_identity, in_channels=in_channels,
                                    conv_weight=conv_weight, conv_1x1_weight=conv_1x1_weight,
                                    rng=np.random.default_rng(seed), use_identity_scales=use_identity_scales)

    def weight_decay_map(self, network, params, *, weight_decay):
        return official_weight_decay({k: params[k] for k in network.trainable_names(params)}, weight_decay)

    def adamw_step(self, param, grad, state, *, lr, betas, eps, weight_decay, grad_mult_mask, mask_placement):
        return adamw_step(param, grad, state, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                          grad_mult_mask=grad_mult_mask, mask_placement=mask_placement)

    def hypersearch_block(self, params, buffers, x, dy, *, in_channels, out_channels, stride, training, bn_momentum,
                          bn_eps):
        block = HyperSearchBlock(in_channels, out_channels, stride, bn_momentum=bn_momentum, bn_eps=bn_eps)
        return self._linear_add_block(block, params, buffers, x, dy, training)

    def hypersearch_scales(self, num_blocks, widths, strides, *, in_channels, num_classes, params=None):
        net = hypersearch_network(num_blocks, widths, strides, in_channels=in_channels, num_classes=num_classes)
        if params is None:  # the scales of a fresh network do not depend on the kernels' random draw
            params, _ = net.init(np.random.default_rng(0))
        return extract_scales(net, params)

    def scales_to_official(self, scales, layout):
        return scales_to_official(scales, layout)

    def scales_from_official(self, tuples, layout):
        return scales_from_official(tuples, layout)
    def oabn_factor(self, gamma, var, *, eps, threshold):
        return oabn_factor(gamma, var, eps, threshold)

    def oabn_train(self, x, gamma, beta, running_mean, running_var, dy, *, threshold, momentum, eps, gradient):
        res = oabn_train(x, gamma, beta, running_mean, running_var, threshold=threshold, momentum=momentum, eps=eps)
        dx, dgamma, dbeta = oabn_train_backward(dy, x, gamma, threshold=threshold, eps=eps, gradient=gradient)
        return OABNResult(res.y, res.running_mean, res.running_var, dx, dgamma, dbeta)

    def oabn_eval(self, x, gamma, beta, running_mean, running_var, dy, *, threshold, eps, gradient):
        y = oabn_eval(x, gamma, beta, running_mean, running_var, threshold=threshold, eps=eps)
        dx, dgamma, dbeta = oabn_eval_backward(dy, x, gamma, running_mean, running_var, threshold=threshold,
                                               eps=eps, gradient=gradient)
        return OABNEvalResult(y, dx, dgamma, dbeta)

    def fake_quantize_weight(self, w, *, bits, per_channel):
        return fake_quantize_weight(w, bits, per_channel)

    def fake_quantize_weight_backward(self, dy, w, *, bits, per_channel):
        # the scale comes from max|w| of this very tensor, so every element is inside the range
        return UniformWeightQuantizer(bits, per_channel).backward(dy, w, {})

    def fake_quantize_activation(self, x, *, lo, hi, bits):
        scale, zp = activation_qparams(lo, hi, bits)
        return fake_quantize_activation(x, scale, zp, bits)

    def fake_quantize_activation_backward(self, dy, x, *, lo, hi, bits):
        scale, zp = activation_qparams(lo, hi, bits)
        lo_r, hi_r = activation_range(scale, zp, bits)
        return fake_quantize_backward(dy, x, lo_r, hi_r)

    def calibrate(self, method, batches, *, bits, **options):
        return calibrate(method, list(batches), bits, **options)

    def weight_qparams(self, w, *, bits, per_channel):
        return weight_qparams(w, bits, per_channel)

    def quantize_weight(self, w, *, bits, per_channel):
        return quantize_weight(w, weight_qparams(w, bits, per_channel), bits)

    def activation_qparams(self, lo, hi, *, bits):
        return activation_qparams(lo, hi, bits)

    def quantize_activation(self, x, *, lo, hi, bits):
        scale, zp = activation_qparams(lo, hi, bits)
        return quantize_activation(x, scale, zp, bits)

    def quantized_network(self, network, params, buffers, x, *, weight_bits, per_channel, act_bits, act_ranges):
        qnet, qbuffers = make_qat_network(network.reference_network(params), params,
                                          without_num_batches_tracked(buffers),
                                          weight_quantizer=UniformWeightQuantizer(weight_bits, per_channel),
                                          act_bits=act_bits, act_ranges=act_ranges)
        layers = {}
        for prefix, block in qnet.blocks:
            scope = len(prefix) + 1
            kernel, bias = block.quantized_kernel_bias(
                {k[scope:]: v for k, v in params.items() if k.startswith(prefix + ".")},
                {k[scope:]: v for k, v in qbuffers.items() if k.startswith(prefix + ".")})
            wq, aq = block.weight_quantizer, block.act_quantizer
            layers[prefix] = QuantizedLayer(kernel, bias, None if wq is None else wq.bits,
                                            False if wq is None else wq.per_channel, None if aq is None else aq.bits)
        head = network.head_name
        layers[head] = QuantizedLayer(params[f"{head}.weight"], params[f"{head}.bias"], None, False, None)
        logits, _, _ = qnet.forward(params, qbuffers, x, training=False)
        return QuantizedNetworkResult(layers, logits)

    def state_size(self, kernels):
        return state_size(list(kernels))

    def kmeans_fake_quantize(self, w, centroids):
        return kmeans_fake_quantize(w, centroids)

    def kmeans_1d(self, values, k, *, init, max_iter, init_centroids=None):
        res = kmeans_1d(values, k, init=init, max_iter=max_iter, init_centroids=init_centroids)
        return res.centroids, res.labels

    def train_iteration(self, network, params, buffers, x, labels, *, optimizer, opt_state):
        net = network.reference_network(params)
        wd = optimizer.weight_decay
        opt = SGD(lr=optimizer.lr, momentum=optimizer.momentum, dampening=optimizer.dampening,
                  nesterov=optimizer.nesterov, weight_decay=dict(wd) if isinstance(wd, Mapping) else wd,
                  grad_mult_masks=optimizer.grad_mult_masks)
        state = {k: dict(v) for k, v in opt_state.items()}
        loss, logits, grads, new_params, new_buffers, new_state = train_step(
            net, params, without_num_batches_tracked(buffers), opt, state, x, labels)
        return TrainIterationResult(loss, logits, grads, new_params, new_buffers, new_state)

    def qat_train_iteration(self, network, params, buffers, qat_buffers, x, labels, *, quantizer, optimizer,
                            opt_state):
        qnet, buffers_all = reference_qat_network(network, params, buffers, qat_buffers, quantizer)
        wd = optimizer.weight_decay
        opt = SGD(lr=optimizer.lr, momentum=optimizer.momentum, dampening=optimizer.dampening,
                  nesterov=optimizer.nesterov, weight_decay=dict(wd) if isinstance(wd, Mapping) else wd,
                  grad_mult_masks=optimizer.grad_mult_masks)
        state = {k: dict(v) for k, v in opt_state.items()}
        loss, logits, grads, new_params, new_buffers, new_state = train_step(qnet, params, buffers_all, opt, state,
                                                                             x, labels)
        return TrainIterationResult(loss, logits, grads, new_params, new_buffers, new_state)

    def network_forward_train(self, network, params, buffers, x):
        buffers = without_num_batches_tracked(buffers)
        logits, new_buffers, _ = network.reference_network(params).forward(params, buffers, x, training=True)
        return NetworkForwardResult(logits, {**buffers, **new_buffers})

    def network_forward_deployed(self, network, params, buffers, x):
        deployed_net, deployed = deploy_network(network.reference_network(params), params,
                                                without_num_batches_tracked(buffers))
        logits, _, _ = deployed_net.forward(deployed, {}, x, training=False)
        return DeployedNetworkResult(logits, deployed)


def reference_qat_network(network: NetworkSpec, params, buffers, qat_buffers, quantizer: QATSpec):
    """The reference's QAT network for ``quantizer`` and its buffers (BN buffers, then ``qat_buffers``
    over the wrap-time state): what :meth:`ReferenceAdapter.qat_train_iteration` trains."""
    if quantizer.kind == "uniform":
        wq = UniformWeightQuantizer(quantizer.bits, quantizer.per_channel)
    elif quantizer.kind == "kmeans":
        wq = KMeansWeightQuantizer(quantizer.bits, update_every=quantizer.update_every)
    else:
        raise ValueError(f"quantizer.kind must be 'uniform' or 'kmeans', got {quantizer.kind!r}")
    plain = without_num_batches_tracked(buffers)
    qnet, wrapped = make_qat_network(network.reference_network(params), params, plain, weight_quantizer=wq,
                                     act_bits=quantizer.act_bits, act_momentum=quantizer.act_momentum,
                                     keep_first_fp32=quantizer.keep_first_fp32)
    unknown = set(qat_buffers) - set(wrapped)
    if unknown:
        raise ValueError(f"qat_buffers has names the QAT network does not have: {sorted(unknown)}")
    return qnet, {**wrapped, **{k: np.asarray(v) for k, v in qat_buffers.items()}}


def describe(adapter: Any) -> str:
    """``name`` of an adapter, or its class name."""
    return str(getattr(adapter, "name", None) or type(adapter).__name__)
