"""The benchmark suite (benchmarks/run.py) keeps running: its cheapest path, one spec and one
repetition of the check section, end to end; and the pieces the doc is regenerated with."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import archspec

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    """Import benchmarks/NAME.py (benchmarks/ is scripts, not a package)."""
    qualified = f"benchmarks_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, ROOT / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[qualified]


def test_quick_check_section_writes_every_figure(tmp_path: Path):
    out = tmp_path / "results.json"
    args = ["--only", "check", "--quick", "--reps", "1", "--specs", "specs/lenet.yaml"]
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"date", "quick", "command", "machine", "rows", "wall_s"} <= set(results)
    assert results["command"].endswith("--quick --reps 1 --only check --specs specs/lenet.yaml")
    assert {"cpu", "cores", "torch", "torchinfo", "gpu", "load_avg_1m"} <= set(results["machine"])
    (row,) = results["rows"]
    assert row["section"] == "check latency"
    assert row["case"] == "specs/lenet.yaml"
    assert row["peer"] == "torchinfo.summary(seed:lenet)"
    assert row["unit"] == "s" and row["goal"] and isinstance(row["met"], bool)
    # Even on a loaded machine a torch-free check beats importing torch by a wide margin.
    assert 0 < row["archspec"] < row["peer_value"]
    assert row["ratio"] > 1
    assert 0 < row["archspec_mib"] < row["peer_mib"]
    assert row["layers"] == 12
    # stdout is the Markdown table the doc holds
    assert "| figure | case | peer | archspec | peer's | ratio | goal |" in r.stdout
    assert "specs/lenet.yaml" in r.stdout


def test_doc_region_is_replaced_and_the_rest_kept(tmp_path: Path):
    run = _load("run")
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text(
        f"# P\n\nintro\n\n{run.START}\nold table\n{run.END}\n\n## Training memory\nkept\n"
    )
    results = {
        "date": "today",
        "quick": True,
        "wall_s": 60.0,
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "load_avg_1m": 1.0,
            "python": "3",
            "torch": "2",
            "torch_threads": 2,
            "torchinfo": "1",
            "gpu": None,
        },
        "rows": [
            run.row(
                "check latency",
                "specs/a.yaml",
                "torchinfo",
                0.2,
                4.0,
                "s",
                20.0,
                "x",
                ">= 20x",
                True,
            ),
            run.row("training throughput, GPU", "resnet18", "no GPU", 0, 0, "img/s", 0, ""),
        ],
    }
    run.update_doc(run.markdown(results), doc)
    text = doc.read_text()
    assert "old table" not in text
    assert text.startswith("# P\n\nintro\n\n") and text.endswith("\n\n## Training memory\nkept\n")
    assert (
        "| check latency | specs/a.yaml | torchinfo | 0.200 s | 4.000 s | 20x | >= 20x ✓ |" in text
    )
    assert "no GPU on this machine" in text


def test_every_spec_and_variant_has_a_peer():
    peers = _load("peers")
    memory = _load("memory")
    from seed_reference import SEEDS

    names = {c: peers.peer_of(*c) for c in memory.all_cases()}
    missing = [c for c, name in names.items() if name is None]
    # the seeds have no ResNet-34; the 2015 U-Net and the MNIST ViT have no hand-written peer
    assert missing == [
        ("specs/resnet18.yaml", "resnet34"),
        ("specs/unet.yaml", "paper"),
        ("specs/vit_mnist.yaml", None),
    ]
    assert names[("specs/unet.yaml", None)] == "smp:resnet34"
    for name in ("smp:resnet34", "torchvision:resnet50_fpn"):
        model = peers.build_peer(name)
        assert (
            sum(p.numel() for p in model.parameters())
            == archspec.check(
                ROOT
                / ("specs/unet.yaml" if name.startswith("smp") else "specs/torchvision/fpn.yaml")
            ).params
        )
    seeds = {n.removeprefix("seed:") for n in names.values() if n and n.startswith("seed:")}
    assert seeds == set(SEEDS)
