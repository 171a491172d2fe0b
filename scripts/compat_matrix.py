# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Checks that a saved SegRet folder loads as Hub remote code on many transformers versions.

For each version, a small virtual environment is built once and cached in `.cache/compat-venvs/` (git ignores
`.cache/`): `python -m venv --without-pip`, with the transformers wheel (downloaded once into `.cache/compat-wheels/`)
extracted into it, and two `.pth` files: the first adds a shared layer in `.cache/compat-layers/` with the
huggingface_hub / tokenizers versions that wheel requires, and the release of each `OPTIONAL_INTEGRATIONS` package
that the environment has which the wheel's extras accept (`pip install --target`, torch constrained to the installed
version), the second the site-packages of the interpreter running this script (a virtualenv's or the system's,
whichever holds torch, NumPy and Pillow), so they are reused, never installed again (checked). A venv built for
another environment is rebuilt. A
folder saved by the current environment is then loaded in each venv by `scripts/compat_probe.py`, in a fresh
process where the `modeling_segret` package cannot be imported, and in the
reverse direction a folder saved by each venv (with the package) is loaded by the current environment.

    python scripts/compat_matrix.py                       # every minor release: 4.57.6, 5.0.0 ... 5.25.0
    python scripts/compat_matrix.py --versions 4.57.6 5.1.0

It prints a Markdown table (the table of docs/compatibility.md) and writes the raw results as JSON.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import json
import os
import site
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
PROBE = REPOSITORY / "scripts" / "compat_probe.py"
CACHE = REPOSITORY / ".cache"
VENVS = CACHE / "compat-venvs"
WHEELS = CACHE / "compat-wheels"
LAYERS = CACHE / "compat-layers"

# The newest patch of every minor release from the last 4.x to the newest 5.x (`pip index versions transformers`).
MATRIX_VERSIONS = (
    "4.57.6",
    "5.0.0",
    "5.1.0",
    "5.2.0",
    "5.3.0",
    "5.4.0",
    "5.5.4",
    "5.6.2",
    "5.7.0",
    "5.8.1",
    "5.9.0",
    "5.10.4",
    "5.11.0",
    "5.12.1",
    "5.13.1",
    "5.14.1",
    "5.15.1",
    "5.16.1",
    "5.17.0",
    "5.18.0",
    "5.19.0",
    "5.20.2",
    "5.21.1",
    "5.22.2",
    "5.23.0",
    "5.24.0",
    "5.25.0",
)
# The versions the test suite checks: the oldest supported, an early 5.x (before the backend / strict-config changes)
# and the newest.
TEST_VERSIONS = ("4.57.6", "5.1.0", "5.25.0")

# The table's columns: probe check name -> heading.
COLUMNS = {
    "auto_classes": "Auto classes + logits",
    "image_processor": "AutoImageProcessor",
    "pipeline": "pipeline",
    "auto_backbone": "AutoBackbone (local folder)",
    "backbone_alternatives": "backbone alternatives",
    "no_error_log": "no error log",
    "saved_there_loads_here": "its folder loads in current",
}


def venv_python(version: str, name_suffix: str = "") -> Path:
    return VENVS / f"transformers-{version}{name_suffix}" / "bin" / "python"


# Integrations that transformers uses whenever they are importable but declares only in an extra. The running
# environment's copy may be a release an older transformers cannot use (transformers 5.25 requires `kernels` 0.19,
# whose `LayerRepository` 5.1 calls with arguments it no longer accepts, failing `import transformers.pipelines`), so
# where the environment has one, the layer holds the release that the tested wheel's extra accepts.
OPTIONAL_INTEGRATIONS = ("kernels",)


