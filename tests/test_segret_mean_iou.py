"""The `evaluate` module segret_mean_iou: equal to `mean_iou` (a reference written from its documentation), equal to
the training metric, loadable from the repository and from a published copy, and a `compute_metrics` for Trainer."""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from conftest import small_config
from PIL import Image
from transformers import Trainer, TrainingArguments

from modeling_segret import SegRetForSemanticSegmentation
from segret_mean_iou.segret_mean_iou import SegmentationMetric, class_maps
from tests.mean_iou_reference import reference_mean_iou
from tests.metric_samples import make_samples

MODULE_DIR = Path(__file__).resolve().parents[1] / "segret_mean_iou"
SPACE_FILES = ["README.md", "app.py", "requirements.txt", "segret_mean_iou.py"]
RESULT_KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")

# The example of mean_iou's card, with the results printed there.
CARD_PREDICTIONS = [np.array([[1, 2], [3, 4], [5, 255]]), np.array([[2, 7], [9, 2], [3, 6]]),
                    np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]])]  # fmt: skip
CARD_REFERENCES = [np.array([[0, 3], [5, 4], [6, 255]]), np.array([[1, 7], [9, 2], [3, 6]]),
                   np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]])]  # fmt: skip
CARD_RESULTS = {
    "mean_iou": 0.47750000000000004,
    "mean_accuracy": 0.5916666666666666,
    "overall_accuracy": 0.5263157894736842,
    "per_category_iou": [0.0, 0.0, 0.375, 0.4, 0.5, 0.0, 0.5, 1.0, 1.0, 1.0],
    "per_category_accuracy": [0.0, 0.0, 0.75, 2 / 3, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0],
}


