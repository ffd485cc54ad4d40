"""The ``repspec`` command line.

Sub-commands (``repspec <command> --help`` for each):

- ``demo``        the main job: on scikit-learn's bundled digits, why RepVGG quantizes
                  badly and how RepOpt-VGG, QARepVGG, OABN and ClusterQAT fix it.
- ``theorem``     the float64 reference demonstration of the RepOpt theorem (SPEC §3).
- ``train``       train a registry model (SGD, or RepOptimizer for ``repopt_vgg_*``).
- ``hypersearch`` train a HyperSearch model and save its scales (SPEC §3).
- ``quantize``    ``ptq`` | ``qat`` | ``clusterqat`` a trained checkpoint (SPEC §5).
- ``analyze``     the merged-weight outlier report of a checkpoint (SPEC §2/§5).
- ``convert``     the deploy form (plain conv network) of a checkpoint, with the metadata
                  needed to rebuild it (``--onnx FILE``: also as FP32 ONNX).
- ``evaluate``    accuracy of a checkpoint, a deploy file or a quantized export on the
                  checkpoint's own dataset.
- ``verify``      the conformance suite against an implementation (per-clause report);
                  ``verify --onnx FILE``: does an ONNX file implement the fused network it claims?

``quantize``, ``analyze``, ``convert`` and ``evaluate`` also take a checkpoint of the original
code: ``--checkpoint X.pth --model NAME`` (read with ``weights_only=True``, loaded strictly).

Every argument and every output path is checked before torch is imported or data is
loaded (:mod:`repspec.core.outputs` states the output rule: repspec replaces only what it
wrote, and only with ``--overwrite``). Errors print one line and exit with status 2;
Ctrl-C exits with 130; outputs are written next to their target and renamed in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from repspec.core.version import __version__
from repspec.core.outputs import OUTPUT_MANIFEST, OutputError, check_output, read_json_format, safetensors_metadata, \
    sweep_leftovers
from repspec.core.runtime import DEFAULT_THREADS
from repspec.core.vocabulary import CALIBRATORS

__all__ = ["main", "theorem_demo", "build_parser", "CLIError"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------ reference theorem


def theorem_demo(*, seed: int = 0, iterations: int = 10, channels: int = 4, size: int = 6, batch: int = 4,
                 lr: float = 0.05, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 1e-3,
                 out=None) -> float:
    """Train CSLA+SGD and target+RepOpt-SGD side by side in the float64 reference.

    Prints, per iteration, both losses and ``max |α3·K3 + α1·pad(K1) + diag(d)·I − W'|``
    over every block, and returns the largest deviation seen (loss or kernel).
    """
    import numpy as np

    from repspec.reference.network import Network, train
    from repspec.reference.optim import SGD
    from repspec.reference.repopt import CSLABlock, RepOptTargetBlock, csla_equivalent_kernel, grad_mult_mask

    out = sys.stdout if out is None else out
    rng = np.random.default_rng(seed)
    # stage0 changes width and stride (no identity); block 1 keeps both (identity, trainable d)
    shapes = [(3, channels, 2), (channels, channels, 1)]
    scales = [(rng.uniform(0.5, 1.5, size=o), rng.uniform(0.5, 1.5, size=o)) for _, o, _ in shapes]
    prefixes = ["stage0", "stage1.0"]
    csla = Network(tuple((p, CSLABlock(i, o, s, scale_conv=a3, scale_1x1=a1))
                         for p, (i, o, s), (a3, a1) in zip(prefixes, shapes, scales)), num_classes=3)
    target = Network(tuple((p, RepOptTargetBlock(i, o, s)) for p, (i, o, s) in zip(prefixes, shapes)),
                     num_classes=3)
    csla_params, csla_buffers = csla.init(rng)

    def kernel_of(params, prefix):
        return csla_equivalent_kernel(params[f"{prefix}.conv.weight"], params[f"{prefix}.conv_1x1.weight"],
                                      params[f"{prefix}.scale_conv.weight"], params[f"{prefix}.scale_1x1.weight"],
                                      params.get(f"{prefix}.scale_identity.weight"))

    # W'_0: the target starts from the CSLA block's equivalent kernel; BN and head shared
    target_params = {k: v.copy() for k, v in csla_params.items()
                     if not any(k.startswith(p + ".") for p in prefixes) or ".bn." in k}
    masks = {}
    for p, (i, o, s) in zip(prefixes, shapes):
        target_params[f"{p}.conv.weight"] = kernel_of(csla_params, p)
        identity = "trainable" if (i == o and s == 1) else "none"
        masks[f"{p}.conv.weight"] = grad_mult_mask(csla_params[f"{p}.scale_conv.weight"],
                                                   csla_params[f"{p}.scale_1x1.weight"], i, identity=identity)
    target_buffers = {k: v.copy() for k, v in csla_buffers.items()}

    batches = [(rng.normal(size=(batch, 3, size, size)), rng.integers(0, 3, size=batch)) for _ in range(3)]
    hp = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    rec_csla = train(csla, csla_params, csla_buffers, SGD(**hp), batches, iterations)
    rec_target = train(target, target_params, target_buffers, SGD(**hp, grad_mult_masks=masks), batches, iterations)

    print("SPEC §3 theorem: CSLA blocks + SGD  ==  plain conv + RepOpt-SGD (Grad Mult), float64 reference",
          file=out)
    print(f"seed={seed} lr={lr} momentum={momentum} nesterov={nesterov} weight_decay={weight_decay}", file=out)
    print(f"{'iter':>4}  {'loss CSLA+SGD':>16}  {'loss RepOpt-SGD':>16}  {'max |W_csla - W_target|':>24}", file=out)
    worst = 0.0
    for a, b in zip(rec_csla, rec_target):
        dev = max(float(np.max(np.abs(kernel_of(a.params, p) - b.params[f"{p}.conv.weight"]))) for p in prefixes)
        worst = max(worst, dev, abs(a.loss - b.loss))
        print(f"{a.iteration:>4}  {a.loss:>16.12f}  {b.loss:>16.12f}  {dev:>24.3e}", file=out)
    print(f"largest deviation over {iterations} iterations: {worst:.3e} (float64 round-off)", file=out)
    return worst


# ------------------------------------------------------------------------ arguments


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where a default exists (not for None or flags)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or action.default in (None, False, argparse.SUPPRESS)
                or not action.option_strings or isinstance(action, argparse._VersionAction)):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        first = str(message).splitlines()[0] if str(message) else "bad arguments"
        self.exit(2, f"{self.prog}: error: {first} (see {self.prog} --help)\n")


def _int_in(lo: int, hi: int | None, what: str):
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


_bits = _int_in(1, 16, "bits")
_positive_int = _int_in(1, None, "a positive integer")
_seed = _int_in(0, 2**63 - 1, "seed")
#: largest --image-size: the bundled digits are 8x8 and the CIFAR images 32x32; beyond 1024
#: the data set alone needs tens of GB (the memory check below refuses smaller sizes too)
MAX_IMAGE_SIZE = 1024
_image_size = _int_in(1, MAX_IMAGE_SIZE, "image size")


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _nonneg_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def _momentum(text: str) -> float:
    value = _nonneg_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"momentum must be in [0, 1), got {text} (>= 1 makes SGD diverge)")
    return value


def _threshold(text: str) -> float:
    if text.lower() in ("inf", "infinity"):
        return float("inf")
    return _positive_float(text)


DATASETS = ("digits", "cifar10", "cifar100", "folder")


_CHECKPOINT_HELP = ("checkpoint directory written by `repspec train`, or a .pth/.pt checkpoint of the original "
                    "RepVGG/RepOptimizers/YOLOv6 code with --model (read with weights_only=True)")
_MODEL_HELP = ("the registry architecture of a .pth/.pt --checkpoint, e.g. repvgg_a0 (`repspec list-models`); "
               "a repspec checkpoint records its own")


def _add_data_args(p, *, from_checkpoint: bool = False) -> None:
    g = p.add_argument_group("data" + (" (taken from the checkpoint; a flag that contradicts it is refused. A "
                                       ".pth/.pt records none: give --dataset)" if from_checkpoint else ""))
    g.add_argument("--dataset", default=None if from_checkpoint else "digits", choices=DATASETS,
                   help="digits: scikit-learn's bundled handwritten digits (no download); "
                        "cifar10/cifar100: the *binary* distribution in --data-dir; folder: class sub-folders")
    g.add_argument("--data-dir", default=None,
                   help="directory of cifar10/cifar100/folder data" + (
                       " (default: the one the checkpoint recorded; another one must hold the same data)"
                       if from_checkpoint else ""))
    g.add_argument("--image-size", type=_image_size, default=None,
                   help=f"input resolution, 1..{MAX_IMAGE_SIZE} (default: digits 16, cifar 32, folder 32)")
    g.add_argument("--seed", type=_seed, default=None if from_checkpoint else 0,
                   help="seed of the train/test split, the shuffling and the initialization")


def _add_batch_arg(p) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=64, help="mini-batch size")


def _add_runtime_args(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=_positive_int, default=DEFAULT_THREADS,
                   help="torch CPU threads (one default for every command and the demo: runs are bit-identical "
                        "only at the same thread count)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_overwrite_arg(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if repspec wrote it (never a file or directory repspec did not write)")


def _add_sgd_args(p, *, lr: float | None = 0.1, epochs: int | None = 10, momentum: float | None = 0.9,
                  weight_decay: float | None = 1e-4, nesterov: bool = True, note: str = "") -> None:
    g = p.add_argument_group("optimization" + note)
    g.add_argument("--epochs", type=_positive_int, default=epochs, help="training epochs")
    g.add_argument("--lr", type=_positive_float, default=lr, help="learning rate (cosine schedule for train)")
    g.add_argument("--momentum", type=_momentum, default=momentum, help="SGD momentum, in [0, 1)")
    g.add_argument("--weight-decay", type=_nonneg_float, default=weight_decay, help="SGD weight decay")
    if nesterov:
        g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")


def _demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="the main job on the embedded digits data (table + JSON + PNG plots)")
    demo.add_argument("--quick", action="store_true", help="a smaller run (< 2 minutes on 2 CPU cores)")
    demo.add_argument("--out", default="runs/demo", help="output directory")
    demo.add_argument("--seed", type=_seed, default=0,
                      help="first seed: seed of the split, the shuffling and the initialization")
    _add_overwrite_arg(demo)
    demo.add_argument("--seeds", type=_positive_int, default=None,
                      help="number of seeds (seed, seed+1, ...; default 5, --quick 3); cells are mean ± sd")
    demo.add_argument("--dataset", default="digits", choices=["digits", "digits_variations", "cifar10"],
                      help="digits (default), digits_variations (harder, offline) or cifar10 (binary files "
                           "in --data-dir)")
    demo.add_argument("--data-dir", default=None, help="directory holding cifar-10-batches-bin/ (cifar10)")
    demo.add_argument("--render", default=None, metavar="RESULTS_JSON",
                      help="only re-render table.md/claims.md/readme_section.md from an existing results.json")
    _add_runtime_args(demo)


def _wants_onnx(argv) -> bool:
    return any(a == "--onnx" or a.startswith("--onnx=") for a in argv)


def _verify_parser(sub, load: bool) -> None:
    vf = sub.add_parser("verify", help="run the conformance suite and print a per-clause report (docs/porting.md); "
                                       "or, with --onnx, check an exported ONNX file")
    vf.set_defaults(_verify_loaded=False)
    g = vf.add_argument_group("ONNX (instead of the conformance suite; needs onnx and onnxruntime, not Hypothesis)")
    g.add_argument("--onnx", default=None, metavar="FILE",
                   help="check that FILE is a fused RepVGG-family network and implements the architecture it claims "
                        "(--model, or the file's repspec.model metadata), running it in onnxruntime; exit 0 if it "
                        "does, 1 if not")
    g.add_argument("--model", default=None, help="the registry architecture FILE claims to be (`repspec list-models`)")
    g.add_argument("--reference", default=None, metavar="SOURCE",
                   help="also require FILE's weights and logits to be those of SOURCE: a checkpoint directory, a "
                        "`repspec convert` file, a `repspec quantize` output, or a .pth/.pt with --model (without "
                        "it, only the architecture is checked: any weights pass)")
    if not load:
        return
    from repspec.conformance.runner import add_arguments  # needs Hypothesis: main() checks it first

    add_arguments(vf)
    if not any("--overwrite" in a.option_strings for a in vf._actions):
        vf.add_argument("--overwrite", action="store_true", help="replace the --json file if repspec wrote it")
    vf.set_defaults(_verify_loaded=True)


def _verify_unavailable() -> str | None:
    """Why ``verify`` cannot run here (the conformance runner needs the `test` extra), or None."""
    try:
        import repspec.conformance.runner  # noqa: F401
    except ImportError as exc:
        return f"repspec verify needs {getattr(exc, 'name', None) or exc}, which is not installed: " \
               f"pip install 'repspec[test]'"
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. The ``verify`` options come from the conformance runner, which
    imports Hypothesis, so they are added only when ``argv`` runs ``verify``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(prog="repspec", description="repspec: RepVGG-family re-parameterization, "
                     "executable spec and PyTorch implementation")
    parser.add_argument("--version", action="version", version=f"repspec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _demo_parser(sub)

    th = sub.add_parser("theorem", help="float64 reference demonstration of the RepOpt theorem (SPEC §3)")
    th.add_argument("--seed", type=_seed, default=0, help="seed of the random blocks, scales and batches")
    th.add_argument("--iterations", type=_positive_int, default=10, help="training iterations to compare")

    tr = sub.add_parser("train", help="train a registry model and save a checkpoint")
    tr.add_argument("--model", required=True, help="registry name, e.g. repvgg_tiny8 (`repspec list-models`)")
    tr.add_argument("--oabn-threshold", type=_threshold, default=None, help="OABN threshold s for *_oabn models")
    tr.add_argument("--scales", default=None, help="HyperSearch scales (.safetensors/.json/.pth) for repopt_vgg_*")
    tr.add_argument("--out", required=True, help="checkpoint directory (new, empty, or with --overwrite/--resume)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the checkpoint in --out with the same arguments; a larger --epochs extends a "
                         "finished run (its added epochs follow a new cosine cycle from --lr)")
    tr.add_argument("--allow-nonidentical-resume", action="store_true",
                    help="resume although threads, torch version or device differ from the checkpoint's "
                         "(the result is then not bit-identical to an uninterrupted run)")
    _add_overwrite_arg(tr)
    _add_data_args(tr)
    _add_batch_arg(tr)
    _add_sgd_args(tr)
    _add_runtime_args(tr)

    hs = sub.add_parser("hypersearch", help="train a HyperSearch model and save its scales (SPEC §3)")
    hs.add_argument("--model", default="hs_vgg_tiny8", help="an hs_vgg_* registry name (`repspec list-models`)")
    hs.add_argument("--out", required=True, help="scales file (.safetensors or .json)")
    _add_overwrite_arg(hs)
    _add_data_args(hs)
    _add_batch_arg(hs)
    _add_sgd_args(hs, epochs=5)
    _add_runtime_args(hs)

    qz = sub.add_parser("quantize", help="quantize a trained checkpoint: ptq | qat | clusterqat (SPEC §5)")
    qz.add_argument("method", choices=["ptq", "qat", "clusterqat"], help="the quantization method")
    qz.add_argument("--checkpoint", required=True, help=_CHECKPOINT_HELP)
    qz.add_argument("--model", default=None, help=_MODEL_HELP)
    qz.add_argument("--bits", type=_bits, default=8, help="weight bits (1..16; uniform weights need >= 2)")
    qz.add_argument("--act-bits", type=_bits, default=8, help="activation bits (1..16)")
    qz.add_argument("--calibrator", default="minmax",
                    choices=CALIBRATORS,
                    help="activation-range calibrator (ptq; for qat/clusterqat it sets the initial ranges)")
    qz.add_argument("--calib-batches", type=_positive_int, default=8, help="calibration batches")
    qz.add_argument("--per-channel", action="store_true",
                    help="per-output-channel weight scales (ptq, qat; refused for clusterqat)")
    qz.add_argument("--update-every", type=_positive_int, default=None,
                    help="ClusterQAT centroid refit period in steps (clusterqat only; default 10)")
    qz.add_argument("--out", required=True, help="output directory (metrics.json, export.safetensors)")
    qz.add_argument("--onnx", action="store_true",
                    help="also write OUT/model.onnx: the quantized deploy network as a standard QDQ graph "
                         "(int8 weights per tensor/channel, int32 bias; clusterqat: uint8 indices -> Gather from "
                         "the codebook); needs --act-bits 8, --bits <= 8 and the onnx package")
    _add_overwrite_arg(qz)
    _add_data_args(qz, from_checkpoint=True)
    _add_batch_arg(qz)
    # frozen-BN fine-tuning diverges at 1e-2 (docs/07-qat.md)
    _add_sgd_args(qz, lr=None, epochs=None, momentum=None, weight_decay=None, nesterov=False,
                  note=" (qat and clusterqat only; defaults: --epochs 3 --lr 1e-4 --momentum 0.9 "
                       "--weight-decay 1e-4)")
    _add_runtime_args(qz)

    an = sub.add_parser("analyze", help="merged-weight outlier report (table, JSON, PNG histograms)")
    an.add_argument("--checkpoint", required=True, help=_CHECKPOINT_HELP)
    an.add_argument("--model", default=None, help=_MODEL_HELP)
    an.add_argument("--out", required=True, help="output directory")
    _add_overwrite_arg(an)
    _add_runtime_args(an)

    cv = sub.add_parser("convert", help="the deploy form (plain conv + ReLU) of a checkpoint, as .safetensors "
                                        "with the metadata to rebuild it (quantized exports: `repspec quantize`)")
    cv.add_argument("--checkpoint", required=True, help=_CHECKPOINT_HELP)
    cv.add_argument("--model", default=None, help=_MODEL_HELP)
    cv.add_argument("--out", required=True, help="deploy weights (.safetensors)")
    cv.add_argument("--onnx", default=None, metavar="FILE",
                    help="also write the deploy network as FP32 ONNX to FILE (.onnx; needs the onnx package)")
    _add_overwrite_arg(cv)
    _add_runtime_args(cv)

    ev = sub.add_parser("evaluate", help="test accuracy of a checkpoint, a deploy .safetensors or a quantized "
                                         "export, on the dataset the checkpoint was trained on")
    ev.add_argument("source", nargs="?", default=None,
                    help="a checkpoint directory, a `repspec convert` file, a `repspec quantize` output directory or "
                         "its export.safetensors, or an original-code .pth/.pt with --model")
    ev.add_argument("--checkpoint", default=None, help="the same as SOURCE (give one of them)")
    ev.add_argument("--model", default=None, help=_MODEL_HELP)
    g = ev.add_argument_group("data (taken from the source where it records them; a flag that contradicts it is "
                              "refused. A .pth/.pt or a file converted from one records none: give --dataset)")
    g.add_argument("--dataset", default=None, choices=DATASETS, help="the dataset to evaluate on")
    g.add_argument("--data-dir", default=None,
                   help="directory of cifar10/cifar100/folder data (for a recorded dataset: where it now is; it "
                        "must be the same data)")
    g.add_argument("--image-size", type=_image_size, default=None,
                   help=f"input resolution, 1..{MAX_IMAGE_SIZE} (default: digits 16, cifar 32, folder 32)")
    g.add_argument("--seed", type=_seed, default=None, help="seed of the train/test split (default 0)")
    _add_batch_arg(ev)
    _add_runtime_args(ev)

    want_verify = next((a for a in argv if not a.startswith("-")), None) == "verify" and not _wants_onnx(argv)
    _verify_parser(sub, want_verify)

    sub.add_parser("list-models", help="the registry's model names")
    return parser


# ------------------------------------------------------ checks before torch is imported


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_data_args(args) -> None:
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
    _check_image_memory(args.dataset, args.image_size)


def _check_image_memory(dataset: str, size: int | None) -> None:
    if dataset != "digits" or size is None:
        return
    need = 1797 * size * size * 20  # float64 upscaling + the 3-channel float32 copy
    mem = _physical_memory()
    if mem is not None and need > mem // 2:
        raise CLIError(f"--image-size {size}: the digits data alone would need {need / 2**30:.1f} GiB at that size "
                       f"(this machine has {mem / 2**30:.1f} GiB); the images are 8x8, use 8..64")


def _read_checkpoint(path, option: str = "--checkpoint") -> dict:
    """The manifest of a `repspec train` checkpoint directory (JSON only, no torch)."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{option} {str(path)!r} does not exist")
    if not p.is_dir():
        raise CLIError(f"{option} {str(path)!r} is a file, not a checkpoint directory")
    man = p / "checkpoint.json"
    if not man.is_file() or read_json_format(man) != "repspec-checkpoint":
        raise CLIError(f"{option} {str(path)!r} is not a repspec checkpoint (no valid checkpoint.json)")
    manifest = json.loads(man.read_text(encoding="utf-8"))
    extra = manifest.get("extra") or {}
    if not isinstance(extra, dict) or "model" not in extra:
        raise CLIError(f"{option} {str(path)!r} was not written by `repspec train` (no model name recorded)")
    return manifest


