# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Model cards for SegRet checkpoints: the values that fill the Jinja2 template `model_cards/template.md`.

The card's words live in the template; this module computes what goes into them from:

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

Without results the card has no `model-index` and says plainly that its numbers are the paper's. The card names one
Hub dataset, in `datasets` and in the `model-index` alike: the one the dataset's preset (`training/presets.py`)
loads, unless the checkpoint was trained on another.

`python -m training.model_card` rewrites the twelve cards of the paper's settings (four variants × ADE20K,
Cityscapes, COCO-Stuff) in `model_cards/segret-<variant>-<dataset>/README.md`; `--check` only compares.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCardData

from modeling_segret import REMOTE_CODE_FILES, SEGRET_VARIANTS, SegRetConfig, segret_variant_config
from modeling_segret.complexity import (
    MMSEG_UNUSED_CONV_SEG_CHANNELS,
    PAPER_FLOPS_SIZE,
    PAPER_GFLOPS,
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
# Organisation shown in the snippets of the cards rendered here; `training.publish --repo_id` sets the real one.
PLACEHOLDER_ORG = "your-org"
TAGS = ("segret", "rmt", "retnet", "semantic-segmentation", "vision", "image-segmentation")
# Classes of the reconciliation table: ADE20K's 150, as in docs/architecture.md §5.
RECONCILIATION_NUM_LABELS = 150


@dataclass(frozen=True)
class DatasetInfo:
    """A benchmark of the paper: names, Hub dataset and the paper's setting (docs/architecture.md §8,
    docs/protocol.md)."""

    key: str  # preset name in training/presets.py
    slug: str  # in repository names
    name: str
    hub_id: str  # the dataset `training/data.py` loads by default; the card's metadata names it
    eval_split: str
    batch_size: int
    iterations: int
    crop_size: tuple[int, int]
    test_scale: tuple[int, int]  # (long, short) keep-ratio bound
    slide_crop: int
    slide_stride: int
    reduce_labels: bool


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


# The paper's training settings (docs/architecture.md §8); the rest comes from the presets.
DATASETS: dict[str, DatasetInfo] = {
    "ade20k": _paper_dataset(
        "ade20k", slug="ade20k", name="ADE20K", batch_size=16, iterations=160_000, reduce_labels=True
    ),
    "cityscapes": _paper_dataset(
        "cityscapes", slug="cityscapes", name="Cityscapes", batch_size=8, iterations=160_000, reduce_labels=False
    ),
    "coco_stuff": _paper_dataset(
        "coco_stuff", slug="coco-stuff", name="COCO-Stuff-164k", batch_size=16, iterations=80_000, reduce_labels=False
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


def _size(size: Sequence[int]) -> str:
    return f"{size[0]}×{size[1]}"


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


def _recipe_facts(recipe: Mapping, info: DatasetInfo | None, variant: str | None) -> dict[str, Any]:
    """The recipe table's values (None: not in the recipe), from `training/train.py`'s or a recipe file's fields."""
    max_steps = recipe.get("max_steps")
    loss_over_all_pixels = recipe.get("loss_average_over_all_pixels")
    return {
        "variant": recipe.get("variant", variant),
        "dataset": recipe.get("dataset"),
        "backbone": recipe.get("backbone_checkpoint") or recipe.get("model_name_or_path"),
        "iterations": max_steps if isinstance(max_steps, int) else None,
        "total_batch": recipe.get("total_train_batch_size") or recipe.get("global_batch_size"),
        "per_device_batch": recipe.get("per_device_train_batch_size"),
        "accumulation": recipe.get("gradient_accumulation_steps", 1),
        "crop": recipe.get("crop_size") or (info.crop_size if info else None),
        # training/train.py always uses AdamW and does not record it.
        "optimizer": recipe.get("optimizer") or ("AdamW" if "learning_rate" in recipe else None),
        "learning_rate": recipe.get("learning_rate"),
        "weight_decay": recipe.get("weight_decay"),
        "warmup_steps": recipe.get("warmup_steps"),
        "poly_power": recipe.get("poly_power"),
        "loss_over_all_pixels": None if loss_over_all_pixels is None else bool(loss_over_all_pixels),
        "mixed_precision": recipe.get("mixed_precision"),
        "seed": recipe.get("seed"),
    }


# ------------------------------------------------------------------------------------------ complexity values
def _flops(report: ComplexityReport) -> dict[str, Any]:
    """One row of GFLOPs: the paper's convention, full, and the two parts the convention leaves out."""
    total = report.flops["total"]
    return {
        "input_size": report.input_size,
        "paper": total.paper / 1e9,
        "full": total.full / 1e9,
        "attention": total.attention / 1e9,
        "batch_norm": total.batch_norm / 1e9,
    }


@functools.lru_cache(maxsize=1)
def _reconciliation() -> dict[str, Any]:
    """The four variants at the paper's FLOP size, as released and without the FFN depth-wise convolution, with
    the paper's figures and the parameter reconciliation of `modeling_segret.complexity` (docs/architecture.md §5)."""
    num_labels = RECONCILIATION_NUM_LABELS
    rows = parameter_reconciliation(num_labels)
    variants = []
    for name, row in zip(SEGRET_VARIANTS, rows):
        released = measure_variant(name, PAPER_FLOPS_SIZE, num_labels)
        older = measure_variant(name, PAPER_FLOPS_SIZE, num_labels, ffn_depthwise_conv=False)
        variants.append(
            {
                "name": name,
                "parameters": released.parameters["total"],
                "parameters_without_dwconv": older.parameters["total"],
                "paper_parameters_m": row["paper_total_m"],
                "paper_decoder_m": row["paper_decoder_m"],
                "gflops": released.flops["total"].paper / 1e9,
                "gflops_without_dwconv": older.flops["total"].paper / 1e9,
                "paper_gflops": PAPER_GFLOPS[name],
                "full_gflops": released.flops["total"].full / 1e9,
            }
        )
    tiny = rows[0]
    return {
        "num_labels": num_labels,
        "conv_seg_channels": MMSEG_UNUSED_CONV_SEG_CHANNELS,
        "variants": variants,
        # Tiny's decoder as mmcv prints it: without the fusion's SyncBatchNorm, with the unused conv_seg.
        "tiny": {**tiny, "decoder_batch_norm": tiny["decoder"] + tiny["unused_conv_seg"] - tiny["mmcv_decoder"]},
        "table": format_reconciliation(rows),
    }


# ------------------------------------------------------------------------------------------------- the card
def card_data(
    name: str,
    info: DatasetInfo | None,
    dataset: str | None,
    records: Sequence[EvalRecord] = (),
    *,
    hub_dataset: str | None = None,
    license: str = "apache-2.0",
) -> ModelCardData:
    """The card's metadata. One Hub dataset, `hub_dataset` (default: the preset's), is named in `datasets` and as
    the `model-index` dataset type; a dataset without one is named by `dataset`."""
    if hub_dataset is None and info is not None:
        hub_dataset = info.hub_id
    tags = list(TAGS)
    if info is not None:
        tags.append(info.slug)
    elif dataset:
        tags.append(dataset.replace("_", "-"))
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Semantic Segmentation",
            dataset_type=hub_dataset or dataset or "custom",
            dataset_name=info.name if info else (dataset or "custom"),
            dataset_split=record.split or (info.eval_split if info else None),
            metric_type="mean_iou",
            metric_value=record.mean_iou,
            metric_name=record.metric_name,
        )
        for record in records
    ]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license,
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=["mean_iou"],
        tags=tags,
        model_name=name,
        eval_results=eval_results or None,
    )


