"""SPEC §3 + §6: the torch RepOptimizer, HyperSearch and the RepOpt theorem, iteration by iteration.

1. RepOpt-VGG (target blocks) + ``build_repoptimizer`` == reference ``Network(RepOptTargetBlock…)``
   + reference ``SGD(grad_mult_masks=…)``: loss, logits, params, BN buffers and momentum
   buffers after every step.
2. ``hs_vgg`` + ``train_hypersearch`` (official weight-decay groups) == reference
   ``HyperSearchBlock`` network + plain reference SGD; the extracted scales equal the
   reference's.
3. The theorem in torch, whole network: RepOpt-VGG + RepOptimizerSGD == CSLA model +
   ``torch.optim.SGD`` at every iteration (``W'`` vs the CSLA equivalent kernel, logits,
   loss, BN state); float64 with the ``theorem`` tolerance, one float32 run with float32's.

Random small networks (1–4 blocks, 1–8 channels, 4–10 px, strides 1/2, batch 2–6) from
``tests.strategies.vggnet_layouts``; device-parametrized (CUDA skipped when absent; TF32 off).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from repspec.reference import optim as ref_optim
from repspec.reference import repopt as ref_repopt
from repspec.reference.network import train
from repspec.torch_impl.optimizers.hypersearch import build_hypersearch_optimizer, extract_scales, train_hypersearch
from repspec.torch_impl.modules.interop import module_arrays
from tests.twins import reference_network_for
from repspec.torch_impl.modules.models import create_model, expected_scale_keys, repopt_from_csla
from repspec.torch_impl.optimizers.repoptimizer import build_repoptimizer, weight_decay_groups
from tests.strategies import seeds, sgd_hparams, vggnet_layouts
from tests.tolerances import assert_close, assert_trees_close

N_ITER = 5

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                reason="no CUDA device")]),
]


@pytest.fixture(scope="module", params=DEVICES)
def device(request):
    if request.param == "cuda":
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield torch.device("cpu")


def arch(layout) -> dict:
    return {k: layout[k] for k in ("num_blocks", "widths", "strides", "in_channels")}


def random_scales(layout, seed) -> dict[str, torch.Tensor]:
    """Searched-looking scales: α3, α1 in ±[0.2, 1.5] (signs vary, as in the published files), d in [0.3, 1.5]."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in expected_scale_keys("repopt_vgg_tiny8", **arch(layout)).items():
        if key.endswith("scale_identity.weight"):
            v = rng.uniform(0.3, 1.5, shape)
        else:
            v = rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape, p=[0.2, 0.8])
        out[key] = torch.from_numpy(v)
    return out


def batches_for(layout, seed, n=N_ITER):
    rng = np.random.default_rng(seed + 1)
    shape = (layout["batch"], layout["in_channels"], *layout["hw"])
    return [(rng.normal(size=shape), rng.integers(0, layout["num_classes"], layout["batch"])) for _ in range(n)]


def to_torch(batch, device, dtype):
    x, y = batch
    return torch.as_tensor(x, dtype=dtype, device=device), torch.as_tensor(y, dtype=torch.int64, device=device)


def torch_momentum_buffers(model, opt) -> dict[str, np.ndarray]:
    out = {}
    for name, p in model.named_parameters():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf.detach().cpu().double().numpy()
    return out


def ref_momentum_buffers(record) -> dict[str, np.ndarray]:
    return {k: s["momentum_buffer"] for k, s in record.optimizer_state.items() if "momentum_buffer" in s}


def check_against_records(model, opt, records, losses, logits, *, kind="exact_math"):
    for it, rec in enumerate(records):
        assert_close(losses[it], rec.loss, name="loss", iteration=it, kind=kind)
        assert_close(logits[it], rec.logits, name="logits", iteration=it, kind=kind)
    params, buffers = module_arrays(model)
    last = records[-1]
    assert_trees_close(params, last.params, iteration=last.iteration, kind=kind)
    assert_trees_close(buffers, last.buffers, iteration=last.iteration, kind=kind)
    assert_trees_close(torch_momentum_buffers(model, opt), ref_momentum_buffers(last), prefix="momentum_buffer.",
                       iteration=last.iteration, kind=kind)


