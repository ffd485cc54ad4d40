"""pytest plugin: run the conformance clauses against a port as one pytest test per clause.

Options (registered when the plugin is loaded — ``pytest_plugins = ["repspec.conformance.pytest_plugin"]``
in a conftest, or ``-p repspec.conformance.pytest_plugin`` on the command line):

- ``--repspec-impl package.module:Adapter`` — the adapter to check (aliases ``torch``,
  ``reference``); default: the environment variable ``REPSPEC_IMPL``, else ``torch``.
- ``--repspec-max-examples N`` — generated cases per clause (default: env
  ``REPSPEC_MAX_EXAMPLES``, else the loaded Hypothesis profile's ``max_examples``).
- ``--repspec-seed S`` — the Hypothesis seed (default 0).

Fixtures: ``repspec_impl`` (the spec string), ``repspec_adapter`` (the loaded adapter,
session-scoped) and ``repspec_clause`` (parametrized over every clause id by
``pytest_generate_tests``). A port without this repository's ``tests/`` runs the shipped
suite module::

    pytest -p repspec.conformance.pytest_plugin --pyargs repspec.conformance.suite \\
        --repspec-impl mypkg.adapter:MyAdapter

Every test reports ``skipped: not provided`` for clauses whose methods the adapter
lacks, and fails with the clause, the quantity, the errors and the minimal
counter-example otherwise.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["selected_impl", "selected_max_examples", "selected_seed", "check_clause", "get_adapter"]

_CACHE: dict[str, object] = {}


def pytest_addoption(parser):
    group = parser.getgroup("repspec-conformance", "repspec conformance suite (docs/porting.md)")
    group.addoption("--repspec-impl", default=None, metavar="PKG.MODULE:ADAPTER",
                    help="adapter to check with the conformance clauses (default: $REPSPEC_IMPL, else 'torch')")
    group.addoption("--repspec-max-examples", type=int, default=None, metavar="N",
                    help="generated cases per clause (default: $REPSPEC_MAX_EXAMPLES, else the Hypothesis profile's)")
    group.addoption("--repspec-seed", type=int, default=0, metavar="S", help="Hypothesis seed (default 0)")


def _option(config, name: str):
    try:
        return config.getoption(name)
    except ValueError:  # the plugin is not loaded: the option does not exist
        return None


def selected_impl(config) -> str:
    """``--repspec-impl``, else ``$REPSPEC_IMPL``, else ``"torch"``."""
    return _option(config, "--repspec-impl") or os.environ.get("REPSPEC_IMPL") or "torch"


def selected_max_examples(config) -> int:
    value = _option(config, "--repspec-max-examples") or os.environ.get("REPSPEC_MAX_EXAMPLES")
    if value:
        return int(value)
    from hypothesis import settings

    return int(settings().max_examples)


def selected_seed(config) -> int:
    return int(_option(config, "--repspec-seed") or 0)


def get_adapter(impl: str):
    """Load (once per session) the adapter named by ``impl``; a bad spec fails with a clear message,
    and the torch adapter is skipped where torch is not importable."""
    from repspec.conformance.runner import ALIASES, AdapterLoadError, load_adapter

    if impl not in _CACHE:
        try:
            _CACHE[impl] = load_adapter(impl)
        except AdapterLoadError as exc:
            if ALIASES.get(impl, impl).startswith("repspec.conformance.torch_adapter") and "torch" in str(exc):
                pytest.skip(f"torch is not importable: {exc}")
            raise pytest.UsageError(f"--repspec-impl / REPSPEC_IMPL: {exc}") from None
    return _CACHE[impl]


def check_clause(adapter, clause_id: str, *, max_examples: int, seed: int = 0, impl: str | None = None) -> None:
    """Run one clause; ``pytest.skip`` when not provided, ``pytest.fail`` with the report on failure.

    ``impl`` (the ``--repspec-impl`` string) only makes the report's "reproduce" line a command line.
    """
    from repspec.conformance.runner import run_conformance

    report = run_conformance(adapter, clauses=[clause_id], max_examples=max_examples, seed=seed)
    if impl:
        report.settings["impl"] = impl
    result = report.results[0]
    if result.status == "skipped":
        pytest.skip(f"{result.clause_id}: {result.message}")
    if not result.passed:
        pytest.fail(str(report), pytrace=False)


@pytest.fixture(scope="session")
def repspec_impl(request) -> str:
    return selected_impl(request.config)


@pytest.fixture(scope="session")
def repspec_adapter(repspec_impl):
    return get_adapter(repspec_impl)


def pytest_generate_tests(metafunc):
    if "repspec_clause" in metafunc.fixturenames:
        from repspec.conformance.clauses import clause_ids

        ids = clause_ids()
        # test ids without the section sign: pytest escapes non-ASCII ids (test_clause[2.fusion])
        metafunc.parametrize("repspec_clause", ids, ids=[i.lstrip("§") for i in ids])


def pytest_report_header(config):
    if _option(config, "--repspec-impl") is None and not os.environ.get("REPSPEC_IMPL"):
        return None
    return f"repspec conformance: impl={selected_impl(config)}, seed={selected_seed(config)}"
