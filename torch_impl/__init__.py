"""The PyTorch implementation of repspec, checked against ``repspec.reference`` (SPEC §6)."""

from .modules.blocks import (
    CSLABlock,
    FusedConvBlock,
    HyperSearchBlock,
    QARepVGGBlock,
    RepOptTargetBlock,
    RepVGGBlock,
    ScaleLayer,
    SEBlock,
)
from .modules.kernels import csla_equivalent_kernel
from .modules.deploy import convert_to_deploy, fuse_block
from .modules.interop import load_reference_arrays, module_arrays
from .modules.models import (
    VGGNet,
    create_model,
    expected_scale_keys,
    hypersearch_scale_init,
    list_models,
    repopt_from_csla,
)
from .modules.oabn import OABN

# SPEC §3: RepOptimizer, HyperSearch, scale files (distributed.py is imported on demand: python -m ...)
from .optimizers.hypersearch import HyperSearchResult, build_hypersearch_optimizer, extract_scales, train_hypersearch
from .optimizers.repoptimizer import (
    RepOptimizerAdamW,
    RepOptimizerSGD,
    build_grad_mult_masks,
    build_repoptimizer,
    grad_mult_mask_from_scales,
    reinit_from_scales,
    weight_decay_groups,
)
from .optimizers.scales import (
    ScaleFileError,
    initial_scales,
    load_published_scales,
    load_scales,
    save_scales,
    scales_from_official,
    scales_to_official,
)

# SPEC §5: quantization (uniform fake quant, calibrators, PTQ, QAT/ClusterQAT, export, analysis)
from .quantization.analysis import category_statistics, layer_statistics, write_report
from .quantization.export import export_quantized, load_exported
from .quantization.kmeans import kmeans_1d, kmeans_1d_optimal, kmeans_fake_quantize
from .quantization.onnx_export import OnnxVerification, export_onnx, verify_onnx
from .quantization.observers import make_observer
from .quantization.ptq import QuantizedModel, build_quantized_model, ptq_quantize, quantized_model_from_qat
from .quantization.qat import KMeansWeightQuantizer, QATBlock, UniformWeightQuantizer, make_qat_model
from .quantization.quant import ActivationFakeQuant, activation_qparams, fake_quantize_activation, fake_quantize_weight

# data, training loops and checkpoints (the command line's building blocks)
from .training.checkpoint import load_checkpoint, save_checkpoint
from .training.official import OfficialCheckpointError, load_official_checkpoint, load_official_scales
from .training.data import load_digits_dataset, make_loaders
from .training.datasets import load_dataset
from .training.train import TrainConfig, evaluate, train_classifier
