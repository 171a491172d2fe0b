"""SegRetImageProcessor under transformers' `ImageProcessingTestMixin` (and its semantic-segmentation
post-processing mixin), with a tester modelled on transformers' SegFormer one. Run with
scripts/run_transformers_conformance.py."""

import unittest

from transformers.testing_utils import require_torch, require_vision
from transformers_tests.test_image_processing_common import (
    ImageProcessingTester,
    ImageProcessingTestMixin,
    PostProcessSemanticSegmentationTestMixin,
)

from modeling_segret import SegRetImageProcessor


class SegRetImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"height": 18, "width": 20})  # a fixed size: every output has one shape
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("image_mean", [0.5, 0.5, 0.5])
        kwargs.setdefault("image_std", [0.5, 0.5, 0.5])
        kwargs.setdefault("do_reduce_labels", False)
        kwargs.setdefault("num_labels", 3)  # for the post-processing inputs
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # transformers finds a model's processors in its own static table by folder name; SegRet is registered at
        # runtime instead, with the PIL backend only (no torchvision).
        return {"pil": SegRetImageProcessor}


@require_torch
@require_vision
class SegRetImageProcessingTest(ImageProcessingTestMixin, PostProcessSemanticSegmentationTestMixin, unittest.TestCase):
    image_processor_tester_class = SegRetImageProcessingTester

    @unittest.skip(
        reason="SegRetImageProcessor is PIL + NumPy by design: torchvision is no dependency of SegRet, and the "
        "processor (also as Hub remote code) must load wherever transformers and torch do, so there is no "
        "torchvision backend to require"
    )
    def test_new_models_require_torchvision_backend(self):
        pass
