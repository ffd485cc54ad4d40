"""The C99 example port (ports/c99) against the conformance vectors: compiled with the system ``cc``.

The correct build passes the five clauses it implements (and the two built only from them); the
clause it lacks is skipped. Each compile-time broken variant fails exactly its clause. Skipped with
a reason when no C compiler is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from repspec.conformance.runner import FAIL, PASS, SKIP
from repspec.conformance.vectors import check_results, export_vectors

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "ports" / "c99" / "repspec_port.c"
CC = shutil.which("cc")
FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
IMPLEMENTED = ["§2.fusion", "§3.grad-mult", "§3.repopt-sgd-step", "§5.uniform-weight", "§5.uniform-activation"]
LACKED = "§5.ste"

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (`cc`) on PATH: the C99 port cannot be built")


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    out = tmp_path_factory.mktemp("c99") / "vectors"
    export_vectors(out, clauses=IMPLEMENTED + ["§3.theorem", LACKED], max_examples=8, seed=0)
    return out


def _build(tmp: Path, broken: int) -> Path:
    exe = tmp / f"repspec_port{broken}"
    subprocess.run([CC, *FLAGS, f"-DREPSPEC_BROKEN={broken}", str(SOURCE), "-lm", "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    return exe


def _answer(exe: Path, vectors: Path, results: Path):
    return subprocess.run([str(exe), str(vectors), str(results)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("broken, failing", [(0, None), (1, "§3.repopt-sgd-step"), (2, "§5.uniform-weight")])
def test_port_passes_its_clauses_and_each_broken_variant_fails_its_own(vectors, tmp_path, broken, failing):
    exe = _build(tmp_path, broken)
    run = _answer(exe, vectors, tmp_path / "results")
    assert run.returncode == 0, run.stderr
    report = check_results(vectors, tmp_path / "results")
    assert report[LACKED].status == SKIP and "not provided" in report[LACKED].message
    for cid in IMPLEMENTED + ["§3.theorem"]:
        expected = FAIL if cid == failing or (failing == "§3.repopt-sgd-step" and cid == "§3.theorem") else PASS
        assert report[cid].status == expected, (cid, str(report))
        if expected == PASS:
            assert report[cid].examples > 0
    if failing is not None:
        assert report[failing].counterexample_kind.startswith("stored case")


def test_port_refuses_a_missing_or_foreign_manifest_in_one_line(vectors, tmp_path):
    exe = _build(tmp_path, 0)
    missing = _answer(exe, tmp_path / "nowhere", tmp_path / "r1")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "manifest.json" in missing.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"format": "something-else", "schema_version": 1}')
    run = _answer(exe, foreign, tmp_path / "r2")
    assert run.returncode == 2 and "not a repspec-vectors manifest" in run.stderr
    (foreign / "manifest.json").write_text('{"format": "repspec-vectors", ')
    run = _answer(exe, foreign, tmp_path / "r3")
    assert run.returncode == 2 and "not valid JSON" in run.stderr
    assert not (tmp_path / "r1").exists()
