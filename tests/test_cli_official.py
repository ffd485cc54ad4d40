"""On the command line: original-code ``.pth`` checkpoints (``--checkpoint X.pth --model NAME``)
through convert / evaluate / quantize / analyze, the ONNX path (``convert --onnx``, ``quantize --onnx``,
``verify --onnx``), and bad input (one line, exit status 2; a failed verification exits 1).

The official checkpoint is built here from the original code's key names (``rbr_dense.conv``,
``rbr_dense.bn``, ``rbr_1x1.conv``, ``rbr_1x1.bn``, ``rbr_identity``), independently of repspec's
modules, for the small registry model ``repvgg_tiny8`` (stage0 3→8 stride 1; stage1 2x8; stage2 2x16
stride 2; stage3 1x32 stride 2), 10 classes for the digits data.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from repspec.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--no-progress", "--threads", "1"]
DIGITS = ["--dataset", "digits", "--image-size", "8"]
#: (prefix, in, out, stride) of repvgg_tiny8, transcribed from the registry table (docs), not from its modules
TINY8_BLOCKS = [("stage0", 3, 8, 1), ("stage1.0", 8, 8, 1), ("stage1.1", 8, 8, 1), ("stage2.0", 8, 16, 2),
                ("stage2.1", 16, 16, 1), ("stage3.0", 16, 32, 2)]


def official_tiny8_state(num_classes: int = 10, seed: int = 0) -> OrderedDict:
    """A RepVGG training-form state dict with the original key names (random values, positive variances)."""
    g = torch.Generator().manual_seed(seed)
    sd: OrderedDict = OrderedDict()

    def bn(prefix, c):
        sd[f"{prefix}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.bias"] = torch.randn(c, generator=g) * 0.1
        sd[f"{prefix}.running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(100)

    for p, cin, cout, stride in TINY8_BLOCKS:
        sd[f"{p}.rbr_dense.conv.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.3
        bn(f"{p}.rbr_dense.bn", cout)
        sd[f"{p}.rbr_1x1.conv.weight"] = torch.randn(cout, cin, 1, 1, generator=g) * 0.3
        bn(f"{p}.rbr_1x1.bn", cout)
        if cin == cout and stride == 1:
            bn(f"{p}.rbr_identity", cout)
    sd["linear.weight"] = torch.randn(num_classes, TINY8_BLOCKS[-1][2], generator=g) * 0.1
    sd["linear.bias"] = torch.randn(num_classes, generator=g) * 0.1
    return sd


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(code, err, command):
    assert code == 2, f"expected exit status 2, got {code}; stderr {err!r}"
    assert err.count("\n") == 1 and err.startswith(f"repspec {command}: error: "), f"not one error line: {err!r}"
    return err


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The official .pth, plus what convert / quantize made of it through the command line."""
    d = tmp_path_factory.mktemp("official")
    pth = d / "RepVGG-tiny8-train.pth"
    torch.save(official_tiny8_state(), pth)
    assert main(["convert", "--checkpoint", str(pth), "--model", "repvgg_tiny8", "--out", str(d / "deploy.safetensors"),
                 "--onnx", str(d / "deploy.onnx"), *FAST]) == 0
    assert main(["quantize", "ptq", "--checkpoint", str(pth), "--model", "repvgg_tiny8", *DIGITS, "--per-channel",
                 "--calib-batches", "2", "--onnx", "--out", str(d / "int8"), *FAST]) == 0
    return d


