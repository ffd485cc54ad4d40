"""The re-parameterizable blocks in PyTorch (SPEC §2, §3, §4).

State-dict key names are a hard contract: they equal the reference's parameter
names (``repspec.reference``) and the official code bases (RepVGG, YOLOv6's
QARepVGG, RepOptimizers' ``LinearAddBlock`` / ``RealVGGBlock``), so checkpoints and
published scale files load unchanged.

Every block offers ``get_equivalent_kernel_bias()`` — the single 3x3 conv + bias that
equals the block's linear part *in eval mode* (BN folded with running statistics,
OABN with its clipped factor) — computed differentiably (QAT on merged weights uses
it, SPEC §5) and vectorized (no Python loop over channels), and ``switch_to_deploy()``,
which replaces the branches in place by ``rbr_reparam`` (Conv2d with bias).
"""

from __future__ import annotations

import math
import numbers
import torch
import torch.nn.functional as F
from torch import nn

from repspec.core.vocabulary import IDENTITY_MODES

from .._validation import check_bool, check_int, check_nonneg_float, check_probability

from .kernels import csla_equivalent_kernel, fold_bn, identity_kernel, pad_1x1_to_3x3
from .oabn import OABN, check_oabn_gradient, check_oabn_threshold

__all__ = [
    "ScaleLayer",
    "SEBlock",
    "RepVGGBlock",
    "QARepVGGBlock",
    "CSLABlock",
    "HyperSearchBlock",
    "RepOptTargetBlock",
    "FusedConvBlock",
    "conv_bn",
    "block_kernel_bias",
]



# ------------------------------------------------------------------------ validation


