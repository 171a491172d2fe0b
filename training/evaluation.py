"""Evaluate a semantic segmentation model on ADE20K, Cityscapes, COCO-Stuff or a generic dataset.

    python training/evaluation.py --model DIR_OR_HUB_ID --dataset ade20k --mode ss|slide|ms [--dataset_path PATH]
    python -m training.evaluation ...                   # the same
    accelerate launch training/evaluation.py ...        # the same, sharded over processes

Modes (MMSegmentation / Mask2Former protocol): ``ss`` resizes keep-ratio to the benchmark's test scale and runs the
whole image; ``slide`` does the same with overlapping windows; ``ms`` averages softmax over the ratios 0.5..1.75 of
the test scale and their horizontal flips (``--ms_inference slide`` for windows at every scale). Predictions are
always scored at the original label resolution. The test scale and sliding window follow the dataset and the model's
variant (read from its config; ``--variant`` to choose; ``--test_scale``, ``--slide_crop_size`` and ``--slide_stride``
to override): 2048×512, windows 512/341 on ADE20K and COCO-Stuff, 2560×640, windows 640/426 for SegRet-Large on
ADE20K; Cityscapes ``ss`` is the whole 1024×2048 image (Mask2Former's protocol, which the paper follows), ``slide``
1024² windows at stride 768 (SegFormer's). Each process evaluates a disjoint shard and the confusion matrices are
summed, so every image counts exactly once. Writes ``eval_results.json`` and colour overlays of the first
``--num_overlays`` images (image blended with the prediction, beside the image blended with the ground truth).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModelForSemanticSegmentation
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # works without torchvision on 5.4-5.17

import modeling_segret  # noqa: F401  (registers SegRet with the Auto classes)
from modeling_segret import SEGRET_VARIANTS
from modeling_segret.inference_segret import DEFAULT_SCALES, segment
from training import configure_logging
from training.checkpoints import training_folder_problem
from training.data import (
    SegmentationDataset,
    ShardSampler,
    add_dataset_arguments,
    build_dataset,
    collate_eval,
    format_histogram,
    preset_from_args,
    verify_labels,
)
from training.metrics import SegmentationMetric, format_table
from training.presets import IGNORE_INDEX, DataError, DatasetPreset, preset_for_variant
from training.run_folder import decide_on_main_process, process_alive, read_json
from training.transforms import MEAN, STD, EvalTransform, denormalize

MODES = ("ss", "slide", "ms")
logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow the model's own code from the Hub")
    parser.add_argument(
        "--variant",
        default=None,
        choices=list(SEGRET_VARIANTS),
        help="paper variant whose test scale and window to use (default: the model's, from its config)",
    )
    add_dataset_arguments(parser)
    group = parser.add_argument_group("inference")
    group.add_argument("--mode", default="ss", choices=MODES)
    group.add_argument("--ms_inference", default="whole", choices=("whole", "slide"), help="per-scale mode for ms")
    group.add_argument(
        "--test_scale",
        type=int,
        nargs=2,
        metavar=("LONG", "SHORT"),
        default=None,
        help="keep-ratio test resize bounds (default: the dataset's for the model's variant, e.g. 2048 512)",
    )
    group.add_argument(
        "--no_test_resize",
        action="store_true",
        help="no test resize: ss at the original size, ms ratios of the image size as mmseg 1.x's test-time "
        "augmentation (its Resize(scale_factor=ratio) rounding, flips undone before the resize to the label size)",
    )
    # The sliding window of slide mode (default: the dataset's for the model's variant, e.g. 512 and 341 on ADE20K).
    group.add_argument("--slide_crop_size", type=int, nargs=2, metavar=("H", "W"), help="slide mode: window size")
    group.add_argument("--slide_stride", type=int, nargs=2, metavar=("H", "W"), help="slide mode: window step")
    group.add_argument("--crop_batch_size", type=int, default=4, help="sliding-window crops per forward pass")
    group.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES), help="ms ratios")
    group.add_argument("--no_flip", action="store_true", help="ms without horizontal flips")
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--miou_mode",
        default="mmseg",
        choices=("mmseg", "d2"),
        help="exclude classes with zero union (mmseg, evaluate) or without labels (detectron2)",
    )
    group.add_argument("--max_samples", type=int, default=None, help="evaluate only the first N rows")
    group.add_argument("--batch_size", type=int, default=1, help="images per step (equal sizes are stacked)")
    group.add_argument("--dataloader_num_workers", type=int, default=2, help="data-loading worker processes")
    group.add_argument("--output_dir", default="outputs/eval", help="eval_results.json and overlays/ go here")
    group.add_argument(
        "--overwrite_output_dir", action="store_true", help="replace the eval_results.json that --output_dir holds"
    )
    group.add_argument("--num_overlays", type=int, default=8, help="colour overlays of the first N images")
    return parser.parse_args(argv)


def colorize(label_map: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 palette colours; ids outside the palette (ignore) are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)[:256]
    return lut[np.clip(label_map, 0, 255)]


def overlay(
    image: np.ndarray, pred: np.ndarray, label: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> Image.Image:
    """Side by side: the image blended with the prediction, and with the ground truth (ignored pixels unblended)."""

    def blend(label_map: np.ndarray, keep: np.ndarray) -> np.ndarray:
        mixed = (1 - alpha) * image + alpha * colorize(label_map, palette)
        return np.where(keep[..., None], image, mixed).round().astype(np.uint8)

    left = blend(pred, np.zeros(pred.shape, bool))
    right = blend(label, label == IGNORE_INDEX)
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    return Image.fromarray(np.concatenate([left, gap, right], axis=1))


def _normalization(model: str, trust_remote_code: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std in 0..255 units from the model's image processor config, else MMSegmentation's ImageNet values."""
    try:
        processor = AutoImageProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return MEAN, STD
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        return MEAN, STD
    factor = 1 / processor.rescale_factor if getattr(processor, "do_rescale", False) else 1.0
    return tuple(float(m) * factor for m in mean), tuple(float(s) * factor for s in std)


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None  # strict JSON has no NaN: a class that never occurred, a mean over no class
    return value


