"""Issue 13: every bad input gets a clear message (or a documented safe behaviour), and no run loses its work.

`BAD_INPUTS` is the regression table: each row builds one mistake a user makes and names the message fragment it
must produce. The tests after it cover what needs a training run: checkpoints that are incomplete, corrupt or killed
while being written, resuming with another recipe, and who owns an output folder.
"""

import io
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from transformers.image_utils import load_image

from modeling_segret import SegRetForSemanticSegmentation, SegRetImageProcessor, segret_variant_config
from modeling_segret.convert_rmt_checkpoint import convert_checkpoint
from modeling_segret.convert_rmt_checkpoint import main as convert_main
from training import train
from training.checkpoints import (
    check_run_identity,
    checkpoint_problem,
    find_checkpoint,
    list_checkpoints,
    save_checkpoint,
)
from training.data import DataError, build_dataset, get_preset, load_split, read_image
from training.recipe import (
    ModelArguments,
    TrainArguments,
    parse_arguments,
    resolve_preset,
    run_identity,
    scales_from_data,
)
from training.run_folder import LOCK_FILE, LOSS_LOG, RUN_FILE, TRAIN_LOG, OutputDirLock
from training.synthetic import generate

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, fresh_accelerator_state):
    """Arrow caches inside the test's folder; each in-process run builds its own Accelerator."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


# ---------------------------------------------------------------------------------------------------- builders
def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(height: int, width: int, seed: int = 0, orientation: int | None = None) -> bytes:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def _generic_dataset(num_rows: int, shape=(24, 32), values=(0, 1, 2), bad_row: int | None = None) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    labels = [rng.choice(np.asarray(values, np.uint8), size=shape) for _ in range(num_rows)]
    if bad_row is not None:
        labels[bad_row][0, 0] = 9
    table = {
        "image": [{"bytes": _jpeg(*shape, seed=i), "path": None} for i in range(num_rows)],
        "label": [{"bytes": _png(label), "path": None} for label in labels],
    }
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict(table, features=features)


def _generic_run(source: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset", "generic", "--num_labels", "3", "--dataset_path", str(source), "--crop_size", "32",
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "2", "--max_steps", "2",
        "--dataloader_num_workers", "0", "--report_to", "none", *extra,
    ]  # fmt: skip


def _arguments(*extra: str) -> list[str]:
    return ["--dataset", "synthetic", "--output_dir", "unused", "--report_to", "none", *extra]


def _parse(*extra: str):
    return lambda tmp_path: parse_arguments(_arguments(*extra))


def _single_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "all.parquet"
    _generic_dataset(4).to_parquet(str(path))
    return path


def _train_on_single_parquet(tmp_path):
    train.main(_generic_run(_single_parquet(tmp_path), tmp_path / "run"))


def _train_on_single_saved_split(tmp_path):
    _generic_dataset(4).save_to_disk(str(tmp_path / "one_split"))
    train.main(_generic_run(tmp_path / "one_split", tmp_path / "run"))


def _empty_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    _generic_dataset(1).select([]).to_parquet(str(path))
    load_split(get_preset("generic", num_labels=3), str(path), "train")


def _bad_validation_label(tmp_path):
    data = datasets.DatasetDict({"train": _generic_dataset(4), "validation": _generic_dataset(3, bad_row=2)})
    data.save_to_disk(str(tmp_path / "data"))
    try:
        train.main(_generic_run(tmp_path / "data", tmp_path / "run"))
    finally:  # found before training: nothing was trained, so nothing was lost
        assert not list((tmp_path / "run").glob("checkpoint-*"))


def _corrupt_image_file(tmp_path):
    for split in ("train", "validation"):
        (tmp_path / "data" / "images" / split).mkdir(parents=True)
        (tmp_path / "data" / "annotations" / split).mkdir(parents=True)
    (tmp_path / "data" / "images" / "validation" / "photo_07.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "data" / "annotations" / "validation" / "photo_07.png").write_bytes(_png(np.zeros((4, 4), np.uint8)))
    build_dataset(get_preset("generic", num_labels=3), str(tmp_path / "data"), "validation")[0]


def _other_number_of_classes(tmp_path):
    SegRetForSemanticSegmentation(segret_variant_config("tiny", num_labels=5)).save_pretrained(tmp_path / "model")
    _generic_dataset(2).save_to_disk(str(tmp_path / "data"))
    train.main(_generic_run(tmp_path / "data", tmp_path / "run", "--model_name_or_path", str(tmp_path / "model")))


def _live_lock(tmp_path):
    (tmp_path / "run").mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "started": "earlier"}
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(holder))
    train.main(_arguments("--output_dir", str(tmp_path / "run")))


def _fresh_run_over_checkpoints(tmp_path):
    (tmp_path / "run" / "checkpoint-20").mkdir(parents=True)
    train.main(_arguments("--output_dir", str(tmp_path / "run")))


def _processor(image) -> None:
    SegRetImageProcessor()(image)


def _nan_pixel(tmp_path):
    image = np.full((16, 16, 3), 100.0, np.float32)
    image[3, 4, 1] = np.nan
    _processor(image)


def _inf_pixel(tmp_path):
    _processor(torch.full((3, 16, 16), float("inf")))


def _bf16_into_fp32_model(tmp_path):
    model = SegRetForSemanticSegmentation(segret_variant_config("tiny", num_labels=2)).eval()
    model(pixel_values=torch.zeros(1, 3, 32, 32, dtype=torch.bfloat16))


def _convert(tmp_path, *extra: str):
    (tmp_path / "rmt.pth").write_bytes(b"")
    convert_main(["--checkpoint", str(tmp_path / "rmt.pth"), "--variant", "tiny", "--output_dir", str(tmp_path / "out"),
                  *extra])  # fmt: skip


def _convert_into_non_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    convert_checkpoint(tmp_path / "rmt.pth", "tiny", 3, tmp_path / "out")


# (id, action on a fresh tmp_path, exception, message fragment)
BAD_INPUTS = [
    # arguments: checked before any data or model work
    ("max_steps=0", _parse("--max_steps", "0"), ValueError, "--max_steps must be at least 1"),
    ("save_steps=0", _parse("--save_steps", "0"), ValueError, "--save_steps must be at least 1"),
    ("logging_steps=0", _parse("--logging_steps", "0"), ValueError, "--logging_steps must be at least 1"),
    ("eval_steps=0", _parse("--eval_steps", "0"), ValueError, "--eval_steps must be at least 1"),
    ("batch=0", _parse("--per_device_train_batch_size", "0"), ValueError, "--per_device_train_batch_size must be"),
    ("accumulation=0", _parse("--gradient_accumulation_steps", "0"), ValueError, "--gradient_accumulation_steps"),
    ("lr=0", _parse("--learning_rate", "0"), ValueError, "--learning_rate must be > 0"),
    ("lr=nan", _parse("--learning_rate", "nan"), ValueError, "--learning_rate must be > 0"),
    ("warmup=-5", _parse("--warmup_steps", "-5"), ValueError, "--warmup_steps must be >= 0"),
    ("save_total_limit=0", _parse("--save_total_limit", "0"), ValueError, "a run must keep a checkpoint"),
    ("stop_after=0", _parse("--stop_after_steps", "0"), ValueError, "--stop_after_steps must be at least 1"),
    ("min_lr>lr", _parse("--min_learning_rate", "1"), ValueError, "--min_learning_rate must be in"),
    ("crop 3 numbers", _parse("--crop_size", "64", "64", "64"), ValueError, "--crop_size must be two positive"),
    ("crop 0", _parse("--crop_size", "0"), ValueError, "--crop_size must be two positive"),
    ("scalar train_scale", _parse("--train_scale", "512"), ValueError, "--train_scale must be two positive"),
    (
        "reduce_labels on ade20k",
        _parse("--dataset", "ade20k", "--reduce_labels", "true"),
        ValueError,
        "--reduce_labels applies only to --dataset generic",
    ),
    (
        "num_labels on cityscapes",
        _parse("--dataset", "cityscapes", "--num_labels", "3"),
        ValueError,
        "--num_labels applies only to --dataset generic",
    ),
    ("unknown variant", _parse("--variant", "huge"), ValueError, "--variant must be one of"),
    ("unknown preset", _parse("--dataset", "pascal"), ValueError, "--dataset must be one of"),
    ("eval_mode", _parse("--eval_mode", "tta"), ValueError, "--eval_mode must be ss, slide or ms"),
    ("mixed_precision", _parse("--mixed_precision", "fp32"), ValueError, "--mixed_precision must be"),
    (
        "resume from a missing folder",
        _parse("--resume_from_checkpoint", "/no/such/checkpoint-4"),
        ValueError,
        "no such folder (use 'latest'",
    ),
    (
        "duplicate class names",
        _parse("--dataset", "generic", "--class_names", "a", "a"),
        ValueError,
        "class names must be distinct",
    ),
    (
        "several problems at once",
        _parse("--max_steps", "0", "--learning_rate", "0"),
        ValueError,
        "--max_steps must be at least 1, got 0\n- --learning_rate must be > 0",
    ),
    # data
    ("single parquet file for both splits", _train_on_single_parquet, DataError, "single parquet file"),
    ("single saved split for both splits", _train_on_single_saved_split, DataError, "--eval_dataset_path"),
    ("empty parquet file", _empty_parquet, DataError, "empty (a parquet file with 0 rows)"),
    ("validation label out of range", _bad_validation_label, DataError, "row 2: values [9]"),
    ("unreadable image names its file", _corrupt_image_file, DataError, "photo_07.jpg"),
    ("fine-tuning on other classes", _other_number_of_classes, ValueError, "--ignore_mismatched_sizes"),
    # output folder
    ("output folder in use", _live_lock, RuntimeError, "in use by another training run"),
    ("new run over another run's checkpoints", _fresh_run_over_checkpoints, ValueError, "--overwrite_output_dir"),
    # image processor and model
    ("NaN pixel", _nan_pixel, ValueError, "1 non-finite values"),
    ("inf pixels", _inf_pixel, ValueError, "non-finite values"),
    ("bf16 input, fp32 model", _bf16_into_fp32_model, ValueError, "cast the input"),
    # converter
    ("converter --num_labels 0", lambda p: _convert(p, "--num_labels", "0"), SystemExit, "--num_labels must be"),
    (
        "converter missing checkpoint",
        lambda p: _convert(p, "--num_labels", "3", "--checkpoint", "/no.pth"),
        SystemExit,
        "no such file",
    ),
    ("converter non-empty output", _convert_into_non_empty_folder, FileExistsError, "pass --overwrite"),
]


@pytest.mark.parametrize(
    ("action", "error", "fragment"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_a_clear_message(action, error, fragment, tmp_path, capsys):
    with pytest.raises(error) as raised:
        action(tmp_path)
    message = str(raised.value) + (capsys.readouterr().err if error is SystemExit else "")
    assert fragment in message, message


# ------------------------------------------------------------------------------------------- documented behaviour
def test_scalar_crop_size_means_a_square_and_class_names_name_the_classes(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("dataset: generic\ncrop_size: 64\nclass_names: [road, car]\n")
    _, data_args, _ = parse_arguments([str(recipe), "--report_to", "none"])
    assert data_args.crop_size == (64, 64)
    assert resolve_preset(data_args).class_names == ("road", "car")
    _, data_args, _ = parse_arguments(_arguments("--dataset", "generic", "--class_names", "road,car,sky"))
    assert resolve_preset(data_args).id2label == {0: "road", 1: "car", 2: "sky"}


def test_generic_scales_come_from_the_data(tmp_path):
    _generic_dataset(3, shape=(90, 120)).save_to_disk(str(tmp_path / "data"))
    _, data_args, _ = parse_arguments(_arguments("--dataset", "generic", "--num_labels", "3"))
    preset = resolve_preset(data_args)
    dataset = build_dataset(preset, str(tmp_path / "data"), "train", train=True)
    derived = scales_from_data(preset, dataset, data_args)
    assert derived.train_scale == derived.test_scale == (120, 90) and derived.crop_size == (64, 64)
    _, data_args, _ = parse_arguments(
        _arguments("--dataset", "generic", "--num_labels", "3", "--crop_size", "48", "--test_scale", "200", "100")
    )
    asked = scales_from_data(resolve_preset(data_args), dataset, data_args)
    assert asked.crop_size == (48, 48) and asked.test_scale == (200, 100) and asked.train_scale == (120, 90)


def test_mistyped_output_dir_and_derived_scales_are_said_on_the_console_and_in_the_log(tmp_path, capsys):
    """`--resume_from_checkpoint latest` in a folder without checkpoints (a mistyped --output_dir) starts afresh and
    says so; the generic preset's scales derived from the data are named; `main` leaves logging as it found it."""
    splits = datasets.DatasetDict({"train": _generic_dataset(4), "validation": _generic_dataset(2)})
    splits.save_to_disk(str(tmp_path / "data"))
    output_dir = tmp_path / "mistyped"
    root = logging.getLogger()
    level = root.level
    train.main(_generic_run(tmp_path / "data", output_dir, "--resume_from_checkpoint", "latest"))
    console, log = capsys.readouterr().err, (output_dir / TRAIN_LOG).read_text()
    for text in (console, log):
        assert f"No checkpoint in {output_dir}: starting from scratch" in text
        assert "generic preset: train_scale=(32, 24), test_scale=(32, 24) derived from the median size" in text
        assert "--crop_size/--train_scale/--test_scale to choose others" in text
    assert root.level == level
    assert not [h for h in root.handlers if getattr(h, "baseFilename", "").endswith(TRAIN_LOG)]


