"""SPEC §3 optimizers in the reference: SGD / RepOpt-SGD / AdamW / masked AdamW, and their torch peers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from repspec.reference.optim import SGD, AdamW, adamw_step, official_weight_decay, repopt_sgd_step, sgd_step
from tests import strategies as S
from tests.tolerances import assert_close

torch = pytest.importorskip("torch")

SHAPES = {"a.conv.weight": (3, 2, 3, 3), "a.bn.weight": (3,), "head.bias": (4,)}


def _params_and_grads(rng, n_steps):
    params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grads = [{k: rng.normal(size=s) * 10.0 ** rng.uniform(-3, 0) for k, s in SHAPES.items()} for _ in range(n_steps)]
    return params, grads


def _run_reference(opt, params, grads_seq):
    state = opt.init_state(params)
    out = []
    for grads in grads_seq:
        params, state = opt.step(params, grads, state)
        out.append((params, state))
    return out


def _run_torch(make_opt, params, grads_seq, decay_map=None):
    tp = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in params.items()}
    if decay_map is None:
        opt = make_opt(list(tp.values()))
    else:  # one param group per parameter, each with its own weight decay
        opt = make_opt([{"params": [p], "weight_decay": decay_map.get(k, 0.0)} for k, p in tp.items()])
    out = []
    for grads in grads_seq:
        for k, p in tp.items():
            p.grad = torch.tensor(grads[k], dtype=torch.float64)
        opt.step()
        out.append(({k: p.detach().numpy().copy() for k, p in tp.items()},
                    {k: {sk: (sv.item() if sk == "step" else sv.numpy().copy()) for sk, sv in opt.state[p].items()}
                     for k, p in tp.items()}))
    return out


# ------------------------------------------------------------------------- SGD


def test_sgd_step_official_order_mask_then_unmasked_decay():
    w, g, m = np.array([2.0]), np.array([1.0]), np.array([3.0])
    # d = 3·1 + 0.5·2 = 4; first step buf = d = 4; nesterov d = 4 + 0.9·4 = 7.6; W = 2 − 0.1·7.6
    w1, buf = sgd_step(w, g, None, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5, grad_mult_mask=m)
    np.testing.assert_allclose(w1, [2.0 - 0.76], rtol=1e-15)
    np.testing.assert_allclose(buf, [4.0], rtol=0)
    # second step with dampening: buf = 0.9·4 + (1 − 0.25)·d
    w2, buf2 = sgd_step(w1, g, buf, lr=0.1, momentum=0.9, dampening=0.25, weight_decay=0.5, grad_mult_mask=m)
    d = 3.0 + 0.5 * w1
    np.testing.assert_allclose(buf2, 0.9 * 4.0 + 0.75 * d, rtol=1e-15)
    np.testing.assert_allclose(w2, w1 - 0.1 * buf2, rtol=1e-15)
    # momentum 0: no buffer
    w3, none = sgd_step(w, g, None, lr=0.1, weight_decay=0.5, grad_mult_mask=m)
    assert none is None
    np.testing.assert_allclose(w3, [2.0 - 0.1 * 4.0], rtol=1e-15)


def test_repopt_sgd_step_requires_mask():
    with pytest.raises(TypeError, match="grad_mult_mask is required"):
        repopt_sgd_step(np.ones(2), np.ones(2), grad_mult_mask=None, lr=0.1)
    w, _ = repopt_sgd_step(np.ones(2), np.ones(2), grad_mult_mask=np.array([2.0, 3.0]), lr=0.1)
    np.testing.assert_allclose(w, [0.8, 0.7], rtol=1e-15)


def test_sgd_validation():
    w = np.ones(2)
    with pytest.raises(ValueError, match="nesterov requires momentum > 0 and dampening == 0"):
        sgd_step(w, w, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov requires"):
        SGD(0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        sgd_step(w, w, lr=-0.1)
    with pytest.raises(ValueError, match="momentum must be a finite number >= 0"):
        SGD(0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        sgd_step(w, w, lr=0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"weight_decay\['x'\] must be a finite number >= 0"):
        SGD(0.1, weight_decay={"x": -1.0})
    with pytest.raises(ValueError, match=r"grad must have shape \(2\)"):
        sgd_step(w, np.ones(3), lr=0.1)
    with pytest.raises(ValueError, match=r"grad_mult_mask must have shape \(2\)"):
        sgd_step(w, w, lr=0.1, grad_mult_mask=np.ones((2, 1)))
    with pytest.raises(ValueError, match="grad_mult_mask must contain only finite"):
        sgd_step(w, w, lr=0.1, grad_mult_mask=np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="momentum_buffer must be None when momentum == 0"):
        sgd_step(w, w, w, lr=0.1)
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        sgd_step(w, w, lr=0.1, momentum=0.9, nesterov=1)
    opt = SGD(0.1, grad_mult_masks={"typo.weight": np.ones(2)})
    with pytest.raises(ValueError, match=r"grad_mult_masks names parameters that are not being optimized: \['typo"):
        opt.step({"w": w}, {"w": w}, {})
    with pytest.raises(ValueError, match=r"grads is missing entries for \['w'\]"):
        SGD(0.1).step({"w": w}, {}, {})


def test_sgd_is_pure():
    p, g = {"w": np.ones(3)}, {"w": np.full(3, 2.0)}
    opt = SGD(0.1, momentum=0.9)
    s0 = opt.init_state(p)
    p1, s1 = opt.step(p, g, s0)
    assert s0 == {"w": {}} and np.all(p["w"] == 1.0) and "momentum_buffer" in s1["w"]
    _, s2 = opt.step(p1, g, s1)
    np.testing.assert_array_equal(s1["w"]["momentum_buffer"], np.full(3, 2.0))  # not mutated by the 2nd step
    assert set(SGD(0.1).step(p, g, s0)[1]["w"]) == set()  # momentum 0: no buffer key, like torch


@given(S.sgd_hparams(), st.booleans(), S.seeds)
def test_sgd_matches_torch(hp, per_name_decay, seed):
    """Reference SGD (no mask) == torch.optim.SGD over 5 steps in float64: params and momentum_buffer."""
    rng = S.rng_from(seed)
    params, grads = _params_and_grads(rng, 5)
    decay = {"a.conv.weight": hp["weight_decay"], "head.bias": 0.5 * hp["weight_decay"]} if per_name_decay else None
    ref = _run_reference(SGD(**{**hp, "weight_decay": decay if decay else hp["weight_decay"]}), params, grads)
    hp_t = {k: v for k, v in hp.items() if k != "weight_decay"}
    peer = _run_torch(lambda ps: torch.optim.SGD(ps, weight_decay=hp["weight_decay"] if decay is None else 0.0, **hp_t),
                      params, grads, decay_map=decay)
    for i, ((rp, rs), (tp, ts)) in enumerate(zip(ref, peer)):
        for k in SHAPES:
            assert_close(rp[k], tp[k], name=k, iteration=i)
            assert set(rs[k]) == ({"momentum_buffer"} if hp["momentum"] else set())
            if hp["momentum"]:
                assert_close(rs[k]["momentum_buffer"], ts[k]["momentum_buffer"], name=f"{k}.momentum_buffer",
                             iteration=i)


# ----------------------------------------------------------------------- AdamW


@given(S.adamw_hparams(), st.booleans(), S.seeds)
def test_adamw_matches_torch(hp, per_name_decay, seed):
    """Reference AdamW (no mask) == torch.optim.AdamW over 5 steps in float64: params, step, exp_avg, exp_avg_sq."""
    rng = S.rng_from(seed)
    params, grads = _params_and_grads(rng, 5)
    decay = {"a.conv.weight": hp["weight_decay"], "a.bn.weight": 0.3} if per_name_decay else None
    ref = _run_reference(AdamW(**{**hp, "weight_decay": decay if decay else hp["weight_decay"]}), params, grads)
    hp_t = {k: v for k, v in hp.items() if k != "weight_decay"}
    peer = _run_torch(lambda ps: torch.optim.AdamW(ps, weight_decay=hp["weight_decay"] if decay is None else 0.0,
                                                   **hp_t), params, grads, decay_map=decay)
    for i, ((rp, rs), (tp, ts)) in enumerate(zip(ref, peer)):
        for k in SHAPES:
            assert_close(rp[k], tp[k], name=k, iteration=i)
            assert set(rs[k]) == {"step", "exp_avg", "exp_avg_sq"} == set(ts[k])
            assert rs[k]["step"] == ts[k]["step"] == i + 1
            for sk in ("exp_avg", "exp_avg_sq"):
                assert_close(rs[k][sk], ts[k][sk], name=f"{k}.{sk}", iteration=i)


def test_masked_adamw_matches_official_formula():
    """Official RepOptimizerAdamW: g ← M⊙g before the moments, step uses M ⊙ exp_avg."""
    rng = np.random.default_rng(0)
    w, mask = rng.normal(size=(2, 3)), rng.uniform(0.5, 2.0, size=(2, 3))
    gs = [rng.normal(size=(2, 3)) for _ in range(3)]
    lr, (b1, b2), eps, lam = 0.01, (0.9, 0.999), 1e-8, 0.1
    exp_w, m, v = w.copy(), 0.0, 0.0
    got, state = w, None
    for t, g in enumerate(gs, start=1):
        mg = mask * g
        exp_w = exp_w * (1 - lr * lam)
        m, v = b1 * m + (1 - b1) * mg, b2 * v + (1 - b2) * mg * mg
        exp_w = exp_w - (lr / (1 - b1 ** t)) * mask * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
        got, state = adamw_step(got, g, state, lr=lr, betas=(b1, b2), eps=eps, weight_decay=lam, grad_mult_mask=mask)
        assert_close(got, exp_w, name="W", iteration=t)
        assert_close(state["exp_avg"], m, name="exp_avg", iteration=t)


def test_adamw_validation():
    w = np.ones(2)
    with pytest.raises(ValueError, match=r"betas\[0\] must be in \[0, 1\)"):
        adamw_step(w, w, betas=(1.0, 0.999))
    with pytest.raises(TypeError, match="betas must be a pair"):
        AdamW(betas=0.9)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        AdamW(eps=-1e-8)
    with pytest.raises(ValueError, match="mask_placement must be one of"):
        adamw_step(w, w, mask_placement="update")
    with pytest.raises(ValueError, match="state must be empty or hold"):
        adamw_step(w, w, {"step": 1.0})
    with pytest.raises(ValueError, match=r"state\['step'\] must be a whole number >= 1"):
        adamw_step(w, w, {"step": 0.5, "exp_avg": w, "exp_avg_sq": w})
    with pytest.raises(ValueError, match=r"state\['exp_avg'\] must have shape \(2\)"):
        adamw_step(w, w, {"step": 1.0, "exp_avg": np.ones(3), "exp_avg_sq": w})


# ------------------------------------------------------------- weight-decay map


def test_official_weight_decay_map():
    params = {"s.conv.weight": np.ones((2, 2, 3, 3)), "s.conv_1x1.weight": np.ones((2, 2, 1, 1)),
              "s.scale_identity.weight": np.ones(2), "s.scale_conv.weight": np.ones(2), "s.bn.weight": np.ones(2),
              "s.bn.bias": np.ones(2), "linear.weight": np.ones((3, 2)), "linear.bias": np.ones(3)}
    assert official_weight_decay(params, 0.1) == {
        "s.conv.weight": 0.1, "s.conv_1x1.weight": 0.1, "s.scale_identity.weight": 0.1, "s.scale_conv.weight": 0.0,
        "s.bn.weight": 0.0, "s.bn.bias": 0.0, "linear.weight": 0.1, "linear.bias": 0.0}
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        official_weight_decay(params, -0.1)
