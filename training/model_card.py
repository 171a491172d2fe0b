# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Model cards for SegRet checkpoints: fills `model_cards/template.md` from a config, results and a recipe.

What a card reads:

- the model's `SegRetConfig` (variant, classes) and, through `modeling_segret.complexity`, its parameter and FLOP
  counts;
- evaluation results ([`load_eval_results`]): the `eval_results*.json` files that `training/evaluation.py` and
  `training/train.py` write. Each file holds one result (a dict), a list of them, `{"results": [...]}`, or a dict
  keyed by mode. A result needs `mode` (`"ss"` whole image, `"slide"` sliding window, both single-scale, or `"ms"`
  multi-scale + flip) and `mean_iou` (a fraction, as `SegmentationMetric.compute` returns; values above 1 are read
  as percent) or `mIoU` (percent). Optional: `dataset`, `split`, `num_samples`, `mean_accuracy`/`mAcc`,
  `overall_accuracy`/`aAcc`, `inference` (`{"mode": "whole"|"slide", "flip": bool}`), `test_scale`, `miou_mode`,
  and per-class IoUs as `per_class` (`[{"name", "iou"}]`) or `per_category_iou` + `class_names`;
- the training recipe, if there is one: `training_args.json` (written by `training/train.py`), or a recipe YAML/JSON
  (`configuration/recipes/*.yaml`).

Without results the card has no `model-index` and says plainly that its numbers are the paper's.

`python -m training.model_card` rewrites the twelve cards of the paper's settings (four variants × ADE20K,
Cityscapes, COCO-Stuff) in `model_cards/segret-<variant>-<dataset>/README.md`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCardData

from modeling_segret import SEGRET_VARIANTS, SegRetConfig, segret_variant_config
from modeling_segret.complexity import (
    PAPER_FLOPS_SIZE,
    PAPER_GFLOPS,
    PAPER_PARAMETERS_M,
    ComplexityReport,
    format_reconciliation,
    measure,
    measure_variant,
    parameter_reconciliation,
    variant_name,
)
from training.presets import get_preset

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
CARDS_DIR = REPOSITORY_ROOT / "model_cards"
TEMPLATE_PATH = CARDS_DIR / "template.md"
RECIPES_DIR = REPOSITORY_ROOT / "configuration" / "recipes"
METAINFO_PATH = REPOSITORY_ROOT / "training" / "metainfo.json"
# Organisation shown in the snippets of the cards rendered here; `training.publish --repo-id` sets the real one.
PLACEHOLDER_ORG = "your-org"
SEGRET_ARXIV = "https://arxiv.org/abs/2502.14014"
RMT_ARXIV = "https://arxiv.org/abs/2309.11523"


@dataclass(frozen=True)
class DatasetInfo:
    """A benchmark of the paper: names, Hub dataset and the paper's setting (docs/architecture.md §8,
    docs/protocol.md)."""

    key: str  # preset name in training/presets.py
    slug: str  # in repository names
    name: str
    hub_id: str  # the dataset `training/data.py` loads by default
    model_index_type: str
    eval_split: str
    batch_size: int
    iterations: int
    crop_size: tuple[int, int]
    test_scale: tuple[int, int]  # (long, short) keep-ratio bound
    slide_crop: int
    slide_stride: int
    reduce_labels: bool
    license_note: str


def _preset_facts(key: str, variant: str | None = None) -> dict[str, Any]:
    """Hub id, split, crop, test scale and sliding window of the training preset (`training/presets.py`) for
    `variant`, so the card describes the protocol that `training/train.py` and `training/evaluation.py` run."""
    preset = get_preset(key, variant=variant)
    return {
        "hub_id": preset.hub_id,
        "eval_split": preset.eval_split,
        "crop_size": preset.crop_size,
        "test_scale": preset.test_scale,
        "slide_crop": preset.slide_crop[0],
        "slide_stride": preset.slide_stride[0],
    }


def _paper_dataset(key: str, **card_fields: Any) -> DatasetInfo:
    """A benchmark's card facts at the dataset's default scales (see `dataset_info` for a variant's)."""
    return DatasetInfo(key=key, **_preset_facts(key), **card_fields)


DATASETS: dict[str, DatasetInfo] = {
    "ade20k": _paper_dataset(
        "ade20k",
        slug="ade20k",
        name="ADE20K",
        model_index_type="scene_parse_150",
        batch_size=16,
        iterations=160_000,
        reduce_labels=True,
        license_note="ADE20K (MIT Scene Parsing) images come with their own terms of use; check them before "
        "commercial use.",
    ),
    "cityscapes": _paper_dataset(
        "cityscapes",
        slug="cityscapes",
        name="Cityscapes",
        model_index_type="cityscapes",
        batch_size=8,
        iterations=160_000,
        reduce_labels=False,
        license_note="Cityscapes is licensed for non-commercial purposes only; weights trained on it inherit that "
        "restriction in practice. There is no official Hub copy: `Chris1/cityscapes`, named in the metadata, is the "
        "unofficial copy that `training/data.py` reads by default.",
    ),
    "coco_stuff": _paper_dataset(
        "coco_stuff",
        slug="coco-stuff",
        name="COCO-Stuff-164k",
        model_index_type="coco_stuff",
        batch_size=16,
        iterations=80_000,
        reduce_labels=False,
        license_note="COCO-Stuff annotations are CC BY 4.0; the COCO images follow Flickr's terms of use.",
    ),
}
_DATASET_ALIASES = {"coco-stuff": "coco_stuff", "cocostuff": "coco_stuff", "ade": "ade20k", "scene_parse_150": "ade20k"}

