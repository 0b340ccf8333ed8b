"""The built module is ordinary PyTorch: scriptable, traceable, FX-able, compilable, stable names."""

from __future__ import annotations

import warnings

import pytest
import torch

import archspec

BRANCHY = [
    "specs/googlenet.yaml",
    "specs/resnet18.yaml",
    "specs/densenet.yaml",
    "specs/inception_mnist.yaml",
]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def small(path):
    model = archspec.build(path, input_shape=(1, 64, 64) if "mnist" not in path else None).eval()
    x = torch.randn(2, *model.input_shape)
    return model, x


@pytest.mark.parametrize("path", BRANCHY)
def test_torchscript_script_and_trace_match_eager(path):
    model, x = small(path)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), ref)
        torch.testing.assert_close(torch.jit.trace(model, x)(x), ref)


@pytest.mark.parametrize("path", BRANCHY)
def test_fx_symbolic_trace_matches_eager(path):
    model, x = small(path)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_torch_compile_matches_eager():
    model = archspec.build("specs/lenet.yaml").eval()
    x = torch.randn(4, 1, 28, 28)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_generated_forward_is_straight_line_code():
    import inspect

    model = archspec.build("specs/resnet18.yaml")
    source = inspect.getsource(type(model.b3[0]).forward)
    assert "for " not in source and "getattr(self" not in source
    assert "self.conv3(x)" in source  # the projection shortcut reads the block input


def test_state_dict_keys_follow_the_spec_names():
    keys = set(archspec.build("specs/resnet18.yaml").state_dict())
    assert {
        "b1.0.weight",
        "b2.0.conv1.weight",
        "b3.0.conv3.weight",
        "b3.0.bn1.running_mean",
        "head.2.bias",
    } <= keys
    assert not any(k.startswith("b2.0.conv3") for k in keys)  # identity shortcut: no projection
    keys = set(archspec.build("specs/googlenet.yaml").state_dict())
    assert "b3.0.p2_2.weight" in keys


def test_repr_is_readable():
    text = repr(archspec.build("specs/resnet18.yaml"))
    assert text.startswith("ArchNet(")
    assert "(b3): Sequential(" in text and "(0): Residual(" in text
    assert "(conv3): Conv2d(64, 128, kernel_size=(1, 1), stride=(2, 2))" in text


def test_build_on_meta_device_allocates_nothing():
    model = archspec.build("specs/vgg.yaml", variant="vgg19", device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_invalid_spec_raises_specerror_with_all_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ninput: [1, 8, 8]\nstages:\n  a: [conv: {out: 4, k: 9}, relu: {inplcae: true}]\n"
    )
    with pytest.raises(archspec.SpecError) as e:
        archspec.build(bad)
    assert [d.code for d in e.value.diagnostics] == ["E-SHAPE-COLLAPSE", "E-UNKNOWN-KEY"]
    assert "4:7: error[E-SHAPE-COLLAPSE]" in str(e.value)


def test_parameter_limit_refuses_before_allocating(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: big\ninput: [50000]\nstages:\n  fc: {linear: {out: 50000}}\n")
    with pytest.raises(archspec.SpecError) as e:
        archspec.build(big, max_params=10**6)
    assert e.value.diagnostics[0].code == "E-TOO-BIG"


NAMING = """\
name: naming
input: [1, 8, 8]
num_classes: 10
templates:
  blk:
    params: {c: int}
    body: [conv: {out: $c, k: 3}, relu]
stages:
  one: {conv: {out: 4, k: 3, name: first}}
  tpl: {use: blk, with: {c: 4}, name: inner}
  flat: {repeat: 2, inline: true, body: [conv: {out: 4, k: 1}]}
  res:
    - residual: {main: [conv: {out: 4, k: 3, pad: 1}], inline: true}
  head: [flatten, linear: {out: $num_classes}]
"""


def test_stage_keys_name_modules_and_check_paths_are_module_paths(tmp_path):
    # A one-item stage with its own `name` or `inline` stays a module named by the stage key;
    # `inline` inside a residual's body works like `inline` beside it.
    spec = tmp_path / "naming.yaml"
    spec.write_text(NAMING)
    paths = [layer.path for layer in archspec.check(spec).layers]
    assert paths == [
        "one.first",
        "tpl.inner.0",
        "tpl.inner.1",
        "flat.0",
        "flat.1",
        "res.0",
        "head.0",
        "head.1",
    ]
    model = archspec.build(spec)
    modules = dict(model.named_modules())
    assert set(paths) <= set(modules)
    assert [name for name, _ in model.named_children()] == ["one", "tpl", "flat", "res", "head"]
    assert isinstance(modules["res.0"], torch.nn.Conv2d)  # registered on the stage, no Residual
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# A repeat whose blocks read references (`from:`) is a generated chain, not an nn.Sequential.
CHAIN = """\
name: chain
input: [3, 8, 8]
templates:
  blk:
    params: {c: int}
    body:
      - identity: {name: x}
      - conv: {out: $c, k: 3, pad: 1, name: conv}
      - {from: [conv, x], merge: add}
stages:
  stem: {conv: {out: 4, k: 3, pad: 1}}
  block1: {repeat: 3, use: blk, with: {c: 4}}
"""


def test_a_generated_chain_is_indexed_like_nn_sequential(tmp_path):
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN)
    model = archspec.build(spec).eval()
    chain = model.block1
    assert not isinstance(chain, torch.nn.Sequential)  # its forward reads references
    blocks = [chain._modules[str(i)] for i in range(3)]
    assert len(chain) == 3 and list(chain) == blocks
    assert chain[0] is blocks[0] and chain[-1] is blocks[2] and chain[1][1] is blocks[1].conv
    with pytest.raises(IndexError):
        chain[3]
    with pytest.raises(TypeError):
        chain["0"]
    for p in chain[0].parameters():  # freeze the first block, as with nn.Sequential
        p.requires_grad_(False)
    assert [p.requires_grad for p in chain.parameters()] == [False] * 2 + [True] * 4
    x = torch.randn(2, 3, 8, 8)
    y = model(x)
    chain[1] = torch.nn.Identity()  # replace a block: the forward calls the new one
    stem = model.stem(x)
    want = blocks[2](blocks[0](stem))
    assert torch.allclose(model(x), want) and not torch.allclose(y, want)
