"""The documentation site: it builds without warnings, its generated reference matches the code,
and every spec, command and Python session in it runs and gives what the page says.

The conventions for code blocks are in tests/docs_reference.py.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import docs_reference as ref

ROOT = ref.ROOT
BLOCKS = [b for page in ref.pages() for b in ref.blocks(page)]
SPEC_BLOCKS = [b for b in BLOCKS if b.lang == "yaml"]
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in ("bash", "console", "sh", "shell")]
PYCON_PAGES = sorted({b.page for b in BLOCKS if b.lang == "pycon"})
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang in ("python", "py")]

# Commands a page shows but this test does not run, and why.
NOT_RUN = {
    "pip install": "installing is what produced the environment this test runs in",
    "python -m pytest": "that is this test suite",
}
# Training and evaluation run for minutes as written; the test runs them with these options
# added (the first of each group the command has), so the command line itself is exercised.
FAST: dict[str, list[tuple[str, str]]] = {
    "train": [("--max-steps", "2"), ("--epochs", "1")],
    "eval": [],  # the embedded test split takes a second
}
FAST_ALWAYS = {"--device": "cpu", "--quiet": None}
SHELL_META = re.compile(r"[|<>;&`$()*?]")
QUOTED = re.compile(r"'[^']*'|\"(?:\\.|[^\"\\])*\"")


def ids(blocks: list[ref.Block]) -> list[str]:
    return [b.where for b in blocks]


# --------------------------------------------------------------------------- the site


def test_mkdocs_builds_strict_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]'")
    pytest.importorskip(
        "material", reason="mkdocs-material is not installed: pip install -e '.[docs]'"
    )
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),  # material's banner about its successor
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert "WARNING" not in log, log
    assert (tmp_path / "site" / "language" / "index.html").is_file()
    html = (tmp_path / "site" / "cookbook" / "index.html").read_text(encoding="utf-8")
    assert "vgg13_bn" in html and "--8&lt;--" not in html, "snippets were not included"


@pytest.mark.parametrize(
    "page,name", [(p, n) for p, regions in ref.GENERATED.items() for n in regions]
)
def test_generated_reference_matches_the_code(page: str, name: str) -> None:
    text = (ref.DOCS / page).read_text(encoding="utf-8")
    found = ref.region(text, name)
    assert found is not None, f"docs/{page} lacks the generated region `{name}`"
    assert found == ref.GENERATED[page][name](), (
        f"docs/{page} region `{name}` is stale: run `python -m archspec.analysis.docs --write`"
    )


def test_every_error_code_the_code_emits_is_documented() -> None:
    text = (ref.DOCS / "errors.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^### (E-[A-Z0-9-]+)\s*$", text, re.MULTILINE))
    emitted = ref.error_codes_in_source()
    assert emitted - documented == set(), "codes emitted but not in docs/errors.md"
    assert documented - emitted == set(), "codes in docs/errors.md that nothing emits"


def test_every_documented_error_code_has_an_example_that_produces_it() -> None:
    text = (ref.DOCS / "errors.md").read_text(encoding="utf-8")
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    for section in sections:
        code = section.split("\n", 1)[0].strip()
        marked = re.search(rf"<!-- expect:[^>]*\b{re.escape(code)}\b", section)
        shown = re.search(
            rf"```(console|pycon)\n(?:(?!```).)*{re.escape(code)}", section, re.DOTALL
        )
        assert marked or shown, f"docs/errors.md: {code} has no example that is checked"


def test_language_reference_names_every_combinator_repeat_key_and_type() -> None:
    from archspec.lower import COMBINATORS, REPEAT_KEYS, TYPES

    text = (ref.DOCS / "language.md").read_text(encoding="utf-8")
    for word in (*COMBINATORS, *REPEAT_KEYS, *TYPES):
        assert f"`{word}`" in text, f"docs/language.md never mentions `{word}`"


def test_getting_started_has_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = (ref.DOCS / "index.md").read_text(encoding="utf-8")
    commands = re.findall(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert commands
    for block in commands:
        for line in block.strip().splitlines():
            assert line in index, f"docs/index.md lacks the README command `{line}`"


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize("block", SPEC_BLOCKS, ids=ids(SPEC_BLOCKS))
def test_spec_block_checks(block: ref.Block, tmp_path: Path) -> None:
    import archspec

    text = ref.spec_text(block)
    if text is None:
        assert block.marks.get("fragment"), f"{block.where}: say why it is a fragment"
        return
    path = tmp_path / "example.yaml"
    path.write_text(text, encoding="utf-8")
    report = archspec.check(path)
    codes = {d.code for d in report.errors}
    if "expect" in block.marks:
        expected = {c.strip() for c in block.marks["expect"].split(",")}
        assert codes == expected, (
            f"{block.where}: expected {expected}, got\n{report.render_errors()}"
        )
    else:
        assert report.ok, (
            f"{block.where}: the spec does not check (mark a deliberate error with "
            f"`<!-- expect: CODE -->`, a piece of a spec with `<!-- fragment: why -->`):\n"
            f"{report.render_errors()}"
        )


# --------------------------------------------------------------------------- commands


def commands(block: ref.Block) -> list[tuple[str, list[str] | None]]:
    """(command, expected output lines or None) for each command of a shell block."""
    out: list[tuple[str, list[str] | None]] = []
    lines = block.text.replace("\\\n", " ").splitlines()
    if block.lang != "console":
        return [
            (ln.strip(), None) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")
        ]
    for ln in lines:
        if ln.startswith("$ "):
            out.append((ln[2:].strip(), []))
        elif out:
            out[-1][1].append(ln)  # type: ignore[union-attr]
        elif ln.strip():
            raise AssertionError(f"{block.where}: console output before any `$ ` command")
    return out


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line, where a line `...` stands for any number of lines."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


def tidy(text: str) -> list[str]:
    lines = [ln.rstrip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def fast(args: list[str], scratch: Path) -> list[str]:
    """Training/eval commands with options that make them take seconds."""
    from archspec.cli.main import commands

    cmd = commands().get(args[1]) if len(args) > 1 else None
    if cmd is None or args[1] not in FAST:
        return args
    have = {o for p in cmd.params for o in getattr(p, "opts", [])}
    extra: list[str] = []
    limits = [(opt, value) for opt, value in FAST[args[1]] if opt in have]
    if FAST[args[1]] and not limits:
        raise AssertionError(
            f"`archspec {args[1]}` has no option to limit its steps; mark the block no-run"
        )
    if limits and limits[0][0] not in args:
        extra += list(limits[0])
    for opt, value in FAST_ALWAYS.items():
        if opt in have and opt not in args:
            extra += [opt] if value is None else [opt, value]
    if "--out" in have and "--out" not in args:
        extra += ["--out", str(scratch / "run")]
    return [*args, *extra]


def run_python(code: str) -> tuple[int, str]:
    """`python -c CODE` in this process: torch is imported once for all the pages' commands."""
    out = io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            exec(compile(code, "<python -c>", "exec"), {"__name__": "__main__"})  # noqa: S102 (the page's own code)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # noqa: BLE001 (report it as `python -c` would)
            traceback.print_exc()
            status = 1
    return status, out.getvalue()


