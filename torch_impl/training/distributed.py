"""SPEC §3 under data parallelism: RepOptimizer training with ``DistributedDataParallel``.

Launch with ``torchrun`` (one process per device or CPU worker)::

    torchrun --nproc_per_node=2 -m repspec.torch_impl.training.distributed \\
        --model repopt_vgg_tiny8 --steps 3 --global-batch 8 --dtype float64 --out final.safetensors

Grad Mult commutes with DDP's gradient averaging (the mask is linear and identical on
every rank), so a RepOptimizer needs nothing special. BatchNorm does: each rank only
sees its shard, so to train *exactly* like one process on the global batch the BN
layers must use global batch statistics. :class:`DistributedBatchNorm2d` does that on
any backend (``nn.SyncBatchNorm`` refuses CPU tensors): the per-channel sums go
through a differentiable all-reduce (its backward all-reduces the gradient) so the BN
backward is the global one too. With equal shards and a per-shard mean loss, DDP's
gradient average is then the gradient of the global-batch mean loss, and training
equals single-process training on the same global batch (``tests/test_torch_ddp.py``).

``main()`` trains a registry RepOpt-VGG model on deterministic synthetic data (a
verification harness; real training plugs its own loader into :func:`train_repopt`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..io import atomic_save_safetensors
from ..modules.models import create_model
from ..optimizers.repoptimizer import build_repoptimizer
from ..optimizers.scales import check_scales_for_model, initial_scales, load_scales

__all__ = ["DistributedBatchNorm2d", "convert_distributed_batchnorm", "shard_batch", "DDPConfig",
           "synthetic_batches", "build_model_and_optimizer", "train_repopt", "main"]


def _dist_active(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class _AllReduceSum(torch.autograd.Function):
    """``y = Σ_ranks x`` (replicated); backward ``∂L/∂x = Σ_ranks ∂L/∂y`` — the gradient of the
    sum of every rank's loss, which DDP's average then divides by the world size."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with statistics over the global batch of all ranks (SPEC §0 BN, §3 under DDP).

    Training mode with an initialized process group of size > 1: mean and biased variance
    over every rank's samples (two differentiable all-reduces: Σx, then Σ(x − μ)²), running
    statistics updated PyTorch-style with the unbiased global variance. Otherwise (eval
    mode, or no process group) it is exactly ``nn.BatchNorm2d``. Same state-dict keys.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        """Global-batch BN in training under a process group, else ``nn.BatchNorm2d`` (SPEC §0 BN)."""
        group = self.process_group
        if not (self.training and _dist_active(group)):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        count = torch.tensor([x.numel() // c], dtype=torch.float64, device=x.device)
        dist.all_reduce(count, group=group)
        n = count.item()
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got global size {n}")
        mean = _AllReduceSum.apply(x.sum(dim=(0, 2, 3)), group) / n
        xc = x - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply((xc * xc).sum(dim=(0, 2, 3)), group) / n
        y = xc * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        return y


def convert_distributed_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace every plain ``nn.BatchNorm2d`` of ``module`` by :class:`DistributedBatchNorm2d`
    (state copied, in place; returns ``module``). Subclasses (e.g. OABN) are left alone (SPEC §3)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = DistributedBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats, process_group)
            ref = child.weight if child.weight is not None else child.running_mean
            new = new.to(device=ref.device, dtype=ref.dtype)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_distributed_batchnorm(child, process_group)
    return module


def shard_batch(batch: Sequence[Tensor], rank: int, world_size: int) -> tuple[Tensor, ...]:
    """Rank ``rank``'s contiguous equal share of a global batch (SPEC §3 under DDP).

    Equal shards are required: with a per-shard mean loss, DDP's gradient average is the
    global mean's gradient only if every shard has the same size.
    """
    n = batch[0].shape[0]
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if n % world_size:
        raise ValueError(f"global batch size {n} must be divisible by world_size={world_size}")
    b = n // world_size
    return tuple(t[rank * b:(rank + 1) * b] for t in batch)


@dataclass
class DDPConfig:
    """What :func:`main` trains (SPEC §3): a registry RepOpt-VGG model, RepOpt-SGD, synthetic data."""

    model: str = "repopt_vgg_tiny8"
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 8
    global_batch: int = 8
    steps: int = 3
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    seed: int = 0
    dtype: str = "float32"
    scales: str | None = None

    def __post_init__(self):
        for k in ("num_classes", "in_channels", "image_size", "global_batch", "steps"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive integer, got {v!r}")
        if not self.model.startswith("repopt_vgg_"):
            raise ValueError(f"model must be a RepOpt-VGG registry name ('repopt_vgg_…'), got {self.model!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        for k in ("lr", "momentum", "weight_decay"):
            v = getattr(self, k)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{k} must be a finite number >= 0, got {v!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """``torch.float32`` or ``torch.float64`` (SPEC §6 dtypes)."""
        return {"float32": torch.float32, "float64": torch.float64}[self.dtype]


def synthetic_batches(cfg: DDPConfig) -> list[tuple[Tensor, Tensor]]:
    """``cfg.steps`` deterministic global batches ``(x, labels)`` (CPU, from ``cfg.seed``; SPEC §3 under DDP)."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    shape = (cfg.global_batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    return [(torch.randn(shape, generator=g, dtype=torch.float64).to(cfg.torch_dtype),
             torch.randint(0, cfg.num_classes, (cfg.global_batch,), generator=g)) for _ in range(cfg.steps)]


def build_model_and_optimizer(cfg: DDPConfig, device=None, *, bn_process_group=None, sync_bn: bool = False):
    """The RepOpt-VGG model (``W'_0`` from the scales, seeded) and its RepOptimizerSGD (SPEC §3).

    Scales come from ``cfg.scales`` (any file :func:`repspec.torch_impl.optimizers.scales.load_scales`
    reads) or, if None, the HyperSearch initial values (:func:`initial_scales`). With
    ``sync_bn`` the BN layers are converted (:func:`convert_distributed_batchnorm`) *before*
    the optimizer is built, so it holds the new BN parameters. Returns
    ``(model, optimizer, scales)``; identical on every rank.
    """

    probe = create_model(cfg.model, cfg.num_classes, in_channels=cfg.in_channels)
    scales = initial_scales(probe) if cfg.scales is None else load_scales(cfg.scales)
    check_scales_for_model(scales, probe, source=cfg.scales or "initial_scales")
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, cfg.num_classes, in_channels=cfg.in_channels, scales=scales, seed=cfg.seed)
    model = model.to(device=device, dtype=cfg.torch_dtype)
    if sync_bn:
        convert_distributed_batchnorm(model, bn_process_group)
    opt = build_repoptimizer(model, scales, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                             weight_decay=cfg.weight_decay)
    return model, opt, scales


def train_repopt(model: nn.Module, optimizer: torch.optim.Optimizer, global_batches: Iterable, *, rank: int = 0,
                 world_size: int = 1, device=None) -> list[float]:
    """Train on global batches, each rank on its shard (SPEC §3); returns the global mean loss per step.

    ``model`` is the DDP-wrapped model when ``world_size > 1`` (BN converted with
    :func:`convert_distributed_batchnorm` for exact global-batch semantics) or the plain
    model for single-process training; the loss is the shard's mean cross-entropy.
    """
    ref = next(model.parameters())
    device = ref.device if device is None else device
    losses = []
    model.train()
    for batch in global_batches:
        x, y = shard_batch(batch, rank, world_size)
        x, y = x.to(device=device, dtype=ref.dtype), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total = loss.detach().clone()
        if world_size > 1:
            dist.all_reduce(total)
            total /= world_size
        losses.append(total.item())
    return losses


def _parse(argv) -> tuple[DDPConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m repspec.torch_impl.training.distributed",
                                description="RepOptimizer (SPEC §3) training under DistributedDataParallel; "
                                            "launch with torchrun.")
    d = DDPConfig()
    p.add_argument("--model", default=d.model)
    p.add_argument("--num-classes", type=int, default=d.num_classes)
    p.add_argument("--in-channels", type=int, default=d.in_channels)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--global-batch", type=int, default=d.global_batch)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"])
    p.add_argument("--scales", default=None, help="scale file (.safetensors/.json/.pth); default: HS init values")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backend", default=None, help="process-group backend (default: nccl on CUDA, else gloo)")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="keep per-rank BN statistics (then DDP != single process on the global batch)")
    p.add_argument("--out", default=None, help="rank 0 writes the final state dict here (.safetensors, atomic)")
    args = p.parse_args(argv)
    cfg = DDPConfig(model=args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                    image_size=args.image_size, global_batch=args.global_batch, steps=args.steps, lr=args.lr,
                    momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay, seed=args.seed,
                    dtype=args.dtype, scales=args.scales)
    return cfg, args


def main(argv: Sequence[str] | None = None) -> int:
    """``torchrun`` entry point (SPEC §3): DDP RepOpt-VGG training; rank 0 saves the result.

    Reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment (set by torchrun);
    without them it trains in a single process. The output safetensors file holds the
    final ``state_dict`` with metadata ``losses`` (JSON list), ``world_size`` and ``config``.
    """
    cfg, args = _parse(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    distributed = world_size > 1
    backend = args.backend or ("nccl" if use_cuda else "gloo")
    if distributed:
        dist.init_process_group(backend=backend)
    try:
        bn_group = dist.new_group(backend=backend) if (distributed and args.sync_bn) else None
        model, opt, _ = build_model_and_optimizer(cfg, device, bn_process_group=bn_group,
                                                  sync_bn=distributed and args.sync_bn)
        if distributed:
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
        else:
            ddp = model
        losses = train_repopt(ddp, opt, synthetic_batches(cfg), rank=rank, world_size=world_size, device=device)
        if rank == 0:
            print(json.dumps({"world_size": world_size, "losses": losses}), flush=True)
            if args.out:

                atomic_save_safetensors(model.state_dict(), args.out,
                                        metadata={"losses": json.dumps(losses), "world_size": str(world_size),
                                                  "config": json.dumps(asdict(cfg))})
        if distributed:
            dist.barrier()
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
