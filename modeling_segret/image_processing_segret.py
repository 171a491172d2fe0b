# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Image processor for SegRet: PIL + NumPy preprocessing (no torchvision), torch only for post-processing.

This file is copied flat into Hub repositories as remote code, so it imports only the standard library, NumPy,
Pillow, transformers and (guarded) torch.
"""

import math
from typing import Any

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType, is_torch_available, logging

if is_torch_available():
    import torch
    import torch.nn.functional as F


logger = logging.get_logger(__name__)

# Padding values, as in MMSegmentation's `Pad` / `SegDataPreProcessor`: padded image pixels are 0 *after*
# normalisation and padded label pixels get the ignore index (`SegRetConfig.semantic_loss_ignore_index`).
IMAGE_PAD_VALUE = 0.0
LABEL_PAD_VALUE = 255

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


class SegRetImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to reduce the labels of the segmentation maps by one, for datasets whose 0 is an "other / unlabelled"
        value rather than a class (ADE20K): 0 becomes 255 (ignored), every other value `v` becomes `v - 1` and 255
        stays 255.
    """

    do_reduce_labels: bool | None


class SegRetImageProcessor(PilBackend):
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
            Pillow filter for images. Segmentation maps always use `NEAREST`. Pillow's bilinear filter antialiases
            when downscaling, unlike OpenCV's `INTER_LINEAR` used by MMSegmentation.
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
    tensors are requested. With `do_pad=True` the logits of padded images cover the padding too: crop them to the
    resized image size before resizing them to the original size.

    Images can be PIL images, NumPy arrays or torch tensors, and are converted to 3-channel RGB as follows (PIL
    images and maps are first turned upright by their EXIF orientation, as transformers' `load_image` does; NaN or
    inf pixel values are an error):

    - PIL "RGB" is kept; "L" and "1" are replicated to three channels; "P" goes through its palette; the alpha or
      padding band of "RGBA", "RGBX", "LA", "PA" and "RGBa" is dropped (not composited, like OpenCV's `imread` in
      MMSegmentation and Pillow's `convert("RGB")`); "CMYK", "YCbCr", "LAB" and "HSV" use Pillow's conversion.
    - 16-bit data (PIL "I;16*" and "I", NumPy / torch `uint16`) is clipped to [0, 65535] and mapped to 8 bit with
      `round(value / 257)`, so 65535 becomes 255.
    - Arrays and tensors have shape (H, W), (H, W, C) or (C, H, W) with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or
      4 (RGBA). The channel axis is the last one for NumPy arrays and the first one for torch tensors when both
      ends could be channels; pass `input_data_format` to choose. `uint8` is kept, `bool` becomes 0 / 255, and other
      integer or float dtypes (and PIL "F") are used as they are, on the 0..255 scale: pass `do_rescale=False` for
      images already in [0, 1].

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

    def __init__(self, **kwargs: Unpack[SegRetImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)

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
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _validate_preprocess_kwargs(
        self,
        do_resize: bool | None = None,
        size: SizeDict | None = None,
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
        if do_convert_rgb is False:
            raise ValueError(
                "SegRetImageProcessor always converts images to RGB (SegRet takes 3 channels); "
                "do_convert_rgb=False is not supported."
            )
        super()._validate_preprocess_kwargs(do_resize=do_resize, size=size, **kwargs)
        if do_resize:
            size_keys = {key for key, _ in size}
            is_fixed_size = size_keys == {"height", "width"}
            is_keep_ratio = bool(size_keys) and size_keys <= {"shortest_edge", "longest_edge"}
            if not (is_fixed_size or is_keep_ratio):
                raise ValueError(
                    "`size` must be a fixed size {'height': h, 'width': w} or a keep-ratio bound "
                    f"{{'shortest_edge': s, 'longest_edge': l}} (either key optional), got {dict(size)}."
                )
        if do_pad and pad_size is not None and not (pad_size.height and pad_size.width):
            raise ValueError(f"`pad_size` must be {{'height': h, 'width': w}}, got {dict(pad_size)}.")

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
        **kwargs,
    ) -> BatchFeature:
        # `kwargs` holds the remaining generic `ImagesKwargs` (e.g. `device`, `disable_grouping`), which only matter
        # for the torchvision backend; those that would change the output were rejected by the validation above.
        if input_data_format is not None:
            input_data_format = ChannelDimension(input_data_format)
        image_arrays = [
            self._to_rgb_array(image, index, input_data_format)
            for index, image in enumerate(self._split_batch(images, "images", single_ndims=(2, 3), batch_ndims=(4,)))
        ]
        if do_rescale and any(
            image.dtype.kind == "f" and 0 <= image.min() and image.max() <= 1 for image in image_arrays
        ):
            logger.warning_once(
                "Float images with values in [0, 1] are being rescaled by `rescale_factor` again: SegRet takes float "
                "images on the 0..255 scale. Pass `do_rescale=False` if your images are already in [0, 1]."
            )

        pixel_values = []
        for image in image_arrays:
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            image = image.astype(np.float32)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
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
                    # Nearest neighbour: interpolating class indices would invent classes along boundaries.
                    label_map = self.resize(label_map[None], size=size, resample=PILImageResampling.NEAREST)[0]
                labels.append(label_map)
            data["labels"] = labels

        if do_pad:
            data["pixel_values"] = self.pad(data["pixel_values"], pad_size=pad_size, fill_value=IMAGE_PAD_VALUE)
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
        Resizes a channels-first (C, H, W) array to `size` (see the class docstring), one channel at a time with
        Pillow. `uint8` stays `uint8` (rounded, as in OpenCV), integer arrays use `I` mode (use `NEAREST` for labels)
        and float arrays are resized in float32 without quantisation.
        """
        resample = PILImageResampling.BILINEAR if resample is None else resample
        height, width = image.shape[-2:]
        if size.height and size.width:
            output_size = (size.height, size.width)
        else:
            output_size = get_keep_ratio_output_size(height, width, size.shortest_edge, size.longest_edge)
        if output_size == (height, width):
            return image
        return np.stack([_resize_plane(plane, output_size, resample) for plane in image])

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
        self, outputs: Any, target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None
    ) -> "list[torch.Tensor]":
        """
        Converts the logits of [`SegRetForSemanticSegmentation`] into per-pixel class indices.

        Args:
            outputs ([`SemanticSegmenterOutput`]):
                Model outputs; only `outputs.logits` of shape (B, num_labels, h, w) is used.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape (B, 2), *optional*):
                The (height, width) of each prediction, normally the original image size. The logits are resized
                bilinearly (`align_corners=False`) to it before the argmax. Without it the maps stay at the logits'
                resolution (1/4 of the model input for SegRet).

        Returns:
            `list[torch.Tensor]`: one int64 map of shape (height, width) per image.
        """
        logits = outputs.logits
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != len(logits):
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} logits.")
        segmentation_maps = []
        for image_logits, target_size in zip(logits, target_sizes, strict=True):
            target_height, target_width = (int(side) for side in target_size)
            # Upsample in float32: low-precision logits (bf16) would create argmax ties after interpolation.
            upsampled_logits = F.interpolate(
                image_logits[None].float(), size=(target_height, target_width), mode="bilinear", align_corners=False
            )
            segmentation_maps.append(upsampled_logits[0].argmax(dim=0))
        return segmentation_maps

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

    def _to_rgb_array(self, image: Any, index: int, input_data_format: ChannelDimension | None) -> np.ndarray:
        """Converts one image to a (3, H, W) `uint8` or float32 (0..255 scale) array, by the class docstring's rules."""
        description = f"Image {index}"
        if isinstance(image, Image.Image):
            if image.width == 0 or image.height == 0:
                raise ValueError(f"{description} is empty (size {image.width}x{image.height}).")
            if image.mode == "F":
                image_array = np.asarray(exif_transposed(image), dtype=np.float32)
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
        # 1 channel: gray; 2: gray + alpha; 3: RGB; 4: RGBA. Alpha is dropped.
        image_array = np.repeat(image_array[:1], 3, axis=0) if num_channels <= 2 else image_array[:3]

        if image_array.dtype == np.uint8:
            return np.ascontiguousarray(image_array)
        if image_array.dtype == np.bool_:
            return image_array.astype(np.uint8) * 255
        if image_array.dtype == np.uint16:
            # 16-bit to 8-bit: 65535 / 257 = 255 exactly, and v / 257 is never exactly halfway between integers.
            return np.round(image_array / 257).astype(np.uint8)
        if np.issubdtype(image_array.dtype, np.integer) or np.issubdtype(image_array.dtype, np.floating):
            image_array = image_array.astype(np.float32)
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


__all__ = ["SegRetImageProcessor", "get_keep_ratio_output_size", "scale_keeping_ratio"]