# --------------------------------------------------------------- 1. RepOpt-VGG vs reference


@given(layout=vggnet_layouts(), hp=sgd_hparams(), seed=seeds, no_decay_bn=st.booleans(), foreach=st.booleans())
def test_repopt_vgg_matches_reference(device, layout, hp, seed, no_decay_bn, foreach):
    scales = random_scales(layout, seed)
    model = create_model("repopt_vgg_tiny8", layout["num_classes"], scales=scales, seed=seed % 2**31,
                         **arch(layout)).to(device=device, dtype=torch.float64)
    net = reference_network_for(model)
    params, buffers = module_arrays(model)
    masks = {}
    for prefix, block in net.blocks:
        ident = "trainable" if (block.in_channels == block.out_channels and block.stride == 1) else "none"
        masks[f"{prefix}.conv.weight"] = ref_repopt.grad_mult_mask(
            scales[f"{prefix}.scale_conv.weight"].numpy(), scales[f"{prefix}.scale_1x1.weight"].numpy(),
            block.in_channels, identity=ident)
    trainable = {k: params[k] for k in net.trainable_names()}
    decay = ref_optim.official_weight_decay(trainable, hp["weight_decay"]) if no_decay_bn else hp["weight_decay"]
    ref_sgd = ref_optim.SGD(**{**hp, "weight_decay": decay}, grad_mult_masks=masks)
    batches = batches_for(layout, seed)
    records = train(net, params, buffers, ref_sgd, batches, N_ITER)

    opt = build_repoptimizer(model, scales, no_decay_bn=no_decay_bn, foreach=foreach, **hp)
    model.train()
    losses, logits = [], []
    for it, batch in enumerate(batches):
        x, y = to_torch(batch, device, torch.float64)
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        logits.append(out.detach().cpu().numpy())
        p_now, b_now = module_arrays(model)
        assert_trees_close(p_now, records[it].params, iteration=it)
        assert_trees_close(b_now, records[it].buffers, iteration=it)
        assert_trees_close(torch_momentum_buffers(model, opt), ref_momentum_buffers(records[it]),
                           prefix="momentum_buffer.", iteration=it)
    check_against_records(model, opt, records, losses, logits)


# --------------------------------------------------------------- 2. HyperSearch vs reference


@given(layout=vggnet_layouts(), hp=sgd_hparams(), seed=seeds)
def test_hypersearch_matches_reference(device, layout, hp, seed):
    torch.manual_seed(seed % 2**31)
    model = create_model("hs_vgg_tiny8", layout["num_classes"], **arch(layout)).to(device=device,
                                                                                     dtype=torch.float64)
    net = reference_network_for(model)
    params, buffers = module_arrays(model)
    trainable = {k: params[k] for k in net.trainable_names()}
    decay = ref_optim.official_weight_decay(trainable, hp["weight_decay"])
    assert all(decay[k] == 0 for k in decay if k.endswith(("scale_conv.weight", "scale_1x1.weight")))
    batches = batches_for(layout, seed)
    records = train(net, params, buffers, ref_optim.SGD(**{**hp, "weight_decay": decay}), batches, N_ITER)

    seen = []

    def callback(step, loss, logits):
        rec = records[step]
        assert_close(loss.item(), rec.loss, name="loss", iteration=step)
        assert_close(logits.cpu().numpy(), rec.logits, name="logits", iteration=step)
        p_now, b_now = module_arrays(model)
        assert_trees_close(p_now, rec.params, iteration=step)
        assert_trees_close(b_now, rec.buffers, iteration=step)
        seen.append(step)

    loader = [to_torch(b, device, torch.float64) for b in batches]
    result = train_hypersearch(model, loader, steps=N_ITER, lr_schedule="constant", progress=False,
                               callback=callback, **hp)
    assert seen == list(range(N_ITER))
    assert_close(result.losses, [r.loss for r in records], name="losses")
    ref_scales = {k: v for k, v in records[-1].params.items() if ".scale_" in k}
    assert_trees_close({k: v.double().numpy() for k, v in result.scales.items()}, ref_scales)
    assert {k for k in ref_scales if "scale_identity" in k} == {k for k in result.scales if "scale_identity" in k}


