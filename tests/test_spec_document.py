"""docs/SPEC.md is the contract the code and the docs cite; keep them in step.

Fails when
- a clause id (``§N.slug``) used by the conformance registry, the docs, the reference,
  torch_impl, the ``repspec`` package or the README has no clause heading in SPEC.md, or a
  section (``§N``) they cite has no section heading;
- a conformance clause sits in another SPEC section than its ``section`` field says;
- SPEC.md names a reference function (``reference/<module>.py:<name>``) that does not exist,
  a test (``tests/<file>.py::<test>``) that does not exist, or a file under ``tests/`` that
  does not exist;
- a clause heading has no anchor, or a link ``SPEC.md#anchor`` in the docs or README points
  at no anchor.

Numbers such as ``§5.2`` (digits after the dot) are a docs chapter's own subsections, not
SPEC clauses, and are not checked here.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SPEC = ROOT / "docs" / "SPEC.md"

#: ``§3.repopt-sgd-step``: a section number, a dot, a lowercase slug (not ``§5.2``)
CLAUSE_RE = re.compile(r"§(\d+)\.([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")
#: ``§3`` alone: not followed by more digits or by ``.<word character>``
SECTION_RE = re.compile(r"§(\d+)(?!\d)(?!\.\w)")
CLAUSE_HEADING_RE = re.compile(r"^### (§\d+\.[a-z0-9-]+) — ", re.M)
SECTION_HEADING_RE = re.compile(r"^## (§\d+) ", re.M)
ANCHOR_RE = re.compile(r'<a id="([^"]+)"></a>')
REF_FUNC_RE = re.compile(r"\breference/([a-z_]+)\.py:([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
TEST_RE = re.compile(r"\btests/(\w+)\.py::(\w+)")
TEST_FILE_RE = re.compile(r"\btests/(\w+\.py)\b")
LINK_RE = re.compile(r"SPEC\.md#([\w.-]+)")


def clause_anchor(clause_id: str) -> str:
    """The anchor of a clause heading: the id without ``§``, dots as hyphens (``3-grad-mult``)."""
    return clause_id.lstrip("§").replace(".", "-")


def section_anchor(section: str) -> str:
    return "section-" + section.lstrip("§")


@pytest.fixture(scope="module")
def spec_text() -> str:
    assert SPEC.is_file(), f"{SPEC} is missing: the contract must be in the repository"
    return SPEC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def spec_clauses(spec_text) -> dict[str, str]:
    """``{clause id: section id}`` from the headings, in document order."""
    out, section = {}, None
    for line in spec_text.splitlines():
        m = SECTION_HEADING_RE.match(line + " ")
        if m:
            section = m.group(1)
            continue
        m = CLAUSE_HEADING_RE.match(line)
        if m:
            cid = m.group(1)
            assert cid not in out, f"clause {cid} has two headings in {SPEC.name}"
            out[cid] = section
    return out


def _cited_files() -> list[Path]:
    """Where clause ids are cited (tests are left out: they use unknown ids on purpose)."""
    files = [p for p in sorted((ROOT / "docs").glob("*.md")) if p != SPEC]
    files.append(ROOT / "README.md")
    for pkg in ("reference", "torch_impl", "repspec", "benchmarks"):
        files.extend(sorted((ROOT / pkg).rglob("*.py")))
    return [p for p in files if p.is_file()]


def _mentions(regex: re.Pattern, group) -> dict[str, list[str]]:
    """``{mention: ["file:line", ...]}`` over :func:`_cited_files`."""
    found: dict[str, list[str]] = {}
    for path in _cited_files():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in regex.finditer(line):
                found.setdefault(group(m), []).append(f"{path.relative_to(ROOT)}:{lineno}")
    return found


def _where(places: list[str]) -> str:
    return ", ".join(places[:3]) + (f" (+{len(places) - 3} more)" if len(places) > 3 else "")


def test_conformance_clause_ids_have_headings_in_their_section(spec_clauses):
    from repspec.conformance.clauses import CLAUSES, clause_ids

    missing = [cid for cid in clause_ids() if cid not in spec_clauses]
    assert not missing, f"conformance clauses without a heading in docs/SPEC.md: {missing}"
    wrong = {cid: (CLAUSES[cid].section, spec_clauses[cid]) for cid in clause_ids()
             if CLAUSES[cid].section != spec_clauses[cid]}
    assert not wrong, f"conformance clause section (registry, SPEC.md) disagree: {wrong}"


def test_clause_ids_cited_in_code_and_docs_have_headings(spec_clauses):
    cited = _mentions(CLAUSE_RE, lambda m: m.group(0))
    assert cited, "no clause id found in docs/code: the scan itself is broken"
    missing = {cid: _where(places) for cid, places in sorted(cited.items()) if cid not in spec_clauses}
    assert not missing, "clause ids cited but not defined in docs/SPEC.md: " + "; ".join(
        f"{cid} (cited at {where})" for cid, where in missing.items())


def test_sections_cited_in_code_and_docs_exist(spec_text):
    sections = set(SECTION_HEADING_RE.findall(spec_text))
    cited = _mentions(SECTION_RE, lambda m: m.group(0))
    missing = {s: _where(p) for s, p in sorted(cited.items()) if s not in sections}
    assert not missing, f"sections cited but not in docs/SPEC.md (has {sorted(sections)}): {missing}"


def test_every_heading_has_its_anchor(spec_text, spec_clauses):
    lines = spec_text.splitlines()
    problems = []
    for i, line in enumerate(lines):
        m = CLAUSE_HEADING_RE.match(line) or SECTION_HEADING_RE.match(line + " ")
        if not m:
            continue
        ident = m.group(1)
        want = clause_anchor(ident) if "." in ident else section_anchor(ident)
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if prev.strip() != f'<a id="{want}"></a>':
            problems.append(f"{ident}: expected '<a id=\"{want}\"></a>' above line {i + 1}, found {prev!r}")
    assert not problems, "\n".join(problems)
    anchors = ANCHOR_RE.findall(spec_text)
    dupes = sorted({a for a in anchors if anchors.count(a) > 1})
    assert not dupes, f"duplicate anchors in docs/SPEC.md: {dupes}"


def test_links_to_spec_anchors_resolve(spec_text):
    anchors = set(ANCHOR_RE.findall(spec_text))
    links = _mentions(LINK_RE, lambda m: m.group(1))
    links.update({k: ["docs/SPEC.md"] for k in LINK_RE.findall(spec_text)})
    broken = {a: _where(p) for a, p in sorted(links.items()) if a not in anchors}
    assert not broken, f"links to docs/SPEC.md anchors that do not exist: {broken}"


def test_reference_functions_named_in_spec_exist(spec_text):
    named = sorted(set(REF_FUNC_RE.findall(spec_text)))
    assert named, "SPEC.md names no reference function: the pattern is broken"
    missing = []
    for module, attr in named:
        try:
            obj = importlib.import_module(f"repspec.reference.{module}")
        except ImportError as exc:
            missing.append(f"reference/{module}.py:{attr} (module: {exc})")
            continue
        for depth, part in enumerate(attr.split(".")):
            if not hasattr(obj, part):
                missing.append(f"reference/{module}.py:{attr} (no attribute {part!r})")
                break
            obj = getattr(obj, part)
            defined_in = getattr(obj, "__module__", None)
            # a function or class is cited at the module that defines it, not at one that re-exports it
            if depth == 0 and defined_in is not None and defined_in != f"repspec.reference.{module}":
                missing.append(f"reference/{module}.py:{attr} (defined in {defined_in.replace('repspec.', '')})")
                break
    assert not missing, "docs/SPEC.md names reference functions that do not exist where it says: " + \
        "; ".join(missing)


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_tests_named_in_spec_exist(spec_text):
    named = sorted(set(TEST_RE.findall(spec_text)))
    assert named, "SPEC.md names no test: the pattern is broken"
    missing, cache = [], {}
    for module, name in named:
        path = ROOT / "tests" / f"{module}.py"
        if not path.is_file():
            missing.append(f"tests/{module}.py::{name} (no such file)")
            continue
        names = cache.setdefault(module, _test_names(path))
        if name not in names:
            missing.append(f"tests/{module}.py::{name}")
    files = sorted({f for f in TEST_FILE_RE.findall(spec_text) if not (ROOT / "tests" / f).is_file()})
    missing += [f"tests/{f} (no such file)" for f in files]
    assert not missing, "docs/SPEC.md names tests that do not exist: " + "; ".join(missing)


def test_index_links_every_clause(spec_clauses):
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    linked = set(LINK_RE.findall(index))
    missing = [cid for cid in spec_clauses if clause_anchor(cid) not in linked]
    assert not missing, f"docs/index.md has no row linking these SPEC clauses: {missing}"


MD_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_in_readme_and_docs_name_existing_files():
    """A link to a file of the repository (README, docs/, ports/, examples/) must name one that exists."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "ports").rglob("*.md")),
             *sorted((ROOT / "examples").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in MD_LINK_RE.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor of the page itself
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "links to files that do not exist: " + "; ".join(broken)
