"""Deliberately broken adapters: proof that the conformance suite catches real porting bugs.

Each is the correct :class:`ReferenceAdapter` with ONE method re-implemented the way a
port plausibly gets it wrong. :data:`BROKEN` maps each to the clause that must catch it
(``expected``) and the clauses that may plausibly catch it too (``plausible``, which
contains ``expected``); ``tests/test_conformance.py`` asserts that every broken adapter
fails its expected clause, fails nothing outside ``plausible``, and that the report
names the clause and carries a counter-example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repspec.conformance.adapter import (NotProvided, OABNResult, ReferenceAdapter, TrainIterationResult,
                                        without_num_batches_tracked)
from repspec.reference import kmeans as ref_kmeans
from repspec.reference import ops as ref_ops
from repspec.reference import quant as ref_quant

__all__ = ["BROKEN", "Broken"]


class WeightDecayMaskedAdapter(ReferenceAdapter):
    """RepOpt-SGD with the weight decay inside the mask: ``d = M ⊙ (g + λ·W)`` (SPEC: NOT multiplied by M)."""

    name = "broken: weight decay multiplied by the mask"

    def repopt_sgd_step(self, param, grad, momentum_buffer, *, grad_mult_mask, lr, momentum, dampening, nesterov,
                        weight_decay):
        d = grad + weight_decay * param
        if grad_mult_mask is not None:
            d = grad_mult_mask * d
        buf = None
        if momentum != 0:
            buf = d.copy() if momentum_buffer is None else momentum * momentum_buffer + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        return param - lr * d, buf


class NoIdentityPlusOneAdapter(ReferenceAdapter):
    """Grad Mult without the ``+1`` of a trainable identity branch."""

    name = "broken: Grad Mult without the identity +1"

    def grad_mult_mask(self, scale_conv, scale_1x1, in_channels, *, identity, exponent):
        o = len(scale_conv)
        m = np.broadcast_to((np.asarray(scale_conv) ** exponent)[:, None, None, None], (o, in_channels, 3, 3)).copy()
        m[:, :, 1, 1] += (np.asarray(scale_1x1) ** exponent)[:, None]
        return m


class InputChannelMaskAdapter(ReferenceAdapter):
    """Grad Mult scales broadcast along the INPUT channel (``v[None, :, None, None]``) instead of the output one."""

    name = "broken: Grad Mult mask indexed by input channel"

    def grad_mult_mask(self, scale_conv, scale_1x1, in_channels, *, identity, exponent):
        o = len(scale_conv)
        a3 = np.asarray(scale_conv) ** exponent
        a1 = np.asarray(scale_1x1) ** exponent
        m = np.broadcast_to(a3[None, :, None, None], (o, in_channels, 3, 3)).copy()
        m[:, :, 1, 1] += a1[None, :]
        if identity == "trainable":
            m[np.arange(o), np.arange(o), 1, 1] += 1.0
        return m


class FirstStepDampenedAdapter(ReferenceAdapter):
    """Momentum buffer created dampened on the first step (``buf = (1 − τ)·d`` instead of ``buf = d``)."""

    name = "broken: first momentum buffer dampened"

    def repopt_sgd_step(self, param, grad, momentum_buffer, *, grad_mult_mask, lr, momentum, dampening, nesterov,
                        weight_decay):
        d = grad if grad_mult_mask is None else grad_mult_mask * grad
        d = d + weight_decay * param
        buf = None
        if momentum != 0:
            prev = np.zeros_like(param) if momentum_buffer is None else momentum_buffer
            buf = momentum * prev + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        return param - lr * d, buf


class OABNClipsGammaAdapter(ReferenceAdapter):
    """OABN that clips ``γ`` to ``[−s, s]`` instead of the ratio ``t = γ/sqrt(σ² + eps)``."""

    name = "broken: OABN clips gamma instead of the ratio"

    def oabn_train(self, x, gamma, beta, running_mean, running_var, dy, *, threshold, momentum, eps, gradient):
        g = np.clip(gamma, -threshold, threshold)
        res = ref_ops.batch_norm_train(x, g, beta, running_mean, running_var, momentum=momentum, eps=eps)
        dx, dg, db = ref_ops.batch_norm_train_backward(dy, x, g, eps=eps)
        if gradient == "clip":
            dg = dg * (np.abs(gamma) <= threshold)
        return OABNResult(res.y, res.running_mean, res.running_var, dx, dg, db)


def _assign_ties_up(v, c):
    labels = np.searchsorted(0.5 * c[:-1] + 0.5 * c[1:], v, side="right")  # on a midpoint: UPPER
    return np.searchsorted(c, c, side="left")[labels]


class KMeansTiesUpAdapter(ReferenceAdapter):
    """k-means assignment that sends a value exactly on a midpoint to the UPPER centroid (``side='right'``)."""

    name = "broken: k-means ties to the upper centroid"

    def kmeans_fake_quantize(self, w, centroids):
        c = np.asarray(centroids, dtype=np.float64)
        return c[_assign_ties_up(np.asarray(w, dtype=np.float64), c)]

    def kmeans_1d(self, values, k, *, init, max_iter, init_centroids=None):
        v = np.asarray(values, dtype=np.float64)
        flat = v.ravel()
        uniq = np.unique(flat)
        if k >= uniq.size:
            c = np.concatenate([uniq, np.full(k - uniq.size, uniq[-1])])
            return c, _assign_ties_up(v, c)
        c = np.sort(init_centroids) if init == "warm" else ref_kmeans.initial_centroids(flat, k, init)
        labels = _assign_ties_up(flat, c)
        for _ in range(max_iter):
            counts = np.bincount(labels, minlength=k)
            sums = np.bincount(labels, weights=flat, minlength=k)
            c = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
            new = _assign_ties_up(flat, c)
            if np.array_equal(new, labels):
                break
            labels = new
        return c, labels.reshape(v.shape)


def _qparams_unrounded_zp(lo, hi, bits):
    qmax = 2**bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / qmax
    zp = 0.0 if scale == 0 else float(np.clip(-lo / scale, 0, qmax))  # BUG: not rounded
    return scale, zp, qmax


class ZeroPointNotRoundedAdapter(ReferenceAdapter):
    """Asymmetric activation quantizer whose zero point is ``−lo/scale`` unrounded."""

    name = "broken: asymmetric zero point not rounded"

    def fake_quantize_activation(self, x, *, lo, hi, bits):
        scale, zp, qmax = _qparams_unrounded_zp(lo, hi, bits)
        if scale == 0:
            return np.zeros_like(x)
        q = np.clip(np.rint(x / scale) + zp, 0, qmax)
        return (q - zp) * scale

    def fake_quantize_activation_backward(self, dy, x, *, lo, hi, bits):
        scale, zp, qmax = _qparams_unrounded_zp(lo, hi, bits)
        return np.where((x >= -zp * scale) & (x <= (qmax - zp) * scale), dy, 0.0)


# ---- more realistic bugs (beyond the required seven)


class RoundHalfAwayAdapter(ReferenceAdapter):
    """Weight quantizer rounding half away from zero (C's ``round``) instead of half to even."""

    name = "broken: weights round half away from zero"

    def fake_quantize_weight(self, w, *, bits, per_channel):
        qmax = ref_quant.weight_qmax(bits)
        scale = np.asarray(ref_quant.weight_qparams(w, bits, per_channel), dtype=np.float64)
        s = scale if scale.ndim == 0 else scale.reshape((-1,) + (1,) * (np.ndim(w) - 1))
        r = np.where(s > 0, w / np.where(s > 0, s, 1.0), 0.0)
        return np.clip(np.sign(r) * np.floor(np.abs(r) + 0.5), -qmax, qmax) * s


class TorchCodeMaskSTEAdapter(ReferenceAdapter):
    """STE masked on the rounded code (torch.fake_quantize_per_tensor_affine's rule), not on the input."""

    name = "broken: STE masks on the rounded code"

    def fake_quantize_activation_backward(self, dy, x, *, lo, hi, bits):
        scale, zp = ref_quant.activation_qparams(lo, hi, bits)
        qmax = ref_quant.activation_qmax(bits)
        if scale == 0:
            return np.where(x == 0, dy, 0.0)
        q = np.rint(x / scale) + zp
        return np.where((q >= 0) & (q <= qmax), dy, 0.0)


class WeightSTEFloatBoundaryAdapter(ReferenceAdapter):
    """Weight STE that re-tests ``|w| ≤ qmax·scale`` in floating point (drops the largest weight's gradient)."""

    name = "broken: weight STE boundary tested in floating point"

    def fake_quantize_weight_backward(self, dy, w, *, bits, per_channel):
        qmax = ref_quant.weight_qmax(bits)
        scale = np.asarray(ref_quant.weight_qparams(w, bits, per_channel), dtype=np.float64)
        s = scale if scale.ndim == 0 else scale.reshape((-1,) + (1,) * (np.ndim(w) - 1))
        return np.where(np.abs(w) <= qmax * s, dy, 0.0)


class FusionIgnoresGroupsIdentityAdapter(ReferenceAdapter):
    """RepVGG fusion whose identity kernel ignores groups (``I[o, o, 1, 1]``, wrong when groups > 1)."""

    name = "broken: fusion identity kernel ignores groups"

    def fuse_repvgg_block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps, oabn_threshold):
        k, b = super().fuse_repvgg_block(params, buffers, in_channels=in_channels, out_channels=out_channels,
                                         stride=stride, groups=groups, eps=eps, oabn_threshold=oabn_threshold)
        if groups > 1 and in_channels == out_channels and stride == 1:
            from repspec.reference.oabn import oabn_factor

            t0 = oabn_factor(params["rbr_identity.weight"], buffers["rbr_identity.running_var"], eps, oabn_threshold)
            per = in_channels // groups
            o = np.arange(out_channels)
            k = k.copy()
            k[o, o % per, 1, 1] -= t0  # undo the right identity …
            keep = o < per
            k[o[keep], o[keep], 1, 1] += t0[keep]  # … and put it on I[o, o] where that index exists
        return k, b