def _check_channels(in_channels, out_channels, stride, groups=1):
    in_channels = check_int(in_channels, "in_channels", 1)
    out_channels = check_int(out_channels, "out_channels", 1)
    stride = check_int(stride, "stride", 1)
    groups = check_int(groups, "groups", 1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    return in_channels, out_channels, stride, groups


def _scale_vector(value, name: str, channels: int) -> torch.Tensor:
    """A per-output-channel scale: a real number (broadcast) or a ``(channels,)`` array/tensor."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a real number or a ({channels},) array, got {type(value).__name__}")
    if isinstance(value, numbers.Real):
        t = torch.full((channels,), float(value), dtype=torch.float64, device="cpu")
    else:
        try:
            t = torch.as_tensor(value, device="cpu").detach()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a real number or a ({channels},) array: {exc}") from None
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be real-valued, got dtype {t.dtype}")
        t = t.to(torch.float64)
        if t.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {tuple(t.shape)}")
    if not torch.all(torch.isfinite(t)):
        raise ValueError(f"{name} must contain only finite values")
    return t


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, groups: int = 1, *,
            bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> nn.Sequential:
    """The official ``conv_bn``: ``Sequential(conv=Conv2d(bias=False), bn=BatchNorm2d)`` (SPEC §2)."""
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                                     bias=False))
    seq.add_module("bn", nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum))
    return seq


def _reparam_conv(in_channels, out_channels, stride, groups, kernel, bias) -> nn.Conv2d:
    """``rbr_reparam``: a 3x3 Conv2d with bias holding ``(kernel, bias)`` (their dtype and device)."""
    with torch.device("meta"):  # no default init: the parameters are replaced right away
        conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=True)
    conv.weight = nn.Parameter(kernel.detach().clone())
    conv.bias = nn.Parameter(bias.detach().clone())
    return conv


class _ReparamMixin:
    """Shared deploy plumbing: ``rbr_reparam`` replaces the branches."""

    _branch_names: tuple[str, ...] = ()

    @property
    def deployed(self) -> bool:
        return hasattr(self, "rbr_reparam")

    def switch_to_deploy(self) -> None:
        """Replace the branches by ``rbr_reparam`` (Conv2d 3x3 with bias) in place; idempotent."""
        if self.deployed:
            return
        with torch.no_grad():
            kernel, bias = self.get_equivalent_kernel_bias()
        self.rbr_reparam = _reparam_conv(self.in_channels, self.out_channels, self.stride, self.groups,
                                         kernel.detach(), bias.detach())
        for name in self._branch_names:
            if hasattr(self, name):
                delattr(self, name)
        self.deploy = True


# ------------------------------------------------------------------------- blocks


class SEBlock(nn.Module):
    """Squeeze-and-excitation as in the original RepVGG-D2se: ``x·sigmoid(up(relu(down(gap(x)))))``.

    Keys ``down.{weight,bias}`` (1x1 conv ``C → internal``), ``up.{weight,bias}`` (``internal → C``);
    RepVGG uses ``internal = C // 16``. Non-linear, so it is never fused: a deployed block
    keeps it after ``rbr_reparam``.
    """

    def __init__(self, channels: int, internal: int):
        channels = check_int(channels, "channels", 1)
        internal = check_int(internal, "internal", 1)
        super().__init__()
        self.channels, self.internal = channels, internal
        self.down = nn.Conv2d(channels, internal, 1, 1, bias=True)
        self.up = nn.Conv2d(internal, channels, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.up(F.relu(self.down(F.adaptive_avg_pool2d(x, 1)))))
        return x * w


def _make_se(use_se: bool, out_channels: int) -> SEBlock | None:
    if not use_se:
        return None
    if out_channels < 16:
        raise ValueError(f"use_se needs out_channels >= 16 (the SE block's internal width is out_channels // 16), "
                         f"got {out_channels}")
    return SEBlock(out_channels, out_channels // 16)


class RepVGGBlock(_ReparamMixin, nn.Module):
    """SPEC §2 (and §4 for OABN): ``relu(BN3(conv3x3(x)) + BN1(conv1x1(x)) + BN0(x))``.

    Keys: ``rbr_dense.conv.weight``, ``rbr_dense.bn.*``, ``rbr_1x1.conv.weight``,
    ``rbr_1x1.bn.*``, ``rbr_identity.*`` (iff ``in == out and stride == 1``; an
    :class:`~repspec.torch_impl.modules.oabn.OABN` when ``oabn_threshold`` is finite, else
    ``BatchNorm2d``); deployed: ``rbr_reparam.{weight,bias}``. ``use_se=True`` (RepVGG-D2se)
    adds ``se.{down,up}.{weight,bias}`` (:class:`SEBlock`, internal ``out // 16``) applied to the
    sum before the ReLU; it is not part of the fused kernel and survives deployment.

    Fusion (eval-mode BN): ``K = t3·K3 + t1·pad(K1) + t̃0·I_c``,
    ``b = (β3 − μ3·t3) + (β1 − μ1·t1) + (β0 − μ0·t̃0)`` with ``t̃0`` the (OABN-clipped) factor.
    """

    _branch_names = ("rbr_dense", "rbr_1x1", "rbr_identity")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 oabn_threshold: float = math.inf, deploy: bool = False, *, oabn_gradient: str = "clip",
                 use_se: bool = False, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        in_channels, out_channels, stride, groups = _check_channels(in_channels, out_channels, stride, groups)
        oabn_threshold = check_oabn_threshold(oabn_threshold, "oabn_threshold")
        oabn_gradient = check_oabn_gradient(oabn_gradient, "oabn_gradient")
        deploy = check_bool(deploy, "deploy")
        use_se = check_bool(use_se, "use_se")
        bn_eps = check_nonneg_float(bn_eps, "bn_eps")
        bn_momentum = check_probability(bn_momentum, "bn_momentum")
        se = _make_se(use_se, out_channels)
        super().__init__()
        if se is not None:
            self.se = se
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.oabn_threshold, self.oabn_gradient = oabn_threshold, oabn_gradient
        self.bn_eps, self.bn_momentum = bn_eps, bn_momentum
        self.deploy = deploy
        self.has_identity = in_channels == out_channels and stride == 1
        self.nonlinearity = nn.ReLU()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=True)
            return
        if self.has_identity:
            if math.isinf(oabn_threshold):
                self.rbr_identity = nn.BatchNorm2d(in_channels, eps=bn_eps, momentum=bn_momentum)
            else:
                self.rbr_identity = OABN(in_channels, eps=bn_eps, momentum=bn_momentum, threshold=oabn_threshold,
                                         gradient=oabn_gradient)
        else:
            self.rbr_identity = None
        self.rbr_dense = conv_bn(in_channels, out_channels, 3, stride, 1, groups, bn_eps=bn_eps,
                                 bn_momentum=bn_momentum)
        self.rbr_1x1 = conv_bn(in_channels, out_channels, 1, stride, 0, groups, bn_eps=bn_eps,
                               bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            out = self.rbr_reparam(x)
        else:
            out = self.rbr_dense(x) + self.rbr_1x1(x)
            if self.rbr_identity is not None:
                out = out + self.rbr_identity(x)
        se = getattr(self, "se", None)
        return self.nonlinearity(out if se is None else se(out))

    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused ``(K (O, I/groups, 3, 3), b (O,))`` of SPEC §2 (differentiable)."""
        if self.deployed:
            return self.rbr_reparam.weight, self.rbr_reparam.bias
        k3, b3 = fold_bn(self.rbr_dense.conv.weight, None, self.rbr_dense.bn)
        k1, b1 = fold_bn(pad_1x1_to_3x3(self.rbr_1x1.conv.weight), None, self.rbr_1x1.bn)
        kernel, bias = k3 + k1, b3 + b1
        if self.rbr_identity is not None:
            eye = identity_kernel(self.in_channels, self.groups, dtype=kernel.dtype, device=kernel.device)
            k0, b0 = fold_bn(eye, None, self.rbr_identity)
            kernel, bias = kernel + k0, bias + b0
        return kernel, bias


class QARepVGGBlock(_ReparamMixin, nn.Module):
    """SPEC §2 QARepVGG (YOLOv6): ``relu(BNpost(BN3(conv3x3(x)) + conv1x1(x) + x))``.

    Keys: ``rbr_dense.conv.weight``, ``rbr_dense.bn.*``, ``rbr_1x1.weight`` (no bias),
    ``bn.*`` (post-BN); identity is a plain add (iff ``in == out and stride == 1``).
    Deployed: ``rbr_reparam.{weight,bias}`` and — only with ``keep_post_bn=True`` —
    ``bn.*`` (YOLOv6's layout for QAT).

    ``get_equivalent_kernel_bias(include_post_bn=True)``: ``K = t3·K3 + pad(K1) + I_c``,
    ``b = β3 − μ3·t3``, then ``K ← tpost·K``, ``b ← tpost·(b − μpost) + βpost``.
    """

    _branch_names = ("rbr_dense", "rbr_1x1", "rbr_identity")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 deploy: bool = False, *, keep_post_bn: bool = False, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1):
        in_channels, out_channels, stride, groups = _check_channels(in_channels, out_channels, stride, groups)
        deploy = check_bool(deploy, "deploy")
        keep_post_bn = check_bool(keep_post_bn, "keep_post_bn")
        bn_eps = check_nonneg_float(bn_eps, "bn_eps")
        bn_momentum = check_probability(bn_momentum, "bn_momentum")
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.bn_eps, self.bn_momentum = bn_eps, bn_momentum
        self.deploy = deploy
        self.has_identity = in_channels == out_channels and stride == 1
        self.nonlinearity = nn.ReLU()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=True)
            if keep_post_bn:
                self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
            return
        self.rbr_dense = conv_bn(in_channels, out_channels, 3, stride, 1, groups, bn_eps=bn_eps,
                                 bn_momentum=bn_momentum)
        self.rbr_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, groups=groups, bias=False)
        self.rbr_identity = nn.Identity() if self.has_identity else None
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            out = self.rbr_reparam(x)
            if hasattr(self, "bn"):
                out = self.bn(out)
            return self.nonlinearity(out)
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + x
        return self.nonlinearity(self.bn(out))

    def get_equivalent_kernel_bias(self, include_post_bn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused ``(K, b)`` of SPEC §2; ``include_post_bn=False`` leaves ``BNpost`` out (QAT form)."""
        include_post_bn = check_bool(include_post_bn, "include_post_bn")
        if self.deployed:
            kernel, bias = self.rbr_reparam.weight, self.rbr_reparam.bias
        else:
            kernel, bias = fold_bn(self.rbr_dense.conv.weight, None, self.rbr_dense.bn)
            kernel = kernel + pad_1x1_to_3x3(self.rbr_1x1.weight)
            if self.rbr_identity is not None:
                kernel = kernel + identity_kernel(self.in_channels, self.groups, dtype=kernel.dtype,
                                                  device=kernel.device)
        if include_post_bn and hasattr(self, "bn"):
            kernel, bias = fold_bn(kernel, bias, self.bn)
        return kernel, bias

    def switch_to_deploy(self, keep_post_bn: bool = False) -> None:
        """Fuse the branches into ``rbr_reparam``; fold ``BNpost`` too unless ``keep_post_bn``."""
        keep_post_bn = check_bool(keep_post_bn, "keep_post_bn")
        if self.deployed:
            if not keep_post_bn and hasattr(self, "bn"):
                with torch.no_grad():
                    kernel, bias = self.get_equivalent_kernel_bias(include_post_bn=True)
                    self.rbr_reparam.weight.copy_(kernel)
                    self.rbr_reparam.bias.copy_(bias)
                del self.bn
            return
        with torch.no_grad():
            kernel, bias = self.get_equivalent_kernel_bias(include_post_bn=not keep_post_bn)
        self.rbr_reparam = _reparam_conv(self.in_channels, self.out_channels, self.stride, self.groups,
                                         kernel.detach(), bias.detach())
        for name in self._branch_names:
            delattr(self, name)
        if not keep_post_bn:
            del self.bn
        self.deploy = True


class ScaleLayer(nn.Module):
    """SPEC §3: the official RepOptimizers ``ScaleLayer`` without bias: ``y = x·w[None, :, None, None]``.

    Key: ``weight (C,)``. ``trainable=False`` keeps it a parameter with
    ``requires_grad=False`` (the official CSLA convention), so the key is the same.
    """

    def __init__(self, num_features: int, init=1.0, *, trainable: bool = True, name: str = "scale"):
        num_features = check_int(num_features, "num_features", 1)
        trainable = check_bool(trainable, "trainable")
        value = _scale_vector(init, name, num_features)
        super().__init__()
        self.num_features = num_features
        weight = torch.empty(num_features)  # default dtype and device (honours a device context, e.g. meta)
        with torch.no_grad():
            weight.copy_(value)
        self.weight = nn.Parameter(weight, requires_grad=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.num_features}, trainable={self.weight.requires_grad}"


class _LinearAddBlock(_ReparamMixin, nn.Module):
    """The official ``LinearAddBlock`` layout shared by CSLA and HyperSearch (SPEC §3)."""

    _branch_names = ("conv", "scale_conv", "conv_1x1", "scale_1x1", "scale_identity", "bn")

    def _build(self, in_channels, out_channels, stride, alpha3, alpha1, identity_init, trainable_alpha,
               trainable_identity, bn_eps, bn_momentum):
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, 1
        self.deploy = False
        self.nonlinearity = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.scale_conv = ScaleLayer(out_channels, alpha3, trainable=trainable_alpha, name="scale_conv")
        self.conv_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
        self.scale_1x1 = ScaleLayer(out_channels, alpha1, trainable=trainable_alpha, name="scale_1x1")
        if identity_init is not None:
            self.scale_identity = ScaleLayer(out_channels, identity_init, trainable=trainable_identity,
                                             name="scale_identity")
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)

    @property
    def has_identity(self) -> bool:
        return hasattr(self, "scale_identity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            return self.nonlinearity(self.rbr_reparam(x))
        out = self.scale_conv(self.conv(x)) + self.scale_1x1(self.conv_1x1(x))
        if self.has_identity:
            out = out + self.scale_identity(x)
        return self.nonlinearity(self.bn(out))

    def get_equivalent_kernel(self) -> torch.Tensor:
        """SPEC §3 ``W' = α3·K3 + α1·pad(K1) + diag(d)·I_c`` (BN not included; differentiable)."""
        if self.deployed:
            raise RuntimeError("the block is deployed; its branches (and W') are gone")
        d = self.scale_identity.weight if self.has_identity else None
        return csla_equivalent_kernel(self.conv.weight, self.conv_1x1.weight, self.scale_conv.weight,
                                      self.scale_1x1.weight, d)

    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W'`` with the block's BN folded (eval mode): ``(t·W', β − μ·t)``."""
        if self.deployed:
            return self.rbr_reparam.weight, self.rbr_reparam.bias
        return fold_bn(self.get_equivalent_kernel(), None, self.bn)


class CSLABlock(_LinearAddBlock):
    """SPEC §3 CSLA block: ``relu(BN(α3·conv3x3(x; K3) + α1·conv1x1(x; K1) + d·x))``.

    Official ``LinearAddBlock(is_csla=True)`` layout: ``conv.weight``, ``scale_conv.weight``,
    ``conv_1x1.weight``, ``scale_1x1.weight``, ``scale_identity.weight`` (iff an identity
    branch exists), ``bn.*``. ``α3, α1`` (``scale_conv``, ``scale_1x1``: a number or an
    ``(O,)`` array) are constant — parameters with ``requires_grad=False``, so the keys
    are the same as HyperSearch's. ``identity``: ``'trainable'`` (``d`` is trained: the
    theorem's setting), ``'constant'`` (``d`` frozen; equivalence then needs ``λ = 0``),
    ``'none'`` (no identity branch); ``None`` (default) means ``'trainable'`` when
    ``in == out and stride == 1`` else ``'none'`` (the official choice, as the reference).
    An identity other than ``'none'`` needs ``in == out and stride == 1``. ``d`` starts at
    ``scale_identity`` (default 1).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, scale_conv=1.0, scale_1x1=1.0,
                 identity: str | None = None, *, scale_identity=1.0, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1):
        in_channels, out_channels, stride, _ = _check_channels(in_channels, out_channels, stride)
        possible = in_channels == out_channels and stride == 1
        if identity is None:
            identity = "trainable" if possible else "none"
        if not isinstance(identity, str):
            raise TypeError(f"identity must be one of {IDENTITY_MODES} or None, got {type(identity).__name__}")
        if identity not in IDENTITY_MODES:
            raise ValueError(f"identity must be one of {IDENTITY_MODES} or None, got {identity!r}")
        if identity != "none" and not possible:
            raise ValueError(f"identity={identity!r} needs in_channels == out_channels and stride == 1, got "
                             f"in_channels={in_channels}, out_channels={out_channels}, stride={stride}; "
                             f"use identity='none'")
        alpha3 = _scale_vector(scale_conv, "scale_conv", out_channels)
        alpha1 = _scale_vector(scale_1x1, "scale_1x1", out_channels)
        d0 = _scale_vector(scale_identity, "scale_identity", out_channels) if identity != "none" else None
        bn_eps = check_nonneg_float(bn_eps, "bn_eps")
        bn_momentum = check_probability(bn_momentum, "bn_momentum")
        super().__init__()
        self.identity = identity
        self._build(in_channels, out_channels, stride, alpha3, alpha1, d0, False, identity == "trainable",
                    bn_eps, bn_momentum)


class HyperSearchBlock(_LinearAddBlock):
    """SPEC §3 HyperSearch block: the CSLA block with *trainable* ``α3, α1, d`` and BN after the sum.

    Same keys as :class:`CSLABlock`. Init (official): ``α3 = α1 = conv_scale_init``
    (1 for stage0 and the first block of a stage, ``sqrt(2/i)`` for block ``i ≥ 1``;
    see :func:`repspec.torch_impl.modules.models.hypersearch_scale_init`), ``d = 1``; the identity
    branch exists iff ``in == out and stride == 1``. Only ``d`` should be weight-decayed
    (the optimizer's business; see :meth:`scale_parameters`).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, conv_scale_init=1.0, *,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        in_channels, out_channels, stride, _ = _check_channels(in_channels, out_channels, stride)
        alpha = _scale_vector(conv_scale_init, "conv_scale_init", out_channels)
        bn_eps = check_nonneg_float(bn_eps, "bn_eps")
        bn_momentum = check_probability(bn_momentum, "bn_momentum")
        super().__init__()
        #: the initial α (a float when given as a number, else None)
        self.conv_scale_init = float(conv_scale_init) if isinstance(conv_scale_init, numbers.Real) else None
        present = in_channels == out_channels and stride == 1
        self._build(in_channels, out_channels, stride, alpha, alpha, 1.0 if present else None, True, True,
                    bn_eps, bn_momentum)

    def scale_parameters(self) -> dict[str, nn.Parameter]:
        """``{'scale_conv.weight': α3, 'scale_1x1.weight': α1[, 'scale_identity.weight': d]}``."""
        out = {"scale_conv.weight": self.scale_conv.weight, "scale_1x1.weight": self.scale_1x1.weight}
        if self.has_identity:
            out["scale_identity.weight"] = self.scale_identity.weight
        return out


class RepOptTargetBlock(_ReparamMixin, nn.Module):
    """SPEC §3 RepOpt-VGG target block (official ``RealVGGBlock``): ``relu(BN(conv3x3(x)))``.

    Keys: ``conv.weight`` (no bias), ``bn.*``. :meth:`reinitialize` sets the conv to
    ``W'_0 = α3·K3_0 + α1·pad(K1_0) + diag(d)·I_c`` from freshly initialized imaginary
    kernels (SPEC §3 "Re-initialization").
    """

    _branch_names = ("conv", "bn")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1):
        in_channels, out_channels, stride, _ = _check_channels(in_channels, out_channels, stride)
        bn_eps = check_nonneg_float(bn_eps, "bn_eps")
        bn_momentum = check_probability(bn_momentum, "bn_momentum")
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, 1
        self.deploy = False
        self.has_identity = in_channels == out_channels and stride == 1
        self.nonlinearity = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            return self.nonlinearity(self.rbr_reparam(x))
        return self.nonlinearity(self.bn(self.conv(x)))

    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv with its BN folded (eval mode): ``(t·W, β − μ·t)``."""
        if self.deployed:
            return self.rbr_reparam.weight, self.rbr_reparam.bias
        return fold_bn(self.conv.weight, None, self.bn)

    @torch.no_grad()
    def reinitialize(self, scale_conv=1.0, scale_1x1=1.0, scale_identity=None, *,
                     generator: torch.Generator | None = None) -> None:
        """Set ``conv.weight`` to ``W'_0`` built from fresh imaginary kernels (SPEC §3).

        ``K3_0, K1_0`` get PyTorch's default conv init (Kaiming-uniform, ``a = sqrt(5)``),
        drawn from ``generator`` when given. ``scale_identity`` (only allowed when the
        block has an identity, i.e. ``in == out and stride == 1``) defaults to 1 there.
        Validates every argument before touching the weight.
        """
        if self.deployed:
            raise RuntimeError("the block is deployed")
        o = self.out_channels
        alpha3 = _scale_vector(scale_conv, "scale_conv", o)
        alpha1 = _scale_vector(scale_1x1, "scale_1x1", o)
        if scale_identity is not None and not self.has_identity:
            raise ValueError("scale_identity given but the block has no identity branch (in != out or stride != 1)")
        d = _scale_vector(1.0 if scale_identity is None else scale_identity, "scale_identity", o) \
            if self.has_identity else None
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        w = self.conv.weight
        if w.is_meta:  # shapes only: nothing to initialize
            return
        dtype = w.dtype
        k3 = _kaiming_uniform((o, self.in_channels, 3, 3), dtype, generator)  # on the CPU
        k1 = _kaiming_uniform((o, self.in_channels), dtype, generator)
        kernel = csla_equivalent_kernel(k3, k1.view(o, self.in_channels, 1, 1), alpha3.to(dtype), alpha1.to(dtype),
                                        None if d is None else d.to(dtype))
        w.copy_(kernel)


def _kaiming_uniform(shape, dtype, generator) -> torch.Tensor:
    """``nn.Conv2d``'s default weight init ``U(−b, b)``, ``b = 1/sqrt(fan_in)`` (1x1 kernels as ``(O, I)``)."""
    fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape, dtype=dtype, device="cpu").uniform_(-bound, bound, generator=generator)


class FusedConvBlock(nn.Module):
    """SPEC §2: a deployed block — ``relu(conv3x3(x; K) + b)``, keys ``rbr_reparam.{weight,bias}``
    (and ``se.*`` for a RepVGG-D2se block: ``relu(se(conv3x3(x; K) + b))``).

    Equal to the official ``RepVGGBlock(deploy=True)`` layout; :func:`repspec.torch_impl.modules.deploy.convert_to_deploy`
    builds networks of these.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, *,
                 use_se: bool = False):
        in_channels, out_channels, stride, groups = _check_channels(in_channels, out_channels, stride, groups)
        se = _make_se(check_bool(use_se, "use_se"), out_channels)
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.rbr_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=True)
        if se is not None:
            self.se = se
        self.nonlinearity = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_reparam(x)
        se = getattr(self, "se", None)
        return self.nonlinearity(out if se is None else se(out))

    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rbr_reparam.weight, self.rbr_reparam.bias


def block_kernel_bias(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode single conv of any block in this module (no gradient)."""
    if not hasattr(block, "get_equivalent_kernel_bias"):
        raise TypeError(f"{type(block).__name__} is not a re-parameterizable block")
    with torch.no_grad():
        kernel, bias = block.get_equivalent_kernel_bias()
    return kernel.detach().clone(), bias.detach().clone()
