"""Each augmentation step against its MMSegmentation formula, replaying the random draws with the same seed."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from modeling_segret.inference_segret import rescale_size
from training.transforms import (
    MEAN,
    STD,
    EvalTransform,
    TrainTransform,
    denormalize,
    normalize,
    pad_to_size,
    photometric_distortion,
    random_crop,
    random_flip,
    random_resize,
    resize_image,
    resize_training_label,
    sample_rng,
    single_threaded_opencv,
)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("h", "w", "scale", "expected"),
    [
        ((480), 640, (2048, 512), (512, 683)),  # short side bound: s = 512/480
        (1024, 2048, (2048, 1024), (1024, 2048)),  # Cityscapes test scale is the identity
        (1000, 3000, (2048, 512), (512, 1536)),  # s = min(2048/3000, 512/1000) = 0.512
        (100, 1000, (512, 2048), (205, 2048)),  # long side bound, bounds in either order
        (480, 640, 0.5, (240, 320)),  # plain factor
    ],
)
def test_rescale_size(h, w, scale, expected):
    assert rescale_size(h, w, scale) == expected


def _bilinear_reference(img, out_h, out_w):
    # Half-pixel centres, edge clamping, no antialiasing (OpenCV INTER_LINEAR), float64 loops.
    in_h, in_w = img.shape[:2]
    out = np.zeros((out_h, out_w, img.shape[2]))
    for i in range(out_h):
        y = max((i + 0.5) * in_h / out_h - 0.5, 0)
        y0 = min(int(np.floor(y)), in_h - 1)
        y1, fy = min(y0 + 1, in_h - 1), y - y0
        for j in range(out_w):
            x = max((j + 0.5) * in_w / out_w - 0.5, 0)
            x0 = min(int(np.floor(x)), in_w - 1)
            x1, fx = min(x0 + 1, in_w - 1), x - x0
            top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
            bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("out_size", [(9, 4), (3, 13), (5, 7)])
def test_resize_image_is_bilinear_half_pixel(out_size):
    img = _image(5, 7)
    got = resize_image(img, out_size)
    assert got.dtype == np.uint8 and got.shape == (*out_size, 3)
    expected = _bilinear_reference(img.astype(np.float64), *out_size)
    # OpenCV's 11-bit fixed point and truncating shifts: within one grey level of exact bilinear (equality with
    # cv2.resize itself is tested below).
    assert np.abs(got.astype(np.float64) - expected).max() < 1


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])  # int64: numpy, OpenCV 4 cannot hold it
def test_resize_label_nearest_rule(dtype):
    label = np.arange(24, dtype=dtype).reshape(4, 6)
    got = resize_training_label(label, (8, 3))
    expected = np.array([[label[i * 4 // 8, j * 6 // 3] for j in range(3)] for i in range(8)])
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == dtype
    assert set(np.unique(resize_training_label(label, (3, 11)))) <= set(np.unique(label))


@pytest.mark.parametrize("seed", range(5))
def test_random_resize_replays_ratio(seed):
    img, label = _image(48, 64, seed), np.zeros((48, 64), np.uint8)
    out_img, out_label = random_resize(img, label, (2048, 512), (0.5, 2.0), np.random.default_rng(seed))
    ratio = np.random.default_rng(seed).random() * 1.5 + 0.5
    expected = rescale_size(48, 64, (int(2048 * ratio), int(512 * ratio)))
    assert out_img.shape[:2] == expected == out_label.shape


def test_random_crop_offsets_without_category_check():
    img, label = _image(40, 50), np.arange(2000).reshape(40, 50).astype(np.int64)
    out_img, out_label = random_crop(img, label, (16, 20), cat_max_ratio=1.0, rng=np.random.default_rng(3))
    rng = np.random.default_rng(3)
    y1, x1 = rng.integers(0, 40 - 16 + 1), rng.integers(0, 50 - 20 + 1)
    np.testing.assert_array_equal(out_label, label[y1 : y1 + 16, x1 : x1 + 20])
    np.testing.assert_array_equal(out_img, img[y1 : y1 + 16, x1 : x1 + 20])


def _replay_cat_crop(label, crop, seed, ratio=0.75, ignore=255, tries=10, rng=None):
    """The accepted box by mmseg's rule, drawn from a generator with the same seed (or from ``rng``)."""
    rng = rng if rng is not None else np.random.default_rng(seed)

    def box():
        y1 = rng.integers(0, max(label.shape[0] - crop[0], 0) + 1)
        x1 = rng.integers(0, max(label.shape[1] - crop[1], 0) + 1)
        return y1, x1

    y1, x1 = box()
    for _ in range(tries):
        values, counts = np.unique(label[y1 : y1 + crop[0], x1 : x1 + crop[1]], return_counts=True)
        counts = counts[values != ignore]
        if len(counts) > 1 and counts.max() / counts.sum() < ratio:
            break
        y1, x1 = box()
    return y1, x1, rng


