"""The multi-seed demo pipeline at its smallest size: 2 seeds, one epoch, a 300-image train subset."""

from __future__ import annotations

import json

import pytest

from repspec.experiments.demo import DemoConfig, render_results, run_demo

TINY = DemoConfig(image_size=8, epochs=1, hs_epochs=1, qat_epochs=1, oabn_thresholds=(1.0, 0.5),
                  calibrators=("minmax",), ptq_bits=(8, 4), qat_bits=(4,), qat_models=("repvgg",),
                  batch_size=100, calib_batches=1, seeds=2, train_limit=300)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert run_demo(out, config=TINY, seed=3, progress=False, log=lambda *a: None) == 0
    return out


def test_results_json_keeps_per_seed_values_aggregates_and_conditions(demo_out):
    res = json.loads((demo_out / "results.json").read_text())
    assert res["seeds"] == [3, 4] and set(res["runs"]) == {"3", "4"}
    labels = {"repvgg", "repvgg_oabn_s1", "repvgg_oabn_s0p5", "qarepvgg", "repopt_vgg"}
    for s in ("3", "4"):
        models = res["runs"][s]["models"]
        assert set(models) == labels
        assert set(models["repvgg"]["qat"]) == {"qat_w4", "clusterqat_w4"}
        assert res["runs"][s]["dataset"]["split_seed"] == int(s)
    # models are seeded per (model, seed): all different
    model_seeds = {res["runs"][s]["models"][m]["model_seed"] for s in ("3", "4") for m in labels}
    assert len(model_seeds) == 2 * len(labels)
    agg = res["models"]["repvgg"]["fp32_accuracy"]
    per_seed = [res["runs"][s]["models"]["repvgg"]["fp32_accuracy"] for s in ("3", "4")]
    assert agg["values"] == per_seed and agg["n"] == 2 and agg["sd"] is not None
    rep = res["reproducibility"]
    for key in ("torch_threads", "torch_version", "cpu_capability", "onednn_max_cpu_isa", "device"):
        assert key in rep, key
    assert [c["id"] for c in res["claims"]] == [1, 2, 3, 4, 5]
    for c in res["claims"]:
        assert c["verdict"] in ("reproduced", "partly reproduced", "contradicted", "not reproduced (inconclusive)",
                                "not run")
        for r in c["rows"]:
            assert r["verdict"] == "not run" or (r["n"] == 2 and len(r["ci"]) == 2), r
    timings = json.loads((demo_out / "timings.json").read_text())
    assert set(timings["seeds"]) == {"3", "4"} and timings["total_seconds"] > 0
    assert "seconds" not in json.dumps(res)  # wall times stay out of results.json (byte-reproducible)


def test_tables_and_plots_are_written_and_rerender_identically(demo_out, tmp_path):
    table = (demo_out / "table.md").read_text()
    claims = (demo_out / "claims.md").read_text()
    assert "| repvgg | " in table and " ± " in table and "2 seeds (3, 4)" in table
    assert "| 1 | RepVGG loses more accuracy" in claims
    section = (demo_out / "readme_section.md").read_text()
    assert table in section and claims in section
    for png in ("accuracy_vs_bits.png", "merged_weights_by_category.png"):
        assert (demo_out / png).stat().st_size > 10_000
    assert (demo_out / "analysis" / "repvgg" / "hist_all.png").is_file()
    out = render_results(demo_out / "results.json", tmp_path / "again")
    assert (out / "table.md").read_text() == table
    assert (out / "claims.md").read_text() == claims


def test_cli_render(demo_out, tmp_path, capsys):
    from repspec.cli import main

    copy = tmp_path / "results.json"
    copy.write_text((demo_out / "results.json").read_text())
    assert main(["demo", "--render", str(copy)]) == 0
    assert (tmp_path / "claims.md").read_text() == (demo_out / "claims.md").read_text()


@pytest.mark.parametrize("kwargs, match", [
    ({"seeds": 0}, "seeds must be an integer >= 1"),
    ({"dataset": "mnist"}, "dataset must be one of"),
    ({"dataset": "cifar10"}, "needs data_dir"),
    ({"data_dir": "x"}, "applies to dataset 'cifar10' only"),
    ({"difficulty": 0.5}, "applies to dataset 'digits_variations' only"),
    ({"dataset": "digits_variations", "difficulty": 2.0}, r"difficulty must be a number in \[0, 1\]"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        run_demo(out, config=TINY, progress=False, log=lambda *a: None, **kwargs)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_digits_variations_difficulty_knob():
    import torch

    from repspec.torch_impl.training.datasets import load_dataset
    from repspec.torch_impl.training.synthetic import load_digits_variations

    plain, _, _ = load_dataset("digits", image_size=8, seed=0)
    zero, _, info0 = load_digits_variations(8, difficulty=0.0, seed=0)
    assert torch.equal(plain.tensors[1], zero.tensors[1])
    assert torch.allclose(plain.tensors[0], zero.tensors[0], atol=1e-5)  # float32 after normalization
    a, _, info = load_dataset("digits_variations", image_size=8, seed=0, difficulty=0.5)
    b, _, _ = load_digits_variations(8, difficulty=0.5, seed=0)
    assert torch.equal(a.tensors[0], b.tensors[0])  # a pure function of its arguments
    assert not torch.allclose(a.tensors[0], zero.tensors[0], atol=0.1)
    assert info.notes["difficulty"] == 0.5 and info.name == "digits_variations"
    with pytest.raises(ValueError, match="difficulty must be in"):
        load_digits_variations(8, difficulty=1.5)
    with pytest.raises(ValueError, match="do not pass root"):
        load_dataset("digits_variations", root="x")
