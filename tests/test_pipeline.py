"""transformers' image-segmentation pipeline with SegRet: batched calls, padded batches, contiguous logits."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_in_fresh_process, small_config
from PIL import Image
from transformers import pipeline

from modeling_segret import SegRetForSemanticSegmentation, SegRetImageProcessor

REPOSITORY = Path(__file__).resolve().parents[1]

# Keep-ratio sizes differ with the aspect ratio; two images share a size, so that a group of two runs at once.
IMAGE_SIZES = [(40, 50), (50, 40), (30, 90), (40, 50), (17, 23), (64, 64)]  # (height, width)
KEEP_RATIO = {"shortest_edge": 32, "longest_edge": 96}
CANVAS = {"height": 96, "width": 96}  # every keep-ratio size fits


def random_images(sizes=IMAGE_SIZES) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for size in sizes]


def class_map(segments: list[dict], label2id: dict[str, int]) -> np.ndarray:
    """The pipeline's per-class masks back into one (H, W) class map (-1 where no mask covers a pixel)."""
    width, height = segments[0]["mask"].size
    classes = np.full((height, width), -1)
    for segment in segments:
        classes[np.asarray(segment["mask"]) > 0] = label2id[segment["label"]]
    return classes


@pytest.fixture(scope="module")
def model() -> SegRetForSemanticSegmentation:
    torch.manual_seed(0)
    model = SegRetForSemanticSegmentation(small_config()).eval()
    with torch.no_grad():  # a non-trivial classifier so that several classes get predicted
        model.decode_head.classifier.weight.normal_(0, 1)
    return model


def test_logits_leave_the_model_contiguous(model):
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 64, 96)).logits
    assert logits.is_contiguous()
    assert logits.stride() == (5 * 16 * 24, 16 * 24, 24, 1)


def test_padded_batch_equals_each_image_alone(model):
    """With `pixel_mask` every image runs at its own size: its logits equal those of the image alone (bit for bit
    when its size is unique in the batch; images of one size run as one batch, whose matrix products may round
    differently from a batch of one)."""
    processor = SegRetImageProcessor(size=KEEP_RATIO)
    images = random_images()
    padded = processor(images, do_pad=True, pad_size=CANVAS, return_tensors="pt")
    assert tuple(padded["pixel_values"].shape) == (6, 3, 96, 96) and tuple(padded["pixel_mask"].shape) == (6, 96, 96)
    with torch.inference_mode():
        batch_logits = model(**padded).logits
        assert tuple(batch_logits.shape) == (6, 5, 24, 24)
        for index, image in enumerate(images):
            alone = processor(image, return_tensors="pt")
            assert torch.equal(padded["pixel_mask"][index].sum(), torch.tensor(alone["pixel_values"][0, 0].numel()))
            logits = model(**alone).logits[0]
            _, height, width = logits.shape
            if IMAGE_SIZES.count(IMAGE_SIZES[index]) == 1:
                assert torch.equal(batch_logits[index, :, :height, :width], logits)
            torch.testing.assert_close(batch_logits[index, :, :height, :width], logits, rtol=0, atol=1e-5)
            assert not batch_logits[index, :, height:].any() and not batch_logits[index, :, :, width:].any()


def test_padded_batch_mask_errors(model):
    pixel_values = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 32, 32, dtype=torch.int64)
    mask[0, 8:, :16] = 1
    with pytest.raises(ValueError, match="not one top-left rectangle"):
        model(pixel_values, pixel_mask=mask)
    with pytest.raises(ValueError, match=r"must have shape \(batch_size, height, width\)"):
        model(pixel_values, pixel_mask=torch.ones(1, 16, 16, dtype=torch.int64).tril())
    mask = torch.ones(1, 32, 32, dtype=torch.int64)
    mask[:, 16:] = 0
    with pytest.raises(ValueError, match="for inference"):
        model(pixel_values, labels=torch.zeros(1, 32, 32, dtype=torch.int64), pixel_mask=mask)


def test_batched_pipeline_equals_one_by_one_calls(model):
    """`pipeline(images, batch_size=4)` with any mix of sizes gives the masks of one-by-one calls, pixel for pixel.

    transformers' pipeline preprocesses one image at a time and concatenates the pixel values, so a batch of mixed
    sizes needs one padded size: `do_pad=True` with a `pad_size` that holds every resized image.
    """
    images = random_images()
    one_by_one = pipeline("image-segmentation", model=model, image_processor=SegRetImageProcessor(size=KEEP_RATIO))
    padding = SegRetImageProcessor(size=KEEP_RATIO, do_pad=True, pad_size=CANVAS)
    batched = pipeline("image-segmentation", model=model, image_processor=padding)
    label2id = model.config.label2id
    expected = [class_map(one_by_one(image), label2id) for image in images]
    for batch_size in (4, 6):
        results = batched(images, batch_size=batch_size)
        for image, segments, reference in zip(images, results, expected, strict=True):
            classes = class_map(segments, label2id)
            assert classes.shape == (image.height, image.width)
            np.testing.assert_array_equal(classes, reference)
    assert len({tuple(np.unique(reference)) for reference in expected}) > 1  # not one class everywhere
    # The padded processor one image at a time gives the same masks as well.
    for image, reference in zip(images, expected, strict=True):
        np.testing.assert_array_equal(class_map(batched(image), label2id), reference)


REMOTE_BATCHED_PIPELINE = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_segret"] = None  # the package cannot be imported: only the folder's remote code runs
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    folder, sizes = sys.argv[1], json.loads(sys.argv[2])
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    padding = AutoImageProcessor.from_pretrained(
        folder, trust_remote_code=True, do_pad=True, pad_size={"height": 96, "width": 96}
    )
    one_by_one = pipeline("image-segmentation", model=folder, trust_remote_code=True)
    batched = pipeline("image-segmentation", model=folder, trust_remote_code=True, image_processor=padding)

    def classes(segments):
        array = np.full(segments[0]["mask"].size[::-1], -1)
        for segment in segments:
            array[np.asarray(segment["mask"]) > 0] = one_by_one.model.config.label2id[segment["label"]]
        return array.tolist()

    print(json.dumps({
        "one_by_one": [classes(one_by_one(image)) for image in images],
        "batched": [classes(segments) for segments in batched(images, batch_size=4)],
    }))
    """
)


def test_batched_pipeline_as_remote_code(model, tmp_path):
    folder = tmp_path / "segret-remote"
    model.save_pretrained(folder)
    SegRetImageProcessor(size=KEEP_RATIO).save_pretrained(folder)
    report = run_in_fresh_process(REMOTE_BATCHED_PIPELINE, str(folder), json.dumps(IMAGE_SIZES), cwd=tmp_path)
    assert [np.asarray(classes).shape for classes in report["batched"]] == IMAGE_SIZES
    assert report["batched"] == report["one_by_one"]


@pytest.mark.slow
def test_benchmark_pipeline_parts_run(tmp_path):
    """`benchmarks/run.py --quick` runs the pipeline and post-processing memory parts and writes nothing."""
    output = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, "benchmarks/run.py", "--quick", "--parts", "pipeline", "postprocess-memory"]
    result = subprocess.run(
        [*command, "--output", str(output)], cwd=REPOSITORY, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| SegRet-Tiny pipeline (default keep-ratio processor, short side 512) |" in result.stdout
    assert (
        "- now: SegRetImageProcessor.post_process_semantic_segmentation, post-processing one 600×400" in result.stdout
    )
    assert not output.exists()
