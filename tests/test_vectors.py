"""Conformance vectors (docs/vectors.md): export, a port's results, check, and the bad inputs.

One small bundle (every clause, 3 generated cases each plus the special cases) is exported once
per module; tests that damage it work on copies. The reference's own results must pass every
clause, a broken adapter's must fail its clause, and every bad file gets one line naming the file
and the clause, exit status 2, and leaves the vectors directory as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from repspec.cli import main
from repspec.conformance.adapter import ReferenceAdapter
from repspec.conformance.runner import FAIL, PASS, SKIP
from repspec.conformance.torch_adapter import TorchAdapter
from repspec.conformance.vectors import (
    RECORD_TYPES,
    SCHEMA_VERSION,
    VectorsError,
    check_results,
    export_vectors,
    load_vectors,
    results_from_adapter,
    write_results,
)
from tests.broken_adapters import FusionIgnoresGroupsIdentityAdapter, WeightDecayMaskedAdapter

MAX_EXAMPLES = 3


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors") / "v"
    export_vectors(out, max_examples=MAX_EXAMPLES, seed=0)
    return out


@pytest.fixture(scope="module")
def reference_results(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "r"
    write_results(out, *results_from_adapter(bundle, ReferenceAdapter()))
    return out


def _tree_digest(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d: Path, m: dict) -> None:
    (d / "manifest.json").write_text(json.dumps(m))


# ------------------------------------------------------------------------------ the format


def test_bundle_holds_every_clause_with_anchor_tolerance_and_seed(bundle):
    from repspec.conformance.clauses import CLAUSES

    m, arrays = load_vectors(bundle)
    assert m["format"] == "repspec-vectors" and m["schema_version"] == SCHEMA_VERSION
    assert m["seed"] == 0 and m["max_examples"] == MAX_EXAMPLES and m["profile"] == "float64"
    assert [c["id"] for c in m["clauses"]] == list(CLAUSES)
    for c in m["clauses"]:
        assert c["anchor"] == f"docs/SPEC.md#{c['id']}" and c["tolerance"] and c["cases"], c["id"]
        assert all(call["method"] in c["methods"] for case in c["cases"] for call in case["calls"]), c["id"]
    # the tolerances a clause cites are carried with their reasons
    fusion = next(c for c in m["clauses"] if c["id"] == "§2.fusion")
    assert fusion["tolerances"] and all(t["reason"] for t in fusion["tolerances"].values())
    # only the three dtypes a port must read
    assert {str(a.dtype) for per in arrays.values() for a in per.values()} <= {"float64", "int64", "bool"}


def test_export_is_byte_identical_for_the_same_seed(tmp_path):
    clauses = ["§2.fusion", "§3.repopt-sgd-step", "§5.calibrators"]
    export_vectors(tmp_path / "a", clauses=clauses, max_examples=4, seed=7)
    export_vectors(tmp_path / "b", clauses=clauses, max_examples=4, seed=7)
    export_vectors(tmp_path / "c", clauses=clauses, max_examples=4, seed=8)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_record_types_are_a_fixed_table_not_imports(tmp_path, bundle):
    assert {"BlockSpec", "NetworkSpec", "SGDSpec", "QATSpec", "CategoryStats"} <= set(RECORD_TYPES)
    d = _copy(bundle, tmp_path / "v")
    text = (d / "manifest.json").read_text().replace('"dataclass": "BlockSpec"', '"dataclass": "os:system"', 1)
    (d / "manifest.json").write_text(text)
    write_results(tmp_path / "r", *results_from_adapter(bundle, ReferenceAdapter()))
    with pytest.raises(VectorsError, match="unknown record type 'os:system'"):
        results_from_adapter(d, ReferenceAdapter())


# ------------------------------------------------------------------------------- verdicts


def test_reference_results_pass_every_clause(bundle, reference_results):
    report = check_results(bundle, reference_results)
    assert report.ok and report.complete, str(report)
    assert all(r.status == PASS and r.examples > 0 for r in report.results)


def test_torch_impl_results_pass_every_clause(bundle, tmp_path):
    write_results(tmp_path / "r", *results_from_adapter(bundle, TorchAdapter()))
    report = check_results(bundle, tmp_path / "r")
    assert report.ok and report.complete, str(report)


@pytest.mark.parametrize("adapter, clause", [(FusionIgnoresGroupsIdentityAdapter(), "§2.fusion"),
                                             (WeightDecayMaskedAdapter(), "§3.repopt-sgd-step")])
def test_broken_adapter_fails_its_clause_with_a_stored_counterexample(bundle, tmp_path, adapter, clause):
    write_results(tmp_path / "r", *results_from_adapter(bundle, adapter))
    report = check_results(bundle, tmp_path / "r", clauses=[clause, "§5.ste"])
    assert report[clause].status == FAIL and report[clause].counterexample_kind.startswith("stored case")
    assert report["§5.ste"].status == PASS


def test_unanswered_clauses_are_skipped_and_declined_calls_counted(bundle, reference_results, tmp_path):
    r = _copy(reference_results, tmp_path / "r")
    m = _manifest(r)
    m["clauses"] = {k: v for k, v in m["clauses"].items() if k in ("§5.ste", "§5.uniform-weight")}
    vm = _manifest(bundle)
    ste = next(c for c in vm["clauses"] if c["id"] == "§5.ste")
    generated = next(c for c in ste["cases"] if c["special"] is None)
    # a declined call's outputs must not be in the file
    arrays = load_file(str(r / m["clauses"]["§5.ste"]["file"]))
    for j, call in enumerate(generated["calls"]):
        m["clauses"]["§5.ste"]["calls"][f"{generated['id']}/call{j:02d}"] = {"declined": "not today"}
        for key in [k for k in arrays if k.startswith(f"{generated['id']}/call{j:02d}/")]:
            del arrays[key]
    save_file(arrays, str(r / m["clauses"]["§5.ste"]["file"]))
    _write_manifest(r, m)
    report = check_results(bundle, r)
    assert report.ok and not report.complete
    assert report["§5.ste"].declined == 1 and report["§5.ste"].status == PASS
    assert report["§2.fusion"].status == SKIP and "not provided" in report["§2.fusion"].message


# ------------------------------------------------------------------------- the command line


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_check_prints_verify_table_and_writes_reports(bundle, reference_results, tmp_path, capsys):
    before = _tree_digest(bundle)
    code, out, err = _run(["vectors", "check", str(bundle), str(reference_results), "--clauses", "§2.fusion,5.ste",
                           "--json", str(tmp_path / "r.json"), "--junit-xml", str(tmp_path / "r.xml")], capsys)
    assert code == 0, err
    assert "§2.fusion" in out and "2/2 clauses pass" in out
    assert json.loads((tmp_path / "r.json").read_text())["format"].startswith("repspec")
    assert (tmp_path / "r.xml").read_text().count("<testcase") == 2
    assert _tree_digest(bundle) == before


def test_cli_export_answer_check_round_trip(tmp_path, capsys):
    v, r = tmp_path / "v", tmp_path / "r"
    assert _run(["vectors", "export", str(v), "--clauses", "§3.grad-mult", "--max-examples", "2"], capsys)[0] == 0
    assert _run(["vectors", "answer", str(v), str(r), "--impl", "tests.broken_adapters:SwappedScalesAdapter"],
                capsys)[0] == 0
    code, out, _ = _run(["vectors", "check", str(v), str(r)], capsys)
    assert code == 1 and "fail" in out
    # DIR exists and repspec wrote it: replaced only with --overwrite
    code, _, err = _run(["vectors", "export", str(v), "--clauses", "§3.grad-mult"], capsys)
    assert code == 2 and "--overwrite" in err
    assert _run(["vectors", "export", str(v), "--clauses", "§3.grad-mult", "--max-examples", "2", "--overwrite"],
                capsys)[0] == 0


def test_cli_export_refuses_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = _run(["vectors", "export", str(tmp_path / "mine")], capsys)
    assert code == 2 and err.count("\n") == 1 and "repspec did not write" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cli_refuses_reports_inside_the_vectors_or_results(bundle, reference_results, capsys):
    for inside in (bundle / "report.json", reference_results / "report.json"):
        code, _, err = _run(["vectors", "check", str(bundle), str(reference_results), "--json", str(inside)], capsys)
        assert code == 2 and err.count("\n") == 1 and "nothing is written there" in err
        assert not inside.exists()


def _damage_vectors(kind: str, d: Path) -> str:
    """Damage the vectors copy ``d``; returns the file the message must name."""
    m = _manifest(d)
    fusion = next(c for c in m["clauses"] if c["id"] == "§2.fusion")
    path = d / fusion["file"]
    if kind == "missing file":
        path.unlink()
    elif kind == "corrupt file":
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "missing manifest":
        (d / "manifest.json").unlink()
        return "manifest.json"
    elif kind == "corrupt manifest":
        (d / "manifest.json").write_text('{"format": "repspec-vectors", ')
        return "manifest.json"
    elif kind == "schema mismatch":
        m["schema_version"] = SCHEMA_VERSION + 1
        _write_manifest(d, m)
        return "manifest.json"
    elif kind == "array missing":
        arrays = load_file(str(path))
        del arrays[sorted(arrays)[0]]
        save_file(arrays, str(path))
    return fusion["file"]


@pytest.mark.parametrize("kind", ["missing file", "corrupt file", "missing manifest", "corrupt manifest",
                                  "schema mismatch", "array missing"])
def test_bad_vectors_get_one_line_naming_file_and_clause(kind, bundle, reference_results, tmp_path, capsys):
    d = _copy(bundle, tmp_path / "v")
    named = _damage_vectors(kind, d)
    before = _tree_digest(d)
    code, out, err = _run(["vectors", "check", str(d), str(reference_results), "--json", str(tmp_path / "r.json")],
                          capsys)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and named in err, err
    if named != "manifest.json":
        assert "§2.fusion" in err
    assert _tree_digest(d) == before and not (tmp_path / "r.json").exists()


def _damage_results(kind: str, r: Path) -> str:
    m = _manifest(r)
    entry = m["clauses"]["§2.fusion"]
    path = r / entry["file"]
    arrays = load_file(str(path))
    key = sorted(k for k in arrays if arrays[k].ndim >= 1)[0]
    if kind == "wrong shape":
        arrays[key] = np.concatenate([arrays[key].ravel(), [0.0]]).astype(arrays[key].dtype)
    elif kind == "wrong dtype":
        arrays[key] = arrays[key].astype(np.float32)
    elif kind == "unexpected array":
        arrays["case9999/call00/out"] = np.zeros(1)
    elif kind == "schema mismatch":
        m["schema_version"] = SCHEMA_VERSION + 1
        _write_manifest(r, m)
        return "manifest.json"
    elif kind == "missing file":
        path.unlink()
        return entry["file"]
    save_file(arrays, str(path))
    return entry["file"]


@pytest.mark.parametrize("kind", ["wrong shape", "wrong dtype", "unexpected array", "schema mismatch",
                                  "missing file"])
def test_bad_results_get_one_line_naming_file_and_clause(kind, bundle, reference_results, tmp_path, capsys):
    r = _copy(reference_results, tmp_path / "r")
    named = _damage_results(kind, r)
    before = _tree_digest(bundle)
    code, out, err = _run(["vectors", "check", str(bundle), str(r)], capsys)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and named in err, err
    if named != "manifest.json":
        assert "§2.fusion" in err
    assert _tree_digest(bundle) == before


def test_cli_check_needs_existing_directories(tmp_path, capsys):
    code, _, err = _run(["vectors", "check", str(tmp_path / "nope"), str(tmp_path)], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
