"""INT8 QDQ ONNX files checked node by node against the reference (repspec.conformance.onnx_nodes).

The model quantizes its first layer (``keep_first_fp32=False``): that layer's input is the
signed network input, so its zero point is not 0 and a changed zero point is visible.
Each mutation of a correct file must fail the check naming the mutated node. Tolerances
are the module's table (``TOLERANCES``): scales to 1 float32 ulp, codes and zero points exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from repspec.conformance.onnx_nodes import OnnxNodeInputError, check_qdq_nodes  # noqa: E402
from repspec.torch_impl import create_model, ptq_quantize  # noqa: E402
from repspec.torch_impl.quantization.onnx_export import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("repvgg_tiny8", num_classes=5).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var")
                        else torch.randn(v.shape, generator=g) * 0.3)
    batches = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)]
    q = ptq_quantize(model, [(x, None) for x in batches], per_channel=True, keep_first_fp32=False,
                     keep_last_fp32=False, progress=False)
    path = tmp_path_factory.mktemp("nodes") / "model.onnx"
    export_onnx(q, path, model_name="repvgg_tiny8", bias="int32")
    return model, q, path, [x.double().numpy() for x in batches]


def _mutate(src, dst, fn):
    proto = onnx.load(str(src))
    fn(proto)
    onnx.save(proto, str(dst))
    return dst


def _init(proto, name):
    t = next(t for t in proto.graph.initializer if t.name == name)
    return t, numpy_helper.to_array(t).copy()


def _set(proto, name, array):
    t, _ = _init(proto, name)
    t.CopyFrom(numpy_helper.from_array(array, name))


def _failed(rep):
    return {(c.node, c.check) for c in rep.failures}


def test_correct_file_passes_with_recorded_and_recalibrated_ranges(setup):
    model, q, path, batches = setup
    rep = check_qdq_nodes(path, model, ranges=q.act_ranges(), batches=batches)
    assert rep.ok, rep.table()
    assert q.act_ranges()["stage0"][0] < 0  # the signed first input: a non-zero zero point is exercised
    checks = {c.check for c in rep.checks}
    assert {"act_scale", "act_zero_point", "weight_axis", "weight_scale", "weight_codes", "bias_scale",
            "range", "outputs"} <= checks
    zp = next(c for c in rep.checks if c.node == "stage0.act_quantize" and c.check == "act_zero_point")
    assert zp.expected != "uint8 0"


def test_activation_scale_two_percent_off_fails_naming_the_node(setup, tmp_path):
    model, q, path, batches = setup
    def fn(p):
        _, a = _init(p, "stage1.0.act_scale")
        _set(p, "stage1.0.act_scale", (a * np.float32(1.02)).astype(np.float32))
    rep = check_qdq_nodes(_mutate(path, tmp_path / "m.onnx", fn), model, ranges=q.act_ranges())
    assert ("stage1.0.act_quantize", "act_scale") in _failed(rep)


def test_zero_point_plus_one_fails_naming_the_node(setup, tmp_path):
    model, q, path, batches = setup
    def fn(p):
        _, a = _init(p, "stage0.act_zero_point")
        _set(p, "stage0.act_zero_point", (a + 1).astype(np.uint8))
    rep = check_qdq_nodes(_mutate(path, tmp_path / "m.onnx", fn), model, ranges=q.act_ranges())
    assert ("stage0.act_quantize", "act_zero_point") in _failed(rep)


def test_bias_scale_of_s_w_fails(setup, tmp_path):
    model, q, path, batches = setup
    def fn(p):
        _, s_w = _init(p, "stage1.0.rbr_reparam.weight_scale")
        _set(p, "stage1.0.rbr_reparam.bias_scale", s_w)
    rep = check_qdq_nodes(_mutate(path, tmp_path / "m.onnx", fn), model, ranges=q.act_ranges())
    assert ("stage1.0.rbr_reparam.bias_dequantize", "bias_scale") in _failed(rep)


def test_one_weight_code_changed_fails(setup, tmp_path):
    model, q, path, batches = setup
    def fn(p):
        _, c = _init(p, "stage2.0.rbr_reparam.weight_q")
        c.flat[3] = c.flat[3] + (1 if c.flat[3] < 127 else -1)
        _set(p, "stage2.0.rbr_reparam.weight_q", c)
    rep = check_qdq_nodes(_mutate(path, tmp_path / "m.onnx", fn), model, ranges=q.act_ranges())
    assert ("stage2.0.rbr_reparam.weight_dequantize", "weight_codes") in _failed(rep)


def test_per_channel_scale_on_axis_1_fails(setup, tmp_path):
    model, q, path, batches = setup
    def fn(p):
        node = next(n for n in p.graph.node if n.name == "stage1.0.rbr_reparam.weight_dequantize")
        next(a for a in node.attribute if a.name == "axis").i = 1
    rep = check_qdq_nodes(_mutate(path, tmp_path / "m.onnx", fn), model, ranges=q.act_ranges())
    assert ("stage1.0.rbr_reparam.weight_dequantize", "weight_axis") in _failed(rep)


def test_a_recorded_range_off_the_recalibration_fails(setup):
    model, q, path, batches = setup
    ranges = dict(q.act_ranges())
    lo, hi = ranges["stage1.0"]
    ranges["stage1.0"] = (lo, hi * 1.01)
    rep = check_qdq_nodes(path, model, ranges=ranges, batches=batches)
    assert ("stage1.0.act_quantize", "range") in _failed(rep)


def test_non_qdq_file_and_unmatched_reference_are_input_errors(setup, tmp_path):
    model, q, path, batches = setup
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    with pytest.raises(OnnxNodeInputError, match="not a QDQ file"):
        check_qdq_nodes(fp32, model, ranges=q.act_ranges())
    other = create_model("repvgg_tiny32", num_classes=5).eval()
    with pytest.raises(OnnxNodeInputError, match="no matching reference"):
        check_qdq_nodes(path, other, ranges=q.act_ranges())


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    from repspec.cli import main

    d = tmp_path_factory.mktemp("nodes_cli")
    torch.save(create_model("repvgg_tiny8", num_classes=10).state_dict(), d / "x.pth")
    assert main(["quantize", "ptq", "--checkpoint", str(d / "x.pth"), "--model", "repvgg_tiny8", "--dataset",
                 "digits", "--image-size", "16", "--per-channel", "--onnx", "--out", str(d / "q"), "--calib-batches",
                 "2", "--no-progress"]) == 0
    return d


def _verify(d, onnx_path, capsys):
    from repspec.cli import main

    code = main(["verify", "--onnx", str(onnx_path), "--nodes", "--reference", str(d / "x.pth"), "--model",
                 "repvgg_tiny8", "--ranges", str(d / "q")])
    return code, capsys.readouterr()


def test_cli_nodes_table_pass_fail_and_bad_input(cli_files, capsys, tmp_path):
    d = cli_files
    code, out = _verify(d, d / "q" / "model.onnx", capsys)
    assert code == 0, out.out
    assert "node | check | expected | got | verdict" in out.out and out.out.strip().splitlines()[-1].startswith("OK")

    def fn(p):
        _, a = _init(p, "stage2.0.act_scale")
        _set(p, "stage2.0.act_scale", (a * np.float32(1.02)).astype(np.float32))
    code, out = _verify(d, _mutate(d / "q" / "model.onnx", tmp_path / "m.onnx", fn), capsys)
    assert code == 1 and "stage2.0.act_quantize | act_scale" in out.out and "FAIL" in out.out

    fp32 = export_onnx(create_model("repvgg_tiny8", num_classes=10), tmp_path / "fp32.onnx")
    code, out = _verify(d, fp32, capsys)
    assert code == 2 and len(out.err.strip().splitlines()) == 1 and "fp32.onnx" in out.err and "not a QDQ" in out.err
    assert not (tmp_path / "fp32.onnx.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == \
        ["fp32.onnx", "m.onnx"]  # nothing written


def test_cli_no_matching_reference_is_one_line_exit_2(cli_files, capsys, tmp_path):
    from repspec.cli import main

    d = cli_files
    torch.save(create_model("repvgg_tiny32", num_classes=10).state_dict(), tmp_path / "other.pth")
    code = main(["verify", "--onnx", str(d / "q" / "model.onnx"), "--nodes", "--reference", str(tmp_path / "other.pth"),
                 "--model", "repvgg_tiny32", "--ranges", str(d / "q")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model.onnx" in err and "no matching reference" in err


def test_onnxruntime_quantize_static_file_passes_and_a_changed_zero_point_fails(tmp_path):
    """A file made by another tool (onnxruntime's quantize_static, QDQ, per channel, first conv quantized:
    its input is signed, so that zero point is not 0), checked against a reference recalibration."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)
    model = create_model("repvgg_tiny8", num_classes=5).eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    batches = [np.random.default_rng(i).standard_normal((4, 3, 16, 16)) for i in range(2)]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": b.astype(np.float32)} for b in batches])

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / "ort.onnx"
    quantization.quantize_static(str(fp32), str(out), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    rep = check_qdq_nodes(out, model, batches=batches)
    assert rep.ok, rep.table()
    first = next(c for c in rep.checks if c.check == "act_zero_point")
    assert first.expected != "uint8 0"
    proto = onnx.load(str(out))
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    _, zp = _init(proto, q.input[2])
    _set(proto, q.input[2], (zp + 1).astype(np.uint8))
    onnx.save(proto, str(tmp_path / "m.onnx"))
    assert (q.name, "act_zero_point") in _failed(check_qdq_nodes(tmp_path / "m.onnx", model, batches=batches))


def test_cli_recalibration_on_a_trained_checkpoint(tmp_path, capsys):
    """The path without recorded ranges: the reference recalibrates on the checkpoint's own training data.
    With quantize's batch size the file passes; on other batches the calibrated ranges differ, and the
    activation scales fail, naming the node."""
    from repspec.cli import main

    tiny = ["--image-size", "8", "--no-progress", "--threads", "1"]
    ckpt, q = tmp_path / "ckpt", tmp_path / "q"
    assert main(["train", "--model", "repvgg_tiny8", "--epochs", "1", "--batch-size", "128", "--out", str(ckpt),
                 *tiny]) == 0
    assert main(["quantize", "ptq", "--checkpoint", str(ckpt), "--onnx", "--out", str(q), "--calib-batches", "2",
                 "--batch-size", "32", "--calibrator", "percentile", *tiny]) == 0
    capsys.readouterr()

    def verify(*extra):
        code = main(["verify", "--onnx", str(q / "model.onnx"), "--nodes", "--reference", str(ckpt),
                     "--calibrator", "percentile", "--calib-batches", "2", *extra])
        return code, capsys.readouterr().out

    code, out = verify("--calib-batch-size", "32")
    assert code == 0, out
    code, out = verify("--calib-batch-size", "32", "--ranges", str(q))  # recorded ranges against the recalibration
    assert code == 0, out
    code, out = verify("--calib-batch-size", "16")
    assert code == 1 and "act_scale" in out and "FAIL" in out, out