# docs/architecture.md §8: the paper's mIoU (single-scale, multi-scale + flip) per variant and dataset.
PAPER_RESULTS: dict[tuple[str, str], tuple[float, float]] = {
    ("tiny", "ade20k"): (48.76, 49.39),
    ("small", "ade20k"): (50.7, 51.29),
    ("base", "ade20k"): (51.63, 52.13),
    ("large", "ade20k"): (52.0, 52.23),
    ("tiny", "cityscapes"): (81.75, 82.17),
    ("small", "cityscapes"): (82.93, 83.52),
    ("base", "cityscapes"): (83.28, 83.87),
    ("large", "cityscapes"): (83.36, 83.91),
    ("tiny", "coco_stuff"): (42.22, 43.32),
    ("small", "coco_stuff"): (44.32, 45.48),
    ("base", "coco_stuff"): (45.92, 46.06),
    ("large", "coco_stuff"): (45.78, 46.63),
}
RMT_NAMES = {"tiny": "RMT-T", "small": "RMT-S", "base": "RMT-B", "large": "RMT-L"}

CITATION = """```bibtex
@article{li2025segret,
  title   = {SegRet: An Efficient Design for Semantic Segmentation with Retentive Network},
  author  = {Li, Zhiyuan and Chang, Yi and Wu, Yuan},
  journal = {arXiv preprint arXiv:2502.14014},
  year    = {2025}
}

@inproceedings{fan2024rmt,
  title     = {RMT: Retentive Networks Meet Vision Transformers},
  author    = {Fan, Qihang and Huang, Huaibo and Chen, Mingrui and Liu, Hongmin and He, Ran},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}
```"""


def dataset_info(dataset: str | None, variant: str | None = None) -> DatasetInfo | None:
    """The paper benchmark called `dataset` (preset names and repository slugs both work), None for any other;
    with `variant`, at that variant's scales (the paper's Large trains and tests ADE20K at 640)."""
    if dataset is None:
        return None
    key = _DATASET_ALIASES.get(dataset.lower(), dataset.lower())
    info = DATASETS.get(key)
    if info is not None and variant:
        info = replace(info, **_preset_facts(key, variant))
    return info


def repository_name(variant: str | None, dataset: str | None) -> str:
    """`segret-<variant>-<dataset>` with the dataset's slug, e.g. `segret-tiny-coco-stuff`."""
    info = dataset_info(dataset)
    parts = ["segret", variant or "custom"] + ([info.slug if info else dataset.replace("_", "-")] if dataset else [])
    return "-".join(parts)


