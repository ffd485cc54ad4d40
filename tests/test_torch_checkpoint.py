"""Checkpoints: safetensors + JSON round trip, atomicity under simulated crashes, no unpickling, clear errors."""

from __future__ import annotations

import json
import math
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from repspec.torch_impl.training import checkpoint as ck
from repspec.torch_impl.training.checkpoint import (
    CheckpointError,
    capture_rng_state,
    checkpoint_exists,
    checkpoint_info,
    load_checkpoint,
    load_checkpoint_extra,
    load_weights,
    read_state_dict,
    restore_rng_state,
    save_checkpoint,
    save_weights,
)
from repspec.torch_impl.modules.models import create_model
from repspec.torch_impl.optimizers.repoptimizer import build_repoptimizer




def _model(seed=0, num_classes=10, name="repvgg_tiny8"):
    torch.manual_seed(seed)
    return create_model(name, num_classes=num_classes)


def _stepped(model, opt, sched=None, steps=2):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=g)
        y = torch.randint(0, model.num_classes, (4,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


def _same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _same_opt_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for pid in sa["state"]:
        assert sa["state"][pid].keys() == sb["state"][pid].keys()
        for k, v in sa["state"][pid].items():
            assert torch.equal(v, sb["state"][pid][k]), (pid, k)


def test_round_trip_model_sgd_scheduler_extra(tmp_path):
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    _stepped(m, opt, sched)
    extra = {"model": "repvgg_tiny8", "epoch": 3, "best": float("inf"), "nan": float("nan"), "none": None,
             "tuple": (1, 2.5, "x"), "int_keys": {0: "a", 7: [1, 2]}, "__dunder": True,
             "arr": np.arange(6, dtype=np.int32).reshape(2, 3), "t": torch.linspace(0, 1, 5, dtype=torch.float64),
             "nested": [{"a": torch.ones(2, dtype=torch.uint8)}]}
    d = save_checkpoint(tmp_path / "ck", m, opt, sched, extra=extra)
    assert checkpoint_exists(d) and (d / "checkpoint.json").is_file()
    info = checkpoint_info(d)
    assert info["optimizer_class"] == "SGD" and info["scheduler_class"] == "CosineAnnealingLR"
    files = sorted(p.name for p in d.iterdir())
    assert len(files) == 3  # manifest + model + state
    # the model file is a plain safetensors state dict
    from safetensors.torch import load_file

    _same_state(load_file(d / info["files"]["model"]["name"]), m.state_dict())

    m2 = _model(seed=5)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=10)
    got = load_checkpoint(d, m2, opt2, sched2)
    _same_state(m.state_dict(), m2.state_dict())
    _same_opt_state(opt, opt2)
    assert sched2.state_dict() == sched.state_dict()
    assert got["best"] == math.inf and math.isnan(got["nan"]) and got["none"] is None
    assert got["tuple"] == (1, 2.5, "x") and got["int_keys"] == {0: "a", 7: [1, 2]} and got["__dunder"] is True
    assert isinstance(got["arr"], np.ndarray) and got["arr"].dtype == np.int32 and got["arr"].tolist() == [[0, 1, 2],
                                                                                                          [3, 4, 5]]
    assert torch.equal(got["t"], extra["t"]) and torch.equal(got["nested"][0]["a"], extra["nested"][0]["a"])
    assert load_checkpoint_extra(d)["model"] == "repvgg_tiny8"
    # and the two optimizers continue identically
    _stepped(m, opt, sched, 1)
    _stepped(m2, opt2, sched2, 1)
    _same_state(m.state_dict(), m2.state_dict())


def test_round_trip_repoptimizer_masks_and_adamw(tmp_path):
    m = create_model("repopt_vgg_tiny8", num_classes=10, seed=0)
    opt = build_repoptimizer(m, m.repopt_scales, lr=0.05, momentum=0.9, weight_decay=1e-4)
    _stepped(m, opt)
    save_checkpoint(tmp_path / "c", m, opt)
    m2 = create_model("repopt_vgg_tiny8", num_classes=10, seed=1)
    opt2 = build_repoptimizer(m2, {k: v * 2 for k, v in m2.repopt_scales.items()}, lr=0.05, momentum=0.9,
                              weight_decay=1e-4)
    load_checkpoint(tmp_path / "c", m2, opt2)
    _same_opt_state(opt, opt2)  # masks (grad_mult_mask) included
    assert len(opt2.grad_mult_masks) == len(opt.grad_mult_masks) > 0
    # AdamW: 0-d 'step' tensors
    m3 = _model()
    a = torch.optim.AdamW(m3.parameters(), lr=1e-3)
    _stepped(m3, a)
    save_checkpoint(tmp_path / "a", m3, a)
    m4 = _model(1)
    a2 = torch.optim.AdamW(m4.parameters(), lr=1e-3)
    load_checkpoint(tmp_path / "a", m4, a2)
    _same_opt_state(a, a2)


def test_checkpoint_with_an_earlier_nesterov_rounding_name_resumes(tmp_path):
    """A checkpoint whose RepOptimizerSGD group says 'official' (the one-rounding mode's earlier name) resumes
    as 'original-legacy', with one warning, and continues exactly like the saving optimizer."""
    m = create_model("repopt_vgg_tiny8", num_classes=10, seed=0)
    opt = build_repoptimizer(m, m.repopt_scales, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4,
                             nesterov_rounding="original-legacy")
    _stepped(m, opt)
    opt.param_groups[0]["nesterov_rounding"] = "official"  # as an earlier version saved it
    save_checkpoint(tmp_path / "c", m, opt)
    opt.param_groups[0]["nesterov_rounding"] = "original-legacy"
    m2 = create_model("repopt_vgg_tiny8", num_classes=10, seed=1)
    opt2 = build_repoptimizer(m2, m2.repopt_scales, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    with pytest.warns(UserWarning, match="nesterov_rounding 'official' .* is loaded as 'original-legacy'"):
        load_checkpoint(tmp_path / "c", m2, opt2)
    assert [g["nesterov_rounding"] for g in opt2.param_groups] == ["original-legacy", "original-legacy"]
    _stepped(m, opt, steps=1)
    _stepped(m2, opt2, steps=1)
    _same_state(m.state_dict(), m2.state_dict())


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-2**62, 2**62) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4) | st.integers(-3, 3), inner, max_size=3),
    max_leaves=12)


