"""Training checkpoints that never unpickle, written so that a crash never leaves a half checkpoint.

A checkpoint is a **directory**::

    ckpt/
      checkpoint.json                        manifest (written last, atomically)
      model-000003-<random>.safetensors      model.state_dict(), plain safetensors
      state-000003-<random>.safetensors      every tensor of optimizer / scheduler / extra

The manifest holds the structure of the optimizer and scheduler state dicts and of
``extra`` as JSON (numbers, strings, None, lists, tuples, dicts — tensors and NumPy
arrays appear as references into the state file), the file names, their sizes and
SHA-256 digests, the classes of the optimizer and scheduler, and version stamps.

**Atomicity.** Each save writes two *new* uniquely named files (temporary file + fsync +
``os.replace``), then replaces ``checkpoint.json`` atomically, then removes the files the
old manifest pointed to. A crash at any point leaves either the old manifest with its
complete old files or the new manifest with its complete new files — never a manifest
pointing at a partial file; leftovers of an interrupted save are removed by the next one.
Loading checks sizes and digests, so a corrupted file is refused with
:class:`CheckpointError`. One writer per checkpoint directory.

**Safety.** Nothing here calls ``pickle``: safetensors holds raw tensors and JSON the rest.
:func:`load_weights` also reads ``.pt``/``.pth`` files (e.g. published weights), with
``torch.load(weights_only=True)``, which refuses pickles that build anything but tensors
and plain containers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from repspec.core.version import __version__ as repspec_version
from safetensors.torch import load, save
from torch import Tensor, nn

from ..io import WeightsOnlyRefusal, atomic_save_json, atomic_write_bytes, load_weights_only

__all__ = [
    "CheckpointError",
    "MANIFEST_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "load_checkpoint_extra",
    "checkpoint_exists",
    "checkpoint_info",
    "load_weights",
    "read_state_dict",
    "save_weights",
    "capture_rng_state",
    "restore_rng_state",
]

FORMAT = "repspec-checkpoint"
VERSION = 1
MANIFEST_NAME = "checkpoint.json"
_DATA_FILE = re.compile(r"^(model|state)-\d{6,}-[0-9a-f]{12}\.safetensors$")
_TMP_FILE = re.compile(r"^\.(checkpoint\.json|(model|state)-\d{6,}-[0-9a-f]{12}\.safetensors)\..*\.tmp$")

#: optimizer state entries that always have their parameter's shape (checked on load)
_PARAM_SHAPED_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "grad_mult_mask",
                       "square_avg", "acc_delta", "sum", "grad_avg", "prev", "ax", "mu_product")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt or incomplete files, or a mismatch with the
    model / optimizer / scheduler it is loaded into (the message names the key)."""


# --------------------------------------------------------------------------- structure <-> JSON + tensors

numbers_int = (int, np.integer)


def _encode(obj: Any, where: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able form of a plain container; tensors/ndarrays go to ``tensors`` (by reference)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers_int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic) and not isinstance(obj, (np.void, np.object_)):
        return _encode(obj.item(), where, tensors)
    if isinstance(obj, (Tensor, np.ndarray)):
        key = where
        n = 1
        while key in tensors:
            n += 1
            key = f"{where}#{n}"
        if isinstance(obj, np.ndarray):
            if obj.dtype == object or not (np.issubdtype(obj.dtype, np.number) or obj.dtype == np.bool_):
                raise TypeError(f"cannot store {where}: NumPy array of dtype {obj.dtype}")
            if obj.dtype.byteorder == ">":
                obj = obj.astype(obj.dtype.newbyteorder("="))
            tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
            return {"__ndarray__": key}
        if obj.is_sparse or obj.is_quantized or obj.is_complex():
            raise TypeError(f"cannot store {where}: {obj.layout} / {obj.dtype} tensors are not supported")
        tensors[key] = obj.detach()
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{where}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{where}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{where}.{k}", tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (bool, str, float, tuple)) or isinstance(k, numbers_int)):
                raise TypeError(f"cannot store {where}: dict key {k!r} of type {type(k).__name__}")
            items.append([_encode(k, f"{where}.<key>", {}), _encode(v, f"{where}.{k}", tensors)])
        return {"__dict__": items}
    raise TypeError(f"cannot store {where}: objects of type {type(obj).__name__} are not plain data "
                    f"(allowed: tensors, NumPy arrays, numbers, strings, None, lists, tuples, dicts)")


