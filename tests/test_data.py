"""Presets on tiny datasets written in each benchmark's real schema: loading, label mapping, augmentation, bad data."""

import io
from dataclasses import replace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from training.data import (
    MIN_PAIRING_ROWS,
    SegmentationDataset,
    StreamAugmentation,
    StreamBatchSampler,
    build_dataset,
    check_pairing,
    check_split_labels,
    collate_eval,
    collate_train,
    format_histogram,
    load_split,
    load_train_stream,
    main,
    read_image,
    scan_labels,
    verify_labels,
    worker_init_fn,
)
from training.presets import COCO_STUFF_UNUSED, DataError, get_preset
from training.synthetic import make_scene
from training.transforms import EvalTransform, TrainTransform


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    # Keep the Arrow caches that load_dataset writes inside the test's folder.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _png(array, palette=False):
    if palette:  # an indexed "P" image, as COCO-Stuff's stuffthingmaps: np.array() must give the indices back
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())
        image.putpalette(np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8).tolist())
    else:
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(h, w, seed):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _rows(raw_maps, label_column, extra=None):
    table = {
        "image": [{"bytes": _jpeg(*m.shape, i), "path": None} for i, m in enumerate(raw_maps)],
        label_column: [{"bytes": _png(m), "path": None} for m in raw_maps],
    }
    features = {"image": datasets.Image(), label_column: datasets.Image()}
    if extra:
        table.update(extra[0])
        features.update(extra[1])
    return datasets.Dataset.from_dict(table, features=datasets.Features(features))


def _raw_maps(values, shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.choice(np.asarray(values, dtype=np.uint8), size=shape) for shape in shapes]


# ------------------------------------------------------------------------------------------------------ ADE20K
ADE_SHAPES = [(24, 32), (30, 20), (16, 16)]


@pytest.fixture
def ade_parquet(tmp_path):
    """scene_parse_150's parquet export: image (JPEG), annotation (PNG, L, 0..150), scene_category."""
    maps = _raw_maps([0, 1, 2, 75, 149, 150], ADE_SHAPES)
    categories = ([0, 5, 7], {"scene_category": datasets.ClassLabel(names=[f"scene{i}" for i in range(10)])})
    root = tmp_path / "ade"
    (root / "data").mkdir(parents=True)
    for split in ("train", "validation"):
        ds = _rows(maps, "annotation", ({"scene_category": categories[0]}, categories[1]))
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root, maps


def test_ade20k_parquet_eval_labels(ade_parquet):
    root, maps = ade_parquet
    ds = build_dataset("ade20k", str(root), "validation")
    assert len(ds) == 3 and ds.preset.num_labels == 150 and ds.split == "validation"
    for i, raw in enumerate(maps):
        item = ds[i]
        expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)  # 0 = other -> ignore, v -> v - 1
        np.testing.assert_array_equal(item["labels"].numpy(), expected)
        assert item["pixel_values"].shape == (3, *raw.shape) and item["index"] == i
    assert set(np.unique(ds[0]["labels"].numpy())) <= {0, 1, 74, 148, 149, 255}


def test_ade20k_train_augmentation_labels(ade_parquet):
    root, _ = ade_parquet
    ds = build_dataset("ade20k", str(root), train=True, crop_size=(32, 32), train_scale=(128, 32))
    assert ds.split == "train"
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item["pixel_values"].shape == (3, 32, 32) and item["labels"].shape == (32, 32)
        assert item["labels"].dtype == torch.int64
        seen |= set(item["labels"].unique().tolist())
    assert seen <= {0, 1, 74, 148, 149, 255} and seen & {0, 1, 74, 148, 149}


def test_ade20k_default_scales_reach_crop_size(ade_parquet):
    root, _ = ade_parquet
    item = build_dataset("ade20k", str(root), train=True)[0]
    assert item["pixel_values"].shape == (3, 512, 512) and item["labels"].shape == (512, 512)


