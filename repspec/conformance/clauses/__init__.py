"""The clause registry: one module per SPEC section registers its clauses.

:mod:`.base` holds the harness every clause uses (tolerances, the :class:`Checker` that
compares an adapter's output with the reference, the :class:`Clause` record and the
registry, shared case strategies); :mod:`.repvgg` (§2), :mod:`.repopt` (§3),
:mod:`.oabn` (§4), :mod:`.quantization` (§5), :mod:`.qat` (§5's QAT iterations) and
:mod:`.network` (§1) register the
clauses. Importing this package registers them all, in report order, and exports the
registry's public names.
"""

from . import network, oabn, quantization, repopt, repvgg  # noqa: F401  (registers every clause)
from . import qat  # noqa: F401, I001  (§5.qat and §5.cluster-qat, after the rest of §5)
from .base import (
                   CLAUSES,
                   TOLERANCES,
                   AdapterRaised,
                   Ambiguous,
                   Checker,
                   Clause,
                   ErrorStats,
                   Mismatch,
                   Tol,
                   call,
                   clause_ids,
                   get_clause,
                   special,
                   with_num_batches_tracked,
)

__all__ = ["Tol", "TOLERANCES", "Clause", "CLAUSES", "get_clause", "clause_ids", "Mismatch", "AdapterRaised",
           "Ambiguous", "Checker", "ErrorStats", "call", "special", "with_num_batches_tracked"]
