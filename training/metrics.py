"""Streaming, distributed-exact semantic segmentation metric (mIoU, mAcc, aAcc).

Dataset-level semantics of MMSegmentation's ``IoUMetric`` and of ``evaluate``'s ``mean_iou``: intersections and
unions are summed over the whole set before dividing, and ``mean_iou`` is the nanmean over classes, a class being
NaN only when its union is 0 (absent from both labels and predictions). A class that is predicted but absent from
the labels counts with IoU 0.

The state is one (K, K) int64 confusion matrix on the inputs' device: updates cost one ``bincount`` and never keep
predictions, any image size works, and processes combine by summing the matrices (``compute`` all-reduces when
``torch.distributed`` is initialised). Feed each sample to exactly one process (e.g.
:class:`training.data.ShardSampler`) and the result equals the single-process one exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

MIOU_MODES = ("mmseg", "d2")


class SegmentationMetric:
    """Accumulates a confusion matrix over ``update(pred, target)`` calls and returns mIoU-style metrics.

    ``pred`` and ``target`` are integer label maps (tensors or arrays) of equal shape, or lists of them (e.g. images
    of different sizes). Target pixels equal to ``ignore_index`` are skipped; any other value outside
    ``[0, num_labels)`` in either map raises ``ValueError``.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255) -> None:
        if num_labels <= 0:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.num_labels = int(num_labels)
        self.ignore_index = int(ignore_index)
        self.confusion: torch.Tensor | None = None  # rows: target class, columns: predicted class
        self.num_samples = 0

    def reset(self) -> None:
        """Forget all updates."""
        self.confusion = None
        self.num_samples = 0

    @torch.no_grad()
    def update(self, pred: Any, target: Any) -> None:
        """Add predictions and targets; a leading batch dimension (or a list) adds one sample per entry."""
        if isinstance(pred, (list, tuple)):
            if not isinstance(target, (list, tuple)) or len(pred) != len(target):
                raise ValueError("pred and target must both be lists of the same length")
            for p, t in zip(pred, target, strict=True):
                self.update(p, t)
            return
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        target_shape = tuple(target.shape)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred and target must be integer label maps (take the argmax of logits first)")
        k = self.num_labels
        if pred.numel():
            pred_min, pred_max = pred.min().item(), pred.max().item()
            if pred_min < 0 or pred_max >= k:
                raise ValueError(f"predictions must be in [0, {k}), got values in [{pred_min}, {pred_max}]")
        # int32 indices suffice for (K + 1) * K bins and make the bincount ~3x faster than int64.
        index_dtype = torch.int32 if (k + 1) * k < 2**31 else torch.int64
        pred = pred.to(target.device).flatten()
        target = target.flatten()
        # Ignored pixels go to an extra target row k that is dropped: no boolean indexing on the hot path, and the
        # row index is built in place in one int32 buffer.
        rows = target.to(index_dtype)
        rows.masked_fill_(target == self.ignore_index, k)
        if rows.numel():
            low, high = torch.aminmax(rows)
            # A genuine target value k would land in the ignore row: check for it (unless k is the ignore index).
            if low < 0 or high > k or (high == k and k != self.ignore_index and bool((target == k).any())):
                bad = ((target < 0) | (target >= k)) & (target != self.ignore_index)
                raise ValueError(
                    f"target values {torch.unique(target[bad])[:10].tolist()} are outside [0, {k}) "
                    f"and not the ignore index {self.ignore_index}"
                )
        index = rows.mul_(k).add_(pred)
        counts = torch.bincount(index, minlength=(k + 1) * k)[: k * k].view(k, k).long()
        if self.confusion is None:
            self.confusion = counts
        else:
            self.confusion += counts.to(self.confusion.device)
        self.num_samples += target_shape[0] if len(target_shape) >= 3 else 1

    def merge(self, other: SegmentationMetric) -> None:
        """Add another metric's state (same ``num_labels``), e.g. from a sharded evaluation."""
        if other.num_labels != self.num_labels:
            raise ValueError(f"cannot merge num_labels {other.num_labels} into {self.num_labels}")
        if other.confusion is not None:
            mine = self.confusion
            self.confusion = other.confusion.clone() if mine is None else mine + other.confusion.to(mine.device)
        self.num_samples += other.num_samples

    def synced_state(self) -> tuple[torch.Tensor, int]:
        """The confusion matrix and sample count summed over all processes (all-reduce if distributed)."""
        confusion = self.confusion
        if confusion is None:
            confusion = torch.zeros((self.num_labels, self.num_labels), dtype=torch.long)
        num_samples = self.num_samples
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = confusion.device
            if dist.get_backend() == "nccl" and device.type != "cuda":
                device = torch.device("cuda", torch.cuda.current_device())
            packed = torch.cat([confusion.flatten(), torch.tensor([num_samples])]).to(device)
            dist.all_reduce(packed)  # sums: each process must call compute()
            confusion, num_samples = packed[:-1].view_as(confusion).cpu(), int(packed[-1])
        return confusion, num_samples

    def compute(self, mode: str = "mmseg", nan_to_num: float | None = None) -> dict[str, Any]:
        """Metrics with the keys of ``evaluate``'s ``mean_iou`` (fractions in [0, 1]), plus ``num_samples``.

        ``mode="mmseg"`` (also ``evaluate``) excludes classes with zero union from the means; ``mode="d2"``
        (detectron2 ``SemSegEvaluator``) excludes classes without label pixels. ``nan_to_num`` replaces NaN in the
        per-class arrays (the means are taken before). Collective under ``torch.distributed``: call on every rank.
        """
        if mode not in MIOU_MODES:
            raise ValueError(f"mode must be one of {MIOU_MODES}, got {mode!r}")
        confusion, num_samples = self.synced_state()
        cm = confusion.double().cpu().numpy()
        intersect = np.diag(cm)
        area_label = cm.sum(axis=1)
        area_pred = cm.sum(axis=0)
        union = area_label + area_pred - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersect / union
            acc = intersect / area_label
            overall = intersect.sum() / area_label.sum()
        if mode == "d2":
            iou = np.where(area_label > 0, iou, np.nan)
        mean_iou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
        mean_acc = float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
        if nan_to_num is not None:
            iou, acc = np.nan_to_num(iou, nan=nan_to_num), np.nan_to_num(acc, nan=nan_to_num)
        return {
            "mean_iou": mean_iou,
            "mean_accuracy": mean_acc,
            "overall_accuracy": float(overall),
            "per_category_iou": iou,
            "per_category_accuracy": acc,
            "num_samples": num_samples,
        }


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
