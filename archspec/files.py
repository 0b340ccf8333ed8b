"""Files the commands write: atomically, never through a planted link, never over a folder's
foreign contents; and the lock that keeps two runs out of one run directory. No torch.

Atomic writes: the new content goes to a temporary file created exclusively (``O_EXCL``, an
unguessable name, ``.NAME.PID.RANDOM.tmp``) in the destination folder, is fsynced and renamed
over the target, so a crash, a kill or a full disk leaves either the old file or the new one,
never half of one, and a symlink planted in the folder is never followed. The new file keeps
the mode of the file it replaces (a fresh one gets 0666 less the umask). A destination that
exists and is not a regular file (``/dev/null``, a FIFO) is written directly: there is no file
to keep, and a device must not be replaced.

A write that fails raises ``OSError`` naming the target (not the temporary file) with the
system's reason. The temporary file of a writer killed mid-write is removed by the next write
of the same file.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _remove_stale(path: Path) -> None:
    """Delete the temporary files of writers of ``path`` that died mid-write (kill -9, power
    loss): they are never renamed, and a run that is killed often would fill the disk. Only
    names this module makes (``.NAME.PID.RANDOM.SUFFIX``, or the older ``.NAME.PID.tmp``) of
    processes that no longer exist are touched."""
    prefix = f".{path.name}."
    ours = re.compile(r"(\d+)(\.[a-z0-9_]{8}(\.[^.]+)?|\.tmp)")
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        m = ours.fullmatch(tmp.name[len(prefix) :])
        if m is None or int(m[1]) == os.getpid():
            continue
        try:
            os.kill(int(m[1]), 0)
        except ProcessLookupError:  # no such process: nobody will finish this file
            with contextlib.suppress(OSError):
                tmp.unlink()
        except (OSError, OverflowError):  # alive under another user (EPERM), or cannot tell
            pass


def _named(e: OSError, path: Path) -> OSError:
    if e.filename == str(path) or e.errno is None:
        return e
    return OSError(e.errno, e.strerror, str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path`` for a writer that takes a file name; on
    success make it ``path`` durably. ``suffix`` keeps an extension a writer looks at (the
    file still matches ``.NAME.PID.*``).

    An ``OSError`` on the way is raised again naming ``path`` (not the temporary file), so a
    message reads "cannot write checkpoint.pt: No space left on device"."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise _named(e, path) from None
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        yield path  # a device or a FIFO: written in place
        return
    _remove_stale(path)
    try:
        fd, name = tempfile.mkstemp(
            suffix=suffix, prefix=f".{path.name}.{os.getpid()}.", dir=path.parent
        )
    except OSError as e:
        raise _named(e, path) from None
    tmp = Path(name)
    try:
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, stat.S_IMODE(mode) & 0o777 if mode is not None else 0o666 & ~_UMASK)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise _named(e, path) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    # The rename is durable only once the directory entry is on disk too.
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | Path, write: Callable[[Path], None], suffix: str = ".tmp") -> None:
    """Call ``write(tmp)`` and atomically move ``tmp`` to ``path`` (see the module)."""
    with atomic_path(path, suffix) as tmp:
        write(tmp)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "r+b" if tmp == Path(path) else "wb") as f:
            f.write(data)
            f.flush()

    write_atomic(path, write)


# ---------------------------------------------------------------- the run directory lock

LOCK_NAME = ".archspec.lock"


class LockedError(RuntimeError):
    """Another process holds the run directory."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``DIR/.archspec.lock``, held for the life of a run.

    The kernel drops the lock when its process dies, however it dies, so a stale lock cannot
    block a later run; the file's text (pid, host, start time, command) only names the holder
    in the error another run gets. The file stays: it also marks the folder as an archspec
    run (see `is_run_dir`)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self, what: str = "") -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        f = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(f)
            f.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise LockedError(
                    f"{self.path.parent} is in use by another run ({holder}); wait for it to "
                    "finish or choose another --out"
                ) from None
            raise
        f.seek(0)
        f.truncate()
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        f.write(json.dumps({**info, "command": what}) + "\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None


def _holder(f: IO[str]) -> str:
    try:
        f.seek(0)
        info: Any = json.loads(f.read() or "{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        what = f", {info['command']}" if info.get("command") else ""
        return f"pid {info['pid']} on {info['host']}, started {started}{what}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


RUN_FILES = (LOCK_NAME, "checkpoint.pt", "config.json", "spec.yaml")


def is_run_dir(folder: str | Path) -> bool:
    """Whether ``folder`` holds an archspec run (its lock file, a checkpoint, or the
    config.json / spec.yaml archspec writes), so a new run or --resume may write there."""
    folder = Path(folder)
    if (folder / LOCK_NAME).is_file() or (folder / "checkpoint.pt").is_file():
        return True
    try:
        config = json.loads((folder / "config.json").read_text())
        if isinstance(config, dict) and {"recipe", "spec_hash"} <= set(config):
            return True
    except (OSError, ValueError):
        pass
    try:
        with open(folder / "spec.yaml", encoding="utf-8", errors="replace") as f:
            return f.readline().startswith("# resolved from ")
    except OSError:
        return False


def is_empty_dir(folder: str | Path) -> bool:
    try:
        return not any(Path(folder).iterdir())
    except OSError:
        return False