def _data_settings(extra: dict) -> dict:
    """How to reload a checkpoint's data: recorded by `repspec train` (older checkpoints: rebuilt
    from their run configuration and dataset record)."""
    if isinstance(extra.get("data"), dict):
        return dict(extra["data"])
    run, ds = extra.get("run") or {}, extra.get("dataset") or {}
    size = ds.get("image_size") or [run.get("image_size")]
    return {"dataset": run.get("dataset", ds.get("name")), "data_dir": None, "image_size": size[0],
            "seed": run.get("seed", ds.get("split_seed")), "num_classes": extra.get("num_classes"),
            "mean": ds.get("mean"), "std": ds.get("std"), "train_size": ds.get("train_size"),
            "test_size": ds.get("test_size"), "classes": ds.get("classes")}


def _check_data_flags_match(args, data: dict, source: str) -> None:
    """A command that reads a checkpoint uses its data settings; a flag may only repeat them."""
    for flag, key in (("dataset", "dataset"), ("image_size", "image_size"), ("seed", "seed")):
        given = getattr(args, flag, None)
        if given is not None and given != data.get(key):
            raise CLIError(f"--{flag.replace('_', '-')} {given} contradicts {source}, which was trained with "
                           f"{key.replace('_', ' ')} {data.get(key)!r} (the data settings come from the checkpoint)")
    if getattr(args, "data_dir", None) is not None:
        if data.get("dataset") == "digits":
            raise CLIError("--data-dir: the checkpoint was trained on the bundled digits, which need no data directory")
        if not Path(args.data_dir).is_dir():
            raise CLIError(f"--data-dir {args.data_dir!r} is not a directory")


