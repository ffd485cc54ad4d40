"""SPEC §3 "HyperSearch": learn the RepOptimizer's constants on a small dataset.

Train an ``hs_vgg_*`` model (HyperSearch blocks: trainable ``α3, α1, d`` per channel,
BN after the sum) with SGD, then :func:`extract_scales` reads the learned scales keyed
``stage{k}.{i}.scale_{conv|1x1|identity}.weight`` — the layout of the published
RepOpt-VGG scale files — ready for :func:`repspec.torch_impl.optimizers.scales.save_scales` and
:func:`repspec.torch_impl.optimizers.repoptimizer.build_repoptimizer`.

Weight decay follows the official ``set_weight_decay``: among the scales only ``d``
(``scale_identity.weight``) is decayed; conv kernels and the linear weight are decayed;
BN parameters, ``α3``, ``α1`` and biases are not (:func:`hypersearch_param_groups`).
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_int
from .repoptimizer import _check_sgd_hparams, weight_decay_groups
from .scales import validate_scales

__all__ = ["HyperSearchResult", "hypersearch_blocks", "hypersearch_param_groups", "build_hypersearch_optimizer",
           "train_hypersearch", "extract_scales"]


def hypersearch_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(prefix, block)]`` of every HyperSearch/CSLA (``LinearAddBlock``-layout) block, model order (SPEC §3)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    out = [(n, m) for n, m in model.named_modules()
           if n and all(hasattr(m, a) for a in ("conv", "conv_1x1", "scale_conv", "scale_1x1"))]
    if not out:
        raise ValueError(f"{type(model).__name__} has no HyperSearch blocks (conv, conv_1x1, scale_conv, scale_1x1); "
                         f"build one with create_model('hs_vgg_…')")
    return out


def hypersearch_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Param groups for the search (SPEC §3): official rule, so ``d`` is the only decayed scale."""
    hypersearch_blocks(model)
    return weight_decay_groups(model, weight_decay, no_decay_bn=True)


def build_hypersearch_optimizer(model: nn.Module, lr: float, *, momentum: float = 0.9, dampening: float = 0.0,
                                nesterov: bool = True, weight_decay: float = 1e-4,
                                foreach: bool | None = None) -> torch.optim.SGD:
    """``torch.optim.SGD`` over :func:`hypersearch_param_groups` (SPEC §3); validated first."""
    _check_sgd_hparams(lr, momentum, dampening, nesterov, weight_decay, foreach)
    groups = hypersearch_param_groups(model, weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                           weight_decay=weight_decay, foreach=foreach)


@dataclass
class HyperSearchResult:
    """What :func:`train_hypersearch` returns (SPEC §3): the learned scales and the loss per step."""

    scales: "OrderedDict[str, Tensor]"
    losses: list[float] = field(default_factory=list)
    steps: int = 0


def train_hypersearch(model: nn.Module, loader: Iterable, *, epochs: int | None = None, steps: int | None = None,
                      lr: float = 0.1, momentum: float = 0.9, dampening: float = 0.0, nesterov: bool = True,
                      weight_decay: float = 1e-4, lr_schedule: str = "cosine",
                      optimizer: torch.optim.Optimizer | None = None, device=None,
                      loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy, progress: bool = True,
                      callback: Callable[[int, Tensor, Tensor], None] | None = None) -> HyperSearchResult:
    """Train a HyperSearch model and return its learned scales (SPEC §3 "HyperSearch").

    Args:
        model: an ``hs_vgg_*`` model (trained in place, in train mode).
        loader: iterable of ``(x, labels)`` batches (e.g. a ``DataLoader``); re-iterated
            each epoch, cycled when ``steps`` exceeds its length.
        epochs / steps: exactly one of them (``epochs`` needs ``len(loader)``).
        lr, momentum, dampening, nesterov, weight_decay: SGD over
            :func:`hypersearch_param_groups` (ignored if ``optimizer`` is given).
        lr_schedule: ``'cosine'`` (per-step cosine annealing to 0) or ``'constant'``.
        device: move batches there (default: the model's device); dtype follows the model.
        progress: show a tqdm progress bar with the running loss.
        callback: ``callback(step, loss, logits)`` after every optimizer step (detached).

    Everything is validated before the first step.
    """
    hypersearch_blocks(model)  # validates the model
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs or steps")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable")
    if epochs is not None:
        epochs = check_int(epochs, "epochs", 1)
        try:
            per_epoch = len(loader)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError("epochs needs a loader with len(); pass steps=… instead") from None
        if per_epoch < 1:
            raise ValueError("loader is empty")
        total = epochs * per_epoch
    else:
        total = check_int(steps, "steps", 1)
    if optimizer is None:
        optimizer = build_hypersearch_optimizer(model, lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                                weight_decay=weight_decay)
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
                 if lr_schedule == "cosine" else None)
    ref = next(model.parameters())
    device = ref.device if device is None else torch.device(device)

    def batches():
        while True:
            empty = True
            for item in loader:
                empty = False
                yield item
            if empty:
                raise ValueError("loader is empty")

    losses: list[float] = []
    model.train()
    bar = tqdm(total=total, desc="HyperSearch", disable=None if progress else True, leave=False)
    try:
        for step, batch in enumerate(itertools.islice(batches(), total)):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError(f"loader must yield (x, labels) pairs, got {type(batch).__name__}")
            x, y = batch
            x = x.to(device=device, dtype=ref.dtype)
            y = y.to(device=device)
            logits = model(x)
            loss = loss_fn(logits, y)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"HyperSearch loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.item())
            if callback is not None:
                callback(step, loss.detach(), logits.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        bar.close()
    return HyperSearchResult(extract_scales(model), losses, len(losses))


def extract_scales(hs_model: nn.Module) -> "OrderedDict[str, Tensor]":
    """The learned scales of a HyperSearch (or CSLA) model (SPEC §3), detached CPU copies.

    Keys ``stage{k}.{i}.scale_{conv|1x1|identity}.weight`` (stage0:
    ``stage0.scale_{conv|1x1}.weight``); ``scale_identity`` only for blocks that have
    one. The dtype is the model's.
    """
    out = OrderedDict()
    for prefix, block in hypersearch_blocks(hs_model):
        for kind in ("conv", "1x1", "identity"):
            layer = getattr(block, f"scale_{kind}", None)
            if layer is None:
                continue
            out[f"{prefix}.scale_{kind}.weight"] = layer.weight.detach().to("cpu").clone().reshape(-1)
    return validate_scales(out, source="extract_scales")
