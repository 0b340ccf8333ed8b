"""Plugins: the user's own modules, registering ops (or combinators) with the public API the
built-ins use (`archspec.ops.register`; docs/plugins.md).

A spec names them in a top-level `plugins: [my_pkg.my_ops]` list, and installed packages may
advertise modules under the `archspec.plugins` entry-point group (loaded when a spec names an
op nothing else knows). Each is imported by module
name, if importable — a spec never runs a file path. Importing one must not import torch: its
shape rule is plain Python and its torch module is built in `build`. A missing plugin, one that
raises on import, or an entry that is not a dotted module name is `E-PLUGIN`, located at its
entry.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
from typing import Any

from archspec.lang.errors import Collector, Loc, Problem, raised_at
from archspec.lang.source import loc_of
from archspec.ops import OPS

GROUP = "archspec.plugins"
MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_entry_points: list[Problem] | None = None  # loaded once per process: their problems


def import_plugin(name: str) -> Problem | None:
    """Import one plugin module by name; the problem if it is not a module name, missing or
    fails. A failed import leaves no half-registered ops behind."""
    if not MODULE.match(name):
        return Problem(
            "E-PLUGIN",
            f"plugin `{name}` is not a module name",
            "name an importable module, like `my_pkg.my_ops`; a spec never runs a file by path",
        )
    return _guarded(name, lambda: importlib.import_module(name))


def _guarded(name: str, load: Any) -> Problem | None:
    before = [set(r) for r in _registries()]
    problem = None
    try:
        with contextlib.redirect_stdout(sys.stderr):  # `check --json` owns stdout
            load()
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            problem = Problem(
                "E-PLUGIN",
                f"plugin `{name}` is not installed: no module named `{e.name}`",
                "install the package that provides it, or put its folder on PYTHONPATH",
            )
        else:
            problem = _failed(name, e)
    except (Exception, SystemExit) as e:  # noqa: BLE001  # a plugin may raise anything
        problem = _failed(name, e)
    else:
        clash = sorted((set(OPS) - before[0]) & _reserved())
        if clash:
            problem = Problem(
                "E-PLUGIN",
                f"plugin `{name}` registers op `{clash[0]}`, a name the language reserves",
                "give the op another name: combinators and repeat keys cannot be ops",
            )
    if problem is not None:  # no half-registered names stay behind
        for registry, names in zip(_registries(), before):
            for added in set(registry) - names:
                del registry[added]
    return problem


def _registries() -> list[dict[str, Any]]:
    """The registries a plugin adds to: ops, and combinators where they are registered too."""
    from archspec.lower import COMBINATORS

    return [OPS, *([COMBINATORS] if isinstance(COMBINATORS, dict) else [])]


def _reserved() -> set[str]:
    from archspec.lower import COMBINATORS, REPEAT_KEYS

    return {*COMBINATORS, *REPEAT_KEYS}


def _failed(name: str, e: BaseException) -> Problem:
    return Problem(
        "E-PLUGIN",
        f"plugin `{name}` failed on import: {type(e).__name__}: {e}",
        f"the error is raised at {raised_at(e)}",
    )


def entry_point_problems() -> list[Problem]:
    """Import the modules installed packages advertise under `archspec.plugins` (once: the
    problems of those that failed)."""
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        _entry_points = []
        for ep in entry_points(group=GROUP):
            problem = _guarded(ep.value.split(":")[0], ep.load)
            if problem is not None:
                problem.message = f"entry point `{ep.name}` ({GROUP}): {problem.message}"
                _entry_points.append(problem)
    return _entry_points


def load_entry_points() -> bool:
    """Import the entry-point plugins unless done; True if that registered anything. `check`
    calls it only for a spec that names an op it does not know, so checking a spec of known ops
    never scans the installed packages."""
    if _entry_points is not None:
        return False
    before = [len(r) for r in _registries()]
    entry_point_problems()
    return [len(r) for r in _registries()] != before


def load_plugins(doc: Any, fallback: Loc, out: Collector) -> bool:
    """Import the modules the spec's `plugins:` names, reporting each failure at its entry.
    False if any failed."""
    ok = True
    entries = doc.get("plugins") if isinstance(doc, dict) else None
    if isinstance(entries, list):  # a wrong type is the spec model's E-TYPE
        for i, name in enumerate(entries):
            if isinstance(name, str):
                problem = import_plugin(name)
                if problem is not None:
                    out.problem(loc_of(entries, i, fallback), problem)
                    ok = False
    return ok
