"""SPEC §3: the RepOptimizers' ``fused=True`` mode against the unfused step, torch and the reference.

- CPU SGD: the compiled loop is the unfused step bit for bit (every option, every
  ``nesterov_rounding``, float32 and float64, sizes with a scalar tail, a parameter
  without gradient mid-way), hence without masks ``torch.optim.SGD`` bit for bit, and
  with masks the reference at every iteration (``fused_cpu_sgd``);
- CPU AdamW: the unfused step bit for bit once its ``sqrt`` is correctly rounded (the
  only difference), within ``fused_adamw_vs_unfused`` of the unfused step and
  ``fused_cpu_adamw`` of the reference at every iteration;
- ``state_dict`` round trips between fused and unfused optimizers, both ways;
- bad input (device, dtype, ``foreach=True``, options a device's kernel cannot
  reproduce) raises ``ValueError`` naming the argument before any state changes;
- CUDA (skipped without a device): torch's fused kernels on ``M ⊙ g`` — bit for bit
  ``torch.optim.SGD(fused=True)`` / ``AdamW(fused=True)`` on the masked gradient, within
  ``fused_cuda`` of the unfused step at every iteration.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repspec.reference import optim as ref_optim
from repspec.torch_impl.optimizers import repoptimizer as R
from repspec.torch_impl.optimizers.repoptimizer import RepOptimizerAdamW, RepOptimizerSGD
from tests.strategies import adamw_hparams, seeds, sgd_hparams
from tests.tolerances import assert_close, assert_trees_close

# 67 and 13·3 are no multiple of any vector width: the loops' scalar tails run too
SHAPES = {"conv.weight": (5, 3, 3, 3), "bn.weight": (5,), "linear.weight": (13, 3), "vec": (67,)}
MASKED = ("conv.weight", "linear.weight", "vec")
N_STEPS = 4

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA fused path is not run here")


def make_params(seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype))
            for k, s in SHAPES.items()}


def make_masks(seed, exponent=2) -> dict[str, np.ndarray]:
    """Positive masks for SGD (squares of scales), mixed signs for AdamW (exponent 1)."""
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(0.1, 3.0, SHAPES[k]) * (rng.choice([-1.0, 1.0], SHAPES[k]) if exponent == 1 else 1.0)
            for k in MASKED}


def grads_for(seed, step, params, skip=()):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    return {k: torch.randn(p.shape, generator=g, dtype=torch.float64).to(p) for k, p in params.items()
            if k not in skip}


def set_grads(params, grads):
    for k, p in params.items():
        p.grad = grads[k].clone() if k in grads else None


def torch_masks(params, masks_np):
    return {params[k]: torch.from_numpy(m) for k, m in masks_np.items()}


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def run(make_opt, seed, steps, dtype=torch.float64, device="cpu", skip_step=1, masks_np=None):
    """Params and optimizer after ``steps`` steps (``bn.weight`` has no gradient at ``skip_step``), with the
    params and optimizer state after every step."""
    params = make_params(seed, dtype, device)
    opt = make_opt(params, masks_np if masks_np is not None else make_masks(seed))
    trace = []
    for step in range(steps):
        set_grads(params, grads_for(seed, step, params, ("bn.weight",) if step == skip_step else ()))
        opt.step()
        state = {k: {sk: v.clone() for sk, v in opt.state[p].items() if sk != "grad_mult_mask"}
                 for k, p in params.items() if p in opt.state}
        trace.append(({k: p.detach().clone() for k, p in params.items()}, {k: v for k, v in state.items() if v}))
    return params, opt, trace


def assert_traces_equal(a, b, what):
    for it, ((pa, sa), (pb, sb)) in enumerate(zip(a, b)):
        for k in pa:
            assert torch.equal(pa[k], pb[k]), f"iteration {it}: {k} differs ({what}): max abs " \
                                              f"{(pa[k] - pb[k]).abs().max().item():.3e}"
        assert sa.keys() == sb.keys()
        for k in sa:
            for sk in sa[k]:
                assert torch.equal(sa[k][sk], sb[k][sk]), f"iteration {it}: state {k}.{sk} differs ({what})"


# ------------------------------------------------------------------ CPU SGD: the unfused step bit for bit


@settings(max_examples=12)
@given(hp=sgd_hparams(), seed=seeds, dtype=st.sampled_from([torch.float32, torch.float64]),
       rounding=st.sampled_from(["torch", "original", "original-legacy"]))
def test_fused_cpu_sgd_is_the_unfused_step_bit_for_bit(hp, seed, dtype, rounding):
    def make(fused):
        return lambda ps, m: RepOptimizerSGD(ps.values(), **hp, grad_mult_masks=torch_masks(ps, m), fused=fused,
                                             nesterov_rounding=rounding)
    *_, fused = run(make(True), seed, N_STEPS, dtype)
    *_, plain = run(make(False), seed, N_STEPS, dtype)
    assert_traces_equal(fused, plain, "fused vs unfused")


@given(hp=sgd_hparams(), seed=seeds)
@settings(max_examples=8)
def test_fused_cpu_sgd_without_masks_is_torch_sgd(hp, seed):
    *_, ours = run(lambda ps, m: RepOptimizerSGD(ps.values(), **hp, fused=True), seed, N_STEPS)
    *_, theirs = run(lambda ps, m: torch.optim.SGD(ps.values(), **hp), seed, N_STEPS)
    assert_traces_equal(ours, theirs, "fused RepOptimizerSGD without masks vs torch.optim.SGD")


@settings(max_examples=8)
@given(hp=sgd_hparams(), seed=seeds)
def test_fused_cpu_sgd_equals_reference_every_iteration(hp, seed):
    masks_np = make_masks(seed)
    params, _, trace = run(lambda ps, m: RepOptimizerSGD(ps.values(), **hp, grad_mult_masks=torch_masks(ps, m),
                                                         fused=True), seed, N_STEPS, skip_step=-1)
    ref = ref_optim.SGD(**hp, grad_mult_masks=masks_np)
    p_ref = {k: p.detach().numpy().copy() for k, p in make_params(seed).items()}
    s_ref = ref.init_state(p_ref)
    for it, (p_t, s_t) in enumerate(trace):
        g = {k: v.numpy() for k, v in grads_for(seed, it, params).items()}
        p_ref, s_ref = ref.step(p_ref, g, s_ref)
        assert_trees_close({k: v.numpy() for k, v in p_t.items()}, p_ref, kind="fused_cpu_sgd", iteration=it)
        if hp["momentum"]:
            assert_trees_close({k: s["momentum_buffer"].numpy() for k, s in s_t.items()},
                               {k: s["momentum_buffer"] for k, s in s_ref.items()}, prefix="momentum_buffer.",
                               kind="fused_cpu_sgd", iteration=it)


def test_fused_cpu_sgd_non_contiguous_gradient_takes_the_same_bits():
    """A gradient that is not contiguous goes through the per-tensor step: the same result."""
    hp = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    results = []
    for fused in (True, False):
        w = torch.nn.Parameter(torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4))
        opt = RepOptimizerSGD([w], **hp, fused=fused, grad_mult_masks={w: torch.full((3, 4), 1.5, dtype=w.dtype)})
        for step in range(3):
            w.grad = torch.arange(12.0, dtype=w.dtype).reshape(4, 3).t() * (step + 1) / 7  # a transposed view
            assert not w.grad.is_contiguous()
            opt.step()
        results.append((w.detach().clone(), opt.state[w]["momentum_buffer"]))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# ------------------------------------------------------------------ CPU AdamW


def _exact_sqrt_unfused(monkeypatch):
    """The unfused step with a correctly rounded ``sqrt`` (NumPy's) in place of torch's CPU kernel."""
    monkeypatch.setattr(torch.Tensor, "sqrt", lambda self: torch.from_numpy(np.sqrt(self.detach().numpy())))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("placement, amsgrad, betas", [("grad_and_update", False, (0.9, 0.999)),
                                                       ("grad", True, (0.8, 0.99)),
                                                       ("grad_and_update", True, (0.0, 0.5))])
def test_fused_cpu_adamw_differs_from_the_unfused_step_only_by_sqrt(monkeypatch, dtype, placement, amsgrad, betas):
    """With a correctly rounded sqrt the unfused step gives the fused loop's bits (params and moments): the
    loop does the unfused operations with the same roundings (lerp's two branches: β1 = 0.9, 0.8, 0.0)."""
    hp = dict(lr=1e-2, betas=betas, eps=1e-8, weight_decay=0.1, amsgrad=amsgrad, mask_placement=placement)

    def make(fused):
        return lambda ps, m: RepOptimizerAdamW(ps.values(), **hp, grad_mult_masks=torch_masks(ps, m), fused=fused)
    *_, fused = run(make(True), 3, N_STEPS, dtype, masks_np=make_masks(3, exponent=1))
    with monkeypatch.context() as mp:
        _exact_sqrt_unfused(mp)
        *_, exact = run(make(False), 3, N_STEPS, dtype, masks_np=make_masks(3, exponent=1))
    assert_traces_equal(fused, exact, "fused vs unfused with a correctly rounded sqrt")
    *_, plain = run(make(False), 3, N_STEPS, dtype, masks_np=make_masks(3, exponent=1))
    name = str(dtype).replace("torch.", "")
    for it, ((pa, sa), (pb, sb)) in enumerate(zip(fused, plain)):  # and torch's own sqrt: within the stated bound
        for k in pa:
            assert_close(pa[k].numpy(), pb[k].numpy(), name=k, kind="fused_adamw_vs_unfused", dtype=name,
                         iteration=it)
            for sk in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(sa[k][sk], sb[k][sk]), f"iteration {it}: {k}.{sk}"


@settings(max_examples=8)
@given(hp=adamw_hparams(), seed=seeds, placement=st.sampled_from(["grad_and_update", "grad"]))
def test_fused_cpu_adamw_equals_reference_every_iteration(hp, seed, placement):
    masks_np = make_masks(seed, exponent=1)
    params, _, trace = run(lambda ps, m: RepOptimizerAdamW(ps.values(), **hp, mask_placement=placement, fused=True,
                                                           grad_mult_masks=torch_masks(ps, m)),
                           seed, N_STEPS, skip_step=-1, masks_np=masks_np)
    ref = ref_optim.AdamW(**hp, grad_mult_masks=masks_np, mask_placement=placement)
    p_ref = {k: p.detach().numpy().copy() for k, p in make_params(seed).items()}
    s_ref = ref.init_state(p_ref)
    for it, (p_t, s_t) in enumerate(trace):
        p_ref, s_ref = ref.step(p_ref, {k: v.numpy() for k, v in grads_for(seed, it, params).items()}, s_ref)
        assert_trees_close({k: v.numpy() for k, v in p_t.items()}, p_ref, kind="fused_cpu_adamw", iteration=it)
        for key in ("exp_avg", "exp_avg_sq"):
            assert_trees_close({k: s[key].numpy() for k, s in s_t.items()}, {k: s[key] for k, s in s_ref.items()},
                               prefix=f"{key}.", kind="fused_cpu_adamw", iteration=it)
        assert all(float(s["step"]) == it + 1 for s in s_t.values())


# ------------------------------------------------------------------ state_dict between fused and unfused


@pytest.mark.parametrize("cls", [RepOptimizerSGD, RepOptimizerAdamW])
@pytest.mark.parametrize("saved_fused", [True, False])
def test_state_dict_round_trip_between_fused_and_unfused(cls, saved_fused):
    """Save after 3 steps, load into an optimizer of the other mode (built without masks and with wrong
    hyper-parameters): it keeps its own mode, gets every mask and state entry, and continues exactly as the
    saving optimizer would in that mode."""
    exponent = 2 if cls is RepOptimizerSGD else 1
    hp = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2) if cls is RepOptimizerSGD else \
        dict(lr=1e-2, weight_decay=0.1, amsgrad=True)
    params = make_params(7)
    opt = cls(params.values(), **hp, grad_mult_masks=torch_masks(params, make_masks(7, exponent)), fused=saved_fused)
    for step in range(3):
        set_grads(params, grads_for(7, step, params))
        opt.step()
    saved = _roundtrip(opt.state_dict())
    assert saved["param_groups"][0]["fused"] is saved_fused
    resumed = {k: torch.nn.Parameter(p.detach().clone()) for k, p in params.items()}
    other = cls(resumed.values(), lr=1.0, fused=not saved_fused, **({"amsgrad": True} if exponent == 1 else {}))
    other.load_state_dict(saved)
    assert other.param_groups[0]["fused"] is (not saved_fused) and other.param_groups[0]["lr"] == hp["lr"]
    assert len(other.grad_mult_masks) == len(MASKED)
    opt.param_groups[0]["fused"] = not saved_fused  # the saving optimizer switched to the other mode
    for step in range(3, 6):
        for ps in (params, resumed):
            set_grads(ps, grads_for(7, step, ps))
        opt.step()
        other.step()
        for k in params:
            assert torch.equal(params[k], resumed[k]), f"step {step}: {k}"
            for sk, v in opt.state[params[k]].items():
                assert torch.equal(v, other.state[resumed[k]][sk]), f"step {step}: {k}.{sk}"


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("make, match", [
    (lambda w: RepOptimizerSGD([w.half()], lr=0.1, fused=True), r"fused=True does not support parameter 0 \(torch.float16 on cpu\)"),
    (lambda w: RepOptimizerAdamW([w.to(torch.bfloat16)], fused=True), r"fused=True does not support .*bfloat16"),
    (lambda w: RepOptimizerSGD([w.to("meta")], lr=0.1, fused=True), r"fused=True does not support .* on meta"),
    (lambda w: RepOptimizerSGD([w], lr=0.1, fused=True, foreach=True), "fused=True and foreach=True are exclusive"),
    (lambda w: RepOptimizerSGD([w], lr=0.1, momentum=0.9, nesterov=True, nesterov_rounding="fused"),
     "nesterov_rounding must be one of"),
])
def test_bad_fused_arguments_raise_value_error_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make(torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)))