class BiasedRunningVarAdapter(ReferenceAdapter):
    """OABN/BN that tracks the running variance with the BIASED batch variance."""

    name = "broken: running variance updated with the biased variance"

    def oabn_train(self, x, gamma, beta, running_mean, running_var, dy, *, threshold, momentum, eps, gradient):
        out = super().oabn_train(x, gamma, beta, running_mean, running_var, dy, threshold=threshold,
                                 momentum=momentum, eps=eps, gradient=gradient)
        biased = np.asarray(x).var(axis=(0, 2, 3))
        return out._replace(running_var=(1 - momentum) * running_var + momentum * biased)


class LossSumNotMeanAdapter(ReferenceAdapter):
    """A training iteration whose cross-entropy is summed over the batch (``reduction='sum'``), not averaged."""

    name = "broken: cross-entropy summed instead of averaged"

    def train_iteration(self, network, params, buffers, x, labels, *, optimizer, opt_state):
        from repspec.conformance.adapter import TrainIterationResult
        from repspec.reference.optim import SGD

        net = network.reference_network(params)
        n = len(labels)
        buffers = without_num_batches_tracked(buffers)  # the reference does not model the counters
        logits, new_buffers, cache = net.forward(params, buffers, x, training=True)
        loss = ref_ops.softmax_cross_entropy(logits, labels) * n
        grads = net.backward(params, cache, ref_ops.softmax_cross_entropy_backward(logits, labels) * n)
        names = network.trainable_names(params)
        wd = optimizer.weight_decay
        opt = SGD(lr=optimizer.lr, momentum=optimizer.momentum, dampening=optimizer.dampening,
                  nesterov=optimizer.nesterov, weight_decay=dict(wd) if isinstance(wd, dict) else wd,
                  grad_mult_masks=optimizer.grad_mult_masks)
        stepped, state = opt.step({k: params[k] for k in names}, grads, {k: dict(v) for k, v in opt_state.items()})
        return TrainIterationResult(loss, logits, grads, {**params, **stepped}, {**buffers, **new_buffers}, state)


