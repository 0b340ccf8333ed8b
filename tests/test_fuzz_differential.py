"""Differential fuzzing: `check` must tell the truth about the model `build` makes.

Hypothesis writes random specs — stacks of convs and pools with random kernel, stride, padding,
dilation, groups and ceil_mode, parallel branches, residuals with automatic shortcuts, dense
blocks, repeats and templates with expressions, on odd input sizes — and for each one:

* if `check` accepts, `build` + a real forward pass give exactly the inferred per-layer output
  shapes and parameter counts, and an independent plain-torch reading of the same data
  (tests/fuzz_reference.py) runs the same layers with the same shapes and counts;
* if `check` rejects, torch fails too on the same data at the same layer (or earlier), or every
  error is one of the stricter rules listed in docs/checker-rules.md.

CI runs a few hundred seeded cases; `pytest --fuzz-long` runs 10,000 (ARCHSPEC_FUZZ_EXAMPLES
overrides either count).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from fuzz_reference import TORCH_ERRORS, Stricter, TorchRef
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_compare import forward_with_hooks

import archspec
from archspec.ops import OPS

CI_EXAMPLES = 500
LONG_EXAMPLES = 10_000

# Where torch would run but archspec refuses: each is a documented stricter rule
# (docs/checker-rules.md). The reference raises Stricter(key) at the same point; archspec must
# report an error with this code and phrase.
STRICTER = {
    "linear-rank": ("E-SHAPE-RANK", "linear needs flat features"),  # torch: Linear on the last dim
    "image-rank": (
        "E-SHAPE-RANK",
        "needs a CxHxW input",
    ),  # torch: adaptive pools read [N, F] as HxW
    "auto-shortcut-rank": ("E-SHAPE-RANK", "`shortcut: auto` needs image tensors"),  # no torch twin
    "add": ("E-MERGE-ADD", "needs equal shapes"),  # torch broadcasts 1-sized dims
    "residual-add": ("E-MERGE-ADD", "residual main path gives"),  # torch broadcasts
    "dense-rank": ("E-MERGE-CONCAT", "it must keep height and width"),  # torch.cat on [N, F]
    "mul": ("E-MERGE-MUL", "broadcast to one"),  # torch broadcasts [N, F] against images
    "scale": ("E-MERGE-MUL", "does not broadcast to it"),  # torch: the input grows to the gate
    "split": ("E-GROUPS", "equal parts"),  # torch.chunk: unequal parts, or F on [N, F]
    "in-dim": ("E-EXPR-NAME", "does not exist for an input"),  # `$in.h` of flat features
    "token-rank": ("E-SHAPE-RANK", "needs LxD tokens"),  # torch: x[:, 0], mean(1) on any rank
    "bn-tokens": ("E-SHAPE-RANK", "bn normalises the channels"),  # torch: BatchNorm1d on [N, L, D]
    "empty-output": ("E-SHAPE-COLLAPSE", "into 0"),  # torch: convtranspose gives a 0-size tensor
}
# Refusals that stop no shape inference, so they may stand where torch ran the whole model.
NAME_RULES = {("E-NAME-DUP", "is already a module")}  # nn.Module.add_module silently replaces


# --------------------------------------------------------------------------- strategies

small = st.integers(1, 3)
kernel = st.one_of(
    st.integers(1, 5),
    st.lists(st.integers(1, 7), min_size=2, max_size=2),
    st.sampled_from(["$in.h", ["$in.h", 1], [1, "$in.w"], "min($in.h, $in.w)"]),
)
names = st.sampled_from(["a", "b", "conv", "x1"])


def int_or_pair(lo: int, hi: int):
    return st.one_of(st.integers(lo, hi), st.lists(st.integers(lo, hi), min_size=2, max_size=2))


@st.composite
def out_channels(draw, params: tuple[str, ...]) -> object:
    """A channel count: a literal, or (inside a template) an expression over its parameters
    and the incoming shape."""
    choices = [st.integers(1, 8)]
    if params:
        p = "$" + draw(st.sampled_from(params))
        choices.append(st.sampled_from([p, f"{p} * 2", f"max({p} // 2, 1)", f"{p} + 1"]))
    choices.append(st.sampled_from(["$in.c", "$in.c // 2 + 1", "max($in.c - 1, 1)", "$in.c * 2"]))
    return draw(st.one_of(*choices))


@st.composite
def conv(draw, params: tuple[str, ...] = ()) -> dict:
    body: dict = {"out": draw(out_channels(params)), "k": draw(kernel)}
    if draw(st.booleans()):
        body["stride"] = "$s" if "s" in params and draw(st.booleans()) else draw(int_or_pair(1, 3))
    if draw(st.booleans()):
        body["pad"] = draw(st.one_of(int_or_pair(0, 3), st.sampled_from(["same", "valid"])))
    if draw(st.integers(0, 3)) == 0:
        body["dilation"] = draw(int_or_pair(1, 3))
    if draw(st.integers(0, 3)) == 0:
        g = draw(st.integers(1, 4))
        body["groups"] = g
        if isinstance(body["out"], int) and draw(st.booleans()):
            body["out"] = g * draw(st.integers(1, 3))
    if draw(st.integers(0, 3)) == 0:
        body["bias"] = draw(st.booleans())
    return {"conv": body}


@st.composite
def pool(draw) -> dict:
    op = draw(st.sampled_from(["maxpool", "avgpool"]))
    body: dict = {"k": draw(kernel)}
    if draw(st.booleans()):
        body["stride"] = draw(int_or_pair(1, 3))
    if draw(st.booleans()):
        body["pad"] = draw(int_or_pair(0, 3))
    if draw(st.booleans()):
        body["ceil_mode"] = True
    if op == "maxpool" and draw(st.integers(0, 3)) == 0:
        body["dilation"] = draw(int_or_pair(1, 3))
    if op == "avgpool" and draw(st.integers(0, 3)) == 0:
        body["count_include_pad"] = draw(st.booleans())
    return {op: body}


# Ops with a hand-written strategy above (richer than their `Op.fuzz` values: expressions,
# `$s`); `flatten` is also drawn as `flatten, linear`. Every other registered op is drawn from
# the values its own definition lists (archspec/ops/base.py, `Op.fuzz`).
HAND_WRITTEN = {"conv", "maxpool", "avgpool", "flatten"}


def drawable(name: str) -> bool:
    """The fuzzer can write the op: its definition lists values for every required parameter."""
    op = OPS[name]
    required = {f for f, info in op.Params.model_fields.items() if info.is_required()}
    return required <= set(op.fuzz)


REGISTRY_OPS = [n for n in OPS if n not in HAND_WRITTEN and drawable(n)]


@st.composite
def from_registry(draw, name: str) -> object:
    op = OPS[name]
    body = {
        p: draw(st.sampled_from(values))
        for p, values in op.fuzz.items()
        if op.Params.model_fields[p].is_required() or draw(st.booleans())
    }
    return {name: body} if body else name


@st.composite
def leaf(draw, params: tuple[str, ...] = ()) -> object:
    kind = draw(st.integers(0, 19))
    if kind < 6:
        item = draw(conv(params))
    elif kind < 10:
        item = draw(pool())
    elif kind == 10:
        return draw(
            st.sampled_from(["flatten", ["flatten", {"linear": {"out": draw(st.integers(1, 6))}}]])
        )
    else:
        item = draw(from_registry(draw(st.sampled_from(REGISTRY_OPS))))
    if isinstance(item, dict) and draw(st.integers(0, 7)) == 0:
        (head,) = item
        item = {head: dict(item[head], name=draw(names))}
    return item


@st.composite
def layers(draw, depth: int, params: tuple[str, ...], templates: tuple[str, ...]) -> list:
    return [draw(node(depth, params, templates)) for _ in range(draw(st.integers(1, 3)))]


@st.composite
def node(draw, depth: int, params: tuple[str, ...] = (), templates: tuple[str, ...] = ()) -> object:
    if depth <= 0 or draw(st.integers(0, 9)) < 5:
        item = draw(leaf(params))
        if isinstance(item, dict) and draw(st.integers(0, 9)) == 0:  # present or left out
            item = dict(item, when=draw(st.sampled_from([True, False, "$num_classes > 5"])))
        return item
    sub = lambda: draw(layers(depth - 1, params, templates))
    gating = draw(st.integers(0, 9))
    if gating == 0:  # squeeze-and-excitation: the input times what `by` computes from it
        by = draw(st.sampled_from([sub(), ["gap", {"conv": {"out": "$in.c", "k": 1}}, "sigmoid"]]))
        return {"scale": {"by": by}}
    if gating == 1:  # ShuffleNet: channel parts through their own branches
        branches = [draw(st.sampled_from([[], sub()])) for _ in range(draw(st.integers(1, 3)))]
        return {"split": {"branches": branches}}
    kind = draw(st.integers(0, 7 if templates else 5))
    if kind == 0:
        branches = [sub() for _ in range(draw(st.integers(1, 3)))]
        body: dict = {
            "branches": branches,
            "merge": draw(st.sampled_from(["concat", "add", "mul"])),
        }
        if draw(st.booleans()):
            body["branches"] = {f"p{i}": b for i, b in enumerate(branches)}
            body["flat"] = draw(st.booleans())
        if draw(st.integers(0, 3)) == 0:
            body["inline"] = True
            body["name"] = draw(names)
        return {"parallel": body}
    if kind == 1:
        body = {
            "main": sub(),
            "shortcut": draw(
                st.sampled_from(["auto", "auto", "identity", "identity_if_same", "layers"])
            ),
        }
        if body["shortcut"] == "layers":
            body["shortcut"] = sub()
        if draw(st.booleans()):
            body["projection"] = {"bn": draw(st.booleans()), "bias": draw(st.booleans())}
        if draw(st.booleans()):
            body["post"] = "relu"
        if draw(st.integers(0, 3)) == 0:
            body["inline"] = True
        return {"residual": body}
    if kind == 2:
        growth = draw(st.integers(1, 4))
        layer = draw(
            st.sampled_from(
                [
                    ["bn", "relu", {"conv": {"out": growth, "k": 3, "pad": 1}}],
                    [{"conv": {"out": growth, "k": 1}}],
                    sub(),
                ]
            )
        )
        return {"dense": {"repeat": draw(st.integers(1, 3)), "body": layer}}
    if kind == 3:
        body = {"repeat": draw(st.integers(1, 3))}
        if draw(st.booleans()):  # the body reads a variable the repeat sets per repetition
            body["with"] = {"v": draw(st.sampled_from([2, "$i + 1", "$i * 2 + 1"]))}
            body["body"] = draw(layers(depth - 1, (*params, "v"), templates))
            if draw(st.booleans()):
                body["first"] = {"v": draw(st.integers(1, 5))}
            if draw(st.booleans()):
                n = body["repeat"]
                body["at"] = {draw(st.integers(-n, n - 1)): {"v": draw(st.integers(1, 5))}}
        else:
            body["body"] = sub()
        if draw(st.integers(0, 3)) == 0:
            body["inline"] = True
        elif draw(st.integers(0, 3)) == 0:
            body["prefix"] = draw(st.sampled_from(["", "layer", "b_"]))
            body["start"] = draw(st.integers(0, 2))
        return body
    if kind == 4:
        return sub()  # a nested list: a Sequential
    if kind == 5:
        return {"seq": {"layers": sub(), "inline": draw(st.booleans())}}
    # template calls
    t = draw(st.sampled_from(templates))
    args = {"c": draw(st.one_of(st.integers(1, 6), st.just("$in.c")))}
    if draw(st.booleans()):
        args["s"] = draw(st.integers(1, 2))
    if kind == 6:
        return {t: args}
    if kind == 7 and draw(st.booleans()):
        return {"dense": {"repeat": draw(st.integers(1, 3)), "use": t, "with": args}}
    call: dict = {"repeat": draw(st.integers(1, 3)), "use": t, "with": args}
    if draw(st.integers(0, 3)) == 0:
        call["inline"] = True
    if draw(st.booleans()):
        call["first"] = {"s": 2}
    if draw(st.booleans()):
        call["with"] = dict(args, c="$i + 2")
    if draw(st.integers(0, 3)) == 0:
        n = call["repeat"]
        call["at"] = {draw(st.integers(-n, n - 1)): {"c": draw(st.integers(1, 6))}}
    return call


@st.composite
def specs(draw) -> dict:
    image = draw(st.integers(0, 9)) > 0
    shape = (
        [draw(st.integers(1, 4)), draw(st.integers(1, 64)), draw(st.integers(1, 64))]
        if image
        else [draw(st.integers(1, 16))]
    )
    templates = {}
    for i in range(draw(st.integers(0, 3))):
        params = {"c": "int", "s": 1, "d": draw(st.sampled_from([2, "$c + 1", "max($c // 2, 1)"]))}
        kind = draw(st.integers(0, 2))
        if kind == 0:  # may call the templates defined before it
            templates[f"t{i}"] = {
                "params": params,
                "body": draw(layers(1, ("c", "s", "d"), tuple(templates))),
            }
        elif kind == 1:
            main = [draw(conv(("c", "s"))), "bn", "relu", {"conv": {"out": "$c", "k": 3, "pad": 1}}]
            templates[f"t{i}"] = {
                "params": params,
                "residual": {"main": main, "shortcut": "auto", "post": "relu"},
            }
        else:
            templates[f"t{i}"] = {
                "params": params,
                "parallel": {
                    "branches": [draw(layers(0, ("c", "s"), ())) for _ in range(2)],
                    "merge": "concat",
                },
            }
    tnames = tuple(templates)
    stages = {f"s{i}": draw(layers(2, (), tnames)) for i in range(draw(st.integers(1, 3)))}
    spec: dict = {"name": "fuzz", "input": shape, "num_classes": 3}
    if templates:
        spec["templates"] = templates
    if draw(st.integers(0, 5)) == 0:
        spec["width"] = draw(st.sampled_from([0.5, 1.5, 2.0]))
    if draw(st.integers(0, 5)) == 0:
        spec["defaults"] = draw(
            st.sampled_from(
                [
                    {"conv": {"bias": False}},
                    {"conv": {"pad": 1}},
                    {"bn": {"eps": 0.001}},
                    {"maxpool": {"ceil_mode": True}},
                ]
            )
        )
    spec["stages"] = stages
    return spec


# --------------------------------------------------------------------------- the oracle


def observe(
    model: torch.nn.Module,
    paths: list[str],
    x: torch.Tensor,
    tensors: dict[str, tuple] | None = None,
) -> list[tuple]:
    """Run the built model with a hook on every reported layer: (output shape, params) each.
    `tensors`: the layers of tensor ops (class_token, ...) with their reported output; they are
    parameters, not modules, so the parameter is looked up and its size counted, and their
    output is seen through the layers after them."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple] = {}
    tensors = tensors or {}
    for path, out in tensors.items():
        seen[path] = (out, model.get_parameter(path).numel())
    every, paths = paths, [p for p in paths if p not in tensors]

    def recorder(path: str):
        numel = sum(p.numel() for p in modules[path].parameters())

        def hook(mod, inp, out):
            assert path not in seen, f"`{path}` ran twice"
            seen[path] = (tuple(out.shape[1:]), numel)

        return hook

    for path in paths:
        assert path in modules, f"reported layer `{path}` is not a module of the built model"
    forward_with_hooks(model, x, [(modules[path], recorder(path)) for path in paths])
    return [seen.get(p) for p in every]


