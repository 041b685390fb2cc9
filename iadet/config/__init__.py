"""iadet configuration: typed dataclasses (``schema``) and the strict YAML loader (``loader``).

    from iadet.config import load_config
    cfg = load_config("configs/iou_aware_retinanet_r50_fpn_1x_coco.yaml",
                      ["model.test.alpha=0.4"])
    cfg.model.head.iou_branch  # True

Nothing outside the model/data builders should read the config (STYLE.md habit 1).
"""
from .loader import config_files, config_to_dict, dump_config, load_config, merge_opts
from .schema import (
    AnchorConfig,
    AssignerConfig,
    BackboneConfig,
    BoxCoderConfig,
    Config,
    ConfigError,
    DataConfig,
    DatasetConfig,
    HeadConfig,
    InputConfig,
    LossConfig,
    ModelConfig,
    NeckConfig,
    SyntheticConfig,
    TestConfig,
    TrainConfig,
)

__all__ = [
    "AnchorConfig", "AssignerConfig", "LossConfig", "TrainConfig", "BackboneConfig", "BoxCoderConfig", "Config", "ConfigError", "DataConfig", "DatasetConfig", "SyntheticConfig",
    "HeadConfig", "InputConfig", "ModelConfig", "NeckConfig", "TestConfig",
    "config_files", "config_to_dict", "dump_config", "load_config", "merge_opts",
]
