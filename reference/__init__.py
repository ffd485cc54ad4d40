"""The pure-NumPy, float64 reference: each public function is a chapter of SPEC.md.

This package never imports torch (``tests/test_ref_no_torch.py`` proves it). Every
public name of the submodules is re-exported here; the submodules are the chapters.
Input checks live in ``_checks.py`` (one set of validators, one rule per kind of
argument), so the chapters' function bodies read as their formulas.

==============  ===========================================================
``ops``         SPEC §0–§1 conv2d, batch norm, ReLU, GAP, linear, CE (+ backward)
``kernels``     SPEC §0 ``pad(K1)``, identity kernel ``I_c``
``network``     SPEC §1 Block/Optimizer protocols, ``Network``, ``train``
``repvgg``      SPEC §2 RepVGG / QARepVGG blocks and branch fusion
``deploy``      SPEC §1/§2 a whole network in deploy form (every block fused)
``repopt_sgd``  SPEC §3 RepOpt-SGD in one file: ``W'``, ``W'_0``, Grad Mult, weight decay, step
``repopt``      SPEC §3 CSLA, HyperSearch and target blocks, network helpers
``scales``      SPEC §3 scale layout, the original per-block scale tuples
``optim``       SPEC §3 optimizer classes, AdamW (+ masked variant)
``oabn``        SPEC §4 outlier-aware batch norm
``quant``       SPEC §5 uniform (fake) quantization, straight-through gradients
``calibrate``   SPEC §5 PTQ calibrators
``kmeans``      SPEC §5 1-D k-means, k-means fake quantization
``qat``         SPEC §5 QAT on merged weights, ClusterQAT
``analysis``    SPEC §2/§5 merged-weight categories A/B/C, state size
``gradcheck``   central finite differences
==============  ===========================================================
"""

from . import (
    analysis,
    calibrate,
    deploy,
    gradcheck,
    kernels,
    kmeans,
    network,
    oabn,
    ops,
    optim,
    qat,
    quant,
    repopt,
    repopt_sgd,
    repvgg,
    scales,
)
from .analysis import *  # noqa: F401,F403
from .calibrate import *  # noqa: F401,F403
from .deploy import *  # noqa: F401,F403
from .gradcheck import *  # noqa: F401,F403
from .kernels import *  # noqa: F401,F403
from .kmeans import *  # noqa: F401,F403
from .network import *  # noqa: F401,F403
from .oabn import *  # noqa: F401,F403
from .ops import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .qat import *  # noqa: F401,F403
from .quant import *  # noqa: F401,F403
from .repopt import *  # noqa: F401,F403
from .repopt_sgd import *  # noqa: F401,F403
from .repvgg import *  # noqa: F401,F403
from .scales import *  # noqa: F401,F403

# the chapters stay reachable as modules: the function calibrate.calibrate must not
# shadow the chapter calibrate (docs write repspec.reference.calibrate.mse_optimal)
import importlib as _importlib  # noqa: E402

calibrate = _importlib.import_module(__name__ + ".calibrate")  # noqa: F811

CHAPTERS = (ops, kernels, network, repvgg, repopt_sgd, repopt, scales, optim, oabn, quant, calibrate, kmeans, qat, deploy,
            analysis, gradcheck)

__all__ = sorted(({name for chapter in CHAPTERS for name in chapter.__all__} - {"calibrate"}) | {"CHAPTERS"})
