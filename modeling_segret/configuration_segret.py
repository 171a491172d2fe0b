# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""SegRet model configuration."""

import copy
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .compat_segret import BackboneConfigMixin, PreTrainedConfig

RETENTION_MODES = ("decomposed", "global")

# The paper's four variants (docs/architecture.md §2): RMT-T/S/B/L backbones; decoder width 512 for Large.
SEGRET_VARIANTS: dict[str, dict] = {
    "tiny": {
        "embed_dims": [64, 128, 256, 512],
        "depths": [2, 2, 8, 2],
        "num_heads": [4, 4, 8, 16],
        "decay_head_ranges": [4.0, 4.0, 6.0, 6.0],
        "mlp_ratios": [3.0, 3.0, 3.0, 3.0],
        "retention_modes": ["decomposed", "decomposed", "global", "global"],
        "use_layer_scale": [False, False, False, False],
        "drop_path_rate": 0.1,
        "decoder_hidden_size": 256,
    },
    "small": {
        "embed_dims": [64, 128, 256, 512],
        "depths": [3, 4, 18, 4],
        "num_heads": [4, 4, 8, 16],
        "decay_head_ranges": [4.0, 4.0, 6.0, 6.0],
        "mlp_ratios": [4.0, 4.0, 3.0, 3.0],
        "retention_modes": ["decomposed", "decomposed", "decomposed", "global"],
        "use_layer_scale": [False, False, False, False],
        "drop_path_rate": 0.15,
        "decoder_hidden_size": 256,
    },
    "base": {
        "embed_dims": [80, 160, 320, 512],
        "depths": [4, 8, 25, 8],
        "num_heads": [5, 5, 10, 16],
        "decay_head_ranges": [5.0, 5.0, 6.0, 6.0],
        "mlp_ratios": [4.0, 4.0, 3.0, 3.0],
        "retention_modes": ["decomposed", "decomposed", "decomposed", "global"],
        "use_layer_scale": [False, False, True, True],
        "drop_path_rate": 0.4,
        "decoder_hidden_size": 256,
    },
    "large": {
        "embed_dims": [112, 224, 448, 640],
        "depths": [4, 8, 25, 8],
        "num_heads": [7, 7, 14, 20],
        "decay_head_ranges": [6.0, 6.0, 6.0, 6.0],
        "mlp_ratios": [4.0, 4.0, 3.0, 3.0],
        "retention_modes": ["decomposed", "decomposed", "decomposed", "global"],
        "use_layer_scale": [False, False, True, True],
        "drop_path_rate": 0.5,
        "decoder_hidden_size": 512,
    },
}

# Types checked by `SegRetConfig.validate_architecture`: scalar fields, and the lists with one value per stage.
_SCALAR_TYPES = {
    "num_channels": int,
    "layer_scale_init_value": float,
    "drop_path_rate": float,
    "ffn_depthwise_conv": bool,
    "decoder_hidden_size": int,
    "decoder_dropout": float,
    "initializer_range": float,
    "semantic_loss_ignore_index": int,
    "loss_average_over_all_pixels": bool,
}
_PER_STAGE_TYPES = {
    "embed_dims": int,
    "depths": int,
    "num_heads": int,
    "decay_init_values": float,
    "decay_head_ranges": float,
    "mlp_ratios": float,
    "retention_modes": str,
    "use_layer_scale": bool,
}


def _has_type(value: object, expected_type: type) -> bool:
    """isinstance, where a bool is no int and an int is a float (as in JSON)."""
    if isinstance(value, bool):
        return expected_type is bool
    if expected_type is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected_type)


def _as_list(values: object) -> object:
    """Stores per-stage tuples as lists, as they come back from config.json; anything else is checked later."""
    return list(values) if isinstance(values, tuple) else values


