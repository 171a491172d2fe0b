"""Checkpoints of a training run: written atomically, pruned safely, checked before they are resumed.

    output_dir/checkpoint-N/   model.safetensors, optimizer.bin, scheduler.bin, random_states_*.pkl (Accelerate's
                               `save_state`) and trainer_state.json: step, epoch, batch_in_epoch, the run's id and
                               identity, and the size of every file

A checkpoint is written to `.tmp-checkpoint-N` and renamed into place once complete, so a `checkpoint-N` folder is
complete or absent; an old one is renamed to `.deleting-checkpoint-N-*` before it is deleted, so a kill half-way
never leaves something that looks like a checkpoint. Resuming `latest` takes the newest complete checkpoint of the
run that `run.json` names (`training/run_folder.py`), falling back to the previous one when the newest is damaged,
and refuses a checkpoint whose recipe differs (`training.recipe.RUN_IDENTITY_FIELDS`). The main process decides
which checkpoint to resume and tells the others; every process loads it or all fail together.

A write that fails (a full disk, a file-size limit) removes its temporary folder, keeps the previous checkpoint and
stops the run with `CheckpointWriteError`, which says what ran out and about how much space a checkpoint needs.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import resource
import shutil
import uuid
import zipfile
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object

from training.run_folder import read_json, read_run_id

logger = get_logger(__name__)  # accelerate's: main_process_only=...; needs an Accelerator
# For the functions that run without one too (tests, scripts); other processes log only warnings.
helper_logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_KEYS = ("global_step", "epoch", "batch_in_epoch")


class CheckpointWriteError(RuntimeError):
    """A checkpoint or the final model could not be written (full disk, file-size limit ...); nothing was lost."""


# ------------------------------------------------------------------------------------------------ checks
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


def checkpoint_state(path: Path) -> dict:
    """The trainer state of the checkpoint folder `path` ({} when missing or unreadable)."""
    return read_json(path / "trainer_state.json")


def list_checkpoints(output_dir: Path, run_id: str | None = None) -> list[tuple[int, Path]]:
    """(step, folder) of the `checkpoint-N` folders, oldest first; with `run_id` only that run's."""
    found = sorted(
        (int(match.group(1)), path)
        for path in output_dir.glob("checkpoint-*")
        if (match := CHECKPOINT_PATTERN.match(path.name)) and path.is_dir()
    )
    if run_id is not None:
        found = [(step, path) for step, path in found if checkpoint_state(path).get("run_id") == run_id]
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
    run_id = read_run_id(output_dir)
    checkpoints = list_checkpoints(output_dir)
    if run_id is not None:  # another run's checkpoints are not resumed; unreadable ones are reported below
        checkpoints = [
            (step, path) for step, path in checkpoints if checkpoint_state(path).get("run_id", run_id) == run_id
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


def checkpoints_to_resume(
    output_dir: Path,
    resume_from: str | None,
    identity: dict,
    ignore_run_mismatch: bool = False,
    overwrite_output_dir: bool = False,
) -> list[Path]:
    """The checkpoints to try, best first, before any data or model is built; [] for a run that starts afresh.

    `resume_from` is None (a new run: refused over another run's checkpoints unless `overwrite_output_dir`),
    `latest`, or a checkpoint folder. Each candidate must have been written with this `identity`
    (`check_run_identity`).
    """
    if not resume_from:
        existing = [path.name for _, path in list_checkpoints(output_dir)]
        if existing and not overwrite_output_dir:
            raise ValueError(
                f"{output_dir} already holds checkpoints ({', '.join(existing)}). Pass --resume_from_checkpoint "
                "latest to continue that run, choose another --output_dir, or pass --overwrite_output_dir to start "
                "a new run there (the other run's checkpoints are left alone)."
            )
        return []
    candidates = resume_candidates(output_dir, resume_from)
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
    for checkpoint in candidates:
        check_run_identity(checkpoint, identity, ignore_run_mismatch)
    return candidates


def check_run_identity(checkpoint: Path, identity: dict, ignore: bool) -> None:
    """Refuses (or, with `ignore`, warns about) resuming a checkpoint whose run was set up differently."""
    saved = checkpoint_state(checkpoint).get("identity")
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


# ------------------------------------------------------------------------------------------------ save and load
def remove_folder(path: Path) -> None:
    """Rename, then delete: a kill half-way leaves a `.deleting-*` folder that nothing mistakes for a checkpoint."""
    doomed = path.with_name(f".deleting-{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clear_interrupted_removals(output_dir: Path) -> None:
    """Deletes what a kill left behind (main process, under the lock): the `.deleting-checkpoint-*` folders of a cut
    prune and the `.tmp-checkpoint-*` folders of a cut save, which would otherwise keep a full disk full."""
    for pattern in (".deleting-checkpoint-*", ".tmp-checkpoint-*", ".tmp-model"):
        for leftover in output_dir.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def write_failure(error: BaseException, folder: Path, needed_bytes: int) -> str:
    """What stopped a write into `folder`, in words: no space left (and where), the file-size limit, or the error."""
    needed = f"about {needed_bytes / 2**20:.0f} MB"
    mount = folder.resolve()
    while not mount.exists() or (not os.path.ismount(mount) and mount != mount.parent):
        mount = mount.parent
    free = shutil.disk_usage(mount).free
    code = getattr(error, "errno", None)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if code == errno.EFBIG or (code is None and limit != resource.RLIM_INFINITY and limit < needed_bytes):
        return f"a file reached the file-size limit (ulimit -f: {limit / 2**20:.1f} MB; the files need {needed})"
    if code == errno.ENOSPC or free < needed_bytes:
        return f"no space left on {mount} ({free / 2**20:.0f} MB free, {needed} needed)"
    return f"{type(error).__name__}: {error} ({free / 2**20:.0f} MB free on {mount}, {needed} needed)"


def checkpoint_size(accelerator: Accelerator, output_dir: Path) -> int:
    """Bytes a checkpoint takes: the newest one on disk, or the model and optimizer tensors when there is none."""
    checkpoints = list_checkpoints(output_dir)
    if checkpoints:
        return sum(file.stat().st_size for file in checkpoints[-1][1].rglob("*") if file.is_file())
    tensors = [tensor for model in accelerator._models for tensor in model.state_dict().values()]
    for optimizer in accelerator._optimizers:
        tensors += [value for state in optimizer.state_dict()["state"].values() for value in state.values()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors if hasattr(tensor, "numel"))


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    step: int,
    epoch: int,
    batch: int,
    limit: int,
    run: dict | None = None,
    rank_state: dict | None = None,
) -> Path:
    """Accelerate state in a temporary folder, renamed into place once complete; keeps this run's newest `limit`.

    `run` ({"run_id": ..., "identity": {...}}) is stored in the trainer state, with every file's size; `rank_state`,
    given by every process, in `rank_state_<process>.json` (:func:`read_rank_state`).
    """
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)  # left over by a crash
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(str(temporary))
        if rank_state is not None:  # this process's own data position (a stream's epoch and batch differ per process)
            (temporary / rank_state_file(accelerator.process_index)).write_text(json.dumps(rank_state))
    except (OSError, RuntimeError) as err:  # torch reports a full disk as RuntimeError ("unexpected pos ...")
        error = err
    accelerator.wait_for_everyone()  # every process's files are written before the main process lists them
    if accelerator.is_main_process and error is None:
        try:
            write_trainer_state(accelerator, temporary, step, epoch, batch, run)
        except OSError as err:
            error = err
    local = None if error is None else write_failure(error, output_dir, checkpoint_size(accelerator, output_dir))
    failures = gather_object([local]) if accelerator.num_processes > 1 else [local]
    if any(failures):
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)  # a half-written checkpoint would keep the disk full
        reason = "; ".join(
            text if len(failures) == 1 else f"process {rank}: {text}" for rank, text in enumerate(failures) if text
        )
        kept = list_checkpoints(output_dir, (run or {}).get("run_id"))
        previous = f"the previous checkpoint {kept[-1][1]} is kept" if kept else "there is no earlier checkpoint"
        raise CheckpointWriteError(
            f"Could not write the checkpoint of step {step} to {output_dir}: {reason}. The partial checkpoint was "
            f"removed and {previous}. Free space (or raise the limit), then rerun the same command with "
            "--resume_from_checkpoint latest."
        ) from error
    if accelerator.is_main_process:
        if final.exists():
            remove_folder(final)
        os.replace(temporary, final)  # atomic on one filesystem: a checkpoint is complete or absent
        run_id = (run or {}).get("run_id")
        checkpoints = list_checkpoints(output_dir, run_id)
        for _, old in checkpoints[: max(len(checkpoints) - limit, 0)]:
            remove_folder(old)
    accelerator.wait_for_everyone()
    return final