def _data_dir_of(args, data: dict):
    root = getattr(args, "data_dir", None) or data.get("data_dir")
    if data.get("dataset") != "digits" and (root is None or not Path(root).is_dir()):
        raise CLIError(f"the checkpoint's {data.get('dataset')} data directory {root!r} is gone; "
                       f"give --data-dir with the same data")
    return root


class Source:
    """A model argument resolved without torch: ``kind`` is ``checkpoint``, ``deploy``,
    ``quantized`` or ``official`` (a ``.pth``/``.pt`` of the original code, with ``--model``);
    ``data`` the data settings to evaluate it on (None where the source records none);
    ``meta`` what rebuilds it; ``model_name`` the registry name (None if unknown)."""

    def __init__(self, kind: str, path: Path, data: dict | None, meta: dict, describe: str,
                 model_name: str | None = None):
        self.kind, self.path, self.data, self.meta, self.describe = kind, path, data, meta, describe
        self.model_name = model_name


#: file suffixes of original-code checkpoints (read with torch.load(weights_only=True), never unpickled)
OFFICIAL_SUFFIXES = (".pth", ".pt")


def _resolve_source(path, option: str = "--checkpoint", kinds=("checkpoint",), model: str | None = None) -> Source:
    """Turn "a checkpoint argument" into a :class:`Source` (JSON and headers only, no torch)."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{option} {str(path)!r} does not exist")
    if p.is_file() and p.suffix.lower() in OFFICIAL_SUFFIXES and "official" in kinds:
        if model is None:
            raise CLIError(f"{option} {str(path)!r} is a {p.suffix} checkpoint of the original code; name its "
                           f"architecture with --model NAME (`repspec list-models`)")
        return Source("official", p, None, {"model": model}, f"original-code checkpoint {str(p)!r} ({model})", model)
    if model is not None:
        raise CLIError(f"--model applies to original-code .pth/.pt checkpoints; {option} {str(path)!r} is not one "
                       f"(a repspec checkpoint or file records its own model)")
    if p.is_dir() and (p / OUTPUT_MANIFEST).is_file() and "quantized" in kinds:
        p = p / "export.safetensors"
    if p.is_dir() or "checkpoint" in kinds and not p.suffix == ".safetensors":
        manifest = _read_checkpoint(p, option)
        extra = manifest["extra"]
        return Source("checkpoint", p, _data_settings(extra), {"manifest": manifest},
                      f"checkpoint {str(p)!r} ({extra['model']})", extra["model"])
    if p.suffix != ".safetensors" or not p.is_file():
        raise CLIError(f"{option} {str(path)!r} is not a checkpoint directory or a repspec .safetensors file")
    meta = safetensors_metadata(p)
    if not meta:
        raise CLIError(f"{option} {str(path)!r} is not a valid safetensors file")
    if meta.get("format") == "repspec-deploy" and "deploy" in kinds:
        info = json.loads(meta.get("repspec", "{}"))
        return Source("deploy", p, info.get("data"), info, f"deploy file {str(p)!r} ({info.get('model')})",
                      info.get("model"))
    if "repspec" in meta and "quantized" in kinds:
        try:
            info = json.loads(meta["repspec"])
        except ValueError:
            info = {}
        if info.get("format") == "repspec-quantized":
            man = p.parent / OUTPUT_MANIFEST
            data = None
            if man.is_file() and read_json_format(man) == "repspec-output":
                data = json.loads(man.read_text(encoding="utf-8")).get("data")
            if data is None:
                raise CLIError(f"{option} {str(path)!r}: the quantized export has no {OUTPUT_MANIFEST} next to it "
                               f"recording its dataset (keep the `repspec quantize` output directory together)")
            return Source("quantized", p, data, info, f"quantized export {str(p)!r}", info.get("model"))
    raise CLIError(f"{option} {str(path)!r} is a safetensors file without repspec metadata "
                   f"(old `repspec convert` files lack it: convert the checkpoint again)")


_CMD_OUTPUT = {"train": "checkpoint", "hypersearch": "file", "quantize": "dir", "analyze": "dir", "convert": "file",
               "demo": "dir"}


def _check_args(args) -> None:
    """Every argument and output path, before torch is imported or data is loaded."""
    cmd = args.command
    inputs: list = []
    if hasattr(args, "device") and not (args.device == "cpu" or args.device == "cuda"
                                        or (args.device.startswith("cuda:") and args.device[5:].isdigit())):
        raise CLIError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if getattr(args, "model", None) is not None:
        _check_model_name(args.model)
    if cmd in ("train", "hypersearch"):
        _check_data_args(args)
        inputs.append(args.data_dir)
    if cmd == "train":
        if args.resume and args.overwrite:
            raise CLIError("--resume continues the checkpoint in --out and --overwrite replaces it; give one")
        if args.allow_nonidentical_resume and not args.resume:
            raise CLIError("--allow-nonidentical-resume applies with --resume only")
        is_repopt = args.model.startswith("repopt_vgg_")
        if args.scales is not None:
            if not is_repopt:
                raise CLIError("--scales applies to repopt_vgg_* models only")
            if not Path(args.scales).is_file():
                raise CLIError(f"--scales {args.scales!r} is not a file")
            inputs.append(args.scales)
        elif is_repopt:
            raise CLIError("repopt_vgg_* models need --scales (run `repspec hypersearch` first)")
        if args.oabn_threshold is not None and "oabn" not in args.model:
            raise CLIError("--oabn-threshold applies to *_oabn models only")
        if args.resume and not (Path(args.out) / "checkpoint.json").is_file():
            raise CLIError(f"--resume: no checkpoint at {args.out!r}")
    if cmd == "hypersearch":
        if not args.model.startswith("hs_vgg_"):
            raise CLIError(f"--model must be a hs_vgg_* model, got {args.model!r}")
        if Path(args.out).suffix not in (".safetensors", ".json"):
            raise CLIError(f"--out must end in .safetensors or .json, got {args.out!r}")
    if cmd == "convert" and Path(args.out).suffix != ".safetensors":
        raise CLIError(f"--out must end in .safetensors, got {args.out!r}")
    if cmd in ("quantize", "analyze", "convert"):
        if cmd == "quantize":
            _check_quantize_options(args)
        args.source = _resolve_source(args.checkpoint, kinds=("checkpoint", "official"), model=args.model)
        inputs.append(args.checkpoint)
        if cmd == "quantize":
            if args.source.data is None:
                args.source.data = _explicit_data(args, args.source.describe)
            else:
                _check_data_flags_match(args, args.source.data, f"checkpoint {args.checkpoint!r}")
            inputs.append(args.data_dir)
    if cmd == "evaluate":
        if (args.source is None) == (args.checkpoint is None):
            raise CLIError("give the model to evaluate once: as SOURCE or as --checkpoint")
        option = "SOURCE" if args.checkpoint is None else "--checkpoint"
        args.source = _resolve_source(args.source or args.checkpoint, option,
                                      kinds=("checkpoint", "deploy", "quantized", "official"), model=args.model)
        if args.source.data is None:
            args.source.data = _explicit_data(args, args.source.describe)
        else:
            _check_data_flags_match(args, args.source.data, args.source.describe)
    if cmd in ("convert", "quantize") and args.onnx:
        _check_onnx_export(args, inputs)
    if cmd == "verify" and args.onnx is not None:
        _check_onnx_input(args.onnx)
        if args.reference is not None:
            official = Path(args.reference).suffix.lower() in OFFICIAL_SUFFIXES
            args.reference = _resolve_source(args.reference, "--reference",
                                             kinds=("checkpoint", "deploy", "quantized", "official"),
                                             model=args.model if official else None)
    elif cmd == "verify" and getattr(args, "reference", None) is not None:
        raise CLIError("--reference applies with --onnx")
    rendering = cmd == "demo" and args.render is not None
    if rendering and not Path(args.render).is_file():
        raise CLIError(f"--render {args.render!r} is not a file (give a demo's results.json)")
    if cmd == "demo" and not rendering and args.dataset == "cifar10" and args.data_dir is None:
        raise CLIError("--dataset cifar10 needs --data-dir (the folder holding cifar-10-batches-bin/)")
    if cmd in _CMD_OUTPUT and not rendering:
        resume = cmd == "train" and args.resume
        check_output(args.out, kind=_CMD_OUTPUT[cmd], inputs=inputs, overwrite=args.overwrite, resume=resume)
        if resume:
            _check_resume_arguments(args)
    if cmd == "verify" and getattr(args, "_verify_loaded", False) and args.json not in (None, "-"):
        check_output(args.json, option="--json", kind="file", overwrite=args.overwrite)
    target = getattr(args, "out", None) if cmd in _CMD_OUTPUT else getattr(args, "json", None)
    targets = [target] + ([args.onnx] if cmd == "convert" and args.onnx else [])
    for t in targets:
        if t in (None, "-"):
            continue
        for note in sweep_leftovers(t):
            print(f"repspec {cmd}: {note}", file=sys.stderr)


#: --image-size defaults when the source records no data (the loaders' own defaults)
_DEFAULT_IMAGE_SIZE = {"digits": 16, "cifar10": 32, "cifar100": 32, "folder": 32}


def _explicit_data(args, describe: str) -> dict:
    """Data settings from the flags, for a source that records none (an original-code .pth, or a
    file converted from one): --dataset is required; the classes are checked against the model later."""
    if args.dataset is None:
        raise CLIError(f"{describe} records no dataset: give --dataset (and --data-dir, --image-size as it needs)")
    _check_data_args(args)
    size = args.image_size if args.image_size is not None else _DEFAULT_IMAGE_SIZE[args.dataset]
    return {"dataset": args.dataset, "data_dir": None if args.data_dir is None else os.path.abspath(args.data_dir),
            "image_size": int(size), "seed": 0 if args.seed is None else int(args.seed)}


def _module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _require_modules(what: str, *names: str) -> None:
    missing = [n for n in names if not _module_available(n)]
    if missing:
        raise CLIError(f"{what} needs {', '.join(missing)}, which is not installed: pip install 'repspec[onnx]'")


def _repspec_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX file that repspec's export_onnx wrote (its ``repspec.format`` metadata)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable as ONNX: not ours
        return False
    return any(e.key == "repspec.format" for e in proto.metadata_props)


def _check_onnx_export(args, inputs: list) -> None:
    """``convert --onnx FILE`` / ``quantize --onnx``: the onnx package, the output rule, the model's exportability."""
    _require_modules(f"repspec {args.command} --onnx", "onnx")
    if args.command == "quantize":
        if args.act_bits != 8:
            raise CLIError(f"--onnx: --act-bits {args.act_bits} has no standard QDQ form (ONNX uint8 activations); "
                           f"use --act-bits 8")
        if args.bits > 8:
            raise CLIError(f"--onnx: --bits {args.bits} do not fit ONNX int8/uint8 weight codes; use --bits <= 8")
        return  # OUT/model.onnx is inside the output directory, which the output rule checks
    p = Path(args.onnx)
    if p.suffix != ".onnx":
        raise CLIError(f"--onnx must end in .onnx, got {args.onnx!r}")
    if os.path.realpath(os.path.abspath(p)) == os.path.realpath(os.path.abspath(args.out)):
        raise CLIError(f"--onnx {args.onnx!r} is the same path as --out")
    if p.is_file() and not p.is_symlink() and _repspec_onnx(p):
        if not args.overwrite:
            raise CLIError(f"--onnx {args.onnx!r} exists; pass --overwrite to replace this repspec output")
        # an ONNX file repspec wrote: the rule's remaining checks are those of a new file in its directory
        stand_in = p.with_name(f".{p.name}.repspec-check")
        try:
            check_output(stand_in, option="--onnx", kind="file", inputs=inputs)
        except OutputError as exc:
            raise CLIError(str(exc).replace(str(stand_in), str(args.onnx))) from None
    else:
        check_output(p, option="--onnx", kind="file", inputs=inputs, overwrite=args.overwrite)


