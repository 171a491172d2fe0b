"""The command-line tools start however the documentation starts them, each in a fresh process, and name their flags
in one style (snake_case, as HfArgumentParser's: `--num_labels`, `--output_dir`)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_segret import complexity, convert_rmt_checkpoint, export
from training import check_hub_folder, data, evaluation, model_card, publish, train

REPOSITORY = Path(__file__).resolve().parent.parent
# The installed package only: no PYTHONPATH, and a working directory outside the repository.
INSTALLED_ONLY = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def _start(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *command], cwd=cwd, env=INSTALLED_ONLY, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_tools_start_as_scripts_and_as_modules(tmp_path):
    """`python -m training.<tool>` and `python training/<tool>.py` (what `accelerate launch` runs) both import the
    project as the package `training`, with nothing edited on sys.path."""
    runs = {
        "module": _start(["-m", "training.train", "--help"], tmp_path),
        "script": _start([str(REPOSITORY / "training" / "evaluation.py"), "--help"], tmp_path),
    }
    output = {}
    for form, process in runs.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{form}: {stderr[-3000:]}"
        output[form] = stdout
    # One name, one meaning: --crop_size is training's crop; the evaluation's sliding window has its own names.
    assert "--crop_size" in output["module"] and "--output_dir" in output["module"]
    assert "--slide_crop_size" in output["script"] and "--slide_stride" in output["script"]
    assert "--crop_size " not in output["script"] and "--stride " not in output["script"]


def test_no_module_of_training_shadows_a_library(tmp_path):
    """`python training/train.py` puts training/ first on sys.path: none of its modules may hide a library or a
    standard module of the same name (as training/evaluate.py hid the `evaluate` library)."""
    names = sorted(path.stem for path in (REPOSITORY / "training").glob("*.py") if path.stem != "__init__")
    assert "evaluation" in names and "evaluate" not in names
    probe = (
        "import importlib.util, json, sys; names = json.loads(sys.argv[1]); "
        "print(json.dumps([n for n in names if n in sys.stdlib_module_names or importlib.util.find_spec(n)]))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(names)], cwd=tmp_path, env=INSTALLED_ONLY, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert json.loads(found.stdout) == []
    sources = "".join(path.read_text() for path in (REPOSITORY / "training").glob("*.py"))
    assert not re.search(r"sys\.path(\.insert|\.append|\[)", sources)  # nothing works around a shadowing module


TOOLS = {
    "training/train.py": train.main,
    "training/evaluation.py": evaluation.main,
    "training/data.py": data.main,
    "training/publish.py": publish.main,
    "training/model_card.py": model_card.main,
    "training/check_hub_folder.py": check_hub_folder.main,
    "modeling_segret/convert_rmt_checkpoint.py": convert_rmt_checkpoint.main,
    "modeling_segret/complexity.py": complexity.main,
    "modeling_segret/export.py": export.main,
}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_flags_are_snake_case(tool, capsys):
    with pytest.raises(SystemExit) as exited:
        TOOLS[tool](["--help"])
    assert exited.value.code == 0
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", capsys.readouterr().out))
    assert "--help" in flags and len(flags) > 3
    # HfArgumentParser also accepts `--report-to` for `--report_to`: a dashed spelling is only allowed as such a twin.
    dashed_only = sorted(flag for flag in flags if "-" in flag[2:] and "--" + flag[2:].replace("-", "_") not in flags)
    assert dashed_only == []


def test_conformance_runner_flags_are_snake_case():
    script = REPOSITORY / "scripts" / "run_transformers_conformance.py"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", shown.stdout))
    assert "--cache_dir" in flags and not [flag for flag in flags if "-" in flag[2:]]
