"""transformers' image-segmentation pipeline with SegRet: SegRet's pipeline class (batches of any sizes, images read
as the processor reads them), padded batches through transformers' own class, contiguous logits."""

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_in_fresh_process, small_config
from PIL import Image
from transformers import pipeline

from modeling_segret import SegRetForSemanticSegmentation, SegRetImageProcessor, SegRetImageSegmentationPipeline
from modeling_segret.pipeline_segret import open_image

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
    """SegRet's pipeline class with the default (keep-ratio, unpadded) processor: `pipeline(images, batch_size=n)` with
    any mix of sizes gives the masks of one-by-one calls of transformers' own pipeline, pixel for pixel."""
    images = random_images()
    processor = SegRetImageProcessor(size=KEEP_RATIO)
    reference_pipeline = pipeline("image-segmentation", model=model, image_processor=processor)
    segret_pipeline = pipeline(
        "image-segmentation", model=model, image_processor=processor, pipeline_class=SegRetImageSegmentationPipeline
    )
    assert type(segret_pipeline) is SegRetImageSegmentationPipeline
    label2id = model.config.label2id
    expected = [class_map(reference_pipeline(image), label2id) for image in images]
    assert len({tuple(np.unique(reference)) for reference in expected}) > 1  # not one class everywhere
    for batch_size in (1, 4, 6):
        results = segret_pipeline(images, batch_size=batch_size)
        for image, segments, reference in zip(images, results, expected, strict=True):
            classes = class_map(segments, label2id)
            assert classes.shape == (image.height, image.width)
            np.testing.assert_array_equal(classes, reference)
    for image, reference in zip(images, expected, strict=True):
        np.testing.assert_array_equal(class_map(segret_pipeline(image), label2id), reference)
    # The same output as transformers' class, item for item: one mask per class present, in class order.
    for image in images[:2]:
        ours, theirs = segret_pipeline(image), reference_pipeline(image)
        assert [(s["score"], s["label"], s["mask"].mode) for s in ours] == [
            (s["score"], s["label"], s["mask"].mode) for s in theirs
        ]
        assert all(a["mask"].tobytes() == b["mask"].tobytes() for a, b in zip(ours, theirs, strict=True))
    with pytest.raises(ValueError, match="Subtask panoptic is not supported"):
        segret_pipeline(images[0], subtask="panoptic")


def test_post_processing_is_mmseg_two_step_resize(model):
    """Post-processing resizes the model's logits as MMSegmentation does (`predict_by_feat` to the resized image,
    `postprocess_result` to the original size, both `F.interpolate` bilinear without corner alignment): the scores
    bit for bit, the class map their argmax, the pipeline's masks that class map."""
    processor = SegRetImageProcessor(size=KEEP_RATIO)
    segret_pipeline = pipeline(
        "image-segmentation", model=model, image_processor=processor, pipeline_class=SegRetImageSegmentationPipeline
    )
    for image in random_images():
        inputs = processor(image, return_tensors="pt")
        with torch.inference_mode():
            outputs = model(**inputs)
        original_size = (image.height, image.width)
        resized = F.interpolate(outputs.logits, inputs["pixel_values"].shape[-2:], mode="bilinear", align_corners=False)
        expected = F.interpolate(resized, original_size, mode="bilinear", align_corners=False)[0]
        (result,) = processor.post_process_semantic_segmentation(
            outputs, target_sizes=[original_size], return_segmentation_scores=True
        )
        assert torch.equal(result["segmentation_scores"], expected)
        (class_map_,) = processor.post_process_semantic_segmentation(outputs, target_sizes=[original_size])
        assert torch.equal(class_map_, expected.argmax(0)) and torch.equal(result["segmentation"], class_map_)
        np.testing.assert_array_equal(class_map(segret_pipeline(image), model.config.label2id), class_map_.numpy())


