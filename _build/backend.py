"""setuptools' build backend, and one addition: an editable install compiles archspec to bytecode.

pip compiles a regular install's modules when it installs them; an editable install leaves them
as source, and where PYTHONDONTWRITEBYTECODE is set (many Docker images set it) Python then
compiles every module of archspec again in every process: `archspec check` took ~60 ms more.
Compiling once here gives the editable install what a regular one has; a module edited later is
simply compiled again in memory, as always.
"""

from __future__ import annotations

import compileall
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # every hook, as setuptools defines it

PACKAGE = Path(__file__).resolve().parents[1] / "archspec"


def build_editable(
    wheel_directory: str,
    config_settings: dict | None = None,
    metadata_directory: str | None = None,
) -> str:
    wheel = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    compileall.compile_dir(str(PACKAGE), quiet=1)  # into __pycache__, as Python writes it
    return wheel
