"""Train SegRet with Accelerate.

    accelerate launch training/train.py configuration/recipes/<recipe>.yaml [--field value ...]


One script from a single CPU to several machines: Accelerate sets up the processes, devices and mixed precision; the
loop below is plain PyTorch. The schedule is iteration-based, as in the paper (MMSegmentation): AdamW, linear
warm-up, then polynomial decay. Checkpoints hold everything needed to continue exactly (model, optimizer,
scheduler, RNG states, data position) and are written atomically; `--resume_from_checkpoint latest` continues a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import is_tensorboard_available, set_seed
from tqdm.auto import tqdm
from transformers import HfArgumentParser

if __package__ in (None, ""):
    # Run as a script: import the repository, and keep training/ off sys.path, where evaluate.py would shadow the
    # `evaluate` library.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from modeling_segret import SegRetConfig, SegRetForSemanticSegmentation, SegRetImageProcessor, segret_variant_config
from modeling_segret.convert_rmt_checkpoint import convert_rmt_state_dict, load_checkpoint
from training.data import SegmentationDataset, build_dataset, collate_train
from training.evaluate import evaluate_segmentation, model_variant, summarize
from training.metrics import format_table
from training.presets import DatasetPreset, get_preset
from training.synthetic import generate as generate_synthetic

logger = get_logger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


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
    dataset_revision: str | None = None
    dataset_data_dir: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    num_labels: int | None = field(default=None, metadata={"help": "generic preset: number of classes"})
    reduce_labels: bool = field(default=False, metadata={"help": "generic preset: raw 0 is ignored, v -> v-1"})
    label_encoding: str = field(default="labelIds", metadata={"help": "cityscapes: labelIds or trainIds"})
    crop_size: list[int] | None = field(default=None, metadata={"help": "training crop (height width)"})
    train_scale: list[int] | None = field(default=None, metadata={"help": "keep-ratio resize bound (long short)"})
    test_scale: list[int] | None = field(default=None, metadata={"help": "evaluation resize bound (long short)"})
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
    if data_args.eval_mode not in ("ss", "slide", "ms"):
        raise ValueError(f"eval_mode must be ss, slide or ms, got {data_args.eval_mode!r}")
    return model_args, data_args, train_args


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
def find_checkpoint(output_dir: Path, which: str) -> Path | None:
    """`latest` -> the newest complete checkpoint in output_dir (or None); otherwise the folder given."""
    if which != "latest":
        path = Path(which)
        if not (path / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.json)")
        return path
    complete = [
        (int(match.group(1)), path)
        for path in output_dir.glob("checkpoint-*")
        if (match := CHECKPOINT_PATTERN.match(path.name)) and (path / "trainer_state.json").is_file()
    ]
    return max(complete)[1] if complete else None


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, epoch: int, batch: int, limit: int) -> Path:
    """Accelerate state in a temporary folder, renamed into place once complete; keeps the newest `limit`."""
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)  # left over by a crash
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {
            "global_step": step,
            "epoch": epoch,
            "batch_in_epoch": batch,
            "num_processes": accelerator.num_processes,
        }
        (temporary / "trainer_state.json").write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)  # atomic on one filesystem: a checkpoint is complete or absent
        checkpoints = sorted(
            (int(m.group(1)), p) for p in output_dir.glob("checkpoint-*") if (m := CHECKPOINT_PATTERN.match(p.name))
        )
        for _, old in checkpoints[: max(len(checkpoints) - limit, 0)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


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
    model_args, data_args, args = parse_arguments(argv)
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
    set_seed(args.seed)

    # ---- data
    saved = model_args.model_name_or_path
    variant = model_variant(SegRetConfig.from_pretrained(saved)) if saved else model_args.variant
    preset = resolve_preset(data_args, variant)
    source = data_args.dataset_path
    if data_args.dataset == "synthetic" and (source is None or not Path(source).exists()):
        # Generated on first use (and again if the requested sizes change); an existing folder given is used as is.
        source = source or "data/synthetic"
        if accelerator.is_main_process:
            generate_synthetic(source, data_args.synthetic_num_train, data_args.synthetic_num_validation)
        accelerator.wait_for_everyone()
    dataset_kwargs = {"source": source, "revision": data_args.dataset_revision, "data_dir": data_args.dataset_data_dir}
    train_dataset = build_dataset(
        preset, split=data_args.train_split, train=True, max_samples=data_args.max_train_samples, **dataset_kwargs
    )
    eval_dataset = build_dataset(
        preset, split=data_args.eval_split, train=False, max_samples=data_args.max_eval_samples, **dataset_kwargs
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
        model = SegRetForSemanticSegmentation.from_pretrained(model_args.model_name_or_path, **label_names)
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

    # ---- resume
    step, epoch, batch_in_epoch = 0, 0, 0
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir, args.resume_from_checkpoint)
        if checkpoint is None:
            logger.info(f"No checkpoint in {output_dir}: starting from scratch", main_process_only=True)
        else:
            accelerator.load_state(str(checkpoint))
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            step, epoch, batch_in_epoch = state["global_step"], state["epoch"], state["batch_in_epoch"]
            logger.info(f"Resumed from {checkpoint} at step {step}", main_process_only=True)

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
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
        f"evaluation; {args.max_steps} steps of {global_batch} images",
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
                progress.set_postfix(
                    loss=f"{mean_loss:.4f}",
                    lr=f"{record['learning_rate']:.2e}",
                    img_s=f"{record['images_per_second']:.1f}",
                )
                logger.info(json.dumps(record), main_process_only=True)
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                window_start, window_images = time.perf_counter(), 0
            if step % args.save_steps == 0 or step == stop_at:
                save_checkpoint(accelerator, output_dir, step, epoch, batch_in_epoch, args.save_total_limit)
            if step % args.eval_steps == 0 and step < args.max_steps:
                eval_results = evaluate(model, accelerator, eval_dataset, preset, data_args)
                accelerator.log({"eval/mean_iou": eval_results["mean_iou"]}, step=step)
                logger.info(f"step {step}: mIoU {100 * eval_results['mean_iou']:.2f}", main_process_only=True)
            if step >= stop_at:
                break
        else:  # the epoch ran out
            epoch, batch_in_epoch = epoch + 1, 0
    progress.close()
    if accelerator.is_main_process:
        with open(output_dir / "loss_history.jsonl", "a") as log_file:
            log_file.writelines(json.dumps(record) + "\n" for record in history)

    if step < args.max_steps:
        logger.info(
            f"Stopped at step {step} of {args.max_steps}; resume with --resume_from_checkpoint latest",
            main_process_only=True,
        )
        accelerator.end_training()
        return {"global_step": step, "history": history}

    # ---- final evaluation and model
    eval_results = evaluate(
        model, accelerator, eval_dataset, preset, data_args, overlay_dir=output_dir / "overlays",
        num_overlays=args.num_overlays,
    )  # fmt: skip
    if accelerator.is_main_process:
        print(format_table(eval_results, preset.class_names))
        unwrapped = accelerator.unwrap_model(model)
        if any(isinstance(module, torch.nn.SyncBatchNorm) for module in unwrapped.modules()):
            unwrapped = revert_sync_batchnorm(unwrapped)
        unwrapped.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        summary = summarize(
            eval_results, preset, eval_dataset.split, data_args.eval_mode, model=str(output_dir),
            source=source or preset.hub_id, variant=variant, global_step=step,
            num_processes=accelerator.num_processes,
        )  # fmt: skip
        (output_dir / "eval_results.json").write_text(json.dumps(summary, indent=2) + "\n")
        logger.info(f"mIoU {summary['mIoU']:.2f}; model saved to {output_dir}", main_process_only=True)
    accelerator.end_training()
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
    main()
