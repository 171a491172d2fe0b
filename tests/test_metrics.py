"""SegmentationMetric: hand-computed cases, an independent implementation, and exactness across processes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.metric_samples import make_samples
from training.data import ShardSampler
from training.metrics import SegmentationMetric, format_table

EVALUATE_KEYS = {"mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"}


def test_hand_computed_with_ignore():
    target = torch.tensor([[0, 0, 1], [255, 2, 1]])
    pred = torch.tensor([[0, 1, 1], [2, 2, 0]])  # the 2 under the ignored pixel must not count
    metric = SegmentationMetric(3)
    metric.update(pred, target)
    r = metric.compute()
    assert EVALUATE_KEYS <= set(r)
    # class 0: I=1, label 2, pred 2 -> U=3; class 1: I=1, label 2, pred 2 -> U=3; class 2: I=1, U=1.
    np.testing.assert_allclose(r["per_category_iou"], [1 / 3, 1 / 3, 1.0])
    np.testing.assert_allclose(r["per_category_accuracy"], [1 / 2, 1 / 2, 1.0])
    assert r["mean_iou"] == pytest.approx(5 / 9)
    assert r["mean_accuracy"] == pytest.approx(2 / 3)
    assert r["overall_accuracy"] == pytest.approx(3 / 5)
    assert r["num_samples"] == 1


def test_absent_class_is_excluded():
    metric = SegmentationMetric(4)
    metric.update(torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0, 1], [1, 2]]))
    r = metric.compute()
    assert math.isnan(r["per_category_iou"][3]) and math.isnan(r["per_category_accuracy"][3])
    assert r["mean_iou"] == 1.0 and r["mean_accuracy"] == 1.0
    assert r["per_category_iou"].tolist()[:3] == [1.0, 1.0, 1.0]
    assert metric.compute(nan_to_num=0)["per_category_iou"][3] == 0.0


def test_class_only_in_predictions_counts_as_zero():
    metric = SegmentationMetric(3)
    metric.update(torch.tensor([[0, 2], [1, 1]]), torch.tensor([[0, 0], [1, 1]]))
    r = metric.compute()
    # class 0: I=1, U=2; class 1: 1; class 2: predicted once, never labelled -> IoU 0 (kept), accuracy NaN.
    np.testing.assert_allclose(r["per_category_iou"], [0.5, 1.0, 0.0])
    assert r["mean_iou"] == pytest.approx(0.5)
    assert math.isnan(r["per_category_accuracy"][2]) and r["mean_accuracy"] == pytest.approx(0.75)
    # detectron2's rule drops classes without label pixels from the mean.
    assert metric.compute(mode="d2")["mean_iou"] == pytest.approx(0.75)


def test_dataset_level_not_per_image():
    metric = SegmentationMetric(2)
    metric.update(torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 0, 0]]))  # image 1: class 0 IoU 3/4
    metric.update(torch.tensor([[1, 1]]), torch.tensor([[1, 0]]))  # image 2
    r = metric.compute()
    # Pooled: class 0 I=3, label 5, pred 3 -> U=5 -> 0.6; class 1 I=1, label 1, pred 3 -> U=3 -> 1/3.
    np.testing.assert_allclose(r["per_category_iou"], [0.6, 1 / 3])
    per_image = np.mean([np.nanmean([0.75, 0.0]), np.nanmean([0.0, 0.5])])
    assert r["mean_iou"] != pytest.approx(per_image)


def _straightforward(pairs, num_labels, ignore=255):
    inter, union, label_area = np.zeros(num_labels), np.zeros(num_labels), np.zeros(num_labels)
    for pred, target in pairs:
        pred, target = np.asarray(pred), np.asarray(target)
        valid = target != ignore
        for c in range(num_labels):
            p, t = (pred == c) & valid, (target == c) & valid
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
            label_area[c] += t.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / label_area
    return iou, acc, inter.sum() / label_area.sum()


@pytest.mark.parametrize("num_labels", [3, 19, 150])
def test_equals_straightforward_implementation(num_labels):
    pairs = make_samples(6, num_labels)
    metric = SegmentationMetric(num_labels)
    for pred, target in pairs:
        metric.update(pred.numpy().astype(np.uint8), target.numpy().astype(np.uint8))  # numpy and uint8 accepted
    r = metric.compute()
    iou, acc, overall = _straightforward(pairs, num_labels)
    np.testing.assert_allclose(r["per_category_iou"], iou, rtol=0, atol=1e-15)
    np.testing.assert_allclose(r["per_category_accuracy"], acc, rtol=0, atol=1e-15)
    assert r["mean_iou"] == pytest.approx(np.nanmean(iou), abs=1e-15)
    assert r["mean_accuracy"] == pytest.approx(np.nanmean(acc), abs=1e-15)
    assert r["overall_accuracy"] == pytest.approx(overall, abs=1e-15)


def test_batches_lists_and_merge_agree():
    pairs = make_samples(4, 5)
    single = SegmentationMetric(5)
    for p, t in pairs:
        single.update(p, t)
    as_list = SegmentationMetric(5)
    as_list.update([p for p, _ in pairs], [t for _, t in pairs])
    same_size = [(p[:17, :23], t[:17, :23]) for p, t in pairs]
    batched, looped = SegmentationMetric(5), SegmentationMetric(5)
    batched.update(torch.stack([p for p, _ in same_size]), torch.stack([t for _, t in same_size]))
    for p, t in same_size:
        looped.update(p, t)
    left, right = SegmentationMetric(5), SegmentationMetric(5)
    for i, (p, t) in enumerate(pairs):
        (left if i % 2 else right).update(p, t)
    left.merge(right)
    assert torch.equal(as_list.confusion, single.confusion) and as_list.num_samples == 4
    assert torch.equal(batched.confusion, looped.confusion) and batched.num_samples == 4
    assert torch.equal(left.confusion, single.confusion) and left.num_samples == 4
    single.reset()
    assert single.num_samples == 0 and single.confusion is None


def test_errors():
    metric = SegmentationMetric(3)
    with pytest.raises(ValueError, match=r"target values \[3\]"):
        metric.update(torch.tensor([0, 1]), torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="predictions must be in"):
        metric.update(torch.tensor([5, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="argmax"):
        metric.update(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


def test_format_table():
    metric = SegmentationMetric(2)
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    table = format_table(metric.compute(), ["road", "sky"])
    assert "| road  | 100.00 | 100.00 |" in table and "mIoU 100.00" in table


def test_shard_sampler_covers_each_row_once():
    shards = [list(ShardSampler(7, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(7)) and [len(s) for s in shards] == [3, 2, 2]


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
    # `python -m torch.distributed.run` is `torchrun`; --standalone picks a free port.
    num_samples, num_labels = 7, 6  # odd: the shards are 4 and 3 samples
    out = tmp_path / "dist.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    worker = Path(__file__).with_name("metric_dist_worker.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), str(out), str(num_samples), str(num_labels)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    dist_result = json.loads(out.read_text())
    assert dist_result["shards"] == [[0, 2, 4, 6], [1, 3, 5]]
    single = SegmentationMetric(num_labels)
    for pred, target in make_samples(num_samples, num_labels):
        single.update(pred, target)
    expected = single.compute()
    assert dist_result["num_samples"] == num_samples
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert dist_result[key] == expected[key]  # exact, not approximate
    assert dist_result["per_category_iou"] == expected["per_category_iou"].tolist()
    assert dist_result["per_category_accuracy"] == expected["per_category_accuracy"].tolist()
    # The evaluate module sums counts of different shapes (rank 1 saw predictions up to 11) to the same numbers.
    module = dist_result["module"]
    assert module.pop("num_samples") == num_samples + 1
    assert module == {key: dist_result[key] for key in module}
