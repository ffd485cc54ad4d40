"""The ``repspec`` command line: every sub-command on tiny settings, and bad arguments.

Bad arguments must give one clear line on stderr, a non-zero exit status, and
leave nothing half-written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from repspec.cli import main  # noqa: E402

TINY = ["--image-size", "8", "--batch-size", "128", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny trained RepVGG checkpoint shared by the quantize/analyze/convert tests."""
    out = tmp_path_factory.mktemp("cli") / "ckpt"
    assert main(["train", "--model", "repvgg_tiny8", "--epochs", "2", "--out", str(out), *TINY]) == 0
    return out


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_a_checkpoint_and_resume_refuses_changed_arguments(trained, capsys):
    from repspec.torch_impl.training.checkpoint import checkpoint_info

    assert (trained / "checkpoint.json").is_file()
    assert checkpoint_info(trained) is not None
    code, _, err = _run(capsys, ["train", "--model", "repvgg_tiny8", "--epochs", "2", "--lr", "0.5", "--out",
                                 str(trained), "--resume", *TINY])
    assert code == 2 and "--lr 0.1 -> 0.5" in err and err.count("\n") == 1, err


def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path, capsys, monkeypatch):
    """Kill the run right after its first checkpoint, rerun the same command with --resume."""
    import repspec.torch_impl.training.train as train_module
    from repspec.torch_impl.training.checkpoint import read_state_dict

    argv = ["train", "--model", "qarepvgg_tiny8", "--epochs", "3", *TINY]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(argv + ["--out", str(a)]) == 0

    real_save = train_module.save_checkpoint
    calls = []

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt("simulated crash after the first checkpoint")

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    assert main(argv + ["--out", str(b)]) == 130  # Ctrl-C: exit status 130, the checkpoint is complete
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    assert main(argv + ["--out", str(b), "--resume"]) == 0
    sa, sb = read_state_dict(a), read_state_dict(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    capsys.readouterr()


@pytest.mark.parametrize("method, extra", [
    ("ptq", ["--bits", "4", "--calibrator", "percentile"]),
    ("qat", ["--bits", "4", "--epochs", "1"]),
    ("clusterqat", ["--bits", "2", "--epochs", "1", "--update-every", "2"]),
])
def test_quantize_writes_metrics_and_an_export_that_reloads(trained, tmp_path, capsys, method, extra):
    from repspec.torch_impl.quantization.export import load_exported

    out = tmp_path / method
    code, stdout, err = _run(capsys, ["quantize", method, "--checkpoint", str(trained), "--out", str(out),
                                      "--calib-batches", "1", *extra, *TINY])
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and 0.0 <= metrics["quantized_accuracy"] <= 1.0
    model = load_exported(out / "export.safetensors")
    x = torch.randn(2, 3, 8, 8)
    assert model(x).shape == (2, 10)


def test_analyze_writes_table_json_and_pngs(trained, tmp_path, capsys):
    out = tmp_path / "analysis"
    code, stdout, _ = _run(capsys, ["analyze", "--checkpoint", str(trained), "--out", str(out)])
    assert code == 0 and "Merged-weight statistics" in stdout
    assert (out / "report.json").is_file() and (out / "layer_stats.csv").is_file()
    # README's rule for JSON outputs: a missing value is null, never the string "nan" (nor NaN)
    report = json.loads((out / "report.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert report["rows"][0]["t0_max_abs"] is None  # stage0 changes width: no identity branch, no t0
    assert not [v for row in report["rows"] for v in row.values() if v in ("nan", "inf", "-inf")]
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)


def test_convert_deploy_equals_training_model(trained, tmp_path, capsys):
    from repspec.cli._loading import build_from_checkpoint
    from repspec.torch_impl.training.checkpoint import read_state_dict

    out = tmp_path / "deploy.safetensors"
    code, _, _ = _run(capsys, ["convert", "--checkpoint", str(trained), "--out", str(out)])
    assert code == 0
    state = read_state_dict(out)
    assert all(".rbr_dense." not in k and ".bn." not in k for k in state)
    model, _ = build_from_checkpoint(trained)
    from repspec.torch_impl.modules.deploy import convert_to_deploy

    deploy = convert_to_deploy(model)
    deploy.load_state_dict(state)
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(deploy(x), model.eval()(x), rtol=1e-4, atol=1e-5)  # float32, stated


def test_hypersearch_then_repopt_training(tmp_path, capsys):
    scales = tmp_path / "new" / "scales.json"  # a missing parent directory is made before training
    code, out, err = _run(capsys, ["hypersearch", "--model", "hs_vgg_tiny8", "--epochs", "1", "--out", str(scales),
                                   *TINY])
    assert code == 0, err
    loaded = json.loads(scales.read_text())
    assert any(k.endswith("scale_identity.weight") for k in json.dumps(loaded).split('"'))
    code, out, err = _run(capsys, ["train", "--model", "repopt_vgg_tiny8", "--scales", str(scales), "--epochs", "1",
                                   "--out", str(tmp_path / "repopt"), *TINY])
    assert code == 0, err


def test_train_repopt_from_the_published_b1_scale_file_is_refused_for_a_mismatched_model(tmp_path, capsys):
    published = Path(__file__).parent / "data" / "RepOpt-VGG-B1-scales.pth"
    code, _, err = _run(capsys, ["train", "--model", "repopt_vgg_tiny8", "--scales", str(published), "--epochs", "1",
                                 "--out", str(tmp_path / "x"), *TINY])
    assert code == 2 and "repspec train: error:" in err
    assert not (tmp_path / "x").exists()


def _write_cifar10_bin(root: Path, n: int = 6) -> None:
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = np.concatenate([rng.integers(0, 10, size=(n, 1)), rng.integers(0, 256, size=(n, 3072))], axis=1)
        rec.astype(np.uint8).tofile(d / name)


def test_train_on_cifar10_binary_files(tmp_path, capsys):
    _write_cifar10_bin(tmp_path / "data")
    code, out, err = _run(capsys, ["train", "--model", "repvgg_tiny32", "--dataset", "cifar10", "--data-dir",
                                   str(tmp_path / "data"), "--epochs", "1", "--batch-size", "8",
                                   "--out", str(tmp_path / "ck"), "--no-progress"])
    assert code == 0, err


def test_verify_runs_selected_clauses(capsys):
    code, out, _ = _run(capsys, ["verify", "--clauses", "§3.grad-mult,§5.kmeans-ties", "--max-examples", "5"])
    assert code == 0 and "§3.grad-mult" in out and "pass" in out


def test_theorem_demo(capsys):
    code, out, _ = _run(capsys, ["theorem", "--iterations", "3"])
    assert code == 0 and "largest deviation" in out


def test_demo_pipeline_on_a_tiny_config(tmp_path, capsys):
    """The demo's whole pipeline (train, PTQ by calibrator, PTQ vs bits, QAT vs ClusterQAT, plots)."""
    from repspec.experiments.demo import DemoConfig, run_demo

    cfg = DemoConfig(image_size=8, epochs=1, hs_epochs=1, qat_epochs=1, oabn_thresholds=(1.0,),
                     calibrators=("minmax", "entropy"), ptq_bits=(8, 4), qat_bits=(3,), qat_models=("repvgg",),
                     batch_size=256, calib_batches=1)
    out = tmp_path / "demo"
    assert run_demo(out, config=cfg, progress=False, log=lambda *a: None) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"repvgg", "repvgg_oabn_s1", "qarepvgg", "repopt_vgg"}
    assert set(results["models"]["repvgg"]["qat"]) == {"qat_w3", "clusterqat_w3"}
    for png in ("accuracy_vs_bits.png", "merged_weights_by_category.png"):
        assert (out / png).stat().st_size > 10_000
    assert "| repvgg |" in (out / "table.md").read_text()


BAD = [
    (["train", "--model", "no_such_model", "--out", "OUT"], "unknown model 'no_such_model'"),
    (["train", "--model", "repvgg_tiny8", "--dataset", "cifar10", "--data-dir", "MISSING", "--out", "OUT"],
     "is not a directory"),
    (["train", "--model", "repvgg_tiny8", "--dataset", "cifar10", "--out", "OUT"], "needs --data-dir"),
    (["train", "--model", "repvgg_tiny8", "--out", "OUT", "--resume"], "no checkpoint"),
    (["train", "--model", "repvgg_tiny8", "--oabn-threshold", "1", "--out", "OUT"], "applies to *_oabn models"),
    (["train", "--model", "repopt_vgg_tiny8", "--out", "OUT"], "need --scales"),
    (["quantize", "ptq", "--checkpoint", "MISSING", "--out", "OUT"], "does not exist"),
    (["quantize", "qat", "--checkpoint", "MISSING", "--bits", "1", "--out", "OUT"], "--bits must be >= 2"),
    (["analyze", "--checkpoint", "MISSING", "--out", "OUT"], "does not exist"),
    (["convert", "--checkpoint", "MISSING", "--out", "OUT.bin"], "must end in .safetensors"),
    (["hypersearch", "--model", "repvgg_tiny8", "--out", "OUT.json"], "must be a hs_vgg_* model"),
    (["hypersearch", "--out", "OUT.txt"], "must end in .safetensors or .json"),
    (["demo", "--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_fail_cleanly_and_write_nothing(tmp_path, capsys, argv, message):
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("MISSING", str(tmp_path / "missing")) for a in argv]
    code, out, err = _run(capsys, argv + ["--no-progress"] if argv[0] in ("train", "demo") else argv)
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir()), list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [
    ["quantize", "ptq", "--checkpoint", "X", "--out", "Y", "--bits", "17"],
    ["quantize", "ptq", "--checkpoint", "X", "--out", "Y", "--bits", "0"],
    ["quantize", "ptq", "--checkpoint", "X", "--out", "Y", "--act-bits", "2.5"],
    ["train", "--model", "repvgg_tiny8", "--out", "Y", "--epochs", "0"],
    ["train", "--model", "repvgg_tiny8", "--out", "Y", "--lr", "-1"],
])
def test_argument_ranges_are_checked_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error: argument" in capsys.readouterr().err