def write_trainer_state(
    accelerator: Accelerator, folder: Path, step: int, epoch: int, batch: int, run: dict | None
) -> None:
    """`trainer_state.json` of the checkpoint being written in `folder`, with the size of each of its files."""
    files = {
        file.relative_to(folder).as_posix(): file.stat().st_size for file in sorted(folder.rglob("*")) if file.is_file()
    }
    state = {
        "global_step": step,
        "epoch": epoch,
        "batch_in_epoch": batch,
        "num_processes": accelerator.num_processes,
        **(run or {}),
        "files": files,
    }
    with open(folder / "trainer_state.json", "w") as handle:
        handle.write(json.dumps(state, indent=2))
        handle.flush()
        os.fsync(handle.fileno())


def rank_state_file(process_index: int) -> str:
    return f"rank_state_{process_index}.json"


def read_rank_state(checkpoint: Path, process_index: int) -> dict | None:
    """The `rank_state` that process `process_index` saved in `checkpoint` (:func:`save_checkpoint`), or None."""
    path = checkpoint / rank_state_file(process_index)
    return json.loads(path.read_text()) if path.is_file() else None


def load_newest(accelerator: Accelerator, candidates: list[Path]) -> tuple[Path, dict] | None:
    """Loads the first of `candidates` that every process loads (model, optimizer, scheduler, RNG states), falling
    back to the next one with a warning; returns it with its trainer state, or None without candidates."""
    for index, checkpoint in enumerate(candidates):
        error = None
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
        errors = gather_object([error]) if accelerator.num_processes > 1 else [error]
        failed = "; ".join(f"process {rank}: {text}" for rank, text in enumerate(errors) if text)
        if not failed:
            return checkpoint, checkpoint_state(checkpoint)
        if index + 1 == len(candidates):
            raise RuntimeError(f"Could not load the checkpoint {checkpoint} ({failed})")
        logger.warning(
            f"Could not load {checkpoint} ({failed}); falling back to {candidates[index + 1]}", main_process_only=True
        )
    return None


