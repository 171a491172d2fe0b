"""Shared fixtures: a small SegRet configuration that builds and runs in milliseconds on a CPU."""

import os
from pathlib import Path

import pytest
import torch

import modeling_segret  # noqa: F401  (registers SegRet with the Auto classes)
from modeling_segret import SegRetConfig

FIXTURES = Path(__file__).parent / "fixtures"

# tests/conformance/ holds testers for transformers' own common test mixins: run by
# scripts/run_transformers_conformance.py, which unpacks the tests of the installed transformers release and points
# SEGRET_TRANSFORMERS_TESTS at them. Without it (the default `pytest` run) they are not collected.
if not os.environ.get("SEGRET_TRANSFORMERS_TESTS"):
    collect_ignore = ["conformance"]

# SPEC §5 (150 classes): backbone with its four extra norms, decoder, total.
SPEC_PARAMETERS = {
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


@pytest.fixture
def config() -> SegRetConfig:
    return small_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
