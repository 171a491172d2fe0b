"""Issue 23: bad recipes, evaluation folders and training data get a clear message, or a documented, tested behaviour.

`BAD_RECIPES_AND_DATA` is the regression table (same form as `BAD_INPUTS` in tests/test_bad_inputs.py): each row
builds one mistake and names the message fragment it must produce. The tests after it cover the behaviours that are
right rather than errors: negative numbers on the command line, symlinked dataset folders, classes without pixels in
the validation set, and how a training checkpoint is turned into a model that loads.
"""

import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_bad_inputs import _generic_dataset, _generic_run, _png

from modeling_segret import SegRetConfig, SegRetForSemanticSegmentation, segret_variant_config
from training import evaluation, train
from training.data import DataError, UnlabelledBatchCheck, build_dataset, get_preset
from training.publish import PublishError, read_source
from training.recipe import parse_arguments


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, fresh_accelerator_state):
    """Arrow caches inside the test's folder; each in-process run builds its own Accelerator."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


# ---------------------------------------------------------------------------------------------------- builders
def _recipe(text: str, *extra: str):
    """Parses a recipe file holding `text` (and `extra` command-line arguments)."""

    def action(tmp_path):
        (tmp_path / "recipe.yaml").write_text(text)
        parse_arguments([str(tmp_path / "recipe.yaml"), "--report_to", "none", *extra])

    return action


def _parse(*argv: str):
    return lambda tmp_path: parse_arguments(["--dataset", "synthetic", "--report_to", "none", *argv])


def _tiny_model(folder, num_labels: int = 3) -> None:
    SegRetForSemanticSegmentation(segret_variant_config("tiny", num_labels=num_labels)).save_pretrained(folder)


def _evaluate(tmp_path, *extra: str, model=None, data=None) -> dict:
    """`training/evaluation.py` on a generic 3-class dataset (by default a missing one: any check that comes after
    the dataset is loaded would fail on that instead)."""
    argv = [
        "--model", str(model or tmp_path / "model"), "--dataset", "generic", "--num_labels", "3",
        "--dataset_path", str(data or tmp_path / "no_such_data"), "--split", "validation",
        "--output_dir", str(tmp_path / "eval"), "--dataloader_num_workers", "0", "--num_overlays", "0",
        "--test_scale", "32", "24", *extra,
    ]  # fmt: skip
    return evaluation.run_evaluation(evaluation.parse_args(argv))


def _output_dir_is_a_file(tmp_path):
    (tmp_path / "eval").write_text("notes")
    _evaluate(tmp_path)


def _second_evaluation_into_one_folder(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval_results.json").write_text(json.dumps({"mIoU": 41.0}))
    _evaluate(tmp_path)


def _evaluation_under_way(tmp_path):
    evaluation.claim_output_dir(tmp_path / "eval", overwrite=False)  # the first evaluation's claim
    _evaluate(tmp_path)


def _fake_checkpoint(tmp_path):
    """What `save_checkpoint` writes (weights, optimizer, trainer state), without a config.json."""
    checkpoint = tmp_path / "run" / "checkpoint-8"
    checkpoint.mkdir(parents=True)
    save_file({"weight": torch.zeros(1)}, checkpoint / "model.safetensors")
    (checkpoint / "optimizer.bin").write_bytes(b"")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 8, "epoch": 0, "batch_in_epoch": 8}))
    return checkpoint


def _evaluate_a_checkpoint(tmp_path):
    _evaluate(tmp_path, model=_fake_checkpoint(tmp_path))


def _publish_a_checkpoint(tmp_path):
    read_source(_fake_checkpoint(tmp_path))


def _evaluate_an_unfinished_run(tmp_path):
    _fake_checkpoint(tmp_path)
    _evaluate(tmp_path, model=tmp_path / "run")


def _unlabelled_training_set(tmp_path):
    """Refused after 2 batches here (10 in a real run: `test_unlabelled_batches_are_counted_in_a_row`)."""
    ignored = _generic_dataset(4, values=(255,))
    datasets.DatasetDict({"train": ignored, "validation": _generic_dataset(2)}).save_to_disk(str(tmp_path / "data"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "UnlabelledBatchCheck", functools.partial(UnlabelledBatchCheck, limit=2))
        try:
            train.main(_generic_run(tmp_path / "data", tmp_path / "run", "--max_steps", "50"))
        finally:  # refused at once, not after 50 steps of loss 0
            assert not (tmp_path / "run" / "model.safetensors").exists()


# (id, action on a fresh tmp_path, exception, message fragment)
BAD_RECIPES_AND_DATA = [
    # recipes: a YAML error names the file, line and column
    (
        "tab-indented recipe",
        _recipe("dataset: generic\nclass_names:\n\t- road\n"),
        ValueError,
        "line 3, column 1: found character '\\t' that cannot start any token (indent with spaces, not tabs)",
    ),
    ("unclosed bracket", _recipe("crop_size: [64, 64\nmax_steps: 3\n"), ValueError, "recipe.yaml, line 2, column"),
    (
        "duplicated field",
        _recipe("max_steps: 100\nseed: 1\nmax_steps: 200\n"),
        ValueError,
        "field 'max_steps' is given twice, on lines 1 and 3; keep one",
    ),
    (
        "recipe is a list",
        _recipe("- max_steps: 100\n- seed: 1\n"),
        ValueError,
        "the recipe must be a mapping of field: value (one per line), got a list",
    ),
    ("recipe is one word", _recipe("ade20k\n"), ValueError, "must be a mapping of field: value (one per line), got a"),
    ("missing recipe file", lambda p: parse_arguments([str(p / "nowhere.yaml")]), ValueError, "cannot read the"),
    # recipes: values of the wrong type are named with the file
    (
        "num_labels 4.5",
        _recipe("dataset: generic\nnum_labels: 4.5\n"),
        ValueError,
        "recipe.yaml: num_labels must be an integer, got 4.5 (float)",
    ),
    ("num_labels 'four'", _recipe("num_labels: four\n"), ValueError, "num_labels must be an integer, got 'four'"),
    ("max_steps true", _recipe("max_steps: true\n"), ValueError, "max_steps must be an integer, got True (bool)"),
    ("learning_rate 'fast'", _recipe("learning_rate: fast\n"), ValueError, "learning_rate must be a number"),
    ("revision as a number", _recipe("dataset_revision: 1234\n"), ValueError, "must be a string (quote it)"),
    # negative numbers reach validation (argparse took "-1e-3" for an option: "expected one argument")
    ("learning_rate -1e-3", _parse("--learning_rate", "-1e-3"), ValueError, "--learning_rate must be > 0, got -0.001"),
    ("weight_decay -.5", _parse("--weight_decay", "-.5"), ValueError, "--weight_decay must be >= 0, got -0.5"),
    ("learning_rate -inf", _parse("--learning_rate", "-inf"), ValueError, "--learning_rate must be > 0, got -inf"),
    # the model's configuration checks types before it uses them
    (
        "config num_labels '4'",
        lambda p: SegRetConfig(num_labels="4"),
        ValueError,
        "num_labels must be a positive integer (the number of classes), got '4' (str)",
    ),
    ("config num_labels 0", lambda p: SegRetConfig(num_labels=0), ValueError, "num_labels must be a positive integer"),
    ("config depths 4", lambda p: SegRetConfig(depths=4), TypeError, "depths must be a list with one value per stage"),
    # evaluation: the output folder and the model are checked before the data is even loaded
    ("eval output_dir is a file", _output_dir_is_a_file, evaluation.UsageError, "is a file, not a folder"),
    (
        "second evaluation into one folder",
        _second_evaluation_into_one_folder,
        evaluation.UsageError,
        "already holds results of an evaluation. Choose another --output_dir, or pass --overwrite_output_dir",
    ),
    (
        "evaluation under way in the folder",
        _evaluation_under_way,
        evaluation.UsageError,
        "is claimed by an evaluation under way (or killed)",
    ),
    (
        "evaluate a training checkpoint",
        _evaluate_a_checkpoint,
        evaluation.UsageError,
        "checkpoint-8 is a training checkpoint (Accelerate's save_state",
    ),
    ("publish a training checkpoint", _publish_a_checkpoint, PublishError, "checkpoint-8 is a training checkpoint"),
    (
        "evaluate an unfinished run",
        _evaluate_an_unfinished_run,
        evaluation.UsageError,
        "is a training run folder without a saved model (no config.json)",
    ),
    # training data
    (
        "every training mask all ignore",
        _unlabelled_training_set,
        DataError,
        "split 'train': 2 consecutive training batches have no labelled pixel (every label is the ignore index "
        "255), rows ",
    ),
]


@pytest.mark.parametrize(
    ("action", "error", "fragment"),
    [case[1:] for case in BAD_RECIPES_AND_DATA],
    ids=[c[0] for c in BAD_RECIPES_AND_DATA],
)
def test_bad_input_gets_a_clear_message(action, error, fragment, tmp_path):
    with pytest.raises(error) as raised:
        action(tmp_path)
    assert fragment in str(raised.value), str(raised.value)


# ------------------------------------------------------------------------------------------- documented behaviour
def test_recipe_values_are_read_as_on_the_command_line(tmp_path):
    """A quoted number is converted as `--num_labels 4` is; YAML's `1e-3` (a string for YAML 1.1) is a float."""
    (tmp_path / "recipe.yaml").write_text('dataset: generic\nnum_labels: "4"\nlearning_rate: 1e-3\nseed: 3\n')
    _, data_args, args = parse_arguments([str(tmp_path / "recipe.yaml"), "--weight_decay", "-0", "--seed", "-2"])
    assert data_args.num_labels == 4 and args.learning_rate == 1e-3
    assert args.weight_decay == 0 and args.seed == -2  # negative numbers are values, not options


