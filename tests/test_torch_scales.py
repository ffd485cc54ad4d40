"""SPEC §3 "Scale files": the published RepOpt-VGG-B1 scales, save/load, safety, atomic writes, errors."""

from __future__ import annotations

import io
import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from repspec.core import files as rio  # the atomic writers torch_impl.io re-exports
from repspec.torch_impl.modules.models import create_model, expected_scale_keys
from repspec.torch_impl.optimizers.repoptimizer import (
    build_grad_mult_masks,
    build_repoptimizer,
    reinit_from_scales,
    target_blocks,
)
from repspec.torch_impl.optimizers.scales import (
    ScaleFileError,
    check_scales_for_model,
    initial_scales,
    load_published_scales,
    load_scales,
    save_scales,
    validate_scales,
)

from tests.tolerances import assert_close

DATA = Path(__file__).parent / "data"
B1 = DATA / "RepOpt-VGG-B1-scales.pth"


@pytest.fixture(scope="module")
def b1_scales():
    return load_published_scales(B1)


@pytest.fixture(scope="module")
def b1_model(b1_scales):
    """RepOpt-VGG-B1 (10 classes) re-initialized from the published scales; built once (~50M params)."""
    return create_model("repopt_vgg_b1", 10, scales=b1_scales, seed=0)


# ------------------------------------------------------------------ the published file


def test_published_b1_file_layout(b1_scales):
    assert len(b1_scales) == 79
    assert all(v.dtype == torch.float32 and v.dim() == 1 for v in b1_scales.values())
    expected = expected_scale_keys("repopt_vgg_b1")
    assert {k: tuple(v.shape) for k, v in b1_scales.items()} == expected
    ident = [k for k in b1_scales if k.endswith("scale_identity.weight")]
    assert len(ident) == 3 + 5 + 15  # every block but the first of each stage (and stage0, stage4)
    assert "stage0.scale_identity.weight" not in b1_scales and "stage1.0.scale_identity.weight" not in b1_scales
    assert list(b1_scales)[:3] == ["stage0.scale_conv.weight", "stage0.scale_1x1.weight",
                                   "stage1.0.scale_conv.weight"]
    # the same as a plain weights_only load
    raw = torch.load(B1, weights_only=True, map_location="cpu")
    assert all(torch.equal(raw[k], v) for k, v in b1_scales.items())


