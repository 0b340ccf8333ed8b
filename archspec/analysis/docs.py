"""The generated parts of the documentation, written from the code: the op reference and the
top-level keys of docs/language.md (from the op registry and the spec model) and the command
reference of docs/cli.md (from the click commands). tests/test_docs.py regenerates each region
and compares, so the pages cannot drift from the code. After changing an op, a spec key or a
command, rewrite the regions with

    python -m archspec.analysis.docs --write

(without `--write` it only checks, exit 1 if a page is stale). An op added by a plugin shows up
in `op_reference()` once its module is imported, a plugin's combinator in
`combinator_reference()`.
"""

from __future__ import annotations

import inspect
import sys
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def wrap_layers(layers: str, shape: str) -> str:
    """A whole spec whose one stage `s` is the given list of layers."""
    dims = [int(d) for d in shape.split(",")]
    body = "\n".join("    " + ln for ln in layers.strip("\n").splitlines())
    return f"name: example\ninput: {dims}\nnum_classes: 10\nstages:\n  s:\n{body}\n"


BEGIN = "<!-- BEGIN GENERATED: {} (python -m archspec.analysis.docs --write) -->"
END = "<!-- END GENERATED: {} -->"


def region(text: str, name: str) -> str | None:
    b, e = BEGIN.format(name), END.format(name)
    if b not in text or e not in text:
        return None
    return text.split(b, 1)[1].split(e, 1)[0].strip("\n")


def replace_region(text: str, name: str, content: str) -> str:
    b, e = BEGIN.format(name), END.format(name)
    head, rest = text.split(b, 1)
    _, tail = rest.split(e, 1)
    return f"{head}{b}\n{content}\n{e}{tail}"


def _yaml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def _type(annotation: Any) -> str:
    """`Union[int, list[int], Literal['same', 'valid']]` -> `int, [h, w], same or valid`."""
    args = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    names: list[str] = []
    for a in args:
        if a is type(None):
            continue
        if typing.get_origin(a) is typing.Literal:
            names += [f"`{x}`" for x in typing.get_args(a)]
        elif typing.get_origin(a) is list:
            names.append("[h, w]")
        else:
            names.append(getattr(a, "__name__", str(a)))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _range(metadata: list[Any]) -> str:
    lo = hi = ""
    for m in metadata:
        for attr, fmt in (("ge", "≥ {}"), ("gt", "> {}"), ("le", "≤ {}"), ("lt", "< {}")):
            v = getattr(m, attr, None)
            if v is not None:
                if attr in ("ge", "gt"):
                    lo = fmt.format(v)
                else:
                    hi = fmt.format(v if v < 1 << 16 else f"2^{v.bit_length() - 1}")
    return ", ".join(x for x in (lo, hi) if x)


def _check_example(spec: str) -> Any:
    import archspec

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "example.yaml")
        path.write_text(spec)
        return archspec.check(path)


def op_reference() -> str:
    """One section per registered op: doc line, parameter table, its example and the shapes
    `check` gives for it."""
    from archspec.ops import OPS

    out: list[str] = []
    for name, op in OPS.items():
        out += [f"### `{name}`", "", op.doc[0].upper() + op.doc[1:] + ".", ""]
        fields = op.Params.model_fields
        if fields:
            out += ["| parameter | type | default | meaning |", "| --- | --- | --- | --- |"]
            for pname, f in fields.items():
                typ = _type(f.annotation)
                rng = _range(f.metadata)
                default = "required" if f.is_required() else f"`{_yaml(f.default)}`"
                if f.default is None and not f.is_required():
                    default = "—"
                out.append(
                    f"| `{pname}` | {typ}{' (' + rng + ')' if rng else ''} | {default} | {f.description or ''} |"
                )
            out.append("")
        else:
            out += [f"No parameters: write it as `- {name}`.", ""]
        shape, layers = op.example
        report = _check_example(wrap_layers(layers, shape))
        if not report.ok:
            raise RuntimeError(f"the example of `{name}` does not check: {report.render_errors()}")
        rows = report.layer_rows()
        outs = " → ".join("x".join(map(str, r["output"])) for r in rows)
        params = sum(r["params"] for r in rows)
        shown = shape.replace(",", "x")
        out += [
            f"<!-- spec: layers input={shape} -->",
            "```yaml",
            layers,
            "```",
            "",
            f"On a {shown} input: {outs}" + (f"; {params:,} parameters." if params else "."),
            "",
        ]
    return "\n".join(out).rstrip()


