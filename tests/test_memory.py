"""The static training-memory estimate (archspec/memory.py) against what torch really keeps.

"Activations saved for backward" is measured, not modelled: archspec.backend.measure.saved_bytes runs
the built model's forward in training mode under torch.autograd.graph.saved_tensors_hooks and
sums the distinct storages the pack hook sees, parameters and buffers excluded. The estimate
must match it for every spec and variant (the acceptance bar is 5%; the rules are exact on CPU,
so most tests ask for equality). Batches are small here to keep CI fast; benchmarks/memory.py
runs batch 32 over the whole zoo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import archspec
from archspec.analysis.memory import auto_batch_size, estimate, fits
from archspec.backend.measure import make_optimizer, optimizer_state_bytes, saved_bytes, train_step

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
ZOO = sorted((ROOT / "specs" / "torchvision").glob("*.yaml"))


def cases(paths: list[Path]) -> list[tuple[Path, str | None]]:
    return [(p, v) for p in paths for v in [None, *archspec.variants(p)]]


def case_id(case: tuple[Path, str | None]) -> str:
    return f"{case[0].stem}:{case[1] or 'base'}"


def measured_and_estimated(
    spec: Path | str,
    variant: str | None,
    batch: int,
    dtype: str = "float32",
    input_shape: tuple[int, ...] | None = None,
) -> tuple[int, int, object]:
    report = archspec.check(spec, variant, input_shape)
    assert report.ok, report.render_errors()
    est = estimate(report.network, batch, dtype)
    torch.manual_seed(0)
    model = archspec.build(spec, variant, input_shape)
    x = torch.randn(batch, *report.network.input)
    return saved_bytes(model, x, dtype), est.activations_bytes, est


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; these models are small
    yield
    torch.set_num_threads(n)


# Inputs that keep the big U-Nets fast (the paper's at its smallest size that fits).
SMALL = {"unet:base": (3, 64, 64), "unet:resnet34": (3, 64, 64), "unet:paper": (1, 188, 188)}


@pytest.mark.parametrize("case", cases(SPECS), ids=case_id)
def test_saved_bytes_equal_what_autograd_keeps_for_every_seed_spec(case):
    measured, estimated, _ = measured_and_estimated(
        *case, batch=2, input_shape=SMALL.get(case_id(case))
    )
    assert estimated == measured


def zoo_cases() -> list[tuple[Path, str | None]]:
    """Every zoo variant with ARCHSPEC_MEMORY_ALL=1; by default, to keep CI fast, each file's
    first variant and every variant under 30M parameters (benchmarks/memory.py runs them all)."""
    every = cases(ZOO)
    if os.environ.get("ARCHSPEC_MEMORY_ALL"):
        return every
    firsts = {p: v for p, v in reversed(every)}
    return [
        (p, v)
        for p, v in every
        if firsts[p] == v or (archspec.check(p, v).params or 0) < 30_000_000
    ]


@pytest.mark.parametrize("case", zoo_cases(), ids=case_id)
def test_saved_bytes_within_5_percent_for_the_torchvision_zoo(case):
    measured, estimated, _ = measured_and_estimated(*case, batch=2)
    assert abs(estimated - measured) <= 0.05 * measured, (estimated, measured)


@pytest.mark.parametrize(
    "spec,shape",
    [
        ("resnet18.yaml", (3, 64, 80)),
        ("densenet.yaml", (1, 48, 48)),
        ("googlenet.yaml", (3, 64, 64)),
        ("nin.yaml", (1, 112, 112)),
        ("inception_mnist.yaml", (1, 32, 32)),
    ],
)
def test_saved_bytes_follow_an_overridden_input(spec, shape):
    measured, estimated, _ = measured_and_estimated(
        ROOT / "specs" / spec, None, 2, input_shape=shape
    )
    assert estimated == measured


@pytest.mark.parametrize(
    "spec,variant",
    [
        ("resnet18.yaml", None),
        ("alexnet.yaml", "lrn"),
        ("densenet.yaml", None),
        ("lenet.yaml", "bn"),
    ],
)
def test_bfloat16_autocast_keeps_16_bit_activations_and_weight_copies(spec, variant):
    measured, estimated, _ = measured_and_estimated(ROOT / "specs" / spec, variant, 2, "bfloat16")
    assert estimated == measured
    _, fp32, _ = measured_and_estimated(ROOT / "specs" / spec, variant, 2)
    assert estimated != fp32


EVERY_OP = """
name: every_op
input: [3, 20, 20]
num_classes: 5
stages:
  # the batch does not require grad: nothing here is recorded until the first parameter
  pre: [maxpool: {k: 2, stride: 1}, relu: {inplace: true}, bn: {affine: false}, dropout: {p: 0.2}]
  a:
    - conv: {out: 8, k: 3, pad: 1, bias: false}
    - bn
    - relu: {inplace: true}
    - conv: {out: 8, k: [1, 3], pad: [0, 1], groups: 2}
    - relu6
    - conv: {out: 8, k: 3, pad: same, dilation: 2}
    - relu6: {inplace: true}
    - leaky_relu
    - leaky_relu: {inplace: true, slope: 0.2}
    - silu
    - silu: {inplace: true}
    - hardswish
    - hardswish: {inplace: true}
    - gelu
    - sigmoid
    - tanh
    - identity
    - lrn: {size: 3}
    - dropout: {p: 0.0}
    - dropout: {p: 0.3, inplace: true}
  b:
    parallel:
      merge: add
      branches:
        - [conv: {out: 8, k: 1}]
        - [avgpool: {k: 3, stride: 1, pad: 1, count_include_pad: false}]
        - [maxpool: {k: 3, stride: 1, pad: 1, ceil_mode: true}, relu]
  c:
    residual:
      main: [conv: {out: 16, k: 3, stride: 2, pad: 1}, bn, relu, conv: {out: 16, k: 3, pad: 1}, bn]
      shortcut: auto
      post: relu
  d: {dense: {repeat: 2, body: [bn, relu: {inplace: true}, conv: {out: 4, k: 3, pad: 1}]}}
  e:
    parallel:
      merge: concat
      branches:
        - [adaptive_avgpool: {out: 3}]
        - [adaptive_maxpool: {out: [3, 3]}]
        - [adaptive_avgpool: {out: 1}, conv: {out: 4, k: 1}, adaptive_maxpool: {out: 3}]
  head: [gmp, flatten, linear: {out: 12}, bn, relu, dropout: {p: 1.0}, linear: {out: $num_classes, bias: false}]
