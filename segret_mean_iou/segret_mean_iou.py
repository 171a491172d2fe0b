# Copyright 2026 The SegRet Authors. Licensed under the Apache License, Version 2.0.
"""Streaming, distributed-exact mean IoU: an ``evaluate`` module, and the metric maths of the SegRet repository.

``evaluate.load("<this folder>")`` gives :class:`SegretMeanIoU`: the inputs, arguments and results of ``evaluate``'s
``mean_iou`` (MMSegmentation's dataset-level mIoU), computed from a confusion matrix that each ``add``/``add_batch``
updates with one ``bincount`` on the maps' device, instead of storing every map in an Arrow cache. Its
:meth:`~SegretMeanIoU.trainer_compute_metrics` is a ``compute_metrics`` for ``transformers.Trainer``.

The same maths serve the repository's training and evaluation scripts (``training/metrics.py`` imports
:class:`SegmentationMetric` from here), so the published module and the numbers in the model cards are one code.
The file imports only torch, numpy, ``datasets`` and ``evaluate``: a copy published on the Hub runs on its own.

Semantics (as MMSegmentation's ``IoUMetric`` and ``mean_iou``): intersections and unions are summed over the whole
set before dividing; ``mean_iou`` is the nanmean over classes, a class being NaN only when its union is 0 (absent
from labels and predictions); a class that is predicted but never labelled has IoU 0. Where ``mean_iou`` silently
drops a value outside ``[0, num_labels)`` (a label that is not ``ignore_index``, or a prediction at a labelled
pixel), this module raises ``ValueError`` naming the values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

MIOU_MODES = ("mmseg", "d2")
# The raw (label, prediction) counts of SegretMeanIoU grow to the largest value seen: 16-bit maps at most.
MAX_RAW_VALUE = 65535
TRAINER_PADDING = -100  # what transformers' Trainer pads labels and predictions with

_DESCRIPTION = """\
Mean IoU (Intersection over Union) for semantic segmentation, with the inputs, arguments and results of `evaluate`'s
`mean_iou`, but streaming: every `add`/`add_batch` updates a confusion matrix with one `bincount` on the maps' device,
so memory and time do not grow with the number of maps, and under `torch.distributed` the processes' counts are summed
exactly. Also gives a `compute_metrics` for `transformers.Trainer`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of (height, width) integer maps, or a (batch, height, width) array or tensor):
        Predicted class maps; numpy arrays, torch tensors (any device), PIL images or nested lists.
    references (same form as `predictions`): Ground-truth maps, each of its prediction's shape.
    num_labels (`int`): Number of classes.
    ignore_index (`int` or `None`): Label value that is not scored (`None`: none).
    nan_to_num (`float`, *optional*): Replaces NaN in the results (classes absent from labels and predictions).
    label_map (`dict`, *optional*): Maps old label values to new ones (all keys refer to the original values).
    reduce_labels (`bool`, defaults to `False`): Label 0 becomes 255 and every other label v becomes v - 1.
    mode (`str`, defaults to `"mmseg"`): `"mmseg"` averages over classes with a non-zero union (as `mean_iou`);
        `"d2"` over classes with label pixels (detectron2's `SemSegEvaluator`).
    all_reduce (`bool`, defaults to `True`): Under `torch.distributed`, sum the counts of every process first (each
        process must then call `compute`). `False` when every process already holds all the maps (e.g. `Trainer`).

Returns:
    mean_iou (`float`), mean_accuracy (`float`), overall_accuracy (`float`), per_category_iou (`ndarray` of shape
    `(num_labels,)`), per_category_accuracy (`ndarray` of shape `(num_labels,)`), num_samples (`int`): fractions in
    [0, 1], equal to `mean_iou`'s on the same inputs.

Examples:
    >>> metric = evaluate.load("path/to/segret_mean_iou")
    >>> metric.add_batch(predictions=[np.array([[1, 2], [3, 4]])], references=[np.array([[1, 2], [3, 3]])])
    >>> metric.compute(num_labels=5, ignore_index=255)["mean_iou"]
    0.625
"""

_CITATION = """\
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
  author = {{MMSegmentation Contributors}},
  license = {Apache-2.0},
  title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
  url = {https://github.com/open-mmlab/mmsegmentation},
  year = {2020}
}
"""


# ----------------------------------------------------------------------------------------------- the maths
def pair_index_dtype(num_rows: int, num_columns: int) -> torch.dtype:
    """int32 when the pair indices fit: the bincount is then ~3x faster than with int64."""
    return torch.int32 if num_rows * num_columns < 2**31 else torch.int64


def count_pairs(rows: torch.Tensor, columns: torch.Tensor, num_rows: int, num_columns: int) -> torch.Tensor:
    """(num_rows, num_columns) int64 counts of the (rows[i], columns[i]) pairs, with one ``bincount``.

    ``rows`` is a flat tensor of :func:`pair_index_dtype` that this call overwrites (the caller builds it with
    ``.to(dtype, copy=True)``, so the index is made in one buffer); ``columns`` is flat, on the same device; the
    caller has checked that the values are in range.
    """
    index = rows.mul_(num_columns).add_(columns)
    return torch.bincount(index, minlength=num_rows * num_columns).view(num_rows, num_columns).long()


def scores_from_confusion(
    confusion: np.ndarray | torch.Tensor, mode: str = "mmseg", nan_to_num: float | None = None
) -> dict[str, Any]:
    """mIoU, mAcc, aAcc and the per-class arrays from a (K, K) confusion matrix (rows: label, columns: prediction).

    ``mode="mmseg"`` (also ``mean_iou``) averages over classes with a non-zero union; ``mode="d2"`` over classes with
    label pixels. ``nan_to_num`` replaces NaN in every result, as ``mean_iou`` does.
    """
    if mode not in MIOU_MODES:
        raise ValueError(f"mode must be one of {MIOU_MODES}, got {mode!r}")
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.cpu().numpy()
    cm = np.asarray(confusion, dtype=np.float64)  # counts below 2**53 are exact, as mean_iou's float64 histograms
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
    results = {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        "overall_accuracy": float(overall),
        "per_category_iou": iou,
        "per_category_accuracy": acc,
    }
    if nan_to_num is not None:
        results = {key: _nan_to_num(value, nan_to_num) for key, value in results.items()}
    return results


def _nan_to_num(value: Any, nan: float) -> Any:
    return np.nan_to_num(value, nan=nan) if isinstance(value, np.ndarray) else (nan if np.isnan(value) else value)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device(device: torch.device) -> torch.device:
    """NCCL reduces CUDA tensors only."""
    if dist.get_backend() == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _sum_over_processes(counts: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, int]:
    """``counts`` (2-D, any shape per process: zero-padded to the largest) and ``num_samples`` summed over processes."""
    device = _collective_device(counts.device)
    shape = torch.tensor(counts.shape, device=device)
    dist.all_reduce(shape, op=dist.ReduceOp.MAX)
    rows, columns = shape.tolist()
    padded = torch.zeros((rows * columns + 1,), dtype=torch.long, device=device)
    padded[:-1].view(rows, columns)[: counts.shape[0], : counts.shape[1]] = counts.to(device)
    padded[-1] = num_samples
    dist.all_reduce(padded)
    return padded[:-1].view(rows, columns).cpu(), int(padded[-1])


def _label_tensor(value: Any, what: str) -> torch.Tensor:
    """An integer tensor from a tensor, an array, a PIL image (palette indices kept) or nested lists."""
    if isinstance(value, torch.Tensor):
        tensor = value
    else:  # read-only arrays (e.g. of a PIL image) are copied: torch warns about tensors it cannot write
        array = value if isinstance(value, np.ndarray) and value.flags.writeable else np.array(value)
        tensor = torch.as_tensor(array)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{what} must be integer class maps, got dtype {tensor.dtype} (take the argmax of logits)")
    return tensor


def _pairs(predictions: Any, references: Any) -> list[tuple[Any, Any]]:
    """(prediction, reference) per map: lists pair item by item, a 3-D array or tensor is a batch of maps."""
    if predictions is None or references is None:
        raise ValueError("both predictions and references are needed")
    if isinstance(predictions, (torch.Tensor, np.ndarray)) and predictions.ndim == 2:
        return [(predictions, references)]
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    return list(zip(predictions, references))


# ------------------------------------------------------------------------------------- the training metric
class SegmentationMetric:
    """Accumulates a (K, K) confusion matrix over ``update(pred, target)`` calls and returns mIoU-style metrics.

    ``pred`` and ``target`` are integer label maps (tensors or arrays) of equal shape, or lists of them (e.g. images
    of different sizes). Target pixels equal to ``ignore_index`` are skipped; any other value outside
    ``[0, num_labels)`` in either map raises ``ValueError``. Updates run on the inputs' device and keep no maps;
    processes combine by summing the matrices (``compute`` all-reduces when ``torch.distributed`` is initialised):
    feed each sample to exactly one process and the result equals the single-process one exactly.
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
        pred, target = _label_tensor(pred, "pred"), _label_tensor(target, "target")
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        k = self.num_labels
        if pred.numel():
            pred_min, pred_max = (value.item() for value in torch.aminmax(pred))
            if pred_min < 0 or pred_max >= k:
                raise ValueError(f"predictions must be in [0, {k}), got values in [{pred_min}, {pred_max}]")
        pred = pred.to(target.device).flatten()
        flat_target = target.flatten()
        # Ignored pixels go to an extra target row k that is dropped: no boolean indexing on the hot path.
        rows = flat_target.to(pair_index_dtype(k + 1, k), copy=True)
        rows.masked_fill_(flat_target == self.ignore_index, k)
        if rows.numel():
            low, high = torch.aminmax(rows)
            # A genuine target value k would land in the ignore row: check for it (unless k is the ignore index).
            if low < 0 or high > k or (high == k and k != self.ignore_index and bool((flat_target == k).any())):
                bad = ((flat_target < 0) | (flat_target >= k)) & (flat_target != self.ignore_index)
                raise ValueError(
                    f"target values {torch.unique(flat_target[bad])[:10].tolist()} are outside [0, {k}) "
                    f"and not the ignore index {self.ignore_index}"
                )
        counts = count_pairs(rows, pred, k + 1, k)[:k]
        self.confusion = counts if self.confusion is None else self.confusion + counts.to(self.confusion.device)
        self.num_samples += target.shape[0] if target.ndim >= 3 else 1

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
        if _distributed():  # sums: each process must call compute()
            return _sum_over_processes(confusion, self.num_samples)
        return confusion, self.num_samples

    def compute(self, mode: str = "mmseg", nan_to_num: float | None = None) -> dict[str, Any]:
        """Metrics with the keys of ``evaluate``'s ``mean_iou`` (fractions in [0, 1]), plus ``num_samples``.

        See :func:`scores_from_confusion` for ``mode`` and ``nan_to_num``. Collective under ``torch.distributed``:
        call on every rank.
        """
        confusion, num_samples = self.synced_state()
        return {**scores_from_confusion(confusion, mode, nan_to_num), "num_samples": num_samples}


# --------------------------------------------------------------------------------------- the evaluate module
@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SegretMeanIoU(evaluate.Metric):
    """``mean_iou`` with streaming state: the counts of (label value, predicted value) pairs of all maps so far.

    The label values are counted raw, because ``num_labels``, ``ignore_index``, ``label_map`` and
    ``reduce_labels`` only come with ``compute``; there they become row moves on the counts.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.num_process > 1:
            raise ValueError(
                "segret_mean_iou does not use evaluate's num_process/process_id file exchange: under "
                "torch.distributed, `compute` sums every process's counts (call it on each process)."
            )
        self._counts: torch.Tensor | None = None  # (label value, predicted value) -> pixels, int64
        self._num_samples = 0

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # As mean_iou; inputs are counted on arrival, never stored in evaluate's Arrow cache.
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/mean_iou"],
        )

    # No decorators on add/add_batch/compute: evaluate rebuilds them from their code objects to extend the docstrings.
    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Count one (height, width) prediction map against its reference map."""
        self._reject_extra_inputs(kwargs)
        if prediction is None or reference is None:
            raise ValueError("both prediction and reference are needed")
        self._add_pair(prediction, reference)

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Count a list of prediction maps (or a (batch, height, width) array or tensor) against the references."""
        self._reject_extra_inputs(kwargs)
        for prediction, reference in _pairs(predictions, references):
            self._add_pair(prediction, reference)

    def compute(
        self,
        *,
        predictions: Any = None,
        references: Any = None,
        num_labels: int | None = None,
        ignore_index: int | None = None,
        nan_to_num: float | None = None,
        label_map: Mapping[int, int] | None = None,
        reduce_labels: bool = False,
        mode: str = "mmseg",
        all_reduce: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The scores of every map added so far (and of ``predictions``/``references``); then the state is reset."""
        self._reject_extra_inputs(kwargs)
        if num_labels is None or int(num_labels) <= 0:
            raise ValueError(f"compute needs num_labels, a positive number of classes (got {num_labels!r})")
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references)
        counts, num_samples = self._counts, self._num_samples
        self._counts, self._num_samples = None, 0  # compute consumes the maps, also when it raises (as evaluate's)
        if counts is None:
            counts = torch.zeros((1, 1), dtype=torch.long)
        if all_reduce and _distributed():
            counts, num_samples = _sum_over_processes(counts, num_samples)
        confusion = self._fold(counts.cpu().numpy(), int(num_labels), ignore_index, label_map, reduce_labels)
        return {**scores_from_confusion(confusion, mode, nan_to_num), "num_samples": num_samples}

    def trainer_compute_metrics(
        self,
        num_labels: int,
        ignore_index: int | None = 255,
        id2label: Mapping[int, str] | None = None,
        **compute_kwargs: Any,
    ) -> TrainerComputeMetrics:
        """A ``compute_metrics`` for ``transformers.Trainer`` on this metric (see :class:`TrainerComputeMetrics`)."""
        return TrainerComputeMetrics(self, num_labels, ignore_index, id2label, **compute_kwargs)

    # ------------------------------------------------------------------------------------------ internals
    def _reject_extra_inputs(self, kwargs: Mapping[str, Any]) -> None:
        if kwargs:
            raise ValueError(f"unexpected arguments {sorted(kwargs)} for segret_mean_iou")

    @torch.no_grad()
    def _add_pair(self, prediction: Any, reference: Any) -> None:
        prediction, reference = _label_tensor(prediction, "predictions"), _label_tensor(reference, "references")
        if prediction.shape != reference.shape:
            raise ValueError(f"a prediction of shape {tuple(prediction.shape)} has a reference of shape "
                             f"{tuple(reference.shape)}: each map must have its reference's size")  # fmt: skip
        if reference.ndim > 2:
            raise ValueError(f"maps must be (height, width), got shape {tuple(reference.shape)}")
        self._num_samples += 1
        if not reference.numel():
            return
        prediction = prediction.to(reference.device).flatten()
        reference = reference.flatten()
        (label_low, label_high), (pred_low, pred_high) = torch.aminmax(reference), torch.aminmax(prediction)
        low, high = min(label_low.item(), pred_low.item()), max(label_high.item(), pred_high.item())
        if low < 0 or high > MAX_RAW_VALUE:
            raise ValueError(
                f"map values must be in [0, {MAX_RAW_VALUE}], got values in [{low}, {high}]"
                + (f" ({TRAINER_PADDING} is Trainer's padding: map it to ignore_index first)" if low < 0 else "")
            )
        num_rows, num_columns = int(label_high) + 1, int(pred_high) + 1
        if self._counts is None:
            self._counts = torch.zeros((max(num_rows, 256), num_columns), dtype=torch.long, device=reference.device)
        elif num_rows > self._counts.shape[0] or num_columns > self._counts.shape[1]:
            grown = self._counts.new_zeros(
                (max(num_rows, self._counts.shape[0]), max(num_columns, self._counts.shape[1]))
            )
            grown[: self._counts.shape[0], : self._counts.shape[1]] = self._counts
            self._counts = grown
        num_rows, num_columns = self._counts.shape
        rows = reference.to(pair_index_dtype(num_rows, num_columns), copy=True)
        self._counts += count_pairs(rows, prediction, num_rows, num_columns).to(self._counts.device)

    @staticmethod
    def _fold(
        counts: np.ndarray,
        num_labels: int,
        ignore_index: int | None,
        label_map: Mapping[int, int] | None,
        reduce_labels: bool,
    ) -> np.ndarray:
        """The (K, K) confusion matrix from raw (label value, predicted value) counts, as ``mean_iou`` maps labels."""
        raw_values = np.arange(counts.shape[0])
        labels = raw_values.copy()
        for old, new in (label_map or {}).items():  # every mapping reads the original value
            labels[raw_values == int(old)] = int(new)
        if reduce_labels:  # mean_iou's order of operations: 0 -> 255, v -> v - 1, and 255 stays 255
            labels[labels == 0] = 255
            labels = labels - 1
            labels[labels == 254] = 255
        scored = labels != ignore_index if ignore_index is not None else np.ones_like(labels, dtype=bool)
        present = counts.sum(axis=1) > 0
        in_range = (labels >= 0) & (labels < num_labels)
        bad_labels = scored & present & ~in_range
        if bad_labels.any():
            pairs = [f"{raw}->{label}" if raw != label else str(raw) for raw, label in
                     zip(raw_values[bad_labels][:10], labels[bad_labels][:10])]  # fmt: skip
            raise ValueError(f"label values {pairs} are outside [0, {num_labels}) and not the ignore index "
                             f"{ignore_index} (after label_map/reduce_labels)")  # fmt: skip
        rows = scored & in_range
        bad_predictions = np.flatnonzero(counts[rows][:, num_labels:].sum(axis=0)) + num_labels
        if len(bad_predictions):
            raise ValueError(f"predictions {bad_predictions[:10].tolist()} at scored pixels are outside "
                             f"[0, {num_labels})")  # fmt: skip
        confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
        columns = min(num_labels, counts.shape[1])
        np.add.at(confusion, (labels[rows], slice(0, columns)), counts[rows, :columns])
        return confusion


