"""``repspec.torch_impl`` as a conformance adapter — the first port checked by the suite.

Every method converts the NumPy float64 inputs to float64 tensors, runs the
``repspec.torch_impl`` modules (blocks, OABN, RepOptimizerSGD, quant, kmeans), and converts
back. Nothing here re-implements the spec: where a piece of ``torch_impl`` is missing,
the method raises :class:`~repspec.conformance.adapter.NotProvided` and its clauses are
reported as skipped.

``TorchAdapter(device="cpu", foreach=None, dtype=torch.float64, fused=False)``: ``device`` where the
tensors live (e.g. ``"cuda"``; TF32 is switched off while a method runs), ``foreach``
RepOptimizerSGD's multi-tensor switch (None: torch's default for the device), ``dtype``
the compute dtype (float64 is the contract; ``torch.float32`` goes with the advisory
``--profile float32``), ``fused`` RepOptimizerSGD's one-pass step. Factories for ``--impl``:
``TorchAdapter`` (CPU, float64), ``cuda`` (``…torch_adapter:cuda``), ``float32`` (CPU,
float32), ``fused`` (CPU, float64, ``fused=True``).
"""

from __future__ import annotations

import contextlib
import importlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapter import (AdapterBase, NetworkSpec, NotProvided, OABNResult, SGDSpec, TrainIterationResult,
                      without_num_batches_tracked)

__all__ = ["TorchAdapter", "cuda", "float32", "fused"]

_F64 = torch.float64


def _torch_impl(module: str):
    """``repspec.torch_impl.quantization.<module>``, or NotProvided if torch_impl does not have it (yet)."""
    try:
        return importlib.import_module(f"repspec.torch_impl.quantization.{module}")
    except ImportError as exc:
        raise NotProvided(f"repspec.torch_impl.quantization.{module} is not available: {exc}") from None


