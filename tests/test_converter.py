"""Official RMT ImageNet checkpoints, at full size, convert onto SegRet's keys and load strictly."""

import json
import pickle

import pytest
import torch
from conftest import FIXTURES
from transformers import AutoModelForSemanticSegmentation

from modeling_segret import SegRetBackbone, segret_variant_config
from modeling_segret.convert_rmt_checkpoint import CheckpointConversionError, convert_rmt_state_dict, main
from modeling_segret.modeling_segret import SegRetRelativePosition

IMAGENET_KEYS = json.loads((FIXTURES / "rmt_imagenet_keys.json").read_text())


def imagenet_like_checkpoint(variant: str) -> dict[str, torch.Tensor]:
    """Random tensors shaped like a released checkpoint (position buffers as the official code makes them)."""
    config = segret_variant_config(variant)
    state_dict = {}
    for key, shape in IMAGENET_KEYS[variant]["state_dict"].items():
        if ".Relpos." in key:
            stage = int(key.split(".")[1])
            heads = config.num_heads[stage]
            tables = SegRetRelativePosition(
                config.embed_dims[stage] // heads,
                heads,
                config.decay_init_values[stage],
                config.decay_head_ranges[stage],
                config.retention_modes[stage],
            ).base_tables()
            state_dict[key] = tables[0] if key.endswith("angle") else tables[1]
        elif key.endswith("num_batches_tracked"):
            state_dict[key] = torch.tensor(1000)
        else:
            state_dict[key] = torch.randn(shape)
    return state_dict


def load_strictly(variant: str, converted: dict[str, torch.Tensor]) -> SegRetBackbone:
    with torch.device("meta"):
        backbone = SegRetBackbone(segret_variant_config(variant))
    backbone.load_state_dict(converted, strict=True, assign=True)
    return backbone


@pytest.mark.parametrize("variant", ["tiny", "small", "base", "large"])
def test_every_container_form_converts_and_loads_strictly(variant):
    official = imagenet_like_checkpoint(variant)
    config = segret_variant_config(variant)
    containers = {
        "model": {"model": official, "epoch": 300},
        "module_prefix": {"model": {f"module.{key}": value for key, value in official.items()}},
        "bare": official,
        "mmseg": {
            "state_dict": {
                **{
                    f"backbone.{key}": value
                    for key, value in official.items()
                    if not key.startswith(("head.", "proj.", "norm."))
                },
                "decode_head.conv_seg.weight": torch.zeros(150, 256, 1, 1),
            },
            "meta": {},
        },
    }
    for form, checkpoint in containers.items():
        converted = convert_rmt_state_dict(checkpoint, config)
        backbone = load_strictly(variant, converted)
        # The values are carried over, not re-created (spot checks, renamed and reshaped keys included).
        torch.testing.assert_close(
            backbone.encoder.stages[0].blocks[0].retention.q_proj.weight,
            official["layers.0.blocks.0.retention.q_proj.weight"],
            msg=form,
        )
        torch.testing.assert_close(
            backbone.encoder.stages[1].downsample.convolution.weight, official["layers.0.downsample.reduction.weight"]
        )
        torch.testing.assert_close(
            backbone.encoder.embeddings.layers[3].normalization.running_var, official["patch_embed.proj.10.running_var"]
        )
        if config.use_layer_scale[2]:
            torch.testing.assert_close(
                backbone.encoder.stages[2].blocks[0].retention_layer_scale,
                official["layers.2.blocks.0.gamma_1"].reshape(-1),
            )
        # The output norms are absent from ImageNet checkpoints and start as identity.
        assert torch.equal(backbone.encoder.output_norms[3].weight, torch.ones(config.embed_dims[3]))
        assert torch.equal(backbone.encoder.output_norms[3].bias, torch.zeros(config.embed_dims[3]))


def test_missing_extra_and_misshaped_keys_fail_loudly():
    official = imagenet_like_checkpoint("tiny")
    config = segret_variant_config("tiny")

    missing = dict(official)
    del missing["layers.2.blocks.3.ffn.fc1.weight"]
    with pytest.raises(
        CheckpointConversionError, match=r"Missing keys \(1\): encoder\.stages\.2\.blocks\.3\.ffn\.fc1\.weight"
    ):
        convert_rmt_state_dict({"model": missing}, config)

    extra = {**official, "layers.0.blocks.0.retention.extra_proj.weight": torch.zeros(1)}
    with pytest.raises(
        CheckpointConversionError, match=r"Unexpected keys \(1\): layers\.0\.blocks\.0\.retention\.extra_proj"
    ):
        convert_rmt_state_dict({"model": extra}, config)

    misshaped = {**official, "layers.1.blocks.0.ffn.fc2.weight": torch.zeros(128, 10)}
    with pytest.raises(
        CheckpointConversionError, match=r"encoder\.stages\.1\.blocks\.0\.ffn\.fc2\.weight: checkpoint \(128, 10\)"
    ):
        convert_rmt_state_dict(misshaped, config)


def test_checkpoint_of_another_variant_is_rejected():
    with pytest.raises(CheckpointConversionError) as error:
        convert_rmt_state_dict(imagenet_like_checkpoint("tiny"), segret_variant_config("small"))
    assert "Missing keys" in str(error.value)
    # Same shapes, other decay schedule: caught through the position buffers.
    config = segret_variant_config("tiny", decay_head_ranges=[4.0, 4.0, 4.0, 6.0])
    with pytest.raises(CheckpointConversionError, match=r"layers\.2\.Relpos\.decay"):
        convert_rmt_state_dict(imagenet_like_checkpoint("tiny"), config)


def test_command_line_writes_a_loadable_segmentation_model(tmp_path):
    official = imagenet_like_checkpoint("tiny")
    checkpoint_path = tmp_path / "rmt_t.pth"
    torch.save({"model": official, "epoch": 300}, checkpoint_path)
    output = tmp_path / "segret-tiny"
    main(
        ["--checkpoint", str(checkpoint_path), "--variant", "tiny", "--num_labels", "150", "--output_dir", str(output)]
    )

    assert (output / "model.safetensors").exists() and (output / "preprocessor_config.json").exists()
    model = AutoModelForSemanticSegmentation.from_pretrained(output)
    assert model.config.num_labels == 150
    torch.testing.assert_close(
        model.segret.encoder.stages[2].blocks[7].ffn.dwconv.weight, official["layers.2.blocks.7.ffn.dwconv.conv.weight"]
    )
    assert torch.count_nonzero(model.decode_head.zero_init_residuals[0].weight) == 0


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    """`.pth` files are read with weights_only=True: a checkpoint carrying arbitrary objects is not unpickled."""
    checkpoint_path = tmp_path / "malicious.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": pickle.loads(pickle.dumps(SegRetBackbone))}, checkpoint_path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        main(
            [
                "--checkpoint",
                str(checkpoint_path),
                "--variant",
                "tiny",
                "--num_labels",
                "2",
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
