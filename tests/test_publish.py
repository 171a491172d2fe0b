"""Publishing: the assembled folder is a self-contained remote-code repo; the upload is one commit (mocked Hub)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import small_config
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard
from safetensors.torch import load_file

from modeling_segret import REMOTE_CODE_FILES, SegRetForSemanticSegmentation, SegRetImageProcessor, SegRetModel
from training.check_hub_folder import REPORT_PREFIX, sample_image
from training.publish import (
    CHECK_SCRIPT,
    REQUIRED_AUTO_MAP,
    PublishError,
    assemble,
    check_folder,
    main,
    push,
    read_source,
    validate,
)

REPO_ID = "test-org/segret-small-test"
CLASS_NAMES = ["wall", "building", "sky", "floor", "tree"]


def trained_model() -> SegRetForSemanticSegmentation:
    config = small_config(id2label=dict(enumerate(CLASS_NAMES)), label2id={n: i for i, n in enumerate(CLASS_NAMES)})
    model = SegRetForSemanticSegmentation(config).eval()
    with torch.no_grad():  # a trained decoder: the zero-initialised residuals have moved
        for module in model.decode_head.zero_init_residuals:
            module.weight.normal_(std=0.02)
    return model


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A training output folder: weights, processor, results of two evaluations, the recipe, and clutter."""
    folder = tmp_path_factory.mktemp("outputs") / "segret-small-test"
    trained_model().save_pretrained(folder)
    SegRetImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(folder)
    common = {"dataset": "my_scenes", "split": "validation", "num_samples": 12}
    (folder / "eval_results.json").write_text(json.dumps({**common, "mode": "ss", "mean_iou": 0.4321}))
    (folder / "eval_results_ms.json").write_text(json.dumps({**common, "mode": "ms", "mIoU": 44.5}))
    (folder / "training_args.json").write_text(json.dumps({"variant": "custom", "dataset": "my_scenes", "seed": 3}))
    (folder / "checkpoint-100").mkdir()
    (folder / "checkpoint-100" / "optimizer.bin").write_bytes(b"not for the Hub")
    (folder / "loss_history.jsonl").write_text("{}\n")
    return folder


@pytest.fixture(scope="module")
def published(source, tmp_path_factory):
    folder = assemble(source, tmp_path_factory.mktemp("hub") / "repo", repo_id=REPO_ID)
    return folder, validate(folder, source)


@pytest.mark.slow
def test_folder_is_self_contained(published, source):
    folder, _ = published
    files = {path.name for path in folder.iterdir()}
    assert files == {
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        *REMOTE_CODE_FILES,
        "eval_results.json",
        "eval_results_ms.json",
        "training_args.json",
    }
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) == set(REQUIRED_AUTO_MAP)
    assert config["custom_pipelines"]["image-segmentation"]["impl"] == "pipeline_segret.SegRetImageSegmentationPipeline"
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASS_NAMES)}
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_segret.SegRetImageProcessor"}
    assert processor["size"] == {"shortest_edge": 64, "longest_edge": 128}  # the source's processor, not a default
    assert load_file(folder / "model.safetensors").keys() == load_file(source / "model.safetensors").keys()
    for key, value in load_file(source / "model.safetensors").items():
        assert torch.equal(load_file(folder / "model.safetensors")[key], value), key

    card = ModelCard((folder / "README.md").read_text())
    metrics = card.data.to_dict()["model-index"][0]["results"][0]["metrics"]
    assert [(m["name"], m["value"]) for m in metrics] == [
        ("mIoU (single-scale, whole image)", 43.21),
        ("mIoU (multi-scale + flip, whole)", 44.5),
    ]
    assert f'repo_id = "{REPO_ID}"' in card.text and "recorded with this checkpoint (`training_args.json`)" in card.text


def test_fresh_process_loads_every_auto_class_and_the_pipeline(published):
    _, report = published
    assert report["classes"] == {
        "AutoConfig": "SegRetConfig",
        "AutoModel": "SegRetModel",
        "AutoBackbone": "SegRetBackbone",
        "AutoModelForSemanticSegmentation": "SegRetForSemanticSegmentation",
        "AutoImageProcessor": "SegRetImageProcessor",
    }
    assert all(module.startswith("transformers_modules.") for module in report["modules"].values())
    assert "inference_segret" in report["modules"]["inference_segret"]
    # Logits, last hidden state and backbone feature maps equal the source model's.
    assert report["differences"] == {"AutoModel": 0.0, "AutoBackbone": 0.0, "AutoModelForSemanticSegmentation": 0.0}
    assert report["segments"] and all(label in CLASS_NAMES for label, _, _ in report["segments"])
    assert all(size == report["image_size"] and mode == "L" for _, size, mode in report["segments"])
    assert report["sliding_window_shape"] == [1, 64, 96]


