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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from archspec.analysis.report import Report, check_source
from archspec.ir import Network, Node
from archspec.lang.errors import Collector, Loc
from archspec.lang.source import (
    MAX_NODES,
    MAX_YAML_NODES,
    LMap,
    LSeq,
    Source,
    SourceError,
    _check_flow_depth,
    parse_text,
    source_from_bytes,
)
from archspec.lower import COMBINATORS, Lowerer, lower
from archspec.lower.templates import DOLLAR_NAME
from archspec.ops import OPS, Inferred

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
        self.maps: dict[tuple[int, ...], tuple[LMap, Any]] = {}
        self.stages: dict[tuple, _Stage] = {}
        self.rules: dict[tuple, tuple] = {}
        self.dollars: dict[int, tuple] = {}

    def check(
        self,
        text: str,
        path: str,
        variant: str | None = None,
        input_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
    ) -> Analysis:
        bounds = (
            (self.pieces, 4096),
            (self.maps, 1024),
            (self.stages, 256),
            (self.rules, 20_000),
            (self.dollars, 20_000),
        )
        for cache, most in bounds:
            if len(cache) > most:  # a stage holds its nodes: a few hundred KB for resnet152's
                cache.clear()
        data = text.encode("utf-8", "surrogatepass")
        seen: list[Source] = []

        def read() -> Source:
            src = source_from_bytes(data, path, parse=self.parse)
            seen.append(src)
            return src

        uses: list[Use] = []
        lowering = partial(
            _lower_cached, memo=self.stages, rules=self.rules, dollars=self.dollars, uses=uses
        )
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
        tops = _spans(lines, 0, 0, len(lines), "-")
        if not tops:
            return None
        _check_flow_depth(text, name)  # raises as parse_text would, before any piece is read
        root, total = LMap(), 0
        root.key_locs, root.val_locs = {}, {}
        for n, (start, end) in enumerate(tops):
            got = self._key(lines, [], start if n else 0, end, name)
            if got is None:
                return None
            piece, size, _ = got
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

    def _key(self, lines: list[str], anc: list[int], start: int, end: int, name: str) -> Any:
        """One key of the block mapping under the `anc` lines (`key:` each, outermost first):
        `({key: value} as the parse at that depth gives it, its size, a parsed root it came
        from)`. A key holding a block mapping or list is cut at its keys or items, recursively;
        others are parsed alone. None where the cut is not sure to give what the parse gives."""
        head = start
        while not _KEY_START.match(lines[head], len(lines[head]) - len(lines[head].lstrip(" "))):
            head += 1  # the comments above the first key
        cut = _children(lines, head, end) if len(anc) < _MAX_DEPTH else None
        if cut is None or len(cut[1]) < 2:
            whole = self._parse(lines, [*anc, start], end, name)
            return None if whole is None else _down(whole, len(anc))
        kind, spans = cut
        parts, total, sample = [], 0, LMap()
        for s, e in spans:
            if kind == "map":
                got = self._key(lines, [*anc, head], s, e, name)
                if got is None:
                    return None
                part, size, root = got
            else:
                parsed = self._parse(lines, [*anc, head, s], e, name)
                got = None if parsed is None else _down(parsed, len(anc) + 1)
                if got is None or not isinstance(got[0], LSeq):
                    return None
                part, size, root = got
            parts.append(part)
            total += size
            sample = sample or root  # the first piece's parse: the key's own position
        outer = _down((sample, 0), len(anc))
        if outer is None:
            return None
        wrapper = self._join(outer[0], parts)
        return None if wrapper is None else (wrapper, total, sample)

    def _join(self, outer: LMap, parts: list[Any]) -> LMap | None:
        """`{key: the mapping or list the parts make}`, the same object while they are (the
        caches know templates and layers by identity). `outer` is `{key: first part}` as parsed."""
        ident = (id(outer), *map(id, parts))
        hit = self.maps.get(ident)
        if hit is not None:
            return hit[0]
        (key,) = outer
        if isinstance(parts[0], LSeq):
            inner: Any = LSeq(p[0] for p in parts)
            inner.loc = parts[0].loc
            inner.item_locs = [p.item_locs[0] for p in parts]
        else:
            inner = LMap()
            inner.loc, inner.key_locs, inner.val_locs = parts[0].loc, {}, {}
            for part in parts:
                if not isinstance(part, LMap) or len(part) != 1:
                    return None
                (k,) = part
                if k in inner:
                    return None
                inner[k] = part[k]
                inner.key_locs[k] = part.key_locs[k]
                inner.val_locs[k] = part.val_locs[k]
        wrapper = LMap({key: inner})
        wrapper.loc = outer.loc
        wrapper.key_locs = {key: outer.key_locs[key]}
        wrapper.val_locs = {key: outer.val_locs[key]._replace(width=1)}  # spans several lines
        self.maps[ident] = (wrapper, (outer, parts))  # alive, so the ids stay theirs
        return wrapper

    def _parse(
        self, lines: list[str], keep: list[int], end: int, name: str
    ) -> tuple[LMap, int] | None:
        """Parse lines `keep[:-1]` (the `key:` lines above) and `keep[-1]:end`, every other line
        blank, so positions are the file's."""
        last = keep[-1]
        buf = [""] * end
        for i in keep[:-1]:
            buf[i] = lines[i]
        buf[last:end] = lines[last:end]
        # A piece ends as it does in the file: with a line break unless the file ends there.
        text = "\n".join(buf) + ("\n" if end < len(lines) else "")
        hit = self.pieces.get((name, text))
        if hit is not None:
            return hit
        try:
            root = parse_text(text, name).root
        except SourceError:
            return None
        if not isinstance(root, LMap):
            return None
        got = self.pieces[(name, text)] = (root, _size(root, _BOUND + 1))
        return got


