"""VehicleNet (sec. IV-B, Alg. 1): cross-entropy on the fc512+BN head. Stage-I trains on the merged
VehicleNet manifest; Stage-II loads Stage-I, replaces only the final classifier (``fc2``) for the
target's classes (Alg. 1, line 5) and fine-tunes on the target."""

from __future__ import annotations

import torch
import torch.nn as nn

from vreid.train.recipes.base import Recipe


class VehicleNetRecipe(Recipe):
    name = "vehiclenet"
    head = "vehiclenet"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from vreid.losses import CrossEntropyLabelSmooth

        self.ce = CrossEntropyLabelSmooth(self.num_classes, epsilon=self.stage.label_smoothing)

    def train_transform(self):
        from vreid.data import transforms as T

        return T.vehiclenet_train_transform(tuple(self.cfg.data.image_size)), None

    def build_model(self) -> nn.Module:
        if not self.init_checkpoint:
            return super().build_model()
        from vreid.train.checkpoint import load_model_for_inference

        model, _ = load_model_for_inference(self.init_checkpoint)
        model.train()
        self.notes["dropped_classifier"] = model.reset_classifier(self.num_classes)
        return model

    def losses(self, batch, epoch: int) -> dict[str, torch.Tensor]:
        images, targets, _ = batch
        out = self.train_model(images.to(self.device, non_blocking=True))
        loss = self.ce(out["logits"], targets.to(self.device))
        return {"loss": loss, "loss_ce": loss.detach()}
