"""Every Hypothesis strategy the suite uses, in one module (shrinkable, composable).

Data arrays (quantization, calibration and k-means values) are drawn element by
element through Hypothesis (``hypothesis.extra.numpy.arrays``), so a failure shrinks
in its *values* as well as its shape, towards zeros, small integers and short arrays,
and reproduces from the printed example alone. Model inputs and initial weights of
the block/network tests still come from a drawn ``seed`` (their values are not what
those properties are about). Batch size 1 and non-square inputs (``hw = (h, w)``) are
drawn wherever training-mode batch norm still has ``N·H·W ≥ 2`` values per channel.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# ------------------------------------------------------------------ primitives

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def rng_from(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


channels = st.integers(min_value=1, max_value=6)
spatial = st.integers(min_value=3, max_value=7)
batch = st.integers(min_value=1, max_value=4)
strides = st.sampled_from([1, 2])


def float_elements(bound: float = 4.0, *, tiny: bool = True) -> st.SearchStrategy[float]:
    """Finite floats in ``[−bound, bound]`` (no subnormals). ``tiny=False`` maps magnitudes
    below ``2^-20`` to 0, for tests whose float32 side would flush them (zeros stay common)."""
    floats = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    return floats if tiny else floats.map(lambda v: v if abs(v) >= 2.0**-20 else 0.0)


@st.composite
def image_sizes(draw, lo: int = 1, hi: int = 3, *, batch_size: int | None = None, min_values: int = 1):
    """``(h, w)``, square or not, with ``batch_size·h·w ≥ min_values`` when ``batch_size`` is given."""
    h, w = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
    if batch_size is not None and batch_size * h * w < min_values:
        w = max(w, -(-min_values // (batch_size * h)))
    return h, w


def _out_size(n: int, strides_: tuple[int, ...]) -> int:
    """Spatial size after 3x3 convs with padding 1 and these strides: ``ceil(n / s)`` each."""
    for s in strides_:
        n = -(-n // s)
    return n


@st.composite
def conv_configs(draw, max_groups: int = 3):
    """(N, C, H, W, O, groups, kh, kw, stride, padding) for a valid conv2d."""
    groups = draw(st.integers(1, max_groups))
    c = groups * draw(st.integers(1, 3))
    o = groups * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 3]))
    padding = draw(st.integers(0, 1))
    h = draw(st.integers(max(k - 2 * padding, 1), 7))
    w = draw(st.integers(max(k - 2 * padding, 1), 7))
    return dict(n=draw(batch), c=c, h=h, w=w, o=o, groups=groups, k=k, stride=draw(strides), padding=padding)


@st.composite
def block_shapes(draw):
    """(in_channels, out_channels, stride) for one block; identity possible iff in == out and stride 1."""
    cin = draw(channels)
    same = draw(st.booleans())
    cout = cin if same else draw(channels)
    stride = draw(strides)
    return cin, cout, stride


@st.composite
def sgd_hparams(draw):
    """lr, momentum, dampening, nesterov, weight_decay (torch.optim.SGD's domain)."""
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
    nesterov = draw(st.booleans()) if momentum > 0 else False
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1, 0.5]))
    return dict(
        lr=draw(st.sampled_from([0.01, 0.05, 0.1])),
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=draw(st.sampled_from([0.0, 1e-4, 5e-2])),
    )


@st.composite
def grouped_block_shapes(draw, max_per_group: int = 2, max_groups: int = 2):
    """(in_channels, out_channels, stride, groups), small enough for finite differences.

    Channels are multiples of ``groups``; ``in == out`` (so an identity branch when
    stride is 1) is drawn half the time.
    """
    groups = draw(st.integers(1, max_groups))
    cin = groups * draw(st.integers(1, max_per_group))
    same = draw(st.booleans())
    cout = cin if same else groups * draw(st.integers(1, max_per_group))
    return cin, cout, draw(strides), groups


# ------------------------------------------------ SPEC §3 RepOpt (test_ref_repopt.py, test_ref_optim.py)


@st.composite
def block_chains(draw, max_blocks: int = 3, max_channels: int = 4):
    """``[(in, out, stride), …]`` for 1..max_blocks chained blocks (each ``in`` is the previous ``out``).

    About half the blocks keep ``in == out``, so with stride 1 an identity branch exists.
    """
    n = draw(st.integers(1, max_blocks))
    cin = draw(st.integers(1, max_channels))
    chain = []
    for _ in range(n):
        cout = cin if draw(st.booleans()) else draw(st.integers(1, max_channels))
        chain.append((cin, cout, draw(strides)))
        cin = cout
    return chain