def test_unlabelled_batches_are_counted_in_a_row():
    """One batch without a labelled pixel (a crop of an unlabelled region) is normal: only `limit` in a row fail,
    naming the rows of those batches."""
    check = UnlabelledBatchCheck("my_data, split 'train'", limit=3)
    ignored, labelled = torch.full((2, 4, 4), 255), torch.full((2, 4, 4), 255)
    labelled[1, 2, 3] = 0
    for batch in range(6):  # 2 unlabelled, 1 labelled, repeated: never 3 in a row
        check.update(labelled if batch % 3 == 2 else ignored, torch.tensor([2 * batch, 2 * batch + 1]))
    check.update(ignored, torch.tensor([20, 21]))
    check.update(ignored, torch.tensor([22, 23]))
    with pytest.raises(DataError, match=r"my_data, split 'train': 3 consecutive .* rows 20, 21, 22, 23, 24, 25;"):
        check.update(ignored, torch.tensor([24, 25]))
    assert UnlabelledBatchCheck("x").limit == 10  # a real run's


def test_failed_evaluation_gives_its_claim_back(tmp_path):
    """The claim is removed when the evaluation fails (here at a bad label in row 1), so the next one is not
    refused."""
    _tiny_model(tmp_path / "model")
    datasets.DatasetDict({"validation": _generic_dataset(2, bad_row=1)}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match="row 1"):
        _evaluate(tmp_path, data=tmp_path / "bad")
    assert not (tmp_path / "eval" / "eval_results.json").exists()
    assert evaluation.claim_output_dir(tmp_path / "eval", overwrite=False).is_file()


