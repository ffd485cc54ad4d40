"""SPEC §6: moving state between the NumPy reference and the torch modules.

The reference keeps parameters and buffers as flat ``{name: ndarray}`` dicts whose
names are the torch ``state_dict`` keys, so interop is a by-name copy:

- :func:`load_reference_arrays` copies reference arrays into a module (dtype and
  device of the module kept), refusing missing, extra or mis-shaped entries;
- :func:`module_arrays` reads a module back as float64 NumPy ``(params, buffers)``
  (``num_batches_tracked`` skipped: the reference does not model it).

Building the reference twin of a torch model needs both implementations, so it lives
above them, with the tests (``tests/twins.py``).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["load_reference_arrays", "module_arrays"]

_SKIPPED_BUFFERS = ("num_batches_tracked",)


def _skipped(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in _SKIPPED_BUFFERS


def _module_tensors(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = dict(module.named_parameters())
    buffers = {k: v for k, v in module.named_buffers() if not _skipped(k)}
    return params, buffers


def _as_array(value, key: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
                                   or np.issubdtype(arr.dtype, np.bool_)):
        raise TypeError(f"{key} must be a real numeric array, got dtype {arr.dtype}")
    return arr


@torch.no_grad()
def load_reference_arrays(module: nn.Module, params: Mapping[str, np.ndarray] | None,
                          buffers: Mapping[str, np.ndarray] | None) -> None:
    """Copy reference ``params`` / ``buffers`` (``{state_dict key: ndarray}``) into ``module``.

    ``params`` must name exactly the module's parameters and ``buffers`` exactly its
    buffers (``num_batches_tracked`` excluded and left alone); either may be None to
    skip that kind. Values are converted to each tensor's dtype and device. Everything
    is checked first — a missing, extra or mis-shaped key raises ``ValueError`` naming
    it (``TypeError`` for a non-array) — and nothing is copied unless all entries pass.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    targets_p, targets_b = _module_tensors(module)
    plan: list[tuple[torch.Tensor, np.ndarray]] = []
    for kind, given, targets, other in (("params", params, targets_p, targets_b),
                                        ("buffers", buffers, targets_b, targets_p)):
        if given is None:
            continue
        if not isinstance(given, Mapping):
            raise TypeError(f"{kind} must be a mapping name -> array or None, got {type(given).__name__}")
        missing = sorted(set(targets) - set(given))
        extra = sorted(set(given) - set(targets))
        if missing or extra:
            hint = [k for k in extra if k in other]
            note = f" ({hint} are {'buffers' if kind == 'params' else 'parameters'} of the module)" if hint else ""
            raise ValueError(f"{kind} do not match the module: missing {missing}, unexpected {extra}{note}")
        for key, tensor in targets.items():
            arr = _as_array(given[key], f"{kind}[{key!r}]")
            if tuple(arr.shape) != tuple(tensor.shape):
                raise ValueError(f"{kind}[{key!r}] has shape {tuple(arr.shape)}, the module expects "
                                 f"{tuple(tensor.shape)}")
            plan.append((tensor, arr))
    for tensor, arr in plan:
        tensor.copy_(torch.from_numpy(np.ascontiguousarray(arr)).to(dtype=tensor.dtype, device=tensor.device))


def module_arrays(module: nn.Module) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(params, buffers)`` of ``module`` as float64 NumPy copies keyed by state-dict name.

    Every parameter is included (also frozen ones, such as CSLA's constant scales, as the
    reference does); ``num_batches_tracked`` buffers are skipped.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    params, buffers = _module_tensors(module)

    def conv(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy().copy()

    return {k: conv(v) for k, v in params.items()}, {k: conv(v) for k, v in buffers.items()}
