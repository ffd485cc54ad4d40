"""SPEC §5: QAT on merged weights and ClusterQAT (reference/qat.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from repspec.reference.calibrate import moving_average_minmax
from repspec.reference.gradcheck import numerical_gradient
from repspec.reference.kmeans import kmeans_1d
from repspec.reference.network import Network, train
from repspec.reference.optim import SGD
from repspec.reference.qat import (
    ActivationQuantizer,
    KMeansWeightQuantizer,
    QATBlock,
    UniformWeightQuantizer,
    fold_conv_bn,
    fold_conv_bn_backward,
    make_qat_network,
)
from repspec.reference.repvgg import QARepVGGBlock, RepVGGBlock
from repspec.reference.repopt import RepOptTargetBlock
from tests import strategies as S
from tests.tolerances import assert_close


def _randomize_bn(params, buffers, rng):
    """Trained-looking BN: random affine parameters and statistics."""
    params = dict(params)
    buffers = dict(buffers)
    for k in list(params):
        if k.endswith("bn.weight") or k.endswith("rbr_identity.weight"):
            params[k] = rng.uniform(0.5, 1.5, size=params[k].shape)
        elif k.endswith("bn.bias") or k.endswith("rbr_identity.bias"):
            params[k] = rng.normal(0, 0.3, size=params[k].shape)
    for k in list(buffers):
        if k.endswith("running_mean"):
            buffers[k] = rng.normal(0, 0.3, size=buffers[k].shape)
        elif k.endswith("running_var"):
            buffers[k] = rng.uniform(0.5, 2.0, size=buffers[k].shape)
    return params, buffers


INNER_KINDS = ["repvgg", "repvgg_oabn", "qarepvgg", "target"]


def _inner(kind, cin, cout, stride):
    if kind == "repvgg":
        return RepVGGBlock(cin, cout, stride)
    if kind == "repvgg_oabn":
        return RepVGGBlock(cin, cout, stride, oabn_threshold=0.8)
    if kind == "qarepvgg":
        return QARepVGGBlock(cin, cout, stride)
    return RepOptTargetBlock(cin, cout, stride)


def _weight_quantizer(name, bits):
    if name is None:
        return None
    if name == "uniform":
        return UniformWeightQuantizer(bits)
    if name == "uniform_per_channel":
        return UniformWeightQuantizer(bits, per_channel=True)
    return KMeansWeightQuantizer(bits, update_every=2)


@pytest.mark.parametrize("kind", INNER_KINDS)
@pytest.mark.parametrize("wq", [None, "uniform", "uniform_per_channel", "kmeans"])
@given(shape=S.block_shapes(), seed=S.seeds)
def test_ste_gradient_is_the_exact_gradient_of_the_surrogate(kind, wq, shape, seed):
    """Branch-parameter gradients == FD of ``L(K(θ) + stopgrad(q(K₀) − K₀))`` (the STE's definition)."""
    cin, cout, stride = shape
    rng = S.rng_from(seed)
    inner = _inner(kind, cin, cout, stride)
    params, buffers = _randomize_bn(inner.init_params(rng), inner.init_buffers(), rng)
    block = QATBlock(inner, _weight_quantizer(wq, 3), ActivationQuantizer(4))
    qbuf = block.init_qat_buffers(params, buffers)
    x = np.abs(rng.normal(size=(2, cin, 5, 5)))
    y, new_buffers, cache = block.forward(params, qbuf, x, training=True)
    assume(np.min(np.abs(cache.pre)) > 1e-4)  # ReLU kink: FD is not a derivative there
    R = rng.normal(size=y.shape)
    dx, grads = block.backward(params, cache, R)

    delta_k = cache.kernel_hat - cache.kernel  # frozen quantization offsets
    inner_buffers = {k: v for k, v in buffers.items()}

    def surrogate(p):
        kernel, bias = (inner.fuse(p, inner_buffers) if hasattr(inner, "fuse") else
                        fold_conv_bn(p["conv.weight"], p["bn.weight"], p["bn.bias"],
                                     inner_buffers["bn.running_mean"], inner_buffers["bn.running_var"]))
        from repspec.reference.ops import conv2d, relu
        return float((relu(conv2d(cache.x_hat, kernel + delta_k, bias, stride=stride, padding=1)) * R).sum())

    for name in inner.trainable_names():
        if kind == "repvgg_oabn" and name.startswith("rbr_identity."):
            # the clip is a kink at |t0| = s; the clip gradient is checked in test_ref_oabn.py
            continue
        fd = numerical_gradient(lambda v, name=name: surrogate({**params, name: v}), params[name], h=1e-5)
        assert_close(grads[name], fd, name=f"{kind}/{wq}: d/d{name}", kind="finite_difference")

    # activation STE: inside the representable range the gradient passes, outside it is zero
    scale_zp = cache.act_state
    from repspec.reference.quant import activation_qparams, activation_range
    lo, hi = activation_range(*activation_qparams(float(scale_zp["lo"]), float(scale_zp["hi"]), 4), 4)
    from repspec.reference.ops import conv2d_backward, relu_backward
    dpre = relu_backward(R, cache.pre)
    dx_hat = conv2d_backward(dpre, cache.x_hat, cache.kernel_hat, stride=stride, padding=1)[0]
    assert_close(dx, np.where((x >= lo) & (x <= hi), dx_hat, 0.0), name="activation STE")


@pytest.mark.parametrize("kind", INNER_KINDS)
@given(shape=S.block_shapes(), seed=S.seeds)
def test_qat_block_without_quantizers_equals_eval_multibranch(kind, shape, seed):
    """No quantizers: the QAT forward is the fused deploy form == the training block in eval mode."""
    cin, cout, stride = shape
    rng = S.rng_from(seed)
    inner = _inner(kind, cin, cout, stride)
    params, buffers = _randomize_bn(inner.init_params(rng), inner.init_buffers(), rng)
    block = QATBlock(inner)
    x = rng.normal(size=(2, cin, 6, 5))
    y_qat, _, _ = block.forward(params, block.init_qat_buffers(params, buffers), x, training=True)
    y_eval, _, _ = inner.forward(params, buffers, x, training=False)
    assert_close(y_qat, y_eval, name=f"{kind}: QAT(no quantizers) vs eval multi-branch")


@given(seed=S.seeds, update_every=st.integers(1, 4), bits=st.integers(1, 3))
def test_cluster_qat_refits_on_schedule_and_warm_starts(seed, update_every, bits):
    rng = S.rng_from(seed)
    inner = RepVGGBlock(3, 3, 1)
    params, buffers = _randomize_bn(inner.init_params(rng), inner.init_buffers(), rng)
    wq = KMeansWeightQuantizer(bits, update_every=update_every)
    block = QATBlock(inner, wq)
    net = Network((("stage1.0", block),), num_classes=2)
    head_w = rng.normal(size=(2, 3))
    p = {f"stage1.0.{k}": v for k, v in params.items()} | {"linear.weight": head_w, "linear.bias": np.zeros(2)}
    b = {f"stage1.0.{k}": v for k, v in block.init_qat_buffers(params, buffers).items()}
    batches = [(rng.normal(size=(2, 3, 4, 4)), rng.integers(0, 2, size=2))]
    records = train(net, p, b, SGD(lr=0.2, momentum=0.5), batches, 7)
    prev_c, prev_params = b["stage1.0.weight_quant.centroids"], p
    for r in records:
        t = r.iteration  # centroids used at step t were fitted on the kernel *before* step t's update
        kernel = inner.fuse({k[9:]: v for k, v in prev_params.items() if k.startswith("stage1.0.")},
                            {k[9:]: v for k, v in b.items() if k.startswith("stage1.0.") and "quant" not in k})[0]
        c = r.buffers["stage1.0.weight_quant.centroids"]
        if t % update_every == 0:
            expected = kmeans_1d(kernel, 2**bits, init_centroids=prev_c).centroids
            assert np.array_equal(c, expected), f"step {t}: refit must be Lloyd warm-started from the previous"
        else:
            assert np.array_equal(c, prev_c), f"step {t}: centroids must stay fixed between refits"
        assert int(r.buffers["stage1.0.weight_quant.step"]) == t + 1
        # BN statistics are frozen during QAT
        for k, v in b.items():
            if "running" in k:
                assert np.array_equal(r.buffers[k], v), f"step {t}: {k} changed during QAT"
        prev_c, prev_params = c, r.params


@pytest.mark.parametrize("kind", INNER_KINDS)
@pytest.mark.parametrize("wq", [None, "uniform", "uniform_per_channel", "kmeans"])
@given(shape=S.block_shapes(), seed=S.seeds)
def test_quantized_kernel_bias_is_what_the_eval_forward_computes_with(kind, wq, shape, seed):
    """``quantized_kernel_bias``: the eval forward is exactly ``relu(conv(x̂, K̂) + b)`` with them; uniform K̂ is
    ``fake_quantize_weight`` of the fused kernel; the quantizer state does not change."""
    from repspec.reference.ops import conv2d, relu
    from repspec.reference.quant import fake_quantize_weight

    cin, cout, stride = shape
    rng = S.rng_from(seed)
    inner = _inner(kind, cin, cout, stride)
    params, buffers = _randomize_bn(inner.init_params(rng), inner.init_buffers(), rng)
    block = QATBlock(inner, _weight_quantizer(wq, 3), ActivationQuantizer(4))
    qbuf = block.init_qat_buffers(params, buffers, act_range=(-0.5, 2.0))
    k_hat, b = block.quantized_kernel_bias(params, qbuf)
    x = rng.normal(size=(2, cin, 5, 4))
    y, new_buffers, cache = block.forward(params, qbuf, x, training=False)
    assert np.array_equal(y, relu(conv2d(cache.x_hat, k_hat, b, stride=stride, padding=1)))
    assert np.array_equal(k_hat, cache.kernel_hat) and np.array_equal(b, cache.bias)
    if wq is None:
        assert np.array_equal(k_hat, cache.kernel)
    elif wq.startswith("uniform"):
        assert np.array_equal(k_hat, fake_quantize_weight(cache.kernel, 3, per_channel=wq == "uniform_per_channel"))
    for k, v in new_buffers.items():
        assert np.array_equal(v, qbuf[k]), f"{k} changed in eval mode"


def test_quantized_kernel_uses_at_most_2_to_the_bits_values():
    rng = np.random.default_rng(0)
    inner = RepVGGBlock(4, 4, 1)
    params, buffers = _randomize_bn(inner.init_params(rng), inner.init_buffers(), rng)
    for wq, limit in ((KMeansWeightQuantizer(2), 4), (UniformWeightQuantizer(3), 7)):
        block = QATBlock(inner, wq)
        _, _, cache = block.forward(params, block.init_qat_buffers(params, buffers), rng.normal(size=(2, 4, 5, 5)),
                                    training=False)
        assert np.unique(cache.kernel_hat).size <= limit


def test_activation_observer_is_the_moving_average_minmax():
    rng = np.random.default_rng(1)
    aq = ActivationQuantizer(8, momentum=0.3)
    state = aq.init_state()
    batches = [rng.normal(size=(2, 1, 3, 3)) * (i + 1) for i in range(4)]
    for xb in batches:
        _, state = aq.forward(xb, state, training=True)
    lo, hi = moving_average_minmax(batches, momentum=0.3)
    assert float(state["lo"]) == lo and float(state["hi"]) == hi
    # eval freezes the range
    _, frozen = aq.forward(batches[0] * 100, state, training=False)
    assert float(frozen["lo"]) == lo and float(frozen["hi"]) == hi


def test_make_qat_network_keeps_first_block_and_head_fp32():
    rng = np.random.default_rng(2)
    net = Network((("stage0", RepVGGBlock(3, 4, 2)), ("stage1.0", RepVGGBlock(4, 4, 1))), num_classes=3)
    params, buffers = net.init(rng)
    qnet, qbuf = make_qat_network(net, params, buffers, weight_quantizer=UniformWeightQuantizer(4), act_bits=8)
    first, second = qnet.blocks[0][1], qnet.blocks[1][1]
    assert first.weight_quantizer is None and first.act_quantizer is None
    assert isinstance(second.weight_quantizer, UniformWeightQuantizer) and second.act_quantizer.bits == 8
    assert not any(k.startswith("stage0.act_quant") for k in qbuf)
    x = rng.normal(size=(2, 3, 8, 8))
    logits, _, _ = qnet.forward(params, qbuf, x, training=True)
    assert logits.shape == (2, 3)


@given(seed=S.seeds)
def test_fold_conv_bn_backward_matches_finite_differences(seed):
    rng = S.rng_from(seed)
    w = rng.normal(size=(3, 2, 3, 3))
    g, bt, rm, rv = rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2, 3)
    R, Rb = rng.normal(size=w.shape), rng.normal(size=3)

    def f(w_, g_, b_):
        k, b = fold_conv_bn(w_, g_, b_, rm, rv)
        return float((k * R).sum() + (b * Rb).sum())

    dw, dg, db = fold_conv_bn_backward(R, Rb, w, g, rm, rv)
    assert_close(dw, numerical_gradient(lambda v: f(v, g, bt), w), name="dW", kind="finite_difference")
    assert_close(dg, numerical_gradient(lambda v: f(w, v, bt), g), name="dgamma", kind="finite_difference")
    assert_close(db, numerical_gradient(lambda v: f(w, g, v), bt), name="dbeta", kind="finite_difference")


BAD = [
    (TypeError, "inner must be", lambda: QATBlock(object())),
    (TypeError, "weight_quantizer must be", lambda: QATBlock(RepVGGBlock(2, 2), weight_quantizer="uniform")),
    (ValueError, "bits must be >= 2", lambda: UniformWeightQuantizer(1)),
    (ValueError, "bits must be <= 16", lambda: UniformWeightQuantizer(17)),
    (ValueError, "bits must be <= 16", lambda: KMeansWeightQuantizer(17)),
    (ValueError, "update_every must be >= 1", lambda: KMeansWeightQuantizer(2, update_every=0)),
    (ValueError, "init must be one of", lambda: KMeansWeightQuantizer(2, init="warm")),
    (ValueError, "momentum must be in", lambda: ActivationQuantizer(8, momentum=2.0)),
    (ValueError, "give both lo and hi", lambda: ActivationQuantizer(8).init_state(lo=0.0)),
]


@pytest.mark.parametrize("exc, match, call", BAD, ids=[m for _, m, _ in BAD])
def test_bad_input(exc, match, call):
    with pytest.raises(exc, match=match):
        call()