def test_ade20k_image_folders(tmp_path):
    # ADEChallengeData2016 layout: images/validation/*.jpg + annotations/validation/*.png
    root = tmp_path / "ADEChallengeData2016"
    maps = _raw_maps([0, 3, 150], [(20, 30), (18, 22)])
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i, m in enumerate(maps):
            (root / "images" / split / f"ADE_{split}_{i:08d}.jpg").write_bytes(_jpeg(*m.shape, i))
            (root / "annotations" / split / f"ADE_{split}_{i:08d}.png").write_bytes(_png(m))
    ds = build_dataset("ade20k", str(root), "validation")
    assert len(ds) == 2
    np.testing.assert_array_equal(ds[1]["labels"].numpy(), np.where(maps[1] == 0, 255, maps[1].astype(int) - 1))
    assert len(build_dataset("ade20k", str(root), "train", train=True, crop_size=16, train_scale=(64, 16))) == 2


# -------------------------------------------------------------------------------------------------- Cityscapes
CITYSCAPES_TRAIN_ID = {0: 255, 1: 255, 6: 255, 7: 0, 8: 1, 9: 255, 11: 2, 24: 11, 26: 13, 29: 255, 33: 18}


@pytest.fixture
def cityscapes_disk(tmp_path):
    """A Chris1/cityscapes-like DatasetDict (image + semantic_segmentation with labelIds 0..33) via save_to_disk."""
    maps = _raw_maps(sorted(CITYSCAPES_TRAIN_ID), [(16, 32), (16, 32)])
    path = tmp_path / "cityscapes_saved"
    datasets.DatasetDict(
        {"train": _rows(maps, "semantic_segmentation"), "validation": _rows(maps, "semantic_segmentation")}
    ).save_to_disk(str(path))
    return path, maps


def test_cityscapes_label_ids(cityscapes_disk):
    path, maps = cityscapes_disk
    ds = build_dataset("cityscapes", str(path), "val")  # alias of "validation"
    assert ds.split == "validation" and ds.preset.num_labels == 19
    lut = np.vectorize(CITYSCAPES_TRAIN_ID.get)
    for i, raw in enumerate(maps):
        np.testing.assert_array_equal(ds[i]["labels"].numpy(), lut(raw))
    train = build_dataset("cityscapes", str(path), train=True, crop_size=(16, 32), train_scale=(64, 32))
    values = set(torch.cat([train[i]["labels"].flatten() for i in range(2)]).tolist())
    assert values <= {0, 1, 2, 11, 13, 18, 255} and values - {255}


def test_cityscapes_official_folders_and_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    label_ids = _raw_maps([7, 26, 33, 0], [(8, 16)])[0]
    train_ids = np.vectorize({7: 0, 26: 13, 33: 18, 0: 255}.get)(label_ids).astype(np.uint8)
    for city in ("aachen", "bochum"):
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True)
        (root / "gtFine" / "val" / city).mkdir(parents=True)
        stem = f"{city}_000000_000019"
        (root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png").write_bytes(
            _png(np.zeros((8, 16, 3), np.uint8))
        )
        (root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png").write_bytes(_png(label_ids))
        (root / "gtFine" / "val" / city / f"{stem}_gtFine_labelTrainIds.png").write_bytes(_png(train_ids))
        (root / "gtFine" / "val" / city / f"{stem}_gtFine_color.png").write_bytes(_png(np.ones((8, 16, 3), np.uint8)))
    ds = build_dataset("cityscapes", str(root), "validation")
    assert len(ds) == 2
    np.testing.assert_array_equal(ds[0]["labels"].numpy(), train_ids)
    as_train_ids = build_dataset(get_preset("cityscapes", label_encoding="trainIds"), str(root), "val")
    np.testing.assert_array_equal(as_train_ids[1]["labels"].numpy(), train_ids)


def test_cityscapes_train_ids_in_label_ids_mode_fail_with_hint(tmp_path):
    maps = [np.array([[0, 13], [255, 18]], np.uint8)]
    path = tmp_path / "already_train_ids"
    datasets.DatasetDict({"validation": _rows(maps, "semantic_segmentation")}).save_to_disk(str(path))
    with pytest.raises(DataError, match=r"row 0 .*values \[255\].*trainIds"):
        build_dataset("cityscapes", str(path))[0]


# ------------------------------------------------------------------------------------------------- COCO-Stuff
@pytest.fixture
def coco_disk(tmp_path):
    """GATE-engine/COCOStuff164K-like: image + mask (indexed PNG, raw 0..181 and 255), splits train/val."""
    values = [0, 10, 11, 12, 25, 90, 91, 181, 255]
    maps = _raw_maps(values, [(20, 20), (12, 28)])
    rows = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": _jpeg(*m.shape, i), "path": None} for i, m in enumerate(maps)],
            "mask": [{"bytes": _png(m, palette=True), "path": None} for m in maps],
        },
        features=datasets.Features({"image": datasets.Image(), "mask": datasets.Image()}),
    )
    path = tmp_path / "coco"
    datasets.DatasetDict({"train": rows, "val": rows}).save_to_disk(str(path))
    return path, maps


