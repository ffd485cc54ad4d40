"""Conformance vectors: every clause's cases as files, for ports outside Python (docs/vectors.md).

``export_vectors(out, clauses=None, max_examples=25, seed=0, profile="float64")`` runs each clause
exactly as ``repspec verify`` does (the runner's Hypothesis case stream for ``seed`` and
``max_examples``, then the clause's special cases) against a *recording* adapter that wraps
:class:`~repspec.conformance.adapter.ReferenceAdapter`: every adapter call of every case is
recorded (method, inputs by parameter name, outputs). The cases and calls are written as one
``manifest.json`` (schema :data:`SCHEMA_ID` version :data:`SCHEMA_VERSION`) plus one safetensors
file per clause holding every array.

``check_results(vectors_dir, results_dir)`` validates a port's results (same format: a
``manifest.json`` of schema :data:`RESULTS_SCHEMA_ID` and one safetensors per clause holding each
answered call's outputs under the keys of the expected outputs) and then re-runs each clause's own
``check(adapter, case, cmp)`` on every stored case with a *replay* adapter that serves the port's
outputs call by call, so tolerances, ties (``Ambiguous``) and declines behave as in ``verify``.
It returns the runner's :class:`~repspec.conformance.runner.Report`.

Every problem with the files is a :class:`VectorsError` whose one-line message names the file and
the clause.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from repspec.core.version import __version__

from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from repspec.core.files import atomic_directory
from repspec.reference import analysis as _analysis_module

from . import adapter as _adapter_module
from .adapter import ADAPTER_METHODS, NotProvided, ReferenceAdapter

__all__ = ["SCHEMA_ID", "SCHEMA_VERSION", "RESULTS_SCHEMA_ID", "VectorsError", "export_vectors", "load_vectors",
           "check_results", "write_results", "results_from_adapter", "clause_file_name"]

SCHEMA_ID = "repspec-vectors"
RESULTS_SCHEMA_ID = "repspec-vectors-results"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
#: the dtypes an array of the vectors may have (safetensors names them F64, I64, BOOL)
DTYPES = ("float64", "int64", "bool")
#: exception types a recorded call may raise (expected outcome) and a port may report
RAISES = {"ValueError": ValueError, "TypeError": TypeError}


class VectorsError(ValueError):
    """A vectors or results directory that cannot be used (one line: the file and the clause)."""


def clause_file_name(clause_id: str) -> str:
    """``§2.fusion`` → ``2.fusion.safetensors`` (ASCII: ports open it with plain ``fopen``)."""
    return clause_id.lstrip("§") + ".safetensors"


# ------------------------------------------------------------------ values <-> JSON + arrays


def _float_json(f: float):
    if math.isfinite(f):
        return f
    return {"float": "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")}


def _is_record_type(obj) -> bool:
    return isinstance(obj, type) and (dataclasses.is_dataclass(obj) or (issubclass(obj, tuple)
                                                                      and hasattr(obj, "_fields")))


#: the record types a value may be tagged with, by their bare names (a port ignores the tag; a Python
#: reader rebuilds the record): the adapter protocol's descriptions and results, and the reference's
#: category statistics that ``category_statistics`` returns
RECORD_TYPES: dict[str, type] = {name: obj for module in (_adapter_module, _analysis_module)
                                 for name, obj in sorted(vars(module).items())
                                 if _is_record_type(obj) and obj.__module__ == module.__name__}


def _type_name(obj) -> str:
    name = type(obj).__name__
    if RECORD_TYPES.get(name) is not type(obj):
        raise TypeError(f"a {type(obj).__module__}.{type(obj).__qualname__} has no place in the vectors "
                        f"(records are one of {sorted(RECORD_TYPES)})")
    return name


class _Encoder:
    """Flattens a value into a JSON spec, collecting its arrays under stable keys."""

    def __init__(self, arrays: dict):
        self.arrays = arrays

    def array(self, key: str, a: np.ndarray) -> dict:
        a = np.asarray(a)
        if a.dtype.kind == "f":
            a = a.astype(np.float64)
        elif a.dtype.kind in "iu":
            a = a.astype(np.int64)
        elif a.dtype.kind != "b":
            raise TypeError(f"{key}: arrays of dtype {a.dtype} have no place in the vectors")
        self.arrays[key] = np.array(a, order="C")
        return {"array": key, "dtype": str(a.dtype), "shape": list(a.shape)}

    def value(self, key: str, v, *, output: bool):
        if isinstance(v, np.ndarray):
            return self.array(key, v)
        if isinstance(v, (bool, np.bool_)):
            return self.array(key, np.asarray(v)) | {"scalar": "bool"} if output else bool(v)
        if isinstance(v, (int, np.integer)):
            return self.array(key, np.asarray(v, dtype=np.int64)) | {"scalar": "int"} if output else int(v)
        if isinstance(v, (float, np.floating)):
            if output:  # a port only ever writes arrays
                return self.array(key, np.asarray(v, dtype=np.float64)) | {"scalar": "float"}
            return _float_json(float(v))
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, Mapping):
            return {"dict": {str(k): self.value(f"{key}/{k}", x, output=output) for k, x in v.items()}}
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            return {"namedtuple": _type_name(v),
                    "fields": {f: self.value(f"{key}/{f}", x, output=output) for f, x in zip(v._fields, v)}}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {"dataclass": _type_name(v),
                    "fields": {f.name: self.value(f"{key}/{f.name}", getattr(v, f.name), output=output)
                               for f in dataclasses.fields(v)}}
        if isinstance(v, (list, tuple)):
            tag = "tuple" if isinstance(v, tuple) else "list"
            return {tag: [self.value(f"{key}/{i}", x, output=output) for i, x in enumerate(v)]}
        raise TypeError(f"{key}: a {type(v).__name__} has no place in the vectors")


def _import_type(name: str):
    if name not in RECORD_TYPES:  # nothing a file names is imported: the types are a fixed table
        raise VectorsError(f"unknown record type {name!r} (one of {sorted(RECORD_TYPES)})")
    return RECORD_TYPES[name]


def _decode(spec, arrays: Mapping[str, np.ndarray]):
    """The value a spec describes; arrays come from ``arrays`` (the vectors' or the port's)."""
    if spec is None or isinstance(spec, (bool, int, float, str)):
        return spec
    if isinstance(spec, list):
        raise VectorsError("a bare JSON list in a value spec (lists are tagged)")
    if "array" in spec:
        a = arrays[spec["array"]]
        scalar = spec.get("scalar")
        if scalar == "float":
            return float(a)
        if scalar == "int":
            return int(a)
        if scalar == "bool":
            return bool(a)
        return a.copy()
    if "float" in spec:
        return float(spec["float"])
    if "dict" in spec:
        return {k: _decode(v, arrays) for k, v in spec["dict"].items()}
    if "list" in spec:
        return [_decode(v, arrays) for v in spec["list"]]
    if "tuple" in spec:
        return tuple(_decode(v, arrays) for v in spec["tuple"])
    if "namedtuple" in spec:
        return _import_type(spec["namedtuple"])(**{k: _decode(v, arrays) for k, v in spec["fields"].items()})
    if "dataclass" in spec:
        return _import_type(spec["dataclass"])(**{k: _decode(v, arrays) for k, v in spec["fields"].items()})
    raise VectorsError(f"unknown value spec {sorted(spec)}")


def _array_refs(spec) -> list[dict]:
    """Every ``{"array": …}`` reference inside a spec, in order."""
    if isinstance(spec, dict):
        if "array" in spec:
            return [spec]
        return [r for v in spec.values() for r in _array_refs(v)]
    if isinstance(spec, list):
        return [r for v in spec for r in _array_refs(v)]
    return []


# ----------------------------------------------------------------------------- recording


class _Recorder:
    """An adapter that forwards every protocol method to the reference and records the call."""

    name = "reference (recording)"

    def __init__(self):
        self._ref = ReferenceAdapter()
        self.calls: list | None = None

    def __getattr__(self, method):
        if method not in ADAPTER_METHODS:
            raise AttributeError(method)
        fn = getattr(self._ref, method)
        signature = inspect.signature(fn)

        def record(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            inputs = {}
            for k, v in bound.arguments.items():  # **options spread out: a port gets every input by its name
                kind = signature.parameters[k].kind
                items = v.items() if kind is inspect.Parameter.VAR_KEYWORD else [(k, v)]
                inputs.update((name, _deep_copy(x)) for name, x in items)
            entry = {"method": method, "inputs": inputs}
            if self.calls is not None:
                self.calls.append(entry)
            try:
                out = fn(*args, **kwargs)
            except tuple(RAISES.values()) as exc:
                entry["raises"] = type(exc).__name__
                raise
            entry["outputs"] = _deep_copy(out)
            return out

        return record


def _deep_copy(v):
    if isinstance(v, np.ndarray):
        return v.copy()
    if isinstance(v, Mapping):
        return {k: _deep_copy(x) for k, x in v.items()}
    if isinstance(v, tuple) and hasattr(v, "_fields"):
        return type(v)(*(_deep_copy(x) for x in v))
    if isinstance(v, (list, tuple)):
        return type(v)(_deep_copy(x) for x in v)
    return v


def _record_clause(clause, *, max_examples: int, seed: int, profile: str) -> tuple[list, Any]:
    """Run ``clause`` as verify does against the recorder; returns (cases, the runner's result)."""
    from .clauses import TOLERANCES
    from .runner import _run_clause, _special_label

    recorder = _Recorder()
    cases: list = []
    labels = {}

    def make_labelled(make):
        def build():
            case = make()
            labels[id(case)] = make
            return case
        return build

    def recording_check(adapter, case, cmp):
        calls: list = []
        make = labels.get(id(case))
        cases.append({"case": _deep_copy(case), "calls": calls,
                      "special": None if make is None else {"label": _special_label(make),
                                                            "needs": getattr(make, "needs", None)}})
        recorder.calls = calls
        try:
            return clause.check(adapter, case, cmp)
        finally:
            recorder.calls = None

    wrapped = dataclasses.replace(clause, check=recording_check,
                                  examples=tuple(make_labelled(m) for m in clause.examples))
    result = _run_clause(wrapped, recorder, max_examples=max_examples, seed=seed, profile=TOLERANCES[profile],
                         explicit=True)
    return cases, result


# ------------------------------------------------------------------------------- export


def _dumps(obj) -> str:
    """Deterministic JSON: sorted keys, shortest round-trip floats, no NaN literals."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def _save_safetensors(path: Path, arrays: Mapping[str, np.ndarray], fmt: str) -> None:
    # one metadata entry: safetensors keeps metadata in a hash map, so a second key could change places
    path.write_bytes(save(dict(arrays), metadata={"format": fmt}))


def export_vectors(out, *, clauses: Iterable[str] | None = None, max_examples: int = 25, seed: int = 0,
                   profile: str = "float64", progress=None) -> dict:
    """Write the vectors of ``clauses`` (all by default) into the new directory ``out``.

    The directory is written beside ``out`` and renamed in (``repspec.core.files.atomic_directory``:
    an existing ``out`` must be one repspec wrote). Returns the manifest.
    """
    import hypothesis

    from .clauses import TOLERANCES
    from .runner import hypothesis_storage, select_clauses

    selected = select_clauses(clauses, max_examples=max_examples, seed=seed, profile=profile)
    tolerances = TOLERANCES[profile]
    entries, files = [], {}
    with hypothesis_storage():
        for clause in selected:
            cases, result = _record_clause(clause, max_examples=max_examples, seed=seed, profile=profile)
            if result.status not in ("pass",):
                raise RuntimeError(f"{clause.id}: the reference itself did not pass ({result.status}: "
                                   f"{result.message}); no vectors written")
            arrays: dict = {}
            enc = _Encoder(arrays)
            case_specs = []
            for i, rec in enumerate(cases):
                ck = f"case{i:04d}"
                calls = []
                for j, c in enumerate(rec["calls"]):
                    kk = f"{ck}/call{j:02d}"
                    call = {"method": c["method"],
                            "inputs": {k: enc.value(f"{kk}/in/{k}", v, output=False) for k, v in c["inputs"].items()}}
                    if "raises" in c:
                        call["raises"] = c["raises"]
                    else:
                        call["outputs"] = enc.value(f"{kk}/out", c["outputs"], output=True)
                    calls.append(call)
                case_specs.append({"id": ck, "special": rec["special"],
                                   "case": {k: enc.value(f"{ck}/case/{k}", v, output=False)
                                            for k, v in rec["case"].items()},
                                   "calls": calls})
            # the named tolerances the clause's tolerance text cites ("continuous (rtol 1e-9 …)")
            used = sorted(k for k, v in tolerances.items() if hasattr(v, "rtol")
                          and re.search(rf"\b{re.escape(k)}\b", clause.tolerance))
            entries.append({
                "id": clause.id, "section": clause.section, "anchor": f"docs/SPEC.md#{clause.id}",
                "title": clause.title, "checks": clause.checks, "tolerance": clause.tolerance,
                "tolerances": {k: {"rtol": tolerances[k].rtol, "atol": tolerances[k].atol,
                                   "reason": tolerances[k].reason} for k in used},
                "methods": list(clause.methods), "file": clause_file_name(clause.id), "cases": case_specs})
            files[clause_file_name(clause.id)] = arrays
            if progress is not None:
                progress(clause.id, len(case_specs), len(arrays))
    manifest = {
        "format": SCHEMA_ID, "schema_version": SCHEMA_VERSION,
        "generator": {"repspec": __version__, "numpy": np.__version__, "hypothesis": hypothesis.__version__},
        "seed": seed, "max_examples": max_examples, "profile": profile,
        "tie_eps": tolerances["tie_eps"], "clauses": entries,
    }
    with atomic_directory(out, kind="vectors", schema=SCHEMA_ID, schema_version=SCHEMA_VERSION) as tmp:
        for name, arrays in files.items():
            _save_safetensors(tmp / name, arrays, SCHEMA_ID)
        (tmp / MANIFEST).write_text(_dumps(manifest), encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------- reading


def _read_manifest(d: Path, schema: str, what: str) -> dict:
    path = d / MANIFEST
    if not path.is_file():
        raise VectorsError(f"{path}: missing ({what} manifest)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VectorsError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(m, dict) or m.get("format") != schema:
        raise VectorsError(f"{path}: not a {schema} manifest (format {m.get('format') if isinstance(m, dict) else None!r})")
    if m.get("schema_version") != SCHEMA_VERSION:
        raise VectorsError(f"{path}: schema version {m.get('schema_version')!r}, this repspec reads version "
                           f"{SCHEMA_VERSION} (export the vectors again with this repspec)")
    return m


def _load_safetensors(path: Path, clause_id: str) -> dict:
    if not path.is_file():
        raise VectorsError(f"{path}: missing (clause {clause_id})")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise VectorsError(f"{path}: corrupt safetensors file (clause {clause_id}): "
                           f"{' '.join(str(exc).split())}") from None


def _check_arrays(path: Path, clause_id: str, refs: list, arrays: Mapping[str, np.ndarray], *, what: str) -> None:
    for ref in refs:
        key = ref["array"]
        if key not in arrays:
            raise VectorsError(f"{path}: clause {clause_id}: array {key!r} missing ({what})")
        a = arrays[key]
        if str(a.dtype) != ref["dtype"] or list(a.shape) != ref["shape"]:
            raise VectorsError(f"{path}: clause {clause_id}: array {key!r} is {a.dtype} {list(a.shape)}, expected "
                               f"{ref['dtype']} {ref['shape']}")


def load_vectors(vectors_dir) -> tuple[dict, dict]:
    """``(manifest, {clause id: arrays})`` of a vectors directory, every file validated."""
    from .clauses import CLAUSES

    d = Path(vectors_dir)
    if not d.is_dir():
        raise VectorsError(f"{d}: not a directory (a vectors directory from `repspec vectors export`)")
    m = _read_manifest(d, SCHEMA_ID, "vectors")
    arrays = {}
    try:
        entries = list(m["clauses"])
        for entry in entries:
            cid = entry["id"]
            if cid not in CLAUSES:
                raise VectorsError(f"{d / MANIFEST}: clause {cid}: unknown to this repspec")
            path = d / entry["file"]
            arrays[cid] = _load_safetensors(path, cid)
            refs = [r for c in entry["cases"] for r in _array_refs(c)]
            _check_arrays(path, cid, refs, arrays[cid], what="the manifest lists it")
    except (KeyError, TypeError, AttributeError) as exc:
        raise VectorsError(f"{d / MANIFEST}: malformed ({type(exc).__name__}: {exc})") from None
    return m, arrays


def _load_results(results_dir, vectors: dict) -> tuple[dict, dict]:
    """``(results manifest, {clause id: arrays})``: every answered call's outputs present, shaped and typed
    as the expected ones."""
    d = Path(results_dir)
    if not d.is_dir():
        raise VectorsError(f"{d}: not a directory (a port's results)")
    m = _read_manifest(d, RESULTS_SCHEMA_ID, "results")
    by_id = {e["id"]: e for e in vectors["clauses"]}
    answered = m.get("clauses")
    if not isinstance(answered, dict):
        raise VectorsError(f"{d / MANIFEST}: 'clauses' must be an object clause id -> {{file, calls}}")
    arrays = {}
    for cid, entry in answered.items():
        if cid not in by_id:
            raise VectorsError(f"{d / MANIFEST}: clause {cid}: not in the vectors")
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise VectorsError(f"{d / MANIFEST}: clause {cid}: needs a 'file'")
        notes = entry.get("calls", {})
        if not isinstance(notes, dict):
            raise VectorsError(f"{d / MANIFEST}: clause {cid}: 'calls' must be an object call id -> note")
        path = d / entry["file"]
        arrays[cid] = got = _load_safetensors(path, cid)
        expected_keys = set()
        for case in by_id[cid]["cases"]:
            for j, call in enumerate(case["calls"]):
                note = notes.get(f"{case['id']}/call{j:02d}", {})
                if not isinstance(note, dict):
                    raise VectorsError(f"{d / MANIFEST}: clause {cid}: note of {case['id']}/call{j:02d} must be an "
                                       f"object")
                if "declined" in note or "raised" in note:
                    if "raised" in note and note["raised"] not in RAISES:
                        raise VectorsError(f"{d / MANIFEST}: clause {cid}: {case['id']}/call{j:02d} raised "
                                           f"{note['raised']!r}; one of {sorted(RAISES)}")
                    continue
                if "outputs" not in call:  # the reference raised; a port that answered must write the outputs
                    raise VectorsError(f"{d / MANIFEST}: clause {cid}: {case['id']}/call{j:02d} must raise "
                                       f"{call['raises']} (note it as 'raised') or be declined")
                refs = _array_refs(call["outputs"])
                expected_keys.update(r["array"] for r in refs)
                _check_arrays(path, cid, refs, got, what="an answered call's output")
        extra = sorted(set(got) - expected_keys)
        if extra:
            raise VectorsError(f"{path}: clause {cid}: unexpected array {extra[0]!r} (not an output of an answered "
                               f"call)")
    return m, arrays


# ------------------------------------------------------------------------------- replay


class _Replay:
    """An adapter that answers a stored case's calls, in the recorded order, with the port's outputs."""

    def __init__(self, name: str, calls: list, notes: Mapping[str, Any], case_id: str, arrays):
        self.name, self._calls, self._notes, self._case_id, self._arrays = name, calls, notes, case_id, arrays
        self._next = 0

    def __getattr__(self, method):
        if method not in ADAPTER_METHODS:
            raise AttributeError(method)

        def answer(*args, **kwargs):
            j = self._next
            if j >= len(self._calls) or self._calls[j]["method"] != method:
                raise _ReplayDiverged(f"the clause called {method} as call {j}, the vectors recorded "
                                      + (self._calls[j]["method"] if j < len(self._calls) else "no further call"))
            self._next += 1
            note = self._notes.get(f"{self._case_id}/call{j:02d}", {})
            if "declined" in note:
                raise NotProvided(str(note["declined"]))
            if "raised" in note:
                raise RAISES[note["raised"]](f"the port raised {note['raised']}"
                                             + (f": {note['message']}" if note.get("message") else ""))
            return _decode(self._calls[j]["outputs"], self._arrays)

        return answer


class _ReplayDiverged(Exception):
    """The clause asked for a call the vectors did not record (a harness error)."""


def check_results(vectors_dir, results_dir, *, clauses: Iterable[str] | None = None):
    """Compare a port's results with the vectors; returns the runner's ``Report`` (``verify``'s table)."""
    from .clauses import CLAUSES, TOLERANCES, AdapterRaised, Ambiguous, Checker, ErrorStats, Mismatch, get_clause
    from .runner import DECLINE_SIGNIFICANCE, FAIL, PASS, SKIP, ClauseResult, Report, _count_text, \
        _declines_most, _record_failure

    vectors, expected = load_vectors(vectors_dir)
    results, got = _load_results(results_dir, vectors)
    impl = str(results.get("implementation") or Path(results_dir).name)
    profile_name = vectors.get("profile", "float64")
    if profile_name not in TOLERANCES:
        raise VectorsError(f"{Path(vectors_dir) / MANIFEST}: unknown tolerance profile {profile_name!r}")
    profile = TOLERANCES[profile_name]
    wanted = None if clauses is None else {get_clause(c).id for c in clauses}
    out = []
    for entry in vectors["clauses"]:
        cid = entry["id"]
        if wanted is not None and cid not in wanted:
            continue
        clause = CLAUSES[cid]
        res = ClauseResult(cid, clause.section, clause.title, PASS, tolerance=clause.tolerance)
        out.append(res)
        if cid not in got:
            res.status, res.message = SKIP, f"not provided: {impl} wrote no results for it"
            res.max_abs_err = res.max_rel_err = None
            continue
        notes = results["clauses"][cid].get("calls", {})
        stats = ErrorStats()
        declined, ties = Counter(), Counter()
        special_declined, declined_generated, generated, ties_generated = [], 0, 0, 0
        t0 = time.perf_counter()
        for case_entry in entry["cases"]:
            case = {k: _decode(v, expected[cid]) for k, v in case_entry["case"].items()}
            is_special = case_entry["special"] is not None
            generated += not is_special
            replay = _Replay(impl, case_entry["calls"], notes, case_entry["id"], got[cid])
            try:
                clause.check(replay, case, Checker(profile, stats))
            except NotProvided as exc:
                declined[str(exc) or "NotProvided"] += 1
                declined_generated += not is_special
                if is_special:
                    special_declined.append((case_entry, case))
                continue
            except Ambiguous as exc:
                ties[str(exc) or "near a decision boundary"] += 1
                ties_generated += not is_special
                continue
            except (Mismatch, AdapterRaised) as exc:
                _record_failure(res, {"case": case, "exc": exc}, exc, set())
            except Exception as exc:  # noqa: BLE001 - a bug of the suite (or vectors from another repspec)
                _record_failure(res, {"case": case, "exc": exc, "harness": True}, exc, set())
            else:
                if clause.case_label is not None:
                    labels = clause.case_label[1](case)
                    for label in [labels] if isinstance(labels, str) else labels:
                        res.checked_by[label] = res.checked_by.get(label, 0) + 1
                res.examples += 1
                continue
            res.counterexample_kind = f"stored {case_entry['id']}" + (
                f", special: {case_entry['special']['label']}" if is_special else "")
            break
        res.seconds = time.perf_counter() - t0
        res.declined, res.tie_discarded = sum(declined.values()), sum(ties.values())
        res.declined_reasons, res.tie_reasons = dict(declined), dict(ties)
        res.special_declined = [c["special"]["label"] for c, _ in special_declined]
        res.checked_by = dict(sorted(res.checked_by.items()))
        if res.status != PASS:
            continue
        res.max_abs_err, res.max_rel_err = stats.max_abs, stats.max_rel
        core = [(c, case) for c, case in special_declined if not c["special"]["needs"]]
        if res.declined and res.examples == 0:
            res.status = SKIP
            res.message = f"not provided for any case: declined all {res.declined} ({_count_text(declined)})"
        elif _declines_most(declined_generated, generated - ties_generated):
            res.status, res.quantity = FAIL, "coverage (declined cases)"
            res.message = (f"the port declined most of the clause: {declined_generated} of "
                           f"{generated - ties_generated} generated cases (binomial test, p < "
                           f"{DECLINE_SIGNIFICANCE}; docs/porting.md, 'Declining an option')")
        elif core:
            res.status, res.quantity = FAIL, "special values declined"
            res.counterexample, res.counterexample_kind = core[0][1], f"stored {core[0][0]['id']}, declined"
            res.message = (f"the port declined the clause's special-value case(s) "
                           f"{', '.join(c['special']['label'] for c, _ in core)}, which need no optional feature")
        elif res.declined:
            res.message = f"{res.declined} case(s) declined by the port ({_count_text(declined)})"
        if res.status != PASS:
            res.max_abs_err = res.max_rel_err = None
    return Report(impl, out, {"max_examples": vectors.get("max_examples"), "seed": vectors.get("seed"),
                              "profile": profile_name, "clauses": [r.clause_id for r in out],
                              "vectors": os.fspath(vectors_dir), "results": os.fspath(results_dir)})


# ------------------------------------------------------------------ a Python port's results


def results_from_adapter(vectors_dir, adapter) -> tuple[dict, dict]:
    """What a port computes: every recorded call run on ``adapter`` from the recorded inputs.

    Returns ``(results manifest, {file name: arrays})`` ready for :func:`write_results`. A call the
    adapter declines (``NotProvided``) is noted as declined; one that raises ``ValueError``/``TypeError``
    as raised; a clause whose methods the adapter lacks is left out.
    """
    from .runner import _provided

    vectors, expected = load_vectors(vectors_dir)
    clauses, files = {}, {}
    for entry in vectors["clauses"]:
        if not all(_provided(adapter, m) for m in entry["methods"]):
            continue
        arrays, notes = {}, {}
        for case in entry["cases"]:
            for j, call in enumerate(case["calls"]):
                cid = f"{case['id']}/call{j:02d}"
                kwargs = {k: _decode(v, expected[entry["id"]]) for k, v in call["inputs"].items()}
                fn = getattr(adapter, call["method"])
                try:
                    outputs = fn(**kwargs)
                except NotProvided as exc:
                    notes[cid] = {"declined": str(exc) or "NotProvided"}
                    continue
                except tuple(RAISES.values()) as exc:
                    notes[cid] = {"raised": type(exc).__name__}
                    continue
                if "outputs" not in call:
                    raise VectorsError(f"clause {entry['id']}: {cid} must raise {call['raises']}, the adapter "
                                       f"returned a value")
                _fill(call["outputs"], outputs, arrays)
        clauses[entry["id"]] = {"file": entry["file"], "calls": notes}
        files[entry["file"]] = arrays
    name = getattr(adapter, "name", type(adapter).__name__)
    return {"format": RESULTS_SCHEMA_ID, "schema_version": SCHEMA_VERSION, "implementation": name,
            "clauses": clauses}, files


def _fill(spec, value, arrays: dict) -> None:
    """Put ``value``'s arrays at the keys of the expected output ``spec`` (same structure)."""
    if isinstance(spec, dict) and "array" in spec:
        arrays[spec["array"]] = np.array(value, dtype=spec["dtype"], order="C")
    elif isinstance(spec, dict) and "dict" in spec:
        for k, s in spec["dict"].items():
            _fill(s, value[k], arrays)
    elif isinstance(spec, dict) and ("list" in spec or "tuple" in spec):
        for s, v in zip(spec.get("list", spec.get("tuple")), value):
            _fill(s, v, arrays)
    elif isinstance(spec, dict) and "fields" in spec:
        for k, s in spec["fields"].items():
            _fill(s, getattr(value, k), arrays)


def write_results(results_dir, manifest: dict, files: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write a port's results directory (atomic; the output rule of ``repspec.core.files``)."""
    with atomic_directory(results_dir, kind="vectors-results", schema=RESULTS_SCHEMA_ID) as tmp:
        for name, arrays in files.items():
            _save_safetensors(tmp / name, arrays, RESULTS_SCHEMA_ID)
        (tmp / MANIFEST).write_text(_dumps(manifest), encoding="utf-8")
