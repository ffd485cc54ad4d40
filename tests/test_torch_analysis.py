"""SPEC §2/§5: merged-weight analysis of torch models against repspec.reference.analysis, and the report."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from repspec.reference import analysis as ra
from repspec.reference.repvgg import RepVGGBlock as RefRepVGGBlock
from repspec.torch_impl.quantization import analysis as ta
from repspec.torch_impl.quantization import quant as tq
from repspec.torch_impl import create_model
from repspec.torch_impl.modules.interop import module_arrays
from tests.twins import reference_block_for
from repspec.torch_impl.quantization.ptq import ptq_quantize
from tests.strategies import rng_from, seeds

SMALL = dict(num_blocks=(1, 2, 1), widths=(4, 4, 6), strides=(1, 1, 2))


def _same(a: float, b: float, exact: bool = False) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if exact or math.isinf(b):
        return a == b
    return abs(a - b) <= 1e-12 * abs(b) + 1e-300


def _assert_stats_equal(got, want):
    for cat in ("A", "B", "C"):
        g, w = getattr(got, cat), getattr(want, cat)
        assert g.count == w.count
        assert _same(g.max_abs, w.max_abs, exact=True)
        assert _same(g.mean_abs, w.mean_abs) and _same(g.std, w.std), (cat, g, w)
        if w.count and w.std > 1e-6 * w.max_abs:  # kurtosis of (nearly) constant values is round-off (see below)
            assert _same(g.excess_kurtosis, w.excess_kurtosis) or abs(g.excess_kurtosis - w.excess_kurtosis) < 1e-9
    assert _same(got.ratio_A_C, want.ratio_A_C, exact=True)


@given(seed=seeds, o=st.integers(1, 5), per_group=st.integers(1, 4), groups=st.integers(1, 2),
       kind=st.sampled_from(["normal", "outlier", "zeros", "border_zero"]))
@example(seed=0, o=2, per_group=1, groups=1, kind="normal")  # B empty (I/g = 1)
@example(seed=0, o=1, per_group=1, groups=1, kind="zeros")  # ratio nan
@example(seed=0, o=3, per_group=2, groups=1, kind="border_zero")  # ratio inf
def test_category_statistics_match_reference(seed, o, per_group, groups, kind):
    rng = rng_from(seed)
    k = rng.standard_normal((o * groups, per_group, 3, 3))
    if kind == "outlier":
        k[:, :, 1, 1] *= 100.0
    elif kind == "zeros":
        k[:] = 0.0
    elif kind == "border_zero":
        k[:] = 0.0
        k[:, :, 1, 1] = rng.standard_normal((o * groups, per_group))
    got = ta.category_statistics(torch.from_numpy(k), groups)
    _assert_stats_equal(got, ra.category_statistics(k, groups))
    masks = ta.merged_weight_categories(torch.from_numpy(k), groups)
    for m_t, m_r in zip(masks, ra.merged_weight_categories(k, groups)):
        np.testing.assert_array_equal(m_t.numpy(), m_r)


@pytest.mark.parametrize("name", ["repvgg_tiny8", "repvgg_tiny8_oabn", "qarepvgg_tiny8", "repopt_vgg_tiny8"])
def test_layer_statistics_match_reference_on_fused_kernels(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **SMALL).double()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 8, 8, dtype=torch.float64))
    model.eval()
    rows = ta.layer_statistics(model)
    for row, (prefix, block) in zip(rows, model.named_blocks()):
        assert row["layer"] == prefix
        kernel = block.get_equivalent_kernel_bias()[0].detach().numpy()
        want = ra.category_statistics(kernel, block.groups)
        for cat in "ABC":
            w = getattr(want, cat)
            assert row[f"{cat}_count"] == w.count and _same(row[f"{cat}_max_abs"], w.max_abs, exact=True)
            assert _same(row[f"{cat}_mean_abs"], w.mean_abs) and _same(row[f"{cat}_std"], w.std)
        assert _same(row["ratio_A_C"], want.ratio_A_C, exact=True)
        assert row["distinct_values"] == ra.state_size([kernel])
        if isinstance(reference_block_for(block), RefRepVGGBlock) and block.rbr_identity is not None:
            params, buffers = module_arrays(block)
            t0 = ra.identity_ratio(params, buffers, eps=block.bn_eps, threshold=block.oabn_threshold)
            np.testing.assert_allclose(ta.identity_ratio(block).numpy(), t0, rtol=1e-15, atol=0)
            assert _same(row["t0_max_abs"], float(np.abs(t0).max()))
    assert rows[0]["quantized"] is False and all(r["quantized"] for r in rows[1:])


def test_oabn_identity_ratio_is_clipped():
    torch.manual_seed(0)
    model = create_model("repvgg_tiny8_oabn", num_classes=3, oabn_threshold=0.5, **SMALL).double()
    block = model.stage1[0]
    with torch.no_grad():
        block.rbr_identity.running_var.fill_(1e-6)  # a "dead" channel: t0 would be ~1000
    t0 = ta.identity_ratio(block)
    assert float(t0.abs().max()) == 0.5


@pytest.mark.parametrize("value, n", [(0.1, 3), (0.1, 9), (0.7, 7), (1 / 3, 5)])
def test_excess_kurtosis_of_constant_values_is_nan_like_the_reference(value, n):
    """A constant category has κ = nan (SPEC §2.categories) although its float mean may be an ulp off."""
    w = torch.full((n,), value, dtype=torch.float64)
    assert math.isnan(ta.excess_kurtosis(w)) and math.isnan(ra.excess_kurtosis(w.numpy()))


@given(seed=seeds)
def test_state_size_matches_reference(seed):
    rng = rng_from(seed)
    arrays = [np.round(rng.standard_normal((3, 4)), 1), np.array([0.0, -0.0, 1.0]), rng.integers(-3, 3, 7) / 2.0]
    assert tq.state_size([torch.from_numpy(a) for a in arrays]) == ra.state_size(arrays)
    assert tq.state_size({"a": torch.from_numpy(arrays[0])}) == ra.state_size({"a": arrays[0]})


def test_state_size_of_quantized_model_is_small():
    torch.manual_seed(0)
    model = create_model("repvgg_tiny8", num_classes=3, **SMALL).eval()
    data = [torch.randn(2, 3, 8, 8)]
    q = ptq_quantize(model, data, weight_bits=3, act_bits=8, num_batches=1, progress=False)
    assert q.state_size() <= 7 * len(q.quantized_layers())  # at most 2^3 − 1 levels per layer
    fp = tq.state_size({n: k for n, (k, _) in ta.fused_kernels(model).items() if n != "stage0"})
    assert fp > q.state_size()


def test_write_report(tmp_path):
    torch.manual_seed(0)
    model = create_model("repvgg_tiny8", num_classes=3, **SMALL)
    paths = ta.write_report(model, tmp_path / "report")
    names = [p for p, _ in model.named_blocks()]
    assert {"csv", "markdown", "json", "hist_all"} | {f"hist_{n}" for n in names} == set(paths)
    for key, p in paths.items():
        assert p.is_file() and p.stat().st_size > 0
        if key.startswith("hist"):
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert p.stat().st_size > 5000  # a real plot, not an empty canvas
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows] == names
    report = json.loads(paths["json"].read_text())
    assert report["state_size_layers"] == names[1:]
    assert set(report["t0"]) == {n for n, b in model.named_blocks() if b.rbr_identity is not None}
    assert "| layer |" in paths["markdown"].read_text()


def test_analysis_bad_input(tmp_path):
    with pytest.raises(TypeError, match="kernel must be a torch.Tensor"):
        ta.category_statistics(np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="kernel must have shape"):
        ta.category_statistics(torch.zeros(2, 2, 1, 1))
    with pytest.raises(ValueError, match="groups=2 must divide"):
        ta.category_statistics(torch.zeros(3, 1, 3, 3), 2)
    with pytest.raises(ValueError, match="finite"):
        ta.category_statistics(torch.full((1, 1, 3, 3), float("nan")))
    with pytest.raises(ValueError, match="finite"):
        tq.state_size([torch.tensor([1.0, float("inf")])])
    with pytest.raises(ValueError, match="at least one"):
        tq.state_size([])
    with pytest.raises(TypeError, match="model must be a VGGNet"):
        ta.write_report(torch.nn.Linear(2, 2), tmp_path)
    with pytest.raises(ValueError, match="bins"):
        ta.write_report(create_model("repvgg_tiny8", num_classes=2, **SMALL), tmp_path, bins=0)