def _check_onnx_input(path) -> None:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"--onnx {str(path)!r} does not exist")
    if not p.is_file():
        raise CLIError(f"--onnx {str(path)!r} is not a file")
    _require_modules("repspec verify --onnx", "onnx", "onnxruntime")


def _check_quantize_options(args) -> None:
    """An option either works for the method or is refused."""
    m = args.method
    if m in ("ptq", "qat") and args.bits < 2:
        raise CLIError(f"--bits must be >= 2 for uniform (symmetric narrow-range) weights ({m}), got {args.bits}")
    if m == "ptq":
        given = [f"--{k.replace('_', '-')}" for k in ("epochs", "lr", "momentum", "weight_decay", "update_every")
                 if getattr(args, k) is not None]
        if given:
            raise CLIError(f"{', '.join(given)}: ptq does no training; these apply to qat/clusterqat")
    if m == "qat" and args.update_every is not None:
        raise CLIError("--update-every is the ClusterQAT centroid refit period; it applies to clusterqat only")
    if m == "clusterqat" and args.per_channel:
        raise CLIError("--per-channel applies to uniform weights (ptq, qat); clusterqat uses one codebook per layer")
    if m != "ptq":
        for k, v in (("epochs", 3), ("lr", 1e-4), ("momentum", 0.9), ("weight_decay", 1e-4)):
            if getattr(args, k) is None:
                setattr(args, k, v)
        if m == "clusterqat" and args.update_every is None:
            args.update_every = 10