@given(value=plain, n=st.integers(0, 3))
def test_extra_round_trip_property(value, n):
    m = nn.Linear(2, 2)
    extra = {"v": value, "tensors": [torch.arange(i + n, dtype=torch.float32) for i in range(n)]}
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "c", m, extra=extra)
        got = load_checkpoint(Path(tmp) / "c", nn.Linear(2, 2))
    assert got["v"] == value and type(got["v"]) is type(value)
    assert all(torch.equal(a, b) for a, b in zip(got["tensors"], extra["tensors"]))


def test_non_plain_extra_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"extra\.cfg\.fn.*function"):
        save_checkpoint(tmp_path / "c", nn.Linear(2, 2), extra={"cfg": {"fn": lambda: 1}})
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------ atomicity


def test_crash_before_manifest_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m = _model()
    d = save_checkpoint(tmp_path / "c", m, extra={"gen": 1})
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)

    def boom(*a, **k):
        raise OSError("simulated crash before the manifest is replaced")

    monkeypatch.setattr(ck, "atomic_save_json", boom)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(d, m, extra={"gen": 2})
    monkeypatch.undo()
    m2 = _model(3)
    assert load_checkpoint(d, m2) == {"gen": 1}
    _same_state(m2.state_dict(), before)
    # the next successful save removes the orphaned files of the interrupted one
    save_checkpoint(d, m, extra={"gen": 3})
    assert len(list(d.iterdir())) == 3
    assert load_checkpoint(d, m2) == {"gen": 3}


