"""``repspec verify``: the conformance suite against an implementation (per-clause report;
:mod:`repspec.conformance.runner`), or ``--onnx FILE``: does an ONNX file implement the fused
network it claims? The suite needs the ``test`` extra (Hypothesis); ``--onnx`` needs ``onnx``
and ``onnxruntime`` only."""

from __future__ import annotations

import sys
from pathlib import Path

from repspec.core.outputs import check_output
from repspec.core.runtime import DEFAULT_THREADS

from . import _common as common
from ._loading import build_model
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
    g.add_argument("--float-reference", default=None, metavar="SOURCE", dest="float_reference",
                   help="with a QDQ FILE and --reference QUANTIZED (a `repspec quantize ptq` output): the float network "
                        "QUANTIZED was made from (checkpoint, `repspec convert` file or .pth with --model); then every "
                        "QuantizeLinear/DequantizeLinear of FILE is checked against the reference, node by node "
                        "(activation scale and zero point of each calibrated range, weight scales on axis 0, weight "
                        "codes, int32 bias scale s_x*s_w and codes); exit 1 names every failing node")
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
        if args.float_reference is not None:
            if args.reference is None or args.reference.kind != "quantized":
                raise common.CLIError("--float-reference needs --reference QUANTIZED (a `repspec quantize` output): "
                                      "the calibrated ranges come from there")
            official = Path(args.float_reference).suffix.lower() in OFFICIAL_SUFFIXES
            args.float_reference = resolve_source(args.float_reference, "--float-reference",
                                                  kinds=("checkpoint", "deploy", "official"),
                                                  model=args.model if official else None)
    elif getattr(args, "reference", None) is not None:
        raise common.CLIError("--reference applies with --onnx")
    elif getattr(args, "float_reference", None) is not None:
        raise common.CLIError("--float-reference applies with --onnx")
    if getattr(args, "_verify_loaded", False) and args.json not in (None, "-"):
        check_output(args.json, option="--json", kind="file", overwrite=args.overwrite)


def check_onnx_input(path) -> None:
    p = Path(path)
    if not p.exists():
        raise common.CLIError(f"--onnx {str(path)!r} does not exist")
    if not p.is_file():
        raise common.CLIError(f"--onnx {str(path)!r} is not a file")
    common.require_modules("repspec verify --onnx", "onnx", "onnxruntime")


def outputs(args) -> list:
    return [getattr(args, "json", None)]


# ----------------------------------------------------------------------------------- handler


def run(args) -> int:
    if args.onnx is not None:
        return verify_onnx_file(args)
    if args.model is not None:
        raise common.CLIError("--model applies with --onnx (the architecture an ONNX file claims to be)")
    from repspec.conformance.runner import run_from_args

    if args.impl is None and not args.list:
        args.impl = "torch"  # the shipped adapter: repspec.conformance.torch_adapter:TorchAdapter
    return run_from_args(args)


def verify_onnx_file(args) -> int:
    """``repspec verify --onnx FILE [--model NAME]``: 0 if FILE implements the fused network it claims,
    1 if it does not; a file that is not a fused RepVGG-family network at all is an error (2). With
    ``--float-reference``, also every QDQ node against the reference (a file that is not QDQ, or whose
    layers do not match the reference's, is an error: 2, before anything is printed)."""
    import torch

    from repspec.torch_impl.quantization.onnx_export import verify_onnx

    torch.set_num_threads(DEFAULT_THREADS)
    reference = None if args.reference is None else build_model(args.reference)
    nodes = None if args.float_reference is None else check_nodes(args, reference)
    r = verify_onnx(args.onnx, args.model, reference=reference)
    if "matching_architectures" not in r.details:  # not valid ONNX, or not a fused RepVGG-family graph
        raise common.CLIError(f"--onnx {args.onnx!r} is not a fused RepVGG-family network: {'; '.join(r.reasons)}")
    print(r.summary() + ("" if reference is None else f" (reference: {args.reference.describe})"))
    matches = r.details["matching_architectures"]
    if r.model_name is None:
        print("it claims no architecture (no --model, no repspec.model metadata); its layout matches: "
              + (", ".join(matches) if matches else "no registered architecture"))
    if nodes is not None:
        print(nodes.summary() + f" (float reference: {args.float_reference.describe})")
        if not nodes.ok:
            print(nodes.table())
    return 0 if r.ok and (nodes is None or nodes.ok) else 1


def check_nodes(args, quantized):
    """The node-by-node report of a QDQ file (``repspec.conformance.qdq``) against the float network
    ``--float-reference`` and the calibrated ranges of ``quantized``."""
    from repspec.conformance.qdq import QDQFormatError, check_qdq_file, expected_layers
    from repspec.torch_impl.quantization.onnx_export import qdq_expectations

    float_model = build_model(args.float_reference)
    try:
        return check_qdq_file(args.onnx, expected_layers(qdq_expectations(float_model, quantized)))
    except (QDQFormatError, ValueError, TypeError) as exc:
        raise common.CLIError(f"--onnx {args.onnx!r}, node check: {exc}") from None
