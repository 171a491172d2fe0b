"""training/evaluation.py end to end with a tiny SegRet on a tiny Cityscapes-schema dataset."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from transformers import pipeline

from modeling_segret import SegRetConfig, SegRetForSemanticSegmentation, SegRetImageProcessor, segret_variant_config
from modeling_segret.inference_segret import rescale_size
from training.data import build_dataset
from training.evaluation import (
    _normalization,
    _predict_batch,
    colorize,
    evaluate_segmentation,
    inference_settings,
    main,
    model_variant,
    save_overlays,
)
from training.metrics import SegmentationMetric
from training.presets import CITYSCAPES_LABEL_IDS, get_preset
from training.transforms import EvalTransform

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(64, 128), (64, 128), (48, 80), (40, 40), (64, 128)]  # rows 0 and 1 stack into one batch
RAW_VALUES = np.array([0, 7, 8, 11, 21, 23, 26, 33], np.uint8)
COMMON = ["--dataset", "cityscapes", "--test_scale", "128", "64", "--dataloader_num_workers", "0"]


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    names = get_preset("cityscapes").class_names
    config = SegRetConfig(
        embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[2, 2, 4, 4], decoder_hidden_size=32,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    torch.manual_seed(0)
    model = SegRetForSemanticSegmentation(config).eval()
    with torch.no_grad():  # a non-trivial classifier so that several classes get predicted
        model.decode_head.classifier.weight.normal_(0, 1)
    model.save_pretrained(root / "model")
    SegRetImageProcessor().save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in SHAPES]
    labels = [rng.choice(RAW_VALUES, shape) for shape in SHAPES]
    table = {
        "image": [{"bytes": _png(x), "path": None} for x in images],
        "semantic_segmentation": [{"bytes": _png(y), "path": None} for y in labels],
    }
    features = datasets.Features({"image": datasets.Image(), "semantic_segmentation": datasets.Image()})
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(table, features=features)}).save_to_disk(
        str(root / "city")
    )
    return root, images, labels


def _run(setup, out, *extra):
    root = setup[0]
    args = ["--model", str(root / "model"), "--dataset_path", str(root / "city"), "--output_dir", str(out)]
    args += [*COMMON, *extra]
    assert main(args) == 0
    return json.loads((Path(out) / "eval_results.json").read_text())


def test_single_scale_matches_manual_inference(setup, tmp_path, capsys):
    root, images, labels = setup
    results = _run(setup, tmp_path, "--mode", "ss", "--num_overlays", "3", "--batch_size", "2")
    # Reference: normalise, resize keep-ratio to (128, 64), logits -> input size -> label size, argmax.
    model = SegRetForSemanticSegmentation.from_pretrained(root / "model").eval()
    lut = np.full(256, 255, np.int64)
    lut[list(CITYSCAPES_LABEL_IDS)] = np.arange(19)
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    metric = SegmentationMetric(19)
    for image, raw in zip(images, labels, strict=True):
        x = ((torch.from_numpy(image).float() - mean) / std).permute(2, 0, 1)[None]
        x = F.interpolate(x, rescale_size(*image.shape[:2], (128, 64)), mode="bilinear", align_corners=False)
        with torch.no_grad():
            logits = model(pixel_values=x).logits
        logits = F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)
        logits = F.interpolate(logits, raw.shape, mode="bilinear", align_corners=False)
        metric.update(logits.argmax(1)[0], torch.from_numpy(lut[raw]))
    expected = metric.compute()
    assert results["num_samples"] == 5 and results["split"] == "validation" and results["mode"] == "ss"
    assert results["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    assert results["mIoU"] == round(100 * expected["mean_iou"], 2)
    got_iou = [np.nan if c["iou"] is None else c["iou"] for c in results["per_class"]]
    np.testing.assert_allclose(got_iou, expected["per_category_iou"], atol=1e-12)
    assert sum(c["iou"] is not None for c in results["per_class"]) >= 3
    assert results["per_class"][0]["name"] == "road" and len(results["per_class"]) == 19
    printed = capsys.readouterr().out
    assert "| road" in printed and f"mIoU {results['mIoU']:.2f}" in printed
    overlays = sorted((tmp_path / "overlays").iterdir())
    assert [p.name for p in overlays] == ["00000.png", "00001.png", "00002.png"]
    assert Image.open(overlays[1]).size == (2 * 128 + 4, 64) and Image.open(overlays[2]).size == (2 * 80 + 4, 48)


def test_library_functions_match_the_script(setup, tmp_path):
    # What a training loop calls: evaluate_segmentation on a model in memory, then save_overlays.
    root = setup[0]
    script = _run(setup, tmp_path / "script", "--mode", "ss", "--num_overlays", "0")
    model = SegRetForSemanticSegmentation.from_pretrained(root / "model")
    model.train()
    dataset = build_dataset("cityscapes", str(root / "city"))
    scores = evaluate_segmentation(model, dataset, mode="ss", test_scale=(128, 64), show_progress=False)
    assert model.training  # restored
    assert scores["mean_iou"] == script["mean_iou"] and scores["num_samples"] == 5
    assert scores["inference"] == {"test_scale": [128, 64], "mode": "whole", "scales": [1.0], "flip": False}
    overlay_settings = {"mode": "slide", "test_scale": (128, 64), "slide_crop_size": (32, 32), "slide_stride": (32, 32)}
    paths = save_overlays(model, dataset, None, tmp_path / "overlays", 2, **overlay_settings)
    assert [p.name for p in paths] == ["00000.png", "00001.png"] and all(p.is_file() for p in paths)


def test_pipeline_mask_equals_the_single_scale_prediction(setup):
    """`pipeline(...)` with a processor sized like the test scale predicts what `evaluation.py --mode ss` predicts:
    the same normalisation, the same resize of the image and of the logits, bit for bit."""
    root, images, _ = setup
    model = SegRetForSemanticSegmentation.from_pretrained(root / "model").eval()
    processor = SegRetImageProcessor.from_pretrained(root / "model", size={"shortest_edge": 64, "longest_edge": 128})
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    dataset = build_dataset(
        "cityscapes", str(root / "city"), transform=EvalTransform(*_normalization(str(root / "model"), False))
    )
    settings = inference_settings(get_preset("cityscapes"), "ss", test_scale=(128, 64))
    for index, image in enumerate(images):
        item = dataset[index]
        expected = _predict_batch(
            model, [item["pixel_values"]], [item["labels"]], settings, torch.device("cpu"), 4, None
        )
        predicted = np.full(image.shape[:2], -1)
        for segment in segmenter(Image.fromarray(image)):
            predicted[np.asarray(segment["mask"]) > 0] = model.config.label2id[segment["label"]]
        np.testing.assert_array_equal(predicted, expected[0].numpy())


def test_overlay_colours():
    palette = get_preset("cityscapes").palette
    colours = colorize(np.array([[0, 18, 255]]), palette)
    assert colours.tolist() == [[list(palette[0]), list(palette[18]), [0, 0, 0]]]


def test_slide_and_multi_scale_modes(setup, tmp_path):
    slide = _run(
        setup, tmp_path / "slide", "--mode", "slide", "--slide_crop_size", "48", "48", "--slide_stride", "40", "40"
    )
    assert slide["inference"] == {"mode": "slide", "scales": [1.0], "flip": False, "crop_size": [48, 48],
                                  "stride": [40, 40]}  # fmt: skip
    ms = _run(setup, tmp_path / "ms", "--mode", "ms", "--scales", "0.5", "1.0", "--batch_size", "2")
    assert ms["inference"] == {"mode": "whole", "scales": [0.5, 1.0], "flip": True}
    for result in (slide, ms):
        assert result["num_samples"] == 5 and 0 <= result["mean_iou"] <= 1 and result["test_scale"] == [128, 64]


def test_bad_labels_fail_with_row(setup, tmp_path, capsys):
    root = setup[0]
    image = np.zeros((8, 8, 3), np.uint8)
    table = {
        "image": [{"bytes": _png(image), "path": None}] * 2,
        "semantic_segmentation": [{"bytes": _png(np.full((8, 8), 7, np.uint8)), "path": None},
                                  {"bytes": _png(np.full((8, 8), 40, np.uint8)), "path": None}],
    }  # fmt: skip
    features = datasets.Features({"image": datasets.Image(), "semantic_segmentation": datasets.Image()})
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(tmp_path / "bad"))
    args = ["--model", str(root / "model"), "--dataset_path", str(tmp_path / "bad"), "--output_dir", str(tmp_path)]
    assert main([*args, *COMMON, "--verify_labels", "2"]) == 1
    assert "row 1: values [40]" in capsys.readouterr().err
    assert main([*args, *COMMON]) == 1  # without the check, the row fails when it is read
    assert "row 1" in capsys.readouterr().err and not (tmp_path / "eval_results.json").exists()


def test_model_and_dataset_class_mismatch(setup, tmp_path):
    root = setup[0]
    args = ["--model", str(root / "model"), "--dataset_path", str(root / "city"), "--dataset", "generic",
            "--num_labels", "5", "--label_column", "semantic_segmentation", "--output_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(ValueError, match="predicts 19 classes but the generic preset has 5"):
        main(args)


@pytest.mark.slow
def test_script_and_two_process_accelerate_launch_agree(setup, tmp_path):
    root = setup[0]
    args = ["--model", str(root / "model"), "--dataset_path", str(root / "city"), *COMMON, "--num_overlays", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels in both runs: results must be identical
    single = subprocess.run(
        [sys.executable, str(ROOT / "training" / "evaluation.py"), *args, "--output_dir", str(tmp_path / "one")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
    ]
    two = subprocess.run(
        [*launch, str(ROOT / "training" / "evaluation.py"), *args, "--output_dir", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "eval_results.json").read_text())
    both = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    assert one["num_processes"] == 1 and both["num_processes"] == 2 and both["num_samples"] == 5
    assert both["per_class"] == one["per_class"] and both["mean_iou"] == one["mean_iou"]


# ------------------------------------------------------------------------------- protocol per variant and dataset
@pytest.mark.parametrize("variant", ["tiny", "small", "base", "large"])
def test_model_variant_is_read_from_the_config(variant):
    config = segret_variant_config(variant, num_labels=19)
    assert model_variant(config) == variant
    # Other classes, retention kernels or decoder width do not change which variant it is.
    changed = segret_variant_config(variant, num_labels=7, retention_modes=["global"] * 4, decoder_hidden_size=64)
    assert model_variant(changed) == variant
    assert model_variant(SegRetConfig(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1])) is None
    assert model_variant(None) is None


def _scales(preset):
    return preset.train_scale, preset.crop_size, preset.test_scale, preset.slide_crop, preset.slide_stride


def test_large_on_ade20k_tests_at_640_and_cityscapes_whole():
    tiny, large = get_preset("ade20k", variant="tiny"), get_preset("ade20k", variant="large")
    assert _scales(tiny) == _scales(get_preset("ade20k")) == ((2048, 512), (512, 512), (2048, 512), (512, 512),
                                                              (341, 341))  # fmt: skip
    assert (large.train_scale, large.crop_size, large.test_scale) == ((2560, 640), (640, 640), (2560, 640))
    assert inference_settings(large, "ss") == {"test_scale": (2560, 640), "mode": "whole", "scales": (1.0,),
                                               "flip": False}  # fmt: skip
    slide = inference_settings(large, "slide")
    assert (slide["test_scale"], slide["crop_size"], slide["stride"]) == ((2560, 640), (640, 640), (426, 426))
    assert inference_settings(large, "ms", scales=(0.5, 1.0))["test_scale"] == (2560, 640)
    # Only ADE20K changes with the variant; Cityscapes ss predicts the whole 1024×2048 image, slide stays an option.
    assert _scales(get_preset("coco_stuff", variant="large")) == _scales(get_preset("coco_stuff"))
    city = get_preset("cityscapes", variant="large")
    assert _scales(city) == _scales(get_preset("cityscapes"))
    ss = inference_settings(city, "ss")
    assert ss["mode"] == "whole" and rescale_size(1024, 2048, ss["test_scale"]) == (1024, 2048)
    slide = inference_settings(city, "slide")
    assert (slide["crop_size"], slide["stride"]) == ((1024, 1024), (768, 768))
    # The explicit settings of a run still win.
    assert inference_settings(large, "ss", test_scale=(2048, 512))["test_scale"] == (2048, 512)
    window = inference_settings(large, "slide", slide_crop_size=(320, 320), slide_stride=(200, 200))
    assert (window["crop_size"], window["stride"]) == ((320, 320), (200, 200))  # segment()'s names for them


def test_in_training_evaluation_follows_the_variant():
    from training.recipe import DataArguments, resolve_preset

    assert resolve_preset(DataArguments(dataset="ade20k"), "large").slide_stride == (426, 426)
    assert resolve_preset(DataArguments(dataset="ade20k"), "base").test_scale == (2048, 512)
    recipe = yaml.safe_load((ROOT / "configuration/recipes/segret-large-ade20k.yaml").read_text())
    assert (tuple(recipe["crop_size"]), tuple(recipe["test_scale"])) == ((640, 640), (2560, 640))
    for variant in ("tiny", "small", "base", "large"):
        recipe = yaml.safe_load((ROOT / f"configuration/recipes/segret-{variant}-cityscapes.yaml").read_text())
        assert recipe["eval_mode"] == "ss" and "test_scale" not in recipe  # the whole 1024×2048 image


@pytest.fixture(scope="module")
def ade_setup(tmp_path_factory):
    """A tiny model with ADE20K's 150 classes and two ADE20K-schema rows."""
    root = tmp_path_factory.mktemp("evaluate_ade")
    names = get_preset("ade20k").class_names
    config = SegRetConfig(
        embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[2, 2, 4, 4], decoder_hidden_size=32,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    torch.manual_seed(0)
    SegRetForSemanticSegmentation(config).save_pretrained(root / "model")
    SegRetImageProcessor().save_pretrained(root / "model")
    rng = np.random.default_rng(1)
    table = {
        "image": [{"bytes": _png(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)), "path": None}],
        "annotation": [{"bytes": _png(rng.integers(0, 151, (30, 40), dtype=np.uint8)), "path": None}],
    }
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(table, features=features)}).save_to_disk(
        str(root / "ade")
    )
    return root


@pytest.mark.parametrize(("variant", "test_scale", "window"), [(None, [2048, 512], [512, 512]),
                                                              ("large", [2560, 640], [640, 640])])  # fmt: skip
def test_cli_test_scale_follows_the_variant(ade_setup, tmp_path, variant, test_scale, window):
    # The tiny architecture is no paper variant: dataset defaults, unless --variant names one.
    args = ["--model", str(ade_setup / "model"), "--dataset_path", str(ade_setup / "ade"), "--dataset", "ade20k"]
    args += ["--output_dir", str(tmp_path), "--dataloader_num_workers", "0", "--num_overlays", "0", "--mode", "slide"]
    assert main(args + (["--variant", variant] if variant else [])) == 0
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["variant"] == variant and results["test_scale"] == test_scale
    assert results["inference"]["crop_size"] == window and results["num_samples"] == 1