#: the arguments that define a training run; `--resume` must repeat them (it continues that run)
_RUN_KEYS = ("model", "dataset", "image_size", "batch_size", "seed", "epochs", "lr", "momentum", "weight_decay",
             "nesterov", "oabn_threshold")


def _run_config(args) -> dict:
    return {k: getattr(args, k) for k in _RUN_KEYS}


def _decode_float(v):
    return float(v["__float__"]) if isinstance(v, dict) and set(v) == {"__float__"} else v


def _check_resume_arguments(args) -> None:
    """``--resume`` continues the same run: refuse changed arguments (a larger ``--epochs``
    extends a finished run)."""
    extra = _read_checkpoint(args.out, "--out")["extra"]
    saved = {k: _decode_float(v) for k, v in (extra.get("run") or {}).items()}
    if not saved:
        raise CLIError(f"--resume: the checkpoint at {args.out!r} records no run configuration")
    now = json.loads(json.dumps(_run_config(args), default=str))
    now["oabn_threshold"] = args.oabn_threshold
    changed = [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now[k]!r}" for k in _RUN_KEYS
               if k != "epochs" and saved.get(k) != now[k]]
    if changed:
        raise CLIError("--resume continues the checkpointed run with the same arguments; changed: "
                       + ", ".join(changed))
    ts = extra.get("train_state") or {}
    finished = ts.get("global_step") is not None and ts.get("global_step") >= ts.get("total_steps", math.inf)
    args.extend_from = None
    if args.epochs < saved["epochs"]:
        raise CLIError(f"--resume: --epochs {args.epochs} is fewer than the run's {saved['epochs']}")
    if args.epochs > saved["epochs"]:
        if not finished:
            raise CLIError(f"--resume: the run is not finished ({ts.get('epoch')} of {saved['epochs']} epochs); "
                           f"resume it with --epochs {saved['epochs']} first, then extend it")
        args.extend_from = int(saved["epochs"])
    args.saved_extra = extra


# ----------------------------------------------------------------------------- helpers


def _setup_torch(args) -> str:
    import torch

    torch.set_num_threads(int(getattr(args, "threads", None) or DEFAULT_THREADS))
    device = getattr(args, "device", "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: CUDA is not available on this machine")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


def _check_model_name(name: str) -> None:
    from repspec.core.architectures import list_models  # plain data: no torch import

    names = list_models()
    if name not in names:
        raise CLIError(f"unknown model {name!r}; choose one of: {', '.join(names)}")


