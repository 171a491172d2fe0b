"""torchrun helper for tests/test_train.py: a --streaming training run that records, per process, the training rows
it augmented (a hash of each image's bytes) in OUT_DIR/rows_<rank>.json.

Usage: torchrun --nproc_per_node 2 tests/streaming_dist_worker.py OUT_DIR TRAIN_ARGUMENTS...
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from training import train
from training.data import StreamAugmentation


def main() -> None:
    out, arguments = Path(sys.argv[1]), sys.argv[2:]
    seen = []
    original = StreamAugmentation.__getitem__

    def recording(self, key):
        seen.append(hashlib.sha256(key[2]["image"]["bytes"]).hexdigest())
        return original(self, key)

    StreamAugmentation.__getitem__ = recording  # with --dataloader_num_workers 0, items are made in this process
    train.main(arguments)
    (out / f"rows_{os.environ['RANK']}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
