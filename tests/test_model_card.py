"""Model cards: YAML metadata, model-index only with results, results formats, and snippets that run."""

import json
import os
import re
import subprocess
import sys
import textwrap

import jinja2
import pytest
import yaml
from conftest import small_config
from huggingface_hub import ModelCard

from modeling_segret import SEGRET_VARIANTS, SegRetForSemanticSegmentation
from training.check_hub_folder import sample_image
from training.model_card import (
    CARDS_DIR,
    DATASETS,
    PAPER_RESULTS,
    card_data,
    dataset_info,
    load_eval_results,
    parse_eval_results,
    render_card,
    render_paper_card,
    repository_name,
)
from training.presets import get_preset
from training.publish import assemble

# What training/evaluation.py writes (one mode per file) and what training/train.py writes.
EVALUATE_OUTPUT = {
    "model": "outputs/segret-tiny-ade20k",
    "dataset": "ade20k",
    "split": "validation",
    "mode": "ms",
    "inference": {"mode": "whole", "scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "flip": True},
    "num_samples": 2000,
    "mIoU": 49.12,
    "mAcc": 60.5,
    "aAcc": 82.25,
    "mean_iou": 0.491234,
    "mean_accuracy": 0.605,
    "overall_accuracy": 0.8225,
    "per_class": [{"id": 0, "name": "wall", "iou": 0.75, "accuracy": 0.8}, {"id": 1, "name": "sky", "iou": None}],
}
TRAIN_OUTPUT = {
    "dataset": "ade20k",
    "split": "validation",
    "mode": "ss",
    "variant": "tiny",
    "mean_iou": 0.4876,
    "mean_accuracy": 0.6,
    "overall_accuracy": 0.82,
    "per_category_iou": [0.7, float("nan")],
    "class_names": ["wall", "sky"],
    "num_samples": 2000,
}


def front_matter(card: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", card, flags=re.DOTALL)
    assert match, "the card does not start with YAML metadata"
    return yaml.safe_load(match.group(1))


@pytest.fixture(scope="module")
def tiny_ade20k_card() -> str:
    return render_paper_card("tiny", "ade20k")


def test_card_without_results_has_no_model_index(tiny_ade20k_card):
    metadata = front_matter(tiny_ade20k_card)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-segmentation"
    assert metadata["license"] == "apache-2.0" and metadata["datasets"] == ["zhoubolei/scene_parse_150"]
    assert {"segret", "ade20k"} <= set(metadata["tags"])
    assert "model-index" not in metadata
    assert "The results in this card are the paper's, not this checkpoint's" in tiny_ade20k_card
    assert "| **ADE20K** | **48.76** | **49.39** |" in tiny_ade20k_card
    # Parameters, FLOPs (paper's convention = docs/architecture.md §6 at 1024×1024), reconciliation, recipe, citations.
    assert "**13,578,550**" in tiny_ade20k_card and "| 1024×1024 | 72.83 |" in tiny_ade20k_card
    assert "| Tiny | 13,578,550 | 13,474,870 | 13,494,220 | 14.01M | +0.516M |" in tiny_ade20k_card
    assert "configuration/recipes/segret-tiny-ade20k.yaml" in tiny_ade20k_card
    assert "arXiv:2502.14014" in tiny_ade20k_card and "RMT: Retentive Networks Meet Vision Transformers" in (
        tiny_ade20k_card
    )
    assert "{{" not in tiny_ade20k_card and "{%" not in tiny_ade20k_card  # every template value was filled


def test_card_with_results_has_model_index():
    records = parse_eval_results(TRAIN_OUTPUT) + parse_eval_results(EVALUATE_OUTPUT)
    config = small_config(id2label={0: "wall", 1: "sky"}, label2id={"wall": 0, "sky": 1})
    card = render_card(config, repo_id="acme/segret-demo", eval_results=records)
    metadata = front_matter(card)
    (entry,) = metadata["model-index"]
    assert entry["name"] == "segret-demo"
    (result,) = entry["results"]
    assert result["task"]["type"] == "image-segmentation"
    # The model-index names the same Hub dataset as `datasets`: the one the ADE20K preset loads.
    assert result["dataset"] == {"name": "ADE20K", "type": "zhoubolei/scene_parse_150", "split": "validation"}
    assert metadata["datasets"] == ["zhoubolei/scene_parse_150"]
    metrics = {metric["name"]: metric["value"] for metric in result["metrics"]}
    assert metrics == {
        "mIoU (single-scale, whole image)": 48.76,
        "mIoU (multi-scale + flip, whole; ratios 0.5, 0.75, 1, 1.25, 1.5, 1.75)": 49.12,
    }
    assert all(metric["type"] == "mean_iou" for metric in result["metrics"])
    assert "Results of this checkpoint" in card and "paper's, not this checkpoint's" not in card
    assert "| wall | 75.00 |" in card and "| sky | – |" in card  # per-class IoU, NaN/None shown as –
    assert ModelCard(card).data.to_dict()["model-index"] == metadata["model-index"]  # huggingface_hub parses it


def test_untrained_decoder_and_unknown_dataset_are_stated():
    card = render_card(small_config(), dataset="synthetic", decoder_trained=False)
    assert "This checkpoint is not a trained segmentation model" in card
    assert "No results have been measured for this checkpoint yet" in card
    metadata = front_matter(card)
    assert "datasets" not in metadata and "model-index" not in metadata and "synthetic" in metadata["tags"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (TRAIN_OUTPUT, [("ss", "whole", 48.76)]),
        ({"mode": "slide", "mIoU": 81.2}, [("ss", "slide", 81.2)]),
        (
            [{"mode": "ss", "mean_iou": 48.7}, {"mode": "ms", "mean_iou": 0.5}],
            [("ss", "whole", 48.7), ("ms", "ms+flip", 50)],
        ),
        ({"ss": {"mean_iou": 0.4}, "ms": {"mean_iou": 0.41}}, [("ss", "whole", 40), ("ms", "ms+flip", 41)]),
        ({"results": [EVALUATE_OUTPUT]}, [("ms", "ms+flip", 49.12)]),
    ],
)
def test_results_formats(data, expected):
    records = parse_eval_results(data)
    assert [(r.mode, r.inference, r.mean_iou) for r in records] == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mean_iou": 0.5}, "mode"),
        ({"mode": "whole-image", "mean_iou": 0.5}, "mode"),
        ({"mode": "ss", "accuracy": 0.5}, "mean_iou"),
        ({"mode": "ss", "mean_iou": float("nan")}, "NaN"),
        ("0.5", "JSON object"),
    ],
)
def test_results_errors_name_the_problem(data, message):
    with pytest.raises(ValueError, match=message):
        parse_eval_results(data)


