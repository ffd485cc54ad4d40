"""SPEC §2: the RepVGG and QARepVGG blocks, their branch fusion, and fusion's backward.

Parameter and buffer names are *local* and equal the ``state_dict`` keys of the
official RepVGG / YOLOv6 PyTorch blocks (so ``repspec.torch_impl`` uses the same):

RepVGG (``relu(BN3(conv3x3(x)) + BN1(conv1x1(x)) + BN0(x))``)::

    rbr_dense.conv.weight   (O, I/g, 3, 3)   rbr_dense.bn.{weight,bias,running_mean,running_var} (O,)
    rbr_1x1.conv.weight     (O, I/g, 1, 1)   rbr_1x1.bn.{weight,bias,running_mean,running_var}   (O,)
    rbr_identity.{weight,bias,running_mean,running_var} (O,)      only iff I == O and stride == 1

QARepVGG (``relu(BNpost(BN3(conv3x3(x)) + conv1x1(x) + x))``)::

    rbr_dense.conv.weight (O, I/g, 3, 3)   rbr_dense.bn.*   rbr_1x1.weight (O, I/g, 1, 1)   bn.*

``weight``/``bias`` of a BN are the trainable ``γ``/``β``; ``running_mean``/``running_var``
are buffers. PyTorch's ``num_batches_tracked`` buffers are not modelled (they only
matter for ``momentum=None``). Deployed blocks are ``rbr_reparam.{weight,bias}``
(:func:`deploy_state`).

Every function is pure: inputs are never mutated, updated running statistics are
returned. The identity BN of a RepVGG block is an OABN (SPEC §4) when
``oabn_threshold`` is finite; ``oabn_threshold = ∞`` is the plain RepVGG block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np

from ._checks import as_float_array, check_bool, check_conv_config, check_nonneg_float, check_probability
from .kernels import identity_kernel, pad_1x1_to_3x3, per_channel
from .oabn import (
    check_gradient_mode,
    check_threshold,
    oabn_eval,
    oabn_eval_backward,
    oabn_factor,
    oabn_train,
    oabn_train_backward,
)
from .ops import (
    batch_norm_eval,
    batch_norm_eval_backward,
    batch_norm_train,
    batch_norm_train_backward,
    bn_factor,
    conv2d,
    conv2d_backward,
    relu,
    relu_backward,
)

__all__ = [
    "RepVGGBlock",
    "QARepVGGBlock",
    "repvgg_param_shapes",
    "repvgg_buffer_shapes",
    "qarepvgg_param_shapes",
    "qarepvgg_buffer_shapes",
    "fuse_repvgg_block",
    "fuse_repvgg_block_backward",
    "fuse_qarepvgg_block",
    "fuse_qarepvgg_block_backward",
    "deploy_forward",
    "deploy_forward_backward",
    "deploy_state",
]

Arrays = dict[str, np.ndarray]

_DENSE_W = "rbr_dense.conv.weight"
_DENSE_BN = "rbr_dense.bn"
_ONE_W = "rbr_1x1.conv.weight"
_ONE_BN = "rbr_1x1.bn"
_ID_BN = "rbr_identity"
_QA_ONE_W = "rbr_1x1.weight"
_POST_BN = "bn"


# ------------------------------------------------------------------------ validation


def _has_identity(in_channels: int, out_channels: int, stride: int) -> bool:
    """SPEC §2: the identity branch exists iff ``in == out and stride == 1``."""
    return in_channels == out_channels and stride == 1


def _bn_keys(prefix: str) -> tuple[tuple[str, str], tuple[str, str]]:
    return (f"{prefix}.weight", f"{prefix}.bias"), (f"{prefix}.running_mean", f"{prefix}.running_var")


def repvgg_param_shapes(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> dict[str, tuple]:
    """``{name: shape}`` of a RepVGG block's trainable parameters (``rbr_identity.*`` iff identity)."""
    cin, o, stride, g = check_conv_config(in_channels, out_channels, stride, groups)
    shapes = {_DENSE_W: (o, cin // g, 3, 3), f"{_DENSE_BN}.weight": (o,), f"{_DENSE_BN}.bias": (o,),
              _ONE_W: (o, cin // g, 1, 1), f"{_ONE_BN}.weight": (o,), f"{_ONE_BN}.bias": (o,)}
    if _has_identity(cin, o, stride):
        shapes.update({f"{_ID_BN}.weight": (o,), f"{_ID_BN}.bias": (o,)})
    return shapes


def repvgg_buffer_shapes(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> dict[str, tuple]:
    """``{name: shape}`` of a RepVGG block's BN running statistics."""
    cin, o, stride, g = check_conv_config(in_channels, out_channels, stride, groups)
    prefixes = [_DENSE_BN, _ONE_BN] + ([_ID_BN] if _has_identity(cin, o, stride) else [])
    return {k: (o,) for p in prefixes for k in _bn_keys(p)[1]}


def qarepvgg_param_shapes(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> dict[str, tuple]:
    """``{name: shape}`` of a QARepVGG block's trainable parameters (the identity has none)."""
    cin, o, stride, g = check_conv_config(in_channels, out_channels, stride, groups)
    return {_DENSE_W: (o, cin // g, 3, 3), f"{_DENSE_BN}.weight": (o,), f"{_DENSE_BN}.bias": (o,),
            _QA_ONE_W: (o, cin // g, 1, 1), f"{_POST_BN}.weight": (o,), f"{_POST_BN}.bias": (o,)}


def qarepvgg_buffer_shapes(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> dict[str, tuple]:
    """``{name: shape}`` of a QARepVGG block's BN running statistics (dense BN and post BN)."""
    _, o, _, _ = check_conv_config(in_channels, out_channels, stride, groups)
    return {k: (o,) for p in (_DENSE_BN, _POST_BN) for k in _bn_keys(p)[1]}


def _check_tree(tree, shapes: Mapping[str, tuple], name: str, why_identity: str = "") -> Arrays:
    """Validate a ``{name: array}`` mapping: exactly the expected keys, each of the expected shape, finite."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"{name} must be a mapping of name -> array, got {type(tree).__name__}")
    missing = sorted(set(shapes) - set(tree))
    extra = sorted(set(tree) - set(shapes))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"is missing {missing}")
        if extra:
            parts.append(f"has unexpected keys {extra}")
        raise ValueError(f"{name} {' and '.join(parts)}{why_identity}")
    return {k: as_float_array(tree[k], f"{name}[{k!r}]", shape=shape) for k, shape in shapes.items()}


def _identity_note(has_identity: bool, in_channels: int, out_channels: int, stride: int) -> str:
    state = "has" if has_identity else "has no"
    return (f" (a block with in_channels={in_channels}, out_channels={out_channels}, stride={stride} "
            f"{state} identity branch: it exists iff in == out and stride == 1)")


def _check_running_var(buffers: Arrays, name: str) -> None:
    for k, v in buffers.items():
        if k.endswith("running_var") and np.any(v < 0):
            raise ValueError(f"{name}[{k!r}] must be >= 0 (a variance), got min {v.min()}")


def _check_x(x, in_channels: int) -> np.ndarray:
    return as_float_array(x, "x", shape=(None, in_channels, None, None))


def _bn(params: Arrays, buffers: Arrays, prefix: str):
    (w, b), (m, v) = _bn_keys(prefix)
    return params[w], params[b], buffers[m], buffers[v]


# --------------------------------------------------------------------------- deploy


def deploy_forward(x, kernel, bias, *, stride: int = 1, groups: int = 1) -> np.ndarray:
    """The deployed block: ``relu(conv2d(x, K, b, stride, padding=1, groups))`` (SPEC §2).

    Shapes: ``x (N, I, H, W)``, ``kernel (O, I/g, 3, 3)``, ``bias (O,)`` → ``(N, O, Ho, Wo)``.
    """
    kernel = as_float_array(kernel, "kernel", shape=(None, None, 3, 3))
    bias = as_float_array(bias, "bias", shape=(kernel.shape[0],))
    return relu(conv2d(x, kernel, bias, stride=stride, padding=1, groups=groups))


def deploy_forward_backward(dy, x, kernel, bias, *, stride: int = 1, groups: int = 1):
    """Gradients of :func:`deploy_forward`: ``relu_backward`` then ``conv2d_backward``. Returns ``(dx, dK, db)``."""
    kernel = as_float_array(kernel, "kernel", shape=(None, None, 3, 3))
    bias = as_float_array(bias, "bias", shape=(kernel.shape[0],))
    pre = conv2d(x, kernel, bias, stride=stride, padding=1, groups=groups)
    dpre = relu_backward(as_float_array(dy, "dy", shape=pre.shape), pre)
    return conv2d_backward(dpre, x, kernel, stride=stride, padding=1, groups=groups, with_bias=True)


def deploy_state(kernel, bias) -> Arrays:
    """The deployed block's state dict ``{'rbr_reparam.weight': K, 'rbr_reparam.bias': b}`` (official names)."""
    kernel = as_float_array(kernel, "kernel", shape=(None, None, 3, 3))
    bias = as_float_array(bias, "bias", shape=(kernel.shape[0],))
    return {"rbr_reparam.weight": kernel.copy(), "rbr_reparam.bias": bias.copy()}


# --------------------------------------------------------------------------- fusion


def _repvgg_fusion_inputs(params, buffers, in_channels, out_channels, stride, groups, eps, oabn_threshold):
    cin, o, stride, groups = check_conv_config(in_channels, out_channels, stride, groups)
    eps = check_nonneg_float(eps, "eps")
    oabn_threshold = check_threshold(oabn_threshold, "oabn_threshold")
    ident = _has_identity(cin, o, stride)
    note = _identity_note(ident, cin, o, stride)
    params = _check_tree(params, repvgg_param_shapes(cin, o, stride, groups), "params", note)
    buffers = _check_tree(buffers, repvgg_buffer_shapes(cin, o, stride, groups), "buffers", note)
    _check_running_var(buffers, "buffers")
    return params, buffers, cin, o, stride, groups, eps, oabn_threshold, ident


def fuse_repvgg_block(params, buffers, *, in_channels: int, out_channels: int, stride: int, groups: int = 1,
                      eps: float = 1e-5, oabn_threshold: float = float("inf")) -> tuple[np.ndarray, np.ndarray]:
    """Fuse the three branches of an eval-mode RepVGG block into one 3x3 conv (SPEC §2).

    ``K = t3·K3 + t1·pad(K1) + t0·I_c``,
    ``b = (β3 − μ3·t3) + (β1 − μ1·t1) + (β0 − μ0·t0)``,

    ``t = γ/sqrt(σ² + eps)`` per output channel, the identity terms only when the
    identity branch exists; with a finite ``oabn_threshold`` ``s``, ``t0`` is the
    clipped OABN factor ``clip(t0, −s, s)`` (SPEC §4). Returns ``(K (O, I/g, 3, 3), b (O,))``;
    ``relu(conv2d(x, K, b, stride, padding=1, groups))`` equals the block in eval mode.
    """
    params, buffers, cin, o, stride, groups, eps, s, ident = _repvgg_fusion_inputs(
        params, buffers, in_channels, out_channels, stride, groups, eps, oabn_threshold)
    g3, b3, m3, v3 = _bn(params, buffers, _DENSE_BN)
    g1, b1, m1, v1 = _bn(params, buffers, _ONE_BN)
    t3 = bn_factor(g3, v3, eps)
    t1 = bn_factor(g1, v1, eps)
    kernel = per_channel(t3) * params[_DENSE_W] + per_channel(t1) * pad_1x1_to_3x3(params[_ONE_W])
    bias = (b3 - m3 * t3) + (b1 - m1 * t1)
    if ident:
        g0, b0, m0, v0 = _bn(params, buffers, _ID_BN)
        t0 = oabn_factor(g0, v0, eps, s)
        kernel = kernel + per_channel(t0) * identity_kernel(o, groups)
        bias = bias + (b0 - m0 * t0)
    return kernel, bias


def fuse_repvgg_block_backward(dkernel, dbias, params, buffers, *, in_channels: int, out_channels: int, stride: int,
                               groups: int = 1, eps: float = 1e-5, oabn_threshold: float = float("inf"),
                               oabn_gradient: str = "clip") -> Arrays:
    """Gradients of :func:`fuse_repvgg_block` w.r.t. the branch parameters (running stats constant, SPEC §5).

    With ``dK = ∂L/∂K (O, I/g, 3, 3)``, ``db = ∂L/∂b (O,)`` and sums over ``(i, p, q)``:

    - ``∂L/∂K3 = t3·dK``; ``∂L/∂t3 = Σ dK·K3 − μ3·db``; ``∂L/∂γ3 = ∂L/∂t3 / sqrt(σ3² + eps)``; ``∂L/∂β3 = db``
    - ``∂L/∂K1 = t1·dK[:, :, 1, 1]``; ``∂L/∂t1 = Σ dK[:, :, 1, 1]·K1 − μ1·db``; ``γ1, β1`` likewise
    - ``∂L/∂t̃0 = dK[o, o mod (I/g), 1, 1] − μ0·db``; ``∂L/∂t0 = ∂L/∂t̃0·[|t0| ≤ s]`` (``"clip"``) or
      ``∂L/∂t̃0`` (``"straight_through"``); ``∂L/∂γ0 = ∂L/∂t0 / sqrt(σ0² + eps)``; ``∂L/∂β0 = db``

    Returns ``{name: grad}`` for every trainable parameter of the block.
    """
    oabn_gradient = check_gradient_mode(oabn_gradient, "oabn_gradient")
    params, buffers, cin, o, stride, groups, eps, s, ident = _repvgg_fusion_inputs(
        params, buffers, in_channels, out_channels, stride, groups, eps, oabn_threshold)
    dk = as_float_array(dkernel, "dkernel", shape=(o, cin // groups, 3, 3))
    db = as_float_array(dbias, "dbias", shape=(o,))
    grads: Arrays = {}
    g3, _, m3, v3 = _bn(params, buffers, _DENSE_BN)
    g1, _, m1, v1 = _bn(params, buffers, _ONE_BN)
    k3, k1 = params[_DENSE_W], params[_ONE_W]
    t3 = bn_factor(g3, v3, eps)
    t1 = bn_factor(g1, v1, eps)
    dk_center = dk[:, :, 1:2, 1:2]
    grads[_DENSE_W] = per_channel(t3) * dk
    grads[f"{_DENSE_BN}.weight"] = ((dk * k3).sum(axis=(1, 2, 3)) - m3 * db) / np.sqrt(v3 + eps)
    grads[f"{_DENSE_BN}.bias"] = db.copy()
    grads[_ONE_W] = per_channel(t1) * dk_center
    grads[f"{_ONE_BN}.weight"] = ((dk_center * k1).sum(axis=(1, 2, 3)) - m1 * db) / np.sqrt(v1 + eps)
    grads[f"{_ONE_BN}.bias"] = db.copy()
    if ident:
        g0, _, m0, v0 = _bn(params, buffers, _ID_BN)
        per_group = cin // groups
        ch = np.arange(o)
        dt0 = dk[ch, ch % per_group, 1, 1] - m0 * db
        if oabn_gradient == "clip":
            dt0 = dt0 * (np.abs(bn_factor(g0, v0, eps)) <= s)
        grads[f"{_ID_BN}.weight"] = dt0 / np.sqrt(v0 + eps)
        grads[f"{_ID_BN}.bias"] = db.copy()
    return grads


def _qarepvgg_fusion_inputs(params, buffers, in_channels, out_channels, stride, groups, eps):
    cin, o, stride, groups = check_conv_config(in_channels, out_channels, stride, groups)
    eps = check_nonneg_float(eps, "eps")
    note = _identity_note(_has_identity(cin, o, stride), cin, o, stride)
    params = _check_tree(params, qarepvgg_param_shapes(cin, o, stride, groups), "params", note)
    buffers = _check_tree(buffers, qarepvgg_buffer_shapes(cin, o, stride, groups), "buffers", note)
    _check_running_var(buffers, "buffers")
    return params, buffers, cin, o, stride, groups, eps


def _qarepvgg_unfolded(params, buffers, cin, o, stride, groups, eps):
    g3, b3, m3, v3 = _bn(params, buffers, _DENSE_BN)
    t3 = bn_factor(g3, v3, eps)
    kernel = per_channel(t3) * params[_DENSE_W] + pad_1x1_to_3x3(params[_QA_ONE_W])
    if _has_identity(cin, o, stride):
        kernel = kernel + identity_kernel(o, groups)
    return kernel, b3 - m3 * t3


def fuse_qarepvgg_block(params, buffers, *, in_channels: int, out_channels: int, stride: int, groups: int = 1,
                        eps: float = 1e-5, fold_post_bn: bool = True):
    """Fuse an eval-mode QARepVGG block (SPEC §2).

    ``K = t3·K3 + pad(K1) + I_c`` (``I_c`` iff the identity exists), ``b = β3 − μ3·t3``.

    - ``fold_post_bn=True`` (deployment): ``K ← tpost·K``, ``b ← tpost·(b − μpost) + βpost``;
      returns ``(K, b)`` and ``relu(conv2d(x, K, b, ...))`` equals the block.
    - ``fold_post_bn=False`` (QAT keeps the post BN, as YOLOv6 does): returns
      ``(K, b, post_bn)`` with ``post_bn = {'bn.weight', 'bn.bias', 'bn.running_mean',
      'bn.running_var'}`` (copies); ``relu(BNpost_eval(conv2d(x, K, b, ...)))`` equals the block.
    """
    fold_post_bn = check_bool(fold_post_bn, "fold_post_bn")
    params, buffers, cin, o, stride, groups, eps = _qarepvgg_fusion_inputs(
        params, buffers, in_channels, out_channels, stride, groups, eps)
    kernel, bias = _qarepvgg_unfolded(params, buffers, cin, o, stride, groups, eps)
    gp, bp, mp, vp = _bn(params, buffers, _POST_BN)
    if not fold_post_bn:
        post = {f"{_POST_BN}.weight": gp.copy(), f"{_POST_BN}.bias": bp.copy(),
                f"{_POST_BN}.running_mean": mp.copy(), f"{_POST_BN}.running_var": vp.copy()}
        return kernel, bias, post
    tp = bn_factor(gp, vp, eps)
    return per_channel(tp) * kernel, tp * (bias - mp) + bp


def fuse_qarepvgg_block_backward(dkernel, dbias, params, buffers, *, in_channels: int, out_channels: int,
                                 stride: int, groups: int = 1, eps: float = 1e-5,
                                 fold_post_bn: bool = True) -> Arrays:
    """Gradients of :func:`fuse_qarepvgg_block` w.r.t. the branch parameters (running stats constant).

    Folded (``Kf = tp·K``, ``bf = tp·(b − μp) + βp``): ``∂L/∂K = tp·dKf``, ``∂L/∂b = tp·dbf``,
    ``∂L/∂tp = Σ dKf·K + dbf·(b − μp)``, ``∂L/∂γp = ∂L/∂tp / sqrt(σp² + eps)``, ``∂L/∂βp = dbf``.
    Then ``∂L/∂K3 = t3·dK``, ``∂L/∂γ3 = (Σ dK·K3 − μ3·db) / sqrt(σ3² + eps)``, ``∂L/∂β3 = db``,
    ``∂L/∂K1 = dK[:, :, 1, 1]``. With ``fold_post_bn=False`` the post BN is not part of the
    fusion (its gradients come from the deployed BN's own backward), so only the
    ``rbr_*`` gradients are returned and ``(dkernel, dbias)`` are ``∂L/∂K, ∂L/∂b``.
    """
    fold_post_bn = check_bool(fold_post_bn, "fold_post_bn")
    params, buffers, cin, o, stride, groups, eps = _qarepvgg_fusion_inputs(
        params, buffers, in_channels, out_channels, stride, groups, eps)
    dk = as_float_array(dkernel, "dkernel", shape=(o, cin // groups, 3, 3))
    db = as_float_array(dbias, "dbias", shape=(o,))
    grads: Arrays = {}
    if fold_post_bn:
        kernel, bias = _qarepvgg_unfolded(params, buffers, cin, o, stride, groups, eps)
        gp, _, mp, vp = _bn(params, buffers, _POST_BN)
        tp = bn_factor(gp, vp, eps)
        grads[f"{_POST_BN}.weight"] = ((dk * kernel).sum(axis=(1, 2, 3)) + db * (bias - mp)) / np.sqrt(vp + eps)
        grads[f"{_POST_BN}.bias"] = db.copy()
        dk, db = per_channel(tp) * dk, tp * db
    g3, _, m3, v3 = _bn(params, buffers, _DENSE_BN)
    t3 = bn_factor(g3, v3, eps)
    grads[_DENSE_W] = per_channel(t3) * dk
    grads[f"{_DENSE_BN}.weight"] = ((dk * params[_DENSE_W]).sum(axis=(1, 2, 3)) - m3 * db) / np.sqrt(v3 + eps)
    grads[f"{_DENSE_BN}.bias"] = db.copy()
    grads[_QA_ONE_W] = dk[:, :, 1:2, 1:2].copy()
    return grads


# --------------------------------------------------------------------------- blocks


def _init_params(shapes: Mapping[str, tuple], rng) -> Arrays:
    """Conv kernels ``N(0, 2/fan_in)`` (Kaiming normal, ``fan_in = (I/g)·kh·kw``), drawn in ``shapes`` order;
    BN ``γ = 1``, ``β = 0``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    params = {}
    for name, shape in shapes.items():
        if len(shape) == 4:
            params[name] = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), size=shape)
        else:
            params[name] = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
    return params


def _init_buffers(shapes: Mapping[str, tuple]) -> Arrays:
    return {k: np.zeros(s) if k.endswith("running_mean") else np.ones(s) for k, s in shapes.items()}


class _BlockCache(NamedTuple):
    training: bool
    x: np.ndarray
    z3: np.ndarray  # conv3x3(x)
    z1: np.ndarray  # conv1x1(x)
    mid: np.ndarray | None  # QARepVGG: the sum before the post BN; None for RepVGG
    pre: np.ndarray  # the ReLU input
    buffers: Arrays  # the running stats the forward used (eval backward needs them)


class _BranchBlockStructure:
    """What the RepVGG and QARepVGG blocks share: parameter layout, init and validation.

    A subclass names its layout with ``_param_shapes_fn`` / ``_buffer_shapes_fn``
    (``(in, out, stride, groups) -> {name: shape}``).
    """

    _param_shapes_fn = staticmethod(repvgg_param_shapes)
    _buffer_shapes_fn = staticmethod(repvgg_buffer_shapes)

    @property
    def has_identity(self) -> bool:
        return _has_identity(self.in_channels, self.out_channels, self.stride)

    def param_shapes(self) -> dict[str, tuple]:
        return self._param_shapes_fn(self.in_channels, self.out_channels, self.stride, self.groups)

    def buffer_shapes(self) -> dict[str, tuple]:
        return self._buffer_shapes_fn(self.in_channels, self.out_channels, self.stride, self.groups)

    def trainable_names(self) -> tuple[str, ...]:
        return tuple(self.param_shapes())

    def init_params(self, rng: np.random.Generator) -> Arrays:
        """Kaiming-normal conv weights ``N(0, 2/fan_in)``, ``fan_in = (I/g)·kh·kw`` (dense first, then 1x1);
        ``γ = 1``, ``β = 0``."""
        return _init_params(self.param_shapes(), rng)

    def init_buffers(self) -> Arrays:
        """``running_mean = 0``, ``running_var = 1`` (PyTorch's BN init)."""
        return _init_buffers(self.buffer_shapes())

    def _check(self, params, buffers) -> tuple[Arrays, Arrays]:
        note = _identity_note(self.has_identity, self.in_channels, self.out_channels, self.stride)
        params = _check_tree(params, self.param_shapes(), "params", note)
        buffers = _check_tree(buffers, self.buffer_shapes(), "buffers", note)
        _check_running_var(buffers, "buffers")
        return params, buffers


@dataclass(frozen=True)
class RepVGGBlock(_BranchBlockStructure):
    """The training-form RepVGG block (SPEC §2), optionally with an OABN identity (SPEC §4).

    ``y = relu(BN3(conv3x3(x)) + BN1(conv1x1(x)) + BN0(x))``: conv3x3 with padding 1,
    conv1x1 with padding 0, both with ``stride`` and ``groups`` and no bias; ``BN0``
    exists iff ``in_channels == out_channels and stride == 1``. ``BN0`` is an OABN
    with threshold ``oabn_threshold`` (``∞``: plain BN) whose gradient option is
    ``oabn_gradient`` (``"clip"`` | ``"straight_through"``).

    Implements :class:`repspec.reference.network.Block`. Shapes: ``x (N, I, H, W)`` →
    ``y (N, O, Ho, Wo)``, ``Ho = floor((H − 1)/stride) + 1``.
    """

    in_channels: int
    out_channels: int
    stride: int = 1
    groups: int = 1
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    oabn_threshold: float = float("inf")
    oabn_gradient: str = "clip"

    def __post_init__(self):
        cin, o, stride, groups = check_conv_config(self.in_channels, self.out_channels, self.stride, self.groups)
        values = dict(in_channels=cin, out_channels=o, stride=stride, groups=groups,
                      bn_momentum=check_probability(self.bn_momentum, "bn_momentum"),
                      bn_eps=check_nonneg_float(self.bn_eps, "bn_eps"),
                      oabn_threshold=check_threshold(self.oabn_threshold, "oabn_threshold"),
                      oabn_gradient=check_gradient_mode(self.oabn_gradient, "oabn_gradient"))
        for k, v in values.items():
            object.__setattr__(self, k, v)

    # -------------------------------------------------------------- forward/backward
    def forward(self, params, buffers, x, *, training: bool) -> tuple[np.ndarray, Arrays, Any]:
        """``(y, new_buffers, cache)``: training mode uses batch statistics and returns the
        updated running statistics; eval mode uses the running statistics (and returns
        copies of them unchanged)."""
        training = check_bool(training, "training")
        params, buffers = self._check(params, buffers)
        x = _check_x(x, self.in_channels)
        conv = dict(stride=self.stride, groups=self.groups)
        z3 = conv2d(x, params[_DENSE_W], stride=self.stride, padding=1, groups=self.groups)
        z1 = conv2d(x, params[_ONE_W], padding=0, **conv)
        eps, m = self.bn_eps, self.bn_momentum
        new_buffers: Arrays = {}
        branches = [(_DENSE_BN, z3), (_ONE_BN, z1)] + ([(_ID_BN, x)] if self.has_identity else [])
        pre = 0.0
        for prefix, z in branches:
            g, b, rm, rv = _bn(params, buffers, prefix)
            oabn = prefix == _ID_BN and np.isfinite(self.oabn_threshold)
            if training:
                if oabn:
                    res = oabn_train(z, g, b, rm, rv, threshold=self.oabn_threshold, momentum=m, eps=eps)
                else:
                    res = batch_norm_train(z, g, b, rm, rv, momentum=m, eps=eps)
                out = res.y
                (_, _), (km, kv) = _bn_keys(prefix)
                new_buffers[km], new_buffers[kv] = res.running_mean, res.running_var
            else:
                if oabn:
                    out = oabn_eval(z, g, b, rm, rv, threshold=self.oabn_threshold, eps=eps)
                else:
                    out = batch_norm_eval(z, g, b, rm, rv, eps=eps)
            pre = pre + out
        if not training:
            new_buffers = {k: v.copy() for k, v in buffers.items()}
        cache = _BlockCache(training, x, z3, z1, None, pre, buffers)
        return relu(pre), new_buffers, cache

    def backward(self, params, cache: _BlockCache, dy) -> tuple[np.ndarray, Arrays]:
        """``(dx, grads)`` with ``grads`` keyed by :meth:`trainable_names`.

        ``dpre = dy·[pre > 0]``; each BN branch's backward (train: batch statistics
        depend on the input; eval: constants) then its conv's backward; ``dx`` sums the
        three branches (the identity's is the OABN backward with ``oabn_gradient``).
        """
        if not isinstance(cache, _BlockCache) or cache.mid is not None:
            raise TypeError("cache must be the cache returned by RepVGGBlock.forward")
        params, _ = self._check(params, cache.buffers)
        dpre = relu_backward(as_float_array(dy, "dy", shape=cache.pre.shape), cache.pre)
        eps = self.bn_eps
        grads: Arrays = {}
        dx = np.zeros_like(cache.x)
        for prefix, z, kname, pad in ((_DENSE_BN, cache.z3, _DENSE_W, 1), (_ONE_BN, cache.z1, _ONE_W, 0)):
            g, _, rm, rv = _bn(params, cache.buffers, prefix)
            if cache.training:
                dz, dg, db = batch_norm_train_backward(dpre, z, g, eps=eps)
            else:
                dz, dg, db = batch_norm_eval_backward(dpre, z, g, rm, rv, eps=eps)
            dxb, dk, _ = conv2d_backward(dz, cache.x, params[kname], stride=self.stride, padding=pad,
                                         groups=self.groups)
            (kw, kb), _ = _bn_keys(prefix)
            grads[kname], grads[kw], grads[kb] = dk, dg, db
            dx = dx + dxb
        if self.has_identity:
            g, _, rm, rv = _bn(params, cache.buffers, _ID_BN)
            oabn = np.isfinite(self.oabn_threshold)
            s, mode = self.oabn_threshold, self.oabn_gradient
            if cache.training:
                if oabn:
                    dxi, dg, db = oabn_train_backward(dpre, cache.x, g, threshold=s, eps=eps, gradient=mode)
                else:
                    dxi, dg, db = batch_norm_train_backward(dpre, cache.x, g, eps=eps)
            else:
                if oabn:
                    dxi, dg, db = oabn_eval_backward(dpre, cache.x, g, rm, rv, threshold=s, eps=eps, gradient=mode)
                else:
                    dxi, dg, db = batch_norm_eval_backward(dpre, cache.x, g, rm, rv, eps=eps)
            grads[f"{_ID_BN}.weight"], grads[f"{_ID_BN}.bias"] = dg, db
            dx = dx + dxi
        return dx, {k: grads[k] for k in self.trainable_names()}

    # -------------------------------------------------------------- fusion
    def _fuse_kw(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, stride=self.stride,
                    groups=self.groups, eps=self.bn_eps, oabn_threshold=self.oabn_threshold)

    def fuse(self, params, buffers) -> tuple[np.ndarray, np.ndarray]:
        """:func:`fuse_repvgg_block` with this block's configuration → ``(K, b)``."""
        return fuse_repvgg_block(params, buffers, **self._fuse_kw())

    def fuse_backward(self, dkernel, dbias, params, buffers) -> Arrays:
        """:func:`fuse_repvgg_block_backward` with this block's configuration."""
        return fuse_repvgg_block_backward(dkernel, dbias, params, buffers, oabn_gradient=self.oabn_gradient,
                                          **self._fuse_kw())

    def deploy_forward(self, x, kernel, bias) -> np.ndarray:
        """:func:`deploy_forward` with this block's stride and groups."""
        return deploy_forward(x, kernel, bias, stride=self.stride, groups=self.groups)


@dataclass(frozen=True)
class QARepVGGBlock(_BranchBlockStructure):
    """The training-form QARepVGG block of YOLOv6 (SPEC §2).

    ``y = relu(BNpost(BN3(conv3x3(x)) + conv1x1(x) + x))``: the 1x1 branch has no BN
    and no bias, the identity (no BN) exists iff ``in_channels == out_channels and
    stride == 1``. Implements :class:`repspec.reference.network.Block`.
    """

    in_channels: int
    out_channels: int
    stride: int = 1
    groups: int = 1
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5

    _param_shapes_fn = staticmethod(qarepvgg_param_shapes)
    _buffer_shapes_fn = staticmethod(qarepvgg_buffer_shapes)

    def __post_init__(self):
        cin, o, stride, groups = check_conv_config(self.in_channels, self.out_channels, self.stride, self.groups)
        values = dict(in_channels=cin, out_channels=o, stride=stride, groups=groups,
                      bn_momentum=check_probability(self.bn_momentum, "bn_momentum"),
                      bn_eps=check_nonneg_float(self.bn_eps, "bn_eps"))
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def forward(self, params, buffers, x, *, training: bool) -> tuple[np.ndarray, Arrays, Any]:
        """``(y, new_buffers, cache)``; training mode updates both BNs' running statistics."""
        training = check_bool(training, "training")
        params, buffers = self._check(params, buffers)
        x = _check_x(x, self.in_channels)
        eps, m = self.bn_eps, self.bn_momentum
        z3 = conv2d(x, params[_DENSE_W], stride=self.stride, padding=1, groups=self.groups)
        z1 = conv2d(x, params[_QA_ONE_W], stride=self.stride, padding=0, groups=self.groups)
        g3, b3, m3, v3 = _bn(params, buffers, _DENSE_BN)
        gp, bp, mp, vp = _bn(params, buffers, _POST_BN)
        new_buffers: Arrays = {}
        if training:
            r3 = batch_norm_train(z3, g3, b3, m3, v3, momentum=m, eps=eps)
            mid = r3.y + z1 + (x if self.has_identity else 0.0)
            rp = batch_norm_train(mid, gp, bp, mp, vp, momentum=m, eps=eps)
            pre = rp.y
            for prefix, r in ((_DENSE_BN, r3), (_POST_BN, rp)):
                _, (km, kv) = _bn_keys(prefix)
                new_buffers[km], new_buffers[kv] = r.running_mean, r.running_var
        else:
            mid = batch_norm_eval(z3, g3, b3, m3, v3, eps=eps) + z1 + (x if self.has_identity else 0.0)
            pre = batch_norm_eval(mid, gp, bp, mp, vp, eps=eps)
            new_buffers = {k: v.copy() for k, v in buffers.items()}
        return relu(pre), new_buffers, _BlockCache(training, x, z3, z1, mid, pre, buffers)

    def backward(self, params, cache: _BlockCache, dy) -> tuple[np.ndarray, Arrays]:
        """``(dx, grads)``: ReLU, post BN, then the sum fans out to BN3∘conv3x3, conv1x1 and the identity."""
        if not isinstance(cache, _BlockCache) or cache.mid is None:
            raise TypeError("cache must be the cache returned by QARepVGGBlock.forward")
        params, _ = self._check(params, cache.buffers)
        eps = self.bn_eps
        dpre = relu_backward(as_float_array(dy, "dy", shape=cache.pre.shape), cache.pre)
        gp, _, mp, vp = _bn(params, cache.buffers, _POST_BN)
        g3, _, m3, v3 = _bn(params, cache.buffers, _DENSE_BN)
        if cache.training:
            dmid, dgp, dbp = batch_norm_train_backward(dpre, cache.mid, gp, eps=eps)
            dz3, dg3, db3 = batch_norm_train_backward(dmid, cache.z3, g3, eps=eps)
        else:
            dmid, dgp, dbp = batch_norm_eval_backward(dpre, cache.mid, gp, mp, vp, eps=eps)
            dz3, dg3, db3 = batch_norm_eval_backward(dmid, cache.z3, g3, m3, v3, eps=eps)
        conv = dict(stride=self.stride, groups=self.groups)
        dx3, dk3, _ = conv2d_backward(dz3, cache.x, params[_DENSE_W], padding=1, **conv)
        dx1, dk1, _ = conv2d_backward(dmid, cache.x, params[_QA_ONE_W], padding=0, **conv)
        dx = dx3 + dx1 + (dmid if self.has_identity else 0.0)
        grads = {_DENSE_W: dk3, f"{_DENSE_BN}.weight": dg3, f"{_DENSE_BN}.bias": db3, _QA_ONE_W: dk1,
                 f"{_POST_BN}.weight": dgp, f"{_POST_BN}.bias": dbp}
        return dx, {k: grads[k] for k in self.trainable_names()}

    def _fuse_kw(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, stride=self.stride,
                    groups=self.groups, eps=self.bn_eps)

    def fuse(self, params, buffers, *, fold_post_bn: bool = True):
        """:func:`fuse_qarepvgg_block` with this block's configuration."""
        return fuse_qarepvgg_block(params, buffers, fold_post_bn=fold_post_bn, **self._fuse_kw())

    def fuse_backward(self, dkernel, dbias, params, buffers, *, fold_post_bn: bool = True) -> Arrays:
        """:func:`fuse_qarepvgg_block_backward` with this block's configuration."""
        return fuse_qarepvgg_block_backward(dkernel, dbias, params, buffers, fold_post_bn=fold_post_bn,
                                            **self._fuse_kw())

    def deploy_forward(self, x, kernel, bias) -> np.ndarray:
        """:func:`deploy_forward` with this block's stride and groups (folded post BN)."""
        return deploy_forward(x, kernel, bias, stride=self.stride, groups=self.groups)
