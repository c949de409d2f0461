"""Losses of the two recipes.

* :class:`CrossEntropyLabelSmooth` -- VehicleNet Eq. 3-4 (``epsilon=0``) and SSBVER Eq. 2-3.
* :class:`TripletLoss` -- SSBVER Eq. 1: batch-hard soft-margin triplet (or the hinge with a margin).
* :class:`DINOLoss` -- SSBVER Eq. 4 (DINO's loss with teacher centring / sharpening), and the RMSE
  ablation of Eq. 7 (``mode="rmse"``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from vreid.errors import VreidError


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy with label smoothing, averaged over the batch (SSBVER Eq. 2-3).

    Target for a sample of class ``y`` over ``k`` classes: ``q_j = (1 - eps) + eps / k`` for ``j = y`` and
    ``q_j = eps / k`` otherwise; loss ``-sum_j q_j log softmax(z)_j``. SSBVER Eq. 3 writes the true-class
    target as ``1 - (k - 1) eps / k``, which is the same number. ``epsilon=0`` is the plain cross-entropy
    of VehicleNet Eq. 3-4 (there summed over samples; we average, which only rescales the learning rate).
    """

    def __init__(self, num_classes: int, epsilon: float = 0.0):
        super().__init__()
        if not 0.0 <= float(epsilon) <= 1.0:
            raise VreidError(f"label smoothing epsilon must be in [0, 1], got {epsilon}")
        self.num_classes = int(num_classes)
        self.epsilon = float(epsilon)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise VreidError(f"CrossEntropyLabelSmooth: logits of shape [B, {self.num_classes}] expected, "
                             f"got {tuple(logits.shape)}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.num_classes):
            raise VreidError(f"CrossEntropyLabelSmooth: labels must be in [0, {self.num_classes}), got range "
                             f"[{int(targets.min())}, {int(targets.max())}]")
        log_p = F.log_softmax(logits.float(), dim=1)
        q = torch.full_like(log_p, self.epsilon / self.num_classes)
        q.scatter_(1, targets.long().unsqueeze(1), 1.0 - self.epsilon + self.epsilon / self.num_classes)
        return -(q * log_p).sum(dim=1).mean()


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """[B, B] Euclidean distances; the clamp keeps the sqrt's gradient finite on the diagonal."""
    sq = (x * x).sum(dim=1, keepdim=True)
    d2 = sq + sq.t() - 2.0 * (x @ x.t())
    return d2.clamp_min(1e-12).sqrt()


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on Euclidean distances (SSBVER Eq. 1).

    For each anchor ``a`` of the batch: ``d_ap = max_{p in P(a)} ||x_a - x_p||`` (hardest positive,
    ``p != a``) and ``d_an = min_{n in N(a)} ||x_a - x_n||`` (hardest negative).
    ``margin=None``: soft margin ``log(1 + exp(d_ap - d_an))`` (Eq. 1); ``margin=m``: hinge
    ``max(0, d_ap - d_an + m)``. Eq. 1 sums over anchors; we average over the anchors that have both a
    positive and a negative (others are skipped; a batch without any gives 0), so the loss does not
    scale with the batch size. ``forward(feats, labels, return_distances=True)`` also returns
    ``(d_ap, d_an)`` per valid anchor, for logging.
    """

    def __init__(self, margin: Optional[float] = None, normalize_feature: bool = False):
        super().__init__()
        self.margin = None if margin is None else float(margin)
        self.normalize_feature = bool(normalize_feature)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, return_distances: bool = False):
        if feats.ndim != 2 or labels.shape[0] != feats.shape[0]:
            raise VreidError(f"TripletLoss: expected feats [B, D] and labels [B], got {tuple(feats.shape)} "
                             f"and {tuple(labels.shape)}")
        x = feats.float()
        if self.normalize_feature:
            x = F.normalize(x, dim=1)
        dist_mat = pairwise_euclidean(x)
        same = labels.view(-1, 1) == labels.view(1, -1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos = same & ~eye
        neg = ~same
        valid = pos.any(dim=1) & neg.any(dim=1)
        d_ap = dist_mat.masked_fill(~pos, float("-inf")).max(dim=1).values[valid]
        d_an = dist_mat.masked_fill(~neg, float("inf")).min(dim=1).values[valid]
        if not bool(valid.any()):
            loss = feats.sum() * 0.0
        elif self.margin is None:
            loss = F.softplus(d_ap - d_an).mean()
        else:
            loss = F.relu(d_ap - d_an + self.margin).mean()
        if return_distances:
            return loss, d_ap.detach(), d_an.detach()
        return loss


def dino_teacher_temperatures(warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: int,
                              epochs: int) -> np.ndarray:
    """Per-epoch teacher temperature as DINO's ``np.linspace(warmup, final, warmup_epochs)`` followed by
    ``final`` (SSBVER 4.3: 0.0005 -> 0.001 over the first ten epochs, then fixed)."""
    warmup_epochs = max(0, min(int(warmup_epochs), int(epochs)))
    return np.concatenate([
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs),
        np.full(int(epochs) - warmup_epochs, teacher_temp),
    ]).astype(np.float64)


class DINOLoss(nn.Module):
    """Self-distillation loss of SSBVER Eq. 4 (DINO), or its RMSE ablation Eq. 7 (``mode="rmse"``).

    Inputs: ``student_outputs`` -- the student's head outputs for the ``n_global`` global views followed by
    the ``n_local`` local views, either a list of [B, E] or those concatenated in that order
    [(n_global + n_local) B, E]; ``teacher_outputs`` -- the teacher's outputs for the global views
    (list or [n_global B, E]); ``epoch`` -- 0-based, indexes the teacher temperature schedule.

    ``mode="ce"``: ``p_t = softmax((g_t - c) / tau_t)`` (detached), ``p_s = softmax(g_s / tau_s)``;
    for every teacher global view ``i`` and every student view ``v != i``, ``-sum_E p_t log p_s``
    averaged over the batch; the loss is the mean over those (view pairs) terms (Eq. 4 sums; DINO's code
    averages). The centre ``c`` is then updated with momentum ``center_momentum`` (0.9) towards the batch
    mean of the teacher outputs (all-reduced over workers when torch.distributed is initialised).
    ``mode="rmse"``: ``||g_s(I') - g_t(I)||_2`` per sample over the same pairs (no centring, no
    temperature), averaged the same way.

    Teacher temperatures: ``teacher_temp_schedule`` (array, one per epoch) or built from
    ``warmup_teacher_temp``, ``teacher_temp``, ``warmup_epochs``, ``epochs`` (defaults: SSBVER 4.3's
    0.0005 -> 0.001 over ten epochs of 120; those are much sharper than DINO's 0.04 -> 0.07).
    """

    def __init__(self, out_dim: int, n_global: int = 2, n_local: int = 4,
                 teacher_temp_schedule: Optional[Union[np.ndarray, Sequence[float]]] = None,
                 warmup_teacher_temp: float = 0.0005, teacher_temp: float = 0.001, warmup_epochs: int = 10,
                 epochs: int = 120, student_temp: float = 0.1, center_momentum: float = 0.9, mode: str = "ce"):
        super().__init__()
        if mode not in ("ce", "rmse"):
            raise VreidError(f"DINOLoss: mode must be 'ce' or 'rmse', got {mode!r}")
        if n_global < 1 or n_local < 0:
            raise VreidError(f"DINOLoss: need n_global >= 1 and n_local >= 0, got {n_global}, {n_local}")
        self.out_dim = int(out_dim)
        self.n_global = int(n_global)
        self.n_local = int(n_local)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.mode = mode
        if teacher_temp_schedule is None:
            teacher_temp_schedule = dino_teacher_temperatures(warmup_teacher_temp, teacher_temp, warmup_epochs, epochs)
        self.teacher_temp_schedule = np.asarray(teacher_temp_schedule, dtype=np.float64)
        if self.teacher_temp_schedule.ndim != 1 or not len(self.teacher_temp_schedule) \
                or (self.teacher_temp_schedule <= 0).any():
            raise VreidError("DINOLoss: teacher_temp_schedule must be a non-empty 1-D array of positive numbers")
        self.register_buffer("center", torch.zeros(1, self.out_dim))

    @staticmethod
    def _chunks(x: Union[torch.Tensor, Sequence[torch.Tensor]], n: int, what: str) -> list[torch.Tensor]:
        if isinstance(x, torch.Tensor):
            if x.shape[0] % n:
                raise VreidError(f"DINOLoss: {what} has {x.shape[0]} rows, not a multiple of {n} views")
            return list(x.chunk(n))
        x = list(x)
        if len(x) != n:
            raise VreidError(f"DINOLoss: expected {n} {what} views, got {len(x)}")
        return x

    def teacher_temp(self, epoch: int) -> float:
        if not 0 <= int(epoch) < len(self.teacher_temp_schedule):
            raise VreidError(f"DINOLoss: epoch {epoch} outside the teacher temperature schedule "
                             f"(length {len(self.teacher_temp_schedule)})")
        return float(self.teacher_temp_schedule[int(epoch)])

    def forward(self, student_outputs, teacher_outputs, epoch: int) -> torch.Tensor:
        """Computed in fp32 with autocast off (a softmax of ``g / 5e-4`` in half precision is noise)."""
        device_type = (teacher_outputs if isinstance(teacher_outputs, torch.Tensor) else teacher_outputs[0]).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward(student_outputs, teacher_outputs, epoch)

    def _forward(self, student_outputs, teacher_outputs, epoch: int) -> torch.Tensor:
        student = self._chunks(student_outputs, self.n_global + self.n_local, "student")
        teacher = self._chunks(teacher_outputs, self.n_global, "teacher")
        teacher_cat = torch.cat(teacher).detach().float()
        if teacher_cat.shape[1] != self.out_dim:
            raise VreidError(f"DINOLoss: outputs of dimension {self.out_dim} expected, got {teacher_cat.shape[1]}")
        total = teacher_cat.new_zeros(())
        n_terms = 0
        if self.mode == "ce":
            temp = self.teacher_temp(epoch)
            t_probs = F.softmax((teacher_cat - self.center) / temp, dim=-1).chunk(self.n_global)
            s_logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student]
            for i, q in enumerate(t_probs):
                for v, lp in enumerate(s_logp):
                    if v == i:  # same view for student and teacher: skipped (Eq. 4, I' != I)
                        continue
                    total = total + (-(q * lp).sum(dim=-1)).mean()
                    n_terms += 1
            self.update_center(teacher_cat)
        else:
            t_out = teacher_cat.chunk(self.n_global)
            for i, g_t in enumerate(t_out):
                for v, g_s in enumerate(student):
                    if v == i:
                        continue
                    total = total + (g_s.float() - g_t).norm(dim=-1).mean()
                    n_terms += 1
        if n_terms == 0:
            raise VreidError("DINOLoss: no (teacher, student) view pair: need n_global + n_local >= 2")
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(g_t)`` over the batch (and over all workers)."""
        batch_sum = teacher_output.sum(dim=0, keepdim=True)
        count = torch.tensor([float(teacher_output.shape[0])], device=teacher_output.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        batch_center = batch_sum / count
        self.center.mul_(self.center_momentum).add_(batch_center.to(self.center.dtype), alpha=1 - self.center_momentum)
