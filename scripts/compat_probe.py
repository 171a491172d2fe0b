# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""One transformers environment's side of the compatibility checks (run by scripts/compat_matrix.py).

    python scripts/compat_probe.py save FOLDER   # with `modeling_segret` importable: save a small model + processor
    python scripts/compat_probe.py load FOLDER   # `modeling_segret` blocked: load FOLDER as Hub remote code

`save` writes the folder and, next to it in FOLDER-reference/, the inputs and outputs of the saving process. `load`
checks the Auto classes, the image processor, the pipeline, AutoBackbone and its alternatives against them and prints
one JSON line: {"transformers": version, "checks": {name: {"ok": bool, "detail": str, "note": str}}}.
This file imports nothing of the repository, so it runs in any environment.
"""

from __future__ import annotations

import importlib.abc
import json
import logging
import sys
import traceback
from pathlib import Path


class _BlockSegRetPackage(importlib.abc.MetaPathFinder):
    """Makes `import modeling_segret` fail, as on a machine where only the Hub folder exists."""

    def find_spec(self, name, path=None, target=None):
        if name == "modeling_segret" or name.startswith("modeling_segret."):
            raise ImportError(f"{name} is blocked: this process may only use the folder's remote code")
        return None


class _ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()[:300]}")


def _reference_dir(folder: Path) -> Path:
    return folder.parent / f"{folder.name}-reference"


def save(folder: Path) -> dict:
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    from modeling_segret import SegRetConfig, SegRetForSemanticSegmentation, SegRetImageProcessor

    torch.manual_seed(0)
    labels = {index: f"class_{index}" for index in range(4)}
    config = SegRetConfig(
        embed_dims=[16, 32, 48, 64],
        depths=[1, 1, 2, 1],
        num_heads=[2, 2, 4, 4],
        retention_modes=["decomposed", "decomposed", "global", "global"],
        use_layer_scale=[False, False, True, True],
        decoder_hidden_size=16,
        id2label=labels,
        label2id={name: index for index, name in labels.items()},
    )
    model = SegRetForSemanticSegmentation(config).eval()
    with torch.no_grad():  # every weight matters to the logits, also the zero-initialised ones
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    processor = SegRetImageProcessor(size={"height": 64, "width": 96})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    reference = _reference_dir(folder)
    reference.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    image.save(reference / "image.png")
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    inputs = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        logits = model(inputs).logits
        image_outputs = model(pixel_values)
        feature_maps = model.segret(inputs, output_hidden_states=True).hidden_states
    segmentation = processor.post_process_semantic_segmentation(image_outputs, target_sizes=[(40, 50)])[0]
    torch.save(
        {
            "inputs": inputs,
            "logits": logits,
            "pixel_values": pixel_values,
            "segmentation": segmentation,
            "hidden_states": feature_maps,
        },
        reference / "reference.pt",
    )
    return {"transformers": transformers.__version__, "saved": str(folder)}


def load(folder: Path) -> dict:
    sys.meta_path.insert(0, _BlockSegRetPackage())
    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation, pipeline

    errors = _ErrorRecords()
    logging.getLogger("transformers").addHandler(errors)
    reference = torch.load(_reference_dir(folder) / "reference.pt")
    image = Image.open(_reference_dir(folder) / "image.png").convert("RGB")
    folder = str(folder)
    checks: dict[str, dict] = {}

    def check(name: str):
        def decorator(function):
            try:
                result = function()
                checks[name] = {"ok": True, "detail": "", "note": ""} if result is None else result
            except Exception as error:  # a check's failure is a result, not a crash of the probe
                last_line = traceback.format_exception_only(type(error), error)[-1].strip()
                checks[name] = {"ok": False, "detail": last_line[:400], "note": ""}
            return function

        return decorator

    def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, tolerance: float) -> float:
        difference = (actual.float() - expected.float()).abs().max().item()
        if actual.shape != expected.shape or not difference <= tolerance:
            raise AssertionError(f"{what}: shape {tuple(actual.shape)}, max difference {difference:g}")
        return difference

    @check("auto_classes")
    def _():
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        assert type(config).__name__ == "SegRetConfig", type(config)
        assert type(config).__module__.startswith("transformers_modules."), type(config).__module__
        base = AutoModel.from_pretrained(folder, trust_remote_code=True)
        assert type(base).__name__ == "SegRetModel", type(base)
        model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__name__ == "SegRetForSemanticSegmentation", type(model)
        with torch.no_grad():
            difference = assert_close(model(reference["inputs"]).logits, reference["logits"], "logits", 1e-5)
        return {"ok": True, "detail": f"max logit difference {difference:g}", "note": ""}

    def check_image_processor(auto_image_processor) -> None:
        processor = auto_image_processor.from_pretrained(folder, trust_remote_code=True)
        assert type(processor).__name__ == "SegRetImageProcessor", type(processor)
        pixel_values = processor(image, return_tensors="pt")["pixel_values"]
        assert_close(pixel_values, reference["pixel_values"], "pixel_values", 1e-6)

    @check("image_processor")
    def _():
        from transformers import AutoImageProcessor

        try:
            check_image_processor(AutoImageProcessor)
        except ImportError as error:
            # transformers 5.4 - 5.17 without torchvision: the top-level name is a placeholder. The class in its own
            # module is the documented workaround; report whether it works.
            from transformers.models.auto.image_processing_auto import AutoImageProcessor as ModuleAutoImageProcessor

            check_image_processor(ModuleAutoImageProcessor)
            detail = f"top-level AutoImageProcessor: {str(error).strip().splitlines()[0][:200]}"
            return {"ok": False, "detail": detail, "note": "workaround ok"}

    error_count_before_pipeline = None

    @check("pipeline")
    def _():
        nonlocal error_count_before_pipeline
        error_count_before_pipeline = len(errors.messages)
        segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True)
        segments = segmenter(image)
        assert segments, "no segment"
        label_map = np.full((image.height, image.width), -1)
        label2id = {name: index for index, name in segmenter.model.config.id2label.items()}
        for segment in segments:
            assert segment["mask"].size == image.size and segment["mask"].mode == "L", segment["mask"]
            label_map[np.asarray(segment["mask"]) > 0] = label2id[segment["label"]]
        assert np.array_equal(label_map, reference["segmentation"].numpy()), "masks differ from the saving process"
        # The folder's own pipeline class: a batch of two sizes gives the masks of one-by-one calls.
        assert type(segmenter).__name__ == "SegRetImageSegmentationPipeline", type(segmenter).__name__
        other = image.resize((image.width + 8, image.height))

        def masks(segments):
            return [(segment["label"], np.asarray(segment["mask"]).tolist()) for segment in segments]

        batched = segmenter([image, other], batch_size=2)
        assert [masks(result) for result in batched] == [masks(segments), masks(segmenter(other))], "batched masks"

    @check("no_error_log")
    def _():
        if error_count_before_pipeline is None:
            raise AssertionError("the pipeline did not run")
        pipeline_errors = errors.messages[error_count_before_pipeline:]
        if pipeline_errors:
            raise AssertionError(" | ".join(pipeline_errors)[:400])

    @check("auto_backbone")
    def _():
        from transformers import AutoBackbone

        backbone = AutoBackbone.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            feature_maps = backbone(reference["inputs"]).feature_maps
        for feature_map, index in zip(feature_maps, backbone.out_indices):
            assert_close(feature_map, reference["hidden_states"][index], f"feature map {index}", 1e-5)

    @check("backbone_alternatives")
    def _():
        from transformers import AutoBackbone
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        backbone_class = get_class_from_dynamic_module("modeling_segret.SegRetBackbone", folder)
        backbone = backbone_class.from_pretrained(folder).eval()
        with torch.no_grad():
            feature_maps = backbone(reference["inputs"]).feature_maps
        for feature_map, index in zip(feature_maps, backbone.out_indices):
            assert_close(feature_map, reference["hidden_states"][index], f"feature map {index}", 1e-5)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        from_config = AutoBackbone.from_config(config, trust_remote_code=True)
        assert type(from_config).__name__ == "SegRetBackbone", type(from_config)

    logging.getLogger("transformers").removeHandler(errors)
    return {"transformers": transformers.__version__, "checks": checks, "error_log": errors.messages}


def main() -> None:
    mode, folder = sys.argv[1], Path(sys.argv[2]).resolve()
    report = save(folder) if mode == "save" else load(folder)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