@pytest.mark.parametrize("seed", range(6))
def test_random_crop_category_ratio(seed):
    # Class 1 fills a 12x12 corner of a 40x40 class-0 map: most 16x16 crops are rejected (>75% one class).
    label = np.zeros((40, 40), np.uint8)
    label[:12, :12] = 1
    label[30:, 30:] = 255
    img = _image(40, 40, seed)
    rng = np.random.default_rng(seed)
    _, out = random_crop(img, label, (16, 16), 0.75, 255, rng)
    y1, x1, replay = _replay_cat_crop(label, (16, 16), seed)
    np.testing.assert_array_equal(out, label[y1 : y1 + 16, x1 : x1 + 16])
    assert rng.random() == replay.random()  # same number of draws


@pytest.mark.parametrize("fill", [7, 255])
def test_random_crop_uses_eleventh_box_after_ten_rejections(fill):
    label = np.full((40, 40), fill, np.uint8)  # one class, or nothing labelled: every check fails
    rng = np.random.default_rng(11)
    random_crop(_image(40, 40), label, (16, 16), 0.75, 255, rng)
    replay = np.random.default_rng(11)
    replay.integers(0, 25, size=22)  # 11 boxes x 2 offsets
    assert rng.random() == replay.random()


def test_random_crop_ignores_255_and_keeps_small_images():
    label = np.full((20, 20), 255, np.uint8)
    label[:, :2], label[:, 2:4] = 1, 2  # 50/50 among labelled pixels: first box accepted
    rng = np.random.default_rng(0)
    random_crop(_image(20, 20), label, (20, 20), 0.75, 255, rng)
    replay = np.random.default_rng(0)
    replay.integers(0, 1, size=2)
    assert rng.random() == replay.random()
    small_img, small_label = random_crop(_image(10, 12), np.zeros((10, 12), np.uint8), (16, 16), 1.0)
    assert small_img.shape == (10, 12, 3) and small_label.shape == (10, 12)


@pytest.mark.parametrize("seed", range(6))
def test_random_flip(seed):
    img, label = _image(4, 5), np.arange(20).reshape(4, 5)
    out_img, out_label = random_flip(img, label, 0.5, np.random.default_rng(seed))
    if np.random.default_rng(seed).random() < 0.5:
        np.testing.assert_array_equal(out_label, label[:, ::-1])
        np.testing.assert_array_equal(out_img, img[:, ::-1])
    else:
        np.testing.assert_array_equal(out_label, label)


def test_normalize_and_pad():
    img = _image(5, 6)
    x = normalize(img)
    assert x.shape == (3, 5, 6) and x.dtype == torch.float32
    assert x[1, 2, 3].item() == pytest.approx((img[2, 3, 1] - MEAN[1]) / STD[1], rel=1e-6)
    np.testing.assert_array_equal(denormalize(x), img)
    labels = torch.ones(5, 6, dtype=torch.long)
    px, lb = pad_to_size(x, labels, (8, 7))
    assert px.shape == (3, 8, 7) and lb.shape == (8, 7)
    assert torch.equal(px[:, :5, :6], x) and (px[:, 5:] == 0).all() and (px[:, :, 6:] == 0).all()
    assert (lb[5:] == 255).all() and (lb[:, 6:] == 255).all() and (lb[:5, :6] == 1).all()


def test_train_transform_pipeline():
    img, label = _image(60, 80), np.random.default_rng(1).integers(0, 4, size=(60, 80)).astype(np.uint8)
    transform = TrainTransform(scale=(128, 32), crop_size=(24, 40))
    out = transform(img, label, np.random.default_rng(0))
    assert out["pixel_values"].shape == (3, 24, 40) and out["labels"].shape == (24, 40)
    assert out["labels"].dtype == torch.int64
    assert set(out["labels"].unique().tolist()) <= {0, 1, 2, 3, 255}
    # The resized image is at most 32 px high (ratio <= 2 of a 32 short side -> <= 64): padding shows up as 255.
    again = transform(img, label, np.random.default_rng(0))
    assert torch.equal(out["pixel_values"], again["pixel_values"]) and torch.equal(out["labels"], again["labels"])
    other = transform(img, label, np.random.default_rng(1))
    assert not torch.equal(out["pixel_values"], other["pixel_values"])


def test_eval_transform_keeps_original_size():
    img, label = _image(30, 20), np.full((30, 20), 3, np.uint8)
    out = EvalTransform()(img, label)
    assert out["pixel_values"].shape == (3, 30, 20) and torch.equal(out["labels"], torch.full((30, 20), 3))


