"""Train SegRet with Accelerate.

    accelerate launch training/train.py configuration/recipes/<recipe>.yaml [--field value ...]


One script from a single CPU to several machines: Accelerate sets up the processes, devices and mixed precision; the
loop below is plain PyTorch. The schedule is iteration-based, as in the paper (MMSegmentation): AdamW, linear
warm-up, then polynomial decay. Checkpoints hold everything needed to continue exactly (model, optimizer,
scheduler, RNG states, data position) and are written atomically; `--resume_from_checkpoint latest` continues a run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
import traceback
import uuid
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list, is_tensorboard_available, set_seed
from tqdm.auto import tqdm
from transformers import HfArgumentParser

if __package__ in (None, ""):
    # Run as a script: import the repository, and keep training/ off sys.path, where evaluate.py would shadow the
    # `evaluate` library.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from modeling_segret import (
    SEGRET_VARIANTS,
    SegRetConfig,
    SegRetForSemanticSegmentation,
    SegRetImageProcessor,
    segret_variant_config,
)
from modeling_segret.convert_rmt_checkpoint import convert_rmt_state_dict, load_checkpoint
from training import LOG_FORMAT
from training.data import (
    SegmentationDataset,
    build_dataset,
    collate_train,
    image_sizes,
    parse_class_names,
    single_split_source,
    verify_labels,
)
from training.evaluate import evaluate_segmentation, model_variant, summarize
from training.metrics import format_table
from training.presets import PRESET_NAMES, DataError, DatasetPreset, get_preset
from training.synthetic import generate as generate_synthetic
from training.transforms import TrainTransform

logger = get_logger(__name__)  # accelerate's: main_process_only=...; needs an Accelerator
# For the helpers that run without one too (tests, scripts); other processes log only warnings (setup_logging).
helper_logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
LOCK_FILE, RUN_FILE, LOSS_LOG, TRAIN_LOG = "segret.lock", "run.json", "loss_history.jsonl", "train.log"
TRAINER_STATE_KEYS = ("global_step", "epoch", "batch_in_epoch")
# The recipe fields that define a run: resuming with other values would silently continue another schedule.
RUN_IDENTITY_FIELDS = (
    "variant", "model_name_or_path", "dataset", "class_names", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps", "num_processes", "max_steps", "seed",
)  # fmt: skip


@dataclass
class ModelArguments:
    variant: str = field(default="tiny", metadata={"help": "SegRet variant: tiny, small, base or large"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "start from a saved SegRet model (folder or Hub id) instead of a new one"}
    )
    backbone_checkpoint: str | None = field(
        default=None, metadata={"help": "official RMT ImageNet checkpoint (.pth/.safetensors) for the backbone"}
    )
    drop_path_rate: float | None = field(default=None, metadata={"help": "override the variant's stochastic depth"})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={
            "help": "with model_name_or_path: a new, randomly initialised head when the number of classes differs"
        },
    )
    loss_average_over_all_pixels: bool = field(
        default=True,
        metadata={"help": "MMSegmentation's loss normalisation (the paper's); False: average over labelled pixels"},
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="synthetic", metadata={"help": "preset: ade20k, cityscapes, coco_stuff, generic or synthetic"}
    )
    dataset_path: str | None = field(
        default=None, metadata={"help": "Hub id or local path (default: the preset's Hub dataset / data/synthetic)"}
    )
    eval_dataset_path: str | None = field(
        default=None,
        metadata={"help": "evaluation data, when dataset_path is a single parquet file or a single saved split"},
    )
    dataset_revision: str | None = None
    dataset_data_dir: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    num_labels: int | None = field(default=None, metadata={"help": "generic preset: number of classes"})
    class_names: list[str] | None = field(
        default=None, metadata={"help": "generic preset: class names (names, 'a,b,c', or a JSON list / id2label file)"}
    )
    reduce_labels: bool = field(default=False, metadata={"help": "generic preset: raw 0 is ignored, v -> v-1"})
    label_encoding: str = field(default="labelIds", metadata={"help": "cityscapes: labelIds or trainIds"})
    crop_size: list[int] | None = field(default=None, metadata={"help": "training crop (height width, or one size)"})
    train_scale: list[int] | None = field(
        default=None, metadata={"help": "keep-ratio resize bound (long short); generic preset: derived from the data"}
    )
    test_scale: list[int] | None = field(
        default=None, metadata={"help": "evaluation resize bound (long short); generic preset: derived from the data"}
    )
    eval_mode: str = field(default="ss", metadata={"help": "ss (whole image), slide, or ms (multi-scale + flip)"})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    dataloader_num_workers: int = 2
    synthetic_num_train: int = 600
    synthetic_num_validation: int = 100


@dataclass
class TrainArguments:
    output_dir: str = "outputs/segret"
    seed: int = 0
    max_steps: int = 160_000
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    warmup_steps: int = field(default=1500, metadata={"help": "linear warm-up from warmup_start_factor x lr"})
    warmup_start_factor: float = 1e-6
    poly_power: float = 1.0
    min_learning_rate: float = 0.0
    no_decay_on_norms_and_position: bool = field(
        default=False, metadata={"help": "no weight decay on norms, biases, layer scales and position convolutions"}
    )
    decoder_lr_multiplier: float = field(default=1.0, metadata={"help": "learning-rate multiplier of the decoder"})
    max_grad_norm: float = field(default=0.0, metadata={"help": "gradient clipping; 0 disables it"})
    mixed_precision: str | None = field(default=None, metadata={"help": "no, fp16 or bf16 (default: accelerate's)"})
    logging_steps: int = 50
    eval_steps: int = 16_000
    save_steps: int = 16_000
    save_total_limit: int = 2
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "latest, or a checkpoint folder"})
    ignore_run_mismatch: bool = field(
        default=False, metadata={"help": "resume even if the recipe differs from the checkpoint's (a warning)"}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "start a new run in a folder that holds another run's checkpoints (they are kept)"},
    )
    stop_after_steps: int | None = field(
        default=None, metadata={"help": "checkpoint and stop after this many steps (to split a run into jobs)"}
    )
    num_overlays: int = field(default=4, metadata={"help": "colour overlays saved for the first N eval images"})
    report_to: str = field(default="auto", metadata={"help": "tensorboard, none, or auto (tensorboard if installed)"})


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """A YAML/JSON recipe (first argument, optional) overridden by `--field value` arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainArguments))
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        recipe_path = Path(argv.pop(0))
        recipe = yaml.safe_load(recipe_path.read_text()) or {}
        known = {f for dataclass_type in parser.dataclass_types for f in dataclass_type.__dataclass_fields__}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise ValueError(f"{recipe_path}: unknown fields {unknown}")
        parser.set_defaults(**recipe)
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    validate_arguments(model_args, data_args, train_args)
    return model_args, data_args, train_args


