"""`archspec lsp` end to end: a real LSP client (pytest-lsp) talks to `python -m archspec lsp`
over stdio, and what it gets is compared with what `archspec check` says of the same text."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import archspec
from archspec.analysis.table import render_table

pytest_lsp = pytest.importorskip("pytest_lsp")
from lsprotocol import types as lsp
from pytest_lsp import ClientServerConfig, LanguageClient

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

# A residual whose main path makes 32 channels of the 16 it gets, with an identity shortcut.
BROKEN = """\
name: net
input: [16, 32, 32]
templates:
  block:
    params: {c: int}
    residual:
      main:
        - conv: {out: $c, k: 3, pad: 1}
        - bn
      shortcut: identity
stages:
  stem:
    - conv: {out: 16, k: 3, pad: 1}
    - relu
  a:
    residual:
      main:
        - conv: {out: 32, k: 3, pad: 1}
        - bn
      shortcut: identity
  b: {repeat: 2, use: block, with: {c: 16}}
  head: [gap, flatten, linear: {out: 10}]
"""
FIXED = BROKEN.replace("- conv: {out: 32, k: 3, pad: 1}", "- conv: {out: 16, k: 3, pad: 1}")


@pytest_lsp.fixture(
    scope="module",
    config=ClientServerConfig(
        server_command=[sys.executable, "-m", "archspec", "lsp"], server_env=ENV
    ),
)
async def client(lsp_client: LanguageClient):
    params = lsp.InitializeParams(
        capabilities=lsp.ClientCapabilities(), initialization_options={"debounce": 0.02}
    )
    await lsp_client.initialize_session(params)
    yield
    await lsp_client.shutdown_session()


def check_json(tmp_path: Path, text: str) -> dict:
    """What `archspec check --json` prints for the text (the same call, in this process)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    return archspec.check(spec).to_json()


async def open_doc(client: LanguageClient, path: Path, text: str) -> str:
    path.write_text(text)  # the server reads the buffer, not the file: see test_buffer_not_disk
    uri = path.as_uri()
    client.text_document_did_open(
        lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, "yaml", 1, text))
    )
    await diagnostics_of(client, uri)
    return uri


async def diagnostics_of(client: LanguageClient, uri: str) -> list[lsp.Diagnostic]:
    client.diagnostics.pop(uri, None)
    while uri not in client.diagnostics:
        await client.wait_for_notification(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    return list(client.diagnostics[uri])


async def change(client: LanguageClient, uri: str, version: int, text: str) -> None:
    client.text_document_did_change(
        lsp.DidChangeTextDocumentParams(
            lsp.VersionedTextDocumentIdentifier(version=version, uri=uri),
            [lsp.TextDocumentContentChangeWholeDocument(text=text)],
        )
    )


def position_of(text: str, needle: str, offset: int = 0) -> lsp.Position:
    for i, line in enumerate(text.split("\n")):
        if needle in line:
            return lsp.Position(i, line.index(needle) + offset)
    raise AssertionError(needle)


@pytest.mark.asyncio(loop_scope="module")
async def test_wrong_channel_count_is_checks_error_at_its_place_then_cleared(
    client: LanguageClient, tmp_path: Path
):
    expected = check_json(tmp_path, BROKEN)["errors"]
    assert [e["code"] for e in expected] == ["E-MERGE-ADD"]
    uri = (tmp_path / "net.yaml").as_uri()
    client.text_document_did_open(
        lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, "yaml", 1, BROKEN))
    )
    while uri not in client.diagnostics:
        await client.wait_for_notification(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    (got,) = client.diagnostics[uri]
    (want,) = expected
    assert got.code == want["code"]
    assert (got.range.start.line, got.range.start.character) == (
        want["line"] - 1,
        want["column"] - 1,
    )
    assert BROKEN.split("\n")[want["line"] - 1][want["column"] - 1 :].startswith("residual")
    assert got.range.end.character == got.range.start.character + len("residual")
    assert got.data == {"message": want["message"], "help": want["help"]}
    assert got.message == f"{want['message']}\nhelp: {want['help']}"

    await change(client, uri, 2, FIXED)
    assert await diagnostics_of(client, uri) == []
    await change(client, uri, 3, BROKEN)
    assert [d.code for d in await diagnostics_of(client, uri)] == ["E-MERGE-ADD"]


@pytest.mark.asyncio(loop_scope="module")
async def test_hover_on_a_conv_shows_its_row_of_checks_table(client: LanguageClient, tmp_path):
    uri = await open_doc(client, tmp_path / "hover.yaml", FIXED)
    result = await client.text_document_hover_async(
        lsp.HoverParams(lsp.TextDocumentIdentifier(uri), position_of(FIXED, "conv: {out: 16, k: 3"))
    )
    table = render_table(archspec.check(tmp_path / "hover.yaml"))  # what `check` prints
    row = next(line for line in table.split("\n") if line.startswith("stem.0 "))
    assert "stem.0" in result.contents.value and "16x32x32" in result.contents.value
    hovered = next(ln for ln in result.contents.value.split("\n") if ln.startswith("stem.0"))
    assert hovered.split() == row.split()  # path, op, output, params, MACs, RF as check prints

    hints = await client.text_document_inlay_hint_async(
        lsp.InlayHintParams(
            lsp.TextDocumentIdentifier(uri), lsp.Range(lsp.Position(0, 0), lsp.Position(99, 0))
        )
    )
    by_line = {h.position.line: h.label for h in hints}
    assert by_line[position_of(FIXED, "  head:").line] == "→ 10"
    assert by_line[position_of(FIXED, "- relu").line] == "→ 16x32x32"
    assert by_line[position_of(FIXED, "conv: {out: $c").line] == "→ 16x32x32"  # both uses
    # A template body: one row per use.
    result = await client.text_document_hover_async(
        lsp.HoverParams(lsp.TextDocumentIdentifier(uri), position_of(FIXED, "conv: {out: $c"))
    )
    assert "2 uses" in result.contents.value
    for path in ("b.0.0", "b.1.0"):
        want = next(line for line in table.split("\n") if line.startswith(path + " "))
        got = next(ln for ln in result.contents.value.split("\n") if ln.startswith(path + " "))
        assert got.split() == want.split()


@pytest.mark.asyncio(loop_scope="module")
async def test_completion_offers_ops_after_a_dash_and_params_in_a_mapping(
    client: LanguageClient, tmp_path
):
    text = FIXED.replace("    - relu\n", "    - relu\n    - \n")
    uri = await open_doc(client, tmp_path / "complete.yaml", text)
    pos = lsp.Position(text.split("\n").index("    - "), 6)
    got = await client.text_document_completion_async(
        lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), pos)
    )
    labels = {item.label for item in got.items}
    assert {"conv", "relu", "residual", "block"} <= labels
    # Inside `conv: {...}`: conv's parameters; after `$` inside the template: its `c`.
    pos = position_of(text, "conv: {out: 16, k: 3, pad: 1}", len("conv: {out: 16, "))
    got = await client.text_document_completion_async(
        lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), pos)
    )
    assert {"k", "stride", "groups"} <= {i.label for i in got.items}
    pos = position_of(text, "conv: {out: $c", len("conv: {out: $"))
    got = await client.text_document_completion_async(
        lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), pos)
    )
    assert {"c", "in", "num_classes"} <= {i.label for i in got.items}


