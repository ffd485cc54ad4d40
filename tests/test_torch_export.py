"""SPEC §5: export of quantized models (safetensors + JSON metadata): round trip, corruption, atomicity."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from repspec.torch_impl import create_model
from repspec.torch_impl.quantization import export as ex
from repspec.torch_impl.quantization.ptq import build_quantized_model, ptq_quantize

SMALL = dict(num_blocks=(1, 2, 1), widths=(4, 6, 8), strides=(1, 1, 2))


def _model(dtype=torch.float32, name="repvgg_tiny8"):
    torch.manual_seed(0)
    m = create_model(name, num_classes=3, **SMALL).to(dtype)
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(6, 3, 8, 8, dtype=dtype))
    return m.eval()


def _data(dtype=torch.float32, n=2):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(4, 3, 8, 8, generator=g, dtype=dtype) for _ in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_channel, keep_last, wbits", [(False, True, 8), (True, False, 4), (False, False, 12)])
def test_uniform_round_trip_is_bit_exact(tmp_path, dtype, per_channel, keep_last, wbits):
    q = ptq_quantize(_model(dtype), _data(dtype), weight_bits=wbits, act_bits=6, per_channel=per_channel,
                     keep_last_fp32=keep_last, num_batches=2, progress=False)
    path = ex.export_quantized(q, tmp_path / "m.safetensors")
    loaded = ex.load_exported(path)
    x = torch.randn(5, 3, 8, 8, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    assert loaded.act_ranges() == q.act_ranges()
    assert loaded.state_size() == q.state_size()
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temp file left


def test_tensor_names_and_metadata(tmp_path):
    q = ptq_quantize(_model(), _data(), weight_bits=4, act_bits=8, keep_last_fp32=False, num_batches=1,
                     progress=False)
    path = ex.export_quantized(q, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        codes = f.get_tensor("stage1.0.weight_codes")
        zp = f.get_tensor("stage1.0.act_zero_point")
    assert {"stage0.weight", "stage0.bias"} <= keys
    for layer in ("stage1.0", "stage1.1", "stage2.0", "linear"):
        assert {f"{layer}.weight_codes", f"{layer}.weight_scale", f"{layer}.bias", f"{layer}.act_lo",
                f"{layer}.act_hi", f"{layer}.act_scale", f"{layer}.act_zero_point"} <= keys
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 7 and zp.dtype == torch.int32
    meta = ex.read_metadata(path)
    assert meta["format"] == "repspec-quantized" and meta["format_version"] == 1
    assert [e["name"] for e in meta["layers"]] == ["stage0", "stage1.0", "stage1.1", "stage2.0", "linear"]
    assert meta["layers"][1]["weight_scheme"] == "uniform" and meta["layers"][1]["weight_bits"] == 4
    assert meta["layers"][0]["weight_scheme"] is None and meta["config"]["calibrator"] == "minmax"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kmeans_codebook_round_trip_is_bit_exact(tmp_path, dtype):
    model = _model(dtype)
    g = torch.Generator().manual_seed(5)
    codebooks = {"stage1.0": torch.sort(torch.randn(16, generator=g)).values,
                 "stage2.0": torch.tensor([-0.5, 0.0, 0.0, 0.25])}  # duplicates: lowest index wins
    path = ex.export_quantized(model, tmp_path / "k.safetensors", codebooks=codebooks)
    loaded = ex.load_exported(path)
    ref = build_quantized_model(model, weight_bits=None, act_bits=None, codebooks=codebooks)
    x = torch.randn(3, 3, 8, 8, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(loaded(x), ref(x))
    w = loaded.net.stage1[0].rbr_reparam.weight
    assert set(w.flatten().tolist()) <= set(codebooks["stage1.0"].to(dtype).tolist())
    assert loaded.net.stage1[1].__class__.__name__ == "FusedConvBlock"  # not in codebooks: FP
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("stage1.0.weight_indices").dtype == torch.uint8
        assert f.get_tensor("stage1.0.codebook").shape == (16,)


def test_kmeans_export_with_activation_ranges(tmp_path):
    model = _model()
    codebooks = {"stage1.1": torch.linspace(-1, 1, 8)}
    path = ex.export_quantized(model, tmp_path / "k.safetensors", codebooks=codebooks, act_bits=8,
                               act_ranges={"stage1.1": (-0.5, 2.0)})
    loaded = ex.load_exported(path)
    assert loaded.act_ranges() == {"stage1.1": (-0.5, 2.0)}


def test_corrupted_or_partial_files_raise_clear_errors(tmp_path):
    q = ptq_quantize(_model(), _data(), num_batches=1, progress=False)
    path = ex.export_quantized(q, tmp_path / "m.safetensors")
    blob = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        ex.load_exported(tmp_path / "trunc.safetensors")
    flipped = bytearray(blob)
    flipped[-10] ^= 0xFF  # inside the tensor data
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum mismatch"):
        ex.load_exported(tmp_path / "flip.safetensors")
    save_file({"a": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a repspec quantized export"):
        ex.load_exported(tmp_path / "foreign.safetensors")
    save_file({"a": torch.zeros(2)}, str(tmp_path / "badjson.safetensors"), metadata={"repspec": "{"})
    with pytest.raises(ValueError, match="not valid JSON"):
        ex.load_exported(tmp_path / "badjson.safetensors")
    with pytest.raises(FileNotFoundError):
        ex.load_exported(tmp_path / "missing.safetensors")
    # a tensor removed but the checksum recomputed: the loader names the missing tensor
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["repspec"])
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "stage1.1.bias"}
    meta["sha256"] = ex._digest(tensors)
    save_file(tensors, str(tmp_path / "partial.safetensors"), metadata={"repspec": json.dumps(meta)})
    with pytest.raises(ValueError, match="missing tensor 'stage1.1.bias'"):
        ex.load_exported(tmp_path / "partial.safetensors")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    q = ptq_quantize(_model(), _data(), num_batches=1, progress=False)
    target = tmp_path / "m.safetensors"

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial garbage")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ex, "_save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ex.export_quantized(q, target)
    assert os.listdir(tmp_path) == []  # neither the target nor the temp file
    monkeypatch.undo()
    ex.export_quantized(q, target)
    before = target.read_bytes()
    monkeypatch.setattr(ex, "_save_file", failing_save)
    with pytest.raises(OSError):
        ex.export_quantized(q, target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["m.safetensors"]  # old file intact


def test_export_bad_input(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match="needs codebooks"):
        ex.export_quantized(model, tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match="model must be a QuantizedModel or a VGGNet"):
        ex.export_quantized(torch.nn.Linear(2, 2), tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match="path"):
        ex.export_quantized(model, 3, codebooks={"stage1.0": torch.zeros(2)})
    uncalibrated = build_quantized_model(model, act_bits=8)
    with pytest.raises(ValueError, match="not calibrated"):
        ex.export_quantized(uncalibrated, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="codebooks\\['stage1.0'\\] must contain only finite"):
        ex.export_quantized(model, tmp_path / "a.safetensors",
                            codebooks={"stage1.0": torch.tensor([0.0, float("nan")])})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("scheme", ["kmeans", "uniform"])
def test_qat_model_export_round_trip_is_bit_exact(tmp_path, scheme):
    """A QAT model (uniform QAT or ClusterQAT) exports its own codes/codebooks and ranges: the
    loaded model equals the QAT model in eval mode, bit for bit."""
    qat = pytest.importorskip("repspec.torch_impl.quantization.qat")
    model = _model(torch.float64)
    wq = qat.KMeansWeightQuantizer(3) if scheme == "kmeans" else qat.UniformWeightQuantizer(4, per_channel=True)
    qmodel = qat.make_qat_model(model, weight_quantizer=wq, act_bits=6)
    qmodel.train()
    with torch.no_grad():
        for x in _data(torch.float64, n=2):
            qmodel(x)  # observe activation ranges (and refit centroids)
    qmodel.eval()
    path = ex.export_quantized(qmodel, tmp_path / "qat.safetensors")
    loaded = ex.load_exported(path)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    meta = ex.read_metadata(path)
    assert [e["weight_scheme"] for e in meta["layers"]] == [None, scheme, scheme, scheme, None]