def _pair(value, name: str, meaning: str, scalar_ok: bool) -> tuple[int, int] | None:
    """A (a, b) pair of positive ints from a list or (if `scalar_ok`) one number, which is used for both."""
    if value is None:
        return None
    values = [value] if isinstance(value, (int, float, str)) else list(value)
    if len(values) == 1 and scalar_ok:
        values = values * 2
    try:
        pair = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) <= 0 or any(float(v) != int(float(v)) for v in values):
        example = "--crop_size 512 512 (or one size for a square)" if scalar_ok else f"--{name} 2048 512"
        raise ValueError(f"--{name} must be two positive integers ({meaning}), got {value!r}; e.g. {example}")
    return pair


def validate_arguments(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments) -> None:
    """Fails in seconds, before any data or model work, on values that would crash or silently mislead later.

    Normalises a scalar `crop_size` to a square (h, h) crop and `class_names` to a list of names.
    """
    problems = []

    def need(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    def finite(value: float) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

    for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps",
                 "eval_steps", "save_steps"):  # fmt: skip
        value = getattr(args, name)
        need(value >= 1, f"--{name} must be at least 1, got {value}")
    need(
        args.save_total_limit >= 1,
        f"--save_total_limit must be at least 1 (a run must keep a checkpoint to resume from), "
        f"got {args.save_total_limit}",
    )
    need(
        args.stop_after_steps is None or args.stop_after_steps >= 1,
        f"--stop_after_steps must be at least 1, got {args.stop_after_steps}",
    )
    need(
        finite(args.learning_rate) and args.learning_rate > 0, f"--learning_rate must be > 0, got {args.learning_rate}"
    )
    need(args.warmup_steps >= 0, f"--warmup_steps must be >= 0 (0: no warm-up), got {args.warmup_steps}")
    need(
        finite(args.warmup_start_factor) and 0 < args.warmup_start_factor <= 1,
        f"--warmup_start_factor must be in (0, 1], got {args.warmup_start_factor}",
    )
    need(
        finite(args.min_learning_rate) and 0 <= args.min_learning_rate <= abs(args.learning_rate),
        f"--min_learning_rate must be in [0, learning_rate], got {args.min_learning_rate}",
    )
    need(finite(args.weight_decay) and args.weight_decay >= 0, f"--weight_decay must be >= 0, got {args.weight_decay}")
    need(finite(args.poly_power) and args.poly_power > 0, f"--poly_power must be > 0, got {args.poly_power}")
    need(
        finite(args.max_grad_norm) and args.max_grad_norm >= 0,
        f"--max_grad_norm must be >= 0, got {args.max_grad_norm}",
    )
    need(
        finite(args.decoder_lr_multiplier) and args.decoder_lr_multiplier > 0,
        f"--decoder_lr_multiplier must be > 0, got {args.decoder_lr_multiplier}",
    )
    for name in ("adam_beta1", "adam_beta2"):
        value = getattr(args, name)
        need(finite(value) and 0 <= value < 1, f"--{name} must be in [0, 1), got {value}")
    need(finite(args.adam_epsilon) and args.adam_epsilon > 0, f"--adam_epsilon must be > 0, got {args.adam_epsilon}")
    need(args.num_overlays >= 0, f"--num_overlays must be >= 0, got {args.num_overlays}")
    need(
        args.mixed_precision in (None, "no", "fp16", "bf16"),
        f"--mixed_precision must be no, fp16 or bf16, got {args.mixed_precision!r}",
    )
    need(str(args.output_dir).strip() != "", "--output_dir must not be empty")
    if args.resume_from_checkpoint not in (None, "latest"):
        need(
            Path(args.resume_from_checkpoint).is_dir(),
            f"--resume_from_checkpoint {args.resume_from_checkpoint}: no such folder (use 'latest' for the newest "
            f"checkpoint in --output_dir)",
        )
    if model_args.model_name_or_path is None:
        need(
            model_args.variant in SEGRET_VARIANTS,
            f"--variant must be one of {', '.join(SEGRET_VARIANTS)}, got {model_args.variant!r}",
        )
    need(
        model_args.drop_path_rate is None or 0 <= model_args.drop_path_rate < 1,
        f"--drop_path_rate must be in [0, 1), got {model_args.drop_path_rate}",
    )

    need(
        data_args.dataset in PRESET_NAMES,
        f"--dataset must be one of {', '.join(PRESET_NAMES)}, got {data_args.dataset!r}",
    )
    need(
        data_args.eval_mode in ("ss", "slide", "ms"),
        f"--eval_mode must be ss, slide or ms, got {data_args.eval_mode!r}",
    )
    need(
        data_args.dataloader_num_workers >= 0,
        f"--dataloader_num_workers must be >= 0, got {data_args.dataloader_num_workers}",
    )
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(data_args, name)
        need(value is None or value >= 1, f"--{name} must be at least 1, got {value}")
    for name in ("synthetic_num_train", "synthetic_num_validation"):
        need(getattr(data_args, name) >= 1, f"--{name} must be at least 1, got {getattr(data_args, name)}")
    if data_args.dataset != "generic":
        # These options only shape the generic preset; accepting them elsewhere would silently ignore them.
        for name in ("num_labels", "class_names"):
            need(
                getattr(data_args, name) is None,
                f"--{name} applies only to --dataset generic (the {data_args.dataset} preset defines its classes)",
            )
        need(
            not data_args.reduce_labels,
            f"--reduce_labels applies only to --dataset generic "
            f"(the {data_args.dataset} preset has its own label mapping)",
        )
    if data_args.class_names is not None:
        try:
            data_args.class_names = parse_class_names(data_args.class_names)
        except (ValueError, OSError) as err:
            problems.append(f"--class_names: {err}")
    try:
        data_args.crop_size = _pair(data_args.crop_size, "crop_size", "height width", scalar_ok=True)
        data_args.train_scale = _pair(data_args.train_scale, "train_scale", "long short bound", scalar_ok=False)
        data_args.test_scale = _pair(data_args.test_scale, "test_scale", "long short bound", scalar_ok=False)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ValueError("Invalid arguments:\n- " + "\n- ".join(problems))


