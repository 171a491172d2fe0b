# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Assemble a self-contained Hub repository for a SegRet checkpoint, validate it, and upload it in one commit.

    python -m training.publish SOURCE [--output_dir DIR] [--repo_id ORG/NAME] [--dataset ade20k]
    python -m training.publish SOURCE --push --repo_id ORG/NAME [--private] [--revision BRANCH] [--create_pr]

SOURCE is a folder with `config.json` and `model.safetensors` (or safetensors shards with their index): the output
of `training/train.py`, of `python -m modeling_segret.convert_rmt_checkpoint`, or any SegRet `save_pretrained`.
Read from it as well, when present:

- `preprocessor_config.json`: the image processor (otherwise the dataset's test-time processor is written);
- `eval_results.json` and `eval_results_*.json`: this checkpoint's results, from `training/evaluation.py` (one mode
  per file: collect the ss/slide and ms files here, or pass `--eval_results`) or `training/train.py`. The formats are
  described in `training/model_card.py`. Without results the card states that its numbers are the paper's and has no
  `model-index`;
- `training_args.json` (written by `training/train.py`) or `recipe.yaml` / `recipe.yml` / `recipe.json`: the
  training recipe shown in the card.

Nothing else is taken from SOURCE (no optimizer states, checkpoints, logs or overlays). The output folder holds the
weights (`model.safetensors`), `config.json` whose `auto_map` covers AutoConfig, AutoModel, AutoBackbone and
AutoModelForSemanticSegmentation, `preprocessor_config.json` mapped to the image processor, the remote code
(`modeling_segret.REMOTE_CODE_FILES`, written by `save_pretrained`: the model, configuration, image processor and
pipeline classes, `inference_segret.py` for sliding-window and multi-scale inference, the transformers-version
shims), the model card `README.md`, and the results and recipe files it read.

The folder is always validated (only `--skip_validation` without `--push` skips it): static checks of its files and
card, then `training/check_hub_folder.py` in a fresh Python process, in which `modeling_segret` cannot be imported:
it loads the folder through every Auto class of its `auto_map`, compares the outputs with the source model's, runs
the `image-segmentation` pipeline on a sample image and the shipped sliding-window inference (the script also runs
on its own, on any folder). Any problem raises `PublishError`. `--push` then uploads the folder
in one commit (`HfApi.create_commit`) with the token of `huggingface-cli login` or `HF_TOKEN` (or `--token`);
files of an earlier upload that the folder no longer has are deleted in the same commit.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard

from demo.space import write_space
from modeling_segret import REMOTE_CODE_FILES, SegRetConfig, SegRetForSemanticSegmentation, SegRetImageProcessor
from modeling_segret.complexity import variant_name
from training import configure_logging
from training.check_hub_folder import REPORT_PREFIX
from training.checkpoints import training_folder_problem
from training.model_card import (
    EvalRecord,
    dataset_info,
    dataset_key,
    load_eval_results,
    load_recipe,
    render_card,
    repository_name,
)