"""


@pytest.fixture
def every_op(tmp_path: Path) -> Path:
    path = tmp_path / "every_op.yaml"
    path.write_text(textwrap.dedent(EVERY_OP))
    return path


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_op_rule_is_exact_including_in_place_and_views(every_op, dtype):
    measured, estimated, _ = measured_and_estimated(every_op, None, 3, dtype)
    assert estimated == measured


def test_layers_before_the_first_parameter_keep_nothing(every_op):
    _, _, est = measured_and_estimated(every_op, None, 3)
    assert not any(path.startswith("pre.") for path in est.saved_by_path)
    assert (
        est.saved_by_path["a.0"] == 3 * 3 * 19 * 19 * 4
    )  # the first conv keeps the (pooled) batch


def test_a_storage_two_layers_keep_is_counted_once_for_the_first():
    _, _, est = measured_and_estimated(ROOT / "specs" / "lenet.yaml", None, 4)
    # sigmoid keeps its output; the avgpool after it keeps the same tensor as its input
    assert est.saved_by_path["features.1"] == 4 * 6 * 28 * 28 * 4
    assert "features.2" not in est.saved_by_path
    assert sum(est.saved_by_path.values()) == est.activations_bytes


@pytest.mark.parametrize("optimizer,buffers", [("sgd", 0), ("momentum", 1), ("adamw", 2)])
def test_params_grads_and_optimizer_state_are_exact(optimizer, buffers):
    spec = ROOT / "specs" / "resnet18.yaml"
    report = archspec.check(spec)
    est = estimate(report.network, 2, "float32", optimizer)
    model = archspec.build(spec)
    opt = make_optimizer(model, optimizer)
    train_step(model, torch.randn(2, 1, 96, 96), torch.tensor([1, 2]), opt)
    params = sum(p.untyped_storage().nbytes() for p in model.parameters())
    assert est.params_bytes == params == 4 * report.params
    assert est.grads_bytes == sum(p.grad.untyped_storage().nbytes() for p in model.parameters())
    assert est.optimizer_bytes == optimizer_state_bytes(opt)
    assert est.optimizer_bytes // params == buffers


def test_peak_is_the_step_high_water_mark_on_cpu():
    from archspec.backend.measure import cpu_step_peak

    spec = ROOT / "specs" / "resnet18.yaml"
    report = archspec.check(spec)
    est = estimate(report.network, 4, "float32", "momentum")
    model = archspec.build(spec)
    peak = cpu_step_peak(
        model,
        torch.randn(4, 1, 96, 96),
        torch.tensor([1, 2, 3, 4]),
        make_optimizer(model, "momentum"),
    )
    assert abs(est.peak_bytes - peak) <= 0.10 * peak, (est.peak_bytes, peak)
    assert est.peak_bytes > est.params_bytes + est.grads_bytes + est.optimizer_bytes


def test_peak_grows_with_the_batch_and_auto_batch_size_picks_the_largest_power_of_two():
    net = archspec.check(ROOT / "specs" / "densenet.yaml").network
    peaks = [estimate(net, b).peak_bytes for b in (1, 2, 4, 8, 16)]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]
    free = int(estimate(net, 8).peak_bytes / 0.5) + 1
    assert fits(net, 8, free, margin=0.5) and not fits(net, 16, free, margin=0.5)
    assert auto_batch_size(net, free, margin=0.5) == 8
    assert auto_batch_size(net, 1000) == 0


def test_bad_options_are_refused_with_a_message():
    net = archspec.check(ROOT / "specs" / "lenet.yaml").network
    for kwargs in ({"dtype": "int8"}, {"optimizer": "lion"}, {"batch": 0}):
        args = {"batch": 2, **kwargs}
        with pytest.raises(ValueError, match="must"):
            estimate(net, args.pop("batch"), **args)


def test_estimate_costs_a_fraction_of_check():
    import time

    spec = ROOT / "specs" / "densenet.yaml"

    def best(f) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    report = archspec.check(spec)
    t_check = best(lambda: archspec.check(spec))
    t_estimate = best(lambda: estimate(report.network, 32, "bfloat16", "adamw"))
    assert t_estimate < 0.5 * t_check, (t_estimate, t_check)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archspec", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def test_check_json_carries_the_memory_object_and_per_layer_saved_bytes():
    r = run_cli("check", "specs/lenet.yaml", "--batch", "32", "--optimizer", "adamw", "--json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    mem = obj["memory"]
    assert set(mem) == {
        "batch",
        "dtype",
        "optimizer",
        "params_bytes",
        "grads_bytes",
        "optimizer_bytes",
        "activations_bytes",
        "peak_bytes",
    }
    assert (mem["batch"], mem["dtype"], mem["optimizer"]) == (32, "float32", "adamw")
    assert mem["params_bytes"] == 4 * obj["params"]
    assert sum(layer["saved_bytes"] for layer in obj["layers"]) == mem["activations_bytes"]
    assert (
        mem["peak_bytes"] >= mem["activations_bytes"] + mem["params_bytes"] + mem["optimizer_bytes"]
    )
    plain = json.loads(run_cli("check", "specs/lenet.yaml", "--json").stdout)
    assert plain["memory"] is None and "saved_bytes" not in plain["layers"][0]


def test_check_table_gets_a_saved_column_and_a_totals_block():
    r = run_cli("check", "specs/resnet18.yaml", "--batch", "64", "--dtype", "bfloat16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split()[-1] == "saved"
    assert "training memory, batch 64, autocast bfloat16" in r.stdout
    for label in ("parameters", "gradients", "optimizer (sgd)", "activations", "peak (estimate)"):
        assert label in r.stdout
    assert "MiB" in r.stdout


def test_check_with_batch_never_imports_torch():
    code = textwrap.dedent("""
        import sys
        from archspec.cli import main
        try:
            main(["check", "specs/densenet.yaml", "--batch", "32", "--json"])
        except SystemExit as e:
            assert e.code == 0, e.code
        print("torch" in sys.modules)
    """)
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"


def _plan(monkeypatch, free: int, batch_size: int | str):
    """The runner's batch planning (train_cli._plan_batch) with `free` bytes on the CPU."""
    from types import SimpleNamespace

    import archspec.analysis.memory
    from archspec.cli.train import _plan_batch
    from archspec.run.recipe import Recipe

    monkeypatch.setattr(archspec.analysis.memory, "available_bytes", lambda device="cpu": free)
    report = archspec.check(ROOT / "specs" / "resnet18.yaml")
    loaded = SimpleNamespace(
        train=[0] * 50_000, test=SimpleNamespace()
    )  # 50,000 images, not resident
    recipe = Recipe(batch_size=64 if batch_size == "auto" else batch_size, optimizer="sgd")
    return report, _plan_batch(
        report, recipe, torch.device("cpu"), loaded, auto=batch_size == "auto"
    )


def test_train_batch_size_auto_takes_the_largest_power_of_two_that_fits(monkeypatch, capsys):
    report, recipe = _plan(monkeypatch, 2 << 30, "auto")
    bs = recipe.batch_size
    assert bs & (bs - 1) == 0
    assert fits(report.network, bs, 2 << 30, optimizer="momentum")
    assert not fits(report.network, 2 * bs, 2 << 30, optimizer="momentum")
    assert f"--batch-size auto: {bs} (estimated peak" in capsys.readouterr().err


def test_train_warns_before_the_first_step_when_the_batch_will_not_fit(monkeypatch, capsys):
    _, recipe = _plan(monkeypatch, 2 << 30, 4096)
    assert recipe.batch_size == 4096
    assert "warning: batch size 4096 is estimated to need" in capsys.readouterr().err
    _plan(monkeypatch, 2 << 30, 8)
    assert "warning" not in capsys.readouterr().err
