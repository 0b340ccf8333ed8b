"""Networks beyond chains: references to earlier outputs (`from:`), several outputs
(`outputs:`, `build(outputs=...)`), upsample / convtranspose / crop / pad / frozen_bn, and the
weight-compatible U-Net (segmentation_models_pytorch) and ResNet-FPN (torchvision) specs."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from spec_files import write
from test_torchvision_zoo import _one_thread, random_state  # noqa: F401  # autouse fixture
from torch.utils.flop_counter import FlopCounterMode

import archspec
from archspec.analysis.graph import to_dot
from archspec.backend.measure import saved_bytes

ROOT = Path(__file__).resolve().parent.parent
UNET = ROOT / "specs" / "unet.yaml"
FPN = ROOT / "specs" / "torchvision" / "fpn.yaml"
RESNET = ROOT / "specs" / "torchvision" / "resnet.yaml"

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

SKIPS = """\
name: skips
input: [3, 20, 20]
stages:
  enc1: [conv: {out: 4, k: 3, pad: 1}, relu]
  enc2: [maxpool: {k: 2}, conv: {out: 8, k: 3, pad: 1}, relu]
  mid:
    - {from: [enc2, in], merge: add}
    - {conv: {out: 8, k: 1}, name: c}
  dec:
    - {convtranspose: {out: 4, k: 2, stride: 2}, name: up}
    - {from: [up, enc1], name: cat}
    - {conv: {out: 4, k: 3}, name: small}
    - {crop: {to: small}, from: cat, name: cropped}
    - {pad: {to: enc1}, from: cropped, name: padded}
    - {upsample: {size_of: enc1, mode: bilinear}, from: enc2, name: bil}
    - {gap: null, from: bil, name: gate}
    - {from: [padded, bil], merge: add, name: s}
    - {from: [s, gate], merge: mul}
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archspec", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_references_compute_what_the_hand_written_forward_computes(tmp_path):
    spec = write(tmp_path, SKIPS, "skips.yaml")
    report = archspec.check(spec)
    assert report.ok, report.render_errors()
    assert report.output == (8, 20, 20)
    torch.manual_seed(0)
    m = archspec.build(spec).eval()
    x = torch.randn(2, 3, 20, 20)
    f = torch.nn.functional
    with torch.no_grad():
        e1 = m.enc1(x)
        e2 = m.enc2(e1)
        cat = torch.cat([m.dec.up(m.mid.c(e2 + e2)), e1], 1)
        padded = f.pad(cat[:, :, 1:19, 1:19], [1, 1, 1, 1])
        bil = f.interpolate(e2, size=(20, 20), mode="bilinear")
        want = (padded + bil) * bil.mean((2, 3), keepdim=True)
        got = m(x)
        assert (got - want).abs().max().item() <= 1e-6
        assert torch.equal(torch.jit.script(m)(x), got)
        assert torch.equal(torch.fx.symbolic_trace(m)(x), got)


def test_a_merge_that_cannot_agree_is_refused_with_both_shapes(tmp_path):
    spec = write(
        tmp_path,
        """\
        name: bad
        input: [3, 16, 16]
        stages:
          a: [conv: {out: 4, k: 1}]
          b: [conv: {out: 8, k: 1}]
          c: [{from: [a, b], merge: add}]
        """,
    )
    (err,) = archspec.check(spec).errors
    assert (err.code, err.loc.line) == ("E-MERGE-ADD", 6)
    assert "a gives 4x16x16" in err.message and "b gives 8x16x16" in err.message


def test_unknown_and_forward_references_are_located_with_did_you_mean(tmp_path):
    spec = write(
        tmp_path,
        """\
        name: refs
        input: [3, 16, 16]
        stages:
          enc: [conv: {out: 4, k: 1}]
          dec:
            - {from: [in, enk]}
            - {from: [in, later]}
            - {from: [in, dec]}
          later: [relu]
        outputs: [enc, nope]
        """,
    )
    errs = [(e.code, e.loc.line, e.message, e.help) for e in archspec.check(spec).errors]
    assert errs[0][:2] == ("E-REF-UNKNOWN", 6) and "`enc`" in errs[0][3]
    assert errs[1][:2] == ("E-REF-FORWARD", 7) and "after this layer (line 9)" in errs[1][2]
    assert errs[2][:2] == ("E-REF-FORWARD", 8) and "contains this layer" in errs[2][2]
    assert errs[3][:2] == ("E-OUTPUTS", 10) and "nope" in errs[3][2]


