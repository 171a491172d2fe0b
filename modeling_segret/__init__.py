# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""SegRet for transformers: importing this package registers SegRet with the Auto classes.

The classes are also registered for remote code, so `save_pretrained` writes the model's code files and a complete
`auto_map`: a saved folder then loads with `trust_remote_code=True` where this package is not installed.
"""

from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForSemanticSegmentation

# transformers 5.4 - 5.17 without torchvision export a placeholder as `transformers.AutoImageProcessor`, whose every
# use raises; the class in its own module works on every version.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .configuration_segret import SEGRET_VARIANTS, SegRetConfig, segret_variant_config
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
try:  # transformers >= 5.4: one image processor class per backend
    AutoImageProcessor.register(SegRetConfig, image_processor_classes={"pil": SegRetImageProcessor}, exist_ok=True)
except TypeError:  # transformers 4.57 - 5.3: the "slow" (NumPy / PIL) class
    AutoImageProcessor.register(SegRetConfig, slow_image_processor_class=SegRetImageProcessor, exist_ok=True)

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