def test_resume_latest_over_another_runs_checkpoints_explains_why(reference, scenes, tmp_path):
    run = _copy_run(reference[0], tmp_path / "run")
    (run / RUN_FILE).write_text(json.dumps({"run_id": "another-run"}))
    message = (
        r"No checkpoint of this run in .* \(checkpoint-3: complete, but of another run than run.json names; "
        r"checkpoint-6: complete, .*\)\. To continue from another run's checkpoint, name its folder"
    )
    with pytest.raises(RuntimeError, match=message):
        train.main(_tiny_run(scenes, run, "--resume_from_checkpoint", "latest"))


def test_exif_rotated_photo_is_read_upright_everywhere(tmp_path):
    """Orientation 6 (rotate 90 degrees clockwise): stored 40x24 (WxH), displayed 24x40, its mask drawn 24x40."""
    photo = _jpeg(24, 40, orientation=6)
    mask = np.zeros((40, 24), np.uint8)
    for split in ("validation",):
        (tmp_path / "data" / "images" / split).mkdir(parents=True)
        (tmp_path / "data" / "annotations" / split).mkdir(parents=True)
        (tmp_path / "data" / "images" / split / "phone.jpg").write_bytes(photo)
        (tmp_path / "data" / "annotations" / split / "phone.png").write_bytes(_png(mask))
    dataset = build_dataset(get_preset("generic", num_labels=3), str(tmp_path / "data"), "validation")
    image, label = dataset.raw_item(0)  # the size check passes: both are upright
    upright = np.asarray(load_image(str(tmp_path / "data" / "images" / "validation" / "phone.jpg")))
    assert image.shape == (40, 24, 3) and label.shape == (40, 24)
    np.testing.assert_array_equal(image, upright)  # as transformers' pipeline reads it

    processor = SegRetImageProcessor(do_resize=False, do_normalize=False, do_rescale=False)
    from_file = processor(Image.open(io.BytesIO(photo)), segmentation_maps=Image.fromarray(mask), return_tensors="np")
    from_pipeline_image = processor(load_image(str(tmp_path / "data" / "images" / "validation" / "phone.jpg")))
    assert from_file["pixel_values"].shape == (1, 3, 40, 24) and from_file["labels"].shape == (1, 40, 24)
    np.testing.assert_array_equal(from_file["pixel_values"][0], from_pipeline_image["pixel_values"][0])


