"""``repspec vectors``: the conformance clauses as files, for ports outside Python (docs/vectors.md).

- ``vectors export DIR``: every clause's cases (inputs, expected outputs, tolerance and reason,
  seed, SPEC anchor) as ``manifest.json`` plus one safetensors file per clause; byte-identical
  for the same seed, budget and versions.
- ``vectors check DIR RESULTS``: a port's results (the same format) compared with the vectors,
  printed as ``verify``'s per-clause table.
- ``vectors answer DIR RESULTS --impl ADAPTER``: the results a Python adapter gives (what a port
  writes, and how to see the format).

Like ``verify`` this needs the ``test`` extra (Hypothesis builds the clause registry).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

from repspec.core.files import atomic_write_text
from repspec.core.outputs import check_output

from . import _common as common
from .verify import unavailable

NAME = "vectors"
OUTPUT = None  # export writes a directory, answer a directory, check at most two report files

_PROFILES = ("float64", "float32")  # the runner's tolerance profiles (checked again by the library)


def add_parser(sub, argv) -> None:
    vp = sub.add_parser("vectors", help="the conformance clauses as files for ports outside Python: export them, "
                                        "check a port's results (docs/vectors.md)")
    actions = vp.add_subparsers(dest="action", required=True, metavar="ACTION")
    ex = actions.add_parser("export", help="write every clause's cases and expected outputs into DIR")
    ex.add_argument("dir", metavar="DIR", help="the new vectors directory")
    _add_selection_args(ex)
    ex.add_argument("--max-examples", type=common.parse_positive_int, default=25,
                    help="generated cases per clause, as in verify (special cases come on top)")
    ex.add_argument("--seed", type=common.parse_seed, default=0,
                    help="Hypothesis seed: the same seed, budget and versions give byte-identical files")
    ex.add_argument("--profile", choices=_PROFILES, default="float64",
                    help="the tolerance table the vectors carry (float64 is the contract)")
    ex.add_argument("--overwrite", action="store_true", help="replace DIR if repspec wrote it")

    ck = actions.add_parser("check", help="compare a port's RESULTS with the vectors in DIR (verify's table)")
    ck.add_argument("dir", metavar="DIR", help="a vectors directory (`repspec vectors export`); never written to")
    ck.add_argument("results", metavar="RESULTS", help="the port's results directory; never written to")
    _add_selection_args(ck)
    ck.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH ('-' for stdout only)")
    ck.add_argument("--junit-xml", metavar="PATH", dest="junit_xml",
                    help="also write the report as JUnit XML to PATH (one test case per clause)")
    ck.add_argument("--strict", action="store_true",
                    help="exit 1 unless every clause of the vectors was answered and passed")
    ck.add_argument("--overwrite", action="store_true", help="replace the --json/--junit-xml files if repspec "
                                                             "wrote them")

    an = actions.add_parser("answer", help="write the results a Python adapter gives for the vectors in DIR")
    an.add_argument("dir", metavar="DIR", help="a vectors directory (`repspec vectors export`); never written to")
    an.add_argument("results", metavar="RESULTS", help="the new results directory")
    an.add_argument("--impl", required=True, metavar="PKG.MODULE:ADAPTER",
                    help="the adapter, as verify's --impl ('reference', 'torch', or package.module:Adapter)")
    an.add_argument("--overwrite", action="store_true", help="replace RESULTS if repspec wrote it")


def _add_selection_args(p) -> None:
    p.add_argument("--clauses", metavar="IDS", action="append",
                   help="comma-separated clause ids (default: all), e.g. '§2.fusion,5.ste'")


def _clause_ids(args) -> list[str] | None:
    if not getattr(args, "clauses", None):
        return None
    return [c.strip() for chunk in args.clauses for c in chunk.split(",") if c.strip()]


# ------------------------------------------------------------------------------------ checks


def _existing_dir(path: str, what: str) -> None:
    p = Path(path)
    if not p.exists():
        raise common.CLIError(f"{what} {path!r} does not exist")
    if not p.is_dir():
        raise common.CLIError(f"{what} {path!r} is not a directory")


def _inside(path: str, folder: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def check(args) -> None:
    missing = unavailable()
    if missing:
        raise common.CLIError(missing.replace("repspec verify", "repspec vectors"))
    if args.action == "export":
        check_output(args.dir, option="DIR", kind="dir", overwrite=args.overwrite)
        return
    _existing_dir(args.dir, "DIR")
    if args.action == "answer":
        check_output(args.results, option="RESULTS", kind="dir", inputs=[args.dir], overwrite=args.overwrite)
        return
    _existing_dir(args.results, "RESULTS")
    reports = [(option, path) for option, path in (("--json", args.json), ("--junit-xml", args.junit_xml))
               if path not in (None, "-")]
    for option, path in reports:
        for folder, what in ((args.dir, "the vectors directory"), (args.results, "the results directory")):
            if _inside(path, folder):
                raise common.CLIError(f"{option} {path!r} lies in {what}; nothing is written there, choose "
                                      f"another path")
        check_output(path, option=option, kind="file", overwrite=args.overwrite)
    if len({os.path.realpath(p) for _, p in reports}) < len(reports):
        raise common.CLIError("--json and --junit-xml must name different files")


def outputs(args) -> list:
    if args.action == "export":
        return [args.dir]
    if args.action == "answer":
        return [args.results]
    return [getattr(args, "json", None), getattr(args, "junit_xml", None)]


# ----------------------------------------------------------------------------------- handler


def run(args) -> int:
    from repspec.conformance import vectors

    try:
        if args.action == "export":
            return _export(args, vectors)
        if args.action == "answer":
            return _answer(args, vectors)
        return _check(args, vectors)
    except vectors.VectorsError as exc:
        raise common.CLIError(str(exc)) from None


def _export(args, vectors) -> int:
    from repspec.conformance.clauses import CLAUSES, get_clause

    ids = _clause_ids(args)
    try:
        selected = list(CLAUSES) if ids is None else [get_clause(c).id for c in ids]
    except KeyError as exc:
        raise common.CLIError(exc.args[0] if exc.args else str(exc)) from None
    bar = tqdm(total=len(selected), desc="vectors", unit="clause", file=sys.stderr, disable=None)

    def progress(clause_id, cases, arrays):
        bar.set_postfix_str(f"{clause_id}: {cases} cases")
        bar.update(1)

    try:
        manifest = vectors.export_vectors(args.dir, clauses=selected, max_examples=args.max_examples,
                                          seed=args.seed, profile=args.profile, progress=progress)
    finally:
        bar.close()
    cases = sum(len(c["cases"]) for c in manifest["clauses"])
    size = sum(f.stat().st_size for f in Path(args.dir).iterdir() if f.is_file())
    print(f"vectors of {len(manifest['clauses'])} clause(s), {cases} cases, written to {args.dir} "
          f"({size / 2**20:.1f} MiB; schema {vectors.SCHEMA_ID} version {vectors.SCHEMA_VERSION}, seed {args.seed}, "
          f"max_examples {args.max_examples})")
    return 0


def _answer(args, vectors) -> int:
    from repspec.conformance.runner import AdapterLoadError, load_adapter

    try:
        adapter = load_adapter(args.impl)
    except AdapterLoadError as exc:
        raise common.CLIError(str(exc)) from None
    manifest, files = vectors.results_from_adapter(args.dir, adapter)
    vectors.write_results(args.results, manifest, files)
    print(f"results of {manifest['implementation']} for {len(manifest['clauses'])} clause(s) written to "
          f"{args.results}")
    return 0


def _check(args, vectors) -> int:
    try:
        report = vectors.check_results(args.dir, args.results, clauses=_clause_ids(args))
    except KeyError as exc:
        raise common.CLIError(exc.args[0] if exc.args else str(exc)) from None
    report.settings["strict"] = bool(args.strict)
    if args.json == "-":
        print(report.to_json())
    else:
        print(report)
    for path, text in ((args.json, report.to_json), (args.junit_xml, report.to_junit_xml)):
        if path not in (None, "-"):
            atomic_write_text(path, text())
    return 1 if not report.ok or (args.strict and not report.complete) else 0
