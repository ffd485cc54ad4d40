"""Datasets and seeded data loaders for ``repspec train | hypersearch | quantize | demo``.

Every dataset loader returns ``(train_dataset, test_dataset, info)``: map-style datasets
yielding ``(image, label)`` with ``image`` a float ``(3, H, W)`` tensor normalized with the
**train-set** per-channel mean/std, ``label`` an int64 scalar tensor, and a
:class:`DatasetInfo` (name, classes, sizes, mean/std, split seed; JSON-able through
:meth:`DatasetInfo.to_dict` for checkpoints).

- :func:`load_digits_dataset` — scikit-learn's bundled handwritten digits (real data,
  1797 8x8 grayscale images, no download), bilinearly upscaled, replicated to 3 channels,
  with a fixed stratified split (:func:`stratified_split`). With the defaults
  (``test_fraction=0.25``): **1348 train / 449 test** images; the split depends only on
  ``seed`` (default 0).
- :func:`load_cifar10` / :func:`load_cifar100` — the **binary** distribution
  (``cifar-10-batches-bin/``, ``cifar-100-binary/``) parsed with NumPy
  (:func:`read_cifar_binary`); the pickled "python version" is never read.
- :func:`load_image_folder` / :class:`ImageFolderDataset` — class sub-folders of
  PNG/JPEG/... images (Pillow; no torchvision), resized to a given size.
- :func:`load_dataset` — one entry point by name (``digits``, ``cifar10``, ``cifar100``,
  ``folder``) for the command line.
- :func:`make_loader` / :func:`make_loaders` — ``DataLoader`` s whose shuffling is a pure
  function of ``(seed, epoch)`` (:class:`EpochShuffleSampler`), so that a run can be
  resumed mid-epoch exactly (see :mod:`repspec.torch_impl.training.train`).
- :class:`RandomCropFlip` — CIFAR-style augmentation whose random choices are a pure
  function of ``(seed, epoch, index)``.
"""

from __future__ import annotations

import functools
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from .._validation import check_float_dtype, check_fraction, check_int, check_seed, check_size_pair

__all__ = [
    "DatasetInfo",
    "stratified_split",
    "load_digits_dataset",
    "CIFAR10_BINARY_URL",
    "CIFAR100_BINARY_URL",
    "CIFAR10_CLASSES",
    "read_cifar_binary",
    "load_cifar10",
    "load_cifar100",
    "UInt8ImageDataset",
    "ImageFolderDataset",
    "IMAGE_EXTENSIONS",
    "load_image_folder",
    "EpochShuffleSampler",
    "RandomCropFlip",
    "make_loader",
    "make_loaders",
    "random_subset",
    "channel_stats",
]

CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR100_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_PIXELS = 3 * 32 * 32

#: file suffixes :class:`ImageFolderDataset` accepts (case-insensitive)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


# --------------------------------------------------------------------------- helpers


def _derived_seed(*words: int) -> int:
    """A 63-bit seed from integers (NumPy ``SeedSequence``: decorrelated, platform-independent)."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0]) >> 1


@dataclass
class DatasetInfo:
    """What a dataset loader found: enough to rebuild the model head and to document a run.

    ``mean``/``std`` are the per-channel normalization statistics (pixel values in [0, 1])
    computed on the **train** split only; ``split_seed`` is the seed of the train/test
    split when the loader made one (None for datasets with a fixed official split).
    """

    name: str
    num_classes: int
    image_size: tuple[int, int]
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int
    classes: tuple[str, ...]
    split_seed: int | None = None
    source: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        d = asdict(self)
        for k in ("image_size", "mean", "std", "classes"):
            d[k] = list(d[k])
        return d


def channel_stats(images: Tensor | np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` (population std, ``ddof=0``) of ``(N, C, H, W)`` images.

    ``uint8`` images are treated as pixel values ``/255`` and computed exactly from
    per-channel histograms (no float copy of the whole array); floating images in float64.
    """
    arr = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) array, got shape {arr.shape}")
    means, stds = [], []
    for c in range(arr.shape[1]):
        if arr.dtype == np.uint8:
            counts = np.bincount(arr[:, c].ravel(), minlength=256).astype(np.float64)
            values = np.arange(256, dtype=np.float64) / 255.0
            n = counts.sum()
            m = float((counts * values).sum() / n)
            v = float((counts * (values - m) ** 2).sum() / n)
        else:
            x = arr[:, c].astype(np.float64, copy=False)
            m = float(x.mean())
            v = float(((x - m) ** 2).mean())
        means.append(m)
        stds.append(math.sqrt(v))
    return tuple(means), tuple(stds)


