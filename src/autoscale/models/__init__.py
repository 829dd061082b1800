"""Networks: VGG backbones, FPN counting networks, the L2S scale network, registry, conversion."""
from autoscale.models.fpn import FPNOutput, LocalizationFPN, RegressionFPN, center_crop
from autoscale.models.l2s import FIXED_SCALES, L2S, FixedScale, roi_features, zoom_region, zoomed_size
from autoscale.models.registry import (
    Weights,
    build_from_checkpoint,
    count_parameters,
    get_model,
    list_models,
    load_checkpoint,
    register_model,
)
from autoscale.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGG, load_imagenet_vgg, normalize, vgg16, vgg19

__all__ = [
    "FIXED_SCALES", "FPNOutput", "FixedScale", "IMAGENET_MEAN", "IMAGENET_STD", "L2S", "LocalizationFPN",
    "RegressionFPN", "VGG", "Weights", "build_from_checkpoint", "center_crop", "count_parameters", "get_model",
    "list_models", "load_checkpoint", "load_imagenet_vgg", "normalize", "register_model", "roi_features",
    "vgg16", "vgg19", "zoom_region", "zoomed_size",
]
