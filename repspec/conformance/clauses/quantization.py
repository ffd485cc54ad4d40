"""Conformance clauses of SPEC §5 uniform quantization, straight-through estimators and k-means."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from repspec.core.vocabulary import CALIBRATORS, DEFAULT_MSE_CANDIDATES, DEFAULT_NUM_BINS, DEFAULT_ZERO_BIN, MIN_SCALE
from repspec.reference import calibrate as ref_calibrate
from repspec.reference import kmeans as ref_kmeans
from repspec.reference import qat as ref_qat
from repspec.reference import quant as ref_quant
from repspec.reference.analysis import state_size as ref_state_size

from ..adapter import (
    BlockSpec,
    NetworkSpec,
    NotProvided,
)
from .base import (
    INF,
    AdapterRaised,
    Ambiguous,
    Checker,
    Clause,
    Mismatch,
    call,
    case_rng,
    register,
    seeds,
    special,
    with_num_batches_tracked,
)
from .network import _randomize_state

# ============================================================ §5 uniform quantization

_Q_KINDS = ("normal", "heavy", "grid", "zeros")


def _general_array(rng, shape, kind: str, mag: float) -> np.ndarray:
    if kind == "normal":
        a = rng.standard_normal(shape)
    elif kind == "heavy":
        a = rng.standard_t(3, shape)
    elif kind == "grid":
        a = rng.integers(-8, 9, shape) / 2.0
    else:
        a = np.zeros(shape)
    return a * mag


@st.composite
def _weight_cases(draw) -> dict:
    mode = draw(st.sampled_from(["exact", "general"]))
    per_channel = draw(st.booleans())
    layout = draw(st.sampled_from(["2d", "4d"]))
    rows = draw(st.integers(1, 4))
    shape = (rows, draw(st.integers(1, 8))) if layout == "2d" else (rows, draw(st.integers(1, 2)), 3, 3)
    seed = draw(seeds)
    rng = case_rng(seed)
    if mode == "exact":  # dyadic: power-of-two scales, exact .5 ties — compared exactly
        bits = draw(st.integers(2, 8))
        qmax = 2 ** (bits - 1) - 1
        codes = rng.integers(-qmax, qmax + 1, shape).astype(np.float64)
        codes += 0.5 * rng.integers(0, 2, shape) * np.where(codes < qmax, 1.0, 0.0)
        codes = np.clip(codes, -qmax, qmax)
        flat = codes.reshape(rows, -1)
        exps = rng.integers(-3, 4, rows) if per_channel else np.full(rows, rng.integers(-3, 4))
        for r in range(rows if per_channel else 1):  # pin max|w| = qmax·2^e so scale = 2^e exactly
            flat[r, rng.integers(flat.shape[1])] = qmax * rng.choice([-1.0, 1.0])
        w = (flat * np.exp2(exps)[:, None]).reshape(shape)
        if per_channel and rows > 1 and rng.random() < 0.3:
            w[rng.integers(rows)] = 0.0  # an all-zero channel: scale 0
    else:
        bits = draw(st.integers(2, 16))
        w = _general_array(rng, shape, draw(st.sampled_from(_Q_KINDS)), 10.0 ** draw(st.integers(-3, 3)))
    return dict(mode=mode, bits=bits, per_channel=per_channel, shape=shape, seed=seed, w=w)


def _ties(r: np.ndarray, eps: float) -> np.ndarray:
    """Elements of ``r`` within ``eps·max(1, |r|)`` of a .5 rounding tie."""
    return np.abs(r - np.floor(r) - 0.5) <= eps * np.maximum(1.0, np.abs(r))


def _check_weight(adapter, case, cmp: Checker) -> None:
    w, bits, pc = case["w"], case["bits"], case["per_channel"]
    out = call(adapter, "fake_quantize_weight", w, bits=bits, per_channel=pc)
    expected = ref_quant.fake_quantize_weight(w, bits, pc)
    amb, alts = None, ()
    if case["mode"] == "general":  # non-dyadic: a value within ε of a .5 tie may round either way
        qmax = ref_quant.weight_qmax(bits)
        scale = np.asarray(ref_quant.weight_qparams(w, bits, pc), dtype=np.float64)
        s = scale if scale.ndim == 0 else scale.reshape((-1,) + (1,) * (w.ndim - 1))
        safe = np.where(s > 0, s, 1.0)
        r = np.where(s > 0, w / safe, 0.0)
        amb = _ties(r, cmp.tie_eps) & (s > 0)
        alts = (np.clip(np.floor(r), -qmax, qmax) * s, np.clip(np.ceil(r), -qmax, qmax) * s)
    cmp.close("w_hat", out, expected, kind="quantized", alternatives=alts, ambiguous=amb)


def _weight_example_ties() -> dict:
    # scale = 3/3 = 1: 0.5 → 0, 1.5 → 2, 2.5 → 2, −0.5 → −0, −1.5 → −2 (half to even)
    w = np.array([[0.5, 1.5, 2.5, -3.0, -0.5, -1.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    return dict(mode="exact", bits=3, per_channel=True, shape=w.shape, seed=0, w=w)


register(Clause(
    id="§5.uniform-weight", section="§5", title="uniform weight fake quantization (symmetric, narrow range)",
    checks="scale = max|w|/(2^(b−1)−1) per layer or per output channel (axis 0, 2-D and 4-D), "
           "q = clamp(rint(w/scale), ±qmax) with round half to even, ŵ = q·scale, scale 0 → 0, against "
           "reference.quant.fake_quantize_weight; dyadic cases (scale a power of two, exact .5 ties, "
           "all-zero channels) and general ones (normal, heavy-tailed, grid, zeros; magnitudes 1e-3..1e3; "
           "bits 2..16).",
    tolerance="quantized (rtol 1e-12, atol 0): codes exact; in general cases an element within 1e-9 of a .5 tie "
              "may take either neighbouring code (SPEC §6); dyadic ties are exact.",
    methods=("fake_quantize_weight",), strategy=_weight_cases, check=_check_weight,
    examples=(_weight_example_ties,),
))


@st.composite
def _activation_cases(draw, *, with_dy: bool = False) -> dict:
    mode = draw(st.sampled_from(["exact", "general"]))
    bits = draw(st.integers(1, 8))
    qmax = 2**bits - 1
    size = draw(st.integers(1, 24))
    seed = draw(seeds)
    rng = case_rng(seed)
    if mode == "exact":  # dyadic: scale 2^e, lo off the grid by f (f = 0.5: a tie on the zero point)
        placement = draw(st.sampled_from(["straddle", "straddle", "positive", "negative"]))
        e = draw(st.integers(-3, 3))
        s = 2.0**e
        if placement == "straddle":
            f = draw(st.sampled_from([0.5, 0.25, 0.75, 0.0, 0.375]))
            zp0 = int(rng.integers(0, qmax)) if qmax > 1 else 0
            if zp0 + f == 0.0:
                f = 0.5
            lo = -(zp0 + f) * s
            hi = lo + qmax * s
            base = -(zp0 + f)
        elif placement == "positive":  # lo > 0: the range is extended down to 0 → zp = 0
            lo, hi, base = float(rng.integers(1, qmax + 1)) * s / 4.0, qmax * s, 0.0
        else:  # hi < 0: extended up to 0 → zp = qmax
            lo, hi, base = -qmax * s, -float(rng.integers(1, qmax + 1)) * s / 4.0, -qmax
        k = rng.integers(int(math.floor(base)) - 3, int(math.ceil(base)) + qmax + 4, size)
        x = (k + rng.choice([0.0, 0.25, 0.5, 0.75], size)) * s
    else:
        kind = draw(st.sampled_from(["straddle", "positive", "negative", "zero"]))
        mag = 10.0 ** draw(st.integers(-3, 3))
        a, b = np.sort(rng.uniform(0.05, 1.0, 2))
        lo, hi = {"straddle": (-a, b), "positive": (a, b), "negative": (-b, -a), "zero": (0.0, 0.0)}[kind]
        lo, hi = lo * mag, hi * mag
        width = max(hi, 0.0) - min(lo, 0.0)
        x = rng.uniform(min(lo, 0.0) - 0.25 * width - mag, max(hi, 0.0) + 0.25 * width + mag, size)
    case = dict(mode=mode, bits=bits, lo=float(lo), hi=float(hi), size=size, seed=seed, x=x)
    if with_dy:
        case["dy"] = rng.standard_normal(size)
    return case


def _activation_ambiguity(case, eps: float):
    """For general cases: (ambiguous zero point?, per-element tie mask, alternatives, scale, zp)."""
    scale, zp = ref_quant.activation_qparams(case["lo"], case["hi"], case["bits"])
    if case["mode"] == "exact" or scale == 0.0:
        return False, None, (), scale, zp
    lo_ext = min(case["lo"], 0.0)
    zp_amb = bool(_ties(np.array(-lo_ext / scale), eps))
    qmax = ref_quant.activation_qmax(case["bits"])
    r = case["x"] / scale
    amb = _ties(r, eps)
    alts = tuple((np.clip(f(r) + zp, 0, qmax) - zp) * scale for f in (np.floor, np.ceil))
    return zp_amb, amb, alts, scale, zp


def _check_activation(adapter, case, cmp: Checker) -> None:
    zp_amb, amb, alts, scale, zp = _activation_ambiguity(case, cmp.tie_eps)
    if zp_amb:
        raise Ambiguous("−lo/scale lies within ε of a .5 tie: the zero point may round either way")
    out = call(adapter, "fake_quantize_activation", case["x"], lo=case["lo"], hi=case["hi"], bits=case["bits"])
    expected = ref_quant.fake_quantize_activation(case["x"], scale, zp, case["bits"])
    cmp.close("x_hat", out, expected, kind="quantized", alternatives=alts, ambiguous=amb)


def _activation_example_zero_point_tie() -> dict:
    # scale 1, lo = −2.5: −lo/scale = 2.5 → zp = 2 (half to even); codes 0..3 → range [−2, 1]
    return dict(mode="exact", bits=2, lo=-2.5, hi=0.5, size=9, seed=0,
                x=np.array([-4.0, -2.75, -2.5, -2.0, -0.5, 0.5, 1.0, 1.25, 3.0]))


register(Clause(
    id="§5.uniform-activation", section="§5", title="uniform activation fake quantization (asymmetric)",
    checks="from the calibrated [lo, hi]: lo' = min(lo, 0), hi' = max(hi, 0), scale = (hi'−lo')/(2^b−1), "
           "zp = clamp(rint(−lo'/scale), 0, 2^b−1) (rounded!), q = clamp(rint(x/scale) + zp, 0, 2^b−1), "
           "x̂ = (q−zp)·scale, scale 0 → 0, against reference.quant; dyadic cases (exact ties on x/scale and on "
           "the zero point, x beyond both range ends, lo > 0, hi < 0) and general ones; bits 1..8.",
    tolerance="quantized (rtol 1e-12, atol 0); general cases: elements within 1e-9 of a .5 tie may take either "
              "code, and cases whose zero point is within 1e-9 of a tie are not compared (SPEC §6).",
    methods=("fake_quantize_activation",), strategy=_activation_cases, check=_check_activation,
    examples=(_activation_example_zero_point_tie,),
))


def _check_ste(adapter, case, cmp: Checker) -> None:
    zp_amb, _, _, scale, zp = _activation_ambiguity(case, cmp.tie_eps)
    if zp_amb:
        raise Ambiguous("−lo/scale lies within ε of a .5 tie: the zero point may round either way")
    bits, x, dy = case["bits"], case["x"], case["dy"]
    out = call(adapter, "fake_quantize_activation_backward", dy, x, lo=case["lo"], hi=case["hi"], bits=bits)
    lo_r, hi_r = ref_quant.activation_range(scale, zp, bits)
    expected = ref_quant.fake_quantize_backward(dy, x, lo_r, hi_r)
    amb, alts = None, ()
    if case["mode"] == "general":  # within ε of a range end: either side
        tol = cmp.tie_eps * max(scale, abs(lo_r), abs(hi_r), 1e-300)
        amb = (np.abs(x - lo_r) <= tol) | (np.abs(x - hi_r) <= tol)
        alts = (dy, np.zeros_like(dy))
    cmp.close("dx", out, expected, kind="quantized", alternatives=alts, ambiguous=amb)


def _ste_example() -> dict:
    # scale 1, zp 2, representable range [−2, 1]: ends inclusive; 1.25 and −2.25 are outside (torch's
    # code-based mask would pass them: rint(1.25) + 2 = 3 ≤ qmax)
    x = np.array([-2.25, -2.0, 0.0, 1.0, 1.25, 1.5])
    return dict(mode="exact", bits=2, lo=-2.5, hi=0.5, size=6, seed=0, x=x, dy=np.arange(1.0, 7.0))


register(Clause(
    id="§5.ste", section="§5", title="straight-through estimator of the activation quantizer",
    checks="∂L/∂x = dy·[lo_repr ≤ x ≤ hi_repr] with the representable range ((0−zp)·scale, (qmax−zp)·scale), "
           "ends inclusive, masked on the INPUT value (not on the rounded code as torch's fake_quantize does: "
           "inputs up to half a step outside get 0), against reference.quant.fake_quantize_backward.",
    tolerance="quantized (rtol 1e-12, atol 0): every element is dy or 0; in general cases an input within "
              "1e-9·scale of a range end may go either way (SPEC §6).",
    methods=("fake_quantize_activation_backward",), strategy=lambda: _activation_cases(with_dy=True),
    check=_check_ste, examples=(_ste_example,),
))


def _lossy_max(m: float, qmax: int) -> float:
    """The first float ≥ m whose range round trip is lossy: fl(fl(m/qmax)·qmax) < m (none for qmax = 1)."""
    if qmax == 1:
        return m
    for j in range(2048):  # lossy values cluster in parts of the binade: search coarsely
        c = m * (1.0 + j / 1024.0)
        if (c / qmax) * qmax < c:
            return c
    return m


@st.composite
def _weight_ste_cases(draw) -> dict:
    bits = draw(st.sampled_from([3, 2, 4, 8, 16]))
    per_channel = draw(st.booleans())
    lossy = draw(st.booleans())
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 8)))
    seed = draw(seeds)
    rng = case_rng(seed)
    w = _general_array(rng, shape, draw(st.sampled_from(("normal", "heavy", "grid"))), 10.0 ** draw(st.integers(-3, 3)))
    if lossy:  # pin the largest |w| of each row (or of the tensor) to a value whose range round trip is lossy
        qmax = 2 ** (bits - 1) - 1
        for r in range(shape[0] if per_channel else 1):
            rows = w[r] if per_channel else w.reshape(-1)
            j = int(np.argmax(np.abs(rows)))
            if rows[j] != 0:
                rows[j] = np.sign(rows[j]) * _lossy_max(float(abs(rows[j])), qmax)
    return dict(bits=bits, per_channel=per_channel, lossy=lossy, shape=shape, seed=seed, w=w,
                dy=rng.standard_normal(shape))


def _check_weight_ste(adapter, case, cmp: Checker) -> None:
    out = call(adapter, "fake_quantize_weight_backward", case["dy"], case["w"], bits=case["bits"],
               per_channel=case["per_channel"])
    cmp.close("dw", out, case["dy"], kind="quantized")


def _weight_ste_example() -> dict:
    # max|w| = 0.9, qmax = 3: fl(fl(0.9/3)·3) = 0.8999999999999999 < 0.9, so a floating-point test
    # |w| ≤ qmax·scale drops the gradient of the largest weight; the spec passes every one
    w = np.array([[0.9, -0.2, 0.1], [0.3, 0.05, -0.9]])
    return dict(bits=3, per_channel=False, lossy=True, shape=w.shape, seed=0, w=w, dy=np.ones_like(w))


register(Clause(
    id="§5.ste-weight", section="§5", title="straight-through estimator of the weight quantizer",
    checks="with scale = max|w|/qmax taken from w itself every weight is inside the representable range, so "
           "∂L/∂w = dy everywhere (reference.qat.UniformWeightQuantizer.backward). A port that re-tests "
           "|w| ≤ qmax·scale in floating point drops the gradient of the largest weight whenever "
           "fl(fl(max|w|/qmax)·qmax) < max|w|.",
    tolerance="quantized (rtol 1e-12, atol 0): dy must come back unchanged.",
    methods=("fake_quantize_weight_backward",), strategy=_weight_ste_cases, check=_check_weight_ste,
    examples=(_weight_ste_example,),
))


# ============================================================ §5 calibrators

_CAL_KINDS = ("normal", "post_relu", "duplicates", "constant", "zeros", "grid", "heavy")


def _split_into_batches(rng, values: np.ndarray, n_batches: int) -> list[np.ndarray]:
    """``values`` cut at random points into up to ``n_batches`` non-empty batches of different sizes; a
    batch of even size ≥ 4 is 2-D half the time (calibrators flatten)."""
    n = values.size
    k = min(n_batches, n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False)) if k > 1 else []
    out = []
    for b in np.split(values, cuts):
        out.append(b.reshape(2, -1) if b.size % 2 == 0 and b.size >= 4 and rng.random() < 0.5 else b.copy())
    return out


def _calibration_values(rng, kind: str, n: int) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "heavy":
        return rng.standard_t(2, n)
    if kind == "post_relu":  # ReLU output: a spike of exact zeros next to the positive part
        a = np.maximum(rng.standard_normal(n), 0.0)
        a[rng.random(n) < 0.3] = 0.0
        return a
    if kind == "duplicates":  # heavy duplicates: three values
        return rng.choice(rng.standard_normal(3), n)
    if kind == "constant":  # min == max
        return np.full(n, rng.standard_normal())
    if kind == "grid":  # dyadic, repeated values, exact .5 ties on many grids
        return rng.integers(-8, 9, n) / 4.0
    return np.where(rng.random(n) < 0.5, -0.0, 0.0)  # all zeros, both signs


def _mse_tie_values(draw, rng) -> tuple[int, np.ndarray, dict]:
    """Dyadic data on which the clipping ratios α = 1 and a = (N−1)/N give exactly equal MSEs, the smallest.

    With ``lo0 = −L = −zp0·2^e`` and ``hi0 = H = (qmax − zp0)·2^e`` both grids are dyadic (``scale = α·2^e``).
    The values ``H, a·H, −L, −a·L`` (and zeros): at α = 1 ``a·H`` and ``−a·L`` round to ``H``, ``−L``
    (``N ≥ 2·qmax``), at α = a ``H`` and ``−L`` clip to ``a·H``, ``−a·L``; either way the squared errors are
    ``(1 − a)²·(H², L²)``, while every α < a clips more. So the tie rule alone decides: α = 1.
    """
    bits = draw(st.integers(1, 4))
    qmax = 2**bits - 1
    n_ratios = 2 ** draw(st.integers(int(math.ceil(math.log2(2 * qmax))), 6))
    zp0 = draw(st.integers(0, qmax))
    e = draw(st.integers(-2, 2))
    k_hi, k_lo, zeros = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 3))
    a = (n_ratios - 1) / n_ratios
    lo_mag, hi_mag = zp0 * 2.0**e, (qmax - zp0) * 2.0**e
    parts = [np.full(zeros, 0.0)]
    if hi_mag > 0:
        parts += [np.full(k_hi, hi_mag), np.full(k_hi, a * hi_mag)]
    if lo_mag > 0:
        parts += [np.full(k_lo, -lo_mag), np.full(k_lo, -a * lo_mag)]
    candidates = n_ratios if draw(st.booleans()) else np.array([0.5, a, 0.25])  # an int N or explicit ratios
    return bits, rng.permutation(np.concatenate(parts)), {"candidates": candidates}


def _mse_exact_values(draw, rng) -> tuple[int, np.ndarray, dict]:
    """Dyadic data with ``hi0 − lo0 = qmax·2^e`` and dyadic ratios ``k/N``: every candidate's scale, errors and
    sums are exact in float64, so every MSE (and every tie between them) is the same in any correct port."""
    bits = draw(st.integers(1, 4))
    qmax = 2**bits - 1
    e = draw(st.integers(-2, 2))
    zp0 = draw(st.integers(0, qmax))
    n = draw(st.integers(2, 24))
    lo0, hi0 = -zp0 * 2.0**e, (qmax - zp0) * 2.0**e
    v = rng.integers(int(lo0 * 8 / 2.0**e), int(hi0 * 8 / 2.0**e) + 1, n) * 2.0**e / 8
    v[0], v[1] = (lo0 if lo0 < 0 else v[0]), (hi0 if hi0 > 0 else v[1])
    n_ratios = 2 ** draw(st.integers(1, 5))
    candidates = n_ratios if draw(st.booleans()) else \
        np.unique(rng.integers(1, n_ratios + 1, 3)) / n_ratios  # explicit dyadic ratios
    return bits, rng.permutation(v), {"candidates": candidates}


def _entropy_histogram_values(draw, rng) -> tuple[int, np.ndarray, dict]:
    """Values at bin centres ``(j + ½)·A/nb`` of a drawn sparse histogram (``A = 2^e`` itself in the last bin):
    small integer histograms where several thresholds reach KL = 0 exactly.

    ``level`` histograms hold the same count ``c`` in every non-empty bin and nothing below bin ``nq − 1``:
    then ``P ∝ Q`` both at ``i = nq`` (one non-empty bin) and at ``i = num_bins`` (every chunk uniform), a
    tie the smallest ``i`` must win. ``sparse`` ones draw each count, with exact zeros in bin 0."""
    bits = draw(st.integers(1, 3))
    signed = draw(st.booleans())
    nq = 2 ** (bits - 1) if signed else 2**bits
    nb = draw(st.integers(max(nq, 2), 16))
    amax = 2.0 ** draw(st.integers(-2, 2))
    if draw(st.sampled_from(["level", "sparse"])) == "level":
        counts = draw(st.integers(1, 3)) * (rng.random(nb) < 0.5)
        counts[:max(nq - 1, 0)] = 0
        counts[[max(nq - 1, 0), -1]] = counts.max(initial=0) or 1
        zeros = 0
    else:
        counts = rng.integers(0, 4, nb) * (rng.random(nb) < 0.5)
        counts[-1] = max(counts[-1], 1)
        zeros = draw(st.integers(0, 3))
    counts[-1] -= 1  # one value of the last bin is A itself
    centres = (np.arange(nb) + 0.5) * amax / nb
    v = np.concatenate([np.repeat(centres, counts), [amax], np.zeros(zeros)])
    if signed:  # random signs (|x|, so the histogram, unchanged) and −A: min x < 0, nq = 2^(b−1) levels per side
        v = v * rng.choice([-1.0, 1.0], v.size)
        v[np.flatnonzero(np.abs(v) == amax)[0]] = -amax
    return bits, rng.permutation(v), {"num_bins": nb}


#: the constructed streams every case adds: (method, mode, builder)
_TIE_STREAMS = (("mse", "tie", _mse_tie_values), ("mse", "exact", _mse_exact_values),
                ("entropy", "histogram", _entropy_histogram_values))


def _run(method: str, mode: str, bits: int, options: dict, batches) -> dict:
    return dict(method=method, mode=mode, bits=bits, options={k: v for k, v in options.items() if v is not None},
                batches=batches)


@st.composite
def _calibrator_cases(draw) -> dict:
    """One stream of 1–4 batches observed by each of the five calibrators (options drawn, or absent: the SPEC
    default), plus an MSE stream with an exact tie, a dyadic MSE stream and an entropy histogram stream.

    Every case runs every calibrator: Hypothesis's generation is far from uniform across the branches of a
    drawn choice (one calibrator got none of 50 cases), so the method is not drawn."""
    kind = draw(st.sampled_from(_CAL_KINDS))
    n = draw(st.integers(1, 30))
    n_batches = draw(st.integers(1, 4))
    mag = 10.0 ** draw(st.integers(-3, 3))
    num_bins = draw(st.sampled_from([16, 32, 64]))  # few bins: the default 2048 is one special case
    bits = draw(st.integers(1, int(math.log2(num_bins))))  # 2^b ≤ num_bins: entropy's levels per side fit
    options = {
        "minmax": {},
        "moving_average_minmax": {"momentum": draw(st.sampled_from([None, 0.5, 0.0, 1.0, 0.3]))},
        "percentile": {"percentile": draw(st.sampled_from([None, 50.0, 100.0, 90.0, 99.0, 75.5]))},
        "mse": {"candidates": draw(st.sampled_from([None, 10, 25, "ratios"]))},
        "entropy": {"num_bins": num_bins, "zero_bin": draw(st.sampled_from([None, "keep", "replace"]))},
    }
    seed = draw(seeds)
    rng = case_rng(seed)
    if options["mse"]["candidates"] == "ratios":
        options["mse"]["candidates"] = np.sort(rng.uniform(0.05, 1.0, 4))
    batches = _split_into_batches(rng, _calibration_values(rng, kind, n) * mag, n_batches)
    runs = [_run(m, "general", bits, options[m], batches) for m in CALIBRATORS]
    for method, mode, build in _TIE_STREAMS:
        t_bits, values, t_options = build(draw, rng)
        if method == "entropy":
            t_options["zero_bin"] = draw(st.sampled_from([None, "keep", "replace"]))
        runs.append(_run(method, mode, t_bits, t_options, _split_into_batches(rng, values, draw(st.integers(1, 3)))))
    return dict(kind=kind, seed=seed, runs=runs)


def _range_pair(name: str, out) -> np.ndarray:
    try:
        pair = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError):
        pair = None
    if pair is None or pair.shape != (2,):
        raise Mismatch(name, f"must be a pair (lo, hi) of real numbers, got {out!r}")
    return pair


def _matches(got: np.ndarray, candidates: np.ndarray, tol) -> np.ndarray:
    """Which candidate ranges ``(R, 2)`` the adapter's pair equals within the ``quantized`` tolerance."""
    return np.all(np.abs(candidates - got) <= tol.atol + tol.rtol * np.abs(candidates), axis=1)


