"""MMSegmentation-equivalent data augmentation on numpy arrays (no OpenCV, no torchvision).

Training pipeline (mmseg 1.x ``train_pipeline`` + ``SegDataPreProcessor``, identical in 0.x):
``RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio=True)`` -> ``RandomCrop(crop, cat_max_ratio=0.75)`` ->
``RandomFlip(0.5)`` -> ``PhotoMetricDistortion()`` -> normalise -> pad to the crop size (image 0, label 255).

Images are uint8 RGB arrays (H, W, 3), labels integer arrays (H, W) already in train ids (255 = ignore).
Every random step takes an explicit ``numpy.random.Generator``; without one, :func:`sample_rng` gives one seeded
from torch's global RNG, which PyTorch seeds differently in every DataLoader worker and epoch.
Resizing reproduces OpenCV: bilinear with half-pixel centres and no antialiasing for images (computed in float and
rounded back to uint8), and OpenCV's ``INTER_NEAREST`` index rule for labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from modeling_segret.inference_segret import rescale_size
from training.presets import IGNORE_INDEX

# ImageNet statistics in 0..255 pixel units, RGB (the mmseg configs' data_preprocessor).
MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


def sample_rng() -> np.random.Generator:
    """A fresh generator seeded from torch's global RNG (one draw).

    PyTorch seeds each DataLoader worker's torch RNG with ``base_seed + worker_id``, ``base_seed`` being drawn from
    the main process's RNG at every epoch; so workers differ from each other and between epochs, and everything
    is reproducible after ``torch.manual_seed``, with or without workers.
    """
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def _size_pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, (int, np.integer)) else (int(value[0]), int(value[1]))


# --------------------------------------------------------------------------------------------------------- resizing
def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, C) image to ``size`` = (h, w), OpenCV ``INTER_LINEAR`` semantics."""
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def resize_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map, OpenCV ``INTER_NEAREST``: source index floor(dst * in/out)."""
    h, w = int(size[0]), int(size[1])
    if label.shape[:2] == (h, w):
        return label
    rows = np.minimum((np.arange(h) * (label.shape[0] / h)).astype(np.int64), label.shape[0] - 1)
    cols = np.minimum((np.arange(w) * (label.shape[1] / w)).astype(np.int64), label.shape[1] - 1)
    return label[rows[:, None], cols[None, :]]


def random_resize(
    image: np.ndarray,
    label: np.ndarray,
    scale: Sequence[int],
    ratio_range: tuple[float, float] = (0.5, 2.0),
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomResize``: ``r ~ U(ratio_range)``, bounds ``(int(scale[0]*r), int(scale[1]*r))``, keep ratio."""
    rng = rng or sample_rng()
    ratio = rng.random() * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
    target = rescale_size(image.shape[0], image.shape[1], (int(scale[0] * ratio), int(scale[1] * ratio)))
    return resize_image(image, target), resize_label(label, target)


# ------------------------------------------------------------------------------------------------------ geometric
def random_crop_box(
    height: int, width: int, crop_size: Sequence[int], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A uniformly random crop box (y1, y2, x1, x2); offsets drawn height first, as mmseg's ``crop_bbox``."""
    crop_h, crop_w = _size_pair(crop_size)
    y1 = int(rng.integers(0, max(height - crop_h, 0) + 1))
    x1 = int(rng.integers(0, max(width - crop_w, 0) + 1))
    return y1, y1 + min(crop_h, height), x1, x1 + min(crop_w, width)


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    crop_size: int | Sequence[int],
    cat_max_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
    rng: np.random.Generator | None = None,
    max_tries: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop``: up to ``max_tries`` checks that the crop has >1 class and none above ``cat_max_ratio``.

    After ``max_tries`` rejected boxes the next random box is used unchecked. Images smaller than the crop keep
    their size (they are padded later).
    """
    rng = rng or sample_rng()
    box = random_crop_box(image.shape[0], image.shape[1], crop_size, rng)
    if cat_max_ratio < 1.0:
        for _ in range(max_tries):
            y1, y2, x1, x2 = box
            counts = np.bincount(label[y1:y2, x1:x2].ravel())
            if ignore_index < len(counts):
                counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = random_crop_box(image.shape[0], image.shape[1], crop_size, rng)
    y1, y2, x1, x2 = box
    return image[y1:y2, x1:x2], label[y1:y2, x1:x2]


def random_flip(
    image: np.ndarray, label: np.ndarray, prob: float = 0.5, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip with probability ``prob`` (one ``rng.random()`` draw, as mmseg's ``RandomFlip``)."""
    rng = rng or sample_rng()
    if rng.random() < prob:
        return image[:, ::-1], label[:, ::-1]
    return image, label


# ---------------------------------------------------------------------------------------------------------- colour
def _div_table(numerator: int) -> np.ndarray:
    # OpenCV's fixed-point reciprocal tables (12 fractional bits): round(numerator * 4096 / i), 0 for i = 0.
    i = np.arange(256, dtype=np.float64)
    with np.errstate(divide="ignore"):
        table = np.where(i > 0, np.rint(numerator * 4096.0 / np.maximum(i, 1)), 0)
    return table.astype(np.int64)


_SAT_DIV = _div_table(255)
_HUE_DIV = _div_table(30)  # 180 / 6: hue in OpenCV's uint8 range [0, 180)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV with OpenCV's conventions (H in [0, 180), S and V in [0, 255], integer rounding)."""
    rgb = image.astype(np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    diff = v - rgb.min(axis=-1)
    s = (diff * _SAT_DIV[v] + 2048) >> 12
    hue = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    hue = (hue * _HUE_DIV[diff] + 2048) >> 12  # arithmetic shift = floor, as in OpenCV
    hue = np.where(hue < 0, hue + 180, hue)
    return np.stack([hue, s, v], axis=-1).astype(np.uint8)


# Which of (v, v(1-s), v(1-s f), v(1-s(1-f))) is R, G, B in each 60-degree sector.
_SECTOR_RGB = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """uint8 HSV (OpenCV conventions, see :func:`rgb_to_hsv`) -> uint8 RGB, computed in float32 like OpenCV."""
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
    h = np.mod(h, np.float32(6.0))
    sector = np.floor(h).astype(np.int64)
    frac = h - sector
    sector = np.where(sector >= 6, 0, sector)
    table = np.stack([v, v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))], axis=-1)
    rgb = np.take_along_axis(table, _SECTOR_RGB[sector], axis=-1)
    return np.clip(np.rint(rgb * np.float32(255.0)), 0, 255).astype(np.uint8)