@pytest.mark.slow
def test_check_script_runs_on_its_own(published, tmp_path):
    """training/check_hub_folder.py as a file, outside the repository, on a folder alone: no reference outputs."""
    folder, _ = published
    sample_image((50, 40)).save(tmp_path / "photo.png")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT), str(folder), "--image", str(tmp_path / "photo.png")],
        capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(REPORT_PREFIX)]
    report = json.loads(line.removeprefix(REPORT_PREFIX))
    assert report["problems"] == [] and report["differences"] == {}  # nothing to compare with
    assert report["classes"]["AutoModelForSemanticSegmentation"] == "SegRetForSemanticSegmentation"
    # The package is installed in this environment, yet only the folder's code ran.
    assert all(module.startswith("transformers_modules.") for module in report["modules"].values())
    assert report["image_size"] == [50, 40] and all(size == [50, 40] for _, size, _ in report["segments"])


@pytest.mark.slow
def test_outputs_unlike_the_source_models_fail(published, source, tmp_path):
    folder, _ = published
    other = tmp_path / "other"
    model = SegRetForSemanticSegmentation.from_pretrained(source)
    with torch.no_grad():
        model.segret.encoder.embeddings.layers[0].convolution.weight.add_(0.01)  # the stem's first convolution
    model.save_pretrained(other)
    with pytest.raises(PublishError, match="failed validation:\n- AutoModel outputs differ from the source model's"):
        validate(folder, other)


class RecordingApi:
    """Replaces the network methods of HfApi; records what would be sent."""

    def __init__(self, monkeypatch, existing=(".gitattributes",)):
        self.calls = []
        recorder = self

        def record(name, result=None):
            def method(api, *args, **kwargs):
                recorder.calls.append((name, args, kwargs, api.token))
                return result(*args, **kwargs) if callable(result) else result

            monkeypatch.setattr(HfApi, name, method)

        record("create_repo", f"https://huggingface.co/{REPO_ID}")
        record("create_branch")
        record("list_repo_files", list(existing))
        record(
            "create_commit",
            lambda repo_id, **kwargs: CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/123",
                commit_message=kwargs["commit_message"],
                commit_description="",
                oid="123",
            ),
        )

    def named(self, name):
        return [call for call in self.calls if call[0] == name]


def test_push_sends_one_commit_with_every_file(published, monkeypatch):
    folder, _ = published
    api = RecordingApi(monkeypatch, existing=[".gitattributes", "README.md", "model-00001-of-00002.safetensors"])
    commit = push(folder, REPO_ID, private=True, revision="v1", token="hf_test")
    assert commit.oid == "123"

    ((_, args, kwargs, token),) = api.named("create_repo")
    assert args == (REPO_ID,) and kwargs["private"] is True and kwargs["exist_ok"] is True and token == "hf_test"
    ((_, args, kwargs, _),) = api.named("create_branch")
    assert args == (REPO_ID,) and kwargs["branch"] == "v1" and kwargs["exist_ok"] is True
    ((_, args, kwargs, _),) = api.named("create_commit")
    assert args == (REPO_ID,) and kwargs["revision"] == "v1" and kwargs["create_pr"] is False
    operations = kwargs["operations"]
    added = {op.path_in_repo: op.path_or_fileobj for op in operations if isinstance(op, CommitOperationAdd)}
    assert added == {path.name: str(path) for path in folder.iterdir()}
    deleted = [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)]
    assert deleted == ["model-00001-of-00002.safetensors"]  # stale file of an earlier upload; README is replaced


