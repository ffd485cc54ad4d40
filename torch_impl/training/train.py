"""Training and evaluation loops with exact resume (``repspec train | hypersearch | quantize``).

:func:`train_classifier` trains any classifier (RepVGG, RepOpt-VGG with a RepOptimizer,
HyperSearch, QAT models …) on ``(x, labels)`` batches with a given optimizer and optional
LR scheduler, evaluates after every epoch, shows tqdm progress bars, and writes
checkpoints (:mod:`repspec.torch_impl.training.checkpoint`). The run's settings (budget,
device, loss, checkpointing, resume, seed …) are one frozen :class:`TrainConfig`, checked
when it is built; the loop is small functions sharing one explicit state object
(``_LoopState``, what a checkpoint's ``train_state`` holds).

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
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_bool, check_choice, check_int
from .checkpoint import capture_rng_state, checkpoint_exists, load_checkpoint, restore_rng_state, save_checkpoint

__all__ = ["RESERVED_EXTRA_KEYS", "TrainConfig", "TrainHistory", "evaluate", "evaluate_metrics", "freeze_batchnorm",
           "seed_everything", "train_classifier"]

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


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for st in optimizer.state.values():
        for k, v in list(st.items()):
            if isinstance(v, Tensor) and v.dim() > 0 and v.device != device:
                st[k] = v.to(device)


# ------------------------------------------------------------------------------ the run's settings


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one :func:`train_classifier` run, checked once when it is built.

    Fields:
        epochs / steps: exactly one, a positive integer; ``steps`` may end mid-epoch.
        scheduler_interval: the scheduler is stepped after every optimizer step
            (``'step'``) or after every epoch (``'epoch'``, the default).
        device: the model is moved there (optimizer state follows); None keeps it where it is.
            Stored as a ``torch.device``.
        loss_fn: ``loss_fn(logits, labels)``, mean-reduced (default cross-entropy); also the
            evaluation loss.
        checkpoint_path: a checkpoint directory (stored as a ``Path``); written after every
            epoch, every ``checkpoint_every`` global steps (if given) and at the end.
        checkpoint_every: a positive integer or None.
        resume: ``False`` (start fresh; an existing checkpoint is overwritten), ``True``
            (resume from ``checkpoint_path``, which must exist) or ``'auto'`` (resume if a
            checkpoint exists, else start fresh). A resumed run must use the same data
            and batch size (checked); ``epochs``/``steps`` may be extended.
        checkpoint_extra: plain data stored in every checkpoint's ``extra`` (e.g. the
            model name and data settings for the command line); keys
            :data:`RESERVED_EXTRA_KEYS` are taken. Stored as a copy (a ``dict``).
        progress: tqdm progress bars (one per epoch) on a terminal (none when stderr is not a
            TTY); ``False`` disables them.
        seed: a non-negative integer (what :func:`seed_everything` takes) or None; if given and
            the run does not resume, :func:`seed_everything` first.
        freeze_bn: keep BatchNorm layers in eval mode (SPEC §5 QAT).

    Every check raises ``TypeError``/``ValueError`` naming the field; the config is frozen, so
    use :func:`dataclasses.replace` for a variant (e.g. the same run with ``resume=True``).
    """

    epochs: int | None = None
    steps: int | None = None
    scheduler_interval: str = "epoch"
    device: torch.device | str | None = None
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    checkpoint_path: Path | str | None = None
    checkpoint_every: int | None = None
    resume: bool | str = False
    checkpoint_extra: Mapping[str, Any] | None = None
    progress: bool = True
    seed: int | None = None
    freeze_bn: bool = False

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of epochs or steps")
        self._set("epochs", None if self.epochs is None else check_int(self.epochs, "epochs", 1))
        self._set("steps", None if self.steps is None else check_int(self.steps, "steps", 1))
        check_choice(self.scheduler_interval, "scheduler_interval", ("epoch", "step"))
        self._set("device", _check_device(self.device))
        if not callable(self.loss_fn):
            raise TypeError("loss_fn must be callable")
        self._set("checkpoint_path", _check_path(self.checkpoint_path, "checkpoint_path"))
        if self.checkpoint_every is not None:
            self._set("checkpoint_every", check_int(self.checkpoint_every, "checkpoint_every", 1))
        if not (isinstance(self.resume, bool) or (isinstance(self.resume, str) and self.resume == "auto")):
            raise ValueError(f"resume must be False, True or 'auto', got {self.resume!r}")
        if self.resume and self.checkpoint_path is None:
            raise ValueError("resume needs checkpoint_path")
        self._set("checkpoint_extra", _check_extra(self.checkpoint_extra))
        self._set("progress", check_bool(self.progress, "progress"))
        self._set("seed", None if self.seed is None else check_int(self.seed, "seed", 0))
        self._set("freeze_bn", check_bool(self.freeze_bn, "freeze_bn"))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalizing a frozen dataclass's field in __post_init__

    def total_steps(self, batches_per_epoch: int) -> int:
        """The step budget: ``steps``, or ``epochs`` times the batches per epoch."""
        return self.epochs * batches_per_epoch if self.epochs is not None else self.steps


