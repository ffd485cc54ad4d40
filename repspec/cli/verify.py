"""``repspec verify``: the conformance suite against an implementation (per-clause report;
:mod:`repspec.conformance.runner`), or ``--onnx FILE``: does an ONNX file implement the fused
network it claims? The suite needs the ``test`` extra (Hypothesis); ``--onnx`` needs ``onnx``
and ``onnxruntime`` only."""

from __future__ import annotations

import sys
from pathlib import Path

from repspec.core.outputs import check_output
from repspec.core.runtime import DEFAULT_THREADS
from repspec.core.vocabulary import CALIBRATORS

from . import _common as common
from ._loading import build_model, load_data_from_settings
from ._sources import OFFICIAL_SUFFIXES, resolve_source

NAME = "verify"
OUTPUT = None


def wants_onnx(argv) -> bool:
    return any(a == "--onnx" or a.startswith("--onnx=") for a in argv)


def runs_the_suite(argv) -> bool:
    """Whether the command line runs the conformance suite (``verify`` without ``--onnx``)."""
    return common.first_positional(argv) == "verify" and not wants_onnx(argv)


def unavailable() -> str | None:
    """Why the conformance suite cannot run here (its runner needs the `test` extra), or None."""
    try:
        import repspec.conformance.runner  # noqa: F401
    except ImportError as exc:
        return f"repspec verify needs {getattr(exc, 'name', None) or exc}, which is not installed: " \
               f"pip install 'repspec[test]'"
    return None


def refuse_before_parsing(argv) -> int | None:
    """Exit status 2, with one line, when ``argv`` runs the suite and its runner cannot be imported
    (checked before parsing: the runner adds the suite's options); None otherwise. ``--help`` is
    never refused."""
    if not runs_the_suite(argv) or "-h" in argv or "--help" in argv:
        return None
    missing = unavailable()
    if missing:
        print(f"repspec verify: error: {missing}", file=sys.stderr)
        return common.EXIT_USER_ERROR
    return None


def add_parser(sub, argv) -> None:
    """The suite's options come from the conformance runner, which imports Hypothesis: they are
    added only when ``argv`` runs the suite."""
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
    g.add_argument("--nodes", action="store_true",
                   help="check the INT8 QDQ FILE node by node against the NumPy reference of the float model "
                        "--reference names (a checkpoint, a `repspec convert` file or a .pth with --model): every "
                        "activation scale/zero point, weight code and scale, per-channel axis and int32 bias scale; "
                        "prints a table (node, check, expected, got, verdict)")
    g.add_argument("--ranges", default=None, metavar="DIR",
                   help="with --nodes: the calibrated ranges FILE claims are those a `repspec quantize` output "
                        "recorded (checked against a reference recalibration too when --calib-batches is given)")
    g.add_argument("--calibrator", default="minmax", choices=CALIBRATORS,
                   help="with --nodes: the reference calibrator that gives the activation ranges (default minmax)")
    g.add_argument("--calib-batches", type=common.parse_positive_int, default=None,
                   help="with --nodes: calibration batches of SOURCE's training data, in order (default 8 without "
                        "--ranges)")
    g.add_argument("--calib-batch-size", type=common.parse_positive_int, default=64,
                   help="with --nodes: the calibration batch size (quantize's --batch-size; default 64)")
    if not runs_the_suite(argv):
        return
    from repspec.conformance.runner import add_arguments  # needs Hypothesis: main() checked it first

    add_arguments(vf)
    if not any("--overwrite" in a.option_strings for a in vf._actions):
        vf.add_argument("--overwrite", action="store_true", help="replace the --json file if repspec wrote it")
    vf.set_defaults(_verify_loaded=True)


# ------------------------------------------------------------------------------------ checks


