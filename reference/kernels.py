"""SPEC §0: the kernel-space helpers every fusion uses: ``pad(K1)`` and ``I_c``."""

from __future__ import annotations

import math

import numpy as np

from ._checks import as_float_array, check_int

__all__ = ["pad_1x1_to_3x3", "identity_kernel", "per_channel", "conv_default_init", "CENTER"]

#: index of the center tap of a 3x3 kernel
CENTER = (1, 1)


def pad_1x1_to_3x3(k1) -> np.ndarray:
    """``pad(K1)``: zero-pad a ``(O, I, 1, 1)`` kernel to ``(O, I, 3, 3)``, value at the center.

    >>> pad_1x1_to_3x3(np.full((1, 1, 1, 1), 5.0))[0, 0]
    array([[0., 0., 0.],
           [0., 5., 0.],
           [0., 0., 0.]])
    """
    k1 = as_float_array(k1, "k1", shape=(None, None, 1, 1))
    return np.pad(k1, ((0, 0), (0, 0), (1, 1), (1, 1)))


def identity_kernel(channels: int, groups: int = 1) -> np.ndarray:
    """``I_c``: the ``(C, C/groups, 3, 3)`` kernel with ``I[o, o mod (C/groups), 1, 1] = 1``.

    A 3x3 conv (padding 1, stride 1, same ``groups``) with this kernel is the identity map.

    >>> identity_kernel(2)[:, :, 1, 1]
    array([[1., 0.],
           [0., 1.]])
    """
    channels = check_int(channels, "channels", min_value=1)
    groups = check_int(groups, "groups", min_value=1)
    if channels % groups:
        raise ValueError(f"groups={groups} must divide channels={channels}")
    per_group = channels // groups
    kernel = np.zeros((channels, per_group, 3, 3))
    o = np.arange(channels)
    kernel[o, o % per_group, 1, 1] = 1.0
    return kernel


def per_channel(v: np.ndarray) -> np.ndarray:
    """Broadcast a per-output-channel vector ``(O,)`` against a kernel: ``v[:, None, None, None]``."""
    return np.asarray(v)[:, None, None, None]


def conv_default_init(rng: np.random.Generator, shape: tuple[int, int, int, int]) -> np.ndarray:
    """PyTorch's default ``nn.Conv2d`` weight init, ``U(−b, b)`` with ``b = 1/sqrt(I·kh·kw)``.

    (``kaiming_uniform_(a=√5)``: gain ``sqrt(2/(1+5))``, bound ``sqrt(3)·gain/sqrt(fan_in)``.)
    Every RepOpt block draws its conv kernels with it, in the order of its
    ``trainable_names``; the official RepOptimizers code relies on the same default.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    o, i, kh, kw = (check_int(s, "shape entry", min_value=1) for s in shape)
    bound = 1.0 / math.sqrt(i * kh * kw)
    return rng.uniform(-bound, bound, size=(o, i, kh, kw))
