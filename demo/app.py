# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""SegRet in the browser: upload a photo, see the colour overlay, the classes found and their areas, and download
the raw mask (a PNG whose pixel values are the class ids).

    python demo/app.py outputs/demo        # the model the README's demo recipe trains
    python demo/app.py ORG/NAME            # a published SegRet model on the Hub (its remote code)

Needs the `demo` extra (`pip install -e ".[demo]"`, which brings gradio). This file is also the app of the Hub Space
that `python -m training.publish SOURCE --repo_id ORG/NAME --space` writes (see `demo/space.py`): there it reads the
model id from `demo.json` beside it, and imports nothing of the SegRet repository.
"""

from __future__ import annotations

import argparse
import colorsys
import html
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

SPACE_CONFIG = "demo.json"  # {"model": "<Hub id or folder>"}: what a Space loads (written by demo/space.py)
OVERLAY_ALPHA = 0.5


def class_palette(num_labels: int) -> np.ndarray:
    """(num_labels, 3) uint8 colours, hues spread by the golden ratio so that neighbouring ids differ."""
    hues = (np.arange(num_labels) * 0.618033988749895) % 1.0
    rgb = [colorsys.hsv_to_rgb(hue, 0.65 + 0.35 * (i % 2), 0.95 - 0.25 * (i % 3 == 2)) for i, hue in enumerate(hues)]
    return (np.asarray(rgb) * 255).round().astype(np.uint8)


class Segmenter:
    """A SegRet checkpoint (saved folder or Hub id) with its image processor: photo -> class map, overlay, legend."""

    def __init__(self, model: str) -> None:
        try:
            import modeling_segret  # noqa: F401  (registers SegRet, for folders saved without remote code)
        except ImportError:
            pass  # a Space: the checkpoint's own remote code is used
        self.name = model
        self.processor = AutoImageProcessor.from_pretrained(model, trust_remote_code=True)
        self.model = AutoModelForSemanticSegmentation.from_pretrained(model, trust_remote_code=True).eval()
        num_labels = self.model.config.num_labels
        self.class_names = [str(self.model.config.id2label.get(i, f"class {i}")) for i in range(num_labels)]
        self.palette = class_palette(num_labels)

    @torch.no_grad()
    def segment(self, image: Image.Image) -> np.ndarray:
        """(height, width) int64 class ids at the photo's size."""
        image = image.convert("RGB")
        inputs = self.processor(images=image, return_tensors="pt")
        outputs = self.model(pixel_values=inputs["pixel_values"])
        (mask,) = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])
        return mask.cpu().numpy()

    def overlay(self, image: Image.Image, mask: np.ndarray) -> Image.Image:
        """The photo blended with the class colours."""
        photo = np.asarray(image.convert("RGB"), dtype=np.float32)
        blended = (1 - OVERLAY_ALPHA) * photo + OVERLAY_ALPHA * self.palette[mask]
        return Image.fromarray(blended.round().astype(np.uint8))

    def areas(self, mask: np.ndarray) -> list[tuple[int, str, float, int]]:
        """(class id, name, percent of the image, pixels) of every class found, largest first."""
        counts = np.bincount(mask.ravel(), minlength=len(self.class_names))
        order = np.argsort(-counts, kind="stable")
        return [(int(i), self.class_names[i], 100 * counts[i] / mask.size, int(counts[i])) for i in order if counts[i]]

    def legend_html(self, mask: np.ndarray) -> str:
        """The classes found, each with its colour swatch and area."""
        rows = []
        for index, name, percent, pixels in self.areas(mask):
            colour = "#" + "".join(f"{int(c):02x}" for c in self.palette[index])
            rows.append(
                f"<tr><td><span style='display:inline-block;width:1.2em;height:1.2em;background:{colour};"
                f"border:1px solid #444;vertical-align:middle'></span></td><td>{html.escape(name)}</td>"
                f"<td style='text-align:right'>{percent:.1f}%</td><td style='text-align:right'>{pixels:,}</td></tr>"
            )
        header = "<tr><th></th><th>class</th><th>area</th><th>pixels</th></tr>"
        return f"<table class='segret-legend'>{header}{''.join(rows)}</table>"

    def mask_png(self, mask: np.ndarray, folder: str | Path) -> Path:
        """The raw mask as a PNG: pixel value = class id (a palette image, shown in the class colours, up to 256
        classes; 16-bit grey beyond)."""
        path = Path(folder) / "segret_mask.png"
        if len(self.class_names) <= 256:
            picture = Image.frombytes("P", mask.shape[::-1], mask.astype(np.uint8).tobytes())
            picture.putpalette(self.palette.ravel().tolist())
        else:
            picture = Image.fromarray(mask.astype(np.uint16))
        picture.save(path)
        return path

    def __call__(self, image: Image.Image | None) -> tuple[Image.Image | None, str, str | None]:
        """The app's event: overlay, legend and mask file for an uploaded photo."""
        if image is None:
            return None, "<p>Upload a photo first.</p>", None
        mask = self.segment(image)
        return self.overlay(image, mask), self.legend_html(mask), str(self.mask_png(mask, tempfile.mkdtemp()))


def build_demo(segmenter: Segmenter) -> Any:
    """The Gradio page: photo in; overlay, legend with areas, and raw mask download out."""
    import gradio as gr

    with gr.Blocks(title="SegRet semantic segmentation") as demo:
        gr.Markdown(
            f"# SegRet semantic segmentation\nModel `{segmenter.name}` ({len(segmenter.class_names)} classes). "
            "Upload a photo: the overlay shows each pixel's class in its colour; the table lists the classes found "
            "with their share of the image; the mask is a PNG whose pixel values are the class ids."
        )
        with gr.Row():
            photo = gr.Image(type="pil", label="photo", elem_id="photo")
            overlay = gr.Image(type="pil", label="overlay", elem_id="overlay", interactive=False)
        with gr.Row():
            legend = gr.HTML(elem_id="legend")
            mask = gr.File(label="raw mask (PNG, pixel value = class id)", elem_id="mask", interactive=False)
        photo.upload(segmenter, inputs=photo, outputs=[overlay, legend, mask])
        gr.Button("Segment", variant="primary", elem_id="segment").click(
            segmenter, inputs=photo, outputs=[overlay, legend, mask]
        )
    return demo


def default_model() -> str | None:
    """The model named in `demo.json` beside this file (a Space), if any."""
    config = Path(__file__).resolve().with_name(SPACE_CONFIG)
    return json.loads(config.read_text())["model"] if config.is_file() else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=default_model(), help="saved SegRet folder or Hub id")
    # Defaults None: gradio's (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which a Space sets, else 127.0.0.1:7860).
    parser.add_argument("--host", default=None, help="address to serve on (0.0.0.0: the whole network)")
    parser.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860 or the next free)")
    parser.add_argument("--no_browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("name a model: a folder saved by training/train.py (e.g. outputs/demo) or a Hub id")
    if Path(args.model).exists() and not (Path(args.model) / "config.json").is_file():
        parser.error(f"{args.model} has no config.json: pass the folder that save_pretrained wrote")
    demo = build_demo(Segmenter(args.model))
    in_a_space = "SPACE_ID" in os.environ  # set on Hugging Face Spaces, where no browser is at hand
    demo.launch(server_name=args.host, server_port=args.port, inbrowser=not (args.no_browser or in_a_space),
                share=args.share)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