@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    os.environ.setdefault("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("modules")))
    return evaluate.load(str(MODULE_DIR))


def assert_same(results, expected):
    for key in RESULT_KEYS:
        np.testing.assert_array_equal(results[key], expected[key], err_msg=key)  # exact; NaN equals NaN


def test_card_example(metric):
    results = metric.compute(
        predictions=CARD_PREDICTIONS, references=CARD_REFERENCES, num_labels=10, ignore_index=255, reduce_labels=False
    )
    assert_same(results, CARD_RESULTS)
    assert results["num_samples"] == 3
    assert_same(results, reference_mean_iou(CARD_PREDICTIONS, CARD_REFERENCES, 10, 255))


@pytest.mark.parametrize(
    "num_labels, options",
    [
        (3, {}),
        (19, {"nan_to_num": 0}),
        (150, {}),
        (150, {"reduce_labels": True}),  # values 1..150 -> 0..149, 0 -> ignored
        (6, {"label_map": {0: 5, 5: 0, 255: 255}, "nan_to_num": -1}),  # a swap: both read the original labels
    ],
)
def test_equals_mean_iou_reference(metric, num_labels, options):
    samples = make_samples(6, num_labels)
    if options.get("reduce_labels"):  # labels 1..K and 0 (reduced to ignore), as ADE20K's raw annotations
        samples = [(pred, torch.where(target == 255, 0, target + 1)) for pred, target in samples]
    predictions = [pred.numpy().astype(np.uint8) for pred, _ in samples]
    references = [target.numpy().astype(np.uint8) for _, target in samples]
    expected = reference_mean_iou(predictions, references, num_labels, 255, **options)
    # Fed every way add/add_batch take maps: arrays one by one, tensors, PIL images, nested lists.
    metric.add(prediction=predictions[0], reference=references[0])
    metric.add_batch(predictions=[torch.from_numpy(p) for p in predictions[1:3]],
                     references=[torch.from_numpy(r) for r in references[1:3]])  # fmt: skip
    metric.add_batch(predictions=[Image.fromarray(predictions[3])], references=[Image.fromarray(references[3])])
    metric.add_batch(predictions=[predictions[4].tolist()], references=[references[4].tolist()])
    results = metric.compute(predictions=predictions[5:], references=references[5:], num_labels=num_labels,
                             ignore_index=255, **options)  # fmt: skip
    assert_same(results, expected)
    assert results["num_samples"] == 6
    # The state was reset: the same maps again give the same numbers.
    assert_same(metric.compute(predictions=predictions, references=references, num_labels=num_labels,
                               ignore_index=255, **options), expected)  # fmt: skip


def test_batches_and_the_training_metric_agree(metric):
    samples = [(p[:17, :23], t[:17, :23]) for p, t in make_samples(4, 7)]
    batch_pred, batch_target = torch.stack([p for p, _ in samples]), torch.stack([t for _, t in samples])
    metric.add_batch(predictions=batch_pred, references=batch_target)  # a (batch, height, width) tensor
    results = metric.compute(num_labels=7, ignore_index=255, mode="d2")
    training = SegmentationMetric(7)
    training.update(batch_pred, batch_target)
    assert_same(results, training.compute(mode="d2"))
    assert results["num_samples"] == training.compute()["num_samples"] == 4


def test_values_mean_iou_would_drop_raise(metric):
    # A label that is neither a class nor ignored, and a prediction outside the classes at a scored pixel: mean_iou
    # leaves them out of its histograms without a word; here they are errors.
    with pytest.raises(ValueError, match=r"label values \['200'\] are outside \[0, 150\)"):
        metric.compute(predictions=[np.array([[1, 2]])], references=[np.array([[1, 200]])], num_labels=150,
                       ignore_index=255)  # fmt: skip
    with pytest.raises(ValueError, match=r"predictions \[7\] at scored pixels are outside \[0, 5\)"):
        metric.compute(predictions=[np.array([[7, 2]])], references=[np.array([[1, 2]])], num_labels=5,
                       ignore_index=255)  # fmt: skip
    with pytest.raises(ValueError, match=r"0->255'\] are outside"):  # reduce_labels' 255 with another ignore index
        metric.compute(predictions=[np.array([[1, 2]])], references=[np.array([[0, 2]])], num_labels=5,
                       ignore_index=0, reduce_labels=True)  # fmt: skip
    with pytest.raises(ValueError, match="Trainer's padding"):
        metric.add(prediction=np.array([[1, 2]]), reference=np.array([[-100, 2]]))
    with pytest.raises(ValueError, match="argmax"):
        metric.add(prediction=np.zeros((2, 2)), reference=np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="each map must have its reference's size"):
        metric.add(prediction=np.zeros((2, 3), np.int64), reference=np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="needs num_labels"):
        metric.compute(ignore_index=255)
    # compute consumes the maps, also when it raises: the next one starts afresh.
    metric.add(prediction=np.array([[1, 2]]), reference=np.array([[1, 200]]))
    with pytest.raises(ValueError, match="outside"):
        metric.compute(num_labels=150, ignore_index=255)
    assert metric.compute(num_labels=150, ignore_index=255)["num_samples"] == 0
    # A prediction outside the classes where the label is ignored is fine (mean_iou's own example has them).
    results = metric.compute(predictions=[np.array([[255, 1]])], references=[np.array([[255, 1]])], num_labels=2,
                             ignore_index=255)  # fmt: skip
    assert results["per_category_iou"][1] == 1.0


@pytest.mark.slow
def test_published_copy_loads_on_its_own(tmp_path):
    """The Space folder, copied away from the repository, loads with `evaluate.load` in a fresh process that cannot
    import this repository, and gives mean_iou's documented numbers."""
    assert sorted(p.name for p in MODULE_DIR.iterdir() if p.name != "__pycache__") == SPACE_FILES
    copy = tmp_path / "space" / "segret_mean_iou"
    shutil.copytree(MODULE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import json, sys\n"
        # The repository's packages are installed (editable) here: block them, as on a machine without the repository.
        "sys.modules.update(dict.fromkeys(['training', 'modeling_segret', 'segret_mean_iou', 'demo']))\n"
        "import evaluate, numpy as np\n"
        "metric = evaluate.load(sys.argv[1])\n"
        "preds, refs = json.loads(sys.argv[2])\n"
        "r = metric.compute(predictions=[np.array(p) for p in preds], references=[np.array(x) for x in refs],\n"
        "                   num_labels=10, ignore_index=255)\n"
        "print(json.dumps({k: (v.tolist() if hasattr(v, 'tolist') else v) for k, v in r.items()}))\n"
    )
    maps = json.dumps([[p.tolist() for p in CARD_PREDICTIONS], [r.tolist() for r in CARD_REFERENCES]])
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    process = subprocess.run([sys.executable, "-c", script, str(copy), maps], capture_output=True, text=True,
                             cwd=tmp_path, env=environment, timeout=300)  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(process.stdout.strip().splitlines()[-1])
    assert_same({k: np.asarray(v) for k, v in results.items()}, CARD_RESULTS)


# ------------------------------------------------------------------------------------------------ Trainer
IMAGE_SIZE, NUM_SAMPLES = 32, 5


def eval_dataset():
    generator = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(NUM_SAMPLES):
        labels = torch.randint(0, 5, (IMAGE_SIZE, IMAGE_SIZE), generator=generator)
        labels[torch.rand(labels.shape, generator=generator) < 0.1] = 255
        samples.append({"pixel_values": torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator), "labels": labels})
    return samples


