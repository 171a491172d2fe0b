# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Tests for `SegRetImageProcessor`: sizes, normalisation, input conversion, labels, post-processing, save / load."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor
from transformers.dynamic_module_utils import check_imports, get_relative_imports

from modeling_segret import SegRetConfig
from modeling_segret.image_processing_segret import (
    SegRetImageProcessor,
    _resize_bilinear_numpy,
    get_keep_ratio_output_size,
    resize_bilinear,
    semantic_segmentation_from_logits,
)

PROCESSOR_FILE = Path(__file__).resolve().parents[1] / "modeling_segret" / "image_processing_segret.py"
COMPAT_FILE = PROCESSOR_FILE.with_name("compat_segret.py")
MMSEG_MEAN = np.array([123.675, 116.28, 103.53])
MMSEG_STD = np.array([58.395, 57.12, 57.375])


def mmcv_rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Reference: mmcv's `rescale_size((w, h), scale)` for a tuple scale; returns (new_w, new_h)."""
    max_long_edge, max_short_edge = max(scale), min(scale)
    scale_factor = min(max_long_edge / max(height, width), max_short_edge / min(height, width))
    return int(width * scale_factor + 0.5), int(height * scale_factor + 0.5)


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def raw_pixels(processor: SegRetImageProcessor, image, **kwargs) -> np.ndarray:
    """(3, H, W) pixel values with resizing, rescaling and normalisation switched off: the converted RGB values."""
    kwargs = {"do_resize": False, "do_rescale": False, "do_normalize": False, "return_tensors": "np", **kwargs}
    return processor(image, **kwargs)["pixel_values"][0]


@pytest.fixture
def processor() -> SegRetImageProcessor:
    return SegRetImageProcessor()


# --- normalisation ---------------------------------------------------------------------------------------------


def test_normalisation_matches_mmseg_formula(processor):
    image = random_rgb(7, 9)
    pixel_values = processor(Image.fromarray(image), do_resize=False, return_tensors="pt")["pixel_values"]
    assert pixel_values.dtype == torch.float32
    assert tuple(pixel_values.shape) == (1, 3, 7, 9)
    expected = (image - MMSEG_MEAN) / MMSEG_STD  # MMSegmentation's Normalize on 0..255 pixels
    np.testing.assert_allclose(pixel_values[0].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_pipeline_call_with_a_list_of_one_image(processor):
    """The image-segmentation pipeline calls `image_processor(images=[image], return_tensors="pt")`."""
    inputs = processor(images=[Image.fromarray(random_rgb(30, 40))], return_tensors="pt")
    assert list(inputs.keys()) == ["pixel_values"]
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 512, 683)


def test_return_tensors_none_gives_arrays(processor):
    inputs = processor([random_rgb(6, 8), random_rgb(6, 8, seed=1)], do_resize=False)
    assert [value.shape for value in inputs["pixel_values"]] == [(3, 6, 8), (3, 6, 8)]
    assert all(value.dtype == np.float32 for value in inputs["pixel_values"])


# --- sizes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "scale", "expected_width", "expected_height"),
    [
        (640, 480, (2048, 512), 683, 512),  # short side to 512
        (683, 512, (2048, 512), 683, 512),  # already there
        (480, 640, (2048, 512), 512, 683),  # portrait
        (512, 683, (2048, 512), 512, 683),
        (2048, 1024, (2048, 1024), 2048, 1024),  # Cityscapes: identity
        (3000, 500, (2048, 512), 2048, 341),  # long side capped at 2048
        (300, 2500, (2048, 512), 246, 2048),  # tall portrait, long side capped
        (256, 256, (2048, 512), 512, 512),  # small images are scaled up
        (1200, 900, (2560, 640), 853, 640),  # ADE20K-640 recipe
    ],
)
def test_keep_ratio_size_matches_mmcv(width, height, scale, expected_width, expected_height):
    assert mmcv_rescale_size(width, height, scale) == (expected_width, expected_height)
    output_size = get_keep_ratio_output_size(height, width, shortest_edge=min(scale), longest_edge=max(scale))
    assert output_size == (expected_height, expected_width)