def _check_device(device) -> torch.device | None:
    if device is None or isinstance(device, torch.device):
        return device
    if not isinstance(device, (str, int)) or isinstance(device, bool):
        raise TypeError(f"device must be a torch.device, str or int, got {type(device).__name__}")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"device {device!r} is not a device: {exc}") from None


def _check_path(path, name: str) -> Path | None:
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _check_extra(extra) -> dict[str, Any]:
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"checkpoint_extra must be a mapping, got {type(extra).__name__}")
    taken = sorted(set(extra) & set(RESERVED_EXTRA_KEYS))
    if taken:
        raise ValueError(f"checkpoint_extra must not use the reserved key(s) {taken}")
    return dict(extra)


# ------------------------------------------------------------------------------ the loop's objects and state


@dataclass(frozen=True)
class _Run:
    """What one run works with, fixed for its length (the loop's state is :class:`_LoopState`)."""

    model: nn.Module
    loader: Iterable
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    eval_loader: Iterable | None
    config: TrainConfig
    step_callback: Callable[[int, float, nn.Module], None] | None
    epoch_callback: Callable[[dict[str, Any]], None] | None
    on_resume: Callable[[dict[str, Any]], None] | None
    device: torch.device
    dtype: torch.dtype
    batches_per_epoch: int
    total: int
    sampler: Any  # the loader's sampler, dataset, generator and batch size (None where it has none)
    dataset: Any
    generator: torch.Generator | None
    batch_size: int | None


@dataclass
class _LoopState:
    """The loop position, accumulators and history: everything the checkpoint's ``train_state`` holds,
    plus what the loop needs between epochs (``resumed_from``, ``last_saved``, ``final_partial``,
    and the random states still to restore after a resume)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    epoch_start: dict[str, Any] | None = None
    resumed_from: int | None = None
    last_saved: int | None = None
    final_partial: dict[str, Any] | None = None
    pending_rng: tuple[Any, Any] | None = None  # (rng_state, loader generator state) to restore once

    @classmethod
    def from_train_state(cls, ts: Mapping[str, Any], rng_state: Any) -> _LoopState:
        """The state a checkpoint's ``train_state`` (and ``rng_state``) describe."""
        gs = int(ts["global_step"])
        return cls(epoch=int(ts["epoch"]), step_in_epoch=int(ts["step_in_epoch"]), global_step=gs,
                   loss_sum=float(ts["loss_sum"]), correct=int(ts["correct"]), count=int(ts["count"]),
                   records=[dict(r) for r in ts["history"]],
                   step_losses=[float(v) for v in ts["step_losses"].tolist()], epoch_start=ts["epoch_start"],
                   resumed_from=gs, last_saved=gs, pending_rng=(rng_state, ts["loader_generator"]))

    def to_train_state(self, run: _Run) -> dict[str, Any]:
        """The checkpoint's ``train_state`` (its keys and their order are the checkpoint format)."""
        generator = run.generator
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "batches_per_epoch": run.batches_per_epoch, "total_steps": run.total, "loss_sum": self.loss_sum,
                "correct": self.correct, "count": self.count, "history": self.records,
                "step_losses": torch.tensor(self.step_losses, dtype=torch.float64),
                "epoch_start": self.epoch_start if self.step_in_epoch > 0 else None,
                "loader_generator": None if generator is None else generator.get_state()}

    def add_step(self, value: float, logits: Tensor, y: Tensor) -> None:
        """Account one optimizer step: its loss ``value`` on the batch ``(logits, y)``."""
        n = int(y.shape[0])
        self.loss_sum += value * n
        self.correct += int((logits.detach().argmax(dim=1) == y).sum().item())
        self.count += n
        self.step_losses.append(value)
        self.global_step += 1
        self.step_in_epoch += 1

    def next_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.loss_sum, self.correct, self.count = 0.0, 0, 0


