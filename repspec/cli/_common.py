"""What the ``repspec`` commands share: errors and exit statuses, the argument types, the
options several commands take, the checks made before torch is imported, and the output
rule as the command line applies it (:mod:`repspec.core.outputs` states the rule itself).

Exit statuses: 0 done; 1 a check that ran and said no (``theorem``, ``verify``); 2 a user
error, printed as one line; 130 Ctrl-C; 143 SIGTERM. An interruption (Ctrl-C or SIGTERM)
removes this process's temporaries next to the command's outputs and keeps every complete
output and checkpoint.

Nothing here imports torch: every function runs before a command's handler.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import math
import os
import signal
import sys
from pathlib import Path

from repspec.core.architectures import list_models
from repspec.core.outputs import OutputError, check_output, sweep_leftovers
from repspec.core.runtime import DEFAULT_THREADS

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, as an interrupt: every cleanup that Ctrl-C runs
    (temporaries removed, complete checkpoints kept) runs for it too."""


# ------------------------------------------------------------------ errors and interruptions


def fail(cmd: str, message: str) -> int:
    """Print ``message`` as one line (``repspec CMD: error: ...``) and return exit status 2."""
    line = " ".join(str(message).split())
    print(f"repspec {cmd}: error: {line}", file=sys.stderr)
    return EXIT_USER_ERROR


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the block runs, SIGTERM raises :class:`Terminated` (once: a second SIGTERM during the
    cleanup is ignored, so that the cleanup finishes). Outside the main thread, where Python
    cannot install a handler, SIGTERM keeps its default action."""
    def raise_terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def discard_own_temporaries(targets) -> None:
    """After an interruption: remove this process's temporaries next to (and inside) each target,
    and put back an output that was moved aside to be replaced. The writers clean up after
    themselves; this catches what an interruption at an unlucky instant (between creating a
    temporary and entering the block that removes it) leaves. The removal notes are not
    printed: the interruption's message is the one line."""
    for target in targets:
        if target not in (None, "-"):
            with contextlib.suppress(OSError):
                sweep_leftovers(target, own=True)


def run_guarded(cmd: str, work, targets) -> int:
    """Run ``work()`` and turn what it raises into one line on stderr and an exit status;
    ``targets()`` names the command's outputs (cleaned up after an interruption)."""
    try:
        return work()
    except KeyboardInterrupt as exc:
        discard_own_temporaries(targets())
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"repspec {cmd}: {what}; finished outputs and checkpoints are intact, nothing was left "
              f"half-written", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except (CLIError, OutputError) as e:
        return fail(cmd, str(e))
    except FloatingPointError as e:
        return fail(cmd, f"training diverged ({e}); lower --lr or --momentum")
    except MemoryError:
        return fail(cmd, "out of memory; use a smaller --image-size or --batch-size")
    except OSError as e:
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        return fail(cmd, f"{e.strerror or e}{where}" if e.strerror else str(e))
    except (ValueError, TypeError, KeyError) as e:
        # the library's own validation errors name the argument; show them as one line
        return fail(cmd, str(e.args[0]) if e.args else repr(e))


# ------------------------------------------------------------------------------ the parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where a default exists (not for None or flags)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or action.default in (None, False, argparse.SUPPRESS)
                or not action.option_strings or isinstance(action, argparse._VersionAction)):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        first = str(message).splitlines()[0] if str(message) else "bad arguments"
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {first} (see {self.prog} --help)\n")


