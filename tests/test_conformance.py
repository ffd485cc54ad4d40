"""The conformance suite for ports (repspec.conformance).

- the selected implementation (``--repspec-impl`` / ``REPSPEC_IMPL``, default ``torch``) passes
  every clause — one test per clause;
- the reference-backed ``ReferenceAdapter`` passes every clause (the suite is consistent);
- every deliberately broken adapter (tests/broken_adapters.py) is caught by its expected clause,
  by nothing implausible, and the report names the clause, the quantity and a counter-example
  (also from the generated cases alone, shrunk);
- reports print and serialize; bad ``--impl`` specs fail clearly; adapters may leave methods out;
- checked / declined / tie-discarded cases are counted apart with reasons; a clause whose
  adapter declines most of it, or declines a special value every port must run, fails; ``--strict``
  also fails declined optional special values; tracebacks appear in the text report; the theorem's
  derived bound catches a 1e-12 drift;
- the coverage line and exit status; no ``.hypothesis/`` left in the working directory; an
  adapter module in the current directory is found.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import settings

from repspec.conformance import (
    ADAPTER_METHODS,
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


def _clauses_calling_changed_methods(adapter_cls) -> list[str]:
    """The clauses that call a protocol method ``adapter_cls`` re-implements. Every other clause runs the
    reference itself, which passes by construction (``test_reference_adapter_passes_all_clauses``), so it
    cannot fail; skipping them keeps this test linear, not quadratic, in the number of clauses."""
    changed = {m for m in ADAPTER_METHODS if getattr(adapter_cls, m) is not getattr(ReferenceAdapter, m)}
    return [cid for cid, c in CLAUSES.items() if changed & set(c.methods)] if changed else list(CLAUSES)


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_adapter_is_caught_by_the_expected_clause(name):
    b = BROKEN[name]
    report = run_conformance(b.adapter(), clauses=_clauses_calling_changed_methods(b.adapter), max_examples=N)
    failed = set(report.failed())
    assert b.expected in failed, f"{name} was not caught by {b.expected}:\n{report}"
    assert failed <= b.plausible, f"{name} failed implausible clauses {sorted(failed - b.plausible)}:\n{report}"
    res = report[b.expected]
    assert res.status == "FAIL" and res.quantity and (res.counterexample is not None or not b.counterexample)
    text = str(report)
    assert f"FAIL {b.expected}" in text and res.quantity in text
    assert "counter-example" in text or not b.counterexample
    assert b.message in res.message, f"{name}: {b.message!r} not in the message {res.message!r}"
    data = json.loads(report.to_json())
    entry = next(c for c in data["clauses"] if c["clause_id"] == b.expected)
    assert entry["status"] == "FAIL" and entry["quantity"] == res.quantity
    assert entry["counterexample"] or not b.counterexample
    assert data["ok"] is False


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_adapter_is_found_and_shrunk_by_generated_cases(name):
    """Without the hand-written edge cases, the Hypothesis strategies alone find the bug and shrink it."""
    b = BROKEN[name]
    if not b.generated:
        pytest.skip(f"{name} is caught by the clause's hand-written special values only (by design)")
    res = run_conformance(b.adapter(), clauses=[b.expected], max_examples=40, explicit_examples=False).results[0]
    assert res.status == "FAIL", f"{name}: generated cases did not catch it ({res.examples} cases)"
    if b.counterexample:
        assert res.counterexample_kind == "shrunk" and res.counterexample is not None


def test_shrunk_counterexample_is_minimal_for_the_first_step_bug():
    res = run_conformance(BROKEN["first_step_dampened"].adapter(), clauses=["§3.repopt-sgd-step"], max_examples=40,
                          explicit_examples=False).results[0]
    case = res.counterexample
    # what the bug needs and nothing more: a first step, momentum, dampening; the smallest shape
    assert case["momentum_buffer"] is None and case["momentum"] > 0 and case["dampening"] > 0
    assert all(d == 1 for d in case["shape"][:2]) and case["weight_decay"] == 0.0 and case["seed"] == 0
    assert case["grad_mult_mask"] is None or case["shape"] == (1, 1, 3, 3)


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
    r = report["3.grad-mult"]
    assert r.declined > 0 and r.tie_discarded == 0 and "declined" in r.message
    assert r.declined_reasons == {"exponent 1 (AdamW) is not offered": r.declined}
    assert r.not_compared == r.declined
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
            seen.extend(v.dtype for k, v in list(params.items()) + list(buffers.items())
                        if not k.endswith("num_batches_tracked"))  # the counters are int64, as in torch
            return super().fuse_repvgg_block(params, buffers, **kw)

    run_conformance(Spy(), clauses=["§2.fusion"], max_examples=2)
    assert seen and all(d == np.float64 for d in seen)


# ------------------------------------------------------------ declines, ties, strict


def _accounting_clause():
    """A clause whose cases are 0..11: multiples of 3 are tie-discarded, n % 3 == 1 go to the adapter
    (which declines odd ones), the rest are checked."""
    from hypothesis import strategies as st

    from repspec.conformance.clauses import Ambiguous, Clause, call

    def check(adapter, case, cmp):
        if case % 3 == 0:
            raise Ambiguous("within ε of a tie")
        cmp.close("y", call(adapter, "grad_mult_mask", case), float(case))

    return Clause(id="§9.accounting", section="§9", title="accounting", checks="", tolerance="",
                  methods=("grad_mult_mask",), strategy=lambda: st.integers(0, 11), check=check)


class _EchoAdapter(AdapterBase):
    def grad_mult_mask(self, n):
        if n % 3 == 1 and n % 2 == 1:
            raise NotProvided("odd ones are not offered")
        return float(n)


def test_checked_declined_and_tie_discarded_are_counted_apart():
    from repspec.conformance.clauses import TOLERANCES
    from repspec.conformance.runner import _run_clause

    seen = []

    class Spy(_EchoAdapter):
        def grad_mult_mask(self, n):
            seen.append(n)
            return super().grad_mult_mask(n)

    res = _run_clause(_accounting_clause(), Spy(), max_examples=30, seed=0, profile=TOLERANCES["float64"],
                      explicit=False)
    assert res.status == "pass", res.message
    assert res.tie_discarded > 0 and res.declined > 0 and res.examples > 0
    assert res.tie_reasons == {"within ε of a tie": res.tie_discarded}
    assert res.declined_reasons == {"odd ones are not offered": res.declined}
    assert res.declined == sum(1 for n in seen if n % 3 == 1 and n % 2 == 1)
    from repspec.conformance import Report

    text = str(Report("x", [res], {"seed": 0, "max_examples": 30, "profile": "float64"}))
    assert "checked" in text and "declined" in text and "ties" in text
    assert f"declined §9.accounting: {res.declined} case(s): {res.declined} × odd ones are not offered" in text
    assert f"tie-discarded §9.accounting: {res.tie_discarded} case(s)" in text


class _NoOABNFusion(ReferenceAdapter):
    """A port without OABN: fusion declines a finite threshold (an optional feature)."""

    name = "no OABN"

    def fuse_repvgg_block(self, params, buffers, *, oabn_threshold, **kw):
        if np.isfinite(oabn_threshold):
            raise NotProvided("OABN is not offered")
        return super().fuse_repvgg_block(params, buffers, oabn_threshold=oabn_threshold, **kw)


def test_declining_an_optional_special_value_passes_but_is_not_complete():
    r = run_conformance(_NoOABNFusion(), clauses=["§2.fusion"], max_examples=N)
    res = r["§2.fusion"]
    assert res.status == "pass" and 0 < res.declined < res.examples, str(r)
    assert res.special_declined == ["dead identity channel clipped by OABN (s = 1) (needs OABN)"]
    assert r.ok and not r.complete
    assert "special values declined in §2.fusion" in str(r)


def test_strict_fails_declined_special_values(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "no_oabn_port.py").write_text(textwrap.dedent('''
        import numpy as np
        from repspec.conformance import NotProvided, ReferenceAdapter
        class Port(ReferenceAdapter):
            def fuse_repvgg_block(self, params, buffers, *, oabn_threshold, **kw):
                if np.isfinite(oabn_threshold):
                    raise NotProvided("OABN is not offered")
                return super().fuse_repvgg_block(params, buffers, oabn_threshold=oabn_threshold, **kw)
        '''))
    args = ["--impl", "no_oabn_port:Port", "--clauses", "2.fusion", "--max-examples", "6"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "exit status 0: every clause this adapter provides passed" in out
    assert "declined §2.fusion" in out and "OABN is not offered" in out
    assert main(args + ["--strict"]) == 1
    assert "exit status 1: --strict: special values declined" in capsys.readouterr().out


def test_adapter_traceback_is_printed_in_the_text_report():
    class Deep(ReferenceAdapter):
        def grad_mult_mask(self, *a, **k):
            return self._kernel_that_fails()

        def _kernel_that_fails(self):
            raise RuntimeError("kernel launch failed")

    report = run_conformance(Deep(), clauses=["§3.grad-mult"], max_examples=3)
    text = str(report)
    assert "traceback (last" in text and "_kernel_that_fails" in text and "RuntimeError: kernel launch failed" in text
    assert "_kernel_that_fails" in report["§3.grad-mult"].traceback  # the JSON keeps the whole traceback


def testtheorem_bound_is_derived_not_flat():
    """The legit torch/reference paths stay far inside the bound; a 1e-12 drift (invisible to the old flat
    1e-9) fails — see the ``theorem_drift_1e-12`` broken adapter. Here: the bound itself scales with the
    steps and with Σ|terms| (cancellation), not with |W'|."""
    from repspec.conformance.clauses.repopt import theorem_bound

    m = [np.array([1.0, 100.0])]
    b1, b3 = theorem_bound(2.0**-53, 1, m), theorem_bound(2.0**-53, 3, m)
    assert np.all(b3 > b1) and b1[1] == pytest.approx(100 * b1[0])
    assert 1e-15 < b1[0] < 1e-13  # ~1e-14 of the terms: a 1e-12 relative error is 100x outside
    drift = run_conformance(BROKEN["theorem_drift_1e-12"].adapter(), clauses=["§3.repopt-sgd-step"], max_examples=N)
    assert drift.ok, "the 1e-12 drift passes the step clause (1e-9): only the theorem bound can see it"