def _checked_std(std: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(float(s) for s in std)
    for c, s in enumerate(out):
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"{name}: channel {c} has standard deviation {s}; cannot normalize a constant channel")
    return out


def stratified_split(labels, test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded stratified train/test split: ``(train_indices, test_indices)``, each sorted.

    The test set has ``round(N · test_fraction)`` samples (half to even); each class ``c``
    with ``n_c`` samples contributes ``floor(n_c · f)`` of them, and the remainder goes one
    each to the classes with the largest fractional parts ``n_c · f − floor(n_c · f)``
    (ties: smaller class label first). Within a class the test members are the first
    of a permutation drawn from ``np.random.default_rng([seed, class_position])``, so the
    split depends only on ``labels``, ``test_fraction`` and ``seed``.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    f = check_fraction(test_fraction, "test_fraction")
    seed = check_seed(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    n_test = int(round(y.size * f))
    base = np.floor(counts * f).astype(np.int64)
    rem = counts * f - base
    extra = n_test - int(base.sum())
    order = np.lexsort((np.arange(classes.size), -rem))  # largest remainder first, then class order
    per_class = base.copy()
    per_class[order[:extra]] += 1
    train_idx, test_idx = [], []
    for k in range(classes.size):
        members = np.flatnonzero(inverse == k)
        perm = np.random.default_rng([seed, k]).permutation(members.size)
        test_idx.append(members[perm[:per_class[k]]])
        train_idx.append(members[perm[per_class[k]:]])
    train = np.sort(np.concatenate(train_idx))
    test = np.sort(np.concatenate(test_idx))
    if train.size == 0 or test.size == 0:
        raise ValueError(f"test_fraction={f} leaves an empty {'train' if train.size == 0 else 'test'} split "
                         f"of {y.size} samples")
    return train, test


# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    labels = np.asarray(d.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_dataset(image_size: int = 16, *, seed: int = 0, test_fraction: float = 0.25, channels: int = 3,
                        dtype: torch.dtype = torch.float32) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    """scikit-learn's bundled handwritten digits as ``(train, test, info)`` (no download).

    1797 real 8x8 grayscale images of the digits 0–9 (values 0–16, scaled to [0, 1]),
    upscaled with ``F.interpolate(mode='bilinear', align_corners=False)`` to
    ``image_size`` (16 or 32 for the models; 8 keeps the originals), replicated to
    ``channels`` (3: the models take RGB), then normalized with the mean/std of the
    **train** split (one value: the channels are copies). The split is
    :func:`stratified_split` with ``seed`` (default 0) and ``test_fraction`` (default
    0.25 → 1348 train / 449 test images). Returns ``TensorDataset(images, labels)`` s;
    labels are int64.
    """
    size = check_size_pair(image_size)
    seed = check_seed(seed)
    channels = check_int(channels, "channels", 1)
    dtype = check_float_dtype(dtype)
    images, labels = digits_arrays()
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    x = torch.from_numpy(np.array(images, dtype=np.float64) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    if size != (8, 8):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    train_x = x[torch.from_numpy(train_idx)]
    mean = float(train_x.mean())
    std = float(((train_x - mean) ** 2).mean().sqrt())
    x = ((x - mean) / std).to(dtype).expand(-1, channels, -1, -1).contiguous()
    y = torch.from_numpy(np.array(labels))
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    info = DatasetInfo(name="digits", num_classes=10, image_size=size, in_channels=channels,
                       mean=(mean,) * channels, std=(std,) * channels, train_size=int(tr.numel()),
                       test_size=int(te.numel()), classes=tuple(str(i) for i in range(10)), split_seed=seed,
                       source="sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
                       notes={"test_fraction": float(test_fraction), "interpolation": "bilinear, align_corners=False",
                              "original_size": [8, 8]})
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te]), info


