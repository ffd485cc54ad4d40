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


@pytest.mark.parametrize("attr, value", [("eps_factor", 10.0), ("drop_identity", True)])
def test_timm_repvgg_broken_variant_fails_fusion(attr, value):
    broken = TimmRepVggAdapter()
    setattr(broken, attr, value)
    report = run_conformance(broken, clauses=["§2.fusion"], max_examples=20, seed=0)
    (result,) = report.results
    assert result.status == "FAIL", result.message
    assert "max abs err" in result.message and "worst at index" in result.message
