"""Comparing located trees (archspec.lang.source's LMap/LSeq) in tests."""

from __future__ import annotations

import math


def same_tree(a, b, path="$"):
    """Equal values, types and every recorded position."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for attr in ("loc", "key_locs", "val_locs"):
            assert getattr(a, attr, None) == getattr(b, attr, None), (path, attr)
        for k in a:
            same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for attr in ("loc", "item_locs"):
            assert getattr(a, attr, None) == getattr(b, attr, None), (path, attr)
        for i, (x, y) in enumerate(zip(a, b)):
            same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b or math.isnan(a) and math.isnan(b), path
