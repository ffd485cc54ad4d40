"""SPEC §3 "Scale files": HyperSearch scales on disk — safetensors, JSON and the published ``.pth``.

A scale dict maps ``stage{k}.{i}.scale_{conv|1x1|identity}.weight`` (stage0:
``stage0.scale_{conv|1x1}.weight``) to a 1-D per-output-channel tensor. Every block
has ``scale_conv`` and ``scale_1x1`` of equal length and, iff it has an identity
branch, ``scale_identity`` of the same length.

- :func:`save_scales` / :func:`load_scales`: safetensors (``.safetensors``) or JSON
  (``.json``), chosen by suffix; writes are atomic (temporary file + ``os.replace``).
- :func:`load_published_scales`: the official RepOptimizers ``.pth`` files, read with
  ``torch.load(weights_only=True)`` — a pickle that would build anything other than
  tensors and plain containers is refused without being executed.
- :func:`check_scales_for_model`: keys and shapes against a RepOpt-VGG model.
- :func:`initial_scales`: the HyperSearch initial values for a model (for tests and
  runs without a searched file).
"""

from __future__ import annotations

import json
import numbers
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..io import WeightsOnlyRefusal, atomic_save_json, atomic_save_safetensors, load_weights_only
from ..modules.models import expected_scale_keys, hypersearch_scale_init
from .repoptimizer import target_blocks

__all__ = [
    "SCALE_KEY_PATTERN",
    "ScaleFileError",
    "validate_scales",
    "check_scales_for_model",
    "save_scales",
    "load_scales",
    "load_published_scales",
    "initial_scales",
    "block_prefixes",
    "scales_from_official",
    "scales_to_official",
]

#: ``stage{k}[.{i}].scale_{conv|1x1|identity}.weight``
SCALE_KEY_PATTERN = re.compile(r"^(?P<prefix>stage(?P<stage>\d+)(?:\.(?P<block>\d+))?)"
                               r"\.scale_(?P<kind>conv|1x1|identity)\.weight$")

JSON_FORMAT = "repspec-scales"
JSON_VERSION = 1
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}


class ScaleFileError(ValueError):
    """A scale file or dict that does not follow SPEC §3's layout (names the key and the expectation)."""


def _natural_key(key: str):
    m = SCALE_KEY_PATTERN.match(key)
    order = {"conv": 0, "1x1": 1, "identity": 2}
    return (int(m["stage"]), -1 if m["block"] is None else int(m["block"]), order[m["kind"]])


