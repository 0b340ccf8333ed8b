"""The hand-written peer of each spec: the seed networks in plain torch (tests/seed_reference.py)
for specs/*.yaml, torchvision's builders for specs/torchvision/*.yaml (variant = builder name;
`resnet50_fpn` is detection's resnet_fpn_backbone), segmentation_models_pytorch's U-Net for
specs/unet.yaml.

As a script it is the peer of `archspec check`: a fresh interpreter that imports torch, builds
the hand-written model and prints `torchinfo.summary` of it (shapes, parameters, mult-adds):

    python benchmarks/peers.py seed:resnet18 --input 1,96,96
    python benchmarks/peers.py torchvision:densenet201 --input 3,224,224
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

if TYPE_CHECKING:
    from torch import nn

DEFAULT_SEED = {"vgg": "vgg11"}  # spec stem -> seed key where the two names differ
# Specs whose peer is another library's model: spec stem -> {variant: peer}. A variant left out
# (unet's `paper`, the 2015 U-Net) has no hand-written peer here.
LIBRARY_PEERS = {"unet": {None: "smp:resnet34", "resnet34": "smp:resnet34"}}


def peer_of(spec: str | Path, variant: str | None = None) -> str | None:
    """`seed:KEY` or `torchvision:BUILDER`, the hand-written model a spec (variant) reproduces;
    None where there is none (specs/resnet18.yaml's resnet34, unet's paper, vit_mnist)."""
    path = Path(spec)
    if path.stem in LIBRARY_PEERS:
        return LIBRARY_PEERS[path.stem].get(variant)
    if path.parent.name == "torchvision":
        import archspec  # the default variant is the first builder the spec lists

        return "torchvision:" + (variant or archspec.variants(ROOT / path)[0])
    from seed_reference import SEEDS

    stem = path.stem
    if variant is None:
        key = DEFAULT_SEED.get(stem, stem)
    else:
        key = variant if variant in SEEDS else f"{stem}_{variant}"
    return "seed:" + key if key in SEEDS else None


def build_peer(name: str) -> nn.Module:
    """Construct the peer module (CPU, its own default initialisation)."""
    kind, _, key = name.partition(":")
    if kind == "seed":
        from seed_reference import SEEDS

        return SEEDS[key][0]()
    if kind == "smp":
        import segmentation_models_pytorch as smp

        return smp.Unet(key, encoder_weights=None, classes=1)
    if key.endswith("_fpn"):
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

        return resnet_fpn_backbone(backbone_name=key.removesuffix("_fpn"), weights=None)
    import torchvision.models as tvm

    builder = key.removesuffix("_noaux")
    kwargs = {"aux_logits": False} if key.endswith("_noaux") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet/Inception's init-weights FutureWarning
        return getattr(tvm, builder)(weights=None, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("peer", help="seed:KEY, torchvision:BUILDER or smp:ENCODER")
    ap.add_argument("--input", required=True, metavar="C,H,W")
    args = ap.parse_args()
    import torchinfo

    shape = tuple(int(v) for v in args.input.split(","))
    torchinfo.summary(build_peer(args.peer), input_size=(1, *shape))


if __name__ == "__main__":
    main()
