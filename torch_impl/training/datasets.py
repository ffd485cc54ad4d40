"""The data sets by name (the command line's ``--dataset``): one dispatcher over the loaders of
:mod:`.data` (digits, CIFAR, image folders) and :mod:`.synthetic` (digits variations)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

# the names load_dataset accepts
from repspec.core.vocabulary import DATASET_NAMES

from .._validation import check_size_pair
from .data import DatasetInfo, load_cifar10, load_cifar100, load_digits_dataset, load_image_folder
from .synthetic import load_digits_variations

__all__ = ["DATASET_NAMES", "load_dataset"]


def load_dataset(name: str, *, root=None, image_size=None, seed: int = 0, test_fraction: float = 0.25,
                 dtype: torch.dtype = torch.float32, **kwargs) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Load a dataset by name (the command line's ``--dataset``): ``(train, test, info)``.

    - ``digits``: :func:`load_digits_dataset` (``image_size`` default 16; ``root`` unused).
    - ``digits_variations``: :func:`.synthetic.load_digits_variations`
      (rotated digits on a random background; ``difficulty=`` knob; ``root`` unused).
    - ``cifar10`` / ``cifar100``: :func:`load_cifar10` / :func:`load_cifar100` from ``root``
      (default ``./data``); ``image_size`` must be None or 32; ``cifar100`` accepts
      ``label='fine'|'coarse'``.
    - ``folder``: :func:`load_image_folder` on ``root`` (required), ``image_size`` default 32.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name == "digits":
        if root is not None:
            raise ValueError("the digits dataset is bundled with scikit-learn; do not pass root")
        return load_digits_dataset(16 if image_size is None else image_size, seed=seed, test_fraction=test_fraction,
                                   dtype=dtype, **kwargs)
    if name == "digits_variations":  # harder digits with a difficulty knob (synthetic.py)
        if root is not None:
            raise ValueError("the digits_variations dataset is built from scikit-learn's digits; do not pass root")
        return load_digits_variations(16 if image_size is None else image_size, seed=seed, test_fraction=test_fraction,
                                      dtype=dtype, **kwargs)
    if name in ("cifar10", "cifar100"):
        if image_size is not None and check_size_pair(image_size) != (32, 32):
            raise ValueError(f"{name} images are 32x32; image_size must be None or 32, got {image_size!r}")
        root = Path("data") if root is None else root
        fn = load_cifar10 if name == "cifar10" else load_cifar100
        return fn(root, dtype=dtype, **kwargs)
    if root is None:
        raise ValueError("the 'folder' dataset needs root (a directory of class sub-folders)")
    return load_image_folder(root, 32 if image_size is None else image_size, seed=seed, test_fraction=test_fraction,
                             dtype=dtype, **kwargs)
