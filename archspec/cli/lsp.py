"""`archspec lsp`: the language server. pygls is imported only when the command runs, so the
other commands (and `import archspec`) stay as light as they were."""

from __future__ import annotations

import click


@click.command("lsp")
@click.option("--stdio", is_flag=True, help="talk over stdin/stdout (the default and only way)")
def lsp_cmd(stdio: bool) -> None:
    """Run the language server over stdio: check's errors, shapes on hover, completion."""
    try:
        from archspec.lsp.server import main
    except ImportError as e:  # pygls is a dependency, but an install may lack it
        raise click.ClickException(f"the language server needs pygls: {e}") from None
    main()
