# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Image processor for SegRet: PIL + NumPy preprocessing (no torchvision); torch, where installed, for the bilinear
resize shared with the evaluation path (a NumPy version of it otherwise) and for post-processing.

This file is copied flat into Hub repositories as remote code, so it imports only the standard library, NumPy,
Pillow, transformers, (guarded) torch and its neighbour compat_segret.py (the transformers-version shims).
"""

import math
from copy import deepcopy
from typing import Any

import numpy as np
from PIL import Image
from transformers.image_processing_utils import BatchFeature, get_size_dict
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType, is_torch_available, logging

from .compat_segret import ImageProcessorBase, SemanticSegmentationPostProcessorOutput, SizeDict, size_items

if is_torch_available():
    import torch
    import torch.nn.functional as F

logger = logging.get_logger(__name__)

# Padding values, as in MMSegmentation's `Pad` / `SegDataPreProcessor`: padded image pixels are 0 *after*
# normalisation and padded label pixels get the ignore index (`SegRetConfig.semantic_loss_ignore_index`).
IMAGE_PAD_VALUE = 0.0
LABEL_PAD_VALUE = 255

# SegRet's logits have ceil(side / 4) rows and columns for an input side (two stride-2 convolutions in the stem).
LOGITS_STRIDE = 4

# Number of channels accepted for array / tensor images: gray, gray + alpha, RGB, RGBA.
_SUPPORTED_NUM_CHANNELS = (1, 2, 3, 4)
# Pillow modes holding 16-bit samples. Pillow opens 16-bit PNGs as "I;16"; "I" (32-bit int) is what 16-bit data
# becomes after `.convert("I")` or in TIFFs, so it is treated as 16-bit as well.
_PIL_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def get_keep_ratio_output_size(
    height: int, width: int, shortest_edge: int | None, longest_edge: int | None
) -> tuple[int, int]:
    """
    Output `(height, width)` of MMSegmentation's keep-ratio `Resize` (mmcv `rescale_size`).

    The image is scaled by `min(longest_edge / long side, shortest_edge / short side)` (a missing bound is ignored),
    so it gets the largest size whose short side is at most `shortest_edge` and whose long side is at most
    `longest_edge`; small images are scaled up. Sides are rounded with `int(side * scale + 0.5)` like mmcv.
    `shortest_edge=512, longest_edge=2048` is MMSegmentation's `Resize(scale=(2048, 512), keep_ratio=True)`.
    """
    scale = min(
        longest_edge / max(height, width) if longest_edge else math.inf,
        shortest_edge / min(height, width) if shortest_edge else math.inf,
    )
    return scale_keeping_ratio(height, width, scale)


def scale_keeping_ratio(height: int, width: int, scale: float) -> tuple[int, int]:
    """`(height, width)` scaled by `scale` with mmcv's rounding, `int(side * scale + 0.5)`, and at least one pixel
    (mmcv would give a 0-pixel side for extreme aspect ratios, e.g. 1 x 10000)."""
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _resize_plane(plane: np.ndarray, output_size: tuple[int, int], resample: PILImageResampling | int) -> np.ndarray:
    """Resizes one (H, W) channel with Pillow, in 8-bit ("L"), 32-bit integer ("I") or 32-bit float ("F") mode."""
    if plane.dtype == np.uint8:
        pil_plane = Image.fromarray(plane)
    elif np.issubdtype(plane.dtype, np.integer):
        pil_plane = Image.fromarray(plane.astype(np.int32))
    else:
        pil_plane = Image.fromarray(plane.astype(np.float32))
    output_height, output_width = output_size
    resized = pil_plane.resize((output_width, output_height), resample=resample)
    return np.asarray(resized).astype(plane.dtype, copy=False)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map to `size` = (h, w), equal to OpenCV's `cv2.resize`
    `INTER_NEAREST`, with which mmcv resizes segmentation maps: the rule of training's augmentation
    (`training/transforms.py`) and of this processor's `segmentation_maps`.

    Source index `floor(dst * (1 / (out / in)))` in double precision, as OpenCV computes it (not `dst * in / out`,
    which picks a neighbouring pixel on some size pairs, nor Pillow's `floor((dst + 0.5) * in / out)`).
    """
    h, w = int(size[0]), int(size[1])
    if label.shape[:2] == (h, w):
        return label
    rows = np.minimum(np.floor(np.arange(h) * (1.0 / (h / label.shape[0]))).astype(np.int64), label.shape[0] - 1)
    cols = np.minimum(np.floor(np.arange(w) * (1.0 / (w / label.shape[1]))).astype(np.int64), label.shape[1] - 1)
    return label[rows[:, None], cols[None, :]]


