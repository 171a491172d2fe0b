"""The saved folder is Hub remote code for every transformers a user may have: the oldest supported (4.57), an early
5.x and the newest, each in a small venv (built once, cached in .cache/compat-venvs/) where the package is blocked.

The full matrix, every minor release, is `python scripts/compat_matrix.py` (docs/compatibility.md).
"""

import ast
import logging
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import small_config
from PIL import Image

import modeling_segret
from modeling_segret import SegRetBackbone, SegRetForSemanticSegmentation, SegRetImageProcessor
from scripts.compat_matrix import TEST_VERSIONS, _wheel_requirements, ensure_venv, run_probe, save_reference

OLDEST = TEST_VERSIONS[0]
# The checks a user relies on; AutoBackbone from a local folder is the exception (docs/compatibility.md), tested
# on its own.
CORE_CHECKS = ("auto_classes", "image_processor", "pipeline", "no_error_log", "backbone_alternatives")


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory) -> Path:
    """A small model + processor saved by this environment, with the inputs and outputs of the saving process."""
    folder = tmp_path_factory.mktemp("reference") / "segret"
    save_reference(folder)
    return folder


def _failures(report: dict, names: tuple[str, ...]) -> dict:
    return {name: report["checks"][name] for name in names if not report["checks"][name]["ok"]}


def test_venv_layer_takes_the_integration_release_the_wheel_accepts(tmp_path):
    """An older transformers declares `kernels` only in extras; its venv's layer pins the release those accept, not
    the environment's (transformers 5.25 requires kernels 0.19, which breaks 5.1's import of its pipelines)."""
    wheel = tmp_path / "transformers-5.1.0-py3-none-any.whl"
    metadata = (
        "Requires-Dist: huggingface-hub<2.0,>=1.3.0\n"
        'Requires-Dist: kernels<0.11,>=0.10.2; extra == "kernels"\n'
        'Requires-Dist: kernels<0.11,>=0.10.2; extra == "all"\n'
        'Requires-Dist: tokenizers<=0.23.0,>=0.22.0; extra == "tokenizers"\n'
    )
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("transformers-5.1.0.dist-info/METADATA", metadata)
    assert _wheel_requirements(wheel, ("huggingface-hub", "tokenizers")) == ["huggingface-hub<2.0,>=1.3.0"]
    assert _wheel_requirements(wheel, ("kernels",), from_extras=True) == ["kernels<0.11,>=0.10.2"]
    assert _wheel_requirements(wheel, ("kernels",)) == []


@pytest.mark.slow
@pytest.mark.parametrize("version", TEST_VERSIONS)
def test_current_folder_loads_as_remote_code(version, reference_folder, tmp_path):
    python = ensure_venv(version)
    site_packages = next(python.parent.parent.glob("lib/python*/site-packages"))
    assert not list(site_packages.glob("torch*")), "the venv must reuse the system torch"

    report = run_probe(python, "load", reference_folder, tmp_path)

    assert report["transformers"] == version
    assert not _failures(report, CORE_CHECKS)
    assert "max logit difference" in report["checks"]["auto_classes"]["detail"]
    if version.startswith("4."):  # 5.x asks the Hub whether the path is a repo (docs/compatibility.md)
        assert report["checks"]["auto_backbone"]["ok"], report["checks"]["auto_backbone"]


@pytest.mark.slow
def test_folder_saved_by_the_oldest_transformers_loads_here(tmp_path):
    folder = tmp_path / "saved-by-oldest" / "segret"
    saved = run_probe(ensure_venv(OLDEST), "save", folder, tmp_path, with_package=True)
    assert saved["transformers"] == OLDEST

    report = run_probe(sys.executable, "load", folder, tmp_path)

    assert not _failures(report, CORE_CHECKS)


def test_pipeline_logs_no_error(tmp_path, caplog):
    from transformers import pipeline

    folder = tmp_path / "segret"
    SegRetForSemanticSegmentation(small_config()).save_pretrained(folder)
    SegRetImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    with caplog.at_level(logging.WARNING, logger="transformers"):
        logging.getLogger("transformers").addHandler(caplog.handler)  # transformers' root logger does not propagate
        try:
            segmenter = pipeline("image-segmentation", model=str(folder), trust_remote_code=True)
            segments = segmenter(Image.new("RGB", (30, 20), (10, 200, 40)))
        finally:
            logging.getLogger("transformers").removeHandler(caplog.handler)
    assert segments and all(segment["mask"].size == (30, 20) for segment in segments)
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors


def test_backbone_alternatives_to_auto_backbone_from_a_folder(tmp_path):
    from transformers import AutoBackbone, AutoConfig

    folder = tmp_path / "segret"
    model = SegRetForSemanticSegmentation(small_config()).eval()
    model.save_pretrained(folder)
    pixel_values = torch.randn(1, 3, 64, 64)

    backbone = SegRetBackbone.from_pretrained(folder).eval()
    with torch.no_grad():
        stage_maps = model.segret(pixel_values, output_hidden_states=True).hidden_states
        feature_maps = backbone(pixel_values).feature_maps
    for feature_map, index in zip(feature_maps, backbone.out_indices):
        torch.testing.assert_close(feature_map, stage_maps[index], rtol=0, atol=0)

    from_config = AutoBackbone.from_config(AutoConfig.from_pretrained(folder))
    assert isinstance(from_config, SegRetBackbone)


def test_version_shims_live_in_one_module():
    """Only compat_segret.py chooses between transformers releases: no other file of the package wraps an import
    from transformers in try / except, so dropping a release is an edit of that one file."""
    package = Path(modeling_segret.__file__).parent
    assert (package / "compat_segret.py").is_file()
    guarded = []
    for path in sorted(package.glob("*.py")):
        if path.name == "compat_segret.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Try):
                continue
            for statement in ast.walk(node):
                modules = []
                if isinstance(statement, ast.ImportFrom) and statement.level == 0:
                    modules = [statement.module or ""]
                elif isinstance(statement, ast.Import):
                    modules = [alias.name for alias in statement.names]
                if any(module.split(".")[0] == "transformers" for module in modules):
                    guarded.append(f"{path.name}:{statement.lineno}")
    assert not guarded, f"transformers imports guarded by try / except outside compat_segret.py: {guarded}"