# ---- declines, gradients read after step(), shapes, a tiny systematic drift


class DeclinesDeadChannelsAdapter(ReferenceAdapter):
    """RepVGG fusion that declines every case with a dead channel (a BN running variance of 0).

    Only a minority of the generated cases has one, so "declined most" does not catch it; the
    clause's plain-BN dead-channel special value (which needs no optional feature) does.
    """

    name = "broken: fusion declines dead channels"

    def fuse_repvgg_block(self, params, buffers, **kw):
        if any(np.any(np.asarray(v) == 0) for k, v in buffers.items() if k.endswith("running_var")):
            raise NotProvided("a running variance of 0 (dead channel) is not supported")
        return super().fuse_repvgg_block(params, buffers, **kw)


class DeclinesMostAdapter(ReferenceAdapter):
    """A probe adapter: the Grad Mult mask only for one output channel, a trainable identity and exponent 2
    (about 1 case in 18), declined otherwise."""

    name = "broken: Grad Mult declined for most cases"

    def grad_mult_mask(self, scale_conv, scale_1x1, in_channels, *, identity, exponent):
        if identity != "trainable" or exponent != 2 or len(scale_conv) != 1:
            raise NotProvided(f"only 1 channel, identity='trainable', exponent=2 (got {len(scale_conv)}, "
                              f"{identity!r}, {exponent})")
        return super().grad_mult_mask(scale_conv, scale_1x1, in_channels, identity=identity, exponent=exponent)


class GradsAfterStepAdapter(ReferenceAdapter):
    """A training iteration that reads the gradients after ``optimizer.step()``, from a ``p.grad`` into
    which the optimizer added the weight decay in place (the original RepOptimizer does this for
    unmasked decayed parameters): ``∂L/∂θ + λ·θ`` is returned as the gradient."""

    name = "broken: gradients read after step()"

    def train_iteration(self, network, params, buffers, x, labels, *, optimizer, opt_state):
        out = super().train_iteration(network, params, buffers, x, labels, optimizer=optimizer, opt_state=opt_state)
        masks = optimizer.grad_mult_masks or {}
        grads = {k: g if k in masks else g + optimizer.decay_for(k) * params[k] for k, g in out.grads.items()}
        return TrainIterationResult(out.loss, out.logits, grads, out.params, out.buffers, out.opt_state)


class Only4DStepAdapter(ReferenceAdapter):
    """An optimizer step written for conv kernels only (``O, I, kh, kw = p.shape``)."""

    name = "broken: optimizer step only for 4-D kernels"

    def repopt_sgd_step(self, param, grad, momentum_buffer, **kw):
        out_ch, in_ch, kh, kw_ = np.shape(param)  # ValueError for 1-D/2-D/0-D parameters
        return super().repopt_sgd_step(param, grad, momentum_buffer, **kw)


class TheoremDriftAdapter(ReferenceAdapter):
    """RepOpt-SGD whose masked step carries a systematic relative error of 1e-12 (say a mask kept in
    a slightly different precision): invisible to the 1e-9 step tolerance, visible to the theorem's
    derived round-off bound."""

    name = "broken: masked step off by 1e-12 relative"

    def repopt_sgd_step(self, param, grad, momentum_buffer, *, grad_mult_mask, **kw):
        p, buf = super().repopt_sgd_step(param, grad, momentum_buffer, grad_mult_mask=grad_mult_mask, **kw)
        return (p if grad_mult_mask is None else p * (1.0 + 1e-12)), buf