# --------------------------------------------------------------------------- uint8 image tensors


class UInt8ImageDataset(Dataset):
    """Images kept as ``uint8`` ``(N, C, H, W)`` (4x less memory than float32), normalized per item.

    ``dataset[i] = ((images[i] / 255 − mean) / std).to(dtype), labels[i]``.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float],
                 dtype: torch.dtype = torch.float32):
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError("images must be a uint8 (N, C, H, W) tensor")
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be a 1-D tensor with {images.shape[0]} entries")
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean and std need {c} entries (one per channel), got {len(mean)} and {len(std)}")
        self.images, self.labels = images, labels.to(torch.int64)
        self.dtype = check_float_dtype(dtype)
        std = _checked_std(std, "UInt8ImageDataset")
        m = torch.tensor(mean, dtype=torch.float64).view(c, 1, 1)
        s = torch.tensor(std, dtype=torch.float64).view(c, 1, 1)
        self._scale = (1.0 / (255.0 * s)).to(self.dtype)
        self._shift = (-m / s).to(self.dtype)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index):
        x = self.images[index].to(self.dtype) * self._scale + self._shift
        return x, self.labels[index]


# --------------------------------------------------------------------------- CIFAR (binary version)


def read_cifar_binary(path, label_bytes: int = 1, *, num_labels: Sequence[int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR binary file: ``(images uint8 (N, 3, 32, 32), labels uint8 (N, label_bytes))``.

    Each record is ``label_bytes`` label bytes (CIFAR-10: 1; CIFAR-100: 2, coarse then fine)
    followed by 3072 pixel bytes: the red, green and blue 32x32 planes, each row-major.
    The file size must be a non-zero multiple of the record length; ``num_labels`` (one
    bound per label byte) checks every label is in range. Both give a ``ValueError`` that
    names the file.
    """
    path = Path(path)
    label_bytes = check_int(label_bytes, "label_bytes", 1)
    record = label_bytes + _CIFAR_PIXELS
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR binary file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0 or size % record:
        raise ValueError(f"{str(path)!r} has {size} bytes, which is not a non-zero multiple of the record length "
                         f"{record} ({label_bytes} label byte(s) + {_CIFAR_PIXELS} pixel bytes): a truncated or "
                         f"corrupt download, or not the CIFAR binary version")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size != size:  # pragma: no cover - file changed while reading
        raise ValueError(f"{str(path)!r}: read {raw.size} bytes, expected {size}")
    raw = raw.reshape(-1, record)
    labels = raw[:, :label_bytes].copy()
    images = raw[:, label_bytes:].reshape(-1, 3, 32, 32).copy()
    if num_labels is not None:
        if len(num_labels) != label_bytes:
            raise ValueError(f"num_labels needs {label_bytes} entries, got {len(num_labels)}")
        for j, bound in enumerate(num_labels):
            bad = np.flatnonzero(labels[:, j] >= bound)
            if bad.size:
                raise ValueError(f"{str(path)!r}: record {int(bad[0])} has label byte {j} = {int(labels[bad[0], j])}, "
                                 f"outside [0, {bound}): not a CIFAR-{'10' if label_bytes == 1 else '100'} binary file")
    return images, labels