def test_sixteen_bit_png_is_read_on_one_scale(tmp_path):
    samples = (np.arange(48).reshape(6, 8) * 1365).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(_png(samples))
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    expected = np.round(samples / 257).astype(np.uint8)
    from_data = read_image(str(tmp_path / "deep.png"))
    processor = SegRetImageProcessor(do_resize=False, do_normalize=False, do_rescale=False)
    from_processor = processor(Image.open(tmp_path / "deep.png"), return_tensors="np")["pixel_values"][0]
    for channel in range(3):
        np.testing.assert_array_equal(from_data[..., channel], expected)
        np.testing.assert_array_equal(from_processor[channel], expected)


def test_converter_overwrite_replaces_a_non_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model-00001-of-00002.safetensors").write_bytes(b"another model")
    weights = {"x": torch.zeros(1)}  # the converter rejects it: nothing may have been deleted before that
    torch.save(weights, tmp_path / "rmt.pth")
    with pytest.raises(Exception, match="does not match"):
        convert_checkpoint(tmp_path / "rmt.pth", "tiny", 3, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "model-00001-of-00002.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synthetic", num_train=16, num_validation=2)


def _tiny_run(scenes: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset", "synthetic", "--dataset_path", str(scenes), "--crop_size", "64",
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "2", "--learning_rate", "5e-4",
        "--warmup_steps", "2", "--max_steps", "6", "--logging_steps", "1", "--save_steps", "3", "--eval_steps", "100",
        "--save_total_limit", "3", "--dataloader_num_workers", "0", "--num_overlays", "0", "--report_to", "none",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory) -> tuple[Path, list[dict]]:
    """An uninterrupted 6-step run: checkpoints 3 and 6, its loss history."""
    output = tmp_path_factory.mktemp("reference") / "run"
    history = train.main(_tiny_run(scenes, output))["history"]
    AcceleratorState._reset_state(reset_partial_state=True)
    return output, history