class TorchAdapter(AdapterBase):
    """The PyTorch implementation (``repspec.torch_impl``) behind the adapter protocol, in float64."""

    def __init__(self, device: str | torch.device = "cpu", foreach: bool | None = None,
                 dtype: torch.dtype = torch.float64, fused: bool = False):
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
        if not isinstance(fused, bool):
            raise TypeError(f"fused must be a bool, got {type(fused).__name__}")
        if fused and foreach:
            raise ValueError("fused=True and foreach=True are exclusive")
        self.device = torch.device(device)
        self.foreach = foreach
        self.fused = fused
        self.dtype = dtype
        opts = [self.device.type] + ([f"foreach={foreach}"] if foreach is not None else []) + \
            (["float32"] if dtype == torch.float32 else []) + (["fused"] if fused else [])
        self.name = f"torch_impl ({', '.join(opts)})"

    # ------------------------------------------------------------------ helpers
    def _t(self, a, *, requires_grad: bool = False) -> torch.Tensor:
        t = torch.from_numpy(np.array(a, dtype=np.float64, copy=True)).to(self.device, self.dtype)
        return t.requires_grad_(requires_grad)

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", _F64).numpy().copy()

    @contextlib.contextmanager
    def _exact(self):
        """No TF32 on CUDA while a method runs (the float64 contract is unaffected on CPU)."""
        if self.device.type != "cuda":
            yield
            return
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

    def _load(self, module: nn.Module, params, buffers) -> nn.Module:
        from repspec.torch_impl.modules.interop import load_reference_arrays

        module = module.to(device=self.device, dtype=self.dtype)
        # the suite hands in PyTorch-style buffers (num_batches_tracked included); the interop loader
        # matches the reference's names, which leave the counter out
        load_reference_arrays(module, params, None if buffers is None else without_num_batches_tracked(buffers))
        return module

    # -------------------------------------------------------------- §2 fusion
    def fuse_repvgg_block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps, oabn_threshold):
        from repspec.torch_impl.modules.blocks import RepVGGBlock

        block = self._load(RepVGGBlock(in_channels, out_channels, stride, groups, oabn_threshold=oabn_threshold,
                                       bn_eps=eps), params, buffers).eval()
        with torch.no_grad(), self._exact():
            k, b = block.get_equivalent_kernel_bias()
        return self._np(k), self._np(b)

    def fuse_qarepvgg_block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps, fold_post_bn):
        from repspec.torch_impl.modules.blocks import QARepVGGBlock

        block = self._load(QARepVGGBlock(in_channels, out_channels, stride, groups, bn_eps=eps), params,
                           buffers).eval()
        with torch.no_grad(), self._exact():
            k, b = block.get_equivalent_kernel_bias(include_post_bn=fold_post_bn)
        if fold_post_bn:
            return self._np(k), self._np(b)
        post = {f"bn.{n}": self._np(getattr(block.bn, n)) for n in ("weight", "bias", "running_mean", "running_var")}
        return self._np(k), self._np(b), post

    # -------------------------------------------------------------- §3 RepOpt
    def grad_mult_mask(self, scale_conv, scale_1x1, in_channels, *, identity, exponent):
        from repspec.torch_impl.optimizers.repoptimizer import grad_mult_mask_from_scales

        return self._np(grad_mult_mask_from_scales(self._t(scale_conv), self._t(scale_1x1), in_channels,
                                                   identity=identity, exponent=exponent))

    def repopt_sgd_step(self, param, grad, momentum_buffer, *, grad_mult_mask, lr, momentum, dampening, nesterov,
                        weight_decay):
        from repspec.torch_impl.optimizers.repoptimizer import RepOptimizerSGD

        p = nn.Parameter(self._t(param))
        masks = None if grad_mult_mask is None else {p: self._t(grad_mult_mask)}
        opt = RepOptimizerSGD([p], lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                              weight_decay=weight_decay, grad_mult_masks=masks, foreach=self.foreach,
                              fused=self.fused)
        if momentum_buffer is not None:
            opt.state[p]["momentum_buffer"] = self._t(momentum_buffer)
        p.grad = self._t(grad)
        opt.step()
        buf = opt.state[p].get("momentum_buffer")
        return self._np(p), None if buf is None else self._np(buf)

    # -------------------------------------------------------------- §4 OABN
    def oabn_train(self, x, gamma, beta, running_mean, running_var, dy, *, threshold, momentum, eps, gradient):
        from repspec.torch_impl.modules.oabn import OABN

        m = OABN(len(gamma), eps=eps, momentum=momentum, threshold=threshold, gradient=gradient)
        m = self._load(m, {"weight": gamma, "bias": beta}, {"running_mean": running_mean,
                                                             "running_var": running_var}).train()
        xt = self._t(x, requires_grad=True)
        with self._exact():
            y = m(xt)
            y.backward(self._t(dy))
        return OABNResult(self._np(y), self._np(m.running_mean), self._np(m.running_var), self._np(xt.grad),
                          self._np(m.weight.grad), self._np(m.bias.grad))

    # -------------------------------------------------------------- §5 uniform
    def fake_quantize_weight(self, w, *, bits, per_channel):
        q = _torch_impl("quant")
        with torch.no_grad():
            return self._np(q.fake_quantize_weight(self._t(w), bits, per_channel))

    def fake_quantize_weight_backward(self, dy, w, *, bits, per_channel):
        q = _torch_impl("quant")
        wt = self._t(w, requires_grad=True)
        q.fake_quantize_weight(wt, bits, per_channel).backward(self._t(dy))
        return self._np(wt.grad)

    def _act(self, q, lo, hi, bits):
        lo_t, hi_t = (torch.tensor(float(v), dtype=self.dtype, device=self.device) for v in (lo, hi))
        return q.activation_qparams(lo_t, hi_t, bits)

    def fake_quantize_activation(self, x, *, lo, hi, bits):
        q = _torch_impl("quant")
        scale, zp = self._act(q, lo, hi, bits)
        with torch.no_grad():
            return self._np(q.fake_quantize_activation(self._t(x), scale, zp, bits))

    def fake_quantize_activation_backward(self, dy, x, *, lo, hi, bits):
        q = _torch_impl("quant")
        scale, zp = self._act(q, lo, hi, bits)
        xt = self._t(x, requires_grad=True)
        q.fake_quantize_activation(xt, scale, zp, bits).backward(self._t(dy))
        return self._np(xt.grad)

    # -------------------------------------------------------------- §5 k-means
    def kmeans_fake_quantize(self, w, centroids):
        km = _torch_impl("kmeans")
        with torch.no_grad():
            return self._np(km.kmeans_fake_quantize(self._t(w), self._t(centroids)))

    def kmeans_1d(self, values, k, *, init, max_iter, init_centroids=None):
        km = _torch_impl("kmeans")
        warm = None if init_centroids is None else self._t(init_centroids)
        res = km.kmeans_1d(self._t(values), k, init=init, max_iter=max_iter, init_centroids=warm)
        return self._np(res.centroids), res.labels.detach().cpu().numpy().astype(np.int64)

    # -------------------------------------------------------------- §1 training
    def _block(self, b, params):
        from repspec.torch_impl.modules import blocks as tb

        bn = dict(bn_eps=b.bn_eps, bn_momentum=b.bn_momentum)
        if b.kind == "repvgg":
            return tb.RepVGGBlock(b.in_channels, b.out_channels, b.stride, b.groups, oabn_threshold=b.oabn_threshold,
                                  oabn_gradient=b.oabn_gradient, **bn)
        if b.kind == "qarepvgg":
            return tb.QARepVGGBlock(b.in_channels, b.out_channels, b.stride, b.groups, **bn)
        if b.kind == "csla":
            d = params.get(f"{b.prefix}.scale_identity.weight", 1.0) if b.identity != "none" else 1.0
            return tb.CSLABlock(b.in_channels, b.out_channels, b.stride,
                                scale_conv=params[f"{b.prefix}.scale_conv.weight"],
                                scale_1x1=params[f"{b.prefix}.scale_1x1.weight"], identity=b.identity,
                                scale_identity=d, **bn)
        if b.kind == "repopt_target":
            return tb.RepOptTargetBlock(b.in_channels, b.out_channels, b.stride, **bn)
        raise NotProvided(f"block kind {b.kind!r}")

    def train_iteration(self, network: NetworkSpec, params, buffers, x, labels, *, optimizer: SGDSpec, opt_state):
        from repspec.torch_impl.modules.interop import module_arrays
        from repspec.torch_impl.optimizers.repoptimizer import RepOptimizerSGD

        net = _Net([self._block(b, params) for b in network.blocks], network.blocks[-1].out_channels,
                   network.num_classes)
        to_torch: dict[str, str] = {}  # reference name -> torch name
        for i, b in enumerate(network.blocks):
            for name in list(params) + list(buffers):
                if name.startswith(b.prefix + "."):
                    to_torch[name] = f"blocks.{i}.{name[len(b.prefix) + 1:]}"
        for n in ("weight", "bias"):
            to_torch[f"{network.head_name}.{n}"] = f"head.{n}"
        from_torch = {v: k for k, v in to_torch.items()}
        self._load(net, {to_torch[k]: v for k, v in params.items()}, {to_torch[k]: v for k, v in buffers.items()})
        net.train()
        named = dict(net.named_parameters())
        trainable = {from_torch[k]: p for k, p in named.items() if p.requires_grad}

        groups: dict[float, list] = {}
        for name, p in trainable.items():
            groups.setdefault(optimizer.decay_for(name), []).append(p)
        masks = {trainable[k]: self._t(m) for k, m in (optimizer.grad_mult_masks or {}).items()}
        opt = RepOptimizerSGD([{"params": ps, "weight_decay": wd} for wd, ps in groups.items()], lr=optimizer.lr,
                              momentum=optimizer.momentum, dampening=optimizer.dampening,
                              nesterov=optimizer.nesterov, grad_mult_masks=masks or None, foreach=self.foreach,
                              fused=self.fused)
        for name, st in opt_state.items():
            if "momentum_buffer" in st:
                opt.state[trainable[name]]["momentum_buffer"] = self._t(st["momentum_buffer"])

        with self._exact():
            logits = net(self._t(x))
            loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=self.device))
            loss.backward()
            grads = {name: self._np(p.grad) if p.grad is not None else np.zeros(tuple(p.shape))
                     for name, p in trainable.items()}
            opt.step()
        new_params, new_buffers = module_arrays(net)
        state = {}
        for name, p in trainable.items():
            buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
            state[name] = {} if buf is None else {"momentum_buffer": self._np(buf)}
        return TrainIterationResult(float(loss.item()), self._np(logits), grads,
                                    {from_torch[k]: v for k, v in new_params.items()},
                                    {from_torch[k]: v for k, v in new_buffers.items()}, state)


class _Net(nn.Module):
    """``linear(GAP(block_k(… block_1(x))))`` — SPEC §1's small network around torch_impl blocks."""

    def __init__(self, blocks, features: int, num_classes: int):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))



def cuda() -> TorchAdapter:
    """``--impl repspec.conformance.torch_adapter:cuda`` (alias ``torch-cuda``): torch_impl on CUDA, float64."""
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is available")
    return TorchAdapter("cuda")


def float32() -> TorchAdapter:
    """``--impl repspec.conformance.torch_adapter:float32`` (alias ``torch-float32``): CPU, float32.

    Use it with ``--profile float32`` (advisory tolerances)."""
    return TorchAdapter(dtype=torch.float32)


def fused() -> TorchAdapter:
    """``--impl repspec.conformance.torch_adapter:fused`` (alias ``torch-fused``): CPU, float64, the
    RepOptimizer's ``fused=True`` step (the unfused step's bits on CPU, so the float64 profile unchanged)."""
    return TorchAdapter(fused=True)