def test_convert_writes_the_fused_weights_of_the_official_file(official, capsys):
    from repspec.torch_impl import convert_to_deploy, load_official_checkpoint
    from repspec.torch_impl.training.checkpoint import read_state_dict

    want = convert_to_deploy(load_official_checkpoint(official / "RepVGG-tiny8-train.pth", "repvgg_tiny8"))
    got = read_state_dict(official / "deploy.safetensors")
    assert set(got) == set(want.state_dict()), sorted(set(got) ^ set(want.state_dict()))
    for k, v in want.state_dict().items():
        assert torch.equal(got[k], v), f"{k}: max abs diff {float((got[k] - v).abs().max()):.3g}"
    meta = json.loads(__import__("safetensors").safe_open(str(official / "deploy.safetensors"), "pt").metadata()
                      ["repspec"])
    assert meta["model"] == "repvgg_tiny8" and meta["data"] is None
    assert meta["official_checkpoint"]["path"].endswith("RepVGG-tiny8-train.pth")


def test_evaluate_official_pth_and_its_deploy_file_agree(official, capsys):
    pth = official / "RepVGG-tiny8-train.pth"
    code, out_pth, err = _run(capsys, ["evaluate", "--checkpoint", pth, "--model", "repvgg_tiny8", *DIGITS, *FAST])
    assert code == 0, err
    code, out_dep, err = _run(capsys, ["evaluate", official / "deploy.safetensors", *DIGITS, *FAST])
    assert code == 0, err
    acc = [line.split("test accuracy ")[1].split(" on ")[0] for line in (out_pth, out_dep)]
    assert acc[0] == acc[1], f"official checkpoint {acc[0]} vs its deploy file {acc[1]}"
    assert "449 digits test images" in out_pth