def test_hypersearch_progress_bar_and_epochs(monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # progress bars are drawn on terminals only
    model = create_model("hs_vgg_tiny8", 3, in_channels=1, num_blocks=(1, 1), widths=(2, 2),
                         strides=(1, 1)).double()
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(2, 1, 4, 4, generator=g), torch.tensor([0, 1])) for _ in range(2)]
    res = train_hypersearch(model, loader, epochs=2, lr=0.05, progress=True)
    assert res.steps == 4 and len(res.losses) == 4
    assert "HyperSearch" in terminal.getvalue()
    assert set(res.scales) == {"stage0.scale_conv.weight", "stage0.scale_1x1.weight",
                               "stage1.0.scale_conv.weight", "stage1.0.scale_1x1.weight",
                               "stage1.0.scale_identity.weight"}
    with pytest.raises(ValueError, match="exactly one of epochs or steps"):
        train_hypersearch(model, loader, progress=False)
    with pytest.raises(ValueError, match="no HyperSearch blocks"):
        extract_scales(create_model("repopt_vgg_tiny8", 3))


def test_hypersearch_decays_only_d_among_scales():
    model = create_model("hs_vgg_tiny8", 3)
    opt = build_hypersearch_optimizer(model, 0.1, weight_decay=1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    scales = {n for n in decayed if ".scale_" in n}
    assert scales and all(n.endswith("scale_identity.weight") for n in scales)
    assert not any(".bn." in n for n in decayed)
    assert any(n.endswith("conv.weight") for n in decayed) and "linear.weight" in decayed


# --------------------------------------------------------------- 3. the theorem, whole network


def run_theorem(layout, hp, seed, device, dtype, kind_dtype, identity="trainable"):
    scales = random_scales(layout, seed)
    torch.manual_seed(seed % 2**31)
    csla = create_model("csla_vgg_tiny8", layout["num_classes"], scales=scales, identity=identity,
                        **arch(layout)).to(device=device, dtype=dtype)
    target = repopt_from_csla(csla)
    opt_csla = torch.optim.SGD(weight_decay_groups(csla, hp["weight_decay"]), **hp)
    opt_target = build_repoptimizer(target, target.repopt_scales, identity=identity, **hp)
    csla.train()
    target.train()
    blocks_c, blocks_t = dict(csla.named_blocks()), dict(target.named_blocks())
    for it, batch in enumerate(batches_for(layout, seed)):
        x, y = to_torch(batch, device, dtype)
        out_c, out_t = csla(x), target(x)
        loss_c, loss_t = F.cross_entropy(out_c, y), F.cross_entropy(out_t, y)
        kw = dict(kind="theorem", dtype=kind_dtype, iteration=it)
        assert_close(loss_t.item(), loss_c.item(), name="loss", **kw)
        assert_close(out_t.detach().cpu().numpy(), out_c.detach().cpu().numpy(), name="logits", **kw)
        for opt, loss in ((opt_csla, loss_c), (opt_target, loss_t)):
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            for prefix, bc in blocks_c.items():
                bt = blocks_t[prefix]
                assert_close(bt.conv.weight.cpu().numpy(), bc.get_equivalent_kernel().cpu().numpy(),
                             name=f"{prefix} W'", **kw)
                for key, v in bc.bn.state_dict().items():
                    if key != "num_batches_tracked":
                        assert_close(bt.bn.state_dict()[key].cpu().numpy(), v.cpu().numpy(),
                                     name=f"{prefix}.bn.{key}", **kw)
            assert_close(target.linear.weight.cpu().numpy(), csla.linear.weight.cpu().numpy(), name="linear", **kw)


@given(layout=vggnet_layouts(), hp=sgd_hparams(), seed=seeds)
def test_theorem_repopt_equals_csla_float64(device, layout, hp, seed):
    run_theorem(layout, hp, seed, device, torch.float64, "float64")


def test_theorem_repopt_equals_csla_float32(device):
    layout = dict(num_blocks=(1, 2, 1), widths=(4, 4, 6), strides=(1, 1, 2), in_channels=3, hw=(8, 8), batch=4,
                  num_classes=3)
    hp = dict(lr=0.05, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-4)
    run_theorem(layout, hp, 1234, device, torch.float32, "float32")


def test_theorem_constant_identity_needs_zero_decay(device):
    """SPEC §3: with a constant d the mask has no +1 and equivalence holds for λ = 0."""
    layout = dict(num_blocks=(1, 2), widths=(3, 3), strides=(1, 1), in_channels=3, hw=(6, 6), batch=3, num_classes=2)
    hp = dict(lr=0.1, momentum=0.5, dampening=0.0, nesterov=False, weight_decay=0.0)
    run_theorem(layout, hp, 7, device, torch.float64, "float64", identity="constant")


# --------------------------------------------------------------- the AdamW variant (SPEC §3: approximate)


def adamw_gap(device, *, mixed_signs: bool, eps: float) -> float:
    """Max |W'_target − W'(CSLA)| / max|W'| over 5 steps: RepOpt-AdamW (official mask placement)
    vs CSLA + torch.optim.AdamW, same official weight-decay groups."""
    layout = dict(num_blocks=(1, 2, 1), widths=(3, 3, 4), strides=(1, 1, 2), in_channels=3, hw=(6, 6), batch=4,
                  num_classes=3)
    scales = random_scales(layout, 5)
    scales = {k: (v if mixed_signs else v.abs()) for k, v in scales.items()}
    if mixed_signs:
        scales["stage1.0.scale_1x1.weight"] = -scales["stage1.0.scale_1x1.weight"].abs()
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=eps, weight_decay=1e-2)
    torch.manual_seed(0)
    csla = create_model("csla_vgg_tiny8", 3, scales=scales, **arch(layout)).to(device=device, dtype=torch.float64)
    target = repopt_from_csla(csla)
    opt_c = torch.optim.AdamW(weight_decay_groups(csla, hp["weight_decay"]), foreach=False, **hp)
    opt_t = build_repoptimizer(target, target.repopt_scales, update_rule="adamw", **hp)
    gap = 0.0
    for batch in batches_for(layout, 5):
        x, y = to_torch(batch, device, torch.float64)
        for model, opt in ((csla, opt_c), (target, opt_t)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            for prefix, bc in csla.named_blocks():
                wc, wt = bc.get_equivalent_kernel(), dict(target.named_blocks())[prefix].conv.weight
                gap = max(gap, ((wt - wc).abs().max() / wc.abs().max()).item())
    return gap


def test_adamw_variant_exact_only_for_positive_scales_and_tiny_eps(device):
    """Positive scales, eps → 0: RepOpt-AdamW == CSLA + AdamW (each branch's Adam step sums to M·m̂/ŝ).
    A negative α1 breaks it (|α3| + |α1| ≠ |α3 + α1|), as the reference documents (docs/03-repopt.md §3.8)."""
    assert adamw_gap(device, mixed_signs=False, eps=1e-16) < 1e-9
    assert adamw_gap(device, mixed_signs=True, eps=1e-16) > 1e-4
    assert adamw_gap(device, mixed_signs=False, eps=1e-3) > 1e-9  # eps breaks exactness too
