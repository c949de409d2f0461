"""Heads on top of a pooled backbone feature.

* :class:`VehicleNetHead` -- VehicleNet sec. IV-A / Fig. 3: adaptive average pool, ``fc1`` (512), BN,
  dropout, ``fc2`` classifier; the re-id feature ``f`` is the BN output (the green box of Fig. 3).
* :class:`BNNeckHead` -- SSBVER sec. 3.2 / Fig. 2 (the BNNeck of "Bag of Tricks"): BN bottleneck with a
  frozen zero bias, bias-free linear classifier. Triplet on the pre-BN ``x``, cross-entropy on the logits
  of the post-BN ``x~``, inference on ``x~``.
* :class:`DINOHead` -- SSBVER sec. 3.3 / Fig. 3 (DINO's projection head): MLP with GELU, L2-normalised
  bottleneck, weight-normalised last layer with ``E`` outputs.

All heads accept a feature map [B, C, H, W] (averaged over H, W) or an already pooled [B, C].
Each returns a dict with ``feat_pre`` (pre-BN), ``feat`` (inference feature, post-BN), ``logits``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Adaptive average pooling to 1x1 (VehicleNet sec. IV-A) for [B, C, H, W]; [B, C] passes through."""
    if x.ndim == 4:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
    if x.ndim != 2:
        raise ValueError(f"expected a [B, C, H, W] map or [B, C] feature, got shape {tuple(x.shape)}")
    return x


def _init_kaiming(m: nn.Module) -> None:
    # As the VehicleNet authors' code (layumi/Person_reID_baseline_pytorch weights_init_kaiming).
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm1d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class VehicleNetHead(nn.Module):
    """VehicleNet head (sec. IV-A, Fig. 3): pool -> fc1 (``fc_dim``=512) -> BN -> dropout -> fc2.

    ``feat_pre`` = fc1 output, ``feat`` = BN output (the paper's re-id feature ``f``; dropout acts only
    on the classifier input), ``logits`` = fc2. Init as the authors' code: kaiming fc1, BN weight
    N(1, 0.02), classifier N(0, 0.001).
    """

    def __init__(self, in_dim: int, num_classes: int, fc_dim: int = 512, dropout: float = 0.5):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, fc_dim)
        self.bn = nn.BatchNorm1d(fc_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(fc_dim, num_classes)
        self.fc1.apply(_init_kaiming)
        self.bn.apply(_init_kaiming)
        self._init_classifier()

    def _init_classifier(self) -> None:
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    @property
    def feat_dim(self) -> int:
        return self.bn.num_features

    def new_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.bn.num_features, num_classes).to(self.bn.weight.device)
        self._init_classifier()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pre = self.fc1(global_avg_pool(x))
        feat = self.bn(pre)
        return {"feat_pre": pre, "feat": feat, "logits": self.classifier(self.dropout(feat))}


class BNNeckHead(nn.Module):
    """BNNeck (SSBVER sec. 3.2, Fig. 2): ``x~ = BN(x)`` with the BN bias frozen at 0, ``z = W x~``.

    Which feature is which: the soft-margin triplet loss (Eq. 1) uses ``feat_pre`` = ``x`` (the pooled
    backbone feature, pre-BN); cross-entropy (Eq. 2) uses ``logits`` = ``z``; inference uses ``feat`` =
    ``x~`` (post-BN). The classifier has no bias (Bag of Tricks' BNNeck; Fig. 2 writes ``+ B``, which a
    frozen-zero-bias BN before it makes redundant), init N(0, 0.001).
    """

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(in_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    @property
    def feat_dim(self) -> int:
        return self.bn.num_features

    def new_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.bn.num_features, num_classes, bias=False).to(self.bn.weight.device)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pre = global_avg_pool(x)
        feat = self.bn(pre)
        return {"feat_pre": pre, "feat": feat, "logits": self.classifier(feat)}


class WeightNormLinear(nn.Module):
    """Bias-free linear layer ``W = g * v / ||v||`` (row-wise norm), as ``nn.utils.weight_norm`` in DINO.

    Written out (same state-dict keys ``weight_g`` / ``weight_v`` as DINO's checkpoints) because the
    deprecated hook-based ``weight_norm`` cannot be deep-copied, and the teacher is a deep copy.
    """

    def __init__(self, in_dim: int, out_dim: int, fix_g: bool = True):
        super().__init__()
        lin = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.trunc_normal_(lin.weight, std=0.02)
        self.weight_v = nn.Parameter(lin.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_g)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINO projection head (SSBVER sec. 3.3, Fig. 3; DINO's ``DINOHead``).

    ``nlayers`` linear layers in the MLP (``in_dim -> hidden_dim -> ... -> bottleneck_dim``, GELU between),
    then L2 normalisation and a weight-normalised bias-free ``bottleneck_dim -> out_dim`` (= E) layer whose
    norm ``g`` is frozen at 1 when ``norm_last_layer``. Default ``nlayers=3`` (DINO's default): with the
    last layer that is four linear layers, which is how we read SSBVER's "MLP with four hidden layers"
    (SSBVER builds on DINO's code and states no other sizes). Input: the pooled pre-BN backbone feature.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        nlayers = max(int(nlayers), 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_g=norm_last_layer)
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(global_avg_pool(x))
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)

