"""configuration/segret-*: the paper's variants as declarative files, in step with the code's definitions."""

from pathlib import Path

import pytest
from transformers import AutoConfig, AutoImageProcessor

from modeling_segret import SEGRET_VARIANTS, SegRetConfig, SegRetImageProcessor

CONFIGURATION = Path(__file__).parent.parent / "configuration"


@pytest.mark.parametrize("variant", ["tiny", "small", "base", "large"])
def test_variant_folder_loads_and_matches_the_code(variant):
    folder = CONFIGURATION / f"segret-{variant}"
    config = SegRetConfig.from_pretrained(folder)
    assert type(AutoConfig.from_pretrained(folder)) is SegRetConfig
    for name, value in SEGRET_VARIANTS[variant].items():
        assert getattr(config, name) == value, name
    assert config.num_labels == 150 and config.id2label[0] == "wall" and config.label2id["wall"] == 0

    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor) is SegRetImageProcessor
    assert processor.do_reduce_labels  # ADE20K maps: 0 = other
    short_side = 640 if variant == "large" else 512  # the ADE20K test scale of the paper's crops
    assert (processor.size.shortest_edge, processor.size.longest_edge) == (short_side, 4 * short_side)