@st.composite
def adamw_hparams(draw):
    """lr, betas, eps, weight_decay (torch.optim.AdamW's domain, amsgrad off)."""
    return dict(
        lr=draw(st.sampled_from([1e-3, 1e-2, 0.1])),
        betas=draw(st.sampled_from([(0.9, 0.999), (0.8, 0.99), (0.0, 0.5)])),
        eps=draw(st.sampled_from([1e-8, 1e-6, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 1e-2, 0.1])),
    )


# ------------------------------------- SPEC §5 quantization (test_ref_quant/calibrate/kmeans.py)

quant_bits = st.integers(min_value=1, max_value=16)
weight_bits = st.integers(min_value=2, max_value=16)  # symmetric narrow range needs b >= 2


def _data_array(draw, shape, kind: str, *, tiny: bool = True) -> np.ndarray:
    """One array of a named kind, every element drawn by Hypothesis: ``real`` (uniform-ish
    floats), ``heavy`` (floats times per-element factors 1/10/100: outliers), ``relu`` (non-negative
    with exact zeros), ``grid`` (halves of small integers: repeats and exact .5 ties), ``zeros``."""
    if kind == "grid":
        return draw(hnp.arrays(np.int64, shape, elements=st.integers(-8, 8))) / 2.0
    if kind == "zeros":
        return np.zeros(shape)
    a = draw(hnp.arrays(np.float64, shape, elements=float_elements(tiny=tiny)))
    if kind == "heavy":
        a = a * draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([1.0, 1.0, 1.0, 10.0, 100.0])))
    return np.maximum(a, 0.0) if kind == "relu" else a


@st.composite
def quant_arrays(draw, max_rows: int = 4, max_cols: int = 12, *, tiny: bool = False):
    """A ``(rows, cols)`` float64 array of kind real, heavy, grid or zeros (:func:`_data_array`),
    times a magnitude 10^[-3, 3]. ``rows = 1`` (a batch of one) is drawn too."""
    shape = (draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols)))
    kind = draw(st.sampled_from(["real", "heavy", "grid", "zeros"]))
    return _data_array(draw, shape, kind, tiny=tiny) * 10.0 ** draw(st.integers(-3, 3))


@st.composite
def cluster_values(draw, max_size: int = 60):
    """1-D values for k-means: real or heavy-tailed, rounded to 0..2 decimals (so duplicates occur)."""
    n = draw(st.integers(1, max_size))
    a = _data_array(draw, n, draw(st.sampled_from(["real", "heavy"])))
    return np.round(a, draw(st.integers(0, 2)))


def _input_shape(draw, stage_strides, lo: int, hi: int, max_batch: int):
    """``((h, w), batch)``: h, w in lo..hi independently (non-square inputs), batch 1..max_batch,
    raised to 2 only when batch 1 would leave the last stage's batch norm with one value per channel."""
    h, w = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
    batch = draw(st.integers(1, max_batch))
    if batch * _out_size(h, stage_strides) * _out_size(w, stage_strides) < 2:
        batch = 2
    return (h, w), batch


# ------------------------------------- SPEC §3 RepOpt in torch (test_torch_equivalence_repopt.py, test_torch_ddp.py)


@st.composite
def vggnet_layouts(draw, max_blocks: int = 4, max_channels: int = 8):
    """A small ``VGGNet`` layout with 1..max_blocks blocks (stage0 plus 0–2 stages) and its data shape.

    Returns ``dict(num_blocks, widths, strides, in_channels, hw, batch, num_classes)``
    for ``create_model(..., num_blocks=…, widths=…, strides=…, in_channels=…)``:
    widths 1..max_channels, first-block strides 1/2, inputs ``hw = (h, w)`` with h, w in 4..10
    (non-square too), batch 1–6 (see :func:`_input_shape`).
    ``stage0`` keeps ``in == out`` half the time, so identity blocks appear early too.
    """
    n_total = draw(st.integers(1, max_blocks))
    in_channels = draw(st.integers(1, max_channels))
    w0 = in_channels if draw(st.booleans()) else draw(st.integers(1, max_channels))
    num_blocks, widths, stage_strides = [1], [w0], [draw(strides)]
    left = n_total - 1
    while left > 0 and len(num_blocks) < 3:
        n = draw(st.integers(1, left))
        num_blocks.append(n)
        widths.append(widths[-1] if draw(st.booleans()) else draw(st.integers(1, max_channels)))
        stage_strides.append(draw(strides))
        left -= n
    hw, batch = _input_shape(draw, stage_strides, 4, 10, 6)
    return dict(num_blocks=tuple(num_blocks), widths=tuple(widths), strides=tuple(stage_strides),
                in_channels=in_channels, hw=hw, batch=batch,
                num_classes=draw(st.integers(2, 4)))


