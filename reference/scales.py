"""SPEC §3.scale-files: the scale layout of a RepOpt-VGG network, and the original per-block tuples.

A *scale dict* maps ``stage{k}.{i}.scale_{conv|1x1|identity}.weight`` (stage0, a single
block: ``stage0.scale_{conv|1x1}.weight``) to a per-output-channel vector ``(C,)``; a
block has a ``scale_identity`` entry iff it has an identity branch (``in == out`` and
stride 1). The published RepOpt-VGG scale files are such dicts.

The original RepOptimizers code (``extract_scales``, ``RepOptVGGHandler``) keeps the same
numbers as a *list of per-block tuples* in model order, each tuple in the order

    ``(scale_identity, scale_1x1, scale_conv)``   for a block with an identity branch
    ``(scale_1x1, scale_conv)``                   for a block without one

— the reverse of the dict's (and of ``grad_mult_mask``'s) ``conv, 1x1`` order.
:func:`scales_to_official` and :func:`scales_from_official` convert between the two,
given the network's *layout*: a sequence of ``(prefix, out_channels, has_identity)``
per block, in model order (:func:`vgg_scale_layout` builds it from the §3.architectures
skeleton). Nothing here reads or writes files: repspec's files are safetensors or JSON,
and the published ``.pth`` is read by ``repspec.torch_impl`` with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from ._checks import as_float_array, check_bool, check_int

__all__ = [
    "SCALE_KINDS",
    "OFFICIAL_ORDER",
    "block_prefix",
    "parse_block_prefix",
    "vgg_scale_layout",
    "check_scale_layout",
    "scale_keys",
    "scales_to_official",
    "scales_from_official",
]

#: the kinds of a block's scales, in the scale dict's natural order (α3, α1, d)
SCALE_KINDS = ("conv", "1x1", "identity")
#: the original code's per-block tuple order, with and without an identity branch
OFFICIAL_ORDER = {True: ("identity", "1x1", "conv"), False: ("1x1", "conv")}

_PREFIX_RE = re.compile(r"^stage(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?$")


def block_prefix(stage_index: int, block_index: int) -> str:
    """``stage0`` for stage 0 (a single block, no block index), ``stage{k}.{i}`` otherwise.

    >>> block_prefix(0, 0), block_prefix(2, 3)
    ('stage0', 'stage2.3')
    """
    stage_index = check_int(stage_index, "stage_index", min_value=0)
    block_index = check_int(block_index, "block_index", min_value=0)
    if stage_index == 0:
        if block_index != 0:
            raise ValueError(f"stage0 holds a single block, so block_index must be 0, got {block_index}")
        return "stage0"
    return f"stage{stage_index}.{block_index}"


def parse_block_prefix(prefix) -> tuple[int, int]:
    """``(stage_index, block_index)`` of a block prefix (inverse of :func:`block_prefix`).

    >>> parse_block_prefix("stage0"), parse_block_prefix("stage3.12")
    ((0, 0), (3, 12))
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    m = _PREFIX_RE.match(prefix)
    if m is None or (m.group(1) == "0") != (m.group(2) is None):
        raise ValueError(f"prefix must be 'stage0' or 'stage{{k}}.{{i}}' with k >= 1, got {prefix!r}")
    return int(m.group(1)), 0 if m.group(2) is None else int(m.group(2))


def vgg_scale_layout(num_blocks: Sequence[int], widths: Sequence[int], strides: Sequence[int], *,
                     in_channels: int) -> tuple[tuple[str, int, bool], ...]:
    """The scale layout ``((prefix, out_channels, has_identity), …)`` of a VGG skeleton (SPEC §3.architectures).

    Stage ``k`` has ``num_blocks[k]`` blocks of width ``widths[k]``; its first block has
    stride ``strides[k]``, the others stride 1; stage0 is a single block. A block has an
    identity branch iff its input and output widths are equal and its stride is 1.

    >>> vgg_scale_layout((1, 2), (4, 8), (2, 2), in_channels=3)
    (('stage0', 4, False), ('stage1.0', 8, False), ('stage1.1', 8, True))
    """
    sequences = {}
    for name, value in (("num_blocks", num_blocks), ("widths", widths), ("strides", strides)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
            raise TypeError(f"{name} must be a non-empty sequence of integers (one per stage), got {value!r}")
        sequences[name] = tuple(check_int(v, f"{name}[{j}]", min_value=1) for j, v in enumerate(value))
    nb, w, s = sequences["num_blocks"], sequences["widths"], sequences["strides"]
    if not len(nb) == len(w) == len(s):
        raise ValueError(f"num_blocks, widths and strides must have one entry per stage, got lengths "
                         f"{len(nb)}, {len(w)}, {len(s)}")
    if nb[0] != 1:
        raise ValueError(f"num_blocks[0] must be 1 (stage0 is a single block), got {nb[0]}")
    cin = check_int(in_channels, "in_channels", min_value=1)
    layout = []
    for k, (n, width, stride) in enumerate(zip(nb, w, s)):
        for i in range(n):
            block_stride = stride if i == 0 else 1
            layout.append((block_prefix(k, i), width, cin == width and block_stride == 1))
            cin = width
    return tuple(layout)


def check_scale_layout(layout) -> tuple[tuple[str, int, bool], ...]:
    """A layout ``((prefix, out_channels, has_identity), …)``, checked: valid, unique prefixes."""
    if isinstance(layout, (str, bytes, Mapping)) or not isinstance(layout, Sequence) or len(layout) == 0:
        raise TypeError(f"layout must be a non-empty sequence of (prefix, out_channels, has_identity), "
                        f"got {type(layout).__name__}")
    out = []
    for j, entry in enumerate(layout):
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise TypeError(f"layout[{j}] must be (prefix, out_channels, has_identity), got {entry!r}")
        prefix, channels, identity = entry
        parse_block_prefix(prefix)
        out.append((prefix, check_int(channels, f"layout[{j}] out_channels", min_value=1),
                    check_bool(identity, f"layout[{j}] has_identity")))
    prefixes = [p for p, _, _ in out]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"layout prefixes must be unique, got {prefixes}")
    return tuple(out)