REQUIRED_AUTO_MAP = ("AutoConfig", "AutoModel", "AutoBackbone", "AutoModelForSemanticSegmentation")
RECIPE_FILES = ("training_args.json", "recipe.yaml", "recipe.yml", "recipe.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
METAINFO_PATH = Path(__file__).resolve().with_name("metainfo.json")
# Loads the assembled folder in a fresh process where `modeling_segret` cannot be imported; runs on its own too.
CHECK_SCRIPT = Path(__file__).resolve().with_name("check_hub_folder.py")


class PublishError(RuntimeError):
    """The source or the assembled folder is not a publishable SegRet repository; the message says why."""


@dataclass
class Source:
    """What `assemble` read from the source folder."""

    path: Path
    config: SegRetConfig
    eval_files: list[Path]
    eval_results: list[EvalRecord]
    recipe_file: Path | None
    recipe: dict | None


# ------------------------------------------------------------------------------------------------- reading
def _weight_files(folder: Path) -> list[Path]:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise PublishError(f"{index} lists shards that are missing: {missing}")
        return [index] + [folder / name for name in shards]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    hint = f" (found {pickles}: load and re-save the model with save_pretrained to get safetensors)" if pickles else ""
    raise PublishError(f"{folder} has no model.safetensors or model.safetensors.index.json{hint}.")


def read_source(
    source: str | Path, eval_results: Sequence[str | Path] | None = None, recipe: str | Path | None = None
) -> Source:
    """Checks the source folder and reads its config, results and recipe (explicit paths win over its files)."""
    path = Path(source)
    if not path.is_dir():
        raise PublishError(f"The source {path} is not a folder.")
    config_file = path / "config.json"
    if (problem := training_folder_problem(path)) is not None:
        raise PublishError(problem)
    if not config_file.is_file():
        raise PublishError(f"{path} has no config.json: pass a folder written by save_pretrained.")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != SegRetConfig.model_type:
        raise PublishError(f"{config_file} has model_type {model_type!r}, not {SegRetConfig.model_type!r}.")
    _weight_files(path)
    config = SegRetConfig.from_pretrained(path)

    eval_files = (
        [Path(p) for p in eval_results] if eval_results is not None else sorted(path.glob("eval_results*.json"))
    )
    for file in eval_files:
        if not file.is_file():
            raise PublishError(f"Evaluation results {file} do not exist.")
    try:
        records = load_eval_results(eval_files)
    except ValueError as error:
        raise PublishError(str(error)) from error

    recipe_file = (
        Path(recipe) if recipe is not None else next((path / n for n in RECIPE_FILES if (path / n).is_file()), None)
    )
    if recipe_file is not None and not recipe_file.is_file():
        raise PublishError(f"The recipe {recipe_file} does not exist.")
    try:
        recipe_values = load_recipe(recipe_file) if recipe_file else None
    except ValueError as error:
        raise PublishError(str(error)) from error
    return Source(path, config, eval_files, records, recipe_file, recipe_values)


def infer_dataset(source: Source, dataset: str | None = None) -> str | None:
    """The training dataset: `dataset`, else the results', the recipe's, or the paper dataset with these classes."""
    from_results = {dataset_key(r.dataset) for r in source.eval_results if r.dataset}
    if dataset is not None:
        if from_results and from_results != {dataset_key(dataset)}:
            raise PublishError(f"--dataset {dataset} but the evaluation results are for {sorted(from_results)}.")
        return dataset_key(dataset)
    if from_results:
        return from_results.pop()
    if source.recipe and source.recipe.get("dataset"):
        return dataset_key(str(source.recipe["dataset"]))
    names = [source.config.id2label[i] for i in range(source.config.num_labels)]
    for key, values in json.loads(METAINFO_PATH.read_text()).items():
        if values["classes"] == names:
            return key
    return None


def _class_names(dataset: str | None, num_labels: int) -> list[str] | None:
    info = dataset_info(dataset)
    if info is None:
        return None
    classes = json.loads(METAINFO_PATH.read_text())[info.key]["classes"]
    return classes if len(classes) == num_labels else None


def default_image_processor(dataset: str | None, variant: str | None) -> SegRetImageProcessor:
    """The dataset's test-time processor: keep-ratio resize to its test scale (ADE20K also reduces labels)."""
    info = dataset_info(dataset, variant)
    if info is None:
        return SegRetImageProcessor()
    long_side, short_side = info.test_scale
    return SegRetImageProcessor(
        size={"shortest_edge": short_side, "longest_edge": long_side}, do_reduce_labels=info.reduce_labels
    )


def decoder_is_untrained(model: SegRetForSemanticSegmentation) -> bool:
    """True when every zero-initialised residual is still exactly zero: no training step has touched the decoder."""
    residuals = getattr(model.decode_head, "zero_init_residuals", None)
    if not residuals:
        return False
    return all(not parameter.any() for module in residuals for parameter in module.parameters())


# ----------------------------------------------------------------------------------------------- assembling
def _prepare_output(output_dir: Path, source: Path, overwrite: bool) -> None:
    resolved, source_resolved = output_dir.resolve(), source.resolve()
    if resolved == source_resolved or resolved in source_resolved.parents:
        raise PublishError(f"The output folder {output_dir} must not be the source folder or contain it.")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise PublishError(f"{output_dir} is not empty; pass --overwrite to replace it.")
        if (output_dir / ".git").exists():
            raise PublishError(f"{output_dir} is a git checkout; refusing to delete it. Choose another --output_dir.")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)


