"""An independent reading of the spec language in plain torch, for the differential fuzzer.

`TorchRef` walks spec *data* (the dict a test wrote to YAML) and runs a real tensor through
torch modules it creates on the fly, sized from the tensor it receives — no archspec shape code is
involved, so where archspec's checker and torch disagree, one of them shows it. It records
every leaf layer it ran (op, output shape without the batch, parameter count) in forward order,
the same order as `Report.layer_rows()`. Ops whose torch module depends on archspec's geometry
(conv, pools, linear, bn, ...) are written out here; the pointwise rest use the op's own `build`.

A torch failure surfaces as the exception torch raised. Where archspec documents a rule
stricter than torch (docs/checker-rules.md) — torch would broadcast an `add`, apply `linear` to
the last dimension of an image, or the language has no torch counterpart — it raises `Stricter`
with the rule's key at exactly the point where archspec stops inferring shapes.
Expressions are the small subset the fuzzer writes, evaluated here with Python's own rules.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from archspec.ops import OPS

TORCH_ERRORS = (RuntimeError, ValueError, IndexError)


# Ops whose torch module would run on a tensor of another rank (conv2d and the pools take an
# unbatched CxHxW, x[:, 0] and mean(1) any rank): archspec refuses them by rank.
IMAGE_OPS = {"conv", "maxpool", "avgpool", "adaptive_avgpool", "adaptive_maxpool", "gap", "gmp"}
IMAGE_OPS |= {"lrn", "to_tokens", "upsample", "frozen_bn", "convtranspose"}
TOKEN_OPS = {"attention", "class_token", "token", "mean_tokens", "to_image", "transpose_tokens"}
TOKEN_OPS |= {"window_attention", "patch_merging", "partition_attention"}
# Ops laying tokens out on an h x w grid: without `h`/`w` they take the grid of the image the
# tokens came from (kept on the tensor as `_grid` while every op keeps the tokens one per
# position; patch merging halves it), else a square.
GRID_OPS = {"to_image", "window_attention", "patch_merging", "partition_attention"}


def grid_of(x: torch.Tensor) -> tuple[int, int] | None:
    return getattr(x, "_grid", None)


def with_grid(y: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    if grid is not None and y.dim() == 3:
        y._grid = grid  # type: ignore[attr-defined]
    return y


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _Tensor(nn.Module):
    def __init__(self, t, code: str):
        super().__init__()
        self.t = t
        self.code = code

    def forward(self, x):
        return eval(self.code, {"torch": torch}, {"self": self, "x": x})  # our own code


class Stricter(Exception):
    """Torch would go on here, but a documented archspec rule refuses the spec."""

    def __init__(self, rule: str):
        super().__init__(rule)
        self.rule = rule


def pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


class TorchRef:
    def __init__(self, spec: dict):
        self.spec = spec
        self.templates = spec.get("templates") or {}
        self.defaults = spec.get("defaults") or {}
        self.width = spec.get("width", 1.0)
        self.rows: list[tuple[str, tuple[int, ...], int]] = []
        self.failed_in_layer = False  # torch raised inside a layer (not at a merge)

    # ------------------------------------------------------------------ entry

    def run(self, batch: int = 2) -> torch.Tensor:
        x = torch.randn(batch, *self.spec["input"])
        env = {"num_classes": self.spec.get("num_classes"), "width": self.width, "i": 0}
        jump = (1, 1)
        with torch.no_grad():
            for body in self.spec["stages"].values():
                x, jump = self.item(body, x, jump, env)
        return x

    # ------------------------------------------------------------------ values

    def value(self, v: Any, env: dict, x: torch.Tensor) -> Any:
        if isinstance(v, list):
            return [self.value(e, env, x) for e in v]
        if not (isinstance(v, str) and "$" in v):
            return v
        dims = {"c": x.shape[1], "f": x.shape[1]}
        if x.dim() == 4:
            dims.update(h=x.shape[2], w=x.shape[3])
        for d in re.findall(r"\$in\.([a-z])", v):
            if d not in dims:
                raise Stricter("in-dim")
        text = re.sub(r"\$in\.([a-z])", lambda m: str(dims[m.group(1)]), v)
        text = re.sub(r"\$([A-Za-z_]\w*)", lambda m: repr(env[m.group(1)]), text)
        return eval(text, {"__builtins__": {}}, {"max": max, "min": min})  # test-written text

    # ------------------------------------------------------------------ items

    def item(self, it: Any, x: torch.Tensor, jump: tuple, env: dict) -> tuple[torch.Tensor, tuple]:
        if isinstance(it, str):
            return self.head(it, None, x, jump, env)
        if isinstance(it, list):
            for sub in it:
                x, jump = self.item(sub, x, jump, env)
            return x, jump
        assert isinstance(it, dict), it
        if "when" in it:
            if not self.value(it["when"], env, x):
                return x, jump  # left out: no module, its input handed on
            it = {k: v for k, v in it.items() if k != "when"}
        if {"repeat", "use", "body"} & set(it):
            return self.repeat(it, x, jump, env, dense=False)
        (head,) = [k for k in it if k not in ("name", "inline")]
        return self.head(head, it[head], x, jump, env)

    def head(self, head: str, body: Any, x: torch.Tensor, jump: tuple, env: dict):
        if head == "parallel":
            return self.parallel(body, x, jump, env)
        if head == "residual":
            return self.residual(body, x, jump, env)
        if head == "scale":
            return self.scale(body, x, jump, env)
        if head == "split":
            return self.split(body, x, jump, env)
        if head == "dense":
            return self.repeat(body, x, jump, env, dense=True)
        if head == "seq":
            return self.item(body["layers"] if isinstance(body, dict) else body, x, jump, env)
        if head in self.templates:
            return self.template(
                head, {k: v for k, v in (body or {}).items() if k != "name"}, x, jump, env
            )
        params = {k: v for k, v in (body or {}).items() if k != "name"}
        return self.layer(head, params, x, jump, env)

    def layer(
        self, op: str, raw: dict, x: torch.Tensor, jump: tuple, env: dict, scale: bool = True
    ):
        p = dict(self.defaults.get(op, {}))
        for k, v in raw.items():
            p[k] = self.value(v, env, x)
            if (
                op == "conv"
                and k == "out"
                and scale
                and self.width != 1
                and not (isinstance(v, str) and "$in" in v)
            ):
                p[k] = max(1, math.floor(p[k] * self.width + 1e-9))
        if op == "linear" and x.dim() == 4:
            raise Stricter("linear-rank")
        if op in IMAGE_OPS and x.dim() != 4:
            raise Stricter("image-rank")
        if op in TOKEN_OPS and x.dim() != 3:
            raise Stricter("token-rank")
        if op == "bn" and x.dim() == 3:
            raise Stricter("bn-tokens")  # BatchNorm1d would read the tokens as channels
        grid = grid_of(x)
        if op in GRID_OPS and p.get("h") is None and p.get("w") is None and grid is not None:
            p["h"], p["w"] = grid
        try:
            module, stride = self.module(op, p, x)
            y = module(x)
        except TORCH_ERRORS:
            self.failed_in_layer = True
            raise
        if op == "to_tokens":
            y = with_grid(y, (x.shape[2], x.shape[3]))
        elif op == "patch_merging":
            n = x.shape[1]
            h = p.get("h") or (n // p["w"] if p.get("w") else math.isqrt(n))
            w = p.get("w") or n // max(1, h)
            y = with_grid(y, ((h + 1) // 2, (w + 1) // 2))
        elif op != "transpose_tokens" and x.dim() == y.dim() == 3 and y.shape[1] == x.shape[1]:
            y = with_grid(y, grid)  # one token per position still (transposed: channels)
        if y.dim() == 4 and 0 in y.shape[2:]:  # ConvTranspose2d hands on an empty tensor
            raise Stricter("empty-output")
        params = sum(t.numel() for t in module.parameters())
        self.rows.append((op, tuple(y.shape[1:]), params))
        return y, (jump[0] * stride[0], jump[1] * stride[1])

    def module(self, op: str, p: dict, x: torch.Tensor) -> tuple[nn.Module, tuple[int, int]]:
        one = (1, 1)
        if op == "conv":
            pad = p.get("pad", 0)
            pad = pad if isinstance(pad, str) else pair(pad)
            s = pair(p.get("stride", 1))
            return nn.Conv2d(
                x.shape[1],
                p["out"],
                pair(p["k"]),
                s,
                pad,
                pair(p.get("dilation", 1)),
                p.get("groups", 1),
                p.get("bias", True),
            ), s
        if op in ("maxpool", "avgpool"):
            k = pair(p["k"])
            s = pair(p["stride"]) if p.get("stride") is not None else k
            pad = pair(p.get("pad", 0))
            if op == "maxpool":
                return nn.MaxPool2d(
                    k, s, pad, pair(p.get("dilation", 1)), ceil_mode=p.get("ceil_mode", False)
                ), s
            return nn.AvgPool2d(
                k, s, pad, p.get("ceil_mode", False), p.get("count_include_pad", True)
            ), s
        if op in ("adaptive_avgpool", "adaptive_maxpool", "gap", "gmp"):
            out = pair(p["out"]) if op.startswith("adaptive") else (1, 1)
            cls = nn.AdaptiveAvgPool2d if "avg" in op or op == "gap" else nn.AdaptiveMaxPool2d
            s = tuple(max(1, x.shape[2 + i] // out[i]) for i in (0, 1)) if x.dim() == 4 else one
            return cls(out), s  # type: ignore[return-value]
        if op == "flatten":
            return nn.Flatten(), one
        if op == "linear":
            return nn.Linear(x.shape[-1], p["out"], p.get("bias", True)), one
        if op == "bn":
            cls = nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d
            return cls(x.shape[1], eps=p.get("eps", 1e-5), affine=p.get("affine", True)).eval(), one
        if op == "lrn":
            return nn.LocalResponseNorm(p["size"]), one
        if op == "dropout":
            return nn.Dropout(p.get("p", 0.5)).eval(), one
        # Any other op (activations, identity, one added later): the module its own definition
        # builds. Torch still runs it on the real tensor, so the shape recorded is torch's.
        if op == "to_image":  # torch's reshape refuses a grid that does not hold the tokens
            n = x.shape[1]
            h = p.get("h") or (n // p["w"] if p.get("w") else math.isqrt(n))
            w = p.get("w") or n // max(1, h)
            return _Lambda(lambda t: t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)), one
        if op == "transpose_tokens":
            return _Lambda(lambda t: t.transpose(1, 2)), one
        if op in ("window_attention", "patch_merging", "partition_attention"):
            # torch's view refuses a wrong grid
            n = x.shape[1]
            h = p.get("h") or (n // p["w"] if p.get("w") else math.isqrt(n))
            if h * (p.get("w") or n // max(1, h)) != n:
                raise RuntimeError(f"shape '[{x.shape[0]}, {h}, ...]' is invalid for input")
        entry = OPS[op]
        params = entry.Params.model_validate(p)
        if (
            entry.tensor
        ):  # a learnable tensor: its parameter and the forward code the compiler emits
            return _Tensor(
                entry.build(params, tuple(x.shape[1:])),
                entry.code(params, tuple(x.shape[1:]), "self.t", "x"),
            ), one
        try:
            return entry.build(params, tuple(x.shape[1:])).eval(), one
        except AssertionError as e:  # nn.MultiheadAttention asserts that the heads divide D
            raise ValueError(str(e)) from None

    # ------------------------------------------------------------------ combinators

    def parallel(self, body: dict, x: torch.Tensor, jump: tuple, env: dict):
        branches = body["branches"]
        branches = list(branches.values()) if isinstance(branches, dict) else branches
        outs, jumps = [], []
        for b in branches:
            y, j = self.item(b, x, jump, env)
            outs.append(y)
            jumps.append(j)
        if body.get("merge", "concat") == "concat":
            merged = torch.cat(outs, 1)
        elif body["merge"] == "mul":
            merged = self.mul(outs, "mul")
        else:
            merged = self.add(outs)
        return merged, tuple(max(j[i] for j in jumps) for i in (0, 1))

    def scale(self, body: dict, x: torch.Tensor, jump: tuple, env: dict):
        g, jg = self.item(body["by"], x, jump, env)
        out = self.mul([g, x], "scale")
        if out.shape != x.shape:  # torch would broadcast the input up to the factor's shape
            raise Stricter("scale")
        return out, tuple(max(jg[i], jump[i]) for i in (0, 1))

    def split(self, body: dict, x: torch.Tensor, jump: tuple, env: dict):
        branches = body["branches"]
        branches = list(branches.values()) if isinstance(branches, dict) else branches
        if x.dim() != 4 or x.shape[1] % len(branches):
            raise Stricter("split")  # torch.chunk gives unequal parts; on [N, F] it splits F
        outs, jumps = [], []
        for b, part in zip(branches, x.chunk(len(branches), 1), strict=True):
            y, j = self.item(b, part, jump, env) if b != [] else (part, jump)
            outs.append(y)
            jumps.append(j)
        return torch.cat(outs, 1), tuple(max(j[i] for j in jumps) for i in (0, 1))

    def mul(self, outs: list, rule: str) -> torch.Tensor:
        if len({o.dim() for o in outs}) != 1:
            raise Stricter(rule)  # torch broadcasts [N, F] against [N, C, H, W] from the right
        out = outs[0]
        for o in outs[1:]:
            out = out * o
        grids = {grid_of(o) for o in outs if o.shape == out.shape}
        return with_grid(out, grids.pop() if len(grids) == 1 else None)

    def residual(self, body: dict, x: torch.Tensor, jump: tuple, env: dict):
        y, jm = self.item(body["main"], x, jump, env)
        sc = body.get("shortcut", "auto")
        s = x
        if sc == "auto" and y.shape != x.shape:
            if x.dim() != 4 or y.dim() != 4:
                raise Stricter("auto-shortcut-rank")
            opts = body.get("projection") or {}
            stride = tuple(max(1, jm[i] // max(1, jump[i])) for i in (0, 1))
            conv = nn.Conv2d(x.shape[1], y.shape[1], 1, stride, bias=opts.get("bias", False))
            s = conv(x)
            self.rows.append(
                ("conv", tuple(s.shape[1:]), sum(t.numel() for t in conv.parameters()))
            )
            if opts.get("bn", True):
                bn = nn.BatchNorm2d(s.shape[1]).eval()
                s = bn(s)
                self.rows.append(("bn", tuple(s.shape[1:]), 2 * s.shape[1]))
        elif sc == "identity_if_same" and y.shape != x.shape:
            s = None  # no shortcut and no sum where the shape changes
        elif sc not in ("auto", "identity", "identity_if_same"):
            s, _ = self.item(sc, x, jump, env)
        out = y if s is None else self.add([y, s], "residual-add")
        if body.get("post") is not None:
            out, _ = self.item(body["post"], out, jm, env)
        return out, jm

    def repeat(self, it: dict, x: torch.Tensor, jump: tuple, env: dict, dense: bool):
        n = it.get("repeat")
        times = 1 if n is None else self.value(n, env, x)
        for i in range(times):
            local = dict(env, i=i)
            call = dict(it.get("with") or {})
            if i == 0:
                call.update(it.get("first") or {})
            for k, v in (it.get("at") or {}).items():
                if int(k) % times == i:
                    call.update(v)
            if "use" in it:
                args = {k: self.value(v, local, x) for k, v in call.items()}
                y, j = self.template(it["use"], args, x, jump, local)
            else:
                local.update({k: self.value(v, local, x) for k, v in call.items()})
                y, j = self.item(it["body"], x, jump, local)
            if dense:
                x = torch.cat([x, y], 1)
                if x.dim() != 4:
                    raise Stricter("dense-rank")
            else:
                x, jump = y, j
        return x, jump

    def add(self, outs: list, rule: str = "add") -> torch.Tensor:
        out = sum(outs[1:], outs[0])  # torch broadcasts where it can
        if any(o.shape != outs[0].shape for o in outs):
            raise Stricter(rule)
        grids = {grid_of(o) for o in outs}
        return with_grid(out, grids.pop() if len(grids) == 1 else None)

    def template(self, name: str, args: dict, x: torch.Tensor, jump: tuple, env: dict):
        t = self.templates[name]
        local = {
            "num_classes": self.spec.get("num_classes"),
            "width": self.width,
            "i": env.get("i", 0),
        }
        for p, decl in (t.get("params") or {}).items():
            local[p] = self.value(args[p], env, x) if p in args else self.value(decl, local, x)
        key = "body" if "body" in t else next(k for k in t if k != "params")
        body = t["body"] if key == "body" else {key: t[key]}
        return self.item(body, x, jump, local)
