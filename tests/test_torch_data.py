"""Data layer: digits (real, bundled), CIFAR binary parsing, image folders, seeded loaders."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from repspec.torch_impl.training import data as rd
from repspec.torch_impl.training.data import (
    CIFAR10_BINARY_URL,
    CIFAR100_BINARY_URL,
    EpochShuffleSampler,
    RandomCropFlip,
    load_cifar10,
    load_cifar100,
    load_digits_dataset,
    load_image_folder,
    make_loader,
    make_loaders,
    random_subset,
    read_cifar_binary,
    stratified_split,
)
from repspec.torch_impl.training.datasets import load_dataset




# ------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def digits16():
    return load_digits_dataset(16, dtype=torch.float64)


def test_digits_shapes_sizes_and_info(digits16):
    train, test, info = digits16
    x, y = train.tensors
    assert x.shape == (1348, 3, 16, 16) and x.dtype == torch.float64
    assert y.shape == (1348,) and y.dtype == torch.int64
    assert test.tensors[0].shape == (449, 3, 16, 16)
    assert (info.train_size, info.test_size, info.num_classes, info.split_seed) == (1348, 449, 10, 0)
    assert info.image_size == (16, 16) and info.in_channels == 3
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # replicated gray
    assert sorted(torch.unique(y).tolist()) == list(range(10))
    x32 = load_digits_dataset(32)[0].tensors[0]
    assert x32.shape == (1348, 3, 32, 32) and x32.dtype == torch.float32
    assert info.to_dict()["mean"] == list(info.mean)


def test_digits_pixels_are_bilinear_upscaled_and_train_normalized(digits16):
    from sklearn.datasets import load_digits

    train, test, info = digits16
    raw = load_digits()
    tr_idx, te_idx = stratified_split(raw.target, 0.25, 0)
    up = F.interpolate(torch.from_numpy(raw.images / 16.0).unsqueeze(1), size=(16, 16), mode="bilinear",
                       align_corners=False)
    mean = up[tr_idx].mean().item()
    std = up[tr_idx].std(unbiased=False).item()
    assert info.mean[0] == pytest.approx(mean, rel=1e-12) and info.std[0] == pytest.approx(std, rel=1e-12)
    torch.testing.assert_close(train.tensors[0][:, 0], ((up[tr_idx] - mean) / std)[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(test.tensors[0][:, 0], ((up[te_idx] - mean) / std)[:, 0], rtol=1e-12, atol=1e-12)
    assert torch.equal(train.tensors[1], torch.from_numpy(raw.target[tr_idx]))
    # statistics from the train split only: train is standardized, test is not exactly
    assert abs(train.tensors[0].mean().item()) < 1e-10
    assert train.tensors[0].std(unbiased=False).item() == pytest.approx(1.0, rel=1e-9)
    assert abs(test.tensors[0].mean().item()) > 1e-6


def test_digits_deterministic_by_seed_and_stratified():
    a_tr, a_te, _ = load_digits_dataset(8, seed=3)
    b_tr, b_te, _ = load_digits_dataset(8, seed=3)
    c_tr, _, _ = load_digits_dataset(8, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a_tr.tensors + a_te.tensors, b_tr.tensors + b_te.tensors))
    assert not torch.equal(a_tr.tensors[1], c_tr.tensors[1]) or not torch.equal(a_tr.tensors[0], c_tr.tensors[0])
    counts_all = np.bincount(np.concatenate([a_tr.tensors[1].numpy(), a_te.tensors[1].numpy()]))
    counts_te = np.bincount(a_te.tensors[1].numpy())
    assert np.all(np.abs(counts_te - counts_all * 0.25) < 1)


@given(labels=st.lists(st.integers(0, 4), min_size=4, max_size=60), frac=st.sampled_from([0.1, 0.25, 0.5, 0.8]),
       seed=st.integers(0, 2**32))
def test_stratified_split_properties(labels, frac, seed):
    y = np.array(labels)
    n_test = int(round(y.size * frac))
    if n_test == 0 or n_test == y.size:
        with pytest.raises(ValueError, match="empty"):
            stratified_split(y, frac, seed)
        return
    tr, te = stratified_split(y, frac, seed)
    assert te.size == n_test
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(y.size))  # a partition
    for c in np.unique(y):
        n_c, t_c = int((y == c).sum()), int((y[te] == c).sum())
        assert np.floor(n_c * frac) <= t_c <= np.floor(n_c * frac) + 1
    tr2, te2 = stratified_split(y, frac, seed)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)


def test_digits_argument_errors():
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_dataset(16, test_fraction=1.5)
    with pytest.raises(TypeError, match="image_size"):
        load_digits_dataset("16")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="bundled"):
        load_dataset("digits", root="/tmp")


# ------------------------------------------------------------------ CIFAR binary


def _records(rng, n: int, label_bytes: int, bounds) -> tuple[bytes, np.ndarray, np.ndarray]:
    labels = np.stack([rng.integers(0, b, size=n) for b in bounds], axis=1).astype(np.uint8)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return np.concatenate([labels, pixels], axis=1).tobytes(), labels, pixels


def _write_cifar10(root: Path, rng, per_batch=(2, 1, 3, 1, 2), test=3):
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    train_l, train_p = [], []
    for i, n in enumerate(per_batch, 1):
        raw, lab, pix = _records(rng, n, 1, (10,))
        (d / f"data_batch_{i}.bin").write_bytes(raw)
        train_l.append(lab[:, 0])
        train_p.append(pix)
    raw, lab, pix = _records(rng, test, 1, (10,))
    (d / "test_batch.bin").write_bytes(raw)
    return d, np.concatenate(train_l), np.concatenate(train_p), lab[:, 0], pix


@given(n=st.integers(1, 5), label_bytes=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
def test_read_cifar_binary_layout(n, label_bytes, seed):
    rng = np.random.default_rng(seed)
    raw, labels, pixels = _records(rng, n, label_bytes, (10,) if label_bytes == 1 else (20, 100))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "batch.bin"
        p.write_bytes(raw)
        images, got_labels = read_cifar_binary(p, label_bytes)
    assert images.shape == (n, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(got_labels, labels)
    # the 3072 bytes are the R plane, then G, then B, each 32x32 row-major
    for k in range(n):
        for c, r, col in ((0, 0, 0), (1, 5, 7), (2, 31, 31), (0, 31, 0), (2, 0, 31)):
            assert images[k, c, r, col] == pixels[k, c * 1024 + r * 32 + col]


def test_load_cifar10_from_binary_files(tmp_path):
    rng = np.random.default_rng(0)
    _, tl, tp, vl, vp = _write_cifar10(tmp_path, rng)
    train, test, info = load_cifar10(tmp_path, dtype=torch.float64)
    assert (len(train), len(test), info.num_classes, info.train_size) == (9, 3, 10, 9)
    assert info.classes[0] == "airplane" and info.notes["format"] == "binary"
    px = tp.reshape(-1, 3, 32, 32) / 255.0
    mean = px.mean(axis=(0, 2, 3))
    std = px.std(axis=(0, 2, 3))
    np.testing.assert_allclose(info.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(info.std, std, rtol=1e-12)
    for i in (0, 4, 8):
        x, y = train[i]
        assert y.item() == tl[i] and y.dtype == torch.int64
        np.testing.assert_allclose(x.numpy(), (px[i] - mean[:, None, None]) / std[:, None, None], rtol=1e-12,
                                   atol=1e-12)
    x, y = test[2]
    assert y.item() == vl[2]
    np.testing.assert_allclose(x.numpy(), (vp[2].reshape(3, 32, 32) / 255.0 - mean[:, None, None])
                               / std[:, None, None], rtol=1e-12, atol=1e-12)
    # the directory itself also works, and load_dataset dispatches
    train2, _, _ = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-bin")
    assert torch.equal(train2.images, train.images)


def test_cifar_wrong_size_and_bad_labels(tmp_path):
    rng = np.random.default_rng(1)
    d, *_ = _write_cifar10(tmp_path, rng)
    p = d / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"data_batch_3\.bin.*not a non-zero multiple of the record length 3073"):
        load_cifar10(tmp_path)
    bad = tmp_path / "bad.bin"
    raw = bytearray(_records(rng, 2, 1, (10,))[0])
    raw[3073] = 17
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="record 1 has label byte 0 = 17"):
        read_cifar_binary(bad, 1, num_labels=(10,))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="record length"):
        read_cifar_binary(empty)


def test_cifar_missing_directory_says_what_to_download(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        load_cifar10(missing)
    msg = str(e.value)
    assert CIFAR10_BINARY_URL in msg and str(missing) in msg and "data_batch_1.bin" in msg
    with pytest.raises(FileNotFoundError) as e:
        load_cifar100(tmp_path)
    assert CIFAR100_BINARY_URL in str(e.value) and "train.bin" in str(e.value)
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="python version"):
        load_cifar10(tmp_path)
    d = tmp_path / "x" / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    (d / "data_batch_1.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="incomplete: missing data_batch_2.bin"):
        load_cifar10(tmp_path / "x")


def test_cifar100_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(2)
    d = tmp_path / "cifar-100-binary"
    d.mkdir()
    raw, labels, pixels = _records(rng, 4, 2, (20, 100))
    (d / "train.bin").write_bytes(raw)
    raw_t, labels_t, _ = _records(rng, 2, 2, (20, 100))
    (d / "test.bin").write_bytes(raw_t)
    fine_tr, fine_te, info = load_cifar100(tmp_path)
    coarse_tr, _, cinfo = load_cifar100(tmp_path, label="coarse")
    assert info.num_classes == 100 and cinfo.num_classes == 20 and cinfo.name == "cifar100-coarse"
    assert fine_tr.labels.tolist() == labels[:, 1].tolist()
    assert coarse_tr.labels.tolist() == labels[:, 0].tolist()
    assert fine_te.labels.tolist() == labels_t[:, 1].tolist()
    assert torch.equal(fine_tr.images.reshape(4, -1), torch.from_numpy(pixels))
    raw = bytearray(raw)
    raw[1] = 100  # fine label out of range
    (d / "train.bin").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="label byte 1 = 100"):
        load_cifar100(tmp_path)


# ------------------------------------------------------------------ image folders


def _png(path: Path, rgb, size=(5, 7)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(rgb)).save(path)


def test_image_folder_labels_by_sorted_class_name(tmp_path):
    colors = {"zebra": (250, 10, 10), "apple": (10, 250, 10), "mango": (10, 10, 250)}
    for cls in ("zebra", "apple", "mango"):  # created out of order
        for k in range(4):
            _png(tmp_path / cls / f"img{k}.png", colors[cls], size=(5 + k, 7))
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    ds = rd.ImageFolderDataset(tmp_path, 12)
    assert ds.classes == ("apple", "mango", "zebra") and len(ds) == 12
    x, y = ds[0]
    assert x.shape == (3, 12, 12) and y.item() == 0
    np.testing.assert_allclose(x[:, 0, 0].numpy(), np.array(colors["apple"]) / 255.0, rtol=1e-6)
    assert ds[len(ds) - 1][1].item() == 2
    train, test, info = load_image_folder(tmp_path, (8, 6), seed=0, test_fraction=0.25)
    assert (len(train), len(test), info.num_classes) == (9, 3, 3) and info.image_size == (8, 6)
    assert sorted(int(test[i][1]) for i in range(3)) == [0, 1, 2]  # stratified
    xs = torch.stack([train[i][0] for i in range(len(train))]).double()
    assert abs(xs.mean().item()) < 1e-5  # normalized with train statistics


def test_image_folder_train_test_layout_and_errors(tmp_path):
    for split in ("train", "val"):
        for cls in ("b", "a"):
            _png(tmp_path / split / cls / "0.png", (30, 60, 90) if cls == "a" else (200, 100, 0))
    train, test, info = load_image_folder(tmp_path, 4)
    assert info.notes["layout"] == "train/test folders" and info.classes == ("a", "b")
    assert (len(train), len(test)) == (2, 2) and int(test[1][1]) == 1

    with pytest.raises(FileNotFoundError, match="does not exist"):
        rd.ImageFolderDataset(tmp_path / "missing", 8)
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        rd.ImageFolderDataset(tmp_path / "flat", 8)
    (tmp_path / "flat" / "cat").mkdir()
    _png(tmp_path / "flat" / "dog" / "1.png", (1, 2, 3))
    with pytest.raises(ValueError, match=r"\['cat'\] contain no images"):
        rd.ImageFolderDataset(tmp_path / "flat", 8)
    (tmp_path / "flat" / "cat" / "broken.png").write_bytes(b"not a png")
    ds = rd.ImageFolderDataset(tmp_path / "flat", 8)
    with pytest.raises(OSError, match="broken.png"):
        ds[0]


# ------------------------------------------------------------------ loaders


def _order(loader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


def test_make_loader_reproducible_and_resumable():
    n = 23
    ds = torch.utils.data.TensorDataset(torch.zeros(n, 1), torch.arange(n))
    a, b = make_loader(ds, 5, seed=7), make_loader(ds, 5, seed=7)
    ea = [_order(a) for _ in range(3)]
    eb = [_order(b) for _ in range(3)]
    assert ea == eb and ea[0] != ea[1] and sorted(ea[0]) == list(range(n))
    assert _order(make_loader(ds, 5, seed=8)) != ea[0]
    a.sampler.set_epoch(1)
    assert _order(a) == ea[1]
    a.sampler.set_epoch(2)
    a.sampler.set_start(10)  # skip two batches of five
    assert _order(a) == ea[2][10:]
    train, test = make_loaders(ds, ds, batch_size=4, seed=0, eval_batch_size=10)
    assert _order(test) == list(range(n)) and _order(test) == list(range(n)) and test.batch_size == 10
    assert make_loaders(ds, batch_size=4)[1] is None
    assert isinstance(train.sampler, EpochShuffleSampler)
    sub = random_subset(ds, 6, seed=1)
    assert len(sub) == 6 and sub.indices == random_subset(ds, 6, seed=1).indices
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0)


def test_random_crop_flip_is_a_function_of_seed_epoch_index():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    ds = torch.utils.data.TensorDataset(x, torch.tensor([0, 1]))
    a, b = RandomCropFlip(ds, padding=2, seed=5), RandomCropFlip(ds, padding=2, seed=5)
    assert a[0][0].shape == (3, 6, 6)
    assert torch.equal(a[1][0], b[1][0])
    outs = set()
    for e in range(6):
        a.set_epoch(e)
        outs.add(a[0][0].numpy().tobytes())
    assert len(outs) > 1
    a.set_epoch(3)
    b.set_epoch(3)
    assert torch.equal(a[0][0], b[0][0])
    none = RandomCropFlip(ds, padding=0, flip=False)
    assert torch.equal(none[1][0], x[1])
