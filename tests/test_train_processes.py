"""How a training run behaves across processes and machines, and how it ends: the schedule on N processes, two
machines, the output folder's lock lease, SIGTERM / Ctrl-C / a vanished launcher, full disks, FSDP and DeepSpeed."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from conftest import small_config
from test_train import REPOSITORY, tiny_run

from modeling_segret import SegRetForSemanticSegmentation
from training import checkpoints, run_folder, train
from training.checkpoints import CheckpointWriteError, find_checkpoint
from training.run_folder import LOCK_FILE, OutputDirLock, TrainingInterrupted
from training.synthetic import generate

TRAIN_SCRIPT = REPOSITORY / "training" / "train.py"
TWO_STEPS = ("--max_steps", "2", "--warmup_steps", "1", "--save_steps", "1")
# Evaluation-mode BatchNorm (running statistics): each sample's loss is then independent of the others in its batch,
# so 2 processes x batch 2 must compute exactly what 1 process x batch 4 computes. (Train-mode BatchNorm on CPU keeps
# per-process statistics: gloo has no SyncBatchNorm.)
FROZEN_BATCHNORM_TRAIN = """
import runpy, sys, torch
from torch.nn.modules.batchnorm import _BatchNorm
_BatchNorm.train = lambda self, mode=True: torch.nn.Module.train(self, False)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synthetic", num_train=24, num_validation=6)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A toy SegRet for the synthetic scenes without randomness in training (no stochastic depth, no dropout), whose
    loss is a mean over all pixels: the mean of per-process losses is the loss of the whole batch."""
    labels = {index: f"class_{index}" for index in range(8)}
    config = small_config(
        drop_path_rate=0.0,
        decoder_dropout=0.0,
        loss_average_over_all_pixels=True,
        id2label=labels,
        label2id={name: index for index, name in labels.items()},
    )
    folder = tmp_path_factory.mktemp("small_model")
    torch.manual_seed(0)
    SegRetForSemanticSegmentation(config).save_pretrained(folder)
    return folder


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")  # each in-process run builds its own Accelerator


def frozen_batchnorm_train(self, mode: bool = True):
    return torch.nn.Module.train(self, False)


def small_run(scenes: Path, small_model: Path, output_dir: Path, *extra: str) -> list[str]:
    return tiny_run(
        scenes, output_dir, "--model_name_or_path", str(small_model), "--eval_steps", "100", "--num_overlays", "0",
        *extra,
    )  # fmt: skip


def environment(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1", **extra}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_launch(*launch_arguments: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *launch_arguments]


def logged(output_dir: Path) -> list[dict]:
    path = output_dir / "loss_history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_same_weights(folder_a: Path, folder_b: Path) -> None:
    model_a = SegRetForSemanticSegmentation.from_pretrained(folder_a).state_dict()
    model_b = SegRetForSemanticSegmentation.from_pretrained(folder_b).state_dict()
    for name, tensor in model_a.items():
        torch.testing.assert_close(model_b[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------------------------------ the schedule
@pytest.mark.slow
def test_schedule_and_losses_are_the_same_on_two_processes_and_with_accumulation(
    scenes, small_model, tmp_path, monkeypatch
):
    """1 process x batch 4, 2 processes x batch 2, and 1 process x batch 2 x accumulation 2: the same learning rate
    at every optimizer step; the same losses and weights where the computation is the same in principle."""
    common = ("--max_steps", "6", "--warmup_steps", "3", "--save_steps", "100")
    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.modules.batchnorm._BatchNorm, "train", frozen_batchnorm_train)
        one = train.main(
            small_run(scenes, small_model, tmp_path / "one", *common, "--per_device_train_batch_size", "4")
        )
        AcceleratorState._reset_state(reset_partial_state=True)
        accumulated = train.main(
            small_run(scenes, small_model, tmp_path / "accumulated", *common, "--gradient_accumulation_steps", "2")
        )["history"]
    one = one["history"]

    command = accelerate_launch("--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()))
    wrapper = tmp_path / "frozen_batchnorm_train.py"
    wrapper.write_text(FROZEN_BATCHNORM_TRAIN)
    command += [str(wrapper), str(TRAIN_SCRIPT), *small_run(scenes, small_model, tmp_path / "two", *common)]
    completed = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    two = logged(tmp_path / "two")

    steps = list(range(1, 7))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [r["step"] for r in accumulated] == steps
    for run in (two, accumulated):  # the schedule: warm-up over 3 optimizer steps, then the decay to step 6
        assert [r["learning_rate"] for r in run] == pytest.approx([r["learning_rate"] for r in one], rel=1e-12)
    assert one[2]["learning_rate"] > one[1]["learning_rate"] > one[0]["learning_rate"]  # still warming up at 3
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    assert_same_weights(tmp_path / "one", tmp_path / "accumulated")


# ------------------------------------------------------------------------------------------------ several machines
def two_machines(output_dirs: tuple[Path, Path], arguments: list[str], **env: str) -> list[subprocess.Popen]:
    """Two `accelerate launch` of one process each, as two machines (ranks 0 and 1) of 2 processes in all."""
    port = str(free_port())
    launchers = []
    for machine_rank, output_dir in enumerate(output_dirs):
        command = accelerate_launch(
            "--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(machine_rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", port,
            str(TRAIN_SCRIPT), *arguments, "--output_dir", str(output_dir),
        )  # fmt: skip
        launchers.append(
            subprocess.Popen(command, env=environment(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return launchers


def finish(launchers: list[subprocess.Popen]) -> list[tuple[int, str]]:
    return [(launcher.wait(timeout=900), launcher.communicate()[1]) for launcher in launchers]


@pytest.mark.slow
def test_two_machines_train_stop_and_resume_like_one_uninterrupted_run(scenes, small_model, tmp_path):
    arguments = small_run(scenes, small_model, tmp_path / "unused", "--save_steps", "100")
    output = tmp_path / "shared"
    for phase in (["--stop_after_steps", "3"], ["--resume_from_checkpoint", "latest"]):
        for code, stderr in finish(two_machines((output, output), [*arguments, *phase])):
            assert code == 0, stderr[-4000:]
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert not (output / LOCK_FILE).exists()

    reference = tmp_path / "reference"
    completed = subprocess.run(
        [*accelerate_launch("--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())),
         str(TRAIN_SCRIPT), *arguments, "--output_dir", str(reference)],
        env=environment(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert [r["step"] for r in logged(output)] == list(range(1, 7))
    assert [r["loss"] for r in logged(output)] == [r["loss"] for r in logged(reference)]


@pytest.mark.slow
def test_an_output_dir_that_is_not_shared_by_the_machines_is_refused(scenes, small_model, tmp_path):
    arguments = small_run(scenes, small_model, tmp_path / "unused")
    results = finish(
        two_machines((tmp_path / "machine_0", tmp_path / "machine_1"), arguments, SEGRET_SHARED_FOLDER_WAIT_SECONDS="1")
    )
    assert all(code != 0 for code, _ in results)
    assert "is not shared by all processes: process 1 on" in results[0][1]
    assert "shared file system" in results[0][1]
    assert not (tmp_path / "machine_0" / LOCK_FILE).exists()  # released on the way out
    assert not list((tmp_path / "machine_0").glob("checkpoint-*"))


# ------------------------------------------------------------------------------------------------ the lock lease
def test_a_lock_from_another_host_is_refused_while_renewed_and_taken_over_after_its_lease(tmp_path):
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text(json.dumps({"host": "other-node", "pid": 4242, "token": "theirs"}))
    with pytest.raises(RuntimeError, match=r"in use by another training run .*other-node.* renewed 0 s ago.*600 s"):
        OutputDirLock(tmp_path).acquire()
    an_hour_ago = time.time() - 3600
    os.utime(lock_file, (an_hour_ago, an_hour_ago))
    lock = OutputDirLock(tmp_path)
    note = lock.acquire()
    assert "other-node pid 4242, not renewed for 3600 s, longer than the 600 s lease" in note
    assert json.loads(lock_file.read_text())["host"] == socket.gethostname()
    lock.release()
    assert not lock_file.exists()


def test_the_running_job_renews_its_lease_and_never_removes_a_lock_taken_over(tmp_path):
    lock = OutputDirLock(tmp_path, lease_seconds=0.5)
    lock.acquire()
    lock_file = tmp_path / LOCK_FILE
    long_ago = time.time() - 100
    os.utime(lock_file, (long_ago, long_ago))
    wait_for(lambda: lock.age() < 1, timeout=5, what="the lease to be renewed")
    # Another job took the folder over (this one was suspended beyond its lease): release leaves its lock alone.
    lock_file.write_text(json.dumps({"host": "other-node", "pid": 1, "token": "theirs"}))
    lock.release()
    assert json.loads(lock_file.read_text())["token"] == "theirs"


# ------------------------------------------------------------------------------------------------ signals
@pytest.fixture(scope="module")
def uninterrupted(scenes, small_model, tmp_path_factory) -> list[dict]:
    output = tmp_path_factory.mktemp("uninterrupted")
    result = train.main(small_run(scenes, small_model, output, "--max_steps", "8", "--save_steps", "100"))
    AcceleratorState._reset_state(reset_partial_state=True)
    return result["history"]


def send_at_step(monkeypatch, step: int, number: int) -> None:
    """Delivers the signal `number` to this process as the loss of `step` is logged (mid-step, like a user's)."""
    original = run_folder.append_loss_record

    def append_then_signal(output_dir, record):
        original(output_dir, record)
        if record["step"] == step:
            os.kill(os.getpid(), number)

    monkeypatch.setattr(train, "append_loss_record", append_then_signal)


@pytest.mark.slow
def test_ctrl_c_checkpoints_at_the_next_step_and_the_resume_is_exact(
    scenes, small_model, tmp_path, monkeypatch, uninterrupted
):
    output = tmp_path / "run"
    arguments = small_run(scenes, small_model, output, "--max_steps", "8", "--save_steps", "100")
    # Python's default handler, or SIG_IGN when the tests were started in the background by a non-interactive shell.
    handler_before = signal.getsignal(signal.SIGINT)
    send_at_step(monkeypatch, 3, signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stopped:
        train.main(arguments)
    monkeypatch.undo()
    assert stopped.value.exit_code == 130
    assert [path.name for path in output.glob("checkpoint-*")] == ["checkpoint-4"]
    assert not (output / LOCK_FILE).exists()
    log = (output / "train.log").read_text()
    assert "SIGINT received: stopping after the current step with a checkpoint" in log
    assert "Stopped by SIGINT at step 4 of 8" in log and "--resume_from_checkpoint latest" in log
    assert "Traceback" not in log
    assert signal.getsignal(signal.SIGINT) is handler_before  # given back

    AcceleratorState._reset_state(reset_partial_state=True)
    train.main([*arguments, "--resume_from_checkpoint", "latest"])
    assert [r["loss"] for r in logged(output)] == [r["loss"] for r in uninterrupted]


@pytest.mark.slow
def test_sigterm_stops_the_script_with_143_and_a_checkpoint(scenes, small_model, tmp_path, uninterrupted):
    output = tmp_path / "run"
    arguments = small_run(scenes, small_model, output, "--max_steps", "8", "--save_steps", "100")
    process = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *arguments], env=environment(), stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: len(logged(output)) >= 2 or process.poll() is not None, timeout=600, what="step 2")
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=600)[1]
    assert process.returncode == 143, stderr[-4000:]
    stopped_at = logged(output)[-1]["step"]
    assert stopped_at < 8 and [path.name for path in output.glob("checkpoint-*")] == [f"checkpoint-{stopped_at}"]
    assert not (output / LOCK_FILE).exists()
    assert f"Stopped by SIGTERM at step {stopped_at} of 8" in (output / "train.log").read_text()

    train.main([*arguments, "--resume_from_checkpoint", "latest"])
    # The first part ran in a child with one thread, the reference here: reductions may differ in the last bits.
    assert [r["loss"] for r in logged(output)] == pytest.approx([r["loss"] for r in uninterrupted], rel=1e-5)


