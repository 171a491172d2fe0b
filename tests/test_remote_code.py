"""A saved folder is a Hub remote-code repo: it loads where the `modeling_segret` package cannot be imported."""

import json
import textwrap
from pathlib import Path

import torch
from conftest import run_in_fresh_process, small_config
from PIL import Image
from transformers.dynamic_module_utils import check_imports, get_imports, get_relative_imports

import modeling_segret
from modeling_segret import (
    REMOTE_CODE_FILES,
    SegRetBackbone,
    SegRetConfig,
    SegRetForSemanticSegmentation,
    SegRetImageProcessor,
    SegRetModel,
)
from modeling_segret.configuration_segret import REMOTE_CODE_AUTO_MAP, REMOTE_CODE_PIPELINES

PACKAGE = Path(modeling_segret.__file__).parent

FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_segret"] = None  # any import of the package now fails
    try:
        import modeling_segret  # noqa: F401
        raise SystemExit("modeling_segret is importable: the test would not prove anything")
    except ImportError:
        pass

    import torch
    from PIL import Image
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation,
                              pipeline)

    folder = sys.argv[1]
    report = {}
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    report["config"] = type(config).__name__
    report["config_module"] = type(config).__module__
    report["model"] = type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    report["segmentation_model"] = type(model).__name__
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    report["processor"] = type(processor).__name__

    inputs = torch.load(f"{folder}/../inputs.pt")
    with torch.no_grad():
        logits = model(inputs).logits
    report["max_logit_difference"] = (logits - torch.load(f"{folder}/../logits.pt")).abs().max().item()

    segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True)
    image = Image.open(f"{folder}/../image.png")
    report["segments"] = [(s["label"], s["mask"].size, s["mask"].mode) for s in segmenter(image)]
    print(json.dumps(report))
    """
)


def test_remote_code_loads_without_the_package(tmp_path):
    folder = tmp_path / "segret-remote"
    model = SegRetForSemanticSegmentation(small_config()).eval()
    model.save_pretrained(folder)
    SegRetImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)

    saved = sorted(path.name for path in folder.iterdir())
    assert {name for name in saved if name.endswith(".py")} == set(REMOTE_CODE_FILES)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoBackbone", "AutoModelForSemanticSegmentation"}

    inputs = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.save(model(inputs).logits, tmp_path / "logits.pt")
    torch.save(inputs, tmp_path / "inputs.pt")
    Image.new("RGB", (50, 40), (120, 30, 200)).save(tmp_path / "image.png")

    report = run_in_fresh_process(FRESH_PROCESS, str(folder), cwd=tmp_path)

    assert report["config"] == "SegRetConfig" and report["config_module"].startswith("transformers_modules.")
    assert report["model"] == "SegRetModel"
    assert report["segmentation_model"] == "SegRetForSemanticSegmentation"
    assert report["processor"] == "SegRetImageProcessor"
    # Not bit-identical: CPU kernels may take another path for differently aligned (memory-mapped) weights.
    assert report["max_logit_difference"] <= 1e-6
    assert report["segments"], "the pipeline found no segment"
    for label, size, mode in report["segments"]:
        assert label in model.config.id2label.values()
        assert tuple(size) == (50, 40) and mode == "L"


def test_remote_code_files_are_the_whole_remote_code():
    """`REMOTE_CODE_FILES` is closed: every module that the auto_map, the pipeline entry, the registered classes and
    the files' own relative imports name is one of them; each imports installed libraries only, never the package."""
    modules = {Path(name).stem for name in REMOTE_CODE_FILES}
    for name in REMOTE_CODE_FILES:
        path = PACKAGE / name
        assert set(get_relative_imports(path)) <= modules, name
        check_imports(path)  # raises ImportError naming a library that is not installed
        assert not {"modeling_segret", "training"} & set(get_imports(path)), f"{name} imports the project absolutely"
    named = [*REMOTE_CODE_AUTO_MAP.values(), *(entry["impl"] for entry in REMOTE_CODE_PIPELINES.values())]
    assert {reference.split(".")[0] for reference in named} <= modules
    registered = (SegRetConfig, SegRetModel, SegRetBackbone, SegRetForSemanticSegmentation, SegRetImageProcessor)
    for cls in registered:
        assert cls._auto_class is not None and cls.__module__.rsplit(".", 1)[-1] in modules, cls.__name__
