"""Issue 23: bad input when loading a model or processor, damaged weight files, odd image arrays, huge images and
batches of 0 images.

`BAD_INPUTS` is the regression table, as in tests/test_bad_inputs.py: each row builds one mistake (or one damaged
file) and names the message fragment it must produce. The tests after it cover the documented behaviours.
"""

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_config
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSemanticSegmentation, pipeline

import modeling_segret  # noqa: F401  (registers SegRet with the Auto classes)
from modeling_segret import SegRetBackbone, SegRetForSemanticSegmentation, SegRetImageProcessor, SegRetModel
from modeling_segret.pipeline_segret import SegRetImageSegmentationPipeline
from training.publish import assemble
from training.publish import main as publish_main

REPOSITORY = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------- builders
def _saved_model(folder: Path, **config_overrides) -> Path:
    torch.manual_seed(0)
    SegRetForSemanticSegmentation(small_config(**config_overrides)).eval().save_pretrained(folder)
    return folder


def _truncated(tmp_path: Path) -> Path:
    folder = _saved_model(tmp_path / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def _corrupt_header(tmp_path: Path) -> Path:
    folder = _saved_model(tmp_path / "corrupt")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # the header length field
    return folder


def _edited_weights(tmp_path: Path, edit) -> Path:
    folder = _saved_model(tmp_path / "edited")
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _without(*names: str):
    return lambda tmp_path: _edited_weights(tmp_path, lambda weights: [weights.pop(name) for name in names])


def _nan_in(name: str):
    return lambda tmp_path: _edited_weights(tmp_path, lambda weights: weights[name].view(-1)[3:5].fill_(float("nan")))


def _load(make_folder, loader=SegRetForSemanticSegmentation.from_pretrained):
    return lambda tmp_path: loader(make_folder(tmp_path))


def _hub_folder(tmp_path: Path, damage) -> Path:
    """A Hub-ready folder (remote code, custom pipeline) whose weights `damage` then spoils."""
    folder = assemble(_saved_model(tmp_path / "source"), tmp_path / "hub")
    damage(folder / "model.safetensors")
    return folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _truncated_in_the_hub_cache(tmp_path):
    """A Hub repository in the local cache (`cache_dir` layout of huggingface_hub) whose download was cut short."""
    repository = tmp_path / "cache" / "models--org--segret"
    snapshot = _saved_model(repository / "snapshots" / ("a" * 40))
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text("a" * 40)
    _truncate(snapshot / "model.safetensors")
    SegRetForSemanticSegmentation.from_pretrained("org/segret", cache_dir=tmp_path / "cache", local_files_only=True)


def _remote_code_pipeline(tmp_path):
    pipeline("image-segmentation", model=str(_hub_folder(tmp_path, _truncate)), trust_remote_code=True)


def _remote_code_auto_model(tmp_path):
    AutoModelForSemanticSegmentation.from_pretrained(_hub_folder(tmp_path, _truncate), trust_remote_code=True)


def _processor_config(size) -> callable:
    def load(tmp_path):
        (tmp_path / "preprocessor_config.json").write_text(
            json.dumps({"image_processor_type": "SegRetImageProcessor", "size": size})
        )
        SegRetImageProcessor.from_pretrained(tmp_path)

    return load


def _process(image: np.ndarray):
    return lambda tmp_path: SegRetImageProcessor()(images=image)


BAD_INPUTS = [
    # The image processor's configuration: checked when it is loaded, not at the first image.
    ("negative size in the config", _processor_config({"shortest_edge": -512}), ValueError, "['shortest_edge'] = -512"),
    ("zero size in the config", _processor_config({"height": 0, "width": 64}), ValueError, "size['height'] = 0"),
    ("fractional size", _processor_config({"shortest_edge": 512.5}), ValueError, "['shortest_edge'] = 512.5"),
    ("size a string", _processor_config("512"), ValueError, "`size` must be a dict of sides"),
    ("size with unknown keys", _processor_config({"short": 512}), ValueError, "size must have one of the"),
    (
        "negative pad_size",
        lambda p: SegRetImageProcessor(do_pad=True, pad_size={"height": -8, "width": 8}),
        ValueError,
        "pad_size['height'] = -8",
    ),
    # Integer images without a known scale.
    ("negative int16 pixels", _process(np.full((8, 8, 3), -3, np.int16)), ValueError, "values from -3 to -3"),
    ("int64 pixels above 65535", _process(np.full((8, 8, 3), 70000, np.int64)), ValueError, "outside 0..65535"),
    (
        "0 images but 2 maps",
        lambda p: SegRetImageProcessor()(
            images=np.zeros((0, 8, 8, 3), np.uint8), segmentation_maps=np.zeros((2, 8, 8))
        ),
        ValueError,
        "Got 0 images but 2 segmentation maps",
    ),
    ("empty list of images", lambda p: SegRetImageProcessor()(images=[]), ValueError, "`images` is an empty list"),
    # Damaged weight files: the file is named.
    ("truncated model.safetensors", _load(_truncated), OSError, "truncated/model.safetensors (Error while"),
    ("corrupt header", _load(_corrupt_header), OSError, "corrupt/model.safetensors (Error while deserializing"),
    (
        "truncated, through AutoModel",
        _load(_truncated, AutoModelForSemanticSegmentation.from_pretrained),
        OSError,
        "download it again",
    ),
    ("truncated, Hub repository in the cache", _truncated_in_the_hub_cache, OSError, "snapshots/aaaa"),
    ("truncated, remote code AutoModel", _remote_code_auto_model, OSError, "hub/model.safetensors (Error while"),
    # transformers' pipeline turns the errors of the classes it tries into one ValueError that quotes them.
    ("truncated, remote code pipeline", _remote_code_pipeline, ValueError, "hub/model.safetensors (Error while"),
    # Loaded, but not what was saved.
    ("NaN weights", _load(_nan_in("decode_head.classifier.weight")), ValueError, "1 weights: decode_head.classifier"),
    (
        "NaN encoder weight",
        _load(_nan_in("segret.encoder.stages.2.blocks.0.retention.q_proj.weight")),
        ValueError,
        "NaN or infinite values in 1 weights: segret.encoder.stages.2.blocks.0.retention.q_proj.weight",
    ),
    (
        "missing classifier",
        _load(_without("decode_head.classifier.weight", "decode_head.classifier.bias")),
        ValueError,
        "lacks 2 weights of SegRetForSemanticSegmentation: decode_head.classifier.bias, decode_head.classifier.weight",
    ),
    (
        "missing encoder tensor",
        _load(_without("segret.encoder.stages.0.blocks.0.ffn.fc1.weight")),
        ValueError,
        "lacks 1 weights of SegRetForSemanticSegmentation: segret.encoder.stages.0.blocks.0.ffn.fc1.weight",
    ),
    (
        "backbone-only checkpoint into the segmentation model",
        lambda p: SegRetForSemanticSegmentation.from_pretrained(_saved_backbone(p)),
        ValueError,
        "pass ignore_mismatched_sizes=True",
    ),
]


def _saved_backbone(tmp_path: Path) -> Path:
    SegRetModel(small_config()).save_pretrained(tmp_path / "backbone")
    return tmp_path / "backbone"


@pytest.mark.parametrize(
    ("action", "error", "fragment"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_a_clear_message(action, error, fragment, tmp_path):
    with pytest.raises(error) as raised:
        action(tmp_path)
    assert fragment in str(raised.value), str(raised.value)


# ------------------------------------------------------------------------------------------- loading: allowed cases
def test_new_heads_on_request_and_complete_checkpoints_load(tmp_path):
    backbone = _saved_backbone(tmp_path)
    model, info = SegRetForSemanticSegmentation.from_pretrained(
        backbone, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert "decode_head.classifier.weight" in info["missing_keys"]
    # Other classes than saved: the classifier is re-initialised, as before.
    full = _saved_model(tmp_path / "full")
    model = SegRetForSemanticSegmentation.from_pretrained(full, num_labels=3, ignore_mismatched_sizes=True)
    assert model.decode_head.classifier.out_channels == 3
    # Loading the backbone alone from a full checkpoint leaves the decoder unused: allowed.
    assert isinstance(SegRetModel.from_pretrained(full), SegRetModel)
    assert isinstance(SegRetBackbone.from_pretrained(full), SegRetBackbone)
    # A complete checkpoint loads exactly; a model built from a config loads nothing and is not checked.
    reloaded = SegRetForSemanticSegmentation.from_pretrained(full)
    torch.manual_seed(0)
    built = SegRetForSemanticSegmentation(small_config())
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


def test_publish_reports_a_damaged_checkpoint_without_traceback(tmp_path, capsys):
    source = _truncated(tmp_path)
    assert publish_main([str(source), "--output_dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "truncated/model.safetensors (Error while deserializing header" in err, err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------ processor values
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.int16])
def test_integer_arrays_read_on_the_8_or_16_bit_scale(dtype):
    processor = SegRetImageProcessor(do_resize=False)
    rng = np.random.default_rng(0)
    sixteen_bit = rng.integers(0, 65536 if dtype != np.int16 else 32768, (12, 10, 3)).astype(np.uint16)
    sixteen_bit[0, 0, 0] = 300  # above 255: the whole image is 16-bit data
    eight_bit = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    # Values above 255: the 16-bit scale, as uint16 arrays and 16-bit PNGs (round(v / 257)).
    expected = processor(images=sixteen_bit, return_tensors="np")["pixel_values"]
    actual = processor(images=sixteen_bit.astype(dtype), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(actual, expected)
    png = io.BytesIO()
    Image.fromarray(sixteen_bit[..., 0]).save(png, format="PNG")
    from_png = processor(images=Image.open(png), return_tensors="np")["pixel_values"]
    gray = processor(images=sixteen_bit[..., 0].astype(dtype), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(gray, from_png)
    # All values in 0..255: 8-bit, as uint8 arrays.
    expected = processor(images=eight_bit, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(
        processor(images=eight_bit.astype(dtype), return_tensors="np")["pixel_values"], expected
    )


# ------------------------------------------------------------------------------------------------ processor memory
@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((3, 333, 517), {"shortest_edge": 512, "longest_edge": 2048}),
        ((3, 97, 2000), {"shortest_edge": 512, "longest_edge": 2048}),
        ((3, 1200, 90), {"shortest_edge": 64, "longest_edge": 256}),
        ((3, 300, 400), {"height": 512, "width": 512}),
        ((3, 513, 511), {"height": 17, "width": 700}),
        ((3, 64, 48), {"height": 64, "width": 30}),
    ],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_tiled_normalise_and_resize_equals_the_whole_image_path(shape, size, dtype, monkeypatch):
    import modeling_segret.image_processing_segret as image_processing

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape).astype(np.uint8) if dtype == np.uint8 else rng.uniform(0, 255, shape)
    image = image.astype(dtype)
    processor = SegRetImageProcessor(size=size)
    monkeypatch.setattr(image_processing, "MAX_TILE_VALUES", 2**62)  # the whole image in float, then resized
    whole = processor(images=image, return_tensors="np")["pixel_values"]
    for tile in (1, 3 * shape[2] * 7, 3 * shape[2] * 64 + 5):  # one row, a few rows, rows not dividing the height
        monkeypatch.setattr(image_processing, "MAX_TILE_VALUES", tile)
        np.testing.assert_array_equal(processor(images=image, return_tensors="np")["pixel_values"], whole)


@pytest.mark.slow
def test_a_20000_square_image_fits_in_8_gib(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "benchmarks" / "processor_memory.py"), "--side", "20000"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads(result.stdout)
    assert report["returncode"] == 0, report
    assert "(1, 3, 512, 512)" in report["result (shape, processing s, error)"], report
    assert report["peak_rss_gib"] < 4, report


# ------------------------------------------------------------------------------------------------ batch of 0 images
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_a_batch_of_0_images_gives_empty_outputs(attn_implementation):
    config = small_config(attn_implementation=attn_implementation, loss_average_over_all_pixels=True)
    model = SegRetForSemanticSegmentation(config).eval()
    one = model(torch.randn(1, 3, 64, 48), output_hidden_states=True, output_attentions=True)
    empty = model(torch.zeros(0, 3, 64, 48), output_hidden_states=True, output_attentions=True)
    assert empty.logits.shape == (0, *one.logits.shape[1:])
    assert [h.shape[1:] for h in empty.hidden_states] == [h.shape[1:] for h in one.hidden_states]
    assert len(empty.attentions) == len(one.attentions)
    padded = model(torch.zeros(0, 3, 64, 48), pixel_mask=torch.ones(0, 64, 48, dtype=torch.long))
    assert padded.logits.shape == empty.logits.shape
    loss = model.train()(torch.zeros(0, 3, 64, 48), labels=torch.zeros(0, 64, 48, dtype=torch.long)).loss
    assert loss.item() == 0  # not 0 / 0
    backbone = SegRetBackbone(small_config(out_features=["stage1", "stage4"])).eval()
    assert [m.shape for m in backbone(torch.zeros(0, 3, 64, 48)).feature_maps] == [(0, 16, 16, 12), (0, 64, 2, 2)]


def test_a_batch_of_0_images_through_the_processor_and_the_pipeline(tmp_path):
    processor = SegRetImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    one = processor(images=np.zeros((3, 40, 100), np.uint8), return_tensors="pt")["pixel_values"]
    for empty_batch in (np.zeros((0, 40, 100, 3), np.uint8), torch.zeros(0, 3, 40, 100)):
        outputs = processor(images=empty_batch, segmentation_maps=np.zeros((0, 40, 100), np.uint8), return_tensors="pt")
        assert outputs["pixel_values"].shape == (0, *one.shape[1:])
        assert outputs["labels"].shape == (0, *one.shape[2:])
    assert processor(images=np.zeros((0, 40, 100, 3), np.uint8))["pixel_values"] == []
    model = SegRetForSemanticSegmentation.from_pretrained(_saved_model(tmp_path / "model")).eval()
    segmenter = pipeline(
        "image-segmentation", model=model, image_processor=processor, pipeline_class=SegRetImageSegmentationPipeline
    )
    assert segmenter([]) == []


# ------------------------------------------------------------------------------------------------ the usage snippet
def _snippet(page: Path) -> str:
    code = re.search(r"```python\n(.*?)```", page.read_text(), re.S).group(1)
    assert "post_process_semantic_segmentation" in code and "exif_transpose" in code, page
    return code


@pytest.mark.parametrize("page", ["README.md", "docs/using.md"])
def test_usage_snippet_gives_the_displayed_size_for_an_exif_rotated_photo(page, tmp_path, monkeypatch):
    folder = _saved_model(tmp_path / "model")
    SegRetImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(folder)
    stored = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)  # stored 24 x 40 (h x w)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: displayed 40 x 24
    Image.fromarray(stored).save(tmp_path / "scene.jpg", exif=exif.tobytes(), quality=95)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(_snippet(REPOSITORY / page).replace("path/or/hub-id", str(folder)), namespace)  # noqa: S102
    segmentation = namespace["segmentation"]
    assert tuple(segmentation.shape) == (40, 24)
    # The pipeline gives the same map at the same (displayed) size.
    segmenter = pipeline("image-segmentation", model=str(folder), trust_remote_code=True)
    masks = segmenter(str(tmp_path / "scene.jpg"))
    label2id = namespace["model"].config.label2id
    from_pipeline = np.zeros((40, 24), np.int64)
    for mask in masks:
        assert mask["mask"].size == (24, 40)
        from_pipeline[np.asarray(mask["mask"]) > 0] = label2id[mask["label"]]
    np.testing.assert_array_equal(segmentation.numpy(), from_pipeline)


# ------------------------------------------------------------------------------------------------ transformers 4.57
LOAD_DAMAGED = """
import json, sys
from transformers import AutoModelForSemanticSegmentation
errors = {}
for name in sys.argv[1:]:
    try:
        AutoModelForSemanticSegmentation.from_pretrained(name, trust_remote_code=True)
        errors[name] = None
    except Exception as error:
        errors[name] = f"{type(error).__name__}: {error}"
print(json.dumps(errors))
"""


@pytest.mark.slow
def test_loading_checks_on_the_oldest_transformers(tmp_path):
    from scripts.compat_matrix import TEST_VERSIONS, _clean_environment, ensure_venv

    hub = assemble(_saved_model(tmp_path / "source"), tmp_path / "hub")
    folders = {}
    for case, edit in {
        "truncated": lambda path: _truncate(path),
        "no_classifier": lambda path: _rewrite(path, lambda w: w.pop("decode_head.classifier.weight")),
        "nan": lambda path: _rewrite(path, lambda w: w["decode_head.fuse.weight"].view(-1)[0].fill_(float("nan"))),
        "intact": lambda path: None,
    }.items():
        folders[case] = tmp_path / case
        shutil.copytree(hub, folders[case])
        edit(folders[case] / "model.safetensors")
    result = subprocess.run(
        [str(ensure_venv(TEST_VERSIONS[0])), "-c", LOAD_DAMAGED, *map(str, folders.values())],
        capture_output=True,
        text=True,
        env=_clean_environment(tmp_path / "modules"),
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert errors[str(folders["intact"])] is None
    assert "truncated/model.safetensors (Error while deserializing header" in errors[str(folders["truncated"])]
    assert "lacks 1 weights" in errors[str(folders["no_classifier"])]
    assert "NaN or infinite values in 1 weights: decode_head.fuse.weight" in errors[str(folders["nan"])]


def _rewrite(path: Path, edit) -> None:
    weights = load_file(path)
    edit(weights)
    save_file(weights, path, metadata={"format": "pt"})