# ----------------------------------------------------------------------------------------------------- data
def resolve_preset(data_args: DataArguments, variant: str | None = None) -> DatasetPreset:
    """The dataset preset at the paper's scales for ``variant`` (Large: ADE20K at 640), with the recipe's crop and
    scales."""
    preset = get_preset(
        data_args.dataset,
        variant=variant,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        num_labels=data_args.num_labels,
        reduce_labels=data_args.reduce_labels,
        class_names=data_args.class_names,
        label_encoding=data_args.label_encoding,
    )
    overrides = {
        name: tuple(value)
        for name, value in (
            ("crop_size", data_args.crop_size),
            ("train_scale", data_args.train_scale),
            ("test_scale", data_args.test_scale),
        )
        if value
    }
    return replace(preset, **overrides)


def scales_from_data(preset: DatasetPreset, dataset: SegmentationDataset, data_args: DataArguments) -> DatasetPreset:
    """The generic preset's scales when not given: the median image size of the data, not ADE20K's 2048x512.

    Train and test scale = (median long side, median short side), so images keep about their own size; the crop is
    that short side capped at 512 (the paper's crop) and rounded down to a multiple of 32 (the model's stride).
    """
    sizes = np.array(image_sizes(dataset, limit=200))  # (height, width) of the first rows, EXIF orientation applied
    long_side, short_side = (int(np.median(v)) for v in (sizes.max(axis=1), sizes.min(axis=1)))
    derived = {"train_scale": (long_side, short_side), "test_scale": (long_side, short_side)}
    crop = max(32, min(512, short_side) // 32 * 32)
    derived["crop_size"] = (crop, crop)
    chosen = {name: value for name, value in derived.items() if getattr(data_args, name) is None}
    if chosen:
        helper_logger.info(
            f"generic preset: {', '.join(f'{k}={v}' for k, v in chosen.items())} derived from the median size of "
            f"{len(sizes)} training images; pass --crop_size/--train_scale/--test_scale to choose others",
        )
    return replace(preset, **chosen)


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """This process's share of a permutation seeded by (seed, epoch), starting `start_batch` batches in.

    The order depends only on the seed, the epoch and the number of processes, which is what makes resuming exact.
    Each epoch drops the incomplete last global batch, as MMSegmentation's iteration-based runner does.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = num_samples // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The training split has {num_samples} samples, fewer than one global batch "
                f"({batch_size} x {world_size} processes)."
            )
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        per_process = order[: self.batches_per_epoch * self.batch_size * self.world_size][self.rank :: self.world_size]
        return iter(per_process[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class SeededAugmentation(torch.utils.data.Dataset):
    """Draws each sample's augmentation from a generator seeded by (seed, epoch, row): same crops after a resume."""

    def __init__(self, dataset: SegmentationDataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset.get_item(index, rng=np.random.default_rng([self.seed, self.epoch, index]))


# ------------------------------------------------------------------------------------------------ optimisation
def parameter_groups(model: SegRetForSemanticSegmentation, args: TrainArguments) -> list[dict]:
    """AdamW groups: optional no-decay for norms/biases/layer scales/position convs, optional decoder lr multiplier."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        in_decoder = name.startswith("decode_head.")
        no_decay = args.no_decay_on_norms_and_position and (
            parameter.ndim == 1 or "layer_scale" in name or ".position_encoding." in name
        )
        groups.setdefault((in_decoder, no_decay), []).append(parameter)
    return [
        {
            "params": parameters,
            "lr": args.learning_rate * (args.decoder_lr_multiplier if in_decoder else 1.0),
            "weight_decay": 0.0 if no_decay else args.weight_decay,
        }
        for (in_decoder, no_decay), parameters in sorted(groups.items())
    ]


def warmup_poly_schedule(args: TrainArguments):
    """Multiplier of the base lr at optimizer step `step`: linear warm-up, then (1 - t)^power down to min lr."""

    def factor(step: int) -> float:
        progress = min(step, args.max_steps) / args.max_steps
        decayed = (1 - progress) ** args.poly_power
        decayed = (
            decayed * (1 - args.min_learning_rate / args.learning_rate) + args.min_learning_rate / args.learning_rate
        )
        if step < args.warmup_steps:
            warmup = args.warmup_start_factor + (1 - args.warmup_start_factor) * step / args.warmup_steps
            return decayed * warmup
        return decayed

    return factor


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder `path` cannot be resumed from (missing, truncated or corrupt files), or None.

    Checks without unpickling anything: the trainer state's keys, each file's size against the manifest written at
    save time, the safetensors headers and the CRCs of torch's zip containers (optimizer, scheduler, RNG states).
    """
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError) as err:
        return f"trainer_state.json is unreadable ({err})"
    if not isinstance(state, dict) or any(not isinstance(state.get(key), int) for key in TRAINER_STATE_KEYS):
        return f"trainer_state.json lacks {', '.join(TRAINER_STATE_KEYS)}"
    files = state.get("files") or {name: None for name in ("model.safetensors", "optimizer.bin", "scheduler.bin")}
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if size is not None and file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written"
        try:
            if name.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(file), framework="pt"):
                    pass
            elif zipfile.is_zipfile(file):
                with zipfile.ZipFile(file) as archive:
                    if archive.testzip() is not None:
                        return f"{name} is corrupt"
            elif name.endswith((".bin", ".pkl", ".pt")):
                return f"{name} is not a torch zip archive (truncated?)"
        except Exception as err:  # safetensors and zipfile raise several types for damaged files
            return f"{name} is corrupt ({type(err).__name__}: {err})"
    return None


