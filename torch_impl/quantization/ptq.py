"""SPEC §5: post-training quantization of RepVGG-family networks in PyTorch.

Pipeline of :func:`ptq_quantize`:

1. ``convert_to_deploy(model)`` (SPEC §2): every block becomes one 3x3 conv + bias
   (RepVGG, OABN-RepVGG, QARepVGG with its post-BN folded, CSLA/HyperSearch,
   RepOpt-VGG target blocks).
2. **Calibration** on the FP32 deploy network: the first ``num_batches`` inputs of
   ``calib_loader`` are taken once (kept, so two-pass calibrators see exactly the
   same batches), and an observer (:mod:`repspec.torch_impl.quantization.observers`) on the input
   of every quantized layer chooses ``(lo, hi)``. Activations are observed in full
   precision (weights not yet quantized), as PyTorch's own prepare/convert PTQ does.
3. :func:`build_quantized_model`: every conv except the first (``keep_first_fp32``)
   gets its **fused** kernel fake-quantized once (symmetric, per layer or per output
   channel, SPEC §5) — or mapped to a given k-means codebook — and an
   :class:`~repspec.torch_impl.quantization.quant.ActivationFakeQuant` on its input with the
   calibrated range; the final linear stays FP32 unless ``keep_last_fp32=False``.

The result is a :class:`QuantizedModel` in eval mode (same device and dtype as the
input model; the input model is not modified). In float64 its quantized kernels are
bit-identical to :func:`repspec.reference.quant.fake_quantize_weight` of the fused
kernels, and its activation ranges to :func:`repspec.reference.calibrate.calibrate`
on the deploy network's activations (``tests/test_torch_ptq.py``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

import torch

# per-layer weight schemes of a QuantizedModel (None = FP weights)
from repspec.core.vocabulary import WEIGHT_SCHEMES
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_bool
from ..modules.deploy import convert_to_deploy, fuse_block
from ..modules.models import VGGNet
from .observers import METHODS, make_observer
from .quant import (
    ActivationFakeQuant,
    _check_tensor,
    check_bits,
    dequantize,
    quantize_weight_codes,
    state_size,
    weight_scale,
)

__all__ = [
    "QuantConvBlock",
    "QuantLinear",
    "QuantizedModel",
    "build_quantized_model",
    "calibrate_activations",
    "quantized_model_from_qat",
    "has_qat_blocks",
    "ptq_quantize",
    "evaluate",
    "kmeans_assign",
    "codes_dtype",
    "WEIGHT_SCHEMES",
]



# -------------------------------------------------------------------------- helpers


def codes_dtype(scheme: str, bits_or_k: int) -> torch.dtype:
    """SPEC §5 export storage: uniform codes ``±(2^(b−1)−1)`` → int8/int16; k-means indices ``< k`` →
    uint8/int16/int32 (``bits_or_k``: the bit width, or ``k`` for k-means)."""
    if scheme == "uniform":
        return torch.int8 if bits_or_k <= 8 else torch.int16
    if bits_or_k <= 256:
        return torch.uint8
    return torch.int16 if bits_or_k <= 2**15 else torch.int32


def _check_codebook(codebook, name: str) -> Tensor:
    if not isinstance(codebook, Tensor):
        try:
            codebook = torch.as_tensor(codebook, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a 1-D tensor/array of centroids, got {type(codebook).__name__}") from None
    codebook = _check_tensor(codebook.detach(), name)
    if codebook.ndim != 1:
        raise ValueError(f"{name} must be 1-D (k centroids), got shape {tuple(codebook.shape)}")
    if codebook.numel() > 2**16:
        raise ValueError(f"{name} has {codebook.numel()} centroids; at most 2^16 (16 bits) are supported")
    return codebook


def kmeans_assign(values: Tensor, codebook: Tensor) -> Tensor:
    """SPEC §5 k-means assignment: index of the nearest centroid of a **sorted** codebook.

    Decision boundaries are the midpoints ``m_j = 0.5·c_j + 0.5·c_{j+1}``; a value
    exactly on a midpoint goes to the lower centroid and duplicate centroids resolve
    to the lowest index — ``repspec.reference.kmeans.assign``. Returns ``int64``.
    """
    mid = 0.5 * codebook[:-1] + 0.5 * codebook[1:]
    return torch.searchsorted(mid.contiguous(), values.detach().contiguous(), right=False)


def _batch_input(batch, name: str = "batch") -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"{name} must be a tensor or an (inputs, targets, ...) tuple/list, got {type(batch).__name__}")


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    if p is None:
        return torch.device("cpu"), torch.get_default_dtype()
    return p.device, p.dtype


# ------------------------------------------------------------------- quantized layers


class _QuantWeightMixin:
    """Shared weight-quantization state: ``weight_codes`` + ``weight_scale`` (uniform) or ``codebook`` (k-means).

    The layer computes with :meth:`dequantized_weight` — the same function whether the
    codes were just computed (PTQ) or loaded (export), so both give identical weights.
    """

    def _weight_param(self) -> nn.Parameter:  # pragma: no cover - overridden
        raise NotImplementedError

    def _clear_weight_quant(self) -> None:
        for name in ("weight_codes", "weight_scale", "codebook"):
            if name in self._buffers:
                del self._buffers[name]

    @torch.no_grad()
    def set_float_weight(self, weight: Tensor) -> None:
        """FP weights (no weight quantization)."""
        self._clear_weight_quant()
        self.weight_scheme, self.weight_bits, self.per_channel = None, None, False
        self._weight_param().copy_(weight)

    @torch.no_grad()
    def quantize_weight_uniform(self, weight: Tensor, bits: int, per_channel: bool = False) -> None:
        """SPEC §5 uniform symmetric weights: codes and scale of ``weight`` (per layer or per output channel)."""
        scale = weight_scale(weight, bits, per_channel)
        self.set_weight_codes("uniform", quantize_weight_codes(weight, scale, bits), scale, bits=bits,
                              per_channel=per_channel)

    @torch.no_grad()
    def quantize_weight_kmeans(self, weight: Tensor, codebook: Tensor) -> None:
        """SPEC §5 k-means weights: every value mapped to its nearest centroid (codebook sorted first)."""
        cb = torch.sort(codebook.detach().to(device=weight.device, dtype=weight.dtype)).values
        idx = kmeans_assign(weight.reshape(-1), cb).reshape(weight.shape)
        self.set_weight_codes("kmeans", idx, cb)

    @torch.no_grad()
    def set_weight_codes(self, scheme: str, codes: Tensor, table: Tensor, *, bits: int | None = None,
                         per_channel: bool = False) -> None:
        """Set the stored codes directly: uniform ``(codes, scale)`` or k-means ``(indices, sorted codebook)``."""
        w = self._weight_param()
        if tuple(codes.shape) != tuple(w.shape):
            raise ValueError(f"codes must have the weight's shape {tuple(w.shape)}, got {tuple(codes.shape)}")
        self._clear_weight_quant()
        table = table.detach().to(device=w.device, dtype=w.dtype)
        if scheme == "uniform":
            self.register_buffer("weight_scale", table.clone())
            self.register_buffer("weight_codes", codes.to(device=w.device, dtype=codes_dtype("uniform", bits)))
        elif scheme == "kmeans":
            k = table.numel()
            if table.ndim != 1 or k == 0 or (k > 1 and bool((table[1:] < table[:-1]).any())):
                raise ValueError("a k-means codebook must be a non-empty 1-D tensor sorted ascending")
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
                raise ValueError(f"k-means indices must lie in [0, {k})")
            bits = max(1, math.ceil(math.log2(k))) if bits is None else bits
            self.register_buffer("codebook", table.clone())
            self.register_buffer("weight_codes", codes.to(device=w.device, dtype=codes_dtype("kmeans", k)))
        else:
            raise ValueError(f"scheme must be one of {WEIGHT_SCHEMES}, got {scheme!r}")
        self.weight_scheme, self.weight_bits, self.per_channel = scheme, bits, per_channel
        w.copy_(self.dequantized_weight())

    def dequantized_weight(self) -> Tensor:
        """The weight rebuilt from the stored codes (what the layer computes with)."""
        if self.weight_scheme is None:
            return self._weight_param().detach()
        codes = self.weight_codes.to(torch.int64)
        if self.weight_scheme == "uniform":
            return dequantize(codes, self.weight_scale).to(self.weight_scale.dtype)
        return self.codebook[codes]


def _weight_kw_apply(layer, weight: Tensor, weight_scheme, weight_bits, per_channel, codebook) -> None:
    if weight_scheme is None:
        layer.set_float_weight(weight)
    elif weight_scheme == "uniform":
        layer.quantize_weight_uniform(weight, weight_bits, per_channel)
    elif weight_scheme == "kmeans":
        layer.quantize_weight_kmeans(weight, codebook)
    else:
        raise ValueError(f"weight_scheme must be one of {WEIGHT_SCHEMES} or None, got {weight_scheme!r}")


class QuantConvBlock(_QuantWeightMixin, nn.Module):
    """SPEC §5: a deployed block with quantized kernel: ``relu(conv3x3(x̂; K̂) + b)``.

    ``x̂ = act_quant(x)`` (an :class:`ActivationFakeQuant`, or identity when ``None``);
    ``K̂`` is stored as ``rbr_reparam.weight`` (dequantized once) together with its
    codes: ``weight_codes`` + ``weight_scale`` (uniform) or ``weight_codes`` (indices)
    + ``codebook`` (k-means, sorted). The bias stays FP (it is added after the conv).
    :meth:`from_fused` quantizes a deployed block.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, *,
                 act_bits: int | None = None, validate: bool = True, dtype=None, device=None):
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.weight_scheme, self.weight_bits, self.per_channel = None, None, False
        self.rbr_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=True,
                                     dtype=dtype, device=device)
        self.nonlinearity = nn.ReLU()
        self.act_quant = None if act_bits is None else ActivationFakeQuant(act_bits, validate=validate).to(
            dtype=self.rbr_reparam.weight.dtype, device=self.rbr_reparam.weight.device)

    def _weight_param(self) -> nn.Parameter:
        return self.rbr_reparam.weight

    @classmethod
    @torch.no_grad()
    def from_fused(cls, fused: nn.Module, *, weight_scheme: str | None, weight_bits: int | None = None,
                   per_channel: bool = False, codebook: Tensor | None = None, act_bits: int | None = None,
                   validate: bool = True) -> "QuantConvBlock":
        """Quantize a deployed block's kernel (``get_equivalent_kernel_bias``); bias copied."""
        kernel, bias = fused.get_equivalent_kernel_bias()
        kernel, bias = kernel.detach(), bias.detach()
        layer = cls(fused.in_channels, fused.out_channels, fused.stride, getattr(fused, "groups", 1),
                    act_bits=act_bits, validate=validate, dtype=kernel.dtype, device=kernel.device)
        layer.rbr_reparam.bias.copy_(bias)
        _weight_kw_apply(layer, kernel, weight_scheme, weight_bits, per_channel, codebook)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return self.nonlinearity(self.rbr_reparam(x))

    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        return self.rbr_reparam.weight, self.rbr_reparam.bias


