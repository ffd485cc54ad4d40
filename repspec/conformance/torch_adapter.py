"""``repspec.torch_impl`` as a conformance adapter — the first port checked by the suite.

Every method converts the NumPy float64 inputs to float64 tensors, runs the
``repspec.torch_impl`` modules (blocks, OABN, RepOptimizerSGD, quant, observers, kmeans, qat), and converts
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from repspec.torch_impl.modules import blocks as tb
from repspec.torch_impl.modules.blocks import CSLABlock, HyperSearchBlock, QARepVGGBlock, RepOptTargetBlock, RepVGGBlock
from repspec.torch_impl.modules.deploy import fuse_block
from repspec.torch_impl.modules.interop import load_reference_arrays, module_arrays
from repspec.torch_impl.modules.kernels import csla_equivalent_kernel
from repspec.torch_impl.modules.models import VGGNet, create_model
from repspec.torch_impl.modules.oabn import OABN, bn_factor
from repspec.torch_impl.optimizers.hypersearch import extract_scales
from repspec.torch_impl.optimizers.repoptimizer import (
    RepOptimizerAdamW,
    RepOptimizerSGD,
    grad_mult_mask_from_scales,
    reinit_from_scales,
    weight_decay_groups,
)
from repspec.torch_impl.optimizers.scales import scales_from_official, scales_to_official
from repspec.torch_impl.quantization import analysis as tq_analysis
from repspec.torch_impl.quantization import kmeans as tq_kmeans
from repspec.torch_impl.quantization import observers as tq_observers
from repspec.torch_impl.quantization import qat as tq_qat
from repspec.torch_impl.quantization import quant as tq_quant

from .adapter import (
    AdapterBase,
    BlockResult,
    DeployedNetworkResult,
    NetworkForwardResult,
    NetworkSpec,
    NotProvided,
    OABNEvalResult,
    OABNResult,
    QuantizedLayer,
    QuantizedNetworkResult,
    SGDSpec,
    TrainIterationResult,
    without_num_batches_tracked,
)

__all__ = ["TorchAdapter", "cuda", "float32", "fused"]

_F64 = torch.float64



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
        module = module.to(device=self.device, dtype=self.dtype)
        # the suite hands in PyTorch-style buffers (num_batches_tracked included); the interop loader
        # matches the reference's names, which leave the counter out
        load_reference_arrays(module, params, None if buffers is None else without_num_batches_tracked(buffers))
        return module

    # -------------------------------------------------------------- §2 fusion
    def fuse_repvgg_block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps, oabn_threshold):
        block = self._load(RepVGGBlock(in_channels, out_channels, stride, groups, oabn_threshold=oabn_threshold,
                                       bn_eps=eps), params, buffers).eval()
        with torch.no_grad(), self._exact():
            k, b = block.get_equivalent_kernel_bias()
        return self._np(k), self._np(b)

    def fuse_qarepvgg_block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps, fold_post_bn):
        block = self._load(QARepVGGBlock(in_channels, out_channels, stride, groups, bn_eps=eps), params,
                           buffers).eval()
        with torch.no_grad(), self._exact():
            k, b = block.get_equivalent_kernel_bias(include_post_bn=fold_post_bn)
        if fold_post_bn:
            return self._np(k), self._np(b)
        post = {f"bn.{n}": self._np(getattr(block.bn, n)) for n in ("weight", "bias", "running_mean", "running_var")}
        return self._np(k), self._np(b), post

    # -------------------------------------------------------------- §2 fusion backward, categories
    def _fusion_gradients(self, block: nn.Module, kernel, bias, dkernel, dbias) -> dict[str, np.ndarray]:
        """``∂(Σ dK·K + Σ db·b)/∂θ`` by autograd through torch_impl's differentiable fusion; parameters the
        fused ``(K, b)`` does not depend on (QARepVGG's post BN when it is not folded) are left out."""
        named = dict(block.named_parameters())
        grads = torch.autograd.grad((kernel, bias), list(named.values()),
                                    grad_outputs=(self._t(dkernel), self._t(dbias)), allow_unused=True)
        return {name: self._np(g) for name, g in zip(named, grads) if g is not None}

    def fuse_repvgg_block_backward(self, dkernel, dbias, params, buffers, *, in_channels, out_channels, stride,
                                   groups, eps, oabn_threshold, oabn_gradient):
        block = self._load(RepVGGBlock(in_channels, out_channels, stride, groups, oabn_threshold=oabn_threshold,
                                       oabn_gradient=oabn_gradient, bn_eps=eps), params, buffers).eval()
        with self._exact():
            k, b = block.get_equivalent_kernel_bias()
            return self._fusion_gradients(block, k, b, dkernel, dbias)

    def fuse_qarepvgg_block_backward(self, dkernel, dbias, params, buffers, *, in_channels, out_channels, stride,
                                     groups, eps, fold_post_bn):
        block = self._load(QARepVGGBlock(in_channels, out_channels, stride, groups, bn_eps=eps), params,
                           buffers).eval()
        with self._exact():
            k, b = block.get_equivalent_kernel_bias(include_post_bn=fold_post_bn)
            return self._fusion_gradients(block, k, b, dkernel, dbias)

    def merged_weight_categories(self, kernel, *, groups):
        analysis = tq_analysis
        return tuple(m.cpu().numpy() for m in analysis.merged_weight_categories(self._t(kernel), groups))

    def category_statistics(self, kernel, *, groups):
        return tq_analysis.category_statistics(self._t(kernel), groups)

    def identity_ratio(self, params, buffers, *, in_channels, out_channels, stride, groups, eps, threshold):
        analysis = tq_analysis
        block = self._load(RepVGGBlock(in_channels, out_channels, stride, groups, oabn_threshold=threshold,
                                       bn_eps=eps), params, buffers).eval()
        t0 = analysis.identity_ratio(block)
        if t0 is None:  # torch_impl's report convention for "no identity factor"; the protocol's is ValueError
            raise ValueError(f"the block (in_channels={in_channels}, out_channels={out_channels}, stride={stride}) "
                             f"has no identity branch, so no identity ratio")
        return self._np(t0)

    # -------------------------------------------------------------- §3 RepOpt
    def grad_mult_mask(self, scale_conv, scale_1x1, in_channels, *, identity, exponent):
        return self._np(grad_mult_mask_from_scales(self._t(scale_conv), self._t(scale_1x1), in_channels,
                                                   identity=identity, exponent=exponent))

    def repopt_sgd_step(self, param, grad, momentum_buffer, *, grad_mult_mask, lr, momentum, dampening, nesterov,
                        weight_decay):
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

    # ---- §3: the CSLA block, W', W'_0, the decay map, AdamW, HyperSearch and scale files
    def _run_block(self, block: nn.Module, params, buffers, x, dy, training: bool) -> BlockResult:
        block = self._load(block, params, buffers).train(training)
        xt = self._t(x, requires_grad=True)
        with self._exact():
            y = block(xt)
            y.backward(self._t(dy))
        grads = {n: self._np(p.grad) if p.grad is not None else np.zeros(tuple(p.shape))
                 for n, p in block.named_parameters() if p.requires_grad}
        _, new_buffers = module_arrays(block)
        return BlockResult(self._np(y), new_buffers, self._np(xt.grad), grads)

    def csla_block(self, params, buffers, x, dy, *, in_channels, out_channels, stride, identity, training,
                   bn_momentum, bn_eps):
        d = params.get("scale_identity.weight", 1.0) if identity != "none" else 1.0
        block = CSLABlock(in_channels, out_channels, stride, scale_conv=params["scale_conv.weight"],
                          scale_1x1=params["scale_1x1.weight"], identity=identity, scale_identity=d, bn_eps=bn_eps,
                          bn_momentum=bn_momentum)
        return self._run_block(block, params, buffers, x, dy, training)

    def csla_equivalent_kernel(self, conv_weight, conv_1x1_weight, scale_conv, scale_1x1, scale_identity=None):
        with torch.no_grad():
            return self._np(csla_equivalent_kernel(self._t(conv_weight), self._t(conv_1x1_weight), self._t(scale_conv),
                                                   self._t(scale_1x1),
                                                   None if scale_identity is None else self._t(scale_identity)))

    def reinit_target_kernel(self, scale_conv, scale_1x1, scale_identity, *, in_channels, conv_weight,
                             conv_1x1_weight, use_identity_scales, seed):
        o = len(scale_conv)
        # torch_impl reads "has an identity branch" off the block's geometry (in == out, stride 1); W'_0 does
        # not depend on the stride, so a block without an identity branch but in == out gets stride 2
        stride = 1 if scale_identity is not None or in_channels != o else 2
        holder = nn.Module()
        holder.add_module("stage0", RepOptTargetBlock(in_channels, o, stride).to(device=self.device, dtype=self.dtype))
        scales = {"stage0.scale_conv.weight": self._t(scale_conv), "stage0.scale_1x1.weight": self._t(scale_1x1)}
        if scale_identity is not None:
            scales["stage0.scale_identity.weight"] = self._t(scale_identity)
        if conv_weight is None and conv_1x1_weight is None:
            reinit_from_scales(holder, scales, torch.Generator().manual_seed(int(seed)),
                               use_identity_scales=use_identity_scales)
        else:
            reinit_from_scales(holder, scales, use_identity_scales=use_identity_scales,
                               kernels={"stage0": (self._t(conv_weight), self._t(conv_1x1_weight))})
        return self._np(holder.stage0.conv.weight)

    def _network(self, network: NetworkSpec, params, buffers):
        """``(module, reference name -> torch name)`` of a :class:`NetworkSpec` built from torch_impl blocks."""
        net = _Net([self._block(b, params) for b in network.blocks], network.blocks[-1].out_channels,
                   network.num_classes)
        to_torch: dict[str, str] = {}
        for i, b in enumerate(network.blocks):
            for name in list(params) + list(buffers or ()):
                if name.startswith(b.prefix + "."):
                    to_torch[name] = f"blocks.{i}.{name[len(b.prefix) + 1:]}"
        for n in ("weight", "bias"):
            to_torch[f"{network.head_name}.{n}"] = f"head.{n}"
        self._load(net, {to_torch[k]: v for k, v in params.items()},
                   None if buffers is None else {to_torch[k]: v for k, v in buffers.items()})
        return net, to_torch

    def weight_decay_map(self, network, params, *, weight_decay):
        net, to_torch = self._network(network, params, None)
        from_torch = {v: k for k, v in to_torch.items()}
        name_of = {id(p): from_torch[n] for n, p in net.named_parameters()}
        return {name_of[id(p)]: float(g["weight_decay"]) for g in weight_decay_groups(net, weight_decay)
                for p in g["params"]}

    def adamw_step(self, param, grad, state, *, lr, betas, eps, weight_decay, grad_mult_mask, mask_placement):
        p = nn.Parameter(self._t(param))
        masks = None if grad_mult_mask is None else {p: self._t(grad_mult_mask)}
        opt = RepOptimizerAdamW([p], lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                grad_mult_masks=masks, mask_placement=mask_placement)
        if state:
            opt.state[p].update(step=torch.tensor(float(state["step"]), dtype=torch.float32),
                                exp_avg=self._t(state["exp_avg"]), exp_avg_sq=self._t(state["exp_avg_sq"]))
        p.grad = self._t(grad)
        with self._exact():
            opt.step()
        st = opt.state[p]
        return self._np(p), {"step": float(st["step"]), "exp_avg": self._np(st["exp_avg"]),
                             "exp_avg_sq": self._np(st["exp_avg_sq"])}

    def hypersearch_block(self, params, buffers, x, dy, *, in_channels, out_channels, stride, training, bn_momentum,
                          bn_eps):
        block = HyperSearchBlock(in_channels, out_channels, stride, bn_eps=bn_eps, bn_momentum=bn_momentum)
        return self._run_block(block, params, buffers, x, dy, training)

    def hypersearch_scales(self, num_blocks, widths, strides, *, in_channels, num_classes, params=None):
        # built in the adapter's dtype: a model built in float32 and cast afterwards keeps float32-rounded
        # initial scales (sqrt(2) off by 2e-8)
        old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            model = create_model("hs_vgg_tiny8", num_classes, in_channels=in_channels, num_blocks=tuple(num_blocks),
                                 widths=tuple(widths), strides=tuple(strides)).to(device=self.device)
        finally:
            torch.set_default_dtype(old)
        if params is not None:
            load_reference_arrays(model, params, None)
        return {k: self._np(v) for k, v in extract_scales(model).items()}

    def scales_to_official(self, scales, layout):
        tuples = scales_to_official({k: self._t(v) for k, v in scales.items()}, list(layout))
        return [tuple(self._np(v) for v in entry) for entry in tuples]

    def scales_from_official(self, tuples, layout):
        out = scales_from_official([tuple(self._t(v) for v in entry) for entry in tuples], list(layout))
        return {k: self._np(v) for k, v in out.items()}

    # -------------------------------------------------------------- §4 OABN
    def _oabn(self, gamma, beta, running_mean, running_var, *, threshold, eps, gradient="clip", momentum=0.1):
        m = OABN(len(gamma), eps=eps, momentum=momentum, threshold=threshold, gradient=gradient)
        return self._load(m, {"weight": gamma, "bias": beta}, {"running_mean": running_mean,
                                                               "running_var": running_var})

    def oabn_factor(self, gamma, var, *, eps, threshold):
        # the factor reads only γ and the running variance; β and the running mean are placeholders
        zeros = np.zeros(len(gamma))
        m = self._oabn(gamma, zeros, zeros, var, threshold=threshold, eps=eps).eval()
        with torch.no_grad(), self._exact():
            return self._np(bn_factor(m))

    def oabn_train(self, x, gamma, beta, running_mean, running_var, dy, *, threshold, momentum, eps, gradient):
        m = self._oabn(gamma, beta, running_mean, running_var, threshold=threshold, eps=eps, gradient=gradient,
                       momentum=momentum).train()
        xt = self._t(x, requires_grad=True)
        with self._exact():
            y = m(xt)
            y.backward(self._t(dy))
        return OABNResult(self._np(y), self._np(m.running_mean), self._np(m.running_var), self._np(xt.grad),
                          self._np(m.weight.grad), self._np(m.bias.grad))

    def oabn_eval(self, x, gamma, beta, running_mean, running_var, dy, *, threshold, eps, gradient):
        m = self._oabn(gamma, beta, running_mean, running_var, threshold=threshold, eps=eps,
                       gradient=gradient).eval()
        xt = self._t(x, requires_grad=True)
        with self._exact():
            y = m(xt)
            y.backward(self._t(dy))
        return OABNEvalResult(self._np(y), self._np(xt.grad), self._np(m.weight.grad), self._np(m.bias.grad))

    # -------------------------------------------------------------- §5 uniform
    def fake_quantize_weight(self, w, *, bits, per_channel):
        q = tq_quant
        with torch.no_grad():
            return self._np(q.fake_quantize_weight(self._t(w), bits, per_channel))

    def fake_quantize_weight_backward(self, dy, w, *, bits, per_channel):
        q = tq_quant
        wt = self._t(w, requires_grad=True)
        q.fake_quantize_weight(wt, bits, per_channel).backward(self._t(dy))
        return self._np(wt.grad)

    def _act(self, q, lo, hi, bits):
        lo_t, hi_t = (torch.tensor(float(v), dtype=self.dtype, device=self.device) for v in (lo, hi))
        return q.activation_qparams(lo_t, hi_t, bits)

    def fake_quantize_activation(self, x, *, lo, hi, bits):
        q = tq_quant
        scale, zp = self._act(q, lo, hi, bits)
        with torch.no_grad():
            return self._np(q.fake_quantize_activation(self._t(x), scale, zp, bits))

    def fake_quantize_activation_backward(self, dy, x, *, lo, hi, bits):
        q = tq_quant
        scale, zp = self._act(q, lo, hi, bits)
        xt = self._t(x, requires_grad=True)
        q.fake_quantize_activation(xt, scale, zp, bits).backward(self._t(dy))
        return self._np(xt.grad)

    # -------------------------------------------------------------- §5 calibrators, qparams, codes
    def calibrate(self, method, batches, *, bits, **options):
        obs = tq_observers
        observer = obs.make_observer(method, bits, **options)
        tensors = [self._t(b) for b in batches]
        for p in range(observer.passes):  # streaming: one batch at a time (entropy makes two passes)
            if p:
                observer.next_pass()
            for t in tensors:
                observer.observe(t)
        return observer.compute_range()

    def weight_qparams(self, w, *, bits, per_channel):
        q = tq_quant
        scale = self._np(q.weight_scale(self._t(w), bits, per_channel))
        return float(scale) if scale.ndim == 0 else scale

    def quantize_weight(self, w, *, bits, per_channel):
        q = tq_quant
        wt = self._t(w)
        codes = q.quantize_weight_codes(wt, q.weight_scale(wt, bits, per_channel), bits)
        return codes.cpu().numpy()

    def activation_qparams(self, lo, hi, *, bits):
        scale, zp = self._act(tq_quant, lo, hi, bits)
        return float(scale), int(zp)

    def quantize_activation(self, x, *, lo, hi, bits):
        q = tq_quant
        scale, zp = self._act(q, lo, hi, bits)
        return q.quantize_activation_codes(self._t(x), scale, zp, bits).cpu().numpy()

    # -------------------------------------------------------------- §5 what is quantized, state size
    def _vgg_network(self, network: NetworkSpec, params, buffers, extra_names=()):
        """The chain as a VGGNet with one block per stage, so torch_impl's make_qat_model decides what it
        quantizes (block i is "stage0" / f"stage{i}.0" there), with ``params``/``buffers`` loaded; returns
        ``(net, reference name -> torch name, torch block names)``."""
        blocks = [self._block(b, params) for b in network.blocks]
        torch_names = ["stage0"] + [f"stage{i}.0" for i in range(1, len(blocks))]
        net = VGGNet(lambda cin, cout, stride, stage, index: blocks[stage], [1] * len(blocks),
                     [b.out_channels for b in network.blocks], [b.stride for b in network.blocks],
                     network.num_classes, network.blocks[0].in_channels)
        to_torch = {f"{network.head_name}.{n}": f"linear.{n}" for n in ("weight", "bias")}
        for b, name in zip(network.blocks, torch_names):
            for k in [*params, *buffers, *extra_names]:
                if k.startswith(b.prefix + "."):
                    to_torch[k] = f"{name}.{k[len(b.prefix) + 1:]}"
        self._load(net, {to_torch[k]: v for k, v in params.items()}, {to_torch[k]: v for k, v in buffers.items()})
        return net, to_torch, torch_names

    def quantized_network(self, network: NetworkSpec, params, buffers, x, *, weight_bits, per_channel, act_bits,
                          act_ranges):
        qat = tq_qat
        net, to_torch, torch_names = self._vgg_network(network, params, buffers)
        ranges = {name: act_ranges[b.prefix] for b, name in zip(network.blocks, torch_names) if b.prefix in act_ranges}
        with torch.no_grad(), self._exact():
            model = qat.make_qat_model(net, weight_quantizer=qat.UniformWeightQuantizer(weight_bits, per_channel),
                                       act_bits=act_bits, act_ranges=ranges, inplace=True, progress=False).eval()
            logits = model(self._t(x))
            layers = {}
            for b, (name, block) in zip(network.blocks, model.named_blocks()):
                kernel, bias = block.quantized_kernel_bias()
                wq, aq = block.weight_quant, block.act_quant
                layers[b.prefix] = QuantizedLayer(self._np(kernel), self._np(bias), None if wq is None else wq.bits,
                                                  False if wq is None else wq.per_channel,
                                                  None if aq is None else aq.bits)
        head = model.linear
        layers[network.head_name] = QuantizedLayer(self._np(head.weight), self._np(head.bias), None, False, None)
        return QuantizedNetworkResult(layers, self._np(logits))

    def state_size(self, kernels):
        return tq_quant.state_size([self._t(k) for k in kernels])

    # -------------------------------------------------------------- §5 k-means
    def kmeans_fake_quantize(self, w, centroids):
        km = tq_kmeans
        with torch.no_grad():
            return self._np(km.kmeans_fake_quantize(self._t(w), self._t(centroids)))

    def kmeans_1d(self, values, k, *, init, max_iter, init_centroids=None):
        km = tq_kmeans
        warm = None if init_centroids is None else self._t(init_centroids)
        res = km.kmeans_1d(self._t(values), k, init=init, max_iter=max_iter, init_centroids=warm)
        return self._np(res.centroids), res.labels.detach().cpu().numpy().astype(np.int64)

    # -------------------------------------------------------------- §1 training
    def _block(self, b, params):
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
        if b.kind == "hypersearch":
            return tb.HyperSearchBlock(b.in_channels, b.out_channels, b.stride, **bn)
        raise NotProvided(f"block kind {b.kind!r}")

    def network_forward_train(self, network: NetworkSpec, params, buffers, x):
        net, to_torch = self._network(network, params, buffers)
        from_torch = {v: k for k, v in to_torch.items()}
        with torch.no_grad(), self._exact():
            logits = net.train()(self._t(x))
        _, new_buffers = module_arrays(net)
        return NetworkForwardResult(self._np(logits), {from_torch[k]: v for k, v in new_buffers.items()})

    def network_forward_deployed(self, network: NetworkSpec, params, buffers, x):
        net, _ = self._network(network, params, buffers)
        with torch.no_grad(), self._exact():
            deployed = _Net([fuse_block(b) for b in net.eval().blocks], network.blocks[-1].out_channels,
                            network.num_classes).to(device=self.device, dtype=self.dtype)
            deployed.head.load_state_dict(net.head.state_dict())
            logits = deployed.eval()(self._t(x))
        names = {f"blocks.{i}.{n}": f"{b.prefix}.{n}" for i, b in enumerate(network.blocks)
                 for n in ("rbr_reparam.weight", "rbr_reparam.bias")}
        names.update({f"head.{n}": f"{network.head_name}.{n}" for n in ("weight", "bias")})
        deployed_params, _ = module_arrays(deployed)
        return DeployedNetworkResult(self._np(logits), {names[k]: v for k, v in deployed_params.items()})

    def train_iteration(self, network: NetworkSpec, params, buffers, x, labels, *, optimizer: SGDSpec, opt_state):
        net, to_torch = self._network(network, params, buffers)
        from_torch = {v: k for k, v in to_torch.items()}
        net.train()
        named = dict(net.named_parameters())
        trainable = {from_torch[k]: p for k, p in named.items() if p.requires_grad}

        return self._sgd_iteration(net, trainable, from_torch, x, labels, optimizer, opt_state)

    def _sgd_iteration(self, net, trainable, from_torch, x, labels, optimizer: SGDSpec, opt_state):
        """Forward, mean cross-entropy, backward and one RepOpt-SGD step (plain SGD where no mask) of
        ``net``, whose ``trainable`` parameters are keyed by reference name → a TrainIterationResult."""
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
                                    {from_torch[k]: v for k, v in new_buffers.items() if k in from_torch}, state)

    def qat_train_iteration(self, network: NetworkSpec, params, buffers, qat_buffers, x, labels, *, quantizer,
                            optimizer: SGDSpec, opt_state):
        net, to_torch, _ = self._vgg_network(network, params, buffers, extra_names=qat_buffers)
        from_torch = {v: k for k, v in to_torch.items()}
        if quantizer.kind == "uniform":
            wq = tq_qat.UniformWeightQuantizer(quantizer.bits, quantizer.per_channel)
        elif quantizer.kind == "kmeans":
            wq = tq_qat.KMeansWeightQuantizer(quantizer.bits, update_every=quantizer.update_every)
        else:
            raise NotProvided(f"quantizer kind {quantizer.kind!r}")
        with torch.no_grad(), self._exact():
            model = tq_qat.make_qat_model(net, weight_quantizer=wq, act_bits=quantizer.act_bits,
                                          act_momentum=quantizer.act_momentum,
                                          keep_first_fp32=quantizer.keep_first_fp32, inplace=True, progress=False)
            own = dict(model.named_buffers())
            for k, v in qat_buffers.items():
                t = own[to_torch[k]]
                t.copy_(torch.as_tensor(np.asarray(v)).to(dtype=t.dtype, device=t.device).reshape(t.shape))
        model.train()
        trainable = {from_torch[k]: p for k, p in model.named_parameters() if p.requires_grad}
        return self._sgd_iteration(model, trainable, from_torch, x, labels, optimizer, opt_state)


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