def test_fused_must_be_a_bool():
    with pytest.raises(TypeError, match="fused must be a bool"):
        RepOptimizerSGD([torch.zeros(1, requires_grad=True)], lr=0.1, fused=1)


def test_unsupported_fused_parameters_are_refused_before_any_state_changes():
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = RepOptimizerSGD([w], lr=0.1, momentum=0.9, fused=True, grad_mult_masks={w: torch.full((4,), 2.0)})
    with pytest.raises(ValueError, match="param group: fused=True does not support"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, dtype=torch.float16))]})
    assert len(opt.param_groups) == 1
    w.grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    before = (w.detach().clone(), opt.state[w]["momentum_buffer"].clone())
    w.data = w.data.half()  # the model moved to a dtype the fused step does not take
    w.grad = torch.ones(4, dtype=torch.float16)
    with pytest.raises(ValueError, match="param group 0: fused=True does not support .* float16"):
        opt.step()
    assert torch.equal(w.detach(), before[0].half()) and torch.equal(opt.state[w]["momentum_buffer"], before[1])
    # a loaded state whose options the fused step cannot run is refused before anything changes
    plain = RepOptimizerSGD([torch.nn.Parameter(torch.ones(4, dtype=torch.float64))], lr=0.1, fused=False,
                            foreach=True)
    sd = plain.state_dict()
    w.data = w.data.double()
    opt.load_state_dict(sd)  # foreach=True in the file: the execution switches stay this optimizer's
    assert opt.param_groups[0]["fused"] is True and opt.param_groups[0]["foreach"] is None


