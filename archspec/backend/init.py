"""The initialisation `archspec train` gives a freshly built model (not used when weights are loaded)."""

from __future__ import annotations

from torch import nn

from archspec.ops import he_init


def init_weights(model: nn.Module) -> None:
    """Glorot for sigmoid/tanh nets, He (fan-out) for nets with ReLU-family activations (the
    ops whose `init_family` is "relu", listed by the compiler in `model.op_names`); zero biases,
    BatchNorm at identity."""
    he = he_init(getattr(model, "op_names", ()))
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if he and isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif he:
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