def _mse_tie_or_raise(run, got: np.ndarray, cmp: Checker) -> None:
    """Called on a mismatch: ``Ambiguous`` when the adapter's range is a candidate whose MSE is within ε of the
    smallest (a floating-point near-tie, general data only); otherwise the mismatch stands."""
    if run["mode"] != "general":  # dyadic streams: every MSE is exact, ties included
        return
    x = np.concatenate([b.ravel() for b in run["batches"]])
    s = ref_calibrate.mse_scores(x, run["bits"], run["options"].get("candidates", DEFAULT_MSE_CANDIDATES))
    ranges = np.stack([s.ratios * s.lo0, s.ratios * s.hi0], axis=1)
    best = float(s.mse.min())
    near = np.abs(s.mse - best) <= cmp.tie_eps * best  # best == 0: an exact zero-error tie is compared
    if np.any(_matches(got, ranges, cmp.tol("quantized")) & near):
        raise Ambiguous("mse: two clipping ratios have MSEs within ε (relative) of each other")


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _exact_spread(hist: np.ndarray, i: int, nq: int) -> bool:
    """Whether every chunk mass / non-empty count of ``Q`` at threshold ``i`` is a dyadic number: then the
    normalized ``P`` and ``Q`` are correctly rounded values of the same reals wherever they are proportional,
    so KL = 0 is exact (not a rounded near-zero) in any port that normalizes by division."""
    width = i // nq
    ends = [(c + 1) * width if c < nq - 1 else i for c in range(nq)]
    for start, end in zip([c * width for c in range(nq)], ends):
        seg = hist[start:end]
        count, mass = int(np.count_nonzero(seg)), int(seg.sum())
        if count and not _power_of_two(count // math.gcd(count, mass) if mass else 1):
            return False
    return True


def _entropy_tie_or_raise(run, got: np.ndarray, cmp: Checker) -> None:
    """Called on a mismatch: ``Ambiguous`` when a value of general data lies within ε of a histogram bin
    edge, or when the adapter's range is a threshold whose KL is within ε of the smallest — except for
    an exact tie at KL = 0 (``P ∝ Q`` with dyadic ``Q``), where the smallest i must win."""
    x = np.concatenate([b.ravel() for b in run["batches"]])
    o = run["options"]
    s = ref_calibrate.entropy_scores(x, run["bits"], o.get("num_bins", DEFAULT_NUM_BINS),
                                     o.get("zero_bin", DEFAULT_ZERO_BIN))
    if s.bins.size == 0:
        return
    nb = s.hist.size
    if run["mode"] == "general":
        t = np.abs(x) * nb / float(np.max(np.abs(x)))
        k = np.rint(t)
        if np.any((k > 0) & (k < nb) & (np.abs(t - k) <= cmp.tie_eps * np.maximum(1.0, t))):
            raise Ambiguous("entropy: a value lies within ε of a histogram bin edge")
    ranges = np.stack([np.maximum(-s.thresholds, x.min()), np.minimum(s.thresholds, x.max())], axis=1)
    best = int(np.argmin(s.kl))
    kl_min = float(s.kl[best])
    for j in np.flatnonzero(_matches(got, ranges, cmp.tol("quantized"))):
        if s.kl[j] == kl_min == 0.0 and _exact_spread(s.hist, int(s.bins[j]), s.nq) and \
                _exact_spread(s.hist, int(s.bins[best]), s.nq):
            continue  # an exact tie at KL = 0: the smallest i must win
        if abs(float(s.kl[j]) - kl_min) <= cmp.tie_eps * max(1.0, abs(kl_min)):
            raise Ambiguous("entropy: two thresholds have KL divergences within ε of each other")


_STREAM_NAMES = {"general": "the stream", "tie": "the MSE tie stream", "exact": "the dyadic MSE stream",
                 "histogram": "the entropy histogram stream"}


def _check_calibrator_run(adapter, run, cmp: Checker) -> None:
    method, batches, bits, options = run["method"], run["batches"], run["bits"], run["options"]
    expected = np.array(ref_calibrate.calibrate(method, batches, bits, **options))
    name = f"{method} (lo, hi) on {_STREAM_NAMES[run['mode']]}"
    got = _range_pair(name, call(adapter, "calibrate", method, batches, bits=bits, **options))
    if method in ("moving_average_minmax", "percentile"):  # (1 − m)·lo + m·min_t, linear interpolation
        cmp.close(name, got, expected)
    elif method == "minmax":  # two of the values themselves (exact but for the port's own dtype)
        cmp.close(name, got, expected, kind="quantized")
    else:  # a discrete choice (ratio α, threshold bin i) times the data's range
        try:
            cmp.close(name, got, expected, kind="quantized")
        except Mismatch:
            (_mse_tie_or_raise if method == "mse" else _entropy_tie_or_raise)(run, got, cmp)
            raise


def _check_calibrator(adapter, case, cmp: Checker) -> None:
    """Every run of the case; a calibrator the port declines (NotProvided) declines the case, after the
    others were compared."""
    declined = []
    for run in case["runs"]:
        try:
            _check_calibrator_run(adapter, run, cmp)
        except NotProvided as exc:
            declined.append(str(exc) or run["method"])
    if declined:
        raise NotProvided("; ".join(dict.fromkeys(declined)))


def _cal_case(method, batches, bits, mode="general", **options) -> dict:
    return dict(kind="special", seed=0, runs=[_run(method, mode, bits, options,
                                                   [np.asarray(b, dtype=np.float64) for b in batches])])


@special("minmax: one batch of one element")
def _cal_minmax_single() -> dict:
    return _cal_case("minmax", [[-2.5]], 8)


@special("moving average: batches of 1, 4 and 2 values, momentum 0.5")
def _cal_moving_average() -> dict:
    # dyadic: lo = 0.5·(0.5·(−1) + 0.5·(−4)) + 0.5·(−0.25) exactly; a port that starts the average
    # at 0 (or at the first batch's mean) is off
    return _cal_case("moving_average_minmax", [[-1.0], [-4.0, 2.0, 0.5, 3.0], [-0.25, 8.0]], 8, momentum=0.5)


@special("moving average: the default momentum 0.01, post-ReLU batches")
def _cal_moving_average_default() -> dict:
    rng = case_rng(1)
    return _cal_case("moving_average_minmax", [np.maximum(rng.standard_normal(n), 0.0) for n in (5, 1, 9)], 4)


@special("percentile: all values equal (min == max)")
def _cal_percentile_constant() -> dict:
    return _cal_case("percentile", [np.full(7, 1.75), np.full(3, 1.75)], 8)


@special("percentile 90 over heavy duplicates in three batches")
def _cal_percentile_duplicates() -> dict:
    return _cal_case("percentile", [[0.0, 0.0, 1.0, 1.0], [1.0, 5.0], [0.0, 1.0, 1.0, 9.0, 9.0]], 8, percentile=90.0)


@special("mse: α = 1 and 7/8 tie exactly (dyadic) → the largest α, 1")
def _cal_mse_tie() -> dict:
    # bits 2 (qmax 3), lo0 = −1, hi0 = 2, N = 8 (scales 1 and 7/8): see _mse_tie_values
    return _cal_case("mse", [[2.0, -1.0], [1.75, 0.0, -0.875], [0.0]], 2, mode="tie", candidates=8)


@special("mse: explicit ratios, a tie between 1 and 0.75 (1 bit)")
def _cal_mse_tie_ratios() -> dict:
    # levels {0, 4} and {0, 3}: 3 → 4 costs 1, 4 → 3 costs 1; ratio 0.5 is worse
    return _cal_case("mse", [[0.0, 3.0], [4.0]], 1, mode="tie", candidates=np.array([0.75, 0.5]))


@special("mse: all zeros → (0, 0)")
def _cal_mse_zeros() -> dict:
    return _cal_case("mse", [np.zeros(3), [-0.0]], 4, mode="exact", candidates=4)


@special("entropy: post-ReLU data with a spike of zeros (zero bin replaced by default)")
def _cal_entropy_post_relu() -> dict:
    rng = case_rng(0)
    x = np.maximum(rng.standard_normal(300), 0.0)
    return _cal_case("entropy", [x[:120], x[120:]], 2, num_bins=64)


@special("entropy: every option at its default (2048 bins), 8 bits, post-ReLU data")
def _cal_entropy_default() -> dict:
    rng = case_rng(2)
    return _cal_case("entropy", [np.maximum(rng.standard_normal(200), 0.0)], 8)


@special("entropy: KL = 0 at thresholds 2 and 3 → the smallest i, 2")
def _cal_entropy_zero_kl_tie() -> dict:
    # |x| ∈ {0.5, 1} on 3 bins of [0, 1]: histogram [0, 1, 1] (kept), nq = 2; P_2 = [0, 2] ∝ Q_2 = [0, 1]
    # and P_3 = Q_3 = [0, 1, 1]: KL 0 at both, T = edges[2] = 2/3
    return _cal_case("entropy", [[0.5], [1.0]], 1, mode="histogram", num_bins=3, zero_bin="keep")


@special("entropy: all zeros → (0, 0)")
def _cal_entropy_zeros() -> dict:
    return _cal_case("entropy", [np.zeros(4)], 3, num_bins=16)


register(Clause(
    id="§5.calibrators", section="§5", title="PTQ calibrators over a stream of batches",
    checks="(lo, hi) of each of the five calibrators — minmax, moving_average_minmax (momentum), percentile "
           "(NumPy linear interpolation), mse (clipping ratio α of α·[lo0, hi0]; ties → the largest α) and "
           "entropy (KL threshold on the histogram of |x|, zero bin replaced or kept; ties → the smallest bin) — "
           "over 1–4 batches of different sizes handed over one at a time, against "
           "reference.calibrate.calibrate: normal, heavy-tailed, post-ReLU, duplicated, constant (min == max), "
           "all-zero and dyadic data, single elements; options drawn or left at their defaults; MSE data built "
           "so that two ratios tie exactly (dyadic), entropy histograms where several thresholds reach KL = 0.",
    tolerance="minmax quantized (rtol 1e-12, atol 0: two of the values themselves); moving average and "
              "percentile continuous (rtol 1e-9, atol 1e-11: the same formula in another order); mse and entropy "
              "quantized (a discrete choice times the range). Exact ties are compared exactly (dyadic MSE data, KL = 0 with dyadic Q); "
              "in general data a chosen ratio/threshold whose MSE (relative) or KL (absolute, nats) is within "
              "1e-9 of the best, or a value within 1e-9 of a bin edge, is not compared (SPEC §6).",
    methods=("calibrate",), strategy=_calibrator_cases, check=_check_calibrator, budget=0.6,
    examples=(_cal_minmax_single, _cal_moving_average, _cal_moving_average_default, _cal_percentile_constant,
              _cal_percentile_duplicates, _cal_mse_tie, _cal_mse_tie_ratios, _cal_mse_zeros, _cal_entropy_post_relu,
              _cal_entropy_default, _cal_entropy_zero_kl_tie, _cal_entropy_zeros),
    case_label=("method", lambda case: [run["method"] for run in case["runs"]]),
))


# ============================================================ §5 zero range and scale underflow


def _integer_codes(name: str, out) -> np.ndarray:
    """The adapter's codes as int64 (an integer array, or floats holding integers)."""
    try:
        codes = np.asarray(out)
    except (TypeError, ValueError) as exc:
        raise Mismatch(name, f"cannot be read as an array ({exc})") from None
    if codes.dtype.kind == "f":
        if not (np.all(np.isfinite(codes)) and np.all(codes == np.rint(codes))):
            raise Mismatch(name, "must hold integer codes")
        codes = codes.astype(np.int64)
    elif codes.dtype.kind not in "iu":
        raise Mismatch(name, f"must hold integer codes, got dtype {codes.dtype}")
    return codes


def _check_weight_quantizer(adapter, w, bits: int, per_channel: bool, cmp: Checker) -> None:
    """Scale, codes and ŵ of the weight quantizer against the reference (the scale a scalar or ``(O,)``)."""
    scale = ref_quant.weight_qparams(w, bits, per_channel)
    cmp.close("weight scale", call(adapter, "weight_qparams", w, bits=bits, per_channel=per_channel),
              np.asarray(scale), kind="quantized")
    codes = _integer_codes("weight codes", call(adapter, "quantize_weight", w, bits=bits, per_channel=per_channel))
    cmp.equal("weight codes", codes, ref_quant.quantize_weight(w, scale, bits))
    cmp.close("w_hat", call(adapter, "fake_quantize_weight", w, bits=bits, per_channel=per_channel),
              ref_quant.fake_quantize_weight(w, bits, per_channel), kind="quantized")


def _check_activation_quantizer(adapter, x, dy, lo: float, hi: float, bits: int, cmp: Checker) -> None:
    """(scale, zp), codes, x̂ and the STE (which shows the representable range) against the reference."""
    scale, zp = ref_quant.activation_qparams(lo, hi, bits)
    out = call(adapter, "activation_qparams", lo, hi, bits=bits)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("activation_qparams", f"must return (scale, zero_point), got {out!r}")
    cmp.close("activation scale", out[0], scale, kind="quantized")
    cmp.equal("zero point", _integer_codes("zero point", out[1]), np.int64(zp))
    codes = _integer_codes("activation codes", call(adapter, "quantize_activation", x, lo=lo, hi=hi, bits=bits))
    cmp.equal("activation codes", codes, ref_quant.quantize_activation(x, scale, zp, bits))
    cmp.close("x_hat", call(adapter, "fake_quantize_activation", x, lo=lo, hi=hi, bits=bits),
              ref_quant.fake_quantize_activation(x, scale, zp, bits), kind="quantized")
    lo_r, hi_r = ref_quant.activation_range(scale, zp, bits)
    cmp.close("dx (the representable range)",
              call(adapter, "fake_quantize_activation_backward", dy, x, lo=lo, hi=hi, bits=bits),
              ref_quant.fake_quantize_backward(dy, x, lo_r, hi_r), kind="quantized")


def _check_quantizer_case(adapter, case, cmp: Checker) -> None:
    if case["target"] == "weight":
        _check_weight_quantizer(adapter, case["w"], case["bits"], case["per_channel"], cmp)
    else:
        _check_activation_quantizer(adapter, case["x"], case["dy"], case["lo"], case["hi"], case["bits"], cmp)


_ZERO_RANGE_METHODS = ("weight_qparams", "quantize_weight", "fake_quantize_weight", "activation_qparams",
                       "quantize_activation", "fake_quantize_activation", "fake_quantize_activation_backward")


def _dyadic_channels(rng, rows: int, cols: int, bits: int, exponent: int) -> np.ndarray:
    """``(rows, cols)`` weights ``code·2^e`` with each row's max|w| pinned to ``qmax·2^e`` (scale exactly 2^e)."""
    qmax = 2 ** (bits - 1) - 1
    w = rng.integers(-qmax, qmax + 1, (rows, cols)).astype(np.float64)
    w[np.arange(rows), rng.integers(cols, size=rows)] = qmax * rng.choice([-1.0, 1.0], rows)
    return w * 2.0**exponent


def _activation_inputs(rng, size: int, unit: float, lo_code: int, hi_code: int, offsets) -> np.ndarray:
    """Inputs ``(k + f)·unit`` around the code range plus 0, −0, ±1, ±1e300 (far outside: clamped)."""
    k = rng.integers(lo_code - 3, hi_code + 4, size)
    return np.concatenate([(k + rng.choice(offsets, size)) * unit, [0.0, -0.0, 1.0, -1.0, 1e300, -1e300]])


def _zero_signs(rng, shape) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -0.0, 0.0)