def _cifar_dir(root, subdir: str, required: Sequence[str], url: str, what: str, pickled: str) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    root = Path(root)
    archive = url.rsplit("/", 1)[-1]
    hint = (f"download the binary version of {what} from {url} and extract it into {str(root)!r} "
            f"(e.g. `mkdir -p {root} && tar -xzf {archive} -C {root}`), which gives "
            f"{str(root / subdir)!r} containing {', '.join(required)}")
    for cand in (root / subdir, root):
        if all((cand / f).is_file() for f in required):
            return cand
    if (root / pickled).exists() or (root.name == pickled):
        raise FileNotFoundError(f"found {pickled!r} (the pickled 'python version' of {what}), which repspec never "
                                f"reads (unpickling runs arbitrary code); {hint}")
    if not root.exists():
        raise FileNotFoundError(f"{what} directory {str(root)!r} does not exist: {hint}")
    for cand in (root / subdir, root):
        present = [f for f in required if (cand / f).is_file()]
        if present:
            missing = [f for f in required if f not in present]
            raise FileNotFoundError(f"{what} in {str(cand)!r} is incomplete: missing {', '.join(missing)}; {hint}")
    raise FileNotFoundError(f"no {what} binary files under {str(root)!r}: {hint}")


def _read_names(path: Path, expected: int, default: Sequence[str]) -> tuple[str, ...]:
    if path.is_file():
        names = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if len(names) == expected:
            return tuple(names)
    return tuple(default)


def load_cifar10(root, *, normalize: bool = True, dtype: torch.dtype = torch.float32
                 ) -> tuple[UInt8ImageDataset, UInt8ImageDataset, DatasetInfo]:
    """CIFAR-10 from its **binary** distribution: ``(train (50000), test (10000), info)``.

    ``root`` is the directory containing ``cifar-10-batches-bin/`` (or that directory
    itself) with ``data_batch_1.bin`` … ``data_batch_5.bin`` and ``test_batch.bin``
    (from :data:`CIFAR10_BINARY_URL`). A missing directory or file raises
    ``FileNotFoundError`` saying what to download and where to put it. Images are
    normalized per channel with the train-set mean/std (``normalize=False``: mean 0,
    std 1, i.e. pixel values in [0, 1]).
    """
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    d = _cifar_dir(root, "cifar-10-batches-bin", files, CIFAR10_BINARY_URL, "CIFAR-10", "cifar-10-batches-py")
    parts = [read_cifar_binary(d / f, 1, num_labels=(10,)) for f in files]
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1][:, 0] for p in parts[:5]])
    test_x, test_y = parts[5][0], parts[5][1][:, 0]
    classes = _read_names(d / "batches.meta.txt", 10, CIFAR10_CLASSES)
    return _cifar_datasets("cifar10", d, train_x, train_y, test_x, test_y, classes, normalize, dtype,
                           {"format": "binary", "url": CIFAR10_BINARY_URL})


