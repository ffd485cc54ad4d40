"""A QDQ ONNX file checked node by node against the reference (repspec.conformance.qdq).

One tiny network is quantized with its first block's input quantized too (the normalized
image is signed, so that zero point is not 0), per-channel 8-bit weights and int32 biases,
then exported; the correct file passes every node check, and each single edit a broken
exporter makes — one activation scale 2% off, one zero point +1, bias scales of ``s_w``
instead of ``s_x·s_w``, one weight code changed, per-channel scales on axis 1 — fails, naming
the node.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the ONNX checks need the [onnx] extra (onnx, onnxruntime)")
pytest.importorskip("onnxruntime", reason="the ONNX checks need the [onnx] extra (onnx, onnxruntime)")

import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from repspec.conformance.qdq import (QDQFormatError, check_qdq_file, check_qdq_layers,  # noqa: E402
                                     expected_layers, read_qdq_layers)
from repspec.torch_impl.modules.models import create_model  # noqa: E402
from repspec.torch_impl.quantization.onnx_export import export_onnx, qdq_expectations, verify_onnx  # noqa: E402
from repspec.torch_impl.quantization.ptq import ptq_quantize  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("repvgg_tiny8", 3, in_channels=3).eval()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(2)]
    qm = ptq_quantize(model, batches, weight_bits=8, act_bits=8, per_channel=True, keep_first_fp32=False,
                      progress=False)
    path = tmp_path_factory.mktemp("qdq") / "tiny.onnx"
    export_onnx(qm, path, bias="int32")
    return path, expected_layers(qdq_expectations(model, qm))


def _edit(path, tmp_path, fn):
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    fn(proto, inits)
    out = tmp_path / "edited.onnx"
    onnx.save(proto, str(out))
    return out


def _set(inits, name, array):
    inits[name].CopyFrom(numpy_helper.from_array(array, name))


def _value(inits, name):
    return numpy_helper.to_array(inits[name]).copy()


def _failed(report):
    return {(f.node, f.check) for f in report.failures()}


def test_the_exported_file_passes_every_node_check_and_exercises_a_zero_point(exported):
    path, expected = exported
    report = check_qdq_file(path, expected)
    assert report.ok, report.table()
    zps = {f.node: f.got for f in report.findings if f.check == "activation zero point"}
    assert zps["stage0.act_quantize"] not in ("0", "None")  # a signed input: the zero point matters
    checks = {f.check for f in report.findings}
    assert {"activation scale", "activation zero point", "weight scale", "weight scale axis", "weight codes",
            "bias scale = s_x·s_w", "bias codes"} <= checks


def test_one_activation_scale_two_percent_off_fails_naming_its_node(exported, tmp_path):
    path, expected = exported
    name = "stage1.1.act_scale"
    out = _edit(path, tmp_path, lambda p, i: _set(i, name, (_value(i, name) * np.float32(1.02)).astype(np.float32)))
    # the int32 bias scale written from the true s_x no longer equals s_x·s_w either
    assert _failed(check_qdq_file(out, expected)) == {("stage1.1.act_quantize", "activation scale"),
                                                       ("stage1.1.rbr_reparam.bias_dequantize", "bias scale = s_x·s_w")}
    # the logits-only verdict does not see it
    assert verify_onnx(out).ok


def test_a_zero_point_changed_by_one_fails_naming_its_node(exported, tmp_path):
    path, expected = exported
    name = "stage0.act_zero_point"
    out = _edit(path, tmp_path, lambda p, i: _set(i, name, (_value(i, name) + 1).astype(np.uint8)))
    assert _failed(check_qdq_file(out, expected)) == {("stage0.act_quantize", "activation zero point")}


def test_bias_scales_of_s_w_alone_fail(exported, tmp_path):
    path, expected = exported

    def edit(p, i):
        _set(i, "stage2.0.rbr_reparam.bias_scale", _value(i, "stage2.0.rbr_reparam.weight_scale"))

    failed = _failed(check_qdq_file(_edit(path, tmp_path, edit), expected))
    assert ("stage2.0.rbr_reparam.bias_dequantize", "bias scale = s_x·s_w") in failed
    assert {node for node, _ in failed} == {"stage2.0.rbr_reparam.bias_dequantize"}


def test_one_weight_code_changed_fails(exported, tmp_path):
    path, expected = exported
    name = "stage3.0.rbr_reparam.weight_q"

    def edit(p, i):
        q = _value(i, name)
        q.reshape(-1)[5] = q.reshape(-1)[5] + (1 if q.reshape(-1)[5] < 127 else -1)
        _set(i, name, q)

    report = check_qdq_file(_edit(path, tmp_path, edit), expected)
    assert _failed(report) == {("stage3.0.rbr_reparam.weight_dequantize", "weight codes")}
    assert "1 code(s) differ" in report.failures()[0].got


def test_per_channel_scales_on_axis_1_fail(exported, tmp_path):
    path, expected = exported

    def edit(p, i):
        node = next(n for n in p.graph.node if n.name == "stage1.0.rbr_reparam.weight_dequantize")
        next(a for a in node.attribute if a.name == "axis").i = 1

    failed = _failed(check_qdq_file(_edit(path, tmp_path, edit), expected))
    assert failed == {("stage1.0.rbr_reparam.weight_dequantize", "weight scale axis")}


def test_a_file_with_no_matching_reference_or_not_qdq_is_refused(exported, tmp_path):
    path, expected = exported
    with pytest.raises(QDQFormatError, match="no matching reference"):
        check_qdq_layers(read_qdq_layers(onnx.load(str(path))), expected[:-1], path=str(path))
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(create_model("repvgg_tiny8", 3, in_channels=3).eval(), fp32)
    with pytest.raises(QDQFormatError, match="not a QDQ file"):
        check_qdq_file(fp32, expected)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(QDQFormatError, match="not a readable ONNX file"):
        check_qdq_file(junk, expected)