def first_positional(argv) -> str | None:
    """The command named on the command line (its first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


# ---------------------------------------------------------------------------- argument types


def int_parser(lo: int, hi: int | None, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{what} must be {rng}, got {value}")
        return value
    parse.__name__ = what
    return parse


parse_bits = int_parser(1, 16, "bits")
parse_positive_int = int_parser(1, None, "a positive integer")
parse_seed = int_parser(0, 2**63 - 1, "seed")
#: largest --image-size: the bundled digits are 8x8 and the CIFAR images 32x32; beyond 1024
#: the data set alone needs tens of GB (the memory check below refuses smaller sizes too)
MAX_IMAGE_SIZE = 1024
parse_image_size = int_parser(1, MAX_IMAGE_SIZE, "image size")


def parse_nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def parse_positive_float(text: str) -> float:
    value = parse_nonneg_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def parse_momentum(text: str) -> float:
    value = parse_nonneg_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"momentum must be in [0, 1), got {text} (>= 1 makes SGD diverge)")
    return value


def parse_threshold(text: str) -> float:
    if text.lower() in ("inf", "infinity"):
        return float("inf")
    return parse_positive_float(text)


# ---------------------------------------------------------------- options of several commands

DATASETS = ("digits", "cifar10", "cifar100", "folder")

CHECKPOINT_HELP = ("checkpoint directory written by `repspec train`, or a .pth/.pt checkpoint of the original "
                   "RepVGG/RepOptimizers/YOLOv6 code with --model (read with weights_only=True)")
MODEL_HELP = ("the registry architecture of a .pth/.pt --checkpoint, e.g. repvgg_a0 (`repspec list-models`); "
              "a repspec checkpoint records its own")


def add_data_args(p, *, from_checkpoint: bool = False) -> None:
    g = p.add_argument_group("data" + (" (taken from the checkpoint; a flag that contradicts it is refused. A "
                                       ".pth/.pt records none: give --dataset)" if from_checkpoint else ""))
    g.add_argument("--dataset", default=None if from_checkpoint else "digits", choices=DATASETS,
                   help="digits: scikit-learn's bundled handwritten digits (no download); "
                        "cifar10/cifar100: the *binary* distribution in --data-dir; folder: class sub-folders")
    g.add_argument("--data-dir", default=None,
                   help="directory of cifar10/cifar100/folder data" + (
                       " (default: the one the checkpoint recorded; another one must hold the same data)"
                       if from_checkpoint else ""))
    g.add_argument("--image-size", type=parse_image_size, default=None,
                   help=f"input resolution, 1..{MAX_IMAGE_SIZE} (default: digits 16, cifar 32, folder 32)")
    g.add_argument("--seed", type=parse_seed, default=None if from_checkpoint else 0,
                   help="seed of the train/test split, the shuffling and the initialization")


def add_batch_arg(p) -> None:
    p.add_argument("--batch-size", type=parse_positive_int, default=64, help="mini-batch size")


def add_runtime_args(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=parse_positive_int, default=DEFAULT_THREADS,
                   help="torch CPU threads (one default for every command and the demo: runs are bit-identical "
                        "only at the same thread count)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_overwrite_arg(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if repspec wrote it (never a file or directory repspec did not write)")


def add_sgd_args(p, *, lr: float | None = 0.1, epochs: int | None = 10, momentum: float | None = 0.9,
                 weight_decay: float | None = 1e-4, nesterov: bool = True, note: str = "") -> None:
    g = p.add_argument_group("optimization" + note)
    g.add_argument("--epochs", type=parse_positive_int, default=epochs, help="training epochs")
    g.add_argument("--lr", type=parse_positive_float, default=lr, help="learning rate (cosine schedule for train)")
    g.add_argument("--momentum", type=parse_momentum, default=momentum, help="SGD momentum, in [0, 1)")
    g.add_argument("--weight-decay", type=parse_nonneg_float, default=weight_decay, help="SGD weight decay")
    if nesterov:
        g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")


# ------------------------------------------------------------ checks before torch is imported


def check_common(args) -> None:
    """The checks of options several commands share: ``--device`` and a ``--model`` name."""
    if hasattr(args, "device") and not (args.device == "cpu" or args.device == "cuda"
                                        or (args.device.startswith("cuda:") and args.device[5:].isdigit())):
        raise CLIError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if getattr(args, "model", None) is not None:
        check_model_name(args.model)


def check_model_name(name: str) -> None:
    names = list_models()
    if name not in names:
        raise CLIError(f"unknown model {name!r}; choose one of: {', '.join(names)}")


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_data_args(args) -> None:
    """--dataset/--data-dir/--image-size of a command that loads data itself (train, hypersearch)."""
    if args.dataset in ("cifar10", "cifar100", "folder"):
        if args.data_dir is None:
            raise CLIError(f"--dataset {args.dataset} needs --data-dir")
        if not Path(args.data_dir).is_dir():
            raise CLIError(f"--data-dir {args.data_dir!r} is not a directory")
        if args.dataset != "folder" and args.image_size not in (None, 32):
            raise CLIError(f"--image-size: {args.dataset} images are 32x32, got {args.image_size}")
    elif args.data_dir is not None:
        raise CLIError("--data-dir applies to cifar10/cifar100/folder; digits are bundled with scikit-learn")
    check_image_memory(args.dataset, args.image_size)


def check_image_memory(dataset: str, size: int | None) -> None:
    if dataset != "digits" or size is None:
        return
    need = 1797 * size * size * 20  # float64 upscaling + the 3-channel float32 copy
    mem = physical_memory()
    if mem is not None and need > mem // 2:
        raise CLIError(f"--image-size {size}: the digits data alone would need {need / 2**30:.1f} GiB at that size "
                       f"(this machine has {mem / 2**30:.1f} GiB); the images are 8x8, use 8..64")


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require_modules(what: str, *names: str) -> None:
    missing = [n for n in names if not module_available(n)]
    if missing:
        raise CLIError(f"{what} needs {', '.join(missing)}, which is not installed: pip install 'repspec[onnx]'")


# ------------------------------------------------------------------------- the output rule


def check_out(args, kind: str, inputs=(), *, resume: bool = False) -> None:
    """The output rule for ``--out`` (``kind``: ``file``, ``dir`` or ``checkpoint``), with ``--overwrite``."""
    check_output(args.out, kind=kind, inputs=inputs, overwrite=args.overwrite, resume=resume)


def sweep(cmd: str, targets) -> None:
    """Remove the temporaries that killed runs left next to the outputs (saying so, one line each)."""
    for target in targets:
        if target in (None, "-"):
            continue
        for note in sweep_leftovers(target):
            print(f"repspec {cmd}: {note}", file=sys.stderr)


def make_parents(paths) -> None:
    """A new file's missing parent directories are made before the work, not after it."""
    for path in paths:
        if path not in (None, "-"):
            Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------ values the handlers write


def json_clean(obj):
    """NaN/Inf -> None (JSON null), NumPy/tensor values -> Python numbers and lists, recursively."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return json_clean(obj.tolist())
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def decode_float(v):
    """A float a checkpoint manifest stores as ``{"__float__": "inf"}`` (JSON has no literal for it)."""
    return float(v["__float__"]) if isinstance(v, dict) and set(v) == {"__float__"} else v


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
