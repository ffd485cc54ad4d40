"""Deployed RepVGG-family networks as ONNX: FP32, standard QDQ INT8, and their verification with onnxruntime.

:func:`export_onnx` ``(model, path)`` writes

- a **FP32** graph for any registry :class:`~repspec.torch_impl.modules.models.VGGNet`
  (converted with ``convert_to_deploy`` first): per block ``Conv(3x3, pad 1, stride s,
  group g, bias) → [SE] → Relu``, then ``GlobalAveragePool → Flatten → Gemm``;
- a **QDQ** graph for a :class:`~repspec.torch_impl.quantization.ptq.QuantizedModel`
  (PTQ or QAT result), the standard form onnxruntime and TensorRT understand:

  - activation fake-quant → ``QuantizeLinear(uint8, scale, zp) → DequantizeLinear``
    (asymmetric per tensor, SPEC §5; 8-bit only — ONNX ``uint8`` saturates at 255);
  - uniform weights → ``int8`` code initializer ``→ DequantizeLinear`` (zero point 0;
    per tensor, or per output channel with ``axis=0``; ``weight_bits <= 8``);
  - k-means weights → ``uint8`` index initializer ``→ Cast(int64) → Gather(codebook)``:
    ONNX's ``DequantizeLinear`` can only express an affine grid ``(q − zp)·s``, and a
    k-means codebook is not one, so a Gather from the float codebook is the exact form
    (the file keeps the 1-byte indices; a runtime runs a float conv on the exact
    centroid values — no integer kernel applies);
  - the bias: float (``bias='float'``, default — the fake-quant model's arithmetic) or
    ``int32`` codes with scale ``s_x·s_w`` behind a ``DequantizeLinear``
    (``bias='int32'``, what integer ``QLinearConv`` kernels need; the bias is then
    rounded to that grid).

Graphs are built with the ``onnx`` package directly (``method='repspec'``): exact,
deterministic initializer names (``stage1.0.rbr_reparam.weight`` …, ``…_q`` for codes),
and quick. ``method='torch'`` (FP32 only) uses ``torch.onnx.export`` (the
``torch.export``-based exporter, which needs ``onnxscript``) instead; it is much slower
(about 10 s for ``tiny8`` on a loaded 2-core machine) and emits ``ReduceMean``/``Reshape``
for the head. :func:`verify_onnx` accepts both forms.

Metadata (``metadata_props``) records the claim: ``repspec.model`` (registry name, when
given), ``repspec.format`` (``fp32``/``qdq``), ``repspec.num_blocks``, ``repspec.widths``,
``repspec.strides``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from repspec.core.vocabulary import ONNX_BIAS_MODES as BIAS_MODES
from torch import Tensor, nn

from ..io import atomic_write_bytes
from ..modules.deploy import convert_to_deploy
from ..modules.models import ARCHITECTURES, VGGNet, create_model, list_models
from .ptq import QuantConvBlock, QuantizedModel, QuantLinear
from .quant import fake_quantize_activation

__all__ = ["export_onnx", "verify_onnx", "onnx_session", "OnnxVerification", "OnnxExportError", "BIAS_MODES"]

#: values of ``export_onnx(bias=...)``
DEFAULT_OPSET = 17
_INPUT, _OUTPUT = "input", "logits"


class OnnxExportError(ValueError):
    """A model that has no faithful ONNX form (e.g. activation bits other than 8), or a file that is not one."""


def _onnx():
    try:
        import onnx  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - an install without the onnx extra
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'repspec[onnx]'") from exc
    return onnx


def _np(t: Tensor, dtype=np.float32) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().astype(dtype)


class _Graph:
    """A small builder: nodes, initializers, unique names."""

    def __init__(self):
        self.onnx = _onnx()
        self.nodes, self.inits, self._n = [], [], 0

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.array(array, order="C"), name))  # keeps 0-d
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, **attrs) -> str:
        self._n += 1
        out = f"{name}_out" if name else f"t{self._n}"
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=name or f"n{self._n}", **attrs))
        return out


def _act_qdq(g: _Graph, x: str, aq, prefix: str) -> str:
    if aq is None:
        return x
    if aq.bits != 8:
        raise OnnxExportError(f"{prefix}: activation bits {aq.bits} have no standard QDQ form (uint8 saturates at "
                              f"255); export 8-bit activations")
    scale, zp = aq.qparams()
    s = g.init(f"{prefix}.act_scale", np.array(float(scale), dtype=np.float32))
    z = g.init(f"{prefix}.act_zero_point", np.array(int(zp), dtype=np.uint8))
    q = g.node("QuantizeLinear", [x, s, z], f"{prefix}.act_quantize")
    return g.node("DequantizeLinear", [q, s, z], f"{prefix}.act_dequantize")


def _weight(g: _Graph, layer, weight: Tensor, prefix: str) -> tuple[str, np.ndarray | None]:
    """The weight input of a conv/gemm; returns (tensor name, the weight scale array for int32 bias or None)."""
    scheme = getattr(layer, "weight_scheme", None)
    if scheme is None:
        return g.init(f"{prefix}.weight", _np(weight)), None
    if scheme == "uniform":
        if layer.weight_bits > 8:
            raise OnnxExportError(f"{prefix}: weight bits {layer.weight_bits} do not fit int8 codes")
        codes = layer.weight_codes.detach().to("cpu", torch.int64).numpy().astype(np.int8)
        scale = _np(layer.weight_scale)
        scale = scale.reshape(-1) if layer.per_channel else scale.reshape(())  # 1-D scale = per-axis in ONNX
        q = g.init(f"{prefix}.weight_q", codes)
        s = g.init(f"{prefix}.weight_scale", scale)
        z = g.init(f"{prefix}.weight_zero_point", np.zeros(scale.shape, dtype=np.int8))
        attrs = {"axis": 0} if scale.ndim == 1 else {}
        return g.node("DequantizeLinear", [q, s, z], f"{prefix}.weight_dequantize", **attrs), scale
    if scheme == "kmeans":
        k = layer.codebook.numel()
        if k > 256:
            raise OnnxExportError(f"{prefix}: a k-means codebook of {k} entries does not fit uint8 indices")
        idx = g.init(f"{prefix}.weight_index", layer.weight_codes.detach().to("cpu", torch.int64).numpy()
                     .astype(np.uint8))
        cb = g.init(f"{prefix}.codebook", _np(layer.codebook))
        wide = g.node("Cast", [idx], f"{prefix}.weight_index_cast", to=_onnx().TensorProto.INT64)
        return g.node("Gather", [cb, wide], f"{prefix}.weight_gather", axis=0), None
    raise OnnxExportError(f"{prefix}: unknown weight scheme {scheme!r}")


def _bias(g: _Graph, bias: Tensor, prefix: str, mode: str, aq, w_scale) -> str:
    if mode == "int32" and aq is not None and w_scale is not None:
        s_x = float(aq.qparams()[0])
        scale = (np.float32(s_x) * w_scale.astype(np.float32)).astype(np.float32)
        b = _np(bias)
        safe = np.where(scale > 0, scale, np.float32(1))
        codes = np.where(scale > 0, np.rint(b / safe), 0).astype(np.int64)
        if np.abs(codes).max(initial=0) >= 2**31:
            raise OnnxExportError(f"{prefix}: the bias does not fit int32 codes at scale s_x*s_w")
        q = g.init(f"{prefix}.bias_q", codes.astype(np.int32))
        s = g.init(f"{prefix}.bias_scale", scale if scale.size > 1 else scale.reshape(()))
        z = g.init(f"{prefix}.bias_zero_point", np.zeros(scale.shape if scale.size > 1 else (), dtype=np.int32))
        attrs = {"axis": 0} if scale.size > 1 else {}
        return g.node("DequantizeLinear", [q, s, z], f"{prefix}.bias_dequantize", **attrs)
    return g.init(f"{prefix}.bias", _np(bias))


def _se(g: _Graph, x: str, se: nn.Module, prefix: str) -> str:
    pooled = g.node("GlobalAveragePool", [x], f"{prefix}.se.pool")
    d = g.node("Conv", [pooled, g.init(f"{prefix}.se.down.weight", _np(se.down.weight)),
                        g.init(f"{prefix}.se.down.bias", _np(se.down.bias))], f"{prefix}.se.down", kernel_shape=[1, 1])
    d = g.node("Relu", [d], f"{prefix}.se.relu")
    u = g.node("Conv", [d, g.init(f"{prefix}.se.up.weight", _np(se.up.weight)),
                        g.init(f"{prefix}.se.up.bias", _np(se.up.bias))], f"{prefix}.se.up", kernel_shape=[1, 1])
    u = g.node("Sigmoid", [u], f"{prefix}.se.sigmoid")
    return g.node("Mul", [x, u], f"{prefix}.se.mul")


def _build(net: VGGNet, bias_mode: str) -> _Graph:
    g = _Graph()
    x = _INPUT
    for prefix, block in net.named_blocks():
        if isinstance(block, QuantConvBlock):
            aq, weight, bias = block.act_quant, block.rbr_reparam.weight, block.rbr_reparam.bias
        elif hasattr(block, "get_equivalent_kernel_bias"):
            aq = None
            with torch.no_grad():
                weight, bias = block.get_equivalent_kernel_bias()
        else:
            raise OnnxExportError(f"block {prefix!r} ({type(block).__name__}) is not a deployable block")
        x = _act_qdq(g, x, aq, prefix)
        w, w_scale = _weight(g, block, weight, f"{prefix}.rbr_reparam")
        b = _bias(g, bias, f"{prefix}.rbr_reparam", bias_mode, aq, w_scale)
        s, grp = int(block.stride), int(getattr(block, "groups", 1))
        x = g.node("Conv", [x, w, b], f"{prefix}.rbr_reparam", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                   strides=[s, s], group=grp)
        se = getattr(block, "se", None)
        if se is not None:
            x = _se(g, x, se, prefix)
        x = g.node("Relu", [x], f"{prefix}.relu")
    x = g.node("GlobalAveragePool", [x], "gap")
    x = g.node("Flatten", [x], "flatten", axis=1)
    lin = net.linear
    if isinstance(lin, QuantLinear):
        x = _act_qdq(g, x, lin.act_quant, "linear")
        w, w_scale = _weight(g, lin, lin.linear.weight, "linear")
        b = _bias(g, lin.linear.bias, "linear", bias_mode, lin.act_quant, w_scale)
    else:
        w, b = g.init("linear.weight", _np(lin.weight)), g.init("linear.bias", _np(lin.bias))
    g.nodes.append(g.onnx.helper.make_node("Gemm", [x, w, b], [_OUTPUT], name="linear", transB=1))
    return g


def _check_path_arg(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def export_onnx(model: nn.Module, path, *, model_name: str | None = None, bias: str = "float",
                opset: int = DEFAULT_OPSET, method: str = "repspec", image_size: int = 224) -> Path:
    """Write ``model`` as ONNX (FP32 for a ``VGGNet``, QDQ for a ``QuantizedModel``; see the module docstring).

    ``model_name`` (a registry name) is recorded as the claim :func:`verify_onnx` checks.
    The input is ``input`` ``(N, C, H, W)`` float32 with symbolic ``N, H, W``; the output
    ``logits`` ``(N, K)``. ``opset`` >= 13 (per-channel ``DequantizeLinear``). The file is
    checked with ``onnx.checker`` and written atomically. ``image_size`` only serves
    ``method='torch'`` (the example input's size). The model is not modified.
    """
    onnx = _onnx()
    path = _check_path_arg(path)
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    if method not in ("repspec", "torch"):
        raise ValueError(f"method must be 'repspec' or 'torch', got {method!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 21:
        raise ValueError(f"opset must be an integer in 13..21, got {opset!r}")
    if model_name is not None and model_name not in ARCHITECTURES:
        raise ValueError(f"unknown model name {model_name!r}; valid names: {', '.join(list_models())}")
    if isinstance(model, QuantizedModel):
        net, fmt = model.net, "qdq"
        if method == "torch":
            raise ValueError("method='torch' exports FP32 VGGNets only; QDQ graphs are built with method='repspec'")
    elif isinstance(model, VGGNet):
        net, fmt = convert_to_deploy(model).float(), "fp32"
    else:
        raise TypeError(f"model must be a VGGNet or a QuantizedModel, got {type(model).__name__}")
    if model_name is not None:
        want, want_in = _claimed_layout(model_name, net.num_classes)
        have = [(p, b.in_channels, b.out_channels, b.stride, getattr(b, "groups", 1), getattr(b, "se", None) is not None)
                for p, b in net.named_blocks()]
        if want_in != net.in_channels or [w[1:] for w in want] != [h[1:] for h in have]:
            raise ValueError(f"model_name={model_name!r} does not describe this network (its deploy layout differs: "
                             f"{len(want)} vs {len(have)} blocks, or channels/strides/groups); pass the right name "
                             f"or None")
    meta = {"repspec.format": fmt, "repspec.num_blocks": json.dumps(list(net.num_blocks)),
            "repspec.widths": json.dumps(list(net.widths)), "repspec.strides": json.dumps(list(net.strides))}
    if model_name is not None:
        meta["repspec.model"] = model_name
    if method == "torch":
        proto = _torch_export(net, image_size, opset)
    else:
        g = _build(net, bias)
        tp = onnx.TensorProto
        inp = onnx.helper.make_tensor_value_info(_INPUT, tp.FLOAT, ["N", net.in_channels, "H", "W"])
        out = onnx.helper.make_tensor_value_info(_OUTPUT, tp.FLOAT, ["N", net.num_classes])
        graph = onnx.helper.make_graph(g.nodes, "repspec_" + (model_name or "vggnet"), [inp], [out], g.inits)
        proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                       producer_name="repspec")
        proto.ir_version = min(proto.ir_version, 9)  # readable by onnxruntime releases of the last two years
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def _torch_export(net: VGGNet, image_size: int, opset: int):
    """``torch.onnx.export`` (torch.export-based, needs onnxscript) with a symbolic batch dimension."""
    x = torch.zeros(2, net.in_channels, image_size, image_size)
    prog = torch.onnx.export(net.eval(), (x,), dynamo=True, input_names=[_INPUT], output_names=[_OUTPUT],
                             opset_version=max(opset, 18), dynamic_shapes=({0: torch.export.Dim("N")},),
                             verbose=False)
    return prog.model_proto


# ----------------------------------------------------------------------------- onnxruntime


def onnx_session(path_or_bytes, *, optimize: bool = True, threads: int | None = 1):
    """An ``onnxruntime.InferenceSession`` on the CPU. ``optimize=False`` disables every graph
    optimization, so QDQ pairs execute as written (float arithmetic, the fake-quant semantics);
    ``optimize=True`` lets ORT fuse QDQ into integer kernels (``QLinearConv``)."""
    import onnxruntime as ort  # noqa: PLC0415

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = str(path_or_bytes) if isinstance(path_or_bytes, (str, os.PathLike)) else path_or_bytes
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------ verification


@dataclass
class OnnxVerification:
    """What :func:`verify_onnx` found. ``ok`` is the verdict; ``reasons`` say why not (one line each)."""

    ok: bool
    model_name: str | None
    format: str
    num_layers: int = 0
    reasons: list[str] = field(default_factory=list)
    max_abs_error: float | None = None
    top1_agreement: float | None = None
    details: dict = field(default_factory=dict)

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        what = self.model_name or "unnamed network"
        err = "" if self.max_abs_error is None else f", max |logit error| {self.max_abs_error:.3g}"
        top1 = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.4f}"
        why = "" if self.ok else ": " + "; ".join(self.reasons)
        return f"{verdict}: {self.format} ONNX of {what}, {self.num_layers} fused conv layers{err}{top1}{why}"


@dataclass
class _Layer:
    name: str
    weight: np.ndarray
    bias: np.ndarray
    stride: int
    groups: int
    act: tuple[float, int] | None = None  # (scale, zero point) of the input QDQ
    se: dict | None = None


_ALLOWED = {"Conv", "Relu", "QuantizeLinear", "DequantizeLinear", "GlobalAveragePool", "ReduceMean", "Flatten",
            "Reshape", "Gemm", "MatMul", "Add", "Identity", "Cast", "Gather", "Sigmoid", "Mul", "Constant",
            "Transpose", "Shape", "Concat", "Unsqueeze", "Squeeze"}


class _Parsed:
    def __init__(self, proto):
        onnx = _onnx()
        self.proto = proto
        self.consts = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
        for n in proto.graph.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = onnx.numpy_helper.to_array(a.t)
        self.producer = {o: n for n in proto.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in proto.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def value(self, name: str) -> np.ndarray:
        """The constant value of a tensor (initializer, Constant, or DQ/Gather/Cast/Identity of constants)."""
        if name in self.consts:
            return self.consts[name]
        n = self.producer.get(name)
        if n is None:
            raise OnnxExportError(f"tensor {name!r} is not a constant")
        if n.op_type == "Identity":
            return self.value(n.input[0])
        if n.op_type == "Cast":
            return self.value(n.input[0]).astype(np.int64)
        if n.op_type == "Gather":
            return np.take(self.value(n.input[0]), self.value(n.input[1]).astype(np.int64), axis=0)
        if n.op_type == "DequantizeLinear":
            q = self.value(n.input[0]).astype(np.float64)
            s = self.value(n.input[1]).astype(np.float32)
            z = self.value(n.input[2]).astype(np.float64) if len(n.input) > 2 and n.input[2] else 0.0
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if np.ndim(s) == 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                s = s.reshape(shape)
                z = np.reshape(z, shape) if np.ndim(z) else z
            return ((q - z).astype(np.float32) * s).astype(np.float32)
        raise OnnxExportError(f"tensor {name!r} comes from a {n.op_type} node, not from constants")

    def attr(self, node, name, default=None):
        onnx = _onnx()
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default


def _scalar(a) -> float:
    a = np.asarray(a)
    if a.size != 1:
        raise OnnxExportError(f"expected a per-tensor (scalar) quantization parameter, got shape {a.shape}")
    return float(a.reshape(-1)[0])


def _parse(proto) -> tuple[list[_Layer], np.ndarray, np.ndarray, tuple[float, int] | None, list[str]]:
    """Layers in graph order, the classifier (W (K, C), b), the classifier's input QDQ, and structural problems."""
    p = _Parsed(proto)
    problems = []
    ops = {n.op_type for n in proto.graph.node}
    for op in sorted(ops - _ALLOWED):
        bad = next(n for n in proto.graph.node if n.op_type == op)
        problems.append(f"contains a {op} node ({bad.name or bad.output[0]!r}); a fused RepVGG-family network is "
                        f"only 3x3 Conv + ReLU (+ SE), pooling and a linear layer")
    for n in proto.graph.node:
        if n.op_type == "Add" and not any(getattr(p.producer.get(i), "op_type", None) == "MatMul" for i in n.input):
            problems.append(f"contains an Add node ({n.name or n.output[0]!r}) that is not a classifier bias: a "
                            f"residual or multi-branch (unfused) block")
    layers: list[_Layer] = []
    se_convs: set[str] = set()
    for n in proto.graph.node:
        if n.op_type != "Conv" or n.output[0] in se_convs:
            continue
        try:
            w = p.value(n.input[1]).astype(np.float32)
        except OnnxExportError as exc:
            problems.append(f"Conv {n.name!r}: weight {exc}")
            continue
        k = list(p.attr(n, "kernel_shape", list(w.shape[2:])))
        pads = list(p.attr(n, "pads", [0, 0, 0, 0]))
        if k != [3, 3] or pads != [1, 1, 1, 1]:
            problems.append(f"Conv {n.name!r} has kernel {k} and pads {pads}; every fused RepVGG conv is 3x3 with "
                            f"padding 1")
            continue
        strides = list(p.attr(n, "strides", [1, 1]))
        if len(n.input) < 3 or not n.input[2]:
            problems.append(f"Conv {n.name!r} has no bias; a fused RepVGG conv always has one")
            continue
        b = p.value(n.input[2]).astype(np.float32)
        act = None
        src = p.producer.get(n.input[0])
        if src is not None and src.op_type == "DequantizeLinear" and src.input[0] not in p.consts:
            qn = p.producer.get(src.input[0])
            if qn is not None and qn.op_type == "QuantizeLinear":
                act = (_scalar(p.value(qn.input[1])), int(_scalar(p.value(qn.input[2]))) if len(qn.input) > 2 else 0)
        layer = _Layer(n.name, w, b, int(strides[0]), int(p.attr(n, "group", 1)), act)
        layer.se = _se_after(p, n, se_convs)
        outs = [c.op_type for c in p.consumers.get(n.output[0], [])]
        if layer.se is None and outs != ["Relu"]:
            problems.append(f"Conv {n.name!r} is followed by {outs or 'nothing'}; a fused RepVGG conv is followed "
                            f"by exactly one ReLU")
        layers.append(layer)
    gemm = [n for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
    lin_w = lin_b = None
    lin_act = None
    if len(gemm) != 1:
        problems.append(f"expected one classifier (Gemm/MatMul), found {len(gemm)}")
    else:
        n = gemm[0]
        try:
            w = p.value(n.input[1]).astype(np.float32)
            trans_b = n.op_type == "Gemm" and p.attr(n, "transB", 0) == 1
            lin_w = w if trans_b else w.T
            if n.op_type == "Gemm" and len(n.input) > 2:
                lin_b = p.value(n.input[2]).astype(np.float32)
            else:
                add = [c for c in p.consumers.get(n.output[0], []) if c.op_type == "Add"]
                lin_b = p.value(next(i for i in add[0].input if i != n.output[0])).astype(np.float32) if add \
                    else np.zeros(lin_w.shape[0], np.float32)
            src = p.producer.get(n.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                qn = p.producer.get(src.input[0])
                if qn is not None and qn.op_type == "QuantizeLinear":
                    lin_act = (_scalar(p.value(qn.input[1])), int(_scalar(p.value(qn.input[2]))))
        except (OnnxExportError, StopIteration, IndexError) as exc:
            problems.append(f"classifier {n.name!r}: {exc}")
    if not layers:
        problems.append("no 3x3 convolution found")
    return layers, lin_w, lin_b, lin_act, problems


def _se_after(p: _Parsed, conv, se_convs: set) -> dict | None:
    """Recognize ``pool → Conv1x1 → Relu → Conv1x1 → Sigmoid → Mul(x, ·)`` after ``conv``; None if absent."""
    outs = p.consumers.get(conv.output[0], [])
    pool = next((c for c in outs if c.op_type == "GlobalAveragePool"), None)
    mul = next((c for c in outs if c.op_type == "Mul"), None)
    if pool is None or mul is None:
        return None
    try:
        down = p.consumers[pool.output[0]][0]
        relu = p.consumers[down.output[0]][0]
        up = p.consumers[relu.output[0]][0]
        if (down.op_type, relu.op_type, up.op_type) != ("Conv", "Relu", "Conv"):
            return None
        se_convs.update({down.output[0], up.output[0]})
        return {"down_w": p.value(down.input[1]), "down_b": p.value(down.input[2]),
                "up_w": p.value(up.input[1]), "up_b": p.value(up.input[2])}
    except (KeyError, IndexError, OnnxExportError):
        return None


def _torch_twin(layers: list[_Layer], lin_w, lin_b, lin_act, in_channels: int) -> nn.Module:
    """A repspec float32 network computing what the parsed layers say (fake-quant where the file has QDQ)."""
    def t(a):
        return torch.from_numpy(np.array(a, dtype=np.float32))  # a writable float32 copy

    layers = [_Layer(L.name, t(L.weight), t(L.bias), L.stride, L.groups, L.act,
                     None if L.se is None else {k: t(v) for k, v in L.se.items()}) for L in layers]
    lin_w, lin_b = t(lin_w), t(lin_b)

    class Twin(nn.Module):
        def forward(self, x):
            for L in layers:
                if L.act is not None:
                    x = fake_quantize_activation(x, torch.tensor(L.act[0]), torch.tensor(L.act[1]), 8)
                x = torch.nn.functional.conv2d(x, L.weight, L.bias, L.stride, 1,
                                               1, L.groups)
                if L.se is not None:
                    s = torch.nn.functional.adaptive_avg_pool2d(x, 1)
                    s = torch.relu(torch.nn.functional.conv2d(s, L.se["down_w"], L.se["down_b"]))
                    s = torch.sigmoid(torch.nn.functional.conv2d(s, L.se["up_w"], L.se["up_b"]))
                    x = x * s
                x = torch.relu(x)
            x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)
            if lin_act is not None:
                x = fake_quantize_activation(x, torch.tensor(lin_act[0]), torch.tensor(lin_act[1]), 8)
            return torch.nn.functional.linear(x, lin_w, lin_b)

    return Twin().eval()


def _claimed_layout(name: str, num_classes: int):
    with torch.device("meta"):
        m = create_model(name, num_classes=num_classes)
    out = []
    for prefix, b in m.named_blocks():
        out.append((prefix, b.in_channels, b.out_channels, b.stride, getattr(b, "groups", 1),
                    getattr(b, "se", None) is not None))
    return out, m.in_channels


def _matching_names(got: list, in_channels: int, num_classes: int) -> list[str]:
    """Registered names whose deploy layout equals the file's (block count and head width filter first)."""
    out = []
    for name, cfg in sorted(ARCHITECTURES.items()):
        if sum(cfg.num_blocks) != len(got) or cfg.widths[-1] != got[-1][2]:
            continue
        want, want_in = _claimed_layout(name, num_classes)
        if want_in == in_channels and [w[1:] for w in want] == [g[1:] for g in got]:
            out.append(name)
    return out


def verify_onnx(path, model_name: str | None = None, *, reference: nn.Module | None = None,
                image_size: int | None = None, num_samples: int = 8, seed: int = 0,
                rtol: float = 1e-4, min_top1: float = 0.99) -> OnnxVerification:
    """Does the ONNX file at ``path`` implement the fused RepVGG-family network it claims to?

    Checks, each failure adding one line to ``reasons``:

    1. the file is valid ONNX (``onnx.checker``) with one input and one output;
    2. its graph is a fused RepVGG-family network: only 3x3 / pad-1 convolutions with bias,
       each followed by one ReLU (or RepVGG-D2se's SE block, then ReLU), optional
       ``QuantizeLinear/DequantizeLinear`` on conv inputs and constant weights
       (``DequantizeLinear`` of int8 codes, or ``Gather`` from a k-means codebook), global
       average pooling and one linear classifier — no residual adds, no BN, no other ops;
    3. the claim — ``model_name``, or the file's ``repspec.model`` metadata — names a
       registry architecture whose deploy layout (per block: in/out channels, stride,
       groups, SE; the classifier) the convolutions match exactly;
    4. onnxruntime's output on ``num_samples`` seeded random inputs (``image_size``, default
       32, 224 for ImageNet-sized claims... any size works: the net is fully convolutional)
       equals a float32 PyTorch network rebuilt from the file's own weights — with
       repspec's fake quantization where the file has QDQ — run without graph optimizations,
       within ``rtol`` relative to max |logit| (fp32), or with top-1 agreement >= ``min_top1``
       (QDQ: a rounding tie may flip one code);
    5. with ``reference`` (a repspec ``VGGNet`` or ``QuantizedModel``): its deploy weights
       equal the file's (float32 rounding; fake-quant weights exactly) and its logits agree
       as in 4.

    Returns an :class:`OnnxVerification`; ``summary()`` is one line, and
    ``details['matching_architectures']`` lists every registered name whose deploy layout the
    file matches (useful without a claim). Never raises for a bad file (a missing file
    raises ``FileNotFoundError``).
    """
    onnx = _onnx()
    path = _check_path_arg(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {str(path)!r}")
    if model_name is not None and model_name not in ARCHITECTURES:
        raise ValueError(f"unknown model name {model_name!r}; valid names: {', '.join(list_models())}")
    if reference is not None and not isinstance(reference, (VGGNet, QuantizedModel)):
        raise TypeError(f"reference must be a VGGNet or QuantizedModel, got {type(reference).__name__}")
    for v, n in ((num_samples, "num_samples"), (seed, "seed")):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if n == "num_samples" else 0):
            raise ValueError(f"{n} must be a {'positive' if n == 'num_samples' else 'non-negative'} integer, "
                             f"got {v!r}")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - any parse/check failure is the verdict
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return OnnxVerification(False, model_name, "unknown", reasons=[f"not a valid ONNX model: {first}"])
    meta = {p.key: p.value for p in proto.metadata_props}
    claim = model_name or meta.get("repspec.model")
    fmt = "qdq" if any(n.op_type == "QuantizeLinear" for n in proto.graph.node) else "fp32"
    res = OnnxVerification(True, claim, fmt)
    if claim is not None and claim not in ARCHITECTURES:
        res.reasons.append(f"the file claims {claim!r}, which is not a registered architecture")
    inputs = [i for i in proto.graph.input if i.name not in {x.name for x in proto.graph.initializer}]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        res.reasons.append(f"expected one input and one output, found {len(inputs)} and {len(proto.graph.output)}")
    layers, lin_w, lin_b, lin_act, problems = _parse(proto)
    res.reasons += problems
    res.num_layers = len(layers)
    in_channels = int(layers[0].weight.shape[1] * layers[0].groups) if layers else 3
    if not problems and lin_w is not None:
        # chained shapes
        c = in_channels
        for L in layers:
            if L.weight.shape[1] * L.groups != c:
                res.reasons.append(f"Conv {L.name!r} takes {L.weight.shape[1] * L.groups} channels but receives {c}")
                break
            c = L.weight.shape[0]
        if lin_w.shape[1] != c:
            res.reasons.append(f"the classifier takes {lin_w.shape[1]} features but the last conv gives {c}")
    got = [(L.name, int(L.weight.shape[1] * L.groups), int(L.weight.shape[0]), L.stride, L.groups,
            L.se is not None) for L in layers]
    if not res.reasons:
        res.details["matching_architectures"] = _matching_names(got, in_channels, int(lin_w.shape[0]))
    if claim in ARCHITECTURES and not res.reasons:
        want, want_in = _claimed_layout(claim, int(lin_w.shape[0]))
        if len(want) != len(got) or want_in != in_channels:
            res.reasons.append(f"{claim} has {len(want)} fused conv layers on {want_in} input channels, the file "
                               f"{len(got)} on {in_channels}")
        else:
            for (prefix, *w), (name, *g) in zip(want, got):
                if w != g:
                    keys = ("in", "out", "stride", "groups", "se")
                    diff = ", ".join(f"{k} {a} vs {b}" for k, a, b in zip(keys, w, g) if a != b)
                    res.reasons.append(f"layer {prefix} of {claim} differs from Conv {name!r}: {diff} (claimed vs "
                                       f"file)")
                    break
    if res.reasons:
        res.ok = False
        return res
    # numerics: onnxruntime (no graph optimizations) vs the rebuilt network
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    size = image_size or (dims[2] if len(dims) == 4 and dims[2] else 32)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, in_channels, size, size, generator=gen)
    sess = onnx_session(path, optimize=False)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    twin = _torch_twin(layers, lin_w, lin_b, lin_act, in_channels)
    with torch.no_grad():
        want = twin(x)
    _compare(res, got, want, fmt, rtol, min_top1, "rebuilt network")
    if reference is not None:
        _check_reference(res, reference, layers, lin_w, x, got, rtol, min_top1)
    res.ok = not res.reasons
    return res


def _compare(res: OnnxVerification, got: Tensor, want: Tensor, fmt: str, rtol: float, min_top1: float,
             what: str) -> None:
    err = float((got - want).abs().max())
    scale = max(1.0, float(want.abs().max()))
    top1 = float((got.argmax(1) == want.argmax(1)).double().mean())
    res.max_abs_error = err if res.max_abs_error is None else max(res.max_abs_error, err)
    res.top1_agreement = top1 if res.top1_agreement is None else min(res.top1_agreement, top1)
    res.details[what] = {"max_abs_error": err, "top1_agreement": top1, "logit_scale": scale}
    if fmt == "fp32" and err > rtol * scale:
        res.reasons.append(f"onnxruntime's logits differ from the {what}'s by {err:.3g} (> {rtol:g} x {scale:.3g})")
    if fmt == "qdq" and top1 < min_top1:
        res.reasons.append(f"onnxruntime's top-1 agrees with the {what}'s on {top1:.3f} of the inputs "
                           f"(< {min_top1})")


def _check_reference(res, reference, layers, lin_w, x, got, rtol, min_top1) -> None:
    if isinstance(reference, QuantizedModel):
        net = reference.net
        ref_layers = []
        for prefix, b in net.named_blocks():
            w = b.rbr_reparam.weight if isinstance(b, QuantConvBlock) else b.get_equivalent_kernel_bias()[0]
            ref_layers.append((prefix, w))
        ref_lin = net.linear.linear.weight if isinstance(net.linear, QuantLinear) else net.linear.weight
        model = reference
    else:
        deploy = convert_to_deploy(reference)
        ref_layers = [(p, b.rbr_reparam.weight) for p, b in deploy.named_blocks()]
        ref_lin = deploy.linear.weight
        model = deploy
    if len(ref_layers) != len(layers):
        res.reasons.append(f"the reference has {len(ref_layers)} conv layers, the file {len(layers)}")
        return
    for (prefix, w), L in zip(ref_layers, layers):
        w32 = w.detach().to("cpu", torch.float32).numpy()
        if w32.shape != L.weight.shape or not np.allclose(w32, L.weight, rtol=1e-6, atol=1e-7):
            diff = float(np.abs(w32 - L.weight).max()) if w32.shape == L.weight.shape else math.inf
            res.reasons.append(f"the weights of {prefix} differ from the reference's (max abs {diff:.3g})")
            return
    if not np.allclose(ref_lin.detach().float().numpy(), lin_w, rtol=1e-6, atol=1e-7):
        res.reasons.append("the classifier weights differ from the reference's")
        return
    ref = model.float().eval() if not isinstance(model, QuantizedModel) else model
    dtype = next(ref.parameters()).dtype
    with torch.no_grad():
        want = ref(x.to(dtype)).float()
    _compare(res, got, want, res.format, rtol, min_top1, "reference")

