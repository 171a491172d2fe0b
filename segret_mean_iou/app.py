"""The Space's page: score a predicted class map against its reference (both PNG index images) with this module."""

from pathlib import Path

import evaluate
import gradio as gr
import numpy as np
from PIL import Image

metric = evaluate.load(str(Path(__file__).resolve().parent))


def score(prediction_png: str, reference_png: str, num_labels: float, ignore_index: float, reduce_labels: bool) -> dict:
    """The module's results for one pair of maps read as class indices (a palette PNG gives its indices)."""
    prediction, reference = np.asarray(Image.open(prediction_png)), np.asarray(Image.open(reference_png))
    results = metric.compute(predictions=[prediction], references=[reference], num_labels=int(num_labels),
                             ignore_index=int(ignore_index), reduce_labels=reduce_labels)  # fmt: skip
    return {key: _without_nan(value) for key, value in results.items()}


def _without_nan(value):
    """JSON has no NaN (a class absent from both maps): null instead."""
    if isinstance(value, np.ndarray):
        return [_without_nan(item) for item in value.tolist()]
    return None if isinstance(value, float) and np.isnan(value) else value


demo = gr.Interface(
    fn=score,
    inputs=[
        gr.File(label="predicted class map (PNG)", type="filepath"),
        gr.File(label="reference class map (PNG)", type="filepath"),
        gr.Number(label="num_labels", value=150, precision=0),
        gr.Number(label="ignore_index", value=255, precision=0),
        gr.Checkbox(label="reduce_labels", value=False),
    ],
    outputs=gr.JSON(label="results"),
    title="segret_mean_iou",
    description="Mean IoU with the inputs and results of `mean_iou`, streaming; the card below says how to use it.",
    article=(Path(__file__).resolve().parent / "README.md").read_text().split("---", 2)[-1],
)

if __name__ == "__main__":
    demo.launch()