# --------------------------------------------------------------------------------------------- evaluation results
_MODES = {
    "ss": "ss",
    "single": "ss",
    "single-scale": "ss",
    "single_scale": "ss",
    "whole": "ss",
    "slide": "ss",
    "ms": "ms",
    "multi-scale": "ms",
    "multi_scale": "ms",
    "aug": "ms",
    "tta": "ms",
}


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation of the checkpoint; percentages in [0, 100]."""

    mode: str  # "ss" or "ms"
    inference: str  # "whole", "slide", "ms" or "ms+flip" (whole/slide per scale noted in `description`)
    mean_iou: float
    dataset: str | None = None
    split: str | None = None
    num_samples: int | None = None
    mean_accuracy: float | None = None
    overall_accuracy: float | None = None
    description: str = ""
    per_class_iou: tuple[tuple[str, float], ...] = field(default=(), repr=False)
    source: str = ""

    @property
    def metric_name(self) -> str:
        return f"mIoU ({self.description})"


def _percent(value: Any, key: str, where: str) -> float:
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{where}: {key} is NaN (nothing was evaluated?)")
    return 100.0 * number if abs(number) <= 1.0 else number


def _parse_record(entry: Mapping, where: str, mode_hint: str | None = None) -> EvalRecord:
    raw_mode = str(entry.get("mode", mode_hint or "")).lower()
    if raw_mode not in _MODES:
        raise ValueError(
            f"{where}: `mode` must be one of ss, slide (single-scale) or ms (multi-scale + flip), got {raw_mode!r}"
        )
    if "mean_iou" in entry:
        mean_iou = _percent(entry["mean_iou"], "mean_iou", where)
    elif "mIoU" in entry:
        mean_iou = float(entry["mIoU"])
    else:
        raise ValueError(f"{where}: no `mean_iou` (fraction) or `mIoU` (percent) in {sorted(entry)}")
    inference = entry.get("inference") if isinstance(entry.get("inference"), Mapping) else {}
    if _MODES[raw_mode] == "ms":
        flip = bool(inference.get("flip", True))
        per_scale = inference.get("mode", "whole")
        scales = inference.get("scales")
        description = f"multi-scale{' + flip' if flip else ''}, {per_scale}"
        if scales:
            description += f"; ratios {', '.join(f'{scale:g}' for scale in scales)}"
        kind = "ms+flip" if flip else "ms"
    else:
        kind = "slide" if raw_mode == "slide" else "whole"
        description = "single-scale, " + ("sliding window" if kind == "slide" else "whole image")
        if kind == "slide" and inference.get("crop_size") and inference.get("stride"):
            description += f" {_size(inference['crop_size'])} stride {_size(inference['stride'])}"
    # The test scale the run used (training/evaluation.py records it; None = the images' own size).
    if "test_scale" in entry:
        scale = entry["test_scale"]
        description += f", {'scale ' + _size(scale) if scale else 'original size'}"

    def optional_percent(fraction_key: str, percent_key: str) -> float | None:
        if entry.get(fraction_key) is not None:
            value = float(entry[fraction_key])
            value = 100.0 * value if abs(value) <= 1.0 else value
        elif entry.get(percent_key) is not None:
            value = float(entry[percent_key])
        else:
            return None
        return None if math.isnan(value) else value

    per_class: list[tuple[str, float]] = []
    if isinstance(entry.get("per_class"), list):
        per_class = [(str(c.get("name", c.get("id"))), c.get("iou")) for c in entry["per_class"]]
    elif entry.get("per_category_iou") is not None and entry.get("class_names") is not None:
        per_class = list(zip(entry["class_names"], entry["per_category_iou"]))
    per_class_iou = tuple(
        (name, float("nan") if iou is None else 100.0 * float(iou)) for name, iou in per_class if name is not None
    )
    return EvalRecord(
        mode=_MODES[raw_mode],
        inference=kind,
        mean_iou=round(mean_iou, 2),
        dataset=entry.get("dataset"),
        split=entry.get("split"),
        num_samples=entry.get("num_samples"),
        mean_accuracy=optional_percent("mean_accuracy", "mAcc"),
        overall_accuracy=optional_percent("overall_accuracy", "aAcc"),
        description=description,
        per_class_iou=per_class_iou,
        source=where,
    )


def parse_eval_results(data: Any, where: str = "eval_results") -> list[EvalRecord]:
    """Evaluation records from the parsed JSON of one results file (see the module docstring for the formats)."""
    if isinstance(data, Mapping) and isinstance(data.get("results"), list):
        data = data["results"]
    if isinstance(data, list):
        return [_parse_record(entry, f"{where}[{index}]") for index, entry in enumerate(data)]
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a JSON object or list, got {type(data).__name__}")
    if "mode" not in data and data and all(str(key).lower() in _MODES for key in data):
        return [_parse_record(entry, f"{where}[{key}]", mode_hint=str(key)) for key, entry in data.items()]
    return [_parse_record(data, where)]


def load_eval_results(paths: Sequence[str | Path]) -> list[EvalRecord]:
    """Records of every given `eval_results*.json` file, in order; one dataset across all of them."""
    records = []
    for path in paths:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        records += parse_eval_results(data, path.name)
    datasets = {dataset_key(r.dataset) for r in records if r.dataset}
    if len(datasets) > 1:
        raise ValueError(f"The evaluation results cover several datasets {sorted(datasets)}; publish one at a time.")
    return records


def dataset_key(dataset: str) -> str:
    info = dataset_info(dataset)
    return info.key if info else dataset


# ------------------------------------------------------------------------------------------------------ recipes
def load_recipe(path: str | Path) -> dict:
    """A training recipe: `training_args.json` or a YAML/JSON recipe file, as a flat dict."""
    path = Path(path)
    text = path.read_text()
    recipe = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of fields, got {type(recipe).__name__}")
    return recipe


def paper_recipe_path(variant: str, dataset: str) -> Path:
    return RECIPES_DIR / f"{repository_name(variant, dataset)}.yaml"


# ------------------------------------------------------------------------------------------------ the sections
@functools.lru_cache(maxsize=4)
def _variant_table(num_labels: int) -> tuple[list[ComplexityReport], list[ComplexityReport], list[dict]]:
    """The four variants at the paper's FLOP size: as released, without the FFN depth-wise conv, reconciliation."""
    reports = [measure_variant(variant, PAPER_FLOPS_SIZE, num_labels) for variant in SEGRET_VARIANTS]
    older = [
        measure_variant(variant, PAPER_FLOPS_SIZE, num_labels, ffn_depthwise_conv=False) for variant in SEGRET_VARIANTS
    ]
    return reports, older, parameter_reconciliation(num_labels)


def _size(size: Sequence[int]) -> str:
    return f"{size[0]}×{size[1]}"


