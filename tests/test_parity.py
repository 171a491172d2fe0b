"""The backbone reproduces the official RMT code's outputs (fixture made by running it, float64)."""

import json

import pytest
import torch
from conftest import FIXTURES
from safetensors import safe_open
from safetensors.torch import load_file

from modeling_segret import SegRetBackbone, SegRetConfig
from modeling_segret.convert_rmt_checkpoint import convert_rmt_state_dict

REFERENCE = FIXTURES / "rmt_reference_small.safetensors"


def reference_config() -> SegRetConfig:
    """SegRetConfig from the official constructor arguments stored in the fixture's metadata."""
    official = json.loads(safe_open(REFERENCE, "pt").metadata()["config"])
    return SegRetConfig(
        embed_dims=official["embed_dims"],
        depths=official["depths"],
        num_heads=official["num_heads"],
        decay_init_values=[float(value) for value in official["init_values"]],
        decay_head_ranges=[float(value) for value in official["heads_ranges"]],
        mlp_ratios=[float(value) for value in official["mlp_ratios"]],
        retention_modes=["decomposed" if chunked else "global" for chunked in official["chunkwise_recurrents"]],
        use_layer_scale=official["layerscales"],
        layer_scale_init_value=official["layer_init_values"],
        drop_path_rate=official["drop_path_rate"],
        out_features=["stage1", "stage2", "stage3", "stage4"],  # the four maps the official code returns
    )


@pytest.fixture(scope="module")
def reference():
    tensors = load_file(REFERENCE)
    official_weights = {
        key.removeprefix("weights."): value for key, value in tensors.items() if key.startswith("weights.")
    }
    backbone = SegRetBackbone(reference_config()).double().eval()  # float64 before loading: no rounding to float32
    backbone.load_state_dict(convert_rmt_state_dict(official_weights, backbone.config), strict=True)
    return backbone, tensors


@pytest.mark.parametrize("input_index", [0, 1])
def test_backbone_reproduces_official_rmt(reference, input_index):
    backbone, tensors = reference
    with torch.no_grad():
        feature_maps = backbone(tensors[f"input{input_index}"]).feature_maps
    assert len(feature_maps) == 4
    for stage, feature_map in enumerate(feature_maps):
        expected = tensors[f"input{input_index}.out{stage}"]
        assert feature_map.shape == expected.shape
        torch.testing.assert_close(feature_map, expected, rtol=0, atol=1e-10)


def test_parity_is_sensitive_to_the_retention_mode(reference):
    """Guards the parity test itself: the wrong retention mode in one stage must change the outputs."""
    backbone, tensors = reference
    config = reference_config()
    config.retention_modes = ["decomposed", "decomposed", "decomposed", "global"]
    altered = SegRetBackbone(config).double().eval()
    altered.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        feature_maps = altered(tensors["input0"]).feature_maps
    assert (feature_maps[2] - tensors["input0.out2"]).abs().max() > 1e-4