def assemble(
    source: str | Path,
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    dataset: str | None = None,
    eval_results: Sequence[str | Path] | None = None,
    recipe: str | Path | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
) -> Path:
    """Writes the Hub-ready folder of the checkpoint in `source` to `output_dir` (see the module docstring)."""
    source_data = read_source(source, eval_results, recipe)
    output_dir = Path(output_dir)
    _prepare_output(output_dir, source_data.path, overwrite)
    dataset = infer_dataset(source_data, dataset)

    try:
        model, loading = SegRetForSemanticSegmentation.from_pretrained(source_data.path, output_loading_info=True)
    except (OSError, ValueError) as error:  # a damaged, incomplete or non-finite checkpoint, named by the model
        raise PublishError(str(error)) from error
    problems = {kind: sorted(map(str, loading.get(kind) or ())) for kind in ("missing_keys", "unexpected_keys",
                "mismatched_keys", "error_msgs")}  # fmt: skip
    if any(problems.values()):
        # A backbone-only or otherwise mismatched checkpoint would be published with random weights.
        details = "; ".join(f"{kind}: {values[:6]}" for kind, values in problems.items() if values)
        raise PublishError(f"{source_data.path} does not hold a complete SegRetForSemanticSegmentation: {details}")
    config = model.config
    variant = variant_name(config)
    placeholder = all(config.id2label[i] == f"LABEL_{i}" for i in range(config.num_labels))
    names = _class_names(dataset, config.num_labels)
    if placeholder and names:
        # Converted checkpoints carry LABEL_<i>; the pipeline and the card show these names.
        config.id2label = dict(enumerate(names))
        config.label2id = {name: index for index, name in enumerate(names)}
    model.save_pretrained(output_dir)

    if (source_data.path / "preprocessor_config.json").is_file():
        processor = SegRetImageProcessor.from_pretrained(source_data.path)
    else:
        processor = default_image_processor(dataset, variant)
    processor.save_pretrained(output_dir)

    for index, file in enumerate(source_data.eval_files):
        # evaluation.py names every result eval_results.json: results from several folders must not overwrite.
        taken = [other.name for other in source_data.eval_files[:index]]
        name = file.name if file.name not in taken else f"{file.stem}_{index}{file.suffix}"
        shutil.copy2(file, output_dir / name)
    if source_data.recipe_file is not None:
        shutil.copy2(source_data.recipe_file, output_dir / source_data.recipe_file.name)

    hub_dataset = None
    if source_data.recipe and isinstance(source_data.recipe.get("dataset_path"), str):
        candidate = source_data.recipe["dataset_path"]
        # A Hub id ("org/name") rather than a local path: the metadata links the data actually used.
        if candidate.count("/") == 1 and not Path(candidate).exists() and not candidate.startswith((".", "/")):
            hub_dataset = candidate
    card = render_card(
        config,
        repo_id=repo_id or f"your-org/{repository_name(variant, dataset)}",
        dataset=dataset,
        eval_results=source_data.eval_results,
        recipe=source_data.recipe,
        recipe_name=source_data.recipe_file.name if source_data.recipe_file else None,
        recipe_recorded=True,
        hub_dataset=hub_dataset,
        license=license,
        decoder_trained=not decoder_is_untrained(model),
    )
    (output_dir / "README.md").write_text(card)
    return output_dir


