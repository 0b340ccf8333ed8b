"""The language server (`archspec lsp`): engine (the cached re-check), features (the answers),
server (pygls, imported only when the command runs)."""
