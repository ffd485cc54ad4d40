"""The command line never loses a user's files and never silently gives a wrong result.

Covers the output rule (repspec replaces only what it wrote, only with ``--overwrite``),
one-line errors with exit status 2 (130 for Ctrl-C), checks before torch is imported,
reproducibility records and resume refusal, data settings taken from the checkpoint,
options refused where they would be ignored, scale provenance, manifest tampering,
deploy metadata and ``repspec evaluate``, a Hypothesis ``--out`` fuzzer and
kill-at-random-points tests. Models are ``repvgg_tiny8`` at 8x8 pixels, 1 epoch.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from repspec.cli import build_parser, main  # noqa: E402
from repspec.core.runtime import DEFAULT_THREADS  # noqa: E402

TINY = ["--image-size", "8", "--batch-size", "256", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """One tiny trained checkpoint (1 epoch), never modified by the tests (they copy it)."""
    out = tmp_path_factory.mktemp("robust") / "ckpt"
    assert main(["train", "--model", "repvgg_tiny8", "--epochs", "1", "--out", str(out), *TINY]) == 0
    return out


def _run(capsys, argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _refused(capsys, argv, *needles):
    """Exit status 2, exactly one line on stderr, containing every needle."""
    code, out, err = _run(capsys, argv)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def snapshot(root: Path) -> dict:
    """Every path under ``root`` -> (kind, content): bytes of files, targets of links."""
    snap = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                snap[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                snap[rel] = ("dir", None)
            else:
                snap[rel] = ("file", p.read_bytes())
    return snap


def _copy_ckpt(ckpt, dest: Path) -> Path:
    shutil.copytree(ckpt, dest)
    return dest


# --------------------------------------------------------------------------- the output rule


def test_out_dot_is_refused_and_nothing_is_deleted(ckpt, analysis, tmp_path, capsys, monkeypatch):
    _copy_ckpt(ckpt, tmp_path / "runs" / "repvgg")
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    _refused(capsys, ["analyze", "--checkpoint", "runs/repvgg", "--out", "."], "current directory")
    _refused(capsys, ["analyze", "--checkpoint", "runs/repvgg", "--out", ".", "--overwrite"], "current directory")
    _refused(capsys, ["analyze", "--checkpoint", "runs/repvgg", "--out", "runs"], "contains the input")
    _refused(capsys, ["analyze", "--checkpoint", "runs/repvgg", "--out", "runs/repvgg", "--overwrite"],
             "is an input")
    _refused(capsys, ["analyze", "--checkpoint", "runs/repvgg", "--out", "notes.txt"], "existing file")
    shutil.copytree(analysis, tmp_path / "an")  # an analyze output with a user file added is not replaced
    (tmp_path / "an" / "todo.txt").write_text("mine")
    before = snapshot(tmp_path)
    _refused(capsys, ["analyze", "--checkpoint", "runs/repvgg", "--out", "an", "--overwrite"], "todo.txt")
    assert snapshot(tmp_path) == before


def test_foreign_files_and_directories_are_never_replaced(ckpt, tmp_path, capsys):
    c = _copy_ckpt(ckpt, tmp_path / "c")
    (tmp_path / "user.safetensors").write_bytes(b"not mine")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("keep")
    (tmp_path / "dd.safetensors").mkdir()
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "link")
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        _refused(capsys, ["convert", "--checkpoint", c, "--out", tmp_path / "user.safetensors", *extra],
                 "did not write")
        _refused(capsys, ["analyze", "--checkpoint", c, "--out", tmp_path / "d", *extra], "did not write")
        _refused(capsys, ["analyze", "--checkpoint", c, "--out", tmp_path / "link", *extra], "symbolic link")
        _refused(capsys, ["convert", "--checkpoint", c, "--out", tmp_path / "dd.safetensors", *extra],
                 "is a directory")
        _refused(capsys, ["quantize", "ptq", "--checkpoint", c, "--out", tmp_path / "user.safetensors", *extra],
                 "existing file")
    assert snapshot(tmp_path) == before


def test_own_outputs_are_replaced_only_with_overwrite_and_only_when_untouched(ckpt, tmp_path, capsys):
    c = _copy_ckpt(ckpt, tmp_path / "c")
    out = tmp_path / "q"
    ptq = ["quantize", "ptq", "--checkpoint", c, "--out", out, "--calib-batches", "1", "--no-progress"]
    assert _run(capsys, ptq)[0] == 0
    first = snapshot(out)
    _refused(capsys, ptq, "--overwrite")
    assert snapshot(out) == first
    assert _run(capsys, ptq + ["--overwrite"])[0] == 0
    (out / "my-notes.txt").write_text("added by the user")
    _refused(capsys, ptq + ["--overwrite"], "my-notes.txt")
    assert (out / "my-notes.txt").read_text() == "added by the user"
    dep = tmp_path / "deploy.safetensors"
    assert _run(capsys, ["convert", "--checkpoint", c, "--out", dep])[0] == 0
    _refused(capsys, ["convert", "--checkpoint", c, "--out", dep], "--overwrite")
    assert _run(capsys, ["convert", "--checkpoint", c, "--out", dep, "--overwrite"])[0] == 0


def test_train_never_silently_overwrites_a_checkpoint(ckpt, tmp_path, capsys):
    c = _copy_ckpt(ckpt, tmp_path / "c")
    before = snapshot(c)
    _refused(capsys, ["train", "--model", "repvgg_tiny8", "--epochs", "1", "--out", c, *TINY], "--overwrite")
    _refused(capsys, ["train", "--model", "repvgg_tiny8", "--epochs", "1", "--out", c, "--resume", "--overwrite",
                      *TINY], "give one")
    assert snapshot(c) == before
    (tmp_path / "file").write_text("x")
    _refused(capsys, ["train", "--model", "repvgg_tiny8", "--out", tmp_path / "file", *TINY], "existing file")
    _refused(capsys, ["train", "--model", "repvgg_tiny8", "--out", tmp_path / "file" / "below", *TINY], "is a file")
    code, _, err = _run(capsys, ["train", "--model", "repvgg_tiny8", "--epochs", "1", "--lr", "0.05", "--out", c,
                                 "--overwrite", *TINY])
    assert code == 0, err
    assert json.loads((c / "checkpoint.json").read_text())["extra"]["run"]["lr"] == 0.05
    assert not [p for p in tmp_path.iterdir() if ".repspec-" in p.name]


def test_outputs_get_normal_permissions(ckpt, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        c = tmp_path / "c"
        assert main(["train", "--model", "repvgg_tiny8", "--epochs", "1", "--out", str(c), *TINY]) == 0
        assert _run(capsys, ["quantize", "ptq", "--checkpoint", c, "--out", tmp_path / "a", "--calib-batches", "1",
                             "--no-progress"])[0] == 0
        assert _run(capsys, ["convert", "--checkpoint", c, "--out", tmp_path / "d.safetensors"])[0] == 0
    finally:
        os.umask(old)
    for p in [c, tmp_path / "a", *c.iterdir(), *(tmp_path / "a").iterdir(), tmp_path / "d.safetensors"]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), f"{p}: mode {oct(mode)}"


def test_leftovers_of_a_killed_run_are_cleaned_on_the_next_run(ckpt, tmp_path, capsys):
    c = _copy_ckpt(ckpt, tmp_path / "c")
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (tmp_path / f".a.repspec-tmp-{dead}-abc").mkdir()
    (tmp_path / f".a.repspec-tmp-{dead}-abc" / "metrics.json").write_text("half")
    (tmp_path / f".x.safetensors.repspec-tmp-{dead}-q1.tmp").write_bytes(b"half")
    (tmp_path / "unrelated.tmp").write_text("user")
    code, _, err = _run(capsys, ["quantize", "ptq", "--checkpoint", c, "--out", tmp_path / "a", "--calib-batches",
                                 "1", "--no-progress"])
    assert code == 0 and "left by an interrupted run" in err
    assert not (tmp_path / f".a.repspec-tmp-{dead}-abc").exists()
    code, _, err = _run(capsys, ["convert", "--checkpoint", c, "--out", tmp_path / "x.safetensors"])
    assert code == 0 and "left by an interrupted run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c", "unrelated.tmp", "x.safetensors"]


# ----------------------------------------------------------------- threads and reproducibility


def test_every_command_defaults_to_the_shared_thread_count():
    for cmd in ("demo", "train", "hypersearch", "quantize", "analyze", "convert", "evaluate"):
        parser = build_parser([cmd])
        sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
        threads = next(a for a in sub.choices[cmd]._actions if "--threads" in a.option_strings)
        assert threads.default == DEFAULT_THREADS, cmd


def test_resume_refuses_a_different_thread_count_unless_allowed(ckpt, tmp_path, capsys):
    c = _copy_ckpt(ckpt, tmp_path / "c")
    rec = json.loads((c / "checkpoint.json").read_text())["extra"]["reproducibility"]
    assert rec["torch_threads"] == DEFAULT_THREADS and rec["torch_version"] == torch.__version__
    assert rec["device"] == "cpu"
    args = ["train", "--model", "repvgg_tiny8", "--epochs", "1", "--out", c, "--resume", *TINY]
    before = snapshot(c)
    _refused(capsys, args + ["--threads", "2"], "torch_threads: 1 -> 2", "--allow-nonidentical-resume")
    assert snapshot(c) == before
    # the run is finished, so this resume trains nothing: it shows the one-line warning only
    code, _, err = _run(capsys, args + ["--threads", "2", "--allow-nonidentical-resume"])
    assert code == 0 and err.count("\n") == 1 and "warning" in err and "not be bit-identical" in err


def test_resume_with_more_epochs_extends_a_finished_run(ckpt, tmp_path, capsys):
    from repspec.torch_impl.training.checkpoint import load_checkpoint_extra

    c = _copy_ckpt(ckpt, tmp_path / "c")
    code, out, err = _run(capsys, ["train", "--model", "repvgg_tiny8", "--epochs", "3", "--out", c, "--resume",
                                   *TINY])
    assert code == 0, err
    extra = load_checkpoint_extra(c)
    hist = extra["train_state"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[1]["lr"] == pytest.approx(0.1)  # a new cosine cycle from --lr, not lr ~ 0 or a rising cosine
    assert extra["extensions"] == [{"from_epochs": 1, "to_epochs": 3}] and extra["run"]["epochs"] == 3
    _refused(capsys, ["train", "--model", "repvgg_tiny8", "--epochs", "2", "--out", c, "--resume", *TINY],
             "fewer than")
    _refused(capsys, ["train", "--model", "repvgg_tiny8", "--epochs", "3", "--momentum", "0.5", "--out", c,
                      "--resume", *TINY], "--momentum 0.9 -> 0.5")


# --------------------------------------------------------- data settings come from the checkpoint


@pytest.mark.parametrize("flags, needle", [
    (["--image-size", "32"], "--image-size 32 contradicts"),
    (["--seed", "5"], "--seed 5 contradicts"),
    (["--dataset", "cifar10", "--data-dir", "."], "--dataset cifar10 contradicts"),
])
def test_quantize_refuses_data_flags_that_contradict_the_checkpoint(ckpt, tmp_path, capsys, flags, needle):
    _refused(capsys, ["quantize", "ptq", "--checkpoint", ckpt, "--out", tmp_path / "q", *flags], needle)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("method, flags, needle", [
    ("ptq", ["--epochs", "2"], "ptq does no training"),
    ("ptq", ["--lr", "0.1"], "ptq does no training"),
    ("ptq", ["--update-every", "3"], "ptq does no training"),
    ("qat", ["--update-every", "3"], "clusterqat only"),
    ("clusterqat", ["--per-channel"], "uniform weights"),
])
def test_options_a_method_would_ignore_are_refused(ckpt, tmp_path, capsys, method, flags, needle):
    _refused(capsys, ["quantize", method, "--checkpoint", ckpt, "--out", tmp_path / "q", *flags], needle)


def test_quantize_uses_the_checkpoint_data_and_writes_full_metrics(ckpt, tmp_path, capsys):
    results = {}
    for cal in ("minmax", "entropy"):
        out = tmp_path / cal
        code, stdout, err = _run(capsys, ["quantize", "qat", "--checkpoint", ckpt, "--out", out, "--bits", "4",
                                          "--epochs", "1", "--calib-batches", "1", "--calibrator", cal,
                                          "--batch-size", "256", "--no-progress"])
        assert code == 0, err
        text = (out / "metrics.json").read_text()
        assert "NaN" not in text and '"nan"' not in text
        results[cal] = m = json.loads(text)
        assert m["data"]["image_size"] == 8 and m["fp32_accuracy"] > 0.2  # the 8-pixel model on 8-pixel data
        for key in ("state_size", "qat_history", "lr", "epochs", "calibrator", "reproducibility"):
            assert m[key] is not None, key
        assert m["lr"] == 1e-4 and m["epochs"] == 1 and m["update_every"] is None
    assert results["minmax"]["initial_act_ranges"] != results["entropy"]["initial_act_ranges"], \
        "--calibrator must change the activation ranges QAT starts from"


# ------------------------------------------------------------------ scales and manifests


def _scales_file(path: Path, value: float) -> Path:
    from repspec.torch_impl.modules.models import expected_scale_keys

    body = {k: {"dtype": "float32", "values": [value] * shape[0]}
            for k, shape in expected_scale_keys("repopt_vgg_tiny8").items()}
    path.write_text(json.dumps({"format": "repspec-scales", "version": 1, "scales": body}))
    return path


def test_non_positive_scales_are_refused_and_the_scales_hash_is_recorded(tmp_path, capsys):
    import hashlib

    for bad in (0.0, -1.0):
        f = _scales_file(tmp_path / f"bad{bad}.json", bad)
        _refused(capsys, ["train", "--model", "repopt_vgg_tiny8", "--scales", f, "--out", tmp_path / "x",
                          "--epochs", "1", *TINY], "must be > 0")
        assert not (tmp_path / "x").exists()
    good = _scales_file(tmp_path / "good.json", 1.0)
    assert _run(capsys, ["train", "--model", "repopt_vgg_tiny8", "--scales", good, "--out", tmp_path / "r",
                         "--epochs", "1", *TINY])[0] == 0
    rec = json.loads((tmp_path / "r" / "checkpoint.json").read_text())["extra"]["scales"]
    assert rec["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()


def test_a_renamed_model_in_the_manifest_is_refused(ckpt, tmp_path, capsys):
    c = _copy_ckpt(ckpt, tmp_path / "c")
    man = json.loads((c / "checkpoint.json").read_text())
    man["extra"]["model"] = "repvgg_tiny8_oabn"
    (c / "checkpoint.json").write_text(json.dumps(man))
    for cmd in (["quantize", "--out", tmp_path / "a"], ["convert", "--out", tmp_path / "d.safetensors"],
                ["evaluate"]):
        argv = [cmd[0], c] if cmd[0] == "evaluate" else [cmd[0], *(["ptq"] if cmd[0] == "quantize" else []),
                                                         "--checkpoint", c, *cmd[1:]]
        _refused(capsys, argv, "was edited after it was written")
    assert not (tmp_path / "a").exists() and not (tmp_path / "d.safetensors").exists()


# --------------------------------------------------------------- deploy metadata and evaluate


def test_evaluate_a_checkpoint_its_deploy_file_and_a_quantized_export(ckpt, tmp_path, capsys):
    from repspec.core.outputs import safetensors_metadata

    dep = tmp_path / "deploy.safetensors"
    assert _run(capsys, ["convert", "--checkpoint", ckpt, "--out", dep])[0] == 0
    meta = json.loads(safetensors_metadata(dep)["repspec"])
    for key in ("model", "num_classes", "widths", "strides", "num_blocks", "repspec_version", "data"):
        assert key in meta, key
    accs = {}
    for name, src in (("ckpt", ckpt), ("deploy", dep)):
        code, out, err = _run(capsys, ["evaluate", src, "--no-progress"])
        assert code == 0, err
        accs[name] = float(out.split("test accuracy ")[1].split()[0])
    assert accs["ckpt"] == accs["deploy"]
    q = tmp_path / "q"
    assert _run(capsys, ["quantize", "ptq", "--checkpoint", ckpt, "--out", q, "--calib-batches", "1",
                         "--no-progress"])[0] == 0
    ptq_acc = json.loads((q / "metrics.json").read_text())["quantized_accuracy"]
    for src in (q, q / "export.safetensors"):
        code, out, err = _run(capsys, ["evaluate", src, "--no-progress"])
        assert code == 0, err
        assert float(out.split("test accuracy ")[1].split()[0]) == pytest.approx(ptq_acc, abs=1e-4)


# ------------------------------------------------------------------- errors a user sees


def test_user_errors_are_one_line_with_status_2(ckpt, tmp_path, capsys):
    c = _copy_ckpt(ckpt, tmp_path / "c")
    (tmp_path / "dir").mkdir()
    _refused(capsys, ["convert", "--checkpoint", c, "--out", tmp_path / "dir"], "must end in .safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    _refused(capsys, ["convert", "--checkpoint", c, "--out", tmp_path / "dir.safetensors"], "is a directory")
    (tmp_path / "s.json").mkdir()
    _refused(capsys, ["hypersearch", "--out", tmp_path / "s.json", *TINY], "is a directory")
    _refused(capsys, ["hypersearch", "--out", tmp_path / "missing" / "deeper" / "x.txt", *TINY], "must end in")
    _refused(capsys, ["train", "--model", "repvgg_tiny8", "--out", tmp_path / "t", "--image-size", "4000"],
             "image size must be in 1..1024")
    _refused(capsys, ["train", "--model", "repvgg_tiny8", "--out", tmp_path / "t", "--momentum", "5"],
             "momentum must be in [0, 1)")
    _refused(capsys, ["train", "--model", "repvgg_tiny8", "--out", tmp_path / "t", "--epochs", "2", "--lr", "1e6",
                      *TINY], "diverged")
    _refused(capsys, ["verify", "--json", tmp_path / "dir", "--clauses", "§3.grad-mult"], "is a directory")
    (tmp_path / "mine.json").write_text("{}")
    _refused(capsys, ["verify", "--json", tmp_path / "mine.json", "--clauses", "§3.grad-mult"], "did not write")
    _refused(capsys, ["evaluate", tmp_path / "dir"], "not a repspec checkpoint")


def test_argparse_errors_are_one_line(capsys):
    for argv in (["nosuchcommand"], ["train"], ["quantize", "gptq"], ["train", "--model", "x", "--out", "y",
                                                                         "--bogus"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and "error:" in err, err


def test_corrupt_image_in_a_folder_dataset(tmp_path, capsys):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 10, 200 if cls == "a" else 0)).save(tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "data" / "b" / "9.png").write_bytes(b"\x89PNG broken")
    _refused(capsys, ["train", "--model", "repvgg_tiny8", "--dataset", "folder", "--data-dir", tmp_path / "data",
                      "--image-size", "8", "--epochs", "1", "--out", tmp_path / "t", "--no-progress"],
             "cannot read image")


def test_ctrl_c_during_training_exits_130_with_a_complete_checkpoint(tmp_path, capsys, monkeypatch):
    import repspec.torch_impl.training.train as train_module
    from repspec.torch_impl.training.checkpoint import load_checkpoint_extra

    real = train_module.save_checkpoint

    def save_then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_interrupt)
    code, _, err = _run(capsys, ["train", "--model", "repvgg_tiny8", "--epochs", "2", "--out", tmp_path / "t", *TINY])
    assert code == 130 and err.count("\n") == 1 and "interrupted" in err
    assert load_checkpoint_extra(tmp_path / "t")["train_state"]["global_step"] >= 1
    assert not [p for p in tmp_path.rglob("*") if ".repspec-tmp" in p.name]


def test_ctrl_c_before_the_first_checkpoint_of_an_overwrite_leaves_no_temporary(tmp_path, capsys, monkeypatch):
    """``train --overwrite`` trains into a temporary directory beside the old checkpoint; interrupted
    before its first checkpoint, that (empty) directory goes and the old checkpoint is untouched."""
    import repspec.torch_impl.training.train as train_module

    out = tmp_path / "t"
    assert main(["train", "--model", "repvgg_tiny8", "--epochs", "1", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)

    def interrupted_at_once(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_classifier", interrupted_at_once)
    code, _, err = _run(capsys, ["train", "--model", "repvgg_tiny8", "--epochs", "2", "--out", out, "--overwrite",
                                 *TINY])
    assert code == 130 and err.count("\n") == 1 and "interrupted" in err, err
    assert not [p.name for p in tmp_path.iterdir() if ".repspec-" in p.name]
    assert snapshot(tmp_path) == before


def test_ctrl_c_while_an_output_is_replaced_puts_the_old_one_back(ckpt, analysis, tmp_path, capsys, monkeypatch):
    """Interrupted between moving the old output aside and renaming the new one in, the run puts the
    old output back and leaves no temporary (the next run would otherwise have to restore it)."""
    out = tmp_path / "an"
    shutil.copytree(analysis, out)
    before = snapshot(tmp_path)
    real_replace, interrupted = os.replace, []

    def replace(a, b):
        if Path(b) == out and not interrupted:  # the new output's rename: the old one is aside by now
            interrupted.append(b)
            raise KeyboardInterrupt
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    code, _, err = _run(capsys, ["analyze", "--checkpoint", ckpt, "--out", out, "--overwrite", "--no-progress"])
    monkeypatch.undo()
    assert code == 130 and err.count("\n") == 1 and "interrupted" in err, err
    assert not [p.name for p in tmp_path.iterdir() if ".repspec-" in p.name]
    assert snapshot(tmp_path) == before


def test_help_has_defaults_every_flag_documented_and_a_version(capsys):
    parser = build_parser(["verify"])
    sub = parser._subparsers._group_actions[0]
    for name, p in sub.choices.items():
        for a in p._actions:
            if a.option_strings and a.help != "==SUPPRESS==":
                assert a.help, f"{name} {a.option_strings} has no help"
        text = p.format_help()
        assert "--list-models" not in text and "export`" not in text.replace("quantize`", ""), name
    assert "(default: 10)" in sub.choices["train"].format_help()
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("repspec ")


# ------------------------------------------------------- real processes: imports and packaging


def _python(code: str, *args, timeout=120, preexec_fn=None, env=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, preexec_fn=preexec_fn, env=env)


def test_bad_arguments_are_refused_before_torch_is_imported(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    cases = [
        ["train", "--model", "repvgg_tiny8", "--out", tmp_path / "file.txt"],
        ["train", "--model", "repvgg_tiny8", "--out", tmp_path / "file.txt" / "x"],
        ["hypersearch", "--out", tmp_path / "missing.txt"],
        ["analyze", "--checkpoint", tmp_path / "nope", "--out", tmp_path / "a"],
        ["quantize", "ptq", "--checkpoint", tmp_path, "--out", tmp_path / "q", "--epochs", "3"],
        ["convert", "--checkpoint", tmp_path, "--out", "."],
        ["train", "--model", "repvgg_tiny8", "--dataset", "cifar10", "--out", tmp_path / "t"],
        ["train", "--model", "repvgg_a9", "--out", tmp_path / "t"],  # not a registry name
        ["hypersearch", "--model", "hs_vgg_nope", "--out", tmp_path / "s.json"],
        ["evaluate", tmp_path / "x.pth", "--model", "resnet50"],
    ]
    out = _python("""
        import sys, json
        from repspec.cli import main
        cases = json.loads(sys.argv[1])
        codes = [main(c) for c in cases]
        print(json.dumps({"codes": codes, "torch": "torch" in sys.modules}))
        """, json.dumps([[str(a) for a in c] for c in cases]))
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["codes"] == [2] * len(cases) and not res["torch"], (res, out.stderr)
    assert out.stderr.count("\n") == len(cases), out.stderr
    for name in ("repvgg_a9", "hs_vgg_nope", "resnet50"):
        assert f"unknown model {name!r}; choose one of: " in out.stderr, out.stderr


def test_the_cli_works_with_the_runtime_dependencies_only():
    out = _python("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("hypothesis", "pytest"):
                    raise ImportError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        from repspec.cli import main
        assert main(["theorem", "--iterations", "1"]) == 0
        try:
            main(["--help"])
        except SystemExit as e:
            assert e.code == 0
        print("verify-rc", main(["verify", "--clauses", "§3.grad-mult"]))
        assert not any(m.split(".")[0] == "hypothesis" for m in sys.modules)
        """)
    assert "verify-rc 2" in out.stdout, (out.stdout, out.stderr)
    assert out.stderr.strip().count("\n") == 0 and "pip install 'repspec[test]'" in out.stderr, out.stderr