@pytest.mark.parametrize(("width", "height"), [(64, 48), (48, 64), (100, 30), (30, 100), (17, 23), (40, 40)])
def test_processor_keep_ratio_resize_matches_mmcv(width, height):
    processor = SegRetImageProcessor(size={"shortest_edge": 32, "longest_edge": 80})
    label_map = np.zeros((height, width), dtype=np.uint8)
    inputs = processor(random_rgb(height, width), segmentation_maps=label_map, return_tensors="pt")
    expected_width, expected_height = mmcv_rescale_size(width, height, (80, 32))
    assert tuple(inputs["pixel_values"].shape) == (1, 3, expected_height, expected_width)
    assert tuple(inputs["labels"].shape) == (1, expected_height, expected_width)


def test_keep_ratio_with_one_bound_and_extreme_aspect_ratio():
    assert get_keep_ratio_output_size(480, 640, shortest_edge=256, longest_edge=None) == (256, 341)
    assert get_keep_ratio_output_size(480, 640, shortest_edge=None, longest_edge=320) == (240, 320)
    # mmcv would give a 0-pixel side here; at least one pixel is kept.
    assert get_keep_ratio_output_size(1, 10000, shortest_edge=512, longest_edge=2048) == (1, 2048)


def test_fixed_size_and_no_resize():
    processor = SegRetImageProcessor(size={"height": 32, "width": 48})
    for height, width in [(10, 10), (100, 30), (64, 48)]:
        inputs = processor(random_rgb(height, width), segmentation_maps=np.zeros((height, width)), return_tensors="pt")
        assert tuple(inputs["pixel_values"].shape) == (1, 3, 32, 48)
        assert tuple(inputs["labels"].shape) == (1, 32, 48)
    no_resize = processor(random_rgb(20, 30), do_resize=False, return_tensors="pt")
    assert tuple(no_resize["pixel_values"].shape) == (1, 3, 20, 30)
    square = SegRetImageProcessor(size=40)(random_rgb(20, 30), return_tensors="pt")  # an int is a square size
    assert tuple(square["pixel_values"].shape) == (1, 3, 40, 40)


def test_batch_of_different_sizes_pads_or_raises():
    processor = SegRetImageProcessor(size={"shortest_edge": 16, "longest_edge": 64})
    images = [random_rgb(16, 32), random_rgb(16, 16, seed=1)]
    label_maps = [np.full((16, 32), 3, dtype=np.uint8), np.full((16, 16), 4, dtype=np.uint8)]

    with pytest.raises(ValueError, match=r"different sizes, \[\(16, 32\), \(16, 16\)\].*do_pad=True"):
        processor(images, return_tensors="pt")
    as_lists = processor(images)
    assert [value.shape for value in as_lists["pixel_values"]] == [(3, 16, 32), (3, 16, 16)]

    padded = processor(images, segmentation_maps=label_maps, do_pad=True, return_tensors="pt")
    assert tuple(padded["pixel_values"].shape) == (2, 3, 16, 32)
    unpadded = processor(images[1], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(padded["pixel_values"][1, :, :, :16], unpadded)
    assert torch.all(padded["pixel_values"][1, :, :, 16:] == 0)  # 0 after normalisation
    assert torch.all(padded["labels"][1, :, :16] == 4) and torch.all(padded["labels"][1, :, 16:] == 255)

    to_pad_size = processor(images, segmentation_maps=label_maps, do_pad=True, pad_size={"height": 20, "width": 40})
    assert [value.shape for value in to_pad_size["labels"]] == [(20, 40), (20, 40)]


# --- image conversion ------------------------------------------------------------------------------------------


def gray_to_rgb(values) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.float32)[None], 3, axis=0)


