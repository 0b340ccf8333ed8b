"""`archspec.check`: read, lower and infer a spec; the Report that `check` prints."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archspec.ir import Network, Node
from archspec.lang.errors import Collector, Diagnostic, Loc
from archspec.lang.source import Source, SourceError, read_source, source_from_bytes
from archspec.lower import lower
from archspec.plugins import entry_point_problems, load_entry_points


@dataclass
class Report:
    """The result of a check: the lowered network, or the errors, and the source to show them."""

    spec: str
    variant: str | None
    errors: list[Diagnostic] = field(default_factory=list)
    network: Network | None = None
    source_lines: list[str] = field(default_factory=list)
    requested_input: tuple[int, ...] | None = None
    memory: Any = None  # a memory.MemoryReport when a batch size was given

    @property
    def ok(self) -> bool:
        return not self.errors and self.network is not None

    @property
    def name(self) -> str:
        return self.network.name if self.network else Path(self.spec).stem

    @property
    def input(self) -> tuple[int, ...] | None:
        return self.network.input if self.network else self.requested_input

    @property
    def num_classes(self) -> int | None:
        return self.network.num_classes if self.network else None

    @property
    def resolved(self) -> Any:
        return self.network.resolved if self.network else None

    @property
    def spec_hash(self) -> str:
        import hashlib  # here: a plain `check` (a fresh process) never asks for the hash
        import json

        blob = json.dumps([self.resolved, self.variant], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def layers(self) -> list[Node]:
        if self.network is None:
            return []
        return [n for n in self.network.layers if n.inferred is not None]

    @property
    def output(self) -> tuple[int, ...] | None:
        return self.network.root.out_shape if self.ok and self.network else None

    @property
    def outputs(self) -> dict[str, tuple[int, ...]] | None:
        """`outputs:` (or build's `outputs=`): each output's shape by its key, in order."""
        if not self.ok or self.network is None or not self.network.outputs:
            return None
        named = self.network.named
        return {k: named[p].out_shape for k, p in self.network.outputs}  # type: ignore[misc]

    @property
    def params(self) -> int | None:
        if not self.ok:
            return None
        return sum(n.inferred.params for n in self.layers if n.inferred is not None)

    @property
    def macs(self) -> int | None:
        """Inference MACs: auxiliary heads (training only) are listed per layer but not counted."""
        if not self.ok or self.network is None:
            return None
        aux = {id(n) for n in self.network.aux_layers}
        return sum(
            n.inferred.macs for n in self.layers if n.inferred is not None and id(n) not in aux
        )

    def layer_rows(self) -> list[dict]:
        rows = []
        saved = self.memory.saved_by_path if self.memory is not None else None
        for n in self.layers:
            row = layer_row(n)
            if saved is not None:
                row["saved_bytes"] = saved.get(n.path, 0)
            rows.append(row)
        return rows

    def to_json(self) -> dict:
        return {
            "spec": self.spec,
            "name": self.name,
            "variant": self.variant,
            "input": list(self.input) if self.input else None,
            "output": list(self.output) if self.output else None,
            **(
                {"outputs": {k: list(v) for k, v in self.outputs.items()}}
                if self.outputs is not None
                else {}
            ),
            "params": self.params,
            "macs": self.macs,
            "layers": self.layer_rows(),
            "errors": [d.to_json() for d in self.errors],
            "memory": self.memory.to_json() if self.memory is not None else None,
        }

    def render_errors(self) -> str:
        return "\n\n".join(d.render(self.source_lines) for d in self.errors)


def layer_row(n: Node) -> dict:
    """One row of the per-layer table (`layers` in the JSON) for a layer with a known shape."""
    assert n.inferred is not None
    return {
        "path": n.path,
        "op": n.op,
        "output": list(n.inferred.out),
        "params": n.inferred.params,
        "macs": n.inferred.macs,
        "receptive_field": list(n.rf) if n.rf else None,
    }


def check(
    path: str | Path,
    variant: str | None = None,
    input_shape: tuple[int, ...] | list[int] | None = None,
    num_classes: int | None = None,
    outputs: list[str] | dict[str, str] | None = None,
) -> Report:
    """Check a spec statically (never imports torch). Errors are in `report.errors`; an
    argument of the wrong type is a TypeError. `outputs` replaces the spec's `outputs:` (and
    cuts what comes after the last one)."""
    _check_arguments(path, variant, input_shape, num_classes)
    read = lambda: read_source(path)
    return check_source(str(path), read, variant, input_shape, num_classes, outputs=outputs)


def check_text(
    text: str,
    path: str | Path = "<spec>",
    variant: str | None = None,
    input_shape: tuple[int, ...] | list[int] | None = None,
    num_classes: int | None = None,
) -> Report:
    """Check a spec given as text (an editor's buffer) exactly as `check` checks a file holding
    it; `path` only names the spec in the report and its errors."""
    data = text.encode("utf-8", "surrogatepass")
    return check_source(
        str(path), lambda: source_from_bytes(data, str(path)), variant, input_shape, num_classes
    )


def check_source(
    name: str,
    read: Callable[[], Source],
    variant: str | None = None,
    input_shape: tuple[int, ...] | list[int] | None = None,
    num_classes: int | None = None,
    lower: Callable[..., Network | None] = lower,
    outputs: list[str] | dict[str, str] | None = None,
) -> Report:
    """The check itself: `read` gives the located source (raising SourceError or OSError),
    `lower` walks it. `check` and `check_text` use the plain ones; the language server passes
    cached ones that give the same result."""
    shape = tuple(input_shape) if input_shape is not None else None
    report = Report(name, variant, requested_input=shape)
    out = Collector()
    try:
        src = read()
    except SourceError as e:
        out.problem(e.loc, e.problem)
        report.errors = out.items
        return report
    except OSError as e:
        out.add(Loc(name), "E-IO", f"cannot read spec: {e.strerror or e}", None)
        report.errors = out.items
        return report
    report.source_lines = src.lines
    try:
        extra = {"outputs": outputs} if outputs is not None else {}
        report.network = lower(src, variant, shape, num_classes, out, **extra)
        if any(d.code == "E-UNKNOWN-OP" for d in out.items):
            # Maybe an installed plugin's op: entry points load only now, so a spec of known
            # ops never pays for scanning the installed packages.
            changed = load_entry_points()
            again = Collector()  # a failing entry point first: it may be why the op is unknown
            for problem in entry_point_problems():
                again.problem(getattr(src.root, "loc", None) or Loc(name), problem)
            if changed:
                report.network = lower(src, variant, shape, num_classes, again, **extra)
            else:
                again.items += out.items
            out = again
    except RecursionError:
        out.add(Loc(name), "E-TOO-DEEP", "the spec nests too deeply to expand", None)
    report.errors = out.items
    return report


def _check_arguments(
    path: object, variant: object, input_shape: object, num_classes: object
) -> None:
    """The Python API's arguments, checked up front: a wrong type would otherwise fail deep
    inside (difflib, pydantic) with a message about neither the argument nor the value."""

    def wrong(name: str, want: str, value: object) -> TypeError:
        return TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r:.60}")

    if not isinstance(path, (str, os.PathLike)):
        raise wrong("path", "a str or a path", path)
    if variant is not None and not isinstance(variant, str):
        raise wrong("variant", "a str or None", variant)
    if num_classes is not None and not _is_int(num_classes):
        raise wrong("num_classes", "an int or None", num_classes)
    if input_shape is not None and (
        isinstance(input_shape, (str, bytes))
        or not isinstance(input_shape, (tuple, list))
        or not all(_is_int(d) for d in input_shape)
    ):
        raise wrong("input_shape", "a tuple or list of ints (C, H, W)", input_shape)


def _is_int(x: object) -> bool:
    """An integer (numpy's too), not a bool."""
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    import numbers  # numpy's integers register here; an int never gets this far

    return isinstance(x, numbers.Integral)