def _wheel_requirements(wheel: Path, names: tuple[str, ...], from_extras: bool = False) -> list[str]:
    """The `Requires-Dist` lines of a wheel for the given distributions: its plain requirements, or with `from_extras`
    the requirements its extras declare (markers removed, each once)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
    requirements = []
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:") and ("extra ==" in line) == from_extras:
            requirement = line.split(":", 1)[1].split(";")[0].strip()
            name = requirement.split("<")[0].split(">")[0].split("=")[0].split("!")[0].split("[")[0].strip()
            requirement = requirement.replace(" ", "")
            if name.lower().replace("_", "-") in names and requirement not in requirements:
                requirements.append(requirement)
    return requirements


def _installed_integrations() -> tuple[str, ...]:
    """The `OPTIONAL_INTEGRATIONS` installed in the running environment."""
    installed = []
    for name in OPTIONAL_INTEGRATIONS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        installed.append(name)
    return tuple(installed)


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


def environment_site_packages() -> list[str]:
    """The site-packages folders of the running interpreter, in its own order: a virtualenv's (and the base
    interpreter's, where the virtualenv includes them) or the system's. Not `--system-site-packages`: inside a
    user's virtualenv that is the base Python, which holds none of the project's dependencies."""
    folders = site.getsitepackages()
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    return [folder for folder in folders if Path(folder).is_dir()]


def ensure_venv(version: str, extra_requirements: tuple[str, ...] = (), name_suffix: str = "") -> Path:
    """Builds (once per environment) the venv for `transformers==version` (plus `extra_requirements`, in the venv
    named with `name_suffix`); returns its python. Raises RuntimeError on failure."""
    python = venv_python(version, name_suffix)
    venv_dir = python.parent.parent
    integrations = _installed_integrations()
    stamp = json.dumps(
        {"transformers": version, "environment": environment_site_packages(), "integrations": integrations}
    )
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f"{venv_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process (e.g. a parallel test run) may be building it
        complete = venv_dir / ".complete"
        if not complete.exists() or complete.read_text() != stamp:
            _build_venv(version, venv_dir, extra_requirements, integrations)
            complete.write_text(stamp)
    return python


def _build_venv(
    version: str, venv_dir: Path, extra_requirements: tuple[str, ...], integrations: tuple[str, ...]
) -> None:
    """A venv without pip (fast to create) with the transformers wheel extracted into its own site-packages (a
    pure-Python wheel: extracting is installing) and two `.pth` files, read in name order, so the venv's own packages
    come first, then a shared layer holding the huggingface_hub / tokenizers (+ `integrations`, + extra requirements)
    versions this transformers accepts, then the running environment (torch, NumPy, Pillow). Only the venv's own
    site-packages is a site folder: the `.pth` files of the running environment (e.g. an editable install of this
    package) are not run."""
    _check(_run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv_dir)]), "venv")
    wheel = _download_wheel(version)
    site_packages = next(venv_dir.glob("lib/python*/site-packages"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site_packages)
    requirements = _wheel_requirements(wheel, ("huggingface-hub", "tokenizers"))
    requirements += _wheel_requirements(wheel, integrations, from_extras=True)
    layer = _ensure_layer((*requirements, *extra_requirements))
    (site_packages / "segret-compat-1-layer.pth").write_text(f"{layer}\n")
    (site_packages / "segret-compat-2-environment.pth").write_text("\n".join(environment_site_packages()) + "\n")
    for directory in (site_packages, layer):
        if any(directory.glob("torch")) or any(directory.glob("torch-*")):
            raise RuntimeError(f"torch was installed into {directory}; the matrix must reuse the installed torch")
    _check(_run([str(venv_dir / "bin" / "python"), "-c", "import transformers, torch"]), "import")


def _download_wheel(version: str) -> Path:
    WHEELS.mkdir(parents=True, exist_ok=True)
    wheels = list(WHEELS.glob(f"transformers-{version}-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(WHEELS)]
        _check(_run([*command, f"transformers=={version}"]), f"download transformers=={version}")
        wheels = list(WHEELS.glob(f"transformers-{version}-*.whl"))
    return wheels[0]


def _ensure_layer(requirements: tuple[str, ...]) -> Path:
    """`pip install --target` of `requirements` (with their dependencies; torch constrained to the installed version
    so pip can never download it), shared by every venv with the same requirements."""
    name = "-".join(sorted(requirements)).translate(str.maketrans("<>=!,;", "lgenc_"))
    layer = LAYERS / name
    LAYERS.mkdir(parents=True, exist_ok=True)
    with open(LAYERS / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (layer / ".complete").exists():
            constraints = LAYERS / "constraints.txt"
            constraints.write_text(f"torch=={importlib.metadata.version('torch')}\n")
            command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile"]
            command += ["--upgrade", "--target", str(layer), "-c", str(constraints), *requirements]
            _check(_run(command), f"install {list(requirements)}")
            (layer / ".complete").write_text(" ".join(requirements) + "\n")
    return layer


def ensure_training_venv(version: str = TEST_VERSIONS[0]) -> Path:
    """The venv of `version` plus a `datasets` release that accepts its huggingface_hub (for training code)."""
    return ensure_venv(version, extra_requirements=("datasets>=4,<5",), name_suffix="-train")


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def _clean_environment(modules_cache: Path) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONSTARTUP")}
    environment.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(modules_cache), TOKENIZERS_PARALLELISM="false")
    return environment


def run_probe(python: Path | str, mode: str, folder: Path, work_dir: Path, with_package: bool = False) -> dict:
    """Runs compat_probe.py `mode` with `python` in `work_dir`; returns its JSON report."""
    work_dir.mkdir(parents=True, exist_ok=True)
    environment = _clean_environment(work_dir / "modules")
    if with_package:
        environment["PYTHONPATH"] = str(REPOSITORY)
    result = _run([str(python), str(PROBE), mode, str(folder)], cwd=work_dir, env=environment, timeout=900)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"probe {mode} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(lines[-1])


def check_version(version: str, current_folder: Path, work_root: Path) -> dict:
    """All checks of one transformers version: its venv loads `current_folder`, and its own folder loads here."""
    python = ensure_venv(version)
    work_dir = work_root / version
    work_dir.mkdir(parents=True, exist_ok=True)
    report = run_probe(python, "load", current_folder, work_dir)
    try:
        saved = work_dir / "saved-there"
        run_probe(python, "save", saved, work_dir, with_package=True)
        back = run_probe(sys.executable, "load", saved, work_dir / "back")
        ok = all(back["checks"][name]["ok"] for name in ("auto_classes", "image_processor", "pipeline"))
        report["checks"]["saved_there_loads_here"] = {"ok": ok, "detail": "" if ok else json.dumps(back["checks"])}
    except RuntimeError as error:
        report["checks"]["saved_there_loads_here"] = {"ok": False, "detail": str(error)[-500:]}
    return report


def save_reference(folder: Path) -> dict:
    """Saves the reference folder with the current environment (package importable)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return run_probe(sys.executable, "save", folder, folder.parent, with_package=True)