def _metadata(
    name: str,
    info: DatasetInfo | None,
    dataset: str | None,
    hub_dataset: str | None,
    records: Sequence[EvalRecord],
    license: str,
) -> str:
    tags = ["segret", "rmt", "retnet", "semantic-segmentation", "vision", "image-segmentation"]
    if info is not None:
        tags.append(info.slug)
    elif dataset:
        tags.append(dataset.replace("_", "-"))
    eval_results = None
    if records:
        eval_results = [
            EvalResult(
                task_type="image-segmentation",
                task_name="Semantic Segmentation",
                dataset_type=info.model_index_type if info else (hub_dataset or dataset or "custom"),
                dataset_name=info.name if info else (dataset or "custom"),
                dataset_split=record.split or (info.eval_split if info else None),
                metric_type="mean_iou",
                metric_value=record.mean_iou,
                metric_name=record.metric_name,
            )
            for record in records
        ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license,
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=["mean_iou"],
        tags=tags,
        model_name=name,
        eval_results=eval_results,
    )
    return data.to_yaml()


def _title(variant: str | None, info: DatasetInfo | None, dataset: str | None) -> str:
    model = f"SegRet-{variant.capitalize()}" if variant else "SegRet (custom architecture)"
    target = info.name if info else dataset
    return f"{model}" + (f" for semantic segmentation on {target}" if target else "")


def _status(records: Sequence[EvalRecord], variant: str | None, info: DatasetInfo | None, decoder_trained: bool) -> str:
    lines = []
    paper = bool(variant and info and (variant, info.key) in PAPER_RESULTS)
    if not decoder_trained:
        lines.append(
            "> **This checkpoint is not a trained segmentation model.** Its decoder is freshly initialised (the "
            "zero-initialised residual convolutions are still exactly zero): it holds the ImageNet-1k RMT backbone "
            "and is a starting point for fine-tuning. Its predictions are meaningless until then."
        )
    if records:
        evaluated = ", ".join(
            f"{r.description}" + (f" on {r.num_samples} images" if r.num_samples else "") for r in records
        )
        compared = " The paper's numbers are shown beside them for comparison only." if paper else ""
        lines.append(
            f"> **Results of this checkpoint** ({evaluated}) are in the metadata and under *Evaluation*; they come "
            f"from its `eval_results*.json`.{compared}"
        )
    elif paper:
        lines.append(
            "> **The results in this card are the paper's, not this checkpoint's.** This checkpoint's own evaluation "
            "has not been run yet, so the card has no `model-index`; `python -m training.publish` fills one in from "
            "the checkpoint's `eval_results.json` once `training/evaluation.py` has measured it."
        )
    else:
        lines.append("> **No results have been measured for this checkpoint yet**, and the paper has none for it.")
    return "\n>\n".join(lines)


def _summary(config: SegRetConfig, variant: str | None, info: DatasetInfo | None, dataset: str | None) -> str:
    backbone = f"an {RMT_NAMES[variant]}" if variant else "an RMT"
    target = (
        f"the {config.num_labels} classes of {info.name if info else dataset}"
        if (info or dataset)
        else (f"{config.num_labels} classes")
    )
    return (
        f"SegRet ([Li et al., 2025]({SEGRET_ARXIV})) segments images with {backbone} (Retentive Networks Meet Vision "
        f"Transformers, [Fan et al., CVPR 2024]({RMT_ARXIV})) backbone and a lightweight residual decoder whose "
        f"residual branches start at zero. This checkpoint predicts {target}. It is a 🤗 Transformers model with its "
        "own code (`trust_remote_code=True`) and needs only `torch`, `transformers`, `numpy` and `Pillow`: no "
        "MMSegmentation, no torchvision."
    )


def _architecture(config: SegRetConfig, variant: str | None) -> str:
    def stages(values: Sequence) -> str:
        return " / ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    layer_scale = [str(i + 1) for i, on in enumerate(config.use_layer_scale) if on]
    labels = [config.id2label[i] for i in range(min(config.num_labels, 6))]
    more = f", … ({config.num_labels} in all)" if config.num_labels > len(labels) else ""
    rows = [
        "| | |",
        "|---|---|",
        f"| Backbone | {RMT_NAMES[variant] if variant else 'RMT (custom)'}: stem of four 3×3 convolutions (stride 4), "
        "four stages of retention blocks, stride-2 convolutions between them |",
        f"| Channels per stage | {stages(config.embed_dims)} |",
        f"| Blocks per stage | {stages(config.depths)} |",
        f"| Heads per stage | {stages(config.num_heads)} |",
        f"| Retention per stage | {stages(config.retention_modes)} |",
        f"| FFN ratio per stage | {stages(config.mlp_ratios)} |",
        f"| Layer scale | {'stages ' + ', '.join(layer_scale) if layer_scale else 'none'} |",
        f"| FFN depth-wise convolution | {'yes' if config.ffn_depthwise_conv else 'no'} |",
        f"| Stochastic depth (training) | {config.drop_path_rate:g} |",
        f"| Decoder width C | {config.decoder_hidden_size} |",
        f"| Classes | {config.num_labels}: {', '.join(labels)}{more} |",
    ]
    return (
        "\n".join(rows) + "\n\n"
        "*Retention* is RMT's Manhattan self-attention: softmax attention with a rotary position encoding and a decay "
        "that grows with the Manhattan distance between tokens, plus a 5×5 depth-wise convolution of the values. "
        "`global` attends over all tokens of the stage (cost quadratic in the number of tokens); `decomposed` attends "
        "along each row, then along each column (linear cost).\n\n"
        "The *decoder* maps each of the four stage outputs to C channels twice, with a linear layer and with a 1×1 "
        "convolution initialised to zero (the zero-initialised residual, ZIR), adds the two, upsamples everything to "
        "1/4 of the input size, concatenates, fuses with a 1×1 convolution + batch norm + ReLU and classifies with a "
        "1×1 convolution. The logits are at 1/4 of the input resolution; the image processor's "
        "`post_process_semantic_segmentation` resizes them to the image size."
    )


