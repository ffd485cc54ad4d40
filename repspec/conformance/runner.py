"""Run the clauses against an adapter and report per clause.

``run_conformance(adapter, clauses=None, max_examples=25, seed=0) -> Report`` runs every
clause's explicit edge cases and then ``max_examples`` Hypothesis-generated cases
(``settings(database=None)`` and a fixed ``seed``: the same cases on every run), and on a
failure lets Hypothesis shrink it to a minimal counter-example. A :class:`Report` prints
as a per-clause table (followed by the details of every failure) and serializes to JSON.

``verify(impl_spec)`` / ``main(argv)`` are the command-line entry points
(``repspec verify --impl pkg.mod:Adapter``, ``python -m repspec.conformance --impl …``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from repspec.core.files import atomic_write_text

from .adapter import ADAPTER_METHODS, AdapterBase, NotProvided, describe

# Hypothesis (a test-extra dependency) and the clause registry that builds on it are imported
# lazily, so ``add_arguments``/``build_parser`` (used by ``repspec --help``) work with only the
# runtime dependencies installed; ``verify`` then says what to install.

__all__ = [
    "ClauseResult",
    "Report",
    "run_conformance",
    "load_adapter",
    "ALIASES",
    "verify",
    "main",
    "build_parser",
    "add_arguments",
    "run_from_args",
    "AdapterLoadError",
    "DEFAULT_MAX_EXAMPLES",
]

DEFAULT_MAX_EXAMPLES = 25

#: short names accepted wherever an ``impl_spec`` is
ALIASES = {
    "reference": "repspec.conformance.adapter:ReferenceAdapter",
    "torch": "repspec.conformance.torch_adapter:TorchAdapter",
    "torch-cuda": "repspec.conformance.torch_adapter:cuda",
    "torch-float32": "repspec.conformance.torch_adapter:float32",
    "torch-fused": "repspec.conformance.torch_adapter:fused",
}

PASS, FAIL, SKIP, ERROR = "pass", "FAIL", "skipped", "ERROR"
#: the report's JSON ``format`` and the JUnit suite's name prefix: how the output rule knows repspec
#: wrote a report (``--overwrite`` replaces only such a file)
REPORT_FORMAT = "repspec-conformance-report"
JUNIT_SUITE_PREFIX = "repspec conformance: "


# ----------------------------------------------------------------------- results


def _jsonable(obj):
    """Cases and numbers as JSON: arrays → nested lists, ±inf/nan → strings, dataclasses → dicts."""
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else ("inf" if f > 0 else "-inf" if f < 0 else "nan")
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "as_dict"):
        return _jsonable(obj.as_dict())
    return obj


def _short(obj, indent: str = "    ") -> str:
    """A readable, abbreviated rendering of a case for the text report (full values: JSON)."""
    lines = []
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            exact = v.size <= 16  # small arrays exactly (shortest round-trip repr), larger ones rounded
            text = np.array2string(v, max_line_width=100, threshold=24, edgeitems=3,
                                   **({"floatmode": "unique"} if exact else {"precision": 6}))
            text = text.replace("\n", "\n" + indent + " " * (len(k) + 3))
            notes = ([f"shape {v.shape}"] if v.ndim > 1 else []) + ([] if exact else ["rounded; exact in the JSON"])
            lines.append(f"{indent}{k} = {text}" + (f"   # {', '.join(notes)}" if notes else ""))
        elif isinstance(v, Mapping) and v and all(isinstance(x, np.ndarray) for x in v.values()):
            shapes = ", ".join(f"{name}: {x.shape}" for name, x in v.items())
            lines.append(f"{indent}{k} = {{{shapes}}}   # arrays in the JSON report")
        elif isinstance(v, list) and v and isinstance(v[0], np.ndarray):
            lines.append(f"{indent}{k} = [{len(v)} arrays of shape {v[0].shape}]")
        elif hasattr(v, "as_dict"):
            lines.append(f"{indent}{k} = {v!r}")
        else:
            lines.append(f"{indent}{k} = {v!r}")
    return "\n".join(lines)

#: tolerance profiles (the tables are ``clauses.TOLERANCES``; kept here so the parser needs no Hypothesis)
PROFILES = ("float64", "float32")

#: how many traceback frames the text report prints when an adapter raises (the JSON has all)
TRACEBACK_FRAMES = 6


def _count_text(counter: Mapping[str, int]) -> str:
    return "; ".join(f"{n} × {reason}" for reason, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass
class ClauseResult:
    """The outcome of one clause against one adapter.

    Every case the clause offered the adapter is counted once (shrinking replays included) as
    exactly one of: **checked** (``examples``: compared with the reference), **declined** (the
    adapter raised :class:`NotProvided` for an option it does not offer; ``declined_reasons``
    counts the messages) or **tie-discarded** (the case lies within ε of a decision boundary where
    the adapter's answer differs, SPEC §6; ``tie_reasons``). ``special_declined`` names the
    clause's hand-written special-value cases the adapter declined.
    """

    clause_id: str
    section: str
    title: str
    status: str  # "pass" | "FAIL" | "skipped" | "ERROR"
    examples: int = 0  # cases checked against the reference (explicit + generated + shrinking replays)
    declined: int = 0  # cases the adapter declined (NotProvided for one option)
    tie_discarded: int = 0  # cases within ε of a decision boundary, not compared (SPEC §6)
    declined_reasons: dict = field(default_factory=dict)  # NotProvided message -> count
    tie_reasons: dict = field(default_factory=dict)  # Ambiguous message -> count
    special_declined: list = field(default_factory=list)  # "name (needs feature)" of declined special cases
    checked_by: dict = field(default_factory=dict)  # clause.case_label's label -> checked cases (when it has one)
    max_abs_err: float | None = 0.0  # largest error seen (over passing comparisons, or the failure's own)
    max_rel_err: float | None = 0.0
    seconds: float = 0.0
    message: str = ""  # why it failed / was skipped
    quantity: str | None = None  # the output that disagreed
    counterexample: dict | None = None  # the minimal failing case
    counterexample_kind: str | None = None  # "shrunk" | "explicit"
    traceback: str | None = None  # the full traceback (JSON); the text report prints the last frames
    traceback_tail: str | None = None
    tolerance: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def not_compared(self) -> int:
        """Declined plus tie-discarded cases (the old single "not cmp" column)."""
        return self.declined + self.tie_discarded

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("counterexample", "traceback_tail")}
        d["not_compared"] = self.not_compared
        d["counterexample"] = _jsonable(self.counterexample) if self.counterexample is not None else None
        d["max_abs_err"], d["max_rel_err"] = _jsonable(self.max_abs_err), _jsonable(self.max_rel_err)
        return d


@dataclass
class Report:
    """Per-clause results of :func:`run_conformance`; ``str(report)`` is the table, ``to_json()`` the data."""

    adapter: str
    results: list[ClauseResult]
    settings: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every clause the adapter provides passed (skipped clauses allowed; see :attr:`complete`).

        A clause whose adapter declined most of its cases, or declined one of its special values
        that every port offering the clause can run, has failed (status ``FAIL``).
        """
        return all(r.status in (PASS, SKIP) for r in self.results)

    @property
    def complete(self) -> bool:
        """Every clause ran and passed: nothing skipped and no special-value case declined (``--strict``)."""
        return all(r.status == PASS and not r.special_declined for r in self.results)

    def __getitem__(self, clause_id: str) -> ClauseResult:
        from .clauses import get_clause

        key = get_clause(clause_id).id
        for r in self.results:
            if r.clause_id == key:
                return r
        raise KeyError(clause_id)

    def failed(self) -> list[str]:
        return [r.clause_id for r in self.results if r.status in (FAIL, ERROR)]

    def passed(self) -> list[str]:
        return [r.clause_id for r in self.results if r.status == PASS]

    def skipped(self) -> list[str]:
        return [r.clause_id for r in self.results if r.status == SKIP]

    def summary(self) -> str:
        n = len(self.results)
        return (f"{len(self.passed())}/{n} clauses pass, {len(self.failed())} fail, "
                f"{len(self.skipped())} skipped")

    def coverage(self) -> str:
        """One plain line: how many clauses the adapter provides, and what that means for the verdict."""
        n, provided = len(self.results), len(self.results) - len(self.skipped())
        line = f"coverage: {provided} of {n} clauses provided by this adapter"
        if self.skipped():
            line += f"; not checked (not provided): {', '.join(self.skipped())}"
        declined = [r for r in self.results if r.special_declined]
        if declined:
            line += "; special values declined in " + ", ".join(r.clause_id for r in declined)
        verdict = ("every provided clause passed" if self.ok else
                   f"{len(self.failed())} provided clause(s) failed: {', '.join(self.failed())}")
        return line + f"\nverdict: {verdict}" + ("" if self.complete else " (not complete: see --strict)")

    def table(self) -> str:
        head = (f"{'clause':<22} {'status':<6} {'checked':>7} {'declined':>8} {'ties':>5} {'max abs err':>11} "
                f"{'max rel err':>11} {'time':>7}  title")
        rows = [head, "-" * len(head)]
        for r in self.results:
            status = r.status if r.status != SKIP else "skip"
            err_a = f"{r.max_abs_err:.1e}" if r.status in (PASS, FAIL) and r.max_abs_err is not None else "-"
            err_r = f"{r.max_rel_err:.1e}" if r.status in (PASS, FAIL) and r.max_rel_err is not None else "-"
            rows.append(f"{r.clause_id:<22} {status:<6} {r.examples:>7} {r.declined:>8} {r.tie_discarded:>5} "
                        f"{err_a:>11} {err_r:>11} {r.seconds:>6.2f}s  {r.title}")
        return "\n".join(rows)

    def not_compared_details(self) -> str:
        """Why cases were declined or tie-discarded, per clause, with counts."""
        out = []
        for r in self.results:
            if r.checked_by and r.status in (PASS, FAIL):
                from .clauses import CLAUSES

                what = CLAUSES[r.clause_id].case_label[0] if r.clause_id in CLAUSES else "label"
                out.append(f"checked {r.clause_id} by {what}: "
                           + ", ".join(f"{label} {n}" for label, n in r.checked_by.items()))
            if r.declined:
                out.append(f"declined {r.clause_id}: {r.declined} case(s): {_count_text(r.declined_reasons)}")
            if r.special_declined:
                out.append(f"  special values declined: {', '.join(r.special_declined)}")
            if r.tie_discarded:
                out.append(f"tie-discarded {r.clause_id}: {r.tie_discarded} case(s) within ε of a decision "
                           f"boundary (SPEC §6): {_count_text(r.tie_reasons)}")
        return "\n".join(out)

    def details(self) -> str:
        out = []
        for r in self.results:
            if r.status == SKIP:
                out.append(f"skipped {r.clause_id}: {r.message}")
        nc = self.not_compared_details()
        if nc:
            out.append(nc)
        for r in self.results:
            if r.status not in (FAIL, ERROR):
                continue
            block = [f"\n{r.status} {r.clause_id} ({r.section}) — {r.title}"]
            if r.quantity:
                block.append(f"  quantity: {r.quantity}")
            block.append(f"  {r.message}")
            if r.tolerance:
                block.append(f"  tolerance: {r.tolerance}")
            if r.counterexample is not None:
                block.append(f"  counter-example ({r.counterexample_kind}):")
                block.append(_short(r.counterexample))
            if r.traceback_tail or r.traceback:
                tail = r.traceback_tail or r.traceback
                block.append(f"  traceback (last {TRACEBACK_FRAMES} frames; all in the JSON report):\n"
                             + "\n".join("    " + ln for ln in tail.rstrip().splitlines()))
            impl = self.settings.get("impl")
            if impl:
                block.append(f"  reproduce: python -m repspec.conformance --impl {impl} --clauses {r.clause_id} "
                             f"--seed {self.settings.get('seed', 0)} --max-examples "
                             f"{self.settings.get('max_examples', DEFAULT_MAX_EXAMPLES)}")
            else:
                block.append(f"  reproduce: run_conformance(adapter, clauses=[{r.clause_id!r}], "
                             f"seed={self.settings.get('seed', 0)}, "
                             f"max_examples={self.settings.get('max_examples', DEFAULT_MAX_EXAMPLES)})")
            out.append("\n".join(block))
        return "\n".join(out)

    def __str__(self) -> str:
        s = self.settings
        head = (f"repspec conformance: {self.adapter}  (seed {s.get('seed')}, max_examples {s.get('max_examples')}, "
                f"tolerance profile {s.get('profile')})")
        parts = [head, self.table(), self.summary(), self.coverage()]
        det = self.details()
        if det:
            parts.append(det)
        return "\n".join(parts)

    def to_dict(self) -> dict:
        return {"format": REPORT_FORMAT, "adapter": self.adapter, "settings": _jsonable(self.settings), "ok": self.ok,
                "complete": self.complete, "summary": self.summary(), "coverage": self.coverage(),
                "clauses": [r.to_dict() for r in self.results]}

    def to_json(self, **kw) -> str:
        kw.setdefault("indent", 2)
        return json.dumps(self.to_dict(), ensure_ascii=False, **kw)

    def to_junit_xml(self) -> str:
        """The report as JUnit XML, one ``<testcase>`` per clause (for CI dashboards).

        A failing clause is a ``<failure>`` (an ``ERROR`` of the harness an ``<error>``) whose text is
        the clause's block of the text report (quantity, message, tolerance, counter-example, reproduce
        line); a clause the adapter does not provide is ``<skipped>``. Each case carries the counts and
        the largest errors as ``<properties>``.
        """
        suite = ET.Element("testsuite", name=f"{JUNIT_SUITE_PREFIX}{self.adapter}", tests=str(len(self.results)),
                           failures=str(sum(r.status == FAIL for r in self.results)),
                           errors=str(sum(r.status == ERROR for r in self.results)),
                           skipped=str(len(self.skipped())), time=f"{sum(r.seconds for r in self.results):.3f}")
        settings = ET.SubElement(suite, "properties")
        for key in ("impl", "seed", "max_examples", "profile", "strict"):
            if key in self.settings:
                ET.SubElement(settings, "property", name=key, value=str(self.settings[key]))
        blocks = {r.clause_id: Report([r], [r], self.settings).details() for r in self.results
                  if r.status in (FAIL, ERROR)}
        for r in self.results:
            case = ET.SubElement(suite, "testcase", classname=f"repspec.conformance.section{r.section.lstrip('§')}",
                                 name=r.clause_id, time=f"{r.seconds:.3f}")
            props = ET.SubElement(case, "properties")
            for key, value in (("title", r.title), ("checked", r.examples), ("declined", r.declined),
                               ("tie_discarded", r.tie_discarded), ("max_abs_err", r.max_abs_err),
                               ("max_rel_err", r.max_rel_err), ("tolerance", r.tolerance)):
                ET.SubElement(props, "property", name=key, value="" if value is None else str(value))
            if r.status == SKIP:
                ET.SubElement(case, "skipped", message=r.message)
            elif r.status in (FAIL, ERROR):
                element = ET.SubElement(case, "failure" if r.status == FAIL else "error",
                                        message=f"{r.quantity + ': ' if r.quantity else ''}{r.message}")
                element.text = blocks[r.clause_id].strip()
        ET.indent(suite)
        return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


# ----------------------------------------------------------------------- running


def _provided(adapter, method: str) -> bool:
    fn = getattr(adapter, method, None)
    if fn is None or not callable(fn):
        return False
    # AdapterBase's placeholder
    return getattr(fn, "__func__", None) is not AdapterBase._missing


def _special_label(make) -> str:
    label = getattr(make, "label", None) or getattr(make, "__name__", "special case")
    needs = getattr(make, "needs", None)
    return f"{label} (needs {needs})" if needs else label


def _run_clause(clause, adapter, *, max_examples: int, seed: int, profile: Mapping[str, Any],
                explicit: bool) -> ClauseResult:
    from hypothesis import HealthCheck, Phase, Verbosity, example, given, reject, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Flaky, Unsatisfiable

    from .clauses import AdapterRaised, Ambiguous, Checker, ErrorStats, Mismatch

    res = ClauseResult(clause.id, clause.section, clause.title, PASS, tolerance=clause.tolerance)
    missing = [m for m in clause.methods if not _provided(adapter, m)]
    if missing:
        res.status, res.message = SKIP, f"not provided: {', '.join(missing)}"
        res.max_abs_err = res.max_rel_err = None
        return res
    stats = ErrorStats()
    last: dict[str, Any] = {}
    makers = list(clause.examples) if explicit else []
    explicit_cases = [make() for make in makers]
    special = {id(c): make for c, make in zip(explicit_cases, makers)}
    declined, ties = Counter(), Counter()
    checked_by: dict[str, int] = {}
    special_declined: list = []
    declined_cases: dict = {}
    counts = {"run": 0, "declined_generated": 0, "ties_generated": 0, "generated": 0}

    def test(case):
        counts["run"] += 1
        if id(case) not in special:
            counts["generated"] += 1
        try:
            clause.check(adapter, case, Checker(profile, stats))
            if clause.case_label is not None:
                labels = clause.case_label[1](case)
                for label in [labels] if isinstance(labels, str) else labels:
                    checked_by[label] = checked_by.get(label, 0) + 1
        except NotProvided as exc:
            declined[str(exc) or "NotProvided"] += 1
            if id(case) not in special:
                counts["declined_generated"] += 1
            if id(case) in special and special[id(case)] not in special_declined:
                special_declined.append(special[id(case)])
                declined_cases[id(special[id(case)])] = case
            # not rejected: a declined case is one of the clause's cases, so Hypothesis keeps drawing from
            # the strategy's own distribution (rejecting makes it search near the declined region, which
            # inflated declines ~2x in a measurement) and the budget stays max_examples
            return
        except Ambiguous as exc:
            ties[str(exc) or "near a decision boundary"] += 1
            if id(case) not in special:
                counts["ties_generated"] += 1
            reject()
        except (Mismatch, AdapterRaised) as exc:
            last.update(case=case, exc=exc)
            raise
        except Exception as exc:  # a bug in the clause itself (or the reference refusing the case)
            last.update(case=case, exc=exc, harness=True)
            raise

    n = max(2, int(round(max_examples * clause.budget)))
    common = dict(derandomize=False, database=None, deadline=None, print_blob=False,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False, verbosity=Verbosity.quiet)
    # generated cases first (a failure is shrunk to a minimal counter-example), then the clause's
    # hand-written special values as a backstop
    attempts = [(settings(max_examples=n, phases=(Phase.generate, Phase.shrink), **common), [])]
    if explicit_cases:
        attempts.append((settings(max_examples=1, phases=(Phase.explicit,), **common), explicit_cases))
    unsatisfiable = False
    t0 = time.perf_counter()
    for cfg, cases in attempts:
        runner = given(case=clause.strategy())(test)
        for case in reversed(cases):
            runner = example(case=case)(runner)
        runner = hypothesis_seed(seed)(cfg(runner))
        try:
            runner()
        except Unsatisfiable:
            unsatisfiable = True  # judged below from the counts
        except Flaky as exc:
            res.status = FAIL
            res.message = f"the adapter gave different results for the same input (nondeterministic): {exc}"
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            _record_failure(res, last, exc, set(special))
        if res.status != PASS:
            break
    res.seconds = time.perf_counter() - t0
    res.declined, res.tie_discarded = sum(declined.values()), sum(ties.values())
    res.declined_reasons, res.tie_reasons = dict(declined), dict(ties)
    res.examples = counts["run"] - res.declined - res.tie_discarded
    res.special_declined = [_special_label(m) for m in special_declined]
    res.checked_by = dict(sorted(checked_by.items()))
    if res.status != PASS:
        return res
    res.max_abs_err, res.max_rel_err = stats.max_abs, stats.max_rel
    core_makers = [m for m in special_declined if not getattr(m, "needs", None)]
    core = [_special_label(m) for m in core_makers]
    offered = res.examples + res.declined
    if res.declined and res.examples == 0:
        res.status = SKIP
        res.message = f"not provided for any case: declined all {res.declined} ({_count_text(declined)})"
    elif _declines_most(counts["declined_generated"], counts["generated"] - counts["ties_generated"]):
        res.status, res.quantity = FAIL, "coverage (declined cases)"
        res.message = (f"the adapter declined most of the clause: {counts['declined_generated']} of "
                       f"{counts['generated'] - counts['ties_generated']} generated cases, {res.declined} of {offered} "
                       f"in all ({_count_text(declined)}); a clause fails when its declines show (binomial test, "
                       f"p < {DECLINE_SIGNIFICANCE}) that the adapter declines more than half of it "
                       f"(docs/porting.md, 'Declining an option').")
    elif core:
        res.status, res.quantity = FAIL, "special values declined"
        res.counterexample, res.counterexample_kind = declined_cases[id(core_makers[0])], "explicit, declined"
        res.message = (f"the adapter declined the clause's special-value case(s) {', '.join(core)}, which need no "
                       f"optional feature: every port offering this clause must run them "
                       f"({_count_text(declined)}).")
    elif unsatisfiable:
        res.status, res.message = ERROR, "could not generate enough comparable cases (too many filtered)"
    elif res.declined:
        res.message = f"{res.declined} case(s) declined by the adapter ({_count_text(declined)})"
    if res.status != PASS:
        res.max_abs_err = res.max_rel_err = None
    return res


#: a clause fails as "declined most" when a one-sided binomial test rejects "the adapter declines at
#: most half of the clause's generated cases" at this level: the declined share is a sample, and at
#: small budgets a port that declines a third of a clause can decline half of a handful of cases
DECLINE_SIGNIFICANCE = 0.01


def _declines_most(declined: int, offered: int) -> bool:
    if offered <= 0 or declined <= offered / 2:
        return False
    from scipy.stats import binomtest

    return bool(binomtest(declined, offered, 0.5, alternative="greater").pvalue < DECLINE_SIGNIFICANCE)


def _tail(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES,
                                              chain=False))