def _decode(obj: Any, tensors: Mapping[str, Tensor], where: str, map_location=None) -> Any:
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, list):
        return [_decode(v, tensors, where, map_location) for v in obj]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: unexpected JSON value of type {type(obj).__name__}")
    if len(obj) == 1:
        (tag, val), = obj.items()
        if tag in ("__tensor__", "__ndarray__"):
            if not isinstance(val, str) or val not in tensors:
                raise CheckpointError(f"{where}: tensor {val!r} is missing from the state file")
            t = tensors[val]
            if tag == "__ndarray__":
                return t.numpy().copy()
            return t if map_location is None else t.to(map_location)
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, where, map_location) for v in val)
        if tag == "__float__":
            if val not in ("inf", "-inf", "nan"):
                raise CheckpointError(f"{where}: bad float {val!r}")
            return float(val)
        if tag == "__dict__":
            return {_decode(k, tensors, where): _decode(v, tensors, where, map_location) for k, v in val}
    return {k: _decode(v, tensors, where, map_location) for k, v in obj.items()}


# --------------------------------------------------------------------------- files

def _unwrap(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def _serialize(tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return save(clean, metadata=metadata)


def _checkpoint_dir(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.name == MANIFEST_NAME and not path.is_dir():
        path = path.parent
    return path


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON without its ``manifest_sha256`` entry. It binds
    the model name, ``extra`` (model settings, data settings) and the file digests together,
    so a hand-edited manifest (e.g. a renamed model) is refused instead of loading silently."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_manifest(d: Path) -> dict:
    if not d.exists():
        raise FileNotFoundError(f"no checkpoint at {str(d)!r}: the directory does not exist")
    if not d.is_dir():
        raise CheckpointError(f"{str(d)!r} is a file, not a checkpoint directory (use load_weights for weight files)")
    mpath = d / MANIFEST_NAME
    if not mpath.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(d)!r}: {MANIFEST_NAME} is missing (an interrupted first save "
                                f"leaves no manifest, so nothing there is usable)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint manifest {str(mpath)!r}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{str(mpath)!r} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{str(mpath)!r} has format version {manifest.get('version')!r}; this repspec reads "
                              f"version {VERSION}")
    digest = manifest.get("manifest_sha256")
    if digest is not None and digest != _manifest_digest(manifest):
        raise CheckpointError(f"{str(mpath)!r} was edited after it was written (its manifest_sha256 does not match "
                              f"its content): the model name, settings or file list no longer describe the weights")
    for k in ("model", "state"):
        f = manifest.get("files", {}).get(k)
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not _DATA_FILE.match(f["name"]):
            raise CheckpointError(f"{str(mpath)!r}: bad entry files.{k}")
    return manifest


def _read_tensors(d: Path, entry: dict) -> dict[str, Tensor]:

    p = d / entry["name"]
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(d)!r} is incomplete: {entry['name']} is missing")
    data = p.read_bytes()
    if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CheckpointError(f"checkpoint file {str(p)!r} is corrupt: its size/SHA-256 do not match the manifest")
    try:
        return load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"checkpoint file {str(p)!r} is not a valid safetensors file: {exc}") from None


def checkpoint_exists(path) -> bool:
    """True if ``path`` is a checkpoint directory with a manifest (its files are not verified)."""
    d = _checkpoint_dir(path)
    return (d / MANIFEST_NAME).is_file()


def checkpoint_info(path) -> dict[str, Any]:
    """The manifest of a checkpoint (JSON only; no tensor file is read): ``created``,
    ``torch_version``, ``optimizer_class``, ``scheduler_class``, ``files``, … ."""
    return _read_manifest(_checkpoint_dir(path))


# --------------------------------------------------------------------------- save