# ------------------------------------------------------------------ the protocol is documented and implemented


def test_every_adapter_method_is_documented_and_implemented():
    """Each protocol method: a row in adapter.py's table and docs/porting.md's, a ReferenceAdapter and a
    TorchAdapter implementation, and at least one clause that needs it."""
    from repspec.conformance import adapter as adapter_module
    from repspec.conformance.adapter import ADAPTER_METHODS, ConformanceAdapter

    page = open(os.path.join(os.path.dirname(__file__), "..", "docs", "porting.md"), encoding="utf-8").read()
    needed = {m for c in CLAUSES.values() for m in c.methods}
    torch_adapter = pytest.importorskip("repspec.conformance.torch_adapter")
    for m in ADAPTER_METHODS:
        assert f"``{m}``" in adapter_module.__doc__, f"{m} has no row in adapter.py's table"
        assert f"| `{m}(" in page, f"{m} has no row in docs/porting.md's adapter table"
        assert m in ConformanceAdapter.__dict__, f"{m} is not in the ConformanceAdapter protocol"
        assert m in ReferenceAdapter.__dict__ and m in torch_adapter.TorchAdapter.__dict__, m
        assert m in needed, f"no clause needs {m}"


# ------------------------------------------------------------------ SPEC §3: W'_0 draws, the B1 layout