class SwappedScalesAdapter(ReferenceAdapter):
    """Grad Mult fed the original code's order: the 1x1 scale where the 3x3 one belongs and back."""

    name = "broken: Grad Mult scales swapped"

    def grad_mult_mask(self, scale_conv, scale_1x1, in_channels, *, identity, exponent):
        return super().grad_mult_mask(scale_1x1, scale_conv, in_channels, identity=identity, exponent=exponent)


class Float32StepAdapter(ReferenceAdapter):
    """Third-party torch code run without ``torch.set_default_dtype(torch.float64)``: the step in float32."""

    name = "broken: optimizer step computed in float32"

    def repopt_sgd_step(self, param, grad, momentum_buffer, *, grad_mult_mask, **kw):
        f32 = (lambda a: None if a is None else np.asarray(a, dtype=np.float32))
        p, buf = super().repopt_sgd_step(f32(param), f32(grad), f32(momentum_buffer),
                                         grad_mult_mask=f32(grad_mult_mask), **kw)
        return np.asarray(p, dtype=np.float32), f32(buf)


# ---- SPEC §1 networks, §2 fusion backward and categories, §4 OABN factor and eval mode


class DeployUnclippedOABNAdapter(ReferenceAdapter):
    """A network converter that folds every identity BN with the plain ``γ/sqrt(σ² + eps)``, also an OABN one
    (the block-level fusion is right; the deploy script has its own BN folding and never heard of the clip)."""

    name = "broken: deployed network folds OABN without the clip"

    def network_forward_deployed(self, network, params, buffers, x):
        from dataclasses import replace

        from repspec.conformance.adapter import NetworkSpec

        plain = NetworkSpec(tuple(replace(b, oabn_threshold=float("inf")) for b in network.blocks),
                            network.num_classes, network.head_name)
        return super().network_forward_deployed(plain, params, buffers, x)


class FusionGammaWithoutBiasPathAdapter(ReferenceAdapter):
    """Fusion backward that forgets that the fused bias ``b = β − μ·t`` depends on γ too: ``∂L/∂γ = Σ dK·K /
    sqrt(σ² + eps)`` without the ``− μ·db`` term (the kernel path only)."""

    name = "broken: fusion backward drops the bias path into gamma"

    def fuse_repvgg_block_backward(self, dkernel, dbias, params, buffers, **kw):
        grads = dict(super().fuse_repvgg_block_backward(dkernel, dbias, params, buffers, **kw))
        buffers = without_num_batches_tracked(buffers)
        for bn in ("rbr_dense.bn", "rbr_1x1.bn", "rbr_identity"):
            if f"{bn}.weight" in grads:  # add back what the −μ·db term took away
                grads[f"{bn}.weight"] = grads[f"{bn}.weight"] + buffers[f"{bn}.running_mean"] * dbias / np.sqrt(
                    buffers[f"{bn}.running_var"] + kw["eps"])
        return grads


class SampleStdCategoriesAdapter(ReferenceAdapter):
    """Category statistics whose standard deviation is the sample one (``ddof = 1``; ``torch.std``'s default)."""

    name = "broken: category std with ddof = 1"

    def category_statistics(self, kernel, *, groups):
        from repspec.reference.analysis import merged_weight_categories

        stats = super().category_statistics(kernel, groups=groups)
        cats = []
        for mask, st in zip(merged_weight_categories(kernel, groups), stats[:3]):
            values = np.asarray(kernel)[mask]
            cats.append(st._replace(std=float(values.std(ddof=1))) if values.size > 1 else st)
        return (*cats, stats[3])


class OneSidedClipFactorAdapter(ReferenceAdapter):
    """OABN factor clipped from above only, ``min(t, s)`` (written for positive γ): a negative ``t < −s`` passes."""

    name = "broken: OABN factor clipped from above only"

    def oabn_factor(self, gamma, var, *, eps, threshold):
        from repspec.reference.ops import bn_factor
        from repspec.reference.oabn import check_threshold

        return np.minimum(bn_factor(gamma, var, eps), check_threshold(threshold))


class EvalBiasUnclippedAdapter(ReferenceAdapter):
    """Eval-mode OABN whose shift uses the unclipped factor: ``t̃·x + (β − μ·t)`` (bias folded by the plain formula)."""

    name = "broken: eval OABN shift with the unclipped factor"

    def oabn_eval(self, x, gamma, beta, running_mean, running_var, dy, *, threshold, eps, gradient):
        from repspec.reference.ops import bn_factor

        out = super().oabn_eval(x, gamma, beta, running_mean, running_var, dy, threshold=threshold, eps=eps,
                                gradient=gradient)
        t = bn_factor(gamma, running_var, eps)
        shift = (running_mean * (np.clip(t, -threshold, threshold) - t))[None, :, None, None]
        return out._replace(y=out.y + shift)
# ---- §5 calibrators, zero range, scale underflow, what is quantized, state size


