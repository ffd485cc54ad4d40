"""SPEC §3 "Architectures": the model registry as plain data — names, block families, per-stage layouts.

Standard library only (no torch): the command line checks a ``--model`` name against
:func:`list_models` before torch is imported, and
:mod:`repspec.torch_impl.modules.models` builds the networks from :data:`ARCHITECTURES`
(``create_model``). Layouts follow the original code: ``_official(num_blocks, a, b)``
is RepVGG's width rule ``(min(64, 64a), 64a, 128a, 256a, 512b)`` with stride 2 in
every stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ArchConfig", "ARCHITECTURES", "OPTIONAL_GROUPWISE_LAYERS", "list_models"]


@dataclass(frozen=True)
class ArchConfig:
    """SPEC §3 "Architectures": one registry entry — block family, per-stage config, family defaults, description."""

    family: str
    num_blocks: tuple[int, ...]
    widths: tuple[int, ...]
    strides: tuple[int, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _official(num_blocks, a: float, b: float) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    widths = (min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b))
    return (1,) + tuple(num_blocks), widths, (2, 2, 2, 2, 2)


#: the original's ``optional_groupwise_layers`` (RepVGG ``repvgg.py``): global layer indices
#: counted from stage1's first block (= 1) — odd-indexed blocks among stages 1..4
OPTIONAL_GROUPWISE_LAYERS = tuple(range(2, 27, 2))

_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str]] = {
    "a0": (*_official((2, 4, 14, 1), 0.75, 2.5), "RepVGG-A0 layout: [2,4,14,1], a=0.75, b=2.5"),
    "a1": (*_official((2, 4, 14, 1), 1.0, 2.5), "RepVGG-A1 layout: [2,4,14,1], a=1, b=2.5"),
    "a2": (*_official((2, 4, 14, 1), 1.5, 2.75), "RepVGG-A2 layout: [2,4,14,1], a=1.5, b=2.75"),
    "b0": (*_official((4, 6, 16, 1), 1.0, 2.5), "RepVGG-B0 layout: [4,6,16,1], a=1, b=2.5"),
    "b1": (*_official((4, 6, 16, 1), 2.0, 4.0), "RepVGG-B1 layout: [4,6,16,1], a=2, b=4"),
    "b2": (*_official((4, 6, 16, 1), 2.5, 5.0), "RepVGG-B2 layout: [4,6,16,1], a=2.5, b=5"),
    "b3": (*_official((4, 6, 16, 1), 3.0, 5.0), "RepVGG-B3 layout: [4,6,16,1], a=3, b=5"),
    "tiny8": ((1, 2, 2, 1), (8, 8, 16, 32), (1, 1, 2, 2), "small variant for 8x8 inputs (digits)"),
    "tiny32": ((1, 2, 2, 2, 1), (16, 16, 32, 64, 128), (1, 2, 2, 2, 2), "small variant for 32x32 inputs (CIFAR)"),
}
#: sizes only some families have: name → (base size, family defaults, description, families)
_GROUPED = ("repvgg", "repvgg_oabn", "qarepvgg")
_EXTRA_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], dict, str, tuple[str, ...]]] = {
    **{f"{b}g{g}": (*_SIZES[b][:3], {"groups": g}, f"RepVGG-{b.upper()}g{g}: {_SIZES[b][3].split(': ')[1]}, "
                    f"groups={g} on the original's optional_groupwise_layers", _GROUPED)
       for b in ("b1", "b2", "b3") for g in (2, 4)},
    "d2se": (*_official((8, 14, 24, 1), 2.5, 5.0), {"use_se": True},
             "RepVGG-D2se: [8,14,24,1], a=2.5, b=5, SE block (internal = out/16) in every block", ("repvgg",)),
    "l1": (*_official((8, 14, 24, 1), 2.0, 4.0), {}, "RepOpt-VGG-L1 layout: [8,14,24,1], a=2, b=4",
           ("csla", "repopt", "hs")),
    "l2": (*_official((8, 14, 24, 1), 2.5, 5.0), {}, "RepOpt-VGG-L2 layout: [8,14,24,1], a=2.5, b=5",
           ("csla", "repopt", "hs")),
}

#: family → (name pattern, block description, family defaults, extra override names)
_FAMILIES: dict[str, tuple[str, str, dict[str, Any], tuple[str, ...]]] = {
    "repvgg": ("repvgg_{size}", "RepVGG blocks (SPEC §2)", {"oabn_threshold": math.inf, "oabn_gradient": "clip",
                                                            "deploy": False, "groups": 1, "use_se": False},
               ("oabn_threshold", "oabn_gradient", "deploy", "groups", "override_groups_map", "use_se")),
    "repvgg_oabn": ("repvgg_{size}_oabn", "RepVGG blocks with an OABN identity (SPEC §4)",
                    {"oabn_threshold": 2.0, "oabn_gradient": "clip", "deploy": False, "groups": 1},
                    ("oabn_threshold", "oabn_gradient", "deploy", "groups", "override_groups_map")),
    "qarepvgg": ("qarepvgg_{size}", "QARepVGG blocks (SPEC §2, YOLOv6)",
                 {"deploy": False, "keep_post_bn": False, "groups": 1},
                 ("deploy", "keep_post_bn", "groups", "override_groups_map")),
    "csla": ("csla_vgg_{size}", "CSLA blocks with constant scales (SPEC §3)",
             {"scales": None, "identity": "trainable"}, ("scales", "identity")),
    "repopt": ("repopt_vgg_{size}", "RepOpt-VGG target blocks, W'_0 re-initialized from scales (SPEC §3)",
               {"scales": None, "seed": None, "use_identity_scales": True},
               ("scales", "seed", "use_identity_scales")),
    "hs": ("hs_vgg_{size}", "HyperSearch blocks, hypersearch_scale_init (SPEC §3)", {}, ()),
}

_COMMON_OVERRIDES = ("in_channels", "num_blocks", "widths", "strides", "bn_eps", "bn_momentum", "width_multiplier")

ARCHITECTURES: dict[str, ArchConfig] = {}
for _family, (_pattern, _what, _defaults, _extra) in _FAMILIES.items():
    for _size, (_nb, _w, _s, _desc) in _SIZES.items():
        ARCHITECTURES[_pattern.format(size=_size)] = ArchConfig(_family, _nb, _w, _s, dict(_defaults),
                                                                f"{_what}; {_desc}")
    for _size, (_nb, _w, _s, _more, _desc, _fams) in _EXTRA_SIZES.items():
        if _family in _fams:
            ARCHITECTURES[_pattern.format(size=_size)] = ArchConfig(_family, _nb, _w, _s, {**_defaults, **_more},
                                                                    f"{_what}; {_desc}")
del _family, _pattern, _what, _defaults, _extra, _size, _nb, _w, _s, _desc, _more, _fams


def list_models() -> list[str]:
    """Sorted names accepted by :func:`create_model`."""
    return sorted(ARCHITECTURES)
