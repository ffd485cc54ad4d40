"""Official ``.pth`` checkpoints and scale files load safely and strictly (``training/official.py``)."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from repspec.torch_impl import OfficialCheckpointError, create_model, load_official_checkpoint, load_official_scales
from repspec.torch_impl.modules.models import expected_scale_keys
from repspec.torch_impl.training.official import strip_ddp_prefix

from .test_official_registry import ORIGINAL_REPOPT, original_blocks

DATA = Path(__file__).parent / "data"


def _random_state(model, seed):
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g, dtype=v.dtype) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g, dtype=v.dtype) * 0.2
    return out


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "ddp", "ddp_in_model", "no_nbt"])
@pytest.mark.parametrize("name, deploy", [("repvgg_tiny8", False), ("repvgg_tiny8", True),
                                          ("qarepvgg_tiny8", True), ("repopt_vgg_tiny8", False),
                                          ("hs_vgg_tiny8", False)])
def test_load_official_checkpoint_forms_and_wrappers(tmp_path, name, deploy, wrap):
    kwargs = {"deploy": True} if deploy else {}
    if name.startswith("qarepvgg") and deploy:
        kwargs["keep_post_bn"] = wrap != "plain"  # both YOLOv6 deploy forms
    src = create_model(name, num_classes=6, **kwargs).eval()
    sd = _random_state(src, 0)
    src.load_state_dict(sd)
    if wrap == "no_nbt":
        sd = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    if wrap.startswith("ddp"):
        sd = OrderedDict((f"module.{k}", v) for k, v in sd.items())
    obj = {"model": sd, "epoch": 3} if wrap in ("model", "ddp_in_model") else \
        {"state_dict": sd} if wrap == "state_dict" else sd
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = load_official_checkpoint(path, name)
    assert model.num_classes == 6 and not model.training
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), src(x)), f"{name} ({wrap}): loaded model differs from the saved one"


def test_load_official_repvgg_a0_training_form(tmp_path):
    """A full-size RepVGG-A0 training checkpoint (the official key layout) loads strictly."""
    src = create_model("repvgg_a0")
    sd = _random_state(src, 2)
    torch.save(sd, tmp_path / "RepVGG-A0-train.pth")
    model = load_official_checkpoint(tmp_path / "RepVGG-A0-train.pth", "repvgg_a0")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


class Payload:
    marker = "/nonexistent"

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg, f"the error should be one line, got {msg!r}"
    return msg


def test_pickled_objects_are_refused_in_one_line(tmp_path):
    path = tmp_path / "evil.pth"
    payload = Payload()
    payload.marker = str(tmp_path / "executed")
    with open(path, "wb") as f:
        pickle.dump({"stage0.rbr_reparam.weight": payload}, f, protocol=2)
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_checkpoint(path, "repvgg_tiny8")
    msg = _one_line(info)
    assert "refused" in msg and "weights_only" in msg and "nothing was executed" in msg
    assert not (tmp_path / "executed").exists(), "the pickle's payload ran"


def test_checkpoint_of_another_architecture_is_named_in_one_line(tmp_path):
    torch.save(create_model("repvgg_tiny8", num_classes=4).state_dict(), tmp_path / "tiny8.pth")
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_checkpoint(tmp_path / "tiny8.pth", "repvgg_tiny32")
    msg = _one_line(info)
    assert "is not a repvgg_tiny32 checkpoint" in msg and "repvgg_tiny8" in msg, msg
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_checkpoint(tmp_path / "other.pth", "repvgg_tiny8")
    assert "linear.weight" in _one_line(info)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown model name"):
        load_official_checkpoint(tmp_path / "x.pth", "repvgg_z9")
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "missing.pth", "repvgg_tiny8")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_checkpoint(tmp_path / "junk.pth", "repvgg_tiny8")
    _one_line(info)


# ------------------------------------------------------------------- DDP prefix and dtype


def test_ddp_prefix_is_stripped_only_when_every_key_has_it():
    sd = {"module.a.weight": torch.zeros(1), "module.b.bias": torch.ones(1)}
    assert list(strip_ddp_prefix(sd)) == ["a.weight", "b.bias"]
    partial = {"module.a.weight": torch.zeros(1), "b.bias": torch.ones(1)}
    assert list(strip_ddp_prefix(partial)) == list(partial)  # not half-stripped
    assert strip_ddp_prefix({}) == {}


@pytest.mark.parametrize("prefixed", ["every_other", "all_but_the_head", "the_head_too"])
def test_a_partly_prefixed_checkpoint_fails_strictly_naming_the_keys(tmp_path, prefixed):
    sd = _random_state(create_model("repvgg_tiny8", num_classes=4), 3)
    keys = list(sd)
    chosen = {"every_other": [k for k in keys[1::2] if k != "linear.weight"],
              "all_but_the_head": [k for k in keys if k != "linear.weight"],
              "the_head_too": [k for k in keys if k != "stage0.rbr_dense.conv.weight"]}[prefixed]
    mixed = OrderedDict((f"module.{k}" if k in chosen else k, v) for k, v in sd.items())
    torch.save(mixed, tmp_path / "mixed.pth")
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_checkpoint(tmp_path / "mixed.pth", "repvgg_tiny8")
    msg = _one_line(info)
    first = next(k for k in mixed if k.startswith("module."))
    if prefixed == "the_head_too":  # no head to read the class count from: said so, with the prefix
        assert "no 'linear.weight'" in msg, msg
    else:
        assert "is not a repvgg_tiny8 checkpoint" in msg and "missing key" in msg and "unexpected key" in msg, msg
    assert f"{len(chosen)} of {len(keys)} keys carry DDP's 'module.' prefix (first {first!r})" in msg, msg


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_checkpoint_dtype_is_kept_and_every_value_loads_exactly(tmp_path, dtype):
    src = create_model("repvgg_tiny8", num_classes=3).eval()
    src.load_state_dict(_random_state(src, 4))
    src = src.to(dtype)
    torch.save(src.state_dict(), tmp_path / "ckpt.pth")
    model = load_official_checkpoint(tmp_path / "ckpt.pth", "repvgg_tiny8")
    sd = model.state_dict()
    assert {v.dtype for v in sd.values() if v.is_floating_point()} == {dtype}
    assert all(torch.equal(sd[k], v) and sd[k].dtype == v.dtype for k, v in src.state_dict().items())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)).to(dtype)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


@pytest.mark.parametrize("dtypes, promoted", [((torch.float16, torch.float32), torch.float32),
                                              ((torch.float32, torch.float16), torch.float32),
                                              ((torch.float16, torch.bfloat16), torch.float32),
                                              ((torch.float64, torch.float32), torch.float64)])
def test_a_mixed_dtype_checkpoint_loads_in_the_promotion_without_losing_a_value(tmp_path, dtypes, promoted):
    """Weights in one dtype, BN statistics in another: the model takes their promotion, whichever comes first
    in the file (before, the first tensor's dtype won, and a float16 first entry narrowed the float32 rest)."""
    weights, stats = dtypes
    src = create_model("repvgg_tiny8", num_classes=3).eval()
    sd = OrderedDict((k, v.to(stats if "running" in k else weights) if v.is_floating_point() else v)
                     for k, v in _random_state(src, 6).items())
    torch.save(sd, tmp_path / "mixed.pth")
    model = load_official_checkpoint(tmp_path / "mixed.pth", "repvgg_tiny8")
    got = model.state_dict()
    assert {v.dtype for v in got.values() if v.is_floating_point()} == {promoted}
    assert all(torch.equal(got[k], v.to(got[k].dtype)) and torch.equal(got[k].to(v.dtype), v) for k, v in sd.items())


def test_an_explicit_dtype_is_the_documented_conversion(tmp_path):
    src = create_model("repvgg_tiny8", num_classes=3).double().eval()
    torch.save(src.state_dict(), tmp_path / "f64.pth")
    model = load_official_checkpoint(tmp_path / "f64.pth", "repvgg_tiny8", dtype=torch.float32)
    assert {v.dtype for v in model.state_dict().values() if v.is_floating_point()} == {torch.float32}
    assert all(torch.equal(model.state_dict()[k], v.float()) for k, v in src.state_dict().items()
               if v.is_floating_point())
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        load_official_checkpoint(tmp_path / "f64.pth", "repvgg_tiny8", dtype=torch.int32)


# ------------------------------------------------------------------------------ scale files


def published_like_scales(size, seed):
    """A file with the structure of the published ``RepOpt-VGG-B1-scales.pth``: an OrderedDict of float32
    1-D tensors, per block ``scale_1x1``, ``scale_conv`` and (identity blocks) ``scale_identity`` —
    laid out from the original's construction rules (independent of repspec's registry)."""
    g = torch.Generator().manual_seed(seed)
    nb, wm = ORIGINAL_REPOPT[size]
    blocks, _ = original_blocks(nb, wm)
    out = OrderedDict()
    for prefix, cin, cout, stride, _, _ in blocks:
        kinds = ("1x1", "conv", "identity") if cin == cout and stride == 1 else ("1x1", "conv")
        for kind in kinds:
            out[f"{prefix}.scale_{kind}.weight"] = torch.rand(cout, generator=g) + 0.1
    return out


def test_generated_b1_file_has_the_published_structure():
    published = torch.load(DATA / "RepOpt-VGG-B1-scales.pth", weights_only=True)
    ours = published_like_scales("b1", 0)
    assert list(ours) == list(published)
    assert all(ours[k].shape == v.shape and ours[k].dtype == v.dtype for k, v in published.items())


@pytest.mark.parametrize("size", sorted(ORIGINAL_REPOPT))
def test_load_official_scales_b1_b2_l1_l2(tmp_path, size):
    scales = published_like_scales(size, 1)
    path = tmp_path / f"RepOpt-VGG-{size.upper()}-scales.pth"
    torch.save(scales, path)
    loaded = load_official_scales(path, f"repopt_vgg_{size}")
    assert set(loaded) == set(expected_scale_keys(f"repopt_vgg_{size}"))
    assert all(torch.equal(loaded[k], v) for k, v in scales.items())
    torch.save(OrderedDict((f"module.{k}", v) for k, v in scales.items()), path)
    assert set(load_official_scales(path, f"repopt_vgg_{size}")) == set(scales)


def test_published_b1_file_loads_and_wrong_size_is_one_line(tmp_path):
    scales = load_official_scales(DATA / "RepOpt-VGG-B1-scales.pth", "repopt_vgg_b1")
    assert len(scales) == 79
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_scales(DATA / "RepOpt-VGG-B1-scales.pth", "repopt_vgg_l1")
    assert "is not a scale file for repopt_vgg_l1" in _one_line(info)


def test_full_hypersearch_checkpoint_gives_its_scales(tmp_path):
    hs = create_model("hs_vgg_tiny8", num_classes=100)
    torch.save({"model": hs.state_dict()}, tmp_path / "hs.pth")
    scales = load_official_scales(tmp_path / "hs.pth", "repopt_vgg_tiny8")
    assert set(scales) == set(expected_scale_keys("repopt_vgg_tiny8"))
