"""Training and evaluation loops with exact resume (``repspec train | hypersearch | quantize``).

:func:`train_classifier` trains any classifier (RepVGG, RepOpt-VGG with a RepOptimizer,
HyperSearch, QAT models …) on ``(x, labels)`` batches with a given optimizer and optional
LR scheduler, evaluates after every epoch, shows tqdm progress bars, and writes
checkpoints (:mod:`repspec.torch_impl.training.checkpoint`).

**Resume.** A checkpoint holds the model, the optimizer (RepOptimizer masks included),
the scheduler, the loop position (epoch, batch within the epoch, global step), the
per-epoch history and accumulators, and the random states: torch CPU/CUDA, NumPy,
Python ``random`` and the data loader's ``torch.Generator``, both *now* and at the
start of the current epoch. Resuming mid-epoch re-creates that epoch's sample order and
skips the batches already trained on — without loading them when the loader comes from
:func:`repspec.torch_impl.training.data.make_loader` (its order is a function of ``(seed,
epoch)``), by loading and discarding them otherwise — then restores the random states.
So an interrupted run resumed from its last checkpoint ends with **bit-identical**
parameters and history on the CPU (same machine, same thread count; on GPUs only as far
as the kernels are deterministic). Requirements: the same data, batch size, model and
optimizer construction; loaders with ``num_workers > 0`` are exact too, except for
augmentation drawn from the workers' own RNG (use
:class:`repspec.torch_impl.training.data.RandomCropFlip`, which depends only on ``(seed, epoch,
index)``).
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import capture_rng_state, checkpoint_exists, load_checkpoint, restore_rng_state, save_checkpoint

__all__ = ["TrainHistory", "seed_everything", "evaluate", "evaluate_metrics", "freeze_batchnorm", "train_classifier",
           "RESERVED_EXTRA_KEYS"]

#: keys of a checkpoint's ``extra`` that :func:`train_classifier` writes itself
RESERVED_EXTRA_KEYS = ("train_state", "rng_state")


@dataclass
class TrainHistory:
    """What :func:`train_classifier` returns.

    ``epochs``: one dict per completed epoch — ``epoch`` (1-based), ``step`` (global step
    at its end), ``train_loss`` (mean over its samples), ``train_acc``, ``eval_loss`` and
    ``eval_acc`` (None without an eval loader), ``lr`` (first group's, before an
    epoch-interval scheduler step) — plus a last one with ``partial=True`` when a
    ``steps`` budget ends mid-epoch. ``step_losses``: the loss of every step.
    ``resumed_from_step``: the global step of the checkpoint resumed from (else None).
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    global_step: int = 0
    resumed_from_step: int | None = None

    @property
    def final_eval_acc(self) -> float | None:
        """The last recorded ``eval_acc`` (None if never evaluated)."""
        for rec in reversed(self.epochs):
            if rec.get("eval_acc") is not None:
                return rec["eval_acc"]
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))  # also seeds every CUDA device


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm layer of ``model`` in eval mode (running statistics frozen and used;
    affine parameters still train) — SPEC §5: BN statistics are frozen during QAT."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _model_ref(model: nn.Module) -> Tensor:
    for t in model.parameters():
        return t
    for t in model.buffers():
        return t
    raise ValueError("model has no parameters or buffers")


def _split_batch(batch, device, dtype) -> tuple[Tensor, Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(f"the loader must yield (x, labels) pairs, got {type(batch).__name__}")
    x, y = batch
    x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device=device)
    return x, y.to(device=device)