# ---------------------------------------------------------------------------------------------- validating
def _relative_imports(path: Path) -> list[str]:
    """Modules imported as `from .module import ...` by a code file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level and node.module]


def check_folder(folder: str | Path) -> dict[str, Any]:
    """Static checks of an assembled folder; returns its parsed config and card metadata."""
    folder = Path(folder)
    problems = []
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if not config:
        problems.append("config.json is missing")
    auto_map = config.get("auto_map", {})
    missing = [name for name in REQUIRED_AUTO_MAP if name not in auto_map]
    if missing:
        problems.append(f"config.json's auto_map lacks {missing}")
    processor_config = folder / "preprocessor_config.json"
    processor_map = json.loads(processor_config.read_text()).get("auto_map", {}) if processor_config.is_file() else {}
    if "AutoImageProcessor" not in processor_map:
        problems.append("preprocessor_config.json is missing or has no auto_map entry for AutoImageProcessor")
    for reference in [*auto_map.values(), *processor_map.values()]:
        module = reference.split("--")[-1].split(".")[0]
        if not (folder / f"{module}.py").is_file():
            problems.append(f"auto_map points to {reference} but {module}.py is missing")
    for task, entry in config.get("custom_pipelines", {}).items():
        module = str(entry.get("impl", "")).split(".")[0]
        if not (folder / f"{module}.py").is_file():
            problems.append(f"custom_pipelines[{task!r}] points to {entry.get('impl')} but {module}.py is missing")
    missing_code = [name for name in REMOTE_CODE_FILES if not (folder / name).is_file()]
    if missing_code:
        problems.append(f"the remote code files {missing_code} are missing")
    for code_file in folder.glob("*.py"):
        for module in _relative_imports(code_file):
            if "." in module or not (folder / f"{module}.py").is_file():
                problems.append(f"{code_file.name} imports .{module}, which is not a file of the folder")
    if (folder / "__init__.py").exists():
        problems.append("__init__.py must not be shipped (the remote code is loaded file by file)")
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        problems.append(f"pickle files {pickles} must not be shipped; the weights are safetensors")
    try:
        _weight_files(folder)
    except PublishError as error:
        problems.append(str(error))
    metadata: dict = {}
    if not (folder / "README.md").is_file():
        problems.append("README.md (the model card) is missing")
    else:
        metadata = ModelCard((folder / "README.md").read_text()).data.to_dict()
        if metadata.get("library_name") != "transformers" or metadata.get("pipeline_tag") != "image-segmentation":
            problems.append("the card's metadata needs library_name: transformers and pipeline_tag: image-segmentation")
    if problems:
        raise PublishError(f"{folder} is not a valid SegRet repository:\n- " + "\n- ".join(problems))
    return {"config": config, "metadata": metadata}


@torch.no_grad()
def reference_outputs(source: str | Path, input_size: tuple[int, int] = (64, 96), seed: int = 0) -> dict:
    """The source model's logits, last hidden state and backbone feature maps on a seeded random input."""
    model = SegRetForSemanticSegmentation.from_pretrained(source).eval()
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(1, model.config.num_channels, *input_size, generator=generator)
    outputs = model(pixel_values.to(model.dtype), output_hidden_states=True)
    return {
        "pixel_values": pixel_values,
        "logits": outputs.logits,
        "last_hidden_state": outputs.hidden_states[-1],
        "feature_maps": [outputs.hidden_states[index] for index in model.config.out_indices],
    }


def validate(
    folder: str | Path, source: str | Path, *, tolerance: float = 1e-4, timeout: float = 1800
) -> dict[str, Any]:
    """Static checks, then `training/check_hub_folder.py` in a fresh process: the folder loaded without the
    `modeling_segret` package, its outputs compared with those of the model in `source`.

    Returns the fresh process's report; raises `PublishError` on any problem.
    """
    folder = Path(folder).resolve()
    check_folder(folder)
    with tempfile.TemporaryDirectory(prefix="segret-validate-") as work:
        work = Path(work)
        torch.save(reference_outputs(source), work / "reference.pt")
        environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        environment.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(work / "modules"), TOKENIZERS_PARALLELISM="false")
        command = [sys.executable, str(CHECK_SCRIPT), str(folder), "--reference", str(work / "reference.pt"),
                   "--tolerance", str(tolerance)]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, cwd=work, env=environment, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise PublishError(f"Validating {folder} took more than {timeout:.0f} s.") from error
    lines = [line for line in result.stdout.splitlines() if line.startswith(REPORT_PREFIX)]
    report = json.loads(lines[-1].removeprefix(REPORT_PREFIX)) if lines else None
    if report is None or (result.returncode != 0 and not report["problems"]):
        raise PublishError(
            f"{folder} does not load without the modeling_segret package (exit status {result.returncode}):\n"
            + (result.stderr or result.stdout)[-4000:]
        )
    if report["problems"]:
        raise PublishError(f"{folder} failed validation:\n- " + "\n- ".join(report["problems"]))
    return report


