"""Training loop: learns on real digits, exact resume (bit-identical on CPU), progress bars, evaluation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from repspec.torch_impl.training.checkpoint import checkpoint_exists, load_checkpoint_extra
from repspec.torch_impl.training.data import load_digits_dataset, make_loader, make_loaders, random_subset
from repspec.torch_impl.modules.models import create_model
from repspec.torch_impl.optimizers.repoptimizer import build_repoptimizer
from repspec.torch_impl.training.train import (
    TrainConfig,
    evaluate,
    evaluate_metrics,
    seed_everything,
    train_classifier,
)




@pytest.fixture(scope="module")
def digits8():
    train, test, info = load_digits_dataset(8, seed=0)
    return random_subset(train, 200, seed=0), random_subset(test, 120, seed=0), info


class Crash(Exception):
    pass


def _crash_at(step):
    def cb(gs, loss, model):
        if gs == step:
            raise Crash(f"simulated interruption after step {step}")
    return cb


def _assert_bit_identical(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _run_three_ways(build, tmp_path, *, crash_step, config):
    """Uninterrupted run vs. a run killed after ``crash_step`` and resumed from its last checkpoint."""
    config = dataclasses.replace(config, progress=False)
    model_a, opt_a, sched_a, loader_a = build()
    hist_a = train_classifier(model_a, loader_a, optimizer=opt_a, scheduler=sched_a, config=config)
    ckpt = tmp_path / "ckpt"
    model_b, opt_b, sched_b, loader_b = build()
    with pytest.raises(Crash):
        train_classifier(model_b, loader_b, optimizer=opt_b, scheduler=sched_b,
                         config=dataclasses.replace(config, checkpoint_path=ckpt), step_callback=_crash_at(crash_step))
    assert checkpoint_exists(ckpt)
    seed_everything(12345)  # a fresh process: different global RNG, freshly initialized model
    model_c, opt_c, sched_c, loader_c = build(init_seed=99)
    torch.manual_seed(777)
    hist_c = train_classifier(model_c, loader_c, optimizer=opt_c, scheduler=sched_c,
                              config=dataclasses.replace(config, checkpoint_path=ckpt, resume=True))
    return model_a, hist_a, model_c, hist_c


def test_learns_on_digits(digits8):
    train, test, info = digits8
    seed_everything(0)
    model = create_model("repvgg_tiny8", num_classes=info.num_classes)
    train_loader, test_loader = make_loaders(train, test, batch_size=25, seed=0)
    before = evaluate(model, test_loader)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    records = []
    hist = train_classifier(model, train_loader, optimizer=opt, eval_loader=test_loader,
                            config=TrainConfig(epochs=4, progress=False), epoch_callback=records.append)
    assert hist.global_step == 32 and len(hist.step_losses) == 32 and len(hist.epochs) == 4
    assert records == hist.epochs
    first, last = sum(hist.step_losses[:5]) / 5, sum(hist.step_losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    assert hist.final_eval_acc > max(0.3, before + 0.15)
    assert hist.final_eval_acc == pytest.approx(evaluate(model, test_loader))
    assert [r["epoch"] for r in hist.epochs] == [1, 2, 3, 4]


def test_resume_is_bit_identical_sgd_mid_epoch(digits8, tmp_path):
    train, _, _ = digits8

    def build(init_seed=0):
        seed_everything(init_seed)
        model = create_model("repvgg_tiny8", num_classes=10)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
        return model, opt, sched, make_loader(train, 32, seed=1)

    # 7 batches per epoch; checkpoints every 5 steps and at epoch ends; killed after step 13 -> resumes at step 10
    a, ha, c, hc = _run_three_ways(build, tmp_path, crash_step=13,
                                   config=TrainConfig(steps=20, seed=0, scheduler_interval="step", checkpoint_every=5))
    assert hc.resumed_from_step == 10
    _assert_bit_identical(a, c)
    assert ha.step_losses == hc.step_losses and ha.epochs == hc.epochs
    assert ha.epochs[-1].get("partial") is True and ha.global_step == hc.global_step == 20


def test_resume_is_bit_identical_repoptimizer_at_epoch_boundary(digits8, tmp_path):
    train, test, _ = digits8

    def build(init_seed=0):
        # create_model's seed draws the imaginary kernels of W'_0; the head is drawn from the global RNG, so
        # the uninterrupted and the interrupted run must start from the same global state (as above)
        seed_everything(init_seed)
        model = create_model("repopt_vgg_tiny8", num_classes=10, seed=init_seed)
        opt = build_repoptimizer(model, model.repopt_scales, lr=0.05, momentum=0.9, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return model, opt, sched, make_loader(train, 50, seed=3)

    # 4 batches per epoch, epoch-interval scheduler; killed after step 10 -> resumes from the epoch-2 checkpoint
    a, ha, c, hc = _run_three_ways(build, tmp_path, crash_step=10,
                                   config=TrainConfig(epochs=3, seed=0, checkpoint_extra={"model": "repopt_vgg_tiny8"}))
    assert hc.resumed_from_step == 8
    _assert_bit_identical(a, c)
    assert ha.step_losses == hc.step_losses and ha.epochs == hc.epochs
    extra = load_checkpoint_extra(tmp_path / "ckpt")
    assert extra["model"] == "repopt_vgg_tiny8" and extra["train_state"]["global_step"] == 12


def test_resume_generic_loader_and_dropout(tmp_path):
    """A plain shuffling DataLoader (no make_loader) and a model using the global RNG (dropout):
    the consumed part of the epoch is replayed and every random state restored."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 6, generator=g), torch.randint(0, 3, (60,), generator=g)

    def build(init_seed=0):
        torch.manual_seed(init_seed)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        return model, opt, None, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)

    a, ha, c, hc = _run_three_ways(build, tmp_path, crash_step=11,
                                   config=TrainConfig(steps=19, seed=5, checkpoint_every=3))
    assert hc.resumed_from_step == 9
    _assert_bit_identical(a, c)
    assert ha.step_losses == hc.step_losses and ha.epochs == hc.epochs


