"""A conformance suite for ports of repspec, in the spirit of array-api-tests.

Any implementation of the SPEC (another framework, a compiler, a kernel) provides an
*adapter* — a few functions on NumPy float64 arrays (:mod:`repspec.conformance.adapter`)
— and gets a per-clause pass/fail report against the reference, with a minimal
counter-example for every failing clause::

    python -m repspec.conformance --impl mypkg.adapter:MyAdapter
    repspec verify --impl mypkg.adapter:MyAdapter
    pytest --repspec-impl mypkg.adapter:MyAdapter tests/test_conformance.py

or from Python::

    from repspec.conformance import run_conformance
    report = run_conformance(MyAdapter())
    print(report)              # the per-clause table, then every failure in detail
    report.to_json()           # the same as data

The clauses (:data:`CLAUSES`) are listed with their SPEC section, what they check and
their tolerance in ``docs/porting.md``. This package imports torch only for
:mod:`repspec.conformance.torch_adapter` (the first shipped adapter), and Hypothesis (a test
dependency) only when clauses run.
"""

from .adapter import (
    ADAPTER_METHODS,
    BLOCK_KINDS,
    AdapterBase,
    BlockSpec,
    ConformanceAdapter,
    DeployedNetworkResult,
    NetworkForwardResult,
    NetworkSpec,
    NotProvided,
    OABNEvalResult,
    OABNResult,
    ReferenceAdapter,
    SGDSpec,
    TrainIterationResult,
)
from .runner import (
    ALIASES,
    DEFAULT_MAX_EXAMPLES,
    AdapterLoadError,
    ClauseResult,
    Report,
    add_arguments,
    build_parser,
    load_adapter,
    main,
    run_conformance,
    run_from_args,
    verify,
)

_FROM_CLAUSES = ("CLAUSES", "TOLERANCES", "Clause", "clause_ids", "get_clause")


def __getattr__(name):
    # the clause registry builds on Hypothesis (a test dependency): imported on first use, so that
    # ``repspec --help`` and ``add_arguments`` work with only the runtime dependencies
    if name in _FROM_CLAUSES:
        from . import clauses

        return getattr(clauses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ADAPTER_METHODS",
    "ALIASES",
    "AdapterBase",
    "AdapterLoadError",
    "BLOCK_KINDS",
    "BlockSpec",
    "CLAUSES",
    "Clause",
    "ClauseResult",
    "ConformanceAdapter",
    "DEFAULT_MAX_EXAMPLES",
    "DeployedNetworkResult",
    "NetworkForwardResult",
    "NetworkSpec",
    "NotProvided",
    "OABNEvalResult",
    "OABNResult",
    "ReferenceAdapter",
    "Report",
    "SGDSpec",
    "TOLERANCES",
    "TrainIterationResult",
    "add_arguments",
    "build_parser",
    "clause_ids",
    "get_clause",
    "load_adapter",
    "main",
    "run_conformance",
    "run_from_args",
    "verify",
]