@pytest.mark.slow
def test_command_line_validates_then_pushes(source, tmp_path, monkeypatch, capsys):
    api = RecordingApi(monkeypatch)
    output = tmp_path / "repo"
    status = main(
        [str(source), "--output_dir", str(output), "--repo_id", REPO_ID, "--push", "--private", "--create_pr",
         "--commit_message", "First upload"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "validated without the modeling_segret package" in out.out and "max output difference 0" in out.out
    assert "pushed to https://huggingface.co/" in out.out
    assert [call[0] for call in api.calls] == ["create_repo", "list_repo_files", "create_commit"]  # no branch
    (_, _, kwargs, _) = api.named("create_commit")[0]
    assert kwargs["commit_message"] == "First upload" and kwargs["create_pr"] is True and kwargs["revision"] is None
    assert sorted(op.path_in_repo for op in kwargs["operations"]) == sorted(p.name for p in output.iterdir())

    # Argument errors come before any work.
    with pytest.raises(SystemExit):
        main([str(source), "--push"])
    with pytest.raises(SystemExit):
        main([str(source), "--push", "--repo_id", REPO_ID, "--skip_validation"])
    assert main([str(source), "--output_dir", str(output)]) == 1  # not empty without --overwrite
    assert "pass --overwrite" in capsys.readouterr().err


def test_converted_checkpoint_gets_class_names_and_an_honest_card(tmp_path):
    """A converted ImageNet backbone: LABEL_<i> names, untouched decoder, no processor, no results, no recipe."""
    config = small_config(num_labels=19, id2label=None, label2id=None)
    source = tmp_path / "converted"
    SegRetForSemanticSegmentation(config).save_pretrained(source)
    folder = assemble(source, tmp_path / "hub", dataset="cityscapes")
    assert not any(path.name.startswith("eval_results") for path in folder.iterdir())
    saved = json.loads((folder / "config.json").read_text())
    assert saved["id2label"]["0"] == "road" and saved["id2label"]["18"] == "bicycle"
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 1024, "longest_edge": 2048}  # Cityscapes' test scale
    card = (folder / "README.md").read_text()
    assert "This checkpoint is not a trained segmentation model" in card
    assert "model-index" not in card and "training recipe was not recorded" in card
    assert 'repo_id = "your-org/segret-custom-cityscapes"' in card
    check_folder(folder)


def test_source_problems_are_named(tmp_path, source):
    with pytest.raises(PublishError, match="not a folder"):
        read_source(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PublishError, match="no config.json"):
        read_source(empty)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(source / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(PublishError, match=r"no model.safetensors .*pytorch_model.bin"):
        read_source(pickled)
    with pytest.raises(PublishError, match="evaluation results are for"):
        assemble(source, tmp_path / "out", dataset="ade20k")
    bad = tmp_path / "bad_results"
    shutil.copytree(source, bad, ignore=shutil.ignore_patterns("checkpoint-*"))
    (bad / "eval_results.json").write_text(json.dumps({"mean_iou": 0.5}))
    with pytest.raises(PublishError, match="mode"):
        read_source(bad)
    with pytest.raises(PublishError, match="must not be the source"):
        assemble(source, source.parent)
    backbone_only = tmp_path / "backbone_only"
    SegRetModel(small_config()).save_pretrained(backbone_only)
    # Missing weights are refused by the model's own loading check (issue 23), which names them.
    with pytest.raises(PublishError, match=r"lacks \d+ weights of SegRetForSemanticSegmentation: decode_head"):
        assemble(backbone_only, tmp_path / "out_backbone")


def test_broken_folders_fail_loudly(published, source, tmp_path):
    folder, _ = published
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    config = json.loads((broken / "config.json").read_text())
    del config["auto_map"]["AutoBackbone"]
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "image_processing_segret.py").unlink()
    (broken / "pipeline_segret.py").unlink()
    (broken / "inference_segret.py").unlink()  # named by no auto_map: only the list of code files misses it
    (broken / "__init__.py").write_text("")
    with pytest.raises(PublishError) as error:
        check_folder(broken)
    message = str(error.value)
    missing_code = ["image_processing_segret.py", "pipeline_segret.py", "inference_segret.py"]
    assert f"the remote code files {missing_code} are missing" in message
    assert "lacks ['AutoBackbone']" in message and "image_processing_segret.py is missing" in message
    assert "custom_pipelines['image-segmentation'] points to pipeline_segret.SegRetImageSegmentationPipeline" in message
    assert "__init__.py" in message

    # Code that only fails when it runs is caught by the fresh process.
    broken = tmp_path / "broken_code"
    shutil.copytree(folder, broken)
    code = (broken / "modeling_segret.py").read_text()
    (broken / "modeling_segret.py").write_text(code.replace("class SegRetBackbone(", "class SegRetBackboneRenamed("))
    with pytest.raises(PublishError, match="does not load without the modeling_segret package"):
        validate(broken, source)


def test_results_from_several_evaluation_folders(tmp_path, source):
    """training/evaluation.py writes eval_results.json per run: collect ss and ms runs without overwriting."""
    paths = []
    for mode, value in (("slide", 0.41), ("ms", 0.43)):
        run = tmp_path / f"eval_{mode}"
        run.mkdir()
        (run / "eval_results.json").write_text(json.dumps({"dataset": "my_scenes", "mode": mode, "mean_iou": value}))
        paths.append(run / "eval_results.json")
    folder = assemble(source, tmp_path / "hub", eval_results=paths)
    assert json.loads((folder / "eval_results.json").read_text())["mode"] == "slide"
    assert json.loads((folder / "eval_results_1.json").read_text())["mode"] == "ms"
    metadata = ModelCard((folder / "README.md").read_text()).data.to_dict()
    metrics = metadata["model-index"][0]["results"][0]["metrics"]
    assert [(m["name"], m["value"]) for m in metrics] == [
        ("mIoU (single-scale, sliding window)", 41.0),
        ("mIoU (multi-scale + flip, whole)", 43.0),
    ]
