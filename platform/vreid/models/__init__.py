"""Models: timm backbones and ResNet-IBN-a, the VehicleNet / BNNeck / DINO heads, and their assembly.

Public API::

    build_backbone(name, pretrained=False, last_stride=1, img_size=None) -> (Backbone, feat_dim)
    ReidModel(backbone_name, head="vehiclenet"|"bnneck", num_classes, ...)
    build_model(cfg_dict) -> ReidModel
    count_parameters(model, exclude_classifier=False, exclude_dino=False) -> int
    measure_efficiency(model, image_size, batch_size, device) -> dict
"""

from vreid.models.backbones import Backbone, build_backbone, find_cached_weights, load_pretrained, set_last_stride
from vreid.models.efficiency import measure_efficiency
from vreid.models.heads import BNNeckHead, DINOHead, VehicleNetHead, global_avg_pool
from vreid.models.ibn import IBN, resnet_ibn_a
from vreid.models.reid_model import HEADS, ReidModel, build_model, count_parameters

__all__ = [
    "Backbone",
    "BNNeckHead",
    "DINOHead",
    "HEADS",
    "IBN",
    "ReidModel",
    "VehicleNetHead",
    "build_backbone",
    "build_model",
    "count_parameters",
    "find_cached_weights",
    "global_avg_pool",
    "load_pretrained",
    "measure_efficiency",
    "resnet_ibn_a",
    "set_last_stride",
]
