"""SPEC §3 under DistributedDataParallel: 2 CPU processes (gloo, torchrun on 127.0.0.1) train a
RepOpt-VGG with RepOptimizerSGD exactly like one process on the same global batch.

The DDP run goes through the real entry point (``python -m torch.distributed.run
--nproc_per_node=2 -m repspec.torch_impl.training.distributed``); the single-process run is
:func:`train_repopt` in this process with plain ``nn.BatchNorm2d``. After 3 steps every
parameter, BN running statistic and per-step loss agree to the float64 tolerance.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from repspec.torch_impl.training.distributed import (
    DDPConfig,
    DistributedBatchNorm2d,
    build_model_and_optimizer,
    convert_distributed_batchnorm,
    shard_batch,
    synthetic_batches,
    train_repopt,
)
from repspec.torch_impl.modules.models import create_model
from repspec.torch_impl.optimizers.scales import initial_scales, save_scales
from tests.tolerances import assert_close, assert_trees_close

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_single_process(tmp_path):
    # non-trivial scales so the masks matter
    probe = create_model("repopt_vgg_tiny8", 5, in_channels=3)
    g = torch.Generator().manual_seed(3)
    scales = {k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=torch.float64)) for k, v in
              initial_scales(probe).items()}
    save_scales(scales, tmp_path / "scales.safetensors")
    cfg = DDPConfig(model="repopt_vgg_tiny8", num_classes=5, in_channels=3, image_size=8, global_batch=8, steps=3,
                    lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, seed=11, dtype="float64",
                    scales=str(tmp_path / "scales.safetensors"))
    out = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "-m", "repspec.torch_impl.training.distributed",
           "--model", cfg.model, "--num-classes", str(cfg.num_classes), "--in-channels", str(cfg.in_channels),
           "--image-size", str(cfg.image_size), "--global-batch", str(cfg.global_batch), "--steps", str(cfg.steps),
           "--lr", str(cfg.lr), "--momentum", str(cfg.momentum), "--weight-decay", str(cfg.weight_decay),
           "--seed", str(cfg.seed), "--dtype", cfg.dtype, "--scales", cfg.scales, "--device", "cpu",
           "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        ddp_state = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["world_size"] == "2"

    model, opt, _ = build_model_and_optimizer(cfg)
    assert not any(isinstance(m, DistributedBatchNorm2d) for m in model.modules())
    losses = train_repopt(model, opt, synthetic_batches(cfg))
    single = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert set(single) == set(ddp_state)
    assert_trees_close({k: v.numpy() for k, v in ddp_state.items()}, single)
    assert_close(json.loads(meta["losses"]), losses, name="losses")
    # the run really trained (the weights moved away from W'_0)
    model0, _, _ = build_model_and_optimizer(cfg)
    assert not torch.allclose(model0.stage0.conv.weight, model.stage0.conv.weight)


def test_distributed_batchnorm_is_plain_bn_without_process_group():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).double()
    ref = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).double()
    ref.load_state_dict(m.state_dict())
    convert_distributed_batchnorm(m)
    assert isinstance(m[1], DistributedBatchNorm2d) and set(m.state_dict()) == set(ref.state_dict())
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    assert torch.equal(m(x), ref(x))
    assert torch.equal(m[1].running_var, ref[1].running_var)


def test_shard_batch_validates():
    x, y = torch.zeros(6, 1), torch.zeros(6)
    assert [t.shape[0] for t in shard_batch((x, y), 1, 3)] == [2, 2]
    with pytest.raises(ValueError, match="divisible by world_size=4"):
        shard_batch((x, y), 0, 4)
    with pytest.raises(ValueError, match="rank"):
        shard_batch((x, y), 3, 3)
    with pytest.raises(ValueError, match="model must be a RepOpt-VGG"):
        DDPConfig(model="repvgg_a0")