class _AugmentedCopies(torch.utils.data.Dataset):
    def __init__(self):
        self.img = _image(40, 40, 3)
        self.label = (np.arange(1600).reshape(40, 40) % 5).astype(np.uint8)
        self.transform = TrainTransform(scale=(64, 32), crop_size=(16, 16))

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.transform(self.img, self.label)["pixel_values"]


def _epoch(seed):
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(_AugmentedCopies(), batch_size=1, num_workers=2)
    return torch.cat(list(loader))


def test_worker_seeding_differs_per_worker_and_reproduces():
    first, second = _epoch(0), _epoch(0)
    assert torch.equal(first, second)
    # Items 0 and 1 come from different workers: identical inputs must get different augmentations.
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first, _epoch(1))


def test_sample_rng_follows_torch_seed():
    torch.manual_seed(5)
    a = sample_rng().random()
    torch.manual_seed(5)
    assert sample_rng().random() == a


def test_single_threaded_opencv():
    threads = cv2.getNumThreads()
    try:
        single_threaded_opencv(0)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(threads)


# --------------------------------------- equal to MMSegmentation's pipeline on mmcv's cv2 backend, replayed with cv2
# mmseg is not a test dependency: its steps are written out below from its source (mmseg 1.2.2, mmcv 2.x), on BGR
# images as mmseg loads them, with numpy's formulas where our code uses lookup tables.
def _mmcv_rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv.rescale_size with a (long, short) bound: the largest factor within both, then int(side * s + 0.5)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _mmseg_convert(x, alpha=1.0, beta=0.0):
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _mmseg_photometric(img_bgr: np.ndarray, rng: np.random.Generator, steps: list | None = None) -> np.ndarray:
    """PhotoMetricDistortion.transform on a BGR image (mmcv.bgr2hsv / hsv2bgr are cv2.cvtColor)."""
    steps = [] if steps is None else steps
    img = img_bgr
    if rng.integers(2):
        img = _mmseg_convert(img, beta=rng.uniform(-32, 32))
        steps.append("brightness")
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = _mmseg_convert(img, alpha=rng.uniform(0.5, 1.5))
        steps.append("contrast")
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = _mmseg_convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        steps.append("saturation")
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + rng.integers(-18, 18)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        steps.append("hue")
    if mode == 0 and rng.integers(2):
        img = _mmseg_convert(img, alpha=rng.uniform(0.5, 1.5))
        steps.append("contrast")
    return img


