"""The share of training time spent waiting for data: measured, logged per window, warned about when high."""

import json
import time

import pytest

from training import train
from training.data import SeededAugmentation
from training.data_wait import DataWaitMeter
from training.synthetic import generate


class _Timed:
    """An iterable of `count` items, each taking `seconds` to produce."""

    def __init__(self, count, seconds):
        self.count, self.seconds = count, seconds

    def __iter__(self):
        for item in range(self.count):
            time.sleep(self.seconds)
            yield item


@pytest.mark.parametrize(("fetch", "work", "low", "high"), [(0.04, 0.0, 0.9, 1.0), (0.0, 0.04, 0.0, 0.1)])
def test_meter_splits_waiting_from_working(fetch, work, low, high):
    meter = DataWaitMeter()
    for _ in range(2):  # two epochs: a second iter() of the loader is timed too
        for _item in meter.batches(_Timed(4, fetch)):
            time.sleep(work)
    assert low <= meter.window_fraction() <= high
    assert meter.window_fraction() == 0.0  # a new window


def test_first_batch_is_not_counted():
    meter = DataWaitMeter()
    for _item in meter.batches(_Timed(1, 0.05)):  # worker start-up, not steady state
        pass
    assert meter.window_fraction() == 0.0


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "synthetic", num_train=8, num_validation=2)


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")  # each in-process run builds its own Accelerator


def _run(scenes, output_dir):
    return [
        "--dataset", "synthetic", "--dataset_path", str(scenes), "--crop_size", "32", "32",
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "2", "--max_steps", "4",
        "--warmup_steps", "1", "--logging_steps", "2", "--save_steps", "100", "--eval_steps", "100",
        "--dataloader_num_workers", "0", "--num_overlays", "0", "--report_to", "none",
    ]  # fmt: skip


def _logged_fractions(output_dir):
    records = [json.loads(line) for line in (output_dir / "loss_history.jsonl").read_text().splitlines()]
    return [record["data_wait_fraction"] for record in records]


def test_slow_dataset_shows_in_the_log_and_warns_once(scenes, tmp_path, monkeypatch):
    # Each item takes 4 forward passes' time to load (a training step is about 3: forward and backward), whatever
    # the machine's load: the loop must wait for data most of the time.
    forward_seconds = [0.1]
    original_forward = train.SegRetForSemanticSegmentation.forward

    def timed_forward(self, *args, **kwargs):
        started = time.perf_counter()
        output = original_forward(self, *args, **kwargs)
        forward_seconds.append(time.perf_counter() - started)
        return output

    class SlowAugmentation(SeededAugmentation):
        def __getitem__(self, key):
            time.sleep(4 * forward_seconds[-1])
            return super().__getitem__(key)

    monkeypatch.setattr(train.SegRetForSemanticSegmentation, "forward", timed_forward)
    monkeypatch.setattr(train, "SeededAugmentation", SlowAugmentation)
    train.main(_run(scenes, tmp_path / "slow"))
    fractions = _logged_fractions(tmp_path / "slow")
    assert len(fractions) == 2 and all(fraction > 0.4 for fraction in fractions), fractions
    log = (tmp_path / "slow" / "train.log").read_text()
    assert log.count("Training waited for data") == 1 and "Raise --dataloader_num_workers (now 0" in log


def test_normal_run_logs_a_fraction(scenes, tmp_path):
    train.main(_run(scenes, tmp_path / "normal"))
    fractions = _logged_fractions(tmp_path / "normal")
    assert len(fractions) == 2 and all(0.0 <= fraction <= 1.0 for fraction in fractions), fractions
