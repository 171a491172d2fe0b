"""The Gradio demo: its outputs, the Space folder it is written as (also by publish.py --space), and the page in a
real headless Chromium driven by Playwright (slow; CI installs chromium and sets SEGRET_REQUIRE_BROWSER=1)."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_config
from PIL import Image

from demo.app import Segmenter, class_palette
from demo.space import SPACE_FILES, write_space
from modeling_segret import SegRetForSemanticSegmentation, SegRetImageProcessor
from training.presets import SYNTHETIC_CLASS_NAMES
from training.publish import main as publish_main
from training.synthetic import generate, make_scene

CLASS_NAMES = ["sky", "tree", "road", "car", "person"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A saved SegRet folder as training/train.py leaves it (weights, remote code, processor), whose decoder is
    perturbed so that it predicts several classes."""
    folder = tmp_path_factory.mktemp("outputs") / "demo"
    config = small_config(id2label=dict(enumerate(CLASS_NAMES)), label2id={n: i for i, n in enumerate(CLASS_NAMES)})
    torch.manual_seed(0)
    model = SegRetForSemanticSegmentation(config).eval()
    with torch.no_grad():
        for parameter in model.decode_head.parameters():
            parameter.normal_(std=0.5)
    model.save_pretrained(folder)
    SegRetImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(folder)
    return folder


def photo(height: int = 90, width: int = 120) -> Image.Image:
    rows, cols = np.mgrid[0:height, 0:width]
    picture = np.stack([rows * 255 // height, cols * 255 // width, (rows + cols) % 256], axis=-1)
    return Image.fromarray(picture.astype(np.uint8))


def test_segmenter_outputs(model_folder, tmp_path):
    """The mask is the processor's post-processed prediction at the photo's size; the overlay blends its colours;
    the legend's areas are the mask's; the PNG gives the class ids back."""
    segmenter = Segmenter(str(model_folder))
    image = photo()
    overlay, legend, mask_path = segmenter(image)
    processor = SegRetImageProcessor.from_pretrained(model_folder)
    model = SegRetForSemanticSegmentation.from_pretrained(model_folder).eval()
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(90, 120)])[0].numpy()
    mask = np.asarray(Image.open(mask_path))
    np.testing.assert_array_equal(mask, expected)
    assert len(np.unique(mask)) >= 2, "the perturbed decoder should predict several classes"
    palette = class_palette(len(CLASS_NAMES))
    assert len({tuple(c) for c in palette}) == len(CLASS_NAMES)
    blended = (0.5 * np.asarray(image, np.float32) + 0.5 * palette[expected]).round().astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(overlay), blended)
    areas = segmenter.areas(expected)
    assert [name for _, name, _, _ in areas] == [CLASS_NAMES[i] for i, _, _, _ in areas]
    assert sum(pixels for *_, pixels in areas) == expected.size and pytest.approx(100) == sum(a[2] for a in areas)
    for _, name, percent, _ in areas:
        assert f"<td>{name}</td><td style='text-align:right'>{percent:.1f}%</td>" in legend
    assert segmenter(None)[0] is None


def test_space_folder(tmp_path):
    space = write_space(tmp_path / "space", "test-org/segret-demo-model")
    assert sorted(p.name for p in space.iterdir()) == sorted(SPACE_FILES)
    assert (space / "app.py").read_text() == (Path(__file__).parents[1] / "demo" / "app.py").read_text()
    assert json.loads((space / "demo.json").read_text()) == {"model": "test-org/segret-demo-model"}
    card = (space / "README.md").read_text()
    assert "sdk: gradio\n" in card and "models:\n- test-org/segret-demo-model\n" in card and "app_file: app.py" in card
    assert "transformers>=4.57,<6" in (space / "requirements.txt").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_space(space, "test-org/other")
    assert json.loads((write_space(space, "test-org/other", overwrite=True) / "demo.json").read_text())["model"]
    (space / "weights.bin").write_bytes(b"")
    with pytest.raises(FileExistsError, match="other files"):
        write_space(space, "test-org/other", overwrite=True)


def test_publish_writes_the_space_beside_the_model(model_folder, tmp_path, capsys):
    output = tmp_path / "segret-demo-hub"
    args = [str(model_folder), "--output_dir", str(output), "--skip_validation", "--dataset", "my_scenes", "--space"]
    with pytest.raises(SystemExit):
        publish_main(args)  # a Space loads the model by its Hub id
    assert "--space needs --repo_id" in capsys.readouterr().err
    assert publish_main([*args, "--repo_id", "test-org/segret-demo"]) == 0
    space = tmp_path / "segret-demo-hub-space"
    assert json.loads((space / "demo.json").read_text()) == {"model": "test-org/segret-demo"}
    assert (output / "model.safetensors").is_file() and "wrote the demo Space" in capsys.readouterr().out


