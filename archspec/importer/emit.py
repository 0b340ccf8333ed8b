"""The recovered structure -> the spec's YAML form (module names settled exactly as the
lowerer will assign them), and that form -> YAML text in the shipped specs' style."""

from __future__ import annotations

import math
import re
from typing import Any

from archspec.importer.trace import It, Located


class Marker:
    """A place the language cannot express: written as a YAML comment (`--partial`)."""

    def __init__(self, text: str):
        self.text = text


class Names:
    """The names one module's children take, claimed in order as the lowerer claims them: an
    item without `name:` takes its position (or `shortcut`/`post`), so `name:` is written only
    where the wanted name differs."""

    def __init__(self, wanted: set[str]):
        self.taken: set[str] = set()
        self.wanted = wanted

    def claim(
        self, want: str | None, default: str | None = None, base: str = "layer"
    ) -> tuple[str, bool]:
        pos = default if default is not None else str(len(self.taken))
        if want is not None and want not in self.taken:
            name = want
        elif pos not in self.taken and pos not in self.wanted:
            name = pos
        else:
            k = 0
            name = base
            while name in self.taken or name in self.wanted:
                k += 1
                name = f"{base}_{k}"
        self.taken.add(name)
        return name, name != pos


def claims(items: list[It]) -> set[str]:
    out: set[str] = set()
    for x in items:
        if x.inline:
            if x.kind == "residual":
                out |= claims(x.items) | claims([x.shortcut] if isinstance(x.shortcut, It) else [])
            elif x.kind in ("parallel", "split"):
                out |= claims([y for b in x.branches for y in b]) | set(x.keys or ())
            elif x.kind == "scale":
                out |= claims(x.items)
        elif x.name:
            out.add(x.name)
    return out


def own_claims(it: It) -> set[str]:
    if it.kind == "list":
        return claims(it.items)
    if it.kind == "residual":
        extra = [it.shortcut] if isinstance(it.shortcut, It) else []
        return claims(it.items + extra + ([it.post] if it.post else []))
    if it.kind in ("parallel", "split"):
        return claims([y for b in it.branches for y in b]) | set(it.keys or ())
    if it.kind == "scale":
        return claims(it.items)
    return set()


