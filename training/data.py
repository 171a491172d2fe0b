"""Dataset loading and label mapping for ADE20K, Cityscapes, COCO-Stuff-164k and generic datasets.

Sources: a Hub id, or a local path holding parquet files, a ``save_to_disk`` folder, or paired image folders
(``images/<split>/...`` + ``annotations/<split>/...``; Cityscapes' ``leftImg8bit``/``gtFine``). Image columns are
read undecoded and decoded here, so a broken file fails with the row and column named. Label maps are read as
index arrays (``np.array(PIL)``) and never colour-converted; each preset maps raw values to train ids through a
lookup table, 255 = ignore, and rejects values outside its raw range (the presets are in ``training/presets.py``).

Run ``python training/data.py --dataset ade20k --dataset_path PATH --split validation --verify_labels 20`` to check the
first rows: a histogram of their raw label values, whether each label fits its own image (label boundaries on image
edges, against the other rows' labels: a shuffled pairing fails) and a contact sheet of image/label overlays to look
at (docs/datasets.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
import datasets.distributed
import numpy as np
import torch
from PIL import Image, ImageDraw

from modeling_segret.image_processing_segret import exif_transposed, pil_image_to_rgb
from training import configure_logging
from training.presets import IGNORE_INDEX, PRESET_NAMES, DataError, DatasetPreset, _short, get_preset
from training.transforms import EvalTransform, TrainTransform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Interchangeable split names: the presets' Hub datasets disagree ("validation" vs "val").
SPLIT_ALIASES = (
    ("train", "training", "train2017"),
    ("validation", "val", "valid", "val2017"),
    ("test", "testing", "test2017"),
)


# ------------------------------------------------------------------------------------------------------- loading
def split_candidates(split: str) -> list[str]:
    """``split`` followed by its aliases (``validation`` <-> ``val`` ...)."""
    for group in SPLIT_ALIASES:
        if split in group:
            return [split] + [s for s in group if s != split]
    return [split]


def _pick_split(available: Sequence[str], split: str, source: str) -> str:
    for candidate in split_candidates(split):
        if candidate in available:
            return candidate
    raise DataError(f"split {split!r} not found in {source}; available splits: {sorted(available)}")


def _files_under(root: Path) -> list[Path]:
    """The files below `root`, sorted, following symlinked folders and files (a dataset assembled from links);
    a folder reached again through a link (a cycle, or two links to one folder) is listed once."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()  # its files are listed already; do not descend again
            continue
        seen.add(real)
        subfolders.sort()  # the first of two links to one folder is the one listed
        found.extend(Path(folder) / name for name in files)
    return sorted(found)


def _find_folder_pairs(root: Path, split: str, preset: DatasetPreset) -> datasets.Dataset | None:
    """Paired image/label folders (``<image_dir>/<split>/**`` and ``<label_dir>/<split>/**``), or None."""
    image_root = next(
        (root / d / s for d in preset.image_dirs for s in split_candidates(split) if (root / d / s).is_dir()), None
    )
    if image_root is None:
        return None
    label_root = next(
        (root / d / image_root.name for d in preset.label_dirs if (root / d / image_root.name).is_dir()), None
    )
    if label_root is None:
        raise DataError(
            f"{root}: found images in {image_root} but no label folder {'|'.join(preset.label_dirs)}/{image_root.name}"
        )

    def key(path: Path, base: Path, suffix: str) -> str:
        rel = path.relative_to(base).as_posix()
        rel = rel[: -len(suffix)] if suffix and rel.endswith(suffix) else rel.rsplit(".", 1)[0]
        return rel[: -len(preset.image_suffix)] if preset.image_suffix and rel.endswith(preset.image_suffix) else rel

    images = {key(p, image_root, ""): p for p in _files_under(image_root) if p.suffix.lower() in IMAGE_EXTENSIONS}
    labels = {key(p, label_root, preset.label_suffix): p for p in _files_under(label_root)
              if p.name.endswith(preset.label_suffix)}  # fmt: skip
    broken = [str(p) for p in (*images.values(), *labels.values()) if not p.exists()]
    if broken:
        raise DataError(f"{len(broken)} files of {root} are links to nothing (their target is gone), e.g. {broken[:3]}")
    missing = [k for k in images if k not in labels]
    if missing:
        raise DataError(
            f"{len(missing)} images in {image_root} have no label '*{preset.label_suffix}' in {label_root}, "
            f"e.g. {missing[:3]}"
        )
    names = sorted(images)
    table = {preset.image_column: [str(images[k]) for k in names], preset.label_column: [str(labels[k]) for k in names]}
    features = datasets.Features({preset.image_column: datasets.Image(), preset.label_column: datasets.Image()})
    return datasets.Dataset.from_dict(table, features=features)


def _load_saved(folder: Path, source: str, split: str) -> datasets.Dataset:
    # datasets cannot reload an empty saved split (IndexError): detect it from the state file instead.
    if not json.loads((folder / "state.json").read_text()).get("_data_files"):
        raise DataError(f"split {split!r} of {source} is empty")
    return datasets.load_from_disk(str(folder))


