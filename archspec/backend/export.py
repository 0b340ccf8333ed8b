"""Export a built network to ONNX or TorchScript, and prove the file computes what the model does.

ONNX goes through `torch.onnx.export` with a dynamic batch axis (the torch.export-based exporter,
torch's default since 2.9, which needs `onnxscript`; `exporter="legacy"` picks the older
TorchScript-based one) and is then run in onnxruntime on a batch of a *different* size than
the one it was traced with, against the PyTorch output. TorchScript is `torch.jit.script`
(falling back to `torch.jit.trace`), saved, loaded back and compared the same way.
This module imports torch; the CLI imports it only inside the `export` command.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("dynamo", "legacy")
TRACE_BATCH, CHECK_BATCH = 2, 3  # checked at another batch size than traced: the axis is dynamic
DEFAULT_TOLERANCE = 1e-4


class ExportError(Exception):
    """A clear, user-facing reason the export could not be done or did not verify."""

    def __init__(self, message: str, help: str | None = None):
        super().__init__(message)
        self.message, self.help = message, help


@dataclass
class ExportResult:
    """What `export` wrote and how close the file's outputs came to PyTorch's."""

    format: str
    path: str
    method: str  # dynamo / legacy (onnx), script / trace (torchscript)
    max_diff: float | None  # max |file output - PyTorch output|; None when not verified
    seconds: float
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch's exporters print progress and deprecation notes the user cannot act on."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def sample(model: nn.Module, batch: int, seed: int = 0) -> torch.Tensor:
    shape = getattr(model, "input_shape", None)
    if not shape:
        raise ExportError("the model does not record its input shape; build it with archspec.build")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=gen)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    exporter: str = "dynamo",
    opset: int | None = None,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Write `model` as ONNX with a dynamic batch axis; verify it in onnxruntime."""
    if exporter not in EXPORTERS:
        raise ExportError(
            f"unknown ONNX exporter `{exporter}`", f"use one of {', '.join(EXPORTERS)}"
        )
    _require("onnx", "onnx")
    if exporter == "dynamo":
        _require("onnxscript", "onnxscript", "or use the legacy exporter (--onnx-exporter legacy)")
    model = model.eval()
    x = sample(model, TRACE_BATCH)
    start = time.perf_counter()
    names: dict[str, Any] = {
        "input_names": ["input"],
        "output_names": ["output"],
        "opset_version": opset,
    }
    with _staged(path) as tmp:
        _export_onnx_to(model, x, tmp, exporter, names)
        seconds = time.perf_counter() - start
        diff = verify_onnx(model, tmp, tolerance) if verify else None
        size = tmp.stat().st_size
    return ExportResult("onnx", str(path), exporter, diff, seconds, size)


def _export_onnx_to(
    model: nn.Module, x: torch.Tensor, path: Path, exporter: str, names: dict[str, Any]
) -> None:
    try:
        with _quiet(), torch.no_grad():
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                torch.onnx.export(
                    model,
                    (x,),
                    str(path),
                    dynamo=True,
                    external_data=False,
                    dynamic_shapes=({0: batch},),
                    **names,
                )
            else:
                torch.onnx.export(
                    model,
                    (x,),
                    str(path),
                    dynamo=False,
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                    **names,
                )
    except ExportError:
        raise
    except OSError:
        raise  # a failed write: `_staged` names the file
    except Exception as e:  # noqa: BLE001  # torch.onnx raises many kinds: one clear error
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError):  # a failed write inside the exporter
            raise cause from None
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {_first_line(e)}") from None


def verify_onnx(model: nn.Module, path: str | Path, tolerance: float = DEFAULT_TOLERANCE) -> float:
    """Run the ONNX file in onnxruntime on a fresh batch; raise ExportError over `tolerance`."""
    _require("onnxruntime", "onnxruntime")
    import onnxruntime as ort  # type: ignore[import-untyped]

    x = sample(model, CHECK_BATCH, seed=1)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return _compare("onnxruntime", got, want, tolerance)


def export_torchscript(
    model: nn.Module, path: str | Path, *, verify: bool = True, tolerance: float = DEFAULT_TOLERANCE
) -> ExportResult:
    """`torch.jit.script` (or `trace` where scripting fails), saved, reloaded and compared."""
    model = model.eval()
    start = time.perf_counter()
    method = "script"
    with _quiet():
        try:
            compiled = torch.jit.script(model)
        except Exception:  # noqa: BLE001  # a module scripting cannot read: tracing records the same ops
            method = "trace"
            try:
                compiled = torch.jit.trace(model, sample(model, TRACE_BATCH), check_trace=False)
            except Exception as e:  # noqa: BLE001
                raise ExportError(
                    f"TorchScript export failed: {type(e).__name__}: {_first_line(e)}"
                ) from None
        buffer = io.BytesIO()  # torch's C++ file writer aborts the process on a failed write
        torch.jit.save(compiled, buffer)
    data = buffer.getvalue()
    seconds = time.perf_counter() - start
    diff = None
    if verify:
        with _quiet():
            loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
        x = sample(model, CHECK_BATCH, seed=1)
        with torch.no_grad():
            diff = _compare(
                "the reloaded TorchScript module", loaded(x).numpy(), model(x).numpy(), tolerance
            )
    with _staged(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return ExportResult("torchscript", str(path), method, diff, seconds, len(data))


@contextlib.contextmanager
def _staged(path: str | Path) -> Iterator[Path]:
    """Where an export is written and checked before it becomes ``path``: a temporary file
    next to it, renamed over it only once the export is written and verified, so a failed
    export (a full disk, an error, a file that does not verify) keeps the previous file
    (`archspec.files.atomic_path`). A device or FIFO (``-o /dev/null``) is written directly.
    A failed write is an ExportError naming ``path``."""
    from archspec.files import atomic_path, write_bytes

    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(
            f"cannot write {path}: the directory {path.parent} does not exist",
            "create it first, or pass -o with an existing folder",
        )
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            with tempfile.TemporaryDirectory() as folder:  # checked here, then copied in
                tmp = Path(folder) / f"export{path.suffix}"
                yield tmp
                write_bytes(path, tmp.read_bytes())
        else:
            with atomic_path(path, suffix=path.suffix or ".tmp") as tmp:
                yield tmp
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None


def export(model: nn.Module, path: str | Path, fmt: str, **options: Any) -> ExportResult:
    if fmt == "onnx":
        return export_onnx(model, path, **options)
    if fmt == "torchscript":
        options.pop("exporter", None)
        options.pop("opset", None)
        return export_torchscript(model, path, **options)
    raise ExportError(f"unknown export format `{fmt}`", f"use one of {', '.join(FORMATS)}")


def _compare(what: str, got: Any, want: Any, tolerance: float) -> float:
    if tuple(got.shape) != tuple(want.shape):
        raise ExportError(
            f"{what} gives shape {tuple(got.shape)}, PyTorch gives {tuple(want.shape)}"
        )
    diff = float(abs(got - want).max()) if want.size else 0.0
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"{what} output differs from PyTorch by {diff:.3g} (tolerance {tolerance:g})",
            "the exported file does not compute what the model computes; please report it",
        )
    return diff


def _require(module: str, package: str, alt: str = "") -> None:
    try:
        __import__(module)
    except ImportError:
        raise ExportError(
            f"this export needs the `{module}` package, which is not installed",
            f"pip install {package}" + (f", {alt}" if alt else ""),
        ) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""
