"""What every recipe provides to the engine (:mod:`vreid.train.engine`)."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from vreid.config import RunConfig


class Recipe:
    """One training stage of one recipe.

    ``model`` is the trained network (the student); ``train_model`` is what the forward pass of
    :meth:`losses` calls -- the same module, or its DDP wrapper when an adapter replaces it. Subclasses
    implement :meth:`train_transform`, :meth:`build_model` and :meth:`losses`, and may override
    :meth:`after_step`, :meth:`eval_model`, :meth:`extra_state` / :meth:`load_extra_state`.
    """

    name = "recipe"
    head = "bnneck"

    def __init__(self, cfg: RunConfig, stage_name: str, num_classes: int, device: torch.device | str = "cpu",
                 init_checkpoint: Optional[str] = None):
        self.cfg = cfg
        self.stage_name = stage_name
        from vreid.config import resolve_stage

        self.stage = resolve_stage(cfg.stage(stage_name), cfg.model.backbone)  # optimizer: auto -> the family's
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.init_checkpoint = init_checkpoint
        self.notes: dict[str, Any] = {}
        self.model: nn.Module = self.build_model().to(self.device)
        self.train_model: nn.Module = self.model

    # -- data --------------------------------------------------------------------------------------
    def train_transform(self):
        """``(transform, collate_fn or None)`` of the training images."""
        raise NotImplementedError

    # -- model -------------------------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`vreid.models.build_model` for the trained network."""
        cfg = self.cfg
        return {
            "backbone_name": cfg.model.backbone,
            "head": cfg.model.head or self.head,
            "num_classes": self.num_classes,
            "pretrained": cfg.model.pretrained,
            "last_stride": cfg.model.last_stride,
            "img_size": list(cfg.data.image_size),
            "fc_dim": cfg.model.fc_dim,
            "dropout": cfg.model.dropout,
        }

    def build_model(self) -> nn.Module:
        from vreid.models import build_model

        return build_model(self.model_kwargs())

    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone at ``backbone_lr_mult * lr`` (VehicleNet authors' code: 0.1 for pretrained layers), the
        rest at lr."""
        backbone, rest = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (backbone if name.startswith("backbone.") else rest).append(p)
        return [{"params": backbone, "lr_mult": self.stage.backbone_lr_mult}, {"params": rest, "lr_mult": 1.0}]

    # -- a step --------------------------------------------------------------------------------------
    def losses(self, batch, epoch: int) -> dict[str, torch.Tensor]:
        """``{"loss": total (with grad), name: detached term, ...}`` of one batch."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step (SSBVER: the EMA teacher update)."""

    def train(self) -> None:
        """Put the recipe's networks in training mode at the start of an epoch."""
        self.train_model.train()

    # -- evaluation / export ---------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """The network validated every epoch and exported."""
        return self.model

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(state dict, model_config)`` of the exported network (no training-only heads)."""
        from vreid.train.validation import eval_views

        model_config = dict(self.model_kwargs())
        model_config.update(pretrained=False, dino_out_dim=None)
        flip, scales = eval_views(self.cfg)
        model_config.update(image_size=list(self.cfg.data.image_size), recipe=self.cfg.recipe,
                            stage=self.stage_name, target=self.cfg.target,
                            eval={"flip": flip, "scales": list(scales), "metric": self.cfg.eval.metric})
        sd = {k: v for k, v in self.eval_model().state_dict().items() if not k.startswith("dino_head.")}
        return sd, model_config

    def extra_state(self) -> dict[str, Any]:
        """Resume state beyond the model and optimiser (tensors only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