def load_split(
    preset: DatasetPreset,
    source: str | None = None,
    split: str | None = None,
    revision: str | None = None,
    data_dir: str | None = None,
) -> tuple[datasets.Dataset, str]:
    """Load one split of ``source`` (Hub id or local path; default: the preset's Hub dataset).

    Returns the ``Dataset`` and the split name found (aliases such as ``val`` for ``validation`` are tried).
    Checks that the split exists, is not empty, and has the preset's image and label columns.
    """
    split = split or preset.eval_split
    if source is None:
        if preset.hub_id is None:
            raise DataError(f"the {preset.name} preset has no default source; pass a Hub id or a local path")
        source, revision, data_dir = preset.hub_id, revision or preset.hub_revision, data_dir or preset.hub_data_dir
    path = Path(source)
    if path.is_file():
        fmt = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json"}.get(path.suffix)
        if fmt is None:
            raise DataError(f"{source}: unsupported file type; use parquet, a save_to_disk folder or image folders")
        # A single file is taken to be the requested split (train.py refuses to evaluate on the training file).
        if fmt == "parquet":
            import pyarrow.parquet as pq

            if pq.read_metadata(path).num_rows == 0:
                raise DataError(f"{source} is empty (a parquet file with 0 rows)")
        ds = _generate(lambda: datasets.load_dataset(fmt, data_files={split: str(path)}, split=split), source, split)
    elif path.is_dir() and (path / "dataset_dict.json").is_file():
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        split = _pick_split(names, split, source)
        ds = _load_saved(path / split, source, split)
    elif path.is_dir() and (path / "state.json").is_file():
        ds = _load_saved(path, source, split)  # a single saved split: used as the requested one
    elif path.is_dir() and (folder := _find_folder_pairs(path, split, preset)) is not None:
        ds = folder
    else:
        # Hub id or a local folder of parquet/arrow files: let `datasets` infer the splits.
        kwargs: dict[str, Any] = {"revision": revision} if revision else {}
        if data_dir:
            kwargs["data_dir"] = data_dir
        try:  # split names from metadata, without downloading or preparing any split
            candidates = [_pick_split(datasets.get_dataset_split_names(source, **kwargs), split, source)]
        except DataError:
            raise
        except Exception:  # no metadata: try the aliases one by one
            candidates = split_candidates(split)
        errors = []
        for candidate in candidates:
            try:
                ds = _generate(lambda c=candidate: datasets.load_dataset(source, split=c, **kwargs), source, candidate)
                split = candidate
                break
            except ValueError as err:  # unknown split name: try the next alias
                if "corresponds to no data" in str(err):
                    raise DataError(f"split {candidate!r} of {source} is empty") from err
                if "split" not in str(err).lower():
                    raise
                errors.append(str(err))
        else:
            raise DataError(f"split {split!r} not found in {source}: {errors[-1]}")
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{source}: expected a map-style Dataset, got {type(ds).__name__}")
    missing = [c for c in (preset.image_column, preset.label_column) if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{source} (split {split!r}) has no column {', '.join(map(repr, missing))}; columns are {ds.column_names}. "
            "Pass --image_column/--label_column to choose others."
        )
    if len(ds) == 0:
        raise DataError(f"split {split!r} of {source} is empty")
    return ds, split


def _generate(load, source: str, split: str) -> datasets.Dataset:
    """Runs a `datasets.load_dataset` call, naming the source and the cause when `datasets` cannot build it."""
    try:
        return load()
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ or err.__context__ or err
        hint = " (an empty or 0-row file?)" if "must be greater than 0" in str(cause) else ""
        raise DataError(
            f"split {split!r} of {source} could not be read{hint}: {type(cause).__name__}: {cause}"
        ) from err


def single_split_source(source: str | None) -> str | None:
    """How `source` holds one split only ("a single parquet file", "a single saved split"), or None.

    Such a source is taken to be whichever split is asked for, so training and evaluation would read the same rows.
    """
    if source is None:
        return None
    path = Path(source)
    if path.is_file():
        return f"a single {path.suffix.lstrip('.') or 'data'} file"
    if path.is_dir() and (path / "state.json").is_file() and not (path / "dataset_dict.json").is_file():
        return "a single saved split (save_to_disk of one Dataset)"
    return None


def parse_class_names(value: str | Sequence[str]) -> list[str]:
    """Class names from a list of names, one comma-separated string, or a JSON file (list or id2label mapping)."""
    items = [value] if isinstance(value, str) else list(value)
    if len(items) == 1 and Path(items[0]).is_file():
        names = json.loads(Path(items[0]).read_text())
        if isinstance(names, dict):  # an id2label mapping
            names = [names[k] for k in sorted(names, key=int)]
    elif len(items) == 1:
        names = items[0].split(",")
    else:
        names = items
    names = [str(name).strip() for name in names]
    if not names or any(not name for name in names):
        raise ValueError(f"class names must be non-empty, got {value!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct, got {names}")
    return names