def test_unet_size_mismatch_names_both_sources_and_the_sizes_that_fit():
    bad = cli("check", str(UNET), "--input", "3,97,97")
    assert bad.returncode == 1
    first = bad.stderr.splitlines()[0]
    assert "unet.yaml:" in first and "error[E-MERGE-CONCAT]" in first
    assert "input 97x97: the incoming tensor gives 8x8 but encoder.layer3 gives 7x7" in first
    assert "sizes divisible by 32 fit (e.g. 96 or 128)" in first
    assert "--input 3,96,96" in bad.stderr
    good = cli("check", str(UNET), "--input", "3,96,96")
    assert good.returncode == 0, good.stderr
    assert "-> output 1x96x96" in good.stdout


def test_non_square_inputs_say_which_side_is_off():
    report = archspec.check(UNET, input_shape=(3, 96, 100))
    (err,) = report.errors
    assert "widths divisible by 32 fit" in err.message


def test_unet_matches_segmentation_models_pytorch():
    smp = pytest.importorskip("segmentation_models_pytorch")
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        ref = smp.Unet("resnet34", encoder_weights=None, classes=1)
    ref.load_state_dict(random_state(ref, gen), strict=True, assign=True)
    ref.eval()
    ours = archspec.build(UNET, input_shape=(3, 64, 64), device="meta")
    result = ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours.eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert archspec.check(UNET).params == 24_436_369
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.shape == want.shape == (2, 1, 64, 64) and want.std() > 1e-3
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_fpn_matches_torchvision_resnet_fpn_backbone():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = resnet_fpn_backbone(backbone_name="resnet50", weights=None)
    ref.load_state_dict(random_state(ref, gen), strict=True, assign=True)
    ref.eval()
    ours = archspec.build(FPN, input_shape=(3, 64, 64), device="meta")
    result = ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours.eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert list(got) == list(want) == ["0", "1", "2", "3", "pool"]
    for k in want:
        assert got[k].shape == want[k].shape
        assert (got[k] - want[k]).abs().max().item() <= 1e-5 * want[k].abs().max().item()
    report = archspec.check(FPN, input_shape=(3, 64, 64))
    assert report.outputs == {k: tuple(v.shape[1:]) for k, v in want.items()}
    scripted = torch.jit.script(ours)  # frozen_bn, resize-to and the dict return script
    with torch.no_grad():
        assert all(torch.equal(v, got[k]) for k, v in scripted(x).items())


def test_outputs_cut_a_backbone_from_a_classifier_like_intermediate_layer_getter():
    from torchvision.models import resnet50
    from torchvision.models._utils import IntermediateLayerGetter

    gen = torch.Generator().manual_seed(1)
    with torch.device("meta"):
        tv = resnet50(weights=None)
    tv.load_state_dict(random_state(tv, gen), strict=True, assign=True)
    names = ["layer2", "layer3", "layer4"]
    ours = archspec.build(RESNET, variant="resnet50", outputs=names, device="meta")
    assert "fc" not in dict(ours.named_modules())  # nothing after layer4 is built
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True, assign=True)
    getter = IntermediateLayerGetter(tv, {n: n for n in names}).eval()
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        want, got = getter(x), ours.eval()(x)
    assert list(got) == names
    for n in names:
        assert torch.equal(got[n], want[n])
    data = archspec.check(RESNET, "resnet50", outputs=names).to_json()
    assert data["outputs"] == {
        "layer2": [512, 28, 28],
        "layer3": [1024, 14, 14],
        "layer4": [2048, 7, 7],
    }
    assert data["output"] == [2048, 7, 7] and "fc" not in {r["path"] for r in data["layers"]}


def test_check_prints_each_output_and_the_cli_mirrors_build_outputs():
    r = cli("check", str(RESNET), "--outputs", "layer2,layer4")
    assert r.returncode == 0, r.stderr
    assert "-> outputs" in r.stdout and "layer2  128x28x28" in r.stdout
    bad = cli("check", str(RESNET), "--outputs", "layer9")
    assert bad.returncode == 1 and "E-OUTPUTS" in bad.stderr and "`layer4`" in bad.stderr


