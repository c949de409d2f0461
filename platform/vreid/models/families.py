"""Backbone families: the one list that the model builder (``last_stride``) and the config defaults
(SSBVER sec. 4.3's optimiser per architecture) both read.

SSBVER 4.3: "For ResNet and ResNet_IBN architectures, we use the Adam optimizer ... For ViT, SWIN and
Convnext we use ... AdamW ... and cosine learning rate decay". The re-id "last stride 1" trick changes
the last down-sampling of a ResNet stage 4; it means nothing for a transformer and would change
ConvNeXt's patchify down-sampling, so it applies to the ``resnet`` family only.

Families (matched on the lower-cased timm name, longest prefix first):

* ``resnet``   -- ResNet / ResNet-IBN-a / ResNeXt / SE-ResNe(X)t / SENet and timm's ``test_resnet``
* ``vit``      -- ViT, DeiT, CaiT, XCiT, BEiT, EVA, LeViT, PVT, Twins, CrossViT and ``test_vit``
* ``swin``     -- Swin (v1, v2)
* ``convnext`` -- ConvNeXt (v1, v2) and ``test_convnext``
* ``cnn``      -- anything else (DenseNet, EfficientNet, ...): trained like the ResNets
"""

from __future__ import annotations

FAMILY_PREFIXES: dict[str, tuple[str, ...]] = {
    "resnet": ("resnet", "resnext", "seresnet", "seresnext", "senet", "legacy_senet", "legacy_seresnet",
               "legacy_seresnext", "wide_resnet", "ecaresnet", "skresnet", "skresnext", "gluon_resnet",
               "gluon_resnext", "gluon_seresnext", "gluon_senet", "test_resnet"),
    "vit": ("vit", "deit", "cait", "xcit", "beit", "eva", "levit", "pvt", "twins", "crossvit", "test_vit"),
    "swin": ("swin",),
    "convnext": ("convnext", "test_convnext"),
}
#: families trained with AdamW + cosine (SSBVER 4.3); the others get Adam + step decay
ADAMW_FAMILIES = ("vit", "swin", "convnext")
#: families whose last stage stride ``model.last_stride`` changes
LAST_STRIDE_FAMILIES = ("resnet",)
#: families whose features are token sequences (no NCHW map to down-sample)
TRANSFORMER_FAMILIES = ("vit", "swin")


def backbone_family(name: str) -> str:
    """``resnet`` / ``vit`` / ``swin`` / ``convnext`` / ``cnn`` for a timm (or ``*_ibn_a``) name."""
    low = str(name).lower().split(".")[0]
    best, best_len = "cnn", 0
    for family, prefixes in FAMILY_PREFIXES.items():
        for p in prefixes:
            if low.startswith(p) and len(p) > best_len:
                best, best_len = family, len(p)
    return best


def uses_adamw(name: str) -> bool:
    return backbone_family(name) in ADAMW_FAMILIES