# ----------------------------------------------------------------------------------------------- uploading
def commit_operations(folder: str | Path, existing_files: Sequence[str] = ()) -> list:
    """One `CommitOperationAdd` per file of `folder`, and a delete for each other file already in the repository."""
    folder = Path(folder)
    files = sorted(path for path in folder.rglob("*") if path.is_file() and ".cache" not in path.parts)
    paths = {path.relative_to(folder).as_posix() for path in files}
    operations: list = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in files
    ]
    operations += [
        CommitOperationDelete(path_in_repo=name)
        for name in sorted(existing_files)
        if name not in paths and name != ".gitattributes"
    ]
    return operations


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
) -> CommitInfo:
    """Uploads `folder` to `repo_id` in one commit; creates the repository (and the branch `revision`) if needed."""
    if repo_id.count("/") != 1:
        raise PublishError(f"--repo_id must be ORG/NAME, got {repo_id!r}.")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    existing = api.list_repo_files(repo_id, revision=revision, repo_type="model")
    operations = commit_operations(folder, existing)
    message = commit_message or f"Upload {repo_id.split('/')[-1]} (model, processor, remote code and model card)"
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=message,
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
        repo_type="model",
    )


# ------------------------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(
        prog="python -m training.publish",
        description="Build a Hub-ready SegRet repository (weights, config, processor, remote code, model card), "
        "validate it in a fresh process, and optionally upload it in one commit.",
    )
    parser.add_argument("source", type=Path, help="folder with config.json and model.safetensors")
    parser.add_argument("--output_dir", type=Path, help="where to write the repository (default: SOURCE-hub)")
    parser.add_argument("--repo_id", help="ORG/NAME on the Hub (used in the card's snippets; required with --push)")
    parser.add_argument("--dataset", help="training dataset: ade20k, cityscapes, coco_stuff or another name "
                        "(default: from the results, the recipe or the class names)")  # fmt: skip
    parser.add_argument(
        "--eval_results", nargs="+", type=Path, help="results files (default: SOURCE/eval_results*.json)"
    )
    parser.add_argument("--recipe", type=Path, help="recipe file (default: SOURCE/training_args.json or recipe.*)")
    parser.add_argument("--license", default="apache-2.0", help="license identifier for the card (default: apache-2.0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--skip_validation", action="store_true", help="skip the fresh-process check (not with --push)")
    parser.add_argument("--space", action="store_true", help="also write a Gradio demo Space for --repo_id beside "
                        "the output folder (OUTPUT-space; demo/space.py)")  # fmt: skip
    hub = parser.add_argument_group("upload")
    hub.add_argument("--push", action="store_true", help="upload the folder to --repo_id in one commit")
    hub.add_argument("--private", action="store_true", help="create the repository as private")
    hub.add_argument("--revision", help="branch to commit to (created if missing; default: main)")
    hub.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing directly")
    hub.add_argument("--commit_message", help="commit title")
    hub.add_argument("--token", help="Hub token (default: the saved login or HF_TOKEN)")
    args = parser.parse_args(argv)
    if (args.push or args.space) and not args.repo_id:
        parser.error(f"{'--push' if args.push else '--space'} needs --repo_id ORG/NAME")
    if args.push and args.skip_validation:
        parser.error("--skip_validation cannot be combined with --push: only validated folders are uploaded")
    output_dir = args.output_dir or args.source.with_name(args.source.resolve().name + "-hub")
    try:
        folder = assemble(
            args.source,
            output_dir,
            repo_id=args.repo_id,
            dataset=args.dataset,
            eval_results=args.eval_results,
            recipe=args.recipe,
            license=args.license,
            overwrite=args.overwrite,
        )
        print(f"wrote {folder}: " + ", ".join(sorted(path.name for path in folder.iterdir())))
        if args.skip_validation:
            check_folder(folder)
            print("static checks passed; fresh-process validation skipped")
        else:
            report = validate(folder, args.source)
            print(
                "validated without the modeling_segret package: "
                + ", ".join(f"{name} → {cls}" for name, cls in report["classes"].items())
                + f"; max output difference {max(report['differences'].values()):.3g}; "
                f"pipeline segments {[label for label, _, _ in report['segments']]}"
            )
            for note in report["notes"]:
                print(f"note: {note}")
        if args.space:
            space = write_space(folder.with_name(folder.name + "-space"), args.repo_id, license=args.license,
                                overwrite=args.overwrite)  # fmt: skip
            print(f"wrote the demo Space {space} (upload: huggingface-cli upload --repo-type space NAME {space} .)")
        if args.push:
            commit = push(
                folder,
                args.repo_id,
                private=args.private,
                revision=args.revision,
                commit_message=args.commit_message,
                create_pr=args.create_pr,
                token=args.token,
            )
            print(f"pushed to {commit.commit_url}" + (f" (pull request {commit.pr_url})" if commit.pr_url else ""))
    except (PublishError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
