"""The training recipe: its fields (model, data, training), how a YAML/JSON recipe and `--field value` arguments
become them, their validation, and the dataset preset they resolve to.

    model_args, data_args, args = parse_arguments(["configuration/recipes/demo.yaml", "--max_steps", "100"])
    preset = resolve_preset(data_args, variant="tiny")

Every field is a command-line flag of `training/train.py` (`--help` lists them). Bad values fail here, in seconds,
before any data or model work, with one line per problem. `RUN_IDENTITY_FIELDS` names the fields that define a run:
a checkpoint is only resumed with the same values (`training/checkpoints.py` checks them).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from transformers import HfArgumentParser

from modeling_segret import SEGRET_VARIANTS
from training.data import SegmentationDataset, image_sizes, parse_class_names
from training.presets import PRESET_NAMES, DatasetPreset, get_preset

logger = logging.getLogger(__name__)
# The recipe fields that define a run: resuming with other values would silently continue another schedule.
RUN_IDENTITY_FIELDS = (
    "variant", "model_name_or_path", "dataset", "class_names", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps", "num_processes", "max_steps", "seed",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ fields
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
            "help": "with model_name_or_path: new, randomly initialised weights where the number of classes differs "
            "or the checkpoint lacks them (a backbone-only checkpoint)"
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
    streaming: bool = field(
        default=False,
        metadata={
            "help": "read the training split as a stream (a Hub id or local parquet files), without converting or "
            "caching it; the evaluation split is loaded as usual"
        },
    )
    shuffle_buffer_size: int = field(
        default=1000, metadata={"help": "with --streaming: rows mixed in the shuffle buffer (seeded by seed + epoch)"}
    )
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


# ------------------------------------------------------------------------------------------------ parsing
# Any number, negative ones included ("-1e-3", "-.5", "-inf"): see `parse_arguments`.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (YAML forbids it; PyYAML would
    silently keep the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_lines: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden, as YAML intends
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in first_lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"field {key!r} is given twice, on lines {first_lines[key]} and {line}; keep one",
                    key_node.start_mark,
                )  # fmt: skip
            first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def load_recipe_file(path: str | Path) -> dict:
    """The `field: value` mapping of a YAML or JSON recipe file; errors name the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read the recipe {path}: {err.strerror or err}") from err
    try:
        recipe = yaml.load(text, Loader=_RecipeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = err.problem or err.context or "invalid YAML"
        lines = text.splitlines()
        if mark and mark.line < len(lines) and "\t" in lines[mark.line][: mark.column + 1]:
            problem += " (indent with spaces, not tabs)"
        raise ValueError(f"{where}: {problem}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML or JSON ({err})") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        kind = {list: "a list", str: "a single string"}.get(type(recipe), f"a {type(recipe).__name__}")
        raise ValueError(f"{path}: the recipe must be a mapping of field: value (one per line), got {kind}")
    return recipe


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _type_problem(name: str, value: object, annotation: object) -> str | None:
    """Why the recipe's `value` cannot be the field `name` annotated `annotation` (`int`, `float | None` ...), or
    None. Strings are converted as on the command line ("4" -> 4); lists are checked by `validate_arguments`."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    base = next((member for member in members if member is not type(None)), None)
    if (value is None and type(None) in members) or base not in _TYPE_NAMES:
        return None
    if base is bool:
        ok = isinstance(value, bool) or str(value).lower() in ("true", "false", "yes", "no", "1", "0")
    elif base is str:
        ok = isinstance(value, str)
    elif isinstance(value, bool):
        ok = False
    elif isinstance(value, str):
        try:
            ok = base(value) is not None
        except ValueError:
            ok = False
    else:
        ok = isinstance(value, int) or (base is float and isinstance(value, float))
    if ok:
        return None
    hint = " (quote it)" if base is str else ""
    return f"{name} must be {_TYPE_NAMES[base]}{hint}, got {value!r} ({type(value).__name__})"


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """A YAML/JSON recipe (first argument, optional) overridden by `--field value` arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainArguments))
    # argparse takes "-1e-3" for an option (it knows only "-1" and "-.5" as negative numbers); no flag of this parser
    # looks like a number, so every number-like word is a value, and validation rejects a bad one by name.
    parser._negative_number_matcher = NEGATIVE_NUMBER
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        recipe_path = Path(argv.pop(0))
        recipe = load_recipe_file(recipe_path)
        fields = {name: hint for kind in parser.dataclass_types for name, hint in typing.get_type_hints(kind).items()}
        unknown = sorted(set(recipe) - set(fields))
        if unknown:
            raise ValueError(f"{recipe_path}: unknown fields {unknown}")
        wrong_types = [_type_problem(name, value, fields[name]) for name, value in recipe.items()]
        wrong_types = [problem for problem in wrong_types if problem]
        if wrong_types:
            raise ValueError(f"{recipe_path}: " + "; ".join(wrong_types))
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
    need(
        data_args.shuffle_buffer_size >= 1,
        f"--shuffle_buffer_size must be at least 1, got {data_args.shuffle_buffer_size}",
    )
    if data_args.streaming:
        # A stream has no length and no random access: nothing may need either before training starts.
        need(
            data_args.max_train_samples is None,
            "--max_train_samples needs a map-style dataset; with --streaming, stream a smaller file instead",
        )
        missing_scales = [n for n in ("crop_size", "train_scale", "test_scale") if getattr(data_args, n) is None]
        need(
            data_args.dataset != "generic" or not missing_scales,
            f"--streaming with --dataset generic needs {', '.join('--' + n for n in missing_scales)}: they are "
            "otherwise derived from the median size of the training images, which a stream cannot read up front",
        )
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


# ------------------------------------------------------------------------------------------------ dataset preset
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
        logger.info(
            f"generic preset: {', '.join(f'{k}={v}' for k, v in chosen.items())} derived from the median size of "
            f"{len(sizes)} training images; pass --crop_size/--train_scale/--test_scale to choose others",
        )
    return replace(preset, **chosen)


# ------------------------------------------------------------------------------------------------ run identity
def run_identity(model_args: ModelArguments, args: TrainArguments, preset: DatasetPreset, num_processes: int) -> dict:
    """The recipe's fields that must not change when a run is resumed (`RUN_IDENTITY_FIELDS`)."""
    values = {**asdict(model_args), **asdict(args), "num_processes": num_processes, "dataset": preset.name}
    values["class_names"] = list(preset.class_names)
    if model_args.model_name_or_path:
        values["variant"] = None  # the saved model's
    return {name: values[name] for name in RUN_IDENTITY_FIELDS}