def test_pil_modes_convert_to_documented_rgb(processor):
    gray = np.array([[0, 64, 255]], dtype=np.uint8)
    rgb = np.array([[[255, 0, 0], [0, 128, 255], [10, 20, 30]]], dtype=np.uint8)
    expected_rgb = rgb.transpose(2, 0, 1).astype(np.float32)

    np.testing.assert_array_equal(raw_pixels(processor, Image.fromarray(rgb)), expected_rgb)
    np.testing.assert_array_equal(raw_pixels(processor, Image.fromarray(gray)), gray_to_rgb(gray))
    np.testing.assert_array_equal(raw_pixels(processor, Image.fromarray(gray > 100)), gray_to_rgb([[0, 0, 255]]))

    # Alpha is dropped, not composited: a fully transparent pixel keeps its colour.
    alpha = np.array([[0, 128, 255]], dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, alpha]))
    assert rgba.mode == "RGBA"
    np.testing.assert_array_equal(raw_pixels(processor, rgba), expected_rgb)
    gray_alpha = Image.fromarray(np.dstack([gray, alpha]))
    assert gray_alpha.mode == "LA"
    np.testing.assert_array_equal(raw_pixels(processor, gray_alpha), gray_to_rgb(gray))

    palette_image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    palette_image.putpalette([255, 0, 0, 0, 128, 255, 10, 20, 30] + [0] * 759)
    np.testing.assert_array_equal(raw_pixels(processor, palette_image), expected_rgb)

    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])  # white, cyan, black
    expected_cmyk = np.array([[[255, 255, 255], [0, 255, 255], [0, 0, 0]]], dtype=np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(raw_pixels(processor, cmyk), expected_cmyk)


def test_16_bit_and_32_bit_pil_modes(processor):
    samples_16_bit = np.array([[0, 257, 1000, 65535]], dtype=np.uint16)
    image_16_bit = Image.fromarray(samples_16_bit)
    assert image_16_bit.mode == "I;16"
    # round(v / 257): 65535 -> 255, 1000 -> 3.89 -> 4
    expected = gray_to_rgb([[0, 1, 4, 255]])
    np.testing.assert_array_equal(raw_pixels(processor, image_16_bit), expected)
    np.testing.assert_array_equal(raw_pixels(processor, samples_16_bit), expected)  # uint16 arrays: same rule

    image_32_bit = Image.fromarray(np.array([[-5, 514, 65535, 70000]], dtype=np.int32))
    assert image_32_bit.mode == "I"  # treated as 16-bit data, clipped to [0, 65535]
    np.testing.assert_array_equal(raw_pixels(processor, image_32_bit), gray_to_rgb([[0, 2, 255, 255]]))

    image_float = Image.fromarray(np.array([[0.5, 12.25, 300.0]], dtype=np.float32))
    assert image_float.mode == "F"  # used as it is, on the 0..255 scale
    np.testing.assert_array_equal(raw_pixels(processor, image_float), gray_to_rgb([[0.5, 12.25, 300.0]]))


def test_numpy_and_torch_layouts_and_dtypes(processor):
    rgb = random_rgb(5, 6)
    expected = rgb.transpose(2, 0, 1).astype(np.float32)
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    np.testing.assert_array_equal(raw_pixels(processor, rgb), expected)  # (H, W, C)
    np.testing.assert_array_equal(raw_pixels(processor, chw), expected)  # (C, H, W)
    np.testing.assert_array_equal(raw_pixels(processor, torch.from_numpy(chw)), expected)
    np.testing.assert_array_equal(raw_pixels(processor, torch.from_numpy(chw).float()), expected)
    np.testing.assert_array_equal(raw_pixels(processor, torch.from_numpy(chw).bfloat16()), expected)
    np.testing.assert_array_equal(raw_pixels(processor, rgb.astype(np.float64)), expected)
    np.testing.assert_array_equal(raw_pixels(processor, np.dstack([rgb, rgb[..., :1]])), expected)  # RGBA
    np.testing.assert_array_equal(raw_pixels(processor, rgb[..., 0]), gray_to_rgb(rgb[..., 0]))  # (H, W)
    np.testing.assert_array_equal(raw_pixels(processor, rgb[..., :2]), gray_to_rgb(rgb[..., 0]))  # gray + alpha
    np.testing.assert_array_equal(raw_pixels(processor, rgb[..., 0] > 127), gray_to_rgb((rgb[..., 0] > 127) * 255))

    # Both ends could be channels: NumPy defaults to channels-last, torch to channels-first, unless told otherwise.
    ambiguous = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    np.testing.assert_array_equal(raw_pixels(processor, ambiguous), ambiguous.transpose(2, 0, 1))
    np.testing.assert_array_equal(raw_pixels(processor, torch.from_numpy(ambiguous)), ambiguous)
    np.testing.assert_array_equal(
        raw_pixels(processor, ambiguous, input_data_format="channels_first"), ambiguous.astype(np.float32)
    )

    batch = processor(torch.from_numpy(np.stack([chw, chw])), do_resize=False, return_tensors="pt")["pixel_values"]
    assert tuple(batch.shape) == (2, 3, 5, 6)


def test_resize_is_the_evaluation_paths_float_bilinear(processor):
    """Images are normalised at their own size, then resized in float32 by `resize_bilinear` (PyTorch's bilinear,
    align_corners=False, no antialiasing), as `inference_segret` resizes them: bit for bit, up and down."""
    image = random_rgb(40, 30)
    mean, std = (torch.tensor(values, dtype=torch.float32).view(3, 1, 1) for values in (MMSEG_MEAN, MMSEG_STD))
    normalised = (torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std
    for size in [{"height": 17, "width": 23}, {"height": 97, "width": 61}]:
        pixel_values = processor(image, size=size, return_tensors="pt")["pixel_values"]
        expected = F.interpolate(normalised[None], size=(size["height"], size["width"]), mode="bilinear")
        assert torch.equal(pixel_values, expected)
        assert torch.equal(pixel_values, resize_bilinear(normalised[None], (size["height"], size["width"])))
    # Float images are resized without quantisation.
    resized_float = raw_pixels(processor, image.astype(np.float32), do_resize=True, size={"height": 17, "width": 23})
    resized_shifted = raw_pixels(
        processor, image.astype(np.float32) + 0.25, do_resize=True, size={"height": 17, "width": 23}
    )
    np.testing.assert_allclose(resized_shifted, resized_float + 0.25, atol=1e-3)


@pytest.mark.parametrize(
    ("source", "target"), [((40, 30), (17, 23)), ((7, 9), (50, 13)), ((64, 64), (32, 32)), ((5, 5), (5, 9))]
)
def test_numpy_resize_without_torch_matches_torch(source, target):
    """Where torch is not installed the processor resizes with a NumPy version of the same formula."""
    image = np.random.default_rng(0).normal(size=(3, *source)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(image)[None], size=target, mode="bilinear")[0].numpy()
    np.testing.assert_allclose(_resize_bilinear_numpy(image, target), expected, rtol=0, atol=2e-6)


# --- labels ----------------------------------------------------------------------------------------------------


def test_reduce_labels_semantics(processor):
    label_map = np.array([[0, 1, 2], [149, 150, 255]], dtype=np.uint8)
    image = random_rgb(2, 3)
    reduced = processor(image, segmentation_maps=label_map, do_resize=False, do_reduce_labels=True, return_tensors="pt")
    assert reduced["labels"].dtype == torch.int64
    assert reduced["labels"][0].tolist() == [[255, 0, 1], [148, 149, 255]]
    kept = processor(image, segmentation_maps=label_map, do_resize=False, return_tensors="pt")
    assert kept["labels"][0].tolist() == label_map.tolist()
    assert processor.reduce_label(np.array([0, 1, 150, 255], dtype=np.uint8)).tolist() == [255, 0, 149, 255]


def test_palette_label_maps_keep_their_indices(processor):
    indices = np.array([[0, 1, 2], [3, 150, 255]], dtype=np.uint8)
    label_map = Image.fromarray(indices, mode="P")
    label_map.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))  # colours unrelated to the indices
    labels = processor(random_rgb(2, 3), segmentation_maps=label_map, do_resize=False, return_tensors="pt")["labels"]
    assert labels[0].tolist() == indices.tolist()