@st.composite
def _zero_range_cases(draw) -> dict:
    target = draw(st.sampled_from(["weight", "activation"]))
    seed = draw(seeds)
    rng = case_rng(seed)
    if target == "activation":  # lo = hi = 0 (either sign): the only finite zero range above 2^−126
        bits = draw(st.integers(1, 16))
        lo, hi = draw(st.sampled_from([(0.0, 0.0), (-0.0, 0.0), (-0.0, -0.0), (0.0, 0.0)]))
        x = np.concatenate([rng.standard_normal(draw(st.integers(0, 8))) * 10.0 ** rng.integers(-3, 4),
                            _zero_signs(rng, 2), [1e300, -1e-300]])
        return dict(target=target, bits=bits, lo=lo, hi=hi, seed=seed, x=rng.permutation(x),
                    dy=rng.standard_normal(x.size))
    bits = draw(st.integers(2, 16))
    per_channel = draw(st.booleans())
    layout = draw(st.sampled_from(["2d", "4d", "1d"] if not per_channel else ["2d", "4d"]))
    rows = draw(st.integers(1, 4))
    cols = draw(st.integers(1, 6)) if layout != "4d" else 9 * draw(st.integers(1, 2))
    w = _dyadic_channels(rng, rows, cols, bits, draw(st.integers(-3, 3)))
    if per_channel:  # at least one all-zero channel; all of them in one case in four
        zero_rows = np.ones(rows, bool) if draw(st.integers(0, 3)) == 0 else rng.random(rows) < 0.5
        zero_rows[rng.integers(rows)] = True
        w[zero_rows] = _zero_signs(rng, (int(zero_rows.sum()), cols))
    else:  # the whole tensor is zero
        w = _zero_signs(rng, w.shape)
    shape = {"1d": (rows * cols,), "2d": (rows, cols), "4d": (rows, cols // 9, 3, 3)}[layout]
    return dict(target=target, bits=bits, per_channel=per_channel, seed=seed, w=w.reshape(shape))


@special("weights: per channel, one all-zero channel among normal ones")
def _zero_range_one_zero_channel() -> dict:
    w = np.array([[1.0, -2.0, 3.0], [0.0, -0.0, 0.0], [-3.0, 0.25, 2.0]])  # scales 1, 0, 1; no .5 tie
    return dict(target="weight", bits=3, per_channel=True, seed=0, w=w)


@special("weights: an all-zero tensor, per tensor")
def _zero_range_zero_tensor() -> dict:
    return dict(target="weight", bits=8, per_channel=False, seed=0, w=np.zeros((2, 1, 3, 3)))


@special("activations: lo = hi = 0 → (0.0, 0), codes zp = 0, x̂ = 0, only x = 0 keeps its gradient")
def _zero_range_activation() -> dict:
    x = np.array([-3.0, -1e-300, -0.0, 0.0, 2.5, 1e300])
    return dict(target="activation", bits=8, lo=0.0, hi=0.0, seed=0, x=x, dy=np.arange(1.0, 7.0))


register(Clause(
    id="§5.zero-range", section="§5", title="a scale of exactly 0 (zero-range rule)",
    checks="weights: an all-zero tensor (per tensor) or all-zero channels among dyadic ones (per channel; 1-D, "
           "2-D, 4-D; ±0.0): scale 0 for them, codes 0, ŵ = 0, the other channels exact; activations with "
           "lo = hi = 0 (either sign): activation_qparams = (0.0, 0), every code = zp = 0, x̂ = 0 for any x "
           "(±1e300, ±1e−300 included), the STE passes only x = 0 (representable range [0, 0]); against "
           "reference.quant.{weight_qparams, quantize_weight, fake_quantize_weight, activation_qparams, "
           "quantize_activation, fake_quantize_activation, fake_quantize_backward}.",
    tolerance="scales and values quantized (rtol 1e-12, atol 0: an expected 0 must be exactly 0); codes and the "
              "zero point exact; dyadic data, nothing near a tie.",
    methods=_ZERO_RANGE_METHODS, strategy=_zero_range_cases, check=_check_quantizer_case,
    examples=(_zero_range_one_zero_channel, _zero_range_zero_tensor, _zero_range_activation),
))

_UNDERFLOW_REGIMES = ("at", "above", "below", "far_below", "subnormal")


def _underflow_channel(rng, regime: str, cols: int, qmax: int) -> np.ndarray:
    """One channel whose ``max|w|/qmax`` is exactly 2^−126 (``at``), one float64 ulp above it (``above``,
    kept), one below (``below``, zero), far below or made of float64 subnormals (zero)."""
    boundary = qmax * MIN_SCALE  # exact: an odd integer times a power of two
    top = {"at": boundary, "above": np.nextafter(boundary, INF), "below": np.nextafter(boundary, 0.0),
           "far_below": boundary * 2.0 ** -rng.integers(1, 30), "subnormal": float(rng.integers(1, 2**20)) * 2.0**-1074}
    if regime in ("at", "above"):  # codes j·2^−126 (no value near a .5 tie for either scale)
        w = rng.integers(-qmax, qmax + 1, cols) * MIN_SCALE
    else:
        w = rng.uniform(-1.0, 1.0, cols) * top[regime]
    w[rng.integers(cols)] = top[regime] * rng.choice([-1.0, 1.0])
    return w


@st.composite
def _scale_underflow_cases(draw) -> dict:
    target = draw(st.sampled_from(["weight", "activation"]))
    seed = draw(seeds)
    rng = case_rng(seed)
    if target == "weight":
        bits = draw(st.integers(2, 16))
        qmax = 2 ** (bits - 1) - 1
        per_channel = draw(st.booleans())
        rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 6))
        regimes = [draw(st.sampled_from(_UNDERFLOW_REGIMES)) for _ in range(rows if per_channel else 1)]
        if per_channel:
            w = np.stack([_underflow_channel(rng, r, cols, qmax) for r in regimes])
        else:
            w = _underflow_channel(rng, regimes[0], rows * cols, qmax).reshape(rows, cols)
        return dict(target=target, bits=bits, per_channel=per_channel, regimes=tuple(regimes), seed=seed, w=w)
    bits = draw(st.integers(1, 16))
    qmax = 2**bits - 1
    regime = draw(st.sampled_from(_UNDERFLOW_REGIMES[:4]))
    # one ulp off the boundary needs a one-sided range (zp0 = 0 or qmax): in a straddling one, hi' − lo'
    # would round the ulp away
    zp0 = draw(st.sampled_from([0, qmax]) if regime in ("above", "below") else st.integers(0, qmax))
    lo, hi = -zp0 * MIN_SCALE, (qmax - zp0) * MIN_SCALE  # width qmax·2^−126: scale exactly 2^−126
    if regime in ("above", "below"):  # widen / narrow the range by one float64 ulp
        toward = INF if regime == "above" else 0.0
        if hi > 0:
            hi = float(np.nextafter(hi, toward))
        else:
            lo = float(np.nextafter(lo, -toward))
    elif regime == "far_below":
        shrink = 2.0 ** -draw(st.integers(1, 40))
        lo, hi = lo * shrink, hi * shrink
    # at the boundary scale 2^−126 itself, x/scale is exact (.5 ties included); one ulp above it, the
    # offsets stay clear of .5 ties
    offsets = [0.0, 0.25, 0.5, 0.75] if regime == "at" else [0.0, 0.25, 0.75]
    x = _activation_inputs(rng, draw(st.integers(1, 12)), MIN_SCALE, -zp0, qmax - zp0, offsets)
    return dict(target=target, bits=bits, regime=regime, lo=float(lo), hi=float(hi), seed=seed, x=x,
                dy=rng.standard_normal(x.size))