def test_coco_stuff_mapping(coco_disk):
    path, maps = coco_disk
    assert Image.open(io.BytesIO(_png(maps[0], palette=True))).mode == "P"
    ds = build_dataset("coco_stuff", str(path), "validation")  # resolves to "val"
    assert ds.split == "val" and ds.preset.num_labels == 171
    expected = {0: 0, 10: 10, 11: 255, 12: 11, 25: 255, 90: 255, 91: 80, 181: 170, 255: 255}
    for i, raw in enumerate(maps):
        np.testing.assert_array_equal(ds[i]["labels"].numpy(), np.vectorize(expected.get)(raw))
    train = build_dataset("coco_stuff", str(path), train=True, crop_size=16, train_scale=(64, 16))
    values = set(torch.cat([train[i]["labels"].flatten() for i in range(2)]).tolist())
    assert values <= {0, 10, 11, 80, 170, 255}


def test_coco_stuff_lut_matches_converter_table():
    lut = get_preset("coco_stuff").label_lut
    kept = [v for v in range(182) if v not in COCO_STUFF_UNUSED]
    assert len(kept) == 171 and [int(lut[v]) for v in kept] == list(range(171))
    assert all(lut[v] == 255 for v in COCO_STUFF_UNUSED) and lut[255] == 255
    assert lut[182] == -1 and int(lut[91]) == 80


# ----------------------------------------------------------------------------------------------------- generic
def test_generic_preset_columns_and_reduce_labels(tmp_path):
    maps = _raw_maps([0, 1, 2, 3], [(10, 12)])
    ds = _rows(maps, "mask_png").rename_column("image", "photo")
    path = tmp_path / "generic.parquet"
    ds.to_parquet(str(path))
    preset = get_preset("generic", image_column="photo", label_column="mask_png", num_labels=3, reduce_labels=True)
    data = build_dataset(preset, str(path), "validation")
    np.testing.assert_array_equal(data[0]["labels"].numpy(), np.where(maps[0] == 0, 255, maps[0].astype(int) - 1))
    plain = get_preset("generic", image_column="photo", label_column="mask_png", num_labels=4)
    np.testing.assert_array_equal(build_dataset(plain, str(path))[0]["labels"].numpy(), maps[0])
    with pytest.raises(DataError, match=r"values \[3\] are outside the generic range \(0..2 and 255"):
        build_dataset(get_preset("generic", image_column="photo", label_column="mask_png", num_labels=3), str(path))[0]
    with pytest.raises(ValueError, match="num_labels"):
        get_preset("generic")


# ------------------------------------------------------------------------------------------------ batching etc.
def test_dataloader_collate_and_workers(ade_parquet):
    root, _ = ade_parquet
    train = build_dataset("ade20k", str(root), train=True, crop_size=16, train_scale=(64, 16))
    loader = torch.utils.data.DataLoader(
        train, batch_size=3, num_workers=2, collate_fn=collate_train, worker_init_fn=worker_init_fn
    )
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and batch["labels"].shape == (3, 16, 16)
    evaluation = build_dataset("ade20k", str(root), "validation")
    batch = collate_eval([evaluation[i] for i in range(3)])
    assert [tuple(x.shape) for x in batch["labels"]] == ADE_SHAPES and batch["index"].tolist() == [0, 1, 2]