def refuse_squeeze_excitation(model: nn.Module) -> None:
    """SE blocks (RepVGG-D2se) have no quantized form in SPEC §5: refuse rather than drop them."""
    with_se = [name for name, m in model.named_modules() if getattr(m, "se", None) is not None]
    if with_se:
        raise ValueError(f"model has squeeze-excitation blocks ({with_se[0]} and {len(with_se) - 1} more); "
                         "PTQ/QAT of SE models (RepVGG-D2se) is not specified (SPEC §5), so they are refused")


class QuantLinear(_QuantWeightMixin, nn.Module):
    """SPEC §5: the classifier with quantized weight and input (only when ``keep_last_fp32=False``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, act_bits: int | None = None,
                 validate: bool = True, dtype=None, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_scheme, self.weight_bits, self.per_channel = None, None, False
        self.linear = nn.Linear(in_features, out_features, bias=bias, dtype=dtype, device=device)
        self.act_quant = None if act_bits is None else ActivationFakeQuant(act_bits, validate=validate).to(
            dtype=self.linear.weight.dtype, device=self.linear.weight.device)

    def _weight_param(self) -> nn.Parameter:
        return self.linear.weight

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, *, weight_scheme: str | None, weight_bits: int | None = None,
                    per_channel: bool = False, codebook: Tensor | None = None, act_bits: int | None = None,
                    validate: bool = True) -> "QuantLinear":
        weight = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, act_bits=act_bits,
                    validate=validate, dtype=weight.dtype, device=weight.device)
        if linear.bias is not None:
            layer.linear.bias.copy_(linear.bias.detach())
        _weight_kw_apply(layer, weight, weight_scheme, weight_bits, per_channel, codebook)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return self.linear(x)


class QuantizedModel(nn.Module):
    """SPEC §5: a quantized deploy network (result of :func:`ptq_quantize` / :func:`build_quantized_model`).

    ``net`` is a :class:`~repspec.torch_impl.modules.models.VGGNet` whose blocks are
    :class:`~repspec.torch_impl.modules.blocks.FusedConvBlock` (FP) or :class:`QuantConvBlock`,
    and whose ``linear`` is ``nn.Linear`` (FP) or :class:`QuantLinear`. ``config``
    records how it was built (exported as metadata). Meant for inference: in training
    mode the activation quantizers would update their ranges (moving average).
    """

    def __init__(self, net: VGGNet, config: Mapping):
        super().__init__()
        self.net = net
        self.config = dict(config)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def named_layers(self) -> list[tuple[str, nn.Module]]:
        """``[(name, module)]`` of every conv block (``stage0``, ``stage1.0``, …) and ``linear``."""
        return list(self.net.named_blocks()) + [("linear", self.net.linear)]

    def quantized_layers(self) -> dict[str, nn.Module]:
        """Layers whose weights are quantized (``QuantConvBlock``/``QuantLinear`` with a weight scheme)."""
        return {n: m for n, m in self.named_layers()
                if isinstance(m, (QuantConvBlock, QuantLinear)) and m.weight_scheme is not None}

    def act_ranges(self) -> dict[str, tuple[float, float]]:
        """The calibrated ``(lo, hi)`` of every activation quantizer, by layer name."""
        out = {}
        for n, m in self.named_layers():
            aq = getattr(m, "act_quant", None)
            if aq is not None:
                out[n] = (float(aq.lo), float(aq.hi))
        return out

    def state_size(self) -> int:
        """SPEC §5 state size: distinct weight values summed over the quantized layers."""
        weights = {}
        for n, m in self.quantized_layers().items():
            weights[n] = m.rbr_reparam.weight if isinstance(m, QuantConvBlock) else m.linear.weight
        if not weights:
            raise ValueError("the model has no quantized layer")
        return state_size(weights)


# --------------------------------------------------------------------------- builders


def _check_optional_bits(value, name: str, min_value: int = 1) -> int | None:
    return None if value is None else check_bits(value, name, min_value=min_value)


def build_quantized_model(model: nn.Module, *, weight_bits: int | None = 8, act_bits: int | None = 8,
                          per_channel: bool = False, keep_first_fp32: bool = True, keep_last_fp32: bool = True,
                          codebooks: Mapping[str, Tensor] | None = None,
                          act_ranges: Mapping[str, tuple[float, float]] | None = None,
                          act_layers: Iterable[str] | None = None, validate: bool = True,
                          config: Mapping | None = None) -> QuantizedModel:
    """SPEC §5: the quantized deploy form of ``model`` without calibration.

    ``model``: any registry :class:`VGGNet` (training or deploy form; converted with
    ``convert_to_deploy``). Layers named ``stage0`` (unless ``keep_first_fp32=False``
    — it is the first conv), ``stage{k}.{i}``, and ``linear`` (only with
    ``keep_last_fp32=False``) are quantized:

    - weights: k-means when the layer's name is in ``codebooks`` (``{name: (k,)
      centroids}``, nearest centroid, :func:`kmeans_assign`), else uniform with
      ``weight_bits`` (``None``: FP weights);
    - activations: ``act_bits`` (``None``: FP inputs), range from ``act_ranges[name]``
      when given (otherwise the quantizer is left uninitialized: calibrate, or call
      ``set_range``); ``act_layers`` restricts activation quantization to those
      layers (default: every quantized layer).

    ``codebooks``/``act_ranges`` naming a layer that is not quantized raise
    ``ValueError``. Returns a :class:`QuantizedModel` in eval mode.
    """
    if not isinstance(model, VGGNet):
        raise TypeError(f"model must be a VGGNet (a registry model), got {type(model).__name__}")
    refuse_squeeze_excitation(model)
    weight_bits = _check_optional_bits(weight_bits, "weight_bits", 2)
    act_bits = _check_optional_bits(act_bits, "act_bits")
    for v, n in ((per_channel, "per_channel"), (keep_first_fp32, "keep_first_fp32"),
                 (keep_last_fp32, "keep_last_fp32"), (validate, "validate")):
        check_bool(v, n)
    deploy = convert_to_deploy(model)
    names = [p for p, _ in deploy.named_blocks()]
    quantized = [n for i, n in enumerate(names) if not (keep_first_fp32 and i == 0)]
    if not keep_last_fp32:
        quantized.append("linear")
    codebooks = {} if codebooks is None else codebooks
    act_ranges = {} if act_ranges is None else act_ranges
    for arg, m in (("codebooks", codebooks), ("act_ranges", act_ranges)):
        if not isinstance(m, Mapping):
            raise TypeError(f"{arg} must be a mapping layer name -> value, got {type(m).__name__}")
        bad = sorted(set(m) - set(quantized))
        if bad:
            raise ValueError(f"{arg} names layers that are not quantized: {bad}; quantized layers: {quantized}")
    checked_cb = {n: _check_codebook(c, f"codebooks[{n!r}]") for n, c in codebooks.items()}
    if act_ranges and act_bits is None:
        raise ValueError("act_ranges given but act_bits is None (no activation quantization)")
    for n, r in act_ranges.items():
        if not (isinstance(r, (tuple, list)) and len(r) == 2):
            raise TypeError(f"act_ranges[{n!r}] must be a (lo, hi) pair, got {r!r}")
    if act_layers is None:
        act_layers = set(quantized)
    else:
        if isinstance(act_layers, (str, bytes)) or not isinstance(act_layers, Iterable):
            raise TypeError(f"act_layers must be an iterable of layer names, got {type(act_layers).__name__}")
        act_layers = set(act_layers)
        bad = sorted(act_layers - set(quantized)) + sorted(set(act_ranges) - act_layers)
        if bad:
            raise ValueError(f"act_layers/act_ranges name layers without activation quantization: {bad}")

    def layer_kw(name):
        if name in checked_cb:
            return dict(weight_scheme="kmeans", weight_bits=max(1, math.ceil(math.log2(checked_cb[name].numel()))),
                        codebook=checked_cb[name])
        if weight_bits is None:
            return dict(weight_scheme=None)
        return dict(weight_scheme="uniform", weight_bits=weight_bits, per_channel=per_channel)

    blocks = dict(deploy.named_blocks())
    new_blocks: dict[str, nn.Module] = {}
    for name, fused in blocks.items():
        if name in quantized:
            a_bits = act_bits if name in act_layers else None
            kw = layer_kw(name)
            if kw["weight_scheme"] is None and a_bits is None:
                new_blocks[name] = fused  # nothing to quantize here
            else:
                new_blocks[name] = QuantConvBlock.from_fused(fused, act_bits=a_bits, validate=validate, **kw)
        else:
            new_blocks[name] = fused

    def factory(i, o, s, stage, index):
        return new_blocks["stage0" if stage == 0 else f"stage{stage}.{index}"]

    device, dtype = _model_device_dtype(deploy)
    net = VGGNet(factory, deploy.num_blocks, deploy.widths, deploy.strides, deploy.num_classes, deploy.in_channels)
    if "linear" in quantized and (layer_kw("linear")["weight_scheme"] is not None or "linear" in act_layers):
        a_bits = act_bits if "linear" in act_layers else None
        net.linear = QuantLinear.from_linear(deploy.linear, act_bits=a_bits, validate=validate,
                                             **layer_kw("linear"))
    else:
        net.linear = deploy.linear
    cfg = dict(weight_bits=weight_bits, act_bits=act_bits, per_channel=per_channel,
               keep_first_fp32=keep_first_fp32, keep_last_fp32=keep_last_fp32)
    cfg.update(config or {})
    qmodel = QuantizedModel(net.to(device=device, dtype=dtype), cfg)
    layers = dict(qmodel.named_layers())
    for name, (lo, hi) in act_ranges.items():
        layers[name].act_quant.set_range(lo, hi)
    return qmodel.eval()


def _is_qat_block(block: nn.Module) -> bool:
    """Duck type of :class:`repspec.torch_impl.quantization.qat.QATBlock` (no import: the QAT module builds on this one)."""
    return callable(getattr(block, "fused_kernel_bias", None)) and hasattr(block, "weight_quant") \
        and hasattr(block, "act_quant")


def has_qat_blocks(model: nn.Module) -> bool:
    """SPEC §5: whether a :class:`VGGNet` holds QAT blocks (``repspec.torch_impl.quantization.qat.make_qat_model``)."""
    return isinstance(model, VGGNet) and any(_is_qat_block(b) for _, b in model.named_blocks())


@torch.no_grad()
def quantized_model_from_qat(model: VGGNet, *, validate: bool = True) -> QuantizedModel:
    """SPEC §5: the deployed :class:`QuantizedModel` of a QAT model (uniform QAT or ClusterQAT).

    For every QAT block (``fused_kernel_bias()``, ``weight_quant``, ``act_quant``): the
    fused kernel and bias from the block's own (frozen-statistics) fusion; a k-means
    quantizer's ``codebook()`` (centroids + indices) is stored as is, a uniform one
    (``bits``, ``per_channel``) is re-quantized (the same codes as its forward); the
    activation range is copied. Other blocks are fused (``get_equivalent_kernel_bias``);
    the linear head is copied (FP). In eval mode the result computes exactly what the
    QAT model computes (same codes, same conv), which export then preserves.
    """
    if not isinstance(model, VGGNet):
        raise TypeError(f"model must be a VGGNet, got {type(model).__name__}")
    check_bool(validate, "validate")
    new_blocks: dict[str, nn.Module] = {}
    for name, block in model.named_blocks():
        if not _is_qat_block(block):
            new_blocks[name] = fuse_block(block)
            continue
        kernel, bias = block.fused_kernel_bias()
        kernel, bias = kernel.detach(), bias.detach()
        wq, aq = block.weight_quant, block.act_quant
        layer = QuantConvBlock(block.in_channels, block.out_channels, block.stride, getattr(block, "groups", 1),
                               act_bits=None if aq is None else aq.bits, validate=validate, dtype=kernel.dtype,
                               device=kernel.device)
        layer.rbr_reparam.bias.copy_(bias)
        codebook = block.codebook() if callable(getattr(block, "codebook", None)) else None
        if wq is None:
            layer.set_float_weight(kernel)
        elif codebook is not None:
            layer.set_weight_codes("kmeans", codebook.indices, codebook.centroids, bits=getattr(wq, "bits", None))
        else:
            layer.quantize_weight_uniform(kernel, wq.bits, bool(getattr(wq, "per_channel", False)))
        if aq is not None:
            if int(aq.initialized) == 0:
                raise ValueError(f"block {name!r}: its activation quantizer has no range yet (run training "
                                 "forwards or set_range first)")
            layer.act_quant.lo.copy_(aq.lo)
            layer.act_quant.hi.copy_(aq.hi)
            layer.act_quant.initialized.fill_(1)
        new_blocks[name] = layer.eval()

    def factory(i, o, s, stage, index):
        return new_blocks["stage0" if stage == 0 else f"stage{stage}.{index}"]

    device, dtype = _model_device_dtype(model)
    net = VGGNet(factory, model.num_blocks, model.widths, model.strides, model.num_classes, model.in_channels)
    lin = model.linear
    net.linear = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                           dtype=lin.weight.dtype, device=lin.weight.device)
    net.linear.load_state_dict(lin.state_dict())
    schemes = sorted({getattr(b, "weight_scheme", None) or "fp" for b in new_blocks.values()})
    return QuantizedModel(net.to(device=device, dtype=dtype), dict(source="qat", schemes=schemes)).eval()


def _take_batches(loader, num_batches: int, device, dtype) -> list[Tensor]:
    if isinstance(loader, (Tensor, str, bytes)) or not isinstance(loader, Iterable):
        raise TypeError(f"calib_loader must be an iterable of batches (e.g. a DataLoader), got "
                        f"{type(loader).__name__}")
    out = []
    for i, batch in enumerate(loader):
        if i >= num_batches:
            break
        x = _batch_input(batch, f"calib_loader batch {i}")
        x = x.to(device=device, dtype=dtype if x.is_floating_point() else None)
        out.append(x)
    if not out:
        raise ValueError("calib_loader yielded no batch")
    return out


@torch.no_grad()
def calibrate_activations(deploy: VGGNet, batches: list[Tensor], layer_names, *, bits: int, calibrator: str,
                          calibrator_options: Mapping | None = None,
                          progress: bool = False) -> dict[str, tuple[float, float]]:
    """SPEC §5: ``{layer: (lo, hi)}`` of the inputs of ``layer_names`` in the FP deploy network ``deploy``.

    One observer per layer (forward pre-hooks); two-pass calibrators see ``batches`` twice.
    """
    options = dict(calibrator_options or {})
    layers = dict(list(deploy.named_blocks()) + [("linear", deploy.linear)])
    observers = {n: make_observer(calibrator, bits, **options) for n in layer_names}
    handles = [layers[n].register_forward_pre_hook(lambda mod, args, obs=obs: obs.observe(args[0]))
               for n, obs in observers.items()]
    passes = max((o.passes for o in observers.values()), default=1)
    was_training = deploy.training
    deploy.eval()
    try:
        bar = tqdm(total=passes * len(batches), desc=f"calibrating ({calibrator})", disable=None if progress else True,
                   leave=False)
        for p in range(passes):
            if p:
                for o in observers.values():
                    o.next_pass()
            for x in batches:
                deploy(x)
                bar.update(1)
        bar.close()
    finally:
        for h in handles:
            h.remove()
        deploy.train(was_training)
    return {n: o.compute_range() for n, o in observers.items()}


def ptq_quantize(model: nn.Module, calib_loader, *, weight_bits: int | None = 8, act_bits: int | None = 8,
                 calibrator: str = "minmax", calibrator_options: Mapping | None = None, per_channel: bool = False,
                 keep_first_fp32: bool = True, keep_last_fp32: bool = True, num_batches: int = 8,
                 progress: bool = True, codebooks: Mapping[str, Tensor] | None = None,
                 validate: bool = True) -> QuantizedModel:
    """SPEC §5: post-training quantization of a registry model (see the module docstring).

    ``calibrator``: one of ``'minmax'``, ``'moving_average_minmax'``, ``'percentile'``,
    ``'mse'``, ``'entropy'`` with its reference options in ``calibrator_options``
    (``momentum``, ``percentile``, ``candidates``, ``num_bins``). ``calib_loader`` yields
    tensors or ``(inputs, targets)``; the first ``num_batches`` are used (all of them if
    fewer). ``progress`` shows a tqdm bar. Every argument is validated before any work.
    """
    if not isinstance(model, VGGNet):
        raise TypeError(f"model must be a VGGNet (a registry model), got {type(model).__name__}")
    weight_bits = _check_optional_bits(weight_bits, "weight_bits", 2)
    act_bits = _check_optional_bits(act_bits, "act_bits")
    if not isinstance(calibrator, str):
        raise TypeError(f"calibrator must be one of {METHODS}, got {type(calibrator).__name__}")
    if calibrator not in METHODS:
        raise ValueError(f"calibrator must be one of {METHODS}, got {calibrator!r}")
    if calibrator_options is not None and not isinstance(calibrator_options, Mapping):
        raise TypeError(f"calibrator_options must be a mapping, got {type(calibrator_options).__name__}")
    make_observer(calibrator, act_bits or 8, **dict(calibrator_options or {}))  # validates the options
    if isinstance(num_batches, bool) or not isinstance(num_batches, numbers.Integral) or num_batches < 1:
        raise ValueError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    for v, n in ((per_channel, "per_channel"), (keep_first_fp32, "keep_first_fp32"),
                 (keep_last_fp32, "keep_last_fp32"), (progress, "progress")):
        check_bool(v, n)
    deploy = convert_to_deploy(model)
    names = [p for p, _ in deploy.named_blocks()]
    quantized = [n for i, n in enumerate(names) if not (keep_first_fp32 and i == 0)]
    if not keep_last_fp32:
        quantized.append("linear")
    ranges = None
    if act_bits is not None and quantized:
        device, dtype = _model_device_dtype(deploy)
        batches = _take_batches(calib_loader, int(num_batches), device, dtype)
        ranges = calibrate_activations(deploy, batches, quantized, bits=act_bits, calibrator=calibrator,
                                       calibrator_options=calibrator_options, progress=progress)
    config = dict(calibrator=calibrator, calibrator_options=dict(calibrator_options or {}),
                  num_batches=int(num_batches))
    return build_quantized_model(deploy, weight_bits=weight_bits, act_bits=act_bits, per_channel=per_channel,
                                 keep_first_fp32=keep_first_fp32, keep_last_fp32=keep_last_fp32,
                                 codebooks=codebooks, act_ranges=ranges, validate=validate, config=config)


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device=None) -> float:
    """SPEC §5: top-1 accuracy of ``model`` (eval mode) over ``loader`` of ``(inputs, targets)`` batches.

    Inputs are moved to ``device`` (default: the model's) and dtype; the model's
    training flag is restored afterwards. Returns a float in ``[0, 1]``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    mdevice, dtype = _model_device_dtype(model)
    device = mdevice if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for i, batch in enumerate(loader):
            if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
                raise TypeError(f"loader batch {i} must be an (inputs, targets) pair, got {type(batch).__name__}")
            x, y = batch[0], batch[1]
            x = x.to(device=device, dtype=dtype if x.is_floating_point() else None)
            pred = model(x).argmax(dim=1)
            correct += int((pred == y.to(pred.device)).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("loader yielded no sample")
    return correct / total
