"""YAML text -> located tree.

The file is *composed* (parsed to YAML nodes) by ruamel.yaml and never *constructed*, so no tag
can run code; we turn the nodes into plain dicts, lists and scalars that remember where they
came from. Bounds on size, nesting and alias expansion keep hostile files cheap to refuse.
"""

from __future__ import annotations

import errno
import io
import math
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archspec.lang.errors import Loc, Problem

MAX_BYTES = 1024 * 1024  # a real spec is a few KB; the pure-Python parser reads ~3 MB/s
MAX_YAML_NODES = 5_000  # nodes as written (the seed specs have < 400); 50-100 us each to compose
MAX_DEPTH = 64  # nesting of mappings/sequences
MAX_NODES = 200_000  # after alias expansion: stops "billion laughs"
MAX_SCALAR = 10_000  # characters in one scalar

_STD = "tag:yaml.org,2002:"
_FLOW_CHARS = re.compile(r"[\[\]{}'\"\n#\\]")
_ALLOWED_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}


class LMap(dict):
    """A mapping that remembers where it, each key and each value stand in the file."""

    loc: Loc
    key_locs: dict
    val_locs: dict


class LSeq(list):
    """A sequence that remembers where it and each item stand in the file."""

    loc: Loc
    item_locs: list


@dataclass
class Source:
    """A spec file's text and its located tree (LMap/LSeq and scalars)."""

    path: str
    text: str
    root: Any = None
    lines: list[str] = field(default_factory=list)


class SourceError(Exception):
    def __init__(self, loc: Loc, problem: Problem):
        super().__init__(problem.message)
        self.loc = loc
        self.problem = problem


def read_source(path: str | Path) -> Source:
    """Read and parse a spec file. Raises SourceError (located) or OSError (missing file)."""
    p = Path(path)
    name = str(path)
    st = p.stat()
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "it is a directory, not a spec file", name)
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", name)
    _check_size(st.st_size, name)
    return source_from_bytes(p.read_bytes(), name)


def source_from_bytes(data: bytes, name: str, parse: Any = None) -> Source:
    """A spec's bytes (a file's, or an editor buffer's) -> Source, under the same bounds as a
    file; `parse` (text, name) -> Source replaces `parse_text` (the language server's cache)."""
    _check_size(len(data), name)
    return (parse or parse_text)(decode(data, name), name)


def _check_size(size: int, name: str) -> None:
    if size > MAX_BYTES:
        raise SourceError(
            Loc(name),
            Problem(
                "E-YAML-SIZE",
                f"file is {size:,} bytes; a spec may be at most {MAX_BYTES:,}",
                "a network spec is a few kilobytes: is this the right file?",
            ),
        )


def decode(data: bytes, name: str) -> str:
    if b"\x00" in data:
        raise SourceError(
            Loc(name), Problem("E-YAML-BINARY", "file is binary, not YAML text", None)
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SourceError(
            Loc(name, line, col),
            Problem("E-YAML-ENCODING", "file is not valid UTF-8 text", "save the spec as UTF-8"),
        ) from None


def parse_text(text: str, name: str) -> Source:
    src = Source(name, text, lines=text.splitlines())
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in src.lines):
        raise SourceError(
            Loc(name),
            Problem(
                "E-YAML-EMPTY",
                "spec file is empty",
                "a spec needs at least `name`, `input` and `stages`",
            ),
        )
    _check_flow_depth(text, name)
    node = _compose(text, name)
    src.root = _Converter(name).convert(node, 0)
    return src


def _compose(text: str, name: str) -> Any:
    """The file's YAML node tree: from libyaml when it can give exactly what the pure-Python
    composer gives (6x faster), else from ruamel's own composer, which also words every error."""
    fast = _compose_in_c(text)
    return fast if fast is not None else _compose_in_python(text, name)


