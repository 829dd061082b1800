"""autoscale: AutoScale (Xu, Liang et al., IJCV 2021) crowd counting and localization in PyTorch."""
from autoscale.errors import AutoScaleError, CheckpointError, ConfigError, DataError

__version__ = "0.1.0"

__all__ = ["AutoScaleError", "CheckpointError", "ConfigError", "DataError", "__version__"]