# ------------------------------------------------------------------------------ the loop


def train_classifier(model: nn.Module, train_loader: Iterable, *, optimizer: torch.optim.Optimizer,
                     config: TrainConfig, scheduler: Any | None = None, eval_loader: Iterable | None = None,
                     step_callback: Callable[[int, float, nn.Module], None] | None = None,
                     epoch_callback: Callable[[dict[str, Any]], None] | None = None,
                     on_resume: Callable[[dict[str, Any]], None] | None = None) -> TrainHistory:
    """Train ``model`` (in place) with ``optimizer`` as ``config`` says; return a :class:`TrainHistory`.

    Args:
        model: a classifier returning logits; moved to ``config.device`` if given (optimizer
            state follows). Inputs are cast to the model's floating dtype.
        train_loader: yields ``(x, labels)``; must have ``len()``. Best built with
            :func:`repspec.torch_impl.training.data.make_loader` (exact, cheap mid-epoch resume).
            If its sampler / dataset have ``set_epoch``, it is called every epoch.
        optimizer: a constructed optimizer (``torch.optim.SGD``, ``RepOptimizerSGD`` …).
        config: the run's settings (:class:`TrainConfig`: budget, device, loss, checkpoints,
            resume, seed, progress, freeze_bn).
        scheduler: optional LR scheduler, stepped as ``config.scheduler_interval`` says.
        eval_loader: evaluated (:func:`evaluate_metrics`) after every epoch and at the end.
        step_callback: ``step_callback(global_step, loss, model)`` after every step
            (e.g. ClusterQAT centroid refits). State it keeps must live in the model
            (buffers) for a resume to be exact.
        epoch_callback: ``epoch_callback(record)`` with each epoch's history record.
        on_resume: ``on_resume(train_state)`` right after a checkpoint was loaded (model,
            optimizer and scheduler restored), e.g. to give an extended run's scheduler a
            new cycle; ``train_state`` holds ``epoch``, ``global_step``, ``total_steps`` ….

    Raises ``FloatingPointError`` on a non-finite loss. Everything is validated first.
    """
    run = _prepare_run(model, train_loader, optimizer, config, scheduler, eval_loader,
                       step_callback, epoch_callback, on_resume)
    state = _initial_state(run)
    while state.global_step < run.total:
        if _train_epoch(run, state, _begin_epoch(run, state)):
            _finish_epoch(run, state)
        else:  # the step budget ended mid-epoch
            _finish_partial_epoch(run, state)
    if config.checkpoint_path is not None and state.last_saved != state.global_step:
        _save(run, state)
    return TrainHistory(epochs=[dict(r) for r in state.records]
                        + ([state.final_partial] if state.final_partial else []),
                        step_losses=state.step_losses, global_step=state.global_step,
                        resumed_from_step=state.resumed_from)