def scale_keys(layout) -> dict[str, tuple[int]]:
    """``{key: (C,)}`` of a layout's scale dict, in natural order (block by block: conv, 1x1, identity).

    >>> keys = scale_keys((("stage0", 4, False), ("stage1.0", 4, True)))
    >>> len(keys), list(keys)[-1], keys["stage0.scale_conv.weight"]
    (5, 'stage1.0.scale_identity.weight', (4,))
    """
    keys = {}
    for prefix, channels, identity in check_scale_layout(layout):
        for kind in SCALE_KINDS if identity else SCALE_KINDS[:2]:
            keys[f"{prefix}.scale_{kind}.weight"] = (channels,)
    return keys


def _check_scales(scales, layout, where: str) -> dict[str, np.ndarray]:
    if not isinstance(scales, Mapping):
        raise TypeError(f"{where}: scales must be a mapping key -> (C,) array, got {type(scales).__name__}")
    keys = scale_keys(layout)
    missing, extra = [k for k in keys if k not in scales], sorted(set(scales) - set(keys))
    if missing or extra:
        raise ValueError(f"{where}: scales do not fit the layout: missing {missing}, unexpected {extra} "
                         f"(scale_identity exists exactly for the blocks with an identity branch)")
    return {k: as_float_array(scales[k], f"scales[{k!r}]", shape=shape).copy() for k, shape in keys.items()}


def scales_to_official(scales: Mapping[str, np.ndarray], layout) -> list[tuple[np.ndarray, ...]]:
    """The scale dict → the original code's list of per-block tuples, in layout (model) order.

    ``[(d, α1, α3) if the block has an identity branch else (α1, α3) for each block]``;
    arrays are float64 copies. Every key must fit the layout (none missing, none extra).

    >>> out = scales_to_official({"stage0.scale_conv.weight": [3.0], "stage0.scale_1x1.weight": [1.0]},
    ...                          [("stage0", 1, False)])
    >>> [tuple(float(v[0]) for v in t) for t in out]
    [(1.0, 3.0)]
    """
    layout = check_scale_layout(layout)
    checked = _check_scales(scales, layout, "scales_to_official")
    return [tuple(checked[f"{prefix}.scale_{kind}.weight"] for kind in OFFICIAL_ORDER[identity])
            for prefix, _, identity in layout]


def scales_from_official(tuples: Sequence[Sequence[np.ndarray]], layout) -> dict[str, np.ndarray]:
    """The original list of per-block tuples → the scale dict (inverse of :func:`scales_to_official`).

    ``tuples[j]`` belongs to ``layout[j]`` and is ``(d, α1, α3)`` for a block with an identity
    branch, ``(α1, α3)`` otherwise; each entry has the block's ``out_channels`` values.
    Returns float64 copies in natural key order. Counts, tuple lengths and shapes are checked
    first, naming the tuple and its block.
    """
    layout = check_scale_layout(layout)
    if isinstance(tuples, (str, bytes, Mapping)) or not isinstance(tuples, Sequence):
        raise TypeError(f"tuples must be a list of per-block scale tuples, got {type(tuples).__name__}")
    if len(tuples) != len(layout):
        raise ValueError(f"scales_from_official: {len(tuples)} tuples for a layout of {len(layout)} blocks")
    out = {}
    for j, ((prefix, channels, identity), entry) in enumerate(zip(layout, tuples)):
        order = OFFICIAL_ORDER[identity]
        if not isinstance(entry, (tuple, list)) or len(entry) != len(order):
            got = len(entry) if isinstance(entry, (tuple, list)) else type(entry).__name__
            raise ValueError(f"scales_from_official: tuple {j} (block {prefix!r}) must have {len(order)} entries "
                             f"({', '.join(order)}), got {got}")
        values = {kind: as_float_array(v, f"tuple {j} (block {prefix!r}) scale_{kind}", shape=(channels,))
                  for kind, v in zip(order, entry)}
        for kind in SCALE_KINDS:
            if kind in values:
                out[f"{prefix}.scale_{kind}.weight"] = values[kind].copy()
    return out