def _paper_table(variant: str | None, info: DatasetInfo | None) -> list[dict[str, Any]]:
    """The paper's mIoU for `variant` on its three benchmarks, this card's marked; none outside the paper's."""
    if not (variant and info):
        return []
    rows = []
    for key, other in DATASETS.items():
        single_scale, multi_scale = PAPER_RESULTS[(variant, key)]
        rows.append(
            {"name": other.name, "single_scale": single_scale, "multi_scale": multi_scale, "current": key == info.key}
        )
    return rows


def _stages(values: Sequence) -> str:
    return " / ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def _fixed(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


# Lines holding only a {% tag %} vanish; a misspelt or missing value is an error, never an empty string.
_TEMPLATES = jinja2.Environment(
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
)
_TEMPLATES.filters.update(number="{:,}".format, size=_size, fixed=_fixed, stages=_stages)


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
    """The model card (README.md) of a SegRet checkpoint: `template_path` filled with this checkpoint's values.

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
    name = repo_id.split("/")[-1] if repo_id else repository_name(variant, dataset)
    paper_sizes = [PAPER_FLOPS_SIZE] + ([info.crop_size] if info and info.crop_size != PAPER_FLOPS_SIZE else [])
    reports = [measure(config, size) for size in paper_sizes]
    global_stages = [index + 1 for index, mode in enumerate(config.retention_modes) if mode == "global"]
    values = {
        "card_data": card_data(name, info, dataset, records, hub_dataset=hub_dataset, license=license).to_yaml(),
        "config": config,
        "variant": variant,
        "rmt": RMT_NAMES.get(variant),
        "dataset": info,
        "dataset_name": info.name if info else dataset,
        "repo_id": repo_id or f"{PLACEHOLDER_ORG}/{name}",
        "decoder_trained": decoder_trained,
        "records": records,
        "paper": PAPER_RESULTS.get((variant, info.key)) if variant and info else None,
        "paper_table": _paper_table(variant, info),
        "parameters": reports[0].parameters,
        "flops": [_flops(report) for report in reports],
        "paper_flops_size": PAPER_FLOPS_SIZE,
        "usage": {
            "test_scale": info.test_scale if info else (2048, 512),
            "slide_crop": info.slide_crop if info else 512,
            "slide_stride": info.slide_stride if info else 341,
        },
        "recipe": _recipe_facts(recipe, info, variant) if recipe else None,
        "recipe_yaml": yaml.safe_dump(dict(recipe), sort_keys=False).strip() if recipe else None,
        "recipe_name": recipe_name,
        "recipe_recorded": recipe_recorded,
        "reconciliation": _reconciliation(),
        "layer_scale_stages": [index + 1 for index, on in enumerate(config.use_layer_scale) if on],
        "first_labels": [config.id2label[index] for index in range(min(config.num_labels, 6))],
        "remote_code_files": REMOTE_CODE_FILES,
        # Global retention before the last stage is quadratic in a large image's tokens.
        "quadratic_stages": global_stages if global_stages and global_stages[0] <= 3 else [],
    }
    return _TEMPLATES.from_string(Path(template_path).read_text()).render(values)


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
    parser.add_argument("--output_dir", type=Path, default=CARDS_DIR, help="default: model_cards/")
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