def resize_bilinear(images: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """
    SegRet's one bilinear resize, shared by the image processor and `inference_segret` (so `pipeline(...)` and
    `training/evaluation.py` resize alike by construction): PyTorch's bilinear interpolation with
    `align_corners=False` and no antialiasing, as MMSegmentation's `resize` of images and logits. `images` is a
    float (B, C, H, W) tensor; returned unchanged when it already has `size` (height, width).
    """
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def _bilinear_taps(input_size: int, output_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of PyTorch's bilinear resize along one axis (`align_corners=False`)."""
    scale = np.float32(input_size / output_size)
    source = np.maximum((np.arange(output_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    low = np.minimum(source.astype(np.int64), input_size - 1)
    high = np.minimum(low + 1, input_size - 1)
    high_weight = (source - low).astype(np.float32)
    return low, high, np.float32(1) - high_weight, high_weight


def _resize_bilinear_numpy(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`resize_bilinear` of one float32 (C, H, W) array without torch (equal to it up to float rounding)."""
    rows_low, rows_high, top_weight, bottom_weight = _bilinear_taps(image.shape[1], size[0])
    cols_low, cols_high, left_weight, right_weight = _bilinear_taps(image.shape[2], size[1])
    top, bottom = image[:, rows_low], image[:, rows_high]
    top = top[:, :, cols_low] * left_weight + top[:, :, cols_high] * right_weight
    bottom = bottom[:, :, cols_low] * left_weight + bottom[:, :, cols_high] * right_weight
    return top * top_weight[:, None] + bottom * bottom_weight[:, None]


# Images with more values than this are normalised and resized in tiles of rows (`_normalize_and_resize_in_tiles`):
# 64 MiB of float32 per tile, instead of float copies of the whole image (4.5 GiB each for a 20000² RGB array).
MAX_TILE_VALUES = 2**24


# Values upsampled at once by `semantic_segmentation_from_logits`: 1 MiB of float32 per chunk of classes, i.e. one
# class plane at a time for predictions of 512² and more. Small chunks are also the fastest: the running maximum reads
# each upsampled plane while it is still in cache (measured on a 2-core EPYC, 150 classes: 512² 76 vs 154 ms with
# 256 MiB chunks, 1024×2048 via 512×1024 0.70 vs 1.41 s).
MAX_UPSAMPLED_ELEMENTS = 2**18


def semantic_segmentation_from_logits(
    logits: "torch.Tensor",
    output_size: tuple[int, int],
    input_size: tuple[int, int] | None = None,
    max_upsampled_elements: int = MAX_UPSAMPLED_ELEMENTS,
) -> "torch.Tensor":
    """
    Class map (B, *output_size), int64, of logits (B, K, h, w): the argmax over classes of the logits resized with
    `resize_bilinear` to `input_size` (the size the model was fed, if given) and then to `output_size`, as
    MMSegmentation's `EncoderDecoder` does. Both the image processor's post-processing and `inference_segret`
    use it.

    Memory stays bounded whatever the output size: the classes are upsampled a chunk at a time (about
    `max_upsampled_elements` values), and a running maximum over the class planes keeps the first best class, so the
    result is `argmax` of the fully upsampled logits, tie for tie (bilinear resizing treats every class plane on its
    own). The running maximum is also ~2.5x faster than `argmax` over the class axis of channels-first scores.
    """
    logits = logits.float()  # low-precision logits (bf16) would create argmax ties after interpolation
    batch_size, num_labels = logits.shape[:2]
    largest_plane = output_size[0] * output_size[1]
    if input_size is not None:
        largest_plane = max(largest_plane, input_size[0] * input_size[1])
    chunk_size = max(1, max_upsampled_elements // max(1, batch_size * largest_plane))

    def running_argmax(nan_aware: bool) -> "torch.Tensor":
        best_scores = best_classes = None
        for start in range(0, num_labels, chunk_size):
            # Class planes in channels-first memory whatever the logits' layout: PyTorch then resizes every plane on
            # its own (the channels-last kernel's rounding depends on the number of channels).
            scores = logits[:, start : start + chunk_size].contiguous()
            if input_size is not None:
                scores = resize_bilinear(scores, input_size)
            scores = resize_bilinear(scores, output_size)
            for offset in range(scores.shape[1]):
                plane = scores[:, offset]
                if best_scores is None:
                    best_scores = plane.clone()
                    best_classes = torch.zeros(plane.shape, dtype=torch.int64, device=plane.device)
                    continue
                if nan_aware:  # as `argmax`: a NaN is larger than any number, and the first NaN stays
                    better = ~(plane <= best_scores) & ~best_scores.isnan()
                    torch.where(better, plane, best_scores, out=best_scores)
                else:  # strict: on a tie the earlier class stays, as in `argmax`
                    better = plane > best_scores
                    torch.maximum(best_scores, plane, out=best_scores)
                best_classes.masked_fill_(better, start + offset)
            del scores
        # `maximum` propagates NaN: a NaN anywhere in a pixel's scores leaves a NaN best score there.
        if not nan_aware and bool(best_scores.isnan().any()):
            return running_argmax(nan_aware=True)
        return best_classes

    return running_argmax(nan_aware=False)


class SegRetImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to reduce the labels of the segmentation maps by one, for datasets whose 0 is an "other / unlabelled"
        value rather than a class (ADE20K): 0 becomes 255 (ignored), every other value `v` becomes `v - 1` and 255
        stays 255.
    """

    do_reduce_labels: bool | None


class SegRetImageProcessor(ImageProcessorBase):
    r"""
    Image processor for SegRet: converts images to RGB, resizes them (fixed size or MMSegmentation's keep-ratio
    test resize), rescales to [0, 1] and normalises with the ImageNet mean and std, which equals MMSegmentation's
    `Normalize(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])` on 0..255 pixels. Optional segmentation
    maps are resized to the same size with nearest-neighbour interpolation and returned as int64 `labels`.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize the images (and segmentation maps).
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 512, "longest_edge": 2048}`):
            Either a fixed size `{"height": h, "width": w}`, or a keep-ratio bound `{"shortest_edge": s,
            "longest_edge": l}` (either key may be left out): the image is scaled, up or down, to the largest size
            whose short side is at most `s` and whose long side is at most `l`, with mmcv's rounding (see
            [`get_keep_ratio_output_size`]). The default is the ADE20K / COCO-Stuff test resize; Cityscapes uses
            `{"shortest_edge": 1024, "longest_edge": 2048}`.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BILINEAR`):
            Filter for images. `BILINEAR` is the evaluation path's resize ([`resize_bilinear`]: PyTorch's bilinear
            interpolation of the normalised float image, `align_corners=False`, no antialiasing, as
            `training/evaluation.py`); `NEAREST` is OpenCV's rule ([`resize_label`]); other filters use Pillow.
            Segmentation maps always use OpenCV's nearest-neighbour rule, as training's augmentation does.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1 / 255`):
            Factor applied when rescaling.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise with `image_mean` and `image_std`.
        image_mean (`list[float]`, *optional*, defaults to `IMAGENET_DEFAULT_MEAN`):
            Per-channel mean, applied after rescaling.
        image_std (`list[float]`, *optional*, defaults to `IMAGENET_DEFAULT_STD`):
            Per-channel standard deviation, applied after rescaling.
        do_pad (`bool`, *optional*, defaults to `False`):
            Whether to pad the images of a batch at the bottom and right, to `pad_size` or else to the largest
            image in the batch. Padded image pixels are 0 after normalisation and padded label pixels are 255.
        pad_size (`dict[str, int]`, *optional*):
            `{"height": h, "width": w}` to pad to when `do_pad=True`.
        do_reduce_labels (`bool`, *optional*, defaults to `False`):
            Whether to reduce segmentation labels by one (ADE20K): 0 -> 255, v -> v - 1, 255 -> 255.

    Batches: without padding, images that end up with different sizes (keep-ratio resize of differently shaped
    images, or `do_resize=False`) are returned as lists when `return_tensors=None` and raise a `ValueError` when
    tensors are requested. With `do_pad=True` the output also has a `pixel_mask` (1 on the image, 0 on the padding):
    the model then runs every image at its own size, and `post_process_semantic_segmentation` crops the padding off,
    so padding changes no prediction. transformers' pipeline preprocesses one image at a time, so batched pipeline
    calls over images of different sizes need `do_pad=True` with a `pad_size` that holds every resized image.

    Images can be PIL images, NumPy arrays or torch tensors, and are converted to 3-channel RGB as follows (PIL
    images and maps are first turned upright by their EXIF orientation, as transformers' `load_image` does; NaN or
    inf pixel values are an error):

    - PIL "RGB" is kept; "L" and "1" are replicated to three channels; "P" goes through its palette; the alpha or
      padding band of "RGBA", "RGBX", "LA", "PA" and "RGBa" is dropped (not composited, like OpenCV's `imread` in
      MMSegmentation and Pillow's `convert("RGB")`); "CMYK", "YCbCr", "LAB" and "HSV" use Pillow's conversion.
    - 16-bit data (PIL "I;16*" and "I", NumPy / torch `uint16`) is clipped to [0, 65535] and mapped to 8 bit with
      `round(value / 257)`, so 65535 becomes 255. Arrays of other integer types are read as 8-bit when all values
      are in 0..255 and as 16-bit (the same rule) when the largest is in 256..65535; negative values or values
      above 65535 are an error ([`integer_image_to_uint8`]).
    - Arrays and tensors have shape (H, W), (H, W, C) or (C, H, W) with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or
      4 (RGBA). The channel axis is the last one for NumPy arrays and the first one for torch tensors when both
      ends could be channels; pass `input_data_format` to choose. `uint8` is kept, `bool` becomes 0 / 255, and float
      dtypes (and PIL "F") are used as they are, on the 0..255 scale: pass `do_rescale=False` for
      images already in [0, 1].

    With `do_convert_rgb=False` images keep their own channels instead (for models with `num_channels != 3`, e.g.
    RGB + near-infrared): arrays and tensors as given, PIL images with their bands as stored ("RGBA" has 4,
    "L" 1; palette images still go through RGB). `image_mean` and `image_std` then need one value per channel,
    and every image is checked against them with an error naming the image.

    Memory: with the default bilinear resize, an image of more than `MAX_TILE_VALUES` values is normalised and
    resized a tile of rows at a time, with the values of the whole-image computation (a 20000×20000 array needs
    under 2 GiB). A batch array of 0 images gives outputs with 0 rows of the size such images would get.

    Segmentation maps are class-index maps: PIL "L", "P" (the palette indices, never the colours), "I", "I;16", "1"
    or "F", or arrays / tensors with integer, bool or integer-valued float dtype, of shape (H, W) (inside a list or a
    batch also (1, H, W) or (H, W, 1); a 3-D array on its own is a batch (B, H, W)). Each must have the same height
    and width as its image.
    """

    valid_kwargs = SegRetImageProcessorKwargs
    do_resize = True
    size = {"shortest_edge": 512, "longest_edge": 2048}
    resample = PILImageResampling.BILINEAR
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_pad = False
    pad_size = None
    do_reduce_labels = False
    do_convert_rgb = True
    model_input_names = ["pixel_values"]
    # The settings stored by a processor (and in preprocessor_config.json); every call may override them.
    _settings = (
        "do_resize",
        "size",
        "resample",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "do_pad",
        "pad_size",
        "do_reduce_labels",
        "do_convert_rgb",
    )
    # Per-call options besides the settings; the generic ones of `ImagesKwargs` that would change the output are
    # refused in `_validate_preprocess_kwargs`, the others (e.g. `device`) are accepted and have no effect.
    _call_options = ("return_tensors", "input_data_format", "data_format", "do_center_crop")

    def __init__(self, **kwargs: Unpack[SegRetImageProcessorKwargs]) -> None:
        for name in ("size", "pad_size"):  # before transformers' own conversion, whose error names no field
            self._check_size_type(kwargs.get(name), name)
        super().__init__(**kwargs)
        for name in self._settings:
            value = kwargs.get(name)
            setattr(self, name, deepcopy(getattr(type(self), name)) if value is None else value)
        self.size = self._to_size_dict(self.size, "size")
        self.pad_size = self._to_size_dict(self.pad_size, "pad_size")
        # A bad `size` in preprocessor_config.json fails here, when the processor is loaded, not at the first image.
        self._validate_preprocess_kwargs(
            do_resize=self.do_resize, size=self.size, do_pad=self.do_pad, pad_size=self.pad_size
        )

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[SegRetImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Preprocesses an image or a batch of images, and optionally their segmentation maps.

        Args:
            images (`ImageInput`):
                One image (PIL image, array or tensor), a batch array / tensor (B, C, H, W) or (B, H, W, C), or a
                list of images.
            segmentation_maps (`ImageInput`, *optional*):
                One class-index map per image: one (H, W) map, a batch (B, H, W), or a list of maps.
            kwargs:
                Any constructor argument, overriding it for this call, plus `return_tensors` (`"pt"`, `"np"` or
                `None`) and `input_data_format`.

        Returns:
            [`BatchFeature`] with `pixel_values` (float32, (B, 3, H, W)) and, with segmentation maps, `labels`
            (int64, (B, H, W)).
        """
        accepted = {*self._settings, *self._call_options, *SegRetImageProcessorKwargs.__annotations__}
        for name in kwargs:
            if name not in accepted:
                raise TypeError(f"SegRetImageProcessor.preprocess() got an unexpected keyword argument {name!r}")
        for name in (*self._settings, "return_tensors", "input_data_format"):
            kwargs.setdefault(name, getattr(self, name, None))
        kwargs["size"] = self._to_size_dict(kwargs["size"], "size")
        kwargs["pad_size"] = self._to_size_dict(kwargs["pad_size"], "pad_size")
        self._validate_preprocess_kwargs(**kwargs)
        if self._is_empty_batch(images):
            return self._preprocess_empty_batch(images, segmentation_maps, **kwargs)
        return self._preprocess_image_like_inputs(images, segmentation_maps, **kwargs)

    @staticmethod
    def _is_empty_batch(images: Any) -> bool:
        """Whether `images` is a batch array / tensor (B, ...) with B = 0."""
        is_array = isinstance(images, np.ndarray) or (is_torch_available() and isinstance(images, torch.Tensor))
        return is_array and images.ndim == 4 and images.shape[0] == 0

    def _preprocess_empty_batch(self, images: Any, segmentation_maps: Any, **kwargs) -> BatchFeature:
        """The outputs of a batch of 0 images: those of one blank image of the batch's image shape, with 0 rows
        (so `pixel_values` has the resized size a batch of such images would have, as torch modules do)."""
        if segmentation_maps is not None and len(segmentation_maps) != 0:
            raise ValueError(f"Got 0 images but {len(segmentation_maps)} segmentation maps.")
        blank = np.zeros(images.shape[1:], dtype=self._to_numpy(images[:0], "The batch").dtype)
        blank_map = None
        if segmentation_maps is not None:
            input_data_format = kwargs["input_data_format"]
            input_data_format = None if input_data_format is None else ChannelDimension(input_data_format)
            blank_map = np.zeros(self._to_rgb_array(blank, 0, input_data_format).shape[1:], np.int64)
        outputs = self._preprocess_image_like_inputs(blank, blank_map, **kwargs)
        return BatchFeature(
            data={key: value[:0] for key, value in outputs.items()}, tensor_type=kwargs.get("return_tensors")
        )

    @staticmethod
    def _to_size_dict(size: int | dict[str, int] | SizeDict | None, name: str) -> SizeDict | None:
        """`size` / `pad_size` as a `SizeDict`; an int is a square size, as in transformers."""
        if size is None:
            return size
        if not isinstance(size, SizeDict):
            SegRetImageProcessor._check_size_type(size, name)
            size = SizeDict(**get_size_dict(size, default_to_square=True, param_name=name))
        for key, value in size_items(size).items():
            # A negative side would resize every image to 1x1 and a fractional one to a rounded size, silently.
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"`{name}` must hold positive whole numbers of pixels, got {name}['{key}'] = {value!r} in "
                    f"{size_items(size)}; fix `{name}` in preprocessor_config.json or the argument."
                )
        return size

    @staticmethod
    def _check_size_type(size: Any, name: str) -> None:
        if size is not None and (not isinstance(size, (int, dict, SizeDict)) or isinstance(size, bool)):
            raise ValueError(
                f"`{name}` must be a dict of sides in pixels or an int, got {size!r}; check `{name}` in "
                "preprocessor_config.json or the argument."
            )

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for name in ("size", "pad_size"):
            if isinstance(output.get(name), SizeDict):
                output[name] = size_items(output[name])
        return output

    def _validate_preprocess_kwargs(
        self,
        do_resize: bool | None = None,
        size: SizeDict | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | tuple[float, ...] | None = None,
        image_std: float | tuple[float, ...] | None = None,
        do_pad: bool | None = None,
        pad_size: SizeDict | None = None,
        do_center_crop: bool | None = None,
        data_format: str | ChannelDimension | None = None,
        do_convert_rgb: bool | None = None,
        **kwargs,
    ) -> None:
        # Generic `ImagesKwargs` options that this processor does not implement: refuse them rather than ignore them.
        if do_center_crop:
            raise ValueError("SegRetImageProcessor does not center-crop; `do_center_crop` must be False.")
        if data_format is not None and ChannelDimension(data_format) != ChannelDimension.FIRST:
            raise ValueError(
                f"SegRetImageProcessor returns channels-first pixel values, got data_format={data_format}."
            )
        if do_resize and size is None:
            raise ValueError("`size` must be given when `do_resize=True`.")
        if do_rescale and rescale_factor is None:
            raise ValueError("`rescale_factor` must be given when `do_rescale=True`.")
        if do_normalize and (image_mean is None or image_std is None):
            raise ValueError("`image_mean` and `image_std` must be given when `do_normalize=True`.")
        if do_resize:
            size_keys = set(size_items(size))
            is_fixed_size = size_keys == {"height", "width"}
            is_keep_ratio = bool(size_keys) and size_keys <= {"shortest_edge", "longest_edge"}
            if not (is_fixed_size or is_keep_ratio):
                raise ValueError(
                    "`size` must be a fixed size {'height': h, 'width': w} or a keep-ratio bound "
                    f"{{'shortest_edge': s, 'longest_edge': l}} (either key optional), got {size_items(size)}."
                )
        if do_pad and pad_size is not None and not (pad_size.height and pad_size.width):
            raise ValueError(f"`pad_size` must be {{'height': h, 'width': w}}, got {size_items(pad_size)}.")

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None,
        *,
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
        do_pad: bool,
        pad_size: SizeDict | None,
        do_reduce_labels: bool,
        input_data_format: str | ChannelDimension | None,
        return_tensors: str | TensorType | None,
        do_convert_rgb: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        # `kwargs` holds the remaining generic `ImagesKwargs` (e.g. `device`, `disable_grouping`), which only matter
        # for the torchvision backend; those that would change the output were rejected by the validation above.
        if input_data_format is not None:
            input_data_format = ChannelDimension(input_data_format)
        convert_rgb = do_convert_rgb is not False
        image_arrays = [
            self._to_rgb_array(image, index, input_data_format, convert_rgb=convert_rgb)
            for index, image in enumerate(self._split_batch(images, "images", single_ndims=(2, 3), batch_ndims=(4,)))
        ]
        if do_normalize:
            self._check_normalization_channels(image_arrays, image_mean, image_std, convert_rgb)
        if do_rescale and any(
            image.dtype.kind == "f" and 0 <= image.min() and image.max() <= 1 for image in image_arrays
        ):
            logger.warning_once(
                "Float images with values in [0, 1] are being rescaled by `rescale_factor` again: SegRet takes float "
                "images on the 0..255 scale. Pass `do_rescale=False` if your images are already in [0, 1]."
            )

        normalization = (do_rescale, rescale_factor, do_normalize, image_mean, image_std)
        pixel_values = []
        for image in image_arrays:
            # Normalised at the original size and then resized in float, as the evaluation path does; large images
            # a tile of rows at a time, with the same result.
            if do_resize and resample == PILImageResampling.BILINEAR and is_torch_available():
                image = self._normalize_and_resize_in_tiles(
                    image, self.resized_size(*image.shape[1:], size), *normalization
                )
            else:
                image = self._rescale_and_normalize(image, *normalization)
                if do_resize:
                    image = self.resize(image, size=size, resample=resample)
            pixel_values.append(image)
        data = {"pixel_values": pixel_values}

        if segmentation_maps is not None:
            label_maps = [
                self._to_label_array(segmentation_map, index)
                for index, segmentation_map in enumerate(
                    # A batch of maps is (B, H, W), or (B, 1, H, W) / (B, H, W, 1) with a channel squeezed per map.
                    self._split_batch(segmentation_maps, "segmentation_maps", single_ndims=(2,), batch_ndims=(3, 4))
                )
            ]
            if len(label_maps) != len(image_arrays):
                raise ValueError(f"Got {len(image_arrays)} images but {len(label_maps)} segmentation maps.")
            labels = []
            for index, (label_map, image) in enumerate(zip(label_maps, image_arrays, strict=True)):
                if label_map.shape != image.shape[1:]:
                    raise ValueError(
                        f"Segmentation map {index} has size {label_map.shape} but image {index} has size "
                        f"{image.shape[1:]} (height, width); a map must label its image pixel for pixel."
                    )
                if do_reduce_labels:
                    label_map = self.reduce_label(label_map)
                if do_resize:
                    # Nearest neighbour (OpenCV's rule, as training's augmentation): interpolating class indices
                    # would invent classes along boundaries.
                    label_map = self.resize(label_map[None], size=size, resample=PILImageResampling.NEAREST)[0]
                labels.append(label_map)
            data["labels"] = labels

        if do_pad:
            resized_sizes = [image.shape[1:] for image in data["pixel_values"]]
            data["pixel_values"] = self.pad(data["pixel_values"], pad_size=pad_size, fill_value=IMAGE_PAD_VALUE)
            # 1 on each image's own pixels, 0 on its padding: the model runs every image at its own size, so padding
            # does not change the prediction (see `SegRetForSemanticSegmentation.forward`).
            padded_size = data["pixel_values"][0].shape[1:]
            data["pixel_mask"] = [self._pixel_mask(resized_size, padded_size) for resized_size in resized_sizes]
            if "labels" in data:
                padded_labels = self.pad(
                    [label[None] for label in data["labels"]], pad_size=pad_size, fill_value=LABEL_PAD_VALUE
                )
                data["labels"] = [label[0] for label in padded_labels]

        if return_tensors is not None:
            output_sizes = [image.shape[1:] for image in data["pixel_values"]]
            if len(set(output_sizes)) > 1:
                raise ValueError(
                    f"The images of this batch have different sizes, {output_sizes} (height, width), and cannot be "
                    "stacked into one tensor. Pass `do_pad=True` to pad them to the largest one, use "
                    "a fixed `size={'height': h, 'width': w}`, process the images one at a time, or pass "
                    "`return_tensors=None` to get lists."
                )
            data = {key: np.stack(values) for key, values in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def resize(
        self,
        image: np.ndarray,
        size: SizeDict,
        resample: PILImageResampling | int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """
        Resizes a channels-first (C, H, W) array to `size` (see the class docstring). Float arrays with the default
        `BILINEAR` filter go through [`resize_bilinear`] (PyTorch's bilinear interpolation without antialiasing, the
        resize of the evaluation path; a NumPy version of the same formula where torch is not installed). `NEAREST`
        (segmentation maps) takes OpenCV's rule, [`resize_label`], as training does. Other filters and integer
        arrays are resized one channel at a time by Pillow.
        """
        resample = PILImageResampling.BILINEAR if resample is None else resample
        height, width = image.shape[-2:]
        output_size = self.resized_size(height, width, size)
        if output_size == (height, width):
            return image
        if resample == PILImageResampling.NEAREST:
            return np.stack([resize_label(plane, output_size) for plane in image])
        if resample == PILImageResampling.BILINEAR and image.dtype.kind == "f":
            image = np.ascontiguousarray(image, dtype=np.float32)
            if is_torch_available():
                return resize_bilinear(torch.from_numpy(image)[None], output_size)[0].numpy()
            return _resize_bilinear_numpy(image, output_size)
        return np.stack([_resize_plane(plane, output_size, resample) for plane in image])

    def resized_size(self, height: int, width: int, size: SizeDict | dict[str, int] | None = None) -> tuple[int, int]:
        """(height, width) that `resize` gives an image of `height` x `width`, for `size` (default: `self.size`)."""
        size = dict(self.size if size is None else size)
        if size.get("height") and size.get("width"):
            return size["height"], size["width"]
        return get_keep_ratio_output_size(height, width, size.get("shortest_edge"), size.get("longest_edge"))

    def _normalize_and_resize_in_tiles(
        self,
        image: np.ndarray,
        output_size: tuple[int, int],
        *normalization: Any,
        max_tile_values: int | None = None,
    ) -> np.ndarray:
        """
        `resize(_rescale_and_normalize(image))` with the default bilinear filter, bit for bit, with bounded memory:
        an image of more than `max_tile_values` values is never copied whole in float32.

        PyTorch's bilinear resize weighs, for each output pixel, two input rows of two columns each: rows resized
        along the width alone, by tiles of rows, then resized along the height alone give the same float32 sums
        (the second tap of a resize that keeps a side gets weight exactly 0). Memory: the image, one float tile and
        the image resized along the width (C x H x output width floats).
        """
        max_tile_values = MAX_TILE_VALUES if max_tile_values is None else max_tile_values
        num_channels, height, width = image.shape
        if image.size <= max_tile_values or (height, width) == output_size:
            return self.resize(
                self._rescale_and_normalize(image, *normalization),
                size=SizeDict(height=output_size[0], width=output_size[1]),
            )
        output_width = output_size[1]
        resized_rows = torch.empty((1, num_channels, height, output_width), dtype=torch.float32)
        rows_per_tile = max(1, max_tile_values // (num_channels * width))
        for start in range(0, height, rows_per_tile):
            tile = self._rescale_and_normalize(image[:, start : start + rows_per_tile], *normalization)
            tile = torch.from_numpy(np.ascontiguousarray(tile))[None]
            resized_rows[:, :, start : start + tile.shape[2]] = resize_bilinear(tile, (tile.shape[2], output_width))
        return resize_bilinear(resized_rows, output_size)[0].numpy()

    @staticmethod
    def _rescale_and_normalize(
        image: np.ndarray,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
    ) -> np.ndarray:
        """
        float32 `(image * rescale_factor - mean) / std`. With both steps it is computed on the image's own scale,
        as `(image - mean / rescale_factor) / (std / rescale_factor)` with the constants formed like
        `training/evaluation.py` forms them, so the two paths give the same float32 values.
        """
        image = image.astype(np.float32, order="C")
        if not do_normalize:
            return image * np.float32(rescale_factor) if do_rescale else image
        factor = 1 / rescale_factor if do_rescale else 1.0
        num_channels = image.shape[0]
        mean, std = (
            np.array([float(value) * factor for value in np.broadcast_to(values, (num_channels,))], dtype=np.float32)
            for values in (image_mean, image_std)
        )
        return (image - mean[:, None, None]) / std[:, None, None]

    def pad(
        self,
        images: list[np.ndarray],
        pad_size: SizeDict | dict[str, int] | None = None,
        fill_value: float = 0,
        **kwargs,
    ) -> list[np.ndarray]:
        """Pads (C, H, W) arrays at the bottom and right with `fill_value`, to `pad_size` or else to the largest."""
        if pad_size is not None:
            pad_size = dict(pad_size)
            padded_height, padded_width = pad_size["height"], pad_size["width"]
        else:
            padded_height = max(image.shape[-2] for image in images)
            padded_width = max(image.shape[-1] for image in images)
        padded_images = []
        for index, image in enumerate(images):
            height, width = image.shape[-2:]
            if height > padded_height or width > padded_width:
                raise ValueError(
                    f"Padding dimensions are negative: image {index} has size ({height}, {width}) after resizing, "
                    f"larger than pad_size ({padded_height}, {padded_width})."
                )
            padded = np.full((*image.shape[:-2], padded_height, padded_width), fill_value, dtype=image.dtype)
            padded[..., :height, :width] = image
            padded_images.append(padded)
        return padded_images

    @staticmethod
    def _pixel_mask(image_size: tuple[int, int], padded_size: tuple[int, int]) -> np.ndarray:
        """int64 (H, W) mask of a padded image: 1 on the image, 0 on the padding (bottom and right)."""
        mask = np.zeros(padded_size, dtype=np.int64)
        mask[: image_size[0], : image_size[1]] = 1
        return mask

    def reduce_label(self, label_map: np.ndarray) -> np.ndarray:
        """ADE20K-style label reduction: 0 (unlabelled) -> 255, v -> v - 1, and 255 stays 255."""
        # Work in int64: in uint8, 0 - 1 would wrap around to 255 silently before the 0 -> 255 step is applied.
        label_map = label_map.astype(np.int64)
        label_map[label_map == 0] = LABEL_PAD_VALUE + 1
        label_map = label_map - 1
        # After the shift, an original 255 (ignore) has become 254; put it back.
        label_map[label_map == LABEL_PAD_VALUE - 1] = LABEL_PAD_VALUE
        return label_map

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
        return_segmentation_scores: bool = False,
    ) -> "list[torch.Tensor] | list[BatchFeature]":
        """
        Converts the logits of [`SegRetForSemanticSegmentation`] into per-pixel class indices.

        With `target_sizes` the logits are resized as the evaluation path resizes them (`training/evaluation.py`,
        `inference_segret.segment`): bilinearly (`align_corners=False`) to the size the model was fed, which is
        recomputed from the target size with this processor's `size`, then to the target size; the padding of a
        padded batch (`do_pad=True`) is cropped off first. The argmax is taken over a few classes at a time, so a
        large image needs little memory (see [`semantic_segmentation_from_logits`]). When the target size is not
        the original image size of the processed image (the logits do not fit the size this processor would have
        fed the model), the logits are resized to it in one step.

        Args:
            outputs ([`SemanticSegmenterOutput`]):
                Model outputs; only `outputs.logits` of shape (B, num_labels, h, w) is used.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape (B, 2), *optional*):
                The (height, width) of each prediction: the original image size (the pipeline passes it). Without it
                the maps stay at the logits' resolution (1/4 of the model input for SegRet).
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Also return the resized logits. Each item is then a `SemanticSegmentationPostProcessorOutput` with
                `segmentation` (int64, (height, width)) and `segmentation_scores` (float32, (num_labels, height,
                width)), as transformers' own processors return; the scores take num_labels x height x width floats.

        Returns:
            `list[torch.Tensor]` (one int64 map of shape (height, width) per image), or with
            `return_segmentation_scores=True` a list of `SemanticSegmentationPostProcessorOutput`.
        """
        logits = outputs.logits
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} logits.")
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        results = []
        for index, image_logits in enumerate(logits):
            image_logits = image_logits[None]
            input_size = None
            if target_sizes is not None:
                target_size = tuple(int(side) for side in target_sizes[index])
                input_size = target_size if not self.do_resize else self.resized_size(*target_size)
                logits_size = tuple(math.ceil(side / LOGITS_STRIDE) for side in input_size)
                if all(valid <= side for valid, side in zip(logits_size, image_logits.shape[-2:])):
                    image_logits = image_logits[..., : logits_size[0], : logits_size[1]]  # padding cropped off
                else:
                    input_size = None  # not the processed image's original size: one resize to the target size
            if not return_segmentation_scores:
                output_size = image_logits.shape[-2:] if target_sizes is None else target_size
                results.append(semantic_segmentation_from_logits(image_logits, output_size, input_size)[0])
                continue
            scores = image_logits.float()
            if target_sizes is not None:
                scores = resize_bilinear(
                    scores if input_size is None else resize_bilinear(scores, input_size), target_size
                )
            results.append(
                SemanticSegmentationPostProcessorOutput(
                    data={"segmentation": scores[0].argmax(dim=0), "segmentation_scores": scores[0]}
                )
            )
        return results

    @staticmethod
    def _split_batch(inputs: Any, name: str, single_ndims: tuple[int, ...], batch_ndims: tuple[int, ...]) -> list[Any]:
        """Turns one item, a batch array / tensor or a list of items into a list of items (checked later, by index)."""
        if isinstance(inputs, Image.Image):
            return [inputs]
        if isinstance(inputs, (list, tuple)):
            if len(inputs) == 0:
                raise ValueError(f"`{name}` is an empty list.")
            return list(inputs)
        if isinstance(inputs, np.ndarray) or (is_torch_available() and isinstance(inputs, torch.Tensor)):
            if inputs.ndim in single_ndims:
                return [inputs]
            if inputs.ndim in batch_ndims:
                return list(inputs)
            raise ValueError(
                f"`{name}` has {inputs.ndim} dimensions (shape {tuple(inputs.shape)}); expected a single item with "
                f"{' or '.join(map(str, single_ndims))} dimensions or a batch with "
                f"{' or '.join(map(str, batch_ndims))}."
            )
        raise TypeError(
            f"`{name}` must be a PIL image, a NumPy array, a torch tensor or a list of them, "
            f"got {type(inputs).__name__}."
        )

    @staticmethod
    def _to_numpy(item: Any, description: str) -> np.ndarray:
        """Returns a NumPy view of an array or tensor; raises a `TypeError` for anything else."""
        if isinstance(item, np.ndarray):
            return item
        if is_torch_available() and isinstance(item, torch.Tensor):
            item = item.detach().cpu()
            # NumPy has no bfloat16; float32 holds every bfloat16 / float16 value exactly.
            return (item.float() if item.is_floating_point() else item).numpy()
        raise TypeError(
            f"{description} is a {type(item).__name__}; expected a PIL image, a NumPy array or a torch tensor."
        )

    def _to_rgb_array(
        self, image: Any, index: int, input_data_format: ChannelDimension | None, convert_rgb: bool = True
    ) -> np.ndarray:
        """Converts one image to a (3, H, W) `uint8` or float32 (0..255 scale) array, by the class docstring's rules.
        With `convert_rgb=False` (`do_convert_rgb=False`) the image keeps its own channels: (C, H, W)."""
        description = f"Image {index}"
        if isinstance(image, Image.Image):
            if image.width == 0 or image.height == 0:
                raise ValueError(f"{description} is empty (size {image.width}x{image.height}).")
            if image.mode == "F":
                image_array = np.asarray(exif_transposed(image), dtype=np.float32)
            elif not convert_rgb and image.mode not in ("P", "PA"):
                image_array = np.asarray(exif_transposed(image))  # the bands as stored (palette images go via RGB)
            else:
                try:
                    image_array = pil_image_to_rgb(image)
                except ValueError as error:
                    raise ValueError(f"{description} {error}") from error
            # The channel axis of `np.asarray(pil_image)` is always the last one.
            input_data_format = ChannelDimension.LAST
            prefer_channels_first = False
        else:
            prefer_channels_first = not isinstance(image, np.ndarray)
            image_array = self._to_numpy(image, description)

        if image_array.ndim not in (2, 3):
            raise ValueError(
                f"{description} has {image_array.ndim} dimensions (shape {image_array.shape}); a single image must be "
                "(H, W), (H, W, C) or (C, H, W). Pass a batch as one 4-D array or as a list of images."
            )
        if image_array.size == 0:
            raise ValueError(f"{description} is empty (shape {image_array.shape}).")
        if image_array.ndim == 2:
            image_array = image_array[None]
        else:
            channel_axis = self._infer_channel_axis(image_array.shape, input_data_format, prefer_channels_first)
            if channel_axis is None:
                raise ValueError(
                    f"{description} has shape {image_array.shape}; expected 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 "
                    "(RGBA) channels in its first or last dimension."
                )
            image_array = np.moveaxis(image_array, channel_axis, 0)

        num_channels = image_array.shape[0]
        if convert_rgb:
            # 1 channel: gray; 2: gray + alpha; 3: RGB; 4: RGBA. Alpha is dropped.
            image_array = np.repeat(image_array[:1], 3, axis=0) if num_channels <= 2 else image_array[:3]

        if image_array.dtype == np.uint8:
            return image_array  # a view: a copy would double the memory of a huge image
        if image_array.dtype == np.bool_:
            return image_array.astype(np.uint8) * 255
        if np.issubdtype(image_array.dtype, np.integer):
            return integer_image_to_uint8(image_array, description)
        if np.issubdtype(image_array.dtype, np.floating):
            image_array = image_array.astype(np.float32, copy=False)  # float32 input: a view, not a copy
            # One NaN or inf would make every logit non-finite and the prediction all class 0, without a word.
            num_non_finite = int(np.size(image_array) - np.count_nonzero(np.isfinite(image_array)))
            if num_non_finite:
                raise ValueError(
                    f"{description} has {num_non_finite} non-finite values (NaN or inf); replace them first, "
                    "e.g. with `numpy.nan_to_num`."
                )
            return image_array
        raise TypeError(f"{description} has unsupported dtype {image_array.dtype}.")

    @staticmethod
    def _check_normalization_channels(
        image_arrays: list[np.ndarray],
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
        convert_rgb: bool,
    ) -> None:
        """Every (C, H, W) image needs one `image_mean` and one `image_std` value per channel (or a single number)."""
        for index, image in enumerate(image_arrays):
            num_channels = image.shape[0]
            for name, values in (("image_mean", image_mean), ("image_std", image_std)):
                if isinstance(values, (int, float)) or len(values) == num_channels:
                    continue
                if convert_rgb:
                    channels = f"{num_channels} channels after conversion to RGB"
                    hint = (
                        ", or do_convert_rgb=False to keep an image's own channels (e.g. RGBA, or RGB + near-infrared "
                        "for a num_channels=4 model)"
                    )
                else:
                    channels, hint = f"{num_channels} channels (do_convert_rgb=False keeps them as given)", ""
                raise ValueError(
                    f"Image {index} has {channels} but {name} has {len(values)} values {list(values)}: pass one "
                    f"value per channel{hint}."
                )

    @staticmethod
    def _infer_channel_axis(
        shape: tuple[int, ...], input_data_format: ChannelDimension | None, prefer_channels_first: bool
    ) -> int | None:
        """Channel axis (0 or 2) of a 3-D image, or None when neither end has a supported number of channels."""
        if input_data_format is not None:
            channel_axis = 0 if input_data_format == ChannelDimension.FIRST else 2
            return channel_axis if shape[channel_axis] in _SUPPORTED_NUM_CHANNELS else None
        first_is_channels = shape[0] in _SUPPORTED_NUM_CHANNELS
        last_is_channels = shape[2] in _SUPPORTED_NUM_CHANNELS
        if first_is_channels and last_is_channels:
            return 0 if prefer_channels_first else 2
        if first_is_channels:
            return 0
        if last_is_channels:
            return 2
        return None

    def _to_label_array(self, segmentation_map: Any, index: int) -> np.ndarray:
        """Converts one segmentation map to an int64 (H, W) array of class indices."""
        description = f"Segmentation map {index}"
        if isinstance(segmentation_map, Image.Image):
            if len(segmentation_map.getbands()) != 1:
                raise ValueError(
                    f"{description} has PIL mode {segmentation_map.mode!r}; expected a single-band map of class "
                    "indices (L, P, I, I;16, 1 or F). Convert colour-coded maps to class indices first."
                )
            # `np.asarray` of a "P" image gives the palette indices, which are the classes; converting the map to
            # "L" or "RGB" would replace them by colours. An EXIF orientation turns the map as it turns its image.
            label_array = np.asarray(exif_transposed(segmentation_map))
        else:
            label_array = self._to_numpy(segmentation_map, description)
        if label_array.ndim == 3 and 1 in (label_array.shape[0], label_array.shape[-1]):
            label_array = label_array.squeeze(0 if label_array.shape[0] == 1 else -1)
        if label_array.ndim != 2:
            raise ValueError(
                f"{description} has shape {label_array.shape}; expected a 2-D (H, W) map of class indices."
            )
        if label_array.size == 0:
            raise ValueError(f"{description} is empty (shape {label_array.shape}).")
        if np.issubdtype(label_array.dtype, np.floating):
            if not np.all(np.isfinite(label_array)) or np.any(label_array != np.round(label_array)):
                raise ValueError(f"{description} has non-integer values; class indices must be integers.")
        elif not (np.issubdtype(label_array.dtype, np.integer) or label_array.dtype == np.bool_):
            raise TypeError(f"{description} has unsupported dtype {label_array.dtype}.")
        return label_array.astype(np.int64)


def integer_image_to_uint8(image: np.ndarray, description: str = "The image") -> np.ndarray:
    """An integer image on SegRet's 8-bit scale. uint16 is 16-bit data, read as `round(v / 257)` like a 16-bit PNG;
    other integer types hold 8-bit values when all are in 0..255 and 16-bit values (read alike) when the largest is
    in 256..65535. Anything else has no known scale and is an error."""
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    low, high = int(image.min()), int(image.max())
    if low < 0 or high > 65535:
        raise ValueError(
            f"{description} ({image.dtype}) has values from {low} to {high}, outside 0..65535: SegRet reads integer "
            "images as 8-bit (0..255) or 16-bit (0..65535) samples. Scale it to 0..255 (uint8) first, or pass "
            "float32 values on the 0..255 scale."
        )
    if image.dtype == np.uint16 or high > 255:
        # 16-bit to 8-bit: 65535 / 257 = 255 exactly, and v / 257 is never exactly halfway between integers.
        return np.round(image / np.float32(257)).astype(np.uint8)
    return image.astype(np.uint8)


def exif_transposed(image: Image.Image) -> Image.Image:
    """`image` as displayed: turned by its EXIF orientation tag, as transformers' `load_image` (the pipeline) does.

    Phone photos store the sensor's pixels plus a tag; reading them without it gives a rotated image.
    """
    if image.getexif().get(0x0112, 1) in (None, 1):  # 0x0112: Orientation; 1 = upright
        return image
    from PIL import ImageOps

    return ImageOps.exif_transpose(image)


def pil_image_to_rgb(image: Image.Image) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array of a PIL image, EXIF orientation applied; 16-bit samples are scaled by 1/257.

    Grey, palette, gray + alpha and RGBA images are converted to RGB (alpha dropped). Shared by the image processor and
    the training data pipeline, so a 16-bit PNG reaches the model on the same 0..255 scale through both.
    """
    image = exif_transposed(image)
    if image.mode in _PIL_16_BIT_MODES:
        samples = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        # 16-bit to 8-bit: 65535 / 257 = 255 exactly, and v / 257 is never exactly halfway between integers.
        grey = np.round(samples / 257).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    try:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except ValueError as error:
        raise ValueError(f"has PIL mode {image.mode!r}, which cannot be converted to RGB.") from error


__all__ = ["SegRetImageProcessor", "get_keep_ratio_output_size", "resize_label", "scale_keeping_ratio"]
