"""Issue 6: the conformance suite for ports (repspec.conformance).

- the selected implementation (``--repspec-impl`` / ``REPSPEC_IMPL``, default ``torch``) passes
  every clause — one test per clause;
- the reference-backed ``ReferenceAdapter`` passes every clause (the suite is consistent);
- every deliberately broken adapter (tests/broken_adapters.py) is caught by its expected clause,
  by nothing implausible, and the report names the clause, the quantity and a counter-example
  (also from the generated cases alone, shrunk);
- reports print and serialize; bad ``--impl`` specs fail clearly; adapters may leave methods out.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import settings

from repspec.conformance import (
    CLAUSES,
    AdapterBase,
    AdapterLoadError,
    NotProvided,
    ReferenceAdapter,
    clause_ids,
    get_clause,
    load_adapter,
    main,
    run_conformance,
    verify,
)
from repspec.conformance.pytest_plugin import (
    check_clause,
    get_adapter,
    selected_impl,
    selected_max_examples,
    selected_seed,
)

from .broken_adapters import BROKEN

#: cases per clause here: the Hypothesis profile's (ci: 12), capped so the file stays fast
N = min(settings().max_examples, 25)


# ------------------------------------------------------------- the implementation under test


@pytest.mark.parametrize("clause_id", clause_ids(), ids=[c.lstrip("§") for c in clause_ids()])
def test_selected_impl_conforms(clause_id, request):
    """``--repspec-impl`` / ``REPSPEC_IMPL`` (default: the torch adapter) passes every clause."""
    impl = selected_impl(request.config)
    if impl == "torch":
        pytest.importorskip("torch")
    check_clause(get_adapter(impl), clause_id, max_examples=selected_max_examples(request.config),
                 seed=selected_seed(request.config), impl=impl)


def test_torch_adapter_passes_all_clauses(request):
    if selected_impl(request.config) == "torch":
        pytest.skip("covered clause by clause by test_selected_impl_conforms")
    pytest.importorskip("torch")
    report = run_conformance(load_adapter("torch"), max_examples=N)
    assert report.complete, str(report)


def test_reference_adapter_passes_all_clauses():
    report = run_conformance(ReferenceAdapter(), max_examples=N)
    assert report.complete, str(report)
    assert [r.clause_id for r in report.results] == list(CLAUSES)
    assert all(r.examples >= 2 for r in report.results)


# -------------------------------------------------------------------- broken adapters


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_adapter_is_caught_by_the_expected_clause(name):
    b = BROKEN[name]
    report = run_conformance(b.adapter(), max_examples=N)
    failed = set(report.failed())
    assert b.expected in failed, f"{name} was not caught by {b.expected}:\n{report}"
    assert failed <= b.plausible, f"{name} failed implausible clauses {sorted(failed - b.plausible)}:\n{report}"
    res = report[b.expected]
    assert res.status == "FAIL" and res.quantity and res.counterexample is not None
    text = str(report)
    assert f"FAIL {b.expected}" in text and "counter-example" in text and res.quantity in text
    assert "max abs err" in res.message
    data = json.loads(report.to_json())
    entry = next(c for c in data["clauses"] if c["clause_id"] == b.expected)
    assert entry["status"] == "FAIL" and entry["counterexample"] and entry["quantity"] == res.quantity
    assert data["ok"] is False


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_adapter_is_found_and_shrunk_by_generated_cases(name):
    """Without the hand-written edge cases, the Hypothesis strategies alone find the bug and shrink it."""
    b = BROKEN[name]
    res = run_conformance(b.adapter(), clauses=[b.expected], max_examples=40, explicit_examples=False).results[0]
    assert res.status == "FAIL", f"{name}: generated cases did not catch it ({res.examples} cases)"
    assert res.counterexample_kind == "shrunk" and res.counterexample is not None


def test_shrunk_counterexample_is_minimal_for_the_first_step_bug():
    res = run_conformance(BROKEN["first_step_dampened"].adapter(), clauses=["§3.repopt-sgd-step"], max_examples=40,
                          explicit_examples=False).results[0]
    case = res.counterexample
    # what the bug needs and nothing more: a first step, momentum, dampening; the smallest shape
    assert case["momentum_buffer"] is None and case["momentum"] > 0 and case["dampening"] > 0
    assert case["shape"] == (1, 1, 3, 3) and case["weight_decay"] == 0.0 and case["seed"] == 0


# --------------------------------------------------------------------------- the report


def test_report_table_and_json_roundtrip():
    report = run_conformance(ReferenceAdapter(), clauses=["§3.grad-mult", "5.ste"], max_examples=3)
    text = str(report)
    assert "§3.grad-mult" in text and "§5.ste" in text and "2/2 clauses pass" in text
    data = json.loads(report.to_json())
    assert data["ok"] and data["complete"] and data["settings"]["seed"] == 0
    assert [c["clause_id"] for c in data["clauses"]] == ["§3.grad-mult", "§5.ste"]
    assert all(c["status"] == "pass" and c["counterexample"] is None for c in data["clauses"])


def test_same_seed_same_cases_and_counterexample():
    a = run_conformance(BROKEN["zero_point_not_rounded"].adapter(), clauses=["§5.uniform-activation"],
                        max_examples=10, explicit_examples=False).results[0]
    b = run_conformance(BROKEN["zero_point_not_rounded"].adapter(), clauses=["§5.uniform-activation"],
                        max_examples=10, explicit_examples=False).results[0]
    assert a.to_dict() | {"seconds": 0} == b.to_dict() | {"seconds": 0}


class _PartialAdapter(AdapterBase):
    """Provides only the Grad Mult mask; declines the AdamW exponent (a per-case NotProvided)."""

    name = "partial"

    def grad_mult_mask(self, scale_conv, scale_1x1, in_channels, *, identity, exponent):
        if exponent != 2:
            raise NotProvided("exponent 1 (AdamW) is not offered")
        return ReferenceAdapter().grad_mult_mask(scale_conv, scale_1x1, in_channels, identity=identity,
                                                 exponent=exponent)


def test_missing_methods_are_skipped_not_failed():
    report = run_conformance(_PartialAdapter(), max_examples=6)
    assert report.ok and not report.complete
    assert report.passed() == ["§3.grad-mult"]
    assert report["3.grad-mult"].not_compared > 0 and "declined" in report["3.grad-mult"].message
    assert report["§2.fusion"].status == "skipped" and "fuse_repvgg_block" in report["§2.fusion"].message
    assert report["§3.theorem"].message == "not provided: repopt_sgd_step"


class _RaisingAdapter(ReferenceAdapter):
    name = "raises"

    def grad_mult_mask(self, *a, **k):
        raise RuntimeError("kernel launch failed")


class _MutatingAdapter(ReferenceAdapter):
    name = "mutates"

    def repopt_sgd_step(self, param, grad, momentum_buffer, **kw):
        grad *= 2.0  # in place: forbidden
        return super().repopt_sgd_step(param, grad / 2.0, momentum_buffer, **kw)


def test_adapter_exceptions_and_mutation_are_failures():
    r = run_conformance(_RaisingAdapter(), clauses=["§3.grad-mult"], max_examples=3)["§3.grad-mult"]
    assert r.status == "FAIL" and "kernel launch failed" in r.message and r.quantity == "grad_mult_mask"
    r = run_conformance(_MutatingAdapter(), clauses=["§3.repopt-sgd-step"], max_examples=3)["§3.repopt-sgd-step"]
    assert r.status == "FAIL" and "mutated" in r.message


def test_get_clause_accepts_ids_without_section_sign():
    assert get_clause("3.grad-mult") is get_clause("§3.grad-mult") is CLAUSES["§3.grad-mult"]
    with pytest.raises(KeyError, match="unknown clause"):
        get_clause("§9.nothing")


# ----------------------------------------------------------------------- entry points


def test_load_adapter_aliases_and_bad_specs():
    assert isinstance(load_adapter("reference"), ReferenceAdapter)
    assert isinstance(load_adapter("repspec.conformance.adapter:ReferenceAdapter"), ReferenceAdapter)
    for bad, msg in (("nocolon", "one colon"), ("no_such_module_xyz:A", "cannot import"),
                     ("repspec.conformance.adapter:Nope", "no attribute"), ("repspec.conformance:CLAUSES", "not an"),
                     ("", "package.module:Adapter")):
        with pytest.raises(AdapterLoadError, match=msg):
            load_adapter(bad)


def test_verify_and_main_exit_codes(capsys):
    out = io.StringIO()
    assert verify("reference", clauses=["§3.grad-mult"], max_examples=3, out=out) == 0
    assert "1/1 clauses pass" in out.getvalue()
    assert verify("no_such_module_xyz:A", out=out) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    spec = "tests.broken_adapters:NoIdentityPlusOneAdapter"
    assert main(["--impl", spec, "--clauses", "3.grad-mult", "--max-examples", "3"]) == 1
    text = capsys.readouterr().out
    assert "FAIL §3.grad-mult" in text and f"reproduce: python -m repspec.conformance --impl {spec}" in text
    assert main(["--list"]) == 0 and "§5.kmeans-ties" in capsys.readouterr().out
    assert main(["--impl", "reference", "--clauses", "§9.x"]) == 2


def test_python_dash_m_entry_point(tmp_path):
    path = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "repspec.conformance", "--impl", "reference", "--clauses",
                           "§2.fusion,§5.kmeans-ties", "--max-examples", "2", "--json", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2/2 clauses pass" in proc.stdout
    assert json.loads(path.read_text())["complete"] is True


def test_strict_fails_on_skipped_clauses(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "partial_port.py").write_text(
        "from repspec.conformance import AdapterBase, ReferenceAdapter\n"
        "class Port(AdapterBase):\n"
        "    name = 'port'\n"
        "    kmeans_fake_quantize = ReferenceAdapter.kmeans_fake_quantize\n")
    assert main(["--impl", "partial_port:Port", "--max-examples", "2"]) == 0
    assert main(["--impl", "partial_port:Port", "--max-examples", "2", "--strict"]) == 1


def test_numpy_inputs_reach_the_adapter_as_float64():
    seen = []

    class Spy(ReferenceAdapter):
        def fuse_repvgg_block(self, params, buffers, **kw):
            seen.extend(v.dtype for v in list(params.values()) + list(buffers.values()))
            return super().fuse_repvgg_block(params, buffers, **kw)

    run_conformance(Spy(), clauses=["§2.fusion"], max_examples=2)
    assert seen and all(d == np.float64 for d in seen)
