"""Run a Python module or script in a fresh interpreter and measure its wall time and its own
peak resident memory. Shared by tests/test_corpus.py and benchmarks/run.py.

The peak is the child's `VmHWM` from /proc/self/status, read by the child at exit. Not
`ru_maxrss` from wait4 / RUSAGE_CHILDREN: on Linux that carries the parent's RSS across
fork+exec, so a child of a 1 GB pytest process reports 1 GB whatever it used itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PEAK_FILE_VAR = "ARCHSPEC_PEAK_FILE"

# argv: '-m' MODULE ARGS... or SCRIPT ARGS...; the target sees the argv it would from the shell.
PEAK_PROBE = """
import atexit, os, runpy, sys
def _peak():
    with open('/proc/self/status') as f:
        kb = next(line.split()[1] for line in f if line.startswith('VmHWM:'))
    with open(os.environ['ARCHSPEC_PEAK_FILE'], 'w') as f:
        f.write(kb)
atexit.register(_peak)
if sys.argv[1] == '-m':
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name='__main__')
"""


@dataclass
class Fresh:
    rc: int
    stdout: str
    stderr: str
    wall_s: float
    peak_mib: float  # the child's own peak RSS (VmHWM)


def run_fresh(
    target: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None
) -> Fresh:
    """Run `python -m MODULE ARGS` (target = ['-m', MODULE, *ARGS]) or `python SCRIPT ARGS`
    (target = [SCRIPT, *ARGS]) in a fresh interpreter; wall time includes interpreter start."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak_kb"
        child_env = {**(os.environ if env is None else env), PEAK_FILE_VAR: str(peak)}
        start = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-c", PEAK_PROBE, *target],
            capture_output=True,
            cwd=cwd,
            env=child_env,
            check=False,
        )
        wall = time.perf_counter() - start
        if not peak.exists():  # killed before its exit handlers ran
            raise RuntimeError(f"{target}: exit {r.returncode}, no peak recorded\n{r.stderr!r}")
        kb = int(peak.read_text())
    return Fresh(r.returncode, r.stdout.decode("utf-8"), r.stderr.decode("utf-8"), wall, kb / 1024)