@special("weights: max|w|/qmax exactly 2^−126 (kept), one ulp below (zero) and one above (kept), per channel")
def _underflow_weight_boundaries() -> dict:
    qmax = 7
    b = qmax * MIN_SCALE
    w = np.array([[b, -3 * MIN_SCALE, 0.0], [np.nextafter(b, 0.0), -b / 2, 0.0],
                  [-np.nextafter(b, INF), 5 * MIN_SCALE, -MIN_SCALE]])
    return dict(target="weight", bits=4, per_channel=True, regimes=("at", "below", "above"), seed=0, w=w)


@special("activations: lo = −1.175494351e−38, hi = 0, 3 bits (SPEC's float32 example) → zero range")
def _underflow_spec_float32_example() -> dict:
    x = np.array([-1.175494351e-38, -3.3585565e-39, 0.0, 1.0])
    return dict(target="activation", bits=3, regime="below", lo=-1.175494351e-38, hi=0.0, seed=0, x=x,
                dy=np.ones(4))


@special("activations: lo = −511·2^−1074, hi = 0, 8 bits (SPEC's float64 example) → zero range")
def _underflow_spec_float64_example() -> dict:
    x = np.array([-511 * 2.0**-1074, -2.0**-1074, 0.0, 7.0])
    return dict(target="activation", bits=8, regime="far_below", lo=-511 * 2.0**-1074, hi=0.0, seed=0, x=x,
                dy=np.ones(4))


