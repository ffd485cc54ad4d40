"""SPEC §3 "Architectures": the RepVGG-family networks and their registry.

One skeleton, :class:`VGGNet`, in the official RepVGG layout — ``stage0`` (a single
block), ``stage1.0 … stage1.k``, …, ``gap``, ``linear`` — filled with any block kind
by a ``block_factory``. ``create_model(name, num_classes=1000, **overrides)`` builds
the registered architectures; ``list_models()`` lists their names.

Registered names (``blocks`` per stage incl. stage0, ``widths``, first-block ``strides``)
--------------------------------------------------------------------------------------
ImageNet sizes (official: stage0 = min(64, 64a); stages 64a, 128a, 256a, 512b; stride 2 first):

==========================  =====================  ===========================  ==============
size                        blocks                 widths                       strides
==========================  =====================  ===========================  ==============
``a0`` (a=0.75, b=2.5)      1, 2, 4, 14, 1         48, 48, 96, 192, 1280        2, 2, 2, 2, 2
``a1`` (a=1, b=2.5)         1, 2, 4, 14, 1         64, 64, 128, 256, 1280       2, 2, 2, 2, 2
``b0`` (a=1, b=2.5)         1, 4, 6, 16, 1         64, 64, 128, 256, 1280       2, 2, 2, 2, 2
``b1`` (a=2, b=4)           1, 4, 6, 16, 1         64, 128, 256, 512, 2048      2, 2, 2, 2, 2
``tiny8`` (8x8 inputs)      1, 2, 2, 1             8, 8, 16, 32                 1, 1, 2, 2
``tiny32`` (32x32 inputs)   1, 2, 2, 2, 1          16, 16, 32, 64, 128          1, 2, 2, 2, 2
==========================  =====================  ===========================  ==============

More sizes: ``a2`` (a=1.5, b=2.75), ``b2`` (a=2.5, b=5), ``b3`` (a=3, b=5) in every family;
``b1g2 … b3g4`` (groups 2/4 on the original's ``optional_groupwise_layers``) for the families
whose blocks take groups (``repvgg``, ``repvgg_oabn``, ``qarepvgg``); ``d2se`` ([8,14,24,1],
a=2.5, b=5, SE blocks) for ``repvgg``; ``l1`` ([8,14,24,1], a=2, b=4) and ``l2`` (a=2.5, b=5)
for ``csla_vgg``, ``repopt_vgg``, ``hs_vgg`` (RepOpt-VGG-L1/L2).

``tiny8`` keeps 8x8 in stage0/stage1 (8 → 8 → 8 → 4 → 2); ``tiny32`` keeps 32x32 in stage0
(32 → 32 → 16 → 8 → 4 → 2).

Families (block kind, extra overrides):

- ``repvgg_{a0,a1,b0,b1,tiny8,tiny32}``: :class:`RepVGGBlock` (SPEC §2); ``oabn_threshold``
  (default ``inf``), ``oabn_gradient``, ``deploy``.
- ``repvgg_{a0,a1,b0,b1,tiny8,tiny32}_oabn``: the same with an OABN identity (SPEC §4),
  ``oabn_threshold`` default 2.0 (the seed: s ≈ 1–3 best on ImageNet).
- ``qarepvgg_{a0,a1,b0,b1,tiny8,tiny32}``: :class:`QARepVGGBlock` (SPEC §2); ``deploy``,
  ``keep_post_bn`` (with ``deploy=True``: ``rbr_reparam`` then the post-BN, YOLOv6's deploy form).
- ``csla_vgg_{…}``: :class:`CSLABlock` (SPEC §3) with constant scales from ``scales``
  (a state dict keyed ``stage{k}.{i}.scale_{conv|1x1|identity}.weight``; default ``None``:
  the original ``RepOptVGG(mode='csla')`` constants, :func:`hypersearch_scale_init` and
  ``d = 1``; ``'unit'``: all 1),
  ``identity`` (``'trainable'`` default | ``'constant'`` | ``'none'``) for blocks that can
  have one.
- ``repopt_vgg_{…}``: :class:`RepOptTargetBlock` (SPEC §3). Each conv is re-initialized to
  ``W'_0 = α3·K3_0 + α1·pad(K1_0) + diag(d)·I_c`` from ``scales`` (default: unit scales)
  with fresh imaginary kernels (``seed`` for a ``torch.Generator``;
  ``use_identity_scales=False`` uses ``d = 1``); the model keeps the scales in
  ``model.repopt_scales`` (float64 tensors keyed like the scale file).
- ``hs_vgg_{…}``: :class:`HyperSearchBlock` (SPEC §3) with :func:`hypersearch_scale_init`.

Every family also accepts ``in_channels`` (default 3), ``num_blocks``, ``widths``,
``strides`` (replacing the size's config), ``bn_eps``, ``bn_momentum``, and the original
RepVGG parametrization ``width_multiplier=[a0, a1, a2, a3]`` with ``num_blocks`` of stages
1..4 (stage0 not counted), translated to the above. ``repvgg*`` and ``qarepvgg`` accept
``groups`` (on ``OPTIONAL_GROUPWISE_LAYERS``) or ``override_groups_map`` (``{global layer
index: groups}``, stage1's first block = 1); ``repvgg`` accepts ``use_se``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

# the registry is plain data in a torch-free module (the CLI checks names before importing torch)
from repspec.core.architectures import (
    _COMMON_OVERRIDES,
    _FAMILIES,
    ARCHITECTURES,
    OPTIONAL_GROUPWISE_LAYERS,
    ArchConfig,
    list_models,
)
from repspec.core.vocabulary import IDENTITY_MODES

from .blocks import (
    CSLABlock,
    HyperSearchBlock,
    QARepVGGBlock,
    RepOptTargetBlock,
    RepVGGBlock,
    _LinearAddBlock,
    _scale_vector,
)
from .oabn import check_oabn_gradient, check_oabn_threshold

__all__ = [
    "VGGNet",
    "ArchConfig",
    "ARCHITECTURES",
    "create_model",
    "list_models",
    "hypersearch_scale_init",
    "expected_scale_keys",
    "repopt_from_csla",
]

#: ``block_factory(in_channels, out_channels, stride, stage_index, block_index) -> nn.Module``
BlockFactory = Callable[[int, int, int, int, int], nn.Module]


def hypersearch_scale_init(stage_index: int, block_index: int) -> float:
    """SPEC §3: initial ``α3 = α1`` of HyperSearch block ``block_index`` of stage ``stage_index``.

    1 for stage0 and for block 0 of every stage, ``sqrt(2/i)`` for block ``i ≥ 1``.
    """
    if stage_index == 0 or block_index == 0:
        return 1.0
    return math.sqrt(2.0 / block_index)


def _check_int_seq(value, name: str, length: int | None = None, min_value: int = 1) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of integers, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}[{i}] must be an integer, got {type(v).__name__}")
        if v < min_value:
            raise ValueError(f"{name}[{i}] must be >= {min_value}, got {v}")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name} must not be empty")
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} entries (one per stage), got {len(out)}")
    return tuple(out)


class VGGNet(nn.Module):
    """SPEC §3 "Architectures": the RepVGG/RepOpt-VGG skeleton, ``stage0 → stage1 … → gap → linear``.

    ``VGGNet(block_factory, num_blocks, widths, strides, num_classes, in_channels=3)``:
    ``num_blocks[k]``, ``widths[k]``, ``strides[k]`` describe stage ``k`` (``num_blocks[0]``
    must be 1: ``stage0`` is a single block, stored directly as in the official code;
    stages ``k ≥ 1`` are ``nn.Sequential``). ``strides[k]`` applies to the first block of
    stage ``k``, the others have stride 1. ``block_factory(in, out, stride, stage, index)``
    returns the block. Head: ``gap = AdaptiveAvgPool2d(1)``, ``linear = Linear(widths[-1], K)``.
    """

    def __init__(self, block_factory: BlockFactory, num_blocks: Sequence[int], widths: Sequence[int],
                 strides: Sequence[int], num_classes: int = 1000, in_channels: int = 3):
        if not callable(block_factory):
            raise TypeError(f"block_factory must be callable, got {type(block_factory).__name__}")
        num_blocks = _check_int_seq(num_blocks, "num_blocks")
        widths = _check_int_seq(widths, "widths", len(num_blocks))
        strides = _check_int_seq(strides, "strides", len(num_blocks))
        if num_blocks[0] != 1:
            raise ValueError(f"num_blocks[0] must be 1 (stage0 is a single block), got {num_blocks[0]}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, numbers.Integral) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        super().__init__()
        self.num_blocks, self.widths, self.strides = num_blocks, widths, strides
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        cin = self.in_channels
        self.stage0 = block_factory(cin, widths[0], strides[0], 0, 0)
        cin = widths[0]
        for k in range(1, len(num_blocks)):
            blocks = []
            for i in range(num_blocks[k]):
                blocks.append(block_factory(cin, widths[k], strides[k] if i == 0 else 1, k, i))
                cin = widths[k]
            self.add_module(f"stage{k}", nn.Sequential(*blocks))
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(widths[-1], self.num_classes)

    @property
    def num_stages(self) -> int:
        return len(self.num_blocks)

    def named_blocks(self) -> Iterator[tuple[str, nn.Module]]:
        """``("stage0", b), ("stage1.0", b), …`` in forward order (the state-dict prefixes)."""
        yield "stage0", self.stage0
        for k in range(1, self.num_stages):
            for i, block in enumerate(getattr(self, f"stage{k}")):
                yield f"stage{k}.{i}", block

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage0(x)
        for k in range(1, self.num_stages):
            out = getattr(self, f"stage{k}")(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gap(self.features(x))
        return self.linear(torch.flatten(out, 1))

    def switch_to_deploy(self) -> None:
        """Every block's ``switch_to_deploy()`` in place (see :func:`repspec.torch_impl.modules.deploy.convert_to_deploy`
        for a non-destructive conversion to a plain network)."""
        for _, block in self.named_blocks():
            block.switch_to_deploy()


# ------------------------------------------------------------------------- registry


def _block_layout(num_blocks, widths, strides, in_channels) -> list[tuple[str, int, int, int, int, int]]:
    """``[(prefix, in, out, stride, stage, index)]`` in forward order."""
    out, cin = [], in_channels
    for k, (n, w, s) in enumerate(zip(num_blocks, widths, strides)):
        for i in range(n):
            prefix = "stage0" if k == 0 else f"stage{k}.{i}"
            out.append((prefix, cin, w, s if i == 0 else 1, k, i))
            cin = w
    return out


def expected_scale_keys(name_or_model, **overrides) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the scale file of an architecture (``stage{k}.{i}.scale_*.weight``).

    Blocks with an identity branch (``in == out and stride == 1``) have three entries,
    the others two — the layout of the published RepOpt-VGG scale files.
    """
    if isinstance(name_or_model, VGGNet):
        layout = _block_layout(name_or_model.num_blocks, name_or_model.widths, name_or_model.strides,
                               name_or_model.in_channels)
    else:
        cfg, opts = _resolve(name_or_model, 1, overrides)
        layout = _block_layout(opts["num_blocks"], opts["widths"], opts["strides"], opts["in_channels"])
    keys: dict[str, tuple[int, ...]] = {}
    for prefix, cin, cout, stride, _, _ in layout:
        keys[f"{prefix}.scale_conv.weight"] = (cout,)
        keys[f"{prefix}.scale_1x1.weight"] = (cout,)
        if cin == cout and stride == 1:
            keys[f"{prefix}.scale_identity.weight"] = (cout,)
    return keys


