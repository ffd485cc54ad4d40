"""SPEC §1: chaining blocks into a small network and training it, gradients by hand.

A network is ``blocks → global average pool → linear → softmax cross-entropy``.
Everything is explicit data: parameters and buffers are flat ``{name: ndarray}``
dicts whose names match the PyTorch ``state_dict`` keys of ``repspec.torch_impl``
(``stage1.0.rbr_dense.conv.weight`` …), so an equivalence test is a dict compare.

The contract a block satisfies (see :class:`Block`) is small on purpose: a port
only has to provide ``forward`` and ``backward`` for each block kind. Gradients
come from the blocks' own backward functions, never from an autodiff library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Protocol, runtime_checkable

import numpy as np

from ._checks import as_float_array, check_int
from .ops import (
    global_avg_pool,
    global_avg_pool_backward,
    linear,
    linear_backward,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
)

__all__ = [
    "Block",
    "Optimizer",
    "Network",
    "IterationRecord",
    "train",
    "train_step",
    "copy_tree",
]

Arrays = dict[str, np.ndarray]


@runtime_checkable
class Block(Protocol):
    """What every reference block provides (RepVGG, QARepVGG, CSLA, HyperSearch, target…).

    Parameter and buffer names are *local* (``rbr_dense.conv.weight``); the
    network prefixes them (``stage1.0.``).
    """

    in_channels: int
    out_channels: int
    stride: int

    def init_params(self, rng: np.random.Generator) -> Arrays: ...

    def init_buffers(self) -> Arrays: ...

    def trainable_names(self) -> tuple[str, ...]:
        """Names of the parameters an optimizer updates (constants are excluded)."""
        ...

    def forward(self, params: Mapping[str, np.ndarray], buffers: Mapping[str, np.ndarray], x: np.ndarray, *,
                training: bool) -> tuple[np.ndarray, Arrays, Any]:
        """Return ``(y, new_buffers, cache)``; ``cache`` is whatever ``backward`` needs."""
        ...

    def backward(self, params: Mapping[str, np.ndarray], cache: Any, dy: np.ndarray) -> tuple[np.ndarray, Arrays]:
        """Return ``(dx, grads)`` with ``grads`` keyed by :meth:`trainable_names`."""
        ...


@runtime_checkable
class Optimizer(Protocol):
    """A pure optimizer: ``step`` returns new parameters and state, mutating nothing."""

    def init_state(self, params: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]: ...

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
             state: Mapping[str, Mapping[str, Any]]) -> tuple[Arrays, dict[str, dict[str, Any]]]: ...


def copy_tree(tree):
    """Deep copy of nested dicts/lists of ndarrays (records must not alias later state)."""
    if isinstance(tree, Mapping):
        return {k: copy_tree(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        return tree.copy()
    return tree


@dataclass(frozen=True)
class Network:
    """``logits = linear(GAP(block_k(…block_1(x))))`` (SPEC §1, §3 "Architectures").

    ``blocks`` is a sequence of ``(prefix, block)``; prefixes become the name
    scopes of the blocks' parameters, e.g. ``("stage0", blk)`` owns
    ``stage0.rbr_dense.conv.weight``. The head owns ``linear.weight (K, C)`` and
    ``linear.bias (K,)``.
    """

    blocks: tuple[tuple[str, Block], ...]
    num_classes: int
    head_name: str = "linear"

    def __post_init__(self):
        blocks = tuple(self.blocks)
        if not blocks:
            raise ValueError("blocks must contain at least one (prefix, block) pair")
        for i, item in enumerate(blocks):
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise TypeError(f"blocks[{i}] must be a (prefix: str, block) pair, got {item!r}")
            if not isinstance(item[1], Block):
                raise TypeError(f"blocks[{i}][1] must implement the Block protocol, got {type(item[1]).__name__}")
        prefixes = [p for p, _ in blocks]
        if len(set(prefixes)) != len(prefixes) or self.head_name in prefixes:
            raise ValueError(f"block prefixes must be unique and differ from head_name, got {prefixes}")
        for (pa, a), (pb, b) in zip(blocks, blocks[1:]):
            if a.out_channels != b.in_channels:
                raise ValueError(
                    f"block {pb!r} expects {b.in_channels} input channels but {pa!r} gives {a.out_channels}"
                )
        check_int(self.num_classes, "num_classes", min_value=1)
        object.__setattr__(self, "blocks", blocks)

    # ----------------------------------------------------------------- parameters
    @property
    def feature_channels(self) -> int:
        return self.blocks[-1][1].out_channels

    def init(self, rng: np.random.Generator) -> tuple[Arrays, Arrays]:
        """Fresh ``(params, buffers)``; the head is ``N(0, 1/C)`` weights and zero bias."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        params: Arrays = {}
        buffers: Arrays = {}
        for prefix, block in self.blocks:
            params.update({f"{prefix}.{k}": v for k, v in block.init_params(rng).items()})
            buffers.update({f"{prefix}.{k}": v for k, v in block.init_buffers().items()})
        c = self.feature_channels
        params[f"{self.head_name}.weight"] = rng.normal(0.0, 1.0 / np.sqrt(c), size=(self.num_classes, c))
        params[f"{self.head_name}.bias"] = np.zeros(self.num_classes)
        return params, buffers

    def trainable_names(self) -> tuple[str, ...]:
        names = [f"{p}.{k}" for p, b in self.blocks for k in b.trainable_names()]
        return tuple(names) + (f"{self.head_name}.weight", f"{self.head_name}.bias")

    @staticmethod
    def _scope(tree: Mapping[str, np.ndarray], prefix: str) -> Arrays:
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in tree.items() if k.startswith(prefix + ".")}

    # -------------------------------------------------------------- forward/backward
    def forward(self, params, buffers, x, *, training: bool):
        """Return ``(logits, new_buffers, cache)``."""
        x = as_float_array(x, "x", ndim=4)
        if x.shape[1] != self.blocks[0][1].in_channels:
            raise ValueError(f"x must have {self.blocks[0][1].in_channels} channels, got shape {x.shape}")
        new_buffers: Arrays = {}
        caches = []
        h = x
        for prefix, block in self.blocks:
            h, nb, cache = block.forward(self._scope(params, prefix), self._scope(buffers, prefix), h,
                                         training=training)
            new_buffers.update({f"{prefix}.{k}": v for k, v in nb.items()})
            caches.append(cache)
        pooled = global_avg_pool(h)
        logits = linear(pooled, params[f"{self.head_name}.weight"], params[f"{self.head_name}.bias"])
        return logits, new_buffers, (caches, h.shape, pooled)

    def backward(self, params, cache, dlogits) -> Arrays:
        """``∂L/∂θ`` for every trainable name, by chaining the blocks' backward functions."""
        caches, feat_shape, pooled = cache
        grads: Arrays = {}
        dpooled, dw, db = linear_backward(dlogits, pooled, params[f"{self.head_name}.weight"])
        grads[f"{self.head_name}.weight"], grads[f"{self.head_name}.bias"] = dw, db
        dh = global_avg_pool_backward(dpooled, feat_shape)
        for (prefix, block), bcache in zip(reversed(self.blocks), reversed(caches)):
            dh, g = block.backward(self._scope(params, prefix), bcache, dh)
            grads.update({f"{prefix}.{k}": v for k, v in g.items()})
        return grads

    def loss_and_grads(self, params, buffers, x, labels, *, training: bool = True):
        """Return ``(loss, logits, grads, new_buffers)`` for one batch."""
        logits, new_buffers, cache = self.forward(params, buffers, x, training=training)
        loss = softmax_cross_entropy(logits, labels)
        grads = self.backward(params, cache, softmax_cross_entropy_backward(logits, labels))
        return loss, logits, grads, new_buffers


