"""Every documented way of loading a saved folder (Auto classes, image processor, pipeline; package imported or not;
`trust_remote_code` unset, False or True) runs with standard input closed and never asks a question, and
`trust_remote_code=True` builds SegRet's pipeline class whether or not the package is imported (docs/pipeline.md).

Each environment runs tests/loading_paths_probe.py twice (package imported, package blocked): here on the installed
transformers, and on the oldest supported and an early 5.x through the compat venvs of scripts/compat_matrix.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import small_config

from modeling_segret import SegRetForSemanticSegmentation, SegRetImageProcessor

REPOSITORY = Path(__file__).resolve().parents[1]
PROBE = REPOSITORY / "tests" / "loading_paths_probe.py"
AUTO_CLASSES = {
    "AutoConfig": "SegRetConfig",
    "AutoModel": "SegRetModel",
    "AutoModelForSemanticSegmentation": "SegRetForSemanticSegmentation",
    "AutoImageProcessor": "SegRetImageProcessor",
}
# transformers' message when a folder's code may not run, and its refusal to build a folder's custom pipeline.
NEEDS_THE_FLAG = "trust_remote_code=True"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "segret"
    SegRetForSemanticSegmentation(small_config()).eval().save_pretrained(folder)
    SegRetImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(folder)
    return folder


def run_probes(python: str, folder: Path, work_dir: Path) -> dict[str, dict]:
    """The probe's reports with the package imported and blocked, run side by side with no standard input."""
    processes = {}
    for mode in ("package", "remote"):
        environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONSTARTUP")}
        environment.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(work_dir / f"modules-{mode}"))
        if mode == "package":  # a compat venv does not have the package installed
            environment["PYTHONPATH"] = str(REPOSITORY)
        processes[mode] = subprocess.Popen(
            [python, str(PROBE), str(folder), mode],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=work_dir,
            env=environment,
        )
    reports = {}
    for mode, process in processes.items():
        # Closed standard input answers a question at once (end of file), so a timeout means something waits.
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        reports[mode] = json.loads(stdout.strip().splitlines()[-1])
    return reports


def check_documented_behaviour(reports: dict[str, dict]) -> None:
    package, remote = reports["package"], reports["remote"]

    # Package imported: nothing asks, whatever the flag; the Auto classes and both explicit pipeline classes load.
    for flag in ("none", "false", "true"):
        results = package["results"][flag]
        for call, class_name in AUTO_CLASSES.items():
            assert results[call].get("built") == class_name, (flag, call, results[call])
        assert results["pipeline, SegRet's class"].get("built") == "SegRetImageSegmentationPipeline", (flag, results)
    # The folder names SegRet's pipeline class: transformers builds it with the flag and refuses without it, the
    # same as where the package is not installed.
    assert package["results"]["true"]["pipeline"].get("built") == "SegRetImageSegmentationPipeline", package
    for flag in ("none", "false"):
        assert NEEDS_THE_FLAG in package["results"][flag]["pipeline"].get("error", ""), package["results"][flag]
    # transformers' own class, asked for by name, with the flag given (unset, transformers' video-processor probe
    # asks on standard input on newer releases: docs/pipeline.md).
    for flag in ("false", "true"):
        assert package["results"][flag]["pipeline, transformers' class"].get("built") == "ImageSegmentationPipeline"
    assert not [question for question in package["questions"] if not question["call"].startswith("none: pipeline, t")]

    # Only the folder's code: with the flag everything loads from it, without the flag (False) everything refuses.
    results = remote["results"]["true"]
    for call, class_name in AUTO_CLASSES.items():
        assert results[call].get("built") == class_name and results[call]["module"].startswith(
            "transformers_modules."
        ), (call, results[call])
    assert results["pipeline"].get("built") == "SegRetImageSegmentationPipeline", results
    assert results["pipeline"]["model_module"].startswith("transformers_modules."), results
    assert results["pipeline, transformers' class"].get("built") == "ImageSegmentationPipeline", results
    for call, result in remote["results"]["false"].items():
        assert NEEDS_THE_FLAG in result.get("error", ""), (call, result)
    # Flag unset and no package: transformers' own consent question for running a folder's code, asked by every
    # call (the one undocumented path); with standard input closed each call fails at once with the same message.
    assert {question["call"] for question in remote["questions"]} == {
        f"none: {call}" for call in remote["results"]["none"]
    }, remote["questions"]
    for call, result in remote["results"]["none"].items():
        assert NEEDS_THE_FLAG in result.get("error", ""), (call, result)


def test_no_loading_path_asks_and_the_flag_builds_segret_pipeline(folder, tmp_path):
    reports = run_probes(sys.executable, folder, tmp_path)
    check_documented_behaviour(reports)
    # On this transformers a folder loaded with the package imported uses the package's classes (they are
    # registered outside transformers, which it prefers to a folder's code), flag or not.
    for flag in ("none", "false", "true"):
        assert reports["package"]["results"][flag]["AutoConfig"]["module"] == "modeling_segret.configuration_segret"


@pytest.mark.slow
@pytest.mark.parametrize("version", ["4.57.6", "5.1.0"])
def test_no_loading_path_asks_on_older_transformers(version, folder, tmp_path):
    from scripts.compat_matrix import ensure_venv

    reports = run_probes(str(ensure_venv(version)), folder, tmp_path)
    assert reports["package"]["transformers"] == reports["remote"]["transformers"] == version
    check_documented_behaviour(reports)
