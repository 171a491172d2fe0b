"""Regression tests for what transformers' common test mixins found (scripts/run_transformers_conformance.py):
the backbone's default stage, gradients into the returned stem map, and images with their own channel count."""

import numpy as np
import pytest
import torch
from conftest import small_config
from PIL import Image

from modeling_segret import (
    SegRetBackbone,
    SegRetConfig,
    SegRetForSemanticSegmentation,
    SegRetImageProcessor,
    SegRetModel,
    segret_variant_config,
)

FOUR_STAGES = ["stage1", "stage2", "stage3", "stage4"]


# ------------------------------------------------------------------------------------- backbone default: last stage


def test_backbone_without_out_features_returns_the_last_stage():
    assert (SegRetConfig().out_features, SegRetConfig().out_indices) == (["stage4"], [4])
    backbone = SegRetBackbone(small_config()).eval()
    assert backbone.channels == [64]
    (feature_map,) = backbone(torch.randn(1, 3, 64, 64)).feature_maps
    assert tuple(feature_map.shape) == (1, 64, 2, 2)

    config = small_config(out_features=["stage2", "stage4"])
    config.out_features = None  # resetting falls back to the convention as well
    assert config.out_features == ["stage4"]
    assert small_config(out_indices=[-2, -1]).out_features == ["stage3", "stage4"]


def test_paper_variants_keep_the_four_stage_maps(tmp_path):
    """The variants (code and configuration/ files) name the four maps the decoder reads, also after a round trip."""
    assert segret_variant_config("tiny").out_features == FOUR_STAGES
    assert segret_variant_config("tiny", out_indices=[0, 4]).out_features == ["stem", "stage4"]
    segret_variant_config("small").save_pretrained(tmp_path)
    assert SegRetConfig.from_pretrained(tmp_path).out_features == FOUR_STAGES


# ----------------------------------------------------------------------------------------- stem map on the graph


@pytest.mark.parametrize("model_class", [SegRetModel, SegRetForSemanticSegmentation, SegRetBackbone])
def test_returned_stem_map_receives_gradients(model_class):
    model = model_class(small_config())
    pixel_values = torch.randn(2, 3, 32, 32)
    outputs = model(pixel_values, output_hidden_states=True)
    stem_map = outputs.hidden_states[0]
    stem_map.retain_grad()
    output = outputs.feature_maps[-1] if model_class is SegRetBackbone else outputs[0]  # the last stage / logits
    # A fixed random projection, not `output.sum()`: the sum of a normalised map is constant, so its gradient is zero
    # in exact arithmetic and only rounding residue would reach the stem.
    projection = torch.randn(output.shape, generator=torch.Generator().manual_seed(0))
    (output * projection).sum().backward()
    assert stem_map.grad is not None and stem_map.grad.abs().sum() > 1e-3 * stem_map.numel()


def test_stem_map_values_and_first_stage_input_unchanged():
    """Same values as the stem's output, and the first stage still gets a contiguous channels-last tensor (the
    linear layers would otherwise copy it)."""
    model = SegRetModel(small_config()).eval()
    encoder = model.encoder
    stage_inputs = []
    handle = encoder.stages[0].register_forward_pre_hook(lambda module, args: stage_inputs.append(args[0]))
    pixel_values = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        stem_map = model(pixel_values, output_hidden_states=True).hidden_states[0]
        expected = encoder.embeddings(pixel_values)  # (B, H/4, W/4, C)
    handle.remove()
    assert tuple(stem_map.shape) == (1, 16, 10, 14)
    assert torch.equal(stem_map, expected.permute(0, 3, 1, 2))
    assert stage_inputs[0].is_contiguous() and torch.equal(stage_inputs[0], expected)


# ------------------------------------------------------------------------------ do_convert_rgb=False, 4 channels

MEAN_4 = [0.485, 0.456, 0.406, 0.5]
STD_4 = [0.229, 0.224, 0.225, 0.25]


def four_channel_processor(**kwargs) -> SegRetImageProcessor:
    return SegRetImageProcessor(do_convert_rgb=False, image_mean=MEAN_4, image_std=STD_4, **kwargs)


def test_four_channel_images_reach_a_four_channel_model(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 36, 4), dtype=np.uint8)  # e.g. RGB + near-infrared
    processor = four_channel_processor(do_resize=False)
    pixel_values = processor(image, return_tensors="pt").pixel_values
    assert tuple(pixel_values.shape) == (1, 4, 24, 36)
    expected = (image.transpose(2, 0, 1) / 255 - np.array(MEAN_4)[:, None, None]) / np.array(STD_4)[:, None, None]
    np.testing.assert_allclose(pixel_values[0].numpy(), expected, rtol=1e-5, atol=1e-5)

    # PIL "RGBA" keeps its alpha band, channels-first arrays and tensors work the same way.
    for same_image in (Image.fromarray(image), image.transpose(2, 0, 1), torch.from_numpy(image.transpose(2, 0, 1))):
        torch.testing.assert_close(processor(same_image, return_tensors="pt").pixel_values, pixel_values)

    processor.save_pretrained(tmp_path)
    reloaded = SegRetImageProcessor.from_pretrained(tmp_path)
    assert reloaded.do_convert_rgb is False and list(reloaded.image_mean) == MEAN_4
    torch.testing.assert_close(reloaded(image, return_tensors="pt").pixel_values, pixel_values)

    model = SegRetForSemanticSegmentation(small_config(num_channels=4)).eval()
    with torch.no_grad():
        assert tuple(model(pixel_values).logits.shape) == (1, 5, 6, 9)


def test_default_processor_still_converts_to_rgb():
    image = np.random.default_rng(0).integers(0, 256, (24, 36, 4), dtype=np.uint8)
    processor = SegRetImageProcessor(do_resize=False)
    pixel_values = processor(image, return_tensors="pt").pixel_values
    assert tuple(pixel_values.shape) == (1, 3, 24, 36)
    torch.testing.assert_close(pixel_values, processor(image[..., :3], return_tensors="pt").pixel_values)


def test_channel_count_mismatches_are_named():
    image = np.zeros((24, 36, 4), dtype=np.uint8)
    with pytest.raises(
        ValueError,
        match=r"Image 1 has 4 channels \(do_convert_rgb=False keeps them as given\) but "
        r"image_mean has 3 values",
    ):
        SegRetImageProcessor(do_convert_rgb=False)([image[..., :3], image])
    with pytest.raises(
        ValueError, match="3 channels after conversion to RGB but image_mean has 4 values.*do_convert_rgb=False"
    ):
        SegRetImageProcessor(image_mean=MEAN_4, image_std=STD_4)(image)
    # Without normalisation there is nothing to check: the channels pass through.
    processor = SegRetImageProcessor(do_convert_rgb=False, do_normalize=False, do_resize=False)
    assert processor(image, return_tensors="np").pixel_values.shape == (1, 4, 24, 36)
    # The model names a mismatch with its own num_channels.
    with pytest.raises(ValueError, match="pixel_values has 4 channels but the model expects 3"):
        SegRetModel(small_config())(torch.zeros(1, 4, 32, 32))
