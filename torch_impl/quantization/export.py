"""SPEC §5: export of quantized deploy models — integer codes + scales, or codebook + indices.

File format: one **safetensors** file (no pickle: loading runs no code) whose
header metadata has a single key ``"repspec"`` holding a JSON document:

.. code-block:: text

    {"format": "repspec-quantized", "format_version": 1,
     "dtype": "float32" | "float64",
     "architecture": {"num_blocks": [...], "widths": [...], "strides": [...],
                      "num_classes": K, "in_channels": C},
     "config": {...how the model was built: weight_bits, act_bits, calibrator, ...},
     "layers": [{"name": "stage0", "kind": "conv", "in": 3, "out": 8, "stride": 1, "groups": 1,
                 "weight_scheme": null | "uniform" | "kmeans", "weight_bits": b | null,
                 "per_channel": false, "act_bits": b | null}, ..., {"name": "linear", "kind": "linear", ...}],
     "sha256": "<hex digest of every tensor, see below>"}

Tensors, for each layer ``L`` (``stage0``, ``stage1.0``, …, ``linear``):

=================================  =========================================  ==========================
name                               when                                       dtype / shape
=================================  =========================================  ==========================
``L.weight``                       FP weights                                 model dtype, weight shape
``L.weight_codes``                 uniform: ``q = clamp(round(w/s), ±qmax)``  int8 (b ≤ 8) / int16
``L.weight_scale``                 uniform                                    model dtype, ``()`` or ``(O,)``
``L.weight_indices``               k-means: index into the sorted codebook    uint8 (k ≤ 256) / int16 / int32
``L.codebook``                     k-means                                    model dtype, ``(k,)``
``L.bias``                         always (convs; the linear if it has one)   model dtype, ``(O,)``
``L.act_lo``, ``L.act_hi``         activation quantizer: calibrated range     model dtype, ``()``
``L.act_scale``, ``L.act_zero_point``  the derived ``(scale, zp)``             model dtype ``()``, int32 ``()``
=================================  =========================================  ==========================

The weight is ``(q − 0)·s`` (per output channel along dim 0) or ``codebook[idx]``;
``act_scale``/``act_zero_point`` are informative (for integer kernels) and are checked
against ``act_lo``/``act_hi`` on load. ``sha256`` hashes, for every tensor in sorted
name order, the name, dtype, shape and raw little-endian bytes; a mismatch means the
file was corrupted.

Writes are **atomic**: the file is written to a temporary file in the target
directory, flushed and fsynced, then moved over the target with ``os.replace``; on
any failure the temporary file is removed and an existing target is left untouched.
:func:`load_exported` rebuilds a :class:`~repspec.torch_impl.quantization.ptq.QuantizedModel`
whose outputs are bit-identical to the exported model's (same device and dtype).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file as _save_file
from torch import Tensor, nn

from ..modules.blocks import FusedConvBlock
from ..modules.models import VGGNet
from .ptq import (
    QuantConvBlock,
    QuantizedModel,
    QuantLinear,
    build_quantized_model,
    codes_dtype,
    has_qat_blocks,
    quantized_model_from_qat,
)
from .quant import ActivationFakeQuant, activation_qparams

__all__ = ["FORMAT", "FORMAT_VERSION", "export_quantized", "load_exported", "read_metadata"]

FORMAT = "repspec-quantized"
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _digest(tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _layer_tensors(name: str, layer: nn.Module, kind: str) -> tuple[dict, dict[str, Tensor]]:
    """(metadata entry, tensors) of one layer."""
    if kind == "conv":
        inner = layer.rbr_reparam
        entry = dict(name=name, kind="conv", **{"in": layer.in_channels}, out=layer.out_channels,
                     stride=layer.stride, groups=getattr(layer, "groups", 1))
    else:
        inner = layer.linear if isinstance(layer, QuantLinear) else layer
        entry = dict(name=name, kind="linear", **{"in": inner.in_features}, out=inner.out_features,
                     bias=inner.bias is not None)
    tensors: dict[str, Tensor] = {}
    scheme = getattr(layer, "weight_scheme", None)
    entry.update(weight_scheme=scheme, weight_bits=getattr(layer, "weight_bits", None),
                 per_channel=bool(getattr(layer, "per_channel", False)))
    if scheme is None:
        tensors[f"{name}.weight"] = inner.weight.detach()
    else:
        # the layer computes with exactly its codes' dequantized weight (checked, so the file is faithful)
        if not torch.equal(layer.dequantized_weight(), inner.weight.detach()):
            raise ValueError(f"layer {name!r}: the weight no longer equals its dequantized codes "
                             "(was it modified after quantization?)")
        if scheme == "uniform":
            tensors[f"{name}.weight_codes"] = layer.weight_codes.detach()
            tensors[f"{name}.weight_scale"] = layer.weight_scale.detach()
        else:
            tensors[f"{name}.weight_indices"] = layer.weight_codes.detach()
            tensors[f"{name}.codebook"] = layer.codebook.detach()
    if inner.bias is not None:
        tensors[f"{name}.bias"] = inner.bias.detach()
    aq = getattr(layer, "act_quant", None)
    entry["act_bits"] = None if aq is None else aq.bits
    if aq is not None:
        if int(aq.initialized) == 0:
            raise ValueError(f"layer {name!r}: the activation quantizer is not calibrated (no range); "
                             "calibrate it (ptq_quantize) or set_range(lo, hi) before exporting")
        scale, zp = aq.qparams()
        tensors[f"{name}.act_lo"] = aq.lo.detach()
        tensors[f"{name}.act_hi"] = aq.hi.detach()
        tensors[f"{name}.act_scale"] = scale.detach().to(aq.lo.dtype)
        tensors[f"{name}.act_zero_point"] = zp.detach().to(torch.int32)
        entry["act_observer"] = aq.observer
        entry["act_momentum"] = aq.momentum
    return entry, tensors


def _json_config(config: Mapping) -> dict:
    try:
        return json.loads(json.dumps(dict(config)))
    except (TypeError, ValueError):
        return {k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)) for k, v in config.items()}


def export_quantized(model: nn.Module, path, *, codebooks: Mapping[str, Tensor] | None = None,
                     act_bits: int | None = None, act_ranges: Mapping[str, tuple[float, float]] | None = None,
                     keep_first_fp32: bool = True, keep_last_fp32: bool = True) -> Path:
    """SPEC §5: write ``model`` as integer codes/codebooks + scales to ``path`` (safetensors, atomic).

    ``model``: a :class:`~repspec.torch_impl.quantization.ptq.QuantizedModel` (from ``ptq_quantize`` /
    ``build_quantized_model``; then the other arguments must be left at their defaults),
    a QAT model (``repspec.torch_impl.quantization.qat.make_qat_model``, uniform or ClusterQAT: its
    codebooks, indices and activation ranges are taken as they are, see
    :func:`~repspec.torch_impl.quantization.ptq.quantized_model_from_qat`), or a registry :class:`VGGNet`
    (training or deploy form) together with ``codebooks = {layer: (k,) centroids}`` and
    optionally ``act_bits`` + ``act_ranges``: it is first turned into a QuantizedModel
    with :func:`build_quantized_model` (k-means layers = the keys of ``codebooks``, every
    other layer FP; activation quantizers only on the layers of ``act_ranges``).
    Returns the path written.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if isinstance(model, QuantizedModel):
        if codebooks is not None or act_bits is not None or act_ranges is not None:
            raise ValueError("model is already a QuantizedModel: codebooks/act_bits/act_ranges must not be given "
                             "(pass them to build_quantized_model instead)")
        qmodel = model
    elif has_qat_blocks(model):
        if codebooks is not None or act_bits is not None or act_ranges is not None:
            raise ValueError("a QAT model carries its own codebooks/ranges: codebooks/act_bits/act_ranges must "
                             "not be given")
        qmodel = quantized_model_from_qat(model)
    elif isinstance(model, VGGNet):
        if not codebooks:
            raise ValueError("a plain VGGNet needs codebooks={layer: centroids} (k-means export); for uniform "
                             "quantization export the result of ptq_quantize")
        qmodel = build_quantized_model(model, weight_bits=None, act_bits=act_bits, codebooks=codebooks,
                                       act_ranges=act_ranges, act_layers=list(act_ranges) if act_ranges else None,
                                       keep_first_fp32=keep_first_fp32,
                                       keep_last_fp32=keep_last_fp32, config=dict(scheme="kmeans"))
    else:
        raise TypeError(f"model must be a QuantizedModel or a VGGNet, got {type(model).__name__}")
    net = qmodel.net
    dtype = next(net.parameters()).dtype
    if dtype not in _DTYPES.values():
        raise ValueError(f"only float32/float64 models can be exported, got {dtype}")
    layers, tensors = [], {}
    for name, block in net.named_blocks():
        if not isinstance(block, (FusedConvBlock, QuantConvBlock)):
            raise TypeError(f"block {name!r} is a {type(block).__name__}; expected a deployed/quantized block")
        entry, t = _layer_tensors(name, block, "conv")
        layers.append(entry)
        tensors.update(t)
    entry, t = _layer_tensors("linear", net.linear, "linear")
    layers.append(entry)
    tensors.update(t)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = dict(format=FORMAT, format_version=FORMAT_VERSION,
                dtype={v: k for k, v in _DTYPES.items()}[dtype],
                architecture=dict(num_blocks=list(net.num_blocks), widths=list(net.widths),
                                  strides=list(net.strides), num_classes=net.num_classes,
                                  in_channels=net.in_channels),
                config=_json_config(qmodel.config), layers=layers, sha256=_digest(tensors))
    _atomic_save(tensors, path, {"repspec": json.dumps(meta)})
    return path