def _scale_tensors(scales, layout, default: str = "unit") -> dict[str, torch.Tensor]:
    """Validate a scale state dict against ``layout``; ``None`` → ``default`` (``'unit'`` or
    ``'hypersearch'``, see :func:`hypersearch_scale_init`), also given by name. Returns float64 CPU tensors."""
    expected: dict[str, int] = {}
    init: dict[str, float] = {}
    for prefix, cin, cout, stride, stage, index in layout:
        expected[f"{prefix}.scale_conv.weight"] = cout
        expected[f"{prefix}.scale_1x1.weight"] = cout
        init[f"{prefix}.scale_conv.weight"] = init[f"{prefix}.scale_1x1.weight"] = hypersearch_scale_init(stage, index)
        if cin == cout and stride == 1:
            expected[f"{prefix}.scale_identity.weight"] = cout
            init[f"{prefix}.scale_identity.weight"] = 1.0
    if scales is None:
        scales = default
    if isinstance(scales, str):
        if scales == "unit":
            return {k: torch.ones(c, dtype=torch.float64, device="cpu") for k, c in expected.items()}
        if scales == "hypersearch":
            return {k: torch.full((c,), init[k], dtype=torch.float64, device="cpu") for k, c in expected.items()}
        raise ValueError(f"scales must be a scale state dict, 'unit', 'hypersearch' or None, got {scales!r}")
    if not isinstance(scales, Mapping):
        raise TypeError(f"scales must be a mapping (a scale state dict) or None, got {type(scales).__name__}")
    extra = sorted(set(scales) - set(expected))
    missing = sorted(set(expected) - set(scales))
    if extra or missing:
        raise ValueError(f"scales do not match the architecture: missing {missing}, unexpected {extra}")
    out = {}
    for k, c in expected.items():
        v = scales[k]
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            # a scale state dict holds one (c,) vector per key; a bare number is not broadcast here
            raise ValueError(f"scales[{k!r}] must have shape ({c},), got a scalar")
        out[k] = _scale_vector(v, f"scales[{k!r}]", c).clone()
    return out