def test_max_samples_and_custom_transform(ade_parquet):
    root, _ = ade_parquet
    ds = build_dataset("ade20k", str(root), "validation", transform=EvalTransform(), max_samples=2)
    assert len(ds) == 2
    assert isinstance(build_dataset("ade20k", str(root), train=True).transform, TrainTransform)


# ------------------------------------------------------------------------------------------------ label check
def test_verify_labels_histogram(ade_parquet, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the contact sheet's default folder
    root, maps = ade_parquet
    ds = build_dataset("ade20k", str(root), "validation")
    report = verify_labels(ds, 2)
    values, counts = np.unique(np.concatenate([m.ravel() for m in maps[:2]]), return_counts=True)
    assert report["rows_checked"] == 2
    assert report["raw_histogram"] == dict(zip(values.tolist(), counts.tolist(), strict=True))
    assert report["train_id_histogram"][255] == report["raw_histogram"][0]
    assert report["train_id_histogram"][149] == report["raw_histogram"][150]
    assert "150 ->" in format_histogram(report, ds.preset) and "ignore" in format_histogram(report, ds.preset)
    assert main(["--dataset", "ade20k", "--dataset_path", str(root), "--verify_labels", "3"]) == 0
    out = capsys.readouterr().out
    assert "raw label values over 3 rows" in out
    # Three rows cannot tell a shuffled pairing from a correct one: said, not failed.
    assert "agreement over 3 of 3 rows: inconclusive" in out and "pass a larger N" in out
    assert Image.open(tmp_path / "label_check_ade20k_validation.png").size == (3 * 262, 276)


def _scenes_dataset(path, label_order):
    """Synthetic scenes cut to one size (so a shuffled pairing passes the size check), labels in `label_order`."""
    scenes = [make_scene(100 + index) for index in range(len(label_order))]
    images = [image[:112, :128] for image, _ in scenes]
    labels = [scenes[j][1][:112, :128] for j in label_order]
    table = {"image": [{"bytes": _png(image), "path": None} for image in images],
             "annotation": [{"bytes": _png(label), "path": None} for label in labels]}  # fmt: skip
    ds = datasets.Dataset.from_dict(table, features=datasets.Features(IMAGE_FEATURES))
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(path))
    return str(path)


def test_pairing_check_flags_a_shuffled_copy(tmp_path, capsys):
    """Valid label values in the wrong rows pass the value check but not the pairing check, which also names the
    label each image belongs to; the correctly paired dataset passes both."""
    rows = 10
    correct = _scenes_dataset(tmp_path / "correct", list(range(rows)))
    shuffled_order = [3, 7, 0, 9, 1, 4, 2, 8, 5, 6]  # no row keeps its own label
    shuffled = _scenes_dataset(tmp_path / "shuffled", shuffled_order)
    good = check_pairing(build_dataset("synthetic", correct), rows)
    assert good["verdict"] == "consistent" and all(good["matched"])
    assert min(good["own_fit"]) > 2 * max(good["other_fit"])
    bad_dataset = build_dataset("synthetic", shuffled)
    verify_labels(bad_dataset, rows)  # every value is a valid class: the value check cannot see it
    bad = check_pairing(bad_dataset, rows)
    assert bad["verdict"] == "mismatched" and sum(bad["matched"]) < rows / 2
    # Image row i shows scene i, whose label sits in the row that holds shuffled_order.index(i).
    assert bad["best_label_row"] == [shuffled_order.index(i) for i in range(rows)]

    args = ["--dataset", "synthetic", "--verify_labels", str(rows), "--contact_sheet"]
    assert main(["--dataset_path", correct, *args, str(tmp_path / "correct.png")]) == 0
    assert f"agreement over {rows} of {rows} rows: consistent" in capsys.readouterr().out
    assert main(["--dataset_path", shuffled, *args, str(tmp_path / "shuffled.png")]) == 1
    captured = capsys.readouterr()
    assert "mismatched" in captured.out and "0->2" in captured.out and "out of step" in captured.err
    for name in ("correct", "shuffled"):
        sheet = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB"))
        assert sheet.shape == (3 * (256 + 20), 4 * 262, 3)
        assert (sheet == 255).all(axis=-1).mean() < 0.5  # the tiles are drawn, not a blank page
    # Too few rows is inconclusive, never a pass or a failure by chance.
    assert check_pairing(bad_dataset, MIN_PAIRING_ROWS - 1)["verdict"] == "inconclusive"


