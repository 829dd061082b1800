"""Networks: VGG and EfficientNet-Lite backbones, FPN counting networks, the counter interface and
the paper's Table 9 counters (MCNN, CSRNet, CAN, SFCN, BL), the L2S scale network, registry,
conversion."""
from autoscale.models.efficientnet_lite import (
    LITE_MEAN,
    LITE_STD,
    EfficientNetLite,
    EfficientNetLiteBackbone,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
    efficientnet_lite3,
    efficientnet_lite4,
    imagenet_weights_path,
    load_imagenet_efficientnet,
)
from autoscale.models.fpn import BACKBONES, FPNOutput, LocalizationFPN, RegressionFPN, center_crop
from autoscale.models.l2s import FIXED_SCALES, L2S, FixedScale, roi_features, zoom_region
from autoscale.targets import zoomed_size  # the one rule, shared with the regenerated targets
from autoscale.models.registry import (
    CounterSpec,
    Weights,
    backbone_normalization,
    build_from_checkpoint,
    count_parameters,
    get_model,
    list_counters,
    list_models,
    load_checkpoint,
    model_spec,
    register_model,
)
from autoscale.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGG, VGGFeatures, load_imagenet_vgg, normalize, vgg16, vgg19
from autoscale.models.counter import DensityCounter, WrappedCounter, as_counter
# the Table 9 counters register themselves (one file per family)
from autoscale.models.mcnn import MCNN, mcnn_regression
from autoscale.models.csrnet import CSRNet, csrnet_regression
from autoscale.models.can import CAN, can_regression
from autoscale.models.sfcn import SFCN, sfcn_regression
from autoscale.models.bl import BLNet, bl_regression

__all__ = [
    "BLNet", "CAN", "CSRNet", "CounterSpec", "DensityCounter", "MCNN", "SFCN", "VGGFeatures", "WrappedCounter",
    "as_counter", "bl_regression", "can_regression", "csrnet_regression", "list_counters", "mcnn_regression",
    "model_spec", "sfcn_regression",
    "BACKBONES", "EfficientNetLite", "EfficientNetLiteBackbone", "FIXED_SCALES", "FPNOutput", "FixedScale",
    "IMAGENET_MEAN", "IMAGENET_STD", "L2S", "LITE_MEAN", "LITE_STD", "LocalizationFPN", "RegressionFPN", "VGG",
    "Weights", "backbone_normalization", "build_from_checkpoint", "center_crop", "count_parameters",
    "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite3", "efficientnet_lite4",
    "get_model", "imagenet_weights_path", "list_models", "load_checkpoint", "load_imagenet_efficientnet",
    "load_imagenet_vgg", "normalize", "register_model", "roi_features", "vgg16", "vgg19", "zoom_region",
    "zoomed_size",
]
