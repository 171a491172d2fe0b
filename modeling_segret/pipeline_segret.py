# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""transformers' image-segmentation pipeline for SegRet: images read like the image processor reads them, and batches
of any mix of sizes.

transformers' own `ImageSegmentationPipeline` differs in two ways that matter for SegRet:
- it reads every image with `load_image`, which converts it to 8-bit RGB first, so a 16-bit PNG is clipped at 255
  before the image processor (which scales 16-bit samples by 1/257, as training does) could see it;
- it concatenates the pixel values of a batch, so `pipeline(images, batch_size=n)` fails as soon as two images resize
  to different sizes, which SegRet's keep-ratio resizing makes the rule.
This subclass hands the image to the processor as stored (the processor applies the EXIF orientation and the 16-bit
scale) and runs a batch as one model call per resized size, so a batched call equals one-by-one calls. Its output is
that of transformers' class: one mask per class present.

Hub repositories name this class in `config.json`'s `custom_pipelines`, so `pipeline("image-segmentation", model=repo,
trust_remote_code=True)` builds it, whether or not this package is imported (docs/pipeline.md). For a model object,
pass it as `pipeline("image-segmentation", model=model, pipeline_class=SegRetImageSegmentationPipeline)`. This file is
copied flat into Hub repositories as remote code: it imports only the standard library, NumPy, torch, Pillow and
transformers.
"""

import base64
import binascii
import io
import os
import urllib.request
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.pipelines.image_segmentation import ImageSegmentationPipeline


def open_image(image: "str | Image.Image", timeout: float | None = None) -> Image.Image:
    """A PIL image from a PIL image, a local path, an http(s) URL or a base64 string, with its stored mode and EXIF
    tags (unlike transformers' `load_image`, which converts to 8-bit RGB)."""
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, str):
        raise TypeError(
            f"The image-segmentation pipeline takes a PIL image, a path, a URL or a base64 string, got "
            f"{type(image).__name__}. Pass arrays and tensors to the image processor and the model instead."
        )
    if image.startswith(("http://", "https://")):
        with urllib.request.urlopen(image, timeout=timeout) as response:
            return Image.open(io.BytesIO(response.read()))
    if os.path.isfile(image):
        return Image.open(image)
    encoded = image.split(",", 1)[1] if image.startswith("data:image/") else image
    try:
        return Image.open(io.BytesIO(base64.b64decode(encoded, validate=True)))
    except (binascii.Error, ValueError, OSError) as error:
        raise ValueError(
            f"Image {image[:80]!r} is neither an existing file, an http(s) URL nor a base64-encoded image."
        ) from error


class SegRetImageSegmentationPipeline(ImageSegmentationPipeline):
    """`ImageSegmentationPipeline` that reads images as SegRet's image processor does and batches any mix of sizes.

    A batch runs as one model call per distinct resized size, so each image's logits are those of the image alone up
    to the rounding of batched matrix products; the masks match one-by-one calls.
    """

    # The image processor is the one component. transformers would otherwise also try to load a tokenizer and a
    # video processor from the folder; its video-processor probe (5.24, not 4.57 or 5.1) takes the processor's
    # `auto_map` for a video processor's and asks on standard input whether to run it when `trust_remote_code` is
    # unset.
    _load_tokenizer = False
    _load_video_processor = False

    def __call__(self, inputs: Any = None, **kwargs: Any) -> Any:
        if isinstance(inputs, (list, tuple)) and len(inputs) == 0:
            return []  # a batch of 0 images (transformers' own call would look at its first image)
        return super().__call__(inputs, **kwargs)

    def preprocess(self, image: Any, subtask: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        displayed = open_image(image, timeout=timeout)
        # The segmentation is returned at the displayed size: the stored size turned by the EXIF orientation tag.
        if displayed.getexif().get(0x0112, 1) not in (None, 1):  # 0x0112: Orientation; 1 = upright
            displayed = ImageOps.exif_transpose(displayed)
        pixel_values = self.image_processor(images=[displayed], do_pad=False, return_tensors="pt")["pixel_values"]
        # A list, not a tensor: transformers' batching concatenates tensors (one size only) but gathers lists.
        return {
            "pixel_values": [pixel_values[0].to(self.model.dtype)],
            "target_size": [(displayed.height, displayed.width)],
        }

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        # One image: [(3, h, w)]; a batch: one such list per image.
        entries = model_inputs["pixel_values"]
        images = [image for entry in entries for image in (entry if isinstance(entry, list) else [entry])]
        logits: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(index)
        for indices in by_size.values():
            group_logits = self.model(pixel_values=torch.stack([images[index] for index in indices])).logits
            for index, image_logits in zip(indices, group_logits):
                logits[index] = image_logits
        # A list of (num_labels, h, w): the pipeline splits it per image, each image's logits keeping their size.
        return {"logits": logits, "target_size": model_inputs["target_size"]}

    def postprocess(
        self, model_outputs: dict[str, Any], subtask: str | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        logits = model_outputs["logits"]
        if isinstance(logits, list):  # unbatched call: the one image's (num_labels, h, w) in a list
            logits = torch.stack(logits)
        outputs = SemanticSegmenterOutput(logits=logits)
        if subtask not in (None, "semantic"):  # transformers' class explains what it does not support
            outputs["target_size"] = model_outputs["target_size"]
            return super().postprocess(outputs, subtask=subtask, **kwargs)
        target_sizes = model_outputs["target_size"]
        class_map = self.image_processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)[0]
        # One mask per class present, as transformers' class returns them (ascending class index, score None). The
        # class map is compared in its smallest integer type: several times faster than int64 comparisons for a
        # large photo with many classes present. Each mask is a 2-D uint8 array, which Pillow opens as mode "L" (its
        # `mode=` argument is deprecated since Pillow 11.3).
        num_labels = logits.shape[1]
        class_map = class_map.numpy().astype(np.uint8 if num_labels <= 256 else np.int32)
        present = np.flatnonzero(np.bincount(class_map.ravel(), minlength=num_labels))
        return [
            {
                "score": None,
                "label": self.model.config.id2label[int(label)],
                "mask": Image.fromarray(np.equal(class_map, label).view(np.uint8) * np.uint8(255)),
            }
            for label in present
        ]


__all__ = ["SegRetImageSegmentationPipeline"]
