#!/usr/bin/env python
"""Runs transformers' own common test mixins on SegRet, from the tests of the installed transformers release.

    python scripts/run_transformers_conformance.py            # fetch (once) and run, for the installed version
    python scripts/run_transformers_conformance.py -k backbone  # extra arguments go to pytest

The mixins (`ModelTesterMixin`, `BackboneTesterMixin`, `ConfigTester`, `ImageProcessingTestMixin`) live in
transformers' `tests/` folder, which the source distribution on PyPI ships. The script downloads that sdist with
`pip download` (or takes `--source`, an sdist / GitHub archive `.tar.gz` or a transformers checkout), unpacks its
`tests/` as the package `transformers_tests` into `.cache/transformers-conformance/<version>/` (git-ignored), and
runs our testers in tests/conformance/ against it with pytest. Network is needed only for the first download.

The PyPI sdist ships only the top-level `tests/test_*.py` files, not the helper modules they import (the export and
generation mixins, the common config kwargs, the CI fixture fetcher). Where one is missing, a small stand-in is
written next to them (see `STAND_INS`) and listed in the output, so what ran is never in doubt; a full checkout
passed as `--source` needs none.
"""

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPOSITORY / ".cache" / "transformers-conformance"
TESTERS = REPOSITORY / "tests" / "conformance"
PACKAGE = "transformers_tests"  # transformers' tests/, under a name that cannot shadow our own tests/

# Helper modules that the mixins import and the PyPI sdist lacks: path inside the unpacked folder -> stand-in source.
STAND_INS = {
    f"{PACKAGE}/exporters/test_export.py": '''"""Stand-in (the sdist lacks tests/exporters/):
no torch.export tests run."""


class ExportTesterMixin:
    pass
''',
    f"{PACKAGE}/generation/test_utils.py": '''"""Stand-in (the sdist lacks tests/generation/):
SegRet cannot generate, so its tester never uses this mixin."""


class GenerationTesterMixin:
    pass
''',
    f"{PACKAGE}/utils/test_configuration_utils.py": '''"""Stand-in (the sdist lacks tests/utils/): every argument of
`PreTrainedConfig.__init__` with a non-default value, for `ConfigTester.check_config_arguments_init`."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["SegRetModel"],
    "id2label": {0: "label"},
    "label2id": {"label": 0},
    "problem_type": "regression",
}
''',
    "utils/fetch_hub_objects_for_ci.py": '''"""Stand-in (the sdist lacks utils/):
test images are not pre-fetched; a test that needs one downloads it."""


def url_to_local_path(url, *args, **kwargs):
    return url
''',
}


def installed_transformers_version() -> str:
    return importlib.metadata.version("transformers")


def download_sdist(version: str, destination: Path) -> Path:
    """`pip download` of the transformers source distribution (no wheel, no dependencies) into `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += ["--dest", str(destination), f"transformers=={version}"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    archives = sorted(destination.glob(f"transformers-{version}.tar.gz"))
    if not archives:
        raise SystemExit(f"pip download did not leave transformers-{version}.tar.gz in {destination}.")
    return archives[0]


def unpack(source: Path, target: Path) -> None:
    """Copies `tests/` (as `transformers_tests/`) and `utils/` of an archive or checkout of transformers to `target`."""
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        if source.is_dir():
            root = source
        else:
            with tarfile.open(source) as archive:
                members = [
                    member for member in archive.getmembers() if member.name.split("/")[1:2] in (["tests"], ["utils"])
                ]
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # no paths outside `scratch`
                archive.extractall(scratch, members=members, **safe)
            top_level = list(Path(scratch).iterdir())  # sdists and GitHub archives have one top-level folder
            root = top_level[0] if len(top_level) == 1 else Path(scratch)
        if not (root / "tests" / "test_modeling_common.py").is_file():
            raise SystemExit(f"{source} has no tests/test_modeling_common.py: not a transformers source tree.")
        staging = Path(scratch) / "staging"
        shutil.copytree(root / "tests", staging / PACKAGE)
        if (root / "utils").is_dir():
            shutil.copytree(root / "utils", staging / "utils")
        (staging / PACKAGE / "__init__.py").touch()
        stand_ins = []
        for relative_path, code in STAND_INS.items():
            path = staging / relative_path
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(code)
                stand_ins.append(relative_path)
        for folder in (staging / PACKAGE).rglob("*"):
            if folder.is_dir() and not (folder / "__init__.py").exists():
                (folder / "__init__.py").touch()  # relative imports between the test helpers need packages
        (staging / "STAND_INS.txt").write_text("".join(f"{path}\n" for path in stand_ins))
        staging.rename(target)  # complete or absent: an interrupted run leaves no half-unpacked cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--source", type=Path, help="transformers sdist / GitHub archive (.tar.gz) or checkout; default: pip download"
    )
    parser.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE, help="where unpacked test trees are kept")
    parser.add_argument("--refresh", action="store_true", help="unpack again even if the cache has this version")
    arguments, pytest_arguments = parser.parse_known_args()
    if importlib.util.find_spec("parameterized") is None:
        raise SystemExit('transformers\' test mixins import `parameterized`: pip install -e ".[conformance]"')

    version = installed_transformers_version()
    target = arguments.cache_dir.resolve() / version
    if arguments.refresh and target.exists():
        shutil.rmtree(target)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        source = arguments.source or download_sdist(version, target.parent / "downloads")
        unpack(source.resolve(), target)
    stand_ins = (target / "STAND_INS.txt").read_text().split()
    print(f"transformers {version}: common tests from {target}")
    if stand_ins:
        print("stand-ins for helper modules the source lacks:", ", ".join(stand_ins))

    environment = dict(os.environ)
    environment["SEGRET_TRANSFORMERS_TESTS"] = str(target)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPOSITORY), str(target), *filter(None, [environment.get("PYTHONPATH")])]
    )
    command = [sys.executable, "-m", "pytest", str(TESTERS), "-p", "no:cacheprovider"]
    command += ["-W", "ignore::pytest.PytestUnknownMarkWarning", *pytest_arguments]  # transformers' own markers
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=REPOSITORY, env=environment).returncode


if __name__ == "__main__":
    sys.exit(main())
