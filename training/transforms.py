"""MMSegmentation-equivalent data augmentation on numpy arrays (no OpenCV needed, no torchvision).

Training pipeline (mmseg 1.x ``train_pipeline`` + ``SegDataPreProcessor``, identical in 0.x):
``RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio=True)`` -> ``RandomCrop(crop, cat_max_ratio=0.75)`` ->
``RandomFlip(0.5)`` -> ``PhotoMetricDistortion()`` -> normalise -> pad to the crop size (image 0, label 255).

Images are uint8 RGB arrays (H, W, 3), labels integer arrays (H, W) already in train ids (255 = ignore).
Every random step takes an explicit ``numpy.random.Generator``; without one, :func:`sample_rng` gives one seeded
from torch's global RNG, which PyTorch seeds differently in every DataLoader worker and epoch.
Resizing and colour conversion equal mmcv's cv2 backend bit for bit (tests/test_transforms.py compares with OpenCV):
``cv2.resize`` ``INTER_LINEAR`` fixed-point arithmetic for images, its ``INTER_NEAREST`` index rule for labels, and
``cv2.cvtColor``'s uint8 RGB <-> HSV rounding in the photometric distortion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# The label resize (OpenCV's INTER_NEAREST rule) is the image processor's, so `segmentation_maps` resize alike.
from modeling_segret.image_processing_segret import resize_label
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
def _linear_taps(in_size: int, out_size: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV ``INTER_LINEAR`` taps along one axis: source indices (i0, i1) and 11-bit weights (w0, w1).

    Position ``(d + 0.5) * (1 / (out / in)) - 0.5`` in float32, split into floor and fraction; the weights are
    ``round((1 - frac) * 2048)`` and ``round(frac * 2048)``. Along x (``clamp``) positions outside the image take the
    edge pixel with weight (2048, 0); along y the weights are kept and the rows are clipped to the image.
    """
    position = ((np.arange(out_size) + 0.5) * (1.0 / (out_size / in_size)) - 0.5).astype(np.float32)
    index = np.floor(position)
    frac = position - index
    index = index.astype(np.int64)
    if clamp:
        outside = (index < 0) | (index >= in_size - 1)
        frac[outside] = 0
        index = np.clip(index, 0, in_size - 1)
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(2048.0)).astype(np.int32)
    w1 = np.rint(frac * np.float32(2048.0)).astype(np.int32)
    return np.clip(index, 0, in_size - 1), np.clip(index + 1, 0, in_size - 1), w0, w1


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, C) image to ``size`` = (h, w), equal to ``cv2.resize`` ``INTER_LINEAR``.

    OpenCV's fixed-point arithmetic: 11-bit weights, a horizontal pass into integers, then a vertical pass computed
    as its vector code does, ``((((a >> 4) * w0) >> 16) + (((b >> 4) * w1) >> 16) + 2) >> 2``. Halving both sides
    averages 2×2 blocks with rounding, as OpenCV does there (``INTER_AREA``).
    """
    h, w = int(size[0]), int(size[1])
    height, width = image.shape[:2]
    if (height, width) == (h, w):
        return image
    pixels = image.astype(np.int32)
    if (height, width) == (2 * h, 2 * w):
        blocks = pixels[0::2, 0::2] + pixels[0::2, 1::2] + pixels[1::2, 0::2] + pixels[1::2, 1::2]
        return ((blocks + 2) >> 2).astype(np.uint8)
    x0, x1, a0, a1 = _linear_taps(width, w, clamp=True)
    a0, a1 = a0.reshape(1, w, *[1] * (image.ndim - 2)), a1.reshape(1, w, *[1] * (image.ndim - 2))
    rows = (pixels[:, x0] * a0 + pixels[:, x1] * a1) >> 4  # (H, w, C), weight sum 2048, then >> 4 as OpenCV
    y0, y1, b0, b1 = _linear_taps(height, h, clamp=False)
    b0, b1 = b0.reshape(h, *[1] * (image.ndim - 1)), b1.reshape(h, *[1] * (image.ndim - 1))
    out = (((rows[y0] * b0) >> 16) + ((rows[y1] * b1) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


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


def _opencv_simd_lanes() -> int:
    """float32 lanes of the vector code OpenCV's colour conversions dispatch to on this CPU.

    16 with AVX-512 (SKX), 8 with AVX2 + FMA, 4 otherwise (SSE), as OpenCV 4.x's runtime dispatch chooses; read from
    ``/proc/cpuinfo``, 8 (AVX2) where that is unavailable.
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(next(line for line in cpuinfo if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return 8
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return 16
    return 8 if {"avx2", "fma", "f16c"} <= flags else 4


# The pixel blocks of cv2.cvtColor's vector loop (4 vectors of float32 lanes) depend on the CPU; mmcv's
# PhotoMetricDistortion gives different ±1 roundings on AVX-512 and AVX2 machines.
OPENCV_SIMD_LANES = _opencv_simd_lanes()
# Which of (v, v(1-s), v(1-s f), v(1-s(1-f))) is R, G, B in each 60-degree sector.
_SECTOR_RGB = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def _one_minus_product(a: np.ndarray, b: np.ndarray, fused: bool) -> np.ndarray:
    """float32 ``1 - a*b``, with one rounding where the compiler fused it into an FMA (OpenCV's AVX2/AVX-512 code)."""
    if not fused:
        return np.float32(1.0) - a * b
    return (1.0 - a.astype(np.float64) * b).astype(np.float32)  # the float64 product of two float32 is exact


def hsv_to_rgb(hsv: np.ndarray, simd_lanes: int = OPENCV_SIMD_LANES) -> np.ndarray:
    """uint8 HSV (OpenCV conventions, see :func:`rgb_to_hsv`) -> uint8 RGB, equal to ``cv2.cvtColor`` bit for bit.

    OpenCV converts each image row in blocks of ``4 * simd_lanes`` pixels with vector code that truncates to uint8,
    and the remaining ``width % (4 * simd_lanes)`` pixels with scalar code that rounds to nearest; both compute in
    float32, with ``1 - s*f`` fused into one FMA on AVX2/AVX-512 builds. This does the same per column.
    """
    f32 = np.float32
    width = hsv.shape[-2] if hsv.ndim >= 2 else 1
    block = 4 * simd_lanes
    vector = np.arange(width) < width // block * block  # columns OpenCV's vector loop converts
    h = hsv[..., 0].astype(f32) * (f32(6.0) / f32(180.0))
    s = hsv[..., 1].astype(f32) * f32(1.0 / 255.0)
    v = hsv[..., 2].astype(f32) * f32(1.0 / 255.0)
    # Sector and position in it: the vector code takes the integer part mod 6, the scalar code fmod(h, 6) (equal for
    # hues below 180).
    whole = np.trunc(h)
    h_mod = np.fmod(h, f32(6.0))
    sector = np.where(vector, whole - np.trunc(whole * f32(1.0 / 6.0)) * f32(6.0), np.floor(h_mod))
    frac = np.where(vector, h - whole, h_mod - np.floor(h_mod))
    fused = simd_lanes >= 8
    table = np.stack(
        [v, v * (f32(1.0) - s), v * _one_minus_product(s, frac, fused), v * _one_minus_product(s, 1 - frac, fused)],
        axis=-1,
    )
    rgb = np.take_along_axis(table, _SECTOR_RGB[sector.astype(np.int64) % 6], axis=-1) * f32(255.0)
    rgb = np.where(vector[:, None], np.trunc(rgb), np.rint(rgb))
    return np.clip(rgb, 0, 255).astype(np.uint8)


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