def test_padded_batch_through_transformers_pipeline(model):
    """transformers' own pipeline class concatenates the pixel values of a batch: a mix of sizes needs one padded
    size, `do_pad=True` with a `pad_size` that holds every resized image; the masks then equal one-by-one calls."""
    images = random_images()
    one_by_one = pipeline("image-segmentation", model=model, image_processor=SegRetImageProcessor(size=KEEP_RATIO))
    padding = SegRetImageProcessor(size=KEEP_RATIO, do_pad=True, pad_size=CANVAS)
    batched = pipeline("image-segmentation", model=model, image_processor=padding)
    label2id = model.config.label2id
    expected = [class_map(one_by_one(image), label2id) for image in images]
    for segments, reference in zip(batched(images, batch_size=4), expected, strict=True):
        np.testing.assert_array_equal(class_map(segments, label2id), reference)
    # SegRet's class ignores the padding (it batches by size), and gives the same masks with this processor too.
    segret_pipeline = pipeline(
        "image-segmentation", model=model, image_processor=padding, pipeline_class=SegRetImageSegmentationPipeline
    )
    for segments, reference in zip(segret_pipeline(images, batch_size=4), expected, strict=True):
        np.testing.assert_array_equal(class_map(segments, label2id), reference)


def test_pipeline_reads_16_bit_and_exif_photos_as_the_processor_does(model, tmp_path):
    """A 16-bit PNG reaches the model on the processor's scale (transformers' `load_image` clips it to 8 bit first),
    and an EXIF-rotated photo in its displayed orientation, with masks of the displayed size."""
    processor = SegRetImageProcessor(size=KEEP_RATIO)
    segret_pipeline = pipeline(
        "image-segmentation", model=model, image_processor=processor, pipeline_class=SegRetImageSegmentationPipeline
    )
    rng = np.random.default_rng(1)
    samples = rng.integers(0, 65536, (40, 60), dtype=np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(samples).save(path)
    assert Image.open(path).mode.startswith("I;16")
    expected = processor(Image.open(path), return_tensors="pt")["pixel_values"][0]
    for given in (str(path), Image.open(path)):
        torch.testing.assert_close(segret_pipeline.preprocess(given)["pixel_values"][0], expected, rtol=0, atol=0)
    clipped = processor(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    assert (clipped - expected).abs().max() > 1  # what transformers' reader would have given: a different image
    assert [class_map(segret_pipeline(str(path)), model.config.label2id).shape] == [(40, 60)]

    stored = rng.integers(0, 256, (30, 70, 3), dtype=np.uint8)  # 70 wide, 30 high
    photo = Image.fromarray(stored)
    exif = photo.getexif()
    exif[0x0112] = 6  # Orientation: turn 90° clockwise to display
    photo_path = tmp_path / "phone.png"
    photo.save(photo_path, exif=exif)
    displayed = np.ascontiguousarray(np.rot90(stored, k=-1))  # k=-1: clockwise
    expected = processor(displayed, return_tensors="pt")["pixel_values"][0]
    inputs = segret_pipeline.preprocess(str(photo_path))
    torch.testing.assert_close(inputs["pixel_values"][0], expected, rtol=0, atol=0)
    assert inputs["target_size"] == [(70, 30)]
    segments = segret_pipeline(str(photo_path))
    assert segments[0]["mask"].size == (30, 70)  # PIL: (width, height) as displayed


def test_pipeline_path_warns_nothing(model, tmp_path):
    """Deprecation warnings are errors on the whole pipeline path (construction, pre-processing of every image kind,
    the model, post-processing, masks; SegRet's class and transformers' own), and so is any warning raised in
    SegRet's modules. E.g. Pillow 11.3 deprecated `Image.fromarray(..., mode=...)`, which the masks no longer pass."""
    rng = np.random.default_rng(2)
    photo = Image.fromarray(rng.integers(0, 256, (30, 70, 3), dtype=np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(tmp_path / "phone.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 65536, (40, 60), dtype=np.uint16)).save(tmp_path / "depth.png")
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).convert("P").save(tmp_path / "palette.gif")
    images = [
        *random_images()[:2],
        Image.fromarray(rng.integers(0, 256, (25, 35, 4), dtype=np.uint8)),  # RGBA
        Image.open(tmp_path / "phone.jpg"),
        Image.open(tmp_path / "depth.png"),
        Image.open(tmp_path / "palette.gif"),
        str(tmp_path / "depth.png"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", PendingDeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        warnings.filterwarnings("error", module=r"modeling_segret\b")
        processor = SegRetImageProcessor(size=KEEP_RATIO)
        segret_pipeline = pipeline(
            "image-segmentation",
            model=model,
            image_processor=processor,
            pipeline_class=SegRetImageSegmentationPipeline,
        )
        transformers_pipeline = pipeline("image-segmentation", model=model, image_processor=processor)
        for image in images:
            assert segret_pipeline(image)
            if not isinstance(image, str):
                assert transformers_pipeline(image)
        assert len(segret_pipeline(images, batch_size=3)) == len(images)


def test_pipeline_image_errors(tmp_path):
    with pytest.raises(ValueError, match="neither an existing file, an http"):
        open_image(str(tmp_path / "no-such-photo.jpg"))
    with pytest.raises(TypeError, match="takes a PIL image, a path, a URL or a base64 string, got ndarray"):
        open_image(np.zeros((4, 4, 3), dtype=np.uint8))
    path = tmp_path / "image.png"
    Image.fromarray(np.full((4, 5, 3), 7, dtype=np.uint8)).save(path)
    import base64

    encoded = base64.b64encode(path.read_bytes()).decode()
    for given in (encoded, "data:image/png;base64," + encoded):
        assert np.asarray(open_image(given)).tolist() == np.asarray(Image.open(path)).tolist()


REMOTE_BATCHED_PIPELINE = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_segret"] = None  # the package cannot be imported: only the folder's remote code runs
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    folder, sizes = sys.argv[1], json.loads(sys.argv[2])
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True)

    def classes(segments):
        array = np.full(segments[0]["mask"].size[::-1], -1)
        for segment in segments:
            array[np.asarray(segment["mask"]) > 0] = segmenter.model.config.label2id[segment["label"]]
        return array.tolist()

    depth = f"{folder}/../depth.png"
    Image.fromarray(rng.integers(0, 65536, (40, 60), dtype=np.uint16)).save(depth)
    print(json.dumps({
        "pipeline_class": type(segmenter).__name__,
        "one_by_one": [classes(segmenter(image)) for image in images],
        "batched": [classes(segments) for segments in segmenter(images, batch_size=4)],
        "16_bit_pixels": segmenter.preprocess(depth)["pixel_values"][0].tolist(),
        "16_bit_processor": segmenter.image_processor(Image.open(depth), return_tensors="pt")["pixel_values"][0]
        .tolist(),
    }))
    """
)


def test_batched_pipeline_as_remote_code(model, tmp_path):
    """A saved folder names SegRet's pipeline class in config.json: with trust_remote_code=True transformers'
    `pipeline` builds it (batches of any sizes, 16-bit images on the processor's scale), whether or not the package is
    imported; without the flag transformers refuses, package or not (tests/test_loading_paths.py: every path)."""
    folder = tmp_path / "segret-remote"
    model.save_pretrained(folder)
    SegRetImageProcessor(size=KEEP_RATIO).save_pretrained(folder)
    assert (folder / "pipeline_segret.py").is_file()
    assert json.loads((folder / "config.json").read_text())["custom_pipelines"]["image-segmentation"]["impl"] == (
        "pipeline_segret.SegRetImageSegmentationPipeline"
    )
    report = run_in_fresh_process(REMOTE_BATCHED_PIPELINE, str(folder), json.dumps(IMAGE_SIZES), cwd=tmp_path)
    assert report["pipeline_class"] == "SegRetImageSegmentationPipeline"
    assert [np.asarray(classes).shape for classes in report["batched"]] == IMAGE_SIZES
    assert report["batched"] == report["one_by_one"]
    assert report["16_bit_pixels"] == report["16_bit_processor"]

    # The package is imported here: the same call builds the same class.
    segmenter = pipeline("image-segmentation", model=str(folder), trust_remote_code=True)
    assert type(segmenter).__name__ == "SegRetImageSegmentationPipeline"
    saved = json.loads((folder / "config.json").read_text())
    assert segmenter.model.config.custom_pipelines == saved["custom_pipelines"]
    images = random_images()
    batched = [class_map(segments, model.config.label2id).tolist() for segments in segmenter(images, batch_size=3)]
    assert batched == report["batched"]
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("image-segmentation", model=str(folder))


@pytest.mark.slow
def test_benchmark_pipeline_parts_run(tmp_path):
    """`benchmarks/run.py --quick` runs the pipeline and post-processing memory parts and writes nothing."""
    output = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, "benchmarks/run.py", "--quick", "--parts", "pipeline", "postprocess-memory"]
    result = subprocess.run(
        [*command, "--output", str(output)], cwd=REPOSITORY, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for heads in ("10 winning classes", "random heads"):  # both head settings at the small size
        assert f"| SegRet-Tiny pipeline (default keep-ratio processor, short side 512), {heads} |" in result.stdout
    assert (
        "- now: SegRetImageProcessor.post_process_semantic_segmentation, post-processing one 600×400" in result.stdout
    )
    assert not output.exists()
