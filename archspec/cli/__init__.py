"""The `archspec` command line: `main` is the click group (cli/main.py); the commands live in
cli/check.py, cli/train.py, cli/tools.py, cli/importer.py and cli/lsp.py, what they share in
cli/common.py."""

from archspec.cli.main import main

__all__ = ["main"]