def test_verify_labels_reports_every_bad_row(tmp_path, capsys):
    maps = [np.array([[1, 2]], np.uint8), np.array([[151, 3]], np.uint8), np.array([[200, 255]], np.uint8)]
    path = tmp_path / "bad_ade"
    datasets.DatasetDict({"validation": _rows(maps, "annotation")}).save_to_disk(str(path))
    ds = build_dataset("ade20k", str(path))
    with pytest.raises(DataError, match=r"2 of 3 rows: row 1: values \[151\]; row 2: values \[200, 255\]"):
        verify_labels(ds, 10)
    assert main(["--dataset", "ade20k", "--dataset_path", str(path), "--verify_labels", "3"]) == 1
    assert "label check failed" in capsys.readouterr().err


def _bad_ade_dataset(tmp_path, rows=7):
    """An ADE20K validation split whose rows 1, 4 and 5 hold values outside 0..150."""
    maps = [np.array([[1, 2], [3, 150]], np.uint8) for _ in range(rows)]
    maps[1][0, 0], maps[4][1, 1], maps[5][0, 1] = 151, 200, 255
    path = tmp_path / "bad_ade"
    datasets.DatasetDict({"validation": _rows(maps, "annotation")}).save_to_disk(str(path))
    return build_dataset("ade20k", str(path))


def test_split_label_check_is_cached_by_fingerprint(ade_parquet, tmp_path, monkeypatch):
    """The second check of the same data (a resume) reads no label; other data, or another label mapping, does."""
    root, _ = ade_parquet
    reads = {"count": 0}
    original = SegmentationDataset.raw_label

    def counting(self, index):
        reads["count"] += 1
        return original(self, index)

    monkeypatch.setattr(SegmentationDataset, "raw_label", counting)
    cache = tmp_path / "run" / "label_check.json"
    assert check_split_labels(build_dataset("ade20k", str(root), "validation"), cache) is True
    assert reads["count"] == 3 and cache.is_file()
    assert check_split_labels(build_dataset("ade20k", str(root), "validation"), cache) is False
    assert reads["count"] == 3  # not rescanned
    # Fewer rows, or the same rows under another preset's mapping, are other checks.
    assert check_split_labels(build_dataset("ade20k", str(root), "validation", max_samples=2), cache) is True
    generic = get_preset("generic", num_labels=151, image_column="image", label_column="annotation")
    assert check_split_labels(build_dataset(generic, str(root), "validation"), cache) is True
    assert reads["count"] == 3 + 2 + 3
    cache.write_text("{not json")  # a damaged cache means one more scan, never a skipped one
    assert check_split_labels(build_dataset("ade20k", str(root), "validation"), cache) is True


def test_split_label_check_of_image_folders_notices_a_changed_label_file(tmp_path):
    """Folder datasets hold paths: the fingerprint alone would not see a label file rewritten in place."""
    images, labels = tmp_path / "f" / "images" / "validation", tmp_path / "f" / "annotations" / "validation"
    images.mkdir(parents=True), labels.mkdir(parents=True)
    for index in range(2):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / f"{index}.jpg")
        Image.fromarray(np.full((4, 4), 3, np.uint8)).save(labels / f"{index}.png")
    cache = tmp_path / "label_check.json"
    assert check_split_labels(build_dataset("ade20k", str(tmp_path / "f")), cache) is True
    assert check_split_labels(build_dataset("ade20k", str(tmp_path / "f")), cache) is False
    Image.fromarray(np.full((4, 4), 201, np.uint8)).save(labels / "1.png")
    with pytest.raises(DataError, match=r"1 of 2 rows: row 1: values \[201\]"):
        check_split_labels(build_dataset("ade20k", str(tmp_path / "f")), cache)