def test_results_files_must_share_a_dataset(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(TRAIN_OUTPUT))
    (tmp_path / "b.json").write_text(json.dumps({**TRAIN_OUTPUT, "dataset": "cityscapes"}))
    with pytest.raises(ValueError, match="several datasets"):
        load_eval_results([tmp_path / "a.json", tmp_path / "b.json"])
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_eval_results([tmp_path / "c.json"])
    with pytest.raises(ValueError, match="not for"):
        render_card(small_config(), dataset="cityscapes", eval_results=load_eval_results([tmp_path / "a.json"]))


def test_the_twelve_rendered_cards(tiny_ade20k_card):
    names = [repository_name(variant, dataset) for variant in SEGRET_VARIANTS for dataset in DATASETS]
    assert len(names) == 12
    for variant in SEGRET_VARIANTS:
        for dataset, info in DATASETS.items():
            card = (CARDS_DIR / repository_name(variant, dataset) / "README.md").read_text()
            metadata = front_matter(card)
            assert "model-index" not in metadata and metadata["model_name"] == repository_name(variant, dataset)
            assert "The results in this card are the paper's, not this checkpoint's" in card
            single, multi = PAPER_RESULTS[(variant, dataset)]
            assert f"| **{info.name}** | **{single:.2f}** | **{multi:.2f}** |" in card
    # Up to date with the renderer (checked for one card: rendering all twelve counts FLOPs 24 times).
    assert (CARDS_DIR / "segret-tiny-ade20k" / "README.md").read_text() == tiny_ade20k_card


def test_every_card_names_the_presets_hub_dataset():
    """`datasets` and the model-index dataset type are one id, the preset's (training/presets.py), in all twelve."""
    record = parse_eval_results({"mode": "ss", "mean_iou": 0.5})
    for variant in SEGRET_VARIANTS:
        for dataset in DATASETS:
            hub_id = get_preset(dataset).hub_id
            name = repository_name(variant, dataset)
            assert front_matter((CARDS_DIR / name / "README.md").read_text())["datasets"] == [hub_id], name
            # The same card with results of its own: the model-index (which the twelve lack) names it too.
            metadata = card_data(name, dataset_info(dataset, variant), dataset, record).to_dict()
            assert metadata["datasets"] == [hub_id], name
            ((result,),) = [entry["results"] for entry in metadata["model-index"]]
            assert result["dataset"]["type"] == hub_id, name
    # A checkpoint trained on another Hub copy names that copy in both places.
    metadata = card_data("x", dataset_info("ade20k"), "ade20k", record, hub_dataset="me/ade20k-copy").to_dict()
    assert metadata["datasets"] == ["me/ade20k-copy"]
    assert metadata["model-index"][0]["results"][0]["dataset"]["type"] == "me/ade20k-copy"


