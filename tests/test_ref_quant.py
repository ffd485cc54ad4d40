"""SPEC §5 uniform quantization: repspec.reference.quant (properties, STE, bad input, torch peer)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from repspec.reference.quant import (
    MIN_SCALE,
    activation_qmax,
    activation_qparams,
    activation_range,
    dequantize,
    fake_quantize_activation,
    fake_quantize_backward,
    fake_quantize_weight,
    quantize_activation,
    quantize_weight,
    state_size,
    weight_qmax,
    weight_qparams,
    weight_range,
)

from .strategies import quant_arrays, quant_bits, rng_from, seeds, weight_bits

EPS = np.finfo(np.float64).eps


def _round_err_bound(scale, qmax):
    """``scale/2`` plus float64 rounding of ``x/scale`` (≤ eps·qmax code units) and of ``q·scale``."""
    return 0.5 * scale + 4 * EPS * qmax * scale


# ------------------------------------------------------------------------ weights


@given(w=quant_arrays(tiny=True), bits=weight_bits, per_channel=st.booleans())
@example(w=np.array([[0.0]]), bits=8, per_channel=False)  # all zeros
@example(w=np.array([[1e-40, -3e-39]]), bits=8, per_channel=False)  # zero range: scale < 2^-126
@example(w=np.array([[0.0, 0.0], [1.0, -3.0]]), bits=2, per_channel=True)  # a zero channel
@example(w=np.array([[2.5, 2.0]]), bits=3, per_channel=False)  # min == max, batch of 1
def test_weight_codes_in_range_and_error_bound(w, bits, per_channel):
    qmax = weight_qmax(bits)
    scale = weight_qparams(w, bits, per_channel)
    q = quantize_weight(w, scale, bits)
    assert q.dtype == np.int64 and q.shape == w.shape
    assert np.all(np.abs(q) <= qmax)
    w_hat = fake_quantize_weight(w, bits, per_channel)
    np.testing.assert_array_equal(w_hat, dequantize(q, scale))
    s = np.broadcast_to(np.asarray(scale).reshape(-1, 1), w.shape)
    # a zero range (scale < 2^-126 set to 0) maps w to 0, and then |w| <= qmax·2^-126
    bound = np.where(s > 0, _round_err_bound(s, qmax), qmax * MIN_SCALE)
    err = np.abs(w_hat - w)
    assert np.all(err <= bound), f"max |ŵ − w| / bound = {(err / bound).max()} (scale {scale})"
    lo, hi = weight_range(scale, bits)
    assert np.all(w_hat >= np.reshape(lo, (-1, 1))) and np.all(w_hat <= np.reshape(hi, (-1, 1)))


@given(w=quant_arrays(tiny=True), bits=weight_bits, per_channel=st.booleans())
@example(w=np.array([[0.0, 0.0]]), bits=2, per_channel=True)
def test_weight_fake_quant_is_idempotent(w, bits, per_channel):
    once = fake_quantize_weight(w, bits, per_channel)
    np.testing.assert_array_equal(fake_quantize_weight(once, bits, per_channel), once)
    # with the scale held fixed as well
    scale = weight_qparams(w, bits, per_channel)
    np.testing.assert_array_equal(dequantize(quantize_weight(once, scale, bits), scale), once)


@given(w=quant_arrays(tiny=True), bits=weight_bits)
def test_per_channel_equals_per_layer_on_each_row(w, bits):
    scale = weight_qparams(w, bits, per_channel=True)
    assert scale.shape == (w.shape[0],)
    per_row = np.stack([fake_quantize_weight(row, bits) for row in w])
    np.testing.assert_array_equal(fake_quantize_weight(w, bits, per_channel=True), per_row)
    np.testing.assert_array_equal(scale, [weight_qparams(row, bits) for row in w])


def test_weight_ties_round_half_to_even():
    w = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 127.0])  # scale 1 at 8 bits
    assert weight_qparams(w, 8) == 1.0
    np.testing.assert_array_equal(quantize_weight(w, 1.0, 8), [0, 2, 2, 4, 0, -2, -2, 127])
    np.testing.assert_array_equal(quantize_weight([1e9, -1e9], 1.0, 8), [127, -127])


def test_weight_zero_scale_maps_to_zero():
    np.testing.assert_array_equal(quantize_weight([3.0, -1.0], 0.0, 8), [0, 0])
    assert weight_qparams(np.zeros(5), 4) == 0.0
    np.testing.assert_array_equal(fake_quantize_weight(np.zeros((2, 3)), 4, per_channel=True), np.zeros((2, 3)))


def test_4d_kernel_per_output_channel():
    w = rng_from(3).standard_normal((4, 3, 3, 3))
    w[2] *= 100.0
    scale = weight_qparams(w, 4, per_channel=True)
    np.testing.assert_allclose(scale, np.abs(w).max(axis=(1, 2, 3)) / 7, rtol=0, atol=0)
    w_hat = fake_quantize_weight(w, 4, per_channel=True)
    for o in range(4):
        np.testing.assert_array_equal(w_hat[o], fake_quantize_weight(w[o], 4))


# -------------------------------------------------------------------- activations


@given(x=quant_arrays(tiny=True), bits=quant_bits, lo_frac=st.floats(0, 1), hi_frac=st.floats(0, 1))
@example(x=np.array([[0.0, 0.0]]), bits=8, lo_frac=0.0, hi_frac=0.0)  # all zeros, min == max
@example(x=np.array([[-1.0, 0.5, 2.0]]), bits=2, lo_frac=1.0, hi_frac=1.0)  # batch of 1
def test_activation_codes_range_and_error(x, bits, lo_frac, hi_frac):
    lo, hi = lo_frac * x.min(), hi_frac * x.max()  # a calibrated range possibly narrower than x
    lo, hi = min(lo, hi), max(lo, hi)
    qmax = activation_qmax(bits)
    scale, zp = activation_qparams(lo, hi, bits)
    assert 0 <= zp <= qmax and scale >= 0
    q = quantize_activation(x, scale, zp, bits)
    assert q.dtype == np.int64 and np.all((q >= 0) & (q <= qmax))
    x_hat = fake_quantize_activation(x, scale, zp, bits)
    lo_r, hi_r = activation_range(scale, zp, bits)
    assert lo_r <= 0.0 <= hi_r
    assert fake_quantize_activation(np.zeros(1), scale, zp, bits)[0] == 0.0  # 0 is exact
    inside = (x >= lo_r) & (x <= hi_r)
    assert np.all(np.abs(x_hat - x)[inside] <= _round_err_bound(scale, qmax))
    assert np.all(x_hat[x < lo_r] == lo_r) and np.all(x_hat[x > hi_r] == hi_r)  # clamped
    # idempotence, exactly
    np.testing.assert_array_equal(fake_quantize_activation(x_hat, scale, zp, bits), x_hat)


def test_activation_qparams_formula():
    scale, zp = activation_qparams(-1.0, 3.0, 8)
    assert scale == 4.0 / 255 and zp == int(np.rint(1.0 / (4.0 / 255)))
    assert activation_qparams(1.0, 3.0, 8) == (3.0 / 255, 0)  # lo' = min(lo, 0) = 0
    assert activation_qparams(-3.0, -1.0, 8) == (3.0 / 255, 255)  # hi' = max(hi, 0) = 0
    assert activation_qparams(0.0, 0.0, 8) == (0.0, 0)


TINY32 = float(np.finfo(np.float32).tiny)  # 2^-126, float32's smallest normal


# [repspec] zero-range rule (docs/05-quantization.md, "Scales below float32's smallest
# normal"): a computed scale below 2^-126 is 0. The examples are the two corners found so
# far: zp = rint(511/2) = 256 needed the clamp when scale was 2^-1073, and
# a float32-subnormal scale that PyTorch's float32 kernel cannot invert.
@given(lo=st.floats(-1e-30, 0.0), hi=st.floats(0.0, 1e-30), bits=quant_bits)
@example(lo=-511 * 2.0**-1074, hi=0.0, bits=8)
@example(lo=-1.175494351e-38, hi=0.0, bits=3)
@example(lo=-255 * TINY32, hi=0.0, bits=8)  # scale exactly 2^-126: kept
@example(lo=-float(np.nextafter(255 * TINY32, 0.0)), hi=0.0, bits=8)  # just below: zero range
@example(lo=-3.0 * TINY32, hi=4.0 * TINY32, bits=1)
def test_activation_scale_below_float32_normal_is_zero_range(lo, hi, bits):
    qmax = activation_qmax(bits)
    scale, zp = activation_qparams(lo, hi, bits)
    assert MIN_SCALE == TINY32
    exact = (max(hi, 0.0) - min(lo, 0.0)) / qmax
    if exact < TINY32:
        assert (scale, zp) == (0.0, 0), f"scale {exact!r} < 2^-126 must be a zero range, got {(scale, zp)}"
    else:
        assert scale == exact and np.float32(scale) >= TINY32, f"scale {scale!r} (want {exact!r}, >= 2^-126)"
        assert 0 <= zp <= qmax, f"zero_point {zp} outside 0..{qmax} (scale {scale!r}, lo {lo!r})"
        assert zp == int(np.rint(-min(lo, 0.0) / scale)), "zp must not need the clamp when scale >= 2^-126"


@given(w=quant_arrays(), bits=weight_bits, per_channel=st.booleans(), e=st.integers(-1074, -100))
@example(w=np.array([[1.0, -0.5], [0.25, 0.0]]), bits=8, per_channel=True, e=-126 - 7)
def test_weight_scale_below_float32_normal_is_zero(w, bits, per_channel, e):
    w = w * 2.0**e  # shrink into (and below) float32's subnormal range; exact unless float64 underflows
    exact = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / weight_qmax(bits)
    if not per_channel:
        exact = exact.max()
    got = weight_qparams(w, bits, per_channel)
    want = np.where(exact < TINY32, 0.0, exact)
    np.testing.assert_array_equal(got, want, err_msg=f"weight scale vs max|w|/qmax with the 2^-126 rule (e={e})")


def test_activation_ties_round_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    np.testing.assert_array_equal(quantize_activation(x, 1.0, 10, 8), [10, 12, 12, 10, 8, 8])


def test_activation_zero_scale():
    x = np.array([-3.0, 0.0, 7.0])
    np.testing.assert_array_equal(quantize_activation(x, 0.0, 0, 8), [0, 0, 0])
    np.testing.assert_array_equal(fake_quantize_activation(x, 0.0, 0, 8), [0.0, 0.0, 0.0])
    assert activation_range(0.0, 0, 8) == (0.0, 0.0)
    np.testing.assert_array_equal(fake_quantize_backward(np.ones(3), x, 0.0, 0.0), [0.0, 1.0, 0.0])


# ----------------------------------------------------------------------------- STE


@given(x=quant_arrays(), bits=quant_bits, seed=seeds)
def test_ste_backward_is_indicator_of_range(x, bits, seed):
    scale, zp = activation_qparams(0.7 * x.min(), 0.7 * x.max(), bits)
    lo, hi = activation_range(scale, zp, bits)
    x = np.concatenate([x.ravel(), [lo, hi]])  # boundaries are inside
    dy = rng_from(seed).standard_normal(x.shape)
    dx = fake_quantize_backward(dy, x, lo, hi)
    inside = (x >= lo) & (x <= hi)
    np.testing.assert_array_equal(dx[inside], dy[inside])
    np.testing.assert_array_equal(dx[~inside], 0.0)
    assert dx[-1] == dy[-1] and dx[-2] == dy[-2]


def test_ste_backward_boundaries_inclusive_and_per_channel():
    x = np.array([[-1.0, -1.0 - 1e-12, 1.0, 1.0 + 1e-12], [-2.0, 0.0, 2.0, 2.5]])
    dx = fake_quantize_backward(np.ones_like(x), x, np.array([-1.0, -2.0]), np.array([1.0, 2.0]))
    np.testing.assert_array_equal(dx, [[1, 0, 1, 0], [1, 1, 1, 0]])


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bits, exc", [(0, ValueError), (17, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_bits(bits, exc):
    with pytest.raises(exc, match="bits"):
        activation_qparams(0.0, 1.0, bits)
    with pytest.raises(exc, match="bits"):
        fake_quantize_weight(np.ones(3), bits)
    with pytest.raises(exc, match="bits"):
        quantize_activation(np.ones(3), 1.0, 0, bits)


def test_weights_need_two_bits():
    with pytest.raises(ValueError, match="bits >= 2"):
        fake_quantize_weight(np.ones(3), 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(bad):
    with pytest.raises(ValueError, match="w must contain only finite"):
        fake_quantize_weight(np.array([1.0, bad]), 8)
    with pytest.raises(ValueError, match="x must contain only finite"):
        quantize_activation(np.array([1.0, bad]), 1.0, 0, 8)
    with pytest.raises(ValueError, match="lo"):
        activation_qparams(bad, 1.0, 8)
    with pytest.raises(ValueError, match="scale"):
        quantize_weight(np.ones(2), bad, 8)


def test_other_bad_input():
    with pytest.raises(ValueError, match="w must not be empty"):
        weight_qparams(np.array([]), 8)
    with pytest.raises(ValueError, match="lo must be <= hi"):
        activation_qparams(2.0, 1.0, 8)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        quantize_weight(np.ones(2), -1.0, 8)
    with pytest.raises(ValueError, match="scale must be a scalar or shape \\(2,\\)"):
        quantize_weight(np.ones((2, 3)), np.ones(3), 8)
    with pytest.raises(ValueError, match="zero_point must be <= 255"):
        quantize_activation(np.ones(2), 1.0, 256, 8)
    with pytest.raises(TypeError, match="zero_point must be an integer"):
        quantize_activation(np.ones(2), 1.0, 1.5, 8)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        fake_quantize_activation(np.ones(2), -0.1, 0, 8)
    with pytest.raises(ValueError, match="dy must have shape"):
        fake_quantize_backward(np.ones(3), np.ones(2), 0.0, 1.0)
    with pytest.raises(ValueError, match="lo_repr must be <= hi_repr"):
        fake_quantize_backward(np.ones(2), np.ones(2), 1.0, 0.0)
    with pytest.raises(TypeError, match="per_channel must be a bool"):
        weight_qparams(np.ones(2), 8, per_channel="yes")
    with pytest.raises(ValueError, match="per_channel=True needs w with at least 1 dimension"):
        weight_qparams(np.float64(1.0), 8, per_channel=True)


def test_state_size():
    assert state_size([fake_quantize_weight(rng_from(0).standard_normal(1000), 3)]) <= 7
    assert state_size([np.array([1.0, 1.0]), np.array([1.0])]) == 2
    with pytest.raises(TypeError, match="kernels must be a list/tuple or mapping"):
        state_size(np.ones(3))


# ------------------------------------------------------------------ peer: PyTorch
#
# torch's CPU kernel (fake_quantize_per_tensor_affine, float64 input) computes
#   q = clamp(nearbyint(x · inv) + zp, quant_min, quant_max),  inv = float32(1 / float32(scale))
#   out = float32((q − zp) · float32(scale))
# i.e. the scale is float32, the division is a multiplication by a float32 reciprocal
# and the output is rounded to float32. Hence:
#  * exact (bit-identical, ties included) when scale is a power of two: the reciprocal
#    and every product are exact;
#  * otherwise, for a float32-representable scale: codes agree except within
#    ε = 1e-6·(1 + |x/scale|) code units of a .5 tie (SPEC §6: the decision moves
#    by the float32 reciprocal's relative error ≈ 6e-8), and values agree to
#    float32 rounding of the product, |Δ| ≤ 2^-23·|x̂|.



@pytest.fixture(scope="module")
def tq():
    return pytest.importorskip("torch")


def _near_tie(x, scale):
    u = x / scale
    return np.abs(u - np.floor(u) - 0.5) < 1e-6 * (1.0 + np.abs(u))


@given(seed=seeds, bits=quant_bits, e=st.integers(-12, 4))
def test_peer_torch_activation_exact_with_power_of_two_scale(tq, seed, bits, e):
    rng = rng_from(seed)
    qmax = activation_qmax(bits)
    scale = 2.0**e
    zp = int(rng.integers(0, qmax + 1))
    # multiples of scale/4 around the representable range: many exact .5 ties
    u = rng.integers(-4 * zp - 8, 4 * (qmax - zp) + 9, size=64) / 4.0
    x = np.concatenate([u, [0.5, 1.5, 2.5, -0.5]]) * scale
    ref = fake_quantize_activation(x, scale, zp, bits)
    got = tq.fake_quantize_per_tensor_affine(tq.from_numpy(x), scale, zp, 0, qmax).numpy()
    np.testing.assert_array_equal(got, ref)


@given(seed=seeds, bits=quant_bits, lo=st.floats(-5, 0), hi=st.floats(0, 5))
@example(seed=0, bits=3, lo=-1.175494351e-38, hi=0.0)  # float32-subnormal scale -> zero range
@example(seed=0, bits=8, lo=-255 * TINY32, hi=0.0)  # the smallest scale kept, 2^-126
def test_peer_torch_activation_general_scale(tq, seed, bits, lo, hi):
    scale, zp = activation_qparams(lo, hi, bits)
    scale = float(np.float32(scale))  # torch holds the scale in float32
    if scale == 0.0:
        return
    qmax = activation_qmax(bits)
    lo_r, hi_r = activation_range(scale, zp, bits)
    x = rng_from(seed).uniform(lo_r - 3 * scale, hi_r + 3 * scale, 200)
    keep = ~_near_tie(x, scale)
    ref = fake_quantize_activation(x, scale, zp, bits)
    got = tq.fake_quantize_per_tensor_affine(tq.from_numpy(x), scale, zp, 0, qmax).numpy()
    np.testing.assert_allclose(got[keep], ref[keep], rtol=2.0**-23, atol=0)
    assert keep.sum() >= 100


@given(w=quant_arrays(), bits=weight_bits)
def test_peer_torch_weight_per_tensor(tq, w, bits):
    qmax = weight_qmax(bits)
    scale = float(np.float32(weight_qparams(w, bits)))
    if scale == 0.0:
        return
    keep = ~_near_tie(w, scale)
    ref = dequantize(quantize_weight(w, scale, bits), scale)
    got = tq.fake_quantize_per_tensor_affine(tq.from_numpy(w), scale, 0, -qmax, qmax).numpy()
    np.testing.assert_allclose(got[keep], ref[keep], rtol=2.0**-23, atol=0)


@given(seed=seeds, bits=weight_bits, e=st.integers(-10, 2))
def test_peer_torch_weight_exact_ties(tq, seed, bits, e):
    qmax = weight_qmax(bits)
    scale = 2.0**e
    w = rng_from(seed).integers(-4 * qmax - 8, 4 * qmax + 9, size=(3, 16)) / 4.0 * scale
    ref = dequantize(quantize_weight(w, scale, bits), scale)
    got = tq.fake_quantize_per_tensor_affine(tq.from_numpy(w), scale, 0, -qmax, qmax).numpy()
    np.testing.assert_array_equal(got, ref)


@given(w=quant_arrays(), bits=weight_bits)
def test_peer_torch_weight_per_channel(tq, w, bits):
    qmax = weight_qmax(bits)
    scale = weight_qparams(w, bits, per_channel=True).astype(np.float32).astype(np.float64)
    if np.any(scale == 0.0):  # torch would divide by zero; the reference maps to 0 (tested above)
        return
    keep = ~_near_tie(w, scale[:, None])
    ref = dequantize(quantize_weight(w, scale, bits), scale)
    got = tq.fake_quantize_per_channel_affine(
        tq.from_numpy(w), tq.from_numpy(scale.astype(np.float32)), tq.zeros(w.shape[0], dtype=tq.int32),
        0, -qmax, qmax,
    ).numpy()
    np.testing.assert_allclose(got[keep], ref[keep], rtol=2.0**-23, atol=0)
