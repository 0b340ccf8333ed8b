"""Data sets for the runner: uint8 image tensors, fed to the model in batches on the device.

Every source (the embedded MNIST split, torchvision data sets, a Keras-style ``.npz``, an
image folder) is read once into ``uint8`` tensors of shape N,C,H,W. ``Feed`` keeps a split
resident on the device when it fits and otherwise streams it through a ``DataLoader`` with
pinned memory; ``Adapter`` turns a uint8 batch into the model's input (channels, size,
normalisation) with a few batched tensor ops, never per image in Python.
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

EMBEDDED = "mnist-mini"
TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
NAMES = (EMBEDDED, *TORCHVISION)
MAX_CLASSES = 1 << 20  # as a spec's num_classes (lang/spec.py) and --num-classes
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
DEFAULT_ROOT = Path(os.environ.get("ARCHSPEC_DATA_ROOT", "~/.cache/archspec/data")).expanduser()


class DataError(ValueError):
    """A data set that is missing, malformed or does not fit the spec."""


@dataclass
class Split:
    """One split held in host memory: ``x`` uint8 N,C,H,W and ``y`` int64 N, or, for an
    image folder too large to decode up front, ``files`` to decode while streaming."""

    y: torch.Tensor
    x: torch.Tensor | None = None
    files: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    """A loaded data set: its train and test splits, classes and image shape."""

    name: str
    train: Split
    test: Split
    num_classes: int
    shape: tuple[int, int, int]  # C,H,W of the stored images


# ---------------------------------------------------------------- loading


def load(
    source: str,
    root: str | Path | None = None,
    download: bool = False,
    input_shape: tuple[int, int, int] | None = None,
) -> Data:
    """Load ``source``: a name in ``NAMES``, a ``.npz`` file or an image-folder directory.

    ``input_shape`` (C,H,W) is only used by image folders, whose images differ in size and
    are decoded straight to the model's size."""
    if source == EMBEDDED:
        return _embedded()
    if source in TORCHVISION:
        return _torchvision(source, Path(root).expanduser() if root else DEFAULT_ROOT, download)
    path = Path(source).expanduser()
    try:
        if path.suffix == ".npz" and path.is_file():
            return _npz(path)
        if path.is_dir():
            return _folder(path, input_shape or (3, 224, 224))
        exists = path.exists()
    except OSError as e:  # a name too long, a folder that cannot be listed
        raise DataError(f"{source}: cannot read ({e.strerror or e})") from None
    if exists:
        raise DataError(f"{source}: expected a .npz file or an image-folder directory")
    raise DataError(
        f"unknown data set {source!r}: use one of {', '.join(NAMES)}, "
        "a .npz file or an image folder with train/ and val/"
    )


def _read_idx(raw: bytes, what: str) -> np.ndarray:
    # IDX: 2 zero bytes, dtype code (0x08 = uint8), rank, then rank big-endian int32 sizes.
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 8:
        raise DataError(f"{what}: not an IDX uint8 file")
    rank = raw[3]
    dims = np.frombuffer(raw, ">i4", count=rank, offset=4).astype(int)
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{what}: truncated IDX file")
    return body.reshape(dims)


def _embedded() -> Data:
    """The real MNIST test set shipped in the package, split 8,000 / 2,000 by index % 5."""
    pkg = resources.files("archspec") / "data" / "mnist-t10k"
    images = _read_idx(gzip.decompress((pkg / "t10k-images-idx3-ubyte.gz").read_bytes()), "images")
    labels = _read_idx(gzip.decompress((pkg / "t10k-labels-idx1-ubyte.gz").read_bytes()), "labels")
    test = np.arange(len(labels)) % 5 == 0
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    mask = torch.from_numpy(test)
    return Data(EMBEDDED, Split(y[~mask], x[~mask]), Split(y[mask], x[mask]), 10, (1, 28, 28))