def check(args) -> None:
    if args.onnx is not None:
        check_onnx_input(args.onnx)
        if args.reference is not None:
            official = Path(args.reference).suffix.lower() in OFFICIAL_SUFFIXES
            args.reference = resolve_source(args.reference, "--reference",
                                            kinds=("checkpoint", "deploy", "quantized", "official"),
                                            model=args.model if official else None)
        if args.nodes:
            if args.reference is None or args.reference.kind == "quantized":
                raise common.CLIError("--nodes needs --reference SOURCE naming the float model FILE quantizes "
                                      "(a checkpoint, a `repspec convert` file or a .pth with --model)")
            if args.ranges is not None:
                args.ranges = resolve_source(args.ranges, "--ranges", kinds=("quantized",))
            if args.reference.data is None and (args.ranges is None or args.calib_batches is not None):
                raise common.CLIError(f"--nodes: {args.reference.describe} records no data to calibrate on; "
                                      f"give --ranges DIR (a `repspec quantize` output) without --calib-batches")
        elif args.ranges is not None or args.calib_batches is not None:
            raise common.CLIError("--ranges and --calib-batches apply with --nodes")
    elif getattr(args, "reference", None) is not None:
        raise common.CLIError("--reference applies with --onnx")
    if getattr(args, "_verify_loaded", False):
        for option, path in (("--json", args.json), ("--junit-xml", args.junit_xml)):
            if path not in (None, "-"):
                check_output(path, option=option, kind="file", overwrite=args.overwrite)


def check_onnx_input(path) -> None:
    p = Path(path)
    if not p.exists():
        raise common.CLIError(f"--onnx {str(path)!r} does not exist")
    if not p.is_file():
        raise common.CLIError(f"--onnx {str(path)!r} is not a file")
    common.require_modules("repspec verify --onnx", "onnx", "onnxruntime")


def outputs(args) -> list:
    return [getattr(args, "json", None), getattr(args, "junit_xml", None)]


# ----------------------------------------------------------------------------------- handler


def run(args) -> int:
    if args.onnx is not None:
        return verify_onnx_nodes(args) if args.nodes else verify_onnx_file(args)
    if args.model is not None:
        raise common.CLIError("--model applies with --onnx (the architecture an ONNX file claims to be)")
    from repspec.conformance.runner import run_from_args

    if args.impl is None and not args.list:
        args.impl = "torch"  # the shipped adapter: repspec.conformance.torch_adapter:TorchAdapter
    return run_from_args(args)


def verify_onnx_nodes(args) -> int:
    """``repspec verify --onnx FILE --nodes --reference SOURCE``: the per-node table, then one line;
    0 if every check passes, 1 if one fails; a file that is not QDQ or matches no layer of SOURCE is
    an error (2)."""
    import torch

    from repspec.conformance.onnx_nodes import OnnxNodeInputError, check_qdq_nodes

    torch.set_num_threads(DEFAULT_THREADS)
    model = build_model(args.reference).float().eval()
    ranges = None if args.ranges is None else build_model(args.ranges).act_ranges()
    batches = None
    n = args.calib_batches if args.calib_batches is not None else (None if ranges is not None else 8)
    if n is not None:
        if args.reference.data is None:
            raise common.CLIError(f"--calib-batches: {args.reference.describe} records no data to calibrate on")
        from repspec.torch_impl.training.data import make_loader

        train_set, _, _ = load_data_from_settings(args.reference.data)
        loader = make_loader(train_set, args.calib_batch_size, seed=int(args.reference.data["seed"]), shuffle=False)
        batches = []
        for x, _ in loader:
            if len(batches) == n:
                break
            batches.append(x.double().numpy())
    try:
        rep = check_qdq_nodes(args.onnx, model, ranges=ranges, batches=batches, calibrator=args.calibrator)
    except OnnxNodeInputError as exc:
        raise common.CLIError(f"--onnx --nodes: {exc}") from None
    print(rep.table())
    print(rep.summary() + f" (reference: {args.reference.describe})")
    return 0 if rep.ok else 1


def verify_onnx_file(args) -> int:
    """``repspec verify --onnx FILE [--model NAME]``: 0 if FILE implements the fused network it claims,
    1 if it does not; a file that is not a fused RepVGG-family network at all is an error (2)."""
    import torch

    from repspec.torch_impl.quantization.onnx_export import verify_onnx

    torch.set_num_threads(DEFAULT_THREADS)
    reference = None if args.reference is None else build_model(args.reference)
    r = verify_onnx(args.onnx, args.model, reference=reference)
    if "matching_architectures" not in r.details:  # not valid ONNX, or not a fused RepVGG-family graph
        raise common.CLIError(f"--onnx {args.onnx!r} is not a fused RepVGG-family network: {'; '.join(r.reasons)}")
    print(r.summary() + ("" if reference is None else f" (reference: {args.reference.describe})"))
    matches = r.details["matching_architectures"]
    if r.model_name is None:
        print("it claims no architecture (no --model, no repspec.model metadata); its layout matches: "
              + (", ".join(matches) if matches else "no registered architecture"))
    return 0 if r.ok else 1