def markdown_table(reports: dict[str, dict]) -> str:
    lines = [
        "| transformers | " + " | ".join(COLUMNS.values()) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for version, report in reports.items():
        if "error" in report:
            cells = [f"not run: {report['error'][:80]}"] + [""] * (len(COLUMNS) - 1)
        else:
            cells = []
            for name in COLUMNS:
                check = report["checks"].get(name)
                cells.append("–" if check is None else ("ok" if check["ok"] else "FAIL") + _note(check))
        lines.append(f"| {version} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _note(check: dict) -> str:
    note = check.get("note")
    return f" ({note})" if note else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=list(MATRIX_VERSIONS))
    parser.add_argument("--output", type=Path, default=CACHE / "compat-matrix.json")
    parser.add_argument("--table", nargs="+", type=Path, help="only print the table of these saved JSON results")
    args = parser.parse_args()
    if args.table:
        reports = {}
        for path in args.table:
            reports.update(json.loads(path.read_text()))
        for version in MATRIX_VERSIONS:
            reports.setdefault(version, {"error": "no saved result"})
        print(markdown_table(dict(sorted(reports.items(), key=lambda item: MATRIX_VERSIONS.index(item[0])))))
        return

    reports: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="segret-compat-") as temporary:
        work_root = Path(temporary)
        reference = work_root / "reference" / "segret"
        save_reference(reference)
        for version in args.versions:
            start = time.perf_counter()
            try:
                reports[version] = check_version(version, reference, work_root)
            except RuntimeError as error:
                reports[version] = {"error": str(error)}
            status = "error" if "error" in reports[version] else "done"
            print(f"{version}: {status} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(reports, indent=2))  # after every version: a long run can be cut
    print(markdown_table(reports))


if __name__ == "__main__":
    main()