@pytest.mark.parametrize(
    "label_map",
    [
        Image.fromarray(np.array([[0, 7], [200, 7]], dtype=np.uint8)),  # "L"
        Image.fromarray(np.array([[0, 7], [200, 7]], dtype=np.int32)),  # "I"
        Image.fromarray(np.array([[0, 7], [200, 7]], dtype=np.uint16)),  # "I;16"
        torch.tensor([[[0, 7], [200, 7]]]),  # (1, H, W) int64
        [np.array([[[0], [7]], [[200], [7]]], dtype=np.float32)],  # list of (H, W, 1) integer-valued float maps
    ],
)
def test_label_map_inputs(processor, label_map):
    labels = processor(random_rgb(2, 2), segmentation_maps=label_map, do_resize=False, return_tensors="pt")["labels"]
    assert labels.dtype == torch.int64
    assert labels[0].tolist() == [[0, 7], [200, 7]]


def test_labels_are_resized_with_nearest_neighbour():
    rng = np.random.default_rng(0)
    label_map = rng.choice(np.array([0, 7, 200], dtype=np.uint8), size=(37, 53))
    for size in ({"height": 61, "width": 29}, {"shortest_edge": 16, "longest_edge": 100}, {"shortest_edge": 100}):
        processor = SegRetImageProcessor(size=size)
        inputs = processor(random_rgb(37, 53), segmentation_maps=label_map, return_tensors="pt")
        assert inputs["labels"].shape[-2:] == inputs["pixel_values"].shape[-2:]
        assert set(inputs["labels"].unique().tolist()) <= {0, 7, 200}
    # Nearest neighbour, OpenCV's convention (training's): output pixel i samples input pixel floor(i * in / out),
    # where Pillow would take floor((i + 0.5) * in / out), rows [1, 3, 5] and columns [1, 3] here.
    labels = SegRetImageProcessor(size={"height": 3, "width": 2})(
        random_rgb(6, 4), segmentation_maps=np.arange(24).reshape(6, 4), return_tensors="np"
    )["labels"][0]
    np.testing.assert_array_equal(labels, np.arange(24).reshape(6, 4)[[0, 2, 4]][:, [0, 2]])


