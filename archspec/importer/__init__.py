"""`archspec import`: a PyTorch model -> a readable spec that builds the same network.

trace (torch.fx, module stacks) -> structure (trace.Recover) -> YAML form with settled module
names (emit.Emitter) -> templates and repeats (templates.py) -> YAML text (emit.to_text).
The result is checked before it is returned: its built model's state_dict keys and shapes
equal the source's, or the import fails (never a silently different network)."""

from __future__ import annotations

import copy
from typing import Any

from archspec.importer.emit import Emitter, Marker, Names, to_text
from archspec.importer.trace import (
    It,
    Located,
    Recover,
    conditional_residuals,
    has_state,
    trace,
)

SCHEMA = "archspec.schema.json"  # `archspec schema -o archspec.schema.json` writes it


class ImportFailure(Exception):
    """What the language cannot express, one `Located` per place."""

    def __init__(self, problems: list[Located]):
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def import_module(
    model: Any,
    input_shape: tuple[int, ...] | list[int],
    *,
    name: str | None = None,
    source: str | None = None,
    partial: bool = False,
    schema: str = SCHEMA,
    verify: bool = True,
) -> str:
    """The YAML text of a spec that builds `model` (same module paths, so its state_dict loads
    strictly). Raises ImportFailure naming every module path the language cannot express; with
    `partial`, those places are written as `# archspec import: cannot express ...` comments.
    `verify` builds the written spec, loads the model's state_dict into it strictly and compares
    the outputs on a random input: a difference is an ImportFailure, never a returned spec."""
    text, problems = _import(model, tuple(input_shape), name, source, schema, verify)
    if problems and not partial:
        raise ImportFailure(problems)
    return text


def _import(
    model, shape, name=None, source=None, schema=SCHEMA, verify=True
) -> tuple[str, list[Located]]:
    """The spec text (places the language cannot express written as comments) and those
    places: every one of them, not only the first."""
    partial = True
    was_training = model.training
    model.eval()
    try:
        try:
            gm = trace(model, shape)
            rec = Recover(gm, model, partial)
            items = rec.root()
            conditional_residuals(items, model, rec.called)
            aux = _aux_heads(model, shape, rec, partial)
            problems = list(rec.problems)
            for path, mod in model.named_children():
                used = any(c == path or c.startswith(path + ".") for c in rec.called)
                if not used and path not in aux and has_state(mod):
                    why = "never called, but has weights"
                    problems.append(Located(path, type(mod).__qualname__, why))
            doc, classes = _document(model, shape, name, items, aux)
            order = {path: i for i, (path, _) in enumerate(model.named_modules())}
            problems.sort(key=lambda p: order.get(p.path, 0))  # in the model's order
        except Located as e:
            return _failed_text(model, shape, name, source, schema, e), [e]
        from archspec.importer.templates import templatize

        templatize(doc, classes)
        text = to_text(doc, _header(model, source, schema, problems))
        if verify and not problems:
            wrong = _differs(text, model, shape)
            if wrong:
                problems = [Located("", "the written spec", wrong)]
    finally:
        model.train(was_training)
    return text, problems


def _differs(text: str, model, shape) -> str | None:
    """Why the spec `text` does not build `model` (None: it does): it must check, have the same
    state_dict keys and shapes, and give the same eval outputs with the model's weights."""
    import torch

    from archspec.analysis.report import check_text
    from archspec.backend.compile import build_from_report

    report = check_text(text, "<imported>")
    if not report.ok:
        d = report.errors[0]
        return f"it does not check: {d.loc.line}:{d.loc.column}: {d.code}: {d.message}"
    ours = build_from_report(report, device="meta", max_params=1 << 62)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        other = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        return f"its state_dict differs (missing {missing[:2]}, unexpected {extra[:2]}, shapes {other[:2]})"
    ours.load_state_dict(model.state_dict(), strict=True, assign=True)
    ours.eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(x), ours(x)
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return "its output has another shape"
    scale = a.abs().max().item()
    diff = (a - b).abs().max().item()
    if not diff <= 1e-5 * scale + 1e-6:
        return f"its outputs differ by {diff:.3g} (of {scale:.3g})"
    return None


