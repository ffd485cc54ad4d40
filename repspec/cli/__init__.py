"""The ``repspec`` command line.

Sub-commands (``repspec <command> --help`` for each), one module each:

- ``demo``        (:mod:`.demo`) the main job: on scikit-learn's bundled digits, why RepVGG
                  quantizes badly and how RepOpt-VGG, QARepVGG, OABN and ClusterQAT fix it.
- ``theorem``     (:mod:`.theorem`) the float64 reference demonstration of the RepOpt theorem (SPEC §3).
- ``train``       (:mod:`.train`) train a registry model (SGD, or RepOptimizer for ``repopt_vgg_*``).
- ``hypersearch`` (:mod:`.hypersearch`) train a HyperSearch model and save its scales (SPEC §3).
- ``quantize``    (:mod:`.quantize`) ``ptq`` | ``qat`` | ``clusterqat`` a trained checkpoint (SPEC §5).
- ``analyze``     (:mod:`.analyze`) the merged-weight outlier report of a checkpoint (SPEC §2/§5).
- ``convert``     (:mod:`.convert`) the deploy form (plain conv network) of a checkpoint, with the
                  metadata needed to rebuild it (``--onnx FILE``: also as FP32 ONNX).
- ``evaluate``    (:mod:`.evaluate`) accuracy of a checkpoint, a deploy file or a quantized export
                  on the checkpoint's own dataset.
- ``verify``      (:mod:`.verify`) the conformance suite against an implementation (per-clause
                  report); ``verify --onnx FILE``: does an ONNX file implement the fused network it claims?
- ``vectors``     (:mod:`.vectors`) the clauses as files for ports outside Python: ``export DIR``,
                  ``check DIR RESULTS`` (verify's table), ``answer DIR RESULTS --impl ADAPTER``
- ``list-models`` (:mod:`.list_models`) the registry's names; ``--version`` (:mod:`.version`).

Each command module holds its parser (``add_parser``), its checks (``check``), its output kind
(``OUTPUT``) and paths (``outputs``), and its handler (``run``). What they share — the one-line
errors, the exit statuses, the output rule, the options several commands take — is in
:mod:`._common`; model arguments are resolved in :mod:`._sources` and built in :mod:`._loading`.

``quantize``, ``analyze``, ``convert`` and ``evaluate`` also take a checkpoint of the original
code: ``--checkpoint X.pth --model NAME`` (read with ``weights_only=True``, loaded strictly).

Every argument and every output path is checked before torch is imported or data is
loaded (:mod:`repspec.core.outputs` states the output rule: repspec replaces only what it
wrote, and only with ``--overwrite``); the handlers import torch inside their bodies.
Errors print one line and exit with status 2; Ctrl-C exits with 130 and SIGTERM with 143,
both removing this run's temporaries and keeping complete checkpoints; outputs are written
next to their target and renamed in.
"""

from __future__ import annotations

import argparse
import sys

from . import (
    _common,
    analyze,
    convert,
    demo,
    evaluate,
    hypersearch,
    list_models,
    quantize,
    theorem,
    train,
    vectors,
    verify,
    version,
)

__all__ = ["COMMANDS", "build_parser", "main"]

#: the sub-commands, in the order ``repspec --help`` lists them
COMMANDS = (demo, theorem, train, hypersearch, quantize, analyze, convert, evaluate, verify, vectors, list_models)
_BY_NAME = {command.NAME: command for command in COMMANDS}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. The ``verify`` options come from the conformance runner, which
    imports Hypothesis, so they are added only when ``argv`` runs ``verify``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _common.Parser(prog="repspec", description="repspec: RepVGG-family re-parameterization, "
                            "executable spec and PyTorch implementation")
    version.add_option(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, argv)
    return parser


def _checked_run(command, args) -> int:
    """The command's checks (all before torch is imported), the leftovers sweep, then its handler."""
    _common.check_common(args)
    command.check(args)
    _common.sweep(command.NAME, command.outputs(args))
    if command.OUTPUT == "file":
        _common.make_parents(command.outputs(args))
    return command.run(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    refused = verify.refuse_before_parsing(argv)
    if refused is not None:
        return refused
    args = build_parser(argv).parse_args(argv)
    command = _BY_NAME[args.command]
    with _common.sigterm_as_interrupt():
        return _common.run_guarded(command.NAME, lambda: _checked_run(command, args),
                                   lambda: command.outputs(args))
