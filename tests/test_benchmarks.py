"""The benchmark script keeps running, and its "lever undone" variants compute the model's own function."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import small_config

from benchmarks.run import LEVERS, randomize_decoder_residuals
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