def _header(model, source, schema, problems) -> list[str]:
    src = source or f"{type(model).__module__}.{type(model).__qualname__}"
    lines = [
        f"# yaml-language-server: $schema={schema}",
        f"# Imported by `archspec import` from {src}.",
        "# Module paths are the source model's, so its state_dict loads strictly.",
    ]
    if problems:
        lines.append(
            f"# archspec import: PARTIAL, {len(problems)} place(s) could not be expressed:"
        )
        lines += [f"#   {p.path} ({p.what}){': ' + p.why if p.why else ''}" for p in problems]
    return lines


def _failed_text(model, shape, name, source, schema, e: Located) -> str:
    doc: dict[str, Any] = {"name": name or _default_name(model), "input": list(shape)}
    doc["stages"] = {}
    text = to_text(doc, _header(model, source, schema, [e]))
    return text + f"  # archspec import: cannot express {e.path} ({e.what})\n"


def _default_name(model) -> str:
    import re

    return re.sub(r"\W", "_", type(model).__name__.lower()) or "imported"


def _document(
    model, shape, name, items: list[It], aux: dict[str, tuple[str, It]]
) -> tuple[dict[str, Any], dict[int, str]]:
    em = Emitter()
    from archspec.importer.emit import claims

    names = Names(claims(items) | set(aux))
    stages: dict[str, Any] = {}
    for it in items:
        if it.kind == "marker":
            key, _ = names.claim(None, None, "unsupported")
            stages[key] = Marker(it.text)
            continue
        if it.inline:
            what = {"concat": "torch.cat", "mul": "operator.mul"}.get(it.merge, "add")
            kinds = {"scale": "operator.mul", "split": "Tensor.chunk", "residual": "operator.add"}
            what = kinds.get(it.kind, what)
            why = "branches that rejoin in the model's own forward: stages are one chain"
            raise Located("", what, why + " (move them into a module of their own)")
        key, _ = names.claim(
            it.name, it.op if it.name is None and it.op else None, it.op or it.kind
        )
        stages[key] = em.body(it, Names(_own(it)), None)
        for aname, (after, head) in aux.items():
            if after == key:
                names.claim(aname)
                stages[aname] = {"aux": em.body(head, Names(_own(head)), None)}
                em.classes[id(stages[aname])] = head.cls
    doc: dict[str, Any] = {"name": name or _default_name(model), "input": list(shape)}
    doc["stages"] = stages
    return doc, em.classes


def _own(it: It) -> set[str]:
    from archspec.importer.emit import own_claims

    return own_claims(it)


def _aux_heads(model, shape, rec: Recover, partial: bool) -> dict[str, tuple[str, It]]:
    """Top-level children with weights that the eval-mode forward never calls (GoogLeNet's
    aux1/aux2, Inception v3's AuxLogits): traced in training mode, each becomes an `aux` stage
    after the stage whose output it reads."""
    missing = [
        p
        for p, m in model.named_children()
        if has_state(m) and not any(c == p or c.startswith(p + ".") for c in rec.called)
    ]
    if not missing:
        return {}
    twin = copy.deepcopy(model).train()
    try:
        gm = trace(twin, shape, batch=2)
    except Located:
        return {}
    trec = Recover(gm, twin, partial)
    from archspec.importer.trace import stack_of

    nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    units = trec.units(nodes, 0)
    producer = {u.out: u for u in units if u.out is not None}
    out: dict[str, tuple[str, It]] = {}
    for u in units:
        if u.path not in missing or len(u.ins) != 1:
            continue
        src = producer.get(u.ins[0])
        if src is None or not src.path or src.path not in rec.called or u.out is None:
            continue
        inner = trec.scope(u.path, u.nodes, 1, u.ins[0], u.out)
        head = It("list", items=inner, cls=type(u.module).__name__)
        out[u.path] = (src.path, head)
    del stack_of
    return out
