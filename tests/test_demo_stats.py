"""repspec.experiments.stats and the demo's claims logic, on synthetic data (no training).

Tolerances: the statistics are float64 arithmetic on a handful of values; comparisons
with SciPy or closed forms use rtol 1e-12. Coverage is checked within 4 binomial
standard errors of the nominal rate (fixed Generator, so the check is deterministic).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sst

from repspec.experiments import stats
from repspec.experiments.demo import (DemoConfig, aggregate, compare_verdicts, evaluate_claims, format_claims,
                                      format_table, render_results)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def test_summarize_matches_numpy():
    v = [0.9, 0.95, 0.97, 0.91]
    s = stats.summarize(v)
    assert s["n"] == 4
    assert s["mean"] == pytest.approx(np.mean(v), rel=1e-12)
    assert s["sd"] == pytest.approx(np.std(v, ddof=1), rel=1e-12)
    assert (s["min"], s["max"]) == (0.9, 0.97)
    assert stats.summarize([0.5])["sd"] is None  # n = 1: no spread, not NaN


def test_mean_ci_is_the_student_t_interval():
    v = np.array([1.0, 2.5, 0.5, 3.0, 2.0])
    lo, hi = stats.mean_ci(v, 0.95)
    se = v.std(ddof=1) / math.sqrt(v.size)
    ref_lo, ref_hi = sst.t.interval(0.95, df=v.size - 1, loc=v.mean(), scale=se)
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi), rel=1e-12), f"CI {lo, hi} != scipy {ref_lo, ref_hi}"


def test_mean_ci_covers_the_true_mean_at_the_nominal_rate():
    """Normal data, n = 5, 95% intervals: the coverage over 2000 samples is 0.95 within 4 binomial SEs."""
    rng = np.random.default_rng(20261129)
    trials, mu = 2000, 0.7
    hits = 0
    for _ in range(trials):
        lo, hi = stats.mean_ci(rng.normal(mu, 2.0, size=5), 0.95)
        hits += lo <= mu <= hi
    cover = hits / trials
    se = math.sqrt(0.95 * 0.05 / trials)
    assert abs(cover - 0.95) < 4 * se, f"coverage {cover:.4f} vs nominal 0.95 (4 SE = {4 * se:.4f})"


def test_compare_detects_a_planted_effect_and_its_opposite():
    rng = np.random.default_rng(7)
    base = rng.normal(0.9, 0.05, size=5)
    better = base + 0.03 + rng.normal(0, 0.005, size=5)  # planted paired effect +0.03, noise 0.005
    r = stats.compare(better, base)
    assert r["verdict"] == "reproduced", r
    assert r["ci"][0] > 0 and r["sign_test"]["n_claimed_side"] == 5
    assert r["sign_test"]["p"] == pytest.approx(1 / 32, rel=1e-12)
    assert stats.compare(base, better)["verdict"] == "contradicted"
    assert stats.compare(better, base, direction="less")["verdict"] == "contradicted"


def test_interval_alone_is_not_enough():
    """A mean pulled by one large seed: the interval excludes 0 but only 4 of 5 seeds agree."""
    r = stats.compare([0.6, 0.5, 0.7, 0.55, -0.05])
    assert r["ci"][0] > 0 and r["sign_test"]["n_claimed_side"] == 4
    assert r["verdict"] == "inconclusive"
    assert stats.verdict(tuple(r["ci"])) == "reproduced"  # the interval on its own would say so


def test_compare_without_effect_is_inconclusive():
    x = [0.91, 0.93, 0.90, 0.92, 0.94]
    y = [0.92, 0.92, 0.91, 0.91, 0.94]  # differences -0.01, +0.01, -0.01, +0.01, 0
    r = stats.compare(x, y)
    assert r["verdict"] == "inconclusive"
    assert r["ci"][0] < 0 < r["ci"][1]
    assert r["sign_test"] == {"n_nonzero": 4, "n_claimed_side": 2, "p": pytest.approx(11 / 16)}


def test_degenerate_cases_give_clear_results():
    one = stats.compare([0.9], [0.8])
    assert one["n"] == 1 and one["ci"] is None and one["sd"] is None
    assert one["verdict"] == "inconclusive" and "n = 1" in one["reason"]
    json.dumps(one, allow_nan=False)  # no NaN anywhere
    equal = stats.compare([0.9, 0.8, 0.7, 0.6, 0.5], [0.8, 0.7, 0.6, 0.5, 0.4])  # every difference 0.1 (to rounding)
    assert equal["ci"][1] - equal["ci"][0] < 1e-12 and equal["verdict"] == "reproduced"
    # three seeds cannot pass the sign test (smallest p 1/8): inconclusive however tight the interval
    assert stats.compare([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])["verdict"] == "inconclusive"
    zero = stats.compare([0.9, 0.9, 0.9], [0.9, 0.9, 0.9])
    assert zero["ci"] == [0.0, 0.0] and zero["verdict"] == "inconclusive"
    assert zero["sign_test"] == {"n_nonzero": 0, "n_claimed_side": 0, "p": 1.0}
    json.dumps([equal, zero], allow_nan=False)


def test_margin_claims():
    drops = [0.2, 0.4, 0.3, 0.1, 0.2]
    assert stats.compare(drops, bound=1.0, direction="less")["verdict"] == "reproduced"
    assert stats.compare([2.0, 2.5, 2.2, 1.8, 2.1], bound=1.0, direction="less")["verdict"] == "contradicted"


@pytest.mark.parametrize("call, match", [
    (lambda: stats.summarize([]), "non-empty"),
    (lambda: stats.summarize([1.0, float("nan")]), "finite"),
    (lambda: stats.summarize("abc"), "sequence"),
    (lambda: stats.compare([1.0, 2.0], [1.0]), "paired by seed"),
    (lambda: stats.compare([1.0, 2.0], direction="up"), "direction"),
    (lambda: stats.mean_ci([1.0, 2.0], 1.5), "confidence"),
    (lambda: stats.compare([1.0, 2.0], bound=float("inf")), "bound"),
])
def test_bad_input_is_refused_with_the_argument_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@given(st.lists(finite, min_size=2, max_size=8), st.lists(finite, min_size=2, max_size=8),
       st.sampled_from(["greater", "less"]))
def test_verdict_follows_the_interval(xs, ys, direction):
    n = min(len(xs), len(ys))
    x, y = xs[:n], ys[:n]
    r = stats.compare(x, y, direction=direction)
    d = stats.compare(np.subtract(x, y), direction=direction)
    assert r["ci"] == d["ci"] and r["verdict"] == d["verdict"]  # paired = one-sample on the differences
    lo, hi = r["ci"]
    assert lo <= r["mean"] <= hi or math.isclose(lo, hi, rel_tol=1e-12, abs_tol=1e-9)
    diffs = np.subtract(x, y)
    up, down = int(np.sum(diffs > 0)), int(np.sum(diffs < 0))
    p_up = sst.binomtest(up, up + down, 0.5, alternative="greater").pvalue if up + down else 1.0
    p_down = sst.binomtest(down, up + down, 0.5, alternative="greater").pvalue if up + down else 1.0
    if direction == "greater":
        claimed_side, other_side = lo > 0 and p_up < 0.05, hi < 0 and p_down < 0.05
    else:
        claimed_side, other_side = hi < 0 and p_down < 0.05, lo > 0 and p_up < 0.05
    expected = "reproduced" if claimed_side else "contradicted" if other_side else "inconclusive"
    assert r["verdict"] == expected, (r, expected)


# --------------------------------------------------------------------------- claims on synthetic results


def _fake_results(seeds=(0, 1, 2, 3, 4), cluster_gain=0.05, seed=3):
    """A results dict shaped like the demo's, with planted effects: RepVGG loses 3 points at INT8 (the
    others 0.2), ClusterQAT is ``cluster_gain`` better than uniform QAT, A holds the outliers."""
    rng = np.random.default_rng(seed)
    cfg = DemoConfig(image_size=8, epochs=1, hs_epochs=1, qat_epochs=1, oabn_thresholds=(3.0, 1.0, 0.5),
                     calibrators=("minmax",), ptq_bits=(8, 4), qat_bits=(4,), qat_models=("repvgg", "qarepvgg"),
                     seeds=len(seeds))
    from dataclasses import asdict

    labels = {"repvgg": 9.0, "repvgg_oabn_s3": 6.0, "repvgg_oabn_s1": 4.0, "repvgg_oabn_s0p5": 2.5,
              "qarepvgg": 3.0, "repopt_vgg": 3.5}
    runs = {}
    for s in seeds:
        models = {}
        for label, ratio in labels.items():
            fp = 0.95 + rng.normal(0, 0.005)
            drop = 0.03 if label == "repvgg" else 0.002
            e = {"fp32_accuracy": fp, "ptq_int8": {"minmax": fp - drop + rng.normal(0, 0.002)},
                 "ptq_bits": {"8": {"accuracy": fp - drop, "state_size": 900},
                              "4": {"accuracy": fp - 10 * drop, "state_size": 70}},
                 "max_ratio_A_C": ratio + rng.normal(0, 0.1), "ratio_A_to_BC": ratio / 3 + rng.normal(0, 0.05),
                 "max_abs_t0": None if label == "repopt_vgg" else 1.0, "registry_name": label}
            if label in cfg.qat_models:
                q = fp - 0.1 + rng.normal(0, 0.01)
                e["qat"] = {"qat_w4": {"accuracy": q, "state_size": 55},
                            "clusterqat_w4": {"accuracy": q + cluster_gain + rng.normal(0, 0.005), "state_size": 80}}
            models[label] = e
        runs[str(s)] = {"seed": s, "models": models}
    res = {"schema": 2, "mode": "custom", "config": asdict(cfg), "seeds": list(seeds),
           "dataset": {"name": "digits", "difficulty": None, "train_size": 1348, "test_size": 449,
                       "image_size": [8, 8]},
           "reproducibility": {"torch_threads": 1, "torch_version": "x", "device": "cpu"}, "runs": runs}
    res["models"] = aggregate(res)
    res["claims"] = evaluate_claims(res)
    return res


def test_aggregate_keeps_per_seed_values_and_summaries():
    res = _fake_results()
    node = res["models"]["repvgg"]["fp32_accuracy"]
    vals = [res["runs"][str(s)]["models"]["repvgg"]["fp32_accuracy"] for s in res["seeds"]]
    assert node["values"] == vals and node["n"] == 5
    assert node["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
    assert node["sd"] == pytest.approx(np.std(vals, ddof=1), rel=1e-12)
    assert res["models"]["repopt_vgg"]["max_abs_t0"] is None  # missing stays missing, never NaN
    assert res["models"]["repvgg"]["registry_name"] == "repvgg"
    json.dumps(res, allow_nan=False)


def test_claims_verdicts_are_computed_from_planted_effects():
    res = _fake_results()
    v = {c["id"]: c["verdict"] for c in res["claims"]}
    assert v[1] == "reproduced", res["claims"][0]  # RepVGG's planted 3-point INT8 drop
    assert v[2] == "reproduced", res["claims"][1]  # ratios 9 > 6 > 4 > 2.5, A/max(B,C) = 3 > 1
    assert v[4] == "reproduced"
    assert v[5] == "reproduced"  # RepOpt's planted drop 0.2 pp < 1 pp
    row4 = res["claims"][3]["rows"][0]
    assert row4["state_size"] == {"clusterqat": 80.0, "qat": 55.0} and row4["n"] == 5
    assert row4["mean"] == pytest.approx(5.0, abs=1.0)  # pp
    flipped = _fake_results(cluster_gain=-0.05)
    assert {c["id"]: c["verdict"] for c in flipped["claims"]}[4] == "contradicted"
    assert compare_verdicts(res, res) == []
    assert any(line.startswith("claim 4:") for line in compare_verdicts(res, flipped))


def test_claims_with_one_seed_are_inconclusive_not_nan():
    res = _fake_results(seeds=(0,))
    assert res["models"]["repvgg"]["qat"]["qat_w4"]["state_size"]["mean"] == 55  # one seed: still summaries
    assert " (55)" in next(ln for ln in format_table(res).splitlines() if ln.startswith("| repvgg |"))
    for c in res["claims"]:
        for r in c["rows"]:
            assert r["verdict"] in ("inconclusive", "not run"), r
    text = format_claims(res)
    assert "no interval: n = 1" in text and "nan" not in text.lower()
    json.dumps(res, allow_nan=False)


def test_tables_render_and_rerender_from_results_json(tmp_path):
    res = _fake_results()
    table = format_table(res)
    assert "| repvgg | 95." in table and " ± " in table and "5 seeds" in table
    claims = format_claims(res)
    for c in res["claims"]:
        assert f"**{c['verdict']}**" in claims
    # a pipe inside a test's name would split the Markdown row: every row has the header's cell count
    rows = [ln for ln in claims.splitlines() if ln.startswith("| ")]
    cells = {len(ln.replace(r"\|", "").split("|")) for ln in rows}
    assert len(cells) == 1, cells
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    out = render_results(path)
    assert (out / "table.md").read_text() == table + "\n"
    assert (out / "claims.md").read_text() == claims + "\n"
    assert table in (out / "readme_section.md").read_text()
    with pytest.raises(ValueError, match="multi-seed"):
        bad = tmp_path / "old.json"
        bad.write_text(json.dumps({"models": {}}))
        render_results(bad)
