"""`archspec lsp`: the language server (pygls), over stdio.

Each open spec is checked when it opens and again after every change, once the typing pauses
(`debounce`, 0.2 s): the check runs on a worker thread, so the server keeps answering while it
runs, and an edit arriving meanwhile only schedules the next one. Requests that read the
analysis (hover, inlay hints...) first bring it up to date with the buffer they are about.

Options (`initializationOptions`): `variant` (check that variant of specs that define it, e.g.
`resnet152`), `debounce` (seconds).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path
from pygls.workspace import ServerTextPosition, ServerTextRange, TextDocument

from archspec.analysis.report import Report
from archspec.lang.errors import Diagnostic, Loc
from archspec.lsp import features as F
from archspec.lsp.engine import Analysis, Engine

log = logging.getLogger(__name__)

STALE_AFTER = 0.5  # seconds a request waits for the check of the latest edit
KINDS = {
    "op": lsp.CompletionItemKind.Function,
    "combinator": lsp.CompletionItemKind.Keyword,
    "template": lsp.CompletionItemKind.Class,
    "param": lsp.CompletionItemKind.Property,
    "variable": lsp.CompletionItemKind.Variable,
    "variant": lsp.CompletionItemKind.EnumMember,
}


@dataclass
class Doc:
    """What the server knows of one open spec."""

    timer: asyncio.TimerHandle | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    version: int | None = None  # of the buffer the analysis is of
    analysis: Analysis | None = None
    index: F.Index | None = None
    good: Analysis | None = None  # the last analysis whose text parsed: names for completion


@dataclass
class Here:
    """A request's document, brought up to date, and its position in code points."""

    doc: Doc
    buffer: TextDocument
    lines: list[str]
    line: int
    col: int

    @property
    def src(self) -> Any:
        return self.doc.analysis.source if self.doc.analysis is not None else None


class ArchspecServer(LanguageServer):
    def __init__(self) -> None:
        from archspec import __version__

        super().__init__("archspec", __version__)
        self.engine = Engine()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archspec-check")
        self.docs: dict[str, Doc] = {}
        self.variant: str | None = None
        self.debounce = 0.2

    # ------------------------------------------------------------------ checking

    def schedule(self, uri: str, delay: float) -> None:
        doc = self.docs.setdefault(uri, Doc())
        if doc.timer is not None:
            doc.timer.cancel()
        loop = asyncio.get_running_loop()
        doc.timer = loop.call_later(delay, lambda: asyncio.ensure_future(self.refresh(uri)))

    async def refresh(self, uri: str) -> Doc:
        """Bring the analysis of `uri` up to date with its buffer, publishing its diagnostics."""
        doc = self.docs.setdefault(uri, Doc())
        if doc.timer is not None:
            doc.timer.cancel()
            doc.timer = None
        async with doc.lock:
            buffer = self.workspace.get_text_document(uri)
            if doc.analysis is not None and doc.version == buffer.version:
                return doc
            text, version = buffer.source, buffer.version
            path = to_fs_path(uri) or uri
            loop = asyncio.get_running_loop()
            try:
                analysis = await loop.run_in_executor(self.pool, self.check, text, path)
            except Exception as e:  # a bug in archspec: say so, keep serving
                log.exception("checking %s failed", path)
                report = Report(path, self.variant)
                report.errors = [
                    Diagnostic(
                        Loc(path),
                        "internal",
                        f"internal error: {type(e).__name__}: {e}",
                        "please report this with the spec that caused it",
                    )
                ]
                analysis = Analysis(report, None)
            doc.analysis, doc.version = analysis, version
            doc.index = F.Index.build(analysis)
            if analysis.source is not None:
                doc.good = analysis
            if uri in self.workspace.text_documents:  # not closed meanwhile
                self.publish(uri, buffer, analysis, version)
        return doc

    def check(self, text: str, path: str) -> Analysis:
        """The spec as `check` sees it: the configured variant where the spec defines it."""
        if self.variant is not None:
            analysis = self.engine.check(text, path, self.variant)
            if not any(d.code == "E-VARIANT" for d in analysis.report.errors):
                return analysis
        return self.engine.check(text, path)

    def publish(self, uri: str, buffer: TextDocument, analysis: Analysis, version: Any) -> None:
        out = []
        for span, d in F.diagnostics(analysis):
            message = d.message + (f"\nnote: {d.note}" if d.note else "")
            message += f"\nhelp: {d.help}" if d.help else ""
            out.append(
                lsp.Diagnostic(
                    range=self.range(buffer, span),
                    message=message,
                    severity=lsp.DiagnosticSeverity.Error,
                    code=d.code,
                    source="archspec",
                    data={"message": d.message, "help": d.help}
                    | ({"note": d.note} if d.note else {}),
                )
            )
        self.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(uri=uri, diagnostics=out, version=version)
        )

    # ------------------------------------------------------------------ positions

    @staticmethod
    def range(buffer: TextDocument, span: F.Span) -> lsp.Range:
        start = ServerTextPosition(span.line, span.start)
        return buffer.range_to_client_units(
            ServerTextRange(start, ServerTextPosition(span.line, span.end))
        )

    async def here(self, uri: str, pos: lsp.Position) -> Here:
        """The request's document, analysed as its buffer is now, or, if that check runs for
        more than half a second (a huge spec), as it was: a request never waits long."""
        try:
            doc = await asyncio.wait_for(asyncio.shield(self.refresh(uri)), STALE_AFTER)
        except asyncio.TimeoutError:
            doc = self.docs.setdefault(uri, Doc())
        buffer = self.workspace.get_text_document(uri)
        p = buffer.position_from_client_units(pos)
        return Here(doc, buffer, _lines(buffer), p.line, p.character)