def _original_parametrization(cfg: ArchConfig, opts: dict, overrides: Mapping) -> None:
    """``width_multiplier=[a0, a1, a2, a3]`` (+ ``num_blocks`` of stages 1..4): the original RepVGG / RepOpt-VGG
    parametrization, translated to repspec's (stage0 included, absolute widths)."""
    wm = overrides["width_multiplier"]
    if "widths" in overrides:
        raise TypeError("give widths (absolute, stage0 included) or width_multiplier (the original's), not both")
    if isinstance(wm, (str, bytes)) or not isinstance(wm, Sequence) or len(wm) != 4:
        raise ValueError(f"width_multiplier must be 4 numbers (stages 1..4, as in the original RepVGG), got {wm!r}")
    for i, a in enumerate(wm):
        if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(a) or a <= 0:
            raise ValueError(f"width_multiplier[{i}] must be a positive number, got {a!r}")
    if "num_blocks" in overrides:
        nb = _check_int_seq(overrides["num_blocks"], "num_blocks")
        if len(nb) != 4:
            raise ValueError(f"with width_multiplier, num_blocks must be the original's 4 entries (stages 1..4, "
                             f"stage0 not counted), got {len(nb)}")
    elif len(cfg.num_blocks) == 5:
        nb = cfg.num_blocks[1:]
    else:
        raise ValueError("width_multiplier needs num_blocks=[n1, n2, n3, n4] for this architecture")
    a = [float(x) for x in wm]
    opts["num_blocks"] = (1,) + tuple(nb)
    opts["widths"] = (min(64, int(64 * a[0])), int(64 * a[0]), int(128 * a[1]), int(256 * a[2]), int(512 * a[3]))
    if "strides" not in overrides:
        opts["strides"] = (2, 2, 2, 2, 2)


