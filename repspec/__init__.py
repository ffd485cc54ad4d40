"""repspec: an executable specification of RepVGG-family re-parameterization.

``repspec.reference`` is the pure-NumPy float64 oracle (no torch import);
``repspec.torch_impl`` is the PyTorch implementation checked against it.
Importing this package imports neither.
"""

__version__ = "0.1.0"
