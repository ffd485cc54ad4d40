"""The layers point one way: the import-linter contracts of ``pyproject.toml`` hold.

``[tool.importlinter]`` states them: the applications (``repspec.cli``,
``repspec.experiments``, ``repspec.conformance``) stand on the two independent
implementations (``repspec.torch_impl``, ``repspec.reference``), which stand on
``repspec.core``; torch_impl's own folders are layered too; no package holds an import
cycle among its modules (lazy imports inside functions count: grimp reads every import
statement); ``repspec.core`` uses the standard library only; the reference never imports
torch.

The source folders install under other names (``reference/`` as ``repspec.reference``,
pyproject's ``package-dir``), which import-linter cannot follow in an editable install, so
the test lays the package out as installed in a temporary folder and lints that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("importlinter", reason="needs import-linter (the test extra)")


def _installed_layout(dest: Path) -> Path:
    """Copy every package of pyproject.toml to where it installs (``repspec.core`` → ``repspec/core``)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    package_dir = config["package-dir"]
    for package in config["packages"]:
        parts = package.split(".")
        # the source folder: the longest mapped prefix of the package name, then the rest as sub-folders
        for n in range(len(parts), 0, -1):
            mapped = package_dir.get(".".join(parts[:n]))
            if mapped is not None:
                source = ROOT / mapped / Path(*parts[n:])
                break
        else:
            source = ROOT / Path(*parts)
        target = dest / Path(*parts)
        target.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy2(module, target / module.name)
    return dest


def test_import_contracts_hold(tmp_path):
    layout = _installed_layout(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=str(layout), PYTHONDONTWRITEBYTECODE="1")
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    proc = subprocess.run([sys.executable, "-c", command, "--no-cache", str(ROOT / "pyproject.toml")],
                          cwd=layout, env=env, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    assert "Analyzed" in report, report  # the contracts ran (a config error would say otherwise)
    assert proc.returncode == 0, report


def test_the_layout_copy_is_the_installed_package(tmp_path):
    """The copy holds every installed module (a package left out of pyproject would be linted by no one)."""
    layout = _installed_layout(tmp_path / "site")
    copied = {p.relative_to(layout).as_posix() for p in layout.rglob("*.py")}
    for folder, prefix in (("core", "repspec/core"), ("reference", "repspec/reference"),
                           ("torch_impl", "repspec/torch_impl"), ("repspec", "repspec")):
        for source in (ROOT / folder).rglob("*.py"):
            rel = f"{prefix}/{source.relative_to(ROOT / folder).as_posix()}"
            assert rel in copied, f"{source.relative_to(ROOT)} is not in pyproject's packages"
