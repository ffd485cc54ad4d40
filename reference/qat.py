"""SPEC §5: QAT on merged weights, and ClusterQAT.

A QAT block wraps a training-form block (RepVGG, RepVGG+OABN, QARepVGG or the
RepOpt target block) and, in every forward pass,

1. fuses the branches into one kernel and bias with **frozen** BN statistics
   (eval-mode fusion, SPEC §2/§4) — differentiably, so gradients reach the branches;
2. fake-quantizes the fused kernel (uniform or k-means) and the block's input
   activation (asymmetric, per layer);
3. runs the deployed form ``relu(conv3x3(x̂, K̂) + b)``.

Backward is full precision (straight-through estimators, SPEC §5):
``dK = dK̂·[K inside the representable range]``, ``dx = dx̂·[x inside the range]``,
then the fusion's own backward carries ``dK, db`` into the branch parameters.

*[repspec]* choices, each an option here:

- BN statistics are frozen during QAT (the fusion reads the running statistics; the
  BN affine parameters γ, β are still trained).
- The uniform weight scale is recomputed from the current fused kernel at every
  forward (``max|K|``), so every fused weight is inside the range and the weight STE
  passes all gradients (no floating-point boundary test: see
  :meth:`UniformWeightQuantizer.backward`).
- Activation ranges are observed with a moving-average min/max (``act_momentum``,
  first training batch initializes, as :func:`repspec.reference.calibrate.moving_average_minmax`)
  during training and frozen in eval; they may be seeded from PTQ calibration.
- **ClusterQAT** refit schedule: the k-means centroids are fitted on the fused kernel
  when the block is created (``init``), then re-fitted by Lloyd warm-started from the
  previous centroids at every training forward whose step counter ``t`` satisfies
  ``t % update_every == 0``, and held fixed in between.
- The network's first block and the linear head stay FP32 (SPEC §5, the seed's Fig. 6):
  :func:`make_qat_network` wraps the first block with no quantizers (still fused with
  frozen BN, so its statistics are frozen too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import numpy as np

from ._checks import as_float_array, check_bits, check_bool, check_choice, check_int, check_probability
from .kmeans import DEFAULT_INIT, INITS, kmeans_1d, kmeans_fake_quantize
from .network import Network
from .ops import bn_factor, conv2d, conv2d_backward, relu, relu_backward
from .repopt import RepOptTargetBlock
from .repvgg import QARepVGGBlock, RepVGGBlock
from .quant import (
    activation_qparams,
    activation_range,
    fake_quantize_activation,
    fake_quantize_backward,
    fake_quantize_weight,
)

__all__ = [
    "UniformWeightQuantizer",
    "KMeansWeightQuantizer",
    "ActivationQuantizer",
    "QATBlock",
    "make_qat_network",
    "fold_conv_bn",
    "fold_conv_bn_backward",
]

Arrays = dict[str, np.ndarray]


# ------------------------------------------------------------------- weight quantizers


@dataclass(frozen=True)
class UniformWeightQuantizer:
    """Symmetric narrow-range fake quantization of the fused kernel (SPEC §5).

    Stateless: ``scale = max|K|/(2^(b−1)−1)`` (per layer, or per output channel) is
    recomputed from the current kernel at every forward.
    """

    bits: int
    per_channel: bool = False

    def __post_init__(self):
        check_bits(self.bits, weights=True)
        object.__setattr__(self, "per_channel", check_bool(self.per_channel, "per_channel"))

    def init_state(self, kernel: np.ndarray) -> Arrays:
        return {}

    def forward(self, kernel, state, *, training: bool) -> tuple[np.ndarray, Arrays]:
        return fake_quantize_weight(kernel, self.bits, self.per_channel), {}

    def backward(self, dk_hat, kernel, state) -> np.ndarray:
        """STE: ``dK = dK̂·[−qmax·s ≤ K ≤ qmax·s]``, which is ``dK = dK̂`` here.

        The scale is derived from ``max|K|`` of this very kernel, so every element is
        inside the range by construction. The boundary test is deliberately *not*
        evaluated in floating point: ``(max|K|/qmax)·qmax`` can round one ulp below
        ``max|K|`` and would wrongly zero the gradient of the largest weight (found by
        ``tests/test_ref_qat.py``).
        """
        return np.asarray(dk_hat, dtype=np.float64).copy()


@dataclass(frozen=True)
class KMeansWeightQuantizer:
    """ClusterQAT's weight quantizer: ``2^bits`` centroids per layer (SPEC §5).

    State: ``centroids (k,)`` sorted ascending and ``step`` (training forwards seen).
    """

    bits: int
    update_every: int = 1
    init: str = DEFAULT_INIT
    max_iter: int = 300
    seed: int | None = None

    def __post_init__(self):
        check_bits(self.bits)
        check_int(self.update_every, "update_every", min_value=1)
        check_int(self.max_iter, "max_iter", min_value=0)
        check_choice(self.init, "init", tuple(i for i in INITS if i != "warm"))

    @property
    def k(self) -> int:
        return 2**self.bits

    def init_state(self, kernel: np.ndarray) -> Arrays:
        fit = kmeans_1d(kernel, self.k, init=self.init, max_iter=self.max_iter, seed=self.seed)
        return {"centroids": fit.centroids, "step": np.array(0)}

    def forward(self, kernel, state, *, training: bool) -> tuple[np.ndarray, Arrays]:
        centroids, step = state["centroids"], int(state["step"])
        if training:
            if step % self.update_every == 0:
                centroids = kmeans_1d(kernel, self.k, init_centroids=centroids, max_iter=self.max_iter).centroids
            step += 1
        return kmeans_fake_quantize(kernel, centroids), {"centroids": centroids, "step": np.array(step)}

    def backward(self, dk_hat, kernel, state) -> np.ndarray:
        """STE: every weight maps to a centroid, so the gradient passes unchanged."""
        return np.asarray(dk_hat, dtype=np.float64).copy()


@dataclass(frozen=True)
class ActivationQuantizer:
    """Asymmetric per-layer fake quantization of a block's input (SPEC §5).

    State: ``lo``, ``hi``, ``initialized`` (0/1). Training forwards update the range
    by moving-average min/max before quantizing (the first batch initializes it).
    """

    bits: int
    momentum: float = 0.01

    def __post_init__(self):
        check_bits(self.bits)
        check_probability(self.momentum, "momentum")

    def init_state(self, lo: float | None = None, hi: float | None = None) -> Arrays:
        if (lo is None) != (hi is None):
            raise ValueError("give both lo and hi (a calibrated range) or neither")
        if lo is None:
            return {"lo": np.array(0.0), "hi": np.array(0.0), "initialized": np.array(0)}
        activation_qparams(lo, hi, self.bits)  # validates lo <= hi, finite
        return {"lo": np.array(float(lo)), "hi": np.array(float(hi)), "initialized": np.array(1)}

    def _observe(self, x, state) -> Arrays:
        bmin, bmax = float(x.min()), float(x.max())
        if int(state["initialized"]) == 0:
            return {"lo": np.array(bmin), "hi": np.array(bmax), "initialized": np.array(1)}
        m = self.momentum
        return {"lo": np.array((1.0 - m) * float(state["lo"]) + m * bmin),
                "hi": np.array((1.0 - m) * float(state["hi"]) + m * bmax), "initialized": np.array(1)}

    def forward(self, x, state, *, training: bool) -> tuple[np.ndarray, Arrays]:
        if training:
            state = self._observe(x, state)
        elif int(state["initialized"]) == 0:
            raise ValueError("activation range is not initialized: run a training forward or calibrate first")
        scale, zp = activation_qparams(float(state["lo"]), float(state["hi"]), self.bits)
        return fake_quantize_activation(x, scale, zp, self.bits), dict(state)

    def backward(self, dx_hat, x, state) -> np.ndarray:
        scale, zp = activation_qparams(float(state["lo"]), float(state["hi"]), self.bits)
        lo, hi = activation_range(scale, zp, self.bits)
        return fake_quantize_backward(dx_hat, x, lo, hi)


# ---------------------------------------------------------------- conv + BN folding


def fold_conv_bn(weight, gamma, beta, running_mean, running_var, *, eps: float = 1e-5):
    """Fold ``BN(conv(x; W))`` (eval BN) into one conv: ``K = t·W``, ``b = β − μ·t`` (SPEC §2).

    Used for the RepOpt target block ``conv → BN → ReLU`` (SPEC §3). Returns ``(K, b)``.
    """
    weight = as_float_array(weight, "weight", ndim=4)
    o = weight.shape[0]
    beta = as_float_array(beta, "beta", shape=(o,))
    running_mean = as_float_array(running_mean, "running_mean", shape=(o,))
    t = bn_factor(as_float_array(gamma, "gamma", shape=(o,)), running_var, eps)
    return t[:, None, None, None] * weight, beta - running_mean * t


def fold_conv_bn_backward(dkernel, dbias, weight, gamma, running_mean, running_var, *, eps: float = 1e-5):
    """Gradients of :func:`fold_conv_bn` with frozen statistics.

    ``∂L/∂W = t·dK``, ``∂L/∂γ = (Σ_{i,p,q} dK·W − μ·db)/sqrt(σ² + eps)``, ``∂L/∂β = db``.
    Returns ``(dW, dgamma, dbeta)``.
    """
    weight = as_float_array(weight, "weight", ndim=4)
    dkernel = as_float_array(dkernel, "dkernel", shape=weight.shape)
    o = weight.shape[0]
    dbias = as_float_array(dbias, "dbias", shape=(o,))
    running_mean = as_float_array(running_mean, "running_mean", shape=(o,))
    running_var = as_float_array(running_var, "running_var", shape=(o,))
    gamma = as_float_array(gamma, "gamma", shape=(o,))
    inv_std = 1.0 / np.sqrt(running_var + eps)
    t = gamma * inv_std
    dgamma = ((dkernel * weight).sum(axis=(1, 2, 3)) - running_mean * dbias) * inv_std
    return t[:, None, None, None] * dkernel, dgamma, dbias.copy()


# -------------------------------------------------------------------------- QAT block


def _fuse(block, params, buffers):
    """Fused ``(K, b)`` of the wrapped block from frozen statistics."""
    if not isinstance(block, RepOptTargetBlock):
        return block.fuse(params, buffers)
    # RepOpt target block: conv -> BN -> ReLU
    return fold_conv_bn(params["conv.weight"], params["bn.weight"], params["bn.bias"],
                        buffers["bn.running_mean"], buffers["bn.running_var"], eps=block.bn_eps)


def _fuse_backward(block, dkernel, dbias, params, buffers) -> Arrays:
    if not isinstance(block, RepOptTargetBlock):
        return block.fuse_backward(dkernel, dbias, params, buffers)
    dw, dg, db = fold_conv_bn_backward(dkernel, dbias, params["conv.weight"], params["bn.weight"],
                                       buffers["bn.running_mean"], buffers["bn.running_var"], eps=block.bn_eps)
    return {"conv.weight": dw, "bn.weight": dg, "bn.bias": db}


SUPPORTED_BLOCKS = (RepVGGBlock, QARepVGGBlock, RepOptTargetBlock)


class _QATCache(NamedTuple):
    x: np.ndarray
    x_hat: np.ndarray
    kernel: np.ndarray
    kernel_hat: np.ndarray
    bias: np.ndarray
    pre: np.ndarray
    inner_buffers: Arrays
    weight_state: Arrays
    act_state: Arrays


@dataclass(frozen=True)
class QATBlock:
    """QAT on merged weights around one training-form block (SPEC §5, seed Fig. 1).

    ``inner``: a RepVGG / QARepVGG (reference.repvgg) or RepOpt target block
    (reference.repopt); ``weight_quantizer``: :class:`UniformWeightQuantizer`,
    :class:`KMeansWeightQuantizer` (ClusterQAT) or ``None`` (FP32); ``act_quantizer``:
    :class:`ActivationQuantizer` or ``None``.

    Parameters are the inner block's (same names). Buffers are the inner block's
    frozen statistics plus ``weight_quant.*`` and ``act_quant.*`` state.
    """

    inner: Any
    weight_quantizer: UniformWeightQuantizer | KMeansWeightQuantizer | None = None
    act_quantizer: ActivationQuantizer | None = None
    in_channels: int = field(init=False)
    out_channels: int = field(init=False)
    stride: int = field(init=False)

    def __post_init__(self):
        if not isinstance(self.inner, SUPPORTED_BLOCKS):
            raise TypeError(
                "inner must be a RepVGGBlock, QARepVGGBlock or RepOptTargetBlock (a block with a fused "
                f"conv form), got {type(self.inner).__name__}"
            )
        if self.weight_quantizer is not None and not isinstance(
            self.weight_quantizer, (UniformWeightQuantizer, KMeansWeightQuantizer)
        ):
            raise TypeError(f"weight_quantizer must be a weight quantizer or None, got "
                            f"{type(self.weight_quantizer).__name__}")
        if self.act_quantizer is not None and not isinstance(self.act_quantizer, ActivationQuantizer):
            raise TypeError(f"act_quantizer must be an ActivationQuantizer or None, got "
                            f"{type(self.act_quantizer).__name__}")
        for name in ("in_channels", "out_channels", "stride"):
            object.__setattr__(self, name, getattr(self.inner, name))

    @property
    def groups(self) -> int:
        return getattr(self.inner, "groups", 1)

    # -- Block protocol
    def init_params(self, rng):
        return self.inner.init_params(rng)

    def trainable_names(self):
        return self.inner.trainable_names()

    def init_buffers(self) -> Arrays:
        raise TypeError("QATBlock buffers start from a trained block: use init_qat_buffers(params, buffers)")

    def init_qat_buffers(self, params, buffers, *, act_range: tuple[float, float] | None = None) -> Arrays:
        """The inner block's buffers plus the quantizers' initial state (k-means fit on the fused kernel)."""
        out = {k: np.array(v, dtype=np.float64, copy=True) for k, v in buffers.items()}
        if self.weight_quantizer is not None:
            kernel, _ = _fuse(self.inner, params, buffers)
            out.update({f"weight_quant.{k}": v for k, v in self.weight_quantizer.init_state(kernel).items()})
        if self.act_quantizer is not None:
            lo_hi = (None, None) if act_range is None else act_range
            out.update({f"act_quant.{k}": v for k, v in self.act_quantizer.init_state(*lo_hi).items()})
        return out

    @staticmethod
    def _split(buffers: Mapping[str, np.ndarray]):
        inner, wq, aq = {}, {}, {}
        for k, v in buffers.items():
            if k.startswith("weight_quant."):
                wq[k[len("weight_quant."):]] = v
            elif k.startswith("act_quant."):
                aq[k[len("act_quant."):]] = v
            else:
                inner[k] = v
        return inner, wq, aq

    def quantized_kernel_bias(self, params, buffers) -> tuple[np.ndarray, np.ndarray]:
        """The deployed ``(K̂, b)`` of this block, as an eval-mode forward computes them (SPEC §5.quantized-layers).

        ``(K, b)`` is the fusion with frozen statistics (SPEC §2, §4; ``K = t·W``, ``b = β − μ·t``
        for the RepOpt target block); ``K̂`` is ``K`` fake-quantized by the weight quantizer in eval
        mode (no k-means refit, no state change), or ``K`` itself without one. ``b`` is never quantized.
        """
        inner_buffers, wstate, _ = self._split(buffers)
        kernel, bias = _fuse(self.inner, params, inner_buffers)
        if self.weight_quantizer is not None:
            kernel, _ = self.weight_quantizer.forward(kernel, wstate, training=False)
        return kernel, bias

    def forward(self, params, buffers, x, *, training: bool):
        x = as_float_array(x, "x", ndim=4)
        inner_buffers, wstate, astate = self._split(buffers)
        kernel, bias = _fuse(self.inner, params, inner_buffers)
        kernel_hat, new_w = (kernel, wstate) if self.weight_quantizer is None else \
            self.weight_quantizer.forward(kernel, wstate, training=training)
        x_hat, new_a = (x, astate) if self.act_quantizer is None else \
            self.act_quantizer.forward(x, astate, training=training)
        pre = conv2d(x_hat, kernel_hat, bias, stride=self.stride, padding=1, groups=self.groups)
        new_buffers = {f"weight_quant.{k}": v for k, v in new_w.items()}
        new_buffers.update({f"act_quant.{k}": v for k, v in new_a.items()})
        cache = _QATCache(x, x_hat, kernel, kernel_hat, bias, pre, inner_buffers, new_w, new_a)
        return relu(pre), new_buffers, cache

    def backward(self, params, cache: _QATCache, dy):
        dpre = relu_backward(dy, cache.pre)
        dx_hat, dk_hat, db = conv2d_backward(dpre, cache.x_hat, cache.kernel_hat, stride=self.stride, padding=1,
                                             groups=self.groups, with_bias=True)
        dk = dk_hat if self.weight_quantizer is None else \
            self.weight_quantizer.backward(dk_hat, cache.kernel, cache.weight_state)
        dx = dx_hat if self.act_quantizer is None else self.act_quantizer.backward(dx_hat, cache.x, cache.act_state)
        grads = _fuse_backward(self.inner, dk, db, params, cache.inner_buffers)
        return dx, {k: grads[k] for k in self.trainable_names()}


def make_qat_network(network: Network, params, buffers, *, weight_quantizer, act_bits: int | None,
                     act_momentum: float = 0.01, keep_first_fp32: bool = True,
                     act_ranges: Mapping[str, tuple[float, float]] | None = None) -> tuple[Network, Arrays]:
    """Wrap every block of a trained network for QAT on merged weights (SPEC §5).

    Returns ``(qat_network, qat_buffers)``; parameters are unchanged (same names).
    The first block stays FP32 when ``keep_first_fp32`` (its BN statistics are frozen
    all the same); the linear head is always FP32. ``act_ranges`` optionally seeds
    each block's activation range from PTQ calibration, keyed by block prefix.
    ``weight_quantizer`` is shared by every quantized block (its state is per block).
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be a reference Network, got {type(network).__name__}")
    if act_bits is not None:
        check_bits(act_bits, "act_bits")
    act_ranges = dict(act_ranges or {})
    unknown = set(act_ranges) - {p for p, _ in network.blocks}
    if unknown:
        raise ValueError(f"act_ranges has keys that are not block prefixes: {sorted(unknown)}")
    blocks, qat_buffers = [], {}
    for i, (prefix, block) in enumerate(network.blocks):
        fp32 = keep_first_fp32 and i == 0
        qblock = QATBlock(block, None if fp32 else weight_quantizer,
                          None if (fp32 or act_bits is None) else ActivationQuantizer(act_bits, act_momentum))
        scope = {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}
        bscope = {k[len(prefix) + 1:]: v for k, v in buffers.items() if k.startswith(prefix + ".")}
        qb = qblock.init_qat_buffers(scope, bscope, act_range=act_ranges.get(prefix))
        qat_buffers.update({f"{prefix}.{k}": v for k, v in qb.items()})
        blocks.append((prefix, qblock))
    return Network(tuple(blocks), network.num_classes, network.head_name), qat_buffers
