"""Data sets: the embedded split, npz and image-folder readers, feeding and adapting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from archspec.run import data as D
from archspec.run.data import Adapter, DataError, Feed

SHARED_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-10k.npz"


def test_embedded_split_is_index_mod_5() -> None:
    d = D.load("mnist-mini")
    assert (len(d.train), len(d.test), d.num_classes, d.shape) == (8000, 2000, 10, (1, 28, 28))
    assert d.train.x.dtype == torch.uint8 and d.train.y.dtype == torch.int64
    assert torch.bincount(d.test.y, minlength=10).min() > 150  # every digit is there
    if SHARED_NPZ.exists():  # the same split as the shared Keras-style file
        z = np.load(SHARED_NPZ)
        assert np.array_equal(z["x_test"], d.test.x[:, 0].numpy())
        assert np.array_equal(z["y_train"], d.train.y.numpy())


def _npz(path: Path, x_train: np.ndarray, y_train: np.ndarray, n_test: int = 4) -> Path:
    np.savez(
        path, x_train=x_train, y_train=y_train, x_test=x_train[:n_test], y_test=y_train[:n_test]
    )
    return path


@pytest.mark.parametrize(
    "shape, stored",
    [
        ((6, 5, 7), (1, 5, 7)),
        ((6, 5, 7, 3), (3, 5, 7)),
        ((6, 3, 5, 7), (3, 5, 7)),
        ((6, 5, 7, 1), (1, 5, 7)),
    ],
)
def test_npz_layouts(tmp_path: Path, shape: tuple, stored: tuple) -> None:
    x = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    d = D.load(str(_npz(tmp_path / "d.npz", x, np.arange(6) % 4)))
    assert d.shape == stored and d.num_classes == 4 and len(d.train) == 6
    assert d.train.x.shape == (6, *stored)


def test_npz_float_images_and_one_hot_labels(tmp_path: Path) -> None:
    x = np.full((4, 3, 3), 0.5, dtype=np.float32)
    y = np.eye(3)[[0, 1, 2, 1]]
    d = D.load(str(_npz(tmp_path / "d.npz", x, y, 2)))
    assert d.train.x.dtype == torch.uint8 and int(d.train.x.max()) == 128
    assert d.train.y.tolist() == [0, 1, 2, 1] and d.num_classes == 3


def test_npz_errors_are_clear(tmp_path: Path) -> None:
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 3, 3)), y_train=np.zeros(2))
    with pytest.raises(DataError, match="missing arrays.*x_test"):
        D.load(str(tmp_path / "partial.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        D.load(str(tmp_path / "bad.npz"))
    with pytest.raises(DataError, match="unknown data set"):
        D.load("imagenet-22k")


def test_torchvision_data_absent_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found under.*--download"):
        D.load("mnist", root=tmp_path)


def _folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", 3), ("val", 2)):
        for c, size in (("cat", (20, 30)), ("dog", (12, 12))):
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / part / c / f"{i}.png")
    return root


def test_image_folder_decodes_to_spec_size(tmp_path: Path) -> None:
    d = D.load(str(_folder(tmp_path / "imgs")), input_shape=(1, 16, 16))
    assert d.num_classes == 2 and d.shape == (1, 16, 16)
    assert len(d.train) == 6 and d.train.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.train.files is not None and d.train.x is None  # decoded lazily
    D.materialise(d, budget_bytes=1 << 20)
    assert d.train.x is not None and d.train.x.shape == (6, 1, 16, 16)
    assert d.test.x is not None and d.test.x.shape == (4, 1, 16, 16)


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "f" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="train/ and val/"):
        D.load(str(tmp_path / "f"))
    (tmp_path / "f" / "val" / "b").mkdir(parents=True)
    with pytest.raises(DataError, match="train: no images"):
        D.load(str(tmp_path / "f"))
    (tmp_path / "f" / "train" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="class 'b' is not in train/"):
        D.load(str(tmp_path / "f"))
    (tmp_path / "f" / "val" / "b").rmdir()
    (tmp_path / "f" / "val" / "a").mkdir()
    (tmp_path / "f" / "val" / "a" / "y.png").write_bytes(b"not a png")
    d = D.load(str(tmp_path / "f"), input_shape=(1, 4, 4))
    with pytest.raises(DataError, match="x.png: cannot decode image"):
        D.materialise(d, budget_bytes=1 << 20)


def test_streamed_and_resident_feeds_give_the_same_batches(tmp_path: Path) -> None:
    d = D.load(str(_folder(tmp_path / "imgs")), input_shape=(3, 8, 8))
    streamed = Feed(d.train, d.shape, torch.device("cpu"), budget_bytes=0)
    assert not streamed.resident
    D.materialise(d, budget_bytes=1 << 20)
    resident = Feed(d.train, d.shape, torch.device("cpu"), budget_bytes=1 << 20)
    assert resident.resident
    order = D.epoch_order(len(d.train), seed=1, epoch=0)
    a = list(streamed.batches(order, 4))
    b = list(resident.batches(order, 4))
    assert [len(y) for _, y in a] == [4, 2]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_drop_short_last_batch_only_with_stop() -> None:
    split = D.Split(torch.arange(10), torch.zeros(10, 1, 2, 2, dtype=torch.uint8))
    feed = Feed(split, (1, 2, 2), torch.device("cpu"), budget_bytes=1 << 10)
    order = torch.arange(10)
    assert [len(y) for _, y in feed.batches(order, 4)] == [4, 4, 2]
    assert [len(y) for _, y in feed.batches(order, 4, stop=10 // 4)] == [4, 4]
    assert [y.tolist() for _, y in feed.batches(order, 4, start=1, stop=2)] == [[4, 5, 6, 7]]
    assert [len(y) for _, y in feed.batches(order, 16, stop=1)] == [10]  # fewer than a batch


def test_epoch_order_is_a_pure_function_of_seed_and_epoch() -> None:
    assert torch.equal(D.epoch_order(50, 3, 2), D.epoch_order(50, 3, 2))
    assert not torch.equal(D.epoch_order(50, 3, 2), D.epoch_order(50, 3, 1))
    assert sorted(D.epoch_order(50, 0, 0).tolist()) == list(range(50))


def test_adapter_converts_channels_resizes_and_normalises() -> None:
    grey = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    mean, std = D.channel_stats(grey, 3)
    assert len(mean) == 3 and mean[0] == mean[2]
    x = Adapter((1, 28, 28), (3, 32, 32), mean, std)(grey)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 2])
    assert abs(float(x.mean())) < 0.1

    rgb = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    rgb[:, 1] = 255  # pure green → luma 0.587
    y = Adapter((3, 4, 4), (1, 2, 2), [0.0], [1.0])(rgb)
    assert y.shape == (2, 1, 2, 2) and torch.allclose(y, torch.full_like(y, 0.587))

    with pytest.raises(DataError, match="2-channel"):
        Adapter((2, 4, 4), (3, 4, 4), [0.0] * 3, [1.0] * 3)
