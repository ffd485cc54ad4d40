"""``repspec --version``: the option on the top-level parser (argparse prints and exits 0)."""

from __future__ import annotations

from repspec.core.version import __version__


def add_option(parser) -> None:
    parser.add_argument("--version", action="version", version=f"repspec {__version__}")
