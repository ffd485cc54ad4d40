"""SPEC §5: QAT on merged weights and ClusterQAT in PyTorch — the port of :mod:`repspec.reference.qat`.

A :class:`QATBlock` wraps a training-form block (RepVGG, RepVGG+OABN, QARepVGG or the
RepOpt target block of :mod:`repspec.torch_impl.modules.blocks`) and, in every forward,

1. fuses the branches into one kernel and bias with **frozen** BN statistics
   (:func:`fused_kernel_bias`: eval-mode fusion, SPEC §2/§4, written with autograd ops
   in the reference's operation order — ``switch_to_deploy`` is not differentiable);
2. fake-quantizes the fused kernel (:class:`UniformWeightQuantizer`, or
   :class:`KMeansWeightQuantizer` = ClusterQAT) and the block's input activation
   (:class:`repspec.torch_impl.quantization.quant.ActivationFakeQuant`);
3. runs the deployed form ``relu(conv3x3(x̂, K̂) + b)``.

Backward is autograd through straight-through estimators (weights: gradient
unchanged; activations: gradient where the input lies in the representable range),
then through the fusion into the branch parameters — the reference's hand-written
backward, SPEC §5.

Parameter and buffer names are the wrapped block's (``rbr_dense.conv.weight`` …: the
QAT block re-registers the block's sub-modules, so a QAT model's ``state_dict`` is the
original model's plus the quantizer state) and the quantizers' state lives under
``weight_quant.*`` (``centroids``, ``step``) and ``act_quant.*`` (``lo``, ``hi``,
``initialized``) — exactly the reference's QAT buffer names, so
:func:`repspec.torch_impl.modules.interop.module_arrays` of a QAT model is a dict compare
against :func:`repspec.reference.qat.make_qat_network`'s buffers.

*[repspec]* choices (all as the reference): BN statistics frozen (the fusion reads the
running statistics; γ, β train); the uniform weight scale recomputed from the current
fused kernel at every forward; activation ranges by moving-average min/max (first
training batch initializes; frozen in eval; may be seeded from PTQ calibration);
ClusterQAT: centroids fitted on the fused kernel when the block is wrapped
(``init``), re-fitted by Lloyd warm-started from the previous centroids at every
training forward whose step counter ``t`` satisfies ``t % update_every == 0``, fixed
in between; first block and linear head FP32 (:func:`make_qat_model`).
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Mapping, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_bool, check_int
from ..modules.blocks import QARepVGGBlock, RepOptTargetBlock, RepVGGBlock
from ..modules.kernels import identity_kernel, pad_1x1_to_3x3
from ..modules.models import VGGNet
from ..modules.oabn import OABN
from .kmeans import DEFAULT_BINS, DEFAULT_INIT, INITS, _assign, _check_values, _kmeans
from .ptq import refuse_squeeze_excitation
from .quant import ActivationFakeQuant, check_bits, fake_quantize_weight

__all__ = [
    "SUPPORTED_BLOCKS",
    "fused_kernel_bias",
    "UniformWeightQuantizer",
    "KMeansWeightQuantizer",
    "QATBlock",
    "Codebook",
    "make_qat_model",
    "codebooks",
    "qat_blocks",
]

#: the block kinds QAT on merged weights wraps (a RepVGGBlock with an OABN identity included)
SUPPORTED_BLOCKS = (RepVGGBlock, QARepVGGBlock, RepOptTargetBlock)


def _pc(v: Tensor) -> Tensor:
    return v[:, None, None, None]


def _sqrt_constant(x: Tensor) -> Tensor:
    """``sqrt(x)`` of a constant (no gradient), correctly rounded.

    ``torch.sqrt`` on the CPU is not correctly rounded in float64 (measured: ~1% of values
    one ulp off against ``math.sqrt``), which would make the fused kernel differ from the
    reference's in the last bit; NumPy's (hardware) square root is exact, so the CPU
    uses it (zero-copy). CUDA's double-precision ``sqrt`` is IEEE-rounded.
    """
    x = x.detach()
    if x.device.type == "cpu" and x.dtype in (torch.float64, torch.float32, torch.float16):
        return torch.from_numpy(np.sqrt(x.contiguous().numpy()))
    return torch.sqrt(x)


class _StraightThroughClip(torch.autograd.Function):
    """Forward: ``clamp(t, −s, s)`` exactly; backward: identity (OABN ``gradient='straight_through'``)."""

    @staticmethod
    def forward(ctx, t, s):
        return t.clamp(-s, s)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _bn_factor(bn: nn.Module) -> Tensor:
    """SPEC §0/§4: ``t = γ/sqrt(σ² + eps)`` with the running statistics (constants), clipped for an OABN.

    The reference's arithmetic exactly (one correctly rounded square root, one division,
    an exact clip); differentiable in ``γ`` — OABN ``'clip'``: the gradient of ``clamp``
    (it passes at ``|t| = s``, as the reference), ``'straight_through'``: identity.
    """
    t = bn.weight / _sqrt_constant(bn.running_var + bn.eps)
    if isinstance(bn, OABN) and math.isfinite(bn.threshold):
        s = float(bn.threshold)
        t = _StraightThroughClip.apply(t, s) if bn.gradient == "straight_through" else t.clamp(-s, s)
    return t


def _check_block(block, what: str = "block") -> nn.Module:
    if not isinstance(block, SUPPORTED_BLOCKS):
        raise TypeError(f"{what} must be a RepVGGBlock (with or without OABN), QARepVGGBlock or RepOptTargetBlock "
                        f"(a block with a fused conv form), got {type(block).__name__}")
    if getattr(block, "deployed", False):
        raise TypeError(f"{what} ({type(block).__name__}) is deployed: QAT on merged weights needs the training "
                        "form (its branches)")
    return block


def fused_kernel_bias(block: nn.Module) -> tuple[Tensor, Tensor]:
    """SPEC §2/§4/§5: the block's fused ``(K (O, I/g, 3, 3), b (O,))`` from frozen BN statistics, differentiably.

    Autograd flows into every branch parameter (conv kernels, BN ``γ``, ``β``; the running
    statistics are constants). The operations are the reference's, in its order, so in
    float64 the result is bit-identical to ``reference.repvgg.fuse_*`` / ``reference.qat.fold_conv_bn``:

    * RepVGG: ``K = t3·K3 + t1·pad(K1) [+ t̃0·I_c]``, ``b = (β3 − μ3·t3) + (β1 − μ1·t1) [+ (β0 − μ0·t̃0)]``
      with ``t = γ/sqrt(σ² + eps)`` and ``t̃0`` the OABN-clipped identity factor (SPEC §4; its
      gradient mode as configured on the OABN);
    * QARepVGG: ``K = t3·K3 + pad(K1) [+ I_c]``, ``b = β3 − μ3·t3``, then the post BN folded:
      ``K ← tp·K``, ``b ← tp·(b − μp) + βp``;
    * RepOpt target: ``K = t·W``, ``b = β − μ·t``.

    ``TypeError`` for any other block kind or a deployed block.
    """
    _check_block(block)
    if isinstance(block, RepOptTargetBlock):
        bn = block.bn
        t = _bn_factor(bn)
        return _pc(t) * block.conv.weight, bn.bias - bn.running_mean * t
    dense = block.rbr_dense
    t3 = _bn_factor(dense.bn)
    if isinstance(block, QARepVGGBlock):
        kernel = _pc(t3) * dense.conv.weight + pad_1x1_to_3x3(block.rbr_1x1.weight)
        if block.rbr_identity is not None:
            kernel = kernel + identity_kernel(block.out_channels, block.groups, dtype=kernel.dtype,
                                              device=kernel.device)
        bias = dense.bn.bias - dense.bn.running_mean * t3
        post = block.bn
        tp = _bn_factor(post)
        return _pc(tp) * kernel, tp * (bias - post.running_mean) + post.bias
    one = block.rbr_1x1
    t1 = _bn_factor(one.bn)
    kernel = _pc(t3) * dense.conv.weight + _pc(t1) * pad_1x1_to_3x3(one.conv.weight)
    bias = (dense.bn.bias - dense.bn.running_mean * t3) + (one.bn.bias - one.bn.running_mean * t1)
    ident = block.rbr_identity
    if ident is not None:
        t0 = _bn_factor(ident)  # OABN: clipped, with its gradient mode
        eye = identity_kernel(block.out_channels, block.groups, dtype=kernel.dtype, device=kernel.device)
        kernel = kernel + _pc(t0) * eye
        bias = bias + (ident.bias - ident.running_mean * t0)
    return kernel, bias


# ------------------------------------------------------------------- weight quantizers


class UniformWeightQuantizer(nn.Module):
    """SPEC §5: symmetric narrow-range fake quantization of the fused kernel (reference ``UniformWeightQuantizer``).

    Stateless: ``scale = max|K| / (2^(b−1) − 1)`` per layer (or per output channel with
    ``per_channel=True``) is recomputed from the current kernel at every forward
    (:func:`repspec.torch_impl.quantization.quant.fake_quantize_weight`); the gradient passes unchanged
    (every weight is inside the range by construction). ``bits`` in 2..16.
    """

    def __init__(self, bits: int, per_channel: bool = False):
        bits = check_bits(bits, min_value=2)
        per_channel = check_bool(per_channel, "per_channel")
        super().__init__()
        self.bits, self.per_channel = bits, per_channel

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"

    def initialize(self, kernel: Tensor) -> None:
        """SPEC §5: nothing to fit (the uniform quantizer is stateless)."""

    def forward(self, kernel: Tensor) -> Tensor:
        return fake_quantize_weight(kernel, self.bits, self.per_channel, validate=False)


class _ReplaceSTE(torch.autograd.Function):
    """Forward: the precomputed ``ŵ`` (exactly); backward: straight-through ``∂L/∂w = ∂L/∂ŵ``."""

    @staticmethod
    def forward(ctx, w, w_hat):
        return w_hat.view_as(w_hat)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class KMeansWeightQuantizer(nn.Module):
    """SPEC §5 ClusterQAT: ``2^bits`` centroids per layer, refitted on a schedule (reference ``KMeansWeightQuantizer``).

    ``KMeansWeightQuantizer(bits, update_every=1, init=DEFAULT_INIT, max_iter=300, seed=None,
    cache_assignments=True)``; ``bits`` in 1..16, ``update_every ≥ 1``, ``max_iter ≥ 0``,
    ``init`` one of :data:`repspec.torch_impl.quantization.kmeans.INITS` except ``'warm'`` (``seed`` for
    ``kmeans++``; the default ``DEFAULT_INIT = 'binned'`` is the fast fit for 10^6-value layers).

    Buffers: ``centroids (k,)`` ascending (the kernel's dtype) and ``step`` (int64: the
    training forwards seen). :meth:`initialize` fits the centroids on a kernel with
    ``init`` (done by :class:`QATBlock` when it wraps a block). In a **training** forward
    with ``step % update_every == 0`` the centroids are first re-fitted by Lloyd
    warm-started from the current ones (:func:`repspec.torch_impl.quantization.kmeans.kmeans_1d` with
    ``init_centroids``), then ``step`` is incremented; in eval nothing changes. The output
    replaces every weight by its assigned centroid (midpoint ties → the lower centroid);
    the gradient is straight-through.

    ``cache_assignments``: keep, per weight, its centroid and the two midpoints around
    it (three kernel-sized tensors, not saved in the state dict). A forward without a
    refit then only checks ``m_lower < w ≤ m_upper`` (two comparisons per weight) and
    re-assigns the few weights that crossed a midpoint — exactly the full assignment's
    result, at the cost of a uniform fake quantization. ``False`` assigns every weight
    each forward (no extra memory).

    A module is one layer's codebook: do not share it between blocks
    (:func:`make_qat_model` copies its template per block).
    """

    def __init__(self, bits: int, update_every: int = 1, init: str = DEFAULT_INIT, max_iter: int = 300,
                 seed: int | None = None, cache_assignments: bool = True):
        bits = check_bits(bits)
        update_every = check_int(update_every, "update_every", 1)
        max_iter = check_int(max_iter, "max_iter", 0)
        choices = tuple(i for i in INITS if i != "warm")
        if not isinstance(init, str) or init not in choices:
            raise ValueError(f"init must be one of {choices}, got {init!r}")
        if seed is not None:
            seed = check_int(seed, "seed", 0)
        if init == "kmeans++" and seed is None:
            raise ValueError("init='kmeans++' needs an explicit seed to be deterministic")
        cache_assignments = check_bool(cache_assignments, "cache_assignments")
        super().__init__()
        self.bits, self.update_every, self.init, self.max_iter, self.seed = bits, update_every, init, max_iter, seed
        self.cache_assignments = cache_assignments
        self.register_buffer("centroids", torch.zeros(2**bits))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._fitted = False
        self._cache: tuple | None = None  # (centroids, labels, lower, upper, ŵ): see _quantized

    @property
    def k(self) -> int:
        return 2**self.bits

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, update_every={self.update_every}, init={self.init!r}, "
                f"max_iter={self.max_iter}")

    def __getstate__(self):
        state = super().__getstate__().copy()
        state["_cache"] = None  # a cache, not state (copies and pickles rebuild it)
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._cache = None
        if prefix + "centroids" in state_dict:
            self._fitted = True

    @torch.no_grad()
    def initialize(self, kernel: Tensor) -> None:
        """SPEC §5: fit the centroids on ``kernel`` with ``init`` and reset ``step`` to 0 (reference ``init_state``)."""
        kernel = _check_values(kernel.detach(), "kernel")
        gen = None
        if self.init == "kmeans++":
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
        c, _, _, _ = _kmeans(kernel, self.k, self.init, self.max_iter, gen, None, DEFAULT_BINS)
        self.centroids = c.clone()
        self.step = torch.zeros((), dtype=torch.int64, device=kernel.device)
        self._cache = None
        self._fitted = True

    @torch.no_grad()
    def refit(self, kernel: Tensor) -> Tensor:
        """SPEC §5 ClusterQAT refit: Lloyd warm-started from the current centroids (stored); returns the labels."""
        kernel = _check_values(kernel.detach(), "kernel")
        c0 = self.centroids.to(device=kernel.device, dtype=torch.float64)
        c, labels, _, _ = _kmeans(kernel, self.k, "warm", self.max_iter, None, torch.sort(c0).values, DEFAULT_BINS)
        self.centroids = c.to(self.centroids.dtype)
        return labels

    @torch.no_grad()
    def _quantized(self, kernel: Tensor, labels: Tensor | None) -> Tensor:
        """``centroids[assign(kernel)]`` in the kernel's dtype — through the cache when possible.

        The cache is ``(centroids, labels, lower, upper, ŵ)``: after a full assignment only the
        labels are kept; the per-weight midpoints ``lower``/``upper`` are gathered the first
        time a forward without a refit needs them (never, with ``update_every=1``).
        """
        w = kernel.detach()
        c = self.centroids.to(w.dtype)
        cache = self._cache
        usable = (cache is not None and labels is None and cache[4].shape == w.shape
                  and cache[4].dtype == w.dtype and cache[4].device == w.device and torch.equal(cache[0], c))
        if usable:
            _, lab_all, lower, upper, q = cache
            bounds = self._bounds(c)
            if lower is None:
                lower, upper = bounds[:-1][lab_all], bounds[1:][lab_all]
            moved = (w <= lower) | (w > upper)
            if bool(moved.any()):
                idx = moved.nonzero(as_tuple=True)
                lab = _assign(w[idx], c)
                lower, upper, q = lower.clone(), upper.clone(), q.clone()
                lower[idx], upper[idx], q[idx] = bounds[:-1][lab], bounds[1:][lab], c[lab]
            self._cache = (cache[0], None, lower, upper, q)
            return q
        if labels is None:
            labels = _assign(w, c)
        q = c[labels]
        if self.cache_assignments and not bool((c[1:] == c[:-1]).any()):  # duplicates: no simple bounds
            self._cache = (c.clone(), labels, None, None, q)
        else:
            self._cache = None
        return q

    @staticmethod
    def _bounds(c: Tensor) -> Tensor:
        """``[−inf, m_0, …, m_{k−2}, +inf]``: weight ``w`` has label ``j`` iff ``bounds[j] < w ≤ bounds[j+1]``."""
        inf = torch.full((1,), math.inf, dtype=c.dtype, device=c.device)
        return torch.cat([-inf, 0.5 * c[:-1] + 0.5 * c[1:], inf])

    def forward(self, kernel: Tensor) -> Tensor:
        if not self._fitted:
            raise RuntimeError("KMeansWeightQuantizer has no centroids yet: call initialize(kernel) (QATBlock does "
                               "it when wrapping a block) or load a state dict")
        labels = None
        if self.training:
            if int(self.step) % self.update_every == 0:
                labels = self.refit(kernel)
            self.step += 1
        if labels is not None and self.centroids.dtype != kernel.dtype:
            labels = None
        return _ReplaceSTE.apply(kernel, self._quantized(kernel, labels))

    @torch.no_grad()
    def labels(self, kernel: Tensor) -> Tensor:
        """SPEC §5: the centroid index of every weight of ``kernel`` (int64, kernel-shaped), no refit."""
        return _assign(kernel.detach(), self.centroids.to(kernel.dtype))


WEIGHT_QUANTIZERS = (UniformWeightQuantizer, KMeansWeightQuantizer)


# -------------------------------------------------------------------------- QAT block


class Codebook(NamedTuple):
    """SPEC §5 (export): one ClusterQAT layer — the deployed kernel is ``centroids[indices]``.

    ``centroids (k,)`` ascending, ``indices`` int64 shaped like the kernel ``(O, I/g, 3, 3)``,
    ``bias (O,)`` the fused FP32 bias; ``stride``, ``groups`` of the conv.
    """

    centroids: Tensor
    indices: Tensor
    bias: Tensor
    stride: int
    groups: int


class QATBlock(nn.Module):
    """SPEC §5 (seed Fig. 1): QAT on merged weights around one training-form block (reference ``QATBlock``).

    ``QATBlock(block, weight_quantizer=None, act_quantizer=None)``: ``block`` a
    :class:`~repspec.torch_impl.modules.blocks.RepVGGBlock` (plain or OABN),
    :class:`~repspec.torch_impl.modules.blocks.QARepVGGBlock` or
    :class:`~repspec.torch_impl.modules.blocks.RepOptTargetBlock` (not deployed; anything else →
    ``TypeError``); ``weight_quantizer`` a :class:`UniformWeightQuantizer`,
    :class:`KMeansWeightQuantizer` or ``None`` (FP32); ``act_quantizer`` an
    :class:`~repspec.torch_impl.quantization.quant.ActivationFakeQuant` or ``None``.

    Forward: ``relu(conv3x3(act_quant(x), weight_quant(K), b))`` with ``(K, b) =``
    :func:`fused_kernel_bias` (frozen statistics). The block's sub-modules are registered
    under their own names (same ``state_dict`` keys as the block); the quantizers are
    ``weight_quant`` and ``act_quant`` and are moved to the kernel's dtype and device.
    A k-means quantizer is fitted on the fused kernel here (reference ``init_qat_buffers``).
    All arguments are validated before anything is changed.
    """

    def __init__(self, block: nn.Module, weight_quantizer: nn.Module | None = None,
                 act_quantizer: ActivationFakeQuant | None = None):
        _check_block(block)
        if weight_quantizer is not None and not isinstance(weight_quantizer, WEIGHT_QUANTIZERS):
            raise TypeError(f"weight_quantizer must be a UniformWeightQuantizer, KMeansWeightQuantizer or None, got "
                            f"{type(weight_quantizer).__name__}")
        if act_quantizer is not None and not isinstance(act_quantizer, ActivationFakeQuant):
            raise TypeError(f"act_quantizer must be an ActivationFakeQuant or None, got {type(act_quantizer).__name__}")
        with torch.no_grad():
            kernel, _ = fused_kernel_bias(block)
        super().__init__()
        self._inner = (block,)  # a tuple: not registered (its children are, below)
        self.in_channels, self.out_channels = block.in_channels, block.out_channels
        self.stride, self.groups = block.stride, getattr(block, "groups", 1)
        for name, child in block.named_children():
            if name != "nonlinearity":
                self.add_module(name, child)
        if weight_quantizer is not None:
            weight_quantizer.to(device=kernel.device, dtype=kernel.dtype)
            weight_quantizer.initialize(kernel.detach())
        if act_quantizer is not None:
            act_quantizer.to(device=kernel.device, dtype=kernel.dtype)
        self.weight_quant = weight_quantizer
        self.act_quant = act_quantizer

    @property
    def block(self) -> nn.Module:
        """SPEC §5: the wrapped training-form block (its parameters are this module's)."""
        return self._inner[0]

    def extra_repr(self) -> str:
        return f"{type(self.block).__name__}({self.in_channels}, {self.out_channels}, stride={self.stride})"

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """SPEC §2/§5: :func:`fused_kernel_bias` of the wrapped block (differentiable, frozen statistics)."""
        return fused_kernel_bias(self.block)

    def forward(self, x: Tensor) -> Tensor:
        kernel, bias = fused_kernel_bias(self.block)
        if self.weight_quant is not None:
            kernel = self.weight_quant(kernel)
        if self.act_quant is not None:
            x = self.act_quant(x)
        return F.relu(F.conv2d(x, kernel, bias, self.stride, 1, 1, self.groups))

    @torch.no_grad()
    def quantized_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """SPEC §5: the deployed ``(K̂, b)`` as eval mode uses it (no refit, no range update, no gradient)."""
        kernel, bias = fused_kernel_bias(self.block)
        wq = self.weight_quant
        if isinstance(wq, KMeansWeightQuantizer):
            c = wq.centroids.to(kernel.dtype)
            kernel = c[_assign(kernel, c)]
        elif wq is not None:
            kernel = wq(kernel)
        return kernel.detach().clone(), bias.detach().clone()

    @torch.no_grad()
    def codebook(self) -> Codebook | None:
        """SPEC §5: this layer's ClusterQAT :class:`Codebook` (``None`` without a k-means weight quantizer)."""
        wq = self.weight_quant
        if not isinstance(wq, KMeansWeightQuantizer):
            return None
        kernel, bias = fused_kernel_bias(self.block)
        c = wq.centroids.to(kernel.dtype)
        return Codebook(c.clone(), _assign(kernel, c), bias.detach().clone(), self.stride, self.groups)


# ---------------------------------------------------------------------------- model


def _check_range(value, prefix: str) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"act_ranges[{prefix!r}] must be a (lo, hi) pair, got {value!r}")
    lo, hi = value
    for v, name in ((lo, "lo"), (hi, "hi")):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"act_ranges[{prefix!r}] {name} must be a real number, got {type(v).__name__}")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"act_ranges[{prefix!r}] must be finite with lo <= hi, got ({lo}, {hi})")
    return lo, hi


