"""Dataset presets: the benchmarks' columns, splits, label maps, class names, palettes, mmseg scales and Hub ids.

Plain data and small helpers on numpy only: this module imports nothing of the project's, so the loaders
(``training/data.py``), the demo dataset (``training/synthetic.py``), evaluation and the model cards can all read
the same facts without importing each other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

METAINFO_PATH = Path(__file__).with_name("metainfo.json")
IGNORE_INDEX = 255  # train id of ignored pixels in every label map (mmseg's ignore_index)

# Cityscapes labelIds 0..33 -> trainIds (cityscapesScripts helpers/labels.py); everything else is ignored.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
# COCO-Stuff stuffthingmaps values 0..181 (COCO id - 1) without annotations; the other 171 become 0..170.
COCO_STUFF_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


class DataError(ValueError):
    """A dataset that does not match its preset: missing column or split, bad row, out-of-range label value."""


@dataclass(frozen=True)
class DatasetPreset:
    """Everything needed to read one benchmark: columns, splits, raw-label mapping, classes and mmseg scales.

    ``label_lut[v]`` is the train id of raw label value ``v`` (255 = ignore, -1 = not a valid raw value).
    Scales follow mmseg: ``train_scale``/``test_scale`` are (long, short) keep-ratio bounds, ``crop_size`` (h, w).
    """

    name: str
    image_column: str
    label_column: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    label_lut: np.ndarray = field(repr=False)
    raw_range: str  # human-readable description of valid raw values, for error messages
    train_split: str = "train"
    eval_split: str = "validation"
    train_scale: tuple[int, int] = (2048, 512)
    crop_size: tuple[int, int] = (512, 512)
    test_scale: tuple[int, int] = (2048, 512)
    slide_crop: tuple[int, int] = (512, 512)
    slide_stride: tuple[int, int] = (341, 341)
    hub_id: str | None = None
    hub_revision: str | None = None
    hub_data_dir: str | None = None
    # Paired-folder layout: candidate top-level folder names and the file-name endings that pair image and label.
    image_dirs: tuple[str, ...] = ("images", "image", "img")
    label_dirs: tuple[str, ...] = ("annotations", "labels", "label", "masks", "ann")
    image_suffix: str = ""
    label_suffix: str = ".png"

    @property
    def num_labels(self) -> int:
        return len(self.class_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))

    def invalid_values(self, values: np.ndarray) -> np.ndarray:
        """The distinct entries of ``values`` that are not valid raw labels of this preset."""
        values = np.unique(np.asarray(values))
        outside = (values < 0) | (values >= len(self.label_lut))
        unmapped = self.label_lut[np.clip(values, 0, len(self.label_lut) - 1)] < 0
        return values[outside | unmapped]

    def map_labels(self, raw: np.ndarray, where: str = "") -> np.ndarray:
        """Raw label map -> uint8 train ids; raises :class:`DataError` naming ``where`` and the bad values."""
        raw = np.asarray(raw)
        if raw.dtype.kind not in "iub":
            raise DataError(f"{where}label map has dtype {raw.dtype}; expected an integer index image")
        if raw.size and (raw.min() < 0 or raw.max() >= len(self.label_lut) or self.label_lut[raw].min() < 0):
            bad = _short(self.invalid_values(raw))
            raise DataError(f"{where}label values {bad} are outside the {self.name} range ({self.raw_range})")
        return self.label_lut[raw].astype(np.uint8)


def _short(values: np.ndarray, limit: int = 10) -> str:
    values = [int(v) for v in values]
    return str(values[:limit])[:-1] + (f", ... ({len(values)} values)]" if len(values) > limit else "]")


def _lut(pairs: dict[int, int], size: int = 256) -> np.ndarray:
    lut = np.full(size, -1, dtype=np.int16)
    for raw, train_id in pairs.items():
        lut[raw] = train_id
    return lut


def _metainfo(name: str) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    info = json.loads(METAINFO_PATH.read_text())[name]
    return tuple(info["classes"]), tuple(tuple(int(c) for c in rgb) for rgb in info["palette"])


def default_palette(num_labels: int) -> tuple[tuple[int, int, int], ...]:
    """A fixed pseudo-random palette for datasets without one."""
    colours = np.random.default_rng(0).integers(0, 256, size=(num_labels, 3))
    return tuple(tuple(int(c) for c in rgb) for rgb in colours)


PRESET_NAMES = ("ade20k", "cityscapes", "coco_stuff", "generic", "synthetic")


def get_preset(
    name: str,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    num_labels: int | None = None,
    reduce_labels: bool = False,
    class_names: Sequence[str] | None = None,
    label_encoding: str = "labelIds",
) -> DatasetPreset:
    """The preset ``name`` (``ade20k``, ``cityscapes``, ``coco_stuff`` or ``generic``), columns overridable.

    ``generic`` needs ``num_labels`` (or ``class_names``); with ``reduce_labels`` raw 0 is ignored and v -> v-1
    (the ADE20K convention), otherwise raw values are train ids already (0..num_labels-1, 255 ignored).
    ``label_encoding`` is for Cityscapes: ``labelIds`` (0..33, the official ``*_gtFine_labelIds.png``) or
    ``trainIds`` (0..18 + 255).
    """
    if name == "ade20k":
        classes, palette = _metainfo("ade20k")
        preset = DatasetPreset(
            name="ade20k",
            image_column="image",
            label_column="annotation",
            class_names=classes,
            palette=palette,
            # PNG 0 = "other objects" -> ignore; 1..150 -> 0..149 (mmseg reduce_zero_label).
            label_lut=_lut({0: IGNORE_INDEX, **{v: v - 1 for v in range(1, 151)}}),
            raw_range="annotation PNG 0..150 with 0 = other; values 255 suggest labels that were already reduced, "
            "use the generic preset without reduce_labels for those",
            hub_id="zhoubolei/scene_parse_150",
            hub_revision="refs/convert/parquet",
            hub_data_dir="scene_parsing",
        )
    elif name == "cityscapes":
        classes, palette = _metainfo("cityscapes")
        if label_encoding == "labelIds":
            lut = _lut({v: IGNORE_INDEX for v in range(34)} | {v: i for i, v in enumerate(CITYSCAPES_LABEL_IDS)})
            raw_range = "labelIds 0..33; pass label_encoding='trainIds' for 0..18/255 maps"
            label_suffix = "_gtFine_labelIds.png"
        elif label_encoding == "trainIds":
            lut = _lut({v: v for v in range(19)} | {IGNORE_INDEX: IGNORE_INDEX})
            raw_range, label_suffix = "trainIds 0..18 and 255", "_gtFine_labelTrainIds.png"
        else:
            raise ValueError(f"label_encoding must be 'labelIds' or 'trainIds', got {label_encoding!r}")
        preset = DatasetPreset(
            name="cityscapes",
            image_column="image",
            label_column="semantic_segmentation",
            class_names=classes,
            palette=palette,
            label_lut=lut,
            raw_range=raw_range,
            train_scale=(2048, 1024),
            crop_size=(512, 1024),
            test_scale=(2048, 1024),
            slide_crop=(1024, 1024),
            slide_stride=(768, 768),
            hub_id="Chris1/cityscapes",
            image_dirs=("leftImg8bit", "images"),
            label_dirs=("gtFine", "annotations", "labels"),
            image_suffix="_leftImg8bit",
            label_suffix=label_suffix,
        )
    elif name == "coco_stuff":
        classes, palette = _metainfo("coco_stuff")
        kept = [v for v in range(182) if v not in COCO_STUFF_UNUSED]
        pairs = {v: IGNORE_INDEX for v in range(182)} | {v: i for i, v in enumerate(kept)} | {255: IGNORE_INDEX}
        preset = DatasetPreset(
            name="coco_stuff",
            image_column="image",
            label_column="mask",
            class_names=classes,
            palette=palette,
            label_lut=_lut(pairs),
            raw_range="stuffthingmaps values 0..181 and 255 (unlabeled)",
            eval_split="val",
            hub_id="GATE-engine/COCOStuff164K",
            label_dirs=("annotations", "stuffthingmaps_trainval2017", "labels"),
        )
    elif name == "generic":
        if class_names is None:
            if num_labels is None:
                raise ValueError("the generic preset needs num_labels (or class_names)")
            class_names = [f"class_{i}" for i in range(num_labels)]
        class_names = tuple(class_names)
        if num_labels is not None and num_labels != len(class_names):
            raise ValueError(f"num_labels={num_labels} but {len(class_names)} class names were given")
        k = len(class_names)
        if not 0 < k < IGNORE_INDEX:
            raise ValueError(f"num_labels must be in 1..254 (255 is the ignore index), got {k}")
        if reduce_labels:
            pairs = {0: IGNORE_INDEX, **{v: v - 1 for v in range(1, k + 1)}, IGNORE_INDEX: IGNORE_INDEX}
            raw_range = f"0..{k} with 0 ignored (reduce_labels), and 255"
        else:
            pairs = {**{v: v for v in range(k)}, IGNORE_INDEX: IGNORE_INDEX}
            raw_range = f"0..{k - 1} and 255 (ignore)"
        preset = DatasetPreset(
            name="generic",
            image_column=image_column or "image",
            label_column=label_column or "label",
            class_names=class_names,
            palette=default_palette(k),
            label_lut=_lut(pairs),
            raw_range=raw_range,
        )
    elif name == "synthetic":
        preset = synthetic_preset()
    else:
        raise ValueError(f"unknown dataset preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    overrides = {k: v for k, v in (("image_column", image_column), ("label_column", label_column)) if v}
    return replace(preset, **overrides) if overrides else preset


# The embedded demo dataset (training/synthetic.py draws its scenes with these classes and colours).
SYNTHETIC_CLASS_NAMES = ("sky", "vegetation", "ground", "disc", "box", "triangle", "ring", "pole")
SYNTHETIC_PALETTE = (
    (135, 190, 235),
    (60, 140, 60),
    (150, 120, 90),
    (220, 50, 50),
    (230, 150, 40),
    (240, 220, 60),
    (60, 60, 160),
    (200, 200, 200),
)


def synthetic_preset() -> DatasetPreset:
    """The generic ADE20K-style preset (0 = other) with these classes, and scales fitted to the ~150 px scenes."""
    preset = get_preset("generic", class_names=SYNTHETIC_CLASS_NAMES, reduce_labels=True, label_column="annotation")
    return replace(
        preset,
        name="synthetic",
        palette=SYNTHETIC_PALETTE,
        train_scale=(512, 128),
        crop_size=(128, 128),
        test_scale=(512, 128),
        slide_crop=(128, 128),
        slide_stride=(85, 85),
    )
