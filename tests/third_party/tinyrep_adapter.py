"""The conformance adapter for ``tinyrep`` (NHWC/HWIO, original scale order) — docs/porting.md §6."""

import numpy as np

from repspec.conformance import AdapterBase, NotProvided

from . import tinyrep


def oihw_to_hwio(k):
    return np.transpose(k, (2, 3, 1, 0))


def hwio_to_oihw(k):
    return np.transpose(k, (3, 2, 0, 1))


def nchw_to_nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def nhwc_to_nchw(x):
    return np.transpose(x, (0, 3, 1, 2))


class TinyRepAdapter(AdapterBase):
    name = "tinyrep (NumPy, NHWC/HWIO)"

    # §2 --------------------------------------------------------------------------------
    def fuse_repvgg_block(self, params, buffers, *, in_channels, out_channels, stride, groups, eps,
                          oabn_threshold):
        def bn(prefix):
            return (params[f"{prefix}.weight"], params[f"{prefix}.bias"],
                    buffers[f"{prefix}.running_mean"], buffers[f"{prefix}.running_var"])

        has_identity = "rbr_identity.weight" in params
        kernel, bias = tinyrep.repvgg_deploy(
            oihw_to_hwio(params["rbr_dense.conv.weight"]), bn("rbr_dense.bn"),
            oihw_to_hwio(params["rbr_1x1.conv.weight"]), bn("rbr_1x1.bn"),
            bn("rbr_identity") if has_identity else None, groups=groups, eps=eps,
            id_clip=None if np.isinf(oabn_threshold) else oabn_threshold)
        return hwio_to_oihw(kernel), bias

    # §3 --------------------------------------------------------------------------------
    def grad_mult_mask(self, scale_conv, scale_1x1, in_channels, *, identity, exponent):
        if exponent != 2:
            raise NotProvided("tinyrep has no AdamW mask (exponent 1)")
        trainable = np.ones(len(scale_conv)) if identity == "trainable" else None
        # repspec passes (conv, 1x1); tinyrep, like the original code, wants (identity, 1x1, conv)
        return hwio_to_oihw(tinyrep.grad_mult((trainable, scale_1x1, scale_conv), in_channels))

    def repopt_sgd_step(self, param, grad, momentum_buffer, *, grad_mult_mask, lr, momentum, dampening,
                        nesterov, weight_decay):
        hp = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, wd=weight_decay)
        if grad_mult_mask is None:  # elementwise: any shape, no layout change
            return tinyrep.sgd(param, grad, momentum_buffer, **hp)
        buf = None if momentum_buffer is None else oihw_to_hwio(momentum_buffer)
        w, v = tinyrep.sgd(oihw_to_hwio(param), oihw_to_hwio(grad), buf, mult=oihw_to_hwio(grad_mult_mask), **hp)
        return hwio_to_oihw(w), None if v is None else hwio_to_oihw(v)

    # §4 --------------------------------------------------------------------------------
    def oabn_train(self, x, gamma, beta, running_mean, running_var, dy, *, threshold, momentum, eps, gradient):
        y, mean, var, cache = tinyrep.obn_train(nchw_to_nhwc(x), gamma, beta, running_mean, running_var,
                                                bound=threshold, momentum=momentum, eps=eps)
        dx, dgamma, dbeta = tinyrep.obn_train_grad(nchw_to_nhwc(dy), cache,
                                                   through_clip=gradient == "straight_through")
        return nhwc_to_nchw(y), mean, var, nhwc_to_nchw(dx), dgamma, dbeta

    # §5 --------------------------------------------------------------------------------
    def fake_quantize_weight(self, w, *, bits, per_channel):
        w = np.asarray(w)
        if w.ndim == 4:  # conv: OIHW -> HWIO, output channel last
            return hwio_to_oihw(tinyrep.quant_sym_lastaxis(oihw_to_hwio(w), bits, per_channel))
        # dense (O, I) -> (I, O); any other rank: output channel moved last
        return np.moveaxis(tinyrep.quant_sym_lastaxis(np.moveaxis(w, 0, -1), bits, per_channel), -1, 0)

    def fake_quantize_weight_backward(self, dy, w, *, bits, per_channel):
        return np.array(dy, copy=True)  # tinyrep's weight STE: the gradient passes unchanged

    def fake_quantize_activation(self, x, *, lo, hi, bits):
        return tinyrep.quant_asym(x, lo, hi, bits)

    def fake_quantize_activation_backward(self, dy, x, *, lo, hi, bits):
        return tinyrep.quant_asym_grad(dy, x, lo, hi, bits)

    def kmeans_fake_quantize(self, w, centroids):
        return tinyrep.snap_to_codebook(w, centroids)
