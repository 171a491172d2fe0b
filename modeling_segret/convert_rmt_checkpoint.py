# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Convert official RMT checkpoints (github.com/qhfan/RMT) to SegRet weights.

Accepted containers: `{"model": state_dict, ...}` (the released ImageNet checkpoints), `{"state_dict": ...}`
(MMSegmentation; backbone keys start with `backbone.`), or a bare state dict; a leading `module.` (DDP) is removed.

What is dropped, and why (nothing else is):
- `proj.*`, `norm.*`, `head.*`, `aux_head.*`: the ImageNet classifier (1024-d projection, its BatchNorm, heads);
- in MMSegmentation checkpoints, every key outside `backbone.` (decode and auxiliary heads);
- `layers.<i>.Relpos.angle` / `.decay`: buffers that SegRet derives from the config; they are checked against the
  config first, so a checkpoint of another variant fails here rather than silently.
Missing from ImageNet checkpoints and filled in: `extra_norms.<i>` (the segmentation backbone's output LayerNorms)
start at weight 1, bias 0, as in the official segmentation code.

Command line:
    python -m modeling_segret.convert_rmt_checkpoint --checkpoint rmt_t.pth --variant tiny --num_labels 150 \\
        --output_dir DIR
"""

import argparse
import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from .configuration_segret import SegRetConfig, segret_variant_config
from .image_processing_segret import SegRetImageProcessor
from .modeling_segret import SegRetBackbone, SegRetForSemanticSegmentation, SegRetRelativePosition

CLASSIFIER_PREFIXES = ("proj.", "norm.", "head.", "aux_head.")

# (official key pattern, SegRetBackbone key template); groups are stage/block indices and the parameter name.
_BLOCK = r"layers\.(\d+)\.blocks\.(\d+)\."
_RENAME_RULES = [
    (_BLOCK + r"pos\.conv\.(weight|bias)$", "stages.{0}.blocks.{1}.position_encoding.{2}"),
    (_BLOCK + r"retention_layer_norm\.(weight|bias)$", "stages.{0}.blocks.{1}.retention_norm.{2}"),
    (_BLOCK + r"retention\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$", "stages.{0}.blocks.{1}.retention.{2}.{3}"),
    (_BLOCK + r"retention\.lepe\.conv\.(weight|bias)$", "stages.{0}.blocks.{1}.retention.lepe.{2}"),
    (_BLOCK + r"final_layer_norm\.(weight|bias)$", "stages.{0}.blocks.{1}.ffn_norm.{2}"),
    (_BLOCK + r"ffn\.(fc1|fc2)\.(weight|bias)$", "stages.{0}.blocks.{1}.ffn.{2}.{3}"),
    (_BLOCK + r"ffn\.dwconv\.conv\.(weight|bias)$", "stages.{0}.blocks.{1}.ffn.dwconv.{2}"),
    (_BLOCK + r"gamma_1$", "stages.{0}.blocks.{1}.retention_layer_scale"),
    (_BLOCK + r"gamma_2$", "stages.{0}.blocks.{1}.ffn_layer_scale"),
    (r"extra_norms\.(\d+)\.(weight|bias)$", "output_norms.{0}.{1}"),
]
_BATCH_NORM_FIELDS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_STEM_PATTERN = re.compile(r"patch_embed\.proj\.(\d+)\.(.+)$")
_DOWNSAMPLE_PATTERN = re.compile(r"layers\.(\d+)\.downsample\.(reduction|norm)\.(.+)$")
_RELPOS_PATTERN = re.compile(r"layers\.(\d+)\.Relpos\.(angle|decay)$")


class CheckpointConversionError(ValueError):
    """The checkpoint does not match the configuration; the message lists the offending keys."""


def unwrap_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """Returns the backbone's official state dict from any accepted container, prefixes removed."""
    state_dict = checkpoint
    for container_key in ("model", "state_dict"):
        if isinstance(state_dict.get(container_key), Mapping):
            state_dict = state_dict[container_key]
            break
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if any(key.startswith("backbone.") for key in state_dict):  # MMSegmentation segmentor: keep the backbone only
        state_dict = {
            key[len("backbone.") :]: value for key, value in state_dict.items() if key.startswith("backbone.")
        }
    non_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if non_tensors:
        raise CheckpointConversionError(f"Not a state dict: these entries are not tensors: {non_tensors[:10]}")
    return state_dict


def _rename(key: str) -> str | None:
    """The SegRet encoder key of an official backbone key, or None when no rule applies."""
    if match := _STEM_PATTERN.match(key):
        index, field = int(match.group(1)), match.group(2)
        layer, position = divmod(index, 3)  # Sequential(conv, bn, gelu) x 3 + (conv, bn)
        part = {0: "convolution", 1: "normalization"}.get(position)
        if part is None or layer > 3:
            return None
        return f"embeddings.layers.{layer}.{part}.{field}"
    if match := _DOWNSAMPLE_PATTERN.match(key):
        stage, part, field = int(match.group(1)), match.group(2), match.group(3)
        # RMT downsamples at the end of stage i; SegRet at the start of stage i + 1.
        part = "convolution" if part == "reduction" else "normalization"
        return f"stages.{stage + 1}.downsample.{part}.{field}"
    for pattern, template in _RENAME_RULES:
        if match := re.match(pattern, key):
            return template.format(*match.groups())
    return None


def _check_relative_position(key: str, tensor: torch.Tensor, config: SegRetConfig) -> str | None:
    """A description of the mismatch between a checkpoint's `Relpos` buffer and the config, or None."""
    match = _RELPOS_PATTERN.match(key)
    stage, name = int(match.group(1)), match.group(2)
    if stage >= config.num_stages:
        return f"{key}: stage {stage} does not exist (the config has {config.num_stages})"
    heads = config.num_heads[stage]
    relative_position = SegRetRelativePosition(
        head_dim=config.embed_dims[stage] // heads,
        num_heads=heads,
        init_value=config.decay_init_values[stage],
        head_range=config.decay_head_ranges[stage],
        mode=config.retention_modes[stage],
    )
    expected = dict(zip(("angle", "decay"), relative_position.base_tables()))[name]
    if tensor.shape != expected.shape or not torch.allclose(tensor.float(), expected, rtol=1e-5, atol=1e-6):
        return f"{key}: checkpoint {tuple(tensor.shape)} differs from the config's {name} {tuple(expected.shape)}"
    return None


def convert_rmt_state_dict(checkpoint: Mapping, config: SegRetConfig) -> dict[str, torch.Tensor]:
    """Maps an official RMT checkpoint onto `SegRetBackbone` keys (`encoder.*`), checking every key and shape.

    Raises `CheckpointConversionError` listing the unexpected, missing and mis-shaped keys.
    """
    state_dict = unwrap_state_dict(checkpoint)
    converted: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for key, tensor in state_dict.items():
        if key.startswith(CLASSIFIER_PREFIXES):
            continue
        if _RELPOS_PATTERN.match(key):
            if problem := _check_relative_position(key, tensor, config):
                mismatched.append(problem)
            continue
        new_key = _rename(key)
        if new_key is None:
            unexpected.append(key)
            continue
        if new_key.endswith("layer_scale"):
            tensor = tensor.reshape(-1)  # RMT stores layer scales as (1, 1, 1, C)
        converted[f"encoder.{new_key}"] = tensor

    with torch.device("meta"):
        expected_shapes = {key: value.shape for key, value in SegRetBackbone(config).state_dict().items()}
    for index, dim in enumerate(config.embed_dims):
        for field, fill in (("weight", torch.ones), ("bias", torch.zeros)):
            converted.setdefault(f"encoder.output_norms.{index}.{field}", fill(dim))

    missing = sorted(set(expected_shapes) - set(converted))
    unexpected += sorted(key for key in converted if key not in expected_shapes)
    mismatched += [
        f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected_shapes[key])}"
        for key, tensor in converted.items()
        if key in expected_shapes and tensor.shape != expected_shapes[key]
    ]
    if missing or unexpected or mismatched:
        lines = ["The checkpoint does not match the SegRet configuration."]
        for title, items in (("Unexpected keys", unexpected), ("Missing keys", missing), ("Mismatches", mismatched)):
            if items:
                lines.append(f"{title} ({len(items)}): " + ", ".join(items[:50]) + (" ..." if len(items) > 50 else ""))
        raise CheckpointConversionError("\n".join(lines))
    return {key: converted[key] for key in expected_shapes}