# Characters that open a nesting level: a flow collection, a block sequence entry or a block
# mapping's key or value indicator. libyaml recurses in C once per level and has no depth limit
# of its own (a file nested ~15,000 deep crashes the interpreter), so a text with more of these
# than any spec needs is composed in Python, which stops at MAX_DEPTH.
_OPENERS = re.compile(r"[\[{?:-]")
_C_MAX_OPENERS = 4096
_C_MAX_BYTES = 64 * 1024  # specs are a few KB: a bigger text is no usual spec
# Where libyaml and ruamel's scanner read the same text differently: the line breaks of YAML 1.1
# that YAML 1.2 reads as ordinary characters, tabs, byte-order marks, anchors, aliases and tags
# (which characters end their names; `$a * $b` and `$a != 1` in expressions are neither) and
# block scalars' headers. Specs rarely hold any of these; such a text is composed in Python.
_C_UNEQUAL = re.compile(
    "[\t\x85\u2028\u2029\ufeff]"
    r"|(?:^|[\s\[{,:?-])(?:[&*]\S|![^\s=])|^ *[|>]|[:?-] +[|>]|[\[{,] *[|>]",
    re.MULTILINE,
)


def _compose_in_c(text: str) -> Any:
    """The tree libyaml composes (ruamel.yaml.clib), or None to compose in Python instead: no C
    parser installed, a text the bounds above do not clear, a directive (`%YAML 1.1` changes how
    the pure composer resolves scalars), any error (the pure composer words it), or a tree over
    MAX_YAML_NODES nodes or MAX_DEPTH levels (the pure composer says where). tests/test_yaml_c.py
    holds the two composers to the same result."""
    if len(text) > _C_MAX_BYTES or text.lstrip().startswith("%") or "\n%" in text:
        return None
    if _C_UNEQUAL.search(text) or not text.endswith("\n"):
        return None  # (at the end of a file without a final newline, the two end blocks apart)
    if len(_OPENERS.findall(text)) > _C_MAX_OPENERS:
        return None
    loader = _c_loader()
    if loader is None:
        return None
    try:
        node = loader(text).get_single_node()
    except Exception:  # noqa: BLE001  # any failure: the pure composer reports it, located
        return None
    return node if node is not None and _within_bounds(node) else None


_C_LOADER: Any = False  # not looked for yet


def _c_loader() -> Any:
    """libyaml's parser and composer with ruamel's YAML 1.2 resolver (what `YAML(typ="safe")`
    assembles, without its per-call set-up), or None where ruamel.yaml.clib is not installed."""
    global _C_LOADER
    if _C_LOADER is False:
        try:
            from _ruamel_yaml import CParser  # type: ignore[import-not-found]  # no stubs
        except ImportError:
            _C_LOADER = None
            return None
        from ruamel.yaml.resolver import Resolver

        class CLoader(CParser, Resolver):  # type: ignore[misc]
            def __init__(self, text: str):
                CParser.__init__(self, io.StringIO(text))
                Resolver.__init__(self, loadumper=self)

        _C_LOADER = CLoader
    return _C_LOADER


