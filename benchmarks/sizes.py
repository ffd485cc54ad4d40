"""Benchmark sizes: ``REPSPEC_BENCH_SIZE=small`` (the default: a quick smoke, ``make bench-smoke``)
or ``full`` (the README's figures, ``make bench``). Every benchmark imports :data:`SIZE` / :func:`pick` from here (``from sizes import pick``: pytest puts
this folder, which is no package, on ``sys.path``)."""

from __future__ import annotations

import os

SIZE = os.environ.get("REPSPEC_BENCH_SIZE", "small")
if SIZE not in ("small", "full"):
    raise ValueError(f"REPSPEC_BENCH_SIZE must be 'small' or 'full', got {SIZE!r}")


def pick(small, full):
    """The value of the current size."""
    return full if SIZE == "full" else small