@pytest.mark.slow
def test_training_ends_with_a_checkpoint_when_its_launcher_is_killed(scenes, small_model, tmp_path, uninterrupted):
    """kill -9 of `accelerate launch`: the training process notices, checkpoints, releases the lock and ends."""
    output = tmp_path / "run"
    arguments = small_run(scenes, small_model, output, "--max_steps", "8", "--save_steps", "100")
    launcher = subprocess.Popen(
        [*accelerate_launch("--num_processes", "1"), str(TRAIN_SCRIPT), *arguments],
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: len(logged(output)) >= 2 or launcher.poll() is not None, timeout=600, what="step 2")
    launcher.kill()
    launcher.wait()
    wait_for(lambda: not (output / LOCK_FILE).exists(), timeout=600, what="the training process to end")
    stopped_at = logged(output)[-1]["step"]
    assert stopped_at < 8 and (output / f"checkpoint-{stopped_at}").is_dir()
    log = (output / "train.log").read_text()
    assert "The launcher (pid" in log and f"Stopped by SIGTERM at step {stopped_at}" in log

    train.main([*arguments, "--resume_from_checkpoint", "latest"])
    # The first part ran in a child with one thread, the reference here: reductions may differ in the last bits.
    assert [r["loss"] for r in logged(output)] == pytest.approx([r["loss"] for r in uninterrupted], rel=1e-5)


