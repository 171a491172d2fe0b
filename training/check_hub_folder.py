# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Load a Hub-ready SegRet folder as remote code, where the `modeling_segret` package cannot be imported.

    python training/check_hub_folder.py FOLDER [--reference reference.pt] [--image image.png] [--tolerance 1e-4]

A standalone script: it needs torch, transformers, numpy and Pillow, never this repository, and it blocks the
`modeling_segret` package, so the check means the same on a machine where the package is installed. It loads the
folder through every Auto class (`trust_remote_code=True`), runs the shipped sliding-window inference and the
`image-segmentation` pipeline on an image (default: a generated one), and checks that every class is SegRet's and
comes from the folder's own code, and that the pipeline gives class masks at the image's size. With `--reference`
(a `torch.save`d dict of `pixel_values`, `logits`, `last_hidden_state` and `feature_maps`, which
`training/publish.py` writes from the source model) the outputs must also equal those, within `--tolerance` times
the largest logit.

It prints one line, `SEGRET-VALIDATION <json report>`, and exits with status 1 when a check fails (the report's
`problems`) or the folder does not load (a traceback, no report). `python -m training.publish` runs it in a fresh
process on every folder it assembles.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPORT_PREFIX = "SEGRET-VALIDATION "
EXPECTED_CLASSES = {
    "AutoConfig": "SegRetConfig",
    "AutoModel": "SegRetModel",
    "AutoBackbone": "SegRetBackbone",
    "AutoModelForSemanticSegmentation": "SegRetForSemanticSegmentation",
    "AutoImageProcessor": "SegRetImageProcessor",
}


def sample_image(size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A deterministic RGB test image (width, height): smooth colour gradients with a few bright blocks."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (230, 40, 40)
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def _difference(output: torch.Tensor, expected: torch.Tensor) -> float | str:
    if tuple(output.shape) != tuple(expected.shape):
        return f"shape {tuple(output.shape)} != {tuple(expected.shape)}"
    return (output.float() - expected.float()).abs().max().item()


def check_remote_code(
    folder: str, reference: dict | None = None, image: Image.Image | None = None, tolerance: float = 1e-4
) -> dict[str, Any]:
    """Loads `folder` through every Auto class and the pipeline; the report lists what ran and its `problems`."""
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForSemanticSegmentation, pipeline
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    from transformers.models.auto.image_processing_auto import AutoImageProcessor  # no torchvision on 5.4-5.17

    if reference is None:
        reference = {"pixel_values": torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))}
    image = image if image is not None else sample_image()
    report: dict[str, Any] = {"classes": {}, "modules": {}, "differences": {}, "notes": []}

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    report["classes"]["AutoConfig"] = type(config).__name__
    report["modules"]["AutoConfig"] = type(config).__module__
    auto_classes = {
        "AutoModel": (AutoModel, "last_hidden_state"),
        "AutoBackbone": (AutoBackbone, "feature_maps"),
        "AutoModelForSemanticSegmentation": (AutoModelForSemanticSegmentation, "logits"),
    }
    for name, (auto_class, output_name) in auto_classes.items():
        try:
            model = auto_class.from_pretrained(folder, trust_remote_code=True)
        except HFValidationError:
            # transformers 5.23: AutoBackbone.from_pretrained asks the Hub whether a local folder is a repo id and
            # fails. Load the class its auto_map names, as AutoBackbone does for a Hub repository.
            model = get_class_from_dynamic_module(config.auto_map[name], folder).from_pretrained(folder)
            report["notes"].append(
                f"{name}: loaded the auto_map class directly ({name}.from_pretrained rejects local folders in this "
                "transformers version)"
            )
        model.eval()
        report["classes"][name] = type(model).__name__
        report["modules"][name] = type(model).__module__
        pixel_values = reference["pixel_values"].to(model.dtype)
        with torch.no_grad():
            output = getattr(model(pixel_values), output_name)
        if output_name in reference and output_name == "feature_maps":
            if len(output) != len(reference["feature_maps"]):
                report["differences"][name] = f"{len(output)} feature maps"
            else:
                values = [_difference(a, b) for a, b in zip(output, reference["feature_maps"])]
                texts = [value for value in values if isinstance(value, str)]
                report["differences"][name] = texts[0] if texts else max(values)
        elif output_name in reference:
            report["differences"][name] = _difference(output, reference[output_name])
        if name == "AutoModelForSemanticSegmentation":
            segment = get_class_from_dynamic_module("inference_segret.segment", folder)
            report["modules"]["inference_segret"] = segment.__module__
            height, width = pixel_values.shape[-2:]
            crop = (max(height // 2, 1), max(width // 2, 1))
            report["sliding_window_shape"] = list(segment(model, pixel_values, mode="slide", crop_size=crop,
                                                          stride=crop).shape)  # fmt: skip

    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    report["classes"]["AutoImageProcessor"] = type(processor).__name__
    report["modules"]["AutoImageProcessor"] = type(processor).__module__
    segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True)
    report["image_size"] = list(image.size)
    report["segments"] = [(s["label"], list(s["mask"].size), s["mask"].mode) for s in segmenter(image)]

    problems = []
    for auto_name, class_name in EXPECTED_CLASSES.items():
        if report["classes"].get(auto_name) != class_name:
            problems.append(f"{auto_name} gave {report['classes'].get(auto_name)}, expected {class_name}")
    for auto_name, module in report["modules"].items():
        if not module.startswith("transformers_modules."):
            problems.append(f"{auto_name} ran {module}, not the folder's code")
    if "logits" in reference:
        scale = max(reference["logits"].abs().max().item(), 1.0)
        for auto_name, value in report["differences"].items():
            if isinstance(value, str) or value > tolerance * scale:
                problems.append(f"{auto_name} outputs differ from the source model's: {value}")
    if report.get("sliding_window_shape") != [1, *reference["pixel_values"].shape[-2:]]:
        problems.append(f"inference_segret.segment returned shape {report.get('sliding_window_shape')}")
    labels = set(config.id2label.values())
    if not report["segments"]:
        problems.append("the image-segmentation pipeline returned no segment")
    for label, size, mode in report["segments"]:
        if label not in labels or size != report["image_size"] or mode != "L":
            problems.append(f"pipeline segment ({label!r}, {size}, {mode}) is not a class mask at the image size")
    report["problems"] = problems
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the Hub-ready folder (config.json, weights, code files, processor)")
    parser.add_argument("--reference", type=Path, help="the source model's outputs (torch.save'd dict of tensors)")
    parser.add_argument("--image", type=Path, help="image for the pipeline (default: a generated 96×72 image)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="relative to the largest logit")
    args = parser.parse_args(argv)

    # Only the folder's own code may run: an absolute `import modeling_segret` in it must fail, not find the package.
    sys.modules["modeling_segret"] = None
    try:
        import modeling_segret  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("modeling_segret is importable: the check would prove nothing")

    reference = torch.load(args.reference, weights_only=True) if args.reference else None
    image = Image.open(args.image) if args.image else None
    report = check_remote_code(args.folder, reference, image, args.tolerance)
    print(REPORT_PREFIX + json.dumps(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
