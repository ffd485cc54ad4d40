"""repspec: an executable specification of RepVGG-family re-parameterization.

The package is layered; each layer imports only the layers below it (checked by
``tests/test_architecture.py`` with import-linter):

- ``repspec.cli``, ``repspec.experiments``, ``repspec.conformance``: the applications;
- ``repspec.reference`` (the pure-NumPy float64 oracle, no torch import) and
  ``repspec.torch_impl`` (the PyTorch implementation checked against it), independent
  of each other;
- ``repspec.core``: the shared vocabulary (standard library only).

Importing this package imports neither implementation.
"""

from repspec.core.version import __version__

__all__ = ["__version__"]