def test_crash_mid_file_write_is_never_picked_up(tmp_path, monkeypatch):
    m = _model()
    d = save_checkpoint(tmp_path / "c", m, extra={"gen": 1})
    real = ck.atomic_write_bytes
    calls = []

    def half_then_crash(path, data):
        calls.append(path)
        if len(calls) == 2:  # the state file: a torn, non-atomic write, then the process dies
            Path(path).write_bytes(bytes(data)[: len(data) // 2])
            raise KeyboardInterrupt("simulated kill")
        return real(path, data)

    monkeypatch.setattr(ck, "atomic_write_bytes", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(d, _model(9), extra={"gen": 2})
    monkeypatch.undo()
    assert len(list(d.iterdir())) == 5  # old pair + manifest + new model + torn state
    assert load_checkpoint(d, _model(4)) == {"gen": 1}
    save_checkpoint(d, m, extra={"gen": 3})
    assert len(list(d.iterdir())) == 3


def test_first_save_interrupted_leaves_no_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "atomic_save_json", lambda *a, **k: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c", _model())
    monkeypatch.undo()
    assert not checkpoint_exists(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="checkpoint.json is missing"):
        load_checkpoint(tmp_path / "c", _model())


# ------------------------------------------------------------------ corruption, safety, mismatches


def test_corrupt_and_incomplete_checkpoints_are_refused(tmp_path):
    m = _model()
    d = save_checkpoint(tmp_path / "c", m, torch.optim.SGD(m.parameters(), lr=0.1))
    info = checkpoint_info(d)
    model_file = d / info["files"]["model"]["name"]
    raw = bytearray(model_file.read_bytes())
    raw[-3] ^= 0xFF
    model_file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(d, _model())
    (d / info["files"]["state"]["name"]).unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(d, _model())
    (d / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint manifest"):
        load_checkpoint(d, _model())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", _model())


def test_state_file_swapped_for_a_pickle_is_refused(tmp_path):
    m = _model()
    d = save_checkpoint(tmp_path / "c", m, extra={"a": 1})
    state = d / checkpoint_info(d)["files"]["state"]["name"]
    state.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(d, m)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_weight_files_load_only_with_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"linear.weight": torch.zeros(1), "payload": _Evil(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_weights(evil, _model())
    assert not marker.exists()  # the payload never ran
    # a legitimate .pth (nested under 'state_dict') and safetensors weights load
    m = _model()
    torch.save({"state_dict": m.state_dict(), "epoch": 3}, tmp_path / "ok.pth")
    m2 = _model(7)
    load_weights(tmp_path / "ok.pth", m2)
    _same_state(m.state_dict(), m2.state_dict())
    save_weights(tmp_path / "w.safetensors", m)
    _same_state(read_state_dict(tmp_path / "w.safetensors"), m.state_dict())
    d = save_checkpoint(tmp_path / "c", m)
    _same_state(read_state_dict(d), m.state_dict())


def test_key_and_shape_mismatches_name_the_key(tmp_path):
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    _stepped(m, opt)
    d = save_checkpoint(tmp_path / "c", m, opt)
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'linear\.weight': checkpoint \(10, 32\), "
                                              r"model \(7, 32\)"):
        load_checkpoint(d, _model(num_classes=7))
    other = create_model("qarepvgg_tiny8", num_classes=10)
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \[.*'stage0\.") as e:
        load_checkpoint(d, other)
    assert "unexpected key(s)" in str(e.value)
    m2 = _model()
    with pytest.raises(CheckpointError, match="holds SGD state, cannot load it into Adam"):
        load_checkpoint(d, m2, torch.optim.Adam(m2.parameters()))
    with pytest.raises(CheckpointError, match="no scheduler state"):
        load_checkpoint(d, m2, torch.optim.SGD(m2.parameters(), lr=0.1),
                        torch.optim.lr_scheduler.StepLR(torch.optim.SGD(m2.parameters(), lr=0.1), 1))
    # optimizer over a different parameter list: group size, then a per-parameter shape named
    with pytest.raises(CheckpointError, match="parameter group 0 has"):
        load_checkpoint(d, m2, torch.optim.SGD(list(m2.parameters())[1:], lr=0.1))
    params = list(m2.parameters())
    params[0], params[1] = params[1], params[0]
    with pytest.raises(CheckpointError, match=r"optimizer state 'momentum_buffer' of parameter '.*' has shape"):
        load_checkpoint(d, m2, torch.optim.SGD(params, lr=0.1, momentum=0.9))
    # nothing was modified by the refused loads
    fresh = _model()
    sd_before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_checkpoint(d, fresh, torch.optim.Adam(fresh.parameters()))
    _same_state(fresh.state_dict(), sd_before)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # a cached gaussian in the NumPy state
    state = capture_rng_state()
    expect = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    save_checkpoint(tmp_path / "c", nn.Linear(1, 1), extra={"rng": state})
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    restore_rng_state(load_checkpoint_extra(tmp_path / "c")["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1]) and got[2:] == expect[2:]
    json.loads((tmp_path / "c" / "checkpoint.json").read_text())  # strict JSON
