"""The hostile-input corpus: no file, however wrong, crashes `archspec check`, hangs it, runs code
from it or makes it build anything.

Every file in tests/corpus/ (plus the ones generated here because they are too big to commit)
must give exit 1, exactly one JSON object on stdout with the expected codes at the expected
lines and columns, a located human message and no traceback, within a second of checking (more
on a machine slower than the one that second was set on; see `budget`) and under 200 MB of memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fresh_process import run_fresh
from ruamel.yaml import YAML
from timing import best_of

import archspec
from archspec.cli import main

CORPUS = Path(__file__).parent / "corpus"
EXPECTED: dict[str, list] = YAML(typ="safe").load((CORPUS / "expected.yaml").read_text("utf-8"))
MAX_SECONDS = 1.0
# A busy or slow machine stretches every time alike: the budget grows with the time this machine
# takes to parse the largest real spec (764 YAML nodes), so the test still catches anything that
# grows faster than the input (the hostile files hold up to ~7x that spec's nodes), not a slow CI.
REFERENCE_SPEC = Path(__file__).parent.parent / "specs" / "torchvision" / "inception_v3.yaml"
REFERENCE_FACTOR = 12
MAX_RSS_MB = 200
PAYLOAD = "archspec_pwned"  # the file the code-execution payloads in the corpus would create


def _fifty_megabytes(p: Path) -> None:
    with p.open("w") as f:
        f.write("name: big\ninput: [1, 8, 8]\nstages:\n  a: [relu]\n")
        line = "# " + "x" * 1021 + "\n"
        for _ in range(50 * 1024):
            f.write(line)


def _flow_nesting(p: Path) -> None:
    p.write_text("a: " + "[" * 10_000 + "]" * 10_000 + "\n")


def _block_nesting(p: Path) -> None:  # 1,000 mappings, each indented one more space
    p.write_text("".join(" " * i + f"k{i}:\n" for i in range(1000)) + " " * 1000 + "x\n")


def _dash_nesting(p: Path) -> None:
    p.write_text("- " * 5000 + "x\n")


def _many_nodes(p: Path) -> None:  # 600 KB: under the byte limit, far over the node limit
    p.write_text(
        "name: big\ninput: [1, 8, 8]\nstages:\n  a: [relu]\nz: [" + "1, " * 200_000 + "1]\n"
    )


def _long_scalar(p: Path) -> None:
    p.write_text("name: " + "n" * 20_000 + "\ninput: [1, 8, 8]\nstages:\n  a: [relu]\n")


# Too big to commit: written at test time. name -> (writer, [code, line, column]).
GENERATED = {
    "fifty_megabytes.yaml": (_fifty_megabytes, [["E-YAML-SIZE", 1, 1]]),
    "flow_nesting_10000.yaml": (_flow_nesting, [["E-YAML-DEPTH", 1, 68]]),
    "block_nesting_1000.yaml": (_block_nesting, [["E-YAML-DEPTH", 258, 258]]),
    "dash_nesting_5000.yaml": (_dash_nesting, [["E-YAML-DEPTH", 1, 10001]]),
    "many_nodes.yaml": (_many_nodes, [["E-YAML-SIZE", 5, 14960]]),
    "long_scalar.yaml": (_long_scalar, [["E-YAML-SIZE", 1, 7]]),
}
CASES = sorted([*EXPECTED, *GENERATED])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for name, (write, _) in GENERATED.items():
        write(d / name)
    return d


def case(name: str, workdir: Path) -> tuple[Path, list]:
    if name in GENERATED:
        return workdir / name, GENERATED[name][1]
    return CORPUS / name, EXPECTED[name]


def run_measured(args: list[str], cwd: Path) -> tuple[int, str, str, float, float]:
    """Run `python -m archspec ARGS` in a fresh interpreter; return exit code, stdout, stderr,
    wall seconds and the child's own peak RSS in MB (fresh_process: VmHWM, not ru_maxrss)."""
    r = run_fresh(["-m", "archspec", *args], cwd=cwd)
    return r.rc, r.stdout, r.stderr, r.wall_s, r.peak_mib


@pytest.fixture(scope="module")
def budget() -> float:
    """Seconds a hostile file may take to be refused on this machine, at least MAX_SECONDS."""
    from archspec.lang.source import read_source

    def once() -> float:
        start = time.perf_counter()
        read_source(REFERENCE_SPEC)
        return time.perf_counter() - start

    return max(MAX_SECONDS, REFERENCE_FACTOR * min(once() for _ in range(3)))


@pytest.fixture(scope="module")
def startup(workdir: Path) -> float:
    """Seconds a fresh `archspec check` of a trivial spec takes: the interpreter's own cost."""
    spec = workdir / "tiny.yaml"
    spec.write_text("name: tiny\ninput: [1, 4, 4]\nstages:\n  a: [relu]\n")
    return min(run_measured(["check", str(spec), "--json"], workdir)[3] for _ in range(2))


def test_corpus_lists_every_file():
    files = {p.name for p in CORPUS.iterdir() if p.name != "expected.yaml"}
    assert files == set(EXPECTED)
    assert max(p.stat().st_size for p in CORPUS.iterdir()) < 1 << 20  # nothing big is committed


@pytest.mark.parametrize("name", CASES)
def test_hostile_file_is_refused_with_located_errors(
    name: str, workdir: Path, startup: float, budget: float
):
    path, want = case(name, workdir)
    for _ in range(3):  # noise only ever adds time: retry a slow run, at most twice
        rc, stdout, stderr, wall, rss = run_measured(["check", str(path), "--json"], workdir)
        if wall - startup < budget:
            break
    assert rc == 1, (rc, stdout, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert stdout.endswith("\n") and "\n" not in stdout[:-1], "--json prints exactly one line"
    obj = json.loads(stdout)
    assert isinstance(obj, dict) and obj["spec"] == str(path) and obj["output"] is None
    assert [[e["code"], e["line"], e["column"]] for e in obj["errors"]] == want
    assert all(e["file"] == str(path) and e["message"] for e in obj["errors"])
    assert wall - startup < budget, f"check took {wall - startup:.2f} s beyond interpreter startup"
    assert rss < MAX_RSS_MB, f"peak RSS {rss:.0f} MB"
    assert not (workdir / PAYLOAD).exists(), "a spec ran code"


@pytest.mark.parametrize("name", CASES)
def test_hostile_file_checks_fast_in_process(name: str, workdir: Path, budget: float):
    path, want = case(name, workdir)
    elapsed, report = best_of(lambda: archspec.check(path), budget)
    assert not report.ok and [[d.code, d.loc.line, d.loc.column] for d in report.errors] == want
    assert elapsed < budget, f"{elapsed:.2f} s (budget {budget:.2f} s)"


@pytest.mark.parametrize("name", CASES)
def test_hostile_file_human_output_is_located(name: str, workdir: Path):
    path, want = case(name, workdir)
    result = CliRunner().invoke(main, ["check", str(path)])
    assert (
        result.exit_code == 1
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
    assert result.exit_code == 1, result.output
    code, line, column = want[0]
    assert f"{path}:{line}:{column}: error[{code}]" in result.output
    assert "Traceback" not in result.output
    assert all(ch.isprintable() or ch == "\n" for ch in result.output), (
        "control characters reach the terminal"
    )