def test_options_a_cuda_kernel_cannot_reproduce_are_refused(monkeypatch):
    """On CUDA the fused step is torch's kernel: Nesterov rounded its way only, the mask on the gradient
    only. Checked here on the 'meta' device standing in for CUDA (no device needed)."""
    monkeypatch.setitem(R.FUSED_DTYPES, "meta", (torch.float32,))
    w = torch.nn.Parameter(torch.zeros(3, device="meta"))
    RepOptimizerSGD([w], lr=0.1, momentum=0.9, nesterov=True, fused=True)
    RepOptimizerSGD([w], lr=0.1, momentum=0.9, nesterov=False, fused=True, nesterov_rounding="original")
    for mode in ("original", "original-legacy"):
        with pytest.raises(ValueError, match=rf"nesterov_rounding must be 'torch' there, got {mode!r}"):
            RepOptimizerSGD([w], lr=0.1, momentum=0.9, nesterov=True, fused=True, nesterov_rounding=mode)
    with pytest.raises(ValueError, match="mask_placement='grad_and_update' needs fused=False there"):
        RepOptimizerAdamW([w], fused=True)
    RepOptimizerAdamW([w], fused=True, mask_placement="grad")


# ------------------------------------------------------------------ CUDA (torch's fused kernels)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_cuda_sgd_is_torch_fused_sgd_on_the_masked_gradient(dtype):
    """Bit for bit ``torch.optim.SGD(fused=True)`` run on ``M ⊙ g``; within ``fused_cuda`` of the unfused step
    at every iteration."""
    hp = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)
    masks_np = make_masks(2)
    *_, ours = run(lambda ps, m: RepOptimizerSGD(ps.values(), **hp, grad_mult_masks=torch_masks(ps, m), fused=True),
                   2, N_STEPS, dtype, "cuda")
    *_, plain = run(lambda ps, m: RepOptimizerSGD(ps.values(), **hp, grad_mult_masks=torch_masks(ps, m),
                                                  fused=False), 2, N_STEPS, dtype, "cuda")
    params = make_params(2, dtype, "cuda")
    theirs = torch.optim.SGD(params.values(), **hp, fused=True)
    for step in range(N_STEPS):
        g = grads_for(2, step, params, ("bn.weight",) if step == 1 else ())
        set_grads(params, {k: v * torch.from_numpy(masks_np[k]).to(v) if k in masks_np else v for k, v in g.items()})
        theirs.step()
        p_o, _ = ours[step]
        for k, p in params.items():
            assert torch.equal(p_o[k], p.detach()), f"step {step}: {k} vs torch.optim.SGD(fused=True)"
            assert_close(p_o[k].cpu().numpy(), plain[step][0][k].cpu().numpy(), name=k, kind="fused_cuda",
                         dtype=str(dtype).replace("torch.", ""), iteration=step)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_cuda_adamw_is_torch_fused_adamw_on_the_masked_gradient(dtype):
    hp = dict(lr=1e-2, weight_decay=0.1, amsgrad=True)
    masks_np = make_masks(4, exponent=1)
    make = lambda fused: lambda ps, m: RepOptimizerAdamW(ps.values(), **hp, mask_placement="grad",  # noqa: E731
                                                         grad_mult_masks=torch_masks(ps, m), fused=fused)
    *_, ours = run(make(True), 4, N_STEPS, dtype, "cuda", skip_step=-1, masks_np=masks_np)
    *_, plain = run(make(False), 4, N_STEPS, dtype, "cuda", skip_step=-1, masks_np=masks_np)
    params = make_params(4, dtype, "cuda")
    theirs = torch.optim.AdamW(params.values(), **hp, fused=True)
    for step in range(N_STEPS):
        g = grads_for(4, step, params)
        set_grads(params, {k: v * torch.from_numpy(masks_np[k]).to(v) if k in masks_np else v for k, v in g.items()})
        theirs.step()
        for k, p in params.items():
            assert torch.equal(ours[step][0][k], p.detach()), f"step {step}: {k} vs torch.optim.AdamW(fused=True)"
            assert_close(ours[step][0][k].cpu().numpy(), plain[step][0][k].cpu().numpy(), name=k, kind="fused_cuda",
                         dtype=str(dtype).replace("torch.", ""), iteration=step)


