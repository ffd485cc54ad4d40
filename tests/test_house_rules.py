"""Two house rules no tool checks for us.

- **Lazy imports are listed.** An ``import`` inside a function hides an edge from a reader (and
  from a first look at the module's head). Each one in the package must match a rule of
  :data:`LAZY_IMPORTS`, and every rule says why that import waits: start-up time (a heavy module
  paid only by the path that needs it), an optional extra, or the command line's promise to check
  arguments before torch is imported. Cycles and upward imports are the layers contracts' job
  (``tests/test_architecture.py``; import-linter sees function-level imports too), so a lazy
  import can never hide one; this test makes sure none exists for any other reason.
- **No tracker numbers.** Code, tests and docs explain themselves; a reference to a tracker
  entry means nothing to a reader of the repository.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: source folder -> the package it installs as (pyproject's package-dir)
PACKAGES = {"repspec": "repspec", "core": "repspec.core", "reference": "repspec.reference",
            "torch_impl": "repspec.torch_impl"}

_CLI_CHECKS_FIRST = ("the command line checks every argument and output path before torch is imported: a mistake "
                     "costs one line and exit status 2, not torch's 1.5 s start-up")

#: (importer, imported, why): full-match regular expressions over dotted module names
LAZY_IMPORTS: list[tuple[str, str, str]] = [
    (r"repspec\.cli(\..+)?", r"torch(\..+)?|onnx|repspec\.(torch_impl|experiments|conformance)(\..+)?",
     _CLI_CHECKS_FIRST),
    (r"repspec\.experiments\.demo", r"torch|matplotlib(\..+)?|repspec\.torch_impl\..+",
     "`python -m repspec.experiments render|compare` reads and renders results.json without torch"),
    (r"repspec\.conformance(\..+)?", r"hypothesis(\..+)?|scipy\.stats|repspec\.conformance\.(clauses|runner)",
     "the clause registry is built with Hypothesis (a test dependency) and SciPy: the adapter protocol, "
     "and the pytest plugin that pytest loads on every run, import without them"),
    (r"repspec\.core\.runtime", r"torch|numpy",
     "core is standard library only: the run record asks torch and NumPy for their versions when a "
     "record is made, and works where they are absent"),
    (r"repspec\.torch_impl\.quantization\.kmeans", r"repspec\.torch_impl\.quantization\._cpu_kernels",
     "Numba's import (0.4 s) and first compilation are paid only by the CPU k-means paths"),
    (r"repspec\.torch_impl\.optimizers\.repoptimizer", r"repspec\.torch_impl\.optimizers\._fused_kernels",
     "Numba's import (0.4 s) and first compilation are paid only by fused=True on the CPU"),
    (r"repspec\.torch_impl\..+", r"matplotlib(\..+)?",
     "matplotlib's import (0.5 s) is paid only by what writes a PNG"),
    (r"repspec\.torch_impl\..+", r"onnx|onnxruntime|onnxscript",
     "the ONNX tools are the optional [onnx] extra: torch_impl works without them"),
    (r"repspec\.torch_impl\.training\.data", r"sklearn\.datasets",
     "scikit-learn's import (1.4 s) is paid only by the dataset it ships (digits)"),
]


def _module_name(path: Path) -> str:
    folder = path.relative_to(ROOT).parts[0]
    rel = path.relative_to(ROOT / folder).with_suffix("")
    return ".".join([PACKAGES[folder]] + [p for p in rel.parts if p != "__init__"])


def _imported(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if not node.level:
        return [node.module]
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
    return [base] if node.module else [f"{base}.{a.name}" for a in node.names]


def lazy_imports() -> list[tuple[str, int, str, str]]:
    """Every import inside a function of the package: ``(file, line, importer, imported)``."""
    found = []
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = _module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in ast.walk(tree):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        names = _imported(node, module, path.name == "__init__.py")
                    else:
                        continue
                    found += [(str(path.relative_to(ROOT)), node.lineno, module, n) for n in names]
    return sorted(set(found))


def _rule_for(importer: str, imported: str):
    for rule in LAZY_IMPORTS:
        if re.fullmatch(rule[0], importer) and re.fullmatch(rule[1], imported):
            return rule
    return None


def test_every_lazy_import_has_a_listed_reason():
    unlisted = [f"{f}:{line}: {importer} imports {imported} inside a function"
                for f, line, importer, imported in lazy_imports() if _rule_for(importer, imported) is None]
    assert not unlisted, ("imports inside functions that no rule of LAZY_IMPORTS justifies (move them to the "
                          "module's head, or add a rule with its reason):\n" + "\n".join(unlisted))


def test_every_lazy_import_rule_is_used():
    used = {_rule_for(importer, imported) for _, _, importer, imported in lazy_imports()}
    assert [r[:2] for r in LAZY_IMPORTS if r not in used] == []


def test_the_scan_sees_relative_and_nested_imports(tmp_path):
    src = ("def f():\n    from . import _cpu_kernels\n    def g():\n        import torch\n")
    tree = ast.parse(src)
    inner = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert _imported(inner[0], "repspec.torch_impl.quantization.kmeans", False) == [
        "repspec.torch_impl.quantization._cpu_kernels"]
    assert _rule_for("repspec.torch_impl.training.train", "tqdm.auto") is None
    assert _rule_for("repspec.cli.train", "torch") is not None


_TRACKER = re.compile(r"\bissues? ?#?\d+|\(issue\b|\bissue's\b|\btracker (entry|number) \d+", re.IGNORECASE)


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    keep = {".py", ".md", ".toml", ".c", ".h", ".txt", ".cfg", ".json"}
    return [ROOT / f for f in out.splitlines()
            if (Path(f).suffix in keep or Path(f).name in ("Makefile", "run")) and (ROOT / f).is_file()
            and f != "tests/test_house_rules.py"]


def test_no_tracker_numbers_in_code_tests_or_docs():
    hits = []
    for path in _tracked_text_files():
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if _TRACKER.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "tracker numbers mean nothing to a reader; say what is meant instead:\n" + "\n".join(hits)


def test_the_tracker_pattern_catches_the_forms_once_used():
    for text in ("(issue 6)", "Issue 13: the registry", "issue 14 found", "issue #3", "issues 9"):
        assert _TRACKER.search(text), text
    for text in ("an issue with ties", "the issues it raises", "tissue 4"):
        assert not _TRACKER.search(text), text
