"""Deployed networks as ONNX (FP32 and QDQ INT8), checked with onnxruntime on the CPU.

Tolerances (float32 throughout — ONNX graphs are float32):

- FP32 ONNX vs repspec's deploy model: ``1e-5 · max(1, max|logit|)``. Both sides compute
  the same convolutions in float32 with different summation orders; unit roundoff 6e-8
  times ~100 accumulated terms per output and a few layers stays below 1e-5 relative.
- QDQ, onnxruntime *without* graph optimizations (Q/DQ executed as written, float conv)
  vs repspec's fake-quant model: the same, plus a rounding tie that may flip one 8-bit
  code (so top-1 agreement is asserted, not bit equality of every logit).
- QDQ with onnxruntime's integer kernels (``QLinearConv``): requantization rounds
  differently (int32 accumulation, bias on the ``s_x·s_w`` grid, output requantized), so
  the difference is *measured*: max |logit error| and top-1 agreement on a fixed test
  set, asserted within stated bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from repspec.torch_impl import build_quantized_model, convert_to_deploy, create_model, ptq_quantize  # noqa: E402
from repspec.torch_impl.quantization.onnx_export import (  # noqa: E402
    OnnxExportError,
    export_onnx,
    onnx_session,
    verify_onnx,
)

FP32_RTOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomized(name, num_classes=5, seed=0, **kw):
    model = create_model(name, num_classes=num_classes, **kw).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var")
                        else torch.randn(v.shape, generator=g) * 0.3)
    return model


def run_ort(path, x, optimize=False):
    sess = onnx_session(path, optimize=optimize)
    return torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])


def _inputs(n, size, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_fp32_close(got, want, what):
    err = (got - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    assert err <= FP32_RTOL * scale, f"{what}: max abs logit error {err:.3e} > {FP32_RTOL} x {scale:.3g}"


@pytest.mark.parametrize("name, size, kw", [
    ("repvgg_tiny8", 8, {}),
    ("repvgg_tiny8_oabn", 8, {}),
    ("qarepvgg_tiny8", 8, {}),
    ("repopt_vgg_tiny8", 8, {}),
    ("csla_vgg_tiny8", 8, {}),
    ("repvgg_tiny32", 32, {"use_se": True, "override_groups_map": {2: 2, 3: 4}}),
])
def test_fp32_onnx_equals_deploy_model(tmp_path, name, size, kw):
    model = randomized(name, **kw)
    path = export_onnx(model, tmp_path / "m.onnx", model_name=name if not kw else None)
    x = _inputs(4, size)
    with torch.no_grad():
        want = convert_to_deploy(model)(x)
    _assert_fp32_close(run_ort(path, x), want, f"{name} FP32 ONNX vs deploy")
    _assert_fp32_close(run_ort(path, x, optimize=True), want, f"{name} FP32 ONNX (ORT optimized) vs deploy")
    report = verify_onnx(path, name if not kw else None, reference=model, image_size=size)
    assert report.ok, report.summary()
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["repspec.format"] == "fp32"


def _calib(size, seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 3, size, size, generator=g), torch.zeros(32, dtype=torch.long)) for _ in range(n)]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bias", ["float", "int32"])
def test_qdq_onnx_equals_fake_quant_model(tmp_path, per_channel, bias):
    model = randomized("repvgg_tiny32", num_classes=10)
    q = ptq_quantize(model, _calib(32), per_channel=per_channel, progress=False)
    path = export_onnx(q, tmp_path / "q.onnx", model_name="repvgg_tiny32", bias=bias)
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 7 and "DequantizeLinear" in ops  # the inputs of the 7 blocks after stage0
    axes = {a.i for n in proto.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"}
    assert (axes == {0}) if per_channel else not axes
    x = _inputs(64, 32)
    with torch.no_grad():
        want = q(x)
    got = run_ort(path, x)  # QDQ executed as written
    top1 = (got.argmax(1) == want.argmax(1)).double().mean().item()
    err = (got - want).abs().max().item()
    if bias == "float":
        assert top1 >= 0.98, f"QDQ (no ORT optimization) vs fake-quant: top-1 agreement {top1}, max err {err:.3e}"
        assert err <= 0.05 * max(1.0, want.abs().max().item()), f"max abs logit error {err:.3e}"
    report = verify_onnx(path, reference=q, num_samples=32)
    assert report.ok, report.summary()
    assert report.format == "qdq" and report.model_name == "repvgg_tiny32"


def test_qdq_integer_kernels_are_measured(tmp_path):
    """ORT's QLinearConv vs repspec's fake quantization: max |logit error| and top-1 agreement (measured)."""
    model = randomized("repvgg_tiny32", num_classes=10, seed=3)
    q = ptq_quantize(model, _calib(32, seed=2, n=4), per_channel=True, progress=False)
    path = export_onnx(q, tmp_path / "q.onnx", bias="int32")
    x = _inputs(256, 32, seed=5)
    with torch.no_grad():
        want = q(x)
    got = run_ort(path, x, optimize=True)
    err = (got - want).abs().max().item()
    top1 = (got.argmax(1) == want.argmax(1)).double().mean().item()
    scale = want.abs().max().item()
    assert top1 >= 0.95 and err <= 0.1 * scale, f"integer kernels: top-1 {top1:.4f}, max err {err:.3e} / {scale:.3g}"
    assert err > 0, "the integer path is expected to round differently somewhere (else this measures nothing)"


def test_kmeans_weights_export_as_index_gather(tmp_path):
    model = randomized("repvgg_tiny8")
    names = [p for p, _ in convert_to_deploy(model).named_blocks()][1:]
    codebooks = {n: torch.linspace(-0.6, 0.6, 16) ** 3 for n in names}  # non-uniform: no affine grid
    q = build_quantized_model(model, codebooks=codebooks, act_bits=None)
    path = export_onnx(q, tmp_path / "k.onnx")
    proto = onnx.load(str(path))
    kinds = {i.name: i.data_type for i in proto.graph.initializer}
    assert kinds["stage1.0.rbr_reparam.weight_index"] == onnx.TensorProto.UINT8
    assert [n.op_type for n in proto.graph.node].count("Gather") == len(names)
    x = _inputs(8, 8)
    with torch.no_grad():
        want = q(x)
    _assert_fp32_close(run_ort(path, x), want, "k-means ONNX vs k-means model")
    assert verify_onnx(path, reference=q).ok


def test_torch_exporter_output_is_verified(tmp_path):
    """``method='torch'`` (torch.onnx.export, ReduceMean head) is recognized by verify_onnx too."""
    model = randomized("repvgg_tiny8")
    path = export_onnx(model, tmp_path / "t.onnx", model_name="repvgg_tiny8", method="torch", image_size=8)
    report = verify_onnx(path, reference=model)
    assert report.ok, report.summary()


# ------------------------------------------------------------------------------ bad input


def _one_line(report):
    assert not report.ok
    s = report.summary()
    assert "\n" not in s, s
    return s


def test_verify_rejects_a_network_that_is_not_repvgg(tmp_path):
    """A residual (unfused) graph: Conv, Conv, Add, Relu → not a fused RepVGG-family network, one line."""
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    w1 = onnx.numpy_helper.from_array(np.zeros((4, 3, 1, 1), np.float32), "w1")
    b = onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b")
    lw = onnx.numpy_helper.from_array(np.zeros((2, 4), np.float32), "lw")
    lb = onnx.numpy_helper.from_array(np.zeros(2, np.float32), "lb")
    nodes = [h.make_node("Conv", ["input", "w", "b"], ["c3"], name="c3", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["input", "w1", "b"], ["c1"], name="c1", kernel_shape=[1, 1]),
             h.make_node("Add", ["c3", "c1"], ["s"], name="add"), h.make_node("Relu", ["s"], ["r"], name="relu"),
             h.make_node("GlobalAveragePool", ["r"], ["p"]), h.make_node("Flatten", ["p"], ["f"]),
             h.make_node("Gemm", ["f", "lw", "lb"], ["logits"], transB=1)]
    graph = h.make_graph(nodes, "resnetish", [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                       ["N", 3, 8, 8])],
                         [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 2])], [w, w1, b, lw, lb])
    path = tmp_path / "resnetish.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    s = _one_line(verify_onnx(path))
    assert "Add node" in s and "3x3" in s, s


def test_verify_rejects_a_wrong_claim_and_garbage(tmp_path):
    path = export_onnx(randomized("repvgg_tiny8"), tmp_path / "m.onnx", model_name="repvgg_tiny8")
    s = _one_line(verify_onnx(path, "repvgg_tiny32"))
    assert "repvgg_tiny32" in s, s
    unclaimed = export_onnx(randomized("repvgg_tiny8"), tmp_path / "u.onnx")
    report = verify_onnx(unclaimed)
    assert report.ok and report.model_name is None
    assert "repvgg_tiny8" in report.details["matching_architectures"]
    assert "repvgg_tiny32" not in report.details["matching_architectures"]
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
    assert "not a valid ONNX model" in _one_line(verify_onnx(tmp_path / "junk.onnx"))


def test_verify_detects_tampered_weights(tmp_path):
    model = randomized("repvgg_tiny8")
    path = export_onnx(model, tmp_path / "m.onnx", model_name="repvgg_tiny8")
    other = randomized("repvgg_tiny8", seed=9)
    s = _one_line(verify_onnx(path, reference=other))
    assert "weights of stage0 differ" in s, s


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(act_bits=4), OnnxExportError, "activation bits 4"),
    (dict(bias="int8"), ValueError, "bias must be one of"),
    (dict(model_name="repvgg_z9"), ValueError, "unknown model name"),
    (dict(opset=11), ValueError, "opset"),
    (dict(model_name="repvgg_tiny32"), ValueError, "does not describe this network"),
])
def test_export_rejects_bad_arguments(tmp_path, kwargs, exc, match):
    model = randomized("repvgg_tiny8")
    target = model
    if "act_bits" in kwargs:
        target = ptq_quantize(model, _calib(8), act_bits=kwargs.pop("act_bits"), progress=False)
    with pytest.raises(exc, match=match):
        export_onnx(target, tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(TypeError, match="VGGNet or a QuantizedModel"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "y.onnx")


# ------------------------------------------------------------------------------ properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from .strategies import vggnet_layouts  # noqa: E402


@settings(deadline=None)
@given(layout=vggnet_layouts(max_blocks=4, max_channels=6), family=st.sampled_from(["repvgg", "qarepvgg"]),
       seed=st.integers(0, 2**16))
def test_fp32_export_equals_deploy_on_any_layout(tmp_path_factory, layout, family, seed):
    """Any small layout (channels 1..6, strides 1/2, 1..4 blocks): the FP32 ONNX equals the deploy model and
    verify_onnx accepts it."""
    arch = {k: layout[k] for k in ("num_blocks", "widths", "strides", "in_channels")}
    model = create_model(f"{family}_tiny8", num_classes=layout["num_classes"], **arch).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var")
                        else torch.randn(v.shape, generator=g) * 0.3)
    path = export_onnx(model, tmp_path_factory.mktemp("p") / "m.onnx")
    x = torch.randn(layout["batch"], layout["in_channels"], *layout["hw"], generator=g)
    with torch.no_grad():
        want = convert_to_deploy(model)(x)
    sess = onnx_session(path, optimize=False)
    got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    _assert_fp32_close(got, want, f"layout {arch}")
    report = verify_onnx(path, reference=model, image_size=max(layout["hw"]))
    assert report.ok, report.summary()