def _check_inputs(model, train_loader, optimizer, config, scheduler, callbacks: Mapping[str, Any]) -> int:
    """Check the objects a run works with (``config`` checked itself); return the batches per epoch."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"scheduler must have a step() method, got {type(scheduler).__name__}")
    for name, fn in callbacks.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable")
    try:
        bpe = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("train_loader must have len() (a DataLoader over a map-style dataset)") from None
    if bpe < 1:
        raise ValueError("train_loader is empty")
    return bpe


def _prepare_run(model, train_loader, optimizer, config, scheduler, eval_loader,
                 step_callback, epoch_callback, on_resume) -> _Run:
    """Check the inputs, then move the model (and the optimizer state) to ``config.device``."""
    callbacks = {"step_callback": step_callback, "epoch_callback": epoch_callback, "on_resume": on_resume}
    bpe = _check_inputs(model, train_loader, optimizer, config, scheduler, callbacks)
    if config.device is not None:
        model.to(config.device)
        _move_optimizer_state(optimizer, config.device)
    ref = _model_ref(model)
    return _Run(model=model, loader=train_loader, optimizer=optimizer, scheduler=scheduler, eval_loader=eval_loader,
                config=config, **callbacks, device=ref.device,
                dtype=ref.dtype if ref.is_floating_point() else torch.float32,
                batches_per_epoch=bpe, total=config.total_steps(bpe),
                sampler=getattr(train_loader, "sampler", None), dataset=getattr(train_loader, "dataset", None),
                generator=getattr(train_loader, "generator", None),
                batch_size=getattr(train_loader, "batch_size", None))


def _initial_state(run: _Run) -> _LoopState:
    """A fresh state (after seeding, if the config has a seed), or the one of the checkpoint resumed from."""
    cfg = run.config
    if cfg.resume and checkpoint_exists(cfg.checkpoint_path):
        return _resume(run)
    if cfg.resume is True:
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {str(cfg.checkpoint_path)!r}")
    if cfg.seed is not None:
        seed_everything(cfg.seed)
    return _LoopState()


def _resume(run: _Run) -> _LoopState:
    """Load the checkpoint into the model, optimizer and scheduler; the loop state it holds."""
    ckpt = run.config.checkpoint_path
    extra = load_checkpoint(ckpt, run.model, run.optimizer, run.scheduler)
    if not isinstance(extra, dict) or "train_state" not in extra or "rng_state" not in extra:
        raise ValueError(f"checkpoint {str(ckpt)!r} was not written by train_classifier (no train_state)")
    ts = extra["train_state"]
    if ts["batches_per_epoch"] != run.batches_per_epoch:
        raise ValueError(f"cannot resume from {str(ckpt)!r}: it was written with {ts['batches_per_epoch']} batches "
                         f"per epoch, this train_loader has {run.batches_per_epoch} (use the same data and batch size)")
    state = _LoopState.from_train_state(ts, extra["rng_state"])
    if state.step_in_epoch > 0 and not isinstance(state.epoch_start, dict):
        raise ValueError(f"checkpoint {str(ckpt)!r} is mid-epoch but has no epoch-start random state")
    _move_optimizer_state(run.optimizer, run.device)
    if run.on_resume is not None:
        run.on_resume(dict(ts))
    return state


def _restore_random_state(run: _Run, rng_state: Any, generator_state: Any) -> None:
    restore_rng_state(rng_state)
    if run.generator is not None and generator_state is not None:
        run.generator.set_state(generator_state)


def _begin_epoch(run: _Run, state: _LoopState) -> Iterator:
    """The epoch's batch iterator, with the random states set as an uninterrupted run has them.

    The first epoch after a resume mid-epoch re-creates the epoch's order from its start
    state, then restores the checkpoint's current random states; at an epoch start it
    restores them and snapshots the new epoch's start state, as every epoch does.
    """
    pending, state.pending_rng = state.pending_rng, None
    if pending is not None and state.step_in_epoch > 0:
        _restore_random_state(run, state.epoch_start["rng"], state.epoch_start["loader_generator"])
        it = _open_epoch(run, state.epoch, state.step_in_epoch)
        _restore_random_state(run, *pending)
        return it
    if pending is not None:
        _restore_random_state(run, *pending)
    state.epoch_start = {"rng": capture_rng_state(),
                         "loader_generator": None if run.generator is None else run.generator.get_state()}
    return _open_epoch(run, state.epoch, 0)


def _open_epoch(run: _Run, epoch: int, start: int) -> Iterator:
    """Iterate epoch ``epoch`` from batch ``start``: inside the sampler where it can, else by replaying."""
    sampler, dataset, batch_size = run.sampler, run.dataset, run.batch_size
    if callable(getattr(sampler, "set_epoch", None)):
        sampler.set_epoch(epoch)
    if callable(getattr(dataset, "set_epoch", None)):
        dataset.set_epoch(epoch)
    in_sampler = start > 0 and callable(getattr(sampler, "set_start", None)) and batch_size is not None
    if in_sampler:
        sampler.set_start(start * batch_size)
    it = iter(run.loader)
    if start > 0 and not in_sampler:
        for i in range(start):  # replay the consumed part of the epoch (same order: RNG rewound)
            try:
                next(it)
            except StopIteration:
                raise ValueError(f"cannot resume: the loader yielded only {i} batches of the {start} "
                                 f"already trained in epoch {epoch}") from None
    return it


def _train_epoch(run: _Run, state: _LoopState, it: Iterator) -> bool:
    """Train on the epoch's remaining batches; True if the epoch ended, False if the step budget did."""
    cfg = run.config
    run.model.train()
    if cfg.freeze_bn:
        freeze_batchnorm(run.model)
    bar = tqdm(total=run.batches_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}",
               disable=None if cfg.progress else True, leave=False, dynamic_ncols=True)
    try:
        for batch in it:
            value = _train_step(run, state, batch)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", acc=f"{state.correct / state.count:.3f}")
            if run.step_callback is not None:
                run.step_callback(state.global_step, value, run.model)
            if state.step_in_epoch >= run.batches_per_epoch:
                return True
            if state.global_step >= run.total:
                return False
            every = cfg.checkpoint_every
            if cfg.checkpoint_path is not None and every is not None and state.global_step % every == 0:
                _save(run, state)
        return True  # the loader ran out early (len() over-estimated)
    finally:
        bar.close()


