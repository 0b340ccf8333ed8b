"""The `archspec` command line: `main` is the click group (cli/main.py); the commands live in
cli/check.py, cli/train.py, cli/tools.py, cli/importer.py and cli/lsp.py, what they share in
cli/common.py."""

import os

# Every command is a fresh process, and pydantic's plugin discovery (for observability tools on
# an application's own models) walks every installed distribution the first time a model is
# built: about 30 ms of the ~0.25 s a `check` takes, for models that are archspec's own. A
# user's explicit setting wins; `import archspec` as a library leaves it alone.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from archspec.cli.main import main  # after the environment is set

__all__ = ["main"]