@pytest.mark.slow
def test_app_opens_the_demo_recipe_output(tmp_path):
    """The README's demo recipe, shortened, then the app's model loading on its output folder: the folder that
    `python demo/app.py outputs/demo` opens."""
    repository = Path(__file__).resolve().parents[1]
    data = generate(tmp_path / "synthetic", num_train=8, num_validation=2)
    recipe = repository / "configuration" / "recipes" / "demo.yaml"
    overrides = {"dataset_path": data, "output_dir": tmp_path / "demo", "max_steps": 2, "eval_steps": 1000,
                 "save_steps": 1000, "num_overlays": 0, "report_to": "none", "per_device_train_batch_size": 2,
                 "dataloader_num_workers": 0}  # fmt: skip
    command = [sys.executable, str(repository / "training" / "train.py"), str(recipe), "--crop_size", "64", "64"]
    command += [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=environment)
    assert completed.returncode == 0, completed.stderr[-4000:]
    segmenter = Segmenter(str(tmp_path / "demo"))
    assert segmenter.class_names == list(SYNTHETIC_CLASS_NAMES)
    image, _ = make_scene(7)
    overlay, legend, mask_path = segmenter(Image.fromarray(image))
    assert overlay.size == (image.shape[1], image.shape[0])
    assert np.asarray(Image.open(mask_path)).shape == image.shape[:2] and "%" in legend


# --------------------------------------------------------------------------------------------- in a browser
def _require(condition: bool, message: str) -> None:
    """Skip (fail under SEGRET_REQUIRE_BROWSER=1, as CI sets it) when the browser test cannot run."""
    if not condition:
        if os.environ.get("SEGRET_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message} (SEGRET_REQUIRE_BROWSER=1 makes this a failure)")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the demo exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the demo did not answer at {url} within {timeout} s")


@pytest.mark.slow
def test_demo_in_a_browser(model_folder, tmp_path):
    """The Space's app, run as a Space runs it (no SegRet package: the checkpoint's remote code), serves a page on
    which a photo uploaded in headless Chromium comes back as an overlay of its size, a legend and a mask file
    equal to the prediction."""
    _require(CHROMIUM.is_file(), f"no {CHROMIUM}: install it with `apt-get install -y chromium` (Debian)")
    _require(importlib.util.find_spec("gradio") is not None, 'gradio is not installed: pip install -e ".[test]"')
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, 'playwright is not installed: pip install -e ".[test]"')
    space = write_space(tmp_path / "space", "test-org/unused")
    image = photo(90, 120)
    image.save(tmp_path / "photo.png")
    expected = Segmenter(str(model_folder)).segment(image)

    port = _free_port()
    # `modeling_segret` made unimportable, as in a Space: the model must load through its own remote code.
    launcher = "import runpy, sys; sys.modules['modeling_segret'] = None; runpy.run_path('app.py', run_name='__main__')"
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", HF_MODULES_CACHE=str(tmp_path / "mods"))
    command = [sys.executable, "-c", launcher, str(model_folder), "--port", str(port), "--no_browser"]
    server = subprocess.Popen(command, cwd=space, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_server(url, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#photo input[type=file]").set_input_files(str(tmp_path / "photo.png"))
            overlay = page.locator("#overlay img")
            overlay.wait_for(state="visible", timeout=120_000)
            page.locator("#mask a").first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            overlay_bytes = page.request.get(overlay.get_attribute("src")).body()
            mask_bytes = page.request.get(page.locator("#mask a").first.get_attribute("href")).body()
            legend = page.locator("#legend").inner_text()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    (tmp_path / "overlay.png").write_bytes(overlay_bytes)
    (tmp_path / "mask.png").write_bytes(mask_bytes)
    assert Image.open(tmp_path / "overlay.png").size == image.size
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert (mask != expected).mean() < 1e-3  # the same weights and code; threads may reorder float sums
    names_found = [CLASS_NAMES[i] for i in np.unique(expected)]
    assert all(name in legend for name in names_found) and "%" in legend
    shutil.rmtree(tmp_path / "mods", ignore_errors=True)