def _record_failure(res: ClauseResult, last: Mapping[str, Any], exc: BaseException, explicit_ids) -> None:
    from .clauses import AdapterRaised, Mismatch

    err = last.get("exc", exc)
    res.counterexample = last.get("case")
    if res.counterexample is not None:
        res.counterexample_kind = "explicit" if id(res.counterexample) in explicit_ids else "shrunk"
    if last.get("harness") or not isinstance(err, (Mismatch, AdapterRaised)):
        res.status = ERROR
        res.message = f"the clause itself raised {type(err).__name__}: {err} (a bug in the suite, please report)"
        res.traceback = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        res.traceback_tail = _tail(err)
        res.max_abs_err = res.max_rel_err = None
    elif isinstance(err, AdapterRaised):
        res.status, res.quantity = FAIL, err.method
        res.message = f"the adapter raised on a valid input: {err}"
        res.traceback = "".join(traceback.format_exception(type(err.exc), err.exc, err.exc.__traceback__))
        res.traceback_tail = _tail(err.exc)
        res.max_abs_err = res.max_rel_err = None
    else:
        res.status, res.quantity, res.message = FAIL, err.quantity, err.detail
        res.max_abs_err, res.max_rel_err = err.max_abs, err.max_rel


def select_clauses(clauses, *, max_examples, seed, profile) -> list:
    """The clauses a run covers (``clauses``: ids, or None for all, in SPEC order), after checking the
    run's settings: ``verify`` and ``vectors export`` take the same ones."""
    from .clauses import CLAUSES, TOLERANCES, get_clause

    if profile not in TOLERANCES:
        raise ValueError(f"profile must be one of {tuple(TOLERANCES)}, got {profile!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive integer, got {max_examples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return list(CLAUSES.values()) if clauses is None else [get_clause(c) for c in clauses]


def run_conformance(adapter, *, clauses: Iterable[str] | None = None, max_examples: int = DEFAULT_MAX_EXAMPLES,
                    seed: int = 0, profile: str = "float64", explicit_examples: bool = True) -> Report:
    """Check ``adapter`` against the spec, clause by clause.

    ``clauses``: ids (``"§2.fusion"`` or ``"2.fusion"``) or None for all, in SPEC order.
    ``max_examples``: generated cases per clause (expensive clauses run a fraction, at least 2),
    after the clause's explicit edge cases. ``seed``: Hypothesis seed (the same seed gives the same
    cases). ``profile``: the tolerance table, ``"float64"`` (the contract) or ``"float32"`` (advisory).
    """
    from .clauses import TOLERANCES

    selected = select_clauses(clauses, max_examples=max_examples, seed=seed, profile=profile)
    results = [_run_clause(c, adapter, max_examples=max_examples, seed=seed, profile=TOLERANCES[profile],
                           explicit=explicit_examples) for c in selected]
    return Report(describe(adapter), results,
                  {"max_examples": max_examples, "seed": seed, "profile": profile,
                   "clauses": [c.id for c in selected]})


# ---------------------------------------------------------------- loading adapters


class AdapterLoadError(ValueError):
    """A bad ``--impl`` spec: the message says what was wrong and what was expected."""


def _import_adapter_module(module_name: str, impl_spec: str):
    """Import ``module_name``; a module in the current directory is found even from the console script.

    ``python -m`` puts the current directory on ``sys.path`` but the ``repspec`` console script
    does not, so a first failure for a top-level module retries with the current directory
    prepended (and keeps it there: the adapter module may import its siblings).
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        cwd = os.getcwd()
        on_path = any(os.path.abspath(p or ".") == cwd for p in sys.path)
        if exc.name == top and not on_path:
            sys.path.insert(0, cwd)
            try:
                return importlib.import_module(module_name)
            except ModuleNotFoundError as exc2:
                sys.path.remove(cwd)
                exc = exc2
            except ImportError as exc2:
                raise AdapterLoadError(f"cannot import module {module_name!r} from --impl {impl_spec!r}: "
                                       f"{exc2}") from exc2
        raise AdapterLoadError(
            f"cannot import module {module_name!r} from --impl {impl_spec!r}: {exc}. Searched the current "
            f"directory ({cwd}) and sys.path: run from the folder that holds {top!r} (or its package), add that "
            f"folder to PYTHONPATH, or install the port") from exc
    except ImportError as exc:
        raise AdapterLoadError(f"cannot import module {module_name!r} from --impl {impl_spec!r}: {exc}") from exc


def load_adapter(impl_spec: str):
    """Import ``package.module:Attr`` (or an alias: ``torch``, ``reference``) and return an adapter instance.

    ``Attr`` may be a class (instantiated with no arguments), a zero-argument factory, or an
    instance. A module in the current directory is found (see :func:`_import_adapter_module`).
    Raises :class:`AdapterLoadError` with a clear message on a bad spec.
    """
    if not isinstance(impl_spec, str) or not impl_spec.strip():
        raise AdapterLoadError("--impl must be 'package.module:Adapter' (or 'torch' / 'reference'), got "
                               f"{impl_spec!r}")
    spec = ALIASES.get(impl_spec.strip(), impl_spec.strip())
    if spec.count(":") != 1:
        raise AdapterLoadError(f"--impl must be 'package.module:Adapter' (one colon), got {impl_spec!r}; "
                               f"aliases: {', '.join(ALIASES)}")
    module_name, attr = spec.split(":")
    if not module_name or not attr:
        raise AdapterLoadError(f"--impl must be 'package.module:Adapter', got {impl_spec!r}")
    module = _import_adapter_module(module_name, impl_spec)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AdapterLoadError(f"module {module_name!r} has no attribute {attr!r} (from --impl {impl_spec!r})")
        obj = getattr(obj, part)
    if isinstance(obj, type) or (callable(obj) and not any(callable(getattr(obj, m, None)) for m in ADAPTER_METHODS)):
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001
            raise AdapterLoadError(f"could not create the adapter {spec!r} with no arguments: "
                                   f"{type(exc).__name__}: {exc}") from exc
    if not any(callable(getattr(obj, m, None)) for m in ADAPTER_METHODS):
        raise AdapterLoadError(f"{spec!r} is not an adapter: it has none of the protocol methods "
                               f"({', '.join(ADAPTER_METHODS)})")
    return obj


# ------------------------------------------------------------------ command line


@contextlib.contextmanager
def hypothesis_storage():
    """Keep Hypothesis's files (its constants cache) out of the current directory during a run.

    Unless ``HYPOTHESIS_STORAGE_DIRECTORY`` is set (then it is used, as Hypothesis documents), a
    temporary directory is used and removed afterwards; no example database is written either way
    (the runner sets ``database=None``).
    """
    from hypothesis import configuration

    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        yield None
        return
    previous = configuration.__dict__.get("__hypothesis_home_directory")
    with tempfile.TemporaryDirectory(prefix="repspec-verify-hypothesis-") as tmp:
        configuration.set_hypothesis_home_dir(tmp)
        try:
            yield tmp
        finally:
            configuration.set_hypothesis_home_dir(previous)


def build_parser(prog: str = "python -m repspec.conformance") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Check an implementation (a port) against the repspec SPEC, "
                                                       "clause by clause (docs/porting.md).")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``verify`` options (for ``repspec verify``); needs only the runtime dependencies."""
    p.add_argument("--impl", metavar="PKG.MODULE:ADAPTER",
                   help="the adapter to check: 'package.module:Adapter' (a module in the current directory is "
                        "found) or an alias (" + ", ".join(ALIASES) + ")")
    p.add_argument("--clauses", metavar="IDS", action="append",
                   help="comma-separated clause ids to run (default: all), e.g. '§3.grad-mult,5.ste'")
    p.add_argument("--max-examples", type=int, default=DEFAULT_MAX_EXAMPLES,
                   help=f"generated cases per clause (default {DEFAULT_MAX_EXAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0: the same cases every run)")
    p.add_argument("--profile", choices=PROFILES, default="float64",
                   help="tolerance table (default float64, the contract; float32 is advisory)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH ('-' for stdout only)")
    p.add_argument("--junit-xml", metavar="PATH", dest="junit_xml",
                   help="also write the report as JUnit XML to PATH (one test case per clause)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 unless every clause ran and passed: none skipped (not provided) and no "
                        "special-value case declined")
    p.add_argument("--list", action="store_true", help="list the clauses and exit")


def _missing_hypothesis() -> str | None:
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        return ("error: the conformance suite needs Hypothesis, a test dependency: "
                "pip install 'repspec[test]' (or: pip install hypothesis)")
    return None


def run_from_args(args: argparse.Namespace, out=None) -> int:
    """Execute parsed ``verify`` arguments; returns the exit status.

    0: every clause the adapter provides passed (with ``--strict``: every clause, nothing skipped
    or declined as a special value); 1: otherwise; 2: usage errors (bad ``--impl``, clause ids,
    options, an unwritable ``--json`` path).
    """
    out = sys.stdout if out is None else out
    junit = getattr(args, "junit_xml", None)
    missing = _missing_hypothesis()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from .clauses import CLAUSES

    if args.list:
        for c in CLAUSES.values():
            print(f"{c.id:<22} {c.title}  [needs: {', '.join(c.methods)}]", file=out)
        return 0
    if not args.impl:
        print("error: --impl is required (e.g. --impl repspec.conformance.torch_adapter:TorchAdapter)", file=sys.stderr)
        return 2
    outputs = [(option, path) for option, path in (("--json", args.json), ("--junit-xml", junit))
               if path and path != "-"]
    for option, path in outputs:
        target = os.path.abspath(path)
        if os.path.isdir(target) or not os.path.isdir(os.path.dirname(target)) \
                or not os.access(os.path.dirname(target), os.W_OK) \
                or (os.path.exists(target) and not os.access(target, os.W_OK)):
            print(f"error: {option} {path!r} must be a writable file path in an existing directory",
                  file=sys.stderr)
            return 2
    if len({os.path.abspath(path) for _, path in outputs}) < len(outputs):
        print("error: --json and --junit-xml must name different files", file=sys.stderr)
        return 2
    clauses = None
    if args.clauses:
        clauses = [c for chunk in args.clauses for c in chunk.split(",") if c.strip()]
    try:
        adapter = load_adapter(args.impl)
        with hypothesis_storage():
            report = run_conformance(adapter, clauses=clauses, max_examples=args.max_examples, seed=args.seed,
                                     profile=args.profile)
    except (AdapterLoadError, KeyError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    report.adapter = f"{report.adapter} ({args.impl})" if report.adapter != args.impl else args.impl
    report.settings["impl"] = args.impl
    report.settings["strict"] = bool(args.strict)
    status = 1 if not report.ok or (args.strict and not report.complete) else 0
    if args.json == "-":
        print(report.to_json(), file=out)
    else:
        print(report, file=out)
    if outputs:
        for option, path in outputs:
            text, what = (report.to_json(), "JSON") if option == "--json" else (report.to_junit_xml(), "JUnit XML")
            try:
                atomic_write_text(path, text)
            except OSError as exc:
                print(f"error: could not write {option} {path!r}: {exc}", file=sys.stderr)
                return 2
            print(f"{what} report written to {path}", file=out)
    if args.json != "-":
        why = ("every clause this adapter provides passed" if status == 0 and not args.strict else
               "every clause ran and passed (--strict)" if status == 0 else
               "a provided clause failed" if not report.ok else
               "--strict: " + ("clauses not provided" if report.skipped() else "special values declined"))
        print(f"exit status {status}: {why}", file=out)
    return status


def verify(impl_spec: str, *, clauses: Sequence[str] | None = None, max_examples: int = DEFAULT_MAX_EXAMPLES,
           seed: int = 0, profile: str = "float64", json_path: str | None = None, strict: bool = False,
           junit_xml_path: str | None = None, out=None) -> int:
    """Load ``impl_spec`` (``package.module:Adapter``), print the report, return the exit status."""
    args = argparse.Namespace(impl=impl_spec, clauses=[",".join(clauses)] if clauses else None,
                              max_examples=max_examples, seed=seed, profile=profile, json=json_path, strict=strict,
                              list=False, junit_xml=junit_xml_path)
    return run_from_args(args, out=out)


def main(argv: Sequence[str] | None = None, prog: str = "python -m repspec.conformance") -> int:
    """``python -m repspec.conformance --impl pkg.mod:Adapter [--clauses …] [--max-examples N] [--json PATH]``."""
    args = build_parser(prog).parse_args(argv)
    return run_from_args(args)