@cuda
@pytest.mark.cuda
def test_fused_cuda_state_dict_round_trip_to_cpu_and_unfused():
    """A CUDA fused state (``step`` on the device) loads into an unfused optimizer and back."""
    params = make_params(9, torch.float32, "cuda")
    opt = RepOptimizerAdamW(params.values(), mask_placement="grad", fused=True,
                            grad_mult_masks=torch_masks(params, make_masks(9, 1)))
    set_grads(params, grads_for(9, 0, params))
    opt.step()
    assert opt.state[params["vec"]]["step"].device.type == "cuda"
    plain = RepOptimizerAdamW(params.values(), mask_placement="grad")
    plain.load_state_dict(_roundtrip(opt.state_dict()))
    set_grads(params, grads_for(9, 1, params))
    plain.step()
    opt.load_state_dict(_roundtrip(plain.state_dict()))
    set_grads(params, grads_for(9, 2, params))
    opt.step()
    assert float(opt.state[params["vec"]]["step"]) == 3.0


def test_fused_cpu_non_finite_values_propagate_as_in_the_unfused_step(monkeypatch):
    """NaN and ±inf in a gradient go where the unfused step sends them (SGD; AdamW with AMSGrad's NaN-propagating
    maximum, against the unfused step with a correctly rounded sqrt)."""
    def make(cls, fused):
        hp = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2) if cls is RepOptimizerSGD else \
            dict(lr=1e-2, amsgrad=True)
        return lambda ps, m: cls(ps.values(), **hp, grad_mult_masks=torch_masks(ps, m), fused=fused)

    finite = grads_for

    def bad_grads(seed, step, params, skip=()):
        g = finite(seed, step, params, skip)
        if step == 1:
            g["vec"][[3, 40]] = float("nan")
            g["vec"][[5, 66]] = float("inf")
            g["conv.weight"][0, 0, 0, 0] = -float("inf")
        return g

    monkeypatch.setitem(globals(), "grads_for", bad_grads)  # run() draws its gradients through this name
    for cls in (RepOptimizerSGD, RepOptimizerAdamW):
        *_, fused = run(make(cls, True), 5, N_STEPS)
        with monkeypatch.context() as mp:
            if cls is RepOptimizerAdamW:
                _exact_sqrt_unfused(mp)
            *_, plain = run(make(cls, False), 5, N_STEPS)
        assert not torch.isfinite(fused[-1][0]["vec"]).all()
        for it, ((pa, sa), (pb, sb)) in enumerate(zip(fused, plain)):
            for k in pa:
                torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=0, equal_nan=True,
                                           msg=lambda m: f"{cls.__name__} iteration {it}, {k}: {m}")
                for sk in sa.get(k, {}):
                    torch.testing.assert_close(sa[k][sk], sb[k][sk], rtol=0, atol=0, equal_nan=True)


def test_conformance_alias_torch_fused_is_the_fused_step():
    """``repspec verify --impl torch-fused`` runs RepOptimizerSGD(fused=True): the default adapter's bits."""
    from repspec.conformance.runner import load_adapter

    fused, plain = load_adapter("torch-fused"), load_adapter("torch")
    assert fused.fused and not plain.fused
    rng = np.random.default_rng(0)
    w, g, buf, m = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=(4, 3, 3, 3)), rng.normal(size=(4, 3, 3, 3)), \
        rng.uniform(0.5, 2.0, (4, 3, 3, 3))
    hp = dict(grad_mult_mask=m, lr=0.1, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-2)
    (pa, ba), (pb, bb) = fused.repopt_sgd_step(w, g, buf, **hp), plain.repopt_sgd_step(w, g, buf, **hp)
    assert np.array_equal(pa, pb) and np.array_equal(ba, bb)
