"""SSBVER (sec. 3, Eq. 5): ``lambda_c * CE + lambda_t * triplet + lambda_s * DINO`` on the student, an
EMA teacher evaluated and exported; ``ssbver_baseline`` is the same without the SSL head (sec. 3.4,
4.3: "we record the exponential moving average ... which is used for evaluation").

The teacher (sec. 3.1, DINO's ``main_dino.py``):

* ``theta_t <- lambda theta_t + (1 - lambda) theta_s`` over the *parameters* only;
* its BatchNorm statistics are its own: every step it forwards the global views in train mode (without
  gradients), as DINO's teacher does, so its running statistics describe global views through the
  teacher's weights. The student's local crops never reach them (the student's own BN statistics do
  see the local crops; the student is neither evaluated nor exported).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from vreid.train.recipes.base import Recipe


@torch.no_grad()
def ema_parameters(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """SSBVER 3.1: ``theta_t <- m theta_t + (1 - m) theta_s`` for every parameter; buffers untouched."""
    s_params = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        p.mul_(momentum).add_(s_params[name].detach(), alpha=1.0 - momentum)


class SSBVERBaselineRecipe(Recipe):
    name = "ssbver_baseline"
    head = "bnneck"
    ssl = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from vreid.losses import CrossEntropyLabelSmooth, TripletLoss

        s = self.cfg.ssbver
        self.ce = CrossEntropyLabelSmooth(self.num_classes, epsilon=self.stage.label_smoothing)
        self.triplet = TripletLoss(margin=s.triplet_margin)
        self.teacher = copy.deepcopy(self.model)  # theta_t^0 = theta_s^0
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train_transform(self):
        from vreid.data import transforms as T

        return T.ssbver_global_transform(tuple(self.cfg.data.image_size)), None

    def train(self) -> None:
        super().train()
        self.teacher.train()  # BN in batch-statistics mode, updating the teacher's own running stats

    @torch.no_grad()
    def teacher_forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.teacher.train()
        return self.teacher(images)

    def _reid_losses(self, out: dict[str, torch.Tensor], targets: torch.Tensor):
        s = self.cfg.ssbver
        l_ce = self.ce(out["logits"], targets)
        l_tri = self.triplet(out["feat_pre"], targets)
        return s.lambda_ce * l_ce + s.lambda_triplet * l_tri, l_ce, l_tri

    def losses(self, batch, epoch: int) -> dict[str, torch.Tensor]:
        images, targets, _ = batch
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device)
        out = self.train_model(images)
        loss, l_ce, l_tri = self._reid_losses(out, targets)
        self.teacher_forward(images)  # the teacher's BN statistics follow its own weights
        return {"loss": loss, "loss_ce": l_ce.detach(), "loss_triplet": l_tri.detach()}

    def after_step(self) -> None:
        ema_parameters(self.teacher, self.model, self.cfg.ssbver.ema_momentum)

    def eval_model(self) -> nn.Module:
        return self.teacher

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])


class SSBVERRecipe(SSBVERBaselineRecipe):
    name = "ssbver"
    ssl = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from vreid.config import ssl_out_dim
        from vreid.losses import DINOLoss
        from vreid.train.schedules import teacher_temp_schedule

        s = self.cfg.ssbver
        temps = teacher_temp_schedule(s.warmup_teacher_temp, s.teacher_temp, s.teacher_temp_warmup_epochs,
                                      self.stage.epochs)
        self.dino = DINOLoss(ssl_out_dim(self.cfg), n_global=2, n_local=s.n_local, teacher_temp_schedule=temps,
                             student_temp=s.student_temp, center_momentum=s.center_momentum,
                             mode=s.ssl_loss).to(self.device)

    def model_kwargs(self) -> dict[str, Any]:
        from vreid.config import ssl_out_dim

        s = self.cfg.ssbver
        return {**super().model_kwargs(), "dino_out_dim": ssl_out_dim(self.cfg), "dino_hidden_dim": s.dino_hidden_dim,
                "dino_bottleneck_dim": s.dino_bottleneck_dim, "dino_nlayers": s.dino_mlp_layers}

    def train_transform(self):
        from vreid.data import transforms as T
        from vreid.data.dataset import collate_multicrop

        s = self.cfg.ssbver
        return T.MultiCropTransform(tuple(self.cfg.data.image_size), tuple(s.local_size), s.n_local), collate_multicrop

    def losses(self, batch, epoch: int) -> dict[str, torch.Tensor]:
        views, targets, _ = batch  # [global_1, global_2, local_1 .. local_L]
        views = [v.to(self.device, non_blocking=True) for v in views]
        targets = targets.to(self.device)
        globals_ = torch.cat(views[:2])
        both = torch.cat([targets, targets])
        out = self.train_model(globals_)
        reid, l_ce, l_tri = self._reid_losses(out, both)
        student = [out["dino"]]
        if len(views) > 2:
            local = self.model.forward_features_multi(views[2:])
            student.append(self.model.dino_forward(torch.cat(local)))
        t_out = self.teacher_forward(globals_)  # the teacher sees the global views only (sec. 3.3)
        l_ssl = self.dino(torch.cat(student), t_out["dino"], epoch)
        loss = reid + self.cfg.ssbver.lambda_ssl * l_ssl
        return {"loss": loss, "loss_ce": l_ce.detach(), "loss_triplet": l_tri.detach(), "loss_ssl": l_ssl.detach()}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "dino_center": self.dino.center.detach().cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if "dino_center" in state:
            self.dino.center.copy_(state["dino_center"])