def _checkpoint_state(path: Path) -> dict:
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return {}


def list_checkpoints(output_dir: Path, run_id: str | None = None) -> list[tuple[int, Path]]:
    """(step, folder) of the `checkpoint-N` folders, oldest first; with `run_id` only that run's."""
    found = sorted(
        (int(match.group(1)), path)
        for path in output_dir.glob("checkpoint-*")
        if (match := CHECKPOINT_PATTERN.match(path.name)) and path.is_dir()
    )
    if run_id is not None:
        found = [(step, path) for step, path in found if _checkpoint_state(path).get("run_id") == run_id]
    return found


def resume_candidates(output_dir: Path, which: str) -> list[Path]:
    """Checkpoints to try, best first: the folder given, or (`latest`) the current run's newest complete ones.

    The current run is the one named in `output_dir/run.json`; without it every checkpoint in the folder counts.
    An incomplete or corrupt newest checkpoint is reported with a warning and skipped.
    """
    if which != "latest":
        path = Path(which)
        problem = checkpoint_problem(path)
        if problem:
            raise FileNotFoundError(f"{path} is not a complete checkpoint: {problem}")
        return [path]
    run_id = _read_json(output_dir / RUN_FILE).get("run_id")
    checkpoints = list_checkpoints(output_dir)
    if run_id is not None:  # another run's checkpoints are not resumed; unreadable ones are reported below
        checkpoints = [
            (step, path) for step, path in checkpoints if _checkpoint_state(path).get("run_id", run_id) == run_id
        ]
    candidates = []
    for _, path in reversed(checkpoints):
        problem = checkpoint_problem(path)
        if problem is None:
            candidates.append(path)
        elif not candidates:
            helper_logger.warning(
                f"{path} is incomplete or corrupt ({problem}); falling back to the previous checkpoint",
            )
    return candidates


