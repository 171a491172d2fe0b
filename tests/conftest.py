"""Shared fixtures: a small SegRet configuration that builds and runs in milliseconds on a CPU."""

from pathlib import Path

import pytest
import torch

import modeling_segret  # noqa: F401  (registers SegRet with the Auto classes)
from modeling_segret import SegRetConfig

FIXTURES = Path(__file__).parent / "fixtures"


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