# ------------------------------------------------------------------------------------------------ full disks
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(scenes, small_model, tmp_path, monkeypatch):
    output = tmp_path / "run"
    arguments = small_run(scenes, small_model, output, *TWO_STEPS)  # checkpoints at steps 1 and 2
    original_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        if ".tmp-checkpoint-2" in str(f):
            Path(f).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return original_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(CheckpointWriteError) as failure:
        train.main(arguments)
    monkeypatch.undo()
    message = str(failure.value)
    assert f"Could not write the checkpoint of step 2 to {output}: no space left on /" in message
    assert "MB needed" in message and f"the previous checkpoint {output / 'checkpoint-1'} is kept" in message
    assert not list(output.glob(".tmp-checkpoint-*")) and not (output / LOCK_FILE).exists()
    assert find_checkpoint(output, "latest") == output / "checkpoint-1"

    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = train.main([*arguments, "--resume_from_checkpoint", "latest"])
    assert [r["step"] for r in resumed["history"]] == [2]


def test_disk_full_at_the_final_save_keeps_the_last_checkpoint_and_says_how_to_save(
    scenes, small_model, tmp_path, monkeypatch
):
    output = tmp_path / "run"
    arguments = small_run(scenes, small_model, output, *TWO_STEPS)

    def disk_full(self, folder, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SegRetForSemanticSegmentation, "save_pretrained", disk_full)
    with pytest.raises(
        CheckpointWriteError, match=r"Could not save the final model to .*: no space left on"
    ) as failure:
        train.main(arguments)
    monkeypatch.undo()
    assert f"kept in {output / 'checkpoint-2'}" in str(failure.value)
    assert "--resume_from_checkpoint latest, which loads it and only saves" in str(failure.value)
    assert not (output / "model.safetensors").exists() and not (output / ".tmp-model").exists()

    AcceleratorState._reset_state(reset_partial_state=True)
    saved = train.main([*arguments, "--resume_from_checkpoint", "latest"])
    assert saved["history"] == [] and (output / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_file_size_limit_while_checkpointing_is_reported_and_cleaned_up(scenes, small_model, tmp_path):
    """A real failing write: the child process runs under `ulimit -f` (SIGXFSZ ignored, so writes raise EFBIG)."""
    output = tmp_path / "run"
    arguments = small_run(scenes, small_model, output)
    train.main([*arguments, "--stop_after_steps", "3"])
    largest = max(file.stat().st_size for file in (output / "checkpoint-3").iterdir())
    limited = (
        "import resource, runpy, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({largest // 2}, resource.RLIM_INFINITY))\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", limited, str(TRAIN_SCRIPT), *arguments, "--resume_from_checkpoint", "latest"],
        env=environment(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr[-4000:]
    assert "error: Could not write the checkpoint of step 6" in completed.stderr
    assert "file-size limit (ulimit -f" in completed.stderr
    assert not list(output.glob(".tmp-checkpoint-*")) and not (output / LOCK_FILE).exists()
    assert find_checkpoint(output, "latest") == output / "checkpoint-3"


def test_leftover_temporary_checkpoints_are_removed_at_the_start(tmp_path):
    (tmp_path / ".tmp-checkpoint-9").mkdir()
    (tmp_path / ".tmp-checkpoint-9" / "model.safetensors").write_bytes(b"x" * 100)
    checkpoints.clear_interrupted_removals(tmp_path)
    assert not (tmp_path / ".tmp-checkpoint-9").exists()


# ------------------------------------------------------------------------------------------------ FSDP, DeepSpeed
@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_fsdp_and_deepspeed_are_refused_naming_ddp(kind):
    with pytest.raises(ValueError, match=r"is not supported by training/train.py: it trains with DDP"):
        train.refuse_unsupported_distribution(SimpleNamespace(distributed_type=kind))


def test_use_fsdp_from_the_launcher_is_refused_before_any_data(scenes, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    with pytest.raises(ValueError, match=r"FSDP is not supported .* --multi_gpu"):
        train.main(tiny_run(scenes, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_accelerate_launch_use_fsdp_is_refused_on_every_process(scenes, tmp_path):
    command = accelerate_launch("--use_fsdp", "--num_processes", "2", "--main_process_port", str(free_port()))
    completed = subprocess.run(
        [*command, str(TRAIN_SCRIPT), *tiny_run(scenes, tmp_path / "run")],
        env=environment(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode != 0
    assert completed.stderr.count("error: FSDP is not supported by training/train.py: it trains with DDP") == 2
    assert not (tmp_path / "run").exists()


def test_a_launch_of_several_processes_that_started_one_is_reported(monkeypatch, caplog):
    """`accelerate launch --num_processes 2` without --multi_gpu on a CPU machine: one process, MASTER_ADDR set."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    PartialState(cpu=True)
    with caplog.at_level("WARNING"):
        train.warn_about_lost_processes(SimpleNamespace(num_processes=1))
    assert "this is a single process: on a machine without GPUs add --multi_gpu" in caplog.text
    caplog.clear()
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun / --multi_gpu: the processes know of each other
    with caplog.at_level("WARNING"):
        train.warn_about_lost_processes(SimpleNamespace(num_processes=2))
    assert caplog.text == ""


def test_a_schedule_stepped_once_per_process_is_put_back_on_the_optimizer_step():
    """Checkpoints written before the fix hold the schedule at N x step; resuming puts it at `step`."""
    args = train.TrainArguments(max_steps=10, warmup_steps=2, learning_rate=1e-3)

    def schedule_after(steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, train.warmup_poly_schedule(args))
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
        return scheduler

    old = schedule_after(6)  # 2 processes x 3 steps
    train.set_schedule_step(old, 3)
    expected = schedule_after(3)
    assert old.last_epoch == 3 and old.get_last_lr() == expected.get_last_lr()
    assert old.optimizer.param_groups[0]["lr"] == expected.optimizer.param_groups[0]["lr"]