@special("activations: width exactly 255·2^−126 (scale 2^−126 kept), exact .5 ties on x/scale and on zp")
def _underflow_activation_boundary() -> dict:
    lo, hi = -127.5 * MIN_SCALE, 127.5 * MIN_SCALE  # zp = rint(127.5) = 128 (half to even)
    x = np.array([-128.5, -127.5, -0.5, 0.5, 1.5, 127.0, 128.0]) * MIN_SCALE
    return dict(target="activation", bits=8, regime="at", lo=lo, hi=hi, seed=0, x=x, dy=np.arange(1.0, 8.0))


register(Clause(
    id="§5.scale-underflow", section="§5", title="a scale below 2^−126 is a zero range",
    checks="a computed scale below MIN_SCALE = 2^−126 (float32's smallest normal) is 0, one at or above it is "
           "kept: weights whose max|w|/qmax is exactly 2^−126, one float64 ulp above or below it, far below, or "
           "float64 subnormals (per tensor and per channel, mixed regimes across channels); activation ranges "
           "of width exactly qmax·2^−126 (scale 2^−126, exact .5 ties on x/scale and on the zero point), one "
           "ulp wider or narrower, far narrower, and the SPEC's two examples — scale, zero point, codes, x̂ "
           "(inputs up to ±1e300 clamp, never overflow) and the STE range, against reference.quant.",
    tolerance="scales and values quantized (rtol 1e-12, atol 0: a zero range must be exactly 0); codes and the zero "
              "point exact; dyadic boundaries, and one ulp above them no input is near a .5 tie.",
    methods=_ZERO_RANGE_METHODS, strategy=_scale_underflow_cases, check=_check_quantizer_case,
    examples=(_underflow_weight_boundaries, _underflow_spec_float32_example, _underflow_spec_float64_example,
              _underflow_activation_boundary),
))