def test_split_label_check_shards_name_every_bad_row(tmp_path):
    """Each process scans rows rank::world; the gathered error equals the one-process error, and a failed check is
    not cached."""
    dataset = _bad_ade_dataset(tmp_path)
    cache = tmp_path / "label_check.json"
    with pytest.raises(DataError) as single:
        check_split_labels(dataset, cache)
    assert "3 of 7 rows: row 1: values [151]; row 4: values [200]; row 5: values [255]" in str(single.value)
    assert not cache.exists()
    shards = [scan_labels(dataset, range(rank, len(dataset), 3)) for rank in range(3)]
    for rank in range(3):
        with pytest.raises(DataError) as sharded:
            check_split_labels(dataset, cache, rank, 3, gather=lambda _: shards)
        assert str(sharded.value) == str(single.value)


@pytest.mark.slow
def test_two_processes_check_labels_like_one(tmp_path):
    """torchrun, 2 processes: each scans half the rows, both raise the one-process error; a clean split passes and
    is cached once."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repository = Path(__file__).resolve().parent.parent
    dataset = _bad_ade_dataset(tmp_path)
    with pytest.raises(DataError) as single:
        check_split_labels(dataset)
    worker = str(repository / "tests" / "label_check_dist_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
               worker, str(tmp_path / "bad_ade"), str(tmp_path)]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(repository), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["error"] for r in results] == [str(single.value)] * 2
    assert results[0]["rows"] == [0, 2, 4, 6] and results[1]["rows"] == [1, 3, 5]
    assert [r["clean_scanned"] for r in results] == [True, True] and [r["rescanned"] for r in results] == [False] * 2


# ------------------------------------------------------------------------------------------------ streaming
def _parquet_shards(root, num_rows=10, shards=2):
    """A generic-preset training split as data/train-*.parquet shards; row i's label is filled with i % 3."""
    (root / "data").mkdir(parents=True)
    for shard in range(shards):
        rows = range(shard, num_rows, shards)
        table = {"image": [{"bytes": _jpeg(8, 8, i), "path": None} for i in rows],
                 "label": [{"bytes": _png(np.full((8, 8), i % 3, np.uint8)), "path": None} for i in rows],
                 "row": list(rows)}  # fmt: skip
        features = datasets.Features({**IMAGE_FEATURES_GENERIC, "row": datasets.Value("int64")})
        datasets.Dataset.from_dict(table, features=features).to_parquet(
            str(root / "data" / f"train-{shard:05d}-of-{shards:05d}.parquet")
        )
    return root


IMAGE_FEATURES_GENERIC = {"image": datasets.Image(), "label": datasets.Image()}


def _streamed_rows(root, rank, world_size, epoch=0, start_batch=0, batch_size=2, buffer=4):
    preset = replace(get_preset("generic", num_labels=3), crop_size=(8, 8), train_scale=(8, 8))
    stream = load_train_stream(
        preset, str(root), "train", seed=0, shuffle_buffer_size=buffer, rank=rank, world_size=world_size
    )
    sampler = StreamBatchSampler(stream, batch_size)
    sampler.set_position(epoch, start_batch)
    return stream, [[read_image(row["image"]).tobytes() for _, _, row in batch] for batch in sampler]


@pytest.mark.parametrize("world_size", [2, 3])  # whole shards per process; every third row of the shuffled stream
def test_stream_shares_rows_between_processes_and_reshuffles_each_epoch(tmp_path, world_size):
    root = _parquet_shards(tmp_path, num_rows=12)
    everything = {read_image({"bytes": _jpeg(8, 8, i), "path": None}).tobytes() for i in range(12)}
    epochs = []
    for epoch in (0, 1):
        shares = [_streamed_rows(root, rank, world_size, epoch, batch_size=1)[1] for rank in range(world_size)]
        seen = [[rows[0] for rows in share] for share in shares]
        assert sum(map(len, seen)) == 12 and set().union(*map(set, seen)) == everything  # disjoint, complete
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # another order (and, with a split by rows, other rows per process)