@torch.no_grad()
def evaluate_metrics(model: nn.Module, loader: Iterable, device=None, *,
                     loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                     progress: bool = False) -> dict[str, float]:
    """``{"accuracy", "loss", "count"}`` of ``model`` on ``loader`` in eval mode, without gradients.

    ``loss`` is the sample-weighted mean of ``loss_fn`` (a mean-reduced loss). The model's
    previous train/eval mode is restored. ``device`` defaults to the model's.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ref = _model_ref(model)
    device = ref.device if device is None else torch.device(device)
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    from tqdm.auto import tqdm

    correct, count, loss_sum = 0, 0, 0.0
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    try:
        for batch in tqdm(loader, total=total, desc="eval", disable=None if progress else True, leave=False):
            x, y = _split_batch(batch, device, dtype)
            logits = model(x)
            n = int(y.shape[0])
            loss_sum += float(loss_fn(logits, y).item()) * n
            correct += int((logits.argmax(dim=1) == y).sum().item())
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return {"accuracy": correct / count, "loss": loss_sum / count, "count": count}


def evaluate(model: nn.Module, loader: Iterable, device=None) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode, no gradients; mode restored)."""
    return evaluate_metrics(model, loader, device)["accuracy"]


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for st in optimizer.state.values():
        for k, v in list(st.items()):
            if isinstance(v, Tensor) and v.dim() > 0 and v.device != device:
                st[k] = v.to(device)


