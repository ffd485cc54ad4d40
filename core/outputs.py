"""The output rule: repspec replaces only what repspec itself wrote (standard library only).

Every command-line output goes through :func:`check_output` *before* any work starts
(and before torch is imported). It refuses, with one line (:class:`OutputError`):

- ``.``, the current directory or any directory containing it;
- an input of the command (checkpoint, scales, data) or a directory containing one;
- a symbolic link (replacing it would replace the link, not what it points to);
- an existing file or a non-empty directory that repspec did not write;
- something repspec did write, unless ``overwrite`` (the CLI's ``--overwrite``);
- a place where nothing can be created (read-only directory or file system: probed
  with a real temporary file, because ``os.access`` says yes to root).

"repspec wrote it" means: a checkpoint directory (``checkpoint.json`` manifest, only
checkpoint files inside), an output directory whose ``repspec-output.json`` manifest lists
every file in it, a ``.safetensors`` file whose header metadata names a repspec format,
a JSON file whose top-level ``format`` starts with ``repspec``, or a JUnit XML file whose
``testsuite`` is named ``repspec conformance: …`` (a conformance report). A user's file added to
a repspec output directory makes the directory foreign: it is never removed.

Temporary files and directories are created next to their target with names
``.<name>.repspec-tmp-<pid>-<random>`` (and ``.<name>.repspec-old-<pid>-<random>`` for an
output being replaced), so :func:`sweep_leftovers` can remove those of a killed run
(its process no longer exists) on the next run into the same place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from xml.etree import ElementTree

from .version import __version__

__all__ = ["OutputError", "OUTPUT_MANIFEST", "OUTPUT_FORMAT", "check_output", "sweep_leftovers", "owned_file",
           "owned_directory", "write_output_manifest", "tmp_prefix", "old_prefix", "normal_mode", "read_json_format",
           "safetensors_metadata"]

OUTPUT_MANIFEST = "repspec-output.json"
OUTPUT_FORMAT = "repspec-output"
_CHECKPOINT_MANIFEST = "checkpoint.json"
_CHECKPOINT_FILE = re.compile(r"^(checkpoint\.json|(model|state)-\d{6,}-[0-9a-f]{12}\.safetensors)$")
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.repspec-(?P<what>tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+(\.tmp)?$")


class OutputError(ValueError):
    """An output path the output rule refuses (the message is one line)."""


def tmp_prefix(name: str) -> str:
    """Prefix of a temporary file/directory for target ``name`` (carries this process's id)."""
    return f".{name}.repspec-tmp-{os.getpid()}-"


def old_prefix(name: str) -> str:
    """Prefix under which a replaced output waits for removal."""
    return f".{name}.repspec-old-{os.getpid()}-"


def normal_mode(path, *, directory: bool) -> None:
    """Give ``path`` the permissions of a normally created file (0666) or directory (0777)
    under the current umask: ``mkstemp``/``mkdtemp`` create 0600/0700."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)


# ----------------------------------------------------------------------- recognising repspec's outputs


def safetensors_metadata(path) -> dict | None:
    """The ``__metadata__`` of a safetensors file's JSON header (None if it is not one)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                return None
            header = json.loads(fh.read(n).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def read_json_format(path) -> str | None:
    """The top-level ``format`` string of a JSON file (None if absent or not JSON)."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    fmt = obj.get("format")
    if isinstance(fmt, str):
        return fmt
    if {"adapter", "settings", "ok"} <= set(obj):  # a `repspec verify --json` report
        return "repspec-conformance-report"
    return None


def owned_file(path) -> bool:
    """Whether the file at ``path`` is one repspec wrote (see the module docstring)."""
    p = Path(path)
    if p.is_symlink() or not p.is_file():
        return False
    if p.suffix == ".safetensors":
        meta = safetensors_metadata(p)
        if not meta:
            return False
        if str(meta.get("format", "")).startswith("repspec"):
            return True
        with contextlib.suppress(ValueError, TypeError):
            return str(json.loads(meta.get("repspec", "{}")).get("format", "")).startswith("repspec")
        return False
    if p.suffix == ".json":
        fmt = read_json_format(p)
        return fmt is not None and fmt.startswith("repspec")
    if p.suffix == ".xml":
        return _junit_suite_name(p).startswith("repspec conformance: ")
    return False


def _junit_suite_name(p: Path) -> str:
    """The root ``testsuite``'s name of a small XML file ('' for anything else)."""
    try:
        if p.stat().st_size > 1 << 24:
            return ""
        root = ElementTree.parse(p).getroot()
    except (OSError, ElementTree.ParseError):
        return ""
    return root.get("name", "") if root.tag == "testsuite" else ""


def _all_files(d: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(d, followlinks=False):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(root, x))]:
            out.append(os.path.relpath(os.path.join(root, name), d).replace(os.sep, "/"))
    return sorted(out)


def owned_directory(path) -> tuple[bool, str]:
    """``(True, kind)`` if repspec wrote the directory and nothing else is in it, else ``(False, why)``."""
    d = Path(path)
    ckpt = d / _CHECKPOINT_MANIFEST
    if ckpt.is_file() and read_json_format(ckpt) == "repspec-checkpoint":
        foreign = [n for n in os.listdir(d) if not (_CHECKPOINT_FILE.match(n) or _LEFTOVER.match(n))]
        if foreign:
            return False, f"it holds a repspec checkpoint plus files repspec did not write ({foreign[0]!r})"
        return True, "checkpoint"
    man = d / OUTPUT_MANIFEST
    if not man.is_file() or read_json_format(man) != OUTPUT_FORMAT:
        return False, "it is not empty and repspec did not write it"
    try:
        listed = set(json.loads(man.read_text(encoding="utf-8")).get("files", []))
    except (OSError, ValueError):
        return False, f"its {OUTPUT_MANIFEST} is unreadable"
    extra = [f for f in _all_files(d) if f != OUTPUT_MANIFEST and f not in listed]
    if extra:
        return False, f"it holds files repspec did not write ({extra[0]!r})"
    return True, "output"


def write_output_manifest(d, kind: str, **info) -> Path:
    """Write ``repspec-output.json`` into directory ``d``, listing every file in it."""
    d = Path(d)
    body = {"format": OUTPUT_FORMAT, "kind": kind, "repspec_version": __version__, **info,
            "files": [f for f in _all_files(d) if f != OUTPUT_MANIFEST]}
    p = d / OUTPUT_MANIFEST
    p.write_text(json.dumps(body, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    normal_mode(p, directory=False)
    return p


# ----------------------------------------------------------------------------------- the rule


def _real(p) -> str:
    return os.path.realpath(os.path.abspath(p))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def _probe(directory: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=tmp_prefix("probe"), dir=directory)
    except OSError as exc:
        raise OutputError(f"{what}: cannot create files in {str(directory)!r} ({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def check_output(path, *, option: str = "--out", kind: str, inputs=(), overwrite: bool = False,
                 resume: bool = False) -> Path:
    """Apply the output rule to ``path`` (``kind``: ``"file"``, ``"dir"`` or ``"checkpoint"``).

    ``inputs`` are the command's input paths; ``resume`` accepts an existing checkpoint
    (``train --resume`` continues it in place). Returns ``Path(path)``; raises
    :class:`OutputError` with one line naming ``option`` otherwise. Nothing is written
    except a probe file that is removed at once.
    """
    text = os.fspath(path)
    what = f"{option} {text!r}"
    if text.strip() == "":
        raise OutputError(f"{option} must not be empty")
    p = Path(text)
    if os.path.islink(p):
        raise OutputError(f"{what} is a symbolic link; give the path it points to")
    real = _real(p)
    cwd = _real(".")
    if _inside(cwd, real):
        raise OutputError(f"{what} is the current directory or contains it; choose a new path")
    for inp in inputs:
        if inp is None:
            continue
        ri = _real(inp)
        if real == ri:
            raise OutputError(f"{what} is an input of this command; choose a new path")
        if _inside(ri, real):
            raise OutputError(f"{what} contains the input {os.fspath(inp)!r}; choose a new path")
    if p.exists():
        if kind == "file":
            if p.is_dir():
                raise OutputError(f"{what} is a directory; give a file name")
            if not owned_file(p):
                raise OutputError(f"{what} exists and repspec did not write it; repspec never replaces it")
            if not overwrite:
                raise OutputError(f"{what} exists; pass --overwrite to replace this repspec output")
        else:
            if not p.is_dir():
                raise OutputError(f"{what} is an existing file; give a directory path")
            if any(os.scandir(p)):
                owned, why = owned_directory(p)
                if not owned:
                    raise OutputError(f"{what} is refused: {why}")
                if kind == "dir" and why == "checkpoint":
                    raise OutputError(f"{what} is a checkpoint; only `repspec train --overwrite` replaces one")
                if resume and why != "checkpoint":
                    raise OutputError(f"{what} is a repspec output but not a checkpoint; nothing to resume")
                if not (overwrite or resume):
                    raise OutputError(f"{what} exists; pass --overwrite to replace this repspec {why}"
                                      + (" (or --resume to continue it)" if kind == "checkpoint" else ""))
            if resume or kind == "checkpoint":
                _probe(p, what)
    # the nearest existing ancestor must be a directory we can create things in
    anc = p.absolute().parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{what}: {str(anc)!r} is a file, so nothing can be created below it")
    _probe(anc, what)
    return p


def sweep_leftovers(target, *, own: bool = False) -> list[str]:
    """Remove the temporaries of killed runs next to ``target`` (and inside it, for a
    directory); returns one line per thing removed or left (a live process's).

    ``own`` also removes this process's temporaries (the command line calls it so after an
    interruption, when the work that made them is abandoned); an output this process had
    moved aside to replace it, and not yet replaced, is put back."""
    target = Path(target)
    notes = []
    places = [target.absolute().parent]
    if target.is_dir() and not target.is_symlink():
        places.append(target)
    for place in places:
        if not place.is_dir():
            continue
        for entry in os.scandir(place):
            m = _LEFTOVER.match(entry.name)
            if not m or (place == places[0] and m.group("name") != target.name and m.group("name") != "probe"):
                continue
            pid = int(m.group("pid"))
            if pid == os.getpid():
                alive = not own
            else:
                try:
                    os.kill(pid, 0)
                    alive = True
                except ProcessLookupError:
                    alive = False
                except OSError:
                    alive = True
            if alive:
                notes.append(f"left {entry.path!r}: process {pid} that wrote it is still running")
                continue
            content = os.path.join(entry.path, "content")
            if m.group("what") == "old" and os.path.lexists(content) and not os.path.lexists(target):
                try:  # killed between moving the old output aside and renaming the new one in
                    os.replace(content, target)
                    notes.append(f"restored {str(target)!r} from {entry.path!r}, left by an interrupted run "
                                 f"(process {pid})")
                except OSError as exc:
                    notes.append(f"could not restore {str(target)!r} from {entry.path!r}: {exc.strerror or exc}")
                    continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                notes.append(f"removed {entry.path!r}, left by an interrupted run (process {pid})")
            except OSError as exc:
                notes.append(f"could not remove {entry.path!r} left by an interrupted run: {exc.strerror or exc}")
    return notes
