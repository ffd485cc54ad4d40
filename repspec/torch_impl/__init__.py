"""The PyTorch implementation of repspec, checked against ``repspec.reference`` (SPEC §6)."""

from .blocks import (
    CSLABlock,
    FusedConvBlock,
    HyperSearchBlock,
    QARepVGGBlock,
    RepOptTargetBlock,
    RepVGGBlock,
    ScaleLayer,
)
from .deploy import convert_to_deploy, fuse_block
from .interop import load_reference_arrays, module_arrays, reference_block_for, reference_network_for
from .models import (
    VGGNet,
    create_model,
    expected_scale_keys,
    hypersearch_scale_init,
    list_models,
    repopt_from_csla,
)
from .oabn import OABN

# SPEC §3: RepOptimizer, HyperSearch, scale files (distributed.py is imported on demand: python -m ...)
from .hypersearch import HyperSearchResult, build_hypersearch_optimizer, extract_scales, train_hypersearch
from .optim import (
    RepOptimizerAdamW,
    RepOptimizerSGD,
    build_grad_mult_masks,
    build_repoptimizer,
    grad_mult_mask_from_scales,
    reinit_from_scales,
    weight_decay_groups,
)
from .scales import ScaleFileError, load_published_scales, load_scales, save_scales

# SPEC §5: quantization (uniform fake quant, calibrators, PTQ, QAT/ClusterQAT, export, analysis)
from .analysis import category_statistics, layer_statistics, write_report
from .export import export_quantized, load_exported
from .kmeans import kmeans_1d, kmeans_1d_optimal, kmeans_fake_quantize
from .observers import make_observer
from .ptq import QuantizedModel, build_quantized_model, ptq_quantize, quantized_model_from_qat
from .qat import KMeansWeightQuantizer, QATBlock, UniformWeightQuantizer, make_qat_model
from .quant import ActivationFakeQuant, activation_qparams, fake_quantize_activation, fake_quantize_weight

# data, training loops and checkpoints (the command line's building blocks)
from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_dataset, load_digits_dataset, make_loaders
from .train import evaluate, train_classifier