# ------------------------------------- SPEC §5 quantization in torch (test_torch_quant.py, test_torch_ptq.py)


@st.composite
def act_batch_sequences(draw, max_batches: int = 4, max_size: int = 40):
    """1..max_batches activation batches (1-D float64 arrays, sizes 1..max_size) of one kind:
    real, heavy-tailed, non-negative (post-ReLU, with exact zeros), a coarse grid (repeats and
    exact .5 ties) or constant; times a magnitude 10^[-3, 3]. Values drawn by Hypothesis."""
    kind = draw(st.sampled_from(["real", "heavy", "relu", "grid", "constant"]))
    mag = 10.0 ** draw(st.integers(-3, 3))
    out = []
    for _ in range(draw(st.integers(1, max_batches))):
        n = draw(st.integers(1, max_size))
        if kind == "constant":
            a = np.full(n, float(draw(st.integers(-2, 2))))
        else:
            a = _data_array(draw, n, kind, tiny=False)
        out.append(a * mag)
    return out


# ------------------------------------- SPEC §5 k-means and QAT in torch (test_torch_kmeans.py, test_torch_qat.py)


@st.composite
def continuous_values(draw, max_size: int = 80):
    """1-D float64 values, distinct, real or heavy-tailed, times a magnitude 10^[-3, 3] (drawn by
    Hypothesis): for comparisons that exclude values within ε of a k-means midpoint."""
    n = draw(st.integers(1, max_size))
    a = draw(hnp.arrays(np.float64, n, elements=float_elements(tiny=False), unique=True))
    if draw(st.booleans()):
        a = a * draw(hnp.arrays(np.float64, n, elements=st.sampled_from([1.0, 1.0, 1.0, 10.0, 100.0])))
    return a * 10.0 ** draw(st.integers(-3, 3))


@st.composite
def qat_layouts(draw, max_blocks: int = 3, max_channels: int = 6):
    """A small ``VGGNet`` layout for QAT: 1..max_blocks blocks (stage0 + one or two stages),
    widths 1..max_channels (``in == out`` half the time: identity branches), strides 1/2,
    inputs ``hw = (h, w)`` in 4..8 px, batch 1–4, 2–3 classes. Same keys as :func:`vggnet_layouts`."""
    n_total = draw(st.integers(1, max_blocks))
    in_channels = draw(st.integers(1, max_channels))
    w0 = in_channels if draw(st.booleans()) else draw(st.integers(1, max_channels))
    num_blocks, widths, stage_strides = [1], [w0], [draw(strides)]
    left = n_total - 1
    while left > 0:
        n = draw(st.integers(1, left))
        num_blocks.append(n)
        widths.append(widths[-1] if draw(st.booleans()) else draw(st.integers(1, max_channels)))
        stage_strides.append(draw(strides))
        left -= n
    hw, batch = _input_shape(draw, stage_strides, 4, 8, 4)
    return dict(num_blocks=tuple(num_blocks), widths=tuple(widths), strides=tuple(stage_strides),
                in_channels=in_channels, hw=hw, batch=batch,
                num_classes=draw(st.integers(2, 3)))


@st.composite
def vgg_skeletons(draw, max_stages: int = 4, max_blocks: int = 4, max_width: int = 4):
    """A VGG skeleton (SPEC §3.architectures) as ``dict(num_blocks, widths, strides, in_channels)``:
    stage0 one block, then up to ``max_stages − 1`` stages of 1..max_blocks blocks; widths equal to the
    previous one half the time (identity branches), strides 1/2."""
    in_channels = draw(st.integers(1, max_width))
    num_blocks, widths, stage_strides = [1], [], []
    for k in range(draw(st.integers(1, max_stages))):
        if k:
            num_blocks.append(draw(st.integers(1, max_blocks)))
        prev = widths[-1] if widths else in_channels
        widths.append(prev if draw(st.booleans()) else draw(st.integers(1, max_width)))
        stage_strides.append(draw(strides))
    return dict(num_blocks=tuple(num_blocks), widths=tuple(widths), strides=tuple(stage_strides),
                in_channels=in_channels)