@dataclass
class IterationRecord:
    """Everything an equivalence test compares at one iteration (values *after* the step)."""

    iteration: int
    loss: float
    logits: np.ndarray
    grads: Arrays
    params: Arrays
    buffers: Arrays
    optimizer_state: dict[str, dict[str, Any]] = field(default_factory=dict)


def train_step(network: Network, params, buffers, optimizer: Optimizer, opt_state, x, labels):
    """One iteration: forward in training mode, backward, optimizer step.

    Returns ``(loss, logits, grads, new_params, new_buffers, new_opt_state)``.
    Only :meth:`Network.trainable_names` are handed to the optimizer; other
    parameters (constant scales) are carried over unchanged.
    """
    loss, logits, grads, new_buffers = network.loss_and_grads(params, buffers, x, labels, training=True)
    names = network.trainable_names()
    stepped, new_state = optimizer.step({k: params[k] for k in names}, grads, opt_state)
    new_params = dict(params)
    new_params.update(stepped)
    return loss, logits, grads, new_params, {**buffers, **new_buffers}, new_state


def train(network: Network, params, buffers, optimizer: Optimizer, batches: Iterable[tuple[np.ndarray, np.ndarray]],
          n_iter: int, *, opt_state=None) -> list[IterationRecord]:
    """Train for ``n_iter`` iterations, recording every iteration (SPEC §6).

    ``batches`` is an iterable of ``(x, labels)``; it is cycled if shorter than
    ``n_iter``. Returns one :class:`IterationRecord` per iteration, deep-copied.
    """
    n_iter = check_int(n_iter, "n_iter", min_value=0)
    batches = list(batches)
    if n_iter and not batches:
        raise ValueError("batches must contain at least one (x, labels) pair")
    names = network.trainable_names()
    if opt_state is None:
        opt_state = optimizer.init_state({k: params[k] for k in names})
    records = []
    it: Iterator = iter(batches * (n_iter // max(len(batches), 1) + 1))
    for i in range(n_iter):
        x, labels = next(it)
        loss, logits, grads, params, buffers, opt_state = train_step(
            network, params, buffers, optimizer, opt_state, x, labels
        )
        records.append(IterationRecord(i, loss, logits.copy(), copy_tree(grads), copy_tree(params),
                                       copy_tree(buffers), copy_tree(opt_state)))
    return records