class Emitter:
    def __init__(self) -> None:
        self.classes: dict[int, str] = {}  # id(YAML object) -> its module's class

    def body(self, it: It, inner: Names, name: str | None) -> Any:
        out = self._body(it, inner, name)
        if it.cls:
            self.classes[id(out)] = it.cls
            if isinstance(out, dict) and len(out) == 1:
                self.classes[id(next(iter(out.values())))] = it.cls
        return out

    def item(self, it: It, names: Names, default: str | None = None) -> Any:
        if it.kind == "marker":
            return Marker(it.text)
        if it.inline:
            return self.body(it, names, None)
        name, explicit = names.claim(it.name, default, it.op or it.kind)
        inner = Names(own_claims(it))
        return self.body(it, inner, name if explicit else None)

    def _body(self, it: It, inner: Names, name: str | None) -> Any:
        if it.kind == "marker":
            return Marker(it.text)
        if it.kind == "op":
            d = dict(it.params)
            if name is not None:
                d["name"] = name
            return {it.op: d} if d else it.op
        if it.kind == "list":
            layers = [self.item(x, inner) for x in it.items]
            return {"seq": {"name": name, "layers": layers}} if name is not None else layers
        if it.kind == "residual":
            return {"residual": self.residual(it, inner, name)}
        if it.kind == "parallel":
            return {"parallel": self.parallel(it, inner, name)}
        if it.kind == "dense":
            return {"dense": self.dense(it, name)}
        if it.kind == "scale":
            by: dict[str, Any] = {"name": name} if name is not None else {}
            if it.inline:
                by["inline"] = True
            by["by"] = [self.item(x, inner) for x in it.items]
            return {"scale": by}
        if it.kind == "split":
            return {"split": self.split(it, inner, name)}
        raise AssertionError(it.kind)

    def residual(self, it: It, inner: Names, name: str | None) -> dict:
        d: dict[str, Any] = {}
        if name is not None:
            d["name"] = name
        if it.inline:
            d["inline"] = True
        d["main"] = [self.item(x, inner) for x in it.items]
        sc = it.shortcut
        proj = projection(it) if isinstance(sc, It) else None
        if sc == "identity" or isinstance(sc, It) and sc.kind == "op" and sc.op == "identity":
            d["shortcut"] = "auto"  # the main path keeps the shape: auto is the identity
        elif sc == "if_same":
            d["shortcut"] = "identity_if_same"  # summed only where the shape is kept
        elif proj is not None:
            d["shortcut"] = "auto"
            pname, explicit = inner.claim(sc.name, "shortcut")
            if explicit:
                proj["name"] = pname
            if proj:
                d["projection"] = proj
        else:
            d["shortcut"] = [self.item(sc, inner, "shortcut")]
            if isinstance(d["shortcut"][0], list):  # a list shortcut is the module itself
                d["shortcut"] = d["shortcut"][0]
            elif isinstance(d["shortcut"][0], dict) and "seq" in d["shortcut"][0]:
                d["shortcut"] = d["shortcut"][0]  # a module of its own name (MaxViT's proj)
        if it.post is not None:
            d["post"] = self.item(it.post, inner, "post")
        return d

    def parallel(self, it: It, inner: Names, name: str | None) -> dict:
        d: dict[str, Any] = {}
        if name is not None:
            d["name"] = name
        if it.inline:
            d["inline"] = True
        if it.merge != "concat":
            d["merge"] = it.merge
        whole = not it.inline and all(
            len(b) == 1 and b[0].name and b[0].kind != "marker" for b in it.branches
        )
        if whole:
            branches = {}
            for b in it.branches:
                key, _ = inner.claim(b[0].name)
                branches[key] = self.body(b[0], Names(own_claims(b[0])), None)
            d["branches"] = branches
            return d
        d["flat"] = True
        d["branches"] = [
            [self.item(x, inner) for x in b] if b else [self.item(It("op", op="identity"), inner)]
            for b in it.branches
        ]
        return d

    def split(self, it: It, inner: Names, name: str | None) -> dict:
        """Branch names: a branch that is one whole module takes its name; an empty one the
        name of a child that holds nothing (torchvision's `branch1 = nn.Sequential()`)."""
        d: dict[str, Any] = {"name": name} if name is not None else {}
        if it.inline:
            d["inline"] = True
        spare = list(it.keys or [])
        branches: dict[str, Any] = {}
        for i, b in enumerate(it.branches):
            if len(b) == 1 and b[0].name and b[0].kind != "marker":
                key, _ = inner.claim(b[0].name)
                branches[key] = self.body(b[0], Names(own_claims(b[0])), None)
                continue
            assert not b, "Recover.split keeps only whole-module or empty branches"
            key, _ = inner.claim(spare.pop(0) if spare else None, None, "branch")
            branches[key] = []
        d["branches"] = branches
        return d

    def dense(self, it: It, name: str | None) -> dict:
        d: dict[str, Any] = {}
        if name is not None:
            d["name"] = name
        names = [x.name for x in it.items]
        n = len(names)
        if all(x is None for x in names) or names == [str(i) for i in range(n)]:
            pass
        else:
            m = re.match(r"^(.*?)(\d+)$", names[0] or "")
            if not m:
                raise Located(name or "", "dense block", "layers not numbered")
            prefix, start = m.group(1), int(m.group(2))
            if names != [f"{prefix}{start + i}" for i in range(n)]:
                raise Located(name or "", "dense block", "layers not numbered")
            d["prefix"] = prefix
            if start:
                d["start"] = start
        bodies = [self.body(x, Names(own_claims(x)), None) for x in it.items]
        if any(b != bodies[0] for b in bodies[1:]):
            raise Located(name or "", "dense block", "its layers differ")
        d["repeat"] = n
        d["body"] = bodies[0]
        return _order(d)


def _order(d: dict) -> dict:
    keys = ["repeat", "use", "body", "with", "first", "at", "prefix", "start", "name", "inline"]
    return {k: d[k] for k in keys if k in d} | {k: v for k, v in d.items() if k not in keys}


def projection(it: It) -> dict | None:
    """An explicit shortcut that is exactly what `shortcut: auto` builds (a 1x1 conv with the
    main path's stride, then bn unless `bn: false`) -> its `projection` options, else None."""
    sc = it.shortcut
    assert isinstance(sc, It)
    layers = sc.items if sc.kind == "list" else [sc]
    if sc.kind == "list" and [x.name for x in layers] not in ([None, None], ["0", "1"]):
        return None
    if not layers or layers[0].kind != "op" or layers[0].op != "conv":
        return None
    conv = layers[0].params
    if conv.get("k") != 1 or set(conv) - {"out", "k", "stride", "bias"}:
        return None
    if len(layers) == 2 and (layers[1].kind != "op" or layers[1].op != "bn" or layers[1].params):
        return None
    if len(layers) > 2:
        return None
    stride = main_stride(it.items)
    if stride is None or conv.get("stride", 1) != stride or conv["out"] != it.out_c:
        return None
    if it.in_c == it.out_c and stride == 1:
        return None  # auto would be the identity
    opts: dict[str, Any] = {}
    if len(layers) == 1:
        opts["bn"] = False
    if conv.get("bias", True):
        opts["bias"] = True
    return opts