def _within_bounds(root: Any) -> bool:
    """Whether the pure composer would have composed `root` without refusing it: at most
    MAX_YAML_NODES nodes as written (an alias counts once, as the composer counts it) and no
    deeper than MAX_DEPTH + 1."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    count, seen, todo = 0, set(), [(root, 1)]
    while todo:
        node, level = todo.pop()
        count += 1
        if count > MAX_YAML_NODES or level > MAX_DEPTH + 1:
            return False
        if id(node) in seen:
            continue  # an alias: its node was counted where the anchor stands
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            todo += [(item, level + 1) for item in node.value]
        elif isinstance(node, MappingNode):
            todo += [(n, level + 1) for pair in node.value for n in pair]
    return True


def _compose_in_python(text: str, name: str) -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.reader import ReaderError

    yaml = YAML(typ="safe", pure=True)
    yaml.Composer = _bounded_composer()
    try:
        return yaml.compose(io.StringIO(text))
    except _TooDeep as e:
        raise SourceError(
            Loc(name, e.mark.line + 1, e.mark.column + 1),
            Problem("E-YAML-DEPTH", f"nesting deeper than {MAX_DEPTH} levels", None),
        ) from None
    except _TooManyNodes as e:
        raise SourceError(
            Loc(name, e.mark.line + 1, e.mark.column + 1),
            Problem(
                "E-YAML-SIZE",
                f"the file has more than {MAX_YAML_NODES:,} YAML nodes",
                "a network spec has a few hundred: use `repeat` and templates instead",
            ),
        ) from None
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = Loc(name, mark.line + 1, mark.column + 1) if mark else Loc(name)
        msg = (e.problem or e.context or "invalid YAML").strip()
        hint = None
        if "\t" in text and "tab" in msg.lower() or "found character '\\t'" in msg:
            hint = "YAML indentation must use spaces, not tabs"
        raise SourceError(loc, Problem("E-YAML-SYNTAX", f"invalid YAML: {msg}", hint)) from None
    except RecursionError:
        raise SourceError(
            Loc(name), Problem("E-YAML-DEPTH", f"nesting deeper than {MAX_DEPTH} levels", None)
        ) from None
    except ReaderError as e:  # a control character: the reader gives an offset, not a mark
        pos = min(int(e.position), len(text))
        line, col = text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = f"U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        raise SourceError(
            Loc(name, line, col),
            Problem(
                "E-YAML-SYNTAX",
                f"invalid YAML: control character {char} is not allowed",
                "a spec is plain text: remove the character",
            ),
        ) from None
    except (YAMLError, ValueError) as e:  # composer errors without a mark, e.g. many documents
        raise SourceError(Loc(name), Problem("E-YAML-SYNTAX", f"invalid YAML: {e}", None)) from None


class _TooManyNodes(Exception):
    def __init__(self, mark: Any):
        self.mark = mark


class _TooDeep(_TooManyNodes):
    pass


_COMPOSER: Any = None


def _bounded_composer() -> Any:
    """ruamel's Composer, counting nodes as it builds them: a file of a million list items is
    refused after MAX_YAML_NODES instead of taking minutes and a gigabyte to compose."""
    global _COMPOSER
    if _COMPOSER is None:
        from ruamel.yaml.composer import Composer

        class BoundedComposer(Composer):
            count = 0
            level = 0

            def compose_node(self, parent: Any, index: Any) -> Any:
                self.count += 1
                if self.count > MAX_YAML_NODES:
                    raise _TooManyNodes(self.parser.peek_event().start_mark)
                # Nesting the text pre-scan missed (`[x'y, [[[[...`: the quote hides the
                # brackets) stops here, located, instead of at Python's recursion limit.
                self.level += 1
                try:
                    if self.level > MAX_DEPTH + 1:
                        raise _TooDeep(self.parser.peek_event().start_mark)
                    return super().compose_node(parent, index)
                finally:
                    self.level -= 1

        _COMPOSER = BoundedComposer
    return _COMPOSER


def _check_flow_depth(text: str, name: str) -> None:
    """Refuse `[[[[...` and deep block nesting before the YAML scanner sees them (its cost grows
    with the square of the flow depth). Brackets inside quoted scalars and comments don't count;
    a quote opens a scalar only where a scalar can start, so `[x'y, [[[[...` is still seen."""
    depth, line, start, quote, comment, skip = 0, 1, 0, "", False, -1
    for m in _FLOW_CHARS.finditer(text):
        i, ch = m.start(), m.group()
        if i <= skip:
            continue
        if ch == "\n":
            line, start, comment = line + 1, i + 1, False
            continue
        if comment:
            continue
        if quote:
            if ch == "\\" and quote == '"':
                skip = i + 1  # an escaped character
            elif ch == quote and quote == "'" and text.startswith("'", i + 1):
                skip = i + 1  # '' is a quote inside a single-quoted scalar
            elif ch == quote:
                quote = ""
            continue
        if ch == "#":
            comment = i == start or text[i - 1] in " \t"
        elif ch in "'\"":
            j = i - 1
            while j >= start and text[j] in " \t":
                j -= 1
            if j < start or text[j] in "[{,:-?":
                quote = ch
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise SourceError(
                    Loc(name, line, i - start + 1),
                    Problem("E-YAML-DEPTH", f"nesting deeper than {MAX_DEPTH} levels", None),
                )
        elif ch in "]}" and depth:
            depth -= 1
    for i, ln in enumerate(text.splitlines(), 1):
        indent = len(ln) - len(ln.lstrip(" -"))
        if indent > 4 * MAX_DEPTH and ln.strip():
            raise SourceError(
                Loc(name, i, indent + 1),
                Problem("E-YAML-DEPTH", f"nesting deeper than {MAX_DEPTH} levels", None),
            )


class _Converter:
    def __init__(self, name: str):
        self.name = name
        self.count = 0
        # An alias is the same node object again: convert it once and charge its expanded size
        # on every reuse, so a "billion laughs" file is refused in microseconds, not seconds.
        self.done: dict[int, tuple[Any, int, int]] = {}  # id(node) -> (value, nodes, height)
        self.deepest = 0

    def loc(self, node: Any, width: int | None = None) -> Loc:
        m = node.start_mark
        if width is None:
            end = node.end_mark
            width = end.column - m.column if end.line == m.line else 1
        return Loc(self.name, m.line + 1, m.column + 1, max(1, width))

    def fail(self, node: Any, code: str, message: str, help: str | None = None) -> SourceError:
        return SourceError(self.loc(node), Problem(code, message, help))

    def convert(self, node: Any, depth: int) -> Any:
        from ruamel.yaml.nodes import ScalarNode

        seen = self.done.get(id(node))
        if seen is not None:
            value, size, height = seen
            self.grow(node, size, depth + height)
            self.deepest = max(self.deepest, depth + height)
            return value
        if isinstance(node, ScalarNode):
            return self.convert_new(node, depth)
        before, outer, self.deepest = self.count, self.deepest, depth
        value = self.convert_new(node, depth)
        self.done[id(node)] = (value, self.count - before, self.deepest - depth)
        self.deepest = max(outer, self.deepest)
        return value

    def grow(self, node: Any, nodes: int, depth: int) -> None:
        """Count ``nodes`` more nodes, the deepest at ``depth``: an alias bomb or a too deep
        nesting is refused at ``node``."""
        self.count += nodes
        if self.count > MAX_NODES:
            raise self.fail(
                node,
                "E-YAML-BOMB",
                f"the file expands to more than {MAX_NODES:,} nodes (aliases?)",
                "write the structure out instead of nesting anchors and aliases",
            )
        if depth > MAX_DEPTH:
            raise self.fail(node, "E-YAML-DEPTH", f"nesting deeper than {MAX_DEPTH} levels")

    def convert_new(self, node: Any, depth: int) -> Any:
        from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

        self.grow(node, 1, depth)
        tag = node.tag if isinstance(node.tag, str) else getattr(node.tag, "value", None)
        if tag is not None and tag not in _ALLOWED_TAGS:
            raise self.fail(
                node,
                "E-YAML-TAG",
                f"tag `{tag.replace(_STD, '!!')}` is not allowed",
                "specs are plain data: only mappings, lists, strings, numbers, booleans and null",
            )
        if isinstance(node, ScalarNode):
            return self.scalar(node, tag)
        if isinstance(node, SequenceNode):
            seq = LSeq()
            seq.loc = self.loc(node, 1)
            seq.item_locs = []
            for item in node.value:
                seq.append(self.convert(item, depth + 1))
                seq.item_locs.append(self.loc(item))
            return seq
        if isinstance(node, MappingNode):
            m = LMap()
            m.loc = self.loc(node, 1)
            m.key_locs, m.val_locs = {}, {}
            for knode, vnode in node.value:
                if not isinstance(knode, ScalarNode):
                    raise self.fail(knode, "E-YAML-KEY", "mapping keys must be plain scalars")
                if (
                    knode.tag == _STD + "merge"
                    or knode.value == "<<"
                    and (knode.tag or "").endswith("merge")
                ):
                    raise self.fail(knode, "E-YAML-TAG", "YAML merge keys (`<<`) are not supported")
                key = self.scalar(knode, knode.tag if isinstance(knode.tag, str) else None)
                if isinstance(key, float) and math.isnan(key):
                    raise self.fail(knode, "E-YAML-KEY", "NaN is not a valid key")
                if key in m:
                    raise self.fail(
                        knode,
                        "E-YAML-DUPKEY",
                        f"duplicate key `{key}`",
                        f"`{key}` is already defined at line {m.key_locs[key].line}",
                    )
                m[key] = self.convert(vnode, depth + 1)
                m.key_locs[key] = self.loc(knode)
                # `key:` with nothing after it: the empty null's mark is wherever the next token
                # starts (often the next line), so point at the key instead.
                empty = isinstance(vnode, ScalarNode) and vnode.value == "" and not vnode.style
                m.val_locs[key] = self.loc(knode) if empty else self.loc(vnode)
            return m
        raise self.fail(node, "E-YAML-SYNTAX", "unsupported YAML node")

    def scalar(self, node: Any, tag: str | None) -> Any:
        v = node.value
        if len(v) > MAX_SCALAR:
            raise self.fail(node, "E-YAML-SIZE", f"a scalar of {len(v):,} characters is too long")
        kind = (tag or "").replace(_STD, "")
        if kind == "null":
            return None
        if kind == "bool":
            return v.lower() in ("true", "yes", "on", "y")
        if kind == "int":
            s = v.replace("_", "")
            try:
                if s.lstrip("+-").isdigit():
                    return int(s, 10)
                return int(s, 0)
            except ValueError:
                raise self.fail(
                    node, "E-YAML-NUMBER", f"`{v[:40]}` is not a usable integer"
                ) from None
        if kind == "float":
            s = v.replace("_", "").lower()
            if s.lstrip("+-") in (".inf", "inf"):
                return -math.inf if s.startswith("-") else math.inf
            if s in (".nan", "nan"):
                return math.nan
            try:
                return float(s)
            except ValueError:
                raise self.fail(
                    node, "E-YAML-NUMBER", f"`{v[:40]}` is not a usable number"
                ) from None
        return v


def to_plain(value: Any) -> Any:
    """Strip locations: LMap/LSeq -> dict/list, recursively."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def loc_of(container: Any, key: Any, default: Loc, *, key_loc: bool = False) -> Loc:
    """Where `container[key]` (or the key itself) stands, falling back to `default`."""
    if isinstance(container, LMap):
        table = container.key_locs if key_loc else container.val_locs
        if key in table:
            return table[key]
        return getattr(container, "loc", default)
    if isinstance(container, LSeq) and isinstance(key, int) and 0 <= key < len(container.item_locs):
        return container.item_locs[key]
    return getattr(container, "loc", default)