def _torchvision(name: str, root: Path, download: bool) -> Data:
    import torchvision.datasets as tvd  # type: ignore[import-untyped]

    cls = getattr(tvd, TORCHVISION[name])
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted ..."
            hint = "" if download else "; pass --download to fetch it (needs network)"
            raise DataError(f"{name} not found under {root}{hint} ({e})") from None
        except OSError as e:
            raise DataError(f"could not fetch {name} into {root}: {e}") from None
        x = torch.as_tensor(np.asarray(ds.data), dtype=torch.uint8)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
        splits.append(Split(torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64), x))
    train_split, test_split = splits
    return Data(name, train_split, test_split, 10, _shape(x))


def _images_to_nchw(a: np.ndarray, what: str) -> torch.Tensor:
    """Stored images as uint8 N,C,H,W. Integer pixels must lie in 0..255 and float pixels in
    [0, 1] or [0, 255] (scaled by 255 when none is above 1): anything else — NaN, infinity,
    negative or larger values (normalised or 16-bit images) — is refused, never clipped or
    wrapped into wrong pixels."""
    if a.dtype.kind not in "uif":
        raise DataError(f"{what}: images must be numeric, got {a.dtype}")
    if a.size:
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(np.argwhere(~np.isfinite(a.reshape(len(a), -1)))[0][0])
            raise DataError(f"{what}: image {bad} holds NaN or infinite pixel values")
        lo, hi = a.min(), a.max()
        if lo < 0 or hi > 255:
            raise DataError(
                f"{what}: pixel values run from {lo} to {hi}; archspec reads 8-bit images "
                "(integers 0..255, or floats in [0, 1] or [0, 255]): store the images "
                "unnormalised, scaled to that range"
            )
    if a.ndim in (3, 4) and 0 in a.shape[1:]:
        raise DataError(f"{what}: images of shape {a.shape[1:]} hold no pixels")
    if a.dtype.kind == "f":  # float images in [0, 1] (or [0, 255])
        a = np.rint(a * (255.0 if a.max(initial=0) <= 1.0 else 1.0))
    a = a.astype(np.uint8)
    if a.ndim == 3:
        return torch.from_numpy(a).unsqueeze(1)
    if a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # Keras: N,H,W,C
    if a.ndim == 4 and a.shape[1] in (1, 3):
        return torch.from_numpy(a)
    raise DataError(f"{what}: expected images N,H,W or N,H,W,C or N,C,H,W, got {a.shape}")


def _labels(a: np.ndarray, n: int, what: str) -> torch.Tensor:
    if a.ndim == 2 and a.shape[1] > 1:  # one-hot
        a = a.argmax(1)
    a = a.reshape(-1)
    if a.dtype.kind not in "ui" or len(a) != n or (n and a.min() < 0):
        raise DataError(
            f"{what}: expected {n} non-negative integer labels, got {a.shape} {a.dtype}"
        )
    return torch.from_numpy(a.astype(np.int64))


def _npz(path: Path) -> Data:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):  # a lone .npy array saved under an .npz name
                raise DataError(f"{path}: not an .npz archive (a single array)")
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise DataError(
                    f"{path}: missing arrays {sorted(missing)} (need x_train, "
                    "y_train, x_test, y_test)"
                )
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if path.stat().st_size == 0:
            reason = "empty file (0 bytes)"
        raise DataError(f"{path}: not a readable .npz file ({reason})") from None
    splits = []
    for part in ("train", "test"):
        x = _images_to_nchw(arrays[f"x_{part}"], f"{path}: x_{part}")
        splits.append(Split(_labels(arrays[f"y_{part}"], len(x), f"{path}: y_{part}"), x))
    train, test = splits
    assert train.x is not None and test.x is not None
    if len(train) == 0:
        raise DataError(f"{path}: x_train is empty; training needs images")
    if train.x.shape[1:] != test.x.shape[1:] and len(test):
        raise DataError(f"{path}: x_train and x_test images differ in shape")
    classes = int(torch.cat([train.y, test.y]).max()) + 1
    if classes > MAX_CLASSES:
        raise DataError(
            f"{path}: labels run up to {classes - 1}; archspec trains at most {MAX_CLASSES:,} "
            "classes (labels 0..N-1)"
        )
    return Data(path.stem, train, test, classes, _shape(train.x))