# ============================================================ §5 what is quantized

_QUANT_BLOCK_KINDS = ("repvgg", "qarepvgg", "repopt_target", "repvgg_oabn")


def _quant_network_case(specs, num_classes, cin0, hw, batch, weight_bits, per_channel, act_bits, seed) -> dict:
    rng = case_rng(seed)
    spec = NetworkSpec(tuple(specs), num_classes)
    net = spec.reference_network({})
    params, buffers = net.init(rng)
    _randomize_state(rng, net, params, buffers, specs)
    ranges = {}
    for i, b in enumerate(specs):  # the first block sees N(0, 1) inputs, the others post-ReLU ones
        lo = -float(rng.uniform(0.2, 1.5)) if i == 0 or rng.random() < 0.3 else 0.0
        ranges[b.prefix] = (lo, float(rng.uniform(0.5, 3.0)))
    return dict(network=spec, weight_bits=weight_bits, per_channel=per_channel, act_bits=act_bits, seed=seed,
                params=params, buffers=buffers, act_ranges=ranges, x=rng.standard_normal((batch, cin0, hw, hw)))


@st.composite
def _quantized_network_cases(draw) -> dict:
    n_blocks = draw(st.integers(2, 4))
    cin = cin0 = draw(st.integers(1, 3))
    specs = []
    for j in range(n_blocks):
        kind = draw(st.sampled_from(_QUANT_BLOCK_KINDS))
        cout = cin if draw(st.booleans()) else draw(st.integers(1, 4))
        stride = draw(st.sampled_from([1, 2]))
        groups = 2 if kind != "repopt_target" and cin % 2 == 0 and cout % 2 == 0 and draw(st.booleans()) else 1
        extra = {}
        if kind == "repvgg_oabn":
            kind, extra = "repvgg", dict(oabn_threshold=draw(st.sampled_from([1.0, 0.5, 2.0])))
        specs.append(BlockSpec(kind, "stage0" if j == 0 else f"stage1.{j - 1}", cin, cout, stride, groups, **extra))
        cin = cout
    return _quant_network_case(specs, draw(st.integers(2, 3)), cin0, draw(st.integers(3, 6)), draw(st.integers(1, 2)),
                               draw(st.sampled_from([4, 2, 8, 3])), draw(st.booleans()),
                               draw(st.sampled_from([8, 4, 2])), draw(seeds))


def _reference_quantized_network(case):
    """The reference's quantized network: ``(qat network, qat buffers, eval caches, logits)``."""
    qnet, qbuffers = ref_qat.make_qat_network(
        case["network"].reference_network(case["params"]), case["params"], case["buffers"],
        weight_quantizer=ref_qat.UniformWeightQuantizer(case["weight_bits"], case["per_channel"]),
        act_bits=case["act_bits"], act_ranges=case["act_ranges"])
    logits, _, (caches, _, _) = qnet.forward(case["params"], qbuffers, case["x"], training=False)
    return qnet, caches, logits


def _near_quantizer_tie(qnet, caches, case, eps: float) -> bool:
    """Whether a merged-kernel element or a quantized block input lies within ε of a rounding tie (or a zero
    point does): a port's merged kernel and activations differ from the reference's by round-off, so
    such an element may round the other way."""
    for (prefix, block), cache in zip(qnet.blocks, caches):
        if block.weight_quantizer is not None:
            s = np.asarray(ref_quant.weight_qparams(cache.kernel, case["weight_bits"], case["per_channel"]))
            s = s if s.ndim == 0 else s[:, None, None, None]
            if np.any(_ties(np.where(s > 0, cache.kernel / np.where(s > 0, s, 1.0), 0.0), eps) & (s > 0)):
                return True
        if block.act_quantizer is not None:
            lo, hi = case["act_ranges"][prefix]
            scale, _ = ref_quant.activation_qparams(lo, hi, case["act_bits"])
            if scale > 0 and (bool(_ties(np.array(-min(lo, 0.0) / scale), eps)) or np.any(_ties(cache.x / scale, eps))):
                return True
    return False


def _layer_record(name: str, rec):
    if not isinstance(rec, (tuple, list)) or len(rec) != 5:
        raise Mismatch(f"layers[{name!r}]", "must be a QuantizedLayer (kernel, bias, weight_bits, per_channel, "
                                            f"act_bits), got {type(rec).__name__}")
    return rec


def _same_setting(field_name: str, got, want) -> bool:
    if field_name == "per_channel":
        return bool(got) == want
    if want is None:
        return got is None
    return got is not None and not isinstance(got, bool) and int(got) == want