def _affine_uint8(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg's PhotoMetricDistortion.convert: float32 affine, clip, then truncating cast to uint8.
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` on a uint8 RGB image; each step applied with probability 0.5.

    Order of draws: brightness; mode (contrast first if 1, last if 0); [contrast]; saturation; hue; [contrast].
    Brightness adds U(-32, 32), contrast multiplies by U(0.5, 1.5), saturation scales S by U(0.5, 1.5), hue adds
    an integer in [-18, 18) modulo 180 (OpenCV uint8 HSV). RGB instead of mmseg's BGR gives the same HSV values.
    """
    rng = rng or sample_rng()
    img = image
    if rng.integers(2):
        img = _affine_uint8(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = rng.integers(2) == 1

    def contrast(x: np.ndarray) -> np.ndarray:
        return _affine_uint8(x, alpha=rng.uniform(*contrast_range)) if rng.integers(2) else x

    if contrast_first:
        img = contrast(img)
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 1] = _affine_uint8(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        img = hsv_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-hue_delta, hue_delta)) % 180
        img = hsv_to_rgb(hsv)
    if not contrast_first:
        img = contrast(img)
    return img


# ------------------------------------------------------------------------------------------------ to model tensors
def normalize(image: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W) tensor ``(x - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean_t) / std_t


def pad_to_size(
    pixel_values: torch.Tensor, labels: torch.Tensor, size: Sequence[int], ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to at least ``size`` = (h, w): image with 0 (after normalisation), labels with 255."""
    pad_h = max(int(size[0]) - pixel_values.shape[-2], 0)
    pad_w = max(int(size[1]) - pixel_values.shape[-1], 0)
    if pad_h == 0 and pad_w == 0:
        return pixel_values, labels
    pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h), value=0.0)
    labels = F.pad(labels, (0, pad_w, 0, pad_h), value=ignore_index)
    return pixel_values, labels


class TrainTransform:
    """The full mmseg training pipeline: ``(image, label) -> {"pixel_values", "labels"}`` at ``crop_size``.

    ``scale`` is mmseg's (long, short) resize bound, e.g. (2048, 512) for ADE20K; ``crop_size`` is (h, w).
    """

    def __init__(
        self,
        scale: Sequence[int],
        crop_size: int | Sequence[int],
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.scale = (int(scale[0]), int(scale[1]))
        self.crop_size = _size_pair(crop_size)
        self.ratio_range = ratio_range
        self.cat_max_ratio = cat_max_ratio
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = ignore_index

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        rng = rng or sample_rng()
        image, label = random_resize(image, label, self.scale, self.ratio_range, rng)
        image, label = random_crop(image, label, self.crop_size, self.cat_max_ratio, self.ignore_index, rng)
        image, label = random_flip(image, label, self.flip_prob, rng)
        if self.photometric:
            image = photometric_distortion(image, rng)
        pixel_values = normalize(image, self.mean, self.std)
        labels = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
        pixel_values, labels = pad_to_size(pixel_values, labels, self.crop_size, self.ignore_index)
        return {"pixel_values": pixel_values, "labels": labels}

    def __repr__(self) -> str:
        return (
            f"TrainTransform(scale={self.scale}, crop_size={self.crop_size}, ratio_range={self.ratio_range}, "
            f"cat_max_ratio={self.cat_max_ratio}, flip_prob={self.flip_prob}, photometric={self.photometric})"
        )


class EvalTransform:
    """Evaluation: normalise the image at its original size and keep the original label map.

    Test-scale resizing, sliding windows and multi-scale are done on the tensor by
    :mod:`modeling_segret.inference_segret`, which scores predictions at the label's original resolution.
    """

    def __init__(self, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": normalize(image, self.mean, self.std),
            "labels": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)),
        }

    def __repr__(self) -> str:
        return f"EvalTransform(mean={self.mean}, std={self.std})"


def denormalize(pixel_values: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """Inverse of :func:`normalize`: float (3, H, W) -> uint8 (H, W, 3) RGB (for visualisation)."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixel_values.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixel_values.device).view(3, 1, 1)
    x = (pixel_values.float() * std_t + mean_t).round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()