def make_qat_model(model: VGGNet, *, weight_quantizer: nn.Module | None, act_bits: int | None,
                   act_momentum: float = 0.01, keep_first_fp32: bool = True,
                   act_ranges: Mapping[str, tuple[float, float]] | None = None, inplace: bool = False,
                   progress: bool | None = None) -> VGGNet:
    """SPEC §5: wrap every block of a trained model for QAT on merged weights (reference ``make_qat_network``).

    Returns the model (a deep copy unless ``inplace``) with every block replaced by a
    :class:`QATBlock`; parameter names are unchanged. ``weight_quantizer`` is a template
    (``UniformWeightQuantizer``, ``KMeansWeightQuantizer`` or ``None``), deep-copied per
    quantized block (each k-means copy fitted on its own fused kernel). ``act_bits``
    (``None``: FP32 activations) gives each quantized block an
    :class:`~repspec.torch_impl.quantization.quant.ActivationFakeQuant` (moving average, ``act_momentum``).
    ``keep_first_fp32``: the first block gets no quantizers (it is still fused with frozen
    BN); the linear head is always FP32. ``act_ranges`` ``{block prefix: (lo, hi)}``
    seeds activation ranges from PTQ calibration (ignored for an FP32 block, as the
    reference). Everything is validated before the model is touched: wrong model or
    block types → ``TypeError``, unknown prefixes / bad ranges → ``ValueError``.

    ``progress``: a tqdm bar over the blocks while k-means quantizers make their first fit
    (the long part on a full-size model); ``None`` (default) shows it on a terminal only,
    ``False`` never, ``True`` always. Uniform quantizers have nothing to fit: no bar.
    """
    if not isinstance(model, VGGNet):
        raise TypeError(f"model must be a VGGNet, got {type(model).__name__}")
    refuse_squeeze_excitation(model)
    if weight_quantizer is not None and not isinstance(weight_quantizer, WEIGHT_QUANTIZERS):
        raise TypeError(f"weight_quantizer must be a UniformWeightQuantizer, KMeansWeightQuantizer or None, got "
                        f"{type(weight_quantizer).__name__}")
    if act_bits is not None:
        act_bits = check_bits(act_bits, "act_bits")
    if isinstance(act_momentum, bool) or not isinstance(act_momentum, numbers.Real):
        raise TypeError(f"act_momentum must be a real number in [0, 1], got {type(act_momentum).__name__}")
    if not 0.0 <= float(act_momentum) <= 1.0:
        raise ValueError(f"act_momentum must be in [0, 1], got {act_momentum}")
    keep_first_fp32 = check_bool(keep_first_fp32, "keep_first_fp32")
    inplace = check_bool(inplace, "inplace")
    if progress is not None:
        progress = check_bool(progress, "progress")
    blocks = list(model.named_blocks())
    for prefix, block in blocks:
        _check_block(block, f"block {prefix!r}")
    if act_ranges is not None and not isinstance(act_ranges, Mapping):
        raise TypeError(f"act_ranges must be a mapping prefix -> (lo, hi) or None, got {type(act_ranges).__name__}")
    ranges = {p: _check_range(r, p) for p, r in dict(act_ranges or {}).items()}
    unknown = set(ranges) - {p for p, _ in blocks}
    if unknown:
        raise ValueError(f"act_ranges has keys that are not block prefixes: {sorted(unknown)}")

    out = model if inplace else copy.deepcopy(model)

    named = list(out.named_blocks())
    fitting = isinstance(weight_quantizer, KMeansWeightQuantizer)
    bar = tqdm(named, desc=f"ClusterQAT first fit ({weight_quantizer.k if fitting else 0} centroids/layer)",
               unit="layer", leave=False, disable=(not fitting) or (None if progress is None else not progress))
    for i, (prefix, block) in enumerate(bar):
        fp32 = keep_first_fp32 and i == 0
        wq = None if (fp32 or weight_quantizer is None) else copy.deepcopy(weight_quantizer)
        aq = None if (fp32 or act_bits is None) else ActivationFakeQuant(act_bits, "moving_average",
                                                                         float(act_momentum))
        qblock = QATBlock(block, wq, aq)
        if aq is not None and prefix in ranges:
            qblock.act_quant.set_range(*ranges[prefix])
        qblock.train(out.training)
        if prefix == "stage0":
            out.stage0 = qblock
        else:
            stage, index = prefix.split(".")
            getattr(out, stage)[int(index)] = qblock
    return out


def qat_blocks(model: nn.Module) -> dict[str, QATBlock]:
    """SPEC §5: ``{name: QATBlock}`` of a model (state-dict prefixes, forward order)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, QATBlock)}


def codebooks(model: nn.Module) -> dict[str, Codebook]:
    """SPEC §5 (export): ``{block prefix: Codebook}`` of every ClusterQAT layer of a QAT model."""
    out = {}
    for name, block in qat_blocks(model).items():
        cb = block.codebook()
        if cb is not None:
            out[name] = cb
    return out