def test_claim_of_a_killed_evaluation_is_taken_over(tmp_path, caplog):
    """A claim left by an evaluation that was killed (its process no longer runs on this host) does not block the
    folder: it is taken over with a warning naming it. A claim from another host is left alone."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    results = tmp_path / "eval" / "eval_results.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"in_progress": {"host": socket.gethostname(), "pid": dead_pid}}))
    with caplog.at_level(logging.WARNING):
        assert evaluation.claim_output_dir(tmp_path / "eval", overwrite=False) == results
    assert f"'pid': {dead_pid}" in caplog.text and "no longer running" in caplog.text
    assert json.loads(results.read_text())["in_progress"]["pid"] == os.getpid()
    results.write_text(json.dumps({"in_progress": {"host": "another-host", "pid": dead_pid}}))
    with pytest.raises(evaluation.UsageError, match="another-host"):
        evaluation.claim_output_dir(tmp_path / "eval", overwrite=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir_is_refused_first(tmp_path):
    (tmp_path / "eval").mkdir(mode=0o500)
    with pytest.raises(evaluation.UsageError, match="is not writable"):
        _evaluate(tmp_path)


def _folder_dataset(root, names_and_labels) -> None:
    for split in ("validation",):
        for name, label in names_and_labels:
            for kind, data in (("images", _jpeg_bytes(label.shape)), ("annotations", _png(label))):
                path = root / kind / split / f"{name}{'.jpg' if kind == 'images' else '.png'}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)


def _jpeg_bytes(shape) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((*shape, 3), np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_symlinked_sub_folders_and_files_are_followed_once(tmp_path):
    """A dataset assembled from links: 4 rows in real folders, 2 in a linked folder, 2 linked files; a link back up
    (a cycle) and a second link to the same folder add nothing."""
    label = np.zeros((8, 8), np.uint8)
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    _folder_dataset(root, [(f"real/{i}", label) for i in range(4)])
    _folder_dataset(elsewhere, [(f"linked/{i}", label) for i in range(2)] + [(f"single/{i}", label) for i in range(2)])
    for kind in ("images", "annotations"):
        split = root / kind / "validation"
        (split / "linked").symlink_to(elsewhere / kind / "validation" / "linked", target_is_directory=True)
        (split / "real" / "loop").symlink_to(split, target_is_directory=True)  # a cycle
        suffix = ".jpg" if kind == "images" else ".png"
        for i in range(2):
            (split / f"file_{i}{suffix}").symlink_to(elsewhere / kind / "validation" / "single" / f"{i}{suffix}")
    dataset = build_dataset(get_preset("generic", num_labels=3), str(root), "validation")
    files = [os.path.relpath(row["image"]["path"], root / "images" / "validation") for row in dataset.dataset]
    assert sorted(files) == ["file_0.jpg", "file_1.jpg", "linked/0.jpg", "linked/1.jpg"] + [
        f"real/{i}.jpg" for i in range(4)
    ]
    assert dataset.raw_item(len(dataset) - 1)[1].shape == (8, 8)

    (elsewhere / "images" / "validation" / "single" / "0.jpg").unlink()  # a link to nothing is named
    with pytest.raises(DataError, match="links to nothing .*file_0.jpg"):
        build_dataset(get_preset("generic", num_labels=3), str(root), "validation")


def _strict_json(path) -> dict:
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_classes_without_pixels_are_null_and_named(tmp_path, caplog):
    """Class 2 has no validation pixel: null accuracy, left out of the means, named in a warning; with every pixel
    ignored the means are null too (mmseg's nanmean over no class), never NaN in eval_results.json."""
    _tiny_model(tmp_path / "model")
    datasets.DatasetDict({"validation": _generic_dataset(2, values=(0, 1))}).save_to_disk(str(tmp_path / "some"))
    datasets.DatasetDict({"validation": _generic_dataset(2, values=(255,))}).save_to_disk(str(tmp_path / "none"))
    with caplog.at_level(logging.WARNING):
        _evaluate(tmp_path, data=tmp_path / "some")
    results = _strict_json(tmp_path / "eval" / "eval_results.json")
    per_class = {row["id"]: row for row in results["per_class"]}
    assert per_class[2]["accuracy"] is None and per_class[0]["accuracy"] is not None
    assert results["mAcc"] == pytest.approx(50 * (per_class[0]["accuracy"] + per_class[1]["accuracy"]), abs=0.01)
    assert f"1 of 3 classes have no labelled pixel in the evaluated images ({results['per_class'][2]['name']})" in (
        caplog.text
    )

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _evaluate(tmp_path, "--overwrite_output_dir", data=tmp_path / "none")
    results = _strict_json(tmp_path / "eval" / "eval_results.json")
    assert results["mIoU"] is None and results["mean_iou"] is None and results["aAcc"] is None
    assert all(row["accuracy"] is None for row in results["per_class"])
    assert "No evaluated pixel is labelled" in caplog.text


@pytest.mark.slow
def test_a_checkpoint_with_the_runs_config_loads_as_its_model(tmp_path):
    """The advice for evaluating a checkpoint (copy the run's config.json into it) gives the checkpoint's weights:
    at the last step they are the final model's."""
    datasets.DatasetDict({"train": _generic_dataset(4), "validation": _generic_dataset(2)}).save_to_disk(
        str(tmp_path / "data")
    )
    run = tmp_path / "run"
    train.main(_generic_run(tmp_path / "data", run, "--save_steps", "2"))
    checkpoint = run / "checkpoint-2"
    assert "copy config.json and preprocessor_config.json from there" in evaluation.training_folder_problem(checkpoint)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(run / name, checkpoint / name)
    assert evaluation.training_folder_problem(checkpoint) is None
    loaded = SegRetForSemanticSegmentation.from_pretrained(checkpoint)
    final = SegRetForSemanticSegmentation.from_pretrained(run)
    for (name, value), (_, expected) in zip(loaded.state_dict().items(), final.state_dict().items(), strict=True):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