@pytest.mark.parametrize(
    ("label_size", "size"),
    [
        ((37, 53), {"height": 61, "width": 29}),
        ((97, 45), {"height": 64, "width": 64}),
        ((480, 640), {"shortest_edge": 512, "longest_edge": 2048}),
        ((375, 500), {"shortest_edge": 512, "longest_edge": 2048}),
        ((1024, 2048), {"shortest_edge": 512, "longest_edge": 1024}),
        ((683, 1024), {"shortest_edge": 300}),
    ],
)
def test_label_resize_equals_opencv_inter_nearest(label_size, size):
    """`segmentation_maps` resize like training's labels: OpenCV's `INTER_NEAREST` (mmcv's cv2 backend), which
    Pillow's nearest rule is not (on pixel-random labels most pixels differ for some sizes)."""
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is a test dependency (pip install -e .[test])")
    label_map = np.random.default_rng(3).integers(0, 256, label_size, dtype=np.uint8)
    processor = SegRetImageProcessor(size=size)
    labels = processor(random_rgb(*label_size), segmentation_maps=label_map, return_tensors="np")["labels"][0]
    height, width = processor.resized_size(*label_size)
    expected = cv2.resize(label_map, (width, height), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(labels, expected)
    pillow = np.asarray(Image.fromarray(label_map).resize((width, height), Image.Resampling.NEAREST))
    assert (pillow != expected).mean() > 0.2  # the rule this replaces


# --- post-processing -------------------------------------------------------------------------------------------


def test_post_process_semantic_segmentation(processor):
    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 2] = 1.0  # image 0: class 2 everywhere
    logits[1, 0, :, :2] = 1.0  # image 1: class 0 on the left half, class 1 on the right half
    logits[1, 1, :, 2:] = 1.0
    outputs = SimpleNamespace(logits=logits)

    at_logits_size = processor.post_process_semantic_segmentation(outputs)
    assert [tuple(m.shape) for m in at_logits_size] == [(4, 4), (4, 4)]
    assert torch.all(at_logits_size[0] == 2)

    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(8, 12), (5, 16)])
    assert [tuple(m.shape) for m in maps] == [(8, 12), (5, 16)]
    assert all(m.dtype == torch.int64 for m in maps)
    assert torch.all(maps[0] == 2)
    assert torch.all(maps[1][:, :7] == 0) and torch.all(maps[1][:, 9:] == 1)

    # Same as upsampling bilinearly (align_corners=False) and taking the argmax.
    random_logits = torch.randn(1, 5, 6, 7)
    expected = torch.nn.functional.interpolate(random_logits, size=(13, 11), mode="bilinear", align_corners=False)
    maps = processor.post_process_semantic_segmentation(
        SimpleNamespace(logits=random_logits), target_sizes=torch.tensor([[13, 11]])
    )
    torch.testing.assert_close(maps[0], expected[0].argmax(dim=0))

    with pytest.raises(ValueError, match="Got 1 target sizes for a batch of 2 logits"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(8, 8)])