def _atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write to a temp file next to ``path``, fsync, ``os.replace``; remove the temp file on failure."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"directory {str(directory)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        _save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_metadata(path) -> dict:
    """SPEC §5 export: the JSON metadata of an exported file (``ValueError`` if it is not a repspec export)."""
    meta, _ = _read(path, tensors=False)
    return meta


def _read(path, *, tensors: bool = True) -> tuple[dict, dict[str, Tensor]]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as exc:  # safetensors raises its own SafetensorError (truncated/corrupted header or data)
        raise ValueError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupted?): {exc}") \
            from None
    if "repspec" not in header:
        raise ValueError(f"{str(path)!r} has no 'repspec' metadata: not a repspec quantized export")
    try:
        meta = json.loads(header["repspec"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r}: the 'repspec' metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r}: metadata format is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r}: unsupported format_version {meta.get('format_version')!r} "
                         f"(this reader knows {FORMAT_VERSION})")
    if tensors and _digest(data) != meta.get("sha256"):
        raise ValueError(f"{str(path)!r}: tensor checksum mismatch — the file is corrupted")
    return meta, data


def _take(data: dict[str, Tensor], key: str, shape=None, dtype=None) -> Tensor:
    if key not in data:
        raise ValueError(f"exported file is missing tensor {key!r}")
    t = data.pop(key)
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"tensor {key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"tensor {key!r} has dtype {t.dtype}, expected {dtype}")
    return t


