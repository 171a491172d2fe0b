"""torchrun helper for tests/test_data.py: the sharded evaluation label check over gloo. Each rank writes the rows it
scanned, the error it raised on the bad split, and whether a clean split was scanned, then skipped on a second check.

Usage: torchrun --nproc_per_node 2 tests/label_check_dist_worker.py BAD_SAVED_SPLIT OUT_DIR
"""

import io
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import torch.distributed as dist
from PIL import Image

from training.data import SegmentationDataset, build_dataset, check_split_labels
from training.presets import DataError


def gather(objects: list) -> list:
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, objects)
    return [item for shard in gathered for item in shard]


def main() -> None:
    bad_split, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows: list[int] = []
    original = SegmentationDataset.raw_label

    def recording(self, index):
        rows.append(int(index))
        return original(self, index)

    SegmentationDataset.raw_label = recording
    error = None
    try:
        check_split_labels(build_dataset("ade20k", bad_split), out / "bad_check.json", rank, world, gather)
    except DataError as err:
        error = str(err)
    scanned_rows = list(rows)

    clean = out / "clean"
    if rank == 0:
        table = {"image": [], "annotation": []}
        for index in range(5):
            for column, array in (("image", np.full((4, 4, 3), index, np.uint8)), ("annotation", np.ones((4, 4)))):
                buffer = io.BytesIO()
                Image.fromarray(array.astype(np.uint8)).save(buffer, "PNG")
                table[column].append({"bytes": buffer.getvalue(), "path": None})
        features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
        datasets.DatasetDict({"validation": datasets.Dataset.from_dict(table, features=features)}).save_to_disk(clean)
    dist.barrier()
    cache = out / "clean_check.json"
    clean_scanned = check_split_labels(build_dataset("ade20k", str(clean)), cache, rank, world, gather)
    dist.barrier()  # rank 0 has written the cache
    rescanned = check_split_labels(build_dataset("ade20k", str(clean)), cache, rank, world, gather)
    result = {"rows": scanned_rows, "error": error, "clean_scanned": clean_scanned, "rescanned": rescanned}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