def test_build_repopt_vgg_b1_and_its_optimizer(b1_scales, b1_model):
    model = b1_model
    check_scales_for_model(b1_scales, model)
    opt = build_repoptimizer(model, b1_scales, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    assert len(opt.grad_mult_masks) == len(target_blocks(model)) == 28
    blocks = dict(target_blocks(model))

    # stage1.1: in == out == 128, stride 1 → identity; check M by hand at a few taps
    w = blocks["stage1.1"].conv.weight
    m = opt.grad_mult_mask(w)
    a3 = b1_scales["stage1.1.scale_conv.weight"].double()
    a1 = b1_scales["stage1.1.scale_1x1.weight"].double()
    for o, i in [(0, 0), (0, 1), (5, 5), (127, 3), (77, 77)]:
        for p, q in [(0, 0), (0, 2), (1, 0), (2, 1), (1, 1)]:
            want = a3[o] ** 2
            if (p, q) == (1, 1):
                want = want + a1[o] ** 2 + (1.0 if o == i else 0.0)
            assert m[o, i, p, q].item() == pytest.approx(want.item(), rel=1e-6), (o, i, p, q)
    # stage1.0: 64 → 128, stride 2 → no identity (+1 nowhere)
    m0 = opt.grad_mult_mask(blocks["stage1.0"].conv.weight)
    a3, a1 = b1_scales["stage1.0.scale_conv.weight"].double(), b1_scales["stage1.0.scale_1x1.weight"].double()
    assert m0.shape == (128, 64, 3, 3)
    assert torch.allclose(m0[:, :, 1, 1].double(), (a3 ** 2 + a1 ** 2)[:, None].expand(128, 64).float().double(),
                          rtol=1e-6)
    assert torch.allclose(m0[:, :, 0, 2].double(), (a3 ** 2)[:, None].expand(128, 64), rtol=1e-6)

    # one real step: momentum buffer starts as M ⊙ g + λ·W for the masked conv, plain g + λ·W elsewhere
    before = w.detach().clone()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    g = w.grad.detach().clone()
    opt.step()
    expected = before - 0.1 * ((1 + 0.9) * (m * g + 1e-4 * before))  # nesterov first step: d + μ·buf, buf = d
    assert torch.allclose(w.detach(), expected, rtol=1e-5, atol=1e-7)


def test_reinit_from_scales_matches_reference():
    """W'_0 of every block against the reference formula with the same imaginary kernels (SPEC §3)."""
    from repspec.reference.repopt import reinit_target_kernel
    from repspec.torch_impl.optimizers.repoptimizer import imaginary_kernels

    small = create_model("repopt_vgg_tiny8", 3)
    scales = initial_scales(small)
    rng = np.random.default_rng(0)
    scales = {k: torch.from_numpy(rng.uniform(0.2, 1.5, v.shape)) for k, v in scales.items()}
    model = small.double()
    reinit_from_scales(model, scales, torch.Generator().manual_seed(5), use_identity_scales=True)
    gen = torch.Generator().manual_seed(5)
    for prefix, block in target_blocks(model):
        c = block.conv
        k3, k1 = imaginary_kernels(c.out_channels, c.in_channels, gen, dtype=torch.float64)
        d = scales.get(f"{prefix}.scale_identity.weight")
        want = reinit_target_kernel(scales[f"{prefix}.scale_conv.weight"].numpy(),
                                    scales[f"{prefix}.scale_1x1.weight"].numpy(),
                                    None if d is None else d.numpy(), in_channels=c.in_channels,
                                    conv_weight=k3.numpy(), conv_1x1_weight=k1.numpy())
        assert_close(c.weight.detach().numpy(), want, name=f"{prefix} W'_0")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = dict(scales)
    bad["stage2.0.scale_conv.weight"] = torch.ones(5)
    with pytest.raises(ValueError, match=r"stage2.0.scale_conv.weight'\] must have shape \(16,\)"):
        reinit_from_scales(model, bad, torch.Generator().manual_seed(5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed


# ------------------------------------------------------- the original per-block tuples, an explicit layout


def test_official_tuples_of_the_published_file_match_the_reference(b1_scales):
    """The published B1 file through torch_impl's converters with an explicit layout, against the registry's
    layout and against the reference converter (SPEC §3.scale-files), exactly."""
    from repspec.reference.scales import scales_from_official as ref_from_official
    from repspec.reference.scales import scales_to_official as ref_to_official
    from repspec.reference.scales import vgg_scale_layout
    from repspec.torch_impl.optimizers.scales import scales_from_official, scales_to_official

    layout = vgg_scale_layout((1, 4, 6, 16, 1), (64, 128, 256, 512, 2048), (2, 2, 2, 2, 2), in_channels=3)
    tuples = scales_to_official(b1_scales, list(layout))
    by_name = scales_to_official(b1_scales, "repopt_vgg_b1")
    assert len(tuples) == 28 and all(a is b for t, u in zip(tuples, by_name) for a, b in zip(t, u))
    as_np = {k: v.double().numpy() for k, v in b1_scales.items()}
    want = ref_to_official(as_np, layout)
    assert [len(t) for t in tuples] == [len(t) for t in want]
    assert all(np.array_equal(a.double().numpy(), b) for t, u in zip(tuples, want) for a, b in zip(t, u))
    back = scales_from_official(tuples, list(layout))
    assert list(back) == list(b1_scales) and all(torch.equal(back[k], v) for k, v in b1_scales.items())
    ref_back = ref_from_official(want, layout)
    assert list(ref_back) == list(back) and all(np.array_equal(ref_back[k], as_np[k]) for k in as_np)


def test_explicit_layout_is_validated():
    from repspec.torch_impl.optimizers.scales import scales_from_official

    one = [(torch.ones(2), torch.ones(2))]
    for layout, err, match in (([("stage0.0", 2, False)], ValueError, "prefix must be 'stage0'"),
                               ([("stage1", 2, False)], ValueError, "prefix must be"),
                               ([("stage0", 0, False)], ValueError, "out_channels must be a positive integer"),
                               ([("stage0", 2, 0)], TypeError, "has_identity must be a bool"),
                               ([("stage0", 2)], TypeError, r"layout\[0\] must be"),
                               ([], ValueError, "layout must not be empty")):
        with pytest.raises(err, match=match):
            scales_from_official(one, layout)
    with pytest.raises(ValueError, match="unique"):
        scales_from_official(one * 2, [("stage1.0", 2, False), ("stage1.0", 2, False)])
    with pytest.raises(ScaleFileError, match=r"tuple 0 \(block 'stage0'\) must have 3 entries"):
        scales_from_official(one, [("stage0", 2, True)])


# ------------------------------------------------------------------ save / load


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_save_load_round_trip(tmp_path, b1_scales, suffix):
    mixed = OrderedDict(b1_scales)
    mixed["stage4.0.scale_conv.weight"] = mixed["stage4.0.scale_conv.weight"].double() / 3.0  # float64 too
    mixed["stage4.0.scale_1x1.weight"] = torch.tensor([np.nextafter(1.0, 2.0)] * 2048, dtype=torch.float64)
    path = tmp_path / f"scales{suffix}"
    assert save_scales(mixed, path) == path
    back = load_scales(path)
    assert list(back) == list(mixed)
    for k, v in mixed.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_json_file_is_readable(tmp_path):
    scales = {"stage0.scale_conv.weight": torch.tensor([1.5, -0.25]), "stage0.scale_1x1.weight": torch.ones(2)}
    save_scales(scales, tmp_path / "s.json")
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["format"] == "repspec-scales" and doc["scales"]["stage0.scale_conv.weight"] == {
        "dtype": "float32", "values": [1.5, -0.25]}


# ------------------------------------------------------------------ safety


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_without_executing(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"stage0.scale_conv.weight": torch.ones(2), "stage0.scale_1x1.weight": _Evil(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ScaleFileError, match="refused by torch.load\\(weights_only=True\\)|not a readable"):
        load_published_scales(path)
    with pytest.raises(ScaleFileError):
        load_scales(path)  # .pth goes through the same safe loader
    assert not marker.exists(), "unpickling executed code"


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch, b1_scales):
    path = tmp_path / "s.safetensors"
    save_scales(b1_scales, path)
    old = path.read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(rio.os, "fsync", boom)
    changed = OrderedDict((k, v * 2) for k, v in b1_scales.items())
    for target in (path, tmp_path / "new.json"):
        with pytest.raises(OSError, match="disk full"):
            save_scales(changed, target)
    assert path.read_bytes() == old  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]  # no temporaries, no new file
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="inside"):
        with rio.atomic_open(tmp_path / "x.bin") as fh:
            fh.write(b"partial")
            raise RuntimeError("failure inside the with body")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


# ------------------------------------------------------------------ errors


def test_bad_keys_and_shapes_give_clear_errors(tmp_path, b1_scales, b1_model):
    ok = {"stage0.scale_conv.weight": torch.ones(4), "stage0.scale_1x1.weight": torch.ones(4)}
    with pytest.raises(ScaleFileError, match="unexpected key 'stage0.scale_foo.weight'"):
        validate_scales({**ok, "stage0.scale_foo.weight": torch.ones(4)})
    with pytest.raises(ScaleFileError, match=r"'stage0.scale_1x1.weight' must have shape \(C,\).*got \(4, 1\)"):
        validate_scales({**ok, "stage0.scale_1x1.weight": torch.ones(4, 1)})
    with pytest.raises(ScaleFileError, match="block 'stage1.0' has no 'stage1.0.scale_1x1.weight'"):
        validate_scales({**ok, "stage1.0.scale_conv.weight": torch.ones(4)})
    with pytest.raises(ScaleFileError, match=r"'stage0.scale_1x1.weight' must have shape \(4,\) like"):
        validate_scales({**ok, "stage0.scale_1x1.weight": torch.ones(3)})
    with pytest.raises(ScaleFileError, match="NaN or Inf"):
        validate_scales({**ok, "stage0.scale_1x1.weight": torch.tensor([1.0, float("nan"), 1.0, 1.0])})
    with pytest.raises(ScaleFileError, match="floating-point"):
        validate_scales({**ok, "stage0.scale_1x1.weight": torch.ones(4, dtype=torch.int64)})

    model = b1_model
    wrong = OrderedDict(b1_scales)
    for kind in ("conv", "1x1", "identity"):
        wrong[f"stage2.3.scale_{kind}.weight"] = torch.ones(128)
    with pytest.raises(ScaleFileError, match=r"'stage2.3.scale_conv.weight' must have shape \(256,\) for block "
                                             r"'stage2.3' \(out_channels=256\), got \(128,\)"):
        check_scales_for_model(wrong, model)
    with pytest.raises(ValueError, match=r"stage2.3.scale_conv.weight'\] must have shape \(256,\)"):
        build_repoptimizer(model, wrong, lr=0.1)
    missing = OrderedDict(b1_scales)
    del missing["stage3.7.scale_identity.weight"]
    with pytest.raises(ScaleFileError, match="missing 'stage3.7.scale_identity.weight'.*identity branch"):
        check_scales_for_model(missing, model)
    with pytest.raises(KeyError, match="stage3.7.scale_identity.weight"):
        build_grad_mult_masks(model, missing)
    extra = OrderedDict(b1_scales)
    extra["stage1.0.scale_identity.weight"] = torch.ones(128)
    with pytest.raises(ScaleFileError, match="stage1.0.scale_identity.weight"):
        check_scales_for_model(extra, model)

    (tmp_path / "list.pth").write_bytes(b"")
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(ScaleFileError, match="expected a state dict"):
        load_published_scales(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ScaleFileError, match="junk.pth"):
        load_published_scales(tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="unknown scale file type '.npz'"):
        save_scales(ok, tmp_path / "s.npz")
    with pytest.raises(ValueError, match="does not write pickle"):
        save_scales(ok, tmp_path / "s.pth")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ScaleFileError, match="not a repspec scale file"):
        load_scales(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_scales(tmp_path / "absent.safetensors")


def test_wrapped_and_ddp_prefixed_files_load(tmp_path):
    s = {"stage0.scale_conv.weight": torch.ones(2), "stage0.scale_1x1.weight": torch.ones(2)}
    buf = io.BytesIO()
    torch.save({"state_dict": {f"module.{k}": v for k, v in s.items()}}, buf)
    (tmp_path / "w.pth").write_bytes(buf.getvalue())
    assert list(load_published_scales(tmp_path / "w.pth")) == list(s)
