"""torchrun helper for tests/test_metrics.py: sharded SegmentationMetric over gloo, rank 0 writes the result.

Usage: torchrun --nproc_per_node 2 tests/metric_dist_worker.py OUT.json NUM_SAMPLES NUM_LABELS
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tests.metric_samples import make_samples  # the repository on PYTHONPATH (tests/test_metrics.py)
from training.data import ShardSampler
from training.metrics import SegmentationMetric


def main() -> None:
    out, num_samples, num_labels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    samples = make_samples(num_samples, num_labels)
    metric = SegmentationMetric(num_labels)
    seen = []
    for index in ShardSampler(num_samples, rank, world):
        pred, target = samples[index]
        metric.update(pred, target)
        seen.append(index)
    result = metric.compute()
    shards = [None] * world
    dist.all_gather_object(shards, seen)
    if rank == 0:
        result = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}
        result["shards"] = shards
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
