"""Test-time inference for semantic segmentation: whole image, sliding window, multi-scale + flip.

Model-agnostic: ``model`` is any callable used as ``model(pixel_values=x)`` whose output has ``.logits`` of shape
(B, K, h, w), where (h, w) may be a fraction of the input size (SegRet predicts at 1/4). The semantics follow
MMSegmentation's ``EncoderDecoder``:

* logits are first resized bilinearly (``align_corners=False``) to the size of the tensor that was fed to the model
  (the image or the crop), then to the requested output size, normally the original label size;
* sliding window: a crop grid with the last window shifted back inside the image, logits summed on a canvas and
  divided by the number of windows covering each pixel (softmax only after averaging);
* multi-scale + flip: the image is resized keep-ratio to ``ratio * test_scale`` (MMSegmentation 0.x /
  Mask2Former scales) or, without a test scale, by ``ratio`` as MMSegmentation 1.x's ``Resize(scale_factor=ratio,
  keep_ratio=True)`` rounds it (:func:`rescale_by_factor`); each pass is resized to the output size, flipped passes
  are flipped back (after that resize in 0.x, before it in 1.x, as each version does), and the softmax
  probabilities are averaged.

All functions take normalised images as a float tensor (B, 3, H, W); resizing happens here, in float, so callers
pass the image at its original resolution. This file is copied flat to the Hub as remote code: besides torch and the
standard library it imports only the image processor's keep-ratio size rule, so both resize alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .image_processing_segret import (
    get_keep_ratio_output_size,
    resize_bilinear,
    scale_keeping_ratio,
    semantic_segmentation_from_logits,
)

DEFAULT_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

Size = tuple[int, int]


def _pair(value: int | Sequence[int], name: str) -> Size:
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or any(int(v) <= 0 for v in value):
        raise ValueError(f"{name} must be a positive int or an (height, width) pair, got {value!r}")
    return int(value[0]), int(value[1])


def rescale_size(height: int, width: int, scale: float | Sequence[float]) -> Size:
    """Keep-ratio size (h, w) for an image of ``height`` x ``width``.

    ``scale`` is either a factor or a pair of bounds in any order, e.g. (2048, 512): the largest size whose long side
    is at most max(scale) and whose short side is at most min(scale) (MMCV's ``rescale_size`` rounding).
    """
    if isinstance(scale, (int, float)) and scale > 0:
        return scale_keeping_ratio(height, width, scale)
    if not isinstance(scale, (int, float)) and min(scale) > 0:
        return get_keep_ratio_output_size(height, width, shortest_edge=min(scale), longest_edge=max(scale))
    raise ValueError(f"scale must be positive, got {scale!r}")


def rescale_by_factor(height: int, width: int, ratio: float) -> Size:
    """Size (h, w) that MMSegmentation 1.x's test-time ``Resize(scale_factor=ratio, keep_ratio=True)`` gives an image.

    mmcv rounds twice: the image size times ``ratio`` (``int(side * ratio + 0.5)``) becomes a pair of keep-ratio
    bounds, and the image is rescaled within them (:func:`rescale_size`), so a side can end one pixel off
    ``round(side * ratio)`` (e.g. 207 x 436 at 0.75: 155 x 326, not 155 x 327; about one size in ten).
    """
    bounds = scale_keeping_ratio(height, width, ratio)
    return get_keep_ratio_output_size(height, width, shortest_edge=min(bounds), longest_edge=max(bounds))


def resize(x: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a (B, C, H, W) tensor; bilinear is the image processor's ``resize_bilinear`` (``align_corners=False``,
    no antialiasing, as MMSegmentation). No-op at equal size."""
    if mode == "bilinear":
        return resize_bilinear(x, size)
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode=mode)


def _model_logits(model: Callable, pixel_values: torch.Tensor) -> torch.Tensor:
    """Run the model and return its float32 logits at the model's own resolution."""
    output = model(pixel_values=pixel_values)
    logits = output.logits if hasattr(output, "logits") else output
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        raise TypeError("the model must return an object with .logits of shape (batch, num_labels, height, width)")
    return logits.float()


