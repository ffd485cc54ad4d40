"""``repspec list-models``: the registry's model names, one a line (plain data, no torch)."""

from __future__ import annotations

from repspec.core.architectures import list_models

NAME = "list-models"
OUTPUT = None


def add_parser(sub, argv) -> None:
    sub.add_parser("list-models", help="the registry's model names")


def check(args) -> None:
    """No arguments to check."""


def outputs(args) -> list:
    return []


def run(args) -> int:
    print("\n".join(list_models()))
    return 0
