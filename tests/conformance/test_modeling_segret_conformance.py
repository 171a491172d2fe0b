"""SegRet under transformers' `ModelTesterMixin`, `BackboneTesterMixin` and `ConfigTester`, with a tester modelled
on transformers' SegFormer test file. Run with scripts/run_transformers_conformance.py."""

import unittest

import torch
from transformers.models.auto import modeling_auto
from transformers.testing_utils import require_torch, torch_device
from transformers_tests.test_backbone_common import BackboneTesterMixin
from transformers_tests.test_configuration_common import ConfigTester
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

from modeling_segret import SegRetBackbone, SegRetConfig, SegRetForSemanticSegmentation, SegRetModel

# The mixins tell base models, backbones and task heads apart (which to train, which get labels) by transformers'
# static name tables, where every in-tree model has its entries. SegRet's are those an in-tree SegRet would have;
# they exist only while these tests run. (The lazy Auto mappings ignore them: "segret" is no CONFIG_MAPPING_NAMES key.)
NAME_TABLE_ENTRIES = {
    "MODEL_MAPPING_NAMES": "SegRetModel",
    "MODEL_FOR_BACKBONE_MAPPING_NAMES": "SegRetBackbone",
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES": "SegRetForSemanticSegmentation",
}


def setUpModule():
    for table, class_name in NAME_TABLE_ENTRIES.items():
        getattr(modeling_auto, table)["segret"] = class_name


def tearDownModule():
    for table in NAME_TABLE_ENTRIES:
        getattr(modeling_auto, table).pop("segret", None)


class SegRetConfigTester(ConfigTester):
    def create_and_test_config_common_properties(self):
        config = self.config_class(**self.inputs_dict)
        for name in ("embed_dims", "depths", "num_heads", "retention_modes", "decoder_hidden_size", "num_stages"):
            self.parent.assertTrue(hasattr(config, name), name)


class SegRetModelTester:
    """A toy SegRet with every feature of the real variants: both retention modes, layer scale, the FFN conv."""

    def __init__(
        self,
        parent,
        batch_size=2,
        image_size=32,
        num_channels=3,
        embed_dims=(16, 32, 48, 64),
        depths=(1, 2, 2, 1),
        num_heads=(2, 2, 4, 4),
        retention_modes=("decomposed", "decomposed", "global", "global"),
        use_layer_scale=(False, False, True, True),
        decoder_hidden_size=32,
        num_labels=3,
        out_features=("stage1", "stage2", "stage3", "stage4"),
        is_training=True,
        use_labels=True,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.embed_dims = list(embed_dims)
        self.depths = list(depths)
        self.num_heads = list(num_heads)
        self.retention_modes = list(retention_modes)
        self.use_layer_scale = list(use_layer_scale)
        self.decoder_hidden_size = decoder_hidden_size
        self.num_labels = num_labels
        self.out_features = list(out_features)
        self.is_training = is_training
        self.use_labels = use_labels

    def get_config(self):
        return SegRetConfig(
            num_channels=self.num_channels,
            embed_dims=self.embed_dims,
            depths=self.depths,
            num_heads=self.num_heads,
            retention_modes=self.retention_modes,
            use_layer_scale=self.use_layer_scale,
            decoder_hidden_size=self.decoder_hidden_size,
            num_labels=self.num_labels,
            out_features=self.out_features,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size, self.image_size, self.image_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, config, pixel_values, labels):
        model = SegRetModel(config).to(torch_device).eval()
        result = model(pixel_values)
        side = self.image_size // 32
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.embed_dims[-1], side, side))

    def create_and_check_for_semantic_segmentation(self, config, pixel_values, labels):
        model = SegRetForSemanticSegmentation(config).to(torch_device).eval()
        side = self.image_size // 4
        result = model(pixel_values)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels, side, side))
        result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels, side, side))
        self.parent.assertGreater(result.loss, 0.0)

    def create_and_check_backbone(self, config, pixel_values, labels):
        model = SegRetBackbone(config).to(torch_device).eval()
        result = model(pixel_values)
        expected = [
            (self.batch_size, dim, self.image_size // 2 ** (2 + i), self.image_size // 2 ** (2 + i))
            for i, dim in enumerate(self.embed_dims)
        ]
        self.parent.assertEqual([tuple(feature_map.shape) for feature_map in result.feature_maps], expected)
        self.parent.assertEqual(model.channels, self.embed_dims)

        config.out_features = None  # the transformers convention: the last stage
        model = SegRetBackbone(config).to(torch_device).eval()
        result = model(pixel_values)
        self.parent.assertEqual(len(result.feature_maps), 1)
        self.parent.assertEqual(model.channels, [self.embed_dims[-1]])


@require_torch
class SegRetModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (SegRetModel, SegRetForSemanticSegmentation, SegRetBackbone)
    # SegRet returns retention weights (output_attentions=True), but a decomposed-retention block returns a pair (rows,
    # columns), which transformers' common attention tests (one (B, N, S, S) tensor per layer) cannot describe;
    # tests/test_modeling.py checks them.
    has_attentions = False
    test_resize_embeddings = False

    def setUp(self):
        self.model_tester = SegRetModelTester(self)
        self.config_tester = SegRetConfigTester(self, config_class=SegRetConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_semantic_segmentation(self):
        self.model_tester.create_and_check_for_semantic_segmentation(*self.model_tester.prepare_config_and_inputs())

    def test_backbone(self):
        self.model_tester.create_and_check_backbone(*self.model_tester.prepare_config_and_inputs())

    @unittest.skip(reason="SegRet takes pixel values, it has no input embeddings")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="SegRet takes pixel values, it has no input or output embeddings")
    def test_model_get_set_embeddings(self):
        pass

    def test_hidden_states_output(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        side = self.model_tester.image_size
        expected_shapes = [(self.model_tester.embed_dims[0], side // 4, side // 4)] + [
            (dim, side // 2 ** (2 + i), side // 2 ** (2 + i)) for i, dim in enumerate(self.model_tester.embed_dims)
        ]
        for model_class in self.all_model_classes:
            for via_config in (False, True):
                config.output_hidden_states = via_config
                inputs = dict(inputs_dict) if via_config else {**inputs_dict, "output_hidden_states": True}
                model = model_class(config).to(torch_device).eval()
                with torch.no_grad():
                    hidden_states = model(**self._prepare_for_class(inputs, model_class)).hidden_states
                # The stem output and the four stage maps, channels-first.
                self.assertEqual([tuple(state.shape[1:]) for state in hidden_states], expected_shapes)


@require_torch
class SegRetBackboneTest(BackboneTesterMixin, unittest.TestCase):
    all_model_classes = (SegRetBackbone,)
    config_class = SegRetConfig
    has_attentions = False

    def setUp(self):
        self.model_tester = SegRetModelTester(self)