def load_checkpoint(path: str | Path) -> Mapping:
    """Reads a `.safetensors` file, or a `.pth`/`.pt` file with `torch.load(weights_only=True)` (no pickled code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def convert_checkpoint(
    checkpoint_path: str | Path,
    variant: str,
    num_labels: int,
    output_dir: str | Path,
    id2label: dict[int, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a `SegRetForSemanticSegmentation` folder (safetensors + processor) whose backbone holds the checkpoint.

    A non-empty `output_dir` is refused (its files would mix with the new model's) unless `overwrite`, which empties
    it first.
    """
    output_dir = Path(output_dir)
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive number of classes, got {num_labels!r}")
    non_empty = output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir()))
    if non_empty and not overwrite:
        raise FileExistsError(f"{output_dir} is not empty; pass --overwrite to replace its contents")
    if non_empty and ((output_dir / ".git").exists() or not output_dir.is_dir()):
        raise FileExistsError(f"{output_dir} is a git checkout or a file; refusing to delete it")
    if id2label is None:
        id2label = {index: f"LABEL_{index}" for index in range(num_labels)}
    elif len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} entries but num_labels is {num_labels}.")
    config = segret_variant_config(variant, id2label=id2label, label2id={name: i for i, name in id2label.items()})
    backbone_weights = convert_rmt_state_dict(load_checkpoint(checkpoint_path), config)

    model = SegRetForSemanticSegmentation(config)
    prefix = f"{model.base_model_prefix}."
    incompatible = model.load_state_dict({prefix + key: value for key, value in backbone_weights.items()}, strict=False)
    unexpected_or_backbone_missing = list(incompatible.unexpected_keys) + [
        key for key in incompatible.missing_keys if key.startswith(prefix)
    ]
    if unexpected_or_backbone_missing:
        raise CheckpointConversionError(f"Backbone weights did not load: {unexpected_or_backbone_missing[:20]}")

    if non_empty:  # emptied only now that the conversion succeeded
        shutil.rmtree(output_dir)
    model.save_pretrained(output_dir)
    SegRetImageProcessor().save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="official RMT checkpoint (.pth, .pt or .safetensors)")
    parser.add_argument("--variant", required=True, choices=["tiny", "small", "base", "large"])
    parser.add_argument("--num_labels", type=int, required=True, help="classes of the segmentation head")
    parser.add_argument("--id2label", help="JSON file mapping class index to name (default LABEL_<i>)")
    parser.add_argument("--output_dir", required=True, help="folder to write the SegRet model to")
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --output_dir")
    args = parser.parse_args(argv)
    # Argument problems end with a usage message, not a traceback, before the checkpoint is read.
    if args.num_labels < 1:
        parser.error(f"--num_labels must be at least 1, got {args.num_labels}")
    if not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file")
    output_path = Path(args.output_dir)
    if output_path.exists() and (not output_path.is_dir() or any(output_path.iterdir())) and not args.overwrite:
        parser.error(f"--output_dir {args.output_dir} is not empty; pass --overwrite to replace its contents")
    id2label = None
    if args.id2label:
        try:
            id2label = {int(index): name for index, name in json.loads(Path(args.id2label).read_text()).items()}
        except (OSError, ValueError, AttributeError) as err:
            parser.error(f"--id2label {args.id2label}: expected a JSON object {{index: name}} ({err})")
        if sorted(id2label) != list(range(args.num_labels)):
            parser.error(f"--id2label must name classes 0..{args.num_labels - 1}, got indices {sorted(id2label)[:10]}")
    output = convert_checkpoint(
        args.checkpoint, args.variant, args.num_labels, args.output_dir, id2label, args.overwrite
    )
    print(f"Wrote SegRet-{args.variant} with the ImageNet backbone of {args.checkpoint} to {output}")


if __name__ == "__main__":
    main()
