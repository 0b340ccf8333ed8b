"""`archspec list`: every spec under a folder with each of its variants, checked (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archspec.analysis.report import check
from archspec.lang.errors import SpecError

SUFFIXES = (".yaml", ".yml")


@dataclass
class Entry:
    """One row of `archspec list`: a spec or variant and its figures."""

    spec: str
    variant: str | None
    name: str
    input: list[int] | None
    output: list[int] | None
    params: int | None
    macs: int | None
    errors: list[str]  # rendered one-liners: `CODE: message`

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def find_specs(root: str | Path) -> list[Path]:
    """Spec files under `root` (or `root` itself), sorted, hidden folders skipped."""
    p = Path(root)
    if p.is_file():
        return [p]
    found = [
        f
        for f in p.rglob("*")
        if f.suffix in SUFFIXES
        and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(p).parts)
    ]
    return sorted(found)


def entries(path: str | Path) -> list[Entry]:
    """One entry for the spec's default and one per variant."""
    from archspec import variants

    try:
        names: list[str | None] = [None, *variants(path)]
    except SpecError:
        names = [None]  # unreadable: `check` reports why
    out = []
    for v in names:
        r = check(path, variant=v)
        out.append(
            Entry(
                spec=str(path),
                variant=v,
                name=r.name,
                input=list(r.input) if r.input else None,
                output=list(r.output) if r.output else None,
                params=r.params,
                macs=r.macs,
                errors=[f"{d.code}: {d.message}" for d in r.errors],
            )
        )
    return out


def catalog(root: str | Path) -> list[Entry]:
    return [e for f in find_specs(root) for e in entries(f)]
