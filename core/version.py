"""The one source of repspec's version string (pyproject.toml's ``version`` states the same)."""

__version__ = "0.1.0"
