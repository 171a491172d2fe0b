# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""SegRet for transformers: importing this package registers SegRet with the Auto classes.

The classes are also registered for remote code, so `save_pretrained` writes a complete `auto_map` and the code files
(`REMOTE_CODE_FILES`): a saved folder then loads with `trust_remote_code=True` where this package is not installed.
"""

from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForSemanticSegmentation

from .compat_segret import register_image_processor
from .configuration_segret import REMOTE_CODE_FILES, SEGRET_VARIANTS, SegRetConfig, segret_variant_config
from .image_processing_segret import SegRetImageProcessor
from .modeling_segret import (
    SegRetBackbone,
    SegRetForSemanticSegmentation,
    SegRetModel,
    SegRetPreTrainedModel,
)

AutoConfig.register(SegRetConfig.model_type, SegRetConfig, exist_ok=True)
AutoModel.register(SegRetConfig, SegRetModel, exist_ok=True)
AutoBackbone.register(SegRetConfig, SegRetBackbone, exist_ok=True)
AutoModelForSemanticSegmentation.register(SegRetConfig, SegRetForSemanticSegmentation, exist_ok=True)
register_image_processor(SegRetConfig, SegRetImageProcessor)

# For remote code: a save then writes these classes' `auto_map` entries and the code files, `REMOTE_CODE_FILES`.
SegRetConfig.register_for_auto_class("AutoConfig")
SegRetModel.register_for_auto_class("AutoModel")
SegRetBackbone.register_for_auto_class("AutoBackbone")
SegRetForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
SegRetImageProcessor.register_for_auto_class("AutoImageProcessor")


def __getattr__(name: str):
    # Imported on first use: transformers' pipelines module is slow to import and most users never need it.
    if name == "SegRetImageSegmentationPipeline":
        from .pipeline_segret import SegRetImageSegmentationPipeline

        return SegRetImageSegmentationPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REMOTE_CODE_FILES",
    "SEGRET_VARIANTS",
    "SegRetBackbone",
    "SegRetConfig",
    "SegRetForSemanticSegmentation",
    "SegRetImageProcessor",
    "SegRetImageSegmentationPipeline",
    "SegRetModel",
    "SegRetPreTrainedModel",
    "segret_variant_config",
]
