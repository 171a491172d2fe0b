"""Every documented way of loading a saved SegRet folder, run in one process: prints what each call built, whether it
failed, and whether anything asked a question on standard input (run by tests/test_loading_paths.py, with standard
input closed, here and in the compat venvs of scripts/compat_matrix.py).

    python tests/loading_paths_probe.py FOLDER package|remote

`package` imports `modeling_segret` first; `remote` makes it unimportable, as on a machine with only the folder.
Every call runs three times: without `trust_remote_code`, with `False` and with `True` (in that order, so that no
remote code is loaded before the calls that must not load it). This file imports nothing of the repository except,
with `package`, the package itself, so it runs in any environment.
"""

import builtins
import importlib.abc
import json
import sys
import warnings


class _BlockSegRetPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "modeling_segret" or name.startswith("modeling_segret."):
            raise ImportError(f"{name} is blocked: this process may only use the folder's remote code")
        return None


def main() -> None:
    folder, mode = sys.argv[1], sys.argv[2]
    if mode == "package":
        import modeling_segret  # noqa: F401  (registers SegRet with the Auto classes)
    else:
        sys.meta_path.insert(0, _BlockSegRetPackage())

    # Each question is recorded with the call that asked it; the original `input` then reads the closed standard
    # input, gets end-of-file, and transformers turns that into its "pass trust_remote_code=True" error.
    current_call = [""]
    questions: list[dict] = []
    original_input = builtins.input

    def recording_input(prompt: object = "") -> str:
        questions.append({"call": current_call[0], "question": str(prompt).strip().splitlines()[-1]})
        return original_input(prompt)

    builtins.input = recording_input

    import numpy as np
    import transformers
    from PIL import Image
    from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation, pipeline

    # transformers 5.4 - 5.17 without torchvision: the top-level AutoImageProcessor is a placeholder
    # (docs/compatibility.md); the class in its own module is the documented one.
    from transformers.models.auto.image_processing_auto import AutoImageProcessor
    from transformers.pipelines.image_segmentation import ImageSegmentationPipeline

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    pipeline_classes = {"transformers' class": ImageSegmentationPipeline}
    if mode == "package":
        from modeling_segret import SegRetImageSegmentationPipeline

        pipeline_classes["SegRet's class"] = SegRetImageSegmentationPipeline

    def calls(trust: dict) -> dict:
        named = {
            "AutoConfig": lambda: AutoConfig.from_pretrained(folder, **trust),
            "AutoModel": lambda: AutoModel.from_pretrained(folder, **trust),
            "AutoModelForSemanticSegmentation": lambda: AutoModelForSemanticSegmentation.from_pretrained(
                folder, **trust
            ),
            "AutoImageProcessor": lambda: AutoImageProcessor.from_pretrained(folder, **trust),
            "pipeline": lambda: pipeline("image-segmentation", model=folder, **trust),
        }
        for name, pipeline_class in pipeline_classes.items():
            named[f"pipeline, {name}"] = lambda pipeline_class=pipeline_class: pipeline(
                "image-segmentation", model=folder, pipeline_class=pipeline_class, **trust
            )
        return named

    results: dict[str, dict] = {}
    for flag, trust in (("none", {}), ("false", {"trust_remote_code": False}), ("true", {"trust_remote_code": True})):
        results[flag] = {}
        for name, call in calls(trust).items():
            current_call[0] = f"{flag}: {name}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # warnings are tests/test_pipeline.py's subject
                    built = call()
                    result = {"built": type(built).__name__, "module": type(built).__module__}
                    if name.startswith("pipeline"):
                        masks = built(image)
                        assert masks and all(mask["mask"].size == image.size for mask in masks), masks
                        result["model_module"] = type(built.model).__module__
                results[flag][name] = result
            except Exception as error:  # noqa: BLE001  (the report says what failed and how)
                results[flag][name] = {"error": f"{type(error).__name__}: {str(error).strip()[:400]}"}
    # On a line of its own: a question printed by `input` ends without a newline.
    report = {"transformers": transformers.__version__, "results": results, "questions": questions}
    print("\n" + json.dumps(report))


if __name__ == "__main__":
    main()