def _shape(x: torch.Tensor) -> tuple[int, int, int]:
    c, h, w = x.shape[1:]
    return (c, h, w)


def _folder(path: Path, shape: tuple[int, int, int]) -> Data:
    """``path/train/<class>/*.png`` and ``path/val/<class>/*.png`` (``test/`` also accepted)."""
    val = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    if not (path / "train").is_dir() or val is None:
        raise DataError(f"{path}: an image folder needs train/ and val/ subdirectories")
    classes = sorted(d.name for d in (path / "train").iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{path}/train: no class subdirectories")
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for part in (path / "train", val):
        files, labels = [], []
        for d in sorted(part.iterdir()):
            if not d.is_dir():
                continue
            if d.name not in index:
                raise DataError(f"{d}: class {d.name!r} is not in train/")
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                    labels.append(index[d.name])
        if not files:
            raise DataError(f"{part}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        splits.append(Split(torch.tensor(labels, dtype=torch.int64), files=files))
    return Data(path.name, splits[0], splits[1], len(classes), shape)


def decode(files: list[Path], shape: tuple[int, int, int]) -> torch.Tensor:
    """Decode image files to uint8 N,C,H,W at ``shape``. Files differ in size, so this is the
    one place that works per image (in DataLoader workers when streaming)."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if shape[0] == 1 else "RGB"
    out = torch.empty((len(files), *shape), dtype=torch.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                img = im.convert(mode)
                if img.size != (shape[2], shape[1]):
                    img = img.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{f}: cannot decode image ({e})") from None
        except Image.DecompressionBombError as e:  # a tiny file that decodes to gigabytes
            raise DataError(f"{f}: refused, too many pixels to decode safely ({e})") from None
        a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        out[i] = a.unsqueeze(0) if a.ndim == 2 else a.permute(2, 0, 1)
    return out


def materialise(data: Data, budget_bytes: int) -> None:
    """Decode an image folder's files up front when the decoded images fit ``budget_bytes``."""
    for split in (data.train, data.test):
        if split.files is not None and len(split) * math.prod(data.shape) <= budget_bytes:
            split.x, split.files = decode(split.files, data.shape), None


# ---------------------------------------------------------------- feeding


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of one epoch, a pure function of (seed, epoch), so a resumed run replays
    it exactly and CPU and CUDA runs see the same batches."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (1 << 64))
    return torch.randperm(n, generator=g)


class _Rows(torch.utils.data.Dataset):
    """Whole batches of a host split, for streaming (``__getitem__`` takes an index tensor)."""

    def __init__(self, split: Split, shape: tuple[int, int, int]) -> None:
        self.split, self.shape = split, shape

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.split.y[idx]
        if self.split.x is not None:
            return self.split.x[idx], y
        assert self.split.files is not None
        return decode([self.split.files[i] for i in idx.tolist()], self.shape), y


class Feed:
    """Batches of one split as uint8 tensors on ``device``.

    Resident (the split fits in ``budget_bytes``): the whole split is moved to the device
    once and each batch is one index op. Streamed: a DataLoader gathers or decodes batches
    in workers into pinned memory and copies them without blocking."""

    def __init__(
        self,
        split: Split,
        shape: tuple[int, int, int],
        device: torch.device,
        budget_bytes: int,
        workers: int = 0,
    ) -> None:
        self.split, self.shape, self.device, self.workers = split, shape, device, workers
        self.resident = split.x is not None and split.x.numel() <= budget_bytes
        if self.resident:
            assert split.x is not None
            self.x = split.x.to(device)
            self.y = split.y.to(device)

    def __len__(self) -> int:
        return len(self.split)

    def batches(
        self, order: torch.Tensor, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start`` to ``stop`` (exclusive) of ``order`` cut into ``batch_size``
        pieces; with ``stop`` a short last batch is dropped unless it is the only one."""
        n = len(order)
        end = n if stop is None else min(n, stop * batch_size)
        if stop is not None and n >= batch_size:
            end -= end % batch_size
        bounds = range(start * batch_size, end, batch_size)
        if self.resident:
            order = order.to(self.device)
            for i in bounds:
                idx = order[i : i + batch_size]
                yield self.x[idx], self.y[idx]
            return
        pin = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            _Rows(self.split, self.shape),
            sampler=[order[i : i + batch_size] for i in bounds],
            batch_size=None,
            num_workers=self.workers,
            pin_memory=pin,
            persistent_workers=False,
        )
        try:
            for x, y in loader:
                yield x.to(self.device, non_blocking=pin), y.to(self.device, non_blocking=pin)
        except DataError as e:  # from a worker, the message carries the worker's traceback
            last = str(e).strip().splitlines()[-1]
            raise DataError(last.split("DataError: ", 1)[-1]) from None


# ---------------------------------------------------------------- adapting

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


class Adapter:
    """uint8 N,C,H,W batches (stored shape) to float model input (target C,H,W).

    Grey↔RGB conversion, bilinear resize (antialiased when shrinking) and per-channel
    normalisation, all batched on the batch's device."""

    def __init__(
        self,
        source: tuple[int, int, int],
        target: tuple[int, int, int],
        mean: list[float],
        std: list[float],
        channels_last: bool = False,
    ) -> None:
        if source[0] != target[0] and {source[0], target[0]} != {1, 3}:
            raise DataError(
                f"the data has {source[0]}-channel images but the spec expects {target[0]} "
                "channels; only grey↔RGB is converted"
            )
        self.source, self.target = source, target
        self.mean, self.std = list(mean), list(std)
        self.channels_last = channels_last
        self._consts: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        # Made once per device: a fresh CUDA tensor from a list each step is a blocking copy.
        if device not in self._consts:
            self._consts[device] = tuple(
                torch.tensor(v, device=device).view(1, -1, 1, 1)
                for v in (_LUMA, self.mean, self.std)
            )
        return self._consts[device]

    def channels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 → float in [0, 1] with the target's channel count."""
        x = x.float().div_(255)
        if x.shape[1] == 3 and self.target[0] == 1:
            x = (x * self._on(x.device)[0]).sum(1, keepdim=True)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channels(x)
        size = self.target[1:]
        if tuple(x.shape[2:]) != size:
            shrink = x.shape[2] > size[0] or x.shape[3] > size[1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        if x.shape[1] == 1 and self.target[0] == 3:
            x = x.expand(-1, 3, -1, -1)  # after the resize: one channel is cheaper to resize
        _, mean, std = self._on(x.device)
        x = (x - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def channel_stats(
    x: torch.Tensor, target_channels: int, sample: int = 4096
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (a strided sample of) uint8 images, in the target's
    channels — the inputs are normalised with the training data's own statistics."""
    if len(x) == 0:
        return [0.5] * target_channels, [0.5] * target_channels
    x = x[:: max(1, len(x) // sample)]
    c, h, w = _shape(x)
    ad = Adapter((c, h, w), (target_channels, h, w), [0.0], [1.0])
    v = ad.channels(x).double()
    mean = v.mean(dim=(0, 2, 3))
    std = v.std(dim=(0, 2, 3)).clamp_min(1e-3)
    if v.shape[1] == 1 and target_channels == 3:
        mean, std = mean.expand(3), std.expand(3)
    return [float(m) for m in mean], [float(s) for s in std]