def save_checkpoint(path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any | None = None, extra: dict | None = None) -> Path:
    """Write a checkpoint directory at ``path`` (created if needed) atomically; returns it.

    ``model.state_dict()`` goes to a plain safetensors file; ``optimizer.state_dict()``
    (RepOptimizer masks included), ``scheduler.state_dict()`` and ``extra`` (a dict of
    plain data: tensors, NumPy arrays, numbers, strings, None, lists, tuples, dicts) to a
    second safetensors file plus JSON in the manifest. Everything is serialized in
    memory before any file is written; a non-plain object raises ``TypeError`` naming
    where it is. See the module docstring for the crash guarantees.
    """
    d = _checkpoint_dir(path)
    if d.exists() and not d.is_dir():
        raise FileExistsError(f"checkpoint path {str(d)!r} exists and is not a directory")
    model = _unwrap(model)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if scheduler is not None and not (hasattr(scheduler, "state_dict") and hasattr(scheduler, "load_state_dict")):
        raise TypeError(f"scheduler must have state_dict/load_state_dict, got {type(scheduler).__name__}")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a dict or None, got {type(extra).__name__}")

    model_sd = model.state_dict()
    for k, v in model_sd.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"model.state_dict()[{k!r}] is a {type(v).__name__}, not a tensor")
    state_tensors: dict[str, Tensor] = {}
    opt_json = None if optimizer is None else _encode(optimizer.state_dict(), "optimizer", state_tensors)
    sched_json = None if scheduler is None else _encode(scheduler.state_dict(), "scheduler", state_tensors)
    extra_json = None if extra is None else _encode(dict(extra), "extra", state_tensors)
    model_bytes = _serialize(model_sd, {"format": "pt"})
    state_bytes = _serialize(state_tensors)

    d.mkdir(parents=True, exist_ok=True)
    old = None
    with contextlib.suppress(FileNotFoundError, CheckpointError):
        old = _read_manifest(d)
    seq = int(old.get("sequence", 0)) + 1 if old else 1
    files = {}
    for kind, data in (("model", model_bytes), ("state", state_bytes)):
        name = f"{kind}-{seq:06d}-{secrets.token_hex(6)}.safetensors"
        atomic_write_bytes(d / name, data)
        files[kind] = {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    _fsync_dir(d)
    manifest = {
        "format": FORMAT, "version": VERSION, "sequence": seq,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__, "repspec_version": repspec_version,
        "files": files,
        "model_class": type(model).__name__,
        "optimizer_class": None if optimizer is None else type(optimizer).__name__,
        "scheduler_class": None if scheduler is None else type(scheduler).__name__,
        "optimizer": opt_json, "scheduler": sched_json, "extra": extra_json,
    }
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    atomic_save_json(manifest, d / MANIFEST_NAME, indent=None)
    _fsync_dir(d)
    keep = {f["name"] for f in files.values()}
    for p in d.iterdir():  # files of the replaced checkpoint and leftovers of interrupted saves
        if p.name not in keep and (_DATA_FILE.match(p.name) or _TMP_FILE.match(p.name)):
            with contextlib.suppress(OSError):
                p.unlink()
    return d


# --------------------------------------------------------------------------- load

def _check_model_state(model: nn.Module, tensors: Mapping[str, Tensor], source: str, strict: bool = True) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if strict and (missing or unexpected):
        parts = [f"{label} key(s) {keys[:8]}{' …' if len(keys) > 8 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"{source} does not match the model ({type(model).__name__}): {'; '.join(parts)}")
    for k, v in own.items():
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: shape mismatch for {k!r}: checkpoint {tuple(tensors[k].shape)}, "
                                  f"model {tuple(v.shape)}")


def _check_optimizer_state(optimizer: torch.optim.Optimizer, sd: Any, model: nn.Module, source: str) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise CheckpointError(f"{source}: optimizer state is not a dict with 'state' and 'param_groups'")
    groups, saved = optimizer.param_groups, sd["param_groups"]
    if len(groups) != len(saved):
        raise CheckpointError(f"{source}: the checkpoint's optimizer has {len(saved)} parameter group(s), this one "
                              f"has {len(groups)}")
    for gi, (g, sg) in enumerate(zip(groups, saved)):
        if len(g["params"]) != len(sg["params"]):
            raise CheckpointError(f"{source}: optimizer parameter group {gi} has {len(sg['params'])} parameters in the "
                                  f"checkpoint, {len(g['params'])} here")
        for pid, p in zip(sg["params"], g["params"]):
            st = sd["state"].get(pid, {})
            for key, v in st.items():
                if key in _PARAM_SHAPED_STATE and isinstance(v, Tensor) and tuple(v.shape) != tuple(p.shape):
                    pname = names.get(id(p), f"group {gi} param {pid}")
                    raise CheckpointError(f"{source}: optimizer state {key!r} of parameter {pname!r} has shape "
                                          f"{tuple(v.shape)} in the checkpoint, the parameter has {tuple(p.shape)}")



def _stored_component(manifest: dict, state, source: str, what: str, target) -> Any:
    """The decoded ``what`` ('optimizer' / 'scheduler') state of a checkpoint, refused when it is missing or
    was saved from another class than ``target``'s."""
    if manifest.get(what) is None:
        raise CheckpointError(f"{source} has no {what} state")
    if manifest.get(f"{what}_class") != type(target).__name__:
        raise CheckpointError(f"{source} holds {manifest.get(f'{what}_class')} state, cannot load it into "
                              f"{type(target).__name__}")
    return _decode(manifest[what], state, what)

def load_checkpoint(path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any | None = None, map_location=None, *, strict: bool = True) -> dict | None:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``,
    ``scheduler`` if given); returns its ``extra`` (None if it had none).

    Sizes and SHA-256 digests of both files are verified and every key and shape is
    checked against ``model`` / ``optimizer`` before anything is modified: missing or
    unexpected model keys (with ``strict``), shape mismatches (naming the key), a
    different optimizer or scheduler class, or optimizer groups of a different layout
    raise :class:`CheckpointError`; a missing checkpoint raises ``FileNotFoundError``.
    Model and optimizer tensors are copied into the existing tensors (their device and
    dtype are kept); tensors in ``extra`` are returned on ``map_location`` (default CPU).
    Requesting the optimizer or scheduler of a checkpoint saved without one is an error.
    """
    d = _checkpoint_dir(path)
    model = _unwrap(model)
    manifest = _read_manifest(d)
    weights = _read_tensors(d, manifest["files"]["model"])
    state = _read_tensors(d, manifest["files"]["state"])
    source = f"checkpoint {str(d)!r}"
    _check_model_state(model, weights, source, strict)
    opt_sd = sched_sd = None
    if optimizer is not None:
        opt_sd = _stored_component(manifest, state, source, "optimizer", optimizer)
        _check_optimizer_state(optimizer, opt_sd, model, source)
    if scheduler is not None:
        sched_sd = _stored_component(manifest, state, source, "scheduler", scheduler)
        if not isinstance(sched_sd, dict):
            raise CheckpointError(f"{source}: scheduler state is not a dict")
    extra = None if manifest.get("extra") is None else _decode(manifest["extra"], state, "extra", map_location)

    model.load_state_dict(weights, strict=strict)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(opt_sd)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: cannot load the optimizer state: {exc}") from exc
    if scheduler is not None:
        scheduler.load_state_dict(sched_sd)
    return extra


def load_checkpoint_extra(path, map_location=None) -> dict | None:
    """Only the ``extra`` dict of a checkpoint (verified like :func:`load_checkpoint`), e.g.
    to learn which model to build before loading the weights."""
    d = _checkpoint_dir(path)
    manifest = _read_manifest(d)
    if manifest.get("extra") is None:
        return None
    state = _read_tensors(d, manifest["files"]["state"])
    return _decode(manifest["extra"], state, "extra", map_location)


# --------------------------------------------------------------------------- weight files

def read_state_dict(path) -> dict[str, Tensor]:
    """A state dict from a checkpoint directory, a ``.safetensors`` file, or a ``.pt``/``.pth``
    file (``torch.load(weights_only=True)``: pickles that build anything but tensors and
    plain containers are refused, never executed). A ``.pt`` dict holding the weights
    under ``state_dict`` or ``model`` is unwrapped. Tensors are on the CPU."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if p.is_dir() or p.name == MANIFEST_NAME:
        d = _checkpoint_dir(p)
        return _read_tensors(d, _read_manifest(d)["files"]["model"])
    if not p.is_file():
        raise FileNotFoundError(f"no weight file at {str(p)!r}")
    if p.suffix == ".safetensors":
    
        try:
            return load(p.read_bytes())
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{str(p)!r} is not a valid safetensors file: {exc}") from None
    if p.suffix not in (".pt", ".pth", ".bin"):
        raise ValueError(f"unknown weight file type {p.suffix!r} for {str(p)!r}: use .safetensors, .pt or .pth")
    try:
        obj = load_weights_only(p)
    except WeightsOnlyRefusal as exc:
        raise CheckpointError(f"refusing to load {str(p)!r}: it {exc}, which torch.load(weights_only=True) does "
                              f"not build (nothing was executed)") from None
    except Exception as exc:  # noqa: BLE001 - not a torch file, truncated, unreadable
        raise CheckpointError(f"refusing to load {str(p)!r}: it is not a plain weights file that loads with "
                              f"torch.load(weights_only=True) ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                              ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{str(p)!r} does not hold a state dict of tensors")
    return dict(obj)