# Nested repeats of `$in.c * 2` or of three-way concats can compound into a model too big to run
# on a CI machine; the checker's own numbers say so before torch allocates anything.
TOO_LARGE = {"params": 5_000_000, "elements": 4_000_000, "macs": 300_000_000}


def too_large(report: archspec.Report) -> bool:
    done = [n.inferred for n in report.network.layers if n.inferred] if report.network else []
    return (
        sum(i.params for i in done) > TOO_LARGE["params"]
        or sum(i.macs for i in done) > TOO_LARGE["macs"]
        or any(math.prod(i.out) > TOO_LARGE["elements"] for i in done)
    )


def differential(spec: dict, workdir: Path) -> str:
    """One case; returns the outcome ("ok", "rejected", "stricter", "large") or fails the test."""
    path = workdir / "spec.yaml"
    path.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    report = archspec.check(path)
    if too_large(report):
        return "large"
    ref = TorchRef(spec)
    torch_error: BaseException | None = None
    try:
        ref_out = ref.run()
    except (*TORCH_ERRORS, Stricter) as e:
        torch_error = e
    where = (
        f"\nspec: {json.dumps(spec)}\narchspec: {[(d.code, d.message) for d in report.errors]}"
        f"\ntorch: {torch_error!r}"
    )
    named = [d for d in report.errors if any(d.code == c and p in d.message for c, p in NAME_RULES)]

    if report.ok or len(named) == len(report.errors):
        assert torch_error is None, "check accepted a spec torch refuses" + where
        rows = [
            (n.op, n.inferred.out, n.inferred.params) if n.inferred else None
            for n in report.network.layers
        ]
        assert rows == ref.rows, f"check's layers differ from torch's\n{rows}\n{ref.rows}" + where
        assert report.network.root.out_shape == tuple(ref_out.shape[1:]), where
        if not report.ok:
            return "stricter"
        assert report.params == sum(r[2] for r in ref.rows), where
        rows = report.layer_rows()
        model = archspec.build(path).eval()
        x = torch.randn(2, *spec["input"])
        tensors = {r["path"]: tuple(r["output"]) for r in rows if OPS[r["op"]].tensor}
        observed = observe(model, [r["path"] for r in rows], x, tensors)
        assert observed == [(tuple(r["output"]), r["params"]) for r in rows], (
            f"build's modules differ from check\n{observed}" + where
        )
        assert sum(p.numel() for p in model.parameters()) == report.params, where
        return "ok"

    codes = {d.code for d in report.errors if "does not exist for an input" not in d.message}
    assert (
        not {
            "E-TYPE",
            "E-RANGE",
            "E-UNKNOWN-KEY",
            "E-MISSING-KEY",
            "E-ITEM",
            "E-EXPR-NAME",
            "E-EXPR-SYNTAX",
            "E-TEMPLATE",
            "E-TEMPLATE-ARG",
            "E-TEMPLATE-ARG-MISSING",
            "E-UNKNOWN-OP",
        }
        & codes
    ), "the fuzzer writes well-formed specs: a structural error is a checker bug" + where
    assert torch_error is not None, (
        "check rejected a spec torch runs, and no documented rule says so" + where
    )
    if isinstance(torch_error, Stricter):
        code, phrase = STRICTER[torch_error.rule]
        assert any(d.code == code and phrase in d.message for d in report.errors), (
            f"torch stopped at the stricter rule `{torch_error.rule}`, check did not report it"
            + where
        )
    # Torch stopped after ref.rows layers: check must agree on those, and must not have
    # inferred the layer where torch stopped.
    if report.network is not None:
        got = [
            (n.op, n.inferred.out, n.inferred.params) if n.inferred else None
            for n in report.network.layers
        ]
        n = len(ref.rows)
        assert got[:n] == ref.rows, (
            f"check and torch disagree before torch's error\n{got}\n{ref.rows}" + where
        )
        # (after a failed merge a sibling branch may follow, which check rightly infers)
        if n < len(got) and ref.failed_in_layer:
            assert got[n] is None, "torch failed at a layer check inferred" + where
    return "rejected" if isinstance(torch_error, TORCH_ERRORS) else "stricter"


