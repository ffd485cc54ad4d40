"""The conformance report's machine-readable forms: ``--junit-xml`` (one test case per clause) beside ``--json``."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("hypothesis")

from repspec.conformance import run_conformance  # noqa: E402
from repspec.conformance.runner import verify  # noqa: E402

from .broken_adapters import BROKEN  # noqa: E402

CLAUSES = ["§3.grad-mult", "§5.uniform-weight"]


def _junit(report) -> ET.Element:
    return ET.fromstring(report.to_junit_xml().encode("utf-8"))


def test_junit_has_one_test_case_per_clause_and_passes_for_the_reference():
    from repspec.conformance.adapter import ReferenceAdapter

    report = run_conformance(ReferenceAdapter(), clauses=CLAUSES, max_examples=3)
    suite = _junit(report)
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == CLAUSES
    assert suite.get("tests") == "2" and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert all(c.find("failure") is None and c.find("skipped") is None for c in cases)
    checked = {c.get("name"): int(c.find("properties/property[@name='checked']").get("value")) for c in cases}
    assert checked == {r.clause_id: r.examples for r in report.results} and min(checked.values()) > 0


def test_junit_names_the_failing_clause_with_its_counter_example():
    broken = next(b for b in BROKEN.values() if b.expected == "§3.grad-mult")
    report = run_conformance(broken.adapter(), clauses=CLAUSES, max_examples=10)
    suite = _junit(report)
    assert suite.get("failures") == "1"
    by_name = {c.get("name"): c for c in suite.findall("testcase")}
    failure = by_name["§3.grad-mult"].find("failure")
    assert failure is not None and by_name["§5.uniform-weight"].find("failure") is None
    assert "counter-example" in failure.text and "reproduce" in failure.text
    assert failure.get("message")


def test_junit_marks_clauses_the_adapter_does_not_provide_as_skipped():
    from repspec.conformance.adapter import AdapterBase, ReferenceAdapter

    class OnlyGradMult(AdapterBase):
        name = "only grad mult"
        grad_mult_mask = ReferenceAdapter.grad_mult_mask

    suite = _junit(run_conformance(OnlyGradMult(), clauses=CLAUSES, max_examples=2))
    by_name = {c.get("name"): c for c in suite.findall("testcase")}
    assert by_name["§5.uniform-weight"].find("skipped") is not None
    assert by_name["§3.grad-mult"].find("skipped") is None and suite.get("skipped") == "1"


def test_verify_writes_json_and_junit_side_by_side(tmp_path):
    json_path, xml_path = tmp_path / "r.json", tmp_path / "r.xml"
    assert verify("reference", clauses=CLAUSES, max_examples=2, json_path=str(json_path),
                  junit_xml_path=str(xml_path), out=io.StringIO()) == 0
    assert json_path.read_text().startswith("{") and ET.parse(xml_path).getroot().tag == "testsuite"


def test_junit_path_is_checked_before_the_run(tmp_path, capsys):
    assert verify("reference", clauses=CLAUSES, max_examples=2, junit_xml_path=str(tmp_path)) == 2
    assert "--junit-xml" in capsys.readouterr().err
    same = str(tmp_path / "r")
    assert verify("reference", clauses=CLAUSES, max_examples=2, json_path=same, junit_xml_path=same) == 2
    assert "different files" in capsys.readouterr().err


def test_cli_replaces_its_own_reports_only_with_overwrite(tmp_path, capsys):
    from repspec.cli import main

    json_path, xml_path = tmp_path / "r.json", tmp_path / "r.xml"
    argv = ["verify", "--impl", "reference", "--clauses", "§3.grad-mult", "--max-examples", "2",
            "--json", str(json_path), "--junit-xml", str(xml_path)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    capsys.readouterr()
    # a user's XML of the same name is never replaced
    xml_path.write_text('<testsuite name="my own suite"/>')
    assert main(argv + ["--overwrite"]) == 2 and "--junit-xml" in capsys.readouterr().err
    assert xml_path.read_text() == '<testsuite name="my own suite"/>'
