"""Tokens, LayerNorm, attention and learnable tensors (issue 17): [L, D] token tensors through
the checker with located errors, the torch modules they build, MACs against
torch.utils.flop_counter (attention's two matmuls included), saved bytes against what autograd
keeps, and specs/vit_mnist.yaml training a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from timing import best_of
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import archspec
from archspec.analysis.memory import estimate
from archspec.analysis.report import check_text
from archspec.backend.measure import saved_bytes
from archspec.cli.train import train

ROOT = Path(__file__).resolve().parents[1]
VIT_MNIST = ROOT / "specs" / "vit_mnist.yaml"

# Every new op on small shapes: an image stem, LayerNorm over channels, tokens, a class token, a
# position embedding, attention (with and without dropout), LayerNorm over tokens, a GELU MLP,
# back to an image with a layer scale, then tokens again and both token poolings' inputs.
ALL_OPS = """\
name: tokens
input: [3, 8, 8]
num_classes: 5
stages:
  stem: [conv: {out: 8, k: 2, stride: 2}, layernorm]
  tokens: to_tokens
  class_token: class_token
  encoder:
    - pos_embedding: {std: 0.02, name: pos_embedding}
    - residual: {main: [layernorm, attention: {heads: 2}], inline: true}
    - residual: {main: [layernorm, attention: {heads: 4, dropout: 0.1}], name: drop}
    - residual:
        main: [layernorm, linear: {out: 16}, gelu, dropout: {p: 0.1}, linear: {out: 8}]
  image: [token: {index: -1}]
  head: {linear: {out: $num_classes}}
"""
GRID = """\
name: grid
input: [4, 6, 6]
num_classes: 3
stages:
  body:
    - to_tokens
    - layernorm: {eps: 0.000001}
    - linear: {out: 8}
    - to_image
    - layer_scale: {init: 0.5, name: layer_scale}
    - conv: {out: 4, k: 3, pad: 1}
    - to_tokens
    - mean_tokens
  head: {linear: {out: $num_classes}}
"""
# Attention within windows on a non-square token grid: MaxViT's block and grid partitions.
WINDOWS = """\
name: windows
input: [8, 8, 12]
num_classes: 3
stages:
  body:
    - to_tokens
    - layernorm
    - partition_attention: {heads: 2, window: 4, h: 8, w: 12}
    - residual:
        main: [partition_attention: {heads: 4, window: 2, partition: grid, h: 8, w: 12}]
    - to_image: {h: 8, w: 12}
    - conv: {out: 8, k: 1}
  head: [gap, flatten, linear: {out: $num_classes}]