def top_level_reference() -> str:
    from archspec.lang.spec import SpecModel

    out = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, f in SpecModel.model_fields.items():
        typ = {
            "name": "string",
            "description": "string",
            "input": "[C, H, W] or [F]",
            "num_classes": "int",
            "width": "float",
            "plugins": "list of module names",
        }.get(key, "mapping")
        rng = _range(f.metadata)
        if f.is_required():
            default = "required"
        elif f.default_factory is not None:
            default = f"`{_yaml(f.default_factory())}`"  # type: ignore[call-arg]
        else:
            default = f"`{_yaml(f.default)}`"
        out.append(
            f"| `{key}` | {typ}{' (' + rng + ')' if rng and key != 'input' else ''} | {default} | {f.description} |"
        )
    return "\n".join(out)


def combinator_reference() -> str:
    """One row per registered combinator (a plugin's too): its keys and its doc line."""
    from archspec.lower import COMBINATORS

    out = ["| combinator | keys | what it does |", "| --- | --- | --- |"]
    for name, comb in COMBINATORS.items():
        frag = comb.schema()
        forms = [frag, *frag.get("anyOf", [])]
        keys = next((list(f["properties"]) for f in forms if "properties" in f), [])
        out.append(f"| `{name}` | {', '.join(f'`{k}`' for k in keys)} | {_cell(comb.doc)} |")
    return "\n".join(out)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def cli_reference() -> str:
    import click

    from archspec.cli.main import commands, main

    root = click.Context(main, info_name="archspec")
    out: list[str] = []
    loaded = commands()
    for name in sorted(loaded, key=lambda n: (n != "check", n)):
        cmd = loaded[name]
        ctx = click.Context(cmd, info_name=name, parent=root)
        usage = " ".join(["archspec", name, *cmd.collect_usage_pieces(ctx)])
        doc = inspect.cleandoc((cmd.help or "").split("\f")[0]).replace("\b\n", "")
        paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
        out += [f"### `archspec {name}`", "", "```text", usage, "```", ""]
        out += [line for p in paragraphs for line in (p, "")]
        rows = []
        for p in cmd.params:
            if isinstance(p, click.Argument):
                rows.append(
                    f"| `{p.human_readable_name}` | argument | {'required' if p.required else '—'} | |"
                )
                continue
            assert isinstance(p, click.Option)
            flags = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            if p.is_flag:
                typ = "flag"
            elif isinstance(p.type, click.Choice):
                typ = " \\| ".join(f"`{c}`" for c in p.type.choices)
            elif isinstance(p.type, (click.IntRange, click.FloatRange)):
                kind = "int" if isinstance(p.type, click.IntRange) else "float"
                rng = p.type._describe_range().replace("<=", " ≤ ").replace(">=", " ≥ ")
                typ = f"{kind} ({_cell(rng)})"
            else:
                typ = f"`{p.make_metavar(ctx)}`"  # a pipe inside a code span does not split the row
            default = p.default
            if callable(default):
                text = "computed"
            elif (
                default is None
                or type(default).__name__ == "Sentinel"
                or default == ()
                or (p.is_flag and default is False)
            ):
                text = "—"
            else:
                text = f"`{_yaml(default)}`"
            rows.append(f"| {flags} | {typ} | {text} | {_cell(p.help or '')} |")
        if rows:
            out += [
                "| argument / option | value | default | meaning |",
                "| --- | --- | --- | --- |",
                *rows,
                "",
            ]
    return "\n".join(out).rstrip()


GENERATED: dict[str, dict[str, Callable[[], str]]] = {
    "language.md": {
        "ops": op_reference,
        "top-level": top_level_reference,
        "combinators": combinator_reference,
    },
    "cli.md": {"commands": cli_reference},
}


def stale() -> list[str]:
    """The generated regions whose text in the pages differs from the code's."""
    out = []
    for page, regions in GENERATED.items():
        text = (DOCS / page).read_text(encoding="utf-8")
        out += [f"docs/{page}: {n}" for n, make in regions.items() if region(text, n) != make()]
    return out


def write() -> None:
    for page, regions in GENERATED.items():
        path = DOCS / page
        text = path.read_text(encoding="utf-8")
        for name, make in regions.items():
            text = replace_region(text, name, make())
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    if not DOCS.is_dir():
        print(f"no docs/ next to the package ({DOCS}): run this in a source checkout")
        return 2
    if "--write" in argv:
        write()
        return 0
    old = stale()
    for where in old:
        print(f"stale: {where} (run `python -m archspec.analysis.docs --write`)")
    return 1 if old else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
