"""The in-tree build backend (_build/backend.py): setuptools' hooks, and an editable install
that leaves archspec compiled to bytecode."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import build_meta

ROOT = Path(__file__).resolve().parents[1]


def _backend():
    spec = importlib.util.spec_from_file_location(
        "archspec_build_backend", ROOT / "_build/backend.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setuptools_hook_is_there():
    backend = _backend()
    for hook in build_meta.__all__:
        assert getattr(backend, hook) is not None, hook
    assert backend.build_editable is not build_meta.build_editable
    assert backend.PACKAGE == ROOT / "archspec"


def test_an_editable_build_compiles_the_package(tmp_path, monkeypatch):
    backend = _backend()
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("X = 1\n")
    (package / "sub" / "mod.py").write_text("def f():\n    return 2\n")
    built = []
    monkeypatch.setattr(build_meta, "build_editable", lambda *a: built.append(a) or "pkg.whl")
    monkeypatch.setattr(backend, "PACKAGE", package)
    assert backend.build_editable(str(tmp_path / "wheels")) == "pkg.whl"
    assert built == [(str(tmp_path / "wheels"), None, None)]
    tag = sys.implementation.cache_tag
    assert (package / "__pycache__" / f"__init__.{tag}.pyc").is_file()
    assert (package / "sub" / "__pycache__" / f"mod.{tag}.pyc").is_file()