def _check_quantized_network(adapter, case, cmp: Checker) -> None:
    spec: NetworkSpec = case["network"]
    out = call(adapter, "quantized_network", spec, case["params"], with_num_batches_tracked(case["buffers"]),
               case["x"], weight_bits=case["weight_bits"], per_channel=case["per_channel"], act_bits=case["act_bits"],
               act_ranges=case["act_ranges"])
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("quantized_network", "must return (layers, logits)")
    layers, logits = out
    qnet, caches, ref_logits = _reference_quantized_network(case)
    expected = {}
    for (prefix, block), cache in zip(qnet.blocks, caches):
        wq, aq = block.weight_quantizer, block.act_quantizer
        expected[prefix] = (cache.kernel_hat, cache.bias, None if wq is None else wq.bits,
                            False if wq is None else wq.per_channel, None if aq is None else aq.bits, cache.kernel)
    head = spec.head_name
    expected[head] = (case["params"][f"{head}.weight"], case["params"][f"{head}.bias"], None, False, None, None)
    cmp.same_keys("layers", layers, expected)
    first = spec.blocks[0].prefix
    for name, (kernel, bias, w_bits, pc, a_bits, fp_kernel) in expected.items():
        rec = _layer_record(name, layers[name])
        why = (" (the first block stays FP32)" if name == first else " (the head stays FP32)" if name == head
               else " (every other conv is quantized on its merged kernel, its input activation-quantized)")
        for field_name, got, want in (("weight_bits", rec[2], w_bits), ("per_channel", rec[3], pc),
                                      ("act_bits", rec[4], a_bits)):
            if not _same_setting(field_name, got, want):
                raise Mismatch(f"layers[{name!r}].{field_name}", f"{got!r} != expected {want!r}{why}")
        if w_bits is None:  # an FP32 layer: the merged kernel itself (continuous: fusion)
            cmp.close(f"layers[{name!r}].kernel", rec[0], kernel)
        else:  # the merged kernel fake-quantized: near a .5 tie either code (merged kernels differ by round-off)
            s = np.asarray(ref_quant.weight_qparams(fp_kernel, w_bits, pc), dtype=np.float64)
            s = s if s.ndim == 0 else s[:, None, None, None]
            qmax = ref_quant.weight_qmax(w_bits)
            r = np.where(s > 0, fp_kernel / np.where(s > 0, s, 1.0), 0.0)
            alts = (np.clip(np.floor(r), -qmax, qmax) * s, np.clip(np.ceil(r), -qmax, qmax) * s)
            cmp.close(f"layers[{name!r}].kernel", rec[0], kernel, kind="quantized", alternatives=alts,
                      ambiguous=_ties(r, cmp.tie_eps) & (s > 0))
        cmp.close(f"layers[{name!r}].bias", rec[1], bias)
    try:
        cmp.close("logits", logits, ref_logits)
    except Mismatch:
        if _near_quantizer_tie(qnet, caches, case, cmp.tie_eps):
            raise Ambiguous("a merged-kernel element or a block input lies within ε of a rounding tie") from None
        raise


def _ql_case(kinds, channels, strides, *, weight_bits=4, per_channel=False, act_bits=4, seed=0, **kw) -> dict:
    specs = [BlockSpec(k, "stage0" if j == 0 else f"stage1.{j - 1}", cin, cout, s, **kw.get(f"block{j}", {}))
             for j, (k, cin, cout, s) in enumerate(zip(kinds, channels[:-1], channels[1:], strides))]
    return _quant_network_case(specs, 3, channels[0], 5, 2, weight_bits, per_channel, act_bits, seed)


@special("three RepVGG blocks (stride 2, identity): per layer, 4-bit weights and activations")
def _ql_repvgg() -> dict:
    return _ql_case(("repvgg",) * 3, (2, 3, 3, 3), (2, 1, 1))


@special("RepVGG blocks, per-channel 8-bit weights, 2-bit activations")
def _ql_repvgg_per_channel() -> dict:
    return _ql_case(("repvgg",) * 3, (3, 4, 4, 2), (1, 1, 2), weight_bits=8, per_channel=True, act_bits=2, seed=1)


@special("QARepVGG then RepOpt target blocks", needs="QARepVGG")
def _ql_qarepvgg_target() -> dict:
    return _ql_case(("qarepvgg", "qarepvgg", "repopt_target"), (2, 2, 2, 3), (1, 1, 2), seed=2)


@special("RepVGG with an OABN identity (s = 0.5) and groups 2", needs="OABN")
def _ql_oabn_groups() -> dict:
    return _ql_case(("repvgg", "repvgg"), (2, 4, 4), (2, 1), seed=3,
                    block1=dict(groups=2, oabn_threshold=0.5))


register(Clause(
    id="§5.quantized-layers", section="§5", title="what is quantized: merged kernels, first block and head FP32",
    checks="for a chain of 2–4 blocks (RepVGG with/without OABN identity and groups, QARepVGG, RepOpt target; "
           "strides 1/2) given uniform weight bits, per layer or per channel, and activation bits: which layers "
           "are quantized (the first block and the head stay FP32; every other block's conv is quantized and its "
           "input activation-quantized, with the calibrated range handed in for every block), the deployed kernels "
           "— each block's MERGED kernel (§2 fusion, K = t·W for the RepOpt target), fake-quantized when quantized —, "
           "FP biases, the head, and the eval-mode logits of the quantized network, against "
           "reference.qat.make_qat_network (QATBlock.quantized_kernel_bias, the network's forward).",
    tolerance="quantization settings exact; FP kernels, biases and logits continuous (rtol 1e-9, atol 1e-11: fusion "
              "and convolutions in another order); quantized kernels quantized (rtol 1e-12), a merged-kernel element "
              "within 1e-9 of a .5 tie may take either code; logits that differ where a kernel element or a "
              "quantized block input is within 1e-9 of a tie are not compared (SPEC §6).",
    methods=("quantized_network",), strategy=_quantized_network_cases, check=_check_quantized_network, budget=0.5,
    examples=(_ql_repvgg, _ql_repvgg_per_channel, _ql_qarepvgg_target, _ql_oabn_groups),
))


# ============================================================ §5 state size

_STATE_KINDS = ("quantized", "duplicates", "signed_zeros", "continuous", "ulps", "subnormal", "constant")


def _state_array(rng, kind: str, shape, pool: np.ndarray) -> np.ndarray:
    n = int(np.prod(shape))
    if kind == "quantized":  # a fake-quantized kernel: few distinct values
        a = ref_quant.fake_quantize_weight(rng.standard_normal(n), int(rng.integers(2, 5)))
    elif kind == "duplicates":  # drawn from a pool shared by every layer: values repeat across layers
        a = rng.choice(pool, n)
    elif kind == "signed_zeros":  # −0.0 == 0.0: one value
        a = np.where(rng.random(n) < 0.5, -0.0, 0.0) + np.where(rng.random(n) < 0.3, 1.5, 0.0)
    elif kind == "continuous":
        a = rng.standard_normal(n)
    elif kind == "ulps":  # neighbours one ulp apart are distinct
        a = np.nextafter(1.0, rng.choice([-INF, INF, 1.0], n))
    elif kind == "subnormal":
        a = rng.integers(-3, 4, n) * 2.0**-1074
    else:
        a = np.full(n, rng.standard_normal())
    return a.reshape(shape)


@st.composite
def _state_size_cases(draw) -> dict:
    n_layers = draw(st.integers(1, 4))
    seed = draw(seeds)
    rng = case_rng(seed)
    pool = np.concatenate([rng.standard_normal(3), [0.0, -0.0]])
    kernels = []
    for _ in range(n_layers):
        layout = draw(st.sampled_from(["1d", "2d", "4d"]))
        shape = {"1d": (draw(st.integers(1, 12)),), "2d": (draw(st.integers(1, 4)), draw(st.integers(1, 6))),
                 "4d": (draw(st.integers(1, 3)), draw(st.integers(1, 2)), 3, 3)}[layout]
        kernels.append(_state_array(rng, draw(st.sampled_from(_STATE_KINDS)), shape, pool))
    refuse = draw(st.sampled_from([None, None, None, "nan", "inf", "empty"]))
    if refuse is not None:  # one layer is not a valid weight array: the port must raise ValueError
        i = int(rng.integers(n_layers))
        if refuse == "empty":
            kernels[i] = np.zeros((0,) + kernels[i].shape[1:])
        else:
            kernels[i] = kernels[i].copy()
            kernels[i].flat[rng.integers(kernels[i].size)] = np.nan if refuse == "nan" else -INF
    return dict(refuse=refuse, seed=seed, kernels=kernels)


def _check_state_size(adapter, case, cmp: Checker) -> None:
    kernels = case["kernels"]
    if case["refuse"] is not None:
        try:
            ref_state_size(kernels)
        except ValueError:
            pass
        else:  # the case itself is wrong: a harness error, not the port's
            raise AssertionError("the reference accepted a kernel it must refuse")
        try:
            out = call(adapter, "state_size", kernels)
        except AdapterRaised as exc:
            if isinstance(exc.exc, ValueError):
                return
            raise Mismatch("state_size", f"must refuse a kernel with {case['refuse']} values with ValueError, raised "
                                         f"{type(exc.exc).__name__}: {exc.exc}") from None
        raise Mismatch("state_size", f"must refuse a kernel with {case['refuse']} values (ValueError), returned {out!r}")
    out = call(adapter, "state_size", kernels)
    if isinstance(out, bool) or not isinstance(out, (int, np.integer)):
        raise Mismatch("state_size", f"must be an integer, got {out!r}")
    cmp.equal("state_size", np.int64(out), np.int64(ref_state_size(kernels)))


