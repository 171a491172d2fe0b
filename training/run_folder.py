"""The output folder of a training run: who owns it, what it records, where the run logs.

    output_dir/
      segret.lock           the owner's host and pid while a run is going, renewed as a lease (`OutputDirLock`)
      run.json              the run's id and identity (the recipe fields that define it)
      training_args.json    the whole recipe, with the number of processes and the global batch
      train.log             everything the run logs, and the traceback of a failure
      loss_history.jsonl    one record per logged step, appended as the run goes
      checkpoint-N/         see `training/checkpoints.py`

`claim_output_dir` wraps a run: it takes the lock (one run per folder), checks that every process sees the folder,
sends the log to `train.log`, turns SIGTERM/SIGINT into a stop at the next step boundary (`StopRequest`), records
the traceback of a failure and gives everything back afterwards, so `train.main` can also be called in-process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list, gather_object

from training import LOG_FORMAT

logger = get_logger(__name__)  # accelerate's: main_process_only=...
LOCK_FILE, RUN_FILE, LOSS_LOG, TRAIN_LOG = "segret.lock", "run.json", "loss_history.jsonl", "train.log"
ARGS_FILE = "training_args.json"
# Another host's lock not renewed for this long is stale (the running job renews it every LEASE_SECONDS / 10).
LEASE_SECONDS = 600
LAUNCHER_VARIABLES = ("LOCAL_RANK", "ACCELERATE_MIXED_PRECISION")  # set by torchrun / `accelerate launch`


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def decide_on_main_process(accelerator: Accelerator, decide: Callable[..., Any], *args: Any) -> Any:
    """`decide(*args)` run by the main process only, its result (or its exception) shared with every process: with
    an output folder seen differently by each machine, all of them still act on one decision."""
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = decide(*args)
        except Exception as err:
            error = err
    if accelerator.num_processes > 1:
        result, error = broadcast_object_list([result, error])
    if error is not None:
        raise error
    return result


# ------------------------------------------------------------------------------------------------ ownership
class OutputDirLock:
    """`output_dir/segret.lock` holding the owner's host and pid: one run per folder at a time.

    The lock is a lease: while the run goes, a thread renews it (touches the file) every tenth of the lease. A lock
    is stale, and taken over with a warning, when its process is gone (same host) or, held by another host, when it
    has not been renewed for `lease_seconds` (a job preempted on one machine and restarted on another). The lease is
    `SEGRET_LOCK_LEASE_SECONDS` (default 600 s) in the environment; the hosts' clocks must agree to well within it.
    """

    def __init__(self, output_dir: Path, lease_seconds: float | None = None) -> None:
        self.path = output_dir / LOCK_FILE
        self.held = False
        self.lease_seconds = lease_seconds or float(os.environ.get("SEGRET_LOCK_LEASE_SECONDS", LEASE_SECONDS))
        self.token = uuid.uuid4().hex
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> str | None:
        """Takes the lock; returns a note when a stale lock was taken over, raises when the folder is in use."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = None
        owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": self.token,
        }
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = read_json(self.path)
                stale = self.why_stale(holder)
                if stale:
                    note = f"Removing the stale lock {self.path} ({stale})"
                    self.path.unlink(missing_ok=True)
                    continue
                raise RuntimeError(
                    f"{self.path.parent} is in use by another training run ({holder or 'unreadable lock file'}, "
                    f"renewed {self.age():.0f} s ago). Wait for it to finish or choose another --output_dir. A lock "
                    f"not renewed for {self.lease_seconds:.0f} s is taken over automatically "
                    "(SEGRET_LOCK_LEASE_SECONDS); delete the file only if you are sure that run is gone."
                ) from None
            with os.fdopen(descriptor, "w") as handle:
                json.dump(owner, handle)
            self.held = True
            self._stop_renewing.clear()
            self._renewer = threading.Thread(target=self._renew, name="segret-lock-lease", daemon=True)
            self._renewer.start()
            return note
        raise RuntimeError(f"could not take the lock {self.path}")

    def age(self) -> float:
        """Seconds since the lock file was last renewed (its modification time)."""
        try:
            return max(time.time() - self.path.stat().st_mtime, 0.0)
        except FileNotFoundError:
            return 0.0

    def why_stale(self, holder: dict) -> str | None:
        """Why the lock `holder` (the lock file's content) no longer protects a run, or None if it does."""
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            # On this host the process table is authoritative (a run of an older version renews nothing).
            alive = process_alive(holder["pid"])
            return None if alive else f"process {holder['pid']} on this host is no longer running"
        age = self.age()
        if age > self.lease_seconds:
            return (
                f"held by {holder.get('host', '?')} pid {holder.get('pid', '?')}, not renewed for {age:.0f} s, "
                f"longer than the {self.lease_seconds:.0f} s lease"
            )
        return None

    def _renew(self) -> None:
        """Touches the lock file every tenth of the lease while it is ours; stops (with a warning) if it is not."""
        while not self._stop_renewing.wait(self.lease_seconds / 10):
            if read_json(self.path).get("token") != self.token:
                logging.getLogger(__name__).warning(
                    f"{self.path} is no longer this run's lock (taken over after its lease ran out?): another run "
                    "may now write to the same folder"
                )
                return
            try:
                os.utime(self.path)
            except OSError:
                continue  # a full or briefly unreachable disk: try again at the next renewal

    def release(self) -> None:
        self._stop_renewing.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if self.held:
            if read_json(self.path).get("token") == self.token:  # never remove the lock of a run that took over
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


