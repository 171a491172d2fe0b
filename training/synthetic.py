"""The embedded demo dataset: synthetic scenes in ADE20K's schema, generated deterministically on first use.

Each scene has a textured background split into sky / vegetation / ground bands at a random horizon, overlapping
shapes of several classes at varied scales (discs, boxes, triangles, rings, poles), a few unlabelled blobs (PNG value
0, "other", ignored like ADE20K's), colour jitter and pixel noise. Images are `image` (RGB JPEG) and `annotation`
(mode-L PNG: 0 = other, 1..K = classes), written with `DatasetDict.save_to_disk`, so the training script reads it
through exactly the code path of a real benchmark (preset `synthetic` in `training/presets.py`: the generic one with
`reduce_labels`).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from training.presets import SYNTHETIC_CLASS_NAMES as CLASS_NAMES
from training.presets import SYNTHETIC_PALETTE as PALETTE

GENERATOR_VERSION = 1


def _texture(rng: np.random.Generator, height: int, width: int, base: tuple[int, int, int], kind: str) -> np.ndarray:
    """An (H, W, 3) float texture around `base`: smooth gradient, blotchy noise or stripes."""
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    cols = np.linspace(0.0, 1.0, width)[None, :, None]
    colour = np.asarray(base, dtype=np.float32) + rng.normal(0, 12, 3)
    if kind == "gradient":
        return colour * (0.8 + 0.35 * rows) + 0 * cols
    if kind == "blotches":
        coarse = rng.normal(0, 1, (height // 8 + 2, width // 8 + 2, 1))
        blotches = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
        return colour + 18 * blotches
    period = rng.uniform(4, 10)
    return colour + 15 * np.sin(2 * np.pi * (rows * height + 0.3 * cols * width) / period)


def _shape_mask(rng: np.random.Generator, height: int, width: int, shape: str) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    size = rng.uniform(0.08, 0.35) * min(height, width)
    centre_row, centre_col = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    distance = np.hypot(rows - centre_row, cols - centre_col)
    if shape == "disc":
        return distance < size
    if shape == "ring":
        return (distance < size) & (distance > 0.55 * size)
    if shape == "box":
        aspect = rng.uniform(0.5, 2.0)
        return (np.abs(rows - centre_row) < size / aspect) & (np.abs(cols - centre_col) < size * aspect / 1.5)
    if shape == "triangle":
        top = centre_row - size
        inside_height = (rows > top) & (rows < centre_row + size)
        half_width = (rows - top) * 0.6
        return inside_height & (np.abs(cols - centre_col) < half_width)
    # pole: a thin vertical bar
    return (
        (np.abs(cols - centre_col) < max(2.0, 0.12 * size))
        & (rows > centre_row - 2 * size)
        & (rows < centre_row + size)
    )


def make_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (H, W, 3), annotation uint8 (H, W)) pair; the same seed gives the same scene."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(112, 193)), int(rng.integers(128, 225))
    annotation = np.zeros((height, width), dtype=np.uint8)
    image = np.zeros((height, width, 3), dtype=np.float32)

    horizon = int(rng.uniform(0.3, 0.6) * height)
    ground_line = int(rng.uniform(0.65, 0.9) * height)
    bands = [(0, horizon, 1, "gradient"), (horizon, ground_line, 2, "blotches"), (ground_line, height, 3, "stripes")]
    for top, bottom, label, kind in bands:
        image[top:bottom] = _texture(rng, bottom - top, width, PALETTE[label - 1], kind)
        annotation[top:bottom] = label

    for _ in range(int(rng.integers(2, 6))):
        label = int(rng.integers(4, len(CLASS_NAMES) + 1))
        mask = _shape_mask(rng, height, width, CLASS_NAMES[label - 1])
        image[mask] = _texture(rng, height, width, PALETTE[label - 1], "blotches")[mask]
        annotation[mask] = label

    for _ in range(int(rng.integers(0, 3))):  # unlabelled clutter: PNG value 0, ignored by the loss and the metric
        mask = _shape_mask(rng, height, width, "disc")
        image[mask] = rng.uniform(40, 200, 3)
        annotation[mask] = 0

    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), annotation


def _encode(array: np.ndarray, fmt: str) -> dict[str, bytes | None]:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return {"bytes": buffer.getvalue(), "path": None}


def generate(path: str | Path, num_train: int = 600, num_validation: int = 100, seed: int = 0) -> Path:
    """Writes the dataset to `path` (unless the same version and sizes are there already) and returns `path`."""
    path = Path(path)
    spec = {"version": GENERATOR_VERSION, "num_train": num_train, "num_validation": num_validation, "seed": seed}
    marker = path / "synthetic_scenes.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return path
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    splits = {}
    for split, count, offset in (("train", num_train, 0), ("validation", num_validation, 1_000_000)):
        scenes = [make_scene(seed * 10_000_000 + offset + index) for index in range(count)]
        splits[split] = datasets.Dataset.from_dict(
            {
                "image": [_encode(image, "JPEG") for image, _ in scenes],
                "annotation": [_encode(annotation, "PNG") for _, annotation in scenes],
            },
            features=features,
        )
    temporary = path.with_name(path.name + ".tmp")
    datasets.DatasetDict(splits).save_to_disk(str(temporary))
    (temporary / marker.name).write_text(json.dumps(spec))
    if path.exists():
        shutil.rmtree(path)
    temporary.rename(path)  # complete or absent: an interrupted generation is redone next time
    return path