"""


def docs_spec(name: str) -> str:
    """The spec called `name` in docs/language.md (the docs tests check it as written)."""
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    start = text.index(f"```yaml\nname: {name}\n") + len("```yaml\n")
    return text[start : text.index("```", start)]


# MLP-Mixer, as the tokens section of docs/language.md writes it.
MIXER = docs_spec("mlp_mixer")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def checked(text: str, name: str = "t.yaml", **kw):
    return check_text(text, name, **kw)


def errors(text: str) -> list[tuple[int, int, str, str]]:
    report = checked(text)
    return [(e.loc.line, e.loc.column, e.code, e.message) for e in report.errors]


# ------------------------------------------------------------------ the checker


def test_token_shapes_params_and_macs_through_the_checker():
    report = checked(ALL_OPS)
    assert report.ok, report.render_errors()
    rows = {r["path"]: r for r in report.to_json()["layers"]}
    assert rows["tokens"]["output"] == [16, 8]  # 4x4 positions of 8 channels
    assert rows["class_token"]["output"] == [17, 8] and rows["class_token"]["params"] == 8
    assert rows["encoder.pos_embedding"]["params"] == 17 * 8
    att = rows["encoder.2"]  # inline residual: its main path registers on `encoder`
    assert att["op"] == "attention" and att["params"] == 4 * 8 * 8 + 4 * 8
    assert att["macs"] == 4 * 17 * 8 * 8 + 2 * 17 * 17 * 8
    assert rows["image.0"]["output"] == [8]
    # receptive field: on the image, none on tokens
    assert rows["stem.0"]["receptive_field"] == [2, 2]
    assert rows["tokens"]["receptive_field"] is None


def test_layer_scale_and_layernorm_on_images_keep_the_receptive_field():
    report = checked(GRID)
    assert report.ok, report.render_errors()
    rows = {r["path"]: r for r in report.to_json()["layers"]}
    assert rows["body.layer_scale"]["params"] == 8 and rows["body.3"]["output"] == [8, 6, 6]
    assert rows["body.5"]["receptive_field"] == [3, 3]  # to_tokens ... to_image: pointwise
    assert rows["body.7"]["output"] == [4]


def test_an_op_that_mixes_every_position_sees_the_whole_input_like_gap():
    tokens = "[conv: {out: 8, k: 4, stride: 4}, to_tokens, mean_tokens, linear: {out: 2}]"
    pooled = "[conv: {out: 8, k: 4, stride: 4}, gap, flatten, linear: {out: 2}]"
    attend = "[conv: {out: 8, k: 4, stride: 4}, to_tokens, attention: {heads: 2}, token]"
    rfs = {}
    for key, body in (("tokens", tokens), ("pooled", pooled), ("attend", attend)):
        report = checked(f"name: rf\ninput: [3, 32, 24]\nstages:\n  s: {body}\n")
        assert report.ok, report.render_errors()
        rfs[key] = [r["receptive_field"] for r in report.to_json()["layers"]]
    assert rfs["pooled"] == [[4, 4], [32, 24], [32, 24], [32, 24]]
    assert rfs["tokens"] == [[4, 4], None, [32, 24], [32, 24]]
    assert rfs["attend"] == [[4, 4], None, None, [32, 24]]  # none on tokens


def test_a_spec_may_take_tokens_as_input():
    text = "name: seq\ninput: [10, 16]\nstages:\n  b: [attention: {heads: 4}, mean_tokens]\n"
    report = checked(text)
    assert report.ok and report.output == (16,)
    assert report.to_json()["input"] == [10, 16]


@pytest.mark.parametrize(
    "layers, at, code, words",
    [
        ("[to_tokens, conv: {out: 4, k: 1}]", "conv", "E-SHAPE-RANK", "gets 36 tokens of 4"),
        ("[attention: {heads: 2}]", "attention", "E-SHAPE-RANK", "but gets a 4x6x6 image"),
        ("[to_tokens, bn]", "bn", "E-SHAPE-RANK", "bn normalises the channels"),
        ("[to_tokens, gap]", "gap", "E-SHAPE-RANK", "gap needs a CxHxW input"),
        ("[to_tokens, attention: {heads: 3}]", "3", "E-HEADS", "3 heads do not divide"),
        ("[to_tokens, to_image: {h: 5}]", "to_image", "E-SHAPE-TOKENS", "5x7 grid"),
        ("[to_tokens, token: {index: 36}]", "36", "E-RANGE", "index 36"),
        ("[linear: {out: 3}]", "linear", "E-SHAPE-RANK", "linear needs flat features or tokens"),
        ("[flatten, to_image]", "to_image", "E-SHAPE-RANK", "gets a flat vector"),
        ("[class_token]", "class_token", "E-SHAPE-RANK", "class_token needs LxD tokens"),
        ("[transpose_tokens]", "transpose_tokens", "E-SHAPE-RANK", "needs LxD tokens"),
        (
            "[to_tokens, partition_attention: {heads: 2, window: 4}]",
            "4",
            "E-WINDOW",
            "4x4 windows do not tile the 6x6 token grid",
        ),
        (
            "[to_tokens, partition_attention: {heads: 3, window: 2, partition: grid}]",
            "3",
            "E-HEADS",
            "3 heads do not divide the token width 4",
        ),
    ],
)
def test_image_ops_on_tokens_and_token_ops_on_images_are_located_errors(layers, at, code, words):
    text = f"name: e\ninput: [4, 6, 6]\nstages:\n  b: {layers}\n"
    found = errors(text)
    assert len(found) == 1, found
    line, col, got, message = found[0]
    assert (line, got) == (4, code) and words in message, found[0]
    assert text.splitlines()[3][col - 1 :].startswith(at), (col, at)


def test_tokens_keep_the_grid_of_their_image_and_need_one_where_it_is_unknown():
    # to_tokens of a 2x6 image: the tokens lie on a 2x6 grid through ops that keep them (one
    # per position), patch merging halves it (odd sides padded) ...
    text = (
        "name: e\ninput: [4, 2, 6]\nstages:\n  b: [to_tokens, layernorm, to_image]\n"
        "  c: [to_tokens, residual: {main: [linear: {out: 4}]}, patch_merging, to_image]\n"
    )
    report = checked(text)
    assert report.ok, report.render_errors()
    rows = {r["path"]: r["output"] for r in report.to_json()["layers"]}
    assert rows["b.2"] == [4, 2, 6] and rows["c.3"] == [8, 1, 3]
    # ... but a token input, or a class token (L + 1), leaves no grid: a square, or h and w
    tokens = "name: e\ninput: [12, 4]\nstages:\n  b: [to_image]\n"
    ((_, _, code, message),) = errors(tokens)
    assert code == "E-SHAPE-TOKENS" and "12 tokens are not a square grid" in message
    ok = checked(tokens.replace("to_image]", "to_image: {h: 2}]"))
    assert ok.ok and ok.output == (4, 2, 6)
    cls = "name: e\ninput: [4, 2, 6]\nstages:\n  b: [to_tokens, class_token, to_image]\n"
    ((_, _, code, message),) = errors(cls)
    assert code == "E-SHAPE-TOKENS" and "13 tokens are not a square grid" in message
    # transposed, the tokens are the channels, even where there are as many (12 = 12)
    swapped = "name: e\ninput: [12, 3, 4]\nstages:\n  b: [to_tokens, transpose_tokens, to_image]\n"
    ((_, _, code, message),) = errors(swapped)
    assert code == "E-SHAPE-TOKENS" and "12 tokens are not a square grid" in message


def test_in_reads_token_dimensions():
    text = (
        "name: e\ninput: [5, 12]\nstages:\n  b: [linear: {out: $in.d * 2}, linear: {out: $in.l}]\n"
    )
    assert checked(text).output == (5, 5)


# ------------------------------------------------------------------ the built modules


def test_built_modules_match_plain_torch():
    torch.manual_seed(0)
    model = archspec.build(_write(GRID)).eval()
    x = torch.randn(2, 4, 6, 6)
    body = model.body
    tokens = x.flatten(2).transpose(1, 2)
    y = torch.nn.functional.layer_norm(
        tokens, (4,), getattr(body, "1").weight, getattr(body, "1").bias, 1e-6
    )
    y = getattr(body, "2")(y)
    img = y.transpose(1, 2).reshape(2, 8, 6, 6) * body.layer_scale
    img = getattr(body, "5")(img)
    want = model.head(img.flatten(2).mean(2))
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-6)
    assert body.layer_scale.shape == (8, 1, 1) and torch.all(body.layer_scale == 0.5)
    assert dict(model.named_parameters())["body.layer_scale"] is body.layer_scale


class MixerBlock(nn.Module):
    """A hand-written MLP-Mixer block: token mixing across positions, then channel mixing."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        mlp = (nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.token_mlp = nn.Sequential(*mlp)
        self.norm2 = nn.LayerNorm(dim)
        mlp = (nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))
        self.channel_mlp = nn.Sequential(*mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class Mixer(nn.Module):
    def __init__(self, dim=48, patch=4, image=32, token_hidden=32, channel_hidden=96, depth=2):
        super().__init__()
        tokens = (image // patch) ** 2
        self.stem = nn.Conv2d(3, dim, patch, patch)
        blocks = [MixerBlock(tokens, dim, token_hidden, channel_hidden) for _ in range(depth)]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(1))


def test_mlp_mixer_matches_a_hand_written_mixer():
    torch.manual_seed(0)
    ref = Mixer().eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():  # LayerNorms that do something
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    report = checked(MIXER)
    assert report.ok, report.render_errors()
    assert report.params == sum(p.numel() for p in ref.parameters())
    model = archspec.build(_write(MIXER)).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ref(x)
        assert torch.allclose(model(x), want, rtol=0, atol=1e-6 * want.abs().max().item())
    rows = {r["path"]: r for r in report.to_json()["layers"]}
    assert rows["blocks.0.1"]["op"] == "transpose_tokens" and rows["blocks.0.1"]["output"] == [
        48,
        64,
    ]
    assert rows["blocks.0.token_mlp.0"]["macs"] == 48 * 64 * 32  # mixes the 64 positions
    assert estimate(report.network, 2, "bfloat16").activations_bytes == saved_bytes(
        model, x, "bfloat16"
    )


@pytest.mark.parametrize("kind", ["window", "grid"])
def test_partition_attention_attends_within_each_window_or_grid_group(kind):
    """Against torchvision's RelativePositionalMultiHeadAttention run on each group alone: a
    window is P x P neighbours, a grid group the tokens at rows r * h/P + i, columns
    s * w/P + j; on a non-square grid."""
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention

    h, w, p, d = 4, 6, 2, 8
    spec = (
        f"name: p\ninput: [{h * w}, {d}]\nstages:\n  a: {{partition_attention: "
        f"{{heads: 2, window: {p}, partition: {kind}, h: {h}, w: {w}}}}}\n"
    )
    torch.manual_seed(0)
    ours = archspec.build(_write(spec)).eval()
    attn = ours.a
    assert isinstance(attn, RelativePositionalMultiHeadAttention)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()  # a bias that tells positions apart
    ref = RelativePositionalMultiHeadAttention(d, d // 2, p * p).eval()
    ref.load_state_dict(attn.state_dict(), strict=True)
    x = torch.randn(2, h * w, d)
    grid = x.reshape(2, h, w, d)
    want = torch.empty_like(grid)
    a, b = h // p, w // p
    for i in range(a):
        for j in range(b):
            if kind == "window":
                rows, cols = slice(i * p, (i + 1) * p), slice(j * p, (j + 1) * p)
            else:
                rows, cols = slice(i, h, a), slice(j, w, b)
            group = grid[:, rows, cols].reshape(2, 1, p * p, d)
            want[:, rows, cols] = ref(group).reshape(2, p, p, d)
    with torch.no_grad():
        got = ours(x)
    assert torch.allclose(got, want.reshape(2, h * w, d), atol=1e-5)
    report = archspec.check(_write(spec))
    assert report.params == sum(t.numel() for t in ours.parameters())


def _write(text: str, tmp=[]) -> Path:  # noqa: B006  # one temp dir per session
    import tempfile

    if not tmp:
        tmp.append(Path(tempfile.mkdtemp()))
    path = tmp[0] / f"{abs(hash(text))}.yaml"
    path.write_text(text)
    return path


def test_tensor_parameters_sit_on_the_enclosing_module_and_the_forward_uses_them():
    torch.manual_seed(0)
    model = archspec.build(_write(ALL_OPS))
    names = dict(model.named_parameters())
    assert names["class_token"].shape == (1, 1, 8) and torch.all(names["class_token"] == 0)
    assert names["encoder.pos_embedding"].shape == (1, 17, 8)
    assert 0.01 < names["encoder.pos_embedding"].std().item() < 0.03
    model.eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        base = model(x)
        names["class_token"].normal_()  # (a constant shift would vanish in the LayerNorm)
        assert not torch.allclose(model(x), base)  # the class token reaches the output


def macs_counted(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode's MACs. Grad enabled: nn.MultiheadAttention's inference fast path (no
    grad, eval) is one fused op the counter does not see; the math backend of
    scaled_dot_product_attention: the counter has no rule for the fused CPU kernel (on CUDA it
    counts the fused kernels as these two matmuls)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(
    "text", [ALL_OPS, GRID, WINDOWS, MIXER], ids=["tokens", "grid", "windows", "mixer"]
)
def test_macs_equal_flop_counter(text):
    report = checked(text)
    model = archspec.build(_write(text)).eval()
    x = torch.randn(1, *report.input)
    assert report.macs == macs_counted(model, x)


def test_flop_counter_misses_only_q_k_and_attention_v_on_the_cpu_fused_kernel():
    # What docs/language.md says of attention's MACs: on a CPU with the default backends,
    # torch runs scaled_dot_product_attention as a fused kernel that flop_counter has no rule
    # for, so it counts the projections but not 2 L² D per attention layer.
    report = archspec.check(VIT_MNIST)
    attention = [r["output"] for r in report.to_json()["layers"] if r["op"] == "attention"]
    assert len(attention) == 2
    model = archspec.build(VIT_MNIST).eval()
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    missed = sum(2 * n * n * d for n, d in attention)
    assert counter.get_total_flops() // 2 == report.macs - missed
    assert macs_counted(model, x) == report.macs  # the math backend counts all of them


def test_vit_mnist_macs_and_output_shape():
    report = archspec.check(VIT_MNIST)
    model = archspec.build(VIT_MNIST).eval()
    x = torch.randn(1, 1, 28, 28)
    assert report.macs == macs_counted(model, x)
    assert model(x).shape == (1, 10)


@pytest.mark.parametrize(
    "text", [ALL_OPS, GRID, WINDOWS, MIXER], ids=["tokens", "grid", "windows", "mixer"]
)
@pytest.mark.parametrize("batch", [2, 3])
def test_saved_bytes_equal_what_autograd_keeps(text, batch):
    report = checked(text)
    torch.manual_seed(0)
    model = archspec.build(_write(text))
    x = torch.randn(batch, *report.input)
    assert estimate(report.network, batch, "float32").activations_bytes == saved_bytes(model, x)


def test_check_batch_json_reports_the_new_ops_memory(tmp_path):
    from archspec.cli import main

    result = CliRunner().invoke(main, ["check", str(VIT_MNIST), "--json", "--batch", "4"])
    data = json.loads(result.output)
    assert result.exit_code == 0 and data["memory"]["batch"] == 4
    torch.manual_seed(0)
    measured = saved_bytes(archspec.build(VIT_MNIST), torch.randn(4, 1, 28, 28))
    assert abs(data["memory"]["activations_bytes"] - measured) <= 0.05 * measured


# ------------------------------------------------------------------ vit_mnist


def test_vit_mnist_trains_a_few_steps(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        train,
        [
            str(VIT_MNIST),
            "--max-steps",
            "6",
            "--batch-size",
            "32",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(l["train_loss"] == l["train_loss"] for l in lines)  # finite, not NaN
    assert 0.0 <= lines[-1]["test_acc"] <= 1.0


def test_check_of_vit_h_14_is_fast():
    spec = ROOT / "specs" / "torchvision" / "vit.yaml"
    archspec.check(spec, "vit_h_14")
    best, report = best_of(lambda: archspec.check(spec, "vit_h_14"), 0.5)
    assert report.ok and report.params == 632_045_800
    assert best < 0.5, best
