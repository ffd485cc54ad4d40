"""What changes the bits of a CPU/GPU run, recorded with every result.

Floating-point summation order in torch's CPU kernels depends on the thread count and
on the instruction set oneDNN/MKL dispatch to; on GPUs it depends on the device and
library versions. SGD amplifies such last-bit differences, so two runs are
bit-identical only when everything in :func:`reproducibility_info` matches.

This module imports torch only inside its functions, so the CLI can import it (for
``DEFAULT_THREADS``) before any argument has been checked.
"""

from __future__ import annotations

import os
import platform

__all__ = ["DEFAULT_THREADS", "BIT_IDENTITY_KEYS", "reproducibility_info", "bit_identity_differences"]

#: torch CPU threads used by every CLI command and by the demo unless ``--threads`` says
#: otherwise. Measured (benchmarks/bench_threads.py, thread counts interleaved step by step,
#: on the shared, loaded 2-core development machine): a train step of the demo's tiny8 model
#: is fastest at 1 thread (2 threads 1.7x slower), one of RepVGG-A0 at 224x224 batch 8 ties
#: between 1 and 4 threads with 2 threads 3.9x slower (README, "Performance"); earlier CLI runs
#: were 4-8x faster at 1 thread than at torch's default of 2. One shared default keeps the
#: CLI's and the demo's numbers equal.
DEFAULT_THREADS = 1

#: The fields of :func:`reproducibility_info` that must match for a resumed or repeated
#: run to be bit-identical to the original.
BIT_IDENTITY_KEYS = ("torch_threads", "torch_version", "device", "cpu_capability", "onednn_max_cpu_isa")


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def reproducibility_info(device: str | None = None) -> dict:
    """JSON-ready record of everything known to change a run's floating-point bits.

    ``device`` is the device the run used (``"cpu"``, ``"cuda"``, ``"cuda:1"``); its GPU
    name and the CUDA/cuDNN versions are added where it is a CUDA device.
    """
    import numpy as np
    import torch

    dev = str(device) if device is not None else "cpu"
    info = {
        "device": dev,
        "torch_threads": int(torch.get_num_threads()),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
    }
    if dev.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(dev).index
        index = torch.cuda.current_device() if index is None else index
        info["gpu_name"] = torch.cuda.get_device_name(index)
        info["cuda_version"] = torch.version.cuda
        info["cudnn_version"] = torch.backends.cudnn.version()
        info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        info["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    return info


def bit_identity_differences(recorded: dict | None, current: dict) -> list[str]:
    """``"key: recorded -> current"`` for each :data:`BIT_IDENTITY_KEYS` field that differs.

    A record without the field (written by an older repspec) counts as unknown and is
    reported as a difference, since bit-identity cannot be promised for it.
    """
    recorded = recorded or {}
    return [f"{key}: {recorded.get(key, 'unrecorded')!s} -> {current.get(key)!s}"
            for key in BIT_IDENTITY_KEYS if recorded.get(key, "unrecorded") != current.get(key)]