def _groups_map(groups, override_groups_map) -> dict[int, int]:
    """``{global layer index: groups}`` (stage1's first block is layer 1; stage0 never grouped)."""
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if override_groups_map is not None:
        if groups != 1:
            raise TypeError("give groups (applied to the original's optional_groupwise_layers) or "
                            "override_groups_map ({layer index: groups}), not both")
        if not isinstance(override_groups_map, Mapping):
            raise TypeError(f"override_groups_map must be a dict {{layer index: groups}}, "
                            f"got {type(override_groups_map).__name__}")
        out = {}
        for k, v in override_groups_map.items():
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise ValueError(f"override_groups_map keys must be layer indices >= 1 (stage1's first block is 1; "
                                 f"stage0 cannot be grouped), got {k!r}")
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"override_groups_map[{k}] must be a positive integer, got {v!r}")
            out[int(k)] = int(v)
        return out
    return {} if groups == 1 else {layer: int(groups) for layer in OPTIONAL_GROUPWISE_LAYERS}


def _resolve(name, num_classes, overrides) -> tuple[ArchConfig, dict[str, Any]]:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())}")
    cfg = ARCHITECTURES[name]
    allowed = _COMMON_OVERRIDES + _FAMILIES[cfg.family][3]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(f"create_model({name!r}) got unexpected override(s) {unknown}; allowed: {sorted(allowed)}")
    opts: dict[str, Any] = dict(cfg.defaults)
    opts.update(in_channels=3, num_blocks=cfg.num_blocks, widths=cfg.widths, strides=cfg.strides,
                bn_eps=1e-5, bn_momentum=0.1)
    opts.update(overrides)
    if overrides.get("width_multiplier") is not None:
        _original_parametrization(cfg, opts, overrides)
    opts.pop("width_multiplier", None)
    nb = _check_int_seq(opts["num_blocks"], "num_blocks")
    opts["num_blocks"] = nb
    opts["widths"] = _check_int_seq(opts["widths"], "widths", len(nb))
    opts["strides"] = _check_int_seq(opts["strides"], "strides", len(nb))
    if nb[0] != 1:
        raise ValueError(f"num_blocks[0] must be 1 (stage0 is a single block), got {nb[0]}")
    cin = opts["in_channels"]
    if isinstance(cin, bool) or not isinstance(cin, numbers.Integral) or cin < 1:
        raise ValueError(f"in_channels must be a positive integer, got {cin!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    for key in ("bn_eps", "bn_momentum"):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0 \
                or (key == "bn_momentum" and v > 1):
            raise ValueError(f"{key} must be a finite number {'in [0, 1]' if key == 'bn_momentum' else '>= 0'}, "
                             f"got {v!r}")
    if "oabn_threshold" in opts:
        opts["oabn_threshold"] = check_oabn_threshold(opts["oabn_threshold"], "oabn_threshold")
        opts["oabn_gradient"] = check_oabn_gradient(opts["oabn_gradient"], "oabn_gradient")
    for key in ("deploy", "use_identity_scales"):
        if key in opts and not isinstance(opts[key], bool):
            raise TypeError(f"{key} must be a bool, got {type(opts[key]).__name__}")
    for key in ("keep_post_bn", "use_se"):
        if key in opts and not isinstance(opts[key], bool):
            raise TypeError(f"{key} must be a bool, got {type(opts[key]).__name__}")
    if opts.get("keep_post_bn") and not opts["deploy"]:
        raise ValueError("keep_post_bn=True needs deploy=True (a training-form QARepVGG block always has its post-BN)")
    if "groups" in opts:
        opts["groups_map"] = _groups_map(opts.get("groups"), opts.pop("override_groups_map", None))
    if "identity" in opts and opts["identity"] not in IDENTITY_MODES:
        raise ValueError(f"identity must be one of {IDENTITY_MODES}, got {opts['identity']!r}")
    if opts.get("seed") is not None and (isinstance(opts["seed"], bool)
                                         or not isinstance(opts["seed"], numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {type(opts['seed']).__name__}")
    return cfg, opts


def create_model(name: str, num_classes: int = 1000, **overrides) -> VGGNet:
    """Build a registered architecture (see the module docstring for names, configs and overrides).

    Every argument is validated before anything is built: an unknown name raises
    ``ValueError`` listing the valid names; an unknown override raises ``TypeError``
    listing the allowed ones.
    """
    cfg, opts = _resolve(name, num_classes, overrides)
    nb, widths, strides, cin = opts["num_blocks"], opts["widths"], opts["strides"], opts["in_channels"]
    bn = dict(bn_eps=float(opts["bn_eps"]), bn_momentum=float(opts["bn_momentum"]))
    layout = _block_layout(nb, widths, strides, cin)
    scales = None
    if cfg.family in ("csla", "repopt"):
        scales = _scale_tensors(opts["scales"], layout, "hypersearch" if cfg.family == "csla" else "unit")

    def prefix_of(stage, index):
        return "stage0" if stage == 0 else f"stage{stage}.{index}"

    first_layer = [0, 1]  # global layer index (the original's cur_layer_idx) of each stage's first block
    for n in nb[1:]:
        first_layer.append(first_layer[-1] + n)
    groups_map = opts.get("groups_map", {})

    def groups_of(stage, index):
        return 1 if stage == 0 else groups_map.get(first_layer[stage] + index, 1)

    family = cfg.family
    if family in ("repvgg", "repvgg_oabn"):
        def factory(i, o, s, stage, index):
            return RepVGGBlock(i, o, s, groups_of(stage, index), oabn_threshold=opts["oabn_threshold"],
                               deploy=opts["deploy"], oabn_gradient=opts["oabn_gradient"],
                               use_se=opts.get("use_se", False), **bn)
    elif family == "qarepvgg":
        def factory(i, o, s, stage, index):
            return QARepVGGBlock(i, o, s, groups_of(stage, index), deploy=opts["deploy"],
                                 keep_post_bn=opts["keep_post_bn"], **bn)
    elif family == "csla":
        def factory(i, o, s, stage, index):
            p = prefix_of(stage, index)
            has_id = i == o and s == 1
            ident = opts["identity"] if has_id else "none"
            d = scales[f"{p}.scale_identity.weight"] if has_id else 1.0
            return CSLABlock(i, o, s, scales[f"{p}.scale_conv.weight"], scales[f"{p}.scale_1x1.weight"],
                             ident, scale_identity=d, **bn)
    elif family == "hs":
        def factory(i, o, s, stage, index):
            return HyperSearchBlock(i, o, s, hypersearch_scale_init(stage, index), **bn)
    elif family == "repopt":
        def factory(i, o, s, stage, index):
            return RepOptTargetBlock(i, o, s, **bn)
    else:  # pragma: no cover - the registry only holds the families above
        raise AssertionError(family)

    model = VGGNet(factory, nb, widths, strides, num_classes, cin)
    if family == "repopt":
        gen = None
        if opts["seed"] is not None:
            gen = torch.Generator().manual_seed(int(opts["seed"]))
        for prefix, block in model.named_blocks():
            d = scales.get(f"{prefix}.scale_identity.weight")
            if d is not None and not opts["use_identity_scales"]:
                d = torch.ones_like(d)
            block.reinitialize(scales[f"{prefix}.scale_conv.weight"], scales[f"{prefix}.scale_1x1.weight"], d,
                               generator=gen)
        model.repopt_scales = scales
    elif family == "csla":
        model.repopt_scales = scales
    return model


@torch.no_grad()
def repopt_from_csla(csla_model: VGGNet) -> VGGNet:
    """The RepOpt-VGG target twin of a CSLA (or HyperSearch) network (SPEC §3 theorem).

    Same layout; every target ``conv.weight = W'`` of the corresponding block, BN
    parameters and running statistics and the head copied; dtype and device preserved.
    ``repopt_scales`` holds the CSLA scales (float64, keyed like a scale file).
    The input is not modified.
    """
    if not isinstance(csla_model, VGGNet):
        raise TypeError(f"csla_model must be a VGGNet, got {type(csla_model).__name__}")
    blocks = dict(csla_model.named_blocks())
    for prefix, block in blocks.items():
        if not isinstance(block, _LinearAddBlock) or block.deployed:
            raise TypeError(f"block {prefix!r} must be a (non-deployed) CSLABlock or HyperSearchBlock, "
                            f"got {type(block).__name__}")
    ref = next(iter(csla_model.parameters()))

    def factory(i, o, s, stage, index):
        p = "stage0" if stage == 0 else f"stage{stage}.{index}"
        src = blocks[p]
        return RepOptTargetBlock(i, o, s, bn_eps=src.bn.eps, bn_momentum=src.bn.momentum)

    target = VGGNet(factory, csla_model.num_blocks, csla_model.widths, csla_model.strides, csla_model.num_classes,
                    csla_model.in_channels).to(dtype=ref.dtype, device=ref.device)
    scales: dict[str, torch.Tensor] = {}
    for prefix, block in target.named_blocks():
        src = blocks[prefix]
        block.conv.weight.copy_(src.get_equivalent_kernel())
        block.bn.load_state_dict(src.bn.state_dict())
        for key, p in (("scale_conv", src.scale_conv), ("scale_1x1", src.scale_1x1)):
            scales[f"{prefix}.{key}.weight"] = p.weight.detach().to("cpu", torch.float64).clone()
        if src.has_identity:
            scales[f"{prefix}.scale_identity.weight"] = src.scale_identity.weight.detach().to(
                "cpu", torch.float64).clone()
    target.linear.load_state_dict(csla_model.linear.state_dict())
    target.repopt_scales = scales
    target.train(csla_model.training)
    return target