class MSETiesToSmallestAdapter(ReferenceAdapter):
    """MSE calibrator scanning the ratios in ascending order with ``<``: a tie goes to the SMALLEST α."""

    name = "broken: mse ties to the smallest clipping ratio"

    def calibrate(self, method, batches, *, bits, **options):
        if method != "mse":
            return super().calibrate(method, batches, bits=bits, **options)
        from repspec.reference import calibrate as rc

        x = np.concatenate([np.ravel(b) for b in batches])
        s = rc.mse_scores(x, bits, options.get("candidates", rc.DEFAULT_MSE_CANDIDATES))
        best = s.ratios[::-1][int(np.argmin(s.mse[::-1]))]  # argmin: the first minimum of the ascending scan
        return float(best) * s.lo0, float(best) * s.hi0


class EntropyKeepsZeroBinAdapter(ReferenceAdapter):
    """Entropy calibrator ported from TensorRT's original algorithm: the zero bin is never replaced."""

    name = "broken: entropy keeps the zero bin by default"

    def calibrate(self, method, batches, *, bits, **options):
        if method == "entropy":
            options = {**options, "zero_bin": "keep"}
        return super().calibrate(method, batches, bits=bits, **options)


def _eps_floor_qparams(lo, hi, bits):
    """PyTorch observers' guard: ``scale = max(scale, float32 eps)``, so a zero range keeps a tiny grid."""
    qmax = ref_quant.activation_qmax(bits)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / qmax, float(np.finfo(np.float32).eps))
    return scale, int(np.clip(np.rint(-lo / scale), 0, qmax)), qmax


class ZeroRangeEpsScaleAdapter(ReferenceAdapter):
    """Activation quantizer that floors the scale at float32's eps (PyTorch's MinMaxObserver) instead of
    representing a zero range exactly."""

    name = "broken: zero range floored at float32 eps"

    def activation_qparams(self, lo, hi, *, bits):
        return _eps_floor_qparams(lo, hi, bits)[:2]

    def quantize_activation(self, x, *, lo, hi, bits):
        scale, zp, qmax = _eps_floor_qparams(lo, hi, bits)
        return np.clip(np.rint(np.asarray(x) / scale) + zp, 0, qmax).astype(np.int64)

    def fake_quantize_activation(self, x, *, lo, hi, bits):
        scale, zp, _ = _eps_floor_qparams(lo, hi, bits)
        return (self.quantize_activation(x, lo=lo, hi=hi, bits=bits) - zp) * scale

    def fake_quantize_activation_backward(self, dy, x, *, lo, hi, bits):
        scale, zp, qmax = _eps_floor_qparams(lo, hi, bits)
        return np.where((np.asarray(x) >= -zp * scale) & (np.asarray(x) <= (qmax - zp) * scale), dy, 0.0)


class NoMinScaleAdapter(ReferenceAdapter):
    """Quantizers without the 2^−126 rule (the starting SPEC): a tiny computed scale is used as it is."""

    name = "broken: scales below 2^-126 kept"

    @staticmethod
    def _weight_scale(w, bits, per_channel):
        qmax = ref_quant.weight_qmax(bits)
        a = np.abs(np.asarray(w))
        return a.reshape(a.shape[0], -1).max(axis=1) / qmax if per_channel else float(a.max()) / qmax

    @staticmethod
    def _act_qparams(lo, hi, bits):
        qmax = ref_quant.activation_qmax(bits)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / qmax
        return (0.0, 0) if scale == 0 else (scale, int(np.clip(np.rint(-lo / scale), 0, qmax)))

    def weight_qparams(self, w, *, bits, per_channel):
        return self._weight_scale(w, bits, per_channel)

    def quantize_weight(self, w, *, bits, per_channel):
        return ref_quant.quantize_weight(w, self._weight_scale(w, bits, per_channel), bits)

    def fake_quantize_weight(self, w, *, bits, per_channel):
        scale = self._weight_scale(w, bits, per_channel)
        return ref_quant.dequantize(ref_quant.quantize_weight(w, scale, bits), scale)

    def activation_qparams(self, lo, hi, *, bits):
        return self._act_qparams(lo, hi, bits)

    def quantize_activation(self, x, *, lo, hi, bits):
        return ref_quant.quantize_activation(x, *self._act_qparams(lo, hi, bits), bits)

    def fake_quantize_activation(self, x, *, lo, hi, bits):
        return ref_quant.fake_quantize_activation(x, *self._act_qparams(lo, hi, bits), bits)

    def fake_quantize_activation_backward(self, dy, x, *, lo, hi, bits):
        lo_r, hi_r = ref_quant.activation_range(*self._act_qparams(lo, hi, bits), bits)
        return ref_quant.fake_quantize_backward(dy, x, lo_r, hi_r)


class QuantizesFirstBlockAdapter(ReferenceAdapter):
    """Quantizes every block, the first one too (weights and input), as a naive PTQ/QAT pass does."""

    name = "broken: first block quantized"

    def quantized_network(self, network, params, buffers, x, *, weight_bits, per_channel, act_bits, act_ranges):
        from repspec.conformance.adapter import QuantizedLayer, QuantizedNetworkResult
        from repspec.reference.qat import UniformWeightQuantizer, make_qat_network

        qnet, qbuffers = make_qat_network(network.reference_network(params), params,
                                          without_num_batches_tracked(buffers),
                                          weight_quantizer=UniformWeightQuantizer(weight_bits, per_channel),
                                          act_bits=act_bits, act_ranges=act_ranges, keep_first_fp32=False)
        out = super().quantized_network(network, params, buffers, x, weight_bits=weight_bits,
                                        per_channel=per_channel, act_bits=act_bits, act_ranges=act_ranges)
        first = network.blocks[0].prefix
        block = dict(qnet.blocks)[first]
        scope = {k[len(first) + 1:]: v for k, v in params.items() if k.startswith(first + ".")}
        bscope = {k[len(first) + 1:]: v for k, v in qbuffers.items() if k.startswith(first + ".")}
        kernel, bias = block.quantized_kernel_bias(scope, bscope)
        logits, _, _ = qnet.forward(params, qbuffers, x, training=False)
        layers = {**out.layers, first: QuantizedLayer(kernel, bias, weight_bits, per_channel, act_bits)}
        return QuantizedNetworkResult(layers, logits)


