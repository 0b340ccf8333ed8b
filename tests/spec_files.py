"""Writing a test's spec text to a file: the one helper the test files share."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write(folder: Path, text: str, name: str = "net.yaml") -> Path:
    """`text` (dedented, so a test may indent it) as `folder/name`."""
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path
