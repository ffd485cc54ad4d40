"""Real INT8 latency: onnxruntime INT8 (QDQ → QLinearConv) vs FP32 of the deployed ``repvgg_a0`` (pytest-benchmark).

Run: ``REPSPEC_BENCH_SIZE=full .venv/bin/python -m pytest benchmarks/bench_onnx.py --benchmark-enable -q -s``

- ``REPSPEC_BENCH_SIZE=small`` (default): ``repvgg_a0`` at 64x64 — quick, same graphs;
  ``full``: 224x224, the ImageNet resolution.
- ``REPSPEC_BENCH_THREADS`` (default 1): onnxruntime's intra-op threads.

Both graphs come from :func:`repspec.torch_impl.quantization.onnx_export.export_onnx`: the FP32
deploy network, and the PTQ model (W8A8, per-channel weights, int32 bias, first conv and the
classifier FP32 — repspec's defaults) as QDQ, which onnxruntime (``ORT_ENABLE_ALL``) fuses
into integer ``QLinearConv`` kernels. Batch 1 and 8. The weights are random with realistic
BN statistics (latency does not depend on their values); calibration uses random inputs.

``test_report`` prints the medians and the INT8/FP32 time ratio per batch, measured in one
run with the two sessions alternating round by round, so that load from other processes
hits both alike. Nothing is asserted about speed.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ort = pytest.importorskip("onnxruntime")

from repspec.torch_impl.modules.models import create_model  # noqa: E402
from repspec.torch_impl.quantization.onnx_export import export_onnx, onnx_session  # noqa: E402
from repspec.torch_impl.quantization.ptq import ptq_quantize  # noqa: E402

SIZE = os.environ.get("REPSPEC_BENCH_SIZE", "small")
if SIZE not in ("small", "full"):
    raise ValueError(f"REPSPEC_BENCH_SIZE must be 'small' or 'full', got {SIZE!r}")
IMAGE = 224 if SIZE == "full" else 64
THREADS = int(os.environ.get("REPSPEC_BENCH_THREADS", "1"))
ARCH = "repvgg_a0"
BATCHES = (1, 8)
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    torch.set_num_threads(max(1, THREADS))
    g = torch.Generator().manual_seed(0)
    model = create_model(ARCH, num_classes=1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    model.eval()
    calib = [(torch.randn(8, 3, IMAGE, IMAGE, generator=g), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    qmodel = ptq_quantize(model, calib, per_channel=True, progress=False)
    d = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, d / "fp32.onnx", model_name=ARCH)
    int8 = export_onnx(qmodel, d / "int8.onnx", model_name=ARCH, bias="int32")
    out = {"fp32": onnx_session(fp32, optimize=True, threads=THREADS),
           "int8": onnx_session(int8, optimize=True, threads=THREADS)}
    inputs = {b: torch.randn(b, 3, IMAGE, IMAGE, generator=g).numpy() for b in BATCHES}
    return out, inputs


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("fmt", ["fp32", "int8"])
def test_latency(benchmark, sessions, fmt, batch):
    sess, inputs = sessions
    s, x = sess[fmt], inputs[batch]
    benchmark.group = f"onnxruntime {ARCH} {IMAGE}x{IMAGE} batch {batch}, {THREADS} thread(s)"
    benchmark.pedantic(lambda: s.run(None, {"input": x}), rounds=10 if SIZE == "full" else 20, warmup_rounds=2,
                       iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[f"{fmt}_{batch}"] = stats.stats.median


def _interleaved(sessions, batch, rounds):
    sess, inputs = sessions
    times = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for fmt in ("fp32", "int8"):
            t0 = time.perf_counter()
            sess[fmt].run(None, {"input": inputs[batch]})
            times[fmt].append(time.perf_counter() - t0)
    return statistics.median(times["fp32"]), statistics.median(times["int8"])


def test_report(capsys, sessions):
    """Print medians and INT8/FP32 ratios (skipped when benchmarks are disabled)."""
    if not RESULTS:
        pytest.skip("run with --benchmark-enable to get timings")
    lines = [f"machine: {platform.machine()}, os.cpu_count()={os.cpu_count()}, onnxruntime {ort.__version__}, "
             f"intra-op threads={THREADS}, size={SIZE} ({IMAGE}x{IMAGE})"]
    for b in BATCHES:
        fp, q = _interleaved(sessions, b, 10 if SIZE == "full" else 20)
        lines.append(f"{ARCH} batch {b}: FP32 median {fp * 1e3:.2f} ms, INT8 median {q * 1e3:.2f} ms -> INT8/FP32 "
                     f"time ratio {q / fp:.3f} (speed-up {fp / q:.2f}x; interleaved rounds)")
    with capsys.disabled():
        print("\n" + "\n".join("[bench_onnx] " + s for s in lines))


def test_digits_accuracy_report(capsys, tmp_path):
    """Accuracy through onnxruntime on a real test set (scikit-learn digits, 449 test images, 8x8):
    ``repvgg_tiny8`` trained for a few epochs, PTQ W8A8 per-channel; FP32 and INT8, repspec vs onnxruntime
    (QDQ as written, and with integer kernels; float and int32 bias). Skipped when benchmarks are disabled."""
    if not RESULTS:
        pytest.skip("run with --benchmark-enable")
    from repspec.torch_impl.training.data import load_digits_dataset

    torch.manual_seed(0)
    train, test, _ = load_digits_dataset(8, seed=0)
    model = create_model("repvgg_tiny8", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    xs, ys = train.tensors
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        perm = torch.randperm(len(xs), generator=g)
        for i in range(0, len(xs), 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    qmodel = ptq_quantize(model, [(xs[i:i + 64], ys[i:i + 64]) for i in range(0, 512, 64)], per_channel=True,
                          progress=False)
    tx, ty = test.tensors
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", model_name="repvgg_tiny8")
    int8 = export_onnx(qmodel, tmp_path / "int8.onnx", model_name="repvgg_tiny8", bias="int32")
    int8f = export_onnx(qmodel, tmp_path / "int8f.onnx", model_name="repvgg_tiny8", bias="float")
    with torch.no_grad():
        ref_fp, ref_q = model(tx), qmodel(tx)
    rows = []
    for label, path, ref, optimize in (("FP32", fp32, ref_fp, True),
                                       ("INT8 QDQ as written, float bias", int8f, ref_q, False),
                                       ("INT8 QDQ as written, int32 bias", int8, ref_q, False),
                                       ("INT8 integer kernels, float bias", int8f, ref_q, True),
                                       ("INT8 integer kernels, int32 bias", int8, ref_q, True)):
        out = torch.from_numpy(onnx_session(path, optimize=optimize).run(None, {"input": tx.numpy()})[0])
        rows.append(f"{label}: repspec acc {(ref.argmax(1) == ty).double().mean():.4f}, onnxruntime acc "
                    f"{(out.argmax(1) == ty).double().mean():.4f}, top-1 agreement "
                    f"{(out.argmax(1) == ref.argmax(1)).double().mean():.4f}, max |logit error| "
                    f"{(out - ref).abs().max():.3g} (logits up to {ref.abs().max():.3g})")
    with capsys.disabled():
        print("\n" + "\n".join("[bench_onnx digits] " + s for s in rows))