def _sha256_file(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_any_scales(path, model_name: str):
    """Our own scale files (.safetensors/.json), or a published RepOpt-VGG .pth/.pt (weights_only,
    checked key by key against ``model_name``); every value must be > 0 (SPEC §3)."""
    import torch

    from repspec.torch_impl.optimizers.scales import load_scales
    from repspec.torch_impl.training.official import load_official_scales

    if Path(path).suffix.lower() in OFFICIAL_SUFFIXES:
        scales = load_official_scales(path, model_name)
    else:
        scales = load_scales(path)
    for k, v in scales.items():
        if not bool(torch.all(v > 0)):
            bad = float(v[v <= 0][0])
            raise CLIError(f"--scales {str(path)!r}: {k!r} holds {bad!r}; SPEC §3 scales must be > 0")
    return scales


def _model_overrides(args) -> dict:
    return {} if getattr(args, "oabn_threshold", None) is None else {"oabn_threshold": args.oabn_threshold}


def _load_data_from_settings(data: dict, data_dir=None):
    """(train, test, info) exactly as the checkpoint's run had them; the reloaded data must match the record."""
    from repspec.torch_impl.training.datasets import load_dataset

    name = data["dataset"]
    root = None if name == "digits" else (data_dir or data.get("data_dir"))
    if name != "digits" and (root is None or not Path(root).is_dir()):
        raise CLIError(f"the recorded {name} data directory {root!r} is not there; give --data-dir with the same data")
    size = None if name in ("cifar10", "cifar100") else data["image_size"]
    train_set, test_set, info = load_dataset(name, root=root, image_size=size, seed=int(data["seed"]))
    got = info.to_dict()
    for key in ("num_classes", "train_size", "test_size", "classes"):
        if data.get(key) is not None and got[key] != data[key]:
            raise CLIError(f"the data in {root!r} is not the data the checkpoint was trained on ({key}: recorded "
                           f"{data[key]!r}, found {got[key]!r})")
    for key in ("mean", "std"):
        if data.get(key) is not None and any(abs(a - b) > 1e-9 * max(1.0, abs(a)) for a, b in zip(data[key], got[key])):
            raise CLIError(f"the data in {root!r} is not the data the checkpoint was trained on (normalization {key} "
                           f"recorded {data[key]}, found {got[key]})")
    return train_set, test_set, info


def _build_model(source: Source):
    """The torch model of a resolved :class:`Source` (weights loaded and verified)."""
    from repspec.torch_impl.modules.models import create_model

    if source.kind == "official":
        import torch

        from repspec.torch_impl.training.official import load_official_checkpoint

        # strict: keys and shapes checked before any weight is copied; float32 like every other source
        return load_official_checkpoint(source.path, source.model_name, dtype=torch.float32)

    if source.kind == "checkpoint":
        from repspec.torch_impl.training.checkpoint import load_checkpoint, load_checkpoint_extra

        extra = load_checkpoint_extra(source.path) or {}  # verifies the manifest digest and file hashes
        model = create_model(extra["model"], int(extra["num_classes"]), **dict(extra.get("model_overrides", {})))
        load_checkpoint(source.path, model)
        return model
    if source.kind == "deploy":
        from repspec.torch_impl.modules.deploy import convert_to_deploy
        from repspec.torch_impl.training.checkpoint import load_weights

        meta = source.meta
        overrides = {k: _decode_float(v) for k, v in (meta.get("model_overrides") or {}).items()}
        net = create_model(meta["model"], int(meta["num_classes"]), **overrides)
        for key in ("num_blocks", "widths", "strides", "in_channels"):
            have = getattr(net, key)
            have = list(have) if isinstance(have, (list, tuple)) else have
            if meta.get(key) is not None and have != meta[key]:
                raise CLIError(f"{source.describe}: its metadata says {key} {meta[key]}, but {meta['model']} has "
                               f"{have}; the file's metadata does not describe its weights")
        deploy = convert_to_deploy(net)
        load_weights(source.path, deploy)
        return deploy
    from repspec.torch_impl.quantization.export import load_exported

    return load_exported(source.path)


def _build_from_checkpoint(path):
    """``(model, extra)`` of a `repspec train` checkpoint directory (weights loaded and verified)."""
    source = _resolve_source(path)
    return _build_model(source), source.meta["manifest"]["extra"]


def _json_clean(obj):
    """NaN/Inf -> None (JSON null), NumPy/tensor values -> Python numbers and lists, recursively."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return _json_clean(obj.tolist())
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename finished directory ``tmp`` to ``out`` (an existing repspec ``out`` is moved aside, then removed)."""
    import shutil
    import tempfile

    from repspec.core.outputs import old_prefix

    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=old_prefix(out.name), dir=out.parent))
        os.replace(out, old / "content")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    import tempfile

    import torch

    from repspec.core.outputs import normal_mode, tmp_prefix
    from repspec.core.runtime import bit_identity_differences, reproducibility_info
    from repspec.torch_impl.modules.models import create_model
    from repspec.torch_impl.training.data import make_loaders
    from repspec.torch_impl.training.train import TrainConfig, seed_everything, train_classifier

    device = _setup_torch(args)
    overrides = _model_overrides(args)
    is_repopt = args.model.startswith("repopt_vgg_")
    repro = reproducibility_info(device)
    extensions = []
    if args.resume:
        diffs = bit_identity_differences(args.saved_extra.get("reproducibility"), repro)
        if diffs and not args.allow_nonidentical_resume:
            raise CLIError(f"--resume would not be bit-identical to the checkpointed run ({'; '.join(diffs)}); "
                           f"rerun with the recorded settings, or pass --allow-nonidentical-resume")
        if diffs:
            print(f"repspec train: warning: resuming with {'; '.join(diffs)}: the result will not be bit-identical "
                  f"to an uninterrupted run", file=sys.stderr)
        extensions = list(args.saved_extra.get("extensions") or [])
        if args.extend_from is not None:
            extensions.append({"from_epochs": args.extend_from, "to_epochs": args.epochs})
    scales_record = None
    if is_repopt:
        scales = _load_any_scales(args.scales, args.model)
        scales_record = {"path": os.path.abspath(args.scales), "sha256": _sha256_file(args.scales)}
        if args.resume and (args.saved_extra.get("scales") or {}).get("sha256") not in (None, scales_record["sha256"]):
            raise CLIError(f"--resume: --scales {args.scales!r} is not the scales file the run was started with "
                           f"(SHA-256 differs)")
    train_set, test_set, info = _load_train_data(args)
    seed_everything(args.seed)
    if is_repopt:
        model = create_model(args.model, info.num_classes, scales=scales, seed=args.seed, **overrides)
    else:
        model = create_model(args.model, info.num_classes, **overrides)
    model = model.to(device)
    optimizer = _make_optimizer(model, args, repopt=is_repopt)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    train_loader, test_loader = make_loaders(train_set, test_set, batch_size=args.batch_size, seed=args.seed)

    def on_resume(state: dict) -> None:
        if args.extend_from is not None and scheduler.last_epoch >= scheduler.T_max:
            # the finished run ended its cosine cycle at lr ~ 0: the added epochs follow a new one from --lr
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"]
            scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
            scheduler.T_max = args.epochs - args.extend_from
            scheduler.last_epoch = 0
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]

    out = Path(args.out)
    work = out
    if out.exists() and not args.resume and any(out.iterdir()):  # --overwrite: the old checkpoint stays until done
        work = Path(tempfile.mkdtemp(prefix=tmp_prefix(out.name), dir=out.parent))
        normal_mode(work, directory=True)
    data = {"dataset": args.dataset, "data_dir": None if args.data_dir is None else os.path.abspath(args.data_dir),
            "image_size": int(info.image_size[0]), "seed": args.seed, **{k: v for k, v in info.to_dict().items() if k in (
                "num_classes", "mean", "std", "train_size", "test_size", "classes")}}
    config = TrainConfig(
        epochs=args.epochs, device=device, checkpoint_path=work, checkpoint_every=len(train_loader), resume=args.resume,
        checkpoint_extra={"model": args.model, "num_classes": info.num_classes, "model_overrides": overrides,
                          "dataset": info.to_dict(), "data": data, "run": _run_config(args),
                          "reproducibility": repro, "scales": scales_record, "extensions": extensions},
        progress=not args.no_progress, seed=args.seed)
    history = train_classifier(
        model, train_loader, optimizer=optimizer, scheduler=scheduler, eval_loader=test_loader, config=config,
        on_resume=on_resume,
        epoch_callback=lambda r: print(f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} "
                                       f"acc {r['train_acc']:.4f}, test acc {r['eval_acc']:.4f}"))
    if work != out:
        _replace_dir(work, out)
    acc = history.final_eval_acc
    print(f"final test accuracy {'n/a' if acc is None else format(acc, '.4f')}; checkpoint {out}")
    return 0