class StateSizeAcrossLayersAdapter(ReferenceAdapter):
    """State size as the distinct values of all layers together: a value shared by two layers counts once."""

    name = "broken: state size counts shared values once"

    def state_size(self, kernels):
        arrays = [np.asarray(k, dtype=np.float64) for k in kernels]
        if any(a.size == 0 or not np.all(np.isfinite(a)) for a in arrays):
            raise ValueError("kernels must be non-empty and finite")
        return int(np.unique(np.concatenate([a.ravel() for a in arrays])).size)
# ---- SPEC §3: the CSLA block, W', W'_0, the decay map, the constant identity, HyperSearch, scale files, AdamW


class ConstantIdentityAsUnitAdapter(ReferenceAdapter):
    """A CSLA block whose constant identity adds ``x`` (an ``nn.Identity``), not ``d·x``: the official code has
    no constant mode, and a port that maps "not trained" to "the plain identity" drops ``d``."""

    name = "broken: constant identity adds x, not d·x"

    def csla_block(self, params, buffers, x, dy, *, identity, **kw):
        if identity == "constant":
            params = {**params, "scale_identity.weight": np.ones_like(params["scale_identity.weight"])}
        return super().csla_block(params, buffers, x, dy, identity=identity, **kw)


class KernelPadAtCornerAdapter(ReferenceAdapter):
    """``W'`` with ``K1`` padded to the 3x3 kernel's corner (``np.pad(k1, ((0, 0), (0, 0), (0, 2), (0, 2)))``,
    the F.pad argument order mixed up) instead of its centre."""

    name = "broken: pad(K1) at the corner"

    def csla_equivalent_kernel(self, conv_weight, conv_1x1_weight, scale_conv, scale_1x1, scale_identity=None):
        k1 = np.pad(np.asarray(conv_1x1_weight), ((0, 0), (0, 0), (0, 2), (0, 2)))
        w = np.asarray(scale_conv)[:, None, None, None] * conv_weight + np.asarray(scale_1x1)[:, None, None, None] * k1
        if scale_identity is not None:
            o = len(scale_identity)
            w[np.arange(o), np.arange(o), 1, 1] += scale_identity
        return w


class ReinitScalesSwappedAdapter(ReferenceAdapter):
    """``W'_0`` built from the original ``(…, 1x1, conv)`` tuple read as ``(…, conv, 1x1)``: α1 on K3, α3 on K1."""

    name = "broken: W'_0 with the scales swapped"

    def reinit_target_kernel(self, scale_conv, scale_1x1, scale_identity, **kw):
        return super().reinit_target_kernel(scale_1x1, scale_conv, scale_identity, **kw)


class DecayAllVectorsOffAdapter(ReferenceAdapter):
    """The generic "no decay for 1-D parameters and biases" rule without the official exception for
    ``*identity.weight``: the identity scale ``d`` is not decayed (and §3.theorem no longer holds)."""

    name = "broken: identity scale d not weight-decayed"

    def weight_decay_map(self, network, params, *, weight_decay):
        return {k: 0.0 if (np.ndim(params[k]) <= 1 or k.endswith(".bias")) else float(weight_decay)
                for k in network.trainable_names(params)}


class Float32WeightDecayAdapter(ReferenceAdapter):
    """RepOpt-SGD with λ held as a float32 scalar (a hyper-parameter stored as ``torch.tensor(wd)`` or in a
    float32 config): the step is within 1e-9 of the reference and both §3.theorem paths decay alike, but the
    decay of a constant identity's ``diag(d)·I_c`` is ``lr·fl32(λ)·d``, not ``lr·λ·d``."""

    name = "broken: weight decay kept in float32"

    def repopt_sgd_step(self, param, grad, momentum_buffer, *, weight_decay, **kw):
        return super().repopt_sgd_step(param, grad, momentum_buffer, weight_decay=float(np.float32(weight_decay)),
                                       **kw)


class HyperSearchGlobalIndexAdapter(ReferenceAdapter):
    """HyperSearch init that counts blocks across the whole network (``sqrt(2/j)`` with j the network-wide
    index, stage0 = 0) instead of within each stage: every stage but the first starts off the schedule."""

    name = "broken: HyperSearch init by network-wide block index"

    def hypersearch_scales(self, num_blocks, widths, strides, *, in_channels, num_classes, params=None):
        out = super().hypersearch_scales(num_blocks, widths, strides, in_channels=in_channels,
                                         num_classes=num_classes, params=params)
        if params is not None:
            return out
        j = 0
        for k, n in enumerate(num_blocks):
            for i in range(n):
                prefix = "stage0" if k == 0 else f"stage{k}.{i}"
                init = 1.0 if j == 0 else float(np.sqrt(2.0 / j))
                for kind in ("conv", "1x1"):
                    key = f"{prefix}.scale_{kind}.weight"
                    out[key] = np.full_like(out[key], init)
                j += 1
        return out


