"""The segmentation metric of training and evaluation, and its table.

:class:`SegmentationMetric` (streaming, distributed-exact mIoU, mAcc, aAcc with the keys of ``evaluate``'s
``mean_iou``) lives in ``segret_mean_iou/segret_mean_iou.py``, the repository's ``evaluate`` module, so the published
module and the scripts' numbers come from one code; see docs/metric.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from segret_mean_iou.segret_mean_iou import SegmentationMetric

__all__ = ["SegmentationMetric", "format_table"]


def format_table(results: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """A per-class IoU / accuracy table (percent) with the summary line, as MMSegmentation prints it."""
    iou, acc = results["per_category_iou"], results["per_category_accuracy"]
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    width = max([len("Class")] + [len(n) for n in names])
    lines = [f"| {'Class':<{width}} |   IoU  |   Acc  |", f"|{'-' * (width + 2)}|--------|--------|"]
    for name, i, a in zip(names, iou, acc, strict=True):
        lines.append(f"| {name:<{width}} | {100 * i:6.2f} | {100 * a:6.2f} |")
    lines.append(
        f"mIoU {100 * results['mean_iou']:.2f}  mAcc {100 * results['mean_accuracy']:.2f}  "
        f"aAcc {100 * results['overall_accuracy']:.2f}  ({results.get('num_samples', '?')} images)"
    )
    return "\n".join(lines)