def _load_train_data(args):
    from repspec.torch_impl.training.datasets import load_dataset

    return load_dataset(args.dataset, root=args.data_dir, image_size=args.image_size, seed=args.seed)


def _make_optimizer(model, args, *, repopt: bool):
    import torch

    from repspec.torch_impl.optimizers.repoptimizer import build_repoptimizer, weight_decay_groups

    if repopt:
        return build_repoptimizer(model, None, args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                  weight_decay=args.weight_decay)
    return torch.optim.SGD(weight_decay_groups(model, args.weight_decay), lr=args.lr, momentum=args.momentum,
                           nesterov=args.nesterov, weight_decay=args.weight_decay)


def cmd_hypersearch(args) -> int:
    from repspec.torch_impl.modules.models import create_model
    from repspec.torch_impl.optimizers.hypersearch import extract_scales, train_hypersearch
    from repspec.torch_impl.optimizers.scales import save_scales
    from repspec.torch_impl.training.data import make_loaders
    from repspec.torch_impl.training.train import evaluate, seed_everything

    device = _setup_torch(args)
    train_set, test_set, info = _load_train_data(args)
    seed_everything(args.seed)
    model = create_model(args.model, info.num_classes).to(device)
    train_loader, test_loader = make_loaders(train_set, test_set, batch_size=args.batch_size, seed=args.seed)
    train_hypersearch(model, train_loader, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                      nesterov=args.nesterov, weight_decay=args.weight_decay, device=device,
                      progress=not args.no_progress)
    acc = evaluate(model, test_loader, device=device)
    save_scales(extract_scales(model), args.out)
    print(f"HyperSearch test accuracy {acc:.4f}; scales written to {args.out}")
    return 0


def cmd_quantize(args) -> int:
    from repspec.core.runtime import reproducibility_info
    from repspec.torch_impl.quantization.export import export_quantized
    from repspec.torch_impl.quantization.ptq import evaluate, ptq_quantize
    from repspec.torch_impl.training.data import make_loader, make_loaders
    from repspec.torch_impl.io import atomic_directory, atomic_save_json

    device = _setup_torch(args)
    model = _build_model(args.source).to(device)
    name = args.source.model_name
    _refuse_se(model, name)
    data = args.source.data
    train_set, test_set, info = _load_data_from_settings(data, args.data_dir)
    _check_classes(model, info, args.source)
    if args.source.kind == "official":  # record what the data was, so the output can be evaluated again
        data = {**data, **{k: v for k, v in info.to_dict().items() if k in (
            "num_classes", "mean", "std", "train_size", "test_size", "classes")}}
    seed = int(data["seed"])
    train_loader, test_loader = make_loaders(train_set, test_set, batch_size=args.batch_size, seed=seed)
    calib_loader = make_loader(train_set, args.batch_size, seed=seed, shuffle=False)
    fp32_acc = evaluate(model, test_loader, device=device)
    if data.get("data_dir") is not None and args.data_dir is not None:
        data = {**data, "data_dir": os.path.abspath(args.data_dir)}
    out = Path(args.out)
    metrics = {"method": args.method, "model": name, "checkpoint": os.path.abspath(args.checkpoint),
               "checkpoint_kind": "original-code .pth" if args.source.kind == "official" else "repspec",
               "bits": args.bits, "act_bits": args.act_bits, "calibrator": args.calibrator,
               "calib_batches": args.calib_batches, "per_channel": args.per_channel,
               "update_every": args.update_every, "epochs": args.epochs, "lr": args.lr, "momentum": args.momentum,
               "weight_decay": args.weight_decay, "batch_size": args.batch_size, "data": data,
               "fp32_accuracy": fp32_acc}
    with atomic_directory(out, kind="quantize", data=data, model=name, method=args.method) as tmp:
        if args.method == "ptq":
            qmodel = ptq_quantize(model, calib_loader, weight_bits=args.bits, act_bits=args.act_bits,
                                  calibrator=args.calibrator, per_channel=args.per_channel,
                                  num_batches=args.calib_batches, progress=not args.no_progress)
            acc = evaluate(qmodel, test_loader, device=device)
            export_quantized(qmodel, tmp / "export.safetensors")
            metrics.update(quantized_accuracy=acc, state_size=int(qmodel.state_size()), qat_history=None,
                           initial_act_ranges=None)
        else:
            from repspec.experiments import run_qat

            # the activation ranges QAT starts from come from --calibrator (run_qat would use min/max)
            ranges = ptq_quantize(model, calib_loader, weight_bits=None, act_bits=args.act_bits,
                                  calibrator=args.calibrator, num_batches=args.calib_batches,
                                  progress=False).act_ranges()
            ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}
            result = run_qat(model, train_loader, test_loader, calib_loader, method=args.method, bits=args.bits,
                             act_bits=args.act_bits, act_ranges=ranges, epochs=args.epochs, lr=args.lr,
                             momentum=args.momentum, weight_decay=args.weight_decay,
                             update_every=args.update_every or 10, per_channel=args.per_channel,
                             calib_batches=args.calib_batches, device=device, progress=not args.no_progress,
                             seed=seed, export_path=tmp / "export.safetensors")
            acc = result["accuracy"]
            metrics.update(quantized_accuracy=acc, state_size=result["state_size"], qat_history=result["history"],
                           initial_act_ranges={k: list(v) for k, v in ranges.items()})
        metrics["onnx"] = None
        if args.onnx:
            from repspec.torch_impl.quantization.export import load_exported
            from repspec.torch_impl.quantization.onnx_export import export_onnx

            if args.method != "ptq":  # the QAT result as exported (its QuantizedModel)
                qmodel = load_exported(tmp / "export.safetensors")
            export_onnx(qmodel, tmp / "model.onnx", model_name=name, bias="int32")
            kmeans = args.method == "clusterqat"
            metrics["onnx"] = {
                "file": "model.onnx", "format": "qdq", "activations": "uint8 QuantizeLinear/DequantizeLinear",
                "weights": "uint8 indices -> Cast -> Gather(float codebook) (a codebook is not an affine grid)"
                if kmeans else "int8 codes -> DequantizeLinear (" + ("per channel)" if args.per_channel else
                                                                     "per tensor)"),
                "bias": "float (no weight scale for an int32 grid)" if kmeans else "int32 codes at s_x*s_w"}
        metrics["reproducibility"] = reproducibility_info(device)
        atomic_save_json(_json_clean(metrics), tmp / "metrics.json", indent=2, allow_nan=False)
    print(f"{args.method}: FP32 accuracy {fp32_acc:.4f} -> quantized {acc:.4f} "
          f"(W{args.bits}A{args.act_bits}); written to {out}" + (" (with model.onnx)" if args.onnx else ""))
    return 0


def _refuse_se(model, name) -> None:
    """repspec's PTQ/QAT do not quantize SE blocks (RepVGG-D2se): refuse rather than drop them."""
    if any(getattr(b, "se", None) is not None for _, b in model.named_blocks()):
        raise CLIError(f"{name} has SE blocks (RepVGG-D2se), which repspec's quantization does not handle: "
                       f"quantizing it would drop them; refused")


