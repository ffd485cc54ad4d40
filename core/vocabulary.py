"""Every name table of repspec, in one place (standard library only).

The reference (``repspec.reference``), the torch implementation (``repspec.torch_impl``),
the command line and the conformance suite all read these tuples; none retypes them.
Each table names the SPEC clause that defines its values.
"""

from __future__ import annotations

__all__ = [
    "CALIBRATORS",
    "CALIBRATOR_OPTIONS",
    "CALIBRATOR_SHORT_NAMES",
    "DEFAULT_MOMENTUM",
    "DEFAULT_PERCENTILE",
    "DEFAULT_MSE_CANDIDATES",
    "DEFAULT_NUM_BINS",
    "ZERO_BIN_MODES",
    "DEFAULT_ZERO_BIN",
    "IDENTITY_MODES",
    "OABN_GRADIENTS",
    "ADAMW_MASK_PLACEMENTS",
    "NESTEROV_ROUNDINGS",
    "RENAMED_NESTEROV_ROUNDINGS",
    "KMEANS_INITS",
    "DEFAULT_KMEANS_INIT",
    "OPTIMAL_METHODS",
    "WEIGHT_SCHEMES",
    "ACTIVATION_OBSERVERS",
    "ONNX_BIAS_MODES",
    "DATASET_NAMES",
    "MIN_SCALE",
]

# ------------------------------------------------------------------ SPEC §5 calibrators

#: the five PTQ calibrators (SPEC §5.calibrators), in the order of the demo's table
CALIBRATORS = ("minmax", "moving_average_minmax", "percentile", "mse", "entropy")
#: the keyword options each calibrator takes besides the batches
CALIBRATOR_OPTIONS = {
    "minmax": (),
    "moving_average_minmax": ("momentum",),
    "percentile": ("percentile",),
    "mse": ("candidates",),
    "entropy": ("num_bins", "zero_bin"),
}
#: the demo table's column labels (mm min/max, ma moving average, pct percentile, mse, kl entropy)
CALIBRATOR_SHORT_NAMES = {"minmax": "mm", "moving_average_minmax": "ma", "percentile": "pct", "mse": "mse",
                          "entropy": "kl"}
#: weight of the *new* batch in the moving average (PyTorch ``MovingAverageMinMaxObserver``'s default)
DEFAULT_MOMENTUM = 0.01
#: upper percentile (the lower one is ``100 − p``)
DEFAULT_PERCENTILE = 99.99
#: number of clipping ratios ``α ∈ {1/N, 2/N, …, 1}`` the MSE calibrator searches
DEFAULT_MSE_CANDIDATES = 100
#: histogram bins of the entropy calibrator (TensorRT's value)
DEFAULT_NUM_BINS = 2048
#: how the entropy calibrator treats histogram bin 0 (the bin holding exact zeros)
ZERO_BIN_MODES = ("replace", "keep")
#: NVIDIA pytorch-quantization's handling (``bins[0] = bins[1]``)
DEFAULT_ZERO_BIN = "replace"
#: the observers of a QAT activation quantizer (SPEC §5.qat)
ACTIVATION_OBSERVERS = ("moving_average", "minmax")

# ------------------------------------------------------------- SPEC §5 quantized weights

#: smallest scale a quantizer uses (SPEC §5.scale-underflow): the smallest normal float32
MIN_SCALE = 2.0**-126
#: how a quantized layer stores its weights (SPEC §5.quantized-layers)
WEIGHT_SCHEMES = ("uniform", "kmeans")
#: every init of the 1-D k-means (SPEC §5.kmeans)
KMEANS_INITS = ("linear", "quantile", "kmeans++", "optimal", "binned", "warm")
#: the default init of the 1-D k-means, the ClusterQAT quantizers and ``repspec quantize clusterqat``, in the
#: reference and in torch_impl alike (SPEC §5.kmeans-binned): the exact DP over weighted runs, then Lloyd
DEFAULT_KMEANS_INIT = "binned"
#: the exact DP's solvers (SPEC §5.kmeans): the textbook quadratic recursion and the monotone split search
OPTIMAL_METHODS = ("quadratic", "divide_and_conquer")
#: how a QDQ ONNX file stores a convolution's bias
ONNX_BIAS_MODES = ("float", "int32")

# ----------------------------------------------------------------- SPEC §3 and §4 modes

#: a CSLA identity branch ``d·x`` (SPEC §3.csla): trained and decayed (the original's; the theorem is
#: exact), fixed (exact only without weight decay) or absent (needed when ``in != out`` or ``stride != 1``)
IDENTITY_MODES = ("trainable", "constant", "none")
#: the backward of OABN's clipped factor (SPEC §4.oabn)
OABN_GRADIENTS = ("clip", "straight_through")
#: where the masked AdamW applies the Grad Mult mask (SPEC §3.adamw)
ADAMW_MASK_PLACEMENTS = ("grad_and_update", "grad")
#: how RepOptimizerSGD rounds the Nesterov update ``d + μ·buf`` (SPEC §3.repopt-sgd-step), each named by
#: the code it reproduces bit for bit: ``torch.optim.SGD`` (``d.add(buf, alpha=μ)``, one rounding), the
#: original RepOptimizers ``repoptimizer_sgd.py`` at its current head (``d_p + buf * momentum``, two
#: roundings) and the same file before that change (``d_p.add(momentum, buf)``, torch's deprecated
#: overload of the one-rounding form)
NESTEROV_ROUNDINGS = ("torch", "original", "original-legacy")
#: earlier names of those modes -> the mode with the same arithmetic. A new optimizer refuses them
#: (the message names the new modes); a saved optimizer state that holds one loads under the new name.
RENAMED_NESTEROV_ROUNDINGS = {"official": "original-legacy", "separate": "original"}

# ------------------------------------------------------------------------------ data

#: the data sets the torch implementation loads
DATASET_NAMES = ("digits", "digits_variations", "cifar10", "cifar100", "folder")
