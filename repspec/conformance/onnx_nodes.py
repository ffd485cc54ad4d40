"""An INT8 QDQ ONNX file, made by any tool, checked node by node against the NumPy reference (SPEC §5.qdq-file).

:func:`check_qdq_nodes` ``(path, float_model, ...)`` maps the file's layers to the float
deploy network it claims to quantize **by graph structure**, not by initializer names (so
files from other tools are read the same way):

- a layer is a ``Conv`` (3x3) or the classifier (``Gemm``/``MatMul``), in graph order;
- its activation quantizer is ``QuantizeLinear → DequantizeLinear`` on its data input;
- its weight is ``DequantizeLinear`` of an int8 initializer on its weight input;
- its bias is ``DequantizeLinear`` of an int32 initializer (or a float initializer).

"The reference" of each node is the NumPy float64 reference (``reference/quant.py``,
``reference/calibrate.py``) applied to the float network the file claims to quantize:

- weights: the float32 fused deploy kernel of ``float_model`` (what a deploy file holds),
  read as float64;
- activation ranges: ``ranges`` (e.g. the ranges a repspec PTQ run recorded), or the
  reference calibrator run on ``batches`` through the reference float64 forward of the
  fused network; where both are given, the recorded ranges are checked against the
  recalibration too.

Checks and tolerances (:data:`TOLERANCES`, one table; the file stores float32):

==================  =====================================================================
check               passes when
==================  =====================================================================
``act_scale``       file scale = float32(reference ``activation_qparams(lo, hi, 8)[0]``)
                    within 1 float32 ulp (the reference computes in float64; one rounding
                    to float32 and the producer's own float32 division differ by ≤ 1 ulp)
                    against recorded ranges; against a recalibration (a file from another tool,
                    which calibrated with a float32 forward) within ``RANGE_RTOL`` relative
``act_zero_point``  uint8, exactly the reference zero point (integers)
``weight_axis``     a per-channel scale has ``axis = 0`` (the output channel) — ONNX's
                    default axis is 1, so the attribute must be present and 0
``weight_scale``    file scale = float32(``weight_qparams(W, 8, per_channel)``) within 1 ulp
``weight_zero_point`` all 0 (symmetric weights), exactly
``weight_codes``    int8, = ``quantize_weight(W, file scale, 8)`` exactly, except codes whose
                    ``W/s`` lies within float32 rounding (2^-22 relative) of a half-integer,
                    where the producer's float32 division may round the other way (±1)
``bias_scale``      int32 bias: scale = float32(s_x · s_w) of the file's own scales, 1 ulp
``bias_codes``      int32 codes = ``rint(b / bias scale)``, same tie rule as weight codes
``float_bias``      a float bias equals the reference bias within 4 float32 ulps of max|b|
``range``           a recorded range equals the reference recalibration within
                    1e-5 · max(1, |lo|, |hi|) (a float32 forward vs the float64 reference)
``outputs``         onnxruntime (no graph optimization) vs the reference fake-quant
                    float64 forward: top-1 agreement ≥ 0.99 and max |logit error| ≤
                    0.05 · max(1, max |logit|) (a sanity bound: float32 vs float64 may flip
                    activation codes at rounding ties; the node checks above are exact)
==================  =====================================================================

Every failure names the ONNX node. A file that is not QDQ, or whose layers do not match the
float network (count, shapes), raises :class:`OnnxNodeInputError` (the CLI: one line, exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from repspec.reference import calibrate as ref_calibrate
from repspec.reference import ops as ref_ops
from repspec.reference import quant as ref_quant
from repspec.torch_impl import convert_to_deploy
from repspec.torch_impl.quantization.onnx_export import onnx_session

__all__ = ["check_qdq_nodes", "NodeCheck", "NodeReport", "OnnxNodeInputError", "TOLERANCES"]

ACT_BITS = WEIGHT_BITS = 8
TIE_BAND = 2.0**-22  # float32 relative rounding: a quotient this close to k + 1/2 may round either way
RANGE_RTOL = 1e-5
OUTPUT_REL = 0.05
MIN_TOP1 = 0.99

#: check -> its tolerance, in words (also the module docstring's table)
TOLERANCES = {
    "act_scale": f"1 float32 ulp of float32(reference scale) (recorded ranges); {RANGE_RTOL:g} relative "
                 f"(a reference recalibration)",
    "act_zero_point": "exact (uint8)",
    "weight_axis": "exact: axis 0",
    "weight_scale": "1 float32 ulp of float32(reference scale)",
    "weight_zero_point": "exact: 0",
    "weight_codes": "exact (int8); +-1 only where W/s is within 2^-22 relative of a half-integer",
    "bias_scale": "1 float32 ulp of float32(s_x * s_w)",
    "bias_codes": "exact (int32); +-1 only at float32 rounding ties",
    "float_bias": "4 float32 ulps of max|b|",
    "range": f"{RANGE_RTOL:g} * max(1, |lo|, |hi|)",
    "outputs": f"top-1 >= {MIN_TOP1}, max|err| <= {OUTPUT_REL:g} * max(1, max|logit|)",
}


class OnnxNodeInputError(ValueError):
    """The file cannot be checked: not ONNX, not QDQ, or no layer-by-layer match with the float network."""


@dataclass
class NodeCheck:
    node: str
    check: str
    expected: str
    got: str
    ok: bool

    def row(self) -> str:
        return f"{self.node} | {self.check} | {self.expected} | {self.got} | {'ok' if self.ok else 'FAIL'}"


@dataclass
class NodeReport:
    path: str
    checks: list[NodeCheck] = field(default_factory=list)
    max_abs_error: float | None = None
    top1_agreement: float | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[NodeCheck]:
        return [c for c in self.checks if not c.ok]

    def add(self, node, check, expected, got, ok) -> None:
        self.checks.append(NodeCheck(node, check, str(expected), str(got), bool(ok)))

    def table(self) -> str:
        lines = ["node | check | expected | got | verdict", "---|---|---|---|---"]
        return "\n".join(lines + [c.row() for c in self.checks])

    def summary(self) -> str:
        bad = self.failures
        head = f"{self.path}: {len(self.checks)} node checks, {len(bad)} failed"
        if bad:
            head += ": " + "; ".join(f"{c.node} {c.check} (expected {c.expected}, got {c.got})" for c in bad[:5])
            head += "" if len(bad) <= 5 else f"; ... {len(bad) - 5} more"
        return ("OK " if not bad else "FAIL ") + head

    def to_json(self) -> dict:
        return {"path": self.path, "ok": self.ok, "max_abs_error": self.max_abs_error,
                "top1_agreement": self.top1_agreement, "tolerances": TOLERANCES,
                "checks": [c.__dict__ for c in self.checks]}


# ------------------------------------------------------------------------------ the graph


@dataclass
class _Layer:
    node: object  # the Conv / Gemm / MatMul
    act_q: object = None  # QuantizeLinear on the data input
    weight_dq: object = None
    weight_float: np.ndarray | None = None  # a float weight initializer (no QDQ)
    bias_dq: object = None
    bias_float: np.ndarray | None = None
    trans_b: bool = True


class _Graph:
    def __init__(self, proto):
        self.inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        for n in proto.graph.node:  # Constant nodes count as initializers
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.inits[n.output[0]] = numpy_helper.to_array(a.t)
        self.producer = {o: n for n in proto.graph.node for o in n.output}
        self.nodes = list(proto.graph.node)

    def dq_of(self, name):
        n = self.producer.get(name)
        return n if n is not None and n.op_type == "DequantizeLinear" else None

    def value(self, name):
        return self.inits.get(name)

    def attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default


def _layers(g: _Graph) -> list[_Layer]:
    out = []
    for n in g.nodes:
        if n.op_type == "Conv":
            if len(n.input) > 1 and (g.value(n.input[1]) is not None or g.dq_of(n.input[1]) is not None):
                w = g.value(n.input[1])
                shape = w.shape if w is not None else g.value(g.dq_of(n.input[1]).input[0]).shape
                if tuple(shape[2:]) != (3, 3):
                    continue  # not a fused RepVGG conv (an SE 1x1)
        elif n.op_type not in ("Gemm", "MatMul"):
            continue
        L = _Layer(n)
        if n.op_type == "Gemm":
            L.trans_b = g.attr(n, "transB", 0) == 1
        elif n.op_type == "MatMul":
            L.trans_b = False
        src = g.dq_of(n.input[0])
        if src is not None:
            q = g.producer.get(src.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                L.act_q = q
        L.weight_dq = g.dq_of(n.input[1])
        if L.weight_dq is None:
            L.weight_float = g.value(n.input[1])
        if len(n.input) > 2 and n.input[2]:
            L.bias_dq = g.dq_of(n.input[2])
            if L.bias_dq is None:
                L.bias_float = g.value(n.input[2])
        out.append(L)
    return out


# ------------------------------------------------------------------------------ the reference


def _float_layers(float_model) -> list[tuple[str, np.ndarray, np.ndarray, int, int]]:
    """``[(name, W, b, stride, groups)]`` of the fused deploy network in float64 (from its float32 kernels)."""
    deploy = convert_to_deploy(float_model).float().eval()
    out = []
    with torch.no_grad():
        for name, b in deploy.named_blocks():
            if getattr(b, "se", None) is not None:
                raise OnnxNodeInputError(f"block {name} has an SE block, which repspec's quantization does not cover")
            conv = b.rbr_reparam
            out.append((name, conv.weight.double().numpy(), conv.bias.double().numpy(), int(b.stride),
                        int(getattr(b, "groups", 1))))
        lin = deploy.linear
        out.append(("linear", lin.weight.double().numpy(), lin.bias.double().numpy(), 1, 1))
    return out


def _forward_inputs(layers, x):
    """The input of every layer of the float64 reference forward of the fused network (conv → ReLU, GAP, linear)."""
    seen = []
    for name, w, b, stride, groups in layers[:-1]:
        seen.append(x)
        x = ref_ops.relu(ref_ops.conv2d(x, w, b, stride=stride, padding=1, groups=groups))
    x = ref_ops.global_avg_pool(x)
    seen.append(x)
    return seen


def reference_ranges(layers, batches, calibrator: str = "minmax", **options) -> list[tuple[float, float]]:
    """The reference calibrator's ``(lo, hi)`` of every layer's input over ``batches`` (float64 forward)."""
    per_layer = [[] for _ in layers]
    for x in batches:
        for i, v in enumerate(_forward_inputs(layers, np.asarray(x, dtype=np.float64))):
            per_layer[i].append(v)
    return [ref_calibrate.calibrate(calibrator, vs, ACT_BITS, **options) for vs in per_layer]


def _fq_forward(layers, x, act, wq):
    """Reference fake-quant forward: per layer ``act[i]`` = (scale, zp) or None, ``wq[i]`` the weight used."""
    last = len(layers) - 1
    for i, (name, w, b, stride, groups) in enumerate(layers):
        if i == last:
            x = ref_ops.global_avg_pool(x)
        if act[i] is not None:
            x = ref_quant.fake_quantize_activation(x, act[i][0], act[i][1], ACT_BITS)
        if i == last:
            return ref_ops.linear(x, wq[i], b)
        x = ref_ops.relu(ref_ops.conv2d(x, wq[i], b, stride=stride, padding=1, groups=groups))
    return x


def _ulp_ok(got, want) -> tuple[bool, float]:
    got32, want32 = np.asarray(got, np.float32), np.asarray(want, np.float64).astype(np.float32)
    diff = np.abs(got32.astype(np.float64) - want32.astype(np.float64))
    ulp = np.spacing(np.abs(want32)).astype(np.float64)
    return bool(np.all(diff <= ulp)), float(np.max(diff / np.where(ulp > 0, ulp, 1), initial=0))


def _fmt(a) -> str:
    a = np.asarray(a)
    if a.size == 1:
        v = a.reshape(()).item()
        return f"{v:.9g}" if isinstance(v, float) else str(v)
    return f"{a.dtype}{list(a.shape)}"


def _codes_ok(codes, quotient, want) -> tuple[bool, str]:
    """Exact codes, except ±1 where the quotient lies within float32 rounding of a half-integer."""
    diff = codes.astype(np.int64) - want
    frac = np.abs(np.abs(quotient) - np.floor(np.abs(quotient)) - 0.5)
    tie = frac <= TIE_BAND * np.maximum(np.abs(quotient), 1.0)
    bad = (diff != 0) & ~((np.abs(diff) == 1) & tie)
    if not bad.any():
        return True, f"equal ({int((diff != 0).sum())} ties)"
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return False, f"{int(bad.sum())} codes differ, first at {idx}: {int(codes[idx])} vs {int(want[idx])}"


# ------------------------------------------------------------------------------ the checks


def check_qdq_nodes(path, float_model, *, ranges=None, batches=None, calibrator: str = "minmax",
                    calibrator_options=None, num_samples: int = 4, seed: int = 0,
                    image_size: int | None = None) -> NodeReport:
    """Check the INT8 QDQ ONNX file at ``path`` node by node against the reference of ``float_model``.

    ``ranges``: ``{layer name: (lo, hi)}`` (layer names ``stage0``, ``stage1.0``, …, ``linear``,
    as :meth:`QuantizedModel.act_ranges` gives them) — the calibrated ranges the file
    claims; ``batches``: NumPy ``(N, C, H, W)`` arrays for a reference recalibration with
    ``calibrator``. At least one of them is needed when the file quantizes an activation;
    with both, each recorded range is also checked against the recalibration. Returns a
    :class:`NodeReport`; raises :class:`OnnxNodeInputError` when the file cannot be checked.
    """
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the verdict
        raise OnnxNodeInputError(f"{str(path)!r} is not an ONNX file ({type(exc).__name__})") from None
    g = _Graph(proto)
    layers = _layers(g)
    if not any(n.op_type == "QuantizeLinear" for n in g.nodes) and not any(L.weight_dq for L in layers):
        raise OnnxNodeInputError(f"{str(path)!r} is not a QDQ file: no QuantizeLinear and no quantized weight")
    ref = _float_layers(float_model)
    if len(ref) != len(layers):
        raise OnnxNodeInputError(f"{str(path)!r} has {len(layers)} conv/classifier layers, the reference "
                                 f"{len(ref)}: no matching reference")
    for L, (name, w, *_rest) in zip(layers, ref):
        shape = _weight_shape(g, L)
        if shape != w.shape:
            raise OnnxNodeInputError(f"{str(path)!r}: node {L.node.name!r} has a weight of shape {shape}, the "
                                     f"reference's {name} {w.shape}: no matching reference")
    want_ranges = None
    if batches is not None:
        want_ranges = reference_ranges(ref, batches, calibrator, **dict(calibrator_options or {}))
    recorded = ranges is not None  # ranges the caller says the file was made from (else: the recalibration's)
    if ranges is None and want_ranges is not None:
        ranges = {name: r for (name, *_), r in zip(ref, want_ranges)}
    rep = NodeReport(str(path))
    act, wq = [], []
    for i, (L, (name, w, b, _, _)) in enumerate(zip(layers, ref)):
        s_x = None
        if L.act_q is None:
            act.append(None)
        else:
            if ranges is None or name not in ranges:
                raise OnnxNodeInputError(f"{str(path)!r}: node {L.act_q.name!r} quantizes the input of {name}, "
                                         f"for which no calibrated range is given (pass ranges or batches)")
            lo, hi = (float(v) for v in ranges[name])
            if want_ranges is not None and recorded:
                wlo, whi = want_ranges[i]
                tol = RANGE_RTOL * max(1.0, abs(wlo), abs(whi))
                rep.add(L.act_q.name, "range", f"({wlo:.6g}, {whi:.6g})", f"({lo:.6g}, {hi:.6g})",
                        abs(lo - wlo) <= tol and abs(hi - whi) <= tol)
            s_ref, zp_ref = ref_quant.activation_qparams(lo, hi, ACT_BITS)
            s_file = g.value(L.act_q.input[1])
            zp_file = g.value(L.act_q.input[2]) if len(L.act_q.input) > 2 and L.act_q.input[2] else np.uint8(0)
            if s_file is None or s_file.size != 1:
                ok = False
            elif recorded:
                ok, _ = _ulp_ok(s_file, s_ref)
            else:  # the producer calibrated in float32: its range is the float64 recalibration's within RANGE_RTOL
                ok = abs(float(s_file.reshape(())) - s_ref) <= RANGE_RTOL * max(abs(s_ref), 2.0**-126)
            rep.add(L.act_q.name, "act_scale", _fmt(np.float32(s_ref)), _fmt(s_file), ok)
            zok = zp_file is not None and zp_file.dtype == np.uint8 and zp_file.size == 1 and \
                int(zp_file.reshape(())) == zp_ref
            rep.add(L.act_q.name, "act_zero_point", f"uint8 {zp_ref}",
                    f"{zp_file.dtype} {_fmt(zp_file)}" if zp_file is not None else "missing", zok)
            dq = g.dq_of(L.node.input[0])
            if dq is not None and (list(dq.input[1:]) != list(L.act_q.input[1:])):
                same = all(np.array_equal(g.value(a), g.value(c)) for a, c in zip(dq.input[1:], L.act_q.input[1:]))
                rep.add(dq.name, "act_dequantize", "the QuantizeLinear's scale and zp", "others" if not same
                        else "equal", same)
            s_x = s_file
            act.append((float(np.float32(s_ref)), zp_ref))
        w_used = _check_weight(rep, g, L, w)
        wq.append(w_used)
        _check_bias(rep, g, L, b, s_x)
    # outputs: onnxruntime as written vs the reference fake-quant forward
    in_channels = ref[0][1].shape[1] * ref[0][4]
    size = image_size or 16
    x = np.random.default_rng(seed).standard_normal((num_samples, in_channels, size, size))
    sess = onnx_session(path, optimize=False)
    got = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0].astype(np.float64)
    want = _fq_forward(ref, x, act, wq)
    err = float(np.abs(got - want).max())
    top1 = float(np.mean(got.argmax(1) == want.argmax(1)))
    bound = OUTPUT_REL * max(1.0, float(np.abs(want).max()))
    rep.max_abs_error, rep.top1_agreement = err, top1
    rep.add(proto.graph.output[0].name, "outputs", f"max|err| <= {bound:.3g}, top-1 >= {MIN_TOP1}",
            f"max|err| {err:.3g}, top-1 {top1:.3f}", err <= bound and top1 >= MIN_TOP1)
    return rep


def _weight_shape(g, L):
    if L.weight_dq is not None:
        v = g.value(L.weight_dq.input[0])
        shape = None if v is None else v.shape
    else:
        shape = None if L.weight_float is None else L.weight_float.shape
    if shape is not None and L.node.op_type != "Conv" and not L.trans_b:
        shape = shape[::-1]
    return tuple(shape) if shape is not None else None


def _check_weight(rep, g, L, w) -> np.ndarray:
    """Weight checks; returns the weight the reference forward uses (reference codes · file scale, or float W)."""
    if L.weight_dq is None:
        return w
    dq = L.weight_dq
    codes = g.value(dq.input[0])
    scale = g.value(dq.input[1])
    zp = g.value(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if codes.ndim == 2 and not L.trans_b:
        codes = codes.T
    per_channel = scale is not None and scale.size > 1
    if per_channel:
        axis = g.attr(dq, "axis", 1)
        want_axis = 0 if L.trans_b or L.node.op_type == "Conv" else 1
        rep.add(dq.name, "weight_axis", want_axis, axis, axis == want_axis)
    s_ref = ref_quant.weight_qparams(w, WEIGHT_BITS, per_channel=per_channel)
    ok, _ = _ulp_ok(scale, s_ref)
    rep.add(dq.name, "weight_scale", _fmt(np.float32(s_ref)), _fmt(scale), ok)
    rep.add(dq.name, "weight_zero_point", "0", "absent" if zp is None else _fmt(zp),
            zp is None or (zp.dtype == np.int8 and not np.any(zp)))
    if codes.dtype != np.int8:
        rep.add(dq.name, "weight_codes", "int8", str(codes.dtype), False)
        return w
    s64 = np.asarray(scale, np.float64).reshape(-1) if per_channel else float(scale)
    want = ref_quant.quantize_weight(w, s64, WEIGHT_BITS)
    s_b = s64.reshape((-1,) + (1,) * (w.ndim - 1)) if per_channel else s64
    quotient = np.divide(w, s_b, out=np.zeros_like(w), where=np.broadcast_to(s_b, w.shape) > 0)
    ok, msg = _codes_ok(codes, quotient, want)
    rep.add(dq.name, "weight_codes", "quantize_weight(W, s, 8)", msg, ok)
    return ref_quant.dequantize(want, s64)


def _check_bias(rep, g, L, b, s_x) -> None:
    if L.bias_dq is None:
        if L.bias_float is not None:
            diff = float(np.abs(L.bias_float.astype(np.float64) - b).max(initial=0))
            tol = 4 * float(np.spacing(np.float32(max(np.abs(b).max(initial=0), 1e-30))))
            rep.add(L.node.name, "float_bias", f"reference bias (max|diff| <= {tol:.3g})", f"max|diff| {diff:.3g}",
                    diff <= tol)
        return
    dq = L.bias_dq
    codes, scale = g.value(dq.input[0]), g.value(dq.input[1])
    w_scale = g.value(L.weight_dq.input[1]) if L.weight_dq is not None else None
    if s_x is None or w_scale is None:
        rep.add(dq.name, "bias_scale", "an int32 bias needs a quantized input and weight", "none", False)
        return
    want = (np.float32(s_x) * np.asarray(w_scale, np.float32)).astype(np.float32)
    ok = scale is not None and scale.size == want.size and _ulp_ok(scale.reshape(want.shape), want)[0]
    rep.add(dq.name, "bias_scale", f"s_x*s_w = {_fmt(want)}", _fmt(scale), ok)
    if codes.dtype != np.int32:
        rep.add(dq.name, "bias_codes", "int32", str(codes.dtype), False)
        return
    s = np.asarray(scale, np.float64).reshape(-1) if scale.size > 1 else np.float64(scale)
    quotient = np.divide(b, s, out=np.zeros_like(b), where=np.broadcast_to(s, b.shape) > 0)
    ok, msg = _codes_ok(codes, quotient, np.rint(quotient).astype(np.int64))
    rep.add(dq.name, "bias_codes", "rint(b / bias scale)", msg, ok)
