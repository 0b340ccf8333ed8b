"""archspec.backend.weights: state_dict files load strictly, or fail with one clear E-WEIGHTS error."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import archspec
from archspec.backend.weights import load_weights, read_state_dict

SPEC = """\
name: small
input: [3, 8, 8]
num_classes: 4
stages:
  features: [conv: {out: 6, k: 3, pad: 1, name: conv}, bn: {name: bn}, relu]
  pool: gap
  flatten: flatten
  fc: {linear: {out: $num_classes}}
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def trained(spec: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = archspec.build(spec)
    with torch.no_grad():
        model.features.bn.running_mean.uniform_(-1, 1)
    return model.state_dict()


def _error(excinfo) -> str:
    (diag,) = excinfo.value.errors
    assert diag.code == "E-WEIGHTS"
    return diag.message


@pytest.mark.parametrize("wrap", [None, "state_dict", "model", "module."])
def test_loads_raw_wrapped_and_prefixed_state_dicts(spec, trained, tmp_path, wrap):
    data: object = trained
    if wrap == "module.":  # saved from DataParallel / DDP
        data = {"module." + k: v for k, v in trained.items()}
    elif wrap is not None:
        data = {wrap: trained, "epoch": 3}
    torch.save(data, tmp_path / "w.pth")
    model = archspec.build(spec, weights=tmp_path / "w.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_mismatch_names_missing_unexpected_and_shapes(spec, trained, tmp_path):
    bad = dict(trained)
    bad["extra.weight"] = torch.zeros(1)
    del bad["features.conv.bias"]
    bad["fc.weight"] = torch.zeros(9, 6)
    torch.save(bad, tmp_path / "bad.pth")
    model = archspec.build(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(archspec.SpecError) as e:
        load_weights(model, tmp_path / "bad.pth")
    msg = _error(e)
    assert "missing 1 key(s): features.conv.bias" in msg
    assert "unexpected 1 key(s): extra.weight" in msg
    assert "fc.weight: file (9, 6), model (4, 6)" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_long_key_lists_are_cut(spec, tmp_path):
    torch.save({f"k{i}": torch.zeros(1) for i in range(20)}, tmp_path / "many.pth")
    with pytest.raises(archspec.SpecError) as e:
        load_weights(archspec.build(spec), tmp_path / "many.pth")
    assert "unexpected 20 key(s): k0, k1, k2, k3, k4, ... (15 more)" in _error(e)


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.parametrize(
    "content,expect",
    [
        (None, "no such weights file"),
        (b"not a checkpoint at all", "cannot read weights"),
        ("evil", "cannot read weights"),
        ("tensor", "holds no state_dict"),
        ("mixed", "holds no state_dict"),
    ],
)
def test_unreadable_files_are_clear_errors(spec, tmp_path, capsys, content, expect):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "evil":  # weights_only=True must refuse to run pickled code
        with path.open("wb") as f:
            pickle.dump({"w": Evil()}, f, protocol=2)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "mixed":
        torch.save({"w": torch.zeros(1), "name": "x"}, path)
    with pytest.raises(archspec.SpecError) as e:
        read_state_dict(path)
    assert expect in _error(e)
    assert "pickled code ran" not in capsys.readouterr().out


def test_error_renders_without_a_traceback(spec, tmp_path):
    with pytest.raises(archspec.SpecError) as e:
        archspec.build(spec, weights=tmp_path / "missing.pth")
    assert str(e.value).startswith(f"{tmp_path / 'missing.pth'}:")
    assert "error[E-WEIGHTS]" in str(e.value)