# ---------------------------------------------------------------------------------------------------- row reading
def _cell_file(value: Any) -> str:
    """' (file NAME)' for a cell that records its file, else ''."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, (str, Path)) else None
    return f"(file {path}) " if path else ""


def _open(value: Any, where: str) -> Image.Image | np.ndarray:
    """A PIL image from an undecoded ``Image`` cell ({'bytes', 'path'}), a path, or an array-like cell."""
    if value is None:
        raise DataError(f"{where}is empty (None)")
    try:
        if isinstance(value, dict) and ("bytes" in value or "path" in value):
            data, path = value.get("bytes"), value.get("path")
            image = Image.open(io.BytesIO(data)) if data else Image.open(path)
        elif isinstance(value, (str, Path)):
            image = Image.open(value)
        elif isinstance(value, Image.Image):
            image = value
        else:
            return np.asarray(value)
        image.load()
        return exif_transposed(image)  # as displayed, as transformers' pipeline and the image processor read it
    except DataError:
        raise
    except Exception as err:  # PIL raises several types for truncated or non-image data
        raise DataError(f"{where}cannot be read as an image: {type(err).__name__}: {err}") from err


def read_image(value: Any, where: str = "") -> np.ndarray:
    """Decode an image cell to uint8 RGB (H, W, 3), EXIF orientation applied; grey, palette, RGBA and 16-bit images
    are converted as the image processor converts them (16-bit: v / 257)."""
    image = _open(value, where)
    if isinstance(image, Image.Image):
        try:
            image = np.array(pil_image_to_rgb(image))  # a writable copy for torch
        except ValueError as err:
            raise DataError(f"{where}{err}") from err
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise DataError(f"{where}expected an RGB uint8 image, got shape {image.shape} dtype {image.dtype}")
    return image


def read_label(value: Any, where: str = "") -> np.ndarray:
    """Decode a label cell to an (H, W) index array with ``np.array`` (palette indices kept, never colour-converted).

    A three-channel map is accepted only when all channels are equal (ids stored as grey RGB); a colour-coded
    mask raises.
    """
    label = np.asarray(_open(value, where))
    if label.ndim == 3:
        if not (np.array_equal(label[..., 0], label[..., 1]) and np.array_equal(label[..., 0], label[..., -1])):
            raise DataError(
                f"{where}label map has {label.shape[-1]} different channels (a colour-coded mask?); "
                "expected a single-channel index image"
            )
        label = label[..., 0]
    if label.ndim != 2:
        raise DataError(f"{where}label map has shape {label.shape}; expected (height, width)")
    return label


class SegmentationDataset(torch.utils.data.Dataset):
    """A torch Dataset over one split: decode, check, map labels to train ids, then ``transform``.

    Items are ``{"pixel_values", "labels", "index"}``; with :class:`~training.transforms.EvalTransform` the labels
    keep their original size for scoring.
    """

    def __init__(self, hf_dataset: datasets.Dataset, preset: DatasetPreset, transform: Any, split: str = "") -> None:
        columns = [preset.image_column, preset.label_column]
        ds = hf_dataset.select_columns(columns)
        # Undecoded cells: decoding happens in __getitem__ (in DataLoader workers) with row-level error messages.
        for column in columns:
            if isinstance(ds.features[column], datasets.Image) and ds.features[column].decode:
                ds = ds.cast_column(column, datasets.Image(decode=False))
        self.dataset = ds
        self.preset = preset
        self.transform = transform
        self.split = split
        self.source = ""  # where the rows come from, for error messages (set by build_dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def raw_item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded image and the *raw* label map of row ``index`` (no mapping, no transform)."""
        return decode_row(self.dataset[int(index)], self.preset, self._where(index))

    def raw_label(self, index: int) -> np.ndarray:
        """The *raw* label map of row ``index`` alone (no image decoded): for fast label scans."""
        cell = self.dataset[int(index)][self.preset.label_column]
        return read_label(cell, f"{self._where(index)}column '{self.preset.label_column}' {_cell_file(cell)}")

    def _where(self, index: int) -> str:
        source = f"{self.source}: " if self.source else ""
        return f"{source}row {index}{f' of split {self.split!r}' if self.split else ''}: "

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index)

    def get_item(self, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Item ``index`` with the transform's random draws taken from ``rng`` (default: a per-worker stream)."""
        item = transformed_row(self.dataset[int(index)], self.preset, self.transform, rng, self._where(index))
        item["index"] = int(index)
        return item


def decode_row(row: dict[str, Any], preset: DatasetPreset, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The decoded image and the *raw* label map of a row's undecoded cells; ``where`` names the row in errors."""
    image_cell, label_cell = row[preset.image_column], row[preset.label_column]
    image = read_image(image_cell, f"{where}column '{preset.image_column}' {_cell_file(image_cell)}")
    label = read_label(label_cell, f"{where}column '{preset.label_column}' {_cell_file(label_cell)}")
    # Both were turned upright by their EXIF orientation before this check.
    if image.shape[:2] != label.shape:
        raise DataError(
            f"{where}image {_cell_file(image_cell)}is {image.shape[1]}x{image.shape[0]} (WxH) but label "
            f"'{preset.label_column}' {_cell_file(label_cell)}is {label.shape[1]}x{label.shape[0]}"
        )
    return image, label


def transformed_row(
    row: dict[str, Any], preset: DatasetPreset, transform: Any, rng: np.random.Generator | None, where: str
) -> dict[str, Any]:
    """A row decoded, its labels mapped to train ids, then ``transform``-ed with draws from ``rng``."""
    image, raw = decode_row(row, preset, where)
    cell = row[preset.label_column]
    label = preset.map_labels(raw, f"{where}column '{preset.label_column}' {_cell_file(cell)}")
    return transform(image, label, rng)


def build_dataset(
    preset: DatasetPreset | str,
    source: str | None = None,
    split: str | None = None,
    train: bool = False,
    transform: Any = None,
    crop_size: Sequence[int] | None = None,
    train_scale: Sequence[int] | None = None,
    revision: str | None = None,
    data_dir: str | None = None,
    max_samples: int | None = None,
) -> SegmentationDataset:
    """A :class:`SegmentationDataset` for training (mmseg augmentation) or evaluation (original-size labels).

    ``preset`` is a :class:`DatasetPreset` or a preset name; ``split`` defaults to the preset's train or eval split;
    ``crop_size``/``train_scale`` override the preset's (e.g. 640 crops and (2560, 640) for ADE20K-640).
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    split = split or (preset.train_split if train else preset.eval_split)
    ds, split = load_split(preset, source, split, revision, data_dir)
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    if transform is None:
        transform = (
            TrainTransform(train_scale or preset.train_scale, crop_size or preset.crop_size)
            if train
            else EvalTransform()
        )
    dataset = SegmentationDataset(ds, preset, transform, split)
    dataset.source = str(source or preset.hub_id or "")
    return dataset


def image_sizes(dataset: SegmentationDataset, limit: int | None = None) -> list[tuple[int, int]]:
    """(height, width) of the first ``limit`` images as displayed (EXIF orientation applied), reading headers only."""
    sizes = []
    column = dataset.preset.image_column
    for index in range(min(len(dataset), limit or len(dataset))):
        cell = dataset.dataset[index][column]
        if isinstance(cell, dict) and ("bytes" in cell or "path" in cell):
            try:
                with Image.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]) as image:
                    width, height = image.size
                    if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees when displayed
                        width, height = height, width
            except Exception as err:
                raise DataError(
                    f"{dataset._where(index)}column '{column}' {_cell_file(cell)}cannot be read: {err}"
                ) from err
        else:
            height, width = read_image(cell, dataset._where(index)).shape[:2]
        sizes.append((height, width))
    return sizes


# -------------------------------------------------------------------------------------------------- batching
def collate_train(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack equally sized training samples into ``pixel_values`` (B, 3, H, W) and ``labels`` (B, H, W); ``index``
    holds their dataset rows (for error messages, not for the model)."""
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "labels": torch.stack([s["labels"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
    }


class UnlabelledBatchCheck:
    """Refuses training data without labels: ``limit`` consecutive batches in which every pixel is the ignore index
    raise a :class:`DataError` naming their rows.

    Such batches give a loss of exactly 0 and no gradient, so a training set whose masks are all ignore (a wrong
    label column, ``--reduce_labels`` on 0/1 masks, a wrong Cityscapes ``--label_encoding``) would otherwise run to
    the end and learn nothing. One such batch now and then (a crop of an unlabelled region) is normal. The check
    runs on the CPU labels before they move to the accelerator, so it costs no device synchronisation.
    """

    def __init__(self, where: str, limit: int = 10, ignore_index: int = IGNORE_INDEX) -> None:
        self.where, self.limit, self.ignore_index = where, limit, ignore_index
        self.rows: list[int] = []
        self.batches = 0

    def update(self, labels: torch.Tensor, rows: torch.Tensor) -> None:
        if bool((labels != self.ignore_index).any()):
            self.rows, self.batches = [], 0
            return
        self.rows.extend(rows.tolist())
        self.batches += 1
        if self.batches >= self.limit:
            shown = ", ".join(map(str, self.rows[:20])) + (", ..." if len(self.rows) > 20 else "")
            raise DataError(
                f"{self.where}: {self.batches} consecutive training batches have no labelled pixel (every label is the "
                f"ignore index {self.ignore_index}), rows {shown}; training on them learns nothing (loss 0). Check "
                "the label column, --reduce_labels (it ignores raw 0) or --label_encoding, e.g. with "
                "`python training/data.py --dataset_path ... --split train --verify_labels 20`."
            )


def collate_eval(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Keep evaluation samples (of different sizes) as lists; ``index`` is a tensor of dataset row numbers."""
    return {
        "pixel_values": [s["pixel_values"] for s in samples],
        "labels": [s["labels"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
    }


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed ``random`` and numpy's global RNG from the worker's torch seed.

    The transforms draw from :func:`training.transforms.sample_rng` (torch's per-worker RNG) and need no help; this
    covers other code that draws from the global ``random``/``numpy.random`` generators.
    """
    import random

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class ShardSampler(torch.utils.data.Sampler):
    """Rows ``rank, rank + world_size, ...``: every row exactly once across processes, no padding duplicates.

    Shards differ in length by at most one; combine per-process metric states with a sum (see
    :class:`training.metrics.SegmentationMetric`).
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))


class EpochShuffleSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """This process's share of a permutation seeded by (seed, epoch), starting `start_batch` batches in.

    The order depends only on the seed, the epoch and the number of processes, which is what makes resuming exact.
    Each epoch drops the incomplete last global batch, as MMSegmentation's iteration-based runner does. Yields
    ``(epoch, row)`` keys for :class:`SeededAugmentation`: persistent DataLoader workers keep their copy of the
    dataset across epochs, so the epoch travels with each key rather than as an attribute of the dataset.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = num_samples // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The training split has {num_samples} samples, fewer than one global batch "
                f"({batch_size} x {world_size} processes)."
            )
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        per_process = order[: self.batches_per_epoch * self.batch_size * self.world_size][self.rank :: self.world_size]
        return ((self.epoch, row) for row in per_process[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class SeededAugmentation(torch.utils.data.Dataset):
    """Item ``(epoch, row)``: row ``row`` augmented with a generator seeded by (seed, epoch, row), so the crops do not
    depend on the worker that makes them and a resume repeats them exactly."""

    def __init__(self, dataset: SegmentationDataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, row = key
        return self.dataset.get_item(row, rng=np.random.default_rng([self.seed, epoch, row]))


# ------------------------------------------------------------------------------------------------ streaming
class TrainStream:
    """One process's share of a training split read as a ``datasets.IterableDataset``: nothing is converted or
    cached, rows are read as they are used.

    ``stream`` holds the undecoded image and label columns, already split between the processes
    (``split_dataset_by_node``: whole shards when their number divides evenly, else every ``world_size``-th row) and
    shuffled (shard order and a ``shuffle_buffer_size`` buffer, seeded by seed + epoch).
    """

    def __init__(
        self, stream: datasets.IterableDataset, preset: DatasetPreset, transform: Any, split: str, source: str
    ) -> None:
        self.stream, self.preset, self.transform, self.split, self.source = stream, preset, transform, split, source


def load_train_stream(
    preset: DatasetPreset,
    source: str | None,
    split: str,
    *,
    seed: int,
    shuffle_buffer_size: int,
    rank: int,
    world_size: int,
    revision: str | None = None,
    data_dir: str | None = None,
) -> TrainStream:
    """The training split of a Hub id or of local parquet files (a file, or a folder such as ``data/train-*.parquet``)
    as a :class:`TrainStream` for process ``rank`` of ``world_size``, with the preset's training augmentation."""
    if source is None:
        if preset.hub_id is None:
            raise DataError(f"the {preset.name} preset has no default source; pass a Hub id or local parquet files")
        source, revision, data_dir = preset.hub_id, revision or preset.hub_revision, data_dir or preset.hub_data_dir
    path = Path(source)
    kwargs: dict[str, Any] = {}
    if revision:
        kwargs["revision"] = revision
    if data_dir:
        kwargs["data_dir"] = data_dir
    if path.is_file():
        if path.suffix != ".parquet":
            raise DataError(f"--streaming reads parquet files or a Hub dataset; {source} is a {path.suffix} file")
        stream = datasets.load_dataset("parquet", data_files={split: str(path)}, split=split, streaming=True)
    elif path.is_dir() and not list(path.rglob("*.parquet")):
        raise DataError(
            f"--streaming reads parquet files or a Hub dataset, and {source} holds no parquet file (a save_to_disk "
            "folder or image folders?). Train without --streaming: those are read in place, without conversion."
        )
    else:
        try:  # split names from the files' names or the Hub's metadata; nothing is downloaded
            available = datasets.get_dataset_split_names(source, **kwargs)
        except Exception as err:  # datasets raises many types for an unreadable source
            raise DataError(f"{source}: cannot list its splits to stream ({type(err).__name__}: {err})") from err
        split = _pick_split(available, split, source)
        stream = datasets.load_dataset(source, split=split, streaming=True, **kwargs)
    columns = [preset.image_column, preset.label_column]
    if stream.features is not None:
        missing = [c for c in columns if c not in stream.features]
        if missing:
            raise DataError(
                f"{source} (split {split!r}) has no column {', '.join(map(repr, missing))}; columns are "
                f"{list(stream.features)}. Pass --image_column/--label_column to choose others."
            )
    stream = stream.select_columns(columns)
    for column in columns:  # undecoded: images are decoded in the DataLoader workers, with row-level errors
        if stream.features is not None and isinstance(stream.features[column], datasets.Image):
            stream = stream.cast_column(column, datasets.Image(decode=False))
    stream = datasets.distributed.split_dataset_by_node(stream, rank=rank, world_size=world_size)
    stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    transform = TrainTransform(preset.train_scale, preset.crop_size)
    return TrainStream(stream, preset, transform, split, str(source))


class StreamBatchSampler(torch.utils.data.Sampler[list]):
    """Batches of ``(epoch, position, row)`` read from a :class:`TrainStream` in this process, ``start_batch`` batches
    into epoch ``epoch``; the DataLoader's workers only decode and augment (:class:`StreamAugmentation`).

    Reading the stream here, in one place, keeps its order independent of the number of workers. A resume re-reads
    (without decoding) the rows of the epoch already used and drops them: ``datasets``' own ``state_dict()`` does not
    hold the shuffle buffer's rows, and restoring it would skip them and change the order. Each epoch drops an
    incomplete last batch.
    """

    def __init__(self, train_stream: TrainStream, batch_size: int) -> None:
        self.train_stream, self.batch_size = train_stream, batch_size
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        stream = self.train_stream.stream
        stream.set_epoch(self.epoch)
        skip = self.start_batch * self.batch_size
        batch, yielded = [], False
        for position, row in enumerate(stream):
            if position < skip:
                continue
            batch.append((self.epoch, position, row))
            if len(batch) == self.batch_size:
                yield batch
                batch, yielded = [], True
        if not yielded and skip == 0:
            raise DataError(
                f"{self.train_stream.source}: this process's share of split {self.train_stream.split!r} has fewer "
                f"rows than one batch ({self.batch_size}); use fewer processes, a smaller batch or more data"
            )


class StreamAugmentation(torch.utils.data.Dataset):
    """Decodes and augments the ``(epoch, position, row)`` items of :class:`StreamBatchSampler`, drawing each
    sample's augmentation from a generator seeded by (seed, epoch, rank, position): the same crops after a resume,
    whichever worker makes them (the epoch travels with the item, so persistent workers need no update)."""

    def __init__(self, train_stream: TrainStream, seed: int, rank: int) -> None:
        self.train_stream, self.seed, self.rank = train_stream, seed, rank

    def __getitem__(self, key: tuple[int, int, dict[str, Any]]) -> dict[str, Any]:
        epoch, position, row = key
        stream = self.train_stream
        where = f"{stream.source}: streamed row {position} of process {self.rank}'s share of split {stream.split!r} "
        where += f"(epoch {epoch}): "
        rng = np.random.default_rng([self.seed, epoch, self.rank, position])
        item = transformed_row(row, stream.preset, stream.transform, rng, where)
        item["index"] = position
        return item


# ------------------------------------------------------------------------------------------------ label check
def scan_labels(dataset: SegmentationDataset, indices: Iterable[int]) -> tuple[dict[int, int], list[tuple[int, str]]]:
    """Raw label histogram of rows ``indices`` and their problems, ``(row, "values ...")`` or an unreadable label's
    error: collected, never raised, so every bad row of every process can be reported at once."""
    preset = dataset.preset
    raw_hist: dict[int, int] = {}
    problems = []
    for index in indices:
        try:
            raw = dataset.raw_label(index)
        except DataError as err:
            problems.append((index, str(err)))
            continue
        values, counts = np.unique(raw, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            raw_hist[value] = raw_hist.get(value, 0) + count
        bad = preset.invalid_values(values)
        if len(bad):
            problems.append((index, f"values {_short(bad)}"))
    return raw_hist, problems


def label_check_error(
    preset: DatasetPreset, rows: int, raw_hist: dict[int, int], problems: list[tuple[int, str]]
) -> DataError:
    """One error listing the bad rows (the first 20, in row order) and the raw histogram."""
    listed = "; ".join(f"row {index}: {problem}" for index, problem in sorted(problems)[:20])
    return DataError(
        f"label check failed for column '{preset.label_column}' ({preset.name}: {preset.raw_range}) in "
        f"{len(problems)} of {rows} rows: {listed}. Raw histogram: {dict(sorted(raw_hist.items()))}"
    )


def verify_labels(dataset: SegmentationDataset, num_rows: int) -> dict[str, Any]:
    """Histogram of raw label values (and train ids) over the first ``num_rows`` rows; raises on bad values.

    Every bad row is listed in one :class:`DataError`, so one run shows the whole extent of an encoding mismatch.
    """
    preset = dataset.preset
    rows = min(int(num_rows), len(dataset))
    raw_hist, problems = scan_labels(dataset, range(rows))
    if problems:
        raise label_check_error(preset, rows, raw_hist, problems)
    raw_hist = dict(sorted(raw_hist.items()))
    train_hist: dict[int, int] = {}
    for value, count in raw_hist.items():
        train_id = int(preset.label_lut[value])
        train_hist[train_id] = train_hist.get(train_id, 0) + count
    return {
        "preset": preset.name,
        "rows_checked": rows,
        "raw_histogram": raw_hist,
        "train_id_histogram": dict(sorted(train_hist.items())),
    }


def label_check_key(dataset: SegmentationDataset) -> str:
    """What a finished label check of ``dataset`` depends on: its rows (the ``datasets`` fingerprint, plus the size
    and modification time of label files referenced by path, whose content the fingerprint does not cover) and the
    label mapping (column, raw range, lookup table)."""
    import hashlib

    preset = dataset.preset
    digest = hashlib.sha256()
    for part in (dataset.dataset._fingerprint, len(dataset), preset.name, preset.label_column, preset.raw_range):
        digest.update(repr(part).encode() + b"\0")
    digest.update(np.asarray(preset.label_lut).tobytes())
    column = dataset.dataset.data.column(preset.label_column)
    if isinstance(dataset.dataset.features[preset.label_column], datasets.Image):
        for chunk in column.chunks:  # struct<bytes, path>; only the (small) path column is read
            if chunk.field("bytes").null_count:
                for path in chunk.field("path").to_pylist():
                    stat = Path(path).stat() if path and Path(path).exists() else None
                    digest.update(f"{path}:{stat and (stat.st_size, stat.st_mtime_ns)}\0".encode())
    return digest.hexdigest()


def check_split_labels(
    dataset: SegmentationDataset,
    cache_file: Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[Any], list] | None = None,
) -> bool:
    """Checks every label of ``dataset`` once: each of ``world_size`` processes scans rows ``rank::world_size``, the
    results are combined with ``gather`` (all processes' objects, in rank order; e.g. accelerate's
    ``gather_object`` on a one-element list), and every process raises the same :class:`DataError` listing the bad
    rows of all of them.

    A passed check is recorded in ``cache_file`` under :func:`label_check_key`, so the next start on the same data
    (a resume) skips it. Returns whether the rows were scanned (False: the cache says they were checked already).
    """
    key = label_check_key(dataset)
    if cache_file is not None and cache_file.is_file():
        try:
            if key in json.loads(cache_file.read_text()).get("passed", {}):
                return False
        except (OSError, ValueError):
            pass  # an unreadable cache: check again, then rewrite it
    raw_hist, problems = scan_labels(dataset, range(rank, len(dataset), world_size))
    shards = gather([(raw_hist, problems)]) if gather is not None else [(raw_hist, problems)]
    all_problems = [problem for _, shard_problems in shards for problem in shard_problems]
    if all_problems:
        combined: dict[int, int] = {}
        for shard_hist, _ in shards:
            for value, count in shard_hist.items():
                combined[value] = combined.get(value, 0) + count
        raise label_check_error(dataset.preset, len(dataset), combined, all_problems)
    if cache_file is not None and rank == 0:
        try:
            passed = json.loads(cache_file.read_text()).get("passed", {}) if cache_file.is_file() else {}
        except (OSError, ValueError):
            passed = {}
        passed[key] = {"rows": len(dataset), "split": dataset.split, "source": dataset.source}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_name(f".{cache_file.name}.tmp")
        temporary.write_text(json.dumps({"passed": passed}, indent=2) + "\n")
        temporary.replace(cache_file)  # a kill never leaves half a cache
    return True


def format_histogram(report: dict[str, Any], preset: DatasetPreset) -> str:
    """A readable table of a :func:`verify_labels` report."""
    lines = [f"{preset.name}: raw label values over {report['rows_checked']} rows (value -> train id, pixels)"]
    total = max(sum(report["raw_histogram"].values()), 1)
    for value, count in report["raw_histogram"].items():
        train_id = int(preset.label_lut[value])
        name = "ignore" if train_id == IGNORE_INDEX else preset.class_names[train_id]
        lines.append(f"  {value:>5} -> {train_id:>3} {name:<24} {count:>12} ({100 * count / total:5.2f}%)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- pairing check
PAIRING_SIZE = 320  # images and labels are compared at this square size
MIN_PAIRING_ROWS = 5  # below, a shuffled pairing passes too often by chance (about 6% at 5 rows)


def _edge_strength(image: np.ndarray) -> np.ndarray:
    """(PAIRING_SIZE**2,) grey-level gradient magnitude, taken over 3x3 neighbourhoods (labels drawn a pixel off
    still meet the edge) and divided by its mean; all zeros for a flat image."""
    grey = Image.fromarray(image).convert("L").resize((PAIRING_SIZE, PAIRING_SIZE), Image.Resampling.BILINEAR)
    grey = np.asarray(grey, dtype=np.float32)
    gradient = np.zeros_like(grey)
    gradient[:, :-1] = np.abs(np.diff(grey, axis=1))
    gradient[:-1, :] = np.maximum(gradient[:-1, :], np.abs(np.diff(grey, axis=0)))
    padded = np.pad(gradient, 1, mode="edge")
    spread = np.max([padded[dy : dy + PAIRING_SIZE, dx : dx + PAIRING_SIZE] for dy in range(3) for dx in range(3)], 0)
    mean = spread.mean()
    return (spread / mean if mean > 0 else np.zeros_like(spread)).ravel()


def _label_boundaries(label: np.ndarray, size: int | None = PAIRING_SIZE) -> np.ndarray:
    """(H, W) bool: pixels next to a different label value (both sides), of the label resized (nearest) to a
    ``size`` square first unless ``size`` is None."""
    if size is not None:  # nearest-neighbour sampling, for any integer dtype
        label = label[np.arange(size) * label.shape[0] // size][:, np.arange(size) * label.shape[1] // size]
    boundary = np.zeros(label.shape, dtype=bool)
    across, down = label[:, 1:] != label[:, :-1], label[1:, :] != label[:-1, :]
    boundary[:, 1:] |= across
    boundary[:, :-1] |= across
    boundary[1:, :] |= down
    boundary[:-1, :] |= down
    return boundary


def check_pairing(dataset: SegmentationDataset, num_rows: int) -> dict[str, Any]:
    """Does each label map belong to its image? A check that value ranges cannot make: a shuffled pairing has valid
    values.

    For the first ``num_rows`` rows, ``fit[i][j]`` is how strong image ``i``'s edges are on the boundaries of label
    ``j`` (mean normalised gradient there; about 1 where boundaries and edges are unrelated). A row *matches* when
    its own label fits its image better than every other row's label does. In a correctly paired dataset nearly all
    rows match; in a shuffled one each row does with probability 1 / rows. The verdict is ``"consistent"`` when at
    least half the rows match, ``"mismatched"`` otherwise, ``"inconclusive"`` with fewer than ``MIN_PAIRING_ROWS``
    rows that have both a label boundary and image contrast.
    """
    rows = min(int(num_rows), len(dataset))
    edges, boundaries, scored = [], [], []
    for index in range(rows):
        image, label = dataset.raw_item(index)
        edge, boundary = _edge_strength(image), _label_boundaries(label).ravel()
        if boundary.any() and edge.any():  # a one-class label or a flat image says nothing about the pairing
            edges.append(edge)
            boundaries.append(boundary)
            scored.append(index)
    report: dict[str, Any] = {"rows_checked": rows, "rows_scored": scored, "min_rows": MIN_PAIRING_ROWS}
    if len(scored) < 2:
        return {
            **report,
            "verdict": "inconclusive",
            "matched": [],
            "own_fit": [],
            "other_fit": [],
            "best_label_row": [],
        }
    boundary_matrix = np.stack(boundaries).astype(np.float32)
    fit = np.stack(edges) @ boundary_matrix.T / boundary_matrix.sum(axis=1)  # fit[i, j]: image i, label j
    own = np.diag(fit).copy()
    others = np.where(np.eye(len(scored), dtype=bool), np.nan, fit)
    matched = own > np.nanmax(others, axis=1)
    best = np.argmax(fit, axis=1)  # the row whose label fits each image best: shows an offset between the columns
    verdict = "inconclusive" if len(scored) < MIN_PAIRING_ROWS else "consistent" if matched.mean() >= 0.5 else (
        "mismatched")  # fmt: skip
    return {
        **report,
        "verdict": verdict,
        "matched": matched.tolist(),
        "own_fit": own.round(3).tolist(),
        "other_fit": np.nanmedian(others, axis=1).round(3).tolist(),  # a typical wrong label's fit, per image
        "best_label_row": [scored[j] for j in best],
    }


def format_pairing(report: dict[str, Any]) -> str:
    """A readable summary of a :func:`check_pairing` report."""
    scored, matched = report["rows_scored"], report["matched"]
    lines = [f"image-label agreement over {len(scored)} of {report['rows_checked']} rows: {report['verdict']}"]
    if matched:
        lines.append(
            f"  {sum(matched)} of {len(scored)} labels fit their own image best (a shuffled pairing: about "
            f"{100 / len(scored):.0f}%); edge strength on label boundaries: own label median "
            f"{np.median(report['own_fit']):.2f}, other rows' labels {np.median(report['other_fit']):.2f} "
            "(1 = unrelated)"
        )
        failing = [(row, best) for row, ok, best in zip(scored, matched, report["best_label_row"]) if not ok]
        if failing:
            pairs = ", ".join(f"{row}->{best}" for row, best in failing[:8]) + (", ..." if len(failing) > 8 else "")
            lines.append(f"  {len(failing)} images fit another row's label best (image row -> label row): {pairs}")
    if report["verdict"] == "inconclusive":
        lines.append(f"  needs {report['min_rows']} rows with a label boundary and image contrast: pass a larger N")
    return "\n".join(lines)


def write_contact_sheet(
    dataset: SegmentationDataset, report: dict[str, Any], path: str | Path, tile: int = 256, columns: int = 4
) -> Path:
    """A PNG grid of the checked rows: each image blended with its label's class colours (ignored pixels left as
    they are) and the label boundaries in white, captioned with the row and its fit (red: a row that does not
    match). Shows at a glance whether the masks lie on their images."""
    preset = dataset.preset
    colours = np.zeros((256, 3), np.uint8)
    colours[: preset.num_labels] = np.asarray(preset.palette, np.uint8)[:256]
    fits = dict(zip(report["rows_scored"], zip(report["own_fit"], report["matched"]))) if report["matched"] else {}
    rows = report["rows_checked"]
    caption, gap = 14, 6
    columns = max(1, min(columns, rows))
    sheet = Image.new("RGB", (columns * (tile + gap), -(-rows // columns) * (tile + caption + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for index in range(rows):
        image, raw = dataset.raw_item(index)
        label = preset.map_labels(raw, dataset._where(index))
        scale = min(tile / image.shape[1], tile / image.shape[0])  # fit the tile, up or down
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
        blended = (0.5 * image + 0.5 * colours[np.minimum(label, 255)]).round().astype(np.uint8)
        picture = np.where((label == IGNORE_INDEX)[..., None], image, blended)
        picture[_label_boundaries(label, None)] = 255
        left, top = (index % columns) * (tile + gap), (index // columns) * (tile + caption + gap)
        sheet.paste(Image.fromarray(picture), (left + (tile - size[0]) // 2, top + (tile - size[1]) // 2))
        own, ok = fits.get(index, (None, True))
        text = f"row {index}" + (f"  fit {own:.2f}" if own is not None else "  (not scored)") + ("" if ok else "  !")
        draw.text((left + 4, top + tile + 2), text, fill=(0, 0, 0) if ok else (200, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset command-line options shared by the training and evaluation scripts."""
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", default="ade20k", choices=PRESET_NAMES, help="dataset preset")
    group.add_argument(
        "--dataset_path",
        default=None,
        help="Hub id or local path (parquet, save_to_disk folder, image folders); default: preset's",
    )
    group.add_argument("--split", default=None, help="split name (default: the preset's train/eval split)")
    group.add_argument("--dataset_revision", default=None, help="Hub revision of the dataset")
    group.add_argument("--dataset_data_dir", default=None, help="sub-directory of the Hub dataset")
    group.add_argument("--image_column", default=None)
    group.add_argument("--label_column", default=None)
    group.add_argument("--num_labels", type=int, default=None, help="generic preset: number of classes")
    group.add_argument("--reduce_labels", action="store_true", help="generic preset: raw 0 = ignore, v -> v-1")
    group.add_argument("--class_names", default=None, help="generic preset: JSON list file or comma-separated names")
    group.add_argument(
        "--label_encoding", default="labelIds", choices=("labelIds", "trainIds"), help="cityscapes: raw label encoding"
    )
    group.add_argument(
        "--verify_labels",
        type=int,
        default=0,
        metavar="N",
        help="check the raw label values of the first N rows first (histogram; fail if out of range)",
    )


def preset_from_args(args: argparse.Namespace) -> DatasetPreset:
    """The :class:`DatasetPreset` selected by :func:`add_dataset_arguments` options."""
    class_names = parse_class_names(args.class_names) if args.class_names else None
    return get_preset(
        args.dataset,
        image_column=args.image_column,
        label_column=args.label_column,
        num_labels=args.num_labels,
        reduce_labels=args.reduce_labels,
        class_names=class_names,
        label_encoding=args.label_encoding,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: the label check of :func:`verify_labels`."""
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument(
        "--contact_sheet",
        type=Path,
        default=None,
        metavar="PNG",
        help="with --verify_labels: where the overlays go (default: label_check_<dataset>_<split>.png)",
    )
    args = parser.parse_args(argv)
    preset = preset_from_args(args)
    dataset = build_dataset(
        preset, args.dataset_path, args.split, revision=args.dataset_revision, data_dir=args.dataset_data_dir
    )
    print(f"{args.dataset_path or preset.hub_id} split {dataset.split!r}: {len(dataset)} rows")
    if args.verify_labels:
        try:
            report = verify_labels(dataset, args.verify_labels)
            print(format_histogram(report, preset))
            pairing = check_pairing(dataset, args.verify_labels)
            sheet = args.contact_sheet or Path(f"label_check_{preset.name}_{dataset.split}.png")
            print(format_pairing(pairing))
            print(
                f"contact sheet of {pairing['rows_checked']} overlays: {write_contact_sheet(dataset, pairing, sheet)}"
            )
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        if pairing["verdict"] == "mismatched":
            print(
                "error: the labels do not fit their images better than other rows' labels: the image and label "
                "columns are probably out of step (look at the contact sheet; docs/datasets.md)",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