def _read_only_dir(tmp_path: Path) -> Path:
    """A directory nothing can be created in. Root ignores permission bits, so as root this is
    /sys (sysfs refuses new files even to root); skipped where that does not hold."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o555)
        return ro
    try:
        fd, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(name)
    pytest.skip("running as root and /sys is writable: no read-only directory to test with")


def test_an_output_in_a_read_only_directory_is_refused(ckpt, tmp_path, capsys):
    ro = _read_only_dir(tmp_path)
    before = sorted(os.listdir(ro))
    _refused(capsys, ["convert", "--checkpoint", ckpt, "--out", ro / "d.safetensors"], "cannot create files")
    _refused(capsys, ["analyze", "--checkpoint", ckpt, "--out", ro / "a"], "cannot create files")
    _refused(capsys, ["quantize", "ptq", "--checkpoint", ckpt, "--out", ro / "new" / "q"], "cannot create files")
    _refused(capsys, ["verify", "--json", ro / "r.json", "--clauses", "§3.grad-mult"], "cannot create files")
    assert sorted(os.listdir(ro)) == before
    if ro.name == "ro":
        os.chmod(ro, 0o755)


@pytest.fixture(scope="module")
def analysis(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis") / "a"
    assert main(["analyze", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------------ the --out fuzzer

_PLACES = [".", "runs", "runs/ckpt", "runs/ckpt/checkpoint.json", "notes.txt", "full", "full/new", "empty", "own",
           "own_dirty", "link_dir", "link_file", "dangling", "ro", "ro/new", "new", "new/deeper", "deploy", "user"]


def _build_world(base: Path, ckpt: Path, own_dir: Path, deploy: Path) -> None:
    shutil.copytree(ckpt, base / "runs" / "ckpt")
    (base / "notes.txt").write_text("user notes")
    (base / "full").mkdir()
    (base / "full" / "data.bin").write_bytes(os.urandom(16))
    (base / "empty").mkdir()
    shutil.copytree(own_dir, base / "own")
    shutil.copytree(own_dir, base / "own_dirty")
    (base / "own_dirty" / "mine.txt").write_text("user file inside a repspec output")
    os.symlink(base / "full", base / "link_dir")
    os.symlink(base / "notes.txt", base / "link_file")
    os.symlink(base / "nowhere", base / "dangling")
    (base / "ro").mkdir()
    (base / "ro" / "kept.txt").write_text("kept")
    os.chmod(base / "ro", 0o555)
    shutil.copy(deploy, base / "deploy.safetensors")
    (base / "user.safetensors").write_bytes(b"\x08" + bytes(7) + b'{"a": 1}')  # someone else's file
    (base / "user").write_text("a file without suffix")


@pytest.fixture(scope="module")
def fuzz_assets(ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("assets")
    assert main(["quantize", "ptq", "--checkpoint", str(ckpt), "--out", str(d / "own"), "--calib-batches", "1",
                 "--no-progress"]) == 0
    assert main(["convert", "--checkpoint", str(ckpt), "--out", str(d / "deploy.safetensors")]) == 0
    return d / "own", d / "deploy.safetensors"


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@example(command="convert", place="user", overwrite=True, absolute=False)  # the reported cases, always run
@example(command="quantize", place="full", overwrite=True, absolute=True)
@example(command="quantize", place="own_dirty", overwrite=True, absolute=False)
@example(command="quantize", place=".", overwrite=True, absolute=False)
@example(command="quantize", place="runs", overwrite=True, absolute=False)
@example(command="quantize", place="runs/ckpt", overwrite=True, absolute=True)
@example(command="quantize", place="link_dir", overwrite=True, absolute=False)
@example(command="quantize", place="own", overwrite=True, absolute=False)
@given(command=st.sampled_from(["convert", "quantize"]), place=st.sampled_from(_PLACES),
       overwrite=st.booleans(), absolute=st.booleans())
def test_out_fuzzer_never_changes_a_byte_it_did_not_write(ckpt, fuzz_assets, capsys, monkeypatch, command, place,
                                                          overwrite, absolute):
    own_dir, deploy = fuzz_assets
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        try:
            _build_world(base, ckpt, own_dir, deploy)
            monkeypatch.chdir(base)
            before = snapshot(base)
            out = place + (".safetensors" if command == "convert" and place not in ("deploy",) else "")
            out = out if place != "deploy" else "deploy.safetensors"
            if place == "." and command == "convert":
                out = "."
            target = str(base / out) if absolute else out
            argv = [command] + (["ptq"] if command == "quantize" else []) + [
                "--checkpoint", "runs/ckpt", "--out", target] + (["--overwrite"] if overwrite else [])
            if command == "quantize":
                argv += ["--calib-batches", "1", "--no-progress"]
            code = main(argv)
            err = capsys.readouterr().err
            assert code in (0, 2) and "Traceback" not in err, (argv, code, err)
            after = snapshot(base)
            replaced = (base / out).resolve() if code == 0 else None
            for rel, val in before.items():
                p = (base / rel)
                inside = replaced is not None and (p.absolute() == replaced or replaced in p.absolute().parents)
                if not inside:
                    assert after.get(rel) == val, f"{argv}: {rel} changed or removed (exit {code}, {err!r})"
            if code == 0 and out in before:  # it replaced something: only a repspec output, only if asked
                nonempty = before[out][0] != "dir" or any(k.startswith(out + "/") for k in before)
                if nonempty:
                    assert overwrite and out in ("own", "deploy.safetensors"), (argv, err)
        finally:
            for p in (base / "ro",):
                if p.exists():
                    os.chmod(p, 0o755)


# -------------------------------------------------------------- kill at random points

_KILLABLE = """
    import os, sys, time, shutil
    real_replace, real_rmtree = os.replace, shutil.rmtree
    n = [0]
    def mark(what):
        n[0] += 1
        print(f"@{n[0]} {what}", flush=True)
        time.sleep(0.25)
    def replace(a, b):
        mark("replace")
        real_replace(a, b)
        mark("replaced")
    def rmtree(p, *a, **k):
        mark("rmtree")
        real_rmtree(p, *a, **k)
    os.replace, shutil.rmtree = replace, rmtree
    from repspec.cli import main
    sys.exit(main(sys.argv[1:]))