def load_cifar100(root, *, label: str = "fine", normalize: bool = True, dtype: torch.dtype = torch.float32
                  ) -> tuple[UInt8ImageDataset, UInt8ImageDataset, DatasetInfo]:
    """CIFAR-100 from its **binary** distribution: ``(train (50000), test (10000), info)``.

    ``root`` contains ``cifar-100-binary/`` (or is it) with ``train.bin`` and ``test.bin``
    (from :data:`CIFAR100_BINARY_URL`); records carry a coarse (20 classes) and a fine
    (100 classes) label byte, in that order. ``label`` picks ``'fine'`` (default) or
    ``'coarse'`` (``info.name`` is then ``'cifar100-coarse'``); :func:`read_cifar_binary`
    returns both. Normalization as in :func:`load_cifar10`.
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    files = ["train.bin", "test.bin"]
    d = _cifar_dir(root, "cifar-100-binary", files, CIFAR100_BINARY_URL, "CIFAR-100", "cifar-100-python")
    (train_x, train_l), (test_x, test_l) = (read_cifar_binary(d / f, 2, num_labels=(20, 100)) for f in files)
    col, k = (1, 100) if label == "fine" else (0, 20)
    names_file = d / ("fine_label_names.txt" if label == "fine" else "coarse_label_names.txt")
    classes = _read_names(names_file, k, [str(i) for i in range(k)])
    return _cifar_datasets("cifar100" if label == "fine" else "cifar100-coarse", d, train_x, train_l[:, col], test_x,
                           test_l[:, col], classes, normalize, dtype,
                           {"format": "binary", "url": CIFAR100_BINARY_URL, "label": label})


def _cifar_datasets(name, d, train_x, train_y, test_x, test_y, classes, normalize, dtype, notes):
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    dtype = check_float_dtype(dtype)
    if normalize:
        mean, std = channel_stats(train_x)
        std = _checked_std(std, name)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    tx, ty = torch.from_numpy(train_x), torch.from_numpy(train_y.astype(np.int64))
    vx, vy = torch.from_numpy(test_x), torch.from_numpy(test_y.astype(np.int64))
    info = DatasetInfo(name=name, num_classes=len(classes), image_size=(32, 32), in_channels=3, mean=mean, std=std,
                       train_size=int(tx.shape[0]), test_size=int(vx.shape[0]), classes=tuple(classes),
                       split_seed=None, source=str(d), notes=dict(notes))
    return UInt8ImageDataset(tx, ty, mean, std, dtype), UInt8ImageDataset(vx, vy, mean, std, dtype), info


# --------------------------------------------------------------------------- image folders


def _scan_folder(root: Path, extensions: Sequence[str]) -> tuple[list[str], list[tuple[Path, str]]]:
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {str(root)!r} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class sub-folders; expected "
                         f"{str(root)}/<class name>/<image>{extensions[0]}")
    exts = tuple(e.lower() for e in extensions)
    samples, empty = [], []
    for c in classes:
        files = sorted(p for p in (root / c).rglob("*")
                       if p.is_file() and p.suffix.lower() in exts
                       and not any(part.startswith(".") for part in p.relative_to(root / c).parts))
        if not files:
            empty.append(c)
        samples.extend((p, c) for p in files)
    if empty:
        raise ValueError(f"image folder {str(root)!r}: class folder(s) {empty} contain no images "
                         f"(accepted extensions: {', '.join(exts)})")
    return classes, samples


class ImageFolderDataset(Dataset):
    """Class sub-folders of images (``root/<class>/**/<image>``), read with Pillow, no torchvision.

    Classes are the sorted names of the non-hidden sub-folders of ``root`` (label = index
    in that order, or in ``classes`` if given); images are every file with a suffix in
    ``extensions`` below a class folder, sorted by path. Each item is converted to RGB,
    resized to ``image_size`` (an int or ``(height, width)``) with bilinear filtering,
    scaled to [0, 1] and normalized with ``mean``/``std`` (per channel; default: none).
    A missing or class-less folder, or a class folder without images, raises at
    construction; an unreadable image raises ``OSError`` naming the file when loaded.
    """

    def __init__(self, root, image_size=32, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 classes: Sequence[str] | None = None, dtype: torch.dtype = torch.float32):
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path, got {type(root).__name__}")
        self.root = Path(root)
        self.image_size = check_size_pair(image_size)
        self.dtype = check_float_dtype(dtype)
        found, samples = _scan_folder(self.root, extensions)
        if classes is None:
            classes = found
        else:
            classes = list(classes)
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise ValueError(f"image folder {str(self.root)!r} has class folder(s) {unknown} that are not among "
                                 f"the given classes {classes}")
        self.classes = tuple(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, self.class_to_idx[c]) for p, c in samples]
        self.targets = [t for _, t in self.samples]
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else _checked_std(std, "ImageFolderDataset")
        if self.mean is not None and (len(self.mean) != 3 or len(self.std) != 3):
            raise ValueError("mean and std need 3 entries (RGB)")

    def __len__(self) -> int:
        return len(self.samples)

    def load_uint8(self, index: int) -> Tensor:
        """Image ``index`` as a resized RGB ``uint8 (3, H, W)`` tensor (no normalization)."""
        path, _ = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((self.image_size[1], self.image_size[0]),
                                                Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except OSError as exc:
            raise OSError(f"cannot read image {str(path)!r}: {exc}") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def __getitem__(self, index):
        x = self.load_uint8(index).to(torch.float64) / 255.0
        if self.mean is not None:
            m = torch.tensor(self.mean, dtype=torch.float64).view(3, 1, 1)
            s = torch.tensor(self.std, dtype=torch.float64).view(3, 1, 1)
            x = (x - m) / s
        return x.to(self.dtype), torch.tensor(self.samples[index][1], dtype=torch.int64)


def load_image_folder(root, image_size=32, *, seed: int = 0, test_fraction: float = 0.25,
                      normalize: bool = True, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                      dtype: torch.dtype = torch.float32) -> tuple[Dataset, Dataset, DatasetInfo]:
    """A custom image dataset as ``(train, test, info)`` (see :class:`ImageFolderDataset`).

    Layouts: ``root/train/<class>/…`` with ``root/test/<class>/…`` (or ``root/val/``) is
    used as given (the test classes must be among the train classes); otherwise
    ``root/<class>/…`` is split with :func:`stratified_split` (``seed``,
    ``test_fraction``). Normalization statistics come from the train images only (every
    train image is read once to compute them; ``normalize=False`` skips that).
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    root = Path(root)
    seed = check_seed(seed)
    size = check_size_pair(image_size)
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    split_layout = (root / "train").is_dir() and test_dir is not None and any(
        p.is_dir() for p in (root / "train").iterdir())
    if split_layout:
        base = ImageFolderDataset(root / "train", size, extensions=extensions, dtype=dtype)
        base_test = ImageFolderDataset(test_dir, size, extensions=extensions, classes=base.classes, dtype=dtype)
        train_idx, test_idx, split_seed = np.arange(len(base)), None, None
    else:
        base = ImageFolderDataset(root, size, extensions=extensions, dtype=dtype)
        train_idx, test_idx = stratified_split(base.targets, test_fraction, seed)
        base_test, split_seed = None, seed
    if normalize:
        imgs = torch.stack([base.load_uint8(int(i)) for i in train_idx])
        mean, std = channel_stats(imgs)
        std = _checked_std(std, f"image folder {str(root)!r}")
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    base.mean, base.std = tuple(mean), tuple(std)
    if split_layout:
        base_test.mean, base_test.std = tuple(mean), tuple(std)
        train, test = base, base_test
    else:
        train, test = Subset(base, train_idx.tolist()), Subset(base, test_idx.tolist())
    info = DatasetInfo(name="folder", num_classes=len(base.classes), image_size=size, in_channels=3, mean=mean,
                       std=std, train_size=len(train), test_size=len(test), classes=base.classes,
                       split_seed=split_seed, source=str(root),
                       notes={"layout": "train/test folders" if split_layout else "class folders, stratified split",
                              **({} if split_layout else {"test_fraction": float(test_fraction)})})
    return train, test, info