# The Hub remote code: the files of this folder that a saved model carries, so that it loads with
# `trust_remote_code=True` where this package is not installed. This tuple is the one list of them:
# `SegRetConfig.save_pretrained` writes them (transformers itself copies only the files of the classes registered for
# the Auto API and their relative imports) and training/publish.py checks that a published folder holds them.
REMOTE_CODE_FILES = (
    "configuration_segret.py",  # AutoConfig
    "modeling_segret.py",  # AutoModel, AutoBackbone, AutoModelForSemanticSegmentation
    "image_processing_segret.py",  # AutoImageProcessor
    "pipeline_segret.py",  # config.json's custom_pipelines (below)
    "inference_segret.py",  # sliding-window and multi-scale inference, for the model card's snippet
    "compat_segret.py",  # the transformers-version shims the files above import
)
_CODE_FOLDER = Path(__file__).parent

# Written into every saved config.json (with the code files) once the classes are registered for the Auto API.
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_segret.SegRetConfig",
    "AutoModel": "modeling_segret.SegRetModel",
    "AutoBackbone": "modeling_segret.SegRetBackbone",
    "AutoModelForSemanticSegmentation": "modeling_segret.SegRetForSemanticSegmentation",
}

# Also written into a saved config.json, with pipeline_segret.py next to it, so that transformers'
# `pipeline("image-segmentation", model=folder, trust_remote_code=True)` builds SegRet's pipeline class.
REMOTE_CODE_PIPELINES = {
    "image-segmentation": {
        "impl": "pipeline_segret.SegRetImageSegmentationPipeline",
        "pt": ["AutoModelForSemanticSegmentation"],
        "tf": [],
        "type": "image",
    }
}
# A loaded config keeps `custom_pipelines` whether this class is the installed package's or the folder's remote-code
# copy, so a folder's pipeline does not depend on what happens to be imported: with `trust_remote_code=True`
# transformers builds SegRet's class, without it transformers refuses (its rule for any folder naming a custom
# pipeline) instead of building its own class. docs/pipeline.md lists every call path.


class SegRetConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a SegRet model: an RMT (Vision RetNet) backbone and SegRet's lightweight residual decoder.
    The defaults are SegRet-Tiny (RMT-T backbone) with the ADE20K decoder width.

    Args:
        num_channels (`int`, defaults to 3): Input image channels.
        embed_dims (`list[int]`): Channels of each backbone stage.
        depths (`list[int]`): Number of retention blocks per stage.
        num_heads (`list[int]`): Retention heads per stage; must divide the stage's channels into an even head size.
        decay_init_values (`list[float]`): Per stage, the `init_value` of the decay rates
            `gamma_n = 1 - 2 ** (-init_value - head_range * n / num_heads)` of head `n`.
        decay_head_ranges (`list[float]`): Per stage, the `head_range` of the formula above.
        mlp_ratios (`list[float]`): FFN hidden size as a multiple of the stage's channels.
        retention_modes (`list[str]`): Per stage, `"decomposed"` (retention along rows, then columns; linear cost;
            the official code's `chunkwise_recurrent=True`) or `"global"` (all tokens with the 2-D Manhattan decay).
        use_layer_scale (`list[bool]`): Per stage, whether blocks scale their residual branches by learned vectors.
        layer_scale_init_value (`float`): Initial value of those vectors.
        drop_path_rate (`float`): Stochastic depth, increasing linearly from 0 over all blocks.
        ffn_depthwise_conv (`bool`): The 3x3 depth-wise convolution inside each FFN. The released RMT ImageNet
            checkpoints have it; the paper's Base/Large parameter counts were measured without it.
        decoder_hidden_size (`int`): The decoder width C.
        decoder_dropout (`float`): Dropout2d rate before the classifier.
        initializer_range (`float`): Std of the truncated normal initialisation of linear layers.
        semantic_loss_ignore_index (`int`): Label value ignored by the loss.
        loss_average_over_all_pixels (`bool`): Divide the summed cross-entropy by all label pixels, ignored ones
            included (MMSegmentation's default `avg_non_ignore=False`, used by the paper), instead of by the
            labelled pixels only (PyTorch's default).
        out_features / out_indices: Stages returned by [`SegRetBackbone`], among `stage_names = ["stem", "stage1",
            "stage2", "stage3", "stage4"]`. Default: the last stage, as for every transformers backbone; pass
            `out_features=["stage1", "stage2", "stage3", "stage4"]` for the four maps a UperNet-style head takes.

    Example:
    ```python
    >>> from modeling_segret import SegRetConfig, SegRetForSemanticSegmentation
    >>> config = SegRetConfig(num_labels=150)
    >>> model = SegRetForSemanticSegmentation(config)
    ```"""

    model_type = "segret"
    attribute_map = {"num_hidden_layers": "num_stages"}

    # The classic `__init__(..., **kwargs)` style (not a `@strict` dataclass) loads on every transformers from 4.57 to
    # 5.x; `validate_architecture` below does the type and value checks `@strict` would do.
    def __init__(
        self,
        num_channels: int = 3,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 8, 2),
        num_heads: Sequence[int] = (4, 4, 8, 16),
        decay_init_values: Sequence[float] = (2.0, 2.0, 2.0, 2.0),
        decay_head_ranges: Sequence[float] = (4.0, 4.0, 6.0, 6.0),
        mlp_ratios: Sequence[float] = (3.0, 3.0, 3.0, 3.0),
        retention_modes: Sequence[str] = ("decomposed", "decomposed", "global", "global"),
        use_layer_scale: Sequence[bool] = (False, False, False, False),
        layer_scale_init_value: float = 1e-6,
        drop_path_rate: float = 0.1,
        ffn_depthwise_conv: bool = True,
        decoder_hidden_size: int = 256,
        decoder_dropout: float = 0.1,
        initializer_range: float = 0.02,
        semantic_loss_ignore_index: int = 255,
        loss_average_over_all_pixels: bool = False,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        **kwargs,
    ) -> None:
        self.num_channels = num_channels
        self.embed_dims = _as_list(embed_dims)
        self.depths = _as_list(depths)
        self.num_heads = _as_list(num_heads)
        self.decay_init_values = _as_list(decay_init_values)
        self.decay_head_ranges = _as_list(decay_head_ranges)
        self.mlp_ratios = _as_list(mlp_ratios)
        self.retention_modes = _as_list(retention_modes)
        self.use_layer_scale = _as_list(use_layer_scale)
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.ffn_depthwise_conv = ffn_depthwise_conv
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_dropout = decoder_dropout
        self.initializer_range = initializer_range
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        self.loss_average_over_all_pixels = loss_average_over_all_pixels

        # Types first: the code below (and transformers' `num_labels` setter) would fail on a wrong one with a
        # message naming neither the field nor the value.
        self._validate_types()
        num_labels = kwargs.get("num_labels")
        if num_labels is not None and (
            isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1
        ):
            raise ValueError(
                f"num_labels must be a positive integer (the number of classes), got {num_labels!r} "
                f"({type(num_labels).__name__})."
            )
        # Derived from `depths`; a saved config.json holds it too, but it is recomputed, never read back.
        kwargs.pop("stage_names", None)
        custom_pipelines = kwargs.pop("custom_pipelines", None)
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__init__(**kwargs)
        self.validate_architecture()
        if self._auto_class is not None and getattr(self, "auto_map", None) is None:
            self.auto_map = dict(REMOTE_CODE_AUTO_MAP)
        if custom_pipelines:
            self.custom_pipelines = custom_pipelines

    def _remote_code_files(self) -> list[Path]:
        """The code files a save writes: with an `auto_map` (the classes are registered for the Auto API), those of
        `REMOTE_CODE_FILES` next to this file (a remote-code copy has only those it was loaded with)."""
        if not getattr(self, "auto_map", None):
            return []
        return [_CODE_FOLDER / name for name in REMOTE_CODE_FILES if (_CODE_FOLDER / name).is_file()]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if _CODE_FOLDER / "pipeline_segret.py" in self._remote_code_files():
            output["custom_pipelines"] = copy.deepcopy(REMOTE_CODE_PIPELINES)
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        code_files = self._remote_code_files()
        if code_files:
            os.makedirs(save_directory, exist_ok=True)
        for code_file in code_files:
            shutil.copy(code_file, Path(save_directory) / code_file.name)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def _validate_types(self) -> None:
        for name, expected_type in {**_SCALAR_TYPES, **_PER_STAGE_TYPES}.items():
            value = getattr(self, name)
            items = value if name in _PER_STAGE_TYPES else [value]
            if name in _PER_STAGE_TYPES and not isinstance(value, list):
                raise TypeError(f"{name} must be a list with one value per stage, got {value!r}.")
            if not all(_has_type(item, expected_type) for item in items):
                raise TypeError(f"{name} must hold {expected_type.__name__} values, got {value!r}.")

    def validate_architecture(self) -> None:
        """Reject hyper-parameters that cannot build a model, naming the offending field, stage and value."""
        self._validate_types()
        per_stage = {
            "embed_dims": self.embed_dims,
            "num_heads": self.num_heads,
            "decay_init_values": self.decay_init_values,
            "decay_head_ranges": self.decay_head_ranges,
            "mlp_ratios": self.mlp_ratios,
            "retention_modes": self.retention_modes,
            "use_layer_scale": self.use_layer_scale,
        }
        lengths = {name: len(values) for name, values in per_stage.items()}
        if any(length != len(self.depths) for length in lengths.values()):
            raise ValueError(
                f"Every per-stage list must have one entry per stage (len(depths) = {len(self.depths)}), got lengths "
                f"{lengths}."
            )
        for stage, (dim, heads) in enumerate(zip(self.embed_dims, self.num_heads)):
            if dim <= 0 or heads <= 0 or dim % heads != 0:
                raise ValueError(f"Stage {stage}: num_heads={heads} must divide embed_dims={dim}.")
            if (dim // heads) % 2 != 0:
                raise ValueError(
                    f"Stage {stage}: head size embed_dims/num_heads = {dim}/{heads} = {dim // heads} must be even "
                    "(the rotary position encoding rotates channel pairs)."
                )
        for stage, mode in enumerate(self.retention_modes):
            if mode not in RETENTION_MODES:
                raise ValueError(f"Stage {stage}: unknown retention mode {mode!r}; expected one of {RETENTION_MODES}.")
        for stage, (depth, ratio) in enumerate(zip(self.depths, self.mlp_ratios)):
            if depth < 1:
                raise ValueError(f"Stage {stage}: depths must be >= 1, got {depth}.")
            if ratio <= 0:
                raise ValueError(f"Stage {stage}: mlp_ratios must be > 0, got {ratio}.")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")
        if not 0.0 <= self.decoder_dropout < 1.0:
            raise ValueError(f"decoder_dropout must be in [0, 1), got {self.decoder_dropout}.")
        if self.decoder_hidden_size < 1:
            raise ValueError(f"decoder_hidden_size must be >= 1, got {self.decoder_hidden_size}.")
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {self.num_channels}.")


def segret_variant_config(variant: str, **kwargs) -> SegRetConfig:
    """The config of a paper variant ("tiny", "small", "base", "large"); `kwargs` override or add fields.

    Unless `kwargs` choose other stages, its backbone outputs are the four stage maps the decoder reads (as in
    configuration/segret-*/config.json), so `AutoBackbone` on a SegRet checkpoint is ready for a multi-scale head;
    a bare `SegRetConfig()` follows the transformers convention of the last stage only.
    """
    if variant not in SEGRET_VARIANTS:
        raise ValueError(f"Unknown SegRet variant {variant!r}; expected one of {sorted(SEGRET_VARIANTS)}.")
    values = {**SEGRET_VARIANTS[variant], **kwargs}
    if "out_features" not in values and "out_indices" not in values:
        values["out_features"] = [f"stage{index}" for index in range(1, len(values["depths"]) + 1)]
    return SegRetConfig(**values)


__all__ = ["SegRetConfig", "segret_variant_config", "SEGRET_VARIANTS"]