def test_b1_special_value_is_the_published_scale_files_layout():
    """§3.scale-files' B1 special value has exactly the keys and shapes of the real published file, blocks in its
    order (within a block the file lists its keys alphabetically, 1x1 before conv: key order carries no meaning)."""
    torch = pytest.importorskip("torch")
    from repspec.conformance.clauses.repopt import _scale_file_example_b1

    published = torch.load(os.path.join(os.path.dirname(__file__), "data", "RepOpt-VGG-B1-scales.pth"),
                           weights_only=True, map_location="cpu")
    case = _scale_file_example_b1()
    assert {k: v.shape for k, v in case["scales"].items()} == {k: tuple(v.shape) for k, v in published.items()}

    def blocks(keys):
        return list(dict.fromkeys(k.rsplit(".scale_", 1)[0] for k in keys))

    assert blocks(case["scales"]) == blocks(published) == [p for p, _, _ in case["layout"]]
    assert len(published) == 79


class _ReinitDraw(ReferenceAdapter):
    """W'_0 whose imaginary kernels the adapter draws itself (``conv_weight`` None) with ``draw(rng, shape, fan_in)``."""

    def __init__(self, draw, fresh_generator=False):
        self.draw, self.fresh = draw, fresh_generator
        self.calls = 0

    def reinit_target_kernel(self, scale_conv, scale_1x1, scale_identity, *, in_channels, conv_weight,
                             conv_1x1_weight, use_identity_scales, seed):
        if conv_weight is None:
            self.calls += 1
            rng = np.random.default_rng(seed + self.calls if self.fresh else seed)
            o = len(scale_conv)
            conv_weight = self.draw(rng, (o, in_channels, 3, 3), 9 * in_channels)
            conv_1x1_weight = self.draw(rng, (o, in_channels, 1, 1), in_channels)
        return super().reinit_target_kernel(scale_conv, scale_1x1, scale_identity, in_channels=in_channels,
                                            conv_weight=conv_weight, conv_1x1_weight=conv_1x1_weight,
                                            use_identity_scales=use_identity_scales, seed=seed)


