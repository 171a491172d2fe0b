"""Whole, sliding-window and multi-scale + flip inference with stand-in models whose outputs are known."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput

from modeling_segret.inference_segret import (
    predict_multi_scale,
    predict_sliding_window,
    predict_whole,
    rescale_by_factor,
    rescale_size,
    segment,
    sliding_windows,
)


class PixelLinear(nn.Module):
    """Per-pixel linear map 3 -> K (translation-equivariant); ``stride`` > 1 averages stride x stride cells first.

    Records the shape of every input it sees.
    """

    def __init__(self, num_labels=5, stride=1, ramp=0.0):
        super().__init__()
        self.proj = nn.Conv2d(3, num_labels, 1)
        self.stride, self.ramp = stride, ramp
        self.seen = []

    def forward(self, pixel_values):
        self.seen.append(tuple(pixel_values.shape))
        x = F.avg_pool2d(pixel_values, self.stride) if self.stride > 1 else pixel_values
        logits = self.proj(x)
        if self.ramp:  # a left-to-right bias: breaks flip equivariance on purpose
            logits = (
                logits
                + self.ramp * torch.linspace(0, 1, logits.shape[-1]) * torch.arange(logits.shape[1])[:, None, None]
            )
        return SemanticSegmenterOutput(logits=logits)


def test_window_grid_follows_mmseg_formula():
    windows = sliding_windows(1024, 2048, 512, 341)
    ys = sorted({(y1, y2) for y1, y2, _, _ in windows})
    xs = sorted({(x1, x2) for _, _, x1, x2 in windows})
    # h_grids = (1024 - 512 + 340) // 341 + 1 = 3, w_grids = (2048 - 512 + 340) // 341 + 1 = 6; the last window
    # of each axis is shifted back to end at the border.
    assert ys == [(0, 512), (341, 853), (512, 1024)]
    assert xs == [(0, 512), (341, 853), (682, 1194), (1023, 1535), (1364, 1876), (1536, 2048)]
    assert len(windows) == 18 and windows[0] == (0, 512, 0, 512) and windows[1] == (0, 512, 341, 853)
    assert sliding_windows(300, 400, (512, 512), (341, 341)) == [(0, 300, 0, 400)]  # smaller than the crop
    assert sliding_windows(1024, 2048, 1024, 768) == [(0, 1024, 0, 1024), (0, 1024, 768, 1792), (0, 1024, 1024, 2048)]
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(100, 100, 32, 40)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_sliding_window_equals_whole_image(batch_size):
    model = PixelLinear().eval()
    x = torch.randn(2, 3, 70, 90)
    whole = predict_whole(model, x)
    model.seen.clear()
    stitched = predict_sliding_window(model, x, (32, 40), (20, 25), num_labels=5, batch_size=batch_size)
    torch.testing.assert_close(stitched, whole, rtol=1e-5, atol=1e-5)
    windows = sliding_windows(70, 90, (32, 40), (20, 25))
    assert len(model.seen) == -(-len(windows) // batch_size)
    assert all(shape[1:] == (3, 32, 40) and shape[0] <= 2 * batch_size for shape in model.seen)


def test_sliding_window_output_size_and_class_check():
    model = PixelLinear(num_labels=4)
    x = torch.randn(1, 3, 40, 50)
    out = predict_sliding_window(model, x, 32, 16, output_size=(80, 100))
    torch.testing.assert_close(out, F.interpolate(predict_whole(model, x), (80, 100), mode="bilinear"))
    with pytest.raises(ValueError, match="num_labels=7"):
        predict_sliding_window(model, x, 32, 16, num_labels=7)


def test_quarter_resolution_logits_are_resized_like_mmseg():
    model = PixelLinear(stride=4)
    x = torch.randn(1, 3, 32, 48)
    raw = model(pixel_values=x).logits
    assert raw.shape[-2:] == (8, 12)
    expected = F.interpolate(F.interpolate(raw, (32, 48), mode="bilinear"), (50, 70), mode="bilinear")
    torch.testing.assert_close(predict_whole(model, x, (50, 70)), expected)


def test_large_image_sliding_window_bounded_memory():
    # A Cityscapes-sized image through 1024x1024 windows: the model only ever sees one mini-batch of crops.
    model = PixelLinear(num_labels=3).eval()
    x = torch.randn(1, 3, 1024, 2048)
    out = predict_sliding_window(model, x, 1024, 768, batch_size=1)
    assert out.shape == (1, 3, 1024, 2048)
    assert max(h * w * b for b, _, h, w in model.seen) == 1024 * 1024
    torch.testing.assert_close(out[..., ::7, ::7], model(pixel_values=x).logits[..., ::7, ::7], rtol=1e-5, atol=1e-5)


def test_multi_scale_sizes_follow_test_scale():
    model = PixelLinear()
    x = torch.randn(1, 3, 48, 64)
    probs = predict_multi_scale(model, x, scales=(0.5, 0.75, 1.75), flip=True, test_scale=(250, 70))
    assert probs.shape == (1, 5, 48, 64)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 48, 64))
    # mmseg 0.x: bounds (int(250 r), int(70 r)), truncated, then keep-ratio; each scale plain and flipped.
    expected = [rescale_size(48, 64, (int(250 * r), int(70 * r))) for r in (0.5, 0.75, 1.75)]
    assert [s[-2:] for s in model.seen] == [size for size in expected for _ in range(2)]
    assert expected == [(35, 47), (52, 69), (122, 163)]  # untruncated bounds would give (53, 70), (123, 163)
    model.seen.clear()
    predict_multi_scale(model, x, scales=(0.5, 1.5), flip=False)  # no test scale: ratio x own size (mmseg 1.x)
    assert [s[-2:] for s in model.seen] == [(24, 32), (72, 96)]


# (height, width, ratio, size) given by mmcv 2.2.0's `Resize(scale_factor=ratio, keep_ratio=True)`, MMSegmentation
# 1.x's test-time resize (computed with mmcv itself). The first eight are one pixel off the one-step
# `int(side * ratio + 0.5)`: (155, 327), (362, 763), (313, 1606), (209, 974), (229, 173), (534, 404), (403, 421),
# (191, 383); about one size in ten of random 200-1600 x 200-2100 images at the six ratios is.
MMCV_SCALE_FACTOR_SIZES = [
    (207, 436, 0.75, (155, 326)),
    (207, 436, 1.75, (362, 762)),
    (250, 1285, 1.25, (312, 1606)),
    (278, 1299, 0.75, (208, 974)),
    (305, 231, 0.75, (228, 173)),
    (305, 231, 1.75, (533, 404)),
    (322, 337, 1.25, (402, 421)),
    (255, 510, 0.75, (191, 382)),
    (512, 683, 0.75, (384, 512)),
    (512, 683, 1.25, (640, 854)),
    (683, 1024, 1.75, (1195, 1792)),
    (375, 500, 0.5, (188, 250)),
    (1024, 2048, 0.75, (768, 1536)),
    (480, 640, 1.5, (720, 960)),
    (97, 45, 1.75, (170, 79)),
    (427, 640, 1.25, (534, 800)),
]


@pytest.mark.parametrize(("height", "width", "ratio", "expected"), MMCV_SCALE_FACTOR_SIZES)
def test_scale_factor_size_equals_mmcv(height, width, ratio, expected):
    assert rescale_by_factor(height, width, ratio) == expected


def test_multi_scale_without_test_scale_resizes_like_mmseg_1x():
    model = PixelLinear()
    predict_multi_scale(model, torch.randn(1, 3, 207, 436), scales=(0.75, 1.75), flip=False)
    assert [shape[-2:] for shape in model.seen] == [(155, 326), (362, 762)]


def mmseg_flip_pass(model, scaled, output_size, version):
    """A flipped pass as MMSegmentation computes it: logits resized to the scaled image, flipped back and resized to
    the output size (1.x, `postprocess_result`), or resized to the output size and then flipped back (0.x,
    `inference`); `resize` is F.interpolate in both."""
    logits = F.interpolate(model(scaled.flip(-1)).logits, scaled.shape[-2:], mode="bilinear", align_corners=False)
    if version == "1.x":
        return F.interpolate(logits.flip(-1), output_size, mode="bilinear", align_corners=False)
    return F.interpolate(logits, output_size, mode="bilinear", align_corners=False).flip(-1)


@pytest.mark.parametrize("version", ["0.x", "1.x"])
def test_multi_scale_flip_equals_mmseg(version):
    """Multi-scale + flip equals MMSegmentation's computation bit for bit: 0.x with a test scale, 1.x without."""
    model = PixelLinear(stride=4, ramp=3.0)
    x = torch.randn(1, 3, 37, 53)
    test_scale = (120, 45) if version == "0.x" else None
    probs = predict_multi_scale(model, x, scales=(0.75, 1.25), flip=True, test_scale=test_scale, output_size=(37, 53))
    expected = None
    orders_differ = False
    for ratio in (0.75, 1.25):
        if test_scale is None:
            size = rescale_by_factor(37, 53, ratio)
        else:  # 0.x: the bounds are scaled and truncated
            size = rescale_size(37, 53, tuple(int(side * ratio) for side in test_scale))
        scaled = F.interpolate(x, size, mode="bilinear", align_corners=False)
        plain = F.interpolate(
            F.interpolate(model(scaled).logits, size, mode="bilinear", align_corners=False),
            (37, 53),
            mode="bilinear",
            align_corners=False,
        )
        flipped = mmseg_flip_pass(model, scaled, (37, 53), version)
        other = mmseg_flip_pass(model, scaled, (37, 53), "0.x" if version == "1.x" else "1.x")
        orders_differ |= not torch.equal(flipped, other)
        for logits in (plain, flipped):
            expected = logits.softmax(1) if expected is None else expected + logits.softmax(1)
    assert orders_differ  # the test tells the two orders apart
    assert torch.equal(probs, expected / 4)


