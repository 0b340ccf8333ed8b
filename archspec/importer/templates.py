"""Templates and repeats (filled in below)."""

from __future__ import annotations


def templatize(doc: dict) -> None:
    return None
