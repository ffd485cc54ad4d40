"""RepOptimizer construction and arithmetic as the original RepOptimizers code has them."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repspec.core.vocabulary import NESTEROV_ROUNDINGS, RENAMED_NESTEROV_ROUNDINGS
from repspec.torch_impl import (
    RepOptimizerSGD,
    create_model,
    csla_equivalent_kernel,
    initial_scales,
    reinit_from_scales,
    scales_from_official,
    scales_to_official,
)
from repspec.torch_impl.optimizers.repoptimizer import target_blocks
from repspec.torch_impl.optimizers.scales import ScaleFileError


def _problem(seed: int, dtype):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3, 3, 3), (4,), (5, 4), (67,)]  # 67: not a multiple of any vector width (the loops' tails)
    params = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    masks = {0: torch.rand(shapes[0], generator=g, dtype=dtype) * 2, 3: torch.rand(shapes[3], generator=g,
                                                                                   dtype=dtype)}
    grads = [[torch.randn(s, generator=g, dtype=dtype) for s in shapes] for _ in range(12)]
    return params, masks, grads


#: the versions of RepOptimizers' ``repoptimizer/repoptimizer_sgd.py`` transcribed below, and the mode of each
ORIGINAL_VERSIONS = {"head": "original", "legacy": "original-legacy"}


def original_repopt_sgd(params, masks, grads, *, lr, momentum, weight_decay, nesterov, version):
    """Independent transcription of RepOptimizers' ``repoptimizer_sgd.py`` ``step``: the original's operations
    in their order. Its Nesterov line differs between versions:

    - ``'head'`` (the current head, commit c52651e): ``d_p = d_p + buf * momentum``;
    - ``'legacy'`` (before, e.g. commit 1d41318): ``d_p = d_p.add(momentum, buf)``, torch's deprecated
      ``add(Number alpha, Tensor other)`` overload.
    """
    ps = [p.clone() for p in params]
    bufs = [None] * len(ps)
    for step_grads in grads:
        for j, p in enumerate(ps):
            d_p = step_grads[j] * masks[j] if j in masks else step_grads[j].clone()
            if weight_decay != 0:
                d_p.add_(p, alpha=weight_decay)
            if momentum != 0:
                if bufs[j] is None:
                    bufs[j] = torch.clone(d_p).detach()
                else:
                    bufs[j].mul_(momentum).add_(d_p, alpha=1)
                if nesterov:
                    if version == "head":
                        d_p = d_p + bufs[j] * momentum
                    else:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # the deprecated add(Number, Tensor) overload
                            d_p = d_p.add(momentum, bufs[j])
                else:
                    d_p = bufs[j]
            p.add_(d_p, alpha=-lr)
    return ps


def run_ours(params, masks, grads, *, foreach, fused=False, **hp):
    ps = [p.clone().requires_grad_() for p in params]
    opt = RepOptimizerSGD(ps, grad_mult_masks={ps[j]: m for j, m in masks.items()}, foreach=foreach, fused=fused,
                          **hp)
    for step_grads in grads:
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in ps]


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64]),
       path=st.sampled_from(["single", "foreach", "fused"]), wd=st.sampled_from([0.0, 1e-4, 0.05]))
def test_nesterov_roundings_match_the_versions_they_are_named_after(seed, dtype, path, wd):
    """'original' == the original step at its current head, 'original-legacy' == the step before that
    change, bit for bit (float32 and float64; per-tensor, foreach and fused CPU paths); the default 'torch'
    == torch.optim.SGD bit for bit."""
    params, masks, grads = _problem(seed, dtype)
    hp = dict(lr=0.1, momentum=0.9, weight_decay=wd, nesterov=True)
    run = dict(foreach=path == "foreach", fused=path == "fused")
    for version, mode in ORIGINAL_VERSIONS.items():
        want = original_repopt_sgd(params, masks, grads, version=version, **hp)
        got = run_ours(params, masks, grads, nesterov_rounding=mode, **run, **hp)
        for j, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a, b), f"{mode} vs the {version} version, param {j}: max abs diff " \
                                      f"{(a - b).abs().max().item():.3e}"
    ref = [p.clone().requires_grad_() for p in params]
    sgd = torch.optim.SGD(ref, foreach=run["foreach"], **hp)
    for step_grads in grads:
        for p, g in zip(ref, step_grads):
            p.grad = g.clone()
        sgd.step()
    got_default = run_ours(params, {}, grads, **run, **hp)
    for j, (a, b) in enumerate(zip(got_default, ref)):
        assert torch.equal(a, b.detach()), f"default vs torch.optim.SGD, param {j}"


def test_the_two_original_versions_round_differently():
    """The head's two roundings differ from the legacy one-rounding form (else the test above could not
    tell the modes apart); the spelling ``d_p.add(buf, momentum)`` (positional alpha) does not run on this
    torch, so the one-rounding form the legacy code ran is ``add(momentum, buf)``."""
    params, masks, grads = _problem(0, torch.float64)
    hp = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    a = original_repopt_sgd(params, masks, grads, version="head", **hp)
    b = original_repopt_sgd(params, masks, grads, version="legacy", **hp)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(TypeError):
        torch.ones(2).add(torch.ones(2), 0.9)


def test_nesterov_rounding_is_validated_and_stored_per_group():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="nesterov_rounding must be one of"):
        RepOptimizerSGD([w], lr=0.1, nesterov_rounding="fma")
    for old, new in RENAMED_NESTEROV_ROUNDINGS.items():  # earlier names: refused, naming the modes
        with pytest.raises(ValueError, match=rf"nesterov_rounding={old!r} is an earlier name.*'original-legacy'.*"
                                             rf"had the arithmetic of {new!r}"):
            RepOptimizerSGD([w], lr=0.1, momentum=0.9, nesterov=True, nesterov_rounding=old)
    opt = RepOptimizerSGD([w], lr=0.1, momentum=0.9, nesterov=True, nesterov_rounding="original")
    assert opt.param_groups[0]["nesterov_rounding"] == "original"
    assert opt.state_dict()["param_groups"][0]["nesterov_rounding"] == "original"
    with pytest.raises(ValueError, match="param group: nesterov_rounding must be one of"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "nesterov_rounding": "fused"})
    assert len(opt.param_groups) == 1 and set(NESTEROV_ROUNDINGS) == {"torch", "original", "original-legacy"}


@pytest.mark.parametrize("old", sorted(RENAMED_NESTEROV_ROUNDINGS))
def test_state_saved_under_an_earlier_mode_name_resumes_with_its_arithmetic(old):
    """A state dict written before the renaming (its group says 'official' or 'separate') loads under the
    new name, with a warning, and continues exactly as the mode of the same arithmetic."""
    params, masks, grads = _problem(5, torch.float64)
    hp = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    new = RENAMED_NESTEROV_ROUNDINGS[old]
    want = run_ours(params, masks, grads, foreach=False, nesterov_rounding=new, **hp)
    ps = [p.clone().requires_grad_() for p in params]
    first = RepOptimizerSGD(ps, grad_mult_masks={ps[j]: m for j, m in masks.items()}, nesterov_rounding=new, **hp)
    for step_grads in grads[:6]:
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        first.step()
    sd = first.state_dict()
    sd["param_groups"][0]["nesterov_rounding"] = old  # as an earlier version saved it
    resumed = RepOptimizerSGD(ps, lr=1.0)
    with pytest.warns(UserWarning, match=rf"nesterov_rounding {old!r} \(an earlier name\) is loaded as {new!r}"):
        resumed.load_state_dict(sd)
    assert resumed.param_groups[0]["nesterov_rounding"] == new and sd["param_groups"][0]["nesterov_rounding"] == old
    for step_grads in grads[6:]:
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        resumed.step()
    assert all(torch.equal(a.detach(), b) for a, b in zip(ps, want))


def test_original_call_order_is_accepted():
    """``RepOptimizerSGD(grad_mult_map, params, lr=…)`` (the original's call) == repspec's keyword form."""
    params, masks, grads = _problem(3, torch.float64)
    hp = dict(lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=True)
    ps = [p.clone().requires_grad_() for p in params]
    opt = RepOptimizerSGD({ps[j]: m for j, m in masks.items()}, ps, **hp)
    assert torch.equal(opt.grad_mult_mask(ps[0]), masks[0])
    for step_grads in grads:
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        opt.step()
    want = run_ours(params, masks, grads, foreach=False, **hp)
    assert all(torch.equal(a.detach(), b) for a, b in zip(ps, want))
    # positional hyper-parameters in the original's order (lr, momentum, dampening, weight_decay, nesterov)
    qs = [p.clone().requires_grad_() for p in params]
    opt2 = RepOptimizerSGD({qs[0]: masks[0]}, qs, 0.05, 0.9, 0.0, 1e-4, True)
    g0 = opt2.param_groups[0]
    assert (g0["lr"], g0["momentum"], g0["weight_decay"], g0["nesterov"]) == (0.05, 0.9, 1e-4, True)


@pytest.mark.parametrize("call, match", [
    (lambda m, ps: RepOptimizerSGD(m, lr=0.1), "no params follow"),
    (lambda m, ps: RepOptimizerSGD(m, ps, lr=0.1, grad_mult_masks=m), "masks twice"),
    (lambda m, ps: RepOptimizerSGD(ps, 0.1, lr=0.1), "multiple values for 'lr'"),
    (lambda m, ps: RepOptimizerSGD(ps, lr=0.1, betas=(0.9, 0.9)), "unexpected keyword argument 'betas'"),
    (lambda m, ps: RepOptimizerSGD(ps), "missing required argument 'lr'"),
])
def test_bad_constructor_calls_name_the_cause(call, match):
    w = torch.zeros(2, 2, requires_grad=True)
    with pytest.raises(TypeError, match=match):
        call({w: torch.ones(2, 2)}, [w])


# --------------------------------------------------------------- per-block tuples <-> keyed scales


def test_scales_from_official_tuples_round_trip():
    model = create_model("repopt_vgg_tiny32", 3)
    keyed = initial_scales(model)
    g = torch.Generator().manual_seed(0)
    keyed = {k: v + torch.rand(v.shape, generator=g, dtype=v.dtype) for k, v in keyed.items()}
    tuples = scales_to_official(keyed, model)
    # independent: the original extract_scales order, (identity, 1x1, conv) or (1x1, conv), model order
    for (prefix, block), t in zip(target_blocks(model), tuples):
        want = ([keyed[f"{prefix}.scale_identity.weight"]] if block.has_identity else []) + \
            [keyed[f"{prefix}.scale_1x1.weight"], keyed[f"{prefix}.scale_conv.weight"]]
        assert len(t) == len(want) and all(a is b for a, b in zip(t, want)), prefix
    back = scales_from_official(tuples, "repopt_vgg_tiny32")
    assert list(back) == sorted(back, key=list(keyed).index) and set(back) == set(keyed)
    assert all(torch.equal(back[k], keyed[k]) for k in keyed)
    assert all(torch.equal(a, b) for a, b in zip(scales_from_official(tuples, model).values(), back.values()))


@pytest.mark.parametrize("mutate, match", [
    (lambda t: t[:-1], "tuples for a model with"),
    (lambda t: [t[0][:1]] + t[1:], "must have 2 entries"),
    (lambda t: [(t[0][0], t[0][1][:3])] + t[1:], "must have 16 values"),
    (lambda t: [(t[0][0], t[0][1].long())] + t[1:], "floating-point"),
])
def test_scales_from_official_rejects_bad_tuples(mutate, match):
    model = create_model("repopt_vgg_tiny32", 3)
    tuples = scales_to_official(initial_scales(model), model)
    with pytest.raises(ScaleFileError, match=match):
        scales_from_official(mutate(list(tuples)), model)


# ------------------------------------------------------------------- reinit with given kernels


def test_reinit_from_scales_with_given_kernels_and_current_weight():
    """``kernels=`` and ``k3_from_weight=True`` (the original handler's K3 = the conv's weight)."""
    model = create_model("repopt_vgg_tiny8", 3).double()
    scales = {k: v * 1.5 for k, v in initial_scales(model).items()}
    g = torch.Generator().manual_seed(1)
    blocks = target_blocks(model)
    given_k = {p: (torch.randn(b.conv.weight.shape, generator=g, dtype=torch.float64),
                   torch.randn(b.conv.out_channels, b.conv.in_channels, 1, 1, generator=g, dtype=torch.float64))
               for p, b in blocks}
    reinit_from_scales(model, scales, kernels=given_k)
    for p, b in blocks:
        d = scales.get(f"{p}.scale_identity.weight")
        want = csla_equivalent_kernel(*given_k[p], scales[f"{p}.scale_conv.weight"], scales[f"{p}.scale_1x1.weight"],
                                      d)
        assert torch.equal(b.conv.weight, want), p
    current = {p: b.conv.weight.detach().clone() for p, b in blocks}
    k1_only = {p: (None, k1) for p, (_, k1) in given_k.items()}
    reinit_from_scales(model, scales, kernels=k1_only, k3_from_weight=True)
    for p, b in blocks:
        d = scales.get(f"{p}.scale_identity.weight")
        want = csla_equivalent_kernel(current[p], given_k[p][1], scales[f"{p}.scale_conv.weight"],
                                      scales[f"{p}.scale_1x1.weight"], d)
        assert torch.equal(b.conv.weight, want), p
    with pytest.raises(TypeError, match="generator is required"):
        reinit_from_scales(model, scales, k3_from_weight=True)
    before = {p: b.conv.weight.clone() for p, b in blocks}
    with pytest.raises(ValueError, match=r"K3 must have shape"):
        bad = dict(given_k)
        bad["stage1.1"] = (torch.zeros(1, 1, 3, 3, dtype=torch.float64), None)
        reinit_from_scales(model, scales, torch.Generator(), kernels=bad)
    assert all(torch.equal(before[p], b.conv.weight) for p, b in blocks), "weights changed before validation"


from hypothesis import given, settings  # noqa: E402

from .strategies import vggnet_layouts  # noqa: E402


@settings(deadline=None)
@given(layout=vggnet_layouts(max_blocks=5, max_channels=6))
def test_scale_tuples_round_trip_on_any_layout(layout):
    """``scales_from_official(scales_to_official(s)) == s`` key by key, and every tuple has 3 entries exactly
    where the block has an identity branch (in == out, stride 1)."""
    arch = {k: layout[k] for k in ("num_blocks", "widths", "strides", "in_channels")}
    model = create_model("repopt_vgg_tiny8", num_classes=layout["num_classes"], **arch)
    g = torch.Generator().manual_seed(sum(layout["widths"]))
    keyed = {k: v + torch.rand(v.shape, generator=g, dtype=v.dtype) for k, v in initial_scales(model).items()}
    tuples = scales_to_official(keyed, model)
    for (prefix, block), t in zip(target_blocks(model), tuples):
        assert len(t) == (3 if block.has_identity else 2), prefix
    back = scales_from_official(tuples, model)
    assert set(back) == set(keyed) and all(torch.equal(back[k], keyed[k]) for k in keyed)