def validate_scales(scales, *, source: str = "scales") -> "OrderedDict[str, Tensor]":
    """Check a scale dict's layout (SPEC §3) and return it ordered (stage, block, conv/1x1/identity).

    Raises :class:`ScaleFileError` naming the offending key: unknown key, not a 1-D
    floating tensor, non-finite values, a block missing ``scale_conv``/``scale_1x1``,
    or entries of one block with different lengths. Tensors are not copied.
    """
    if not isinstance(scales, Mapping):
        raise ScaleFileError(f"{source}: expected a dict of name -> tensor, got {type(scales).__name__}")
    if not scales:
        raise ScaleFileError(f"{source}: no scales found")
    blocks: dict[str, dict[str, Tensor]] = {}
    for key, v in scales.items():
        if not isinstance(key, str) or not SCALE_KEY_PATTERN.match(key):
            raise ScaleFileError(f"{source}: unexpected key {key!r}; expected "
                                 f"'stage{{k}}.{{i}}.scale_{{conv|1x1|identity}}.weight' "
                                 f"(stage0: 'stage0.scale_{{conv|1x1}}.weight')")
        if not isinstance(v, Tensor):
            raise ScaleFileError(f"{source}: {key!r} must be a tensor, got {type(v).__name__}")
        if not v.is_floating_point():
            raise ScaleFileError(f"{source}: {key!r} must be a floating-point tensor, got dtype {v.dtype}")
        if v.dim() != 1 or v.numel() == 0:
            raise ScaleFileError(f"{source}: {key!r} must have shape (C,) (one value per output channel), "
                                 f"got {tuple(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ScaleFileError(f"{source}: {key!r} contains NaN or Inf")
        m = SCALE_KEY_PATTERN.match(key)
        blocks.setdefault(m["prefix"], {})[m["kind"]] = v
    for prefix, kinds in blocks.items():
        for need in ("conv", "1x1"):
            if need not in kinds:
                raise ScaleFileError(f"{source}: block {prefix!r} has no '{prefix}.scale_{need}.weight' "
                                     f"(found {sorted(f'{prefix}.scale_{k}.weight' for k in kinds)})")
        c = kinds["conv"].numel()
        for kind, v in kinds.items():
            if v.numel() != c:
                raise ScaleFileError(f"{source}: '{prefix}.scale_{kind}.weight' must have shape ({c},) like "
                                     f"'{prefix}.scale_conv.weight', got {tuple(v.shape)}")
    return OrderedDict((k, scales[k]) for k in sorted(scales, key=_natural_key))


def block_prefixes(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(prefix, block)]`` of a RepOpt-VGG / CSLA / HyperSearch model's blocks, model order (SPEC §3)."""

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    found = [(n, m) for n, m in inner.named_modules()
             if n and hasattr(m, "scale_conv") and hasattr(m, "scale_1x1") and hasattr(m, "conv")]
    return found or target_blocks(inner)


def _block_geometry(block: nn.Module) -> tuple[int, int, bool]:
    conv = block.conv
    identity = conv.in_channels == conv.out_channels and tuple(conv.stride) == (1, 1)
    if hasattr(block, "scale_conv"):  # CSLA/HS: the module itself says whether d exists
        identity = hasattr(block, "scale_identity")
    return conv.in_channels, conv.out_channels, identity


def check_scales_for_model(scales: Mapping[str, Tensor], model: nn.Module, *, source: str = "scales") -> None:
    """Every block of ``model`` has its scales with shape ``(out_channels,)``, ``scale_identity``
    exactly where an identity branch exists, and nothing else (SPEC §3); else ScaleFileError."""
    validate_scales(scales, source=source)
    blocks = block_prefixes(model)
    expected = set()
    for prefix, block in blocks:
        _, o, identity = _block_geometry(block)
        kinds = ("conv", "1x1", "identity") if identity else ("conv", "1x1")
        for kind in kinds:
            key = f"{prefix}.scale_{kind}.weight"
            expected.add(key)
            if key not in scales:
                why = " (the block has an identity branch)" if kind == "identity" else ""
                raise ScaleFileError(f"{source}: missing {key!r}, expected shape ({o},){why}")
            if tuple(scales[key].shape) != (o,):
                raise ScaleFileError(f"{source}: {key!r} must have shape ({o},) for block {prefix!r} "
                                     f"(out_channels={o}), got {tuple(scales[key].shape)}")
    extra = sorted(set(scales) - expected, key=_natural_key)
    if extra:
        raise ScaleFileError(f"{source}: entries for blocks or branches the model does not have: {extra[:5]}"
                             f"{' …' if len(extra) > 5 else ''} (scale_identity only exists where in == out and "
                             f"stride == 1)")


def initial_scales(model: nn.Module, *, dtype: torch.dtype = torch.float64) -> "OrderedDict[str, Tensor]":
    """The HyperSearch initial scales for ``model``'s blocks (SPEC §3 "HyperSearch" init).

    ``α3 = α1 =`` :func:`repspec.torch_impl.modules.models.hypersearch_scale_init`
    ``(stage, block)`` — the one function ``HyperSearchBlock`` models are built with
    (1 for stage0 and block 0 of every stage, ``sqrt(2/i)`` for block ``i ≥ 1``);
    ``d = 1`` where an identity branch exists. These are also the constant scales of the
    original ``RepOptVGG(mode='csla')``. Useful as a stand-in when no searched file
    exists (tests, smoke runs); keys as :func:`save_scales` expects.
    """

    out = OrderedDict()
    for prefix, block in block_prefixes(model):
        m = re.match(r"^stage(\d+)(?:\.(\d+))?$", prefix)
        if not m:
            raise ValueError(f"block {prefix!r} is not named 'stage{{k}}' or 'stage{{k}}.{{i}}'")
        init = hypersearch_scale_init(int(m.group(1)), 0 if m.group(2) is None else int(m.group(2)))
        _, o, identity = _block_geometry(block)
        out[f"{prefix}.scale_conv.weight"] = torch.full((o,), init, dtype=dtype)
        out[f"{prefix}.scale_1x1.weight"] = torch.full((o,), init, dtype=dtype)
        if identity:
            out[f"{prefix}.scale_identity.weight"] = torch.ones(o, dtype=dtype)
    return out


# ------------------------------------------------------- the original per-block tuples

def _explicit_layout(layout) -> list[tuple[str, int, bool]]:
    """A layout given as ``[(prefix, out_channels, has_identity), …]``, checked entry by entry."""
    out = []
    for j, entry in enumerate(layout):
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise TypeError(f"layout[{j}] must be (prefix, out_channels, has_identity), got {entry!r}")
        prefix, channels, identity = entry
        m = re.match(r"^stage(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?$", prefix) if isinstance(prefix, str) else None
        if m is None or (m.group(1) == "0") != (m.group(2) is None):
            raise ValueError(f"layout[{j}] prefix must be 'stage0' or 'stage{{k}}.{{i}}' with k >= 1, got {prefix!r}")
        if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
            raise ValueError(f"layout[{j}] out_channels must be a positive integer, got {channels!r}")
        if not isinstance(identity, bool):
            raise TypeError(f"layout[{j}] has_identity must be a bool, got {type(identity).__name__}")
        out.append((prefix, int(channels), identity))
    if not out:
        raise ValueError("layout must not be empty")
    if len({p for p, _, _ in out}) != len(out):
        raise ValueError(f"layout prefixes must be unique, got {[p for p, _, _ in out]}")
    return out


def _layout(model) -> list[tuple[str, int, bool]]:
    """``[(prefix, out_channels, has_identity)]`` in model order, of a model, a registry name or an
    explicit layout (a list of such triples)."""
    if isinstance(model, (list, tuple)):
        return _explicit_layout(model)
    if isinstance(model, str):

        keys = expected_scale_keys(model)
        out: dict[str, list] = {}
        for k, shape in keys.items():
            m = SCALE_KEY_PATTERN.match(k)
            entry = out.setdefault(m["prefix"], [m["prefix"], shape[0], False])
            entry[2] = entry[2] or m["kind"] == "identity"
        return [tuple(v) for v in out.values()]
    return [(prefix, _block_geometry(block)[1], _block_geometry(block)[2]) for prefix, block in block_prefixes(model)]


def scales_from_official(tuples, model, *, dtype: torch.dtype | None = None) -> "OrderedDict[str, Tensor]":
    """The original RepOptimizers per-block scale list → repspec's state-dict-keyed scales (SPEC §3).

    ``tuples[j]`` belongs to the ``j``-th block in model order (``stage0``, ``stage1.0``, …)
    and is, as the original ``extract_scales`` / ``RepOptVGGHandler`` expect,
    ``(scale_identity, scale_1x1, scale_conv)`` for a block with an identity branch and
    ``(scale_1x1, scale_conv)`` otherwise. ``model`` is a RepOpt-VGG / CSLA / HyperSearch
    model, a registry name (``'repopt_vgg_b1'``) or an explicit layout, a list of
    ``(prefix, out_channels, has_identity)`` in model order (no model needed). Tensors are copied (``dtype`` casts
    them). Every entry is checked against the layout (count, tuple length, shape) before
    anything is returned; :func:`scales_to_official` is the inverse.
    """
    layout = _layout(model)
    if isinstance(tuples, (str, bytes, Mapping)) or not hasattr(tuples, "__len__"):
        raise TypeError(f"tuples must be a list of per-block scale tuples, got {type(tuples).__name__}")
    if len(tuples) != len(layout):
        raise ScaleFileError(f"scales_from_official: {len(tuples)} tuples for a model with {len(layout)} blocks")
    out = OrderedDict()
    for j, ((prefix, o, identity), entry) in enumerate(zip(layout, tuples)):
        want = 3 if identity else 2
        if not isinstance(entry, (tuple, list)) or len(entry) != want:
            got = len(entry) if isinstance(entry, (tuple, list)) else type(entry).__name__
            raise ScaleFileError(f"scales_from_official: tuple {j} (block {prefix!r}) must have {want} entries "
                                 f"({'(identity, 1x1, conv)' if identity else '(1x1, conv)'}), got {got}")
        kinds = ("identity", "1x1", "conv") if identity else ("1x1", "conv")
        for kind, v in zip(kinds, entry):
            if not isinstance(v, Tensor) or not v.is_floating_point():
                raise ScaleFileError(f"scales_from_official: tuple {j} (block {prefix!r}) {kind} scale must be a "
                                     f"floating-point tensor, got {type(v).__name__}")
            if v.numel() != o:
                raise ScaleFileError(f"scales_from_official: tuple {j} (block {prefix!r}) {kind} scale must have "
                                     f"{o} values (out_channels), got shape {tuple(v.shape)}")
        for kind in ("conv", "1x1", "identity"):
            if kind in kinds:
                v = entry[kinds.index(kind)].detach().reshape(-1).to("cpu").clone()
                out[f"{prefix}.scale_{kind}.weight"] = v if dtype is None else v.to(dtype)
    return validate_scales(out, source="scales_from_official")


def scales_to_official(scales: Mapping[str, Tensor], model) -> list[tuple[Tensor, ...]]:
    """repspec's keyed scales → the original per-block list of ``(identity, 1x1, conv)`` /
    ``(1x1, conv)`` tuples, model order (inverse of :func:`scales_from_official`; ``model`` as there)."""
    validate_scales(scales, source="scales_to_official")
    out = []
    for prefix, o, identity in _layout(model):
        kinds = ("identity", "1x1", "conv") if identity else ("1x1", "conv")
        entry = []
        for kind in kinds:
            key = f"{prefix}.scale_{kind}.weight"
            if key not in scales:
                raise ScaleFileError(f"scales_to_official: missing {key!r}")
            if scales[key].numel() != o:
                raise ScaleFileError(f"scales_to_official: {key!r} must have shape ({o},), "
                                     f"got {tuple(scales[key].shape)}")
            entry.append(scales[key])
        out.append(tuple(entry))
    return out


# ------------------------------------------------------------------------------ I/O

def _suffix(path: Path) -> str:
    s = path.suffix.lower()
    if s not in (".safetensors", ".json", ".pth", ".pt"):
        raise ValueError(f"{str(path)!r}: unknown scale file type {path.suffix!r}; use .safetensors or .json "
                         f"(or .pth/.pt for published files, read-only)")
    return s


def save_scales(scales: Mapping[str, Tensor], path) -> Path:
    """Save a scale dict (SPEC §3) as ``.safetensors`` or ``.json`` (by suffix), atomically.

    Validated first (:func:`validate_scales`); dtypes are kept (JSON stores the dtype
    name and exact decimal values, so float32/float64 round-trip bit-exactly). Writing
    ``.pth`` is refused: pickles are not a format repspec writes.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix in (".pth", ".pt"):
        raise ValueError(f"{str(path)!r}: repspec does not write pickle files; use .safetensors or .json")
    scales = validate_scales(scales, source="save_scales")
    if suffix == ".safetensors":
        return atomic_save_safetensors(scales, path, metadata={"format": JSON_FORMAT, "version": str(JSON_VERSION)})
    body = OrderedDict()
    for k, v in scales.items():
        name = str(v.dtype).replace("torch.", "")
        if name not in _DTYPES:
            raise ScaleFileError(f"save_scales: {k!r} has unsupported dtype {v.dtype}")
        body[k] = {"dtype": name, "values": [float(x) for x in v.detach().cpu().double().tolist()]}
    return atomic_save_json({"format": JSON_FORMAT, "version": JSON_VERSION, "scales": body}, path)


def load_scales(path) -> "OrderedDict[str, Tensor]":
    """Load scales saved by :func:`save_scales` (``.safetensors`` / ``.json``); ``.pth``/``.pt``
    go through :func:`load_published_scales`. Validated; CPU tensors (SPEC §3)."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"scale file {str(path)!r} does not exist")
    if suffix in (".pth", ".pt"):
        return load_published_scales(path)
    if suffix == ".safetensors":

        try:
            scales = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise ScaleFileError(f"{str(path)!r}: not a readable safetensors file ({e})") from None
        return validate_scales(scales, source=str(path))
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScaleFileError(f"{str(path)!r}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT or not isinstance(doc.get("scales"), dict):
        raise ScaleFileError(f"{str(path)!r}: not a repspec scale file (expected an object with "
                             f"'format': {JSON_FORMAT!r} and a 'scales' object)")
    if doc.get("version") != JSON_VERSION:
        raise ScaleFileError(f"{str(path)!r}: unsupported version {doc.get('version')!r} (expected {JSON_VERSION})")
    scales = {}
    for k, entry in doc["scales"].items():
        if (not isinstance(entry, dict) or entry.get("dtype") not in _DTYPES
                or not isinstance(entry.get("values"), list)
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in entry["values"])):
            raise ScaleFileError(f"{str(path)!r}: entry {k!r} must be {{'dtype': one of {sorted(_DTYPES)}, "
                                 f"'values': [numbers]}}")
        scales[k] = torch.tensor(entry["values"], dtype=torch.float64).to(_DTYPES[entry["dtype"]])
    return validate_scales(scales, source=str(path))


def load_published_scales(path) -> "OrderedDict[str, Tensor]":
    """Load an official RepOptimizers scale file (e.g. ``RepOpt-VGG-B1-scales.pth``), safely (SPEC §3).

    Uses ``torch.load(path, weights_only=True, map_location='cpu')``: only tensors and
    plain containers are unpickled, so a file whose unpickling would run code (e.g. call
    ``os.system``) is refused — :class:`ScaleFileError` — without executing anything.
    Accepts a plain state dict, optionally wrapped as ``{'state_dict': …}`` / ``{'model': …}``
    or with DDP's ``module.`` prefix; the result is validated (:func:`validate_scales`)
    and returned in natural order as CPU tensors of the stored dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scale file {str(path)!r} does not exist")
    try:
        obj = load_weights_only(path)
    except WeightsOnlyRefusal as e:
        raise ScaleFileError(f"{str(path)!r} was refused by torch.load(weights_only=True): it {e}, and was not "
                             f"unpickled") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ScaleFileError(f"{str(path)!r}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, Mapping) and len(obj) == 1:
        (only_key, only_val), = obj.items()
        if only_key in ("state_dict", "model") and isinstance(only_val, Mapping):
            obj = only_val
    if not isinstance(obj, Mapping):
        raise ScaleFileError(f"{str(path)!r}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return validate_scales(dict(obj), source=str(path))
