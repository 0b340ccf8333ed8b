"""The parts of the documentation that are generated from the code, and the reader of doc pages.

The op reference (docs/language.md) comes from the op registry, the top-level keys from the
spec model and the CLI reference (docs/cli.md) from the click commands, so the pages cannot
drift from the code: tests/test_docs.py regenerates each region and compares. After changing an
op, a spec key or a command, rewrite the regions with

    python tests/docs_reference.py

Code blocks in the pages follow a convention the tests read (HTML comments right before a
fence, invisible in the rendered site):

- a `yaml` block with a top-level `stages:` is a whole spec: it must pass `archspec check`;
- `<!-- spec: layers input=C,H,W -->`: the block is a list of layers, checked as one stage of
  a spec with that input;
- `<!-- expect: E-CODE[, E-CODE...] -->`: the spec must fail with exactly these error codes;
- `<!-- fragment: why -->`: a piece of a spec shown on its own, not checked;
- `bash`/`console` blocks are run from a scratch directory that sees `specs/`, `docs/` and
  `benchmarks/`; a `console` block's output must match what the command prints (a line `...`
  matches any number of lines); `<!-- exit: N -->` is the exit status of the block's last
  command (the others, and every command without it, must exit 0); `<!-- no-run: why -->`
  skips a block;
- `pycon` blocks are doctests.
"""

from __future__ import annotations

import inspect
import re
import sys
import tempfile
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CODE_RE = re.compile(r'"(E-[A-Z0-9-]+)"')

# One minimal example per op: the input it is shown on, and the layers. A new op needs one here.
OP_EXAMPLES: dict[str, tuple[str, str]] = {
    "conv": (
        "3,32,32",
        (
            "- conv: {out: 16, k: 3, pad: 1}            # 3x3, same size\n"
            "- conv: {out: 32, k: 3, stride: 2, pad: 1}  # halves the size\n"
            "- conv: {out: 32, k: [1, 7], pad: [0, 3]}   # rectangular kernel\n"
            "- conv: {out: 32, k: 3, pad: same, groups: 32, bias: false}  # depthwise"
        ),
    ),
    "maxpool": ("16,32,32", "- maxpool: {k: 3, stride: 2, pad: 1}"),
    "avgpool": ("16,32,32", "- avgpool: {k: 2, stride: 2}"),
    "adaptive_avgpool": ("16,13,13", "- adaptive_avgpool: {out: 6}"),
    "adaptive_maxpool": ("16,13,13", "- adaptive_maxpool: {out: [2, 3]}"),
    "gap": ("16,7,7", "- gap"),
    "gmp": ("16,7,7", "- gmp"),
    "flatten": ("16,4,4", "- flatten"),
    "linear": ("256", "- linear: {out: 10}"),
    "bn": ("16,8,8", "- bn\n- bn: {eps: 0.001, momentum: 0.01}"),
    "lrn": ("96,27,27", "- lrn: {size: 5, alpha: 0.0001, beta: 0.75, k: 2.0}"),
    "dropout": ("256", "- dropout: {p: 0.3}"),
    "relu": ("16,8,8", "- relu\n- relu: {inplace: true}"),
    "relu6": ("16,8,8", "- relu6"),
    "leaky_relu": ("16,8,8", "- leaky_relu: {slope: 0.2}"),
    "silu": ("16,8,8", "- silu"),
    "hardswish": ("16,8,8", "- hardswish"),
    "sigmoid": ("16,8,8", "- sigmoid"),
    "tanh": ("16,8,8", "- tanh"),
    "gelu": ("16,8,8", "- gelu"),
    "identity": ("16,8,8", "- identity"),
}


# --------------------------------------------------------------------------- reading pages


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marks: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARK = re.compile(r"^\s*<!--\s*([\w-]+)\s*(?::\s*(.*?))?\s*-->\s*$")


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3)
        marks: dict[str, str] = {}
        j = i - 1
        while j >= 0 and (not lines[j].strip() or MARK.match(lines[j])):
            mm = MARK.match(lines[j])
            if mm:
                marks.setdefault(mm.group(1), (mm.group(2) or "").strip())
            elif marks:  # a blank line after the marks ends them
                break
            j -= 1
        body: list[str] = []
        k = i + 1
        while k < len(lines) and not re.match(
            rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[k]
        ):
            body.append(
                lines[k][len(indent) :] if lines[k].startswith(indent) else lines[k].lstrip()
            )
            k += 1
        out.append(Block(page, i + 1, lang.lower(), "\n".join(body) + "\n", marks))
        i = k + 1
    return out


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def wrap_layers(layers: str, shape: str) -> str:
    """A whole spec whose one stage `s` is the given list of layers."""
    dims = [int(d) for d in shape.split(",")]
    body = "\n".join("    " + ln for ln in layers.strip("\n").splitlines())
    return f"name: example\ninput: {dims}\nnum_classes: 10\nstages:\n  s:\n{body}\n"


SNIPPET = re.compile(r'^--8<--\s+"([^"]+)"\s*$', re.MULTILINE)


def expand_snippets(text: str) -> str:
    """Inline `--8<-- "path"` lines (pymdownx.snippets, paths from the repository root)."""
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8").rstrip("\n"), text)


def spec_text(block: Block) -> str | None:
    """The spec a yaml block stands for, or None when it is not a spec (a marked fragment)."""
    if "fragment" in block.marks:
        return None
    text = expand_snippets(block.text)
    kind = block.marks.get("spec", "")
    if kind.startswith("layers"):
        m = re.search(r"input=([\d,]+)", kind)
        return wrap_layers(text, m.group(1) if m else "3,32,32")
    return text


# --------------------------------------------------------------------------- generated regions

BEGIN = "<!-- BEGIN GENERATED: {} (python tests/docs_reference.py) -->"
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
    from archspec.ops import OPS

    missing = sorted(set(OPS) - set(OP_EXAMPLES))
    if missing:
        raise RuntimeError(
            f"add an example for op(s) {', '.join(missing)} to OP_EXAMPLES in {__file__}"
        )
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
        shape, layers = OP_EXAMPLES[name]
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
        }.get(key, "mapping")
        rng = _range(f.metadata)
        if f.is_required():
            default = "required"
        elif f.default_factory is not None:
            default = "`{}`"
        else:
            default = f"`{_yaml(f.default)}`"
        out.append(
            f"| `{key}` | {typ}{' (' + rng + ')' if rng and key != 'input' else ''} | {default} | {f.description} |"
        )
    return "\n".join(out)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def cli_reference() -> str:
    import click

    from archspec.cli import main

    root = click.Context(main, info_name="archspec")
    out: list[str] = []
    for name in sorted(main.commands, key=lambda n: (n != "check", n)):
        cmd = main.commands[name]
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
    "language.md": {"ops": op_reference, "top-level": top_level_reference},
    "cli.md": {"commands": cli_reference},
}


def error_codes_in_source() -> set[str]:
    codes: set[str] = set()
    for path in (ROOT / "archspec").rglob("*.py"):
        codes |= set(CODE_RE.findall(path.read_text(encoding="utf-8")))
    return codes


def write() -> None:
    for page, regions in GENERATED.items():
        path = DOCS / page
        text = path.read_text(encoding="utf-8")
        for name, make in regions.items():
            text = replace_region(text, name, make())
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    write()