def _mmseg_train_pipeline(image_rgb, label, scale, crop, seed):
    """RandomResize -> RandomCrop(cat_max_ratio 0.75) -> RandomFlip -> PhotoMetricDistortion -> SegDataPreProcessor
    (BGR -> RGB, normalise, pad with 0 / 255), drawing from one generator in mmseg's order."""
    rng = np.random.default_rng(seed)
    img = image_rgb[..., ::-1].copy()  # mmseg's LoadImageFromFile gives BGR
    ratio = rng.random() * 1.5 + 0.5
    h, w = _mmcv_rescale_size(*img.shape[:2], (int(scale[0] * ratio), int(scale[1] * ratio)))
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    y1, x1, _ = _replay_cat_crop(label, crop, seed=None, rng=rng)
    img, label = img[y1 : y1 + crop[0], x1 : x1 + crop[1]], label[y1 : y1 + crop[0], x1 : x1 + crop[1]]
    if rng.random() < 0.5:
        img, label = np.flip(img, axis=1), np.flip(label, axis=1)
    img = _mmseg_photometric(np.ascontiguousarray(img), rng)
    pixels = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1).float()
    pixels = (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    padded = torch.zeros(3, *crop)
    padded[:, : pixels.shape[1], : pixels.shape[2]] = pixels
    labels = torch.full(crop, 255, dtype=torch.int64)
    labels[: label.shape[0], : label.shape[1]] = torch.from_numpy(label.astype(np.int64))
    return padded, labels


def _photo(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour image with noise (every hue, saturation and value) and a label map of a few regions."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w) + 64], axis=-1)
    image = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    label = ((x * 3 // w) + 3 * (y * 2 // h)).astype(np.uint8)
    label[rng.random((h, w)) < 0.05] = 255
    return image, label


@pytest.mark.parametrize("size", [(97, 131), (512 // 4, 683 // 4)])
def test_train_transform_equals_mmseg_pipeline(size):
    # Scale and crop in ADE20K's proportions ((2048, 512), 512) at a quarter: downscaling and upscaling, crops that
    # the category check rejects, images smaller than the crop (padding), flips, every photometric step.
    transform = TrainTransform(scale=(512, 128), crop_size=(128, 128))
    image, label = _photo(*size, seed=size[0])
    padded = 0
    for seed in range(24):
        out = transform(image, label, np.random.default_rng(seed))
        expected_pixels, expected_labels = _mmseg_train_pipeline(image, label, (512, 128), (128, 128), seed)
        torch.testing.assert_close(out["pixel_values"], expected_pixels, rtol=0, atol=0, msg=f"seed {seed}")
        assert torch.equal(out["labels"], expected_labels), f"seed {seed}"
        padded += int((expected_labels == 255).all(dim=0).any())
    assert padded > 0  # some resized images were narrower than the crop


@pytest.mark.parametrize("width", [1, 33, 150, 683])
def test_photometric_distortion_equals_mmseg_with_opencv(width):
    # Rows of these widths split differently into OpenCV's vector blocks and scalar tail (docs/protocol.md).
    image = _image(45, width, 3)
    orders = set()
    for seed in range(40):
        steps = []
        expected = _mmseg_photometric(image[..., ::-1].copy(), np.random.default_rng(seed), steps)[..., ::-1]
        np.testing.assert_array_equal(photometric_distortion(image, np.random.default_rng(seed)), expected)
        orders.add(tuple(steps))
    # Both contrast positions and every step occurred among the seeds.
    assert any(s and s[-1] == "contrast" and ("hue" in s or "saturation" in s) for s in orders)
    assert any("contrast" in s and s.index("contrast") < len(s) - 1 for s in orders)
    assert {"brightness", "saturation", "hue"} <= {step for s in orders for step in s}


@pytest.mark.parametrize("seed", range(4))
def test_random_resize_equals_mmcv_imrescale(seed):
    # mmcv.imrescale(keep_ratio) with the cv2 backend: cv2.resize to mmcv's rescale_size, bilinear / nearest.
    image, label = _image(37, 150, seed), np.random.default_rng(seed).integers(0, 151, (37, 150), dtype=np.uint8)
    out_image, out_label = random_resize(image, label, (2048, 512), rng=np.random.default_rng(seed))
    ratio = np.random.default_rng(seed).random() * 1.5 + 0.5
    h, w = _mmcv_rescale_size(37, 150, (int(2048 * ratio), int(512 * ratio)))
    np.testing.assert_array_equal(out_image, cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(out_label, cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST))


def _size_pairs() -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Up- and down-scaling, odd sizes, exact halving and doubling, extreme ratios, the benchmarks' sizes."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, [90, 90, 200, 200], size=(150, 4)).tolist()
    pairs = [((h, w), (out_h, out_w)) for h, w, out_h, out_w in sizes]
    pairs += [((2 * h, 2 * w), (h, w)) for h, w in [(1, 1), (5, 7), (16, 16), (33, 17)]]
    pairs += [((h, w), (2 * h, 2 * w)) for h, w in [(1, 1), (5, 7), (16, 16), (33, 17)]]
    pairs += [((1, 1), (37, 53)), ((1, 300), (200, 1)), ((500, 2), (3, 700)), ((7, 9), (7, 9 * 41)), ((97, 3), (1, 1))]
    pairs += [((512, 683), (256, 341)), ((480, 640), (1000, 1333)), ((1024, 2048), (768, 1536))]
    return pairs


def test_label_resize_of_wide_dtypes_equals_opencv_inter_nearest():
    # int64 labels (which OpenCV 4 cannot hold) take the numpy rule: the same pixels as cv2 on the same values.
    rng = np.random.default_rng(2)
    for (h, w), (out_h, out_w) in _size_pairs():
        label = rng.integers(0, 256, (h, w), dtype=np.uint8)
        expected = cv2.resize(label, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
        got = resize_training_label(label.astype(np.int64), (out_h, out_w))
        np.testing.assert_array_equal(got, expected, err_msg=f"{h}x{w} -> {out_h}x{out_w}")


FORK_AFTER_OPENCV_THREADS = """
import multiprocessing, numpy as np, cv2
from training.transforms import single_threaded_opencv
image = np.random.default_rng(0).integers(0, 255, (1000, 1500, 3), dtype=np.uint8)

def worker():
    single_threaded_opencv(0)  # as the DataLoader's worker_init_fn
    cv2.resize(image, (150, 100))

for _ in range(10):
    cv2.setNumThreads(-1)  # the parent used OpenCV's thread pool before the workers start
    cv2.cvtColor(cv2.resize(image, (750, 500)), cv2.COLOR_RGB2HSV)
    single_threaded_opencv()  # what train.py does before creating a DataLoader with workers
    process = multiprocessing.get_context("fork").Process(target=worker)
    process.start()
    process.join(20)
    assert process.exitcode == 0, "a forked worker hung or failed"
"""


def test_forked_workers_do_not_deadlock_in_opencv_thread_pool():
    """OpenCV's thread pool is not fork-safe: a forked worker that reconfigured a pool its parent had used hung in
    25 of 30 tries. The training process now goes single-threaded first and a worker then leaves the pool alone."""
    result = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_OPENCV_THREADS], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