_MAX_DEPTH = 6  # levels of keys cut into pieces


def _down(parsed: tuple[LMap, int], depth: int) -> tuple[Any, int, LMap] | None:
    """The container `depth` keys below a parsed root, each level holding one key only, with
    the root's size and the root."""
    root, size = parsed
    node: Any = root
    for _ in range(depth):
        if not isinstance(node, LMap) or len(node) != 1:
            return None
        node = next(iter(node.values()))
    if not isinstance(node, (LMap, LSeq)) or len(node) != 1:
        return None
    return node, size, root


def _spans(lines: list[str], indent: int, first: int, end: int, item: str) -> Any:
    """The spans of the entries of a block collection at `indent` between lines `first` and
    `end`, each from its first line to the next one's: keys (`item` "-": none may start with
    `-`), or list items (`item` "- "). None if a line could belong to anything else."""
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
            if item == "-" and not _KEY_START.match(body):
                return None
            if item == "- " and not (body == "-" or body.startswith("- ")):
                return None
            if spans:
                spans[-1] = (spans[-1][0], i)
            spans.append((i, end))
    return spans


def _children(lines: list[str], head: int, end: int) -> tuple[str, list] | None:
    """How the value of `lines[head]` (`key:` alone) is cut: ("map", its keys' spans) or
    ("seq", its items' spans); None if it is not a block collection indented under the key."""
    if not _PARENT.fullmatch(lines[head].lstrip(" ")):
        return None
    indent = len(lines[head]) - len(lines[head].lstrip(" "))
    for i in range(head + 1, end):
        body = lines[i].lstrip(" ")
        if body and not body.startswith("#"):
            n = len(lines[i]) - len(body)
            if n <= indent:
                return None
            if body == "-" or body.startswith("- "):
                spans = _spans(lines, n, i, end, "- ")
                return ("seq", spans) if spans else None
            spans = _spans(lines, n, i, end, "-")
            return ("map", spans) if spans else None
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
    """One stage's lowering, cached with the inputs it depended on."""

    keep: tuple  # the objects whose ids are in the key: alive, so the ids stay theirs
    node: Node
    log: list[tuple]
    uses: list[Use]
    names: set[str]
    count: int  # items lowered
    start: int  # items lowered before it, when it was cached
    templates: dict[str, Any]  # the templates it expanded, by name: reused while they are


@dataclass
class _Recorder(Collector):
    """A Collector that also logs each error offered to it, so a reused stage or layer can offer
    them again, and that carries the caches and the template uses."""

    memo: dict = field(default_factory=dict)  # stages
    rules: dict = field(default_factory=dict)  # layers' parameters and shapes
    dollars: dict = field(default_factory=dict)  # id of a parameter mapping -> the $ names
    logs: list[list] = field(default_factory=list)  # what is being recorded, outermost first
    uses: list[Use] = field(default_factory=list)

    def add(
        self, loc: Loc, code: str, message: str, help: str | None = None, note: str | None = None
    ) -> None:
        note = self.context if note is None else note  # a reused stage says its uses again
        for log in self.logs:
            log.append((loc, code, message, help, note))
        super().add(loc, code, message, help, note)

    @contextmanager
    def recording(self) -> Iterator[list]:
        log: list = []
        self.logs.append(log)
        try:
            yield log
        finally:
            self.logs.pop()