def test_chunked_argmax_equals_the_fully_upsampled_argmax():
    """A few classes at a time with a running maximum: the argmax of the fully upsampled logits, ties and NaN too."""
    generator = torch.Generator().manual_seed(0)
    finite = torch.randn(2, 11, 7, 9, generator=generator)
    finite[:, 6] = finite[:, 2]  # exact ties between classes 2 and 6: the first one wins
    finite[0, 3, 5, 5] = finite[0, 8, 5, 5] = float("inf")  # tied infinities: the first one wins
    with_nan = finite.clone()
    with_nan[0, 9, 3, 4] = float("nan")  # NaN is the maximum, as in `argmax`
    with_nan[1, 0, 2, 2] = with_nan[1, 4, 2, 2] = float("nan")  # the first NaN wins, class 0 included
    for logits in (finite, with_nan):
        for input_size, output_size in [((28, 36), (61, 45)), (None, (13, 17)), ((28, 36), (28, 36))]:
            expected = logits
            if input_size is not None:
                expected = F.interpolate(expected, size=input_size, mode="bilinear")
            expected = F.interpolate(expected, size=output_size, mode="bilinear").argmax(dim=1)
            for max_elements in (1, 3 * 2 * 61 * 45, 2**30):  # one class per chunk, three, all at once
                got = semantic_segmentation_from_logits(
                    logits, output_size, input_size, max_upsampled_elements=max_elements
                )
                assert torch.equal(got, expected)
            channels_last = logits.contiguous(memory_format=torch.channels_last)  # the same for any memory layout
            assert torch.equal(semantic_segmentation_from_logits(channels_last, output_size, input_size), expected)


def test_post_processing_resizes_through_the_model_input_size():
    """Logits go to the size the processor fed the model, then to the target size (the evaluation path); padding
    of a padded batch is cropped off first, from the size the processor's own rule gives the target size."""
    processor = SegRetImageProcessor(size={"shortest_edge": 32, "longest_edge": 96})
    logits = torch.randn(1, 5, 8, 11)  # a 30 x 41 model input: ceil(30 / 4) x ceil(41 / 4)
    expected_scores = F.interpolate(
        F.interpolate(logits, size=(32, 41), mode="bilinear"), size=(47, 60), mode="bilinear"
    )
    assert processor.resized_size(47, 60) == (32, 41)
    outputs = SimpleNamespace(logits=logits)
    (segmentation,) = processor.post_process_semantic_segmentation(outputs, target_sizes=[(47, 60)])
    assert torch.equal(segmentation, expected_scores[0].argmax(dim=0))
    # In a batch padded to 64 x 64 the logits are 16 x 16; the rows and columns past 8 x 11 are padding.
    padded = torch.full((1, 5, 16, 16), 100.0)
    padded[..., :8, :11] = logits
    (from_padded,) = processor.post_process_semantic_segmentation(SimpleNamespace(logits=padded), [(47, 60)])
    assert torch.equal(from_padded, segmentation)
    # Without resizing in the processor the target size is the model input size.
    no_resize = SegRetImageProcessor(do_resize=False)
    (segmentation,) = no_resize.post_process_semantic_segmentation(outputs, target_sizes=torch.tensor([[32, 41]]))
    assert torch.equal(segmentation, F.interpolate(logits, size=(32, 41), mode="bilinear")[0].argmax(dim=0))


