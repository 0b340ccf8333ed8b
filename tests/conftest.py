"""Shared pytest options and fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        default=False,
        help="run the differential fuzzer for 10,000 specs instead of the CI budget",
    )


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    """96 train / 32 test 8x8 images; the class is which third of the image is bright."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 60, (n, 8, 8))
        for i, c in enumerate(y):
            x[i, :, c * 3 : c * 3 + 2] += 150
        return x.astype(np.uint8), y.astype(np.uint8)

    (xtr, ytr), (xte, yte) = make(96), make(32)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path