def _load_weight(layer, entry, data, wshape, dtype) -> None:
    name, scheme = entry["name"], entry["weight_scheme"]
    if scheme is None:
        layer.set_float_weight(_take(data, f"{name}.weight", wshape, dtype))
    elif scheme == "uniform":
        bits = int(entry["weight_bits"])
        codes = _take(data, f"{name}.weight_codes", wshape, codes_dtype("uniform", bits))
        qmax = 2 ** (bits - 1) - 1
        if codes.numel() and int(codes.to(torch.int64).abs().max()) > qmax:
            raise ValueError(f"{name}.weight_codes hold values outside ±{qmax}")
        scale = _take(data, f"{name}.weight_scale", None, dtype)
        ok = (wshape[0],) if entry["per_channel"] else ()
        if tuple(scale.shape) != ok:
            raise ValueError(f"tensor {name}.weight_scale has shape {tuple(scale.shape)}, expected {ok}")
        layer.set_weight_codes("uniform", codes, scale, bits=bits, per_channel=bool(entry["per_channel"]))
    elif scheme == "kmeans":
        codebook = _take(data, f"{name}.codebook", None, dtype)
        if codebook.ndim != 1 or codebook.numel() == 0:
            raise ValueError(f"tensor {name}.codebook must be 1-D and non-empty, got {tuple(codebook.shape)}")
        idx = _take(data, f"{name}.weight_indices", wshape, codes_dtype("kmeans", codebook.numel()))
        i64 = idx.to(torch.int64)
        if idx.numel() and (int(i64.min()) < 0 or int(i64.max()) >= codebook.numel()):
            raise ValueError(f"{name}.weight_indices hold indices outside [0, {codebook.numel()})")
        layer.set_weight_codes("kmeans", idx, codebook, bits=entry.get("weight_bits"))
    else:
        raise ValueError(f"layer {name!r}: unknown weight_scheme {scheme!r}")