def _copy_run(reference_dir: Path, destination: Path) -> Path:
    """The reference run's checkpoints and run file, as a run interrupted after step 6 would leave them."""
    destination.mkdir(parents=True)
    for checkpoint in reference_dir.glob("checkpoint-*"):
        shutil.copytree(checkpoint, destination / checkpoint.name)
    shutil.copy2(reference_dir / RUN_FILE, destination / RUN_FILE)
    return destination


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = [
    ("corrupt trainer_state.json", lambda c: (c / "trainer_state.json").write_text("{"), "unreadable"),
    ("trainer_state.json without step", lambda c: (c / "trainer_state.json").write_text("{}"), "lacks global_step"),
    ("missing optimizer.bin", lambda c: (c / "optimizer.bin").unlink(), "optimizer.bin is missing"),
    ("truncated model.safetensors", lambda c: _truncate(c / "model.safetensors"), "model.safetensors has"),
    ("truncated RNG state", lambda c: _truncate(c / "random_states_0.pkl"), "random_states_0.pkl has"),
    ("flipped byte in the scheduler", lambda c: _flip_last_data_byte(c / "scheduler.bin"), "scheduler.bin is corrupt"),
]


def _flip_last_data_byte(path: Path) -> None:
    """Flips one stored byte of the archive's largest member (torch stores them uncompressed), as bit rot would."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    header = info.header_offset  # local header: 30 bytes, then the name and the extra field, then the data
    name_length, extra_length = struct.unpack("<HH", data[header + 26 : header + 30])
    data[header + 30 + name_length + extra_length] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "fragment"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damaged_newest_checkpoint_is_explained_and_skipped(reference, tmp_path, damage, fragment, caplog):
    run = _copy_run(reference[0], tmp_path / "run")
    damage(run / "checkpoint-6")
    assert fragment in checkpoint_problem(run / "checkpoint-6")
    assert checkpoint_problem(run / "checkpoint-3") is None
    with caplog.at_level(logging.WARNING):
        assert find_checkpoint(run, "latest") == run / "checkpoint-3"
    assert "checkpoint-6 is incomplete or corrupt" in caplog.text and "falling back" in caplog.text
    with pytest.raises(FileNotFoundError, match=fragment):
        find_checkpoint(run, str(run / "checkpoint-6"))


def test_resume_falls_back_to_the_previous_checkpoint_exactly(reference, scenes, tmp_path):
    run = _copy_run(reference[0], tmp_path / "run")
    _truncate(run / "checkpoint-6" / "model.safetensors")
    (run / ".deleting-checkpoint-9-0000").mkdir()  # a prune cut short by a kill: never taken for a checkpoint
    resumed = train.main(_tiny_run(scenes, run, "--resume_from_checkpoint", "latest"))["history"]
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference[1][3:]]
    assert not list(run.glob(".deleting-*"))


@pytest.mark.slow
def test_kill_while_a_checkpoint_is_written_loses_nothing(reference, scenes, tmp_path):
    """SIGKILL in the middle of writing checkpoint-6: resuming continues from checkpoint-3, exactly."""
    run = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from training import train

        original = train.Accelerator.save_state

        def save_then_die(self, output_dir, **kwargs):
            result = original(self, output_dir, **kwargs)
            if output_dir.endswith("checkpoint-6"):
                optimizer = Path(output_dir) / "optimizer.bin"
                optimizer.write_bytes(optimizer.read_bytes()[:100])  # the write was cut short ...
                os.kill(os.getpid(), signal.SIGKILL)  # ... by kill -9
            return result

        train.Accelerator.save_state = save_then_die
        train.main({_tiny_run(scenes, run)!r})
        """
    )
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    killed = subprocess.run([sys.executable, "-c", script], env=environment, cwd=tmp_path, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert (run / ".tmp-checkpoint-6").is_dir() and not (run / "checkpoint-6").exists()
    assert (run / LOCK_FILE).is_file()  # left by the killed process: stale, recognised below
    logged = [json.loads(line)["step"] for line in (run / LOSS_LOG).read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]  # the loss log was written as the run went
    assert "Checkpoint saved to" in (run / TRAIN_LOG).read_text()

    resumed = train.main(_tiny_run(scenes, run, "--resume_from_checkpoint", "latest"))["history"]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference[1][3:]]
    log = [json.loads(line) for line in (run / LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # each step once: the killed run's 4..6 were replaced
    assert [r["loss"] for r in log] == [r["loss"] for r in reference[1]]
    assert not (run / LOCK_FILE).exists() and (run / "model.safetensors").is_file()
    assert "Removing the stale lock" in (run / TRAIN_LOG).read_text()


def test_resume_with_another_recipe_is_refused_unless_asked(reference, scenes, tmp_path, caplog):
    run = _copy_run(reference[0], tmp_path / "run")
    with pytest.raises(ValueError, match=r"learning_rate: 0.0005 in the checkpoint, 0.001 now(.|\n)*--ignore_run"):
        train.main(_tiny_run(scenes, run, "--resume_from_checkpoint", "latest", "--learning_rate", "1e-3"))
    identity = run_identity(
        ModelArguments(), TrainArguments(per_device_train_batch_size=4, learning_rate=5e-4,
                                                     max_steps=6, warmup_steps=2),
        get_preset("synthetic"), num_processes=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="per_device_train_batch_size: 2 in the checkpoint, 4 now"):
        check_run_identity(run / "checkpoint-3", identity, ignore=False)
    with caplog.at_level(logging.WARNING):
        check_run_identity(run / "checkpoint-3", identity, ignore=True)
    assert "continuing with the new values" in caplog.text


class _OneProcess:
    """The few Accelerator members save_checkpoint uses, writing a tiny state file."""

    is_main_process, num_processes = True, 1

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, output_dir: str) -> None:
        Path(output_dir).mkdir(parents=True)
        torch.save({"step": 0}, Path(output_dir) / "optimizer.bin")


def test_pruning_touches_only_this_runs_checkpoints(tmp_path):
    for step in (20, 24):  # another run's
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"run_id": "other"}))
    run = {"run_id": "mine", "identity": {}}
    for step in (4, 8, 12):
        save_checkpoint(_OneProcess(), tmp_path, step, 0, step, limit=2, run=run)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-12", "checkpoint-20", "checkpoint-24", "checkpoint-8",
    ]  # fmt: skip
    assert not list(tmp_path.glob(".deleting-*")) and not list(tmp_path.glob(".tmp-*"))
    (tmp_path / RUN_FILE).write_text(json.dumps(run))
    assert list_checkpoints(tmp_path, "mine")[-1][1].name == "checkpoint-12"


def test_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    lock = OutputDirLock(tmp_path)
    assert "stale lock" in lock.acquire() and json.loads(lock_file.read_text())["pid"] == os.getpid()
    with pytest.raises(RuntimeError, match="in use by another training run"):
        OutputDirLock(tmp_path).acquire()
    lock.release()
    assert not lock_file.exists()
