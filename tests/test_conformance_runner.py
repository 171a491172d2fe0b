"""scripts/run_transformers_conformance.py: unpacking a transformers source tree (no network, no pytest run)."""

import importlib.util
import io
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "run_transformers_conformance.py"


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("run_transformers_conformance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_archive(path: Path, files: dict[str, str]) -> Path:
    """A .tar.gz with one top-level folder, like an sdist or a GitHub archive."""
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(f"transformers-9.9.9/{name}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def test_sdist_is_unpacked_as_a_package_with_listed_stand_ins(runner, tmp_path):
    archive = make_archive(
        tmp_path / "transformers-9.9.9.tar.gz",
        {
            "tests/test_modeling_common.py": "from .generation.test_utils import GenerationTesterMixin\n",
            "tests/generation/test_utils.py": "class GenerationTesterMixin:\n    real = True\n",
            "src/transformers/utils/hub.py": "",  # only the top-level tests/ and utils/ are taken
        },
    )
    target = tmp_path / "cache" / "9.9.9"
    target.parent.mkdir()
    runner.unpack(archive, target)

    package = target / runner.PACKAGE
    assert (package / "__init__.py").is_file() and (package / "generation" / "__init__.py").is_file()
    assert "real = True" in (package / "generation" / "test_utils.py").read_text()  # present: not replaced
    expected_stand_ins = sorted(path for path in runner.STAND_INS if not path.endswith("generation/test_utils.py"))
    assert sorted((target / "STAND_INS.txt").read_text().split()) == expected_stand_ins
    for path in expected_stand_ins:
        assert "Stand-in" in (target / path).read_text()
    assert not (target / "src").exists()
    assert sorted(path.name for path in target.parent.iterdir()) == ["9.9.9"]  # no scratch folder left behind


def test_an_archive_without_the_common_tests_is_refused(runner, tmp_path):
    archive = make_archive(tmp_path / "other.tar.gz", {"README.md": "not transformers"})
    target = tmp_path / "cache" / "9.9.9"
    target.parent.mkdir()
    with pytest.raises(SystemExit, match="no tests/test_modeling_common.py"):
        runner.unpack(archive, target)
    assert not target.exists()
