"""Every Hypothesis strategy the suite uses, in one module (shrinkable, composable).

Arrays are built from integer seeds plus explicit shapes so that shrinking goes
towards small shapes and a fixed seed, and a failure reproduces from the printed
example alone.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

# ------------------------------------------------------------------ primitives

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def rng_from(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


channels = st.integers(min_value=1, max_value=6)
spatial = st.integers(min_value=3, max_value=7)
batch = st.integers(min_value=2, max_value=4)
strides = st.sampled_from([1, 2])


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


@st.composite
def quant_arrays(draw, max_rows: int = 4, max_cols: int = 12):
    """A ``(rows, cols)`` float64 array: normal, heavy-tailed (t, df=3), a coarse grid
    (many repeats and exact .5 ties), or all zeros, times a magnitude 10^[-3, 3]."""
    rng = rng_from(draw(seeds))
    shape = (draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols)))
    kind = draw(st.sampled_from(["normal", "heavy", "grid", "zeros"]))
    mag = 10.0 ** draw(st.integers(-3, 3))
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
def cluster_values(draw, max_size: int = 60):
    """1-D values for k-means: heavy-tailed, rounded to 0..2 decimals (so duplicates occur)."""
    rng = rng_from(draw(seeds))
    n = draw(st.integers(1, max_size))
    return np.round(rng.standard_t(3, n), draw(st.integers(0, 2)))


# ------------------------------------- SPEC §3 RepOpt in torch (test_torch_equivalence_repopt.py, test_torch_ddp.py)


@st.composite
def vggnet_layouts(draw, max_blocks: int = 4, max_channels: int = 8):
    """A small ``VGGNet`` layout with 1..max_blocks blocks (stage0 plus 0–2 stages) and its data shape.

    Returns ``dict(num_blocks, widths, strides, in_channels, hw, batch, num_classes)``
    for ``create_model(..., num_blocks=…, widths=…, strides=…, in_channels=…)``:
    widths 1..max_channels, first-block strides 1/2, inputs 4–10 px, batch 2–6.
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
    return dict(num_blocks=tuple(num_blocks), widths=tuple(widths), strides=tuple(stage_strides),
                in_channels=in_channels, hw=draw(st.integers(4, 10)), batch=draw(st.integers(2, 6)),
                num_classes=draw(st.integers(2, 4)))


# ------------------------------------- SPEC §5 quantization in torch (test_torch_quant.py, test_torch_ptq.py)


@st.composite
def act_batch_sequences(draw, max_batches: int = 4, max_size: int = 40):
    """1..max_batches activation batches (1-D float64 arrays, sizes 1..max_size) of one kind:
    normal, heavy-tailed (t, df=3), non-negative (post-ReLU, with exact zeros), a coarse grid
    (repeats and exact .5 ties) or constant; times a magnitude 10^[-3, 3]."""
    rng = rng_from(draw(seeds))
    kind = draw(st.sampled_from(["normal", "heavy", "relu", "grid", "constant"]))
    mag = 10.0 ** draw(st.integers(-3, 3))
    out = []
    for _ in range(draw(st.integers(1, max_batches))):
        n = draw(st.integers(1, max_size))
        if kind == "normal":
            a = rng.standard_normal(n)
        elif kind == "heavy":
            a = rng.standard_t(3, n)
        elif kind == "relu":
            a = np.maximum(rng.standard_normal(n), 0.0)
        elif kind == "grid":
            a = rng.integers(-8, 9, n) / 2.0
        else:
            a = np.full(n, float(rng.integers(-2, 3)))
        out.append(a * mag)
    return out


# ------------------------------------- SPEC §5 k-means and QAT in torch (test_torch_kmeans.py, test_torch_qat.py)


@st.composite
def continuous_values(draw, max_size: int = 80):
    """1-D float64 values with no ties by construction (normal or heavy-tailed t, df=3, times a
    magnitude 10^[-3, 3]): for comparisons that exclude values within ε of a k-means midpoint."""
    rng = rng_from(draw(seeds))
    n = draw(st.integers(1, max_size))
    a = rng.standard_normal(n) if draw(st.booleans()) else rng.standard_t(3, n)
    return a * 10.0 ** draw(st.integers(-3, 3))


@st.composite
def qat_layouts(draw, max_blocks: int = 3, max_channels: int = 6):
    """A small ``VGGNet`` layout for QAT: 1..max_blocks blocks (stage0 + one or two stages),
    widths 1..max_channels (``in == out`` half the time: identity branches), strides 1/2,
    inputs 4–8 px, batch 2–4, 2–3 classes. Same keys as :func:`vggnet_layouts`."""
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
    return dict(num_blocks=tuple(num_blocks), widths=tuple(widths), strides=tuple(stage_strides),
                in_channels=in_channels, hw=draw(st.integers(4, 8)), batch=draw(st.integers(2, 4)),
                num_classes=draw(st.integers(2, 3)))