# Ops whose required parameters name another output (crop/pad `to`): a random layer list has
# no output to name; tests/test_dag.py holds them to torch.
READING = {n for n in OPS if OPS[n].refs and not drawable(n)}


def test_the_fuzzer_writes_every_registered_op():
    undrawn = sorted(set(OPS) - HAND_WRITTEN - set(REGISTRY_OPS) - READING)
    assert not undrawn, f"give these ops `fuzz` values for their required parameters: {undrawn}"


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_check_agrees_with_torch(request: pytest.FixtureRequest) -> None:
    n = int(os.environ.get("ARCHSPEC_FUZZ_EXAMPLES", "0")) or (
        LONG_EXAMPLES if request.config.getoption("--fuzz-long") else CI_EXAMPLES
    )
    outcomes: dict[str, int] = {}
    torch.manual_seed(0)

    @settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(spec=specs())
    def case(spec: dict) -> None:
        with tempfile.TemporaryDirectory() as d:
            outcome = differential(spec, Path(d))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    case()
    print(f"\nfuzz outcomes over {sum(outcomes.values())} specs: {outcomes}")
    # The generator must exercise both sides, or the test proves little.
    assert outcomes.get("ok", 0) >= n // 10, outcomes
    assert outcomes.get("rejected", 0) >= n // 10, outcomes
    assert outcomes.get("large", 0) <= n // 50, outcomes