RESULTS_FILE = "eval_results.json"


class UsageError(ValueError):
    """`--model` or `--output_dir` cannot work (checked before any evaluation work); the message says why and what to
    do."""


def claim_output_dir(output_dir: str | Path, overwrite: bool) -> Path | None:
    """Checks that `output_dir` can take `eval_results.json` and claims it, before any evaluation work.

    Without `overwrite`, a folder that holds results (or the claim of an evaluation under way) is refused, and the
    claim is an `eval_results.json` created exclusively, so of two evaluations started into one folder the second
    is refused at once. Returns the claimed file (to be replaced by the results, or removed on failure), or None
    with `overwrite`.
    """
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output_dir {output} is a file, not a folder: choose a folder for the results")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--output_dir {output} cannot be created ({err.strerror or err})") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise UsageError(f"--output_dir {output} is not writable: choose a folder you can write to")
    results = output / RESULTS_FILE
    if overwrite:
        return None
    claim = {"in_progress": {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%c")}}
    holder = read_json(results).get("in_progress")
    if isinstance(holder, dict) and holder.get("host") == socket.gethostname() and not process_alive(holder.get("pid")):
        logger.warning(f"Taking over {results}: the evaluation that claimed it ({holder}) is no longer running")
        results.unlink(missing_ok=True)
    try:
        descriptor = os.open(results, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = read_json(results).get("in_progress")
        what = (
            f"is claimed by an evaluation under way (or killed): {holder}"
            if holder
            else "already holds results of an evaluation"
        )
        raise UsageError(
            f"{results} {what}. Choose another --output_dir, or pass --overwrite_output_dir to replace it."
        ) from None
    except OSError as err:
        raise UsageError(f"--output_dir {output}: cannot write {RESULTS_FILE} ({err.strerror or err})") from None
    with os.fdopen(descriptor, "w") as handle:
        json.dump(claim, handle)
    return results


def write_results(output_dir: str | Path, results: dict[str, Any]) -> Path:
    """Writes `eval_results.json` atomically (a temporary file renamed into place), as strict JSON."""
    path = Path(output_dir) / RESULTS_FILE
    temporary = path.with_name(f".{RESULTS_FILE}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    os.replace(temporary, path)
    return path


def absent_classes(scores: dict[str, Any], class_names: Sequence[str]) -> list[str]:
    """The classes without any labelled pixel in the evaluated set (their accuracy is undefined, NaN)."""
    return [name for name, acc in zip(class_names, scores["per_category_accuracy"], strict=True) if math.isnan(acc)]


def warn_absent_classes(scores: dict[str, Any], class_names: Sequence[str]) -> None:
    """A warning naming the classes no evaluated pixel is labelled with: they are left out of the means (their
    entries are null in eval_results.json); with no labelled pixel at all the means are null too."""
    absent = absent_classes(scores, class_names)
    if len(absent) == len(class_names):
        logger.warning(
            "No evaluated pixel is labelled (every label is the ignore index): mIoU, mAcc and aAcc are undefined "
            "(null in eval_results.json). Check the validation labels (training/data.py --verify_labels)."
        )
    elif absent:
        shown = ", ".join(absent[:20]) + (f" and {len(absent) - 20} more" if len(absent) > 20 else "")
        logger.warning(
            f"{len(absent)} of {len(class_names)} classes have no labelled pixel in the evaluated images ({shown}): "
            "their accuracy is null and the means are over the other classes (an IoU is null too unless the class "
            "was predicted, then 0)."
        )


def model_variant(config: Any) -> str | None:
    """The paper variant (``tiny`` ... ``large``) of a SegRet ``config``, or None for other models.

    Matched on the backbone's widths and depths alone, so a fine-tuned or re-exported checkpoint (other classes,
    retention kernels or decoder options) keeps its variant's test protocol.
    """
    if getattr(config, "model_type", None) != "segret":
        return None
    for variant, values in SEGRET_VARIANTS.items():
        if all(list(getattr(config, key, ())) == list(values[key]) for key in ("embed_dims", "depths")):
            return variant
    return None


def inference_settings(
    preset: DatasetPreset,
    mode: str = "ss",
    test_scale: Sequence[int] | None = None,
    no_test_resize: bool = False,
    slide_crop_size: Sequence[int] | None = None,
    slide_stride: Sequence[int] | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    ms_inference: str = "whole",
) -> dict[str, Any]:
    """Keyword arguments of :func:`~modeling_segret.inference_segret.segment` for ``mode`` ss, slide or ms.

    Unset sizes come from the preset (benchmark test scale, sliding window and its stride; see
    :func:`~training.presets.preset_for_variant` for the variant's). The returned ``crop_size`` and ``stride`` are
    ``segment``'s names for ``slide_crop_size`` and ``slide_stride``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    settings: dict[str, Any] = {"test_scale": None if no_test_resize else tuple(test_scale or preset.test_scale)}
    if mode == "ms":
        settings.update(mode=ms_inference, scales=tuple(scales), flip=flip)
    else:
        settings.update(mode="whole" if mode == "ss" else "slide", scales=(1.0,), flip=False)
    if settings["mode"] == "slide":
        settings.update(
            crop_size=tuple(slide_crop_size or preset.slide_crop), stride=tuple(slide_stride or preset.slide_stride)
        )
    return settings


def _predict_batch(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    labels: list[torch.Tensor],
    settings: dict[str, Any],
    device: torch.device,
    crop_batch_size: int,
    autocast_dtype: torch.dtype | None,
) -> list[torch.Tensor]:
    # Equally sized images go through one forward pass; otherwise one image at a time.
    if all(x.shape == images[0].shape for x in images):
        groups = [(torch.stack(images), labels[0].shape)]
    else:
        groups = [(x[None], y.shape) for x, y in zip(images, labels, strict=True)]
    preds = []
    for pixel_values, label_size in groups:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            pred = segment(
                model, pixel_values.to(device), output_size=label_size, batch_size=crop_batch_size, **settings
            )
        preds.extend(pred)
    return preds


def evaluate_segmentation(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    preset: DatasetPreset | None = None,
    mode: str = "ss",
    device: torch.device | str | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    show_progress: bool = True,
    miou_mode: str = "mmseg",
    crop_batch_size: int = 4,
    autocast_dtype: torch.dtype | None = None,
    overlay_dir: str | Path | None = None,
    num_overlays: int = 0,
    **settings: Any,
) -> dict[str, Any]:
    """mIoU of ``model`` on an evaluation ``dataset`` (original-size labels), exact under ``torch.distributed``.

    Each process takes the rows ``rank, rank + world_size, ...`` and the confusion matrices are summed, so every row
    counts once; call it on every process. ``settings`` override :func:`inference_settings` (``test_scale``,
    ``slide_crop_size``, ``slide_stride``, ``scales``, ``flip``, ``ms_inference``, ``no_test_resize``). Overlays of
    the rows below ``num_overlays`` go to ``overlay_dir``. Returns :meth:`SegmentationMetric.compute` plus
    ``inference``.
    """
    preset = preset or preset_for_variant(dataset.preset, model_variant(getattr(model, "config", None)))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    inference = inference_settings(preset, mode, **settings)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world), num_workers=num_workers,
        collate_fn=collate_eval,
        generator=torch.Generator(),  # no draw from the global RNG: evaluating mid-training keeps resumes exact
    )  # fmt: skip
    mean, std = getattr(dataset.transform, "mean", MEAN), getattr(dataset.transform, "std", STD)
    metric = SegmentationMetric(preset.num_labels, IGNORE_INDEX)
    was_training = model.training
    model.eval()
    progress = tqdm(total=len(dataset), desc=f"{preset.name} {mode}", disable=not show_progress)
    for batch in loader:
        images, labels, indices = batch["pixel_values"], batch["labels"], batch["index"].tolist()
        preds = _predict_batch(model, images, labels, inference, device, crop_batch_size, autocast_dtype)
        for index, image, pred, label in zip(indices, images, preds, labels, strict=True):
            metric.update(pred, label.to(pred.device))
            if overlay_dir is not None and index < num_overlays:
                Path(overlay_dir).mkdir(parents=True, exist_ok=True)
                picture = overlay(denormalize(image, mean, std), pred.cpu().numpy(), label.numpy(), preset.palette)
                picture.save(Path(overlay_dir) / f"{index:05d}.png")
        # Counts the images of all processes (the shards advance at about the same pace).
        progress.update(min(len(indices) * world, progress.total - progress.n))
    progress.close()
    model.train(was_training)
    scores = metric.compute(mode=miou_mode)  # all-reduces across processes
    if scores["num_samples"] != len(dataset):
        raise RuntimeError(f"evaluated {scores['num_samples']} images, expected {len(dataset)}")
    scores["inference"] = {k: list(v) if isinstance(v, tuple) else v for k, v in inference.items()}
    return scores


@torch.no_grad()
def save_overlays(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    preset: DatasetPreset | None,
    output_dir: str | Path,
    num_overlays: int,
    mode: str = "ss",
    device: torch.device | str | None = None,
    **settings: Any,
) -> list[Path]:
    """Overlays (image + prediction beside image + ground truth) of the first ``num_overlays`` rows."""
    preset = preset or preset_for_variant(dataset.preset, model_variant(getattr(model, "config", None)))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    inference = inference_settings(preset, mode, **settings)
    mean, std = getattr(dataset.transform, "mean", MEAN), getattr(dataset.transform, "std", STD)
    was_training = model.training
    model.eval()
    paths = []
    for index in range(min(num_overlays, len(dataset))):
        item = dataset[index]
        pred = _predict_batch(model, [item["pixel_values"]], [item["labels"]], inference, device, 4, None)[0]
        picture = overlay(denormalize(item["pixel_values"], mean, std), pred.cpu().numpy(), item["labels"].numpy(),
                          preset.palette)  # fmt: skip
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        paths.append(Path(output_dir) / f"{index:05d}.png")
        picture.save(paths[-1])
    model.train(was_training)
    return paths


def summarize(scores: dict[str, Any], preset: DatasetPreset, split: str, mode: str, **context: Any) -> dict[str, Any]:
    """The `eval_results.json` record: `context` (model, source, ...), settings, summary metrics, per-class rows."""
    inference = dict(scores["inference"])
    test_scale = inference.pop("test_scale")
    return {
        **context,
        "dataset": preset.name,
        "split": split,
        "mode": mode,
        "inference": inference,
        "test_scale": test_scale,
        "num_samples": scores["num_samples"],
        "mIoU": _json_ready(round(100 * scores["mean_iou"], 2)),
        "mAcc": _json_ready(round(100 * scores["mean_accuracy"], 2)),
        "aAcc": _json_ready(round(100 * scores["overall_accuracy"], 2)),
        "mean_iou": _json_ready(scores["mean_iou"]),
        "mean_accuracy": _json_ready(scores["mean_accuracy"]),
        "overall_accuracy": _json_ready(scores["overall_accuracy"]),
        "per_class": [
            {"id": i, "name": name, "iou": _json_ready(float(iou)), "accuracy": _json_ready(float(acc))}
            for i, (name, iou, acc) in enumerate(
                zip(preset.class_names, scores["per_category_iou"], scores["per_category_accuracy"], strict=True)
            )
        ],
    }


def run_evaluation(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation described by ``args``; returns the results written to ``eval_results.json``."""
    # accelerate treats a multi-process launch on a machine without GPUs as distributed only with cpu=True;
    # otherwise every process would evaluate the whole set.
    accelerator = Accelerator(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    if dist.is_initialized() and dist.get_world_size() != accelerator.num_processes:
        raise RuntimeError(f"{dist.get_world_size()} processes, but accelerate sees {accelerator.num_processes}")
    # Mistakes that would otherwise surface after the whole evaluation, or as transformers' "Unrecognized model".
    if (problem := training_folder_problem(args.model)) is not None:
        raise UsageError(problem)
    claim = decide_on_main_process(accelerator, claim_output_dir, args.output_dir, args.overwrite_output_dir)
    try:
        return _evaluate_into(args, accelerator)
    except BaseException:
        if claim is not None and accelerator.is_main_process:  # the claim holds no results: give the folder back
            claim.unlink(missing_ok=True)
        raise


def _evaluate_into(args: argparse.Namespace, accelerator: Accelerator) -> dict[str, Any]:
    preset = preset_from_args(args)
    mean, std = _normalization(args.model, args.trust_remote_code)
    dataset = build_dataset(
        preset, args.dataset_path, args.split, transform=EvalTransform(mean, std), revision=args.dataset_revision,
        data_dir=args.dataset_data_dir, max_samples=args.max_samples,
    )  # fmt: skip
    if args.verify_labels and accelerator.is_main_process:
        print(format_histogram(verify_labels(dataset, args.verify_labels), preset))

    model = AutoModelForSemanticSegmentation.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    if model.config.num_labels != preset.num_labels:
        raise ValueError(
            f"the model predicts {model.config.num_labels} classes but the {preset.name} preset has "
            f"{preset.num_labels}; pick the matching --dataset (or --num_labels for the generic preset)"
        )
    variant = args.variant or model_variant(model.config)
    preset = preset_for_variant(preset, variant)  # e.g. SegRet-Large tests ADE20K at 2560×640
    model.to(accelerator.device).eval()
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
    start = time.perf_counter()
    scores = evaluate_segmentation(
        model, dataset, preset, args.mode, device=accelerator.device, batch_size=args.batch_size,
        num_workers=args.dataloader_num_workers, show_progress=accelerator.is_main_process, miou_mode=args.miou_mode,
        crop_batch_size=args.crop_batch_size, autocast_dtype=autocast_dtype,
        overlay_dir=Path(args.output_dir) / "overlays", num_overlays=args.num_overlays,
        test_scale=args.test_scale, no_test_resize=args.no_test_resize, slide_crop_size=args.slide_crop_size,
        slide_stride=args.slide_stride, scales=args.scales, flip=not args.no_flip, ms_inference=args.ms_inference,
    )  # fmt: skip
    results = summarize(
        scores, preset, dataset.split, args.mode,
        model=args.model, variant=variant, source=args.dataset_path or preset.hub_id, miou_mode=args.miou_mode,
        num_processes=accelerator.num_processes,
    )  # fmt: skip
    results["seconds"] = round(time.perf_counter() - start, 2)
    if accelerator.is_main_process:
        print(format_table(scores, preset.class_names))
        warn_absent_classes(scores, preset.class_names)
        print(f"wrote {write_results(args.output_dir, results)}")
    accelerator.wait_for_everyone()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 on a data error, with the row named)."""
    configure_logging()
    args = parse_args(argv)
    try:
        run_evaluation(args)
    except (DataError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