def train_classifier(model: nn.Module, train_loader: Iterable, *, optimizer: torch.optim.Optimizer,
                     epochs: int | None = None, steps: int | None = None, scheduler: Any | None = None,
                     scheduler_interval: str = "epoch", device=None, eval_loader: Iterable | None = None,
                     loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                     checkpoint_path=None, checkpoint_every: int | None = None, resume: bool | str = False,
                     checkpoint_extra: Mapping[str, Any] | None = None, progress: bool = True,
                     seed: int | None = None, freeze_bn: bool = False,
                     step_callback: Callable[[int, float, nn.Module], None] | None = None,
                     epoch_callback: Callable[[dict[str, Any]], None] | None = None,
                     on_resume: Callable[[dict[str, Any]], None] | None = None) -> TrainHistory:
    """Train ``model`` (in place) with ``optimizer`` for ``epochs`` or ``steps``; return a :class:`TrainHistory`.

    Args:
        model: a classifier returning logits; moved to ``device`` if given (optimizer
            state follows). Inputs are cast to the model's floating dtype.
        train_loader: yields ``(x, labels)``; must have ``len()``. Best built with
            :func:`repspec.torch_impl.training.data.make_loader` (exact, cheap mid-epoch resume).
            If its sampler / dataset have ``set_epoch``, it is called every epoch.
        optimizer: a constructed optimizer (``torch.optim.SGD``, ``RepOptimizerSGD`` …).
        epochs / steps: exactly one; ``steps`` may end mid-epoch.
        scheduler: optional LR scheduler, stepped after every optimizer step
            (``scheduler_interval='step'``) or after every epoch (``'epoch'``).
        eval_loader: evaluated (:func:`evaluate_metrics`) after every epoch and at the end.
        loss_fn: ``loss_fn(logits, labels)``, mean-reduced (default cross-entropy).
        checkpoint_path: a checkpoint directory; written after every epoch, every
            ``checkpoint_every`` global steps (if given) and at the end.
        resume: ``False`` (start fresh; an existing checkpoint is overwritten), ``True``
            (resume from ``checkpoint_path``, which must exist) or ``'auto'`` (resume if a
            checkpoint exists, else start fresh). A resumed run must use the same data
            and batch size (checked); ``epochs``/``steps`` may be extended.
        checkpoint_extra: plain data stored in every checkpoint's ``extra`` (e.g. the
            model name and data settings for the command line); keys
            :data:`RESERVED_EXTRA_KEYS` are taken.
        progress: tqdm progress bars (one per epoch) on a terminal (none when stderr is not a TTY);
            ``False`` disables them.
        seed: if given and the run does not resume, :func:`seed_everything` first.
        freeze_bn: keep BatchNorm layers in eval mode (SPEC §5 QAT).
        step_callback: ``step_callback(global_step, loss, model)`` after every step
            (e.g. ClusterQAT centroid refits). State it keeps must live in the model
            (buffers) for a resume to be exact.
        epoch_callback: ``epoch_callback(record)`` with each epoch's history record.
        on_resume: ``on_resume(train_state)`` right after a checkpoint was loaded (model,
            optimizer and scheduler restored), e.g. to give an extended run's scheduler a
            new cycle; ``train_state`` holds ``epoch``, ``global_step``, ``total_steps`` ….

    Raises ``FloatingPointError`` on a non-finite loss. Everything is validated first.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs or steps")
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"scheduler must have a step() method, got {type(scheduler).__name__}")
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
    if resume and checkpoint_path is None:
        raise ValueError("resume needs checkpoint_path")
    if checkpoint_every is not None:
        checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
    for name, v in (("progress", progress), ("freeze_bn", freeze_bn)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    for name, fn in (("loss_fn", loss_fn), ("step_callback", step_callback), ("epoch_callback", epoch_callback),
                     ("on_resume", on_resume)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable")
    user_extra = dict(checkpoint_extra or {})
    taken = sorted(set(user_extra) & set(RESERVED_EXTRA_KEYS))
    if taken:
        raise ValueError(f"checkpoint_extra must not use the reserved key(s) {taken}")
    try:
        bpe = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("train_loader must have len() (a DataLoader over a map-style dataset)") from None
    if bpe < 1:
        raise ValueError("train_loader is empty")
    total = _positive_int(epochs, "epochs") * bpe if epochs is not None else _positive_int(steps, "steps")

    if device is not None:
        device = torch.device(device)
        model.to(device)
        _move_optimizer_state(optimizer, device)
    ref = _model_ref(model)
    device = ref.device
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    sampler = getattr(train_loader, "sampler", None)
    dataset = getattr(train_loader, "dataset", None)
    generator = getattr(train_loader, "generator", None)
    batch_size = getattr(train_loader, "batch_size", None)
    ckpt = None if checkpoint_path is None else Path(checkpoint_path)

    # ---- loop state (all of it goes into the checkpoint)
    epoch, sie, gs = 0, 0, 0
    loss_sum, correct, count = 0.0, 0, 0
    records: list[dict[str, Any]] = []
    step_losses: list[float] = []
    epoch_start: dict[str, Any] | None = None
    resumed_from = None
    rng_now = None
    gen_now = None

    if resume and ckpt is not None and checkpoint_exists(ckpt):
        extra = load_checkpoint(ckpt, model, optimizer, scheduler)
        if not isinstance(extra, dict) or "train_state" not in extra or "rng_state" not in extra:
            raise ValueError(f"checkpoint {str(ckpt)!r} was not written by train_classifier (no train_state)")
        ts = extra["train_state"]
        if ts["batches_per_epoch"] != bpe:
            raise ValueError(f"cannot resume from {str(ckpt)!r}: it was written with {ts['batches_per_epoch']} batches "
                             f"per epoch, this train_loader has {bpe} (use the same data and batch size)")
        epoch, sie, gs = int(ts["epoch"]), int(ts["step_in_epoch"]), int(ts["global_step"])
        loss_sum, correct, count = float(ts["loss_sum"]), int(ts["correct"]), int(ts["count"])
        records = [dict(r) for r in ts["history"]]
        step_losses = [float(v) for v in ts["step_losses"].tolist()]
        epoch_start = ts["epoch_start"]
        rng_now, gen_now = extra["rng_state"], ts["loader_generator"]
        if sie > 0 and not isinstance(epoch_start, dict):
            raise ValueError(f"checkpoint {str(ckpt)!r} is mid-epoch but has no epoch-start random state")
        resumed_from = gs
        _move_optimizer_state(optimizer, device)
        if on_resume is not None:
            on_resume(dict(ts))
    elif resume is True:
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {str(ckpt)!r}")
    elif seed is not None:
        seed_everything(seed)

    def snapshot() -> dict[str, Any]:
        return {"rng": capture_rng_state(), "loader_generator": None if generator is None else generator.get_state()}

    def save() -> None:
        ts = {"epoch": epoch, "step_in_epoch": sie, "global_step": gs, "batches_per_epoch": bpe,
              "total_steps": total, "loss_sum": loss_sum, "correct": correct, "count": count,
              "history": records, "step_losses": torch.tensor(step_losses, dtype=torch.float64),
              "epoch_start": epoch_start if sie > 0 else None,
              "loader_generator": None if generator is None else generator.get_state()}
        save_checkpoint(ckpt, model, optimizer, scheduler,
                        extra={**user_extra, "train_state": ts, "rng_state": capture_rng_state()})

    def open_epoch(start: int):
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)
        if callable(getattr(dataset, "set_epoch", None)):
            dataset.set_epoch(epoch)
        in_sampler = start > 0 and callable(getattr(sampler, "set_start", None)) and batch_size is not None
        if in_sampler:
            sampler.set_start(start * batch_size)
        it = iter(train_loader)
        if start > 0 and not in_sampler:
            for i in range(start):  # replay the consumed part of the epoch (same order: RNG rewound)
                try:
                    next(it)
                except StopIteration:
                    raise ValueError(f"cannot resume: the loader yielded only {i} batches of the {start} "
                                     f"already trained in epoch {epoch}") from None
        return it

    def end_epoch_record(partial: bool) -> dict[str, Any]:
        rec: dict[str, Any] = {"epoch": epoch + 1, "step": gs,
                               "train_loss": loss_sum / count if count else None,
                               "train_acc": correct / count if count else None,
                               "eval_loss": None, "eval_acc": None, "lr": float(optimizer.param_groups[0]["lr"])}
        if partial:
            rec["partial"] = True
        if eval_loader is not None:
            m = evaluate_metrics(model, eval_loader, device, loss_fn=loss_fn)
            rec["eval_loss"], rec["eval_acc"] = m["loss"], m["accuracy"]
        return rec

    from tqdm.auto import tqdm

    first = True
    last_saved = resumed_from
    final_partial = None
    while gs < total:
        if first and resumed_from is not None and sie > 0:
            restore_rng_state(epoch_start["rng"])
            if generator is not None and epoch_start["loader_generator"] is not None:
                generator.set_state(epoch_start["loader_generator"])
            it = open_epoch(sie)
            restore_rng_state(rng_now)
            if generator is not None and gen_now is not None:
                generator.set_state(gen_now)
        else:
            if first and resumed_from is not None:
                restore_rng_state(rng_now)
                if generator is not None and gen_now is not None:
                    generator.set_state(gen_now)
            epoch_start = snapshot()
            it = open_epoch(0)
        first = False
        model.train()
        if freeze_bn:
            freeze_batchnorm(model)
        bar = tqdm(total=bpe, initial=sie, desc=f"epoch {epoch + 1}", disable=None if progress else True, leave=False,
                   dynamic_ncols=True)
        epoch_done = False
        try:
            for batch in it:
                x, y = _split_batch(batch, device, dtype)
                logits = model(x)
                loss = loss_fn(logits, y)
                value = float(loss.item())
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss is {value} at global step {gs} (epoch {epoch + 1})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None and scheduler_interval == "step":
                    scheduler.step()
                n = int(y.shape[0])
                loss_sum += value * n
                correct += int((logits.detach().argmax(dim=1) == y).sum().item())
                count += n
                step_losses.append(value)
                gs += 1
                sie += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", acc=f"{correct / count:.3f}")
                if step_callback is not None:
                    step_callback(gs, value, model)
                if sie >= bpe:
                    epoch_done = True
                    break
                if gs >= total:
                    break
                if ckpt is not None and checkpoint_every is not None and gs % checkpoint_every == 0:
                    save()
                    last_saved = gs
            else:
                epoch_done = True  # the loader ran out early (len() over-estimated)
        finally:
            bar.close()
        if epoch_done:
            rec = end_epoch_record(partial=False)
            records.append(rec)
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            if epoch_callback is not None:
                epoch_callback(dict(rec))
            epoch, sie = epoch + 1, 0
            loss_sum, correct, count = 0.0, 0, 0
            if ckpt is not None:
                save()
                last_saved = gs
        else:  # the step budget ended mid-epoch
            final_partial = end_epoch_record(partial=True)
            if epoch_callback is not None:
                epoch_callback(dict(final_partial))
    if ckpt is not None and last_saved != gs:
        save()
    history = TrainHistory(epochs=[dict(r) for r in records] + ([final_partial] if final_partial else []),
                           step_losses=step_losses, global_step=gs, resumed_from_step=resumed_from)
    return history