def without(item: dict, *keys: Any) -> LMap:
    """`item` less `keys`, keeping the file positions of the rest."""
    out = LMap((k, v) for k, v in item.items() if k not in keys)
    out.loc = getattr(item, "loc", None)  # type: ignore[assignment]  # as the item had it
    out.key_locs = {k: v for k, v in getattr(item, "key_locs", {}).items() if k not in keys}
    out.val_locs = {k: v for k, v in getattr(item, "val_locs", {}).items() if k not in keys}
    return out


def merge(base: Any, overlay: Any) -> Any:
    """Deep-merge a variant overlay onto a base: mappings merge, everything else replaces.

    A `null` value in the overlay deletes the key. Locations follow whichever side won."""
    if not (isinstance(base, dict) and isinstance(overlay, dict)):
        return overlay
    out = LMap()
    out.loc = getattr(base, "loc", None)  # type: ignore[assignment]  # as the base had it
    out.key_locs = dict(getattr(base, "key_locs", {}))
    out.val_locs = dict(getattr(base, "val_locs", {}))
    out.update(base)
    for k, v in overlay.items():
        if v is None:
            out.pop(k, None)
            continue
        out[k] = merge(base[k], v) if k in base else v
        if isinstance(overlay, LMap):
            out.key_locs[k] = overlay.key_locs.get(k, out.key_locs.get(k))
            out.val_locs[k] = overlay.val_locs.get(k, out.val_locs.get(k))
    return out
