"""The worked third-party example of docs/porting.md §6 runs, and the page shows it verbatim.

``tests/third_party/tinyrep.py`` is a small pure-NumPy port written in another style (NHWC
activations, HWIO kernels, per-channel on the last axis, RepOpt scales in the original code's
``(identity, 1x1, conv)`` order, no AdamW mask); ``tinyrep_adapter.py`` is its adapter.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from repspec.conformance import clause_ids, main, run_conformance

from .third_party import tinyrep
from .third_party.tinyrep_adapter import TinyRepAdapter, hwio_to_oihw, oihw_to_hwio

ROOT = Path(__file__).resolve().parent.parent
N = min(settings().max_examples, 25)
PROVIDED = ["§2.fusion", "§3.grad-mult", "§3.repopt-sgd-step", "§3.theorem", "§3.constant-identity", "§4.oabn",
            "§5.uniform-weight", "§5.uniform-activation", "§5.ste", "§5.ste-weight", "§5.kmeans-ties"]


def test_the_foreign_port_passes_every_clause_it_provides():
    report = run_conformance(TinyRepAdapter(), max_examples=N)
    assert report.ok, str(report)
    assert report.passed() == PROVIDED, str(report)
    # every other clause needs a method tinyrep does not have (train_iteration, fuse_qarepvgg_block, kmeans_1d,
    # calibrate, the qparams and codes methods, quantized_network, state_size)
    assert report.skipped() == [c for c in clause_ids() if c not in PROVIDED]
    assert {"§1.train-iteration", "§2.qarepvgg-fusion", "§5.kmeans"} <= set(report.skipped())
    gm = report["§3.grad-mult"]
    assert 0 < gm.declined < gm.examples and gm.declined_reasons == {"tinyrep has no AdamW mask (exponent 1)":
                                                                     gm.declined}
    assert f"coverage: {len(PROVIDED)} of {len(clause_ids())} clauses provided" in str(report)


def test_the_example_catches_the_bug_this_port_had():
    """Writing tinyrep, its first fusion added the UNclipped identity shift β0 − μ0·t0 to the bias; the
    suite found it (shrunk to one channel, s = 1). Re-planted here, it must still be caught."""

    class Unclipped(TinyRepAdapter):
        def fuse_repvgg_block(self, params, buffers, *, eps, oabn_threshold, **kw):
            k, b = super().fuse_repvgg_block(params, buffers, eps=eps, oabn_threshold=oabn_threshold, **kw)
            if "rbr_identity.weight" in params and np.isfinite(oabn_threshold):
                g, mu = params["rbr_identity.weight"], buffers["rbr_identity.running_mean"]
                t0 = g / np.sqrt(buffers["rbr_identity.running_var"] + eps)
                b = b + mu * np.clip(t0, -oabn_threshold, oabn_threshold) - mu * t0
            return k, b

    res = run_conformance(Unclipped(), clauses=["§2.fusion"], max_examples=N)["§2.fusion"]
    assert res.status == "FAIL" and res.quantity == "b", res.message
    assert res.counterexample["oabn_threshold"] < np.inf


def test_layout_helpers_round_trip():
    k = np.arange(2 * 3 * 3 * 3, dtype=float).reshape(2, 3, 3, 3)  # OIHW
    assert oihw_to_hwio(k).shape == (3, 3, 3, 2) and np.array_equal(hwio_to_oihw(oihw_to_hwio(k)), k)
    m = tinyrep.grad_mult((np.ones(2), np.array([1.0, 2.0]), np.array([3.0, 4.0])), 2)  # HWIO
    assert m.shape == (3, 3, 2, 2) and m[1, 1, 1, 1] == 16.0 + 4.0 + 1.0 and m[0, 0, 0, 1] == 16.0


def test_verify_command_line_on_the_foreign_port(capsys):
    assert main(["--impl", "tests.third_party.tinyrep_adapter:TinyRepAdapter", "--max-examples", "3"]) == 0
    assert "exit status 0: every clause this adapter provides passed" in capsys.readouterr().out
    assert main(["--impl", "tests.third_party.tinyrep_adapter:TinyRepAdapter", "--max-examples", "3",
                 "--strict"]) == 1


@pytest.mark.parametrize("name", ["tinyrep_adapter.py"])
def test_docs_show_the_adapter_verbatim(name):
    """docs/porting.md §6 prints the adapter file; the page must not drift from the tested code."""
    page = (ROOT / "docs" / "porting.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- file: tests/third_party/" + re.escape(name) + r" -->\n```python\n(.*?)```", page, re.S)
    assert m, f"docs/porting.md has no code block marked '<!-- file: tests/third_party/{name} -->'"
    assert m.group(1) == (ROOT / "tests" / "third_party" / name).read_text(encoding="utf-8"), \
        f"docs/porting.md's copy of {name} differs from the tested file"