def expected_results(model, samples, batch_size):
    reference = SegmentationMetric(5)
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            logits = model(pixel_values=torch.stack([s["pixel_values"] for s in batch])).logits
            reference.update(class_maps(logits, (IMAGE_SIZE, IMAGE_SIZE)), torch.stack([s["labels"] for s in batch]))
    return reference.compute()


@pytest.mark.parametrize("batch_eval_metrics, preprocess", [(True, True), (False, True), (False, False)],
                         ids=["batch_eval_metrics", "whole_set", "whole_set_logits"])  # fmt: skip
def test_trainer_compute_metrics(metric, tmp_path, batch_eval_metrics, preprocess):
    """A tiny `Trainer.evaluate` with the module's compute_metrics gives the training metric's numbers on the same
    predictions (logits upsampled to the labels and arg-maxed), with per-class entries named from id2label."""
    torch.manual_seed(0)
    model = SegRetForSemanticSegmentation(small_config(drop_path_rate=0.0)).eval()
    samples = eval_dataset()
    compute_metrics = metric.trainer_compute_metrics(num_labels=5, ignore_index=255, id2label=model.config.id2label)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, batch_eval_metrics=batch_eval_metrics,
        report_to="none", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, eval_dataset=samples, compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=compute_metrics.preprocess_logits_for_metrics if preprocess else None,
    )  # fmt: skip
    scores = trainer.evaluate()
    expected = expected_results(model, samples, batch_size=2)
    assert scores["eval_mean_iou"] == expected["mean_iou"]
    assert scores["eval_overall_accuracy"] == expected["overall_accuracy"]
    assert scores["eval_mean_accuracy"] == expected["mean_accuracy"]
    for index, name in model.config.id2label.items():
        assert scores[f"eval_iou_{name}"] == pytest.approx(expected["per_category_iou"][index], abs=0, nan_ok=True)
    assert 0 < scores["eval_mean_iou"] < 1 and "eval_loss" in scores


def test_space_app_scores_png_maps(tmp_path, monkeypatch):
    """The Space's page function: two PNG class maps (a palette PNG gives its indices) in, the module's results out."""
    pytest.importorskip("gradio", reason='the Space app needs gradio: pip install -e ".[test]"')
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app = runpy.run_path(str(MODULE_DIR / "app.py"))  # builds the page (not launched) and loads the module
    Image.fromarray(CARD_PREDICTIONS[2].astype(np.uint8)).save(tmp_path / "prediction.png")
    reference = Image.frombytes("P", (3, 3), CARD_REFERENCES[2].astype(np.uint8).tobytes())
    reference.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] * 85 + [0, 0, 0])
    reference.save(tmp_path / "reference.png")
    results = app["score"](str(tmp_path / "prediction.png"), str(tmp_path / "reference.png"), 10, 255, False)
    expected = reference_mean_iou(CARD_PREDICTIONS[2:], CARD_REFERENCES[2:], 10, 255)
    assert results["mean_iou"] == expected["mean_iou"] and results["num_samples"] == 1
    ious = np.array([np.nan if value is None else value for value in results["per_category_iou"]])  # JSON: null
    np.testing.assert_array_equal(ious, expected["per_category_iou"])
