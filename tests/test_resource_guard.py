"""`build` refuses a spec whose parameters exceed a configurable limit before allocating anything."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

import archspec
import archspec.backend.compile as compile_mod

# 100,000 features into 100,000 outputs: 10,000,100,000 parameters, 40 GB of float32.
HUGE = "name: huge\ninput: [1, 100, 1000]\nstages:\n  head: [flatten, linear: {out: 100000}]\n"
LENET_PARAMS = 61_706


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    path = tmp_path / "huge.yaml"
    path.write_text(HUGE)
    return path


@pytest.fixture
def nothing_built(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise AssertionError("build compiled the network despite the limit")

    monkeypatch.setattr(compile_mod, "compile_network", refuse)


def test_checker_counts_the_huge_model(huge: Path):
    report = archspec.check(huge)
    assert report.ok and report.params == 100_000 * 100_000 + 100_000


@pytest.mark.parametrize("limit", [10**6, None])  # an explicit limit, and the default (2e9)
def test_build_refuses_before_allocating(huge: Path, nothing_built, limit):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(archspec.SpecError) as e:
        archspec.build(huge, max_params=limit)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    (d,) = e.value.diagnostics
    assert d.code == "E-TOO-BIG" and "10,000,100,000 parameters" in d.message
    assert f"{limit or 2_000_000_000:,}" in d.message and "max_params" in d.help
    assert elapsed < 1.0 and peak < 10 * 2**20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024  # KB


def test_limit_is_inclusive(tmp_path: Path):
    model = archspec.build("specs/lenet.yaml", max_params=LENET_PARAMS)
    assert sum(p.numel() for p in model.parameters()) == LENET_PARAMS
    with pytest.raises(archspec.SpecError, match="E-TOO-BIG"):
        archspec.build("specs/lenet.yaml", max_params=LENET_PARAMS - 1)


def test_spec_errors_come_before_the_size_check(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(HUGE.replace("[flatten,", "[flatten, rleu,"))
    with pytest.raises(archspec.SpecError) as e:
        archspec.build(path, max_params=10)
    assert [d.code for d in e.value.diagnostics] == ["E-UNKNOWN-OP"]


@pytest.mark.parametrize("limit, refused", [("50000", True), ("70000", False)])
def test_limit_comes_from_the_environment(limit: str, refused: bool):
    code = (
        "import archspec\n"
        "try:\n    archspec.build('specs/lenet.yaml'); print('built')\n"
        "except archspec.SpecError as e:\n    print(e.diagnostics[0].code, e.diagnostics[0].message)\n"
    )
    env = dict(os.environ, ARCHSPEC_MAX_PARAMS=limit)
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    if refused:
        assert (
            out.stdout.startswith("E-TOO-BIG")
            and "61,706 parameters, over the limit of 50,000" in out.stdout
        )
    else:
        assert out.stdout.strip() == "built"
