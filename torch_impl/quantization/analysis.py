"""SPEC §2 and §5: where the outliers of the merged kernels live, and the state size — for torch models.

For every block of a RepVGG-family network (RepVGG, OABN-RepVGG, QARepVGG, CSLA,
HyperSearch, RepOpt target, deployed or quantized) the **fused** kernel
``get_equivalent_kernel_bias()`` (eval-mode BN) is split into the seed's categories
(SPEC §2, :mod:`repspec.reference.analysis`):

- **A** — center & diagonal ``i == o mod (I/g)`` (``t3·K3 + t1·K1 + t0`` for RepVGG),
- **B** — center & off-diagonal,
- **C** — the 8 border taps,

and each category gets count, max|w|, mean|w|, std (ddof 0) and excess kurtosis
(``m4/m2² − 3``, ``nan`` for constant values) plus ``max|A| / max|C|`` — the
definitions of :func:`repspec.reference.analysis.category_statistics` (float64; counts
and max exactly, means to summation order). :func:`identity_ratio` gives the identity
branch's per-channel factor ``t0``; :func:`state_size` the SPEC §5 state size;
:func:`write_report` writes CSV, Markdown and JSON tables and PNG histograms.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..modules.blocks import CSLABlock, HyperSearchBlock, QARepVGGBlock, RepVGGBlock
from ..modules.models import VGGNet
from ..modules.oabn import bn_factor
from .ptq import QuantizedModel
from .quant import state_size

__all__ = [
    "CategoryStatistics",
    "CategoryStats",
    "category_statistics",
    "excess_kurtosis",
    "fused_kernels",
    "identity_ratio",
    "layer_statistics",
    "merged_weight_categories",
    "state_size",
    "write_report",
]


class CategoryStats(NamedTuple):
    """Statistics of one category (``nan`` where undefined, e.g. ``count == 0``) — SPEC §2."""

    count: int
    max_abs: float
    mean_abs: float
    std: float
    excess_kurtosis: float


class CategoryStatistics(NamedTuple):
    """A, B, C statistics and ``ratio_A_C = max|A| / max|C|`` (SPEC §2)."""

    A: CategoryStats
    B: CategoryStats
    C: CategoryStats
    ratio_A_C: float


def _check_kernel(kernel, groups) -> tuple[Tensor, int]:
    if not isinstance(kernel, Tensor):
        raise TypeError(f"kernel must be a torch.Tensor, got {type(kernel).__name__}")
    if not kernel.is_floating_point():
        raise TypeError(f"kernel must be floating point, got dtype {kernel.dtype}")
    if kernel.ndim != 4 or tuple(kernel.shape[2:]) != (3, 3) or kernel.numel() == 0:
        raise ValueError(f"kernel must have shape (O, I/groups, 3, 3), got {tuple(kernel.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an integer >= 1, got {groups!r}")
    if kernel.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the kernel's output channels ({kernel.shape[0]})")
    if not bool(torch.isfinite(kernel).all()):
        raise ValueError("kernel must contain only finite values (found NaN or Inf)")
    return kernel.detach(), groups


def merged_weight_categories(kernel: Tensor, groups: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """SPEC §2: boolean masks ``(A, B, C)`` of ``kernel (O, I/g, 3, 3)``; they partition it.

    A: center and ``i == o mod (I/g)`` (the support of ``I_c``), B: the rest of the
    center, C: the 8 border taps (= ``repspec.reference.analysis.merged_weight_categories``).
    """
    kernel, groups = _check_kernel(kernel, groups)
    o, per_group = kernel.shape[:2]
    center = torch.zeros(kernel.shape, dtype=torch.bool, device=kernel.device)
    center[:, :, 1, 1] = True
    diag = torch.zeros_like(center)
    ch = torch.arange(o, device=kernel.device)
    diag[ch, ch % per_group, 1, 1] = True
    return diag, center & ~diag, ~center


def excess_kurtosis(values: Tensor) -> float:
    """SPEC §2 analysis: Fisher excess kurtosis ``m4/m2² − 3`` (population moments, float64).

    ``nan`` when ``m2 == 0``, i.e. for constant values (= :func:`repspec.reference.analysis.excess_kurtosis`).
    Constancy is read off the values (``min == max``): the mean of ``n`` equal values can be
    off by an ulp, and the identical tiny ``w − mean`` would give ``m4/m2² = 1`` (κ = −2).
    """
    if not isinstance(values, Tensor):
        raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    w = values.detach().reshape(-1).to(torch.float64)
    if w.numel() == 0:
        raise ValueError("values must not be empty")
    d = w - w.mean()
    m2 = torch.mean(d * d)
    if bool(w.min() == w.max()) or float(m2) == 0.0:  # m2 == 0 also when the differences underflow
        return float("nan")
    return float(torch.mean(d**4) / (m2 * m2) - 3.0)


def _stats(values: Tensor) -> CategoryStats:
    if values.numel() == 0:
        nan = float("nan")
        return CategoryStats(0, nan, nan, nan, nan)
    v = values.to(torch.float64)
    a = v.abs()
    return CategoryStats(int(v.numel()), float(a.max()), float(a.mean()), float(v.std(correction=0)),
                         excess_kurtosis(v))


def category_statistics(kernel: Tensor, groups: int = 1) -> CategoryStatistics:
    """SPEC §2: per category A, B, C: count, max|w|, mean|w|, std, excess kurtosis; and ``max|A|/max|C|``.

    Same definitions as :func:`repspec.reference.analysis.category_statistics`: an empty
    category has count 0 and ``nan`` statistics; the ratio is ``inf`` when
    ``max|C| = 0 < max|A|`` and ``nan`` when both are 0.
    """
    kernel, groups = _check_kernel(kernel, groups)
    per_category = [_stats(kernel[mask]) for mask in merged_weight_categories(kernel, groups)]
    top_a, top_c = per_category[0].max_abs, per_category[2].max_abs
    ratio = top_a / top_c if top_c > 0 else (math.inf if top_a > 0 else math.nan)
    return CategoryStatistics(*per_category, float(ratio))


@torch.no_grad()
def identity_ratio(block: nn.Module) -> Tensor | None:
    """SPEC §2/§4: the identity branch's per-channel factor in the fused kernel, or ``None``.

    - RepVGG (and OABN) block: ``t0 = γ0/sqrt(σ0² + eps)``, OABN-clipped
      (= :func:`repspec.reference.analysis.identity_ratio`);
    - QARepVGG: the identity has no BN; its coefficient after folding the post-BN is ``tpost``;
    - CSLA / HyperSearch: ``d·t`` (identity scale times the BN factor);
    - blocks without an identity branch, deployed or quantized blocks, RepOpt targets: ``None``.
    """
    if isinstance(block, RepVGGBlock):
        if block.deployed or block.rbr_identity is None:
            return None
        return bn_factor(block.rbr_identity).detach().clone()
    if isinstance(block, QARepVGGBlock):
        if block.deployed or block.rbr_identity is None:
            return None
        return bn_factor(block.bn).detach().clone()
    if isinstance(block, (CSLABlock, HyperSearchBlock)):
        if block.deployed or not block.has_identity:
            return None
        return (block.scale_identity.weight * bn_factor(block.bn)).detach().clone()
    return None


def _as_vggnet(model) -> VGGNet:
    if isinstance(model, QuantizedModel):
        return model.net
    if isinstance(model, VGGNet):
        return model
    raise TypeError(f"model must be a VGGNet or a QuantizedModel, got {type(model).__name__}")


@torch.no_grad()
def fused_kernels(model) -> dict[str, tuple[Tensor, int]]:
    """SPEC §2: ``{block name: (fused kernel, groups)}`` in forward order (eval-mode fusion, detached copies)."""
    net = _as_vggnet(model)
    out = {}
    for name, block in net.named_blocks():
        kernel, _ = block.get_equivalent_kernel_bias()
        out[name] = (kernel.detach().clone(), getattr(block, "groups", 1))
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


@torch.no_grad()
def layer_statistics(model, *, keep_first_fp32: bool = True) -> list[dict]:
    """SPEC §2/§5: one row per block (forward order) of the fused-kernel statistics.

    Keys: ``layer``, ``block``, ``shape``, ``groups``, ``quantized`` (a layer PTQ
    quantizes: every block but the first when ``keep_first_fp32``), ``{A,B,C}_{count,
    max_abs,mean_abs,std,excess_kurtosis}``, ``ratio_A_C``, ``t0_max_abs``,
    ``t0_mean``, ``t0_min`` (``nan`` without identity factor), ``distinct_values``.
    """
    net = _as_vggnet(model)
    rows = []
    for i, (name, block) in enumerate(net.named_blocks()):
        kernel, _ = block.get_equivalent_kernel_bias()
        kernel = kernel.detach().to("cpu", torch.float64)
        groups = getattr(block, "groups", 1)
        st = category_statistics(kernel, groups)
        row = dict(layer=name, block=type(block).__name__, shape="x".join(str(s) for s in kernel.shape),
                   groups=groups, quantized=not (keep_first_fp32 and i == 0))
        for cat in ("A", "B", "C"):
            for field, value in getattr(st, cat)._asdict().items():
                row[f"{cat}_{field}"] = value
        row["ratio_A_C"] = st.ratio_A_C
        t0 = identity_ratio(block)
        if t0 is None:
            row.update(t0_max_abs=float("nan"), t0_mean=float("nan"), t0_min=float("nan"))
        else:
            t0 = t0.to("cpu", torch.float64)
            row.update(t0_max_abs=float(t0.abs().max()), t0_mean=float(t0.mean()), t0_min=float(t0.min()))
        row["distinct_values"] = state_size([kernel])
        rows.append(row)
    return rows


def _json_safe(v):
    """``report.json``'s value for ``v``: JSON has no literal for NaN or ±Inf, so an undefined
    statistic (NaN: an empty category, no identity factor) or an unbounded ratio (Inf) is
    ``null``, repspec's rule for every JSON output. The CSV and Markdown tables write ``nan``
    and ``inf`` instead, so that a spreadsheet still reads the column as numbers."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _histogram_png(path: Path, groups_of_values: dict[str, Tensor], title: str, bins: int) -> None:
    """Two panels of A/B/C histograms with log counts: the values on a linear axis (shared
    bins), and ``|w|`` on log-spaced bins (so a bulk near 0 and outliers are both visible)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arrays = {k: v.detach().to("cpu", torch.float64).numpy().reshape(-1) for k, v in groups_of_values.items()}
    nonempty = [a for a in arrays.values() if a.size]
    allv = np.concatenate(nonempty) if nonempty else np.zeros(1)
    lo, hi = float(allv.min()), float(allv.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    mags = np.abs(allv[allv != 0])
    if mags.size:
        mlo, mhi = float(mags.min()), float(mags.max())
        if mlo == mhi:
            mlo, mhi = mlo / 2, mhi * 2
        log_edges = np.geomspace(mlo, mhi, bins + 1)
    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax, axl = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colors = {"A": "tab:red", "B": "tab:orange", "C": "tab:blue"}
    for cat in ("C", "B", "A"):
        a = arrays.get(cat)
        if a is None or a.size == 0:
            continue
        label = f"{cat}: n={a.size}, max|w|={np.abs(a).max():.3g}"
        ax.hist(a, bins=edges, histtype="step", linewidth=1.6, color=colors[cat], label=label)
        ax.hist(a, bins=edges, histtype="stepfilled", alpha=0.15, color=colors[cat])
        nz = np.abs(a[a != 0])
        if mags.size and nz.size:
            zeros = a.size - nz.size
            axl.hist(nz, bins=log_edges, histtype="step", linewidth=1.6, color=colors[cat],
                     label=f"{cat}" + (f" ({zeros} zeros not shown)" if zeros else ""))
    ax.set_yscale("log")
    ax.set_xlabel("merged (fused) weight value")
    ax.set_ylabel("count (log)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, alpha=0.3)
    axl.set_xscale("log")
    axl.set_yscale("log")
    axl.set_xlabel("|merged weight| (log bins)")
    axl.grid(True, alpha=0.3)
    if mags.size:
        axl.legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")


@torch.no_grad()
def write_report(model, out_dir, *, per_layer: bool = True, aggregate: bool = True, bins: int = 80,
                 keep_first_fp32: bool = True) -> dict[str, Path]:
    """SPEC §2/§5: write the merged-weight analysis of ``model`` to ``out_dir`` (created if needed).

    Files: ``layer_stats.csv``, ``layer_stats.md`` (the rows of :func:`layer_statistics`),
    ``report.json`` (rows, per-channel ``t0`` of every block that has one, and
    ``state_size`` over the quantized layers; NaN and Inf are ``null`` there, ``nan``/``inf``
    in the CSV and Markdown), ``hist_<layer>.png`` per block
    (``per_layer``) and ``hist_all.png`` (``aggregate``: the quantized layers' A, B, C
    values pooled) — overlaid A/B/C histograms with log counts. Returns
    ``{file kind: path}`` (``hist_<layer>`` keys for the per-layer PNGs).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    net = _as_vggnet(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = layer_statistics(model, keep_first_fp32=keep_first_fp32)
    paths: dict[str, Path] = {}

    keys = list(rows[0])
    p = out / "layer_stats.csv"
    with open(p, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(v) for k, v in r.items()})
    paths["csv"] = p

    md_keys = ["layer", "block", "shape", "quantized", "A_count", "A_max_abs", "B_max_abs", "C_max_abs",
               "ratio_A_C", "A_excess_kurtosis", "C_excess_kurtosis", "t0_max_abs", "distinct_values"]
    lines = ["| " + " | ".join(md_keys) + " |", "|" + "---|" * len(md_keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in md_keys) + " |" for r in rows]
    p = out / "layer_stats.md"
    p.write_text("# Merged-weight statistics (SPEC §2 categories A/B/C)\n\n" + "\n".join(lines) + "\n")
    paths["markdown"] = p

    blocks = dict(net.named_blocks())
    kernels = fused_kernels(net)
    quantized = [r["layer"] for r in rows if r["quantized"]]
    t0 = {}
    for name, block in blocks.items():
        v = identity_ratio(block)
        if v is not None:
            t0[name] = [_json_safe(float(x)) for x in v.to("cpu", torch.float64)]
    report = dict(rows=[{k: _json_safe(v) for k, v in r.items()} for r in rows], t0=t0,
                  state_size=state_size({n: kernels[n][0] for n in quantized}) if quantized else 0,
                  state_size_layers=quantized)
    p = out / "report.json"
    p.write_text(json.dumps(report, indent=1, allow_nan=False))
    paths["json"] = p

    def split(name):
        kernel, groups = kernels[name]
        masks = merged_weight_categories(kernel, groups)
        return {cat: kernel[m] for cat, m in zip("ABC", masks)}

    if per_layer:
        for r in rows:
            name = r["layer"]
            p = out / f"hist_{name}.png"
            title = (f"{name} ({r['block']}, {r['shape']}): max|A|/max|C| = {_fmt(r['ratio_A_C'])}")
            _histogram_png(p, split(name), title, bins)
            paths[f"hist_{name}"] = p
    if aggregate and quantized:
        pooled = {cat: torch.cat([split(n)[cat].reshape(-1) for n in quantized]) for cat in "ABC"}
        p = out / "hist_all.png"
        _histogram_png(p, pooled, f"all quantized layers ({len(quantized)}): merged weights by category", bins)
        paths["hist_all"] = p
    return paths