def _complexity(config: SegRetConfig, info: DatasetInfo | None) -> str:
    sizes = [PAPER_FLOPS_SIZE] + ([info.crop_size] if info and info.crop_size != PAPER_FLOPS_SIZE else [])
    reports = [measure(config, size) for size in sizes]
    parameters = reports[0].parameters
    lines = [
        f"Parameters: **{parameters['total']:,}** ({parameters['total'] / 1e6:.2f}M) — backbone "
        f"{parameters['backbone']:,} (with its four output layer norms), decoder {parameters['decoder']:,}.",
        "",
        "| Input | GFLOPs, paper's convention | GFLOPs, full | of which retention products | of which batch norms |",
        "|---|---|---|---|---|",
    ]
    for report in reports:
        total = report.flops["total"]
        lines.append(
            f"| {_size(report.input_size)} | {total.paper / 1e9:.2f} | {total.full / 1e9:.2f} | "
            f"{total.attention / 1e9:.2f} | {total.batch_norm / 1e9:.2f} |"
        )
    lines += [
        "",
        "FLOPs are multiply-accumulates of one image. The *paper's convention* is MMSegmentation's `get_flops` on the "
        "official code (convolutions with their biases, linear layers, layer norms and ReLUs; not the retention "
        "products Q·Kᵀ and weights·V, and not the batch norms, which the official code builds as `SyncBatchNorm`); "
        "*full* adds those two. Reproduce with "
        f"`python -m modeling_segret.complexity --config <this folder> --size {PAPER_FLOPS_SIZE[0]} "
        f"{PAPER_FLOPS_SIZE[1]}` (from the [SegRet code repository](#how-to-use)); the counts come from "
        "`torch.utils.flop_counter` and need no extra dependency.",
    ]
    return "\n".join(lines)


def _usage(repo_id: str, info: DatasetInfo | None) -> str:
    test_scale = info.test_scale if info else (2048, 512)
    crop, stride = (info.slide_crop, info.slide_stride) if info else (512, 341)
    return f"""The model's code lives in this repository, so every call passes `trust_remote_code=True`; pin
`revision=` (and `code_revision=`) to a commit you have reviewed. Any RGB image works; the examples read
`image.jpg`.

With the Auto classes:

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

repo_id = "{repo_id}"
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModelForSemanticSegmentation.from_pretrained(repo_id, trust_remote_code=True).eval()

image = Image.open("image.jpg").convert("RGB")
inputs = processor(images=image, return_tensors="pt")  # keep-ratio resize to the test scale, ImageNet normalisation
with torch.no_grad():
    outputs = model(**inputs)  # logits: (1, num_labels, height / 4, width / 4)
label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
print({{model.config.id2label[int(i)] for i in label_map.unique()}})
```

With the pipeline (one mask per class present, at the image's size; the repository's own pipeline class reads
16-bit images on the processor's scale and batches images of any sizes):

```python
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{repo_id}", trust_remote_code=True)
for segment in segmenter("image.jpg"):
    print(segment["label"], segment["mask"].size)
masks_per_image = segmenter(["a.jpg", "b.png", "c.jpg"], batch_size=4)  # any mix of sizes
```

Multi-scale + flip inference (the paper's MS numbers) and sliding-window inference (an option; the paper's
single-scale numbers predict the whole image, as above): the functions ship with the model in `inference_segret.py`.
The image is normalised at its original size and resized inside, in floating point, to the test scale
({test_scale[0]}×{test_scale[1]}, long × short side bound):

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
from transformers.dynamic_module_utils import get_class_from_dynamic_module

repo_id = "{repo_id}"
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModelForSemanticSegmentation.from_pretrained(repo_id, trust_remote_code=True).eval()
segment = get_class_from_dynamic_module("inference_segret.segment", repo_id)  # a function, despite the name

image = Image.open("image.jpg").convert("RGB")
pixel_values = processor(images=image, do_resize=False, return_tensors="pt").pixel_values
scale = ({test_scale[0]}, {test_scale[1]})  # the test scale: (long side bound, short side bound)
# Single scale, {crop}×{crop} windows with stride {stride}; the label map has the image's size.
sliding = segment(model, pixel_values, test_scale=scale, mode="slide", crop_size={crop}, stride={stride})[0]
# Ratios 0.5 ... 1.75 of the test scale, each also flipped; softmax averaged.
multi_scale = segment(model, pixel_values, test_scale=scale, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True)[0]
print(sliding.shape, multi_scale.shape)
```

The backbone alone: `AutoModel` gives the four normalised stage maps (`output_hidden_states=True`) and `AutoBackbone`
gives them as `feature_maps` for other heads. In transformers 5.23, `AutoBackbone.from_pretrained` rejects local
folders; there, load the class named in `config.json`'s `auto_map`, e.g. with `get_class_from_dynamic_module`."""