def _uniform(rng, shape, fan_in):
    return rng.uniform(-1.0, 1.0, shape) / np.sqrt(fan_in)


@pytest.mark.parametrize("adapter, message", [
    (_ReinitDraw(_uniform), None),  # conv_default_init, deterministic: passes
    (_ReinitDraw(_uniform, fresh_generator=True), "same seed"),
    (_ReinitDraw(lambda rng, shape, fan_in: rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)), "conv_default_init"),
    (_ReinitDraw(lambda rng, shape, fan_in: 0.1 * _uniform(rng, shape, fan_in)), "not drawn from U"),
], ids=["default-init", "not-deterministic", "kaiming-normal", "too-narrow"])
def test_reinit_checks_a_port_s_own_draw(adapter, message):
    """The seeded-draw part of §3.reinit: the same seed twice, the init bound, the spread (special value: 48 taps)."""
    res = run_conformance(adapter, clauses=["§3.reinit"], max_examples=N)["§3.reinit"]
    if message is None:
        assert res.status == "pass", res.message
    else:
        assert res.status == "FAIL" and message in f"{res.quantity}: {res.message}", res.message


# ------------------------------------------------------------------ verify


def test_verify_reports_coverage_and_exit_status(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "one_clause_port.py").write_text(
        "from repspec.conformance import AdapterBase, ReferenceAdapter\n"
        "class Port(AdapterBase):\n"
        "    grad_mult_mask = ReferenceAdapter.grad_mult_mask\n")
    assert main(["--impl", "one_clause_port:Port", "--max-examples", "3"]) == 0
    out = capsys.readouterr().out
    assert f"coverage: 1 of {len(CLAUSES)} clauses provided by this adapter; not checked (not provided): " \
        f"{next(iter(CLAUSES))}" in out
    assert "verdict: every provided clause passed (not complete: see --strict)" in out
    assert main(["--impl", "one_clause_port:Port", "--max-examples", "3", "--strict"]) == 1
    assert "exit status 1: --strict: clauses not provided" in capsys.readouterr().out


