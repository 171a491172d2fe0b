"""The output folder of a training run: who owns it, what it records, where the run logs.

    output_dir/
      segret.lock           the owner's host and pid while a run is going (`OutputDirLock`)
      run.json              the run's id and identity (the recipe fields that define it)
      training_args.json    the whole recipe, with the number of processes and the global batch
      train.log             everything the run logs, and the traceback of a failure
      loss_history.jsonl    one record per logged step, appended as the run goes
      checkpoint-N/         see `training/checkpoints.py`

`claim_output_dir` wraps a run: it takes the lock (one run per folder), sends the log to `train.log`, records the
traceback of a failure and gives everything back afterwards, so `train.main` can also be called in-process.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list

from training import LOG_FORMAT

logger = get_logger(__name__)  # accelerate's: main_process_only=...
LOCK_FILE, RUN_FILE, LOSS_LOG, TRAIN_LOG = "segret.lock", "run.json", "loss_history.jsonl", "train.log"
ARGS_FILE = "training_args.json"


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------------------------------------ ownership
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
                holder = read_json(self.path)
                if (
                    holder.get("host") == owner["host"]
                    and isinstance(holder.get("pid"), int)
                    and not process_alive(holder["pid"])
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


def process_alive(pid: object) -> bool:
    """Whether `pid` (from a lock or claim file) names a process running on this host; anything else is not."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def claim_output_dir(output_dir: Path, accelerator: Accelerator) -> Iterator[None]:
    """The run's hold on `output_dir`: the lock (taken by the main process, its verdict shared with the others),
    logging to `train.log`, and on failure the traceback appended there. Logging and the lock are given back on
    the way out, however the run ends."""
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
        yield
    except Exception:
        if accelerator.is_main_process:  # the traceback, for the record; the console gets the error itself
            with open(output_dir / TRAIN_LOG, "a") as log_file:
                log_file.write(f"Training failed:\n{traceback.format_exc()}")
        raise
    finally:
        remove_logging(handlers, previous_level)
        lock.release()


# ------------------------------------------------------------------------------------------------ logging
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


# ------------------------------------------------------------------------------------------------ records
def read_run_id(output_dir: Path) -> str | None:
    """The id of the run that `output_dir/run.json` names (the run whose checkpoints are resumed), or None."""
    return read_json(output_dir / RUN_FILE).get("run_id")


def record_run(output_dir: Path, run: dict, recipe: dict, step: int) -> None:
    """Main process, before the first step: `run.json`, `training_args.json`, and the loss log continued at `step`.

    `run` is {"run_id": ..., "identity": {...}}; `recipe` every field of the run, as written to training_args.json.
    """
    (output_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
    loss_log = output_dir / LOSS_LOG
    if step:
        trim_loss_log(loss_log, step)
    else:
        loss_log.unlink(missing_ok=True)  # a new run's log
    (output_dir / ARGS_FILE).write_text(json.dumps(recipe, indent=2))


def append_loss_record(output_dir: Path, record: dict) -> None:
    """One logged step, appended as the run goes: a crash keeps the log of the steps before it."""
    with open(output_dir / LOSS_LOG, "a") as log_file:
        log_file.write(json.dumps(record) + "\n")


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