def test_resume_checks(digits8, tmp_path):
    train, _, _ = digits8
    model = create_model("repvgg_tiny8", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def cfg(steps, resume):
        return TrainConfig(steps=steps, checkpoint_path=tmp_path / "c", resume=resume, progress=False)

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_classifier(model, make_loader(train, 50), optimizer=opt, config=cfg(1, True))
    h = train_classifier(model, make_loader(train, 50), optimizer=opt, config=cfg(2, "auto"))
    assert h.resumed_from_step is None and checkpoint_exists(tmp_path / "c")
    with pytest.raises(ValueError, match="4 batches per epoch, this train_loader has 2"):
        train_classifier(model, make_loader(train, 100), optimizer=opt, config=cfg(3, True))
    # extending a finished run continues from its step count
    h = train_classifier(model, make_loader(train, 50), optimizer=opt, config=cfg(3, True))
    assert (h.resumed_from_step, h.global_step, len(h.step_losses)) == (2, 3, 3)


@pytest.mark.parametrize("kwargs, error, match", [
    ({}, ValueError, "exactly one of epochs or steps"),
    ({"epochs": 1, "steps": 1}, ValueError, "exactly one of epochs or steps"),
    ({"steps": 0}, ValueError, "steps must be >= 1"),
    ({"epochs": 1.5}, TypeError, "epochs must be an integer"),
    ({"steps": True}, TypeError, "steps must be an integer"),
    ({"steps": 1, "scheduler_interval": "batch"}, ValueError, "scheduler_interval must be one of"),
    ({"steps": 1, "device": "nodevice"}, ValueError, "device 'nodevice' is not a device"),
    ({"steps": 1, "device": 1.5}, TypeError, "device must be"),
    ({"steps": 1, "loss_fn": 3}, TypeError, "loss_fn must be callable"),
    ({"steps": 1, "checkpoint_path": 3}, TypeError, "checkpoint_path must be a str or os.PathLike"),
    ({"steps": 1, "checkpoint_every": 0}, ValueError, "checkpoint_every must be >= 1"),
    ({"steps": 1, "checkpoint_every": 2.0}, TypeError, "checkpoint_every must be an integer"),
    ({"steps": 1, "resume": "yes", "checkpoint_path": "c"}, ValueError, "resume must be False, True or 'auto'"),
    ({"steps": 1, "resume": 1, "checkpoint_path": "c"}, ValueError, "resume must be False, True or 'auto'"),
    ({"steps": 1, "resume": True}, ValueError, "resume needs checkpoint_path"),
    ({"steps": 1, "checkpoint_extra": [1]}, TypeError, "checkpoint_extra must be a mapping"),
    ({"steps": 1, "checkpoint_extra": {"train_state": 1}}, ValueError, "reserved key"),
    ({"steps": 1, "progress": 1}, TypeError, "progress must be a bool"),
    ({"steps": 1, "seed": -1}, ValueError, "seed must be >= 0"),
    ({"steps": 1, "seed": 1.0}, TypeError, "seed must be an integer"),
    ({"steps": 1, "freeze_bn": None}, TypeError, "freeze_bn must be a bool"),
])
def test_train_config_checks_each_field_when_built(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**kwargs)


def test_train_config_normalizes_copies_and_is_frozen(tmp_path):
    extra = {"model": "x"}
    c = TrainConfig(epochs=2, device="cpu", checkpoint_path=str(tmp_path), checkpoint_extra=extra, seed=2**63)
    assert c.device == torch.device("cpu") and c.checkpoint_path == tmp_path and c.total_steps(7) == 14
    extra["model"] = "y"
    assert c.checkpoint_extra == {"model": "x"}
    assert TrainConfig(steps=1).checkpoint_extra == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 3  # type: ignore[misc]
    assert dataclasses.replace(c, epochs=None, steps=5).total_steps(7) == 5


def test_train_classifier_checks_its_objects_before_changing_anything():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    cfg = TrainConfig(steps=1, progress=False, seed=3)
    rng = torch.get_rng_state()
    for kwargs, error, match in (
            ({"model": object()}, TypeError, "model must be a torch.nn.Module"),
            ({"optimizer": 3}, TypeError, "optimizer must be a torch.optim.Optimizer"),
            ({"config": {"steps": 1}}, TypeError, "config must be a TrainConfig"),
            ({"scheduler": 3}, TypeError, "scheduler must have a step"),
            ({"step_callback": 3}, TypeError, "step_callback must be callable"),
            ({"epoch_callback": 3}, TypeError, "epoch_callback must be callable"),
            ({"on_resume": 3}, TypeError, "on_resume must be callable"),
            ({"train_loader": iter(loader)}, TypeError, "train_loader must have len"),
            ({"train_loader": []}, ValueError, "train_loader is empty")):
        args = {"model": model, "train_loader": loader, "optimizer": opt, "config": cfg, **kwargs}
        with pytest.raises(error, match=match):
            train_classifier(args.pop("model"), args.pop("train_loader"), **args)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # not seeded either


def test_progress_bar_shows_on_a_terminal_only_and_can_be_disabled(digits8, capsys, monkeypatch):
    import io
    import sys

    train, test, _ = digits8
    model = create_model("repvgg_tiny8", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = make_loader(train, 100)
    quiet, bars = TrainConfig(steps=1, progress=False), TrainConfig(steps=1)
    train_classifier(model, loader, optimizer=opt, config=quiet)
    assert capsys.readouterr().err == ""
    # progress=True (the default) on a non-terminal stream (CI logs, files): no bar flooding the output
    train_classifier(model, loader, optimizer=opt, config=bars)
    assert capsys.readouterr().err == ""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train_classifier(model, loader, optimizer=opt, config=bars)
    assert "epoch 1" in terminal.getvalue()
    terminal.truncate(0)
    train_classifier(model, loader, optimizer=opt, config=quiet)
    assert terminal.getvalue() == ""


def test_evaluate_and_freeze_bn(digits8):
    _, test, _ = digits8
    model = create_model("repvgg_tiny8", num_classes=10).double()
    loader = make_loader(test, 40, shuffle=False)
    model.train()
    m = evaluate_metrics(model, loader)
    assert model.training  # mode restored
    xs = torch.stack([test[i][0] for i in range(len(test))]).double()
    ys = torch.stack([test[i][1] for i in range(len(test))])
    model.eval()
    with torch.no_grad():
        logits = model(xs)
    model.train()
    assert m["count"] == 120
    assert m["accuracy"] == pytest.approx((logits.argmax(1) == ys).double().mean().item())
    assert m["loss"] == pytest.approx(nn.functional.cross_entropy(logits, ys).item(), rel=1e-9)
    # frozen BN statistics (SPEC §5 QAT)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train_classifier(model, loader, optimizer=opt, config=TrainConfig(steps=2, progress=False, freeze_bn=True))
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_hypersearch_through_train_classifier_matches_train_hypersearch(digits8):
    """``repspec hypersearch`` can use train_classifier (checkpoints, resume) and get the same scales."""
    from repspec.torch_impl.optimizers.hypersearch import build_hypersearch_optimizer, extract_scales, train_hypersearch

    train, _, _ = digits8
    sub = random_subset(train, 100, seed=0)
    torch.manual_seed(0)
    a = create_model("hs_vgg_tiny8", num_classes=10)
    torch.manual_seed(0)
    b = create_model("hs_vgg_tiny8", num_classes=10)
    ref = train_hypersearch(a, make_loader(sub, 25, seed=2), steps=6, lr=0.1, progress=False)
    opt = build_hypersearch_optimizer(b, 0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    hist = train_classifier(b, make_loader(sub, 25, seed=2), optimizer=opt, scheduler=sched,
                            config=TrainConfig(steps=6, scheduler_interval="step", progress=False))
    assert hist.step_losses == ref.losses
    got = extract_scales(b)
    assert got.keys() == ref.scales.keys() and all(torch.equal(got[k], ref.scales[k]) for k in got)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_checkpoint_loads_on_cpu_and_resumes(digits8, tmp_path):
    train, _, _ = digits8
    model = create_model("repopt_vgg_tiny8", num_classes=10, seed=0).cuda()
    opt = build_repoptimizer(model, model.repopt_scales, lr=0.05, momentum=0.9)
    ckpt = tmp_path / "c"
    train_classifier(model, make_loader(train, 50), optimizer=opt,
                     config=TrainConfig(steps=5, device="cuda", checkpoint_path=ckpt, progress=False))
    cpu_model = create_model("repopt_vgg_tiny8", num_classes=10, seed=1)
    cpu_opt = build_repoptimizer(cpu_model, cpu_model.repopt_scales, lr=0.05, momentum=0.9)
    from repspec.torch_impl.training.checkpoint import load_checkpoint

    load_checkpoint(ckpt, cpu_model, cpu_opt)
    _assert_bit_identical(model.cpu(), cpu_model)
    again = create_model("repopt_vgg_tiny8", num_classes=10, seed=2).cuda()
    opt2 = build_repoptimizer(again, again.repopt_scales, lr=0.05, momentum=0.9)
    hist = train_classifier(again, make_loader(train, 50), optimizer=opt2,
                            config=TrainConfig(steps=8, device="cuda", checkpoint_path=ckpt, resume=True, progress=False))
    assert hist.resumed_from_step == 5 and hist.global_step == 8
    assert all(p.is_cuda for p in again.parameters())
