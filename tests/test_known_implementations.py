"""Known third-party RepVGG blocks checked by the conformance suite (each skipped without its library)."""

import importlib

import pytest

from repspec.conformance.runner import run_conformance

#: (library, adapter module, adapter class)
KNOWN = [("timm", "timm_repvgg", "TimmRepVggAdapter"),
         ("ultralytics", "ultralytics_repconv", "UltralyticsRepConvAdapter")]


def _adapter(library, module, cls):
    pytest.importorskip(library, reason=f"{library} not installed (pip install '.[known]')")
    return getattr(importlib.import_module(f"examples.known_implementations.{module}"), cls)()


@pytest.mark.parametrize("library, module, cls", KNOWN)
def test_known_block_passes_fusion(library, module, cls):
    report = run_conformance(_adapter(library, module, cls), clauses=["§2.fusion"], max_examples=20, seed=0)
    (result,) = report.results
    assert result.status == "pass", result.message
    assert result.examples > 0


@pytest.mark.parametrize("library, module, cls", KNOWN)
@pytest.mark.parametrize("attr, value", [("eps_factor", 10.0), ("drop_identity", True)])
def test_known_block_broken_variant_fails_fusion(library, module, cls, attr, value):
    broken = _adapter(library, module, cls)
    setattr(broken, attr, value)
    report = run_conformance(broken, clauses=["§2.fusion"], max_examples=20, seed=0)
    (result,) = report.results
    assert result.status == "FAIL", result.message
    assert "max abs err" in result.message and "worst at index" in result.message
