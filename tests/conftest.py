"""Shared fixtures: a small SegRet configuration that builds and runs in milliseconds on a CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState

import modeling_segret  # noqa: F401  (registers SegRet with the Auto classes)
from modeling_segret import SegRetConfig

FIXTURES = Path(__file__).parent / "fixtures"

# tests/conformance/ holds testers for transformers' own common test mixins: run by
# scripts/run_transformers_conformance.py, which unpacks the tests of the installed transformers release and points
# SEGRET_TRANSFORMERS_TESTS at them. Without it (the default `pytest` run) they are not collected.
if not os.environ.get("SEGRET_TRANSFORMERS_TESTS"):
    collect_ignore = ["conformance"]

# docs/architecture.md §5 (150 classes): backbone with its four extra norms, decoder, total.
PARAMETER_COUNTS = {
    "tiny": (12_783_776, 794_774, 13_578_550),
    "small": (25_416_800, 794_774, 26_211_574),
    "base": (52_604_680, 852_118, 53_456_798),
    "large": (93_784_280, 2_588_822, 96_373_102),
}


def small_config(**overrides) -> SegRetConfig:
    """Every feature of the real variants (both retention modes, layer scale, FFN conv) at toy size."""
    values = dict(
        embed_dims=[16, 32, 48, 64],
        depths=[1, 2, 2, 1],
        num_heads=[2, 2, 4, 4],
        retention_modes=["decomposed", "decomposed", "global", "global"],
        use_layer_scale=[False, False, True, True],
        decoder_hidden_size=32,
        drop_path_rate=0.1,
        id2label={index: f"class_{index}" for index in range(5)},
        label2id={f"class_{index}": index for index in range(5)},
    )
    values.update(overrides)
    return SegRetConfig(**values)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (multi-process training, the demo, venvs, ONNX); CI always does",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without --run-slow, the slow tests are deselected (reported as such), so the default run is the fast loop."""
    if config.getoption("--run-slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture
def config() -> SegRetConfig:
    return small_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_in_fresh_process(script: str, *arguments: str, cwd: Path) -> dict:
    """Runs `python -c script arguments` offline in `cwd`, without the repository on PYTHONPATH (so a saved folder
    loads as remote code), and returns the JSON report the script prints last."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "modules"))
    command = [sys.executable, "-c", script, *arguments]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def fresh_accelerator_state():
    """Each in-process training or evaluation run builds its own Accelerator: Accelerate's singletons are reset
    after the test."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
