"""The reference must import and run where torch does not exist (SPEC: pure NumPy)."""

import subprocess
import sys
import textwrap

import pytest


def test_reference_imports_with_torch_unavailable():
    # A meta-path finder that refuses torch makes `import torch` fail exactly as on a
    # machine without it; every reference submodule must still import and run.
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None
        sys.meta_path.insert(0, BlockTorch())
        import repspec.reference as ref
        for mod in pkgutil.iter_modules(ref.__path__):
            importlib.import_module("repspec.reference." + mod.name)
        import numpy as np
        from repspec.reference.ops import conv2d
        assert conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)), padding=1).shape == (1, 1, 3, 3)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_reference_sources_never_mention_torch_imports():
    import pathlib

    import repspec.reference as ref

    offenders = []
    for path in pathlib.Path(ref.__path__[0]).glob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("import torch", "from torch")):
                offenders.append(f"{path.name}:{lineno}: {stripped}")
    if offenders:
        pytest.fail("reference imports torch:\n" + "\n".join(offenders))