@pytest.mark.asyncio(loop_scope="module")
async def test_definition_and_rename_of_a_template(client: LanguageClient, tmp_path):
    uri = await open_doc(client, tmp_path / "rename.yaml", FIXED)
    use = position_of(FIXED, "use: block", len("use: "))
    got = await client.text_document_definition_async(
        lsp.DefinitionParams(lsp.TextDocumentIdentifier(uri), use)
    )
    assert got.range.start == position_of(FIXED, "  block:", 2)
    edit = await client.text_document_rename_async(
        lsp.RenameParams(lsp.TextDocumentIdentifier(uri), use, "unit")
    )
    edits = edit.changes[uri]
    assert len(edits) == 2
    renamed = _apply(FIXED, edits)
    assert "  unit:\n" in renamed and "use: unit" in renamed and "block" not in renamed
    assert check_json(tmp_path, renamed)["errors"] == []


@pytest.mark.asyncio(loop_scope="module")
async def test_yaml_that_does_not_parse_gives_one_diagnostic(client: LanguageClient, tmp_path):
    text = FIXED.replace("  head: [gap, flatten", "  head: [gap, {flatten")
    uri = await open_doc(client, tmp_path / "bad.yaml", FIXED)
    await change(client, uri, 2, text)
    (got,) = await diagnostics_of(client, uri)
    (want,) = check_json(tmp_path, text)["errors"]
    assert got.code == want["code"] == "E-YAML-SYNTAX"
    assert got.range.start == lsp.Position(want["line"] - 1, want["column"] - 1)
    # The server is still there: a hover answers (nothing to show at a broken line).
    await client.text_document_hover_async(
        lsp.HoverParams(lsp.TextDocumentIdentifier(uri), lsp.Position(0, 0))
    )


@pytest.mark.asyncio(loop_scope="module")
async def test_buffer_not_disk(client: LanguageClient, tmp_path):
    path = tmp_path / "buffer.yaml"
    path.write_text(FIXED)
    uri = path.as_uri()
    client.text_document_did_open(
        lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, "yaml", 1, BROKEN))
    )
    assert [d.code for d in await diagnostics_of(client, uri)] == ["E-MERGE-ADD"]


def _apply(text: str, edits: list[lsp.TextEdit]) -> str:
    lines = text.split("\n")
    for e in sorted(
        edits, key=lambda e: (e.range.start.line, e.range.start.character), reverse=True
    ):
        assert e.range.start.line == e.range.end.line
        ln = lines[e.range.start.line]
        lines[e.range.start.line] = (
            ln[: e.range.start.character] + e.new_text + ln[e.range.end.character :]
        )
    return "\n".join(lines)


# Twelve thousand layers, each its own shape: a check of a second or more, run while other
# requests come in.
HUGE = """\
name: huge
input: [4, 8, 8]
templates:
  unit:
    body: [conv: {out: $i + 4, k: 3, pad: 1}, bn, relu, conv: {out: 4, k: 1}, bn, relu, identity]
stages:
  a: {repeat: 600, use: unit}
  b: {repeat: 600, use: unit}
  c: {repeat: 600, use: unit}
"""


@pytest.mark.asyncio(loop_scope="module")
async def test_a_long_check_blocks_no_request(client: LanguageClient, tmp_path):
    small = await open_doc(client, tmp_path / "small.yaml", FIXED)
    huge = (tmp_path / "huge.yaml").as_uri()
    client.text_document_did_open(
        lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(huge, "yaml", 1, HUGE))
    )
    got = await client.text_document_hover_async(
        lsp.HoverParams(lsp.TextDocumentIdentifier(small), position_of(FIXED, "conv: {out: 16"))
    )
    assert "16x32x32" in got.contents.value
    await client.text_document_hover_async(  # the huge one: answered from what is known
        lsp.HoverParams(lsp.TextDocumentIdentifier(huge), lsp.Position(7, 4))
    )
    assert huge not in client.diagnostics  # both answered while the huge check still runs
    while huge not in client.diagnostics:
        await client.wait_for_notification(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    assert list(client.diagnostics[huge]) == []
