"""SPEC §3: RepOptimizerSGD / RepOptimizerAdamW against torch.optim and the NumPy reference.

- no masks → bit-for-bit ``torch.optim.SGD`` / ``torch.optim.AdamW`` (CPU float64);
- with masks → ``repspec.reference.optim.SGD`` / ``AdamW`` at every step (params and state,
  float64 ``exact_math`` tolerance);
- foreach == single-tensor (bit-for-bit); state_dict round trip (through
  ``torch.save``/``torch.load(weights_only=True)``) keeps masks and continues identically;
- LR schedulers drive ``group['lr']``; bad arguments raise before any state changes.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from repspec.reference import optim as ref_optim
from repspec.reference import repopt as ref_repopt
from repspec.torch_impl.optimizers.repoptimizer import (
    RepOptimizerAdamW,
    RepOptimizerSGD,
    csla_equivalent_kernel,
    grad_mult_mask_from_scales,
)
from tests.strategies import adamw_hparams, seeds, sgd_hparams
from tests.tolerances import assert_close, assert_trees_close

SHAPES = {"conv.weight": (3, 2, 3, 3), "bn.weight": (3,), "linear.weight": (4, 3), "linear.bias": (4,)}


def make_params(seed: int, dtype=torch.float64) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)) for k, s in
            SHAPES.items()}


def make_masks(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a3, a1 = rng.uniform(-1.5, 1.5, 3), rng.uniform(-1.5, 1.5, 3)
    return {"conv.weight": ref_repopt.grad_mult_mask(a3, a1, 2, identity="none"),
            "linear.weight": rng.uniform(0.1, 3.0, SHAPES["linear.weight"])}


def grads_for(seed: int, step: int, params, skip: frozenset = frozenset()) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1000 + step)
    return {k: torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) for k, p in params.items()
            if k not in skip}


def set_grads(params, grads):
    for k, p in params.items():
        p.grad = grads[k].clone() if k in grads else None


def state_np(opt, params, key):
    out = {}
    for k, p in params.items():
        st_ = opt.state.get(p, {})
        if key in st_:
            out[k] = st_[key].detach().cpu().numpy()
    return out


# ------------------------------------------------------------------ vs torch.optim.SGD


@given(hp=sgd_hparams(), seed=seeds, foreach=st.booleans())
def test_no_masks_equals_torch_sgd(hp, seed, foreach):
    """Without masks RepOptimizerSGD is torch.optim.SGD, bit for bit, for every option and both paths."""
    a, b = make_params(seed), make_params(seed)
    groups_a = [{"params": [a["conv.weight"], a["linear.weight"]]},
                {"params": [a["bn.weight"], a["linear.bias"]], "weight_decay": 0.0, "lr": hp["lr"] / 2}]
    groups_b = [{"params": [b["conv.weight"], b["linear.weight"]]},
                {"params": [b["bn.weight"], b["linear.bias"]], "weight_decay": 0.0, "lr": hp["lr"] / 2}]
    ours = RepOptimizerSGD(groups_a, foreach=foreach, **hp)
    theirs = torch.optim.SGD(groups_b, foreach=foreach, **hp)
    for step in range(4):
        skip = frozenset({"bn.weight"}) if step == 1 else frozenset()  # a param without grad mid-way
        g = grads_for(seed, step, a, skip)
        set_grads(a, g)
        set_grads(b, g)
        ours.step()
        theirs.step()
        for k in a:
            assert torch.equal(a[k], b[k]), f"step {step}: {k} differs from torch.optim.SGD"
            sa, sb = ours.state.get(a[k], {}), theirs.state.get(b[k], {})
            if "momentum_buffer" in sb and sb["momentum_buffer"] is not None:
                assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # the gradients themselves are never modified
    g = grads_for(seed, 99, a)
    set_grads(a, g)
    ours.step()
    for k in a:
        assert torch.equal(a[k].grad, g[k])


# ------------------------------------------------------------------ vs the reference


@given(hp=sgd_hparams(), seed=seeds, foreach=st.booleans(), official_decay=st.booleans())
def test_masks_equal_reference_sgd(hp, seed, foreach, official_decay):
    """With masks every step equals repspec.reference.optim.SGD(grad_mult_masks=…): params and buffers."""
    params = make_params(seed)
    masks_np = make_masks(seed)
    lam = hp["weight_decay"]
    if official_decay:
        decay = ref_optim.official_weight_decay({k: p.detach().numpy() for k, p in params.items()}, lam)
        groups = [{"params": [params[k] for k in params if decay[k] > 0], "weight_decay": lam},
                  {"params": [params[k] for k in params if decay[k] == 0], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:
        decay, groups = lam, list(params.values())
    ours = RepOptimizerSGD(groups, **{**hp, "weight_decay": lam}, foreach=foreach,
                           grad_mult_masks={params[k]: torch.from_numpy(m) for k, m in masks_np.items()})
    ref = ref_optim.SGD(**{**hp, "weight_decay": decay}, grad_mult_masks=masks_np)
    p_ref = {k: p.detach().numpy().copy() for k, p in params.items()}
    s_ref = ref.init_state(p_ref)
    for step in range(5):
        g = grads_for(seed, step, params)
        set_grads(params, g)
        ours.step()
        p_ref, s_ref = ref.step(p_ref, {k: v.numpy() for k, v in g.items()}, s_ref)
        assert_trees_close({k: p.detach().numpy() for k, p in params.items()}, p_ref, iteration=step)
        bufs_ref = {k: s["momentum_buffer"] for k, s in s_ref.items() if "momentum_buffer" in s}
        assert_trees_close(state_np(ours, params, "momentum_buffer"), bufs_ref, prefix="momentum_buffer.",
                           iteration=step)


@given(hp=sgd_hparams(), seed=seeds)
def test_foreach_equals_single_tensor(hp, seed):
    """The torch._foreach_* path and the per-tensor loop give identical results (masks included)."""
    results = []
    for foreach in (False, True):
        params = make_params(seed)
        masks = {params[k]: torch.from_numpy(m) for k, m in make_masks(seed).items()}
        opt = RepOptimizerSGD(params.values(), **hp, grad_mult_masks=masks, foreach=foreach)
        for step in range(4):
            set_grads(params, grads_for(seed, step, params, frozenset({"linear.bias"}) if step == 2 else frozenset()))
            opt.step()
        results.append((params, opt))
    (pa, oa), (pb, ob) = results
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
        if hp["momentum"]:
            assert torch.equal(oa.state[pa[k]]["momentum_buffer"], ob.state[pb[k]]["momentum_buffer"]), k


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip_mid_training(foreach):
    """Save after 3 steps, load into a fresh optimizer built WITHOUT masks, continue: identical to no interruption."""
    hp = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)
    seed = 7
    params = make_params(seed)
    masks = {params[k]: torch.from_numpy(m) for k, m in make_masks(seed).items()}
    opt = RepOptimizerSGD(params.values(), **hp, grad_mult_masks=masks, foreach=foreach)
    for step in range(3):
        set_grads(params, grads_for(seed, step, params))
        opt.step()
    saved_params = {k: p.detach().clone() for k, p in params.items()}
    saved_state = _roundtrip(opt.state_dict())
    assert all("grad_mult_mask" in saved_state["state"][i] for i in (0, 2))  # conv.weight, linear.weight
    for step in range(3, 6):
        set_grads(params, grads_for(seed, step, params))
        opt.step()

    resumed = {k: torch.nn.Parameter(v.clone()) for k, v in saved_params.items()}
    opt2 = RepOptimizerSGD(resumed.values(), lr=1.0, foreach=foreach)  # wrong hparams, no masks: all restored
    opt2.load_state_dict(saved_state)
    assert set(map(id, opt2.grad_mult_masks)) == {id(resumed["conv.weight"]), id(resumed["linear.weight"])}
    assert torch.equal(opt2.grad_mult_mask(resumed["conv.weight"]), masks[params["conv.weight"]])
    assert opt2.param_groups[0]["lr"] == hp["lr"] and opt2.param_groups[0]["nesterov"]
    for step in range(3, 6):
        set_grads(resumed, grads_for(seed, step, resumed))
        opt2.step()
    for k in params:
        assert torch.equal(params[k], resumed[k]), k
        assert torch.equal(opt.state[params[k]]["momentum_buffer"], opt2.state[resumed[k]]["momentum_buffer"])


def test_load_state_dict_keeps_current_masks_and_validates_first():
    params = make_params(0)
    m = torch.from_numpy(make_masks(0)["conv.weight"])
    opt = RepOptimizerSGD(params.values(), lr=0.1, momentum=0.9, grad_mult_masks={params["conv.weight"]: m})
    plain = RepOptimizerSGD(make_params(0).values(), lr=0.1, momentum=0.9)
    opt.load_state_dict(_roundtrip(plain.state_dict()))  # no masks in the file: the current one stays
    assert torch.equal(opt.grad_mult_mask(params["conv.weight"]), m)
    bad = _roundtrip(opt.state_dict())
    bad["state"][0]["grad_mult_mask"] = torch.ones(2, 2)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"grad_mult_mask of param 0 .* shape \(3, 2, 3, 3\)"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert torch.equal(after["state"][0]["grad_mult_mask"], before["state"][0]["grad_mult_mask"])


# ------------------------------------------------------------------ LR schedulers


@pytest.mark.parametrize("sched", ["step", "cosine", "lambda"])
def test_lr_scheduler_interplay(sched):
    """Schedulers drive each group's lr; each step equals the reference SGD run with that step's lr."""
    hp = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3)
    params = make_params(3)
    masks_np = make_masks(3)
    opt = RepOptimizerSGD(params.values(), **hp, grad_mult_masks={params[k]: torch.from_numpy(m)
                                                                   for k, m in masks_np.items()})
    twin = make_params(3)
    torch_opt = torch.optim.SGD(twin.values(), **hp)
    make = {"step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
            "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
            "lambda": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1 + e))}[sched]
    sch, sch_torch = make(opt), make(torch_opt)
    p_ref = {k: p.detach().numpy().copy() for k, p in params.items()}
    s_ref = {k: {} for k in p_ref}
    lrs = []
    for step in range(6):
        lr = opt.param_groups[0]["lr"]
        lrs.append(lr)
        assert lr == torch_opt.param_groups[0]["lr"]
        g = grads_for(3, step, params)
        set_grads(params, g)
        opt.step()
        sch.step()
        p_ref, s_ref = ref_optim.SGD(**{**hp, "lr": lr}, grad_mult_masks=masks_np).step(
            p_ref, {k: v.numpy() for k, v in g.items()}, s_ref)
        assert_trees_close({k: p.detach().numpy() for k, p in params.items()}, p_ref, iteration=step)
        set_grads(twin, g)
        torch_opt.step()
        sch_torch.step()
    assert len(set(lrs)) > 1, "the schedule must actually change the lr"
    # resuming the scheduler with the optimizer state works too
    sch2 = make(RepOptimizerSGD(make_params(3).values(), **hp))
    sch2.load_state_dict(sch.state_dict())
    assert sch2.last_epoch == sch.last_epoch


# ------------------------------------------------------------------ AdamW


@given(hp=adamw_hparams(), seed=seeds, placement=st.sampled_from(["grad_and_update", "grad"]))
def test_adamw_equals_reference(hp, seed, placement):
    """RepOptimizerAdamW (exponent-1 masks) equals repspec.reference.optim.AdamW at every step."""
    params = make_params(seed)
    masks_np = make_masks(seed)
    ours = RepOptimizerAdamW(params.values(), **hp, mask_placement=placement,
                             grad_mult_masks={params[k]: torch.from_numpy(m) for k, m in masks_np.items()})
    ref = ref_optim.AdamW(**hp, grad_mult_masks=masks_np, mask_placement=placement)
    p_ref = {k: p.detach().numpy().copy() for k, p in params.items()}
    s_ref = ref.init_state(p_ref)
    for step in range(5):
        g = grads_for(seed, step, params)
        set_grads(params, g)
        ours.step()
        p_ref, s_ref = ref.step(p_ref, {k: v.numpy() for k, v in g.items()}, s_ref)
        assert_trees_close({k: p.detach().numpy() for k, p in params.items()}, p_ref, iteration=step)
        for key in ("exp_avg", "exp_avg_sq"):
            assert_trees_close(state_np(ours, params, key), {k: s[key] for k, s in s_ref.items()},
                               prefix=f"{key}.", iteration=step)
        assert all(float(ours.state[p]["step"]) == s_ref[k]["step"] for k, p in params.items())


@given(hp=adamw_hparams(), seed=seeds, amsgrad=st.booleans())
def test_adamw_no_masks_equals_torch_adamw(hp, seed, amsgrad):
    a, b = make_params(seed), make_params(seed)
    ours = RepOptimizerAdamW(a.values(), **hp, amsgrad=amsgrad)
    theirs = torch.optim.AdamW(b.values(), **hp, amsgrad=amsgrad, foreach=False)
    for step in range(4):
        g = grads_for(seed, step, a)
        set_grads(a, g)
        set_grads(b, g)
        ours.step()
        theirs.step()
    for k in a:
        assert_close(a[k].detach().numpy(), b[k].detach().numpy(), name=k)
    # and the state dict is torch's: it loads into torch.optim.AdamW
    theirs.load_state_dict(_roundtrip(ours.state_dict()))


def test_adamw_grad_placement_is_nearly_mask_blind():
    """Why the official code applies the mask twice: with the mask on the gradient only, Adam's
    normalization cancels a positive per-element mask up to eps (SPEC §3 "AdamW variant")."""
    a, b = make_params(1), make_params(1)
    mask = {a["linear.weight"]: torch.full(SHAPES["linear.weight"], 9.0, dtype=torch.float64)}
    o1 = RepOptimizerAdamW(a.values(), lr=0.01, eps=1e-12, weight_decay=0.0, grad_mult_masks=mask,
                           mask_placement="grad")
    o2 = torch.optim.AdamW(b.values(), lr=0.01, eps=1e-12, weight_decay=0.0)
    for step in range(3):
        g = grads_for(1, step, a)
        set_grads(a, g)
        set_grads(b, g)
        o1.step()
        o2.step()
    assert_close(a["linear.weight"].detach().numpy(), b["linear.weight"].detach().numpy(), name="w", rtol=1e-9)


# ------------------------------------------------------------------ helpers vs reference


@given(o=st.integers(1, 6), i=st.integers(1, 6), identity=st.sampled_from(["trainable", "constant", "none"]),
       exponent=st.sampled_from([1, 2]), seed=seeds)
def test_grad_mult_mask_equals_reference(o, i, identity, exponent, seed):
    if identity != "none":
        i = o
    rng = np.random.default_rng(seed)
    a3, a1 = rng.uniform(-2, 2, o), rng.uniform(-2, 2, o)
    ours = grad_mult_mask_from_scales(torch.from_numpy(a3), torch.from_numpy(a1), i, identity=identity,
                                      exponent=exponent)
    assert_close(ours.numpy(), ref_repopt.grad_mult_mask(a3, a1, i, identity=identity, exponent=exponent),
                 name="M")


@given(o=st.integers(1, 5), i=st.integers(1, 5), with_d=st.booleans(), seed=seeds)
def test_csla_equivalent_kernel_equals_reference(o, i, with_d, seed):
    if with_d:
        i = o
    rng = np.random.default_rng(seed)
    k3, k1 = rng.normal(size=(o, i, 3, 3)), rng.normal(size=(o, i, 1, 1))
    a3, a1, d = rng.normal(size=o), rng.normal(size=o), rng.normal(size=o) if with_d else None
    t = torch.from_numpy
    ours = csla_equivalent_kernel(t(k3), t(k1), t(a3), t(a1), None if d is None else t(d))
    assert_close(ours.numpy(), ref_repopt.csla_equivalent_kernel(k3, k1, a3, a1, d), name="W'")


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(lr=-0.1), ValueError, "lr must be a finite number >= 0"),
    (dict(lr=float("nan")), ValueError, "lr must not be NaN"),
    (dict(lr=float("inf")), ValueError, "lr must be a finite number >= 0"),
    (dict(lr="0.1"), TypeError, "lr must be a real number"),
    (dict(lr=0.1, momentum=-1.0), ValueError, "momentum"),
    (dict(lr=0.1, weight_decay=-1e-4), ValueError, "weight_decay"),
    (dict(lr=0.1, nesterov=True), ValueError, "nesterov requires momentum > 0 and dampening == 0"),
    (dict(lr=0.1, nesterov=True, momentum=0.9, dampening=0.1), ValueError, "nesterov requires momentum > 0 and dampening == 0, got momentum=0.9, dampening=0.1"),
    (dict(lr=0.1, nesterov=1), TypeError, "nesterov must be a bool"),
    (dict(lr=0.1, foreach="yes"), TypeError, "foreach"),
])
def test_bad_sgd_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        RepOptimizerSGD(make_params(0).values(), **kwargs)


def test_bad_masks_raise_before_state_changes():
    params = make_params(0)
    w = params["conv.weight"]
    with pytest.raises(ValueError, match=r"shape of its parameter \(3, 2, 3, 3\), got \(3, 2, 3\)"):
        RepOptimizerSGD(params.values(), lr=0.1, grad_mult_masks={w: torch.ones(3, 2, 3)})
    with pytest.raises(ValueError, match="not among the optimizer's params"):
        RepOptimizerSGD([w], lr=0.1, grad_mult_masks={params["bn.weight"]: torch.ones(3)})
    with pytest.raises(TypeError, match="keys must be the Parameters themselves"):
        RepOptimizerSGD([w], lr=0.1, grad_mult_masks={"conv.weight": torch.ones(3, 2, 3, 3)})
    with pytest.raises(ValueError, match="finite"):
        RepOptimizerSGD([w], lr=0.1, grad_mult_masks={w: torch.full((3, 2, 3, 3), float("inf"))})
    with pytest.raises(TypeError, match="floating-point"):
        RepOptimizerSGD([w], lr=0.1, grad_mult_masks={w: torch.ones(3, 2, 3, 3, dtype=torch.int64)})
    opt = RepOptimizerSGD([w], lr=0.1, grad_mult_masks={w: torch.full((3, 2, 3, 3), 2.0, dtype=torch.float64)})
    with pytest.raises(ValueError, match="shape"):
        opt.set_grad_mult_mask(w, torch.ones(2))
    assert torch.equal(opt.grad_mult_mask(w), torch.full((3, 2, 3, 3), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="param group: lr must be a finite number >= 0"):
        opt.add_param_group({"params": [params["bn.weight"]], "lr": -1.0})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\), got 1.0"):
        RepOptimizerAdamW([w], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="mask_placement"):
        RepOptimizerAdamW([w], mask_placement="update")
    with pytest.raises(ValueError, match="identity='trainable' needs in_channels == out_channels"):
        grad_mult_mask_from_scales(torch.ones(3), torch.ones(3), 2, identity="trainable")
    with pytest.raises(ValueError, match=r"scale_1x1 must have shape \(3,\)"):
        grad_mult_mask_from_scales(torch.ones(3), torch.ones(2), 2, identity="none")


def test_masked_step_is_mask_times_grad_plus_unmasked_decay():
    """One plain step by hand: W ← W − lr·(M⊙g + λ·W) (SPEC §3: weight decay NOT masked)."""
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    m = torch.tensor([[3.0, 0.5]], dtype=torch.float64)
    opt = RepOptimizerSGD([w], lr=0.1, weight_decay=0.2, grad_mult_masks={w: m})
    w.grad = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    opt.step()
    expected = torch.tensor([[1.0 - 0.1 * (3.0 + 0.2), -2.0 - 0.1 * (0.5 - 0.4)]], dtype=torch.float64)
    assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-15)