def _recipe_rows(recipe: Mapping, info: DatasetInfo | None, variant: str | None) -> list[str]:
    crop = recipe.get("crop_size") or (list(info.crop_size) if info else None)
    per_device = recipe.get("per_device_train_batch_size")
    accumulation = recipe.get("gradient_accumulation_steps", 1)
    batch = recipe.get("total_train_batch_size") or recipe.get("global_batch_size")
    batch_text = (
        f"{batch}"
        if batch
        else f"{per_device} per device × processes × {accumulation} accumulation step(s)"
        if per_device
        else None
    )
    rows = [
        ("Variant", recipe.get("variant", variant)),
        ("Dataset", recipe.get("dataset")),
        ("Backbone initialisation", recipe.get("backbone_checkpoint") or recipe.get("model_name_or_path")),
        ("Iterations", f"{recipe['max_steps']:,}" if isinstance(recipe.get("max_steps"), int) else None),
        ("Batch", batch_text),
        ("Crop (height × width)", _size(crop) if crop else None),
        # training/train.py always uses AdamW and does not record it.
        ("Optimiser", recipe.get("optimizer") or ("AdamW" if "learning_rate" in recipe else None)),
        ("Learning rate", recipe.get("learning_rate")),
        ("Weight decay", recipe.get("weight_decay")),
        ("Warm-up steps", recipe.get("warmup_steps")),
        ("Poly decay power", recipe.get("poly_power")),
        (
            "Loss normalisation",
            None
            if "loss_average_over_all_pixels" not in recipe
            else ("all pixels (MMSegmentation)" if recipe["loss_average_over_all_pixels"] else "labelled pixels"),
        ),
        ("Mixed precision", recipe.get("mixed_precision")),
        ("Seed", recipe.get("seed")),
    ]
    return [f"| {name} | {value} |" for name, value in rows if value not in (None, "")]


def _training(
    recipe: Mapping | None, recipe_name: str | None, info: DatasetInfo | None, variant: str | None, recorded: bool
) -> str:
    lines = []
    if recipe:
        origin = (
            f"recorded with this checkpoint (`{recipe_name}`)"
            if recorded
            else f"`configuration/recipes/{recipe_name}` of the SegRet code repository, the paper's setting"
        )
        lines += [f"Recipe: {origin}. Training script: `accelerate launch training/train.py <recipe>`.", ""]
        lines += ["| | |", "|---|---|", *_recipe_rows(recipe, info, variant), ""]
        lines += [
            "<details><summary>Full recipe</summary>",
            "",
            "```yaml",
            yaml.safe_dump(dict(recipe), sort_keys=False).strip(),
            "```",
            "",
            "</details>",
            "",
        ]
    else:
        lines += ["This checkpoint's training recipe was not recorded.", ""]
    if info:
        crop = _size(info.crop_size)
        lines.append(
            f"The paper's recipe on {info.name} (MMSegmentation, 4 GPUs): AdamW, learning rate 1e-4, weight decay "
            f"0.01, batch {info.batch_size}, {info.iterations:,} iterations, random crops of {crop} after a "
            f"keep-ratio resize to {info.test_scale[0]}×{info.test_scale[1]} × [0.5, 2], horizontal flip, photometric "
            "distortion, plain cross-entropy (no OHEM); the backbone starts from the RMT ImageNet-1k weights. The "
            "paper does not state its learning-rate schedule."
        )
    return "\n".join(lines).strip()