def _logits(model: Callable, pixel_values: torch.Tensor) -> torch.Tensor:
    """Run the model and return float32 logits at the input's spatial size."""
    return resize(_model_logits(model, pixel_values), pixel_values.shape[-2:])


def sliding_windows(height: int, width: int, crop_size: int | Sequence[int], stride: int | Sequence[int]) -> list:
    """Windows (y1, y2, x1, x2) covering the image, in MMSegmentation's ``slide_inference`` order.

    ``h_grids = max(H - crop_h + stride_h - 1, 0) // stride_h + 1`` (same for width); each window starts at
    ``i * stride``, is clipped to the image and then shifted back so it keeps the crop size when the image allows.
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    stride_h, stride_w = _pair(stride, "stride")
    if stride_h > crop_h or stride_w > crop_w:
        # Windows would leave uncovered gaps (count 0 -> division by zero).
        raise ValueError(f"stride {stride_h, stride_w} must not exceed crop_size {crop_h, crop_w}")
    h_grids = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    w_grids = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2 = min(i * stride_h + crop_h, height)
            x2 = min(j * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


@torch.inference_mode()
def predict_whole(
    model: Callable, pixel_values: torch.Tensor, output_size: Sequence[int] | None = None
) -> torch.Tensor:
    """Logits (B, K, *output_size) of one forward pass over the whole (already resized) image."""
    logits = _logits(model, pixel_values)
    return logits if output_size is None else resize(logits, output_size)


@torch.inference_mode()
def predict_sliding_window(
    model: Callable,
    pixel_values: torch.Tensor,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int],
    num_labels: int | None = None,
    output_size: Sequence[int] | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """Logits (B, K, *output_size) averaged over overlapping crops (MMSegmentation ``slide_inference``).

    Crops are run ``batch_size`` windows at a time and accumulated in place, so memory is bounded by one canvas of
    logits at the input size plus one mini-batch of crops, whatever the image size.
    """
    height, width = pixel_values.shape[-2:]
    batch = pixel_values.shape[0]
    windows = sliding_windows(height, width, crop_size, stride)
    canvas: torch.Tensor | None = None
    count = torch.zeros((1, 1, height, width), dtype=torch.float32, device=pixel_values.device)
    for start in range(0, len(windows), max(int(batch_size), 1)):
        chunk = windows[start : start + max(int(batch_size), 1)]
        # Every window has the same size (min(crop, image) per axis), so the crops stack into one batch.
        crops = torch.cat([pixel_values[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        logits = _logits(model, crops)
        if canvas is None:
            classes = logits.shape[1]
            if num_labels is not None and classes != num_labels:
                raise ValueError(f"the model returned {classes} classes, expected num_labels={num_labels}")
            canvas = torch.zeros((batch, classes, height, width), dtype=torch.float32, device=pixel_values.device)
        for k, (y1, y2, x1, x2) in enumerate(chunk):
            canvas[:, :, y1:y2, x1:x2] += logits[k * batch : (k + 1) * batch]
            count[:, :, y1:y2, x1:x2] += 1
        del logits, crops
    canvas /= count
    return canvas if output_size is None else resize(canvas, output_size)


def _predict(
    model: Callable,
    pixel_values: torch.Tensor,
    mode: str,
    crop_size: int | Sequence[int] | None,
    stride: int | Sequence[int] | None,
    output_size: Sequence[int],
    batch_size: int,
) -> torch.Tensor:
    if mode == "whole":
        return predict_whole(model, pixel_values, output_size)
    if mode == "slide":
        if crop_size is None or stride is None:
            raise ValueError("mode='slide' needs crop_size and stride")
        return predict_sliding_window(
            model, pixel_values, crop_size, stride, output_size=output_size, batch_size=batch_size
        )
    raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")


def _scaled_size(height: int, width: int, ratio: float, test_scale: Sequence[int] | None) -> Size:
    if test_scale is None:  # MMSegmentation 1.x: `Resize(scale_factor=ratio, keep_ratio=True)`
        return rescale_by_factor(height, width, float(ratio))
    # MMSegmentation 0.x MultiScaleFlipAug: the scale bounds themselves are multiplied (and truncated) first.
    return rescale_size(height, width, (int(test_scale[0] * ratio), int(test_scale[1] * ratio)))


@torch.inference_mode()
def predict_multi_scale(
    model: Callable,
    pixel_values: torch.Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    test_scale: Sequence[int] | None = None,
    output_size: Sequence[int] | None = None,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """Softmax probabilities (B, K, *output_size) averaged over scales and horizontal flips.

    ``pixel_values`` is the normalised image at its original resolution; ``output_size`` defaults to it.
    For each ratio the image is resized keep-ratio (see module docstring), predicted with ``mode`` ("whole" or
    "slide"), resized to ``output_size``, soft-maxed and added to one running sum. A flipped pass is flipped back
    after the resize to ``output_size`` with a ``test_scale`` (MMSegmentation 0.x's ``inference``) and before it
    without one (1.x's ``postprocess_result``); the two orders differ by the resize's rounding (~1e-3).
    """
    height, width = pixel_values.shape[-2:]
    output_size = (height, width) if output_size is None else (int(output_size[0]), int(output_size[1]))
    if not scales:
        raise ValueError("scales must not be empty")
    probs: torch.Tensor | None = None
    passes = 0
    for ratio in scales:
        scaled = resize(pixel_values, _scaled_size(height, width, ratio, test_scale))
        for flipped in (False, True) if flip else (False,):
            if not flipped:
                logits = _predict(model, scaled, mode, crop_size, stride, output_size, batch_size)
            elif test_scale is not None:  # 0.x: resized to the output size, then flipped back
                logits = _predict(model, scaled.flip(-1), mode, crop_size, stride, output_size, batch_size).flip(-1)
            else:  # 1.x: flipped back at the scaled image's size, then resized to the output size
                logits = _predict(model, scaled.flip(-1), mode, crop_size, stride, None, batch_size).flip(-1)
                logits = resize(logits, output_size)
            scores = logits.softmax(dim=1)
            del logits
            probs = scores if probs is None else probs.add_(scores)
            passes += 1
    return probs.div_(passes)


@torch.inference_mode()
def segment(
    model: Callable,
    pixel_values: torch.Tensor,
    output_size: Sequence[int] | None = None,
    test_scale: Sequence[int] | None = None,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    batch_size: int = 4,
) -> torch.Tensor:
    """Label map (B, *output_size) int64: the argmax of single-scale logits or of multi-scale probabilities.

    With the defaults this is MMSegmentation's single-scale test: resize keep-ratio to ``test_scale``, predict
    (``mode`` "whole" or "slide"), resize the logits to ``output_size`` and take the argmax.
    """
    height, width = pixel_values.shape[-2:]
    output_size = (height, width) if output_size is None else (int(output_size[0]), int(output_size[1]))
    if len(scales) == 1 and not flip:
        # Single pass: the argmax of the logits themselves (softmax could only create float ties), resized to the
        # input and then to the output size by the image processor's post-processing function, a few classes at a
        # time: bounded memory at any output size, and the same computation as `pipeline(...)`.
        scaled = resize(pixel_values, _scaled_size(height, width, scales[0], test_scale))
        if mode == "whole":
            return semantic_segmentation_from_logits(_model_logits(model, scaled), output_size, scaled.shape[-2:])
        logits = _predict(model, scaled, mode, crop_size, stride, None, batch_size)  # at the input size
        return semantic_segmentation_from_logits(logits, output_size)
    scores = predict_multi_scale(
        model, pixel_values, scales, flip, test_scale, output_size, mode, crop_size, stride, batch_size
    )
    return scores.argmax(dim=1)