def _num_classes(model) -> int | None:
    n = getattr(model, "num_classes", None)
    if n is None:
        n = getattr(getattr(model, "net", None), "num_classes", None)
    return None if n is None else int(n)


def _check_classes(model, info, source: Source) -> None:
    n = _num_classes(model)
    if n is not None and n != int(info.num_classes):
        raise CLIError(f"{source.describe} has a {n}-class classifier, but the {info.name} data has "
                       f"{info.num_classes} classes; give the --dataset it was trained on")


def cmd_analyze(args) -> int:
    from repspec.torch_impl.quantization.analysis import write_report
    from repspec.torch_impl.io import atomic_directory

    _setup_torch(args)
    model = _build_model(args.source)
    out = Path(args.out)
    with atomic_directory(out, kind="analyze", checkpoint=os.path.abspath(args.checkpoint)) as tmp:
        write_report(model, tmp)
        table = (tmp / "layer_stats.md").read_text()
    print(f"analysis of {args.source.describe} written to {out}")
    print(table)
    return 0


def cmd_convert(args) -> int:
    from repspec.torch_impl.modules.deploy import convert_to_deploy
    from repspec.torch_impl.io import atomic_save_safetensors

    _setup_torch(args)
    source = args.source
    model = _build_model(source)
    name = source.model_name
    if source.kind == "official":
        from repspec.torch_impl.training.official import official_layout

        # the file's form (deploy, YOLOv6 post-BN): the model's keys are the file's, loaded strictly
        overrides = {k: v for k, v in official_layout(name, model.state_dict()).items() if k != "num_classes"}
        origin = {"checkpoint_manifest_sha256": None,
                  "official_checkpoint": {"path": os.path.abspath(source.path), "sha256": _sha256_file(source.path)}}
    else:
        extra = source.meta["manifest"]["extra"]
        overrides = extra.get("model_overrides") or {}
        origin = {"checkpoint_manifest_sha256": source.meta["manifest"].get("manifest_sha256")}
    deploy = convert_to_deploy(model)
    info = {"format": "repspec-deploy", "format_version": 1, "repspec_version": __version__,
            "model": name, "num_classes": int(model.num_classes), "model_overrides": overrides,
            "num_blocks": list(model.num_blocks), "widths": list(model.widths), "strides": list(model.strides),
            "in_channels": int(model.in_channels), "data": source.data, **origin}
    if args.onnx:  # first: the ONNX export is what may refuse the network
        from repspec.torch_impl.quantization.onnx_export import export_onnx

        export_onnx(deploy, args.onnx, model_name=name)
    atomic_save_safetensors(deploy.state_dict(), args.out,
                            metadata={"format": "repspec-deploy", "repspec": json.dumps(_json_clean(info))})
    n_params = sum(p.numel() for p in deploy.parameters())
    print(f"deploy form of {name} ({n_params} parameters, conv + ReLU only) written to {args.out}"
          + (f"; FP32 ONNX written to {args.onnx}" if args.onnx else ""))
    return 0


def cmd_evaluate(args) -> int:
    from repspec.torch_impl.training.data import make_loader
    from repspec.torch_impl.training.train import evaluate_metrics

    device = _setup_torch(args)
    source = args.source
    model = _build_model(source).to(device)
    _, test_set, info = _load_data_from_settings(source.data, args.data_dir)
    _check_classes(model, info, source)
    loader = make_loader(test_set, args.batch_size, seed=int(source.data["seed"]), shuffle=False)
    m = evaluate_metrics(model, loader, device, progress=not args.no_progress)
    print(f"{source.describe}: test accuracy {m['accuracy']:.4f} on {m['count']} {info.name} test images "
          f"(loss {m['loss']:.4f})")
    return 0


def cmd_verify(args) -> int:
    if args.onnx is not None:
        return _verify_onnx_file(args)
    if args.model is not None:
        raise CLIError("--model applies with --onnx (the architecture an ONNX file claims to be)")
    from repspec.conformance.runner import run_from_args

    if args.impl is None and not args.list:
        args.impl = "torch"  # the shipped adapter: repspec.conformance.torch_adapter:TorchAdapter
    return run_from_args(args)


def _verify_onnx_file(args) -> int:
    """``repspec verify --onnx FILE [--model NAME]``: 0 if FILE implements the fused network it claims,
    1 if it does not; a file that is not a fused RepVGG-family network at all is an error (2)."""
    import torch

    from repspec.torch_impl.quantization.onnx_export import verify_onnx

    torch.set_num_threads(DEFAULT_THREADS)
    reference = None if args.reference is None else _build_model(args.reference)
    r = verify_onnx(args.onnx, args.model, reference=reference)
    if "matching_architectures" not in r.details:  # not valid ONNX, or not a fused RepVGG-family graph
        raise CLIError(f"--onnx {args.onnx!r} is not a fused RepVGG-family network: {'; '.join(r.reasons)}")
    print(r.summary() + ("" if reference is None else f" (reference: {args.reference.describe})"))
    matches = r.details["matching_architectures"]
    if r.model_name is None:
        print("it claims no architecture (no --model, no repspec.model metadata); its layout matches: "
              + (", ".join(matches) if matches else "no registered architecture"))
    return 0 if r.ok else 1


def cmd_demo(args) -> int:
    from repspec.experiments import render_results, run_demo

    if args.render is not None:
        print(f"rendered table.md, claims.md, readme_section.md into {render_results(args.render)}")
        return 0
    device = _setup_torch(args)  # --threads default: runtime.DEFAULT_THREADS, like every command
    return run_demo(out_dir=Path(args.out), quick=args.quick, seed=args.seed, device=device,
                    progress=not args.no_progress, seeds=args.seeds, dataset=args.dataset, data_dir=args.data_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if next((a for a in argv if not a.startswith("-")), None) == "verify" and "-h" not in argv \
            and "--help" not in argv and not _wants_onnx(argv):
        missing = _verify_unavailable()
        if missing:
            print(f"repspec verify: error: {missing}", file=sys.stderr)
            return 2
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    cmd = args.command
    try:
        if cmd == "theorem":
            return 0 if theorem_demo(seed=args.seed, iterations=args.iterations) < 1e-9 else 1
        if cmd == "list-models":
            from repspec.core.architectures import list_models

            print("\n".join(list_models()))
            return 0
        _check_args(args)
        if _CMD_OUTPUT.get(cmd) == "file":  # a new file's missing parent directories are made now, not after the work
            Path(args.out).absolute().parent.mkdir(parents=True, exist_ok=True)
        if cmd == "convert" and args.onnx:
            Path(args.onnx).absolute().parent.mkdir(parents=True, exist_ok=True)
        handler = {"demo": cmd_demo, "train": cmd_train, "hypersearch": cmd_hypersearch,
                   "quantize": cmd_quantize, "analyze": cmd_analyze, "convert": cmd_convert,
                   "evaluate": cmd_evaluate, "verify": cmd_verify}[cmd]
        return handler(args)
    except KeyboardInterrupt:
        print(f"repspec {cmd}: interrupted; finished outputs and checkpoints are intact, nothing was left "
              f"half-written", file=sys.stderr)
        return 130
    except (CLIError, OutputError) as e:
        return _fail(cmd, str(e))
    except FloatingPointError as e:
        return _fail(cmd, f"training diverged ({e}); lower --lr or --momentum")
    except MemoryError:
        return _fail(cmd, "out of memory; use a smaller --image-size or --batch-size")
    except OSError as e:
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        return _fail(cmd, f"{e.strerror or e}{where}" if e.strerror else str(e))
    except (ValueError, TypeError, KeyError) as e:
        # the library's own validation errors name the argument; show them as one line
        return _fail(cmd, str(e.args[0]) if e.args else repr(e))


def _fail(cmd: str, message: str) -> int:
    line = " ".join(str(message).split())
    print(f"repspec {cmd}: error: {line}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