def _evaluation(records: Sequence[EvalRecord], variant: str | None, info: DatasetInfo | None) -> str:
    lines = []
    paper = PAPER_RESULTS.get((variant, info.key)) if variant and info else None
    if records:
        lines += [
            "This checkpoint:",
            "",
            "| Inference | mIoU | mAcc | aAcc | Images | Split | Paper's mIoU |",
            "|---|---|---|---|---|---|---|",
        ]
        for record in records:
            reported = f"{paper[0 if record.mode == 'ss' else 1]:.2f}" if paper else "–"

            def show(value: float | None) -> str:
                return f"{value:.2f}" if value is not None else "–"

            lines.append(
                f"| {record.description} | **{record.mean_iou:.2f}** | {show(record.mean_accuracy)} | "
                f"{show(record.overall_accuracy)} | {record.num_samples or '–'} | {record.split or '–'} | {reported} |"
            )
        lines.append("")
        for record in records:
            if record.per_class_iou:
                lines += [
                    f"<details><summary>Per-class IoU ({record.description})</summary>",
                    "",
                    "| Class | IoU |",
                    "|---|---|",
                    *(f"| {name} | {'–' if math.isnan(iou) else f'{iou:.2f}'} |" for name, iou in record.per_class_iou),
                    "",
                    "</details>",
                    "",
                ]
    if info:
        whole = " (Cityscapes' 2048×1024 images: the whole full-resolution image)" if info.key == "cityscapes" else ""
        protocol = (
            "Protocol (Mask2Former's, which the paper follows): single-scale (`ss`) resizes the image keep-ratio to "
            f"{info.test_scale[0]}×{info.test_scale[1]} (long × short side bound) and predicts it whole{whole}; "
            "multi-scale (`ms`) uses the ratios 0.5–1.75 of that scale, each also flipped, and averages the "
            "softmax; the logits are resized to the original label size. The paper's two columns below are these two "
            f"protocols. Sliding windows (`slide`, {info.slide_crop}×{info.slide_crop} at stride "
            f"{info.slide_stride}, MMSegmentation's) are an option, reported as such. mIoU sums intersections and "
            f"unions over the whole {info.eval_split} split. Run `python training/evaluation.py --model <folder> "
            f"--dataset {info.key} --mode ss|slide|ms` (the test scale and windows follow the model's variant, read "
            "from its config), then `python -m training.publish` to put the results here."
        )
        lines.append(protocol)
        lines.append("")
    if variant and info:
        lines += [
            f"The paper's results (mIoU, {info.eval_split} split) for SegRet-{variant.capitalize()}"
            + (" — **not measured on this checkpoint**:" if not records else ":"),
            "",
            "| Dataset | Single-scale, whole image | Multi-scale + flip |",
            "|---|---|---|",
        ]
        for key, other in DATASETS.items():
            ss, ms = PAPER_RESULTS[(variant, key)]
            mark = "**" if key == info.key else ""
            lines.append(f"| {mark}{other.name}{mark} | {mark}{ss:.2f}{mark} | {mark}{ms:.2f}{mark} |")
    elif not records:
        lines.append("No evaluation results.")
    return "\n".join(lines).strip()