def test_quantize_output_has_a_qdq_onnx_and_evaluates(official, capsys):
    q = official / "int8"
    metrics = json.loads((q / "metrics.json").read_text())
    assert metrics["model"] == "repvgg_tiny8" and metrics["checkpoint_kind"] == "original-code .pth"
    assert metrics["onnx"]["file"] == "model.onnx" and "int32" in metrics["onnx"]["bias"]
    manifest = json.loads((q / "repspec-output.json").read_text())
    assert "model.onnx" in manifest["files"]
    proto = onnx.load(str(q / "model.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    code, out, err = _run(capsys, ["evaluate", q, *FAST])  # the output records the data it was quantized on
    assert code == 0 and f"test accuracy {metrics['quantized_accuracy']:.4f}" in out, (out, err)


def test_analyze_official_pth(official, tmp_path, capsys):
    code, out, err = _run(capsys, ["analyze", "--checkpoint", official / "RepVGG-tiny8-train.pth", "--model",
                                   "repvgg_tiny8", "--out", tmp_path / "an", *FAST[1:]])
    assert code == 0 and "Merged-weight statistics" in out, err
    assert (tmp_path / "an" / "report.json").is_file()


@pytest.mark.parametrize("onnx_file, extra", [
    ("deploy.onnx", ["--reference", "RepVGG-tiny8-train.pth", "--model", "repvgg_tiny8"]),
    ("deploy.onnx", ["--reference", "deploy.safetensors"]),
    ("deploy.onnx", []),  # the claim from the file's metadata; architecture only
    ("int8/model.onnx", ["--model", "repvgg_tiny8", "--reference", "int8"]),
])
def test_verify_onnx_passes_on_exported_files(official, capsys, onnx_file, extra):
    extra = [str(official / e) if (official / e).exists() else e for e in extra]
    code, out, err = _run(capsys, ["verify", "--onnx", official / onnx_file, *extra])
    assert code == 0 and out.startswith("OK: ") and "repvgg_tiny8" in out, (code, out, err)


def _tamper(src: Path, dst: Path, name: str = "stage1.0.rbr_reparam.weight", delta: float = 0.5) -> None:
    proto = onnx.load(str(src))
    init = next(i for i in proto.graph.initializer if i.name == name)
    w = onnx.numpy_helper.to_array(init).copy()
    w.flat[0] += delta
    init.CopyFrom(onnx.numpy_helper.from_array(w, name))
    onnx.save(proto, str(dst))


def test_verify_onnx_fails_on_a_tampered_weight(official, tmp_path, capsys):
    bad = tmp_path / "tampered.onnx"
    _tamper(official / "deploy.onnx", bad)
    code, out, err = _run(capsys, ["verify", "--onnx", bad, "--reference", official / "RepVGG-tiny8-train.pth",
                                   "--model", "repvgg_tiny8"])
    assert code == 1, (code, out, err)
    assert out.startswith("FAILED: ") and "stage1.0" in out and out.count("\n") == 1, out
    # without a reference only the architecture is checked: a changed weight is still a repvgg_tiny8
    code, out, _ = _run(capsys, ["verify", "--onnx", bad])
    assert code == 0 and out.startswith("OK: "), out


def test_verify_onnx_without_a_claim_lists_the_matching_architectures(official, tmp_path, capsys):
    from repspec.torch_impl import load_official_checkpoint
    from repspec.torch_impl.quantization.onnx_export import export_onnx

    path = export_onnx(load_official_checkpoint(official / "RepVGG-tiny8-train.pth", "repvgg_tiny8"),
                       tmp_path / "unclaimed.onnx")
    code, out, err = _run(capsys, ["verify", "--onnx", path])
    assert code == 0 and "claims no architecture" in out and "repvgg_tiny8" in out.splitlines()[1], (out, err)


# ------------------------------------------------------------------------------------- bad input


class Payload:
    """Unpickling this would run ``touch marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
@pytest.mark.parametrize("command", ["convert", "evaluate", "quantize"])
def test_a_pth_with_pickled_objects_is_never_unpickled(tmp_path, capsys, writer, command):
    marker = tmp_path / "executed"
    state = {"stage0.rbr_dense.conv.weight": Payload(marker), "linear.weight": torch.zeros(10, 32)}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(state, fh, protocol=2)
    argv = {"convert": ["convert", "--checkpoint", path, "--model", "repvgg_tiny8", "--out",
                        tmp_path / "d.safetensors"],
            "evaluate": ["evaluate", path, "--model", "repvgg_tiny8", *DIGITS],
            "quantize": ["quantize", "ptq", "--checkpoint", path, "--model", "repvgg_tiny8", *DIGITS, "--out",
                         tmp_path / "q"]}[command]
    code, _, err = _run(capsys, argv + FAST)
    err = _one_error_line(code, err, command)
    assert "refused" in err and "weights_only" in err, err
    assert not marker.exists(), "the pickle's payload ran"
    assert not (tmp_path / "d.safetensors").exists() and not (tmp_path / "q").exists()


def test_a_checkpoint_of_another_architecture_is_one_line(official, tmp_path, capsys):
    code, _, err = _run(capsys, ["convert", "--checkpoint", official / "RepVGG-tiny8-train.pth", "--model",
                                 "repvgg_tiny32", "--out", tmp_path / "d.safetensors", *FAST])
    err = _one_error_line(code, err, "convert")
    assert "is not a repvgg_tiny32 checkpoint" in err and "fits: repvgg_tiny8" in err, err
    assert not (tmp_path / "d.safetensors").exists()


def _residual_onnx(path: Path) -> Path:
    """A small ResNet-like graph (3x3 and 1x1 convs added, then ReLU): not a fused RepVGG-family network."""
    h, nh = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in
             (("w3", (4, 3, 3, 3)), ("w1", (4, 3, 1, 1)), ("b", (4,)), ("lw", (2, 4)), ("lb", (2,)))]
    nodes = [h.make_node("Conv", ["input", "w3", "b"], ["c3"], name="c3", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             h.make_node("Conv", ["input", "w1", "b"], ["c1"], name="c1", kernel_shape=[1, 1]),
             h.make_node("Add", ["c3", "c1"], ["s"], name="add"), h.make_node("Relu", ["s"], ["r"], name="relu"),
             h.make_node("GlobalAveragePool", ["r"], ["p"]), h.make_node("Flatten", ["p"], ["f"]),
             h.make_node("Gemm", ["f", "lw", "lb"], ["logits"], transB=1)]
    graph = h.make_graph(nodes, "resnetish",
                         [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                         [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 2])], inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    return path


def test_verify_onnx_refuses_a_network_that_is_not_repvgg(tmp_path, capsys):
    code, _, err = _run(capsys, ["verify", "--onnx", _residual_onnx(tmp_path / "resnetish.onnx")])
    err = _one_error_line(code, err, "verify")
    assert "not a fused RepVGG-family network" in err and "Add node" in err, err
    (tmp_path / "junk.onnx").write_bytes(b"\x00 not onnx")
    code, _, err = _run(capsys, ["verify", "--onnx", tmp_path / "junk.onnx", "--model", "repvgg_tiny8"])
    assert "not a valid ONNX model" in _one_error_line(code, err, "verify"), err


def test_a_wrong_claim_fails_verification(official, capsys):
    code, out, err = _run(capsys, ["verify", "--onnx", official / "deploy.onnx", "--model", "repvgg_tiny32"])
    assert code == 1 and out.startswith("FAILED: ") and "repvgg_tiny32" in out, (out, err)


def test_bad_arguments_are_one_line(official, tmp_path, capsys):
    pth = official / "RepVGG-tiny8-train.pth"
    five = tmp_path / "five.pth"
    torch.save(official_tiny8_state(num_classes=5), five)
    foreign = tmp_path / "mine.onnx"
    foreign.write_bytes(b"the user's file")
    owned = tmp_path / "owned.onnx"
    shutil.copy(official / "deploy.onnx", owned)
    cases = [
        (["convert", "--checkpoint", pth, "--out", tmp_path / "d.safetensors"], "name its architecture with --model"),
        (["evaluate", pth, "--model", "repvgg_tiny8"], "records no dataset: give --dataset"),
        (["evaluate", five, "--model", "repvgg_tiny8", *DIGITS], "5-class classifier"),
        (["evaluate", official / "deploy.safetensors", "--model", "repvgg_tiny8", *DIGITS], "--model applies to"),
        (["evaluate", pth, "--checkpoint", pth, "--model", "repvgg_tiny8", *DIGITS], "as SOURCE or as --checkpoint"),
        (["quantize", "ptq", "--checkpoint", pth, "--model", "repvgg_tiny8", *DIGITS, "--act-bits", "4", "--onnx",
          "--out", tmp_path / "q"], "--act-bits 4 has no standard QDQ form"),
        (["quantize", "ptq", "--checkpoint", five, "--model", "repvgg_tiny8", *DIGITS, "--out", tmp_path / "q"],
         "5-class classifier"),
        (["convert", "--checkpoint", pth, "--model", "repvgg_tiny8", "--out", tmp_path / "d.safetensors",
          "--onnx", foreign], "repspec did not write it"),
        (["convert", "--checkpoint", pth, "--model", "repvgg_tiny8", "--out", tmp_path / "d.safetensors",
          "--onnx", owned], "pass --overwrite"),
        (["convert", "--checkpoint", pth, "--model", "repvgg_tiny8", "--out", tmp_path / "d.safetensors",
          "--onnx", tmp_path / "d.txt"], "--onnx must end in .onnx"),
        (["verify", "--onnx", tmp_path / "missing.onnx"], "does not exist"),
        (["verify", "--onnx", official / "deploy.onnx", "--model", "repvgg_z9"], "unknown model 'repvgg_z9'"),
    ]
    for argv, message in cases:
        code, _, err = _run(capsys, argv + (FAST if argv[0] != "verify" else []))
        err = _one_error_line(code, err, argv[0])
        assert message in err, (argv, err)
    assert foreign.read_bytes() == b"the user's file"
    assert not (tmp_path / "d.safetensors").exists() and not (tmp_path / "q").exists()
    code, _, err = _run(capsys, ["convert", "--checkpoint", pth, "--model", "repvgg_tiny8", "--out",
                                 tmp_path / "d.safetensors", "--onnx", owned, "--overwrite", *FAST])
    assert code == 0, err  # repspec's own ONNX output is replaced with --overwrite


def test_quantize_refuses_models_with_se_blocks(official, tmp_path, capsys, monkeypatch):
    """PTQ/QAT would drop RepVGG-D2se's SE blocks: the command refuses before any output (a tiny SE
    model stands in for D2se, whose official checkpoint is ~0.5 GB)."""
    import repspec.torch_impl.training.official as official_module
    from repspec.torch_impl import create_model

    monkeypatch.setattr(official_module, "load_official_checkpoint",
                        lambda path, name, **kw: create_model("repvgg_tiny32", num_classes=10, use_se=True).eval())
    code, _, err = _run(capsys, ["quantize", "ptq", "--checkpoint", official / "RepVGG-tiny8-train.pth", "--model",
                                 "repvgg_tiny8", *DIGITS, "--out", tmp_path / "q", *FAST])
    assert "SE blocks" in _one_error_line(code, err, "quantize"), err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("holds", ["a pickled object", "a TorchScript archive"])
@pytest.mark.parametrize("command", ["convert", "train --scales"])
def test_a_refused_pth_is_one_line_naming_the_file_and_torch_says_nothing(tmp_path, holds, command):
    """In a fresh process (pytest would catch torch's warning): a .pth that torch.load(weights_only=True)
    refuses gives exactly one line naming the file, exit status 2; none of torch's warning, its
    multi-line message or its advice to load the file with weights_only=False reaches stderr."""
    path = tmp_path / "model.pth"
    if holds == "a pickled object":
        torch.save({"model": Payload(tmp_path / "executed")}, path)
    else:
        import warnings

        with warnings.catch_warnings():  # torch deprecates TorchScript; such files still exist
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    argv = {"convert": ["convert", "--checkpoint", path, "--model", "repvgg_tiny8", "--out",
                        tmp_path / "d.safetensors"],
            "train --scales": ["train", "--model", "repopt_vgg_tiny8", "--scales", path, "--out", tmp_path / "t",
                               *DIGITS, "--epochs", "1", *FAST]}[command]
    proc = subprocess.run([sys.executable, "-m", "repspec", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    err = _one_error_line(proc.returncode, proc.stderr, argv[0])
    assert repr(str(path)) in err and "weights_only=True" in err, err
    assert "Warning" not in err and "\x1b" not in err and "set to `False`" not in err, err
    assert not (tmp_path / "executed").exists(), "the pickle's payload ran"
    assert not (tmp_path / "d.safetensors").exists() and not (tmp_path / "t").exists()


def test_checks_before_torch_and_verify_onnx_without_hypothesis(official, tmp_path):
    """In a fresh process: bad .pth arguments are refused before torch is imported, and
    `verify --onnx` runs with Hypothesis and pytest unimportable."""
    bad = [["convert", "--checkpoint", tmp_path / "missing.pth", "--model", "repvgg_tiny8", "--out",
            tmp_path / "d.safetensors"],
           ["analyze", "--checkpoint", official / "RepVGG-tiny8-train.pth", "--out", tmp_path / "a"],
           ["evaluate", official / "RepVGG-tiny8-train.pth", "--model", "repvgg_tiny8"],
           ["verify", "--onnx", tmp_path / "missing.onnx"]]
    code = """
        import json, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("hypothesis", "pytest"):
                    raise ImportError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        from repspec.cli import main
        cases = json.loads(sys.argv[1])
        codes = [main(c) for c in cases]
        torch_before = "torch" in sys.modules
        codes.append(main(["verify", "--onnx", sys.argv[2]]))
        print(json.dumps({"codes": codes, "torch_before": torch_before,
                          "hypothesis": any(m.split(".")[0] == "hypothesis" for m in sys.modules)}))
        """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), json.dumps([[str(a) for a in c] for c in bad]),
                           str(official / "deploy.onnx")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["codes"] == [2] * len(bad) + [0], (res, proc.stderr)
    assert not res["torch_before"], "torch was imported before the arguments were refused"
    assert not res["hypothesis"], "verify --onnx imported Hypothesis"
    assert proc.stderr.count("\n") == len(bad), proc.stderr


def test_clusterqat_onnx_is_an_index_gather_graph_that_verifies(official, tmp_path, capsys):
    out = tmp_path / "cq"
    code, _, err = _run(capsys, ["quantize", "clusterqat", "--checkpoint", official / "RepVGG-tiny8-train.pth",
                                 "--model", "repvgg_tiny8", *DIGITS, "--bits", "3", "--epochs", "1",
                                 "--calib-batches", "1", "--onnx", "--out", out, *FAST])
    assert code == 0, err
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"Gather", "QuantizeLinear"} <= ops, ops  # k-means weights: uint8 indices -> Gather(codebook)
    assert "Gather" in json.loads((out / "metrics.json").read_text())["onnx"]["weights"]
    code, stdout, err = _run(capsys, ["verify", "--onnx", out / "model.onnx", "--reference", out])
    assert code == 0 and stdout.startswith("OK: qdq ONNX of repvgg_tiny8"), (stdout, err)


def test_train_takes_a_published_style_scale_pth(tmp_path, capsys):
    """`train --scales X.pth` reads a RepOpt-VGG scale file (the published layout: the HyperSearch
    model's scale entries) with load_official_scales, checked against --model."""
    from repspec.torch_impl.modules.models import expected_scale_keys

    g = torch.Generator().manual_seed(0)
    scales = {k: torch.rand(s, generator=g) + 0.5 for k, s in expected_scale_keys("repopt_vgg_tiny8").items()}
    torch.save(scales, tmp_path / "scales.pth")
    code, _, err = _run(capsys, ["train", "--model", "repopt_vgg_tiny8", "--scales", tmp_path / "scales.pth",
                                 "--epochs", "1", "--out", tmp_path / "run", *DIGITS[2:], "--batch-size", "256", *FAST])
    assert code == 0, err
    other = {k: torch.rand(s, generator=g) + 0.5 for k, s in expected_scale_keys("repopt_vgg_tiny32").items()}
    torch.save(other, tmp_path / "short.pth")  # another architecture's scale file
    code, _, err = _run(capsys, ["train", "--model", "repopt_vgg_tiny8", "--scales", tmp_path / "short.pth",
                                 "--epochs", "1", "--out", tmp_path / "run2", *DIGITS[2:], *FAST])
    assert "not a scale file for repopt_vgg_tiny8" in _one_error_line(code, err, "train"), err
    assert not (tmp_path / "run2").exists()


def test_an_original_repvgg_a0_layout_converts_and_a_class_mismatch_is_one_line(tmp_path, capsys):
    """RepVGG-A0 as the original code lays it out (the ports tests' independent transcription,
    1000 ImageNet classes): convert loads it strictly; evaluating it on the 10-class digits is refused."""
    from .test_official_registry import ORIGINAL_REPVGG, original_layout

    num_blocks, wm, groups, use_se = ORIGINAL_REPVGG["a0"]
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    for k, shape in original_layout("repvgg", num_blocks, wm, groups, use_se).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05
    pth = tmp_path / "RepVGG-A0-train.pth"
    torch.save({"state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items())}, pth)  # a DDP save
    code, out, err = _run(capsys, ["convert", "--checkpoint", pth, "--model", "repvgg_a0", "--out",
                                   tmp_path / "a0.safetensors", *FAST])
    assert code == 0 and "deploy form of repvgg_a0" in out, err
    code, _, err = _run(capsys, ["evaluate", tmp_path / "a0.safetensors", *DIGITS, *FAST])
    assert "1000-class classifier" in _one_error_line(code, err, "evaluate"), err

