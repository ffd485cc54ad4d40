"""Known third-party RepVGG blocks checked by the conformance suite (skipped without the library)."""

import pytest

from repspec.conformance.runner import run_conformance

pytest.importorskip("timm", reason="timm not installed (pip install '.[known]')")

from examples.known_implementations.timm_repvgg import TimmRepVggAdapter  # noqa: E402


def test_timm_repvgg_passes_fusion():
    report = run_conformance(TimmRepVggAdapter(), clauses=["§2.fusion"], max_examples=20, seed=0)
    (result,) = report.results
    assert result.status == "pass", result.message
    assert result.examples > 0


def test_timm_repvgg_with_eps_x10_fails_fusion():
    broken = TimmRepVggAdapter()
    broken.eps_factor = 10.0
    report = run_conformance(broken, clauses=["§2.fusion"], max_examples=20, seed=0)
    (result,) = report.results
    assert result.status == "FAIL", result.message
