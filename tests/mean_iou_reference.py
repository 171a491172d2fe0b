"""A reference for `evaluate`'s `mean_iou` (huggingface/evaluate, metrics/mean_iou, Apache-2.0), written for these
tests from its documented behaviour, because the Hub module cannot be downloaded here.

Per map, in mean_iou's order: `label_map` (each key matched against the original labels), then `reduce_labels`
(0 -> 255, v -> v - 1, 255 stays 255), then the pixels whose label is `ignore_index` are dropped. Intersections,
prediction areas and label areas are histograms over the classes 0..num_labels-1: values outside that range are
left out of them silently (a label, or a prediction at a kept pixel). The per-class areas are summed over all maps
(float64) before dividing; `mean_iou` and `mean_accuracy` are nanmeans; `nan_to_num` replaces NaN in every result.
"""

import numpy as np


def _class_counts(values: np.ndarray, num_labels: int) -> np.ndarray:
    values = values[(values >= 0) & (values < num_labels)]  # the histogram range: out-of-range values vanish
    return np.bincount(values.astype(np.int64), minlength=num_labels).astype(np.float64)


def reference_mean_iou(
    predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None, reduce_labels=False
) -> dict:
    intersection, predicted, labelled = (np.zeros(num_labels) for _ in range(3))
    for prediction, reference in zip(predictions, references, strict=True):
        prediction, original = np.asarray(prediction).astype(np.int64), np.asarray(reference).astype(np.int64)
        label = original.copy()
        for old, new in (label_map or {}).items():
            label[original == old] = new
        if reduce_labels:
            label = np.where(label == 0, 255, label) - 1
            label[label == 254] = 255
        kept = label != ignore_index
        prediction, label = prediction[kept], label[kept]
        intersection += _class_counts(prediction[prediction == label], num_labels)
        predicted += _class_counts(prediction, num_labels)
        labelled += _class_counts(label, num_labels)
    union = predicted + labelled - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, accuracy = intersection / union, intersection / labelled
        results = {
            "mean_iou": np.nanmean(iou) if not np.isnan(iou).all() else np.nan,
            "mean_accuracy": np.nanmean(accuracy) if not np.isnan(accuracy).all() else np.nan,
            "overall_accuracy": intersection.sum() / labelled.sum(),
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
        }
    if nan_to_num is not None:
        results = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in results.items()}
    return results
