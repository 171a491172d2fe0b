"""training/train.py end to end on the synthetic scenes: evaluation, checkpoints, exact resume, recipes, crashes;
how its tools start (as scripts and as modules)."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.state import AcceleratorState
from transformers import AutoModelForSemanticSegmentation

from modeling_segret import SEGRET_VARIANTS, SegRetForSemanticSegmentation
from training import train
from training.checkpoints import find_checkpoint
from training.presets import PRESET_NAMES
from training.recipe import TrainArguments, parse_arguments
from training.synthetic import generate

REPOSITORY = Path(__file__).resolve().parent.parent
RECIPES = REPOSITORY / "configuration" / "recipes"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synthetic", num_train=24, num_validation=6)


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")  # each in-process run builds its own Accelerator


def tiny_run(scenes: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset", "synthetic", "--dataset_path", str(scenes), "--crop_size", "64", "64",
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "2", "--learning_rate", "5e-4",
        "--warmup_steps", "2", "--max_steps", "6", "--logging_steps", "1", "--save_steps", "3", "--eval_steps", "3",
        "--dataloader_num_workers", "0", "--num_overlays", "2", "--report_to", "none", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_training_end_to_end(scenes, tmp_path):
    result = train.main(tiny_run(scenes, tmp_path / "run"))
    output = tmp_path / "run"
    assert result["global_step"] == 6 and len(result["history"]) == 6
    assert all(math.isfinite(record["loss"]) for record in result["history"])

    model = AutoModelForSemanticSegmentation.from_pretrained(output)
    assert isinstance(model, SegRetForSemanticSegmentation)
    assert model.config.id2label[0] == "sky" and model.config.num_labels == 8
    assert (output / "preprocessor_config.json").is_file()
    results = json.loads((output / "eval_results.json").read_text())
    assert 0.0 <= results["mean_iou"] <= 1.0 and [row["name"] for row in results["per_class"]][:2] == [
        "sky",
        "vegetation",
    ]
    assert results["num_samples"] == 6
    assert len(list((output / "overlays").glob("*.png"))) == 2
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert json.loads((output / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6


@pytest.mark.slow
def test_interrupted_and_resumed_run_logs_identical_losses(scenes, tmp_path):
    # Persistent workers, and 4 rows: 2 batches per epoch, so the 6 steps cross two epochs and the resume starts at
    # an epoch's end. Workers kept from epoch 0 must augment epoch 1 as fresh ones do, or the losses differ.
    workers = ["--dataloader_num_workers", "2", "--max_train_samples", "4"]
    uninterrupted = train.main(tiny_run(scenes, tmp_path / "a", *workers))["history"]

    AcceleratorState._reset_state(reset_partial_state=True)
    first_part = train.main(tiny_run(scenes, tmp_path / "b", *workers, "--stop_after_steps", "4"))
    assert first_part["global_step"] == 4 and (tmp_path / "b" / "checkpoint-4").is_dir()
    assert not (tmp_path / "b" / "model.safetensors").exists()
    AcceleratorState._reset_state(reset_partial_state=True)
    second_part = train.main(tiny_run(scenes, tmp_path / "b", *workers, "--resume_from_checkpoint", "latest"))

    resumed = first_part["history"] + second_part["history"]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in uninterrupted]
    assert [r["learning_rate"] for r in resumed] == [r["learning_rate"] for r in uninterrupted]


def test_crash_during_save_keeps_the_previous_checkpoint(scenes, tmp_path, monkeypatch):
    output = tmp_path / "run"
    original_save_state = train.Accelerator.save_state

    def crash_at_step_6(self, output_dir, **kwargs):
        if output_dir.endswith("checkpoint-6"):
            Path(output_dir).mkdir(parents=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise KeyboardInterrupt("killed while saving")
        return original_save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(train.Accelerator, "save_state", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny_run(scenes, output))
    monkeypatch.undo()

    assert find_checkpoint(output, "latest") == output / "checkpoint-3"
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = train.main(tiny_run(scenes, output, "--resume_from_checkpoint", "latest"))
    assert [r["step"] for r in resumed["history"]] == [4, 5, 6]
    assert not list(output.glob(".tmp-checkpoint-*"))  # the partial save was cleared


def test_non_finite_loss_stops_with_the_step(scenes, tmp_path, monkeypatch):
    calls = {"count": 0}
    original = SegRetForSemanticSegmentation.compute_loss

    def loss_turning_nan(self, logits, labels):
        calls["count"] += 1
        loss = original(self, logits, labels)
        return loss * float("nan") if calls["count"] == 5 else loss

    monkeypatch.setattr(SegRetForSemanticSegmentation, "compute_loss", loss_turning_nan)
    with pytest.raises(FloatingPointError, match=r"Non-finite loss \(nan\) at step 5"):
        train.main(tiny_run(scenes, tmp_path / "run", "--eval_steps", "100"))  # no evaluation needed
    assert find_checkpoint(tmp_path / "run", "latest") == tmp_path / "run" / "checkpoint-3"


def test_learning_rate_schedule_is_linear_warmup_then_poly():
    args = TrainArguments(
        max_steps=100,
        warmup_steps=10,
        learning_rate=1e-4,
        warmup_start_factor=1e-6,
        poly_power=1.0,
        min_learning_rate=0.0,
    )
    factor = train.warmup_poly_schedule(args)
    assert factor(0) == pytest.approx(1e-6)
    assert factor(5) == pytest.approx((1e-6 + (1 - 1e-6) * 0.5) * 0.95)
    assert factor(10) == pytest.approx(0.9)
    assert factor(100) == 0.0


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda path: path.stem)
def test_recipes_parse_and_name_existing_presets_and_variants(recipe):
    model_args, data_args, train_args = parse_arguments([str(recipe)])
    fields = yaml.safe_load(recipe.read_text())
    assert model_args.variant in SEGRET_VARIANTS
    assert data_args.dataset in (*PRESET_NAMES, "synthetic")
    assert train_args.max_steps == fields["max_steps"]
    if recipe.stem != "demo":
        variant, dataset = recipe.stem.removeprefix("segret-").split("-", 1)
        assert model_args.variant == variant and data_args.dataset == dataset.replace("-", "_")
        global_batch = 16 if dataset in ("ade20k", "coco-stuff") else 8
        assert train_args.per_device_train_batch_size * 4 == global_batch  # for the paper's 4 GPUs
        assert train_args.max_steps == (80_000 if dataset == "coco-stuff" else 160_000)


def test_unknown_recipe_field_is_an_error(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("variant: tiny\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown fields \['learning_rat'\]"):
        parse_arguments([str(recipe)])


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(scenes, tmp_path):
    """torchrun with 2 CPU processes (gloo): the gathered metric equals a single-process evaluation."""
    output = tmp_path / "ddp"
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        str(REPOSITORY / "training" / "train.py"),
        *tiny_run(scenes, output, "--max_steps", "4"),
    ]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    distributed = json.loads((output / "eval_results.json").read_text())
    assert distributed["num_samples"] == 6

    single = tmp_path / "single"
    command = [
        sys.executable,
        str(REPOSITORY / "training" / "evaluation.py"),
        "--model",
        str(output),
        "--dataset",
        "synthetic",
        "--dataset_path",
        str(scenes),
        "--mode",
        "ss",
        "--output_dir",
        str(single),
    ]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    reference = json.loads((single / "eval_results.json").read_text())
    assert reference["num_samples"] == 6
    assert distributed["mean_iou"] == reference["mean_iou"]
    assert distributed["per_class"] == reference["per_class"]


@pytest.mark.slow
def test_demo_learns_far_above_the_majority_baseline(tmp_path):
    """A shortened demo run: SegRet-Tiny from scratch must clearly learn the synthetic scenes."""
    recipe = str(RECIPES / "demo.yaml")
    data = generate(tmp_path / "synthetic", num_train=200, num_validation=30)
    result = train.main(
        [
            recipe,
            "--dataset_path",
            str(data),
            "--output_dir",
            str(tmp_path / "demo"),
            "--max_steps",
            "150",
            "--eval_steps",
            "1000",
            "--save_steps",
            "1000",
            "--num_overlays",
            "0",
            "--report_to",
            "none",
            "--crop_size",
            "96",
            "96",
        ]
    )
    # Predicting the most frequent class everywhere scores about 0.04 mIoU on these scenes.
    assert result["eval"]["mean_iou"] > 0.25, result["eval"]["mean_iou"]


# ------------------------------------------------------------------------------------------------ streaming
def parquet_scenes(root: Path, num_train: int = 8, num_validation: int = 4, train_shards: int = 2) -> Path:
    """The synthetic scenes as Hub-style parquet shards: data/train-0000i-of-0000N.parquet, data/validation-..."""
    import datasets

    saved = datasets.load_from_disk(str(generate(root / "saved", num_train=num_train, num_validation=num_validation)))
    (root / "parquet" / "data").mkdir(parents=True)
    for split, shards in (("train", train_shards), ("validation", 1)):
        for index in range(shards):
            shard = saved[split].shard(shards, index, contiguous=True)
            shard.to_parquet(str(root / "parquet" / "data" / f"{split}-{index:05d}-of-{shards:05d}.parquet"))
    return root / "parquet"


@pytest.fixture(scope="module")
def streamed_scenes(tmp_path_factory) -> Path:
    return parquet_scenes(tmp_path_factory.mktemp("streamed"))


@pytest.mark.slow
def test_streaming_resume_mid_epoch_logs_identical_losses(streamed_scenes, tmp_path):
    """8 rows, batches of 2: 4 batches an epoch. Stopped at step 5 (epoch 1, one batch in) and resumed, the run logs
    the losses of an uninterrupted one; DataLoader workers do not change the order."""
    streaming = ("--streaming", "--shuffle_buffer_size", "3", "--eval_steps", "100", "--num_overlays", "0")
    uninterrupted = train.main(tiny_run(streamed_scenes, tmp_path / "a", *streaming))["history"]

    AcceleratorState._reset_state(reset_partial_state=True)
    workers = ("--dataloader_num_workers", "2")
    first = train.main(tiny_run(streamed_scenes, tmp_path / "b", *streaming, *workers, "--stop_after_steps", "5"))
    state = json.loads((tmp_path / "b" / "checkpoint-5" / "rank_state_0.json").read_text())
    assert state == {"epoch": 1, "batch_in_epoch": 1}
    AcceleratorState._reset_state(reset_partial_state=True)
    second = train.main(tiny_run(streamed_scenes, tmp_path / "b", *streaming, "--resume_from_checkpoint", "latest"))

    resumed = first["history"] + second["history"]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in uninterrupted]
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match="written by a run with --streaming; resume it with --streaming"):
        train.main(tiny_run(streamed_scenes, tmp_path / "b", "--resume_from_checkpoint", "latest", "--max_steps", "7",
                            "--ignore_run_mismatch"))  # fmt: skip


@pytest.mark.slow
def test_two_processes_stream_disjoint_shares_of_all_rows(streamed_scenes, tmp_path):
    """torchrun, 2 CPU processes, 2 parquet shards of 4 rows, batches of 2: steps 1-2 are one epoch, in which the
    processes augment different rows and together every row; then each continues into epoch 1 from its own
    position, and the run evaluates."""
    import datasets

    output = tmp_path / "ddp"
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
        str(REPOSITORY / "tests" / "streaming_dist_worker.py"), str(tmp_path),
        *tiny_run(streamed_scenes, output, "--streaming", "--max_steps", "3", "--save_steps", "2", "--eval_steps",
                  "100", "--num_overlays", "0"),
    ]  # fmt: skip
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    rows = [json.loads((tmp_path / f"rows_{rank}.json").read_text()) for rank in range(2)]
    train_rows = datasets.load_dataset(str(streamed_scenes), split="train").cast_column(
        "image", datasets.Image(decode=False)
    )
    everything = sorted(hashlib.sha256(cell["bytes"]).hexdigest() for cell in train_rows["image"])
    first_epoch = [share[:4] for share in rows]  # 2 steps of 2 rows
    assert not set(first_epoch[0]) & set(first_epoch[1])
    assert sorted(first_epoch[0] + first_epoch[1]) == everything
    assert [len(share) for share in rows] == [6, 6]
    states = [json.loads((output / "checkpoint-2" / f"rank_state_{rank}.json").read_text()) for rank in range(2)]
    assert states == [{"epoch": 0, "batch_in_epoch": 2}] * 2
    assert json.loads((output / "eval_results.json").read_text())["num_samples"] == 4


def test_streaming_recipe_needs_no_length_or_random_access():
    with pytest.raises(ValueError) as error:
        parse_arguments(["--streaming", "--dataset", "generic", "--num_labels", "3", "--crop_size", "64",
                         "--max_train_samples", "10", "--shuffle_buffer_size", "0"])  # fmt: skip
    message = str(error.value)
    assert "--shuffle_buffer_size must be at least 1, got 0" in message
    assert "--max_train_samples needs a map-style dataset" in message
    assert "--streaming with --dataset generic needs --train_scale, --test_scale" in message
    parse_arguments(["--streaming", "--dataset", "generic", "--num_labels", "3", "--crop_size", "64",
                     "--train_scale", "128", "64", "--test_scale", "128", "64"])  # fmt: skip
