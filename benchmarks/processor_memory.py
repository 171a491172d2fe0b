# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Peak memory and time of `SegRetImageProcessor` on one huge array image, under an address-space limit.

    python benchmarks/processor_memory.py --side 20000 --limit_gib 8

Runs the processor in a child process limited with `RLIMIT_AS` (so a copy too many is a MemoryError, not an OOM kill
of the machine) and prints the child's peak RSS (`ru_maxrss`) and the processing time, as JSON. `--untiled` measures
the former path (the whole image normalised in float32, then resized).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

CHILD = """
import resource, sys, time
import numpy as np
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import modeling_segret.image_processing_segret as ips
from modeling_segret import SegRetImageProcessor
if {untiled}:
    ips.MAX_TILE_VALUES = 2**62
image = np.full(({side}, {side}, 3), 127, dtype=np.uint8)
image[::7] = 30
processor = SegRetImageProcessor()
start = time.perf_counter()
try:
    shape = tuple(processor(images=image, return_tensors="np")["pixel_values"].shape)
    error = None
except MemoryError as caught:
    shape, error = None, f"MemoryError: {{caught}}"
print(shape, time.perf_counter() - start, error, file=sys.stderr)
"""


def measure(side: int, limit_gib: float, untiled: bool) -> dict:
    limit = int(limit_gib * 2**30)
    code = CHILD.format(side=side, limit=limit, untiled=untiled)
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    last_line = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else ""
    return {
        "side": side,
        "limit_gib": limit_gib,
        "path": "untiled" if untiled else "tiled",
        "returncode": child.returncode,
        "peak_rss_gib": round(peak_kib / 2**20, 2),
        "child_wall_s": round(wall, 1),
        "result (shape, processing s, error)": last_line,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--limit_gib", type=float, default=8.0)
    parser.add_argument("--untiled", action="store_true")
    args = parser.parse_args()
    print(json.dumps(measure(args.side, args.limit_gib, args.untiled), indent=1))


if __name__ == "__main__":
    main()