def random_subset(dataset: Dataset, size: int, *, seed: int = 0) -> Subset:
    """``size`` distinct samples of ``dataset`` chosen with ``seed`` (sorted indices), e.g. the
    small dataset of a HyperSearch (SPEC §3)."""
    n = len(dataset)
    size = check_int(size, "size", 1)
    if size > n:
        raise ValueError(f"size={size} exceeds the dataset's {n} samples")
    idx = np.sort(np.random.default_rng(check_seed(seed)).choice(n, size=size, replace=False))
    return Subset(dataset, idx.tolist())


# --------------------------------------------------------------------------- sampling and augmentation


class EpochShuffleSampler(Sampler[int]):
    """Sample order that is a pure function of ``(seed, epoch)`` and can start mid-epoch.

    With ``shuffle`` the order of epoch ``e`` is ``torch.randperm(n)`` drawn from a
    ``torch.Generator`` seeded with ``SeedSequence([seed, e])``; without, ``0 … n−1``.
    Each iteration uses the current epoch and then advances it, so plain repeated
    iteration reshuffles; :meth:`set_epoch` sets the epoch of the next iteration and
    :meth:`set_start` makes the next iteration skip its first ``start`` indices (a
    resumed run skips the batches it already trained on without loading them).
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples = check_int(num_samples, "num_samples", 1)
        self.seed = check_seed(seed)
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
        self.shuffle = shuffle
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch (0-based) whose order the next iteration yields."""
        self.epoch = check_int(epoch, "epoch", 0)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of the next iteration only."""
        self._start = check_int(start, "start", 0)

    def order(self, epoch: int) -> list[int]:
        """The full index order of ``epoch``."""
        if not self.shuffle:
            return list(range(self.num_samples))
        g = torch.Generator().manual_seed(_derived_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g).tolist()

    def __iter__(self):
        order, start = self.order(self.epoch), self._start
        self.epoch += 1
        self._start = 0
        return iter(order[start:])

    def __len__(self) -> int:
        return self.num_samples


class RandomCropFlip(Dataset):
    """CIFAR-style augmentation of a dataset of ``(C, H, W)`` images: zero-pad by ``padding``,
    random ``H x W`` crop, horizontal flip with probability 1/2.

    The crop offsets and flips of epoch ``e`` come from ``np.random.default_rng([seed, e])``
    (one draw per sample index), so they do not depend on worker processes, batch order
    or interruptions. The padding value 0 is the train mean after normalization.
    :meth:`set_epoch` is called by :func:`repspec.torch_impl.training.train.train_classifier`.
    """

    def __init__(self, dataset: Dataset, *, padding: int = 4, flip: bool = True, seed: int = 0):
        self.dataset = dataset
        self.padding = check_int(padding, "padding", 0)
        if not isinstance(flip, bool):
            raise TypeError(f"flip must be a bool, got {type(flip).__name__}")
        self.flip, self.seed = flip, check_seed(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crop offsets and flips of ``epoch``."""
        self.epoch = check_int(epoch, "epoch", 0)
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.dataset)
        self._offsets = rng.integers(0, 2 * self.padding + 1, size=(n, 2))
        self._flips = rng.random(n) < 0.5

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        x, y = self.dataset[index]
        h, w = x.shape[-2:]
        if self.padding:
            p = self.padding
            x = F.pad(x, (p, p, p, p))
            i, j = (int(v) for v in self._offsets[index])
            x = x[..., i:i + h, j:j + w]
        if self.flip and self._flips[index]:
            x = x.flip(-1)
        return x.contiguous(), y