def test_verify_leaves_no_hypothesis_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_STORAGE_DIRECTORY"}
    proc = subprocess.run([sys.executable, "-m", "repspec.conformance", "--impl", "reference", "--max-examples", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path)) == [], f"verify left {sorted(os.listdir(tmp_path))} in the working directory"


def test_impl_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "cwd_port.py").write_text("from repspec.conformance import ReferenceAdapter as Port\n")
    monkeypatch.chdir(tmp_path)
    cwd = os.getcwd()
    # as under the console script: neither '' nor the working directory on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", cwd)])
    monkeypatch.delitem(sys.modules, "cwd_port", raising=False)
    assert isinstance(load_adapter("cwd_port:Port"), ReferenceAdapter)
    with pytest.raises(AdapterLoadError, match="current directory"):
        load_adapter("no_such_port_module_xyz:Port")


def test_verify_json_to_a_directory_is_a_usage_error(tmp_path, capsys):
    assert verify("reference", clauses=["§3.grad-mult"], max_examples=2, json_path=str(tmp_path)) == 2
    assert "--json" in capsys.readouterr().err
    path = tmp_path / "r.json"
    assert verify("reference", clauses=["§3.grad-mult"], max_examples=2, json_path=str(path), out=io.StringIO()) == 0
    data = json.loads(path.read_text())
    assert data["complete"] is True and "coverage" in data
    assert data["clauses"][0]["declined"] == 0 and "tie_discarded" in data["clauses"][0]


def test_parser_works_without_hypothesis_and_verify_says_what_to_install():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "from repspec.conformance.runner import build_parser, main\n"
            "build_parser().parse_args(['--impl', 'reference'])\n"
            "sys.exit(main(['--impl', 'reference']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install" in proc.stderr and "hypothesis" in proc.stderr.lower()


def test_adapters_get_num_batches_tracked_like_a_state_dict():
    seen = {}

    class Spy(ReferenceAdapter):
        def fuse_repvgg_block(self, params, buffers, **kw):
            seen["fusion"] = dict(buffers)
            return super().fuse_repvgg_block(params, buffers, **kw)

        def train_iteration(self, network, params, buffers, x, labels, **kw):
            seen["train"] = dict(buffers)
            out = super().train_iteration(network, params, buffers, x, labels, **kw)
            # returning the counters (incremented, as torch does) is allowed: they are not compared
            nbt = {k: v + 1 for k, v in buffers.items() if k.endswith("num_batches_tracked")}
            return out._replace(buffers={**out.buffers, **nbt})

    report = run_conformance(Spy(), clauses=["§2.fusion", "§1.train-iteration"], max_examples=2)
    assert report.complete, str(report)
    for where, buffers in seen.items():
        means = [k for k in buffers if k.endswith("running_mean")]
        counters = [k for k in buffers if k.endswith("num_batches_tracked")]
        assert len(counters) == len(means) > 0, where
        assert all(buffers[k].dtype == np.int64 and buffers[k].shape == () and buffers[k] == 0 for k in counters)


def test_an_adapter_that_chokes_on_num_batches_tracked_gets_a_hint():
    class Strict(ReferenceAdapter):
        def fuse_repvgg_block(self, params, buffers, **kw):
            from repspec.reference.repvgg import fuse_repvgg_block

            return fuse_repvgg_block(params, buffers, **kw)  # the reference refuses unknown keys

    res = run_conformance(Strict(), clauses=["§2.fusion"], max_examples=2)["§2.fusion"]
    assert res.status == "FAIL" and "num_batches_tracked" in res.message
    assert "without_num_batches_tracked" in res.message