# -------------------------------------------------------------------------------------- transformers.Trainer
class TrainerComputeMetrics:
    """``compute_metrics`` (and ``preprocess_logits_for_metrics``) for ``transformers.Trainer``.

    Works with ``TrainingArguments(batch_eval_metrics=True)`` (each batch is counted as it comes, nothing is kept)
    and without it (one call with the whole evaluation set). Logits (batch, classes, h, w) are upsampled bilinearly
    to the labels' size and arg-maxed; pass :meth:`preprocess_logits_for_metrics` to ``Trainer`` so that this happens
    on the device, batch by batch, and only class maps are gathered. Label pixels of Trainer's padding value -100
    are not scored. Returns ``mean_iou``, ``mean_accuracy``, ``overall_accuracy`` and, given ``id2label``,
    ``iou_<class>`` and ``accuracy_<class>`` (NaN for a class absent from labels and predictions).
    """

    def __init__(
        self,
        metric: SegretMeanIoU,
        num_labels: int,
        ignore_index: int | None = 255,
        id2label: Mapping[int, str] | None = None,
        **compute_kwargs: Any,
    ) -> None:
        if ignore_index is None or ignore_index < 0:
            raise ValueError(f"ignore_index must be a non-negative label value, got {ignore_index!r}")
        self.metric = metric
        self.num_labels = int(num_labels)
        self.ignore_index = int(ignore_index)
        self.id2label = {int(k): str(v) for k, v in id2label.items()} if id2label else None
        self.compute_kwargs = compute_kwargs

    @torch.no_grad()
    def preprocess_logits_for_metrics(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes, h, w), or a model output tuple whose first item they are -> class maps."""
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        return class_maps(torch.as_tensor(logits), tuple(labels.shape[-2:]))

    @torch.no_grad()
    def __call__(self, eval_prediction: Any, compute_result: bool = True) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        predictions = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
        predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
        if predictions.is_floating_point():
            predictions = class_maps(predictions, tuple(labels.shape[-2:]))
        predictions = predictions.to(labels.device)
        padding = labels == TRAINER_PADDING
        self.metric.add_batch(
            predictions=predictions.masked_fill(padding, 0), references=labels.masked_fill(padding, self.ignore_index)
        )
        if not compute_result:
            return {}
        # Trainer hands every process the gathered batches: summing over processes would count them again.
        results = self.metric.compute(
            num_labels=self.num_labels, ignore_index=self.ignore_index, all_reduce=False, **self.compute_kwargs
        )
        scores = {key: results[key] for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
        if self.id2label:
            for index, name in sorted(self.id2label.items()):
                scores[f"iou_{name}"] = float(results["per_category_iou"][index])
                scores[f"accuracy_{name}"] = float(results["per_category_accuracy"][index])
        return scores


def class_maps(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(batch, classes, h, w) logits -> (batch, height, width) int64 class maps at ``size`` (bilinear, then argmax)."""
    if logits.ndim != 4:
        raise ValueError(f"expected logits of shape (batch, classes, height, width), got {tuple(logits.shape)}")
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)