def _load_act(layer, entry, data, dtype) -> None:
    name = entry["name"]
    aq: ActivationFakeQuant = layer.act_quant
    lo = _take(data, f"{name}.act_lo", (), dtype)
    hi = _take(data, f"{name}.act_hi", (), dtype)
    scale = _take(data, f"{name}.act_scale", (), dtype)
    zp = _take(data, f"{name}.act_zero_point", (), torch.int32)
    with torch.no_grad():
        aq.lo.copy_(lo)
        aq.hi.copy_(hi)
        aq.initialized.fill_(1)
    s, z = activation_qparams(aq.lo, aq.hi, aq.bits)
    if not (torch.equal(s.to(scale.dtype), scale) and int(z) == int(zp)):
        raise ValueError(f"layer {name!r}: act_scale/act_zero_point do not match act_lo/act_hi")


@torch.no_grad()
def load_exported(path, *, device=None) -> QuantizedModel:
    """SPEC §5: rebuild the :class:`QuantizedModel` saved by :func:`export_quantized` (eval mode).

    Every tensor is checked (presence, shape, dtype, code ranges, checksum) before the
    model is returned; a truncated, corrupted or foreign file raises ``ValueError``
    naming the problem. ``device``: where to put the model (default CPU).
    """
    meta, data = _read(path)
    try:
        dtype = _DTYPES[meta["dtype"]]
        arch = meta["architecture"]
        entries = {e["name"]: e for e in meta["layers"]}
        num_blocks, widths, strides = arch["num_blocks"], arch["widths"], arch["strides"]
        num_classes, in_channels = arch["num_classes"], arch["in_channels"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{str(path)!r}: incomplete metadata ({exc!r})") from None

    def factory(i, o, s, stage, index):
        name = "stage0" if stage == 0 else f"stage{stage}.{index}"
        if name not in entries:
            raise ValueError(f"metadata has no layer {name!r}")
        e = entries[name]
        if (e.get("in"), e.get("out"), e.get("stride")) != (i, o, s):
            raise ValueError(f"layer {name!r}: metadata shape does not match the architecture")
        g = int(e.get("groups", 1))
        if e["weight_scheme"] is None and e["act_bits"] is None:
            block = FusedConvBlock(i, o, s, g).to(dtype)
            block.rbr_reparam.weight.copy_(_take(data, f"{name}.weight", (o, i // g, 3, 3), dtype))
            block.rbr_reparam.bias.copy_(_take(data, f"{name}.bias", (o,), dtype))
            return block.eval()
        block = QuantConvBlock(i, o, s, g, act_bits=e["act_bits"], dtype=dtype)
        _load_weight(block, e, data, (o, i // g, 3, 3), dtype)
        block.rbr_reparam.bias.copy_(_take(data, f"{name}.bias", (o,), dtype))
        if e["act_bits"] is not None:
            _load_act(block, e, data, dtype)
        return block

    net = VGGNet(factory, num_blocks, widths, strides, num_classes, in_channels).to(dtype)
    e = entries.get("linear")
    if e is None:
        raise ValueError("metadata has no layer 'linear'")
    has_bias = bool(e.get("bias", True))
    if e["weight_scheme"] is None and e["act_bits"] is None:
        lin = nn.Linear(e["in"], e["out"], bias=has_bias, dtype=dtype)
        lin.weight.copy_(_take(data, "linear.weight", (e["out"], e["in"]), dtype))
        if has_bias:
            lin.bias.copy_(_take(data, "linear.bias", (e["out"],), dtype))
    else:
        lin = QuantLinear(e["in"], e["out"], has_bias, act_bits=e["act_bits"], dtype=dtype)
        _load_weight(lin, e, data, (e["out"], e["in"]), dtype)
        if has_bias:
            lin.linear.bias.copy_(_take(data, "linear.bias", (e["out"],), dtype))
        if e["act_bits"] is not None:
            _load_act(lin, e, data, dtype)
    net.linear = lin
    if data:
        raise ValueError(f"exported file has unexpected tensors: {sorted(data)}")
    model = QuantizedModel(net, meta.get("config", {}))
    if device is not None:
        model = model.to(device)
    return model.eval()