def test_single_pass_multi_scale_is_softmax_of_whole():
    model = PixelLinear(stride=4)
    x = torch.randn(2, 3, 40, 56)
    probs = predict_multi_scale(model, x, scales=(1.0,), flip=False, output_size=(45, 60))
    torch.testing.assert_close(probs, predict_whole(model, x, (45, 60)).softmax(1))


def test_flip_tta_of_symmetric_input_is_symmetric():
    model = PixelLinear(ramp=3.0)  # not flip-equivariant by itself
    half = torch.randn(1, 3, 24, 16)
    x = torch.cat([half, half.flip(-1)], dim=-1)  # mirror-symmetric image
    plain = predict_multi_scale(model, x, scales=(1.0, 1.5), flip=False)
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-3)
    flipped = predict_multi_scale(model, x, scales=(1.0, 1.5), flip=True)
    torch.testing.assert_close(flipped, flipped.flip(-1), rtol=1e-5, atol=1e-6)


def test_segment_modes():
    model = PixelLinear(stride=4)
    x = torch.randn(1, 3, 40, 60)
    labels = segment(model, x, output_size=(40, 60), test_scale=(120, 80))
    scaled = F.interpolate(x, rescale_size(40, 60, (120, 80)), mode="bilinear")
    assert scaled.shape[-2:] == (80, 120)
    assert torch.equal(labels, predict_whole(model, scaled, (40, 60)).argmax(1))
    slide = segment(model, x, mode="slide", crop_size=32, stride=24)
    assert slide.shape == (1, 40, 60) and slide.dtype == torch.int64
    ms = segment(model, x, scales=(0.75, 1.0), flip=True, mode="slide", crop_size=32, stride=24, output_size=(20, 30))
    assert ms.shape == (1, 20, 30)
    with pytest.raises(ValueError, match="crop_size and stride"):
        segment(model, x, mode="slide")
    with pytest.raises(ValueError, match="mode"):
        segment(model, x, mode="tiles")


@pytest.mark.slow
def test_segret_sliding_window_on_cityscapes_sized_image():
    # A real (tiny) SegRet, global retention in stages 3-4, through mmseg's Cityscapes windows on CPU.
    from modeling_segret import SegRetConfig, SegRetForSemanticSegmentation

    names = [f"class_{i}" for i in range(19)]
    config = SegRetConfig(
        embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[2, 2, 4, 4], decoder_hidden_size=32,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    model = SegRetForSemanticSegmentation(config).eval()
    labels = segment(model, torch.randn(1, 3, 1024, 2048), mode="slide", crop_size=1024, stride=768, batch_size=1)
    assert labels.shape == (1, 1024, 2048) and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() < 19