def _train_step(run: _Run, state: _LoopState, batch) -> float:
    """One optimizer step (and a per-step scheduler step) on ``batch``; its loss."""
    x, y = _split_batch(batch, run.device, run.dtype)
    logits = run.model(x)
    loss = run.config.loss_fn(logits, y)
    value = float(loss.item())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at global step {state.global_step} (epoch {state.epoch + 1})")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.scheduler is not None and run.config.scheduler_interval == "step":
        run.scheduler.step()
    state.add_step(value, logits, y)
    return value


def _finish_epoch(run: _Run, state: _LoopState) -> None:
    """Record the finished epoch, step an epoch-interval scheduler, start the next epoch, checkpoint."""
    rec = _epoch_record(run, state, partial=False)
    state.records.append(rec)
    if run.scheduler is not None and run.config.scheduler_interval == "epoch":
        run.scheduler.step()
    if run.epoch_callback is not None:
        run.epoch_callback(dict(rec))
    state.next_epoch()
    if run.config.checkpoint_path is not None:
        _save(run, state)


def _finish_partial_epoch(run: _Run, state: _LoopState) -> None:
    """Record the epoch the step budget ended in (``partial=True``; not part of the checkpoint's history)."""
    state.final_partial = _epoch_record(run, state, partial=True)
    if run.epoch_callback is not None:
        run.epoch_callback(dict(state.final_partial))


def _epoch_record(run: _Run, state: _LoopState, *, partial: bool) -> dict[str, Any]:
    count = state.count
    rec: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.global_step,
                           "train_loss": state.loss_sum / count if count else None,
                           "train_acc": state.correct / count if count else None,
                           "eval_loss": None, "eval_acc": None, "lr": float(run.optimizer.param_groups[0]["lr"])}
    if partial:
        rec["partial"] = True
    if run.eval_loader is not None:
        m = evaluate_metrics(run.model, run.eval_loader, run.device, loss_fn=run.config.loss_fn)
        rec["eval_loss"], rec["eval_acc"] = m["loss"], m["accuracy"]
    return rec


def _save(run: _Run, state: _LoopState) -> None:
    """Write the checkpoint: model, optimizer, scheduler, the config's extra, train_state and random states."""
    ts = state.to_train_state(run)
    save_checkpoint(run.config.checkpoint_path, run.model, run.optimizer, run.scheduler,
                    extra={**run.config.checkpoint_extra, "train_state": ts, "rng_state": capture_rng_state()})
    state.last_saved = state.global_step