def test_the_outputs_summary_aligns_its_shape_column():
    from archspec.analysis.table import render_table

    report = archspec.check(RESNET, outputs={"c3": "layer2", "c4": "layer3", "c5": "layer4"})
    lines = render_table(report).splitlines()
    at = lines.index("resnet18: input 3x224x224 -> outputs")
    assert lines[at + 1 : at + 4] == [
        "  c3  128x28x28  (layer2)",
        "  c4  256x14x14  (layer3)",
        "  c5  512x7x7    (layer4)",
    ]


def test_train_refuses_a_network_with_several_outputs(tmp_path):
    from click.testing import CliRunner

    from archspec.cli.main import main

    r = CliRunner().invoke(main, ["train", str(FPN), "--epochs", "1", "--out", str(tmp_path)])
    assert r.exit_code == 1
    assert "several outputs (0, 1, 2, 3, pool)" in r.output


def test_paper_unet_maps_572_to_388_and_runs_at_its_smallest_size():
    report = archspec.check(UNET, "paper")
    assert report.ok and report.input == (1, 572, 572) and report.output == (2, 388, 388)
    assert report.params == 31_030_658
    assert not archspec.check(UNET, "paper", (1, 172, 172)).ok
    torch.manual_seed(0)
    m = archspec.build(UNET, "paper", input_shape=(1, 188, 188)).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 1, 188, 188)).shape == (1, 2, 4, 4)


def test_graph_draws_the_skip_edges():
    report = archspec.check(UNET, input_shape=(3, 64, 64))
    dot = to_dot(report.network)
    concats = set(re.findall(r'(n\d+) \[label="concat', dot))
    skips = re.findall(r'(n\d+) -> (n\d+) \[style="dashed"\]', dot)
    assert len(concats) == 4  # the decoder blocks that concatenate a skip
    # layer3, layer2, layer1 and the stem's relu, each into its block's concat
    assert sorted(dst for _, dst in skips if dst in concats) == sorted(concats)


def test_new_ops_agree_with_torch(tmp_path):
    spec = write(
        tmp_path,
        """\
        name: ops
        input: [6, 7, 9]
        stages:
          a: [convtranspose: {out: 4, k: 3, stride: 2, pad: 1, output_padding: 1, groups: 2}]
          b: [upsample: {scale: [2, 3]}]
          c: [upsample: {scale: 1.5, mode: bilinear, align_corners: true}]
          d: [frozen_bn]
        """,
    )
    report = archspec.check(spec)
    assert report.ok, report.render_errors()
    torch.manual_seed(0)
    m = archspec.build(spec).eval()
    x = torch.randn(1, 6, 7, 9)
    rows = {r["path"]: r for r in report.layer_rows()}
    with FlopCounterMode(display=False) as fc:
        m.a(x)
    assert rows["a.0"]["macs"] == fc.get_total_flops() // 2
    assert rows["a.0"]["params"] == sum(p.numel() for p in m.a.parameters())
    h = x
    for stage in ("a", "b", "c", "d"):
        h = getattr(m, stage)(h)
        assert tuple(h.shape[1:]) == tuple(rows[f"{stage}.0"]["output"])
    from torchvision.ops import FrozenBatchNorm2d

    ref = FrozenBatchNorm2d(4)
    gen = torch.Generator().manual_seed(2)
    state = {k: torch.rand(v.shape, generator=gen) + 0.5 for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    getattr(m.d, "0").load_state_dict(state, strict=True)
    y = torch.randn(2, 4, 5, 5)
    assert torch.equal(getattr(m.d, "0")(y), ref(y))


def test_saved_bytes_follow_the_dag(tmp_path):
    from archspec.analysis.memory import estimate

    spec = write(tmp_path, SKIPS, "skips.yaml")
    report = archspec.check(spec)
    for dtype in ("float32", "bfloat16"):
        est = estimate(report.network, 2, dtype)
        torch.manual_seed(0)
        model = archspec.build(spec)
        assert est.activations_bytes == saved_bytes(model, torch.randn(2, 3, 20, 20), dtype)