@special("−0.0 and 0.0 count once; a value shared by two layers counts twice")
def _state_size_signed_zeros_shared() -> dict:
    return dict(refuse=None, seed=0, kernels=[np.array([0.0, -0.0, 0.5, 0.5]), np.array([[0.5, -0.0], [1.0, 1.0]])])


@special("values one ulp apart are distinct; float64 subnormals count")
def _state_size_ulps() -> dict:
    return dict(refuse=None, seed=0, kernels=[np.array([1.0, np.nextafter(1.0, 2.0), 1.0, 2.0**-1074, 0.0])])


@special("a NaN is refused (ValueError)")
def _state_size_nan() -> dict:
    return dict(refuse="nan", seed=0, kernels=[np.array([1.0, 2.0]), np.array([np.nan, 1.0])])


@special("an empty kernel is refused (ValueError)")
def _state_size_empty() -> dict:
    return dict(refuse="empty", seed=0, kernels=[np.ones(3), np.zeros((0, 3))])


register(Clause(
    id="§5.state-size", section="§5", title="state size: distinct values per quantized layer, summed",
    checks="state_size of 1–4 kernels (1-D, 2-D, 4-D) against reference.analysis.state_size: fake-quantized "
           "kernels, values drawn from a pool shared by every layer (a shared value counts once per layer), "
           "−0.0 mixed with 0.0 (one value), neighbours one ulp apart (distinct), subnormals, constants; a kernel "
           "with a NaN, an Inf or no element must be refused with ValueError.",
    tolerance="exact: a count.",
    methods=("state_size",), strategy=_state_size_cases, check=_check_state_size,
    examples=(_state_size_signed_zeros_shared, _state_size_ulps, _state_size_nan, _state_size_empty),
))


# ============================================================ §5 k-means


@st.composite
def _kmeans_tie_cases(draw) -> dict:
    k = draw(st.sampled_from([2, 4, 8]))
    layout = draw(st.sampled_from(["1d", "2d"]))
    seed = draw(seeds)
    rng = case_rng(seed)
    c = np.sort(rng.integers(-16, 17, k) / 4.0)  # dyadic: midpoints exact, duplicates possible
    mids = 0.5 * c[:-1] + 0.5 * c[1:]
    extra = rng.integers(-80, 81, 6) / 8.0
    w = rng.permutation(np.concatenate([mids, c, extra, [c[0] - 1.0, c[-1] + 1.0]]))
    if layout == "2d" and w.size % 2 == 0:
        w = w.reshape(2, -1)
    return dict(k=k, seed=seed, centroids=c, w=w)


def _check_kmeans_ties(adapter, case, cmp: Checker) -> None:
    out = call(adapter, "kmeans_fake_quantize", case["w"], case["centroids"])
    cmp.close("w_hat", out, ref_kmeans.kmeans_fake_quantize(case["w"], case["centroids"]), kind="quantized")


def _kmeans_tie_example() -> dict:
    c = np.array([-1.0, 0.0, 1.0, 3.0])
    return dict(k=4, seed=0, centroids=c, w=np.array([-0.5, 0.5, 2.0, 2.0000000000000004, -2.0, 5.0]))


register(Clause(
    id="§5.kmeans-ties", section="§5", title="k-means assignment: midpoint ties go to the lower centroid",
    checks="ŵ = c[label(w)] with sorted centroids, boundaries m_j = 0.5·c_j + 0.5·c_{j+1} and "
           "label(w) = #{j : m_j < w}: a value exactly on a midpoint takes the LOWER centroid, duplicate "
           "centroids the lowest index; against reference.kmeans.kmeans_fake_quantize on dyadic centroids "
           "(exact midpoints), values on every midpoint, on the centroids and beyond both ends.",
    tolerance="quantized (rtol 1e-12, atol 0): dyadic data, every correct float64 port is exact here.",
    methods=("kmeans_fake_quantize",), strategy=_kmeans_tie_cases, check=_check_kmeans_ties,
    examples=(_kmeans_tie_example,),
))


@st.composite
def _kmeans_cases(draw) -> dict:
    init = draw(st.sampled_from(["optimal", "linear", "quantile", "warm", "binned"]))
    k = draw(st.sampled_from([2, 1, 4, 8]))
    n = draw(st.integers(1, 40))
    max_iter = draw(st.sampled_from([300, 0, 1, 3]))
    layout = draw(st.sampled_from(["1d", "2d"]))
    decimals = None if init in ("optimal", "binned") else draw(st.sampled_from([None, 1, 0, 2]))
    seed = draw(seeds)
    rng = case_rng(seed)
    v = rng.standard_t(3, n) * 10.0 ** rng.integers(-2, 3)
    if decimals is not None:  # repeated values
        v = np.round(v, decimals)
    if layout == "2d" and n % 2 == 0:
        v = v.reshape(2, -1)
    warm = np.sort(rng.choice(v.ravel(), k) + rng.normal(0, 0.1, k)) if init == "warm" else None
    return dict(init=init, k=k, n=n, max_iter=max_iter, decimals=decimals, seed=seed, values=v, init_centroids=warm)


def _lloyd_margin(case) -> float:
    """Smallest distance (relative to max|v|) of any value to any midpoint over the reference's Lloyd run."""
    v = case["values"].ravel()
    k = case["k"]
    if k >= np.unique(v).size:
        return INF
    c = np.sort(case["init_centroids"]) if case["init"] == "warm" else \
        ref_kmeans.initial_centroids(v, k, case["init"])
    scale = max(float(np.max(np.abs(v))), 1e-300)

    def margin(c):
        m = 0.5 * c[:-1] + 0.5 * c[1:]
        return float(np.min(np.abs(v[:, None] - m[None, :]))) / scale if m.size else INF

    worst = margin(c)
    labels = ref_kmeans.assign(v, c)
    for _ in range(case["max_iter"]):
        c, _ = ref_kmeans.lloyd_step(v, c)
        new = ref_kmeans.assign(v, c)
        worst = min(worst, margin(c))
        if np.array_equal(new, labels):
            break
        labels = new
    return worst


def _check_kmeans(adapter, case, cmp: Checker) -> None:
    kw = dict(init=case["init"], max_iter=case["max_iter"], init_centroids=case["init_centroids"])
    out = call(adapter, "kmeans_1d", case["values"], case["k"], **kw)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch("kmeans_1d", "must return (centroids, labels)")
    ref = ref_kmeans.kmeans_1d(case["values"], case["k"], **kw)
    try:
        cmp.close("centroids", out[0], ref.centroids)
        labels = np.asarray(out[1])
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.rint(labels)):
            labels = labels.astype(np.int64)
        cmp.equal("labels", labels, ref.labels)
    except Mismatch:
        if _lloyd_margin(case) <= cmp.tie_eps:
            raise Ambiguous("a value lies within ε of a midpoint during the reference's Lloyd run") from None
        raise


def _kmeans_example() -> dict:
    v = np.array([0.0, 0.1, 0.2, 5.0, 5.2, 9.0, 9.0, 9.0])
    return dict(init="linear", k=2, n=8, max_iter=300, decimals=1, seed=0, values=v, init_centroids=None)


def _kmeans_example_few_distinct() -> dict:
    v = np.array([0.1, 0.1, 0.1, 0.7])
    return dict(init="optimal", k=4, n=4, max_iter=300, decimals=1, seed=0, values=v, init_centroids=None)


@special("binned init on 3000 values (more than 4·max(128, 2k)): the DP over equal-count and equal-mass runs, "
         "compared before Lloyd (max_iter 0)")
def _kmeans_example_binned_runs() -> dict:
    rng = case_rng(7)
    v = rng.standard_t(3, 3000)
    return dict(init="binned", k=4, n=3000, max_iter=0, decimals=None, seed=7, values=v, init_centroids=None)


@special("binned init on 3000 values with heavy repeats (equal values across run boundaries), then Lloyd")
def _kmeans_example_binned_repeats() -> dict:
    rng = case_rng(8)
    v = np.round(rng.standard_t(3, 3000), 1)
    return dict(init="binned", k=8, n=3000, max_iter=300, decimals=1, seed=8, values=v, init_centroids=None)


register(Clause(
    id="§5.kmeans", section="§5", title="1-D k-means (Lloyd with named inits, exact DP optimum)",
    checks="centroids (ascending) and labels of reference.kmeans.kmeans_1d: inits 'optimal' (exact DP), "
           "'linear' (linspace over [min, max]), 'quantile' (mid-quantiles, linear interpolation), 'binned' "
           "(the default: SPEC §5.kmeans-binned's DP over weighted runs; 3000-value special cases exercise the runs), "
           "'warm' "
           "(given centroids, sorted on entry); assignment with the midpoint rule; update = mean of members, an "
           "empty cluster keeps its centroid; stop on unchanged labels or max_iter ∈ {0, 1, 3, 300}; "
           "k ≥ #distinct → the distinct values then copies of the largest; k ∈ {1, 2, 4, 8}, repeated values, "
           "1-D and 2-D inputs (labels keep the shape). kmeans++ is seed/RNG-specific and not checked.",
    tolerance="centroids continuous (rtol 1e-9, atol 1e-11), labels exact; a case where the adapter differs and "
              "some value came within 1e-9 (relative to max|v|) of a midpoint during the reference's run is not "
              "compared (SPEC §6) — exact ties are §5.kmeans-ties' job.",
    methods=("kmeans_1d",), strategy=_kmeans_cases, check=_check_kmeans,
    examples=(_kmeans_example, _kmeans_example_few_distinct, _kmeans_example_binned_runs,
              _kmeans_example_binned_repeats),
))

