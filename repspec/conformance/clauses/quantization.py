"""Conformance clauses of SPEC §5 uniform quantization, straight-through estimators and k-means."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from repspec.reference import kmeans as ref_kmeans
from repspec.reference import quant as ref_quant

from .base import INF, Ambiguous, Checker, Clause, Mismatch, call, case_rng, register, seeds

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
    init = draw(st.sampled_from(["optimal", "linear", "quantile", "warm"]))
    k = draw(st.sampled_from([2, 1, 4, 8]))
    n = draw(st.integers(1, 40))
    max_iter = draw(st.sampled_from([300, 0, 1, 3]))
    layout = draw(st.sampled_from(["1d", "2d"]))
    decimals = None if init == "optimal" else draw(st.sampled_from([None, 1, 0, 2]))
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


register(Clause(
    id="§5.kmeans", section="§5", title="1-D k-means (Lloyd with named inits, exact DP optimum)",
    checks="centroids (ascending) and labels of reference.kmeans.kmeans_1d: inits 'optimal' (exact DP), "
           "'linear' (linspace over [min, max]), 'quantile' (mid-quantiles, linear interpolation), 'warm' "
           "(given centroids, sorted on entry); assignment with the midpoint rule; update = mean of members, an "
           "empty cluster keeps its centroid; stop on unchanged labels or max_iter ∈ {0, 1, 3, 300}; "
           "k ≥ #distinct → the distinct values then copies of the largest; k ∈ {1, 2, 4, 8}, repeated values, "
           "1-D and 2-D inputs (labels keep the shape). kmeans++ is seed/RNG-specific and not checked.",
    tolerance="centroids continuous (rtol 1e-9, atol 1e-11), labels exact; a case where the adapter differs and "
              "some value came within 1e-9 (relative to max|v|) of a midpoint during the reference's run is not "
              "compared (SPEC §6) — exact ties are §5.kmeans-ties' job.",
    methods=("kmeans_1d",), strategy=_kmeans_cases, check=_check_kmeans,
    examples=(_kmeans_example, _kmeans_example_few_distinct),
))
