"""`archspec export`: every seed network as ONNX (run in onnxruntime) and TorchScript (reloaded),
each matching the PyTorch output. Inputs are shrunk where the spec allows, to keep this fast;
the classifiers of AlexNet and VGG still make those files ~100 MB."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import archspec
from archspec.backend.export import (
    CHECK_BATCH,
    TRACE_BATCH,
    ExportError,
    _compare,
    export_onnx,
    export_torchscript,
)
from archspec.backend.weights import WeightsError, load_weights
from archspec.cli import main

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit:FutureWarning"
)  # torch deprecates TorchScript
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted((ROOT / "specs").glob("*.yaml"))
SMALL = {"alexnet": (1, 67, 67), "vgg": (1, 32, 32), "nin": (1, 96, 96), "unet": (3, 64, 64)}
TOL = 1e-4


def build(path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    return archspec.build(path, input_shape=SMALL.get(path.stem)).eval()


def reference(model: torch.nn.Module, batch: int) -> tuple[np.ndarray, np.ndarray]:
    x = torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return x.numpy(), model(x).numpy()


def test_there_are_seed_specs():
    assert {p.stem for p in SEEDS} >= {
        "lenet",
        "alexnet",
        "vgg",
        "nin",
        "googlenet",
        "resnet18",
        "densenet",
    }


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.stem)
def test_onnx_and_torchscript_match_pytorch(path, tmp_path):
    model = build(path)
    onnx_file = tmp_path / "m.onnx"
    result = export_onnx(model, onnx_file)
    assert result.method == "dynamo" and result.max_diff is not None and result.max_diff <= TOL
    # Independently of the exporter's own check: a batch size it never saw, in onnxruntime.
    proto = onnx.load(str(onnx_file), load_external_data=False)
    assert (
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    )  # the batch axis is symbolic
    x, want = reference(model, 1)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == want.shape and np.abs(got - want).max() <= TOL
    onnx_file.unlink()  # the big ones are ~100 MB

    ts_file = tmp_path / "m.pt"
    result = export_torchscript(model, ts_file)
    assert result.method == "script" and result.max_diff is not None and result.max_diff <= TOL
    loaded = torch.jit.load(str(ts_file))
    x, want = reference(model, 4)
    with torch.no_grad():
        assert np.abs(loaded(torch.from_numpy(x)).numpy() - want).max() <= TOL


def test_legacy_exporter_also_works(tmp_path):
    model = build(ROOT / "specs" / "inception_mnist.yaml")
    result = export_onnx(model, tmp_path / "m.onnx", exporter="legacy")
    assert result.method == "legacy" and result.max_diff <= TOL


def test_verification_uses_another_batch_size_than_tracing():
    assert TRACE_BATCH != CHECK_BATCH  # so a batch axis fixed by mistake fails verification


def test_compare_refuses_large_differences_and_nan():
    a = np.zeros((2, 3), dtype=np.float32)
    assert _compare("x", a + 5e-5, a, TOL) == pytest.approx(5e-5)
    with pytest.raises(ExportError, match="differs from PyTorch by 0.001"):
        _compare("x", a + 1e-3, a, TOL)
    with pytest.raises(ExportError):
        _compare("x", a * np.nan, a, TOL)
    with pytest.raises(ExportError, match="shape"):
        _compare("x", a[:1], a, TOL)


@pytest.fixture
def trained_lenet(tmp_path):
    """LeNet with non-default weights saved as safetensors and as a .pt state_dict."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = archspec.build(ROOT / "specs" / "lenet.yaml").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save({"model": state, "epoch": 3}, tmp_path / "checkpoint.pt")
    return model


@pytest.mark.parametrize("weights", ["model.safetensors", "checkpoint.pt"])
def test_cli_exports_with_weights(trained_lenet, tmp_path, weights):
    out = tmp_path / "lenet.onnx"
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(ROOT / "specs" / "lenet.yaml"),
            "--weights",
            str(tmp_path / weights),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "verified: onnxruntime vs PyTorch" in result.output
    x, want = reference(trained_lenet, 2)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    assert np.abs(got - want).max() <= TOL  # the file computes the *trained* network


def test_weights_that_do_not_fit_are_refused_clearly(trained_lenet, tmp_path):
    model = archspec.build(ROOT / "specs" / "lenet.yaml", variant="bn")
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(model, tmp_path / "model.safetensors")
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(ROOT / "specs" / "lenet.yaml"),
            "--variant",
            "bn",
            "--weights",
            str(tmp_path / "model.safetensors"),
            "-o",
            str(tmp_path / "x.onnx"),
        ],
    )
    assert result.exit_code == 1 and "missing" in result.output and "Traceback" not in result.output
    for name in ("garbage.pt", "garbage.safetensors"):
        garbage = tmp_path / name
        garbage.write_bytes(b"not a weights file")
        with pytest.raises(WeightsError, match="cannot read weights"):
            load_weights(model, garbage)


def test_cli_torchscript_from_suffix_and_json(tmp_path):
    import json

    out = tmp_path / "m.ts"
    result = CliRunner().invoke(
        main, ["export", str(ROOT / "specs" / "lenet.yaml"), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (
        data["format"] == "torchscript"
        and data["max_diff"] <= TOL
        and out.stat().st_size == data["bytes"]
    )


def test_cli_usage_errors(tmp_path, monkeypatch):
    lenet = str(ROOT / "specs" / "lenet.yaml")
    r = CliRunner().invoke(main, ["export", lenet, "-o", str(tmp_path / "m.bin")])
    assert r.exit_code == 2 and "--format" in r.output
    r = CliRunner().invoke(
        main, ["export", str(tmp_path / "none.yaml"), "-o", str(tmp_path / "m.onnx")]
    )
    assert r.exit_code == 2 and "no such spec" in r.output
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
    r = CliRunner().invoke(main, ["export", lenet, "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and "pip install onnxscript" in r.output and "legacy" in r.output
