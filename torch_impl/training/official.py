"""Reading the original authors' artifacts: official RepVGG / RepOpt-VGG / QARepVGG checkpoints and scale files.

Entry points (the command line's ``--checkpoint file.pth --model NAME`` calls these):

- :func:`load_official_checkpoint` ``(path, model_name) -> VGGNet``: an official ``.pth``
  (training form ``rbr_dense/rbr_1x1/rbr_identity`` or deploy form ``rbr_reparam``;
  RepOpt-VGG target ``conv/bn``; CSLA / HyperSearch ``conv/scale_*``; YOLOv6-style
  QARepVGG with or without the post-BN) into the matching repspec model, strictly.
- :func:`load_official_scales` ``(path, model_name)``: a published RepOpt-VGG scale file
  (``RepOpt-VGG-{B1,B2,L1,L2}-scales.pth``) checked key by key against the architecture.
- :func:`read_official_state_dict` ``(path)``: the state dict alone.

Safety: files are read with ``torch.load(path, weights_only=True, map_location='cpu')``
(:func:`repspec.torch_impl.io.load_weights_only`), which only rebuilds tensors and plain
containers. A pickle that would construct any other object (run code, build a class
instance), or a TorchScript archive, is refused *before* anything runs;
:class:`OfficialCheckpointError` says so in one line, without torch's warning or its
multi-line advice.

Wrappers and prefixes:

- ``{'model': sd}`` / ``{'state_dict': sd}`` (RepOptimizers' and timm-style saves) are
  unwrapped. A save that also pickles non-tensor objects (RepOptimizers' training
  checkpoints hold a yacs ``config``) is refused by ``weights_only``; extract the
  ``model`` entry with the original code first.
- **DDP ``module.`` prefix**: if *every* key starts with ``module.``, the prefix is removed
  (a checkpoint saved from a ``DistributedDataParallel`` wrapper). Keys where only some
  carry it are left alone and then fail the strict key check, naming them.
- ``num_batches_tracked`` buffers missing from older checkpoints are filled with 0
  (they do not influence eval-mode outputs); every other key must match exactly, with
  its shape.

Dtype: the model comes back in the checkpoint's floating dtype (float64, float32, float16,
bfloat16 alike), so every stored value is loaded exactly. A checkpoint that mixes floating
dtypes loads in their promotion (``torch.promote_types``: float16 + float32 → float32,
float16 + bfloat16 → float32), which holds every stored value exactly too; nothing is
narrowed unless the caller asks for a ``dtype`` (the command line asks for float32).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..io import WeightsOnlyRefusal, load_weights_only
from ..modules.models import ARCHITECTURES, VGGNet, create_model, expected_scale_keys, list_models
from ..optimizers.scales import ScaleFileError, load_published_scales, validate_scales

__all__ = ["OfficialCheckpointError", "read_official_state_dict", "load_official_checkpoint",
           "load_official_scales", "official_layout", "strip_ddp_prefix"]

DDP_PREFIX = "module."


class OfficialCheckpointError(ValueError):
    """An official checkpoint that cannot be loaded safely or does not fit the named architecture (one line)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def strip_ddp_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove DDP's ``module.`` prefix when *every* key has it; otherwise return the keys unchanged."""
    keys = list(state_dict)
    if keys and all(k.startswith(DDP_PREFIX) for k in keys):
        return {k[len(DDP_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _partial_prefix_note(state_dict: Mapping[str, Tensor]) -> str:
    """What to say when some keys, but not all, carry DDP's prefix (:func:`strip_ddp_prefix` left them)."""
    prefixed = [k for k in state_dict if k.startswith(DDP_PREFIX)]
    if not prefixed:
        return ""
    return (f"; {len(prefixed)} of {len(state_dict)} keys carry DDP's {DDP_PREFIX!r} prefix (first {prefixed[0]!r}), "
            f"which is removed only when every key has it")


def read_official_state_dict(path) -> dict[str, Tensor]:
    """The tensors of an official ``.pth`` (see the module docstring: ``weights_only``, wrappers, DDP prefix)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    try:
        obj = load_weights_only(p)
    except WeightsOnlyRefusal as exc:
        raise OfficialCheckpointError(
            f"{str(p)!r} refused: it {exc}, which torch.load(weights_only=True) does not build (nothing was "
            f"executed)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise OfficialCheckpointError(f"{str(p)!r} is not a readable torch checkpoint "
                                      f"({type(exc).__name__}: {_first_line(exc)})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise OfficialCheckpointError(f"{str(p)!r} does not hold a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise OfficialCheckpointError(f"{str(p)!r}: entry {bad[0]!r} is not a named tensor; expected a state dict")
    return strip_ddp_prefix(obj)


def official_layout(model_name: str, state_dict: Mapping[str, Tensor], num_classes: int | None = None) -> dict:
    """The ``create_model`` keyword arguments that give ``state_dict``'s layout for ``model_name``.

    ``num_classes`` from ``linear.weight`` unless given; ``deploy=True`` when the blocks are
    ``rbr_reparam`` convs (RepVGG / QARepVGG families); ``keep_post_bn=True`` for a deployed
    QARepVGG that kept its post-BN (YOLOv6).
    """
    if model_name not in ARCHITECTURES:
        raise ValueError(f"unknown model name {model_name!r}; valid names: {', '.join(list_models())}")
    family = ARCHITECTURES[model_name].family
    kwargs: dict = {}
    if num_classes is None:
        w = state_dict.get("linear.weight")
        if not isinstance(w, Tensor) or w.dim() != 2:
            raise OfficialCheckpointError(f"the checkpoint has no 'linear.weight' (K, C) to read num_classes from; "
                                          f"is it a {model_name} classifier checkpoint?"
                                          f"{_partial_prefix_note(state_dict)}")
        num_classes = int(w.shape[0])
    kwargs["num_classes"] = num_classes
    if family in ("repvgg", "repvgg_oabn", "qarepvgg"):
        deployed = "stage0.rbr_reparam.weight" in state_dict
        kwargs["deploy"] = deployed
        if family == "qarepvgg" and deployed:
            kwargs["keep_post_bn"] = "stage0.bn.weight" in state_dict
    return kwargs


def _describe_mismatch(model: nn.Module, sd: Mapping[str, Tensor]) -> tuple[list, list, list]:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in want]
    shapes = [(k, tuple(sd[k].shape), want[k]) for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    return missing, unexpected, shapes


def _mismatch_text(missing: list, unexpected: list, shapes: list, model_name: str) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (first {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (first {unexpected[0]!r})")
    if shapes:
        k, got, want = shapes[0]
        parts.append(f"{len(shapes)} shape mismatch(es) (first {k!r}: file {got}, {model_name} {want})")
    return ", ".join(parts)


def _fits(name: str, sd: Mapping[str, Tensor]) -> bool:
    try:
        kwargs = official_layout(name, sd)
        with torch.device("meta"):
            model = create_model(name, **kwargs)
    except (ValueError, TypeError):
        return False
    return not any(_describe_mismatch(model, sd))


def _closest_names(sd: Mapping[str, Tensor], limit: int = 3) -> list[str]:
    """Registered names the state dict fits (a cheap filter on block count and head width first)."""
    w = sd.get("linear.weight")
    if not isinstance(w, Tensor) or w.dim() != 2:
        return []
    blocks = {".".join(k.split(".")[:2]) if not k.startswith("stage0.") else "stage0" for k in sd
              if k.startswith("stage")}
    candidates = [n for n, cfg in ARCHITECTURES.items()
                  if cfg.widths[-1] == w.shape[1] and sum(cfg.num_blocks) == len(blocks)]
    return [n for n in sorted(candidates) if _fits(n, sd)][:limit]


@torch.no_grad()
def load_official_checkpoint(path, model_name: str, *, num_classes: int | None = None,
                             dtype: torch.dtype | None = None) -> VGGNet:
    """Build ``model_name`` in the checkpoint's form and load an official ``.pth`` into it, strictly.

    The form follows the file: training or deploy (``rbr_reparam``) for RepVGG / QARepVGG
    (a deployed QARepVGG keeps its post-BN if the file has it), ``num_classes`` from
    ``linear.weight``. Keys and shapes are compared before any weight is copied; a
    mismatch raises :class:`OfficialCheckpointError` in one line with counts, the first
    offending key and the registered names the file does fit. The model is returned in
    eval mode on the CPU, in the checkpoint's floating dtype (the promotion of its dtypes when
    it mixes several: every stored value exactly) unless ``dtype`` is given.
    """
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str, got {type(model_name).__name__}")
    if model_name not in ARCHITECTURES:
        raise ValueError(f"unknown model name {model_name!r}; valid names: {', '.join(list_models())}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    sd = read_official_state_dict(path)
    kwargs = official_layout(model_name, sd, num_classes)
    with torch.device("meta"):  # check the layout before allocating anything
        probe = create_model(model_name, **kwargs)
    missing, unexpected, shapes = _describe_mismatch(probe, sd)
    if missing or unexpected or shapes:
        fits = _closest_names(sd)
        hint = f"; the file fits: {', '.join(fits)}" if fits else "; it fits no registered architecture"
        raise OfficialCheckpointError(f"{str(path)!r} is not a {model_name} checkpoint: "
                                      f"{_mismatch_text(missing, unexpected, shapes, model_name)}{hint}"
                                      f"{_partial_prefix_note(sd)}")
    model = create_model(model_name, **kwargs)
    target = dtype
    if target is None:  # the checkpoint's dtype; several: their promotion, which holds every value exactly
        floats = {v.dtype for v in sd.values() if v.is_floating_point()}
        target = functools.reduce(torch.promote_types, sorted(floats, key=str)) if floats else torch.float32
    model = model.to(target)
    full = dict(sd)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in full:
            full[k] = torch.zeros_like(v)
    model.load_state_dict(full, strict=True)
    return model.eval()


def load_official_scales(path, model_name: str) -> dict[str, Tensor]:
    """A published RepOpt-VGG scale file for ``model_name`` (``repopt_vgg_b1`` / ``_b2`` / ``_l1`` / ``_l2``, or
    any registered CSLA / RepOpt / HyperSearch name), validated key by key and shape by shape.

    The file is the state dict of the HyperSearch model the authors trained, reduced to its
    ``stage*.scale_{conv,1x1,identity}.weight`` entries (read with ``weights_only=True``;
    ``module.`` prefixes handled as for checkpoints). Other entries of a full HyperSearch
    checkpoint (``conv.weight``, ``bn.*``, ``linear.*``) are dropped, as the original
    ``extract_RepOptVGG_scales_from_pth`` ignores them.
    """
    if not isinstance(model_name, str) or model_name not in ARCHITECTURES:
        raise ValueError(f"unknown model name {model_name!r}; valid names: {', '.join(list_models())}")
    if ARCHITECTURES[model_name].family not in ("csla", "repopt", "hs"):
        raise ValueError(f"{model_name!r} has no scales; use a repopt_vgg_* / csla_vgg_* / hs_vgg_* name")
    try:
        scales = load_published_scales(path)
    except ScaleFileError as exc:
        # a full HyperSearch checkpoint: keep the scale entries only
        if "unexpected key" not in str(exc):
            raise
        sd = read_official_state_dict(path)
        kept = {k: v for k, v in sd.items() if ".scale_" in k}
        if not kept:
            raise OfficialCheckpointError(f"{str(path)!r} holds no '*.scale_*.weight' entries: not a scale file "
                                          f"or HyperSearch checkpoint") from None

        scales = validate_scales(kept, source=str(path))
    expected = expected_scale_keys(model_name)
    missing = [k for k in expected if k not in scales]
    unexpected = [k for k in scales if k not in expected]
    shapes = [(k, tuple(scales[k].shape), s) for k, s in expected.items() if k in scales
              and tuple(scales[k].shape) != s]
    if missing or unexpected or shapes:
        raise OfficialCheckpointError(f"{str(path)!r} is not a scale file for {model_name}: "
                                      f"{_mismatch_text(missing, unexpected, shapes, model_name)}")
    return dict(scales)
