"""An INT8 QDQ ONNX file checked node by node against the reference (SPEC §5).

Logits alone cannot judge a deployed file: one activation scale 2% too large moves a tiny
model's logits by a few hundredths and keeps its top-1. Here every quantization parameter a
file writes is compared with what the reference computes from the float network and its
calibrated ranges:

======================  =====================================================  ===============================
node                    expected (the reference, ``repspec.reference.quant``)   tolerance (reason)
======================  =====================================================  ===============================
activation scale        ``activation_qparams(lo, hi, bits)[0]`` of the input's  1 float32 ulp: the file stores
                        calibrated range                                       float32; an exporter may compute
                                                                               the quotient in float32
activation zero point   ``activation_qparams(lo, hi, bits)[1]``                 exact (an integer)
weight scale            ``weight_qparams(K, bits, per_channel)`` of the fused   1 float32 ulp (same reason)
                        kernel ``K``; per channel on axis 0, one per output
weight codes            ``quantize_weight(K, s_w, bits)``, ``s_w`` the file's   exact, except a value within
                        scale                                                  ``TIE_EPS`` of a .5 boundary
                                                                               (either neighbour accepted)
weight zero point       0 (symmetric)                                          exact
int32 bias scale        ``s_x · s_w`` (the file's own ``s_x``, ``s_w``)          1 float32 ulp
int32 bias codes        ``rint(b / (s_x · s_w))``                              exact, ties as for weights
======================  =====================================================  ===============================

Layers are found by graph structure, not by initializer names, so a file from any tool is
read the same way: each ``Conv`` (and the classifier ``Gemm``/``MatMul``) in graph order;
its input's ``QuantizeLinear → DequantizeLinear`` pair (the activation); the
``DequantizeLinear`` of an integer initializer on its weight input; an ``int32``
``DequantizeLinear`` on its bias input. What "expected" is made of — the fused float kernel
``K``, the bias ``b`` and the calibrated range of each layer's input — is handed in by the
caller (:class:`ExpectedLayer`), in graph order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from repspec.reference.quant import activation_qparams, quantize_weight, weight_qparams

__all__ = ["TIE_EPS", "QDQLayer", "ExpectedLayer", "NodeFinding", "QDQReport", "QDQFormatError", "read_qdq_layers",
           "check_qdq_layers", "check_qdq_file", "expected_layers"]

#: a weight/bias value this close (relative to the step) to a .5 rounding boundary may round
#: either way once the file's float32 scale replaces the float64 one
TIE_EPS = 1e-5


class QDQFormatError(ValueError):
    """The file is not an INT8 QDQ network this checker can read (one line, naming the file)."""


@dataclass
class QDQLayer:
    """What a file says about one quantized layer (``None`` where the file has no such node)."""

    node: str                                   # the Conv/Gemm node's name (or its output's)
    op: str
    act_node: str | None = None                 # the input QuantizeLinear's name
    act_scale: float | None = None
    act_zero_point: int | None = None
    weight_node: str | None = None              # the weight's DequantizeLinear
    weight_codes: np.ndarray | None = None
    weight_scale: np.ndarray | None = None
    weight_zero_point: np.ndarray | None = None
    weight_axis: int | None = None
    bias_node: str | None = None                # the bias's int32 DequantizeLinear
    bias_codes: np.ndarray | None = None
    bias_scale: np.ndarray | None = None
    bias_zero_point: np.ndarray | None = None


@dataclass
class ExpectedLayer:
    """The reference's side of one layer: the fused float kernel ``(O, C/g, 3, 3)`` (or the
    classifier's ``(K, C)``) and bias ``(O,)``, in float64; the calibrated input range
    ``(lo, hi)`` (``None``: the layer's input is not quantized); ``weight_bits`` (``None``: FP
    weights) and ``per_channel``."""

    name: str
    kernel: np.ndarray
    bias: np.ndarray
    act_range: tuple[float, float] | None
    weight_bits: int | None
    per_channel: bool
    act_bits: int = 8


@dataclass
class NodeFinding:
    layer: str
    node: str
    check: str
    expected: str
    got: str
    ok: bool


@dataclass
class QDQReport:
    path: str
    findings: list[NodeFinding] = field(default_factory=list)
    ambiguous: int = 0

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def failures(self) -> list[NodeFinding]:
        return [f for f in self.findings if not f.ok]

    def table(self, *, all_rows: bool = False) -> str:
        rows = self.findings if all_rows else self.failures()
        head = ("layer", "node", "check", "expected", "got", "verdict")
        body = [(f.layer, f.node, f.check, f.expected, f.got, "ok" if f.ok else "FAIL") for f in rows]
        widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *body]]
        return "\n".join(lines)

    def summary(self) -> str:
        n_fail = len(self.failures())
        layers = len({f.layer for f in self.findings})
        verdict = "OK" if self.ok else "FAILED"
        tail = f", {self.ambiguous} tie value(s) accepted either way" if self.ambiguous else ""
        return (f"{verdict}: {len(self.findings)} node checks on {layers} layer(s) of {self.path}, "
                f"{n_fail} failed{tail}")


# ------------------------------------------------------------------------------- reading


def _onnx():
    import onnx  # the optional [onnx] extra

    return onnx


class _Graph:
    def __init__(self, proto):
        onnx = _onnx()
        self.consts = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
        for n in proto.graph.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = onnx.numpy_helper.to_array(a.t)
        self.producer = {o: n for n in proto.graph.node for o in n.output}

    def through_identity(self, name):
        n = self.producer.get(name)
        while n is not None and n.op_type == "Identity":
            name = n.input[0]
            n = self.producer.get(name)
        return name, n

    @staticmethod
    def axis(node, default=1) -> int:
        return next((a.i for a in node.attribute if a.name == "axis"), default)


def _name(node) -> str:
    return node.name or node.output[0]


def _const_dq(g: _Graph, name: str):
    """``(DequantizeLinear node, codes, scale, zero point)`` when ``name`` is the DQ of a constant."""
    _, n = g.through_identity(name)
    if n is None or n.op_type != "DequantizeLinear":
        return None
    src, _ = g.through_identity(n.input[0])
    if src not in g.consts:
        return None
    zp = g.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    return n, g.consts[src], g.consts[n.input[1]], zp


def read_qdq_layers(proto) -> list[QDQLayer]:
    """Every Conv and the classifier (Gemm/MatMul), in graph order, with the QDQ nodes around them."""
    g = _Graph(proto)
    layers = []
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        L = QDQLayer(_name(n), n.op_type)
        _, dq = g.through_identity(n.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear":
            _, q = g.through_identity(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                scale = np.asarray(g.consts.get(q.input[1]))
                zp = np.asarray(g.consts.get(q.input[2])) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
                if scale.size != 1 or zp.size != 1:
                    raise QDQFormatError(f"activation QuantizeLinear {_name(q)!r} is not per tensor")
                L.act_node, L.act_scale, L.act_zero_point = _name(q), float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])
        w = _const_dq(g, n.input[1])
        if w is not None:
            node, codes, scale, zp = w
            L.weight_node, L.weight_codes, L.weight_scale = _name(node), codes, np.asarray(scale)
            L.weight_zero_point = None if zp is None else np.asarray(zp)
            L.weight_axis = g.axis(node) if np.asarray(scale).ndim == 1 else None
        if len(n.input) > 2 and n.input[2]:
            b = _const_dq(g, n.input[2])
            if b is not None:
                node, codes, scale, zp = b
                L.bias_node, L.bias_codes, L.bias_scale = _name(node), codes, np.asarray(scale)
                L.bias_zero_point = None if zp is None else np.asarray(zp)
        layers.append(L)
    return layers


# ------------------------------------------------------------------------------- checking


def _ulps32(got, want) -> np.ndarray:
    """Distance in float32 ulps between ``got`` (float32 in the file) and ``want`` (float64)."""
    got = np.asarray(got, np.float32).astype(np.float64)
    want32 = np.asarray(want, np.float64).astype(np.float32).astype(np.float64)
    spacing = np.spacing(np.abs(want32).astype(np.float32)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(got == want32, 0.0, np.abs(got - want32) / np.where(spacing > 0, spacing, np.inf))


def _fmt(a) -> str:
    a = np.asarray(a)
    if a.size == 1:
        v = a.reshape(-1)[0]
        return f"{float(v):.9g}" if np.issubdtype(a.dtype, np.floating) else str(int(v))
    return f"{a.dtype}{list(a.shape)}"


def _codes(report, add, what, node, got_codes, values, scale, expected_codes_fn):
    """Codes compared exactly, except values within TIE_EPS of a .5 boundary."""
    got = np.asarray(got_codes).astype(np.int64)
    want = expected_codes_fn()
    if got.shape != want.shape:
        add(what, node, f"shape {list(want.shape)}", f"shape {list(got.shape)}", False)
        return
    s = np.asarray(scale, np.float64)
    s = s.reshape((-1,) + (1,) * (values.ndim - 1)) if s.ndim == 1 else s
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(s > 0, values / np.where(s > 0, s, 1.0), 0.0)
    near_tie = np.abs(np.abs(r - np.floor(r)) - 0.5) < TIE_EPS * np.maximum(1.0, np.abs(r))
    diff = got != want
    accepted = diff & near_tie & (np.abs(got - want) == 1)
    report.ambiguous += int(accepted.sum())
    bad = diff & ~accepted
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        add(what, node, f"{int(want[idx])} at {list(idx)}", f"{int(got[idx])} ({int(bad.sum())} code(s) differ)",
            False)
    else:
        add(what, node, f"{want.size} codes", "equal", True)


def check_qdq_layers(layers: list[QDQLayer], expected: list[ExpectedLayer], *, path: str = "<file>") -> QDQReport:
    """Every quantization parameter of ``layers`` (from :func:`read_qdq_layers`) against the
    reference's for ``expected`` (same order); see the module docstring for the table."""
    if len(layers) != len(expected):
        raise QDQFormatError(f"{path}: the file has {len(layers)} conv/linear layers, the reference "
                             f"{len(expected)}: no matching reference")
    report = QDQReport(path)
    for L, E in zip(layers, expected):
        def add(check, node, want, got, ok, _L=L, _E=E):
            report.findings.append(NodeFinding(_E.name, node or _L.node, check, want, got, bool(ok)))

        k = np.asarray(E.kernel, np.float64)
        # activation (scale, zero point)
        if E.act_range is None:
            if L.act_node is not None:
                add("activation quantized", L.act_node, "no QDQ (FP32 input)", "QuantizeLinear", False)
        elif L.act_node is None:
            add("activation quantized", L.node, "QuantizeLinear on the input", "none", False)
        else:
            s, zp = activation_qparams(E.act_range[0], E.act_range[1], E.act_bits)
            u = float(_ulps32(L.act_scale, s))
            add("activation scale", L.act_node, f"{np.float32(s):.9g}", f"{L.act_scale:.9g}"
                + ("" if u == 0 else f" ({u:.3g} ulp)"), u <= 1)
            add("activation zero point", L.act_node, str(zp), str(L.act_zero_point), L.act_zero_point == zp)
        # weight scale, axis, zero point, codes
        if E.weight_bits is None:
            if L.weight_node is not None:
                add("weight quantized", L.weight_node, "FP32 weight", "DequantizeLinear", False)
            continue
        if L.weight_node is None:
            add("weight quantized", L.node, "int8 codes + DequantizeLinear", "FP32 initializer", False)
            continue
        s_w = weight_qparams(k, E.weight_bits, per_channel=E.per_channel)
        got_s = np.asarray(L.weight_scale)
        if E.per_channel:
            axis_ok = got_s.ndim == 1 and got_s.size == k.shape[0] and L.weight_axis == 0
            add("weight scale axis", L.weight_node, f"axis 0, {k.shape[0]} scales",
                f"axis {L.weight_axis}, {got_s.size} scale(s)", axis_ok)
            if not axis_ok:
                continue
        elif got_s.size != 1:
            add("weight scale axis", L.weight_node, "one scale (per tensor)", f"{got_s.size} scales", False)
            continue
        u = _ulps32(got_s.reshape(np.shape(s_w)), s_w)
        worst = int(np.argmax(u)) if np.ndim(u) else 0
        add("weight scale", L.weight_node, _fmt(np.asarray(s_w, np.float32).reshape(-1)[worst]),
            _fmt(got_s.reshape(-1)[worst]) + ("" if np.max(u) == 0 else f" ({float(np.max(u)):.3g} ulp"
                                              + (f", channel {worst}" if np.ndim(u) else "") + ")"),
            float(np.max(u)) <= 1)
        zp = L.weight_zero_point
        add("weight zero point", L.weight_node, "0", "0" if zp is None or not np.any(zp) else _fmt(zp),
            zp is None or not np.any(zp))
        file_s = got_s.astype(np.float64).reshape(np.shape(s_w))
        values = k if L.op == "Conv" or L.weight_codes.shape == k.shape else k.T
        codes = L.weight_codes if L.weight_codes.shape == values.shape else np.asarray(L.weight_codes).T
        _codes(report, add, "weight codes", L.weight_node, codes, values, file_s,
               lambda: quantize_weight(values, file_s, E.weight_bits))
        # int32 bias: scale s_x * s_w, codes rint(b / scale)
        if L.bias_node is not None and L.act_scale is not None:
            want_b = np.float64(L.act_scale) * file_s.reshape(-1).astype(np.float64)
            got_b = np.asarray(L.bias_scale, np.float64).reshape(-1)
            if got_b.size == 1 and want_b.size > 1:
                got_b = np.broadcast_to(got_b, want_b.shape)
            if got_b.shape != want_b.shape:
                add("bias scale", L.bias_node, f"{want_b.size} scale(s) s_x·s_w", f"{got_b.size}", False)
                continue
            u = _ulps32(got_b, want_b)
            worst = int(np.argmax(u))
            add("bias scale = s_x·s_w", L.bias_node, _fmt(np.float32(want_b[worst])),
                _fmt(np.float32(got_b[worst])) + ("" if u[worst] == 0 else f" ({u[worst]:.3g} ulp, channel {worst})"),
                float(u[worst]) <= 1)
            bz = L.bias_zero_point
            add("bias zero point", L.bias_node, "0", "0" if bz is None or not np.any(bz) else _fmt(bz),
                bz is None or not np.any(bz))
            b = np.asarray(E.bias, np.float64)
            scale_b = got_b.astype(np.float64)
            _codes(report, add, "bias codes", L.bias_node, L.bias_codes, b, scale_b,
                   lambda: np.where(scale_b > 0, np.rint(b / np.where(scale_b > 0, scale_b, 1.0)), 0).astype(np.int64))
    return report


