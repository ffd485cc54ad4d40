"""Hypothesis profiles, the implementation-under-test switch and the pytest header.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default: few derandomized examples, no
deadline), ``dev`` (more examples, random), ``thorough`` (many examples). ``make
test-random`` runs ``dev`` with ``--hypothesis-seed`` set to a fresh seed it prints (and
this header repeats), so a failure replays with ``make test-random SEED=<seed>``.
``REPSPEC_IMPL`` names the implementation the equivalence tests check against the
reference (``torch`` by default).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=60, **_COMMON)
settings.register_profile("thorough", max_examples=500, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPSPEC_IMPL = os.environ.get("REPSPEC_IMPL", "torch")


def pytest_report_header(config):
    lines = [f"repspec: REPSPEC_IMPL={REPSPEC_IMPL}, hypothesis profile={settings._current_profile}, "
             f"numpy {np.__version__}"]
    seed = config.getoption("hypothesis_seed", default=None)
    if seed is not None:  # `make test-random` prints it too
        lines.append(f"repspec: hypothesis seed {seed} (replay: make test-random SEED={seed})")
    elif not settings().derandomize:
        lines.append("repspec: random Hypothesis profile without --hypothesis-seed: use `make test-random` "
                     "to get a printed, replayable seed")
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


@pytest.fixture(autouse=True, scope="session")
def _torch_numerics():
    """Equivalence tests compare float64 (and float32) arithmetic: TF32 is turned off on CUDA.

    Small-tensor tests also run on one CPU thread: on 2 shared cores torch's default
    threading made tiny models 5-10x slower (measured), and results do not depend on it.
    """
    try:
        import torch
    except ImportError:  # the reference runs without torch
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tf32 = None
    if torch.cuda.is_available():
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_num_threads(threads)
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
