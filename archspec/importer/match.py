"""Leaf modules and functional calls -> archspec ops: `(op, params)` with only the parameters
that differ from the op's defaults, or `Unsupported` naming what the language cannot say.

A mapping is exact or refused: an option the op cannot reproduce (a padding mode, a pooling
divisor, a GELU approximation) is refused rather than dropped, so an import never builds a
silently different network."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archspec.ops import OPS

# Each op's defaults, from its definition (archspec.ops): a parameter equal to its default is
# left out of the written spec.
DEFAULTS: dict[str, dict[str, Any]] = {
    name: {f: info.default for f, info in op.Params.model_fields.items() if not info.is_required()}
    for name, op in OPS.items()
}


class Unsupported(Exception):
    """What the spec language cannot express: `what` names the op (`nn.LSTM`, `operator.mul`)."""

    def __init__(self, what: str, why: str = ""):
        super().__init__(what)
        self.what = what
        self.why = why


def op(name: str, **params: Any) -> tuple[str, dict[str, Any]]:
    """The op with its non-default parameters (pairs of equal values written as one number)."""
    defaults = DEFAULTS.get(name, {})
    out = {}
    for k, v in params.items():
        v = pair(v)
        if k in defaults and v == defaults[k]:
            continue
        out[k] = v
    return name, out


def pair(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        v = list(v)
        if len(v) == 2 and v[0] == v[1]:
            return v[0]
    return v


# A module class's name -> its family: the most general class it derives from outside torch.nn
# (torchvision's SimpleStemIN and Conv2dNormActivation are both ConvNormActivation). Modules of
# one family may share a template.
FAMILIES: dict[str, str] = {}


def family(cls: type) -> str:
    own = [c for c in cls.__mro__ if c is not object and not c.__module__.startswith("torch.nn")]
    name = own[-1].__name__ if own else cls.__name__
    FAMILIES[cls.__name__] = name
    return name


def module_name(m: nn.Module) -> str:
    cls = type(m)
    return f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn") else cls.__qualname__


def _no(m: nn.Module, why: str) -> Unsupported:
    return Unsupported(module_name(m), why)


def match_module(m: nn.Module) -> tuple[str, dict[str, Any]]:
    """A leaf module -> (op, params)."""
    t = type(m)
    if t is nn.Conv2d:
        if m.padding_mode != "zeros":
            raise _no(m, f"padding_mode={m.padding_mode!r}")
        pad = m.padding if isinstance(m.padding, str) else pair(m.padding)
        return op(
            "conv",
            out=m.out_channels,
            k=m.kernel_size,
            stride=m.stride,
            pad=pad,
            dilation=m.dilation,
            groups=m.groups,
            bias=m.bias is not None,
        )
    if t is nn.MaxPool2d:
        if m.return_indices:
            raise _no(m, "return_indices=True")
        return _pool("maxpool", m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    if t is nn.AvgPool2d:
        if m.divisor_override:
            raise _no(m, "divisor_override")
        return _avgpool(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
    if t in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        return _adaptive("avg" if t is nn.AdaptiveAvgPool2d else "max", m.output_size, m)
    if t is nn.Flatten:
        if m.start_dim != 1 or m.end_dim != -1:
            raise _no(m, f"start_dim={m.start_dim}, end_dim={m.end_dim}")
        return op("flatten")
    if t is nn.Linear:
        return op("linear", out=m.out_features, bias=m.bias is not None)
    if t in (nn.BatchNorm2d, nn.BatchNorm1d):
        if not m.track_running_stats or m.momentum is None:
            raise _no(m, "without running statistics or with cumulative momentum")
        return op("bn", eps=m.eps, momentum=m.momentum, affine=m.affine)
    if t is nn.LocalResponseNorm:
        return op("lrn", size=m.size, alpha=m.alpha, beta=m.beta, k=float(m.k))  # type: ignore[arg-type]
    if t is nn.Dropout:
        return op("dropout", p=m.p, inplace=m.inplace)
    if t in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish):
        name = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish"}
        return op(name[t], inplace=m.inplace)
    if t is nn.LeakyReLU:
        return op("leaky_relu", slope=m.negative_slope, inplace=m.inplace)
    if t is nn.GELU:
        if m.approximate != "none":
            raise _no(m, f"approximate={m.approximate!r}")
        return op("gelu")
    if t is nn.Hardsigmoid:
        return op("hardsigmoid", inplace=m.inplace)
    if t is nn.ChannelShuffle:
        return op("channel_shuffle", groups=m.groups)
    if is_stochastic_depth(m):
        return op("stochastic_depth", p=float(m.p), mode=m.mode)  # type: ignore[arg-type]
    if isinstance(m, nn.LayerNorm) and (t is nn.LayerNorm or torchvision_class(m) in LEAVES):
        if len(m.normalized_shape) != 1:
            raise _no(m, f"normalized_shape={list(m.normalized_shape)} (over more than one dim)")
        affine = m.elementwise_affine
        return op("layernorm", eps=m.eps, affine=affine, bias=not affine or m.bias is not None)
    if t is nn.MultiheadAttention:
        return _attention(m)
    if torchvision_class(m) in LEAVES:
        return _torchvision(m)
    if t in (nn.Sigmoid, nn.Tanh, nn.Identity):
        return op({nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Identity: "identity"}[t])
    raise _no(m, "no archspec op")


def _attention(m: Any) -> tuple[str, dict[str, Any]]:
    if not m.batch_first:
        raise _no(m, "batch_first=False (the attention op reads batch-first tokens)")
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise _no(m, "kdim/vdim, add_bias_kv or add_zero_attn")
    return op("attention", heads=m.num_heads, dropout=m.dropout, bias=m.in_proj_bias is not None)


# torchvision's own modules that are one archspec op each: leaves for the tracer (fx cannot
# trace Swin's functional window attention symbolically), their settings read from the module.
_SWIN = "torchvision.models.swin_transformer."
LEAVES = {
    "torchvision.models.convnext.LayerNorm2d",
    "torchvision.ops.misc.Permute",
    *(_SWIN + c for c in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2")),
    *(_SWIN + c for c in ("PatchMerging", "PatchMergingV2")),
}


# torchvision's modules that are a known sub-graph of ops (trace.Recover.partition_layer)
SUBGRAPHS = {"torchvision.models.maxvit.PartitionAttentionLayer"}


def torchvision_class(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def is_leaf(m: nn.Module) -> bool:
    """Modules outside torch.nn that the tracer keeps whole (each maps to one op)."""
    return is_stochastic_depth(m) or torchvision_class(m) in LEAVES | SUBGRAPHS


def permute_op(dims: Any) -> tuple[str, dict[str, Any]] | None:
    """An image permuted to channels-last is tokens (to_tokens), and back (to_image)."""
    dims = [int(d) % 4 for d in dims] if isinstance(dims, (list, tuple)) else None
    return {(0, 2, 3, 1): op("to_tokens"), (0, 3, 1, 2): op("to_image")}.get(tuple(dims or ()))


def _torchvision(m: Any) -> tuple[str, dict[str, Any]]:
    cls = type(m).__name__
    if cls == "Permute":
        got = permute_op(m.dims)
        if got is None:
            raise _no(m, f"dims={list(m.dims)} (only an image to channels-last and back)")
        return got
    version = 2 if cls.endswith("V2") else 1
    if cls.startswith("PatchMerging"):
        norm = m.norm
        if type(norm) is not nn.LayerNorm or norm.eps != 1e-5 or not norm.elementwise_affine:
            raise _no(m, "a norm other than nn.LayerNorm(4 * dim)")
        return op("patch_merging", version=version)
    # ShiftedWindowAttention(V2)
    if m.proj.bias is None:
        raise _no(m, "proj_bias=False")
    return op(
        "window_attention",
        heads=m.num_heads,
        window=list(m.window_size),
        shift=list(m.shift_size),
        version=version,
        bias=m.qkv.bias is not None,
        dropout=float(m.dropout),
        attention_dropout=float(m.attention_dropout),
    )


def grid(name: str, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> dict[str, Any]:
    """The grid of an op on tokens where it is not a square (the op's default): channels-last
    [N, H, W, C] in torch is [H*W, C] tokens in the spec."""
    if name == "to_image" and len(shape_out) == 4 and shape_out[2] != shape_out[3]:
        return {"h": shape_out[2]}
    windowed = name in ("window_attention", "patch_merging")
    if windowed and len(shape_in) == 4 and shape_in[1] != shape_in[2]:
        return {"h": shape_in[1]}
    return {}


def is_stochastic_depth(m: nn.Module) -> bool:
    """torchvision.ops.StochasticDepth (a leaf for the tracer, like torch.nn's modules)."""
    cls = type(m)
    return cls.__name__ == "StochasticDepth" and cls.__module__.startswith("torchvision.ops")


def _pool(name, k, stride, pad, dilation, ceil_mode):
    k, stride = pair(k), pair(stride) if stride is not None else None
    if stride == k or stride in (None, [], ()):
        stride = None
    return op(name, k=k, stride=stride, pad=pad, dilation=dilation, ceil_mode=ceil_mode)


def _avgpool(k, stride, pad, ceil_mode, count_include_pad):
    k, stride = pair(k), pair(stride) if stride is not None else None
    if stride == k or stride in (None, [], ()):
        stride = None
    return op(
        "avgpool", k=k, stride=stride, pad=pad, ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )  # fmt: skip


def _adaptive(kind: str, size: Any, what: Any) -> tuple[str, dict[str, Any]]:
    size = pair(size)
    if size is None or (isinstance(size, list) and None in size):
        raise Unsupported(str(what), "an adaptive pool that keeps a dimension (None)")
    if size == 1:
        return op("gap" if kind == "avg" else "gmp")
    return op(f"adaptive_{kind}pool", out=size)


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


ACTIVATIONS = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.silu: "silu",
    F.hardswish: "hardswish", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu", F.leaky_relu: "leaky_relu",
    F.hardsigmoid: "hardsigmoid",
}  # fmt: skip
INPLACE = {torch.relu_: "relu", F.relu_: "relu"}
METHOD_ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
ADDS = (operator.add, operator.iadd, torch.add)
MULS = (operator.mul, operator.imul, torch.mul)
CATS = (torch.cat, torch.concat)


def describe(target: Any) -> str:
    """A function or method target as a user reads it: `torch.cat`, `operator.mul`, `.view`."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("torch") or mod == "":
        return f"torch.{name}"
    return f"{mod}.{name}"


def match_function(target: Any, args: tuple, kwargs: dict) -> tuple[str, dict[str, Any]]:
    """A single-input functional call (args[0] is the tensor) -> (op, params)."""
    if target in ACTIVATIONS:
        name = ACTIVATIONS[target]
        if name == "gelu" and kwargs.get("approximate", "none") != "none":
            raise Unsupported("F.gelu", "approximate")
        if name == "leaky_relu":
            return op(name, slope=_arg(args, kwargs, 1, "negative_slope", 0.01),
                      inplace=_arg(args, kwargs, 2, "inplace", False))  # fmt: skip
        if name in DEFAULTS and "inplace" in DEFAULTS[name]:
            return op(name, inplace=bool(_arg(args, kwargs, 1, "inplace", False)))
        return op(name)
    if target in INPLACE:
        return op(INPLACE[target], inplace=True)
    if target is F.max_pool2d:
        if _arg(args, kwargs, 6, "return_indices", False):
            raise Unsupported("F.max_pool2d", "return_indices=True")
        return _pool(
            "maxpool",
            _arg(args, kwargs, 1, "kernel_size", None),
            _arg(args, kwargs, 2, "stride", None),
            _arg(args, kwargs, 3, "padding", 0),
            _arg(args, kwargs, 4, "dilation", 1),
            _arg(args, kwargs, 5, "ceil_mode", False),
        )
    if target is F.avg_pool2d:
        if _arg(args, kwargs, 6, "divisor_override", None):
            raise Unsupported("F.avg_pool2d", "divisor_override")
        return _avgpool(
            _arg(args, kwargs, 1, "kernel_size", None),
            _arg(args, kwargs, 2, "stride", None),
            _arg(args, kwargs, 3, "padding", 0),
            _arg(args, kwargs, 4, "ceil_mode", False),
            _arg(args, kwargs, 5, "count_include_pad", True),
        )
    if target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        if target is F.adaptive_max_pool2d and _arg(args, kwargs, 2, "return_indices", False):
            raise Unsupported("F.adaptive_max_pool2d", "return_indices=True")
        kind = "avg" if target is F.adaptive_avg_pool2d else "max"
        return _adaptive(kind, _arg(args, kwargs, 1, "output_size", None), describe(target))
    if target is torch.flatten:
        if _arg(args, kwargs, 1, "start_dim", 0) != 1 or _arg(args, kwargs, 2, "end_dim", -1) != -1:
            raise Unsupported("torch.flatten", "only flatten(x, 1) keeps the batch")
        return op("flatten")
    if target is F.dropout:
        if _arg(args, kwargs, 3, "inplace", False):
            return op("dropout", p=_arg(args, kwargs, 1, "p", 0.5), inplace=True)
        return op("dropout", p=_arg(args, kwargs, 1, "p", 0.5))
    raise Unsupported(describe(target), "no archspec op")


def match_method(name: str, args: tuple, kwargs: dict) -> tuple[str, dict[str, Any]]:
    if name in METHOD_ACTIVATIONS:
        return op(METHOD_ACTIVATIONS[name])
    if name in ("relu_",):
        return op("relu", inplace=True)
    if name == "flatten":
        if _arg(args, kwargs, 1, "start_dim", 0) != 1 or _arg(args, kwargs, 2, "end_dim", -1) != -1:
            raise Unsupported("Tensor.flatten", "only flatten(1) keeps the batch")
        return op("flatten")
    raise Unsupported(f"Tensor.{name}", "no archspec op")


def chunks(n: Any, parts: int) -> bool:
    """`x.chunk(parts, 1)`, `torch.chunk(x, parts, 1)` or a split into equal sizes
    (`x.split(c // parts, 1)`, `torch.split(x, [s, s], 1)`): equal parts of the channels."""
    if n.op not in ("call_method", "call_function"):
        return False
    shape = n.args[0].meta["tensor_meta"].shape
    if n.target in ("chunk", torch.chunk):
        k = _arg(n.args, n.kwargs, 1, "chunks", None)
    elif n.target in ("split", torch.split):
        size = _arg(n.args, n.kwargs, 1, "split_size_or_sections", None)
        size = _arg(n.args, n.kwargs, 1, "split_size", size)
        sizes = list(size) if isinstance(size, (list, tuple)) else [size] * parts
        k = parts if len(sizes) == parts and sizes[0] * parts == shape[1] else None
        k = k if len(set(sizes)) == 1 else None
    else:
        return False
    dim = _arg(n.args, n.kwargs, 2, "dim", 0)
    return k == parts and dim in (1, 1 - len(shape)) and shape[1] % parts == 0


def reshapes(n: Any) -> bool:
    """x.view(...), x.reshape(...) or torch.reshape(x, ...)."""
    if n.op == "call_method":
        return n.target in ("view", "reshape")
    return n.op == "call_function" and n.target is torch.reshape


def swaps_1_2(n: Any) -> bool:
    """x.transpose(1, 2), torch.transpose(x, 1, 2) or x.permute(0, 2, 1, 3, 4) of a 5-d x."""
    if n.op not in ("call_method", "call_function"):
        return False
    args = list(n.args[1:])
    if n.target in ("transpose", torch.transpose):
        return sorted(args) == [1, 2] and not n.kwargs
    if n.target in ("permute", torch.permute):
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return list(dims) == [0, 2, 1, 3, 4]
    return False