def check_qdq_file(path, expected: list[ExpectedLayer]) -> QDQReport:
    """:func:`read_qdq_layers` + :func:`check_qdq_layers` on the file at ``path``. A file that is not
    ONNX, or has no QuantizeLinear node (not QDQ), raises :class:`QDQFormatError` naming it."""
    onnx = _onnx()
    p = Path(path)
    try:
        proto = onnx.load(str(p))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same one-line refusal
        raise QDQFormatError(f"{str(p)!r} is not a readable ONNX file ({type(exc).__name__})") from None
    if not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        raise QDQFormatError(f"{str(p)!r} is not a QDQ file: it has no QuantizeLinear node")
    layers = read_qdq_layers(proto)
    return check_qdq_layers(layers, expected, path=str(p))


def expected_layers(records) -> list[ExpectedLayer]:
    """:class:`ExpectedLayer` list from plain records (``name, kernel, bias, act_range, weight_bits,
    per_channel, act_bits``), e.g. ``repspec.torch_impl.quantization.onnx_export.qdq_expectations``."""
    return [ExpectedLayer(r["name"], np.asarray(r["kernel"], np.float64), np.asarray(r["bias"], np.float64),
                          None if r["act_range"] is None else (float(r["act_range"][0]), float(r["act_range"][1])),
                          r["weight_bits"], bool(r["per_channel"]), int(r.get("act_bits", 8))) for r in records]
