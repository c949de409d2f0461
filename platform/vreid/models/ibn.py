"""ResNet-IBN-a built on timm's ResNet (SSBVER sec. 3.1 / 4.3 "ResNet50_IBN").

IBN-Net (Pan et al., ECCV 2018) variant "a" replaces ``bn1`` of every residual block in ``layer1`` to
``layer3`` by an :class:`IBN` layer: instance norm on the first half of the channels, batch norm on the
rest; ``layer4`` and the stem keep plain batch norm. Everything else is timm's ResNet, whose parameter
names (``conv1``, ``bn1``, ``layerX.Y.convZ``, ``layerX.Y.downsample.0``, ``fc``) equal torchvision's and
therefore the public IBN-Net checkpoints', e.g. ``resnet50_ibn_a-d9d0bb7b.pth`` with keys
``layer1.0.bn1.IN.weight`` [32], ``layer1.0.bn1.BN.running_mean`` [32], ``layer4.0.bn1.weight`` [512].
Those checkpoints therefore load with ``strict=True`` (after dropping ``fc.*`` when the classifier is
removed).
"""

from __future__ import annotations

import torch
import torch.nn as nn

#: Public ImageNet checkpoints of the IBN-Net authors (XingangPan/IBN-Net, release v1.0).
IBN_A_URLS = {
    "resnet18_ibn_a": "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet18_ibn_a-2f571257.pth",
    "resnet34_ibn_a": "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet34_ibn_a-94bc1577.pth",
    "resnet50_ibn_a": "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth",
    "resnet101_ibn_a": "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet101_ibn_a-59ea0ac6.pth",
}

#: name -> (block type, blocks per stage)
IBN_A_ARCHS = {
    "resnet18_ibn_a": ("basic", (2, 2, 2, 2)),
    "resnet34_ibn_a": ("basic", (3, 4, 6, 3)),
    "resnet50_ibn_a": ("bottleneck", (3, 4, 6, 3)),
    "resnet101_ibn_a": ("bottleneck", (3, 4, 23, 3)),
}


class IBN(nn.Module):
    """Instance-Batch Normalization (IBN-Net, ratio 0.5): ``IN`` on channels ``[0, half)``, ``BN`` on
    ``[half, planes)``, with ``half = int(planes * ratio)``. Names ``IN`` / ``BN`` match IBN-Net's."""

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), dim=1)


def resnet_ibn_a(name: str = "resnet50_ibn_a", num_classes: int = 0, layers: tuple[int, ...] | None = None,
                 block: str | None = None) -> nn.Module:
    """Build ``name`` (one of :data:`IBN_A_ARCHS`) as a timm ``ResNet`` with IBN-a blocks, random init.

    ``layers`` / ``block`` override the architecture (used by tests for a tiny variant).
    ``num_classes=0`` removes ``fc`` (timm convention), as the re-id model has its own head.
    """
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    if name not in IBN_A_ARCHS and (layers is None or block is None):
        raise ValueError(f"unknown IBN-a model {name!r}; known: {sorted(IBN_A_ARCHS)}")
    default_block, default_layers = IBN_A_ARCHS.get(name, (block, layers))
    block = block or default_block
    layers = tuple(layers or default_layers)
    block_cls = Bottleneck if block == "bottleneck" else BasicBlock
    # zero_init_last=False: IBN-Net initialises every BN weight to 1; pretrained weights overwrite it anyway.
    model = ResNet(block=block_cls, layers=layers, num_classes=num_classes, zero_init_last=False)
    for stage in (model.layer1, model.layer2, model.layer3):
        for blk in stage:
            ibn = IBN(blk.bn1.num_features)
            nn.init.ones_(ibn.IN.weight)
            nn.init.zeros_(ibn.IN.bias)
            blk.bn1 = ibn
    model.ibn_a_name = name
    return model


def is_ibn_a(name: str) -> bool:
    return name in IBN_A_ARCHS