def test_stream_position_continues_the_same_batches(tmp_path):
    root = _parquet_shards(tmp_path, num_rows=11, shards=1)
    _, epoch = _streamed_rows(root, 0, 1, epoch=2)
    assert len(epoch) == 5 and all(len(batch) == 2 for batch in epoch)  # the 11th row: no incomplete batch
    assert _streamed_rows(root, 0, 1, epoch=2, start_batch=3)[1] == epoch[3:]


def test_stream_augmentation_is_seeded_by_epoch_rank_and_position(tmp_path):
    root = _parquet_shards(tmp_path, num_rows=4, shards=1)
    stream, _ = _streamed_rows(root, 0, 1)
    row = next(iter(stream.stream))
    stream.transform = TrainTransform((16, 8), (8, 8))
    augmentation = StreamAugmentation(stream, seed=0, rank=0)
    first, again = augmentation[(0, 5, row)], augmentation[(0, 5, row)]
    assert torch.equal(first["pixel_values"], again["pixel_values"]) and first["index"] == 5
    positions = [augmentation[(0, position, row)]["pixel_values"] for position in range(5)]
    epochs = [augmentation[(epoch, 5, row)]["pixel_values"] for epoch in range(1, 6)]
    for others in (positions, epochs):  # other draws, though a few may coincide on an 8x8 image
        assert any(not torch.equal(first["pixel_values"], other) for other in others)


def test_stream_refuses_what_it_cannot_stream(tmp_path):
    preset = get_preset("generic", num_labels=3)
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": _rows([np.zeros((4, 4), np.uint8)], "label")}).save_to_disk(str(saved))
    with pytest.raises(DataError, match="holds no parquet file .* Train without --streaming"):
        load_train_stream(preset, str(saved), "train", seed=0, shuffle_buffer_size=1, rank=0, world_size=1)
    root = _parquet_shards(tmp_path / "p", num_rows=2, shards=1)
    with pytest.raises(DataError, match=r"has no column 'annotation'; columns are \['image', 'label', 'row'\]"):
        load_train_stream(
            get_preset("generic", num_labels=3, label_column="annotation"), str(root), "train", seed=0,
            shuffle_buffer_size=1, rank=0, world_size=1,
        )  # fmt: skip
    with pytest.raises(DataError, match=r"split 'validation' not found"):
        load_train_stream(preset, str(root), "validation", seed=0, shuffle_buffer_size=1, rank=0, world_size=1)
    stream = load_train_stream(preset, str(root), "train", seed=0, shuffle_buffer_size=1, rank=0, world_size=1)
    with pytest.raises(DataError, match="fewer rows than one batch"):
        list(StreamBatchSampler(stream, 3))


# --------------------------------------------------------------------------------------------------- bad data
def _saved(tmp_path, table, features, name="bad"):
    path = tmp_path / name
    ds = datasets.Dataset.from_dict(table, features=datasets.Features(features))
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(path))
    return str(path)


IMAGE_FEATURES = {"image": datasets.Image(), "annotation": datasets.Image()}


def test_image_and_label_of_different_sizes(tmp_path):
    table = {
        "image": [{"bytes": _jpeg(8, 8, 0), "path": None}, {"bytes": _jpeg(8, 8, 1), "path": None}],
        "annotation": [{"bytes": _png(np.ones((8, 8), np.uint8)), "path": None},
                       {"bytes": _png(np.ones((8, 9), np.uint8)), "path": None}],
    }  # fmt: skip
    ds = build_dataset("ade20k", _saved(tmp_path, table, IMAGE_FEATURES))
    assert ds[0]["labels"].shape == (8, 8)
    with pytest.raises(DataError, match=r"row 1 of split 'validation'.*8x8 \(WxH\) but label 'annotation' is 9x8"):
        ds[1]