def _lines(buffer: TextDocument) -> list[str]:
    return buffer.source.split("\n")


server = ArchspecServer()


@server.feature(lsp.INITIALIZE)
def initialize(ls: ArchspecServer, params: lsp.InitializeParams) -> None:
    opts = params.initialization_options
    if isinstance(opts, dict):
        variant = opts.get("variant")
        ls.variant = str(variant) if variant else None
        debounce = opts.get("debounce")
        if isinstance(debounce, (int, float)) and 0 <= debounce <= 5:
            ls.debounce = float(debounce)


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
async def did_open(ls: ArchspecServer, params: lsp.DidOpenTextDocumentParams) -> None:
    await ls.refresh(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: ArchspecServer, params: lsp.DidChangeTextDocumentParams) -> None:
    ls.schedule(params.text_document.uri, ls.debounce)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: ArchspecServer, params: lsp.DidCloseTextDocumentParams) -> None:
    doc = ls.docs.pop(params.text_document.uri, None)
    if doc is not None and doc.timer is not None:
        doc.timer.cancel()
    ls.text_document_publish_diagnostics(
        lsp.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[])
    )


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
async def hover(ls: ArchspecServer, params: lsp.HoverParams) -> lsp.Hover | None:
    at = await ls.here(params.text_document.uri, params.position)
    text = F.hover(at.doc.index, at.line, at.col) if at.doc.index is not None else None
    if text is None:
        return None
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text))


@server.feature(lsp.TEXT_DOCUMENT_INLAY_HINT)
async def inlay_hint(ls: ArchspecServer, params: lsp.InlayHintParams) -> list[lsp.InlayHint]:
    uri = params.text_document.uri
    doc = await ls.refresh(uri)
    buffer = ls.workspace.get_text_document(uri)
    if doc.index is None or doc.analysis is None or doc.analysis.source is None:
        return []
    lines = _lines(buffer)
    first, last = params.range.start.line, params.range.end.line
    out = []
    for line, col, label in F.inlay_hints(doc.index, lines):
        if first <= line <= last:
            pos = buffer.position_to_client_units(ServerTextPosition(line, col))
            out.append(lsp.InlayHint(position=pos, label=label, padding_left=True))
    return out


@server.feature(
    lsp.TEXT_DOCUMENT_COMPLETION,
    lsp.CompletionOptions(trigger_characters=["$", "-", "{", ",", " ", "["]),
)
async def completion(ls: ArchspecServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    doc = ls.docs.get(params.text_document.uri) or Doc()
    buffer = ls.workspace.get_text_document(params.text_document.uri)
    p = buffer.position_from_client_units(params.position)
    src = doc.good.source if doc.good is not None else None  # the buffer may not parse now
    items = [
        lsp.CompletionItem(label=c.label, kind=KINDS[c.kind], detail=c.detail or None)
        for c in F.complete(src, _lines(buffer), p.line, p.character)
    ]
    return lsp.CompletionList(is_incomplete=False, items=items)


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
async def definition(ls: ArchspecServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    at = await ls.here(params.text_document.uri, params.position)
    loc = F.definition(at.src, at.lines, at.line, at.col)
    if loc is None:
        return None
    return lsp.Location(params.text_document.uri, ls.range(at.buffer, F.name_span(loc, at.lines)))


@server.feature(lsp.TEXT_DOCUMENT_PREPARE_RENAME)
async def prepare_rename(ls: ArchspecServer, params: lsp.PrepareRenameParams) -> lsp.Range | None:
    at = await ls.here(params.text_document.uri, params.position)
    got = F.template_at(at.src, at.lines, at.line, at.col)
    return ls.range(at.buffer, got[1]) if got is not None else None


@server.feature(lsp.TEXT_DOCUMENT_RENAME)
async def rename(ls: ArchspecServer, params: lsp.RenameParams) -> lsp.WorkspaceEdit | None:
    at = await ls.here(params.text_document.uri, params.position)
    new = params.new_name
    if not F.NAME.fullmatch(new):
        raise ValueError(f"`{new}` cannot name a template: use letters, digits and _")
    if at.src is None or new in F.templates(at.src):
        return None
    spans = F.rename(at.src, at.lines, at.line, at.col, new)
    if not spans:
        return None
    edits = [lsp.TextEdit(range=ls.range(at.buffer, s), new_text=new) for s in spans]
    return lsp.WorkspaceEdit(changes={params.text_document.uri: edits})


def main() -> None:
    """Serve over stdin/stdout until the client says exit."""
    logging.basicConfig(level=logging.WARNING)
    server.start_io()


__all__ = ["ArchspecServer", "main", "server"]