def load_weights(path, model: nn.Module, *, strict: bool = True) -> None:
    """Load model weights from a checkpoint directory or a weight file (see
    :func:`read_state_dict`) into ``model``; keys and shapes are checked first
    (:class:`CheckpointError` naming the key)."""
    model = _unwrap(model)
    sd = read_state_dict(path)
    _check_model_state(model, sd, f"weights {str(path)!r}", strict)
    model.load_state_dict(sd, strict=strict)


def save_weights(path, model: nn.Module) -> Path:
    """``model.state_dict()`` as a single safetensors file, written atomically."""
    model = _unwrap(model)
    atomic_write_bytes(path, _serialize(model.state_dict(), {"format": "pt"}))
    return Path(path)


# --------------------------------------------------------------------------- RNG state

def capture_rng_state() -> dict[str, Any]:
    """The global random states as plain data (for ``extra``): torch CPU, every CUDA device
    (if CUDA is initialized or available), NumPy's legacy global ``RandomState`` and Python's
    ``random``."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only if the number of
    devices matches)."""
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    npst = state["numpy"]
    np.random.set_state({"bit_generator": npst["bit_generator"],
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": int(npst["pos"])},
                         "has_gauss": int(npst["has_gauss"]), "gauss": float(npst["gauss"])})
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.to("cpu", torch.uint8) for t in cuda])
