"""torch_impl's files: safetensors written atomically, and ``.pth`` files read with
``weights_only=True`` only.

The atomic writers themselves (temporary file beside the target, fsync, rename; the
directory outputs) are :mod:`repspec.core.files`, re-exported here for torch_impl's modules.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from repspec.core.files import (
    atomic_directory,
    atomic_open,
    atomic_save_json,
    atomic_write_bytes,
    atomic_write_text,
    json_default,
    replace_directory,
)
from safetensors.torch import save as _st_save

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_save_json", "atomic_save_safetensors",
           "atomic_directory", "replace_directory", "json_default", "load_weights_only", "WeightsOnlyRefusal"]


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path, *,
                            metadata: Mapping[str, str] | None = None) -> Path:
    """Save ``{name: tensor}`` as a safetensors file atomically (SPEC §3).

    Tensors are detached, moved to CPU and made contiguous; shared storage is copied
    (safetensors refuses aliased tensors). Serialization happens in memory before the
    temporary file is written.
    """

    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of str to torch.Tensor, got {type(tensors).__name__}")
    clean: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if not isinstance(k, str):
            raise TypeError(f"tensor names must be str, got {k!r}")
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"tensors[{k!r}] must be a torch.Tensor, got {type(v).__name__}")
        clean[k] = v.detach().to("cpu").contiguous().clone()
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must be a mapping of str to str")
        metadata = dict(metadata)
    data = _st_save(clean, metadata=metadata)
    return atomic_write_bytes(path, data)


# ------------------------------------------------------------------------ reading .pth files


class WeightsOnlyRefusal(pickle.UnpicklingError):
    """``torch.load(weights_only=True)`` refused a file and ran nothing in it. The message is one
    clause saying what the file holds (``"holds pickled objects other than tensors ..."``), to
    follow "it"; torch's own text is left out: it runs to several lines and advises loading the
    file with ``weights_only=False``, which would run whatever the pickle holds."""


#: the global torch's refusal names (``GLOBAL __main__.Evil was not an allowed global``,
#: ``unsupported GLOBAL posix.system whose module posix is blocked``)
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_weights_only(path):
    """``torch.load(path, map_location="cpu", weights_only=True)`` without torch's noise on stderr.

    Only tensors and plain containers are built. A file that holds anything else, or a
    TorchScript archive (a compiled program, not a state dict), raises
    :class:`WeightsOnlyRefusal` in one line; nothing in it runs. Other failures (not a torch
    file, truncated, unreadable) raise what torch raises. torch's warnings while loading (e.g.
    "received a zip file that looks like a TorchScript archive") are not shown: the refusal
    says it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = _REFUSED_GLOBAL.search(str(exc))
            raise WeightsOnlyRefusal("holds pickled objects other than tensors and plain containers"
                                     + (f" (the first: {found.group(1)})" if found else "")) from None
        except RuntimeError as exc:
            if "TorchScript" not in str(exc):
                raise
            raise WeightsOnlyRefusal("is a TorchScript archive (a compiled program, not a state dict)") from None