class OfficialTuplesInDictOrderAdapter(ReferenceAdapter):
    """The original per-block tuples read and written in the scale dict's order ``(conv, 1x1[, identity])``
    instead of the original ``([identity,] 1x1, conv)``: its own round trip is exact, the mapping is not."""

    name = "broken: original scale tuples in (conv, 1x1, identity) order"

    def scales_to_official(self, scales, layout):
        return [tuple(reversed(t)) for t in super().scales_to_official(scales, layout)]

    def scales_from_official(self, tuples, layout):
        return super().scales_from_official([tuple(reversed(t)) for t in tuples], layout)


class AdamWMaskOnceAdapter(ReferenceAdapter):
    """Masked AdamW that multiplies only the gradient by ``M`` (``torch.optim.AdamW`` on ``M⊙g``), whatever
    ``mask_placement`` says: the official RepOptimizerAdamW also multiplies the step."""

    name = "broken: AdamW mask on the gradient only"

    def adamw_step(self, param, grad, state, *, mask_placement, **kw):
        return super().adamw_step(param, grad, state, mask_placement="grad", **kw)


@dataclass(frozen=True)
class Broken:
    adapter: type
    expected: str  # the clause that must catch it
    plausible: frozenset  # clauses allowed to fail as well (contains expected)
    message: str = "max abs err"  # what the failure message must contain
    generated: bool = True  # the generated cases alone catch it (not only the hand-written special values)
    counterexample: bool = True  # the failure carries a counter-example (not a coverage verdict)


class BinnedBinCount2kAdapter(ReferenceAdapter):
    """The binned k-means init with ``2k`` runs instead of ``max(128, 2k)`` (a port that reads
    "two bins per centroid" and misses the floor)."""

    name = "broken: binned init with 2k bins"

    def kmeans_1d(self, values, k, *, init, max_iter, init_centroids=None):
        if init != "binned":
            return super().kmeans_1d(values, k, init=init, max_iter=max_iter, init_centroids=init_centroids)
        start = ref_kmeans.binned_optimal_centroids(values, k, bins=2 * k)
        res = ref_kmeans.kmeans_1d(values, k, init="warm", max_iter=max_iter, init_centroids=start)
        return res.centroids, res.labels


class ObserverFirstBatchAveragedAdapter(ReferenceAdapter):
    """QAT's activation observer without its "first batch initializes" rule: an uninitialized range
    (``initialized = 0``, lo = hi = 0) is averaged with the batch like a known one."""

    name = "broken: the first QAT batch averaged with the empty range"

    def qat_train_iteration(self, network, params, buffers, qat_buffers, x, labels, **kw):
        qat_buffers = {k: (np.array(1) if k.endswith("act_quant.initialized") else v) for k, v in qat_buffers.items()}
        return super().qat_train_iteration(network, params, buffers, qat_buffers, x, labels, **kw)


class RefitOffByOneAdapter(ReferenceAdapter):
    """ClusterQAT's refit one step late: when ``(t − 1) mod update_every = 0`` instead of ``t mod …``
    (the counter incremented before the test)."""

    name = "broken: ClusterQAT refits one step late"

    def qat_train_iteration(self, network, params, buffers, qat_buffers, x, labels, **kw):
        shifted = {k: (np.array(int(v) - 1) if k.endswith("weight_quant.step") else v) for k, v in qat_buffers.items()}
        out = super().qat_train_iteration(network, params, buffers, shifted, x, labels, **kw)
        new_buffers = {k: (np.array(int(v) + 1) if k.endswith("weight_quant.step") else v)
                       for k, v in out.buffers.items()}
        return out._replace(buffers=new_buffers)


def _b(adapter, expected, *others, **kw) -> Broken:
    return Broken(adapter, expected, frozenset((expected,) + others), **kw)