def _lower_cached(
    src: Source,
    variant: str | None,
    input_shape: tuple[int, ...] | None,
    num_classes: int | None,
    out: Collector,
    *,
    memo: dict,
    rules: dict,
    dollars: dict,
    uses: list[Use],
) -> Network | None:
    """`lower`, reusing stages from `memo` and layers from `rules`; notes the template uses."""
    uses.clear()  # the check may lower twice (entry-point plugins): the uses of the last
    rec = _Recorder(memo=memo, rules=rules, dollars=dollars, uses=uses)
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
        keep = (item, *parts)
        key = (
            type(item),
            tuple(
                p if isinstance(p, (str, int, float, bool, type(None))) else id(p) for p in parts
            ),
            tuple(getattr(item, "item_locs", ())),
            getattr(item, "loc", None),
            tuple(self.templates),  # names decide what is an op; the bodies used are below
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
            tuple(map(id, COMBINATORS.values())),
        )
        hit = out.memo.get(key)
        if (
            hit is not None
            and self.count <= hit.start
            and all(self.templates.get(t) is body for t, body in hit.templates.items())
        ):
            for args in hit.log:
                out.add(*args)
            out.uses.extend(hit.uses)
            scope.names |= hit.names
            self.count += hit.count
            return hit.node
        before_names, before_count, before_uses = set(scope.names), self.count, len(out.uses)
        before_reads = self.ref_reads
        with out.recording() as log:
            node = super().item(item, loc, state, env, scope, name, splice)
        if self.ref_reads != before_reads:  # it read other stages' outputs: not reusable
            return node
        used = out.uses[before_uses:]
        out.memo[key] = _Stage(
            keep,
            node,
            log,
            used,
            scope.names - before_names,
            self.count - before_count,
            before_count,
            {u.template: self.templates.get(u.template) for u in used},
        )
        return node

    def rule(
        self, opname: str, body: dict, body_loc: Loc, loc: Loc, state: Any, env: dict
    ) -> tuple[Any, Inferred | None]:
        """A layer's parameters and shape, kept by everything they depend on: the uses of a
        template with the same arguments and input, within a check and across checks."""
        out = self.out
        if not isinstance(out, _Recorder):
            return super().rule(opname, body, body_loc, loc, state, env)
        key = (
            opname,
            id(body) if body else 0,  # an empty mapping may be a new one each time
            body_loc,
            loc,
            state.shape,
            state.grid,  # the token grid an op that reads one fills its `h`/`w` from
            tuple((n, type(env.get(n)).__name__, repr(env.get(n))) for n in self.dollars(body)),
            self.spec.width,
            repr(self.defaults.get(opname)),
            id(OPS.get(opname)),
            repr(self.ref_shapes) if OPS[opname].refs else None,  # the outputs it names
        )
        hit = out.rules.get(key)
        if hit is not None:
            for args in hit[2]:
                out.add(*args[:4])  # said in the template use being lowered now
            return hit[0], hit[1]
        with out.recording() as log:
            params, inferred = super().rule(opname, body, body_loc, loc, state, env)
        out.rules[key] = (params, inferred, log, body)  # the body stays alive: its id stays its
        return params, inferred

    def dollars(self, body: dict) -> tuple[str, ...]:
        """The `$` names a layer's parameters read, kept per parameter mapping (while the rule
        cache holds it, its id is its own)."""
        out = self.out
        assert isinstance(out, _Recorder)
        hit = out.dollars.get(id(body))
        if hit is not None and hit[0] is body:
            return hit[1]
        names = tuple(_dollars(body))
        out.dollars[id(body)] = (body, names)
        return names


def _dollars(value: Any) -> list[str]:
    """The `$` names a layer's parameters read (`in` is the input shape, in the key already)."""
    if isinstance(value, str):
        return DOLLAR_NAME.findall(value) if "$" in value else []
    if isinstance(value, dict):
        return [n for v in value.values() for n in _dollars(v)]
    if isinstance(value, list):
        return [n for v in value for n in _dollars(v)]
    return []