# ------------------------------------------------------------------------------------------------ not a model
def training_folder_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a model that `from_pretrained` loads because it is a training checkpoint or a run folder
    whose final model is not saved yet (with what to do instead), or None. For `training/evaluation.py --model` and
    `training/publish.py`, which explain the mistake in the same words."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / "config.json").is_file():
        return None
    run_folder = folder.parent
    if CHECKPOINT_PATTERN.match(folder.name) or (folder / "trainer_state.json").is_file():
        final = (
            f"its run's final model, {run_folder}, holds config.json: copy config.json and "
            f"preprocessor_config.json from there into {folder} to load this checkpoint's weights as a model"
            if (run_folder / "config.json").is_file()
            else f"the run saves its final model (config.json, model.safetensors) into {run_folder} when it reaches "
            f"--max_steps: finish it with --resume_from_checkpoint latest"
        )
        return (
            f"{folder} is a training checkpoint (Accelerate's save_state: weights, optimizer, scheduler and random "
            f"states, for --resume_from_checkpoint), not a model saved with save_pretrained: it has no config.json. "
            f"Evaluate or publish a saved model instead; {final}."
        )
    checkpoints = list_checkpoints(folder)
    if checkpoints:
        return (
            f"{folder} is a training run folder without a saved model (no config.json): the run saves its final model "
            f"there when it reaches --max_steps. Its newest checkpoint is {checkpoints[-1][1].name}; finish the run "
            f"with --resume_from_checkpoint latest, then evaluate or publish {folder}."
        )
    return None