#: broken adapter → the clause that must catch it, and the clauses that may also fail
BROKEN: dict[str, Broken] = {
    "wd_masked": _b(WeightDecayMaskedAdapter, "§3.repopt-sgd-step", "§3.theorem", "§1.train-iteration",
                    "§3.constant-identity"),
    "no_identity_plus_one": _b(NoIdentityPlusOneAdapter, "§3.grad-mult", "§3.theorem"),
    "mask_by_input_channel": _b(InputChannelMaskAdapter, "§3.grad-mult", "§3.theorem", "§3.constant-identity"),
    "first_step_dampened": _b(FirstStepDampenedAdapter, "§3.repopt-sgd-step", "§1.train-iteration",
                                "§3.constant-identity"),
    "oabn_clips_gamma": _b(OABNClipsGammaAdapter, "§4.oabn", "§2.fusion", "§1.train-iteration"),
    "kmeans_ties_up": _b(KMeansTiesUpAdapter, "§5.kmeans-ties", "§5.kmeans"),
    "zero_point_not_rounded": _b(ZeroPointNotRoundedAdapter, "§5.uniform-activation", "§5.ste", "§5.scale-underflow"),
    # beyond the required seven
    "round_half_away": _b(RoundHalfAwayAdapter, "§5.uniform-weight"),
    "ste_code_mask": _b(TorchCodeMaskSTEAdapter, "§5.ste", "§5.scale-underflow"),
    "weight_ste_float_boundary": _b(WeightSTEFloatBoundaryAdapter, "§5.ste-weight"),
    "fusion_identity_ignores_groups": _b(FusionIgnoresGroupsIdentityAdapter, "§2.fusion", "§1.train-iteration"),
    "biased_running_var": _b(BiasedRunningVarAdapter, "§4.oabn", "§1.train-iteration"),
    "loss_summed": _b(LossSumNotMeanAdapter, "§1.train-iteration"),
    # declines, gradients read after step(), shapes, a tiny systematic drift
    "declines_dead_channels": _b(DeclinesDeadChannelsAdapter, "§2.fusion", message="special-value case",
                                 generated=False),
    "declines_most": _b(DeclinesMostAdapter, "§3.grad-mult", "§3.theorem", message="declined most of the clause",
                        counterexample=False),
    "grads_after_step": _b(GradsAfterStepAdapter, "§1.train-iteration", message="read p.grad AFTER optimizer.step()"),
    "step_only_4d": _b(Only4DStepAdapter, "§3.repopt-sgd-step", "§3.theorem", "§1.train-iteration",
                       message="must accept a parameter of any shape"),
    "theorem_drift_1e-12": _b(TheoremDriftAdapter, "§3.theorem", "§3.constant-identity", message="round-off bound"),
    "scales_swapped": _b(SwappedScalesAdapter, "§3.grad-mult", "§3.theorem", "§3.constant-identity", message="SWAPPED"),
    "float32_step": _b(Float32StepAdapter, "§3.repopt-sgd-step", "§3.theorem", "§3.constant-identity",
                       message="torch.set_default_dtype(torch.float64)"),
    # SPEC §1 networks, §2 fusion backward and categories, §4 OABN factor and eval mode
    "deploy_oabn_unclipped": _b(DeployUnclippedOABNAdapter, "§1.network"),
    "fusion_gamma_without_bias_path": _b(FusionGammaWithoutBiasPathAdapter, "§2.fusion-backward"),
    "category_std_ddof_1": _b(SampleStdCategoriesAdapter, "§2.categories"),
    "oabn_factor_one_sided_clip": _b(OneSidedClipFactorAdapter, "§4.oabn-factor"),
    "oabn_eval_shift_unclipped": _b(EvalBiasUnclippedAdapter, "§4.oabn-eval"),
    # §5 calibrators, zero range, scale underflow, what is quantized, state size
    "mse_ties_to_smallest": _b(MSETiesToSmallestAdapter, "§5.calibrators"),
    "entropy_keeps_zero_bin": _b(EntropyKeepsZeroBinAdapter, "§5.calibrators"),
    "zero_range_eps_scale": _b(ZeroRangeEpsScaleAdapter, "§5.zero-range", "§5.scale-underflow", "§5.uniform-activation",
                               "§5.ste"),
    "no_min_scale": _b(NoMinScaleAdapter, "§5.scale-underflow"),
    "first_block_quantized": _b(QuantizesFirstBlockAdapter, "§5.quantized-layers", message="first block stays FP32"),
    "state_size_across_layers": _b(StateSizeAcrossLayersAdapter, "§5.state-size", message="must equal"),
    # SPEC §3: the CSLA block, W', W'_0, the decay map, the constant identity, HyperSearch, scale files, AdamW
    "constant_identity_as_unit": _b(ConstantIdentityAsUnitAdapter, "§3.csla"),
    "kernel_pad_at_corner": _b(KernelPadAtCornerAdapter, "§3.equivalent-kernel"),
    "reinit_scales_swapped": _b(ReinitScalesSwappedAdapter, "§3.reinit"),
    "identity_scale_not_decayed": _b(DecayAllVectorsOffAdapter, "§3.weight-decay", message="must equal the reference"),
    "weight_decay_float32": _b(Float32WeightDecayAdapter, "§3.constant-identity", "§3.repopt-sgd-step",
                               message="round-off bound"),
    "hypersearch_global_index": _b(HyperSearchGlobalIndexAdapter, "§3.hypersearch"),
    "official_tuples_dict_order": _b(OfficialTuplesInDictOrderAdapter, "§3.scale-files", message="REVERSED"),
    "adamw_mask_once": _b(AdamWMaskOnceAdapter, "§3.adamw", message="multiplies the step by M"),
    # only the 3000-value special cases reach the runs (drawn cases have n <= 40 <= 4·128: the exact optimum)
    "binned_2k_bins": _b(BinnedBinCount2kAdapter, "§5.kmeans", "§5.cluster-qat", generated=False),
    # SPEC §5: one QAT / ClusterQAT iteration
    "qat_first_batch_averaged": _b(ObserverFirstBatchAveragedAdapter, "§5.qat", "§5.cluster-qat"),
    "cluster_refit_late": _b(RefitOffByOneAdapter, "§5.cluster-qat"),
}