class TrainingInterrupted(Exception):
    """The run stopped on a signal (SIGTERM, SIGINT, its launcher gone) after checkpointing at a step boundary."""

    def __init__(self, signal_number: int, message: str) -> None:
        super().__init__(message)
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (143 for SIGTERM, 130 for SIGINT), what schedulers expect of a stopped job."""
        return 128 + self.signal_number


class StopRequest:
    """SIGTERM and SIGINT (Ctrl-C) ask the run to stop at the next step boundary, with a checkpoint.

    A second Ctrl-C stops at once (KeyboardInterrupt, no checkpoint); a repeated SIGTERM is ignored. A process
    started by a launcher (`accelerate launch`, torchrun) whose launcher is gone (killed: its parent pid changed)
    stops as on SIGTERM. `pending` is collective: every process learns that one of them was asked to stop.
    """

    def __init__(self) -> None:
        self.signal_number = 0
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}
        launched = any(name in os.environ for name in LAUNCHER_VARIABLES)
        self._launcher = os.getppid() if launched else None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (an in-process call from elsewhere)
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: object) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker (Ctrl-C reaches them too): the training process decides
        if self.signal_number:
            if number == signal.SIGINT and self.signal_number == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now
            return
        self.signal_number = number
        logging.getLogger(__name__).warning(
            f"{signal.Signals(number).name} received: stopping after the current step with a checkpoint"
            + (" (Ctrl-C again to stop at once, without one)" if number == signal.SIGINT else "")
        )

    def pending(self, accelerator: Accelerator) -> int:
        """The signal to stop on (0: none), the same on every process; called by all of them at step boundaries."""
        if not self.signal_number and self._launcher is not None and os.getppid() != self._launcher:
            self.signal_number = signal.SIGTERM
            # Its console went with it: writing to the pipe it read would fail. The log goes on to train.log.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            logging.getLogger(__name__).warning(
                f"The launcher (pid {self._launcher}) is gone: stopping after the current step with a checkpoint"
            )
        if accelerator.num_processes == 1:
            return self.signal_number
        flag = torch.tensor([self.signal_number], device=accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())


@contextmanager
def claim_output_dir(output_dir: Path, accelerator: Accelerator) -> Iterator[StopRequest]:
    """The run's hold on `output_dir`: the lock (taken by the main process, its verdict shared with the others),
    the check that every process sees the folder, logging to `train.log`, the stop request of SIGTERM/SIGINT, and
    on failure the traceback appended there. All is given back on the way out, however the run ends."""
    lock = OutputDirLock(output_dir)
    lock_note = decide_on_main_process(accelerator, lock.acquire)
    stop = StopRequest()
    try:
        check_shared_folder(output_dir, accelerator)
        handlers, previous_level = setup_logging(output_dir, accelerator.is_main_process)
    except BaseException:
        lock.release()
        raise
    if lock_note:
        logger.warning(lock_note, main_process_only=True)
    stop.install()
    try:
        yield stop
    except KeyboardInterrupt:
        logger.error(
            "Interrupted by a second Ctrl-C, without a checkpoint: resume from the newest checkpoint with "
            "--resume_from_checkpoint latest",
            main_process_only=True,
        )
        raise
    except Exception:
        if accelerator.is_main_process:  # the traceback, for the record; the console gets the error itself
            with open(output_dir / TRAIN_LOG, "a") as log_file:
                log_file.write(f"Training failed:\n{traceback.format_exc()}")
        raise
    finally:
        stop.uninstall()
        remove_logging(handlers, previous_level)
        lock.release()


def check_shared_folder(output_dir: Path, accelerator: Accelerator) -> None:
    """Refuses an `output_dir` that is not one shared folder for all processes (a local path on several machines):
    the main process writes a token file there, and every process must see it."""
    if accelerator.num_processes == 1:
        return
    token = broadcast_object_list([uuid.uuid4().hex if accelerator.is_main_process else None])[0]
    probe = output_dir / f".shared-check-{token}"
    if accelerator.is_main_process:
        probe.write_text(socket.gethostname())
    accelerator.wait_for_everyone()
    # A network file system may show a new file to other machines only after its attribute cache expires.
    deadline = time.monotonic() + float(os.environ.get("SEGRET_SHARED_FOLDER_WAIT_SECONDS", 30))
    while not (seen := probe.is_file()) and time.monotonic() < deadline:
        time.sleep(0.5)
    views = gather_object([(accelerator.process_index, socket.gethostname(), seen)])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        probe.unlink(missing_ok=True)
    blind = [f"process {rank} on {host}" for rank, host, saw in views if not saw]
    if blind:
        raise RuntimeError(
            f"--output_dir {output_dir} is not shared by all processes: {', '.join(blind)} cannot see the file the "
            f"main process (on {views[0][1]}) wrote there. "
            "Checkpoints, the lock and the resume decision need one folder that every machine sees: put "
            "--output_dir on a shared file system (NFS, Lustre, ...) mounted at the same path on every machine."
        )


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
