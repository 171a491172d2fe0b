"""Train SegRet with Accelerate.

    accelerate launch training/train.py configuration/recipes/<recipe>.yaml [--field value ...]
    python -m training.train configuration/recipes/<recipe>.yaml [--field value ...]     # one process, the same


One script from a single CPU to several machines: Accelerate sets up the processes, devices and mixed precision; the
loop below is plain PyTorch. The schedule is iteration-based, as in the paper (MMSegmentation): AdamW, linear
warm-up, then polynomial decay. Checkpoints hold everything needed to continue exactly (model, optimizer,
scheduler, RNG states, data position) and are written atomically; `--resume_from_checkpoint latest` continues a run.
SIGTERM or Ctrl-C stops the run at the next step boundary with a checkpoint (exit code 128 + the signal).

`train` is the run, top to bottom; what it calls lives in a module named for its job: the recipe (fields, parsing,
validation, dataset preset) in `training/recipe.py`, the data and the resumable sampler in `training/data.py`, the
checkpoints in `training/checkpoints.py`, the output folder (lock, run record, logs) in `training/run_folder.py`
and the evaluation in `training/evaluation.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, is_tensorboard_available, set_seed
from safetensors import SafetensorError
from tqdm.auto import tqdm

from modeling_segret import SegRetConfig, SegRetForSemanticSegmentation, SegRetImageProcessor, segret_variant_config
from modeling_segret.convert_rmt_checkpoint import convert_rmt_state_dict, load_checkpoint
from training.checkpoints import (
    TRAINER_STATE_KEYS,
    CheckpointWriteError,
    checkpoints_to_resume,
    clear_interrupted_removals,
    load_newest,
    read_rank_state,
    save_checkpoint,
    write_failure,
)
from training.data import (
    EpochShuffleSampler,
    SeededAugmentation,
    SegmentationDataset,
    StreamAugmentation,
    StreamBatchSampler,
    TrainStream,
    UnlabelledBatchCheck,
    build_dataset,
    check_split_labels,
    collate_train,
    load_train_stream,
    single_split_source,
)
from training.data_wait import STARVED_FRACTION, DataWaitMeter, starvation_advice
from training.evaluation import evaluate_segmentation, model_variant, summarize, warn_absent_classes, write_results
from training.metrics import format_table
from training.presets import DataError, DatasetPreset
from training.recipe import (
    DataArguments,
    ModelArguments,
    TrainArguments,
    parse_arguments,
    resolve_preset,
    run_identity,
    scales_from_data,
)
from training.run_folder import (
    StopRequest,
    TrainingInterrupted,
    append_loss_record,
    claim_output_dir,
    decide_on_main_process,
    record_run,
)
from training.synthetic import generate as generate_synthetic
from training.transforms import TrainTransform, single_threaded_opencv

LABEL_CHECK_FILE = "label_check.json"  # in the output folder: the evaluation label checks that passed
logger = get_logger(__name__)  # accelerate's: main_process_only=...; needs an Accelerator


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


def warmup_poly_schedule(args: TrainArguments) -> Callable[[int], float]:
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


# ------------------------------------------------------------------------------------------------ data and model
def load_data(
    accelerator: Accelerator, preset: DatasetPreset, data_args: DataArguments, output_dir: Path, seed: int
) -> tuple[DatasetPreset, SegmentationDataset | TrainStream, SegmentationDataset, str | None]:
    """The training and evaluation splits, every evaluation label checked; returns the preset (the generic one with
    the scales of its data), the training data (with `--streaming` this process's share of the stream, shuffled by
    `seed`), the evaluation data, and where the evaluation data came from."""
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
    if data_args.streaming:
        train_dataset = load_train_stream(
            preset, source, data_args.train_split or preset.train_split, seed=seed,
            shuffle_buffer_size=data_args.shuffle_buffer_size, rank=accelerator.process_index,
            world_size=accelerator.num_processes, **dataset_kwargs,
        )  # fmt: skip
    else:
        train_dataset = build_dataset(
            preset, source=source, split=data_args.train_split, train=True, max_samples=data_args.max_train_samples,
            **dataset_kwargs,
        )  # fmt: skip
    if preset.name == "generic" and not data_args.streaming:  # streaming: the recipe gives the scales (recipe.py)
        preset = scales_from_data(preset, train_dataset, data_args)
        train_dataset.preset = preset
        train_dataset.transform = TrainTransform(preset.train_scale, preset.crop_size)
    eval_source = data_args.eval_dataset_path or source
    eval_dataset = build_dataset(
        preset, source=eval_source, split=data_args.eval_split, train=False, max_samples=data_args.max_eval_samples,
        **dataset_kwargs,
    )  # fmt: skip
    # A bad label in the evaluation split would otherwise surface only after training, at the first evaluation.
    # Each process scans its share; a passed check is remembered in the output folder, so a resume skips it.
    started = time.perf_counter()
    scanned = check_split_labels(
        eval_dataset,
        output_dir / LABEL_CHECK_FILE,
        accelerator.process_index,
        accelerator.num_processes,
        gather_object,
    )
    logger.info(
        f"Evaluation labels checked: {len(eval_dataset)} rows in {time.perf_counter() - started:.1f} s"
        if scanned
        else f"Evaluation labels: {len(eval_dataset)} rows passed the check before ({output_dir / LABEL_CHECK_FILE})",
        main_process_only=True,
    )
    return preset, train_dataset, eval_dataset, eval_source


def build_model(
    accelerator: Accelerator, model_args: ModelArguments, preset: DatasetPreset
) -> SegRetForSemanticSegmentation:
    """A saved model or a new one of the variant, with the preset's classes (and the official backbone weights)."""
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
    return model


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate_model(
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


# ------------------------------------------------------------------------------------------------ the run
def train(
    accelerator: Accelerator,
    model_args: ModelArguments,
    data_args: DataArguments,
    args: TrainArguments,
    output_dir: Path,
    stop: StopRequest | None = None,
) -> dict:
    """The run itself, in a locked output folder with logging set up (see :func:`main`); `stop` ends it at a step
    boundary with a checkpoint (:class:`TrainingInterrupted`)."""
    set_seed(args.seed)
    saved_config = (
        SegRetConfig.from_pretrained(model_args.model_name_or_path) if model_args.model_name_or_path else None
    )
    # The paper's scales depend on the variant (Large: ADE20K at 640); a saved model's config tells which it is.
    variant = model_variant(saved_config) if saved_config is not None else model_args.variant
    preset = resolve_preset(data_args, variant)

    # ---- which run: a new one, or the checkpoint to resume (checked now, before the data and model are built);
    # the main process decides, so every machine resumes the same checkpoint
    identity = run_identity(model_args, args, preset, accelerator.num_processes)
    candidates = decide_on_main_process(
        accelerator, checkpoints_to_resume, output_dir, args.resume_from_checkpoint, identity,
        args.ignore_run_mismatch, args.overwrite_output_dir,
    )  # fmt: skip
    if args.resume_from_checkpoint and not candidates:
        logger.warning(f"No checkpoint in {output_dir}: starting from scratch", main_process_only=True)
    if saved_config is not None:
        if saved_config.num_labels != preset.num_labels and not model_args.ignore_mismatched_sizes:
            raise ValueError(
                f"{model_args.model_name_or_path} predicts {saved_config.num_labels} classes but the {preset.name} "
                f"data has {preset.num_labels}. Pass --ignore_mismatched_sizes to fine-tune it with a new, randomly "
                "initialised segmentation head."
            )

    # ---- data: the order of the training samples depends only on (seed, epoch), so a resume continues it exactly
    preset, train_dataset, eval_dataset, eval_source = load_data(accelerator, preset, data_args, output_dir, args.seed)
    if data_args.streaming:  # read in this process, in batches; the workers decode and augment
        train_data = StreamAugmentation(train_dataset, args.seed, accelerator.process_index)
        sampler = StreamBatchSampler(train_dataset, args.per_device_train_batch_size)
        batching = {"batch_sampler": sampler}
    else:
        train_data = SeededAugmentation(train_dataset, args.seed)
        sampler = EpochShuffleSampler(
            len(train_data),
            args.per_device_train_batch_size,
            args.seed,
            accelerator.process_index,
            accelerator.num_processes,
        )
        batching = {"batch_size": args.per_device_train_batch_size, "sampler": sampler, "drop_last": True}
    if data_args.dataloader_num_workers > 0:
        single_threaded_opencv()  # before the workers are forked (see its docstring)
    train_loader = torch.utils.data.DataLoader(
        train_data,
        **batching,
        collate_fn=collate_train,
        num_workers=data_args.dataloader_num_workers,
        pin_memory=accelerator.device.type == "cuda",
        # Workers start once, not at every epoch (the epoch travels with the sampler's keys). Each keeps 2 batches
        # ready (PyTorch's default, on purpose: 16 crops of 512² are 50 MB, and N workers hold 2N batches).
        persistent_workers=data_args.dataloader_num_workers > 0,
        prefetch_factor=2 if data_args.dataloader_num_workers > 0 else None,
        worker_init_fn=single_threaded_opencv,
        # Worker seeds come from this generator, not the global RNG, so creating a loader consumes no global draws.
        generator=torch.Generator().manual_seed(args.seed),
    )

    # ---- model, optimizer, schedule
    model = build_model(accelerator, model_args, preset)
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
    if (loaded := load_newest(accelerator, candidates)) is not None:
        checkpoint, state = loaded
        step, epoch, batch_in_epoch = (state[key] for key in TRAINER_STATE_KEYS)
        run_id = state.get("run_id") or run_id
        # A stream's position is each process's own: its share of the rows, hence its epochs, differ in length.
        rank_state = read_rank_state(checkpoint, accelerator.process_index)
        if data_args.streaming != (rank_state is not None):
            raise ValueError(
                f"{checkpoint} was written by a run {'without' if data_args.streaming else 'with'} --streaming; "
                f"resume it {'without' if data_args.streaming else 'with'} --streaming (the data position differs)"
            )
        if rank_state is not None:
            epoch, batch_in_epoch = rank_state["epoch"], rank_state["batch_in_epoch"]
        logger.info(f"Resumed from {checkpoint} at step {step}", main_process_only=True)
        if scheduler.scheduler.last_epoch != step:
            # Checkpoints written before the schedule was stepped once per optimizer step stepped it once per process.
            logger.warning(
                f"{checkpoint} stored the schedule at step {scheduler.scheduler.last_epoch}: set to step {step}",
                main_process_only=True,
            )
            set_schedule_step(scheduler.scheduler, step)
    run = {"run_id": run_id, "identity": identity}
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        clear_interrupted_removals(output_dir)
        recipe = {**asdict(model_args), **asdict(data_args), **asdict(args)}
        recipe.update(num_processes=accelerator.num_processes, total_train_batch_size=global_batch)
        record_run(output_dir, run, recipe, step)
    accelerator.init_trackers("segret", config={k: v for k, v in asdict(args).items() if v is not None})
    logger.info(
        f"SegRet-{model_args.variant} on {preset.name}: "
        f"{'streamed' if data_args.streaming else len(train_dataset)} training images, {len(eval_dataset)} for "
        f"evaluation; {args.max_steps} steps of {global_batch} images; output in {output_dir}",
        main_process_only=True,
    )

    # ---- train
    model.train()
    stop_at = min(args.max_steps, args.stop_after_steps or args.max_steps)
    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    history: list[dict] = []
    window_start, window_images = time.perf_counter(), 0
    data_wait, starvation_warned = DataWaitMeter(), False
    eval_results: dict = {}
    unlabelled = UnlabelledBatchCheck(f"{train_dataset.source or preset.name}, split {train_dataset.split!r}")
    while step < stop_at:
        sampler.set_position(epoch, batch_in_epoch)
        for batch in data_wait.batches(train_loader):
            unlabelled.update(batch["labels"], batch.pop("index"))
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
                if accelerator.sync_gradients:  # once per optimizer step, whatever the number of processes
                    scheduler.step()
                optimizer.zero_grad()
            batch_in_epoch += 1
            window_images += batch["pixel_values"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += 1
            signal_number = stop.pending(accelerator) if stop is not None else 0  # the same on every process
            progress.update(1)
            if step % args.logging_steps == 0 or step == stop_at:
                mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
                elapsed = time.perf_counter() - window_start
                # The slowest process's share sets the pace: every process waits for it at the gradient all-reduce.
                waited = torch.tensor([data_wait.window_fraction()], device=accelerator.device)
                record = {
                    "step": step,
                    "loss": mean_loss,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "images_per_second": window_images / elapsed,
                    "data_wait_fraction": accelerator.gather(waited).max().item(),
                }
                history.append(record)
                if accelerator.is_main_process:
                    append_loss_record(output_dir, record)
                progress.set_postfix(
                    loss=f"{mean_loss:.4f}",
                    lr=f"{record['learning_rate']:.2e}",
                    img_s=f"{record['images_per_second']:.1f}",
                    data=f"{record['data_wait_fraction']:.0%}",
                )
                if record["data_wait_fraction"] > STARVED_FRACTION and not starvation_warned:
                    advice = starvation_advice(
                        record["data_wait_fraction"], step, data_args.dataloader_num_workers, os.cpu_count() or 1
                    )
                    logger.warning(advice, main_process_only=True)
                    starvation_warned = True
                logger.info(json.dumps(record), main_process_only=True)
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                window_start, window_images = time.perf_counter(), 0
            if step % args.save_steps == 0 or step == stop_at or signal_number:
                saved = save_checkpoint(
                    accelerator, output_dir, step, epoch, batch_in_epoch, args.save_total_limit, run,
                    rank_state={"epoch": epoch, "batch_in_epoch": batch_in_epoch} if data_args.streaming else None,
                )  # fmt: skip
                logger.info(f"Checkpoint saved to {saved}", main_process_only=True)
            if signal_number:
                progress.close()
                message = (
                    f"Stopped by {signal.Signals(signal_number).name} at step {step} of {args.max_steps}, checkpoint "
                    f"{saved}; resume with the same command and --resume_from_checkpoint latest"
                )
                logger.warning(message, main_process_only=True)
                raise TrainingInterrupted(signal_number, message)
            if step % args.eval_steps == 0 and step < args.max_steps:
                eval_results = evaluate_model(model, accelerator, eval_dataset, preset, data_args)
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
    save_final_model(accelerator, model, processor, output_dir, step)
    eval_results = evaluate_model(
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
        warn_absent_classes(eval_results, preset.class_names)
        write_results(output_dir, summary)
        logger.info(f"mIoU {summary['mIoU']}; model and results in {output_dir}", main_process_only=True)
    return {"global_step": step, "history": history, "eval": eval_results}


def set_schedule_step(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Puts the schedule at optimizer step `step` (the learning rates of its parameter groups included)."""
    scheduler.last_epoch = step
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(step)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def save_final_model(
    accelerator: Accelerator, model, processor: SegRetImageProcessor, output_dir: Path, step: int
) -> None:
    """`save_pretrained` of the model and processor by the main process, into a temporary folder moved into place:
    a failed write (full disk) leaves no half-written model, keeps the checkpoint of the last step and says how to
    save from it."""
    error = None
    if accelerator.is_main_process:
        temporary = output_dir / ".tmp-model"
        unwrapped = accelerator.unwrap_model(model)
        try:
            if any(isinstance(module, torch.nn.SyncBatchNorm) for module in unwrapped.modules()):
                unwrapped = revert_sync_batchnorm(unwrapped)
            unwrapped.save_pretrained(temporary)
            processor.save_pretrained(temporary)
            for file in temporary.iterdir():
                os.replace(file, output_dir / file.name)
            temporary.rmdir()
        except (OSError, RuntimeError, SafetensorError) as err:
            shutil.rmtree(temporary, ignore_errors=True)
            weights = sum(tensor.numel() * tensor.element_size() for tensor in unwrapped.state_dict().values())
            error = write_failure(err, output_dir, weights)
    if accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    if error:
        raise CheckpointWriteError(
            f"Could not save the final model to {output_dir}: {error}. The trained state is kept in "
            f"{output_dir / f'checkpoint-{step}'}: free space, then rerun the same command with "
            "--resume_from_checkpoint latest, which loads it and only saves and evaluates the model."
        )
    logger.info(f"Model saved to {output_dir}", main_process_only=True)


def refuse_unsupported_distribution(accelerator: Accelerator | None = None) -> None:
    """SegRet trains with DDP; FSDP and DeepSpeed would be silently misused (evaluation and the final save read the
    unwrapped model on the main process), so they are refused before any data or model is loaded: as the launcher
    asks for them (its environment; before the Accelerator, which may fail on them first) and as it was set up."""
    requested = {
        "FSDP": os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"),
        "DeepSpeed": os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true"),
    }
    if accelerator is not None:
        requested["FSDP"] |= accelerator.distributed_type == DistributedType.FSDP
        requested["DeepSpeed"] |= accelerator.distributed_type == DistributedType.DEEPSPEED
    for name, asked in requested.items():
        if asked:
            raise ValueError(
                f"{name} is not supported by training/train.py: it trains with DDP (the largest SegRet, about 96M "
                "parameters, fits one GPU). Launch with `accelerate launch --multi_gpu --num_processes N "
                f"training/train.py ...` (without --use_{name.lower()}, or choose multi-GPU in `accelerate config`)."
            )


def warn_about_lost_processes(accelerator: Accelerator) -> None:
    """`accelerate launch --num_processes N` without `--multi_gpu` on a machine without GPUs starts one process that
    knows of no others (it sets MASTER_ADDR, never WORLD_SIZE): say so, instead of training silently on one."""
    launched_alone = "ACCELERATE_MIXED_PRECISION" in os.environ and "MASTER_ADDR" in os.environ
    if launched_alone and "WORLD_SIZE" not in os.environ and accelerator.num_processes == 1:
        logger.warning(
            "accelerate launch was asked for several processes or machines, but this is a single process: on a "
            "machine without GPUs add --multi_gpu (`accelerate launch --multi_gpu --num_processes N ...`; "
            "--num_processes is the total over all machines)",
            main_process_only=True,
        )


def main(argv: list[str] | None = None) -> dict:
    """`train.py RECIPE [--field value ...]`: parses and checks the recipe, sets up Accelerate, claims the output
    folder, then runs :func:`train`. Returns its result (the step reached, the logged losses, the final scores)."""
    model_args, data_args, args = parse_arguments(argv)  # bad values fail here, before any data or model work
    output_dir = Path(args.output_dir)
    report_to = args.report_to
    if report_to == "auto":
        report_to = "tensorboard" if is_tensorboard_available() else "none"
    refuse_unsupported_distribution()
    accelerator = Accelerator(
        # accelerate counts a multi-process launch without GPUs as distributed only with cpu=True
        cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available(),
        # The schedule counts optimizer steps: stepped by the loop, not once per process by Accelerate.
        step_scheduler_with_optimizer=False,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if report_to == "none" else report_to,
        project_dir=str(output_dir),
    )
    refuse_unsupported_distribution(accelerator)
    warn_about_lost_processes(accelerator)
    interrupted = None
    # the lock, the shared-folder check, train.log, SIGTERM/SIGINT, and the traceback of a failure
    with claim_output_dir(output_dir, accelerator) as stop:
        try:
            result = train(accelerator, model_args, data_args, args, output_dir, stop)
        except TrainingInterrupted as stopped:
            interrupted = stopped.with_traceback(None)  # drop train()'s frames: its model and loaders go now
    # Only now that train()'s model (DDP) and loaders are gone: freeing them after the process group can hang.
    accelerator.end_training()
    if interrupted is not None:
        raise interrupted
    return result


if __name__ == "__main__":
    try:
        main()
    except TrainingInterrupted as stopped:  # logged with where to resume
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C
        sys.exit(128 + signal.SIGINT)
    except (ValueError, RuntimeError, FileNotFoundError, FloatingPointError) as error:  # the message says what to do
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
