# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Write the demo as a Hugging Face Space folder for a published SegRet model.

    python -m training.publish SOURCE --repo_id ORG/NAME --space     # beside the model's folder: SOURCE-hub-space/
    huggingface-cli upload --repo-type space ORG/NAME-demo SOURCE-hub-space .

The folder holds `app.py` (a copy of `demo/app.py`), `demo.json` naming the model, `requirements.txt` and the Space
card `README.md` (Gradio SDK, linked to the model). The app loads the model through its remote code, so the Space
needs nothing of this repository. Imports no gradio: writing a Space needs no `demo` extra.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

from demo.app import SPACE_CONFIG

APP_FILE = Path(__file__).resolve().with_name("app.py")
SPACE_FILES = ("README.md", "app.py", SPACE_CONFIG, "requirements.txt")
# A Space installs these beside the gradio of its card; the ranges are the repository's (pyproject.toml).
REQUIREMENTS = ("torch>=2.4", "transformers>=4.57,<6", "safetensors>=0.4", "numpy>=1.24", "pillow>=10")
TESTED_GRADIO = "6.31.0"  # the card's sdk_version when gradio is not installed here

CARD = """---
title: {title}
emoji: 🧩
colorFrom: green
colorTo: blue
sdk: gradio
sdk_version: {gradio}
app_file: app.py
pinned: false
license: {license}
models:
- {model}
tags:
- image-segmentation
- segret
---

# {title}

Semantic segmentation with [{model}](https://huggingface.co/{model}) (SegRet: an RMT / Vision-RetNet backbone and a
lightweight residual decoder). Upload a photo to see the colour overlay, the classes found with their areas, and to
download the raw mask (a PNG whose pixel values are the class ids).

Run it on your own machine: `pip install gradio torch transformers pillow` and `python app.py`.
"""


def write_space(
    folder: str | Path, model: str, title: str | None = None, license: str = "apache-2.0", overwrite: bool = False
) -> Path:
    """Write the Space folder for ``model`` (a Hub id) into ``folder`` and return it.

    An existing folder is replaced only with ``overwrite`` and only if it holds nothing but a Space's files.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        unexpected = sorted(p.name for p in folder.iterdir() if p.name not in SPACE_FILES)
        if not overwrite or unexpected:
            reason = f"it holds other files {unexpected[:5]}" if unexpected else "pass overwrite=True to replace it"
            raise FileExistsError(f"{folder} is not empty: {reason}")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        gradio = metadata.version("gradio")
    except metadata.PackageNotFoundError:
        gradio = TESTED_GRADIO
    shutil.copyfile(APP_FILE, folder / "app.py")
    (folder / SPACE_CONFIG).write_text(json.dumps({"model": model}, indent=2) + "\n")
    (folder / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    name = title or f"{model.split('/')[-1]} demo"
    (folder / "README.md").write_text(CARD.format(title=name, gradio=gradio, license=license, model=model))
    return folder
