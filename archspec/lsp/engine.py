"""Re-checking a spec on every edit, fast: the same check as `archspec check`, with two caches.

- **Pieces of YAML.** The text is cut at its top-level keys, and a top-level key holding a block
  mapping (`templates:`, `stages:`, `variants:`) at each of its own keys. Each piece is parsed
  alone by `parse_text`, padded with blank lines so every position is the file's, and kept by
  its text: an edit re-parses one piece. A piece starts where the full parse expects the next key
  of a block mapping at that indentation, so parsing it alone gives the nodes the full parse
  gives; whenever that argument could fail (a piece that is not one plain key, a parse error, a
  duplicate key across pieces, directives or documents, other line breaks than `\\n`, anything
  near the node bounds), the whole text is parsed the ordinary way and that answer is taken.
- **Stages.** A stage is lowered again only if something it reads changed: its own subtree
  (the very objects the piece cache keeps), the shape and receptive field reaching it, the
  spec's parameters, templates, defaults, width, and the op and combinator registries. A reused
  stage replays the errors it reported, in order, into the collector, so deduplication and the
  error limit act as in a fresh check.

`tests/test_lsp_engine.py` holds the cached check to a fresh `check_text`, JSON for JSON, over
every shipped spec and variant and over random edits of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from archspec.analysis.report import Report, check_source
from archspec.ir import Network, Node
from archspec.lang.errors import Collector, Loc
from archspec.lang.source import (
    MAX_NODES,
    MAX_YAML_NODES,
    LMap,
    Source,
    SourceError,
    _check_flow_depth,
    parse_text,
    source_from_bytes,
)
from archspec.lower import COMBINATORS, Lowerer, lower
from archspec.ops import OPS

_KEY_START = re.compile(r"[A-Za-z0-9_\"']")  # a line that starts a key of a block mapping
_PARENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*:[ \t]*(#.*)?")  # `stages:` alone on its line
_OTHER_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_BOUND = min(MAX_YAML_NODES, MAX_NODES)


@dataclass
class Use:
    """A template use: where its name is written, and the node it lowered to."""

    loc: Loc
    template: str
    node: Node


@dataclass
class Analysis:
    """One check of one text: the Report `check` gives, the located tree it read (None when the
    text does not parse) and every template use."""

    report: Report
    source: Source | None
    uses: list[Use] = field(default_factory=list)


class Engine:
    """Checks successive versions of specs, reusing what an edit left unchanged. Not
    thread-safe: the server runs one check at a time."""

    def __init__(self) -> None:
        self.pieces: dict[tuple[str, str], tuple[LMap, int]] = {}
        self.maps: dict[tuple[int, ...], tuple[LMap, list[LMap]]] = {}
        self.stages: dict[tuple, _Stage] = {}

    def check(
        self,
        text: str,
        path: str,
        variant: str | None = None,
        input_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
    ) -> Analysis:
        for cache, most in ((self.pieces, 4096), (self.maps, 1024), (self.stages, 256)):
            if len(cache) > most:  # a stage holds its nodes: a few hundred KB for resnet152's
                cache.clear()
        data = text.encode("utf-8", "surrogatepass")
        seen: list[Source] = []

        def read() -> Source:
            src = source_from_bytes(data, path, parse=self.parse)
            seen.append(src)
            return src

        uses: list[Use] = []
        lowering = partial(_lower_cached, memo=self.stages, uses=uses)
        report = check_source(path, read, variant, input_shape, num_classes, lower=lowering)
        return Analysis(report, seen[0] if seen else None, uses)

    # ------------------------------------------------------------------ pieces

    def parse(self, text: str, name: str) -> Source:
        """`parse_text`, from cached pieces when the text allows it."""
        try:
            root = self._from_pieces(text, name)
        except SourceError:
            raise  # the pre-scan of the whole text, which parse_text makes first too
        except Exception:  # noqa: BLE001  # whatever the cut cannot handle: parse as usual
            root = None
        if root is None:
            return parse_text(text, name)
        return Source(name, text, root=root, lines=text.splitlines())

    def _from_pieces(self, text: str, name: str) -> LMap | None:
        if _OTHER_BREAKS.search(text):
            return None
        lines = text.split("\n")
        tops = _starts(lines, 0, 0, len(lines))
        if not tops:
            return None
        _check_flow_depth(text, name)  # raises as parse_text would, before any piece is read
        root, total = LMap(), 0
        root.key_locs, root.val_locs = {}, {}
        for n, (start, end) in enumerate(tops):
            got = self._top(lines, start if n else 0, end, name)
            if got is None:
                return None
            piece, size = got
            total += size
            if total > _BOUND:
                return None
            (key,) = piece
            if key in root:
                return None  # a duplicate key: the full parse says where
            if n == 0:
                root.loc = piece.loc
            root[key] = piece[key]
            root.key_locs[key] = piece.key_locs[key]
            root.val_locs[key] = piece.val_locs[key]
        return root

    def _top(self, lines: list[str], start: int, end: int, name: str) -> tuple[LMap, int] | None:
        """One top-level key: whole, or cut at the keys of the block mapping it holds."""
        head = start
        while not _KEY_START.match(lines[head]):
            head += 1  # the comments above the first key
        subs = _block(lines, head, end)
        if subs is None or len(subs) < 2:
            return self._piece(lines, [(start, end)], name)
        parts, total = [], 0
        for s, e in subs:
            got = self._piece(lines, [(head, head + 1), (s, e)], name)
            if got is None:
                return None
            parts.append(got[0])
            total += got[1]
        key = next(iter(parts[0]))
        inner = self._join(key, parts)
        if inner is None:
            return None
        piece = LMap({key: inner})
        piece.loc = parts[0].loc
        piece.key_locs = {key: parts[0].key_locs[key]}
        piece.val_locs = {key: replace(parts[0].val_locs[key], width=1)}  # spans several lines
        return piece, total

    def _join(self, key: Any, parts: list[LMap]) -> LMap | None:
        """The block mapping the pieces of one top-level key make, the same object while they
        are (the stage cache knows templates by identity)."""
        ident = tuple(id(p) for p in parts)
        hit = self.maps.get(ident)
        if hit is not None:
            return hit[0]
        inner = LMap()
        for n, part in enumerate(parts):
            if list(part) != [key] or not isinstance(part[key], LMap) or len(part[key]) != 1:
                return None
            sub = part[key]
            (k,) = sub
            if k in inner:
                return None
            if n == 0:
                inner.loc = sub.loc
                inner.key_locs, inner.val_locs = {}, {}
            inner[k] = sub[k]
            inner.key_locs[k] = sub.key_locs[k]
            inner.val_locs[k] = sub.val_locs[k]
        self.maps[ident] = (inner, parts)  # the parts stay alive, so their ids stay theirs
        return inner

    def _piece(self, lines: list[str], spans: list[tuple[int, int]], name: str) -> Any:
        """Parse the given line spans alone, every other line blank: (the mapping, its size)."""
        last = spans[-1][1]
        buf = [""] * last
        for s, e in spans:
            buf[s:e] = lines[s:e]
        # A piece ends as it does in the file: with a line break unless the file ends there.
        text = "\n".join(buf) + ("\n" if last < len(lines) else "")
        hit = self.pieces.get((name, text))
        if hit is not None:
            return hit
        try:
            root = parse_text(text, name).root
        except SourceError:
            return None
        if not isinstance(root, LMap) or len(root) != 1:
            return None
        size = _size(root, _BOUND + 1)
        got = (root, size)
        self.pieces[(name, text)] = got
        return got


def _starts(lines: list[str], indent: int, first: int, end: int) -> list[tuple[int, int]] | None:
    """The spans of a block mapping's keys at `indent` between lines `first` and `end`: each
    from its key's line to the next key's. None if a line could belong to anything else."""
    spans: list[tuple[int, int]] = []
    for i in range(first, end):
        line = lines[i]
        body = line.lstrip(" ")
        if not body or body.startswith("#"):
            continue
        col = len(line) - len(body)
        if col < indent or col > indent and not spans:
            return None
        if col == indent:
            if not _KEY_START.match(body):
                return None
            if spans:
                spans[-1] = (spans[-1][0], i)
            spans.append((i, end))
    return spans


def _block(lines: list[str], head: int, end: int) -> list[tuple[int, int]] | None:
    """The key spans of the block mapping `lines[head]` (`key:` alone) holds, or None."""
    if not _PARENT.fullmatch(lines[head]):
        return None
    for i in range(head + 1, end):
        body = lines[i].lstrip(" ")
        if body and not body.startswith("#"):
            indent = len(lines[i]) - len(body)
            if indent == 0 or body.startswith("-"):
                return None
            return _starts(lines, indent, i, end)
    return None


def _size(value: Any, bound: int) -> int:
    """Nodes of a converted tree, keys included and aliases expanded (so at least what the
    composer and the converter count); stops past `bound`."""
    count, todo = 0, [value]
    while todo and count <= bound:
        v = todo.pop()
        count += 1
        if isinstance(v, dict):
            count += len(v)
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return count


# ---------------------------------------------------------------------- stages


@dataclass
class _Stage:
    keep: tuple  # the objects whose ids are in the key: alive, so the ids stay theirs
    node: Node
    log: list[tuple]
    uses: list[Use]
    names: set[str]
    count: int  # items lowered
    start: int  # items lowered before it, when it was cached


@dataclass
class _Recorder(Collector):
    """A Collector that also logs each error offered to it, so a reused stage can offer them
    again, and that carries the stage cache and the template uses."""

    memo: dict = field(default_factory=dict)
    log: list | None = None
    uses: list[Use] = field(default_factory=list)

    def add(self, loc: Loc, code: str, message: str, help: str | None = None) -> None:
        if self.log is not None:
            self.log.append((loc, code, message, help))
        super().add(loc, code, message, help)


def _lower_cached(
    src: Source,
    variant: str | None,
    input_shape: tuple[int, ...] | None,
    num_classes: int | None,
    out: Collector,
    *,
    memo: dict,
    uses: list[Use],
) -> Network | None:
    """`lower`, reusing stages from `memo`; notes the template uses in `uses`."""
    rec = _Recorder(memo=memo, uses=uses)
    try:
        return lower(src, variant, input_shape, num_classes, rec, lowerer=_CachingLowerer)
    finally:
        out.items.extend(rec.items)  # out is empty: the check offers nothing before lowering


class _CachingLowerer(Lowerer):
    """Lowers as Lowerer does, reusing whole stages and noting each template use."""

    def instantiate(self, tname: str, args: Any, key_loc: Loc, *rest: Any, **kw: Any) -> Node:
        node = super().instantiate(tname, args, key_loc, *rest, **kw)
        out = self.out
        if isinstance(out, _Recorder):
            out.uses.append(Use(key_loc, tname, node))
        return node

    def item(
        self,
        item: Any,
        loc: Loc,
        state: Any,
        env: dict,
        scope: Any,
        name: Any,
        splice: bool = False,
    ) -> Node:  # type: ignore[override]
        out = self.out
        if self.depth or self.stack or not isinstance(out, _Recorder):
            return super().item(item, loc, state, env, scope, name, splice)
        parts = list(item) if isinstance(item, list) else [item]
        keep = (item, *parts, self.templates)
        key = (
            type(item),
            tuple(
                p if isinstance(p, (str, int, float, bool, type(None))) else id(p) for p in parts
            ),
            tuple(getattr(item, "item_locs", ())),
            getattr(item, "loc", None),
            id(self.templates) if self.templates else 0,  # an absent one is new each time
            loc,
            state,
            repr(env),
            name,
            splice,
            frozenset(scope.names),
            scope.key_locs.get(name),
            repr(self.spec.defaults),
            self.spec.width,
            tuple(map(id, OPS.values())),
            tuple(COMBINATORS),
        )
        hit = out.memo.get(key)
        if hit is not None and self.count <= hit.start:
            for args in hit.log:
                out.add(*args)
            out.uses.extend(hit.uses)
            scope.names |= hit.names
            self.count += hit.count
            return hit.node
        before_names, before_count, before_uses = set(scope.names), self.count, len(out.uses)
        out.log = []
        try:
            node = super().item(item, loc, state, env, scope, name, splice)
            out.memo[key] = _Stage(
                keep,
                node,
                out.log,
                out.uses[before_uses:],
                scope.names - before_names,
                self.count - before_count,
                before_count,
            )
        finally:
            out.log = None
        return node
