"""MMSegmentation-equivalent data augmentation on numpy arrays, with OpenCV as mmcv's cv2 backend (no torchvision).

Training pipeline (mmseg 1.x ``train_pipeline`` + ``SegDataPreProcessor``, identical in 0.x):
``RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio=True)`` -> ``RandomCrop(crop, cat_max_ratio=0.75)`` ->
``RandomFlip(0.5)`` -> ``PhotoMetricDistortion()`` -> normalise -> pad to the crop size (image 0, label 255).

Images are uint8 RGB arrays (H, W, 3), labels integer arrays (H, W) already in train ids (255 = ignore).
Every random step takes an explicit ``numpy.random.Generator``; without one, :func:`sample_rng` gives one seeded
from torch's global RNG, which PyTorch seeds differently in every DataLoader worker and epoch.
Resizing and colour conversion call OpenCV as mmcv's cv2 backend does (``cv2.resize`` ``INTER_LINEAR`` for images,
``INTER_NEAREST`` for labels, ``cv2.cvtColor`` uint8 RGB <-> HSV), so the pixels are mmseg's bit for bit on the same
OpenCV 4.x and CPU (docs/protocol.md); tests/test_transforms.py replays mmseg's steps with cv2 against these.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# The image processor's label resize: OpenCV's INTER_NEAREST index rule in numpy, for dtypes OpenCV cannot hold.
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


def single_threaded_opencv(worker_id: int | None = None) -> None:
    """One OpenCV thread. Called in the training process before its DataLoader workers start (forked workers
    inherit it) and as the workers' ``worker_init_fn`` (for workers started by spawn).

    OpenCV would otherwise start a thread per core in every worker: N workers then compete with N × cores threads
    (and with the training process) for the cores; MMEngine turns OpenCV's threads off for the same reason. The
    parent goes first because OpenCV's thread pool is not fork-safe: a forked worker that reconfigures a pool its
    parent had running can deadlock, so a worker that inherited one thread leaves the pool alone.
    """
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def _size_pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, (int, np.integer)) else (int(value[0]), int(value[1]))


# --------------------------------------------------------------------------------------------------------- resizing
def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, C) image to ``size`` = (h, w): ``cv2.resize`` ``INTER_LINEAR``, as mmcv."""
    return cv2.resize(image, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


_OPENCV_LABEL_DTYPES = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32)}


def resize_training_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``size`` = (h, w): ``cv2.resize`` ``INTER_NEAREST``, as mmcv.

    Label dtypes OpenCV 4 cannot hold (int64, uint32) take the image processor's :func:`resize_label`, the same
    index rule in numpy.
    """
    if label.dtype in _OPENCV_LABEL_DTYPES:
        return cv2.resize(label, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)
    return resize_label(label, (int(size[0]), int(size[1])))


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
    return resize_image(image, target), resize_training_label(label, target)


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
        return cv2.flip(image, 1), label[:, ::-1]
    return image, label


# ---------------------------------------------------------------------------------------------------------- colour
def _affine_table(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion.convert`` (float32 ``x * alpha + beta``, clip to [0, 255], truncating cast to
    uint8) as a table of its 256 values: applied with ``cv2.LUT``, it gives the same bytes as the formula."""
    return np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _in_hsv(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 RGB -> HSV (OpenCV's uint8 conventions, H in [0, 180)) -> per-channel ``table`` -> RGB, with cv2.

    mmseg converts its BGR images with ``COLOR_BGR2HSV``/``COLOR_HSV2BGR``; RGB images with the RGB codes give the
    same HSV values and the same pixels.
    """
    hsv = cv2.LUT(cv2.cvtColor(image, cv2.COLOR_RGB2HSV), table)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


_IDENTITY = np.arange(256, dtype=np.uint8)


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
    an integer in [-18, 18) modulo 180 (OpenCV uint8 HSV); each through an HSV round trip of its own, as mmseg.
    Every per-value step is a 256-entry lookup table, so the whole distortion runs in OpenCV.
    """
    rng = rng or sample_rng()
    img = image
    if rng.integers(2):
        img = cv2.LUT(img, _affine_table(beta=rng.uniform(-brightness_delta, brightness_delta)))
    contrast_first = rng.integers(2) == 1

    def contrast(x: np.ndarray) -> np.ndarray:
        return cv2.LUT(x, _affine_table(alpha=rng.uniform(*contrast_range))) if rng.integers(2) else x

    if contrast_first:
        img = contrast(img)
    if rng.integers(2):
        saturation = _affine_table(alpha=rng.uniform(*saturation_range))
        img = _in_hsv(img, np.stack([_IDENTITY, saturation, _IDENTITY], axis=-1)[:, None])
    if rng.integers(2):
        hue = ((np.arange(256) + rng.integers(-hue_delta, hue_delta)) % 180).astype(np.uint8)
        img = _in_hsv(img, np.stack([hue, _IDENTITY, _IDENTITY], axis=-1)[:, None])
    if not contrast_first:
        img = contrast(img)
    return img


# ------------------------------------------------------------------------------------------------ to model tensors
def normalize(image: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W) tensor ``(x - mean) / std``."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    # In place on one contiguous float32 copy: a third of the time of the out-of-place formula, the same values.
    x = torch.empty(pixels.shape, dtype=torch.float32).copy_(pixels)
    return x.sub_(torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)).div_(
        torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    )


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