def run_command(command: str, scratch: Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from archspec.cli.main import commands, main

    if not SHELL_META.search(QUOTED.sub("", command)):  # no pipe, redirection or expansion
        args = shlex.split(command)
        if len(args) == 3 and args[:2] == ["python", "-c"]:
            return run_python(args[2])
        if args and args[0] == "archspec":
            if len(args) > 1 and not args[1].startswith("-") and args[1] not in commands():
                pytest.skip(f"`archspec {args[1]}` is not a command (yet)")
            args = fast(args, scratch)
            result = CliRunner().invoke(main, args[1:], prog_name="archspec")
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise result.exception
            return result.exit_code, result.output
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    r = subprocess.run(
        ["bash", "-c", command],
        check=False,
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    return r.returncode, r.stdout


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch directory that sees the repository's specs/, docs/ and benchmarks/."""
    for name in ("specs", "docs", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=ids(SHELL_BLOCKS))
def test_shell_block_runs_as_shown(block: ref.Block, scratch: Path) -> None:
    if "no-run" in block.marks:
        assert block.marks["no-run"], f"{block.where}: say why the block is not run"
        pytest.skip(block.marks["no-run"])
    runs = [
        (part.strip(), expected)
        for line, expected in commands(block)
        for part in re.split(r"\s&&\s", line)
    ]
    assert runs, f"{block.where}: no command in the block"
    for n, (part, expected) in enumerate(runs):
        if any(part.startswith(prefix) for prefix in NOT_RUN):
            continue
        code, output = run_command(part, scratch)
        if expected is not None:
            got = tidy(output)
            assert matches(tidy("\n".join(expected)), got), (
                f"{block.where}: `{part}` printed\n" + "\n".join(got)
            )
        # `<!-- exit: N -->` is the status of the block's last command; the others set it up
        want = int(block.marks.get("exit", "0")) if n == len(runs) - 1 else 0
        assert code == want, f"{block.where}: `{part}` exited {code}, not {want}:\n{output}"


@pytest.mark.parametrize("page", PYCON_PAGES, ids=[str(p.relative_to(ROOT)) for p in PYCON_PAGES])
def test_python_sessions_give_what_the_page_shows(page: Path, scratch: Path) -> None:
    """A page's `pycon` blocks are one session, run in order, as a reader would type them."""
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    names: dict = {}
    for block in ref.blocks(page):
        if block.lang == "pycon":
            test = parser.get_doctest(block.text, names, block.where, str(page), block.line)
            runner.run(test, out=report.append, clear_globs=False)
            names = test.globs  # a DocTest copies its globals: carry them to the next block
    assert runner.tries > 0
    assert runner.failures == 0, "".join(report)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=ids(PYTHON_BLOCKS))
def test_python_block_runs(block: ref.Block, scratch: Path) -> None:
    if "no-run" in block.marks:
        pytest.skip(block.marks["no-run"])
    r = subprocess.run(
        [sys.executable, "-c", block.text],
        check=False,
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"{block.where}:\n{r.stderr}"