def test_label_value_outside_map(tmp_path):
    table = {"image": [{"bytes": _jpeg(4, 4, 0), "path": None}],
             "annotation": [{"bytes": _png(np.full((4, 4), 180, np.uint8)), "path": None}]}  # fmt: skip
    ds = build_dataset("ade20k", _saved(tmp_path, table, IMAGE_FEATURES))
    with pytest.raises(DataError, match=r"row 0 .*column 'annotation'.*values \[180\] are outside the ade20k range"):
        ds[0]


def test_missing_column(cityscapes_disk):
    path, _ = cityscapes_disk
    with pytest.raises(DataError, match=r"no column 'annotation'.*\['image', 'semantic_segmentation'\]"):
        build_dataset("ade20k", str(path))


def test_empty_split(tmp_path):
    empty = datasets.Dataset.from_dict({"image": [], "annotation": []}, features=datasets.Features(IMAGE_FEATURES))
    one_row = _rows(_raw_maps([1], [(4, 4)]), "annotation")
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": one_row, "validation": empty}).save_to_disk(str(saved))
    assert len(build_dataset("ade20k", str(saved), "train")) == 1
    with pytest.raises(DataError, match="split 'validation' of .*saved is empty"):
        build_dataset("ade20k", str(saved), "validation")
    (tmp_path / "parquet").mkdir()
    one_row.to_parquet(str(tmp_path / "parquet" / "train-00000-of-00001.parquet"))
    empty.to_parquet(str(tmp_path / "parquet" / "validation-00000-of-00001.parquet"))
    with pytest.raises(DataError, match="split 'validation' of .*parquet is empty"):
        build_dataset("ade20k", str(tmp_path / "parquet"), "validation")
    for folder in ("images", "annotations"):
        (tmp_path / "folders" / folder / "validation").mkdir(parents=True)
    with pytest.raises(DataError, match="split 'validation' of .*folders is empty"):
        build_dataset("ade20k", str(tmp_path / "folders"), "validation")


def test_unknown_split(cityscapes_disk):
    path, _ = cityscapes_disk
    with pytest.raises(DataError, match=r"split 'test' not found.*\['train', 'validation'\]"):
        load_split(get_preset("cityscapes"), str(path), "test")


def test_unreadable_image(tmp_path):
    table = {"image": [{"bytes": _jpeg(4, 4, 0), "path": None}, {"bytes": b"not an image", "path": None}],
             "annotation": [{"bytes": _png(np.ones((4, 4), np.uint8)), "path": None}] * 2}  # fmt: skip
    ds = build_dataset("ade20k", _saved(tmp_path, table, IMAGE_FEATURES))
    ds[0]
    with pytest.raises(DataError, match=r"row 1 of split 'validation': column 'image' cannot be read as an image"):
        ds[1]


def test_colour_coded_label_rejected(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 0] = 128  # a colour mask, not an index map
    table = {"image": [{"bytes": _jpeg(4, 4, 0), "path": None}], "annotation": [{"bytes": _png(colour), "path": None}]}
    with pytest.raises(DataError, match="colour-coded"):
        build_dataset("ade20k", _saved(tmp_path, table, IMAGE_FEATURES))[0]


def test_image_folder_with_missing_label(tmp_path):
    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    (tmp_path / "images" / "validation" / "a.jpg").write_bytes(_jpeg(4, 4, 0))
    with pytest.raises(DataError, match=r"1 images .* have no label .*\['a'\]"):
        build_dataset("ade20k", str(tmp_path))


def test_dataset_from_decoded_hf_dataset():
    # An in-memory datasets.Dataset with decoded Image features works too (cells are re-read undecoded).
    maps = _raw_maps([1, 2], [(6, 6)])
    ds = SegmentationDataset(_rows(maps, "annotation"), get_preset("ade20k"), EvalTransform())
    np.testing.assert_array_equal(ds[0]["labels"].numpy(), maps[0].astype(int) - 1)
