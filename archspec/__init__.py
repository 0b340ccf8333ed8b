"""archspec: declarative architecture specs for PyTorch.

`import archspec` never imports torch: `check` and `variants` are pure Python; `build` imports
torch when it is called. The checker itself is imported on first use (`archspec.check`), so the
command line, which starts a fresh process for every command, loads only what its command needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from archspec.analysis.report import Report, check
    from archspec.lang.errors import Diagnostic, SpecError

_LAZY = {
    "Report": "archspec.analysis.report",
    "check": "archspec.analysis.report",
    "Diagnostic": "archspec.lang.errors",
    "SpecError": "archspec.lang.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'archspec' has no attribute {name!r}")


__all__ = ["Diagnostic", "Report", "SpecError", "build", "check", "import_module", "variants"]
__version__ = "0.1.0"


def build(
    path: str | Path,
    variant: str | None = None,
    input_shape: tuple[int, ...] | list[int] | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> nn.Module:
    """Compile a spec into an `nn.Module`; raises SpecError carrying every error of the spec."""
    from archspec.backend.compile import build as _build

    return _build(path, variant, input_shape, num_classes, **options)


def variants(path: str | Path) -> list[str]:
    """The variant names a spec defines (raises SpecError if the file cannot be read)."""
    from archspec.lang.errors import Diagnostic, Loc, SpecError
    from archspec.lang.source import SourceError, read_source

    try:
        src = read_source(path)
    except SourceError as e:
        raise SpecError(
            [Diagnostic(e.loc, e.problem.code, e.problem.message, e.problem.help)]
        ) from None
    except OSError as e:
        raise SpecError(
            [Diagnostic(Loc(str(path)), "E-IO", f"cannot read spec: {e.strerror or e}")]
        ) from None
    root = src.root
    found = root.get("variants") if isinstance(root, dict) else None
    return [str(k) for k in found] if isinstance(found, dict) else []


def import_module(
    model: nn.Module, input_shape: tuple[int, ...] | list[int], **options: Any
) -> str:
    """A spec (YAML text) that builds `model` with the same module paths, so its state_dict
    loads strictly; raises archspec.importer.ImportFailure naming each module path the language
    cannot express (`partial=True` writes those places as comments instead)."""
    from archspec.importer import import_module as _import_module

    return _import_module(model, input_shape, **options)