def _seed_worker(worker_id: int) -> None:  # top level: picklable for spawned workers
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset: Dataset, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` with reproducible order: :class:`EpochShuffleSampler` (``seed``, ``shuffle``)
    and a ``torch.Generator`` seeded with ``seed`` for worker seeds (workers also seed
    NumPy and ``random`` from their torch seed)."""
    batch_size = check_int(batch_size, "batch_size", 1)
    seed = check_seed(seed)
    num_workers = check_int(num_workers, "num_workers", 0)
    n = len(dataset)
    if n < 1:
        raise ValueError("dataset is empty")
    if drop_last and n < batch_size:
        raise ValueError(f"drop_last with batch_size={batch_size} > {n} samples leaves no batch")
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochShuffleSampler(n, seed, shuffle),
                      drop_last=drop_last, num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=_seed_worker if num_workers else None)


def make_loaders(train_dataset: Dataset, test_dataset: Dataset | None = None, *, batch_size: int, seed: int = 0,
                 eval_batch_size: int | None = None, drop_last: bool = False, num_workers: int = 0,
                 pin_memory: bool = False) -> tuple[DataLoader, DataLoader | None]:
    """``(train_loader, test_loader)``: the train loader shuffles (:func:`make_loader` with
    ``seed``), the test loader (None without ``test_dataset``) keeps the dataset order,
    ``eval_batch_size`` (default ``batch_size``), never drops the last batch."""
    train = make_loader(train_dataset, batch_size, seed=seed, shuffle=True, drop_last=drop_last,
                        num_workers=num_workers, pin_memory=pin_memory)
    test = None
    if test_dataset is not None:
        test = make_loader(test_dataset, batch_size if eval_batch_size is None else eval_batch_size, seed=seed,
                           shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
    return train, test