def test_return_segmentation_scores(processor):
    """transformers >= 5.x's argument: each item has `segmentation` and `segmentation_scores` (the resized logits)."""
    logits = torch.randn(2, 5, 6, 7)
    outputs = SimpleNamespace(logits=logits)
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(13, 11), (6, 9)])
    results = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(13, 11), (6, 9)], return_segmentation_scores=True
    )
    for index, (result, segmentation_map, size) in enumerate(zip(results, maps, [(13, 11), (6, 9)], strict=True)):
        assert set(result.keys()) == {"segmentation", "segmentation_scores"}
        assert torch.equal(result.segmentation, segmentation_map)
        assert tuple(result.segmentation_scores.shape) == (5, *size)
        expected = F.interpolate(logits[index : index + 1], size=size, mode="bilinear")[0]
        torch.testing.assert_close(result["segmentation_scores"], expected, rtol=0, atol=0)
    at_logits_size = processor.post_process_semantic_segmentation(outputs, return_segmentation_scores=True)
    assert torch.equal(at_logits_size[1].segmentation_scores, logits[1])
    assert torch.equal(at_logits_size[1].segmentation, logits[1].argmax(dim=0))


def test_no_panoptic_or_instance_post_processing(processor):
    # The image-segmentation pipeline picks panoptic > instance > semantic by `hasattr`.
    assert not hasattr(processor, "post_process_panoptic_segmentation")
    assert not hasattr(processor, "post_process_instance_segmentation")


# --- save / load -----------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_of_all_settings(tmp_path):
    settings = {
        "do_resize": False,
        "size": {"height": 320, "width": 480},
        "resample": Image.Resampling.BICUBIC,
        "do_rescale": False,
        "rescale_factor": 0.5,
        "do_normalize": False,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
        "do_pad": True,
        "pad_size": {"height": 512, "width": 640},
        "do_reduce_labels": True,
    }
    SegRetImageProcessor(**settings).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "SegRetImageProcessor"
    loaded = SegRetImageProcessor.from_pretrained(tmp_path)
    for key, value in settings.items():
        loaded_value = getattr(loaded, key)
        loaded_value = dict(loaded_value) if key in ("size", "pad_size") else loaded_value
        loaded_value = list(loaded_value) if key in ("image_mean", "image_std") else loaded_value
        assert loaded_value == value, key

    SegRetImageProcessor(size={"shortest_edge": 1024, "longest_edge": 2048}).save_pretrained(tmp_path / "keep_ratio")
    reloaded = SegRetImageProcessor.from_pretrained(tmp_path / "keep_ratio")
    assert dict(reloaded.size) == {"shortest_edge": 1024, "longest_edge": 2048}
    assert tuple(reloaded(random_rgb(10, 20), return_tensors="pt")["pixel_values"].shape) == (1, 3, 1024, 2048)


def test_auto_image_processor_loads_the_registered_class(tmp_path):
    SegRetConfig().save_pretrained(tmp_path)
    SegRetImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is SegRetImageProcessor
    assert dict(loaded.size) == {"height": 64, "width": 64}


