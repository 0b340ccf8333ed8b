"""The command line's structure (issue 15): each command reads and lowers its spec once (the
backend builds from the checked report), the CLI modules import without cycles, and the
command modules stay torch-free at import time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_train import TINY

import archspec.analysis.report as report_module
from archspec.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every spec file `check` reads, in order."""
    seen: list[str] = []
    real = report_module.read_source

    def counting(path):  # type: ignore[no-untyped-def]
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(report_module, "read_source", counting)
    return seen


def test_every_command_reads_its_spec_once(reads: list[str], tmp_path: Path, npz: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY % 4)
    run = tmp_path / "run"
    commands = [
        ["check", spec],
        ["graph", spec, "-o", tmp_path / "g.dot"],
        ["export", spec, "--format", "torchscript", "--no-verify", "-o", tmp_path / "m.pt"],
        ["train", spec, "--data", npz, "--out", run, "--max-steps", "2", "-q", "--threads", "1"],
        ["eval", spec, "--data", npz, "--weights", run / "model.safetensors"],
    ]
    for args in commands:
        reads.clear()
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 0, (args, r.output)
        assert reads == [str(spec)], args  # once: no second read (and lowering) to build


@pytest.mark.parametrize(
    "module",
    [
        "archspec.cli",
        "archspec.cli.common",
        "archspec.cli.check",
        "archspec.cli.tools",
        "archspec.cli.train",
        "archspec.cli.main",
    ],
)
def test_cli_modules_import_alone_without_torch(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "import archspec.cli.common as c; "
        "assert not [m for m in vars(c).values() if getattr(m, '__name__', '').startswith("
        "'archspec.cli.') and m is not c], 'common imports the CLI'"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert r.returncode == 0, r.stderr