def _reconciliation(variant: str | None) -> str:
    reports, older, rows = _variant_table(150)
    lines = [
        "The paper reports 14.01M / 26.52M / 53.05M / 95.81M parameters and 72.28 / 117.1 / 229.66 / 478.54 GFLOPs "
        f"({_size(PAPER_FLOPS_SIZE)}) for Tiny / Small / Base / Large. This implementation with 150 classes, as "
        "released (with the FFN depth-wise convolution) and without that convolution:",
        "",
        "| Variant | Parameters | without FFN dwconv | Paper | GFLOPs (paper's convention) | without FFN dwconv | "
        "Paper | Full GFLOPs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report, old, name in zip(reports, older, SEGRET_VARIANTS):
        mark = "**" if name == variant else ""
        released, without = report.flops["total"], old.flops["total"]
        lines.append(
            f"| {mark}{name.capitalize()}{mark} | {report.parameters['total']:,} | {old.parameters['total']:,} | "
            f"{PAPER_PARAMETERS_M[name]:.2f}M | {released.paper / 1e9:.2f} | {without.paper / 1e9:.2f} | "
            f"{PAPER_GFLOPS[name]:.2f} | {released.full / 1e9:.2f} |"
        )
    tiny = rows[0]
    lines += [
        "",
        "Where the differences come from:",
        "",
        "- **FFN depth-wise convolution.** The released RMT ImageNet checkpoints have a 3×3 depth-wise convolution "
        "inside every feed-forward block, so this model keeps it. The paper's Base and Large parameters and FLOPs "
        "match a backbone *without* it (an older RMT code version); `ffn_depthwise_conv=False` in the config builds "
        "that backbone.",
        f"- **An unused convolution.** MMSegmentation's decode heads always build `conv_seg` (here 128 → classes, "
        f"{tiny['unused_conv_seg']:,} parameters with 150 classes), which SegRet's head never calls; mmcv's count "
        "includes it.",
        "- **Decoder figures** (paper: 0.814 / 0.814 / 0.871 / 2.607M) are mmcv's per-module print, which skips "
        f"`SyncBatchNorm` (2C parameters) and includes that unused `conv_seg`: {tiny['decoder']:,} − "
        f"{tiny['decoder'] + tiny['unused_conv_seg'] - tiny['mmcv_decoder']:,} + {tiny['unused_conv_seg']:,} = "
        f"{tiny['mmcv_decoder']:,} for Tiny and Small. The zero-initialised residual alone is 246,784 parameters "
        'for Tiny/Small (the paper\'s "+0.25M" ablation).',
        "- **Tiny and Small totals** (14.01M, 26.52M) carry about 0.52M more than any known component explains; "
        "their FLOPs match this code without the FFN depth-wise convolution to within 0.2%.",
        "",
        format_reconciliation(rows),
    ]
    return "\n".join(lines)


def _limitations(config: SegRetConfig, info: DatasetInfo | None) -> str:
    global_stages = [str(i + 1) for i, mode in enumerate(config.retention_modes) if mode == "global"]
    items = [
        "The paper notes that SegRet generalises less well to domains far from its training data, such as medical "
        "images (small structures) and remote sensing (large scale variation).",
        f"It predicts only the {config.num_labels} classes it was trained on"
        + (f" ({info.name}'s)" if info else "")
        + "; other objects are mapped to the closest of them. Fine-tune for other label sets.",
    ]
    if global_stages and global_stages[0] in ("1", "2", "3"):
        items.append(
            f"Stage {', '.join(global_stages)} retention is global, so its cost grows with the square of the number "
            "of tokens: at 1024×2048 a single whole-image attention map of stage 3 takes about 2 GB in float32 per "
            "block. Use the sliding-window inference for large images."
        )
    items += [
        "The image processor resizes with Pillow, whose bilinear filter antialiases when downscaling, unlike the "
        "OpenCV resize of MMSegmentation; expect small (usually < 0.1 mIoU) differences from MMSegmentation-run "
        "evaluations.",
        "`trust_remote_code=True` runs this repository's Python files (`configuration_segret.py`, "
        "`modeling_segret.py`, `image_processing_segret.py`, `inference_segret.py`); read them and pin a revision.",
    ]
    if info:
        items.append(info.license_note)
    return "\n".join(f"- {item}" for item in items)


def render_card(
    config: SegRetConfig,
    *,
    repo_id: str | None = None,
    dataset: str | None = None,
    eval_results: Sequence[EvalRecord] = (),
    recipe: Mapping | None = None,
    recipe_name: str | None = None,
    recipe_recorded: bool = True,
    hub_dataset: str | None = None,
    license: str = "apache-2.0",
    decoder_trained: bool = True,
    template_path: str | Path = TEMPLATE_PATH,
) -> str:
    """The model card (README.md) of a SegRet checkpoint.

    Args:
        config: the checkpoint's config.
        repo_id: the Hub repository the snippets load (default `your-org/segret-<variant>-<dataset>`).
        dataset: the training dataset (`ade20k`, `cityscapes`, `coco_stuff` or any other name).
        eval_results: this checkpoint's results; none gives a card without `model-index`.
        recipe / recipe_name / recipe_recorded: the training recipe, its file name, and whether it was recorded
            with the checkpoint (False: the repository's recipe for the paper's setting).
        hub_dataset: the Hub dataset for the metadata (default: the one the dataset preset loads).
        license: the card's license identifier.
        decoder_trained: False for a converted ImageNet backbone with a fresh decoder.
    """
    variant = variant_name(config)
    records = list(eval_results)
    datasets = {dataset_key(r.dataset) for r in records if r.dataset}
    if dataset is None and datasets:
        dataset = datasets.pop()
    elif dataset is not None and datasets and datasets != {dataset_key(dataset)}:
        raise ValueError(f"The evaluation results are for {sorted(datasets)}, not for {dataset!r}.")
    info = dataset_info(dataset, variant)
    if hub_dataset is None and info is not None:
        hub_dataset = info.hub_id
    name = repo_id.split("/")[-1] if repo_id else repository_name(variant, dataset)
    repo_id = repo_id or f"{PLACEHOLDER_ORG}/{name}"
    sections = {
        "metadata": _metadata(name, info, dataset, hub_dataset, records, license).strip(),
        "title": _title(variant, info, dataset),
        "status": _status(records, variant, info, decoder_trained),
        "summary": _summary(config, variant, info, dataset),
        "architecture": _architecture(config, variant),
        "complexity": _complexity(config, info),
        "usage": _usage(repo_id, info),
        "training": _training(recipe, recipe_name, info, variant, recipe_recorded),
        "evaluation": _evaluation(records, variant, info),
        "reconciliation": _reconciliation(variant),
        "limitations": _limitations(config, info),
        "citation": "If you use this model, please cite SegRet and RMT:\n\n" + CITATION,
    }
    template = string.Template(Path(template_path).read_text())
    return template.substitute(sections)


def paper_config(variant: str, dataset: str) -> SegRetConfig:
    """The config of a paper setting: the variant with the dataset's classes (from `training/metainfo.json`)."""
    info = dataset_info(dataset, variant)
    classes = json.loads(METAINFO_PATH.read_text())[info.key]["classes"]
    return segret_variant_config(
        variant,
        id2label=dict(enumerate(classes)),
        label2id={name: index for index, name in enumerate(classes)},
    )


def render_paper_card(variant: str, dataset: str) -> str:
    """The card of one of the paper's twelve settings, with the repository's recipe and no results."""
    recipe_path = paper_recipe_path(variant, dataset)
    recipe = load_recipe(recipe_path) if recipe_path.is_file() else None
    return render_card(
        paper_config(variant, dataset),
        dataset=dataset,
        recipe=recipe,
        recipe_name=recipe_path.name if recipe else None,
        recipe_recorded=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.model_card",
        description="Render the model cards of the paper's twelve settings into model_cards/<name>/README.md.",
    )
    parser.add_argument("--variant", nargs="+", choices=list(SEGRET_VARIANTS), default=list(SEGRET_VARIANTS))
    parser.add_argument("--dataset", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--output-dir", type=Path, default=CARDS_DIR, help="default: model_cards/")
    parser.add_argument("--check", action="store_true", help="fail if a rendered card differs from the file")
    args = parser.parse_args(argv)
    stale = []
    for variant in args.variant:
        for dataset in args.dataset:
            path = args.output_dir / repository_name(variant, dataset) / "README.md"
            card = render_paper_card(variant, dataset)
            if args.check:
                if not path.is_file() or path.read_text() != card:
                    stale.append(str(path))
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(card)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python -m training.model_card):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