def find_checkpoint(output_dir: Path, which: str) -> Path | None:
    """`latest` -> the newest complete checkpoint of the run in output_dir (or None); otherwise the folder given."""
    candidates = resume_candidates(output_dir, which)
    return candidates[0] if candidates else None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _remove_folder(path: Path) -> None:
    """Rename, then delete: a kill half-way leaves a `.deleting-*` folder that nothing mistakes for a checkpoint."""
    doomed = path.with_name(f".deleting-{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    step: int,
    epoch: int,
    batch: int,
    limit: int,
    run: dict | None = None,
) -> Path:
    """Accelerate state in a temporary folder, renamed into place once complete; keeps this run's newest `limit`.

    `run` ({"run_id": ..., "identity": {...}}) is stored in the trainer state, with every file's size.
    """
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)  # left over by a crash
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {
            file.relative_to(temporary).as_posix(): file.stat().st_size
            for file in sorted(temporary.rglob("*"))
            if file.is_file()
        }
        state = {
            "global_step": step,
            "epoch": epoch,
            "batch_in_epoch": batch,
            "num_processes": accelerator.num_processes,
            **(run or {}),
            "files": files,
        }
        state_file = temporary / "trainer_state.json"
        with open(state_file, "w") as handle:
            handle.write(json.dumps(state, indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():
            _remove_folder(final)
        os.replace(temporary, final)  # atomic on one filesystem: a checkpoint is complete or absent
        run_id = (run or {}).get("run_id")
        checkpoints = list_checkpoints(output_dir, run_id)
        for _, old in checkpoints[: max(len(checkpoints) - limit, 0)]:
            _remove_folder(old)
    accelerator.wait_for_everyone()
    return final


# ------------------------------------------------------------------------------------------------ run ownership
class OutputDirLock:
    """`output_dir/segret.lock` holding the owner's host and pid: one run per folder at a time.

    A lock whose process is gone (same host, pid not running) is stale: it is taken over with a warning.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK_FILE
        self.held = False

    def acquire(self) -> str | None:
        """Takes the lock; returns a note when a stale lock was taken over, raises when the folder is in use."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = None
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = _read_json(self.path)
                if (
                    holder.get("host") == owner["host"]
                    and isinstance(holder.get("pid"), int)
                    and not _alive(holder["pid"])
                ):
                    note = f"Removing the stale lock {self.path} of process {holder['pid']}, which is no longer running"
                    self.path.unlink(missing_ok=True)
                    continue
                raise RuntimeError(
                    f"{self.path.parent} is in use by another training run ({holder or 'unreadable lock file'}). "
                    f"Wait for it to finish, choose another --output_dir, or delete {self.path} if that run is gone."
                ) from None
            with os.fdopen(descriptor, "w") as handle:
                json.dump(owner, handle)
            self.held = True
            return note
        raise RuntimeError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def run_identity(model_args: ModelArguments, args: TrainArguments, preset: DatasetPreset, num_processes: int) -> dict:
    """The recipe's fields that must not change when a run is resumed."""
    values = {**asdict(model_args), **asdict(args), "num_processes": num_processes, "dataset": preset.name}
    values["class_names"] = list(preset.class_names)
    if model_args.model_name_or_path:
        values["variant"] = None  # the saved model's
    return {name: values[name] for name in RUN_IDENTITY_FIELDS}


def check_run_identity(checkpoint: Path, identity: dict, ignore: bool) -> None:
    """Refuses (or, with `ignore`, warns about) resuming a checkpoint whose run was set up differently."""
    saved = _checkpoint_state(checkpoint).get("identity")
    if saved is None:
        helper_logger.warning(f"{checkpoint} has no run identity (an older checkpoint): the recipe is not checked")
        return
    changed = [
        f"{name}: {saved.get(name)!r} in the checkpoint, {identity[name]!r} now"
        for name in identity
        if name in saved and saved[name] != identity[name]
    ]
    if not changed:
        return
    message = f"Resuming {checkpoint} with a different recipe:\n- " + "\n- ".join(changed)
    if not ignore:
        raise ValueError(
            f"{message}\nThe schedule and data position of the checkpoint belong to its recipe. Resume with the "
            "same values, start a new run in another --output_dir, or pass --ignore_run_mismatch to continue anyway."
        )
    helper_logger.warning(f"{message}\n(--ignore_run_mismatch: continuing with the new values)")


def setup_logging(output_dir: Path, is_main_process: bool) -> tuple[list[logging.Handler], int]:
    """INFO on the main process (warnings elsewhere) to the console and `output_dir/train.log`; returns the handlers
    and the root logger's previous level, for `remove_logging`."""
    formatter = logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if is_main_process:
        handlers.append(logging.FileHandler(output_dir / TRAIN_LOG))
    root = logging.getLogger()
    previous_level = root.level
    root.setLevel(logging.INFO if is_main_process else logging.WARNING)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    return handlers, previous_level


def remove_logging(handlers: list[logging.Handler], previous_level: int) -> None:
    """Undoes `setup_logging`, so that `main` called in-process (tests, notebooks) leaves logging as it found it."""
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(previous_level)


def trim_loss_log(path: Path, step: int) -> None:
    """Drops the records after `step` (logged by a run that then crashed), so a resumed log has each step once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept))
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(
    model, accelerator: Accelerator, eval_dataset, preset: DatasetPreset, data_args: DataArguments, **overlays
) -> dict:
    """mIoU on the evaluation split, each process scoring its shard of it with the same weights."""
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.num_processes > 1:
        # Without SyncBatchNorm (CPU) each process has its own BatchNorm statistics: evaluate (and save) rank 0's.
        for buffer in unwrapped.buffers():
            torch.distributed.broadcast(buffer, src=0)
    model.eval()
    results = evaluate_segmentation(
        unwrapped,
        eval_dataset,
        preset,
        mode=data_args.eval_mode,
        device=accelerator.device,
        num_workers=data_args.dataloader_num_workers,
        show_progress=accelerator.is_main_process,
        **overlays,
    )
    model.train()
    return results


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args = parse_arguments(argv)  # bad values fail here, before any data or model work
    output_dir = Path(args.output_dir)
    report_to = args.report_to
    if report_to == "auto":
        report_to = "tensorboard" if is_tensorboard_available() else "none"
    accelerator = Accelerator(
        # accelerate counts a multi-process launch without GPUs as distributed only with cpu=True
        cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if report_to == "none" else report_to,
        project_dir=str(output_dir),
    )
    lock, lock_error, lock_note = OutputDirLock(output_dir), None, None
    if accelerator.is_main_process:
        try:
            lock_note = lock.acquire()
        except RuntimeError as err:
            lock_error = str(err)
    if accelerator.num_processes > 1:
        lock_error = broadcast_object_list([lock_error])[0]
    if lock_error:
        raise RuntimeError(lock_error)
    handlers, previous_level = setup_logging(output_dir, accelerator.is_main_process)
    if lock_note:
        logger.warning(lock_note, main_process_only=True)
    try:
        result = train(accelerator, model_args, data_args, args, output_dir)
    except Exception:
        if accelerator.is_main_process:  # the traceback, for the record; the console gets the error itself
            with open(output_dir / TRAIN_LOG, "a") as log_file:
                log_file.write(f"Training failed:\n{traceback.format_exc()}")
        raise
    finally:
        remove_logging(handlers, previous_level)
        lock.release()
    # Only now that train()'s model (DDP) and loaders are gone: freeing them after the process group can hang.
    accelerator.end_training()
    return result


def train(
    accelerator: Accelerator,
    model_args: ModelArguments,
    data_args: DataArguments,
    args: TrainArguments,
    output_dir: Path,
) -> dict:
    """The run itself, in a locked output folder with logging set up (see :func:`main`)."""
    set_seed(args.seed)
    saved_config = (
        SegRetConfig.from_pretrained(model_args.model_name_or_path) if model_args.model_name_or_path else None
    )
    # The paper's scales depend on the variant (Large: ADE20K at 640); a saved model's config tells which it is.
    variant = model_variant(saved_config) if saved_config is not None else model_args.variant
    preset = resolve_preset(data_args, variant)

    # ---- which run: a new one, or the checkpoint to resume (checked now, before the data and model are built)
    identity = run_identity(model_args, args, preset, accelerator.num_processes)
    candidates: list[Path] = []
    if args.resume_from_checkpoint:
        candidates = resume_candidates(output_dir, args.resume_from_checkpoint)
        if not candidates and list_checkpoints(output_dir):
            reasons = [
                f"{path.name}: {checkpoint_problem(path) or 'complete, but of another run than run.json names'}"
                for _, path in list_checkpoints(output_dir)
            ]
            raise RuntimeError(
                f"No checkpoint of this run in {output_dir} can be resumed from ({'; '.join(reasons)}). To continue "
                "from another run's checkpoint, name its folder: --resume_from_checkpoint DIR/checkpoint-N (with "
                "--ignore_run_mismatch if its recipe differs); to start afresh, pass --overwrite_output_dir instead."
            )
        if not candidates:
            logger.warning(f"No checkpoint in {output_dir}: starting from scratch", main_process_only=True)
        for checkpoint in candidates:
            check_run_identity(checkpoint, identity, args.ignore_run_mismatch)
    else:
        existing = [path.name for _, path in list_checkpoints(output_dir)]
        if existing and not args.overwrite_output_dir:
            raise ValueError(
                f"{output_dir} already holds checkpoints ({', '.join(existing)}). Pass --resume_from_checkpoint "
                "latest to continue that run, choose another --output_dir, or pass --overwrite_output_dir to start "
                "a new run there (the other run's checkpoints are left alone)."
            )
    if saved_config is not None:
        if saved_config.num_labels != preset.num_labels and not model_args.ignore_mismatched_sizes:
            raise ValueError(
                f"{model_args.model_name_or_path} predicts {saved_config.num_labels} classes but the {preset.name} "
                f"data has {preset.num_labels}. Pass --ignore_mismatched_sizes to fine-tune it with a new, randomly "
                "initialised segmentation head."
            )

    # ---- data
    source = data_args.dataset_path
    if data_args.dataset == "synthetic" and (source is None or not Path(source).exists()):
        # Generated on first use (and again if the requested sizes change); an existing folder given is used as is.
        source = source or "data/synthetic"
        if accelerator.is_main_process:
            generate_synthetic(source, data_args.synthetic_num_train, data_args.synthetic_num_validation)
        accelerator.wait_for_everyone()
    single = single_split_source(source)
    if single and not data_args.eval_dataset_path:
        raise DataError(
            f"--dataset_path {source} is {single}: it would be used for training and evaluation alike, and the "
            "validation numbers would be computed on training rows. Pass the validation data with "
            "--eval_dataset_path (a file, saved split, folder or Hub id), or give a folder with both splits."
        )
    dataset_kwargs = {"revision": data_args.dataset_revision, "data_dir": data_args.dataset_data_dir}
    train_dataset = build_dataset(
        preset, source=source, split=data_args.train_split, train=True, max_samples=data_args.max_train_samples,
        **dataset_kwargs,
    )  # fmt: skip
    if preset.name == "generic":
        preset = scales_from_data(preset, train_dataset, data_args)
        train_dataset.preset = preset
        train_dataset.transform = TrainTransform(preset.train_scale, preset.crop_size)
    eval_source = data_args.eval_dataset_path or source
    eval_dataset = build_dataset(
        preset, source=eval_source, split=data_args.eval_split, train=False, max_samples=data_args.max_eval_samples,
        **dataset_kwargs,
    )  # fmt: skip
    # A bad label in the evaluation split would otherwise surface only after training, at the first evaluation.
    started = time.perf_counter()
    verify_labels(eval_dataset, len(eval_dataset))
    logger.info(
        f"Evaluation labels checked: {len(eval_dataset)} rows in {time.perf_counter() - started:.1f} s",
        main_process_only=True,
    )
    train_data = SeededAugmentation(train_dataset, args.seed)
    sampler = EpochShuffleSampler(
        len(train_data),
        args.per_device_train_batch_size,
        args.seed,
        accelerator.process_index,
        accelerator.num_processes,
    )
    train_loader = torch.utils.data.DataLoader(
        train_data,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        collate_fn=collate_train,
        num_workers=data_args.dataloader_num_workers,
        pin_memory=accelerator.device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
        # Worker seeds come from this generator, not the global RNG, so creating a loader consumes no global draws.
        generator=torch.Generator().manual_seed(args.seed),
    )

    # ---- model
    label_names = {"id2label": preset.id2label, "label2id": {name: i for i, name in preset.id2label.items()}}
    if model_args.model_name_or_path:
        model = SegRetForSemanticSegmentation.from_pretrained(
            model_args.model_name_or_path,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            num_labels=preset.num_labels,
            **label_names,
        )
    else:
        overrides = {"loss_average_over_all_pixels": model_args.loss_average_over_all_pixels, **label_names}
        if model_args.drop_path_rate is not None:
            overrides["drop_path_rate"] = model_args.drop_path_rate
        model = SegRetForSemanticSegmentation(segret_variant_config(model_args.variant, **overrides))
    if model_args.backbone_checkpoint:
        weights = convert_rmt_state_dict(load_checkpoint(model_args.backbone_checkpoint), model.config)
        model.segret.load_state_dict(weights, strict=True)
        logger.info(f"Backbone initialised from {model_args.backbone_checkpoint}", main_process_only=True)
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        # The paper trains with SyncBatchNorm (backbone and decoder); gloo/CPU has no SyncBatchNorm kernel.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    processor = SegRetImageProcessor(
        size={"longest_edge": preset.test_scale[0], "shortest_edge": preset.test_scale[1]},
        do_reduce_labels=bool(preset.label_lut[0] == 255 and preset.label_lut[1] == 0),
    )

    optimizer = torch.optim.AdamW(
        parameter_groups(model, args), betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_poly_schedule(args))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    # ---- resume (falling back to the previous complete checkpoint when the newest cannot be loaded)
    step, epoch, batch_in_epoch = 0, 0, 0
    run_id = uuid.uuid4().hex
    for index, checkpoint in enumerate(candidates):
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as err:
            if index + 1 == len(candidates):
                raise RuntimeError(f"Could not load the checkpoint {checkpoint}: {type(err).__name__}: {err}") from err
            logger.warning(
                f"Could not load {checkpoint} ({type(err).__name__}: {err}); falling back to {candidates[index + 1]}",
                main_process_only=True,
            )
            continue
        state = _checkpoint_state(checkpoint)
        step, epoch, batch_in_epoch = (state[key] for key in TRAINER_STATE_KEYS)
        run_id = state.get("run_id") or run_id
        logger.info(f"Resumed from {checkpoint} at step {step}", main_process_only=True)
        break
    run = {"run_id": run_id, "identity": identity}

    loss_log = output_dir / LOSS_LOG
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for leftover in output_dir.glob(".deleting-checkpoint-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a prune interrupted by a kill
        (output_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
        if step:
            trim_loss_log(loss_log, step)
        else:
            loss_log.unlink(missing_ok=True)  # a new run's log
        recipe = {**asdict(model_args), **asdict(data_args), **asdict(args)}
        recipe["num_processes"] = accelerator.num_processes
        recipe["total_train_batch_size"] = (
            args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        )
        (output_dir / "training_args.json").write_text(json.dumps(recipe, indent=2))
    accelerator.init_trackers("segret", config={k: v for k, v in asdict(args).items() if v is not None})
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"SegRet-{model_args.variant} on {preset.name}: {len(train_dataset)} training images, {len(eval_dataset)} for "
        f"evaluation; {args.max_steps} steps of {global_batch} images; output in {output_dir}",
        main_process_only=True,
    )

    # ---- train
    model.train()
    stop_at = min(args.max_steps, args.stop_after_steps or args.max_steps)
    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    history: list[dict] = []
    window_start, window_images = time.perf_counter(), 0
    eval_results: dict = {}
    while step < stop_at:
        sampler.set_position(epoch, batch_in_epoch)
        train_data.epoch = epoch
        for batch in train_loader:
            batch = {key: value.to(accelerator.device, non_blocking=True) for key, value in batch.items()}
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"Non-finite loss ({loss.item()}) at step {step + 1}; the last good checkpoint is kept in "
                        f"{output_dir}. Lower the learning rate or use bf16 instead of fp16."
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            batch_in_epoch += 1
            window_images += batch["pixel_values"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if step % args.logging_steps == 0 or step == stop_at:
                mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    "loss": mean_loss,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "images_per_second": window_images / elapsed,
                }
                history.append(record)
                if accelerator.is_main_process:  # appended as it goes: a crash keeps the log of the steps before it
                    with open(loss_log, "a") as log_file:
                        log_file.write(json.dumps(record) + "\n")
                progress.set_postfix(
                    loss=f"{mean_loss:.4f}",
                    lr=f"{record['learning_rate']:.2e}",
                    img_s=f"{record['images_per_second']:.1f}",
                )
                logger.info(json.dumps(record), main_process_only=True)
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                window_start, window_images = time.perf_counter(), 0
            if step % args.save_steps == 0 or step == stop_at:
                saved = save_checkpoint(
                    accelerator, output_dir, step, epoch, batch_in_epoch, args.save_total_limit, run
                )
                logger.info(f"Checkpoint saved to {saved}", main_process_only=True)
            if step % args.eval_steps == 0 and step < args.max_steps:
                eval_results = evaluate(model, accelerator, eval_dataset, preset, data_args)
                accelerator.log({"eval/mean_iou": eval_results["mean_iou"]}, step=step)
                logger.info(f"step {step}: mIoU {100 * eval_results['mean_iou']:.2f}", main_process_only=True)
            if step >= stop_at:
                break
        else:  # the epoch ran out
            epoch, batch_in_epoch = epoch + 1, 0
    progress.close()

    if step < args.max_steps:
        logger.info(
            f"Stopped at step {step} of {args.max_steps}; resume with --resume_from_checkpoint latest",
            main_process_only=True,
        )
        return {"global_step": step, "history": history}

    # ---- final model, then its evaluation (a failing evaluation must not cost the trained model)
    if accelerator.num_processes > 1:
        # Without SyncBatchNorm (CPU) each process has its own BatchNorm statistics: save (and evaluate) rank 0's.
        for buffer in accelerator.unwrap_model(model).buffers():
            torch.distributed.broadcast(buffer, src=0)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if any(isinstance(module, torch.nn.SyncBatchNorm) for module in unwrapped.modules()):
            unwrapped = revert_sync_batchnorm(unwrapped)
        unwrapped.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        logger.info(f"Model saved to {output_dir}", main_process_only=True)
    eval_results = evaluate(
        model, accelerator, eval_dataset, preset, data_args, overlay_dir=output_dir / "overlays",
        num_overlays=args.num_overlays,
    )  # fmt: skip
    if accelerator.is_main_process:
        print(format_table(eval_results, preset.class_names))
        summary = summarize(
            eval_results, preset, eval_dataset.split, data_args.eval_mode, model=str(output_dir),
            source=eval_source or preset.hub_id, variant=variant, global_step=step,
            num_processes=accelerator.num_processes,
        )  # fmt: skip
        (output_dir / "eval_results.json").write_text(json.dumps(summary, indent=2) + "\n")
        logger.info(f"mIoU {summary['mIoU']:.2f}; model and results in {output_dir}", main_process_only=True)
    return {"global_step": step, "history": history, "eval": eval_results}


def revert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm -> BatchNorm2d (same parameters and statistics) so the saved model is the plain architecture."""
    converted = module
    if isinstance(module, torch.nn.SyncBatchNorm):
        converted = torch.nn.BatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        converted.load_state_dict(module.state_dict())
    for name, child in module.named_children():
        converted.add_module(name, revert_sync_batchnorm(child))
    return converted


if __name__ == "__main__":
    try:
        main()
    except (ValueError, RuntimeError, FileNotFoundError, FloatingPointError) as error:  # the message says what to do
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
