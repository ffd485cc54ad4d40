"""The generated docs page of known implementations: it parses, names every adapter, and is current."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "known-implementations.md"
ADAPTER_DIR = ROOT / "examples" / "known_implementations"


def _table_rows(text):
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    columns = [c.strip() for c in header.strip("|").split("|")]
    return columns, [dict(zip(columns, (c.strip() for c in r.strip("|").split("|")))) for r in body]


def test_page_table_parses_and_names_every_adapter():
    columns, rows = _table_rows(PAGE.read_text(encoding="utf-8"))
    assert columns[:5] == ["adapter", "library", "version", "clause", "status"]
    assert all(len(r) == len(columns) for r in rows)
    adapters = {p.stem for p in ADAPTER_DIR.glob("*.py") if not p.name.startswith("_")}
    assert adapters, "no adapters found"
    assert adapters <= {r["adapter"] for r in rows}


def test_committed_page_equals_generator_output():
    for library in ("timm", "ultralytics"):
        pytest.importorskip(library, reason=f"{library} not installed (pip install '.[known]'): cannot regenerate "
                                            f"the page")
    from examples.known_implementations.__main__ import render, versions_line

    page = PAGE.read_text(encoding="utf-8")
    if versions_line() not in page:  # the numbers are those of the recorded torch and NumPy
        pytest.skip(f"the page was generated under other versions than {versions_line()}")
    assert page == render()
