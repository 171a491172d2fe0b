"""Start-up time of training: seconds from launch to the first training step, with a large validation split.

    python benchmarks/startup.py make-data DATA --num_validation 5000      # ADE20K-sized synthetic rows, parquet
    python benchmarks/startup.py time DATA OUTPUT [--processes 2] [--resume]

`make-data` writes 683x512 JPEG images and mode-L PNG label maps (values 0..150 in 64-pixel blocks) as
`DATA/data/{train,validation}-*.parquet`. `time` launches `python -m training.train` (or `torch.distributed.run`)
for one step (`--resume`: one more step from OUTPUT's checkpoint) and prints when the label check and the first step
were logged. Results are in BENCHMARKS.md ("Start-up").
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent


def _row(seed: int) -> list[dict]:
    import PIL.Image

    rng = np.random.default_rng(seed)
    label = np.kron(rng.integers(0, 151, (8, 11), dtype=np.uint8), np.ones((64, 64), np.uint8))[:512, :683]
    blocks = np.kron(rng.integers(0, 256, (8, 11, 3)), np.ones((64, 64, 1)))[:512, :683]
    image = np.clip(blocks + rng.normal(0, 20, blocks.shape), 0, 255).astype(np.uint8)
    cells = []
    for array, image_format in ((image, "JPEG"), (label, "PNG")):
        buffer = io.BytesIO()
        PIL.Image.fromarray(array).save(buffer, image_format)
        cells.append({"bytes": buffer.getvalue(), "path": None})
    return cells


def make_data(root: Path, num_validation: int, num_train: int = 16, files: int = 5) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    (root / "data").mkdir(parents=True, exist_ok=True)
    seed = 0
    for split, count, shards in (("train", num_train, 2), ("validation", num_validation, files)):
        for shard in range(shards):
            rows = [_row(seed + index) for index in range(count // shards)]
            seed += len(rows)
            table = {"image": [r[0] for r in rows], "annotation": [r[1] for r in rows]}
            datasets.Dataset.from_dict(table, features=features).to_parquet(
                str(root / "data" / f"{split}-{shard:05d}-of-{shards:05d}.parquet")
            )


def time_start(data: Path, output: Path, processes: int, resume: bool) -> float:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", "29561"]
    command = [*launcher, "-m", "training.train", "--dataset", "ade20k", "--dataset_path", str(data),
               "--crop_size", "64", "--per_device_train_batch_size", "2", "--max_steps", "3", "--logging_steps", "1",
               "--save_steps", "1", "--eval_steps", "100", "--dataloader_num_workers", "0", "--report_to", "none",
               "--num_overlays", "0", "--output_dir", str(output), "--stop_after_steps", "2" if resume else "1",
               *(["--resume_from_checkpoint", "latest"] if resume else [])]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_step = None
    for line in process.stdout:
        if "Evaluation labels" in line:
            print(f"{time.perf_counter() - started:7.1f} s  {line.strip()}")
        if first_step is None and '"step": ' in line:
            first_step = time.perf_counter() - started
    if process.wait() != 0 or first_step is None:
        raise SystemExit(f"training failed (exit status {process.returncode})")
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"launch -> first step: {first_step:.1f} s (load {load})")
    return first_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-data")
    make.add_argument("data", type=Path)
    make.add_argument("--num_validation", type=int, default=5000)
    timing = commands.add_parser("time")
    timing.add_argument("data", type=Path)
    timing.add_argument("output", type=Path)
    timing.add_argument("--processes", type=int, default=1)
    timing.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    if args.command == "make-data":
        make_data(args.data, args.num_validation)
    else:
        time_start(args.data, args.output, args.processes, args.resume)


if __name__ == "__main__":
    main()