def test_template_values_must_all_be_given(tmp_path):
    """The template is strict: a misspelt or missing value is an error, not an empty string in the card."""
    template = tmp_path / "template.md"
    template.write_text("---\n{{ card_data }}\n---\n\n# {{ variant_title }}\n")
    with pytest.raises(jinja2.UndefinedError, match="variant_title"):
        render_card(small_config(), template_path=template)
    template.write_text("---\n{{ card_data }}\n---\n\n{{ config.num_labels|number }} classes\n")
    assert render_card(small_config(num_labels=1500), template_path=template).endswith("\n\n1,500 classes\n")


SNIPPET_RUNNER = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_segret"] = None  # only the folder's own code can run
    for index, path in enumerate(sys.argv[1:]):
        print(f"--- snippet {index}", flush=True)
        exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__"})
    print("SNIPPETS OK")
    """
)


def test_card_snippets_run_against_the_local_folder(tmp_path):
    source = tmp_path / "source"
    # A narrow model with stage 3 decomposed: the multi-scale snippet runs 12 passes of up to 896×896 pixels.
    config = small_config(
        embed_dims=[8, 16, 24, 32],
        num_heads=[1, 1, 2, 2],
        depths=[1, 1, 1, 1],
        decoder_hidden_size=16,
        retention_modes=["decomposed", "decomposed", "decomposed", "global"],
    )
    SegRetForSemanticSegmentation(config).eval().save_pretrained(source)
    folder = assemble(source, tmp_path / "segret-card", repo_id="test-org/segret-card")
    card = (folder / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)
    assert len(snippets) == 3 and all("test-org/segret-card" in snippet for snippet in snippets)

    work = tmp_path / "work"
    work.mkdir()
    sample_image((64, 64)).save(work / "image.jpg")
    for name, size in (("a.jpg", (48, 64)), ("b.png", (64, 40)), ("c.jpg", (48, 64))):  # the batched call's files
        sample_image(size).save(work / name)
    paths = []
    for index, snippet in enumerate(snippets):
        path = work / f"snippet_{index}.py"
        path.write_text(snippet.replace("test-org/segret-card", str(folder)))
        paths.append(str(path))
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", SNIPPET_RUNNER, *paths],
        capture_output=True,
        text=True,
        cwd=work,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "SNIPPETS OK" in result.stdout
    # The sliding-window / multi-scale snippet prints two label maps at the image's size (height, width).
    assert "torch.Size([64, 64]) torch.Size([64, 64])" in result.stdout


def test_cards_state_the_protocol_of_each_number():
    large = render_paper_card("large", "ade20k")
    assert "keep-ratio to 2560×640" in large and "`slide`, 640×640 at stride 426" in large
    assert "keep-ratio to 2048×512" in render_paper_card("base", "ade20k")
    city = render_paper_card("tiny", "cityscapes")
    assert "Protocol (Mask2Former's, which the paper follows)" in city and "the whole full-resolution image" in city
    assert "eval_mode: ss" in city and "eval_mode: slide" not in city
    assert "| Dataset | Single-scale, whole image | Multi-scale + flip |" in city
    # A checkpoint's own numbers name their inference, window and test scale (as training/evaluation.py records them).
    slide = {"mode": "slide", "mean_iou": 0.8, "test_scale": [2048, 1024]}
    slide["inference"] = {"mode": "slide", "crop_size": [1024, 1024], "stride": [768, 768]}
    whole = {"mode": "ss", "mean_iou": 0.81, "test_scale": [2048, 1024], "inference": {"mode": "whole"}}
    names = [record.metric_name for record in parse_eval_results([whole, slide, {**whole, "test_scale": None}])]
    assert names == [
        "mIoU (single-scale, whole image, scale 2048×1024)",
        "mIoU (single-scale, sliding window 1024×1024 stride 768×768, scale 2048×1024)",
        "mIoU (single-scale, whole image, original size)",
    ]