def main_stride(items: list[It]) -> Any:
    total = [1, 1]
    for x in items:
        if x.kind == "list":
            s = main_stride(x.items)
        elif x.kind == "op" and x.op == "conv":
            s = x.params.get("stride", 1)
        elif x.kind == "op" and x.op in ("maxpool", "avgpool"):
            s = x.params.get("stride", x.params["k"])
        elif x.kind == "op" and x.op in (
            "adaptive_avgpool",
            "adaptive_maxpool",
            "gap",
            "gmp",
            "flatten",
            "linear",
        ):
            return None
        elif x.kind == "op" or x.kind == "scale":
            s = 1
        else:
            return None
        if s is None:
            return None
        pair = s if isinstance(s, list) else [s, s]
        total = [total[0] * pair[0], total[1] * pair[1]]
    return total[0] if total[0] == total[1] else total


# ------------------------------------------------------------------------------ YAML text

WIDTH = 100
_PLAIN = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$. ]*$")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "~"}


def scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
            return f"{v:.1f}"
        return _float(repr(v))
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in _RESERVED and not s.endswith(" "):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _float(r: str) -> str:
    """A float YAML 1.1 reads as one (1e-06 is a string there): 0.000001, or 1.5e-20 -> 1.5e-20
    with its dot (1e-20 -> 1.0e-20)."""
    if "e" not in r or not r[0].isdigit() and r[0] != "-":
        return r
    from decimal import Decimal

    plain = format(Decimal(r), "f")
    if len(plain) <= 12:
        return plain
    mant, exp = r.split("e")
    return f"{mant if '.' in mant else mant + '.0'}e{exp if exp[0] in '+-' else '+' + exp}"


def flow(v: Any) -> str | None:
    if isinstance(v, Marker):
        return None
    if isinstance(v, dict):
        parts = []
        for k, x in v.items():
            f = flow(x)
            if f is None:
                return None
            parts.append(f"{scalar(k)}: {f}")
        return "{" + ", ".join(parts) + "}"
    if isinstance(v, list):
        parts = []
        for x in v:
            f = flow(x)
            if f is None:
                return None
            parts.append(f)
        return "[" + ", ".join(parts) + "]"
    return scalar(v)


def block(v: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(v, dict):
        for k, x in v.items():
            f = flow(x)
            head = f"{pad}{scalar(k)}:"
            if f is not None and len(head) + 1 + len(f) <= WIDTH and not _big(x):
                lines.append(f"{head} {f}")
            else:
                lines.append(head)
                lines.extend(block(x, indent + 2))
        return lines
    if isinstance(v, list):
        for x in v:
            if isinstance(x, Marker):
                lines.append(f"{pad}# archspec import: {x.text}")
                continue
            f = flow(x)
            if (
                f is not None
                and len(pad) + 2 + len(f) <= WIDTH
                and not _big(x)
                and not (isinstance(x, dict) and len(x) == 1)
            ):
                lines.append(f"{pad}- {f}")
                continue
            if isinstance(x, dict) and len(x) == 1:
                ((k, y),) = x.items()
                fy = flow(y)
                if fy is not None and len(pad) + 4 + len(str(k)) + len(fy) <= WIDTH and not _big(y):
                    lines.append(f"{pad}- {scalar(k)}: {fy}")
                    continue
            sub = block(x, indent + 2)
            if sub and sub[0].lstrip().startswith("#"):
                lines.append(f"{pad}-")
                lines.extend(sub)
            else:
                lines.append(f"{pad}- {sub[0].lstrip()}" if sub else f"{pad}- []")
                lines.extend(sub[1:])
        return lines
    if isinstance(v, Marker):
        return [f"{pad}# archspec import: {v.text}"]
    return [f"{pad}{scalar(v)}"]


def _big(v: Any) -> bool:
    """Layer lists and combinator bodies read better one layer a line."""
    if isinstance(v, list):
        return (
            len(v) > 1 and any(isinstance(x, (dict, list)) for x in v) and len(flow(v) or "") > 60
        )
    if isinstance(v, dict):
        return any(
            k in ("main", "branches", "body", "layers") and _big_inner(x) for k, x in v.items()
        ) or any(isinstance(x, dict) and _big(x) for x in v.values())
    return False


def _big_inner(x: Any) -> bool:
    return len(flow(x) or "x" * 100) > 60


def to_text(doc: dict, header: list[str]) -> str:
    lines = list(header)
    for key, value in doc.items():
        if key in ("templates", "stages", "variants") and isinstance(value, dict):
            lines.append(f"{key}:")
            for k, x in value.items():
                if isinstance(x, Marker):
                    lines.append(f"  # archspec import: {x.text}")
                    continue
                f = flow(x)
                if f is not None and 2 + len(str(k)) + 2 + len(f) <= WIDTH and not _big(x):
                    lines.append(f"  {scalar(k)}: {f}")
                else:
                    lines.append(f"  {scalar(k)}:")
                    lines.extend(block(x, 4))
        else:
            f = flow(value)
            lines.append(f"{key}: {f}" if f is not None else f"{key}:")
            if f is None:
                lines.extend(block(value, 2))
    return "\n".join(lines) + "\n"
