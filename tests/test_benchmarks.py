"""The benchmark script keeps running, and its "lever undone" variants compute the model's own function."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import small_config

from benchmarks.run import HIGHRES_MODELS, HIGHRES_PEERS, LEVERS, crossover, randomize_decoder_residuals
from modeling_segret import SegRetForSemanticSegmentation

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("lever", list(LEVERS))
def test_undone_lever_computes_the_same_logits(lever):
    """Each lever is a speed path only: undoing it changes the time, not the output (float64, 1e-10)."""
    model = SegRetForSemanticSegmentation(small_config()).double().eval()
    randomize_decoder_residuals(model)
    variant = copy.deepcopy(model)
    LEVERS[lever](variant)
    pixel_values = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(variant(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=1e-10)


@pytest.mark.slow
def test_quick_run_prints_the_targets_and_writes_nothing(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, "benchmarks/run.py", "--quick", "--parts", "levers", "train", "--output", str(output)]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "- SegRet-Tiny, training step (forward + backward), batch 2, 128², float32: " in result.stdout
    for lever in LEVERS:
        assert f"| undone: {lever} |" in result.stdout
    assert not output.exists()


@pytest.mark.slow
def test_quick_data_run_prints_the_targets_and_writes_nothing(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, "benchmarks/run.py", "--quick", "--parts", "data", "--output", str(output)]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "- TrainTransform: " in result.stdout and "× the time of the same steps written directly" in result.stdout
    assert "- decode + TrainTransform: " in result.stdout and " images/s per core" in result.stdout
    for workers in ("0 workers", "1 worker", "2 workers"):
        assert f"| {workers} (ms per image) |" in result.stdout
    assert not output.exists()


def test_crossover_names_where_the_ratio_changes_side():
    sizes = [(1, 512, 512), (1, 1024, 1024), (1, 1024, 2048), (1, 2048, 2048)]
    assert crossover([0.81, 1.38, 1.48, 2.18], sizes) == "faster at 512×512, batch 1, slower from 1024×1024, batch 1"
    assert crossover([1.2, 0.9, 1.1, None], sizes) == (
        "slower at 512×512, batch 1, faster from 1024×1024, batch 1, slower from 1024×2048, batch 1"
    )
    assert crossover([0.5, 1.0, 0.7, 0.9], sizes) == "faster at every size"
    assert crossover([1.5, 1.01, 2, 3], sizes) == "slower at every size"
    assert crossover([None] * 4, sizes) == "not measured"


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["cpu", "gpu"])
def test_quick_highres_run_prints_every_pair_and_writes_nothing(tmp_path, suite):
    """The high-resolution part at toy sizes: every model timed, each variant's ratio to its peer; on the CPU also
    the peak memory of fresh processes (the Tiny pair only under --quick). The GPU suite runs on the CPU here."""
    output = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, "benchmarks/run.py", "--quick", "--suite", suite, "--parts", "highres"]
    result = subprocess.run(
        command + ["--output", str(output)], cwd=REPOSITORY, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    batch, precision = ("1", "float32") if suite == "cpu" else ("2", "bfloat16")
    for name in HIGHRES_MODELS:
        assert f"| 64×128, batch {batch}, {precision} | {name} |" in result.stdout
    for name, peer in HIGHRES_PEERS.items():
        assert f"× {peer} |" in result.stdout and f"| {name} (" in result.stdout
    tiny_memory = result.stdout.split("| SegRet-Tiny (13.6M) ÷ SegFormer-B1 (13.7M) | time |")[1].splitlines()[1]
    assert tiny_memory.startswith("| | peak memory |")
    if suite == "cpu":  # the ratio of two measured peaks, at the last size
        assert float(tiny_memory.split("|")[-3]) > 0
    assert not output.exists()
