# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""What differs between the transformers releases SegRet supports (4.57 ... 5.24), in one place.

The other files of this folder take every name below from here, never from its transformers location. Each shim tries
the newest location first; its `except` branch is labelled with the releases that need it. Dropping support for a
release is therefore, in the code, an edit of this file only: delete the branches whose label names no release still
supported (a `try` left without `except` becomes a plain import); then raise the lower bound in pyproject.toml and the
oldest version of scripts/compat_matrix.py. docs/compatibility.md says how a new release is checked.

This file is Hub remote code (the others import it with a relative import, and transformers' dynamic-module loader
fetches it with them): it imports only transformers and, where installed, torch, so the configuration and the image
processor load without torch.
"""

from transformers.image_utils import SizeDict
from transformers.utils import is_torch_available

# --- Configuration ----------------------------------------------------------------------------------------------------
try:  # transformers >= 5.0
    from transformers.configuration_utils import PreTrainedConfig
except ImportError:  # transformers 4.57
    from transformers.configuration_utils import PretrainedConfig as PreTrainedConfig

try:  # transformers >= 5.1
    from transformers.backbone_utils import BackboneConfigMixin
except ImportError:  # transformers 4.57 - 5.0: the older module, without `set_output_features_output_indices`
    from transformers.utils.backbone_utils import BackboneConfigMixin as _BackboneConfigMixin
    from transformers.utils.backbone_utils import get_aligned_output_features_output_indices

    class BackboneConfigMixin(_BackboneConfigMixin):
        def set_output_features_output_indices(self, out_features, out_indices) -> None:
            self._out_features, self._out_indices = get_aligned_output_features_output_indices(
                out_features=out_features, out_indices=out_indices, stage_names=self.stage_names
            )


# --- Modeling (needs torch) -------------------------------------------------------------------------------------------
if is_torch_available():
    try:  # transformers >= 5.0: initialisers that skip parameters already loaded from a checkpoint
        from transformers import initialization as init
    except ImportError:  # transformers 4.57: `_init_weights` only ever sees modules whose weights were not loaded
        from torch.nn import init

    try:  # transformers >= 5.1: `BackboneMixin.__init__` takes out_features / out_indices from the config
        from transformers.backbone_utils import BackboneMixin
    except ImportError:  # transformers 4.57 - 5.0: the older module, where the model calls `_init_backbone` itself
        from transformers.utils.backbone_utils import BackboneMixin as _BackboneMixin

        class BackboneMixin(_BackboneMixin):
            def __init__(self, config, *args, **kwargs) -> None:
                super().__init__(config, *args, **kwargs)
                self._init_backbone(config)


# --- Pipeline ---------------------------------------------------------------------------------------------------------
def allow_in_image_segmentation_pipeline(model_type: str, class_name: str) -> None:
    """Adds a model to the static table of names that `pipeline("image-segmentation")` accepts.

    The pipeline checks the model's class name against that table and logs an error ("... is not supported for
    image-segmentation") for any other, although it then runs the model. `AutoModelForSemanticSegmentation.register`
    does not reach the table, and remote code never calls it, so the modeling file calls this function.
    """
    try:  # the same table on 4.57 ... 5.24
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES
    except ImportError:  # a release without it: the pipeline then only logs the spurious error
        return
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(model_type, class_name)


# --- Image processing -------------------------------------------------------------------------------------------------
try:  # transformers >= 5.4: the base class of NumPy / PIL image processors
    from transformers.image_processing_backends import PilBackend as ImageProcessorBase
except ImportError:  # transformers 4.57 - 5.3: the classic base class
    from transformers.image_processing_utils import BaseImageProcessor as ImageProcessorBase
# The base class only saves, loads and calls `preprocess`: SegRetImageProcessor sets its settings, merges per-call
# options, validates, resizes, rescales, normalises and pads itself, so it computes the same on every release.

try:  # transformers >= 5.13: the output of `post_process_semantic_segmentation(return_segmentation_scores=True)`
    from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
except ImportError:  # transformers 4.57 - 5.12: no such class; a `BatchFeature` with the same two keys
    from transformers.image_processing_utils import BatchFeature as SemanticSegmentationPostProcessorOutput


def size_items(size: SizeDict) -> dict[str, int]:
    """The keys that are set in a `SizeDict`, as a dict (its fields and methods differ between releases)."""
    names = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")
    return {name: getattr(size, name) for name in names if getattr(size, name, None) is not None}


if not hasattr(SizeDict, "__iter__"):  # transformers 4.57 - 5.3: `dict(processor.size)` as on newer releases

    class SizeDict(SizeDict):
        def __iter__(self):
            yield from size_items(self).items()


def register_image_processor(config_class: type, image_processor_class: type) -> None:
    """Registers a NumPy / PIL image processor class for `config_class` with `AutoImageProcessor`."""
    # transformers 5.4 - 5.17 without torchvision export a placeholder as `transformers.AutoImageProcessor`, whose
    # every use raises; the class in its own module works on every release.
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    try:  # transformers >= 5.4: one image processor class per backend
        AutoImageProcessor.register(config_class, image_processor_classes={"pil": image_processor_class}, exist_ok=True)
    except TypeError:  # transformers 4.57 - 5.3: the "slow" (NumPy / PIL) class
        AutoImageProcessor.register(config_class, slow_image_processor_class=image_processor_class, exist_ok=True)


__all__ = [
    "BackboneConfigMixin",
    "ImageProcessorBase",
    "PreTrainedConfig",
    "SemanticSegmentationPostProcessorOutput",
    "SizeDict",
    "allow_in_image_segmentation_pipeline",
    "register_image_processor",
    "size_items",
]
if is_torch_available():
    __all__ += ["BackboneMixin", "init"]
