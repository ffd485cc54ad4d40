"""SPEC §5: torch calibrators (observers) and post-training quantization.

Calibrators: (lo, hi) equal to repspec.reference.calibrate on the same batches (float64;
exact — the MSE calibrator up to near-ties of its floating-point sums, see below).
PTQ: kernels and activation ranges equal the reference on the deploy network, 16-bit
PTQ ≈ FP, first conv and linear untouched, registry families work.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from repspec.reference import calibrate as rc
from repspec.reference import quant as rq
from repspec.torch_impl import create_model
from repspec.torch_impl.quantization import observers as obs
from repspec.torch_impl.modules.blocks import FusedConvBlock
from repspec.torch_impl.modules.deploy import convert_to_deploy
from repspec.torch_impl.quantization.ptq import QuantConvBlock, build_quantized_model, evaluate, ptq_quantize
from tests.strategies import act_batch_sequences, rng_from

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _tensors(batches, device="cpu"):
    return [torch.tensor(b, dtype=torch.float64, device=device) for b in batches]


# ------------------------------------------------------------------- calibrators


CASES = [
    ("minmax", {}),
    ("moving_average_minmax", {"momentum": 0.3}),
    ("percentile", {"percentile": 90.0}),
    ("percentile", {"percentile": 99.99}),
    ("mse", {"candidates": 25}),
    ("entropy", {"num_bins": 64}),  # zero_bin='replace' (the default)
    ("entropy", {"num_bins": 64, "zero_bin": "keep"}),
]


def _mse_near_tie(batches, bits, candidates, got, want) -> bool:
    """The two chosen ranges have reference MSEs within 1e-12 relative (a floating-point near-tie)."""
    x = np.concatenate([b.ravel() for b in batches])
    m_got = rc.clipping_mse(x, *got, bits)
    m_want = rc.clipping_mse(x, *want, bits)
    return abs(m_got - m_want) <= 1e-12 * max(abs(m_want), 1e-300)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method, options", CASES, ids=[f"{m}-{o}" for m, o in CASES])
@given(batches=act_batch_sequences(), bits=st.integers(1, 6))
@example(batches=[np.zeros(5)], bits=8)  # zero range
@example(batches=[np.array([2.5])], bits=3)  # batch of 1, min == max
@example(batches=[np.array([-1.5, -0.5, 0.5, 1.5]), np.array([2.5, 3.5])], bits=2)  # .5 ties
def test_calibrators_equal_reference(device, method, options, batches, bits):
    if method == "entropy" and options["num_bins"] < 2**bits:
        options = {**options, "num_bins": 2**bits}
    try:
        want = rc.calibrate(method, batches, bits, **options)
    except ValueError as exc:  # e.g. entropy num_bins < levels: both must refuse
        with pytest.raises(ValueError, match="num_bins"):
            obs.calibrate(method, _tensors(batches, device), bits, **options)
        assert "num_bins" in str(exc)
        return
    got = obs.calibrate(method, _tensors(batches, device), bits, **options)
    if method == "mse" and got != want:
        assert _mse_near_tie(batches, bits, options["candidates"], got, want), (got, want)
        return
    assert got == want


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("zero_bin", ["replace", "keep"])
def test_entropy_zero_bin_equals_reference_on_post_relu_activations(device, zero_bin):
    """Many exact zeros, 8 bits, the default 2048 bins: both zero-bin options equal the reference."""
    rng = rng_from(3)
    batches = [np.maximum(rng.normal(-0.5, 1.0, 3000), 0.0) for _ in range(3)]
    want = rc.calibrate("entropy", batches, 8, zero_bin=zero_bin)
    assert obs.calibrate("entropy", _tensors(batches, device), 8, zero_bin=zero_bin) == want
    if zero_bin == "replace":
        assert obs.calibrate("entropy", _tensors(batches, device), 8) == want  # the default
    else:
        assert want != rc.calibrate("entropy", batches, 8)  # the option matters on this data


@given(batches=act_batch_sequences(max_batches=5, max_size=60), p=st.sampled_from([50.0, 75.0, 97.5, 100.0]),
       capacity=st.integers(2, 30))
def test_percentile_tail_buffer_exact_or_refuses(batches, p, capacity):
    """With a small capacity the observer either returns the exact np.percentile or refuses."""
    x = np.concatenate(batches)
    want = rc.percentile(x, p)
    o = obs.PercentileObserver(p, capacity=capacity)
    for b in _tensors(batches):
        o(b)
    n = x.size
    need = max(math.floor((n - 1) * ((100 - p) / 100)) + 2, n - math.floor((n - 1) * (p / 100)))
    if n <= capacity or need <= capacity:
        assert o.compute_range() == want
    else:
        with pytest.raises(ValueError, match="increase capacity"):
            o.compute_range()


def test_calibrators_differ_on_heavy_tailed_activations():
    rng = rng_from(7)
    batches = [torch.tensor(rng.standard_t(2, 4000)) for _ in range(3)]
    ranges = {m: obs.calibrate(m, batches, 4, **o) for m, o in
              [("minmax", {}), ("moving_average_minmax", {"momentum": 0.5}), ("percentile", {"percentile": 99.0}),
               ("mse", {}), ("entropy", {"num_bins": 256})]}
    widths = {m: hi - lo for m, (lo, hi) in ranges.items()}
    assert len(set(ranges.values())) == len(ranges), ranges
    assert widths["minmax"] > max(widths["percentile"], widths["mse"], widths["entropy"])
    x = torch.cat(batches).numpy()
    mse = {m: rc.clipping_mse(x, lo, hi, 4) for m, (lo, hi) in ranges.items()}
    assert mse["mse"] == min(mse.values())  # clipping the tails pays off at 4 bits


def test_mse_observer_is_one_pass_over_cached_batches():
    """mse sees each batch once (ptq_quantize runs one forward pass); its cache is a copy, and
    a batch observed after compute_range counts in the next result."""
    o = obs.MSEObserver(4)
    assert o.passes == 1
    with pytest.raises(RuntimeError, match="needs 1 complete pass"):
        o.compute_range()
    rng = rng_from(3)
    batches = [torch.tensor(rng.standard_t(2, 500)) for _ in range(3)]
    for b in batches[:2]:
        x = b.clone()
        o(x)
        x.zero_()  # an in-place edit after observing must not reach the cache
    assert o.compute_range() == rc.calibrate("mse", [b.numpy() for b in batches[:2]], 4)
    with pytest.raises(RuntimeError, match="makes 1 pass"):
        o.next_pass()
    o(batches[2])
    assert o.compute_range() == rc.calibrate("mse", [b.numpy() for b in batches], 4)


def test_two_pass_observers_check_the_passes():
    e = obs.EntropyObserver(2, num_bins=8)
    with pytest.raises(RuntimeError, match="needs 2 complete pass"):
        e(torch.ones(3))
        e.compute_range()
    e.next_pass()
    e(torch.ones(2))
    with pytest.raises(RuntimeError, match="same batches"):
        e.compute_range()
    e = obs.EntropyObserver(2, num_bins=8)
    e(torch.tensor([0.0, 1.0]))
    e.next_pass()
    with pytest.raises(ValueError, match="beyond the first pass"):
        e(torch.tensor([5.0]))


def test_observer_bad_input():
    with pytest.raises(ValueError, match="method must be one of"):
        obs.make_observer("kl", 8)
    with pytest.raises(TypeError, match="unexpected option"):
        obs.make_observer("minmax", 8, momentum=0.1)
    with pytest.raises(ValueError, match="bits"):
        obs.make_observer("mse", 0)
    with pytest.raises(ValueError, match="percentile must be in"):
        obs.PercentileObserver(20.0)
    with pytest.raises(ValueError, match="x must contain only finite"):
        obs.MinMaxObserver()(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="batches\\[1\\] must contain only finite"):
        obs.calibrate("minmax", [torch.ones(2), torch.tensor([float("inf")])], 8)
    with pytest.raises(ValueError, match="at least one batch"):
        obs.calibrate("minmax", [], 8)
    with pytest.raises(ValueError, match="candidates"):
        obs.MSEObserver(4, candidates=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"zero_bin must be one of \('replace', 'keep'\)"):
        obs.make_observer("entropy", 8, zero_bin="drop")


# -------------------------------------------------------------------------- PTQ

SMALL = dict(num_blocks=(1, 2, 1), widths=(4, 6, 8), strides=(1, 1, 2))


def _trained_like(name: str, seed: int = 0, dtype=torch.float64, **overrides) -> torch.nn.Module:
    """A small registry model with non-trivial BN statistics (a few training-mode forwards)."""
    torch.manual_seed(seed)
    m = create_model(name, num_classes=3, **{**SMALL, **overrides}).to(dtype)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(6, 3, 8, 8, dtype=dtype))
    return m.eval()


def _loader(n=3, batch=4, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n)]


def _block_inputs(deploy, x) -> dict[str, list[np.ndarray]]:
    """Inputs of every block and of the linear in the FP deploy network."""
    seen: dict[str, list] = {}
    layers = dict(list(deploy.named_blocks()) + [("linear", deploy.linear)])
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, []).append(a[0].numpy().copy()))
             for n, m in layers.items()]
    with torch.no_grad():
        for xb in x:
            deploy(xb)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("calibrator, options", [("minmax", {}), ("percentile", {"percentile": 99.0}),
                                                 ("entropy", {"num_bins": 128}),
                                                 ("entropy", {"num_bins": 128, "zero_bin": "keep"})])
def test_ptq_equals_reference_on_deploy_network(per_channel, calibrator, options):
    model = _trained_like("repvgg_tiny8")
    loader = _loader()
    q = ptq_quantize(model, loader, weight_bits=4, act_bits=5, calibrator=calibrator, calibrator_options=options,
                     per_channel=per_channel, num_batches=2, progress=False)
    assert not q.training
    deploy = convert_to_deploy(model)
    inputs = _block_inputs(deploy, [x for x, _ in loader[:2]])  # only the first num_batches
    layers = dict(q.named_layers())
    for name, fused in deploy.named_blocks():
        qb = layers[name]
        if name == "stage0":  # first conv stays FP32, bit for bit
            assert isinstance(qb, FusedConvBlock)
            assert torch.equal(qb.rbr_reparam.weight, fused.rbr_reparam.weight)
            continue
        assert isinstance(qb, QuantConvBlock)
        k = fused.rbr_reparam.weight.detach().numpy()
        np.testing.assert_array_equal(qb.rbr_reparam.weight.detach().numpy(),
                                      rq.fake_quantize_weight(k, 4, per_channel))
        assert torch.equal(qb.rbr_reparam.bias, fused.rbr_reparam.bias)
        want = rc.calibrate(calibrator, inputs[name], 5, **options)
        assert q.act_ranges()[name] == want
    assert torch.equal(q.net.linear.weight, deploy.linear.weight) and torch.equal(q.net.linear.bias,
                                                                                    deploy.linear.bias)
    assert "linear" not in q.act_ranges()


@pytest.mark.parametrize("name", ["repvgg_tiny8", "repvgg_tiny8_oabn", "qarepvgg_tiny8", "repopt_vgg_tiny8",
                                  "csla_vgg_tiny8"])
def test_ptq_16_bit_close_to_fp_and_8_bit_runs(name):
    """16-bit weights and activations: |y_q − y| ≤ 1e-3·max|y| (each quantizer's error is
    ≤ scale/2 ≈ range·8e-6 per layer, a few layers deep). 8-bit: finite, accuracy in [0, 1]."""
    model = _trained_like(name)
    loader = _loader()
    x = torch.cat([xb for xb, _ in loader])
    with torch.no_grad():
        y = model(x)
        q16 = ptq_quantize(model, loader, weight_bits=16, act_bits=16, num_batches=3, progress=False)
        err = (q16(x) - y).abs().max().item()
        assert err <= 1e-3 * y.abs().max().item(), err
        q8 = ptq_quantize(model, loader, progress=False, keep_last_fp32=False)
        assert torch.isfinite(q8(x)).all()
    assert 0.0 <= evaluate(q8, loader) <= 1.0
    assert q8.state_size() <= sum(m.rbr_reparam.weight.numel() for n, m in q8.quantized_layers().items()
                                  if n != "linear") + q8.net.linear.linear.weight.numel()


def test_ptq_keep_first_and_last_configurable():
    model = _trained_like("repvgg_tiny8")
    q = ptq_quantize(model, _loader(), keep_first_fp32=False, keep_last_fp32=False, num_batches=1, progress=False)
    assert set(q.quantized_layers()) == {"stage0", "stage1.0", "stage1.1", "stage2.0", "linear"}
    assert set(q.act_ranges()) == set(q.quantized_layers())
    lin = q.net.linear
    np.testing.assert_array_equal(lin.linear.weight.detach().numpy(),
                                  rq.fake_quantize_weight(model.linear.weight.detach().numpy(), 8))


def test_evaluate_counts_correct_predictions():
    model = _trained_like("repvgg_tiny8")
    loader = _loader(n=2)
    with torch.no_grad():
        want = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader) / sum(len(y) for _, y in loader)
    model.train()
    assert evaluate(model, loader) == want
    assert model.training  # restored


def test_ptq_float32_and_weight_only():
    model = _trained_like("qarepvgg_tiny8", dtype=torch.float32)
    q = ptq_quantize(model, _loader(dtype=torch.float32), act_bits=None, progress=False)
    assert q.act_ranges() == {} and next(q.parameters()).dtype == torch.float32
    x = _loader(dtype=torch.float32)[0][0]
    with torch.no_grad():
        assert torch.isfinite(q(x)).all()


def test_ptq_bad_input():
    model = _trained_like("repvgg_tiny8")
    loader = _loader(n=1)
    with pytest.raises(TypeError, match="model must be a VGGNet"):
        ptq_quantize(torch.nn.Linear(2, 2), loader)
    with pytest.raises(ValueError, match="weight_bits"):
        ptq_quantize(model, loader, weight_bits=1)
    with pytest.raises(ValueError, match="act_bits"):
        ptq_quantize(model, loader, act_bits=17)
    with pytest.raises(ValueError, match="calibrator must be one of"):
        ptq_quantize(model, loader, calibrator="kl")
    with pytest.raises(TypeError, match="unexpected option"):
        ptq_quantize(model, loader, calibrator="minmax", calibrator_options={"momentum": 0.1})
    with pytest.raises(ValueError, match="num_batches"):
        ptq_quantize(model, loader, num_batches=0)
    with pytest.raises(ValueError, match="no batch"):
        ptq_quantize(model, [], progress=False)
    with pytest.raises(TypeError, match="calib_loader"):
        ptq_quantize(model, torch.ones(2, 3, 8, 8), progress=False)
    bad = [(torch.full((2, 3, 8, 8), float("nan"), dtype=torch.float64), torch.zeros(2))]
    with pytest.raises(ValueError, match="finite"):
        ptq_quantize(model, bad, progress=False)
    with pytest.raises(ValueError, match="not quantized"):
        build_quantized_model(model, codebooks={"stage0": torch.zeros(4)})
    with pytest.raises(TypeError, match="per_channel"):
        ptq_quantize(model, loader, per_channel="yes")


#: torch's batched KL vs the reference's per-threshold loop: float64 sums of the same terms in
#: another order (a few hundred terms of magnitude <= 1): agreement to 1e-12 relative
KL_RTOL = 1e-12


@pytest.mark.parametrize("device", DEVICES)
@given(hist=st.lists(st.integers(0, 50), min_size=4, max_size=160), log2_nq=st.integers(1, 5),
       sparse=st.booleans())
@example(hist=[0, 0, 0, 7], log2_nq=1, sparse=False)  # only the tail is non-empty: +inf below it
@example(hist=[5, 0, 0, 0, 0, 0, 0, 3], log2_nq=2, sparse=False)  # empty bins inside a level
@example(hist=[1, 1, 1, 1, 1, 1, 1, 1], log2_nq=1, sparse=False)  # flat: exact ties between thresholds
def test_kl_divergences_equal_the_reference_loop(device, hist, log2_nq, sparse):
    """``observers.kl_divergences`` (every threshold at once, torch) against
    ``reference.calibrate._kl_candidate`` (one threshold at a time, NumPy): same +inf pattern,
    finite values within KL_RTOL, and the same first-minimum threshold unless two KLs tie within it."""
    from repspec.reference.calibrate import _kl_candidate

    h = np.array(hist, dtype=np.int64)
    if sparse:
        h[::3] = 0
    nq = 2**log2_nq
    assume(h.size >= nq and h.sum() > 0)
    want = np.array([_kl_candidate(h, i, nq) for i in range(nq, h.size + 1)])
    got = npy_(obs.kl_divergences(torch.as_tensor(h, device=device), nq))
    assert got.shape == want.shape
    assert np.array_equal(np.isinf(got), np.isinf(want)), (got, want)
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=KL_RTOL, atol=1e-15,
                               err_msg="KL per threshold (finite entries)")
    if fin.any():
        i_got, i_want = int(np.argmin(got)), int(np.argmin(want))
        assert i_got == i_want or abs(want[i_got] - want[i_want]) <= KL_RTOL * abs(want[i_want]) + 1e-15


def npy_(t):
    return t.detach().cpu().numpy()


def test_squeeze_excitation_models_are_refused_not_silently_dropped():
    """RepVGG-D2se's SE blocks have no quantized form (SPEC §5): PTQ and QAT refuse the model."""
    from repspec.torch_impl.modules.models import create_model
    from repspec.torch_impl.quantization.ptq import build_quantized_model
    from repspec.torch_impl.quantization.qat import make_qat_model

    model = create_model("repvgg_tiny8", num_classes=3, widths=(16, 16, 16, 16), use_se=True).eval()
    with pytest.raises(ValueError, match="squeeze-excitation"):
        build_quantized_model(model, weight_bits=8, act_bits=None)
    with pytest.raises(ValueError, match="squeeze-excitation"):
        make_qat_model(model, weight_quantizer=None, act_bits=None)
