"""Hypothesis profiles, the implementation-under-test switch and the pytest header.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default: few derandomized examples, no
deadline), ``dev`` (more examples, random), ``thorough`` (many examples).
``REPSPEC_IMPL`` names the implementation the equivalence tests check against the
reference (``torch`` by default).
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", max_examples=12, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=60, **_COMMON)
settings.register_profile("thorough", max_examples=500, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPSPEC_IMPL = os.environ.get("REPSPEC_IMPL", "torch")


def pytest_report_header(config):
    lines = [f"repspec: REPSPEC_IMPL={REPSPEC_IMPL}, hypothesis profile={settings._current_profile}, "
             f"numpy {np.__version__}"]
    try:
        import torch

        cuda = torch.cuda.is_available()
        lines.append(f"repspec: torch {torch.__version__}, cuda available={cuda}"
                     + (f" ({torch.cuda.get_device_name(0)}), TF32 disabled in equivalence tests" if cuda else ""))
    except ImportError:
        lines.append("repspec: torch not importable (torch_impl tests will be skipped)")
    return lines

# the conformance suite's --repspec-impl option (docs/porting.md)
pytest_plugins = ["repspec.conformance.pytest_plugin"]