"""


_MARKERS = {"convert": 2, "quantize": 9, "analyze": 5}


@pytest.mark.parametrize("command", ["convert", "quantize", "analyze"])
def test_a_kill_at_a_random_point_leaves_old_or_new_output_and_the_next_run_cleans_up(ckpt, analysis, tmp_path,
                                                                                      capsys, command):
    from repspec.core.outputs import owned_directory, owned_file

    c = _copy_ckpt(ckpt, tmp_path / "c")
    out = tmp_path / ("out.safetensors" if command == "convert" else "out")
    argv = [command] + (["ptq"] if command == "quantize" else []) + ["--checkpoint", str(c), "--out", str(out),
                                                                   "--overwrite"]
    if command == "quantize":
        argv += ["--calib-batches", "1", "--no-progress"]
    if command == "analyze":  # the previous output, to be replaced (analyze's PNGs are slow: made once)
        shutil.copytree(analysis, out)
    else:
        assert main([a for a in argv if a != "--overwrite"]) == 0
    capsys.readouterr()
    old = snapshot(tmp_path)
    # a seeded random point among the file operations of the run (counted on a complete run:
    # convert renames its file in; quantize/analyze also move the old output aside and remove it)
    k = random.Random(f"kill-{command}").randint(1, _MARKERS[command])
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLABLE), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    seen = 0
    for line in proc.stdout:
        if line.startswith("@"):
            seen += 1
            if seen == k:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before file operation {k} (seen {seen})"
    now = snapshot(tmp_path)
    for rel, val in old.items():  # the checkpoint and everything else are untouched
        if not rel.startswith(out.name):
            assert now.get(rel) == val, rel
    if out.exists():  # the old output or a complete new one: never a mixture
        assert owned_file(out) if command == "convert" else owned_directory(out) == (True, "output")
    else:  # killed between moving the old output aside and renaming the new one in: the old one is kept
        assert [p for p in tmp_path.glob(f".{out.name}.repspec-old-*") if (p / "content").is_dir()]
    code, _, err = _run(capsys, argv)
    assert code == 0, err
    assert not [p.name for p in tmp_path.iterdir() if ".repspec-" in p.name]
    assert owned_file(out) if command == "convert" else owned_directory(out) == (True, "output")


def test_json_outputs_write_null_never_nan(tmp_path):
    import numpy as np

    from repspec.torch_impl.io import atomic_save_json, json_default

    p = atomic_save_json({"a": float("nan"), "b": np.array([1.0, np.inf]), "c": {"d": -float("inf")}},
                         tmp_path / "x.json", default=json_default, allow_nan=True)
    assert json.loads(p.read_text()) == {"a": None, "b": [1.0, None], "c": {"d": None}}
    with pytest.raises(ValueError):
        atomic_save_json({"a": float("nan")}, tmp_path / "y.json")
    assert not (tmp_path / "y.json").exists()


def test_demo_refuses_a_foreign_output_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "paper.tex").write_text("mine")
    monkeypatch.chdir(tmp_path)
    _refused(capsys, ["demo", "--quick", "--overwrite"], "did not write")
    assert (tmp_path / "runs" / "demo" / "paper.tex").read_text() == "mine"


def test_a_real_ctrl_c_during_training_exits_130_and_the_checkpoint_resumes(tmp_path):
    out = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "repspec", "train", "--model", "repvgg_tiny8", "--epochs", "200",
                             "--out", str(out), *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("epoch 2:"):  # epoch 1's checkpoint is saved by now; epoch 2's may be in progress
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().count("\n") == 0 and "interrupted" in err and "Traceback" not in err, err
    from repspec.torch_impl.training.checkpoint import load_checkpoint_extra

    assert load_checkpoint_extra(out)["train_state"]["epoch"] >= 1  # complete and verified
    assert not [p for p in tmp_path.rglob("*") if ".repspec-tmp" in p.name]


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_sigterm_during_training_exits_143_in_one_line_like_ctrl_c(tmp_path, overwrite):
    """SIGTERM takes Ctrl-C's path: one line, exit status 143, temporaries removed, complete
    checkpoints kept (a new run's resumes; with --overwrite the old one is untouched)."""
    from repspec.torch_impl.training.checkpoint import load_checkpoint_extra

    out = tmp_path / "t"
    train = [sys.executable, "-m", "repspec", "train", "--model", "repvgg_tiny8", "--out", str(out), *TINY]
    if overwrite:
        subprocess.run(train + ["--epochs", "1"], check=True, capture_output=True, cwd=ROOT, timeout=300)
    before = snapshot(tmp_path)
    proc = subprocess.Popen(train + ["--epochs", "200"] + (["--overwrite"] if overwrite else []),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("epoch 2:"):  # epoch 1's checkpoint is saved by now; epoch 2's may be in progress
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err)
    assert err.strip().count("\n") == 0 and "terminated" in err and "Traceback" not in err, err
    assert not [p for p in tmp_path.rglob("*") if ".repspec-" in p.name]
    if overwrite:
        assert snapshot(tmp_path) == before
    else:
        assert load_checkpoint_extra(out)["train_state"]["epoch"] >= 1  # complete and verified
