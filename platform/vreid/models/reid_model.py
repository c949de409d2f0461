"""The re-id network: backbone + re-id head (+ optional SSL head).

VehicleNet (sec. IV-A, Fig. 3): backbone -> adaptive average pool -> fc 512 -> BN (feature) -> fc2.
SSBVER (sec. 3.2-3.3, Figs. 1-3): backbone -> pooled ``x`` -> BNNeck (``x~`` for inference, logits) and
-> DINO head (``g``, only while training with self-supervision; the exported model has none).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from vreid.errors import ConfigError
from vreid.models.backbones import PretrainedArg, build_backbone
from vreid.models.heads import BNNeckHead, DINOHead, VehicleNetHead

HEADS = ("vehiclenet", "bnneck")


class ReidModel(nn.Module):
    """Backbone ``backbone_name`` (see :func:`~vreid.models.backbones.build_backbone`) with head
    ``"vehiclenet"`` (:class:`VehicleNetHead`) or ``"bnneck"`` (:class:`BNNeckHead`) over ``num_classes``,
    and a :class:`DINOHead` with ``dino_out_dim`` (E) outputs when that is set.

    ``forward(x)`` (train or eval mode) returns a dict: ``logits`` [B, num_classes], ``feat_pre`` (pre-BN,
    for the triplet loss), ``feat`` (the inference feature, BN output), ``pooled`` (the pooled backbone
    feature) and ``dino`` [B, E] when the DINO head exists (computed from ``pooled``, SSBVER Fig. 1/3).
    """

    def __init__(self, backbone_name: str, head: str = "vehiclenet", num_classes: int = 1,
                 pretrained: PretrainedArg = False, last_stride: int = 1,
                 img_size: Optional[Sequence[int]] = None, fc_dim: int = 512, dropout: float = 0.5,
                 dino_out_dim: Optional[int] = None, dino_hidden_dim: int = 2048,
                 dino_bottleneck_dim: int = 256, dino_nlayers: int = 3):
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"model.head: expected one of {HEADS}, got {head!r}")
        if int(num_classes) < 1:
            raise ConfigError(f"num_classes: expected >= 1, got {num_classes}")
        self.backbone_name = backbone_name
        self.head_name = head
        self.num_classes = int(num_classes)
        self.backbone, self.backbone_dim = build_backbone(backbone_name, pretrained=pretrained,
                                                          last_stride=last_stride, img_size=img_size)
        if head == "vehiclenet":
            self.head: nn.Module = VehicleNetHead(self.backbone_dim, self.num_classes, fc_dim=fc_dim, dropout=dropout)
        else:
            self.head = BNNeckHead(self.backbone_dim, self.num_classes)
        self.feat_dim = int(self.head.feat_dim)
        self.dino_head: Optional[DINOHead] = None
        if dino_out_dim:
            self.dino_head = DINOHead(self.backbone_dim, int(dino_out_dim), hidden_dim=dino_hidden_dim,
                                      bottleneck_dim=dino_bottleneck_dim, nlayers=dino_nlayers)

    # -- features ----------------------------------------------------------------------------------
    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled backbone feature [B, backbone_dim] (``x`` of SSBVER Fig. 2)."""
        return self.backbone.pool(self.backbone(x))

    def forward_features_multi(self, crops: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Pooled features of several crops, one [B, C] per crop in input order.

        Consecutive crops of the same resolution are concatenated into one backbone pass (DINO's
        ``MultiCropWrapper``), so 2 global + L local views cost two passes.
        """
        if not crops:
            return []
        out: list[torch.Tensor] = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            group = crops[start:end]
            feats = self.pooled_features(torch.cat(list(group)))
            out.extend(feats.split([c.shape[0] for c in group]))
            start = end
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.pooled_features(x)
        out = self.head(pooled)
        out["pooled"] = pooled
        if self.dino_head is not None:
            out["dino"] = self.dino_forward(pooled)
        return out

    def dino_forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """The SSL head in fp32 even under autocast: the teacher's output is divided by tau_t = 5e-4..1e-3
        (SSBVER 4.3) before its softmax, so half-precision rounding of ``g_t`` (~1e-3 relative) would
        become an error of order one in the teacher's logits."""
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            return self.dino_head(pooled.float())

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """The inference feature (``feat``: BN output) computed as in eval mode (running BN statistics,
        no dropout) whatever the current mode; the mode is restored. Gradients are not disabled."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            return self.head(self.pooled_features(x))["feat"]
        finally:
            if was_training:
                self.train()

    # -- stage II ------------------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> dict[str, Any]:
        """Replace only the final classifier (VehicleNet Alg. 1 line 5: ``fc2`` -> new ``W'`` trained from
        scratch); the backbone, fc1, BN and DINO head are kept. Returns what was dropped."""
        if int(num_classes) < 1:
            raise ConfigError(f"num_classes: expected >= 1, got {num_classes}")
        old = self.head.classifier
        info = {
            "old_num_classes": int(old.out_features),
            "new_num_classes": int(num_classes),
            "old_weight_shape": list(old.weight.shape),
            "dropped_keys": [f"head.classifier.{n}" for n, _ in old.named_parameters()],
        }
        self.head.new_classifier(int(num_classes))
        self.num_classes = int(num_classes)
        return info


#: keys of a checkpoint's ``model_config.json`` that describe the run, not the network
CHECKPOINT_META_KEYS = ("image_size", "recipe", "stage", "target", "eval")


def build_model(cfg: dict[str, Any], pretrained: PretrainedArg = None) -> ReidModel:
    """The one model factory: :class:`ReidModel` from a plain dict -- the training's model kwargs or a
    checkpoint's ``model_config.json`` (its run keys :data:`CHECKPOINT_META_KEYS` are ignored).
    ``backbone`` is accepted for ``backbone_name``; ``pretrained`` (when not None) overrides the dict's
    (checkpoint loading passes False: the weights come from the checkpoint). Unknown keys fail."""
    kwargs = {k: v for k, v in dict(cfg).items() if k not in CHECKPOINT_META_KEYS}
    if "backbone" in kwargs and "backbone_name" not in kwargs:
        kwargs["backbone_name"] = kwargs.pop("backbone")
    allowed = set(ReidModel.__init__.__code__.co_varnames[1:ReidModel.__init__.__code__.co_argcount])
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(f"model config: unknown keys {unknown}; expected some of {sorted(allowed)}")
    if "backbone_name" not in kwargs:
        raise ConfigError("model config: missing key 'backbone_name'")
    if pretrained is not None:
        kwargs["pretrained"] = pretrained
    if kwargs.get("img_size") is not None:
        kwargs["img_size"] = tuple(kwargs["img_size"])
    return ReidModel(**kwargs)


def count_parameters(model: nn.Module, exclude_classifier: bool = False, exclude_dino: bool = False,
                     trainable_only: bool = False) -> int:
    """Number of parameters of ``model``; optionally without the classifier (``head.classifier``) and the
    DINO head (neither runs at inference; SSBVER Table 1 counts the backbone only)."""
    total = 0
    for name, p in model.named_parameters():
        if exclude_classifier and name.startswith("head.classifier."):
            continue
        if exclude_dino and name.startswith("dino_head."):
            continue
        if trainable_only and not p.requires_grad:
            continue
        total += p.numel()
    return total
