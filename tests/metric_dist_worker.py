"""torchrun helper for tests/test_metrics.py: sharded SegmentationMetric and segret_mean_iou over gloo, rank 0 writes
the results. Rank 1 also adds a map whose predictions reach past the classes at ignored pixels only, so the
evaluate module's counts have a different shape on each process.

Usage: torchrun --nproc_per_node 2 tests/metric_dist_worker.py OUT.json NUM_SAMPLES NUM_LABELS
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from segret_mean_iou.segret_mean_iou import SegretMeanIoU
from tests.metric_samples import make_samples  # the repository on PYTHONPATH (tests/test_metrics.py)
from training.data import ShardSampler
from training.metrics import SegmentationMetric

IGNORED_MAP = (torch.tensor([[9, 11]]), torch.tensor([[255, 255]]))  # predictions 9 and 11 where nothing is scored


def main() -> None:
    out, num_samples, num_labels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    samples = make_samples(num_samples, num_labels)
    metric, module = SegmentationMetric(num_labels), SegretMeanIoU()
    seen = []
    for index in ShardSampler(num_samples, rank, world):
        pred, target = samples[index]
        metric.update(pred, target)
        module.add(prediction=pred, reference=target)
        seen.append(index)
    if rank == 1:
        module.add(prediction=IGNORED_MAP[0], reference=IGNORED_MAP[1])
    result = metric.compute()
    module_result = module.compute(num_labels=num_labels, ignore_index=255)
    shards = [None] * world
    dist.all_gather_object(shards, seen)
    if rank == 0:
        result = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}
        result["shards"] = shards
        result["module"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in module_result.items()}
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
