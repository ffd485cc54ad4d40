"""Atomic file writes for everything repspec saves (SPEC §3 "Scale files"), standard library only.

A crash, a full disk or an exception while serializing must never leave a
half-written file at the destination: every writer here writes to a temporary
file in the *same directory* (so :func:`os.replace` is an atomic rename on
POSIX and Windows), flushes and fsyncs it, then renames it over the target.
On any failure the temporary file is removed and the destination is untouched
(an existing file keeps its old content). Tensor formats (safetensors) are written by
:mod:`repspec.torch_impl.io` through :func:`atomic_write_bytes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .outputs import normal_mode, old_prefix, owned_directory, tmp_prefix, write_output_manifest

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_save_json", "atomic_directory",
           "replace_directory", "json_default"]


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"path must name a file, got {str(path)!r}")
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"path {str(path)!r} is a directory")
    if not path.parent.exists():
        raise FileNotFoundError(f"directory {str(path.parent)!r} does not exist (for {str(path)!r})")
    return path


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit rename it over ``path`` (SPEC §3).

    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding`` defaults to UTF-8). If the
    ``with`` body raises, the temporary file is deleted and ``path`` is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = _check_path(path)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        normal_mode(tmp, directory=False)  # mkstemp creates 0600; outputs get 0666 & ~umask
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (SPEC §3); returns the path."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (SPEC §3); returns the path."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def json_default(o):
    """``default=`` for :func:`json.dumps`: paths, and anything with ``tolist()`` — NumPy scalars
    and arrays, tensors — as the Python numbers and lists it returns (a NumPy scalar's ``tolist()``
    is its ``item()``)."""

    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _nulls_for_non_finite(obj):
    if isinstance(obj, float) and not (obj == obj and abs(obj) != float("inf")):
        return None
    if isinstance(obj, dict):
        return {k: _nulls_for_non_finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nulls_for_non_finite(v) for v in obj]
    return obj


def atomic_save_json(obj: Any, path, *, indent: int | None = 1, default=None, allow_nan: bool = False) -> Path:
    """Serialize ``obj`` to JSON first (so a non-serializable object fails before any file is
    touched), then write it atomically (SPEC §3). The file is always strict JSON: NaN/Inf
    are refused, or with ``allow_nan`` written as ``null`` (never ``NaN`` or ``"nan"``);
    ``default`` converts objects JSON does not know (as in :func:`json.dumps`)."""
    text = json.dumps(obj, indent=indent, allow_nan=allow_nan, sort_keys=False, default=default)
    if allow_nan:
        plain = json.loads(text)  # default= applied; non-finite floats are now Python floats
        text = json.dumps(_nulls_for_non_finite(plain), indent=indent, allow_nan=False, sort_keys=False)
    return atomic_write_text(path, text + "\n")


@contextlib.contextmanager
def atomic_directory(out, *, kind: str = "output", **info) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; when the ``with`` body succeeds, a
    ``repspec-output.json`` manifest listing every file (plus ``kind`` and ``info``) is
    written into it and it is renamed to ``out``. For outputs made of several files
    (reports, exports, the demo's results).

    ``out`` may be missing, an empty directory, or a directory repspec wrote (its manifest
    lists every file in it), which is replaced: it is first renamed aside, then removed. A
    non-empty directory repspec did not write, or a file, raises ``FileExistsError``
    *before* the body runs: nothing of the user's is ever removed (the command line also
    requires ``--overwrite``, see :mod:`repspec.core.outputs`). If the body raises, the temporary
    directory is deleted and ``out`` is left as it was. Directories get 0777 & ~umask.
    """

    out = Path(out)
    if out.is_symlink():
        raise FileExistsError(f"output {str(out)!r} is a symbolic link; refusing to replace it")
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"output {str(out)!r} is an existing file; refusing to replace it")
        if any(out.iterdir()):
            owned, why = owned_directory(out)
            if not owned or why != "output":
                raise FileExistsError(f"output directory {str(out)!r} is refused: "
                                      f"{why if not owned else 'it is a checkpoint'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(out.name), dir=out.parent))
    try:
        normal_mode(tmp, directory=True)
        yield tmp
        for root, dirs, files in os.walk(tmp):  # writers that used mkstemp left 0600 files
            for name in dirs + files:
                p = os.path.join(root, name)
                if not os.path.islink(p):
                    normal_mode(p, directory=name in dirs)
        write_output_manifest(tmp, kind, **info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, out)


def replace_directory(tmp, out) -> None:
    """Rename the finished directory ``tmp`` to ``out``. An existing ``out`` (its owner checked that
    repspec wrote it) is first moved aside, under a name :func:`repspec.core.outputs.sweep_leftovers`
    knows, and removed once ``tmp`` is in its place: a process killed between the two renames
    leaves the old output whole, for the next run to put back. An exception there (Ctrl-C) puts
    the old output back at once and removes ``tmp``: nothing half-replaced, no temporary left."""

    tmp, out = Path(tmp), Path(out)
    old = None
    try:
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=old_prefix(out.name), dir=out.parent))
            os.replace(out, old / "content") if any(out.iterdir()) else out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            if (old / "content").exists() and not out.exists():
                os.replace(old / "content", out)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