def test_remote_code_load_without_the_package(tmp_path):
    """The file is valid remote code: only allowed imports, of the project only the transformers-version shims (which
    import nothing of it), and it loads in a process without us."""
    assert get_relative_imports(str(PROCESSOR_FILE)) == ["compat_segret"]
    assert get_relative_imports(str(COMPAT_FILE)) == []
    for code_file in (PROCESSOR_FILE, COMPAT_FILE):
        check_imports(str(code_file))  # raises ImportError for a package that is not installed (e.g. torchvision)

    SegRetImageProcessor(size={"height": 48, "width": 40}).save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.glob("*.py")) == ["compat_segret.py", "image_processing_segret.py"]
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_segret.SegRetImageProcessor"}
    script = (
        "import sys\n"
        "import numpy as np\n"
        "from transformers import AutoImageProcessor\n"
        "assert 'modeling_segret' not in sys.modules\n"
        f"processor = AutoImageProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
        "assert processor.__module__.startswith('transformers_modules'), processor.__module__\n"
        "pixel_values = processor(np.zeros((2, 2, 3), np.uint8), return_tensors='pt')['pixel_values']\n"
        "print(type(processor).__name__, tuple(pixel_values.shape))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "SegRetImageProcessor (1, 3, 48, 40)"


# --- bad inputs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        ([random_rgb(4, 4), np.zeros((5, 6, 7))], ValueError, r"Image 1 has shape \(5, 6, 7\); expected 1 \(gray\)"),
        ([random_rgb(4, 4), np.zeros((2, 3, 4, 4))], ValueError, r"Image 1 has 4 dimensions \(shape \(2, 3, 4, 4\)\)"),
        (np.zeros((1, 2, 3, 4, 4)), ValueError, r"`images` has 5 dimensions .* a batch with 4"),
        ([random_rgb(4, 4), np.zeros((0, 4, 3))], ValueError, r"Image 1 is empty \(shape \(0, 4, 3\)\)"),
        (Image.new("RGB", (0, 4)), ValueError, r"Image 0 is empty \(size 0x4\)"),
        ([], ValueError, r"`images` is an empty list"),
        ([random_rgb(4, 4), "cat.png"], TypeError, r"Image 1 is a str; expected a PIL image, a NumPy array or a"),
        ({"pixel_values": 1}, TypeError, r"`images` must be a PIL image, a NumPy array, a torch tensor or a list"),
        (np.zeros((4, 4, 3), dtype=np.complex64), TypeError, r"Image 0 has unsupported dtype complex64"),
    ],
)
def test_bad_images_raise(processor, images, error, message):
    with pytest.raises(error, match=message):
        processor(images, return_tensors="pt")


@pytest.mark.parametrize(
    ("segmentation_maps", "message"),
    [
        ([np.zeros((8, 8)), np.zeros((8, 9))], r"Segmentation map 1 has size \(8, 9\) but image 1 has size \(8, 8\)"),
        ([np.zeros((8, 8))], r"Got 2 images but 1 segmentation maps"),
        (
            [np.zeros((8, 8)), Image.new("RGB", (8, 8))],
            r"Segmentation map 1 has PIL mode 'RGB'; expected a single-band",
        ),
        ([np.zeros((8, 8)), np.zeros((8, 8, 3))], r"Segmentation map 1 has shape \(8, 8, 3\); expected a 2-D"),
        ([np.zeros((8, 8)), np.full((8, 8), 0.5)], r"Segmentation map 1 has non-integer values"),
        ([np.zeros((8, 8)), np.zeros((0, 8))], r"Segmentation map 1 is empty"),
    ],
)
def test_bad_segmentation_maps_raise(processor, segmentation_maps, message):
    images = [random_rgb(8, 8), random_rgb(8, 8, seed=1)]
    with pytest.raises(ValueError, match=message):
        processor(images, segmentation_maps=segmentation_maps, return_tensors="pt")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"size": {"max_height": 10, "max_width": 10}}, ValueError, r"`size` must be a fixed size .* or a keep-ratio"),
        ({"size": {"height": 10}}, ValueError, r"size must have one of the following set of keys"),
        ({"do_pad": True, "pad_size": {"shortest_edge": 10}}, ValueError, r"`pad_size` must be \{'height': h, 'width'"),
        ({"do_pad": True, "pad_size": {"height": 2, "width": 2}}, ValueError, r"Padding dimensions are negative"),
        ({"do_center_crop": True}, ValueError, r"does not center-crop"),
        ({"data_format": "channels_last"}, ValueError, r"returns channels-first pixel values"),
        ({"do_reduce_label": True}, TypeError, r"unexpected keyword argument 'do_reduce_label'"),  # typo of a setting
    ],
)
def test_bad_settings_raise(processor, kwargs, error, message):
    with pytest.raises(error, match=message):
        processor(random_rgb(8, 8), return_tensors="pt", **kwargs)
